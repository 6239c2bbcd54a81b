//! The Open Inference Protocol's wire forms over HTTP: JSON bodies and the binary
//! tensor extension, both ways. The HTTP face, the remote client and the inference
//! log use it; it sits below them and uses nothing of theirs.
//!
//! Four modules, none importing another except through this one's choice:
//! - `scan`: a one-pass scanner for the common request shape (flat numeric tensors,
//!   JSON or the JSON part of a binary body); it gives up rather than err;
//! - `json`: the general serde decoder and the encoder; it words every error;
//! - `raw`: a tensor's elements as raw little-endian bytes;
//! - `binary`: the binary extension's general path on `json` and `raw`;
//! - `meter`: what decoding may allocate, counted before it is.
//!
//! Decoding a request costs a bounded multiple of its body: every decoder counts
//! what its values will take before allocating them (a tensor's data from its
//! shape), and a request whose inputs would take more than [`DECODE_FACTOR`] x
//! its body is refused, naming the input and the limit (the table at
//! [`DECODE_FACTOR`] gives the factor of each datatype). [`decode_request_within`]
//! also asks a [`DecodeGrant`] (a server-wide byte budget) for it as it goes.
//!
//! [`decode_request`] tries the scanner and falls back to the general decoder, so a
//! request decodes to the same value whichever path reads it (property tests hold
//! the two to each other).
//!
//! ```
//! use mlops_core::inference::{InferenceResponse, Tensor, TensorData};
//! use mlops_serve::codec;
//!
//! let request = codec::decode_request(br#"{
//!     "id": "42",
//!     "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]
//! }"#, None)?;
//! assert_eq!(request.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
//!
//! // A shape that does not match the data is refused with a message naming the input.
//! let err = codec::decode_request(br#"{
//!     "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]
//! }"#, None).unwrap_err();
//! assert!(err.to_string().contains("input 'x'"));
//!
//! // A request with one binary input: 2 FP32 values = 8 bytes after the JSON.
//! let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
//! let mut body = json.to_vec();
//! body.extend_from_slice(&1.5f32.to_le_bytes());
//! body.extend_from_slice(&(-2.0f32).to_le_bytes());
//! let request = codec::decode_request(&body, Some(json.len()))?;
//! assert_eq!(request.inputs[0].data, TensorData::Fp32(vec![1.5, -2.0]));
//!
//! // A response with every output in binary.
//! let response = InferenceResponse {
//!     model_name: "m".into(), model_version: None, id: None, parameters: Default::default(),
//!     outputs: vec![Tensor::new("y", vec![1], TensorData::Fp32(vec![0.25]))?],
//! };
//! let (body, json_len) = codec::encode_response(&response, |_| true)?;
//! assert_eq!(body.len(), json_len.unwrap() + 4);
//! let back = codec::decode_response(&body, json_len)?;
//! assert_eq!(back.outputs, response.outputs);
//! # Ok::<(), mlops_core::Error>(())
//! ```

mod binary;
mod json;
mod meter;
pub(crate) mod raw;
mod scan;

use std::sync::Arc;

use mlops_core::Result;
use mlops_core::inference::{
    InferenceRequest, InferenceResponse, ParameterValue, Parameters, Tensor,
};
use serde::{Deserialize, Serialize};

pub use meter::{DECODE_FACTOR, DECODE_SLACK, DecodeGrant};
pub use raw::{BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, HEADER_CONTENT_LENGTH};

/// Decodes a request body: plain JSON when `json_len` is `None`, else the binary
/// tensor extension with the JSON part `json_len` bytes long (the
/// `Inference-Header-Content-Length` header). Every problem is
/// [`Error::InvalidInput`](mlops_core::Error::InvalidInput) naming the input and
/// element concerned, a request whose inputs would take more than
/// [`DECODE_FACTOR`] x the body among them (refused before they are allocated).
pub fn decode_request(body: &[u8], json_len: Option<usize>) -> Result<InferenceRequest> {
    meter::metered(body.len(), None, || decode(body, json_len))
}

/// [`decode_request`], asking `grant` for the memory the decoded inputs take
/// as they are decoded (before each is allocated, in steps of 16 KiB); when it
/// refuses, its error is the answer. What it granted is the caller's to
/// release once the request is dropped.
pub fn decode_request_within(
    body: &[u8],
    json_len: Option<usize>,
    grant: Arc<dyn DecodeGrant>,
) -> Result<InferenceRequest> {
    meter::metered(body.len(), Some(grant), || decode(body, json_len))
}

fn decode(body: &[u8], json_len: Option<usize>) -> Result<InferenceRequest> {
    match json_len {
        None => match scan::parse_request(body) {
            Some(request) => Ok(request),
            None => {
                meter::restart();
                json::decode_request(body)
            }
        },
        Some(n) => {
            let (json, bytes) = binary::split(body, n, "inference request")?;
            match scan::parse_binary_request(json, bytes) {
                Some(request) => Ok(request),
                None => {
                    meter::restart();
                    binary::decode_request(json, bytes)
                }
            }
        }
    }
}

