//! The protocol's messages as data: an inference request and response, and the
//! metadata a [`Server`](crate::Server) reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::TensorSpec;
use super::tensor::{Parameters, Tensor};
use crate::error::{Error, Result};

/// One requested output of an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    /// The output tensor's name.
    pub name: String,
    /// Parameters for this output (e.g. `binary_data`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
}

/// An inference request (`$inference_request`).
///
/// This is the message as data; its wire forms (JSON, the binary tensor extension,
/// gRPC) are the business of the transport that carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    /// The request id; a response echoes it back.
    pub id: Option<String>,
    /// Request parameters.
    pub parameters: Parameters,
    /// The input tensors; names are unique (see [`check_unique_names`](Self::check_unique_names)).
    pub inputs: Vec<Tensor>,
    /// The outputs to return; `None` means all of the model's outputs.
    pub outputs: Option<Vec<RequestOutput>>,
}

/// A name that appears more than once in `names`, if any.
///
/// Names are first filtered through a 256-bit Bloom filter of their hashes, so a
/// request's few dozen distinct names cost one hash each; only a possible repeat is
/// looked for among the names before it. Long lists are sorted instead.
fn first_repeat<'a>(names: impl ExactSizeIterator<Item = &'a str> + Clone) -> Option<&'a str> {
    if names.len() > 64 {
        let mut sorted: Vec<&str> = names.collect();
        sorted.sort_unstable();
        return sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    }
    let mut seen = [0u64; 4];
    for (i, name) in names.clone().enumerate() {
        // FNV-1a: short names, no need for more.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let (word, bit) = ((hash >> 6) as usize % 4, 1u64 << (hash & 63));
        if seen[word] & bit != 0 && names.clone().take(i).any(|earlier| earlier == name) {
            return Some(name);
        }
        seen[word] |= bit;
    }
    None
}

impl InferenceRequest {
    /// Input names and requested output names must each be unique: the error
    /// ([`Error::InvalidInput`]) names the first repeated one. Decoders call it on
    /// every request they build.
    ///
    /// ```
    /// use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
    ///
    /// let x = Tensor::new("x", vec![1], TensorData::Fp32(vec![0.5]))?;
    /// assert!(InferenceRequest::new(vec![x.clone()]).check_unique_names().is_ok());
    /// let err = InferenceRequest::new(vec![x.clone(), x]).check_unique_names().unwrap_err();
    /// assert!(err.to_string().contains("input 'x' appears more than once"));
    /// # Ok::<(), mlops_core::Error>(())
    /// ```
    pub fn check_unique_names(&self) -> Result<()> {
        let bad = |reason: String| Error::invalid_input("inference request", reason);
        if let Some(name) = first_repeat(self.inputs.iter().map(|t| t.name.as_str())) {
            return Err(bad(format!("input '{name}' appears more than once")));
        }
        if let Some(outputs) = &self.outputs
            && let Some(name) = first_repeat(outputs.iter().map(|o| o.name.as_str()))
        {
            return Err(bad(format!("output '{name}' is requested more than once")));
        }
        Ok(())
    }

    /// A request with these inputs and no id, parameters or output selection.
    pub fn new(inputs: Vec<Tensor>) -> Self {
        Self {
            id: None,
            parameters: Parameters::new(),
            inputs,
            outputs: None,
        }
    }

    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&Tensor> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

/// An inference response (`$inference_response`), as data (see
/// [`InferenceRequest`] on wire forms).
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceResponse {
    /// The model that answered.
    pub model_name: String,
    /// The version that answered, when the server versions its models.
    pub model_version: Option<String>,
    /// The request's id, echoed back.
    pub id: Option<String>,
    /// Response parameters.
    pub parameters: Parameters,
    /// The output tensors.
    pub outputs: Vec<Tensor>,
}

/// The response parameter that carries the server-issued prediction id: the
/// id feedback on this answer must name (`mlops-serve` issues one per answer
/// of a deployment that takes feedback).
pub const PREDICTION_ID: &str = "prediction_id";

impl InferenceResponse {
    /// The server-issued prediction id ([`PREDICTION_ID`]), when the answer
    /// has one.
    pub fn prediction_id(&self) -> Option<&str> {
        match self.parameters.get(PREDICTION_ID) {
            Some(super::ParameterValue::String(id)) => Some(id),
            _ => None,
        }
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// `$metadata_server_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMetadataResponse {
    /// A descriptive name for the server.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// The protocol extensions it supports.
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// `$metadata_model_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadataResponse {
    /// The model's name.
    pub name: String,
    /// Versions that may be requested explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    /// The framework that runs the model (our artifact flavor, e.g. `burn-mlp`).
    pub platform: String,
    /// The inputs the model requires.
    pub inputs: Vec<TensorSpec>,
    /// The outputs it produces.
    pub outputs: Vec<TensorSpec>,
    /// An extension of this SDK: the one `[N, F]` tensor the model also takes in
    /// place of its inputs (see `Signature::matrix_input`), when it has that form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_input: Option<TensorSpec>,
}

#[cfg(test)]
mod tests {
    use super::first_repeat;

    #[test]
    fn first_repeat_finds_repeats_in_short_and_long_lists() {
        for n in [0usize, 1, 2, 20, 64, 65, 300] {
            let names: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            assert_eq!(first_repeat(refs.iter().copied()), None, "{n} distinct");
            if n >= 2 {
                let pairs = [(0, n - 1), (n / 2, n / 2 + 1), (n - 2, n - 1)];
                for (a, b) in pairs.into_iter().filter(|&(a, b)| a < b && b < n) {
                    let mut with_repeat = refs.clone();
                    with_repeat[b] = refs[a];
                    assert_eq!(
                        first_repeat(with_repeat.iter().copied()),
                        Some(refs[a]),
                        "{n} names, {a} repeated at {b}"
                    );
                }
            }
        }
    }
}
