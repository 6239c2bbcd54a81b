//! Open Inference Protocol (v2) messages, with the spec's exact JSON field names.
//!
//! The same types serve the in-process [`Server`](crate::Server), the HTTP face and
//! the remote client, and a [`Tensor`] is what a [`Predictor`](crate::Predictor)
//! consumes and produces, so a request is decoded once and never copied again.
//!
//! Decoding is strict where the spec is strict and lenient where clients differ:
//! - `data` may be flat (`[1, 2, 3, 4]`) or nested (`[[1, 2], [3, 4]]`); nesting is
//!   flattened in row-major order and only the element count must match the shape;
//! - every element must fit the declared datatype: `UINT8` rejects `300`, `-1` and
//!   `1.5`, `BOOL` takes only `true`/`false`, `BYTES` takes strings;
//! - shapes must be concrete (no `-1`) in requests and responses;
//! - parameter values are strings, numbers or booleans, as the spec says.
//!
//! ```
//! use mlops_core::inference::{InferenceRequest, TensorData};
//!
//! let request = InferenceRequest::from_json(br#"{
//!     "id": "42",
//!     "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]
//! }"#)?;
//! assert_eq!(request.inputs[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
//!
//! // A shape that does not match the data is refused with a message naming the input.
//! let err = InferenceRequest::from_json(br#"{
//!     "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]
//! }"#).unwrap_err();
//! assert!(err.to_string().contains("input 'x'"));
//! # Ok::<(), mlops_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};

pub mod binary;
mod fast;

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

    /// The number of elements.
    pub fn len(&self) -> usize {
        for_each_variant!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// The dimensions of a tensor. Up to four are held inline, so the usual shapes
/// (`[rows]`, `[rows, width]`) cost no allocation; it derefs to `[usize]` and is
/// built from a `Vec<usize>` with `.into()` or from a slice with `Shape::from_slice`.
pub type Shape = smallvec::SmallVec<[usize; 4]>;

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

/// Checks that `shape` holds exactly `len` elements; returns the reason when not.
fn check_element_count(name: &str, shape: &[usize], len: usize) -> std::result::Result<(), String> {
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

impl Serialize for Tensor {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let fields = if self.parameters.is_empty() { 4 } else { 5 };
        let mut s = serializer.serialize_struct("Tensor", fields)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("shape", &self.shape[..])?;
        s.serialize_field("datatype", &self.datatype())?;
        if !self.parameters.is_empty() {
            s.serialize_field("parameters", &self.parameters)?;
        }
        s.serialize_field(
            "data",
            &DataSer {
                name: &self.name,
                data: &self.data,
            },
        )?;
        s.end()
    }
}

struct DataSer<'a> {
    name: &'a str,
    data: &'a TensorData,
}

impl Serialize for DataSer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        fn floats<S: Serializer, T: Copy + Into<f64> + Serialize>(
            name: &str,
            serializer: S,
            values: &[T],
        ) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::Error as _;
            let mut seq = serializer.serialize_seq(Some(values.len()))?;
            for (i, v) in values.iter().enumerate() {
                if !(*v).into().is_finite() {
                    return Err(S::Error::custom(format!(
                        "tensor '{name}' element {i} is not finite; JSON cannot carry NaN or \
                         infinity (use the binary tensor extension)"
                    )));
                }
                seq.serialize_element(v)?;
            }
            seq.end()
        }
        match self.data {
            TensorData::Fp16(v) | TensorData::Fp32(v) => floats(self.name, serializer, v),
            TensorData::Fp64(v) => floats(self.name, serializer, v),
            TensorData::Bytes(v) => {
                let mut seq = serializer.serialize_seq(Some(v.len()))?;
                for (i, b) in v.iter().enumerate() {
                    let s = std::str::from_utf8(b).map_err(|_| {
                        S::Error::custom(format!(
                            "tensor '{}' element {i} is not UTF-8; JSON carries BYTES as \
                             strings (use the binary tensor extension)",
                            self.name
                        ))
                    })?;
                    seq.serialize_element(s)?;
                }
                seq.end()
            }
            TensorData::Bool(v) => v.serialize(serializer),
            TensorData::Uint8(v) => v.serialize(serializer),
            TensorData::Uint16(v) => v.serialize(serializer),
            TensorData::Uint32(v) => v.serialize(serializer),
            TensorData::Uint64(v) => v.serialize(serializer),
            TensorData::Int8(v) => v.serialize(serializer),
            TensorData::Int16(v) => v.serialize(serializer),
            TensorData::Int32(v) => v.serialize(serializer),
            TensorData::Int64(v) => v.serialize(serializer),
        }
    }
}

