//! An ONNX graph as a [`Predictor`]: the signature read from the graph, requests
//! checked against it, inputs and outputs converted to and from tract's tensors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mlops_core::drift::TableReference;
use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
use mlops_core::model::{CheckedInputs, Signature};
use mlops_core::{DriftDetector, Error, Predictor, Result};
use tract_onnx::pb::{ModelProto, TensorProto, type_proto};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable,
    SpecialOps, TDim, TValue, TVec, Tensor as TractTensor, ToDim, TractResult, TypedModel,
    TypedRunnableModel, tract_ndarray,
};
use tract_onnx::tract_hir::internal::f16;

use crate::metadata::{self, Extras};

/// The artifact flavor of ONNX models.
pub const FLAVOR: &str = "onnx";

/// Operator domains the loader reads: the standard one and ONNX-ML.
const DOMAINS: [&str; 3] = ["", "ai.onnx", "ai.onnx.ml"];

/// An ONNX model ready to answer: the graph optimized by tract once, run for
/// each request with the request's batch size.
///
/// The signature comes from the graph: its inputs (initializers excluded) and
/// outputs by name, their element types, and their shapes with `-1` for every
/// dimension the graph leaves open (the batch, typically). A `ZipMap` output
/// (a sequence of maps in ONNX) is served as the `[N, classes]` probabilities.
///
/// ```no_run
/// use mlops_core::Predictor;
/// use mlops_onnx::OnnxModel;
///
/// let bytes = std::fs::read("model.onnx")?;
/// let model = OnnxModel::from_bytes(&bytes)?;
/// for input in &model.signature().inputs {
///     println!("{} {:?} {:?}", input.name, input.datatype, input.shape);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OnnxModel {
    signature: Signature,
    /// The plan for any batch size (the batch dimension symbolic).
    plan: Arc<TypedRunnableModel>,
    /// How to build a plan for one batch size, and those built.
    template: Arc<Template>,
    sized: Arc<Mutex<SizedPlans>>,
    /// Whether an input has the batch dimension (else there is nothing to size).
    batched: bool,
    /// tract's element type of each signature input, in graph order.
    input_types: Vec<DatumType>,
    info: OnnxInfo,
    input_drift: Option<Arc<dyn DriftDetector>>,
    prediction_drift: Option<Arc<dyn DriftDetector>>,
}

/// Batches of fewer rows take the plan for any size.
const SIZED_MIN_ROWS: usize = 64;
/// Plans kept for particular batch sizes, the oldest dropped first.
const SIZED_PLANS: usize = 8;
/// Batch sizes remembered while counting how often each is asked for.
const SIZES_SEEN: usize = 64;

/// One dimension of a graph input.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dim {
    Fixed(i64),
    /// The first dimension left open: the batch, one symbol for every input.
    Batch,
    /// Another open dimension, by its name in the graph (or a made-up one).
    Named(String),
}

/// The parsed graph and what turns it into an optimized one.
#[derive(Debug)]
struct Template {
    parsed: InferenceModel,
    inputs: Vec<(DatumType, Vec<Dim>)>,
    /// The element type the graph declares for each output, when it does.
    declared_outputs: Vec<Option<DatumType>>,
    output_names: Vec<String>,
}

impl Template {
    /// The optimized graph, for batches of `rows` rows or (`None`) of any size.
    fn typed(&self, rows: Option<usize>) -> TractResult<TypedModel> {
        let mut model = self.parsed.clone();
        for (index, (datum, dims)) in self.inputs.iter().enumerate() {
            let dims: TVec<TDim> = dims
                .iter()
                .map(|d| match (d, rows) {
                    (Dim::Fixed(v), _) => v.to_dim(),
                    (Dim::Batch, Some(rows)) => rows.to_dim(),
                    (Dim::Batch, None) => model.symbols.sym("N").to_dim(),
                    (Dim::Named(name), _) => model.symbols.sym(name).to_dim(),
                })
                .collect();
            model.set_input_fact(index, InferenceFact::dt_shape(*datum, dims))?;
        }
        let mut typed = model.into_typed()?;
        // tract may compute an output in a type of its own (class labels as
        // symbolic dimensions, say): cast each to the type the graph declares.
        for (index, declared) in self.declared_outputs.iter().enumerate() {
            let outlet = typed.outputs[index];
            let actual = typed.outlet_fact(outlet)?.datum_type;
            if let Some(declared) = declared
                && *declared != actual
            {
                let cast = typed.wire_node(
                    format!("{}.mlops_cast", self.output_names[index]),
                    tract_onnx::tract_core::ops::cast::cast(*declared),
                    &[outlet],
                )?[0];
                typed.outputs[index] = cast;
            }
        }
        typed.into_optimized()
    }
}

