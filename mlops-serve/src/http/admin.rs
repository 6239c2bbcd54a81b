//! The endpoints only the in-process [`ModelServer`] has: the model repository
//! extension, reloads, feedback, health, routing administration and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use mlops_core::audit::AuditLog;
use mlops_core::model::VersionSelector;
use mlops_core::{Error, Result, Server};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Refusals, audited, with_scope};
use super::body::{BodyBudget, BodyLimits, read_json};
use super::error::{ApiResult, json_response};
use crate::auth::{KeyRing, Scope};
use crate::codec;
use crate::config::{Arm, Routing};
use crate::server::{ModelServer, ReloadReport};

/// The server, the body limits and the face's body budget, shared by every
/// admin handler.
#[derive(Debug, Clone)]
struct AdminState {
    server: ModelServer,
    limits: BodyLimits,
    budget: Arc<BodyBudget>,
}

/// The routes for `server`, each group behind its scope.
pub(super) fn routes(
    server: ModelServer,
    limits: BodyLimits,
    budget: Arc<BodyBudget>,
    keys: &KeyRing,
    refusals: &Refusals,
    audit: Option<Arc<dyn AuditLog>>,
) -> Router {
    let state = AdminState {
        server,
        limits,
        budget,
    };
    let feedback_routes = Router::new().route("/v2/models/{model}/feedback", post(feedback));
    let infer = Router::new()
        .route("/v2/models/{model}/health", get(health_of))
        .route("/v2/repository/index", post(repository_index));
    let admin = Router::new()
        .route("/v2/models/{model}/reload", post(reload))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/admin/models/{model}", get(admin_status))
        .route("/admin/models/{model}/routing", post(admin_routing))
        .route("/admin/models/{model}/canary", post(admin_canary))
        .route("/admin/models/{model}/shadow", get(admin_shadow));
    let metrics = Router::new().route("/metrics", get(metrics));
    with_scope(infer, keys, Scope::Infer, refusals)
        .merge(with_scope(feedback_routes, keys, Scope::Feedback, refusals))
        .merge(with_scope(
            audited(admin, audit),
            keys,
            Scope::Admin,
            refusals,
        ))
        .merge(with_scope(metrics, keys, Scope::Metrics, refusals))
        .with_state(state)
}

fn report_json(r: &ReloadReport) -> serde_json::Value {
    json!({"resolved": r.resolved, "loaded": r.loaded, "unloaded": r.unloaded})
}

async fn reload(State(s): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    json_response(&report_json(&s.server.reload(&model).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    id: String,
    /// True outcomes, one per row.
    #[serde(default)]
    outcomes: Option<Vec<f64>>,
    /// Business metrics by name.
    #[serde(default)]
    metrics: Option<BTreeMap<String, f64>>,
}

async fn feedback(State(s): State<AdminState>, Path(model): Path<String>, body: Body) -> ApiResult {
    let parsed: FeedbackBody = read_json(body, s.limits, &s.budget, "feedback").await?;
    let version = match (&parsed.outcomes, &parsed.metrics) {
        (None, None) => {
            return Err(Error::invalid_input(
                "feedback",
                "give \"outcomes\" (one per row), \"metrics\" (name to number), or both",
            )
            .into());
        }
        (outcomes, metrics) => {
            // Metrics first: they keep the prediction open, outcomes close it.
            let mut version = None;
            if let Some(m) = metrics {
                version = Some(s.server.record_metrics(&model, &parsed.id, m)?);
            }
            if let Some(o) = outcomes {
                version = Some(s.server.record_feedback(&model, &parsed.id, o)?);
            }
            version
        }
    };
    json_response(&json!({"version": version}))
}

async fn health_of(State(s): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    json_response(&mlops_core::monitoring::TrafficControl::health(&s.server, &model).await?)
}

async fn repository_index(State(s): State<AdminState>) -> ApiResult {
    let models: Vec<_> = s
        .server
        .list_models()
        .await?
        .into_iter()
        .map(|name| {
            // A deployment waiting for its versions is listed as Triton lists a
            // model that failed to load: UNAVAILABLE, with the reason.
            match s.server.status(&name).ok().and_then(|st| st.not_ready) {
                None => json!({"name": name, "state": "READY"}),
                Some(reason) => json!({"name": name, "state": "UNAVAILABLE", "reason": reason}),
            }
        })
        .collect();
    json_response(&models)
}

async fn repository_load(State(s): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    s.server.load(&model).await?;
    json_response(&json!({}))
}

async fn repository_unload(State(s): State<AdminState>, Path(model): Path<String>) -> ApiResult {
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

async fn admin_status(State(s): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    let st = s.server.status(&model)?;
    json_response(&json!({
        "name": st.name,
        "model": st.model,
        "routing": routing_json(&st.routing),
        "resolved": st.resolved,
        "versions": st.versions,
        "shadows": st.shadows,
        "cache": st.cache.map(|c| json!({"hits": c.hits, "misses": c.misses, "entries": c.entries})),
        "not_ready": st.not_ready,
        "last_reload_error": st.last_reload_error,
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
    State(s): State<AdminState>,
    Path(model): Path<String>,
    body: Body,
) -> ApiResult {
    let parsed: RoutingBody = read_json(body, s.limits, &s.budget, "routing").await?;
    let routing = match parsed {
        RoutingBody::Fixed(v) => Routing::Fixed(selector(&v)?),
        RoutingBody::Split(arms) => Routing::Split(
            arms.into_iter()
                .map(|a| Ok(Arm::new(selector(&a.version)?, a.weight)))
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
    State(s): State<AdminState>,
    Path(model): Path<String>,
    body: Body,
) -> ApiResult {
    let parsed: CanaryBody = read_json(body, s.limits, &s.budget, "canary weight").await?;
    s.server.set_canary_weight(&model, parsed.weight).await?;
    json_response(&json!({"weight": parsed.weight}))
}

/// Tensors as the protocol's JSON objects, or the reason they cannot be.
fn tensors_json(tensors: &[mlops_core::inference::Tensor]) -> serde_json::Value {
    codec::encode_tensors(tensors)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({"error": "the tensors cannot be written as JSON"}))
}

async fn admin_shadow(State(s): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    let records: Vec<_> = s
        .server
        .shadow_records(&model)?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.request_id,
                "primary_version": r.primary_version,
                "shadow_version": r.shadow_version,
                "primary": tensors_json(&r.primary),
                "shadow": match &r.shadow { Ok(t) => tensors_json(t), Err(e) => json!({"error": e}) },
            })
        })
        .collect();
    json_response(&records)
}

async fn metrics(State(s): State<AdminState>) -> ApiResult {
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.server.metrics_text(),
    )
        .into_response())
}
