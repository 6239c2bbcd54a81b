//! Every trait is usable as a trait object; the ones with small, honest in-test
//! implementations are exercised through `dyn` to check that their contracts compose.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mlops_core::audit::{AuditEntry, AuditEvent, AuditLog, ChainVerdict, verify_chain};
use mlops_core::inference::{
    Datatype, InferenceRequest, InferenceResponse, ModelMetadataResponse, RequestOutput,
    ServerMetadataResponse, Tensor, TensorData, TensorSpec,
};
use mlops_core::model::{ModelArtifact, Signature};
use mlops_core::{
    DriftDetector, Error, ExperimentTracker, FeatureStore, ModelLoader, ModelRegistry, Predictor,
    ResourceKind, Result, Server, Trainer,
};

/// The async traits are object-safe and `Send + Sync`, so they can be shared as
/// `Arc<dyn _>` across tasks; the sync ones too.
#[test]
fn every_trait_is_object_safe_and_shareable() {
    fn shareable<T: ?Sized + Send + Sync>() {}
    shareable::<dyn FeatureStore>();
    shareable::<dyn ModelRegistry>();
    shareable::<dyn ExperimentTracker>();
    shareable::<dyn AuditLog>();
    shareable::<dyn Server>();
    shareable::<dyn Trainer>();
    shareable::<dyn Predictor>();
    shareable::<dyn ModelLoader>();
    shareable::<dyn DriftDetector>();
}

/// `score = w · x + b` over a `[-1, n]` FP32 input.
#[derive(Debug)]
struct Linear {
    weights: Vec<f32>,
    bias: f32,
    signature: Signature,
}

impl Linear {
    fn new(weights: Vec<f32>, bias: f32) -> Self {
        let n = weights.len() as i64;
        Self {
            weights,
            bias,
            signature: Signature {
                inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1, n])],
                outputs: vec![
                    TensorSpec::new("score", Datatype::Fp32, vec![-1, 1]),
                    TensorSpec::new("label", Datatype::Bool, vec![-1, 1]),
                ],
                matrix_input: None,
            },
        }
    }
}

impl Predictor for Linear {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.signature.check_inputs(inputs)?;
        let x = inputs[0].to_array_f32()?;
        let scores: Vec<f32> = x
            .rows()
            .into_iter()
            .map(|row| {
                row.iter()
                    .zip(&self.weights)
                    .map(|(a, w)| a * w)
                    .sum::<f32>()
                    + self.bias
            })
            .collect();
        let n = scores.len();
        let labels = scores.iter().map(|&s| s > 0.0).collect();
        Ok(vec![
            Tensor::new("score", vec![n, 1], mlops_core::TensorData::Fp32(scores))?,
            Tensor::new("label", vec![n, 1], mlops_core::TensorData::Bool(labels))?,
        ])
    }
}

/// Reads `linear-json` artifacts: `{"weights": [...], "bias": b}`.
#[derive(Debug)]
struct LinearLoader;

impl ModelLoader for LinearLoader {
    fn flavors(&self) -> Vec<String> {
        vec!["linear-json".into()]
    }

    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        if !self.can_load(&artifact.flavor) {
            return Err(Error::invalid_input(
                "artifact flavor",
                format!("{:?} is not linear-json", artifact.flavor),
            ));
        }
        artifact.verify()?;
        let v: serde_json::Value = serde_json::from_slice(&artifact.bytes)
            .map_err(|e| Error::invalid_input("linear-json artifact", e.to_string()))?;
        let weights = v["weights"]
            .as_array()
            .ok_or_else(|| Error::invalid_input("linear-json artifact", "no weights"))?
            .iter()
            .map(|w| w.as_f64().map(|w| w as f32))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::invalid_input("linear-json artifact", "non-numeric weight"))?;
        let bias = v["bias"].as_f64().unwrap_or(0.0) as f32;
        Ok(Arc::new(Linear::new(weights, bias)))
    }
}

/// Serves predictors by name, in process.
#[derive(Debug)]
struct LocalServer {
    models: BTreeMap<String, Arc<dyn Predictor>>,
}

impl LocalServer {
    /// The model `name`; each model has one version, `1`.
    fn model(&self, name: &str, version: Option<&str>) -> Result<&Arc<dyn Predictor>> {
        let model = self
            .models
            .get(name)
            .ok_or_else(|| Error::not_found(ResourceKind::Model, name))?;
        match version {
            None | Some("1") => Ok(model),
            Some(v) => Err(Error::not_found(
                ResourceKind::ModelVersion,
                format!("{name}/{v}"),
            )),
        }
    }
}

#[async_trait]
impl Server for LocalServer {
    async fn live(&self) -> Result<bool> {
        Ok(true)
    }
    async fn ready(&self) -> Result<bool> {
        Ok(!self.models.is_empty())
    }
    async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        Ok(ServerMetadataResponse {
            name: "local".into(),
            version: "0".into(),
            extensions: vec![],
        })
    }
    async fn list_models(&self) -> Result<Vec<String>> {
        Ok(self.models.keys().cloned().collect())
    }
    async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadataResponse> {
        let p = self.model(model, version)?;
        Ok(ModelMetadataResponse {
            name: model.into(),
            versions: None,
            platform: "linear-json".into(),
            inputs: p.signature().inputs.clone(),
            outputs: p.signature().outputs.clone(),
            matrix_input: None,
        })
    }
    async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        self.model(model, version).map(|_| true)
    }
    async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferenceRequest,
    ) -> Result<InferenceResponse> {
        let mut outputs = self.model(model, version)?.predict(&request.inputs)?;
        if let Some(wanted) = &request.outputs {
            if let Some(unknown) = wanted
                .iter()
                .find(|w| !outputs.iter().any(|o| o.name == w.name))
            {
                return Err(Error::invalid_input(
                    format!("output '{}'", unknown.name),
                    "the model has no such output",
                ));
            }
            outputs.retain(|o| wanted.iter().any(|w| w.name == o.name));
        }
        Ok(InferenceResponse {
            model_name: model.into(),
            model_version: None,
            id: request.id,
            parameters: Default::default(),
            outputs,
        })
    }
}

