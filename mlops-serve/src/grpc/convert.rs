//! Between the protocol's protobuf messages and the SDK's inference types, and
//! from errors to gRPC statuses.

use mlops_core::inference::{
    Datatype, InferenceRequest, InferenceResponse, ParameterValue, Parameters, RequestOutput,
    Shape, Tensor, TensorData, TensorSpec,
};
use mlops_core::{Error, Result};
use tonic::{Code, Status};

use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    infer_parameter::ParameterChoice,
};
use crate::codec::raw::{decode_raw, encode_raw};

/// The gRPC status an error is answered with (the HTTP face's mapping, in
/// gRPC's codes), its message the error's.
pub(super) fn status(error: &Error) -> Status {
    let code = match error {
        Error::InvalidInput { .. } | Error::SchemaMismatch { .. } => Code::InvalidArgument,
        Error::Unauthorized { .. } => Code::Unauthenticated,
        Error::Forbidden { .. } => Code::PermissionDenied,
        Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::Conflict { .. } => Code::FailedPrecondition,
        Error::Unavailable { .. } => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, error.to_string())
}

fn parameters_in(map: std::collections::HashMap<String, InferParameter>) -> Result<Parameters> {
    map.into_iter()
        .map(|(k, p)| {
            let v = match p.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => ParameterValue::Bool(b),
                Some(ParameterChoice::Int64Param(i)) => ParameterValue::Int(i),
                Some(ParameterChoice::StringParam(s)) => ParameterValue::String(s),
                Some(ParameterChoice::DoubleParam(d)) => ParameterValue::Double(d),
                Some(ParameterChoice::Uint64Param(u)) => match i64::try_from(u) {
                    Ok(i) => ParameterValue::Int(i),
                    Err(_) => ParameterValue::Double(u as f64),
                },
                None => {
                    return Err(Error::invalid_input(
                        format!("parameter {k:?}"),
                        "it has no value",
                    ));
                }
            };
            Ok((k, v))
        })
        .collect()
}

fn parameters_out(p: &Parameters) -> std::collections::HashMap<String, InferParameter> {
    p.iter()
        .map(|(k, v)| {
            let choice = match v {
                ParameterValue::Bool(b) => ParameterChoice::BoolParam(*b),
                ParameterValue::Int(i) => ParameterChoice::Int64Param(*i),
                ParameterValue::Double(d) => ParameterChoice::DoubleParam(*d),
                ParameterValue::String(s) => ParameterChoice::StringParam(s.clone()),
            };
            (
                k.clone(),
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect()
}

fn shape_in(name: &str, dims: &[i64]) -> Result<Shape> {
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Error::invalid_input(
                    format!("input '{name}' shape"),
                    format!("{d} is not a dimension (requests carry concrete, non-negative sizes)"),
                )
            })
        })
        .collect::<Result<Vec<usize>>>()
        .map(Shape::from)
}

/// Narrows 32-bit `contents` to a smaller integer type, naming the first
/// element out of its range.
fn narrow<T: TryFrom<V>, V: Copy + std::fmt::Display>(
    name: &str,
    datatype: Datatype,
    values: Vec<V>,
) -> Result<Vec<T>> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            T::try_from(v).map_err(|_| {
                Error::invalid_input(
                    format!("input '{name}' element {i}"),
                    format!("{v} does not fit {datatype}"),
                )
            })
        })
        .collect()
}

fn contents_in(name: &str, datatype: Datatype, c: InferTensorContents) -> Result<TensorData> {
    Ok(match datatype {
        Datatype::Bool => TensorData::Bool(c.bool_contents),
        Datatype::Uint8 => TensorData::Uint8(narrow(name, datatype, c.uint_contents)?),
        Datatype::Uint16 => TensorData::Uint16(narrow(name, datatype, c.uint_contents)?),
        Datatype::Uint32 => TensorData::Uint32(c.uint_contents),
        Datatype::Uint64 => TensorData::Uint64(c.uint64_contents),
        Datatype::Int8 => TensorData::Int8(narrow(name, datatype, c.int_contents)?),
        Datatype::Int16 => TensorData::Int16(narrow(name, datatype, c.int_contents)?),
        Datatype::Int32 => TensorData::Int32(c.int_contents),
        Datatype::Int64 => TensorData::Int64(c.int64_contents),
        Datatype::Fp16 => TensorData::Fp16(c.fp32_contents),
        Datatype::Fp32 => TensorData::Fp32(c.fp32_contents),
        Datatype::Fp64 => TensorData::Fp64(c.fp64_contents),
        Datatype::Bytes => TensorData::Bytes(c.bytes_contents.into_iter().collect()),
    })
}

fn contents_out(data: &TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint16(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::Uint32(v) => c.uint_contents = v.clone(),
        TensorData::Uint64(v) => c.uint64_contents = v.clone(),
        TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::Int32(v) => c.int_contents = v.clone(),
        TensorData::Int64(v) => c.int64_contents = v.clone(),
        TensorData::Fp16(v) | TensorData::Fp32(v) => c.fp32_contents = v.clone(),
        TensorData::Fp64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.clone(),
    }
    c
}

