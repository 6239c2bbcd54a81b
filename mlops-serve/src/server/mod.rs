//! [`ModelServer`]: the in-process implementation of [`Server`](mlops_core::Server),
//! assembled from the runtime pieces below it.
//!
//! - `state`: a deployment's loaded versions and routing, swapped as one;
//! - `lifecycle`: deploy, resolve and load versions, reload, route, unload;
//! - `routing`: which version answers a request;
//! - `enrich`: inputs looked up in the online feature store;
//! - `infer`: the request path and the [`Server`](mlops_core::Server) impl;
//! - `traffic`: [`TrafficControl`](mlops_core::monitoring::TrafficControl), for the
//!   retraining loop;
//! - `fleet`: the server as one replica of a fleet steered through the storage
//!   root.

mod enrich;
mod fleet;
mod infer;
mod lifecycle;
mod routing;
mod state;
mod traffic;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use mlops_core::error::ResourceKind;
use mlops_core::model::VersionSelector;
use mlops_core::monitoring::{DriftSummary, InferenceLogSink, LiveQuality};
use mlops_core::{Error, ModelLoader, ModelRegistry, Result};

pub use routing::ROUTING_KEY;
use state::Deployment;

use crate::config::{DeploymentConfig, LogConfig, Routing};
use crate::runtime::cache::{CacheStats, PredictionCache};
use crate::runtime::feedback::FeedbackBook;
use crate::runtime::inference_log::InferenceLogger;
use crate::runtime::metrics::{ServerMetrics, UNKNOWN};
use crate::runtime::monitor::DriftEvent;
use crate::runtime::shadow::ShadowRecord;

/// The latest drift verdicts of one served version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VersionDrift {
    /// Of its served inputs against the training reference.
    pub inputs: Option<DriftSummary>,
    /// Of its predictions against the validation reference.
    pub predictions: Option<DriftSummary>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadReport {
    /// Each selector of the deployment and the version it resolved to.
    pub resolved: BTreeMap<String, u64>,
    /// Versions loaded by this reload.
    pub loaded: Vec<u64>,
    /// Versions no longer served.
    pub unloaded: Vec<u64>,
    /// Set by [`ModelServer::deploy_or_wait`] and
    /// [`ModelServer::redeploy_or_wait`] when the deployment was deployed
    /// waiting: why its versions did not load (nothing was resolved or loaded).
    pub waiting: Option<String>,
}

/// A deployment's state, for admin views.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentStatus {
    /// The served name.
    pub name: String,
    /// The registry model.
    pub model: String,
    /// Current routing.
    pub routing: Routing,
    /// Selectors and the versions they resolve to.
    pub resolved: BTreeMap<String, u64>,
    /// Loaded versions.
    pub versions: Vec<u64>,
    /// The shadow versions.
    pub shadows: Vec<u64>,
    /// Prediction cache counters, when caching.
    pub cache: Option<CacheStats>,
    /// Why it serves nothing yet, while it waits for its model, an alias or a
    /// loadable version ([`ModelServer::deploy_or_wait`]); `None` once it serves.
    pub not_ready: Option<String>,
    /// Why its last reload failed (an alias moved to a version that does not
    /// load, e.g. one refused by a signature check), while the versions it
    /// had go on serving; `None` after a reload that succeeded.
    pub last_reload_error: Option<String>,
}

/// Shadow requests running at once, across deployments; beyond it, copies are
/// skipped and counted (`mlops_shadow_requests_total{outcome="skipped"}`): a
/// slow shadow version must not pile up tasks and their inputs.
const MAX_SHADOWS_IN_FLIGHT: usize = 256;

#[derive(Debug)]
struct Inner {
    name: String,
    version: String,
    registry: Arc<dyn ModelRegistry>,
    loaders: Vec<Arc<dyn ModelLoader>>,
    deployments: RwLock<BTreeMap<String, Arc<Deployment>>>,
    /// Configs of unloaded deployments, for the repository `load` call.
    parked: Mutex<BTreeMap<String, DeploymentConfig>>,
    metrics: Arc<ServerMetrics>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Places for shadow requests running off the request path.
    shadow_permits: Arc<tokio::sync::Semaphore>,
    rng: AtomicU64,
    drift_events: tokio::sync::broadcast::Sender<DriftEvent>,
    logger: Mutex<Option<InferenceLogger>>,
}

/// The in-process model server: named deployments of registry models, each with
/// its routing (fixed, A/B split, canary), optional shadow, dynamic batching,
/// prediction cache, hot reload and feature enrichment. Implements [`Server`](mlops_core::Server).
///
/// Cloning is cheap and shares the server. Background work (batch queues, alias
/// polling, canary ramps) runs on the tokio runtime that called
/// [`ModelServer::deploy`].
#[derive(Debug, Clone)]
pub struct ModelServer {
    inner: Arc<Inner>,
}

