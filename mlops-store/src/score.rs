//! Batch scoring: a Parquet dataset through any [`Predictor`], streamed in
//! bounded memory, the predictions written next to the row keys as Parquet
//! under the storage root, recorded in the tracker and the audit log with their
//! lineage (model version, input).
//!
//! The output is committed by a manifest written last and only if absent: a
//! job that fails half-way leaves part files but no manifest (readers take the
//! manifest as the list of what to read), and a finished output is never
//! overwritten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use mlops_core::audit::{AuditEvent, AuditLog};
use mlops_core::inference::{tensor_columns, tensors_for_signature};
use mlops_core::tracking::{ExperimentTracker, MetricPoint, RunStatus};
use mlops_core::{Error, Predictor, Result};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use serde::{Deserialize, Serialize};

use crate::offline::ObjectReader;
use crate::root::StoreRoot;
use crate::snapshot::ObjectSnapshotStore;

/// Rows per call of the model unless a job says otherwise.
pub const DEFAULT_SCORE_BATCH_ROWS: usize = 8192;
/// Rows per output file unless a job says otherwise.
pub const DEFAULT_SCORE_PART_ROWS: usize = 1_000_000;

/// The rows to score.
#[derive(Debug, Clone)]
pub enum ScoreSource {
    /// Parquet files under the storage root (paths relative to it), read row
    /// group by row group.
    Files(Vec<String>),
    /// Parquet files under another storage root (a local directory, another
    /// bucket); the output still goes to the job's root.
    FilesIn(StoreRoot, Vec<String>),
    /// A dataset snapshot, each file verified against its digest before use
    /// (one file's bytes in memory at a time).
    Snapshot(String),
    /// Batches already in memory, e.g. a point-in-time training set from
    /// `get_historical_features`.
    Batches(Vec<RecordBatch>),
}

impl ScoreSource {
    fn describe(&self) -> String {
        match self {
            ScoreSource::Files(files) => format!("files {}", files.join(", ")),
            ScoreSource::FilesIn(root, files) => {
                format!("files {} of {}", files.join(", "), root.url())
            }
            ScoreSource::Snapshot(id) => format!("snapshot {id}"),
            ScoreSource::Batches(b) => format!("{} in-memory batches", b.len()),
        }
    }
}

/// What to score, with what, and where the predictions go.
#[derive(Debug, Clone)]
pub struct ScoreJob {
    /// The model's name, for the record.
    pub model: String,
    /// The version scored with, for the record.
    pub version: u64,
    /// The rows.
    pub source: ScoreSource,
    /// Columns copied from each input row next to its predictions (the row keys).
    pub key_columns: Vec<String>,
    /// Where the output goes, relative to the storage root: part files
    /// `OUTPUT/part-NNNNN.parquet` and the manifest `OUTPUT/_manifest.json`.
    pub output: String,
    /// Rows per call of the model (default [`DEFAULT_SCORE_BATCH_ROWS`]).
    pub batch_rows: usize,
    /// Rows per output file (default [`DEFAULT_SCORE_PART_ROWS`]).
    pub part_rows: usize,
    /// The tracker experiment the run is recorded in (default `batch-scoring`).
    pub experiment: String,
    /// Who runs it, for the audit log.
    pub actor: String,
}

impl ScoreJob {
    /// A job scoring `source` with `model` version `version` into `output`.
    pub fn new(
        model: impl Into<String>,
        version: u64,
        source: ScoreSource,
        output: impl Into<String>,
    ) -> Self {
        Self {
            model: model.into(),
            version,
            source,
            key_columns: Vec::new(),
            output: output.into(),
            batch_rows: DEFAULT_SCORE_BATCH_ROWS,
            part_rows: DEFAULT_SCORE_PART_ROWS,
            experiment: "batch-scoring".to_owned(),
            actor: "mlops".to_owned(),
        }
    }

    /// Copies `columns` from the input next to the predictions.
    pub fn with_keys(mut self, columns: &[&str]) -> Self {
        self.key_columns = columns.iter().map(|c| (*c).to_owned()).collect();
        self
    }
}

