//! Serves the benchmark MLP with furnace-server: weights from the safetensors file
//! `benches/serve_compare.rs` exports, with the input standardization folded into the
//! first layer, so the model takes the same raw feature values (as one FP32 input of
//! shape [batch, 20]) and answers the same probability.
//!
//! ```text
//! cargo run --release --manifest-path benches/furnace/Cargo.toml -- EXPORT_DIR PORT
//! ```

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData, activation};
use furnace::{BackendKind, Model, Server};

#[derive(Module, Debug)]
struct Net {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl Net {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = activation::relu(self.l1.forward(x));
        let h = activation::relu(self.l2.forward(h));
        activation::sigmoid(self.l3.forward(h))
    }
}

/// A layer from PyTorch-layout `[out, in]` weights.
fn linear(w_out_in: &[f32], bias: Vec<f32>, d_in: usize, d_out: usize, device: &Device) -> Linear {
    let mut w = vec![0.0f32; d_in * d_out];
    for o in 0..d_out {
        for i in 0..d_in {
            w[i * d_out + o] = w_out_in[o * d_in + i];
        }
    }
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(bias, [d_out]), device))),
    }
}

fn floats(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f32> {
    let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::main]
async fn main() -> furnace::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (export, port) = (&args[1], args[2].parse::<u16>().unwrap_or(3000));
    let bytes = std::fs::read(format!("{export}/weights.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let scaling: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{export}/scaling.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let scaling = scaling.as_array().unwrap_or_else(|| panic!("scaling"));
    let mean: Vec<f32> = scaling.iter().map(|s| s["mean"].as_f64().unwrap_or(0.0) as f32).collect();
    let std: Vec<f32> = scaling.iter().map(|s| s["std"].as_f64().unwrap_or(1.0) as f32).collect();
    // (x - mean) / std folded into layer 1: W' = W / std, b' = b - W' . mean.
    let (d0, d1) = (20, 64);
    let mut w1 = floats(&st, "layers.0.weight");
    let mut b1 = floats(&st, "layers.0.bias");
    for o in 0..d1 {
        for i in 0..d0 {
            w1[o * d0 + i] /= std[i];
            b1[o] -= w1[o * d0 + i] * mean[i];
        }
    }
    let device = BackendKind::Cpu.device();
    let net = Net {
        l1: linear(&w1, b1, d0, d1, &device),
        l2: linear(&floats(&st, "layers.1.weight"), floats(&st, "layers.1.bias"), 64, 64, &device),
        l3: linear(&floats(&st, "layers.2.weight"), floats(&st, "layers.2.bias"), 64, 1, &device),
    };
    let model = Model::from_fn("fraud", BackendKind::Cpu, &[20], &[1], move |x: Tensor<2>| net.forward(x))?;
    Server::new().port(port).model(model).serve().await
}
