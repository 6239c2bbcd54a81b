//! `mlops retrain`: the `[[retrain]]` loops as processes against a running
//! `mlops serve`. Two long-running loop processes started at once: exactly one
//! takes the lease and keeps it while the other and a `--once` run stand by,
//! and gives it up on SIGTERM; a loop's state carries from one process to the
//! next; a canary started through the server's admin API that cannot
//! be judged in time is rolled back there, and its version archived. Bad
//! sections fail fast naming the key.

use mlops::arrow::schema::DataType;
use mlops::core::ModelRegistry as _;
use mlops::core::feature::{ApplyOptions, FeatureView};
use mlops::core::model::{VersionSelector, VersionStatus};
use mlops::core::monitoring::TrafficControl as _;
use mlops::store::ObjectOfflineStore;

use super::*;

const HOUR: i64 = 3_600_000_000;

/// The `[[retrain]]` section of the test: labels from `chargebacks`, a
/// schedule that fires on any tick after the first, canaries judged within
/// 1 ms (no labels arrive here, so the second tick rolls one back).
fn section(dir: &Path, extra: &str) -> String {
    format!(
        r#"
[[retrain]]
model = "fraud"
server = "{{SERVER}}"
admin_key_file = "{key}"
task = "binary_classification"
labels = {{ view = "chargebacks", column = "is_fraud" }}
features = ["card:spend"]
margin = -1.0
lease_ttl = "1h"
triggers = {{ on_drift = false, every = "1ms" }}
guardrails = {{ min_rows = 100, cooldown = "1h" }}
canary = {{ initial_weight = 0.2, judge_within = "1ms" }}
training = {{ epochs = 2 }}
{extra}"#,
        key = dir.join("key").display()
    )
}

/// Card spend 10 days ago for 200 cards, and 400 labelled transactions over the
/// last two days (fraud when the card spends over 0).
async fn seed(root: &StoreRoot) {
    let offline = ObjectOfflineStore::new(root);
    let now = mlops::chrono::Utc::now().timestamp_micros();
    card_spend(&offline, now - 240 * HOUR).await;
    let chargebacks = FeatureView::builder("chargebacks")
        .join_key("card_id", DataType::Int64)
        .event_time("ts")
        .feature("is_fraud", DataType::Int64)
        .build()
        .unwrap();
    offline
        .apply_view(chargebacks, ApplyOptions::default())
        .await
        .unwrap();
    let tx: Vec<i64> = (0..400).map(|i| (i * 37) % 200).collect();
    offline
        .ingest(
            "chargebacks",
            RecordBatch::try_from_iter([
                (
                    "card_id",
                    Arc::new(Int64Array::from(tx.clone())) as ArrayRef,
                ),
                (
                    "ts",
                    ts((0..400).map(|i| now - 48 * HOUR + i * 1_000_000).collect()),
                ),
                (
                    "is_fraud",
                    Arc::new(Int64Array::from_iter_values(
                        tx.iter().map(|c| i64::from(*c > 100)),
                    )) as ArrayRef,
                ),
            ])
            .unwrap(),
        )
        .await
        .unwrap();
}

