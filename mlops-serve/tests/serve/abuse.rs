//! The black-box abuse suite: hostile and faulty clients against the real HTTP
//! face over raw TCP. Each class checks the answer (status, or the connection
//! closed in time), and the immediate classes are sent 1,000 times to measure the
//! server's resident memory before and after. The table goes to
//! `$CARGO_TARGET_TMPDIR/abuse-report.md` and to stdout (`--nocapture`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
use mlops_core::model::{CheckedInputs, ModelArtifact, ModelMetadata, Signature, VersionSelector};

use mlops_core::{Error, ModelLoader, ModelRegistry, Predictor, Result};
use mlops_serve::http::{router, serve};
use mlops_serve::{ApiKeys, DeploymentConfig, HttpConfig, ModelServer, Routing, Scope};
use mlops_store::{ObjectRegistry, StoreRoot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::common::{LinearLoader, artifact, signature, version_model};

const INFER: &str = "infer-key";
const ADMIN: &str = "admin-key";
const METRICS: &str = "metrics-key";
const PAIR: &str = "test-pair";

/// y = a + b over two inputs, so rows can disagree across inputs.
#[derive(Debug)]
struct Pair(Signature);

impl Predictor for Pair {
    fn signature(&self) -> &Signature {
        &self.0
    }

    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let checked = self.0.check_inputs(inputs)?;
        self.predict_checked(checked)
    }

    fn predict_checked(&self, inputs: CheckedInputs<'_>) -> Result<Vec<Tensor>> {
        let a = inputs[0].data.to_f32_vec()?;
        let b = inputs[1].data.to_f32_vec()?;
        let y: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
        Ok(vec![Tensor::new("y", vec![y.len()], TensorData::Fp32(y))?])
    }
}

fn pair_signature() -> Signature {
    Signature {
        inputs: vec![
            TensorSpec::new("a", Datatype::Fp32, vec![-1]),
            TensorSpec::new("b", Datatype::Fp32, vec![-1]),
        ],
        outputs: vec![TensorSpec::new("y", Datatype::Fp32, vec![-1])],
    }
}

#[derive(Debug)]
struct PairLoader;

impl ModelLoader for PairLoader {
    fn flavors(&self) -> Vec<String> {
        vec![PAIR.into()]
    }

    fn load(&self, _artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        Ok(Arc::new(Pair(pair_signature())))
    }
}

