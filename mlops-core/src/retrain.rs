//! [`RetrainLoop`]: drift- and quality-triggered retraining with a safe rollout,
//! written against the SDK's traits only.
//!
//! Each [`RetrainLoop::tick`]:
//! - while a canary runs: compares the challenger's live quality with the
//!   champion's; ramps the canary up a step when it holds, promotes it (moves the
//!   `champion` alias, routes all traffic to it) at full weight, or rolls it back
//!   when it falls behind by more than the tolerance;
//! - otherwise: checks the triggers (drift of served inputs or predictions, live
//!   quality below a threshold, a schedule, enough new labelled rows) and the
//!   guard rails (cool-down, at most N retrains per period, minimum data); builds
//!   the training set with the feature store's point-in-time join over labelled
//!   rows; holds out the most recent rows; trains a challenger; evaluates champion
//!   and challenger on the same hold-out; registers the challenger with its
//!   lineage; and starts a canary only if it wins by the configured margin.
//!
//! Every decision is returned, appended to the audit log, and recorded in the
//! experiment tracker (one run per retrain).
//!
//! Training is CPU-bound and runs inside `tick`: drive the loop from its own task
//! on a multi-threaded runtime (or a dedicated thread), not from a latency-critical
//! one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch, UInt32Array};
use chrono::{DateTime, Utc};

use crate::audit::{AuditEvent, AuditLog};
use crate::error::{Error, Result};
use crate::feature::{FeatureRef, FeatureStore, HistoricalOptions};
use crate::metrics;
use crate::model::{Lineage, ModelRegistry, VersionSelector};
use crate::monitoring::{DatasetSnapshots, LabelSource, ModelHealth, TrafficControl};
use crate::predict::ModelLoader;
use crate::tracking::{ExperimentTracker, MetricPoint, RunStatus};
use crate::train::Trainer;

/// What starts a retrain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Triggers {
    /// The champion's last window of served inputs or predictions drifted.
    pub on_drift: bool,
    /// The champion's live value of the loop's metric crossed this (below for
    /// higher-is-better metrics, above otherwise), over at least
    /// `min_live_rows` labelled predictions.
    pub quality_threshold: Option<f64>,
    /// At least this long since the last retrain (or since the loop started).
    pub every: Option<Duration>,
    /// At least this many labelled rows since the last retrain.
    pub min_new_rows: Option<usize>,
}

/// Limits on retraining.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrails {
    /// Fewest labelled rows a training set needs.
    pub min_rows: usize,
    /// Shortest time between two retrains.
    pub cooldown: Duration,
    /// At most this many retrains ...
    pub max_retrains: usize,
    /// ... in this period.
    pub per: Duration,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            min_rows: 1000,
            cooldown: Duration::from_secs(3600),
            max_retrains: 4,
            per: Duration::from_secs(86_400),
        }
    }
}

/// How a challenger that won offline reaches all traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPolicy {
    /// Its first share of traffic.
    pub initial_weight: f64,
    /// Added at each tick while it holds up.
    pub step: f64,
    /// Labelled live predictions the challenger needs before each step.
    pub min_live_rows: usize,
    /// Rolled back when its live metric is worse than the champion's by more
    /// than this.
    pub tolerance: f64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        Self {
            initial_weight: 0.1,
            step: 0.3,
            min_live_rows: 100,
            tolerance: 0.02,
        }
    }
}

/// The loop's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainConfig {
    /// The model's name in the registry.
    pub model: String,
    /// The deployment serving it.
    pub deployment: String,
    /// The features joined onto labelled rows.
    pub features: Vec<FeatureRef>,
    /// The label column of the labelled rows.
    pub label: String,
    /// The metric that decides (`roc_auc`, `rmse`, ...): offline on the hold-out
    /// and live on feedback.
    pub metric: String,
    /// How much better (offline) a challenger must be.
    pub margin: f64,
    /// What starts a retrain.
    pub triggers: Triggers,
    /// Limits.
    pub guardrails: Guardrails,
    /// Labelled rows of this recent period make the training set.
    pub training_window: Duration,
    /// The most recent share of them is the hold-out both models are judged on.
    pub holdout_fraction: f64,
    /// The rollout.
    pub canary: CanaryPolicy,
    /// Fewest labelled live predictions for a quality trigger.
    pub min_live_rows: usize,
    /// The tracker experiment retrains are recorded in.
    pub experiment: String,
    /// Who the audit log names.
    pub actor: String,
}

