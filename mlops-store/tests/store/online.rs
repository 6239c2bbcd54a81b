//! The online store contract, written once for every implementation.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Float64Type};
use mlops_core::Error;
use mlops_core::feature::FeatureView;
use mlops_store::{InMemoryOnlineStore, OnlineStore};

fn view() -> FeatureView {
    FeatureView::builder("merchant")
        .join_key("merchant_id", DataType::Utf8)
        .join_key("country", DataType::Int64)
        .event_time("ts")
        .created_time("created")
        .feature("risk", DataType::Float64)
        .feature("label", DataType::Utf8)
        .build()
        .unwrap()
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn rows(
    ids: Vec<&str>,
    country: Vec<i64>,
    event: Vec<i64>,
    created: Vec<i64>,
    risk: Vec<Option<f64>>,
) -> RecordBatch {
    let n = ids.len();
    RecordBatch::try_from_iter([
        ("merchant_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("country", Arc::new(Int64Array::from(country)) as ArrayRef),
        ("ts", ts(event)),
        ("created", ts(created)),
        ("risk", Arc::new(Float64Array::from(risk)) as ArrayRef),
        (
            "label",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("l{i}")),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

fn keys(ids: Vec<&str>, country: Vec<i64>) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("merchant_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("country", Arc::new(Int64Array::from(country)) as ArrayRef),
    ])
    .unwrap()
}

/// What every online store must do.
async fn contract(store: Arc<dyn OnlineStore>) {
    let v = view();
    let written = store
        .write(
            &v,
            &rows(
                vec!["a", "a", "b"],
                vec![1, 2, 1],
                vec![10, 10, 10],
                vec![10, 10, 10],
                vec![Some(0.1), None, Some(0.3)],
            ),
        )
        .await
        .unwrap();
    assert_eq!(written, 3);
    // Older rows never replace newer ones; equal rows change nothing.
    let older = store
        .write(
            &v,
            &rows(vec!["a"], vec![1], vec![5], vec![50], vec![Some(9.0)]),
        )
        .await
        .unwrap();
    assert_eq!(older, 0);
    let same = store
        .write(
            &v,
            &rows(vec!["a"], vec![1], vec![10], vec![10], vec![Some(0.1)]),
        )
        .await
        .unwrap();
    assert_eq!(same, 0, "idempotent");
    // Same event time, later created time: replaces.
    let later = store
        .write(
            &v,
            &rows(vec!["b"], vec![1], vec![10], vec![11], vec![Some(0.35)]),
        )
        .await
        .unwrap();
    assert_eq!(later, 1);

    let read = store
        .read(
            &v,
            &keys(vec!["b", "zz", "a", "a", "b"], vec![1, 1, 2, 1, 1]),
            &["risk".into()],
        )
        .await
        .unwrap();
    assert_eq!(read.rows.len(), 5);
    assert!(read.rows[1].is_none(), "unknown key");
    let risk = read.values.column(0).as_primitive::<Float64Type>();
    let value = |i: usize| {
        read.rows[i]
            .as_ref()
            .map(|r| risk.is_valid(r.row).then(|| risk.value(r.row)))
    };
    assert_eq!(value(0), Some(Some(0.35)));
    assert_eq!(value(2), Some(None), "a stored null stays null");
    assert_eq!(value(3), Some(Some(0.1)));
    assert_eq!(
        value(4),
        Some(Some(0.35)),
        "duplicate keys each get their answer"
    );
    assert_eq!(read.rows[0].as_ref().unwrap().created_us, Some(11));
    assert_eq!(read.values.num_columns(), 1);

    // Bad input names what is wrong.
    let err = store
        .read(&v, &keys(vec!["a"], vec![1]), &["nope".into()])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("feature not found: merchant:nope"),
        "{err}"
    );
    let err = store
        .read(
            &v,
            &keys(vec!["a"], vec![1]).project(&[0]).unwrap(),
            &["risk".into()],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SchemaMismatch { .. }) && err.to_string().contains("column 'country'"),
        "{err}"
    );
    let wrong = RecordBatch::try_from_iter([
        (
            "merchant_id",
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
        ),
        (
            "country",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        ),
    ])
    .unwrap();
    let err = store.read(&v, &wrong, &["risk".into()]).await.unwrap_err();
    assert!(
        err.to_string().contains("expected Int64, found Utf8"),
        "{err}"
    );
    let null_keys = RecordBatch::try_from_iter([
        (
            "merchant_id",
            Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef,
        ),
        ("country", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
    ])
    .unwrap();
    assert!(
        store
            .read(&v, &null_keys, &["risk".into()])
            .await
            .unwrap_err()
            .to_string()
            .contains("null")
    );
    let bad_write = rows(vec!["c"], vec![1], vec![1], vec![1], vec![Some(1.0)])
        .project(&[0, 1, 3, 4, 5])
        .unwrap();
    let err = store.write(&v, &bad_write).await.unwrap_err();
    assert!(err.to_string().contains("column 'ts'"), "{err}");

    // A changed feature list starts afresh (materialize again).
    let mut changed = view();
    changed
        .features
        .push(mlops_core::feature::FeatureField::new(
            "extra",
            DataType::Int64,
        ));
    let read = store
        .read(&changed, &keys(vec!["a"], vec![1]), &["risk".into()])
        .await
        .unwrap();
    assert!(read.rows[0].is_none());
    // ... while the original definition still reads its rows.
    let read = store
        .read(&v, &keys(vec!["a"], vec![1]), &["risk".into()])
        .await
        .unwrap();
    assert!(read.rows[0].is_some());

    // Long keys and values (past any inline size) and enough entities to make the
    // store grow, each read back exactly.
    let long: Vec<String> = (0..3000)
        .map(|i| format!("{i}-{}", "m".repeat(i % 200)))
        .collect();
    let ids: Vec<&str> = long.iter().map(String::as_str).collect();
    let n = ids.len();
    let many = rows(
        ids.clone(),
        vec![7; n],
        vec![20; n],
        vec![20; n],
        (0..n).map(|i| Some(i as f64)).collect(),
    );
    assert_eq!(store.write(&v, &many).await.unwrap(), n);
    let read = store
        .read(
            &v,
            &keys(ids.clone(), vec![7; n]),
            &["label".into(), "risk".into()],
        )
        .await
        .unwrap();
    let labels = read.values.column(0).as_string::<i32>();
    let risk = read.values.column(1).as_primitive::<Float64Type>();
    for (i, r) in read.rows.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|| panic!("entity {i} not found"));
        assert_eq!(risk.value(r.row), i as f64);
        assert_eq!(labels.value(r.row), format!("l{i}"));
        assert_eq!(r.event_us, 20);
    }
    // Each feature list read from a view gets its own columns, whatever was read
    // before (result schemas are reused per list).
    for wanted in [vec!["risk"], vec!["label", "risk"], vec!["risk", "label"]] {
        let names: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        let read = store
            .read(&v, &keys(vec![ids[3]], vec![7]), &names)
            .await
            .unwrap();
        let schema = read.values.schema();
        let got: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(got, wanted);
        let risk = read.values.column_by_name("risk").unwrap();
        assert_eq!(risk.as_primitive::<Float64Type>().value(0), 3.0);
    }
}

