//! The tensor model: [`Datatype`], [`TensorData`], [`Shape`] and [`Tensor`], with
//! the parameters ([`Parameters`]) the protocol attaches to tensors and messages.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The element type of a tensor, as named by the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Datatype {
    /// `BOOL`: `true` / `false`.
    Bool,
    /// `UINT8`.
    Uint8,
    /// `UINT16`.
    Uint16,
    /// `UINT32`.
    Uint32,
    /// `UINT64`.
    Uint64,
    /// `INT8`.
    Int8,
    /// `INT16`.
    Int16,
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
    /// `FP16`: half precision; held as `f32` in memory (every `f16` value is exact).
    Fp16,
    /// `FP32`.
    Fp32,
    /// `FP64`.
    Fp64,
    /// `BYTES`: variable-length byte strings, written as JSON strings.
    Bytes,
}

impl Datatype {
    /// All datatypes, in the spec's order.
    pub const ALL: [Datatype; 13] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
        Self::Bytes,
    ];

    /// The protocol's name, e.g. `"FP32"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Size of one element in the binary tensor encoding; `None` for `BYTES`, whose
    /// elements carry their own length.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => Some(1),
            Self::Uint16 | Self::Int16 | Self::Fp16 => Some(2),
            Self::Uint32 | Self::Int32 | Self::Fp32 => Some(4),
            Self::Uint64 | Self::Int64 | Self::Fp64 => Some(8),
            Self::Bytes => None,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Datatype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                Error::invalid_input(
                    "datatype",
                    format!(
                        "unknown datatype {s:?}; expected one of BOOL, UINT8, UINT16, UINT32, \
                         UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
                    ),
                )
            })
    }
}

/// The elements of a tensor, flat and row-major, typed by their [`Datatype`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `UINT8` elements.
    Uint8(Vec<u8>),
    /// `UINT16` elements.
    Uint16(Vec<u16>),
    /// `UINT32` elements.
    Uint32(Vec<u32>),
    /// `UINT64` elements.
    Uint64(Vec<u64>),
    /// `INT8` elements.
    Int8(Vec<i8>),
    /// `INT16` elements.
    Int16(Vec<i16>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
    /// `FP16` elements, held as `f32`.
    Fp16(Vec<f32>),
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
    /// `BYTES` elements.
    Bytes(Vec<Vec<u8>>),
}

