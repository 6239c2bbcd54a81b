//! The two-sample Kolmogorov-Smirnov test, as `scipy.stats.ks_2samp` (two-sided,
//! `method="auto"`).

use serde::{Deserialize, Serialize};

use super::check_sample;
use super::kolmogorov::kolmogn_sf;
use super::sort::sorted_pair;
use crate::error::Result;

/// Samples up to this size (the larger of the two) get the exact p-value; larger
/// ones the asymptotic one. scipy's `MAX_AUTO_N`.
pub const KS_EXACT_MAX_N: usize = 10_000;

/// The result of a two-sample KS test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// The largest absolute difference between the two empirical CDFs.
    pub statistic: f64,
    /// The two-sided p-value.
    pub p_value: f64,
    /// Whether the p-value is exact (small samples) or asymptotic.
    pub exact: bool,
}

/// The two-sided two-sample Kolmogorov-Smirnov test of `reference` against
/// `current`, matching `scipy.stats.ks_2samp(reference, current)`: the exact
/// distribution when neither sample exceeds [`KS_EXACT_MAX_N`] values, otherwise
/// `kstwo.sf(d, round(n1 n2 / (n1 + n2)))`.
///
/// Empty samples and NaN or infinite values are refused with
/// [`Error::InvalidInput`](crate::Error::InvalidInput) naming the sample and index.
///
/// ```
/// use mlops_core::drift::ks_2samp;
/// let r = ks_2samp(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.0])?;
/// assert_eq!(r.statistic, 0.5);
/// assert!(r.exact && r.p_value > 0.5);
/// # Ok::<(), mlops_core::Error>(())
/// ```
pub fn ks_2samp(reference: &[f64], current: &[f64]) -> Result<KsResult> {
    check_sample("reference sample", reference)?;
    check_sample("current sample", current)?;
    if reference.len().max(current.len()) > KS_EXACT_MAX_N
        && reference.len() + current.len() >= BUCKETED_MIN_LEN
    {
        // Asymptotic p-value, and a statistic that needs no full sort.
        let d = ks_statistic_bucketed(reference, current);
        return Ok(asymptotic(reference.len(), current.len(), d));
    }
    let (a, b) = sorted_pair(reference, current);
    Ok(ks_2samp_sorted(&a, &b))
}

/// From this many values in all, the statistic is computed by bucketing.
const BUCKETED_MIN_LEN: usize = 100_000;

/// The KS statistic without sorting everything: count both samples into 2^16
/// equal-width buckets between the smallest and largest value (a monotone map, so
/// bucket order is value order); the CDF difference at every bucket boundary is
/// exact, and only buckets whose counts leave room for a larger difference inside
/// are gathered, sorted and walked. The result is bit-for-bit the one of a full
/// merge: the same differences `i / n1 - j / n2` at the same points.
fn ks_statistic_bucketed(a: &[f64], b: &[f64]) -> f64 {
    const BUCKETS: usize = 1 << 16;
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (lo, hi) = a
        .iter()
        .chain(b)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let width = hi - lo;
    if !(width > 0.0 && width.is_finite()) {
        // One distinct value (or a range too wide to scale): walk sorted copies.
        let (sa, sb) = sorted_pair(a, b);
        return ks_statistic_sorted(&sa, &sb);
    }
    let scale = (BUCKETS - 1) as f64 / width;
    let bucket = |x: f64| (((x - lo) * scale) as usize).min(BUCKETS - 1);
    let mut c1 = vec![0u32; BUCKETS];
    let mut c2 = vec![0u32; BUCKETS];
    a.iter().for_each(|&x| c1[bucket(x)] += 1);
    b.iter().for_each(|&x| c2[bucket(x)] += 1);

    // Exact differences at the bucket boundaries: each is a data point (the
    // bucket's largest value).
    let (mut i, mut j) = (0u64, 0u64);
    let (mut max_diff, mut min_diff) = (0.0f64, 0.0f64);
    for k in 0..BUCKETS {
        if c1[k] + c2[k] > 0 {
            i += u64::from(c1[k]);
            j += u64::from(c2[k]);
            let d = i as f64 / n1 - j as f64 / n2;
            max_diff = max_diff.max(d);
            min_diff = min_diff.min(d);
        }
    }
    // Buckets where a point inside could beat the boundaries, with the counts
    // before them.
    let mut candidates: Vec<(usize, u64, u64)> = Vec::new();
    let (mut i, mut j) = (0u64, 0u64);
    for k in 0..BUCKETS {
        let (x, y) = (u64::from(c1[k]), u64::from(c2[k]));
        if x + y > 1 {
            let base = i as f64 / n1 - j as f64 / n2;
            if base + x as f64 / n1 > max_diff || base - y as f64 / n2 < min_diff {
                candidates.push((k, i, j));
            }
        }
        i += x;
        j += y;
    }
    if candidates.is_empty() {
        return max_diff.max((-min_diff).clamp(0.0, 1.0));
    }
    let mut slot = vec![u32::MAX; BUCKETS];
    for (n, c) in candidates.iter().enumerate() {
        slot[c.0] = n as u32;
    }
    let gather = |s: &[f64]| {
        let mut g: Vec<(u32, f64)> = s
            .iter()
            .filter_map(|&x| {
                let n = slot[bucket(x)];
                (n != u32::MAX).then_some((n, x))
            })
            .collect();
        g.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)));
        g
    };
    let (ga, gb) = (gather(a), gather(b));
    let (mut pa, mut pb) = (0usize, 0usize);
    for (n, &(_, i0, j0)) in candidates.iter().enumerate() {
        let n = n as u32;
        let ea = pa + ga[pa..].iter().take_while(|e| e.0 == n).count();
        let eb = pb + gb[pb..].iter().take_while(|e| e.0 == n).count();
        let (xa, xb) = (&ga[pa..ea], &gb[pb..eb]);
        let (mut i, mut j) = (i0, j0);
        let (mut ia, mut ib) = (0usize, 0usize);
        while ia < xa.len() || ib < xb.len() {
            let v = match (xa.get(ia), xb.get(ib)) {
                (Some(x), Some(y)) => x.1.min(y.1),
                (Some(x), None) => x.1,
                (None, Some(y)) => y.1,
                (None, None) => break,
            };
            while ia < xa.len() && xa[ia].1 <= v {
                ia += 1;
                i += 1;
            }
            while ib < xb.len() && xb[ib].1 <= v {
                ib += 1;
                j += 1;
            }
            let d = i as f64 / n1 - j as f64 / n2;
            max_diff = max_diff.max(d);
            min_diff = min_diff.min(d);
        }
        (pa, pb) = (ea, eb);
    }
    max_diff.max((-min_diff).clamp(0.0, 1.0))
}

