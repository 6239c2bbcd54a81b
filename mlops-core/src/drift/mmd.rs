//! Multivariate drift: maximum mean discrepancy with an RBF kernel and a
//! permutation p-value, on bounded subsamples, like alibi-detect's `MMDDrift`.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::{DriftDetector, DriftMethod, DriftReport, FeatureDrift, OverallDrift, OverallRule};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// How an MMD test runs.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MmdConfig {
    /// Each sample is subsampled (deterministically) to at most this many rows;
    /// the cost is quadratic in it. Default 500.
    pub max_samples: usize,
    /// Permutations for the p-value. Default 100 (alibi-detect's default).
    pub permutations: usize,
    /// Seed of subsampling and permutations.
    pub seed: u64,
    /// Significance level of the verdict. Default 0.05.
    pub p_value_threshold: f64,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self {
            max_samples: 500,
            permutations: 100,
            seed: 0,
            p_value_threshold: 0.05,
        }
    }
}

/// The result of an MMD test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MmdResult {
    /// The unbiased estimate of MMD^2.
    pub statistic: f64,
    /// The share of permutations whose MMD^2 is at least the observed one.
    pub p_value: f64,
    /// The kernel bandwidth (median heuristic).
    pub sigma: f64,
    /// Reference rows used.
    pub reference_rows: usize,
    /// Current rows used.
    pub current_rows: usize,
}

/// Tests whether `reference` and `current` (rows are observations, columns
/// features) come from the same distribution: unbiased MMD^2 with the Gaussian
/// kernel `exp(-|x - y|^2 / (2 sigma^2))`, `sigma` by the median heuristic
/// (`sqrt(median(|x - y|^2) / 2)` over pooled pairs, 1 if that is 0), and a
/// permutation p-value, as alibi-detect's `MMDDrift` does.
///
/// Both samples need at least 2 rows, the same columns, and finite values.
///
/// ```
/// use ndarray::Array2;
/// use mlops_core::drift::{mmd_test, MmdConfig};
/// let a = Array2::from_shape_fn((100, 2), |(i, j)| ((i * 7 + j * 3) % 17) as f64);
/// let b = a.mapv(|v| v + 8.0);
/// assert!(mmd_test(a.view(), a.view(), &MmdConfig::default())?.p_value > 0.05);
/// assert!(mmd_test(a.view(), b.view(), &MmdConfig::default())?.p_value < 0.05);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn mmd_test(
    reference: ArrayView2<'_, f64>,
    current: ArrayView2<'_, f64>,
    config: &MmdConfig,
) -> Result<MmdResult> {
    check_config(config)?;
    for (name, m) in [
        ("reference sample", &reference),
        ("current sample", &current),
    ] {
        if m.nrows() < 2 {
            return Err(Error::invalid_input(
                name,
                format!("{} rows; MMD needs at least 2", m.nrows()),
            ));
        }
        if m.ncols() == 0 {
            return Err(Error::invalid_input(name, "it has no columns"));
        }
        if let Some(((r, c), v)) = m.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::invalid_input(
                name,
                format!("value at row {r}, column {c} is {v}"),
            ));
        }
    }
    if reference.ncols() != current.ncols() {
        return Err(Error::invalid_input(
            "current sample",
            format!(
                "{} columns where the reference has {}",
                current.ncols(),
                reference.ncols()
            ),
        ));
    }
    let mut rng = SplitMix64::new(config.seed);
    let x = subsample(reference, config.max_samples, &mut rng);
    let y = subsample(current, config.max_samples, &mut rng);
    Ok(mmd_on(&x, &y, config, &mut rng))
}

fn check_config(config: &MmdConfig) -> Result<()> {
    if config.max_samples < 2 || config.permutations == 0 {
        return Err(Error::invalid_input(
            "MMD configuration",
            "max_samples must be at least 2 and permutations at least 1",
        ));
    }
    if !(config.p_value_threshold > 0.0 && config.p_value_threshold < 1.0) {
        return Err(Error::invalid_input(
            "MMD configuration",
            format!(
                "p_value_threshold {} must be in (0, 1)",
                config.p_value_threshold
            ),
        ));
    }
    Ok(())
}

