//! Synthetic tabular data with known signal.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};

/// A tiny deterministic generator for test data.
pub(crate) struct Gen(u64);

impl Gen {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(crate) fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Binary data: `amount` (with nulls), `age` (integers), `country` (string),
/// `noise`, label `is_fraud` (bool), with a positive rate of about `rate`.
pub(crate) fn binary(n: usize, seed: u64) -> RecordBatch {
    let mut g = Gen::new(seed);
    let countries = ["fr", "de", "us", "br"];
    let (mut amount, mut age, mut country, mut noise, mut label) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let a = g.normal();
        let b = (g.uniform() * 60.0 + 18.0).floor();
        let c = countries[(g.uniform() * 4.0) as usize % 4];
        let logit =
            2.0 * a - 0.05 * (b - 48.0) + if c == "br" { 1.5 } else { -0.5 } + 0.5 * g.normal();
        amount.push(if i % 17 == 0 {
            None
        } else {
            Some(a * 100.0 + 300.0)
        });
        age.push(b as i64);
        country.push(c);
        noise.push(g.normal());
        label.push(logit > 0.0);
    }
    RecordBatch::try_from_iter([
        ("amount", Arc::new(Float64Array::from(amount)) as ArrayRef),
        ("age", Arc::new(Int64Array::from(age)) as ArrayRef),
        ("country", Arc::new(StringArray::from(country)) as ArrayRef),
        ("noise", Arc::new(Float64Array::from(noise)) as ArrayRef),
        ("is_fraud", Arc::new(BooleanArray::from(label)) as ArrayRef),
    ])
    .unwrap()
}

/// Three well-separated classes named by strings.
pub(crate) fn multiclass(n: usize, seed: u64) -> RecordBatch {
    let mut g = Gen::new(seed);
    let names = ["setosa", "versicolor", "virginica"];
    let (mut x1, mut x2, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let c = (g.uniform() * 3.0) as usize % 3;
        x1.push(c as f64 * 2.0 + 0.5 * g.normal());
        x2.push(-(c as f64) + 0.5 * g.normal());
        y.push(names[c]);
    }
    RecordBatch::try_from_iter([
        ("x1", Arc::new(Float64Array::from(x1)) as ArrayRef),
        ("x2", Arc::new(Float64Array::from(x2)) as ArrayRef),
        ("species", Arc::new(StringArray::from(y)) as ArrayRef),
    ])
    .unwrap()
}

/// `y = 3 x + 10 z - 2 + noise`, with a categorical offset.
pub(crate) fn regression(n: usize, seed: u64) -> RecordBatch {
    let mut g = Gen::new(seed);
    let (mut x, mut z, mut c, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (a, b) = (g.normal(), g.uniform());
        let cat = if g.uniform() < 0.5 { "a" } else { "b" };
        x.push(a);
        z.push(b);
        c.push(cat);
        y.push(3.0 * a + 10.0 * b - 2.0 + if cat == "a" { 5.0 } else { 0.0 } + 0.1 * g.normal());
    }
    RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
        ("z", Arc::new(Float64Array::from(z)) as ArrayRef),
        ("c", Arc::new(StringArray::from(c)) as ArrayRef),
        ("y", Arc::new(Float64Array::from(y)) as ArrayRef),
    ])
    .unwrap()
}
