//! What a deployment is: which registry model, how its traffic is routed, and
//! the optional batching, caching, reloading, enrichment, monitoring and feedback.

use std::sync::Arc;
use std::time::Duration;

use mlops_core::error::ResourceKind;
use mlops_core::feature::FeatureRef;
use mlops_core::model::VersionSelector;
use mlops_core::{Error, OnlineFeatureStore, Result, validate_name};

use super::monitoring::{FeedbackConfig, MonitorConfig};
use super::routing::{CanaryRamp, Routing, check_canary_weight};

/// Dynamic batching, as Triton's `max_batch_size` / `max_queue_delay`:
/// [`BatchConfig::default`], then the `with_*` setters (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Rows per model call, at most (a single larger request runs alone).
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for company.
    pub max_queue_delay: Duration,
    /// Requests waiting, at most; beyond it requests are shed with
    /// [`Error::Unavailable`] (HTTP 503 with `Retry-After`).
    pub max_queue: usize,
    /// Batches run at once (model instances), at least 1.
    pub instances: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 64,
            max_queue_delay: Duration::from_micros(500),
            max_queue: 1024,
            instances: 1,
        }
    }
}

/// The prediction cache: bounded in entries and age; made by [`CacheConfig::new`]
/// (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Entries kept, at most (least recently used go first).
    pub max_entries: u64,
    /// How long an entry is served.
    pub ttl: Duration,
    /// Bytes the entries may hold (keys and outputs), at most. Default 256 MiB.
    pub max_bytes: u64,
    /// Requests whose inputs hold more bytes than this are not cached. Default
    /// 64 KiB.
    pub max_key_bytes: usize,
}

impl BatchConfig {
    /// At most `rows` rows per model call.
    pub fn with_max_batch_size(mut self, rows: usize) -> Self {
        self.max_batch_size = rows;
        self
    }

    /// The first request of a batch waits at most `delay` for company.
    pub fn with_max_queue_delay(mut self, delay: Duration) -> Self {
        self.max_queue_delay = delay;
        self
    }

    /// At most `requests` waiting; more are shed.
    pub fn with_max_queue(mut self, requests: usize) -> Self {
        self.max_queue = requests;
        self
    }

    /// `instances` batches run at once.
    pub fn with_instances(mut self, instances: usize) -> Self {
        self.instances = instances;
        self
    }
}

impl CacheConfig {
    /// At most `max_entries` entries (and 256 MiB), each served for `ttl`;
    /// requests with inputs above 64 KiB are not cached.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            max_entries,
            ttl,
            max_bytes: 256 << 20,
            max_key_bytes: 64 << 10,
        }
    }

    /// At most `bytes` held by the entries.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Caches only requests whose inputs hold at most `bytes`.
    pub fn with_max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }
}

/// Feature enrichment: requests may carry entity keys instead of feature values;
/// the features come from the store's online side.
#[derive(Debug, Clone)]
pub struct Enrichment {
    /// The feature store.
    pub store: Arc<dyn OnlineFeatureStore>,
    /// The features to look up; each becomes the model input of its feature name.
    pub features: Vec<FeatureRef>,
    /// The entity key inputs a request carries instead (the views' join keys).
    pub entity_keys: Vec<String>,
}

/// The default of [`DeploymentConfig::max_queued_calls`].
const DEFAULT_MAX_QUEUED_CALLS: usize = 1024;

