//! The offline feature store: definitions, ingestion, and point-in-time retrieval,
//! checked against a brute-force implementation on random data.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Float64Type};
use mlops_core::Error;
use mlops_core::feature::{ApplyOptions, Entity, FeatureRef, FeatureView, HistoricalOptions};
use mlops_store::{ObjectOfflineStore, StoreRoot};
use proptest::prelude::*;

use crate::{local_dir, local_root, roots};

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn card_view(ttl_us: Option<u64>) -> FeatureView {
    let b = FeatureView::builder("card")
        .join_key("card_id", DataType::Int64)
        .event_time("event_ts")
        .created_time("created_ts")
        .feature("spend", DataType::Float64);
    match ttl_us {
        Some(t) => b.ttl(Duration::from_micros(t)).build().unwrap(),
        None => b.build().unwrap(),
    }
}

fn card_rows(
    keys: Vec<i64>,
    event: Vec<i64>,
    created: Vec<i64>,
    spend: Vec<Option<f64>>,
) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(keys)) as ArrayRef),
        ("event_ts", ts(event)),
        ("created_ts", ts(created)),
        ("spend", Arc::new(Float64Array::from(spend)) as ArrayRef),
    ])
    .unwrap()
}

fn entities(keys: Vec<i64>, at: Vec<i64>) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(keys)) as ArrayRef),
        ("event_timestamp", ts(at)),
    ])
    .unwrap()
}

