//! [`Server`]: health, metadata, and inference with the errors its contract names.
//! The same suite runs on an in-process server and on one reached over HTTP, so
//! local and remote behave alike.

use crate::error::Error;
use crate::inference::{Datatype, InferenceRequest, RequestOutput, Tensor, TensorData, TensorSpec};
use crate::server::Server;

use super::expect_err;

/// `rows` rows of zeros for `spec` (variable dimensions become `rows`, then 1).
pub fn zeros(spec: &TensorSpec, rows: usize) -> Tensor {
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            d if d >= 0 => d as usize,
            _ if i == 0 => rows,
            _ => 1,
        })
        .collect();
    let n: usize = shape.iter().product();
    let data = match spec.datatype {
        Datatype::Bool => TensorData::Bool(vec![false; n]),
        Datatype::Uint8 => TensorData::Uint8(vec![0; n]),
        Datatype::Uint16 => TensorData::Uint16(vec![0; n]),
        Datatype::Uint32 => TensorData::Uint32(vec![0; n]),
        Datatype::Uint64 => TensorData::Uint64(vec![0; n]),
        Datatype::Int8 => TensorData::Int8(vec![0; n]),
        Datatype::Int16 => TensorData::Int16(vec![0; n]),
        Datatype::Int32 => TensorData::Int32(vec![0; n]),
        Datatype::Int64 => TensorData::Int64(vec![0; n]),
        Datatype::Fp16 => TensorData::Fp16(vec![0.0; n]),
        Datatype::Fp32 => TensorData::Fp32(vec![0.0; n]),
        Datatype::Fp64 => TensorData::Fp64(vec![0.0; n]),
        Datatype::Bytes => TensorData::Bytes(vec![b"a".to_vec(); n]),
    };
    Tensor::new(&spec.name, shape, data).expect("a shape that holds its zeros")
}

/// Runs the server contract on `server`, which serves `model` (any model whose
/// inputs are declared with their datatypes and shapes).
pub async fn conformance(server: &dyn Server, model: &str) {
    assert!(
        server.live().await.expect("live"),
        "a running server is live"
    );
    assert!(
        server.ready().await.expect("ready"),
        "a serving server is ready"
    );
    assert!(
        !server
            .server_metadata()
            .await
            .expect("server metadata")
            .name
            .is_empty(),
        "the server names itself"
    );
    assert!(
        server
            .list_models()
            .await
            .expect("list models")
            .iter()
            .any(|m| m == model),
        "the served model is listed"
    );
    let meta = server
        .model_metadata(model, None)
        .await
        .expect("model metadata");
    assert_eq!(meta.name, model);
    assert!(
        !meta.inputs.is_empty() && !meta.outputs.is_empty(),
        "inputs and outputs are declared"
    );
    assert!(server.model_ready(model, None).await.expect("model ready"));
    expect_err(
        server
            .model_metadata("conformance-no-such-model", None)
            .await,
        "metadata of an unknown model",
        |e| matches!(e, Error::NotFound { .. }),
    );
    expect_err(
        server.model_metadata(model, Some("987654")).await,
        "metadata of an unknown version",
        |e| matches!(e, Error::NotFound { .. }),
    );

    let inputs: Vec<Tensor> = meta.inputs.iter().map(|s| zeros(s, 3)).collect();
    let mut request = InferenceRequest::new(inputs.clone());
    request.id = Some("conformance-1".into());
    let response = server.infer(model, None, request).await.expect("infer");
    assert_eq!(response.model_name, model);
    assert_eq!(
        response.id.as_deref(),
        Some("conformance-1"),
        "the id is echoed"
    );
    assert_eq!(
        response.outputs.len(),
        meta.outputs.len(),
        "every output, unasked"
    );
    for out in &response.outputs {
        assert_eq!(
            out.rows(),
            3,
            "output '{}' has a row per input row",
            out.name
        );
    }

    let first = &meta.outputs[0].name;
    let mut one = InferenceRequest::new(inputs.clone());
    one.outputs = Some(vec![RequestOutput {
        name: first.clone(),
        parameters: Default::default(),
    }]);
    let response = server
        .infer(model, None, one)
        .await
        .expect("infer one output");
    assert_eq!(
        response
            .outputs
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        vec![first.as_str()],
        "only the requested output"
    );
    let mut unknown_output = InferenceRequest::new(inputs.clone());
    unknown_output.outputs = Some(vec![RequestOutput {
        name: "conformance-no-such-output".into(),
        parameters: Default::default(),
    }]);
    expect_err(
        server.infer(model, None, unknown_output).await,
        "an unknown output",
        |e| matches!(e, Error::InvalidInput { .. }),
    );

    let mut renamed = inputs.clone();
    renamed[0].name = "conformance_no_such_input".into();
    let err = expect_err(
        server
            .infer(model, None, InferenceRequest::new(renamed))
            .await,
        "an unknown input",
        |e| matches!(e, Error::InvalidInput { .. }),
    );
    assert!(
        err.to_string().contains("conformance_no_such_input"),
        "the error names the input: {err}"
    );
    let missing = InferenceRequest::new(inputs[1..].to_vec());
    expect_err(
        server.infer(model, None, missing).await,
        "a missing input",
        |e| matches!(e, Error::InvalidInput { .. }),
    );
    expect_err(
        server
            .infer(
                "conformance-no-such-model",
                None,
                InferenceRequest::new(inputs.clone()),
            )
            .await,
        "inference on an unknown model",
        |e| matches!(e, Error::NotFound { .. }),
    );
    expect_err(
        server
            .infer(model, Some("987654"), InferenceRequest::new(inputs))
            .await,
        "inference on an unknown version",
        |e| matches!(e, Error::NotFound { .. }),
    );
}
