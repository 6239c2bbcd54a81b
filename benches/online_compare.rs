//! Online lookup latency: one entity and 100 entities, 5 features from 2 views,
//! against the in-memory store and (when `MLOPS_BENCH_REDIS_URL` is set) Redis.
//! Prints one JSON line per case with p50 and p99 in microseconds.
//!
//! ```text
//! python3 benches/online_vs_redis.py            # with redis-benchmark as the floor
//! cargo bench --features redis --bench online_compare   # in-memory only
//! MLOPS_ONLINE_PROFILE=1 cargo bench --features redis --bench online_compare
//! ```
//!
//! With Redis it also times the `redis` crate alone, with no mlops code: the same
//! pipelined `HMGET`s of as many stored keys (per view, one command per entity)
//! through the same kind of connection, printed as store `redis-crate`.
//!
//! `MLOPS_ONLINE_PROFILE=N` adds the latency of the in-memory store's own read of
//! one view (N keys, 100 when N is not a number; 3 features), without the
//! feature store around it.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::DataType;
use chrono::Utc;
use mlops::core::feature::{
    ApplyOptions, FeatureDefinitions, FeatureRef, FeatureView, OfflineFeatureStore,
    OnlineFeatureStore,
};
use mlops::store::{InMemoryOnlineStore, ObjectFeatureStore, OnlineStore, StoreRoot};

// As in the serving bench, the bench runs on mimalloc, as a latency-minded Rust
// service would: on glibc's allocator the 100-entity p99 here was about 170 µs
// against about 60 µs (p50 23 against 21 µs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENTITIES: i64 = 100_000;
const ITERATIONS: usize = 20_000;

fn view(name: &str, features: &[&str]) -> FeatureView {
    let mut b = FeatureView::builder(name)
        .join_key("card_id", DataType::Int64)
        .event_time("ts");
    for f in features {
        b = b.feature(*f, DataType::Float64);
    }
    b.build().unwrap_or_else(|e| panic!("{e}"))
}

fn rows(features: &[&str], now_us: i64) -> RecordBatch {
    let mut cols: Vec<(String, ArrayRef)> = vec![
        (
            "card_id".into(),
            Arc::new(Int64Array::from_iter_values(0..ENTITIES)),
        ),
        (
            "ts".into(),
            Arc::new(
                TimestampMicrosecondArray::from(vec![now_us; ENTITIES as usize])
                    .with_timezone("UTC"),
            ),
        ),
    ];
    for (j, f) in features.iter().enumerate() {
        cols.push((
            (*f).into(),
            Arc::new(Float64Array::from_iter_values(
                (0..ENTITIES).map(|i| (i * 7 + j as i64) as f64),
            )),
        ));
    }
    RecordBatch::try_from_iter(cols).unwrap_or_else(|e| panic!("{e}"))
}

