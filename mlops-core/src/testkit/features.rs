//! The feature store's parts: [`FeatureDefinitions`], [`OfflineFeatureStore`]
//! (point-in-time correctness, atomic validated ingestion, materialization) and
//! [`OnlineFeatureStore`] (request order, statuses, TTL).

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::DataType;
use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::feature::{
    ApplyOptions, FeatureDefinitions, FeatureRef, FeatureStatus, FeatureStore, FeatureView,
    HistoricalOptions, OfflineFeatureStore, OnlineFeatureStore,
};

use super::expect_err;

const HOUR_US: i64 = 3_600_000_000;

fn view() -> FeatureView {
    FeatureView::builder("conformance_card")
        .join_key("card_id", DataType::Int64)
        .event_time("ts")
        .ttl(Duration::from_secs(4 * 3600))
        .feature("spend", DataType::Float64)
        .build()
        .expect("a valid view")
}

fn ts(values: Vec<i64>) -> Arc<TimestampMicrosecondArray> {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn rows(cards: Vec<i64>, times: Vec<i64>, spend: Vec<Option<f64>>) -> RecordBatch {
    RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(cards)) as _),
        ("ts", ts(times) as _),
        ("spend", Arc::new(Float64Array::from(spend)) as _),
    ])
    .expect("a batch of the view's columns")
}

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).expect("a valid time")
}

fn spend() -> Vec<FeatureRef> {
    vec!["conformance_card:spend".parse().expect("a feature ref")]
}

/// Runs the definitions contract on an empty `store`.
pub async fn definitions(store: &dyn FeatureDefinitions) {
    store
        .apply_view(view(), ApplyOptions::default())
        .await
        .expect("apply a view");
    store
        .apply_view(view(), ApplyOptions::default())
        .await
        .expect("applying the same view again is a no-op");
    assert_eq!(
        store.get_view("conformance_card").await.expect("get").name,
        "conformance_card"
    );
    let incompatible = FeatureView::builder("conformance_card")
        .join_key("card_id", DataType::Utf8)
        .event_time("ts")
        .feature("spend", DataType::Float64)
        .build()
        .expect("a valid view");
    expect_err(
        store
            .apply_view(incompatible, ApplyOptions::default())
            .await,
        "changing a view's join key type without force",
        |e| matches!(e, Error::Conflict { .. }),
    );
    assert_eq!(
        store.list_views().await.expect("list").len(),
        1,
        "a refused change leaves the view as it was"
    );
    expect_err(
        store.get_view("conformance_none").await,
        "an unknown view",
        |e| matches!(e, Error::NotFound { .. }),
    );
}

