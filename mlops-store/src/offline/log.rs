//! The commit log of a view: numbered, create-once commits, read in a bounded
//! number of requests however many ingestions happened.
//!
//! ```text
//! features/views/<view>/commits/<n>.json        commit n: the files it made visible
//! features/views/<view>/commits/HEAD            a hint: the number last committed
//! features/views/<view>/checkpoints/<n>.json    commits 1..=n together, every 64th
//! ```
//!
//! Commit numbers are claimed create-if-absent one after the other, so they have no
//! gaps. The hint may lag behind (a writer that crashed before writing it), never
//! run ahead: readers start from it and probe the numbers after it. A reader far
//! behind loads the latest checkpoint at or below the hint instead of every commit
//! (checkpoints are written by the ingestion that claims a multiple of 64, and
//! are only a shortcut: a missing one means reading the commits). Only a store
//! without a hint, written before there was one, is listed, once.

use mlops_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::ObjectOfflineStore;
use super::ingest::Commit;

/// Commits per checkpoint.
const CHECKPOINT_EVERY: u64 = 64;

/// Tries at claiming a commit number before an ingestion gives up (each lost
/// race means another ingestion committed, so only heavy contention gets here).
const MAX_COMMIT_ATTEMPTS: u32 = 64;

pub(super) fn commit_path(view: &str, n: u64) -> String {
    format!("features/views/{view}/commits/{n:020}.json")
}

fn head_path(view: &str) -> String {
    format!("features/views/{view}/commits/HEAD")
}

fn checkpoint_path(view: &str, n: u64) -> String {
    format!("features/views/{view}/checkpoints/{n:020}.json")
}

/// Commits `1..=upto`, in one object.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    upto: u64,
    commits: BTreeMap<u64, Commit>,
}

impl ObjectOfflineStore {
    /// Makes `commit` visible as the next commit of `view`: claims the number
    /// after the last create-if-absent, and on a lost race backs off and claims
    /// the next, at most [`MAX_COMMIT_ATTEMPTS`] times.
    pub(super) async fn claim_commit(&self, view: &str, commit: &Commit) -> Result<()> {
        let body = serde_json::to_vec_pretty(&commit)
            .map_err(|e| Error::invalid_input("commit", e.to_string()))?;
        let mut attempt = 0;
        loop {
            let next = self.last_commit(view).await? + 1;
            if self
                .root
                .put_if_absent(&commit_path(view, next), body.clone().into())
                .await?
            {
                self.committed(view, next).await;
                break;
            }
            // Another ingestion took this number: back off, then claim the next.
            attempt += 1;
            if attempt >= MAX_COMMIT_ATTEMPTS {
                return Err(Error::Unavailable {
                    what: format!("view {view}"),
                    reason: format!(
                        "no commit number could be claimed in {MAX_COMMIT_ATTEMPTS} attempts: \
                         too many concurrent ingestions; retry (the data files are written, \
                         uncommitted, and invisible)"
                    ),
                });
            }
            crate::cas::backoff(attempt).await;
        }
        Ok(())
    }

    /// The number of the last commit of `view` (0 for none).
    pub(super) async fn last_commit(&self, view: &str) -> Result<u64> {
        self.refresh(view).await?;
        Ok(self.cached_last(view))
    }

