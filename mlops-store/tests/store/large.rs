//! Large data: big objects go up in parts (and a dropped connection mid-upload
//! leaves nothing visible); queries fetch only the footer and the needed column
//! chunks of the files they need; ingestion and materialization under faults.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::DataType;
use chrono::DateTime;
use mlops_core::feature::{
    ApplyOptions, FeatureDefinitions, FeatureRef, FeatureView, HistoricalOptions,
    OfflineFeatureStore, OnlineFeatureStore,
};
use mlops_core::model::{ModelArtifact, ModelMetadata, ModelRegistry, VersionSelector};
use mlops_store::{
    FaultyStore, InMemoryOnlineStore, ObjectFeatureStore, ObjectOfflineStore, ObjectRegistry,
    StoreRoot,
};

const DAY: i64 = 86_400_000_000;

fn faulty_root(base: &StoreRoot) -> (Arc<FaultyStore>, StoreRoot) {
    let faulty = Arc::new(FaultyStore::new(base.store().clone()));
    let root = base.with_store(faulty.clone());
    (faulty, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_artifacts_upload_in_parts_and_a_dropped_upload_leaves_nothing() {
    for base in crate::roots("multipart") {
        let (faulty, root) = faulty_root(&base.clone().with_multipart_threshold(6 << 20));
        let r = ObjectRegistry::new(&root);
        let big: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let v = r
            .register(
                "m",
                ModelArtifact::new("blob", big.clone()),
                ModelMetadata::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            faulty.multipart_uploads(),
            1,
            "{}: 20 MiB goes up in parts",
            base.url()
        );
        let (_, loaded) = r
            .load_artifact("m", &VersionSelector::Number(v.version))
            .await
            .unwrap();
        assert_eq!(loaded.bytes.len(), big.len());

        // Another artifact's upload loses its connection after one part.
        let mut other = big.clone();
        other[0] ^= 1;
        faulty.drop_upload_after_parts(1);
        let err = r
            .register(
                "m",
                ModelArtifact::new("blob", other.clone()),
                ModelMetadata::default(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("mid-upload"), "{err}");
        assert_eq!(
            r.list_versions("m").await.unwrap().len(),
            1,
            "no partial version"
        );
        // The retry succeeds and both versions verify.
        let v2 = r
            .register(
                "m",
                ModelArtifact::new("blob", other),
                ModelMetadata::default(),
            )
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        r.load_artifact("m", &VersionSelector::Number(2))
            .await
            .unwrap();
        r.load_artifact("m", &VersionSelector::Number(1))
            .await
            .unwrap();
    }
}

fn wide_view() -> FeatureView {
    let mut b = FeatureView::builder("wide")
        .join_key("id", DataType::Int64)
        .event_time("ts");
    for f in 0..8 {
        b = b.feature(format!("f{f}"), DataType::Float64);
    }
    b.build().unwrap()
}

fn wide_rows(day: i64, n: i64) -> RecordBatch {
    let mut cols: Vec<(String, ArrayRef)> = vec![
        ("id".into(), Arc::new(Int64Array::from_iter_values(0..n))),
        (
            "ts".into(),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(|i| day * DAY + i * 1000))
                    .with_timezone("UTC"),
            ),
        ),
    ];
    for f in 0..8 {
        cols.push((
            format!("f{f}"),
            Arc::new(Float64Array::from_iter_values((0..n).map(|i| {
                ((i * 7919 + f * 104_729 + day) % 100_003) as f64 / 7.0
            }))),
        ));
    }
    RecordBatch::try_from_iter(cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_reads_only_the_footer_and_needed_columns_of_needed_files() {
    for base in crate::roots("ranged") {
        let (faulty, root) = faulty_root(&base);
        let s = ObjectOfflineStore::new(&root);
        s.apply_view(wide_view(), ApplyOptions::default())
            .await
            .unwrap();
        for day in 0..10 {
            s.ingest("wide", wide_rows(day, 20_000)).await.unwrap();
        }
        // What is stored: ten day files of eight float columns each.
        let stored: u64 = {
            let metas: Vec<object_store::ObjectMeta> = futures_util::TryStreamExt::try_collect(
                base.store()
                    .list(Some(&base.path("features/views/wide/data"))),
            )
            .await
            .unwrap();
            metas.iter().map(|m| m.size).sum()
        };
        // One column of one day for 100 entities.
        let entities = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
            ),
            (
                "event_timestamp",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![4 * DAY + 30_000_000; 100])
                        .with_timezone("UTC"),
                ) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut options = HistoricalOptions::default();
        options.require_created_before_event = false;
        let before = (faulty.bytes_read(), faulty.calls());
        let refs: Vec<FeatureRef> = vec!["wide:f3".parse().unwrap()];
        let out = s
            .get_historical_features(entities, &refs, options)
            .await
            .unwrap();
        assert_eq!(out.num_rows(), 100);
        let (bytes, calls) = (faulty.bytes_read() - before.0, faulty.calls() - before.1);
        // The views without a TTL consider every day up to the entity time (five
        // files), but of each only the key, time and one feature column.
        assert!(
            bytes * 4 < stored,
            "{}: read {bytes} of {stored} stored bytes",
            base.url()
        );
        assert!(calls <= 40, "{}: {calls} requests", base.url());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_and_materialization_under_faults_are_all_or_nothing() {
    for base in crate::roots("ingest-faults") {
        let (faulty, root) = faulty_root(&base);
        let fs = ObjectFeatureStore::new(&root, Arc::new(InMemoryOnlineStore::new()));
        fs.apply_view(wide_view(), ApplyOptions::default())
            .await
            .unwrap();
        fs.ingest("wide", wide_rows(0, 100)).await.unwrap();
        let at = |us: i64| DateTime::from_timestamp_micros(us).unwrap();
        let count = |fs: &ObjectFeatureStore| {
            let fs = fs.clone();
            async move {
                let entities = RecordBatch::try_from_iter([
                    (
                        "id",
                        Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
                    ),
                    (
                        "event_timestamp",
                        Arc::new(
                            TimestampMicrosecondArray::from(vec![3 * DAY; 100])
                                .with_timezone("UTC"),
                        ) as ArrayRef,
                    ),
                ])
                .unwrap();
                let refs: Vec<FeatureRef> = vec!["wide:f0".parse().unwrap()];
                let mut o = HistoricalOptions::default();
                o.require_created_before_event = false;
                let out = fs
                    .get_historical_features(entities, &refs, o)
                    .await
                    .unwrap();
                out.column_by_name("f0").unwrap().len()
                    - out.column_by_name("f0").unwrap().null_count()
            }
        };
        // Fail each call of an ingestion in turn: it fails cleanly or succeeds, and
        // the day already stored always reads back whole.
        let mut failures = 0;
        for n in 1..=12 {
            faulty.fail_call(n);
            let result = fs.ingest("wide", wide_rows(1, 100)).await;
            faulty.clear();
            if let Err(e) = &result {
                failures += 1;
                assert!(e.to_string().contains("injected fault"), "{e}");
            }
            assert_eq!(
                count(&fs).await,
                100,
                "{}: stored data intact after call {n} failed",
                base.url()
            );
        }
        assert!(failures > 0);
        // Materialization under faults: it fails or succeeds, and a retry completes it.
        faulty.fail_every(4);
        let first = fs.materialize("wide", at(0), at(3 * DAY)).await;
        faulty.clear();
        let again = fs.materialize("wide", at(0), at(3 * DAY)).await.unwrap();
        if let Ok(r) = first {
            assert_eq!(r.entities_written + again.entities_written, 100);
        }
        let online = fs
            .get_online_features(
                RecordBatch::try_from_iter([(
                    "id",
                    Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
                )])
                .unwrap(),
                &["wide:f0".parse().unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(
            online.columns[0]
                .statuses
                .iter()
                .filter(|s| **s == mlops_core::feature::FeatureStatus::Present)
                .count(),
            100
        );
    }
}

/// Many small ingestions: a fresh reader plans a query without listing the
/// commits (a hint and a checkpoint instead), in a bounded number of requests;
/// writers carry on from the hint. (Every query used to list every commit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_log_is_read_in_bounded_requests_however_many_ingestions() {
    for base in crate::roots("commit-log") {
        let writer = ObjectOfflineStore::new(&base);
        writer
            .apply_view(wide_view(), ApplyOptions::default())
            .await
            .unwrap();
        for day in 0..150 {
            writer.ingest("wide", wide_rows(day, 2)).await.unwrap();
        }
        let query = |at: i64| {
            RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(vec![0, 1])) as ArrayRef),
                (
                    "event_timestamp",
                    Arc::new(TimestampMicrosecondArray::from(vec![at; 2]).with_timezone("UTC"))
                        as ArrayRef,
                ),
            ])
            .unwrap()
        };
        let mut options = HistoricalOptions::default();
        options.require_created_before_event = false;
        let refs: Vec<FeatureRef> = vec!["wide:f0".parse().unwrap()];
        let (faulty, root) = faulty_root(&base);
        let reader = ObjectOfflineStore::new(&root);
        // Before every row: no data file is read, what is left is the commit log.
        let out = reader
            .get_historical_features(query(-DAY), &refs, options.clone())
            .await
            .unwrap();
        assert_eq!(out.column_by_name("f0").unwrap().null_count(), 2);
        let listed = faulty.objects_listed();
        assert!(listed < 10, "{}: listed {listed} objects", base.url());
        // The checkpoint of commits 1..=128, then 22 commits: not 150.
        let calls = faulty.calls();
        assert!(calls < 60, "{}: {calls} requests", base.url());

        // Another writer claims the next number from the hint; a reader sees it.
        ObjectOfflineStore::new(&base)
            .ingest("wide", wide_rows(200, 2))
            .await
            .unwrap();
        let out = ObjectOfflineStore::new(&base)
            .get_historical_features(query(201 * DAY), &refs, options)
            .await
            .unwrap();
        assert_eq!(out.column_by_name("f0").unwrap().null_count(), 0);
        let out = reader
            .get_historical_features(query(201 * DAY), &refs, HistoricalOptions::default())
            .await
            .unwrap();
        assert_eq!(out.num_rows(), 2);
    }
}

