//! The binary tensor extension (Triton's `binary_tensor_data`, KServe v2): a body
//! whose first `Inference-Header-Content-Length` bytes are the JSON request or
//! response, followed by the raw data of the tensors that carry a
//! `binary_data_size` parameter instead of `data`, in tensor order.
//!
//! Raw data is little-endian; `BOOL` is one byte per element; `FP16` is IEEE half
//! precision; `BYTES` elements are each a 4-byte little-endian length and the bytes.
//!
//! ```
//! use mlops_core::inference::{InferenceRequest, InferenceResponse, Tensor, TensorData};
//!
//! // A request with one binary input: 2 FP32 values = 8 bytes after the JSON.
//! let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
//! let mut body = json.to_vec();
//! body.extend_from_slice(&1.5f32.to_le_bytes());
//! body.extend_from_slice(&(-2.0f32).to_le_bytes());
//! let request = InferenceRequest::from_body(&body, Some(json.len()))?;
//! assert_eq!(request.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
//!
//! // A response with every output in binary.
//! let response = InferenceResponse {
//!     model_name: "m".into(), model_version: None, id: None, parameters: Default::default(),
//!     outputs: vec![Tensor::new("y", vec![1], TensorData::Fp32(vec![0.25]))?],
//! };
//! let (body, json_len) = response.to_body(|_| true)?;
//! assert_eq!(body.len(), json_len.unwrap() + 4);
//! let back = InferenceResponse::from_body(&body, json_len)?;
//! assert_eq!(back.outputs, response.outputs);
//! # Ok::<(), mlops_core::Error>(())
//! ```

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    Datatype, InferenceRequest, InferenceResponse, ParameterValue, Parameters, RequestOutput,
    Shape, Tensor, TensorData, WireTensor, check_element_count,
};
use crate::error::{Error, Result};

/// The parameter naming a tensor's binary size.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The per-output parameter asking for binary data.
pub const BINARY_DATA: &str = "binary_data";
/// The request parameter asking for every output in binary.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// The HTTP header giving the JSON part's length.
pub const HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";