#[tokio::test]
async fn in_memory_store_keeps_the_contract() {
    contract(Arc::new(InMemoryOnlineStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_the_newest_row() {
    let store = Arc::new(InMemoryOnlineStore::new());
    let v = view();
    let mut handles = Vec::new();
    for w in 0..8i64 {
        let (store, v) = (store.clone(), v.clone());
        handles.push(tokio::spawn(async move {
            for t in 0..50i64 {
                let ids: Vec<String> = (0..20).map(|k| format!("m{k}")).collect();
                let event = t * 8 + w;
                let b = rows(
                    ids.iter().map(String::as_str).collect(),
                    vec![1; 20],
                    vec![event; 20],
                    vec![event; 20],
                    vec![Some(event as f64); 20],
                );
                store.write(&v, &b).await.unwrap();
                let _ = store
                    .read(&v, &keys(vec!["m0"], vec![1]), &["risk".into()])
                    .await
                    .unwrap();
            }
        }));
    }
    for (w, h) in handles.into_iter().enumerate() {
        crate::join(&format!("writer {w}"), h).await;
    }
    let ids: Vec<String> = (0..20).map(|k| format!("m{k}")).collect();
    let read = store
        .read(
            &v,
            &keys(ids.iter().map(String::as_str).collect(), vec![1; 20]),
            &["risk".into()],
        )
        .await
        .unwrap();
    let risk = read.values.column(0).as_primitive::<Float64Type>();
    for r in &read.rows {
        assert_eq!(risk.value(r.as_ref().unwrap().row), (49 * 8 + 7) as f64);
    }
}

mod materialization {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Float64Type};
    use chrono::{DateTime, Utc};
    use mlops_core::Error;
    use mlops_core::feature::{
        ApplyOptions, FeatureDefinitions, FeatureRef, FeatureStatus, FeatureStore, FeatureView,
        OfflineFeatureStore, OnlineFeatureStore,
    };
    use mlops_store::{InMemoryOnlineStore, ObjectFeatureStore, StoreRoot};

    use super::ts;

    const H: i64 = 3_600_000_000;

    fn at(us: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(us).unwrap()
    }

    fn card(keys: Vec<i64>, event: Vec<i64>, spend: Vec<Option<f64>>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("card_id", Arc::new(Int64Array::from(keys)) as ArrayRef),
            ("event_ts", ts(event)),
            ("spend", Arc::new(Float64Array::from(spend)) as ArrayRef),
        ])
        .unwrap()
    }

    fn request(keys: Vec<i64>) -> RecordBatch {
        RecordBatch::try_from_iter([("card_id", Arc::new(Int64Array::from(keys)) as ArrayRef)])
            .unwrap()
    }

    async fn store(root: &StoreRoot) -> ObjectFeatureStore {
        let s = ObjectFeatureStore::new(root, Arc::new(InMemoryOnlineStore::new()));
        let view = FeatureView::builder("card")
            .join_key("card_id", DataType::Int64)
            .event_time("event_ts")
            .ttl(Duration::from_secs(2 * 3600))
            .feature("spend", DataType::Float64)
            .build()
            .unwrap();
        s.apply_view(view, ApplyOptions::default()).await.unwrap();
        s
    }

    /// Values, statuses and event times read at `now`.
    async fn read_at(
        s: &ObjectFeatureStore,
        req: RecordBatch,
        now: i64,
    ) -> (
        Vec<Option<f64>>,
        Vec<FeatureStatus>,
        Vec<Option<DateTime<Utc>>>,
    ) {
        let refs: Vec<FeatureRef> = vec!["card:spend".parse().unwrap()];
        let out = s.get_online_features_at(req, &refs, at(now)).await.unwrap();
        let spend = out
            .batch
            .column_by_name("spend")
            .unwrap()
            .as_primitive::<Float64Type>()
            .iter()
            .collect();
        (
            spend,
            out.columns[0].statuses.clone(),
            out.columns[0].event_times.clone(),
        )
    }

    /// On every backend: the offline data written there, materialized online.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn materialize_then_serve_with_statuses() {
        for root in crate::roots("online-materialize") {
            materialize_then_serve_on(&root).await;
        }
    }

    async fn materialize_then_serve_on(root: &StoreRoot) {
        let concrete = store(root).await;
        let s: Arc<dyn FeatureStore> = Arc::new(concrete.clone());
        s.ingest(
            "card",
            card(
                vec![1, 1, 2, 3],
                vec![H, 3 * H, 2 * H, 9 * H],
                vec![Some(1.0), Some(3.0), None, Some(9.0)],
            ),
        )
        .await
        .unwrap();
        // The window [0, 5h): card 1's latest is 3.0, card 2's is null; card 3 is later.
        let r = s.materialize("card", at(0), at(5 * H)).await.unwrap();
        assert_eq!(r.entities_written, 2);
        let again = s.materialize("card", at(0), at(5 * H)).await.unwrap();
        assert_eq!(again.entities_written, 0, "idempotent");
        // Read now (2026): everything is older than the 2 h TTL.
        let refs: Vec<FeatureRef> = vec!["card:spend".parse().unwrap()];
        let out = s
            .get_online_features(request(vec![2, 1, 3]), &refs)
            .await
            .unwrap();
        let spend: Vec<Option<f64>> = out
            .batch
            .column_by_name("spend")
            .unwrap()
            .as_primitive::<Float64Type>()
            .iter()
            .collect();
        assert_eq!(spend, vec![None, None, None]);
        assert_eq!(
            out.columns[0].statuses,
            vec![
                FeatureStatus::OutsideMaxAge,
                FeatureStatus::OutsideMaxAge,
                FeatureStatus::NotFound
            ]
        );
        assert_eq!(
            out.batch.num_columns(),
            2,
            "the request's columns, then the features"
        );

        // Read as of 4 h: within the TTL (exactly 2 h old counts as inside too).
        let (spend, statuses, times) = read_at(&concrete, request(vec![2, 1, 3, 1]), 4 * H).await;
        assert_eq!(spend, vec![None, Some(3.0), None, Some(3.0)]);
        assert_eq!(
            statuses,
            vec![
                FeatureStatus::NullValue,
                FeatureStatus::Present,
                FeatureStatus::NotFound,
                FeatureStatus::Present
            ]
        );
        assert_eq!(times[1], Some(at(3 * H)));
        let (_, statuses, _) = read_at(&concrete, request(vec![1]), 5 * H).await;
        assert_eq!(statuses, vec![FeatureStatus::Present]);
        let (_, statuses, _) = read_at(&concrete, request(vec![1]), 5 * H + 1).await;
        assert_eq!(statuses, vec![FeatureStatus::OutsideMaxAge]);

        // An older row arriving later never replaces the newer one online.
        s.ingest("card", card(vec![1], vec![2 * H], vec![Some(2.0)]))
            .await
            .unwrap();
        s.materialize("card", at(0), at(5 * H)).await.unwrap();
        let (spend, _, _) = read_at(&concrete, request(vec![1]), 4 * H).await;
        assert_eq!(spend, vec![Some(3.0)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn incremental_materialization_and_bad_requests() {
        for root in crate::roots("online-incremental") {
            incremental_on(&root).await;
        }
    }

    async fn incremental_on(root: &StoreRoot) {
        let s = ObjectFeatureStore::new(root, Arc::new(InMemoryOnlineStore::new()));
        let view = FeatureView::builder("card")
            .join_key("card_id", DataType::Int64)
            .event_time("event_ts")
            .feature("spend", DataType::Float64)
            .build()
            .unwrap();
        s.apply_view(view, ApplyOptions::default()).await.unwrap();
        s.ingest(
            "card",
            card(vec![1, 2], vec![H, 2 * H], vec![Some(1.0), Some(2.0)]),
        )
        .await
        .unwrap();
        let r = s
            .materialize_incremental("card", at(90 * 60_000_000))
            .await
            .unwrap();
        assert_eq!(r.entities_written, 1, "only card 1 is before 1.5 h");
        let r = s.materialize_incremental("card", at(3 * H)).await.unwrap();
        assert_eq!(
            (r.entities_written, r.start),
            (1, at(90 * 60_000_000)),
            "continues from the watermark"
        );
        let r = s.materialize_incremental("card", at(3 * H)).await.unwrap();
        assert_eq!(r.entities_written, 0);
        let refs: Vec<FeatureRef> = vec!["card:spend".parse().unwrap()];
        let out = s
            .get_online_features_at(request(vec![1, 2]), &refs, at(3 * H))
            .await
            .unwrap();
        assert_eq!(out.columns[0].statuses, vec![FeatureStatus::Present; 2]);

        // Late data: rows with event times before the last run's end, ingested
        // after it. Progress is by commit, so the next run loads them, and the
        // online store then agrees with the offline join. (With an event-time
        // watermark they were never loaded.)
        s.ingest(
            "card",
            card(
                vec![3, 1, 2],
                vec![H / 2, 2 * H, H / 4],
                vec![Some(30.0), Some(10.0), Some(99.0)],
            ),
        )
        .await
        .unwrap();
        let r = s.materialize_incremental("card", at(3 * H)).await.unwrap();
        assert_eq!(
            r.entities_written, 2,
            "cards 3 (new) and 1 (a newer row); card 2's late row is older than its stored one"
        );
        let online = s
            .get_online_features_at(request(vec![1, 2, 3]), &refs, at(3 * H))
            .await
            .unwrap();
        let online: Vec<f64> = online
            .batch
            .column(1)
            .as_primitive::<Float64Type>()
            .values()
            .to_vec();
        let mut options = mlops_core::feature::HistoricalOptions::default();
        options.require_created_before_event = false;
        let entities = RecordBatch::try_from_iter([
            (
                "card_id",
                Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            ),
            ("event_timestamp", ts(vec![3 * H; 3])),
        ])
        .unwrap();
        let offline = s
            .get_historical_features(entities, &refs, options)
            .await
            .unwrap();
        let offline: Vec<f64> = offline
            .column_by_name("spend")
            .unwrap()
            .as_primitive::<Float64Type>()
            .values()
            .to_vec();
        assert_eq!(online, vec![10.0, 2.0, 30.0]);
        assert_eq!(online, offline, "online = offline after late arrivals");
        // Nothing new: nothing written, and the progress holds.
        let r = s.materialize_incremental("card", at(3 * H)).await.unwrap();
        assert_eq!(r.entities_written, 0);

        assert!(matches!(
            s.get_online_features(request(vec![]), &refs)
                .await
                .unwrap_err(),
            Error::InvalidInput { .. }
        ));
        assert!(matches!(
            s.get_online_features(request(vec![1]), &[])
                .await
                .unwrap_err(),
            Error::InvalidInput { .. }
        ));
        let err = s
            .get_online_features(request(vec![1]), &["card:nope".parse().unwrap()])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("feature not found: card:nope"),
            "{err}"
        );
        let err = s
            .get_online_features(request(vec![1]), &["ghost:x".parse().unwrap()])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("feature view not found: ghost"),
            "{err}"
        );
        let wrong = RecordBatch::try_from_iter([(
            "card_id",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        )])
        .unwrap();
        let err = s.get_online_features(wrong, &refs).await.unwrap_err();
        assert!(
            err.to_string().contains("expected Int64, found Float64"),
            "{err}"
        );
        // Output columns that would clash are refused, naming the feature.
        let twice: Vec<FeatureRef> = vec!["card:spend".parse().unwrap(); 2];
        let err = s
            .get_online_features(request(vec![1]), &twice)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. })
                && err.to_string().contains("'spend'")
                && err.to_string().contains("clash"),
            "{err}"
        );
        let clashing = RecordBatch::try_from_iter([
            ("card_id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("spend", Arc::new(Float64Array::from(vec![0.0])) as ArrayRef),
        ])
        .unwrap();
        let err = s.get_online_features(clashing, &refs).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("the request already has a column of that name"),
            "{err}"
        );
        assert!(s.materialize("card", at(5), at(5)).await.is_err());
        assert!(s.materialize("ghost", at(0), at(5)).await.is_err());
    }
}

