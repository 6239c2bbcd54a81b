//! The stack the quickstart wires: a feature store, the trainer, the model server
//! on HTTP with monitoring, feedback and an inference log, and the retraining loop,
//! each part from the SDK and connected only through its traits.

use std::sync::Arc;
use std::time::Duration;

use arrow_schema::DataType;
use mlops::core::drift::Window;
use mlops::core::feature::{ApplyOptions, FeatureView};
use mlops::core::retrain::{CanaryEvidence, RetrainConfig, RetrainLoop, RetrainServices};
use mlops::prelude::*;
use mlops::serve::http::{router, serve};
use mlops::serve::{ApiKeys, HttpConfig, Scope};
use mlops::serve::{Enrichment, FeedbackConfig, LogConfig, MonitorConfig};
use mlops::store::{InMemoryOnlineStore, ObjectFeatureStore, ObjectInferenceLog};
use mlops::train::{ClassWeights, Progress};

use crate::scenario::Scenario;
use crate::world::Chargebacks;

/// The card features the model uses.
pub(crate) fn features() -> Result<Vec<FeatureRef>> {
    Ok(vec!["card:spend_7d".parse()?, "card:tx_7d".parse()?])
}

/// The feature store on `root`, with the card view defined.
pub(crate) async fn feature_store(root: &StoreRoot) -> Result<Arc<ObjectFeatureStore>> {
    let online = Arc::new(InMemoryOnlineStore::new());
    let store = Arc::new(ObjectFeatureStore::new(root, online));
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
            ApplyOptions::forced(),
        )
        .await?;
    Ok(store)
}

