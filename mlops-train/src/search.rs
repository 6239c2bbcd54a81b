//! Training recorded in an [`ExperimentTracker`], and model selection by grid or
//! random search.
//!
//! Training is CPU-bound and runs on tokio's blocking pool; the epochs' metrics
//! reach the tracker while it runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use mlops_core::{Error, EvaluationReport, ExperimentTracker, MetricPoint, Result, Run, RunStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::net::ModelSpec;
use crate::trainer::{
    EpochObserver, EpochRecord, OptimizerKind, TabularTrainer, TrainConfig, TrainOutcome,
};
use mlops_core::metrics;
use mlops_core::rng::SplitMix64;

/// Forwards epochs over a channel to the async side.
#[derive(Debug)]
struct ChannelObserver(mpsc::UnboundedSender<EpochRecord>);

impl EpochObserver for ChannelObserver {
    fn on_epoch(&self, record: &EpochRecord) {
        // The receiver lives until training ends; a send error means the caller
        // went away, and there is nobody left to record for.
        let _ = self.0.send(record.clone());
    }
}

fn epoch_points(record: &EpochRecord) -> Vec<MetricPoint> {
    let step = record.epoch as u64;
    let mut points = vec![
        MetricPoint::now("train_loss", record.train_loss, step),
        MetricPoint::now("learning_rate", record.learning_rate, step),
        MetricPoint::now("rows_per_second", record.rows_per_second, step),
    ];
    points.extend(
        record
            .valid
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| MetricPoint::now(format!("valid_{k}"), *v, step)),
    );
    points
}

/// Trains with `trainer` on the blocking pool while recording the run in
/// `tracker` under `experiment`: parameters first, each epoch's metrics as it
/// ends (`train_loss`, `learning_rate`, `rows_per_second`, `valid_<metric>`), then
/// the final validation metrics and the best epoch. The run ends `Finished`, or
/// `Failed` when training fails (the training error is returned).
pub async fn fit_tracked(
    trainer: TabularTrainer,
    data: RecordBatch,
    label: &str,
    tracker: Arc<dyn ExperimentTracker>,
    experiment: &str,
    run_name: Option<&str>,
    tags: BTreeMap<String, String>,
) -> Result<(TrainOutcome, Run)> {
    let run = tracker.start_run(experiment, run_name, tags).await?;
    let id = run.id.clone();
    let result = fit_in_run(trainer, data, label, tracker.as_ref(), &id).await;
    match result {
        Ok(outcome) => {
            let run = tracker.end_run(&id, RunStatus::Finished).await?;
            Ok((outcome, run))
        }
        Err(e) => {
            // The training error matters more than a failure to mark the run.
            let _ = tracker.end_run(&id, RunStatus::Failed).await;
            Err(e)
        }
    }
}

async fn fit_in_run(
    trainer: TabularTrainer,
    data: RecordBatch,
    label: &str,
    tracker: &dyn ExperimentTracker,
    run_id: &str,
) -> Result<TrainOutcome> {
    tracker
        .log_params(run_id, trainer.config().params())
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let trainer = trainer.with_observer(Arc::new(ChannelObserver(tx)));
    let label_owned = label.to_owned();
    let job = tokio::task::spawn_blocking(move || trainer.fit_detailed(&data, &label_owned));
    let mut log_error = None;
    while let Some(record) = rx.recv().await {
        if log_error.is_none()
            && let Err(e) = tracker.log_metrics(run_id, epoch_points(&record)).await
        {
            log_error = Some(e);
        }
    }
    let outcome = job
        .await
        .map_err(|e| Error::backend("training task", e.to_string()))??;
    if let Some(e) = log_error {
        return Err(e);
    }
    let step = outcome.best_epoch as u64;
    let finals = outcome
        .trained
        .report
        .metrics
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| MetricPoint::now(k.clone(), *v, step))
        .collect();
    tracker.log_metrics(run_id, finals).await?;
    tracker
        .log_params(
            run_id,
            BTreeMap::from([("best_epoch".to_owned(), outcome.best_epoch.to_string())]),
        )
        .await?;
    Ok(outcome)
}

/// The values a search tries; every list must be non-empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// Model types and shapes.
    pub models: Vec<ModelSpec>,
    /// Initial learning rates.
    pub learning_rates: Vec<f64>,
    /// Weight decays.
    pub weight_decays: Vec<f64>,
    /// Mini-batch sizes.
    pub batch_sizes: Vec<usize>,
    /// Optimizers.
    pub optimizers: Vec<OptimizerKind>,
}

impl SearchSpace {
    /// Every combination, in a fixed order.
    fn grid(&self, base: &TrainConfig) -> Vec<TrainConfig> {
        let mut out = Vec::new();
        for model in &self.models {
            for &learning_rate in &self.learning_rates {
                for &weight_decay in &self.weight_decays {
                    for &batch_size in &self.batch_sizes {
                        for &optimizer in &self.optimizers {
                            let mut c = base.clone();
                            c.model = model.clone();
                            c.learning_rate = learning_rate;
                            c.weight_decay = weight_decay;
                            c.batch_size = batch_size;
                            c.optimizer = optimizer;
                            out.push(c);
                        }
                    }
                }
            }
        }
        out
    }
}

/// How trials are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SearchStrategy {
    /// Every combination in order, until the budget runs out.
    Grid,
    /// Combinations drawn at random without repetition (a seeded shuffle of the
    /// grid), until the budget runs out.
    Random {
        /// The seed of the draw.
        seed: u64,
    },
}

