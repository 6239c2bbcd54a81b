//! Test support (feature `testkit`): the exported models under
//! `tests/fixtures` of this crate and what onnxruntime answered for them, so the
//! tests of every crate compare against the same reference.

use std::path::PathBuf;

use mlops_core::inference::{Tensor, TensorData};
use mlops_core::{Error, Result};
use serde_json::Value;

/// The models of the fixtures: name and what it is.
pub const MODELS: [&str; 6] = [
    "pipeline_logreg",
    "random_forest",
    "gbt_regressor",
    "xgb_classifier",
    "lgbm_regressor",
    "mlp",
];

/// The directory of the fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The bytes of the fixture `name` (`name.onnx`).
pub fn model_bytes(name: &str) -> Result<Vec<u8>> {
    let path = fixtures().join(format!("{name}.onnx"));
    std::fs::read(&path).map_err(|e| Error::storage(path.display().to_string(), e))
}

fn expected() -> Result<Value> {
    let path = fixtures().join("expected.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::storage(path.display().to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid_input("expected.json", e.to_string()))
}

fn bad(what: &str) -> Error {
    Error::invalid_input("expected.json", format!("malformed {what}"))
}

/// A tensor from the file's `{dtype, shape, data}`.
fn tensor(name: &str, v: &Value) -> Result<Tensor> {
    let shape = v["shape"]
        .as_array()
        .ok_or_else(|| bad("shape"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or_else(|| bad("dimension"))
        })
        .collect::<Result<Vec<usize>>>()?;
    let data = v["data"].as_array().ok_or_else(|| bad("data"))?;
    let number = |x: &Value| x.as_f64().ok_or_else(|| bad("number"));
    let data = match v["dtype"].as_str().ok_or_else(|| bad("dtype"))? {
        "float32" => TensorData::Fp32(
            data.iter()
                .map(|x| number(x).map(|f| f as f32))
                .collect::<Result<_>>()?,
        ),
        "float64" => TensorData::Fp64(data.iter().map(number).collect::<Result<_>>()?),
        "int64" => TensorData::Int64(
            data.iter()
                .map(|x| x.as_i64().ok_or_else(|| bad("integer")))
                .collect::<Result<_>>()?,
        ),
        "str" => TensorData::Bytes(
            data.iter()
                .map(|x| {
                    x.as_str()
                        .map(|s| s.as_bytes().to_vec())
                        .ok_or_else(|| bad("string"))
                })
                .collect::<Result<_>>()?,
        ),
        other => return Err(bad(&format!("dtype {other}"))),
    };
    Tensor::new(name, shape, data)
}

fn tensors(name: &str, part: &str) -> Result<Vec<Tensor>> {
    let expected = expected()?;
    expected[name][part]
        .as_object()
        .ok_or_else(|| bad(&format!("{name}.{part}")))?
        .iter()
        .map(|(n, v)| tensor(n, v))
        .collect()
}

/// The probe batch the fixture `name` was run on (one tensor per input).
pub fn probe_inputs(name: &str) -> Result<Vec<Tensor>> {
    tensors(name, "inputs")
}

/// onnxruntime's outputs for [`probe_inputs`], in the graph's output order
/// (`ZipMap` probabilities as an `[N, classes]` matrix).
pub fn onnxruntime_outputs(name: &str) -> Result<Vec<Tensor>> {
    tensors(name, "outputs")
}

/// The largest difference of `ours` from onnxruntime's `theirs` relative to
/// `max(|theirs|, 1e-3)` (values near zero compared in absolute terms); `0.0`
/// for equal non-float tensors, `None` when they differ in shape, type or (for
/// non-floats) any element.
pub fn max_relative_difference(ours: &Tensor, theirs: &Tensor) -> Option<f64> {
    if ours.shape != theirs.shape {
        return None;
    }
    let floats = |d: &TensorData| match d {
        TensorData::Fp32(v) => Some(v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()),
        TensorData::Fp64(v) => Some(v.clone()),
        _ => None,
    };
    match (floats(&ours.data), floats(&theirs.data)) {
        (Some(a), Some(b)) => Some(
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
                .fold(0.0, f64::max),
        ),
        _ => (ours.data == theirs.data).then_some(0.0),
    }
}