/// A champion v1 over `spend`, trained on the same rule.
async fn champion(registry: &ObjectRegistry) {
    let spend: Vec<f64> = (0..200).map(|c| f64::from(c) - 100.0).collect();
    let data = RecordBatch::try_from_iter([
        (
            "spend",
            Arc::new(Float64Array::from(spend.clone())) as ArrayRef,
        ),
        (
            "is_fraud",
            Arc::new(Int64Array::from_iter_values(
                spend.iter().map(|s| i64::from(*s > 0.0)),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
    c.progress = Progress::Hidden;
    c.epochs = 2;
    let trained = TabularTrainer::new(c).fit(&data, "is_fraud").unwrap();
    let v = registry
        .register("fraud", trained.artifact, trained.metadata)
        .await
        .unwrap()
        .version;
    registry.set_alias("fraud", "champion", v).await.unwrap();
}

/// Runs `mlops --json retrain --once --instance NAME`: exit code and the one
/// JSON line it printed.
fn tick(path: &Path, instance: &str) -> (Option<i32>, serde_json::Value, String) {
    let (code, out, err) = mlops(
        &["--json", "retrain", "--once", "--instance", instance],
        path,
    );
    let line = out.lines().next().unwrap_or("null");
    let v = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out:?} {err}"));
    (code, v, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrain_processes_share_one_loop_and_roll_out_through_the_server() {
    let dir = temp_dir("retrain");
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    seed(&root).await;
    let registry = ObjectRegistry::new(&root);
    champion(&registry).await;
    let path = dir.path().join("mlops.toml");
    let base_config = config(dir.path());
    std::fs::write(&path, &base_config).unwrap();
    let served = start(&path);
    let with_server = |extra: &str| {
        format!("{base_config}{}", section(dir.path(), extra)).replace("{SERVER}", &served.base)
    };
    std::fs::write(&path, with_server("")).unwrap();
    let (code, out, err) = mlops(&["check"], &path);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 retrain loops"), "{out}");

    // Two long-running loop processes started at once race for the lease at
    // their first tick: exactly one wins and keeps it (a long-running process
    // holds it until it stops), the other stands by, and so does a `--once`
    // run beside them.
    let spawn = |name: &str| {
        let mut child = ChildGuard::spawn(
            "mlops retrain",
            Command::new(env!("CARGO_BIN_EXE_mlops"))
                .args(["--json", "retrain", "--instance", name, "--config"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let (out, logs) = (child.stdout_lines(), child.stderr_lines());
        (child, out, logs)
    };
    let racers = [spawn("a1"), spawn("a2")];
    let firsts: Vec<serde_json::Value> = racers
        .iter()
        .map(|(_, out, _)| {
            tokio::task::block_in_place(|| {
                out.wait_for("its first tick", LIMIT, |line| {
                    serde_json::from_str::<serde_json::Value>(line).ok()
                })
            })
        })
        .collect();
    let leaders: Vec<&serde_json::Value> = firsts.iter().filter(|v| v["leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "exactly one racer leads: {firsts:?}");
    let winner = leaders[0]["instance"].as_str().unwrap().to_owned();
    assert_eq!(leaders[0]["phase"], "watching", "{firsts:?}");
    for v in &firsts {
        assert_eq!(v["lease_holder"], winner.as_str(), "{firsts:?}");
    }
    let (code, v, err) = tick(&path, "b");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["leader"], false, "{v}");
    assert_eq!(v["lease_holder"], winner.as_str(), "{v}");
    assert!(v["decisions"].as_array().unwrap().is_empty(), "{v}");
    // On SIGTERM they exit 0 and the winner gives the lease up: the next run
    // acts at once, from the state it stored (the schedule counts from its
    // start): it trains, registers v2 and starts a canary on the server.
    for (child, _, logs) in racers {
        assert!(stop(child).await.success(), "{}", logs.recent());
    }
    let (code, v, err) = tick(&path, "b");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["leader"], true, "{v}");
    let decisions = v["decisions"].to_string();
    assert!(decisions.contains("scheduled every"), "{v}");
    assert!(decisions.contains("v2 registered; canary at 20%"), "{v}");
    assert_eq!(v["phase"], "canary", "{v}");
    let client = RemoteServer::new(&served.base).unwrap().with_api_key(KEY);
    let health = client.health("fraud").await.unwrap();
    assert_eq!(
        (health.champion, health.canary),
        (Some(1), Some(2)),
        "{health:?}"
    );
    // No labels arrive: past its deadline the canary is rolled back on the
    // server, and v2 loses its alias and is archived.
    let (code, v, err) = tick(&path, "c");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        v["decisions"].to_string().contains("could not be judged"),
        "{v}"
    );
    let health = client.health("fraud").await.unwrap();
    assert_eq!(
        (health.champion, health.canary),
        (Some(1), None),
        "{health:?}"
    );
    let v2 = registry
        .get_version("fraud", &VersionSelector::Number(2))
        .await
        .unwrap();
    assert_eq!(v2.status, VersionStatus::Archived);
    assert_eq!(v2.metadata.lineage.parent_version, Some(1));
    assert!(
        !registry
            .aliases("fraud")
            .await
            .unwrap()
            .contains_key("challenger")
    );
    // The audit log tells it, naming the instance.
    let (code, out, err) = mlops(&["--json", "audit", "tail", "-n", "200"], &path);
    assert_eq!(code, Some(0), "{err}");
    for action in [
        "retrain.trigger",
        "rollout.canary_start",
        "rollout.rollback",
    ] {
        assert!(out.contains(action), "{action} not in {out}");
    }
    assert!(out.contains("\"instance\":\"b\""), "{out}");
    assert!(out.contains("\"instance\":\"c\""), "{out}");

    // Bad sections fail fast naming the key, and change nothing.
    for (extra, needle) in [
        ("colour = \"red\"", "colour"),
        ("metric = \"auc\"", "metric"),
        ("interval = \"soon\"", "interval"),
    ] {
        std::fs::write(&path, with_server(extra)).unwrap();
        let (code, _, err) = mlops_within(&["retrain", "--once"], &path, FAST);
        assert_eq!(code, Some(2), "{extra}: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let swap = |from: &str, to: &str| {
        std::fs::write(&path, with_server("").replace(from, to)).unwrap();
        mlops_within(&["retrain", "--once"], &path, FAST)
    };
    let (code, _, err) = swap("view = \"chargebacks\"", "view = \"nosuch\"");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("labels.view"), "{err}");
    let (code, _, err) = swap("column = \"is_fraud\"", "column = \"nosuch\"");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("labels.column"), "{err}");
    let (code, _, err) = swap("admin_key_file", "admin_key");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin_key"), "{err}");
    let (code, _, err) = mlops_within(&["retrain", "--once", "--model", "other"], &path, FAST);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("other"), "{err}");
    assert_eq!(registry.list_versions("fraud").await.unwrap().len(), 2);
    stop(served.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_steers_two_server_replicas_through_the_storage_root() {
    use mlops::core::fleet::FleetStore as _;
    let dir = temp_dir("fleet");
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    seed(&root).await;
    let registry = ObjectRegistry::new(&root);
    champion(&registry).await;
    let path = dir.path().join("mlops.toml");
    // No `server`: the loop steers the fleet on the root; each replica names
    // itself from the environment and checks the root every 100 ms.
    let loop_section: String = section(dir.path(), "")
        .lines()
        .filter(|l| !l.starts_with("server") && !l.starts_with("admin_key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "{}\n[fleet]\nreplica = \"${{MLOPS_REPLICA}}\"\ninterval = \"100ms\"\n{loop_section}",
        config(dir.path())
    );
    std::fs::write(&path, text).unwrap();
    let a = start_with_env(&path, &[("MLOPS_REPLICA", "pod-a")]);
    let b = start_with_env(&path, &[("MLOPS_REPLICA", "pod-b")]);
    let fleet = mlops::store::ObjectFleet::new(&root);
    let deadline = Instant::now() + LIMIT;
    while fleet.reports("fraud").await.unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both replicas report: {}",
            a.logs.recent()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clients = [&a, &b].map(|s| RemoteServer::new(&s.base).unwrap().with_api_key(KEY));
    let until = async |what: &str, want: (Option<u64>, Option<u64>)| {
        for c in &clients {
            let deadline = Instant::now() + LIMIT;
            loop {
                let h = c.health("fraud").await.unwrap();
                if (h.champion, h.canary) == want {
                    break;
                }
                assert!(Instant::now() < deadline, "{what}: {h:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The first tick starts the schedule; the second trains v2 and starts
    // its canary: one intent on the root, applied by both replicas.
    let (code, v, err) = tick(&path, "loop");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["phase"], "watching", "{v}");
    let (code, v, err) = tick(&path, "loop");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        v["decisions"]
            .to_string()
            .contains("v2 registered; canary at 20%"),
        "{v}"
    );
    until("both replicas run the canary", (Some(1), Some(2))).await;
    let reports = fleet.reports("fraud").await.unwrap();
    assert!(
        reports.iter().all(|r| r.applied_revision >= 1),
        "{reports:?}"
    );
    // Unjudged past its deadline: rolled back on both.
    let (code, v, err) = tick(&path, "loop");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        v["decisions"].to_string().contains("could not be judged"),
        "{v}"
    );
    until("both replicas route all to v1", (Some(1), None)).await;
    // An admin key beside fleet steering is a config error naming it.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("margin = -1.0", "margin = -1.0\nadmin_key = \"${X}\""),
    )
    .unwrap();
    let (code, _, err) = mlops_within(&["retrain", "--once"], &path, FAST);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("storage root"), "{err}");
    stop(a.child).await;
    stop(b.child).await;
}
