//! The in-memory online store: sharded hash tables of compactly encoded rows.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use async_trait::async_trait;
use hashbrown::HashTable;
use mlops_core::Result;
use mlops_core::feature::FeatureView;
use smallvec::SmallVec;

use super::encode::Codec;
use super::{OnlineRead, OnlineRow, OnlineStore};

const SHARDS: usize = 64;
// The read path keeps the shards it needs in a u64 bitmask.
const _: () = assert!(SHARDS <= 64);

/// Bytes of key and values kept inside the table's slot; longer rows spill to
/// the heap. 64 holds an `Int64` key with eight `Float64` features.
const INLINE: usize = 64;

/// One entity's latest row: its times, and its key followed by its feature values,
/// both in Arrow's row format, in one buffer (inline for typical rows, so a lookup
/// touches the table's slot and nothing else).
#[derive(Debug)]
struct Entry {
    event_us: i64,
    created_us: Option<i64>,
    key_len: u32,
    data: SmallVec<[u8; INLINE]>,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn values(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }
}

type Shard = RwLock<HashTable<Entry>>;

/// The rows of one view (for one version of its key and feature lists), with the
/// converters that encode them.
#[derive(Debug)]
struct ViewTable {
    keys: Vec<(String, DataType)>,
    features: Vec<(String, DataType)>,
    codec: Codec,
    shards: Vec<Shard>,
}

impl ViewTable {
    fn new(view: &FeatureView) -> Result<Self> {
        Ok(Self {
            keys: view
                .join_keys
                .iter()
                .map(|k| (k.name.clone(), k.data_type.clone()))
                .collect(),
            features: view
                .features
                .iter()
                .map(|f| (f.name.clone(), f.data_type.clone()))
                .collect(),
            codec: Codec::new(view)?,
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        })
    }

    /// Whether rows of this table are encoded the way `view` describes.
    fn serves(&self, view: &FeatureView) -> bool {
        self.keys.len() == view.join_keys.len()
            && self.features.len() == view.features.len()
            && self
                .keys
                .iter()
                .zip(&view.join_keys)
                .all(|((n, t), k)| n == &k.name && t == &k.data_type)
            && self
                .features
                .iter()
                .zip(&view.features)
                .all(|((n, t), f)| n == &f.name && t == &f.data_type)
    }
}

/// The table of `views` that serves `view`.
fn find_in(
    views: &HashMap<String, Vec<Arc<ViewTable>>>,
    view: &FeatureView,
) -> Option<Arc<ViewTable>> {
    views
        .get(&view.name)
        .and_then(|tables| tables.iter().find(|t| t.serves(view)).cloned())
}

/// An [`OnlineStore`] in process memory: the embedded default.
///
/// Entities are spread over 64 independently locked shards, so a read waits at
/// most for a write to the same shard, and never for I/O. Each entity's key and
/// features are kept in Arrow's compact row format (a few bytes per value), inside
/// the hash table's slot when they fit in 64 bytes. A view whose key or feature
/// list changes starts a new table: rows written under the old list are not served
/// for the new one (materialize again).
#[derive(Debug, Default)]
pub struct InMemoryOnlineStore {
    /// Per view name, its tables (one per key and feature list seen).
    views: RwLock<HashMap<String, Vec<Arc<ViewTable>>>>,
    hasher: foldhash::fast::RandomState,
}

impl InMemoryOnlineStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table holding `view`'s rows, if any were written under its current
    /// key and feature lists.
    fn find_table(&self, view: &FeatureView) -> Option<Arc<ViewTable>> {
        find_in(&self.views.read().unwrap_or_else(|p| p.into_inner()), view)
    }

    /// The table for writing `view`'s rows, created on first use.
    fn table_for_write(&self, view: &FeatureView) -> Result<Arc<ViewTable>> {
        if let Some(t) = self.find_table(view) {
            return Ok(t);
        }
        let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = find_in(&views, view) {
            return Ok(t);
        }
        let table = Arc::new(ViewTable::new(view)?);
        views
            .entry(view.name.clone())
            .or_default()
            .push(table.clone());
        Ok(table)
    }

    /// The key's hash, and its shard (from bits the table's own probing does not
    /// lean on: hashbrown uses the low bits for the slot and the top seven as tag).
    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, ((hash >> 40) as usize) % SHARDS)
    }
}