fn asymptotic(n1: usize, n2: usize, d: f64) -> KsResult {
    let (m, n) = if n1 >= n2 {
        (n1 as f64, n2 as f64)
    } else {
        (n2 as f64, n1 as f64)
    };
    let en = (m * n / (m + n)).round_ties_even();
    KsResult {
        statistic: d,
        p_value: kolmogn_sf(en as u64, d).clamp(0.0, 1.0),
        exact: false,
    }
}

/// [`ks_2samp`] on samples already sorted ascending, non-empty and finite (the
/// table detector keeps its reference sorted so each comparison sorts only the
/// current sample).
pub(crate) fn ks_2samp_sorted(a: &[f64], b: &[f64]) -> KsResult {
    let (n1, n2) = (a.len(), b.len());
    let d = ks_statistic_sorted(a, b);
    if n1.max(n2) <= KS_EXACT_MAX_N
        && let Some((d, p)) = exact_p_value(n1 as u64, n2 as u64, d)
    {
        return KsResult {
            statistic: d,
            p_value: p.clamp(0.0, 1.0),
            exact: true,
        };
    }
    asymptotic(n1, n2, d)
}

/// `max |F_a(x) - F_b(x)|` over all observed values, by one merge of the sorted
/// samples.
pub(crate) fn ks_statistic_sorted(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut max_diff = 0.0f64;
    let mut min_diff = 0.0f64;
    while i < a.len() || j < b.len() {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        let diff = i as f64 / n1 - j as f64 / n2;
        max_diff = max_diff.max(diff);
        min_diff = min_diff.min(diff);
    }
    max_diff.max((-min_diff).clamp(0.0, 1.0))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// scipy's `_attempt_exact_2kssamp` (two-sided): the statistic rounded to the
/// lattice `h / lcm(n1, n2)` and its exact p-value, or `None` when the computation
/// is not numerically sound (then the asymptotic p-value is used).
fn exact_p_value(n1: u64, n2: u64, d: f64) -> Option<(f64, f64)> {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h = (d * lcm as f64).round_ties_even() as u64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return Some((d, 1.0));
    }
    let p = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        outer_prob_inside_method(n1, n2, g, h)
    };
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some((d, p))
}

/// The proportion of lattice paths that leave the band `|x - y| < h` (n1 == n2).
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0f64;
    let mut k = n / h;
    while k >= 0 {
        let mut p1 = 1.0f64;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// The proportion of lattice paths from (0, 0) to (m, n) that do not stay strictly
/// inside the two diagonals (Hodges' inside method, computing 1 - p directly as in
/// Viehmann 2021), with scipy's sliding window.
fn outer_prob_inside_method(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
    let mg = m / g;
    let ng = n / g;
    let mut minj: i64 = 0;
    let mut maxj: i64 = ((h as f64 / mg as f64).ceil() as i64).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a.max(1)];
    for x in a.iter_mut().take(maxj as usize).skip(minj as usize) {
        *x = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = (((ng * i - h) as f64 / mg as f64).floor() as i64 + 1).max(0);
        minj = minj.min(n);
        maxj = (((ng * i + h) as f64 / mg as f64).ceil() as i64).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            val = (a[(jj + minj - lastminj) as usize] * i as f64 + val * j as f64) / (i + j) as f64;
            a[jj as usize] = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let start = (maxj - minj) as usize;
            let end = (start + (lastlen - curlen) as usize).min(a.len());
            for x in &mut a[start..end] {
                *x = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::sort::sorted_floats;

    #[test]
    fn bucketed_statistic_equals_the_full_merge() {
        let mut state = 7u64;
        let mut u = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 * 2f64.powi(-53)
        };
        let cases: Vec<(Vec<f64>, Vec<f64>)> = vec![
            (
                (0..60_000).map(|_| u()).collect(),
                (0..50_000).map(|_| u() * 1.01).collect(),
            ),
            (
                (0..60_000).map(|_| (u() * 10.0).floor()).collect(),
                (0..70_000).map(|_| (u() * 10.0).floor()).collect(),
            ),
            (
                (0..80_000).map(|_| u() - 0.5).collect(),
                (0..30_000)
                    .map(|_| if u() < 0.01 { 1e300 } else { u() })
                    .collect(),
            ),
            (vec![1.0; 60_000], vec![1.0; 50_000]),
        ];
        for (a, b) in cases {
            let full = ks_statistic_sorted(&sorted_floats(&a), &sorted_floats(&b));
            assert_eq!(ks_statistic_bucketed(&a, &b).to_bits(), full.to_bits());
        }
    }
}
