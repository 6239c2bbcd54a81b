//! The inference log: every served request's inputs and outputs, batched in the
//! background and written to an [`InferenceLogSink`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

impl LogRecord {
    /// The bytes the record holds, approximately.
    fn size(&self) -> usize {
        self.inputs.len()
            + self.outputs.len()
            + self.model.len()
            + self.request_id.as_ref().map_or(0, String::len)
            + 96
    }
}

/// Writes tried after the server stopped, before the records left are dropped.
const SHUTDOWN_TRIES: u32 = 5;

/// The wait before the next write after `failures` failed ones in a row: 100 ms,
/// doubling, at most 30 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(9))).min(Duration::from_secs(30))
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
    /// Bytes of the records queued or buffered, not yet written.
    pending: Arc<AtomicUsize>,
    max_bytes: usize,
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
        let pending = Arc::new(AtomicUsize::new(0));
        let task_written = written.clone();
        let task_pending = pending.clone();
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buffer: Vec<LogRecord> = Vec::new();
            // After a failed write, automatic writes wait (with growing delays) so
            // a failing sink is not retried, and the buffer not re-encoded, for
            // every record that arrives; an explicit flush always tries.
            let mut failures = 0u32;
            let mut retry_at: Option<tokio::time::Instant> = None;
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
                let explicit = reply.is_some() || rx.is_closed();
                let waiting = retry_at.is_some_and(|t| tokio::time::Instant::now() < t);
                let mut result = Ok(());
                if flush && !buffer.is_empty() && (explicit || !waiting) {
                    result = match records_batch(&buffer) {
                        Ok(batch) => sink.write(batch).await,
                        Err(e) => Err(e),
                    };
                    match &result {
                        Ok(()) => {
                            task_written.fetch_add(buffer.len() as u64, Ordering::Relaxed);
                            let freed: usize = buffer.iter().map(LogRecord::size).sum();
                            task_pending.fetch_sub(freed, Ordering::Relaxed);
                            buffer.clear();
                            failures = 0;
                            retry_at = None;
                        }
                        // Keep the records for the next attempt, within the bound.
                        Err(_) => {
                            ServerMetrics::count(
                                &task_metrics.dropped,
                                "inference_log",
                                "write_error",
                            );
                            retry_at = Some(tokio::time::Instant::now() + retry_delay(failures));
                            failures = failures.saturating_add(1);
                            if buffer.len() > config.max_buffered {
                                let excess = buffer.len() - config.max_buffered;
                                let freed: usize = buffer.drain(..excess).map(|r| r.size()).sum();
                                task_pending.fetch_sub(freed, Ordering::Relaxed);
                            }
                        }
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                if rx.is_closed() && rx.is_empty() {
                    if buffer.is_empty() {
                        return;
                    }
                    // The server is gone and the sink fails: a few spaced tries,
                    // then the records are dropped and counted (never a busy loop).
                    if failures >= SHUTDOWN_TRIES {
                        for _ in 0..buffer.len() {
                            ServerMetrics::count(
                                &task_metrics.dropped,
                                "inference_log",
                                "unwritten",
                            );
                        }
                        return;
                    }
                    tokio::time::sleep(retry_delay(failures)).await;
                }
            }
        });
        Self {
            tx,
            metrics,
            written,
            pending,
            max_bytes: config.max_buffered_bytes,
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
        // Within the byte budget of everything not yet written, or dropped and
        // counted (like a full queue).
        let size = record.size();
        if self.pending.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes
            || self
                .tx
                .try_send(LogMessage::Record(Box::new(record)))
                .is_err()
        {
            self.pending.fetch_sub(size, Ordering::Relaxed);
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