/// The same contract against a real Redis server: `MLOPS_TEST_REDIS_URL`, or one
/// started here when `redis-server` is installed.
#[tokio::test]
#[cfg_attr(
    not(mlops_redis),
    ignore = "needs redis-server on PATH or MLOPS_TEST_REDIS_URL (see CONTRIBUTING.md)"
)]
async fn redis_store_keeps_the_contract() {
    let url = crate::services::redis_url();
    let namespace = crate::unique("mlops-test");
    let store = mlops_store::RedisOnlineStore::connect(&url, &namespace)
        .await
        .unwrap();
    contract(Arc::new(store.clone())).await;

    // Writers racing on the same keys: the newest row wins, atomically.
    let v = view();
    let mut handles = Vec::new();
    for w in 0..4i64 {
        let (store, v) = (store.clone(), v.clone());
        handles.push(tokio::spawn(async move {
            for t in 0..20i64 {
                let event = t * 4 + w;
                store
                    .write(
                        &v,
                        &rows(
                            vec!["r1", "r2"],
                            vec![1, 1],
                            vec![event; 2],
                            vec![event; 2],
                            vec![Some(event as f64); 2],
                        ),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for (w, h) in handles.into_iter().enumerate() {
        crate::join(&format!("Redis writer {w}"), h).await;
    }
    let read = store
        .read(&v, &keys(vec!["r1", "r2"], vec![1, 1]), &["risk".into()])
        .await
        .unwrap();
    let risk = read.values.column(0).as_primitive::<Float64Type>();
    for r in &read.rows {
        assert_eq!(risk.value(r.as_ref().unwrap().row), 79.0);
    }
    // A TTL view's keys expire in Redis (at event + 2 x TTL).
    let ttl_view = FeatureView::builder("short")
        .join_key("merchant_id", DataType::Utf8)
        .join_key("country", DataType::Int64)
        .event_time("ts")
        .created_time("created")
        .ttl(std::time::Duration::from_secs(1))
        .feature("risk", DataType::Float64)
        .feature("label", DataType::Utf8)
        .build()
        .unwrap();
    // Real time, on purpose: Redis' own clock expires the key. The entry must be
    // there before its expiry and gone after it; when it goes is observed by
    // polling (a busy machine only makes that later), never by a fixed sleep.
    let read_x = || async {
        store
            .read(&ttl_view, &keys(vec!["x"], vec![1]), &["risk".into()])
            .await
            .unwrap()
            .rows[0]
            .is_some()
    };
    let now_ms = || chrono::Utc::now().timestamp_millis();
    // Written at event time `now`: it expires at now + 2 x TTL. A read that
    // starts before then must find it; on a machine so busy that the first read
    // starts too late, write it again (a few tries).
    let mut expire_at_ms = None;
    for _ in 0..5 {
        let now_us = chrono::Utc::now().timestamp_micros();
        store
            .write(
                &ttl_view,
                &rows(
                    vec!["x"],
                    vec![1],
                    vec![now_us],
                    vec![now_us],
                    vec![Some(1.0)],
                ),
            )
            .await
            .unwrap();
        let expires = now_us / 1000 + 2000;
        let found = read_x().await;
        let answered = now_ms();
        if found {
            expire_at_ms = Some(expires);
            break;
        }
        assert!(
            answered >= expires,
            "the entry was gone {} ms before its expiry (event + 2 x TTL)",
            expires - answered
        );
    }
    let expire_at_ms = expire_at_ms.expect("the TTL entry was never read back before its expiry");
    // It expires: not before `expire_at`, and within a generous deadline after.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let found = read_x().await;
        let answered = now_ms();
        if !found {
            assert!(
                answered >= expire_at_ms,
                "expired {} ms too early (event + 2 x TTL)",
                expire_at_ms - answered
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired: the entry was still there after 60 s (it expires at event + 2 x TTL)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        mlops_store::RedisOnlineStore::connect("not a url", "x")
            .await
            .is_err()
    );
}

/// Readers asking for the same entities in opposite orders while writers wait
/// on those shards: with locks taken in request order, two readers could each
/// hold a shard the other needs, behind writers the lock lets go first, and wait
/// forever. Threads run on their own and the test gives up after a minute.
#[test]
fn readers_in_opposite_orders_and_writers_never_deadlock() {
    let store = Arc::new(InMemoryOnlineStore::new());
    let v = view();
    let ids: Vec<String> = (0..64).map(|k| format!("m{k}")).collect();
    let all = rows(
        ids.iter().map(String::as_str).collect(),
        vec![1; 64],
        vec![1; 64],
        vec![1; 64],
        vec![Some(1.0); 64],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(store.write(&v, &all)).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for t in 0..6usize {
        let (store, v, ids, done) = (store.clone(), v.clone(), ids.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut forward: Vec<&str> = ids.iter().map(String::as_str).collect();
            if t % 2 == 1 {
                forward.reverse();
            }
            let query = keys(forward, vec![1; 64]);
            for i in 0..3000i64 {
                if t < 4 {
                    let read = rt
                        .block_on(store.read(&v, &query, &["risk".into()]))
                        .unwrap();
                    assert!(read.rows.iter().all(Option::is_some));
                } else {
                    let k = (i as usize * 7 + t) % 64;
                    let b = rows(
                        vec![&ids[k]],
                        vec![1],
                        vec![i + 2],
                        vec![i + 2],
                        vec![Some(2.0)],
                    );
                    rt.block_on(store.write(&v, &b)).unwrap();
                }
            }
            let _ = done.send(());
        }));
    }
    for _ in 0..6 {
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("readers and writers deadlocked");
    }
    for t in threads {
        t.join().unwrap();
    }
}
