//! Univariate drift statistics: chi-squared, Jensen-Shannon, Wasserstein, PSI.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::sort::sorted_pair;
use super::{check_sample, sorted_copy};
use crate::error::{Error, Result};

/// The result of a chi-squared test of homogeneity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChiSquaredResult {
    /// Pearson's chi-squared statistic.
    pub statistic: f64,
    /// Its p-value.
    pub p_value: f64,
    /// Degrees of freedom: categories observed minus one.
    pub dof: usize,
}

/// The chi-squared test on a 2 x k contingency table of category counts (the
/// reference's and the current's, aligned by category), matching
/// `scipy.stats.chi2_contingency([reference, current])`, Yates' continuity
/// correction included when there is one degree of freedom.
///
/// Unlike scipy, a category absent from both samples is dropped instead of being an
/// error, and a single observed category gives statistic 0 and p-value 1. Empty
/// samples and misaligned counts are [`Error::InvalidInput`].
///
/// ```
/// use mlops_core::drift::chi_squared;
/// let r = chi_squared(&[120, 80, 40], &[100, 90, 50])?;
/// assert_eq!(r.dof, 2);
/// assert!(r.p_value > 0.05);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn chi_squared(reference: &[u64], current: &[u64]) -> Result<ChiSquaredResult> {
    if reference.len() != current.len() {
        return Err(Error::invalid_input(
            "category counts",
            format!(
                "the reference has {} categories and the current {}; counts must be aligned by category",
                reference.len(),
                current.len()
            ),
        ));
    }
    let (kept_ref, kept_cur): (Vec<f64>, Vec<f64>) = reference
        .iter()
        .zip(current)
        .filter(|(r, c)| **r + **c > 0)
        .map(|(&r, &c)| (r as f64, c as f64))
        .unzip();
    let ref_total: f64 = kept_ref.iter().sum();
    let cur_total: f64 = kept_cur.iter().sum();
    if ref_total == 0.0 {
        return Err(Error::invalid_input(
            "reference sample",
            "it has no observations",
        ));
    }
    if cur_total == 0.0 {
        return Err(Error::invalid_input(
            "current sample",
            "it has no observations",
        ));
    }
    let k = kept_ref.len();
    let dof = k - 1;
    if dof == 0 {
        return Ok(ChiSquaredResult {
            statistic: 0.0,
            p_value: 1.0,
            dof,
        });
    }
    let total = ref_total + cur_total;
    let mut statistic = 0.0;
    for (row, row_total) in [(&kept_ref, ref_total), (&kept_cur, cur_total)] {
        for (c, &observed) in row.iter().enumerate() {
            let col_total = kept_ref[c] + kept_cur[c];
            let expected = row_total * col_total / total;
            let mut observed = observed;
            if dof == 1 {
                // Yates: move each observation up to 0.5 towards its expectation.
                let diff = expected - observed;
                observed += diff.abs().min(0.5) * diff.signum();
            }
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    Ok(ChiSquaredResult {
        statistic,
        p_value: chi2_sf(statistic, dof as f64),
        dof,
    })
}

pub(crate) fn chi2_sf(statistic: f64, dof: f64) -> f64 {
    match ChiSquared::new(dof) {
        Ok(d) => d.sf(statistic).clamp(0.0, 1.0),
        Err(_) => f64::NAN,
    }
}

/// The Jensen-Shannon distance (base 2, in [0, 1]) between two distributions given
/// as non-negative weights over the same categories or bins (counts are fine; each
/// side is normalized), matching `scipy.spatial.distance.jensenshannon(p, q, base=2)`.
///
/// Negative, NaN or infinite weights, an all-zero side and misaligned lengths are
/// [`Error::InvalidInput`]. Rounding never yields NaN: the divergence is clamped at 0.
///
/// ```
/// use mlops_core::drift::jensen_shannon;
/// assert_eq!(jensen_shannon(&[1.0, 0.0], &[0.0, 1.0])?, 1.0);
/// assert_eq!(jensen_shannon(&[1.0, 2.0], &[2.0, 4.0])?, 0.0);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> Result<f64> {
    if p.len() != q.len() {
        return Err(Error::invalid_input(
            "distributions",
            format!(
                "lengths differ ({} and {}); they must cover the same categories",
                p.len(),
                q.len()
            ),
        ));
    }
    let total = |name: &str, w: &[f64]| -> Result<f64> {
        if let Some((i, v)) = w
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(Error::invalid_input(
                name,
                format!("weight {i} is {v}; weights must be finite and non-negative"),
            ));
        }
        let s: f64 = w.iter().sum();
        if s <= 0.0 {
            return Err(Error::invalid_input(name, "all weights are zero"));
        }
        Ok(s)
    };
    let (sp, sq) = (
        total("reference distribution", p)?,
        total("current distribution", q)?,
    );
    let mut js = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        js += rel_entr(a, m) + rel_entr(b, m);
    }
    js /= std::f64::consts::LN_2;
    Ok((js / 2.0).max(0.0).sqrt())
}

fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The Wasserstein-1 (earth mover's) distance between two samples, matching
/// `scipy.stats.wasserstein_distance(reference, current)`.
///
/// ```
/// use mlops_core::drift::wasserstein;
/// assert_eq!(wasserstein(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0])?, 5.0);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn wasserstein(reference: &[f64], current: &[f64]) -> Result<f64> {
    check_sample("reference sample", reference)?;
    check_sample("current sample", current)?;
    let (a, b) = sorted_pair(reference, current);
    Ok(wasserstein_sorted(&a, &b))
}

/// [`wasserstein`] divided by the reference's (population) standard deviation, the
/// scale-free form Evidently uses for large numeric columns. A constant reference
/// has no scale: [`Error::InvalidInput`].
pub fn wasserstein_normed(reference: &[f64], current: &[f64]) -> Result<f64> {
    check_sample("reference sample", reference)?;
    let std = std_dev(reference);
    if std == 0.0 {
        return Err(Error::invalid_input(
            "reference sample",
            "it is constant, so the normed Wasserstein distance is undefined; use the raw distance",
        ));
    }
    Ok(wasserstein(reference, current)? / std)
}

/// `integral |F_u - F_v|` by one merge of two sorted samples, with compensated
/// summation.
pub(crate) fn wasserstein_sorted(u: &[f64], v: &[f64]) -> f64 {
    let (nu, nv) = (u.len() as f64, v.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut sum = NeumaierSum::default();
    let next = |i: usize, j: usize| match (u.get(i), v.get(j)) {
        (Some(&x), Some(&y)) => Some(x.min(y)),
        (Some(&x), None) => Some(x),
        (None, Some(&y)) => Some(y),
        (None, None) => None,
    };
    let mut current = next(i, j);
    while let Some(x) = current {
        while i < u.len() && u[i] <= x {
            i += 1;
        }
        while j < v.len() && v[j] <= x {
            j += 1;
        }
        current = next(i, j);
        if let Some(y) = current {
            sum.add((i as f64 / nu - j as f64 / nv).abs() * (y - x));
        }
    }
    sum.value()
}

/// Population standard deviation (ddof 0), two-pass.
pub(crate) fn std_dev(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mut s = NeumaierSum::default();
    values.iter().for_each(|&x| s.add(x));
    let mean = s.value() / n;
    let mut ss = NeumaierSum::default();
    values.iter().for_each(|&x| ss.add((x - mean) * (x - mean)));
    (ss.value() / n).sqrt()
}

/// Kahan-Babuska-Neumaier summation.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NeumaierSum {
    sum: f64,
    compensation: f64,
}

impl NeumaierSum {
    pub(crate) fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    pub(crate) fn value(self) -> f64 {
        self.sum + self.compensation
    }
}

/// The number of quantile bins PSI and binned Jensen-Shannon use by default.
pub const PSI_BINS: usize = 10;

/// The share an empty bin counts as in PSI, so the logarithm stays finite (the value
/// Evidently uses).
pub const PSI_EPSILON: f64 = 1e-4;

/// Bins fitted on a reference sample at its quantiles.
///
/// The interior edges are the reference's quantiles at `i / bins` for
/// `i = 1..bins` (numpy's default `linear` interpolation), with duplicates dropped
/// (a discrete reference gets fewer bins). The bins are `(-inf, e1]`, `(e1, e2]`,
/// ..., `(e_last, +inf)`, so every current value, however far out, falls in a bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileBins {
    edges: Vec<f64>,
}

