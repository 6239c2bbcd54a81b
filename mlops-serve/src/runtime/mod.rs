//! The runtime pieces a deployment is built from, one per file, each knowing only
//! the configuration below it: dynamic batching, the prediction cache, drift
//! monitoring, feedback and live quality, the inference log, shadow records and
//! the Prometheus metrics they all count in. Nothing here knows the server that
//! assembles them or the HTTP face above it.
//!
//! Everything that watches traffic happens off the request path: a request hands
//! its tensors to a bounded queue (dropping, and counting, when the queue is full)
//! and background tasks do the rest.

pub(crate) mod batch;
pub(crate) mod cache;
pub(crate) mod feedback;
pub(crate) mod inference_log;
pub(crate) mod inline;
pub(crate) mod metrics;
pub(crate) mod monitor;
pub(crate) mod shadow;
