//! `[inference_log]`: every request `mlops serve` answers is in the storage
//! root's Parquet log once it has drained; bad settings exit 2 naming the key.

use std::path::Path;

use arrow_array::{Array as _, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

/// The request ids in every Parquet file under `dir`.
fn logged_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                let reader =
                    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column = batch
                        .column_by_name("request_id")
                        .unwrap_or_else(|| panic!("{}: no request_id column", p.display()));
                    let column = column.as_any().downcast_ref::<StringArray>().unwrap();
                    for i in 0..column.len() {
                        ids.push(column.value(i).to_owned());
                    }
                }
            }
        }
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inference_log_keeps_every_served_request() {
    let (dir, _registry, path) = champion_store("inference-log").await;
    // Written only when the server drains: an interval and a batch size no
    // test reaches.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[inference_log]\nflush_rows = 1000000\nflush_interval = \"1h\"\n");
    std::fs::write(&path, &text).unwrap();
    let (code, _, err) = mlops(&["check"], &path);
    assert_eq!(code, Some(0), "{err}");

    let Served {
        child,
        base,
        logs: _logs,
        ..
    } = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    let mut sent = Vec::new();
    for i in 0..5 {
        let mut r = request();
        r.id = Some(format!("req-{i}"));
        client.infer("fraud", None, r).await.unwrap();
        sent.push(format!("req-{i}"));
    }
    let log_dir = dir.path().join("store").join("inference-log");
    assert!(
        logged_ids(&log_dir).is_empty(),
        "nothing is written before the drain"
    );
    let exited = stop(child).await;
    assert!(exited.success(), "exit status {exited:?}");
    assert_eq!(logged_ids(&log_dir), sent, "every answered request, once");

    // Bad settings: exit 2 naming the key, from check and serve alike.
    for (setting, needle) in [
        ("flush_interval = \"0s\"", "inference_log.flush_interval"),
        ("flush_rows = 0", "inference_log.flush_rows"),
        ("max_buffered = 0", "inference_log.max_buffered"),
        ("flush_every = \"1s\"", "flush_every"),
    ] {
        let bad = format!(
            "{}\n[inference_log]\n{setting}\n",
            std::fs::read_to_string(&path)
                .unwrap()
                .split("\n[inference_log]")
                .next()
                .unwrap()
        );
        let bad_path = dir.path().join("bad.toml");
        std::fs::write(&bad_path, bad).unwrap();
        for command in [["check"], ["serve"]] {
            let (code, _, err) = mlops_within(&command, &bad_path, FAST);
            assert_eq!(code, Some(2), "{setting} ({command:?}): {err}");
            assert!(
                err.contains(needle),
                "{setting} ({command:?}): {needle:?} not in {err}"
            );
        }
    }
}
