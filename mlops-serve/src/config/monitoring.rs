//! Watching served traffic: drift monitoring ([`MonitorConfig`]), feedback and
//! live quality ([`FeedbackConfig`]) and the inference log ([`LogConfig`]).

use std::sync::Arc;
use std::time::Duration;

use mlops_core::drift::{DriftDetector, Window};
use mlops_core::{Error, Result, Task};

/// Drift monitoring of a deployment's versions.
///
/// Each served version is watched with the detectors its model carries
/// ([`Predictor::input_drift`](mlops_core::Predictor::input_drift) and
/// [`prediction_drift`](mlops_core::Predictor::prediction_drift)), unless
/// `inputs` or `predictions` names another: any [`DriftDetector`], such as an
/// [`MmdDriftDetector`](mlops_core::drift::MmdDriftDetector) fitted on the training
/// data. Made by [`MonitorConfig::default`] and the `with_*` setters
/// (`#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MonitorConfig {
    /// The windows compared with the reference.
    pub window: Window,
    /// Fewest rows a window needs to be compared.
    pub min_rows: usize,
    /// Requests waiting to be observed, at most (beyond: dropped and counted).
    pub queue: usize,
    /// Bytes the requests waiting may hold (inputs and outputs), at most
    /// (beyond: dropped and counted). Default 64 MiB.
    pub max_queued_bytes: usize,
    /// The detector of served inputs, instead of the model's own.
    pub inputs: Option<Arc<dyn DriftDetector>>,
    /// The detector of served predictions, instead of the model's own.
    pub predictions: Option<Arc<dyn DriftDetector>>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            window: Window::TumblingRows(1000),
            min_rows: 100,
            queue: 10_000,
            max_queued_bytes: 64 << 20,
            inputs: None,
            predictions: None,
        }
    }
}

impl MonitorConfig {
    /// Compares `window`s of served traffic with the reference.
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Compares only windows of at least `rows` rows.
    pub fn with_min_rows(mut self, rows: usize) -> Self {
        self.min_rows = rows;
        self
    }

    /// At most `requests` waiting to be observed.
    pub fn with_queue(mut self, requests: usize) -> Self {
        self.queue = requests;
        self
    }

    /// At most `bytes` of requests waiting to be observed.
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Watches served inputs with `detector` instead of the model's own.
    pub fn with_input_detector(mut self, detector: Arc<dyn DriftDetector>) -> Self {
        self.inputs = Some(detector);
        self
    }

    /// Watches served predictions with `detector` instead of the model's own.
    pub fn with_prediction_detector(mut self, detector: Arc<dyn DriftDetector>) -> Self {
        self.predictions = Some(detector);
        self
    }
}

/// Feedback: true outcomes joined to served predictions by request id; made by
/// [`FeedbackConfig::new`] and the `with_*` setters (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedbackConfig {
    /// The task, which decides the live metrics: for classification the first
    /// output is the positive class's probability and outcomes are 0 or 1.
    pub task: Task,
    /// Labelled predictions per version the live metrics are computed over.
    pub window: usize,
    /// Predictions awaiting their outcome, at most (oldest forgotten first).
    pub max_pending: usize,
    /// Bytes the predictions awaiting their outcome may hold (ids and scores),
    /// at most (oldest forgotten first). Default 64 MiB.
    pub max_pending_bytes: usize,
    /// Longest prediction id a feedback call may name, in bytes; longer ones
    /// are refused (400) before any lookup. The server issues ids of 32
    /// bytes (returned with every answer as the `prediction_id` response
    /// parameter). Default 256.
    pub max_id_bytes: usize,
}

impl FeedbackConfig {
    /// Live quality of a `task` over the last 1,000 labelled predictions, with up to
    /// 100,000 awaiting feedback.
    pub fn new(task: Task) -> Self {
        Self {
            task,
            window: 1000,
            max_pending: 100_000,
            max_pending_bytes: 64 << 20,
            max_id_bytes: 256,
        }
    }

    /// Live metrics over the last `predictions` labelled predictions per version.
    pub fn with_window(mut self, predictions: usize) -> Self {
        self.window = predictions;
        self
    }

    /// At most `predictions` awaiting their outcome.
    pub fn with_max_pending(mut self, predictions: usize) -> Self {
        self.max_pending = predictions;
        self
    }

    /// At most `bytes` held by the predictions awaiting their outcome.
    pub fn with_max_pending_bytes(mut self, bytes: usize) -> Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// Request ids of at most `bytes` bytes.
    pub fn with_max_id_bytes(mut self, bytes: usize) -> Self {
        self.max_id_bytes = bytes;
        self
    }
}

/// The inference log's batching: [`LogConfig::default`] and the `with_*` setters
/// (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    /// Records per written batch, at most.
    pub flush_rows: usize,
    /// Longest time a record waits before being written.
    pub flush_interval: Duration,
    /// Records waiting, at most (beyond: dropped and counted).
    pub max_buffered: usize,
    /// Bytes the records waiting may hold, at most (beyond: dropped and
    /// counted). Default 256 MiB.
    pub max_buffered_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            flush_rows: 10_000,
            flush_interval: Duration::from_secs(5),
            max_buffered: 100_000,
            max_buffered_bytes: 256 << 20,
        }
    }
}

impl LogConfig {
    /// Writes batches of at most `rows` records.
    pub fn with_flush_rows(mut self, rows: usize) -> Self {
        self.flush_rows = rows;
        self
    }

    /// Writes a record at most `interval` after it arrived.
    pub fn with_flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Keeps at most `records` waiting.
    pub fn with_max_buffered(mut self, records: usize) -> Self {
        self.max_buffered = records;
        self
    }

    /// Keeps at most `bytes` of records waiting.
    pub fn with_max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// Checks that every limit is positive; the error names the first that is
    /// not.
    pub fn validate(&self) -> Result<()> {
        for (name, ok) in [
            ("flush_rows", self.flush_rows > 0),
            ("flush_interval", !self.flush_interval.is_zero()),
            ("max_buffered", self.max_buffered > 0),
            ("max_buffered_bytes", self.max_buffered_bytes > 0),
        ] {
            if !ok {
                return Err(Error::invalid_input(
                    format!("inference log {name}"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }
}
