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
use super::definitions::Progress;
use super::ingest::DataFile;
use super::reader;

/// Data files and the event-time window `[start_us, end_us)` of their rows to
/// consider.
pub(super) struct ScanPart {
    pub(super) files: Vec<DataFile>,
    pub(super) start_us: i64,
    pub(super) end_us: i64,
}

impl ObjectOfflineStore {
    /// Per entity key, the latest row (event time, then created time, then commit
    /// order) with event time in `[start_us, end_us)`: what materialization loads.
    pub(crate) async fn latest_rows(
        &self,
        view: &FeatureView,
        start_us: i64,
        end_us: i64,
    ) -> Result<RecordBatch> {
        let files = self.files(view, start_us, end_us.saturating_sub(1)).await?;
        self.latest_of(
            view,
            vec![ScanPart {
                files,
                start_us,
                end_us,
            }],
        )
        .await
    }

    /// Per entity key, the latest row among the rows of each part's files inside
    /// its window (parts in commit order, for ties).
    pub(super) async fn latest_of(
        &self,
        view: &FeatureView,
        parts: Vec<ScanPart>,
    ) -> Result<RecordBatch> {
        let schema = view.schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut kept = Vec::new();
        let mut schema = Arc::new(Schema::new(Vec::<Field>::new()));
        for part in parts {
            let files: Vec<DataFile> = part
                .files
                .into_iter()
                .filter(|f| f.max_event_us >= part.start_us && f.min_event_us < part.end_us)
                .collect();
            let (s, batches) = self
                .scan_files(
                    view,
                    &columns,
                    files,
                    part.start_us,
                    part.end_us.saturating_sub(1),
                )
                .await?;
            schema = s;
            for b in batches {
                let event = b
                    .column_by_name(&view.event_time_column)
                    .map(|c| {
                        c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                            .clone()
                    })
                    .ok_or_else(|| Error::backend("scan", "the event-time column is missing"))?;
                let inside: arrow::array::BooleanArray = event
                    .values()
                    .iter()
                    .map(|t| Some(*t >= part.start_us && *t < part.end_us))
                    .collect();
                kept.push(
                    arrow::compute::filter_record_batch(&b, &inside)
                        .map_err(|e| Error::backend("arrow", e))?,
                );
            }
        }
        if kept.is_empty() {
            return Ok(RecordBatch::new_empty(view.schema()));
        }
        let all = concat_batches(&schema, &kept).map_err(|e| Error::backend("arrow", e))?;
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
        for i in 0..all.num_rows() {
            let slot = best.entry(rows.row(i).data()).or_insert(i);
            if order(i) > order(*slot) {
                *slot = i;
            }
        }
        let mut picks: Vec<u32> = best.into_values().map(|i| i as u32).collect();
        picks.sort_unstable();
        take_record_batch(&all, &UInt32Array::from(picks)).map_err(|e| Error::backend("arrow", e))
    }

    /// What an incremental materialization up to `end_us` loads: per entity the
    /// latest row among the rows with event time in `[previous end, end_us)` and
    /// every row of the commits made since the previous run with event time
    /// before `end_us` (late rows, whatever their event time), and the progress
    /// to record once they are online. Progress is tracked by commit, so a row
    /// that arrives late is loaded by the next run, as the offline join returns it.
    pub(crate) async fn incremental_rows(
        &self,
        view: &FeatureView,
        end_us: i64,
    ) -> Result<(RecordBatch, Progress, Option<Progress>)> {
        let previous = self.progress(&view.name).await?;
        let commits = self.numbered_commits(&view.name).await?;
        let last = commits.last().map_or(0, |(n, _)| *n);
        let (done, fresh): (Vec<_>, Vec<_>) = commits
            .into_iter()
            .partition(|(n, _)| previous.is_some_and(|p| *n <= p.commit));
        let files = |commits: Vec<(u64, super::ingest::Commit)>| -> Vec<DataFile> {
            commits.into_iter().flat_map(|(_, c)| c.files).collect()
        };
        let mut parts = Vec::with_capacity(2);
        if let Some(p) = previous
            && end_us > p.end_us
        {
            parts.push(ScanPart {
                files: files(done),
                start_us: p.end_us,
                end_us,
            });
        }
        parts.push(ScanPart {
            files: files(fresh),
            start_us: i64::MIN,
            end_us,
        });
        let rows = self.latest_of(view, parts).await?;
        let next = Progress {
            end_us: previous.map_or(end_us, |p| p.end_us.max(end_us)),
            commit: previous.map_or(last, |p| p.commit.max(last)),
        };
        Ok((rows, next, previous))
    }

    /// The data files of every commit whose event times can fall in
    /// `[min_us, max_us]`, in commit order.
    async fn files(&self, view: &FeatureView, min_us: i64, max_us: i64) -> Result<Vec<DataFile>> {
        Ok(self
            .commits(&view.name)
            .await?
            .into_iter()
            .flat_map(|c| c.files)
            .filter(|f| f.max_event_us >= min_us && f.min_event_us <= max_us)
            .collect())
    }

    /// The view's rows with event time in `[min_us, max_us]` (files outside are not
    /// read), only `columns`, in commit order; columns a file lacks (features added
    /// later) come back as nulls.
    pub(crate) async fn scan(
        &self,
        view: &FeatureView,
        columns: &[String],
        min_us: i64,
        max_us: i64,
    ) -> Result<(Arc<Schema>, Vec<RecordBatch>)> {
        let files = self.files(view, min_us, max_us).await?;
        self.scan_files(view, columns, files, min_us, max_us).await
    }

    /// [`scan`](Self::scan) over the given files.
    async fn scan_files(
        &self,
        view: &FeatureView,
        columns: &[String],
        files: Vec<DataFile>,
        min_us: i64,
        max_us: i64,
    ) -> Result<(Arc<Schema>, Vec<RecordBatch>)> {
        let full = view.schema();
        let fields: Vec<Field> = columns
            .iter()
            .filter_map(|c| full.field_with_name(c).ok().cloned())
            .collect();
        let schema = Arc::new(Schema::new(fields));
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
