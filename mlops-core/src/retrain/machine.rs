//! [`RetrainLoop`]: the state machine (watching, or running a canary) and the
//! steps of a tick.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEvent, AuditLog};
use crate::error::{Error, Result};
use crate::exec::{BlockingExecutor, ThreadExecutor, run_blocking};
use crate::experiment::{ArmStats, Verdict};
use crate::feature::{HistoricalOptions, OfflineFeatureStore};
use crate::metrics;
use crate::model::{Lineage, ModelRegistry, VersionSelector};
use crate::monitoring::{DatasetSnapshots, LabelSource, ModelHealth, TrafficControl};
use crate::predict::ModelLoader;
use crate::tracking::{ExperimentTracker, MetricPoint, RunStatus};
use crate::train::Trainer;

use super::decision::Decision;
use super::holdout::split_recent;
use super::policy::CanaryEvidence;
use super::policy::RetrainConfig;
use super::state::{Baseline, InMemoryLoopStates, Lease, LoopPhase, LoopState, LoopStateStore};

/// The services the loop works through: made by [`RetrainServices::new`] with the
/// required ones, then [`with_snapshots`](Self::with_snapshots) and
/// [`with_executor`](Self::with_executor) (`#[non_exhaustive]`: optional services
/// may be added in minor releases).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetrainServices {
    /// Point-in-time joins of the training sets (any [`FeatureStore`](crate::FeatureStore) coerces to it).
    pub feature_store: Arc<dyn OfflineFeatureStore>,
    /// Labelled rows.
    pub labels: Arc<dyn LabelSource>,
    /// Fits challengers and evaluates both models.
    pub trainer: Arc<dyn Trainer>,
    /// Reads the champion's artifact.
    pub loader: Arc<dyn ModelLoader>,
    /// Versions and aliases.
    pub registry: Arc<dyn ModelRegistry>,
    /// The serving side: health and traffic.
    pub traffic: Arc<dyn TrafficControl>,
    /// Runs.
    pub tracker: Arc<dyn ExperimentTracker>,
    /// The audit trail.
    pub audit: Arc<dyn AuditLog>,
    /// Snapshots of each training set and hold-out, named in the challenger's
    /// lineage; `None` records no snapshot.
    pub snapshots: Option<Arc<dyn DatasetSnapshots>>,
    /// Where fitting and evaluation run, off the async runtime that drives
    /// [`RetrainLoop::tick`] ([`ThreadExecutor`](crate::exec::ThreadExecutor)
    /// works under any runtime).
    pub executor: Arc<dyn BlockingExecutor>,
    /// Where the loop's state and lease are kept: an
    /// [`InMemoryLoopStates`] of its own unless set (clones of these services
    /// share it); `mlops_store::ObjectLoopStates` keeps it on the storage root,
    /// so a restarted process or another replica resumes the loop.
    pub state: Arc<dyn LoopStateStore>,
}

impl RetrainServices {
    /// The required services; no snapshots, and fitting on a [`ThreadExecutor`].
    ///
    /// Each argument is a different trait object, so arguments in the wrong order
    /// do not compile.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        feature_store: Arc<dyn OfflineFeatureStore>,
        labels: Arc<dyn LabelSource>,
        trainer: Arc<dyn Trainer>,
        loader: Arc<dyn ModelLoader>,
        registry: Arc<dyn ModelRegistry>,
        traffic: Arc<dyn TrafficControl>,
        tracker: Arc<dyn ExperimentTracker>,
        audit: Arc<dyn AuditLog>,
    ) -> Self {
        Self {
            feature_store,
            labels,
            trainer,
            loader,
            registry,
            traffic,
            tracker,
            audit,
            snapshots: None,
            executor: Arc::new(ThreadExecutor),
            state: Arc::new(InMemoryLoopStates::new()),
        }
    }

    /// Keeps the loop's state and lease in `state`.
    pub fn with_state(mut self, state: Arc<dyn LoopStateStore>) -> Self {
        self.state = state;
        self
    }

    /// Snapshots each training set and hold-out into `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Arc<dyn DatasetSnapshots>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Fits and evaluates on `executor`.
    pub fn with_executor(mut self, executor: Arc<dyn BlockingExecutor>) -> Self {
        self.executor = executor;
        self
    }
}

