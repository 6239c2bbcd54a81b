//! [`RemoteServer`]: the [`Server`] trait over HTTP, for any Open Inference
//! Protocol server (ours, Triton, KServe).

use std::time::Duration;

use async_trait::async_trait;
use mlops_core::error::ResourceKind;
use mlops_core::inference::{
    InferenceRequest, InferenceResponse, ModelMetadataResponse, ServerMetadataResponse,
};
use mlops_core::{Error, Result, Server};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};

use crate::codec::{self, ErrorResponse, HEADER_CONTENT_LENGTH};

/// `message` without a leading `prefix`.
fn strip(message: &str, prefix: &str) -> String {
    message.strip_prefix(prefix).unwrap_or(message).to_owned()
}

/// Bytes escaped in a path segment: all but RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` as one URL path segment: `/`, `?`, `#`, `%` and the rest cannot
/// reach another route or endpoint.
fn segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// Default limit on a whole request, answer included: 30 s.
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit on an answer's body: 64 MiB.
const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A remote v2 server, reached over HTTP.
///
/// Model names and versions are percent-encoded into the URL; every request is
/// bounded in time ([`with_timeout`](Self::with_timeout), 30 s by default, 5 s to
/// connect) and every answer in size
/// ([`with_max_response_bytes`](Self::with_max_response_bytes), 64 MiB).
///
/// ```no_run
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_core::Server;
/// use mlops_serve::RemoteServer;
///
/// let server = RemoteServer::new("http://127.0.0.1:8000")?.with_api_key("s3cret");
/// assert!(server.live().await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RemoteServer {
    base: String,
    client: reqwest::Client,
    api_key: Option<String>,
    binary: bool,
    timeout: Duration,
    max_response_bytes: usize,
}

impl RemoteServer {
    /// A client of the server at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid_input(
                format!("server URL {base_url:?}"),
                "expected http://host:port",
            ));
        }
        Ok(Self {
            base,
            client: Self::client(DEFAULT_CLIENT_TIMEOUT)?,
            api_key: None,
            binary: false,
            timeout: DEFAULT_CLIENT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    fn client(timeout: Duration) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::backend("HTTP client", e))
    }

    /// Gives up on a request (connecting, sending and reading the answer) after
    /// `timeout`, with [`Error::Unavailable`].
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::invalid_input("client timeout", "must be positive"));
        }
        self.client = Self::client(timeout)?;
        self.timeout = timeout;
        Ok(self)
    }

    /// Refuses answers larger than `bytes` (a server that streams without end
    /// cannot exhaust the client's memory).
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes.max(1);
        self
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sends inputs and asks for outputs in the binary tensor extension (smaller
    /// and faster for large batches; carries NaN).
    pub fn with_binary_tensors(mut self, on: bool) -> Self {
        self.binary = on;
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, Option<usize>)>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, bytes::Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method, &url);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        if let Some((bytes, json_len)) = body {
            req = match json_len {
                Some(n) => req
                    .header(HEADER_CONTENT_LENGTH, n.to_string())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream"),
                None => req.header(reqwest::header::CONTENT_TYPE, "application/json"),
            };
            req = req.body(bytes);
        }
        let unavailable = |doing: &str, e: reqwest::Error| Error::Unavailable {
            what: format!("server {}", self.base),
            reason: if e.is_timeout() {
                format!("{doing} {url} timed out after {:?}", self.timeout)
            } else {
                format!("{doing} {url} failed: {e}")
            },
        };
        let mut resp = req.send().await.map_err(|e| unavailable("request to", e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let limit = self.max_response_bytes;
        let too_large = || {
            Error::backend(
                format!("server {}", self.base),
                format!("the answer of {url} is larger than the client's limit of {limit} bytes"),
            )
        };
        if resp
            .content_length()
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable("reading the answer of", e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body.freeze()))
    }

    /// The error a non-success answer stands for.
    fn error(&self, path: &str, status: StatusCode, body: &[u8]) -> Error {
        let message = serde_json::from_slice::<ErrorResponse>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
        let what = format!("{} {path}", self.base);
        match status.as_u16() {
            400 | 413 | 422 => Error::invalid_input(what, message),
            // The server's message is the error's own text: keep its reason only.
            401 => Error::Unauthorized {
                reason: strip(&message, "unauthorized: "),
            },
            403 => Error::Forbidden {
                reason: strip(&message, "forbidden: "),
            },
            404 => Error::not_found(ResourceKind::Model, format!("{path}: {message}")),
            409 => Error::conflict(what, message),
            429 | 503 | 504 => Error::Unavailable {
                what,
                reason: message,
            },
            code => Error::backend(
                format!("server {}", self.base),
                format!("HTTP {code}: {message}"),
            ),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, _, body) = self.call(Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(self.error(path, status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::backend(format!("server {}", self.base), format!("{path}: {e}")))
    }

    /// A health-style answer: 200 is true, 4xx false (the spec), others errors.
    async fn flag(&self, path: &str) -> Result<bool> {
        let (status, _, body) = self.call(Method::GET, path, None).await?;
        if status.is_success() {
            Ok(true)
        } else if status == StatusCode::NOT_FOUND
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
        {
            Err(self.error(path, status, &body))
        } else if status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(false)
        } else {
            Err(self.error(path, status, &body))
        }
    }
}

