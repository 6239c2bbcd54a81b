//! What a training run is configured with: [`TrainConfig`] and its parts, and the
//! per-epoch record an [`EpochObserver`] sees.

use std::collections::BTreeMap;

use mlops_core::{Error, Result, Task};
use serde::{Deserialize, Serialize};

use crate::device::TrainDevice;
use crate::net::ModelSpec;
use crate::prep::PrepConfig;
use mlops_core::metrics;

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam; weight decay, when set, is an L2 penalty added to the gradient.
    Adam,
    /// AdamW: decoupled weight decay.
    AdamW,
}

/// How the learning rate changes over training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant,
    /// Multiplied by `factor` every `every_epochs` epochs.
    StepDecay {
        /// Epochs between decays (at least 1).
        every_epochs: usize,
        /// The multiplier, in `(0, 1]`.
        factor: f64,
    },
    /// Cosine annealing from the initial rate to `min_lr` over all steps.
    Cosine {
        /// The final rate.
        min_lr: f64,
    },
}

impl LrSchedule {
    pub(super) fn rate(self, base: f64, epoch: usize, step: usize, total_steps: usize) -> f64 {
        match self {
            Self::Constant => base,
            Self::StepDecay {
                every_epochs,
                factor,
            } => {
                let decays = epoch / every_epochs.max(1);
                base * factor.powi(i32::try_from(decays).unwrap_or(i32::MAX))
            }
            Self::Cosine { min_lr } => {
                let t = step as f64 / total_steps.max(1) as f64;
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// How classes are weighted in the loss (imbalanced labels: fraud is rare).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "weights", rename_all = "snake_case")]
pub enum ClassWeights {
    /// Every row counts the same.
    None,
    /// `rows / (classes * rows_of_class)`, as scikit-learn's `"balanced"`.
    Balanced,
    /// Given weights by class name; classes not named weigh 1.
    Custom(BTreeMap<String, f64>),
}

/// Stop when the validation metric has not improved for `patience` epochs, and
/// keep the weights of the best epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// The validation metric watched, e.g. `log_loss`, `roc_auc`, `rmse`.
    pub metric: String,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    pub min_delta: f64,
}

/// When the progress bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// When standard error is a terminal.
    #[default]
    Auto,
    /// Never.
    Hidden,
}

/// Everything about a training run; [`TrainConfig::new`] gives sensible defaults,
/// then set field by field (`#[non_exhaustive]`: new settings may be added in
/// minor releases).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TrainConfig {
    /// What to predict.
    pub task: Task,
    /// The network.
    pub model: ModelSpec,
    /// The feature columns; `None` takes every column but the label and `exclude`.
    pub features: Option<Vec<String>>,
    /// Columns never used as features (entity keys, timestamps).
    pub exclude: Vec<String>,
    /// Categorical encoding.
    pub prep: PrepConfig,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// The initial learning rate.
    pub learning_rate: f64,
    /// Weight decay (decoupled for AdamW, L2 for Adam); 0 for none.
    pub weight_decay: f64,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// Passes over the training split, at most.
    pub epochs: usize,
    /// Rows per mini-batch.
    pub batch_size: usize,
    /// Share of rows held out for validation (stratified by class), in `(0, 1)`.
    pub validation_fraction: f64,
    /// Early stopping with best-weights restore; `None` trains every epoch and
    /// keeps the last weights.
    pub early_stopping: Option<EarlyStopping>,
    /// Class weights in the loss (classification).
    pub class_weights: ClassWeights,
    /// For binary tasks, the class whose probability the model outputs; by default
    /// `true`, `1`, or the second class in sorted order.
    pub positive_class: Option<String>,
    /// Seed of the split, shuffling, initialization and dropout: with the same seed
    /// and data, training on the CPU gives the same model bit for bit.
    pub seed: u64,
    /// Where to train.
    pub device: TrainDevice,
    /// Whether a progress bar shows.
    pub progress: Progress,
    /// Profile the training split for drift monitoring and put the reference in the
    /// artifact.
    pub drift_reference: bool,
}

impl TrainConfig {
    /// Defaults for `task` and `model`: AdamW at 1e-3 with weight decay 1e-4, 20
    /// epochs of 256 rows, 20% validation, early stopping after 3 epochs on log
    /// loss (RMSE for regression), seed 0, CPU.
    pub fn new(task: Task, model: ModelSpec) -> Self {
        let metric = match task {
            Task::Regression => "rmse",
            _ => "log_loss",
        };
        Self {
            task,
            model,
            features: None,
            exclude: Vec::new(),
            prep: PrepConfig::default(),
            optimizer: OptimizerKind::AdamW,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            schedule: LrSchedule::Constant,
            epochs: 20,
            batch_size: 256,
            validation_fraction: 0.2,
            early_stopping: Some(EarlyStopping {
                metric: metric.into(),
                patience: 3,
                min_delta: 0.0,
            }),
            class_weights: ClassWeights::None,
            positive_class: None,
            seed: 0,
            device: TrainDevice::Cpu,
            progress: Progress::Auto,
            drift_reference: true,
        }
    }