/// One deployment of a registry model: made by [`DeploymentConfig::new`], then
/// set field by field (`#[non_exhaustive]`: new settings may be added in minor
/// releases).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeploymentConfig {
    /// The name clients use (`/v2/models/{name}`).
    pub name: String,
    /// The model's name in the registry.
    pub model: String,
    /// How requests choose a version.
    pub routing: Routing,
    /// Versions that receive a copy of every request off the request path (their
    /// answers are recorded next to the served ones, never returned).
    pub shadows: Vec<VersionSelector>,
    /// Dynamic batching; `None` runs each request on its own.
    pub batching: Option<BatchConfig>,
    /// The prediction cache; `None` for none.
    pub cache: Option<CacheConfig>,
    /// Re-resolve aliases this often and swap in moved versions; `None` reloads on
    /// explicit calls only.
    pub reload_interval: Option<Duration>,
    /// The canary's schedule, for [`Routing::Canary`].
    pub canary_ramp: Option<CanaryRamp>,
    /// Feature enrichment.
    pub enrichment: Option<Enrichment>,
    /// Which unbatched requests run on the async worker that received them
    /// instead of tokio's blocking pool. Handing a call to another thread costs
    /// 15-30 µs, more than a small tabular model takes for a few rows, so running
    /// those in place raises throughput several times; a slow call run in place
    /// stalls the worker's other requests.
    ///
    /// `None` (the default): the server decides from each version's measured
    /// call times, per size class up to 64 rows: calls averaging under 20 µs run
    /// in place once 8 of their class were timed, and move back to the pool if
    /// they slow down. `Some(n)`: requests of at most `n` rows run in place
    /// whatever they cost; `Some(0)`: every call on the blocking pool.
    pub inline_max_rows: Option<usize>,
    /// Unbatched model calls that run at once on tokio's blocking pool, at most
    /// (as Triton's instance count). Default: the machine's CPU count, since a
    /// CPU-bound model gains nothing from more; raise it for a model that waits
    /// on I/O. Batched deployments use [`BatchConfig::instances`].
    pub max_running_calls: usize,
    /// Unbatched requests waiting for one of the
    /// [`max_running_calls`](Self::max_running_calls), at most; beyond it they
    /// are shed at once with [`Error::Unavailable`] (HTTP 503 with
    /// `Retry-After`). Default 1,024. A request that times out or whose client
    /// leaves while it waits gives up its place, and its model call is skipped
    /// if it has not started. Batched deployments use [`BatchConfig::max_queue`].
    pub max_queued_calls: usize,
    /// Drift monitoring of served inputs and predictions against the references
    /// the model carries; `None` for none.
    pub monitoring: Option<MonitorConfig>,
    /// Feedback and live quality; `None` for none.
    pub feedback: Option<FeedbackConfig>,
}

impl DeploymentConfig {
    /// A deployment of registry model `model` under `name`, with `routing` and
    /// nothing else.
    pub fn new(name: impl Into<String>, model: impl Into<String>, routing: Routing) -> Self {
        Self {
            name: name.into(),
            model: model.into(),
            routing,
            shadows: Vec::new(),
            batching: None,
            cache: None,
            reload_interval: None,
            canary_ramp: None,
            enrichment: None,
            inline_max_rows: None,
            max_running_calls: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_queued_calls: DEFAULT_MAX_QUEUED_CALLS,
            monitoring: None,
            feedback: None,
        }
    }

    /// Checks names, weights and limits.
    pub fn validate(&self) -> Result<()> {
        validate_name(ResourceKind::Model, &self.name)?;
        validate_name(ResourceKind::Model, &self.model)?;
        self.routing.validate()?;
        if let Some(b) = &self.batching
            && (b.max_batch_size == 0 || b.max_queue == 0 || b.instances == 0)
        {
            return Err(Error::invalid_input(
                format!("batching of {}", self.name),
                "max_batch_size, max_queue and instances must be at least 1",
            ));
        }
        if self.max_running_calls == 0 || self.max_queued_calls == 0 {
            return Err(Error::invalid_input(
                format!("deployment {}", self.name),
                "max_running_calls and max_queued_calls must be at least 1",
            ));
        }
        if let Some(c) = &self.cache
            && (c.max_entries == 0 || c.ttl.is_zero() || c.max_bytes == 0)
        {
            return Err(Error::invalid_input(
                format!("cache of {}", self.name),
                "max_entries, max_bytes and ttl must be positive",
            ));
        }
        if self.reload_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid_input(
                format!("reload interval of {}", self.name),
                "must be positive",
            ));
        }
        if let Some(r) = &self.canary_ramp {
            if !matches!(self.routing, Routing::Canary { .. }) {
                return Err(Error::invalid_input(
                    format!("canary ramp of {}", self.name),
                    "needs canary routing",
                ));
            }
            if !(r.step > 0.0 && r.step <= 1.0) || r.every.is_zero() {
                return Err(Error::invalid_input(
                    format!("canary ramp of {}", self.name),
                    "step must be in (0, 1] and every positive",
                ));
            }
            check_canary_weight(r.max)?;
        }
        if let Some(e) = &self.enrichment
            && (e.features.is_empty() || e.entity_keys.is_empty())
        {
            return Err(Error::invalid_input(
                format!("feature enrichment of {}", self.name),
                "needs at least one feature and one entity key",
            ));
        }
        Ok(())
    }
}