impl RemoteServer {
    async fn post_json(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let bytes = serde_json::to_vec(&body).map_err(|e| Error::backend("json", e))?;
        let (status, _, answer) = self.call(Method::POST, path, Some((bytes, None))).await?;
        if !status.is_success() {
            return Err(self.error(path, status, &answer));
        }
        serde_json::from_slice(&answer)
            .map_err(|e| Error::backend(format!("server {}", self.base), format!("{path}: {e}")))
    }

    /// Records the true outcomes (one per row) of request `id`; returns the
    /// version that served it.
    pub async fn record_feedback(&self, model: &str, id: &str, outcomes: &[f64]) -> Result<u64> {
        self.feedback(model, serde_json::json!({"id": id, "outcomes": outcomes}))
            .await
    }

    /// Records business metrics (name to value) of request `id` for the
    /// version that served it, as
    /// [`ModelServer::record_metrics`](crate::ModelServer::record_metrics)
    /// does; returns that version.
    pub async fn record_metrics(
        &self,
        model: &str,
        id: &str,
        metrics: &std::collections::BTreeMap<String, f64>,
    ) -> Result<u64> {
        self.feedback(model, serde_json::json!({"id": id, "metrics": metrics}))
            .await
    }

    async fn feedback(&self, model: &str, body: serde_json::Value) -> Result<u64> {
        let v = self
            .post_json(&format!("/v2/models/{}/feedback", segment(model)), body)
            .await?;
        v["version"].as_u64().ok_or_else(|| {
            Error::backend(
                format!("server {}", self.base),
                "feedback answer lacks the version",
            )
        })
    }
}

#[async_trait]
impl mlops_core::monitoring::TrafficControl for RemoteServer {
    async fn health(&self, deployment: &str) -> Result<mlops_core::monitoring::ModelHealth> {
        self.get_json(&format!("/v2/models/{}/health", segment(deployment)))
            .await
    }

    async fn start_canary(
        &self,
        deployment: &str,
        stable: u64,
        canary: u64,
        weight: f64,
    ) -> Result<()> {
        let body = serde_json::json!({"canary": {"stable": stable.to_string(), "canary": canary.to_string(), "weight": weight}});
        self.post_json(
            &format!("/admin/models/{}/routing", segment(deployment)),
            body,
        )
        .await
        .map(|_| ())
    }

    async fn set_canary_weight(&self, deployment: &str, weight: f64) -> Result<()> {
        self.post_json(
            &format!("/admin/models/{}/canary", segment(deployment)),
            serde_json::json!({"weight": weight}),
        )
        .await
        .map(|_| ())
    }

    async fn route_all(&self, deployment: &str, version: u64) -> Result<()> {
        self.post_json(
            &format!("/admin/models/{}/routing", segment(deployment)),
            serde_json::json!({"fixed": version.to_string()}),
        )
        .await
        .map(|_| ())
    }
}

fn model_path(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("/v2/models/{}/versions/{}", segment(model), segment(v)),
        None => format!("/v2/models/{}", segment(model)),
    }
}

#[async_trait]
impl Server for RemoteServer {
    async fn live(&self) -> Result<bool> {
        self.flag("/v2/health/live").await
    }

    async fn ready(&self) -> Result<bool> {
        self.flag("/v2/health/ready").await
    }

    async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        self.get_json("/v2").await
    }

    async fn list_models(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Models {
            models: Vec<String>,
        }
        Ok(self.get_json::<Models>("/v2/models").await?.models)
    }

    async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadataResponse> {
        self.get_json(&model_path(model, version)).await
    }

    async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        self.flag(&format!("{}/ready", model_path(model, version)))
            .await
    }

    async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        mut request: InferenceRequest,
    ) -> Result<InferenceResponse> {
        let path = format!("{}/infer", model_path(model, version));
        if self.binary {
            request.parameters.insert(
                codec::BINARY_DATA_OUTPUT.into(),
                mlops_core::inference::ParameterValue::Bool(true),
            );
        }
        let body = codec::encode_request(&request, |_| self.binary)?;
        let (status, headers, bytes) = self.call(Method::POST, &path, Some(body)).await?;
        if !status.is_success() {
            return Err(self.error(&path, status, &bytes));
        }
        let json_len = headers
            .get(HEADER_CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        codec::decode_response(&bytes, json_len)
    }
}
