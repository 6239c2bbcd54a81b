//! Tabular data preparation: raw Arrow columns (or v2 tensors) to a dense `f32`
//! matrix, with the statistics fitted on the training split.
//!
//! - numeric columns (integers, floats, booleans) are standardized with the mean
//!   and population standard deviation of their training values;
//! - categorical columns (strings, dictionary-encoded strings) are one-hot encoded
//!   over a vocabulary of the most frequent training values, plus one bucket for
//!   values never seen in training;
//! - a column with nulls in training gets an extra indicator column (1 where the
//!   value was null); nulls are imputed with the training mean (0 after
//!   standardization) or with no category.
//!
//! The fitted [`Preprocessor`] is saved inside the model artifact, so serving takes
//! raw feature values.
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Float64Array, RecordBatch, StringArray};
//! use mlops_train::{PrepConfig, Preprocessor};
//!
//! let batch = RecordBatch::try_from_iter([
//!     ("amount", Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)])) as _),
//!     ("country", Arc::new(StringArray::from(vec!["fr", "de", "fr"])) as _),
//! ])?;
//! let prep = Preprocessor::fit(&batch, &["amount".into(), "country".into()], &PrepConfig::default())?;
//! // amount (standardized) + its null indicator + country one-hot (fr, de, unknown)
//! assert_eq!(prep.width(), 5);
//! let matrix = prep.transform(&batch)?;
//! assert_eq!(matrix.len(), 3 * 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow_array::RecordBatch;
use mlops_core::inference::{Datatype, TensorData};
use mlops_core::{Error, Result, Tensor, TensorSpec};
use serde::{Deserialize, Serialize};

/// How categorical columns are encoded.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PrepConfig {
    /// At most this many categories per column keep their own one-hot slot (the
    /// most frequent ones); the rest share the unknown bucket. Default 64.
    pub max_categories: usize,
    /// A category needs at least this many training rows to get a slot. Default 1.
    pub min_category_count: usize,
}

impl Default for PrepConfig {
    fn default() -> Self {
        Self {
            max_categories: 64,
            min_category_count: 1,
        }
    }
}

/// What a feature column holds and how it is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoding {
    /// A standardized number: `(x - mean) / std`.
    Numeric {
        /// Training mean.
        mean: f64,
        /// Training standard deviation (1 for a constant column).
        std: f64,
    },
    /// A one-hot category: one slot per vocabulary entry, then the unknown bucket.
    Categorical {
        /// Categories with their own slot, most frequent first.
        vocabulary: Vec<String>,
    },
}

/// One raw feature and its fitted encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureEncoding {
    /// The column's name.
    pub name: String,
    /// The v2 datatype the model takes for it at serving time.
    pub datatype: Datatype,
    /// How it is encoded.
    pub encoding: Encoding,
    /// Whether an indicator column marks nulls (the column had nulls in training).
    pub null_indicator: bool,
}

impl FeatureEncoding {
    /// Columns this feature takes in the encoded matrix.
    pub fn width(&self) -> usize {
        let base = match &self.encoding {
            Encoding::Numeric { .. } => 1,
            Encoding::Categorical { vocabulary } => vocabulary.len() + 1,
        };
        base + usize::from(self.null_indicator)
    }
}

/// Fitted preprocessing: raw feature columns in, a dense row-major `f32` matrix out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    features: Vec<FeatureEncoding>,
    #[serde(skip)]
    lookups: Vec<Option<HashMap<String, usize>>>,
}

