//! [`TabularTrainer`]: the [`Trainer`] of linear models and MLPs on Arrow data.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Int64Type};
use arrow_array::{RecordBatch, UInt32Array};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, activation};
use mlops_core::drift::{TableDriftConfig, TableDriftDetector};
use mlops_core::inference::tensors_from_batch;
use mlops_core::{
    Error, EvaluationReport, ModelMetadata, Predictor, Result, Task, TrainedModel, Trainer,
};
use serde::{Deserialize, Serialize};

use crate::device::TrainDevice;
use crate::model::{ModelCard, TabularModel};
use crate::net::{ModelSpec, Net, read_f32};
use crate::prep::{PrepConfig, Preprocessor, column, numeric_values};
use mlops_core::metrics;
use mlops_core::rng::SplitMix64;

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
    fn rate(self, base: f64, epoch: usize, step: usize, total_steps: usize) -> f64 {
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

/// Everything about a training run; [`TrainConfig::new`] gives sensible defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// What [`TabularTrainer::fit_detailed`] returns.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The model, concrete.
    pub model: Arc<TabularModel>,
    /// The model as the [`Trainer`] contract returns it.
    pub trained: TrainedModel,
    /// Per-epoch metrics.
    pub history: Vec<EpochRecord>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
}

/// Fits linear models and MLPs on Arrow data with burn: see [`TrainConfig`].
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Float64Array, Int64Array, RecordBatch};
/// use mlops_core::{Task, Trainer};
/// use mlops_train::{ModelSpec, Progress, TabularTrainer, TrainConfig};
///
/// let x: Vec<f64> = (0..200).map(|i| i as f64 / 100.0 - 1.0).collect();
/// let y: Vec<i64> = x.iter().map(|&v| i64::from(v > 0.0)).collect();
/// let data = RecordBatch::try_from_iter([
///     ("x", Arc::new(Float64Array::from(x)) as _),
///     ("label", Arc::new(Int64Array::from(y)) as _),
/// ])?;
/// let mut config = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
/// config.learning_rate = 0.05;
/// config.progress = Progress::Hidden;
/// let trained = TabularTrainer::new(config).fit(&data, "label")?;
/// assert!(trained.report.metrics["roc_auc"] > 0.95);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TabularTrainer {
    config: TrainConfig,
    observer: Option<Arc<dyn EpochObserver>>,
}

/// Labels read from the label column.
enum Labels {
    Classes { ids: Vec<usize>, names: Vec<String> },
    Values(Vec<f64>),
}

/// Class labels of a column: integer and boolean classes sort numerically,
/// strings lexically. `positive` moves that class last (binary tasks).
fn read_classes(
    batch: &RecordBatch,
    label: &str,
    positive: Option<&str>,
) -> Result<(Vec<usize>, Vec<String>)> {
    let array = column(batch, label)?;
    if let Some(row) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(Error::invalid_input(
            format!("label column '{label}'"),
            format!("row {row} is null; every training row needs a label"),
        ));
    }
    let raw: Vec<String> = match array.data_type() {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let ints = cast(array, &DataType::Int64).map_err(|e| {
                Error::schema_mismatch("training data", label, "class labels", e.to_string())
            })?;
            let ints = ints.as_primitive::<Int64Type>();
            let mut distinct: Vec<i64> = ints.values().to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            let bool_label = matches!(array.data_type(), DataType::Boolean);
            let name = |v: i64| {
                if bool_label {
                    (v == 1).to_string()
                } else {
                    v.to_string()
                }
            };
            let index: HashMap<i64, usize> =
                distinct.iter().enumerate().map(|(i, &v)| (v, i)).collect();
            let names: Vec<String> = distinct.iter().map(|&v| name(v)).collect();
            let ids = ints.values().iter().map(|v| index[v]).collect();
            return reorder_positive(label, ids, names, positive);
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let s = cast(array, &DataType::Utf8).map_err(|e| {
                Error::schema_mismatch("training data", label, "class labels", e.to_string())
            })?;
            s.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_owned())
                .collect()
        }
        other => {
            return Err(Error::schema_mismatch(
                "training data",
                label,
                "integer, boolean or string class labels",
                other.to_string(),
            ));
        }
    };
    let mut names = raw.clone();
    names.sort_unstable();
    names.dedup();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), i))
        .collect();
    let ids = raw.iter().map(|v| index[v.as_str()]).collect();
    reorder_positive(label, ids, names, positive)
}

