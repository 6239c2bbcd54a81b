//! [`GrpcRemoteServer`]: a [`Server`] reached over the protocol's gRPC face,
//! so code written against `Server` (and `RemoteServer`'s users) works over
//! either transport.

use std::time::Duration;

use async_trait::async_trait;
use mlops_core::inference::{
    InferenceRequest, InferenceResponse, ModelMetadataResponse, ServerMetadataResponse,
};
use mlops_core::{Error, Result, Server};
use tonic::transport::Channel;

use super::convert::{error, request_out, response_in, spec_in};
use super::proto::{self as pb, grpc_inference_service_client::GrpcInferenceServiceClient};

/// A server of the Open Inference Protocol over gRPC (ours, Triton, KServe,
/// MLServer), as a [`Server`]. Connects lazily; cloning shares the
/// connection.
///
/// ```
/// # fn demo() -> mlops_core::Result<()> {
/// # let _rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # let _guard = _rt.enter();
/// use mlops_serve::grpc::GrpcRemoteServer;
///
/// let server = GrpcRemoteServer::new("http://127.0.0.1:8001")?.with_api_key("s3cret");
/// # let _ = server; Ok(()) }
/// # demo().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct GrpcRemoteServer {
    url: String,
    client: GrpcInferenceServiceClient<Channel>,
    key: Option<String>,
    timeout: Duration,
    max_message_bytes: usize,
}

impl GrpcRemoteServer {
    /// A client of the server at `url` (`http://host:port`), each call limited
    /// to 30 s and 64 MiB messages. Needs a tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a URL that is not one.
    pub fn new(url: &str) -> Result<Self> {
        let channel = Self::endpoint(url)?.connect_lazy();
        let max = 64 << 20;
        Ok(Self {
            url: url.to_owned(),
            client: GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            key: None,
            timeout: Duration::from_secs(30),
            max_message_bytes: max,
        })
    }

    fn endpoint(url: &str) -> Result<tonic::transport::Endpoint> {
        Ok(Channel::from_shared(url.to_owned())
            .map_err(|e| Error::invalid_input(format!("gRPC server URL {url:?}"), e.to_string()))?
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(super::service::WINDOW))
            .initial_connection_window_size(Some(4 * super::service::WINDOW)))
    }

    /// Connects over TLS (an `https://` URL), trusting the certificate
    /// authority `ca_pem` (PEM) for the server's certificate.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the CA or the URL cannot make a TLS
    /// connection's settings.
    pub fn with_tls(mut self, ca_pem: impl AsRef<[u8]>) -> Result<Self> {
        super::ensure_crypto_provider();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
        let channel = Self::endpoint(&self.url)?
            .tls_config(tls)
            .map_err(|e| Error::invalid_input("gRPC TLS settings", e.to_string()))?
            .connect_lazy();
        self.client = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        Ok(self)
    }

    /// Sends `key` as `authorization: Bearer <key>` with every call.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Each call's deadline (sent as `grpc-timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest message sent or taken.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self.client = self
            .client
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        self
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        if let Some(key) = &self.key {
            let value = format!("Bearer {key}").parse().map_err(|_| {
                Error::invalid_input("API key", "it is not a valid gRPC metadata value")
            })?;
            r.metadata_mut().insert("authorization", value);
        }
        Ok(r)
    }

    fn failed(&self, s: &tonic::Status) -> Error {
        error(&format!("gRPC server {}", self.url), s)
    }
}

#[async_trait]
impl Server for GrpcRemoteServer {
    async fn live(&self) -> Result<bool> {
        let r = self.request(pb::ServerLiveRequest {})?;
        let mut c = self.client.clone();
        Ok(c.server_live(r)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner()
            .live)
    }

    async fn ready(&self) -> Result<bool> {
        let r = self.request(pb::ServerReadyRequest {})?;
        let mut c = self.client.clone();
        Ok(c.server_ready(r)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner()
            .ready)
    }

    async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        let r = self.request(pb::ServerMetadataRequest {})?;
        let mut c = self.client.clone();
        let m = c
            .server_metadata(r)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        Ok(ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        })
    }

    async fn list_models(&self) -> Result<Vec<String>> {
        let r = self.request(pb::RepositoryIndexRequest::default())?;
        let mut c = self.client.clone();
        let index = c
            .repository_index(r)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        let mut names: Vec<String> = index.models.into_iter().map(|m| m.name).collect();
        names.dedup();
        Ok(names)
    }

    async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadataResponse> {
        let r = self.request(pb::ModelMetadataRequest {
            name: model.to_owned(),
            version: version.unwrap_or_default().to_owned(),
        })?;
        let mut c = self.client.clone();
        let m = c
            .model_metadata(r)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner();
        Ok(ModelMetadataResponse {
            name: m.name,
            versions: (!m.versions.is_empty()).then_some(m.versions),
            platform: m.platform,
            inputs: m.inputs.into_iter().map(spec_in).collect::<Result<_>>()?,
            outputs: m.outputs.into_iter().map(spec_in).collect::<Result<_>>()?,
            matrix_input: None,
        })
    }

    async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        let r = self.request(pb::ModelReadyRequest {
            name: model.to_owned(),
            version: version.unwrap_or_default().to_owned(),
        })?;
        let mut c = self.client.clone();
        Ok(c.model_ready(r)
            .await
            .map_err(|s| self.failed(&s))?
            .into_inner()
            .ready)
    }

    async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferenceRequest,
    ) -> Result<InferenceResponse> {
        let r = self.request(request_out(model, version, &request))?;
        let mut c = self.client.clone();
        let answer = c.model_infer(r).await.map_err(|s| self.failed(&s))?;
        response_in(answer.into_inner())
            .map_err(|e| Error::backend(format!("gRPC server {}", self.url), e.to_string()))
    }
}