macro_rules! for_each_variant {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    /// The datatype of the elements.
    pub fn datatype(&self) -> Datatype {
        match self {
            Self::Bool(_) => Datatype::Bool,
            Self::Uint8(_) => Datatype::Uint8,
            Self::Uint16(_) => Datatype::Uint16,
            Self::Uint32(_) => Datatype::Uint32,
            Self::Uint64(_) => Datatype::Uint64,
            Self::Int8(_) => Datatype::Int8,
            Self::Int16(_) => Datatype::Int16,
            Self::Int32(_) => Datatype::Int32,
            Self::Int64(_) => Datatype::Int64,
            Self::Fp16(_) => Datatype::Fp16,
            Self::Fp32(_) => Datatype::Fp32,
            Self::Fp64(_) => Datatype::Fp64,
            Self::Bytes(_) => Datatype::Bytes,
        }
    }

    /// Every `step`-th element from `start`: column `start` of a row-major matrix
    /// `step` wide.
    pub(crate) fn strided(&self, start: usize, step: usize) -> TensorData {
        macro_rules! pick {
            ($($variant:ident),*) => {
                match self {
                    $(Self::$variant(v) => {
                        Self::$variant(v.iter().skip(start).step_by(step.max(1)).cloned().collect())
                    })*
                }
            };
        }
        pick!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        )
    }

    /// The row-major `[rows, columns.len()]` matrix of equally long columns of
    /// one datatype (the inverse of taking its columns); `None` when the
    /// columns differ in datatype or length, or there are none.
    pub(crate) fn interleave(columns: &[&TensorData]) -> Option<TensorData> {
        let first = columns.first()?;
        let rows = first.len();
        if columns
            .iter()
            .any(|c| c.len() != rows || c.datatype() != first.datatype())
        {
            return None;
        }
        macro_rules! weave {
            ($($variant:ident),*) => {
                match first {
                    $(Self::$variant(_) => {
                        let parts: Vec<&Vec<_>> = columns
                            .iter()
                            .filter_map(|c| match c { Self::$variant(v) => Some(v), _ => None })
                            .collect();
                        let mut out = Vec::with_capacity(rows * parts.len());
                        for r in 0..rows {
                            out.extend(parts.iter().map(|p| p[r].clone()));
                        }
                        Self::$variant(out)
                    })*
                }
            };
        }
        Some(weave!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        ))
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        for_each_variant!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the elements hold in memory (a `BYTES` element counts its
    /// length and its vector's header): what byte budgets of queues and caches
    /// charge for a tensor.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Bytes(v) => v
                .iter()
                .map(|b| b.len() + std::mem::size_of::<Vec<u8>>())
                .sum(),
            other => for_each_variant!(other, v => std::mem::size_of_val(v.as_slice())),
        }
    }

    /// An empty vector of the given datatype with room for `capacity` elements.
    pub fn with_capacity(datatype: Datatype, capacity: usize) -> Self {
        match datatype {
            Datatype::Bool => Self::Bool(Vec::with_capacity(capacity)),
            Datatype::Uint8 => Self::Uint8(Vec::with_capacity(capacity)),
            Datatype::Uint16 => Self::Uint16(Vec::with_capacity(capacity)),
            Datatype::Uint32 => Self::Uint32(Vec::with_capacity(capacity)),
            Datatype::Uint64 => Self::Uint64(Vec::with_capacity(capacity)),
            Datatype::Int8 => Self::Int8(Vec::with_capacity(capacity)),
            Datatype::Int16 => Self::Int16(Vec::with_capacity(capacity)),
            Datatype::Int32 => Self::Int32(Vec::with_capacity(capacity)),
            Datatype::Int64 => Self::Int64(Vec::with_capacity(capacity)),
            Datatype::Fp16 => Self::Fp16(Vec::with_capacity(capacity)),
            Datatype::Fp32 => Self::Fp32(Vec::with_capacity(capacity)),
            Datatype::Fp64 => Self::Fp64(Vec::with_capacity(capacity)),
            Datatype::Bytes => Self::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// The elements converted to `f32`, the currency of model inputs. Integers and
    /// booleans (as 0/1) convert; `BYTES` is refused. Large integers and `FP64` values
    /// are rounded to the nearest `f32`.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Self::Bool(v) => v.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
            Self::Uint8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Self::Uint16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Self::Uint32(v) => v.iter().map(|&x| x as f32).collect(),
            Self::Uint64(v) => v.iter().map(|&x| x as f32).collect(),
            Self::Int8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Self::Int16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Self::Int32(v) => v.iter().map(|&x| x as f32).collect(),
            Self::Int64(v) => v.iter().map(|&x| x as f32).collect(),
            Self::Fp16(v) | Self::Fp32(v) => v.clone(),
            Self::Fp64(v) => v.iter().map(|&x| x as f32).collect(),
            Self::Bytes(_) => {
                return Err(Error::invalid_input(
                    "tensor data",
                    "BYTES elements cannot be converted to numbers",
                ));
            }
        })
    }
}

/// Parameters of a request, an input, an output or a response: string keys, and
/// values that are strings, numbers or booleans.
pub type Parameters = BTreeMap<String, ParameterValue>;

/// One parameter value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParameterValue {
    /// A boolean.
    Bool(bool),
    /// An integer (JSON numbers without a fraction that fit in `i64`).
    Int(i64),
    /// Any other number.
    Double(f64),
    /// A string.
    String(String),
}

