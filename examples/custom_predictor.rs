//! A model of your own in the SDK: a rule-based scorer implements `Predictor`, a
//! loader reads its artifact flavor, and the model server serves it next to any
//! other model, through the registry, with the same routing and checks.
//!
//! ```text
//! cargo run --example custom_predictor
//! ```

use std::sync::Arc;

use mlops::core::inference::{Datatype, TensorData};
use mlops::prelude::*;

/// Flags a transaction when its amount is above a threshold.
#[derive(Debug)]
struct Threshold {
    limit: f64,
    signature: Signature,
}

impl Threshold {
    fn new(limit: f64) -> Self {
        Self {
            limit,
            signature: Signature {
                inputs: vec![TensorSpec::new("amount", Datatype::Fp64, vec![-1])],
                outputs: vec![TensorSpec::new("flagged", Datatype::Bool, vec![-1])],
                matrix_input: None,
            },
        }
    }
}

impl Predictor for Threshold {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn predict(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        // The contract: check the inputs, never panic on bad ones.
        let checked = self.signature.check_inputs(inputs)?;
        let TensorData::Fp64(amounts) = &checked[0].data else {
            return Err(Error::invalid_input("input 'amount'", "expected FP64"));
        };
        let flagged = amounts.iter().map(|&a| a > self.limit).collect::<Vec<_>>();
        Ok(vec![Tensor::new(
            "flagged",
            vec![flagged.len()],
            TensorData::Bool(flagged),
        )?])
    }
}

/// Reads `threshold` artifacts: the limit as text.
#[derive(Debug)]
struct ThresholdLoader;

impl ModelLoader for ThresholdLoader {
    fn flavors(&self) -> Vec<String> {
        vec!["threshold".into()]
    }

    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        artifact.verify()?;
        if artifact.flavor != "threshold" {
            return Err(Error::invalid_input(
                "artifact flavor",
                format!("{:?} is not threshold", artifact.flavor),
            ));
        }
        let limit = std::str::from_utf8(&artifact.bytes)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| Error::invalid_input("threshold artifact", "not a number"))?;
        Ok(Arc::new(Threshold::new(limit)))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = StoreRoot::open("memory://")?;
    let registry = Arc::new(ObjectRegistry::new(&root));
    let metadata = ModelMetadata {
        signature: Some(Threshold::new(0.0).signature.clone()),
        ..ModelMetadata::default()
    };
    registry
        .register(
            "rules",
            ModelArtifact::new("threshold", b"500".to_vec()),
            metadata.clone(),
        )
        .await?;
    registry
        .register(
            "rules",
            ModelArtifact::new("threshold", b"300".to_vec()),
            metadata,
        )
        .await?;

    // Served like any model: here an A/B split between the two limits.
    let server = ModelServer::new(registry, vec![Arc::new(ThresholdLoader)]);
    let split = Routing::Split(vec![
        mlops::serve::Arm::new(VersionSelector::Number(1), 0.5),
        mlops::serve::Arm::new(VersionSelector::Number(2), 0.5),
    ]);
    server
        .deploy(DeploymentConfig::new("rules", "rules", split))
        .await?;
    let amounts = Tensor::new(
        "amount",
        vec![3],
        TensorData::Fp64(vec![100.0, 400.0, 900.0]),
    )?;
    for version in ["1", "2"] {
        let response = server
            .infer(
                "rules",
                Some(version),
                InferenceRequest::new(vec![amounts.clone()]),
            )
            .await?;
        println!("v{version}: {:?}", response.outputs[0].data);
    }
    // Bad input is refused by name, before the model runs.
    let wrong = Tensor::new("amount", vec![1], TensorData::Fp32(vec![1.0]))?;
    match server
        .infer("rules", None, InferenceRequest::new(vec![wrong]))
        .await
    {
        Err(e) => println!("refused: {e}"),
        Ok(_) => return Err(Error::backend("example", "a wrong datatype was served")),
    }
    Ok(())
}
