//! The two services and [`serve`].

use std::sync::Arc;
use std::time::Duration;

use mlops_core::{Error, Result, Server};
use tonic::{Request, Response, Status};

use super::convert::{request_in, response_out, spec_out, status};
use super::proto as pb;
use super::proto::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use super::proto::model_repository::model_repository_service_server::{
    ModelRepositoryService, ModelRepositoryServiceServer,
};
use crate::auth::{KeyRing, Scope};
use crate::http::auth::Refusals;
use crate::server::ModelServer;

/// The gRPC face's settings: the keys it checks (the HTTP face's ring, so a
/// reload reaches both), message size, deadline and concurrency.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    keys: KeyRing,
    open: bool,
    /// PEM certificate chain and private key, for TLS.
    tls: Option<(Vec<u8>, Vec<u8>)>,
    max_message_bytes: usize,
    request_timeout: Duration,
    max_concurrent_streams: u32,
    max_concurrency: usize,
}

impl GrpcConfig {
    /// Requests need a key of `keys` with the call's scope; messages up to
    /// 64 MiB; 30 s per call; 1,024 calls at once per connection.
    pub fn new(keys: KeyRing) -> Self {
        Self {
            keys,
            open: false,
            tls: None,
            max_message_bytes: 64 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrent_streams: 1024,
            max_concurrency: 1024,
        }
    }

    /// Serves without keys: inference and health are open, load and unload
    /// are refused (as on the HTTP face).
    pub fn allow_unauthenticated(mut self) -> Self {
        self.open = true;
        self
    }

    /// Largest message taken (larger: `RESOURCE_EXHAUSTED`) or sent.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How long a call may take (then `DEADLINE_EXCEEDED`, or the client's
    /// shorter `grpc-timeout`).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Serves over TLS (rustls) with this PEM certificate chain and PEM
    /// private key; clients must then connect with `https://`.
    pub fn with_tls(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Inferences in flight across all connections; one more is refused at
    /// once with `RESOURCE_EXHAUSTED` (the HTTP face's `max_concurrency`).
    pub fn with_max_concurrency(mut self, calls: usize) -> Self {
        self.max_concurrency = calls.max(1);
        self
    }

    /// Calls at once on one connection (HTTP/2 streams).
    pub fn with_max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams;
        self
    }
}

/// The HTTP/2 stream window of both ends (the connection's is 4x).
pub(super) const WINDOW: u32 = 4 << 20;

/// Checks the call's `authorization` metadata for `scope`; a refusal is
/// counted and logged as the HTTP face's are.
fn authorize<T>(
    (keys, refusals): (&KeyRing, &Refusals),
    request: &Request<T>,
    scope: Scope,
) -> std::result::Result<(), Status> {
    let current = keys.current();
    if current.is_empty() {
        // Only a face built with `allow_unauthenticated` has no keys.
        return match scope {
            Scope::Admin => Err(status(&Error::Forbidden {
                reason: "load and unload need an API key with the admin scope, and the server \
                         has no keys"
                    .into(),
            })),
            _ => Ok(()),
        };
    }
    let value = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    current.authorize(value, scope).map(|_| ()).map_err(|e| {
        refusals.record(scope, &e);
        status(&e)
    })
}

/// An empty version string is no version.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// The protocol's services over a [`Server`], with load and unload when it
/// is the model server.
#[derive(Debug, Clone)]
struct Faces {
    server: Arc<dyn Server>,
    models: Option<ModelServer>,
    keys: KeyRing,
    refusals: Refusals,
    /// Places for inferences in flight.
    permits: Arc<tokio::sync::Semaphore>,
    max_concurrency: usize,
}

impl Faces {
    async fn index(&self, ready_only: bool) -> Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for name in self.server.list_models().await? {
            let ready = self.server.model_ready(&name, None).await.unwrap_or(false);
            if ready || !ready_only {
                out.push((name, ready));
            }
        }
        Ok(out)
    }

    fn models(&self) -> Result<&ModelServer> {
        self.models.as_ref().ok_or_else(|| {
            Error::conflict(
                "model repository",
                "this gRPC face serves a remote server: it has no repository to load from",
            )
        })
    }

    async fn load(&self, name: &str) -> Result<()> {
        self.models()?.load(name).await.map(|_| ())
    }

    fn unload(&self, name: &str) -> Result<()> {
        self.models()?.unload(name)
    }
}

type Answer<T> = std::result::Result<Response<T>, Status>;

fn answer<T>(r: Result<T>) -> Answer<T> {
    r.map(Response::new).map_err(|e| status(&e))
}

