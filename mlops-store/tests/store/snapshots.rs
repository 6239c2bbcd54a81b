//! Dataset snapshots: content-addressed, immutable, verified on resolve.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use arrow::record_batch::RecordBatch;
use mlops_core::Error;
use mlops_store::ObjectSnapshotStore;

use crate::{local_dir, local_root, roots};

fn batch(n: i64) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from_iter_values(0..n)) as _),
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 / 2.0),
            )) as _,
        ),
    ])
    .unwrap()
}

#[tokio::test]
async fn snapshots_are_content_addressed_and_readable() {
    for root in roots("snapshots") {
        let s = ObjectSnapshotStore::new(&root).with_actor("ci");
        let a = s
            .snapshot_batches(&[batch(100), batch(50)], "training set")
            .await
            .unwrap();
        let again = s
            .snapshot_batches(&[batch(100), batch(50)], "same data")
            .await
            .unwrap();
        assert_eq!(a.id, again.id, "same content, same id");
        assert_eq!(
            again.description, "training set",
            "the first snapshot of this content stands"
        );
        let b = s.snapshot_batches(&[batch(101)], "more").await.unwrap();
        assert_ne!(a.id, b.id);
        let rows: usize = s
            .read_batches(&a.id)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 150);

        root.put("data/f1.bin", vec![1u8; 10].into()).await.unwrap();
        root.put("data/f2.bin", vec![2u8; 10].into()).await.unwrap();
        let files = s
            .snapshot_files(&["data/f1.bin", "data/f2.bin"], "files")
            .await
            .unwrap();
        // The source may change afterwards: the snapshot keeps its own copy.
        root.put("data/f1.bin", vec![9u8; 10].into()).await.unwrap();
        assert_eq!(s.resolve(&files.id).await.unwrap(), files);

        assert!(matches!(
            s.get(&"0".repeat(64)).await.unwrap_err(),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            s.get("not-an-id").await.unwrap_err(),
            Error::InvalidInput { .. }
        ));
        assert!(s.snapshot_files(&[], "x").await.is_err());
        assert!(matches!(
            s.snapshot_files(&["data/missing"], "x").await.unwrap_err(),
            Error::NotFound { .. }
        ));
    }
}

#[tokio::test]
async fn resolving_detects_changed_bytes_and_manifests() {
    let root = local_root("snapshots-tamper");
    let dir = local_dir(&root).unwrap();
    let s = ObjectSnapshotStore::new(&root).with_actor("ci");
    let snap = s.snapshot_batches(&[batch(10)], "x").await.unwrap();
    let blob = dir
        .join("snapshots/blobs/sha256")
        .join(snap.files[0].digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let err = s.resolve(&snap.id).await.unwrap_err();
    assert!(
        matches!(err, Error::Integrity { .. }) && err.to_string().contains("part-0.parquet"),
        "{err}"
    );

    let manifest = dir.join(format!("snapshots/{}.json", snap.id));
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"size\": ", "\"size\": 1")).unwrap();
    let err = s.get(&snap.id).await.unwrap_err();
    assert!(err.to_string().contains("does not match its id"), "{err}");
}

#[tokio::test]
async fn snapshots_of_named_contents_are_listed_newest_first() {
    for root in roots("snapshot-list") {
        let s = ObjectSnapshotStore::new(&root).with_actor("ci");
        assert!(s.list().await.unwrap().is_empty(), "a fresh root has none");
        let a = s
            .snapshot_contents(vec![("train.csv".into(), "a,b\n1,2\n".into())], "v1")
            .await
            .unwrap();
        let b = s
            .snapshot_contents(
                vec![
                    ("train.csv".into(), "a,b\n1,3\n".into()),
                    ("test.csv".into(), "a,b\n".into()),
                ],
                "v2",
            )
            .await
            .unwrap();
        let listed = s.list().await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&a.id.as_str()) && ids.contains(&b.id.as_str()));
        assert!(listed[0].created_at >= listed[1].created_at);
        assert_eq!(s.resolve(&b.id).await.unwrap().files.len(), 2);

        // Bad input names what is wrong and stores nothing.
        let err = s.snapshot_contents(Vec::new(), "none").await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        let err = s
            .snapshot_contents(
                vec![("x".into(), "1".into()), ("x".into(), "2".into())],
                "dup",
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
        let err = s
            .snapshot_contents(vec![(String::new(), "1".into())], "empty name")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert_eq!(s.list().await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_tampered_manifest_fails_the_listing_by_name() {
    let root = local_root("snapshot-list-tamper");
    let s = ObjectSnapshotStore::new(&root);
    let a = s
        .snapshot_contents(vec![("f".into(), "1".into())], "v1")
        .await
        .unwrap();
    let path = format!("snapshots/{}.json", a.id);
    let text = String::from_utf8(root.get(&path).await.unwrap().to_vec()).unwrap();
    root.put(&path, text.replace("\"size\": 1", "\"size\": 2").into())
        .await
        .unwrap();
    let err = s.list().await.unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }), "{err}");
    assert!(err.to_string().contains(&a.id), "{err}");
}