fn column(out: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    out.column_by_name(name)
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn spend_ref() -> Vec<FeatureRef> {
    vec!["card:spend".parse().unwrap()]
}

const DAY: i64 = 86_400_000_000;

#[tokio::test]
async fn point_in_time_semantics() {
    for root in roots("offline-pit") {
        let s = ObjectOfflineStore::new(&root);
        s.apply_view(card_view(Some(10 * DAY as u64)), ApplyOptions::default())
            .await
            .unwrap();
        // card 1: values at day 1 (created day 1), day 3 (created day 5: a late backfill),
        // and two rows at day 4 (created day 4 and day 4 + 1us: the later one wins).
        s.ingest(
            "card",
            card_rows(
                vec![1, 1, 1, 1, 2],
                vec![DAY, 3 * DAY, 4 * DAY, 4 * DAY, 2 * DAY],
                vec![DAY, 5 * DAY, 4 * DAY, 4 * DAY + 1, 2 * DAY],
                vec![Some(1.0), Some(3.0), Some(4.0), Some(4.5), None],
            ),
        )
        .await
        .unwrap();
        let query = entities(
            vec![1, 1, 1, 1, 1, 2, 3, 1],
            vec![
                0,
                DAY,
                3 * DAY + 5,
                4 * DAY + 10,
                14 * DAY,
                2 * DAY,
                2 * DAY,
                3 * DAY + 5,
            ],
        );
        let out = s
            .get_historical_features(query.clone(), &spend_ref(), HistoricalOptions::default())
            .await
            .unwrap();
        assert_eq!(out.num_rows(), 8);
        assert_eq!(
            column(&out, "spend"),
            vec![
                None,      // before any value
                Some(1.0), // exactly at the event time
                Some(1.0), // the day-3 value was created on day 5: not known yet
                Some(4.5), // tie on event time: latest created wins
                Some(4.5), // 14 days - 4 days = 10 days = TTL exactly: still valid
                None,      // a row exists, its value is null
                None,      // an entity with no history
                Some(1.0), // duplicate input rows get their own output rows
            ]
        );
        // Feast's behaviour, without the created-time guard: the backfill leaks in.
        let mut feast = HistoricalOptions::default();
        feast.require_created_before_event = false;
        let out = s
            .get_historical_features(query, &spend_ref(), feast)
            .await
            .unwrap();
        assert_eq!(column(&out, "spend")[2], Some(3.0));
        // One microsecond past the TTL: expired.
        let late = entities(vec![1], vec![14 * DAY + 1]);
        let out = s
            .get_historical_features(late, &spend_ref(), HistoricalOptions::default())
            .await
            .unwrap();
        assert_eq!(column(&out, "spend"), vec![None]);
    }
}

#[tokio::test]
async fn reingesting_does_not_change_results_and_views_join_together() {
    let root = StoreRoot::open("memory://").unwrap();
    let s = ObjectOfflineStore::new(&root);
    s.apply_view(card_view(None), ApplyOptions::default())
        .await
        .unwrap();
    let merchant = FeatureView::builder("merchant")
        .join_key("merchant_id", DataType::Utf8)
        .join_key("country", DataType::Utf8)
        .event_time("ts")
        .feature("risk", DataType::Float64)
        .build()
        .unwrap();
    s.apply_view(merchant, ApplyOptions::default())
        .await
        .unwrap();
    let rows = card_rows(
        vec![1, 2],
        vec![DAY, DAY],
        vec![DAY, DAY],
        vec![Some(10.0), Some(20.0)],
    );
    s.ingest("card", rows.clone()).await.unwrap();
    s.ingest("card", rows).await.unwrap();
    s.ingest(
        "merchant",
        RecordBatch::try_from_iter([
            (
                "merchant_id",
                Arc::new(StringArray::from(vec!["m1", "m1"])) as ArrayRef,
            ),
            (
                "country",
                Arc::new(StringArray::from(vec!["fr", "de"])) as ArrayRef,
            ),
            ("ts", ts(vec![DAY, DAY])),
            (
                "risk",
                Arc::new(Float64Array::from(vec![0.1, 0.9])) as ArrayRef,
            ),
        ])
        .unwrap(),
    )
    .await
    .unwrap();
    let query = RecordBatch::try_from_iter([
        (
            "label",
            Arc::new(Int64Array::from(vec![0, 1, 0])) as ArrayRef,
        ),
        (
            "card_id",
            Arc::new(Int64Array::from(vec![2, 1, 2])) as ArrayRef,
        ),
        (
            "merchant_id",
            Arc::new(StringArray::from(vec!["m1", "m1", "m2"])) as ArrayRef,
        ),
        (
            "country",
            Arc::new(StringArray::from(vec!["de", "fr", "fr"])) as ArrayRef,
        ),
        // Any timestamp unit works.
        (
            "event_timestamp",
            Arc::new(TimestampNanosecondArray::from(vec![2 * DAY * 1000; 3])) as ArrayRef,
        ),
    ])
    .unwrap();
    let refs: Vec<FeatureRef> = vec![
        "merchant:risk".parse().unwrap(),
        "card:spend".parse().unwrap(),
    ];
    let mut options = HistoricalOptions::default();
    options.full_feature_names = true;
    let out = s
        .get_historical_features(query, &refs, options)
        .await
        .unwrap();
    let schema = out.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        vec![
            "label",
            "card_id",
            "merchant_id",
            "country",
            "event_timestamp",
            "merchant__risk",
            "card__spend"
        ]
    );
    assert_eq!(
        column(&out, "card__spend"),
        vec![Some(20.0), Some(10.0), Some(20.0)]
    );
    assert_eq!(
        column(&out, "merchant__risk"),
        vec![Some(0.9), Some(0.1), None]
    );
}