/// The committed result of a scoring job: what `_manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreManifest {
    /// The model scored with.
    pub model: String,
    /// Its version.
    pub version: u64,
    /// What was scored (files, snapshot id, batches).
    pub source: String,
    /// The snapshot scored, when the source was one.
    pub snapshot_id: Option<String>,
    /// The part files, relative to the storage root, in row order.
    pub parts: Vec<String>,
    /// Rows scored.
    pub rows: u64,
    /// The output columns (the keys, then the predictions).
    pub columns: Vec<String>,
    /// The tracker run that recorded the job, when a tracker was given.
    pub run_id: Option<String>,
}

/// Where a job records itself.
#[derive(Debug, Clone, Default)]
pub struct ScoreRecorders {
    /// A run with the job's parameters and its row count and speed.
    pub tracker: Option<Arc<dyn ExperimentTracker>>,
    /// One `score` entry naming the model version, the input and the output.
    pub audit: Option<Arc<dyn AuditLog>>,
    /// Told the rows scored so far after each batch (a progress bar, a log line).
    pub progress: Option<ScoreProgress>,
}

/// A callback told the rows scored so far, after each batch.
#[derive(Clone)]
pub struct ScoreProgress(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for ScoreProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScoreProgress(..)")
    }
}

type BatchStream<'a> = std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send + 'a>>;

fn not_parquet(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid_input(what.to_owned(), format!("not readable Parquet: {e}"))
}

/// The batches of `source`, at most `rows` rows each.
fn batches<'a>(root: &'a StoreRoot, source: &'a ScoreSource, rows: usize) -> BatchStream<'a> {
    match source {
        ScoreSource::Batches(batches) => Box::pin(futures_util::stream::iter(
            batches
                .iter()
                .flat_map(move |b| {
                    (0..b.num_rows().div_ceil(rows).max(1))
                        .map(move |i| b.slice(i * rows, rows.min(b.num_rows() - i * rows)))
                })
                .map(Ok),
        )),
        ScoreSource::Files(files) => file_batches(root, files, rows),
        ScoreSource::FilesIn(other, files) => file_batches(other, files, rows),
        ScoreSource::Snapshot(id) => Box::pin(
            futures_util::stream::once(async move {
                let snapshots = ObjectSnapshotStore::new(root);
                let snapshot = snapshots.get(id).await?;
                Ok::<_, Error>((snapshots, snapshot))
            })
            .map(move |r| match r {
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                Ok((snapshots, snapshot)) => {
                    let files = snapshot.files.clone();
                    futures_util::stream::iter(files)
                        .then(move |f| {
                            let snapshots = snapshots.clone();
                            let snapshot = snapshot.clone();
                            async move {
                                let bytes = snapshots.read_file(&snapshot, &f).await?;
                                let what = format!("snapshot file {}", f.name);
                                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                                    .map_err(|e| not_parquet(&what, e))?
                                    .with_batch_size(rows)
                                    .build()
                                    .map_err(|e| not_parquet(&what, e))?;
                                Ok::<_, Error>(futures_util::stream::iter(
                                    reader.map(move |b| b.map_err(|e| not_parquet(&what, e))),
                                ))
                            }
                        })
                        .map(or_failure)
                        .flatten()
                        .boxed()
                }
            })
            .flatten(),
        ),
    }
}

/// The batches of `stream`, or the one error that kept it from opening.
fn or_failure<'a, S>(stream: Result<S>) -> BatchStream<'a>
where
    S: Stream<Item = Result<RecordBatch>> + Send + 'a,
{
    match stream {
        Ok(s) => s.boxed(),
        Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
    }
}

