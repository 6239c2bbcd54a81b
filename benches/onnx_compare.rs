//! The Rust half of `benches/onnx_vs_onnxruntime.py`: times the exported models
//! of `mlops-onnx/tests/fixtures` through the ONNX loader (tract with this
//! SDK's ONNX-ML operators) and prints one JSON line per model and batch size.
//!
//! Run through the script (it times onnxruntime's Python API on the same files
//! and inputs in the same run):
//!
//! ```text
//! python3 benches/onnx_vs_onnxruntime.py
//! ```
//!
//! or alone: `cargo bench --features onnx --bench onnx_compare`.

use std::time::Instant;

use mlops::core::inference::{Tensor, TensorData};
use mlops::core::{ModelArtifact, ModelLoader};
use mlops::onnx::OnnxLoader;
use mlops_onnx::testkit::{MODELS, model_bytes, probe_inputs};

/// `t` with its rows repeated (cycled) to `rows` rows.
fn tile(t: &Tensor, rows: usize) -> Tensor {
    let width: usize = t.shape.iter().skip(1).product();
    let have = t.rows();
    let pick = |i: usize| (i % have) * width;
    macro_rules! cycle {
        ($v:expr, $variant:ident) => {
            TensorData::$variant(
                (0..rows)
                    .flat_map(|r| $v[pick(r)..pick(r) + width].iter().cloned())
                    .collect(),
            )
        };
    }
    let data = match &t.data {
        TensorData::Fp32(v) => cycle!(v, Fp32),
        TensorData::Bytes(v) => cycle!(v, Bytes),
        TensorData::Int64(v) => cycle!(v, Int64),
        other => panic!("no tiling for {:?}", other.datatype()),
    };
    let mut shape: Vec<usize> = t.shape.to_vec();
    shape[0] = rows;
    Tensor::new(t.name.clone(), shape, data).unwrap_or_else(|e| panic!("{e}"))
}

/// The median of `n` timed calls of `f`, in seconds, after `n / 10` warm-ups.
fn median(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for name in MODELS {
        if !filter.is_empty() && !filter.iter().any(|f| f == name) {
            continue;
        }
        let artifact =
            ModelArtifact::new("onnx", model_bytes(name).unwrap_or_else(|e| panic!("{e}")));
        let model = OnnxLoader
            .load(&artifact)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let probe = probe_inputs(name).unwrap_or_else(|e| panic!("{e}"));
        for (rows, calls) in [(1usize, 2000usize), (1024, 200)] {
            let inputs: Vec<Tensor> = probe.iter().map(|t| tile(t, rows)).collect();
            let seconds = median(calls, || {
                let out = model
                    .predict(&inputs)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                std::hint::black_box(out);
            });
            println!(
                "{}",
                serde_json::json!({
                    "model": name,
                    "rows": rows,
                    "median_us": seconds * 1e6,
                    "rows_per_s": rows as f64 / seconds,
                })
            );
        }
    }
}
