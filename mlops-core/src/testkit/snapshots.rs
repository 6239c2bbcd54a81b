//! [`DatasetSnapshots`]: content-addressed, so the same data gives the same id.

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};

use crate::monitoring::DatasetSnapshots;

fn batch(values: Vec<i64>) -> RecordBatch {
    RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(values)) as _)])
        .expect("a one-column batch")
}

/// Runs the snapshot contract on `snapshots`.
pub async fn conformance(snapshots: &dyn DatasetSnapshots) {
    let a = snapshots
        .snapshot(&[batch(vec![1, 2, 3])], "conformance a")
        .await
        .expect("snapshot a");
    let again = snapshots
        .snapshot(&[batch(vec![1, 2, 3])], "conformance a")
        .await
        .expect("snapshot a again");
    assert_eq!(a, again, "the same data and description give the same id");
    let b = snapshots
        .snapshot(&[batch(vec![1, 2, 4])], "conformance a")
        .await
        .expect("snapshot b");
    assert_ne!(a, b, "different data gives a different id");
    assert!(!a.is_empty(), "an id is not empty");
    super::expect_err(
        snapshots.snapshot(&[], "nothing").await,
        "a snapshot of no batches",
        |e| matches!(e, crate::Error::InvalidInput { .. }),
    );
}
