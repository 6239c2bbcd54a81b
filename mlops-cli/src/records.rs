//! `mlops audit` and `mlops runs`: the audit trail and the experiment runs on
//! the config's storage root, read-only.

use std::path::Path;

use clap::Subcommand;
use mlops::core::audit::{AuditLog, ChainVerdict};
use mlops::core::tracking::{ExperimentTracker, RunQuery};
use mlops::core::{Error, Result};
use mlops::store::{AnchoredVerdict, ObjectAuditLog, ObjectTracker, StoreRoot};

use crate::config::Config;

/// What `mlops audit` does.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Checks the whole hash chain, and every anchor against it with the
    /// `[registry]` trusted keys; exit 3 at the first entry changed, removed or
    /// reordered, or an anchor broken (entries cut off, the tail rewritten, a
    /// signature that does not verify).
    Verify,
    /// Signs the chain's head with the `[registry]` signing key and stores it
    /// as an anchor: later truncation or a rewrite of the tail then fails
    /// `verify`. Run it periodically (a CronJob).
    Anchor,
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

/// `mlops audit anchor`: the head signed with the `[registry]` signing key.
async fn anchor(config_path: &Path, log: &ObjectAuditLog, json: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    let (id, key) = config.registry_options(true)?.signing_key.ok_or_else(|| {
        Error::invalid_input(
            "config registry.signing_key",
            "not set: nothing to sign with",
        )
    })?;
    let a = log.anchor(&id, &key).await?;
    if json {
        let line = serde_json::json!({"seq": a.seq, "hash": a.hash, "at": a.at.to_rfc3339(), "key_id": a.key_id});
        println!("{line}");
    } else {
        println!(
            "anchored entry {} (hash {}) with key '{}'",
            a.seq, a.hash, a.key_id
        );
    }
    Ok(())
}

/// The anchors checked with the `[registry]` trusted keys: how many, or
/// the integrity error naming the broken one. Without trusted keys, none.
async fn anchors(config_path: &Path, log: &ObjectAuditLog) -> Result<Option<(usize, Option<u64>)>> {
    let trusted = Config::load(config_path)?.trusted_keys()?;
    if trusted.is_empty() {
        return Ok(None);
    }
    match log.verify_anchored(&trusted).await? {
        AnchoredVerdict::Intact {
            anchors,
            latest_anchor,
            ..
        } => Ok(Some((anchors, latest_anchor))),
        AnchoredVerdict::Broken { reason } => Err(Error::integrity("audit log", reason)),
    }
}

/// Runs an audit command on the `config` file's storage root.
pub(crate) async fn audit(config: &Path, command: AuditCommand, json: bool) -> Result<()> {
    let log = ObjectAuditLog::new(&root(config)?);
    if matches!(command, AuditCommand::Anchor) {
        return anchor(config, &log, json).await;
    }
    let verdict = log.verify().await?;
    match command {
        AuditCommand::Anchor => Ok(()),
        AuditCommand::Verify => match verdict {
            ChainVerdict::Intact { entries, head } => {
                let anchored = anchors(config, &log).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"intact": true, "entries": entries, "head": head,
                                           "anchors_checked": anchored.map(|a| a.0),
                                           "latest_anchor": anchored.and_then(|a| a.1)})
                    );
                } else {
                    println!(
                        "audit log intact: {entries} entries, head {}",
                        head.as_deref().unwrap_or("(empty)")
                    );
                    match anchored {
                        Some((n, latest)) => println!(
                            "{n} anchors hold (latest: entry {})",
                            latest.map_or_else(|| "none".into(), |l| l.to_string())
                        ),
                        None => println!("anchors not checked: [registry] names no trusted key"),
                    }
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
