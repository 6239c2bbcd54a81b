//! [`TrafficControl`] for the retraining loop: health per version, canaries,
//! promotion.

use async_trait::async_trait;
use mlops_core::Result;
use mlops_core::model::VersionSelector;
use mlops_core::monitoring::{ModelHealth, TrafficControl, VersionHealth};

use super::{ModelServer, VersionDrift};
use crate::config::Routing;
use crate::runtime::feedback::FeedbackBook;

#[async_trait]
impl TrafficControl for ModelServer {
    async fn health(&self, deployment: &str) -> Result<ModelHealth> {
        let d = self.deployment(deployment)?;
        let state = d.state();
        let quality = d
            .feedback
            .as_ref()
            .map(FeedbackBook::quality)
            .unwrap_or_default();
        let drift = self.drift_status(deployment)?;
        let share = |n: u64| -> f64 {
            match &state.routing {
                Routing::Fixed(s) => f64::from(u8::from(state.number_of(s) == Some(n))),
                Routing::Split(arms) => {
                    let total: f64 = arms.iter().map(|a| a.weight).sum();
                    arms.iter()
                        .filter(|a| state.number_of(&a.selector) == Some(n))
                        .map(|a| a.weight / total)
                        .sum()
                }
                Routing::Canary {
                    stable,
                    canary,
                    weight,
                } => {
                    let mut s = 0.0;
                    if state.number_of(canary) == Some(n) {
                        s += weight;
                    }
                    if state.number_of(stable) == Some(n) {
                        s += 1.0 - weight;
                    }
                    s
                }
            }
        };
        let (champion, canary) = match &state.routing {
            Routing::Canary { stable, canary, .. } => {
                (state.number_of(stable), state.number_of(canary))
            }
            other => (state.number_of(&other.primary()), None),
        };
        let versions = state
            .versions
            .keys()
            .map(|&n| {
                let VersionDrift {
                    inputs: input_drift,
                    predictions: prediction_drift,
                } = drift.get(&n).cloned().unwrap_or_default();
                (
                    n,
                    VersionHealth {
                        traffic_share: share(n),
                        input_drift,
                        prediction_drift,
                        live: quality.get(&n).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(ModelHealth {
            champion,
            canary,
            versions,
        })
    }

    async fn start_canary(
        &self,
        deployment: &str,
        stable: u64,
        canary: u64,
        weight: f64,
    ) -> Result<()> {
        self.set_routing(
            deployment,
            Routing::Canary {
                stable: VersionSelector::Number(stable),
                canary: VersionSelector::Number(canary),
                weight,
            },
        )
        .await
        .map(|_| ())
    }

    async fn set_canary_weight(&self, deployment: &str, weight: f64) -> Result<()> {
        ModelServer::set_canary_weight(self, deployment, weight).await
    }

    async fn route_all(&self, deployment: &str, version: u64) -> Result<()> {
        self.set_routing(deployment, Routing::Fixed(VersionSelector::Number(version)))
            .await
            .map(|_| ())
    }
}
