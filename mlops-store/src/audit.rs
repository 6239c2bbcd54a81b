//! The audit log on object storage: one JSON object per entry, at
//! `audit/<sequence>.json`, each sealed with the previous entry's hash.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use mlops_core::audit::{
    AuditEntry, AuditEvent, AuditLog, ChainProblem, ChainVerdict, verify_chain,
};
use mlops_core::{Error, Result};
use tokio::sync::Mutex;

use crate::cas::backoff;
use crate::root::StoreRoot;

/// The longest actor, action or target accepted, in bytes.
pub const MAX_AUDIT_FIELD_BYTES: usize = 1024;
/// The largest details map accepted, in bytes of JSON.
pub const MAX_AUDIT_DETAILS_BYTES: usize = 64 * 1024;
const MAX_ATTEMPTS: u32 = 256;

/// An append-only, hash-chained audit log under a [`StoreRoot`].
///
/// Sequence numbers are taken with create-if-absent writes, so concurrent writers
/// in any number of processes never give two entries one number and the chain never
/// forks: a writer that loses a race re-reads the head, re-seals its entry after it
/// and tries the next number.
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_core::audit::{AuditEvent, AuditLog, ChainVerdict};
/// use mlops_store::{ObjectAuditLog, StoreRoot};
///
/// let log = ObjectAuditLog::new(&StoreRoot::open("memory://")?);
/// log.append(AuditEvent::new("alice", "register", "model fraud version 1")).await?;
/// assert!(matches!(log.verify().await?, ChainVerdict::Intact { entries: 1, .. }));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectAuditLog {
    root: StoreRoot,
    /// The last entry this instance knows of: (sequence, hash).
    head: Arc<Mutex<Option<(u64, String)>>>,
}

fn entry_path(seq: u64) -> String {
    format!("audit/{seq:020}.json")
}

impl ObjectAuditLog {
    /// The log under `root`.
    pub fn new(root: &StoreRoot) -> Self {
        Self {
            root: root.clone(),
            head: Arc::new(Mutex::new(None)),
        }
    }

    /// The root the log is under.
    pub(crate) fn root(&self) -> &StoreRoot {
        &self.root
    }

    /// Sequence numbers of every stored entry, ascending.
    async fn stored_sequences(&self) -> Result<Vec<u64>> {
        self.root.list_numbered("audit", ".json").await
    }

    async fn read_entry(&self, seq: u64) -> Result<Option<AuditEntry>> {
        let relative = entry_path(seq);
        let Some(bytes) = self.root.get_opt(&relative).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::integrity(
                self.root.describe(&self.root.path(&relative)),
                format!("not a valid audit entry: {e}"),
            )
        })
    }

    /// The current head: from the cache (or one listing), then forward past any
    /// entries other writers added.
    async fn find_head(&self, cached: Option<(u64, String)>) -> Result<Option<(u64, String)>> {
        let mut head = match cached {
            Some(h) => Some(h),
            None => match self.stored_sequences().await?.last() {
                None => None,
                Some(&seq) => {
                    let e = self.read_entry(seq).await?.ok_or_else(|| {
                        Error::conflict(entry_path(seq), "the entry vanished while being read")
                    })?;
                    Some((e.seq, e.hash))
                }
            },
        };
        loop {
            let next = head.as_ref().map_or(1, |h| h.0 + 1);
            match self.read_entry(next).await? {
                Some(e) => head = Some((e.seq, e.hash)),
                None => return Ok(head),
            }
        }
    }
}

fn check_event(event: &AuditEvent) -> Result<()> {
    for (name, value) in [
        ("actor", &event.actor),
        ("action", &event.action),
        ("target", &event.target),
    ] {
        if value.trim().is_empty() {
            return Err(Error::invalid_input(
                "audit event",
                format!("{name} is empty"),
            ));
        }
        if value.len() > MAX_AUDIT_FIELD_BYTES {
            return Err(Error::invalid_input(
                "audit event",
                format!(
                    "{name} is {} bytes; the limit is {MAX_AUDIT_FIELD_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    let details = serde_json::to_vec(&event.details).map_or(usize::MAX, |v| v.len());
    if details > MAX_AUDIT_DETAILS_BYTES {
        return Err(Error::invalid_input(
            "audit event",
            format!("details are {details} bytes; the limit is {MAX_AUDIT_DETAILS_BYTES}"),
        ));
    }
    Ok(())
}

#[async_trait]
impl AuditLog for ObjectAuditLog {
    async fn append(&self, event: AuditEvent) -> Result<AuditEntry> {
        check_event(&event)?;
        let mut cache = self.head.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let head = self.find_head(cache.clone()).await?;
            let (seq, prev) = match &head {
                Some((s, h)) => (s + 1, h.clone()),
                None => (1, AuditEntry::GENESIS_HASH.to_owned()),
            };
            let entry = AuditEntry::seal(seq, Utc::now(), event.clone(), &prev);
            let bytes = serde_json::to_vec_pretty(&entry)
                .map_err(|e| Error::invalid_input("audit event", e.to_string()))?;
            match self
                .root
                .put_if_absent(&entry_path(seq), bytes.into())
                .await
            {
                Ok(true) => {
                    *cache = Some((seq, entry.hash.clone()));
                    return Ok(entry);
                }
                Ok(false) => {
                    *cache = head;
                    backoff(attempt.min(3)).await;
                }
                Err(e) => {
                    // The write may or may not have happened: forget the cache so the
                    // next append re-reads the head.
                    *cache = None;
                    return Err(e);
                }
            }
        }
        Err(Error::conflict(
            "audit log",
            format!("still contended after {MAX_ATTEMPTS} attempts"),
        ))
    }

    async fn entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        let mut seq = from_seq.max(1);
        while out.len() < limit {
            match self.read_entry(seq).await? {
                Some(e) => out.push(e),
                None => break,
            }
            seq += 1;
        }
        Ok(out)
    }

    async fn verify(&self) -> Result<ChainVerdict> {
        let mut entries = Vec::new();
        for seq in self.stored_sequences().await? {
            match self.read_entry(seq).await {
                Ok(Some(e)) if e.seq == seq => entries.push(e),
                // An entry stored under another entry's number was moved.
                Ok(Some(_)) => {
                    return Ok(ChainVerdict::Broken {
                        seq,
                        problem: ChainProblem::Reordered,
                    });
                }
                Ok(None) => {
                    return Ok(ChainVerdict::Broken {
                        seq,
                        problem: ChainProblem::Missing,
                    });
                }
                Err(Error::Integrity { .. }) => {
                    return Ok(ChainVerdict::Broken {
                        seq,
                        problem: ChainProblem::Altered,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(verify_chain(&entries))
    }
}
