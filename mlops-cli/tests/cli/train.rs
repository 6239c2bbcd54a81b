//! `mlops train`: a training set built point-in-time from the feature store,
//! the run tracked, the set snapshotted, the model registered with lineage;
//! bad jobs change nothing.

use mlops::core::ModelRegistry as _;
use mlops::core::model::VersionSelector;
use mlops::store::ObjectOfflineStore;

use super::*;

const DAY: i64 = 86_400_000_000;

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_builds_the_set_tracks_snapshots_and_registers() {
    let dir = temp_dir("train");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    // card:spend on day 1 for 200 cards; card c spends c - 100, and a
    // transaction on day 2 is fraud when its card spends over 0.
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    card_spend(&ObjectOfflineStore::new(&root), DAY).await;
    let cards: Vec<i64> = (0..200).collect();
    let entities = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(cards.clone())) as ArrayRef,
        ),
        ("event_timestamp", ts(vec![2 * DAY; 200])),
        (
            "is_fraud",
            Arc::new(Int64Array::from_iter_values(
                cards.iter().map(|c| i64::from(*c > 100)),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    write_parquet(&dir.path().join("transactions.parquet"), &entities);
    let job = |extra: &str| {
        format!(
            "model = \"fraud\"\ntask = \"binary_classification\"\nlabel = \"is_fraud\"\n\
             entities = \"transactions.parquet\"\nfeatures = [\"card:spend\"]\n{extra}"
        )
    };
    let job_path = dir.path().join("job.toml");
    std::fs::write(
        &job_path,
        job("alias = \"challenger\"\n[training]\nepochs = 50\nlearning_rate = 0.1\nbatch_size = 32\n"),
    )
    .unwrap();
    let train =
        |job: &Path| mlops_within(&["--json", "train", job.to_str().unwrap()], &path, LIMIT);

    let (code, out, err) = train(&job_path);
    assert_eq!(code, Some(0), "{err}");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["version"], 1, "{result}");
    assert_eq!(result["rows"], 200, "{result}");
    assert!(
        result["metrics"]["roc_auc"].as_f64().unwrap() > 0.9,
        "{result}"
    );
    let run = result["run"].as_str().unwrap().to_owned();
    let snapshot = result["dataset_snapshot"].as_str().unwrap().to_owned();
    // Registered with its lineage, and the alias set.
    let registry = ObjectRegistry::new(&root);
    let v = registry
        .get_version("fraud", &VersionSelector::Alias("challenger".into()))
        .await
        .unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(v.metadata.lineage.run_id.as_deref(), Some(run.as_str()));
    assert_eq!(
        v.metadata.lineage.dataset_snapshot_id.as_deref(),
        Some(snapshot.as_str())
    );
    assert_eq!(v.metadata.lineage.feature_refs.len(), 1);
    // The run finished with its metrics; the training set verifies.
    let (code, out, err) = mlops(&["--json", "runs", "show", &run], &path);
    assert_eq!(code, Some(0), "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "finished", "{shown}");
    assert!(
        shown["latest_metrics"]["val_roc_auc"].is_number(),
        "{shown}"
    );
    let (code, _, err) = mlops(&["datasets", "verify", &snapshot], &path);
    assert_eq!(code, Some(0), "{err}");

    // Bad jobs: exit 2 (1 for an unknown view) naming what is wrong, and
    // nothing registered.
    let bad = dir.path().join("bad.toml");
    for (text, code_wanted, needle) in [
        (job("colour = \"red\"\n"), 2, "colour"),
        (job("").replace("is_fraud", "nosuch"), 2, "nosuch"),
        (job("").replace("card:spend", "card:nosuch"), 1, "nosuch"),
        (job("").replace("card:spend", "no-colon"), 2, "features[0]"),
        (
            job("").replace("transactions.parquet", "missing.parquet"),
            2,
            "missing.parquet",
        ),
        (
            job("").replace("binary_classification", "clustering"),
            2,
            "clustering",
        ),
    ] {
        std::fs::write(&bad, &text).unwrap();
        let (code, _, err) = train(&bad);
        assert_eq!(code, Some(code_wanted), "{needle}: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // A job the trainer refuses (no epochs): the run is marked failed.
    std::fs::write(&bad, job("[training]\nepochs = 0\n")).unwrap();
    let (code, _, err) = train(&bad);
    assert_eq!(code, Some(2), "{err}");
    let (_, out, _) = mlops(&["--json", "runs", "list"], &path);
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 2, "{runs}");
    assert!(
        statuses.contains(&"failed") && statuses.contains(&"finished"),
        "{runs}"
    );
    assert_eq!(
        registry.list_versions("fraud").await.unwrap().len(),
        1,
        "a failed job registered nothing"
    );
}
