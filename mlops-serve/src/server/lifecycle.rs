//! Deployments' lifecycle: deploy, resolve selectors and load versions, reload,
//! change routing, unload and load again, and the background tasks (alias polling,
//! canary ramp) each deployment runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use mlops_core::error::ResourceKind;
use mlops_core::model::VersionSelector;
use mlops_core::{Error, Result};

use super::state::{Deployment, LoadedVersion, State};
use super::{Inner, ModelServer, ReloadReport};
use crate::config::{DeploymentConfig, Routing, check_canary_weight};
use crate::runtime::batch::{Batcher, CallQueue};
use crate::runtime::cache::PredictionCache;
use crate::runtime::feedback::FeedbackBook;
use crate::runtime::metrics::{ModelLabels, RequestLabels};
use crate::runtime::monitor::VersionMonitor;
use crate::runtime::shadow::ShadowLog;

/// How often a deployment without a `reload_interval` retries while it waits
/// for its versions (see [`ModelServer::deploy_or_wait`]).
const WAITING_RETRY: Duration = Duration::from_secs(5);

impl ModelServer {
    /// Loads the versions `config` routes to and starts serving it under its name.
    /// A name already deployed is [`Error::AlreadyExists`]; a version that cannot be
    /// resolved or loaded fails the deployment and serves nothing.
    ///
    /// A service that must come up whatever the registry holds uses
    /// [`ModelServer::deploy_or_wait`] instead.
    pub async fn deploy(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        if self.deployment(&config.name).is_ok() {
            return Err(Error::already_exists(ResourceKind::Model, &config.name));
        }
        let (deployment, report) = self.build(config.clone()).await?;
        self.install_new(deployment)?;
        Ok(report)
    }

    /// Like [`ModelServer::deploy`], but a deployment whose model, alias or
    /// version cannot be resolved or loaded yet (not registered, an alias not
    /// set, an artifact refused by a signature check, no loader for its flavor,
    /// storage unreachable) is deployed anyway, waiting: it is listed, reports
    /// not ready (so [`Server::ready`](mlops_core::Server::ready) is false while
    /// it waits), answers inference with [`Error::Unavailable`] naming the
    /// reason, and retries at its `reload_interval` (every 5 s without one) until
    /// its versions load; then it serves, with no restart. The report's
    /// [`ReloadReport::waiting`] says why it waits; [`ModelServer::status`]
    /// gives the current reason.
    ///
    /// Errors only for what no retry can fix: an invalid `config`, or a name
    /// already deployed ([`Error::AlreadyExists`]).
    pub async fn deploy_or_wait(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        if self.deployment(&config.name).is_ok() {
            return Err(Error::already_exists(ResourceKind::Model, &config.name));
        }
        let (deployment, report) = match self.build(config.clone()).await {
            Ok(built) => built,
            Err(e) => Self::waiting(config, &e),
        };
        self.install_new(deployment)?;
        Ok(report)
    }

    /// Serves `config` in place of the deployment of the same name (or deploys
    /// it when there is none), without failing a request: the new versions load
    /// first, and if that fails the old deployment goes on serving; requests in
    /// flight finish on the old deployment, new ones go to the new one. Its
    /// cache, feedback and shadow records start empty.
    pub async fn redeploy(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        let (deployment, report) = self.build(config.clone()).await?;
        self.install(deployment, |_| true)?;
        Ok(report)
    }

    /// Like [`ModelServer::redeploy`], but when the new versions cannot be
    /// resolved or loaded and no deployment of that name serves (there is none,
    /// or it is itself waiting), `config` is deployed waiting, as
    /// [`ModelServer::deploy_or_wait`] does. A deployment that serves is never
    /// replaced by a waiting one: then the error is returned and it goes on
    /// serving as before.
    pub async fn redeploy_or_wait(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        match self.build(config.clone()).await {
            Ok((deployment, report)) => {
                self.install(deployment, |_| true)?;
                Ok(report)
            }
            Err(e) => {
                let (deployment, report) = Self::waiting(config, &e);
                let replaced = self.install(deployment, |old| {
                    old.is_none_or(|d| d.state().waiting.is_some())
                })?;
                if replaced { Ok(report) } else { Err(e) }
            }
        }
    }

