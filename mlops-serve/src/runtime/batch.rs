//! Dynamic batching: requests to one model version queue up and are combined into
//! one model call of at most `max_batch_size` rows, or whatever has arrived when
//! the first request has waited `max_queue_delay`. The queue is bounded; a full
//! queue sheds load. Model calls run on tokio's blocking pool, never on the async
//! workers.

use std::sync::Arc;
use std::time::Instant;

use mlops_core::inference::{Tensor, TensorData};
use mlops_core::{Error, Predictor, Result};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::metrics::{ModelLabels, ServerMetrics};
use crate::config::BatchConfig;

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<Tensor>>>,
}

/// The queue in front of one loaded model version.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
    max_queue: usize,
    labels: ModelLabels,
    metrics: Arc<ServerMetrics>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows)
    }
}

/// Runs `predictor` on `inputs`. For the primary version (`checked`) the inputs
/// are checked against its signature here, the one check of an unbatched request,
/// and the call goes through `predict_checked` with the
/// [`CheckedInputs`](mlops_core::CheckedInputs) that check made. A shadow (its
/// inputs were made for the primary's signature) goes through `predict`, which
/// checks them against its own.
pub(crate) fn call_model(
    predictor: &dyn Predictor,
    inputs: &[Tensor],
    checked: bool,
) -> Result<Vec<Tensor>> {
    if checked {
        predictor.predict_checked(predictor.signature().check_inputs(inputs)?)
    } else {
        predictor.predict(inputs)
    }
}

/// [`call_model`] on the blocking pool.
pub(crate) async fn predict_blocking(
    predictor: Arc<dyn Predictor>,
    inputs: Vec<Tensor>,
    checked: bool,
) -> Result<Vec<Tensor>> {
    tokio::task::spawn_blocking(move || call_model(predictor.as_ref(), &inputs, checked))
        .await
        .map_err(|e| Error::backend("model", format!("the model call panicked: {e}")))?
}

impl Batcher {
    /// Starts the batching task for `predictor` (on the current runtime).
    pub(crate) fn start(
        predictor: Arc<dyn Predictor>,
        config: BatchConfig,
        labels: ModelLabels,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.max_queue);
        tokio::spawn(run(predictor, config, rx, labels.clone(), metrics.clone()));
        Self {
            tx,
            max_queue: config.max_queue,
            labels,
            metrics,
        }
    }

    /// Queues `inputs` (already checked against the signature) and waits for the
    /// answer. A full queue gives [`Error::Unavailable`] at once.
    pub(crate) async fn submit(&self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            reply,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Unavailable {
                what: format!("model {model}"),
                reason: format!(
                    "overloaded: {} requests are already queued; retry later",
                    self.max_queue
                ),
            },
            mpsc::error::TrySendError::Closed(_) => Error::Unavailable {
                what: format!("model {model}"),
                reason: "the model version is being unloaded; retry".into(),
            },
        })?;
        self.metrics.queue_depth.with(&self.labels, |m| {
            m.set((self.max_queue - self.tx.capacity()) as i64)
        });
        answer.await.map_err(|_| Error::Unavailable {
            what: format!("model {model}"),
            reason: "the batch was dropped while the model version unloaded; retry".into(),
        })?
    }
}

async fn run(
    predictor: Arc<dyn Predictor>,
    config: BatchConfig,
    mut rx: mpsc::Receiver<Job>,
    labels: ModelLabels,
    metrics: Arc<ServerMetrics>,
) {
    let instances = Arc::new(Semaphore::new(config.instances));
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let deadline = tokio::time::Instant::from_std(Instant::now() + config.max_queue_delay);
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < config.max_batch_size {
            let next = tokio::select! {
                j = rx.recv() => j,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(j) = next else { break };
            if rows + j.rows > config.max_batch_size {
                carry = Some(j);
                break;
            }
            rows += j.rows;
            jobs.push(j);
        }
        metrics
            .queue_depth
            .with(&labels, |m| m.set(rx.len() as i64));
        metrics.batch_rows.with(&labels, |m| m.observe(rows as f64));
        let Ok(permit) = instances.clone().acquire_owned().await else {
            return;
        };
        let predictor = predictor.clone();
        tokio::spawn(async move {
            execute(predictor, jobs).await;
            drop(permit);
        });
    }
}

