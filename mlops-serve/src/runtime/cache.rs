//! The prediction cache: outputs by (model, version, exact inputs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mlops_core::inference::{Tensor, TensorData};

use crate::config::CacheConfig;

/// Hits, misses and size of a deployment's prediction cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that ran the model.
    pub misses: u64,
    /// Entries held now (approximate while entries expire).
    pub entries: u64,
}

/// A bounded, expiring map from a canonical encoding of the inputs to outputs.
#[derive(Debug)]
pub(crate) struct PredictionCache {
    entries: moka::sync::Cache<(u64, Vec<u8>), Arc<Vec<Tensor>>>,
    max_key_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The exact bytes of the inputs (names, shapes, datatypes and data), in name order:
/// equal keys mean equal inputs, with no hash collisions to fear.
pub(crate) fn key(inputs: &[Tensor]) -> Vec<u8> {
    let mut sorted: Vec<&Tensor> = inputs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut k = Vec::new();
    for t in sorted {
        k.extend_from_slice(&(t.name.len() as u64).to_le_bytes());
        k.extend_from_slice(t.name.as_bytes());
        k.extend_from_slice(t.datatype().as_str().as_bytes());
        k.extend_from_slice(&(t.shape.len() as u64).to_le_bytes());
        for d in &t.shape {
            k.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        match &t.data {
            TensorData::Bool(v) => k.extend(v.iter().map(|&b| u8::from(b))),
            TensorData::Uint8(v) => k.extend_from_slice(v),
            TensorData::Int8(v) => k.extend(v.iter().map(|&b| b as u8)),
            TensorData::Uint16(v) => v.iter().for_each(|x| k.extend_from_slice(&x.to_le_bytes())),
            TensorData::Int16(v) => v.iter().for_each(|x| k.extend_from_slice(&x.to_le_bytes())),
            TensorData::Uint32(v) => v.iter().for_each(|x| k.extend_from_slice(&x.to_le_bytes())),
            TensorData::Int32(v) => v.iter().for_each(|x| k.extend_from_slice(&x.to_le_bytes())),
            TensorData::Uint64(v) => v.iter().for_each(|x| k.extend_from_slice(&x.to_le_bytes())),
            TensorData::Int64(v) => v.iter().for_each(|x| k.extend_from_slice(&x.to_le_bytes())),
            TensorData::Fp16(v) | TensorData::Fp32(v) => v
                .iter()
                .for_each(|x| k.extend_from_slice(&x.to_bits().to_le_bytes())),
            TensorData::Fp64(v) => v
                .iter()
                .for_each(|x| k.extend_from_slice(&x.to_bits().to_le_bytes())),
            TensorData::Bytes(v) => {
                for b in v {
                    k.extend_from_slice(&(b.len() as u64).to_le_bytes());
                    k.extend_from_slice(b);
                }
            }
        }
    }
    k
}

impl PredictionCache {
    /// A cache bounded by `config.max_bytes` and `config.max_entries` at once:
    /// each entry weighs its bytes (key and outputs), but never less than
    /// `max_bytes / max_entries`, so the total weight limit (`max_bytes`) also
    /// caps the number of entries.
    pub(crate) fn new(config: CacheConfig) -> Self {
        let max_bytes = config.max_bytes.max(1);
        let floor = (max_bytes / config.max_entries.max(1)).max(1);
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |k: &(u64, Vec<u8>), v: &Arc<Vec<Tensor>>| {
                    let bytes =
                        (k.1.len() + v.iter().map(Tensor::heap_bytes).sum::<usize>()) as u64;
                    u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
                })
                .time_to_live(config.ttl)
                .build(),
            max_key_bytes: config.max_key_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Whether requests with `inputs` are cached at all (their encoded key would
    /// be at most the configured key limit).
    pub(crate) fn admits(&self, inputs: &[Tensor]) -> bool {
        inputs.iter().map(Tensor::heap_bytes).sum::<usize>() <= self.max_key_bytes
    }

    pub(crate) fn get(&self, version: u64, key: &[u8]) -> Option<Arc<Vec<Tensor>>> {
        let found = self.entries.get(&(version, key.to_vec()));
        match &found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    pub(crate) fn insert(&self, version: u64, key: Vec<u8>, outputs: Arc<Vec<Tensor>>) {
        self.entries.insert((version, key), outputs);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
        }
    }
}
