//! `mlops features`: definitions applied from the documented TOML format,
//! history ingested from Parquet, a point-in-time correct training set, the
//! latest values materialized into Redis and read back; bad input exits
//! non-zero naming what was wrong and changes nothing.

use std::path::Path;

use mlops::arrow::array::RecordBatchReader as _;
use mlops::arrow::array::{StringArray, TimestampMicrosecondArray};
use mlops::arrow::schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

const DAY_US: i64 = 86_400_000_000;

/// The definitions example of `mlops features`' documentation, as written
/// there: the test applies exactly what the documentation shows.
fn documented_example() -> String {
    let source = include_str!("../../src/features.rs");
    let mut lines = source
        .lines()
        .skip_while(|l| l.trim() != "//! ```toml")
        .skip(1);
    let mut out = String::new();
    for l in lines.by_ref() {
        if l.trim() == "//! ```" {
            return out;
        }
        let l = l.strip_prefix("//!").unwrap();
        out.push_str(l.strip_prefix(' ').unwrap_or(l));
        out.push('\n');
    }
    panic!("no ```toml block in mlops-cli/src/features.rs's documentation");
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn read_parquet(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow_select::concat::concat_batches(&schema, &batches).unwrap()
}

fn utc_micros(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// Rows of the documented `customer_stats` view: (customer, event time µs,
/// txn_count_7d, amount_avg_7d); the created time is the event time and the
/// segment `s<txn>`.
fn stats_rows(rows: &[(i64, i64, i64, f64)]) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "customer_id",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("event_ts", utc_micros(rows.iter().map(|r| r.1).collect())),
        ("created_ts", utc_micros(rows.iter().map(|r| r.1).collect())),
        (
            "txn_count_7d",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ),
        (
            "amount_avg_7d",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
        (
            "segment",
            Arc::new(StringArray::from(
                rows.iter().map(|r| format!("s{}", r.2)).collect::<Vec<_>>(),
            )),
        ),
    ])
    .unwrap()
}

/// `batch` without its column `name`.
fn without(batch: &RecordBatch, name: &str) -> RecordBatch {
    let i = batch.schema().index_of(name).unwrap();
    let mut b = batch.clone();
    b.remove_column(i);
    b
}

