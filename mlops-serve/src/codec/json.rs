//! The protocol's JSON form through serde: the general decoder (every request the
//! scanner leaves, and the one that words the errors) and the encoder.
//!
//! Decoding is strict where the spec is strict and lenient where clients differ:
//! - `data` may be flat (`[1, 2, 3, 4]`) or nested (`[[1, 2], [3, 4]]`); nesting is
//!   flattened in row-major order and only the element count must match the shape;
//! - every element must fit the declared datatype: `UINT8` rejects `300`, `-1` and
//!   `1.5`, `BOOL` takes only `true`/`false`, `BYTES` takes strings;
//! - shapes must be concrete (no `-1`) in requests and responses;
//! - parameter values are strings, numbers or booleans, as the spec says.

use std::fmt;

use std::marker::PhantomData;

use mlops_core::inference::{
    Datatype, InferenceRequest, InferenceResponse, ParameterValue, Parameters, RequestOutput,
    Shape, Tensor, TensorData, check_element_count,
};
use mlops_core::{Error, Result};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use super::meter;

/// A tensor in the protocol's JSON form (`$request_input` / `$response_output`).
pub(super) struct TensorJson<'a>(pub(super) &'a Tensor);

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let t = self.0;
        let fields = if t.parameters.is_empty() { 4 } else { 5 };
        let mut s = serializer.serialize_struct("Tensor", fields)?;
        s.serialize_field("name", &t.name)?;
        s.serialize_field("shape", &t.shape[..])?;
        s.serialize_field("datatype", &t.datatype())?;
        if !t.parameters.is_empty() {
            s.serialize_field("parameters", &t.parameters)?;
        }
        s.serialize_field(
            "data",
            &DataSer {
                name: &t.name,
                data: &t.data,
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
pub(super) struct WireTensor {
    pub(super) name: String,
    pub(super) shape: Vec<i64>,
    pub(super) datatype: WireDatatype,
    pub(super) parameters: Parameters,
    pub(super) data: Option<WireData>,
}

/// A `datatype` field: a known datatype, or the unknown name for the error message.
pub(super) enum WireDatatype {
    Known(Datatype),
    Unknown(String),
}

/// The `data` of a [`WireTensor`].
pub(super) enum WireData {
    /// Read straight into typed elements: at most as many as the shape holds,
    /// with the count of those beyond it (counted, not kept).
    Typed(TensorData, usize),
    /// Read before the datatype and shape were known: kept as its JSON text (a
    /// generic value tree would take many times the body's size), typed once
    /// they are.
    Deferred(Box<serde_json::value::RawValue>),
}

/// The elements `shape` holds, or the reason it holds none (a negative
/// dimension, or more than a `usize` counts), worded as the tensor's errors are.
fn element_count(name: &str, shape: &[i64]) -> std::result::Result<usize, String> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| {
            format!(
                "input '{name}': shape {shape:?} has a negative dimension; shapes must be concrete"
            )
        })?;
        acc.checked_mul(d).ok_or_else(|| {
            format!("input '{name}': shape {shape:?} of '{name}' overflows the element count")
        })
    })
}

/// Reads the elements of a `datatype` tensor named `name` whose shape holds
/// `n` of them, counting them with the meter before they are allocated.
fn read_data<'de, D: Deserializer<'de>>(
    deserializer: D,
    name: &str,
    datatype: Datatype,
    n: usize,
) -> std::result::Result<(TensorData, usize), D::Error> {
    let bytes = meter::elements_bytes(datatype, n).unwrap_or(usize::MAX);
    meter::take(
        format_args!("input '{name}' ({n} {datatype} elements)"),
        bytes,
    )
    .map_err(de::Error::custom)?;
    let mut out = TensorData::with_capacity(datatype, n);
    let mut extra = 0;
    DataSeed {
        out: &mut out,
        name,
        room: n,
        extra: &mut extra,
    }
    .deserialize(deserializer)
    .map_err(|e| de::Error::custom(format_args!("input '{name}': data: {e}")))?;
    Ok((out, extra))
}

/// A map of parameters, each counted with the meter as it is read.
struct ParametersSeed;

