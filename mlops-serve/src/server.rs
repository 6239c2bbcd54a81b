//! [`ModelServer`]: the in-process implementation of [`Server`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use async_trait::async_trait;
use mlops_core::error::ResourceKind;
use mlops_core::feature::FeatureStatus;
use mlops_core::inference::{
    InferenceRequest, InferenceResponse, ModelMetadataResponse, ParameterValue,
    ServerMetadataResponse, Tensor, TensorData, tensors_from_batch,
};
use mlops_core::model::{ModelVersion, VersionSelector};
use mlops_core::rng::{INCREMENT, mix, unit_f64};
use mlops_core::{Error, ModelLoader, ModelRegistry, Predictor, Result, Server};

use crate::batch::{Batcher, call_model, predict_blocking};
use crate::cache::{self, CacheStats, PredictionCache};
use crate::config::{DeploymentConfig, Enrichment, Routing, check_canary_weight};
use crate::live::{DriftEvent, FeedbackBook, InferenceLogger, LogConfig, VersionMonitor};
use crate::metrics::{ModelLabels, ServerMetrics};
use crate::status::http_status;
use mlops_core::monitoring::{
    DriftSummary, InferenceLogSink, LiveQuality, ModelHealth, TrafficControl, VersionHealth,
};

/// The request parameter that makes routing sticky.
pub const ROUTING_KEY: &str = "routing_key";

/// Shadow records kept per deployment.
const SHADOW_LOG: usize = 1000;

/// A request mirrored to the shadow version, with both answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRecord {
    /// The request's id.
    pub request_id: Option<String>,
    /// The version that answered the client.
    pub primary_version: u64,
    /// The shadow version.
    pub shadow_version: u64,
    /// What the client got.
    pub primary: Vec<Tensor>,
    /// What the shadow said, or its error.
    pub shadow: std::result::Result<Vec<Tensor>, String>,
    /// When the shadow answered.
    pub at: SystemTime,
}

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
}

#[derive(Debug)]
struct LoadedVersion {
    version: ModelVersion,
    predictor: Arc<dyn Predictor>,
    batcher: Option<Batcher>,
    /// The success counter and latency histogram of this version, resolved once
    /// so the hot path takes no lock and allocates no label.
    ok_requests: prometheus_client::metrics::counter::Counter,
    latency: prometheus_client::metrics::histogram::Histogram,
    monitor: Option<VersionMonitor>,
}

/// Routing and loaded versions, swapped as one.
#[derive(Debug)]
struct State {
    routing: Routing,
    resolved: Vec<(VersionSelector, u64)>,
    shadows: Vec<u64>,
    versions: BTreeMap<u64, Arc<LoadedVersion>>,
}

impl State {
    fn number_of(&self, selector: &VersionSelector) -> Option<u64> {
        match selector {
            VersionSelector::Number(n) if self.versions.contains_key(n) => Some(*n),
            _ => self
                .resolved
                .iter()
                .find(|(s, _)| s == selector)
                .map(|(_, n)| *n),
        }
    }
}

