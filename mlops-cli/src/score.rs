//! `mlops score`: batch scoring of Parquet data with a registered model
//! version, streamed in bounded memory; the predictions are written next to the
//! row keys as Parquet under the config's storage root, committed by a
//! manifest, and recorded as a tracker run and an audit entry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use mlops::core::model::VersionSelector;
use mlops::core::{AuditLog, Error, ExperimentTracker, Result};
use mlops::store::{
    ObjectAuditLog, ObjectTracker, ScoreJob, ScoreProgress, ScoreRecorders, ScoreSource, StoreRoot,
    score_dataset,
};

/// What `mlops score` scores, with what, and where the predictions go.
#[derive(Debug, Args)]
pub(crate) struct ScoreArgs {
    /// The registered model.
    #[arg(long)]
    model: String,
    /// A number, an alias (`@champion`, the default) or `latest`.
    #[arg(long, default_value = "@champion")]
    version: String,
    /// Local Parquet files to score, in order.
    #[arg(
        long = "input",
        required_unless_present = "snapshot",
        conflicts_with = "snapshot"
    )]
    inputs: Vec<PathBuf>,
    /// A dataset snapshot to score (its files verified first).
    #[arg(long)]
    snapshot: Option<String>,
    /// Where the predictions go, relative to the storage root (part files and
    /// `_manifest.json`; an existing output is never overwritten).
    #[arg(long)]
    output: String,
    /// Columns copied next to the predictions (comma-separated).
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// Rows per call of the model.
    #[arg(long, default_value_t = mlops::store::DEFAULT_SCORE_BATCH_ROWS)]
    batch_rows: usize,
}

/// The storage-root path of a local file: its absolute path under `file:///`.
fn local_path(path: &Path) -> Result<String> {
    let absolute = std::fs::canonicalize(path).map_err(|e| {
        Error::invalid_input(
            format!("input {}", path.display()),
            format!("unreadable: {e}"),
        )
    })?;
    let text = absolute.to_str().ok_or_else(|| {
        Error::invalid_input(
            format!("input {}", path.display()),
            "the path is not valid UTF-8",
        )
    })?;
    Ok(text.trim_start_matches('/').to_owned())
}

/// Runs `mlops score`.
pub(crate) async fn run(config: &Path, args: ScoreArgs, json: bool) -> Result<()> {
    let (registry, _) = crate::models::registry(config, false)?;
    let loaded = crate::config::Config::load(config)?;
    let root = StoreRoot::open_with_options(&loaded.storage_root()?, loaded.storage_options()?)?;
    let selector: VersionSelector = args.version.parse()?;
    let (version, predictor) =
        crate::models::load_predictor(&registry, &args.model, &selector).await?;
    let source = match args.snapshot {
        Some(id) => ScoreSource::Snapshot(id),
        None => ScoreSource::FilesIn(
            StoreRoot::open("file:///")?,
            args.inputs
                .iter()
                .map(|p| local_path(p))
                .collect::<Result<_>>()?,
        ),
    };
    let mut job = ScoreJob::new(args.model.clone(), version.version, source, args.output);
    job.key_columns = args.keys;
    job.batch_rows = args.batch_rows;
    job.actor = "mlops-cli".to_owned();
    // A progress line for a person at a terminal; nothing in scripts or pipes.
    let bar = crate::progress::bar(
        json,
        0,
        "{spinner} scored {pos} rows ({per_sec}, {elapsed})",
    );
    let recorders = ScoreRecorders {
        tracker: Some(Arc::new(ObjectTracker::new(&root)) as Arc<dyn ExperimentTracker>),
        audit: Some(Arc::new(ObjectAuditLog::new(&root)) as Arc<dyn AuditLog>),
        progress: bar
            .clone()
            .map(|bar| ScoreProgress(Arc::new(move |rows| bar.set_position(rows)))),
    };
    let result = score_dataset(&root, predictor, &job, &recorders).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let manifest = result?;
    if json {
        let text = serde_json::to_string(&manifest).map_err(|e| Error::backend("serde_json", e))?;
        println!("{text}");
    } else {
        println!(
            "scored {} rows with {} version {} into {} ({} part{}); run {}",
            manifest.rows,
            manifest.model,
            manifest.version,
            job.output,
            manifest.parts.len(),
            if manifest.parts.len() == 1 { "" } else { "s" },
            manifest.run_id.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
