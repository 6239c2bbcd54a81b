//! # mlops-core
//!
//! The traits, shared types and errors of the mlops SDK. Every other crate of the
//! workspace implements these traits and depends on nothing else of ours, so any
//! implementation can be swapped for your own.
//!
//! | Trait | What it does | Sync or async |
//! |---|---|---|
//! | [`FeatureStore`] = [`FeatureDefinitions`] + [`OfflineFeatureStore`] + [`OnlineFeatureStore`] | feature definitions; ingestion and point-in-time joins; online lookup | async |
//! | [`ModelRegistry`] | versioned, content-addressed model artifacts and aliases | async |
//! | [`ExperimentTracker`] | runs with params, metrics and artifacts | async |
//! | [`AuditLog`] | append-only, hash-chained record of every change | async |
//! | [`Trainer`] | fits a model on an Arrow batch | sync (CPU-bound) |
//! | [`Predictor`] / [`ModelLoader`] | a loaded model; artifact to model | sync (CPU-bound) |
//! | [`Server`] | Open Inference Protocol: infer, metadata, health | async |
//! | [`DriftDetector`] | reference vs current data, per feature and overall | sync (CPU-bound) |
//!
//! The async traits are object-safe, so applications hold them as
//! `Arc<dyn FeatureStore>` and so on. Arrow [`RecordBatch`](arrow_array::RecordBatch)
//! is the currency for tabular data; [`inference::Tensor`] (convertible to dense
//! `ndarray` `f32` arrays) for model inputs and outputs.
//!
//! Every fallible operation returns [`Error`], whose variants say what went wrong and
//! whose messages name what was wrong.
//!
//! ```
//! use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
//! use mlops_core::model::Signature;
//!
//! let signature = Signature {
//!     inputs: vec![TensorSpec::new("features", Datatype::Fp32, vec![-1, 3])],
//!     outputs: vec![TensorSpec::new("score", Datatype::Fp32, vec![-1, 1])],
//!     matrix_input: None,
//! };
//! let features = Tensor::new("features", vec![1, 3], TensorData::Fp32(vec![0.5, 1.5, 2.5]))?;
//! let request = InferenceRequest::new(vec![features]);
//! signature.check_inputs(&request.inputs)?;
//!
//! let narrow = Tensor::new("features", vec![1, 2], TensorData::Fp32(vec![0.5, 1.5]))?;
//! assert!(signature.check_inputs(&[narrow]).is_err());
//! # Ok::<(), mlops_core::Error>(())
//! ```
//!
//! Two modules are small building blocks committed to as API: [`exec`] runs
//! CPU-bound work off an async runtime, and [`rng`] is the seeded generator whose
//! streams never change between releases (training splits, drift subsampling and
//! traffic splitting draw from it, so a changed stream would be a breaking change).
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod access;
pub mod audit;
pub mod drift;
pub mod error;
pub mod exec;
pub mod experiment;
pub mod feature;
pub mod fleet;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod monitoring;
pub mod predict;
pub mod retrain;
pub mod rng;
pub mod server;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tracking;
pub mod train;

pub use audit::{AuditEntry, AuditEvent, AuditLog, ChainVerdict};
pub use drift::{DriftDetector, DriftMethod, DriftReport, FeatureDrift};
pub use error::{BoxError, Error, ResourceKind, Result};
pub use feature::{
    Entity, FeatureDefinitions, FeatureRef, FeatureStore, FeatureView, OfflineFeatureStore,
    OnlineFeatureStore,
};
pub use inference::{
    Datatype, InferenceRequest, InferenceResponse, Tensor, TensorData, TensorSpec,
};
pub use model::{
    CheckedInputs, ContentDigest, Lineage, ModelArtifact, ModelMetadata, ModelRegistry,
    ModelVersion, Signature, VersionSelector,
};
pub use predict::{ModelLoader, Predictor};
pub use server::Server;
pub use tracking::{ExperimentTracker, MetricPoint, Run, RunStatus};
pub use train::{EvaluationReport, Task, TrainedModel, Trainer};

/// The longest name accepted for a view, feature, model, alias, experiment or column.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a name that may end up in a storage path or a URL: 1 to [`MAX_NAME_LEN`]
/// characters from `A-Z a-z 0-9 _ - .`, not starting with `.` or `-`.
///
/// ```
/// use mlops_core::{validate_name, ResourceKind};
/// assert!(validate_name(ResourceKind::Model, "fraud-detector.v2").is_ok());
/// assert!(validate_name(ResourceKind::Model, "../etc").is_err());
/// assert!(validate_name(ResourceKind::Model, "").is_err());
/// ```
pub fn validate_name(kind: ResourceKind, name: &str) -> Result<()> {
    let bad = |reason: String| Error::invalid_input(format!("{kind} name {name:?}"), reason);
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "it is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(bad("it may not start with '.' or '-'".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(bad(format!(
            "character {c:?} is not allowed; use A-Z a-z 0-9 _ - ."
        )));
    }
    Ok(())
}
