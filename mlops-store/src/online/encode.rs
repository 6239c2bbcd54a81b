//! Encoding shared by the online stores: rows in Arrow's row format, checked
//! against the view.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef, TimestampMicrosecondType};
use arrow::row::{RowConverter, Rows, SortField};
use mlops_core::feature::FeatureView;
use mlops_core::{Error, ResourceKind, Result};

use super::fixed::FixedLayout;

pub(super) fn converter(
    fields: impl Iterator<Item = arrow::datatypes::DataType>,
) -> Result<RowConverter> {
    RowConverter::new(fields.map(SortField::new).collect()).map_err(|e| Error::backend("arrow", e))
}

/// The join key columns of `batch`, checked against the view; `context` names the
/// operation in errors (only formatted when there is one).
pub(super) fn key_columns(
    view: &FeatureView,
    batch: &RecordBatch,
    context: impl Fn() -> String,
) -> Result<Vec<arrow::array::ArrayRef>> {
    view.join_keys
        .iter()
        .map(|k| {
            let col = batch.column_by_name(&k.name).ok_or_else(|| {
                Error::schema_mismatch(context(), &k.name, k.data_type.to_string(), "missing")
            })?;
            if col.data_type() != &k.data_type {
                return Err(Error::schema_mismatch(
                    context(),
                    &k.name,
                    k.data_type.to_string(),
                    col.data_type().to_string(),
                ));
            }
            if col.null_count() > 0 {
                return Err(Error::invalid_input(
                    format!("{} column '{}'", context(), k.name),
                    format!("{} keys are null", col.null_count()),
                ));
            }
            Ok(col.clone())
        })
        .collect()
}

pub(super) fn times(batch: &RecordBatch, column: &str, context: &str) -> Result<Vec<i64>> {
    let col = batch.column_by_name(column).ok_or_else(|| {
        Error::schema_mismatch(context, column, "a timestamp (µs, UTC)", "missing")
    })?;
    let ts = col
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            Error::schema_mismatch(
                context,
                column,
                "Timestamp(µs, UTC)",
                col.data_type().to_string(),
            )
        })?;
    if ts.null_count() > 0 {
        return Err(Error::invalid_input(
            format!("{context} column '{column}'"),
            format!("{} rows are null", ts.null_count()),
        ));
    }
    Ok(ts.values().to_vec())
}

/// A batch to write, encoded: keys and feature values in row format, times in µs.
pub(super) struct EncodedRows {
    pub(super) keys: Rows,
    pub(super) values: Rows,
    pub(super) event: Vec<i64>,
    pub(super) created: Option<Vec<i64>>,
}

/// The row-format converters of one view (its join keys and its features), built
/// once per view and shared by every read and write.
/// Requested keys in row format.
pub(super) enum KeyRows {
    /// Encoded by Arrow's converter.
    Arrow(Rows),
    /// Encoded directly (fixed-width keys): rows of `width` bytes back to back.
    Fixed { bytes: Vec<u8>, width: usize },
}

impl KeyRows {
    /// The bytes of row `i`.
    pub(super) fn row(&self, i: usize) -> &[u8] {
        match self {
            Self::Arrow(rows) => rows.row(i).data(),
            Self::Fixed { bytes, width } => &bytes[i * width..(i + 1) * width],
        }
    }
}

#[derive(Debug)]
pub(super) struct Codec {
    keys: RowConverter,
    values: RowConverter,
    /// The direct layouts of key and value rows, when every column is of a
    /// fixed-width type [`FixedLayout`] handles.
    key_layout: Option<FixedLayout>,
    value_layout: Option<FixedLayout>,
    /// Schemas of read results, by the positions of the features read: a view is
    /// read with few distinct feature lists, and building a schema costs more than
    /// a small read.
    schemas: Mutex<Vec<(Vec<usize>, SchemaRef)>>,
}

/// The most schemas a [`Codec`] keeps.
const MAX_SCHEMAS: usize = 32;

impl Codec {
    pub(super) fn new(view: &FeatureView) -> Result<Self> {
        Ok(Self {
            keys: converter(view.join_keys.iter().map(|k| k.data_type.clone()))?,
            values: converter(view.features.iter().map(|f| f.data_type.clone()))?,
            key_layout: FixedLayout::of(view.join_keys.iter().map(|k| &k.data_type)),
            value_layout: FixedLayout::of(view.features.iter().map(|f| &f.data_type)),
            schemas: Mutex::new(Vec::new()),
        })
    }

