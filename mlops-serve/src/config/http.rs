//! The HTTP face's limits and keys: [`HttpConfig`].

use std::time::Duration;

use crate::auth::ApiKeys;

/// Limits and keys of the HTTP face.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body, in bytes (413 beyond). Default 64 MiB.
    pub max_body_bytes: usize,
    /// Longest time an inference may take (504 beyond). Default 30 s.
    pub request_timeout: Duration,
    /// Inference requests handled at once; more are refused with 503. Default 1024.
    pub max_concurrency: usize,
    /// Accepted keys; empty: no authentication.
    pub keys: ApiKeys,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrency: 1024,
            keys: ApiKeys::new(),
        }
    }
}
