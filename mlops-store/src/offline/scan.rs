//! Scans: a view's rows in an event-time range, reading only the files, row groups
//! and columns that can match; and the latest row per entity for materialization.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{Field, Schema};
use mlops_core::feature::FeatureView;
use mlops_core::{Error, Result};

use super::ObjectOfflineStore;
use super::ingest::DataFile;
use super::reader;

impl ObjectOfflineStore {
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
    pub(super) async fn scan(
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
}

/// A read batch shaped to `schema`: missing columns (added to the view later) as
/// nulls.
pub(super) fn align(batch: &RecordBatch, schema: &Arc<Schema>) -> Result<RecordBatch> {
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