struct Face {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn keys() -> ApiKeys {
    ApiKeys::new()
        .with_key("app", INFER, &[Scope::Infer])
        .with_key("ops", ADMIN, &[Scope::Admin])
        .with_key("prometheus", METRICS, &[Scope::Metrics])
}

/// Tight limits, so the deadlines are seen quickly.
fn limits() -> HttpConfig {
    HttpConfig::default()
        .with_keys(keys())
        .with_max_body_bytes(1 << 20)
        .with_max_concurrency(64)
        .with_header_read_timeout(Duration::from_millis(800))
        .with_body_timeout(Duration::from_millis(800))
        .with_write_timeout(Duration::from_millis(800))
        .with_shutdown_grace(Duration::from_millis(500))
}

async fn model_server() -> ModelServer {
    let root = StoreRoot::open("memory://").unwrap();
    let registry = Arc::new(ObjectRegistry::new(&root));
    let linear = ModelMetadata {
        signature: Some(signature()),
        ..Default::default()
    };
    registry
        .register("m", artifact(&version_model(1)), linear)
        .await
        .unwrap();
    let pair = ModelMetadata {
        signature: Some(pair_signature()),
        ..Default::default()
    };
    registry
        .register("p", ModelArtifact::new(PAIR, b"pair".to_vec()), pair)
        .await
        .unwrap();
    let registry: Arc<dyn ModelRegistry> = registry;
    let server = ModelServer::new(
        registry,
        vec![Arc::new(LinearLoader::default()), Arc::new(PairLoader)],
    );
    for (name, model) in [("fraud", "m"), ("pair", "p")] {
        server
            .deploy(DeploymentConfig::new(
                name,
                model,
                Routing::Fixed(VersionSelector::Latest),
            ))
            .await
            .unwrap();
    }
    server
}

async fn face(config: HttpConfig) -> Face {
    let server = model_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(server, config.clone()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        serve(listener, app, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Face {
        addr,
        stop: Some(stop),
        done,
    }
}

/// An HTTP/1.1 request that asks for the connection to close after the answer.
fn http(
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        let _ = write!(head, "authorization: Bearer {k}\r\n");
    }
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `request`, reads until the server closes; the status (None when the
/// connection closed without an answer), the answer and the time it took.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (413, 401) and close before reading all of it.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok());
    (status, text, started.elapsed())
}

/// The resident memory of process `pid`, in kB.
fn resident_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn infer_body(inputs: &str) -> Vec<u8> {
    format!(r#"{{"inputs":[{inputs}]}}"#).into_bytes()
}

/// A version segment that, decoded, holds quotes, braces and a line break: as a
/// label value unescaped it would end the label and forge a series.
const INJECTED: &str = "1%22%7D%201%0Amlops_drift_detected%7Bmodel%3D%22forged";

struct Case {
    class: &'static str,
    request: Vec<u8>,
    status: u16,
}

fn cases() -> Vec<Case> {
    let good_x = r#"{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}"#;
    let infer = "/v2/models/fraud/infer";
    let post = |key: Option<&str>, body: Vec<u8>| http("POST", infer, key, &[], &body);
    let nested = format!(
        r#"{{"name":"x","shape":[1,2],"datatype":"FP32","data":{}1{}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let long_segment = "v".repeat(6 * 1024);
    let mut cases = vec![
        Case {
            class: "forged version label, no key",
            request: http(
                "POST",
                &format!("/v2/models/fraud/versions/{INJECTED}/infer"),
                None,
                &[],
                &infer_body(good_x),
            ),
            status: 401,
        },
        Case {
            class: "forged version label, infer key",
            request: http(
                "POST",
                &format!("/v2/models/fraud/versions/{INJECTED}/infer"),
                Some(INFER),
                &[],
                &infer_body(good_x),
            ),
            status: 404,
        },
        Case {
            class: "6 KB version segment, infer key",
            request: http(
                "POST",
                &format!("/v2/models/fraud/versions/{long_segment}/infer"),
                Some(INFER),
                &[],
                &infer_body(good_x),
            ),
            status: 404,
        },
        Case {
            class: "body over the limit (413)",
            request: post(Some(INFER), vec![b' '; (1 << 20) + 1]),
            status: 413,
        },
        Case {
            class: "shape product overflows",
            request: post(
                Some(INFER),
                infer_body(
                    r#"{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}"#,
                ),
            ),
            status: 400,
        },
        Case {
            class: "huge shape, little data",
            request: post(
                Some(INFER),
                infer_body(r#"{"name":"x","shape":[1000000000,2],"datatype":"FP32","data":[1,2]}"#),
            ),
            status: 400,
        },
        Case {
            class: "nesting 50,000 deep",
            request: post(Some(INFER), infer_body(&nested)),
            status: 400,
        },
        Case {
            class: "binary header length past the body",
            request: http(
                "POST",
                infer,
                Some(INFER),
                &[("inference-header-content-length", "1000000")],
                &infer_body(good_x),
            ),
            status: 400,
        },
        Case {
            class: "NaN literal",
            request: post(
                Some(INFER),
                infer_body(r#"{"name":"x","shape":[1,2],"datatype":"FP32","data":[NaN,1]}"#),
            ),
            status: 400,
        },
        Case {
            class: "duplicate inputs",
            request: post(Some(INFER), infer_body(&format!("{good_x},{good_x}"))),
            status: 400,
        },
        Case {
            class: "unknown input",
            request: post(
                Some(INFER),
                infer_body(r#"{"name":"z","shape":[1,2],"datatype":"FP32","data":[1,2]}"#),
            ),
            status: 400,
        },
        Case {
            class: "rows disagree across inputs",
            request: http(
                "POST",
                "/v2/models/pair/infer",
                Some(INFER),
                &[],
                &infer_body(
                    r#"{"name":"a","shape":[2],"datatype":"FP32","data":[1,2]},{"name":"b","shape":[3],"datatype":"FP32","data":[1,2,3]}"#,
                ),
            ),
            status: 400,
        },
    ];
    // Every route group refuses a missing key (401) and a key without its scope
    // (403); an admin key may do everything.
    let groups: [(&str, &str, &str, Scope); 4] = [
        ("GET", "/v2/models/fraud", "infer: metadata", Scope::Infer),
        (
            "POST",
            "/v2/models/fraud/infer",
            "infer: inference",
            Scope::Infer,
        ),
        (
            "POST",
            "/v2/models/fraud/reload",
            "admin: reload",
            Scope::Admin,
        ),
        ("GET", "/metrics", "metrics", Scope::Metrics),
    ];
    for (method, path, group, scope) in groups {
        let wrong = match scope {
            Scope::Infer => METRICS,
            _ => INFER,
        };
        cases.push(Case {
            class: leak(format!("{group}, no key")),
            request: http(method, path, None, &[], b""),
            status: 401,
        });
        cases.push(Case {
            class: leak(format!("{group}, unknown key")),
            request: http(method, path, Some("not-a-key"), &[], b""),
            status: 401,
        });
        cases.push(Case {
            class: leak(format!("{group}, wrong scope")),
            request: http(method, path, Some(wrong), &[], b""),
            status: 403,
        });
    }
    cases
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_answers_in_bounded_time_and_memory() {
    // The server runs in a process of its own (this test binary, started on the
    // helper below), so its resident memory is measured apart from the other
    // tests running here at the same time.
    let mut server = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "abuse::abuse_server_process",
            "--ignored",
            "--nocapture",
        ])
        .env(SERVER_PROCESS, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = server.id();
    let addr: SocketAddr = {
        use std::io::BufRead;
        let stdout = server.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("the server process ended").unwrap();
            if let Some(a) = line.strip_prefix("ADDR ") {
                break a.parse().unwrap();
            }
        };
        // Keep reading what it prints after, so it never writes to a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        addr
    };
    let mut report = String::from(
        "| Abuse class | Status | Answer time | RSS growth after 1,000 |\n|---|---|---|---|\n",
    );
    for case in cases() {
        let (status, text, took) = exchange(addr, &case.request).await;
        assert_eq!(status, Some(case.status), "{}: {text}", case.class);
        assert!(
            text.contains(r#"{"error":"#),
            "{}: the answer names what was wrong: {text}",
            case.class
        );
        // A burst of the same request, eight at a time, after a short warm-up.
        for _ in 0..16 {
            exchange(addr, &case.request).await;
        }
        let before = resident_kb(pid);
        for _ in 0..1000 / 8 {
            let requests: Vec<_> = (0..8)
                .map(|_| {
                    let r = case.request.clone();
                    tokio::spawn(async move { exchange(addr, &r).await.0 })
                })
                .collect();
            for r in requests {
                assert_eq!(r.await.unwrap(), Some(case.status), "{}", case.class);
            }
        }
        let growth = resident_kb(pid).saturating_sub(before);
        let _ = writeln!(
            report,
            "| {} | {} | {:.1} ms | {:.1} MB |",
            case.class,
            case.status,
            took.as_secs_f64() * 1e3,
            growth as f64 / 1024.0
        );
        assert!(
            growth < 10 * 1024,
            "{}: resident memory grew {growth} kB over 1,000 requests",
            case.class
        );
    }

    // None of it reached the metrics as label values or lines.
    let (status, metrics, _) =
        exchange(addr, &http("GET", "/metrics", Some(METRICS), &[], b"")).await;
    assert_eq!(status, Some(200));
    assert!(!metrics.contains("forged"), "{metrics}");
    assert!(
        !metrics.contains("vvvvvvvv"),
        "a made-up version became a label"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("mlops_drift_detected")),
        "{metrics}"
    );
    assert!(
        metrics.len() < 64 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    let _ = writeln!(
        report,
        "\n/metrics after every burst: {} bytes",
        metrics.len()
    );

    let report_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("abuse-report.md");
    let _ = std::fs::write(&report_path, &report);
    println!("{report}");
    // Closing its stdin stops the server process.
    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
}

/// Set in the environment of the server process the memory test starts.
const SERVER_PROCESS: &str = "MLOPS_ABUSE_SERVER_PROCESS";

/// The server process of the memory test above: serves the abuse suite's face
/// until its stdin closes. Run only by that test (ignored otherwise).
#[test]
#[ignore = "a helper: the server process that the abuse memory test starts"]
fn abuse_server_process() {
    if std::env::var_os(SERVER_PROCESS).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut face = face(limits()).await;
        println!("ADDR {}", face.addr);
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await
        .unwrap();
        if let Some(s) = face.stop.take() {
            let _ = s.send(());
        }
        face.done.await.unwrap().unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_cannot_starve_the_others() {
    let mut face = face(limits().with_max_concurrency(4)).await;
    let addr = face.addr;

    // Part of the headers, then nothing: closed once the header deadline passes.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: test\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "a connection with half its headers stayed open 5 s"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "closed too early: {took:?}"
    );
    println!(
        "| half the headers, then nothing | closed | {:.0} ms |",
        took.as_secs_f64() * 1e3
    );

    // A connection that sends nothing at all is closed the same way.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "a silent connection stayed open 5 s");

    // Headers and part of the body: 408 once the body deadline passes.
    let mut request = http(
        "POST",
        "/v2/models/fraud/infer",
        Some(INFER),
        &[],
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
    );
    request.truncate(request.len() - 20);
    let (status, text, took) = exchange(addr, &request).await;
    assert_eq!(status, Some(408), "{text}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    println!(
        "| headers and part of the body | 408 | {:.0} ms |",
        took.as_secs_f64() * 1e3
    );

    // More stalled bodies than the concurrency limit hold connections, never
    // places among the requests running: a good request still gets through.
    let mut stalls = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request).await.unwrap();
        stalls.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let good = http(
        "POST",
        "/v2/models/fraud/infer",
        Some(INFER),
        &[],
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
    );
    let (status, text, took) = exchange(addr, &good).await;
    assert_eq!(status, Some(200), "{text}");
    println!(
        "| a good request behind 8 stalled bodies (limit 4) | 200 | {:.1} ms |",
        took.as_secs_f64() * 1e3
    );

    // Shutdown finishes within its grace period, stalled clients and all.
    let mut more = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request).await.unwrap();
        more.push(s);
    }
    let started = Instant::now();
    if let Some(s) = face.stop.take() {
        let _ = s.send(());
    }
    face.done.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    println!(
        "| shutdown with 12 stalled clients (grace 0.5 s) | done | {:.0} ms |",
        started.elapsed().as_secs_f64() * 1e3
    );
    drop((stalls, more));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_with_503() {
    let config = limits()
        .with_max_connections(4)
        .with_header_read_timeout(Duration::from_secs(5));
    let mut face = face(config).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(face.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, text, _) =
        exchange(face.addr, &http("GET", "/v2/health/live", None, &[], b"")).await;
    assert_eq!(status, Some(503), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, text, _) =
        exchange(face.addr, &http("GET", "/v2/health/live", None, &[], b"")).await;
    assert_eq!(status, Some(200), "{text}");
    if let Some(s) = face.stop.take() {
        let _ = s.send(());
    }
    face.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_face_without_keys_fails_closed() {
    let server = model_server().await;
    let err = router(server.clone(), HttpConfig::default()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. })
            && err.to_string().contains("allow_unauthenticated"),
        "{err}"
    );
    let err = router(server, limits().with_body_timeout(Duration::ZERO)).unwrap_err();
    assert!(err.to_string().contains("body_timeout"), "{err}");

    // Explicitly open: inference is served, admin still refused.
    let mut face = face(HttpConfig::default().allow_unauthenticated()).await;
    let (status, text, _) = exchange(
        face.addr,
        &http(
            "POST",
            "/v2/models/fraud/infer",
            None,
            &[],
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
        ),
    )
    .await;
    assert_eq!(status, Some(200), "{text}");
    for (method, path) in [
        ("POST", "/v2/models/fraud/reload"),
        ("POST", "/v2/repository/models/fraud/unload"),
        ("POST", "/admin/models/fraud/canary"),
        ("GET", "/admin/models/fraud"),
    ] {
        let (status, text, _) = exchange(face.addr, &http(method, path, None, &[], b"{}")).await;
        assert_eq!(status, Some(403), "{method} {path}: {text}");
        assert!(text.contains("admin scope"), "{text}");
    }
    if let Some(s) = face.stop.take() {
        let _ = s.send(());
    }
    face.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut_off() {
    let mut face = face(limits().with_max_body_bytes(64 << 20)).await;
    // 400,000 rows: an answer of several megabytes, more than the socket
    // buffers hold, so the server's writes stall while the client reads nothing.
    let rows = 400_000;
    let data: Vec<String> = (0..rows).map(|i| format!("{}.25,1", i % 97)).collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{rows},2],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    );
    let mut stream = TcpStream::connect(face.addr).await.unwrap();
    stream
        .write_all(&http(
            "POST",
            "/v2/models/fraud/infer",
            Some(INFER),
            &[],
            body.as_bytes(),
        ))
        .await
        .unwrap();
    // Read nothing for well past the write deadline (0.8 s) and the work.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was still open");
    let text = String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned();
    let announced: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(
        answer.len() < announced,
        "got the whole answer ({} bytes): the stalled write was not cut off",
        answer.len()
    );
    if let Some(s) = face.stop.take() {
        let _ = s.send(());
    }
    face.done.await.unwrap().unwrap();
}