#[tokio::test]
async fn ingestion_is_validated_and_all_or_nothing() {
    let root = local_root("offline-ingest");
    let s = ObjectOfflineStore::new(&root);
    s.apply_view(card_view(None), ApplyOptions::default())
        .await
        .unwrap();
    let good = card_rows(vec![1], vec![DAY], vec![DAY], vec![Some(1.0)]);
    let drop = |i: usize| {
        let mut cols: Vec<(String, ArrayRef)> = good
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(good.columns().iter().cloned())
            .collect();
        cols.remove(i);
        RecordBatch::try_from_iter(cols).unwrap()
    };
    let err = s.ingest("card", drop(3)).await.unwrap_err();
    assert!(
        matches!(err, Error::SchemaMismatch { .. }) && err.to_string().contains("column 'spend'"),
        "{err}"
    );
    let mut extra: Vec<(String, ArrayRef)> = vec![(
        "bogus".into(),
        Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )];
    extra.extend(
        good.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(good.columns().iter().cloned()),
    );
    let err = s
        .ingest("card", RecordBatch::try_from_iter(extra).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("column 'bogus'"), "{err}");
    let wrong = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
        ),
        ("event_ts", ts(vec![DAY])),
        ("created_ts", ts(vec![DAY])),
        ("spend", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
    ])
    .unwrap();
    let err = s.ingest("card", wrong).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("column 'card_id': expected Int64, found Utf8"),
        "{err}"
    );
    let nulls = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(vec![Some(1), None, None])) as ArrayRef,
        ),
        ("event_ts", ts(vec![DAY; 3])),
        ("created_ts", ts(vec![DAY; 3])),
        (
            "spend",
            Arc::new(Float64Array::from(vec![1.0; 3])) as ArrayRef,
        ),
    ])
    .unwrap();
    let err = s.ingest("card", nulls).await.unwrap_err();
    assert!(
        err.to_string().contains("column 'card_id'") && err.to_string().contains("2 rows are null"),
        "{err}"
    );
    let err = s.ingest("card", good.slice(0, 0)).await.unwrap_err();
    assert!(err.to_string().contains("no rows"), "{err}");
    assert!(matches!(
        s.ingest("nope", good.clone()).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    // Nothing refused became visible, and no file was written for it.
    let dir = local_dir(&root).unwrap().join("features/views/card");
    assert!(!dir.exists(), "refused batches leave no files");
    // The accepted batch lands in a Hive-style partition.
    let receipt = s.ingest("card", good).await.unwrap();
    assert_eq!(receipt.rows, 1);
    assert!(
        receipt.files[0].starts_with("features/views/card/data/event_date=1970-01-02/"),
        "{:?}",
        receipt.files
    );
}

#[tokio::test]
async fn definitions_refuse_incompatible_changes_unless_forced() {
    let s = ObjectOfflineStore::new(&StoreRoot::open("memory://").unwrap());
    s.apply_entity(Entity::new("card", "card_id", DataType::Int64))
        .await
        .unwrap();
    s.apply_view(card_view(None), ApplyOptions::default())
        .await
        .unwrap();
    // Compatible: a new feature, a TTL.
    let mut added = card_view(Some(1000));
    added.features.push(mlops_core::feature::FeatureField::new(
        "count",
        DataType::Int64,
    ));
    s.apply_view(added.clone(), ApplyOptions::default())
        .await
        .unwrap();
    // Incompatible: a type change.
    let mut changed = added.clone();
    changed.features[0].data_type = DataType::Int64;
    let err = s
        .apply_view(changed.clone(), ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. })
            && err.to_string().contains("feature 'spend' changed type"),
        "{err}"
    );
    s.apply_view(changed, ApplyOptions::forced()).await.unwrap();
    // A key type that contradicts the entity.
    let bad = FeatureView::builder("other")
        .join_key("card_id", DataType::Utf8)
        .event_time("ts")
        .feature("f", DataType::Float64)
        .build()
        .unwrap();
    let err = s
        .apply_view(bad, ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("entity card"), "{err}");
    assert_eq!(s.list_views().await.unwrap().len(), 1);
    assert_eq!(s.list_entities().await.unwrap().len(), 1);
}

#[tokio::test]
async fn retrieval_bad_input() {
    let s = ObjectOfflineStore::new(&StoreRoot::open("memory://").unwrap());
    s.apply_view(card_view(None), ApplyOptions::default())
        .await
        .unwrap();
    let q = entities(vec![1], vec![DAY]);
    let err = s
        .get_historical_features(
            q.clone(),
            &["card:nope".parse().unwrap()],
            HistoricalOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("feature not found: card:nope"),
        "{err}"
    );
    let err = s
        .get_historical_features(
            q.clone(),
            &["ghost:x".parse().unwrap()],
            HistoricalOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("feature view not found: ghost"),
        "{err}"
    );
    let err = s
        .get_historical_features(q.clone(), &[], HistoricalOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    let mut opts = HistoricalOptions::default();
    opts.event_timestamp_column = "when".into();
    let err = s
        .get_historical_features(q.clone(), &spend_ref(), opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("column 'when'"), "{err}");
    let no_key = q.project(&[1]).unwrap();
    let err = s
        .get_historical_features(no_key, &spend_ref(), HistoricalOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("column 'card_id'"), "{err}");
    let clash = RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("event_timestamp", ts(vec![DAY])),
        ("spend", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
    ])
    .unwrap();
    let err = s
        .get_historical_features(clash, &spend_ref(), HistoricalOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("output column 'spend'"), "{err}");
}

