//! The black-box abuse suite: hostile and faulty clients against the real HTTP
//! face over raw TCP. Each class checks the answer (status, or the connection
//! closed in time), and the immediate classes are sent 1,000 times to measure the
//! server's resident memory before and after. The table goes to
//! `$CARGO_TARGET_TMPDIR/abuse-report.md` and to stdout (`--nocapture`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
use mlops_core::model::{CheckedInputs, ModelArtifact, ModelMetadata, Signature, VersionSelector};

use mlops_core::testkit::process::ChildGuard;
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

/// The longest any one wait here may take: far beyond every deadline the server
/// is given, so it runs out only when something hangs.
const PATIENCE: Duration = Duration::from_secs(60);

/// `future`'s output; panics naming `what` when it is not ready within `limit`.
async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Polls `done` (a look at state outside this test's control: a socket, a
/// process) until it is true; panics naming `what` when it is not within `limit`.
async fn poll_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection to `addr`, made within [`PATIENCE`].
async fn connect(addr: SocketAddr) -> TcpStream {
    within(
        "connecting to the server",
        PATIENCE,
        TcpStream::connect(addr),
    )
    .await
    .unwrap_or_else(|e| panic!("could not connect to {addr}: {e}"))
}

/// Sends all of `bytes` within [`PATIENCE`]; panics when the server neither
/// takes them nor closes.
async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    within("sending a request", PATIENCE, stream.write_all(bytes))
        .await
        .unwrap_or_else(|e| panic!("sending a request: {e}"));
}

/// What the kernel says of one IPv4 TCP socket (`/proc/net/tcp`).
#[derive(Debug, Clone, Copy)]
struct SocketState {
    /// `01` established, `04` FIN-WAIT-1, `0A` listening, ...
    state: u8,
    /// Bytes sent and not yet acknowledged by the other end.
    unacked: u64,
    /// Bytes received and not yet read by the socket's owner.
    unread: u64,
}

const ESTABLISHED: u8 = 0x01;

/// The socket from `local` to `remote` (this process's or the in-process
/// server's), `None` when there is none; panics when `/proc/net/tcp` cannot be
/// read or parsed, so an unreadable answer never passes.
fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> Option<SocketState> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => panic!("{a}: only IPv4 sockets are looked up"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_else(|e| panic!("cannot read /proc/net/tcp (socket states): {e}"));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let parsed = (|| {
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            Some(SocketState {
                state,
                unacked: u64::from_str_radix(tx, 16).ok()?,
                unread: u64::from_str_radix(rx, 16).ok()?,
            })
        })();
        Some(parsed.unwrap_or_else(|| panic!("/proc/net/tcp: unreadable line {line:?}")))
    })
}

/// Whether the server (at `server`) has read everything the client at `client`
/// sent: the client's bytes are all acknowledged and none is left unread on the
/// server's side of the connection.
fn server_has_read(server: SocketAddr, client: SocketAddr) -> bool {
    let sent = tcp_socket(client, server).is_some_and(|s| s.unacked == 0);
    let read = tcp_socket(server, client).is_some_and(|s| s.state == ESTABLISHED && s.unread == 0);
    sent && read
}

/// Waits until the server has read everything sent on each of `streams`.
async fn wait_until_read(server: SocketAddr, streams: &[TcpStream], what: &str) {
    let clients: Vec<SocketAddr> = streams.iter().map(|s| s.local_addr().unwrap()).collect();
    poll_until(what, PATIENCE, || {
        clients.iter().all(|c| server_has_read(server, *c))
    })
    .await;
}

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
        matrix_input: None,
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
    let server = within("deploying the models", PATIENCE, model_server()).await;
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

