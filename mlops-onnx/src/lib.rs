//! Models trained anywhere, served by the mlops SDK: ONNX files exported from
//! scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools), PyTorch
//! (`torch.onnx.export`) and others, loaded with tract (pure Rust, no shared
//! library to ship) and served through the same [`Predictor`] contract as the
//! SDK's own models: routing, batching, drift monitoring and the retraining loop
//! see no difference.
//!
//! - [`OnnxLoader`] reads artifacts of the flavor [`FLAVOR`] (`onnx`); give it
//!   to the model server beside the tabular loader.
//! - [`OnnxModel`] is the loaded graph: its [`Signature`](mlops_core::Signature)
//!   is read from the graph (names, element types, `-1` for the dynamic batch
//!   dimension), requests are checked against it, and every operator is checked
//!   at load time: one the loader cannot run is named in the error, never met
//!   at inference.
//! - [`register_onnx`] registers an exported file with its metadata and drift
//!   references fitted from a reference batch.
//!
//! tract lacks four ONNX-ML operators that these exporters emit (`Scaler`,
//! `OneHotEncoder`, `TreeEnsembleRegressor`, `ZipMap`); this crate adds them to
//! tract's operator register. `ZipMap` (a sequence of maps in ONNX) is served as
//! the `[N, classes]` probability tensor.
//!
//! ```no_run
//! use mlops_core::{ModelArtifact, ModelLoader, Predictor};
//! use mlops_core::inference::{Tensor, TensorData};
//! use mlops_onnx::OnnxLoader;
//!
//! let artifact = ModelArtifact::new("onnx", std::fs::read("model.onnx")?);
//! let model = OnnxLoader.load(&artifact)?;
//! let x = Tensor::new("input", vec![1, 3], TensorData::Fp32(vec![12.5, 40.0, 3.0]))?;
//! let outputs = model.predict(&[x])?;
//! println!("{:?}", outputs[0].data);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod metadata;
mod model;
mod ops;
mod register;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::sync::Arc;

use mlops_core::model::ModelArtifact;
use mlops_core::{Error, ModelLoader, Predictor, Result};

pub use metadata::{INPUT_REFERENCE_KEY, PREDICTION_REFERENCE_KEY};
pub use model::{FLAVOR, OnnxInfo, OnnxModel};
pub use register::{OnnxRegistration, prepare_onnx, register_onnx};

/// Loads artifacts of the flavor [`FLAVOR`] into [`OnnxModel`] predictors.
///
/// ```
/// use mlops_core::ModelLoader;
/// use mlops_onnx::OnnxLoader;
///
/// assert!(OnnxLoader.can_load("onnx"));
/// assert!(!OnnxLoader.can_load("burn-tabular"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct OnnxLoader;

impl OnnxLoader {
    /// Loads `artifact` as a concrete [`OnnxModel`], after checking its flavor
    /// and digest.
    pub fn load_model(&self, artifact: &ModelArtifact) -> Result<OnnxModel> {
        if artifact.flavor != FLAVOR {
            return Err(Error::invalid_input(
                format!("artifact flavor '{}'", artifact.flavor),
                format!("the ONNX loader reads only '{FLAVOR}'"),
            ));
        }
        artifact.verify()?;
        OnnxModel::from_bytes(&artifact.bytes)
    }
}

impl ModelLoader for OnnxLoader {
    fn flavors(&self) -> Vec<String> {
        vec![FLAVOR.to_owned()]
    }

    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        Ok(Arc::new(self.load_model(artifact)?))
    }
}