/// The rule, written the slow obvious way.
fn brute_force(
    feature_rows: &[(i64, i64, i64, Option<f64>)], // key, event, created, value (in ingest order)
    query: &[(i64, i64)],
    ttl: Option<i64>,
    require_created: bool,
) -> Vec<Option<f64>> {
    query
        .iter()
        .map(|&(k, t)| {
            feature_rows
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.0 == k
                        && r.1 <= t
                        && ttl.is_none_or(|ttl| r.1 >= t - ttl)
                        && (!require_created || r.2 <= t)
                })
                .max_by_key(|(i, r)| (r.1, r.2, *i))
                .and_then(|(_, r)| r.3)
        })
        .collect()
}

/// A feature row: key, event time, created time, value (in ingest order).
type Row = (i64, i64, i64, Option<f64>);
/// Rows, queries (key, time), TTL, created-time guard, number of commits.
type Case = (Vec<Row>, Vec<(i64, i64)>, Option<i64>, bool, usize);

fn arb_case() -> impl Strategy<Value = Case> {
    let row = (
        0i64..4,
        0i64..12,
        0i64..6,
        proptest::option::weighted(0.8, -100.0f64..100.0),
    )
        .prop_map(|(k, e, lag, v)| (k, e * DAY / 4, e * DAY / 4 + lag * DAY / 4, v));
    (
        proptest::collection::vec(row, 0..40),
        proptest::collection::vec(
            (0i64..5, 0i64..16).prop_map(|(k, t)| (k, t * DAY / 4)),
            1..30,
        ),
        proptest::option::of((0i64..8).prop_map(|t| t * DAY / 4)),
        any::<bool>(),
        1usize..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn matches_brute_force((rows, query, ttl, require_created, chunks) in arb_case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = ObjectOfflineStore::new(&StoreRoot::open("memory://").unwrap());
            // TTL 0 is not a valid view; treat it as "no TTL" in both.
            let ttl = ttl.filter(|t| *t > 0);
            s.apply_view(card_view(ttl.map(|t| t as u64)), ApplyOptions::default()).await.unwrap();
            // Ingest in several commits, so ties are broken across files too.
            let size = rows.len().div_ceil(chunks).max(1);
            for part in rows.chunks(size) {
                let b = card_rows(
                    part.iter().map(|r| r.0).collect(),
                    part.iter().map(|r| r.1).collect(),
                    part.iter().map(|r| r.2).collect(),
                    part.iter().map(|r| r.3).collect(),
                );
                s.ingest("card", b).await.unwrap();
            }
            let q = entities(query.iter().map(|q| q.0).collect(), query.iter().map(|q| q.1).collect());
            let mut options = HistoricalOptions::default();
            options.require_created_before_event = require_created;
            let out = s.get_historical_features(q, &spend_ref(), options).await.unwrap();
            prop_assert_eq!(column(&out, "spend"), brute_force(&rows, &query, ttl, require_created));
            Ok(())
        })?;
    }
}

