//! The streaming monitor's windows and the multivariate MMD detector.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use chrono::{TimeZone, Utc};
use mlops_core::drift::{
    DriftMonitor, MmdConfig, MmdDriftDetector, TableDriftConfig, TableDriftDetector, Window,
    mmd_test,
};
use mlops_core::{DriftDetector, Error};
use ndarray::Array2;

/// `rows` values of x in [shift, shift + 1) spread evenly, and a category.
fn batch(rows: usize, shift: f64) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| ((i * 7919) % rows) as f64 / rows as f64 + shift),
            )) as ArrayRef,
        ),
        (
            "c",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| ["a", "b"][i % 2]),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

fn detector() -> Arc<TableDriftDetector> {
    Arc::new(TableDriftDetector::fit(&batch(600, 0.0), &TableDriftConfig::default()).unwrap())
}

fn at(seconds: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
}

#[test]
fn tumbling_row_windows_are_exact_and_carry_the_remainder() {
    let mut m = DriftMonitor::new(detector(), Window::TumblingRows(250), 1).unwrap();
    assert!(m.observe(&batch(100, 0.0)).unwrap().is_empty());
    assert!(m.observe(&batch(100, 0.0)).unwrap().is_empty());
    let reports = m.observe(&batch(400, 0.0)).unwrap();
    assert_eq!(
        reports.iter().map(|r| r.rows).collect::<Vec<_>>(),
        vec![250, 250]
    );
    assert_eq!(m.buffered_rows(), 100);
    assert!(reports.iter().all(|r| !r.report.overall.drifted));
    // Drift arrives: the next full window reports it.
    let reports = m.observe(&batch(300, 0.5)).unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].report.feature("x").unwrap().drifted);
    assert_eq!(m.buffered_rows(), 150);
    let last = m.flush().unwrap().unwrap();
    assert_eq!(last.rows, 150);
    assert_eq!(m.buffered_rows(), 0);
    assert!(m.flush().unwrap().is_none());
}

#[test]
fn sliding_row_windows_hold_the_latest_rows_in_bounded_memory() {
    let mut m = DriftMonitor::new(
        detector(),
        Window::SlidingRows {
            rows: 300,
            every: 100,
        },
        1,
    )
    .unwrap();
    assert!(
        m.observe(&batch(200, 0.0)).unwrap().is_empty(),
        "not full yet"
    );
    let r = m.observe(&batch(100, 0.0)).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rows, 300);
    let mut drifted_at = None;
    for step in 0..10 {
        let reports = m.observe(&batch(50, 0.6)).unwrap();
        assert!(m.buffered_rows() <= 300);
        if let Some(r) = reports.first() {
            assert_eq!(r.rows, 300);
            if r.report.feature("x").unwrap().drifted && drifted_at.is_none() {
                drifted_at = Some(step);
            }
        }
    }
    assert!(
        drifted_at.is_some(),
        "the shifted rows entering the window are detected"
    );
}

#[test]
fn time_windows_close_on_time() {
    let mut m = DriftMonitor::new(
        detector(),
        Window::TumblingTime(Duration::from_secs(60)),
        50,
    )
    .unwrap();
    assert!(m.observe_at(&batch(80, 0.0), at(0)).unwrap().is_empty());
    assert!(m.observe_at(&batch(80, 0.0), at(30)).unwrap().is_empty());
    // The first batch of the next minute closes the first window.
    let r = m.observe_at(&batch(20, 0.7), at(61)).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].rows, r[0].start, r[0].end), (160, at(0), at(60)));
    // Too few rows in the second window: skipped when polled after it ended.
    assert!(m.poll_at(at(125)).unwrap().is_empty());
    assert_eq!(m.buffered_rows(), 0);

    let mut s = DriftMonitor::new(
        detector(),
        Window::SlidingTime {
            duration: Duration::from_secs(10),
            every: Duration::from_secs(5),
        },
        1,
    )
    .unwrap();
    assert_eq!(s.observe_at(&batch(100, 0.0), at(0)).unwrap().len(), 1);
    assert!(
        s.observe_at(&batch(100, 0.0), at(2)).unwrap().is_empty(),
        "compared 2 s ago"
    );
    let r = s.observe_at(&batch(100, 0.8), at(11)).unwrap();
    assert_eq!(r[0].rows, 200, "the batch from t=0 left the 10 s window");
    assert!(r[0].report.feature("x").unwrap().drifted);
}

