//! [`ModelLoader`] and [`Predictor`]: a saved model loads back and answers as it
//! did; corrupted artifacts and foreign flavors are refused.

use crate::error::Error;
use crate::inference::Tensor;
use crate::model::ModelArtifact;
use crate::predict::{ModelLoader, Predictor};

use super::expect_err;

/// Loads `artifact` with `loader` and checks that the loaded model answers
/// `inputs` exactly as `original` (the model the artifact was saved from) does,
/// has its signature, keeps the row count, and that a corrupted artifact and an
/// unknown flavor are refused.
pub fn round_trip(
    loader: &dyn ModelLoader,
    original: &dyn Predictor,
    artifact: &ModelArtifact,
    inputs: &[Tensor],
) {
    assert!(
        loader.can_load(&artifact.flavor),
        "the loader reads its own flavor"
    );
    let loaded = loader.load(artifact).expect("load the artifact");
    assert_eq!(
        loaded.signature(),
        original.signature(),
        "the signature survives"
    );
    let want = original.predict(inputs).expect("the original answers");
    let got = loaded.predict(inputs).expect("the loaded model answers");
    assert_eq!(got, want, "the loaded model answers as the saved one");
    let rows = inputs.first().map_or(0, Tensor::rows);
    assert!(
        got.iter().all(|t| t.rows() == rows),
        "one output row per input row"
    );
    let checked = loaded
        .signature()
        .check_inputs(inputs)
        .expect("the inputs fit the signature");
    assert_eq!(
        loaded.predict_checked(checked).expect("predict_checked"),
        want,
        "predict_checked answers as predict"
    );

    let mut corrupted = artifact.clone();
    let mut bytes = corrupted.bytes.to_vec();
    if let Some(b) = bytes.first_mut() {
        *b ^= 0xff;
    }
    corrupted.bytes = bytes.into();
    expect_err(
        loader.load(&corrupted),
        "an artifact whose bytes changed",
        |e| matches!(e, Error::Integrity { .. }),
    );
    let foreign = ModelArtifact::new("conformance-unknown-flavor", artifact.bytes.to_vec());
    expect_err(
        loader.load(&foreign),
        "an artifact of a flavor the loader does not read",
        |e| matches!(e, Error::InvalidInput { .. }),
    );
    let mut renamed = inputs.to_vec();
    if let Some(t) = renamed.first_mut() {
        t.name = "conformance_no_such_input".into();
        expect_err(loaded.predict(&renamed), "an unknown input", |e| {
            matches!(e, Error::InvalidInput { .. })
        });
    }
}
