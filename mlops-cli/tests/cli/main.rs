//! The `mlops` binary as a process: started from a config file, called with a
//! real HTTP client, reloaded by an alias move, stopped by SIGTERM under load;
//! broken configs fail fast naming the key.
//!
//! Every `mlops` process goes through `ChildGuard` or `output_within`: each wait
//! on it has a deadline, and none outlives its test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mlops::arrow::RecordBatch;
use mlops::arrow::array::{ArrayRef, Float64Array, Int64Array};
use mlops::core::inference::{InferenceRequest, Tensor, TensorData};
use mlops::prelude::*;
use mlops::serve::RemoteServer;
use mlops::store::{ObjectRegistry, StoreRoot};
use mlops::train::{ModelSpec, Progress, TabularTrainer, TrainConfig};
use mlops_core::testkit::process::{ChildGuard, Lines, output_within};
use tempfile::TempDir;

mod datasets;
mod drift;
mod enrichment;
mod features;
mod inference_log;
mod onnx;
mod retrain;
mod train;
mod trust;

const KEY: &str = "cli-test-key";

/// The deadline of every wait on the binary, its logs, its HTTP face and the
/// test's own tasks: generous, only there to turn a hang into a failure.
const LIMIT: Duration = Duration::from_secs(120);

/// How long a command that must fail fast (a broken config) may take: generous
/// on a busy machine, far below "it started serving and never stopped".
const FAST: Duration = Duration::from_secs(60);

/// A fresh directory, removed when the returned guard is dropped.
fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mlops-cli-{name}-"))
        .tempdir()
        .unwrap()
}

/// `dir` as a `file://` storage root.
fn store_url(dir: &TempDir) -> String {
    format!("file://{}", dir.path().join("store").display())
}

/// Event times (microseconds, UTC) as an Arrow column.
fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(arrow_array::TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// The `card` view (`card_id` -> `spend`) with 200 cards, card `c` spending
/// `c - 100`, known from `at_us`.
async fn card_spend(offline: &mlops::store::ObjectOfflineStore, at_us: i64) {
    use mlops::arrow::schema::DataType;
    use mlops::core::feature::{ApplyOptions, FeatureView};
    let view = FeatureView::builder("card")
        .join_key("card_id", DataType::Int64)
        .event_time("ts")
        .feature("spend", DataType::Float64)
        .build()
        .unwrap();
    offline
        .apply_view(view, ApplyOptions::default())
        .await
        .unwrap();
    let cards: Vec<i64> = (0..200).collect();
    offline
        .ingest(
            "card",
            RecordBatch::try_from_iter([
                (
                    "card_id",
                    Arc::new(Int64Array::from(cards.clone())) as ArrayRef,
                ),
                ("ts", ts(vec![at_us; 200])),
                (
                    "spend",
                    Arc::new(Float64Array::from_iter_values(
                        cards.iter().map(|c| *c as f64 - 100.0),
                    )) as ArrayRef,
                ),
            ])
            .unwrap(),
        )
        .await
        .unwrap();
}

/// A model of `x -> y` (y = x > shift) trained on a little data.
fn trained(shift: f64) -> mlops::core::TrainedModel {
    let x: Vec<f64> = (0..400).map(|i| f64::from(i) / 100.0 - 2.0).collect();
    let y: Vec<i64> = x.iter().map(|v| i64::from(*v > shift)).collect();
    let data = RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
        ("y", Arc::new(Int64Array::from(y)) as ArrayRef),
    ])
    .unwrap();
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
    c.progress = Progress::Hidden;
    c.epochs = 3;
    TabularTrainer::new(c).fit(&data, "y").unwrap()
}

/// [`trained`], registered as the next version.
async fn register(registry: &ObjectRegistry, shift: f64) -> u64 {
    let trained = trained(shift);
    registry
        .register("fraud", trained.artifact, trained.metadata)
        .await
        .unwrap()
        .version
}

