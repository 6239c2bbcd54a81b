//! The in-memory online store: sharded maps of compactly encoded rows.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use mlops_core::feature::FeatureView;
use mlops_core::{Error, Result};

use super::{OnlineRead, OnlineRow, OnlineStore, table_key};

const SHARDS: usize = 64;

/// One entity's latest row: its times and its feature values in Arrow's row format.
#[derive(Debug)]
struct Entry {
    event_us: i64,
    created_us: Option<i64>,
    values: Box<[u8]>,
}

type Shard = RwLock<HashMap<Box<[u8]>, Entry>>;

/// The rows of one view (for one version of its feature list).
#[derive(Debug)]
struct ViewTable {
    shards: Vec<Shard>,
}

/// An [`OnlineStore`] in process memory: the embedded default.
///
/// Entities are spread over 64 independently locked shards, so a read waits at
/// most for a write to the same shard, and never for I/O. Each entity's features
/// are kept in Arrow's compact row format (a few bytes per value). A view whose
/// feature list changes starts a new table: rows written under the old list are
/// not served for the new one (materialize again).
#[derive(Debug, Default)]
pub struct InMemoryOnlineStore {
    views: RwLock<HashMap<String, Arc<ViewTable>>>,
    hasher: RandomState,
}

pub(super) fn converter(
    fields: impl Iterator<Item = arrow::datatypes::DataType>,
) -> Result<RowConverter> {
    RowConverter::new(fields.map(SortField::new).collect()).map_err(|e| Error::backend("arrow", e))
}

impl InMemoryOnlineStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self, view: &FeatureView, create: bool) -> Option<Arc<ViewTable>> {
        let key = table_key(view);
        if let Some(t) = self
            .views
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(t.clone());
        }
        if !create {
            return None;
        }
        let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
        Some(
            views
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(ViewTable {
                        shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                    })
                })
                .clone(),
        )
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }
}

/// The join key columns of `batch`, checked against the view.
pub(super) fn key_columns(
    view: &FeatureView,
    batch: &RecordBatch,
    context: &str,
) -> Result<Vec<arrow::array::ArrayRef>> {
    view.join_keys
        .iter()
        .map(|k| {
            let col = batch.column_by_name(&k.name).ok_or_else(|| {
                Error::schema_mismatch(context, &k.name, k.data_type.to_string(), "missing")
            })?;
            if col.data_type() != &k.data_type {
                return Err(Error::schema_mismatch(
                    context,
                    &k.name,
                    k.data_type.to_string(),
                    col.data_type().to_string(),
                ));
            }
            if col.null_count() > 0 {
                return Err(Error::invalid_input(
                    format!("{context} column '{}'", k.name),
                    format!("{} keys are null", col.null_count()),
                ));
            }
            Ok(col.clone())
        })
        .collect()
}

pub(super) fn times(batch: &RecordBatch, column: &str, context: &str) -> Result<Vec<i64>> {
    let col = batch.column_by_name(column).ok_or_else(|| {
        Error::schema_mismatch(context, column, "a timestamp (µs, UTC)", "missing")
    })?;
    let ts = col
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            Error::schema_mismatch(
                context,
                column,
                "Timestamp(µs, UTC)",
                col.data_type().to_string(),
            )
        })?;
    if ts.null_count() > 0 {
        return Err(Error::invalid_input(
            format!("{context} column '{column}'"),
            format!("{} rows are null", ts.null_count()),
        ));
    }
    Ok(ts.values().to_vec())
}

