//! A registry with versions of a small hand-written model, and its loader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
use mlops_core::{
    CheckedInputs, Error, ModelArtifact, ModelLoader, ModelMetadata, ModelRegistry, Predictor,
    Result, Signature,
};
use mlops_store::{ObjectRegistry, StoreRoot};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub(crate) const FLAVOR: &str = "test-linear";

/// y = w . x + b, with an optional delay per call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Linear {
    pub(crate) w: [f32; 2],
    pub(crate) b: f32,
    /// Milliseconds each call sleeps, or [`GATED`].
    pub(crate) delay_ms: u64,
}

/// `delay_ms` of a model each of whose calls waits, instead of sleeping, at the
/// [`Gate`] of the loader that loaded it (see [`LinearLoader::gated_calls`]).
pub(crate) const GATED: u64 = u64::MAX;

/// How long a test waits for what it expects (a state, a message, a task, a
/// request held at a gate) before it fails: long enough for the busiest
/// machine, there only to turn a hang into a failure that names what is missing.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) calls: AtomicUsize,
    /// Calls through `predict_checked` (inputs the server has checked).
    pub(crate) checked_calls: AtomicUsize,
    pub(crate) max_rows: AtomicUsize,
}

#[derive(Debug)]
struct LinearPredictor {
    model: Linear,
    signature: Signature,
    stats: Arc<Stats>,
    gate: Option<Arc<GateState>>,
}

pub(crate) fn signature() -> Signature {
    Signature {
        inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1, 2])],
        outputs: vec![
            TensorSpec::new("y", Datatype::Fp32, vec![-1]),
            TensorSpec::new("twice", Datatype::Fp32, vec![-1]),
        ],
        matrix_input: None,
    }
}

impl Predictor for LinearPredictor {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.signature.check_inputs(inputs)?;
        self.answer(inputs)
    }

    fn predict_checked(&self, inputs: CheckedInputs<'_>) -> Result<Vec<Tensor>> {
        assert!(
            inputs.is_for(&self.signature),
            "checked against another signature"
        );
        self.stats.checked_calls.fetch_add(1, Ordering::SeqCst);
        self.answer(&inputs)
    }
}

impl LinearPredictor {
    fn answer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let x = inputs
            .first()
            .ok_or_else(|| Error::invalid_input("input 'x'", "missing"))?
            .data
            .to_f32_vec()?;
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid_input(
                "input 'x'",
                format!("element {i} is not finite"),
            ));
        }
        let rows = inputs[0].rows();
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        self.stats.max_rows.fetch_max(rows, Ordering::SeqCst);
        if self.model.delay_ms == GATED {
            self.gate
                .as_ref()
                .ok_or_else(|| Error::invalid_input("test model", "GATED without a gate"))?
                .pass("a gated model call")?;
        } else if self.model.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.model.delay_ms));
        }
        let y: Vec<f32> = x
            .chunks(2)
            .map(|r| r[0] * self.model.w[0] + r[1] * self.model.w[1] + self.model.b)
            .collect();
        let twice: Vec<f32> = y.iter().map(|v| v * 2.0).collect();
        Ok(vec![
            Tensor::new("y", vec![rows], TensorData::Fp32(y))?,
            Tensor::new("twice", vec![rows], TensorData::Fp32(twice))?,
        ])
    }
}

#[derive(Debug, Default)]
pub(crate) struct LinearLoader {
    pub(crate) stats: Arc<Stats>,
    /// How long each load takes.
    pub(crate) load_delay: Duration,
    /// Where the calls of `GATED` models wait.
    pub(crate) call_gate: Option<Arc<GateState>>,
    /// Where each load waits (after `load_delay`).
    pub(crate) load_gate: Option<Arc<GateState>>,
}

impl LinearLoader {
    /// This loader, with the calls of the `GATED` models it loads waiting at `gate`.
    pub(crate) fn gated_calls(mut self, gate: &Gate) -> Self {
        self.call_gate = Some(gate.0.clone());
        self
    }

    /// This loader, with each load waiting at `gate`.
    pub(crate) fn gated_loads(mut self, gate: &Gate) -> Self {
        self.load_gate = Some(gate.0.clone());
        self
    }
}

impl ModelLoader for LinearLoader {
    fn flavors(&self) -> Vec<String> {
        vec![FLAVOR.into()]
    }

    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        std::thread::sleep(self.load_delay);
        if let Some(gate) = &self.load_gate {
            gate.pass("a gated model load")?;
        }
        artifact.verify()?;
        let model: Linear = serde_json::from_slice(&artifact.bytes)
            .map_err(|e| Error::integrity("test artifact", e.to_string()))?;
        Ok(Arc::new(LinearPredictor {
            model,
            signature: signature(),
            stats: self.stats.clone(),
            gate: self.call_gate.clone(),
        }))
    }
}

/// A gate that model calls (of a [`GATED`] model) or model loads wait at while
/// it is closed. A request held inside the model makes "these requests are in
/// flight", "they overlap" and "this one has not answered yet" true by
/// construction, with no timing: the test waits until the calls it expects are
/// held ([`Gate::held`]), does what it tests, then opens the gate.
///
/// The test's handle opens the gate when dropped, so no call stays blocked after
/// a failed assertion; a call held longer than twice [`WAIT`] fails rather than
/// hangs.
#[derive(Debug)]
pub(crate) struct Gate(Arc<GateState>);