fn reorder_positive(
    label: &str,
    mut ids: Vec<usize>,
    mut names: Vec<String>,
    positive: Option<&str>,
) -> Result<(Vec<usize>, Vec<String>)> {
    let Some(positive) = positive else {
        return Ok((ids, names));
    };
    let at = names.iter().position(|n| n == positive).ok_or_else(|| {
        Error::invalid_input(
            "positive_class",
            format!(
                "{positive:?} is not a class of label column '{label}'; its classes are {names:?}"
            ),
        )
    })?;
    let last = names.len() - 1;
    names.swap(at, last);
    for id in &mut ids {
        if *id == at {
            *id = last;
        } else if *id == last {
            *id = at;
        }
    }
    Ok((ids, names))
}

fn read_labels(config: &TrainConfig, batch: &RecordBatch, label: &str) -> Result<Labels> {
    match config.task {
        Task::Regression => {
            let values = numeric_values(label, column(batch, label)?)?;
            if let Some(row) = values.iter().position(Option::is_none) {
                return Err(Error::invalid_input(
                    format!("label column '{label}'"),
                    format!("row {row} is null; every training row needs a label"),
                ));
            }
            Ok(Labels::Values(values.into_iter().flatten().collect()))
        }
        task => {
            let (ids, names) = read_classes(batch, label, config.positive_class.as_deref())?;
            let what = || format!("label column '{label}'");
            if names.len() < 2 {
                return Err(Error::invalid_input(
                    what(),
                    format!("has a single class {names:?}; a classifier needs at least two"),
                ));
            }
            if task == Task::BinaryClassification && names.len() > 2 {
                return Err(Error::invalid_input(
                    what(),
                    format!(
                        "has {} classes; binary classification needs exactly two (use \
                         multi-class classification)",
                        names.len()
                    ),
                ));
            }
            Ok(Labels::Classes { ids, names })
        }
    }
}

/// A seeded split into (train, validation) row indices, stratified by class.
fn split(
    n: usize,
    classes: Option<(&[usize], usize)>,
    fraction: f64,
    seed: u64,
) -> (Vec<u32>, Vec<u32>) {
    let mut rng = SplitMix64::fork(seed, 1);
    let groups: Vec<Vec<u32>> = match classes {
        Some((ids, k)) => {
            let mut g = vec![Vec::new(); k];
            for (row, &c) in ids.iter().enumerate() {
                g[c].push(row as u32);
            }
            g
        }
        None => vec![(0..n as u32).collect()],
    };
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for mut g in groups {
        rng.shuffle(&mut g);
        let mut n_valid = (g.len() as f64 * fraction).round() as usize;
        if g.len() >= 2 {
            n_valid = n_valid.clamp(1, g.len() - 1);
        } else {
            n_valid = 0;
        }
        valid.extend_from_slice(&g[..n_valid]);
        train.extend_from_slice(&g[n_valid..]);
    }
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}

/// Scores of an encoded matrix through `net` on `device`, in chunks: per row one
/// probability (binary), `k` (multi-class) or the standardized value (regression).
pub(crate) fn score_net(
    net: &Net,
    task: Task,
    rows: usize,
    width: usize,
    matrix: &[f32],
    device: &Device,
) -> Result<Vec<f32>> {
    const CHUNK: usize = 65_536;
    let mut out = Vec::new();
    for start in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - start);
        let x = Tensor::<2>::from_data(
            TensorData::new(
                matrix[start * width..(start + n) * width].to_vec(),
                [n, width],
            ),
            device,
        );
        let z = net.forward(x, None);
        let z = match task {
            Task::BinaryClassification => activation::sigmoid(z),
            Task::MulticlassClassification => activation::softmax(z, 1),
            Task::Regression => z,
        };
        out.extend(read_f32(z)?);
    }
    Ok(out)
}

/// The drift reference profile of `columns` (all when `None`) of `batch`.
fn reference_of(
    batch: &RecordBatch,
    columns: Option<Vec<String>>,
    seed: u64,
) -> Result<mlops_core::drift::TableReference> {
    let config = TableDriftConfig {
        columns,
        seed,
        ..TableDriftConfig::default()
    };
    Ok(TableDriftDetector::fit(batch, &config)?.reference().clone())
}

