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
            &[&stored],
            &[rows.event],
            rows.created,
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
pub(crate) fn int_values(a: &dyn Array) -> Option<std::borrow::Cow<'_, [i64]>> {
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
        DataType::Int64 => Some(std::borrow::Cow::Borrowed(
            a.as_primitive::<Int64Type>().values().as_ref(),
        )),
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
///
/// The feature rows come in chunks (the batches they were read into): `stored[c]`
/// and `events[c]` are chunk `c`'s keys and event times; `created` is indexed by
/// the global row number.
pub(crate) fn as_of_int(
    wanted: &[i64],
    entity_ts: &[i64],
    stored: &[&[i64]],
    events: &[&[i64]],
    created: Option<&[i64]>,
    ttl_us: Option<i64>,
    require_created: bool,
) -> UInt32Array {
    let total: usize = stored.iter().map(|c| c.len()).sum();
    let threads = if total > 100_000 {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
    } else {
        1
    };
    let (ids, group_of) = number_groups(stored, total, threads);
    let groups = ids.len();
    let mut start = vec![0usize; groups + 1];
    for &g in &group_of {
        start[g as usize + 1] += 1;
    }
    for g in 0..groups {
        start[g + 1] += start[g];
    }
    let created_of = |i: u32| created.map_or(i64::MIN, |c| c[i as usize]);
    // Each group's (event time, row) pairs, contiguous, so sorting and searching a
    // group touches one small region of memory; built and sorted on all cores,
    // each thread owning a range of groups of about equal rows.
    let mut bounds = vec![0usize];
    for t in 1..threads {
        let target = total * t / threads;
        bounds.push(start.partition_point(|&s| s < target).min(groups));
    }
    bounds.push(groups);
    let mut slots = vec![(0i64, 0u32); total];
    let build = |mine: &mut [(i64, u32)], from: usize, to: usize| {
        let offset = start[from];
        let mut fill: Vec<usize> = start[from..to].iter().map(|s| s - offset).collect();
        for (i, (&g, &event)) in group_of
            .iter()
            .zip(events.iter().flat_map(|c| c.iter()))
            .enumerate()
        {
            let g = g as usize;
            if g >= from && g < to {
                mine[fill[g - from]] = (event, i as u32);
                fill[g - from] += 1;
            }
        }
        for g in from..to {
            let group = &mut mine[start[g] - offset..start[g + 1] - offset];
            group.sort_unstable();
            if created.is_some() {
                // Equal event times: order by created time, then commit order.
                let mut a = 0;
                while a < group.len() {
                    let b = a + group[a..].iter().take_while(|s| s.0 == group[a].0).count();
                    if b - a > 1 {
                        group[a..b].sort_unstable_by_key(|s| (created_of(s.1), s.1));
                    }
                    a = b;
                }
            }
        }
    };
    let pieces: Vec<_> = split_lengths(
        &mut slots,
        bounds.windows(2).map(|w| start[w[1]] - start[w[0]]),
    )
    .into_iter()
    .zip(bounds.windows(2))
    .map(|(mine, w)| (mine, w[0], w[1]))
    .collect();
    map_scoped(pieces, threads > 1, |(mine, from, to)| {
        build(mine, from, to)
    });
    drop(group_of);
    // Queries visited group by group (a counting sort on their group), so each
    // group's pairs are read once from memory for all its queries, on all cores.
    let missing = u32::MAX;
    let query_group: Vec<u32> = wanted
        .iter()
        .map(|k| ids.get(k).copied().unwrap_or(missing))
        .collect();
    let mut qstart = vec![0usize; groups + 1];
    for &g in &query_group {
        if g != missing {
            qstart[g as usize + 1] += 1;
        }
    }
    for g in 0..groups {
        qstart[g + 1] += qstart[g];
    }
    let mut queries = vec![0u32; qstart[groups]];
    let mut qfill = qstart.clone();
    for (q, &g) in query_group.iter().enumerate() {
        if g != missing {
            queries[qfill[g as usize]] = q as u32;
            qfill[g as usize] += 1;
        }
    }
    drop(qfill);
    let answer = |g: usize, t: i64| -> Option<u32> {
        let group = &slots[start[g]..start[g + 1]];
        let end = group.partition_point(|s| s.0 <= t);
        for &(event, i) in group[..end].iter().rev() {
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
    };
    let solve = |from: usize, to: usize| -> Vec<(u32, u32)> {
        let mut out = Vec::with_capacity(qstart[to] - qstart[from]);
        for g in from..to {
            for &q in &queries[qstart[g]..qstart[g + 1]] {
                if let Some(i) = answer(g, entity_ts[q as usize]) {
                    out.push((q, i));
                }
            }
        }
        out
    };
    let mut result: Vec<Option<u32>> = vec![None; wanted.len()];
    let parallel = threads > 1 && wanted.len() > 10_000;
    let ranges: Vec<(usize, usize)> = if parallel {
        bounds.windows(2).map(|w| (w[0], w[1])).collect()
    } else {
        vec![(0, groups)]
    };
    let parts = map_scoped(ranges, parallel, |(from, to)| solve(from, to));
    for (q, i) in parts.into_iter().flatten() {
        result[q as usize] = Some(i);
    }
    result.into_iter().collect()
}

type Ids = HashMap<i64, u32, BuildHasherDefault<IntHasher>>;

/// Numbers the distinct keys of `stored` (its chunks in order, `total` rows): the
/// id of every key, and per row the id of its key. Runs of chunks of about equal
/// rows are numbered on `threads` threads; the numberings are then merged (one
/// pass over the distinct keys) and the later runs' ids renumbered.
fn number_groups(stored: &[&[i64]], total: usize, threads: usize) -> (Ids, Vec<u32>) {
    let mut chunk_bounds = vec![0usize];
    let mut seen = 0usize;
    for (c, chunk) in stored.iter().enumerate() {
        seen += chunk.len();
        if chunk_bounds.len() < threads && seen >= total * chunk_bounds.len() / threads {
            chunk_bounds.push(c + 1);
        }
    }
    if chunk_bounds.last() != Some(&stored.len()) {
        chunk_bounds.push(stored.len());
    }
    let runs: Vec<&[&[i64]]> = chunk_bounds
        .windows(2)
        .map(|w| &stored[w[0]..w[1]])
        .collect();
    let run_rows: Vec<usize> = runs
        .iter()
        .map(|run| run.iter().map(|c| c.len()).sum())
        .collect();
    let mut group_of = vec![0u32; total];
    let jobs: Vec<(&mut [u32], &[&[i64]])> = split_lengths(&mut group_of, run_rows.iter().copied())
        .into_iter()
        .zip(runs)
        .collect();
    let mut locals = map_scoped(jobs, threads > 1, |(mine, run)| {
        let mut ids = Ids::default();
        for (slot, &k) in mine.iter_mut().zip(run.iter().flat_map(|c| c.iter())) {
            let next = ids.len() as u32;
            *slot = *ids.entry(k).or_insert(next);
        }
        ids
    });
    let mut ids = if locals.is_empty() {
        Ids::default()
    } else {
        locals.remove(0)
    };
    let remaps: Vec<Vec<u32>> = locals
        .iter()
        .map(|local| {
            let mut remap = vec![0u32; local.len()];
            for (&k, &lid) in local {
                let next = ids.len() as u32;
                remap[lid as usize] = *ids.entry(k).or_insert(next);
            }
            remap
        })
        .collect();
    drop(locals);
    let later: Vec<(&mut [u32], &Vec<u32>)> =
        split_lengths(&mut group_of, run_rows.iter().copied())
            .into_iter()
            .skip(1)
            .zip(&remaps)
            .collect();
    map_scoped(later, threads > 1, |(mine, remap)| {
        for g in mine.iter_mut() {
            *g = remap[*g as usize];
        }
    });
    (ids, group_of)
}

/// `slice` cut into consecutive parts of the given lengths.
fn split_lengths<T>(
    mut slice: &mut [T],
    lengths: impl IntoIterator<Item = usize>,
) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for n in lengths {
        let (part, rest) = std::mem::take(&mut slice).split_at_mut(n);
        parts.push(part);
        slice = rest;
    }
    parts
}

