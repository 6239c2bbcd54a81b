//! [`ExperimentTracker`]: runs with immutable params, tags, metric series,
//! artifacts, status and search.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::tracking::{ExperimentTracker, MetricPoint, RunQuery, RunStatus};

use super::expect_err;

/// Runs the tracker contract on an empty `tracker`.
pub async fn conformance(tracker: &dyn ExperimentTracker) {
    let experiment = "conformance-exp";
    let tags = BTreeMap::from([("team".to_owned(), "risk".to_owned())]);
    let run = tracker
        .start_run(experiment, Some("first"), tags)
        .await
        .expect("start a run");
    assert_eq!(run.status, RunStatus::Running, "a new run is running");
    assert_eq!(run.experiment, experiment);
    tracker
        .log_params(
            &run.id,
            BTreeMap::from([("lr".to_owned(), "0.01".to_owned())]),
        )
        .await
        .expect("log params");
    expect_err(
        tracker
            .log_params(
                &run.id,
                BTreeMap::from([("lr".to_owned(), "0.1".to_owned())]),
            )
            .await,
        "changing a logged param",
        |e| matches!(e, Error::Conflict { .. } | Error::InvalidInput { .. }),
    );
    for step in 0..3u64 {
        tracker
            .log_metrics(
                &run.id,
                vec![MetricPoint::now("loss", 1.0 / (step + 1) as f64, step)],
            )
            .await
            .expect("log a metric");
    }
    let history = tracker
        .metric_history(&run.id, "loss")
        .await
        .expect("history");
    assert_eq!(
        history.iter().map(|p| p.step).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "a metric's points come back in step order"
    );
    let name = tracker
        .log_artifact(&run.id, "notes.txt", bytes::Bytes::from_static(b"hello"))
        .await
        .expect("log an artifact");
    assert!(!name.is_empty(), "an artifact gets a name");
    let ended = tracker
        .end_run(&run.id, RunStatus::Finished)
        .await
        .expect("end the run");
    assert_eq!(ended.status, RunStatus::Finished);
    assert!(ended.end_time.is_some(), "an ended run has an end time");
    assert_eq!(ended.params["lr"], "0.01");
    assert_eq!(ended.tags["team"], "risk");
    assert_eq!(
        ended.latest_metrics["loss"],
        1.0 / 3.0,
        "the latest value of each metric"
    );

    let other = tracker
        .start_run(experiment, None, BTreeMap::new())
        .await
        .expect("start a second run");
    assert_ne!(other.id, run.id, "run ids are unique");
    let finished = tracker
        .search_runs(&RunQuery {
            experiment: Some(experiment.into()),
            status: Some(RunStatus::Finished),
            ..RunQuery::default()
        })
        .await
        .expect("search");
    assert_eq!(
        finished.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![run.id.as_str()],
        "search filters by status"
    );
    expect_err(
        tracker.get_run("conformance-no-such-run").await,
        "an unknown run",
        |e| matches!(e, Error::NotFound { .. } | Error::InvalidInput { .. }),
    );
    expect_err(
        tracker
            .start_run("bad experiment name", None, BTreeMap::new())
            .await,
        "an experiment name with spaces",
        |e| matches!(e, Error::InvalidInput { .. }),
    );
}
