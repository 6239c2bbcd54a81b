//! Data preparation: reading the label column (classes numbered, the positive one
//! last), the regression target scale and class weights.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use arrow_array::RecordBatch;
use mlops_core::{Error, Result, Task};

use crate::prep::{column, numeric_values};

use super::config::*;

/// Labels read from the label column.
pub(super) enum Labels {
    Classes { ids: Vec<usize>, names: Vec<String> },
    Values(Vec<f64>),
}
/// Class labels of a column: integer and boolean classes sort numerically,
/// strings lexically. `positive` moves that class last (binary tasks).
pub(super) fn read_classes(
    batch: &RecordBatch,
    label: &str,
    positive: Option<&str>,
) -> Result<(Vec<usize>, Vec<String>)> {
    let array = column(batch, label)?;
    if let Some(row) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(Error::invalid_input(
            format!("label column '{label}'"),
            format!("row {row} is null; every training row needs a label"),
        ));
    }
    let raw: Vec<String> = match array.data_type() {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let ints = cast(array, &DataType::Int64).map_err(|e| {
                Error::schema_mismatch("training data", label, "class labels", e.to_string())
            })?;
            let ints = ints.as_primitive::<Int64Type>();
            let mut distinct: Vec<i64> = ints.values().to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            let bool_label = matches!(array.data_type(), DataType::Boolean);
            let name = |v: i64| {
                if bool_label {
                    (v == 1).to_string()
                } else {
                    v.to_string()
                }
            };
            let index: HashMap<i64, usize> =
                distinct.iter().enumerate().map(|(i, &v)| (v, i)).collect();
            let names: Vec<String> = distinct.iter().map(|&v| name(v)).collect();
            let ids = ints.values().iter().map(|v| index[v]).collect();
            return reorder_positive(label, ids, names, positive);
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let s = cast(array, &DataType::Utf8).map_err(|e| {
                Error::schema_mismatch("training data", label, "class labels", e.to_string())
            })?;
            s.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_owned())
                .collect()
        }
        other => {
            return Err(Error::schema_mismatch(
                "training data",
                label,
                "integer, boolean or string class labels",
                other.to_string(),
            ));
        }
    };
    let mut names = raw.clone();
    names.sort_unstable();
    names.dedup();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_str(), i))
        .collect();
    let ids = raw.iter().map(|v| index[v.as_str()]).collect();
    reorder_positive(label, ids, names, positive)
}
pub(super) fn reorder_positive(
    label: &str,
    mut ids: Vec<usize>,
    mut names: Vec<String>,
    positive: Option<&str>,
) -> Result<(Vec<usize>, Vec<String>)> {
    let Some(positive) = positive else {
        return Ok((ids, names));
    };
    let at = names.iter().position(|n| n == positive).ok_or_else(|| {
        Error::invalid_input(
            "positive_class",
            format!(
                "{positive:?} is not a class of label column '{label}'; its classes are {names:?}"
            ),
        )
    })?;
    let last = names.len() - 1;
    names.swap(at, last);
    for id in &mut ids {
        if *id == at {
            *id = last;
        } else if *id == last {
            *id = at;
        }
    }
    Ok((ids, names))
}
pub(super) fn read_labels(
    config: &TrainConfig,
    batch: &RecordBatch,
    label: &str,
) -> Result<Labels> {
    match config.task {
        Task::Regression => {
            let values = numeric_values(label, column(batch, label)?)?;
            if let Some(row) = values.iter().position(Option::is_none) {
                return Err(Error::invalid_input(
                    format!("label column '{label}'"),
                    format!("row {row} is null; every training row needs a label"),
                ));
            }
            Ok(Labels::Values(values.into_iter().flatten().collect()))
        }
        task => {
            let (ids, names) = read_classes(batch, label, config.positive_class.as_deref())?;
            let what = || format!("label column '{label}'");
            if names.len() < 2 {
                return Err(Error::invalid_input(
                    what(),
                    format!("has a single class {names:?}; a classifier needs at least two"),
                ));
            }
            if task == Task::BinaryClassification && names.len() > 2 {
                return Err(Error::invalid_input(
                    what(),
                    format!(
                        "has {} classes; binary classification needs exactly two (use \
                         multi-class classification)",
                        names.len()
                    ),
                ));
            }
            Ok(Labels::Classes { ids, names })
        }
    }
}
/// The regression target's training mean and standard deviation (the network
/// learns the standardized target); `None` for classification.
pub(super) fn target_scale(labels: &Labels, train_rows: &[u32]) -> Option<(f64, f64)> {
    let Labels::Values(v) = labels else {
        return None;
    };
    let n = train_rows.len() as f64;
    let mean = train_rows.iter().map(|&r| v[r as usize]).sum::<f64>() / n;
    let var = train_rows
        .iter()
        .map(|&r| (v[r as usize] - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    Some((mean, if std > 1e-12 { std } else { 1.0 }))
}
/// The loss weight of each class (empty for regression).
pub(super) fn class_weights(
    labels: &Labels,
    weights: &ClassWeights,
    train_rows: &[u32],
) -> Result<Vec<f64>> {
    Ok(match (labels, weights) {
        (Labels::Classes { ids, names }, ClassWeights::Balanced) => {
            let mut counts = vec![0usize; names.len()];
            for &r in train_rows {
                counts[ids[r as usize]] += 1;
            }
            counts
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        train_rows.len() as f64 / (names.len() * c) as f64
                    }
                })
                .collect()
        }
        (Labels::Classes { names, .. }, ClassWeights::Custom(w)) => {
            if let Some(unknown) = w.keys().find(|k| !names.contains(k)) {
                return Err(Error::invalid_input(
                    "class_weights",
                    format!("{unknown:?} is not a class; the classes are {names:?}"),
                ));
            }
            names
                .iter()
                .map(|n| w.get(n).copied().unwrap_or(1.0))
                .collect()
        }
        (Labels::Classes { names, .. }, ClassWeights::None) => vec![1.0; names.len()],
        (Labels::Values(_), _) => Vec::new(),
    })
}