/// A tensor as it arrives on the wire, before its element count is checked.
///
/// `data` is typed as it is read when `datatype` comes before it in the JSON
/// object (as every client we know writes it); otherwise it is held as JSON until
/// the datatype is known. Field names are matched without allocating, and unknown
/// fields are skipped.
pub(crate) struct WireTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) datatype: WireDatatype,
    pub(crate) parameters: Parameters,
    pub(crate) data: Option<WireData>,
}

/// A `datatype` field: a known datatype, or the unknown name for the error message.
pub(crate) enum WireDatatype {
    Known(Datatype),
    Unknown(String),
}

/// The `data` of a [`WireTensor`].
pub(crate) enum WireData {
    /// Read straight into typed elements.
    Typed(TensorData),
    /// Read before the datatype was known.
    Deferred(serde_json::Value),
}

impl WireDatatype {
    /// The datatype, or an error naming the tensor and the unknown name.
    pub(crate) fn known(&self, name: &str) -> std::result::Result<Datatype, String> {
        match self {
            Self::Known(d) => Ok(*d),
            Self::Unknown(s) => Err(format!(
                "input '{name}': unknown datatype {s:?}; expected one of BOOL, UINT8, UINT16, \
                 UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for WireDatatype {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WireDatatype;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a datatype name such as \"FP32\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Datatype::ALL
                    .into_iter()
                    .find(|d| d.as_str() == v)
                    .map_or_else(|| WireDatatype::Unknown(v.to_owned()), WireDatatype::Known))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum TensorField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for WireTensor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        const FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];
        deserializer.deserialize_struct("Tensor", FIELDS, WireTensorVisitor)
    }
}

struct WireTensorVisitor;

impl<'de> Visitor<'de> for WireTensorVisitor {
    type Value = WireTensor;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tensor: an object with name, shape, datatype and data")
    }

