//! Models trained elsewhere (scikit-learn, XGBoost, LightGBM, a PyTorch-layout
//! MLP, exported to ONNX) served next to ours: over HTTP with the answers
//! onnxruntime gives, watched for drift through the references registered with
//! them, and called by Python's tritonclient in both the per-column and the
//! `[N, F]` tensor forms.

use std::sync::Arc;

use mlops_core::drift::Window;
use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_core::{ModelRegistry, Server};
use mlops_onnx::testkit::{
    MODELS, max_relative_difference, model_bytes, onnxruntime_outputs, probe_inputs,
};
use mlops_onnx::{OnnxLoader, OnnxRegistration, register_onnx};
use mlops_serve::http::{router, serve};
use mlops_serve::{DeploymentConfig, ModelServer, MonitorConfig, RemoteServer, Routing};
use mlops_store::{ObjectRegistry, StoreRoot};
use tokio::net::TcpListener;

use crate::common::within;

/// Every fixture registered (with drift references fitted on its probe batch)
/// and deployed under its own name, monitored in windows of the probe's size.
async fn onnx_server() -> ModelServer {
    let root = StoreRoot::open("memory://").unwrap();
    let registry = Arc::new(ObjectRegistry::new(&root));
    for name in MODELS {
        let registration = OnnxRegistration {
            reference: Some(probe_inputs(name).unwrap()),
            ..Default::default()
        };
        register_onnx(
            registry.as_ref(),
            name,
            &model_bytes(name).unwrap(),
            registration,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let server = ModelServer::new(
        registry as Arc<dyn ModelRegistry>,
        vec![Arc::new(OnnxLoader)],
    );
    for name in MODELS {
        let mut d = DeploymentConfig::new(name, name, Routing::Fixed(VersionSelector::Latest));
        d.monitoring = Some(
            MonitorConfig::default()
                .with_window(Window::TumblingRows(64))
                .with_min_rows(32)
                .with_queue(100),
        );
        server
            .deploy(d)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    server
}

/// `server` on a loopback port; its address (`127.0.0.1:port`).
async fn listen(server: &ModelServer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let app = router(server.clone(), crate::http::open()).unwrap();
    tokio::spawn(async move {
        serve(listener, app, &crate::http::open(), std::future::pending()).await
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_models_answer_over_http_as_onnxruntime_does() {
    let server = onnx_server().await;
    let base = listen(&server).await;
    let remote = RemoteServer::new(&format!("http://{base}")).unwrap();
    for name in MODELS {
        // The metadata shows the graph's signature.
        let meta = remote.model_metadata(name, None).await.unwrap();
        let inputs = probe_inputs(name).unwrap();
        let mut names: Vec<&str> = meta.inputs.iter().map(|i| i.name.as_str()).collect();
        let mut sent: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        sent.sort_unstable();
        assert_eq!(names, sent, "{name}: inputs in the metadata");
        let response = remote
            .infer(name, None, InferenceRequest::new(inputs))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for theirs in onnxruntime_outputs(name).unwrap() {
            let ours = response
                .outputs
                .iter()
                .find(|o| o.name == theirs.name)
                .unwrap_or_else(|| panic!("{name}: no output {}", theirs.name));
            let diff = max_relative_difference(ours, &theirs)
                .unwrap_or_else(|| panic!("{name}/{}: {ours:?} vs {theirs:?}", ours.name));
            assert!(diff <= 1e-5, "{name}/{}: {diff:e}", ours.name);
        }
    }
    // A request the graph's signature refuses is a 400 naming the input.
    let wide = Tensor::new("input", vec![1, 4], TensorData::Fp32(vec![0.0; 4])).unwrap();
    let err = remote
        .infer("mlp", None, InferenceRequest::new(vec![wide]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
}

/// The probe batch with every number moved far from where the reference saw it.
fn shifted(inputs: &[Tensor]) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|t| {
            let data = match &t.data {
                TensorData::Fp32(v) => {
                    TensorData::Fp32(v.iter().map(|x| x * 5.0 + 100.0).collect())
                }
                other => other.clone(),
            };
            Tensor::new(t.name.clone(), t.shape.clone(), data).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_onnx_inputs_are_watched_for_drift() {
    let server = onnx_server().await;
    let mut events = server.subscribe_drift();
    for name in MODELS {
        let drifted = if name == "pipeline_logreg" {
            "amount"
        } else {
            "input[0]"
        };
        let probe = probe_inputs(name).unwrap();
        // The reference itself, then the same rows shifted.
        server
            .infer(name, None, InferenceRequest::new(probe.clone()))
            .await
            .unwrap();
        server
            .infer(name, None, InferenceRequest::new(shifted(&probe)))
            .await
            .unwrap();
        let mut verdicts = Vec::new();
        while verdicts.len() < 2 {
            let event = within("the drift events of both windows", events.recv())
                .await
                .unwrap();
            if event.deployment == name && event.kind == "inputs" {
                verdicts.push(event.window.report);
            }
        }
        assert!(
            !verdicts[0].overall.drifted,
            "{name}: the reference rows did not drift"
        );
        assert!(
            verdicts[1].overall.drifted,
            "{name}: the shifted rows drifted"
        );
        let status = server.drift_status(name).unwrap();
        let inputs = status[&1].inputs.as_ref().unwrap();
        assert!(
            inputs.drifted_features.iter().any(|f| f == drifted),
            "{name}: {drifted} among {:?}",
            inputs.drifted_features
        );
    }
}

const TRITON_SCRIPT: &str = r#"
import sys
import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient(url=sys.argv[1])
meta = client.get_model_metadata("pipeline_logreg")
assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
    ("amount", "FP32", [-1, 1]), ("age", "FP32", [-1, 1]), ("country", "BYTES", [-1, 1])], meta
meta = client.get_model_metadata("mlp")
assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("input", "FP32", [-1, 3])], meta

rng = np.random.default_rng(0)
for rows in (1, 1024):
    for binary in (False, True):
        amount = rng.lognormal(3.0, 1.0, (rows, 1)).astype(np.float32)
        age = rng.uniform(18, 80, (rows, 1)).astype(np.float32)
        country = rng.choice(["de", "fr", "us", "br", "in"], (rows, 1)).astype(np.object_)
        inputs = []
        for name, value, dtype in (("amount", amount, "FP32"), ("age", age, "FP32"), ("country", country, "BYTES")):
            t = httpclient.InferInput(name, list(value.shape), dtype)
            t.set_data_from_numpy(value, binary_data=binary)
            inputs.append(t)
        out = [httpclient.InferRequestedOutput("output_probability", binary_data=binary),
               httpclient.InferRequestedOutput("output_label", binary_data=binary)]
        result = client.infer("pipeline_logreg", inputs, outputs=out)
        p = result.as_numpy("output_probability")
        label = result.as_numpy("output_label")
        assert p.shape == (rows, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-5), p
        assert label.shape == (rows,) and (label == p.argmax(axis=1)).all(), (label, p)

        x = np.concatenate([amount, age, rng.integers(0, 24, (rows, 1)).astype(np.float32)], axis=1)
        t = httpclient.InferInput("input", [rows, 3], "FP32")
        t.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("mlp", [t], outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)])
        y = result.as_numpy("output")
        assert y.shape == (rows, 1) and ((y >= 0) & (y <= 1)).all(), y
        print(rows, "binary" if binary else "json", "ok")

t = httpclient.InferInput("input", [2, 4], "FP32")
t.set_data_from_numpy(np.zeros((2, 4), dtype=np.float32))
try:
    client.infer("mlp", [t])
    raise SystemExit("a 4-wide input must fail")
except httpclient.InferenceServerException as e:
    assert "input" in str(e), e
import json
expected = json.load(open(sys.argv[2]))
for name, entry in expected.items():
    if name == "versions":
        continue
    for binary in (False, True):
        inputs = []
        for input_name, spec in entry["inputs"].items():
            if spec["dtype"] == "str":
                value = np.array(spec["data"], dtype=np.object_).reshape(spec["shape"])
                datatype = "BYTES"
            else:
                value = np.array(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])
                datatype = {"float32": "FP32", "int64": "INT64", "float64": "FP64"}[spec["dtype"]]
            t = httpclient.InferInput(input_name, list(value.shape), datatype)
            t.set_data_from_numpy(value, binary_data=binary)
            inputs.append(t)
        outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in entry["outputs"]]
        result = client.infer(name, inputs, outputs=outputs)
        for output_name, spec in entry["outputs"].items():
            ours = result.as_numpy(output_name)
            theirs = np.array(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])
            assert ours.shape == theirs.shape, (name, output_name, ours.shape, theirs.shape)
            if theirs.dtype.kind == "f":
                diff = np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-3))
                assert diff <= 1e-5, (name, output_name, diff)
            else:
                assert (ours == theirs).all(), (name, output_name, ours, theirs)
    print(name, "matches onnxruntime")
