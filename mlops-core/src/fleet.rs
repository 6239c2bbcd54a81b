//! Serving replicas as one fleet: the traffic a deployment should take, set
//! once for every replica ([`TrafficIntent`], kept in a [`FleetStore`]), and
//! each replica's report of what it serves and sees ([`ReplicaReport`]), merged
//! into one [`ModelHealth`] by [`FleetTraffic`], the [`TrafficControl`] the
//! retraining loop steers a fleet with.
//!
//! Steering one replica's admin API moves one replica's traffic and reads one
//! replica's feedback; behind a load balancer that is a fraction of both. A
//! fleet instead shares two things on the storage root: the routing intent
//! (compare-and-swap, with a revision every replica applies once) and one
//! report per replica (its routing, drift and live statistics). Live
//! statistics merge exactly where they are [`ArmStats`] (the per-prediction
//! loss, business metrics, their windows); metrics over each replica's last N
//! labels (ROC AUC and the like) merge as a row-weighted mean, an
//! approximation the evidence rule does not depend on.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::experiment::ArmStats;
use crate::monitoring::{LiveQuality, ModelHealth, TrafficControl, VersionHealth};

/// The traffic a deployment should take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrafficIntent {
    /// Every request to one version.
    All {
        /// The version.
        version: u64,
    },
    /// A canary beside a stable version.
    Canary {
        /// The stable version.
        stable: u64,
        /// The canary version.
        canary: u64,
        /// The canary's share, in `[0, 1]`.
        weight: f64,
    },
}

/// The intent in force, with its revision (each change increments it; a
/// replica applies each revision once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingRecord {
    /// 1 for the first intent, then one more per change.
    pub revision: u64,
    /// The traffic to take.
    pub intent: TrafficIntent,
    /// When it was set.
    pub at: DateTime<Utc>,
}

/// One replica's report of one deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The replica's name (unique in the fleet: a pod's name).
    pub replica: String,
    /// The registry model the deployment serves.
    #[serde(default)]
    pub model: String,
    /// When it reported.
    pub at: DateTime<Utc>,
    /// The routing revision it has applied (0: none).
    pub applied_revision: u64,
    /// What it serves and has seen.
    pub health: ModelHealth,
}

/// Where a fleet keeps its routing intents and replica reports (one storage
/// root: `mlops_store::ObjectFleet`).
#[async_trait]
pub trait FleetStore: Send + Sync + std::fmt::Debug {
    /// The intent in force for `deployment`, if any was set.
    async fn routing(&self, deployment: &str) -> Result<Option<RoutingRecord>>;

    /// Sets `deployment`'s intent (the next revision); returns the record.
    async fn set_routing(&self, deployment: &str, intent: TrafficIntent) -> Result<RoutingRecord>;

    /// Stores `report`, replacing the replica's previous one.
    async fn publish(&self, deployment: &str, report: &ReplicaReport) -> Result<()>;

    /// Every replica's latest report of `deployment`.
    async fn reports(&self, deployment: &str) -> Result<Vec<ReplicaReport>>;
}

/// Checks an intent before it is stored.
///
/// # Errors
/// [`Error::InvalidInput`] for a weight outside `[0, 1]` or a canary of the
/// stable version itself.
pub fn check_intent(intent: &TrafficIntent) -> Result<()> {
    if let TrafficIntent::Canary {
        stable,
        canary,
        weight,
    } = intent
    {
        if !(0.0..=1.0).contains(weight) {
            return Err(Error::invalid_input(
                "canary weight",
                format!("{weight} is not in [0, 1]"),
            ));
        }
        if stable == canary {
            return Err(Error::invalid_input(
                "canary",
                format!("v{canary} cannot be the canary of itself"),
            ));
        }
    }
    Ok(())
}

