//! The HTTP face's limits and keys: [`HttpConfig`].

use std::time::Duration;

use crate::auth::ApiKeys;

/// Limits and keys of the HTTP face: [`HttpConfig::default`], then the `with_*`
/// setters (`#[non_exhaustive]`: new limits may be added in minor releases).
#[derive(Debug, Clone)]
#[non_exhaustive]
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

impl HttpConfig {
    /// Accepts these keys.
    pub fn with_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Refuses bodies above `bytes` with 413.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Answers 504 to an inference that takes longer than `timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Handles at most `requests` inference requests at once (503 beyond).
    pub fn with_max_concurrency(mut self, requests: usize) -> Self {
        self.max_concurrency = requests;
        self
    }
}
