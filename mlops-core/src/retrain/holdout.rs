//! Reading labelled rows: their event times, and the split that holds out the most
//! recent ones.

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch, UInt32Array};

use crate::error::{Error, Result};

/// The `event_timestamp` of every labelled row, in microseconds (UTC).
fn event_times(batch: &RecordBatch) -> Result<Vec<i64>> {
    let col = batch.column_by_name("event_timestamp").ok_or_else(|| {
        Error::schema_mismatch(
            "labelled rows",
            "event_timestamp",
            "a timestamp column",
            "missing",
        )
    })?;
    let ts = arrow_cast::cast(
        col,
        &arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
    )
    .map_err(|e| {
        Error::schema_mismatch(
            "labelled rows",
            "event_timestamp",
            "a timestamp",
            e.to_string(),
        )
    })?;
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    if ts.null_count() > 0 {
        return Err(Error::invalid_input(
            "labelled rows",
            "event_timestamp has nulls",
        ));
    }
    Ok(ts.values().to_vec())
}

/// The labelled rows split into (training, hold-out): the hold-out is the most
/// recent `fraction` of them (at least one row), and at least one row is left to
/// train on.
pub(super) fn split_recent(
    labelled: &RecordBatch,
    fraction: f64,
) -> Result<(RecordBatch, RecordBatch)> {
    let times = event_times(labelled)?;
    let mut order: Vec<u32> = (0..labelled.num_rows() as u32).collect();
    order.sort_by_key(|&i| times[i as usize]);
    let holdout_rows = ((order.len() as f64) * fraction).round().max(1.0) as usize;
    let split = order.len() - holdout_rows.min(order.len().saturating_sub(1));
    let take = |idx: &[u32]| {
        arrow_select::take::take_record_batch(labelled, &UInt32Array::from(idx.to_vec()))
            .map_err(|e| Error::backend("arrow", e))
    };
    Ok((take(&order[..split])?, take(&order[split..])?))
}
