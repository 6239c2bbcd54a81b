//! `enrichment` in a deployment: requests that carry entity keys get the
//! model's inputs from the Redis online store of `[online]`, materialized from
//! the feature views on the storage root.

use arrow_array::TimestampMicrosecondArray;
use mlops::arrow::schema::DataType;
use mlops::core::feature::{
    ApplyOptions, FeatureDefinitions as _, FeatureView, OfflineFeatureStore as _,
};
use mlops::store::{ObjectFeatureStore, open_online_store};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_keys_are_enriched_from_redis() {
    let (dir, _registry, path) = champion_store("enrichment").await;
    let (redis, _redis_server) = redis();
    // A namespace of this run's own: nothing another run wrote is read.
    let namespace = format!("cli-{}", dir.path().file_name().unwrap().to_string_lossy());
    // The feature view `user:x` (the model's input) on the storage root,
    // materialized into Redis.
    let root = StoreRoot::open(&store_url(&dir)).unwrap();
    let online = open_online_store(&redis, &namespace).await.unwrap();
    let store = ObjectFeatureStore::new(&root, online);
    let view = FeatureView::builder("user")
        .join_key("user_id", DataType::Int64)
        .event_time("ts")
        .feature("x", DataType::Float64)
        .build()
        .unwrap();
    store
        .apply_view(view, ApplyOptions::default())
        .await
        .unwrap();
    let now = mlops::chrono::Utc::now().timestamp_micros();
    let rows = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(vec![now - 1000; 2]).with_timezone("UTC"))
                as ArrayRef,
        ),
        (
            "x",
            Arc::new(Float64Array::from(vec![-1.5, 1.5])) as ArrayRef,
        ),
    ])
    .unwrap();
    store.ingest("user", rows).await.unwrap();
    let day = mlops::chrono::Duration::days(1);
    store
        .materialize(
            "user",
            mlops::chrono::Utc::now() - day,
            mlops::chrono::Utc::now() + day,
        )
        .await
        .unwrap();

    let base_config = std::fs::read_to_string(&path).unwrap();
    let with = |online: &str, enrichment: &str| {
        format!(
            "{}\nenrichment = {enrichment}\n{online}",
            base_config.trim_end()
        )
    };
    let enrichment = r#"{ features = ["user:x"], entity_keys = ["user_id"] }"#;
    let online = format!("\n[online]\nurl = \"{redis}\"\nnamespace = \"{namespace}\"\n");
    std::fs::write(&path, with(&online, enrichment)).unwrap();
    let (code, _, err) = mlops(&["check"], &path);
    assert_eq!(code, Some(0), "{err}");

    let Served {
        child, base, logs, ..
    } = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    // Users 1 and 2 by key: the model sees their x (-1.5 and 1.5), as it does
    // when the values are sent directly.
    let by_key = InferenceRequest::new(vec![
        Tensor::new("user_id", vec![2], TensorData::Int64(vec![1, 2])).unwrap(),
    ]);
    let enriched = client
        .infer("fraud", None, by_key)
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", logs.recent()));
    let direct = client
        .infer(
            "fraud",
            None,
            InferenceRequest::new(vec![
                Tensor::new("x", vec![2], TensorData::Fp64(vec![-1.5, 1.5])).unwrap(),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(enriched.outputs.len(), direct.outputs.len());
    for (a, b) in enriched.outputs.iter().zip(&direct.outputs) {
        assert_eq!(a.data, b.data, "output {}", a.name);
    }
    // An unknown user: a clear error naming what is missing, not a default.
    let unknown = InferenceRequest::new(vec![
        Tensor::new("user_id", vec![1], TensorData::Int64(vec![99])).unwrap(),
    ]);
    let err = client.infer("fraud", None, unknown).await.unwrap_err();
    assert!(
        err.to_string().contains("99") || err.to_string().contains("user"),
        "{err}"
    );
    let exited = stop(child).await;
    assert!(exited.success(), "exit status {exited:?}");

    // Config errors: exit 2 naming the key.
    let bad_path = dir.path().join("bad.toml");
    for (text, needle, commands) in [
        (
            with(
                &online,
                r#"{ features = ["no-colon"], entity_keys = ["user_id"] }"#,
            ),
            "enrichment.features[0]",
            &["check", "serve"][..],
        ),
        (
            with(&online, r#"{ features = [], entity_keys = ["user_id"] }"#),
            "enrichment",
            &["check", "serve"][..],
        ),
        (
            with(&online, r#"{ features = ["user:x"], keys = ["user_id"] }"#),
            "keys",
            &["check", "serve"][..],
        ),
        // Enrichment from this process's memory: nothing would ever fill it.
        (with("", enrichment), "[online] url", &["serve"][..]),
        (
            with("\n[online]\nurl = \"ftp://x\"\n", enrichment),
            "online.url",
            &["serve"][..],
        ),
    ] {
        std::fs::write(&bad_path, &text).unwrap();
        for command in commands {
            let (code, _, err) = mlops_within(&[command], &bad_path, FAST);
            assert_eq!(code, Some(2), "{command} with {needle:?}: {err}");
            assert!(err.contains(needle), "{command}: {needle:?} not in {err}");
        }
    }
}