/// Merges replica reports into one health: drift is reported when any
/// replica's latest window drifted, [`ArmStats`] merge exactly, row counts
/// add up, other live metrics are row-weighted means, traffic shares are
/// means over the reporting replicas.
pub fn merge_reports(reports: &[ReplicaReport]) -> ModelHealth {
    let mut versions: BTreeMap<u64, Vec<&VersionHealth>> = BTreeMap::new();
    for r in reports {
        for (v, h) in &r.health.versions {
            versions.entry(*v).or_default().push(h);
        }
    }
    let latest = reports.iter().max_by_key(|r| r.at);
    let merged = versions
        .into_iter()
        .map(|(v, hs)| {
            let n = hs.len() as f64;
            let drift = |pick: fn(&VersionHealth) -> Option<&crate::monitoring::DriftSummary>| {
                let all: Vec<_> = hs.iter().filter_map(|h| pick(h)).collect();
                all.iter()
                    .filter(|d| d.drifted)
                    .max_by_key(|d| d.at)
                    .or_else(|| all.iter().max_by_key(|d| d.at))
                    .map(|d| (*d).clone())
            };
            let health = VersionHealth {
                traffic_share: hs.iter().map(|h| h.traffic_share).sum::<f64>() / n,
                input_drift: drift(|h| h.input_drift.as_ref()),
                prediction_drift: drift(|h| h.prediction_drift.as_ref()),
                live: merge_live(hs.iter().map(|h| &h.live)),
            };
            (v, health)
        })
        .collect();
    ModelHealth {
        champion: latest.and_then(|r| r.health.champion),
        canary: latest.and_then(|r| r.health.canary),
        versions: merged,
    }
}

fn merge_live<'a>(lives: impl Iterator<Item = &'a LiveQuality>) -> LiveQuality {
    let mut out = LiveQuality::default();
    let mut weighted: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for l in lives {
        out.rows += l.rows;
        for (k, v) in &l.metrics {
            let e = weighted.entry(k.clone()).or_default();
            e.0 += v * l.rows as f64;
            e.1 += l.rows as f64;
        }
        out.loss.merge(&l.loss);
        for (k, s) in &l.business {
            out.business.entry(k.clone()).or_default().merge(s);
        }
        for (w, m) in &l.windows {
            let into = out.windows.entry(w.clone()).or_default();
            for (k, s) in m {
                into.entry(k.clone()).or_insert_with(ArmStats::new).merge(s);
            }
        }
    }
    out.metrics = weighted
        .into_iter()
        .filter(|(_, (_, rows))| *rows > 0.0)
        .map(|(k, (sum, rows))| (k, sum / rows))
        .collect();
    out
}

/// [`TrafficControl`] over a fleet: steering stores the intent every replica
/// applies; health merges the reports of replicas that reported within
/// `max_age` (older ones are gone or stuck).
#[derive(Debug, Clone)]
pub struct FleetTraffic {
    store: std::sync::Arc<dyn FleetStore>,
    max_age: Duration,
}

impl FleetTraffic {
    /// Steers through `store`, reading reports up to `max_age` old.
    pub fn new(store: std::sync::Arc<dyn FleetStore>, max_age: Duration) -> Self {
        Self { store, max_age }
    }

    async fn set(&self, deployment: &str, intent: TrafficIntent) -> Result<()> {
        check_intent(&intent)?;
        self.store.set_routing(deployment, intent).await.map(|_| ())
    }
}

#[async_trait]
impl TrafficControl for FleetTraffic {
    async fn health(&self, deployment: &str) -> Result<ModelHealth> {
        let now = Utc::now();
        let fresh: Vec<ReplicaReport> = self
            .store
            .reports(deployment)
            .await?
            .into_iter()
            .filter(|r| (now - r.at).to_std().unwrap_or_default() <= self.max_age)
            .collect();
        if fresh.is_empty() {
            return Err(Error::Unavailable {
                what: format!("fleet serving {deployment}"),
                reason: format!("no replica reported within {:?}", self.max_age),
            });
        }
        let mut health = merge_reports(&fresh);
        // The intent in force names champion and canary, whatever replicas
        // that have not applied it yet say.
        if let Some(r) = self.store.routing(deployment).await? {
            (health.champion, health.canary) = match r.intent {
                TrafficIntent::All { version } => (Some(version), None),
                TrafficIntent::Canary { stable, canary, .. } => (Some(stable), Some(canary)),
            };
        }
        Ok(health)
    }

