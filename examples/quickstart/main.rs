//! The quickstart: the whole lifecycle on a fraud-detection case, end to end.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Generates card transactions with a concept drift half-way; ingests card
//! features; builds the training set point-in-time; trains and registers the
//! champion; serves it over HTTP on loopback with drift monitoring, feedback and an
//! inference log; streams traffic and chargeback feedback through the HTTP API;
//! lets the retraining loop detect the drift, retrain, evaluate and roll out the
//! challenger as a canary; and prints the timeline.
//!
//! Set `MLOPS_ROOT` (a directory, `file://...`, `memory://`, or `s3://...` with the
//! `aws` feature) to choose where it writes; it defaults to
//! `target/mlops-quickstart`.

mod scenario;
mod stack;
mod world;

use std::time::Instant;

use mlops::prelude::Result;

#[tokio::main]
async fn main() -> Result<()> {
    let root = std::env::var("MLOPS_ROOT").unwrap_or_else(|_| {
        let dir = std::path::Path::new("target/mlops-quickstart");
        // A fresh run each time: the scenario's data is regenerated.
        let _ = std::fs::remove_dir_all(dir);
        dir.display().to_string()
    });
    let started = Instant::now();
    println!("mlops quickstart: fraud detection with a concept drift, storage at {root}\n");
    let outcome = scenario::run(scenario::Scenario::full(root), |line| {
        println!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
    })
    .await?;
    println!();
    println!(
        "live ROC AUC of the champion: {:.3} before the drift, {:.3} right after it, {:.3} at the end",
        outcome.auc_before, outcome.auc_after_drift, outcome.auc_end
    );
    println!(
        "drift detected: {}; challengers promoted: {:?}; {:.1}s in all",
        outcome.drift_detected,
        outcome.promoted,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
