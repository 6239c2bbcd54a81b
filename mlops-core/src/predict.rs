//! Loaded models: [`Predictor`] answers batches, [`ModelLoader`] turns a registry
//! artifact into a predictor. This pair is how serving stays free of any training
//! framework: it only ever sees these two traits.

use std::fmt::Debug;
use std::sync::Arc;

use crate::drift::TableReference;
use crate::error::Result;
use crate::inference::Tensor;
use crate::model::{ModelArtifact, Signature};

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

    /// Answers a batch the caller has already checked with
    /// `self.signature().check_inputs(inputs)`, as the model server does for
    /// every request: an implementation whose `predict` runs that check may
    /// override this to skip it. For such inputs it answers exactly as
    /// [`Predictor::predict`]; for others it still must not panic. The default
    /// calls `predict`.
    fn predict_checked(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.predict(inputs)
    }

    /// The drift reference profile of the training data over the model's inputs,
    /// when the model carries one: the server monitors served inputs against it.
    fn drift_reference(&self) -> Option<&TableReference> {
        None
    }

    /// The reference profile of the model's first output on held-out data, when
    /// the model carries one: the server monitors served predictions against it.
    fn prediction_reference(&self) -> Option<&TableReference> {
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