#[async_trait]
impl OnlineStore for InMemoryOnlineStore {
    async fn write(&self, view: &FeatureView, rows: &RecordBatch) -> Result<usize> {
        let table = self.table_for_write(view)?;
        let encoded = table.codec.encode_rows(view, rows)?;
        let (key_rows, value_rows, event, created) =
            (encoded.keys, encoded.values, encoded.event, encoded.created);
        let mut changed = 0;
        for i in 0..rows.num_rows() {
            let key = key_rows.row(i).data();
            let newer = (event[i], created.as_ref().map(|c| c[i]));
            let (hash, shard) = self.locate(key);
            let mut shard = table.shards[shard]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let fresh = || {
                let values = value_rows.row(i).data();
                let mut data = SmallVec::with_capacity(key.len() + values.len());
                data.extend_from_slice(key);
                data.extend_from_slice(values);
                Entry {
                    event_us: newer.0,
                    created_us: newer.1,
                    key_len: key.len() as u32,
                    data,
                }
            };
            match shard.entry(hash, |e| e.key() == key, |e| self.hasher.hash_one(e.key())) {
                hashbrown::hash_table::Entry::Occupied(mut slot) => {
                    // Only a strictly newer row replaces the stored one.
                    let stored = slot.get();
                    if newer > (stored.event_us, stored.created_us) {
                        *slot.get_mut() = fresh();
                        changed += 1;
                    }
                }
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(fresh());
                    changed += 1;
                }
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
        let Some(table) = self.find_table(view) else {
            // Nothing written under this definition yet: check the request the
            // same way, then answer "not found" for every key.
            let codec = Codec::new(view)?;
            let (wanted, _) = codec.plan_read(view, keys, features)?;
            return Ok(OnlineRead {
                values: codec.decode_values(view, &wanted, std::iter::empty())?,
                rows: vec![None; keys.num_rows()],
            });
        };
        let (wanted, key_rows) = table.codec.plan_read(view, keys, features)?;
        // Hash every key, then hold the read locks of the shards involved while
        // looking them all up: with no atomic operation between the lookups, the
        // processor overlaps their memory accesses.
        let located: Vec<(u64, usize)> = (0..keys.num_rows())
            .map(|i| self.locate(key_rows.row(i)))
            .collect();
        // On the stack: a heap buffer of this size would cost more than the lookups
        // of a one-entity request.
        let mut guards: [Option<RwLockReadGuard<'_, HashTable<Entry>>>; SHARDS] =
            std::array::from_fn(|_| None);
        // The locks are taken in ascending shard order, never in request order:
        // two readers taking the same shards in opposite orders, each behind a
        // waiting writer (the lock lets writers go first), would wait for each
        // other forever.
        let mut wanted_shards = 0u64;
        for &(_, shard) in &located {
            wanted_shards |= 1 << shard;
        }
        while wanted_shards != 0 {
            let shard = wanted_shards.trailing_zeros() as usize;
            wanted_shards &= wanted_shards - 1;
            guards[shard] = Some(
                table.shards[shard]
                    .read()
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
        // First every probe, in a tight loop whose iterations the processor can
        // overlap; then the copies.
        let found: Vec<Option<&Entry>> = located
            .iter()
            .enumerate()
            .map(|(i, &(hash, shard))| {
                let key = key_rows.row(i);
                guards[shard]
                    .as_ref()
                    .and_then(|g| g.find(hash, |e| e.key() == key))
            })
            .collect();
        // The found rows' encoded values, back to back in one buffer.
        let mut buffer: Vec<u8> = Vec::with_capacity(keys.num_rows() * INLINE);
        let mut ends: Vec<usize> = Vec::with_capacity(keys.num_rows());
        let rows: Vec<Option<OnlineRow>> = found
            .into_iter()
            .map(|hit| {
                hit.map(|e| {
                    buffer.extend_from_slice(e.values());
                    ends.push(buffer.len());
                    OnlineRow {
                        event_us: e.event_us,
                        created_us: e.created_us,
                        row: ends.len() - 1,
                    }
                })
            })
            .collect();
        drop(guards);
        let values = table.codec.decode_values(
            view,
            &wanted,
            (0..ends.len()).map(|j| &buffer[j.checked_sub(1).map_or(0, |p| ends[p])..ends[j]]),
        )?;
        Ok(OnlineRead { values, rows })
    }
}