/// Plans built for particular batch sizes.
#[derive(Debug, Default)]
struct SizedPlans {
    plans: Vec<(usize, Arc<TypedRunnableModel>)>,
    /// Sizes asked for, with how often (bounded; the oldest forgotten).
    seen: Vec<(usize, u32)>,
    /// Sizes whose plan could not be built.
    failed: Vec<usize>,
    /// Sizes whose plan is being built.
    building: Vec<usize>,
}

impl SizedPlans {
    /// Counts a request for `rows`; whether it was asked for before.
    fn seen_twice(&mut self, rows: usize) -> bool {
        if let Some((_, n)) = self.seen.iter_mut().find(|(r, _)| *r == rows) {
            *n += 1;
            return true;
        }
        if self.seen.len() >= SIZES_SEEN {
            self.seen.remove(0);
        }
        self.seen.push((rows, 1));
        false
    }
}

/// What the graph says about where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnnxInfo {
    /// The exporter (`skl2onnx`, `pytorch`, ...), as the file records it.
    pub producer: String,
    /// Its version.
    pub producer_version: String,
    /// Operator set versions by domain (`""` is the standard domain).
    pub opsets: BTreeMap<String, i64>,
    /// The operator types the graph uses, sorted.
    pub operators: Vec<String>,
    /// The file's `metadata_props`, the drift references' keys left out.
    pub metadata: BTreeMap<String, String>,
}

fn bad_model(reason: impl Into<String>) -> Error {
    Error::invalid_input("ONNX model", reason)
}

/// Our datatype and tract's for an ONNX element type, `None` when unsupported.
fn element_type(onnx: i32) -> Option<(Datatype, DatumType)> {
    use tract_onnx::pb::tensor_proto::DataType as D;
    Some(match D::try_from(onnx).ok()? {
        D::Float => (Datatype::Fp32, DatumType::F32),
        D::Double => (Datatype::Fp64, DatumType::F64),
        D::Float16 => (Datatype::Fp16, DatumType::F16),
        D::Int8 => (Datatype::Int8, DatumType::I8),
        D::Int16 => (Datatype::Int16, DatumType::I16),
        D::Int32 => (Datatype::Int32, DatumType::I32),
        D::Int64 => (Datatype::Int64, DatumType::I64),
        D::Uint8 => (Datatype::Uint8, DatumType::U8),
        D::Uint16 => (Datatype::Uint16, DatumType::U16),
        D::Uint32 => (Datatype::Uint32, DatumType::U32),
        D::Uint64 => (Datatype::Uint64, DatumType::U64),
        D::Bool => (Datatype::Bool, DatumType::Bool),
        D::String => (Datatype::Bytes, DatumType::String),
        _ => return None,
    })
}

/// Our datatype for one of tract's, `None` when it has none.
fn datatype_of(dt: DatumType) -> Option<Datatype> {
    Some(match dt {
        DatumType::F32 => Datatype::Fp32,
        DatumType::F64 => Datatype::Fp64,
        DatumType::F16 => Datatype::Fp16,
        DatumType::I8 => Datatype::Int8,
        DatumType::I16 => Datatype::Int16,
        DatumType::I32 => Datatype::Int32,
        DatumType::I64 => Datatype::Int64,
        DatumType::U8 => Datatype::Uint8,
        DatumType::U16 => Datatype::Uint16,
        DatumType::U32 => Datatype::Uint32,
        DatumType::U64 => Datatype::Uint64,
        DatumType::Bool => Datatype::Bool,
        DatumType::String => Datatype::Bytes,
        _ => return None,
    })
}

/// The framework with this crate's operators added.
fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::ops::register(&mut onnx.op_register);
    onnx
}

/// The operators of `proto` the loader cannot run, as `op (domain) in node 'name'`.
fn unsupported(onnx: &tract_onnx::Onnx, proto: &ModelProto) -> Vec<String> {
    let Some(graph) = &proto.graph else {
        return Vec::new();
    };
    graph
        .node
        .iter()
        .filter(|n| {
            !DOMAINS.contains(&n.domain.as_str()) || !onnx.op_register.0.contains_key(&n.op_type)
        })
        .map(|n| {
            let domain = if n.domain.is_empty() {
                "ai.onnx"
            } else {
                &n.domain
            };
            format!("{} ({domain}) in node '{}'", n.op_type, n.name)
        })
        .collect()
}