#[derive(Debug)]
struct Deployment {
    config: DeploymentConfig,
    state: RwLock<Arc<State>>,
    cache: Option<PredictionCache>,
    feedback: Option<FeedbackBook>,
    shadow_log: Mutex<VecDeque<ShadowRecord>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl Deployment {
    fn state(&self) -> Arc<State> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, new: State) {
        let new = Arc::new(new);
        match self.state.write() {
            Ok(mut s) => *s = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

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
    rng: AtomicU64,
    drift_events: tokio::sync::broadcast::Sender<DriftEvent>,
    logger: Mutex<Option<InferenceLogger>>,
}

/// The in-process model server: named deployments of registry models, each with
/// its routing (fixed, A/B split, canary), optional shadow, dynamic batching,
/// prediction cache, hot reload and feature enrichment. Implements [`Server`].
///
/// Cloning is cheap and shares the server. Background work (batch queues, alias
/// polling, canary ramps) runs on the tokio runtime that called
/// [`ModelServer::deploy`].
#[derive(Debug, Clone)]
pub struct ModelServer {
    inner: Arc<Inner>,
}

/// A stable hash of a routing key to `[0, 1)` (FNV-1a, then mixed), the same in
/// every process and version.
fn key_point(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    unit_f64(mix(h))
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

    /// Loads the versions `config` routes to and starts serving it under its name.
    /// A name already deployed is [`Error::AlreadyExists`]; a version that cannot be
    /// resolved or loaded fails the deployment and serves nothing.
    pub async fn deploy(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        if self.deployment(&config.name).is_ok() {
            return Err(Error::already_exists(ResourceKind::Model, &config.name));
        }
        let (state, report) = self.resolve(&config, config.routing.clone(), None).await?;
        let deployment = Arc::new(Deployment {
            cache: config.cache.map(PredictionCache::new),
            feedback: config.feedback.map(FeedbackBook::new),
            state: RwLock::new(Arc::new(state)),
            shadow_log: Mutex::new(VecDeque::new()),
            tasks: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            config: config.clone(),
        });
        {
            let mut map = self
                .inner
                .deployments
                .write()
                .map_err(|_| Error::backend("model server", "deployment table poisoned"))?;
            if map.contains_key(&config.name) {
                return Err(Error::already_exists(ResourceKind::Model, &config.name));
            }
            map.insert(config.name.clone(), deployment.clone());
        }
        if let Ok(mut parked) = self.inner.parked.lock() {
            parked.remove(&config.name);
        }
        self.start_tasks(&deployment);
        Ok(report)
    }

    fn start_tasks(&self, deployment: &Arc<Deployment>) {
        let mut handles = Vec::new();
        let name = deployment.config.name.clone();
        if let Some(every) = deployment.config.reload_interval {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            let name = name.clone();
            handles.push(
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let Some(inner) = weak.upgrade() else { return };
                        let server = ModelServer { inner };
                        // A failed poll keeps the versions being served; the
                        // failure is counted in the load metrics.
                        let _ = server.reload(&name).await;
                    }
                })
                .abort_handle(),
            );
        }
        if let Some(ramp) = deployment.config.canary_ramp {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            handles.push(
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(ramp.every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let Some(inner) = weak.upgrade() else { return };
                        let server = ModelServer { inner };
                        let Ok(d) = server.deployment(&name) else {
                            return;
                        };
                        let Routing::Canary { weight, .. } = d.state().routing else {
                            return;
                        };
                        let next = (weight + ramp.step).min(ramp.max);
                        if server.set_canary_weight(&name, next).is_err() || next >= ramp.max {
                            return;
                        }
                    }
                })
                .abort_handle(),
            );
        }
        if let Ok(mut tasks) = deployment.tasks.lock() {
            tasks.extend(handles);
        }
    }

    /// Resolves `routing`'s selectors (and the shadow) against the registry and
    /// loads the versions not in `current`.
    async fn resolve(
        &self,
        config: &DeploymentConfig,
        routing: Routing,
        current: Option<&State>,
    ) -> Result<(State, ReloadReport)> {
        let mut selectors = routing.selectors();
        selectors.extend(config.shadows.iter().cloned());
        let mut resolved = Vec::new();
        let mut report = ReloadReport::default();
        let mut versions = BTreeMap::new();
        for selector in selectors {
            let number = match &selector {
                VersionSelector::Number(n) => *n,
                other => {
                    self.inner
                        .registry
                        .get_version(&config.model, other)
                        .await?
                        .version
                }
            };
            report.resolved.insert(selector.to_string(), number);
            resolved.push((selector, number));
            if versions.contains_key(&number) {
                continue;
            }
            let existing = current.and_then(|c| c.versions.get(&number)).cloned();
            let loaded = match existing {
                Some(l) => l,
                None => {
                    let l = self.load_version(config, number).await?;
                    report.loaded.push(number);
                    l
                }
            };
            versions.insert(number, loaded);
        }
        if let Some(c) = current {
            report.unloaded = c
                .versions
                .keys()
                .filter(|n| !versions.contains_key(n))
                .copied()
                .collect();
        }
        let mut shadows: Vec<u64> = config
            .shadows
            .iter()
            .filter_map(|s| resolved.iter().find(|(sel, _)| sel == s).map(|(_, n)| *n))
            .collect();
        shadows.dedup();
        Ok((
            State {
                routing,
                resolved,
                shadows,
                versions,
            },
            report,
        ))
    }

    async fn load_version(
        &self,
        config: &DeploymentConfig,
        number: u64,
    ) -> Result<Arc<LoadedVersion>> {
        let labels = crate::metrics::RequestLabels {
            model: config.name.clone(),
            version: number.to_string(),
            status: "error".into(),
        };
        let result = async {
            let (version, artifact) = self
                .inner
                .registry
                .load_artifact(&config.model, &VersionSelector::Number(number))
                .await?;
            let loader = self
                .inner
                .loaders
                .iter()
                .find(|l| l.can_load(&artifact.flavor))
                .cloned()
                .ok_or_else(|| {
                    Error::invalid_input(
                        format!("model {} version {number}", config.model),
                        format!("no loader reads artifacts of flavor {:?}", artifact.flavor),
                    )
                })?;
            let predictor = tokio::task::spawn_blocking(move || loader.load(&artifact))
                .await
                .map_err(|e| Error::backend("model loader", e.to_string()))??;
            let batcher = config.batching.map(|b| {
                Batcher::start(
                    predictor.clone(),
                    b,
                    ModelLabels {
                        model: config.name.clone(),
                        version: number.to_string(),
                    },
                    self.inner.metrics.clone(),
                )
            });
            let labels = ModelLabels {
                model: config.name.clone(),
                version: number.to_string(),
            };
            let metrics = &self.inner.metrics;
            let ok_requests = metrics
                .requests
                .get_or_create(&crate::metrics::RequestLabels {
                    model: config.name.clone(),
                    version: number.to_string(),
                    status: "200".into(),
                })
                .clone();
            let latency = metrics.latency.get_or_create(&labels).clone();
            let monitor = match config.monitoring {
                Some(m) => VersionMonitor::start(
                    &config.name,
                    number,
                    predictor.drift_reference(),
                    predictor.prediction_reference(),
                    m,
                    metrics.clone(),
                    self.inner.drift_events.clone(),
                )?,
                None => None,
            };
            Ok(Arc::new(LoadedVersion {
                version,
                predictor,
                batcher,
                ok_requests,
                latency,
                monitor,
            }))
        }
        .await;
        let status = if result.is_ok() { "ok" } else { "error" };
        self.inner
            .metrics
            .loads
            .get_or_create(&crate::metrics::RequestLabels {
                status: status.into(),
                ..labels
            })
            .inc();
        result
    }

    /// Re-resolves the deployment's aliases now and swaps in any version that
    /// moved. Requests in flight finish on the versions they started on; new
    /// requests see the new versions at once: no request fails during the swap.
    pub async fn reload(&self, name: &str) -> Result<ReloadReport> {
        let d = self.deployment(name)?;
        let _guard = d.reload_lock.lock().await;
        let current = d.state();
        let (state, report) = self
            .resolve(&d.config, current.routing.clone(), Some(&current))
            .await?;
        d.swap(state);
        Ok(report)
    }

    /// Replaces a deployment's routing, loading any version it needs first.
    pub async fn set_routing(&self, name: &str, routing: Routing) -> Result<ReloadReport> {
        routing.validate()?;
        let d = self.deployment(name)?;
        let _guard = d.reload_lock.lock().await;
        let current = d.state();
        let (state, report) = self.resolve(&d.config, routing, Some(&current)).await?;
        d.swap(state);
        Ok(report)
    }

    /// Sets the canary's share of traffic (`[0, 1]`) of a canary deployment.
    pub fn set_canary_weight(&self, name: &str, weight: f64) -> Result<()> {
        check_canary_weight(weight)?;
        let d = self.deployment(name)?;
        let mut slot = d
            .state
            .write()
            .map_err(|_| Error::backend("model server", "deployment state poisoned"))?;
        let Routing::Canary { stable, canary, .. } = &slot.routing else {
            return Err(Error::conflict(
                format!("deployment {name}"),
                "its routing is not a canary",
            ));
        };
        let next = State {
            routing: Routing::Canary {
                stable: stable.clone(),
                canary: canary.clone(),
                weight,
            },
            resolved: slot.resolved.clone(),
            shadows: slot.shadows.clone(),
            versions: slot.versions.clone(),
        };
        *slot = Arc::new(next);
        Ok(())
    }

    /// Stops serving `name`; its configuration is kept for [`ModelServer::load`].
    pub fn unload(&self, name: &str) -> Result<()> {
        let removed = self
            .inner
            .deployments
            .write()
            .map_err(|_| Error::backend("model server", "deployment table poisoned"))?
            .remove(name)
            .ok_or_else(|| Error::not_found(ResourceKind::Model, name))?;
        if let Ok(mut parked) = self.inner.parked.lock() {
            parked.insert(name.to_owned(), removed.config.clone());
        }
        Ok(())
    }

    /// Serves `name` again: with its configuration from before
    /// [`ModelServer::unload`], or, for a name never deployed, the registry model
    /// of that name at its latest version. Loading a deployed name reloads it.
    pub async fn load(&self, name: &str) -> Result<ReloadReport> {
        if self.deployment(name).is_ok() {
            return self.reload(name).await;
        }
        let parked = self
            .inner
            .parked
            .lock()
            .ok()
            .and_then(|p| p.get(name).cloned());
        let config = parked.unwrap_or_else(|| {
            DeploymentConfig::new(name, name, Routing::Fixed(VersionSelector::Latest))
        });
        self.deploy(config).await
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
        })
    }

    /// The most recent mirrored requests of `name` (up to 1000), oldest first.
    pub fn shadow_records(&self, name: &str) -> Result<Vec<ShadowRecord>> {
        let d = self.deployment(name)?;
        Ok(d.shadow_log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default())
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
        let d = self.deployment(name)?;
        let book = d.feedback.as_ref().ok_or_else(|| {
            Error::conflict(
                format!("deployment {name}"),
                "it was deployed without feedback",
            )
        })?;
        let version = book.record_outcomes(name, id, outcomes)?;
        if let Some(q) = book.quality().get(&version) {
            self.inner.metrics.record_quality(name, version, q);
        }
        Ok(version)
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
    /// version, inputs, outputs, latency) to `sink` in the background.
    pub fn set_inference_log(&self, sink: Arc<dyn InferenceLogSink>, config: LogConfig) {
        let logger = InferenceLogger::start(sink, config, self.inner.metrics.clone());
        if let Ok(mut slot) = self.inner.logger.lock() {
            *slot = Some(logger);
        }
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
    /// before reaching a model, e.g. undecodable bodies).
    pub(crate) fn record(&self, model: &str, version: &str, status: u16, took: Duration) {
        self.inner
            .metrics
            .observe_request(model, version, status, took);
    }

    fn random_point(&self) -> f64 {
        let x = self.inner.rng.fetch_add(INCREMENT, Ordering::Relaxed);
        unit_f64(mix(x))
    }

    fn choose(
        &self,
        name: &str,
        state: &State,
        version: Option<&str>,
        request: &InferenceRequest,
    ) -> Result<Arc<LoadedVersion>> {
        let not_found =
            |v: &str| Error::not_found(ResourceKind::ModelVersion, format!("{name}/{v}"));
        let number = match version {
            Some(v) => {
                let selector: VersionSelector = v.parse().map_err(|_| not_found(v))?;
                state.number_of(&selector).ok_or_else(|| not_found(v))?
            }
            None => {
                let point = match request.parameters.get(ROUTING_KEY) {
                    Some(ParameterValue::String(k)) => key_point(k),
                    Some(ParameterValue::Int(k)) => key_point(&k.to_string()),
                    Some(other) => {
                        return Err(Error::invalid_input(
                            format!("parameter {ROUTING_KEY}"),
                            format!("{other:?} is not a string or integer"),
                        ));
                    }
                    None => self.random_point(),
                };
                let selector = state.routing.pick(point);
                state
                    .number_of(selector)
                    .ok_or_else(|| not_found(&selector.to_string()))?
            }
        };
        state
            .versions
            .get(&number)
            .cloned()
            .ok_or_else(|| not_found(&number.to_string()))
    }

    /// Runs `loaded` on `inputs`; `checked` says they already passed its
    /// signature's check (the primary's inputs do, a shadow's were checked
    /// against the primary's signature only).
    async fn run_model(
        &self,
        name: &str,
        loaded: &LoadedVersion,
        inputs: Vec<Tensor>,
        inline_max_rows: usize,
        checked: bool,
    ) -> Result<Vec<Tensor>> {
        match &loaded.batcher {
            Some(b) => b.submit(name, inputs).await,
            None if inputs.first().map_or(0, Tensor::rows) <= inline_max_rows => {
                call_model(loaded.predictor.as_ref(), &inputs, checked)
            }
            None => predict_blocking(loaded.predictor.clone(), inputs, checked).await,
        }
    }

    async fn infer_inner(
        &self,
        name: &str,
        version: Option<&str>,
        request: InferenceRequest,
        version_label: &mut String,
        served: &mut Option<Arc<LoadedVersion>>,
        started: Instant,
    ) -> Result<InferenceResponse> {
        if self.is_draining() {
            return Err(Error::Unavailable {
                what: "model server".into(),
                reason: "shutting down".into(),
            });
        }
        let d = self.deployment(name)?;
        let state = d.state();
        let loaded = self.choose(name, &state, version, &request)?;
        let number = loaded.version.version;
        *version_label = number.to_string();
        let signature = loaded.predictor.signature();

        let InferenceRequest {
            id,
            inputs,
            outputs: wanted,
            ..
        } = request;
        let inputs = match &d.config.enrichment {
            Some(e) => enrich(name, e, &loaded.version, signature, inputs).await?,
            None => inputs,
        };
        signature.check_inputs(&inputs)?;
        if let Some(wanted) = &wanted
            && let Some(unknown) = wanted
                .iter()
                .find(|w| !signature.outputs.iter().any(|o| o.name == w.name))
        {
            let names: Vec<&str> = signature.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(Error::invalid_input(
                format!("output '{}'", unknown.name),
                format!("the model has no such output; its outputs are {names:?}"),
            ));
        }

        let key = d.cache.as_ref().map(|_| cache::key(&inputs));
        let cached = match (&d.cache, &key) {
            (Some(c), Some(k)) => {
                let hit = c.get(number, k);
                let outcome = if hit.is_some() { "hit" } else { "miss" };
                ServerMetrics::count(&self.inner.metrics.cache, name, outcome);
                hit
            }
            _ => None,
        };
        let mirrored: Vec<u64> = state
            .shadows
            .iter()
            .copied()
            .filter(|&s| s != number)
            .collect();
        let shadow_inputs = (!mirrored.is_empty()).then(|| inputs.clone());
        let inline = d.config.inline_max_rows;
        let logger = self.inner.logger.lock().ok().and_then(|l| l.clone());
        let kept_inputs = (loaded.monitor.is_some() || logger.is_some()).then(|| inputs.clone());
        let outputs: Vec<Tensor> = match cached {
            Some(o) => o.as_ref().clone(),
            None => {
                let o = self.run_model(name, &loaded, inputs, inline, true).await?;
                if let (Some(c), Some(k)) = (&d.cache, key) {
                    c.insert(number, k, Arc::new(o.clone()));
                }
                o
            }
        };
        if let Some(inputs) = shadow_inputs {
            let primary = Arc::new(outputs.clone());
            for shadow_number in mirrored {
                if let Some(shadow) = state.versions.get(&shadow_number).cloned() {
                    self.mirror(
                        &d,
                        name,
                        id.clone(),
                        number,
                        shadow,
                        inputs.clone(),
                        primary.clone(),
                        inline,
                    );
                }
            }
        }
        let outputs = match &wanted {
            None => outputs,
            Some(w) => outputs
                .into_iter()
                .filter(|o| w.iter().any(|x| x.name == o.name))
                .collect(),
        };
        if let (Some(book), Some(id)) = (&d.feedback, &id) {
            book.record_prediction(id, number, &outputs);
        }
        if let Some(inputs) = kept_inputs {
            if let Some(l) = &logger {
                l.log(
                    id.clone(),
                    name,
                    number,
                    &inputs,
                    &outputs,
                    started.elapsed(),
                );
            }
            if let Some(m) = &loaded.monitor {
                m.observe(inputs, outputs.clone());
            }
        }
        *served = Some(loaded);
        Ok(InferenceResponse {
            model_name: name.to_owned(),
            model_version: Some(number.to_string()),
            id,
            parameters: Default::default(),
            outputs,
        })
    }

    /// Runs the shadow version off the request path and records both answers.
    #[allow(clippy::too_many_arguments)]
    fn mirror(
        &self,
        d: &Arc<Deployment>,
        name: &str,
        request_id: Option<String>,
        primary_version: u64,
        shadow: Arc<LoadedVersion>,
        inputs: Vec<Tensor>,
        primary: Arc<Vec<Tensor>>,
        inline_max_rows: usize,
    ) {
        let server = self.clone();
        let deployment = Arc::downgrade(d);
        let name = name.to_owned();
        tokio::spawn(async move {
            let answer = server
                .run_model(&name, &shadow, inputs, inline_max_rows, false)
                .await;
            let outcome = if answer.is_ok() { "ok" } else { "error" };
            ServerMetrics::count(&server.inner.metrics.shadow, &name, outcome);
            let Some(d) = deployment.upgrade() else {
                return;
            };
            let record = ShadowRecord {
                request_id,
                primary_version,
                shadow_version: shadow.version.version,
                primary: primary.as_ref().clone(),
                shadow: answer.map_err(|e| e.to_string()),
                at: SystemTime::now(),
            };
            if let Ok(mut log) = d.shadow_log.lock() {
                if log.len() == SHADOW_LOG {
                    log.pop_front();
                }
                log.push_back(record);
            }
        });
    }
}

/// An Arrow column holding a tensor's elements (one-dimensional).
pub(crate) fn tensor_column(t: &Tensor) -> Result<ArrayRef> {
    Ok(match &t.data {
        TensorData::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
        TensorData::Uint8(v) => Arc::new(UInt8Array::from(v.clone())),
        TensorData::Uint16(v) => Arc::new(UInt16Array::from(v.clone())),
        TensorData::Uint32(v) => Arc::new(UInt32Array::from(v.clone())),
        TensorData::Uint64(v) => Arc::new(UInt64Array::from(v.clone())),
        TensorData::Int8(v) => Arc::new(Int8Array::from(v.clone())),
        TensorData::Int16(v) => Arc::new(Int16Array::from(v.clone())),
        TensorData::Int32(v) => Arc::new(Int32Array::from(v.clone())),
        TensorData::Int64(v) => Arc::new(Int64Array::from(v.clone())),
        TensorData::Fp16(v) | TensorData::Fp32(v) => Arc::new(Float32Array::from(v.clone())),
        TensorData::Fp64(v) => Arc::new(Float64Array::from(v.clone())),
        TensorData::Bytes(v) => Arc::new(StringArray::from(
            v.iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.clone()).map_err(|_| {
                        Error::invalid_input(
                            format!("input '{}'", t.name),
                            format!("element {i} is not UTF-8; entity keys must be strings"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        )),
    })
}

/// Fills the signature inputs a request lacks from the online store, by the
/// entity keys it carries instead.
async fn enrich(
    name: &str,
    e: &Enrichment,
    version: &ModelVersion,
    signature: &mlops_core::Signature,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>> {
    let missing: Vec<_> = signature
        .inputs
        .iter()
        .filter(|s| !inputs.iter().any(|t| t.name == s.name))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(inputs);
    }
    let mut keys = Vec::with_capacity(e.entity_keys.len());
    for k in &e.entity_keys {
        let t = inputs.iter().find(|t| &t.name == k).ok_or_else(|| {
            Error::invalid_input(
                format!("input '{}'", missing[0].name),
                format!(
                    "missing from the request, and the request lacks entity key '{k}' to look it up"
                ),
            )
        })?;
        if t.shape.len() != 1 {
            return Err(Error::invalid_input(
                format!("input '{k}'"),
                format!("entity keys are one-dimensional; shape {:?}", t.shape),
            ));
        }
        keys.push((k.clone(), tensor_column(t)?));
    }
    let entity_rows = RecordBatch::try_from_iter(keys)
        .map_err(|e| Error::invalid_input(format!("entity keys of {name}"), e.to_string()))?;
    let online = e
        .store
        .get_online_features(entity_rows, &e.features)
        .await?;
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for col in &online.columns {
        if let Some((row, status)) = col
            .statuses
            .iter()
            .enumerate()
            .find(|(_, s)| **s != FeatureStatus::Present)
        {
            return Err(Error::invalid_input(
                format!("feature {}", col.feature),
                format!(
                    "row {row}: {status:?} in the online store, so model {name} version {} has no value for it",
                    version.version
                ),
            ));
        }
        let array = online
            .batch
            .column_by_name(&col.column)
            .cloned()
            .ok_or_else(|| {
                Error::backend(
                    "feature store",
                    format!("online result lacks column {}", col.column),
                )
            })?;
        columns.push((col.feature.feature().to_owned(), array));
    }
    let features = RecordBatch::try_from_iter(columns)
        .map_err(|e| Error::backend("feature store", e.to_string()))?;
    let looked_up = tensors_from_batch(&missing, &features)?;
    let mut out: Vec<Tensor> = inputs
        .into_iter()
        .filter(|t| signature.inputs.iter().any(|s| s.name == t.name))
        .collect();
    out.extend(looked_up);
    Ok(out)
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Server for ModelServer {
    async fn live(&self) -> Result<bool> {
        Ok(true)
    }

    async fn ready(&self) -> Result<bool> {
        Ok(!self.is_draining())
    }

    async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        Ok(ServerMetadataResponse {
            name: self.inner.name.clone(),
            version: self.inner.version.clone(),
            extensions: vec!["binary_tensor_data".into(), "model_repository".into()],
        })
    }

    async fn list_models(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .deployments
            .read()
            .map_err(|_| Error::backend("model server", "deployment table poisoned"))?
            .keys()
            .cloned()
            .collect())
    }

    async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadataResponse> {
        let d = self.deployment(model)?;
        let state = d.state();
        let number = match version {
            Some(v) => v
                .parse::<VersionSelector>()
                .ok()
                .and_then(|s| state.number_of(&s))
                .ok_or_else(|| {
                    Error::not_found(ResourceKind::ModelVersion, format!("{model}/{v}"))
                })?,
            None => state
                .number_of(&state.routing.primary())
                .ok_or_else(|| Error::not_found(ResourceKind::ModelVersion, model))?,
        };
        let loaded = state.versions.get(&number).ok_or_else(|| {
            Error::not_found(ResourceKind::ModelVersion, format!("{model}/{number}"))
        })?;
        let sig = loaded.predictor.signature();
        Ok(ModelMetadataResponse {
            name: model.to_owned(),
            versions: Some(state.versions.keys().map(ToString::to_string).collect()),
            platform: loaded.version.flavor.clone(),
            inputs: sig.inputs.clone(),
            outputs: sig.outputs.clone(),
        })
    }

    async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        let d = self.deployment(model)?;
        if self.is_draining() {
            return Ok(false);
        }
        let state = d.state();
        Ok(match version {
            None => true,
            Some(v) => v
                .parse::<VersionSelector>()
                .ok()
                .and_then(|s| state.number_of(&s))
                .is_some(),
        })
    }

    async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferenceRequest,
    ) -> Result<InferenceResponse> {
        let started = Instant::now();
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.inner.in_flight);
        let mut version_label = version.unwrap_or("").to_owned();
        let mut served = None;
        let result = self
            .infer_inner(
                model,
                version,
                request,
                &mut version_label,
                &mut served,
                started,
            )
            .await;
        match (&result, served) {
            (Ok(_), Some(loaded)) => {
                loaded.ok_requests.inc();
                loaded.latency.observe(started.elapsed().as_secs_f64());
            }
            (result, _) => {
                let status = result.as_ref().map_or_else(http_status, |_| 200);
                // Unknown names are not label values: a scan of made-up names must
                // not grow the metrics without bound.
                let label = if self.has_model(model) {
                    model
                } else {
                    "(unknown)"
                };
                self.record(label, &version_label, status, started.elapsed());
            }
        }
        result
    }
}