/// `f` applied to every input, in order: on one scoped thread per input when
/// `parallel`, else on this thread. A panic on a thread is raised again here.
pub(crate) fn map_scoped<I: Send, R: Send>(
    inputs: Vec<I>,
    parallel: bool,
    f: impl Fn(I) -> R + Sync,
) -> Vec<R> {
    if !parallel || inputs.len() < 2 {
        return inputs.into_iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = inputs
            .into_iter()
            .map(|input| scope.spawn(move || f(input)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    /// Feature rows split into many chunks (numbered on several threads, then
    /// merged) give the same answer as one chunk.
    #[test]
    fn chunked_rows_number_groups_like_one_chunk() {
        let mut state = 7u64;
        let mut next = |m: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let n = 240_000;
        // Keys of the later chunks partly new, partly seen before.
        let keys: Vec<i64> = (0..n)
            .map(|i| next(2000 + i as u64 / 40) as i64 - 500)
            .collect();
        let event: Vec<i64> = (0..n).map(|_| next(1000) as i64).collect();
        let qk: Vec<i64> = (0..20_000).map(|_| next(8000) as i64 - 600).collect();
        let qt: Vec<i64> = (0..20_000).map(|_| next(1100) as i64).collect();
        let whole = as_of_int(&qk, &qt, &[&keys], &[&event], None, Some(300), false);
        let cuts = [0, 1, 70_000, 70_001, 150_000, 239_999, n];
        let key_chunks: Vec<&[i64]> = cuts.windows(2).map(|w| &keys[w[0]..w[1]]).collect();
        let event_chunks: Vec<&[i64]> = cuts.windows(2).map(|w| &event[w[0]..w[1]]).collect();
        let chunked = as_of_int(&qk, &qt, &key_chunks, &event_chunks, None, Some(300), false);
        assert_eq!(whole, chunked);
        assert!(whole.null_count() < whole.len() && whole.null_count() > 0);
    }

    /// The integer fast path (parallel above 100,000 rows) agrees with the generic
    /// row-encoded path on the same data.
    #[test]
    fn fast_and_generic_paths_agree_on_large_inputs() {
        let mut state = 42u64;
        let mut next = |m: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let n = 150_000;
        let keys: Vec<i64> = (0..n).map(|_| next(1000) as i64).collect();
        let event: Vec<i64> = (0..n).map(|_| next(500) as i64).collect();
        let created: Vec<i64> = event.iter().map(|e| e + next(3) as i64).collect();
        let qk: Vec<i64> = (0..3000).map(|_| next(1100) as i64).collect();
        let qt: Vec<i64> = (0..3000).map(|_| next(520) as i64).collect();
        let as_strings = |v: &[i64]| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                v.iter().map(|k| k.to_string()),
            ))
        };
        for (ttl, require) in [(None, false), (Some(40), true), (Some(0), false)] {
            let int_keys: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(keys.clone()))];
            let fast = as_of_indices(
                &[Arc::new(Int64Array::from(qk.clone())) as ArrayRef],
                &qt,
                &FeatureRows {
                    keys: &int_keys,
                    event: &event,
                    created: Some(&created),
                },
                ttl,
                require,
            )
            .unwrap();
            let str_keys = vec![as_strings(&keys)];
            let generic = as_of_indices(
                &[as_strings(&qk)],
                &qt,
                &FeatureRows {
                    keys: &str_keys,
                    event: &event,
                    created: Some(&created),
                },
                ttl,
                require,
            )
            .unwrap();
            assert_eq!(fast, generic, "ttl {ttl:?}, require {require}");
            assert!(
                fast.null_count() < fast.len(),
                "the test data must produce matches"
            );
        }
    }
}
