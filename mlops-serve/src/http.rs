//! The HTTP face of a [`ModelServer`]: the Open Inference Protocol (v2) REST API
//! with axum.
//!
//! | Method and path | Scope | What |
//! |---|---|---|
//! | `GET /v2/health/live`, `GET /v2/health/ready` | none | 200 when live / ready, else 400 (the spec's "4xx means false") |
//! | `GET /v2` | infer | server metadata |
//! | `GET /v2/models` | infer | `{"models": [names]}` |
//! | `GET /v2/models/{m}[/versions/{v}]` | infer | model metadata |
//! | `GET /v2/models/{m}[/versions/{v}]/ready` | infer | 200 when ready, else 400 |
//! | `POST /v2/models/{m}[/versions/{v}]/infer` | infer | inference, JSON or the binary tensor extension |
//! | `POST /v2/repository/index` | infer | `[{"name", "state"}]` |
//! | `POST /v2/repository/models/{m}/load`, `.../unload` | admin | repository extension |
//! | `POST /v2/models/{m}/reload` | admin | re-resolve aliases now |
//! | `POST /v2/models/{m}/feedback` | infer | `{"id": "<request id>", "outcomes": [1]}`: true outcomes, one per row |
//! | `GET /v2/models/{m}/health` | infer | versions, traffic shares, drift and live quality |
//! | `GET /admin/models/{m}` | admin | routing, versions, cache counters |
//! | `POST /admin/models/{m}/routing` | admin | `{"fixed": "@champion"}`, `{"split": [{"version": "1", "weight": 0.9}, ...]}` or `{"canary": {"stable": "1", "canary": "2", "weight": 0.1}}` |
//! | `POST /admin/models/{m}/canary` | admin | `{"weight": 0.25}` |
//! | `GET /admin/models/{m}/shadow` | admin | recent shadow comparisons |
//! | `GET /metrics` | metrics | Prometheus text format |
//!
//! Errors are `{"error": "..."}` with the status of [`http_status`]; 503 carries
//! `Retry-After`, 401 carries `WWW-Authenticate: Bearer`. Bodies over the limit get
//! 413, requests over the time limit 504, requests beyond the concurrency limit
//! 503. Without keys ([`ApiKeys::is_empty`]) nothing is checked.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mlops_core::inference::binary::HEADER_CONTENT_LENGTH;
use mlops_core::inference::{ErrorResponse, InferenceRequest, ModelReadyResponse};
use mlops_core::model::VersionSelector;
use mlops_core::{Error, Result, Server};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::{ApiKeys, Scope};
use crate::config::{Arm, Routing};
use crate::server::ModelServer;
use crate::status::http_status;

/// [`HEADER_CONTENT_LENGTH`] as a header name, parsed once rather than per request.
static JSON_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// Limits and keys of the HTTP face.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body, in bytes (413 beyond). Default 64 MiB.
    pub max_body_bytes: usize,
    /// Longest time an inference may take (504 beyond). Default 30 s.
    pub request_timeout: Duration,
    /// Inference requests handled at once; more are refused with 503. Default 1024.
    pub max_concurrency: usize,
    /// Accepted keys; empty: no authentication.
    pub keys: ApiKeys,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrency: 1024,
            keys: ApiKeys::new(),
        }
    }
}

/// What every handler shares, behind one reference count (axum clones the state
/// for each request).
#[derive(Debug, Clone)]
struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    server: ModelServer,
    config: HttpConfig,
    permits: Semaphore,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// An error as the protocol answers it.
struct ApiError {
    error: Error,
    /// A status other than [`http_status`]'s (413, 504).
    status: Option<u16>,
    /// Whether the model server already counted this request in its metrics.
    counted: bool,
}

impl ApiError {
    fn with_status(error: Error, status: u16) -> Self {
        Self {
            error,
            status: Some(status),
            counted: false,
        }
    }

    fn code(&self) -> u16 {
        self.status.unwrap_or_else(|| http_status(&self.error))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self {
            error,
            status: None,
            counted: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&ErrorResponse {
            error: self.error.to_string(),
        })
        .unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if code == 503 {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if code == 401 {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

fn json_response(value: &impl serde::Serialize) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|e| Error::backend("json", e))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> std::result::Result<(), ApiError> {
    if state.config.keys.is_empty() {
        return Ok(());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.config.keys.authorize(value, scope)?;
    Ok(())
}

async fn read_body(state: &AppState, body: Body) -> std::result::Result<bytes::Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::with_status(
            Error::invalid_input(
                "request body",
                format!("larger than the server's limit of {limit} bytes"),
            ),
            413,
        )
    })
}

/// A JSON body of an admin or feedback call, within the size limit.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
    what: &str,
) -> std::result::Result<T, ApiError> {
    let bytes = read_body(state, body).await?;
    Ok(serde_json::from_slice(&bytes).map_err(|e| Error::invalid_input(what, e.to_string()))?)
}