impl QuantileBins {
    /// Fits `bins` bins (at least 2) on `reference` (non-empty, finite).
    pub fn fit(reference: &[f64], bins: usize) -> Result<Self> {
        check_sample("reference sample", reference)?;
        if bins < 2 {
            return Err(Error::invalid_input(
                "bin count",
                format!("{bins}; at least 2 are needed"),
            ));
        }
        if reference.len() < 4096 {
            return Self::fit_sorted(&sorted_copy(reference), bins);
        }
        // Only the order statistics next to each quantile are needed: select them
        // instead of sorting everything.
        let n = reference.len();
        let mut wanted: Vec<usize> = (1..bins)
            .flat_map(|i| {
                let lo = ((n - 1) as f64 * (i as f64 / bins as f64)).floor() as usize;
                [lo.min(n - 1), (lo + 1).min(n - 1)]
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut work = reference.to_vec();
        let mut start = 0usize;
        for &w in &wanted {
            work[start..].select_nth_unstable_by(w - start, f64::total_cmp);
            start = w + 1;
        }
        // `work` now holds the right value at every wanted index, which is all
        // `quantile_linear` reads.
        let mut edges: Vec<f64> = (1..bins)
            .map(|i| quantile_linear(&work, n, i as f64 / bins as f64))
            .collect();
        edges.dedup();
        Ok(Self { edges })
    }

    pub(crate) fn fit_sorted(sorted: &[f64], bins: usize) -> Result<Self> {
        if bins < 2 {
            return Err(Error::invalid_input(
                "bin count",
                format!("{bins}; at least 2 are needed"),
            ));
        }
        let n = sorted.len();
        let mut edges: Vec<f64> = (1..bins)
            .map(|i| quantile_linear(sorted, n, i as f64 / bins as f64))
            .collect();
        edges.dedup();
        Ok(Self { edges })
    }

    /// The interior edges, ascending.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The number of bins (edges + 1).
    pub fn bin_count(&self) -> usize {
        self.edges.len() + 1
    }

    /// The bin of `x`: the number of edges strictly below it.
    pub fn bin_of(&self, x: f64) -> usize {
        self.edges.partition_point(|&e| e < x)
    }

    /// How many of `values` fall in each bin. NaN is not counted (callers filter it).
    pub fn counts(&self, values: &[f64]) -> Vec<u64> {
        let mut counts = vec![0u64; self.bin_count()];
        for &x in values {
            if !x.is_nan() {
                counts[self.bin_of(x)] += 1;
            }
        }
        counts
    }
}

/// numpy's `quantile(..., method="linear")` on sorted data.
fn quantile_linear(sorted: &[f64], n: usize, q: f64) -> f64 {
    let vi = (n - 1) as f64 * q;
    let prev = vi.floor();
    let gamma = vi - prev;
    let lo = (prev as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let (a, b) = (sorted[lo], sorted[hi]);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// The Population Stability Index between binned counts:
/// `sum((c - r) ln(c / r))` over the bins' shares, each share floored at `epsilon`.
/// Zero-total sides and misaligned counts are [`Error::InvalidInput`].
pub fn psi(reference_counts: &[u64], current_counts: &[u64], epsilon: f64) -> Result<f64> {
    if reference_counts.len() != current_counts.len() {
        return Err(Error::invalid_input(
            "bin counts",
            format!(
                "the reference has {} bins and the current {}",
                reference_counts.len(),
                current_counts.len()
            ),
        ));
    }
    if !(epsilon > 0.0 && epsilon < 1.0) {
        return Err(Error::invalid_input(
            "PSI epsilon",
            format!("{epsilon}; it must be in (0, 1)"),
        ));
    }
    let rt: u64 = reference_counts.iter().sum();
    let ct: u64 = current_counts.iter().sum();
    if rt == 0 {
        return Err(Error::invalid_input(
            "reference sample",
            "it has no observations",
        ));
    }
    if ct == 0 {
        return Err(Error::invalid_input(
            "current sample",
            "it has no observations",
        ));
    }
    let mut sum = 0.0;
    for (&r, &c) in reference_counts.iter().zip(current_counts) {
        let rp = (r as f64 / rt as f64).max(epsilon);
        let cp = (c as f64 / ct as f64).max(epsilon);
        sum += (cp - rp) * (cp / rp).ln();
    }
    Ok(sum)
}

/// PSI of two numeric samples over [`PSI_BINS`] quantile bins of the reference, with
/// [`PSI_EPSILON`] for empty bins.
///
/// ```
/// use mlops_core::drift::psi_numeric;
/// let reference: Vec<f64> = (0..1000).map(|i| i as f64).collect();
/// let shifted: Vec<f64> = (0..1000).map(|i| i as f64 + 300.0).collect();
/// assert!(psi_numeric(&reference, &reference)? < 1e-12);
/// assert!(psi_numeric(&reference, &shifted)? > 0.2);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn psi_numeric(reference: &[f64], current: &[f64]) -> Result<f64> {
    check_sample("current sample", current)?;
    let bins = QuantileBins::fit(reference, PSI_BINS)?;
    psi(&bins.counts(reference), &bins.counts(current), PSI_EPSILON)
}
