//! ONNX models through the binary: `mlops models register --flavor onnx` with a
//! Parquet reference sample, served by `mlops serve` with onnxruntime's answers,
//! checked for drift by `mlops drift check --model`; a model the binary cannot
//! run is refused at registration, naming the operator.

use std::path::Path;

use mlops::arrow::array::Float32Array;
use mlops_onnx::testkit::{
    max_relative_difference, model_bytes, onnxruntime_outputs, probe_inputs,
};

use super::*;

/// The `[N, 3]` probe of the MLP fixture as Parquet columns `input[0..3]`,
/// each value mapped by `f`.
fn write_mlp_sample(path: &Path, f: impl Fn(f32) -> f32) {
    let probe = probe_inputs("mlp").unwrap();
    let TensorData::Fp32(x) = &probe[0].data else {
        panic!("an FP32 probe")
    };
    let columns: Vec<(String, ArrayRef)> = (0..3)
        .map(|j| {
            let column: Vec<f32> = x.iter().skip(j).step_by(3).map(|&v| f(v)).collect();
            (
                format!("input[{j}]"),
                Arc::new(Float32Array::from(column)) as ArrayRef,
            )
        })
        .collect();
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_model_registers_serves_and_is_checked_for_drift() {
    let dir = temp_dir("onnx");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(at("mlp.onnx"), model_bytes("mlp").unwrap()).unwrap();
    write_mlp_sample(Path::new(&at("sample.parquet")), |v| v);
    write_mlp_sample(Path::new(&at("moved.parquet")), |v| v * 5.0 + 100.0);

    let (code, out, err) = mlops(
        &[
            "--json",
            "models",
            "register",
            "fraud",
            &at("mlp.onnx"),
            "--flavor",
            "onnx",
            "--reference",
            &at("sample.parquet"),
            "--description",
            "exported MLP",
        ],
        &path,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["flavor"], "onnx", "{v}");
    let (code, _, err) = mlops(&["models", "alias", "fraud", "champion", "1"], &path);
    assert_eq!(code, Some(0), "{err}");

    // Served as registered: onnxruntime's answers, over HTTP.
    let served = start(&path);
    let remote = RemoteServer::new(&served.base).unwrap().with_api_key(KEY);
    let response = remote
        .infer(
            "fraud",
            None,
            InferenceRequest::new(probe_inputs("mlp").unwrap()),
        )
        .await
        .unwrap();
    let theirs = &onnxruntime_outputs("mlp").unwrap()[0];
    let diff = max_relative_difference(&response.outputs[0], theirs).unwrap();
    assert!(diff <= 1e-5, "{diff:e}");
    assert_eq!(stop(served.child).await.code(), Some(0));

    // The reference registered with it is what `drift check --model` compares with.
    let check = |file: &str| {
        mlops(
            &[
                "--json",
                "drift",
                "check",
                "--model",
                "fraud",
                "--current",
                &at(file),
                "--fail-on-drift",
            ],
            &path,
        )
    };
    let (code, out, err) = check("sample.parquet");
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = check("moved.parquet");
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(out.contains("input[0]"), "{out}");
}

#[test]
fn a_model_the_binary_cannot_run_is_refused_at_registration() {
    let dir = temp_dir("onnx-refused");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    // The MLP with its Relu renamed to an operator no runtime has.
    let bytes = model_bytes("mlp").unwrap();
    let needle = b"Relu";
    let mut renamed = bytes.clone();
    let mut replaced = 0;
    for i in 0..renamed.len().saturating_sub(needle.len()) {
        if &renamed[i..i + needle.len()] == needle {
            renamed[i..i + needle.len()].copy_from_slice(b"Relz");
            replaced += 1;
        }
    }
    assert!(replaced > 0);
    std::fs::write(at("odd.onnx"), renamed).unwrap();
    let (code, out, err) = mlops(
        &[
            "models",
            "register",
            "fraud",
            &at("odd.onnx"),
            "--flavor",
            "onnx",
        ],
        &path,
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("Relz"), "{err}");
    // Nothing was registered.
    let (code, out, err) = mlops(&["--json", "models", "list"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("fraud"), "{out}");

    // A reference sample is for ONNX models only.
    std::fs::write(at("model.bin"), b"weights").unwrap();
    std::fs::write(at("sample.parquet"), b"").unwrap();
    let (code, _, err) = mlops(
        &[
            "models",
            "register",
            "fraud",
            &at("model.bin"),
            "--flavor",
            "burn-tabular",
            "--reference",
            &at("sample.parquet"),
        ],
        &path,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--reference"), "{err}");
}