/// Runs one batch; when the combined call fails (one bad request, say), each job
/// runs alone so only the bad one fails.
async fn execute(predictor: Arc<dyn Predictor>, jobs: Vec<Job>) {
    if jobs.len() == 1 {
        for job in jobs {
            let out = predict_blocking(predictor.clone(), job.inputs, false).await;
            let _ = job.reply.send(out);
        }
        return;
    }
    let row_counts: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let Some(combined) = concat(&jobs) else {
        return run_alone(predictor, jobs).await;
    };
    match predict_blocking(predictor.clone(), combined, false).await {
        Ok(outputs) => match split(&outputs, &row_counts) {
            Some(parts) => {
                for (job, part) in jobs.into_iter().zip(parts) {
                    let _ = job.reply.send(Ok(part));
                }
            }
            None => run_alone(predictor, jobs).await,
        },
        Err(_) => run_alone(predictor, jobs).await,
    }
}

async fn run_alone(predictor: Arc<dyn Predictor>, jobs: Vec<Job>) {
    for job in jobs {
        let out = predict_blocking(predictor.clone(), job.inputs, false).await;
        let _ = job.reply.send(out);
    }
}

/// The jobs' inputs stacked along the first dimension, by input name; `None` when
/// they do not stack (different names, datatypes or inner shapes).
fn concat(jobs: &[Job]) -> Option<Vec<Tensor>> {
    let first = &jobs[0].inputs;
    let mut out = Vec::with_capacity(first.len());
    for t in first {
        let inner = t.shape.get(1..)?.to_vec();
        let mut data = t.data.clone();
        let mut rows = t.rows();
        for job in &jobs[1..] {
            let other = job.inputs.iter().find(|o| o.name == t.name)?;
            if other.shape.get(1..)? != inner.as_slice() || !append(&mut data, &other.data) {
                return None;
            }
            rows += other.rows();
        }
        let mut shape = vec![rows];
        shape.extend(inner);
        out.push(Tensor::new(t.name.clone(), shape, data).ok()?);
    }
    Some(out)
}

fn append(dst: &mut TensorData, src: &TensorData) -> bool {
    match (dst, src) {
        (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
        (TensorData::Uint8(a), TensorData::Uint8(b)) => a.extend_from_slice(b),
        (TensorData::Uint16(a), TensorData::Uint16(b)) => a.extend_from_slice(b),
        (TensorData::Uint32(a), TensorData::Uint32(b)) => a.extend_from_slice(b),
        (TensorData::Uint64(a), TensorData::Uint64(b)) => a.extend_from_slice(b),
        (TensorData::Int8(a), TensorData::Int8(b)) => a.extend_from_slice(b),
        (TensorData::Int16(a), TensorData::Int16(b)) => a.extend_from_slice(b),
        (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(b),
        (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(b),
        (TensorData::Fp16(a), TensorData::Fp16(b)) => a.extend_from_slice(b),
        (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(b),
        (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(b),
        (TensorData::Bytes(a), TensorData::Bytes(b)) => a.extend_from_slice(b),
        _ => return false,
    }
    true
}

/// Elements `start..end` of `data`.
pub(crate) fn slice(data: &TensorData, start: usize, end: usize) -> TensorData {
    match data {
        TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
        TensorData::Uint8(v) => TensorData::Uint8(v[start..end].to_vec()),
        TensorData::Uint16(v) => TensorData::Uint16(v[start..end].to_vec()),
        TensorData::Uint32(v) => TensorData::Uint32(v[start..end].to_vec()),
        TensorData::Uint64(v) => TensorData::Uint64(v[start..end].to_vec()),
        TensorData::Int8(v) => TensorData::Int8(v[start..end].to_vec()),
        TensorData::Int16(v) => TensorData::Int16(v[start..end].to_vec()),
        TensorData::Int32(v) => TensorData::Int32(v[start..end].to_vec()),
        TensorData::Int64(v) => TensorData::Int64(v[start..end].to_vec()),
        TensorData::Fp16(v) => TensorData::Fp16(v[start..end].to_vec()),
        TensorData::Fp32(v) => TensorData::Fp32(v[start..end].to_vec()),
        TensorData::Fp64(v) => TensorData::Fp64(v[start..end].to_vec()),
        TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
    }
}

/// Each output cut back into per-job pieces by rows; `None` when an output does
/// not have the batch's rows.
fn split(outputs: &[Tensor], row_counts: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = row_counts.iter().sum();
    let mut parts = vec![Vec::with_capacity(outputs.len()); row_counts.len()];
    for t in outputs {
        if t.rows() != total || t.shape.is_empty() {
            return None;
        }
        let per_row: usize = t.shape[1..].iter().product();
        let mut row = 0;
        for (part, &n) in parts.iter_mut().zip(row_counts) {
            let data = slice(&t.data, row * per_row, (row + n) * per_row);
            let mut shape = vec![n];
            shape.extend_from_slice(&t.shape[1..]);
            let mut piece = Tensor::new(t.name.clone(), shape, data).ok()?;
            piece.parameters = t.parameters.clone();
            part.push(piece);
            row += n;
        }
    }
    Some(parts)
}
