//! Compare-and-swap cells: small mutable JSON objects that many writers on many
//! machines may update without losing each other's changes.
//!
//! Two mechanisms, chosen by what the backend supports:
//! - **update-if-unchanged** (memory, S3, GCS, Azure): one object at `<path>.json`;
//!   a write carries the ETag/version it read (`PutMode::Update`), or is create-only
//!   when the object did not exist (`PutMode::Create`);
//! - **create-only sequence** (local disk, which has no update-if-unchanged): one
//!   object per state at `<path>/<sequence>.json`; a write creates the next sequence
//!   number with `PutMode::Create`, which fails if another writer got there first.
//!   The highest number is the current state; earlier ones are its history (they
//!   are never deleted: a freed name would let a stale writer's create succeed).
//!   After each write, `<path>/HEAD` records the number written; a read starts
//!   there and probes forward, so it costs a few requests however long the history
//!   is (the hint may lag behind, never run ahead, and only a missing hint lists).
//!
//! Either way a lost race surfaces as a conflict and [`CasCell::update`] re-reads
//! and retries, so no update is ever silently lost.

use std::time::Duration;

use mlops_core::{Error, Result};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::storage_error;
use crate::root::StoreRoot;

/// How many times [`CasCell::update`] retries a lost race before giving up.
const MAX_ATTEMPTS: u32 = 64;

/// What a read saw, to make the next write conditional on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// Nothing stored yet.
    Absent,
    /// The object's ETag and version.
    Version(UpdateVersion),
    /// The highest sequence number.
    Sequence(u64),
}

/// One mutable JSON value under a root.
#[derive(Debug, Clone)]
pub(crate) struct CasCell {
    root: StoreRoot,
    /// Relative path without extension.
    path: String,
}

impl CasCell {
    pub(crate) fn new(root: &StoreRoot, path: impl Into<String>) -> Self {
        Self {
            root: root.clone(),
            path: path.into(),
        }
    }

    fn object(&self) -> Path {
        self.root.path(&format!("{}.json", self.path))
    }

    fn sequence_object(&self, seq: u64) -> Path {
        self.root.path(&format!("{}/{seq:020}.json", self.path))
    }

    fn head_object(&self) -> Path {
        self.root.path(&format!("{}/HEAD", self.path))
    }

