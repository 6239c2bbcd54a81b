//! Serving latency while a challenger trains in the same process (issue 22):
//! the closed loop fits models on its `BlockingExecutor` (here `ThreadExecutor`,
//! a thread of its own), off the async runtime that serves. This bench measures
//! in-process `Server::infer` latency of one-row requests from a client on the
//! serving runtime (2 workers) while idle, then while a 20->64->64->1 MLP trains
//! on 1,000,000 rows (4 epochs) through that executor, and prints the p50 and p99 of both
//! and the ratio of the p99s (the issue's target: at most 1.5x).
//!
//! ```text
//! cargo bench --bench serve_while_training
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use mlops::core::exec::{BlockingExecutor, ThreadExecutor};
use mlops::core::inference::{InferenceRequest, Tensor, TensorData};
use mlops::core::model::VersionSelector;
use mlops::core::{ModelRegistry, Server, Task, Trainer};
use mlops::serve::{DeploymentConfig, ModelServer, Routing};
use mlops::store::{ObjectRegistry, StoreRoot};
use mlops::train::{ModelSpec, Progress, TabularLoader, TabularTrainer, TrainConfig};
use serde_json::json;

fn data(n: usize, seed: u64) -> RecordBatch {
    let mut state = seed;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as f32) / (1u64 << 31) as f32
    };
    let mut cols: Vec<(String, ArrayRef)> = Vec::new();
    let mut label = vec![0i64; n];
    for f in 0..20 {
        let v: Vec<f32> = (0..n).map(|_| uniform() * 2.0 - 1.0).collect();
        if f == 0 {
            for (l, x) in label.iter_mut().zip(&v) {
                *l = i64::from(*x > 0.0);
            }
        }
        cols.push((format!("x{f}"), Arc::new(Float32Array::from(v))));
    }
    cols.push(("label".into(), Arc::new(Int64Array::from(label))));
    RecordBatch::try_from_iter(cols).unwrap_or_else(|e| panic!("{e}"))
}

fn config(epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::mlp([64, 64]));
    c.epochs = epochs;
    c.early_stopping = None;
    c.progress = Progress::Hidden;
    c
}

/// One-row requests back to back for `window` or until `stop`; latencies in µs.
async fn measure(server: &ModelServer, window: Duration, stop: &AtomicBool) -> Vec<f64> {
    let row: Vec<Tensor> = (0..20)
        .map(|f| {
            Tensor::new(format!("x{f}"), vec![1], TensorData::Fp32(vec![0.25]))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let started = Instant::now();
    let mut micros = Vec::new();
    while started.elapsed() < window && !stop.load(Ordering::Acquire) {
        let t = Instant::now();
        server
            .infer("fraud", None, InferenceRequest::new(row.clone()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        micros.push(t.elapsed().as_secs_f64() * 1e6);
        // A steady client, not a flood: about 5,000 requests/s.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    micros.sort_by(f64::total_cmp);
    micros
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let trained = TabularTrainer::new(config(2))
            .fit(&data(20_000, 1), "label")
            .unwrap_or_else(|e| panic!("{e}"));
        let root = StoreRoot::open("memory://").unwrap_or_else(|e| panic!("{e}"));
        let registry = Arc::new(ObjectRegistry::new(&root));
        registry
            .register("fraud", trained.artifact, trained.metadata)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let server = ModelServer::new(
            registry as Arc<dyn ModelRegistry>,
            vec![Arc::new(TabularLoader::default())],
        );
        server
            .deploy(DeploymentConfig::new(
                "fraud",
                "fraud",
                Routing::Fixed(VersionSelector::Latest),
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let never = AtomicBool::new(false);
        measure(&server, Duration::from_secs(1), &never).await; // warm-up
        let idle = measure(&server, Duration::from_secs(3), &never).await;

        let done = Arc::new(AtomicBool::new(false));
        let training = data(1_000_000, 2);
        let finished = done.clone();
        let job = ThreadExecutor.execute(Box::new(move || {
            let started = Instant::now();
            TabularTrainer::new(config(4))
                .fit(&training, "label")
                .unwrap_or_else(|e| panic!("{e}"));
            eprintln!("training took {:.1} s", started.elapsed().as_secs_f64());
            finished.store(true, Ordering::Release);
        }));
        let busy = measure(&server, Duration::from_secs(60), &done).await;
        job.await.unwrap_or_else(|e| panic!("{e}"));
        let row = |name: &str, v: &[f64]| {
            json!({"what": name, "requests": v.len(), "p50_us": quantile(v, 0.5),
                   "p99_us": quantile(v, 0.99)})
        };
        println!("{}", row("idle", &idle));
        println!("{}", row("while_training", &busy));
        println!(
            "{}",
            json!({"what": "p99_ratio", "value": quantile(&busy, 0.99) / quantile(&idle, 0.99)})
        );
    });
}
