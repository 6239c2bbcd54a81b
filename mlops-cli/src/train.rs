//! `mlops train --config mlops.toml JOB.toml`: a model trained on a training
//! set the feature store builds point-in-time, tracked as a run, its training
//! set kept as a dataset snapshot, and registered with that lineage.
//!
//! The job file:
//!
//! ```toml
//! model = "fraud"                      # the registry name it is registered under
//! experiment = "fraud"                 # the tracker's experiment (default: model)
//! task = "binary_classification"       # or "multiclass_classification", "regression"
//! label = "is_fraud"                   # a column of the entities file
//! entities = "transactions.parquet"    # join keys, timestamps and the label
//! timestamp_column = "event_timestamp" # the entities' time (the default)
//! features = ["card:spend_7d", "card:txn_count_7d"]
//! alias = "challenger"                 # optional: pointed at the new version
//!
//! [network]                            # optional: linear (the default) or an MLP
//! hidden = [64, 64]
//!
//! [training]                           # optional: each defaults to the SDK's
//! epochs = 20
//! batch_size = 256
//! learning_rate = 0.001
//! validation_fraction = 0.2
//! seed = 0
//! ```
//!
//! The entities file's other columns (keys, timestamps) are never features. A
//! relative `entities` path is read from the job file's directory. Nothing is
//! registered unless training succeeds; the run ends `failed` when it does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlops::core::feature::{FeatureRef, HistoricalOptions, OfflineFeatureStore as _};
use mlops::core::model::ModelRegistry as _;
use mlops::core::tracking::{ExperimentTracker as _, MetricPoint, RunStatus};
use mlops::core::{Error, Result, Task, Trainer as _};
use mlops::store::{
    InMemoryOnlineStore, ObjectAuditLog, ObjectFeatureStore, ObjectSnapshotStore, ObjectTracker,
};
use mlops::train::{ModelSpec, Progress, TabularTrainer, TrainConfig};
use serde::Deserialize;

use crate::config::Config;
use crate::io::read_parquet;

/// The job file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Job {
    model: String,
    experiment: Option<String>,
    task: Task,
    label: String,
    entities: PathBuf,
    #[serde(default = "default_timestamp_column")]
    timestamp_column: String,
    features: Vec<String>,
    alias: Option<String>,
    #[serde(default)]
    network: Network,
    #[serde(default)]
    training: Training,
}

fn default_timestamp_column() -> String {
    "event_timestamp".into()
}

/// `[network]`: hidden layer widths of an MLP; none: a linear model.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Network {
    #[serde(default)]
    hidden: Vec<usize>,
}

/// `[training]`: what overrides the SDK's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Training {
    epochs: Option<usize>,
    batch_size: Option<usize>,
    learning_rate: Option<f64>,
    validation_fraction: Option<f64>,
    seed: Option<u64>,
}

