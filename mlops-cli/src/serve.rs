//! `mlops serve` and `mlops check`: the config turned into a model server and
//! its HTTP face.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mlops::core::feature::OnlineFeatureStore;
use mlops::core::{Error, Result};
use mlops::serve::http::{router, serve};
use mlops::serve::{KeyRing, ModelServer};
use mlops::store::{
    ObjectAuditLog, ObjectFeatureStore, ObjectFleet, ObjectInferenceLog, ObjectRegistry, StoreRoot,
};

use crate::config::{Config, unopened_features};

/// Checks everything `serve` would, without opening storage or a port.
pub(crate) fn check(path: &Path, json: bool) -> Result<()> {
    let config = Config::load(path)?;
    config.storage_root()?;
    config.storage_options()?;
    // A config with no deployment is not served (`mlops retrain`, `features
    // materialize`): its HTTP face is never built, so it needs no keys.
    if !config.deployments.is_empty() {
        config.http_config()?;
    }
    config.registry_options(false)?;
    if config.fleet.enabled {
        config.fleet.replica_name()?;
        config.fleet.every()?;
    }
    config.inference_log()?;
    let deployments = config.deployment_configs(&unopened_features()?)?;
    if let Some(tls) = config.grpc.as_ref().and_then(|g| g.tls.as_ref()) {
        tls.read("grpc.tls")?;
    }
    if let Some(access) = &config.access {
        access.policy()?;
        access.principal()?;
    }
    let loops = crate::retrain::check(&config)?;
    if json {
        let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
        println!(
            "{}",
            serde_json::json!({"config": path.display().to_string(), "ok": true, "deployments": names, "retrain_loops": loops})
        );
    } else {
        println!(
            "{}: ok ({} deployments, {loops} retrain loops)",
            path.display(),
            deployments.len()
        );
    }
    Ok(())
}

/// `mlops health`: asks the server at `url` whether it is live (or ready) and
/// fails unless it says so within `timeout`.
pub(crate) async fn health(url: &str, ready: bool, timeout: Duration, json: bool) -> Result<()> {
    use mlops::core::Server as _;
    let what = if ready { "ready" } else { "live" };
    let client = mlops::serve::RemoteServer::new(url)?.with_timeout(timeout)?;
    let answer = tokio::time::timeout(timeout, async {
        if ready {
            client.ready().await
        } else {
            client.live().await
        }
    })
    .await
    .map_err(|_| Error::Unavailable {
        what: format!("server {url}"),
        reason: format!("no answer within {timeout:?}"),
    })??;
    if !answer {
        return Err(Error::Unavailable {
            what: format!("server {url}"),
            reason: format!("it answered that it is not {what}"),
        });
    }
    if json {
        println!("{}", serde_json::json!({ "url": url, what: true }));
    } else {
        println!("{url}: {what}");
    }
    Ok(())
}

/// A future that resolves when the process is asked to stop (SIGTERM or
/// SIGINT). The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives while models load is kept
/// for the serving loop instead of killing the process.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP, where there is one.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// Resolves at each SIGHUP (never where there is none).
#[cfg(unix)]
async fn hangup(signal: &mut Hangups) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn hangup(_: &mut Hangups) {
    std::future::pending().await
}

/// What the running service applied: each deployment's config, and the HTTP
/// face's (which only a restart changes), as fingerprints.
struct Applied {
    deployments: BTreeMap<String, String>,
    /// `[http]` but its keys, which a reload replaces in `keys`.
    http: String,
    /// `[registry]`, which only a restart changes.
    registry: String,
    /// `[inference_log]`, which only a restart changes.
    inference_log: String,
    keys: KeyRing,
}

/// What of `[http]` takes a restart to change: everything but the keys.
fn http_fingerprint(config: &Config) -> String {
    let settings = config
        .http_config()
        .ok()
        .map(|h| format!("{:?}", h.with_key_ring(KeyRing::default())));
    format!("{} {settings:?}", config.http.bind)
}

/// What of `[registry]` the service runs with: the settings and the trusted
/// keys' contents (a key file rewritten in place is a change too).
fn registry_fingerprint(config: &Config) -> String {
    format!(
        "{:?} {:?}",
        config.registry,
        config.trusted_keys().map_err(|e| e.to_string())
    )
}

