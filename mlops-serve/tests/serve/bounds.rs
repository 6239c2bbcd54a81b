//! Memory bounded by bytes, not only by count: the feedback book, the
//! prediction cache, shadow traffic, the drift monitor's queue and the inference
//! log, each against a client that sends large or many requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_core::monitoring::InferenceLogSink;
use mlops_core::{Error, Result, Server, Task};
use mlops_serve::{CacheConfig, DeploymentConfig, FeedbackConfig, LogConfig, ModelServer, Routing};

use crate::common::*;

async fn deployed(config: impl FnOnce(&mut DeploymentConfig)) -> (ModelServer, Arc<LinearLoader>) {
    let models = [version_model(1), version_model(2)];
    let registry = registry(&models).await;
    let loader = Arc::new(LinearLoader::default());
    let s = ModelServer::new(registry, vec![loader.clone()]);
    let mut d = DeploymentConfig::new("fraud", "m", Routing::Fixed(VersionSelector::Number(1)));
    config(&mut d);
    in_time("deploying fraud", s.deploy(d)).await.unwrap();
    (s, loader)
}

fn with_id(rows: usize, id: &str) -> InferenceRequest {
    let mut r = request(&vec![[0.5, 0.5]; rows]);
    r.id = Some(id.into());
    r
}

/// The value of the series `needle` names; panics when the metrics have no
/// such series (an answer that cannot be read must not pass as a number).
fn metric(s: &ModelServer, needle: &str) -> f64 {
    let text = s.metrics_text();
    text.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {needle} in the metrics:\n{text}"))
}

/// The longest any one wait here may take; reached only when something hangs.
const PATIENCE: Duration = Duration::from_secs(120);