#[async_trait]
impl OnlineStore for InMemoryOnlineStore {
    async fn write(&self, view: &FeatureView, rows: &RecordBatch) -> Result<usize> {
        let context = format!("online write to view {}", view.name);
        let keys = key_columns(view, rows, &context)?;
        let event = times(rows, &view.event_time_column, &context)?;
        let created = view
            .created_time_column
            .as_deref()
            .map(|c| times(rows, c, &context))
            .transpose()?;
        let mut values = Vec::with_capacity(view.features.len());
        for f in &view.features {
            let col = rows.column_by_name(&f.name).ok_or_else(|| {
                Error::schema_mismatch(&context, &f.name, f.data_type.to_string(), "missing")
            })?;
            if col.data_type() != &f.data_type {
                return Err(Error::schema_mismatch(
                    &context,
                    &f.name,
                    f.data_type.to_string(),
                    col.data_type().to_string(),
                ));
            }
            values.push(col.clone());
        }
        let key_rows = converter(keys.iter().map(|k| k.data_type().clone()))?
            .convert_columns(&keys)
            .map_err(|e| Error::backend("arrow", e))?;
        let value_rows = converter(values.iter().map(|v| v.data_type().clone()))?
            .convert_columns(&values)
            .map_err(|e| Error::backend("arrow", e))?;
        let table = self
            .table(view, true)
            .ok_or_else(|| Error::backend("online store", "no table"))?;
        let mut changed = 0;
        for i in 0..rows.num_rows() {
            let key = key_rows.row(i).data();
            let newer = (event[i], created.as_ref().map(|c| c[i]));
            let mut shard = table.shards[self.shard_of(key)]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let stored = shard.get(key).map(|e| (e.event_us, e.created_us));
            // Only a strictly newer row replaces the stored one.
            if stored.is_none_or(|s| newer > s) {
                shard.insert(
                    key.into(),
                    Entry {
                        event_us: newer.0,
                        created_us: newer.1,
                        values: value_rows.row(i).data().into(),
                    },
                );
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn read(
        &self,
        view: &FeatureView,
        keys: &RecordBatch,
        features: &[String],
    ) -> Result<OnlineRead> {
        let context = format!("online read from view {}", view.name);
        let wanted: Vec<usize> = features
            .iter()
            .map(|f| {
                view.features
                    .iter()
                    .position(|v| &v.name == f)
                    .ok_or_else(|| {
                        Error::not_found(
                            mlops_core::ResourceKind::Feature,
                            format!("{}:{f}", view.name),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        let key_cols = key_columns(view, keys, &context)?;
        let key_rows = converter(key_cols.iter().map(|k| k.data_type().clone()))?
            .convert_columns(&key_cols)
            .map_err(|e| Error::backend("arrow", e))?;
        let value_converter = converter(view.features.iter().map(|f| f.data_type.clone()))?;
        let parser = value_converter.parser();
        let table = self.table(view, false);
        // The found rows' encoded values, back to back in one buffer.
        let mut buffer: Vec<u8> = Vec::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut rows = Vec::with_capacity(keys.num_rows());
        for i in 0..keys.num_rows() {
            let key = key_rows.row(i).data();
            let hit = table.as_ref().and_then(|t| {
                let shard = t.shards[self.shard_of(key)]
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                shard.get(key).map(|e| {
                    let start = buffer.len();
                    buffer.extend_from_slice(&e.values);
                    spans.push((start, buffer.len()));
                    (e.event_us, e.created_us)
                })
            });
            rows.push(hit.map(|(event_us, created_us)| OnlineRow {
                event_us,
                created_us,
                row: spans.len() - 1,
            }));
        }
        let all = value_converter
            .convert_rows(spans.iter().map(|&(a, b)| parser.parse(&buffer[a..b])))
            .map_err(|e| Error::backend("arrow", e))?;
        let found = spans;
        let fields: Vec<Field> = wanted
            .iter()
            .map(|&i| {
                Field::new(
                    &view.features[i].name,
                    view.features[i].data_type.clone(),
                    true,
                )
            })
            .collect();
        let columns = wanted.iter().map(|&i| all[i].clone()).collect();
        let values = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(found.len())),
        )
        .map_err(|e| Error::backend("arrow", e))?;
        Ok(OnlineRead { values, rows })
    }
}