/// Re-reads the config and applies its deployment changes: changed ones are
/// redeployed (their new versions load before they take traffic), new ones
/// deployed, removed ones unloaded. A config that does not load changes nothing.
async fn apply(
    path: &Path,
    server: &ModelServer,
    features: &Arc<dyn OnlineFeatureStore>,
    applied: &mut Applied,
) {
    let (config, deployments) =
        match Config::load(path).and_then(|c| c.deployment_configs(features).map(|d| (c, d))) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the config was not reloaded; serving as before");
                return;
            }
        };
    // Keys first: a key removed from the file stops working now, a rotated one
    // works now. A key set that does not load keeps the old one, loudly.
    match config.http_config() {
        Ok(http) if *applied.keys.current() != http.keys => match applied.keys.replace(http.keys) {
            Ok(()) => tracing::info!(keys = ?applied.keys.names(), "API keys reloaded"),
            Err(e) => tracing::error!(error = %e, "API keys not reloaded; the old keys stay"),
        },
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "API keys not reloaded; the old keys stay"),
    }
    if http_fingerprint(&config) != applied.http {
        tracing::warn!("changes to [http] other than its keys take effect on restart only");
    }
    if registry_fingerprint(&config) != applied.registry {
        tracing::warn!("changes to [registry] take effect on restart only");
    }
    if format!("{:?}", config.inference_log) != applied.inference_log {
        tracing::warn!("changes to [inference_log] take effect on restart only");
    }
    let mut next = BTreeMap::new();
    for d in deployments {
        let name = d.name.clone();
        let fingerprint = format!("{d:?}");
        if applied.deployments.get(&name) == Some(&fingerprint) {
            next.insert(name, fingerprint);
            continue;
        }
        // A new deployment (or one still waiting) whose versions do not load
        // yet is deployed waiting; one that serves keeps serving.
        match server.redeploy_or_wait(d).await {
            Ok(report) => {
                match &report.waiting {
                    Some(reason) => tracing::warn!(
                        deployment = %name,
                        reason = %reason,
                        "redeployed, not ready: its versions do not load yet; retrying"
                    ),
                    None => {
                        tracing::info!(deployment = %name, versions = ?report.resolved, "redeployed");
                    }
                }
                next.insert(name, fingerprint);
            }
            Err(e) => {
                tracing::error!(deployment = %name, error = %e, "not redeployed; serving as before");
                if let Some(old) = applied.deployments.get(&name) {
                    next.insert(name, old.clone());
                }
            }
        }
    }
    for name in applied.deployments.keys() {
        if !next.contains_key(name) && server.unload(name).is_ok() {
            tracing::info!(deployment = %name, "unloaded");
        }
    }
    applied.deployments = next;
}

