//! Live monitoring: drift of served data, feedback and live quality, the inference log.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use mlops_core::drift::{DriftMethod, MmdConfig, MmdDriftDetector, Window};
use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_core::monitoring::TrafficControl;
use mlops_core::{Error, ModelRegistry, Server, Task, Trainer};
use mlops_serve::http::{router, serve};
use mlops_serve::{
    DeploymentConfig, FeedbackConfig, LogConfig, ModelServer, MonitorConfig, RemoteServer, Routing,
};
use mlops_store::{ObjectInferenceLog, ObjectRegistry, StoreRoot};
use mlops_train::{ModelSpec, Progress, TabularLoader, TabularTrainer, TrainConfig};

use crate::common::{WAIT, eventually, sample, within};

/// x ~ U(-1, 1) scaled by `scale` and shifted by `shift`; label x > 0.
fn rows(n: usize, shift: f64, seed: u64) -> (Vec<f64>, Vec<i64>) {
    let mut s = seed;
    let xs: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0 + shift
        })
        .collect();
    let ys = xs.iter().map(|&x| i64::from(x > shift * 0.0)).collect();
    (xs, ys)
}

async fn trained_server(root: &StoreRoot) -> ModelServer {
    let (x, y) = rows(2000, 0.0, 1);
    let data = RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
        ("y", Arc::new(Int64Array::from(y)) as ArrayRef),
    ])
    .unwrap();
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
    c.progress = Progress::Hidden;
    c.learning_rate = 0.05;
    let trained = TabularTrainer::new(c).fit(&data, "y").unwrap();
    let registry = Arc::new(ObjectRegistry::new(root));
    registry
        .register("m", trained.artifact, trained.metadata)
        .await
        .unwrap();
    ModelServer::new(registry, vec![Arc::new(TabularLoader::default())])
}

