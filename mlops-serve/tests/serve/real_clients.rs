//! Tools no one here wrote: Python's tritonclient and Prometheus' promtool, against
//! our server serving a real trained model. They run when the environment has
//! them (`.ci/run` sets MLOPS_TEST_PYTHON to a Python with tritonclient and
//! installs promtool; the build script looks for them); otherwise `cargo test`
//! reports them as ignored, with the reason.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use mlops_core::model::VersionSelector;
use mlops_core::testkit::process::{ChildGuard, Lines, output_within};
use mlops_core::{ModelRegistry, Task, Trainer};
use mlops_serve::http::{router, serve};
use mlops_serve::{DeploymentConfig, ModelServer, Routing};
use mlops_store::{ObjectRegistry, StoreRoot};
use mlops_train::{ModelSpec, Progress, TabularLoader, TabularTrainer, TrainConfig};
use tokio::net::TcpListener;

use crate::common::{WAIT, samples};

/// How long an outside tool may run (starting Python and importing numpy and
/// tritonclient on a busy machine included).
const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// The output of a blocking job that runs an outside tool with a deadline of
/// its own; panics naming `what` when the job does not end soon after it.
async fn tool_run<T: Send + 'static>(what: &str, job: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::time::timeout(TOOL_LIMIT + WAIT, tokio::task::spawn_blocking(job)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: not finished within {:?}", TOOL_LIMIT + WAIT),
    }
}