    /// The sequence number the hint names, when there is a readable hint.
    async fn head_hint(&self) -> Option<u64> {
        let result = self.root.store().get(&self.head_object()).await.ok()?;
        let bytes = result.bytes().await.ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// The state at `seq`, or `None` when there is none.
    async fn get_sequence<T: DeserializeOwned>(&self, seq: u64) -> Result<Option<T>> {
        let path = self.sequence_object(seq);
        let where_ = self.root.describe(&path);
        match self.root.store().get(&path).await {
            Ok(result) => {
                let bytes = result
                    .bytes()
                    .await
                    .map_err(|e| storage_error(&where_, e))?;
                Ok(Some(parse(&where_, &bytes)?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_error(&where_, e)),
        }
    }

    /// The current value and the token to write after it.
    pub(crate) async fn read<T: DeserializeOwned>(&self) -> Result<(Option<T>, Token)> {
        let store = self.root.store();
        if self.root.supports_conditional_update() {
            let path = self.object();
            let where_ = self.root.describe(&path);
            match store.get(&path).await {
                Ok(result) => versioned(&where_, result).await,
                Err(object_store::Error::NotFound { .. }) => Ok((None, Token::Absent)),
                Err(e) => Err(storage_error(&where_, e)),
            }
        } else {
            // From the hint forward; the listing only without a usable hint.
            if let Some(mut seq) = self.head_hint().await
                && let Some(mut value) = self.get_sequence::<T>(seq).await?
            {
                while let Some(newer) = self.get_sequence::<T>(seq + 1).await? {
                    (value, seq) = (newer, seq + 1);
                }
                return Ok((Some(value), Token::Sequence(seq)));
            }
            let latest = self.root.list_numbered(&self.path, ".json").await?.pop();
            let Some(seq) = latest else {
                return Ok((None, Token::Absent));
            };
            let value = self.get_sequence(seq).await?.ok_or_else(|| {
                Error::integrity(
                    self.root.describe(&self.sequence_object(seq)),
                    "a listed state is gone (states are never deleted)",
                )
            })?;
            Ok((Some(value), Token::Sequence(seq)))
        }
    }

    /// The current value, given one read earlier: with update-if-unchanged a
    /// conditional GET that answers "not modified" without a body; with a sequence,
    /// probes for newer states after the known one (sequence numbers are gap-free),
    /// so neither lists anything. Falls back to [`CasCell::read`] without `known`.
    pub(crate) async fn read_since<T: DeserializeOwned + Clone>(
        &self,
        known: Option<(T, Token)>,
    ) -> Result<(Option<T>, Token)> {
        let Some((value, token)) = known else {
            return self.read().await;
        };
        let store = self.root.store();
        match token {
            Token::Version(v) if v.e_tag.is_some() => {
                let path = self.object();
                let where_ = self.root.describe(&path);
                let opts = GetOptions {
                    if_none_match: v.e_tag.clone(),
                    ..Default::default()
                };
                match store.get_opts(&path, opts).await {
                    Err(object_store::Error::NotModified { .. }) => {
                        Ok((Some(value), Token::Version(v)))
                    }
                    Ok(result) => versioned(&where_, result).await,
                    Err(object_store::Error::NotFound { .. }) => Ok((None, Token::Absent)),
                    Err(e) => Err(storage_error(&where_, e)),
                }
            }
            Token::Sequence(mut seq) => {
                let mut value = value;
                loop {
                    let path = self.sequence_object(seq + 1);
                    let where_ = self.root.describe(&path);
                    match store.get(&path).await {
                        Ok(result) => {
                            let bytes = result
                                .bytes()
                                .await
                                .map_err(|e| storage_error(&where_, e))?;
                            value = parse(&where_, &bytes)?;
                            seq += 1;
                        }
                        Err(object_store::Error::NotFound { .. }) => {
                            return Ok((Some(value), Token::Sequence(seq)));
                        }
                        Err(e) => return Err(storage_error(&where_, e)),
                    }
                }
            }
            _ => self.read().await,
        }
    }

    /// Writes `value` if the cell is still as `token` saw it; [`Error::Conflict`]
    /// when another writer changed it in between.
    pub(crate) async fn write<T: Serialize>(&self, value: &T, token: &Token) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::invalid_input(format!("state of {}", self.path), e.to_string()))?;
        let (path, mode, sequence) = match token {
            Token::Absent if self.root.supports_conditional_update() => {
                (self.object(), PutMode::Create, None)
            }
            Token::Absent => (self.sequence_object(1), PutMode::Create, Some(1)),
            Token::Version(v) => (self.object(), PutMode::Update(v.clone()), None),
            Token::Sequence(s) => (self.sequence_object(s + 1), PutMode::Create, Some(s + 1)),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .root
            .store()
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => {
                if let Some(seq) = sequence {
                    // Only a hint: a failed or late write of it costs readers a
                    // few probes, never correctness.
                    let _ = self
                        .root
                        .store()
                        .put(&self.head_object(), PutPayload::from(seq.to_string()))
                        .await;
                }
                Ok(())
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Error::conflict(
                self.root.describe(&path),
                "another writer changed it since it was read",
            )),
            Err(e) => Err(storage_error(&self.root.describe(&path), e)),
        }
    }

    /// Reads, applies `f`, and writes conditionally, retrying on conflict with a
    /// short randomized backoff. `f` may run several times and must not have side
    /// effects; an error from it aborts the update.
    pub(crate) async fn update<T, R>(
        &self,
        mut f: impl FnMut(Option<T>) -> Result<(T, R)>,
    ) -> Result<R>
    where
        T: Serialize + DeserializeOwned,
    {
        for attempt in 0..MAX_ATTEMPTS {
            let (current, token) = self.read::<T>().await?;
            let (next, out) = f(current)?;
            match self.write(&next, &token).await {
                Ok(()) => return Ok(out),
                Err(Error::Conflict { .. }) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::conflict(
            self.root.describe(&self.object()),
            format!("still contended after {MAX_ATTEMPTS} attempts"),
        ))
    }
}

/// The value of a GET answer and the token to update it conditionally.
async fn versioned<T: DeserializeOwned>(
    where_: &str,
    result: object_store::GetResult,
) -> Result<(Option<T>, Token)> {
    let version = UpdateVersion {
        e_tag: result.meta.e_tag.clone(),
        version: result.meta.version.clone(),
    };
    let bytes = result.bytes().await.map_err(|e| storage_error(where_, e))?;
    Ok((Some(parse(where_, &bytes)?), Token::Version(version)))
}

fn parse<T: DeserializeOwned>(where_: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::integrity(where_, format!("not a valid JSON document: {e}")))
}

/// Sleeps a little, more after each lost race, with jitter so racing writers
/// spread out.
pub(crate) async fn backoff(attempt: u32) {
    let base = 2u64.saturating_pow(attempt.min(6)); // 1..64 ms
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos % 1000) * base / 1000;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}