/// Runs the offline and online contracts on an empty `store` (its definitions
/// part is exercised on the way).
pub async fn offline_and_online(store: &dyn FeatureStore) {
    let defs: &dyn FeatureDefinitions = store;
    let offline: &dyn OfflineFeatureStore = store;
    let online: &dyn OnlineFeatureStore = store;
    // Five hours ago: the online TTL (4 h) is judged against the clock.
    let t0 = Utc::now().timestamp_micros() - 5 * HOUR_US;
    defs.apply_view(view(), ApplyOptions::default())
        .await
        .expect("apply a view");
    offline
        .ingest(
            "conformance_card",
            rows(
                vec![1, 1, 2],
                vec![t0 + HOUR_US, t0 + 3 * HOUR_US, t0 + 2 * HOUR_US],
                vec![Some(10.0), Some(30.0), Some(20.0)],
            ),
        )
        .await
        .expect("ingest");

    // Nothing of a bad batch is stored: a wrong type, a null key.
    let wrong_type = RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(vec![1])) as _),
        ("ts", ts(vec![t0]) as _),
        ("spend", Arc::new(Int64Array::from(vec![5])) as _),
    ])
    .expect("a batch");
    expect_err(
        offline.ingest("conformance_card", wrong_type).await,
        "a feature column of the wrong type",
        |e| matches!(e, Error::SchemaMismatch { .. }),
    );
    let null_key = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(vec![None, Some(1)])) as _,
        ),
        ("ts", ts(vec![t0, t0]) as _),
        ("spend", Arc::new(Float64Array::from(vec![1.0, 2.0])) as _),
    ])
    .expect("a batch");
    expect_err(
        offline.ingest("conformance_card", null_key).await,
        "a null join key",
        |e| matches!(e, Error::InvalidInput { .. }),
    );
    expect_err(
        offline
            .ingest("conformance_none", rows(vec![1], vec![t0], vec![None]))
            .await,
        "ingesting into an unknown view",
        |e| matches!(e, Error::NotFound { .. }),
    );

    // Point in time: each entity row gets the latest value known at its time,
    // within the TTL, in input order.
    let entity_rows = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(vec![1, 1, 2, 1, 3])) as _,
        ),
        (
            "event_timestamp",
            ts(vec![
                t0 + 2 * HOUR_US, // card 1: 10 (at +1h)
                t0 + 4 * HOUR_US, // card 1: 30 (at +3h)
                t0 + HOUR_US,     // card 2: nothing yet (its row is at +2h)
                t0,               // card 1: nothing yet
                t0 + 4 * HOUR_US, // card 3: unknown
            ]) as _,
        ),
    ])
    .expect("entity rows");
    let joined = offline
        .get_historical_features(entity_rows, &spend(), HistoricalOptions::default())
        .await
        .expect("historical features");
    assert_eq!(joined.num_rows(), 5, "one output row per entity row");
    let col = joined
        .column_by_name("spend")
        .expect("the feature column")
        .as_primitive::<Float64Type>();
    let got: Vec<Option<f64>> = (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect();
    assert_eq!(
        got,
        vec![Some(10.0), Some(30.0), None, None, None],
        "never a value from after the row's time, in input order"
    );
    let late = RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(vec![2])) as _),
        ("event_timestamp", ts(vec![t0 + 7 * HOUR_US]) as _),
    ])
    .expect("entity rows");
    let joined = offline
        .get_historical_features(late, &spend(), HistoricalOptions::default())
        .await
        .expect("historical features");
    assert!(
        joined.column_by_name("spend").expect("column").is_null(0),
        "a value older than the TTL (5 h > 4 h) is not joined"
    );

    // Online: latest value per entity, statuses, request order, TTL at read time.
    offline
        .materialize("conformance_card", at(t0), at(t0 + 4 * HOUR_US))
        .await
        .expect("materialize");
    offline
        .materialize("conformance_card", at(t0), at(t0 + 4 * HOUR_US))
        .await
        .expect("materializing again is idempotent");
    let keys =
        RecordBatch::try_from_iter([("card_id", Arc::new(Int64Array::from(vec![2, 9, 1])) as _)])
            .expect("keys");
    let answer = online
        .get_online_features(keys, &spend())
        .await
        .expect("online features");
    assert_eq!(answer.batch.num_rows(), 3, "one row per requested key");
    assert_eq!(answer.columns.len(), 1);
    let statuses = &answer.columns[0].statuses;
    assert_eq!(
        statuses[1],
        FeatureStatus::NotFound,
        "an unknown key is NotFound"
    );
    let values = answer
        .batch
        .column_by_name(&answer.columns[0].column)
        .expect("the feature column")
        .as_primitive::<Float64Type>();
    assert_eq!(
        (statuses[0], statuses[2]),
        (FeatureStatus::Present, FeatureStatus::Present),
        "known keys within the TTL are present"
    );
    assert_eq!(
        (values.value(0), values.value(2)),
        (20.0, 30.0),
        "the latest value of each key, in request order"
    );
    expect_err(
        online
            .get_online_features(
                RecordBatch::try_from_iter([("card_id", Arc::new(Int64Array::from(vec![1])) as _)])
                    .expect("keys"),
                &["conformance_none:spend".parse().expect("a ref")],
            )
            .await,
        "an unknown view online",
        |e| matches!(e, Error::NotFound { .. }),
    );
}
