//! [`RetrainLoop`]: the state machine (watching, or running a canary) and the
//! steps of a tick.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow_array::RecordBatch;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEvent, AuditLog};
use crate::error::{Error, Result};
use crate::exec::{BlockingExecutor, ThreadExecutor, run_blocking};
use crate::feature::{HistoricalOptions, OfflineFeatureStore};
use crate::metrics;
use crate::model::{Lineage, ModelRegistry, VersionSelector};
use crate::monitoring::{DatasetSnapshots, LabelSource, ModelHealth, TrafficControl};
use crate::predict::ModelLoader;
use crate::tracking::{ExperimentTracker, MetricPoint, RunStatus};
use crate::train::Trainer;

use super::decision::Decision;
use super::holdout::split_recent;
use super::policy::RetrainConfig;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Watching,
    Canary {
        champion: u64,
        challenger: u64,
        weight: f64,
        /// When the canary reached this weight: it must be judged within
        /// `CanaryPolicy::judge_within` of it.
        since: DateTime<Utc>,
    },
}

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
        }
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
    phase: Phase,
    started: Option<DateTime<Utc>>,
    last_retrain: Option<DateTime<Utc>>,
    retrains: VecDeque<DateTime<Utc>>,
}

impl RetrainLoop {
    /// A loop with `config` over `services`, watching (no canary running).
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
        Ok(Self {
            config,
            services,
            phase: Phase::Watching,
            started: None,
            last_retrain: None,
            retrains: VecDeque::new(),
        })
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
            .detail("deployment", &self.config.deployment);
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

    /// The phase: `None` while watching, or the running canary's (champion,
    /// challenger, weight).
    pub fn canary(&self) -> Option<(u64, u64, f64)> {
        match self.phase {
            Phase::Watching => None,
            Phase::Canary {
                champion,
                challenger,
                weight,
                ..
            } => Some((champion, challenger, weight)),
        }
    }

    /// Runs one step of the loop at time `now`; returns what it decided (often
    /// nothing).
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<Vec<Decision>> {
        self.started.get_or_insert(now);
        let health = self
            .services
            .traffic
            .health(&self.config.deployment)
            .await?;
        let decisions = match self.phase {
            Phase::Canary {
                champion,
                challenger,
                weight,
                since,
            } => {
                self.step_canary(&health, champion, challenger, weight, since, now)
                    .await?
            }
            Phase::Watching => return self.watch(&health, now).await,
        };
        self.record(&decisions, None).await?;
        Ok(decisions)
    }

    #[allow(clippy::too_many_arguments)]
    async fn step_canary(
        &mut self,
        health: &ModelHealth,
        champion: u64,
        challenger: u64,
        weight: f64,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Decision>> {
        let metric = &self.config.metric;
        let min = self.config.canary.min_live_rows;
        let live = |v: u64| health.versions.get(&v).map(|h| &h.live);
        let rows = |v: u64| live(v).map_or(0, |l| l.rows);
        let value = |v: u64| live(v).and_then(|l| l.metrics.get(metric)).copied();
        let traffic = &self.services.traffic;
        let deployment = &self.config.deployment;
        // Both arms need their labelled predictions: a champion judged on a
        // handful of labels says nothing about the challenger.
        let judged = match (value(challenger), value(champion)) {
            (Some(cm), Some(pm)) if rows(challenger) >= min && rows(champion) >= min => {
                Some((cm, pm))
            }
            _ => None,
        };
        let Some((cm, pm)) = judged else {
            let limit = self.config.canary.judge_within;
            let waited = (now - since).to_std().unwrap_or_default();
            if waited <= limit {
                return Ok(Vec::new());
            }
            traffic.route_all(deployment, champion).await?;
            self.phase = Phase::Watching;
            return Ok(vec![Decision::RolledBack {
                version: challenger,
                reason: format!(
                    "could not be judged within {:?} at {:.0}% of traffic: {} and {} labelled \
                     predictions on the challenger and champion v{champion}, {min} needed on each",
                    limit,
                    weight * 100.0,
                    rows(challenger),
                    rows(champion)
                ),
            }]);
        };
        let c_rows = rows(challenger);
        if self.beats(pm, cm, self.config.canary.tolerance) {
            traffic.route_all(deployment, champion).await?;
            self.phase = Phase::Watching;
            return Ok(vec![Decision::RolledBack {
                version: challenger,
                reason: format!(
                    "live {metric} {cm:.4} over {c_rows} predictions, champion v{champion} {pm:.4}"
                ),
            }]);
        }
        let next = (weight + self.config.canary.step).min(1.0);
        if next >= 1.0 {
            self.services
                .registry
                .set_alias(&self.config.model, "champion", challenger)
                .await?;
            traffic.route_all(deployment, challenger).await?;
            self.phase = Phase::Watching;
            return Ok(vec![Decision::Promoted {
                version: challenger,
                previous: champion,
            }]);
        }
        traffic.set_canary_weight(deployment, next).await?;
        self.phase = Phase::Canary {
            champion,
            challenger,
            weight: next,
            since: now,
        };
        Ok(vec![Decision::CanaryRamped {
            version: challenger,
            weight: next,
        }])
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
        let since = self.last_retrain.or(self.started).unwrap_or(now);
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
        while self
            .retrains
            .front()
            .is_some_and(|t| (now - *t).to_std().unwrap_or_default() >= g.per)
        {
            self.retrains.pop_front();
        }
        let skip = if let Some(last) = self.last_retrain
            && (now - last).to_std().unwrap_or_default() < g.cooldown
        {
            Some(format!(
                "in the {:?} cool-down after the last retrain",
                g.cooldown
            ))
        } else if self.retrains.len() >= g.max_retrains {
            Some(format!(
                "{} retrains already in the last {:?}",
                self.retrains.len(),
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
        self.last_retrain = Some(now);
        self.retrains.push_back(now);
        let (more, run_id) = self.retrain(labelled, champion, &reasons, now).await?;
        decisions.extend(more);
        self.record(&decisions, Some(&run_id)).await?;
        Ok(decisions)
    }

    /// Trains, evaluates and (when it wins) registers and canaries a challenger.
    async fn retrain(
        &mut self,
        labelled: RecordBatch,
        champion: u64,
        reasons: &[String],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Decision>, String)> {
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
        ]);
        let run = s
            .tracker
            .start_run(
                &cfg.experiment,
                Some(&format!("retrain-{}", now.format("%Y%m%dT%H%M%S"))),
                tags,
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
        Ok((outcome?, run.id))
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
        s.traffic
            .start_canary(&cfg.deployment, champion, version, weight)
            .await?;
        self.phase = Phase::Canary {
            champion,
            challenger: version,
            weight,
            since: now,
        };
        decisions.push(Decision::CanaryStarted { version, weight });
        Ok(decisions)
    }
}
