//! Which version answers a request: an explicit version, or the deployment's
//! routing at a point drawn at random or from the request's routing key.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use mlops_core::error::ResourceKind;
use mlops_core::inference::{InferenceRequest, ParameterValue};
use mlops_core::model::VersionSelector;
use mlops_core::rng::{INCREMENT, mix, unit_f64};
use mlops_core::{Error, Result};

use super::ModelServer;
use super::state::{LoadedVersion, State};

/// The request parameter that makes routing sticky.
pub const ROUTING_KEY: &str = "routing_key";

/// A stable hash of a routing key to `[0, 1)` (FNV-1a, then mixed), the same in
/// every process and version.
fn key_point(key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    unit_f64(mix(h))
}

impl ModelServer {
    pub(super) fn random_point(&self) -> f64 {
        let x = self.inner.rng.fetch_add(INCREMENT, Ordering::Relaxed);
        unit_f64(mix(x))
    }

    pub(super) fn choose(
        &self,
        name: &str,
        state: &State,
        version: Option<&str>,
        request: &InferenceRequest,
    ) -> Result<Arc<LoadedVersion>> {
        // A deployment waiting for its versions has none to answer with.
        if let Some(reason) = &state.waiting {
            return Err(Error::Unavailable {
                what: format!("model {name}"),
                reason: format!("not ready: {reason}"),
            });
        }
        let not_found =
            |v: &str| Error::not_found(ResourceKind::ModelVersion, format!("{name}/{v}"));
        let number = match version {
            Some(v) => {
                let selector: VersionSelector = v.parse().map_err(|_| not_found(v))?;
                state.number_of(&selector).ok_or_else(|| not_found(v))?
            }
            None => {
                let point = match request.parameters.get(ROUTING_KEY) {
                    Some(ParameterValue::String(k)) => key_point(k),
                    Some(ParameterValue::Int(k)) => key_point(&k.to_string()),
                    Some(other) => {
                        return Err(Error::invalid_input(
                            format!("parameter {ROUTING_KEY}"),
                            format!("{other:?} is not a string or integer"),
                        ));
                    }
                    None => self.random_point(),
                };
                let selector = state.routing.pick(point);
                state
                    .number_of(selector)
                    .ok_or_else(|| not_found(&selector.to_string()))?
            }
        };
        state
            .versions
            .get(&number)
            .cloned()
            .ok_or_else(|| not_found(&number.to_string()))
    }
}