    async fn start_canary(
        &self,
        deployment: &str,
        stable: u64,
        canary: u64,
        weight: f64,
    ) -> Result<()> {
        self.set(
            deployment,
            TrafficIntent::Canary {
                stable,
                canary,
                weight,
            },
        )
        .await
    }

    async fn set_canary_weight(&self, deployment: &str, weight: f64) -> Result<()> {
        match self.store.routing(deployment).await? {
            Some(RoutingRecord {
                intent: TrafficIntent::Canary { stable, canary, .. },
                ..
            }) => self.start_canary(deployment, stable, canary, weight).await,
            _ => Err(Error::conflict(
                format!("fleet routing of {deployment}"),
                "no canary is running",
            )),
        }
    }

    async fn route_all(&self, deployment: &str, version: u64) -> Result<()> {
        self.set(deployment, TrafficIntent::All { version }).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::monitoring::DriftSummary;

    fn report(replica: &str, loss: &[f64], rows: usize, auc: f64, drifted: bool) -> ReplicaReport {
        let live = LiveQuality {
            rows,
            metrics: BTreeMap::from([("roc_auc".to_owned(), auc)]),
            loss: ArmStats::of(loss).unwrap(),
            ..LiveQuality::default()
        };
        let drift = DriftSummary {
            drifted,
            share_drifted: f64::from(u8::from(drifted)),
            drifted_features: vec![],
            rows: 10,
            at: Utc::now(),
            windows: 1,
            drifted_windows: u64::from(drifted),
        };
        ReplicaReport {
            replica: replica.into(),
            model: "m".into(),
            at: Utc::now(),
            applied_revision: 1,
            health: ModelHealth {
                champion: Some(1),
                canary: None,
                versions: BTreeMap::from([(
                    1,
                    VersionHealth {
                        traffic_share: 1.0,
                        input_drift: Some(drift),
                        prediction_drift: None,
                        live,
                    },
                )]),
            },
        }
    }

    #[test]
    fn reports_merge_exactly_where_statistics_allow() {
        let a = report("a", &[0.1, 0.2, 0.3], 3, 0.9, false);
        let b = report("b", &[0.5], 1, 0.5, true);
        let h = merge_reports(&[a, b]);
        let v = &h.versions[&1];
        assert_eq!(v.live.rows, 4);
        let all = ArmStats::of(&[0.1, 0.2, 0.3, 0.5]).unwrap();
        assert_eq!(v.live.loss.count(), 4);
        assert!((v.live.loss.mean() - all.mean()).abs() < 1e-12);
        assert!((v.live.loss.variance() - all.variance()).abs() < 1e-12);
        assert!(
            (v.live.metrics["roc_auc"] - 0.8).abs() < 1e-12,
            "row-weighted"
        );
        assert!(
            v.input_drift.as_ref().unwrap().drifted,
            "any replica's drift counts"
        );
        assert_eq!(v.traffic_share, 1.0);
        assert_eq!(merge_reports(&[]).versions.len(), 0);
    }

    #[test]
    fn bad_intents_are_refused() {
        assert!(check_intent(&TrafficIntent::All { version: 1 }).is_ok());
        for intent in [
            TrafficIntent::Canary {
                stable: 1,
                canary: 2,
                weight: 1.5,
            },
            TrafficIntent::Canary {
                stable: 1,
                canary: 1,
                weight: 0.5,
            },
        ] {
            assert!(matches!(
                check_intent(&intent),
                Err(Error::InvalidInput { .. })
            ));
        }
    }
}
