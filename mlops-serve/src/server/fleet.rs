//! A server as one replica of a fleet ([`ModelServer::join_fleet`]): it
//! applies the routing intent every replica shares and reports what it serves
//! and sees, so a steerer ([`FleetTraffic`](mlops_core::fleet::FleetTraffic))
//! moves and judges the whole fleet, not the replica it happens to reach.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mlops_core::Result;
use mlops_core::fleet::{FleetStore, ReplicaReport, RoutingRecord, TrafficIntent};
use mlops_core::model::VersionSelector;
use mlops_core::monitoring::TrafficControl;

use super::{Inner, ModelServer};
use crate::config::Routing;

impl ModelServer {
    /// Joins a fleet as `replica` (unique among the replicas: a pod's name):
    /// every `every`, for each deployment, applies the fleet's routing intent
    /// when its revision is newer than the one applied here (at once after a
    /// restart), and publishes this replica's report (routing, drift, live
    /// statistics). Runs on the calling tokio runtime until the server is
    /// dropped; a failed step is logged and retried at the next round.
    pub fn join_fleet(
        &self,
        fleet: Arc<dyn FleetStore>,
        replica: impl Into<String>,
        every: Duration,
    ) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let replica = replica.into();
        tokio::spawn(async move {
            let mut applied: HashMap<String, u64> = HashMap::new();
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let server = ModelServer { inner };
                for name in server.deployment_names() {
                    let revision = applied.get(&name).copied().unwrap_or(0);
                    match server.fleet_round(&*fleet, &replica, &name, revision).await {
                        Ok(now) => {
                            applied.insert(name, now);
                        }
                        Err(e) => tracing::warn!(
                            deployment = %name,
                            replica = %replica,
                            error = %e,
                            "fleet round failed; retrying at the next"
                        ),
                    }
                }
            }
        });
    }

    /// The deployments this server serves.
    fn deployment_names(&self) -> Vec<String> {
        self.inner
            .deployments
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// One round for deployment `name`: applies a newer intent, then reports.
    /// Returns the revision now applied.
    async fn fleet_round(
        &self,
        fleet: &dyn FleetStore,
        replica: &str,
        name: &str,
        mut applied: u64,
    ) -> Result<u64> {
        if let Some(record) = fleet.routing(name).await?
            && record.revision > applied
        {
            self.apply_intent(name, &record).await?;
            tracing::info!(
                deployment = %name,
                revision = record.revision,
                intent = ?record.intent,
                "fleet routing applied"
            );
            applied = record.revision;
        }
        let report = ReplicaReport {
            replica: replica.to_owned(),
            model: self.deployment(name)?.config.model.clone(),
            at: chrono::Utc::now(),
            applied_revision: applied,
            health: TrafficControl::health(self, name).await?,
        };
        fleet.publish(name, &report).await?;
        Ok(applied)
    }

    async fn apply_intent(&self, name: &str, record: &RoutingRecord) -> Result<()> {
        let n = VersionSelector::Number;
        match record.intent {
            TrafficIntent::All { version } => self
                .set_routing(name, Routing::Fixed(n(version)))
                .await
                .map(|_| ()),
            TrafficIntent::Canary {
                stable,
                canary,
                weight,
            } => {
                // The same arms: only the weight moves (no versions to resolve).
                let same = match self.deployment(name)?.state().routing {
                    Routing::Canary {
                        stable: ref s,
                        canary: ref c,
                        ..
                    } => *s == n(stable) && *c == n(canary),
                    _ => false,
                };
                if same {
                    self.set_canary_weight(name, weight).await
                } else {
                    self.set_routing(
                        name,
                        Routing::Canary {
                            stable: n(stable),
                            canary: n(canary),
                            weight,
                        },
                    )
                    .await
                    .map(|_| ())
                }
            }
        }
    }
}