/// The v2 datatype for an Arrow column type, and whether it is categorical;
/// `None` for types a model cannot take.
fn classify(data_type: &DataType) -> Option<(Datatype, bool)> {
    Some(match data_type {
        DataType::Boolean => (Datatype::Bool, false),
        DataType::Int8 => (Datatype::Int8, false),
        DataType::Int16 => (Datatype::Int16, false),
        DataType::Int32 => (Datatype::Int32, false),
        DataType::Int64 => (Datatype::Int64, false),
        DataType::UInt8 => (Datatype::Uint8, false),
        DataType::UInt16 => (Datatype::Uint16, false),
        DataType::UInt32 => (Datatype::Uint32, false),
        DataType::UInt64 => (Datatype::Uint64, false),
        DataType::Float16 => (Datatype::Fp16, false),
        DataType::Float32 => (Datatype::Fp32, false),
        DataType::Float64 => (Datatype::Fp64, false),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (Datatype::Bytes, true),
        DataType::Dictionary(_, value) => match classify(value)? {
            (Datatype::Bytes, true) => (Datatype::Bytes, true),
            _ => return None,
        },
        _ => return None,
    })
}

/// The column `name` of `batch`, or a schema error naming it.
pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        Error::schema_mismatch(
            "tabular data",
            name,
            "a column",
            format!("no such column; the columns are {names:?}"),
        )
    })
}

/// A numeric column as `f64` values (`None` for nulls); non-finite values refused.
pub(crate) fn numeric_values(name: &str, array: &ArrayRef) -> Result<Vec<Option<f64>>> {
    let as_f64 = cast(array, &DataType::Float64).map_err(|e| {
        Error::schema_mismatch(
            "tabular data",
            name,
            "numbers",
            format!("{} ({e})", array.data_type()),
        )
    })?;
    let values = as_f64.as_primitive::<Float64Type>();
    values
        .iter()
        .enumerate()
        .map(|(row, v)| match v {
            Some(x) if !x.is_finite() => Err(Error::invalid_input(
                format!("column '{name}'"),
                format!("row {row} is {x}; use nulls for missing values"),
            )),
            other => Ok(other),
        })
        .collect()
}

/// A categorical column as strings (`None` for nulls).
fn string_values(name: &str, array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let as_utf8 = cast(array, &DataType::Utf8).map_err(|e| {
        Error::schema_mismatch(
            "tabular data",
            name,
            "strings",
            format!("{} ({e})", array.data_type()),
        )
    })?;
    Ok(as_utf8
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect())
}

impl Preprocessor {
    /// Fits the encoding of `features` on `batch` (the training split).
    ///
    /// A missing column, or one of a type a model cannot take (timestamps, lists,
    /// binary), gives [`Error::SchemaMismatch`] naming it; a non-finite number gives
    /// [`Error::InvalidInput`] naming the column and row; no rows or no features give
    /// [`Error::InvalidInput`].
    pub fn fit(batch: &RecordBatch, features: &[String], config: &PrepConfig) -> Result<Self> {
        if features.is_empty() {
            return Err(Error::invalid_input("features", "no feature columns given"));
        }
        if batch.num_rows() == 0 {
            return Err(Error::invalid_input("training data", "has no rows"));
        }
        let mut encodings = Vec::with_capacity(features.len());
        for name in features {
            let array = column(batch, name)?;
            let (datatype, categorical) = classify(array.data_type()).ok_or_else(|| {
                Error::schema_mismatch(
                    "training data",
                    name,
                    "numbers, booleans or strings (leave other columns out of the features)",
                    array.data_type().to_string(),
                )
            })?;
            let null_indicator = array.null_count() > 0;
            let encoding = if categorical {
                let mut counts: HashMap<String, usize> = HashMap::new();
                for v in string_values(name, array)?.into_iter().flatten() {
                    *counts.entry(v).or_default() += 1;
                }
                let mut ranked: Vec<(String, usize)> = counts
                    .into_iter()
                    .filter(|(_, c)| *c >= config.min_category_count.max(1))
                    .collect();
                ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                ranked.truncate(config.max_categories);
                Encoding::Categorical {
                    vocabulary: ranked.into_iter().map(|(v, _)| v).collect(),
                }
            } else {
                let values = numeric_values(name, array)?;
                let present: Vec<f64> = values.into_iter().flatten().collect();
                let (mean, std) = if present.is_empty() {
                    (0.0, 1.0)
                } else {
                    let n = present.len() as f64;
                    let mean = present.iter().sum::<f64>() / n;
                    let var = present.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
                    let std = var.sqrt();
                    (
                        mean,
                        if std > 1e-12 && std.is_finite() {
                            std
                        } else {
                            1.0
                        },
                    )
                };
                Encoding::Numeric { mean, std }
            };
            encodings.push(FeatureEncoding {
                name: name.clone(),
                datatype,
                encoding,
                null_indicator,
            });
        }
        Ok(Self::from_encodings(encodings))
    }

