//! Drift statistics against scipy's answers on the same input
//! (fixtures made by tests/fixtures/make_drift_fixtures.py), and bad input.

use mlops_core::drift::{
    PSI_EPSILON, QuantileBins, chi_squared, jensen_shannon, ks_2samp, psi, wasserstein,
    wasserstein_normed,
};
use serde_json::Value;

const FIXTURES: &str = include_str!("../fixtures/drift_fixtures.json");

fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).unwrap()
}

/// The fixture cases of `kind`; a missing or empty list fails (a loop over no
/// cases would check nothing).
fn cases<'a>(f: &'a Value, kind: &str) -> &'a [Value] {
    let cases = f[kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} cases in the fixtures"));
    assert!(!cases.is_empty(), "no {kind} cases in the fixtures");
    cases
}

/// Rebuilds a sample: explicit values, or the generator recipe the script used
/// (SplitMix64 uniforms mapped with + and * only, so both sides agree bit for bit).
fn sample(v: &Value) -> Vec<f64> {
    if let Some(values) = v.as_array() {
        return values.iter().map(|x| x.as_f64().unwrap()).collect();
    }
    let mut state = v["seed"].as_u64().unwrap();
    let n = v["n"].as_u64().unwrap() as usize;
    let (a, b) = (v["a"].as_f64().unwrap(), v["b"].as_f64().unwrap());
    let mut uniform = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * 2f64.powi(-53)
    };
    (0..n)
        .map(|_| match v["kind"].as_str().unwrap() {
            "uniform" => a + (b - a) * uniform(),
            _ => {
                let u1 = uniform();
                let u2 = uniform();
                a + (b - a) * ((u1 + u2) / 2.0)
            }
        })
        .collect()
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn assert_statistic(name: &str, got: f64, want: f64) {
    let tol = 1e-9 * want.abs().max(f64::MIN_POSITIVE);
    assert!(
        (got - want).abs() <= tol || got == want,
        "{name}: statistic {got:e}, scipy {want:e} (relative error {:e})",
        ((got - want) / want).abs()
    );
}

fn assert_p_value(name: &str, got: f64, want: f64) {
    let ok = (got - want).abs() <= 1e-12 || (got - want).abs() <= 1e-6 * want.abs();
    assert!(ok, "{name}: p-value {got:e}, scipy {want:e}");
}

#[test]
fn ks_matches_scipy() {
    let f = fixtures();
    for case in cases(&f, "ks") {
        let name = case["name"].as_str().unwrap();
        let r = ks_2samp(&sample(&case["reference"]), &sample(&case["current"])).unwrap();
        assert_statistic(name, r.statistic, case["statistic"].as_f64().unwrap());
        assert_p_value(name, r.p_value, case["p_value"].as_f64().unwrap());
    }
}

#[test]
fn kolmogorov_distribution_matches_scipy_at_every_switch_over() {
    // kstwo.sf(x, n) is what ks_2samp's asymptotic branch returns: reach it through
    // two samples of sizes (m, n) with m n / (m + n) = n exactly is not always
    // possible, so test the distribution through a crate-internal hook instead.
    let f = fixtures();
    let grid = f["kstwo_sf"].as_array().unwrap();
    assert!(grid.len() > 150);
    for point in grid {
        let n = point["n"].as_u64().unwrap();
        let x = point["x"].as_f64().unwrap();
        let want = point["sf"].as_f64().unwrap();
        let got = mlops_core::drift::kolmogorov_sf(n, x);
        assert_p_value(&format!("kstwo.sf({x}, {n})"), got, want);
    }
}

#[test]
fn chi_squared_matches_scipy() {
    let f = fixtures();
    for case in cases(&f, "chi2") {
        let name = case["name"].as_str().unwrap();
        let r = chi_squared(&counts(&case["reference"]), &counts(&case["current"])).unwrap();
        assert_eq!(r.dof as u64, case["dof"].as_u64().unwrap(), "{name}");
        assert_statistic(name, r.statistic, case["statistic"].as_f64().unwrap());
        assert_p_value(name, r.p_value, case["p_value"].as_f64().unwrap());
    }
}

