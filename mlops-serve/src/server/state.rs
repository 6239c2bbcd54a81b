//! A deployment's state: its loaded versions, routing and runtime pieces.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use mlops_core::Predictor;
use mlops_core::model::{ModelVersion, VersionSelector};

use crate::config::{DeploymentConfig, Routing};
use crate::runtime::batch::{Batcher, CallQueue};
use crate::runtime::cache::PredictionCache;
use crate::runtime::feedback::FeedbackBook;
use crate::runtime::monitor::VersionMonitor;
use crate::runtime::shadow::ShadowLog;

#[derive(Debug)]
pub(super) struct LoadedVersion {
    pub(super) version: ModelVersion,
    pub(super) predictor: Arc<dyn Predictor>,
    pub(super) batcher: Option<Batcher>,
    /// The bounded queue of unbatched calls (unused when batched).
    pub(super) calls: CallQueue,
    /// The success counter and latency histogram of this version, resolved once
    /// so the hot path takes no lock and allocates no label.
    pub(super) ok_requests: prometheus_client::metrics::counter::Counter,
    pub(super) latency: prometheus_client::metrics::histogram::Histogram,
    pub(super) monitor: Option<VersionMonitor>,
}

/// Routing and loaded versions, swapped as one.
#[derive(Debug)]
pub(super) struct State {
    pub(super) routing: Routing,
    pub(super) resolved: Vec<(VersionSelector, u64)>,
    pub(super) shadows: Vec<u64>,
    pub(super) versions: BTreeMap<u64, Arc<LoadedVersion>>,
    /// Why the deployment serves nothing yet: set while it waits for its model,
    /// an alias or a loadable version (see `ModelServer::deploy_or_wait`), with
    /// no version loaded; `None` once it serves.
    pub(super) waiting: Option<String>,
}

impl State {
    /// A state that serves nothing yet, for `reason`.
    pub(super) fn waiting(routing: Routing, reason: String) -> Self {
        Self {
            routing,
            resolved: Vec::new(),
            shadows: Vec::new(),
            versions: BTreeMap::new(),
            waiting: Some(reason),
        }
    }

    pub(super) fn number_of(&self, selector: &VersionSelector) -> Option<u64> {
        match selector {
            VersionSelector::Number(n) if self.versions.contains_key(n) => Some(*n),
            _ => self
                .resolved
                .iter()
                .find(|(s, _)| s == selector)
                .map(|(_, n)| *n),
        }
    }
}

#[derive(Debug)]
pub(super) struct Deployment {
    pub(super) config: DeploymentConfig,
    pub(super) state: RwLock<Arc<State>>,
    pub(super) cache: Option<PredictionCache>,
    pub(super) feedback: Option<FeedbackBook>,
    pub(super) shadow_log: ShadowLog,
    pub(super) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    pub(super) reload_lock: tokio::sync::Mutex<()>,
    /// Why the last reload failed (the versions being served stay), until one
    /// succeeds.
    pub(super) last_error: Mutex<Option<String>>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl Deployment {
    pub(super) fn state(&self) -> Arc<State> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records the outcome of a reload: its error, or `None` after a success.
    pub(super) fn set_last_error(&self, error: Option<String>) {
        match self.last_error.lock() {
            Ok(mut e) => *e = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }

    /// Why the last reload failed, if it did.
    pub(super) fn last_error(&self) -> Option<String> {
        match self.last_error.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn swap(&self, new: State) {
        let new = Arc::new(new);
        match self.state.write() {
            Ok(mut s) => *s = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}
