//! Our metrics against scikit-learn's on committed fixtures
//! (tests/fixtures/make_metric_fixtures.py writes them).

use mlops_train::metrics;
use serde_json::Value;

fn close(name: &str, metric: &str, got: f64, want: f64) {
    let tol = 1e-9 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{name}: {metric} is {got}, scikit-learn says {want}"
    );
}

#[test]
fn metrics_match_scikit_learn() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics.json"
    ))
    .unwrap();
    let fixtures: Value = serde_json::from_str(&text).unwrap();
    let cases = fixtures["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let scores: Vec<f64> = serde_json::from_value(case["scores"].clone()).unwrap();
        let expected = case["expected"].as_object().unwrap();
        assert!(!expected.is_empty(), "{name}: no expected metrics");
        if case["task"] == "regression" {
            let y: Vec<f64> = serde_json::from_value(case["y_true"].clone()).unwrap();
            let got = metrics::regression_report(&y, &scores).unwrap();
            for (metric, want) in expected {
                close(name, metric, got[metric], want.as_f64().unwrap());
            }
            continue;
        }
        let y: Vec<usize> = serde_json::from_value(case["y_true"].clone()).unwrap();
        let k = case["classes"].as_u64().unwrap() as usize;
        let got = metrics::classification_report(&y, &scores, k).unwrap();
        for (metric, want) in expected {
            close(name, metric, got[metric], want.as_f64().unwrap());
        }
        let want_cm: Vec<Vec<u64>> =
            serde_json::from_value(case["confusion_matrix"].clone()).unwrap();
        let pred = metrics::predicted_classes(&scores, k);
        assert_eq!(
            metrics::confusion_matrix(&y, &pred, k).unwrap(),
            want_cm,
            "{name}"
        );
    }
}