/// `future`'s output; panics naming `what` when it is not ready within
/// [`PATIENCE`].
async fn in_time<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_ids_are_capped_and_pending_predictions_fit_their_byte_budget() {
    let (s, _) = deployed(|d| {
        d.feedback = Some(
            FeedbackConfig::new(Task::Regression)
                .with_max_id_bytes(64)
                .with_max_pending_bytes(64 << 10),
        );
    })
    .await;
    // Request ids are the client's correlation field, never kept for
    // feedback: a long one is served; feedback naming an id over the limit is
    // refused before any lookup, naming the limit.
    let answer = in_time(
        "a request with a long id",
        s.infer("fraud", None, with_id(1, &"i".repeat(65))),
    )
    .await
    .unwrap();
    assert_eq!(answer.prediction_id().map(str::len), Some(32));
    let err = s
        .record_feedback("fraud", &"i".repeat(65), &[1.0])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("at most 64 bytes"),
        "{err}"
    );
    // 1,000 predictions of 100 rows each (about 800 KB of scores) in a 64 KiB
    // budget: the oldest are forgotten, the newest still take feedback.
    let mut ids = Vec::new();
    in_time("1,000 requests", async {
        for i in 0..1000 {
            let answer = s
                .infer("fraud", None, with_id(100, &format!("r{i}")))
                .await
                .unwrap();
            ids.push(answer.prediction_id().unwrap().to_owned());
        }
    })
    .await;
    assert!(matches!(
        s.record_feedback("fraud", &ids[0], &[1.0; 100])
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    assert_eq!(
        s.record_feedback("fraud", &ids[999], &[1.0; 100]).unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_holds_its_byte_budget_and_skips_large_inputs() {
    let (s, loader) = deployed(|d| {
        d.cache = Some(
            CacheConfig::new(10_000, Duration::from_secs(60))
                .with_max_bytes(256 << 10)
                .with_max_key_bytes(4 << 10),
        );
    })
    .await;
    // Inputs over the key limit are never cached: each call runs the model.
    let big = request(&vec![[1.0, 2.0]; 1000]);
    for _ in 0..3 {
        in_time("a large request", s.infer("fraud", None, big.clone()))
            .await
            .unwrap();
    }
    assert_eq!(loader.stats.calls.load(Ordering::SeqCst), 3);
    // 2,000 distinct requests of 100 rows (about 2.4 KB of key and outputs
    // each) against 256 KiB: the cache holds on the order of a hundred, far
    // fewer than its 10,000-entry limit.
    in_time("2,000 requests", async {
        for i in 0..2000 {
            let mut r = request(&vec![[i as f32, 0.0]; 100]);
            r.id = None;
            s.infer("fraud", None, r).await.unwrap();
        }
    })
    .await;
    let stats = s.status("fraud").unwrap().cache.unwrap();
    assert!(stats.entries < 300, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_shadows_are_skipped_not_piled_up() {
    // The shadow's calls wait at a gate the test holds closed, so none of them
    // finishes while the requests are sent: exactly the server's cap of shadow
    // calls may wait, every other mirror is skipped and counted, whatever the
    // machine's speed.
    let gate = Gate::closed();
    let models = [
        version_model(1),
        Linear {
            w: [2.0, 0.0],
            b: 0.0,
            delay_ms: GATED,
        },
    ];
    let registry = registry(&models).await;
    let loader = LinearLoader::default().gated_calls(&gate);
    let s = ModelServer::new(registry, vec![Arc::new(loader)]);
    let mut d = DeploymentConfig::new("fraud", "m", Routing::Fixed(VersionSelector::Number(1)));
    d.shadows = vec![VersionSelector::Number(2)];
    // Model calls on the blocking pool, where a held shadow blocks no worker.
    d.inline_max_rows = Some(0);
    // Every shadow call in flight is held in the model, not in the version's
    // queue, so the gate counts them all.
    d.max_running_calls = CAP;
    in_time("deploying fraud", s.deploy(d)).await.unwrap();
    in_time(
        "1,000 requests answered while their shadows are held",
        async {
            for _ in 0..1000 {
                s.infer("fraud", None, request(&[[1.0, 0.0]]))
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    gate.held(CAP, "the shadow calls in flight").await;
    assert_eq!(
        gate.held_now(),
        CAP,
        "no more shadow calls than the cap wait"
    );
    let skipped = metric(
        &s,
        r#"mlops_shadow_requests_total{model="fraud",outcome="skipped"}"#,
    );
    assert_eq!(
        skipped,
        (1000 - CAP) as f64,
        "every mirror beyond the cap is skipped"
    );
    gate.open();
}

/// The server's bound on shadow calls in flight (`MAX_SHADOWS_IN_FLIGHT`).
const CAP: usize = 256;

/// A sink that always fails, counting the attempts.
#[derive(Debug, Default)]
struct Failing(AtomicUsize);

#[async_trait]
impl InferenceLogSink for Failing {
    async fn write(&self, _records: RecordBatch) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(Error::Unavailable {
            what: "sink".into(),
            reason: "down".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_sink_is_retried_with_backoff_within_a_byte_budget() {
    let (s, _) = deployed(|_| {}).await;
    let sink = Arc::new(Failing::default());
    s.set_inference_log(
        sink.clone(),
        LogConfig::default()
            .with_flush_rows(10)
            .with_max_buffered_bytes(256 << 10),
    )
    .unwrap();
    // Zero limits are refused, naming the setting (a zero interval would panic
    // in the writer's timer).
    for (config, name) in [
        (LogConfig::default().with_flush_rows(0), "flush_rows"),
        (
            LogConfig::default().with_flush_interval(Duration::ZERO),
            "flush_interval",
        ),
        (LogConfig::default().with_max_buffered(0), "max_buffered"),
        (
            LogConfig::default().with_max_buffered_bytes(0),
            "max_buffered_bytes",
        ),
    ] {
        let err = s.set_inference_log(sink.clone(), config).unwrap_err();
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    // 2,000 requests of 50 rows: every 10 records would be a write attempt
    // (200 of them) without backoff, and the buffer would hold ~5 MB.
    in_time("2,000 requests", async {
        for i in 0..2000 {
            s.infer("fraud", None, with_id(50, &format!("q{i}")))
                .await
                .unwrap();
        }
    })
    .await;
    // The writer runs in the background: wait until it has tried the sink.
    in_time("a first write attempt to the log sink", async {
        while sink.0.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let attempts = sink.0.load(Ordering::SeqCst);
    assert!((1..20).contains(&attempts), "{attempts} write attempts");
    let dropped = metric(
        &s,
        r#"mlops_dropped_records_total{model="fraud",outcome="inference_log"}"#,
    );
    assert!(dropped > 1000.0, "dropped {dropped}: the byte budget holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tensor_byte_size_counts_elements_names_and_shapes() {
    let t = Tensor::new("x", vec![2, 2], TensorData::Fp64(vec![0.0; 4])).unwrap();
    assert_eq!(t.data.heap_bytes(), 32);
    assert!(t.heap_bytes() >= 32 + 1 + 16);
    let b = TensorData::Bytes(vec![b"abc".to_vec(), Vec::new()]);
    assert_eq!(b.heap_bytes(), 3 + 2 * std::mem::size_of::<Vec<u8>>());
}
