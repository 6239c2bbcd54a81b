//! Drift monitoring of served versions: each version's inputs and predictions go
//! to a bounded queue (full: dropped and counted) and a background task compares
//! windows of them with the version's detectors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, RecordBatch};
use mlops_core::Result;
use mlops_core::drift::{DriftDetector, DriftMonitor, WindowReport};
use mlops_core::inference::{Tensor, tensor_column};
use mlops_core::monitoring::DriftSummary;
use tokio::sync::{broadcast, mpsc};

use super::metrics::ServerMetrics;
use crate::config::MonitorConfig;

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
    tx: mpsc::Sender<(Vec<Tensor>, Vec<Tensor>, usize)>,
    /// Bytes of the requests queued, not yet observed.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    pub(crate) state: Arc<Mutex<DriftState>>,
    metrics: Arc<ServerMetrics>,
    deployment: String,
}

/// The sample `detector` compares, from the columns of `tensors` its input schema
/// names ([`tensor_column`]: a `[N]` or `[N, 1]` tensor by its name, column `j`
/// of a `[N, F]` matrix `x` as `x[j]`), each cast to the type it is compared as;
/// `None` when a column is missing or cannot be cast.
fn batch_for(detector: &dyn DriftDetector, tensors: &[Tensor]) -> Option<RecordBatch> {
    let schema = detector.input_schema();
    let columns: Vec<(String, ArrayRef)> = schema
        .fields()
        .iter()
        .filter_map(|field| {
            let column = tensor_column(tensors, field.name())?.ok()?;
            // Served FP32 against a float64 reference, say: compare as the reference's type.
            let column = arrow_cast::cast(&column, field.data_type()).ok()?;
            Some((field.name().clone(), column))
        })
        .collect();
    if columns.len() != schema.fields().len() {
        return None;
    }
    RecordBatch::try_from_iter(columns).ok()
}

impl VersionMonitor {
    /// Starts monitoring with these detectors; `None` when there is none.
    pub(crate) fn start(
        deployment: &str,
        version: u64,
        inputs: Option<Arc<dyn DriftDetector>>,
        predictions: Option<Arc<dyn DriftDetector>>,
        config: &MonitorConfig,
        metrics: Arc<ServerMetrics>,
        events: broadcast::Sender<DriftEvent>,
    ) -> Result<Option<Self>> {
        let mut monitors = Vec::new();
        for (kind, reference) in [("inputs", inputs), ("predictions", predictions)] {
            if let Some(detector) = reference {
                monitors.push((
                    kind,
                    detector.clone(),
                    DriftMonitor::new(detector, config.window, config.min_rows)?,
                ));
            }
        }
        if monitors.is_empty() {
            return Ok(None);
        }
        let (tx, mut rx) = mpsc::channel::<(Vec<Tensor>, Vec<Tensor>, usize)>(config.queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let task_queued = queued.clone();
        let state = Arc::new(Mutex::new(DriftState::default()));
        let task_state = state.clone();
        let task_metrics = metrics.clone();
        let name = deployment.to_owned();
        tokio::spawn(async move {
            while let Some((inputs, outputs, size)) = rx.recv().await {
                task_queued.fetch_sub(size, Ordering::Relaxed);
                for (kind, detector, monitor) in &mut monitors {
                    let tensors = if *kind == "inputs" { &inputs } else { &outputs };
                    let Some(batch) = batch_for(detector.as_ref(), tensors) else {
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
            queued,
            max_bytes: config.max_queued_bytes,
            state,
            metrics,
            deployment: deployment.to_owned(),
        }))
    }

    /// Hands a served request to the monitor without waiting.
    pub(crate) fn observe(&self, inputs: Vec<Tensor>, outputs: Vec<Tensor>) {
        let size: usize = inputs.iter().chain(&outputs).map(Tensor::heap_bytes).sum();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes
            || self.tx.try_send((inputs, outputs, size)).is_err()
        {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            ServerMetrics::count(&self.metrics.dropped, &self.deployment, "monitor");
        }
    }
}