fn split(body: &[u8], json_len: Option<usize>, what: &str) -> Result<(usize, usize)> {
    match json_len {
        None => Ok((body.len(), body.len())),
        Some(n) if n <= body.len() => Ok((n, body.len())),
        Some(n) => Err(Error::invalid_input(
            what,
            format!(
                "{HEADER_CONTENT_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            ),
        )),
    }
}

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

/// Reads raw little-endian elements of `datatype` from `bytes`.
pub(super) fn decode_raw(
    name: &str,
    datatype: Datatype,
    bytes: &[u8],
) -> std::result::Result<TensorData, String> {
    fn chunks<const N: usize, T>(
        name: &str,
        datatype: Datatype,
        bytes: &[u8],
        f: impl Fn([u8; N]) -> T,
    ) -> std::result::Result<Vec<T>, String> {
        if !bytes.len().is_multiple_of(N) {
            return Err(format!(
                "tensor '{name}': {} binary bytes is not a whole number of {datatype} elements ({N} bytes each)",
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    let d = datatype;
    Ok(match datatype {
        Datatype::Bool => TensorData::Bool(
            bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!(
                        "tensor '{name}': BOOL element {i} is byte {b}, not 0 or 1"
                    )),
                })
                .collect::<std::result::Result<_, _>>()?,
        ),
        Datatype::Uint8 => TensorData::Uint8(bytes.to_vec()),
        Datatype::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        Datatype::Uint16 => TensorData::Uint16(chunks(name, d, bytes, u16::from_le_bytes)?),
        Datatype::Int16 => TensorData::Int16(chunks(name, d, bytes, i16::from_le_bytes)?),
        Datatype::Uint32 => TensorData::Uint32(chunks(name, d, bytes, u32::from_le_bytes)?),
        Datatype::Int32 => TensorData::Int32(chunks(name, d, bytes, i32::from_le_bytes)?),
        Datatype::Uint64 => TensorData::Uint64(chunks(name, d, bytes, u64::from_le_bytes)?),
        Datatype::Int64 => TensorData::Int64(chunks(name, d, bytes, i64::from_le_bytes)?),
        Datatype::Fp16 => TensorData::Fp16(chunks(name, d, bytes, |b| {
            f16_to_f32(u16::from_le_bytes(b))
        })?),
        Datatype::Fp32 => TensorData::Fp32(chunks(name, d, bytes, f32::from_le_bytes)?),
        Datatype::Fp64 => TensorData::Fp64(chunks(name, d, bytes, f64::from_le_bytes)?),
        Datatype::Bytes => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(format!(
                        "tensor '{name}': BYTES element {} has a truncated length prefix",
                        out.len()
                    ));
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest = &rest[4..];
                if len > rest.len() {
                    return Err(format!(
                        "tensor '{name}': BYTES element {} claims {len} bytes but {} remain",
                        out.len(),
                        rest.len()
                    ));
                }
                out.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            TensorData::Bytes(out)
        }
    })
}

/// Writes the elements raw, little-endian.
fn encode_raw(data: &TensorData, out: &mut Vec<u8>) {
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::Uint16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Uint32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Uint64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Int64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp16(v) => v
            .iter()
            .for_each(|&x| out.extend_from_slice(&f32_to_f16(x).to_le_bytes())),
        TensorData::Fp32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Fp64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bytes(v) => {
            for b in v {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

/// IEEE half to single precision (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Single to half precision, rounding to nearest even (values held as `FP16` are
/// exact halves already, so this is exact for them).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let half_mant = mant >> 13;
    let rest = mant & 0x1fff;
    let mut h = (sign as u32) | ((e as u32) << 10) | half_mant;
    if rest > 0x1000 || (rest == 0x1000 && (half_mant & 1) == 1) {
        h += 1;
    }
    h as u16
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

#[derive(Deserialize)]
struct RawBinaryRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<WireTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Deserialize)]
struct RawBinaryResponse {
    model_name: String,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    outputs: Vec<WireTensor>,
}

impl InferenceRequest {
    /// Decodes a request body: plain JSON when `json_len` is `None`, else the
    /// binary tensor extension with the JSON part `json_len` bytes long.
    pub fn from_body(body: &[u8], json_len: Option<usize>) -> Result<Self> {
        let (json_end, _) = split(body, json_len, "inference request")?;
        if json_len.is_none() {
            return Self::from_json(body);
        }
        let (json, binary) = body.split_at(json_end);
        match super::fast::parse_binary_request(json, binary) {
            Some(request) => Ok(request),
            None => Self::from_binary_parts(json, binary),
        }
    }

    /// The general decoder of a binary-extension body's JSON part `json` and the
    /// bytes after it, which also words every error.
    pub(crate) fn from_binary_parts(json: &[u8], binary: &[u8]) -> Result<Self> {
        let raw: RawBinaryRequest = serde_json::from_slice(json)
            .map_err(|e| Error::invalid_input("inference request", e.to_string()))?;
        let inputs = tensors_with_binary(raw.inputs, binary, "inference request")?;
        let request = Self {
            id: raw.id,
            parameters: raw.parameters,
            inputs,
            outputs: raw.outputs,
        };
        request
            .check_unique_names()
            .map_err(|reason| Error::invalid_input("inference request", reason))?;
        Ok(request)
    }

    /// Whether output `name` should be returned as binary data: the output's own
    /// `binary_data` parameter, else the request's `binary_data_output`.
    pub fn wants_binary(&self, name: &str) -> bool {
        let flag =
            |p: &Parameters, key: &str| matches!(p.get(key), Some(ParameterValue::Bool(true)));
        if let Some(o) = self.outputs.iter().flatten().find(|o| o.name == name)
            && let Some(ParameterValue::Bool(b)) = o.parameters.get(BINARY_DATA)
        {
            return *b;
        }
        flag(&self.parameters, BINARY_DATA_OUTPUT)
    }

    /// Encodes the request with the inputs for which `binary(name)` holds as binary
    /// data; returns the body and, when any input is binary, the JSON part's length
    /// (the `Inference-Header-Content-Length` value).
    pub fn to_body(&self, binary: impl Fn(&str) -> bool) -> Result<(Vec<u8>, Option<usize>)> {
        if !self.inputs.iter().any(|t| binary(&t.name)) {
            let body = serde_json::to_vec(self)
                .map_err(|e| Error::invalid_input("inference request", e.to_string()))?;
            return Ok((body, None));
        }
        let mut shell = self.clone();
        for t in &mut shell.inputs {
            if binary(&t.name) {
                t.data = TensorData::with_capacity(t.datatype(), 0);
                t.shape = Shape::from_slice(&[0]);
            }
        }
        let value = serde_json::to_value(&shell)
            .map_err(|e| Error::invalid_input("inference request", e.to_string()))?;
        encode(value, "inputs", &self.inputs, binary)
    }
}

impl InferenceResponse {
    /// Decodes a response body, plain or with binary outputs.
    pub fn from_body(body: &[u8], json_len: Option<usize>) -> Result<Self> {
        if json_len.is_none() {
            return Self::from_json(body);
        }
        let (json_end, _) = split(body, json_len, "inference response")?;
        let raw: RawBinaryResponse = serde_json::from_slice(&body[..json_end])
            .map_err(|e| Error::invalid_input("inference response", e.to_string()))?;
        Ok(Self {
            model_name: raw.model_name,
            model_version: raw.model_version,
            id: raw.id,
            parameters: raw.parameters,
            outputs: tensors_with_binary(raw.outputs, &body[json_end..], "inference response")?,
        })
    }

    /// Encodes the response with the outputs for which `binary(name)` holds as
    /// binary data; returns the body and, when any output is binary, the JSON
    /// part's length. Binary outputs may hold NaN and infinities, which JSON cannot.
    pub fn to_body(&self, binary: impl Fn(&str) -> bool) -> Result<(Vec<u8>, Option<usize>)> {
        if !self.outputs.iter().any(|t| binary(&t.name)) {
            // Room for the usual answer up front: growing from empty reallocates
            // several times for even a one-value response.
            let elements: usize = self.outputs.iter().map(|t| t.data.len()).sum();
            let mut body = Vec::with_capacity(256 + 24 * elements.min(1 << 16));
            serde_json::to_writer(&mut body, self)
                .map_err(|e| Error::invalid_input("inference response", e.to_string()))?;
            return Ok((body, None));
        }
        // Serialize binary outputs without data: NaN in them is fine.
        let mut shell = self.clone();
        for t in &mut shell.outputs {
            if binary(&t.name) {
                t.data = TensorData::with_capacity(t.datatype(), 0);
                t.shape = Shape::from_slice(&[0]);
            }
        }
        let value = serde_json::to_value(&shell)
            .map_err(|e| Error::invalid_input("inference response", e.to_string()))?;
        encode(value, "outputs", &self.outputs, binary)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.333_251_95,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(x)), x, "{x}");
        }
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert_eq!(f16_to_f32(f32_to_f16(1e6)), f32::INFINITY);
    }

    #[test]
    fn every_datatype_round_trips_in_binary() {
        let tensors = vec![
            Tensor::new("b", vec![2], TensorData::Bool(vec![true, false])).unwrap(),
            Tensor::new("u16", vec![2], TensorData::Uint16(vec![1, 65535])).unwrap(),
            Tensor::new("i64", vec![1, 2], TensorData::Int64(vec![-1, i64::MAX])).unwrap(),
            Tensor::new("h", vec![1], TensorData::Fp16(vec![0.5])).unwrap(),
            Tensor::new("f", vec![2], TensorData::Fp32(vec![f32::NAN, 1.0])).unwrap(),
            Tensor::new(
                "s",
                vec![2],
                TensorData::Bytes(vec![b"ab".to_vec(), vec![0xff]]),
            )
            .unwrap(),
        ];
        let response = InferenceResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: Some("r".into()),
            parameters: Parameters::new(),
            outputs: tensors.clone(),
        };
        let (body, len) = response.to_body(|n| n != "b").unwrap();
        let back = InferenceResponse::from_body(&body, len).unwrap();
        assert_eq!(back.outputs[0], tensors[0]);
        for (a, b) in back.outputs.iter().zip(&tensors).skip(1) {
            assert_eq!(a.shape, b.shape);
            assert_eq!(format!("{:?}", a.data), format!("{:?}", b.data));
        }
        let request = InferenceRequest::new(tensors[1..].to_vec());
        let (body, len) = request.to_body(|_| true).unwrap();
        let back = InferenceRequest::from_body(&body, len).unwrap();
        assert_eq!(back.inputs.len(), 5);
    }

    #[test]
    fn bad_binary_bodies_are_named() {
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let check = |body: &[u8], len: Option<usize>, needle: &str| {
            let err = InferenceRequest::from_body(body, len).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        };
        let mut short = json.to_vec();
        short.extend_from_slice(&[0; 4]);
        check(&short, Some(json.len()), "runs past");
        let mut long = json.to_vec();
        long.extend_from_slice(&[0; 12]);
        check(&long, Some(json.len()), "add up to 8");
        check(
            json,
            Some(json.len() + 1),
            "Inference-Header-Content-Length",
        );
        let odd = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":6}}]}"#;
        let mut body = odd.to_vec();
        body.extend_from_slice(&[0; 6]);
        check(&body, Some(odd.len()), "whole number");
        let neg = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":-1}}]}"#;
        check(neg, Some(neg.len()), "non-negative");
        let s = br#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}"#;
        let mut body = s.to_vec();
        body.extend_from_slice(&[9, 0, 0, 0, 1]);
        check(&body, Some(s.len()), "claims 9 bytes");
    }
}