/// Ingestion under lost create races: a data file whose fresh name is taken is
/// refused (its rows would not be ours), and commit numbers that are always
/// taken end in a clear error after a capped number of backed-off tries, with
/// nothing made visible either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_gives_up_clearly_when_every_create_is_lost() {
    let base = StoreRoot::open("memory://").unwrap();
    let (faulty, root) = faulty_root(&base);
    let s = ObjectOfflineStore::new(&root);
    s.apply_view(wide_view(), ApplyOptions::default())
        .await
        .unwrap();
    faulty.lose_creates_under("/data/");
    let err = s.ingest("wide", wide_rows(0, 2)).await.unwrap_err();
    assert!(
        matches!(err, mlops_core::Error::Conflict { .. })
            && err.to_string().contains("already exists"),
        "{err}"
    );
    faulty.lose_creates_under("/commits/");
    let before = faulty.calls();
    // It gives up: a capped number of tries, not a loop until something else
    // stops it (the timeout only turns a hang into a failure).
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        s.ingest("wide", wide_rows(0, 2)),
    )
    .await
    .expect("an ingestion whose every commit is lost did not give up within 120 s")
    .unwrap_err();
    assert!(
        matches!(err, mlops_core::Error::Unavailable { .. })
            && err
                .to_string()
                .contains("no commit number could be claimed"),
        "{err}"
    );
    // Capped: 64 tries of a few requests each (reading the log's head, probing
    // the next number, the lost create), then it stops.
    let calls = faulty.calls() - before;
    assert!(calls < 400, "{calls} requests before giving up");
    faulty.clear();
    // Nothing of either attempt is visible; the next ingestion works.
    s.ingest("wide", wide_rows(1, 2)).await.unwrap();
    let fresh = ObjectOfflineStore::new(&base);
    let latest = fresh
        .get_historical_features(
            RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(vec![0])) as ArrayRef),
                (
                    "event_timestamp",
                    Arc::new(TimestampMicrosecondArray::from(vec![3 * DAY]).with_timezone("UTC"))
                        as ArrayRef,
                ),
            ])
            .unwrap(),
            &["wide:f0".parse().unwrap()],
            {
                let mut o = HistoricalOptions::default();
                o.require_created_before_event = false;
                o
            },
        )
        .await
        .unwrap();
    assert_eq!(latest.num_rows(), 1);
}
