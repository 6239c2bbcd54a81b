//! The closed loop on a fraud-detection case, shared by `examples/quickstart` and
//! its integration test (`tests/closed_loop.rs`, on a smaller run).
//!
//! Simulated days of card transactions with a concept drift half-way: before it,
//! fraud follows large amounts; after it, amounts grow for everyone and fraud
//! follows risky merchants on cards with little recent spend. Card features
//! (7-day spend and count) live in the feature store; transactions carry the
//! amount and the merchant's risk; chargebacks label them a little later.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::DataType;
use chrono::Utc;
use mlops::core::audit::ChainVerdict;
use mlops::core::drift::Window;
use mlops::core::feature::{ApplyOptions, FeatureView};
use mlops::core::inference::{InferenceRequest, ParameterValue, Tensor, TensorData};
use mlops::core::monitoring::TrafficControl;
use mlops::core::retrain::{
    CanaryPolicy, Decision, Guardrails, RetrainConfig, RetrainLoop, RetrainServices, Triggers,
};
use mlops::prelude::*;
use mlops::serve::HttpConfig;
use mlops::serve::http::{router, serve};
use mlops::serve::{Enrichment, FeedbackConfig, LogConfig, MonitorConfig, ROUTING_KEY};
use mlops::store::{InMemoryOnlineStore, ObjectFeatureStore, ObjectInferenceLog};
use mlops::train::{ClassWeights, Progress};

use crate::world::{Chargebacks, DAY_US, Rng, World, at, tx_batch};

/// The size of a run.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// Where everything is stored (`memory://`, a directory, `s3://...`).
    pub(crate) root: String,
    /// Cards.
    pub(crate) cards: usize,
    /// Transactions per simulated day.
    pub(crate) tx_per_day: usize,
    /// Days of history before serving starts.
    pub(crate) history_days: i64,
    /// Days served before the drift.
    pub(crate) days_before_drift: i64,
    /// Days served after it.
    pub(crate) days_after_drift: i64,
    /// Transactions per HTTP request.
    pub(crate) rows_per_request: usize,
}

impl Scenario {
    /// The quickstart's size.
    pub(crate) fn full(root: String) -> Self {
        Self {
            root,
            cards: 2000,
            tx_per_day: 2500,
            history_days: 10,
            days_before_drift: 4,
            days_after_drift: 10,
            rows_per_request: 25,
        }
    }
}

/// What happened.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// One line per event, in order.
    pub(crate) timeline: Vec<String>,
    /// Live ROC AUC of the serving champion per simulated day.
    pub(crate) daily_auc: Vec<(i64, f64)>,
    /// Whether served inputs were found to drift.
    pub(crate) drift_detected: bool,
    /// Versions promoted to champion.
    pub(crate) promoted: Vec<u64>,
    /// Mean daily live ROC AUC of the champion over the days before the drift.
    pub(crate) auc_before: f64,
    /// The same over the two days after it.
    pub(crate) auc_after_drift: f64,
    /// The same over the last two days.
    pub(crate) auc_end: f64,
    /// Inference log records written.
    pub(crate) logged: u64,
}

fn trainer() -> TabularTrainer {
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::mlp([32, 16]));
    c.exclude = vec!["card_id".into(), "event_timestamp".into()];
    c.class_weights = ClassWeights::Balanced;
    c.epochs = 8;
    c.batch_size = 256;
    c.learning_rate = 3e-3;
    c.progress = Progress::Hidden;
    if let Some(e) = c.early_stopping.as_mut() {
        e.metric = "roc_auc".into();
    }
    TabularTrainer::new(c)
}

