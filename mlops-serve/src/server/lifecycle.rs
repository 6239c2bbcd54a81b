//! Deployments' lifecycle: deploy, resolve selectors and load versions, reload,
//! change routing, unload and load again, and the background tasks (alias polling,
//! canary ramp) each deployment runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use mlops_core::error::ResourceKind;
use mlops_core::model::VersionSelector;
use mlops_core::{Error, Result};

use super::state::{Deployment, LoadedVersion, State};
use super::{Inner, ModelServer, ReloadReport};
use crate::config::{DeploymentConfig, Routing, check_canary_weight};
use crate::runtime::batch::Batcher;
use crate::runtime::cache::PredictionCache;
use crate::runtime::feedback::FeedbackBook;
use crate::runtime::metrics::{ModelLabels, RequestLabels};
use crate::runtime::monitor::VersionMonitor;
use crate::runtime::shadow::ShadowLog;

impl ModelServer {
    /// Loads the versions `config` routes to and starts serving it under its name.
    /// A name already deployed is [`Error::AlreadyExists`]; a version that cannot be
    /// resolved or loaded fails the deployment and serves nothing.
    pub async fn deploy(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        if self.deployment(&config.name).is_ok() {
            return Err(Error::already_exists(ResourceKind::Model, &config.name));
        }
        let (deployment, report) = self.build(config.clone()).await?;
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

    /// Serves `config` in place of the deployment of the same name (or deploys
    /// it when there is none), without failing a request: the new versions load
    /// first, and if that fails the old deployment goes on serving; requests in
    /// flight finish on the old deployment, new ones go to the new one. Its
    /// cache, feedback and shadow records start empty.
    pub async fn redeploy(&self, config: DeploymentConfig) -> Result<ReloadReport> {
        config.validate()?;
        let (deployment, report) = self.build(config.clone()).await?;
        let old = self
            .inner
            .deployments
            .write()
            .map_err(|_| Error::backend("model server", "deployment table poisoned"))?
            .insert(config.name.clone(), deployment.clone());
        if let Ok(mut parked) = self.inner.parked.lock() {
            parked.remove(&config.name);
        }
        self.start_tasks(&deployment);
        // The old one's pollers and ramps stop now, not when its last request ends.
        if let Some(old) = old
            && let Ok(tasks) = old.tasks.lock()
        {
            for t in tasks.iter() {
                t.abort();
            }
        }
        Ok(report)
    }

    /// A deployment of `config` with its versions loaded, not yet serving.
    async fn build(&self, config: DeploymentConfig) -> Result<(Arc<Deployment>, ReloadReport)> {
        let (state, report) = self.resolve(&config, config.routing.clone(), None).await?;
        let deployment = Arc::new(Deployment {
            cache: config.cache.map(PredictionCache::new),
            feedback: config.feedback.map(FeedbackBook::new),
            state: RwLock::new(Arc::new(state)),
            shadow_log: ShadowLog::default(),
            tasks: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            config,
        });
        Ok((deployment, report))
    }

    pub(super) fn start_tasks(&self, deployment: &Arc<Deployment>) {
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
