//! The offline feature store: feature views as Parquet on object storage, with
//! point-in-time correct retrieval for training sets.
//!
//! Layout under the root:
//!
//! ```text
//! features/registry.json (or registry/<seq>.json on local disk)   entities and views
//! features/views/<view>/data/event_date=<YYYY-MM-DD>/<id>.parquet  the rows (Hive-style)
//! features/views/<view>/commits/<seq>.json                         which files are visible
//! ```
//!
//! Data files are plain Parquet with the view's columns (timestamps as microsecond
//! UTC), sorted by event time, one file per event date per ingestion, so DuckDB,
//! polars or Spark read them directly. A file becomes visible only when a commit
//! naming it is created (create-if-absent, numbered): a crash before that leaves an
//! unreferenced file that no query sees.

mod pit;
mod reader;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array, new_null_array,
};
use arrow::compute::{cast, concat, concat_batches, interleave, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use mlops_core::feature::{
    ApplyOptions, Entity, FeatureRef, FeatureView, HistoricalOptions, IngestReceipt,
};
use mlops_core::{Error, ResourceKind, Result, validate_name};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::cas::CasCell;
use crate::root::StoreRoot;

/// Definitions of entities and views.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Definitions {
    entities: BTreeMap<String, Entity>,
    views: BTreeMap<String, FeatureView>,
    /// Per view, the event time (µs) up to which it was materialized online.
    #[serde(default)]
    watermarks: BTreeMap<String, i64>,
}

/// One data file as a commit records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DataFile {
    /// Path relative to the root.
    path: String,
    rows: u64,
    /// Smallest and largest event time in the file, microseconds.
    min_event_us: i64,
    max_event_us: i64,
    /// The file's size in bytes (absent in commits written before it was
    /// recorded), so readers fetch its footer with a bounded range request.
    #[serde(default)]
    size: Option<u64>,
}

