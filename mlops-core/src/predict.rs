//! Loaded models: [`Predictor`] answers batches, [`ModelLoader`] turns a registry
//! artifact into a predictor. This pair is how serving stays free of any training
//! framework: it only ever sees these two traits.

use std::fmt::Debug;
use std::sync::Arc;

use crate::drift::DriftDetector;
use crate::error::Result;
use crate::inference::Tensor;
use crate::model::{CheckedInputs, ModelArtifact, Signature};

/// A model ready to answer.
///
/// Contract for implementations:
/// - `predict` is pure with respect to the model: the same inputs give the same
///   outputs, and concurrent calls from many threads are safe;
/// - inputs are checked against [`Predictor::signature`] (use
///   [`Signature::check_inputs`]); a mismatch gives
///   [`Error::InvalidInput`](crate::Error::InvalidInput) naming the input, never a panic;
/// - outputs have as many rows (first dimension) as the inputs, in the same order.
///
/// CPU-bound: async callers run it on a blocking pool.
pub trait Predictor: Send + Sync + Debug {
    /// The inputs the model takes and the outputs it gives.
    fn signature(&self) -> &Signature;

    /// Answers one batch: one tensor per declared input, all with the same rows.
    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;

    /// Answers a batch that passed [`Signature::check_inputs`], as the model server
    /// does for every request. An implementation whose `predict` runs that check
    /// may override this to skip it when `inputs.is_for(self.signature())`
    /// ([`CheckedInputs::is_for`]); it answers exactly as [`Predictor::predict`].
    /// The default calls `predict`.
    fn predict_checked(&self, inputs: CheckedInputs<'_>) -> Result<Vec<Tensor>> {
        self.predict(inputs.tensors())
    }

    /// The detector of drift in the model's inputs, when the model carries a
    /// reference (typically a profile of its training data): the server watches
    /// served inputs with it unless its deployment names another.
    fn input_drift(&self) -> Option<Arc<dyn DriftDetector>> {
        None
    }

    /// The detector of drift in the model's first output, when the model carries a
    /// reference (typically its predictions on held-out data): the server watches
    /// served predictions with it unless its deployment names another.
    fn prediction_drift(&self) -> Option<Arc<dyn DriftDetector>> {
        None
    }
}

/// Turns artifacts of some flavors into predictors.
///
/// Contract for implementations:
/// - `load` verifies the artifact's digest before reading it
///   ([`ModelArtifact::verify`]) and fails with
///   [`Error::Integrity`](crate::Error::Integrity) when it does not match;
/// - an artifact of a flavor it does not handle gives
///   [`Error::InvalidInput`](crate::Error::InvalidInput) naming the flavor;
/// - a predictor loaded from an artifact answers exactly as the model that was
///   saved into it.
pub trait ModelLoader: Send + Sync + Debug {
    /// The artifact flavors this loader reads.
    fn flavors(&self) -> Vec<String>;

    /// Whether this loader reads `flavor`.
    fn can_load(&self, flavor: &str) -> bool {
        self.flavors().iter().any(|f| f == flavor)
    }

    /// A predictor for `artifact`.
    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>>;
}