    /// A preprocessor from saved encodings (as read back from an artifact).
    pub fn from_encodings(features: Vec<FeatureEncoding>) -> Self {
        let lookups = features
            .iter()
            .map(|f| match &f.encoding {
                Encoding::Categorical { vocabulary } => Some(
                    vocabulary
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.clone(), i))
                        .collect(),
                ),
                Encoding::Numeric { .. } => None,
            })
            .collect();
        Self { features, lookups }
    }

    /// The raw features, in input order.
    pub fn features(&self) -> &[FeatureEncoding] {
        &self.features
    }

    /// Columns of the encoded matrix.
    pub fn width(&self) -> usize {
        self.features.iter().map(FeatureEncoding::width).sum()
    }

    /// The model inputs at serving time: one tensor per raw feature, shape `[-1]`,
    /// of the feature's datatype (`BYTES` for categories).
    pub fn input_specs(&self) -> Vec<TensorSpec> {
        self.features
            .iter()
            .map(|f| TensorSpec::new(&f.name, f.datatype, vec![-1]))
            .collect()
    }

    /// Writes one feature's encoded values into the row-major matrix `out` (of
    /// `rows` x `width`), starting at column `offset`.
    fn encode_into(
        &self,
        index: usize,
        values: RawColumn,
        out: &mut [f32],
        width: usize,
        offset: usize,
    ) {
        let feature = &self.features[index];
        match (&feature.encoding, values) {
            (Encoding::Numeric { mean, std }, RawColumn::Numbers(v)) => {
                for (row, x) in v.into_iter().enumerate() {
                    let cell = &mut out[row * width + offset..];
                    match x {
                        Some(x) => cell[0] = ((x - mean) / std) as f32,
                        None => {
                            cell[0] = 0.0;
                            if feature.null_indicator {
                                cell[1] = 1.0;
                            }
                        }
                    }
                }
            }
            (Encoding::Categorical { vocabulary }, RawColumn::Strings(v)) => {
                let lookup = self.lookups[index].as_ref();
                let unknown = vocabulary.len();
                for (row, s) in v.into_iter().enumerate() {
                    let cell = &mut out[row * width + offset..];
                    match s {
                        Some(s) => {
                            let slot = lookup
                                .and_then(|l| l.get(s.as_ref()))
                                .copied()
                                .unwrap_or(unknown);
                            cell[slot] = 1.0;
                        }
                        None if feature.null_indicator => cell[unknown + 1] = 1.0,
                        None => cell[unknown] = 1.0,
                    }
                }
            }
            // Callers read numbers for numeric encodings and strings for categorical
            // ones; a mismatch leaves the cells at zero.
            _ => {}
        }
    }

    /// Encodes the feature columns of `batch` (other columns are ignored) into a
    /// row-major matrix of `rows x width`. Nulls are allowed; a missing or
    /// mistyped column gives [`Error::SchemaMismatch`], a non-finite number
    /// [`Error::InvalidInput`].
    pub fn transform(&self, batch: &RecordBatch) -> Result<Vec<f32>> {
        let rows = batch.num_rows();
        let width = self.width();
        let mut out = vec![0.0f32; rows * width];
        let mut offset = 0;
        for (i, f) in self.features.iter().enumerate() {
            let array = column(batch, &f.name)?;
            let categorical = matches!(f.encoding, Encoding::Categorical { .. });
            match classify(array.data_type()) {
                Some((_, c)) if c == categorical => {}
                _ => {
                    return Err(Error::schema_mismatch(
                        "model input",
                        &f.name,
                        if categorical {
                            "strings, as in training"
                        } else {
                            "numbers, as in training"
                        },
                        array.data_type().to_string(),
                    ));
                }
            }
            let values = if categorical {
                RawColumn::Strings(
                    string_values(&f.name, array)?
                        .into_iter()
                        .map(|s| s.map(std::borrow::Cow::Owned))
                        .collect(),
                )
            } else {
                RawColumn::Numbers(numeric_values(&f.name, array)?)
            };
            self.encode_into(i, values, &mut out, width, offset);
            offset += f.width();
        }
        Ok(out)
    }

    /// Encodes v2 input tensors (one per feature, by name, as [`input_specs`]
    /// declares them; check them with the signature first) into a row-major matrix.
    /// Non-finite numbers and non-UTF-8 strings give [`Error::InvalidInput`] naming
    /// the input.
    ///
    /// [`input_specs`]: Self::input_specs
    pub fn transform_tensors(&self, inputs: &[Tensor]) -> Result<(usize, Vec<f32>)> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        let width = self.width();
        let mut out = vec![0.0f32; rows * width];
        let mut offset = 0;
        for (i, f) in self.features.iter().enumerate() {
            // Requests usually list the inputs in the model's order.
            let same_place = inputs.get(i).filter(|t| t.name == f.name);
            let t = same_place
                .or_else(|| inputs.iter().find(|t| t.name == f.name))
                .ok_or_else(|| {
                    Error::invalid_input(format!("input '{}'", f.name), "missing from the request")
                })?;
            if t.data.len() != rows {
                return Err(Error::invalid_input(
                    format!("input '{}'", f.name),
                    format!("{} values for {rows} rows", t.data.len()),
                ));
            }
            // Float inputs of a numeric feature, the common case, are standardized
            // in place; everything else goes through the general encoder.
            let standardized = match (&f.encoding, &t.data) {
                (Encoding::Numeric { mean, std }, TensorData::Fp32(v) | TensorData::Fp16(v)) => {
                    Some(standardize(
                        v.iter().map(|&x| f64::from(x)),
                        *mean,
                        *std,
                        &mut out,
                        width,
                        offset,
                    ))
                }
                (Encoding::Numeric { mean, std }, TensorData::Fp64(v)) => Some(standardize(
                    v.iter().copied(),
                    *mean,
                    *std,
                    &mut out,
                    width,
                    offset,
                )),
                _ => None,
            };
            match standardized {
                Some(Ok(())) => {}
                None => {
                    let values = tensor_values(t)?;
                    self.encode_into(i, values, &mut out, width, offset);
                }
                Some(Err(row)) => {
                    return Err(Error::invalid_input(
                        format!("input '{}'", t.name),
                        format!("row {row} is not a finite number"),
                    ));
                }
            }
            offset += f.width();
        }
        Ok((rows, out))
    }
}

