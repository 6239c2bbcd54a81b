//! The HTTP face's limits and keys: [`HttpConfig`].

use std::sync::Arc;
use std::time::Duration;

use mlops_core::audit::AuditLog;
use mlops_core::{Error, Result};

use crate::auth::{ApiKeys, KeyRing};

/// Limits and keys of the HTTP face: [`HttpConfig::default`], then the `with_*`
/// setters (`#[non_exhaustive]`: new limits may be added in minor releases).
///
/// A face fails closed: without keys, [`router`](crate::http::router) and
/// [`v2_router`](crate::http::v2_router) refuse to build unless
/// [`allow_unauthenticated`](Self::allow_unauthenticated) says so, and even then
/// the admin endpoints answer 403.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Largest request body, in bytes (413 beyond). Default 64 MiB.
    pub max_body_bytes: usize,
    /// Bytes of request bodies being read or decoded at once, server-wide (infer,
    /// feedback and admin bodies alike): a body is charged as its bytes arrive,
    /// its decoded inputs as they are decoded, and both are released when the
    /// request ends. Beyond it a request is answered 503 with `Retry-After`, so
    /// memory is bounded by this, not by connections x `max_body_bytes`. `None`
    /// (the default): 5 x `max_body_bytes` (320 MiB with the default limit), room for one
    /// largest body together with its inputs decoded at the most the decoder
    /// allows ([`DECODE_FACTOR`](crate::codec::DECODE_FACTOR) x the body), so
    /// any request within the limits is served when it arrives alone; see
    /// [`body_budget_bytes`](Self::body_budget_bytes). At least `max_body_bytes`.
    pub max_body_budget_bytes: Option<usize>,
    /// Longest time an inference may take (504 beyond). Default 30 s.
    pub request_timeout: Duration,
    /// Inference requests handled at once, counted once their body is in; more
    /// are refused with 503. Default 1024.
    pub max_concurrency: usize,
    /// Accepted keys; empty: refused unless `allow_unauthenticated`.
    pub keys: ApiKeys,
    /// Serve the infer and metrics endpoints without keys. Default off.
    pub allow_unauthenticated: bool,
    /// Time a client has to send a request's line and headers, counted from when
    /// the connection is ready for the next request: it is also how long an idle
    /// keep-alive connection stays open. Default 10 s.
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole body (408 beyond). Default 30 s.
    pub body_timeout: Duration,
    /// Time a write of the answer may make no progress (a client that stopped
    /// reading) before the connection is closed. Default 30 s.
    pub write_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed. Default 4096.
    pub max_connections: usize,
    /// Connections kept beyond `max_connections` for health probes: when every
    /// other slot is taken (clients holding idle keep-alives, say), a new
    /// connection still gets `GET /v2/health/live` and `/v2/health/ready`
    /// answered, so the orchestrator does not restart a busy pod; any other
    /// request on it gets the over-capacity 503. One request per connection.
    /// Default 8; 0 turns the reserve off.
    pub probe_connections: usize,
    /// After shutdown starts, how long requests in flight may take to finish
    /// before their connections are closed. Default 10 s.
    pub shutdown_grace: Duration,
    /// Bytes of a request's line and headers a connection buffers before any
    /// key is checked (431 beyond); at least 8 KiB. Default 64 KiB. The limit is
    /// checked between reads of at most this size, so a connection holds at most
    /// twice it: `max_connections` unauthenticated connections, 2 x this each.
    pub max_header_bytes: usize,
    /// When set, the face checks keys against this ring (replaceable while it
    /// serves) instead of a fixed copy of `keys`; see [`with_key_ring`](Self::with_key_ring).
    pub key_ring: Option<KeyRing>,
    /// Where every admin action (reload, load/unload, routing, canary weight)
    /// is recorded with the name of the key that asked; also logged. None: only
    /// logged.
    pub audit: Option<Arc<dyn AuditLog>>,
    /// TLS: the face speaks HTTPS only (cargo feature `tls`).
    #[cfg(feature = "tls")]
    pub tls: Option<HttpTls>,
}

/// The HTTP face's TLS identity (rustls, ring provider, TLS 1.2 and 1.3,
/// HTTP/1.1 by ALPN): made from PEM by [`HttpTls::from_pem`].
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct HttpTls(pub(crate) tokio_rustls::TlsAcceptor);

#[cfg(feature = "tls")]
impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTls(..)")
    }
}

