//! API-key scopes, enforced once per route group by a middleware layer: every
//! route of a group needs the group's [`Scope`], and a handler never checks keys
//! itself.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mlops_core::Error;
use mlops_core::audit::{AuditEvent, AuditLog};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::error::ApiError;
use crate::auth::{KeyRing, Scope};
use crate::runtime::metrics::AuthLabels;

/// The name of the key a request was authorized with: a request extension on
/// admin routes, whose actions are audited by it.
#[derive(Debug, Clone)]
pub(super) struct KeyName(pub(super) String);

/// Refused requests (of the HTTP face, and of the gRPC face under the same
/// groups with the HTTP status their refusal stands for): counted by route
/// group and status (when the face has the model server's metrics) and logged, the first ten of a group and then one
/// in a hundred, so a flood of bad keys cannot flood the log.
#[derive(Debug, Clone, Default)]
pub(crate) struct Refusals {
    counter: Option<Family<AuthLabels, Counter>>,
    seen: Arc<AtomicU64>,
}

impl Refusals {
    /// Counting into `counter` (the server's `mlops_http_auth_failures_total`).
    pub(crate) fn counted(counter: Family<AuthLabels, Counter>) -> Self {
        Self {
            counter: Some(counter),
            seen: Arc::default(),
        }
    }

    pub(crate) fn record(&self, scope: Scope, error: &Error) {
        let status = match error {
            Error::Forbidden { .. } => 403,
            _ => 401,
        };
        if let Some(c) = &self.counter {
            c.get_or_create(&AuthLabels {
                group: scope.to_string(),
                status: status.to_string(),
            })
            .inc();
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_multiple_of(100) {
            tracing::warn!(group = %scope, status, refused_so_far = n, reason = %error, "request refused");
        }
    }
}

/// The keys and the scope a route group requires.
#[derive(Debug, Clone)]
struct Guard {
    keys: KeyRing,
    scope: Scope,
    refusals: Refusals,
}

/// The guard behind one reference count: the middleware clones its state for
/// every request, and one count is cheaper to clone and drop than the ring's,
/// the counter family's and the refusal tally's.
type SharedGuard = Arc<Guard>;

async fn require_scope(
    State(guard): State<SharedGuard>,
    mut request: Request,
    next: Next,
) -> Response {
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
        Ok(name) => {
            // Only admin routes are audited by key name: elsewhere the copy of
            // the name (and the extension map it would allocate) is not made.
            if guard.scope == Scope::Admin {
                request.extensions_mut().insert(KeyName(name.to_owned()));
            }
            next.run(request).await
        }
        Err(e) => {
            guard.refusals.record(guard.scope, &e);
            ApiError::from(e).into_response()
        }
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
    refusals: &Refusals,
) -> Router<S> {
    routes.route_layer(from_fn_with_state(
        SharedGuard::new(Guard {
            keys: keys.clone(),
            scope,
            refusals: refusals.clone(),
        }),
        require_scope,
    ))
}

/// Where admin actions are recorded.
#[derive(Debug, Clone)]
struct AdminAudit(Option<Arc<dyn AuditLog>>);

/// Logs every admin action that changes something (any method but GET) with the
/// key that asked and the outcome, and appends it to the audit log when the face
/// has one; the entry is written before the answer goes out.
async fn audit_admin(State(audit): State<AdminAudit>, request: Request, next: Next) -> Response {
    let key = request
        .extensions()
        .get::<KeyName>()
        .map_or_else(|| "(no key)".to_owned(), |k| k.0.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if method == axum::http::Method::GET {
        return response;
    }
    let status = response.status().as_u16();
    tracing::info!(key = %key, %method, path = %path, status, "admin action");
    if let Some(log) = &audit.0 {
        let event = AuditEvent::new(format!("api-key:{key}"), format!("http {method}"), &path)
            .detail("status", status.to_string());
        if let Err(e) = log.append(event).await {
            tracing::error!(error = %e, key = %key, path = %path, "admin action not audited");
        }
    }
    response
}

/// `routes` (admin routes, inside their scope's guard) audited.
pub(super) fn audited<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    log: Option<Arc<dyn AuditLog>>,
) -> Router<S> {
    routes.route_layer(from_fn_with_state(AdminAudit(log), audit_admin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ApiKeys;
    use axum::body::Body;
    use axum::routing::get;
    use hyper::service::Service as _;
    use hyper_util::service::TowerToHyperService;

    /// The key name the handler behind the guard finds in the request, or
    /// `none`.
    async fn key_name_seen(request: Request) -> String {
        request
            .extensions()
            .get::<KeyName>()
            .map_or_else(|| "none".to_owned(), |k| k.0.clone())
    }

    /// What a route guarded by `scope` sees of an admin key's request, and its
    /// status.
    async fn seen_behind(scope: Scope) -> (u16, String) {
        let keys = KeyRing::new(ApiKeys::new().with_key("ops", "s3cret", &[Scope::Admin]));
        let routes = Router::new().route("/", get(key_name_seen));
        let app = with_scope(routes, &keys, scope, &Refusals::default());
        let request = axum::http::Request::builder()
            .uri("/")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::empty())
            .unwrap();
        let response = TowerToHyperService::new(app).call(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn admin_routes_get_the_key_name_and_other_routes_skip_the_copy() {
        // The audit of admin actions names the key; an admin key may use every
        // group, and only on admin routes is its name copied into the request.
        assert_eq!(seen_behind(Scope::Admin).await, (200, "ops".to_owned()));
        assert_eq!(seen_behind(Scope::Infer).await, (200, "none".to_owned()));
        assert_eq!(seen_behind(Scope::Metrics).await, (200, "none".to_owned()));
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_before_the_route_runs() {
        let keys = KeyRing::new(ApiKeys::new().with_key("app", "right", &[Scope::Infer]));
        let routes = Router::new().route("/", get(key_name_seen));
        let app = with_scope(routes, &keys, Scope::Infer, &Refusals::default());
        for header_value in ["Bearer wrong", "Bearer ", "Basic right"] {
            let request = axum::http::Request::builder()
                .uri("/")
                .header(header::AUTHORIZATION, header_value)
                .body(Body::empty())
                .unwrap();
            let response = TowerToHyperService::new(app.clone())
                .call(request)
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{header_value:?} was let through");
        }
    }
}
