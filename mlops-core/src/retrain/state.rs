//! The loop's durable state ([`LoopState`]) and where it is kept
//! ([`LoopStateStore`]): what a restarted process, or another replica, needs to
//! resume a rollout exactly where it was.
//!
//! Every change is a compare-and-swap on the state's [`revision`](LoopState::revision):
//! a write succeeds only over the revision it read, so two instances can never
//! both act on the same state. The state carries a [`Lease`]: the instance that
//! holds it (and has not let it expire) is the only one that acts; the others
//! stand by and take over once it expires.
//!
//! Transitions that touch several systems (the registry, the serving side) are
//! written as an intent first ([`LoopPhase::Training`], [`LoopPhase::Promoting`],
//! [`LoopPhase::RollingBack`]) and then carried out with idempotent calls, so an
//! instance that finds an intent left by a crashed one finishes it (or, for a
//! challenger still being trained, undoes it) before anything else.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::experiment::ArmStats;

/// Which instance may act on a loop, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The instance's name ([`RetrainLoop::instance`](super::RetrainLoop::instance)).
    pub holder: String,
    /// After this, another instance may take the loop over.
    pub expires: DateTime<Utc>,
}

/// Where a loop is in its cycle.
///
/// New phases may be added in minor releases (`#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoopPhase {
    /// Watching the triggers; no challenger in flight.
    #[default]
    Watching,
    /// A challenger is being trained, evaluated and maybe registered for
    /// `run_id`. An instance that finds this phase without being the one that
    /// wrote it undoes it: versions registered by the run are archived.
    Training {
        /// The champion it is trained to replace.
        champion: u64,
        /// The tracker run; the challenger's lineage names it.
        run_id: String,
        /// When training started.
        since: DateTime<Utc>,
    },
    /// A canary serves a share of traffic.
    Canary {
        /// The stable version.
        champion: u64,
        /// The canary version.
        challenger: u64,
        /// Its share of traffic.
        weight: f64,
        /// When it reached this weight: it must be judged within
        /// [`CanaryPolicy::judge_within`](super::CanaryPolicy::judge_within) of it.
        since: DateTime<Utc>,
        /// Both arms' statistics when the canary started, for an evidence
        /// rule: only what was observed since counts.
        #[serde(default)]
        baseline: Option<Baseline>,
    },
    /// The challenger is being promoted: `champion` alias and all traffic.
    Promoting {
        /// The version it replaces.
        champion: u64,
        /// The new champion.
        challenger: u64,
    },
    /// The challenger is being rolled back: all traffic to the champion, the
    /// challenger's alias removed and its version archived.
    RollingBack {
        /// The version that keeps all traffic.
        champion: u64,
        /// The version rolled back.
        challenger: u64,
        /// Why, as the decision will say.
        reason: String,
    },
}

/// The statistic an evidence rule judges, for both arms, when a canary
/// started: the champion's history before the canary must not count as its
/// side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The champion's.
    pub champion: ArmStats,
    /// The challenger's (a shadow may have fed it before).
    pub challenger: ArmStats,
}

/// Everything a loop must remember across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LoopState {
    /// Incremented by every write: the compare-and-swap token.
    pub revision: u64,
    /// Where the loop is.
    pub phase: LoopPhase,
    /// Who acts, until when.
    pub lease: Option<Lease>,
    /// When the loop first ran (a schedule counts from it until the first
    /// retrain).
    pub started: Option<DateTime<Utc>>,
    /// When the last retrain started (the cool-down counts from it).
    pub last_retrain: Option<DateTime<Utc>>,
    /// When recent retrains started (the rate limit counts them).
    pub retrains: Vec<DateTime<Utc>>,
}

/// Where loops keep their [`LoopState`], one per key (the model's name).
///
/// Implementations: [`InMemoryLoopStates`] (state dies with the process) and
/// `mlops_store::ObjectLoopStates` (on a storage root, shared by every replica).
#[async_trait]
pub trait LoopStateStore: Send + Sync + std::fmt::Debug {
    /// The state stored for `key`, `None` when there is none.
    async fn load(&self, key: &str) -> Result<Option<LoopState>>;

    /// Stores `state` for `key` if the stored revision is `state.revision - 1`
    /// (nothing stored counts as revision 0); `Ok(false)` when another writer
    /// got there first, in which case nothing was written.
    async fn save(&self, key: &str, state: &LoopState) -> Result<bool>;
}

/// Checks the revision a write needs before storing: shared by the
/// implementations so they agree on the rule.
///
/// # Errors
/// [`Error::InvalidInput`] for revision 0, which no write may store.
pub fn expected_revision(state: &LoopState) -> Result<u64> {
    state.revision.checked_sub(1).ok_or_else(|| {
        Error::invalid_input(
            "loop state revision",
            "a stored state has revision 1 or more",
        )
    })
}

/// Loop states in this process's memory: for tests and single-process
/// applications that accept losing the loop's place on restart.
#[derive(Debug, Default)]
pub struct InMemoryLoopStates {
    states: Mutex<HashMap<String, LoopState>>,
}

impl InMemoryLoopStates {
    /// No states.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl LoopStateStore for InMemoryLoopStates {
    async fn load(&self, key: &str) -> Result<Option<LoopState>> {
        let states = self
            .states
            .lock()
            .map_err(|_| Error::conflict("loop states", "a writer panicked"))?;
        Ok(states.get(key).cloned())
    }

    async fn save(&self, key: &str, state: &LoopState) -> Result<bool> {
        let expected = expected_revision(state)?;
        let mut states = self
            .states
            .lock()
            .map_err(|_| Error::conflict("loop states", "a writer panicked"))?;
        let current = states.get(key).map_or(0, |s| s.revision);
        if current != expected {
            return Ok(false);
        }
        states.insert(key.to_owned(), state.clone());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_write_succeeds_only_over_the_revision_it_read() {
        let store = InMemoryLoopStates::new();
        assert_eq!(store.load("m").await.unwrap(), None);
        let mut s = LoopState {
            revision: 1,
            ..LoopState::default()
        };
        assert!(store.save("m", &s).await.unwrap());
        assert!(!store.save("m", &s).await.unwrap(), "revision 1 again");
        s.revision = 3;
        assert!(!store.save("m", &s).await.unwrap(), "a skipped revision");
        s.revision = 2;
        s.phase = LoopPhase::Promoting {
            champion: 1,
            challenger: 2,
        };
        assert!(store.save("m", &s).await.unwrap());
        assert_eq!(store.load("m").await.unwrap(), Some(s.clone()));
        s.revision = 0;
        assert!(matches!(
            store.save("m", &s).await,
            Err(Error::InvalidInput { .. })
        ));
        assert_eq!(store.load("other").await.unwrap(), None, "keys are apart");
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let s = LoopState {
            revision: 7,
            phase: LoopPhase::Canary {
                champion: 1,
                challenger: 2,
                weight: 0.1 + 0.2,
                since: Utc::now(),
                baseline: Some(Baseline {
                    champion: ArmStats::of(&[0.25, 0.5]).unwrap(),
                    challenger: ArmStats::new(),
                }),
            },
            lease: Some(Lease {
                holder: "a".into(),
                expires: Utc::now(),
            }),
            started: Some(Utc::now()),
            last_retrain: None,
            retrains: vec![Utc::now()],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""phase":"canary""#), "{json}");
        let back: LoopState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