impl<'de> DeserializeSeed<'de> for ParametersSeed {
    type Value = Parameters;
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Parameters, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parameters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of parameters")
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Parameters, A::Error> {
                let mut out = Parameters::new();
                while let Some((key, value)) = map.next_entry::<String, ParameterValue>()? {
                    meter::take("parameters", meter::parameter_bytes(&key, &value))
                        .map_err(de::Error::custom)?;
                    out.insert(key, value);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// `parameters`, counted with the meter (for `deserialize_with`).
fn metered_parameters<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Parameters, D::Error> {
    ParametersSeed.deserialize(deserializer)
}

/// An array of `T`, each counted with the meter as `bytes` (at least its
/// own size) under `what` before it is kept.
struct MeteredSeq<T> {
    what: &'static str,
    bytes: fn(&T) -> usize,
    _of: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for MeteredSeq<T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for MeteredSeq<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array ({})", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            meter::take(self.what, (self.bytes)(&item)).map_err(de::Error::custom)?;
            out.push(item);
        }
        Ok(out)
    }
}

/// A shape's dimensions, each counted twice (as read, and as the tensor's
/// [`Shape`]).
fn shape_seed() -> MeteredSeq<i64> {
    MeteredSeq {
        what: "shape",
        bytes: |_| 2 * std::mem::size_of::<i64>(),
        _of: PhantomData,
    }
}

/// A requested output: [`RequestOutput`] with its parameters counted.
#[derive(Deserialize)]
struct OutputDe {
    name: String,
    #[serde(default, deserialize_with = "metered_parameters")]
    parameters: Parameters,
}

/// `outputs`, each counted with the meter (for `deserialize_with`).
fn metered_outputs<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Vec<RequestOutput>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<OutputDe>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of requested outputs, or null")
        }
        fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> std::result::Result<Self::Value, D::Error> {
            MeteredSeq {
                what: "outputs",
                bytes: |o: &OutputDe| std::mem::size_of::<RequestOutput>() + o.name.len(),
                _of: PhantomData,
            }
            .deserialize(deserializer)
            .map(Some)
        }
    }
    Ok(deserializer.deserialize_option(V)?.map(|outputs| {
        outputs
            .into_iter()
            .map(|o| RequestOutput {
                name: o.name,
                parameters: o.parameters,
            })
            .collect()
    }))
}

impl WireDatatype {
    /// The datatype, or an error naming the tensor and the unknown name.
    pub(super) fn known(&self, name: &str) -> std::result::Result<Datatype, String> {
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
                    shape = Some(map.next_value_seed(shape_seed())?);
                }
                TensorField::Datatype => {
                    once(&datatype, "datatype")?;
                    datatype = Some(map.next_value()?);
                }
                TensorField::Parameters => {
                    once(&parameters, "parameters")?;
                    parameters = Some(map.next_value_seed(ParametersSeed)?);
                }
                TensorField::Data => {
                    once(&data, "data")?;
                    data = Some(match (&datatype, &shape) {
                        // Typed as it is read when the datatype and the shape are
                        // known: the shape says how many elements to count (and
                        // make room for) before any is read.
                        (Some(WireDatatype::Known(d)), Some(dims)) => {
                            let label = name.as_deref().unwrap_or("");
                            let n = element_count(label, dims).map_err(de::Error::custom)?;
                            let (out, extra) = map.next_value_seed(TypedSeed(label, *d, n))?;
                            WireData::Typed(out, extra)
                        }
                        _ => {
                            let raw: Box<serde_json::value::RawValue> = map.next_value()?;
                            meter::take("data", raw.get().len()).map_err(de::Error::custom)?;
                            WireData::Deferred(raw)
                        }
                    });
                }
                TensorField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        meter::take(format_args!("input '{name}'"), meter::tensor_bytes(&name))
            .map_err(de::Error::custom)?;
        Ok(WireTensor {
            name,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.unwrap_or_default(),
            data,
        })
    }
}

