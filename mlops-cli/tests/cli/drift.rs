//! `mlops drift check`: a Parquet file against a reference file or a model's
//! training reference; the verdict on stdout, exit 4 with `--fail-on-drift`,
//! and bad input named with exit 2.

use std::path::Path;

use super::*;

/// Writes `columns` (name, values) as a Parquet file at `path`.
fn write_parquet(path: &Path, columns: &[(&str, Vec<f64>)]) {
    let batch = RecordBatch::try_from_iter(
        columns
            .iter()
            .map(|(n, v)| (*n, Arc::new(Float64Array::from(v.clone())) as ArrayRef)),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// 400 values spread over [lo, lo + 4).
fn spread(lo: f64) -> Vec<f64> {
    (0..400).map(|i| lo + f64::from(i) / 100.0).collect()
}

/// The JSON report of a drift check that exited `expected`.
fn report(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not a JSON report ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_check_compares_with_a_file_or_a_models_reference() {
    let (dir, _registry, path) = champion_store("drift").await;
    let at = |name: &str| dir.path().join(name);
    write_parquet(
        &at("ref.parquet"),
        &[("x", spread(-2.0)), ("z", spread(0.0))],
    );
    // The same distributions (another order), and both columns shifted.
    let mut same = spread(-2.0);
    same.reverse();
    write_parquet(&at("same.parquet"), &[("x", same), ("z", spread(0.0))]);
    write_parquet(
        &at("moved.parquet"),
        &[("x", spread(3.0)), ("z", spread(9.0))],
    );
    let file = |name: &str| at(name).to_str().unwrap().to_owned();
    let check = |args: &[&str]| mlops(args, &path);

    let (code, out, err) = check(&[
        "--json",
        "drift",
        "check",
        "--reference",
        &file("ref.parquet"),
        "--current",
        &file("same.parquet"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let r = report(&out);
    assert_eq!(r["overall"]["drifted"], false, "{r}");
    assert_eq!(r["features"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["current_rows"], 400);

    let moved = [
        "drift",
        "check",
        "--reference",
        &file("ref.parquet"),
        "--current",
        &file("moved.parquet"),
    ];
    let (code, out, err) = check(&moved);
    assert_eq!(
        code,
        Some(0),
        "without --fail-on-drift a drift is a report: {err}"
    );
    assert!(
        out.contains("overall: DRIFT (2 of 2 features drifted"),
        "{out}"
    );
    let mut failing = moved.to_vec();
    failing.push("--fail-on-drift");
    let (code, _, err) = check(&failing);
    assert_eq!(code, Some(4), "{err}");
    // Only the columns asked for.
    let mut one = moved.to_vec();
    one.extend(["--columns", "x"]);
    let (code, out, err) = check(&[&["--json"], one.as_slice()].concat());
    assert_eq!(code, Some(0), "{err}");
    let r = report(&out);
    assert_eq!(r["features"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["features"][0]["feature"], "x");

    // The champion's training reference (x over [-2, 2)): extra columns in the
    // current file are ignored.
    let (code, out, err) = check(&[
        "--json",
        "drift",
        "check",
        "--model",
        "fraud",
        "--current",
        &file("same.parquet"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let r = report(&out);
    assert_eq!(r["overall"]["drifted"], false, "{r}");
    assert_eq!(r["features"][0]["feature"], "x", "{r}");
    let (code, _, err) = check(&[
        "drift",
        "check",
        "--model",
        "fraud",
        "--version",
        "1",
        "--current",
        &file("moved.parquet"),
        "--fail-on-drift",
    ]);
    assert_eq!(code, Some(4), "{err}");

    // Bad input: exit 2 naming what was wrong.
    std::fs::write(at("text.parquet"), "x,z\n1,2\n").unwrap();
    write_parquet(&at("empty.parquet"), &[("x", Vec::new())]);
    write_parquet(&at("other.parquet"), &[("w", spread(0.0))]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--reference".into(),
                file("ref.parquet"),
                "--current".into(),
                file("nope.parquet"),
            ],
            "nope.parquet",
        ),
        (
            vec![
                "--reference".into(),
                file("ref.parquet"),
                "--current".into(),
                file("text.parquet"),
            ],
            "not a Parquet file",
        ),
        (
            vec![
                "--reference".into(),
                file("empty.parquet"),
                "--current".into(),
                file("same.parquet"),
            ],
            "no rows",
        ),
        (
            vec![
                "--reference".into(),
                file("ref.parquet"),
                "--current".into(),
                file("other.parquet"),
            ],
            "x",
        ),
        (
            vec![
                "--reference".into(),
                file("ref.parquet"),
                "--current".into(),
                file("same.parquet"),
                "--columns".into(),
                "nosuch".into(),
            ],
            "nosuch",
        ),
        (
            vec!["--current".into(), file("same.parquet")],
            "--reference",
        ),
        (
            vec![
                "--reference".into(),
                file("ref.parquet"),
                "--model".into(),
                "fraud".into(),
                "--current".into(),
                file("same.parquet"),
            ],
            "cannot be used with",
        ),
    ];
    assert!(!cases.is_empty());
    for (args, needle) in cases {
        let mut full = vec!["drift".to_owned(), "check".to_owned()];
        full.extend(args);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let (code, _, err) = check(&full);
        assert_eq!(code, Some(2), "{full:?}: {err}");
        assert!(err.contains(needle), "{full:?}: {needle:?} not in {err}");
    }
    // An unknown model: not found, exit 1, named.
    let (code, _, err) = check(&[
        "drift",
        "check",
        "--model",
        "nosuch",
        "--current",
        &file("same.parquet"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nosuch"), "{err}");
}
