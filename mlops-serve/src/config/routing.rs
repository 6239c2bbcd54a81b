//! How traffic is routed between a deployment's versions: [`Routing`] and the
//! canary's schedule ([`CanaryRamp`]).

use std::time::Duration;

use mlops_core::model::VersionSelector;
use mlops_core::{Error, Result};

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// The version it serves.
    pub selector: VersionSelector,
    /// Its share of traffic, relative to the other arms' weights.
    pub weight: f64,
}

impl Arm {
    /// An arm serving `selector` with `weight`.
    pub fn new(selector: VersionSelector, weight: f64) -> Self {
        Self { selector, weight }
    }
}

/// How requests without an explicit version choose one.
///
/// New policies may be added in minor releases (`#[non_exhaustive]`): a `match`
/// on it needs a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
