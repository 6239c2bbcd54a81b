//! Files the commands read and write: Parquet tables, and progress on stderr.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use arrow_array::RecordBatch;
use indicatif::{ProgressBar, ProgressStyle};
use mlops::core::{Error, Result};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every row of the Parquet file at `path`, as one batch. The error names the
/// file, and says when it is not Parquet or holds no rows.
pub(crate) fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let what = || format!("file {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| Error::invalid_input(what(), e.to_string()))?;
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

/// Writes `batch` to `path` as Parquet, through a temporary file renamed into
/// place, so a failure half-way never leaves a truncated file under that name.
pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let what = || format!("output file {}", path.display());
    let tmp = path.with_extension(format!(
        "{}.tmp-{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or("parquet"),
        std::process::id()
    ));
    let write = || -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| e.to_string())?;
        writer.write(batch).map_err(|e| e.to_string())?;
        writer.close().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::invalid_input(what(), e)
    })
}

/// A spinner on stderr for long work: hidden under `--json` and when stderr is
/// not a terminal (logs and scripts get the result line instead).
pub(crate) fn spinner(json: bool, message: impl Into<String>) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message.into());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A bar counting `len` steps on stderr, hidden like [`spinner`].
pub(crate) fn bar(json: bool, len: u64, message: impl Into<String>) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(message.into());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})") {
        bar.set_style(style);
    }
    bar
}

/// `value` as JSON text on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| Error::backend("json", e))?;
    println!("{text}");
    Ok(())
}