/// `batch` with its column `name` replaced by `column`.
fn replaced(batch: &RecordBatch, name: &str, column: ArrayRef) -> RecordBatch {
    let schema = batch.schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == name {
                Field::new(name, column.data_type().clone(), true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            if f.name() == name {
                column.clone()
            } else {
                c.clone()
            }
        })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// The `txn_count_7d` column of a historical output file.
fn txn_counts(path: &Path) -> Vec<Option<i64>> {
    let out = read_parquet(path);
    out.column_by_name("txn_count_7d")
        .unwrap_or_else(|| panic!("no txn_count_7d column in {:?}", out.schema()))
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .iter()
        .collect()
}

/// Runs `mlops` and asserts its exit code; its stdout and stderr.
fn expect(path: &Path, args: &[&str], code: i32) -> (String, String) {
    let (got, out, err) = mlops(args, path);
    assert_eq!(
        got,
        Some(code),
        "mlops {args:?}\nstdout: {out}\nstderr: {err}"
    );
    (out, err)
}

#[test]
fn features_apply_ingest_historical_and_bad_input() {
    let dir = temp_dir("features");
    let d = dir.path();
    let path = d.join("mlops.toml");
    std::fs::write(&path, config(d)).unwrap();
    let defs = d.join("features.toml");
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // Bad definitions: exit 2, naming the line or the key; nothing applied.
    std::fs::write(&defs, "[[entities]]\nname = \"customer\"\njoin_key = \n").unwrap();
    let (_, err) = expect(&path, &["features", "apply", &s(&defs)], 2);
    assert!(
        err.contains("line 3") && err.contains("features.toml"),
        "{err}"
    );
    let example = documented_example();
    std::fs::write(
        &defs,
        example.replace("owner = ", "colour = \"red\"\nowner = "),
    )
    .unwrap();
    let (_, err) = expect(&path, &["features", "apply", &s(&defs)], 2);
    assert!(err.contains("colour") && err.contains("line"), "{err}");
    std::fs::write(&defs, example.replace("\"float64\"", "\"int128\"")).unwrap();
    let (_, err) = expect(&path, &["features", "apply", &s(&defs)], 2);
    assert!(
        err.contains("int128") && err.contains("amount_avg_7d"),
        "{err}"
    );
    // A valid entity beside a view naming an unknown one: neither is applied.
    std::fs::write(
        &defs,
        example.replace("entities = [\"customer\"]", "entities = [\"merchant\"]"),
    )
    .unwrap();
    let (_, err) = expect(&path, &["features", "apply", &s(&defs)], 2);
    assert!(err.contains("merchant"), "{err}");
    std::fs::write(&defs, example.replace("ttl = \"30d\"", "ttl = \"0s\"")).unwrap();
    let (_, err) = expect(&path, &["features", "apply", &s(&defs)], 2);
    assert!(err.contains("TTL") || err.contains("ttl"), "{err}");

    // The documented example applies; everything in it is new, so the earlier
    // failures left nothing behind. Applying it again changes nothing.
    std::fs::write(&defs, &example).unwrap();
    let (out, _) = expect(&path, &["features", "apply", &s(&defs)], 0);
    assert!(
        out.contains("entity customer: created") && out.contains("view customer_stats: created"),
        "{out}"
    );
    let (out, _) = expect(&path, &["--json", "features", "apply", &s(&defs)], 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["entities"][0]["change"], "unchanged", "{report}");
    assert_eq!(report["views"][0]["change"], "unchanged", "{report}");
    let (out, _) = expect(&path, &["--json", "features", "list"], 0);
    let views: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(views[0]["name"], "customer_stats");
    assert_eq!(views[0]["features"].as_array().unwrap().len(), 3, "{views}");
    assert_eq!(views[0]["ttl"]["secs"], 30 * 86_400, "{views}");

    // A change that does not fit the stored data (a feature's type), with a
    // new entity beside it: refused (exit 1), and the entity is not applied.
    std::fs::write(
        &defs,
        example.replace("\"float64\"", "\"float32\"")
            + "\n[[entities]]\nname = \"merchant\"\njoin_key = \"merchant_id\"\ntype = \"string\"\n",
    )
    .unwrap();
    let (_, err) = expect(&path, &["features", "apply", &s(&defs)], 1);
    assert!(
        err.contains("amount_avg_7d") && err.contains("--force"),
        "{err}"
    );
    let merchant = d.join("merchant.toml");
    std::fs::write(
        &merchant,
        "[[entities]]\nname = \"merchant\"\njoin_key = \"merchant_id\"\ntype = \"string\"\n",
    )
    .unwrap();
    let (out, _) = expect(
        &path,
        &["--json", "features", "apply", "--dry-run", &s(&merchant)],
        0,
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["entities"][0]["change"], "created", "{report}");
    // The dry run applied nothing either.
    let (out, _) = expect(&path, &["features", "apply", "--dry-run", &s(&merchant)], 0);
    assert!(out.contains("entity merchant: would be created"), "{out}");

    // History: customer 1 had 1 transaction at `base`, 5 two days later;
    // customer 2 had 2 at `base`.
    let now_us = mlops::chrono::Utc::now().timestamp_micros();
    let base = now_us / 1_000_000 * 1_000_000 - 10 * DAY_US;
    let history = d.join("history.parquet");
    let rows = stats_rows(&[
        (1, base, 1, 10.0),
        (1, base + 2 * DAY_US, 5, 50.0),
        (2, base, 2, 20.0),
    ]);
    write_parquet(&history, &rows);
    let (out, _) = expect(
        &path,
        &[
            "--json",
            "features",
            "ingest",
            "customer_stats",
            &s(&history),
        ],
        0,
    );
    let receipt: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(receipt["rows"], 3, "{receipt}");

    // The training set, as of each row's time: customer 1 one day after `base`
    // had 1 transaction (a join on the latest value would say 5), before any
    // row nothing, three days after 5.
    let entities = d.join("entities.parquet");
    write_parquet(
        &entities,
        &RecordBatch::try_from_iter([
            (
                "customer_id",
                Arc::new(Int64Array::from(vec![1, 2, 1, 1])) as ArrayRef,
            ),
            (
                "event_timestamp",
                utc_micros(vec![
                    base + DAY_US,
                    base + 3 * DAY_US,
                    base - DAY_US,
                    base + 3 * DAY_US,
                ]),
            ),
        ])
        .unwrap(),
    );
    let training = d.join("training.parquet");
    let historical = |out: &Path, features: &[&str]| {
        let mut args = vec![
            "--json".to_owned(),
            "features".into(),
            "historical".into(),
            s(&entities),
            "-o".into(),
            s(out),
        ];
        for f in features {
            args.extend(["--feature".to_owned(), (*f).to_owned()]);
        }
        args
    };
    let args = historical(
        &training,
        &[
            "customer_stats:txn_count_7d",
            "customer_stats:amount_avg_7d",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, _) = expect(&path, &args, 0);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["rows"], 4, "{summary}");
    assert_eq!(txn_counts(&training), [Some(1), Some(2), None, Some(5)]);
    let avg = read_parquet(&training);
    let avg = avg
        .column_by_name("amount_avg_7d")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .value(0);
    assert_eq!(avg, 10.0);

    // Bad ingestion, each file holding a row that would change customer 1's
    // value one day after `base` to 999: refused (exit 2, naming what was
    // wrong), and the training set is the same afterwards.
    let late = stats_rows(&[(1, base + DAY_US / 2, 999, 999.0)]);
    let bad = d.join("bad.parquet");
    for (batch, needle) in [
        (without(&late, "amount_avg_7d"), "amount_avg_7d"),
        (
            replaced(
                &late,
                "txn_count_7d",
                Arc::new(StringArray::from(vec!["999"])),
            ),
            "txn_count_7d",
        ),
        (late.slice(0, 0), "no rows"),
    ] {
        write_parquet(&bad, &batch);
        let (_, err) = expect(
            &path,
            &["features", "ingest", "customer_stats", &s(&bad)],
            2,
        );
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    std::fs::write(&bad, b"not parquet").unwrap();
    let (_, err) = expect(
        &path,
        &["features", "ingest", "customer_stats", &s(&bad)],
        2,
    );
    assert!(err.contains("Parquet"), "{err}");
    write_parquet(&bad, &late);
    let (_, err) = expect(&path, &["features", "ingest", "no_such_view", &s(&bad)], 1);
    assert!(err.contains("no_such_view"), "{err}");
    let again = d.join("again.parquet");
    let args = historical(&again, &["customer_stats:txn_count_7d"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect(&path, &args, 0);
    assert_eq!(txn_counts(&again), [Some(1), Some(2), None, Some(5)]);

    // Bad historical requests: the message names what was wrong, and no
    // output file is written.
    let nothing = d.join("nothing.parquet");
    for (features, code, needle) in [
        (vec!["customer_stats:nope"], 1, "nope"),
        (vec!["no_such_view:txn_count_7d"], 1, "no_such_view"),
        (vec!["customer_stats"], 2, "view:feature"),
    ] {
        let args = historical(&nothing, &features);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, err) = expect(&path, &args, code);
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(
            !nothing.exists(),
            "{features:?} wrote {}",
            nothing.display()
        );
    }
    let mut args = historical(&nothing, &["customer_stats:txn_count_7d"]);
    args.extend(["--timestamp-column".into(), "when_seen".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, err) = expect(&path, &args, 2);
    assert!(err.contains("when_seen"), "{err}");
    assert!(!nothing.exists());

    // With the default online store (this process's memory), materialize and
    // get refuse: exit 2, saying to configure Redis.
    let (_, err) = expect(&path, &["features", "materialize"], 2);
    assert!(err.contains("redis://"), "{err}");
    let (_, err) = expect(
        &path,
        &[
            "features",
            "get",
            "--feature",
            "customer_stats:txn_count_7d",
            "--entity",
            "customer_id=1",
        ],
        2,
    );
    assert!(err.contains("redis://") && err.contains("nothing"), "{err}");

    // A compatible change (the description) is an update.
    std::fs::write(
        &defs,
        example.replace("\"Card activity\"", "\"Card activity, v2\""),
    )
    .unwrap();
    let (out, _) = expect(&path, &["features", "apply", &s(&defs)], 0);
    assert!(
        out.contains("entity customer: unchanged") && out.contains("view customer_stats: updated"),
        "{out}"
    );
    // Every change, and only changes, in the audit log: the two creations and
    // the update (the unchanged re-apply and the refused change are not).
    let (out, _) = expect(&path, &["--json", "audit", "tail", "-n", "100"], 0);
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    let applied: Vec<(String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "features apply")
        .map(|e| {
            (
                e["target"].as_str().unwrap().to_owned(),
                e["details"]["change"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        applied,
        vec![
            ("entity customer".to_owned(), "created".to_owned()),
            (
                "feature view customer_stats".to_owned(),
                "created".to_owned()
            ),
            (
                "feature view customer_stats".to_owned(),
                "updated".to_owned()
            ),
        ],
        "{entries}"
    );
    let (_, _) = expect(&path, &["audit", "verify"], 0);
}

/// Materialization into a real Redis server and online reads of the latest
/// values, full and incremental.
#[test]
fn features_materialize_into_redis_and_get_the_latest_values() {
    let (url, _redis) = redis();
    let dir = temp_dir("features-redis");
    let d = dir.path();
    let path = d.join("mlops.toml");
    let namespace = format!(
        "clitest{}x{}",
        std::process::id(),
        mlops::chrono::Utc::now().timestamp_micros()
    );
    std::fs::write(
        &path,
        config(d) + &format!("\n[online]\nurl = \"{url}\"\nnamespace = \"{namespace}\"\n"),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let defs = d.join("features.toml");
    std::fs::write(&defs, documented_example()).unwrap();
    expect(&path, &["features", "apply", &s(&defs)], 0);
    let now_us = mlops::chrono::Utc::now().timestamp_micros();
    let base = now_us / 1_000_000 * 1_000_000 - 10 * DAY_US;
    let history = d.join("history.parquet");
    write_parquet(
        &history,
        &stats_rows(&[
            (1, base, 1, 10.0),
            (1, base + 2 * DAY_US, 5, 50.0),
            (2, base, 2, 20.0),
        ]),
    );
    expect(
        &path,
        &["features", "ingest", "customer_stats", &s(&history)],
        0,
    );

    // Bad input first: nothing is written online.
    let (_, err) = expect(&path, &["features", "materialize", "no_such_view"], 1);
    assert!(err.contains("no_such_view"), "{err}");
    let (_, err) = expect(&path, &["features", "materialize", "--end", "yesterday"], 2);
    assert!(err.contains("--end") && err.contains("RFC 3339"), "{err}");
    let get = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "features",
            "get",
            "-f",
            "customer_stats:txn_count_7d",
            "-f",
            "customer_stats:segment",
        ];
        args.extend_from_slice(extra);
        let (out, _) = expect(&path, &args, 0);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let before = get(&["-e", "customer_id=1"]);
    assert_eq!(
        before[0]["features"]["customer_stats:txn_count_7d"]["status"], "NOT_FOUND",
        "{before}"
    );

    let (out, _) = expect(&path, &["--json", "features", "materialize"], 0);
    let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reports[0]["view"], "customer_stats", "{reports}");
    assert_eq!(reports[0]["entities_written"], 2, "{reports}");

    // The latest values, per entity, in request order; an unknown entity is
    // NOT_FOUND.
    let got = get(&[
        "-e",
        "customer_id=2",
        "-e",
        "customer_id=1",
        "-e",
        "customer_id=3",
    ]);
    let feature = |row: usize, f: &str| got[row]["features"][format!("customer_stats:{f}")].clone();
    assert_eq!(got[0]["entity"]["customer_id"], 2, "{got}");
    assert_eq!(feature(0, "txn_count_7d")["value"], 2, "{got}");
    assert_eq!(feature(1, "txn_count_7d")["value"], 5, "{got}");
    assert_eq!(feature(1, "txn_count_7d")["status"], "PRESENT", "{got}");
    assert_eq!(feature(1, "segment")["value"], "s5", "{got}");
    assert_eq!(feature(2, "txn_count_7d")["status"], "NOT_FOUND", "{got}");
    assert!(feature(2, "txn_count_7d")["value"].is_null(), "{got}");
    // As text: a table with the key and the features.
    let (out, _) = expect(
        &path,
        &[
            "features",
            "get",
            "-f",
            "customer_stats:txn_count_7d",
            "-e",
            "customer_id=1",
            "-e",
            "customer_id=3",
        ],
        0,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("customer_id") && lines[0].contains("customer_stats:txn_count_7d"),
        "{out}"
    );
    assert!(
        lines[1].starts_with('1') && lines[1].trim_end().ends_with('5'),
        "{out}"
    );
    assert!(lines[2].contains("NOT_FOUND"), "{out}");

    // Later data reaches the online store with --incremental.
    let later = d.join("later.parquet");
    write_parquet(&later, &stats_rows(&[(2, base + 4 * DAY_US, 7, 70.0)]));
    expect(
        &path,
        &["features", "ingest", "customer_stats", &s(&later)],
        0,
    );
    let got = get(&["-e", "customer_id=2"]);
    assert_eq!(
        got[0]["features"]["customer_stats:txn_count_7d"]["value"], 2,
        "not materialized yet: {got}"
    );
    let (out, _) = expect(&path, &["features", "materialize", "--incremental"], 0);
    assert!(out.contains("customer_stats"), "{out}");
    let got = get(&["-e", "customer_id=2"]);
    assert_eq!(
        got[0]["features"]["customer_stats:txn_count_7d"]["value"], 7,
        "{got}"
    );

    // Bad get requests: exit 2 for a malformed or unknown key, 1 for an
    // unknown feature; each names what was wrong.
    for (args, code, needle) in [
        (
            vec!["-f", "customer_stats:txn_count_7d", "-e", "customer_id=abc"],
            2,
            "abc",
        ),
        (
            vec!["-f", "customer_stats:txn_count_7d", "-e", "merchant_id=1"],
            2,
            "merchant_id",
        ),
        (
            vec!["-f", "customer_stats:txn_count_7d", "-e", "customer_id"],
            2,
            "KEY=VALUE",
        ),
        (
            vec!["-f", "customer_stats:nope", "-e", "customer_id=1"],
            1,
            "nope",
        ),
        (vec!["-f", "nope", "-e", "customer_id=1"], 2, "view:feature"),
    ] {
        let mut all = vec!["features", "get"];
        all.extend(args);
        let (_, err) = expect(&path, &all, code);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
