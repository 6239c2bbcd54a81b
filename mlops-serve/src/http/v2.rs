//! The Open Inference Protocol's REST endpoints, over any [`Server`]: health,
//! metadata, readiness and inference (JSON or the binary tensor extension).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mlops_core::inference::InferenceRequest;
use mlops_core::{Error, Server};
use serde_json::json;
use tokio::sync::Semaphore;

use super::auth::{Refusals, with_scope};
use super::body::{BodyBudget, BodyLimits, ReadBody, read_body};
use super::error::{ApiError, ApiResult, json_response};
use crate::auth::{KeyRing, Scope};
use crate::codec::{self, HEADER_CONTENT_LENGTH, ModelReadyResponse};
use crate::config::HttpConfig;
use crate::server::ModelServer;

/// [`HEADER_CONTENT_LENGTH`] as a header name, parsed once rather than per request.
static JSON_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// What every v2 handler shares, behind one reference count (axum clones the
/// state for each request).
#[derive(Debug, Clone)]
pub(super) struct V2State(Arc<Shared>);

#[derive(Debug)]
pub(super) struct Shared {
    server: Arc<dyn Server>,
    /// The in-process server behind `server`, when it is one: unknown models are
    /// refused before their body is read, and requests refused here are counted
    /// in its metrics.
    local: Option<ModelServer>,
    config: HttpConfig,
    permits: Semaphore,
    /// The bytes of bodies read or decoded at once, shared with the admin routes.
    budget: Arc<BodyBudget>,
}

impl std::ops::Deref for V2State {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The v2 routes for `server`; `local` is the same server when it is a
/// [`ModelServer`].
pub(super) fn routes(
    server: Arc<dyn Server>,
    local: Option<ModelServer>,
    config: HttpConfig,
    budget: Arc<BodyBudget>,
    keys: &KeyRing,
    refusals: &Refusals,
) -> Router {
    let state = V2State(Arc::new(Shared {
        permits: Semaphore::new(config.max_concurrency.max(1)),
        server,
        local,
        config,
        budget,
    }));
    let open = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready));
    let infer = Router::new()
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
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v));
    open.merge(with_scope(infer, keys, Scope::Infer, refusals))
        .with_state(state)
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

async fn live(State(s): State<V2State>) -> ApiResult {
    Ok(health(s.server.live().await?, "live"))
}

async fn ready(State(s): State<V2State>) -> ApiResult {
    Ok(health(s.server.ready().await?, "ready"))
}

async fn server_metadata(State(s): State<V2State>) -> ApiResult {
    json_response(&s.server.server_metadata().await?)
}

async fn list_models(State(s): State<V2State>) -> ApiResult {
    json_response(&json!({ "models": s.server.list_models().await? }))
}

async fn model_metadata(State(s): State<V2State>, Path(model): Path<String>) -> ApiResult {
    json_response(&s.server.model_metadata(&model, None).await?)
}

async fn model_metadata_v(
    State(s): State<V2State>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    json_response(&s.server.model_metadata(&model, Some(&version)).await?)
}

async fn readiness(s: &V2State, model: &str, version: Option<&str>) -> ApiResult {
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

async fn model_ready(State(s): State<V2State>, Path(model): Path<String>) -> ApiResult {
    readiness(&s, &model, None).await
}

async fn model_ready_v(
    State(s): State<V2State>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    readiness(&s, &model, Some(&version)).await
}

async fn infer(
    State(s): State<V2State>,
    Path(model): Path<String>,
    request: axum::extract::Request,
) -> ApiResult {
    run_infer(s, request, model, None).await
}

async fn infer_v(
    State(s): State<V2State>,
    Path((model, version)): Path<(String, String)>,
    request: axum::extract::Request,
) -> ApiResult {
    run_infer(s, request, model, Some(version)).await
}

async fn run_infer(
    s: V2State,
    request: axum::extract::Request,
    model: String,
    version: Option<String>,
) -> ApiResult {
    // The headers are read in place: the `HeaderMap` extractor would copy them.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let started = Instant::now();
    let outcome = infer_response(&s, headers, &model, version.as_deref(), body).await;
    // Requests refused before reaching the model (body, decoding, limits,
    // timeouts) still count in the metrics; the server counts the others.
    if let Err(e) = &outcome
        && !e.counted
        && let Some(local) = &s.local
    {
        local.record(&model, version.as_deref(), e.code(), started.elapsed());
    }
    outcome
}

async fn infer_response(
    s: &V2State,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
    body: Body,
) -> ApiResult {
    // An unknown model is 404 whatever the body holds.
    if let Some(local) = &s.local
        && !local.has_model(model)
    {
        return Err(Error::not_found(mlops_core::ResourceKind::Model, model).into());
    }
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
    // Charged to the budget as it arrives; the charge is held (with the
    // decoded inputs') until this request ends.
    let ReadBody { bytes, charge } =
        read_body(body, BodyLimits::inference(&s.config), &s.budget).await?;
    // The permit is taken once the body is in: clients that are slow to send
    // (or stall) hold a connection, never a place among the requests running.
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
    let charge = Arc::new(charge);
    let grant: Arc<dyn codec::DecodeGrant> = charge.clone();
    let request = codec::decode_request_within(&bytes, json_len, grant)?;
    // The body is no longer needed: its memory and its charge go now, the
    // decoded inputs' stay until the answer.
    let body_len = bytes.len();
    drop(bytes);
    charge.shrink(body_len);
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
        // The in-process server counts every request that reaches it.
        counted: true,
    })?;
    let (body, json_len) =
        codec::encode_response(&response, |name| codec::wants_binary(&flags, name))?;
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
