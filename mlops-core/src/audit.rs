//! A tamper-evident, append-only audit log: who did what to which model or data.
//!
//! Every entry holds the hash of the previous one, so altering, removing or
//! reordering any entry breaks the chain from there on. The hashing and the chain
//! check live here, written once, so every [`AuditLog`] implementation agrees on them.
//!
//! ```
//! use mlops_core::audit::{verify_chain, AuditEntry, AuditEvent, ChainVerdict};
//!
//! let first = AuditEntry::seal(1, chrono::Utc::now(), AuditEvent::new("ci", "register", "model fraud v1"), AuditEntry::GENESIS_HASH);
//! let second = AuditEntry::seal(2, chrono::Utc::now(), AuditEvent::new("ci", "set_alias", "model fraud champion"), &first.hash);
//! assert_eq!(verify_chain([&first, &second]), ChainVerdict::Intact { entries: 2, head: Some(second.hash.clone()) });
//!
//! let mut forged = second.clone();
//! forged.event.actor = "mallory".into();
//! assert!(matches!(verify_chain([&first, &forged]), ChainVerdict::Broken { seq: 2, .. }));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::Result;

/// What happened: the part of an entry the caller supplies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Who did it (a user, a service account, `retrain-loop`).
    pub actor: String,
    /// What was done, e.g. `register`, `set_alias`, `ingest`.
    pub action: String,
    /// To what, e.g. `model fraud version 3`.
    pub target: String,
    /// Further facts, e.g. the digest, the previous alias target, the reason.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// An event without details.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// One sealed entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When it was appended.
    pub time: DateTime<Utc>,
    /// What happened.
    pub event: AuditEvent,
    /// The previous entry's hash ([`AuditEntry::GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) of this entry's content including `prev_hash`.
    pub hash: String,
}

/// The fields hashed, in a fixed order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a DateTime<Utc>,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    details: &'a BTreeMap<String, String>,
    prev_hash: &'a str,
}

impl AuditEntry {
    /// The `prev_hash` of the first entry.
    pub const GENESIS_HASH: &'static str =
        "0000000000000000000000000000000000000000000000000000000000000000";

    /// Builds entry `seq` after the entry whose hash is `prev_hash`, computing its hash.
    pub fn seal(seq: u64, time: DateTime<Utc>, event: AuditEvent, prev_hash: &str) -> Self {
        let hash = Self::compute_hash(seq, &time, &event, prev_hash);
        Self {
            seq,
            time,
            event,
            prev_hash: prev_hash.to_owned(),
            hash,
        }
    }

    /// The hash of an entry with these contents: SHA-256 over a canonical JSON
    /// encoding of `seq`, `time`, the event's fields (details sorted by key) and
    /// `prev_hash`, in that order.
    pub fn compute_hash(
        seq: u64,
        time: &DateTime<Utc>,
        event: &AuditEvent,
        prev_hash: &str,
    ) -> String {
        let hashed = Hashed {
            seq,
            time,
            actor: &event.actor,
            action: &event.action,
            target: &event.target,
            details: &event.details,
            prev_hash,
        };
        // Serializing plain strings, integers and a BTreeMap into a Vec cannot fail.
        let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// Whether the stored hash matches the entry's contents.
    pub fn hash_is_valid(&self) -> bool {
        Self::compute_hash(self.seq, &self.time, &self.event, &self.prev_hash) == self.hash
    }
}

/// Why a chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainProblem {
    /// The entry's contents do not match its hash.
    Altered,
    /// An entry with this sequence number is absent.
    Missing,
    /// Entries are out of order (a sequence number repeats or goes back).
    Reordered,
    /// The entry's `prev_hash` is not the previous entry's hash: an entry before it
    /// was replaced by a different, self-consistent one.
    BrokenLink,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Altered => "altered",
            Self::Missing => "missing",
            Self::Reordered => "reordered",
            Self::BrokenLink => "broken link",
        })
    }
}

/// The result of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainVerdict {
    /// Every entry checks out.
    Intact {
        /// How many entries were checked.
        entries: u64,
        /// The last entry's hash, `None` for an empty log.
        head: Option<String>,
    },
    /// The first problem found.
    Broken {
        /// The sequence number where the chain first breaks.
        seq: u64,
        /// What is wrong there.
        problem: ChainProblem,
    },
}