/// Drift- and quality-triggered retraining with a canary rollout: see the module
/// docs.
#[derive(Debug)]
pub struct RetrainLoop {
    config: RetrainConfig,
    services: RetrainServices,
    instance: String,
    /// The state as this instance last read or wrote it.
    state: LoopState,
    /// Whether the serving side is known to match `state`: this instance applied
    /// it and no tick has failed since.
    synced: bool,
}

/// What the live statistics say of a canary.
enum Judgement {
    /// Not enough to judge: why.
    Wait(String),
    /// Better (or within tolerance): ramp it, after the evidence's decision.
    Ramp(Option<Decision>),
    /// Worse: roll it back, why, after the evidence's decision.
    Rollback(String, Option<Decision>),
}

/// What [`RetrainLoop::claim`] found.
enum Claim {
    /// Another instance holds the lease, or won the race for it.
    Standby,
    /// This instance holds the lease; `from` names the instance whose expired
    /// lease it took over.
    Acquired { from: Option<String> },
}

/// A default instance name: the host (a pod's name in Kubernetes) and process,
/// so a restarted container resumes its own lease at once.
fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "loop".into());
    format!("{host}:{}", std::process::id())
}

impl RetrainLoop {
    /// A loop with `config` over `services`. Its state is read from
    /// `services.state` at each tick: a loop whose model already has a stored
    /// state resumes it.
    pub fn new(config: RetrainConfig, services: RetrainServices) -> Result<Self> {
        let higher = metrics::higher_is_better(&config.metric);
        if higher.is_none() {
            return Err(Error::invalid_input(
                "retrain metric",
                format!("{:?} is not a known metric", config.metric),
            ));
        }
        if !(config.holdout_fraction > 0.0 && config.holdout_fraction < 1.0) {
            return Err(Error::invalid_input(
                "holdout_fraction",
                "must be in (0, 1)",
            ));
        }
        let c = &config.canary;
        if !(c.initial_weight > 0.0 && c.initial_weight <= 1.0 && c.step > 0.0) {
            return Err(Error::invalid_input(
                "canary policy",
                "initial_weight must be in (0, 1] and step positive",
            ));
        }
        if let Some(rule) = &c.evidence {
            rule.test.check()?;
        }
        if config.lease_ttl.is_zero() || chrono::Duration::from_std(config.lease_ttl).is_err() {
            return Err(Error::invalid_input(
                "lease_ttl",
                "must be positive and at most a few centuries",
            ));
        }
        Ok(Self {
            config,
            services,
            instance: default_instance(),
            state: LoopState::default(),
            synced: false,
        })
    }

    /// Names this instance in the lease and the audit log (by default the
    /// host's name and the process id). Two instances with the same name count
    /// as one: give each replica its own.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The state as this instance last read or wrote it.
    pub fn state(&self) -> &LoopState {
        &self.state
    }

    /// Whether this instance held the lease at its last tick.
    pub fn is_leader(&self) -> bool {
        self.state
            .lease
            .as_ref()
            .is_some_and(|l| l.holder == self.instance)
    }

    /// Gives the lease up, so another instance may act at once instead of
    /// after it expires: for a process that ticks once and exits (a CronJob)
    /// or is shutting down. Returns whether this instance held it.
    ///
    /// # Errors
    /// [`Error::Conflict`] when another instance changed the state since this
    /// one's last tick (it no longer holds the lease), and storage errors.
    pub async fn release(&mut self) -> Result<bool> {
        if !self.is_leader() {
            return Ok(false);
        }
        let next = LoopState {
            lease: None,
            ..self.state.clone()
        };
        self.commit(next).await?;
        self.synced = false;
        Ok(true)
    }

    fn higher(&self) -> bool {
        metrics::higher_is_better(&self.config.metric).unwrap_or(true)
    }

    /// Whether `a` beats `b` by more than `by` on the loop's metric.
    fn beats(&self, a: f64, b: f64, by: f64) -> bool {
        if self.higher() {
            a > b + by
        } else {
            a < b - by
        }
    }

