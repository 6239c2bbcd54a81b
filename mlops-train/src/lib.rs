//! # mlops-train
//!
//! Training for the mlops SDK on [burn](https://burn.dev): burn's pure-Rust `flex`
//! CPU backend by default, GPUs through the `wgpu` and `cuda` cargo features.
//!
//! - [`TabularTrainer`] implements [`Trainer`](mlops_core::Trainer): Arrow data with
//!   feature and label columns in, a linear model or MLP out, for binary and
//!   multi-class classification and regression ([`TrainConfig`]);
//! - [`Preprocessor`]: standardization, one-hot encoding with an unknown bucket,
//!   null indicators, fitted on the training split and saved with the model;
//! - [`TabularModel`] implements [`Predictor`](mlops_core::Predictor) on raw
//!   feature values; [`TabularLoader`] implements
//!   [`ModelLoader`](mlops_core::ModelLoader) for its artifacts;
//! - [`metrics`]: the evaluation metrics, as scikit-learn defines them;
//! - [`fit_tracked`] and [`search`]: training and model selection recorded in an
//!   [`ExperimentTracker`](mlops_core::ExperimentTracker).
//!
//! ```
//! use mlops_train::TrainDevice;
//!
//! let choice: TrainDevice = "cpu".parse()?;
//! let device = choice.open()?;               // burn's flex CPU device
//! # let _ = device;
//! assert!("tpu".parse::<TrainDevice>().is_err());
//! # Ok::<(), mlops_core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod device;
mod model;
mod net;
mod prep;
mod search;
mod trainer;

pub use device::TrainDevice;
/// Re-exported from `mlops_core::inference`: v2 input tensors from Arrow columns.
pub use mlops_core::inference::tensors_from_batch;
pub use model::{
    FLAVOR, MATRIX_INPUT, ModelCard, PARALLEL_ROWS, TabularLoader, TabularModel, outputs,
};
pub use net::{Activation, ModelSpec};
pub use prep::{Encoding, FeatureEncoding, PrepConfig, Preprocessor};
pub use search::{
    SearchBudget, SearchConfig, SearchOutcome, SearchSpace, SearchStrategy, Trial, fit_tracked,
    search,
};
pub use trainer::{
    ClassWeights, EarlyStopping, EpochObserver, EpochRecord, LrSchedule, OptimizerKind, Progress,
    TabularTrainer, TrainConfig, TrainOutcome,
};

/// Evaluation metrics (defined in `mlops_core::metrics`, shared with serving).
pub use mlops_core::metrics;

/// The burn device type, re-exported so callers need no direct burn dependency.
pub use burn::tensor::Device;