/// Lookup `i` of `n` card ids, spread over the entities.
fn request(i: usize, n: i64) -> RecordBatch {
    let keys: Vec<i64> = (0..n)
        .map(|k| (i as i64 * 7919 + k * 104_729) % ENTITIES)
        .collect();
    RecordBatch::try_from_iter([("card_id", Arc::new(Int64Array::from(keys)) as ArrayRef)])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints one case's percentiles as a JSON line.
fn report(store: &str, entities: usize, mut lat: Vec<f64>) {
    lat.sort_by(f64::total_cmp);
    println!(
        "{{\"store\": \"{store}\", \"entities\": {entities}, \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}}}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999)
    );
}

async fn measure(name: &str, store: &ObjectFeatureStore, refs: &[FeatureRef]) {
    for batch in [1usize, 100] {
        let mut lat = Vec::with_capacity(ITERATIONS);
        for i in 0..ITERATIONS + 1000 {
            let req = request(i, batch as i64);
            let start = Instant::now();
            let out = store
                .get_online_features(req, refs)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let t = start.elapsed().as_secs_f64() * 1e6;
            assert_eq!(out.batch.num_rows(), batch);
            if i >= 1000 {
                lat.push(t); // the first 1000 warm up
            }
        }
        report(name, batch, lat);
    }
}

async fn setup(online: Arc<dyn OnlineStore>) -> ObjectFeatureStore {
    let store = ObjectFeatureStore::new(
        &StoreRoot::open("memory://").unwrap_or_else(|e| panic!("{e}")),
        online,
    );
    let now = Utc::now();
    for (name, features) in [
        ("card", &["f0", "f1", "f2"][..]),
        ("merchant", &["g0", "g1"][..]),
    ] {
        store
            .apply_view(view(name, features), ApplyOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .ingest(name, rows(features, now.timestamp_micros()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .materialize(
                name,
                now - chrono::TimeDelta::hours(1),
                now + chrono::TimeDelta::hours(1),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    store
}

/// The stored keys of `view` (the store's layout: `bench:<view>:...`).
async fn stored_keys(con: &mut redis::aio::ConnectionManager, view: &str) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("bench:{view}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(keys.len() as i64, ENTITIES, "view {view}");
    keys
}

/// The `redis` crate's own cost for the reads a lookup makes: one pipeline per view
/// of `HMGET key e c v` for each entity, both views at once, replies converted to
/// the same Rust types the store reads, nothing else. Entities are spread over
/// the stored keys as in the store's lookups.
async fn redis_crate_alone(url: &str) {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{e}"));
    let mut con = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    type Reply = Vec<(Option<i64>, Option<i64>, Option<Vec<u8>>)>;
    let card = stored_keys(&mut con, "card").await;
    let merchant = stored_keys(&mut con, "merchant").await;
    for batch in [1usize, 100] {
        let mut lat = Vec::with_capacity(ITERATIONS);
        for i in 0..ITERATIONS + 1000 {
            let picks: Vec<usize> = (0..batch)
                .map(|k| (i * 7919 + k * 104_729) % card.len())
                .collect();
            let start = Instant::now();
            let reads = [&card, &merchant].map(|keys| {
                let mut pipe = redis::pipe();
                for &k in &picks {
                    pipe.cmd("HMGET").arg(&keys[k]).arg("e").arg("c").arg("v");
                }
                let mut con = con.clone();
                async move { pipe.query_async::<Reply>(&mut con).await }
            });
            let [a, b] = reads;
            let (a, b) = tokio::join!(a, b);
            let t = start.elapsed().as_secs_f64() * 1e6;
            let (a, b) = (
                a.unwrap_or_else(|e| panic!("{e}")),
                b.unwrap_or_else(|e| panic!("{e}")),
            );
            assert!(a.iter().chain(&b).all(|r| r.2.is_some()));
            if i >= 1000 {
                lat.push(t);
            }
        }
        report("redis-crate", batch, lat);
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let refs: Vec<FeatureRef> = [
            "card:f0",
            "card:f1",
            "card:f2",
            "merchant:g0",
            "merchant:g1",
        ]
        .iter()
        .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
        let online = Arc::new(InMemoryOnlineStore::new());
        let memory = setup(online.clone()).await;
        measure("memory", &memory, &refs).await;
        if let Ok(profile) = std::env::var("MLOPS_ONLINE_PROFILE") {
            // The number of keys per read (100 when not a number).
            let profile_keys: i64 = profile.parse().unwrap_or(100);
            let card = memory
                .get_view("card")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let wanted = vec!["f0".to_owned(), "f1".into(), "f2".into()];
            let mut lat = Vec::new();
            for i in 0..ITERATIONS {
                let req = request(i, profile_keys);
                let start = Instant::now();
                let out = online
                    .read(&card, &req, &wanted)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                lat.push(start.elapsed().as_secs_f64() * 1e6);
                assert_eq!(out.rows.len(), req.num_rows());
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "read one view, {profile_keys} keys: p50 {:.1} p99 {:.1}",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
        }
        if let Ok(url) = std::env::var("MLOPS_BENCH_REDIS_URL") {
            let redis = mlops::store::RedisOnlineStore::connect(&url, "bench")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let store = setup(Arc::new(redis)).await;
            measure("redis", &store, &refs).await;
            redis_crate_alone(&url).await;
        }
    });
}
