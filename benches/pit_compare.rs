//! The Rust half of `benches/pit_vs_duckdb.py`: ingests the generated feature data
//! into an offline store once (not timed), then times point-in-time retrieval for
//! the generated entity rows and prints one JSON line with the time, a checksum of
//! the result and the process's peak memory.
//!
//! ```text
//! python3 benches/pit_vs_duckdb.py                     # all engines, one run
//! cargo bench --bench pit_compare -- DATA_DIR          # this side alone
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Float64Type};
use mlops::core::feature::{ApplyOptions, FeatureRef, FeatureView, HistoricalOptions};
use mlops::store::{ObjectOfflineStore, StoreRoot};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn read_parquet(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(1 << 20).build())
        .unwrap_or_else(|e| panic!("{e}"));
    let batches: Vec<RecordBatch> = reader
        .map(|b| b.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let schema = batches[0].schema();
    concat_batches(&schema, &batches).unwrap_or_else(|e| panic!("{e}"))
}

/// Peak resident memory of this process, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let dir: PathBuf = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!(
                "usage: cargo bench --bench pit_compare -- DATA_DIR (see benches/pit_vs_duckdb.py)"
            );
            std::process::exit(2);
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let root = StoreRoot::open(&format!("file://{}", dir.join("store").display()))
            .unwrap_or_else(|e| panic!("{e}"));
        let store = ObjectOfflineStore::new(&root);
        let features: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        if store.get_view("card").await.is_err() {
            let mut b = FeatureView::builder("card")
                .join_key("card_id", DataType::Int64)
                .event_time("event_ts")
                .ttl(Duration::from_secs(86_400));
            for f in &features {
                b = b.feature(f, DataType::Float64);
            }
            store
                .apply_view(b.build().unwrap_or_else(|e| panic!("{e}")), ApplyOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let data = read_parquet(&dir.join("features.parquet"));
            let start = Instant::now();
            let step = 2_000_000;
            let mut offset = 0;
            while offset < data.num_rows() {
                let len = step.min(data.num_rows() - offset);
                store.ingest("card", data.slice(offset, len)).await.unwrap_or_else(|e| panic!("{e}"));
                offset += len;
            }
            eprintln!("ingested {} rows in {:.1} s", data.num_rows(), start.elapsed().as_secs_f64());
        }
        let entities = read_parquet(&dir.join("entities.parquet"));
        let refs: Vec<FeatureRef> = features
            .iter()
            .map(|f| FeatureRef::new("card", f).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let before = peak_rss_mib();
        let mut best = f64::INFINITY;
        let mut out = None;
        let mut first_peak = 0.0;
        for run in 0..3 {
            let start = Instant::now();
            let r = store
                .get_historical_features(entities.clone(), &refs, HistoricalOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            best = best.min(start.elapsed().as_secs_f64());
            if run == 0 {
                // Peak of one join: later runs add the allocator's retained pages.
                first_peak = peak_rss_mib();
            }
            out = Some(r);
        }
        let out = out.unwrap_or_else(|| panic!("no result"));
        let (mut sum, mut count) = (0.0f64, 0usize);
        for f in &features {
            let col = out.column_by_name(f).unwrap_or_else(|| panic!("{f}"));
            count += col.len() - col.null_count();
            sum += col.as_primitive::<Float64Type>().iter().flatten().sum::<f64>();
        }
        println!(
            "{{\"engine\": \"mlops\", \"seconds\": {best:.4}, \"non_null\": {count}, \"sum\": {sum:.6}, \"peak_mib\": {first_peak:.0}, \"peak_all_runs_mib\": {:.0}, \"peak_before_join_mib\": {before:.0}}}",
            peak_rss_mib()
        );
    });
}
