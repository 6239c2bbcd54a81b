//! The point-in-time ("as of") join at the heart of historical retrieval.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::datatypes::{
    DataType, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::row::{RowConverter, SortField};
use mlops_core::{Error, Result};

/// One view's feature rows, in commit order (later commits later).
pub(crate) struct FeatureRows<'a> {
    /// Join key columns, in the view's order.
    pub(crate) keys: &'a [ArrayRef],
    /// Event times, microseconds since the epoch.
    pub(crate) event: &'a [i64],
    /// Created times, when the view has them.
    pub(crate) created: Option<&'a [i64]>,
}

/// For each entity row, the index of the feature row to use, or null:
/// the row with the same keys and the greatest (event time, created time, commit
/// order) such that event time <= the entity row's time, event time >= time - ttl
/// when there is a TTL, and (when `require_created`) created time <= the entity
/// row's time.
pub(crate) fn as_of_indices(
    entity_keys: &[ArrayRef],
    entity_ts: &[i64],
    rows: &FeatureRows<'_>,
    ttl_us: Option<i64>,
    require_created: bool,
) -> Result<UInt32Array> {
    if let ([wanted], [stored]) = (entity_keys, rows.keys)
        && let (Some(wanted), Some(stored)) = (int_values(wanted), int_values(stored))
    {
        return Ok(as_of_int(
            &wanted,
            entity_ts,
            &stored,
            rows,
            ttl_us,
            require_created,
        ));
    }
    let fields: Vec<SortField> = rows
        .keys
        .iter()
        .map(|k| SortField::new(k.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(|e| Error::backend("arrow", e))?;
    let feature_keys = converter
        .convert_columns(rows.keys)
        .map_err(|e| Error::backend("arrow", e))?;
    let wanted = converter
        .convert_columns(entity_keys)
        .map_err(|e| Error::backend("arrow", e))?;

    let created_of = |i: u32| rows.created.map_or(i64::MIN, |c| c[i as usize]);
    let mut groups: HashMap<&[u8], Vec<u32>> = HashMap::new();
    for i in 0..feature_keys.num_rows() {
        let idx = u32::try_from(i).map_err(|_| {
            Error::invalid_input("feature view", "more than 4 billion rows in one join")
        })?;
        groups
            .entry(feature_keys.row(i).data())
            .or_default()
            .push(idx);
    }
    for g in groups.values_mut() {
        g.sort_unstable_by_key(|&i| (rows.event[i as usize], created_of(i), i));
    }

    let out: UInt32Array = (0..wanted.num_rows())
        .map(|r| {
            let t = entity_ts[r];
            let group = groups.get(wanted.row(r).data())?;
            // Candidates: event <= t, latest first.
            let end = group.partition_point(|&i| rows.event[i as usize] <= t);
            for &i in group[..end].iter().rev() {
                let event = rows.event[i as usize];
                if let Some(ttl) = ttl_us
                    && event < t.saturating_sub(ttl)
                {
                    return None; // every earlier row is older still
                }
                if require_created && created_of(i) > t {
                    continue;
                }
                return Some(i);
            }
            None
        })
        .collect();
    Ok(out)
}

/// The values of a null-free integer column as `i64` (equality-preserving), or
/// `None` for other columns.
fn int_values(a: &ArrayRef) -> Option<Vec<i64>> {
    if a.null_count() > 0 {
        return None;
    }
    macro_rules! ints {
        ($t:ty) => {
            Some(
                a.as_primitive::<$t>()
                    .values()
                    .iter()
                    .map(|&v| v as i64)
                    .collect(),
            )
        };
    }
    match a.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().values().to_vec()),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        _ => None,
    }
}

/// A fast hasher for integer keys (a SplitMix64 finalizer); not DoS-resistant,
/// which is fine for keys the caller's own data holds.
#[derive(Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_i64(&mut self, i: i64) {
        let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The single integer key case, without row encoding: feature rows grouped by key
/// in one counting pass (compressed rows), each group sorted by (event, created,
/// commit order) on all cores.
fn as_of_int(
    wanted: &[i64],
    entity_ts: &[i64],
    stored: &[i64],
    rows: &FeatureRows<'_>,
    ttl_us: Option<i64>,
    require_created: bool,
) -> UInt32Array {
    let mut ids: HashMap<i64, u32, BuildHasherDefault<IntHasher>> = HashMap::default();
    let group_of: Vec<u32> = stored
        .iter()
        .map(|&k| {
            let next = ids.len() as u32;
            *ids.entry(k).or_insert(next)
        })
        .collect();
    let groups = ids.len();
    let mut start = vec![0usize; groups + 1];
    for &g in &group_of {
        start[g as usize + 1] += 1;
    }
    for g in 0..groups {
        start[g + 1] += start[g];
    }
    let mut order = vec![0u32; stored.len()];
    let mut fill = start.clone();
    for (i, &g) in group_of.iter().enumerate() {
        order[fill[g as usize]] = i as u32;
        fill[g as usize] += 1;
    }
    drop(group_of);
    let created_of = |i: u32| rows.created.map_or(i64::MIN, |c| c[i as usize]);
    let sort_groups = |slice: &mut [u32], offset: usize, from: usize, to: usize| {
        for g in from..to {
            let group = &mut slice[start[g] - offset..start[g + 1] - offset];
            group.sort_unstable_by_key(|&i| (rows.event[i as usize], created_of(i), i));
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    if threads > 1 && stored.len() > 100_000 {
        // Split the groups into contiguous ranges of about equal rows.
        let mut bounds = vec![0usize];
        for t in 1..threads {
            let target = stored.len() * t / threads;
            bounds.push(start.partition_point(|&s| s < target).min(groups));
        }
        bounds.push(groups);
        std::thread::scope(|scope| {
            let mut rest: &mut [u32] = &mut order;
            let mut consumed = 0usize;
            for w in bounds.windows(2) {
                let (from, to) = (w[0], w[1]);
                let len = start[to] - start[from];
                let (mine, tail) = rest.split_at_mut(len);
                rest = tail;
                let offset = consumed;
                consumed += len;
                let sort_groups = &sort_groups;
                scope.spawn(move || sort_groups(mine, offset, from, to));
            }
        });
    } else {
        sort_groups(&mut order, 0, 0, groups);
    }
    wanted
        .iter()
        .zip(entity_ts)
        .map(|(k, &t)| {
            let g = *ids.get(k)? as usize;
            let group = &order[start[g]..start[g + 1]];
            let end = group.partition_point(|&i| rows.event[i as usize] <= t);
            for &i in group[..end].iter().rev() {
                let event = rows.event[i as usize];
                if let Some(ttl) = ttl_us
                    && event < t.saturating_sub(ttl)
                {
                    return None;
                }
                if require_created && created_of(i) > t {
                    continue;
                }
                return Some(i);
            }
            None
        })
        .collect()
}
