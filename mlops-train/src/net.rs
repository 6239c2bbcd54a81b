//! The networks: a linear model and a multi-layer perceptron, as burn modules, with
//! their weights in safetensors (PyTorch's `nn.Linear` layout, so other tools can
//! read them).

use std::collections::HashMap;
use std::fmt;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData, activation};
use mlops_core::{Error, Result};
use serde::{Deserialize, Serialize};

use mlops_core::rng::SplitMix64;

/// The non-linearity between hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
    /// The Gaussian error linear unit (exact form).
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
    /// Hyperbolic tangent.
    Tanh,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Relu => "relu",
            Self::Gelu => "gelu",
            Self::Silu => "silu",
            Self::Tanh => "tanh",
        })
    }
}

/// Which model to fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelSpec {
    /// A linear model: logistic regression for classification (softmax for several
    /// classes), linear regression otherwise.
    Linear,
    /// A multi-layer perceptron.
    Mlp {
        /// Widths of the hidden layers, e.g. `[64, 64]`.
        hidden: Vec<usize>,
        /// The non-linearity after each hidden layer.
        activation: Activation,
        /// Dropout probability after each hidden layer while training, in `[0, 1)`.
        dropout: f64,
    },
}

impl ModelSpec {
    /// An MLP with `hidden` widths, ReLU and no dropout.
    pub fn mlp(hidden: impl Into<Vec<usize>>) -> Self {
        Self::Mlp {
            hidden: hidden.into(),
            activation: Activation::Relu,
            dropout: 0.0,
        }
    }

    /// Checks widths and dropout.
    pub fn validate(&self) -> Result<()> {
        if let Self::Mlp {
            hidden, dropout, ..
        } = self
        {
            if hidden.is_empty() || hidden.contains(&0) {
                return Err(Error::invalid_input(
                    "MLP hidden widths",
                    format!("{hidden:?}: need at least one layer, each at least 1 wide"),
                ));
            }
            if !(0.0..1.0).contains(dropout) {
                return Err(Error::invalid_input(
                    "MLP dropout",
                    format!("{dropout} is outside [0, 1)"),
                ));
            }
        }
        Ok(())
    }

    /// A short name for tracking, e.g. `mlp[64,64]/relu/0.1` or `linear`.
    pub fn describe(&self) -> String {
        match self {
            Self::Linear => "linear".into(),
            Self::Mlp {
                hidden,
                activation,
                dropout,
            } => {
                let widths: Vec<String> = hidden.iter().map(ToString::to_string).collect();
                format!("mlp[{}]/{activation}/{dropout}", widths.join(","))
            }
        }
    }

    /// Layer widths from input to output.
    pub(crate) fn widths(&self, inputs: usize, outputs: usize) -> Vec<usize> {
        let mut w = vec![inputs];
        if let Self::Mlp { hidden, .. } = self {
            w.extend(hidden);
        }
        w.push(outputs);
        w
    }
}

/// The trainable part: the linear layers.
#[derive(Module, Debug)]
pub(crate) struct Layers {
    pub(crate) linears: Vec<Linear>,
}

/// A network: its layers and how they are joined.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    pub(crate) layers: Layers,
    pub(crate) activation: Activation,
    pub(crate) dropout: f64,
}

fn linear_from(
    weight: Vec<f32>,
    bias: Vec<f32>,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Linear {
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [d_in, d_out]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [d_out]),
            device,
        ))),
    }
}

