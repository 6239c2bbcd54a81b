//! The `mlops` binary as a process: started from a config file, called with a
//! real HTTP client, reloaded by an alias move, stopped by SIGTERM under load;
//! broken configs fail fast naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

const KEY: &str = "cli-test-key";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mlops-cli-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A model of `x -> y` trained on a little data, registered as the next version.
async fn register(registry: &ObjectRegistry, shift: f64) -> u64 {
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
    let trained = TabularTrainer::new(c).fit(&data, "y").unwrap();
    registry
        .register("fraud", trained.artifact, trained.metadata)
        .await
        .unwrap()
        .version
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

/// The binary serving `config`, and the base URL it printed.
fn start(config_path: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlops"))
        .args(["serve", "--config"])
        .arg(config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, base)
}

/// Runs the binary with `args` then `--config <config>`; its exit code, stdout
/// and stderr.
fn mlops(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlops"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
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
    let dir = temp_dir("serve");
    let root = StoreRoot::open(&format!("file://{}", dir.join("store").display())).unwrap();
    let registry = ObjectRegistry::new(&root);
    let v1 = register(&registry, 0.0).await;
    registry.set_alias("fraud", "champion", v1).await.unwrap();
    let path = dir.join("mlops.toml");
    std::fs::write(&path, config(&dir)).unwrap();

    let (mut child, base) = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    assert!(client.ready().await.unwrap());
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client.infer("fraud", None, request()).await.unwrap();
        if answer.model_version.as_deref() == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alias move was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGHUP re-reads the config: a broken one changes nothing; a new
    // deployment is served, without a restart.
    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::write(&path, "[storage\n").unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client.infer("fraud", None, request()).await.is_ok());
    let mut more = config(&dir);
    more.push_str(
        "\n[[deployments]]\nname = \"fraud-v1\"\nmodel = \"fraud\"\nrouting = { fixed = \"1\" }\n",
    );
    std::fs::write(&path, more).unwrap();
    hup(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if let Ok(a) = client.infer("fraud-v1", None, request()).await {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the new deployment was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.model_version.as_deref(), Some("1"));
    assert!(client.infer("fraud", None, request()).await.is_ok());

    // SIGTERM under load: requests in flight finish; later ones are refused
    // (503 while draining, or no connection once closed), never cut off.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, ok, refused) =
                (client.clone(), stop.clone(), ok.clone(), refused.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match client.infer("fraud", None, request()).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert!(exited.success(), "exit status {exited:?}");
    assert!(ok.load(Ordering::SeqCst) > 0);
}

#[test]
fn a_broken_config_fails_fast_naming_the_key() {
    let dir = temp_dir("broken");
    let good = config(&dir);
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
    ] {
        let path = dir.join("broken.toml");
        std::fs::write(&path, broken).unwrap();
        let started = Instant::now();
        let (got, _, stderr) = mlops(&["serve"], &path);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(got, Some(code));
        for n in needles {
            assert!(stderr.contains(n), "{n:?} not in {stderr}");
        }
    }
    // No config file at all: named, exit 2; a model that is not there: exit 1.
    let (code, _, stderr) = mlops(&["serve"], Path::new("/nonexistent/mlops.toml"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/mlops.toml"));
    let path = dir.join("empty-store.toml");
    std::fs::write(&path, config(&dir)).unwrap();
    let (code, _, stderr) = mlops(&["serve"], &path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("fraud"));
}

#[test]
fn check_reports_the_deployments_as_json() {
    let dir = temp_dir("check");
    let path = dir.join("mlops.toml");
    std::fs::write(&path, config(&dir)).unwrap();
    let (code, stdout, stderr) = mlops(&["--json", "check"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["deployments"], serde_json::json!(["fraud"]));
}

/// Every `mlops_*` metric the Grafana dashboard and the alert rules use appears
/// in a real scrape of the binary serving a model with batching, a cache, a
/// shadow, drift monitoring and feedback, after traffic and outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_metrics_the_binary_exports() {
    let dir = temp_dir("metrics");
    let root = StoreRoot::open(&format!("file://{}", dir.join("store").display())).unwrap();
    let registry = ObjectRegistry::new(&root);
    let v1 = register(&registry, 0.0).await;
    let v2 = register(&registry, 0.2).await;
    registry.set_alias("fraud", "champion", v2).await.unwrap();
    let mut text = config(&dir);
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
    let path = dir.join("mlops.toml");
    std::fs::write(&path, text).unwrap();
    let (mut child, base) = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    for i in 0..60 {
        let mut r = request();
        r.id = Some(format!("r{i}"));
        client.infer("fraud", None, r).await.unwrap();
        client
            .record_feedback("fraud", &format!("r{i}"), &[0.0, 1.0])
            .await
            .unwrap();
    }
    // Drift windows are compared in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scrape = reqwest_get(&format!("{base}/metrics")).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let exported: std::collections::BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/grafana/dashboard.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        let mut used = std::collections::BTreeSet::new();
        for (i, _) in text.match_indices("mlops_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
        assert!(used.len() > 3, "{file}: {used:?}");
        for name in used {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
                .unwrap_or(&name);
            assert!(
                exported.contains(family),
                "{file} uses {name}, which the binary does not export: {exported:?}"
            );
        }
    }
}

/// The body of a GET with the test key, over a plain TCP connection.
async fn reqwest_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEY}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// `mlops models` against a file registry: register, list, show, alias, archive,
/// verify, as text and JSON; bad input exits non-zero naming what was wrong and
/// changes nothing.
#[test]
fn models_commands_manage_the_registry() {
    let dir = temp_dir("models");
    let path = dir.join("mlops.toml");
    std::fs::write(&path, config(&dir)).unwrap();
    let artifact = dir.join("model.bin");
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
    let blobs = dir.join("store/registry/blobs/sha256");
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
    let entry = dir.join("store/audit/00000000000000000002.json");
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
    let path = dir.join("mlops.toml");
    std::fs::write(&path, config(&dir)).unwrap();
    let root = StoreRoot::open(&format!("file://{}", dir.join("store").display())).unwrap();
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