/// Runs the scenario; `say` receives each timeline line as it happens.
pub(crate) async fn run(s: Scenario, say: impl Fn(&str)) -> Result<Outcome> {
    let mut out = Outcome::default();
    let log = |line: String, out: &mut Outcome| {
        say(&line);
        out.timeline.push(line);
    };
    let root = StoreRoot::open(&s.root)?;
    let mut rng = Rng(2026);
    let start = (Utc::now().timestamp_micros() / DAY_US
        - (s.history_days + s.days_before_drift + s.days_after_drift + 2))
        * DAY_US;
    let world = World::new(&s, start, &mut rng);

    // 1. Features: the card view, its history ingested offline.
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let online = Arc::new(InMemoryOnlineStore::new());
    let store = Arc::new(ObjectFeatureStore::new(&root, online));
    let view = FeatureView::builder("card")
        .join_key("card_id", DataType::Int64)
        .event_time("event_ts")
        .feature("spend_7d", DataType::Float64)
        .feature("tx_7d", DataType::Float64)
        .build()?;
    store
        .apply_view(
            view,
            // A rerun on the same root redefines the view.
            ApplyOptions { force: true },
        )
        .await?;
    for day in 0..=s.history_days {
        store.ingest("card", world.card_rows(day)?).await?;
    }
    let chargebacks = Arc::new(Chargebacks::default());
    let mut history = Vec::new();
    for day in 0..s.history_days {
        history.extend(world.day(&s, day, &mut rng));
    }
    chargebacks
        .0
        .lock()
        .map_err(|_| Error::backend("chargebacks", "poisoned"))?
        .extend(history.iter().copied());
    log(
        format!(
            "day {:>2}: {} card feature rows and {} labelled transactions of history",
            0,
            s.cards as i64 * (s.history_days + 1),
            history.len()
        ),
        &mut out,
    );

    // 2. Training set point-in-time; champion trained and registered.
    let features: Vec<FeatureRef> = vec!["card:spend_7d".parse()?, "card:tx_7d".parse()?];
    let training = store
        .get_historical_features(tx_batch(&history)?, &features, HistoricalOptions::default())
        .await?;
    let trainer = Arc::new(trainer());
    let fitted = {
        let t = trainer.clone();
        tokio::task::spawn_blocking(move || t.fit(&training, "is_fraud"))
            .await
            .map_err(|e| Error::backend("training", e.to_string()))??
    };
    let registry = Arc::new(ObjectRegistry::new(&root).with_audit(audit.clone()));
    let mut metadata = fitted.metadata.clone();
    metadata.lineage.feature_refs = features.clone();
    let v1 = registry
        .register("fraud", fitted.artifact.clone(), metadata)
        .await?;
    registry.set_alias("fraud", "champion", v1.version).await?;
    log(
        format!(
            "day {:>2}: champion v{} trained on {} rows (validation ROC AUC {:.3}) and registered",
            s.history_days,
            v1.version,
            history.len(),
            fitted.report.metrics["roc_auc"]
        ),
        &mut out,
    );

    // 3. Served over HTTP on loopback, with monitoring, feedback and an inference log.
    let server = ModelServer::new(registry.clone(), vec![Arc::new(TabularLoader::default())]);
    let mut deployment =
        DeploymentConfig::new("fraud", "fraud", Routing::Fixed("@champion".parse()?));
    deployment.enrichment = Some(Enrichment {
        store: store.clone(),
        features: features.clone(),
        entity_keys: vec!["card_id".into()],
    });
    deployment.monitoring = Some(MonitorConfig {
        window: Window::TumblingRows(s.tx_per_day / 2),
        min_rows: 100,
        queue: 100_000,
        ..MonitorConfig::default()
    });
    deployment.feedback = Some(FeedbackConfig {
        task: Task::BinaryClassification,
        window: s.tx_per_day,
        max_pending: 1_000_000,
    });
    deployment.inline_max_rows = 64;
    server.deploy(deployment).await?;
    let inference_log = Arc::new(ObjectInferenceLog::new(&root));
    server.set_inference_log(inference_log.clone(), LogConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::backend("listener", e))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| Error::backend("listener", e))?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(serve(
        listener,
        router(server.clone(), HttpConfig::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = RemoteServer::new(&base)?;
    log(
        format!(
            "day {:>2}: serving at {base}/v2/models/fraud (HTTP, v2 protocol)",
            s.history_days
        ),
        &mut out,
    );

    // 4. The retraining loop, against the traits.
    let tracker = Arc::new(
        ObjectTracker::new(&root)
            .with_audit(audit.clone())
            .with_actor("quickstart"),
    );
    let mut config = RetrainConfig::new("fraud", "fraud", features.clone(), "is_fraud", "roc_auc");
    config.triggers = Triggers {
        on_drift: true,
        quality_threshold: Some(0.75),
        ..Triggers::default()
    };
    config.guardrails = Guardrails {
        min_rows: s.tx_per_day,
        cooldown: Duration::from_secs(3 * 86_400),
        max_retrains: 3,
        per: Duration::from_secs(30 * 86_400),
    };
    config.training_window = Duration::from_secs(2 * 86_400);
    config.margin = 0.01;
    config.canary = CanaryPolicy {
        initial_weight: 0.2,
        step: 0.4,
        min_live_rows: s.tx_per_day / 10,
        tolerance: 0.02,
    };
    config.min_live_rows = s.tx_per_day / 2;
    let services = RetrainServices {
        feature_store: store.clone(),
        labels: chargebacks.clone(),
        trainer: trainer.clone(),
        loader: Arc::new(TabularLoader::default()),
        registry: registry.clone(),
        traffic: Arc::new(client.clone()),
        tracker: tracker.clone(),
        audit: audit.clone(),
        snapshots: Some(Arc::new(
            mlops::store::ObjectSnapshotStore::new(&root)
                .with_audit(audit.clone())
                .with_actor("retrain-loop"),
        )),
        // Fitting and evaluation run on threads of their own, off the runtime.
        executor: Arc::new(ThreadExecutor),
    };
    let mut retrain = RetrainLoop::new(config, services)?;

    // 5. Simulated days of traffic and feedback.
    let first = s.history_days;
    let last = first + s.days_before_drift + s.days_after_drift;
    let mut seq = 0u64;
    for day in first..last {
        if day == world.drift_day {
            log(
                format!(
                    "day {day:>2}: -- concept drift: amounts grow; fraud now follows risky merchants on low-spend cards --"
                ),
                &mut out,
            );
        }
        store.ingest("card", world.card_rows(day)?).await?;
        store
            .materialize(
                "card",
                at(start + (day - 1) * DAY_US),
                at(start + (day + 1) * DAY_US),
            )
            .await?;
        let txs = world.day(&s, day, &mut rng);
        let mut day_scores: BTreeMap<u64, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
        for chunk in txs.chunks(s.rows_per_request) {
            seq += 1;
            let n = chunk.len();
            let mut request = InferenceRequest::new(vec![
                Tensor::new(
                    "card_id",
                    vec![n],
                    TensorData::Int64(chunk.iter().map(|t| t.card).collect()),
                )?,
                Tensor::new(
                    "amount",
                    vec![n],
                    TensorData::Fp64(chunk.iter().map(|t| t.amount).collect()),
                )?,
                Tensor::new(
                    "merchant_risk",
                    vec![n],
                    TensorData::Fp64(chunk.iter().map(|t| t.merchant_risk).collect()),
                )?,
            ]);
            let id = format!("tx-{seq}");
            request.id = Some(id.clone());
            // Sticky routing by transaction id: the A/B and canary splits are the
            // same on every run.
            request
                .parameters
                .insert(ROUTING_KEY.into(), ParameterValue::String(id.clone()));
            let answer = client.infer("fraud", None, request).await?;
            let version: u64 = answer
                .model_version
                .as_deref()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            let p = answer
                .outputs
                .first()
                .map(|o| o.data.to_f32_vec())
                .transpose()?
                .unwrap_or_default();
            let e = day_scores.entry(version).or_default();
            e.0.extend(chunk.iter().map(|t| usize::from(t.fraud)));
            e.1.extend(p.iter().map(|&v| f64::from(v)));
            // Chargebacks arrive: feedback through the HTTP API.
            let outcomes: Vec<f64> = chunk.iter().map(|t| f64::from(u8::from(t.fraud))).collect();
            client.record_feedback("fraud", &id, &outcomes).await?;
        }
        chargebacks
            .0
            .lock()
            .map_err(|_| Error::backend("chargebacks", "poisoned"))?
            .extend(txs.iter().copied());

        let health = TrafficControl::health(&client, "fraud").await?;
        let champion = health.champion.unwrap_or(0);
        let (y, p) = day_scores.get(&champion).cloned().unwrap_or_default();
        let auc = mlops::core::metrics::roc_auc(&y, &p).unwrap_or(f64::NAN);
        out.daily_auc.push((day, auc));
        let mut drifted_columns = Vec::new();
        if let Some(h) = health.versions.get(&champion) {
            for (kind, d) in [
                ("inputs", &h.input_drift),
                ("predictions", &h.prediction_drift),
            ] {
                if let Some(d) = d
                    .as_ref()
                    .filter(|d| d.drifted || !d.drifted_features.is_empty())
                {
                    drifted_columns.push(format!("{} ({kind})", d.drifted_features.join(", ")));
                }
            }
        }
        out.drift_detected |= !drifted_columns.is_empty();
        log(
            format!(
                "day {day:>2}: {} transactions; champion v{champion} ROC AUC {auc:.3}{}{}",
                txs.len(),
                match health.canary {
                    Some(c) => format!(
                        "; canary v{c} at {:.0}%",
                        health
                            .versions
                            .get(&c)
                            .map_or(0.0, |h| h.traffic_share * 100.0)
                    ),
                    None => String::new(),
                },
                if drifted_columns.is_empty() {
                    String::new()
                } else {
                    format!("; drift in {}", drifted_columns.join(" and "))
                }
            ),
            &mut out,
        );

        let now = at(start + (day + 1) * DAY_US);
        let decisions = retrain.tick(now).await?;
        for d in &decisions {
            if let Decision::Promoted { version, .. } = d {
                out.promoted.push(*version);
            }
            log(format!("day {day:>2}:   {d}"), &mut out);
        }
    }

    // 6. Shut down gracefully: the inference log keeps every request.
    server.drain(Duration::from_secs(5)).await;
    let _ = stop.send(());
    http.await
        .map_err(|e| Error::backend("http", e.to_string()))?
        .map_err(|e| Error::backend("http", e))?;
    out.logged = server.flush_inference_log().await?;
    let verdict = audit.verify().await?;
    let audit_ok = matches!(verdict, ChainVerdict::Intact { .. });
    let entries = audit.entries(0, usize::MAX).await?.len();
    log(
        format!(
            "end: {} requests in the inference log ({} files); audit log of {entries} entries {}",
            out.logged,
            inference_log.files().await?.len(),
            if audit_ok {
                "verified intact"
            } else {
                "FAILED verification"
            }
        ),
        &mut out,
    );

    let mean = |from: i64, to: i64| {
        let v: Vec<f64> = out
            .daily_auc
            .iter()
            .filter(|(d, a)| *d >= from && *d < to && a.is_finite())
            .map(|(_, a)| *a)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    out.auc_before = mean(first, world.drift_day);
    out.auc_after_drift = mean(world.drift_day, world.drift_day + 2);
    out.auc_end = mean(last - 2, last);
    Ok(out)
}
