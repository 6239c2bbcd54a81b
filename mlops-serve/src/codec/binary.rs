//! The binary tensor extension (Triton's `binary_tensor_data`, KServe v2), general
//! path: a body whose first `Inference-Header-Content-Length` bytes are the JSON
//! request or response, followed by the raw data of the tensors that carry a
//! `binary_data_size` parameter instead of `data`, in tensor order. This module
//! reads every such body (and words the errors) and writes them.

use mlops_core::inference::{
    InferenceRequest, InferenceResponse, ParameterValue, Parameters, Shape, Tensor, TensorData,
    check_element_count,
};
use mlops_core::{Error, Result};
use serde_json::{Map, Value};

use super::json::{RequestJson, ResponseJson, WireRequest, WireResponse, WireTensor};
use super::raw::{BINARY_DATA_SIZE, HEADER_CONTENT_LENGTH, decode_raw, encode_raw};

/// The body split at the end of its JSON part, `json_len` bytes long.
pub(super) fn split<'a>(
    body: &'a [u8],
    json_len: usize,
    what: &str,
) -> Result<(&'a [u8], &'a [u8])> {
    match json_len {
        n if n <= body.len() => Ok(body.split_at(n)),
        n => Err(Error::invalid_input(
            what,
            format!(
                "{HEADER_CONTENT_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            ),
        )),
    }
}

/// A tensor's `binary_data_size`, if it has one.
fn binary_size(name: &str, parameters: &Parameters) -> std::result::Result<Option<usize>, String> {
    match parameters.get(BINARY_DATA_SIZE) {
        None => Ok(None),
        Some(ParameterValue::Int(n)) if *n >= 0 => usize::try_from(*n)
            .map(Some)
            .map_err(|_| format!("tensor '{name}': {BINARY_DATA_SIZE} {n} is too large")),
        Some(other) => Err(format!(
            "tensor '{name}': {BINARY_DATA_SIZE} must be a non-negative integer, not {other:?}"
        )),
    }
}

/// Builds tensors from raw wire tensors, taking binary data in order from `binary`.
fn tensors_with_binary(raw: Vec<WireTensor>, binary: &[u8], what: &str) -> Result<Vec<Tensor>> {
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let bad = |reason: String| Error::invalid_input(what, reason);
        match binary_size(&r.name, &r.parameters).map_err(bad)? {
            Some(size) => {
                if r.data.is_some() {
                    return Err(bad(format!(
                        "tensor '{}' has both \"data\" and {BINARY_DATA_SIZE}",
                        r.name
                    )));
                }
                let end = offset
                    .checked_add(size)
                    .filter(|&e| e <= binary.len())
                    .ok_or_else(|| {
                        bad(format!(
                            "tensor '{}': {BINARY_DATA_SIZE} {size} runs past the {} binary bytes of the body",
                            r.name,
                            binary.len()
                        ))
                    })?;
                let datatype = r.datatype.known(&r.name).map_err(bad)?;
                let shape = r.dimensions().map_err(bad)?;
                let data = decode_raw(&r.name, datatype, &binary[offset..end]).map_err(bad)?;
                check_element_count(&r.name, &shape, data.len())
                    .map_err(|e| bad(format!("tensor '{}': {e}", r.name)))?;
                offset = end;
                // The size describes the wire, not the tensor.
                let mut parameters = r.parameters;
                parameters.remove(BINARY_DATA_SIZE);
                out.push(Tensor {
                    name: r.name,
                    shape,
                    parameters,
                    data,
                });
            }
            None => out.push(r.into_tensor().map_err(bad)?),
        }
    }
    if offset != binary.len() {
        return Err(Error::invalid_input(
            what,
            format!(
                "{} binary bytes follow the JSON but the tensors' {BINARY_DATA_SIZE} add up to {offset}",
                binary.len()
            ),
        ));
    }
    Ok(out)
}

/// Decodes a binary-extension request from its JSON part `json` and the bytes
/// after it.
pub(super) fn decode_request(json: &[u8], binary: &[u8]) -> Result<InferenceRequest> {
    let raw: WireRequest = serde_json::from_slice(json)
        .map_err(|e| Error::invalid_input("inference request", e.to_string()))?;
    let inputs = tensors_with_binary(raw.inputs, binary, "inference request")?;
    let request = InferenceRequest {
        id: raw.id,
        parameters: raw.parameters,
        inputs,
        outputs: raw.outputs,
    };
    request.check_unique_names()?;
    Ok(request)
}

