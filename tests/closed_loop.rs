//! The quickstart's claims on a smaller run: served data is found to drift, a
//! challenger is retrained, wins, rolls out as a canary and is promoted, and the
//! live quality recovers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/quickstart/scenario.rs"]
#[allow(dead_code)]
mod scenario;
#[path = "../examples/quickstart/stack.rs"]
#[allow(dead_code)]
mod stack;
#[path = "../examples/quickstart/world.rs"]
#[allow(dead_code)]
mod world;

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

mod rollout {
    //! The loop's rollback and guard rails, with the serving side scripted.
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow_schema::DataType;
    use async_trait::async_trait;
    use chrono::{DateTime, TimeZone, Utc};
    use mlops::core::feature::{ApplyOptions, FeatureView};
    use mlops::core::monitoring::{
        DriftSummary, LabelSource, LiveQuality, ModelHealth, TrafficControl, VersionHealth,
    };
    use mlops::core::retrain::{Decision, RetrainConfig, RetrainLoop, RetrainServices, Triggers};
    use mlops::prelude::*;
    use mlops::store::{InMemoryOnlineStore, ObjectFeatureStore};
    use mlops::train::Progress;

    const DAY: i64 = 86_400_000_000;

    #[derive(Debug, Default)]
    struct Scripted {
        health: Mutex<ModelHealth>,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl TrafficControl for Scripted {
        async fn health(&self, _: &str) -> Result<ModelHealth> {
            Ok(self.health.lock().unwrap().clone())
        }
        async fn start_canary(&self, _: &str, stable: u64, canary: u64, weight: f64) -> Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("canary {stable}->{canary} {weight}"));
            Ok(())
        }
        async fn set_canary_weight(&self, _: &str, weight: f64) -> Result<()> {
            self.calls.lock().unwrap().push(format!("weight {weight}"));
            Ok(())
        }
        async fn route_all(&self, _: &str, version: u64) -> Result<()> {
            self.calls.lock().unwrap().push(format!("all {version}"));
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Labels(RecordBatch);

    #[async_trait]
    impl LabelSource for Labels {
        async fn labelled_rows(&self, _: DateTime<Utc>, _: DateTime<Utc>) -> Result<RecordBatch> {
            Ok(self.0.clone())
        }
    }

    fn health(
        champion: u64,
        canary: Option<(u64, f64, f64)>,
        champion_auc: f64,
        drifted: bool,
    ) -> ModelHealth {
        let drift = DriftSummary {
            drifted,
            share_drifted: if drifted { 1.0 } else { 0.0 },
            drifted_features: if drifted { vec!["x".into()] } else { vec![] },
            rows: 500,
            at: Utc::now(),
            windows: 1,
            drifted_windows: u64::from(drifted),
        };
        let live = |auc: f64| LiveQuality {
            rows: 500,
            metrics: BTreeMap::from([("roc_auc".to_owned(), auc)]),
        };
        let mut versions = BTreeMap::from([(
            champion,
            VersionHealth {
                traffic_share: 1.0,
                input_drift: Some(drift),
                prediction_drift: None,
                live: live(champion_auc),
            },
        )]);
        if let Some((v, share, auc)) = canary {
            versions.insert(
                v,
                VersionHealth {
                    traffic_share: share,
                    live: live(auc),
                    ..VersionHealth::default()
                },
            );
        }
        ModelHealth {
            champion: Some(champion),
            canary: canary.map(|c| c.0),
            versions,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_canary_is_rolled_back_and_guard_rails_hold() {
        let root = StoreRoot::open("memory://").unwrap();
        let start = Utc::now().timestamp_micros() / DAY * DAY - 10 * DAY;
        let store = Arc::new(ObjectFeatureStore::new(
            &root,
            Arc::new(InMemoryOnlineStore::new()),
        ));
        let view = FeatureView::builder("e")
            .join_key("id", DataType::Int64)
            .event_time("ts")
            .feature("f", DataType::Float64)
            .build()
            .unwrap();
        store
            .apply_view(view, ApplyOptions::default())
            .await
            .unwrap();
        let n = 2000;
        store
            .ingest(
                "e",
                RecordBatch::try_from_iter([
                    (
                        "id",
                        Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
                    ),
                    (
                        "ts",
                        Arc::new(
                            TimestampMicrosecondArray::from(vec![start; n as usize])
                                .with_timezone("UTC"),
                        ) as ArrayRef,
                    ),
                    (
                        "f",
                        Arc::new(Float64Array::from_iter_values(
                            (0..n).map(|i| (i % 7) as f64),
                        )) as ArrayRef,
                    ),
                ])
                .unwrap(),
            )
            .await
            .unwrap();
        let xs: Vec<f64> = (0..n)
            .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
            .collect();
        let labelled = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            ),
            (
                "event_timestamp",
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..n).map(|i| start + DAY + i * 1000),
                    )
                    .with_timezone("UTC"),
                ) as ArrayRef,
            ),
            ("x", Arc::new(Float64Array::from(xs.clone())) as ArrayRef),
            (
                "y",
                Arc::new(Int64Array::from_iter_values(
                    xs.iter().map(|&x| i64::from(x > 0.1)),
                )) as ArrayRef,
            ),
        ])
        .unwrap();

        let mut c = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
        c.exclude = vec!["id".into(), "event_timestamp".into()];
        c.progress = Progress::Hidden;
        c.learning_rate = 0.05;
        let trainer = Arc::new(TabularTrainer::new(c));
        let training = store
            .get_historical_features(
                labelled.clone(),
                &["e:f".parse().unwrap()],
                HistoricalOptions::default(),
            )
            .await
            .unwrap();
        let champion = trainer.fit(&training, "y").unwrap();
        let audit = Arc::new(ObjectAuditLog::new(&root));
        let registry = Arc::new(ObjectRegistry::new(&root));
        registry
            .register("m", champion.artifact, champion.metadata)
            .await
            .unwrap();
        let traffic = Arc::new(Scripted::default());
        *traffic.health.lock().unwrap() = health(1, None, 0.9, true);

        let mut config = RetrainConfig::new("m", "m", vec!["e:f".parse().unwrap()], "y", "roc_auc");
        config.margin = -1.0; // any challenger wins offline: the live check must catch it
        config.guardrails.min_rows = 100;
        config.guardrails.cooldown = Duration::from_secs(86_400);
        config.guardrails.max_retrains = 5;
        config.guardrails.per = Duration::from_secs(7 * 86_400);
        config.canary.initial_weight = 0.1;
        config.canary.step = 0.5;
        config.canary.min_live_rows = 100;
        config.canary.tolerance = 0.05;
        let services = RetrainServices::new(
            store.clone(),
            Arc::new(Labels(labelled)),
            trainer.clone(),
            Arc::new(TabularLoader::default()),
            registry.clone(),
            traffic.clone(),
            Arc::new(ObjectTracker::new(&root).with_actor("test")),
            audit.clone(),
        )
        .with_snapshots(Arc::new(
            mlops::store::ObjectSnapshotStore::new(&root).with_actor("test"),
        ));
        let mut retrain = RetrainLoop::new(config.clone(), services.clone()).unwrap();
        let at = |d: i64| Utc.timestamp_micros(start + d * DAY).single().unwrap();

        // Drift: a challenger is trained, registered as v2, sent 10% of traffic.
        let d = retrain.tick(at(3)).await.unwrap();
        assert!(matches!(d[0], Decision::Triggered { .. }), "{d:?}");
        assert!(
            d.iter()
                .any(|d| matches!(d, Decision::CanaryStarted { version: 2, .. })),
            "{d:?}"
        );
        assert_eq!(retrain.canary(), Some((1, 2, 0.1)));
        assert_eq!(registry.aliases("m").await.unwrap()["challenger"], 2);
        let version = registry
            .get_version("m", &VersionSelector::Number(2))
            .await
            .unwrap();
        assert_eq!(version.metadata.lineage.parent_version, Some(1));
        assert!(version.metadata.lineage.run_id.is_some());
        // The training set is a snapshot that resolves to the same bytes.
        let snapshot = version
            .metadata
            .lineage
            .dataset_snapshot_id
            .clone()
            .unwrap();
        let snapshots = mlops::store::ObjectSnapshotStore::new(&root).with_actor("test");
        let rows: usize = snapshots
            .read_batches(&snapshot)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 1600, "the 80% of labelled rows not held out");
        assert!(version.metadata.tags.contains_key("mlops.holdout_snapshot"));

        // Live, the canary falls behind: rolled back, all traffic to v1.
        *traffic.health.lock().unwrap() = health(1, Some((2, 0.1, 0.6)), 0.9, true);
        let d = retrain.tick(at(3)).await.unwrap();
        assert!(
            matches!(&d[0], Decision::RolledBack { version: 2, .. }),
            "{d:?}"
        );
        assert_eq!(traffic.calls.lock().unwrap().last().unwrap(), "all 1");
        assert_eq!(retrain.canary(), None);
        assert_eq!(
            registry.aliases("m").await.unwrap().get("champion"),
            None,
            "no promotion"
        );

        // Still drifting the same day: the cool-down holds.
        *traffic.health.lock().unwrap() = health(1, None, 0.9, true);
        let d = retrain.tick(at(3)).await.unwrap();
        assert!(
            matches!(&d[1], Decision::Skipped { reason } if reason.contains("cool-down")),
            "{d:?}"
        );

        // A canary that holds up is ramped, then promoted.
        let d = retrain.tick(at(5)).await.unwrap();
        assert!(
            d.iter()
                .any(|d| matches!(d, Decision::CanaryStarted { version: 3, .. })),
            "{d:?}"
        );
        *traffic.health.lock().unwrap() = health(1, Some((3, 0.1, 0.92)), 0.9, false);
        let d = retrain.tick(at(5)).await.unwrap();
        assert!(
            matches!(d[0], Decision::CanaryRamped { version: 3, weight } if (weight - 0.6).abs() < 1e-9),
            "{d:?}"
        );
        let d = retrain.tick(at(5)).await.unwrap();
        assert!(
            matches!(
                d[0],
                Decision::Promoted {
                    version: 3,
                    previous: 1
                }
            ),
            "{d:?}"
        );
        assert_eq!(registry.aliases("m").await.unwrap()["champion"], 3);

        // Too little data is a guard rail too; no drift, no trigger.
        let mut strict = config.clone();
        strict.guardrails.min_rows = 1_000_000;
        let mut starved = RetrainLoop::new(strict, services.clone()).unwrap();
        *traffic.health.lock().unwrap() = health(3, None, 0.9, true);
        let d = starved.tick(at(6)).await.unwrap();
        assert!(
            matches!(&d[1], Decision::Skipped { reason } if reason.contains("fewer than")),
            "{d:?}"
        );
        *traffic.health.lock().unwrap() = health(3, None, 0.9, false);
        assert!(starved.tick(at(9)).await.unwrap().is_empty());

        // A canary that cannot be judged in time (the champion's labels do not
        // arrive, however good the challenger looks) waits, then is rolled back
        // once its day is up, and the decision says why.
        let mut late = RetrainLoop::new(config.clone(), services.clone()).unwrap();
        *traffic.health.lock().unwrap() = health(3, None, 0.9, true);
        let d = late.tick(at(5)).await.unwrap();
        let challenger = d
            .iter()
            .find_map(|d| match d {
                Decision::CanaryStarted { version, .. } => Some(*version),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no canary started: {d:?}"));
        let mut starving = health(3, Some((challenger, 0.1, 0.99)), 0.9, false);
        starving.versions.get_mut(&3).unwrap().live.rows = 20;
        *traffic.health.lock().unwrap() = starving;
        let day = chrono::Duration::days(1);
        assert!(
            late.tick(at(5) + day / 2).await.unwrap().is_empty(),
            "it waits for the champion's labels"
        );
        assert_eq!(late.canary(), Some((3, challenger, 0.1)));
        let d = late.tick(at(5) + day * 2).await.unwrap();
        assert!(
            matches!(&d[0], Decision::RolledBack { version, reason }
                if *version == challenger
                    && reason.contains("could not be judged")
                    && reason.contains("20 labelled")),
            "{d:?}"
        );
        assert_eq!(traffic.calls.lock().unwrap().last().unwrap(), "all 3");
        assert_eq!(late.canary(), None);

        let actions: Vec<String> = audit
            .entries(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.action)
            .collect();
        for a in [
            "retrain.trigger",
            "retrain.evaluate",
            "rollout.canary_start",
            "rollout.rollback",
            "retrain.skip",
            "rollout.promote",
        ] {
            assert!(
                actions.iter().any(|x| x == a),
                "{a} missing from {actions:?}"
            );
        }

        // Bad loop settings are refused, naming the setting.
        for (mutate, needle) in [
            (
                Box::new(|c: &mut RetrainConfig| c.metric = "auc".into())
                    as Box<dyn Fn(&mut RetrainConfig)>,
                "auc",
            ),
            (
                Box::new(|c: &mut RetrainConfig| c.holdout_fraction = 1.0),
                "holdout_fraction",
            ),
            (
                Box::new(|c: &mut RetrainConfig| c.canary.initial_weight = 0.0),
                "initial_weight",
            ),
        ] {
            let mut bad = config.clone();
            mutate(&mut bad);
            let err = RetrainLoop::new(bad, services.clone()).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
        }

        // New labelled rows trigger a retrain; a challenger that does not win by
        // the margin is rejected; the retrain budget then holds.
        *traffic.health.lock().unwrap() = health(3, None, 0.9, false);
        let mut budget = config.clone();
        budget.triggers = Triggers::default(); // no drift trigger
        budget.triggers.min_new_rows = Some(1000);
        budget.guardrails.min_rows = 100;
        budget.guardrails.cooldown = Duration::ZERO;
        budget.guardrails.max_retrains = 1;
        budget.guardrails.per = Duration::from_secs(30 * 86_400);
        budget.margin = 1.0;
        let mut l = RetrainLoop::new(budget, services.clone()).unwrap();
        let d = l.tick(at(6)).await.unwrap();
        assert!(
            matches!(&d[0], Decision::Triggered { reasons } if reasons[0].contains("new labelled rows")),
            "{d:?}"
        );
        assert!(matches!(d.last(), Some(Decision::Rejected { .. })), "{d:?}");
        let d = l.tick(at(7)).await.unwrap();
        assert!(
            matches!(&d[1], Decision::Skipped { reason } if reason.contains("retrains already")),
            "{d:?}"
        );

        // A schedule triggers once its period has passed.
        let mut scheduled = config.clone();
        scheduled.triggers = Triggers::default(); // no drift trigger
        scheduled.triggers.every = Some(Duration::from_secs(2 * 86_400));
        scheduled.margin = 1.0;
        let mut l = RetrainLoop::new(scheduled, services).unwrap();
        assert!(l.tick(at(6)).await.unwrap().is_empty(), "the clock starts");
        assert!(l.tick(at(7)).await.unwrap().is_empty());
        let d = l.tick(at(9)).await.unwrap();
        assert!(
            matches!(&d[0], Decision::Triggered { reasons } if reasons[0].contains("scheduled")),
            "{d:?}"
        );
    }
}