    /// A deployment of `config` that waits because of `error`, and its report.
    fn waiting(config: DeploymentConfig, error: &Error) -> (Arc<Deployment>, ReloadReport) {
        let reason = error.to_string();
        let state = State::waiting(config.routing.clone(), reason.clone());
        let report = ReloadReport {
            waiting: Some(reason),
            ..ReloadReport::default()
        };
        (Self::assemble(config, state), report)
    }

    /// Serves `deployment` under its name, which must be free.
    fn install_new(&self, deployment: Arc<Deployment>) -> Result<()> {
        let name = deployment.config.name.clone();
        let installed = self.install(deployment, |old| old.is_none())?;
        if installed {
            Ok(())
        } else {
            Err(Error::already_exists(ResourceKind::Model, &name))
        }
    }

    /// Serves `deployment` in place of the deployment of its name, if `replace`
    /// accepts the one there now (`None`: there is none), and starts its
    /// background tasks; the old one's stop now, not when its last request
    /// ends. Whether it was installed.
    fn install(
        &self,
        deployment: Arc<Deployment>,
        replace: impl FnOnce(Option<&Arc<Deployment>>) -> bool,
    ) -> Result<bool> {
        let name = deployment.config.name.clone();
        let old = {
            let mut map = self
                .inner
                .deployments
                .write()
                .map_err(|_| Error::backend("model server", "deployment table poisoned"))?;
            if !replace(map.get(&name)) {
                return Ok(false);
            }
            map.insert(name.clone(), deployment.clone())
        };
        if let Ok(mut parked) = self.inner.parked.lock() {
            parked.remove(&name);
        }
        self.start_tasks(&deployment);
        if let Some(old) = old
            && let Ok(tasks) = old.tasks.lock()
        {
            for t in tasks.iter() {
                t.abort();
            }
        }
        Ok(true)
    }

    /// A deployment of `config` with its versions loaded, not yet serving.
    async fn build(&self, config: DeploymentConfig) -> Result<(Arc<Deployment>, ReloadReport)> {
        let (state, report) = self.resolve(&config, config.routing.clone(), None).await?;
        Ok((Self::assemble(config, state), report))
    }

    /// A deployment of `config` in `state`, not yet serving.
    fn assemble(config: DeploymentConfig, state: State) -> Arc<Deployment> {
        Arc::new(Deployment {
            cache: config.cache.map(PredictionCache::new),
            feedback: config.feedback.map(FeedbackBook::new),
            state: RwLock::new(Arc::new(state)),
            shadow_log: ShadowLog::default(),
            tasks: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
            config,
        })
    }