    fn visit_map<A: de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<WireTensor, A::Error> {
        fn once<T, E: de::Error>(
            slot: &Option<T>,
            field: &'static str,
        ) -> std::result::Result<(), E> {
            match slot {
                Some(_) => Err(E::duplicate_field(field)),
                None => Ok(()),
            }
        }
        let mut name: Option<String> = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype: Option<WireDatatype> = None;
        let mut parameters: Option<Parameters> = None;
        let mut data: Option<WireData> = None;
        while let Some(field) = map.next_key::<TensorField>()? {
            match field {
                TensorField::Name => {
                    once(&name, "name")?;
                    name = Some(map.next_value()?);
                }
                TensorField::Shape => {
                    once(&shape, "shape")?;
                    shape = Some(map.next_value()?);
                }
                TensorField::Datatype => {
                    once(&datatype, "datatype")?;
                    datatype = Some(map.next_value()?);
                }
                TensorField::Parameters => {
                    once(&parameters, "parameters")?;
                    parameters = Some(map.next_value()?);
                }
                TensorField::Data => {
                    once(&data, "data")?;
                    data = Some(match &datatype {
                        Some(WireDatatype::Known(d)) => {
                            // Cap the pre-allocation: a shape may claim more than the
                            // payload carries.
                            let capacity = shape
                                .as_deref()
                                .and_then(|s| {
                                    s.iter().try_fold(1usize, |acc, &d| {
                                        acc.checked_mul(usize::try_from(d).ok()?)
                                    })
                                })
                                .unwrap_or(0)
                                .min(1 << 20);
                            let mut out = TensorData::with_capacity(*d, capacity);
                            map.next_value_seed(DataSeed { out: &mut out }).map_err(
                                |e| match &name {
                                    Some(n) => {
                                        de::Error::custom(format_args!("input '{n}': data: {e}"))
                                    }
                                    None => de::Error::custom(format_args!("data: {e}")),
                                },
                            )?;
                            WireData::Typed(out)
                        }
                        _ => WireData::Deferred(map.next_value()?),
                    });
                }
                TensorField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(WireTensor {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.unwrap_or_default(),
            data,
        })
    }
}

impl WireTensor {
    /// The shape as sizes; negative dimensions are refused.
    pub(crate) fn dimensions(&self) -> std::result::Result<Shape, String> {
        self.shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Shape, _>>()
            .map_err(|_| {
                format!(
                    "input '{}': shape {:?} has a negative dimension; shapes must be concrete",
                    self.name, self.shape
                )
            })
    }

    /// The checked tensor, from its JSON `data`.
    pub(crate) fn into_tensor(self) -> std::result::Result<Tensor, String> {
        let datatype = self.datatype.known(&self.name)?;
        let shape = self.dimensions()?;
        let name = self.name;
        let data = match self.data {
            None => return Err(format!("input '{name}': missing \"data\"")),
            Some(WireData::Typed(d)) => d,
            Some(WireData::Deferred(value)) => {
                let mut out = TensorData::with_capacity(datatype, 0);
                DataSeed { out: &mut out }
                    .deserialize(&value)
                    .map_err(|e| format!("input '{name}': data: {e}"))?;
                out
            }
        };
        check_element_count(&name, &shape, data.len())
            .map_err(|r| format!("input '{name}': {r}"))?;
        Ok(Tensor {
            name,
            shape,
            parameters: self.parameters,
            data,
        })
    }
}

impl<'de> Deserialize<'de> for Tensor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        WireTensor::deserialize(deserializer)?
            .into_tensor()
            .map_err(de::Error::custom)
    }
}

/// Pushes the (possibly nested) JSON array's leaves into a typed vector.
struct DataSeed<'a> {
    out: &'a mut TensorData,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_any(ElementVisitor { out: self.out })
    }
}

struct ElementVisitor<'a> {
    out: &'a mut TensorData,
}