/// Metrics of scores against labels.
fn report(
    task: Task,
    labels: &Labels,
    rows: &[u32],
    scores: &[f32],
    scale: Option<(f64, f64)>,
) -> Result<EvaluationReport> {
    let metrics = match labels {
        Labels::Classes { ids, names } => {
            let y: Vec<usize> = rows.iter().map(|&r| ids[r as usize]).collect();
            let p: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
            metrics::classification_report(&y, &p, names.len())?
        }
        Labels::Values(values) => {
            let y: Vec<f64> = rows.iter().map(|&r| values[r as usize]).collect();
            let (mean, std) = scale.unwrap_or((0.0, 1.0));
            let p: Vec<f64> = scores.iter().map(|&s| f64::from(s) * std + mean).collect();
            metrics::regression_report(&y, &p)?
        }
    };
    Ok(EvaluationReport {
        task,
        rows: rows.len(),
        metrics,
    })
}

/// The regression target's training mean and standard deviation (the network
/// learns the standardized target); `None` for classification.
fn target_scale(labels: &Labels, train_rows: &[u32]) -> Option<(f64, f64)> {
    let Labels::Values(v) = labels else {
        return None;
    };
    let n = train_rows.len() as f64;
    let mean = train_rows.iter().map(|&r| v[r as usize]).sum::<f64>() / n;
    let var = train_rows
        .iter()
        .map(|&r| (v[r as usize] - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    Some((mean, if std > 1e-12 { std } else { 1.0 }))
}

/// The loss weight of each class (empty for regression).
fn class_weights(labels: &Labels, weights: &ClassWeights, train_rows: &[u32]) -> Result<Vec<f64>> {
    Ok(match (labels, weights) {
        (Labels::Classes { ids, names }, ClassWeights::Balanced) => {
            let mut counts = vec![0usize; names.len()];
            for &r in train_rows {
                counts[ids[r as usize]] += 1;
            }
            counts
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        train_rows.len() as f64 / (names.len() * c) as f64
                    }
                })
                .collect()
        }
        (Labels::Classes { names, .. }, ClassWeights::Custom(w)) => {
            if let Some(unknown) = w.keys().find(|k| !names.contains(k)) {
                return Err(Error::invalid_input(
                    "class_weights",
                    format!("{unknown:?} is not a class; the classes are {names:?}"),
                ));
            }
            names
                .iter()
                .map(|n| w.get(n).copied().unwrap_or(1.0))
                .collect()
        }
        (Labels::Classes { names, .. }, ClassWeights::None) => vec![1.0; names.len()],
        (Labels::Values(_), _) => Vec::new(),
    })
}

/// Adam or AdamW with the configured weight decay (epsilon 1e-8, as PyTorch).
fn optimizer(cfg: &TrainConfig) -> burn::optim::ModuleOptimizer {
    match cfg.optimizer {
        OptimizerKind::AdamW => AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(cfg.weight_decay as f32)
            .init(),
        OptimizerKind::Adam => AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(
                (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)),
            )
            .init(),
    }
}

