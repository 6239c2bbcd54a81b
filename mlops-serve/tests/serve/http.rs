//! The HTTP face, through our client and raw HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mlops_core::inference::{InferenceRequest, Tensor, TensorData};
use mlops_core::model::VersionSelector;
use mlops_core::{Error, Server};
use mlops_serve::HttpConfig;
use mlops_serve::http::{router, serve};
use mlops_serve::{
    ApiKeys, BatchConfig, DeploymentConfig, ModelServer, RemoteServer, Routing, Scope,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::common::*;

pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) addr: SocketAddr,
    pub(crate) server: ModelServer,
    stop: Option<oneshot::Sender<()>>,
    pub(crate) done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub(crate) fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A face without keys, explicitly (admin endpoints answer 403).
pub(crate) fn open() -> HttpConfig {
    HttpConfig::default().allow_unauthenticated()
}

pub(crate) async fn start(
    models: &[Linear],
    config: HttpConfig,
    batching: Option<BatchConfig>,
) -> Running {
    start_with(models, config, batching, LinearLoader::default()).await
}

/// [`start`], with models loaded by `loader` (a gated one, say).
pub(crate) async fn start_with(
    models: &[Linear],
    config: HttpConfig,
    batching: Option<BatchConfig>,
    loader: LinearLoader,
) -> Running {
    let registry = registry(models).await;
    let server = ModelServer::new(registry, vec![Arc::new(loader)]);
    let mut d = DeploymentConfig::new("fraud", "m", Routing::Fixed(VersionSelector::Latest));
    d.batching = batching;
    server.deploy(d).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(server.clone(), config.clone()).unwrap();
    let done = tokio::spawn(async move {
        serve(listener, app, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        base,
        addr,
        server,
        stop: Some(stop),
        done,
    }
}

/// An HTTP client whose every request has a deadline.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().request(method.parse().unwrap(), url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_client_speaks_to_the_http_face() {
    let mut running = start(&[version_model(1), version_model(2)], open(), None).await;
    let remote = RemoteServer::new(&running.base).unwrap();
    assert!(remote.live().await.unwrap());
    assert!(remote.ready().await.unwrap());
    assert_eq!(remote.list_models().await.unwrap(), vec!["fraud"]);
    let meta = remote.model_metadata("fraud", None).await.unwrap();
    assert_eq!(
        meta,
        running.server.model_metadata("fraud", None).await.unwrap()
    );
    assert!(
        remote
            .server_metadata()
            .await
            .unwrap()
            .extensions
            .contains(&"binary_tensor_data".to_owned())
    );
    assert!(remote.model_ready("fraud", Some("2")).await.unwrap());
    assert!(
        !remote.model_ready("fraud", Some("1")).await.unwrap(),
        "version 1 is not deployed"
    );

    // The same request gives the same answer locally and remotely, JSON or binary.
    let mut req = request(&[[1.5, 2.0], [3.0, -1.0]]);
    req.id = Some("abc".into());
    let local = running
        .server
        .infer("fraud", None, req.clone())
        .await
        .unwrap();
    let json = remote.infer("fraud", None, req.clone()).await.unwrap();
    assert_eq!(json, local);
    let binary = remote
        .clone()
        .with_binary_tensors(true)
        .infer("fraud", Some("2"), req)
        .await
        .unwrap();
    assert_eq!(binary.outputs, local.outputs);
    assert_eq!(binary.id.as_deref(), Some("abc"));

    // Errors come back as the same error kinds.
    assert!(matches!(
        remote
            .infer("nope", None, request(&[[1.0, 1.0]]))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    let bad = InferenceRequest::new(vec![
        Tensor::new(
            "x",
            vec![1, 2],
            TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec()]),
        )
        .unwrap(),
    ]);
    let err = remote.infer("fraud", None, bad).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("input 'x'"),
        "{err}"
    );
    running.stop();
    join("the server's shutdown", running.done).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_with_a_message() {
    let config = open().with_max_body_bytes(4096);
    let running = start(&[version_model(1)], config, None).await;
    let infer = format!("{}/v2/models/fraud/infer", running.base);
    type Case<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (b"{not json".to_vec(), vec![], 400, "inference request"),
        (
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,"a"]}]}"#.to_vec(),
            vec![],
            400,
            "element 1",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2,3]}]}"#.to_vec(),
            vec![],
            400,
            "holds 2 elements",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP99","data":[1,2]}]}"#.to_vec(),
            vec![],
            400,
            "FP99",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1e39,2]}]}"#
                .to_vec(),
            vec![],
            400,
            "out of range",
        ),
        (
            br#"{"inputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#.to_vec(),
            vec![],
            400,
            "input 'y'",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#.to_vec(),
            vec![("Inference-Header-Content-Length", "9999")],
            400,
            "Inference-Header-Content-Length",
        ),
        (vec![b' '; 5000], vec![], 413, "4096 bytes"),
    ];
    for (body, headers, status, needle) in cases {
        let (got, _, text) = raw("POST", &infer, &headers, body).await;
        assert_eq!(got, status, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{needle:?} not in {text}"
        );
    }
    let (status, _, text) = raw(
        "POST",
        &format!("{}/v2/models/nope/infer", running.base),
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    let (status, _, text) = raw(
        "GET",
        &format!("{}/v2/models/fraud/versions/7", running.base),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 404, "{text}");
    let (status, _, _) = raw("GET", &format!("{}/v3/nothing", running.base), &[], vec![]).await;
    assert_eq!(status, 404);
    // The model answered with a good request afterwards: nothing broke.
    let ok = br#"{"id":"7","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1,2]]}],"outputs":[{"name":"twice"}]}"#;
    let (status, _, text) = raw("POST", &infer, &[], ok.to_vec()).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], "7");
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([2.0]));
    let (status, _, metrics) = raw("GET", &format!("{}/metrics", running.base), &[], vec![]).await;
    assert_eq!(status, 200, "{metrics}");
    let requests = samples(&metrics, "mlops_inference_requests_total");
    for code in ["400", "413"] {
        let status = format!("status=\"{code}\"");
        assert!(
            requests
                .iter()
                .any(|(labels, n)| labels.contains(&status) && *n >= 1.0),
            "no {code} counted: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_scopes_and_admin_endpoints() {
    let keys = ApiKeys::new()
        .with_key("app", "infer-key", &[Scope::Infer])
        .with_key("ops", "admin-key", &[Scope::Admin]);
    let audit = Arc::new(mlops_store::ObjectAuditLog::new(
        &mlops_store::StoreRoot::open("memory://").unwrap(),
    ));
    let running = start(
        &[version_model(1), version_model(2)],
        HttpConfig::default()
            .with_keys(keys)
            .with_audit(audit.clone()),
        None,
    )
    .await;
    let b = &running.base;
    // Health stays open for probes.
    assert_eq!(
        raw("GET", &format!("{b}/v2/health/ready"), &[], vec![])
            .await
            .0,
        200
    );
    let (status, headers, text) = raw("GET", &format!("{b}/v2/models/fraud"), &[], vec![]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        !text.contains("infer-key") && !text.contains("admin-key"),
        "no key material in: {text}"
    );
    let (status, _, text) = raw(
        "GET",
        &format!("{b}/v2/models/fraud"),
        &[("Authorization", "Bearer wrong-key")],
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    assert!(!text.contains("wrong-key"));
    assert_eq!(
        raw(
            "GET",
            &format!("{b}/v2/models/fraud"),
            &[("Authorization", "Bearer infer-key")],
            vec![]
        )
        .await
        .0,
        200
    );
    let (status, _, text) = raw(
        "POST",
        &format!("{b}/v2/models/fraud/reload"),
        &[("Authorization", "Bearer infer-key")],
        vec![],
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("admin scope"));
    assert_eq!(
        raw(
            "GET",
            &format!("{b}/metrics"),
            &[("Authorization", "Bearer infer-key")],
            vec![]
        )
        .await
        .0,
        403
    );
    assert_eq!(
        raw(
            "GET",
            &format!("{b}/metrics"),
            &[("Authorization", "Bearer admin-key")],
            vec![]
        )
        .await
        .0,
        200
    );

    // Admin: routing, canary weight, status, repository unload/load.
    let admin = [("Authorization", "Bearer admin-key")];
    let (status, _, text) = raw(
        "POST",
        &format!("{b}/admin/models/fraud/routing"),
        &admin,
        br#"{"canary":{"stable":"1","canary":"2","weight":0.0}}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // Through the client, a refused key is the same error as in process, worded once.
    let keyless = RemoteServer::new(b).unwrap().with_api_key("wrong-key");
    let err = keyless.list_models().await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.to_string().matches("unauthorized").count(), 1, "{err}");
    let remote = RemoteServer::new(b).unwrap().with_api_key("infer-key");
    assert_eq!(
        remote
            .infer("fraud", None, request(&[[1.0, 0.0]]))
            .await
            .unwrap()
            .model_version
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        raw(
            "POST",
            &format!("{b}/admin/models/fraud/canary"),
            &admin,
            br#"{"weight":1}"#.to_vec()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        remote
            .infer("fraud", None, request(&[[1.0, 0.0]]))
            .await
            .unwrap()
            .model_version
            .as_deref(),
        Some("2")
    );
    let (status, _, text) = raw(
        "POST",
        &format!("{b}/admin/models/fraud/canary"),
        &admin,
        br#"{"weight":7}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, _, text) = raw(
        "POST",
        &format!("{b}/admin/models/fraud/routing"),
        &admin,
        br#"{"bogus":1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (_, _, text) = raw("GET", &format!("{b}/admin/models/fraud"), &admin, vec![]).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["versions"], serde_json::json!([1, 2]));
    assert_eq!(
        raw(
            "POST",
            &format!("{b}/v2/repository/models/fraud/unload"),
            &admin,
            vec![]
        )
        .await
        .0,
        200
    );
    assert!(matches!(
        remote
            .infer("fraud", None, request(&[[1.0, 0.0]]))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
    assert_eq!(
        raw(
            "POST",
            &format!("{b}/v2/repository/models/fraud/load"),
            &admin,
            vec![]
        )
        .await
        .0,
        200
    );
    assert!(
        remote
            .infer("fraud", None, request(&[[1.0, 0.0]]))
            .await
            .is_ok()
    );
    let (_, _, text) = raw("POST", &format!("{b}/v2/repository/index"), &admin, vec![]).await;
    assert!(text.contains("\"READY\""), "{text}");

    // Every admin action that changes something is in the audit log, with the
    // key that asked and the outcome (refused ones too); reads are not.
    use mlops_core::audit::AuditLog as _;
    let entries = audit.entries(1, 100).await.unwrap();
    let seen: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.event.actor.as_str(),
                e.event.action.as_str(),
                e.event.target.as_str(),
                e.event.details["status"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "api-key:ops",
                "http POST",
                "/admin/models/fraud/routing",
                "200"
            ),
            (
                "api-key:ops",
                "http POST",
                "/admin/models/fraud/canary",
                "200"
            ),
            (
                "api-key:ops",
                "http POST",
                "/admin/models/fraud/canary",
                "400"
            ),
            (
                "api-key:ops",
                "http POST",
                "/admin/models/fraud/routing",
                "400"
            ),
            (
                "api-key:ops",
                "http POST",
                "/v2/repository/models/fraud/unload",
                "200"
            ),
            (
                "api-key:ops",
                "http POST",
                "/v2/repository/models/fraud/load",
                "200"
            ),
        ]
    );
    assert!(matches!(
        audit.verify().await.unwrap(),
        mlops_core::audit::ChainVerdict::Intact { .. }
    ));
    // Refusals are counted by route group and status, never by key.
    let text = running.server.metrics_text();
    let refused = |labels: &str| sample(&text, "mlops_http_auth_failures_total", labels);
    assert_eq!(refused(r#"group="infer",status="401""#), 3.0, "{text}");
    assert_eq!(refused(r#"group="admin",status="403""#), 1.0);
    assert_eq!(refused(r#"group="metrics",status="403""#), 1.0);
    assert!(!text.contains("wrong-key") && !text.contains("\"app\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_timeouts_and_graceful_shutdown() {
    // Calls wait inside the model until the test opens the gate: requests are in
    // flight, together, by construction.
    let held = Linear {
        w: [1.0, 0.0],
        b: 0.0,
        delay_ms: GATED,
    };
    let gate = Gate::closed();
    // No request here may time out while the test holds it.
    let config = open()
        .with_max_concurrency(2)
        .with_request_timeout(2 * WAIT)
        .with_shutdown_grace(2 * WAIT);
    let loader = || LinearLoader::default().gated_calls(&gate);
    let mut running = start_with(std::slice::from_ref(&held), config, None, loader()).await;
    let remote = RemoteServer::new(&running.base)
        .unwrap()
        .with_timeout(2 * WAIT)
        .unwrap();
    let infer = |x: f32| {
        let r = remote.clone();
        tokio::spawn(async move { r.infer("fraud", None, request(&[[x, 0.0]])).await })
    };
    // Two requests held in the model take both places of the limit of two...
    let running_two = [infer(1.0), infer(2.0)];
    gate.held(2, "two requests in the model").await;
    // ...so two more are refused, 503 with Retry-After.
    for _ in 0..2 {
        let e = join("a request over the limit", infer(3.0))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Unavailable { .. }) && e.to_string().contains("concurrency limit"),
            "{e}"
        );
    }
    let body =
        br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#.to_vec();
    let url = format!("{}/v2/models/fraud/infer", running.base);
    let (status, headers, text) = raw("POST", &url, &[], body.clone()).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        gate.held_now(),
        2,
        "the refused requests never reached the model"
    );
    gate.open();
    for (t, x) in running_two.into_iter().zip([1.0, 2.0]) {
        let answer = join("a request within the limit", t).await.unwrap();
        assert_eq!(y_of(&answer), vec![x]);
    }
    let (status, _, text) = raw("POST", &url, &[], body.clone()).await;
    assert_eq!(status, 200, "a place is free again: {text}");

    // Graceful shutdown: a request in flight when shutdown starts still completes.
    gate.close();
    let in_flight = infer(4.0);
    gate.held(1, "the request in flight").await;
    running.stop();
    // Shutdown has begun once the listener is closed: new connections are refused.
    let addr = running.addr;
    eventually("the listener closes", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the request is still in the model"
    );
    gate.open();
    let answer = join("the request in flight", in_flight).await.unwrap();
    assert_eq!(y_of(&answer), vec![4.0]);
    join("the server's shutdown", running.done).await.unwrap();
    assert!(remote.live().await.is_err(), "the listener is closed");

    // A request timeout answers 504: the model is held past it.
    gate.close();
    let config = open().with_request_timeout(Duration::from_millis(50));
    let running = start_with(&[held], config, None, loader()).await;
    let (status, _, text) = raw(
        "POST",
        &format!("{}/v2/models/fraud/infer", running.base),
        &[],
        body,
    )
    .await;
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_client_encodes_names_and_bounds_time_and_size() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let running = start(&[version_model(1), version_model(2)], open(), None).await;
    let remote = RemoteServer::new(&running.base).unwrap();
    // A name holding a path, a query or a fragment stays one name: it cannot
    // reach another route (here, version 1 of "fraud").
    for name in ["fraud/versions/1", "fraud?v=1", "fraud#x", "fraud%2F"] {
        let err = remote
            .infer(name, None, request(&[[1.0, 0.0]]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{name}: {err}");
    }
    let err = remote
        .infer("fraud", Some("1/infer"), request(&[[1.0, 0.0]]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // A server that accepts and never answers: the request times out.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let slow = RemoteServer::new(&format!("http://{silent_addr}"))
        .unwrap()
        .with_timeout(Duration::from_millis(300))
        .unwrap();
    let started = std::time::Instant::now();
    let err = slow.live().await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.to_string().contains("timed out"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        RemoteServer::new("http://x")
            .unwrap()
            .with_timeout(Duration::ZERO)
            .is_err()
    );

    // Answers above the size limit: announced, or streamed without end.
    let small = RemoteServer::new(&running.base)
        .unwrap()
        .with_max_response_bytes(64);
    let err = small.model_metadata("fraud", None).await.unwrap_err();
    assert!(
        err.to_string().contains("larger than the client's limit"),
        "{err}"
    );
    let endless = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless_addr = endless.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = endless.accept().await {
            tokio::spawn(async move {
                // The request first, then an answer that never ends.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = [b"1000\r\n".as_slice(), &[b'x'; 4096], b"\r\n"].concat();
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let err = RemoteServer::new(&format!("http://{endless_addr}"))
        .unwrap()
        .with_max_response_bytes(1 << 20)
        .server_metadata()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("larger than the client's limit"),
        "{err}"
    );
}

/// A TLS client of `addr` trusting `ca_pem`: the answer to one raw request.
async fn over_tls(addr: SocketAddr, ca_pem: &str, request: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    tls.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_face_serves_https_with_a_generated_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let tls = mlops_serve::HttpTls::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let model = Linear {
        w: [1.0, 2.0],
        b: 0.0,
        delay_ms: 0,
    };
    let running = start(&[model], open().with_tls(tls), None).await;
    let live = "GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = within(
        "an answer over TLS",
        over_tls(running.addr, &cert_pem, live),
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Another CA is not trusted; plaintext gets no HTTP answer.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    assert!(
        within("a refusal", over_tls(running.addr, &other.cert.pem(), live))
            .await
            .is_err()
    );
    let plain = exchange_raw(running.addr, live).await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
    // PEM that is not a certificate or a key is refused, naming which.
    let bad = mlops_serve::HttpTls::from_pem(b"nope", key_pem.as_bytes()).unwrap_err();
    assert!(bad.to_string().contains("certificate"), "{bad}");
    let bad = mlops_serve::HttpTls::from_pem(cert_pem.as_bytes(), b"nope").unwrap_err();
    assert!(bad.to_string().contains("key"), "{bad}");
}

/// Sends `request` in plaintext and reads what comes back (empty when the
/// connection closes without an answer).
async fn exchange_raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = within("the connection ends", s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
