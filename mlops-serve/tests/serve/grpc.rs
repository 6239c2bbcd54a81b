//! The gRPC face over the wire, with the client generated from the same
//! protos: every call of both services, typed and raw tensors, keys and
//! scopes, and bad input answered with the right status and a message.

use std::sync::Arc;

use mlops_core::Server;
use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_serve::grpc::proto as pb;
use mlops_serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use mlops_serve::grpc::proto::model_infer_request::InferInputTensor;
use mlops_serve::grpc::proto::model_repository::model_repository_service_client::ModelRepositoryServiceClient;
use mlops_serve::grpc::{GrpcConfig, serve};
use mlops_serve::{ApiKeys, DeploymentConfig, KeyRing, ModelServer, Routing, Scope};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common::{Linear, LinearLoader, registry, within};

const INFER: &str = "grpc-infer-key";
const ADMIN: &str = "grpc-admin-key";

struct Face {
    server: ModelServer,
    channel: Channel,
    channel_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The model server with y = x . [1, 2] + 0.5 (calls delayed by
/// `delay_ms`) deployed as "fraud".
async fn deployed(delay_ms: u64, loader: LinearLoader) -> ModelServer {
    let registry = registry(&[Linear {
        w: [1.0, 2.0],
        b: 0.5,
        delay_ms,
    }])
    .await;
    let server = ModelServer::new(registry, vec![Arc::new(loader)]);
    server
        .deploy(DeploymentConfig::new(
            "fraud",
            "m",
            Routing::Fixed(VersionSelector::Latest),
        ))
        .await
        .unwrap();
    server
}

async fn start(config: impl FnOnce(KeyRing) -> GrpcConfig) -> Face {
    let server = deployed(0, LinearLoader::default()).await;
    let keys = KeyRing::new(
        ApiKeys::new()
            .with_key("app", INFER, &[Scope::Infer])
            .with_key("ops", ADMIN, &[Scope::Admin]),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s: Arc<dyn Server> = Arc::new(server.clone());
    let models = Some(server.clone());
    let config = config(keys);
    tokio::spawn(async move {
        serve(listener, s, models, config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let channel = within("the gRPC face accepts", async {
        loop {
            if let Ok(c) = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                break c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    Face {
        server,
        channel,
        channel_addr: addr,
        stop: Some(stop),
    }
}

fn keyed<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

/// A request for `rows` rows of `x` ([rows, 2] FP32), typed or raw.
fn infer_request(rows: usize, raw: bool) -> pb::ModelInferRequest {
    let values: Vec<f32> = (0..rows * 2).map(|i| i as f32 * 0.25).collect();
    let mut input = InferInputTensor {
        name: "x".into(),
        datatype: "FP32".into(),
        shape: vec![rows as i64, 2],
        ..Default::default()
    };
    let mut raw_input_contents = Vec::new();
    if raw {
        raw_input_contents.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        input.contents = Some(pb::InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        });
    }
    pb::ModelInferRequest {
        model_name: "fraud".into(),
        id: "r1".into(),
        inputs: vec![input],
        raw_input_contents,
        ..Default::default()
    }
}

/// The model's answer in process, for comparison.
async fn expected(server: &ModelServer, rows: usize) -> Vec<f32> {
    let values: Vec<f32> = (0..rows * 2).map(|i| i as f32 * 0.25).collect();
    let request = InferenceRequest::new(vec![
        Tensor::new("x", vec![rows, 2], TensorData::Fp32(values)).unwrap(),
    ]);
    let answer = server.infer("fraud", None, request).await.unwrap();
    answer.output("y").unwrap().data.to_f32_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answers_over_grpc_typed_and_raw() {
    let mut face = start(GrpcConfig::new).await;
    let mut c = GrpcInferenceServiceClient::new(face.channel.clone());
    let k = Some(INFER);
    assert!(
        c.server_live(keyed(pb::ServerLiveRequest {}, k))
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(keyed(pb::ServerReadyRequest {}, k))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(keyed(pb::ServerMetadataRequest {}, k))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "mlops");
    let ready = pb::ModelReadyRequest {
        name: "fraud".into(),
        version: String::new(),
    };
    assert!(
        c.model_ready(keyed(ready, k))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let m = c
        .model_metadata(keyed(
            pb::ModelMetadataRequest {
                name: "fraud".into(),
                version: String::new(),
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (m.inputs[0].name.as_str(), m.inputs[0].shape.clone()),
        ("x", vec![-1, 2])
    );
    assert_eq!(m.outputs.len(), 2);
    // 1 and 1024 rows, typed and raw: the in-process answers, raw when asked raw.
    for rows in [1, 1024] {
        let want = expected(&face.server, rows).await;
        let typed = c
            .model_infer(keyed(infer_request(rows, false), k))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(typed.id, "r1");
        assert!(typed.raw_output_contents.is_empty());
        let y = typed.outputs.iter().find(|o| o.name == "y").unwrap();
        assert_eq!(y.shape, vec![rows as i64]);
        assert_eq!(y.contents.as_ref().unwrap().fp32_contents, want);
        let raw = c
            .model_infer(keyed(infer_request(rows, true), k))
            .await
            .unwrap()
            .into_inner();
        let i = raw.outputs.iter().position(|o| o.name == "y").unwrap();
        assert!(raw.outputs[i].contents.is_none());
        let got: Vec<f32> = raw.raw_output_contents[i]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, want, "{rows} rows raw");
    }
    // The repository, in both services; load and unload need admin.
    let index = c
        .repository_index(keyed(pb::RepositoryIndexRequest::default(), k))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models[0].name, "fraud");
    assert_eq!(index.models[0].state, "READY");
    let unload = pb::RepositoryModelUnloadRequest {
        model_name: "fraud".into(),
        ..Default::default()
    };
    let denied = c
        .repository_model_unload(keyed(unload.clone(), k))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    c.repository_model_unload(keyed(unload, Some(ADMIN)))
        .await
        .unwrap();
    let gone = c
        .model_infer(keyed(infer_request(1, false), k))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    let mut r = ModelRepositoryServiceClient::new(face.channel.clone());
    r.repository_model_load(keyed(
        pb::RepositoryModelLoadRequest {
            model_name: "fraud".into(),
            ..Default::default()
        },
        Some(ADMIN),
    ))
    .await
    .unwrap();
    let index = r
        .repository_index(keyed(
            pb::RepositoryIndexRequest {
                repository_name: String::new(),
                ready: true,
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), 1);
    assert!(
        c.model_infer(keyed(infer_request(1, true), k))
            .await
            .is_ok()
    );
    face.stop.take().unwrap().send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_the_right_status_and_a_message() {
    let face = start(|keys| GrpcConfig::new(keys).with_max_message_bytes(1 << 20)).await;
    let mut c = GrpcInferenceServiceClient::new(face.channel.clone());
    let code = |r: Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>| {
        let s = r.unwrap_err();
        assert!(!s.message().is_empty(), "{s:?}");
        (s.code(), s.message().to_owned())
    };
    // Keys: none, a wrong one.
    let (c1, _) = code(c.model_infer(keyed(infer_request(1, false), None)).await);
    assert_eq!(c1, Code::Unauthenticated);
    let (c2, _) = code(
        c.model_infer(keyed(infer_request(1, false), Some("wrong")))
            .await,
    );
    assert_eq!(c2, Code::Unauthenticated);
    // Counted as the HTTP face's refusals are (group infer, status 401).
    let text = face.server.metrics_text();
    let refused = crate::common::sample(
        &text,
        "mlops_http_auth_failures_total",
        r#"group="infer",status="401""#,
    );
    assert_eq!(refused, 2.0, "{text}");
    let k = Some(INFER);
    // Unknown model, a shape that does not hold its data, an unknown datatype,
    // raw and typed both, an input the model does not take.
    let mut unknown = infer_request(1, false);
    unknown.model_name = "nope".into();
    let mut short = infer_request(2, false);
    short.inputs[0].shape = vec![3, 2];
    let mut datatype = infer_request(1, false);
    datatype.inputs[0].datatype = "FP128".into();
    let mut both = infer_request(1, true);
    both.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: vec![1.0, 2.0],
        ..Default::default()
    });
    let mut wrong_name = infer_request(1, false);
    wrong_name.inputs[0].name = "z".into();
    for (request, want, needle) in [
        (unknown, Code::NotFound, "nope"),
        (short, Code::InvalidArgument, "'x'"),
        (datatype, Code::InvalidArgument, "FP128"),
        (
            both,
            Code::InvalidArgument,
            "both contents and raw_input_contents",
        ),
        (wrong_name, Code::InvalidArgument, "x"),
    ] {
        let (got, message) = code(c.model_infer(keyed(request, k)).await);
        assert_eq!(got, want, "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    // Over the message limit: RESOURCE_EXHAUSTED, and the face still serves.
    let (big, _) = code(c.model_infer(keyed(infer_request(200_000, true), k)).await);
    assert_eq!(big, Code::ResourceExhausted);
    assert!(
        c.model_infer(keyed(infer_request(1, false), k))
            .await
            .is_ok()
    );
    // The gRPC client maps the statuses back to the SDK's errors.
    let url = format!("http://{}", face.channel_addr);
    let anonymous = mlops_serve::grpc::GrpcRemoteServer::new(&url).unwrap();
    assert!(matches!(
        anonymous.live().await.unwrap_err(),
        mlops_core::Error::Unauthorized { .. }
    ));
    let keyed_client = mlops_serve::grpc::GrpcRemoteServer::new(&url)
        .unwrap()
        .with_api_key(INFER);
    assert!(keyed_client.live().await.unwrap());
    let values = TensorData::Fp32(vec![1.0, 2.0]);
    let request = InferenceRequest::new(vec![Tensor::new("x", vec![1, 2], values).unwrap()]);
    let answer = keyed_client
        .infer("fraud", None, request.clone())
        .await
        .unwrap();
    assert_eq!(
        answer.output("y").unwrap().data.to_f32_vec().unwrap(),
        vec![5.5]
    );
    assert!(matches!(
        keyed_client.infer("nope", None, request).await.unwrap_err(),
        mlops_core::Error::NotFound { .. }
    ));
    // A URL that is not one is refused naming it.
    let err = mlops_serve::grpc::GrpcRemoteServer::new("not a url").unwrap_err();
    assert!(
        matches!(err, mlops_core::Error::InvalidInput { .. })
            && err.to_string().contains("not a url"),
        "{err}"
    );
    // A face without keys must say so to start.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(
        listener,
        Arc::new(face.server.clone()),
        None,
        GrpcConfig::new(KeyRing::new(ApiKeys::new())),
        std::future::ready(()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("allow_unauthenticated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_face_serves_over_tls_with_a_generated_certificate() {
    use mlops_serve::grpc::GrpcRemoteServer;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let server = deployed(0, LinearLoader::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let keys = KeyRing::new(ApiKeys::new().with_key("app", INFER, &[Scope::Infer]));
    let config = GrpcConfig::new(keys).with_tls(cert_pem.clone(), key_pem);
    let s: Arc<dyn Server> = Arc::new(server.clone());
    tokio::spawn(serve(listener, s, None, config, std::future::pending()));
    let values = TensorData::Fp32(vec![1.0, 2.0]);
    let request = InferenceRequest::new(vec![Tensor::new("x", vec![1, 2], values).unwrap()]);
    // Over TLS, trusting the generated certificate: served.
    let tls = GrpcRemoteServer::new(&format!("https://localhost:{port}"))
        .unwrap()
        .with_tls(cert_pem)
        .unwrap()
        .with_api_key(INFER);
    let answer = within(
        "an answer over TLS",
        tls.infer("fraud", None, request.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.output("y").unwrap().data.to_f32_vec().unwrap(),
        vec![5.5]
    );
    // Trusting another certificate authority, or speaking plaintext: refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let wrong = GrpcRemoteServer::new(&format!("https://localhost:{port}"))
        .unwrap()
        .with_tls(other.cert.pem())
        .unwrap()
        .with_api_key(INFER);
    assert!(
        within("a refusal", wrong.infer("fraud", None, request.clone()))
            .await
            .is_err()
    );
    let plain = GrpcRemoteServer::new(&format!("http://localhost:{port}"))
        .unwrap()
        .with_api_key(INFER);
    assert!(
        within("a refusal", plain.infer("fraud", None, request))
            .await
            .is_err()
    );
    // A key that is not one is refused when the face starts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = GrpcConfig::new(KeyRing::new(ApiKeys::new().with_key(
        "a",
        "k",
        &[Scope::Infer],
    )))
    .with_tls(other.cert.pem(), "not a key");
    let s: Arc<dyn Server> = Arc::new(server.clone());
    let err = serve(listener, s, None, bad, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferences_beyond_the_concurrency_limit_are_refused_at_once() {
    use crate::common::{GATED, Gate};
    let gate = Gate::closed();
    let server = deployed(GATED, LinearLoader::default().gated_calls(&gate)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = GrpcConfig::new(KeyRing::default())
        .allow_unauthenticated()
        .with_max_concurrency(1);
    let s: Arc<dyn Server> = Arc::new(server.clone());
    tokio::spawn(serve(listener, s, None, config, std::future::pending()));
    let client = mlops_serve::grpc::GrpcRemoteServer::new(&url).unwrap();
    let request = || {
        let values = TensorData::Fp32(vec![1.0, 2.0]);
        InferenceRequest::new(vec![Tensor::new("x", vec![1, 2], values).unwrap()])
    };
    let held = {
        let (c, r) = (client.clone(), request());
        tokio::spawn(async move { c.infer("fraud", None, r).await })
    };
    gate.held(1, "the first call in the model").await;
    let mut raw = GrpcInferenceServiceClient::new(
        Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let refused = raw
        .model_infer(keyed(infer_request(1, false), None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("1 inferences are in flight"),
        "{refused:?}"
    );
    gate.open();
    within("the held call", held).await.unwrap().unwrap();
    // The place is free again.
    assert!(client.infer("fraud", None, request()).await.is_ok());
}
