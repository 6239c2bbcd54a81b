//! The distribution of the two-sided one-sample Kolmogorov-Smirnov statistic `D_n`,
//! as `scipy.stats.kstwo` computes it, and the one-sided Smirnov distribution it
//! falls back on.
//!
//! The region boundaries and algorithms follow Simard & L'Ecuyer (2011), as in
//! scipy's `_ksstats.kolmogn`: Ruben-Gambino closed forms at the extremes, the
//! Durbin matrix (Marsaglia-Tsang-Wang) for small `n x^2`, Pomeranz's recursion for
//! moderate `n <= 140`, the Pelz-Good asymptotic series for large `n`, and twice the
//! one-sided Smirnov tail where that is exact enough.

use statrs::function::gamma::ln_gamma;

const E128: i32 = 128;
const EP128: f64 = 3.402_823_669_209_385e38; // 2^128
const EM128: f64 = 2.938_735_877_055_719e-39; // 2^-128
const LOG_2PI: f64 = 1.837_877_066_409_345_5; // ln(2 pi)
const SQRT2PI: f64 = 2.506_628_274_631_000_2;
const MIN_LOG: f64 = -708.0;
const PI_SQUARED: f64 = std::f64::consts::PI * std::f64::consts::PI;
const STIRLING_COEFFS: [f64; 8] = [
    -2.955_065_359_477_124_2e-2,
    6.410_256_410_256_41e-3,
    -1.917_526_917_526_917_5e-3,
    8.417_508_417_508_418e-4,
    -5.952_380_952_380_952e-4,
    7.936_507_936_507_937e-4,
    -2.777_777_777_777_778e-3,
    8.333_333_333_333_333e-2,
];

/// `ldexp(x, e)`: `x * 2^e` without intermediate overflow for moderate `e`.
fn ldexp(x: f64, e: i32) -> f64 {
    let mut x = x;
    let mut e = e;
    while e > 1000 {
        x *= 2f64.powi(1000);
        e -= 1000;
    }
    while e < -1000 {
        x *= 2f64.powi(-1000);
        e += 1000;
    }
    x * 2f64.powi(e)
}

fn clip(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

fn select(cdf_prob: f64, sf_prob: f64, cdf: bool) -> f64 {
    clip(if cdf { cdf_prob } else { sf_prob })
}

fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    let rn = 1.0 / n;
    let poly = STIRLING_COEFFS
        .iter()
        .fold(0.0, |acc, &c| acc * (rn / n) + c);
    n.ln() / 2.0 - n + LOG_2PI / 2.0 + rn * poly
}

/// `Pr(D_n <= d)` (or the survival function) by the Durbin matrix algorithm.
fn kolmogn_dmtw(n: u64, d: f64, cdf: bool) -> f64 {
    if d >= 1.0 {
        return select(1.0, 0.0, cdf);
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return select(0.0, 1.0, cdf);
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut hmat = vec![0.0f64; m * m];
    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powi(j as i32)).collect();
    let mut w = vec![0.0f64; m];
    let mut fac = 1.0f64;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    for i in 1..m {
        // H[i-1:, i] = w[:m-i+1]
        for (r, &wv) in (i - 1..m).zip(&w[..m - i + 1]) {
            hmat[r * m + i] = wv;
        }
    }
    for r in 0..m {
        hmat[r * m] = v[r];
    }
    for c in 0..m {
        hmat[(m - 1) * m + c] = v[m - 1 - c];
    }
    let mut hpwr = vec![0.0f64; m * m];
    for i in 0..m {
        hpwr[i * m + i] = 1.0;
    }
    let mut nn = n;
    let mut expnt: i32 = 0;
    let mut hexpnt: i32 = 0;
    while nn > 0 {
        if nn % 2 == 1 {
            hpwr = matmul(&hpwr, &hmat, m);
            expnt += hexpnt;
        }
        hmat = matmul(&hmat, &hmat, m);
        hexpnt *= 2;
        if hmat[(k - 1) * m + (k - 1)].abs() > EP128 {
            for x in &mut hmat {
                *x /= EP128;
            }
            hexpnt += E128;
        }
        nn /= 2;
    }
    let mut p = hpwr[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / n as f64;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128;
        }
    }
    if expnt != 0 {
        p = ldexp(p, expnt);
    }
    select(p, 1.0 - p, cdf)
}

fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * m];
    for i in 0..m {
        let row = &mut out[i * m..(i + 1) * m];
        for k in 0..m {
            let aik = a[i * m + k];
            if aik == 0.0 {
                continue;
            }
            let brow = &b[k * m..(k + 1) * m];
            for (o, &bv) in row.iter_mut().zip(brow) {
                *o += aik * bv;
            }
        }
    }
    out
}

fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (ip1div2, ip1mod2) = ((i + 1) / 2, (i + 1) % 2);
        if ip1mod2 == 0 {
            if ip1div2 == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1)
            }
        } else {
            (ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// `Pr(D_n <= x)` by Pomeranz's recursion.
fn kolmogn_pomeranz(n: u64, x: f64, cdf: bool) -> f64 {
    let ni = n as i64;
    let t = n as f64 * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![0.0f64; npwrs];
    let mut twogpower = vec![0.0f64; npwrs];
    let mut onem2gpower = vec![0.0f64; npwrs];
    gpower[0] = 1.0;
    twogpower[0] = 1.0;
    onem2gpower[0] = 1.0;
    let mut expnt: i32 = 0;
    let nf = n as f64;
    let (g_over_n, two_g_over_n, one_minus_two_g_over_n) =
        (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * g_over_n / m as f64;
        twogpower[m] = twogpower[m - 1] * two_g_over_n / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * one_minus_two_g_over_n / m as f64;
    }
    let mut v0 = vec![0.0f64; npwrs];
    let mut v1 = vec![0.0f64; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s): (i64, i64) = (0, 0);
    let mut j1 = pomeranz_j1j2(0, ni, ll, ceilf, roundf).0;
    for i in 1..(2 * ni + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.fill(0.0);
        let (next_j1, j2) = pomeranz_j1j2(i, ni, ll, ceilf, roundf);
        j1 = next_j1;
        let pwrs = if i == 1 || i == 2 * ni + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            let ln2 = ln2 as usize;
            let start = (k1 - v0s) as usize;
            let a = &v0[start..start + ln2];
            let b = &pwrs[..ln2];
            let conv_start = (j1 - k1) as usize;
            let conv_len = (j2 - j1 + 1).max(0) as usize;
            // Only the needed part of the full convolution a * b.
            for (out_i, slot) in v1.iter_mut().enumerate().take(conv_len) {
                let idx = conv_start + out_i;
                let lo = idx.saturating_sub(ln2 - 1);
                let hi = idx.min(ln2 - 1);
                let mut s = 0.0;
                for p in lo..=hi {
                    s += a[p] * b[idx - p];
                }
                *slot = s;
            }
            let max = v1.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if max > 0.0 && max < EM128 {
                for x in &mut v1 {
                    *x *= EP128;
                }
                expnt -= E128;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = v1[(ni - v1s) as usize];
    for m in 1..=n {
        if ans.abs() > EP128 {
            ans *= EM128;
            expnt += E128;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans = ldexp(ans, expnt);
    }
    select(ans, 1.0 - ans, cdf)
}

/// The Pelz-Good asymptotic approximation of `Pr(D_n <= x)`.
fn kolmogn_pelz_good(n: u64, x: f64, cdf: bool) -> f64 {
    if x <= 0.0 {
        return select(0.0, 1.0, cdf);
    }
    if x >= 1.0 {
        return select(1.0, 0.0, cdf);
    }
    let nf = n as f64;
    let z = nf.sqrt() * x;
    let (zsquared, zthree, zfour, zsix) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -PI_SQUARED / 8.0 / zsquared;
    if qlog < MIN_LOG {
        return select(0.0, 1.0, cdf);
    }
    let q = qlog.exp();
    let pi_four = PI_SQUARED * PI_SQUARED;
    let pi_six = pi_four * PI_SQUARED;
    let k1a = -zsquared;
    let k1b = PI_SQUARED / 4.0;
    let k2a = 6.0 * zsix + 2.0 * zfour;
    let k2b = (2.0 * zfour - 5.0 * zsquared) * PI_SQUARED / 4.0;
    let k2c = pi_four * (1.0 - 2.0 * zsquared) / 16.0;
    let k3d = pi_six * (5.0 - 30.0 * zsquared) / 64.0;
    let k3c = pi_four * (-60.0 * zsquared + 212.0 * zfour) / 16.0;
    let k3b = PI_SQUARED * (135.0 * zfour - 96.0 * zsix) / 4.0;
    let k3a = -30.0 * zsix - 90.0 * z.powi(8);
    let mut k0to3 = [0.0f64; 4];
    let maxk = (16.0 * z / std::f64::consts::PI).ceil() as i64;
    for k in (1..=maxk).rev() {
        let m = (2 * k - 1) as f64;
        let (msquared, mfour, msix) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * k as f64);
        let coeffs = [
            1.0,
            k1a + k1b * msquared,
            k2a + k2b * msquared + k2c * mfour,
            k3a + k3b * msquared + k3c * mfour + k3d * msix,
        ];
        for (acc, c) in k0to3.iter_mut().zip(coeffs) {
            *acc = *acc * qpower + c;
        }
    }
    let denominators = [z, 6.0 * zfour, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (acc, d) in k0to3.iter_mut().zip(denominators) {
        *acc = *acc * q * SQRT2PI / d;
    }
    let q2 = (-PI_SQUARED / 2.0 / zsquared).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let mut k2extra = 0.0;
    let mut k3extra = 0.0;
    for k in (1..=maxk).rev() {
        let kf = k as f64;
        let ksq = kf * kf;
        let qp = q2.powf(ksq);
        k2extra += ksq * qp;
        let kspi = std::f64::consts::PI * kf;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ksq * qp;
    }
    k0to3[2] += k2extra * PI_SQUARED * SQRT2PI / (-36.0 * zthree);
    k0to3[3] += k3extra * PI_SQUARED * SQRT2PI / (216.0 * zsix);
    for (i, acc) in k0to3.iter_mut().enumerate() {
        *acc /= nf.powf(i as f64 / 2.0);
    }
    if !cdf {
        for acc in &mut k0to3 {
            *acc = -*acc;
        }
        k0to3[0] += 1.0;
    }
    k0to3.iter().sum()
}

/// The survival function of the one-sided Smirnov statistic, `Pr(D+_n >= x)`, as
/// `scipy.special.smirnov`: closed forms at the extremes, an approximation for
/// `n > 1,000,000`, and otherwise the Birnbaum-Tingey sum, evaluated term by term in
/// log space (all terms are positive, so the sum loses no accuracy).
pub(crate) fn smirnov_sf(n: u64, x: f64) -> f64 {
    if n == 0 || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    let nf = n as f64;
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nx = nf * x;
    let nxfl = nx.floor();
    let alpha = nx - nxfl;
    // x <= 1/n: cdf = x (1+x)^(n-1)
    if nxfl == 0.0 || (nxfl == 1.0 && alpha == 0.0) {
        let cdf = x * (1.0 + x).powf(nf - 1.0);
        return clip(1.0 - cdf);
    }
    if -2.0 * nf * x * x < -708.396_418_532_264_1 {
        return 0.0;
    }
    if nxfl >= nf - 1.0 {
        return clip((1.0 - x).powf(nf));
    }
    if n > 1_000_000 {
        let logp = -(6.0 * nx + 1.0).powi(2) / 18.0 / nf;
        return clip(if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            1.0 + logp.exp_m1()
        });
    }
    // sf = x * sum_{v=0}^{floor(n(1-x))} C(n, v) (x + v/n)^(v-1) (1 - x - v/n)^(n-v),
    // excluding the last term when n(1-x) is an integer.
    let mut last = (nf - nxfl - if alpha == 0.0 { 0.0 } else { 1.0 }) as u64;
    if alpha == 0.0 {
        last -= 1;
    }
    let ln_n_fact = ln_gamma(nf + 1.0);
    // Running sum scaled by exp(max_log), so neither overflows nor underflows.
    let mut max_log = f64::NEG_INFINITY;
    let mut scaled = 0.0f64;
    for v in 0..=last {
        let vf = v as f64;
        let a = x + vf / nf;
        let b = (nf - vf) / nf - x;
        if b <= 0.0 {
            break;
        }
        let log_c = ln_n_fact - ln_gamma(vf + 1.0) - ln_gamma(nf - vf + 1.0);
        let log_term = log_c + (vf - 1.0) * a.ln() + (nf - vf) * b.ln();
        if log_term > max_log {
            scaled = scaled * (max_log - log_term).exp() + 1.0;
            max_log = log_term;
        } else {
            scaled += (log_term - max_log).exp();
            // Past the peak (terms are unimodal in v): stop once the remaining terms
            // cannot change the sum in double precision, as scipy does.
            let remaining = (last - v) as f64;
            if remaining > 0.0
                && (4.0 * remaining).ln() + (log_term - max_log) < f64::EPSILON.ln() + scaled.ln()
            {
                break;
            }
        }
    }
    clip(x * scaled * max_log.exp())
}

/// The survival function `Pr(D_n > x)` of the two-sided one-sample KS statistic
/// (`scipy.stats.kstwo.sf(x, n)`).
pub(crate) fn kolmogn_sf(n: u64, x: f64) -> f64 {
    kolmogn(n, x, false)
}

fn kolmogn(n: u64, x: f64, cdf: bool) -> f64 {
    if n == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x >= 1.0 {
        return select(1.0, 0.0, cdf);
    }
    if x <= 0.0 {
        return select(0.0, 1.0, cdf);
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        if t <= 0.5 {
            return select(0.0, 1.0, cdf);
        }
        let prob = if n <= 140 {
            (1..=n)
                .map(|i| i as f64 * (1.0 / nf) * (2.0 * t - 1.0))
                .product()
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return select(prob, 1.0 - prob, cdf);
    }
    if t >= nf - 1.0 {
        let prob = 2.0 * (1.0 - x).powf(nf);
        return select(1.0 - prob, prob, cdf);
    }
    if x >= 0.5 {
        let prob = 2.0 * smirnov_sf(n, x);
        return select(1.0 - prob, prob, cdf);
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754693 {
            let prob = kolmogn_dmtw(n, x, true);
            return select(prob, 1.0 - prob, cdf);
        }
        if nxsquared <= 4.0 {
            let prob = kolmogn_pomeranz(n, x, true);
            return select(prob, 1.0 - prob, cdf);
        }
        let prob = 2.0 * smirnov_sf(n, x);
        return select(1.0 - prob, prob, cdf);
    }
    if !cdf {
        if nxsquared >= 370.0 {
            return 0.0;
        }
        if nxsquared >= 2.2 {
            return clip(2.0 * smirnov_sf(n, x));
        }
    }
    let cdfprob = if nxsquared >= 18.0 {
        1.0
    } else if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        kolmogn_dmtw(n, x, true)
    } else {
        kolmogn_pelz_good(n, x, true)
    };
    select(cdfprob, 1.0 - cdfprob, cdf)
}
