//! API-key scopes, enforced once per route group by a middleware layer: every
//! route of a group needs the group's [`Scope`], and a handler never checks keys
//! itself.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};

use mlops_core::Error;

use super::error::ApiError;
use crate::auth::{KeyRing, Scope};

/// The keys and the scope a route group requires.
#[derive(Debug, Clone)]
struct Guard {
    keys: KeyRing,
    scope: Scope,
}

async fn require_scope(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    // The keys in force for this request (a reload may have replaced them).
    let keys = guard.keys.current();
    if keys.is_empty() {
        // Only a face built with `allow_unauthenticated` has none.
        return match guard.scope {
            Scope::Admin => admin_disabled(request).await,
            _ => next.run(request).await,
        };
    }
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match keys.authorize(value, guard.scope) {
        Ok(_) => next.run(request).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn admin_disabled(_request: Request) -> Response {
    ApiError::from(Error::Forbidden {
        reason: "admin endpoints need an API key with the admin scope, and the server has no keys"
            .into(),
    })
    .into_response()
}

/// `routes` with `scope` required of every request that matches one of them
/// (401 without a valid key, 403 with a key that lacks the scope).
///
/// Without keys (a face built with `allow_unauthenticated`), infer and metrics
/// routes are open, and admin routes answer 403: they are never open.
pub(super) fn with_scope<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    keys: &KeyRing,
    scope: Scope,
) -> Router<S> {
    routes.route_layer(from_fn_with_state(
        Guard {
            keys: keys.clone(),
            scope,
        },
        require_scope,
    ))
}
