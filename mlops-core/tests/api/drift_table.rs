//! The table-level detector: method choice, verdicts, corrections, bad input,
//! serialization and bounds.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, types::Int32Type,
};
use mlops_core::drift::{
    ColumnOverride, DriftMethod, OverallRule, TableDriftConfig, TableDriftDetector, TableReference,
    ks_2samp,
};
use mlops_core::{DriftDetector, Error};

/// A deterministic pseudo-random stream in [0, 1).
struct Stream(u64);
impl Stream {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * 2f64.powi(-53)
    }
}

/// `rows` rows: amount (float, shifted by `shift`), count (int), city (string,
/// `oslo` share `oslo`), flag (bool), plan (dictionary, 3 values).
fn table(rows: usize, seed: u64, shift: f64, oslo: f64) -> RecordBatch {
    let mut s = Stream(seed);
    let amount: Vec<f64> = (0..rows).map(|_| s.next() * 100.0 + shift).collect();
    let count: Vec<i64> = (0..rows).map(|_| (s.next() * 50.0) as i64).collect();
    let city: Vec<&str> = (0..rows)
        .map(|_| {
            if s.next() < oslo {
                "oslo"
            } else if s.next() < 0.5 {
                "paris"
            } else {
                "rome"
            }
        })
        .collect();
    let flag: Vec<bool> = (0..rows).map(|_| s.next() < 0.3).collect();
    let plan: DictionaryArray<Int32Type> = (0..rows)
        .map(|_| ["free", "pro", "team"][(s.next() * 3.0) as usize])
        .collect();
    RecordBatch::try_from_iter([
        ("amount", Arc::new(Float64Array::from(amount)) as ArrayRef),
        ("count", Arc::new(Int64Array::from(count)) as ArrayRef),
        ("city", Arc::new(StringArray::from(city)) as ArrayRef),
        ("flag", Arc::new(BooleanArray::from(flag)) as ArrayRef),
        ("plan", Arc::new(plan) as ArrayRef),
    ])
    .unwrap()
}

fn methods(d: &TableDriftDetector) -> Vec<(String, DriftMethod)> {
    d.reference()
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.method))
        .collect()
}

#[test]
fn methods_are_chosen_by_type_and_size_like_evidently() {
    let small =
        TableDriftDetector::fit(&table(800, 1, 0.0, 0.2), &TableDriftConfig::default()).unwrap();
    assert_eq!(
        methods(&small),
        vec![
            ("amount".into(), DriftMethod::KolmogorovSmirnov),
            ("count".into(), DriftMethod::KolmogorovSmirnov),
            ("city".into(), DriftMethod::ChiSquared),
            ("flag".into(), DriftMethod::ChiSquared),
            ("plan".into(), DriftMethod::ChiSquared),
        ]
    );
    let large =
        TableDriftDetector::fit(&table(5000, 1, 0.0, 0.2), &TableDriftConfig::default()).unwrap();
    assert_eq!(
        methods(&large),
        vec![
            ("amount".into(), DriftMethod::WassersteinNormed),
            ("count".into(), DriftMethod::WassersteinNormed),
            ("city".into(), DriftMethod::JensenShannon),
            ("flag".into(), DriftMethod::JensenShannon),
            ("plan".into(), DriftMethod::JensenShannon),
        ]
    );
    // A numeric column with few distinct values is compared as categories.
    let levels = RecordBatch::try_from_iter([(
        "stars",
        Arc::new(Int32Array::from_iter_values((0..300).map(|i| i % 5))) as ArrayRef,
    )])
    .unwrap();
    let d = TableDriftDetector::fit(&levels, &TableDriftConfig::default()).unwrap();
    assert_eq!(methods(&d), vec![("stars".into(), DriftMethod::ChiSquared)]);
}

