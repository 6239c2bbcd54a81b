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

/// Writes `batch` to the Parquet file at `path`: into a temporary file beside
/// it, renamed into place once complete, so a failure never leaves a truncated
/// file (nor replaces an existing one). The error names the file.
pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let what = || format!("output file {}", path.display());
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_input(what(), "it names no file"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
            .map_err(|e| e.to_string())?;
        writer.write(batch).map_err(|e| e.to_string())?;
        let file = writer.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    written.map_err(|reason| {
        let _ = std::fs::remove_file(&tmp);
        Error::invalid_input(what(), format!("cannot write it: {reason}"))
    })
}