#[derive(Debug)]
pub(crate) struct GateState {
    open: Mutex<bool>,
    opened: Condvar,
    /// Calls waiting at the gate now.
    held: watch::Sender<usize>,
}

impl GateState {
    /// Returns at once when the gate is open; otherwise waits until it opens.
    fn pass(&self, what: &str) -> Result<()> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if *open {
            return Ok(());
        }
        self.held.send_modify(|n| *n += 1);
        let (open, waited) = self
            .opened
            .wait_timeout_while(open, 2 * WAIT, |open| !*open)
            .unwrap_or_else(PoisonError::into_inner);
        drop(open);
        self.held.send_modify(|n| *n -= 1);
        if waited.timed_out() {
            return Err(Error::backend(
                what,
                format!("held {:?} at a gate the test never opened", 2 * WAIT),
            ));
        }
        Ok(())
    }
}

impl Gate {
    /// A closed gate.
    pub(crate) fn closed() -> Self {
        Self(Arc::new(GateState {
            open: Mutex::new(false),
            opened: Condvar::new(),
            held: watch::Sender::new(0),
        }))
    }

    /// Lets every call held pass, and the calls to come.
    pub(crate) fn open(&self) {
        *self.0.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0.opened.notify_all();
    }

    /// Holds the calls to come.
    pub(crate) fn close(&self) {
        *self.0.open.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// How many calls wait at the gate now.
    pub(crate) fn held_now(&self) -> usize {
        *self.0.held.borrow()
    }

    /// Waits until at least `n` calls wait at the gate; panics naming `what`
    /// when they do not within [`WAIT`].
    pub(crate) async fn held(&self, n: usize, what: &str) {
        let mut held = self.0.held.subscribe();
        let reached = tokio::time::timeout(WAIT, held.wait_for(|h| *h >= n))
            .await
            .map(|r| r.is_ok());
        assert!(
            matches!(reached, Ok(true)),
            "{what}: {n} calls were not held at the gate within {WAIT:?} ({} are)",
            self.held_now()
        );
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// Polls `done` until it holds; panics naming `what` when it does not within
/// [`WAIT`].
pub(crate) async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    eventually_some(what, async || done().await.then_some(())).await;
}

/// Polls `found` until it gives a value, and returns it; panics naming `what`
/// when it gives none within [`WAIT`].
pub(crate) async fn eventually_some<T>(what: &str, mut found: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = found().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `future`'s output; panics naming `what` when it is not ready within [`WAIT`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// A spawned task's output, waited for at most [`WAIT`]; panics naming `what`
/// when the task panicked (with its message) or did not finish in time (it is
/// aborted then).
pub(crate) async fn join<T>(what: &str, mut task: tokio::task::JoinHandle<T>) -> T {
    match tokio::time::timeout(WAIT, &mut task).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => {
            task.abort();
            panic!("{what}: not finished within {WAIT:?}")
        }
    }
}

/// The samples of the metric `name` in Prometheus' text format, as (labels,
/// value): the lines `name{labels} value` and `name value`, never the `# HELP`
/// and `# TYPE` lines every family has from the start. Panics on a sample whose
/// value does not parse.
pub(crate) fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let value = value.split(' ').next().unwrap_or_default();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("the value of sample {l:?}: {e}"));
            Some((labels.to_owned(), value))
        })
        .collect()
}

/// The value of the sample of metric `name` whose labels are exactly `labels`
/// (as written, e.g. `model="m",outcome="hit"`); panics, showing the text, when
/// there is none.
pub(crate) fn sample(text: &str, name: &str, labels: &str) -> f64 {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| l == labels)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{text}"))
}

pub(crate) fn artifact(model: &Linear) -> ModelArtifact {
    ModelArtifact::new(FLAVOR, serde_json::to_vec(model).unwrap())
}

/// A memory registry holding `models` as versions 1..n of "m".
pub(crate) async fn registry(models: &[Linear]) -> Arc<dyn ModelRegistry> {
    let root = StoreRoot::open("memory://").unwrap();
    let r = Arc::new(ObjectRegistry::new(&root));
    for m in models {
        r.register(
            "m",
            artifact(m),
            ModelMetadata {
                signature: Some(signature()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    r
}

/// Version `v`'s model: y = v * x0 + 0 * x1 + 0, so the output names the version.
pub(crate) fn version_model(v: u64) -> Linear {
    Linear {
        w: [v as f32, 0.0],
        b: 0.0,
        delay_ms: 0,
    }
}

pub(crate) fn request(rows: &[[f32; 2]]) -> InferenceRequest {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    InferenceRequest::new(vec![
        Tensor::new("x", vec![rows.len(), 2], TensorData::Fp32(data)).unwrap(),
    ])
}

pub(crate) fn y_of(r: &mlops_core::InferenceResponse) -> Vec<f32> {
    r.output("y").unwrap().data.to_f32_vec().unwrap()
}