/// A progress bar on a terminal, a hidden one otherwise.
fn progress_bar(mode: Progress, total_steps: usize) -> indicatif::ProgressBar {
    if mode == Progress::Auto && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total_steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps {msg} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// The task's loss over one mini-batch of outputs `z`: class-weighted binary or
/// multi-class cross-entropy (divided by the weights' sum, as PyTorch), or the
/// mean squared error of the standardized target.
fn batch_loss(
    task: Task,
    labels: &Labels,
    chunk: &[u32],
    class_weight: &[f64],
    target_scale: Option<(f64, f64)>,
    z: Tensor<2>,
    device: &Device,
) -> Tensor<1> {
    let b = chunk.len();
    match labels {
        Labels::Classes { ids, .. } if task == Task::BinaryClassification => {
            let (mut y, mut w) = (Vec::with_capacity(b), Vec::with_capacity(b));
            for &r in chunk {
                let c = ids[r as usize];
                y.push(c as f32);
                w.push(class_weight[c] as f32);
            }
            let w_sum: f32 = w.iter().sum();
            let y = Tensor::<2>::from_data(TensorData::new(y, [b, 1]), device);
            let w = Tensor::<2>::from_data(TensorData::new(w, [b, 1]), device);
            let pos = activation::log_sigmoid(z.clone());
            let neg = activation::log_sigmoid(z.neg());
            let nll = (y.clone() * pos + (y.neg().add_scalar(1.0)) * neg).neg();
            (nll * w).sum().div_scalar(w_sum.max(f32::MIN_POSITIVE))
        }
        Labels::Classes { ids, names } => {
            let k = names.len();
            let mut yw = vec![0.0f32; b * k];
            let mut w_sum = 0.0f32;
            for (i, &r) in chunk.iter().enumerate() {
                let c = ids[r as usize];
                yw[i * k + c] = class_weight[c] as f32;
                w_sum += class_weight[c] as f32;
            }
            let yw = Tensor::<2>::from_data(TensorData::new(yw, [b, k]), device);
            (activation::log_softmax(z, 1) * yw)
                .sum()
                .neg()
                .div_scalar(w_sum.max(f32::MIN_POSITIVE))
        }
        Labels::Values(v) => {
            let (mean, std) = target_scale.unwrap_or((0.0, 1.0));
            let y: Vec<f32> = chunk
                .iter()
                .map(|&r| ((v[r as usize] - mean) / std) as f32)
                .collect();
            let y = Tensor::<2>::from_data(TensorData::new(y, [b, 1]), device);
            let d = z - y;
            (d.clone() * d).mean()
        }
    }
}

/// Gathers rows of a row-major matrix.
fn gather(matrix: &[f32], width: usize, rows: &[u32], out: &mut Vec<f32>) {
    out.clear();
    for &r in rows {
        let r = r as usize;
        out.extend_from_slice(&matrix[r * width..(r + 1) * width]);
    }
}

impl TabularTrainer {
    /// A trainer with `config`.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            observer: None,
        }
    }

    /// Sends each epoch's metrics to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn EpochObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn feature_names(&self, data: &RecordBatch, label: &str) -> Result<Vec<String>> {
        column(data, label)?;
        let names: Vec<String> = match &self.config.features {
            Some(f) => f.clone(),
            None => data
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| n != label && !self.config.exclude.contains(n))
                .collect(),
        };
        if names.iter().any(|n| n == label) {
            return Err(Error::invalid_input(
                "features",
                format!("the label column '{label}' cannot also be a feature"),
            ));
        }
        Ok(names)
    }

    /// Trains and returns the model with its per-epoch history.
    pub fn fit_detailed(&self, data: &RecordBatch, label: &str) -> Result<TrainOutcome> {
        let cfg = &self.config;
        cfg.validate()?;
        let features = self.feature_names(data, label)?;
        if data.num_rows() < 2 {
            return Err(Error::invalid_input(
                "training data",
                format!(
                    "has {} rows; need at least 2 (a training and a validation row)",
                    data.num_rows()
                ),
            ));
        }
        let labels = read_labels(cfg, data, label)?;
        let class_info = match &labels {
            Labels::Classes { ids, names } => Some((ids.as_slice(), names.len())),
            Labels::Values(_) => None,
        };
        let (train_rows, valid_rows) = split(
            data.num_rows(),
            class_info,
            cfg.validation_fraction,
            cfg.seed,
        );
        if train_rows.is_empty() || valid_rows.is_empty() {
            return Err(Error::invalid_input(
                "training data",
                "too few rows to hold out a validation split",
            ));
        }
        let features_only = data
            .project(
                &features
                    .iter()
                    .map(|f| data.schema_ref().index_of(f))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Error::schema_mismatch(
                            "training data",
                            label,
                            "feature columns",
                            e.to_string(),
                        )
                    })?,
            )
            .map_err(|e| Error::backend("arrow", e))?;
        let train_batch = take_record_batch(&features_only, &UInt32Array::from(train_rows.clone()))
            .map_err(|e| Error::backend("arrow", e))?;
        let prep = Preprocessor::fit(&train_batch, &features, &cfg.prep)?;
        let width = prep.width();
        let all = prep.transform(&features_only)?;

        // Targets and per-row loss weights.
        let (names, outputs) = match &labels {
            Labels::Classes { names, .. } if cfg.task == Task::MulticlassClassification => {
                (names.clone(), names.len())
            }
            Labels::Classes { names, .. } => (names.clone(), 1),
            Labels::Values(_) => (Vec::new(), 1),
        };
        let target_scale = target_scale(&labels, &train_rows);
        let class_weight = class_weights(&labels, &cfg.class_weights, &train_rows)?;

        let device = cfg.device.open()?;
        let eval_device = device.clone().without_autodiff();
        let mut init_rng = SplitMix64::fork(cfg.seed, 2);
        let mut net = Net::init(&cfg.model, width, outputs, &mut init_rng, &device);
        let mut optim = optimizer(cfg);

        let steps_per_epoch = train_rows.len().div_ceil(cfg.batch_size);
        let total_steps = steps_per_epoch * cfg.epochs;
        let progress = progress_bar(cfg.progress, total_steps);

        let monitor = cfg.early_stopping.as_ref().map(|es| {
            let higher = metrics::higher_is_better(&es.metric).unwrap_or(false);
            (es, higher)
        });
        let mut shuffle_rng = SplitMix64::fork(cfg.seed, 3);
        let mut dropout_rng = SplitMix64::fork(cfg.seed, 4);
        let mut order = train_rows.clone();
        let valid_matrix = {
            let mut m = Vec::new();
            gather(&all, width, &valid_rows, &mut m);
            m
        };
        let mut history = Vec::new();
        let mut best: Option<(f64, usize, Net)> = None;
        let mut since_best = 0;
        let mut xb = Vec::with_capacity(cfg.batch_size * width);
        let mut step = 0;
        for epoch in 1..=cfg.epochs {
            progress.set_prefix(epoch.to_string());
            shuffle_rng.shuffle(&mut order);
            let started = Instant::now();
            let (mut loss_sum, mut batches) = (0.0f64, 0usize);
            let mut lr = cfg.learning_rate;
            for chunk in order.chunks(cfg.batch_size) {
                lr = cfg
                    .schedule
                    .rate(cfg.learning_rate, epoch - 1, step, total_steps);
                step += 1;
                let b = chunk.len();
                gather(&all, width, chunk, &mut xb);
                let x = Tensor::<2>::from_data(TensorData::new(xb.clone(), [b, width]), &device);
                let z = net.forward(x, Some(&mut dropout_rng));
                let loss = batch_loss(
                    cfg.task,
                    &labels,
                    chunk,
                    &class_weight,
                    target_scale,
                    z,
                    &device,
                );
                let loss_value = read_f32(loss.clone())?.first().copied().unwrap_or(f32::NAN);
                if !loss_value.is_finite() {
                    return Err(Error::invalid_input(
                        "training",
                        format!(
                            "the loss became {loss_value} in epoch {epoch}; lower the learning rate \
                             (now {lr})"
                        ),
                    ));
                }
                loss_sum += f64::from(loss_value);
                batches += 1;
                let grads = GradientsParams::from_grads(loss.backward(), &net.layers);
                let layers = optim.step(lr, net.layers.clone(), grads);
                net = net.with_layers(layers);
                progress.inc(1);
            }
            let elapsed = started.elapsed().max(Duration::from_nanos(1));
            let eval_net = net.with_layers(burn::module::Module::valid(&net.layers));
            let scores = score_net(
                &eval_net,
                cfg.task,
                valid_rows.len(),
                width,
                &valid_matrix,
                &eval_device,
            )?;
            let valid = report(cfg.task, &labels, &valid_rows, &scores, target_scale)?.metrics;
            let record = EpochRecord {
                epoch,
                train_loss: loss_sum / batches.max(1) as f64,
                valid,
                learning_rate: lr,
                rows_per_second: train_rows.len() as f64 / elapsed.as_secs_f64(),
            };
            progress.set_message(format!("loss {:.4}", record.train_loss));
            if let Some(o) = &self.observer {
                o.on_epoch(&record);
            }
            let mut stop = false;
            match monitor {
                Some((es, higher)) => {
                    let value = record.valid.get(&es.metric).copied().ok_or_else(|| {
                        Error::invalid_input(
                            "early_stopping.metric",
                            format!(
                                "{:?} could not be computed on the validation split",
                                es.metric
                            ),
                        )
                    })?;
                    let improved = match &best {
                        None => true,
                        Some((b, _, _)) if higher => value > b + es.min_delta,
                        Some((b, _, _)) => value < b - es.min_delta,
                    };
                    if improved {
                        best = Some((value, epoch, eval_net));
                        since_best = 0;
                    } else {
                        since_best += 1;
                        stop = since_best > es.patience;
                    }
                }
                None => best = Some((0.0, epoch, eval_net)),
            }
            history.push(record);
            if stop {
                break;
            }
        }
        progress.finish_and_clear();
        let (_, best_epoch, final_net) =
            best.ok_or_else(|| Error::invalid_input("training", "no epoch ran"))?;

        let scores = score_net(
            &final_net,
            cfg.task,
            valid_rows.len(),
            width,
            &valid_matrix,
            &eval_device,
        )?;
        let evaluation = report(cfg.task, &labels, &valid_rows, &scores, target_scale)?;
        let drift_reference = if cfg.drift_reference {
            Some(reference_of(
                &train_batch,
                Some(features.clone()),
                cfg.seed,
            )?)
        } else {
            None
        };
        let signature = ModelCard::signature_for(cfg.task, names.len(), &prep);
        let prediction_reference = match (cfg.drift_reference, cfg.task, signature.outputs.first())
        {
            (true, Task::BinaryClassification | Task::Regression, Some(output)) => {
                let (mean, std) = target_scale.unwrap_or((0.0, 1.0));
                let values: Vec<f64> = scores.iter().map(|&s| f64::from(s) * std + mean).collect();
                let batch = RecordBatch::try_from_iter([(
                    output.name.clone(),
                    std::sync::Arc::new(arrow_array::Float64Array::from(values))
                        as arrow_array::ArrayRef,
                )])
                .map_err(|e| Error::backend("arrow", e))?;
                Some(reference_of(&batch, None, cfg.seed)?)
            }
            _ => None,
        };
        let card = ModelCard {
            task: cfg.task,
            label: label.to_owned(),
            classes: names,
            target_scale,
            spec: cfg.model.clone(),
            features: prep.features().to_vec(),
            signature: signature.clone(),
            drift_reference,
            prediction_reference,
        };
        let model = Arc::new(TabularModel::new(card, final_net, eval_device)?);
        let artifact = model.to_artifact()?;
        let mut params = cfg.params();
        params.insert("best_epoch".into(), best_epoch.to_string());
        params.insert("features".into(), features.join(","));
        let metadata = ModelMetadata {
            description: format!("{} on {} rows", cfg.model.describe(), train_rows.len()),
            params,
            metrics: evaluation.metrics.clone(),
            signature: Some(signature),
            ..ModelMetadata::default()
        };
        let trained = TrainedModel {
            predictor: model.clone(),
            artifact,
            metadata,
            report: evaluation,
        };
        Ok(TrainOutcome {
            model,
            trained,
            history,
            best_epoch,
        })
    }
}