    /// Checks every setting; the error names the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |what: &str, reason: String| Err(Error::invalid_input(what, reason));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                format!("{} is not a positive number", self.learning_rate),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("{} is not a number >= 0", self.weight_decay),
            );
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(
                "validation_fraction",
                format!("{} is outside (0, 1)", self.validation_fraction),
            );
        }
        match self.schedule {
            LrSchedule::StepDecay {
                every_epochs,
                factor,
            } if every_epochs == 0 || !(factor > 0.0 && factor <= 1.0) => {
                return bad(
                    "learning-rate schedule",
                    format!(
                        "step decay every {every_epochs} epochs by {factor}: need >= 1 and (0, 1]"
                    ),
                );
            }
            LrSchedule::Cosine { min_lr } if !(min_lr >= 0.0 && min_lr <= self.learning_rate) => {
                return bad(
                    "learning-rate schedule",
                    format!("cosine min_lr {min_lr} is outside [0, learning_rate]"),
                );
            }
            _ => {}
        }
        if let ClassWeights::Custom(w) = &self.class_weights
            && let Some((class, v)) = w.iter().find(|(_, v)| !(v.is_finite() && **v > 0.0))
        {
            return bad(
                "class_weights",
                format!("class {class:?} has weight {v}; need > 0"),
            );
        }
        if let Some(es) = &self.early_stopping {
            if !metrics::metrics_of(self.task).contains(&es.metric.as_str()) {
                return bad(
                    "early_stopping.metric",
                    format!(
                        "{:?} is not a validation metric of {:?}; choose one of {:?}",
                        es.metric,
                        self.task,
                        metrics::metrics_of(self.task)
                    ),
                );
            }
            if !(es.min_delta.is_finite() && es.min_delta >= 0.0) {
                return bad(
                    "early_stopping.min_delta",
                    format!("{} is not >= 0", es.min_delta),
                );
            }
        }
        Ok(())
    }

    /// The settings as strings, as recorded with runs and model versions.
    pub fn params(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::from([
            ("task".to_owned(), format!("{:?}", self.task)),
            ("model".to_owned(), self.model.describe()),
            ("optimizer".to_owned(), format!("{:?}", self.optimizer)),
            ("learning_rate".to_owned(), self.learning_rate.to_string()),
            ("weight_decay".to_owned(), self.weight_decay.to_string()),
            ("schedule".to_owned(), format!("{:?}", self.schedule)),
            ("epochs".to_owned(), self.epochs.to_string()),
            ("batch_size".to_owned(), self.batch_size.to_string()),
            (
                "validation_fraction".to_owned(),
                self.validation_fraction.to_string(),
            ),
            (
                "class_weights".to_owned(),
                format!("{:?}", self.class_weights),
            ),
            ("seed".to_owned(), self.seed.to_string()),
            ("device".to_owned(), self.device.to_string()),
        ]);
        if let Some(es) = &self.early_stopping {
            p.insert(
                "early_stopping".to_owned(),
                format!(
                    "{} patience {} min_delta {}",
                    es.metric, es.patience, es.min_delta
                ),
            );
        }
        p
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's mini-batches.
    pub train_loss: f64,
    /// Validation metrics after the epoch.
    pub valid: BTreeMap<String, f64>,
    /// The learning rate at the epoch's last step.
    pub learning_rate: f64,
    /// Training rows per second in this epoch (optimization only).
    pub rows_per_second: f64,
}

/// Receives each epoch's metrics as training runs (e.g. to forward them to an
/// [`ExperimentTracker`](mlops_core::ExperimentTracker): see
/// [`fit_tracked`](crate::fit_tracked)).
pub trait EpochObserver: Send + Sync + std::fmt::Debug {
    /// Called after each epoch.
    fn on_epoch(&self, record: &EpochRecord);
}