    /// Every commit of `view`, in order (read once, then cached).
    pub(super) async fn commits(&self, view: &str) -> Result<Vec<Commit>> {
        Ok(self
            .numbered_commits(view)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Every commit of `view` with its number, in order.
    pub(super) async fn numbered_commits(&self, view: &str) -> Result<Vec<(u64, Commit)>> {
        self.refresh(view).await?;
        let cache = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cache
            .get(view)
            .map(|m| m.iter().map(|(n, c)| (*n, c.clone())).collect())
            .unwrap_or_default())
    }

    /// Reads the commits made since the cache was filled.
    async fn refresh(&self, view: &str) -> Result<()> {
        let known = self.cached_last(view);
        match self.head_hint(view).await {
            Some(hint) => {
                if hint > known + CHECKPOINT_EVERY {
                    self.load_checkpoint(view, hint).await?;
                }
                let mut n = self.cached_last(view);
                // Up to the hint every commit exists; past it, probe until one
                // does not.
                loop {
                    let next = n + 1;
                    match self.load_commit(view, next).await? {
                        true => n = next,
                        false if next <= hint => {
                            return Err(Error::integrity(
                                self.root
                                    .describe(&self.root.path(&commit_path(view, next))),
                                format!("commit {next} is missing below the last one, {hint}"),
                            ));
                        }
                        false => break,
                    }
                }
            }
            None => {
                let dir = format!("features/views/{view}/commits");
                for n in self.root.list_numbered(&dir, ".json").await? {
                    if n > known {
                        self.load_commit(view, n).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// After claiming commit `n`: the hint, and every 64th commit a checkpoint.
    /// Both are shortcuts for readers; failing to write them loses nothing.
    pub(super) async fn committed(&self, view: &str, n: u64) {
        let _ = self
            .root
            .put(&head_path(view), n.to_string().into_bytes().into())
            .await;
        if !n.is_multiple_of(CHECKPOINT_EVERY) {
            return;
        }
        let Ok(all) = self.numbered_commits(view).await else {
            return;
        };
        let checkpoint = Checkpoint {
            upto: n,
            commits: all.into_iter().filter(|(m, _)| *m <= n).collect(),
        };
        if checkpoint.commits.len() as u64 != n {
            return;
        }
        if let Ok(bytes) = serde_json::to_vec(&checkpoint) {
            let _ = self
                .root
                .put_if_absent(&checkpoint_path(view, n), bytes.into())
                .await;
        }
    }

    fn cached_last(&self, view: &str) -> u64 {
        let cache = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(view)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0)
    }

    async fn head_hint(&self, view: &str) -> Option<u64> {
        let bytes = self.root.get_opt(&head_path(view)).await.ok()??;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// Reads commit `n` into the cache; `false` when there is none.
    async fn load_commit(&self, view: &str, n: u64) -> Result<bool> {
        let relative = commit_path(view, n);
        let Some(bytes) = self.root.get_opt(&relative).await? else {
            return Ok(false);
        };
        let commit: Commit = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(
                self.root.describe(&self.root.path(&relative)),
                format!("not a valid commit: {e}"),
            )
        })?;
        self.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(view.to_owned())
            .or_default()
            .insert(n, commit);
        Ok(true)
    }

    /// Fills the cache from the latest checkpoint at or below `hint`, trying the
    /// one before when it is missing (its writer may have crashed).
    async fn load_checkpoint(&self, view: &str, hint: u64) -> Result<()> {
        let latest = hint / CHECKPOINT_EVERY * CHECKPOINT_EVERY;
        for upto in [latest, latest.saturating_sub(CHECKPOINT_EVERY)] {
            if upto == 0 || upto <= self.cached_last(view) {
                return Ok(());
            }
            let relative = checkpoint_path(view, upto);
            let Some(bytes) = self.root.get_opt(&relative).await? else {
                continue;
            };
            let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
                Error::integrity(
                    self.root.describe(&self.root.path(&relative)),
                    format!("not a valid checkpoint: {e}"),
                )
            })?;
            if checkpoint.upto != upto || checkpoint.commits.len() as u64 != upto {
                return Err(Error::integrity(
                    self.root.describe(&self.root.path(&relative)),
                    format!(
                        "a checkpoint of commits 1..={upto} holds {} commits",
                        checkpoint.commits.len()
                    ),
                ));
            }
            self.commits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(view.to_owned())
                .or_default()
                .extend(checkpoint.commits);
            return Ok(());
        }
        Ok(())
    }
}