impl RetrainConfig {
    /// Settings for `model` served as `deployment`, judged by `metric`, with the
    /// default guard rails and canary policy, a drift trigger, 7 days of training
    /// data and a 20% hold-out.
    pub fn new(
        model: impl Into<String>,
        deployment: impl Into<String>,
        features: Vec<FeatureRef>,
        label: impl Into<String>,
        metric: impl Into<String>,
    ) -> Self {
        let model = model.into();
        Self {
            experiment: format!("{model}-retrain"),
            deployment: deployment.into(),
            model,
            features,
            label: label.into(),
            metric: metric.into(),
            margin: 0.0,
            triggers: Triggers {
                on_drift: true,
                ..Triggers::default()
            },
            guardrails: Guardrails::default(),
            training_window: Duration::from_secs(7 * 86_400),
            holdout_fraction: 0.2,
            canary: CanaryPolicy::default(),
            min_live_rows: 100,
            actor: "retrain-loop".into(),
        }
    }
}

/// One decision of the loop, with its reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Triggers fired.
    Triggered {
        /// Why.
        reasons: Vec<String>,
    },
    /// Triggers fired but a guard rail held.
    Skipped {
        /// Which and why.
        reason: String,
    },
    /// A challenger was trained and evaluated next to the champion.
    Evaluated {
        /// The champion's version.
        champion: u64,
        /// The champion's hold-out metric.
        champion_metric: f64,
        /// The challenger's hold-out metric.
        challenger_metric: f64,
        /// Rows trained on and held out.
        rows: (usize, usize),
        /// The tracker run.
        run_id: String,
    },
    /// The challenger did not win by the margin; nothing was registered.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The challenger was registered and sent a share of traffic.
    CanaryStarted {
        /// Its version.
        version: u64,
        /// Its share.
        weight: f64,
    },
    /// The canary held up live and got more traffic.
    CanaryRamped {
        /// Its version.
        version: u64,
        /// Its new share.
        weight: f64,
    },
    /// The canary took all traffic and the `champion` alias.
    Promoted {
        /// The new champion.
        version: u64,
        /// The one it replaced.
        previous: u64,
    },
    /// The canary fell behind live and lost its traffic.
    RolledBack {
        /// Its version.
        version: u64,
        /// Why.
        reason: String,
    },
}

