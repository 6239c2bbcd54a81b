//! The quickstart's claims on a smaller run: served data is found to drift, a
//! challenger is retrained, wins, rolls out as a canary and is promoted, and the
//! live quality recovers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/quickstart/scenario.rs"]
#[allow(dead_code)]
mod scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_detected_and_a_retrained_challenger_restores_quality() {
    let run = scenario::Scenario {
        root: "memory://".into(),
        cards: 400,
        tx_per_day: 1200,
        history_days: 6,
        days_before_drift: 2,
        days_after_drift: 7,
        rows_per_request: 40,
    };
    let outcome = scenario::run(run, |line| println!("{line}")).await.unwrap();
    assert!(outcome.drift_detected, "the drift was detected");
    assert!(!outcome.promoted.is_empty(), "a challenger was promoted");
    assert!(outcome.auc_before > 0.8, "{outcome:?}");
    assert!(
        outcome.auc_after_drift < 0.65,
        "the drift hurt: {outcome:?}"
    );
    assert!(
        outcome.auc_end > outcome.auc_after_drift + 0.2,
        "quality recovered: {outcome:?}"
    );
    assert!(outcome.logged > 0);
    assert!(
        outcome
            .timeline
            .iter()
            .any(|l| l.contains("verified intact"))
    );
}
