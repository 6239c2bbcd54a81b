//! Live monitoring: drift of served inputs and predictions, feedback and live
//! quality, and the inference log. All of it happens off the request path: the
//! request hands its tensors to a bounded queue (dropping, and counting, when the
//! queue is full) and background tasks do the rest.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use chrono::Utc;
use mlops_core::drift::{DriftMonitor, TableDriftDetector, TableReference, Window, WindowReport};
use mlops_core::inference::{Tensor, TensorData};
use mlops_core::monitoring::{DriftSummary, InferenceLogSink, LiveQuality};
use mlops_core::{Error, Result, Task, metrics};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::metrics::ServerMetrics;
use crate::server::tensor_column;

/// Drift monitoring of a deployment's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// The windows compared with the reference.
    pub window: Window,
    /// Fewest rows a window needs to be compared.
    pub min_rows: usize,
    /// Requests waiting to be observed, at most (beyond: dropped and counted).
    pub queue: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            window: Window::TumblingRows(1000),
            min_rows: 100,
            queue: 10_000,
        }
    }
}

/// Feedback: true outcomes joined to served predictions by request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackConfig {
    /// The task, which decides the live metrics: for classification the first
    /// output is the positive class's probability and outcomes are 0 or 1.
    pub task: Task,
    /// Labelled predictions per version the live metrics are computed over.
    pub window: usize,
    /// Predictions awaiting their outcome, at most (oldest forgotten first).
    pub max_pending: usize,
}

impl FeedbackConfig {
    /// Live quality of a `task` over the last 1,000 labelled predictions, with up to
    /// 100,000 awaiting feedback.
    pub fn new(task: Task) -> Self {
        Self {
            task,
            window: 1000,
            max_pending: 100_000,
        }
    }
}

/// The inference log's batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Records per written batch, at most.
    pub flush_rows: usize,
    /// Longest time a record waits before being written.
    pub flush_interval: Duration,
    /// Records waiting, at most (beyond: dropped and counted).
    pub max_buffered: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            flush_rows: 10_000,
            flush_interval: Duration::from_secs(5),
            max_buffered: 100_000,
        }
    }
}

/// A drift verdict on one window of a served version.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftEvent {
    /// The deployment.
    pub deployment: String,
    /// The version.
    pub version: u64,
    /// `inputs` or `predictions`.
    pub kind: &'static str,
    /// The compared window.
    pub window: WindowReport,
}

fn summary(report: &WindowReport, previous: Option<&DriftSummary>) -> DriftSummary {
    let drifted = report.report.overall.drifted;
    DriftSummary {
        drifted,
        share_drifted: report.report.overall.share_drifted,
        drifted_features: report
            .report
            .features
            .iter()
            .filter(|f| f.drifted)
            .map(|f| f.feature.clone())
            .collect(),
        rows: report.rows,
        at: report.end,
        windows: previous.map_or(0, |p| p.windows) + 1,
        drifted_windows: previous.map_or(0, |p| p.drifted_windows) + u64::from(drifted),
    }
}

/// Latest drift summaries of one version.
#[derive(Debug, Default)]
pub(crate) struct DriftState {
    pub(crate) inputs: Option<DriftSummary>,
    pub(crate) predictions: Option<DriftSummary>,
}

/// The monitor of one served version: a queue and the task behind it.
#[derive(Debug)]
pub(crate) struct VersionMonitor {
    tx: mpsc::Sender<(Vec<Tensor>, Vec<Tensor>)>,
    pub(crate) state: Arc<Mutex<DriftState>>,
    metrics: Arc<ServerMetrics>,
    deployment: String,
}

/// Arrow columns of the tensors named in `reference` (one-dimensional ones).
fn batch_for(reference: &TableReference, tensors: &[Tensor]) -> Option<RecordBatch> {
    let columns: Vec<(String, ArrayRef)> = reference
        .columns
        .iter()
        .filter_map(|c| {
            let t = tensors.iter().find(|t| t.name == c.name)?;
            (t.shape.len() == 1).then_some(())?;
            let column = tensor_column(t).ok()?;
            // Served FP32 against a float64 reference, say: compare as the reference's type.
            let column = arrow_cast::cast(&column, &c.data_type).ok()?;
            Some((c.name.clone(), column))
        })
        .collect();
    if columns.len() != reference.columns.len() {
        return None;
    }
    RecordBatch::try_from_iter(columns).ok()
}

