//! Dynamic batching: requests to one model version queue up and are combined into
//! one model call of at most `max_batch_size` rows, or whatever has arrived when
//! the first request has waited `max_queue_delay`. The queue is bounded; a full
//! queue sheds load. Model calls run on tokio's blocking pool, never on the async
//! workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use mlops_core::inference::{Tensor, TensorData};
use mlops_core::{Error, Predictor, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::inline::CallTimer;
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

/// [`call_model`] on the blocking pool. When the caller stops waiting (its
/// request timed out or its client left) before the pool starts the call, the
/// call is skipped and counted in `abandoned`; `permit`, a running slot of the
/// caller's queue, is held until the call ends or is skipped.
pub(crate) async fn predict_blocking(
    predictor: Arc<dyn Predictor>,
    inputs: Vec<Tensor>,
    checked: bool,
    permit: Option<OwnedSemaphorePermit>,
    abandoned: Counter,
    timer: Option<Arc<CallTimer>>,
) -> Result<Vec<Tensor>> {
    let left = Arc::new(AtomicBool::new(false));
    let caller_left = left.clone();
    let call = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if caller_left.load(Ordering::Acquire) {
            abandoned.inc();
            return None;
        }
        let started = std::time::Instant::now();
        let out = call_model(predictor.as_ref(), &inputs, checked);
        if let Some(timer) = &timer {
            timer.record(inputs.first().map_or(0, Tensor::rows), started.elapsed());
        }
        Some(out)
    });
    // Set when this future is dropped before the call's answer is in.
    let mark = MarkOnDrop(Some(left));
    let answer = call.await;
    mark.disarm();
    match answer {
        Ok(Some(out)) => out,
        // Unreachable: the flag is only set once nobody waits for the answer.
        Ok(None) => Err(Error::Unavailable {
            what: "model".into(),
            reason: "the call was skipped".into(),
        }),
        Err(e) => Err(Error::backend(
            "model",
            format!("the model call panicked: {e}"),
        )),
    }
}

/// Sets its flag when dropped, unless disarmed first.
struct MarkOnDrop(Option<Arc<AtomicBool>>);

impl MarkOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Release);
        }
    }
}

/// The bounded queue in front of an unbatched model version: at most
/// `max_running` calls on the blocking pool at once and at most `max_queued`
/// requests waiting for one; beyond that, requests are shed at once. A request
/// that stops waiting (timed out, client gone) leaves the queue, and its call is
/// skipped if it has not started, so abandoned work never reaches the model.
#[derive(Debug)]
pub(crate) struct CallQueue {
    running: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
    abandoned: Counter,
    /// `mlops_queue_depth` of this version: requests waiting for a slot.
    depth: Gauge,
    /// How long this version's calls take, learned from each (see `inline`).
    timer: Arc<CallTimer>,
}

/// Takes one place in a queue; gives it back when dropped (served, shed or
/// abandoned alike).
struct Place<'a>(&'a CallQueue);

impl<'a> Place<'a> {
    /// The place, and how many were taken before it.
    fn take(queue: &'a CallQueue) -> (Self, usize) {
        let before = queue.queued.fetch_add(1, Ordering::AcqRel);
        queue.depth.inc();
        (Self(queue), before)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.depth.dec();
    }
}

