//! Experiment tracking on every backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use mlops_core::Error;
use mlops_core::audit::{AuditLog, ChainVerdict};
use mlops_core::model::{Comparison, MetricFilter};
use mlops_core::tracking::{ExperimentTracker, MetricPoint, RunQuery, RunStatus};
use mlops_store::{ObjectAuditLog, ObjectTracker};

use crate::roots;

#[tokio::test]
async fn runs_params_metrics_artifacts_and_search() {
    for root in roots("tracking") {
        let audit = Arc::new(ObjectAuditLog::new(&root));
        let t = ObjectTracker::new(&root)
            .with_audit(audit.clone())
            .with_actor("ci");
        let run = t
            .start_run(
                "fraud",
                Some("mlp"),
                BTreeMap::from([("kind".into(), "mlp".into())]),
            )
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Running);
        t.log_params(
            &run.id,
            BTreeMap::from([("lr".into(), "0.01".into()), ("hidden".into(), "64".into())]),
        )
        .await
        .unwrap();
        t.log_params(&run.id, BTreeMap::from([("lr".into(), "0.01".into())]))
            .await
            .unwrap();
        let err = t
            .log_params(&run.id, BTreeMap::from([("lr".into(), "0.1".into())]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { .. }) && err.to_string().contains("param 'lr'"),
            "{err}"
        );

        // Many points, appended in batches.
        for epoch in 0..20u64 {
            let points: Vec<MetricPoint> = (0..50)
                .map(|b| {
                    MetricPoint::now("loss", 1.0 / (1 + epoch * 50 + b) as f64, epoch * 50 + b)
                })
                .chain([MetricPoint::now(
                    "val_auc",
                    0.5 + epoch as f64 / 50.0,
                    epoch,
                )])
                .collect();
            t.log_metrics(&run.id, points).await.unwrap();
        }
        let history = t.metric_history(&run.id, "loss").await.unwrap();
        assert_eq!(history.len(), 1000);
        assert!(history.windows(2).all(|w| w[0].step <= w[1].step));
        let location = t
            .log_artifact(&run.id, "model.bin", vec![1, 2, 3].into())
            .await
            .unwrap();
        assert!(location.contains("artifacts/model.bin"), "{location}");
        let err = t
            .log_artifact(&run.id, "model.bin", vec![4].into())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
        t.set_tags(
            &run.id,
            BTreeMap::from([("stage".into(), "candidate".into())]),
        )
        .await
        .unwrap();
        let ended = t.end_run(&run.id, RunStatus::Finished).await.unwrap();
        assert_eq!(ended.latest_metrics["val_auc"], 0.5 + 19.0 / 50.0);
        assert_eq!(ended.latest_metrics["loss"], 1.0 / 1000.0);
        assert_eq!(ended.artifacts, vec!["model.bin"]);
        assert!(ended.end_time.is_some());

        // Ended runs take nothing more.
        let err = t
            .log_metrics(&run.id, vec![MetricPoint::now("loss", 0.1, 9999)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { .. }) && err.to_string().contains("ended"),
            "{err}"
        );
        assert!(t.end_run(&run.id, RunStatus::Failed).await.is_err());

        let other = t.start_run("fraud", None, BTreeMap::new()).await.unwrap();
        t.log_metrics(&other.id, vec![MetricPoint::now("val_auc", 0.6, 1)])
            .await
            .unwrap();
        t.start_run("churn", None, BTreeMap::new()).await.unwrap();
        assert_eq!(t.search_runs(&RunQuery::default()).await.unwrap().len(), 3);
        let q = RunQuery {
            experiment: Some("fraud".into()),
            metrics: vec![MetricFilter {
                metric: "val_auc".into(),
                op: Comparison::Ge,
                value: 0.8,
            }],
            ..Default::default()
        };
        let found = t.search_runs(&q).await.unwrap();
        assert_eq!(
            found.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            vec![run.id.clone()]
        );
        let running = RunQuery {
            status: Some(RunStatus::Running),
            ..Default::default()
        };
        assert_eq!(t.search_runs(&running).await.unwrap().len(), 2);
        assert_eq!(t.get_run(&run.id).await.unwrap(), ended);

        let actions: Vec<String> = audit
            .entries(1, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.action)
            .collect();
        for a in [
            "start_run",
            "log_params",
            "log_artifact",
            "set_tags",
            "end_run",
        ] {
            assert!(
                actions.iter().any(|x| x == a),
                "{a} missing from {actions:?}"
            );
        }
        assert!(matches!(
            audit.verify().await.unwrap(),
            ChainVerdict::Intact { .. }
        ));
    }
}

#[tokio::test]
async fn bad_input_is_refused() {
    for root in roots("tracking-bad") {
        let t = ObjectTracker::new(&root).with_actor("ci");
        assert!(matches!(
            t.start_run("bad name", None, BTreeMap::new())
                .await
                .unwrap_err(),
            Error::InvalidInput { .. }
        ));
        assert!(matches!(
            t.get_run("nope").await.unwrap_err(),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            t.get_run("../x").await.unwrap_err(),
            Error::InvalidInput { .. }
        ));
        let run = t.start_run("e", None, BTreeMap::new()).await.unwrap();
        let err = t
            .log_metrics(&run.id, vec![MetricPoint::now("loss", f64::NAN, 3)])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("metric 'loss' at step 3")
                && err.to_string().contains("not finite"),
            "{err}"
        );
        let err = t
            .log_params(&run.id, BTreeMap::from([("p".into(), "v".repeat(10_000))]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("param 'p'"), "{err}");
        assert!(t.end_run(&run.id, RunStatus::Running).await.is_err());
        assert!(
            t.log_artifact(&run.id, "../escape", vec![1].into())
                .await
                .is_err()
        );
        assert!(
            t.metric_history(&run.id, "loss").await.unwrap().is_empty(),
            "nothing refused was stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_to_one_run_lose_nothing() {
    for root in roots("tracking-concurrent") {
        let t = Arc::new(ObjectTracker::new(&root).with_actor("ci"));
        let run = t.start_run("e", None, BTreeMap::new()).await.unwrap();
        let mut handles = Vec::new();
        for w in 0..8 {
            let (t, id) = (t.clone(), run.id.clone());
            handles.push(tokio::spawn(async move {
                t.log_params(&id, BTreeMap::from([(format!("p{w}"), w.to_string())]))
                    .await
                    .unwrap();
                t.set_tags(&id, BTreeMap::from([(format!("t{w}"), "x".into())]))
                    .await
                    .unwrap();
                t.log_metrics(&id, vec![MetricPoint::now(format!("m{w}"), w as f64, 1)])
                    .await
                    .unwrap();
            }));
        }
        for (w, h) in handles.into_iter().enumerate() {
            crate::join(&format!("writer {w}"), h).await;
        }
        let r = t.get_run(&run.id).await.unwrap();
        assert_eq!(
            (r.params.len(), r.tags.len(), r.latest_metrics.len()),
            (8, 8, 8)
        );
    }
}