/// Decodes a binary-extension response from its JSON part and the bytes after it.
pub(super) fn decode_response(json: &[u8], binary: &[u8]) -> Result<InferenceResponse> {
    let raw: WireResponse = serde_json::from_slice(json)
        .map_err(|e| Error::invalid_input("inference response", e.to_string()))?;
    Ok(InferenceResponse {
        model_name: raw.model_name,
        model_version: raw.model_version,
        id: raw.id,
        parameters: raw.parameters,
        outputs: tensors_with_binary(raw.outputs, binary, "inference response")?,
    })
}

/// The tensors with those for which `binary` holds emptied: their JSON entries
/// carry no data (so NaN in them is fine).
fn shells(tensors: &[Tensor], binary: &impl Fn(&str) -> bool) -> Vec<Tensor> {
    tensors
        .iter()
        .map(|t| {
            if binary(&t.name) {
                Tensor {
                    name: t.name.clone(),
                    shape: Shape::from_slice(&[0]),
                    parameters: t.parameters.clone(),
                    data: TensorData::with_capacity(t.datatype(), 0),
                }
            } else {
                t.clone()
            }
        })
        .collect()
}

/// Encodes a request with the inputs for which `binary` holds as binary data.
pub(super) fn encode_request(
    request: &InferenceRequest,
    binary: impl Fn(&str) -> bool,
) -> Result<(Vec<u8>, Option<usize>)> {
    let shell = InferenceRequest {
        id: request.id.clone(),
        parameters: request.parameters.clone(),
        inputs: shells(&request.inputs, &binary),
        outputs: request.outputs.clone(),
    };
    let value = serde_json::to_value(RequestJson(&shell))
        .map_err(|e| Error::invalid_input("inference request", e.to_string()))?;
    encode(value, "inputs", &request.inputs, binary)
}

/// Encodes a response with the outputs for which `binary` holds as binary data.
pub(super) fn encode_response(
    response: &InferenceResponse,
    binary: impl Fn(&str) -> bool,
) -> Result<(Vec<u8>, Option<usize>)> {
    let shell = InferenceResponse {
        model_name: response.model_name.clone(),
        model_version: response.model_version.clone(),
        id: response.id.clone(),
        parameters: response.parameters.clone(),
        outputs: shells(&response.outputs, &binary),
    };
    let value = serde_json::to_value(ResponseJson(&shell))
        .map_err(|e| Error::invalid_input("inference response", e.to_string()))?;
    encode(value, "outputs", &response.outputs, binary)
}

/// Rewrites the `field` tensors of `value` for which `binary` holds: `data`
/// removed, `binary_data_size` set, the raw bytes appended after the JSON.
fn encode(
    mut value: Value,
    field: &str,
    tensors: &[Tensor],
    binary: impl Fn(&str) -> bool,
) -> Result<(Vec<u8>, Option<usize>)> {
    let mut raw = Vec::new();
    let mut any = false;
    if let Some(Value::Array(items)) = value.get_mut(field) {
        for (item, t) in items.iter_mut().zip(tensors) {
            if !binary(&t.name) {
                continue;
            }
            any = true;
            let start = raw.len();
            encode_raw(&t.data, &mut raw);
            if let Value::Object(obj) = item {
                obj.remove("data");
                obj.insert(
                    "shape".into(),
                    Value::Array(t.shape.iter().map(|&d| Value::from(d)).collect()),
                );
                let params = obj
                    .entry("parameters")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(p) = params {
                    p.insert(BINARY_DATA_SIZE.into(), Value::from(raw.len() - start));
                }
            }
        }
    }
    let mut body = serde_json::to_vec(&value)
        .map_err(|e| Error::invalid_input("inference message", e.to_string()))?;
    if !any {
        return Ok((body, None));
    }
    let json_len = body.len();
    body.extend_from_slice(&raw);
    Ok((body, Some(json_len)))
}