fn request(x: &[f64], id: &str) -> InferenceRequest {
    let mut r = InferenceRequest::new(vec![
        Tensor::new("x", vec![x.len()], TensorData::Fp64(x.to_vec())).unwrap(),
    ]);
    r.id = Some(id.into());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_inputs_and_predictions_are_watched_for_drift() {
    let root = StoreRoot::open("memory://").unwrap();
    let s = trained_server(&root).await;
    let mut d = DeploymentConfig::new("m", "m", Routing::Fixed(VersionSelector::Latest));
    d.monitoring = Some(
        MonitorConfig::default()
            .with_window(Window::TumblingRows(300))
            .with_min_rows(50)
            .with_queue(1000),
    );
    s.deploy(d).await.unwrap();
    let mut events = s.subscribe_drift();

    // A window like the training data, then a shifted one.
    let (x, _) = rows(300, 0.0, 2);
    for (i, chunk) in x.chunks(30).enumerate() {
        s.infer("m", None, request(chunk, &format!("a{i}")))
            .await
            .unwrap();
    }
    let first = within("the first window's drift event", events.recv())
        .await
        .unwrap();
    let (x, _) = rows(300, 3.0, 3);
    for (i, chunk) in x.chunks(30).enumerate() {
        s.infer("m", None, request(chunk, &format!("b{i}")))
            .await
            .unwrap();
    }
    let mut seen = vec![first];
    while seen.iter().filter(|e| e.window.rows == 300).count() < 4 {
        seen.push(
            within("the drift events of both windows", events.recv())
                .await
                .unwrap(),
        );
    }
    let verdict = |kind: &str, n: usize| {
        seen.iter()
            .filter(|e| e.kind == kind)
            .nth(n)
            .unwrap()
            .window
            .report
            .overall
            .drifted
    };
    assert!(!verdict("inputs", 0), "the first window matches training");
    assert!(verdict("inputs", 1), "the shifted window drifted");
    assert!(verdict("predictions", 1), "so did the predictions");
    let status = s.drift_status("m").unwrap();
    let (inputs, predictions) = (&status[&1].inputs, &status[&1].predictions);
    assert_eq!(inputs.as_ref().unwrap().windows, 2);
    assert_eq!(inputs.as_ref().unwrap().drifted_windows, 1);
    assert_eq!(inputs.as_ref().unwrap().drifted_features, vec!["x"]);
    assert!(predictions.as_ref().unwrap().drifted);
    let metrics = s.metrics_text();
    assert!(
        metrics.contains("mlops_drift_detected{model=\"m\",version=\"1\",kind=\"inputs\"} 1"),
        "{metrics}"
    );
    let health = s.health("m").await.unwrap();
    assert_eq!(health.champion, Some(1));
    assert!(health.versions[&1].input_drift.as_ref().unwrap().drifted);
}

/// The deployment names its own detector (MMD over the inputs) instead of the
/// table profile the model carries: any `DriftDetector` serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_watches_inputs_with_the_detector_it_names() {
    let root = StoreRoot::open("memory://").unwrap();
    let s = trained_server(&root).await;
    let (x, _) = rows(500, 0.0, 1);
    let reference =
        RecordBatch::try_from_iter([("x", Arc::new(Float64Array::from(x)) as ArrayRef)]).unwrap();
    let mmd = MmdDriftDetector::fit(&reference, None, MmdConfig::default()).unwrap();
    let mut d = DeploymentConfig::new("m", "m", Routing::Fixed(VersionSelector::Latest));
    d.monitoring = Some(
        MonitorConfig::default()
            .with_window(Window::TumblingRows(200))
            .with_min_rows(50)
            .with_queue(1000)
            .with_input_detector(Arc::new(mmd)),
    );
    s.deploy(d).await.unwrap();
    let mut events = s.subscribe_drift();
    for (shift, seed) in [(0.0, 2), (1.5, 3)] {
        let (x, _) = rows(200, shift, seed);
        for (i, chunk) in x.chunks(20).enumerate() {
            s.infer("m", None, request(chunk, &format!("{seed}-{i}")))
                .await
                .unwrap();
        }
    }
    let mut inputs = Vec::new();
    while inputs.len() < 2 {
        let e = within("both windows' input drift events", events.recv())
            .await
            .unwrap();
        if e.kind == "inputs" {
            inputs.push(e);
        }
    }
    for e in &inputs {
        assert_eq!(e.window.report.features.len(), 1);
        assert_eq!(
            e.window.report.features[0].method,
            DriftMethod::MaximumMeanDiscrepancy
        );
    }
    assert!(
        !inputs[0].window.report.overall.drifted,
        "like the reference"
    );
    assert!(inputs[1].window.report.overall.drifted, "shifted by 1.5");
    // The model's own prediction detector still watches the predictions (its
    // first window closed before the second of the inputs; waited for all the
    // same, the monitor being a task of its own).
    eventually("a drift summary of the predictions", async || {
        s.drift_status("m").unwrap()[&1].predictions.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_gives_live_quality_locally_and_over_http() {
    let root = StoreRoot::open("memory://").unwrap();
    let s = trained_server(&root).await;
    let mut d = DeploymentConfig::new("m", "m", Routing::Fixed(VersionSelector::Latest));
    d.feedback = Some(FeedbackConfig::new(Task::BinaryClassification));
    s.deploy(d).await.unwrap();
    let (x, y) = rows(200, 0.0, 4);
    let mut ids = Vec::new();
    for (i, (xv, yv)) in x.iter().zip(&y).enumerate() {
        let answer = s
            .infer("m", None, request(&[*xv], &format!("r{i}")))
            .await
            .unwrap();
        // The client's id is echoed; feedback names the server's.
        assert_eq!(answer.id.as_deref(), Some(format!("r{i}").as_str()));
        let id = answer.prediction_id().unwrap().to_owned();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        ids.push(id);
        if i < 150 {
            assert_eq!(s.record_feedback("m", &ids[i], &[*yv as f64]).unwrap(), 1);
        }
    }
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 200, "every answer has its own id");
    // The client's own request id does not name a prediction.
    assert!(matches!(
        s.record_feedback("m", "r160", &[1.0]).unwrap_err(),
        Error::NotFound { .. }
    ));
    let q = &s.live_quality("m").unwrap()[&1];
    assert_eq!(q.rows, 150);
    assert!(
        q.metrics["roc_auc"] > 0.95 && q.metrics["accuracy"] > 0.9,
        "{q:?}"
    );
    assert!(
        s.metrics_text()
            .contains("mlops_live_quality{model=\"m\",version=\"1\",metric=\"roc_auc\"}")
    );
    // Bad feedback is refused clearly and changes nothing.
    let err = s.record_feedback("m", &ids[0], &[1.0]).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }),
        "already labelled: {err}"
    );
    assert!(
        s.record_feedback("m", &ids[160], &[2.0])
            .unwrap_err()
            .to_string()
            .contains("not 0 or 1")
    );
    assert!(
        s.record_feedback("m", &ids[160], &[1.0, 0.0])
            .unwrap_err()
            .to_string()
            .contains("2 outcomes")
    );
    assert!(s.record_feedback("m", &ids[160], &[f64::NAN]).is_err());
    assert_eq!(s.live_quality("m").unwrap()[&1].rows, 150);

    // Over HTTP, with the remote client's TrafficControl.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = crate::http::open();
    let app = router(s.clone(), config.clone()).unwrap();
    tokio::spawn(async move { serve(listener, app, &config, std::future::pending()).await });
    let remote = RemoteServer::new(&base)
        .unwrap()
        .with_timeout(WAIT)
        .unwrap();
    assert_eq!(
        remote
            .record_feedback("m", &ids[160], &[y[160] as f64])
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        remote
            .record_feedback("m", "zzz", &[1.0])
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    // Business metrics ride on the same route, before or without outcomes.
    let conversion = std::collections::BTreeMap::from([("conversion".to_owned(), 1.0)]);
    assert_eq!(
        remote
            .record_metrics("m", &ids[161], &conversion)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        remote
            .record_metrics("m", &ids[161], &conversion)
            .await
            .unwrap_err(),
        Error::Conflict { .. }
    ));
    let health = remote.health("m").await.unwrap();
    let live = &health.versions[&1].live;
    assert_eq!(live.rows, 151);
    assert_eq!(health.versions[&1].traffic_share, 1.0);
    // The per-prediction loss of all 151 labelled predictions and the
    // business metric, in total and in the latest hour, reach the client.
    assert_eq!(live.loss.count(), 151);
    assert!(live.loss.mean() > 0.0 && live.loss.mean() < 0.1, "{live:?}");
    assert_eq!(live.business["conversion"].count(), 1);
    assert_eq!(live.windows["1h"]["loss"].count(), 151);
    assert_eq!(live.windows["1h"]["conversion"].count(), 1);
    // Bad feedback over HTTP: 4xx with a message, never a 500.
    let client = crate::http::client();
    for (path, body, status, needle) in [
        ("/v2/models/m/feedback", "{not json", 400, "feedback"),
        (
            "/v2/models/m/feedback",
            r#"{"id":"r170","outcomes":[1],"extra":1}"#,
            400,
            "extra",
        ),
        (
            "/v2/models/m/feedback",
            r#"{"id":"r170","outcomes":[0.5]}"#,
            400,
            "not 0 or 1",
        ),
        (
            "/v2/models/nope/feedback",
            r#"{"id":"r170","outcomes":[1]}"#,
            404,
            "nope",
        ),
        ("/v2/models/m/feedback", r#"{"id":"r170"}"#, 400, "outcomes"),
        (
            "/v2/models/m/feedback",
            r#"{"id":"r170","metrics":{"bad name":1}}"#,
            400,
            "metric name",
        ),
    ] {
        let resp = client
            .post(format!("{base}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path} {body}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let resp = client
        .get(format!("{base}/v2/models/nope/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inference_log_keeps_every_request_through_shutdown() {
    let root = StoreRoot::open("memory://").unwrap();
    let s = trained_server(&root).await;
    s.deploy(DeploymentConfig::new(
        "m",
        "m",
        Routing::Fixed(VersionSelector::Latest),
    ))
    .await
    .unwrap();
    let log = Arc::new(ObjectInferenceLog::new(&root));
    s.set_inference_log(
        log.clone(),
        LogConfig::default()
            .with_flush_rows(10)
            .with_flush_interval(Duration::from_secs(3600))
            .with_max_buffered(1000),
    )
    .unwrap();
    for i in 0..25 {
        s.infer("m", None, request(&[0.5], &format!("q{i}")))
            .await
            .unwrap();
    }
    // 20 written in two batches of 10; the last 5 are written by the drain.
    assert_eq!(
        within("the drain", s.drain(Duration::from_secs(1))).await,
        0
    );
    let files = log.files().await.unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    let mut rows = 0;
    let mut ids = Vec::new();
    for f in &files {
        let bytes = root.get(f).await.unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            rows += batch.num_rows();
            let col = batch.column_by_name("request_id").unwrap();
            let col = col
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            ids.extend(col.iter().map(|v| v.unwrap().to_owned()));
            assert!(
                batch.column_by_name("inputs").is_some()
                    && batch.column_by_name("latency_us").is_some()
            );
        }
    }
    assert_eq!(rows, 25);
    assert_eq!(ids[0], "q0");
    assert_eq!(ids[24], "q24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_queue_holds_its_byte_budget() {
    let root = StoreRoot::open("memory://").unwrap();
    let s = trained_server(&root).await;
    let mut d = DeploymentConfig::new("m", "m", Routing::Fixed(VersionSelector::Latest));
    // A budget below one request's inputs and outputs: nothing is queued, each
    // request is dropped and counted, and serving goes on.
    d.monitoring = Some(
        MonitorConfig::default()
            .with_window(Window::TumblingRows(10))
            .with_min_rows(5)
            .with_max_queued_bytes(64),
    );
    s.deploy(d).await.unwrap();
    let (x, _) = rows(200, 0.0, 2);
    for (i, chunk) in x.chunks(20).enumerate() {
        s.infer("m", None, request(chunk, &format!("q{i}")))
            .await
            .unwrap();
    }
    let dropped = sample(
        &s.metrics_text(),
        "mlops_dropped_records_total",
        r#"model="m",outcome="monitor""#,
    );
    assert_eq!(dropped, 10.0);
    assert!(
        s.drift_status("m")
            .unwrap()
            .values()
            .all(|v| v.inputs.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_needs_its_own_scope_and_the_server_issued_id() {
    use mlops_serve::{ApiKeys, HttpConfig, Scope};
    let root = StoreRoot::open("memory://").unwrap();
    let s = trained_server(&root).await;
    let mut d = DeploymentConfig::new("m", "m", Routing::Fixed(VersionSelector::Latest));
    d.feedback = Some(FeedbackConfig::new(Task::BinaryClassification));
    s.deploy(d).await.unwrap();
    let keys = ApiKeys::new()
        .with_key("app", "app-key", &[Scope::Infer])
        .with_key("labels", "labels-key", &[Scope::Feedback])
        .with_key("ops", "ops-key", &[Scope::Admin]);
    let config = HttpConfig::default().with_keys(keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(s.clone(), config.clone()).unwrap();
    tokio::spawn(async move { serve(listener, app, &config, std::future::pending()).await });
    let client = |key: &str| {
        RemoteServer::new(&base)
            .unwrap()
            .with_timeout(WAIT)
            .unwrap()
            .with_api_key(key)
    };
    let (app, labels, ops) = (client("app-key"), client("labels-key"), client("ops-key"));
    let answer = app.infer("m", None, request(&[0.5], "mine")).await.unwrap();
    let id = answer.prediction_id().unwrap().to_owned();
    // An infer key cannot label predictions (its own or anyone's) ...
    assert!(matches!(
        app.record_feedback("m", &id, &[1.0]).await.unwrap_err(),
        Error::Forbidden { .. }
    ));
    // ... a feedback key can, by the server's id only, and cannot infer.
    assert!(matches!(
        labels
            .record_feedback("m", "mine", &[1.0])
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    assert_eq!(labels.record_feedback("m", &id, &[1.0]).await.unwrap(), 1);
    assert!(matches!(
        labels
            .infer("m", None, request(&[0.5], "x"))
            .await
            .unwrap_err(),
        Error::Forbidden { .. }
    ));
    // Admin implies feedback; ids past the limit are refused before a lookup.
    let second = ops.infer("m", None, request(&[0.1], "y")).await.unwrap();
    assert_eq!(
        ops.record_feedback("m", second.prediction_id().unwrap(), &[0.0])
            .await
            .unwrap(),
        1
    );
    let long = "f".repeat(300);
    let err = labels
        .record_feedback("m", &long, &[1.0])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("prediction_id"), "{err}");
    assert_eq!(s.live_quality("m").unwrap()[&1].rows, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_replicas_is_steered_and_judged_as_one() {
    use mlops_core::fleet::{FleetStore, FleetTraffic};
    use mlops_store::ObjectFleet;
    let root = StoreRoot::open("memory://").unwrap();
    // Two versions of `m` in the registry; two replicas serving it.
    let first = trained_server(&root).await;
    let registry = ObjectRegistry::new(&root);
    let (_, v1) = registry
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap();
    let meta = registry
        .get_version("m", &VersionSelector::Number(1))
        .await
        .unwrap()
        .metadata;
    registry.register("m", v1, meta).await.unwrap();
    let fleet: Arc<dyn FleetStore> = Arc::new(ObjectFleet::new(&root));
    let replicas = [first.clone(), trained_server(&root).await];
    for (i, s) in replicas.iter().enumerate() {
        let mut d = DeploymentConfig::new("m", "m", Routing::Fixed(VersionSelector::Number(1)));
        d.feedback = Some(FeedbackConfig::new(Task::BinaryClassification));
        s.deploy(d).await.unwrap();
        s.join_fleet(fleet.clone(), format!("pod-{i}"), Duration::from_millis(50));
    }
    let steer = FleetTraffic::new(fleet.clone(), Duration::from_secs(60));
    eventually("both replicas report", async || {
        fleet.reports("m").await.unwrap().len() == 2
    })
    .await;
    // One call moves every replica.
    steer.start_canary("m", 1, 2, 0.5).await.unwrap();
    for s in &replicas {
        eventually("the canary reaches the replica", async || {
            matches!(s.status("m").unwrap().routing, Routing::Canary { weight, .. } if weight == 0.5)
        })
        .await;
    }
    // Feedback on either replica counts in the one health.
    let (x, y) = rows(40, 0.0, 9);
    for (i, (xv, yv)) in x.iter().zip(&y).enumerate() {
        let s = &replicas[i % 2];
        let answer = s.infer("m", None, request(&[*xv], "q")).await.unwrap();
        s.record_feedback("m", answer.prediction_id().unwrap(), &[*yv as f64])
            .unwrap();
    }
    eventually("the merged health counts all 40", async || {
        let h = steer.health("m").await.unwrap();
        h.versions
            .values()
            .map(|v| v.live.loss.count())
            .sum::<u64>()
            == 40
    })
    .await;
    let h = steer.health("m").await.unwrap();
    assert_eq!((h.champion, h.canary), (Some(1), Some(2)));
    // The weight moves on every replica; promotion routes all of them.
    steer.set_canary_weight("m", 0.9).await.unwrap();
    steer.route_all("m", 2).await.unwrap();
    for s in &replicas {
        eventually("the promotion reaches the replica", async || {
            matches!(
                &s.status("m").unwrap().routing,
                Routing::Fixed(VersionSelector::Number(2))
            )
        })
        .await;
    }
    // A weight without a canary, and bad intents, are refused; nothing moves.
    assert!(steer.set_canary_weight("m", 0.2).await.is_err());
    assert!(steer.start_canary("m", 2, 2, 0.5).await.is_err());
    assert_eq!(fleet.routing("m").await.unwrap().unwrap().revision, 3);
    assert!(matches!(
        steer.health("nope").await.unwrap_err(),
        Error::Unavailable { .. }
    ));
}
