//! Files the commands read: Parquet tables.

use std::path::Path;

use arrow_array::{RecordBatch, RecordBatchReader as _};
use mlops::core::{Error, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every row of the Parquet file at `path`, as one batch (the whole file is
/// held in memory). The error names the file, and says when it is not Parquet
/// or holds no rows.
pub(crate) fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let what = || format!("file {}", path.display());
    let file =
        std::fs::File::open(path).map_err(|e| Error::invalid_input(what(), e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::invalid_input(what(), format!("not a Parquet file: {e}")))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid_input(what(), format!("unreadable Parquet: {e}")))?;
    let batch = arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| Error::invalid_input(what(), e.to_string()))?;
    if batch.num_rows() == 0 {
        return Err(Error::invalid_input(what(), "it holds no rows"));
    }
    Ok(batch)
}
