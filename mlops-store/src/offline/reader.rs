//! Reading Parquet files from object storage: only the footer and the needed
//! column chunks are fetched (ranged reads), through parquet's async reader.

use std::ops::Range;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryFutureExt, TryStreamExt};
use mlops_core::{Error, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::{ParquetError, Result as ParquetResult};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

fn to_parquet_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// An [`AsyncFileReader`] over one object.
#[derive(Debug, Clone)]
pub(crate) struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The object's size when known (recorded at ingestion); else asked for.
    size: Option<u64>,
}

impl ObjectReader {
    /// A reader of the object at `path` (its size asked for when needed).
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path) -> Self {
        Self {
            store,
            path,
            size: None,
        }
    }
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(to_parquet_err)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(to_parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            // Bounded ranges only: Azure Blob Storage refuses suffix ranges.
            let size = match self.size {
                Some(size) => size,
                None => {
                    self.store
                        .head(&self.path)
                        .await
                        .map_err(to_parquet_err)?
                        .size
                }
            };
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Which rows of a file to read: those whose `column` (a microsecond timestamp)
/// lies in `[min_us, max_us]`, judged by row-group statistics.
#[derive(Debug, Clone)]
pub(crate) struct TimeRange<'a> {
    pub(crate) column: &'a str,
    pub(crate) min_us: i64,
    pub(crate) max_us: i64,
}

/// The row groups whose statistics for the range's column overlap it (all of them
/// when statistics are missing).
fn row_groups_in_range(
    metadata: &ParquetMetaData,
    arrow_schema: &arrow::datatypes::Schema,
    parquet_schema: &parquet::schema::types::SchemaDescriptor,
    range: &TimeRange<'_>,
) -> Option<Vec<usize>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    let converter =
        StatisticsConverter::try_new(range.column, arrow_schema, parquet_schema).ok()?;
    let mins = converter.row_group_mins(metadata.row_groups()).ok()?;
    let maxes = converter.row_group_maxes(metadata.row_groups()).ok()?;
    let mins = mins.as_primitive_opt::<TimestampMicrosecondType>()?;
    let maxes = maxes.as_primitive_opt::<TimestampMicrosecondType>()?;
    Some(
        (0..metadata.num_row_groups())
            .filter(|&i| {
                let lo = if mins.is_null(i) {
                    i64::MIN
                } else {
                    mins.value(i)
                };
                let hi = if maxes.is_null(i) {
                    i64::MAX
                } else {
                    maxes.value(i)
                };
                hi >= range.min_us && lo <= range.max_us
            })
            .collect(),
    )
}

/// Reads the columns named in `columns` that the file has (others are the caller's
/// to fill), in the file's column order, skipping row groups outside `range`.
pub(crate) async fn read_columns(
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: Option<u64>,
    columns: &[String],
    range: TimeRange<'_>,
    describe: &str,
) -> Result<Vec<RecordBatch>> {
    let parquet_err = |e: ParquetError| Error::storage(describe.to_owned(), e);
    let reader = ObjectReader { store, path, size };
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(parquet_err)?;
    if let Some(groups) = row_groups_in_range(
        builder.metadata(),
        builder.schema(),
        builder.parquet_schema(),
        &range,
    ) {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        builder = builder.with_row_groups(groups);
    }
    let schema = builder.parquet_schema();
    // By top-level field: a nested column (a list feature) has leaves named
    // after its items (`item`), not after the column.
    let roots: Vec<usize> = schema
        .root_schema()
        .get_fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.iter().any(|c| c == f.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(schema, roots);
    let stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet_err)?;
    stream.try_collect().await.map_err(parquet_err)
}
