//! Experiment tracking: runs with params, tags, metric series and artifacts.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::MetricFilter;

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not ended.
    Running,
    /// Ended normally.
    Finished,
    /// Ended with an error.
    Failed,
    /// Stopped from outside.
    Killed,
}

/// One point of a metric series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// The metric's name, e.g. `val_auc`.
    pub key: String,
    /// Its value.
    pub value: f64,
    /// The step (epoch, batch) it belongs to.
    pub step: u64,
    /// When it was recorded.
    pub timestamp: DateTime<Utc>,
}

impl MetricPoint {
    /// A point recorded now.
    pub fn now(key: impl Into<String>, value: f64, step: u64) -> Self {
        Self {
            key: key.into(),
            value,
            step,
            timestamp: Utc::now(),
        }
    }
}

/// A run as the tracker holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Unique id.
    pub id: String,
    /// The experiment it belongs to.
    pub experiment: String,
    /// An optional human-readable name.
    pub name: Option<String>,
    /// Its state.
    pub status: RunStatus,
    /// When it started.
    pub start_time: DateTime<Utc>,
    /// When it ended.
    pub end_time: Option<DateTime<Utc>>,
    /// Parameters (immutable once logged).
    pub params: BTreeMap<String, String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The last value logged of each metric (highest step, then latest time).
    pub latest_metrics: BTreeMap<String, f64>,
    /// Names of the artifacts logged.
    pub artifacts: Vec<String>,
}

/// A search over runs; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    /// Only runs of this experiment.
    pub experiment: Option<String>,
    /// Only runs in this state.
    pub status: Option<RunStatus>,
    /// Tags that must be present with these values.
    pub tags: BTreeMap<String, String>,
    /// Conditions on the latest metric values.
    pub metrics: Vec<MetricFilter>,
}

impl RunQuery {
    /// Whether `run` satisfies the query.
    pub fn matches(&self, run: &Run) -> bool {
        self.experiment
            .as_ref()
            .is_none_or(|e| *e == run.experiment)
            && self.status.is_none_or(|s| s == run.status)
            && self.tags.iter().all(|(k, v)| run.tags.get(k) == Some(v))
            && self.metrics.iter().all(|f| {
                run.latest_metrics
                    .get(&f.metric)
                    .is_some_and(|&m| f.op.holds(m, f.value))
            })
    }
}

/// Records training runs.
///
/// Contract for implementations:
/// - run ids are unique; unknown ids give [`Error::NotFound`](crate::Error::NotFound);
/// - `log_params` is idempotent for equal values and refuses to change a logged
///   value ([`Error::Conflict`](crate::Error::Conflict));
/// - `log_metrics` appends cheaply (a run may hold many thousands of points) and
///   refuses non-finite values ([`Error::InvalidInput`](crate::Error::InvalidInput));
/// - logging to an ended run is refused with [`Error::Conflict`](crate::Error::Conflict).
#[async_trait]
pub trait ExperimentTracker: Send + Sync + std::fmt::Debug {
    /// Starts a run in `experiment` (created on first use).
    async fn start_run(
        &self,
        experiment: &str,
        name: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> Result<Run>;

    /// Records parameters of a run.
    async fn log_params(&self, run_id: &str, params: BTreeMap<String, String>) -> Result<()>;

    /// Appends metric points to a run.
    async fn log_metrics(&self, run_id: &str, points: Vec<MetricPoint>) -> Result<()>;

    /// Sets (or overwrites) tags of a run.
    async fn set_tags(&self, run_id: &str, tags: BTreeMap<String, String>) -> Result<()>;

    /// Stores an artifact of a run under `name`; returns where it was stored.
    async fn log_artifact(&self, run_id: &str, name: &str, bytes: Bytes) -> Result<String>;

    /// Ends a run with `status`.
    async fn end_run(&self, run_id: &str, status: RunStatus) -> Result<Run>;

    /// A run by id.
    async fn get_run(&self, run_id: &str) -> Result<Run>;

    /// Every point of metric `key` of a run, by step then time.
    async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>>;

    /// Runs matching `query`, newest first.
    async fn search_runs(&self, query: &RunQuery) -> Result<Vec<Run>>;
}