impl ElementVisitor<'_> {
    fn mismatch<E: de::Error>(&self, what: &str) -> E {
        E::custom(format!(
            "element {} is {what}, which is not a valid {} value",
            self.out.len(),
            self.out.datatype()
        ))
    }

    fn push_int<E: de::Error>(self, v: i128) -> std::result::Result<(), E> {
        let index = self.out.len();
        let datatype = self.out.datatype();
        let range = || {
            E::custom(format!(
                "element {index} ({v}) is out of range for {datatype}"
            ))
        };
        match self.out {
            TensorData::Uint8(o) => o.push(u8::try_from(v).map_err(|_| range())?),
            TensorData::Uint16(o) => o.push(u16::try_from(v).map_err(|_| range())?),
            TensorData::Uint32(o) => o.push(u32::try_from(v).map_err(|_| range())?),
            TensorData::Uint64(o) => o.push(u64::try_from(v).map_err(|_| range())?),
            TensorData::Int8(o) => o.push(i8::try_from(v).map_err(|_| range())?),
            TensorData::Int16(o) => o.push(i16::try_from(v).map_err(|_| range())?),
            TensorData::Int32(o) => o.push(i32::try_from(v).map_err(|_| range())?),
            TensorData::Int64(o) => o.push(i64::try_from(v).map_err(|_| range())?),
            // Integers are valid numbers for the float types.
            TensorData::Fp16(_) | TensorData::Fp32(_) | TensorData::Fp64(_) => {
                return self.push_float(v as f64);
            }
            TensorData::Bool(_) => return Err(self.mismatch("a number")),
            TensorData::Bytes(_) => return Err(self.mismatch("a number")),
        }
        Ok(())
    }

    fn push_float<E: de::Error>(self, v: f64) -> std::result::Result<(), E> {
        let index = self.out.len();
        match self.out {
            TensorData::Fp16(o) => {
                if v.abs() > 65504.0 {
                    return Err(E::custom(format!(
                        "element {index} ({v}) is out of range for FP16 (max 65504)"
                    )));
                }
                o.push(v as f32);
            }
            TensorData::Fp32(o) => {
                if v.abs() > f64::from(f32::MAX) {
                    return Err(E::custom(format!(
                        "element {index} ({v}) is out of range for FP32"
                    )));
                }
                o.push(v as f32);
            }
            TensorData::Fp64(o) => o.push(v),
            _ => {
                return Err(self.mismatch(&format!("a fractional number ({v})")));
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for ElementVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.out.datatype())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        match self.out {
            TensorData::Bool(o) => {
                o.push(v);
                Ok(())
            }
            _ => Err(self.mismatch("a boolean")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.push_int(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.push_int(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.push_float(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        match self.out {
            TensorData::Bytes(o) => {
                o.push(v.as_bytes().to_vec());
                Ok(())
            }
            _ => Err(self.mismatch("a string")),
        }
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Err(self.mismatch("null"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> std::result::Result<(), A::Error> {
        Err(self.mismatch("an object"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq
            .next_element_seed(DataSeed {
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One requested output of an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    /// The output tensor's name.
    pub name: String,
    /// Parameters for this output (e.g. `binary_data`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
}

/// An inference request (`$inference_request`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRequest")]
pub struct InferenceRequest {
    /// The request id; a response echoes it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Request parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
    /// The input tensors; names are unique.
    pub inputs: Vec<Tensor>,
    /// The outputs to return; `None` means all of the model's outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<Tensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

impl TryFrom<RawRequest> for InferenceRequest {
    type Error = String;
    fn try_from(r: RawRequest) -> std::result::Result<Self, String> {
        let request = Self {
            id: r.id,
            parameters: r.parameters,
            inputs: r.inputs,
            outputs: r.outputs,
        };
        request.check_unique_names()?;
        Ok(request)
    }
}

/// A name that appears more than once in `names`, if any.
///
/// Names are first filtered through a 256-bit Bloom filter of their hashes, so a
/// request's few dozen distinct names cost one hash each; only a possible repeat is
/// looked for among the names before it. Long lists are sorted instead.
fn first_repeat<'a>(names: impl ExactSizeIterator<Item = &'a str> + Clone) -> Option<&'a str> {
    if names.len() > 64 {
        let mut sorted: Vec<&str> = names.collect();
        sorted.sort_unstable();
        return sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    }
    let mut seen = [0u64; 4];
    for (i, name) in names.clone().enumerate() {
        // FNV-1a: short names, no need for more.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let (word, bit) = ((hash >> 6) as usize % 4, 1u64 << (hash & 63));
        if seen[word] & bit != 0 && names.clone().take(i).any(|earlier| earlier == name) {
            return Some(name);
        }
        seen[word] |= bit;
    }
    None
}

impl InferenceRequest {
    /// Input names and requested output names must each be unique.
    pub(crate) fn check_unique_names(&self) -> std::result::Result<(), String> {
        if let Some(name) = first_repeat(self.inputs.iter().map(|t| t.name.as_str())) {
            return Err(format!("input '{name}' appears more than once"));
        }
        if let Some(outputs) = &self.outputs
            && let Some(name) = first_repeat(outputs.iter().map(|o| o.name.as_str()))
        {
            return Err(format!("output '{name}' is requested more than once"));
        }
        Ok(())
    }

    /// A request with these inputs and no id, parameters or output selection.
    pub fn new(inputs: Vec<Tensor>) -> Self {
        Self {
            id: None,
            parameters: Parameters::new(),
            inputs,
            outputs: None,
        }
    }

    /// Decodes a JSON request body; every problem becomes [`Error::InvalidInput`]
    /// naming the input and element concerned.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        if let Some(request) = fast::parse_request(body) {
            return Ok(request);
        }
        serde_json::from_slice(body)
            .map_err(|e| Error::invalid_input("inference request", e.to_string()))
    }

    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&Tensor> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

/// An inference response (`$inference_response`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResponse {
    /// The model that answered.
    pub model_name: String,
    /// The version that answered, when the server versions its models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The request's id, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Response parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
    /// The output tensors.
    pub outputs: Vec<Tensor>,
}

impl InferenceResponse {
    /// Decodes a JSON response body.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        serde_json::from_slice(body)
            .map_err(|e| Error::invalid_input("inference response", e.to_string()))
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// A tensor's name, datatype and shape without data: a model's declared input or
/// output (`$metadata_tensor`). `-1` marks a variable-size dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub datatype: Datatype,
    /// Its shape; `-1` for a dimension of any size (typically the batch).
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// A spec for `name` of `datatype` and `shape`.
    pub fn new(name: impl Into<String>, datatype: Datatype, shape: Vec<i64>) -> Self {
        Self {
            name: name.into(),
            datatype,
            shape,
        }
    }

    /// Whether `tensor` matches this spec: same datatype, same rank, and equal sizes
    /// where this spec fixes one. The error names the tensor and the difference.
    pub fn check(&self, tensor: &Tensor) -> Result<()> {
        let what = || format!("input '{}'", self.name);
        if tensor.datatype() != self.datatype {
            return Err(Error::invalid_input(
                what(),
                format!(
                    "datatype {} where the model expects {}",
                    tensor.datatype(),
                    self.datatype
                ),
            ));
        }
        let fits = tensor.shape.len() == self.shape.len()
            && tensor
                .shape
                .iter()
                .zip(&self.shape)
                .all(|(&got, &want)| want < 0 || i64::try_from(got).is_ok_and(|g| g == want));
        if !fits {
            return Err(Error::invalid_input(
                what(),
                format!(
                    "shape {:?} where the model expects {:?} (-1: any size)",
                    tensor.shape, self.shape
                ),
            ));
        }
        Ok(())
    }
}

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

/// `$metadata_server_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMetadataResponse {
    /// A descriptive name for the server.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// The protocol extensions it supports.
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// `$metadata_model_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadataResponse {
    /// The model's name.
    pub name: String,
    /// Versions that may be requested explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    /// The framework that runs the model (our artifact flavor, e.g. `burn-mlp`).
    pub platform: String,
    /// The inputs the model requires.
    pub inputs: Vec<TensorSpec>,
    /// The outputs it produces.
    pub outputs: Vec<TensorSpec>,
}

/// `$ready_model_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReadyResponse {
    /// The model's name.
    pub name: String,
    /// Whether it can answer inference requests now.
    pub ready: bool,
}

/// `$live_server_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLiveResponse {
    /// Whether the server can receive and answer requests.
    pub live: bool,
}

/// `$ready_server_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReadyResponse {
    /// Whether every model is ready.
    pub ready: bool,
}

/// The body of every failed request: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::first_repeat;

    #[test]
    fn first_repeat_finds_repeats_in_short_and_long_lists() {
        for n in [0usize, 1, 2, 20, 64, 65, 300] {
            let names: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            assert_eq!(first_repeat(refs.iter().copied()), None, "{n} distinct");
            if n >= 2 {
                let pairs = [(0, n - 1), (n / 2, n / 2 + 1), (n - 2, n - 1)];
                for (a, b) in pairs.into_iter().filter(|&(a, b)| a < b && b < n) {
                    let mut with_repeat = refs.clone();
                    with_repeat[b] = refs[a];
                    assert_eq!(
                        first_repeat(with_repeat.iter().copied()),
                        Some(refs[a]),
                        "{n} names, {a} repeated at {b}"
                    );
                }
            }
        }
    }
}