/// The batches of Parquet `files` under `root`, row group by row group.
fn file_batches<'a>(root: &'a StoreRoot, files: &'a [String], rows: usize) -> BatchStream<'a> {
    Box::pin(
        futures_util::stream::iter(files.iter())
            .then(move |file| async move {
                let reader = ObjectReader::new(root.store().clone(), root.path(file));
                let what = format!("input file {file}");
                let stream = ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .map_err(|e| match e {
                        parquet::errors::ParquetError::External(inner) => {
                            match inner.downcast::<object_store::Error>() {
                                Ok(e) => crate::error::storage_error(&what, *e),
                                Err(other) => not_parquet(&what, other),
                            }
                        }
                        other => not_parquet(&what, other),
                    })?
                    .with_batch_size(rows)
                    .build()
                    .map_err(|e| not_parquet(&what, e))?;
                Ok::<_, Error>(stream.map(move |b| b.map_err(|e| not_parquet(&what, e))))
            })
            .map(or_failure)
            .flatten(),
    )
}

/// The output batch of one input batch: its key columns, then the columns of
/// each output tensor (see `tensor_columns`: `name`, or `name[j]` for a matrix).
fn output_batch(
    job: &ScoreJob,
    input: &RecordBatch,
    outputs: &[mlops_core::inference::Tensor],
) -> Result<RecordBatch> {
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for key in &job.key_columns {
        let column = input.column_by_name(key).ok_or_else(|| {
            Error::invalid_input(
                format!("key column '{key}'"),
                "not in the input; its columns are ".to_owned()
                    + &input
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
            )
        })?;
        columns.push((key.clone(), column.clone()));
    }
    for t in outputs {
        if t.rows() != input.num_rows() {
            return Err(Error::backend(
                "model",
                format!(
                    "output '{}' has {} rows for {} input rows",
                    t.name,
                    t.rows(),
                    input.num_rows()
                ),
            ));
        }
        columns.extend(tensor_columns(t)?);
    }
    RecordBatch::try_from_iter(columns)
        .map_err(|e| Error::invalid_input("score output", e.to_string()))
}

/// Scores `job.source` with `predictor` (the loaded `job.model` version
/// `job.version`), writes the predictions under `job.output` on `root`, and
/// records the job with `recorders`.
///
/// Memory is bounded by one batch of `batch_rows` input rows and its outputs,
/// plus one encoded output part (`part_rows` rows) and, for a snapshot, the
/// bytes of one of its files. Errors name what was wrong: a missing input
/// column (the model's input names, or `name[j]` for column j of a matrix
/// input), nulls, a missing key column, an output that exists already, a
/// storage failure; nothing is committed then.
pub async fn score_dataset(
    root: &StoreRoot,
    predictor: Arc<dyn Predictor>,
    job: &ScoreJob,
    recorders: &ScoreRecorders,
) -> Result<ScoreManifest> {
    if job.batch_rows == 0 || job.part_rows == 0 {
        return Err(Error::invalid_input(
            "score job",
            "batch_rows and part_rows must be at least 1",
        ));
    }
    let output = job.output.trim_end_matches('/');
    if output.is_empty() {
        return Err(Error::invalid_input(
            "score output",
            "an output path is required",
        ));
    }
    let manifest_path = format!("{output}/_manifest.json");
    if root.get_opt(&manifest_path).await?.is_some() {
        return Err(Error::conflict(
            format!("scores at {output}"),
            "a finished scoring output is there already; choose another output path",
        ));
    }
    let run = match &recorders.tracker {
        Some(tracker) => {
            let mut tags = BTreeMap::new();
            tags.insert("mlops.model".to_owned(), job.model.clone());
            tags.insert("mlops.version".to_owned(), job.version.to_string());
            let run = tracker
                .start_run(&job.experiment, Some(&format!("score {}", job.model)), tags)
                .await?;
            let mut params = BTreeMap::new();
            params.insert("model".to_owned(), job.model.clone());
            params.insert("version".to_owned(), job.version.to_string());
            params.insert("source".to_owned(), job.source.describe());
            params.insert("output".to_owned(), output.to_owned());
            tracker.log_params(&run.id, params).await?;
            Some(run.id)
        }
        None => None,
    };
    let started = Instant::now();
    let result = write_parts(root, predictor, job, output, recorders.progress.as_ref()).await;
    let (parts, rows, columns) = match result {
        Ok(done) => done,
        Err(e) => {
            if let (Some(tracker), Some(id)) = (&recorders.tracker, &run) {
                let _ = tracker.end_run(id, RunStatus::Failed).await;
            }
            return Err(e);
        }
    };
    let manifest = ScoreManifest {
        model: job.model.clone(),
        version: job.version,
        source: job.source.describe(),
        snapshot_id: match &job.source {
            ScoreSource::Snapshot(id) => Some(id.clone()),
            _ => None,
        },
        parts,
        rows,
        columns,
        run_id: run.clone(),
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| Error::backend("serde_json", e))?;
    if !root
        .put_if_absent(&manifest_path, Bytes::from(bytes))
        .await?
    {
        return Err(Error::conflict(
            format!("scores at {output}"),
            "another job committed this output first",
        ));
    }
    if let (Some(tracker), Some(id)) = (&recorders.tracker, &run) {
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        tracker
            .log_metrics(
                id,
                vec![
                    MetricPoint::now("rows", rows as f64, 0),
                    MetricPoint::now("rows_per_second", rows as f64 / seconds, 0),
                ],
            )
            .await?;
        tracker.end_run(id, RunStatus::Finished).await?;
    }
    if let Some(audit) = &recorders.audit {
        let mut event = AuditEvent::new(
            job.actor.clone(),
            "score",
            format!("model {} version {}", job.model, job.version),
        )
        .detail("input", job.source.describe())
        .detail("output", output)
        .detail("rows", rows.to_string());
        if let Some(id) = &run {
            event = event.detail("run_id", id.clone());
        }
        audit.append(event).await?;
    }
    Ok(manifest)
}