impl Trainer for TabularTrainer {
    fn task(&self) -> Task {
        self.config.task
    }

    fn fit(&self, data: &RecordBatch, label: &str) -> Result<TrainedModel> {
        Ok(self.fit_detailed(data, label)?.trained)
    }

    /// Evaluates any predictor of this task on `data`: inputs are taken from the
    /// columns its signature names. Classes are numbered as in training: sorted,
    /// with the configured positive class last.
    fn evaluate(
        &self,
        predictor: &dyn Predictor,
        data: &RecordBatch,
        label: &str,
    ) -> Result<EvaluationReport> {
        let labels = match self.config.task {
            Task::Regression => read_labels(&self.config, data, label)?,
            Task::BinaryClassification => {
                let (ids, names) = read_classes(data, label, None)?;
                // The evaluation data may hold one class only: name the positive one
                // as training did rather than by position.
                let positive = self
                    .config
                    .positive_class
                    .clone()
                    .or_else(|| {
                        ["true", "1"]
                            .into_iter()
                            .find(|p| names.iter().any(|n| n == p))
                            .map(str::to_owned)
                    })
                    .or_else(|| names.last().cloned())
                    .unwrap_or_default();
                let ids = ids
                    .iter()
                    .map(|&i| usize::from(names[i] == positive))
                    .collect();
                Labels::Classes {
                    ids,
                    names: vec![String::new(), positive],
                }
            }
            Task::MulticlassClassification => {
                let (ids, names) = read_classes(data, label, None)?;
                Labels::Classes { ids, names }
            }
        };
        let inputs = tensors_from_batch(&predictor.signature().inputs, data)?;
        let outputs = predictor.predict(&inputs)?;
        let first = outputs
            .first()
            .ok_or_else(|| Error::invalid_input("predictor", "returned no outputs"))?;
        let scores = first.data.to_f32_vec()?;
        if let Labels::Classes { names, .. } = &labels {
            let per_row = if self.config.task == Task::BinaryClassification {
                1
            } else {
                names.len()
            };
            if scores.len() != data.num_rows() * per_row {
                return Err(Error::invalid_input(
                    format!("label column '{label}'"),
                    format!(
                        "has {} classes but the model scores {} per row",
                        names.len(),
                        scores.len() / data.num_rows().max(1)
                    ),
                ));
            }
        }
        let rows: Vec<u32> = (0..data.num_rows() as u32).collect();
        report(self.config.task, &labels, &rows, &scores, None)
    }
}
