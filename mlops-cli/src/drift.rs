//! `mlops drift check`: a Parquet file of current data against a reference,
//! either another Parquet file (fitted here) or the input reference a
//! registered model version carries (what it was trained on), with the SDK's
//! table drift detector: per-feature tests and distances, and the overall
//! verdict.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use mlops::core::drift::{DriftDetector, DriftReport, TableDriftConfig, TableDriftDetector};
use mlops::core::model::VersionSelector;
use mlops::core::{Error, Result};

use crate::io::read_parquet;

/// What `mlops drift` does.
#[derive(Debug, Subcommand)]
pub(crate) enum DriftCommand {
    /// Compares `--current` with `--reference` (a Parquet file) or with the
    /// input reference of `--model`'s version. Exit 0 with the report; with
    /// `--fail-on-drift`, exit 4 when the data drifted.
    Check {
        /// The reference data, a Parquet file.
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        reference: Option<PathBuf>,
        /// A registered model whose version's input reference is the reference
        /// (read from the config's registry).
        #[arg(long)]
        model: Option<String>,
        /// With `--model`: a number, an alias (`@champion`) or `latest`.
        #[arg(long, default_value = "@champion", requires = "model")]
        version: String,
        /// The current data, a Parquet file.
        #[arg(long)]
        current: PathBuf,
        /// With `--reference`: only these columns (comma-separated); default
        /// every column of a supported type.
        #[arg(long, value_delimiter = ',', conflicts_with = "model")]
        columns: Vec<String>,
        /// Exit 4 when the data drifted (for scripts and CronJobs).
        #[arg(long)]
        fail_on_drift: bool,
    },
}

/// The exit code of a drift found with `--fail-on-drift`.
pub(crate) const DRIFT_EXIT: u8 = 4;

/// The outcome of a command: whether it should exit with [`DRIFT_EXIT`].
pub(crate) struct Drifted(pub(crate) bool);

/// The input reference of `model` at `version` in the config's registry.
async fn model_reference(
    config: &Path,
    model: &str,
    version: &str,
) -> Result<Arc<dyn DriftDetector>> {
    let (registry, _) = crate::models::registry(config, false)?;
    let selector: VersionSelector = version.parse()?;
    let (version, predictor) = crate::models::load_predictor(&registry, model, &selector).await?;
    let number = version.version;
    predictor.input_drift().ok_or_else(|| {
        Error::invalid_input(
            format!("model {model} version {number}"),
            "it carries no input drift reference (trained with drift_reference off?); \
             give --reference FILE.parquet instead",
        )
    })
}

fn print_report(report: &DriftReport, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| Error::backend("json", e))?
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:>12} {:>10} {:>10}  DRIFT",
        "FEATURE", "METHOD", "STATISTIC", "P-VALUE", "THRESHOLD"
    );
    for f in &report.features {
        let p = f
            .p_value
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.4}"));
        println!(
            "{:<24} {:<20} {:>12.4} {:>10} {:>10.4}  {}{}",
            f.feature,
            f.method.to_string(),
            f.statistic,
            p,
            f.threshold,
            if f.drifted { "yes" } else { "no" },
            f.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
        );
    }
    println!(
        "overall: {} ({} of {} features drifted; {} reference rows, {} current rows)",
        if report.overall.drifted {
            "DRIFT"
        } else {
            "no drift"
        },
        report.overall.drifted_features,
        report.features.len(),
        report.reference_rows,
        report.current_rows
    );
    Ok(())
}

/// Runs a drift command; `config` is read only for `--model`.
pub(crate) async fn run(config: &Path, command: DriftCommand, json: bool) -> Result<Drifted> {
    match command {
        DriftCommand::Check {
            reference,
            model,
            version,
            current,
            columns,
            fail_on_drift,
        } => {
            let current = read_parquet(&current)?;
            let detector: Arc<dyn DriftDetector> = match (reference, model) {
                (Some(path), None) => {
                    let reference = read_parquet(&path)?;
                    let mut c = TableDriftConfig::default();
                    if !columns.is_empty() {
                        c.columns = Some(columns);
                    }
                    Arc::new(
                        tokio::task::spawn_blocking(move || {
                            TableDriftDetector::fit(&reference, &c)
                        })
                        .await
                        .map_err(|e| Error::backend("drift", e.to_string()))??,
                    )
                }
                (None, Some(model)) => model_reference(config, &model, &version).await?,
                _ => {
                    return Err(Error::invalid_input(
                        "drift check",
                        "give exactly one of --reference FILE.parquet and --model NAME",
                    ));
                }
            };
            let report = tokio::task::spawn_blocking(move || detector.detect(&current))
                .await
                .map_err(|e| Error::backend("drift", e.to_string()))??;
            print_report(&report, json)?;
            Ok(Drifted(fail_on_drift && report.overall.drifted))
        }
    }
}