impl Decision {
    fn action(&self) -> &'static str {
        match self {
            Self::Triggered { .. } => "retrain.trigger",
            Self::Skipped { .. } => "retrain.skip",
            Self::Evaluated { .. } => "retrain.evaluate",
            Self::Rejected { .. } => "retrain.reject",
            Self::CanaryStarted { .. } => "rollout.canary_start",
            Self::CanaryRamped { .. } => "rollout.canary_ramp",
            Self::Promoted { .. } => "rollout.promote",
            Self::RolledBack { .. } => "rollout.rollback",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Triggered { reasons } => write!(f, "retrain triggered: {}", reasons.join("; ")),
            Self::Skipped { reason } => write!(f, "retrain skipped: {reason}"),
            Self::Evaluated {
                champion,
                champion_metric,
                challenger_metric,
                rows,
                ..
            } => write!(
                f,
                "challenger trained on {} rows; on the {} most recent: champion v{champion} {champion_metric:.4}, challenger {challenger_metric:.4}",
                rows.0, rows.1
            ),
            Self::Rejected { reason } => write!(f, "challenger rejected: {reason}"),
            Self::CanaryStarted { version, weight } => {
                write!(
                    f,
                    "v{version} registered; canary at {:.0}% of traffic",
                    weight * 100.0
                )
            }
            Self::CanaryRamped { version, weight } => {
                write!(
                    f,
                    "canary v{version} holds up live; now {:.0}% of traffic",
                    weight * 100.0
                )
            }
            Self::Promoted { version, previous } => {
                write!(f, "v{version} promoted to champion (replacing v{previous})")
            }
            Self::RolledBack { version, reason } => {
                write!(f, "canary v{version} rolled back: {reason}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Watching,
    Canary {
        champion: u64,
        challenger: u64,
        weight: f64,
    },
}

/// The services the loop works through.
#[derive(Debug, Clone)]
pub struct RetrainServices {
    /// Feature definitions and point-in-time joins.
    pub feature_store: Arc<dyn FeatureStore>,
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

fn event_times(batch: &RecordBatch) -> Result<Vec<i64>> {
    let col = batch.column_by_name("event_timestamp").ok_or_else(|| {
        Error::schema_mismatch(
            "labelled rows",
            "event_timestamp",
            "a timestamp column",
            "missing",
        )
    })?;
    let ts = arrow_cast::cast(
        col,
        &arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
    )
    .map_err(|e| {
        Error::schema_mismatch(
            "labelled rows",
            "event_timestamp",
            "a timestamp",
            e.to_string(),
        )
    })?;
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    if ts.null_count() > 0 {
        return Err(Error::invalid_input(
            "labelled rows",
            "event_timestamp has nulls",
        ));
    }
    Ok(ts.values().to_vec())
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
            } => {
                self.step_canary(&health, champion, challenger, weight)
                    .await?
            }
            Phase::Watching => return self.watch(&health, now).await,
        };
        self.record(&decisions, None).await?;
        Ok(decisions)
    }

    async fn step_canary(
        &mut self,
        health: &ModelHealth,
        champion: u64,
        challenger: u64,
        weight: f64,
    ) -> Result<Vec<Decision>> {
        let metric = &self.config.metric;
        let live = |v: u64| health.versions.get(&v).map(|h| &h.live);
        let Some(c) = live(challenger) else {
            return Ok(Vec::new());
        };
        if c.rows < self.config.canary.min_live_rows {
            return Ok(Vec::new());
        }
        let (Some(&cm), Some(&pm)) = (
            c.metrics.get(metric),
            live(champion).and_then(|l| l.metrics.get(metric)),
        ) else {
            return Ok(Vec::new());
        };
        let traffic = &self.services.traffic;
        let deployment = &self.config.deployment;
        if self.beats(pm, cm, self.config.canary.tolerance) {
            traffic.route_all(deployment, champion).await?;
            self.phase = Phase::Watching;
            return Ok(vec![Decision::RolledBack {
                version: challenger,
                reason: format!(
                    "live {metric} {cm:.4} over {} predictions, champion v{champion} {pm:.4}",
                    c.rows
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
        let times = event_times(&labelled)?;
        let mut order: Vec<u32> = (0..labelled.num_rows() as u32).collect();
        order.sort_by_key(|&i| times[i as usize]);
        let holdout_rows = ((order.len() as f64) * cfg.holdout_fraction)
            .round()
            .max(1.0) as usize;
        let split = order.len() - holdout_rows.min(order.len() - 1);
        let take = |idx: &[u32]| {
            arrow_select::take::take_record_batch(&labelled, &UInt32Array::from(idx.to_vec()))
                .map_err(|e| Error::backend("arrow", e))
        };
        let (train_rows, holdout_rows) = (take(&order[..split])?, take(&order[split..])?);
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
        let trained = s.trainer.fit(&train_set, &cfg.label)?;
        let challenger_report =
            s.trainer
                .evaluate(trained.predictor.as_ref(), &holdout, &cfg.label)?;
        let (_, artifact) = s
            .registry
            .load_artifact(&cfg.model, &VersionSelector::Number(champion))
            .await?;
        let champion_model = s.loader.load(&artifact)?;
        let champion_report = s
            .trainer
            .evaluate(champion_model.as_ref(), &holdout, &cfg.label)?;
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
        };
        decisions.push(Decision::CanaryStarted { version, weight });
        Ok(decisions)
    }
}
