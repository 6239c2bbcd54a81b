//! The Rust half of `benches/serve_vs_python.py`: trains the 20->64->64->1 MLP on
//! generated data, serves it over HTTP on loopback with mlops-serve, serves a
//! minimal axum handler returning a fixed body (the floor) next to it, measures
//! in-process `Server::infer` latency for 1- and 64-row requests, exports the
//! weights (safetensors) and standardization for the Python server, prints one
//! JSON line with the addresses and figures, and serves until stdin closes.
//!
//! ```text
//! python3 benches/serve_vs_python.py          # everything, side by side, with wrk
//! python3 benches/serve_binary.py             # the `mlops` binary as deployed, beside
//!                          # this in-process server and the floor, pinned
//! cargo bench --bench serve_compare -- DIR    # this side alone (Ctrl-D stops it)
//! MLOPS_SERVE_PROFILE=1 cargo bench --bench serve_compare   # where a request's time
//!                          # goes: JSON decode, encode, model call direct or pooled
//! ```

#[path = "support/mlp_data.rs"]
mod mlp_data;

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::routing::post;
use mlops::core::inference::{InferenceRequest, Tensor, TensorData};
use mlops::core::model::VersionSelector;
use mlops::core::{ModelRegistry, Server, Task, Trainer};
use mlops::serve::HttpConfig;
use mlops::serve::codec;
use mlops::serve::http::{router, serve};
use mlops::serve::{DeploymentConfig, ModelServer, Routing};
use mlops::store::{ObjectRegistry, StoreRoot};
use mlops::train::{Encoding, ModelSpec, Progress, TabularLoader, TabularTrainer, TrainConfig};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn request(rows: usize) -> InferenceRequest {
    let mut r = InferenceRequest::new(
        (0..20)
            .map(|f| {
                let values = (0..rows)
                    .map(|r| ((r * 7 + f) % 13) as f32 / 13.0 - 0.5)
                    .collect();
                Tensor::new(format!("x{f}"), vec![rows], TensorData::Fp32(values))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect(),
    );
    r.id = Some("1".into());
    r
}

fn percentiles(mut micros: Vec<f64>) -> (f64, f64) {
    micros.sort_by(f64::total_cmp);
    (micros[micros.len() / 2], micros[micros.len() * 99 / 100])
}

#[tokio::main]
async fn main() {
    let export = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "/tmp/mlops-serve-bench".into());
    std::fs::create_dir_all(&export).unwrap_or_else(|e| panic!("{e}"));

    let mut config = TrainConfig::new(Task::BinaryClassification, ModelSpec::mlp([64, 64]));
    config.epochs = 1;
    config.progress = Progress::Hidden;
    config.drift_reference = false;
    let trained = TabularTrainer::new(config)
        .fit(&mlp_data::data(20_000), "label")
        .unwrap_or_else(|e| panic!("{e}"));
    let model = TabularLoader::default()
        .load_model(&trained.artifact)
        .unwrap_or_else(|e| panic!("{e}"));

    // Export the same weights and standardization for the Python server.
    let header_len = u64::from_le_bytes(
        trained.artifact.bytes[12..20]
            .try_into()
            .unwrap_or_else(|e| panic!("{e}")),
    ) as usize;
    std::fs::write(
        format!("{export}/weights.safetensors"),
        &trained.artifact.bytes[20 + header_len..],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let scaling: Vec<_> = model
        .card()
        .features
        .iter()
        .map(|f| match &f.encoding {
            Encoding::Numeric { mean, std } => json!({"name": f.name, "mean": mean, "std": std}),
            Encoding::Categorical { .. } => panic!("numeric features only"),
        })
        .collect();
    std::fs::write(
        format!("{export}/scaling.json"),
        serde_json::to_vec(&scaling).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The same model in a file registry under the export, for the service
    // binary's benchmarks (benches/cold_start.py, benches/serve_binary.py).
    let store_dir = format!("{export}/store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let on_disk = ObjectRegistry::new(
        &StoreRoot::open(&format!("file://{store_dir}")).unwrap_or_else(|e| panic!("{e}")),
    );
    let v = on_disk
        .register("fraud", trained.artifact.clone(), trained.metadata.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    on_disk
        .set_alias("fraud", "champion", v.version)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let root = StoreRoot::open("memory://").unwrap_or_else(|e| panic!("{e}"));
    let registry = Arc::new(ObjectRegistry::new(&root));
    registry
        .register("fraud", trained.artifact.clone(), trained.metadata.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    // The model call takes about 10 µs for one row: cheaper than a thread handoff.
    let mut deployment =
        DeploymentConfig::new("fraud", "fraud", Routing::Fixed(VersionSelector::Latest));
    deployment.inline_max_rows = Some(64);
    server
        .deploy(deployment)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // In-process latency through the Server trait.
    let mut latency = serde_json::Map::new();
    for rows in [1usize, 64] {
        let req = request(rows);
        let mut micros = Vec::new();
        for i in 0..3000 {
            let t = Instant::now();
            server
                .infer("fraud", None, req.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if i >= 200 {
                micros.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let (p50, p99) = percentiles(micros);
        latency.insert(format!("{rows}_row_p50_us"), json!(p50));
        latency.insert(format!("{rows}_row_p99_us"), json!(p99));
    }

    if std::env::var_os("MLOPS_SERVE_PROFILE").is_some() {
        use mlops::core::Predictor;
        let req = request(1);
        let p: Arc<dyn Predictor> = Arc::new(model);
        let mut direct = Vec::new();
        let mut blocking = Vec::new();
        let mut noop = Vec::new();
        for _ in 0..3000 {
            let t = Instant::now();
            p.predict(&req.inputs).unwrap_or_else(|e| panic!("{e}"));
            direct.push(t.elapsed().as_secs_f64() * 1e6);
            let (p2, inputs) = (p.clone(), req.inputs.clone());
            let t = Instant::now();
            tokio::task::spawn_blocking(move || p2.predict(&inputs))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            blocking.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            tokio::task::spawn_blocking(|| 1)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            noop.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let body = codec::encode_request(&request(1), |_| false)
            .unwrap_or_else(|e| panic!("{e}"))
            .0;
        let t = Instant::now();
        for _ in 0..10_000 {
            let r = codec::decode_request(&body, None).unwrap_or_else(|e| panic!("{e}"));
            std::hint::black_box(r);
        }
        eprintln!(
            "decode {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
        let answer = server
            .infer("fraud", None, request(1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        for _ in 0..10_000 {
            std::hint::black_box(
                codec::encode_response(&answer, |_| false).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        eprintln!(
            "encode {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
        let t = Instant::now();
        for _ in 0..10_000 {
            let r = codec::decode_request(&body, None).unwrap_or_else(|e| panic!("{e}"));
            let answer = server
                .infer("fraud", None, r)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            std::hint::black_box(
                codec::encode_response(&answer, |_| false).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        eprintln!(
            "decode+infer+encode {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
        eprintln!(
            "direct {:?} spawn_blocking {:?} noop {:?}",
            percentiles(direct),
            percentiles(blocking),
            percentiles(noop)
        );
        return;
    }

    // The fixed body the floor returns: our answer to the benchmark request.
    let answer = server
        .infer("fraud", None, request(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fixed = String::from_utf8(
        codec::encode_response(&answer, |_| false)
            .unwrap_or_else(|e| panic!("{e}"))
            .0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        format!("{export}/request.json"),
        codec::encode_request(&request(1), |_| false)
            .unwrap_or_else(|e| panic!("{e}"))
            .0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The same request in the binary tensor extension, for the binary run.
    let (binary, json_len) =
        codec::encode_request(&request(1), |_| true).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(format!("{export}/request.bin"), binary).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        format!("{export}/request.bin.header"),
        json_len.unwrap_or_default().to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let ours = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let floor = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ours_addr = ours.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let floor_addr = floor.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    };
    // The peers are compared unauthenticated, as KServe runs by default.
    let config = HttpConfig::default().allow_unauthenticated();
    let app = router(server.clone(), config.clone()).unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { serve(ours, app, &config, stopped).await });
    let floor_app = axum::Router::new().route(
        "/v2/models/fraud/infer",
        post(move || {
            let body = fixed.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(floor, floor_app).await });
    println!(
        "{}",
        json!({"ours": format!("http://{ours_addr}"), "floor": format!("http://{floor_addr}"),
               "export": export, "in_process": latency, "pid": std::process::id()})
    );
    // Serve until the driver closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = stop.send(());
}