#[cfg(feature = "tls")]
impl HttpTls {
    /// From a PEM certificate chain (leaf first) and its PEM private key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming which of the two does not parse, or
    /// when they do not go together.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::invalid_input(format!("HTTP TLS {what}"), e.to_string())
        };
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        if certs.is_empty() {
            return Err(Error::invalid_input(
                "HTTP TLS certificate",
                "no certificate in the PEM",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("settings", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate and key", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// The default body budget, in largest bodies: one body and its decoded inputs
/// at the most decoding may take (1 + [`DECODE_FACTOR`](crate::codec::DECODE_FACTOR)).
pub(crate) const DEFAULT_BUDGET_BODIES: usize = 1 + crate::codec::DECODE_FACTOR;

/// The smallest header buffer hyper accepts.
pub(crate) const MIN_HEADER_BYTES: usize = 8 << 10;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 << 20,
            max_body_budget_bytes: None,
            request_timeout: Duration::from_secs(30),
            max_concurrency: 1024,
            keys: ApiKeys::new(),
            allow_unauthenticated: false,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            probe_connections: 8,
            shutdown_grace: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            key_ring: None,
            audit: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl HttpConfig {
    /// Serves HTTPS only, with `tls` (cargo feature `tls`).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: HttpTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Accepts these keys.
    pub fn with_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Serves the infer and metrics endpoints without keys when none are
    /// configured (the admin endpoints stay closed). The face logs a warning
    /// when it is built this way.
    pub fn allow_unauthenticated(mut self) -> Self {
        self.allow_unauthenticated = true;
        self
    }

    /// Refuses bodies above `bytes` with 413.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Holds the bodies being read or decoded at once to `bytes` in all (503
    /// with `Retry-After` beyond); at least `max_body_bytes`.
    pub fn with_max_body_budget_bytes(mut self, bytes: usize) -> Self {
        self.max_body_budget_bytes = Some(bytes);
        self
    }

    /// The server-wide byte budget of bodies in effect: the one set, or
    /// 5 x `max_body_bytes` (one body and its decoded inputs at the most).
    pub fn body_budget_bytes(&self) -> usize {
        self.max_body_budget_bytes
            .unwrap_or_else(|| self.max_body_bytes.saturating_mul(DEFAULT_BUDGET_BODIES))
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

    /// Gives clients `timeout` to send a request's headers (and closes keep-alive
    /// connections idle that long).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Gives clients `timeout` to send a whole body.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Closes a connection whose answer makes no progress for `timeout`.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Keeps at most `connections` open at once.
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Keeps `connections` beyond the cap for health probes (0: none).
    pub fn with_probe_connections(mut self, connections: usize) -> Self {
        self.probe_connections = connections;
        self
    }

    /// Lets requests in flight finish for up to `grace` after shutdown starts.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Checks keys against `ring`, whose keys can be replaced while the face
    /// serves ([`KeyRing::replace`]); `keys` becomes what the ring holds now.
    pub fn with_key_ring(mut self, ring: KeyRing) -> Self {
        self.keys = (*ring.current()).clone();
        self.key_ring = Some(ring);
        self
    }

    /// The ring the face checks keys against: the one given, or a new one
    /// holding `keys`.
    pub fn ring(&self) -> KeyRing {
        self.key_ring
            .clone()
            .unwrap_or_else(|| KeyRing::new(self.keys.clone()))
    }

    /// Records every admin action in `log`, with the key's name as the actor.
    pub fn with_audit(mut self, log: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(log);
        self
    }

    /// Buffers at most `bytes` of a request's line and headers (431 beyond).
    pub fn with_max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Checks the limits, and that the face is authenticated unless
    /// `allow_unauthenticated` says otherwise.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes > 0),
            ("max_concurrency", self.max_concurrency > 0),
            ("max_connections", self.max_connections > 0),
            ("request_timeout", !self.request_timeout.is_zero()),
            ("header_read_timeout", !self.header_read_timeout.is_zero()),
            ("body_timeout", !self.body_timeout.is_zero()),
            ("write_timeout", !self.write_timeout.is_zero()),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(Error::invalid_input(
                format!("HTTP config {name}"),
                "must be positive",
            ));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::invalid_input(
                "HTTP config max_header_bytes",
                format!(
                    "{} is below the least a connection can work with ({MIN_HEADER_BYTES} bytes)",
                    self.max_header_bytes
                ),
            ));
        }
        if let Some(budget) = self.max_body_budget_bytes
            && budget < self.max_body_bytes.max(1)
        {
            return Err(Error::invalid_input(
                "HTTP config max_body_budget_bytes",
                format!(
                    "{budget} is below max_body_bytes ({}): the largest body allowed could \
                     never be read",
                    self.max_body_bytes
                ),
            ));
        }
        if self.ring().current().is_empty() && !self.allow_unauthenticated {
            return Err(Error::invalid_input(
                "HTTP config",
                "no API keys are configured: add keys (with_keys), or serve without \
                 authentication explicitly (allow_unauthenticated)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    fn keyed() -> HttpConfig {
        HttpConfig::default().with_keys(ApiKeys::new().with_key("k", "s3cret", &[Scope::Infer]))
    }

    #[test]
    fn a_header_budget_below_the_minimum_is_refused_by_name() {
        assert!(keyed().validate().is_ok());
        assert!(
            keyed()
                .with_max_header_bytes(MIN_HEADER_BYTES)
                .validate()
                .is_ok()
        );
        let err = keyed()
            .with_max_header_bytes(MIN_HEADER_BYTES - 1)
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("max_header_bytes") && err.contains("8192"),
            "{err}"
        );
    }

    #[test]
    fn a_body_budget_below_the_body_limit_or_zero_is_refused_by_name() {
        let derived = keyed().with_max_body_bytes(1 << 20);
        assert_eq!(derived.body_budget_bytes(), DEFAULT_BUDGET_BODIES << 20);
        assert!(derived.validate().is_ok());
        let set = derived.clone().with_max_body_budget_bytes(1 << 20);
        assert_eq!(set.body_budget_bytes(), 1 << 20);
        assert!(set.validate().is_ok());
        for bad in [0, (1 << 20) - 1] {
            let err = derived
                .clone()
                .with_max_body_budget_bytes(bad)
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("max_body_budget_bytes") && err.contains("max_body_bytes"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_key_ring_counts_as_the_keys() {
        // A ring with keys satisfies "fails closed"; an empty one does not.
        let ring = KeyRing::new(ApiKeys::new().with_key("k", "s3cret", &[Scope::Infer]));
        let config = HttpConfig::default().with_key_ring(ring.clone());
        assert!(config.validate().is_ok());
        assert_eq!(config.ring().names(), ["k"]);
        let empty = HttpConfig::default().with_key_ring(KeyRing::default());
        assert!(empty.validate().is_err());
        assert!(
            ring.replace(ApiKeys::new()).is_err(),
            "an empty key set is refused"
        );
        assert_eq!(ring.names(), ["k"], "and the keys stay");
    }
}