/// A file store whose `fraud` v1 is the champion, and the test config written
/// beside it: the directory (removed when dropped), the registry and the
/// config's path.
async fn champion_store(name: &str) -> (TempDir, ObjectRegistry, PathBuf) {
    let dir = temp_dir(name);
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    let registry = ObjectRegistry::new(&root);
    let v1 = register(&registry, 0.0).await;
    registry.set_alias("fraud", "champion", v1).await.unwrap();
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    (dir, registry, path)
}

fn config(dir: &Path) -> String {
    std::fs::write(dir.join("key"), KEY).unwrap();
    format!(
        r#"
[storage]
root = "file://{root}"

[http]
bind = "127.0.0.1:0"
shutdown_grace = "5s"

[[http.keys]]
name = "test"
key_file = "{key}"
scopes = ["admin"]

[[deployments]]
name = "fraud"
model = "fraud"
routing = {{ fixed = "@champion" }}
reload_interval = "100ms"
"#,
        root = dir.join("store").display(),
        key = dir.join("key").display()
    )
}

/// The binary serving a config file: the process, the base URL it printed,
/// and its logs (`--log-format json`: one JSON object a line, on stderr).
struct Served {
    child: ChildGuard,
    base: String,
    logs: Lines,
    /// Its stdout after the "listening on" line of the HTTP face.
    stdout: Lines,
}

/// Starts the binary serving `config_path` and waits for its address.
fn start(config_path: &Path) -> Served {
    start_with_env(config_path, &[])
}