    /// The schema of the `wanted` features of `view`.
    fn schema(&self, view: &FeatureView, wanted: &[usize]) -> SchemaRef {
        let mut schemas = self.schemas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, schema)) = schemas.iter().find(|(w, _)| w == wanted) {
            return schema.clone();
        }
        let schema = Arc::new(Schema::new(
            wanted
                .iter()
                .map(|&i| {
                    Field::new(
                        &view.features[i].name,
                        view.features[i].data_type.clone(),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        ));
        if schemas.len() < MAX_SCHEMAS {
            schemas.push((wanted.to_vec(), schema.clone()));
        }
        schema
    }

    /// Checks `rows` against the view (keys, times, every feature with its type)
    /// and encodes them.
    pub(super) fn encode_rows(
        &self,
        view: &FeatureView,
        rows: &RecordBatch,
    ) -> Result<EncodedRows> {
        let context = format!("online write to view {}", view.name);
        let keys = key_columns(view, rows, || context.clone())?;
        let event = times(rows, &view.event_time_column, &context)?;
        let created = view
            .created_time_column
            .as_deref()
            .map(|c| times(rows, c, &context))
            .transpose()?;
        let mut values = Vec::with_capacity(view.features.len());
        for f in &view.features {
            let col = rows.column_by_name(&f.name).ok_or_else(|| {
                Error::schema_mismatch(&context, &f.name, f.data_type.to_string(), "missing")
            })?;
            if col.data_type() != &f.data_type {
                return Err(Error::schema_mismatch(
                    &context,
                    &f.name,
                    f.data_type.to_string(),
                    col.data_type().to_string(),
                ));
            }
            values.push(col.clone());
        }
        let keys = self
            .keys
            .convert_columns(&keys)
            .map_err(|e| Error::backend("arrow", e))?;
        let values = self
            .values
            .convert_columns(&values)
            .map_err(|e| Error::backend("arrow", e))?;
        Ok(EncodedRows {
            keys,
            values,
            event,
            created,
        })
    }

    /// For a read: the positions of the requested features in the view, and the
    /// requested keys in row format.
    pub(super) fn plan_read(
        &self,
        view: &FeatureView,
        keys: &RecordBatch,
        features: &[String],
    ) -> Result<(Vec<usize>, KeyRows)> {
        let wanted: Vec<usize> = features
            .iter()
            .map(|f| {
                view.features
                    .iter()
                    .position(|v| &v.name == f)
                    .ok_or_else(|| {
                        Error::not_found(ResourceKind::Feature, format!("{}:{f}", view.name))
                    })
            })
            .collect::<Result<_>>()?;
        let key_cols = key_columns(view, keys, || {
            format!("online read from view {}", view.name)
        })?;
        if let Some(layout) = &self.key_layout
            && let Some(bytes) = layout.encode(&key_cols)
        {
            return Ok((
                wanted,
                KeyRows::Fixed {
                    bytes,
                    width: layout.len(),
                },
            ));
        }
        let key_rows = self
            .keys
            .convert_columns(&key_cols)
            .map_err(|e| Error::backend("arrow", e))?;
        Ok((wanted, KeyRows::Arrow(key_rows)))
    }

    /// The `wanted` features of encoded value rows, as one batch (one row per
    /// encoded row, in order).
    pub(super) fn decode_values<'a>(
        &self,
        view: &FeatureView,
        wanted: &[usize],
        encoded: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch> {
        let count = encoded.len();
        let encoded: Vec<&[u8]> = encoded.collect();
        let columns = match self
            .value_layout
            .as_ref()
            .and_then(|layout| layout.decode(wanted, &encoded))
        {
            Some(columns) => columns,
            None => {
                let parser = self.values.parser();
                let all = self
                    .values
                    .convert_rows(encoded.iter().map(|b| parser.parse(b)))
                    .map_err(|e| Error::backend("arrow", e))?;
                wanted.iter().map(|&i| all[i].clone()).collect()
            }
        };
        RecordBatch::try_new_with_options(
            self.schema(view, wanted),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(count)),
        )
        .map_err(|e| Error::backend("arrow", e))
    }
}