/// A `ModelInferRequest` as the SDK's request, and whether its inputs came raw.
pub(super) fn request_in(r: ModelInferRequest) -> Result<(InferenceRequest, bool)> {
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(Error::invalid_input(
            "raw_input_contents",
            format!(
                "{} entries for {} inputs: give one per input, in order",
                r.raw_input_contents.len(),
                r.inputs.len()
            ),
        ));
    }
    let mut raws = r.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for input in r.inputs {
        let InferInputTensor {
            name,
            datatype,
            shape,
            parameters,
            contents,
        } = input;
        let datatype: Datatype = datatype.parse().map_err(|e: Error| {
            Error::invalid_input(format!("input '{name}' datatype"), e.to_string())
        })?;
        let shape = shape_in(&name, &shape)?;
        let data = match (raws.next(), contents) {
            (Some(_), Some(c)) if c != InferTensorContents::default() => {
                return Err(Error::invalid_input(
                    format!("input '{name}'"),
                    "it has both contents and raw_input_contents: give one",
                ));
            }
            (Some(bytes), _) => decode_raw(&name, datatype, &bytes)
                .map_err(|why| Error::invalid_input(format!("input '{name}'"), why))?,
            (None, Some(c)) => contents_in(&name, datatype, c)?,
            (None, None) => contents_in(&name, datatype, InferTensorContents::default())?,
        };
        let mut tensor = Tensor::new(name, shape, data)?;
        tensor.parameters = parameters_in(parameters)?;
        inputs.push(tensor);
    }
    let mut request = InferenceRequest::new(inputs);
    request.id = (!r.id.is_empty()).then_some(r.id);
    request.parameters = parameters_in(r.parameters)?;
    if !r.outputs.is_empty() {
        request.outputs = Some(
            r.outputs
                .into_iter()
                .map(|o| {
                    Ok(RequestOutput {
                        name: o.name,
                        parameters: parameters_in(o.parameters)?,
                    })
                })
                .collect::<Result<_>>()?,
        );
    }
    request.check_unique_names()?;
    Ok((request, raw))
}

/// The SDK's answer as a `ModelInferResponse`: outputs raw when `raw`.
pub(super) fn response_out(r: &InferenceResponse, raw: bool) -> ModelInferResponse {
    let mut raw_output_contents = Vec::new();
    let outputs = r
        .outputs
        .iter()
        .map(|t| {
            let contents = if raw {
                let mut bytes = Vec::new();
                encode_raw(&t.data, &mut bytes);
                raw_output_contents.push(bytes);
                None
            } else {
                Some(contents_out(&t.data))
            };
            InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype().to_string(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: parameters_out(&t.parameters),
                contents,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: r.model_name.clone(),
        model_version: r.model_version.clone().unwrap_or_default(),
        id: r.id.clone().unwrap_or_default(),
        parameters: parameters_out(&r.parameters),
        outputs,
        raw_output_contents,
    }
}

/// A tensor spec as the protocol's metadata.
pub(super) fn spec_out(s: &TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: s.name.clone(),
        datatype: s.datatype.to_string(),
        shape: s.shape.clone(),
    }
}

/// The error a gRPC status stands for (the reverse of [`status`]), for the
/// client: `server` names where it came from.
pub(super) fn error(server: &str, s: &Status) -> Error {
    let message = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => Error::invalid_input(server, message),
        Code::NotFound => Error::not_found(mlops_core::ResourceKind::Object, message),
        Code::Unauthenticated => Error::Unauthorized { reason: message },
        Code::PermissionDenied => Error::Forbidden { reason: message },
        Code::FailedPrecondition | Code::Aborted => Error::conflict(server, message),
        Code::AlreadyExists => Error::conflict(server, message),
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => {
            Error::Unavailable {
                what: server.to_owned(),
                reason: message,
            }
        }
        _ => Error::backend(server.to_owned(), format!("{:?}: {message}", s.code())),
    }
}

/// The SDK's request as a `ModelInferRequest` with raw inputs (the compact
/// form every server of the protocol reads).
pub(super) fn request_out(
    model: &str,
    version: Option<&str>,
    r: &InferenceRequest,
) -> ModelInferRequest {
    let mut raw_input_contents = Vec::with_capacity(r.inputs.len());
    let inputs = r
        .inputs
        .iter()
        .map(|t| {
            let mut bytes = Vec::new();
            encode_raw(&t.data, &mut bytes);
            raw_input_contents.push(bytes);
            InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype().to_string(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: parameters_out(&t.parameters),
                contents: None,
            }
        })
        .collect();
    ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.unwrap_or_default().to_owned(),
        id: r.id.clone().unwrap_or_default(),
        parameters: parameters_out(&r.parameters),
        inputs,
        outputs: r
            .outputs
            .iter()
            .flatten()
            .map(
                |o| super::proto::model_infer_request::InferRequestedOutputTensor {
                    name: o.name.clone(),
                    parameters: parameters_out(&o.parameters),
                },
            )
            .collect(),
        raw_input_contents,
    }
}

