//! `mlops datasets`: snapshots of local files on the config's storage root;
//! tampering is found by `verify` (exit 3), bad input changes nothing.

use std::path::Path;

use super::*;

/// The files of `dir`'s store whose path contains `part`.
fn stored(dir: &Path, part: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("store")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn datasets_commands_snapshot_list_show_and_verify() {
    let dir = temp_dir("datasets");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let train = dir.path().join("train.csv");
    let test = dir.path().join("test.csv");
    std::fs::write(&train, "x,y\n1,0\n2,1\n").unwrap();
    std::fs::write(&test, "x,y\n3,1\n").unwrap();
    let mlops = |args: &[&str]| mlops(args, &path);
    let (train_s, test_s) = (train.to_str().unwrap(), test.to_str().unwrap());

    // Nothing yet: an empty list, not an error.
    let (code, out, err) = mlops(&["--json", "datasets", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "[]");

    let (code, out, err) = mlops(&[
        "--json", "datasets", "snapshot", train_s, test_s, "-d", "fraud v1",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let snap: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = snap["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64, "{snap}");
    assert_eq!(snap["files"].as_array().unwrap().len(), 2);
    assert_eq!(snap["files"][0]["size"], 12);
    assert_eq!(snap["description"], "fraud v1");
    // The same files again: the same snapshot (content-addressed).
    let (code, out, err) = mlops(&["datasets", "snapshot", train_s, test_s]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&id), "{out}");
    // Other content, another id; listed newest first.
    std::fs::write(&test, "x,y\n3,0\n").unwrap();
    let (code, out, err) = mlops(&["datasets", "snapshot", train_s, test_s, "-d", "v2"]);
    assert_eq!(code, Some(0), "{err}");
    let second = out.split_whitespace().next().unwrap().to_owned();
    assert_ne!(second, id);
    let (code, out, _) = mlops(&["--json", "datasets", "list"]);
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&id.as_str()) && ids.contains(&second.as_str()));
    let (code, out, _) = mlops(&["datasets", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("fraud v1") && out.contains(&second), "{out}");
    let (code, out, _) = mlops(&["datasets", "show", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains(train_s) && out.contains("fraud v1"), "{out}");
    let (code, out, err) = mlops(&["datasets", "verify", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("intact: 2 files"), "{out}");
    // The snapshot was recorded in the audit log.
    let (_, out, _) = mlops(&["audit", "tail"]);
    assert!(out.contains(&format!("dataset snapshot {id}")), "{out}");

    // Bad input: names what is wrong, exits 2, stores nothing.
    let missing = dir.path().join("missing.csv");
    let before = stored(dir.path(), "snapshots").len();
    for (args, needle) in [
        (
            vec!["datasets", "snapshot", train_s, missing.to_str().unwrap()],
            "missing.csv",
        ),
        (
            vec!["datasets", "snapshot", train_s, train_s],
            "given twice",
        ),
        (vec!["datasets", "show", "not-an-id"], "64 lowercase hex"),
        (vec!["datasets", "verify", "XYZ"], "64 lowercase hex"),
    ] {
        let (code, _, err) = mlops(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
    assert_eq!(
        stored(dir.path(), "snapshots").len(),
        before,
        "bad input stored something"
    );
    // An unknown snapshot: not found, exit 1.
    let unknown = "0".repeat(64);
    let (code, _, err) = mlops(&["datasets", "show", &unknown]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&unknown), "{err}");

    // A file's stored bytes changed: verify names it and exits 3.
    let blobs = stored(dir.path(), "blobs");
    assert_eq!(blobs.len(), 3, "3 distinct contents: {blobs:?}");
    let digest = snap["files"][0]["digest"].to_string();
    let blob = blobs
        .iter()
        .find(|b| digest.contains(b.file_name().unwrap().to_str().unwrap()))
        .unwrap_or_else(|| panic!("no blob for {digest} in {blobs:?}"));
    std::fs::write(blob, "x,y\n1,1\n2,1\n").unwrap();
    let (code, _, err) = mlops(&["datasets", "verify", &id]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(train_s), "the changed file is named: {err}");
    // A manifest edited by hand: show and list refuse it by id.
    let manifest = dir
        .path()
        .join("store")
        .join("snapshots")
        .join(format!("{second}.json"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"size\": 8", "\"size\": 9")).unwrap();
    for args in [
        vec!["datasets", "show", second.as_str()],
        vec!["datasets", "list"],
    ] {
        let (code, _, err) = mlops(&args);
        assert_eq!(code, Some(3), "{args:?}: {err}");
        assert!(err.contains(&second), "{args:?}: {err}");
    }
}
