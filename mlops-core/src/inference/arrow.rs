//! The bridge between Arrow columns and tensors, both ways.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};

use super::spec::TensorSpec;
use super::tensor::{Datatype, Tensor, TensorData};
use crate::error::{Error, Result};

/// Input tensors for `specs` from the columns of `batch`: one tensor per spec, from
/// the column of the same name, converted to the spec's datatype (Arrow's cast
/// rules), of shape `[rows]`. Specs must be one-dimensional (one column, one
/// input).
///
/// A missing column, a column that cannot be converted, a spec of more than one
/// dimension, or nulls (tensors cannot hold them) give an error naming the column.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Float64Array, RecordBatch, StringArray};
/// use mlops_core::inference::{tensors_from_batch, Datatype, TensorData, TensorSpec};
///
/// let batch = RecordBatch::try_from_iter([
///     ("amount", Arc::new(Float64Array::from(vec![1.5, 2.0])) as _),
///     ("country", Arc::new(StringArray::from(vec!["fr", "de"])) as _),
/// ])?;
/// let specs = [
///     TensorSpec::new("amount", Datatype::Fp32, vec![-1]),
///     TensorSpec::new("country", Datatype::Bytes, vec![-1]),
/// ];
/// let tensors = tensors_from_batch(&specs, &batch)?;
/// assert_eq!(tensors[0].data, TensorData::Fp32(vec![1.5, 2.0]));
/// assert_eq!(tensors[1].shape[..], [2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tensors_from_batch(
    specs: &[TensorSpec],
    batch: &arrow_array::RecordBatch,
) -> Result<Vec<Tensor>> {
    use Datatype as D;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType;
    specs
        .iter()
        .map(|spec| {
            let what = || format!("column '{}'", spec.name);
            if spec.shape.len() != 1 {
                return Err(Error::invalid_input(
                    what(),
                    format!(
                        "the input's shape is {:?}; only one-dimensional inputs can be read from a column",
                        spec.shape
                    ),
                ));
            }
            let array = batch.column_by_name(&spec.name).ok_or_else(|| {
                Error::invalid_input(what(), "missing from the data")
            })?;
            if array.null_count() > 0 {
                return Err(Error::invalid_input(
                    what(),
                    format!("has {} nulls, which tensors cannot hold", array.null_count()),
                ));
            }
            let target = match spec.datatype {
                D::Bool => DataType::Boolean,
                D::Uint8 => DataType::UInt8,
                D::Uint16 => DataType::UInt16,
                D::Uint32 => DataType::UInt32,
                D::Uint64 => DataType::UInt64,
                D::Int8 => DataType::Int8,
                D::Int16 => DataType::Int16,
                D::Int32 => DataType::Int32,
                D::Int64 => DataType::Int64,
                D::Fp16 | D::Fp32 => DataType::Float32,
                D::Fp64 => DataType::Float64,
                D::Bytes => DataType::Utf8,
            };
            let a = arrow_cast::cast(array, &target).map_err(|e| {
                Error::invalid_input(
                    what(),
                    format!("{} cannot be read as {}: {e}", array.data_type(), spec.datatype),
                )
            })?;
            let data = match spec.datatype {
                D::Bool => TensorData::Bool(a.as_boolean().iter().map(|v| v.unwrap_or(false)).collect()),
                D::Uint8 => TensorData::Uint8(a.as_primitive::<UInt8Type>().values().to_vec()),
                D::Uint16 => TensorData::Uint16(a.as_primitive::<UInt16Type>().values().to_vec()),
                D::Uint32 => TensorData::Uint32(a.as_primitive::<UInt32Type>().values().to_vec()),
                D::Uint64 => TensorData::Uint64(a.as_primitive::<UInt64Type>().values().to_vec()),
                D::Int8 => TensorData::Int8(a.as_primitive::<Int8Type>().values().to_vec()),
                D::Int16 => TensorData::Int16(a.as_primitive::<Int16Type>().values().to_vec()),
                D::Int32 => TensorData::Int32(a.as_primitive::<Int32Type>().values().to_vec()),
                D::Int64 => TensorData::Int64(a.as_primitive::<Int64Type>().values().to_vec()),
                D::Fp16 => TensorData::Fp16(a.as_primitive::<Float32Type>().values().to_vec()),
                D::Fp32 => TensorData::Fp32(a.as_primitive::<Float32Type>().values().to_vec()),
                D::Fp64 => TensorData::Fp64(a.as_primitive::<Float64Type>().values().to_vec()),
                D::Bytes => TensorData::Bytes(
                    a.as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap_or_default().as_bytes().to_vec())
                        .collect(),
                ),
            };
            Tensor::new(&spec.name, vec![batch.num_rows()], data)
        })
        .collect()
}