/// A view's files are plain Hive-partitioned Parquet: DuckDB reads them and gets
/// the rows that were ingested. Needs a Python with duckdb (`MLOPS_TEST_PYTHON`,
/// else `python3`).
#[tokio::test]
#[cfg_attr(
    not(mlops_duckdb),
    ignore = "needs a Python with duckdb: pip install duckdb, or set MLOPS_TEST_PYTHON (see CONTRIBUTING.md)"
)]
async fn duckdb_reads_the_view_files() {
    let python = crate::services::duckdb_python();
    let root = local_root("offline-duckdb");
    let s = ObjectOfflineStore::new(&root);
    s.apply_view(card_view(None), ApplyOptions::default())
        .await
        .unwrap();
    let keys = vec![3, 1, 2, 1];
    let events = vec![DAY + 5, DAY + 1, 2 * DAY + 7, 3 * DAY];
    let values = vec![Some(0.5), None, Some(2.5), Some(-1.0)];
    s.ingest(
        "card",
        card_rows(keys.clone(), events.clone(), events.clone(), values.clone()),
    )
    .await
    .unwrap();
    let dir = local_dir(&root).unwrap();
    let script = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"select card_id, epoch_us(event_ts), spend, event_date::VARCHAR \
         from read_parquet('{}/features/views/card/data/*/*.parquet', hive_partitioning=true) \
         order by event_ts\").fetchall()\n\
         print(json.dumps(rows))",
        dir.display()
    );
    let out = mlops_core::testkit::process::output_within(
        "python reading the view's files with duckdb",
        std::process::Command::new(&python).args(["-c", &script]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(i64, i64, Option<f64>, String)> = serde_json::from_slice(&out.stdout).unwrap();
    let mut expected: Vec<(i64, i64, Option<f64>, String)> = keys
        .iter()
        .zip(&events)
        .zip(&values)
        .map(|((&k, &e), &v)| {
            let date = chrono::DateTime::from_timestamp_micros(e)
                .unwrap()
                .date_naive()
                .to_string();
            (k, e, v, date)
        })
        .collect();
    expected.sort_by_key(|r| r.1);
    assert_eq!(rows, expected);
}

/// Row groups are skipped by their time statistics; the answers stay right when
/// a query window covers only part of a multi-row-group file.
#[tokio::test]
async fn row_group_pruning_keeps_answers_right() {
    let s = ObjectOfflineStore::new(&StoreRoot::open("memory://").unwrap());
    s.apply_view(card_view(Some(3_600_000_000)), ApplyOptions::default())
        .await
        .unwrap();
    let n = 300_000i64; // three row groups in one day's file
    let rows: Vec<(i64, i64, i64, Option<f64>)> = (0..n)
        .map(|i| {
            let t = DAY + i * 250_000; // every 0.25 s through the day
            ((i * 7919) % 50, t, t, Some(i as f64))
        })
        .collect();
    s.ingest(
        "card",
        card_rows(
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
            rows.iter().map(|r| r.2).collect(),
            rows.iter().map(|r| r.3).collect(),
        ),
    )
    .await
    .unwrap();
    // A window late in the day: the early row groups cannot match (1 h TTL).
    let query: Vec<(i64, i64)> = (0..60)
        .map(|i| (i % 55, DAY + 70_000_000_000 + i * 1_000_000))
        .collect();
    let q = entities(
        query.iter().map(|q| q.0).collect(),
        query.iter().map(|q| q.1).collect(),
    );
    let out = s
        .get_historical_features(q, &spend_ref(), HistoricalOptions::default())
        .await
        .unwrap();
    assert_eq!(
        column(&out, "spend"),
        brute_force(&rows, &query, Some(3_600_000_000), true)
    );
    assert!(column(&out, "spend").iter().flatten().count() > 40);
}

/// No entity rows, or no data yet: an empty or all-null answer, not an error.
#[tokio::test]
async fn empty_inputs_give_empty_answers() {
    let s = ObjectOfflineStore::new(&StoreRoot::open("memory://").unwrap());
    s.apply_view(card_view(None), ApplyOptions::default())
        .await
        .unwrap();
    let none = entities(vec![], vec![]);
    let out = s
        .get_historical_features(none, &spend_ref(), HistoricalOptions::default())
        .await
        .unwrap();
    assert_eq!((out.num_rows(), out.num_columns()), (0, 3));
    // A view without data yet: every value is null.
    let q = entities(vec![1, 2], vec![DAY, 2 * DAY]);
    let out = s
        .get_historical_features(q, &spend_ref(), HistoricalOptions::default())
        .await
        .unwrap();
    assert_eq!(column(&out, "spend"), vec![None, None]);
    // Null entity keys match nothing (and take the general path).
    let nulls = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(vec![None, Some(1)])) as ArrayRef,
        ),
        ("event_timestamp", ts(vec![DAY, DAY])),
    ])
    .unwrap();
    s.ingest(
        "card",
        card_rows(vec![1], vec![DAY], vec![DAY], vec![Some(3.0)]),
    )
    .await
    .unwrap();
    let out = s
        .get_historical_features(nulls, &spend_ref(), HistoricalOptions::default())
        .await
        .unwrap();
    assert_eq!(column(&out, "spend"), vec![None, Some(3.0)]);
}

