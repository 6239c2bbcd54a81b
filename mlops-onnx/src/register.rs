//! Registering an exported ONNX file: checked by loading it, its signature taken
//! from the graph, and drift references fitted from a reference batch so the
//! server monitors it (and the retraining loop judges it) like a model of ours.

use arrow_array::{ArrayRef, RecordBatch};
use mlops_core::drift::{TableDriftConfig, TableDriftDetector, TableReference};
use mlops_core::inference::{Tensor, tensor_columns};
use mlops_core::model::{ModelArtifact, ModelMetadata, ModelRegistry, ModelVersion};
use mlops_core::{Error, Predictor, Result};

use crate::metadata::with_references;
use crate::model::{FLAVOR, OnnxModel};

/// What to record with an ONNX model besides the file.
#[derive(Debug, Clone, Default)]
pub struct OnnxRegistration {
    /// Description, parameters, metrics, tags and lineage. The signature is the
    /// graph's: one given here must equal it.
    pub metadata: ModelMetadata,
    /// A reference batch in the form requests take (one tensor per input,
    /// typically a sample of the training data). When given, the inputs' drift
    /// reference is fitted on its columns and the predictions' on the model's
    /// first output over it; both travel inside the file.
    pub reference: Option<Vec<Tensor>>,
    /// How the references are fitted (columns, tests, caps, seed).
    pub drift: TableDriftConfig,
}

/// The columns of `tensors` as one batch (see [`tensor_columns`] for the names).
fn batch_of(what: &str, tensors: &[Tensor]) -> Result<RecordBatch> {
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for t in tensors {
        columns.extend(tensor_columns(t)?);
    }
    if columns.is_empty() {
        return Err(Error::invalid_input(
            what,
            "no tensor of shape [N], [N, 1] or [N, F] to profile",
        ));
    }
    RecordBatch::try_from_iter(columns).map_err(|e| Error::invalid_input(what, e.to_string()))
}

fn fit(what: &str, tensors: &[Tensor], config: &TableDriftConfig) -> Result<TableReference> {
    let batch = batch_of(what, tensors)?;
    Ok(TableDriftDetector::fit(&batch, config)?.reference().clone())
}

/// The artifact and metadata [`register_onnx`] registers, without a registry:
/// the file is loaded (so a model the loader cannot run is refused here, naming
/// the operator), the reference batch is run through it, and the references
/// are written into the file's `metadata_props`.
pub fn prepare_onnx(
    onnx: &[u8],
    registration: &OnnxRegistration,
) -> Result<(ModelArtifact, ModelMetadata)> {
    let model = OnnxModel::from_bytes(onnx)?;
    let signature = model.signature().clone();
    let mut metadata = registration.metadata.clone();
    match &metadata.signature {
        Some(given) if *given != signature => {
            return Err(Error::invalid_input(
                "signature",
                format!(
                    "the metadata's signature differs from the graph's ({signature:?}); \
                     leave it out to take the graph's"
                ),
            ));
        }
        _ => metadata.signature = Some(signature),
    }
    let info = model.info();
    for (key, value) in [
        ("onnx.producer", &info.producer),
        ("onnx.producer_version", &info.producer_version),
    ] {
        if !value.is_empty() {
            metadata
                .tags
                .entry(key.to_owned())
                .or_insert_with(|| value.clone());
        }
    }
    let bytes = match &registration.reference {
        None => onnx.to_vec(),
        Some(reference) => {
            let outputs = model.predict(reference).map_err(|e| match e {
                Error::InvalidInput { what, reason } => {
                    Error::invalid_input(format!("reference batch: {what}"), reason)
                }
                other => other,
            })?;
            let inputs = fit("reference batch", reference, &registration.drift)?;
            let mut config = registration.drift.clone();
            config.columns = None;
            let predictions = match outputs.first() {
                Some(first) => Some(fit(
                    "the model's first output",
                    std::slice::from_ref(first),
                    &config,
                )?),
                None => None,
            };
            with_references(onnx, Some(&inputs), predictions.as_ref())?
        }
    };
    Ok((ModelArtifact::new(FLAVOR, bytes), metadata))
}

/// Registers an exported ONNX file as the next version of `model`; see
/// [`prepare_onnx`] for what is checked and recorded.
pub async fn register_onnx(
    registry: &dyn ModelRegistry,
    model: &str,
    onnx: &[u8],
    registration: OnnxRegistration,
) -> Result<ModelVersion> {
    let (artifact, metadata) = prepare_onnx(onnx, &registration)?;
    registry.register(model, artifact, metadata).await
}