    async fn record(&self, decisions: &[Decision], run_id: Option<&str>) -> Result<()> {
        for d in decisions {
            let mut event = AuditEvent::new(
                &self.config.actor,
                d.action(),
                format!("model {}", self.config.model),
            )
            .detail("decision", d.to_string())
            .detail("deployment", &self.config.deployment)
            .detail("instance", &self.instance)
            .detail("revision", self.state.revision.to_string());
            if let Some(run) = run_id {
                event = event.detail("run_id", run);
            }
            self.services.audit.append(event).await?;
        }
        if let Some(run) = run_id {
            let tags = decisions
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("decision.{i}.{}", d.action()), d.to_string()))
                .collect();
            self.services.tracker.set_tags(run, tags).await?;
        }
        Ok(())
    }

    /// Writes `next` over the state this instance holds; a lost race means
    /// another instance took the loop over, and this one must stop acting.
    async fn commit(&mut self, mut next: LoopState) -> Result<()> {
        next.revision = self.state.revision + 1;
        if self.services.state.save(&self.config.model, &next).await? {
            self.state = next;
            return Ok(());
        }
        Err(Error::conflict(
            format!("retrain loop of model {}", self.config.model),
            format!(
                "instance {} lost its lease: another instance changed the loop's state \
                 (revision {} is no longer current)",
                self.instance, self.state.revision
            ),
        ))
    }

    /// Moves to `phase`.
    async fn enter(&mut self, phase: LoopPhase) -> Result<()> {
        let next = LoopState {
            phase,
            ..self.state.clone()
        };
        self.commit(next).await
    }

    /// Reads the stored state and takes or renews the lease.
    async fn claim(&mut self, now: DateTime<Utc>) -> Result<Claim> {
        let key = &self.config.model;
        let stored = self.services.state.load(key).await?.unwrap_or_default();
        if let Some(lease) = &stored.lease
            && lease.holder != self.instance
            && lease.expires > now
        {
            self.state = stored;
            return Ok(Claim::Standby);
        }
        let from = stored
            .lease
            .as_ref()
            .filter(|l| l.holder != self.instance)
            .map(|l| l.holder.clone());
        let ttl = chrono::Duration::from_std(self.config.lease_ttl)
            .map_err(|e| Error::invalid_input("lease_ttl", e.to_string()))?;
        let mut next = stored.clone();
        next.revision += 1;
        next.lease = Some(Lease {
            holder: self.instance.clone(),
            expires: now + ttl,
        });
        next.started.get_or_insert(now);
        if !self.services.state.save(key, &next).await? {
            // Another instance got there first: what it stored (its lease)
            // is what this one now knows; look again next tick.
            self.state = self.services.state.load(key).await?.unwrap_or(stored);
            return Ok(Claim::Standby);
        }
        self.state = next;
        Ok(Claim::Acquired { from })
    }

    /// The phase: `None` while watching, or the running canary's (champion,
    /// challenger, weight).
    pub fn canary(&self) -> Option<(u64, u64, f64)> {
        match self.state.phase {
            LoopPhase::Canary {
                champion,
                challenger,
                weight,
                ..
            } => Some((champion, challenger, weight)),
            _ => None,
        }
    }

    /// Runs one step of the loop at time `now`; returns what it decided (often
    /// nothing, and nothing while another instance holds the lease).
    ///
    /// # Errors
    /// What a service returned, and [`Error::Conflict`] when another instance
    /// took the loop over during the tick; the stored state then says how far
    /// this tick got, and the next tick (of any instance) finishes or undoes
    /// what it left half-done.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<Vec<Decision>> {
        let synced = std::mem::replace(&mut self.synced, false);
        let from = match self.claim(now).await? {
            Claim::Standby => return Ok(Vec::new()),
            Claim::Acquired { from } => from,
        };
        let mut decisions = self.resume(synced, from).await?;
        let health = self
            .services
            .traffic
            .health(&self.config.deployment)
            .await?;
        if let LoopPhase::Canary {
            champion,
            challenger,
            weight,
            since,
            baseline,
        } = self.state.phase
        {
            decisions.extend(
                self.step_canary(
                    &health,
                    (champion, challenger),
                    weight,
                    since,
                    baseline,
                    now,
                )
                .await?,
            );
        } else {
            decisions.extend(self.watch(&health, now).await?);
        }
        self.synced = true;
        Ok(decisions)
    }

    /// Brings the serving side and the registry in line with the stored state
    /// when this instance cannot know they are: after a restart, a take-over,
    /// or a failed tick. Intents are finished (promotion, rollback) or undone
    /// (a challenger still in training); a canary's routing is applied again.
    async fn resume(&mut self, synced: bool, from: Option<String>) -> Result<Vec<Decision>> {
        let mut decisions = Vec::new();
        let intent = !matches!(
            self.state.phase,
            LoopPhase::Watching | LoopPhase::Canary { .. }
        );
        if from.is_some() || intent || (!synced && self.canary().is_some()) {
            let d = Decision::Resumed {
                instance: self.instance.clone(),
                from,
                phase: describe(&self.state.phase),
            };
            self.record(std::slice::from_ref(&d), None).await?;
            decisions.push(d);
        }
        match self.state.phase.clone() {
            LoopPhase::Watching => {}
            LoopPhase::Canary {
                champion,
                challenger,
                weight,
                ..
            } => {
                if !synced {
                    self.services
                        .traffic
                        .start_canary(&self.config.deployment, champion, challenger, weight)
                        .await?;
                }
            }
            LoopPhase::Training {
                champion, run_id, ..
            } => {
                let versions = self.undo_run(&run_id).await?;
                let d = Decision::Abandoned {
                    run_id,
                    versions,
                    reason: format!(
                        "the retrain against champion v{champion} was interrupted before its \
                         canary started"
                    ),
                };
                self.record(std::slice::from_ref(&d), None).await?;
                decisions.push(d);
                self.enter(LoopPhase::Watching).await?;
            }
            LoopPhase::Promoting {
                champion,
                challenger,
            } => decisions.push(self.finish_promotion(champion, challenger).await?),
            LoopPhase::RollingBack {
                champion,
                challenger,
                reason,
            } => decisions.push(self.finish_rollback(champion, challenger, reason).await?),
        }
        Ok(decisions)
    }

    /// Archives the versions `run_id` registered (removing the `challenger`
    /// alias from them first) and ends the run as failed if it still runs.
    async fn undo_run(&self, run_id: &str) -> Result<Vec<u64>> {
        let s = &self.services;
        let model = &self.config.model;
        let versions: Vec<u64> = match s.registry.list_versions(model).await {
            Ok(vs) => vs
                .into_iter()
                .filter(|v| v.metadata.lineage.run_id.as_deref() == Some(run_id))
                .map(|v| v.version)
                .collect(),
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for &v in &versions {
            self.undo_version(v).await?;
        }
        match s.tracker.get_run(run_id).await {
            Ok(run) if run.status == RunStatus::Running => {
                s.tracker.end_run(run_id, RunStatus::Failed).await?;
            }
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(versions)
    }

    /// Removes the `challenger` alias if it names `version`.
    async fn drop_challenger_alias(&self, version: u64) -> Result<()> {
        let registry = &self.services.registry;
        let model = &self.config.model;
        if registry.aliases(model).await?.get("challenger") == Some(&version) {
            registry.delete_alias(model, "challenger").await?;
        }
        Ok(())
    }

    /// Carries out a promotion the state records as intended: every call is
    /// idempotent, so a resumed promotion repeats them safely.
    async fn finish_promotion(&mut self, champion: u64, challenger: u64) -> Result<Decision> {
        let s = &self.services;
        s.registry
            .set_alias(&self.config.model, "champion", challenger)
            .await?;
        s.traffic
            .route_all(&self.config.deployment, challenger)
            .await?;
        self.drop_challenger_alias(challenger).await?;
        let d = Decision::Promoted {
            version: challenger,
            previous: champion,
        };
        self.record(std::slice::from_ref(&d), None).await?;
        self.enter(LoopPhase::Watching).await?;
        Ok(d)
    }

    /// Carries out a rollback the state records as intended (idempotent, as
    /// [`finish_promotion`](Self::finish_promotion)).
    async fn finish_rollback(
        &mut self,
        champion: u64,
        challenger: u64,
        reason: String,
    ) -> Result<Decision> {
        let s = &self.services;
        s.traffic
            .route_all(&self.config.deployment, champion)
            .await?;
        self.undo_version(challenger).await?;
        let d = Decision::RolledBack {
            version: challenger,
            reason,
        };
        self.record(std::slice::from_ref(&d), None).await?;
        self.enter(LoopPhase::Watching).await?;
        Ok(d)
    }

    #[allow(clippy::too_many_arguments)]
    async fn step_canary(
        &mut self,
        health: &ModelHealth,
        (champion, challenger): (u64, u64),
        weight: f64,
        since: DateTime<Utc>,
        baseline: Option<Baseline>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Decision>> {
        let mut decisions = Vec::new();
        let rollback = match self.judge(health, champion, challenger, baseline) {
            Judgement::Wait(why) => {
                let limit = self.config.canary.judge_within;
                let waited = (now - since).to_std().unwrap_or_default();
                if waited <= limit {
                    return Ok(Vec::new());
                }
                format!(
                    "could not be judged within {:?} at {:.0}% of traffic: {why}",
                    limit,
                    weight * 100.0,
                )
            }
            Judgement::Rollback(reason, judged) => {
                if let Some(d) = judged {
                    self.record(std::slice::from_ref(&d), None).await?;
                    decisions.push(d);
                }
                reason
            }
            Judgement::Ramp(judged) => {
                if let Some(d) = judged {
                    self.record(std::slice::from_ref(&d), None).await?;
                    decisions.push(d);
                }
                let next = (weight + self.config.canary.step).min(1.0);
                if next >= 1.0 {
                    self.enter(LoopPhase::Promoting {
                        champion,
                        challenger,
                    })
                    .await?;
                    decisions.push(self.finish_promotion(champion, challenger).await?);
                    return Ok(decisions);
                }
                let d = Decision::CanaryRamped {
                    version: challenger,
                    weight: next,
                };
                self.record(std::slice::from_ref(&d), None).await?;
                self.enter(LoopPhase::Canary {
                    champion,
                    challenger,
                    weight: next,
                    since: now,
                    baseline,
                })
                .await?;
                self.services
                    .traffic
                    .set_canary_weight(&self.config.deployment, next)
                    .await?;
                decisions.push(d);
                return Ok(decisions);
            }
        };
        self.enter(LoopPhase::RollingBack {
            champion,
            challenger,
            reason: rollback.clone(),
        })
        .await?;
        decisions.push(self.finish_rollback(champion, challenger, rollback).await?);
        Ok(decisions)
    }

    /// What the live statistics say of the canary: by the canary's evidence
    /// rule when it has one, else by its tolerance on the loop's metric. Both
    /// arms need `min_live_rows` observations: a champion judged on a handful
    /// says nothing about the challenger.
    fn judge(
        &self,
        health: &ModelHealth,
        champion: u64,
        challenger: u64,
        baseline: Option<Baseline>,
    ) -> Judgement {
        let min = self.config.canary.min_live_rows;
        let live = |v: u64| health.versions.get(&v).map(|h| &h.live);
        if let Some(rule) = &self.config.canary.evidence {
            let name = rule.metric_name();
            // Only what each arm was observed doing since the canary started.
            let b = baseline.unwrap_or(Baseline {
                champion: ArmStats::new(),
                challenger: ArmStats::new(),
            });
            let (c, p) = (
                evidence_stats(health, rule, challenger).since(&b.challenger),
                evidence_stats(health, rule, champion).since(&b.champion),
            );
            if (c.count() as usize) < min || (p.count() as usize) < min {
                return Judgement::Wait(format!(
                    "{} and {} observations of {name} on the challenger and champion \
                     v{champion}, {min} needed on each",
                    c.count(),
                    p.count()
                ));
            }
            let evidence = rule.test.compare(&p, &c);
            let judged = Decision::Judged {
                version: challenger,
                evidence: format!("{name}: {evidence}"),
            };
            return match evidence.verdict {
                Verdict::Better => Judgement::Ramp(Some(judged)),
                Verdict::Worse => {
                    Judgement::Rollback(format!("live {name}: {evidence}"), Some(judged))
                }
                _ => Judgement::Wait(format!("live {name} undecided: {evidence}")),
            };
        }
        let metric = &self.config.metric;
        let rows = |v: u64| live(v).map_or(0, |l| l.rows);
        let value = |v: u64| live(v).and_then(|l| l.metrics.get(metric)).copied();
        match (value(challenger), value(champion)) {
            (Some(cm), Some(pm)) if rows(challenger) >= min && rows(champion) >= min => {
                if self.beats(pm, cm, self.config.canary.tolerance) {
                    Judgement::Rollback(
                        format!(
                            "live {metric} {cm:.4} over {} predictions, champion v{champion} \
                             {pm:.4}",
                            rows(challenger)
                        ),
                        None,
                    )
                } else {
                    Judgement::Ramp(None)
                }
            }
            _ => Judgement::Wait(format!(
                "{} and {} labelled predictions on the challenger and champion v{champion}, \
                 {min} needed on each",
                rows(challenger),
                rows(champion)
            )),
        }
    }

    async fn triggers(&self, health: &ModelHealth, now: DateTime<Utc>) -> Result<Vec<String>> {
        let t = &self.config.triggers;
        let mut reasons = Vec::new();
        let champion = health
            .champion
            .and_then(|c| health.versions.get(&c).map(|h| (c, h)));
        if t.on_drift
            && let Some((v, h)) = champion
        {
            for (kind, d) in [
                ("inputs", &h.input_drift),
                ("predictions", &h.prediction_drift),
            ] {
                if let Some(d) = d.as_ref().filter(|d| d.drifted) {
                    reasons.push(format!(
                        "served {kind} of v{v} drifted ({:.0}% of features: {})",
                        d.share_drifted * 100.0,
                        d.drifted_features.join(", ")
                    ));
                }
            }
        }
        if let (Some(threshold), Some((v, h))) = (t.quality_threshold, champion)
            && h.live.rows >= self.config.min_live_rows
            && let Some(&value) = h.live.metrics.get(&self.config.metric)
            && self.beats(threshold, value, 0.0)
        {
            reasons.push(format!(
                "live {} of v{v} is {value:.4} over {} predictions (threshold {threshold})",
                self.config.metric, h.live.rows
            ));
        }
        let since = self
            .state
            .last_retrain
            .or(self.state.started)
            .unwrap_or(now);
        if let Some(every) = t.every
            && (now - since).to_std().unwrap_or_default() >= every
        {
            reasons.push(format!("scheduled every {every:?}"));
        }
        if let Some(min) = t.min_new_rows {
            let rows = self
                .services
                .labels
                .labelled_rows(since, now)
                .await?
                .num_rows();
            if rows >= min {
                reasons.push(format!("{rows} new labelled rows (at least {min})"));
            }
        }
        Ok(reasons)
    }

    async fn watch(&mut self, health: &ModelHealth, now: DateTime<Utc>) -> Result<Vec<Decision>> {
        let reasons = self.triggers(health, now).await?;
        if reasons.is_empty() {
            return Ok(Vec::new());
        }
        let mut decisions = vec![Decision::Triggered {
            reasons: reasons.clone(),
        }];
        let g = &self.config.guardrails;
        // Retrains that left the rate limit's period no longer count.
        let recent: Vec<DateTime<Utc>> = self
            .state
            .retrains
            .iter()
            .copied()
            .filter(|t| (now - *t).to_std().unwrap_or_default() < g.per)
            .collect();
        let skip = if let Some(last) = self.state.last_retrain
            && (now - last).to_std().unwrap_or_default() < g.cooldown
        {
            Some(format!(
                "in the {:?} cool-down after the last retrain",
                g.cooldown
            ))
        } else if recent.len() >= g.max_retrains {
            Some(format!(
                "{} retrains already in the last {:?}",
                recent.len(),
                g.per
            ))
        } else {
            None
        };
        if let Some(reason) = skip {
            decisions.push(Decision::Skipped { reason });
            self.record(&decisions, None).await?;
            return Ok(decisions);
        }
        let Some(champion) = health.champion else {
            decisions.push(Decision::Skipped {
                reason: "the deployment has no champion version".into(),
            });
            self.record(&decisions, None).await?;
            return Ok(decisions);
        };
        let window = chrono::Duration::from_std(self.config.training_window)
            .map_err(|e| Error::invalid_input("training_window", e.to_string()))?;
        let labelled = self
            .services
            .labels
            .labelled_rows(now - window, now)
            .await?;
        if labelled.num_rows() < g.min_rows {
            decisions.push(Decision::Skipped {
                reason: format!(
                    "{} labelled rows, fewer than the {} required",
                    labelled.num_rows(),
                    g.min_rows
                ),
            });
            self.record(&decisions, None).await?;
            return Ok(decisions);
        }
        let more = self
            .retrain(labelled, champion, &reasons, recent, now)
            .await?;
        decisions.extend(more);
        Ok(decisions)
    }

    /// Trains, evaluates and (when it wins) registers and canaries a challenger;
    /// records its decisions (the trigger's too) under the run.
    async fn retrain(
        &mut self,
        labelled: RecordBatch,
        champion: u64,
        reasons: &[String],
        mut recent: Vec<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Decision>> {
        let cfg = self.config.clone();
        let s = self.services.clone();
        // The most recent rows are the hold-out.
        let (train_rows, holdout_rows) = split_recent(&labelled, cfg.holdout_fraction)?;
        let options = HistoricalOptions::default();
        let train_set = s
            .feature_store
            .get_historical_features(train_rows, &cfg.features, options.clone())
            .await?;
        let holdout = s
            .feature_store
            .get_historical_features(holdout_rows, &cfg.features, options)
            .await?;

        let tags = BTreeMap::from([
            ("mlops.model".to_owned(), cfg.model.clone()),
            ("mlops.trigger".to_owned(), reasons.join("; ")),
            ("mlops.instance".to_owned(), self.instance.clone()),
        ]);
        let run = s
            .tracker
            .start_run(
                &cfg.experiment,
                Some(&format!("retrain-{}", now.format("%Y%m%dT%H%M%S"))),
                tags,
            )
            .await?;
        // The intent first: an instance that finds it without this one
        // finishing undoes it. The guard rails count this retrain from here.
        recent.push(now);
        let next = LoopState {
            phase: LoopPhase::Training {
                champion,
                run_id: run.id.clone(),
                since: now,
            },
            last_retrain: Some(now),
            retrains: recent,
            ..self.state.clone()
        };
        self.commit(next).await?;
        self.record(
            &[Decision::Triggered {
                reasons: reasons.to_vec(),
            }],
            Some(&run.id),
        )
        .await?;
        let outcome = self
            .train_and_judge(&run.id, train_set, holdout, champion, reasons, now)
            .await;
        let status = if outcome.is_ok() {
            RunStatus::Finished
        } else {
            RunStatus::Failed
        };
        s.tracker.end_run(&run.id, status).await?;
        outcome
    }

    async fn train_and_judge(
        &mut self,
        run_id: &str,
        train_set: RecordBatch,
        holdout: RecordBatch,
        champion: u64,
        reasons: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<Decision>> {
        let cfg = self.config.clone();
        let s = self.services.clone();
        let rows = (train_set.num_rows(), holdout.num_rows());
        s.tracker
            .log_params(
                run_id,
                BTreeMap::from([
                    ("train_rows".to_owned(), rows.0.to_string()),
                    ("holdout_rows".to_owned(), rows.1.to_string()),
                    ("champion".to_owned(), champion.to_string()),
                    ("metric".to_owned(), cfg.metric.clone()),
                    ("margin".to_owned(), cfg.margin.to_string()),
                ]),
            )
            .await?;
        let (train_snapshot, holdout_snapshot) = match &s.snapshots {
            Some(snap) => (
                Some(
                    snap.snapshot(
                        std::slice::from_ref(&train_set),
                        &format!("{} training set", cfg.model),
                    )
                    .await?,
                ),
                Some(
                    snap.snapshot(
                        std::slice::from_ref(&holdout),
                        &format!("{} hold-out", cfg.model),
                    )
                    .await?,
                ),
            ),
            None => (None, None),
        };
        let (_, artifact) = s
            .registry
            .load_artifact(&cfg.model, &VersionSelector::Number(champion))
            .await?;
        // Fitting and evaluating are CPU-bound: off the async runtime.
        let (trainer, loader, label) = (s.trainer.clone(), s.loader.clone(), cfg.label.clone());
        let (trained, challenger_report, champion_report) =
            run_blocking(s.executor.as_ref(), move || {
                let trained = trainer.fit(&train_set, &label)?;
                let challenger = trainer.evaluate(trained.predictor.as_ref(), &holdout, &label)?;
                let champion_model = loader.load(&artifact)?;
                let champion = trainer.evaluate(champion_model.as_ref(), &holdout, &label)?;
                Ok((trained, challenger, champion))
            })
            .await?;
        let metric_of = |r: &crate::train::EvaluationReport, who: &str| {
            r.metrics.get(&cfg.metric).copied().ok_or_else(|| {
                Error::invalid_input(
                    "retrain metric",
                    format!("the {who}'s evaluation has no {:?}", cfg.metric),
                )
            })
        };
        let (ch, cp) = (
            metric_of(&challenger_report, "challenger")?,
            metric_of(&champion_report, "champion")?,
        );
        s.tracker
            .log_metrics(
                run_id,
                vec![
                    MetricPoint::now(format!("challenger_{}", cfg.metric), ch, 0),
                    MetricPoint::now(format!("champion_{}", cfg.metric), cp, 0),
                ],
            )
            .await?;
        let mut decisions = vec![Decision::Evaluated {
            champion,
            champion_metric: cp,
            challenger_metric: ch,
            rows,
            run_id: run_id.to_owned(),
        }];
        if !self.beats(ch, cp, cfg.margin) {
            decisions.push(Decision::Rejected {
                reason: format!(
                    "{} {ch:.4} does not beat the champion's {cp:.4} by the margin {}",
                    cfg.metric, cfg.margin
                ),
            });
            self.record(&decisions, Some(run_id)).await?;
            self.enter(LoopPhase::Watching).await?;
            return Ok(decisions);
        }
        let mut metadata = trained.metadata.clone();
        metadata
            .metrics
            .insert(format!("holdout_{}", cfg.metric), ch);
        metadata
            .tags
            .insert("mlops.trigger".into(), reasons.join("; "));
        metadata
            .tags
            .insert("mlops.trained_at".into(), now.to_rfc3339());
        if let Some(h) = &holdout_snapshot {
            metadata
                .tags
                .insert("mlops.holdout_snapshot".into(), h.clone());
        }
        metadata.lineage = Lineage {
            run_id: Some(run_id.to_owned()),
            dataset_snapshot_id: train_snapshot,
            feature_refs: cfg.features.clone(),
            parent_version: Some(champion),
            ..metadata.lineage
        };
        let version = s
            .registry
            .register(&cfg.model, trained.artifact.clone(), metadata)
            .await?
            .version;
        s.registry
            .set_alias(&cfg.model, "challenger", version)
            .await?;
        let weight = cfg.canary.initial_weight;
        decisions.push(Decision::CanaryStarted { version, weight });
        // Recorded before the state moves on: a crash in between leaves the
        // story told twice (then undone), never a step missing from it.
        self.record(&decisions, Some(run_id)).await?;
        // An evidence rule counts only what is observed from here on.
        let baseline = match &cfg.canary.evidence {
            Some(rule) => {
                let health = s.traffic.health(&cfg.deployment).await?;
                Some(Baseline {
                    champion: evidence_stats(&health, rule, champion),
                    challenger: evidence_stats(&health, rule, version),
                })
            }
            None => None,
        };
        let canary = LoopPhase::Canary {
            champion,
            challenger: version,
            weight,
            since: now,
            baseline,
        };
        if let Err(e) = self.enter(canary).await {
            // Another instance took the loop over while this one trained: the
            // version must not stay registered as a challenger nobody judges.
            // Best effort: that instance's recovery archives it too.
            let _ = self.undo_version(version).await;
            return Err(e);
        }
        s.traffic
            .start_canary(&cfg.deployment, champion, version, weight)
            .await?;
        Ok(decisions)
    }

    /// Takes a version out of the rollout: its `challenger` alias removed, the
    /// version archived (both idempotent).
    async fn undo_version(&self, version: u64) -> Result<()> {
        self.drop_challenger_alias(version).await?;
        self.services
            .registry
            .archive_version(&self.config.model, version)
            .await
            .map(|_| ())
    }
}

/// The statistic `rule` judges, of version `v` (empty when it has none).
fn evidence_stats(health: &ModelHealth, rule: &CanaryEvidence, v: u64) -> ArmStats {
    health
        .versions
        .get(&v)
        .map(|h| match &rule.metric {
            None => h.live.loss,
            Some(n) => h.live.business.get(n).copied().unwrap_or_default(),
        })
        .unwrap_or_default()
}

/// A phase in words, for the audit log.
fn describe(phase: &LoopPhase) -> String {
    match phase {
        LoopPhase::Watching => "watching".into(),
        LoopPhase::Training {
            champion, run_id, ..
        } => format!("training a challenger to champion v{champion} (run {run_id})"),
        LoopPhase::Canary {
            champion,
            challenger,
            weight,
            ..
        } => format!(
            "canary v{challenger} at {:.0}% of traffic beside champion v{champion}",
            weight * 100.0
        ),
        LoopPhase::Promoting {
            champion,
            challenger,
        } => format!("promoting v{challenger} over v{champion}"),
        LoopPhase::RollingBack {
            champion,
            challenger,
            ..
        } => format!("rolling back v{challenger} to v{champion}"),
        #[allow(unreachable_patterns)]
        _ => "an unknown phase".into(),
    }
}