#[test]
fn same_data_does_not_drift_and_shifted_data_does() {
    for rows in [800, 5000] {
        let d = TableDriftDetector::fit(&table(rows, 1, 0.0, 0.2), &TableDriftConfig::default())
            .unwrap();
        let same = d.detect(&table(rows, 2, 0.0, 0.2)).unwrap();
        assert!(!same.overall.drifted, "{rows}: {same:#?}");
        assert_eq!(same.overall.drifted_features, 0, "{rows}: {same:#?}");
        let shifted = d.detect(&table(rows, 3, 40.0, 0.6)).unwrap();
        assert!(shifted.feature("amount").unwrap().drifted, "{rows}");
        assert!(shifted.feature("city").unwrap().drifted, "{rows}");
        assert!(!shifted.feature("plan").unwrap().drifted, "{rows}");
        assert_eq!(shifted.overall.drifted_features, 2);
        assert!(
            !shifted.overall.drifted,
            "2 of 5 is under the default share of 0.5"
        );
        assert_eq!(shifted.current_rows, rows);
    }
}

#[test]
fn per_column_ks_equals_the_univariate_test() {
    let reference = table(700, 1, 0.0, 0.2);
    let current = table(600, 9, 3.0, 0.2);
    let d = TableDriftDetector::fit(&reference, &TableDriftConfig::default()).unwrap();
    let report = d.detect(&current).unwrap();
    let col = |b: &RecordBatch| -> Vec<f64> {
        b.column_by_name("amount")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .values()
            .to_vec()
    };
    let ks = ks_2samp(&col(&reference), &col(&current)).unwrap();
    let f = report.feature("amount").unwrap();
    assert_eq!(f.statistic, ks.statistic);
    assert_eq!(f.p_value, Some(ks.p_value));
}

#[test]
fn overrides_replace_methods_and_thresholds() {
    let mut config = TableDriftConfig::default();
    config.overrides.insert(
        "amount".into(),
        ColumnOverride {
            method: Some(DriftMethod::PopulationStabilityIndex),
            threshold: Some(0.2),
        },
    );
    config.overrides.insert(
        "city".into(),
        ColumnOverride {
            method: Some(DriftMethod::JensenShannon),
            threshold: None,
        },
    );
    let d = TableDriftDetector::fit(&table(800, 1, 0.0, 0.2), &config).unwrap();
    let r = d.detect(&table(800, 2, 30.0, 0.2)).unwrap();
    let amount = r.feature("amount").unwrap();
    assert_eq!(
        (amount.method, amount.threshold),
        (DriftMethod::PopulationStabilityIndex, 0.2)
    );
    assert!(amount.drifted && amount.p_value.is_none());
    assert_eq!(r.feature("city").unwrap().threshold, 0.1);

    let bad = |column: &str, o: ColumnOverride| {
        let mut c = TableDriftConfig::default();
        c.overrides.insert(column.into(), o);
        TableDriftDetector::fit(&table(800, 1, 0.0, 0.2), &c)
            .unwrap_err()
            .to_string()
    };
    let msg = bad(
        "city",
        ColumnOverride {
            method: Some(DriftMethod::KolmogorovSmirnov),
            threshold: None,
        },
    );
    assert!(
        msg.contains("column 'city'") && msg.contains("does not apply to a categorical column"),
        "{msg}"
    );
    let msg = bad(
        "amount",
        ColumnOverride {
            method: Some(DriftMethod::Wasserstein),
            threshold: None,
        },
    );
    assert!(msg.contains("needs an explicit threshold"), "{msg}");
    let msg = bad(
        "amount",
        ColumnOverride {
            method: None,
            threshold: Some(1.5),
        },
    );
    assert!(msg.contains("significance level"), "{msg}");
    let msg = bad("nope", ColumnOverride::default());
    assert!(
        msg.contains("column 'nope'") && msg.contains("not compared"),
        "{msg}"
    );
    let msg = bad(
        "amount",
        ColumnOverride {
            method: Some(DriftMethod::MaximumMeanDiscrepancy),
            threshold: None,
        },
    );
    assert!(msg.contains("does not apply"), "{msg}");
}

