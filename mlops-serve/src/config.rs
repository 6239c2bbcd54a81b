//! What a deployment is: which registry model, how traffic is routed between its
//! versions, and the optional batching, caching, reloading and feature enrichment.

use std::sync::Arc;
use std::time::Duration;

use mlops_core::error::ResourceKind;
use mlops_core::feature::FeatureRef;
use mlops_core::model::VersionSelector;
use mlops_core::{Error, FeatureStore, Result, validate_name};

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// The version it serves.
    pub selector: VersionSelector,
    /// Its share of traffic, relative to the other arms' weights.
    pub weight: f64,
}

/// How requests without an explicit version choose one.
#[derive(Debug, Clone, PartialEq)]
pub enum Routing {
    /// Every request to one version (a number, an alias, or the latest).
    Fixed(VersionSelector),
    /// A weighted A/B (or A/B/n) split. A request that carries a routing key (the
    /// `routing_key` request parameter) always lands on the same arm for the same
    /// weights; others are spread at random.
    Split(Vec<Arm>),
    /// A canary: `weight` (0..=1) of traffic to `canary`, the rest to `stable`;
    /// sticky per routing key like a split. The weight moves with
    /// [`ModelServer::set_canary_weight`](crate::ModelServer::set_canary_weight) or
    /// on the deployment's [`CanaryRamp`] schedule.
    Canary {
        /// The version most traffic goes to.
        stable: VersionSelector,
        /// The version being tried.
        canary: VersionSelector,
        /// The canary's share, in `[0, 1]`.
        weight: f64,
    },
}

impl Routing {
    /// Checks weights: finite, non-negative, not all zero; canary weight in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Fixed(_) => Ok(()),
            Self::Split(arms) => {
                if arms.is_empty() {
                    return Err(Error::invalid_input("routing split", "has no arms"));
                }
                if let Some(a) = arms
                    .iter()
                    .find(|a| !(a.weight.is_finite() && a.weight >= 0.0))
                {
                    return Err(Error::invalid_input(
                        "routing split",
                        format!(
                            "arm {} has weight {}; weights must be >= 0",
                            a.selector, a.weight
                        ),
                    ));
                }
                if arms.iter().all(|a| a.weight == 0.0) {
                    return Err(Error::invalid_input("routing split", "every weight is 0"));
                }
                Ok(())
            }
            Self::Canary { weight, .. } => check_canary_weight(*weight),
        }
    }

    /// The selectors this routing can send traffic to.
    pub fn selectors(&self) -> Vec<VersionSelector> {
        match self {
            Self::Fixed(s) => vec![s.clone()],
            Self::Split(arms) => arms.iter().map(|a| a.selector.clone()).collect(),
            Self::Canary { stable, canary, .. } => vec![stable.clone(), canary.clone()],
        }
    }

    /// The selector whose version answers metadata requests: the fixed one, the
    /// heaviest arm, or the stable side of a canary.
    pub fn primary(&self) -> VersionSelector {
        match self {
            Self::Fixed(s) => s.clone(),
            Self::Split(arms) => arms
                .iter()
                .fold(None::<&Arm>, |best, a| match best {
                    Some(b) if b.weight >= a.weight => Some(b),
                    _ => Some(a),
                })
                .map_or(VersionSelector::Latest, |a| a.selector.clone()),
            Self::Canary { stable, .. } => stable.clone(),
        }
    }

    /// The selector for a point `u` in `[0, 1)` (a hash of the routing key, or a
    /// random draw).
    pub(crate) fn pick(&self, u: f64) -> &VersionSelector {
        match self {
            Self::Fixed(s) => s,
            Self::Split(arms) => {
                let total: f64 = arms.iter().map(|a| a.weight).sum();
                let mut target = u * total;
                for a in arms {
                    if target < a.weight {
                        return &a.selector;
                    }
                    target -= a.weight;
                }
                // Rounding at the top end: the last arm with weight.
                arms.iter()
                    .rev()
                    .find(|a| a.weight > 0.0)
                    .map_or(&arms[0].selector, |a| &a.selector)
            }
            Self::Canary {
                stable,
                canary,
                weight,
            } => {
                if u < *weight {
                    canary
                } else {
                    stable
                }
            }
        }
    }
}

pub(crate) fn check_canary_weight(weight: f64) -> Result<()> {
    if (0.0..=1.0).contains(&weight) {
        Ok(())
    } else {
        Err(Error::invalid_input(
            "canary weight",
            format!("{weight} is outside [0, 1]"),
        ))
    }
}

/// Moves a canary's weight on a schedule: `step` more every `every`, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryRamp {
    /// Added to the weight at each tick.
    pub step: f64,
    /// Time between ticks.
    pub every: Duration,
    /// The weight stops here.
    pub max: f64,
}

/// Dynamic batching, as Triton's `max_batch_size` / `max_queue_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The prediction cache: bounded in entries and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries kept, at most (least recently used go first).
    pub max_entries: u64,
    /// How long an entry is served.
    pub ttl: Duration,
}

/// Feature enrichment: requests may carry entity keys instead of feature values;
/// the features come from the store's online side.
#[derive(Debug, Clone)]
pub struct Enrichment {
    /// The feature store.
    pub store: Arc<dyn FeatureStore>,
    /// The features to look up; each becomes the model input of its feature name.
    pub features: Vec<FeatureRef>,
    /// The entity key inputs a request carries instead (the views' join keys).
    pub entity_keys: Vec<String>,
}

/// One deployment of a registry model.
#[derive(Debug, Clone)]
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
    /// Unbatched requests of at most this many rows run on the async worker that
    /// received them instead of tokio's blocking pool. Handing a call to another
    /// thread costs 15-30 µs, more than a small tabular model takes for a few rows;
    /// for such models a small value (1-16) raises throughput several times. Keep
    /// 0 (the default: every call on the blocking pool) for models whose calls
    /// take longer than about 100 µs, so they never stall the async workers.
    pub inline_max_rows: usize,
    /// Drift monitoring of served inputs and predictions against the references
    /// the model carries; `None` for none.
    pub monitoring: Option<crate::live::MonitorConfig>,
    /// Feedback and live quality; `None` for none.
    pub feedback: Option<crate::live::FeedbackConfig>,
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
            inline_max_rows: 0,
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
        if let Some(c) = &self.cache
            && (c.max_entries == 0 || c.ttl.is_zero())
        {
            return Err(Error::invalid_input(
                format!("cache of {}", self.name),
                "max_entries and ttl must be positive",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_picks_by_cumulative_weight() {
        let r = Routing::Split(vec![
            Arm {
                selector: VersionSelector::Number(1),
                weight: 3.0,
            },
            Arm {
                selector: VersionSelector::Number(2),
                weight: 1.0,
            },
        ]);
        assert_eq!(r.pick(0.0), &VersionSelector::Number(1));
        assert_eq!(r.pick(0.74), &VersionSelector::Number(1));
        assert_eq!(r.pick(0.76), &VersionSelector::Number(2));
        assert_eq!(r.pick(0.999_999), &VersionSelector::Number(2));
        assert_eq!(r.primary(), VersionSelector::Number(1));
        assert!(Routing::Split(vec![]).validate().is_err());
        let zero = Routing::Split(vec![Arm {
            selector: VersionSelector::Latest,
            weight: 0.0,
        }]);
        assert!(zero.validate().is_err());
        let canary = Routing::Canary {
            stable: VersionSelector::Number(1),
            canary: VersionSelector::Number(2),
            weight: 1.5,
        };
        assert!(canary.validate().is_err());
    }
}
