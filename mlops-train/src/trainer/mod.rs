//! [`TabularTrainer`]: the [`Trainer`] of linear models and MLPs on Arrow data.

mod config;
mod data;
mod fit;
mod split;

pub use config::{
    ClassWeights, EarlyStopping, EpochObserver, EpochRecord, LrSchedule, OptimizerKind, Progress,
    TrainConfig,
};
use data::{Labels, read_classes, read_labels};
use fit::report;

use std::sync::Arc;

use arrow_array::RecordBatch;
use mlops_core::inference::tensors_from_batch;
use mlops_core::{Error, EvaluationReport, Predictor, Result, Task, TrainedModel, Trainer};

use crate::model::TabularModel;
use crate::prep::column;

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