impl OnnxModel {
    /// Reads and optimizes an ONNX model. Errors name what is wrong: not an ONNX
    /// file, an operator the loader cannot run (every one is listed, with its
    /// node), an input without a declared type or rank, or a graph tract refuses.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let onnx = framework();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| bad_model(format!("not a readable ONNX file: {e}")))?;
        let Some(graph) = &proto.graph else {
            return Err(bad_model("the file holds no graph"));
        };
        let missing = unsupported(&onnx, &proto);
        if !missing.is_empty() {
            return Err(bad_model(format!(
                "operators the loader cannot run: {}; the ONNX-ML operators it adds to tract's are {:?}",
                missing.join(", "),
                crate::ops::ADDED
            )));
        }
        let Extras {
            input_reference,
            prediction_reference,
            other,
        } = metadata::extras(&proto)?;

        // The inputs a request gives: graph inputs that are not initializers.
        let initializers: std::collections::HashSet<&str> = graph
            .initializer
            .iter()
            .map(|t: &TensorProto| t.name.as_str())
            .collect();
        let mut specs = Vec::new();
        let mut facts = Vec::new();
        let mut template_inputs = Vec::new();
        let parsed = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| bad_model(format!("{e:#}")))?;
        for input in graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
        {
            let what = || format!("input '{}'", input.name);
            let Some(type_proto::Value::TensorType(tensor)) =
                input.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return Err(bad_model(format!(
                    "{}: not a tensor (only tensor inputs are served)",
                    what()
                )));
            };
            let (datatype, datum) = element_type(tensor.elem_type).ok_or_else(|| {
                bad_model(format!(
                    "{}: element type {} is not supported",
                    what(),
                    tensor.elem_type
                ))
            })?;
            let Some(shape) = &tensor.shape else {
                return Err(bad_model(format!(
                    "{}: the graph declares no shape (rank)",
                    what()
                )));
            };
            let mut spec_shape = Vec::new();
            let mut dims = Vec::new();
            for (axis, dim) in shape.dim.iter().enumerate() {
                use tract_onnx::pb::tensor_shape_proto::dimension::Value as V;
                match &dim.value {
                    Some(V::DimValue(v)) if *v > 0 => {
                        spec_shape.push(*v);
                        dims.push(Dim::Fixed(*v));
                    }
                    other => {
                        spec_shape.push(-1);
                        // The first dimension is the batch: one symbol shared by every input.
                        dims.push(match (axis, other) {
                            (0, _) => Dim::Batch,
                            (_, Some(V::DimParam(p))) if !p.is_empty() => Dim::Named(p.clone()),
                            _ => Dim::Named(format!("{}_{axis}", input.name)),
                        });
                    }
                }
            }
            specs.push(TensorSpec::new(input.name.clone(), datatype, spec_shape));
            facts.push(datum);
            template_inputs.push((datum, dims));
        }
        if specs.len() != parsed.inputs.len() {
            return Err(bad_model(format!(
                "the graph has {} inputs to feed but tract reads {}",
                specs.len(),
                parsed.inputs.len()
            )));
        }
        let declared_outputs = graph
            .output
            .iter()
            .map(
                |output| match output.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                    Some(type_proto::Value::TensorType(t)) => {
                        element_type(t.elem_type).map(|(_, d)| d)
                    }
                    _ => None,
                },
            )
            .collect();
        let template = Template {
            parsed,
            inputs: template_inputs,
            declared_outputs,
            output_names: graph.output.iter().map(|o| o.name.clone()).collect(),
        };
        let typed = template
            .typed(None)
            .map_err(|e| bad_model(format!("tract could not prepare the graph: {e:#}")))?;
        let mut outputs = Vec::new();
        for (index, output) in graph.output.iter().enumerate() {
            let fact = typed
                .output_fact(index)
                .map_err(|e| bad_model(format!("output '{}': {e:#}", output.name)))?;
            let datatype = datatype_of(fact.datum_type).ok_or_else(|| {
                bad_model(format!(
                    "output '{}': element type {:?} is not supported",
                    output.name, fact.datum_type
                ))
            })?;
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().unwrap_or(-1))
                .collect();
            outputs.push(TensorSpec::new(output.name.clone(), datatype, shape));
        }
        if outputs.len() != typed.outputs.len() {
            return Err(bad_model("the graph's outputs and tract's differ"));
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| bad_model(format!("tract could not plan the graph: {e:#}")))?;
        let info = OnnxInfo {
            producer: proto.producer_name.clone(),
            producer_version: proto.producer_version.clone(),
            opsets: proto
                .opset_import
                .iter()
                .map(|o| (o.domain.clone(), o.version))
                .collect(),
            operators: {
                let mut ops: Vec<String> = graph.node.iter().map(|n| n.op_type.clone()).collect();
                ops.sort();
                ops.dedup();
                ops
            },
            metadata: other,
        };
        Ok(Self {
            signature: Signature {
                inputs: specs,
                outputs,
                matrix_input: None,
            },
            plan,
            sized: Arc::new(Mutex::new(SizedPlans::default())),
            batched: template
                .inputs
                .iter()
                .any(|(_, dims)| dims.first() == Some(&Dim::Batch)),
            template: Arc::new(template),
            input_types: facts,
            info,
            input_drift: detector(input_reference)?,
            prediction_drift: detector(prediction_reference)?,
        })
    }

    /// What the file says about its origin: producer, operator sets, operators.
    pub fn info(&self) -> &OnnxInfo {
        &self.info
    }

    fn answer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        if rows == 0 {
            return self.empty_outputs();
        }
        let mut feeds: TVec<TValue> = TVec::new();
        for (spec, datum) in self.signature.inputs.iter().zip(&self.input_types) {
            let tensor = inputs.iter().find(|t| t.name == spec.name).ok_or_else(|| {
                Error::invalid_input(format!("input '{}'", spec.name), "missing from the request")
            })?;
            feeds.push(to_tract(tensor, *datum)?.into());
        }
        let results = self.plan_for(rows).run(feeds).map_err(|e| {
            Error::invalid_input("inputs", format!("the model could not run on them: {e:#}"))
        })?;
        results
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| from_tract(&spec.name, &value))
            .collect()
    }

    /// The plan for a batch of `rows`: one optimized for that size once it was
    /// asked for twice and built in the background (tract picks its matrix
    /// kernels for known sizes: 4x faster on a 1024-row MLP batch than with a
    /// symbolic batch), else the plan for any size. Small batches always take
    /// the latter.
    fn plan_for(&self, rows: usize) -> Arc<TypedRunnableModel> {
        if !self.batched || rows < SIZED_MIN_ROWS {
            return self.plan.clone();
        }
        let Ok(mut sized) = self.sized.lock() else {
            return self.plan.clone();
        };
        if let Some((_, plan)) = sized.plans.iter().find(|(r, _)| *r == rows) {
            return plan.clone();
        }
        if sized.failed.contains(&rows) || sized.building.contains(&rows) || !sized.seen_twice(rows)
        {
            return self.plan.clone();
        }
        // Built on a thread of its own (optimizing a graph takes milliseconds
        // to seconds): this call and those until it is ready take the plan for
        // any size.
        sized.building.push(rows);
        drop(sized);
        let (template, plans) = (self.template.clone(), self.sized.clone());
        let spawned = std::thread::Builder::new()
            .name("mlops-onnx-plan".into())
            .spawn(move || {
                let built = template.typed(Some(rows)).and_then(|t| t.into_runnable());
                if let Ok(mut sized) = plans.lock() {
                    sized.building.retain(|r| *r != rows);
                    match built {
                        Ok(plan) => {
                            if sized.plans.len() >= SIZED_PLANS {
                                sized.plans.remove(0);
                            }
                            sized.plans.push((rows, plan));
                        }
                        // The plan for any size answers this size; do not try again.
                        Err(_) => sized.failed.push(rows),
                    }
                }
            });
        if spawned.is_err()
            && let Ok(mut sized) = self.sized.lock()
        {
            sized.building.retain(|r| *r != rows);
            sized.failed.push(rows);
        }
        self.plan.clone()
    }

    /// Whether a plan for batches of `rows` rows is built (for tests).
    #[doc(hidden)]
    pub fn has_plan_for(&self, rows: usize) -> bool {
        self.sized
            .lock()
            .map(|s| s.plans.iter().any(|(r, _)| *r == rows))
            .unwrap_or(false)
    }

    /// The outputs for a batch of no rows: every open dimension 0.
    fn empty_outputs(&self) -> Result<Vec<Tensor>> {
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .map(|&d| usize::try_from(d).unwrap_or(0))
                    .collect();
                Tensor::new(
                    spec.name.clone(),
                    shape,
                    TensorData::with_capacity(spec.datatype, 0),
                )
            })
            .collect()
    }
}

