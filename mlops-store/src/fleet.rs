//! [`ObjectFleet`]: a serving fleet's routing intents and replica reports on a
//! storage root.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use mlops_core::fleet::{FleetStore, ReplicaReport, RoutingRecord, TrafficIntent, check_intent};
use mlops_core::{Error, ResourceKind, Result, validate_name};

use crate::cas::CasCell;
use crate::root::StoreRoot;

/// A fleet's shared state under a [`StoreRoot`]: per deployment, the routing
/// intent at `fleet/<deployment>/routing` (a compare-and-swap cell: concurrent
/// steerers never lose each other's change, and the revision counts every
/// one) and each replica's latest report at
/// `fleet/<deployment>/replicas/<replica>/report.json` (written by that
/// replica only).
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_core::fleet::{FleetStore, TrafficIntent};
/// use mlops_store::{ObjectFleet, StoreRoot};
///
/// let fleet = ObjectFleet::new(&StoreRoot::open("memory://")?);
/// let r = fleet.set_routing("fraud", TrafficIntent::All { version: 3 }).await?;
/// assert_eq!(r.revision, 1);
/// assert_eq!(fleet.routing("fraud").await?.map(|r| r.intent), Some(TrafficIntent::All { version: 3 }));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectFleet {
    root: StoreRoot,
}

impl ObjectFleet {
    /// The fleet state under `root`.
    pub fn new(root: &StoreRoot) -> Self {
        Self { root: root.clone() }
    }

    fn routing_cell(&self, deployment: &str) -> Result<CasCell> {
        validate_name(ResourceKind::Model, deployment)?;
        Ok(CasCell::new(
            &self.root,
            format!("fleet/{deployment}/routing"),
        ))
    }
}

#[async_trait]
impl FleetStore for ObjectFleet {
    async fn routing(&self, deployment: &str) -> Result<Option<RoutingRecord>> {
        Ok(self.routing_cell(deployment)?.read().await?.0)
    }

    async fn set_routing(&self, deployment: &str, intent: TrafficIntent) -> Result<RoutingRecord> {
        check_intent(&intent)?;
        self.routing_cell(deployment)?
            .update(|current: Option<RoutingRecord>| {
                let next = RoutingRecord {
                    revision: current.map_or(1, |c| c.revision + 1),
                    intent: intent.clone(),
                    at: Utc::now(),
                };
                Ok((next.clone(), next))
            })
            .await
    }

    async fn publish(&self, deployment: &str, report: &ReplicaReport) -> Result<()> {
        validate_name(ResourceKind::Model, deployment)?;
        validate_name(ResourceKind::Object, &report.replica)?;
        let bytes = serde_json::to_vec(report)
            .map_err(|e| Error::invalid_input("replica report", e.to_string()))?;
        self.root
            .put(
                &format!("fleet/{deployment}/replicas/{}/report.json", report.replica),
                Bytes::from(bytes),
            )
            .await
    }

    async fn reports(&self, deployment: &str) -> Result<Vec<ReplicaReport>> {
        validate_name(ResourceKind::Model, deployment)?;
        let dir = format!("fleet/{deployment}/replicas");
        let mut out = Vec::new();
        for replica in self.root.list_children(&dir).await? {
            let path = format!("{dir}/{replica}/report.json");
            // A replica that is writing its first report is simply not there yet.
            let Some(bytes) = self.root.get_opt(&path).await? else {
                continue;
            };
            out.push(serde_json::from_slice(&bytes).map_err(|e| {
                Error::integrity(path.clone(), format!("not a replica report: {e}"))
            })?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mlops_core::monitoring::ModelHealth;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn intents_count_every_change_and_reports_are_per_replica() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("file://{}", dir.path().display());
        for url in ["memory://", file.as_str()] {
            let fleet = ObjectFleet::new(&StoreRoot::open(url).unwrap());
            assert_eq!(fleet.routing("d").await.unwrap(), None);
            // Concurrent steerers: every change lands, each its own revision.
            let tasks: Vec<_> = (1..=6u64)
                .map(|v| {
                    let f = fleet.clone();
                    tokio::spawn(async move {
                        f.set_routing("d", TrafficIntent::All { version: v })
                            .await
                            .unwrap()
                            .revision
                    })
                })
                .collect();
            let mut revisions = Vec::new();
            for t in tasks {
                revisions.push(t.await.unwrap());
            }
            revisions.sort_unstable();
            assert_eq!(revisions, (1..=6).collect::<Vec<_>>(), "{url}");
            let bad = TrafficIntent::Canary {
                stable: 1,
                canary: 2,
                weight: 2.0,
            };
            assert!(fleet.set_routing("d", bad).await.is_err());
            assert_eq!(fleet.routing("d").await.unwrap().unwrap().revision, 6);
            for (replica, revision) in [("pod-a", 1), ("pod-b", 2), ("pod-a", 3)] {
                let report = ReplicaReport {
                    replica: replica.into(),
                    model: "m".into(),
                    at: Utc::now(),
                    applied_revision: revision,
                    health: ModelHealth::default(),
                };
                fleet.publish("d", &report).await.unwrap();
            }
            let mut reports = fleet.reports("d").await.unwrap();
            reports.sort_by(|a, b| a.replica.cmp(&b.replica));
            let seen: Vec<(String, u64)> = reports
                .into_iter()
                .map(|r| (r.replica, r.applied_revision))
                .collect();
            assert_eq!(seen, [("pod-a".into(), 3), ("pod-b".into(), 2)], "{url}");
            let bad_name = ReplicaReport {
                replica: "../x".into(),
                model: "m".into(),
                at: Utc::now(),
                applied_revision: 0,
                health: ModelHealth::default(),
            };
            assert!(fleet.publish("d", &bad_name).await.is_err());
            assert!(fleet.reports("../d").await.is_err());
        }
    }
}
