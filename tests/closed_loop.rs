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
    use mlops::core::model::VersionStatus;
    use mlops::core::monitoring::{
        DriftSummary, LabelSource, LiveQuality, ModelHealth, TrafficControl, VersionHealth,
    };
    use mlops::core::retrain::{
        Decision, InMemoryLoopStates, RetrainConfig, RetrainLoop, RetrainServices, Triggers,
    };
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
            ..LiveQuality::default()
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

    /// The world a loop works in: a feature view with one feature, 2,000
    /// labelled rows, and a champion v1 of model `m` trained on them.
    struct World {
        root: StoreRoot,
        start: i64,
        store: Arc<ObjectFeatureStore>,
        labelled: RecordBatch,
        trainer: Arc<TabularTrainer>,
        audit: Arc<ObjectAuditLog>,
        registry: Arc<ObjectRegistry>,
    }

    /// The same services with a loop state of their own: an independent loop.
    fn own_state(services: &RetrainServices) -> RetrainServices {
        services
            .clone()
            .with_state(Arc::new(InMemoryLoopStates::new()))
    }

    async fn world(root: StoreRoot) -> World {
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
        World {
            root,
            start,
            store,
            labelled,
            trainer,
            audit,
            registry,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_canary_is_rolled_back_and_guard_rails_hold() {
        let World {
            root,
            start,
            store,
            labelled,
            trainer,
            audit,
            registry,
        } = world(StoreRoot::open("memory://").unwrap()).await;
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
        // Nothing dangles: the rolled-back version lost its alias and is archived.
        assert_eq!(registry.aliases("m").await.unwrap().get("challenger"), None);
        let v2 = registry
            .get_version("m", &VersionSelector::Number(2))
            .await
            .unwrap();
        assert_eq!(v2.status, VersionStatus::Archived);
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
        let mut starved = RetrainLoop::new(strict, own_state(&services)).unwrap();
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
        let mut late = RetrainLoop::new(config.clone(), own_state(&services)).unwrap();
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
            (
                Box::new(|c: &mut RetrainConfig| c.lease_ttl = Duration::ZERO),
                "lease_ttl",
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
        let mut l = RetrainLoop::new(budget, own_state(&services)).unwrap();
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
        let mut l = RetrainLoop::new(scheduled, own_state(&services)).unwrap();
        assert!(l.tick(at(6)).await.unwrap().is_empty(), "the clock starts");
        assert!(l.tick(at(7)).await.unwrap().is_empty());
        let d = l.tick(at(9)).await.unwrap();
        assert!(
            matches!(&d[0], Decision::Triggered { reasons } if reasons[0].contains("scheduled")),
            "{d:?}"
        );
    }

    /// Loss statistics of `n` predictions whose loss averages `mean`.
    fn losses(n: usize, mean: f64) -> mlops::core::experiment::ArmStats {
        let values: Vec<f64> = (0..n)
            .map(|i| mean + if i % 2 == 0 { 0.05 } else { -0.05 })
            .collect();
        mlops::core::experiment::ArmStats::of(&values).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_canary_judged_on_evidence_waits_ramps_and_rolls_back_stating_why() {
        use mlops::core::retrain::CanaryEvidence;
        let w = world(StoreRoot::open("memory://").unwrap()).await;
        let traffic = Arc::new(Scripted::default());
        *traffic.health.lock().unwrap() = health(1, None, 0.9, true);
        let mut config = RetrainConfig::new("m", "m", vec!["e:f".parse().unwrap()], "y", "roc_auc");
        config.margin = -1.0;
        config.guardrails.min_rows = 100;
        config.guardrails.cooldown = Duration::ZERO;
        config.canary.initial_weight = 0.1;
        config.canary.step = 0.5;
        config.canary.min_live_rows = 100;
        config.canary.evidence = Some(CanaryEvidence::on_loss(0.05, 0.0, 0.05).unwrap());
        let services = RetrainServices::new(
            w.store.clone(),
            Arc::new(Labels(w.labelled.clone())),
            w.trainer.clone(),
            Arc::new(TabularLoader::default()),
            w.registry.clone(),
            traffic.clone(),
            Arc::new(ObjectTracker::new(&w.root).with_actor("test")),
            w.audit.clone(),
        );
        let mut l = RetrainLoop::new(config.clone(), services.clone()).unwrap();
        let at = |d: i64| Utc.timestamp_micros(w.start + d * DAY).single().unwrap();
        let d = l.tick(at(3)).await.unwrap();
        assert!(
            d.iter()
                .any(|d| matches!(d, Decision::CanaryStarted { version: 2, .. })),
            "{d:?}"
        );
        let with_loss = |champion: (usize, f64), canary: (usize, f64)| {
            let mut h = health(1, Some((2, 0.1, 0.9)), 0.9, false);
            h.versions.get_mut(&1).unwrap().live.loss = losses(champion.0, champion.1);
            h.versions.get_mut(&2).unwrap().live.loss = losses(canary.0, canary.1);
            h
        };
        // Too few observations, then enough but too close to call: it waits.
        *traffic.health.lock().unwrap() = with_loss((2000, 0.20), (50, 0.10));
        assert!(l.tick(at(3)).await.unwrap().is_empty());
        *traffic.health.lock().unwrap() = with_loss((2000, 0.20), (200, 0.199));
        assert!(l.tick(at(3)).await.unwrap().is_empty(), "undecided");
        // A clearly lower loss: judged (the record states the statistics), ramped.
        *traffic.health.lock().unwrap() = with_loss((2000, 0.20), (2000, 0.15));
        let d = l.tick(at(3)).await.unwrap();
        assert!(
            matches!(&d[0], Decision::Judged { version: 2, evidence }
                if evidence.contains("loss: lift +0.05") && evidence.contains("always-valid 95% interval")
                    && evidence.contains("better than the champion")),
            "{d:?}"
        );
        assert!(
            matches!(d[1], Decision::CanaryRamped { version: 2, .. }),
            "{d:?}"
        );
        // A clearly higher loss: rolled back at once, saying why.
        *traffic.health.lock().unwrap() = with_loss((2000, 0.20), (2000, 0.30));
        let d = l.tick(at(3)).await.unwrap();
        assert!(matches!(&d[0], Decision::Judged { .. }), "{d:?}");
        assert!(
            matches!(&d[1], Decision::RolledBack { version: 2, reason }
                if reason.contains("live loss") && reason.contains("worse than the champion")),
            "{d:?}"
        );
        let actions: Vec<String> = w
            .audit
            .entries(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.action)
            .collect();
        assert!(
            actions.iter().filter(|a| *a == "rollout.judge").count() == 2,
            "{actions:?}"
        );
        // An evidence rule with bad settings is refused when the loop is made.
        let mut bad = config.clone();
        bad.canary.evidence = Some(CanaryEvidence::on_loss(0.05, 0.0, 0.05).unwrap());
        if let Some(e) = bad.canary.evidence.as_mut() {
            e.test.alpha = 2.0;
        }
        let err = RetrainLoop::new(bad, services).unwrap_err();
        assert!(err.to_string().contains("alpha"), "{err}");
        assert!(CanaryEvidence::on_business_metric("conversion", 0.05, 0.0, 0.0, true).is_err());
    }

    mod durable {
        //! The loop across crashes and replicas: its state and lease on the
        //! storage root.
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        use mlops::core::model::{
            ModelArtifact, ModelMetadata, ModelRegistry, ModelVersion, VersionQuery,
        };
        use mlops::core::retrain::{LoopPhase, LoopState, LoopStateStore};
        use mlops::store::ObjectLoopStates;

        use super::*;

        /// A process that dies at its `at`-th side effect (registry writes,
        /// traffic changes, loop state writes): that call fails, having taken
        /// effect when `after`, and every later call of the process fails.
        #[derive(Debug)]
        struct Crash {
            at: usize,
            after: bool,
            effects: AtomicUsize,
            dead: AtomicBool,
        }

        fn killed() -> Error {
            Error::backend("test", "the process was killed")
        }

        impl Crash {
            fn at(at: usize, after: bool) -> Arc<Self> {
                Arc::new(Self {
                    at,
                    after,
                    effects: AtomicUsize::new(0),
                    dead: AtomicBool::new(false),
                })
            }

            fn never() -> Arc<Self> {
                Self::at(usize::MAX, false)
            }

            fn dead(&self) -> bool {
                self.dead.load(Ordering::SeqCst)
            }

            fn alive(&self) -> Result<()> {
                if self.dead() { Err(killed()) } else { Ok(()) }
            }

            async fn effect<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
                self.alive()?;
                let n = self.effects.fetch_add(1, Ordering::SeqCst) + 1;
                if n < self.at {
                    return f.await;
                }
                self.dead.store(true, Ordering::SeqCst);
                if self.after {
                    f.await?;
                }
                Err(killed())
            }
        }

        #[derive(Debug)]
        struct CrashRegistry {
            inner: Arc<dyn ModelRegistry>,
            crash: Arc<Crash>,
        }

        #[async_trait]
        impl ModelRegistry for CrashRegistry {
            async fn register(
                &self,
                model: &str,
                artifact: ModelArtifact,
                metadata: ModelMetadata,
            ) -> Result<ModelVersion> {
                self.crash
                    .effect(self.inner.register(model, artifact, metadata))
                    .await
            }
            async fn get_version(&self, model: &str, s: &VersionSelector) -> Result<ModelVersion> {
                self.crash.alive()?;
                self.inner.get_version(model, s).await
            }
            async fn load_artifact(
                &self,
                model: &str,
                s: &VersionSelector,
            ) -> Result<(ModelVersion, ModelArtifact)> {
                self.crash.alive()?;
                self.inner.load_artifact(model, s).await
            }
            async fn set_alias(&self, model: &str, alias: &str, version: u64) -> Result<()> {
                self.crash
                    .effect(self.inner.set_alias(model, alias, version))
                    .await
            }
            async fn delete_alias(&self, model: &str, alias: &str) -> Result<()> {
                self.crash
                    .effect(self.inner.delete_alias(model, alias))
                    .await
            }
            async fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>> {
                self.crash.alive()?;
                self.inner.aliases(model).await
            }
            async fn list_models(&self) -> Result<Vec<String>> {
                self.crash.alive()?;
                self.inner.list_models().await
            }
            async fn list_versions(&self, model: &str) -> Result<Vec<ModelVersion>> {
                self.crash.alive()?;
                self.inner.list_versions(model).await
            }
            async fn search_versions(&self, q: &VersionQuery) -> Result<Vec<ModelVersion>> {
                self.crash.alive()?;
                self.inner.search_versions(q).await
            }
            async fn archive_version(&self, model: &str, version: u64) -> Result<ModelVersion> {
                self.crash
                    .effect(self.inner.archive_version(model, version))
                    .await
            }
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Route {
            All(u64),
            Canary {
                stable: u64,
                canary: u64,
                weight: f64,
            },
        }

        /// The serving side, which outlives the loop's processes: its
        /// routing, and live quality per arm (the champion's 0.9, the
        /// canary's `canary_auc`) over 500 labelled predictions each.
        #[derive(Debug)]
        struct Served {
            route: Mutex<Route>,
            canary_auc: f64,
        }

        impl Served {
            fn route(&self) -> Route {
                *self.route.lock().unwrap()
            }
        }

        #[derive(Debug)]
        struct CrashTraffic {
            inner: Arc<Served>,
            crash: Arc<Crash>,
        }

        #[async_trait]
        impl TrafficControl for CrashTraffic {
            async fn health(&self, _: &str) -> Result<ModelHealth> {
                self.crash.alive()?;
                Ok(match self.inner.route() {
                    Route::All(v) => health(v, None, 0.9, true),
                    Route::Canary {
                        stable,
                        canary,
                        weight,
                    } => health(
                        stable,
                        Some((canary, weight, self.inner.canary_auc)),
                        0.9,
                        true,
                    ),
                })
            }
            async fn start_canary(
                &self,
                _: &str,
                stable: u64,
                canary: u64,
                weight: f64,
            ) -> Result<()> {
                self.crash
                    .effect(async {
                        *self.inner.route.lock().unwrap() = Route::Canary {
                            stable,
                            canary,
                            weight,
                        };
                        Ok(())
                    })
                    .await
            }
            async fn set_canary_weight(&self, _: &str, weight: f64) -> Result<()> {
                self.crash
                    .effect(async {
                        match &mut *self.inner.route.lock().unwrap() {
                            Route::Canary { weight: w, .. } => {
                                *w = weight;
                                Ok(())
                            }
                            Route::All(_) => Err(Error::invalid_input("weight", "no canary")),
                        }
                    })
                    .await
            }
            async fn route_all(&self, _: &str, version: u64) -> Result<()> {
                self.crash
                    .effect(async {
                        *self.inner.route.lock().unwrap() = Route::All(version);
                        Ok(())
                    })
                    .await
            }
        }

        #[derive(Debug)]
        struct CrashStates {
            inner: Arc<dyn LoopStateStore>,
            crash: Arc<Crash>,
        }

        #[async_trait]
        impl LoopStateStore for CrashStates {
            async fn load(&self, key: &str) -> Result<Option<LoopState>> {
                self.crash.alive()?;
                self.inner.load(key).await
            }
            async fn save(&self, key: &str, state: &LoopState) -> Result<bool> {
                self.crash.effect(self.inner.save(key, state)).await
            }
        }

        fn config() -> RetrainConfig {
            let mut c = RetrainConfig::new("m", "m", vec!["e:f".parse().unwrap()], "y", "roc_auc");
            c.margin = -1.0; // every challenger wins offline; live decides
            c.guardrails.min_rows = 100;
            c.guardrails.cooldown = Duration::from_secs(30 * 86_400); // one retrain per test
            c.canary.initial_weight = 0.1;
            c.canary.step = 0.5;
            c.canary.min_live_rows = 100;
            c.canary.tolerance = 0.05;
            c.lease_ttl = Duration::from_secs(3600);
            c
        }

        /// One process of the loop: its own handles on the shared root.
        fn process(
            w: &World,
            root: &StoreRoot,
            served: &Arc<Served>,
            crash: Arc<Crash>,
            instance: &str,
        ) -> RetrainLoop {
            let services = RetrainServices::new(
                w.store.clone(),
                Arc::new(Labels(w.labelled.clone())),
                w.trainer.clone(),
                Arc::new(TabularLoader::default()),
                Arc::new(CrashRegistry {
                    inner: Arc::new(ObjectRegistry::new(root)),
                    crash: crash.clone(),
                }),
                Arc::new(CrashTraffic {
                    inner: served.clone(),
                    crash: crash.clone(),
                }),
                Arc::new(ObjectTracker::new(root).with_actor("test")),
                Arc::new(ObjectAuditLog::new(root)),
            )
            .with_state(Arc::new(CrashStates {
                inner: Arc::new(ObjectLoopStates::new(root)),
                crash,
            }));
            RetrainLoop::new(config(), services)
                .unwrap()
                .with_instance(instance)
        }

        fn settled(d: &[Decision]) -> bool {
            d.iter().any(|d| {
                matches!(
                    d,
                    Decision::Promoted { .. }
                        | Decision::RolledBack { .. }
                        | Decision::Abandoned { .. }
                )
            })
        }

        /// The audit entries of the loop: (action, decision, instance).
        async fn story(w: &World) -> Vec<(String, String, String)> {
            w.audit
                .entries(0, 10_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.event.actor == "retrain-loop")
                .map(|e| {
                    let detail = |k: &str| e.event.details.get(k).cloned().unwrap_or_default();
                    (
                        e.event.action.clone(),
                        detail("decision"),
                        detail("instance"),
                    )
                })
                .collect()
        }

        /// Whatever happened, the end state is whole: the loop watches, the
        /// `champion` alias and all traffic name the same version, no
        /// `challenger` alias is left, every other version but the original
        /// champion is archived, and the audit log says why for each.
        /// Returns the champion.
        async fn assert_whole(w: &World, served: &Served, context: &str) -> u64 {
            let state = ObjectLoopStates::new(&w.root)
                .load("m")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(state.phase, LoopPhase::Watching, "{context}: {state:?}");
            let aliases = w.registry.aliases("m").await.unwrap();
            assert_eq!(aliases.get("challenger"), None, "{context}: {aliases:?}");
            let champion = aliases["champion"];
            assert_eq!(served.route(), Route::All(champion), "{context}");
            let story = story(w).await;
            let told = |action: &str, needle: &str| {
                story
                    .iter()
                    .any(|(a, d, _)| a == action && d.contains(needle))
            };
            for v in w.registry.list_versions("m").await.unwrap() {
                let n = v.version;
                if n == champion || n == 1 {
                    assert_eq!(v.status, VersionStatus::Active, "{context}: v{n}");
                    continue;
                }
                assert_eq!(v.status, VersionStatus::Archived, "{context}: v{n}");
                assert!(
                    told("rollout.rollback", &format!("v{n}"))
                        || told("retrain.abandon", &format!("v{n}")),
                    "{context}: nothing says why v{n} was archived: {story:?}"
                );
            }
            if champion != 1 {
                assert!(
                    told("rollout.promote", &format!("v{champion} promoted")),
                    "{context}: {story:?}"
                );
            }
            champion
        }

        /// Runs a rollout whose process dies at its `at`-th side effect, then
        /// restarts it as another instance once the lease has expired.
        /// Returns the end state's champion, or `None` when the process
        /// finished without reaching `at`.
        async fn crash_and_restart(at: usize, after: bool, canary_auc: f64) -> Option<u64> {
            let w = world(StoreRoot::open("memory://").unwrap()).await;
            w.registry.set_alias("m", "champion", 1).await.unwrap();
            let served = Arc::new(Served {
                route: Mutex::new(Route::All(1)),
                canary_auc,
            });
            let crash = Crash::at(at, after);
            let mut a = process(&w, &w.root, &served, crash.clone(), "a");
            let mut now = Utc.timestamp_micros(w.start + 3 * DAY).single().unwrap();
            let step = chrono::Duration::minutes(30);
            for _ in 0..8 {
                match a.tick(now).await {
                    Ok(d) if settled(&d) => break,
                    Ok(_) => now += step,
                    Err(e) => {
                        assert!(crash.dead(), "only the crash fails a tick: {e}");
                        break;
                    }
                }
            }
            let context = format!(
                "killed at effect {at} ({})",
                if after { "after it" } else { "before it" }
            );
            if !crash.dead() {
                assert_whole(&w, &served, &context).await;
                return None;
            }
            // Restarted as another instance: it stands by while the dead
            // one's lease lasts, then takes over and settles the rollout.
            let mut b = process(&w, &w.root, &served, Crash::never(), "b");
            let stored = ObjectLoopStates::new(&w.root).load("m").await.unwrap();
            if stored
                .as_ref()
                .and_then(|s| s.lease.as_ref())
                .is_some_and(|l| l.holder == "a")
            {
                assert!(b.tick(now).await.unwrap().is_empty(), "{context}: b waits");
                assert!(!b.is_leader());
            }
            now += chrono::Duration::hours(2);
            let mut done = false;
            for _ in 0..8 {
                b.tick(now).await.unwrap();
                now += step;
                let over = story(&w).await.iter().any(|(a, ..)| {
                    ["rollout.promote", "rollout.rollback", "retrain.abandon"].contains(&a.as_str())
                });
                if over && b.state().phase == LoopPhase::Watching {
                    done = true;
                    break;
                }
            }
            assert!(done, "{context}: the restarted loop settles");
            let champion = assert_whole(&w, &served, &context).await;
            if stored.is_some_and(|s| s.lease.is_some()) {
                assert!(
                    story(&w)
                        .await
                        .iter()
                        .any(|(a, d, i)| a == "retrain.resume" && i == "b" && d.contains("from a")),
                    "{context}: the take-over is on record"
                );
            }
            Some(champion)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_loop_killed_at_any_step_resumes_to_a_whole_state() {
            for (canary_auc, want) in [(0.95, "promoted"), (0.6, "rolled back")] {
                let mut outcomes = BTreeMap::<u64, usize>::new();
                let mut at = 1;
                loop {
                    let mut finished = false;
                    for after in [false, true] {
                        match crash_and_restart(at, after, canary_auc).await {
                            Some(champion) => *outcomes.entry(champion).or_default() += 1,
                            None => finished = true,
                        }
                    }
                    if finished {
                        break;
                    }
                    at += 1;
                    assert!(at < 60, "the rollout never finished");
                }
                // Every side effect of the rollout was a crash point.
                assert!(at > 10, "{want}: only {at} side effects");
                if want == "promoted" {
                    assert!(outcomes.keys().any(|&c| c != 1), "{outcomes:?}");
                    assert!(
                        outcomes.contains_key(&1),
                        "early crashes restore v1: {outcomes:?}"
                    );
                } else {
                    assert_eq!(
                        outcomes.keys().copied().collect::<Vec<_>>(),
                        vec![1],
                        "{want}"
                    );
                }
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_instances_racing_never_act_at_once_and_one_takes_over() {
            let dir = std::env::temp_dir().join(format!(
                "mlops-loop-race-{}-{}",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let url = format!("file://{}", dir.display());
            let w = world(StoreRoot::open(&url).unwrap()).await;
            w.registry.set_alias("m", "champion", 1).await.unwrap();
            let served = Arc::new(Served {
                route: Mutex::new(Route::All(1)),
                canary_auc: 0.95,
            });
            // Each instance opens the directory itself: they share only files.
            let (ra, rb) = (
                StoreRoot::open(&url).unwrap(),
                StoreRoot::open(&url).unwrap(),
            );
            let mut a = process(&w, &ra, &served, Crash::never(), "a");
            let mut b = process(&w, &rb, &served, Crash::never(), "b");
            let mut now = Utc.timestamp_micros(w.start + 3 * DAY).single().unwrap();
            let step = chrono::Duration::minutes(30);
            // Both tick at once, on two threads, until a canary runs.
            let mut leader = None;
            for round in 0..4 {
                let ta = tokio::spawn(async move {
                    let d = a.tick(now).await;
                    (a, d)
                });
                let tb = tokio::spawn(async move {
                    let d = b.tick(now).await;
                    (b, d)
                });
                let ((la, da), (lb, db)) = (ta.await.unwrap(), tb.await.unwrap());
                (a, b) = (la, lb);
                let (da, db) = (da.unwrap(), db.unwrap());
                assert!(
                    da.is_empty() || db.is_empty(),
                    "round {round}: both acted: {da:?} {db:?}"
                );
                assert!(a.is_leader() != b.is_leader(), "round {round}: one leader");
                let now_leader = if a.is_leader() { "a" } else { "b" };
                assert_eq!(
                    *leader.get_or_insert(now_leader),
                    now_leader,
                    "the lease held"
                );
                now += step;
                if matches!(served.route(), Route::Canary { .. }) {
                    break;
                }
            }
            let (mut leader, mut standby) = if a.is_leader() { (a, b) } else { (b, a) };
            assert!(matches!(served.route(), Route::Canary { weight, .. } if weight == 0.1));
            // The leader stops ticking (a pod gone); the standby waits out its
            // lease, then takes over and carries the canary on.
            assert!(standby.tick(now).await.unwrap().is_empty());
            now += chrono::Duration::hours(2);
            let d = standby.tick(now).await.unwrap();
            assert!(
                matches!(&d[0], Decision::Resumed { from: Some(f), .. } if f == leader.instance()),
                "{d:?}"
            );
            assert!(
                matches!(d.last(), Some(Decision::CanaryRamped { .. })),
                "{d:?}"
            );
            // The old leader, back, finds it lost its lease and stands by.
            assert!(leader.tick(now + step).await.unwrap().is_empty());
            assert!(!leader.is_leader());
            let d = standby.tick(now + step * 2).await.unwrap();
            assert!(
                matches!(d[0], Decision::Promoted { version: 2, .. }),
                "{d:?}"
            );
            assert_eq!(assert_whole(&w, &served, "race").await, 2);
            let versions = w.registry.list_versions("m").await.unwrap();
            assert_eq!(versions.len(), 2, "one challenger was trained, not two");
            // A leader that releases the lease (a process exiting) lets the
            // other act at once, and a standby's release is a no-op.
            assert!(!leader.release().await.unwrap());
            assert!(standby.release().await.unwrap());
            assert!(!standby.is_leader());
            leader.tick(now + step * 3).await.unwrap();
            assert!(leader.is_leader(), "the released loop is taken at once");
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}