impl VersionMonitor {
    /// Starts monitoring; `None` when the model carries no reference.
    pub(crate) fn start(
        deployment: &str,
        version: u64,
        inputs: Option<&TableReference>,
        predictions: Option<&TableReference>,
        config: MonitorConfig,
        metrics: Arc<ServerMetrics>,
        events: broadcast::Sender<DriftEvent>,
    ) -> Result<Option<Self>> {
        let mut monitors = Vec::new();
        for (kind, reference) in [("inputs", inputs), ("predictions", predictions)] {
            if let Some(r) = reference {
                let detector = Arc::new(TableDriftDetector::from_reference(r.clone())?);
                monitors.push((
                    kind,
                    r.clone(),
                    DriftMonitor::new(detector, config.window, config.min_rows)?,
                ));
            }
        }
        if monitors.is_empty() {
            return Ok(None);
        }
        let (tx, mut rx) = mpsc::channel::<(Vec<Tensor>, Vec<Tensor>)>(config.queue.max(1));
        let state = Arc::new(Mutex::new(DriftState::default()));
        let task_state = state.clone();
        let task_metrics = metrics.clone();
        let name = deployment.to_owned();
        tokio::spawn(async move {
            while let Some((inputs, outputs)) = rx.recv().await {
                for (kind, reference, monitor) in &mut monitors {
                    let tensors = if *kind == "inputs" { &inputs } else { &outputs };
                    let Some(batch) = batch_for(reference, tensors) else {
                        continue;
                    };
                    // Comparisons are CPU work: a window of thousands of rows takes
                    // milliseconds, acceptable on this background task.
                    let Ok(reports) = monitor.observe(&batch) else {
                        continue;
                    };
                    for window in reports {
                        if let Ok(mut s) = task_state.lock() {
                            let slot = if *kind == "inputs" {
                                &mut s.inputs
                            } else {
                                &mut s.predictions
                            };
                            let next = summary(&window, slot.as_ref());
                            task_metrics.record_drift(&name, version, kind, &next);
                            *slot = Some(next);
                        }
                        let _ = events.send(DriftEvent {
                            deployment: name.clone(),
                            version,
                            kind,
                            window,
                        });
                    }
                }
            }
        });
        Ok(Some(Self {
            tx,
            state,
            metrics,
            deployment: deployment.to_owned(),
        }))
    }

    /// Hands a served request to the monitor without waiting.
    pub(crate) fn observe(&self, inputs: Vec<Tensor>, outputs: Vec<Tensor>) {
        if self.tx.try_send((inputs, outputs)).is_err() {
            ServerMetrics::count(&self.metrics.dropped, &self.deployment, "monitor");
        }
    }
}

struct Pending {
    version: u64,
    scores: Vec<f64>,
}

/// Predictions awaiting outcomes, and labelled windows per version.
#[derive(Debug)]
pub(crate) struct FeedbackBook {
    config: FeedbackConfig,
    inner: Mutex<BookInner>,
}

#[derive(Default)]
struct BookInner {
    pending: HashMap<String, Pending>,
    order: VecDeque<String>,
    labelled: BTreeMap<u64, VecDeque<(f64, f64)>>,
}

impl std::fmt::Debug for BookInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BookInner({} pending)", self.pending.len())
    }
}

/// The first output's values as one score per row.
pub(crate) fn scores_of(outputs: &[Tensor]) -> Option<Vec<f64>> {
    let first = outputs.first()?;
    let per_row: usize = first.shape.get(1..).map_or(1, |r| r.iter().product());
    if per_row != 1 {
        return None;
    }
    Some(match &first.data {
        TensorData::Fp64(v) => v.clone(),
        other => other
            .to_f32_vec()
            .ok()?
            .into_iter()
            .map(f64::from)
            .collect(),
    })
}

