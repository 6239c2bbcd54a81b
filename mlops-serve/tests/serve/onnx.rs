//! Models trained elsewhere (scikit-learn, XGBoost, LightGBM, a PyTorch-layout
//! MLP, exported to ONNX) served next to ours: over HTTP with the answers
//! onnxruntime gives, watched for drift through the references registered with
//! them, and called by Python's tritonclient in both the per-column and the
//! `[N, F]` tensor forms.

use std::process::Command;
use std::sync::Arc;

use mlops_core::drift::Window;
use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_core::testkit::process::output_within;
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
    for (name, drifted) in [("mlp", "input[0]"), ("pipeline_logreg", "amount")] {
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
print("done")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mlops_tritonclient),
    ignore = "needs a Python with tritonclient[http] and numpy: pip install, or set \
              MLOPS_TEST_PYTHON (see CONTRIBUTING.md)"
)]
async fn tritonclient_calls_onnx_models_in_both_tensor_forms() {
    let python = std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let server = onnx_server().await;
    let base = listen(&server).await;
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            "python with tritonclient",
            Command::new(python).args(["-c", TRITON_SCRIPT, &base]),
            std::time::Duration::from_secs(120),
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tritonclient failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "1 json ok",
        "1 binary ok",
        "1024 json ok",
        "1024 binary ok",
        "done",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}
