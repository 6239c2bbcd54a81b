//! Running CPU-bound work (training, evaluation, model loading) off an async
//! runtime.
//!
//! Code written against the SDK's async traits, such as the
//! [`RetrainLoop`](crate::retrain::RetrainLoop), sometimes has to call a sync,
//! CPU-bound trait ([`Trainer::fit`](crate::Trainer::fit) takes seconds to
//! minutes). Calling it inside a future would stall every other task of the
//! runtime's worker, so such code hands the work to a [`BlockingExecutor`] and
//! awaits its end. mlops-core depends on no async runtime, so the executor is
//! injected:
//! - [`ThreadExecutor`] runs each job on a thread of its own: it works under any
//!   runtime (tokio, async-std, a hand-rolled `block_on`) and costs one thread
//!   start per job, nothing next to a training run;
//! - an application on tokio may prefer its blocking pool: implement the trait with
//!   `tokio::task::spawn_blocking` (a few lines, shown on [`BlockingExecutor`]).
//!
//! [`run_blocking`] is the typed helper on top: it returns the job's value.
//!
//! ```
//! use mlops_core::exec::{ThreadExecutor, run_blocking};
//!
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     // A minimal executor for the example; applications use their runtime's.
//! #     use std::task::{Context, Poll, Wake, Waker};
//! #     use std::sync::Arc;
//! #     struct Unpark(std::thread::Thread);
//! #     impl Wake for Unpark { fn wake(self: Arc<Self>) { self.0.unpark() } }
//! #     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
//! #     let mut f = std::pin::pin!(f);
//! #     loop {
//! #         if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) { return v; }
//! #         std::thread::park();
//! #     }
//! # }
//! let sum = block_on(run_blocking(&ThreadExecutor, || Ok((1..=100u64).sum::<u64>())))?;
//! assert_eq!(sum, 5050);
//! # Ok::<(), mlops_core::Error>(())
//! ```

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};

/// A unit of blocking work.
pub type BlockingJob = Box<dyn FnOnce() + Send + 'static>;

/// A future that completes when a [`BlockingJob`] has run.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// Runs blocking jobs where blocking is fine, and tells when each has finished.
///
/// Contract: the job runs exactly once unless the executor cannot start it, in
/// which case the future resolves to [`Error::Unavailable`]; a job that panics
/// resolves the future to an error naming the panic rather than unwinding into
/// the caller.
///
/// On tokio, the runtime's blocking pool does this job:
///
/// ```
/// use mlops_core::exec::{BlockingExecutor, BlockingJob, JobFuture};
/// use mlops_core::Error;
///
/// #[derive(Debug)]
/// struct TokioBlocking;
///
/// impl BlockingExecutor for TokioBlocking {
///     fn execute(&self, job: BlockingJob) -> JobFuture {
///         Box::pin(async move {
///             tokio::task::spawn_blocking(job)
///                 .await
///                 .map_err(|e| Error::backend("blocking pool", e.to_string()))
///         })
///     }
/// }
/// ```
pub trait BlockingExecutor: Send + Sync + Debug {
    /// Starts `job`; the returned future completes once it has run.
    fn execute(&self, job: BlockingJob) -> JobFuture;
}

/// Runs each job on a new thread (named `mlops-blocking`), under any async runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadExecutor;

/// The shared end of a job: its outcome once it has run, and who to wake.
#[derive(Debug, Default)]
struct Slot {
    outcome: Option<Result<()>>,
    waker: Option<Waker>,
}

/// Completes when the job's thread stores its outcome.
struct Completion(Arc<Mutex<Slot>>);

impl Future for Completion {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut slot = match self.0.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        match slot.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A panic payload's message, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl BlockingExecutor for ThreadExecutor {
    fn execute(&self, job: BlockingJob) -> JobFuture {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let done = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("mlops-blocking".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).map_err(
                    |payload| {
                        Error::backend(
                            "blocking job",
                            format!("it panicked: {}", panic_message(payload.as_ref())),
                        )
                    },
                );
                let mut slot = match done.lock() {
                    Ok(slot) => slot,
                    Err(poisoned) => poisoned.into_inner(),
                };
                slot.outcome = Some(outcome);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            });
        match spawned {
            Ok(_) => Box::pin(Completion(slot)),
            Err(e) => Box::pin(std::future::ready(Err(Error::Unavailable {
                what: "blocking executor".into(),
                reason: format!("could not start a thread: {e}"),
            }))),
        }
    }
}

/// Runs `f` on `executor` and returns its value: the typed way to call sync,
/// CPU-bound code from async code.
pub async fn run_blocking<T, F>(executor: &dyn BlockingExecutor, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let out: Arc<Mutex<Option<Result<T>>>> = Arc::new(Mutex::new(None));
    let slot = out.clone();
    executor
        .execute(Box::new(move || {
            let value = f();
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(value);
            }
        }))
        .await?;
    let mut guard = match out.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard.take().unwrap_or_else(|| {
        Err(Error::backend(
            "blocking job",
            "the executor reported the job done but it left no result",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_and_errors_come_back() {
        assert_eq!(
            run_blocking(&ThreadExecutor, || Ok(41 + 1)).await.unwrap(),
            42
        );
        let err = run_blocking::<(), _>(&ThreadExecutor, || {
            Err(Error::invalid_input("job", "bad input"))
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("bad input"), "{err}");
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_an_unwind() {
        let err = run_blocking::<(), _>(&ThreadExecutor, || panic!("boom in training"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom in training"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_job_does_not_stall_the_runtime() {
        // On a one-thread runtime, a job that waits for the runtime's own task
        // would deadlock if it ran inline.
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let job = run_blocking(&ThreadExecutor, move || {
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| Error::backend("test", e.to_string()))
        });
        let sender = async move {
            tokio::task::yield_now().await;
            tx.send(7)
                .map_err(|e| Error::backend("test", e.to_string()))
        };
        let (got, sent) = tokio::join!(job, sender);
        sent.unwrap();
        assert_eq!(got.unwrap(), 7);
    }
}