impl Face {
    /// Stops the face and waits (within [`PATIENCE`]) until every connection is
    /// closed; how long that took.
    async fn shut_down(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        within("the face's shutdown", PATIENCE, &mut self.done)
            .await
            .expect("the serving task panicked")
            .expect("serve failed");
        started.elapsed()
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

/// The status of an answer's status line.
fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
}

/// Sends `request`, reads until the server closes; the status (None when the
/// connection closed without an answer), the answer and the time it took.
/// Every step has a deadline far past the server's own ([`PATIENCE`]).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String, Duration) {
    let started = Instant::now();
    let (status, text) = exchange_within(addr, request, PATIENCE).await;
    (status, text, started.elapsed())
}

/// [`exchange`] with `patience` for each step: the status and the answer.
async fn exchange_within(
    addr: SocketAddr,
    request: &[u8],
    patience: Duration,
) -> (Option<u16>, String) {
    let mut stream = connect(addr).await;
    // The server may answer (413, 401) and close before reading all of it: a
    // failed write is fine, one that hangs is not.
    let _ = within(
        "sending a request (the server neither read it nor closed)",
        patience,
        stream.write_all(request),
    )
    .await;
    let mut answer = Vec::new();
    // A reset after the answer is fine: what arrived is kept.
    let _ = within(
        "the server's answer and close",
        patience,
        stream.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    (status_of(&text), text)
}

/// Reads one answer (headers and a `content-length` body) from a connection
/// that stays open after it.
async fn read_one_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    within("an answer on a kept-alive connection", PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("an answer without content-length: {text}"));
                if body.len() >= length {
                    return;
                }
            }
            let n = stream.read(&mut chunk).await.expect("reading an answer");
            assert!(n > 0, "the connection closed mid-answer: {text}");
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The resident memory of process `pid`, in kB; panics when it cannot be read
/// (a measurement that failed must not pass as "no growth").
fn resident_kb(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} (the server process's memory): {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path} has no readable VmRSS line:\n{status}"));
    assert!(kb > 0, "{path} says the server process holds no memory");
    kb
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
    // Beyond twice the 64 KiB header budget, whatever the read sizes (hyper
    // checks the limit between reads, each at most the limit).
    let big_header = "h".repeat(200 * 1024);
    let mut cases = vec![
        Case {
            class: "200 KB of headers, no key (431 before auth)",
            request: http(
                "GET",
                "/v2/health/live",
                None,
                &[("x-filler", &big_header)],
                &[],
            ),
            status: 431,
        },
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

/// Requests in one memory burst (sent eight at a time).
const BURST: usize = 1000;
/// Bursts measured after the warm-up one; the least growth counts.
const BURSTS: usize = 3;

/// Sends `case` [`BURST`] times, eight at a time; each gets its status.
async fn burst(addr: SocketAddr, case: &Case) {
    for _ in 0..BURST / 8 {
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let r = case.request.clone();
                tokio::spawn(async move { exchange(addr, &r).await })
            })
            .collect();
        for r in requests {
            let (status, text, _) = within("a request of a burst", PATIENCE, r)
                .await
                .expect("a request of a burst panicked");
            assert_eq!(status, Some(case.status), "{}: {text}", case.class);
        }
    }
}