#[test]
fn corrections_follow_bonferroni_and_benjamini_hochberg() {
    let reference = table(800, 1, 0.0, 0.2);
    let current = table(800, 4, 4.0, 0.25);
    for rule in [
        OverallRule::Bonferroni { alpha: 0.05 },
        OverallRule::BenjaminiHochberg { fdr: 0.05 },
    ] {
        let mut config = TableDriftConfig::default();
        config.rule = rule;
        let r = TableDriftDetector::fit(&reference, &config)
            .unwrap()
            .detect(&current)
            .unwrap();
        let p: Vec<f64> = r.features.iter().map(|f| f.p_value.unwrap()).collect();
        let m = p.len() as f64;
        let expected_threshold = match rule {
            OverallRule::Bonferroni { alpha } => alpha / m,
            OverallRule::BenjaminiHochberg { fdr } => {
                let mut sorted = p.clone();
                sorted.sort_by(f64::total_cmp);
                (0..sorted.len())
                    .rev()
                    .find(|&k| sorted[k] < fdr * (k + 1) as f64 / m)
                    .map_or(fdr / m, |k| fdr * (k + 1) as f64 / m)
            }
            OverallRule::ShareOfDrifted { .. } => unreachable!(),
        };
        assert!(!r.features.is_empty(), "{rule:?}: no feature was compared");
        for f in &r.features {
            assert_eq!(f.threshold, expected_threshold, "{rule:?}");
            assert_eq!(
                f.drifted,
                f.p_value.unwrap() < expected_threshold,
                "{rule:?} {}",
                f.feature
            );
        }
        assert_eq!(r.overall.drifted, r.features.iter().any(|f| f.drifted));
    }
    let mut bad = TableDriftConfig::default();
    bad.rule = OverallRule::ShareOfDrifted { share: 0.0 };
    assert!(
        TableDriftDetector::fit(&reference, &bad)
            .unwrap_err()
            .to_string()
            .contains("(0, 1]")
    );
}

#[test]
fn nulls_nan_unseen_categories_and_schema_changes() {
    let d =
        TableDriftDetector::fit(&table(800, 1, 0.0, 0.2), &TableDriftConfig::default()).unwrap();

    // NaN, infinities and nulls are counted, not compared.
    let mut current = table(800, 2, 0.0, 0.2);
    let mut amount: Vec<Option<f64>> = (0..800).map(|i| Some(i as f64 / 8.0)).collect();
    amount[0] = Some(f64::NAN);
    amount[1] = Some(f64::INFINITY);
    amount[2] = None;
    current = replace(&current, "amount", Arc::new(Float64Array::from(amount)));
    let f = d.detect(&current).unwrap();
    let a = f.feature("amount").unwrap();
    assert_eq!(
        (a.current_count, a.current_nulls, a.current_non_finite),
        (797, 1, 2)
    );
    assert!(a.statistic.is_finite() && a.p_value.unwrap().is_finite());

    // A current column of nulls only: drift, with a note, never NaN.
    let nulls = replace(
        &table(50, 2, 0.0, 0.2),
        "amount",
        Arc::new(Float64Array::from(vec![None::<f64>; 50])),
    );
    let r = d.detect(&nulls).unwrap();
    let a = r.feature("amount").unwrap();
    assert!(
        a.drifted && a.note.as_deref().unwrap().contains("no usable value"),
        "{a:?}"
    );
    assert!(!a.statistic.is_nan());

    // Categories never seen at fit time push towards drift.
    let unseen = replace(
        &table(800, 2, 0.0, 0.2),
        "city",
        Arc::new(StringArray::from_iter_values(
            (0..800).map(|i| format!("city-{}", i % 7)),
        )),
    );
    assert!(d.detect(&unseen).unwrap().feature("city").unwrap().drifted);

    // A wider integer type is still numeric; a string where a number was is not.
    let widened = replace(
        &table(100, 2, 0.0, 0.2),
        "count",
        Arc::new(Int32Array::from_iter_values(0..100)),
    );
    assert!(d.detect(&widened).is_ok());
    let changed = replace(
        &table(100, 2, 0.0, 0.2),
        "amount",
        Arc::new(StringArray::from_iter_values(
            (0..100).map(|i| i.to_string()),
        )),
    );
    let err = d.detect(&changed).unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("column 'amount'") && err.to_string().contains("found Utf8"),
        "{err}"
    );

    let missing = table(100, 2, 0.0, 0.2).project(&[0, 1, 3, 4]).unwrap();
    let err = d.detect(&missing).unwrap_err().to_string();
    assert!(
        err.contains("column 'city'") && err.contains("no such column"),
        "{err}"
    );

    let err = d.detect(&table(0, 2, 0.0, 0.2)).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("no rows"),
        "{err}"
    );
}

