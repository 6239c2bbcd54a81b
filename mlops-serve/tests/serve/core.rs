//! The in-process server: routing, reload, shadow, batching, cache, errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use mlops_core::inference::{ParameterValue, RequestOutput, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_core::{Error, ModelRegistry, Server};
use mlops_serve::{
    Arm, BatchConfig, CacheConfig, CanaryRamp, DeploymentConfig, ModelServer, ROUTING_KEY, Routing,
};
use tokio::task::{JoinHandle, JoinSet};

use crate::common::*;

fn v(n: u64) -> VersionSelector {
    VersionSelector::Number(n)
}

async fn server(versions: u64) -> (ModelServer, Arc<dyn ModelRegistry>, Arc<LinearLoader>) {
    let models: Vec<Linear> = (1..=versions).map(version_model).collect();
    let registry = registry(&models).await;
    let loader = Arc::new(LinearLoader::default());
    (
        ModelServer::new(registry.clone(), vec![loader.clone()]),
        registry,
        loader,
    )
}

async fn version_answering(s: &ModelServer, key: Option<&str>) -> u64 {
    let mut req = request(&[[1.0, 0.0]]);
    if let Some(k) = key {
        req.parameters
            .insert(ROUTING_KEY.into(), ParameterValue::String(k.into()));
    }
    let r = s.infer("fraud", None, req).await.unwrap();
    let version: u64 = r.model_version.as_deref().unwrap().parse().unwrap();
    assert_eq!(
        y_of(&r),
        vec![version as f32],
        "the answer comes from the version named"
    );
    version
}

/// Fails the test, with its message, when one of `clients` (tasks that send
/// requests until told to stop; a failed request panics one) has stopped.
async fn no_client_stopped(clients: &mut Vec<JoinHandle<u64>>) {
    if let Some(i) = clients.iter().position(JoinHandle::is_finished) {
        let sent = join("a client", clients.remove(i)).await;
        panic!("a client stopped early, after {sent} requests");
    }
}