/// Streams the source through the model into part files; the part paths, the
/// rows and the output columns.
async fn write_parts(
    root: &StoreRoot,
    predictor: Arc<dyn Predictor>,
    job: &ScoreJob,
    output: &str,
    progress: Option<&ScoreProgress>,
) -> Result<(Vec<String>, u64, Vec<String>)> {
    let mut stream = batches(root, &job.source, job.batch_rows);
    let mut parts = Vec::new();
    let mut rows = 0u64;
    let mut columns: Vec<String> = Vec::new();
    let mut writer: Option<(ArrowWriter<Vec<u8>>, usize)> = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let inputs = tensors_for_signature(predictor.signature(), &batch)?;
        let model = predictor.clone();
        let outputs = tokio::task::spawn_blocking(move || model.predict(&inputs))
            .await
            .map_err(|e| Error::backend("model", format!("the scoring task failed: {e}")))??;
        let out = output_batch(job, &batch, &outputs)?;
        if columns.is_empty() {
            columns = out
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
        }
        let (w, written) = match &mut writer {
            Some(w) => w,
            None => {
                let w = ArrowWriter::try_new(Vec::new(), out.schema(), None)
                    .map_err(|e| Error::backend("parquet", e))?;
                writer.insert((w, 0))
            }
        };
        w.write(&out).map_err(|e| {
            Error::invalid_input("score output", format!("could not be written: {e}"))
        })?;
        *written += out.num_rows();
        rows += out.num_rows() as u64;
        if let Some(progress) = progress {
            (progress.0)(rows);
        }
        if *written >= job.part_rows
            && let Some((w, _)) = writer.take()
        {
            parts.push(finish_part(root, output, parts.len(), w).await?);
        }
    }
    if let Some((w, _)) = writer.take() {
        parts.push(finish_part(root, output, parts.len(), w).await?);
    }
    Ok((parts, rows, columns))
}

async fn finish_part(
    root: &StoreRoot,
    output: &str,
    index: usize,
    writer: ArrowWriter<Vec<u8>>,
) -> Result<String> {
    let bytes = writer
        .into_inner()
        .map_err(|e| Error::backend("parquet", e))?;
    let path = format!("{output}/part-{index:05}.parquet");
    root.put(&path, Bytes::from(bytes)).await?;
    Ok(path)
}
