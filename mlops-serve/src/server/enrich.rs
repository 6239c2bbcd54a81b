//! Feature enrichment: inputs a request lacks, looked up in the online feature
//! store by the entity keys it carries.

use arrow_array::{ArrayRef, RecordBatch};
use mlops_core::feature::FeatureStatus;
use mlops_core::inference::{Tensor, tensor_to_column, tensors_from_batch};
use mlops_core::model::ModelVersion;
use mlops_core::{Error, Result};

use crate::config::Enrichment;

/// Fills the signature inputs a request lacks from the online store, by the
/// entity keys it carries instead.
pub(super) async fn enrich(
    name: &str,
    e: &Enrichment,
    version: &ModelVersion,
    signature: &mlops_core::Signature,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>> {
    let missing: Vec<_> = signature
        .inputs
        .iter()
        .filter(|s| !inputs.iter().any(|t| t.name == s.name))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(inputs);
    }
    let mut keys = Vec::with_capacity(e.entity_keys.len());
    for k in &e.entity_keys {
        let t = inputs.iter().find(|t| &t.name == k).ok_or_else(|| {
            Error::invalid_input(
                format!("input '{}'", missing[0].name),
                format!(
                    "missing from the request, and the request lacks entity key '{k}' to look it up"
                ),
            )
        })?;
        if t.shape.len() != 1 {
            return Err(Error::invalid_input(
                format!("input '{k}'"),
                format!("entity keys are one-dimensional; shape {:?}", t.shape),
            ));
        }
        keys.push((k.clone(), tensor_to_column(t)?));
    }
    let entity_rows = RecordBatch::try_from_iter(keys)
        .map_err(|e| Error::invalid_input(format!("entity keys of {name}"), e.to_string()))?;
    let online = e
        .store
        .get_online_features(entity_rows, &e.features)
        .await?;
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for col in &online.columns {
        if let Some((row, status)) = col
            .statuses
            .iter()
            .enumerate()
            .find(|(_, s)| **s != FeatureStatus::Present)
        {
            return Err(Error::invalid_input(
                format!("feature {}", col.feature),
                format!(
                    "row {row}: {status:?} in the online store, so model {name} version {} has no value for it",
                    version.version
                ),
            ));
        }
        let array = online
            .batch
            .column_by_name(&col.column)
            .cloned()
            .ok_or_else(|| {
                Error::backend(
                    "feature store",
                    format!("online result lacks column {}", col.column),
                )
            })?;
        columns.push((col.feature.feature().to_owned(), array));
    }
    let features = RecordBatch::try_from_iter(columns)
        .map_err(|e| Error::backend("feature store", e.to_string()))?;
    let looked_up = tensors_from_batch(&missing, &features)?;
    let mut out: Vec<Tensor> = inputs
        .into_iter()
        .filter(|t| signature.inputs.iter().any(|s| s.name == t.name))
        .collect();
    out.extend(looked_up);
    Ok(out)
}
