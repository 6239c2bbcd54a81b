//! A multi-variant evaluation: the champion answers every request while three
//! candidate models receive copies of the traffic as shadows; once outcomes are
//! known, each candidate is scored on exactly the requests the champion served.
//!
//! ```text
//! cargo run --release --example shadow_evaluation
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use mlops::core::inference::{InferenceRequest, Tensor, TensorData};
use mlops::core::metrics;
use mlops::prelude::*;
use mlops::train::{Activation, Progress};

fn data(n: usize, seed: u64) -> (Vec<[f64; 3]>, Vec<i64>) {
    let mut s = seed;
    let mut u = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..n {
        let r = [u(), u(), u()];
        // A ring: only non-linear models can find it.
        let inside = r[0] * r[0] + r[1] * r[1] < 0.5 + 0.2 * r[2];
        x.push(r);
        y.push(i64::from(inside ^ (u() > 0.9)));
    }
    (x, y)
}

#[tokio::main]
async fn main() -> Result<()> {
    let (x, y) = data(8000, 1);
    let batch = RecordBatch::try_from_iter([
        (
            "a",
            Arc::new(Float64Array::from_iter_values(x.iter().map(|r| r[0]))) as ArrayRef,
        ),
        (
            "b",
            Arc::new(Float64Array::from_iter_values(x.iter().map(|r| r[1]))) as ArrayRef,
        ),
        (
            "c",
            Arc::new(Float64Array::from_iter_values(x.iter().map(|r| r[2]))) as ArrayRef,
        ),
        ("y", Arc::new(Int64Array::from(y)) as ArrayRef),
    ])
    .map_err(|e| Error::invalid_input("data", e.to_string()))?;
    let registry = Arc::new(ObjectRegistry::new(&StoreRoot::open("memory://")?));
    let candidates = [
        ("linear (champion)", ModelSpec::Linear),
        ("mlp 8", ModelSpec::mlp([8])),
        ("mlp 32x32 relu", ModelSpec::mlp([32, 32])),
        (
            "mlp 32x32 tanh",
            ModelSpec::Mlp {
                hidden: vec![32, 32],
                activation: Activation::Tanh,
                dropout: 0.1,
            },
        ),
    ];
    let mut names = BTreeMap::new();
    for (name, spec) in candidates {
        let mut c = TrainConfig::new(Task::BinaryClassification, spec);
        c.progress = Progress::Hidden;
        c.learning_rate = 0.01;
        c.epochs = 30;
        let m = TabularTrainer::new(c).fit(&batch, "y")?;
        let v = registry
            .register("ring", m.artifact, m.metadata)
            .await?
            .version;
        names.insert(v, name);
    }
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    let mut config = DeploymentConfig::new("ring", "ring", Routing::Fixed("1".parse()?));
    config.shadows = vec!["2".parse()?, "3".parse()?, "4".parse()?];
    server.deploy(config).await?;

    // 300 requests x 3 shadows fit the 1,000 shadow records the server keeps.
    let (live_x, live_y) = data(300, 2);
    let mut truth = HashMap::new();
    for (i, (r, label)) in live_x.iter().zip(&live_y).enumerate() {
        let mut request = InferenceRequest::new(
            ["a", "b", "c"]
                .iter()
                .zip(r)
                .map(|(n, v)| Tensor::new(*n, vec![1], TensorData::Fp64(vec![*v])))
                .collect::<Result<_>>()?,
        );
        request.id = Some(i.to_string());
        truth.insert(i.to_string(), *label as usize);
        server.infer("ring", None, request).await?;
    }
    // Shadows answer off the request path: give them a moment to finish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut scores: BTreeMap<u64, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
    for record in server.shadow_records("ring")? {
        let Some(y) = record.request_id.as_ref().and_then(|id| truth.get(id)) else {
            continue;
        };
        let first = |t: &[Tensor]| {
            t.first()
                .and_then(|o| o.data.to_f32_vec().ok())
                .and_then(|v| v.first().copied())
        };
        if let (Some(p), Ok(Some(s))) =
            (first(&record.primary), record.shadow.as_deref().map(first))
        {
            // Each request appears once per shadow: count the champion once.
            if record.shadow_version == 2 {
                let primary = scores.entry(record.primary_version).or_default();
                primary.0.push(*y);
                primary.1.push(f64::from(p));
            }
            let shadow = scores.entry(record.shadow_version).or_default();
            shadow.0.push(*y);
            shadow.1.push(f64::from(s));
        }
    }
    println!(
        "{} live requests, every model judged on the same ones",
        truth.len()
    );
    let mut best = (0, f64::MIN);
    for (v, (y, p)) in &scores {
        let auc = metrics::roc_auc(y, p)?;
        println!(
            "  v{v} {:<20} ROC AUC {auc:.4} over {} requests",
            names[v],
            y.len()
        );
        if auc > best.1 {
            best = (*v, auc);
        }
    }
    println!("best: v{} ({})", best.0, names[&best.0]);
    Ok(())
}