impl FeedbackBook {
    pub(crate) fn new(config: FeedbackConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(BookInner::default()),
        }
    }

    /// Remembers a served prediction under its request id.
    pub(crate) fn record_prediction(&self, id: &str, version: u64, outputs: &[Tensor]) {
        let Some(scores) = scores_of(outputs) else {
            return;
        };
        let Ok(mut b) = self.inner.lock() else { return };
        if b.pending
            .insert(id.to_owned(), Pending { version, scores })
            .is_none()
        {
            b.order.push_back(id.to_owned());
        }
        while b.order.len() > self.config.max_pending {
            if let Some(old) = b.order.pop_front() {
                b.pending.remove(&old);
            }
        }
    }

    /// Joins outcomes (one per row of the request) to the prediction `id`; returns
    /// the version that served it.
    pub(crate) fn record_outcomes(
        &self,
        deployment: &str,
        id: &str,
        outcomes: &[f64],
    ) -> Result<u64> {
        if let Some(o) = outcomes.iter().find(|o| !o.is_finite()) {
            return Err(Error::invalid_input(
                "feedback outcomes",
                format!("{o} is not a finite number"),
            ));
        }
        if matches!(self.config.task, Task::BinaryClassification)
            && let Some(o) = outcomes.iter().find(|&&o| o != 0.0 && o != 1.0)
        {
            return Err(Error::invalid_input(
                "feedback outcomes",
                format!("{o} is not 0 or 1"),
            ));
        }
        let mut b = self
            .inner
            .lock()
            .map_err(|_| Error::backend("feedback", "poisoned"))?;
        let pending = b.pending.get(id).ok_or_else(|| {
            Error::not_found(
                mlops_core::ResourceKind::Object,
                format!(
                    "prediction {id:?} of {deployment} (unknown, already labelled, or forgotten)"
                ),
            )
        })?;
        if pending.scores.len() != outcomes.len() {
            return Err(Error::invalid_input(
                "feedback outcomes",
                format!(
                    "{} outcomes for a prediction of {} rows",
                    outcomes.len(),
                    pending.scores.len()
                ),
            ));
        }
        let Some(pending) = b.pending.remove(id) else {
            return Err(Error::backend("feedback", "the prediction vanished"));
        };
        let window = self.config.window.max(1);
        let labelled = b.labelled.entry(pending.version).or_default();
        for (s, o) in pending.scores.iter().zip(outcomes) {
            labelled.push_back((*s, *o));
            if labelled.len() > window {
                labelled.pop_front();
            }
        }
        Ok(pending.version)
    }

    /// Live metrics per version.
    pub(crate) fn quality(&self) -> BTreeMap<u64, LiveQuality> {
        let Ok(b) = self.inner.lock() else {
            return BTreeMap::new();
        };
        b.labelled
            .iter()
            .map(|(v, rows)| (*v, quality_of(self.config.task, rows)))
            .collect()
    }
}

fn quality_of(task: Task, rows: &VecDeque<(f64, f64)>) -> LiveQuality {
    let scores: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut m = BTreeMap::new();
    match task {
        Task::Regression => {
            let y: Vec<f64> = rows.iter().map(|r| r.1).collect();
            if let Ok(r) = metrics::regression_report(&y, &scores) {
                m = r;
            }
        }
        _ => {
            let y: Vec<usize> = rows.iter().map(|r| usize::from(r.1 == 1.0)).collect();
            let clipped: Vec<f64> = scores.iter().map(|s| s.clamp(0.0, 1.0)).collect();
            if let Ok(r) = metrics::classification_report(&y, &clipped, 2) {
                m = r;
            }
        }
    }
    LiveQuality {
        rows: rows.len(),
        metrics: m,
    }
}

struct LogRecord {
    request_id: Option<String>,
    time_us: i64,
    model: String,
    version: u64,
    inputs: String,
    outputs: String,
    latency_us: u64,
}

enum LogMessage {
    Record(Box<LogRecord>),
    Flush(oneshot::Sender<Result<()>>),
}