/// Encodes a request with the inputs for which `binary(name)` holds as binary data;
/// returns the body and, when any input is binary, the JSON part's length.
pub fn encode_request(
    request: &InferenceRequest,
    binary: impl Fn(&str) -> bool,
) -> Result<(Vec<u8>, Option<usize>)> {
    if request.inputs.iter().any(|t| binary(&t.name)) {
        binary::encode_request(request, binary)
    } else {
        Ok((json::encode_request(request)?, None))
    }
}

/// Decodes a response body, plain JSON or with binary outputs.
pub fn decode_response(body: &[u8], json_len: Option<usize>) -> Result<InferenceResponse> {
    match json_len {
        None => json::decode_response(body),
        Some(n) => {
            let (json, bytes) = binary::split(body, n, "inference response")?;
            binary::decode_response(json, bytes)
        }
    }
}

/// Encodes a response with the outputs for which `binary(name)` holds as binary
/// data; returns the body and, when any output is binary, the JSON part's length.
/// Binary outputs may hold NaN and infinities, which JSON cannot.
pub fn encode_response(
    response: &InferenceResponse,
    binary: impl Fn(&str) -> bool,
) -> Result<(Vec<u8>, Option<usize>)> {
    if response.outputs.iter().any(|t| binary(&t.name)) {
        binary::encode_response(response, binary)
    } else {
        Ok((json::encode_response(response)?, None))
    }
}

/// Encodes tensors as a JSON array of the protocol's tensor objects (as the
/// inference log stores a request's inputs and outputs). Non-finite floats and
/// non-UTF-8 `BYTES` are refused, since JSON cannot carry them.
pub fn encode_tensors(tensors: &[Tensor]) -> Result<String> {
    json::encode_tensors(tensors)
}

/// Whether output `name` should be returned as binary data: the output's own
/// `binary_data` parameter, else the request's `binary_data_output`.
pub fn wants_binary(request: &InferenceRequest, name: &str) -> bool {
    let flag = |p: &Parameters, key: &str| matches!(p.get(key), Some(ParameterValue::Bool(true)));
    if let Some(o) = request.outputs.iter().flatten().find(|o| o.name == name)
        && let Some(ParameterValue::Bool(b)) = o.parameters.get(BINARY_DATA)
    {
        return *b;
    }
    flag(&request.parameters, BINARY_DATA_OUTPUT)
}

/// `$ready_model_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReadyResponse {
    /// The model's name.
    pub name: String,
    /// Whether it can answer inference requests now.
    pub ready: bool,
}

/// `$live_server_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLiveResponse {
    /// Whether the server can receive and answer requests.
    pub live: bool,
}

/// `$ready_server_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReadyResponse {
    /// Whether every model is ready.
    pub ready: bool,
}

