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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlops_score_writes_predictions_next_to_the_keys() {
    use mlops::arrow::array::StringArray;
    use mlops::arrow::array::cast::AsArray;
    let dir = temp_dir("onnx-score");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(at("pipeline.onnx"), model_bytes("pipeline_logreg").unwrap()).unwrap();
    let (code, out, err) = mlops(
        &[
            "models",
            "register",
            "shop",
            &at("pipeline.onnx"),
            "--flavor",
            "onnx",
        ],
        &path,
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // The probe rows as a Parquet table: one column per model input, and a key.
    let probe = probe_inputs("pipeline_logreg").unwrap();
    let column = |name: &str| probe.iter().find(|t| t.name == name).unwrap();
    let TensorData::Fp32(amount) = &column("amount").data else {
        panic!("fp32")
    };
    let TensorData::Fp32(age) = &column("age").data else {
        panic!("fp32")
    };
    let TensorData::Bytes(country) = &column("country").data else {
        panic!("bytes")
    };
    let rows = amount.len();
    let batch = RecordBatch::try_from_iter([
        (
            "order",
            Arc::new(Int64Array::from(
                (0..rows as i64).map(|i| 1000 + i).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float32Array::from(amount.clone())) as ArrayRef,
        ),
        ("age", Arc::new(Float32Array::from(age.clone())) as ArrayRef),
        (
            "country",
            Arc::new(StringArray::from(
                country
                    .iter()
                    .map(|b| String::from_utf8(b.clone()).unwrap())
                    .collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(at("orders.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let (code, out, err) = mlops(
        &[
            "--json",
            "score",
            "--model",
            "shop",
            "--version",
            "latest",
            "--input",
            &at("orders.parquet"),
            "--output",
            "scores/shop-1",
            "--keys",
            "order",
            "--batch-rows",
            "10",
        ],
        &path,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let manifest: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(manifest["rows"], rows);
    assert_eq!(
        manifest["columns"],
        serde_json::json!([
            "order",
            "output_label",
            "output_probability[0]",
            "output_probability[1]"
        ])
    );
    // The predictions are onnxruntime's, row by row, next to their keys.
    let theirs = onnxruntime_outputs("pipeline_logreg").unwrap();
    let TensorData::Fp32(p) = &theirs
        .iter()
        .find(|t| t.name == "output_probability")
        .unwrap()
        .data
    else {
        panic!("fp32")
    };
    let mut row = 0;
    for part in manifest["parts"].as_array().unwrap() {
        let file = dir.path().join("store").join(part.as_str().unwrap());
        let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let order = b
                .column(0)
                .as_primitive::<mlops::arrow::array::types::Int64Type>();
            let p1 = b
                .column(3)
                .as_primitive::<mlops::arrow::array::types::Float32Type>();
            for i in 0..b.num_rows() {
                assert_eq!(order.value(i), 1000 + row as i64);
                assert!(
                    (p1.value(i) - p[row * 2 + 1]).abs() <= 1e-5 * p[row * 2 + 1].abs().max(1e-3)
                );
                row += 1;
            }
        }
    }
    assert_eq!(row, rows);
    // Recorded in the audit log, and the same output is not written twice.
    let (_, audit, _) = mlops(&["--json", "audit", "tail"], &path);
    assert!(audit.contains("\"score\""), "{audit}");
    let orders = at("orders.parquet");
    let score = |extra: &[&str]| {
        let mut args = vec![
            "score",
            "--model",
            "shop",
            "--version",
            "latest",
            "--input",
            &orders,
        ];
        args.extend_from_slice(extra);
        mlops(&args, &path)
    };
    let (code, _, err) = score(&["--output", "scores/shop-1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("scores/shop-1"), "{err}");
    // A table without a model input is refused naming it (exit 2).
    let (code, _, err) = score(&["--output", "scores/x", "--keys", "nope"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nope"), "{err}");
}