#[tokio::test]
async fn list_features_are_read_back_with_their_values() {
    // A nested column's Parquet leaves are named after its items (`item`):
    // reading by column name must still find it.
    use arrow::array::{Float32Builder, ListBuilder};
    use arrow::datatypes::Field;
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let root = local_root("offline-list");
    let s = ObjectOfflineStore::new(&root);
    let view = FeatureView::builder("card")
        .join_key("card_id", DataType::Int64)
        .event_time("event_ts")
        .feature("embedding", DataType::List(item.clone()))
        .feature("spend", DataType::Float64)
        .build()
        .unwrap();
    s.apply_view(view, ApplyOptions::default()).await.unwrap();
    let mut lists = ListBuilder::new(Float32Builder::new()).with_field(item);
    lists.values().append_slice(&[1.0, 2.0]);
    lists.append(true);
    lists.values().append_slice(&[3.0]);
    lists.append(true);
    let rows = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        ),
        ("event_ts", ts(vec![DAY, DAY])),
        ("embedding", Arc::new(lists.finish()) as ArrayRef),
        (
            "spend",
            Arc::new(Float64Array::from(vec![1.5, 2.5])) as ArrayRef,
        ),
    ])
    .unwrap();
    s.ingest("card", rows).await.unwrap();
    let refs: Vec<FeatureRef> = vec![
        "card:embedding".parse().unwrap(),
        "card:spend".parse().unwrap(),
    ];
    let out = s
        .get_historical_features(
            entities(vec![2, 1], vec![2 * DAY, 2 * DAY]),
            &refs,
            HistoricalOptions::default(),
        )
        .await
        .unwrap();
    let embedding = out.column_by_name("embedding").unwrap().as_list::<i32>();
    let values: Vec<Option<Vec<Option<f32>>>> = embedding
        .iter()
        .map(|l| {
            l.map(|a| {
                a.as_primitive::<arrow::datatypes::Float32Type>()
                    .iter()
                    .collect()
            })
        })
        .collect();
    assert_eq!(
        values,
        vec![Some(vec![Some(3.0)]), Some(vec![Some(1.0), Some(2.0)])]
    );
    assert_eq!(column(&out, "spend"), vec![Some(2.5), Some(1.5)]);
}