print("done")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mlops_tritonclient),
    ignore = "needs a Python with tritonclient[http] and numpy: pip install, or set \
              MLOPS_TEST_PYTHON (see CONTRIBUTING.md)"
)]
async fn tritonclient_calls_onnx_models_in_both_tensor_forms() {
    let server = onnx_server().await;
    let base = listen(&server).await;
    let expected = mlops_onnx::testkit::fixtures()
        .join("expected.json")
        .display()
        .to_string();
    let stdout = crate::real_clients::tritonclient(TRITON_SCRIPT, vec![base, expected]).await;
    for line in [
        "1 json ok",
        "1 binary ok",
        "1024 json ok",
        "1024 binary ok",
        "done",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    for name in MODELS {
        let line = format!("{name} matches onnxruntime");
        assert!(stdout.contains(&line), "{line:?} missing from:\n{stdout}");
    }
}

/// Every family scores in batch through `score_dataset`: the probe rows as a
/// table (one column per input, `input[j]` for a matrix input), the predictions
/// next to a key, equal to onnxruntime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_scores_in_batch() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch};
    use mlops_core::inference::tensor_columns;
    use mlops_onnx::OnnxModel;
    use mlops_store::{ScoreJob, ScoreSource, score_dataset};

    let root = StoreRoot::open("memory://").unwrap();
    for name in MODELS {
        let probe = probe_inputs(name).unwrap();
        let rows = probe[0].rows();
        let mut columns: Vec<(String, ArrayRef)> = vec![(
            "row".into(),
            Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>())),
        )];
        for t in &probe {
            columns.extend(tensor_columns(t).unwrap());
        }
        let table = RecordBatch::try_from_iter(columns).unwrap();
        let model = Arc::new(OnnxModel::from_bytes(&model_bytes(name).unwrap()).unwrap());
        let mut job = ScoreJob::new(
            name,
            1,
            ScoreSource::Batches(vec![table]),
            format!("scores/{name}"),
        )
        .with_keys(&["row"]);
        job.batch_rows = 20;
        let manifest = score_dataset(&root, model, &job, &Default::default())
            .await
            .unwrap();
        assert_eq!(manifest.rows, rows as u64, "{name}");
        let mut scored = Vec::new();
        for part in &manifest.parts {
            let bytes = root.get(part).await.unwrap();
            for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap()
            {
                scored.push(b.unwrap());
            }
        }
        let f64s = |a: &ArrayRef| -> Vec<f64> {
            let a = arrow_cast::cast(a, &arrow_schema::DataType::Float64).unwrap();
            a.as_primitive::<Float64Type>().values().to_vec()
        };
        let keys: Vec<i64> = scored
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(
            keys,
            (0..rows as i64).collect::<Vec<_>>(),
            "{name}: keys in order"
        );
        for theirs in onnxruntime_outputs(name).unwrap() {
            for (column, want) in tensor_columns(&theirs).unwrap() {
                let got: Vec<f64> = scored
                    .iter()
                    .flat_map(|b| {
                        let c = b
                            .column_by_name(&column)
                            .unwrap_or_else(|| panic!("{name}: no column {column}"));
                        assert_eq!(c.null_count(), 0);
                        f64s(c)
                    })
                    .collect();
                let want = f64s(&want);
                assert_eq!(got.len(), want.len(), "{name}/{column}");
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                        "{name}/{column}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