impl CallQueue {
    /// A queue of `max_running` calls at once and `max_queued` waiting (each at
    /// least 1), counting skipped calls in the metrics under `labels`.
    pub(crate) fn new(
        max_running: usize,
        max_queued: usize,
        labels: &ModelLabels,
        metrics: &ServerMetrics,
    ) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max_running.max(1))),
            queued: AtomicUsize::new(0),
            max_queued: max_queued.max(1),
            abandoned: metrics.abandoned.with(labels, Clone::clone),
            depth: metrics.queue_depth.with(labels, Clone::clone),
            timer: Arc::new(CallTimer::default()),
        }
    }

    /// The call times of this version's calls.
    pub(crate) fn timer(&self) -> &CallTimer {
        &self.timer
    }

    /// Runs `predictor` on `inputs` (see [`call_model`]) once a running slot is
    /// free; [`Error::Unavailable`] at once when `max_queued` requests already
    /// wait.
    pub(crate) async fn call(
        &self,
        model: &str,
        predictor: Arc<dyn Predictor>,
        inputs: Vec<Tensor>,
        checked: bool,
    ) -> Result<Vec<Tensor>> {
        let permit = match self.running.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let (place, before) = Place::take(self);
                if before >= self.max_queued {
                    return Err(Error::Unavailable {
                        what: format!("model {model}"),
                        reason: format!(
                            "overloaded: {} requests are already queued; retry later",
                            self.max_queued
                        ),
                    });
                }
                let permit = self.running.clone().acquire_owned().await;
                drop(place);
                permit.map_err(|_| Error::Unavailable {
                    what: format!("model {model}"),
                    reason: "the model version is being unloaded; retry".into(),
                })?
            }
        };
        predict_blocking(
            predictor,
            inputs,
            checked,
            Some(permit),
            self.abandoned.clone(),
            Some(self.timer.clone()),
        )
        .await
    }
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
    let abandoned = metrics.abandoned.with(&labels, Clone::clone);
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
        let Ok(permit) = instances.clone().acquire_owned().await else {
            return;
        };
        // Requests that timed out or whose clients left while they waited for
        // company or for an instance are not run.
        let jobs = keep_waited_for(jobs, &abandoned);
        if jobs.is_empty() {
            continue;
        }
        let rows: usize = jobs.iter().map(|j| j.rows).sum();
        metrics.batch_rows.with(&labels, |m| m.observe(rows as f64));
        let predictor = predictor.clone();
        let abandoned = abandoned.clone();
        tokio::spawn(async move {
            execute(predictor, jobs, abandoned).await;
            drop(permit);
        });
    }
}

/// The jobs whose requester still waits; the others are counted in
/// `abandoned` and dropped with their inputs.
fn keep_waited_for(jobs: Vec<Job>, abandoned: &Counter) -> Vec<Job> {
    let before = jobs.len();
    let kept: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    abandoned.inc_by((before - kept.len()) as u64);
    kept
}

/// Runs one batch; when the combined call fails (one bad request, say), each job
/// runs alone so only the bad one fails.
async fn execute(predictor: Arc<dyn Predictor>, jobs: Vec<Job>, abandoned: Counter) {
    if jobs.len() == 1 {
        return run_alone(predictor, jobs, abandoned).await;
    }
    let row_counts: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let Some(combined) = concat(&jobs) else {
        return run_alone(predictor, jobs, abandoned).await;
    };
    match predict_blocking(
        predictor.clone(),
        combined,
        false,
        None,
        abandoned.clone(),
        None,
    )
    .await
    {
        Ok(outputs) => match split(&outputs, &row_counts) {
            Some(parts) => {
                for (job, part) in jobs.into_iter().zip(parts) {
                    let _ = job.reply.send(Ok(part));
                }
            }
            None => run_alone(predictor, jobs, abandoned).await,
        },
        Err(_) => run_alone(predictor, jobs, abandoned).await,
    }
}