/// Checks entries given in stored order: sequence numbers 1, 2, 3... without gaps,
/// each hash valid, each `prev_hash` equal to the previous entry's hash. Reports the
/// first problem.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> ChainVerdict {
    let mut prev_hash: String = AuditEntry::GENESIS_HASH.to_owned();
    let mut count = 0u64;
    for (expected_seq, entry) in (1u64..).zip(entries) {
        if entry.seq != expected_seq {
            let problem = if entry.seq > expected_seq {
                ChainProblem::Missing
            } else {
                ChainProblem::Reordered
            };
            return ChainVerdict::Broken {
                seq: expected_seq,
                problem,
            };
        }
        if !entry.hash_is_valid() {
            return ChainVerdict::Broken {
                seq: entry.seq,
                problem: ChainProblem::Altered,
            };
        }
        if entry.prev_hash != prev_hash {
            return ChainVerdict::Broken {
                seq: entry.seq,
                problem: ChainProblem::BrokenLink,
            };
        }
        prev_hash.clone_from(&entry.hash);
        count = expected_seq;
    }
    ChainVerdict::Intact {
        entries: count,
        head: (count > 0).then_some(prev_hash),
    }
}

/// An append-only, hash-chained log.
///
/// Contract for implementations:
/// - `append` assigns the next sequence number atomically: concurrent writers (in
///   one process or many) never produce two entries with one number, so the chain
///   never forks; a failed append leaves no entry.
/// - entries are never modified or removed by the API;
/// - `verify` checks the whole stored chain with [`verify_chain`] and reports the
///   first altered, reordered or missing entry.
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends `event` and returns the sealed entry.
    async fn append(&self, event: AuditEvent) -> Result<AuditEntry>;

    /// Up to `limit` entries from sequence number `from_seq` on, in order.
    async fn entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>>;

    /// Checks the whole chain.
    async fn verify(&self) -> Result<ChainVerdict>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let prev = out
                .last()
                .map_or(AuditEntry::GENESIS_HASH, |e| e.hash.as_str())
                .to_owned();
            let event = AuditEvent::new("tester", "act", format!("target {seq}"))
                .detail("k", seq.to_string());
            out.push(AuditEntry::seal(seq, Utc::now(), event, &prev));
        }
        out
    }

    #[test]
    fn intact_chain_and_empty_log() {
        let c = chain(5);
        assert_eq!(
            verify_chain(&c),
            ChainVerdict::Intact {
                entries: 5,
                head: Some(c[4].hash.clone())
            }
        );
        assert_eq!(
            verify_chain(&[]),
            ChainVerdict::Intact {
                entries: 0,
                head: None
            }
        );
    }

    #[test]
    fn detects_alteration_removal_reordering_and_replacement() {
        let c = chain(5);

        let mut altered = c.clone();
        altered[2].event.details.insert("k".into(), "forged".into());
        assert_eq!(
            verify_chain(&altered),
            ChainVerdict::Broken {
                seq: 3,
                problem: ChainProblem::Altered
            }
        );

        let mut missing = c.clone();
        missing.remove(1);
        assert_eq!(
            verify_chain(&missing),
            ChainVerdict::Broken {
                seq: 2,
                problem: ChainProblem::Missing
            }
        );

        let mut reordered = c.clone();
        reordered.swap(1, 2);
        assert_eq!(
            verify_chain(&reordered),
            ChainVerdict::Broken {
                seq: 2,
                problem: ChainProblem::Missing
            }
        );
        let dup = vec![c[0].clone(), c[1].clone(), c[1].clone()];
        assert_eq!(
            verify_chain(&dup),
            ChainVerdict::Broken {
                seq: 3,
                problem: ChainProblem::Reordered
            }
        );

        // Entry 2 rewritten and re-sealed consistently: entry 3's link exposes it.
        let mut replaced = c.clone();
        replaced[1] = AuditEntry::seal(
            2,
            Utc::now(),
            AuditEvent::new("mallory", "act", "x"),
            &c[0].hash,
        );
        assert_eq!(
            verify_chain(&replaced),
            ChainVerdict::Broken {
                seq: 3,
                problem: ChainProblem::BrokenLink
            }
        );
    }

    #[test]
    fn hash_survives_json_round_trip() {
        let c = chain(2);
        let json = serde_json::to_string(&c).unwrap();
        let back: Vec<AuditEntry> = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            verify_chain(&back),
            ChainVerdict::Intact { entries: 2, .. }
        ));
    }
}
