//! Drift on its own: fit a reference on training data, compare a batch with it,
//! then watch a stream in tumbling windows until the data shifts.
//!
//! ```text
//! cargo run --release --example drift_monitor
//! ```

use std::sync::Arc;

use mlops::arrow::RecordBatch;
use mlops::arrow::array::{Float64Array, StringArray};
use mlops::core::drift::{DriftMonitor, TableDriftConfig, TableDriftDetector, Window};
use mlops::core::rng::SplitMix64;
use mlops::prelude::*;

/// `n` rows: an amount around `mean` and a country, the last `foreign` share abroad.
fn batch(rng: &mut SplitMix64, n: usize, mean: f64, foreign: f64) -> Result<RecordBatch> {
    let amount: Vec<f64> = (0..n)
        .map(|_| mean + 20.0 * (rng.next_f64() - 0.5))
        .collect();
    let country: Vec<&str> = (0..n)
        .map(|_| {
            if rng.next_f64() < foreign {
                "abroad"
            } else {
                "home"
            }
        })
        .collect();
    RecordBatch::try_from_iter([
        ("amount", Arc::new(Float64Array::from(amount)) as _),
        ("country", Arc::new(StringArray::from(country)) as _),
    ])
    .map_err(|e| Error::backend("arrow", e))
}

fn main() -> Result<()> {
    let mut rng = SplitMix64::new(7);
    let training = batch(&mut rng, 5_000, 50.0, 0.1)?;
    let detector = TableDriftDetector::fit(&training, &TableDriftConfig::default())?;

    let report = detector.detect(&batch(&mut rng, 2_000, 50.0, 0.1)?)?;
    println!("like training: drifted = {}", report.overall.drifted);
    for f in &report.features {
        println!(
            "  {:<8} {:?} statistic {:.4}",
            f.feature, f.method, f.statistic
        );
    }

    // A stream: eight batches like training, then eight with larger amounts.
    let mut monitor = DriftMonitor::new(Arc::new(detector), Window::TumblingRows(1_000), 1)?;
    for i in 0..16 {
        let mean = if i < 8 { 50.0 } else { 65.0 };
        for window in monitor.observe(&batch(&mut rng, 500, mean, 0.1)?)? {
            let drifted: Vec<&str> = window
                .report
                .features
                .iter()
                .filter(|f| f.drifted)
                .map(|f| f.feature.as_str())
                .collect();
            println!(
                "window of {} rows: drifted = {} {:?}",
                window.rows, window.report.overall.drifted, drifted
            );
        }
    }
    Ok(())
}
