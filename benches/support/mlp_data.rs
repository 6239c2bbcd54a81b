//! The serving benchmarks' training data (benches/serve_compare.rs,
//! benches/grpc_compare.rs): 20 uniform FP32 features in [-1, 1) from a fixed
//! LCG, and a label with an interaction the MLP can learn.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, RecordBatch};

/// `n` rows of `x0..x19` and `label`.
pub(crate) fn data(n: usize) -> RecordBatch {
    let mut state = 7u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    };
    let mut cols: Vec<(String, ArrayRef)> = Vec::new();
    let xs: Vec<Vec<f32>> = (0..20)
        .map(|_| (0..n).map(|_| uniform()).collect())
        .collect();
    let label: Vec<i64> = (0..n)
        .map(|i| i64::from(xs[0][i] + 0.5 * xs[1][i] * xs[2][i] > 0.1))
        .collect();
    for (f, x) in xs.into_iter().enumerate() {
        cols.push((format!("x{f}"), Arc::new(Float32Array::from(x))));
    }
    cols.push(("label".into(), Arc::new(Int64Array::from(label))));
    RecordBatch::try_from_iter(cols).unwrap_or_else(|e| panic!("{e}"))
}
