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
//! | `POST /v2/models/{m}/feedback` | infer | `{"id": "<request id>", "outcomes": [1]}`: true outcomes, one per row |
//! | `GET /v2/models/{m}/health` | infer | versions, traffic shares, drift and live quality |
//! | `GET /admin/models/{m}` | admin | routing, versions, cache counters |
//! | `POST /admin/models/{m}/routing` | admin | `{"fixed": "@champion"}`, `{"split": [{"version": "1", "weight": 0.9}, ...]}` or `{"canary": {"stable": "1", "canary": "2", "weight": 0.1}}` |
//! | `POST /admin/models/{m}/canary` | admin | `{"weight": 0.25}` |
//! | `GET /admin/models/{m}/shadow` | admin | recent shadow comparisons |
//! | `GET /metrics` | metrics | Prometheus text format |
//!
//! Errors are `{"error": "..."}` with the status of [`http_status`](crate::http_status); 503 carries
//! `Retry-After`, 401 carries `WWW-Authenticate: Bearer`. Bodies over the limit get
//! 413, requests over the time limit 504, requests beyond the concurrency limit
//! 503. Without keys ([`ApiKeys::is_empty`](crate::ApiKeys::is_empty)) nothing is checked.
//!
//! The face is two routers merged: [`v2_router`] (the protocol's endpoints, for
//! any `Server`: a [`RemoteServer`](crate::RemoteServer) or your own) and the
//! model server's own (repository, feedback, health, admin, metrics). Each route
//! group's scope is checked by one middleware layer, never inside a handler.

mod admin;
mod auth;
mod body;
mod error;
mod v2;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use mlops_core::Server;
use tokio::net::TcpListener;

use crate::config::HttpConfig;
use crate::server::ModelServer;

/// The whole HTTP face of `server` with `config`: the v2 endpoints and the model
/// server's own; serve it with [`serve`] or any axum setup.
pub fn router(server: ModelServer, config: HttpConfig) -> Router {
    let keys = Arc::new(config.keys.clone());
    let max_body_bytes = config.max_body_bytes;
    let shared: Arc<dyn Server> = Arc::new(server.clone());
    v2::routes(shared, Some(server.clone()), config, &keys)
        .merge(admin::routes(server, max_body_bytes, &keys))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::disable())
}

/// The v2 endpoints (health, metadata, readiness, inference) of any [`Server`]
/// with `config`: put a [`RemoteServer`](crate::RemoteServer) behind an
/// authenticating proxy, or serve your own implementation.
pub fn v2_router(server: Arc<dyn Server>, config: HttpConfig) -> Router {
    let keys = Arc::new(config.keys.clone());
    v2::routes(server, None, config, &keys)
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::disable())
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
