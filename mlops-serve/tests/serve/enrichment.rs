//! Requests that carry entity keys get their features from the online store.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::DataType;
use chrono::Utc;
use mlops_core::feature::{ApplyOptions, FeatureDefinitions, FeatureView, OfflineFeatureStore};
use mlops_core::inference::{Datatype, InferenceRequest, Tensor, TensorData, TensorSpec};
use mlops_core::{
    Error, ModelArtifact, ModelLoader, ModelMetadata, ModelRegistry, Predictor, Result, Server,
    Signature,
};
use mlops_serve::{DeploymentConfig, Enrichment, ModelServer, Routing};
use mlops_store::{InMemoryOnlineStore, ObjectFeatureStore, ObjectRegistry, StoreRoot};

/// Sums its two named inputs.
#[derive(Debug)]
struct Sum(Signature);

impl Predictor for Sum {
    fn signature(&self) -> &Signature {
        &self.0
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.0.check_inputs(inputs)?;
        let get = |n: &str| {
            inputs
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .data
                .to_f32_vec()
                .unwrap()
        };
        let (a, b) = (get("spend"), get("age"));
        let s: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        Ok(vec![Tensor::new(
            "sum",
            vec![s.len()],
            TensorData::Fp32(s),
        )?])
    }
}

#[derive(Debug)]
struct SumLoader;

impl ModelLoader for SumLoader {
    fn flavors(&self) -> Vec<String> {
        vec!["sum".into()]
    }
    fn load(&self, _: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        Ok(Arc::new(Sum(Signature {
            inputs: vec![
                TensorSpec::new("spend", Datatype::Fp32, vec![-1]),
                TensorSpec::new("age", Datatype::Fp32, vec![-1]),
            ],
            outputs: vec![TensorSpec::new("sum", Datatype::Fp32, vec![-1])],
            matrix_input: None,
        })))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_keys_are_enriched_from_the_online_store() {
    let root = StoreRoot::open("memory://").unwrap();
    let store = Arc::new(ObjectFeatureStore::new(
        &root,
        Arc::new(InMemoryOnlineStore::new()),
    ));
    let view = FeatureView::builder("card")
        .join_key("card_id", DataType::Int64)
        .event_time("ts")
        .feature("spend", DataType::Float32)
        .feature("age", DataType::Float32)
        .build()
        .unwrap();
    store
        .apply_view(view, ApplyOptions::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp_micros();
    let rows = RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from(vec![now - 1000, now - 1000]).with_timezone("UTC"),
            ) as ArrayRef,
        ),
        (
            "spend",
            Arc::new(Float32Array::from(vec![10.0, 20.0])) as ArrayRef,
        ),
        (
            "age",
            Arc::new(Float32Array::from(vec![1.0, 2.0])) as ArrayRef,
        ),
    ])
    .unwrap();
    store.ingest("card", rows).await.unwrap();
    store
        .materialize(
            "card",
            Utc::now() - chrono::Duration::days(1),
            Utc::now() + chrono::Duration::days(1),
        )
        .await
        .unwrap();

    let registry = Arc::new(ObjectRegistry::new(&root));
    registry
        .register(
            "sum",
            ModelArtifact::new("sum", b"-".to_vec()),
            ModelMetadata::default(),
        )
        .await
        .unwrap();
    let s = ModelServer::new(registry, vec![Arc::new(SumLoader)]);
    let mut config = DeploymentConfig::new(
        "sum",
        "sum",
        Routing::Fixed(mlops_core::model::VersionSelector::Latest),
    );
    config.enrichment = Some(Enrichment {
        store,
        features: vec!["card:spend".parse().unwrap(), "card:age".parse().unwrap()],
        entity_keys: vec!["card_id".into()],
    });
    s.deploy(config).await.unwrap();

    let keys = |ids: Vec<i64>| {
        InferenceRequest::new(vec![
            Tensor::new("card_id", vec![ids.len()], TensorData::Int64(ids)).unwrap(),
        ])
    };
    let r = s.infer("sum", None, keys(vec![2, 1])).await.unwrap();
    assert_eq!(r.outputs[0].data, TensorData::Fp32(vec![22.0, 11.0]));

    // Values given directly win; only the missing ones are looked up.
    let mut partial = keys(vec![1]);
    partial
        .inputs
        .push(Tensor::new("age", vec![1], TensorData::Fp32(vec![100.0])).unwrap());
    let r = s.infer("sum", None, partial).await.unwrap();
    assert_eq!(r.outputs[0].data, TensorData::Fp32(vec![110.0]));

    let err = s.infer("sum", None, keys(vec![3])).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("NotFound"),
        "{err}"
    );
    let err = s
        .infer(
            "sum",
            None,
            InferenceRequest::new(vec![
                Tensor::new("x", vec![1], TensorData::Int64(vec![1])).unwrap(),
            ]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("card_id"), "{err}");
}
