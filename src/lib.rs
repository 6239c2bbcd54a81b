//! # mlops
//!
//! An embeddable Rust SDK for the whole machine-learning lifecycle: features in, a
//! trained model out, the model served, its inputs watched for drift, and the loop
//! closed by retraining. This package is a facade: it re-exports the workspace's
//! crates and a [`prelude`], and contains no logic of its own.
//!
//! | Module | Crate | What |
//! |---|---|---|
//! | [`core`] | `mlops-core` | traits, shared types, errors, drift detection |
//! | [`store`] | `mlops-store` | offline feature store, model registry, experiment tracking, dataset snapshots and audit log on object_store |
//! | [`train`] | `mlops-train` | tabular training on burn: preprocessing, linear and MLP models, metrics, artifacts, model search |
//! | [`serve`] | `mlops-serve` | the model server (routing, batching, caching, reload) and its Open Inference Protocol HTTP face and client |
//!
//! ## Cargo features
//!
//! | Feature | Enables |
//! |---|---|
//! | `wgpu` | GPU training through burn's wgpu backend |
//! | `cuda` | GPU training through burn's CUDA backend |
//! | `aws` | `s3://` storage roots |
//! | `gcp` | `gs://` storage roots |
//! | `azure` | `az://` storage roots |
//! | `redis` | the Redis online store |
//!
//! ```
//! use mlops::prelude::*;
//!
//! let r: FeatureRef = "customer_stats:amount_avg_7d".parse()?;
//! assert_eq!(r.view(), "customer_stats");
//! # Ok::<(), mlops::core::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub use mlops_core as core;
/// Models from other frameworks: the ONNX loader (feature `onnx`).
#[cfg(feature = "onnx")]
pub use mlops_onnx as onnx;
pub use mlops_serve as serve;
pub use mlops_store as store;
pub use mlops_train as train;

/// The Arrow crates at the versions the SDK's traits use, so implementing one
/// (a [`LabelSource`](mlops_core::monitoring::LabelSource), a
/// [`FeatureStore`](mlops_core::FeatureStore)) needs no direct dependency at a
/// matching version.
pub mod arrow {
    pub use arrow_array as array;
    pub use arrow_array::RecordBatch;
    pub use arrow_schema as schema;
}

/// `chrono`, at the version of the SDK's timestamps.
pub use chrono;

/// The attribute the SDK's async traits are written with: put `#[mlops::async_trait]`
/// on an `impl` of one.
pub use async_trait::async_trait;

/// The names most programs need, in one import.
pub mod prelude {
    pub use mlops_core::audit::{AuditEntry, AuditEvent, AuditLog, ChainVerdict};
    pub use mlops_core::drift::{DriftDetector, DriftMethod, DriftReport};
    pub use mlops_core::exec::{BlockingExecutor, ThreadExecutor};
    pub use mlops_core::feature::{
        Entity, FeatureDefinitions, FeatureRef, FeatureStore, FeatureView, HistoricalOptions,
        OfflineFeatureStore, OnlineFeatureStore,
    };
    pub use mlops_core::inference::{
        Datatype, InferenceRequest, InferenceResponse, Tensor, TensorData, TensorSpec,
    };
    pub use mlops_core::model::{
        CheckedInputs, Lineage, ModelArtifact, ModelMetadata, ModelRegistry, ModelVersion,
        Signature, VersionSelector,
    };
    pub use mlops_core::tracking::{ExperimentTracker, MetricPoint, RunStatus};
    pub use mlops_core::train::{Task, TrainedModel, Trainer};
    pub use mlops_core::{Error, ModelLoader, Predictor, Result, Server};
    pub use mlops_serve::{DeploymentConfig, ModelServer, RemoteServer, Routing};
    pub use mlops_store::{
        ObjectAuditLog, ObjectOfflineStore, ObjectRegistry, ObjectSnapshotStore, ObjectTracker,
        RegistryOptions, StoreRoot,
    };
    pub use mlops_train::{ModelSpec, TabularLoader, TabularTrainer, TrainConfig, TrainDevice};
}

/// The README's Rust snippets, compiled (and the self-contained ones run) as doc
/// tests of the facade, so the README cannot drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use mlops_store::StoreRoot;

    /// Run on its own (`cargo test -p mlops --lib`), the facade builds
    /// mlops-store with the cloud features the facade's own features turn on,
    /// and none by default: `.ci/run` runs it so, with
    /// `MLOPS_TEST_EXPECT_BACKENDS=file,memory`, to prove the refusals of a
    /// lean build. (In `cargo test --workspace` mlops-store's own tests turn
    /// every backend on, and the same rules are checked the other way round.)
    #[test]
    fn backends_left_out_of_the_build_are_named() {
        let built = StoreRoot::backends();
        if let Ok(expected) = std::env::var("MLOPS_TEST_EXPECT_BACKENDS") {
            assert_eq!(built.join(","), expected, "the backends of this build");
        }
        for (url, scheme, feature) in [
            ("s3://bucket/p", "s3", "aws"),
            ("gs://bucket/p", "gs", "gcp"),
            ("az://container/p", "az", "azure"),
        ] {
            let result = StoreRoot::open_with_options(url, Vec::new());
            let refusal = format!("the `{feature}` cargo feature");
            match result {
                Err(e) if !built.contains(&scheme) => {
                    assert!(e.to_string().contains(&refusal), "{url}: {e}");
                }
                Err(e) => assert!(!e.to_string().contains(&refusal), "{url}: {e}"),
                Ok(_) => assert!(
                    built.contains(&scheme),
                    "{url} opened in a build without it"
                ),
            }
        }
    }
}
