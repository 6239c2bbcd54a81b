//! `mlops audit` and `mlops runs`: the audit trail and the experiment runs on
//! the config's storage root, read-only.

use std::path::Path;

use clap::Subcommand;
use mlops::core::audit::{AuditLog, ChainVerdict};
use mlops::core::tracking::{ExperimentTracker, RunQuery};
use mlops::core::{Error, Result};
use mlops::store::{ObjectAuditLog, ObjectTracker, StoreRoot};

use crate::config::Config;

/// What `mlops audit` does.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Checks the whole hash chain; exit 3 at the first entry changed, removed or
    /// reordered.
    Verify,
    /// The last entries.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        entries: usize,
    },
}

/// What `mlops runs` does.
#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// Runs, newest first.
    List {
        /// Only this experiment's.
        #[arg(long)]
        experiment: Option<String>,
    },
    /// One run: parameters, tags, latest metrics, artifacts.
    Show {
        /// The run id.
        id: String,
    },
}

fn root(config: &Path) -> Result<StoreRoot> {
    let config = Config::load(config)?;
    StoreRoot::open_with_options(&config.storage_root()?, config.storage_options()?)
}

/// Runs an audit command on the `config` file's storage root.
pub(crate) async fn audit(config: &Path, command: AuditCommand, json: bool) -> Result<()> {
    let log = ObjectAuditLog::new(&root(config)?);
    let verdict = log.verify().await?;
    match command {
        AuditCommand::Verify => match verdict {
            ChainVerdict::Intact { entries, head } => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"intact": true, "entries": entries, "head": head})
                    );
                } else {
                    println!(
                        "audit log intact: {entries} entries, head {}",
                        head.as_deref().unwrap_or("(empty)")
                    );
                }
                Ok(())
            }
            ChainVerdict::Broken { seq, problem } => Err(Error::integrity(
                "audit log",
                format!("the chain breaks at entry {seq}: {problem}"),
            )),
        },
        AuditCommand::Tail { entries } => {
            let total = match verdict {
                ChainVerdict::Intact { entries, .. } => entries,
                ChainVerdict::Broken { seq, .. } => seq.saturating_sub(1),
            };
            let from = total.saturating_sub(entries as u64) + 1;
            let tail = log.entries(from, entries).await?;
            if json {
                let out: Vec<_> = tail
                    .iter()
                    .map(|e| {
                        serde_json::json!({"seq": e.seq, "time": e.time.to_rfc3339(), "actor": e.event.actor,
                                           "action": e.event.action, "target": e.event.target,
                                           "details": e.event.details})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for e in tail {
                    println!(
                        "{:>6}  {}  {:<16} {:<20} {}",
                        e.seq,
                        e.time.format("%Y-%m-%d %H:%M:%S"),
                        e.event.actor,
                        e.event.action,
                        e.event.target
                    );
                }
            }
            Ok(())
        }
    }
}

/// Runs a runs command on the `config` file's storage root.
pub(crate) async fn runs(config: &Path, command: RunsCommand, json: bool) -> Result<()> {
    let tracker = ObjectTracker::new(&root(config)?);
    match command {
        RunsCommand::List { experiment } => {
            let query = RunQuery {
                experiment,
                ..RunQuery::default()
            };
            let mut runs = tracker.search_runs(&query).await?;
            runs.sort_by_key(|r| std::cmp::Reverse(r.start_time));
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&runs).map_err(|e| Error::backend("json", e))?
                );
            } else {
                println!(
                    "{:<34} {:<20} {:<9} {:<20} METRICS",
                    "RUN", "EXPERIMENT", "STATUS", "STARTED"
                );
                for r in runs {
                    let metrics: Vec<String> = r
                        .latest_metrics
                        .iter()
                        .map(|(k, v)| format!("{k}={v:.4}"))
                        .collect();
                    println!(
                        "{:<34} {:<20} {:<9} {:<20} {}",
                        r.id,
                        r.experiment,
                        format!("{:?}", r.status).to_lowercase(),
                        r.start_time.format("%Y-%m-%d %H:%M:%S"),
                        metrics.join(" ")
                    );
                }
            }
        }
        RunsCommand::Show { id } => {
            let run = tracker.get_run(&id).await?;
            println!(
                "{}",
                if json {
                    serde_json::to_string(&run)
                } else {
                    serde_json::to_string_pretty(&run)
                }
                .map_err(|e| Error::backend("json", e))?
            );
        }
    }
    Ok(())
}
