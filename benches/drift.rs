//! Criterion benchmarks of the drift statistics, at the sizes the README reports.
//!
//! ```text
//! cargo bench --bench drift
//! ```
//!
//! The side-by-side comparison with scipy on identical data is
//! `python3 benches/drift_vs_scipy.py`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use criterion::{Criterion, criterion_group, criterion_main};
use mlops::core::drift::{
    DriftDetector, TableDriftConfig, TableDriftDetector, chi_squared, ks_2samp, psi_numeric,
    wasserstein,
};

/// Roughly normal values (a sum of four uniforms), deterministic.
fn normal(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    let mut state = seed;
    let mut uniform = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * 2f64.powi(-53)
    };
    (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform() - 2.0) * 1.7 + shift)
        .collect()
}

fn table(rows: usize, seed: u64, shift: f64) -> RecordBatch {
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for j in 0..15 {
        let v = normal(rows, seed + j, if j % 5 == 0 { shift } else { 0.0 });
        columns.push((format!("num{j}"), Arc::new(Float64Array::from(v))));
    }
    for j in 0..5u64 {
        let k = 10 + 20 * j as usize;
        let v = normal(rows, seed + 100 + j, 0.0);
        let s = StringArray::from_iter_values(
            v.iter()
                .map(|x| format!("cat{}", ((x.abs() * 7.0) as usize) % k)),
        );
        columns.push((format!("cat{j}"), Arc::new(s)));
    }
    RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("{e}"))
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("drift");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let (a, b) = (normal(1_000_000, 1, 0.0), normal(1_000_000, 2, 0.002));
    g.bench_function("ks_2samp 1M x 1M", |bench| {
        bench.iter(|| ks_2samp(black_box(&a), black_box(&b)))
    });
    g.bench_function("wasserstein 1M x 1M", |bench| {
        bench.iter(|| wasserstein(black_box(&a), black_box(&b)))
    });
    g.bench_function("psi 1M x 1M", |bench| {
        bench.iter(|| psi_numeric(black_box(&a), black_box(&b)))
    });
    let codes = |seed| -> Vec<usize> {
        normal(1_000_000, seed, 0.0)
            .iter()
            .map(|x| ((x.abs() * 13.0) as usize) % 50)
            .collect()
    };
    let (cr, cc) = (codes(3), codes(4));
    g.bench_function("chi2 1M rows 50 categories", |bench| {
        bench.iter(|| {
            let count = |v: &[usize]| {
                let mut counts = vec![0u64; 50];
                v.iter().for_each(|&c| counts[c] += 1);
                counts
            };
            chi_squared(&count(black_box(&cr)), &count(black_box(&cc)))
        })
    });
    let (reference, current) = (table(100_000, 10, 0.0), table(100_000, 20, 0.3));
    let config = TableDriftConfig::default();
    g.bench_function("table fit+detect 100k x 20", |bench| {
        bench.iter(|| {
            TableDriftDetector::fit(black_box(&reference), &config)
                .and_then(|d| d.detect(black_box(&current)))
        })
    });
    let d = TableDriftDetector::fit(&reference, &config).unwrap_or_else(|e| panic!("{e}"));
    g.bench_function("table detect 100k x 20 (prefitted)", |bench| {
        bench.iter(|| d.detect(black_box(&current)))
    });
    g.finish();
}

criterion_group!(drift, benches);
criterion_main!(drift);
