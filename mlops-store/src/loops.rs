//! [`ObjectLoopStates`]: the retraining loop's state and lease on a storage root,
//! shared by every process that opens the root.

use async_trait::async_trait;
use mlops_core::retrain::{LoopState, LoopStateStore, expected_revision};
use mlops_core::{Error, ResourceKind, Result, validate_name};

use crate::cas::CasCell;
use crate::root::StoreRoot;

/// Loop states at `loops/<model>/state` under a [`StoreRoot`], each a
/// compare-and-swap cell: on memory, S3, GCS and Azure one object updated only
/// if unchanged since it was read; on local disk a create-only sequence of
/// objects (see the crate's notes on consistency). A restarted process, or
/// another replica, that opens the same root resumes the loop.
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_core::retrain::{LoopState, LoopStateStore};
/// use mlops_store::{ObjectLoopStates, StoreRoot};
///
/// let states = ObjectLoopStates::new(&StoreRoot::open("memory://")?);
/// let first = LoopState { revision: 1, ..LoopState::default() };
/// assert!(states.save("fraud", &first).await?);
/// assert!(!states.save("fraud", &first).await?, "revision 1 is taken");
/// assert_eq!(states.load("fraud").await?, Some(first));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectLoopStates {
    root: StoreRoot,
}

impl ObjectLoopStates {
    /// Loop states under `root`.
    pub fn new(root: &StoreRoot) -> Self {
        Self { root: root.clone() }
    }

    fn cell(&self, key: &str) -> Result<CasCell> {
        validate_name(ResourceKind::Model, key)?;
        Ok(CasCell::new(&self.root, format!("loops/{key}/state")))
    }
}

#[async_trait]
impl LoopStateStore for ObjectLoopStates {
    async fn load(&self, key: &str) -> Result<Option<LoopState>> {
        Ok(self.cell(key)?.read::<LoopState>().await?.0)
    }

    async fn save(&self, key: &str, state: &LoopState) -> Result<bool> {
        let expected = expected_revision(state)?;
        let cell = self.cell(key)?;
        // A lost race on the object re-reads: the revision then says whether
        // the winner wrote the same revision (this write lost) or the storage
        // only reported a stale token.
        for attempt in 0..8 {
            let (current, token) = cell.read::<LoopState>().await?;
            if current.map_or(0, |s| s.revision) != expected {
                return Ok(false);
            }
            match cell.write(state, &token).await {
                Ok(()) => return Ok(true),
                Err(Error::Conflict { .. }) => crate::cas::backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_many_writers_of_one_revision_exactly_one_wins_on_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("file://{}", dir.path().display());
        for url in ["memory://", file.as_str()] {
            let root = StoreRoot::open(url).unwrap();
            for revision in 1..=3u64 {
                let tasks: Vec<_> = (0..8)
                    .map(|i| {
                        // Each writer opens the root itself where it can.
                        let states = if url == "memory://" {
                            ObjectLoopStates::new(&root)
                        } else {
                            ObjectLoopStates::new(&StoreRoot::open(url).unwrap())
                        };
                        tokio::spawn(async move {
                            let state = LoopState {
                                revision,
                                started: Some(chrono::Utc::now()),
                                lease: Some(mlops_core::retrain::Lease {
                                    holder: format!("writer-{i}"),
                                    expires: chrono::Utc::now(),
                                }),
                                ..LoopState::default()
                            };
                            (i, states.save("m", &state).await.unwrap())
                        })
                    })
                    .collect();
                let mut winners = Vec::new();
                for t in tasks {
                    let (i, won) = t.await.unwrap();
                    if won {
                        winners.push(i);
                    }
                }
                assert_eq!(winners.len(), 1, "{url} revision {revision}: {winners:?}");
                let stored = ObjectLoopStates::new(&root)
                    .load("m")
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(stored.revision, revision);
                let holder = stored.lease.unwrap().holder;
                assert_eq!(holder, format!("writer-{}", winners[0]), "{url}");
            }
        }
    }

    #[tokio::test]
    async fn bad_keys_and_revisions_are_refused_and_nothing_is_written() {
        let root = StoreRoot::open("memory://").unwrap();
        let states = ObjectLoopStates::new(&root);
        let one = LoopState {
            revision: 1,
            ..LoopState::default()
        };
        for key in ["", "../m", "a/b"] {
            let err = states.save(key, &one).await.unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{key:?}: {err}");
            assert!(states.load(key).await.is_err(), "{key:?}");
        }
        let zero = LoopState::default();
        assert!(matches!(
            states.save("m", &zero).await,
            Err(Error::InvalidInput { .. })
        ));
        assert_eq!(states.load("m").await.unwrap(), None);
        // A document that is not a loop state is an integrity error naming it.
        root.put("loops/m/state.json", "{\"revision\": \"x\"}".into())
            .await
            .unwrap();
        let err = states.load("m").await.unwrap_err();
        assert!(err.to_string().contains("loops/m/state"), "{err}");
    }
}