/// This test binary started on [`abuse_server_process`] alone, with `env`
/// set: a server whose memory is its own to measure.
fn server_process(what: &str, env: &[(&str, &str)]) -> ChildGuard {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "abuse::abuse_server_process",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(SERVER_PROCESS, "1")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    ChildGuard::spawn(what, &mut command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_answers_in_bounded_time_and_memory() {
    // The server runs in a process of its own (this test binary, started on the
    // helper below and on nothing else), so its resident memory is measured
    // apart from the other tests running here at the same time.
    let mut server = server_process("the abuse suite's server process", &[]);
    let pid = server.id();
    // Read on a thread of its own: the pipe is drained until the process ends.
    let lines = server.stdout_lines();
    let addr: SocketAddr = lines.wait_for("its ADDR line", Duration::from_secs(120), |l| {
        // After the test harness's "test abuse::abuse_server_process ... ".
        l.split_once("ADDR ")
            .map(|(_, a)| a.trim().parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
    });
    let mut report = String::from(
        "| Abuse class | Status | Answer time | RSS growth per 1,000 (least of 3 bursts, after a warm-up burst) |\n|---|---|---|---|\n",
    );
    let cases = cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let (status, text, took) = exchange(addr, &case.request).await;
        assert_eq!(status, Some(case.status), "{}: {text}", case.class);
        // hyper answers oversized headers itself, before any handler: its
        // status line is the message.
        let named = if case.status == 431 {
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large")
        } else {
            text.contains(r#"{"error":"#)
        };
        assert!(
            named,
            "{}: the answer names what was wrong: {text}",
            case.class
        );
        // A warm-up burst, not counted: buffers, pools and the allocator's
        // arenas reach their working size.
        burst(addr, case).await;
        // Then the growth of each of the next bursts. Memory the allocator keeps
        // after one burst is not a leak; a leak grows in every burst, so the
        // least growth is the one held to the limit.
        let mut growths = Vec::new();
        for _ in 0..BURSTS {
            let before = resident_kb(pid);
            burst(addr, case).await;
            growths.push(resident_kb(pid).saturating_sub(before));
        }
        let growth = *growths.iter().min().expect("no burst measured");
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
            "{}: resident memory grew in every burst of 1,000 requests, at least {growth} kB (each burst: {growths:?} kB)",
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
    drop(server.child_mut().stdin.take());
    let exit = server.wait_within(PATIENCE);
    assert!(
        exit.success(),
        "the server process ended with {exit}; it printed:\n{}",
        lines.recent()
    );
}

/// Set in the environment of the server process the memory test starts.
const SERVER_PROCESS: &str = "MLOPS_ABUSE_SERVER_PROCESS";

/// The server process of the memory test above: serves the abuse suite's face
/// until its stdin closes (the test closes it, or dies and the pipe closes).
/// Run only by that test (ignored otherwise).
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
        // The memory classes' server has bodies and a budget to measure them
        // against (see `memory_limits`).
        let config = if std::env::var_os(MEMORY_SERVER).is_some() {
            memory_limits()
        } else {
            limits()
        };
        let mut face = face(config).await;
        println!("ADDR {}", face.addr);
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await
        .unwrap();
        face.shut_down().await;
    });
}

/// A good inference request.
fn good_request() -> Vec<u8> {
    http(
        "POST",
        "/v2/models/fraud/infer",
        Some(INFER),
        &[],
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
    )
}

/// A good inference request less the last 20 bytes of its body: the server
/// waits for them.
fn stalled_request() -> Vec<u8> {
    let mut request = good_request();
    request.truncate(request.len() - 20);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_cannot_starve_the_others() {
    // The deadlines of `limits()`: 800 ms. A client is cut off no sooner than
    // its deadline (lower bounds here); how much later depends on the machine,
    // so every upper bound is PATIENCE, there only to catch a hang.
    let deadline = Duration::from_millis(700);
    let mut strict = face(limits().with_max_concurrency(4)).await;
    let addr = strict.addr;

    // Part of the headers, then nothing: closed once the header deadline passes.
    let started = Instant::now();
    let mut stalled = connect(addr).await;
    send(
        &mut stalled,
        b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: test\r\n",
    )
    .await;
    let took = closed_no_sooner_than(
        "closing a connection with half its headers",
        &mut stalled,
        started,
        deadline,
    )
    .await;
    println!(
        "| half the headers, then nothing | closed | {:.0} ms |",
        took.as_secs_f64() * 1e3
    );

    // A connection that sends nothing at all is closed the same way.
    let started = Instant::now();
    let mut silent = connect(addr).await;
    closed_no_sooner_than(
        "closing a silent connection",
        &mut silent,
        started,
        deadline,
    )
    .await;

    // Headers and part of the body: 408 once the body deadline passes.
    let request = stalled_request();
    let (status, text, took) = exchange(addr, &request).await;
    assert_eq!(status, Some(408), "{text}");
    assert!(took >= deadline, "408 before the body deadline: {took:?}");
    println!(
        "| headers and part of the body | 408 | {:.0} ms |",
        took.as_secs_f64() * 1e3
    );
    strict.shut_down().await;

    // More stalled bodies than the concurrency limit hold connections, never
    // places among the requests running: a good request still gets through.
    // On a face whose body deadline is far past anything this test waits, so
    // the stalled requests are all still in the server when the good one comes,
    // and only the shutdown's grace period can end them.
    let grace = Duration::from_millis(500);
    let mut patient = face(
        limits()
            .with_max_concurrency(4)
            .with_body_timeout(Duration::from_secs(600))
            .with_shutdown_grace(grace),
    )
    .await;
    let addr = patient.addr;
    let mut stalls = Vec::new();
    for _ in 0..8 {
        let mut s = connect(addr).await;
        send(&mut s, &request).await;
        stalls.push(s);
    }
    wait_until_read(
        addr,
        &stalls,
        "the server reading the 8 stalled requests' headers",
    )
    .await;
    let (status, text, took) = exchange(addr, &good_request()).await;
    assert_eq!(status, Some(200), "{text}");
    println!(
        "| a good request behind 8 stalled bodies (limit 4) | 200 | {:.1} ms |",
        took.as_secs_f64() * 1e3
    );

    // Shutdown finishes once its grace period is over, stalled clients and all:
    // it waits the grace period for the requests in flight, then closes them.
    for _ in 0..4 {
        let mut s = connect(addr).await;
        send(&mut s, &request).await;
        stalls.push(s);
    }
    wait_until_read(
        addr,
        &stalls,
        "the server reading the 12 stalled requests' headers",
    )
    .await;
    let took = patient.shut_down().await;
    assert!(
        took >= grace,
        "shutdown did not give the requests in flight their grace period: {took:?}"
    );
    println!(
        "| shutdown with 12 stalled clients (grace 0.5 s) | done | {:.0} ms |",
        took.as_secs_f64() * 1e3
    );
    let mut sink = Vec::new();
    for s in &mut stalls {
        let _ = within(
            "a stalled client closed at shutdown",
            PATIENCE,
            s.read_to_end(&mut sink),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_with_503() {
    // Idle connections are closed only by the header deadline: far past
    // anything this test waits.
    let config = limits()
        .with_max_connections(4)
        .with_probe_connections(1)
        .with_header_read_timeout(Duration::from_secs(600));
    let mut face = face(config).await;
    let live = http("GET", "/v2/health/live", None, &[], b"");
    let ready = http("GET", "/v2/health/ready", None, &[], b"");
    let models = http("GET", "/v2/models", Some(INFER), &[], b"");
    // Four connections, each answered and kept alive: each holds a slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect(face.addr).await;
        send(
            &mut s,
            b"GET /v2/health/live HTTP/1.1\r\nhost: test\r\n\r\n",
        )
        .await;
        let answer = read_one_answer(&mut s).await;
        assert_eq!(status_of(&answer), Some(200), "{answer}");
        held.push(s);
    }
    // The reserve slot still answers health probes, one per connection, so a
    // pod whose slots are all held is not restarted; anything else is refused.
    for probe in [&live, &ready] {
        let (status, text, _) = exchange(face.addr, probe).await;
        assert_eq!(
            status,
            Some(200),
            "a probe while every slot is held: {text}"
        );
    }
    let (status, text, _) = exchange(face.addr, &models).await;
    assert_eq!(status, Some(503), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    // A client holding the reserve slot too (connected, silent: accepted before
    // the next connection) leaves only the at-once 503.
    let idle = connect(face.addr).await;
    let (status, text, _) = exchange(face.addr, &live).await;
    assert_eq!(status, Some(503), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    // Closed by the clients: the slots free once the server has seen that.
    drop(idle);
    drop(held);
    let started = Instant::now();
    loop {
        let (status, text, _) = exchange(face.addr, &live).await;
        if status == Some(200) {
            break;
        }
        assert!(
            status == Some(503) && text.contains("too many connections"),
            "{text}"
        );
        assert!(
            started.elapsed() < PATIENCE,
            "the slots of 4 closed connections were not freed within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    face.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_face_without_keys_fails_closed() {
    let server = within("deploying the models", PATIENCE, model_server()).await;
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
    face.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut_off() {
    // The write deadline (800 ms) is what is tested: the body and the request
    // get deadlines far past anything this test waits.
    let mut face = face(
        limits()
            .with_max_body_bytes(64 << 20)
            .with_body_timeout(Duration::from_secs(600))
            .with_request_timeout(Duration::from_secs(600)),
    )
    .await;
    // 400,000 rows with long decimals: an answer of several megabytes, more
    // than the socket buffers hold, so the server's writes stall while the
    // client reads nothing.
    let rows = 400_000;
    let data: Vec<String> = (0..rows)
        .map(|i| format!("{},1", f64::from(i % 9973) / 7.0))
        .collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{rows},2],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    );
    let mut stream = connect(face.addr).await;
    let client = stream.local_addr().unwrap();
    send(
        &mut stream,
        &http(
            "POST",
            "/v2/models/fraud/infer",
            Some(INFER),
            &[],
            body.as_bytes(),
        ),
    )
    .await;
    // Read nothing until the server has closed its side of the connection (its
    // socket leaves ESTABLISHED): the work is done, the answer stalled, and the
    // write deadline cut it off.
    poll_until(
        "the server closing the connection of a client that reads nothing",
        2 * PATIENCE,
        || tcp_socket(face.addr, client).is_none_or(|s| s.state != ESTABLISHED),
    )
    .await;
    // What the kernel buffered arrives, then the end.
    let mut answer = Vec::new();
    within("the rest of a cut-off answer", PATIENCE, async {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned();
    assert_eq!(
        status_of(&text),
        Some(200),
        "the answer did not start: {text}"
    );
    let announced: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the answer announced no length: {text}"));
    assert!(
        answer.len() < announced,
        "got the whole answer ({} bytes): the stalled write was not cut off",
        answer.len()
    );
    face.shut_down().await;
}

/// Waits (within PATIENCE) until the server closes `stream`, and checks that it
/// did not before `deadline` had passed since `started`; the time it took.
async fn closed_no_sooner_than(
    what: &str,
    stream: &mut TcpStream,
    started: Instant,
    deadline: Duration,
) -> Duration {
    let mut sink = Vec::new();
    let _ = within(what, PATIENCE, stream.read_to_end(&mut sink)).await;
    let took = started.elapsed();
    assert!(took >= deadline, "{what}: closed too early: {took:?}");
    took
}

// ---------------------------------------------------------------------------
// Memory under hostile bodies: the server's peak resident memory above idle,
// in a fresh server process per measurement (the peak, `VmHWM`, cannot be
// reset without privileges), with 1 and with 32 hostile clients at once.

/// Set (with [`SERVER_PROCESS`]) when the server process is to serve with
/// [`memory_limits`].
const MEMORY_SERVER: &str = "MLOPS_ABUSE_MEMORY_SERVER";

// The issue's figures are a 15 MB chunked body and a 30 MB body of empty
// strings. This debug-built server reads about half a megabyte of one-byte
// chunks a second on the two-core machine, so the classes are smaller by
// default: 4 MB and 10.5 MB, with the body limit and the budget to match.
// What they measure is unchanged: before the fix a one-byte-chunk body held
// about 37 bytes per byte (4 MB: 149 MB measured, against a target of 36 MB)
// and empty strings decoded to about 10x their body (10.5 MB: ~105 MB,
// against 42 MB), and 32 clients were bounded by nothing.
// `MLOPS_ABUSE_MEMORY_FULL=1` runs the issue's sizes (minutes).

/// The sizes of the memory classes and of the server they are sent to.
#[derive(Debug, Clone, Copy)]
struct MemorySizes {
    /// The server's largest body.
    max_body: usize,
    /// Its server-wide budget of bodies read or decoded at once: by default as
    /// small as the largest body allows, so that 32 clients sending a byte per
    /// chunk fill it within the test's time.
    budget: usize,
    /// Payload of the chunked class, sent one byte per chunk (about 6 bytes of
    /// framing each).
    chunked: usize,
    /// Empty strings in the `BYTES` class (`"",` is 3 bytes each).
    strings: usize,
}

fn memory_sizes() -> MemorySizes {
    if std::env::var_os("MLOPS_ABUSE_MEMORY_FULL").is_some() {
        MemorySizes {
            max_body: 32 << 20,
            budget: 64 << 20,
            chunked: 15_000_000,
            strings: 10_000_000,
        }
    } else {
        MemorySizes {
            max_body: 12 << 20,
            budget: 12 << 20,
            chunked: 4_000_000,
            strings: 3_500_000,
        }
    }
}

const MB: f64 = 1024.0 * 1024.0;

/// Limits for the memory classes ([`memory_sizes`]), with deadlines long
/// enough for megabytes sent a byte at a time.
fn memory_limits() -> HttpConfig {
    HttpConfig::default()
        .with_keys(keys())
        .with_max_body_bytes(memory_sizes().max_body)
        .with_max_body_budget_bytes(memory_sizes().budget)
        .with_max_concurrency(64)
        .with_body_timeout(Duration::from_secs(120))
        .with_shutdown_grace(Duration::from_millis(500))
}

/// A `/proc/<pid>/status` figure (`VmRSS`, `VmHWM`) in bytes; panics when it
/// cannot be read, so a failed measurement never passes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path} (the server process's memory): {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path} has no readable {field} line:\n{status}"));
    assert!(kb > 0, "{path} says {field} is 0");
    kb * 1024
}

/// One inference request whose body is sent with `Transfer-Encoding: chunked`,
/// one byte per chunk: a good request padded with spaces to `payload` bytes.
fn one_byte_chunks(payload: usize) -> Vec<u8> {
    let mut body =
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#.to_vec();
    body.resize(payload, b' ');
    let mut out = format!(
        "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
         authorization: Bearer {INFER}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    out.reserve(body.len() * 6 + 5);
    for b in body {
        out.extend_from_slice(b"1\r\n");
        out.push(b);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One inference request of `n` empty `BYTES` strings, as JSON with a
/// `Content-Length`.
fn empty_strings(n: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"inputs":[{{"name":"x","shape":[{n}],"datatype":"BYTES","data":["#)
        .into_bytes();
    body.reserve(3 * n + 4);
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"\"\"");
    }
    body.extend_from_slice(b"]}]}");
    http("POST", "/v2/models/fraud/infer", Some(INFER), &[], &body)
}

/// A memory class: what is sent, how large its body is, and the answers a
/// client may get alone and among 32.
struct MemoryClass {
    class: &'static str,
    request: Arc<Vec<u8>>,
    body_bytes: usize,
    /// The answer to one such client alone.
    alone: u16,
}

/// The longest a memory class's client may take to send its body and read
/// the answer: megabytes a byte per chunk, 32 clients at once, on a busy
/// machine. There only to catch a hang.
const SLOW_PATIENCE: Duration = Duration::from_secs(300);

/// [`exchange`] with [`SLOW_PATIENCE`] for each step: the status (None when the
/// connection closed without an answer) and the answer.
async fn slow_exchange(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    exchange_within(addr, request, SLOW_PATIENCE).await
}

/// A server process serving [`memory_limits`], its pid and address.
fn memory_server() -> (ChildGuard, mlops_core::testkit::process::Lines, SocketAddr) {
    let mut server = server_process(
        "the abuse suite's memory server process",
        &[(MEMORY_SERVER, "1")],
    );
    let lines = server.stdout_lines();
    let addr: SocketAddr = lines.wait_for("its ADDR line", Duration::from_secs(120), |l| {
        l.split_once("ADDR ")
            .map(|(_, a)| a.trim().parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
    });
    (server, lines, addr)
}

/// The peak resident memory of a fresh server process above its idle
/// resident memory, across `clients` sending `class` at once; checks each
/// answer. Idle is measured after a good request has been answered (the
/// runtime's first-request allocations are not the class's).
async fn peak_above_idle(class: &MemoryClass, clients: usize) -> u64 {
    let (mut server, lines, addr) = memory_server();
    let pid = server.id();
    let (status, text, _) = exchange(addr, &good_request()).await;
    assert_eq!(status, Some(200), "the warm-up request: {text}");
    let idle = proc_status_bytes(pid, "VmRSS");
    let started = Instant::now();
    let sends: Vec<_> = (0..clients)
        .map(|_| {
            let request = class.request.clone();
            tokio::spawn(async move { slow_exchange(addr, &request).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sends {
        let (status, text) = s.await.expect("a hostile client panicked");
        if clients == 1 {
            assert_eq!(status, Some(class.alone), "{}, alone: {text}", class.class);
        } else {
            // Among 32, a client is answered as it would be alone, or 503
            // (the budget is taken) and possibly cut off while still sending
            // (no answer read), or 408 (the server, busy with the others, had
            // not read its body by the deadline).
            assert!(
                status.is_none_or(|s| s == class.alone || s == 503 || s == 408),
                "{}, among {clients}: {text}",
                class.class
            );
            if status == Some(503) {
                assert!(
                    text.contains("retry-after: 1"),
                    "503 without Retry-After: {text}"
                );
            }
        }
        statuses.push(status);
    }
    // The server still answers after the burst.
    let (status, text, _) = exchange(addr, &good_request()).await;
    assert_eq!(status, Some(200), "a good request after the burst: {text}");
    let peak = proc_status_bytes(pid, "VmHWM");
    drop(server.child_mut().stdin.take());
    let exit = server.wait_within(PATIENCE);
    assert!(
        exit.success(),
        "the memory server process ended with {exit}; it printed:\n{}",
        lines.recent()
    );
    eprintln!(
        "{}, {clients} client(s): idle {:.1} MB, peak {:.1} MB, burst {:.1} s, answers {statuses:?}",
        class.class,
        idle as f64 / MB,
        peak as f64 / MB,
        started.elapsed().as_secs_f64()
    );
    peak.saturating_sub(idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_cost_about_their_size_and_all_of_them_the_budget() {
    let sizes = memory_sizes();
    let chunked = one_byte_chunks(sizes.chunked);
    let strings = empty_strings(sizes.strings);
    let strings_body =
        strings.len() - strings.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
    let mut classes = vec![
        MemoryClass {
            class: "chunked body, 1-byte chunks",
            request: Arc::new(chunked),
            body_bytes: sizes.chunked,
            alone: 200,
        },
        MemoryClass {
            class: "JSON body of empty BYTES strings",
            request: Arc::new(strings),
            body_bytes: strings_body,
            // Refused before its 10M strings are decoded.
            alone: 400,
        },
    ];
    if let Some(only) = std::env::var_os("MLOPS_ABUSE_MEMORY_CLASS") {
        // For looking at one class by hand.
        classes.retain(|c| c.class.contains(only.to_str().unwrap_or_default()));
    }
    let mut report = String::from(
        "| Memory class | Body | Clients | Peak RSS above idle (least of up to 3 fresh processes) | Target |\n|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for class in &classes {
        for clients in [1usize, 32] {
            // One hostile request: its body plus 32 MB; 32 at once: the
            // budget plus 64 MB.
            let target = if clients == 1 {
                class.body_bytes as u64 + (32 << 20)
            } else {
                sizes.budget as u64 + (64 << 20)
            };
            // A peak is a single figure a busy machine can push up (another
            // test's burst is not in this process, but the allocator's
            // timing is): the least of up to three fresh processes counts.
            let mut peaks = Vec::new();
            for _ in 0..3 {
                peaks.push(peak_above_idle(class, clients).await);
                if peaks.last().is_some_and(|&p| p < target) {
                    break;
                }
            }
            let least = *peaks.iter().min().expect("no measurement");
            let _ = writeln!(
                report,
                "| {} | {:.1} MB | {clients} | {:.1} MB | < {:.0} MB |",
                class.class,
                class.body_bytes as f64 / MB,
                least as f64 / MB,
                target as f64 / MB
            );
            if least >= target {
                failures.push(format!(
                    "{}, {clients} client(s): peak {:.1} MB above idle, target < {:.0} MB (each try: {:?} MB)",
                    class.class,
                    least as f64 / MB,
                    target as f64 / MB,
                    peaks.iter().map(|&p| (p as f64 / MB * 10.0).round() / 10.0).collect::<Vec<_>>()
                ));
            }
        }
    }
    let _ = writeln!(
        report,
        "\nServer: max_body_bytes {} MiB, max_body_budget_bytes {} MiB.",
        sizes.max_body >> 20,
        sizes.budget >> 20
    );
    let report_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("abuse-memory-report.md");
    let _ = std::fs::write(&report_path, &report);
    println!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_share_one_budget_503_while_it_is_taken_and_every_request_gives_it_back() {
    // A budget of one largest body: a request that kept its charge (about 16
    // KiB of body and decoded inputs) would leave the next ones 503 within
    // a handful of requests.
    let budget = 64 << 10;
    let config = limits()
        .with_max_body_bytes(budget)
        .with_max_body_budget_bytes(budget);
    let mut face = face(config).await;
    let refused = http(
        "POST",
        "/v2/models/fraud/infer",
        Some(INFER),
        &[],
        &infer_body(r#"{"name":"x","shape":[1,2],"datatype":"BYTES","data":["",""]}"#),
    );
    let too_large = http(
        "POST",
        "/v2/models/fraud/infer",
        Some(INFER),
        &[],
        &vec![b' '; budget + 1],
    );
    for round in 0..30 {
        for (request, expected) in [(&good_request(), 200), (&refused, 400), (&too_large, 413)] {
            let (status, text, _) = exchange(face.addr, request).await;
            assert_eq!(status, Some(expected), "round {round}: {text}");
        }
    }

    // A client that sends most of a largest body and stalls holds the budget:
    // every other body, inference or admin, is refused with 503 and
    // Retry-After until the stalled one is cut off.
    let mut stalled = connect(face.addr).await;
    let head = format!(
        "POST /v2/models/fraud/infer HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
         authorization: Bearer {INFER}\r\ncontent-length: {budget}\r\n\r\n"
    );
    send(&mut stalled, head.as_bytes()).await;
    send(&mut stalled, &vec![b' '; budget - 1024]).await;
    let mut answer = String::new();
    let deadline = Instant::now() + PATIENCE;
    while status_of(&answer) != Some(503) {
        assert!(
            Instant::now() < deadline,
            "no 503 while a stalled body holds the budget; last answer: {answer}"
        );
        let (status, text, _) = exchange(face.addr, &good_request()).await;
        assert!(matches!(status, Some(200 | 503)), "{text}");
        answer = text;
    }
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("budget"), "{answer}");
    let canary = http(
        "POST",
        "/admin/models/fraud/canary",
        Some(ADMIN),
        &[],
        br#"{"weight":0.5}"#,
    );
    let (status, text, _) = exchange(face.addr, &canary).await;
    assert_eq!(status, Some(503), "an admin body shares the budget: {text}");
    // Cut off at its body deadline (408), the stalled request gives its
    // charge back.
    let mut cut = Vec::new();
    let _ = within(
        "the stalled client's answer",
        PATIENCE,
        stalled.read_to_end(&mut cut),
    )
    .await;
    let cut = String::from_utf8_lossy(&cut);
    assert_eq!(status_of(&cut), Some(408), "{cut}");
    let (status, text, _) = exchange(face.addr, &good_request()).await;
    assert_eq!(status, Some(200), "the budget is back: {text}");
    face.shut_down().await;
}