/// The router for `server` with `config`; serve it with [`serve`] or any axum
/// setup.
pub fn router(server: ModelServer, config: HttpConfig) -> Router {
    let state = AppState(Arc::new(Shared {
        permits: Semaphore::new(config.max_concurrency.max(1)),
        server,
        config,
    }));
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models", get(list_models))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{model}/reload", post(reload))
        .route("/v2/models/{model}/feedback", post(feedback))
        .route("/v2/models/{model}/health", get(health_of))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/admin/models/{model}", get(admin_status))
        .route("/admin/models/{model}/routing", post(admin_routing))
        .route("/admin/models/{model}/canary", post(admin_canary))
        .route("/admin/models/{model}/shadow", get(admin_shadow))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting
/// connections and waits for the requests in flight to finish (graceful
/// shutdown).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn not_found() -> ApiResult {
    Err(ApiError::with_status(
        Error::invalid_input("path", "no such endpoint of the v2 protocol"),
        404,
    ))
}

fn health(ok: bool, key: &str) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ key: ok }).to_string(),
    )
        .into_response()
}

async fn live(State(s): State<AppState>) -> ApiResult {
    Ok(health(s.server.live().await?, "live"))
}

async fn ready(State(s): State<AppState>) -> ApiResult {
    Ok(health(s.server.ready().await?, "ready"))
}

async fn server_metadata(State(s): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Scope::Infer)?;
    json_response(&s.server.server_metadata().await?)
}

async fn list_models(State(s): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Scope::Infer)?;
    json_response(&json!({ "models": s.server.list_models().await? }))
}

async fn metadata(
    s: &AppState,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
) -> ApiResult {
    authorize(s, headers, Scope::Infer)?;
    json_response(&s.server.model_metadata(model, version).await?)
}

async fn model_metadata(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    metadata(&s, &headers, &model, None).await
}

async fn model_metadata_v(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    metadata(&s, &headers, &model, Some(&version)).await
}

async fn readiness(
    s: &AppState,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
) -> ApiResult {
    authorize(s, headers, Scope::Infer)?;
    let ready = s.server.model_ready(model, version).await?;
    let body = serde_json::to_string(&ModelReadyResponse {
        name: model.to_owned(),
        ready,
    })
    .map_err(|e| Error::backend("json", e))?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn model_ready(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    readiness(&s, &headers, &model, None).await
}

async fn model_ready_v(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    readiness(&s, &headers, &model, Some(&version)).await
}

async fn run_infer(
    s: AppState,
    request: axum::extract::Request,
    model: String,
    version: Option<String>,
) -> ApiResult {
    // The headers are read in place: the `HeaderMap` extractor would copy them.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let started = Instant::now();
    let outcome = infer_response(&s, headers, &model, version.as_deref(), body).await;
    // Requests refused before reaching the model (auth, body, decoding, limits,
    // timeouts) still count in the metrics; the server counts the others.
    if let Err(e) = &outcome
        && !e.counted
    {
        s.server.record(
            if s.server.has_model(&model) {
                &model
            } else {
                "(unknown)"
            },
            version.as_deref().unwrap_or(""),
            e.code(),
            started.elapsed(),
        );
    }
    outcome
}

async fn infer_response(
    s: &AppState,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
    body: Body,
) -> ApiResult {
    authorize(s, headers, Scope::Infer)?;
    // An unknown model is 404 whatever the body holds.
    if !s.server.has_model(model) {
        return Err(Error::not_found(mlops_core::ResourceKind::Model, model).into());
    }
    let Ok(_permit) = s.permits.try_acquire() else {
        return Err(Error::Unavailable {
            what: "model server".into(),
            reason: format!(
                "overloaded: {} requests are running (the concurrency limit); retry later",
                s.config.max_concurrency
            ),
        }
        .into());
    };
    let json_len = match headers.get(&JSON_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid_input(
                        HEADER_CONTENT_LENGTH,
                        "must be the JSON part's length in bytes",
                    )
                })?,
        ),
    };
    let bytes = read_body(s, body).await?;
    let request = InferenceRequest::from_body(&bytes, json_len)?;
    // Which outputs go back binary: the request's flags, kept past the move.
    let flags = InferenceRequest {
        id: None,
        parameters: request.parameters.clone(),
        inputs: Vec::new(),
        outputs: request.outputs.clone(),
    };
    let response = tokio::time::timeout(
        s.config.request_timeout,
        s.server.infer(model, version, request),
    )
    .await
    .map_err(|_| {
        ApiError::with_status(
            Error::Unavailable {
                what: format!("model {model}"),
                reason: format!("inference timed out after {:?}", s.config.request_timeout),
            },
            504,
        )
    })?
    .map_err(|error| ApiError {
        error,
        status: None,
        counted: true,
    })?;
    let (body, json_len) = response.to_body(|name| flags.wants_binary(name))?;
    let mut out = Response::new(Body::from(body));
    let h = out.headers_mut();
    match json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(JSON_LENGTH.clone(), HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(out)
}

