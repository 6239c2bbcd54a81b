//! The point-in-time ("as of") join at the heart of historical retrieval.

use std::collections::HashMap;

use arrow::array::{ArrayRef, UInt32Array};
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