/// [`start`] with `env` set for the process.
fn start_with_env(config_path: &Path, env: &[(&str, &str)]) -> Served {
    let mut child = ChildGuard::spawn(
        "mlops serve",
        Command::new(env!("CARGO_BIN_EXE_mlops"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stdout = child.stdout_lines();
    let logs = child.stderr_lines();
    // Its stdout is read (and drained) on a thread of its own from here on.
    let base = std::panic::catch_unwind(AssertUnwindSafe(|| {
        stdout.wait_for("its \"listening on\" line", LIMIT, |line| {
            line.strip_prefix("listening on ").map(str::to_owned)
        })
    }))
    .unwrap_or_else(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{why}\nits logs:\n{}", logs.recent())
    });
    Served {
        child,
        base,
        logs,
        stdout,
    }
}

/// Sends SIGTERM and waits (with a deadline) for the exit, off the async
/// workers so the test's client tasks keep running meanwhile.
async fn stop(mut child: ChildGuard) -> ExitStatus {
    child.signal("TERM");
    tokio::task::spawn_blocking(move || child.wait_within(LIMIT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Waits for the next log line whose message `found` accepts (given the
/// message and the whole JSON object), and returns that object. A line whose
/// message is in `forbidden` before it is a failure, as is none within LIMIT.
fn wait_for_log(
    logs: &Lines,
    what: &str,
    forbidden: &[&str],
    found: impl Fn(&str, &serde_json::Value) -> bool,
) -> serde_json::Value {
    // The reads block: off the async workers' hands, on a multi-thread runtime.
    tokio::task::block_in_place(|| {
        logs.wait_for(what, LIMIT, |line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let message = v["fields"]["message"].as_str()?.to_owned();
            assert!(
                !forbidden.contains(&message.as_str()),
                "logged {message:?} while waiting for {what}: {line}"
            );
            found(&message, &v).then_some(v)
        })
    })
}

/// Runs the binary with `args` then `--config <config>`; its exit code, stdout
/// and stderr.
fn mlops(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    mlops_within(args, config, LIMIT)
}

/// [`mlops`], which must have exited within `limit`.
fn mlops_within(args: &[&str], config: &Path, limit: Duration) -> (Option<i32>, String, String) {
    let out = output_within(
        &format!("mlops {} --config {}", args.join(" "), config.display()),
        Command::new(env!("CARGO_BIN_EXE_mlops"))
            .args(args)
            .arg("--config")
            .arg(config),
        limit,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn request() -> InferenceRequest {
    InferenceRequest::new(vec![
        Tensor::new("x", vec![2], TensorData::Fp64(vec![-1.0, 1.0])).unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reloads_and_stops_cleanly_under_load() {
    let (dir, registry, path) = champion_store("serve").await;

    let Served {
        child, base, logs, ..
    } = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    assert!(client.ready().await.unwrap());
    // `mlops health` (the image's HEALTHCHECK) says so too, and fails (exit 1)
    // where nothing listens.
    let health = |args: &[&str]| {
        let out = output_within(
            &format!("mlops health {}", args.join(" ")),
            Command::new(env!("CARGO_BIN_EXE_mlops"))
                .arg("health")
                .args(args),
            FAST,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = health(&["--url", &base]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("live"), "{text}");
    let (code, text) = health(&["--url", &base, "--ready"]);
    assert_eq!(code, Some(0), "{text}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, text) = health(&["--url", &nowhere, "--timeout", "5s"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&nowhere), "{text}");
    // Bad arguments are usage errors (exit 2) naming what was wrong.
    let (code, text) = health(&["--url", "not a url"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("not a url"), "{text}");
    let (code, text) = health(&["--url", &base, "--timeout", "0s"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("timeout"), "{text}");
    let answer = client.infer("fraud", None, request()).await.unwrap();
    assert_eq!(answer.model_version.as_deref(), Some("1"));
    let wrong = RemoteServer::new(&base).unwrap().with_api_key("wrong");
    assert!(matches!(
        wrong.infer("fraud", None, request()).await.unwrap_err(),
        Error::Unauthorized { .. }
    ));

    // An alias move is picked up by the reload poller.
    let v2 = register(&registry, 0.5).await;
    registry.set_alias("fraud", "champion", v2).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let answer = client.infer("fraud", None, request()).await.unwrap();
        if answer.model_version.as_deref() == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alias move was not picked up within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGHUP re-reads the config: a broken one is refused (logged, naming the
    // file and the error) and changes nothing; a new deployment is served,
    // without a restart.
    const RELOADING: &str = "SIGHUP: reloading the config";
    const REFUSED: &str = "the config was not reloaded; serving as before";
    const APPLIED: [&str; 2] = ["redeployed", "unloaded"];
    std::fs::write(&path, "[storage\n").unwrap();
    child.signal("HUP");
    wait_for_log(&logs, "the SIGHUP being handled", &APPLIED, |m, _| {
        m == RELOADING
    });
    let refused = wait_for_log(
        &logs,
        "the broken config being refused",
        &APPLIED,
        |m, _| m == REFUSED,
    );
    let error = refused["fields"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("the refusal names no error: {refused}"));
    assert!(
        error.contains(&path.display().to_string()) && error.contains("line 1"),
        "the refusal does not name the file and the line: {refused}"
    );
    let answer = client.infer("fraud", None, request()).await.unwrap();
    assert_eq!(answer.model_version.as_deref(), Some("2"));
    let mut more = config(dir.path());
    more.push_str(
        "\n[[deployments]]\nname = \"fraud-v1\"\nmodel = \"fraud\"\nrouting = { fixed = \"1\" }\n",
    );
    std::fs::write(&path, more).unwrap();
    child.signal("HUP");
    wait_for_log(&logs, "the second SIGHUP being handled", &[], |m, _| {
        m == RELOADING
    });
    wait_for_log(
        &logs,
        "the new deployment fraud-v1 being deployed",
        &[REFUSED, "not redeployed; serving as before"],
        |m, v| m == "redeployed" && v["fields"]["deployment"] == "fraud-v1",
    );
    let answer = client.infer("fraud-v1", None, request()).await.unwrap();
    assert_eq!(answer.model_version.as_deref(), Some("1"));
    assert!(client.infer("fraud", None, request()).await.is_ok());

    // SIGTERM under load: requests in flight finish; later ones are refused
    // (503 while draining, or no connection once closed), never cut off.
    const CLIENTS: usize = 4;
    let stop_clients = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Each client task says so once its first request has been answered.
    let (answered, mut first_answers) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (client, stop_clients, ok, refused, answered) = (
                client.clone(),
                stop_clients.clone(),
                ok.clone(),
                refused.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                let mut announced = false;
                while !stop_clients.load(Ordering::SeqCst) {
                    match client.infer("fraud", None, request()).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            if !announced {
                                announced = true;
                                let _ = answered.send(i);
                            }
                        }
                        Err(Error::Unavailable { reason, .. })
                            if !reason.contains("reading the answer") =>
                        {
                            refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("a request failed in flight: {e}"),
                    }
                }
            })
        })
        .collect();
    drop(answered);
    // The load is on: every client has had an answer and keeps sending.
    let mut loaded = BTreeSet::new();
    while loaded.len() < CLIENTS {
        let i = tokio::time::timeout(LIMIT, first_answers.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("within {LIMIT:?}, only the clients {loaded:?} had a request answered")
            })
            .unwrap_or_else(|| {
                panic!("the clients ended before each had a request answered ({loaded:?} did)")
            });
        loaded.insert(i);
    }
    let exited = stop(child).await;
    stop_clients.store(true, Ordering::SeqCst);
    for (i, c) in clients.into_iter().enumerate() {
        tokio::time::timeout(LIMIT, c)
            .await
            .unwrap_or_else(|_| panic!("client {i} did not stop within {LIMIT:?}"))
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }
    assert!(exited.success(), "exit status {exited:?}");
    assert!(ok.load(Ordering::SeqCst) > 0);
}

#[test]
fn a_broken_config_fails_fast_naming_the_key() {
    let dir = temp_dir("broken");
    let good = config(dir.path());
    for (broken, code, needles) in [
        (
            good.replace("bind = ", "bnd = "),
            2,
            vec!["line 6", "unknown field `bnd`"],
        ),
        (
            good.replace("reload_interval = \"100ms\"", "reload_interval = \"often\""),
            2,
            vec!["reload_interval", "not a duration"],
        ),
        (
            good.replace("scopes = [\"admin\"]", "scopes = [\"root\"]"),
            2,
            vec!["http.keys[0].scopes", "root"],
        ),
        (
            good.replace("[[http.keys]]", "[[http.nokeys]]"),
            2,
            vec!["unknown field `nokeys`"],
        ),
        (
            good.replace("bind = ", "max_header_bytes = 100\nbind = "),
            2,
            vec!["max_header_bytes", "8192"],
        ),
    ] {
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, broken).unwrap();
        // Fails fast: exits within FAST (instead of serving), or this panics.
        let (got, _, stderr) = mlops_within(&["serve"], &path, FAST);
        assert_eq!(got, Some(code));
        for n in needles {
            assert!(stderr.contains(n), "{n:?} not in {stderr}");
        }
    }
    // No config file at all: named, exit 2. (A model that is not there is no
    // config error: the service comes up without it, see
    // trust::a_missing_alias_at_start_leaves_the_model_not_ready_until_it_appears.)
    let (code, _, stderr) = mlops_within(&["serve"], Path::new("/nonexistent/mlops.toml"), FAST);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/mlops.toml"));
}

#[test]
fn check_reports_the_deployments_as_json() {
    let dir = temp_dir("check");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let (code, stdout, stderr) = mlops(&["--json", "check"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["deployments"], serde_json::json!(["fraud"]));
}

/// Every `mlops_*` metric the Grafana dashboard and the alert rules use appears
/// in a real scrape of the binary serving a model with batching, a cache, a
/// shadow, drift monitoring and feedback, after traffic and outcomes: its
/// family is exported and has samples (every family is declared by a `# TYPE`
/// line from the start, so only samples show that the traffic reached it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_metrics_the_binary_exports() {
    /// Families the dashboard or the alerts use that may have no sample after
    /// this test's traffic, each with the reason. Empty: this traffic reaches
    /// every one of them.
    const NO_SAMPLE_EXPECTED: &[(&str, &str)] = &[];

    let dir = temp_dir("metrics");
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    let registry = ObjectRegistry::new(&root);
    let v1 = register(&registry, 0.0).await;
    let v2 = register(&registry, 0.2).await;
    registry.set_alias("fraud", "champion", v2).await.unwrap();
    let mut text = config(dir.path());
    text = text.replace(
        "reload_interval = \"100ms\"",
        &format!(
            "reload_interval = \"100ms\"\nshadows = [\"{v1}\"]\n\
             batching = {{ max_batch_size = 8, max_queue_delay = \"1ms\" }}\n\
             cache = {{ max_entries = 100, ttl = \"60s\" }}\n\
             monitoring = {{ window_rows = 20, min_rows = 10 }}\n\
             feedback = {{ task = \"binary_classification\", window = 100 }}"
        ),
    );
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, text).unwrap();

    // What the dashboard and the alerts use, by file.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let used: Vec<(&str, BTreeSet<String>)> = [
        "deploy/grafana/dashboard.json",
        "deploy/prometheus/alerts.yaml",
    ]
    .into_iter()
    .map(|file| {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        let mut used = BTreeSet::new();
        for (i, _) in text.match_indices("mlops_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
        assert!(used.len() > 3, "{file}: {used:?}");
        (file, used)
    })
    .collect();
    for (name, _) in NO_SAMPLE_EXPECTED {
        assert!(
            used.iter().any(|(_, u)| u.contains(*name)),
            "{name} is allowed no sample but neither file uses it"
        );
    }

    let Served {
        child, base, logs, ..
    } = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    for i in 0..60 {
        let mut r = request();
        r.id = Some(format!("r{i}"));
        let answer = client.infer("fraud", None, r).await.unwrap();
        client
            .record_feedback("fraud", answer.prediction_id().unwrap(), &[0.0, 1.0])
            .await
            .unwrap();
    }

    // Drift windows are compared, and shadows called, in the background: scrape
    // until every family in use has samples (the drift ones last, typically).
    let deadline = Instant::now() + LIMIT;
    let scrape = loop {
        let scrape = reqwest_get(&format!("{base}/metrics")).await;
        let (exported, sampled) = (exported_families(&scrape), sample_names(&scrape));
        // (One that is not exported at all fails below, without waiting.)
        let missing: BTreeSet<&str> = used
            .iter()
            .flat_map(|(_, u)| u.iter())
            .map(|name| family_of(name, &exported))
            .filter(|f| exported.contains(*f) && !has_sample(f, &sampled))
            .filter(|f| !NO_SAMPLE_EXPECTED.iter().any(|(n, _)| n == f))
            .collect();
        if missing.is_empty() {
            break scrape;
        }
        assert!(
            Instant::now() < deadline,
            "no samples of {missing:?} within {LIMIT:?} after the traffic; the scrape:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = stop(child).await;
    assert!(
        exited.success(),
        "exit status {exited:?}; its logs:\n{}",
        logs.recent()
    );

    let (exported, sampled) = (exported_families(&scrape), sample_names(&scrape));
    for (file, used) in used {
        for name in used {
            let family = family_of(&name, &exported);
            assert!(
                exported.contains(family),
                "{file} uses {name}, which the binary does not export: {exported:?}"
            );
            if let Some((_, why)) = NO_SAMPLE_EXPECTED.iter().find(|(n, _)| *n == family) {
                eprintln!("{file} uses {family}, allowed no sample: {why}");
                continue;
            }
            assert!(
                has_sample(family, &sampled),
                "{file} uses {name}, whose family {family} has no sample after the traffic:\n{scrape}"
            );
        }
    }
}

/// The metric names of a scrape's sample lines (not its comments).
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The families a scrape declares (`# TYPE` lines).
fn exported_families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The family a used name belongs to: an exported family it is a histogram
/// series of, else the name itself.
fn family_of<'a>(name: &'a str, exported: &BTreeSet<String>) -> &'a str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
        .unwrap_or(name)
}

/// Whether `family` has a sample line: its own name, or a histogram's series.
fn has_sample(family: &str, sampled: &BTreeSet<String>) -> bool {
    ["", "_bucket", "_sum", "_count"]
        .iter()
        .any(|s| sampled.contains(&format!("{family}{s}")))
}

/// The body of a GET with the test key, over a plain TCP connection; the whole
/// exchange has a deadline.
async fn reqwest_get(url: &str) -> String {
    let answer = exchange("GET", url).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The whole answer (status line, headers, body) to `method url` with the test
/// key and no body, over a plain TCP connection, within LIMIT.
async fn exchange(method: &str, url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEY}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no complete answer within {LIMIT:?}"))
}

/// `mlops models` against a file registry: register, list, show, alias, archive,
/// verify, as text and JSON; bad input exits non-zero naming what was wrong and
/// changes nothing.
#[test]
fn models_commands_manage_the_registry() {
    let dir = temp_dir("models");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let artifact = dir.path().join("model.bin");
    std::fs::write(&artifact, b"weights").unwrap();
    let mlops = |args: &[&str]| mlops(args, &path);
    let file = artifact.to_str().unwrap();
    for expected in ["version 1", "version 2"] {
        let (code, out, err) = mlops(&["models", "register", "fraud", file, "--flavor", "test"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(expected), "{out}");
    }
    let (code, _, err) = mlops(&["models", "alias", "fraud", "champion", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = mlops(&["--json", "models", "list"]);
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["model"], "fraud");
    assert_eq!(list[0]["versions"], 2);
    assert_eq!(list[0]["aliases"]["champion"], 2);
    let (code, out, _) = mlops(&["models", "archive", "fraud", "1"]);
    assert_eq!(code, Some(0), "{out}");
    let (_, out, _) = mlops(&["models", "show", "fraud"]);
    assert!(
        out.contains("archived") && out.contains("@champion -> 2"),
        "{out}"
    );
    let (code, out, _) = mlops(&["--json", "models", "verify", "fraud", "1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"verified\":true"), "{out}");
    // Bad input: exit non-zero with the reason; the registry is unchanged.
    for (args, code, needle) in [
        (
            vec!["models", "alias", "fraud", "champion", "1"],
            1,
            "archived",
        ),
        (
            vec!["models", "alias", "fraud", "champion", "9"],
            1,
            "fraud@9",
        ),
        (vec!["models", "show", "nope"], 1, "nope"),
        (
            vec![
                "models",
                "register",
                "fraud",
                "/nonexistent",
                "--flavor",
                "t",
            ],
            2,
            "/nonexistent",
        ),
        (vec!["models", "verify", "fraud", "@nope"], 1, "fraud@nope"),
    ] {
        let (got, _, err) = mlops(&args);
        assert_eq!(got, Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // Corrupted bytes are found by verify.
    let blobs = dir.path().join("store/registry/blobs/sha256");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(blob, b"tampered").unwrap();
    let (code, _, err) = mlops(&["models", "verify", "fraud", "2"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("digest") || err.contains("integrity"), "{err}");
    let (_, out, _) = mlops(&["--json", "models", "list"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["aliases"]["champion"], 2);

    // Every change above is in the audit log, whose chain verifies; an entry
    // edited afterwards is found (exit 3).
    let (code, out, err) = mlops(&["--json", "audit", "verify"]);
    assert_eq!(code, Some(0), "{err}");
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verdict["intact"], true);
    assert_eq!(
        verdict["entries"], 4,
        "two registrations, an alias, an archive"
    );
    let (_, out, _) = mlops(&["audit", "tail", "-n", "2"]);
    assert!(
        out.contains("set_alias") && out.contains("archive"),
        "{out}"
    );
    let entry = dir.path().join("store/audit/00000000000000000002.json");
    let text = std::fs::read_to_string(&entry).unwrap();
    std::fs::write(&entry, text.replace("mlops-cli", "someone-else")).unwrap();
    let (code, _, err) = mlops(&["audit", "verify"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("entry 2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_commands_list_and_show_tracked_runs() {
    use mlops::core::tracking::ExperimentTracker;
    let dir = temp_dir("runs");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    let tracker = mlops::store::ObjectTracker::new(&root);
    let run = tracker
        .start_run("fraud", Some("nightly"), Default::default())
        .await
        .unwrap();
    tracker
        .log_metrics(
            &run.id,
            vec![mlops::core::tracking::MetricPoint::now("roc_auc", 0.91, 1)],
        )
        .await
        .unwrap();
    let (code, stdout, stderr) = mlops(&["--json", "runs", "list", "--experiment", "fraud"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    let runs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs[0]["id"], run.id.as_str());
    assert_eq!(runs[0]["latest_metrics"]["roc_auc"], 0.91);
    let (code, _, stderr) = mlops(&["runs", "show", "no-such-run"], &path);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no-such-run"));
}

/// Text logs written to a pipe or a file (a container's log collector) are
/// plain: no colour escape codes, which only a terminal gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_carry_no_escape_codes() {
    let (_dir, _registry, path) = champion_store("ansi").await;
    let mut child = ChildGuard::spawn(
        "mlops serve (text logs)",
        Command::new(env!("CARGO_BIN_EXE_mlops"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let _stdout = child.stdout_lines();
    let logs = child.stderr_lines();
    let line = logs.wait_for("an INFO log line", LIMIT, |l| {
        l.contains("INFO").then(|| l.to_owned())
    });
    assert!(
        !line.contains('\u{1b}') && !logs.recent().contains('\u{1b}'),
        "escape codes in logs written to a pipe: {:?}",
        logs.recent()
    );
    assert_eq!(stop(child).await.code(), Some(0));
}

/// Keys are re-read on SIGHUP: a key rotated in its file works at once and the
/// old one is refused; a key removed from the config stops working at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keys() {
    let (dir, _registry, path) = champion_store("keys").await;
    let base_config = std::fs::read_to_string(&path).unwrap();
    let with_extra = base_config.replace(
        "[[deployments]]",
        &format!(
            "[[http.keys]]\nname = \"extra\"\nsha256 = \"{}\"\nscopes = [\"infer\"]\n\n[[deployments]]",
            mlops::serve::ApiKeys::digest_hex("extra-key")
        ),
    );
    std::fs::write(&path, &with_extra).unwrap();
    let Served {
        child, base, logs, ..
    } = start(&path);
    let as_key = |key: &str| RemoteServer::new(&base).unwrap().with_api_key(key);
    as_key(KEY).infer("fraud", None, request()).await.unwrap();
    as_key("extra-key")
        .infer("fraud", None, request())
        .await
        .unwrap();

    // An admin action over HTTP is logged with the key's name and lands in the
    // audit log `mlops audit` reads.
    let answer = exchange("POST", &format!("{base}/v2/models/fraud/reload")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let logged = wait_for_log(&logs, "the admin action's log line", &[], |m, _| {
        m == "admin action"
    });
    assert_eq!(logged["fields"]["key"], "test", "{logged}");
    let (code, out, err) = mlops(&["--json", "audit", "tail", "-n", "1"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("api-key:test") && out.contains("/v2/models/fraud/reload"),
        "{out}"
    );

    // Rotate the file-held key and drop the extra one from the config.
    std::fs::write(dir.path().join("key"), "rotated-key").unwrap();
    std::fs::write(&path, &base_config).unwrap();
    child.signal("HUP");
    let reloaded = wait_for_log(
        &logs,
        "the keys being reloaded",
        &["API keys not reloaded; the old keys stay"],
        |m, _| m == "API keys reloaded",
    );
    assert_eq!(reloaded["fields"]["keys"], "[\"test\"]", "{reloaded}");
    for old in [KEY, "extra-key"] {
        assert!(
            matches!(
                as_key(old)
                    .infer("fraud", None, request())
                    .await
                    .unwrap_err(),
                Error::Unauthorized { .. }
            ),
            "{old} still accepted"
        );
    }
    as_key("rotated-key")
        .infer("fraud", None, request())
        .await
        .unwrap();

    // A config that leaves no key is refused loudly; the keys stay.
    std::fs::write(
        &path,
        base_config
            .replace("[[http.keys]]", "")
            .replace("name = \"test\"\n", "")
            .replace(
                &format!("key_file = \"{}\"\n", dir.path().join("key").display()),
                "",
            )
            .replace("scopes = [\"admin\"]\n", "")
            .replace("[http]", "[http]\nallow_unauthenticated = true"),
    )
    .unwrap();
    child.signal("HUP");
    let refused = wait_for_log(
        &logs,
        "the empty key set being refused",
        &["API keys reloaded"],
        |m, _| m == "API keys not reloaded; the old keys stay",
    );
    assert!(
        refused["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("at least one")),
        "{refused}"
    );
    as_key("rotated-key")
        .infer("fraud", None, request())
        .await
        .unwrap();
    assert_eq!(stop(child).await.code(), Some(0));
}

/// The Redis server the online part runs against: `MLOPS_TEST_REDIS_URL`, or
/// a `redis-server` started here on a free port (the guard stops it). Neither
/// available is a failure, never a skipped test.
pub(crate) fn redis() -> (String, Option<ChildGuard>) {
    if let Ok(url) = std::env::var("MLOPS_TEST_REDIS_URL") {
        return (url, None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = ChildGuard::spawn(
        "redis-server (MLOPS_TEST_REDIS_URL is unset; install redis-server or set it)",
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + LIMIT;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if let Some(status) = child.child_mut().try_wait().unwrap() {
            panic!("redis-server on port {port} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on port {port} within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (format!("redis://127.0.0.1:{port}"), Some(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_serves_beside_http_with_the_same_keys_reloaded_together() {
    use mlops::serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
    use mlops::serve::grpc::proto::{self as pb, model_infer_request::InferInputTensor};
    let (dir, _registry, path) = champion_store("grpc").await;
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n[grpc]\nbind = \"127.0.0.1:0\"\n")).unwrap();
    let Served {
        child,
        logs,
        stdout,
        ..
    } = start(&path);
    let address = tokio::task::block_in_place(|| {
        stdout.wait_for("its gRPC \"listening on\" line", LIMIT, |line| {
            line.strip_prefix("listening on grpc://").map(str::to_owned)
        })
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", logs.recent()));
    let mut client = GrpcInferenceServiceClient::new(channel);
    let call = |key: &str| {
        let mut r = tonic::Request::new(pb::ModelInferRequest {
            model_name: "fraud".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP64".into(),
                shape: vec![2],
                contents: Some(pb::InferTensorContents {
                    fp64_contents: vec![-1.0, 1.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let answer = client.model_infer(call(KEY)).await.unwrap().into_inner();
    assert_eq!(answer.model_version, "1");
    // The key file rotated, SIGHUP: the old key stops working on gRPC too.
    std::fs::write(dir.path().join("key"), "rotated-grpc-key").unwrap();
    child.signal("HUP");
    wait_for_log(&logs, "the keys being reloaded", &[], |m, _| {
        m == "API keys reloaded"
    });
    let refused = client.model_infer(call(KEY)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    client.model_infer(call("rotated-grpc-key")).await.unwrap();
    assert!(stop(child).await.success(), "{}", logs.recent());
    // TLS files that are not there fail the check, naming the key.
    std::fs::write(
        &path,
        format!("{text}\n[grpc]\nbind = \"127.0.0.1:0\"\ntls = {{ cert_file = \"/nope.crt\", key_file = \"/nope.key\" }}\n"),
    )
    .unwrap();
    let (code, _, err) = mlops_within(&["check"], &path, FAST);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("grpc.tls.cert_file"), "{err}");
    // The HTTP face's too; and PEM that is not a certificate, naming it.
    std::fs::write(
        &path,
        text.replace(
            "[http]\n",
            "[http]\ntls = { cert_file = \"/nope.crt\", key_file = \"/nope.key\" }\n",
        ),
    )
    .unwrap();
    let (code, _, err) = mlops_within(&["check"], &path, FAST);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("http.tls.cert_file"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem").unwrap();
    let junk = junk.display().to_string();
    std::fs::write(
        &path,
        text.replace(
            "[http]\n",
            &format!("[http]\ntls = {{ cert_file = \"{junk}\", key_file = \"{junk}\" }}\n"),
        ),
    )
    .unwrap();
    let (code, _, err) = mlops_within(&["check"], &path, FAST);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("http.tls") && err.contains("certificate"),
        "{err}"
    );
}
