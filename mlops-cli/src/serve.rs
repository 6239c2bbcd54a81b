//! `mlops serve` and `mlops check`: the config turned into a model server and
//! its HTTP face.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mlops::core::{Error, Result};
use mlops::serve::ModelServer;
use mlops::serve::http::{router, serve};
use mlops::store::{ObjectRegistry, StoreRoot};
use mlops::train::TabularLoader;

use crate::config::Config;

/// Checks everything `serve` would, without opening storage or a port.
pub(crate) fn check(path: &Path, json: bool) -> Result<()> {
    let config = Config::load(path)?;
    config.storage_root()?;
    config.storage_options()?;
    config.http_config()?;
    let deployments = config.deployment_configs()?;
    if json {
        let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
        println!(
            "{}",
            serde_json::json!({"config": path.display().to_string(), "ok": true, "deployments": names})
        );
    } else {
        println!("{}: ok ({} deployments)", path.display(), deployments.len());
    }
    Ok(())
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves until SIGTERM or SIGINT; then drains and returns.
pub(crate) async fn run(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let http = config.http_config()?;
    let deployments = config.deployment_configs()?;
    let url = config.storage_root()?;
    let root = StoreRoot::open_with_options(&url, config.storage_options()?)?;
    let registry = Arc::new(ObjectRegistry::new(&root));
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    for d in deployments {
        let name = d.name.clone();
        let report = server.deploy(d).await.map_err(|e| match e {
            Error::InvalidInput { what, reason } => {
                Error::invalid_input(format!("deployment {name}: {what}"), reason)
            }
            other => other,
        })?;
        tracing::info!(deployment = %name, versions = ?report.loaded, "deployed");
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
    let app = router(server.clone(), http.clone())?;
    // The address on stdout, for scripts and tests that bind port 0.
    println!("listening on http://{address}");
    tracing::info!(%address, storage = %url, "serving");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grace = http.shutdown_grace;
    let face = tokio::spawn(async move {
        serve(listener, app, &http, async move {
            let _ = stopped.await;
        })
        .await
    });
    stop_signal().await;
    tracing::info!("stopping: draining requests in flight");
    // Readiness goes false at once (load balancers stop sending), requests in
    // flight finish, then the listener closes.
    let left = server.drain(grace.max(Duration::from_millis(100))).await;
    let _ = stop.send(());
    face.await
        .map_err(|e| Error::backend("HTTP server", e.to_string()))?
        .map_err(|e| Error::backend("HTTP server", e))?;
    if left > 0 {
        tracing::warn!(requests = left, "stopped with requests still in flight");
    }
    tracing::info!("stopped");
    Ok(())
}
