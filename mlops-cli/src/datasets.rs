//! `mlops datasets`: content-addressed dataset snapshots on the config's storage
//! root, as DVC users expect: `snapshot` stores files once per content and prints
//! the id a model's lineage names; `list` and `show` read manifests; `verify`
//! re-reads every byte against its digest (exit 3 when anything changed).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Subcommand;
use mlops::core::{Error, Result};
use mlops::store::{DatasetSnapshot, ObjectAuditLog, ObjectSnapshotStore, StoreRoot};

use crate::config::Config;

/// What `mlops datasets` does.
#[derive(Debug, Subcommand)]
pub(crate) enum DatasetsCommand {
    /// Snapshots local files: each stored once per content, the snapshot's id
    /// derived from their names, sizes and digests (the same files always give
    /// the same id). Recorded in the audit log.
    Snapshot {
        /// The files, in order (the order is part of the id). Each is named in
        /// the snapshot by the path as given.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// What the snapshot holds.
        #[arg(long, short, default_value = "")]
        description: String,
    },
    /// Every snapshot, newest first; fails naming any manifest that does not
    /// match its id.
    List,
    /// One snapshot's manifest: its files with their sizes and digests.
    Show {
        /// The snapshot id (64 hex digits).
        id: String,
    },
    /// Re-reads every file of a snapshot and checks it against its digest:
    /// exit 3 naming the file whose bytes changed or went missing.
    Verify {
        /// The snapshot id (64 hex digits).
        id: String,
    },
}

/// Who takes a snapshot from the command line: the user running it.
fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_default();
    if user.is_empty() {
        "cli".to_owned()
    } else {
        format!("cli:{user}")
    }
}

/// The name a file gets in the snapshot: its path as given, without a leading
/// `./`.
fn name_of(path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| {
        Error::invalid_input(
            format!("file {}", path.display()),
            "the path is not valid UTF-8",
        )
    })?;
    Ok(text.strip_prefix("./").unwrap_or(text).to_owned())
}

/// Each file's name and bytes; the first unreadable file is an error naming it.
fn read_files(files: &[PathBuf]) -> Result<Vec<(String, Bytes)>> {
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|e| {
                Error::invalid_input(
                    format!("file {}", path.display()),
                    format!("unreadable: {e}"),
                )
            })?;
            Ok((name_of(path)?, Bytes::from(bytes)))
        })
        .collect()
}

fn print_manifest(s: &DatasetSnapshot, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(s).map_err(|e| Error::backend("json", e))?
        );
        return Ok(());
    }
    println!("snapshot {}", s.id);
    println!(
        "created {} by {}",
        s.created_at.format("%Y-%m-%d %H:%M:%S"),
        s.created_by
    );
    if !s.description.is_empty() {
        println!("description: {}", s.description);
    }
    println!("{:>12}  {:<64}  FILE", "BYTES", "SHA-256");
    for f in &s.files {
        println!("{:>12}  {:<64}  {}", f.size, f.digest.hex(), f.name);
    }
    Ok(())
}

/// Runs a datasets command on the `config` file's storage root.
pub(crate) async fn run(config: &Path, command: DatasetsCommand, json: bool) -> Result<()> {
    let config = Config::load(config)?;
    let root = StoreRoot::open_with_options(&config.storage_root()?, config.storage_options()?)?;
    let snapshots = ObjectSnapshotStore::new(&root).with_actor(actor());
    match command {
        DatasetsCommand::Snapshot { files, description } => {
            // Every file is read before anything is stored: a bad path stores
            // nothing.
            let contents = read_files(&files)?;
            let snapshots = snapshots.with_audit(std::sync::Arc::new(ObjectAuditLog::new(&root)));
            let bytes: usize = contents.iter().map(|(_, b)| b.len()).sum();
            let bar = crate::progress::bar(
                json,
                0,
                &format!(
                    "{{spinner}} hashing and storing {} files ({bytes} bytes), {{elapsed}}",
                    contents.len()
                ),
            );
            let s = snapshots.snapshot_contents(contents, &description).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let s = s?;
            if json {
                print_manifest(&s, true)?;
            } else {
                let bytes: u64 = s.files.iter().map(|f| f.size).sum();
                println!("{}  ({} files, {bytes} bytes)", s.id, s.files.len());
            }
        }
        DatasetsCommand::List => {
            let all = snapshots.list().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&all).map_err(|e| Error::backend("json", e))?
                );
            } else {
                println!(
                    "{:<64}  {:<19}  {:>5}  {:>12}  DESCRIPTION",
                    "SNAPSHOT", "CREATED", "FILES", "BYTES"
                );
                for s in all {
                    let bytes: u64 = s.files.iter().map(|f| f.size).sum();
                    println!(
                        "{:<64}  {:<19}  {:>5}  {:>12}  {}",
                        s.id,
                        s.created_at.format("%Y-%m-%d %H:%M:%S"),
                        s.files.len(),
                        bytes,
                        s.description
                    );
                }
            }
        }
        DatasetsCommand::Show { id } => print_manifest(&snapshots.get(&id).await?, json)?,
        DatasetsCommand::Verify { id } => {
            let s = snapshots.resolve(&id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": s.id, "intact": true, "files": s.files.len()})
                );
            } else {
                println!("snapshot {} intact: {} files verified", s.id, s.files.len());
            }
        }
    }
    Ok(())
}