impl<'de> Deserialize<'de> for ParameterValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ParameterValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter value: a string, a number or a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Self::Value, E> {
                Ok(ParameterValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
                Ok(ParameterValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(ParameterValue::Double(v as f64), ParameterValue::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
                Ok(ParameterValue::Double(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(ParameterValue::String(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(ParameterValue::String(v))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The dimensions of a tensor; the first is the batch (rows) by convention.
///
/// Up to four dimensions are held inline, so the usual shapes (`[rows]`,
/// `[rows, width]`) cost no allocation. It derefs to `[usize]` (read and write a
/// dimension by index) and is built from a `Vec<usize>`, an array or a slice.
///
/// ```
/// use mlops_core::inference::Shape;
///
/// let shape = Shape::from([2, 3]);
/// assert_eq!(shape[..], [2, 3]);
/// assert_eq!(shape.element_count(), Some(6));
/// assert_eq!(Shape::from(vec![usize::MAX, 2]).element_count(), None);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Shape(smallvec::SmallVec<[usize; 4]>);

impl Shape {
    /// An empty shape (a scalar).
    pub fn new() -> Self {
        Self::default()
    }

    /// A shape of these dimensions.
    pub fn from_slice(dims: &[usize]) -> Self {
        Self(smallvec::SmallVec::from_slice(dims))
    }

    /// An empty shape (a scalar) with room for `capacity` dimensions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(smallvec::SmallVec::with_capacity(capacity))
    }

    /// Appends a dimension.
    pub fn push(&mut self, dim: usize) {
        self.0.push(dim);
    }

    /// The dimensions as a slice.
    pub fn as_slice(&self) -> &[usize] {
        &self.0
    }

    /// The number of elements the shape holds (the product of its dimensions, 1 for
    /// a scalar), or `None` when that product overflows `usize`.
    pub fn element_count(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl std::ops::Deref for Shape {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.0
    }
}

impl std::ops::DerefMut for Shape {
    fn deref_mut(&mut self) -> &mut [usize] {
        &mut self.0
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Self(smallvec::SmallVec::from_vec(dims))
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Self::from_slice(dims)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Self::from_slice(&dims)
    }
}

impl FromIterator<usize> for Shape {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<usize> for Shape {
    fn extend<I: IntoIterator<Item = usize>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<'a> IntoIterator for &'a Shape {
    type Item = &'a usize;
    type IntoIter = std::slice::Iter<'a, usize>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<[usize]> for Shape {
    fn eq(&self, other: &[usize]) -> bool {
        self.0[..] == *other
    }
}

impl PartialEq<Vec<usize>> for Shape {
    fn eq(&self, other: &Vec<usize>) -> bool {
        self.0[..] == other[..]
    }
}

impl<const N: usize> PartialEq<[usize; N]> for Shape {
    fn eq(&self, other: &[usize; N]) -> bool {
        self.0[..] == other[..]
    }
}
/// A named, shaped, typed tensor: an input of a request, an output of a response,
/// and what a [`Predictor`](crate::Predictor) reads and writes.
///
/// The invariant `shape.iter().product() == data.len()` holds for every tensor built
/// by [`Tensor::new`] or decoded from JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape; the first dimension is the batch (rows) by convention.
    pub shape: Shape,
    /// Parameters attached to this tensor (e.g. `content_type`, `binary_data_size`).
    pub parameters: Parameters,
    /// The elements, flat and row-major.
    pub data: TensorData,
}

/// A request input is a tensor.
pub type RequestInput = Tensor;
/// A response output is a tensor.
pub type ResponseOutput = Tensor;

impl Tensor {
    /// The bytes the tensor holds in memory, approximately: its elements
    /// ([`TensorData::heap_bytes`]), name and shape.
    pub fn heap_bytes(&self) -> usize {
        self.data.heap_bytes() + self.name.len() + self.shape.len() * 8 + 64
    }

    /// A tensor, checked: the shape must hold exactly `data.len()` elements.
    pub fn new(name: impl Into<String>, shape: impl Into<Shape>, data: TensorData) -> Result<Self> {
        let name = name.into();
        let shape = shape.into();
        check_element_count(&name, &shape, data.len())
            .map_err(|reason| Error::invalid_input(format!("tensor '{name}'"), reason))?;
        Ok(Self {
            name,
            shape,
            parameters: Parameters::new(),
            data,
        })
    }

    /// An `FP32` tensor from a dense `ndarray` array (the model-side currency).
    pub fn from_array_f32(name: impl Into<String>, array: ndarray::ArrayD<f32>) -> Self {
        let shape = Shape::from_slice(array.shape());
        let data = if array.is_standard_layout() {
            let (vec, _offset) = array.into_raw_vec_and_offset();
            vec
        } else {
            array.iter().copied().collect()
        };
        Self {
            name: name.into(),
            shape,
            parameters: Parameters::new(),
            data: TensorData::Fp32(data),
        }
    }

    /// The elements as a dense `f32` array of this tensor's shape (see
    /// [`TensorData::to_f32_vec`] for the conversion rules).
    pub fn to_array_f32(&self) -> Result<ndarray::ArrayD<f32>> {
        let values = self
            .data
            .to_f32_vec()
            .map_err(|e| Error::invalid_input(format!("tensor '{}'", self.name), e.to_string()))?;
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&self.shape), values)
            .map_err(|e| Error::invalid_input(format!("tensor '{}'", self.name), e.to_string()))
    }

    /// The element datatype.
    pub fn datatype(&self) -> Datatype {
        self.data.datatype()
    }

    /// The number of rows: the first dimension, or 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
}

/// Checks that `shape` holds exactly `len` elements; returns the reason when not
/// (the element count overflows, or differs from `len`). `name` names the tensor in
/// the reason. Decoders of wire formats use it to word their errors as [`Tensor::new`]
/// does.
pub fn check_element_count(
    name: &str,
    shape: &[usize],
    len: usize,
) -> std::result::Result<(), String> {
    let mut count: usize = 1;
    for &d in shape {
        count = count
            .checked_mul(d)
            .ok_or_else(|| format!("shape {shape:?} of '{name}' overflows the element count"))?;
    }
    if count != len {
        return Err(format!(
            "shape {shape:?} holds {count} elements but data has {len}"
        ));
    }
    Ok(())
}
