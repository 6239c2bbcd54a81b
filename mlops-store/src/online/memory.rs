//! The in-memory online store: sharded maps of compactly encoded rows.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use mlops_core::feature::FeatureView;
use mlops_core::{Error, Result};

use super::encode::{decode_values, encode_rows, plan_read};
use super::{OnlineRead, OnlineRow, OnlineStore, table_key};

const SHARDS: usize = 64;

/// One entity's latest row: its times and its feature values in Arrow's row format.
#[derive(Debug)]
struct Entry {
    event_us: i64,
    created_us: Option<i64>,
    values: Box<[u8]>,
}

type Shard = RwLock<HashMap<Box<[u8]>, Entry>>;

/// The rows of one view (for one version of its feature list).
#[derive(Debug)]
struct ViewTable {
    shards: Vec<Shard>,
}

/// An [`OnlineStore`] in process memory: the embedded default.
///
/// Entities are spread over 64 independently locked shards, so a read waits at
/// most for a write to the same shard, and never for I/O. Each entity's features
/// are kept in Arrow's compact row format (a few bytes per value). A view whose
/// feature list changes starts a new table: rows written under the old list are
/// not served for the new one (materialize again).
#[derive(Debug, Default)]
pub struct InMemoryOnlineStore {
    views: RwLock<HashMap<String, Arc<ViewTable>>>,
    hasher: RandomState,
}

impl InMemoryOnlineStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self, view: &FeatureView, create: bool) -> Option<Arc<ViewTable>> {
        let key = table_key(view);
        if let Some(t) = self
            .views
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(t.clone());
        }
        if !create {
            return None;
        }
        let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
        Some(
            views
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(ViewTable {
                        shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                    })
                })
                .clone(),
        )
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }
}

#[async_trait]
impl OnlineStore for InMemoryOnlineStore {
    async fn write(&self, view: &FeatureView, rows: &RecordBatch) -> Result<usize> {
        let encoded = encode_rows(view, rows)?;
        let (key_rows, value_rows, event, created) =
            (encoded.keys, encoded.values, encoded.event, encoded.created);
        let table = self
            .table(view, true)
            .ok_or_else(|| Error::backend("online store", "no table"))?;
        let mut changed = 0;
        for i in 0..rows.num_rows() {
            let key = key_rows.row(i).data();
            let newer = (event[i], created.as_ref().map(|c| c[i]));
            let mut shard = table.shards[self.shard_of(key)]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let stored = shard.get(key).map(|e| (e.event_us, e.created_us));
            // Only a strictly newer row replaces the stored one.
            if stored.is_none_or(|s| newer > s) {
                shard.insert(
                    key.into(),
                    Entry {
                        event_us: newer.0,
                        created_us: newer.1,
                        values: value_rows.row(i).data().into(),
                    },
                );
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn read(
        &self,
        view: &FeatureView,
        keys: &RecordBatch,
        features: &[String],
    ) -> Result<OnlineRead> {
        let (wanted, key_rows) = plan_read(view, keys, features)?;
        let table = self.table(view, false);
        // The found rows' encoded values, back to back in one buffer.
        let mut buffer: Vec<u8> = Vec::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut rows = Vec::with_capacity(keys.num_rows());
        for i in 0..keys.num_rows() {
            let key = key_rows.row(i).data();
            let hit = table.as_ref().and_then(|t| {
                let shard = t.shards[self.shard_of(key)]
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                shard.get(key).map(|e| {
                    let start = buffer.len();
                    buffer.extend_from_slice(&e.values);
                    spans.push((start, buffer.len()));
                    (e.event_us, e.created_us)
                })
            });
            rows.push(hit.map(|(event_us, created_us)| OnlineRow {
                event_us,
                created_us,
                row: spans.len() - 1,
            }));
        }
        let values = decode_values(view, &wanted, spans.iter().map(|&(a, b)| &buffer[a..b]))?;
        Ok(OnlineRead { values, rows })
    }
}