/// A `ModelInferResponse` (raw or typed outputs) as the SDK's answer.
pub(super) fn response_in(r: ModelInferResponse) -> Result<InferenceResponse> {
    let raw = !r.raw_output_contents.is_empty();
    if raw && r.raw_output_contents.len() != r.outputs.len() {
        return Err(Error::invalid_input(
            "raw_output_contents",
            format!(
                "{} entries for {} outputs",
                r.raw_output_contents.len(),
                r.outputs.len()
            ),
        ));
    }
    let mut raws = r.raw_output_contents.into_iter();
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            let datatype: Datatype = o.datatype.parse()?;
            let shape = shape_in(&o.name, &o.shape)?;
            let data = match raws.next() {
                Some(bytes) => decode_raw(&o.name, datatype, &bytes)
                    .map_err(|why| Error::invalid_input(format!("output '{}'", o.name), why))?,
                None => contents_in(&o.name, datatype, o.contents.unwrap_or_default())?,
            };
            let mut t = Tensor::new(o.name, shape, data)?;
            t.parameters = parameters_in(o.parameters)?;
            Ok(t)
        })
        .collect::<Result<_>>()?;
    Ok(InferenceResponse {
        model_name: r.model_name,
        model_version: (!r.model_version.is_empty()).then_some(r.model_version),
        id: (!r.id.is_empty()).then_some(r.id),
        parameters: parameters_in(r.parameters)?,
        outputs,
    })
}

/// The protocol's tensor metadata as a spec.
pub(super) fn spec_in(m: TensorMetadata) -> Result<TensorSpec> {
    Ok(TensorSpec::new(m.name, m.datatype.parse()?, m.shape))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        c: InferTensorContents,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents: Some(c),
        }
    }

    #[test]
    fn typed_and_raw_tensors_read_alike_and_answers_follow_the_request() {
        let typed = ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                vec![2],
                InferTensorContents {
                    fp32_contents: vec![1.5, -2.0],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let (a, raw) = request_in(typed).unwrap();
        assert!(!raw);
        let mut bytes = Vec::new();
        encode_raw(&TensorData::Fp32(vec![1.5, -2.0]), &mut bytes);
        let raw_request = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: None,
                ..input("x", "FP32", vec![2], InferTensorContents::default())
            }],
            raw_input_contents: vec![bytes.clone()],
            ..Default::default()
        };
        let (b, raw) = request_in(raw_request).unwrap();
        assert!(raw);
        assert_eq!(a.inputs, b.inputs);
        let answer = InferenceResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: None,
            parameters: Parameters::default(),
            outputs: a.inputs.clone(),
        };
        assert_eq!(response_out(&answer, true).raw_output_contents, vec![bytes]);
        let typed_out = response_out(&answer, false);
        assert!(typed_out.raw_output_contents.is_empty());
        assert_eq!(
            typed_out.outputs[0]
                .contents
                .as_ref()
                .unwrap()
                .fp32_contents,
            vec![1.5, -2.0]
        );
    }

    #[test]
    fn bad_tensors_are_invalid_arguments_naming_the_input() {
        let count = ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                vec![3],
                InferTensorContents {
                    fp32_contents: vec![1.0],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let range = ModelInferRequest {
            inputs: vec![input(
                "b",
                "INT8",
                vec![1],
                InferTensorContents {
                    int_contents: vec![300],
                    ..Default::default()
                },
            )],
            ..Default::default()
        };
        let raw_count = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![1], InferTensorContents::default())],
            raw_input_contents: vec![vec![0; 4], vec![0; 4]],
            ..Default::default()
        };
        let ragged_raw = ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: None,
                ..input("x", "FP32", vec![1], InferTensorContents::default())
            }],
            raw_input_contents: vec![vec![0; 3]],
            ..Default::default()
        };
        let negative = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![-1], InferTensorContents::default())],
            ..Default::default()
        };
        let datatype = ModelInferRequest {
            inputs: vec![input("x", "FP128", vec![0], InferTensorContents::default())],
            ..Default::default()
        };
        for (r, needle) in [
            (count, "'x'"),
            (range, "300"),
            (raw_count, "2 entries for 1 inputs"),
            (ragged_raw, "'x'"),
            (negative, "-1"),
            (datatype, "'x'"),
        ] {
            let e = request_in(r).unwrap_err();
            let s = status(&e);
            assert_eq!(s.code(), Code::InvalidArgument, "{e}");
            assert!(s.message().contains(needle), "{needle}: {}", s.message());
        }
    }
}
