//! The offline feature store: feature views as Parquet on object storage, with
//! point-in-time correct retrieval for training sets.
//!
//! Layout under the root:
//!
//! ```text
//! features/registry.json (or registry/<seq>.json on local disk)   entities and views
//! features/views/<view>/data/event_date=<YYYY-MM-DD>/<id>.parquet  the rows (Hive-style)
//! features/views/<view>/commits/<seq>.json                         which files are visible
//! features/views/<view>/commits/HEAD                               hint: the last commit
//! features/views/<view>/checkpoints/<seq>.json                     commits 1..=seq, every 64th
//! ```
//!
//! Data files are plain Parquet with the view's columns (timestamps as microsecond
//! UTC), sorted by event time, one file per event date per ingestion, so DuckDB,
//! polars or Spark read them directly. A file becomes visible only when a commit
//! naming it is created (create-if-absent, numbered): a crash before that leaves an
//! unreferenced file that no query sees.

mod definitions;
mod ingest;
mod join;
mod log;
mod pit;
mod reader;
pub(crate) use reader::ObjectReader;
mod scan;

pub use definitions::view_incompatibility;
use ingest::Commit;
pub(crate) use ingest::write_parquet;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, TimeUnit};

use crate::root::StoreRoot;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The offline half of the feature store. See the module docs for the layout.
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use std::sync::Arc;
/// use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
/// use arrow::datatypes::DataType;
/// use mlops_core::feature::{ApplyOptions, FeatureView, HistoricalOptions};
/// use mlops_store::{ObjectOfflineStore, StoreRoot};
///
/// let store = ObjectOfflineStore::new(&StoreRoot::open("memory://")?);
/// let view = FeatureView::builder("card").join_key("card_id", DataType::Int64)
///     .event_time("ts").feature("spend", DataType::Float64).build()?;
/// store.apply_view(view, ApplyOptions::default()).await?;
/// let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"));
/// store.ingest("card", RecordBatch::try_from_iter([
///     ("card_id", Arc::new(Int64Array::from(vec![1, 1])) as _),
///     ("ts", ts(vec![10, 20]) as _),
///     ("spend", Arc::new(Float64Array::from(vec![5.0, 7.0])) as _),
/// ]).unwrap()).await?;
/// let entities = RecordBatch::try_from_iter([
///     ("card_id", Arc::new(Int64Array::from(vec![1, 1, 1])) as _),
///     ("event_timestamp", ts(vec![5, 15, 25]) as _),
/// ]).unwrap();
/// let out = store.get_historical_features(entities, &["card:spend".parse()?], HistoricalOptions::default()).await?;
/// let spend = out.column_by_name("spend").unwrap();
/// assert!(spend.is_null(0));                       // nothing known at t=5
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectOfflineStore {
    root: StoreRoot,
    /// Commits read so far, by view (they never change).
    commits: Arc<Mutex<HashMap<String, BTreeMap<u64, Commit>>>>,
}

impl ObjectOfflineStore {
    /// The offline store under `root`.
    pub fn new(root: &StoreRoot) -> Self {
        Self {
            root: root.clone(),
            commits: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}
