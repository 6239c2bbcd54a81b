//! [`ViewLabels`]: labelled rows for the retraining loop, read from a feature
//! view of the offline store.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMicrosecondType};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mlops_core::monitoring::LabelSource;
use mlops_core::{Error, ResourceKind, Result};

use crate::offline::ObjectOfflineStore;

/// The column the loop reads event times from.
const EVENT_TIMESTAMP: &str = "event_timestamp";

/// A [`LabelSource`] over a feature view whose rows are labelled events (a
/// `chargebacks` view: the card, the transaction's time, `is_fraud`): the rows
/// whose event time is in the window, as the view's join keys, its event time
/// (renamed `event_timestamp`, as the loop's training sets expect) and the
/// label column. Rows whose label is null are not labelled yet and are left
/// out. Labels arrive as any feature data does (`ingest`, `mlops features
/// ingest`), so a label that comes late is found by the next window that
/// covers its event time.
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_store::{ObjectOfflineStore, StoreRoot, ViewLabels};
///
/// let offline = ObjectOfflineStore::new(&StoreRoot::open("memory://")?);
/// let labels = ViewLabels::new(&offline, "chargebacks", "is_fraud");
/// # let _ = labels; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ViewLabels {
    offline: ObjectOfflineStore,
    view: String,
    label: String,
}

impl ViewLabels {
    /// Labels from column `label` of view `view`.
    pub fn new(
        offline: &ObjectOfflineStore,
        view: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        Self {
            offline: offline.clone(),
            view: view.into(),
            label: label.into(),
        }
    }
}

#[async_trait]
impl LabelSource for ViewLabels {
    async fn labelled_rows(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RecordBatch> {
        let view = self.offline.get_view(&self.view).await?;
        if !view.features.iter().any(|f| f.name == self.label) {
            return Err(Error::not_found(
                ResourceKind::Feature,
                format!("{}:{} (the label column)", self.view, self.label),
            ));
        }
        let keys: Vec<String> = view.join_keys.iter().map(|k| k.name.clone()).collect();
        if keys.iter().any(|k| k == EVENT_TIMESTAMP) || self.label == EVENT_TIMESTAMP {
            return Err(Error::invalid_input(
                format!("label view {}", self.view),
                format!(
                    "{EVENT_TIMESTAMP:?} is the labelled rows' time; a key or label of that name would be ambiguous"
                ),
            ));
        }
        let mut columns = keys;
        columns.push(view.event_time_column.clone());
        columns.push(self.label.clone());
        let (since_us, until_us) = (since.timestamp_micros(), until.timestamp_micros());
        let (schema, batches) = if until_us > since_us {
            self.offline
                .scan(&view, &columns, since_us, until_us - 1)
                .await?
        } else {
            let full = view.schema();
            let fields: Vec<Field> = columns
                .iter()
                .filter_map(|c| full.field_with_name(c).ok().cloned())
                .collect();
            (Arc::new(Schema::new(fields)), Vec::new())
        };
        let batch = concat_batches(&schema, &batches).map_err(|e| Error::backend("arrow", e))?;
        // The scan prunes files and row groups by time; rows are cut here.
        let times = arrow::compute::cast(
            batch.column(batch.num_columns() - 2),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )
        .map_err(|e| Error::backend("arrow", e))?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        let label = batch.column(batch.num_columns() - 1);
        let labelled: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(
                    times.is_valid(i)
                        && (since_us..until_us).contains(&times.value(i))
                        && label.is_valid(i),
                )
            })
            .collect();
        let batch =
            filter_record_batch(&batch, &labelled).map_err(|e| Error::backend("arrow", e))?;
        // The view's event time is the labelled rows' `event_timestamp`.
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let f = f.as_ref().clone();
                if f.name() == &view.event_time_column {
                    f.with_name(EVENT_TIMESTAMP)
                } else {
                    f
                }
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())
            .map_err(|e| Error::backend("arrow", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::StoreRoot;
    use arrow::array::{Array, ArrayRef, Int64Array, TimestampMicrosecondArray};
    use chrono::TimeZone;
    use mlops_core::feature::{ApplyOptions, FeatureView};

    fn at(us: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(us).single().unwrap()
    }

    #[tokio::test]
    async fn the_window_keys_time_and_label_of_labelled_rows_only() {
        let offline = ObjectOfflineStore::new(&StoreRoot::open("memory://").unwrap());
        let view = FeatureView::builder("chargebacks")
            .join_key("card", DataType::Int64)
            .event_time("ts")
            .feature("is_fraud", DataType::Int64)
            .feature("amount", DataType::Int64)
            .build()
            .unwrap();
        offline
            .apply_view(view, ApplyOptions::default())
            .await
            .unwrap();
        let batch = RecordBatch::try_from_iter([
            (
                "card",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(vec![10, 20, 30, 40]).with_timezone("UTC"))
                    as ArrayRef,
            ),
            (
                "is_fraud",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(0), Some(1)])) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(Int64Array::from(vec![5, 6, 7, 8])) as ArrayRef,
            ),
        ])
        .unwrap();
        offline.ingest("chargebacks", batch).await.unwrap();
        let labels = ViewLabels::new(&offline, "chargebacks", "is_fraud");
        let rows = labels.labelled_rows(at(10), at(40)).await.unwrap();
        let schema = rows.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["card", "event_timestamp", "is_fraud"]);
        let cards = rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(
            cards.values(),
            &[1, 3],
            "40 is past the window, 2 has no label"
        );
        // An empty or inverted window is empty, with the same columns.
        let none = labels.labelled_rows(at(40), at(40)).await.unwrap();
        assert_eq!((none.num_rows(), none.num_columns()), (0, 3));
        // Unknown views and labels name themselves.
        let err = ViewLabels::new(&offline, "chargebacks", "nope")
            .labelled_rows(at(0), at(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("chargebacks:nope"), "{err}");
        let err = ViewLabels::new(&offline, "missing", "is_fraud")
            .labelled_rows(at(0), at(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