/// Runs `script` with `args` in the Python of MLOPS_TEST_PYTHON (which has
/// tritonclient), with a deadline; its standard output, or a failure showing
/// both of its outputs.
pub(crate) async fn tritonclient(script: &'static str, args: Vec<String>) -> String {
    let python = std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tool_run("tritonclient", move || {
        output_within(
            "python with tritonclient",
            Command::new(python).arg("-c").arg(script).args(args),
            TOOL_LIMIT,
        )
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tritonclient failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines of a pipe until it closes (its process has exited).
fn rest_of(lines: &Lines) -> String {
    let mut all = Vec::new();
    while let Some(line) = lines.next_within(WAIT) {
        all.push(line);
    }
    all.join("\n")
}

/// A server on loopback serving a trained 20-feature MLP as "fraud".
async fn serve_trained() -> (String, ModelServer) {
    let n = 600;
    let mut cols: Vec<(String, ArrayRef)> = Vec::new();
    let mut label = vec![0i64; n];
    for f in 0..20 {
        let values: Vec<f32> = (0..n)
            .map(|i| (((i * 31 + f * 17) % 97) as f32 / 48.0) - 1.0)
            .collect();
        if f == 0 {
            for (i, v) in values.iter().enumerate() {
                label[i] = i64::from(*v > 0.0);
            }
        }
        cols.push((format!("x{f}"), Arc::new(Float32Array::from(values))));
    }
    cols.push(("label".into(), Arc::new(Int64Array::from(label))));
    let data = RecordBatch::try_from_iter(cols).unwrap();
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::mlp([64, 64]));
    c.epochs = 2;
    c.progress = Progress::Hidden;
    let trained = TabularTrainer::new(c).fit(&data, "label").unwrap();
    let root = StoreRoot::open("memory://").unwrap();
    let registry = Arc::new(ObjectRegistry::new(&root));
    registry
        .register("fraud", trained.artifact, trained.metadata)
        .await
        .unwrap();
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    server
        .deploy(DeploymentConfig::new(
            "fraud",
            "fraud",
            Routing::Fixed(VersionSelector::Latest),
        ))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let app = router(server.clone(), crate::http::open()).unwrap();
    tokio::spawn(async move {
        serve(listener, app, &crate::http::open(), std::future::pending()).await
    });
    (base, server)
}

const TRITON_SCRIPT: &str = r#"
import sys
import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient(url=sys.argv[1])
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("fraud")
meta = client.get_model_metadata("fraud")
assert [i["name"] for i in meta["inputs"]] == [f"x{i}" for i in range(20)], meta
assert meta["outputs"][0]["name"] == "probability", meta
for binary in (False, True):
    inputs = []
    for i in range(20):
        t = httpclient.InferInput(f"x{i}", [3], "FP32")
        t.set_data_from_numpy(np.array([0.5, -0.5, 0.1], dtype=np.float32) * (1 if i == 0 else 0.3), binary_data=binary)
        inputs.append(t)
    out = [httpclient.InferRequestedOutput("probability", binary_data=binary)]
    result = client.infer("fraud", inputs, outputs=out, request_id="r1")
    p = result.as_numpy("probability")
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all(), p
    assert result.get_response()["id"] == "r1"
    print("binary" if binary else "json", p.tolist())
# The same rows as one [N, F] FP32 tensor (the KServe form): the same answer.
assert meta["matrix_input"] == {"name": "input", "datatype": "FP32", "shape": [-1, 20]}, meta
columns = [np.array([0.5, -0.5, 0.1], dtype=np.float32) * (1 if i == 0 else 0.3) for i in range(20)]
matrix = np.stack(columns, axis=1).astype(np.float32)
for binary in (False, True):
    t = httpclient.InferInput("input", list(matrix.shape), "FP32")
    t.set_data_from_numpy(matrix, binary_data=binary)
    out = [httpclient.InferRequestedOutput("probability", binary_data=binary)]
    q = client.infer("fraud", [t], outputs=out).as_numpy("probability")
    assert np.array_equal(q, p), (q, p)
print("matrix", q.tolist())
try:
    client.infer("nope", inputs)
    raise SystemExit("an unknown model must fail")
except httpclient.InferenceServerException as e:
    assert "nope" in str(e), e
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mlops_tritonclient),
    ignore = "needs a Python with tritonclient[http] and numpy: pip install, or set \
              MLOPS_TEST_PYTHON (see CONTRIBUTING.md)"
)]
async fn tritonclient_reads_metadata_and_infers() {
    let (base, _server) = serve_trained().await;
    let stdout = tritonclient(TRITON_SCRIPT, vec![base]).await;
    assert!(stdout.contains("ok"), "{stdout}");
    // JSON and binary gave the same probabilities.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 3, "json, binary and ok lines: {stdout}");
    assert_eq!(
        lines[0].trim_start_matches("json "),
        lines[1].trim_start_matches("binary ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mlops_promtool),
    ignore = "needs promtool (Debian: apt install prometheus) or MLOPS_TEST_PROMTOOL \
              (see CONTRIBUTING.md)"
)]
async fn promtool_accepts_the_metrics() {
    let promtool = std::env::var("MLOPS_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let (base, server) = serve_trained().await;
    let remote = mlops_serve::RemoteServer::new(&format!("http://{base}")).unwrap();
    let _ = mlops_core::Server::infer(
        &remote,
        "nope",
        None,
        mlops_core::InferenceRequest::new(vec![]),
    )
    .await;
    let text = crate::http::client()
        .get(format!("http://{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, server.metrics_text());
    // Samples, not only the families' headers (there from the start), for
    // promtool to read: the deployment's load and the refused request.
    for family in ["mlops_model_loads_total", "mlops_inference_requests_total"] {
        assert!(
            !samples(&text, family).is_empty(),
            "no {family} sample: {text}"
        );
    }
    let input = text.clone();
    let (status, stdout, stderr) = tool_run("promtool", move || {
        let mut child = ChildGuard::spawn(
            "promtool check metrics",
            Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let (stdout, stderr) = (child.stdout_lines(), child.stderr_lines());
        let mut stdin = child.child_mut().stdin.take().expect("stdin is piped");
        // Written on a thread of its own, closing stdin when done: a promtool
        // that stops reading cannot block the test (once it is killed, the
        // write fails).
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(input.as_bytes());
        });
        let status = child.wait_within(TOOL_LIMIT);
        (status, rest_of(&stdout), rest_of(&stderr))
    })
    .await;
    assert!(
        status.success(),
        "promtool check metrics failed:\n{stdout}\n{stderr}\n{text}"
    );
}

const TRITON_GRPC_SCRIPT: &str = r#"
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, key = sys.argv[1], sys.argv[2]
auth = {"authorization": f"Bearer {key}"}
client = grpcclient.InferenceServerClient(url=url)
assert client.is_server_live(headers=auth) and client.is_server_ready(headers=auth)
assert client.is_model_ready("fraud", headers=auth)
assert client.get_server_metadata(headers=auth).name == "mlops"
meta = client.get_model_metadata("fraud", headers=auth)
assert [i.name for i in meta.inputs] == [f"x{i}" for i in range(20)], meta
assert meta.outputs[0].name == "probability", meta
# 1 and 1024 rows, raw tensors (tritonclient.grpc sends raw_input_contents and
# reads raw_output_contents).
for rows in (1, 1024):
    inputs = []
    for i in range(20):
        t = grpcclient.InferInput(f"x{i}", [rows], "FP32")
        t.set_data_from_numpy((np.arange(rows, dtype=np.float32) % 7 / 7.0 - 0.5) * (1 if i == 0 else 0.3))
        inputs.append(t)
    result = client.infer("fraud", inputs, request_id="g1", headers=auth)
    p = result.as_numpy("probability")
    assert p.shape == (rows,) and ((p >= 0) & (p <= 1)).all(), p
    assert result.get_response().id == "g1"
    print(rows, float(p[0]))
# The repository: index, unload and load (admin), in the inference service.
index = client.get_model_repository_index(headers=auth)
assert [m.name for m in index.models] == ["fraud"], index
client.unload_model("fraud", headers=auth)
assert not client.is_model_ready("fraud", headers=auth)
client.load_model("fraud", headers=auth)
assert client.is_model_ready("fraud", headers=auth)
# Bad calls: an unknown model, a wrong shape, no key.
def code(call):
    try:
        call()
    except InferenceServerException as e:
        return e.status(), e.message()
    raise SystemExit("the call must fail")
status, message = code(lambda: client.infer("nope", inputs, headers=auth))
assert status == "StatusCode.NOT_FOUND" and "nope" in message, (status, message)
bad = grpcclient.InferInput("x0", [1], "FP32")
bad.set_data_from_numpy(np.zeros(1, dtype=np.float32))
status, message = code(lambda: client.infer("fraud", [bad], headers=auth))
assert status == "StatusCode.INVALID_ARGUMENT" and "x1" in message, (status, message)
status, message = code(lambda: client.infer("fraud", inputs))
assert status == "StatusCode.UNAUTHENTICATED", (status, message)
wrong = {"authorization": "Bearer wrong-key"}
status, message = code(lambda: client.infer("fraud", inputs, headers=wrong))
assert status == "StatusCode.UNAUTHENTICATED" and message, (status, message)
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mlops_tritonclient),
    ignore = "needs a Python with tritonclient[http,grpc] and numpy: pip install, or set \
              MLOPS_TEST_PYTHON (see CONTRIBUTING.md)"
)]
async fn tritonclient_grpc_reads_metadata_infers_and_manages_the_repository() {
    use mlops_serve::grpc::{GrpcConfig, serve as serve_grpc};
    use mlops_serve::{ApiKeys, KeyRing, Scope};
    let (base, server) = serve_trained().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let keys = KeyRing::new(ApiKeys::new().with_key("ops", "triton-grpc-key", &[Scope::Admin]));
    let s: Arc<dyn mlops_core::Server> = Arc::new(server.clone());
    tokio::spawn(serve_grpc(
        listener,
        s,
        Some(server.clone()),
        GrpcConfig::new(keys),
        std::future::pending(),
    ));
    let stdout = tritonclient(TRITON_GRPC_SCRIPT, vec![grpc, "triton-grpc-key".into()]).await;
    assert!(stdout.contains("ok"), "{stdout}");
    // The gRPC answer for one row is the HTTP face's.
    let one: f32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("1 "))
        .unwrap()
        .parse()
        .unwrap();
    let http = tritonclient(
        r#"
import sys
import numpy as np
import tritonclient.http as httpclient
client = httpclient.InferenceServerClient(url=sys.argv[1])
inputs = []
for i in range(20):
    t = httpclient.InferInput(f"x{i}", [1], "FP32")
    t.set_data_from_numpy((np.arange(1, dtype=np.float32) % 7 / 7.0 - 0.5) * (1 if i == 0 else 0.3))
    inputs.append(t)
print(float(client.infer("fraud", inputs).as_numpy("probability")[0]))
"#,
        vec![base],
    )
    .await;
    let over_http: f32 = http.trim().parse().unwrap();
    assert!(
        (one - over_http).abs() < 1e-6,
        "{one} over gRPC, {over_http} over HTTP"
    );
}
