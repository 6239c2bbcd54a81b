//! The feature store on its own: define a view, ingest history, build a training
//! set point-in-time, materialize the latest values and look them up online.
//!
//! ```text
//! cargo run --example feature_store
//! ```

use std::sync::Arc;
use std::time::Duration;

use mlops::arrow::array::{Float64Array, Int64Array, TimestampMicrosecondArray};
use mlops::arrow::{RecordBatch, schema::DataType};
use mlops::core::feature::{ApplyOptions, FeatureStatus};
use mlops::prelude::*;
use mlops::store::{InMemoryOnlineStore, ObjectFeatureStore};

const HOUR_US: i64 = 3_600_000_000;

fn ts(values: Vec<i64>) -> Arc<TimestampMicrosecondArray> {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = StoreRoot::open("memory://")?;
    let store = ObjectFeatureStore::new(&root, Arc::new(InMemoryOnlineStore::new()));
    let view = FeatureView::builder("card")
        .join_key("card_id", DataType::Int64)
        .event_time("event_ts")
        .ttl(Duration::from_secs(24 * 3600))
        .feature("spend_7d", DataType::Float64)
        .build()?;
    store.apply_view(view, ApplyOptions::default()).await?;

    // Each card's 7-day spend, recorded every hour for the last six hours.
    let now = mlops::chrono::Utc::now().timestamp_micros();
    let (mut cards, mut times, mut spend) = (Vec::new(), Vec::new(), Vec::new());
    for hour in 0..6 {
        for card in 1..=3i64 {
            cards.push(card);
            times.push(now - (6 - hour) * HOUR_US);
            spend.push((card * 100 + hour) as f64);
        }
    }
    let rows = RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(cards)) as _),
        ("event_ts", ts(times) as _),
        ("spend_7d", Arc::new(Float64Array::from(spend)) as _),
    ])
    .map_err(|e| Error::backend("arrow", e))?;
    let receipt = store.ingest("card", rows).await?;
    println!(
        "ingested {} rows into {} files",
        receipt.rows,
        receipt.files.len()
    );

    // A training set: each labelled event gets the value known at its time.
    let features: Vec<FeatureRef> = vec!["card:spend_7d".parse()?];
    let events = RecordBatch::try_from_iter([
        ("card_id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
        (
            "event_timestamp",
            ts(vec![
                now - 5 * HOUR_US,
                now - 3 * HOUR_US,
                now - 10 * HOUR_US,
            ]) as _,
        ),
    ])
    .map_err(|e| Error::backend("arrow", e))?;
    let training = store
        .get_historical_features(events, &features, HistoricalOptions::default())
        .await?;
    let joined = training
        .column_by_name("spend_7d")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .ok_or_else(|| Error::backend("example", "no spend_7d column"))?;
    println!(
        "point-in-time values: {:?} (card 3's event is older than its first row)",
        joined.iter().collect::<Vec<_>>()
    );

    // Online: the latest value per card, with a status per value.
    let report = store
        .materialize_incremental("card", mlops::chrono::Utc::now())
        .await?;
    println!("materialized {} entities", report.entities_written);
    let keys =
        RecordBatch::try_from_iter([("card_id", Arc::new(Int64Array::from(vec![2, 9])) as _)])
            .map_err(|e| Error::backend("arrow", e))?;
    let online = store.get_online_features(keys, &features).await?;
    let statuses = &online.columns[0].statuses;
    assert_eq!(statuses[1], FeatureStatus::NotFound);
    println!("online statuses for cards 2 and 9: {statuses:?}");
    Ok(())
}
