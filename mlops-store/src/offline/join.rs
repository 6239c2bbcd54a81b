//! The point-in-time join of entity rows with features (`pit` holds the
//! algorithm).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::{concat, interleave};
use arrow::datatypes::{DataType, Field, Schema};
use mlops_core::feature::{FeatureRef, HistoricalOptions};
use mlops_core::{Error, ResourceKind, Result};

use super::ObjectOfflineStore;
use super::ingest::to_micros;
use super::pit;

impl ObjectOfflineStore {
    /// Point-in-time correct join of `entity_df` with `features` (see
    /// [`HistoricalOptions`]): one output row per input row, in input order, with
    /// the input's columns followed by the features in the order requested.
    pub async fn get_historical_features(
        &self,
        entity_df: RecordBatch,
        features: &[FeatureRef],
        options: HistoricalOptions,
    ) -> Result<RecordBatch> {
        if features.is_empty() {
            return Err(Error::invalid_input("feature references", "none given"));
        }
        let ts_col = entity_df
            .column_by_name(&options.event_timestamp_column)
            .ok_or_else(|| {
                Error::schema_mismatch(
                    "entity dataframe",
                    &options.event_timestamp_column,
                    "a timestamp column (HistoricalOptions::event_timestamp_column)",
                    "no such column",
                )
            })?;
        let entity_ts = to_micros("entity dataframe", &options.event_timestamp_column, ts_col)?;
        if entity_ts.null_count() > 0 {
            return Err(Error::invalid_input(
                format!(
                    "entity dataframe column '{}'",
                    options.event_timestamp_column
                ),
                format!("{} rows have a null timestamp", entity_ts.null_count()),
            ));
        }
        let entity_ts = entity_ts.values().to_vec();
        let defs = self.read_definitions().await?;

        // Group the references by view, keeping the requested order for the output.
        let mut by_view: BTreeMap<&str, Vec<&FeatureRef>> = BTreeMap::new();
        for r in features {
            let view = defs
                .views
                .get(r.view())
                .ok_or_else(|| Error::not_found(ResourceKind::FeatureView, r.view()))?;
            if view.feature(r.feature()).is_none() {
                return Err(Error::not_found(ResourceKind::Feature, r.to_string()));
            }
            by_view.entry(r.view()).or_default().push(r);
        }
        let mut names: HashMap<String, String> = entity_df
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), "the entity dataframe".to_owned()))
            .collect();
        for r in features {
            let name = r.column_name(options.full_feature_names);
            if let Some(other) = names.insert(name.clone(), r.to_string()) {
                return Err(Error::invalid_input(
                    format!("output column '{name}'"),
                    format!(
                        "both {other} and {r} would produce it; set full_feature_names or rename"
                    ),
                ));
            }
        }

        let (min_t, max_t) = entity_ts
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        let mut columns: HashMap<String, ArrayRef> = HashMap::new();
        for (view_name, refs) in by_view {
            let view = &defs.views[view_name];
            let mut keys = Vec::with_capacity(view.join_keys.len());
            for k in &view.join_keys {
                let col = entity_df.column_by_name(&k.name).ok_or_else(|| {
                    Error::schema_mismatch(
                        "entity dataframe",
                        &k.name,
                        format!("join key of view {view_name} ({})", k.data_type),
                        "no such column",
                    )
                })?;
                if col.data_type() != &k.data_type {
                    return Err(Error::schema_mismatch(
                        "entity dataframe",
                        &k.name,
                        k.data_type.to_string(),
                        col.data_type().to_string(),
                    ));
                }
                keys.push(col.clone());
            }
            let ttl_us = view
                .ttl
                .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            let mut wanted: Vec<String> = view.join_keys.iter().map(|k| k.name.clone()).collect();
            wanted.push(view.event_time_column.clone());
            wanted.extend(view.created_time_column.clone());
            wanted.extend(refs.iter().map(|r| r.feature().to_owned()));
            let lo = ttl_us.map_or(i64::MIN, |t| min_t.saturating_sub(t));
            let (schema, batches) = self.scan(view, &wanted, lo, max_t).await?;
            // Feature values are gathered straight from the batches they were read
            // into; keys and times are concatenated only when the key is not a
            // single integer.
            let column_of = |name: &str| -> Result<Vec<&dyn Array>> {
                let i = schema.index_of(name).map_err(|_| {
                    Error::schema_mismatch(
                        format!("feature view {view_name}"),
                        name,
                        "a stored column",
                        "missing",
                    )
                })?;
                Ok(batches.iter().map(|b| b.column(i).as_ref()).collect())
            };
            let concat_of = |name: &str| -> Result<ArrayRef> {
                let parts = column_of(name)?;
                if parts.is_empty() {
                    let field = schema
                        .field_with_name(name)
                        .map_err(|e| Error::backend("arrow", e))?;
                    return Ok(new_null_array(field.data_type(), 0));
                }
                concat(&parts).map_err(|e| Error::backend("arrow", e))
            };
            let created = view
                .created_time_column
                .as_deref()
                .map(concat_of)
                .transpose()?;
            let created_values = created.as_ref().map(|c| {
                c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .values()
                    .to_vec()
            });
            let require_created =
                options.require_created_before_event && view.created_time_column.is_some();
            let event_chunks: Vec<&[i64]> = column_of(&view.event_time_column)?
                .into_iter()
                .map(|a| {
                    a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values()
                        .as_ref()
                })
                .collect();
            // A single integer key is indexed straight from the batches; other keys
            // are concatenated and row-encoded.
            let int_chunks: Option<Vec<std::borrow::Cow<'_, [i64]>>> =
                match (&keys[..], &view.join_keys[..]) {
                    ([wanted], [key]) if pit::int_values(wanted.as_ref()).is_some() => {
                        column_of(&key.name)?
                            .into_iter()
                            .map(pit::int_values)
                            .collect()
                    }
                    _ => None,
                };
            let indices = match (
                int_chunks,
                keys.first().and_then(|k| pit::int_values(k.as_ref())),
            ) {
                (Some(chunks), Some(wanted)) => {
                    let chunk_refs: Vec<&[i64]> = chunks.iter().map(|c| c.as_ref()).collect();
                    pit::as_of_int(
                        &wanted,
                        &entity_ts,
                        &chunk_refs,
                        &event_chunks,
                        created_values.as_deref(),
                        ttl_us,
                        require_created,
                    )
                }
                _ => {
                    let feature_keys: Vec<ArrayRef> = view
                        .join_keys
                        .iter()
                        .map(|k| concat_of(&k.name))
                        .collect::<Result<_>>()?;
                    let event = concat_of(&view.event_time_column)?;
                    let event = event
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .values();
                    pit::as_of_indices(
                        &keys,
                        &entity_ts,
                        &pit::FeatureRows {
                            keys: &feature_keys,
                            event,
                            created: created_values.as_deref(),
                        },
                        ttl_us,
                        require_created,
                    )?
                }
            };
            // Global row index -> (batch, row); misses point at a one-row null array.
            let starts: Vec<usize> = batches
                .iter()
                .scan(0usize, |acc, b| {
                    let start = *acc;
                    *acc += b.num_rows();
                    Some(start)
                })
                .collect();
            let picks: Vec<(usize, usize)> = indices
                .iter()
                .map(|i| match i {
                    Some(i) => {
                        let i = i as usize;
                        let b = starts.partition_point(|&s| s <= i) - 1;
                        (b, i - starts[b])
                    }
                    None => (batches.len(), 0),
                })
                .collect();
            // In large joins each feature is gathered on its own thread: the reads
            // are random over the whole view, so the cores overlap their cache
            // misses.
            let mut inputs = Vec::with_capacity(refs.len());
            for r in &refs {
                let field = schema
                    .field_with_name(r.feature())
                    .map_err(|e| Error::backend("arrow", e))?;
                let null = new_null_array(field.data_type(), 1);
                inputs.push((r, column_of(r.feature())?, null));
            }
            let gathered = pit::map_scoped(inputs, picks.len() > 10_000, |(r, mut parts, null)| {
                parts.push(null.as_ref());
                (r, interleave(&parts, &picks))
            });
            for (r, values) in gathered {
                columns.insert(
                    r.to_string(),
                    values.map_err(|e| Error::backend("arrow", e))?,
                );
            }
        }
        let mut fields: Vec<Field> = entity_df
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut arrays: Vec<ArrayRef> = entity_df.columns().to_vec();
        for r in features {
            let values = columns
                .remove(&r.to_string())
                .unwrap_or_else(|| new_null_array(&DataType::Null, entity_df.num_rows()));
            fields.push(Field::new(
                r.column_name(options.full_feature_names),
                values.data_type().clone(),
                true,
            ));
            arrays.push(values);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| Error::backend("arrow", e))
    }
}
