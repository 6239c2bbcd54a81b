//! Configuration, at the bottom of the crate: plain data that every layer above
//! (runtime, server, HTTP face) reads and none of them defines.
//!
//! - [`routing`](Routing): [`Routing`], [`Arm`], [`CanaryRamp`];
//! - deployment: [`DeploymentConfig`], [`BatchConfig`], [`CacheConfig`],
//!   [`Enrichment`];
//! - monitoring: [`MonitorConfig`], [`FeedbackConfig`], [`LogConfig`];
//! - HTTP: [`HttpConfig`].

mod deployment;
mod http;
mod monitoring;
mod routing;

pub use deployment::{BatchConfig, CacheConfig, DeploymentConfig, Enrichment};
pub use http::HttpConfig;
#[cfg(feature = "tls")]
pub use http::HttpTls;
pub(crate) use http::MIN_HEADER_BYTES;
pub use monitoring::{FeedbackConfig, LogConfig, MonitorConfig};
pub(crate) use routing::check_canary_weight;
pub use routing::{Arm, CanaryRamp, Routing};
