//! Model selection and tracked training, recorded in the object-store tracker.

use std::sync::Arc;
use std::time::Duration;

use mlops_core::tracking::RunQuery;
use mlops_core::{ExperimentTracker, RunStatus, Task};
use mlops_store::{ObjectTracker, StoreRoot};
use mlops_train::{
    ModelSpec, OptimizerKind, SearchBudget, SearchConfig, SearchSpace, SearchStrategy,
    TabularTrainer, fit_tracked, search,
};

use crate::data;
use crate::training::config;

fn tracker() -> Arc<dyn ExperimentTracker> {
    Arc::new(ObjectTracker::new(&StoreRoot::open("memory:///").unwrap()).with_actor("test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_training_records_every_epoch() {
    let tracker = tracker();
    let data = data::binary(800, 21);
    let mut cfg = config(Task::BinaryClassification, ModelSpec::Linear);
    cfg.early_stopping = None;
    cfg.epochs = 4;
    let (outcome, run) = fit_tracked(
        TabularTrainer::new(cfg),
        data,
        "is_fraud",
        tracker.clone(),
        "fraud",
        Some("linear"),
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(run.status, RunStatus::Finished);
    assert_eq!(run.params["model"], "linear");
    assert_eq!(run.params["best_epoch"], "4");
    let losses = tracker.metric_history(&run.id, "train_loss").await.unwrap();
    assert_eq!(
        losses.iter().map(|p| p.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let auc = tracker
        .metric_history(&run.id, "valid_roc_auc")
        .await
        .unwrap();
    assert_eq!(auc.len(), 4);
    assert_eq!(
        run.latest_metrics["roc_auc"],
        outcome.trained.report.metrics["roc_auc"]
    );

    // A failing run is marked failed and the training error returned.
    let bad = data::multiclass(100, 1);
    let err = fit_tracked(
        TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::Linear)),
        bad,
        "species",
        tracker.clone(),
        "fraud",
        Some("bad"),
        Default::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("3 classes"), "{err}");
    let failed = tracker
        .search_runs(&RunQuery {
            status: Some(RunStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
}

fn space() -> SearchSpace {
    SearchSpace {
        models: vec![ModelSpec::Linear, ModelSpec::mlp([16])],
        learning_rates: vec![0.01, 1e-5],
        weight_decays: vec![0.0],
        batch_sizes: vec![64],
        optimizers: vec![OptimizerKind::AdamW],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_search_tracks_trials_and_picks_the_best() {
    let tracker = tracker();
    let data = data::binary(1000, 22);
    let mut base = config(Task::BinaryClassification, ModelSpec::Linear);
    base.epochs = 3;
    let cfg = SearchConfig {
        base,
        space: space(),
        strategy: SearchStrategy::Grid,
        budget: SearchBudget::default(),
        metric: "roc_auc".into(),
    };
    let out = search(
        cfg,
        data,
        "is_fraud",
        Some((tracker.clone(), "fraud".into())),
        "s1",
    )
    .await
    .unwrap();
    assert_eq!(out.trials.len(), 4);
    let best = &out.trials[out.best_trial];
    assert!(out.trials.iter().all(|t| t.score <= best.score));
    // A learning rate of 1e-5 for 3 epochs barely moves: the best trial uses 0.01.
    assert_eq!(best.config.learning_rate, 0.01);
    assert_eq!(out.best.trained.report, best.report);
    let runs = tracker
        .search_runs(&RunQuery {
            tags: [("mlops.search".to_owned(), "s1".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 4);
    assert!(
        runs.iter()
            .all(|r| r.latest_metrics.contains_key("roc_auc"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_bad_searches() {
    let data = data::binary(600, 23);
    let mut base = config(Task::BinaryClassification, ModelSpec::Linear);
    base.epochs = 2;
    let cfg = |strategy, budget, metric: &str| SearchConfig {
        base: base.clone(),
        space: space(),
        strategy,
        budget,
        metric: metric.into(),
    };
    let two = SearchBudget {
        max_trials: Some(2),
        max_duration: None,
    };
    let a = search(
        cfg(SearchStrategy::Random { seed: 5 }, two, "log_loss"),
        data.clone(),
        "is_fraud",
        None,
        "r",
    )
    .await
    .unwrap();
    let b = search(
        cfg(SearchStrategy::Random { seed: 5 }, two, "log_loss"),
        data.clone(),
        "is_fraud",
        None,
        "r",
    )
    .await
    .unwrap();
    assert_eq!(a.trials.len(), 2);
    let configs = |o: &mlops_train::SearchOutcome| {
        o.trials
            .iter()
            .map(|t| t.config.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        configs(&a),
        configs(&b),
        "a seeded random search is reproducible"
    );

    let timed = SearchBudget {
        max_trials: None,
        max_duration: Some(Duration::ZERO),
    };
    let err = search(
        cfg(SearchStrategy::Grid, timed, "roc_auc"),
        data.clone(),
        "is_fraud",
        None,
        "t",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no trial"), "{err}");
    let err = search(
        cfg(SearchStrategy::Grid, two, "rmse"),
        data.clone(),
        "is_fraud",
        None,
        "m",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("rmse"), "{err}");
    let mut empty = cfg(SearchStrategy::Grid, two, "roc_auc");
    empty.space.models.clear();
    let err = search(empty, data.clone(), "is_fraud", None, "e")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("models"), "{err}");
    let err = search(
        cfg(SearchStrategy::Grid, two, "roc_auc"),
        data,
        "missing",
        None,
        "x",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