impl ModelServer {
    /// A server loading models from `registry` with `loaders` (the first that
    /// reads an artifact's flavor is used).
    pub fn new(registry: Arc<dyn ModelRegistry>, loaders: Vec<Arc<dyn ModelLoader>>) -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            inner: Arc::new(Inner {
                name: "mlops".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                registry,
                loaders,
                deployments: RwLock::new(BTreeMap::new()),
                parked: Mutex::new(BTreeMap::new()),
                metrics: Arc::new(ServerMetrics::new()),
                draining: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                shadow_permits: Arc::new(tokio::sync::Semaphore::new(MAX_SHADOWS_IN_FLIGHT)),
                rng: AtomicU64::new(seed),
                drift_events: tokio::sync::broadcast::channel(1024).0,
                logger: Mutex::new(None),
            }),
        }
    }

    fn deployment(&self, name: &str) -> Result<Arc<Deployment>> {
        let map = self
            .inner
            .deployments
            .read()
            .map_err(|_| Error::backend("model server", "deployment table poisoned"))?;
        map.get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(ResourceKind::Model, name))
    }

    /// Whether `name` is deployed.
    pub fn has_model(&self, name: &str) -> bool {
        self.inner
            .deployments
            .read()
            .is_ok_and(|map| map.contains_key(name))
    }

    /// The deployment's routing, versions, shadow and cache counters.
    pub fn status(&self, name: &str) -> Result<DeploymentStatus> {
        let d = self.deployment(name)?;
        let s = d.state();
        Ok(DeploymentStatus {
            name: d.config.name.clone(),
            model: d.config.model.clone(),
            routing: s.routing.clone(),
            resolved: s
                .resolved
                .iter()
                .map(|(sel, n)| (sel.to_string(), *n))
                .collect(),
            versions: s.versions.keys().copied().collect(),
            shadows: s.shadows.clone(),
            cache: d.cache.as_ref().map(PredictionCache::stats),
            not_ready: s.waiting.clone(),
            last_reload_error: d.last_error(),
        })
    }

    /// Whether the server takes requests: it is not draining and every
    /// deployment serves (none waits for its versions). The
    /// [`Server::ready`](mlops_core::Server::ready) answer.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self
                .inner
                .deployments
                .read()
                .is_ok_and(|map| map.values().all(|d| d.state().waiting.is_none()))
    }

    /// Whether deployment `name` (at `version`, a number or an alias it routes
    /// to, when given) serves: false while draining or while it waits for its
    /// versions. An unknown name is [`Error::NotFound`]. The
    /// [`Server::model_ready`](mlops_core::Server::model_ready) answer.
    pub fn is_model_ready(&self, name: &str, version: Option<&str>) -> Result<bool> {
        let d = self.deployment(name)?;
        if self.is_draining() {
            return Ok(false);
        }
        let state = d.state();
        if state.waiting.is_some() {
            return Ok(false);
        }
        Ok(match version {
            None => true,
            Some(v) => v
                .parse::<VersionSelector>()
                .ok()
                .and_then(|s| state.number_of(&s))
                .is_some(),
        })
    }

    /// The most recent mirrored requests of `name` (up to 1000), oldest first.
    pub fn shadow_records(&self, name: &str) -> Result<Vec<ShadowRecord>> {
        let d = self.deployment(name)?;
        Ok(d.shadow_log.records())
    }

    /// The prediction cache counters of `name` (`None` without a cache).
    pub fn cache_stats(&self, name: &str) -> Result<Option<CacheStats>> {
        Ok(self
            .deployment(name)?
            .cache
            .as_ref()
            .map(PredictionCache::stats))
    }

    /// Records the true outcomes (one per row) of the request `id` served by
    /// deployment `name`; they feed the version's live quality. An id never
    /// served, already labelled or forgotten is [`Error::NotFound`].
    pub fn record_feedback(&self, name: &str, id: &str, outcomes: &[f64]) -> Result<u64> {
        self.with_feedback(name, |book| {
            let version = book.record_outcomes(name, id, outcomes)?;
            if let Some(q) = book.quality().get(&version) {
                self.inner.metrics.record_quality(name, version, q);
            }
            Ok(version)
        })
    }

    /// Runs `f` on deployment `name`'s feedback book; a deployment without
    /// feedback is [`Error::Conflict`].
    fn with_feedback<T>(
        &self,
        name: &str,
        f: impl FnOnce(&FeedbackBook) -> Result<T>,
    ) -> Result<T> {
        let d = self.deployment(name)?;
        let book = d.feedback.as_ref().ok_or_else(|| {
            Error::conflict(
                format!("deployment {name}"),
                "it was deployed without feedback",
            )
        })?;
        f(book)
    }

    /// Records business metrics (a conversion, an order value: up to 16 per
    /// call, names of letters, digits and `_ . : -`) of the prediction `id`
    /// served by deployment `name`, for the version that served it; each name
    /// at most once per prediction, at most 32 names per version. They appear
    /// in [`LiveQuality::business`] and its windows. The prediction stays open
    /// for its outcomes.
    pub fn record_metrics(
        &self,
        name: &str,
        id: &str,
        values: &BTreeMap<String, f64>,
    ) -> Result<u64> {
        self.with_feedback(name, |book| {
            book.record_metrics_at(
                name,
                id,
                values,
                crate::runtime::feedback::bucket_of(chrono::Utc::now().timestamp()),
            )
        })
    }

    /// Live quality per version of `name` (empty without feedback).
    pub fn live_quality(&self, name: &str) -> Result<BTreeMap<u64, LiveQuality>> {
        let d = self.deployment(name)?;
        Ok(d.feedback
            .as_ref()
            .map(FeedbackBook::quality)
            .unwrap_or_default())
    }

    /// The latest drift summaries (inputs, predictions) per version of `name`.
    pub fn drift_status(&self, name: &str) -> Result<BTreeMap<u64, VersionDrift>> {
        let d = self.deployment(name)?;
        Ok(d.state()
            .versions
            .iter()
            .filter_map(|(n, l)| {
                let m = l.monitor.as_ref()?;
                let s = m.state.lock().ok()?;
                Some((
                    *n,
                    VersionDrift {
                        inputs: s.inputs.clone(),
                        predictions: s.predictions.clone(),
                    },
                ))
            })
            .collect())
    }

    /// Drift verdicts as they happen, for every deployment.
    pub fn subscribe_drift(&self) -> tokio::sync::broadcast::Receiver<DriftEvent> {
        self.inner.drift_events.subscribe()
    }

    /// Writes an inference log of every served request (request id, time, model,
    /// version, inputs, outputs, latency) to `sink` in the background. Refused
    /// ([`Error::InvalidInput`] naming the setting) when a limit of `config` is
    /// zero.
    pub fn set_inference_log(
        &self,
        sink: Arc<dyn InferenceLogSink>,
        config: LogConfig,
    ) -> Result<()> {
        config.validate()?;
        let logger = InferenceLogger::start(sink, config, self.inner.metrics.clone());
        if let Ok(mut slot) = self.inner.logger.lock() {
            *slot = Some(logger);
        }
        Ok(())
    }

    /// Writes the queued inference log records now; returns how many records were
    /// written since the log was set.
    pub async fn flush_inference_log(&self) -> Result<u64> {
        let logger = self.inner.logger.lock().ok().and_then(|l| l.clone());
        match logger {
            Some(l) => l.flush().await,
            None => Ok(0),
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }

    /// The counter of requests the HTTP face refused (401/403), by route group.
    pub(crate) fn auth_failures(
        &self,
    ) -> prometheus_client::metrics::family::Family<
        crate::runtime::metrics::AuthLabels,
        prometheus_client::metrics::counter::Counter,
    > {
        self.inner.metrics.auth_failures.clone()
    }

    /// Stops taking requests (they get [`Error::Unavailable`]; readiness turns
    /// false) and waits up to `timeout` for those in flight to finish; returns
    /// how many were still running at the end.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let left = loop {
            let n = self.inner.in_flight.load(Ordering::SeqCst);
            if n == 0 || Instant::now() >= deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // The inference log keeps every served request: write what is queued.
        let _ = self.flush_inference_log().await;
        left
    }

    /// Whether the server was told to drain.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Records an HTTP-level outcome (used by the HTTP face for requests refused
    /// before reaching a model, e.g. undecodable bodies). Only names and version
    /// numbers the server has become label values; anything else is `unknown`.
    pub(crate) fn record(&self, model: &str, version: Option<&str>, status: u16, took: Duration) {
        let (model, version) = self.labels_of(model, version);
        self.inner
            .metrics
            .observe_request(model, &version, status, took);
    }

    /// The metric labels of a request for `model` and `version`: the deployment's
    /// name and the number of one of its loaded versions, or [`UNKNOWN`] for
    /// what it does not have (a client's made-up names never become labels).
    pub(crate) fn labels_of<'a>(&self, model: &'a str, version: Option<&str>) -> (&'a str, String) {
        let Ok(d) = self.deployment(model) else {
            return (UNKNOWN, UNKNOWN.to_owned());
        };
        let number = version
            .and_then(|v| v.parse::<VersionSelector>().ok())
            .and_then(|s| d.state().number_of(&s));
        (
            model,
            number.map_or_else(|| UNKNOWN.to_owned(), |n| n.to_string()),
        )
    }
}