async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    request: axum::extract::Request,
) -> ApiResult {
    run_infer(s, request, model, None).await
}

async fn infer_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    request: axum::extract::Request,
) -> ApiResult {
    run_infer(s, request, model, Some(version)).await
}

fn report_json(r: &crate::server::ReloadReport) -> serde_json::Value {
    json!({"resolved": r.resolved, "loaded": r.loaded, "unloaded": r.unloaded})
}

async fn reload(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    json_response(&report_json(&s.server.reload(&model).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    id: String,
    outcomes: Vec<f64>,
}

async fn feedback(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    body: Body,
) -> ApiResult {
    authorize(&s, &headers, Scope::Infer)?;
    let parsed: FeedbackBody = read_json(&s, body, "feedback").await?;
    let version = s
        .server
        .record_feedback(&model, &parsed.id, &parsed.outcomes)?;
    json_response(&json!({"version": version}))
}

async fn health_of(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Scope::Infer)?;
    json_response(&mlops_core::monitoring::TrafficControl::health(&s.server, &model).await?)
}

async fn repository_index(State(s): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Scope::Infer)?;
    let models: Vec<_> = s
        .server
        .list_models()
        .await?
        .into_iter()
        .map(|name| json!({"name": name, "state": "READY"}))
        .collect();
    json_response(&models)
}

async fn repository_load(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    s.server.load(&model).await?;
    json_response(&json!({}))
}

async fn repository_unload(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    s.server.unload(&model)?;
    json_response(&json!({}))
}

fn routing_json(r: &Routing) -> serde_json::Value {
    match r {
        Routing::Fixed(s) => json!({"fixed": s.to_string()}),
        Routing::Split(arms) => {
            json!({"split": arms.iter().map(|a| json!({"version": a.selector.to_string(), "weight": a.weight})).collect::<Vec<_>>()})
        }
        Routing::Canary {
            stable,
            canary,
            weight,
        } => {
            json!({"canary": {"stable": stable.to_string(), "canary": canary.to_string(), "weight": weight}})
        }
    }
}

async fn admin_status(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    let st = s.server.status(&model)?;
    json_response(&json!({
        "name": st.name,
        "model": st.model,
        "routing": routing_json(&st.routing),
        "resolved": st.resolved,
        "versions": st.versions,
        "shadows": st.shadows,
        "cache": st.cache.map(|c| json!({"hits": c.hits, "misses": c.misses, "entries": c.entries})),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RoutingBody {
    Fixed(String),
    Split(Vec<ArmBody>),
    Canary {
        stable: String,
        canary: String,
        weight: f64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmBody {
    version: String,
    weight: f64,
}

fn selector(s: &str) -> Result<VersionSelector> {
    s.parse()
}

async fn admin_routing(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    body: Body,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    let parsed: RoutingBody = read_json(&s, body, "routing").await?;
    let routing = match parsed {
        RoutingBody::Fixed(v) => Routing::Fixed(selector(&v)?),
        RoutingBody::Split(arms) => Routing::Split(
            arms.into_iter()
                .map(|a| {
                    Ok(Arm {
                        selector: selector(&a.version)?,
                        weight: a.weight,
                    })
                })
                .collect::<Result<_>>()?,
        ),
        RoutingBody::Canary {
            stable,
            canary,
            weight,
        } => Routing::Canary {
            stable: selector(&stable)?,
            canary: selector(&canary)?,
            weight,
        },
    };
    json_response(&report_json(&s.server.set_routing(&model, routing).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    weight: f64,
}

async fn admin_canary(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    body: Body,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    let parsed: CanaryBody = read_json(&s, body, "canary weight").await?;
    s.server.set_canary_weight(&model, parsed.weight)?;
    json_response(&json!({"weight": parsed.weight}))
}

async fn admin_shadow(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> ApiResult {
    authorize(&s, &headers, Scope::Admin)?;
    let records: Vec<_> = s
        .server
        .shadow_records(&model)?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.request_id,
                "primary_version": r.primary_version,
                "shadow_version": r.shadow_version,
                "primary": r.primary,
                "shadow": match &r.shadow { Ok(t) => json!(t), Err(e) => json!({"error": e}) },
            })
        })
        .collect();
    json_response(&records)
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers, Scope::Metrics)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.server.metrics_text(),
    )
        .into_response())
}
