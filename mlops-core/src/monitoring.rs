//! What live serving reports and accepts, as traits the retraining loop is
//! written against: the health of a deployment (drift and live quality per
//! version), control of its traffic, a sink for the inference log, and a source
//! of labelled rows.
//!
//! `mlops-serve`'s `ModelServer` implements [`TrafficControl`]; `mlops-store`
//! implements [`InferenceLogSink`] as Parquet files on a storage root.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::experiment::ArmStats;

/// Live quality of one version: metrics over its most recent labelled
/// predictions, the per-prediction loss and the business metrics the
/// application fed back, since it was first served and over recent windows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LiveQuality {
    /// Labelled predictions in the window.
    pub rows: usize,
    /// Metric name to value (`roc_auc`, `accuracy`, `log_loss`, `rmse`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// The loss of every labelled prediction since the version was first
    /// served (classification: the Brier score `(p - y)^2`; regression: the
    /// absolute error): what a sequential test compares between arms.
    #[serde(default)]
    pub loss: ArmStats,
    /// Business metrics the application fed back (a conversion, an order
    /// value), by name, since the version was first served.
    #[serde(default)]
    pub business: BTreeMap<String, ArmStats>,
    /// The same over recent windows: window (`1h`, `24h`, `7d`, each the
    /// latest 10-minute buckets covering it) to metric (`loss`, or a business
    /// metric's name) to its statistics.
    #[serde(default)]
    pub windows: BTreeMap<String, BTreeMap<String, ArmStats>>,
}

/// The latest drift verdict of one version's served inputs or predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSummary {
    /// Whether the last compared window drifted.
    pub drifted: bool,
    /// Share of features that drifted in it.
    pub share_drifted: f64,
    /// Names of the drifted features.
    pub drifted_features: Vec<String>,
    /// Rows in the window.
    pub rows: usize,
    /// When the window was compared.
    pub at: DateTime<Utc>,
    /// Windows compared so far.
    pub windows: u64,
    /// Windows that drifted so far.
    pub drifted_windows: u64,
}

/// One served version's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VersionHealth {
    /// Its share of traffic in the current routing (0 for a shadow).
    pub traffic_share: f64,
    /// Drift of served inputs against the training reference.
    pub input_drift: Option<DriftSummary>,
    /// Drift of served predictions against the validation reference.
    pub prediction_drift: Option<DriftSummary>,
    /// Quality over recent feedback.
    pub live: LiveQuality,
}

/// A deployment's state: its versions, and which one is the champion (the
/// stable one of a canary, the heaviest arm otherwise).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelHealth {
    /// The version most traffic goes to.
    pub champion: Option<u64>,
    /// The canary, while one runs.
    pub canary: Option<u64>,
    /// Every served version.
    pub versions: BTreeMap<u64, VersionHealth>,
}

/// Reads a deployment's health and moves its traffic.
///
/// Contract for implementations: an unknown deployment or version gives
/// [`Error::NotFound`](crate::Error::NotFound); traffic changes are atomic (a
/// request is served entirely by the old or the new routing).
#[async_trait]
pub trait TrafficControl: Send + Sync + std::fmt::Debug {
    /// The deployment's current health.
    async fn health(&self, deployment: &str) -> Result<ModelHealth>;

    /// Sends `weight` (0..=1) of traffic to `canary`, the rest to `stable`,
    /// loading versions as needed.
    async fn start_canary(
        &self,
        deployment: &str,
        stable: u64,
        canary: u64,
        weight: f64,
    ) -> Result<()>;

    /// Changes the running canary's weight.
    async fn set_canary_weight(&self, deployment: &str, weight: f64) -> Result<()>;

    /// Sends all traffic to `version`.
    async fn route_all(&self, deployment: &str, version: u64) -> Result<()>;
}

/// Where the server's inference log goes: batches of records, written in the
/// background.
///
/// The record schema: `request_id` (Utf8, nullable), `time` (Timestamp µs UTC),
/// `model` (Utf8), `version` (UInt64), `inputs` and `outputs` (Utf8, the tensors as
/// v2 JSON), `latency_us` (UInt64).
#[async_trait]
pub trait InferenceLogSink: Send + Sync + std::fmt::Debug {
    /// Stores one batch of records durably.
    async fn write(&self, records: RecordBatch) -> Result<()>;
}

/// Labelled rows for retraining: entity keys, an `event_timestamp` column and the
/// label column, e.g. transactions joined with their chargebacks.
#[async_trait]
pub trait LabelSource: Send + Sync + std::fmt::Debug {
    /// Rows labelled with event time in `[since, until)`.
    async fn labelled_rows(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RecordBatch>;
}

/// Immutable snapshots of datasets, so a model's lineage names the exact data it
/// was trained on (`mlops-store`'s `ObjectSnapshotStore` implements it).
#[async_trait]
pub trait DatasetSnapshots: Send + Sync + std::fmt::Debug {
    /// Stores `batches` immutably; returns the snapshot's id, which depends only on
    /// the data (the same rows give the same id, other rows another). No batches
    /// at all is [`Error::InvalidInput`](crate::Error::InvalidInput).
    async fn snapshot(&self, batches: &[RecordBatch], description: &str) -> Result<String>;
}
