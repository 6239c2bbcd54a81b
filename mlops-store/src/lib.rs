//! # mlops-store
//!
//! Persistent parts of the mlops SDK, all on [`object_store`] with Arrow and
//! Parquet, so the same code runs on a local directory, in memory, or on a bucket
//! shared by many machines (S3, GCS, Azure behind the `aws`, `gcp` and `azure` cargo
//! features).
//!
//! Everything lives under one [`StoreRoot`], opened from a URL:
//!
//! ```
//! # async fn demo() -> mlops_core::Result<()> {
//! use mlops_store::StoreRoot;
//!
//! let dir = std::env::temp_dir().join("mlops-doc-root");
//! let root = StoreRoot::open(&format!("file://{}", dir.display()))?;
//! root.put("hello.txt", "hi".into()).await?;
//! assert_eq!(&root.get("hello.txt").await?[..], b"hi");
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! | URL | Backend | Cargo feature |
//! |---|---|---|
//! | `file:///abs/dir` or a plain path | local disk (directory created if absent) | always |
//! | `memory://` | in memory, private to the `StoreRoot` | always |
//! | `s3://bucket/prefix` | Amazon S3 and S3-compatible servers | `aws` |
//! | `gs://bucket/prefix` | Google Cloud Storage | `gcp` |
//! | `az://container/prefix` | Azure Blob Storage | `azure` |
//!
//! On this root: the model registry ([`ObjectRegistry`]) and the audit log
//! ([`ObjectAuditLog`]); planned (see the README's feature table): the feature
//! store, experiment tracking and dataset snapshots. [`FaultyStore`] wraps any store
//! to inject failures in tests.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod audit;
mod audit_anchor;
mod cas;
mod error;
mod fault;
mod feature_store;
mod fleet;
mod inference_log;
mod labels;
mod lineage;
mod loops;
mod offline;
mod online;
mod registry;
mod retry;
mod root;
mod score;
mod snapshot;
mod tracking;

pub use audit::{MAX_AUDIT_DETAILS_BYTES, MAX_AUDIT_FIELD_BYTES, ObjectAuditLog};
pub use audit_anchor::{AnchoredVerdict, AuditAnchor};
pub use error::storage_error;
pub use fault::FaultyStore;
pub use feature_store::ObjectFeatureStore;
pub use fleet::ObjectFleet;
pub use inference_log::ObjectInferenceLog;
pub use labels::ViewLabels;
pub use lineage::{AliasMove, FeatureOrigin, ServedBy, VersionLineage, version_lineage};
pub use loops::ObjectLoopStates;
pub use offline::{ObjectOfflineStore, view_incompatibility};
#[cfg(feature = "redis")]
pub use online::RedisOnlineStore;
pub use online::{InMemoryOnlineStore, OnlineRead, OnlineRow, OnlineStore, open_online_store};
pub use registry::{DEFAULT_MAX_METADATA_BYTES, ObjectRegistry, RegistryOptions};
pub use retry::RetryPolicy;
pub use root::{DEFAULT_MULTIPART_THRESHOLD, StoreRoot};
pub use score::{
    DEFAULT_SCORE_BATCH_ROWS, DEFAULT_SCORE_PART_ROWS, ScoreJob, ScoreManifest, ScoreProgress,
    ScoreRecorders, ScoreSource, score_dataset,
};
pub use snapshot::{DatasetSnapshot, ObjectSnapshotStore, SnapshotFile};
pub use tracking::{MAX_POINTS_PER_CALL, MAX_VALUE_BYTES, ObjectTracker};
