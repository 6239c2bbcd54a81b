//! Where unbatched calls run when the deployment leaves it to the server
//! (`inline_max_rows` unset): fast calls move to the async worker that read the
//! request once timed, slow calls and large requests stay on the blocking pool,
//! and a model that slows down moves back. On a current-thread runtime the
//! test's own thread is the only async worker, so "in place" is "on this
//! thread".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
use mlops_core::model::{ModelArtifact, Signature, VersionSelector};
use mlops_core::{ModelLoader, ModelRegistry, Predictor, Server};
use mlops_serve::{DeploymentConfig, ModelServer, Routing};
use mlops_store::{ObjectRegistry, StoreRoot};

/// Answers `y = x`, recording the thread of every call; each call takes at
/// least `delay_us` microseconds.
#[derive(Debug)]
struct Spy {
    signature: Signature,
    threads: Mutex<Vec<ThreadId>>,
    delay_us: AtomicU64,
}

impl Predictor for Spy {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn predict(&self, inputs: &[Tensor]) -> mlops_core::Result<Vec<Tensor>> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        let delay = self.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let checked = self.signature.check_inputs(inputs)?;
        Ok(vec![Tensor::new(
            "y",
            checked[0].shape.clone(),
            checked[0].data.clone(),
        )?])
    }
}

#[derive(Debug)]
struct SpyLoader(Arc<Spy>);

impl ModelLoader for SpyLoader {
    fn flavors(&self) -> Vec<String> {
        vec!["spy".into()]
    }

    fn load(&self, _artifact: &ModelArtifact) -> mlops_core::Result<Arc<dyn Predictor>> {
        Ok(self.0.clone())
    }
}

async fn spy_server(inline_max_rows: Option<usize>) -> (ModelServer, Arc<Spy>) {
    let spy = Arc::new(Spy {
        signature: Signature::new(
            vec![TensorSpec::new("x", Datatype::Fp32, vec![-1])],
            vec![TensorSpec::new("y", Datatype::Fp32, vec![-1])],
        ),
        threads: Mutex::new(Vec::new()),
        delay_us: AtomicU64::new(0),
    });
    let root = StoreRoot::open("memory://").unwrap();
    let registry = Arc::new(ObjectRegistry::new(&root));
    registry
        .register(
            "spy",
            ModelArtifact::new("spy", b"spy".to_vec()),
            Default::default(),
        )
        .await
        .unwrap();
    let server = ModelServer::new(
        registry as Arc<dyn ModelRegistry>,
        vec![Arc::new(SpyLoader(spy.clone()))],
    );
    let mut d = DeploymentConfig::new("spy", "spy", Routing::Fixed(VersionSelector::Latest));
    d.inline_max_rows = inline_max_rows;
    server.deploy(d).await.unwrap();
    (server, spy)
}

async fn call(server: &ModelServer, rows: usize, times: usize) {
    for _ in 0..times {
        let x = Tensor::new("x", vec![rows], TensorData::Fp32(vec![1.0; rows])).unwrap();
        server
            .infer("spy", None, InferenceRequest::new(vec![x]))
            .await
            .unwrap();
    }
}

/// How many of the last `n` calls ran on this thread.
fn here(spy: &Spy, n: usize) -> usize {
    let me = std::thread::current().id();
    let threads = spy.threads.lock().unwrap();
    threads.iter().rev().take(n).filter(|t| **t == me).count()
}

#[tokio::test]
async fn fast_calls_run_in_place_once_timed_and_slow_ones_on_the_pool() {
    let (server, spy) = spy_server(None).await;
    // Untimed, the first calls go to the pool.
    call(&server, 1, 1).await;
    assert_eq!(here(&spy, 1), 0, "the first call ran in place");
    // A fast model's one-row calls then run in place (a preempted call may
    // send one or two back to the pool while its average recovers).
    call(&server, 1, 300).await;
    let inline = here(&spy, 100);
    assert!(
        inline >= 90,
        "only {inline} of the last 100 fast calls ran in place"
    );
    // Requests above 64 rows never run in place, fast or not.
    call(&server, 100, 50).await;
    assert_eq!(here(&spy, 50), 0, "a 100-row request ran in place");
    // The model slows down (300 µs a call): its calls move back to the pool
    // within a few calls and stay there.
    spy.delay_us.store(300, Ordering::Relaxed);
    call(&server, 1, 100).await;
    assert_eq!(here(&spy, 80), 0, "a slow call ran in place");
}

#[tokio::test]
async fn an_explicit_limit_decides_alone() {
    // Some(0): every call on the pool, however fast.
    let (server, spy) = spy_server(Some(0)).await;
    call(&server, 1, 100).await;
    assert_eq!(here(&spy, 100), 0);
    // Some(16): requests of up to 16 rows in place from the first, even slow ones.
    let (server, spy) = spy_server(Some(16)).await;
    spy.delay_us.store(300, Ordering::Relaxed);
    call(&server, 16, 5).await;
    assert_eq!(here(&spy, 5), 5);
    call(&server, 17, 5).await;
    assert_eq!(here(&spy, 5), 0);
}
