//! Serving on its own: a trained model registered, deployed and served over HTTP
//! with the Open Inference Protocol, called through the remote client with an API
//! key, then shut down gracefully.
//!
//! ```text
//! cargo run --release --example http_serving
//! ```

use std::sync::Arc;
use std::time::Duration;

use mlops::arrow::RecordBatch;
use mlops::arrow::array::{Float64Array, Int64Array};
use mlops::core::inference::tensors_from_batch;
use mlops::prelude::*;
use mlops::serve::{ApiKeys, HttpConfig, Scope, http};
use mlops::train::Progress;

/// `n` rows of one feature, labelled by its sign.
fn data(n: usize) -> Result<RecordBatch> {
    let x: Vec<f64> = (0..n).map(|i| (i as f64 / n as f64) * 2.0 - 1.0).collect();
    let y: Vec<i64> = x.iter().map(|&v| i64::from(v > 0.0)).collect();
    RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(x)) as _),
        ("label", Arc::new(Int64Array::from(y)) as _),
    ])
    .map_err(|e| Error::backend("arrow", e))
}

#[tokio::main]
async fn main() -> Result<()> {
    // A model, trained and registered as the champion.
    let mut config = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
    config.learning_rate = 0.05;
    config.progress = Progress::Hidden;
    let trained = TabularTrainer::new(config).fit(&data(1_000)?, "label")?;
    let root = StoreRoot::open("memory://")?;
    let registry = Arc::new(ObjectRegistry::new(&root));
    let v = registry
        .register("sign", trained.artifact.clone(), trained.metadata.clone())
        .await?;
    registry.set_alias("sign", "champion", v.version).await?;

    // Deployed, and served on loopback with an API key.
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    let mut deployment =
        DeploymentConfig::new("sign", "sign", Routing::Fixed("@champion".parse()?));
    deployment.reload_interval = Some(Duration::from_secs(10)); // follow the alias
    server.deploy(deployment).await?;
    let http_config = HttpConfig::default().with_keys(ApiKeys::new().with_key(
        "example",
        "s3cret",
        &[Scope::Infer],
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::backend("listener", e))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::backend("listener", e))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = http::router(server.clone(), http_config.clone())?;
    let running = tokio::spawn(async move {
        http::serve(listener, app, &http_config, async move {
            let _ = stopped.await;
        })
        .await
    });
    println!("serving at http://{address}/v2/models/sign");

    // A client anywhere: the same `Server` trait, over HTTP.
    let client = RemoteServer::new(&format!("http://{address}"))?.with_api_key("s3cret");
    let meta = client.model_metadata("sign", None).await?;
    println!("inputs: {:?}", meta.inputs);
    let rows = data(4)?;
    let request = InferenceRequest::new(tensors_from_batch(&meta.inputs, &rows)?);
    let response = client.infer("sign", None, request).await?;
    println!(
        "{} v{:?}: {:?}",
        response.model_name, response.model_version, response.outputs[0].data
    );
    match RemoteServer::new(&format!("http://{address}"))?
        .model_metadata("sign", None)
        .await
    {
        Err(e) => println!("without the key: {e}"),
        Ok(_) => {
            return Err(Error::backend(
                "example",
                "the server answered without a key",
            ));
        }
    }

    // Graceful shutdown: stop taking requests, finish those in flight.
    server.drain(Duration::from_secs(5)).await;
    let _ = stop.send(());
    running
        .await
        .map_err(|e| Error::backend("http", e.to_string()))?
        .map_err(|e| Error::backend("http", e))?;
    println!("stopped");
    Ok(())
}