/// Writes standardized `values` into column `offset` of the row-major `out`, as
/// [`Preprocessor::encode_into`] does for numbers without nulls; `Err(row)` at the
/// first non-finite value.
fn standardize(
    values: impl Iterator<Item = f64>,
    mean: f64,
    std: f64,
    out: &mut [f32],
    width: usize,
    offset: usize,
) -> std::result::Result<(), usize> {
    for (row, x) in values.enumerate() {
        if !x.is_finite() {
            return Err(row);
        }
        out[row * width + offset] = ((x - mean) / std) as f32;
    }
    Ok(())
}

/// One raw column's values, before encoding.
enum RawColumn<'a> {
    Numbers(Vec<Option<f64>>),
    Strings(Vec<Option<std::borrow::Cow<'a, str>>>),
}

fn tensor_values(t: &Tensor) -> Result<RawColumn<'_>> {
    fn nums<T: Copy>(v: &[T], f: impl Fn(T) -> f64) -> Vec<Option<f64>> {
        v.iter().map(|&x| Some(f(x))).collect()
    }
    let what = || format!("input '{}'", t.name);
    let numbers = match &t.data {
        TensorData::Bool(v) => nums(v, |b| if b { 1.0 } else { 0.0 }),
        TensorData::Uint8(v) => nums(v, f64::from),
        TensorData::Uint16(v) => nums(v, f64::from),
        TensorData::Uint32(v) => nums(v, f64::from),
        TensorData::Uint64(v) => nums(v, |x| x as f64),
        TensorData::Int8(v) => nums(v, f64::from),
        TensorData::Int16(v) => nums(v, f64::from),
        TensorData::Int32(v) => nums(v, f64::from),
        TensorData::Int64(v) => nums(v, |x| x as f64),
        TensorData::Fp16(v) | TensorData::Fp32(v) => nums(v, f64::from),
        TensorData::Fp64(v) => nums(v, |x| x),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .enumerate()
                .map(|(row, b)| {
                    std::str::from_utf8(b)
                        .map(|s| Some(std::borrow::Cow::Borrowed(s)))
                        .map_err(|_| {
                            Error::invalid_input(what(), format!("row {row} is not UTF-8"))
                        })
                })
                .collect::<Result<_>>()?;
            return Ok(RawColumn::Strings(strings));
        }
    };
    if let Some(row) = numbers
        .iter()
        .position(|x| x.is_some_and(|x| !x.is_finite()))
    {
        return Err(Error::invalid_input(
            what(),
            format!("row {row} is not a finite number"),
        ));
    }
    Ok(RawColumn::Numbers(numbers))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{
        DictionaryArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
        types::Int32Type,
    };

    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn standardizes_and_one_hot_encodes() {
        let batch = RecordBatch::try_from_iter([
            (
                "x",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            (
                "c",
                Arc::new(
                    vec!["a", "b", "a", "a"]
                        .into_iter()
                        .collect::<DictionaryArray<Int32Type>>(),
                ) as ArrayRef,
            ),
        ])
        .unwrap();
        let prep = Preprocessor::fit(&batch, &names(&["x", "c"]), &PrepConfig::default()).unwrap();
        assert_eq!(prep.width(), 1 + 3);
        let m = prep.transform(&batch).unwrap();
        let std = 1.25f64.sqrt();
        assert!((f64::from(m[0]) - (1.0 - 2.5) / std).abs() < 1e-6);
        // "a" is the most frequent, so slot 0.
        assert_eq!(&m[1..4], &[1.0, 0.0, 0.0]);
        assert_eq!(&m[5..8], &[0.0, 1.0, 0.0]);

        let unseen = RecordBatch::try_from_iter([
            ("x", Arc::new(Int64Array::from(vec![Some(2)])) as ArrayRef),
            ("c", Arc::new(StringArray::from(vec!["zz"])) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(&prep.transform(&unseen).unwrap()[1..], &[0.0, 0.0, 1.0]);
    }

    #[test]
    fn nulls_get_an_indicator() {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)])) as ArrayRef,
        )])
        .unwrap();
        let prep = Preprocessor::fit(&batch, &names(&["x"]), &PrepConfig::default()).unwrap();
        assert_eq!(
            prep.transform(&batch).unwrap(),
            vec![-1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
        );
    }

    #[test]
    fn bad_columns_are_named() {
        let batch = RecordBatch::try_from_iter([
            (
                "x",
                Arc::new(Float64Array::from(vec![1.0, f64::NAN])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2])) as ArrayRef,
            ),
        ])
        .unwrap();
        let cfg = PrepConfig::default();
        let err = Preprocessor::fit(&batch, &names(&["x"]), &cfg).unwrap_err();
        assert!(err.to_string().contains("column 'x'") && err.to_string().contains("row 1"));
        let err = Preprocessor::fit(&batch, &names(&["t"]), &cfg).unwrap_err();
        assert!(matches!(err, Error::SchemaMismatch { .. }), "{err}");
        let err = Preprocessor::fit(&batch, &names(&["nope"]), &cfg).unwrap_err();
        assert!(err.to_string().contains("column 'nope'"), "{err}");
    }
}