/// A commit: the files one ingestion made visible.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Commit {
    files: Vec<DataFile>,
    created_at: DateTime<Utc>,
}

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

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

    fn definitions(&self) -> CasCell {
        CasCell::new(&self.root, "features/registry")
    }

    async fn read_definitions(&self) -> Result<Definitions> {
        Ok(self
            .definitions()
            .read::<Definitions>()
            .await?
            .0
            .unwrap_or_default())
    }

    /// Registers or updates an entity.
    pub async fn apply_entity(&self, entity: Entity) -> Result<()> {
        entity.validate()?;
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                d.entities.insert(entity.name.clone(), entity.clone());
                Ok((d, ()))
            })
            .await
    }

    /// Registers or updates a view. A change that would not fit the data already
    /// stored (a join key, time column or feature type changed, a feature removed)
    /// is refused with [`Error::Conflict`] unless `options.force`.
    pub async fn apply_view(&self, view: FeatureView, options: ApplyOptions) -> Result<()> {
        view.validate()?;
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                for key in &view.join_keys {
                    if let Some(e) = d.entities.values().find(|e| e.join_key.name == key.name)
                        && e.join_key.data_type != key.data_type
                    {
                        return Err(Error::schema_mismatch(
                            format!("feature view {}", view.name),
                            &key.name,
                            format!("{} (as entity {} declares)", e.join_key.data_type, e.name),
                            key.data_type.to_string(),
                        ));
                    }
                }
                if let Some(old) = d.views.get(&view.name)
                    && !options.force
                {
                    incompatibility(old, &view).map_or(Ok(()), |reason| {
                        Err(Error::conflict(
                            format!("feature view {}", view.name),
                            format!("{reason}; this does not fit the data already stored (apply with force to replace it)"),
                        ))
                    })?;
                }
                d.views.insert(view.name.clone(), view.clone());
                Ok((d, ()))
            })
            .await
    }

    /// The view named `name`.
    pub async fn get_view(&self, name: &str) -> Result<FeatureView> {
        validate_name(ResourceKind::FeatureView, name)?;
        self.read_definitions()
            .await?
            .views
            .remove(name)
            .ok_or_else(|| Error::not_found(ResourceKind::FeatureView, name))
    }

    /// All views, by name.
    pub async fn list_views(&self) -> Result<Vec<FeatureView>> {
        Ok(self.read_definitions().await?.views.into_values().collect())
    }

    /// All entities, by name.
    pub async fn list_entities(&self) -> Result<Vec<Entity>> {
        Ok(self
            .read_definitions()
            .await?
            .entities
            .into_values()
            .collect())
    }

    /// Appends `batch` to view `view`: validated as a whole first, written as one
    /// Parquet file per event date, and made visible by one commit, so readers see
    /// all of it or none of it.
    pub async fn ingest(&self, view: &str, batch: RecordBatch) -> Result<IngestReceipt> {
        let def = self.get_view(view).await?;
        let batch = conform(&def, &batch)?;
        let event = batch
            .column_by_name(&def.event_time_column)
            .map(|c| {
                c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .clone()
            })
            .ok_or_else(|| {
                Error::schema_mismatch(
                    format!("ingest into view {view}"),
                    &def.event_time_column,
                    "a timestamp",
                    "no such column",
                )
            })?;
        // Rows per event date.
        let mut by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, t) in event.values().iter().enumerate() {
            by_day
                .entry(t.div_euclid(86_400_000_000))
                .or_default()
                .push(i as u32);
        }
        let id = file_id();
        let mut files = Vec::with_capacity(by_day.len());
        for (day, rows) in by_day {
            let part = take_record_batch(&batch, &UInt32Array::from(rows))
                .map_err(|e| Error::backend("arrow", e))?;
            let part = sort_by(&part, &def.event_time_column)?;
            let times = part
                .column_by_name(&def.event_time_column)
                .map(|c| {
                    c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values()
                        .to_vec()
                })
                .unwrap_or_default();
            let date: NaiveDate = DateTime::from_timestamp(day.saturating_mul(86_400), 0)
                .map(|d| d.date_naive())
                .ok_or_else(|| {
                    Error::invalid_input(
                        format!("ingest into view {view}"),
                        "an event time is out of range",
                    )
                })?;
            let path = format!(
                "features/views/{view}/data/event_date={}/{id}.parquet",
                date.format("%Y-%m-%d")
            );
            let bytes = write_parquet(&part)?;
            let size = bytes.len() as u64;
            self.root.put_if_absent(&path, bytes.into()).await?;
            files.push(DataFile {
                path,
                rows: part.num_rows() as u64,
                min_event_us: times.first().copied().unwrap_or_default(),
                max_event_us: times.last().copied().unwrap_or_default(),
                size: Some(size),
            });
        }
        let commit = Commit {
            files: files.clone(),
            created_at: Utc::now(),
        };
        let body = serde_json::to_vec_pretty(&commit)
            .map_err(|e| Error::invalid_input("commit", e.to_string()))?;
        let dir = format!("features/views/{view}/commits");
        loop {
            let next = self
                .root
                .list_numbered(&dir, ".json")
                .await?
                .last()
                .copied()
                .unwrap_or(0)
                + 1;
            if self
                .root
                .put_if_absent(&format!("{dir}/{next:020}.json"), body.clone().into())
                .await?
            {
                break;
            }
        }
        Ok(IngestReceipt {
            view: view.to_owned(),
            rows: batch.num_rows(),
            files: files.into_iter().map(|f| f.path).collect(),
        })
    }

    /// Every commit of `view`, in order (read once, then cached).
    async fn commits(&self, view: &str) -> Result<Vec<Commit>> {
        let dir = format!("features/views/{view}/commits");
        let numbers = self.root.list_numbered(&dir, ".json").await?;
        let known: Vec<u64> = {
            let cache = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(view)
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default()
        };
        for n in numbers.iter().filter(|n| !known.contains(n)) {
            let relative = format!("{dir}/{n:020}.json");
            let bytes = self.root.get(&relative).await?;
            let commit: Commit = serde_json::from_slice(&bytes).map_err(|e| {
                Error::integrity(
                    self.root.describe(&self.root.path(&relative)),
                    format!("not a valid commit: {e}"),
                )
            })?;
            self.commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(view.to_owned())
                .or_default()
                .insert(*n, commit);
        }
        let cache = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cache
            .get(view)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    /// The materialization watermark of `view` (µs), if it was ever materialized
    /// incrementally.
    pub(crate) async fn watermark(&self, view: &str) -> Result<Option<i64>> {
        Ok(self.read_definitions().await?.watermarks.get(view).copied())
    }

    /// Moves the watermark of `view` forward to `to_us` (never back).
    pub(crate) async fn advance_watermark(&self, view: &str, to_us: i64) -> Result<()> {
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                let w = d.watermarks.entry(view.to_owned()).or_insert(to_us);
                *w = (*w).max(to_us);
                Ok((d, ()))
            })
            .await
    }

    /// Per entity key, the latest row (event time, then created time, then commit
    /// order) with event time in `[start_us, end_us)`: what materialization loads.
    pub(crate) async fn latest_rows(
        &self,
        view: &FeatureView,
        start_us: i64,
        end_us: i64,
    ) -> Result<RecordBatch> {
        let schema = view.schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let (schema, batches) = self
            .scan(view, &columns, start_us, end_us.saturating_sub(1))
            .await?;
        let all = concat_batches(&schema, &batches).map_err(|e| Error::backend("arrow", e))?;
        let micros = |name: &str| -> Vec<i64> {
            all.column_by_name(name)
                .map(|c| {
                    c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values()
                        .to_vec()
                })
                .unwrap_or_default()
        };
        let event = micros(&view.event_time_column);
        let created = view.created_time_column.as_deref().map(micros);
        let keys: Vec<ArrayRef> = view
            .join_keys
            .iter()
            .filter_map(|k| all.column_by_name(&k.name).cloned())
            .collect();
        let converter = arrow::row::RowConverter::new(
            keys.iter()
                .map(|k| arrow::row::SortField::new(k.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::backend("arrow", e))?;
        let rows = converter
            .convert_columns(&keys)
            .map_err(|e| Error::backend("arrow", e))?;
        let order = |i: usize| (event[i], created.as_ref().map_or(0, |c| c[i]), i);
        let mut best: HashMap<&[u8], usize> = HashMap::new();
        for (i, &t) in event.iter().enumerate() {
            if t < start_us || t >= end_us {
                continue;
            }
            let slot = best.entry(rows.row(i).data()).or_insert(i);
            if order(i) > order(*slot) {
                *slot = i;
            }
        }
        let mut picks: Vec<u32> = best.into_values().map(|i| i as u32).collect();
        picks.sort_unstable();
        take_record_batch(&all, &UInt32Array::from(picks)).map_err(|e| Error::backend("arrow", e))
    }

    /// The view's rows with event time in `[min_us, max_us]` (files outside are not
    /// read), only `columns`, in commit order; columns a file lacks (features added
    /// later) come back as nulls.
    async fn scan(
        &self,
        view: &FeatureView,
        columns: &[String],
        min_us: i64,
        max_us: i64,
    ) -> Result<(Arc<Schema>, Vec<RecordBatch>)> {
        let full = view.schema();
        let fields: Vec<Field> = columns
            .iter()
            .filter_map(|c| full.field_with_name(c).ok().cloned())
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let files: Vec<DataFile> = self
            .commits(&view.name)
            .await?
            .into_iter()
            .flat_map(|c| c.files)
            .filter(|f| f.max_event_us >= min_us && f.min_event_us <= max_us)
            .collect();
        // Each file is fetched and decoded in its own task, so decoding uses every
        // core of a multi-threaded runtime; results keep commit order.
        // Owned arguments, so the stream below borrows nothing (its future must be
        // Send for callers behind async traits).
        type Job = (
            Arc<dyn object_store::ObjectStore>,
            object_store::path::Path,
            Option<u64>,
            String,
        );
        let jobs: Vec<Job> = files
            .iter()
            .map(|f| {
                let path = self.root.path(&f.path);
                let describe = self.root.describe(&path);
                (self.root.store().clone(), path, f.size, describe)
            })
            .collect();
        // At most 8 files in flight, results kept in commit order.
        let mut jobs = jobs.into_iter();
        let mut running = std::collections::VecDeque::new();
        let mut per_file: Vec<Vec<RecordBatch>> = Vec::new();
        loop {
            while running.len() < 8 {
                let Some((store, path, size, describe)) = jobs.next() else {
                    break;
                };
                let columns = columns.to_vec();
                let event = view.event_time_column.clone();
                running.push_back(tokio::spawn(async move {
                    let range = reader::TimeRange {
                        column: &event,
                        min_us,
                        max_us,
                    };
                    reader::read_columns(store, path, size, &columns, range, &describe).await
                }));
            }
            let Some(handle) = running.pop_front() else {
                break;
            };
            per_file.push(handle.await.map_err(|e| Error::backend("tokio", e))??);
        }
        let mut batches = Vec::new();
        for b in per_file.into_iter().flatten() {
            batches.push(align(&b, &schema)?);
        }
        Ok((schema, batches))
    }

    /// Point-in-time correct join of `entity_df` with `features` (see
    /// [`HistoricalOptions`]): one output row per input row, in input order, with
    /// the input's columns followed by the features in the order requested.
    pub async fn get_historical_features(
        &self,
        entity_df: RecordBatch,
        features: &[FeatureRef],
        options: HistoricalOptions,
    ) -> Result<RecordBatch> {
        if features.is_empty() {
            return Err(Error::invalid_input("feature references", "none given"));
        }
        let ts_col = entity_df
            .column_by_name(&options.event_timestamp_column)
            .ok_or_else(|| {
                Error::schema_mismatch(
                    "entity dataframe",
                    &options.event_timestamp_column,
                    "a timestamp column (HistoricalOptions::event_timestamp_column)",
                    "no such column",
                )
            })?;
        let entity_ts = to_micros("entity dataframe", &options.event_timestamp_column, ts_col)?;
        if entity_ts.null_count() > 0 {
            return Err(Error::invalid_input(
                format!(
                    "entity dataframe column '{}'",
                    options.event_timestamp_column
                ),
                format!("{} rows have a null timestamp", entity_ts.null_count()),
            ));
        }
        let entity_ts = entity_ts.values().to_vec();
        let defs = self.read_definitions().await?;

        // Group the references by view, keeping the requested order for the output.
        let mut by_view: BTreeMap<&str, Vec<&FeatureRef>> = BTreeMap::new();
        for r in features {
            let view = defs
                .views
                .get(r.view())
                .ok_or_else(|| Error::not_found(ResourceKind::FeatureView, r.view()))?;
            if view.feature(r.feature()).is_none() {
                return Err(Error::not_found(ResourceKind::Feature, r.to_string()));
            }
            by_view.entry(r.view()).or_default().push(r);
        }
        let mut names: HashMap<String, String> = entity_df
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), "the entity dataframe".to_owned()))
            .collect();
        for r in features {
            let name = r.column_name(options.full_feature_names);
            if let Some(other) = names.insert(name.clone(), r.to_string()) {
                return Err(Error::invalid_input(
                    format!("output column '{name}'"),
                    format!(
                        "both {other} and {r} would produce it; set full_feature_names or rename"
                    ),
                ));
            }
        }

        let (min_t, max_t) = entity_ts
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        let mut columns: HashMap<String, ArrayRef> = HashMap::new();
        for (view_name, refs) in by_view {
            let view = &defs.views[view_name];
            let mut keys = Vec::with_capacity(view.join_keys.len());
            for k in &view.join_keys {
                let col = entity_df.column_by_name(&k.name).ok_or_else(|| {
                    Error::schema_mismatch(
                        "entity dataframe",
                        &k.name,
                        format!("join key of view {view_name} ({})", k.data_type),
                        "no such column",
                    )
                })?;
                if col.data_type() != &k.data_type {
                    return Err(Error::schema_mismatch(
                        "entity dataframe",
                        &k.name,
                        k.data_type.to_string(),
                        col.data_type().to_string(),
                    ));
                }
                keys.push(col.clone());
            }
            let ttl_us = view
                .ttl
                .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            let mut wanted: Vec<String> = view.join_keys.iter().map(|k| k.name.clone()).collect();
            wanted.push(view.event_time_column.clone());
            wanted.extend(view.created_time_column.clone());
            wanted.extend(refs.iter().map(|r| r.feature().to_owned()));
            let lo = ttl_us.map_or(i64::MIN, |t| min_t.saturating_sub(t));
            let (schema, batches) = self.scan(view, &wanted, lo, max_t).await?;
            // Feature values are gathered straight from the batches they were read
            // into; keys and times are concatenated only when the key is not a
            // single integer.
            let column_of = |name: &str| -> Result<Vec<&dyn Array>> {
                let i = schema.index_of(name).map_err(|_| {
                    Error::schema_mismatch(
                        format!("feature view {view_name}"),
                        name,
                        "a stored column",
                        "missing",
                    )
                })?;
                Ok(batches.iter().map(|b| b.column(i).as_ref()).collect())
            };
            let concat_of = |name: &str| -> Result<ArrayRef> {
                let parts = column_of(name)?;
                if parts.is_empty() {
                    let field = schema
                        .field_with_name(name)
                        .map_err(|e| Error::backend("arrow", e))?;
                    return Ok(new_null_array(field.data_type(), 0));
                }
                concat(&parts).map_err(|e| Error::backend("arrow", e))
            };
            let created = view
                .created_time_column
                .as_deref()
                .map(concat_of)
                .transpose()?;
            let created_values = created.as_ref().map(|c| {
                c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .values()
                    .to_vec()
            });
            let require_created =
                options.require_created_before_event && view.created_time_column.is_some();
            let event_chunks: Vec<&[i64]> = column_of(&view.event_time_column)?
                .into_iter()
                .map(|a| {
                    a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values()
                        .as_ref()
                })
                .collect();
            // A single integer key is indexed straight from the batches; other keys
            // are concatenated and row-encoded.
            let int_chunks: Option<Vec<std::borrow::Cow<'_, [i64]>>> =
                match (&keys[..], &view.join_keys[..]) {
                    ([wanted], [key]) if pit::int_values(wanted.as_ref()).is_some() => {
                        column_of(&key.name)?
                            .into_iter()
                            .map(pit::int_values)
                            .collect()
                    }
                    _ => None,
                };
            let indices = match (
                int_chunks,
                keys.first().and_then(|k| pit::int_values(k.as_ref())),
            ) {
                (Some(chunks), Some(wanted)) => {
                    let chunk_refs: Vec<&[i64]> = chunks.iter().map(|c| c.as_ref()).collect();
                    pit::as_of_int(
                        &wanted,
                        &entity_ts,
                        &chunk_refs,
                        &event_chunks,
                        created_values.as_deref(),
                        ttl_us,
                        require_created,
                    )
                }
                _ => {
                    let feature_keys: Vec<ArrayRef> = view
                        .join_keys
                        .iter()
                        .map(|k| concat_of(&k.name))
                        .collect::<Result<_>>()?;
                    let event = concat_of(&view.event_time_column)?;
                    let event = event
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values();
                    pit::as_of_indices(
                        &keys,
                        &entity_ts,
                        &pit::FeatureRows {
                            keys: &feature_keys,
                            event,
                            created: created_values.as_deref(),
                        },
                        ttl_us,
                        require_created,
                    )?
                }
            };
            // Global row index -> (batch, row); misses point at a one-row null array.
            let starts: Vec<usize> = batches
                .iter()
                .scan(0usize, |acc, b| {
                    let start = *acc;
                    *acc += b.num_rows();
                    Some(start)
                })
                .collect();
            let picks: Vec<(usize, usize)> = indices
                .iter()
                .map(|i| match i {
                    Some(i) => {
                        let i = i as usize;
                        let b = starts.partition_point(|&s| s <= i) - 1;
                        (b, i - starts[b])
                    }
                    None => (batches.len(), 0),
                })
                .collect();
            // In large joins each feature is gathered on its own thread: the reads
            // are random over the whole view, so the cores overlap their cache
            // misses.
            let mut inputs = Vec::with_capacity(refs.len());
            for r in &refs {
                let field = schema
                    .field_with_name(r.feature())
                    .map_err(|e| Error::backend("arrow", e))?;
                let null = new_null_array(field.data_type(), 1);
                inputs.push((r, column_of(r.feature())?, null));
            }
            let gathered = pit::map_scoped(inputs, picks.len() > 10_000, |(r, mut parts, null)| {
                parts.push(null.as_ref());
                (r, interleave(&parts, &picks))
            });
            for (r, values) in gathered {
                columns.insert(
                    r.to_string(),
                    values.map_err(|e| Error::backend("arrow", e))?,
                );
            }
        }
        let mut fields: Vec<Field> = entity_df
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut arrays: Vec<ArrayRef> = entity_df.columns().to_vec();
        for r in features {
            let values = columns
                .remove(&r.to_string())
                .unwrap_or_else(|| new_null_array(&DataType::Null, entity_df.num_rows()));
            fields.push(Field::new(
                r.column_name(options.full_feature_names),
                values.data_type().clone(),
                true,
            ));
            arrays.push(values);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::backend("arrow", e))
    }
}