#[test]
fn jensen_shannon_matches_scipy() {
    let f = fixtures();
    for case in cases(&f, "jensen_shannon") {
        let name = case["name"].as_str().unwrap();
        let d = jensen_shannon(&sample(&case["p"]), &sample(&case["q"])).unwrap();
        assert_statistic(name, d, case["distance"].as_f64().unwrap());
    }
}

#[test]
fn wasserstein_matches_scipy() {
    let f = fixtures();
    for case in cases(&f, "wasserstein") {
        let name = case["name"].as_str().unwrap();
        let (u, v) = (sample(&case["u"]), sample(&case["v"]));
        assert_statistic(
            name,
            wasserstein(&u, &v).unwrap(),
            case["distance"].as_f64().unwrap(),
        );
        match case["normed"].as_f64() {
            Some(want) => assert_statistic(name, wasserstein_normed(&u, &v).unwrap(), want),
            None => {
                let err = wasserstein_normed(&u, &v).unwrap_err().to_string();
                assert!(err.contains("constant"), "{name}: {err}");
            }
        }
    }
}

#[test]
fn psi_and_binned_jensen_shannon_match_the_numpy_definition() {
    let f = fixtures();
    for case in cases(&f, "psi") {
        let name = case["name"].as_str().unwrap();
        let (r, c) = (sample(&case["reference"]), sample(&case["current"]));
        let bins = QuantileBins::fit(&r, 10).unwrap();
        let want_edges: Vec<f64> = sample(&case["edges"]);
        assert_eq!(bins.edges(), &want_edges[..], "{name}: edges");
        let (rc, cc) = (bins.counts(&r), bins.counts(&c));
        assert_statistic(
            name,
            psi(&rc, &cc, PSI_EPSILON).unwrap(),
            case["psi"].as_f64().unwrap(),
        );
        let to_f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let js = jensen_shannon(&to_f(&rc), &to_f(&cc)).unwrap();
        assert_statistic(name, js, case["binned_js"].as_f64().unwrap());
    }
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let msg = ks_2samp(&[], &[1.0]).unwrap_err().to_string();
    assert!(
        msg.contains("reference sample") && msg.contains("empty"),
        "{msg}"
    );
    let msg = ks_2samp(&[1.0, f64::NAN], &[1.0]).unwrap_err().to_string();
    assert!(
        msg.contains("reference sample") && msg.contains("value 1 is NaN"),
        "{msg}"
    );
    let msg = wasserstein(&[1.0], &[f64::INFINITY])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("current sample") && msg.contains("inf"),
        "{msg}"
    );
    let msg = chi_squared(&[1, 2], &[1, 2, 3]).unwrap_err().to_string();
    assert!(msg.contains("aligned"), "{msg}");
    let msg = chi_squared(&[0, 0], &[1, 2]).unwrap_err().to_string();
    assert!(
        msg.contains("reference sample") && msg.contains("no observations"),
        "{msg}"
    );
    let msg = jensen_shannon(&[1.0, -1.0], &[1.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("weight 1 is -1"), "{msg}");
    let msg = jensen_shannon(&[0.0, 0.0], &[1.0, 1.0])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("all weights are zero"), "{msg}");
    assert!(psi(&[1, 2], &[1, 2], 0.0).is_err());
    assert!(psi(&[0, 0], &[1, 2], PSI_EPSILON).is_err());
    assert!(QuantileBins::fit(&[1.0, 2.0], 1).is_err());
    // A single category: no degrees of freedom, no drift.
    let r = chi_squared(&[5], &[500]).unwrap();
    assert_eq!((r.statistic, r.p_value, r.dof), (0.0, 1.0, 0));
}