#[test]
fn bad_batches_and_configurations_are_refused() {
    let mut m = DriftMonitor::new(detector(), Window::TumblingRows(100), 1).unwrap();
    m.observe(&batch(50, 0.0)).unwrap();
    let wrong = RecordBatch::try_from_iter([
        ("x", Arc::new(StringArray::from(vec!["1"])) as ArrayRef),
        ("c", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
    ])
    .unwrap();
    let err = m.observe(&wrong).unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
    assert_eq!(m.buffered_rows(), 50, "the bad batch was not buffered");
    assert_eq!(m.observe(&batch(50, 0.0)).unwrap().len(), 1);

    for w in [
        Window::TumblingRows(0),
        Window::SlidingRows { rows: 10, every: 0 },
        Window::TumblingTime(Duration::ZERO),
        Window::SlidingTime {
            duration: Duration::ZERO,
            every: Duration::from_secs(1),
        },
    ] {
        assert!(DriftMonitor::new(detector(), w, 1).is_err(), "{w:?}");
    }
}

fn matrix(rows: usize, shift: f64) -> Array2<f64> {
    Array2::from_shape_fn((rows, 3), |(i, j)| {
        ((i * 31 + j * 17) % 23) as f64 / 23.0 + if j == 0 { shift } else { 0.0 }
    })
}

#[test]
fn mmd_detects_a_shift_in_one_of_several_features() {
    let config = MmdConfig::default();
    let same = mmd_test(matrix(300, 0.0).view(), matrix(200, 0.0).view(), &config).unwrap();
    assert!(same.p_value > 0.05, "{same:?}");
    let shifted = mmd_test(matrix(300, 0.0).view(), matrix(200, 0.3).view(), &config).unwrap();
    assert!(
        shifted.p_value < 0.05 && shifted.statistic > same.statistic,
        "{shifted:?}"
    );
    // Deterministic for a seed; the subsample is bounded.
    let mut capped = config;
    capped.max_samples = 100;
    let a = mmd_test(matrix(1000, 0.0).view(), matrix(1000, 0.3).view(), &capped).unwrap();
    let b = mmd_test(matrix(1000, 0.0).view(), matrix(1000, 0.3).view(), &capped).unwrap();
    assert_eq!(a, b);
    assert_eq!((a.reference_rows, a.current_rows), (100, 100));
}

#[test]
fn mmd_detector_on_arrow_batches() {
    let table = |rows: usize, shift: f64, nulls: usize| {
        let amount: Vec<Option<f64>> = (0..rows)
            .map(|i| {
                if i < nulls {
                    None
                } else {
                    Some(((i * 13) % 101) as f64 * 10.0 + shift)
                }
            })
            .collect();
        RecordBatch::try_from_iter([
            ("amount", Arc::new(Float64Array::from(amount)) as ArrayRef),
            (
                "count",
                Arc::new(Int64Array::from_iter_values(
                    (0..rows).map(|i| ((i * 7) % 11) as i64),
                )) as ArrayRef,
            ),
            (
                "city",
                Arc::new(StringArray::from_iter_values((0..rows).map(|_| "x"))) as ArrayRef,
            ),
        ])
        .unwrap()
    };
    let d = MmdDriftDetector::fit(&table(400, 0.0, 0), None, MmdConfig::default()).unwrap();
    assert_eq!(d.features(), vec!["amount", "count"]);
    let same = d.detect(&table(300, 0.0, 5)).unwrap();
    assert!(!same.overall.drifted, "{same:?}");
    assert_eq!(same.features[0].current_nulls, 5);
    assert_eq!(same.features[0].feature, "amount+count");
    let shifted = d.detect(&table(300, 400.0, 0)).unwrap();
    assert!(shifted.overall.drifted, "{shifted:?}");

    let err = d
        .detect(&table(300, 0.0, 0).project(&[1, 2]).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("column 'amount'"), "{err}");
    let err = d.detect(&table(3, 0.0, 2)).unwrap_err();
    assert!(err.to_string().contains("1 complete rows"), "{err}");
    let err = MmdDriftDetector::fit(
        &table(10, 0.0, 0),
        Some(&["city".to_string()]),
        MmdConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
}

#[test]
fn mmd_bad_input() {
    let c = MmdConfig::default();
    let one = Array2::<f64>::zeros((1, 2));
    assert!(
        mmd_test(one.view(), matrix(10, 0.0).view(), &c)
            .unwrap_err()
            .to_string()
            .contains("at least 2")
    );
    let msg = mmd_test(
        matrix(10, 0.0).view(),
        Array2::<f64>::zeros((10, 2)).view(),
        &c,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("2 columns where the reference has 3"), "{msg}");
    let mut nan = matrix(10, 0.0);
    nan[[3, 1]] = f64::NAN;
    let msg = mmd_test(nan.view(), matrix(10, 0.0).view(), &c)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("row 3, column 1 is NaN"), "{msg}");
    let mut bad = c;
    bad.permutations = 0;
    assert!(mmd_test(matrix(10, 0.0).view(), matrix(10, 0.0).view(), &bad).is_err());
}
