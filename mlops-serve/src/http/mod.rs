//! The HTTP face: the Open Inference Protocol (v2) REST API with axum, over any
//! [`Server`] ([`v2_router`]) or, with the endpoints only it has, over a
//! [`ModelServer`] ([`router`]).
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
//! | `POST /v2/models/{m}/feedback` | infer | `{"id": "<request id>", "outcomes": [1], "metrics": {"conversion": 1}}`: true outcomes (one per row) and/or business metrics |
//! | `GET /v2/models/{m}/health` | infer | versions, traffic shares, drift and live quality |
//! | `GET /admin/models/{m}` | admin | routing, versions, cache counters |
//! | `POST /admin/models/{m}/routing` | admin | `{"fixed": "@champion"}`, `{"split": [{"version": "1", "weight": 0.9}, ...]}` or `{"canary": {"stable": "1", "canary": "2", "weight": 0.1}}` |
//! | `POST /admin/models/{m}/canary` | admin | `{"weight": 0.25}` |
//! | `GET /admin/models/{m}/shadow` | admin | recent shadow comparisons |
//! | `GET /metrics` | metrics | Prometheus text format |
//!
//! Errors are `{"error": "..."}` with the status of [`http_status`](crate::http_status); 503 carries
//! `Retry-After`, 401 carries `WWW-Authenticate: Bearer`. Bodies over the limit get
//! 413, bodies that do not arrive in time 408, requests over the time limit 504,
//! requests beyond the concurrency limit 503.
//!
//! Memory of bodies is bounded whatever clients do: a body costs about its own
//! size however it is chunked (copied into one buffer as it arrives), its
//! decoding at most [`DECODE_FACTOR`](crate::codec::DECODE_FACTOR) times its
//! size (refused with 400 beyond, before it is allocated), and every body being
//! read or decoded is charged to one byte budget per face (each [`router`] or
//! [`v2_router`] has its own:
//! [`max_body_budget_bytes`](HttpConfig::max_body_budget_bytes)) until its
//! request ends: beyond it, 503 with `Retry-After`.
//!
//! The face fails closed: without keys it is not built unless the config says
//! [`allow_unauthenticated`](HttpConfig::allow_unauthenticated), and then the
//! admin endpoints still answer 403. [`serve`] bounds every connection: header,
//! body and write deadlines, a cap on open connections, and a shutdown that ends
//! within its grace period whatever clients do.
//!
//! The face is two routers merged: [`v2_router`] (the protocol's endpoints, for
//! any `Server`: a [`RemoteServer`](crate::RemoteServer) or your own) and the
//! model server's own (repository, feedback, health, admin, metrics). Each route
//! group's scope is checked by one middleware layer, never inside a handler.

mod admin;
pub(crate) mod auth;
mod body;
mod error;
mod listener;
mod v2;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use mlops_core::{Result, Server};

pub use listener::serve;

use crate::config::HttpConfig;
use crate::server::ModelServer;

/// `config` checked, with a warning when it serves without authentication.
fn checked(config: &HttpConfig) -> Result<()> {
    config.validate()?;
    if config.ring().current().is_empty() {
        tracing::warn!(
            "the HTTP face serves inference and metrics WITHOUT authentication \
             (allow_unauthenticated, no API keys); admin endpoints answer 403"
        );
    }
    Ok(())
}

/// The whole HTTP face of `server` with `config`: the v2 endpoints and the model
/// server's own; serve it with [`serve`] or any axum setup. Refused when
/// `config` is invalid, or has no keys and does not
/// [`allow_unauthenticated`](HttpConfig::allow_unauthenticated).
pub fn router(server: ModelServer, config: HttpConfig) -> Result<Router> {
    checked(&config)?;
    let keys = config.ring();
    let refusals = auth::Refusals::counted(server.auth_failures());
    let audit = config.audit.clone();
    let control = body::BodyLimits::control(&config);
    // One budget for every body this face reads: inference, feedback, admin.
    let budget = body::BodyBudget::of(&config);
    let shared: Arc<dyn Server> = Arc::new(server.clone());
    Ok(v2::routes(
        shared,
        Some(server.clone()),
        config,
        budget.clone(),
        &keys,
        &refusals,
    )
    .merge(admin::routes(
        server, control, budget, &keys, &refusals, audit,
    ))
    .fallback(error::not_found)
    .layer(DefaultBodyLimit::disable()))
}

/// The v2 endpoints (health, metadata, readiness, inference) of any [`Server`]
/// with `config`: put a [`RemoteServer`](crate::RemoteServer) behind an
/// authenticating proxy, or serve your own implementation. Refused as
/// [`router`] is.
pub fn v2_router(server: Arc<dyn Server>, config: HttpConfig) -> Result<Router> {
    checked(&config)?;
    let keys = config.ring();
    let budget = body::BodyBudget::of(&config);
    Ok(v2::routes(
        server,
        None,
        config,
        budget,
        &keys,
        &auth::Refusals::default(),
    )
    .fallback(error::not_found)
    .layer(DefaultBodyLimit::disable()))
}