impl Net {
    /// A freshly initialized network, as PyTorch initializes `nn.Linear`: weights and
    /// biases uniform in `+-1/sqrt(fan_in)`, drawn from `rng`.
    pub(crate) fn init(
        spec: &ModelSpec,
        inputs: usize,
        outputs: usize,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> Self {
        let widths = spec.widths(inputs, outputs);
        let linears = widths
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                let bound = 1.0 / (d_in as f64).sqrt();
                let mut draw = |n: usize| -> Vec<f32> {
                    (0..n)
                        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                        .collect()
                };
                let weight = draw(d_in * d_out);
                let bias = draw(d_out);
                linear_from(weight, bias, d_in, d_out, device)
            })
            .collect();
        Self::from_layers(spec, Layers { linears })
    }

    fn from_layers(spec: &ModelSpec, layers: Layers) -> Self {
        let (activation, dropout) = match spec {
            ModelSpec::Linear => (Activation::Relu, 0.0),
            ModelSpec::Mlp {
                activation,
                dropout,
                ..
            } => (*activation, *dropout),
        };
        Self {
            layers,
            activation,
            dropout,
        }
    }

    pub(crate) fn with_layers(&self, layers: Layers) -> Self {
        Self {
            layers,
            activation: self.activation,
            dropout: self.dropout,
        }
    }

    fn activate(&self, x: Tensor<2>) -> Tensor<2> {
        match self.activation {
            Activation::Relu => activation::relu(x),
            Activation::Gelu => activation::gelu(x),
            Activation::Silu => activation::silu(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// The raw outputs (logits, or the standardized target for regression). With
    /// `dropout_rng`, hidden units are dropped (inverted dropout) with masks drawn
    /// from it.
    pub(crate) fn forward(
        &self,
        mut x: Tensor<2>,
        mut dropout_rng: Option<&mut SplitMix64>,
    ) -> Tensor<2> {
        let last = self.layers.linears.len().saturating_sub(1);
        for (i, layer) in self.layers.linears.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.activate(x);
                if let Some(rng) = dropout_rng.as_deref_mut()
                    && self.dropout > 0.0
                {
                    let [rows, cols] = x.dims();
                    let keep = 1.0 - self.dropout;
                    let scale = (1.0 / keep) as f32;
                    let mask: Vec<f32> = (0..rows * cols)
                        .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
                        .collect();
                    let mask = Tensor::from_data(TensorData::new(mask, [rows, cols]), &x.device());
                    x = x * mask;
                }
            }
        }
        x
    }

    /// The weights as safetensors bytes: `layers.{i}.weight` as `[out, in]` and
    /// `layers.{i}.bias` as `[out]`, `f32` (PyTorch's `nn.Linear` names and layout).
    pub(crate) fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (i, layer) in self.layers.linears.iter().enumerate() {
            let w = layer.weight.val();
            let [d_in, d_out] = w.dims();
            let w = read_f32(w.transpose())?;
            tensors.push((
                format!("layers.{i}.weight"),
                le_bytes(&w),
                vec![d_out, d_in],
            ));
            let b = match &layer.bias {
                Some(b) => read_f32(b.val())?,
                None => vec![0.0; d_out],
            };
            tensors.push((format!("layers.{i}.bias"), le_bytes(&b), vec![d_out]));
        }
        let views = tensors
            .iter()
            .map(|(name, bytes, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::backend("safetensors", e))?;
        safetensors::serialize(views, None).map_err(|e| Error::backend("safetensors", e))
    }

    /// A network of `spec` with the weights of `bytes` (as [`Net::to_safetensors`]
    /// writes them), on `device`; every shape is checked against the spec.
    pub(crate) fn from_safetensors(
        spec: &ModelSpec,
        inputs: usize,
        outputs: usize,
        bytes: &[u8],
        device: &Device,
    ) -> Result<Self> {
        let bad = |reason: String| Error::integrity("model weights", reason);
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not readable as safetensors: {e}")))?;
        let widths = spec.widths(inputs, outputs);
        let mut by_name: HashMap<String, Vec<f32>> = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            by_name.insert(name, values);
        }
        if by_name.len() != 2 * (widths.len() - 1) {
            return Err(bad(format!(
                "{} tensors where the model has {} layers",
                by_name.len(),
                widths.len() - 1
            )));
        }
        let mut linears = Vec::with_capacity(widths.len() - 1);
        for (i, w) in widths.windows(2).enumerate() {
            let (d_in, d_out) = (w[0], w[1]);
            let mut take = |name: String, len: usize| {
                let v = by_name
                    .remove(&name)
                    .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
                if v.len() != len {
                    return Err(bad(format!(
                        "tensor {name} has {} values, expected {len}",
                        v.len()
                    )));
                }
                Ok(v)
            };
            let weight_out_in = take(format!("layers.{i}.weight"), d_in * d_out)?;
            let bias = take(format!("layers.{i}.bias"), d_out)?;
            // Back from PyTorch's [out, in] to burn's [in, out].
            let mut weight = vec![0.0f32; d_in * d_out];
            for o in 0..d_out {
                for j in 0..d_in {
                    weight[j * d_out + o] = weight_out_in[o * d_in + j];
                }
            }
            linears.push(linear_from(weight, bias, d_in, d_out, device));
        }
        Ok(Self::from_layers(spec, Layers { linears }))
    }
}

/// The values of a tensor as `f32`.
pub(crate) fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::backend("burn", format!("reading a tensor: {e:?}")))
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The network's forward pass as plain loops over host copies of its weights: for
/// a few rows, burn's per-operation dispatch costs more than the arithmetic, and
/// this answers a one-row request in about a microsecond. Results agree with the
/// burn forward pass to float rounding (summation order differs).
#[derive(Debug, Clone)]
pub(crate) struct SmallKernel {
    /// Per layer: weights `[in, out]` row-major, bias `[out]`, sizes.
    layers: Vec<(Vec<f32>, Vec<f32>, usize, usize)>,
    activation: Activation,
}

impl SmallKernel {
    /// A kernel for `net`; `None` for activations without a plain-Rust form here
    /// (GELU needs `erf`).
    pub(crate) fn from_net(net: &Net) -> Result<Option<Self>> {
        if net.activation == Activation::Gelu && net.layers.linears.len() > 1 {
            return Ok(None);
        }
        let mut layers = Vec::new();
        for layer in &net.layers.linears {
            let w = layer.weight.val();
            let [d_in, d_out] = w.dims();
            let weights = read_f32(w)?;
            let bias = match &layer.bias {
                Some(b) => read_f32(b.val())?,
                None => vec![0.0; d_out],
            };
            layers.push((weights, bias, d_in, d_out));
        }
        Ok(Some(Self {
            layers,
            activation: net.activation,
        }))
    }

    /// Raw outputs of `rows` rows of the row-major `x`.
    pub(crate) fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        if self.layers.is_empty() {
            return x.to_vec();
        }
        let last = self.layers.len() - 1;
        let mut current: Vec<f32> = Vec::new();
        for (i, (w, b, d_in, d_out)) in self.layers.iter().enumerate() {
            let input = if i == 0 { x } else { &current[..] };
            let mut next = Vec::with_capacity(rows * d_out);
            for r in 0..rows {
                let row = &input[r * d_in..(r + 1) * d_in];
                let start = next.len();
                next.extend_from_slice(b);
                let acc = &mut next[start..];
                for (k, &xk) in row.iter().enumerate() {
                    if xk != 0.0 {
                        let wk = &w[k * d_out..(k + 1) * d_out];
                        for (a, &wv) in acc.iter_mut().zip(wk) {
                            *a += xk * wv;
                        }
                    }
                }
                if i < last {
                    for a in acc.iter_mut() {
                        *a = match self.activation {
                            Activation::Relu => a.max(0.0),
                            Activation::Tanh => a.tanh(),
                            Activation::Silu => *a / (1.0 + (-*a).exp()),
                            // Excluded in `from_net`.
                            Activation::Gelu => *a,
                        };
                    }
                }
            }
            current = next;
        }
        current
    }
}