fn detector(reference: Option<TableReference>) -> Result<Option<Arc<dyn DriftDetector>>> {
    Ok(match reference {
        Some(r) => Some(Arc::new(
            mlops_core::drift::TableDriftDetector::from_reference(r)?,
        )),
        None => None,
    })
}

/// A request tensor as tract's, of the element type the graph declares.
fn to_tract(tensor: &Tensor, datum: DatumType) -> Result<TractTensor> {
    let shape: Vec<usize> = tensor.shape.iter().copied().collect();
    let bad = |e: tract_onnx::prelude::TractError| {
        Error::invalid_input(format!("input '{}'", tensor.name), format!("{e:#}"))
    };
    let t = match &tensor.data {
        TensorData::Bool(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint8(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint16(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint32(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint64(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int8(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int16(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int32(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int64(v) => TractTensor::from_shape(&shape, v),
        TensorData::Fp16(v) => {
            let halves: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            TractTensor::from_shape(&shape, &halves)
        }
        TensorData::Fp32(v) => TractTensor::from_shape(&shape, v),
        TensorData::Fp64(v) => TractTensor::from_shape(&shape, v),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.clone()).map_err(|_| {
                        Error::invalid_input(
                            format!("input '{}'", tensor.name),
                            format!("element {i} is not UTF-8 text (ONNX strings are UTF-8)"),
                        )
                    })
                })
                .collect::<Result<Vec<String>>>()?;
            let array =
                tract_ndarray::ArrayD::from_shape_vec(shape.clone(), strings).map_err(|e| {
                    Error::invalid_input(format!("input '{}'", tensor.name), e.to_string())
                })?;
            Ok(TractTensor::from(array))
        }
    }
    .map_err(bad)?;
    if t.datum_type() == datum {
        Ok(t)
    } else {
        t.cast_to_dt(datum).map(|c| c.into_owned()).map_err(bad)
    }
}

/// An output of tract's as a response tensor named `name`.
fn from_tract(name: &str, value: &TValue) -> Result<Tensor> {
    let shape: Vec<usize> = value.shape().to_vec();
    let bad = |e: tract_onnx::prelude::TractError| {
        Error::backend("tract", format!("output '{name}': {e:#}"))
    };
    macro_rules! plain {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                value
                    .try_as_plain_ram()
                    .map_err(bad)?
                    .as_slice::<$t>()
                    .map_err(bad)?
                    .to_vec(),
            )
        };
    }
    let data = match value.datum_type() {
        DatumType::Bool => plain!(bool, Bool),
        DatumType::U8 => plain!(u8, Uint8),
        DatumType::U16 => plain!(u16, Uint16),
        DatumType::U32 => plain!(u32, Uint32),
        DatumType::U64 => plain!(u64, Uint64),
        DatumType::I8 => plain!(i8, Int8),
        DatumType::I16 => plain!(i16, Int16),
        DatumType::I32 => plain!(i32, Int32),
        DatumType::I64 => plain!(i64, Int64),
        DatumType::F32 => plain!(f32, Fp32),
        DatumType::F64 => plain!(f64, Fp64),
        DatumType::F16 => TensorData::Fp16(
            value
                .try_as_plain_ram()
                .map_err(bad)?
                .as_slice::<f16>()
                .map_err(bad)?
                .iter()
                .map(|h| h.to_f32())
                .collect(),
        ),
        DatumType::String => TensorData::Bytes(
            value
                .try_as_plain_ram()
                .map_err(bad)?
                .as_slice::<String>()
                .map_err(bad)?
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        ),
        other => {
            return Err(Error::backend(
                "tract",
                format!(
                    "output '{name}': element type {other:?} has no inference-protocol datatype"
                ),
            ));
        }
    };
    Tensor::new(name, shape, data)
}

impl Predictor for OnnxModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let checked = self.signature.check_inputs(inputs)?;
        self.answer(&checked)
    }

    fn predict_checked(&self, inputs: CheckedInputs<'_>) -> Result<Vec<Tensor>> {
        if inputs.is_for(&self.signature) {
            self.answer(&inputs)
        } else {
            self.predict(&inputs)
        }
    }

    fn input_drift(&self) -> Option<Arc<dyn DriftDetector>> {
        self.input_drift.clone()
    }

    fn prediction_drift(&self) -> Option<Arc<dyn DriftDetector>> {
        self.prediction_drift.clone()
    }
}