#[test]
fn bad_references_are_refused() {
    let all_null = replace(
        &table(50, 1, 0.0, 0.2),
        "amount",
        Arc::new(Float64Array::from(vec![None::<f64>; 50])),
    );
    let msg = TableDriftDetector::fit(&all_null, &TableDriftConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("column 'amount'") && msg.contains("no usable value (50 nulls"),
        "{msg}"
    );
    let msg = TableDriftDetector::fit(&table(0, 1, 0.0, 0.2), &TableDriftConfig::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no rows"), "{msg}");
    let mut config = TableDriftConfig::default();
    config.columns = Some(vec!["nope".into()]);
    let msg = TableDriftDetector::fit(&table(10, 1, 0.0, 0.2), &config)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("column 'nope'"), "{msg}");
    // A single category is fine: no degrees of freedom, no drift on itself.
    let one =
        RecordBatch::try_from_iter([("c", Arc::new(StringArray::from(vec!["a"; 20])) as ArrayRef)])
            .unwrap();
    let d = TableDriftDetector::fit(&one, &TableDriftConfig::default()).unwrap();
    let r = d.detect(&one).unwrap();
    assert!(!r.overall.drifted && r.features[0].p_value == Some(1.0));
}

#[test]
fn the_reference_serializes_is_bounded_and_deterministic() {
    let big = table(50_000, 1, 0.0, 0.2);
    let mut config = TableDriftConfig::default();
    config.max_numeric_sample = 2_000;
    config.max_categories = 2;
    let d = TableDriftDetector::fit(&big, &config).unwrap();
    let json = serde_json::to_string(d.reference()).unwrap();
    assert!(json.len() < 200_000, "reference is {} bytes", json.len());
    let again = TableDriftDetector::fit(&big, &config).unwrap();
    assert_eq!(d.reference(), again.reference());

    let back: TableReference = serde_json::from_str(&json).unwrap();
    let restored = TableDriftDetector::from_reference(back).unwrap();
    let current = table(3000, 5, 2.0, 0.3);
    assert_eq!(
        d.detect(&current).unwrap(),
        restored.detect(&current).unwrap()
    );

    // A tampered reference is refused, not trusted.
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sample = value["columns"][0]["profile"]["sample"]
        .as_array_mut()
        .unwrap();
    sample.reverse();
    let tampered: TableReference = serde_json::from_value(value).unwrap();
    let msg = TableDriftDetector::from_reference(tampered)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("column 'amount'") && msg.contains("inconsistent"),
        "{msg}"
    );
}

#[test]
fn several_batches_compare_as_one_sample() {
    let d =
        TableDriftDetector::fit(&table(2000, 1, 0.0, 0.2), &TableDriftConfig::default()).unwrap();
    let whole = table(1500, 7, 5.0, 0.3);
    let parts = [
        whole.slice(0, 400),
        whole.slice(400, 1000),
        whole.slice(1400, 100),
    ];
    assert_eq!(d.detect(&whole).unwrap(), d.detect_batches(&parts).unwrap());
    assert_eq!(
        d.features(),
        vec!["amount", "count", "city", "flag", "plan"]
    );
}

fn replace(batch: &RecordBatch, name: &str, array: ArrayRef) -> RecordBatch {
    let schema = batch.schema();
    let columns: Vec<(String, ArrayRef)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            (
                f.name().clone(),
                if f.name() == name {
                    array.clone()
                } else {
                    c.clone()
                },
            )
        })
        .collect();
    RecordBatch::try_from_iter(columns).unwrap()
}