/// Reads and checks the job file; errors name the file, the key and the line.
fn load_job(path: &Path) -> Result<Job> {
    let what = format!("training job {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid_input(what.clone(), format!("unreadable: {e}")))?;
    let mut job: Job =
        toml::from_str(&text).map_err(|e| Error::invalid_input(what.clone(), e.to_string()))?;
    if job.features.is_empty() {
        return Err(Error::invalid_input(
            format!("{what}: features"),
            "lists no feature (view:feature)",
        ));
    }
    if job.entities.is_relative() {
        let dir = path.parent().unwrap_or(Path::new("."));
        job.entities = dir.join(&job.entities);
    }
    Ok(job)
}

/// The trainer's config for `job` (checked by the trainer itself on fit).
fn train_config(job: &Job, progress: Progress, exclude: Vec<String>) -> TrainConfig {
    trainer_config(job.task, &job.network, &job.training, progress, exclude)
}

/// The trainer's config for a task, `[network]` and `[training]` (of a training
/// job or a `[[retrain]]` section).
pub(crate) fn trainer_config(
    task: Task,
    network: &Network,
    t: &Training,
    progress: Progress,
    exclude: Vec<String>,
) -> TrainConfig {
    let spec = if network.hidden.is_empty() {
        ModelSpec::Linear
    } else {
        ModelSpec::mlp(network.hidden.clone())
    };
    let mut c = TrainConfig::new(task, spec);
    if let Some(v) = t.epochs {
        c.epochs = v;
    }
    if let Some(v) = t.batch_size {
        c.batch_size = v;
    }
    if let Some(v) = t.learning_rate {
        c.learning_rate = v;
    }
    if let Some(v) = t.validation_fraction {
        c.validation_fraction = v;
    }
    if let Some(v) = t.seed {
        c.seed = v;
    }
    c.exclude = exclude;
    c.progress = progress;
    c
}

/// Runs the training job `job_path` on the `config` file's storage root.
pub(crate) async fn run(config_path: &Path, job_path: &Path, json: bool) -> Result<()> {
    let job = load_job(job_path)?;
    let features: Vec<FeatureRef> = job
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.parse().map_err(|e| {
                Error::invalid_input(format!("training job features[{i}]"), format!("{f:?}: {e}"))
            })
        })
        .collect::<Result<_>>()?;
    let entities = read_parquet(&job.entities)?;
    if entities.schema().field_with_name(&job.label).is_err() {
        return Err(Error::invalid_input(
            format!("entities file {}", job.entities.display()),
            format!("has no label column {:?}", job.label),
        ));
    }
    // Keys and timestamps of the entities are not features.
    let exclude: Vec<String> = entities
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| *n != job.label)
        .collect();
    let config = Config::load(config_path)?;
    let root = mlops::store::StoreRoot::open_with_options(
        &config.storage_root()?,
        config.storage_options()?,
    )?;
    // Only the offline side is read: no online store is opened.
    let store = ObjectFeatureStore::new(&root, Arc::new(InMemoryOnlineStore::new()));
    let mut options = HistoricalOptions::default();
    options.event_timestamp_column = job.timestamp_column.clone();
    let training = store
        .get_historical_features(entities, &features, options)
        .await?;
    let rows = training.num_rows();

    let audit = Arc::new(ObjectAuditLog::new(&root));
    let snapshot = ObjectSnapshotStore::new(&root)
        .with_audit(audit.clone())
        .with_actor("mlops-cli")
        .snapshot_batches(
            std::slice::from_ref(&training),
            &format!("training set of {}", job.model),
        )
        .await?;
    let tracker = ObjectTracker::new(&root);
    let experiment = job.experiment.clone().unwrap_or_else(|| job.model.clone());
    let run = tracker
        .start_run(&experiment, Some(&job.model), BTreeMap::new())
        .await?;
    let progress = if json {
        Progress::Hidden
    } else {
        Progress::Auto
    };
    let trainer = TabularTrainer::new(train_config(&job, progress, exclude));
    let label = job.label.clone();
    let fitted = tokio::task::spawn_blocking(move || trainer.fit(&training, &label))
        .await
        .map_err(|e| Error::backend("training", e.to_string()))
        .and_then(|r| r);
    let fitted = match fitted {
        Ok(f) => f,
        Err(e) => {
            // The run records the failure; the error is what the user sees.
            let _ = tracker.end_run(&run.id, RunStatus::Failed).await;
            return Err(e);
        }
    };
    let mut params = fitted.metadata.params.clone();
    params.insert("dataset_snapshot".into(), snapshot.id.clone());
    params.insert("rows".into(), rows.to_string());
    params.insert("features".into(), job.features.join(","));
    tracker.log_params(&run.id, params).await?;
    let now = mlops::chrono::Utc::now();
    let points = fitted
        .report
        .metrics
        .iter()
        .map(|(k, v)| MetricPoint {
            key: format!("val_{k}"),
            value: *v,
            step: 0,
            timestamp: now,
        })
        .collect();
    tracker.log_metrics(&run.id, points).await?;

    let (registry, _) = crate::models::registry(config_path, false)?;
    let mut metadata = fitted.metadata.clone();
    metadata.lineage.run_id = Some(run.id.clone());
    metadata.lineage.dataset_snapshot_id = Some(snapshot.id.clone());
    metadata.lineage.feature_refs = features;
    let version = match registry
        .register(&job.model, fitted.artifact, metadata)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            let _ = tracker.end_run(&run.id, RunStatus::Failed).await;
            return Err(e);
        }
    };
    if let Some(alias) = &job.alias {
        registry
            .set_alias(&job.model, alias, version.version)
            .await?;
    }
    tracker.end_run(&run.id, RunStatus::Finished).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": job.model,
                "version": version.version,
                "alias": job.alias,
                "run": run.id,
                "dataset_snapshot": snapshot.id,
                "rows": rows,
                "metrics": fitted.report.metrics,
            })
        );
    } else {
        let metrics: Vec<String> = fitted
            .report
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        println!(
            "registered {} version {}{} trained on {rows} rows (run {}, snapshot {}): {}",
            job.model,
            version.version,
            job.alias
                .as_ref()
                .map_or(String::new(), |a| format!(" as @{a}")),
            run.id,
            snapshot.id,
            metrics.join(" ")
        );
    }
    Ok(())
}