#[async_trait]
impl TrafficControl for ModelServer {
    async fn health(&self, deployment: &str) -> Result<ModelHealth> {
        let d = self.deployment(deployment)?;
        let state = d.state();
        let quality = d
            .feedback
            .as_ref()
            .map(FeedbackBook::quality)
            .unwrap_or_default();
        let drift = self.drift_status(deployment)?;
        let share = |n: u64| -> f64 {
            match &state.routing {
                Routing::Fixed(s) => f64::from(u8::from(state.number_of(s) == Some(n))),
                Routing::Split(arms) => {
                    let total: f64 = arms.iter().map(|a| a.weight).sum();
                    arms.iter()
                        .filter(|a| state.number_of(&a.selector) == Some(n))
                        .map(|a| a.weight / total)
                        .sum()
                }
                Routing::Canary {
                    stable,
                    canary,
                    weight,
                } => {
                    let mut s = 0.0;
                    if state.number_of(canary) == Some(n) {
                        s += weight;
                    }
                    if state.number_of(stable) == Some(n) {
                        s += 1.0 - weight;
                    }
                    s
                }
            }
        };
        let (champion, canary) = match &state.routing {
            Routing::Canary { stable, canary, .. } => {
                (state.number_of(stable), state.number_of(canary))
            }
            other => (state.number_of(&other.primary()), None),
        };
        let versions = state
            .versions
            .keys()
            .map(|&n| {
                let VersionDrift {
                    inputs: input_drift,
                    predictions: prediction_drift,
                } = drift.get(&n).cloned().unwrap_or_default();
                (
                    n,
                    VersionHealth {
                        traffic_share: share(n),
                        input_drift,
                        prediction_drift,
                        live: quality.get(&n).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(ModelHealth {
            champion,
            canary,
            versions,
        })
    }

    async fn start_canary(
        &self,
        deployment: &str,
        stable: u64,
        canary: u64,
        weight: f64,
    ) -> Result<()> {
        self.set_routing(
            deployment,
            Routing::Canary {
                stable: VersionSelector::Number(stable),
                canary: VersionSelector::Number(canary),
                weight,
            },
        )
        .await
        .map(|_| ())
    }

    async fn set_canary_weight(&self, deployment: &str, weight: f64) -> Result<()> {
        ModelServer::set_canary_weight(self, deployment, weight)
    }

    async fn route_all(&self, deployment: &str, version: u64) -> Result<()> {
        self.set_routing(deployment, Routing::Fixed(VersionSelector::Number(version)))
            .await
            .map(|_| ())
    }
}
