//! The inference log: every served request's inputs and outputs, batched in the
//! background and written to an [`InferenceLogSink`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use chrono::Utc;
use mlops_core::inference::Tensor;
use mlops_core::monitoring::InferenceLogSink;
use mlops_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use super::metrics::ServerMetrics;
use crate::config::LogConfig;

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
            crate::codec::encode_tensors(t)
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