/// Runs each job on its own, skipping those nobody waits for any more.
async fn run_alone(predictor: Arc<dyn Predictor>, jobs: Vec<Job>, abandoned: Counter) {
    for job in keep_waited_for(jobs, &abandoned) {
        let out = predict_blocking(
            predictor.clone(),
            job.inputs,
            false,
            None,
            abandoned.clone(),
            None,
        )
        .await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::future::Future;
    use std::sync::Mutex;
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use mlops_core::inference::{Datatype, TensorSpec};
    use mlops_core::model::Signature;

    use super::*;

    const WAIT: Duration = Duration::from_secs(60);

    /// y = x, after taking one token from `go` (a closed channel lets every
    /// call through); counts its calls.
    #[derive(Debug)]
    struct Held {
        signature: Signature,
        go: Mutex<std_mpsc::Receiver<()>>,
        calls: AtomicUsize,
        started: std_mpsc::SyncSender<()>,
    }

    impl Predictor for Held {
        fn signature(&self) -> &Signature {
            &self.signature
        }

        fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.started.send(());
            let _ = self.go.lock().unwrap().recv_timeout(WAIT);
            Ok(inputs.to_vec())
        }
    }

    /// A held model, the sender that lets one call through, and the receiver
    /// that hears each call start.
    fn held() -> (Arc<Held>, std_mpsc::Sender<()>, std_mpsc::Receiver<()>) {
        let (go_tx, go_rx) = std_mpsc::channel();
        let (started_tx, started_rx) = std_mpsc::sync_channel(16);
        let model = Held {
            signature: Signature {
                inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1])],
                outputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1])],
                matrix_input: None,
            },
            go: Mutex::new(go_rx),
            calls: AtomicUsize::new(0),
            started: started_tx,
        };
        (Arc::new(model), go_tx, started_rx)
    }

    fn x() -> Vec<Tensor> {
        vec![Tensor::new("x", vec![1], TensorData::Fp32(vec![1.0])).unwrap()]
    }

    fn labels() -> ModelLabels {
        ModelLabels {
            model: "m".into(),
            version: "1".into(),
        }
    }

    /// Waits (on a blocking thread, within a deadline) for a call to start.
    async fn started(rx: std_mpsc::Receiver<()>) -> std_mpsc::Receiver<()> {
        tokio::task::spawn_blocking(move || {
            rx.recv_timeout(WAIT).expect("a model call to start");
            rx
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_unbatched_queue_is_bounded_and_abandoned_requests_leave_it() {
        let metrics = ServerMetrics::new();
        let queue = Arc::new(CallQueue::new(1, 1, &labels(), &metrics));
        let (model, go, calls_started) = held();
        let running = {
            let (q, m) = (queue.clone(), model.clone());
            tokio::spawn(async move { q.call("m", m, x(), false).await })
        };
        let calls_started = started(calls_started).await;
        // One waits for the running slot; a third finds the queue full.
        let waiting = {
            let (q, m) = (queue.clone(), model.clone());
            tokio::spawn(async move { q.call("m", m, x(), false).await })
        };
        tokio::time::timeout(WAIT, async {
            while queue.queued.load(Ordering::SeqCst) < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the second request to queue");
        let shed = queue
            .call("m", model.clone(), x(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(shed, Error::Unavailable { .. })
                && shed.to_string().contains("1 requests are already queued"),
            "{shed}"
        );
        // The waiting request goes away (its timeout, its client): its place is
        // free at once and its call never runs.
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(queue.queued.load(Ordering::SeqCst), 0);
        go.send(()).unwrap();
        running.await.unwrap().unwrap();
        // The slot is free again: the next call runs, and the model saw two.
        go.send(()).unwrap();
        queue.call("m", model.clone(), x(), false).await.unwrap();
        drop(calls_started);
        assert_eq!(model.calls.load(Ordering::SeqCst), 2);
        let text = metrics.render();
        assert!(
            text.contains("mlops_queue_depth{model=\"m\",version=\"1\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_call_whose_caller_left_before_it_started_is_skipped() {
        // One blocking thread: the second call waits in the pool's queue behind
        // the first, held one, until its caller is gone.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async {
            let metrics = ServerMetrics::new();
            let abandoned = metrics.abandoned.with(&labels(), Clone::clone);
            let (model, go, calls_started) = held();
            let first = tokio::spawn(predict_blocking(
                model.clone(),
                x(),
                false,
                None,
                abandoned.clone(),
                None,
            ));
            // Started on the only blocking thread: wait for it on this one
            // (the runtime's own pool is full).
            let calls_started = std::thread::spawn(move || {
                calls_started
                    .recv_timeout(WAIT)
                    .expect("the first call to start");
                calls_started
            });
            while !calls_started.is_finished() {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(2));
            }
            let _calls_started = calls_started.join().unwrap();
            // The second is handed to the pool, then its caller goes away.
            let mut second = Box::pin(predict_blocking(
                model.clone(),
                x(),
                false,
                None,
                abandoned.clone(),
                None,
            ));
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(second.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the held first call blocks the second");
            drop(second);
            go.send(()).unwrap();
            first.await.unwrap().unwrap();
            tokio::time::timeout(WAIT, async {
                while abandoned.get() < 1 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the skipped call to be counted");
            assert_eq!(
                model.calls.load(Ordering::SeqCst),
                1,
                "the abandoned call never ran"
            );
        });
    }
}