/// The healthcare case's stage separation on the feature store: the training
/// principal reads only de-identified views offline, the serving principal
/// reads only online features and never the offline store; every denial names
/// principal, action and resource, is audited, and writes nothing.
#[tokio::test]
async fn training_and_serving_principals_see_only_their_stage() {
    use arrow::array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
    };
    use mlops_core::access::Policy;
    use mlops_core::audit::AuditLog as _;
    use mlops_core::feature::{
        FeatureDefinitions as _, OfflineFeatureStore as _, OnlineFeatureStore as _,
    };
    use mlops_store::{InMemoryOnlineStore, ObjectAuditLog, ObjectFeatureStore};
    let policy = Arc::new(
        Policy::parse(
            r#"
[roles.pipeline]
grants = [{ actions = ["write", "materialize"], resources = ["view:*"] }]
[roles.training]
grants = [{ actions = ["read"], resources = ["view:*_deid"] }]
[roles.serving]
grants = [{ actions = ["read"], resources = ["feature:*"] }]
[principals]
pipeline = ["pipeline"]
trainer = ["training"]
server = ["serving"]
"#,
            "toml",
            "healthcare policy",
        )
        .unwrap(),
    );
    let root = StoreRoot::open("memory://").unwrap();
    let online = Arc::new(InMemoryOnlineStore::new());
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let as_principal = |who: &str| {
        ObjectFeatureStore::new(&root, online.clone()).with_authorizer(
            policy.clone(),
            who,
            Some(audit.clone()),
        )
    };
    let (pipeline, trainer, server) = (
        as_principal("pipeline"),
        as_principal("trainer"),
        as_principal("server"),
    );
    let batch = |name: &str| {
        RecordBatch::try_from_iter([
            (
                "patient_id",
                Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(vec![10, 10]).with_timezone("UTC"))
                    as ArrayRef,
            ),
            (
                name,
                Arc::new(Float64Array::from(vec![0.5, 0.7])) as ArrayRef,
            ),
        ])
        .unwrap()
    };
    for (view, feature) in [("vitals", "heart_rate"), ("vitals_deid", "risk")] {
        let def = FeatureView::builder(view)
            .join_key("patient_id", DataType::Int64)
            .event_time("ts")
            .feature(feature, DataType::Float64)
            .build()
            .unwrap();
        pipeline
            .apply_view(def, ApplyOptions::default())
            .await
            .unwrap();
        pipeline.ingest(view, batch(feature)).await.unwrap();
        pipeline
            .materialize(
                view,
                chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                chrono::Utc::now(),
            )
            .await
            .unwrap();
    }
    let entities = RecordBatch::try_from_iter([
        (
            "patient_id",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![20]).with_timezone("UTC")) as ArrayRef,
        ),
    ])
    .unwrap();
    let refs = |r: &str| vec![r.parse::<FeatureRef>().unwrap()];
    // Training: the de-identified view, not the identifying one.
    let set = trainer
        .get_historical_features(
            entities.clone(),
            &refs("vitals_deid:risk"),
            HistoricalOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(set.num_rows(), 1);
    let denied = trainer
        .get_historical_features(
            entities.clone(),
            &refs("vitals:heart_rate"),
            HistoricalOptions::default(),
        )
        .await
        .unwrap_err();
    let text = denied.to_string();
    assert!(
        matches!(denied, Error::Forbidden { .. })
            && text.contains("trainer")
            && text.contains("read")
            && text.contains("view:vitals"),
        "{text}"
    );
    // Serving: online features yes, the offline store no.
    let keys = RecordBatch::try_from_iter([(
        "patient_id",
        Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )])
    .unwrap();
    server
        .get_online_features(keys, &refs("vitals:heart_rate"))
        .await
        .unwrap();
    assert!(matches!(
        server
            .get_historical_features(
                entities,
                &refs("vitals_deid:risk"),
                HistoricalOptions::default()
            )
            .await,
        Err(Error::Forbidden { .. })
    ));
    // Neither may write; a denied ingest writes nothing: the store's objects
    // are the same before and after.
    let objects = || async {
        use futures_util::TryStreamExt as _;
        root.store()
            .list(Some(&root.path("features")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len()
    };
    let before = objects().await;
    assert!(trainer.ingest("vitals", batch("heart_rate")).await.is_err());
    assert!(server.ingest("vitals", batch("heart_rate")).await.is_err());
    assert_eq!(objects().await, before, "a denied ingest wrote something");
    // Decisions are on record with their principal (online allows are not).
    let entries = audit.entries(1, 1000).await.unwrap();
    let has = |action: &str, actor: &str, target: &str| {
        entries
            .iter()
            .any(|e| e.event.action == action && e.event.actor == actor && e.event.target == target)
    };
    assert!(has("access.deny", "trainer", "view:vitals"));
    assert!(has("access.deny", "server", "view:vitals_deid"));
    assert!(has("access.allow", "trainer", "view:vitals_deid"));
    assert!(
        !entries
            .iter()
            .any(|e| e.event.actor == "server" && e.event.action == "access.allow")
    );
}