/// The background writer of the inference log.
#[derive(Debug, Clone)]
pub(crate) struct InferenceLogger {
    tx: mpsc::Sender<LogMessage>,
    metrics: Arc<ServerMetrics>,
    written: Arc<AtomicU64>,
}

impl std::fmt::Debug for LogMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogMessage")
    }
}

fn records_batch(records: &[LogRecord]) -> Result<RecordBatch> {
    RecordBatch::try_from_iter([
        (
            "request_id",
            Arc::new(StringArray::from(
                records
                    .iter()
                    .map(|r| r.request_id.clone())
                    .collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "time",
            Arc::new(
                TimestampMicrosecondArray::from(
                    records.iter().map(|r| r.time_us).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            "model",
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.model.as_str()),
            )),
        ),
        (
            "version",
            Arc::new(UInt64Array::from_iter_values(
                records.iter().map(|r| r.version),
            )),
        ),
        (
            "inputs",
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.inputs.as_str()),
            )),
        ),
        (
            "outputs",
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.outputs.as_str()),
            )),
        ),
        (
            "latency_us",
            Arc::new(UInt64Array::from_iter_values(
                records.iter().map(|r| r.latency_us),
            )),
        ),
    ])
    .map_err(|e| Error::backend("inference log", e))
}

impl InferenceLogger {
    pub(crate) fn start(
        sink: Arc<dyn InferenceLogSink>,
        config: LogConfig,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<LogMessage>(config.max_buffered.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let task_written = written.clone();
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buffer: Vec<LogRecord> = Vec::new();
            let mut tick = tokio::time::interval(config.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: take it so the first record waits too.
            tick.tick().await;
            loop {
                let (flush, reply) = tokio::select! {
                    m = rx.recv() => match m {
                        Some(LogMessage::Record(r)) => {
                            buffer.push(*r);
                            (buffer.len() >= config.flush_rows, None)
                        }
                        Some(LogMessage::Flush(reply)) => (true, Some(reply)),
                        None => (true, None),
                    },
                    _ = tick.tick() => (!buffer.is_empty(), None),
                };
                let mut result = Ok(());
                if flush && !buffer.is_empty() {
                    result = match records_batch(&buffer) {
                        Ok(batch) => sink.write(batch).await,
                        Err(e) => Err(e),
                    };
                    match &result {
                        Ok(()) => {
                            task_written.fetch_add(buffer.len() as u64, Ordering::Relaxed);
                            buffer.clear();
                        }
                        // Keep the records for the next attempt, within the bound.
                        Err(_) => {
                            ServerMetrics::count(
                                &task_metrics.dropped,
                                "inference_log",
                                "write_error",
                            );
                            if buffer.len() > config.max_buffered {
                                let excess = buffer.len() - config.max_buffered;
                                buffer.drain(..excess);
                            }
                        }
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                if rx.is_closed() && rx.is_empty() && buffer.is_empty() {
                    return;
                }
            }
        });
        Self {
            tx,
            metrics,
            written,
        }
    }

    /// Queues one served request (the response path does not wait).
    pub(crate) fn log(
        &self,
        request_id: Option<String>,
        model: &str,
        version: u64,
        inputs: &[Tensor],
        outputs: &[Tensor],
        latency: Duration,
    ) {
        let encode = |t: &[Tensor]| {
            serde_json::to_string(t)
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
        };
        let record = LogRecord {
            request_id,
            time_us: Utc::now().timestamp_micros(),
            model: model.to_owned(),
            version,
            inputs: encode(inputs),
            outputs: encode(outputs),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        };
        if self
            .tx
            .try_send(LogMessage::Record(Box::new(record)))
            .is_err()
        {
            ServerMetrics::count(&self.metrics.dropped, model, "inference_log");
        }
    }

    /// Writes everything queued so far; waits for the sink.
    pub(crate) async fn flush(&self) -> Result<u64> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(LogMessage::Flush(reply))
            .await
            .map_err(|_| Error::backend("inference log", "the writer stopped"))?;
        done.await
            .map_err(|_| Error::backend("inference log", "the writer stopped"))??;
        Ok(self.written.load(Ordering::Relaxed))
    }
}