fn subsample(m: ArrayView2<'_, f64>, cap: usize, rng: &mut SplitMix64) -> Array2<f64> {
    let n = m.nrows();
    if n <= cap {
        return m.to_owned();
    }
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..cap {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(cap);
    idx.sort_unstable();
    m.select(Axis(0), &idx)
}

fn mmd_on(x: &Array2<f64>, y: &Array2<f64>, config: &MmdConfig, rng: &mut SplitMix64) -> MmdResult {
    let (n, m) = (x.nrows(), y.nrows());
    let total = n + m;
    let dims = x.ncols();
    let pooled: Vec<f64> = x.iter().chain(y.iter()).copied().collect();
    let z: Vec<&[f64]> = pooled.chunks(dims.max(1)).collect();
    let mut d2 = vec![0.0f64; total * total];
    let mut off_diagonal = Vec::with_capacity(total * (total - 1) / 2);
    for i in 0..total {
        for j in (i + 1)..total {
            let d: f64 = z[i].iter().zip(z[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            d2[i * total + j] = d;
            d2[j * total + i] = d;
            off_diagonal.push(d);
        }
    }
    let mid = off_diagonal.len() / 2;
    let median = if off_diagonal.is_empty() {
        0.0
    } else {
        *off_diagonal.select_nth_unstable_by(mid, f64::total_cmp).1
    };
    let sigma = if median > 0.0 {
        (median / 2.0).sqrt()
    } else {
        1.0
    };
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let k: Vec<f64> = d2.iter().map(|d| (-gamma * d).exp()).collect();

    let statistic_for = |in_x: &[bool]| -> f64 {
        let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
        for i in 0..total {
            let row = &k[i * total..(i + 1) * total];
            for j in 0..total {
                if i == j {
                    continue;
                }
                match (in_x[i], in_x[j]) {
                    (true, true) => sxx += row[j],
                    (false, false) => syy += row[j],
                    _ => sxy += row[j],
                }
            }
        }
        let (nf, mf) = (n as f64, m as f64);
        sxx / (nf * (nf - 1.0)) + syy / (mf * (mf - 1.0)) - sxy / (nf * mf)
    };
    let mut membership: Vec<bool> = (0..total).map(|i| i < n).collect();
    let statistic = statistic_for(&membership);
    let mut at_least = 0usize;
    for _ in 0..config.permutations {
        for i in (1..total).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            membership.swap(i, j);
        }
        if statistic_for(&membership) >= statistic {
            at_least += 1;
        }
    }
    MmdResult {
        statistic,
        p_value: at_least as f64 / config.permutations as f64,
        sigma,
        reference_rows: n,
        current_rows: m,
    }
}

/// A multivariate detector over numeric columns: MMD between a reference and
/// current rows, standardized with the reference's mean and standard deviation per
/// column (so no feature dominates the kernel by its units).
///
/// Rows with a null, NaN or infinite value in any compared column are left out and
/// counted. Its report has one entry, named after the columns joined by `+`.
#[derive(Debug, Clone)]
pub struct MmdDriftDetector {
    columns: Vec<String>,
    means: Vec<f64>,
    scales: Vec<f64>,
    reference: Array2<f64>,
    reference_rows: usize,
    config: MmdConfig,
}

impl MmdDriftDetector {
    /// Fits on the numeric `columns` of `reference` (all numeric columns if `None`).
    pub fn fit(
        reference: &RecordBatch,
        columns: Option<&[String]>,
        config: MmdConfig,
    ) -> Result<Self> {
        check_config(&config)?;
        let schema = reference.schema();
        let columns: Vec<String> = match columns {
            Some(c) => c.to_vec(),
            None => schema
                .fields()
                .iter()
                .filter(|f| f.data_type().is_numeric())
                .map(|f| f.name().clone())
                .collect(),
        };
        if columns.is_empty() {
            return Err(Error::invalid_input(
                "MMD reference",
                "no numeric column to compare",
            ));
        }
        let (matrix, _, _) = numeric_matrix(reference, &columns, "MMD reference")?;
        if matrix.nrows() < 2 {
            return Err(Error::invalid_input(
                "MMD reference",
                format!("{} complete rows; at least 2 are needed", matrix.nrows()),
            ));
        }
        let means: Vec<f64> = matrix
            .mean_axis(Axis(0))
            .map_or_else(Vec::new, |m| m.to_vec());
        let scales: Vec<f64> = matrix
            .std_axis(Axis(0), 0.0)
            .iter()
            .map(|&s| if s > 0.0 { s } else { 1.0 })
            .collect();
        let mut rng = SplitMix64::new(config.seed ^ 0x5851_F42D_4C95_7F2D);
        let standardized = standardize(matrix.view(), &means, &scales);
        let kept = subsample(standardized.view(), config.max_samples, &mut rng);
        Ok(Self {
            columns,
            means,
            scales,
            reference_rows: matrix.nrows(),
            reference: kept,
            config,
        })
    }

    /// Runs the test on `current`.
    pub fn test(&self, current: &RecordBatch) -> Result<(MmdResult, usize, usize)> {
        let (matrix, nulls, non_finite) =
            numeric_matrix(current, &self.columns, "MMD current sample")?;
        let standardized = standardize(matrix.view(), &self.means, &self.scales);
        let mut rng = SplitMix64::new(self.config.seed);
        if standardized.nrows() < 2 {
            return Err(Error::invalid_input(
                "MMD current sample",
                format!(
                    "{} complete rows; at least 2 are needed",
                    standardized.nrows()
                ),
            ));
        }
        let y = subsample(standardized.view(), self.config.max_samples, &mut rng);
        Ok((
            mmd_on(&self.reference, &y, &self.config, &mut rng),
            nulls,
            non_finite,
        ))
    }
}

fn standardize(m: ArrayView2<'_, f64>, means: &[f64], scales: &[f64]) -> Array2<f64> {
    let mut out = m.to_owned();
    for mut row in out.rows_mut() {
        for ((v, mean), scale) in row.iter_mut().zip(means).zip(scales) {
            *v = (*v - mean) / scale;
        }
    }
    out
}

/// The complete rows of `columns` as a matrix, with counts of rows dropped for a
/// null and for a NaN/infinite value.
fn numeric_matrix(
    batch: &RecordBatch,
    columns: &[String],
    what: &str,
) -> Result<(Array2<f64>, usize, usize)> {
    let mut cols: Vec<Vec<Option<f64>>> = Vec::with_capacity(columns.len());
    for name in columns {
        let array = batch.column_by_name(name).ok_or_else(|| {
            Error::schema_mismatch(what, name, "a numeric column", "no such column")
        })?;
        if !array.data_type().is_numeric() {
            return Err(Error::schema_mismatch(
                what,
                name,
                "a numeric column",
                array.data_type().to_string(),
            ));
        }
        let cast = to_f64(array.as_ref()).ok_or_else(|| {
            Error::schema_mismatch(
                what,
                name,
                "an integer or float column",
                array.data_type().to_string(),
            )
        })?;
        cols.push(cast);
    }
    let rows = batch.num_rows();
    let (mut nulls, mut non_finite) = (0usize, 0usize);
    let mut data = Vec::with_capacity(rows * columns.len());
    let mut kept = 0usize;
    'rows: for r in 0..rows {
        for c in &cols {
            match c[r] {
                None => {
                    nulls += 1;
                    continue 'rows;
                }
                Some(v) if !v.is_finite() => {
                    non_finite += 1;
                    continue 'rows;
                }
                Some(_) => {}
            }
        }
        data.extend(cols.iter().map(|c| c[r].unwrap_or(0.0)));
        kept += 1;
    }
    let matrix = Array2::from_shape_vec((kept, columns.len()), data)
        .map_err(|e| Error::invalid_input(what, e.to_string()))?;
    Ok((matrix, nulls, non_finite))
}

fn to_f64(a: &dyn Array) -> Option<Vec<Option<f64>>> {
    use arrow_array::types::*;
    macro_rules! conv {
        ($t:ty) => {
            a.as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|x| x as f64))
                .collect()
        };
    }
    Some(match a.data_type() {
        DataType::Int8 => conv!(Int8Type),
        DataType::Int16 => conv!(Int16Type),
        DataType::Int32 => conv!(Int32Type),
        DataType::Int64 => conv!(Int64Type),
        DataType::UInt8 => conv!(UInt8Type),
        DataType::UInt16 => conv!(UInt16Type),
        DataType::UInt32 => conv!(UInt32Type),
        DataType::UInt64 => conv!(UInt64Type),
        DataType::Float32 => conv!(Float32Type),
        DataType::Float64 => a.as_primitive::<Float64Type>().iter().collect(),
        _ => return None,
    })
}

impl DriftDetector for MmdDriftDetector {
    fn features(&self) -> Vec<String> {
        self.columns.clone()
    }

    fn detect(&self, current: &RecordBatch) -> Result<DriftReport> {
        let (r, nulls, non_finite) = self.test(current)?;
        let drifted = r.p_value < self.config.p_value_threshold;
        Ok(DriftReport {
            features: vec![FeatureDrift {
                feature: self.columns.join("+"),
                method: DriftMethod::MaximumMeanDiscrepancy,
                statistic: r.statistic,
                p_value: Some(r.p_value),
                threshold: self.config.p_value_threshold,
                drifted,
                reference_count: self.reference_rows,
                current_count: current.num_rows() - nulls - non_finite,
                current_nulls: nulls,
                current_non_finite: non_finite,
                note: None,
            }],
            overall: OverallDrift {
                rule: OverallRule::ShareOfDrifted { share: 1.0 },
                drifted,
                drifted_features: usize::from(drifted),
                share_drifted: if drifted { 1.0 } else { 0.0 },
            },
            reference_rows: self.reference_rows,
            current_rows: current.num_rows(),
        })
    }
}