/// Why `new` does not fit data stored under `old`, if it does not.
fn incompatibility(old: &FeatureView, new: &FeatureView) -> Option<String> {
    if old.join_keys != new.join_keys {
        return Some("its join keys changed".into());
    }
    if old.event_time_column != new.event_time_column {
        return Some("its event-time column changed".into());
    }
    if old.created_time_column != new.created_time_column {
        return Some("its created-time column changed".into());
    }
    for f in &old.features {
        match new.feature(&f.name) {
            None => return Some(format!("feature '{}' was removed", f.name)),
            Some(n) if n.data_type != f.data_type => {
                return Some(format!(
                    "feature '{}' changed type from {} to {}",
                    f.name, f.data_type, n.data_type
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// A timestamp column as microseconds UTC.
fn to_micros(context: &str, name: &str, col: &ArrayRef) -> Result<TimestampMicrosecondArray> {
    match col.data_type() {
        DataType::Timestamp(_, _) => {
            let c = cast(col, &ts_type()).map_err(|e| {
                Error::invalid_input(format!("{context} column '{name}'"), e.to_string())
            })?;
            Ok(
                c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .clone(),
            )
        }
        other => Err(Error::schema_mismatch(
            context,
            name,
            "a timestamp",
            other.to_string(),
        )),
    }
}

/// Checks `batch` against the view and returns it with the view's column order and
/// microsecond UTC timestamps. Nothing is stored when this fails.
fn conform(view: &FeatureView, batch: &RecordBatch) -> Result<RecordBatch> {
    let context = format!("ingest into view {}", view.name);
    if batch.num_rows() == 0 {
        return Err(Error::invalid_input(context, "the batch has no rows"));
    }
    let schema = view.schema();
    if let Some(extra) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(Error::schema_mismatch(
            context,
            extra.name(),
            "no such column in the view",
            extra.data_type().to_string(),
        ));
    }
    let mut arrays = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col = batch.column_by_name(field.name()).ok_or_else(|| {
            Error::schema_mismatch(
                &context,
                field.name(),
                field.data_type().to_string(),
                "missing",
            )
        })?;
        let col = if matches!(field.data_type(), DataType::Timestamp(_, _)) {
            Arc::new(to_micros(&context, field.name(), col)?) as ArrayRef
        } else if col.data_type() != field.data_type() {
            return Err(Error::schema_mismatch(
                &context,
                field.name(),
                field.data_type().to_string(),
                col.data_type().to_string(),
            ));
        } else {
            col.clone()
        };
        if !field.is_nullable() && col.null_count() > 0 {
            return Err(Error::invalid_input(
                format!("{context} column '{}'", field.name()),
                format!(
                    "{} rows are null; join keys and timestamps may not be",
                    col.null_count()
                ),
            ));
        }
        arrays.push(col);
    }
    RecordBatch::try_new(schema, arrays).map_err(|e| Error::invalid_input(context, e.to_string()))
}

/// `batch` reordered by the timestamp column `by` (stable).
fn sort_by(batch: &RecordBatch, by: &str) -> Result<RecordBatch> {
    let col = batch
        .column_by_name(by)
        .ok_or_else(|| Error::schema_mismatch("sort", by, "a column", "missing"))?;
    let indices =
        arrow::compute::sort_to_indices(col, None, None).map_err(|e| Error::backend("arrow", e))?;
    take_record_batch(batch, &indices).map_err(|e| Error::backend("arrow", e))
}

pub(crate) fn write_parquet(batch: &RecordBatch) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|e| Error::backend("parquet", e))?;
    writer
        .write(batch)
        .map_err(|e| Error::backend("parquet", e))?;
    writer.close().map_err(|e| Error::backend("parquet", e))?;
    Ok(buf)
}

/// A read batch shaped to `schema`: missing columns (added to the view later) as
/// nulls.
fn align(batch: &RecordBatch, schema: &Arc<Schema>) -> Result<RecordBatch> {
    let arrays: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            batch
                .column_by_name(f.name())
                .cloned()
                .unwrap_or_else(|| new_null_array(f.data_type(), batch.num_rows()))
        })
        .collect();
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Error::backend("arrow", e))
}

fn file_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}