/// The body of every failed request: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use mlops_core::inference::{
        InferenceRequest, InferenceResponse, Parameters, Tensor, TensorData,
    };

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
        let (body, len) = super::encode_response(&response, |n| n != "b").unwrap();
        let back = super::decode_response(&body, len).unwrap();
        assert_eq!(back.outputs[0], tensors[0]);
        for (a, b) in back.outputs.iter().zip(&tensors).skip(1) {
            assert_eq!(a.shape, b.shape);
            assert_eq!(format!("{:?}", a.data), format!("{:?}", b.data));
        }
        let request = InferenceRequest::new(tensors[1..].to_vec());
        let (body, len) = super::encode_request(&request, |_| true).unwrap();
        let back = super::decode_request(&body, len).unwrap();
        assert_eq!(back.inputs.len(), 5);
    }

    #[test]
    fn bad_binary_bodies_are_named() {
        let json = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let check = |body: &[u8], len: Option<usize>, needle: &str| {
            let err = super::decode_request(body, len).unwrap_err();
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

    /// Grants everything, recording the total.
    #[derive(Default)]
    struct Tally(std::sync::atomic::AtomicUsize);

    impl super::DecodeGrant for Tally {
        fn grant(&self, bytes: usize) -> mlops_core::Result<()> {
            self.0
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    /// Decodes `body` with a tally; the result and what was granted.
    fn tallied(
        body: &[u8],
        json_len: Option<usize>,
    ) -> (mlops_core::Result<InferenceRequest>, usize) {
        let tally = std::sync::Arc::new(Tally::default());
        let out = super::decode_request_within(body, json_len, tally.clone());
        (out, tally.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn strings_body(shape: usize, n: usize, s: &str, data_first: bool) -> Vec<u8> {
        let data = vec![format!("\"{s}\""); n].join(",");
        if data_first {
            format!(r#"{{"inputs":[{{"data":[{data}],"name":"x","datatype":"BYTES","shape":[{shape}]}}]}}"#)
        } else {
            format!(r#"{{"inputs":[{{"name":"x","shape":[{shape}],"datatype":"BYTES","data":[{data}]}}]}}"#)
        }
        .into_bytes()
    }

    #[test]
    fn empty_strings_are_refused_before_they_are_decoded() {
        // 8x the body as vectors: beyond the factor, refused by name and limit
        // with next to nothing granted (the 300,000 headers are counted from the
        // shape before any is made).
        for data_first in [false, true] {
            let body = strings_body(300_000, 300_000, "", data_first);
            let (out, granted) = tallied(&body, None);
            let err = out.unwrap_err().to_string();
            assert!(
                err.contains("input 'x'")
                    && err.contains(
                        &(body.len() * super::DECODE_FACTOR + super::DECODE_SLACK).to_string()
                    ),
                "{err}"
            );
            // Data read before its shape is known is held as its text, at most
            // the body.
            assert!(
                granted <= body.len() + (16 << 10),
                "{data_first}: {granted}"
            );
        }
        // A shape that claims one string for 300,000: the others are counted,
        // not kept, and the count is the error.
        let body = strings_body(1, 300_000, "", false);
        let (out, granted) = tallied(&body, None);
        let err = out.unwrap_err().to_string();
        assert!(
            err.contains("holds 1 elements but data has 300000"),
            "{err}"
        );
        assert!(granted <= 16 << 10, "{granted}");
    }

    #[test]
    fn strings_of_a_few_bytes_and_every_numeric_body_decode_within_the_factor() {
        let body = strings_body(100_000, 100_000, "abcdef", false);
        let (out, granted) = tallied(&body, None);
        let request = out.unwrap();
        assert_eq!(request.inputs[0].data.len(), 100_000);
        let heap = request.inputs[0].data.heap_bytes();
        assert!(
            granted >= heap && granted <= super::DECODE_FACTOR * body.len(),
            "{granted} {heap}"
        );
        // The densest numeric JSON (one digit each, 8 bytes decoded) stays
        // within 4x, on the fast path and the general one.
        for datatype in ["INT64", "FP64", "UINT64"] {
            let n = 200_000;
            let zeros = vec!["0"; n].join(",");
            let body = format!(
                r#"{{"inputs":[{{"name":"x","shape":[{n}],"datatype":"{datatype}","data":[{zeros}]}}]}}"#
            );
            let (out, granted) = tallied(body.as_bytes(), None);
            assert_eq!(out.unwrap().inputs[0].data.len(), n, "{datatype}");
            assert!(granted <= super::DECODE_FACTOR * body.len() + super::DECODE_SLACK);
        }
    }

    #[test]
    fn binary_empty_strings_are_refused_by_name() {
        let n = 100_000;
        let json = format!(
            r#"{{"inputs":[{{"name":"s","shape":[{n}],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
            4 * n
        );
        let mut body = json.clone().into_bytes();
        body.resize(json.len() + 4 * n, 0);
        let (out, granted) = tallied(&body, Some(json.len()));
        let err = out.unwrap_err().to_string();
        assert!(err.contains("tensor 's'") && err.contains("limit"), "{err}");
        assert!(granted <= 16 << 10, "{granted}");
        // Elements of 4 bytes (8 on the wire, 28 decoded) are within it.
        let m = n / 4;
        let json = format!(
            r#"{{"inputs":[{{"name":"s","shape":[{m}],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
            8 * m
        );
        let mut body = json.clone().into_bytes();
        for _ in 0..m {
            body.extend_from_slice(&4u32.to_le_bytes());
            body.extend_from_slice(b"abcd");
        }
        let (out, _) = tallied(&body, Some(json.len()));
        assert_eq!(out.unwrap().inputs[0].data.len(), m);
    }

    #[test]
    fn a_grant_that_refuses_is_the_answer() {
        struct Spent;
        impl super::DecodeGrant for Spent {
            fn grant(&self, _: usize) -> mlops_core::Result<()> {
                Err(mlops_core::Error::Unavailable {
                    what: "budget".into(),
                    reason: "spent".into(),
                })
            }
        }
        let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#;
        let err = super::decode_request_within(body, None, std::sync::Arc::new(Spent)).unwrap_err();
        assert!(
            matches!(err, mlops_core::Error::Unavailable { .. }),
            "{err}"
        );
        // Without a grant the same body decodes.
        assert!(super::decode_request(body, None).is_ok());
    }

    /// What our own encoder writes for a plain request is what the scanner reads,
    /// so our client's requests (and the serving benchmark's) take the fast path.
    #[test]
    fn our_own_encoding_takes_the_fast_path() {
        let mut request = InferenceRequest::new(
            (0..20)
                .map(|f| {
                    Tensor::new(
                        format!("x{f}"),
                        vec![1],
                        TensorData::Fp32(vec![f as f32 / 13.0]),
                    )
                    .unwrap()
                })
                .collect(),
        );
        request.id = Some("1".into());
        let (body, json_len) = super::encode_request(&request, |_| false).unwrap();
        assert_eq!(json_len, None);
        let fast = super::scan::parse_request(&body);
        assert_eq!(
            fast.as_ref(),
            Some(&request),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}