impl WireTensor {
    /// The shape as sizes; negative dimensions are refused.
    pub(super) fn dimensions(&self) -> std::result::Result<Shape, String> {
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
    pub(super) fn into_tensor(self) -> std::result::Result<Tensor, String> {
        let datatype = self.datatype.known(&self.name)?;
        let shape = self.dimensions()?;
        let name = self.name;
        let (data, extra) = match self.data {
            None => return Err(format!("input '{name}': missing \"data\"")),
            Some(WireData::Typed(d, extra)) => (d, extra),
            Some(WireData::Deferred(raw)) => {
                let n = element_count(&name, &self.shape)?;
                let mut de = serde_json::Deserializer::from_str(raw.get());
                read_data(&mut de, &name, datatype, n).map_err(|e| e.to_string())?
            }
        };
        check_element_count(&name, &shape, data.len() + extra)
            .map_err(|r| format!("input '{name}': {r}"))?;
        Ok(Tensor {
            name,
            shape,
            parameters: self.parameters,
            data,
        })
    }
}

/// A tensor decoded from JSON and checked (its element count matches its shape).
pub(super) struct TensorDe(pub(super) Tensor);

impl<'de> Deserialize<'de> for TensorDe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        WireTensor::deserialize(deserializer)?
            .into_tensor()
            .map(TensorDe)
            .map_err(de::Error::custom)
    }
}

/// A tensor's `data`, typed as [`read_data`] reads it: the tensor's name, its
/// datatype and the elements its shape holds.
struct TypedSeed<'a>(&'a str, Datatype, usize);

impl<'de> DeserializeSeed<'de> for TypedSeed<'_> {
    type Value = (TensorData, usize);
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        read_data(deserializer, self.0, self.1, self.2)
    }
}

/// Pushes the (possibly nested) JSON array's leaves into a typed vector: at
/// most `room` kept in `out`, the rest only counted in `extra` (the element
/// count check then words the error).
struct DataSeed<'s> {
    out: &'s mut TensorData,
    /// The tensor's name, for the meter.
    name: &'s str,
    room: usize,
    extra: &'s mut usize,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        // The seed is its own visitor: one per element, no state of its own.
        deserializer.deserialize_any(self)
    }
}

impl DataSeed<'_> {
    /// Whether `out` is full: the element is counted, not kept.
    fn full(&mut self) -> bool {
        if self.out.len() >= self.room {
            *self.extra += 1;
            true
        } else {
            false
        }
    }

    fn mismatch<E: de::Error>(&self, what: &str) -> E {
        E::custom(format!(
            "element {} is {what}, which is not a valid {} value",
            self.out.len(),
            self.out.datatype()
        ))
    }

    fn push_int<E: de::Error>(mut self, v: i128) -> std::result::Result<(), E> {
        if self.full() {
            return Ok(());
        }
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

    fn push_float<E: de::Error>(mut self, v: f64) -> std::result::Result<(), E> {
        if self.full() {
            return Ok(());
        }
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

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.out.datatype())
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> std::result::Result<(), E> {
        if self.full() {
            return Ok(());
        }
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

    fn visit_str<E: de::Error>(mut self, v: &str) -> std::result::Result<(), E> {
        if self.full() {
            return Ok(());
        }
        match self.out {
            TensorData::Bytes(o) => {
                if !v.is_empty() {
                    meter::take(format_args!("input '{}'", self.name), v.len())
                        .map_err(E::custom)?;
                }
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
        let DataSeed {
            out,
            name,
            room,
            extra,
        } = self;
        while seq
            .next_element_seed(DataSeed {
                out: &mut *out,
                name,
                room,
                extra: &mut *extra,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// A request's JSON form, every tensor decoded and checked.
#[derive(Deserialize)]
pub(super) struct RequestDe {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, deserialize_with = "metered_parameters")]
    parameters: Parameters,
    inputs: Vec<TensorDe>,
    #[serde(default, deserialize_with = "metered_outputs")]
    outputs: Option<Vec<RequestOutput>>,
}

impl RequestDe {
    pub(super) fn into_request(self) -> InferenceRequest {
        InferenceRequest {
            id: self.id,
            parameters: self.parameters,
            inputs: self.inputs.into_iter().map(|t| t.0).collect(),
            outputs: self.outputs,
        }
    }
}

/// A response's JSON form, every tensor decoded and checked.
#[derive(Deserialize)]
pub(super) struct ResponseDe {
    model_name: String,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    outputs: Vec<TensorDe>,
}

impl ResponseDe {
    pub(super) fn into_response(self) -> InferenceResponse {
        InferenceResponse {
            model_name: self.model_name,
            model_version: self.model_version,
            id: self.id,
            parameters: self.parameters,
            outputs: self.outputs.into_iter().map(|t| t.0).collect(),
        }
    }
}

/// The JSON part of a binary-extension request: tensors not yet given their data.
#[derive(Deserialize)]
pub(super) struct WireRequest {
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default, deserialize_with = "metered_parameters")]
    pub(super) parameters: Parameters,
    pub(super) inputs: Vec<WireTensor>,
    #[serde(default, deserialize_with = "metered_outputs")]
    pub(super) outputs: Option<Vec<RequestOutput>>,
}

/// The JSON part of a binary-extension response.
#[derive(Deserialize)]
pub(super) struct WireResponse {
    pub(super) model_name: String,
    #[serde(default)]
    pub(super) model_version: Option<String>,
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) parameters: Parameters,
    pub(super) outputs: Vec<WireTensor>,
}

/// Serializes a list of tensors as a JSON array.
struct TensorsJson<'a>(&'a [Tensor]);

impl Serialize for TensorsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for t in self.0 {
            seq.serialize_element(&TensorJson(t))?;
        }
        seq.end()
    }
}

