//! Drift references carried inside the ONNX file itself, in its
//! `metadata_props`, so the artifact stays one file any ONNX runtime still reads.

use std::collections::BTreeMap;

use mlops_core::drift::TableReference;
use mlops_core::{Error, Result};
use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

/// The key of the inputs' drift reference (JSON of a `TableReference`).
pub const INPUT_REFERENCE_KEY: &str = "mlops.input_reference";
/// The key of the predictions' drift reference (JSON of a `TableReference`).
pub const PREDICTION_REFERENCE_KEY: &str = "mlops.prediction_reference";

/// What the loader reads from `metadata_props`.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    pub(crate) input_reference: Option<TableReference>,
    pub(crate) prediction_reference: Option<TableReference>,
    /// Every other entry.
    pub(crate) other: BTreeMap<String, String>,
}

/// The drift references and other metadata of `proto`; a reference that is not a
/// valid `TableReference` is an error naming its key.
pub(crate) fn extras(proto: &ModelProto) -> Result<Extras> {
    let mut extras = Extras::default();
    for entry in &proto.metadata_props {
        let slot = match entry.key.as_str() {
            INPUT_REFERENCE_KEY => &mut extras.input_reference,
            PREDICTION_REFERENCE_KEY => &mut extras.prediction_reference,
            _ => {
                extras.other.insert(entry.key.clone(), entry.value.clone());
                continue;
            }
        };
        if slot.is_some() {
            return Err(Error::invalid_input(
                format!("ONNX metadata '{}'", entry.key),
                "given more than once",
            ));
        }
        *slot = Some(serde_json::from_str(&entry.value).map_err(|e| {
            Error::invalid_input(
                format!("ONNX metadata '{}'", entry.key),
                format!("not a drift reference: {e}"),
            )
        })?);
    }
    Ok(extras)
}

/// `onnx` with the drift references added to its `metadata_props`.
///
/// The entries are appended as a second serialized `ModelProto` holding only
/// them: protobuf merges repeated fields of concatenated messages, so every byte
/// of the original file is kept, including fields newer than the schema this
/// crate knows. A file that already carries a reference of ours is refused
/// rather than given a second one.
pub(crate) fn with_references(
    onnx: &[u8],
    input: Option<&TableReference>,
    prediction: Option<&TableReference>,
) -> Result<Vec<u8>> {
    let proto = ModelProto::decode(onnx).map_err(|e| {
        Error::invalid_input("ONNX model", format!("not a readable ONNX file: {e}"))
    })?;
    let mut appended = ModelProto::default();
    for (key, reference) in [
        (INPUT_REFERENCE_KEY, input),
        (PREDICTION_REFERENCE_KEY, prediction),
    ] {
        let Some(reference) = reference else { continue };
        if proto.metadata_props.iter().any(|e| e.key == key) {
            return Err(Error::conflict(
                format!("ONNX metadata '{key}'"),
                "the file already carries a drift reference; register it as it is",
            ));
        }
        let value =
            serde_json::to_string(reference).map_err(|e| Error::backend("serde_json", e))?;
        appended.metadata_props.push(StringStringEntryProto {
            key: key.to_owned(),
            value,
        });
    }
    let mut bytes = onnx.to_vec();
    appended
        .encode(&mut bytes)
        .map_err(|e| Error::backend("prost", e))?;
    Ok(bytes)
}
