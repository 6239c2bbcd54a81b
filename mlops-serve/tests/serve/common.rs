//! A registry with versions of a small hand-written model, and its loader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
use mlops_core::{
    CheckedInputs, Error, ModelArtifact, ModelLoader, ModelMetadata, ModelRegistry, Predictor,
    Result, Signature,
};
use mlops_store::{ObjectRegistry, StoreRoot};
use serde::{Deserialize, Serialize};

pub(crate) const FLAVOR: &str = "test-linear";

/// y = w . x + b, with an optional delay per call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Linear {
    pub(crate) w: [f32; 2],
    pub(crate) b: f32,
    pub(crate) delay_ms: u64,
}

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
}

pub(crate) fn signature() -> Signature {
    Signature {
        inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1, 2])],
        outputs: vec![
            TensorSpec::new("y", Datatype::Fp32, vec![-1]),
            TensorSpec::new("twice", Datatype::Fp32, vec![-1]),
        ],
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
        if self.model.delay_ms > 0 {
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
}

impl ModelLoader for LinearLoader {
    fn flavors(&self) -> Vec<String> {
        vec![FLAVOR.into()]
    }

    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        std::thread::sleep(self.load_delay);
        artifact.verify()?;
        let model: Linear = serde_json::from_slice(&artifact.bytes)
            .map_err(|e| Error::integrity("test artifact", e.to_string()))?;
        Ok(Arc::new(LinearPredictor {
            model,
            signature: signature(),
            stats: self.stats.clone(),
        }))
    }
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