#[tonic::async_trait]
impl GrpcInferenceService for Faces {
    async fn server_live(
        &self,
        request: Request<pb::ServerLiveRequest>,
    ) -> Answer<pb::ServerLiveResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        answer(
            self.server
                .live()
                .await
                .map(|live| pb::ServerLiveResponse { live }),
        )
    }

    async fn server_ready(
        &self,
        request: Request<pb::ServerReadyRequest>,
    ) -> Answer<pb::ServerReadyResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        answer(
            self.server
                .ready()
                .await
                .map(|ready| pb::ServerReadyResponse { ready }),
        )
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Answer<pb::ModelReadyResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        let r = request.into_inner();
        // A boolean question: a model that is not (or no longer) served is
        // not ready, as Triton answers after an unload.
        let ready = match self.server.model_ready(&r.name, version(&r.version)).await {
            Err(Error::NotFound { .. }) => Ok(false),
            other => other,
        };
        answer(ready.map(|ready| pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<pb::ServerMetadataRequest>,
    ) -> Answer<pb::ServerMetadataResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        answer(
            self.server
                .server_metadata()
                .await
                .map(|m| pb::ServerMetadataResponse {
                    name: m.name,
                    version: m.version,
                    extensions: m.extensions,
                }),
        )
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Answer<pb::ModelMetadataResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        let r = request.into_inner();
        answer(
            self.server
                .model_metadata(&r.name, version(&r.version))
                .await
                .map(|m| pb::ModelMetadataResponse {
                    name: m.name,
                    versions: m.versions.unwrap_or_default(),
                    platform: m.platform,
                    inputs: m.inputs.iter().map(spec_out).collect(),
                    outputs: m.outputs.iter().map(spec_out).collect(),
                }),
        )
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Answer<pb::ModelInferResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        // Over capacity: refused at once, before any decoding or model work.
        let _permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "unavailable: {} inferences are in flight, the most this server takes; \
                 retry later",
                self.max_concurrency
            ))
        })?;
        let r = request.into_inner();
        let (model, model_version) = (r.model_name.clone(), r.model_version.clone());
        let (request, raw) = request_in(r).map_err(|e| status(&e))?;
        let response = self
            .server
            .infer(&model, version(&model_version), request)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(response_out(&response, raw)))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Infer)?;
        let ready = request.get_ref().ready;
        answer(self.index(ready).await.map(|models| {
            pb::RepositoryIndexResponse {
                models: models
                    .into_iter()
                    .map(|(name, ready)| pb::repository_index_response::ModelIndex {
                        name,
                        version: String::new(),
                        state: if ready { "READY" } else { "UNAVAILABLE" }.into(),
                        reason: String::new(),
                    })
                    .collect(),
            }
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Admin)?;
        answer(
            self.load(&request.get_ref().model_name)
                .await
                .map(|()| pb::RepositoryModelLoadResponse {}),
        )
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        authorize((&self.keys, &self.refusals), &request, Scope::Admin)?;
        answer(
            self.unload(&request.get_ref().model_name)
                .map(|()| pb::RepositoryModelUnloadResponse {}),
        )
    }
}

/// MLServer's place for the repository calls: the same calls, on the same
/// messages, as in the inference service.
#[tonic::async_trait]
impl ModelRepositoryService for Faces {
    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        GrpcInferenceService::repository_index(self, request).await
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        GrpcInferenceService::repository_model_load(self, request).await
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        GrpcInferenceService::repository_model_unload(self, request).await
    }
}

/// Serves the protocol's gRPC services for `server` on `listener` until
/// `shutdown` resolves, then finishes the calls in flight. `models` (the
/// model server itself, when `server` is one) enables load and unload.
///
/// # Errors
/// [`Error::InvalidInput`] for a face without keys that was not built with
/// [`GrpcConfig::allow_unauthenticated`]; transport failures as
/// [`Error::Backend`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<dyn Server>,
    models: Option<ModelServer>,
    config: GrpcConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    if !config.open && config.keys.current().is_empty() {
        return Err(Error::invalid_input(
            "gRPC config",
            "no API keys are configured: add keys, or serve without authentication \
             explicitly (allow_unauthenticated)",
        ));
    }
    // Refusals count into the model server's metrics, when it is the server.
    let refusals = models
        .as_ref()
        .map(|m| Refusals::counted(m.auth_failures()))
        .unwrap_or_default();
    let faces = Faces {
        server,
        models,
        keys: config.keys.clone(),
        refusals,
        permits: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency)),
        max_concurrency: config.max_concurrency,
    };
    let max = config.max_message_bytes;
    let inference = GrpcInferenceServiceServer::new(faces.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let repository = ModelRepositoryServiceServer::new(faces)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        super::ensure_crypto_provider();
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::invalid_input("gRPC TLS certificate or key", e.to_string()))?;
    }
    builder
        .layer(OversizeLayer)
        // Windows for tensors of megabytes: HTTP/2's default 64 KiB window
        // makes a large request wait on flow-control round trips.
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(4 * WINDOW))
        .timeout(config.request_timeout)
        .max_concurrent_streams(config.max_concurrent_streams)
        .add_service(inference)
        .add_service(repository)
        .serve_with_incoming_shutdown(
            // No Nagle delay: a small answer after a large request would wait
            // for the client's delayed acknowledgement (tens of ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| Error::backend("gRPC server", e))
}

/// Answers a request over the message limit with `RESOURCE_EXHAUSTED`, as
/// gRPC's other servers do (tonic says `OUT_OF_RANGE`), naming the limit.
#[derive(Debug, Clone, Copy)]
struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Oversize(inner)
    }
}

#[derive(Debug, Clone)]
struct Oversize<S>(S);

impl<S, B, R> tower::Service<tonic::codegen::http::Request<B>> for Oversize<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Self::Response, Self::Error>>
                + Send,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let future = self.0.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
                && headers
                    .get("grpc-message")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
            if too_large {
                headers.insert(
                    "grpc-status",
                    tonic::codegen::http::HeaderValue::from_static("8"),
                );
            }
            Ok(response)
        })
    }
}