/// When a search stops. A trial that has started always finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SearchBudget {
    /// At most this many trials.
    pub max_trials: Option<usize>,
    /// No trial starts after this much time.
    pub max_duration: Option<Duration>,
}

/// A model search: `base` settings with the `space` values substituted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Settings shared by every trial (task, epochs, seed, ...).
    pub base: TrainConfig,
    /// The values tried.
    pub space: SearchSpace,
    /// Grid or random.
    pub strategy: SearchStrategy,
    /// Trials or time.
    pub budget: SearchBudget,
    /// The validation metric that picks the best trial, e.g. `roc_auc`.
    pub metric: String,
}

/// One trial of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Its position in the search, from 0.
    pub index: usize,
    /// Its settings.
    pub config: TrainConfig,
    /// Its validation metrics.
    pub report: EvaluationReport,
    /// The selection metric's value.
    pub score: f64,
    /// Its tracker run, when tracked.
    pub run_id: Option<String>,
}

/// What a search found.
#[derive(Debug)]
pub struct SearchOutcome {
    /// Every trial run, in order.
    pub trials: Vec<Trial>,
    /// Index into `trials` of the best one.
    pub best_trial: usize,
    /// The best trial's model.
    pub best: TrainOutcome,
}

/// Searches `config.space` for the model with the best validation `metric`. With a
/// tracker, each trial is a run of `experiment` tagged `mlops.search` (the
/// search's name) and `mlops.trial` (its index), recorded as [`fit_tracked`] does.
///
/// A trial that fails on its settings (e.g. a learning rate so high the loss
/// diverges) is recorded and skipped; the search fails only when no trial
/// succeeds or the data itself is unusable.
pub async fn search(
    config: SearchConfig,
    data: RecordBatch,
    label: &str,
    tracker: Option<(Arc<dyn ExperimentTracker>, String)>,
    search_name: &str,
) -> Result<SearchOutcome> {
    let s = &config.space;
    for (name, empty) in [
        ("models", s.models.is_empty()),
        ("learning_rates", s.learning_rates.is_empty()),
        ("weight_decays", s.weight_decays.is_empty()),
        ("batch_sizes", s.batch_sizes.is_empty()),
        ("optimizers", s.optimizers.is_empty()),
    ] {
        if empty {
            return Err(Error::invalid_input(
                format!("search space {name}"),
                "is empty; give at least one value",
            ));
        }
    }
    let higher = metrics::higher_is_better(&config.metric)
        .filter(|_| metrics::metrics_of(config.base.task).contains(&config.metric.as_str()))
        .ok_or_else(|| {
            Error::invalid_input(
                "search metric",
                format!(
                    "{:?} is not a validation metric of {:?}; choose one of {:?}",
                    config.metric,
                    config.base.task,
                    metrics::metrics_of(config.base.task)
                ),
            )
        })?;
    if config.budget.max_trials == Some(0) {
        return Err(Error::invalid_input("search budget", "max_trials is 0"));
    }
    let mut candidates = config.space.grid(&config.base);
    for c in &candidates {
        c.validate()?;
    }
    if let SearchStrategy::Random { seed } = config.strategy {
        SplitMix64::new(seed).shuffle(&mut candidates);
    }
    let limit = config.budget.max_trials.unwrap_or(usize::MAX);
    let started = Instant::now();
    let mut trials = Vec::new();
    let mut best: Option<(usize, TrainOutcome)> = None;
    let mut last_error = None;
    for (index, candidate) in candidates.into_iter().take(limit).enumerate() {
        if config
            .budget
            .max_duration
            .is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let trainer = TabularTrainer::new(candidate.clone());
        let result = match &tracker {
            Some((t, experiment)) => {
                let tags = BTreeMap::from([
                    ("mlops.search".to_owned(), search_name.to_owned()),
                    ("mlops.trial".to_owned(), index.to_string()),
                ]);
                let name = format!("{search_name}-trial-{index}");
                fit_tracked(
                    trainer,
                    data.clone(),
                    label,
                    t.clone(),
                    experiment,
                    Some(&name),
                    tags,
                )
                .await
                .map(|(o, run)| (o, Some(run.id)))
            }
            None => {
                let data = data.clone();
                let label = label.to_owned();
                tokio::task::spawn_blocking(move || trainer.fit_detailed(&data, &label))
                    .await
                    .map_err(|e| Error::backend("training task", e.to_string()))?
                    .map(|o| (o, None))
            }
        };
        let (outcome, run_id) = match result {
            Ok(r) => r,
            // Bad data fails every trial alike: stop at once.
            Err(e @ (Error::SchemaMismatch { .. } | Error::NotFound { .. })) => return Err(e),
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let report = outcome.trained.report.clone();
        let score = report
            .metrics
            .get(&config.metric)
            .copied()
            .filter(|v| v.is_finite())
            .unwrap_or(if higher {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        trials.push(Trial {
            index,
            config: candidate,
            report,
            score,
            run_id,
        });
        let better = match &best {
            None => true,
            Some((b, _)) if higher => score > trials[*b].score,
            Some((b, _)) => score < trials[*b].score,
        };
        if better {
            best = Some((trials.len() - 1, outcome));
        }
    }
    match best {
        Some((best_trial, best)) => Ok(SearchOutcome {
            trials,
            best_trial,
            best,
        }),
        None => Err(last_error.unwrap_or_else(|| {
            Error::invalid_input("search budget", "no trial ran within the budget")
        })),
    }
}