/// An Arrow column holding a tensor's elements, flat (a one-dimensional tensor is
/// one column of its rows): `FP16` and `FP32` become `Float32`, `BYTES` becomes
/// `Utf8`. `BYTES` elements that are not UTF-8 give an error naming the tensor and
/// the element.
///
/// ```
/// use arrow_array::Array;
/// use mlops_core::inference::{tensor_to_column, Tensor, TensorData};
///
/// let t = Tensor::new("amount", vec![3], TensorData::Fp64(vec![1.0, 2.5, 4.0]))?;
/// let column = tensor_to_column(&t)?;
/// assert_eq!(column.len(), 3);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn tensor_to_column(t: &Tensor) -> Result<ArrayRef> {
    Ok(match &t.data {
        TensorData::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
        TensorData::Uint8(v) => Arc::new(UInt8Array::from(v.clone())),
        TensorData::Uint16(v) => Arc::new(UInt16Array::from(v.clone())),
        TensorData::Uint32(v) => Arc::new(UInt32Array::from(v.clone())),
        TensorData::Uint64(v) => Arc::new(UInt64Array::from(v.clone())),
        TensorData::Int8(v) => Arc::new(Int8Array::from(v.clone())),
        TensorData::Int16(v) => Arc::new(Int16Array::from(v.clone())),
        TensorData::Int32(v) => Arc::new(Int32Array::from(v.clone())),
        TensorData::Int64(v) => Arc::new(Int64Array::from(v.clone())),
        TensorData::Fp16(v) | TensorData::Fp32(v) => Arc::new(Float32Array::from(v.clone())),
        TensorData::Fp64(v) => Arc::new(Float64Array::from(v.clone())),
        TensorData::Bytes(v) => Arc::new(StringArray::from(
            v.iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.clone()).map_err(|_| {
                        Error::invalid_input(
                            format!("input '{}'", t.name),
                            format!("element {i} is not UTF-8; string columns must be"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        )),
    })
}

/// The columns a tensor stands for, named as drift references and monitors name
/// them: a tensor of shape `[N]` or `[N, 1]` is the column of its own name; a
/// matrix `[N, F]` (the `[rows, features]` form KServe and Triton clients send) is
/// `F` columns `name[0]` ... `name[F-1]`. Tensors of higher rank have no columns.
///
/// ```
/// use mlops_core::inference::{tensor_columns, Tensor, TensorData};
///
/// let x = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))?;
/// let columns = tensor_columns(&x)?;
/// let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(names, ["x[0]", "x[1]", "x[2]"]);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn tensor_columns(t: &Tensor) -> Result<Vec<(String, ArrayRef)>> {
    match t.shape[..] {
        [_] | [_, 1] => Ok(vec![(t.name.clone(), tensor_to_column(t)?)]),
        [rows, width] => (0..width)
            .map(|j| {
                Ok((
                    format!("{}[{j}]", t.name),
                    matrix_column(t, rows, width, j)?,
                ))
            })
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// The column `name` of `tensors` by the naming of [`tensor_columns`]: the tensor
/// of that name when it is `[N]` or `[N, 1]`, or column `j` of the matrix `t` for
/// `t[j]`. `None` when no tensor gives that column.
pub fn tensor_column(tensors: &[Tensor], name: &str) -> Option<Result<ArrayRef>> {
    if let Some(t) = tensors.iter().find(|t| t.name == name)
        && matches!(t.shape[..], [_] | [_, 1])
    {
        return Some(tensor_to_column(t));
    }
    let (base, index) = name.strip_suffix(']')?.rsplit_once('[')?;
    let j: usize = index.parse().ok()?;
    let t = tensors.iter().find(|t| t.name == base)?;
    match t.shape[..] {
        [rows, width] if width > 1 && j < width => Some(matrix_column(t, rows, width, j)),
        _ => None,
    }
}

/// Column `j` of the `[rows, width]` matrix `t`.
fn matrix_column(t: &Tensor, rows: usize, width: usize, j: usize) -> Result<ArrayRef> {
    tensor_to_column(&Tensor {
        name: t.name.clone(),
        shape: vec![rows].into(),
        parameters: Default::default(),
        data: t.data.strided(j, width),
    })
}

/// The `[N, F]` tensor `name` from `F` one-dimensional tensors of one datatype
/// and length (its columns, in order): the inverse of [`tensor_columns`] for a
/// matrix. An error names what differs.
///
/// ```
/// use mlops_core::inference::{matrix_from_columns, Tensor, TensorData};
///
/// let a = Tensor::new("a", vec![2], TensorData::Fp32(vec![1.0, 2.0]))?;
/// let b = Tensor::new("b", vec![2], TensorData::Fp32(vec![3.0, 4.0]))?;
/// let x = matrix_from_columns("x", &[a, b])?;
/// assert_eq!(x.shape[..], [2, 2]);
/// assert_eq!(x.data, TensorData::Fp32(vec![1.0, 3.0, 2.0, 4.0]));
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn matrix_from_columns(name: &str, columns: &[Tensor]) -> Result<Tensor> {
    if let Some(c) = columns.iter().find(|c| c.shape.len() != 1) {
        return Err(Error::invalid_input(
            format!("column '{}'", c.name),
            format!(
                "shape {:?}; a matrix is built from one-dimensional columns",
                &c.shape[..]
            ),
        ));
    }
    let parts: Vec<&TensorData> = columns.iter().map(|c| &c.data).collect();
    let data = TensorData::interleave(&parts).ok_or_else(|| {
        Error::invalid_input(
            format!("tensor '{name}'"),
            "its columns must be at least one, of one datatype and one length",
        )
    })?;
    let rows = columns.first().map_or(0, |c| c.data.len());
    Tensor::new(name, vec![rows, columns.len()], data)
}

/// The input tensors of `signature` from the columns of `batch`, by the naming
/// of [`tensor_columns`]: an input of shape `[N]` from the column of its name, an
/// input `[N, 1]` from that column as one column, an input `[N, F]` from the
/// columns `name[0]` ... `name[F-1]`; each converted to the input's datatype
/// (see [`tensors_from_batch`] for the rules and the errors).
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Float64Array, RecordBatch};
/// use mlops_core::inference::{tensors_for_signature, Datatype, TensorData, TensorSpec};
/// use mlops_core::model::Signature;
///
/// let batch = RecordBatch::try_from_iter([
///     ("x[0]", Arc::new(Float64Array::from(vec![1.0, 2.0])) as _),
///     ("x[1]", Arc::new(Float64Array::from(vec![3.0, 4.0])) as _),
/// ])?;
/// let signature = Signature {
///     inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1, 2])],
///     outputs: vec![],
///     matrix_input: None,
/// };
/// let tensors = tensors_for_signature(&signature, &batch)?;
/// assert_eq!(tensors[0].shape[..], [2, 2]);
/// assert_eq!(tensors[0].data, TensorData::Fp32(vec![1.0, 3.0, 2.0, 4.0]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn tensors_for_signature(
    signature: &crate::model::Signature,
    batch: &arrow_array::RecordBatch,
) -> Result<Vec<Tensor>> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let column = |name: String| TensorSpec::new(name, spec.datatype, vec![-1]);
            let one = |name: &str| -> Result<Tensor> {
                let mut t = tensors_from_batch(&[column(name.to_owned())], batch)?;
                t.pop()
                    .ok_or_else(|| Error::invalid_input(format!("column '{name}'"), "not read"))
            };
            match spec.shape[..] {
                [_] => one(&spec.name),
                [_, 1] => {
                    let t = one(&spec.name)?;
                    Tensor::new(spec.name.clone(), vec![t.rows(), 1], t.data)
                }
                [_, width] if width > 1 => {
                    let specs: Vec<TensorSpec> = (0..width)
                        .map(|j| column(format!("{}[{j}]", spec.name)))
                        .collect();
                    matrix_from_columns(&spec.name, &tensors_from_batch(&specs, batch)?)
                }
                _ => Err(Error::invalid_input(
                    format!("input '{}'", spec.name),
                    format!(
                        "shape {:?}: columns fill only [N], [N, 1] or [N, F] inputs",
                        spec.shape
                    ),
                )),
            }
        })
        .collect()
}