/// Waits until `done` holds while every one of `clients` keeps running.
async fn while_clients_run(
    what: &str,
    clients: &mut Vec<JoinHandle<u64>>,
    done: impl Fn() -> bool,
) {
    eventually(what, async || {
        no_client_stopped(clients).await;
        done()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_split_and_canary_routing() {
    let (s, registry, _) = server(2).await;
    registry.set_alias("m", "champion", 1).await.unwrap();
    s.deploy(DeploymentConfig::new(
        "fraud",
        "m",
        Routing::Fixed("@champion".parse().unwrap()),
    ))
    .await
    .unwrap();
    for _ in 0..10 {
        assert_eq!(version_answering(&s, None).await, 1);
    }
    // An explicit version must be one the deployment serves.
    let err = s
        .infer("fraud", Some("2"), request(&[[1.0, 0.0]]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(
        y_of(
            &s.infer("fraud", Some("1"), request(&[[1.0, 0.0]]))
                .await
                .unwrap()
        ),
        vec![1.0]
    );

    // A 75/25 split: sticky per key, and close to the weights over many keys.
    let split = Routing::Split(vec![
        Arm {
            selector: v(1),
            weight: 3.0,
        },
        Arm {
            selector: v(2),
            weight: 1.0,
        },
    ]);
    let report = s.set_routing("fraud", split).await.unwrap();
    assert_eq!(report.loaded, vec![2]);
    let mut to_two = 0;
    for i in 0..2000 {
        let key = format!("customer-{i}");
        let first = version_answering(&s, Some(&key)).await;
        if i < 50 {
            assert_eq!(
                version_answering(&s, Some(&key)).await,
                first,
                "sticky for {key}"
            );
        }
        to_two += usize::from(first == 2);
    }
    assert!(
        (400..600).contains(&to_two),
        "{to_two} of 2000 keys went to the 25% arm"
    );

    // A canary at 0 and 1, then ramped on a schedule.
    s.set_routing(
        "fraud",
        Routing::Canary {
            stable: v(1),
            canary: v(2),
            weight: 0.0,
        },
    )
    .await
    .unwrap();
    for _ in 0..20 {
        assert_eq!(version_answering(&s, None).await, 1);
    }
    s.set_canary_weight("fraud", 1.0).await.unwrap();
    for _ in 0..20 {
        assert_eq!(version_answering(&s, None).await, 2);
    }
    assert!(s.set_canary_weight("fraud", 1.5).await.is_err());
    s.set_routing("fraud", Routing::Fixed(v(1))).await.unwrap();
    assert!(matches!(
        s.set_canary_weight("fraud", 0.5).await.unwrap_err(),
        Error::Conflict { .. }
    ));

    let mut ramped = DeploymentConfig::new(
        "ramped",
        "m",
        Routing::Canary {
            stable: v(1),
            canary: v(2),
            weight: 0.0,
        },
    );
    ramped.canary_ramp = Some(CanaryRamp {
        step: 0.5,
        every: Duration::from_millis(30),
        max: 1.0,
    });
    s.deploy(ramped).await.unwrap();
    eventually("the ramp reaches 1", async || {
        matches!(
            s.status("ramped").unwrap().routing,
            Routing::Canary { weight, .. } if weight >= 1.0
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_swaps_without_failed_requests() {
    let (s, registry, _) = server(3).await;
    registry.set_alias("m", "champion", 1).await.unwrap();
    let mut config =
        DeploymentConfig::new("fraud", "m", Routing::Fixed("@champion".parse().unwrap()));
    config.reload_interval = Some(Duration::from_millis(20));
    config.batching = Some(
        BatchConfig::default()
            .with_max_batch_size(8)
            .with_max_queue_delay(Duration::from_millis(1))
            .with_max_queue(4096)
            .with_instances(2),
    );
    s.deploy(config).await.unwrap();

    // Clients hammer the server until every swap has been seen by their traffic,
    // while the alias moves back and forth and both the poller and explicit
    // reloads swap versions. Each swap waits until client requests answered from
    // the new version, so the test cannot pass with traffic that ended too soon.
    let answered: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients: Vec<_> = (0..8)
        .map(|_| {
            let (s, answered, stop) = (s.clone(), answered.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = s
                        .infer("fraud", None, request(&[[1.0, 0.0]]))
                        .await
                        .expect("no request may fail during a swap");
                    let version: u64 = r.model_version.as_deref().unwrap().parse().unwrap();
                    assert_eq!(y_of(&r), vec![version as f32]);
                    answered[version as usize].fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    for round in 0..10u64 {
        let target = 1 + (round + 1) % 3;
        let before = answered[target as usize].load(Ordering::Relaxed);
        registry.set_alias("m", "champion", target).await.unwrap();
        if round % 2 == 0 {
            s.reload("fraud").await.unwrap();
        }
        while_clients_run(
            &format!("round {round}: client traffic reaches version {target}"),
            &mut clients,
            || answered[target as usize].load(Ordering::Relaxed) >= before + 20,
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(clients.len(), 8);
    let mut sent = 0;
    for c in clients {
        sent += join("a client", c).await;
    }
    let per_version: Vec<u64> = answered.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    assert_eq!(per_version.iter().sum::<u64>(), sent, "{per_version:?}");
    assert!(
        per_version[1..].iter().all(|&n| n > 0),
        "traffic saw every version: {per_version:?}"
    );

    // The poller picks up a move on its own.
    registry.set_alias("m", "champion", 3).await.unwrap();
    eventually("the poller reloads version 3", async || {
        version_answering(&s, None).await == 3
    })
    .await;
    // The family is there from the start: the swaps must have written samples,
    // a successful load of each version.
    let metrics = s.metrics_text();
    for version in 1..=3 {
        let loads = sample(
            &metrics,
            "mlops_model_loads_total",
            &format!("model=\"fraud\",version=\"{version}\",status=\"ok\""),
        );
        assert!(loads >= 1.0, "version {version} loaded {loads} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_is_recorded_off_the_request_path() {
    // The shadow's calls wait at a gate the test opens only once the primary has
    // answered: an answer that waited for the shadow would never come.
    let held_shadow = Linear {
        w: [10.0, 0.0],
        b: 0.0,
        delay_ms: GATED,
    };
    let registry = registry(&[version_model(1), held_shadow]).await;
    let gate = Gate::closed();
    let loader = Arc::new(LinearLoader::default().gated_calls(&gate));
    let s = ModelServer::new(registry, vec![loader.clone()]);
    let mut config = DeploymentConfig::new("fraud", "m", Routing::Fixed(v(1)));
    config.shadows = vec![v(2)];
    s.deploy(config).await.unwrap();
    let mut req = request(&[[2.0, 0.0]]);
    req.id = Some("req-1".into());
    let r = within(
        "the primary's answer while the shadow is held (the shadow is on the request path?)",
        s.infer("fraud", None, req),
    )
    .await
    .unwrap();
    assert_eq!(y_of(&r), vec![2.0]);
    assert_eq!(r.id.as_deref(), Some("req-1"));
    gate.held(1, "the shadow call").await;
    assert!(
        s.shadow_records("fraud").unwrap().is_empty(),
        "the held shadow has not answered"
    );
    gate.open();
    let record = eventually_some("the shadow's record", async || {
        s.shadow_records("fraud").unwrap().pop()
    })
    .await;
    assert_eq!((record.primary_version, record.shadow_version), (1, 2));
    assert_eq!(record.request_id.as_deref(), Some("req-1"));
    assert_eq!(record.primary[0].data, TensorData::Fp32(vec![2.0]));
    assert_eq!(record.shadow.unwrap()[0].data, TensorData::Fp32(vec![20.0]));
    // The primary is called without a second signature check (the server made
    // it); the shadow, whose signature the server did not check, with one.
    let stats = &loader.stats;
    assert_eq!(stats.calls.load(Ordering::SeqCst), 2);
    assert_eq!(stats.checked_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamic_batching_combines_and_sheds() {
    let slowish = Linear {
        w: [1.0, 1.0],
        b: 0.5,
        delay_ms: 5,
    };
    let registry = registry(&[slowish]).await;
    let loader = Arc::new(LinearLoader::default());
    let s = ModelServer::new(registry, vec![loader.clone()]);
    let mut config = DeploymentConfig::new("fraud", "m", Routing::Fixed(v(1)));
    // A batch waits for company until it is full (the delay is only there to
    // bound a wait that would otherwise be a hang): which requests combine does
    // not depend on how fast they arrive. 48 requests make three full batches.
    config.batching = Some(
        BatchConfig::default()
            .with_max_batch_size(16)
            .with_max_queue_delay(WAIT)
            .with_max_queue(256)
            .with_instances(1),
    );
    s.deploy(config).await.unwrap();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let x = i as f32;
                let r = s.infer("fraud", None, request(&[[x, 1.0]])).await.unwrap();
                assert_eq!(y_of(&r), vec![x + 1.5], "request {i} got its own answer");
            })
        })
        .collect();
    for t in tasks {
        join("a batched request", t).await;
    }
    let max_rows = loader.stats.max_rows.load(Ordering::SeqCst);
    let calls = loader.stats.calls.load(Ordering::SeqCst);
    assert!(
        max_rows > 1 && max_rows <= 16,
        "batches of up to 16 rows: {max_rows}"
    );
    assert!(calls < 48, "{calls} model calls for 48 requests");
    let batches = sample(
        &s.metrics_text(),
        "mlops_batch_rows_count",
        r#"model="fraud",version="1""#,
    );
    assert!(batches >= 1.0, "{batches} batches in the metrics");

    // A bad request batched with good ones (a full batch of 16) fails alone.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let x = if i == 3 { f32::NAN } else { 1.0 };
                (i, s.infer("fraud", None, request(&[[x, 0.0]])).await)
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = join("a request of the mixed batch", t).await;
        assert_eq!(r.is_err(), i == 3, "request {i}: {r:?}");
    }

    // A full queue sheds load with a clear error: with one request held in the
    // model, the batcher holds one more and the queue two; the rest are shed.
    let held = Linear {
        w: [1.0, 1.0],
        b: 0.0,
        delay_ms: GATED,
    };
    let gate = Gate::closed();
    let registry = crate::common::registry(&[held]).await;
    let s = ModelServer::new(
        registry,
        vec![Arc::new(LinearLoader::default().gated_calls(&gate))],
    );
    let mut config = DeploymentConfig::new("tiny", "m", Routing::Fixed(v(1)));
    config.batching = Some(
        BatchConfig::default()
            .with_max_batch_size(1)
            .with_max_queue_delay(Duration::ZERO)
            .with_max_queue(2)
            .with_instances(1),
    );
    s.deploy(config).await.unwrap();
    let infer = |s: &ModelServer| {
        let s = s.clone();
        async move { s.infer("tiny", None, request(&[[1.0, 1.0]])).await }
    };
    let first = tokio::spawn(infer(&s));
    gate.held(1, "the first request, in the model").await;
    let mut tasks = JoinSet::new();
    for _ in 0..11 {
        tasks.spawn(infer(&s));
    }
    let is_shed = |r: &mlops_core::Result<_>| match r {
        Ok(_) => false,
        Err(e) => {
            assert!(
                matches!(e, Error::Unavailable { .. }) && e.to_string().contains("overloaded"),
                "{e}"
            );
            true
        }
    };
    // Nothing can answer while the model is held: the first to finish was shed.
    let r = within("a request shed while the model is held", tasks.join_next())
        .await
        .expect("requests were sent")
        .expect("the request task");
    assert!(
        is_shed(&r),
        "an answer came while the model was held: {r:?}"
    );
    let mut shed = 1;
    gate.open();
    while let Some(r) = within("the other requests", tasks.join_next()).await {
        shed += usize::from(is_shed(&r.expect("a request task")));
    }
    join("the first request", first).await.unwrap();
    assert!(shed > 0, "some requests were shed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_time_out_while_queued_never_reach_the_model() {
    // Batched and unbatched alike: with the model held by a first request, a
    // second one waits in the version's queue and times out there (as the HTTP
    // face's request timeout drops it). Its call must never run: once the
    // model is free it sees the first request and the next one only.
    let batched = BatchConfig::default()
        .with_max_batch_size(1)
        .with_max_queue_delay(Duration::ZERO)
        .with_max_queue(4)
        .with_instances(1);
    for batching in [None, Some(batched)] {
        let what = if batching.is_some() {
            "batched"
        } else {
            "unbatched"
        };
        let held = Linear {
            w: [1.0, 1.0],
            b: 0.0,
            delay_ms: GATED,
        };
        let gate = Gate::closed();
        let loader = Arc::new(LinearLoader::default().gated_calls(&gate));
        let s = ModelServer::new(crate::common::registry(&[held]).await, vec![loader.clone()]);
        let mut config = DeploymentConfig::new("held", "m", Routing::Fixed(v(1)));
        config.batching = batching;
        config.max_running_calls = 1;
        s.deploy(config).await.unwrap();
        let infer = |s: &ModelServer, x: f32| {
            let s = s.clone();
            async move { s.infer("held", None, request(&[[x, 0.0]])).await }
        };
        let first = tokio::spawn(infer(&s, 1.0));
        gate.held(1, &format!("{what}: the first request, in the model"))
            .await;
        let second = tokio::time::timeout(Duration::from_millis(50), infer(&s, 2.0)).await;
        assert!(
            second.is_err(),
            "{what}: the second request cannot answer while the model is held"
        );
        gate.open();
        let r = join("the first request", first).await.unwrap();
        assert_eq!(y_of(&r), vec![1.0]);
        let r = within("a request after the model is free", infer(&s, 3.0))
            .await
            .unwrap();
        assert_eq!(y_of(&r), vec![3.0], "{what}");
        let calls = loader.stats.calls.load(Ordering::SeqCst);
        assert_eq!(
            calls, 2,
            "{what}: the timed-out request's call ran ({calls} calls)"
        );
        if batching.is_some() {
            // The batcher had taken it already: it was skipped, and counted.
            eventually(
                "the skipped call in mlops_abandoned_calls_total",
                async || {
                    sample(
                        &s.metrics_text(),
                        "mlops_abandoned_calls_total",
                        r#"model="held",version="1""#,
                    ) == 1.0
                },
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_cache_counts_hits_and_expires() {
    let (s, _, loader) = server(2).await;
    let mut config = DeploymentConfig::new("fraud", "m", Routing::Fixed(v(1)));
    // A ttl no stalled machine reaches between the calls that expect hits;
    // expiry is tested on a deployment of its own below.
    config.cache = Some(CacheConfig::new(100, Duration::from_secs(3600)));
    s.deploy(config).await.unwrap();
    for _ in 0..3 {
        s.infer("fraud", None, request(&[[1.0, 2.0]]))
            .await
            .unwrap();
    }
    let stats = s.cache_stats("fraud").unwrap().unwrap();
    assert_eq!((stats.hits, stats.misses), (2, 1));
    assert_eq!(loader.stats.calls.load(Ordering::SeqCst), 1);
    // Another input, and another version, miss.
    s.infer("fraud", None, request(&[[1.0, 3.0]]))
        .await
        .unwrap();
    s.set_routing("fraud", Routing::Fixed(v(2))).await.unwrap();
    let r = s
        .infer("fraud", None, request(&[[1.0, 2.0]]))
        .await
        .unwrap();
    assert_eq!(y_of(&r), vec![2.0]);
    assert_eq!(s.cache_stats("fraud").unwrap().unwrap().misses, 3);
    assert_eq!(
        sample(
            &s.metrics_text(),
            "mlops_prediction_cache_total",
            r#"model="fraud",outcome="hit""#
        ),
        2.0
    );

    // Expiry: an entry is served for its ttl, then the model runs again.
    let ttl = Duration::from_millis(200);
    let mut config = DeploymentConfig::new("brief", "m", Routing::Fixed(v(1)));
    config.cache = Some(CacheConfig::new(100, ttl));
    s.deploy(config).await.unwrap();
    s.infer("brief", None, request(&[[1.0, 2.0]]))
        .await
        .unwrap();
    let cached_by = Instant::now();
    // The cache keeps time by the wall clock: the ttl has to pass for real.
    eventually("the entry expires", async || {
        cached_by.elapsed() > ttl && s.cache_stats("brief").unwrap().unwrap().entries == 0
    })
    .await;
    s.infer("brief", None, request(&[[1.0, 2.0]]))
        .await
        .unwrap();
    let stats = s.cache_stats("brief").unwrap().unwrap();
    assert_eq!((stats.hits, stats.misses), (0, 2), "expired after the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_lifecycle() {
    let (s, registry, _) = server(1).await;
    s.deploy(DeploymentConfig::new(
        "fraud",
        "m",
        Routing::Fixed(VersionSelector::Latest),
    ))
    .await
    .unwrap();
    let err = s
        .deploy(DeploymentConfig::new("fraud", "m", Routing::Fixed(v(1))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }));
    let err = s
        .deploy(DeploymentConfig::new("other", "nope", Routing::Fixed(v(1))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(s.list_models().await.unwrap(), vec!["fraud"]);

    assert!(matches!(
        s.infer("nope", None, request(&[[1.0, 1.0]]))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(matches!(
        s.infer("fraud", Some("9"), request(&[[1.0, 1.0]]))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    let wrong_type = mlops_core::InferenceRequest::new(vec![
        Tensor::new("x", vec![1, 2], TensorData::Int64(vec![1, 2])).unwrap(),
    ]);
    let err = s.infer("fraud", None, wrong_type).await.unwrap_err();
    assert!(
        err.to_string().contains("input 'x'") && err.to_string().contains("INT64"),
        "{err}"
    );
    let wrong_shape = mlops_core::InferenceRequest::new(vec![
        Tensor::new("x", vec![1, 3], TensorData::Fp32(vec![1.0; 3])).unwrap(),
    ]);
    assert!(
        s.infer("fraud", None, wrong_shape)
            .await
            .unwrap_err()
            .to_string()
            .contains("shape")
    );
    let mut unknown_output = request(&[[1.0, 1.0]]);
    unknown_output.outputs = Some(vec![RequestOutput {
        name: "z".into(),
        parameters: Default::default(),
    }]);
    assert!(
        s.infer("fraud", None, unknown_output)
            .await
            .unwrap_err()
            .to_string()
            .contains("output 'z'")
    );
    let mut one_output = request(&[[1.0, 1.0]]);
    one_output.outputs = Some(vec![RequestOutput {
        name: "twice".into(),
        parameters: Default::default(),
    }]);
    let r = s.infer("fraud", None, one_output).await.unwrap();
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, "twice");

    let meta = s.model_metadata("fraud", None).await.unwrap();
    assert_eq!(meta.platform, FLAVOR);
    assert_eq!(meta.versions, Some(vec!["1".to_owned()]));
    assert_eq!(meta.inputs, signature().inputs);
    assert!(s.model_ready("fraud", Some("1")).await.unwrap());
    assert!(!s.model_ready("fraud", Some("5")).await.unwrap());

    // Unload and load back; an unknown registry model cannot be loaded.
    s.unload("fraud").unwrap();
    assert!(s.list_models().await.unwrap().is_empty());
    s.load("fraud").await.unwrap();
    assert!(s.infer("fraud", None, request(&[[1.0, 1.0]])).await.is_ok());
    s.load("m").await.unwrap();
    assert!(s.load("nope").await.is_err());
    drop(registry);

    // Draining refuses new work and turns readiness off.
    assert!(s.ready().await.unwrap());
    assert_eq!(s.drain(Duration::from_millis(100)).await, 0);
    assert!(!s.ready().await.unwrap());
    assert!(matches!(
        s.infer("fraud", None, request(&[[1.0, 1.0]]))
            .await
            .unwrap_err(),
        Error::Unavailable { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deployment_configs_are_named() {
    let (s, _, _) = server(2).await;
    let base = || DeploymentConfig::new("fraud", "m", Routing::Fixed(v(1)));
    let mut cases: Vec<(DeploymentConfig, &str)> = Vec::new();
    cases.push((
        DeploymentConfig::new("bad name!", "m", Routing::Fixed(v(1))),
        "bad name!",
    ));
    let mut c = base();
    c.batching = Some(BatchConfig::default().with_max_batch_size(0));
    cases.push((c, "max_batch_size"));
    let mut c = base();
    c.cache = Some(CacheConfig::new(0, Duration::from_secs(1)));
    cases.push((c, "cache"));
    let mut c = base();
    c.canary_ramp = Some(CanaryRamp {
        step: 0.1,
        every: Duration::from_secs(1),
        max: 1.0,
    });
    cases.push((c, "needs canary routing"));
    let mut c = base();
    c.reload_interval = Some(Duration::ZERO);
    cases.push((c, "reload interval"));
    let mut c = base();
    c.max_running_calls = 0;
    cases.push((c, "max_running_calls"));
    let mut c = base();
    c.max_queued_calls = 0;
    cases.push((c, "max_queued_calls"));
    cases.push((
        DeploymentConfig::new(
            "fraud",
            "m",
            Routing::Split(vec![Arm {
                selector: v(1),
                weight: -1.0,
            }]),
        ),
        "weight",
    ));
    assert!(!cases.is_empty());
    for (config, needle) in cases {
        let err = s.deploy(config).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{needle:?} not in {err}");
    }
    assert!(
        s.list_models().await.unwrap().is_empty(),
        "nothing was deployed"
    );
    // A routing change to a version that does not exist leaves the old routing.
    s.deploy(base()).await.unwrap();
    let err = s
        .set_routing("fraud", Routing::Fixed(v(9)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(s.status("fraud").unwrap().routing, Routing::Fixed(v(1)));
    assert!(matches!(
        s.set_routing("nope", Routing::Fixed(v(1)))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_weight_set_during_a_reload_is_kept() {
    let models: Vec<Linear> = (1..=3).map(version_model).collect();
    let registry = registry(&models).await;
    // Loads wait at a gate, so a reload that moves the canary is still
    // resolving (its load held) when the weight is set.
    let gate = Gate::closed();
    let loader = Arc::new(LinearLoader::default().gated_loads(&gate));
    let s = ModelServer::new(registry.clone(), vec![loader]);
    gate.open();
    registry.set_alias("m", "next", 2).await.unwrap();
    s.deploy(DeploymentConfig::new(
        "fraud",
        "m",
        Routing::Canary {
            stable: v(1),
            canary: "@next".parse().unwrap(),
            weight: 0.0,
        },
    ))
    .await
    .unwrap();
    for (round, next) in [3, 2, 3].into_iter().enumerate() {
        registry.set_alias("m", "next", next).await.unwrap();
        gate.close();
        let reloading = {
            let s = s.clone();
            tokio::spawn(async move { s.reload("fraud").await.map(|_| ()) })
        };
        gate.held(
            1,
            &format!("round {round}: the reload loading version {next}"),
        )
        .await;
        let weight = 0.25 * (round + 1) as f64;
        // Issued (polled once) while the reload is in the middle of its load,
        // finished after.
        let mut setting = std::pin::pin!(s.set_canary_weight("fraud", weight));
        let early = std::future::poll_fn(|cx| Poll::Ready(setting.as_mut().poll(cx))).await;
        gate.open();
        join(&format!("round {round}: the reload"), reloading)
            .await
            .unwrap();
        match early {
            Poll::Ready(set) => set.unwrap(),
            Poll::Pending => within(&format!("round {round}: the weight is set"), setting)
                .await
                .unwrap(),
        }
        let status = s.status("fraud").unwrap();
        let Routing::Canary { weight: now, .. } = status.routing else {
            panic!("not a canary any more");
        };
        assert_eq!(
            now, weight,
            "round {round}: the reload put back an old weight"
        );
        assert_eq!(status.resolved["@next"], next);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_versions_are_not_served() {
    let (s, registry, _) = server(2).await;
    s.deploy(DeploymentConfig::new("fraud", "m", Routing::Fixed(v(2))))
        .await
        .unwrap();
    registry.archive_version("m", 1).await.unwrap();
    let err = s
        .set_routing("fraud", Routing::Fixed(v(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }) && err.to_string().contains("archived"),
        "{err}"
    );
    // The deployment still serves what it served.
    assert_eq!(version_answering(&s, None).await, 2);
    let err = s
        .deploy(DeploymentConfig::new("old", "m", Routing::Fixed(v(1))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("archived"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_swaps_the_deployment_without_failing_a_request() {
    let (s, _, _) = server(2).await;
    // A new name deploys.
    s.redeploy(DeploymentConfig::new("fraud", "m", Routing::Fixed(v(1))))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            let (s, stop, answered) = (s.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    s.infer("fraud", None, request(&[[1.0, 0.0]]))
                        .await
                        .unwrap();
                    n += 1;
                    answered[i].store(n, Ordering::SeqCst);
                }
                n
            })
        })
        .collect();
    let answers = || -> Vec<u64> { answered.iter().map(|a| a.load(Ordering::SeqCst)).collect() };
    // Every client is sending before the swaps start...
    while_clients_run("every client has an answer", &mut clients, || {
        answers().iter().all(|&n| n > 0)
    })
    .await;
    // ...and the swaps go on (ten at least) until each has had answers during them.
    let before = answers();
    let swapping = Instant::now();
    let mut to = 1;
    for round in 0u64.. {
        to = 1 + round % 2;
        s.redeploy(DeploymentConfig::new("fraud", "m", Routing::Fixed(v(to))))
            .await
            .unwrap();
        assert_eq!(version_answering(&s, None).await, to);
        no_client_stopped(&mut clients).await;
        if round >= 9 && answers().iter().zip(&before).all(|(now, b)| now > b) {
            break;
        }
        assert!(
            swapping.elapsed() < WAIT,
            "clients without answers during {round} swaps: {before:?} then {:?}",
            answers()
        );
    }
    // A redeploy that cannot load fails and leaves the old deployment serving.
    assert!(
        s.redeploy(DeploymentConfig::new("fraud", "m", Routing::Fixed(v(9))))
            .await
            .is_err()
    );
    assert_eq!(version_answering(&s, None).await, to);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(clients.len(), 4);
    for c in clients {
        assert!(join("a client", c).await > 0);
    }
}