/// A request in the protocol's JSON form; empty optional fields are left out.
pub(super) struct RequestJson<'a>(pub(super) &'a InferenceRequest);

impl Serialize for RequestJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.0;
        let mut s = serializer.serialize_struct("InferenceRequest", 4)?;
        if let Some(id) = &r.id {
            s.serialize_field("id", id)?;
        }
        if !r.parameters.is_empty() {
            s.serialize_field("parameters", &r.parameters)?;
        }
        s.serialize_field("inputs", &TensorsJson(&r.inputs))?;
        if let Some(outputs) = &r.outputs {
            s.serialize_field("outputs", outputs)?;
        }
        s.end()
    }
}

/// A response in the protocol's JSON form; empty optional fields are left out.
pub(super) struct ResponseJson<'a>(pub(super) &'a InferenceResponse);

impl Serialize for ResponseJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.0;
        let mut s = serializer.serialize_struct("InferenceResponse", 5)?;
        s.serialize_field("model_name", &r.model_name)?;
        if let Some(v) = &r.model_version {
            s.serialize_field("model_version", v)?;
        }
        if let Some(id) = &r.id {
            s.serialize_field("id", id)?;
        }
        if !r.parameters.is_empty() {
            s.serialize_field("parameters", &r.parameters)?;
        }
        s.serialize_field("outputs", &TensorsJson(&r.outputs))?;
        s.end()
    }
}

/// Decodes a JSON request body with serde; every problem becomes
/// [`Error::InvalidInput`] naming the input and element concerned.
pub(super) fn decode_request(body: &[u8]) -> Result<InferenceRequest> {
    let request = serde_json::from_slice::<RequestDe>(body)
        .map_err(|e| Error::invalid_input("inference request", e.to_string()))?
        .into_request();
    request.check_unique_names()?;
    Ok(request)
}

/// Decodes a JSON response body with serde.
pub(super) fn decode_response(body: &[u8]) -> Result<InferenceResponse> {
    serde_json::from_slice::<ResponseDe>(body)
        .map(ResponseDe::into_response)
        .map_err(|e| Error::invalid_input("inference response", e.to_string()))
}

/// Encodes a request as JSON.
pub(super) fn encode_request(request: &InferenceRequest) -> Result<Vec<u8>> {
    serde_json::to_vec(&RequestJson(request))
        .map_err(|e| Error::invalid_input("inference request", e.to_string()))
}

/// Encodes a response as JSON.
pub(super) fn encode_response(response: &InferenceResponse) -> Result<Vec<u8>> {
    // Room for the usual answer up front: growing from empty reallocates several
    // times for even a one-value response.
    let elements: usize = response.outputs.iter().map(|t| t.data.len()).sum();
    let mut body = Vec::with_capacity(256 + 24 * elements.min(1 << 16));
    serde_json::to_writer(&mut body, &ResponseJson(response))
        .map_err(|e| Error::invalid_input("inference response", e.to_string()))?;
    Ok(body)
}

/// Encodes tensors as a JSON array of the protocol's tensor objects.
pub(super) fn encode_tensors(tensors: &[Tensor]) -> Result<String> {
    serde_json::to_string(&TensorsJson(tensors))
        .map_err(|e| Error::invalid_input("tensors", e.to_string()))
}