/// The trainer of champions and challengers: a small MLP, balanced classes.
pub(crate) fn trainer() -> TabularTrainer {
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

/// Rows per drift window of the served versions: tumbling, half a day of traffic.
pub(crate) fn drift_window(s: &Scenario) -> usize {
    s.tx_per_day / 2
}

/// The API key of the quickstart's own client (a real deployment reads its keys
/// from a secret, never from code).
const QUICKSTART_KEY: &str = "quickstart-admin-key";

/// The model server and its HTTP face on loopback.
pub(crate) struct Serving {
    pub(crate) server: ModelServer,
    /// A client of the HTTP face: traffic, feedback and the loop go through it.
    pub(crate) client: RemoteServer,
    pub(crate) base: String,
    pub(crate) inference_log: Arc<ObjectInferenceLog>,
    stop: tokio::sync::oneshot::Sender<()>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Deploys the `@champion` of model `fraud`, enriched from `store`, with drift
/// monitoring, feedback and an inference log, and serves it over HTTP.
pub(crate) async fn serve_champion(
    s: &Scenario,
    root: &StoreRoot,
    registry: Arc<ObjectRegistry>,
    store: Arc<ObjectFeatureStore>,
    features: &[FeatureRef],
) -> Result<Serving> {
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    let mut deployment =
        DeploymentConfig::new("fraud", "fraud", Routing::Fixed("@champion".parse()?));
    deployment.enrichment = Some(Enrichment {
        store: store.clone(),
        features: features.to_vec(),
        entity_keys: vec!["card_id".into()],
    });
    deployment.monitoring = Some(
        MonitorConfig::default()
            .with_window(Window::TumblingRows(drift_window(s)))
            .with_min_rows(100)
            .with_queue(100_000),
    );
    deployment.feedback = Some(
        FeedbackConfig::new(Task::BinaryClassification)
            .with_window(s.tx_per_day)
            .with_max_pending(1_000_000),
    );
    deployment.inline_max_rows = Some(64);
    server.deploy(deployment).await?;
    let inference_log = Arc::new(ObjectInferenceLog::new(root));
    server.set_inference_log(inference_log.clone(), LogConfig::default())?;
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
    // One key for the quickstart's client: it serves, and moves canary traffic.
    let config = HttpConfig::default().with_keys(ApiKeys::new().with_key(
        "quickstart",
        QUICKSTART_KEY,
        &[Scope::Admin],
    ));
    let app = router(server.clone(), config.clone())?;
    let http = tokio::spawn(async move {
        serve(listener, app, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    let client = RemoteServer::new(&base)?.with_api_key(QUICKSTART_KEY);
    Ok(Serving {
        server,
        client,
        base,
        inference_log,
        stop,
        http,
    })
}

impl Serving {
    /// Drains the server (the inference log keeps every request), stops the HTTP
    /// face and returns how many requests the inference log wrote. Each wait is
    /// bounded (generously: it ends as soon as its work is done) and an error
    /// names what did not finish.
    pub(crate) async fn shut_down(self) -> Result<u64> {
        let limit = Duration::from_secs(60);
        let left = self.server.drain(limit).await;
        if left > 0 {
            return Err(Error::Unavailable {
                what: "the model server".into(),
                reason: format!("{left} requests were still running after {limit:?}"),
            });
        }
        let _ = self.stop.send(());
        tokio::time::timeout(limit, self.http)
            .await
            .map_err(|_| Error::Unavailable {
                what: "the HTTP face".into(),
                reason: format!("still running {limit:?} after it was told to stop"),
            })?
            .map_err(|e| Error::backend("http", e.to_string()))?
            .map_err(|e| Error::backend("http", e))?;
        self.server.flush_inference_log().await
    }
}

/// The retraining loop over these services, with the quickstart's policy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn retrain_loop(
    s: &Scenario,
    root: &StoreRoot,
    store: Arc<ObjectFeatureStore>,
    chargebacks: Arc<Chargebacks>,
    registry: Arc<ObjectRegistry>,
    client: &RemoteServer,
    audit: Arc<ObjectAuditLog>,
    features: &[FeatureRef],
) -> Result<RetrainLoop> {
    let tracker = Arc::new(
        ObjectTracker::new(root)
            .with_audit(audit.clone())
            .with_actor("quickstart"),
    );
    let mut config = RetrainConfig::new("fraud", "fraud", features.to_vec(), "is_fraud", "roc_auc");
    config.triggers.on_drift = true;
    config.triggers.quality_threshold = Some(0.75);
    config.guardrails.min_rows = s.tx_per_day;
    config.guardrails.cooldown = Duration::from_secs(3 * 86_400);
    config.guardrails.max_retrains = 3;
    config.guardrails.per = Duration::from_secs(30 * 86_400);
    config.training_window = Duration::from_secs(2 * 86_400);
    config.margin = 0.01;
    config.canary.initial_weight = 0.2;
    config.canary.step = 0.4;
    config.canary.min_live_rows = s.tx_per_day / 10;
    config.canary.tolerance = 0.02;
    // The canary is judged on evidence: a sequential test on the per-prediction
    // loss (Brier score) of both arms, valid however often the loop looks.
    config.canary.evidence = Some(CanaryEvidence::on_loss(0.05, 0.0, 0.05)?);
    config.min_live_rows = s.tx_per_day / 2;
    let services = RetrainServices::new(
        store,
        chargebacks,
        Arc::new(trainer()),
        Arc::new(TabularLoader::default()),
        registry,
        Arc::new(client.clone()),
        tracker.clone(),
        audit.clone(),
    )
    .with_snapshots(Arc::new(
        mlops::store::ObjectSnapshotStore::new(root)
            .with_audit(audit.clone())
            .with_actor("retrain-loop"),
    ))
    // Fitting and evaluation run on threads of their own, off the runtime.
    .with_executor(Arc::new(ThreadExecutor))
    // The loop's place and lease on the storage root: a restarted process, or
    // another replica, resumes the rollout where it was.
    .with_state(Arc::new(mlops::store::ObjectLoopStates::new(root)));
    RetrainLoop::new(config, services)
}