    pub(super) fn start_tasks(&self, deployment: &Arc<Deployment>) {
        let mut handles = Vec::new();
        let name = deployment.config.name.clone();
        // The alias poller; a waiting deployment retries even without one, until
        // its versions load.
        let waiting = deployment.state().waiting.clone();
        let polls = deployment.config.reload_interval.is_some();
        let every = deployment
            .config
            .reload_interval
            .or_else(|| waiting.as_ref().map(|_| WAITING_RETRY));
        if let Some(every) = every {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            let name = name.clone();
            handles.push(
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    // The failure last logged: a lasting one is logged once, not
                    // at every poll.
                    let mut reported = waiting;
                    loop {
                        tick.tick().await;
                        let Some(inner) = weak.upgrade() else { return };
                        let server = ModelServer { inner };
                        // A failed poll keeps the versions being served (none,
                        // while waiting); the failure is counted in the load
                        // metrics and logged.
                        match server.reload(&name).await {
                            Ok(report) => {
                                if reported.take().is_some() || !report.loaded.is_empty() {
                                    tracing::info!(
                                        deployment = %name,
                                        versions = ?report.resolved,
                                        loaded = ?report.loaded,
                                        "deployment reloaded: its versions serve"
                                    );
                                }
                                if !polls {
                                    return;
                                }
                            }
                            Err(e) => {
                                if !server.has_model(&name) {
                                    return;
                                }
                                let error = e.to_string();
                                if reported.as_deref() != Some(error.as_str()) {
                                    log_refusal(&server, &name, &error);
                                    reported = Some(error);
                                }
                            }
                        }
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
                        if server.set_canary_weight(&name, next).await.is_err() || next >= ramp.max
                        {
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
    pub(super) async fn resolve(
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
                waiting: None,
            },
            report,
        ))
    }

    pub(super) async fn load_version(
        &self,
        config: &DeploymentConfig,
        number: u64,
    ) -> Result<Arc<LoadedVersion>> {
        let labels = RequestLabels {
            model: config.name.as_str().into(),
            version: number.to_string().into(),
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
                        model: config.name.as_str().into(),
                        version: number.to_string().into(),
                    },
                    self.inner.metrics.clone(),
                )
            });
            let labels = ModelLabels {
                model: config.name.as_str().into(),
                version: number.to_string().into(),
            };
            let metrics = &self.inner.metrics;
            let ok_requests = metrics.requests.with(
                &RequestLabels {
                    model: config.name.as_str().into(),
                    version: number.to_string().into(),
                    status: "200".into(),
                },
                Clone::clone,
            );
            let latency = metrics.latency.with(&labels, Clone::clone);
            let calls = CallQueue::new(
                config.max_running_calls,
                config.max_queued_calls,
                &labels,
                metrics,
            );
            let monitor = match &config.monitoring {
                Some(m) => VersionMonitor::start(
                    &config.name,
                    number,
                    m.inputs.clone().or_else(|| predictor.input_drift()),
                    m.predictions
                        .clone()
                        .or_else(|| predictor.prediction_drift()),
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
                calls,
                ok_requests,
                latency,
                monitor,
            }))
        }
        .await;
        let status = if result.is_ok() { "ok" } else { "error" };
        self.inner.metrics.loads.with(
            &RequestLabels {
                status: status.into(),
                ..labels
            },
            |m| m.inc(),
        );
        result
    }

    /// Re-resolves the deployment's aliases now and swaps in any version that
    /// moved. Requests in flight finish on the versions they started on; new
    /// requests see the new versions at once: no request fails during the swap.
    /// When a version cannot be resolved or loaded (an alias moved to a version
    /// the registry refuses to load, e.g. unsigned where signatures are
    /// required), the error is returned and kept for [`ModelServer::status`],
    /// and the versions being served stay; a waiting deployment starts serving
    /// at the first reload that loads its versions.
    pub async fn reload(&self, name: &str) -> Result<ReloadReport> {
        let d = self.deployment(name)?;
        let _guard = d.reload_lock.lock().await;
        let current = d.state();
        match self
            .resolve(&d.config, current.routing.clone(), Some(&current))
            .await
        {
            Ok((state, report)) => {
                d.swap(state);
                d.set_last_error(None);
                Ok(report)
            }
            Err(e) => {
                let error = e.to_string();
                // A waiting deployment says why it waits now.
                if current.waiting.is_some() && current.waiting.as_deref() != Some(&error) {
                    d.swap(State::waiting(current.routing.clone(), error.clone()));
                }
                d.set_last_error(Some(error));
                Err(e)
            }
        }
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
    ///
    /// Serialized with reloads and routing changes, so a reload that was
    /// resolving versions meanwhile cannot put the old weight back.
    pub async fn set_canary_weight(&self, name: &str, weight: f64) -> Result<()> {
        check_canary_weight(weight)?;
        let d = self.deployment(name)?;
        let _guard = d.reload_lock.lock().await;
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
            waiting: slot.waiting.clone(),
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
}

/// Logs a failed poll of `name`, once per distinct failure.
fn log_refusal(server: &ModelServer, name: &str, error: &str) {
    let waiting = server
        .deployment(name)
        .is_ok_and(|d| d.state().waiting.is_some());
    if waiting {
        tracing::warn!(
            deployment = %name,
            reason = %error,
            "deployment not ready: its versions do not load yet; retrying"
        );
    } else {
        tracing::warn!(
            deployment = %name,
            error = %error,
            "reload refused: serving the versions it has"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Instant;

    use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
    use mlops_core::model::{ModelArtifact, ModelMetadata, ModelRegistry};
    use mlops_core::{ModelLoader, Predictor, Server, Signature};
    use mlops_store::{ObjectRegistry, StoreRoot};

    use super::*;

    const FLAVOR: &str = "test-constant";

    /// Generous: only there to turn a hang into a failure.
    const WAIT: Duration = Duration::from_secs(60);

    /// Answers every row with its artifact's first byte.
    #[derive(Debug)]
    struct Constant(f32, Signature);

    impl Predictor for Constant {
        fn signature(&self) -> &Signature {
            &self.1
        }

        fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
            self.1.check_inputs(inputs)?;
            let rows = inputs[0].rows();
            Ok(vec![Tensor::new(
                "y",
                vec![rows],
                TensorData::Fp32(vec![self.0; rows]),
            )?])
        }
    }

    #[derive(Debug)]
    struct ConstantLoader;

    impl ModelLoader for ConstantLoader {
        fn flavors(&self) -> Vec<String> {
            vec![FLAVOR.into()]
        }

        fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
            let value = artifact
                .bytes
                .first()
                .ok_or_else(|| Error::invalid_input("test artifact", "empty"))?;
            Ok(Arc::new(Constant(
                f32::from(*value),
                Signature {
                    inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1])],
                    outputs: vec![TensorSpec::new("y", Datatype::Fp32, vec![-1])],
                    matrix_input: None,
                },
            )))
        }
    }

    fn server() -> (ModelServer, Arc<ObjectRegistry>) {
        let registry = Arc::new(ObjectRegistry::new(&StoreRoot::open("memory://").unwrap()));
        let server = ModelServer::new(registry.clone(), vec![Arc::new(ConstantLoader)]);
        (server, registry)
    }

    /// Registers a version of `fraud` answering `value`, with `flavor`.
    async fn register(registry: &ObjectRegistry, value: u8, flavor: &str) -> u64 {
        registry
            .register(
                "fraud",
                ModelArtifact::new(flavor, vec![value]),
                ModelMetadata::default(),
            )
            .await
            .unwrap()
            .version
    }

    fn champion(reload_interval: Option<Duration>) -> DeploymentConfig {
        let mut c = DeploymentConfig::new(
            "fraud",
            "fraud",
            Routing::Fixed("@champion".parse().unwrap()),
        );
        c.reload_interval = reload_interval;
        c
    }

    fn request() -> InferenceRequest {
        InferenceRequest::new(vec![
            Tensor::new("x", vec![1], TensorData::Fp32(vec![0.0])).unwrap(),
        ])
    }

    /// Waits until `done` holds, checking every few milliseconds, or fails
    /// naming `what`.
    async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done().await {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_whose_alias_is_missing_waits_then_serves_without_a_restart() {
        let (server, registry) = server();
        // The strict deploy refuses it, as before, and deploys nothing.
        let err = server
            .deploy(champion(Some(Duration::from_millis(10))))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(!server.has_model("fraud"));

        let report = server
            .deploy_or_wait(champion(Some(Duration::from_millis(10))))
            .await
            .unwrap();
        let reason = report.waiting.expect("the report says why it waits");
        assert!(reason.contains("fraud"), "{reason}");
        assert!(report.loaded.is_empty() && report.resolved.is_empty());
        // Listed, not ready (the server neither), and why is in its status;
        // inference is 503 naming the reason.
        assert_eq!(server.list_models().await.unwrap(), vec!["fraud"]);
        assert!(!server.model_ready("fraud", None).await.unwrap());
        assert!(!server.ready().await.unwrap());
        assert!(server.live().await.unwrap());
        let status = server.status("fraud").unwrap();
        assert!(
            status
                .not_ready
                .as_deref()
                .is_some_and(|r| r.contains("fraud"))
        );
        assert!(status.versions.is_empty());
        match server.infer("fraud", None, request()).await.unwrap_err() {
            Error::Unavailable { reason, .. } => {
                assert!(
                    reason.contains("not ready") && reason.contains("fraud"),
                    "{reason}"
                );
            }
            other => panic!("expected 503, got {other}"),
        }
        // A second deploy of the name is still refused.
        assert!(matches!(
            server.deploy_or_wait(champion(None)).await.unwrap_err(),
            Error::AlreadyExists { .. }
        ));

        // The model and the alias appear: the poller loads it.
        let v1 = register(&registry, 7, FLAVOR).await;
        registry.set_alias("fraud", "champion", v1).await.unwrap();
        wait_until("the deployment becoming ready", async || {
            server.model_ready("fraud", None).await.unwrap()
        })
        .await;
        assert!(server.ready().await.unwrap());
        let answer = server.infer("fraud", None, request()).await.unwrap();
        assert_eq!(answer.model_version.as_deref(), Some("1"));
        assert_eq!(answer.outputs[0].data, TensorData::Fp32(vec![7.0]));
        let status = server.status("fraud").unwrap();
        assert_eq!((status.not_ready, status.last_reload_error), (None, None));
    }

    /// A waiting deployment without a reload interval still retries (every
    /// WAITING_RETRY, 5 s: this test takes that long).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_deployment_without_a_poller_retries_until_it_serves() {
        let (server, registry) = server();
        let report = server.deploy_or_wait(champion(None)).await.unwrap();
        assert!(report.waiting.is_some());
        let v1 = register(&registry, 3, FLAVOR).await;
        registry.set_alias("fraud", "champion", v1).await.unwrap();
        wait_until("a retry loading the deployment", async || {
            server.model_ready("fraud", None).await.unwrap()
        })
        .await;
        let answer = server.infer("fraud", None, request()).await.unwrap();
        assert_eq!(answer.outputs[0].data, TensorData::Fp32(vec![3.0]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_version_leaves_the_served_one_and_says_why() {
        let (server, registry) = server();
        let v1 = register(&registry, 1, FLAVOR).await;
        registry.set_alias("fraud", "champion", v1).await.unwrap();
        server.deploy(champion(None)).await.unwrap();
        // v2 does not load (no loader reads its flavor): the reload fails, v1
        // serves on, the deployment stays ready and keeps the reason.
        let v2 = register(&registry, 2, "unreadable").await;
        registry.set_alias("fraud", "champion", v2).await.unwrap();
        let err = server.reload("fraud").await.unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
        let answer = server.infer("fraud", None, request()).await.unwrap();
        assert_eq!(answer.model_version.as_deref(), Some("1"));
        assert!(server.ready().await.unwrap());
        let status = server.status("fraud").unwrap();
        assert_eq!(status.not_ready, None);
        assert!(
            status
                .last_reload_error
                .as_deref()
                .is_some_and(|e| e.contains("unreadable")),
            "{status:?}"
        );
        // A version that loads clears it.
        let v3 = register(&registry, 3, FLAVOR).await;
        registry.set_alias("fraud", "champion", v3).await.unwrap();
        server.reload("fraud").await.unwrap();
        assert_eq!(server.status("fraud").unwrap().last_reload_error, None);
        let answer = server.infer("fraud", None, request()).await.unwrap();
        assert_eq!(answer.model_version.as_deref(), Some("3"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redeploy_or_wait_never_replaces_a_serving_deployment_by_a_waiting_one() {
        let (server, registry) = server();
        let v1 = register(&registry, 1, FLAVOR).await;
        registry.set_alias("fraud", "champion", v1).await.unwrap();
        server.deploy_or_wait(champion(None)).await.unwrap();
        let mut broken = champion(None);
        broken.routing = Routing::Fixed("@nowhere".parse().unwrap());
        let err = server.redeploy_or_wait(broken.clone()).await.unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        assert!(server.model_ready("fraud", None).await.unwrap());
        assert!(server.infer("fraud", None, request()).await.is_ok());
        // A name not deployed (or waiting) is deployed waiting.
        broken.name = "other".into();
        let report = server.redeploy_or_wait(broken.clone()).await.unwrap();
        assert!(report.waiting.is_some_and(|r| r.contains("nowhere")));
        assert!(!server.model_ready("other", None).await.unwrap());
        assert!(!server.ready().await.unwrap());
        broken.routing = Routing::Fixed("@elsewhere".parse().unwrap());
        let report = server.redeploy_or_wait(broken).await.unwrap();
        assert!(report.waiting.is_some_and(|r| r.contains("elsewhere")));
        // An invalid config is an error, whatever the registry holds.
        let mut invalid = champion(None);
        invalid.name = "invalid".into();
        invalid.routing = Routing::Split(Vec::new());
        assert!(matches!(
            server.deploy_or_wait(invalid).await.unwrap_err(),
            Error::InvalidInput { .. }
        ));
        assert!(!server.has_model("invalid"));
    }
}
