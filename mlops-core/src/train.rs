//! Training: the [`Trainer`] trait and what it produces.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{ModelArtifact, ModelMetadata};
use crate::predict::Predictor;

/// What a model learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Two classes; the model outputs the probability of the positive one.
    BinaryClassification,
    /// Several classes; the model outputs one probability per class.
    MulticlassClassification,
    /// A real number.
    Regression,
}

/// Metrics of a model on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// The task evaluated.
    pub task: Task,
    /// Rows evaluated.
    pub rows: usize,
    /// Metric name to value, e.g. `roc_auc`, `log_loss`, `rmse`.
    pub metrics: BTreeMap<String, f64>,
}

/// What a training run produces.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// The model, ready to answer.
    pub predictor: Arc<dyn Predictor>,
    /// The model serialized for the registry (weights, preprocessing, signature).
    pub artifact: ModelArtifact,
    /// Params, validation metrics and signature to register with the artifact.
    pub metadata: ModelMetadata,
    /// Evaluation on the validation split.
    pub report: EvaluationReport,
}

/// Fits models on Arrow data.
///
/// Contract for implementations:
/// - `fit` reads feature columns and the `label` column of `data`; a missing or
///   mistyped column gives [`Error::SchemaMismatch`](crate::Error::SchemaMismatch),
///   unusable data (no rows, a single class, non-finite values) gives
///   [`Error::InvalidInput`](crate::Error::InvalidInput);
/// - for a given configuration and seed, results are deterministic on CPU;
/// - the returned artifact, loaded by the matching
///   [`ModelLoader`](crate::ModelLoader), answers exactly as the returned predictor;
/// - `evaluate` computes the same metrics as the report of `fit`, on any data with
///   the same columns, for any predictor of the same task.
///
/// CPU-bound: async callers run it on a blocking pool.
pub trait Trainer: Send + Sync + Debug {
    /// The task this trainer fits.
    fn task(&self) -> Task;

    /// Trains a model to predict `label` from the other columns of `data`.
    fn fit(&self, data: &RecordBatch, label: &str) -> Result<TrainedModel>;

    /// Evaluates `predictor` on `data` against its `label` column.
    fn evaluate(
        &self,
        predictor: &dyn Predictor,
        data: &RecordBatch,
        label: &str,
    ) -> Result<EvaluationReport>;
}