#[derive(Debug, Default)]
struct VecAuditLog {
    entries: Mutex<Vec<AuditEntry>>,
}

#[async_trait]
impl AuditLog for VecAuditLog {
    async fn append(&self, event: AuditEvent) -> Result<AuditEntry> {
        let mut entries = self.entries.lock().unwrap();
        let prev = entries
            .last()
            .map_or(AuditEntry::GENESIS_HASH.to_owned(), |e| e.hash.clone());
        let entry = AuditEntry::seal(entries.len() as u64 + 1, chrono::Utc::now(), event, &prev);
        entries.push(entry.clone());
        Ok(entry)
    }
    async fn entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let entries = self.entries.lock().unwrap();
        Ok(entries
            .iter()
            .filter(|e| e.seq >= from_seq)
            .take(limit)
            .cloned()
            .collect())
    }
    async fn verify(&self) -> Result<ChainVerdict> {
        Ok(verify_chain(self.entries.lock().unwrap().iter()))
    }
}

#[tokio::test]
async fn a_loaded_artifact_serves_through_dyn_server() {
    let loader: Arc<dyn ModelLoader> = Arc::new(LinearLoader);
    let artifact = ModelArtifact::new(
        "linear-json",
        br#"{"weights": [1.0, -1.0], "bias": 0.5}"#.to_vec(),
    );
    let predictor = loader.load(&artifact).unwrap();
    let server: Arc<dyn Server> = Arc::new(LocalServer {
        models: BTreeMap::from([("m".to_owned(), predictor)]),
    });

    assert!(server.ready().await.unwrap());
    let meta = server.model_metadata("m", None).await.unwrap();
    assert_eq!(meta.inputs[0].shape, vec![-1, 2]);

    let mut request = InferenceRequest::new(vec![
        Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![3.0, 1.0, 0.0, 2.0])).unwrap(),
    ]);
    request.id = Some("r1".into());
    request.outputs = Some(vec![RequestOutput {
        name: "score".into(),
        parameters: Default::default(),
    }]);
    let response = server.infer("m", None, request).await.unwrap();
    assert_eq!(response.id.as_deref(), Some("r1"));
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(
        response.outputs[0].data,
        mlops_core::TensorData::Fp32(vec![2.5, -1.5])
    );

    let bad = InferenceRequest::new(vec![
        Tensor::new("x", vec![1, 3], TensorData::Fp32(vec![1.0, 2.0, 3.0])).unwrap(),
    ]);
    let err = server.infer("m", None, bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("shape [1, 3] where the model expects [-1, 2]"),
        "{err}"
    );
    let err = server
        .infer("nope", None, InferenceRequest::new(vec![]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: ResourceKind::Model,
                ..
            }
        ),
        "{err:?}"
    );

    let mut tampered = artifact.clone();
    tampered.bytes = br#"{"weights": [9.0, -1.0], "bias": 0.5}"#.to_vec().into();
    assert!(matches!(
        loader.load(&tampered).unwrap_err(),
        Error::Integrity { .. }
    ));
    let other = ModelArtifact::new("onnx", b"x".to_vec());
    assert!(
        loader
            .load(&other)
            .unwrap_err()
            .to_string()
            .contains("\"onnx\"")
    );
}

#[tokio::test]
async fn an_audit_log_through_dyn_chains_and_verifies() {
    let log: Arc<dyn AuditLog> = Arc::new(VecAuditLog::default());
    for i in 1..=3 {
        let e = log
            .append(AuditEvent::new(
                "ci",
                "register",
                format!("model m version {i}"),
            ))
            .await
            .unwrap();
        assert_eq!(e.seq, i);
    }
    assert!(matches!(
        log.verify().await.unwrap(),
        ChainVerdict::Intact { entries: 3, .. }
    ));
    assert_eq!(log.entries(2, 10).await.unwrap().len(), 2);
}

/// The conformance kit's self-test: the fakes above keep the contracts the kit
/// checks (and the kit's suites run on these small implementations as written).
mod kit {
    use super::*;
    use mlops_core::testkit;

    fn served() -> (LocalServer, Arc<dyn Predictor>, ModelArtifact) {
        let artifact = ModelArtifact::new(
            "linear-json",
            br#"{"weights": [1.0, -1.0], "bias": 0.5}"#.to_vec(),
        );
        let predictor = LinearLoader.load(&artifact).unwrap();
        let server = LocalServer {
            models: BTreeMap::from([("m".to_owned(), predictor.clone())]),
        };
        (server, predictor, artifact)
    }

    #[tokio::test]
    async fn the_fake_server_passes_the_server_suite() {
        testkit::server::conformance(&served().0, "m").await;
    }

    #[test]
    fn the_fake_loader_passes_the_round_trip_suite() {
        let (_, predictor, artifact) = served();
        let inputs =
            [Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![3.0, 1.0, 0.0, 2.0])).unwrap()];
        testkit::predictor::round_trip(&LinearLoader, predictor.as_ref(), &artifact, &inputs);
    }

    #[tokio::test]
    async fn the_fake_audit_log_passes_the_audit_suite() {
        testkit::audit::conformance(&VecAuditLog::default()).await;
    }
}
