//! Ingestion and the commit log: validated, all-or-nothing appends of Parquet files,
//! made visible by numbered create-if-absent commits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::DataType;
use chrono::{DateTime, NaiveDate, Utc};
use mlops_core::feature::{FeatureView, IngestReceipt};
use mlops_core::{Error, Result};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::ObjectOfflineStore;
use super::ts_type;

/// One data file as a commit records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DataFile {
    /// Path relative to the root.
    pub(super) path: String,
    pub(super) rows: u64,
    /// Smallest and largest event time in the file, microseconds.
    pub(super) min_event_us: i64,
    pub(super) max_event_us: i64,
    /// The file's size in bytes (absent in commits written before it was
    /// recorded), so readers fetch its footer with a bounded range request.
    #[serde(default)]
    pub(super) size: Option<u64>,
}

/// A commit: the files one ingestion made visible.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Commit {
    pub(super) files: Vec<DataFile>,
    pub(super) created_at: DateTime<Utc>,
}

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ObjectOfflineStore {
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
            if !self.root.put_unique(&path, bytes.into()).await? {
                // Its name holds a fresh random id: another object there is not
                // ours, and committing it would publish someone else's rows.
                return Err(Error::conflict(
                    self.root.describe(&self.root.path(&path)),
                    "a data file already exists under this ingestion's fresh name",
                ));
            }
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
        self.claim_commit(view, &commit).await?;
        Ok(IngestReceipt {
            view: view.to_owned(),
            rows: batch.num_rows(),
            files: files.into_iter().map(|f| f.path).collect(),
        })
    }
}

/// A timestamp column as microseconds UTC.
pub(super) fn to_micros(
    context: &str,
    name: &str,
    col: &ArrayRef,
) -> Result<TimestampMicrosecondArray> {
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
pub(super) fn conform(view: &FeatureView, batch: &RecordBatch) -> Result<RecordBatch> {
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
pub(super) fn sort_by(batch: &RecordBatch, by: &str) -> Result<RecordBatch> {
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
pub(super) fn file_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}