/// Serves until SIGTERM or SIGINT; then drains and returns. SIGHUP re-reads the
/// config and applies its deployment changes without dropping requests.
pub(crate) async fn run(path: &Path) -> Result<()> {
    // Signals are caught from the start: one that arrives while models load
    // is acted on once serving begins (SIGHUP's default action would kill us).
    let mut hangups = hangups();
    let stopping = stop_signal();
    let config = Config::load(path)?;
    let http = config.http_config()?;
    // The face checks this ring; SIGHUP replaces what it holds.
    let keys = KeyRing::new(http.keys.clone());
    let http = http.with_key_ring(keys.clone());
    // Enrichment reads the online store of [online], through the feature
    // views defined on the storage root.
    let url = config.storage_root()?;
    let root = StoreRoot::open_with_options(&url, config.storage_options()?)?;
    let (online, in_memory) = config.online_store().await?;
    if in_memory
        && let Some(i) = config
            .deployments
            .iter()
            .position(|d| d.enrichment.is_some())
    {
        return Err(Error::invalid_input(
            format!("config deployments[{i}].enrichment"),
            "needs [online] url = \"redis://...\": nothing fills this process's \
             in-memory online store",
        ));
    }
    let features: Arc<dyn OnlineFeatureStore> = Arc::new(ObjectFeatureStore::new(&root, online));
    let deployments = config.deployment_configs(&features)?;
    let mut applied = Applied {
        deployments: deployments
            .iter()
            .map(|d| (d.name.clone(), format!("{d:?}")))
            .collect(),
        http: http_fingerprint(&config),
        registry: registry_fingerprint(&config),
        inference_log: format!("{:?}", config.inference_log),
        keys,
    };
    // Trusted keys: a version they did not sign is refused at load.
    let registry_options = config.registry_options(false)?;
    let registry = Arc::new(ObjectRegistry::new(&root).with_options(registry_options));
    let server = ModelServer::new(registry, crate::models::loaders());
    // One replica of the fleet: the loop's routing intents on the root apply
    // here, and what this replica serves and sees is reported there.
    if config.fleet.enabled {
        let replica = config.fleet.replica_name()?;
        let every = config.fleet.every()?;
        tracing::info!(replica = %replica, every = ?every, "joining the fleet on the storage root");
        server.join_fleet(Arc::new(ObjectFleet::new(&root)), replica, every);
    }
    if let Some(log) = config.inference_log()? {
        server.set_inference_log(Arc::new(ObjectInferenceLog::new(&root)), log)?;
    }
    for d in deployments {
        let name = d.name.clone();
        // A model, alias or version that is missing (or refused) does not stop
        // the service: that deployment comes up not ready and its poller
        // retries. Only a config error fails here.
        let report = server.deploy_or_wait(d).await.map_err(|e| match e {
            Error::InvalidInput { what, reason } => {
                Error::invalid_input(format!("deployment {name}: {what}"), reason)
            }
            other => other,
        })?;
        match &report.waiting {
            Some(reason) => tracing::warn!(
                deployment = %name,
                reason = %reason,
                "deployed, not ready: its versions do not load yet; retrying"
            ),
            None => tracing::info!(deployment = %name, versions = ?report.loaded, "deployed"),
        }
    }
    let listener = tokio::net::TcpListener::bind(&config.http.bind)
        .await
        .map_err(|e| Error::Unavailable {
            what: format!("address {}", config.http.bind),
            reason: e.to_string(),
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::backend("listener", e))?;
    // Admin actions over HTTP go to the same audit log as `mlops models`.
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let app = router(server.clone(), http.clone().with_audit(audit))?;
    // The address on stdout, for scripts and tests that bind port 0.
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("listening on {scheme}://{address}");
    tracing::info!(%address, storage = %url, "serving");
    let grpc_face = start_grpc(&config, &http, &server).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grace = http.shutdown_grace;
    let face = tokio::spawn(async move {
        serve(listener, app, &http, async move {
            let _ = stopped.await;
        })
        .await
    });
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => break,
            () = hangup(&mut hangups) => {
                tracing::info!("SIGHUP: reloading the config");
                apply(path, &server, &features, &mut applied).await;
            }
        }
    }
    tracing::info!("stopping: draining requests in flight");
    // Readiness goes false at once (load balancers stop sending), requests in
    // flight finish, then the listener closes.
    let left = server.drain(grace.max(Duration::from_millis(100))).await;
    let _ = stop.send(());
    if let Some((stop, face)) = grpc_face {
        let _ = stop.send(());
        face.await
            .map_err(|e| Error::backend("gRPC server", e.to_string()))??;
    }
    face.await
        .map_err(|e| Error::backend("HTTP server", e.to_string()))?
        .map_err(|e| Error::backend("HTTP server", e))?;
    if left > 0 {
        tracing::warn!(requests = left, "stopped with requests still in flight");
    }
    tracing::info!("stopped");
    Ok(())
}

/// A started gRPC face: its stop signal and its task.
type GrpcFace = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
);

/// The gRPC face of `[grpc]`, started. `None` without the section.
#[cfg(feature = "grpc")]
async fn start_grpc(
    config: &Config,
    http: &mlops::serve::HttpConfig,
    server: &ModelServer,
) -> Result<Option<GrpcFace>> {
    use mlops::serve::grpc::{GrpcConfig, serve as serve_grpc};
    let Some(g) = &config.grpc else {
        return Ok(None);
    };
    let listener =
        tokio::net::TcpListener::bind(&g.bind)
            .await
            .map_err(|e| Error::Unavailable {
                what: format!("address {} (grpc.bind)", g.bind),
                reason: e.to_string(),
            })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::backend("listener", e))?;
    let keys = http.key_ring.clone().unwrap_or_default();
    let mut grpc = GrpcConfig::new(keys)
        .with_max_message_bytes(g.max_message_bytes.unwrap_or(http.max_body_bytes))
        .with_request_timeout(http.request_timeout)
        .with_max_concurrency(http.max_concurrency);
    if http.allow_unauthenticated {
        grpc = grpc.allow_unauthenticated();
    }
    if let Some(tls) = &g.tls {
        let (cert, key) = tls.read("grpc.tls")?;
        grpc = grpc.with_tls(cert, key);
    }
    println!("listening on grpc://{address}");
    tracing::info!(%address, "serving gRPC");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (s, models) = (Arc::new(server.clone()), Some(server.clone()));
    let face = tokio::spawn(async move {
        serve_grpc(listener, s, models, grpc, async move {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Some((stop, face)))
}

/// Without the `grpc` feature, `[grpc]` is a config error naming it.
#[cfg(not(feature = "grpc"))]
async fn start_grpc(
    config: &Config,
    _http: &mlops::serve::HttpConfig,
    _server: &ModelServer,
) -> Result<Option<GrpcFace>> {
    match &config.grpc {
        None => Ok(None),
        Some(_) => Err(Error::invalid_input(
            "config grpc",
            "this mlops binary was built without the `grpc` feature",
        )),
    }
}
