//! The service's config file, `mlops.toml`: storage, the HTTP face and its keys,
//! and the deployments.
//!
//! ```toml
//! [storage]
//! root = "file:///var/lib/mlops"        # any StoreRoot URL: file, memory, s3, gs, az
//! options = { aws_region = "${AWS_REGION}" }
//!
//! [http]
//! bind = "0.0.0.0:8000"
//! max_body_bytes = 67108864
//! # max_body_budget_bytes = 335544320   # bodies read or decoded at once (default 5 x max_body_bytes)
//! request_timeout = "30s"
//! # tls = { cert_file = "/run/secrets/tls.crt", key_file = "/run/secrets/tls.key" }   # HTTPS only
//!
//! [[http.keys]]
//! name = "app"
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! scopes = ["infer", "feedback"]   # or "metrics", "admin" (implies all)
//!
//! [[http.keys]]
//! name = "ops"
//! key_file = "/run/secrets/ops-key"     # or key = "${OPS_KEY}"
//! scopes = ["admin"]
//!
//! [registry]
//! require_signatures = true             # refuse unsigned versions (needs a trusted key)
//! signing_key = { id = "release", key_file = "/run/secrets/release.key" }   # register --sign
//!
//! [[registry.trusted_keys]]             # versions signed by these load, no others
//! id = "release"
//! public_key_file = "/etc/mlops/keys/release.pub"
//!
//! [online]                             # optional: where feature values live
//! url = "${REDIS_URL}"                 # redis://host:port/db; default memory://
//! namespace = "mlops"
//!
//! [grpc]                               # optional: the gRPC face (cargo feature grpc)
//! bind = "0.0.0.0:8001"                # same keys, timeout; max_message_bytes = body limit
//! tls = { cert_file = "/run/secrets/tls.crt", key_file = "/run/secrets/tls.key" }   # optional
//!
//! [access]                             # optional: who may register, promote, archive
//! policy_file = "/etc/mlops/policy.toml"   # roles and principals (mlops_core::access)
//! principal = "${MLOPS_PRINCIPAL}"     # who the commands act as (default mlops-cli)
//!
//! [fleet]                              # optional: on by default
//! replica = "${HOSTNAME}"              # this replica's name (default: HOSTNAME)
//! interval = "5s"                      # apply routing intents, write its report
//!
//! [inference_log]                      # optional: every request as Parquet
//! flush_rows = 10000                   # under the root's inference-log/
//! flush_interval = "5s"
//!
//! [[deployments]]
//! name = "fraud"
//! model = "fraud"
//! routing = { fixed = "@champion" }    # or { split = [...] }, { canary = {...} }
//! shadows = ["@challenger"]
//! reload_interval = "10s"
//! batching = { max_batch_size = 64, max_queue_delay = "500us" }
//! # unbatched: calls at once (default: CPUs) and requests waiting (1024)
//! # max_running_calls = 4
//! # max_queued_calls = 1024
//! # inline_max_rows = 16   # unbatched requests of up to 16 rows call the model on the
//! #                        # async worker, not the blocking pool (a 5-30 us handoff);
//! #                        # 0: always the pool; unset (the default): calls the version
//! #                        # answers in under 20 us (measured, up to 64 rows) run in place
//! cache = { max_entries = 100000, ttl = "60s" }
//! monitoring = { window_rows = 1000, min_rows = 100 }   # drift of inputs and predictions
//! feedback = { task = "binary_classification", window = 1000 }   # live quality
//! ```
//!
//! Unknown keys are errors. Secrets never sit in the file: a string may be
//! `${ENV_VAR}` (the whole value), a key may be given as `key_file`, and keys in
//! the file itself are SHA-256 digests (`sha256`). Every error names the key, and
//! parse errors the line and what was expected.
//!
//! `[registry]` is model provenance. A key file is one line: a public key
//! `mlops-ed25519-public:` then 64 hex characters (the 32-byte ed25519 public
//! key), a private one `mlops-ed25519-secret:` then 64 hex characters (its
//! seed); `mlops models keygen --out DIR --id ID` writes `ID.key` (mode 0600)
//! and `ID.pub`. Once any key is trusted, only versions signed by a trusted key
//! load (an unsigned, differently signed or altered version is refused: a
//! running deployment logs why and keeps serving the versions it has, one
//! starting up waits, not ready); `require_signatures = true` states it and is
//! an error without a trusted key. Paths take `${ENV_VAR}`; the private key is
//! never written in the config, and only `mlops models register --sign` reads
//! it (`mlops check` and `mlops serve` never do, so servers need not hold it).
//! Changes to `[registry]` take effect on restart.
//!
//! A deployment whose model, alias or version is missing or refused at start
//! does not stop the service: it comes up with that deployment not ready (the
//! reason in its log line and in `GET /admin/models/{name}`), retried at its
//! `reload_interval` (every 5 s without one) until it serves. Exit code 2 is for
//! errors in the file itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use mlops::core::feature::{FeatureRef, OnlineFeatureStore};
use mlops::core::model::VersionSelector;
use mlops::core::{Error, Result};
use mlops::serve::{
    ApiKeys, Arm, BatchConfig, CacheConfig, DeploymentConfig, Enrichment, FeedbackConfig,
    HttpConfig, MonitorConfig, Routing, Scope,
};
use mlops::store::{InMemoryOnlineStore, ObjectFeatureStore, RegistryOptions, StoreRoot};
use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) storage: Storage,
    #[serde(default)]
    pub(crate) http: Http,
    #[serde(default)]
    pub(crate) registry: Registry,
    #[serde(default)]
    pub(crate) deployments: Vec<Deployment>,
    /// Every served request written to the storage root as Parquet; off when
    /// absent.
    pub(crate) inference_log: Option<InferenceLogToml>,
    /// Where the latest feature values live (enrichment, `features
    /// materialize`); this process's memory when absent.
    #[serde(default)]
    pub(crate) online: Online,
    /// Retraining loops `mlops retrain` runs (mlops-cli/src/retrain.rs).
    #[serde(default)]
    pub(crate) retrain: Vec<crate::retrain::RetrainToml>,
    /// This server as one replica of a fleet steered through the storage root.
    #[serde(default)]
    pub(crate) fleet: Fleet,
    /// The protocol's gRPC face beside HTTP; off when absent.
    pub(crate) grpc: Option<GrpcToml>,
    /// Who may do what to the registry; everything is allowed when absent.
    pub(crate) access: Option<AccessToml>,
}

/// `[access]`: an access policy (mlops_core::access) for the registry writes
/// of this config's commands and retraining loops.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessToml {
    /// A TOML file (or `.json`) of roles and principals; `${ENV}` paths.
    pub(crate) policy_file: String,
    /// Who the `mlops` commands act as (default `mlops-cli`); the retraining
    /// loops act as `retrain-loop`.
    pub(crate) principal: Option<String>,
}

impl AccessToml {
    /// The policy, read and checked; errors name `access.policy_file`.
    pub(crate) fn policy(&self) -> Result<mlops::core::access::Policy> {
        let path = expand("access.policy_file", &self.policy_file)?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::invalid_input("config access.policy_file", format!("{path}: {e}"))
        })?;
        let format = if path.ends_with(".json") {
            "json"
        } else {
            "toml"
        };
        mlops::core::access::Policy::parse(&text, format, &path)
            .map_err(|e| Error::invalid_input("config access.policy_file", e.to_string()))
    }

    /// The principal the commands act as.
    pub(crate) fn principal(&self) -> Result<String> {
        match &self.principal {
            Some(p) => expand("access.principal", p),
            None => Ok("mlops-cli".to_owned()),
        }
    }
}

/// `[grpc]`: the protocol's gRPC face, with the HTTP face's keys (reloaded
/// together on SIGHUP), request timeout and, unless set, its body limit as
/// the message limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(crate) struct GrpcToml {
    pub(crate) bind: String,
    pub(crate) max_message_bytes: Option<usize>,
    /// TLS: `{ cert_file = "...", key_file = "..." }` (PEM; `${ENV}` paths).
    pub(crate) tls: Option<TlsToml>,
}

/// `config` serving HTTPS with the PEM files of `[http] tls`.
#[cfg(feature = "tls")]
fn with_tls(config: HttpConfig, tls: &TlsToml) -> Result<HttpConfig> {
    let (cert, key) = tls.read("http.tls")?;
    let identity = mlops::serve::HttpTls::from_pem(&cert, &key)
        .map_err(|e| Error::invalid_input("config http.tls", e.to_string()))?;
    Ok(config.with_tls(identity))
}

/// Without the `tls` feature, `[http] tls` is a config error naming it.
#[cfg(not(feature = "tls"))]
fn with_tls(_config: HttpConfig, _tls: &TlsToml) -> Result<HttpConfig> {
    Err(Error::invalid_input(
        "config http.tls",
        "this mlops binary was built without the `tls` feature",
    ))
}

/// PEM files of a certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsToml {
    pub(crate) cert_file: String,
    pub(crate) key_file: String,
}

impl TlsToml {
    /// The two files' bytes; `at` names the setting in errors.
    pub(crate) fn read(&self, at: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |key: &str, file: &str| {
            let path = expand(&format!("{at}.{key}"), file)?;
            std::fs::read(&path).map_err(|e| {
                Error::invalid_input(format!("config {at}.{key}"), format!("{path}: {e}"))
            })
        };
        Ok((
            read("cert_file", &self.cert_file)?,
            read("key_file", &self.key_file)?,
        ))
    }
}

/// `[fleet]`: `mlops serve` applies the routing intents the retraining loop
/// sets on the storage root and reports its routing, drift and live
/// statistics there, so the loop steers and judges every replica at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fleet {
    /// Off: the server neither applies intents nor reports (default on).
    #[serde(default = "default_true")]
    pub(crate) enabled: bool,
    /// This replica's name (default: `${HOSTNAME}`, a pod's name, else
    /// `replica-<pid>`).
    pub(crate) replica: Option<String>,
    /// How often intents are checked and reports written (default 5 s).
    #[serde(default, deserialize_with = "duration")]
    pub(crate) interval: Option<Duration>,
}

fn default_true() -> bool {
    true
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            enabled: true,
            replica: None,
            interval: None,
        }
    }
}

impl Fleet {
    /// The replica name, `${ENV}` expanded, checked as a storage name.
    pub(crate) fn replica_name(&self) -> Result<String> {
        let name = match &self.replica {
            Some(r) => expand("fleet.replica", r)?,
            None => std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("replica-{}", std::process::id())),
        };
        mlops::core::validate_name(mlops::core::ResourceKind::Object, &name)
            .map_err(|e| Error::invalid_input("config fleet.replica", e.to_string()))?;
        Ok(name)
    }

    /// The round interval (default 5 s; at least 100 ms).
    pub(crate) fn every(&self) -> Result<Duration> {
        let every = self.interval.unwrap_or(Duration::from_secs(5));
        if every < Duration::from_millis(100) {
            return Err(Error::invalid_input(
                "config fleet.interval",
                format!("{every:?} is under 100ms: every replica writes a report each round"),
            ));
        }
        Ok(every)
    }
}

/// A deployment's `enrichment = { features = ["view:feature", ...],
/// entity_keys = ["user_id"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrichmentToml {
    /// `view:feature` references; each becomes the model input of the
    /// feature's name.
    pub(crate) features: Vec<String>,
    /// The inputs requests carry instead (the views' join keys).
    pub(crate) entity_keys: Vec<String>,
}

/// A feature store that reads nothing: for checking a config (`mlops check`)
/// without opening storage or the online store.
pub(crate) fn unopened_features() -> Result<Arc<dyn OnlineFeatureStore>> {
    Ok(Arc::new(ObjectFeatureStore::new(
        &StoreRoot::open("memory://")?,
        Arc::new(InMemoryOnlineStore::new()),
    )))
}

/// `[online]`: the online feature store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Online {
    /// `memory://` (the default: this process's memory) or
    /// `redis://host:port[/db]`, usually `${REDIS_URL}`.
    #[serde(default = "default_online_url")]
    pub(crate) url: String,
    /// Prefix of every Redis key (default `mlops`).
    #[serde(default = "default_namespace")]
    pub(crate) namespace: String,
}

impl Default for Online {
    fn default() -> Self {
        Self {
            url: default_online_url(),
            namespace: default_namespace(),
        }
    }
}

fn default_online_url() -> String {
    "memory://".into()
}

fn default_namespace() -> String {
    "mlops".into()
}

/// `[inference_log]`: every served request (id, time, model, version, inputs,
/// outputs, latency) written under the storage root's `inference-log/` as
/// Parquet files, in the background. Each key defaults to the SDK's
/// `LogConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InferenceLogToml {
    /// Records per written file, at most (default 10,000).
    pub(crate) flush_rows: Option<usize>,
    /// Longest time a record waits to be written (default 5 s).
    #[serde(default, deserialize_with = "duration")]
    pub(crate) flush_interval: Option<Duration>,
    /// Records waiting, at most; beyond it they are dropped and counted
    /// (default 100,000).
    pub(crate) max_buffered: Option<usize>,
    /// Bytes the waiting records may hold, at most (default 256 MiB).
    pub(crate) max_buffered_bytes: Option<usize>,
}

/// `[registry]`: which model versions are trusted, and the key
/// `mlops models register --sign` signs with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registry {
    #[serde(default)]
    pub(crate) require_signatures: bool,
    #[serde(default)]
    pub(crate) trusted_keys: Vec<TrustedKey>,
    pub(crate) signing_key: Option<SigningKeyToml>,
}

/// `[[registry.trusted_keys]]`: a public key, by the id signatures name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedKey {
    pub(crate) id: String,
    pub(crate) public_key_file: String,
}

/// `[registry] signing_key = { id, key_file }`: the private key, always in a
/// file of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SigningKeyToml {
    pub(crate) id: String,
    pub(crate) key_file: String,
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Storage {
    /// The `StoreRoot` URL.
    pub(crate) root: String,
    /// Backend options (`aws_endpoint`, `aws_region`, ...).
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
}

/// `[http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Http {
    #[serde(default = "default_bind")]
    pub(crate) bind: String,
    #[serde(default)]
    pub(crate) keys: Vec<Key>,
    #[serde(default)]
    pub(crate) allow_unauthenticated: bool,
    pub(crate) max_body_bytes: Option<usize>,
    /// Bytes of bodies read or decoded at once, server-wide (default 5 x max_body_bytes).
    pub(crate) max_body_budget_bytes: Option<usize>,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) probe_connections: Option<usize>,
    pub(crate) max_header_bytes: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) request_timeout: Option<Duration>,
    /// TLS: `{ cert_file = "...", key_file = "..." }` (PEM; `${ENV}` paths).
    pub(crate) tls: Option<TlsToml>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) body_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) write_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) shutdown_grace: Option<Duration>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            keys: Vec::new(),
            allow_unauthenticated: false,
            max_body_bytes: None,
            max_body_budget_bytes: None,
            max_concurrency: None,
            max_connections: None,
            probe_connections: None,
            max_header_bytes: None,
            request_timeout: None,
            tls: None,
            header_read_timeout: None,
            body_timeout: None,
            write_timeout: None,
            shutdown_grace: None,
        }
    }
}

fn default_bind() -> String {
    "0.0.0.0:8000".into()
}

/// `[[http.keys]]`: exactly one of `sha256`, `key_file`, `key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) sha256: Option<String>,
    pub(crate) key_file: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) scopes: Vec<String>,
}

/// `[[deployments]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deployment {
    pub(crate) name: String,
    pub(crate) model: String,
    pub(crate) routing: RoutingToml,
    #[serde(default)]
    pub(crate) shadows: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) reload_interval: Option<Duration>,
    pub(crate) batching: Option<Batching>,
    pub(crate) cache: Option<Cache>,
    /// Requests of at most this many rows run in place; unset: decided from
    /// the measured call times.
    pub(crate) inline_max_rows: Option<usize>,
    /// Unbatched model calls at once (default: the CPU count).
    pub(crate) max_running_calls: Option<usize>,
    /// Unbatched requests waiting for a call, at most (default 1,024).
    pub(crate) max_queued_calls: Option<usize>,
    pub(crate) monitoring: Option<Monitoring>,
    pub(crate) feedback: Option<Feedback>,
    /// Features looked up in the online store for requests that carry entity
    /// keys instead of the model's inputs.
    pub(crate) enrichment: Option<EnrichmentToml>,
}

/// Drift monitoring of served inputs and predictions against the references the
/// model carries, in tumbling windows of rows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Monitoring {
    pub(crate) window_rows: usize,
    pub(crate) min_rows: Option<usize>,
}

/// Feedback by request id and live quality.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Feedback {
    pub(crate) task: mlops::core::Task,
    pub(crate) window: Option<usize>,
}

/// How a deployment routes: one key of `fixed`, `split`, `canary`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RoutingToml {
    Fixed(String),
    Split(Vec<ArmToml>),
    Canary {
        stable: String,
        canary: String,
        weight: f64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArmToml {
    pub(crate) version: String,
    pub(crate) weight: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batching {
    pub(crate) max_batch_size: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) max_queue_delay: Option<Duration>,
    pub(crate) max_queue: Option<usize>,
    pub(crate) instances: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cache {
    pub(crate) max_entries: u64,
    #[serde(deserialize_with = "required_duration")]
    pub(crate) ttl: Duration,
    pub(crate) max_bytes: Option<u64>,
}

fn parse_duration<E: serde::de::Error>(text: &str) -> std::result::Result<Duration, E> {
    humantime::parse_duration(text).map_err(|e| {
        E::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"500us\", \"30s\", \"5m\""
        ))
    })
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map(Some)
}

fn required_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
}

/// `value`, or the environment variable it names as `${NAME}`; `key` names the
/// setting in the error.
pub(crate) fn expand(key: &str, value: &str) -> Result<String> {
    let Some(name) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return Ok(value.to_owned());
    };
    std::env::var(name).map_err(|_| {
        Error::invalid_input(
            format!("config {key}"),
            format!("environment variable {name} is not set"),
        )
    })
}

fn selector(key: &str, text: &str) -> Result<VersionSelector> {
    text.parse()
        .map_err(|e: Error| Error::invalid_input(format!("config {key}"), format!("{text:?}: {e}")))
}

/// How a public key file starts (then 64 hex characters: the 32-byte ed25519
/// public key), as `mlops models keygen` writes it.
pub(crate) const PUBLIC_KEY_PREFIX: &str = "mlops-ed25519-public:";
/// How a private key file starts (then 64 hex characters: the 32-byte ed25519
/// seed), as `mlops models keygen` writes it.
pub(crate) const SECRET_KEY_PREFIX: &str = "mlops-ed25519-secret:";

/// The 32 bytes of a key file's text: `prefix` then 64 hex characters
/// (surrounding whitespace ignored; the bare 64 hex characters are accepted
/// too). The error says what was expected and what was found, never the
/// text itself (it may be a private key).
fn key_bytes(text: &str, prefix: &str, other: &str) -> std::result::Result<[u8; 32], String> {
    let expected = format!(
        "expected one line, \"{prefix}\" then 64 hex characters (32 bytes), as `mlops models \
         keygen` writes"
    );
    let text = text.trim();
    if text.starts_with(other) {
        return Err(if other == SECRET_KEY_PREFIX {
            "this is a private key: name its public half (the .pub file), and keep the private \
             key out of the config"
                .to_owned()
        } else {
            "this is a public key; the signing key is the private half (the .key file)".to_owned()
        });
    }
    let hex_text = text.strip_prefix(prefix).unwrap_or(text);
    if hex_text.len() != 64 || !hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{expected}; found {} characters{}",
            text.len(),
            if text.contains('\n') {
                " on several lines"
            } else {
                ""
            }
        ));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut bytes).map_err(|e| format!("{expected}: {e}"))?;
    Ok(bytes)
}

/// Whether `id` can name a key (what signatures name their key by): 1 to 64
/// letters, digits, '-', '_' or '.', so it is also a file name.
pub(crate) fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `id`, which must be a key id (named `at` in the error).
fn check_key_id(at: &str, id: &str) -> Result<()> {
    if !is_key_id(id) {
        return Err(Error::invalid_input(
            format!("config {at}.id"),
            format!("{id:?} is not a key id: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// Reads the key file `file` (named `at` in errors) for the key `id`.
fn read_key_file(at: &str, id: &str, file: &str, prefix: &str, other: &str) -> Result<[u8; 32]> {
    let what = || format!("config {at} (key '{id}')");
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::invalid_input(what(), format!("cannot read {file}: {e}")))?;
    key_bytes(&text, prefix, other)
        .map_err(|e| Error::invalid_input(what(), format!("{file}: {e}")))
}

/// The text of a public key file for `key`.
pub(crate) fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}\n", hex::encode(key.as_bytes()))
}

/// The text of a private key file for `key`.
pub(crate) fn secret_key_text(key: &SigningKey) -> String {
    format!("{SECRET_KEY_PREFIX}{}\n", hex::encode(key.as_bytes()))
}

impl Config {
    /// Reads and checks the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_input(format!("config file {}", path.display()), e.to_string())
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `text` (named `source` in errors).
    pub(crate) fn parse(text: &str, source: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::invalid_input(format!("config file {source}"), e.to_string()))
    }

    /// The storage options with `${ENV}` references expanded.
    pub(crate) fn storage_options(&self) -> Result<Vec<(String, String)>> {
        self.storage_options_over(mlops::store::StoreRoot::options_from_env())
    }

    /// `[storage.options]` after `env` (the standard credential chains' variables,
    /// as a pod gets them: `AWS_*` with web identity, `GOOGLE_*`, `AZURE_*`), so
    /// the file's options win where both name a key.
    fn storage_options_over(&self, env: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
        let mut options = env;
        for (k, v) in &self.storage.options {
            options.push((k.clone(), expand(&format!("storage.options.{k}"), v)?));
        }
        Ok(options)
    }

    /// The trusted public keys of `[registry]`, by id, read from their files.
    pub(crate) fn trusted_keys(&self) -> Result<BTreeMap<String, VerifyingKey>> {
        let mut keys = BTreeMap::new();
        for (i, k) in self.registry.trusted_keys.iter().enumerate() {
            let at = format!("registry.trusted_keys[{i}]");
            check_key_id(&at, &k.id)?;
            let file = expand(&format!("{at}.public_key_file"), &k.public_key_file)?;
            let bytes = read_key_file(&at, &k.id, &file, PUBLIC_KEY_PREFIX, SECRET_KEY_PREFIX)?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                Error::invalid_input(
                    format!("config {at} (key '{}')", k.id),
                    format!("{file}: the 32 bytes are not an ed25519 public key"),
                )
            })?;
            if keys.insert(k.id.clone(), key).is_some() {
                return Err(Error::invalid_input(
                    format!("config {at}.id"),
                    format!("key id {:?} is trusted twice", k.id),
                ));
            }
        }
        Ok(keys)
    }

    /// How the registry is opened: the trusted keys and `require_signatures`
    /// (for `serve` and every `mlops models` command), and with `sign`, the
    /// signing key read from its file (only `mlops models register --sign`
    /// reads it: a server never needs the private key). Checks the whole
    /// `[registry]` section but the private key file.
    pub(crate) fn registry_options(&self, sign: bool) -> Result<RegistryOptions> {
        let r = &self.registry;
        let mut options = RegistryOptions::default();
        options.trusted_keys = self.trusted_keys()?;
        options.require_signatures = r.require_signatures;
        if r.require_signatures && options.trusted_keys.is_empty() {
            return Err(Error::invalid_input(
                "config registry.require_signatures",
                "it is true but registry.trusted_keys names no key, so no version could load: \
                 add [[registry.trusted_keys]] with id and public_key_file (`mlops models \
                 keygen` makes a key pair)",
            ));
        }
        if let Some(s) = &r.signing_key {
            let at = "registry.signing_key";
            check_key_id(at, &s.id)?;
            let raw = s.key_file.trim();
            if raw.starts_with(SECRET_KEY_PREFIX)
                || (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(Error::invalid_input(
                    format!("config {at}.key_file"),
                    "a key is never written in the file: give the path of its key file, or \
                     \"${ENV_VAR}\" naming a variable that holds the path",
                ));
            }
        }
        if !sign {
            return Ok(options);
        }
        let s = r.signing_key.as_ref().ok_or_else(|| {
            Error::invalid_input(
                "config registry.signing_key",
                "not set, and --sign needs it: add signing_key = { id = \"...\", key_file = \
                 \"...\" } to [registry] (`mlops models keygen` makes a key pair)",
            )
        })?;
        let at = "registry.signing_key";
        let file = expand(&format!("{at}.key_file"), &s.key_file)?;
        let key = SigningKey::from_bytes(&read_key_file(
            at,
            &s.id,
            &file,
            SECRET_KEY_PREFIX,
            PUBLIC_KEY_PREFIX,
        )?);
        if let Some(trusted) = options.trusted_keys.get(&s.id)
            && *trusted != key.verifying_key()
        {
            return Err(Error::invalid_input(
                format!("config {at} (key '{}')", s.id),
                format!(
                    "{file} is not the private half of the trusted key '{}': what it signs \
                     would be refused",
                    s.id
                ),
            ));
        }
        options.signing_key = Some((s.id.clone(), key));
        Ok(options)
    }

    /// The storage root URL, `${ENV}` expanded.
    pub(crate) fn storage_root(&self) -> Result<String> {
        expand("storage.root", &self.storage.root)
    }

    /// The HTTP face's config.
    pub(crate) fn http_config(&self) -> Result<HttpConfig> {
        let h = &self.http;
        let mut keys = ApiKeys::new();
        for (i, k) in h.keys.iter().enumerate() {
            let at = format!("http.keys[{i}]");
            let scopes = k
                .scopes
                .iter()
                .map(|s| {
                    s.parse::<Scope>().map_err(|e: Error| {
                        Error::invalid_input(format!("config {at}.scopes"), e.to_string())
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            keys = match (&k.sha256, &k.key_file, &k.key) {
                (Some(digest), None, None) => keys
                    .with_hashed_key(&k.name, &expand(&format!("{at}.sha256"), digest)?, &scopes)
                    .map_err(|e| {
                        Error::invalid_input(format!("config {at}.sha256"), e.to_string())
                    })?,
                (None, Some(file), None) => {
                    let file = expand(&format!("{at}.key_file"), file)?;
                    let key = std::fs::read_to_string(&file).map_err(|e| {
                        Error::invalid_input(
                            format!("config {at}.key_file"),
                            format!("{file}: {e}"),
                        )
                    })?;
                    keys.with_key(&k.name, key.trim(), &scopes)
                }
                (None, None, Some(key)) => {
                    if !key.starts_with("${") {
                        return Err(Error::invalid_input(
                            format!("config {at}.key"),
                            "a key is never written in the file: use \"${ENV_VAR}\", key_file, \
                             or its sha256 digest",
                        ));
                    }
                    keys.with_key(&k.name, &expand(&format!("{at}.key"), key)?, &scopes)
                }
                _ => {
                    return Err(Error::invalid_input(
                        format!("config {at}"),
                        "give exactly one of sha256, key_file and key",
                    ));
                }
            };
        }
        let mut c = HttpConfig::default().with_keys(keys);
        if let Some(tls) = &h.tls {
            c = with_tls(c, tls)?;
        }
        if h.allow_unauthenticated {
            c = c.allow_unauthenticated();
        }
        if let Some(v) = h.max_body_bytes {
            c = c.with_max_body_bytes(v);
        }
        if let Some(v) = h.max_body_budget_bytes {
            c = c.with_max_body_budget_bytes(v);
        }
        if let Some(v) = h.max_concurrency {
            c = c.with_max_concurrency(v);
        }
        if let Some(v) = h.max_connections {
            c = c.with_max_connections(v);
        }
        if let Some(v) = h.probe_connections {
            c = c.with_probe_connections(v);
        }
        if let Some(v) = h.max_header_bytes {
            c = c.with_max_header_bytes(v);
        }
        if let Some(v) = h.request_timeout {
            c = c.with_request_timeout(v);
        }
        if let Some(v) = h.header_read_timeout {
            c = c.with_header_read_timeout(v);
        }
        if let Some(v) = h.body_timeout {
            c = c.with_body_timeout(v);
        }
        if let Some(v) = h.write_timeout {
            c = c.with_write_timeout(v);
        }
        if let Some(v) = h.shutdown_grace {
            c = c.with_shutdown_grace(v);
        }
        c.validate()
            .map_err(|e| Error::invalid_input("config [http]", e.to_string()))?;
        Ok(c)
    }

    /// The deployments, checked.
    /// The online store `[online]` names, opened (a Redis URL is connected to),
    /// and whether it lives in this process's memory (then nothing written to
    /// it outlives the process).
    pub(crate) async fn online_store(
        &self,
    ) -> Result<(std::sync::Arc<dyn mlops::store::OnlineStore>, bool)> {
        let url = expand("online.url", &self.online.url)?;
        let store = mlops::store::open_online_store(&url, &self.online.namespace)
            .await
            .map_err(|e| match e {
                Error::InvalidInput { reason, .. } => {
                    Error::invalid_input("config online.url", reason)
                }
                other => other,
            })?;
        Ok((store, url.starts_with("memory://")))
    }

    /// The inference log's settings, checked; `None` when `[inference_log]` is
    /// absent.
    pub(crate) fn inference_log(&self) -> Result<Option<mlops::serve::LogConfig>> {
        let Some(t) = &self.inference_log else {
            return Ok(None);
        };
        let mut c = mlops::serve::LogConfig::default();
        if let Some(v) = t.flush_rows {
            c = c.with_flush_rows(v);
        }
        if let Some(v) = t.flush_interval {
            c = c.with_flush_interval(v);
        }
        if let Some(v) = t.max_buffered {
            c = c.with_max_buffered(v);
        }
        if let Some(v) = t.max_buffered_bytes {
            c = c.with_max_buffered_bytes(v);
        }
        c.validate().map_err(|e| match e {
            Error::InvalidInput { what, reason } => Error::invalid_input(
                format!(
                    "config {}",
                    what.replace("inference log ", "inference_log.")
                ),
                reason,
            ),
            other => other,
        })?;
        Ok(Some(c))
    }

    /// The deployments, checked; enrichment reads `features`.
    pub(crate) fn deployment_configs(
        &self,
        features: &Arc<dyn OnlineFeatureStore>,
    ) -> Result<Vec<DeploymentConfig>> {
        let mut names = std::collections::BTreeSet::new();
        self.deployments
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let at = format!("deployments[{i}]");
                if !names.insert(d.name.as_str()) {
                    return Err(Error::invalid_input(
                        format!("config {at}.name"),
                        format!("deployment {:?} is configured twice", d.name),
                    ));
                }
                let routing = match &d.routing {
                    RoutingToml::Fixed(s) => {
                        Routing::Fixed(selector(&format!("{at}.routing.fixed"), s)?)
                    }
                    RoutingToml::Split(arms) => Routing::Split(
                        arms.iter()
                            .enumerate()
                            .map(|(j, a)| {
                                Ok(Arm::new(
                                    selector(
                                        &format!("{at}.routing.split[{j}].version"),
                                        &a.version,
                                    )?,
                                    a.weight,
                                ))
                            })
                            .collect::<Result<_>>()?,
                    ),
                    RoutingToml::Canary {
                        stable,
                        canary,
                        weight,
                    } => Routing::Canary {
                        stable: selector(&format!("{at}.routing.canary.stable"), stable)?,
                        canary: selector(&format!("{at}.routing.canary.canary"), canary)?,
                        weight: *weight,
                    },
                };
                let mut c = DeploymentConfig::new(&d.name, &d.model, routing);
                c.shadows = d
                    .shadows
                    .iter()
                    .enumerate()
                    .map(|(j, s)| selector(&format!("{at}.shadows[{j}]"), s))
                    .collect::<Result<_>>()?;
                c.reload_interval = d.reload_interval;
                c.inline_max_rows = d.inline_max_rows;
                if let Some(e) = &d.enrichment {
                    c.enrichment = Some(Enrichment {
                        store: features.clone(),
                        features: e
                            .features
                            .iter()
                            .enumerate()
                            .map(|(j, f)| {
                                f.parse::<FeatureRef>().map_err(|err| {
                                    Error::invalid_input(
                                        format!("config {at}.enrichment.features[{j}]"),
                                        format!("{f:?}: {err}"),
                                    )
                                })
                            })
                            .collect::<Result<_>>()?,
                        entity_keys: e.entity_keys.clone(),
                    });
                }
                if let Some(n) = d.max_running_calls {
                    c.max_running_calls = n;
                }
                if let Some(n) = d.max_queued_calls {
                    c.max_queued_calls = n;
                }
                if let Some(b) = &d.batching {
                    let mut batching = BatchConfig::default();
                    if let Some(v) = b.max_batch_size {
                        batching = batching.with_max_batch_size(v);
                    }
                    if let Some(v) = b.max_queue_delay {
                        batching = batching.with_max_queue_delay(v);
                    }
                    if let Some(v) = b.max_queue {
                        batching = batching.with_max_queue(v);
                    }
                    if let Some(v) = b.instances {
                        batching = batching.with_instances(v);
                    }
                    c.batching = Some(batching);
                }
                if let Some(m) = &d.monitoring {
                    let mut mc = MonitorConfig::default()
                        .with_window(mlops::core::drift::Window::TumblingRows(m.window_rows));
                    if let Some(v) = m.min_rows {
                        mc = mc.with_min_rows(v);
                    }
                    c.monitoring = Some(mc);
                }
                if let Some(f) = &d.feedback {
                    let mut fc = FeedbackConfig::new(f.task);
                    if let Some(v) = f.window {
                        fc = fc.with_window(v);
                    }
                    c.feedback = Some(fc);
                }
                if let Some(cache) = &d.cache {
                    let mut cc = CacheConfig::new(cache.max_entries, cache.ttl);
                    if let Some(v) = cache.max_bytes {
                        cc = cc.with_max_bytes(v);
                    }
                    c.cache = Some(cc);
                }
                c.validate()
                    .map_err(|e| Error::invalid_input(format!("config {at}"), e.to_string()))?;
                Ok(c)
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[storage]
root = "memory://"

[http]
bind = "127.0.0.1:0"
request_timeout = "5s"

[[http.keys]]
name = "app"
sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
scopes = ["infer"]

[[deployments]]
name = "fraud"
model = "fraud"
routing = { fixed = "@champion" }
shadows = ["@challenger"]
reload_interval = "10s"
batching = { max_batch_size = 32, max_queue_delay = "500us" }
cache = { max_entries = 1000, ttl = "60s" }

[[deployments]]
name = "ab"
model = "fraud"
routing = { split = [{ version = "1", weight = 0.9 }, { version = "2", weight = 0.1 }] }

[[deployments]]
name = "canary"
model = "fraud"
routing = { canary = { stable = "1", canary = "2", weight = 0.05 } }
"#;

    #[test]
    fn a_full_config_maps_onto_the_sdk() {
        let c = Config::parse(GOOD, "test").unwrap();
        let http = c.http_config().unwrap();
        assert_eq!(http.request_timeout, Duration::from_secs(5));
        assert!(
            http.keys
                .authorize(Some("Bearer password"), Scope::Infer)
                .is_ok()
        );
        let d = c.deployment_configs(&unopened_features().unwrap()).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].batching.unwrap().max_batch_size, 32);
        assert_eq!(d[0].reload_interval, Some(Duration::from_secs(10)));
        assert!(matches!(d[1].routing, Routing::Split(ref arms) if arms.len() == 2));
        assert!(matches!(d[2].routing, Routing::Canary { weight, .. } if weight == 0.05));
    }

    #[test]
    fn storage_options_take_the_environment_then_the_file() {
        let text = GOOD.replace(
            "root = \"memory://\"",
            "root = \"memory://\"\noptions = { aws_region = \"eu-west-1\" }",
        );
        let c = Config::parse(&text, "test").unwrap();
        let env = vec![
            (
                "aws_web_identity_token_file".into(),
                "/var/run/token".into(),
            ),
            ("aws_role_arn".into(), "arn:aws:iam::1:role/mlops".into()),
            ("aws_region".into(), "us-east-1".into()),
        ];
        let options = c.storage_options_over(env).unwrap();
        // The pod's web identity arrives; the file's region wins over the env's
        // (the last value of a key is the one a backend keeps).
        assert!(options.contains(&("aws_role_arn".into(), "arn:aws:iam::1:role/mlops".into())));
        let region: Vec<&str> = options
            .iter()
            .filter(|(k, _)| k == "aws_region")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(region.last(), Some(&"eu-west-1"));
    }

    #[test]
    fn errors_name_the_key_the_line_and_what_was_expected() {
        for (text, needles) in [
            (
                GOOD.replace("request_timeout = \"5s\"", "request_timeout = \"soon\""),
                vec!["line 7", "request_timeout", "not a duration"],
            ),
            (
                GOOD.replace("bind = ", "bnd = "),
                vec!["line 6", "unknown field `bnd`"],
            ),
            (
                GOOD.replace("max_entries = 1000", "max_entries = \"many\""),
                vec!["line 21", "max_entries", "expected u64"],
            ),
            (
                GOOD.replace("{ fixed = \"@champion\" }", "{ sticky = \"@champion\" }"),
                vec!["line 17", "sticky", "fixed"],
            ),
        ] {
            let err = Config::parse(&text, "mlops.toml").unwrap_err().to_string();
            for n in needles {
                assert!(err.contains(n), "{n:?} not in {err}");
            }
        }
    }

    /// `GOOD` with a `[registry]` trusting `dir/release.pub`, signing with
    /// `dir/release.key` (written from a fixed seed), and requiring signatures.
    fn with_registry(dir: &Path) -> (String, SigningKey) {
        let key = SigningKey::from_bytes(&[7; 32]);
        std::fs::write(dir.join("release.key"), secret_key_text(&key)).unwrap();
        std::fs::write(
            dir.join("release.pub"),
            public_key_text(&key.verifying_key()),
        )
        .unwrap();
        let text = format!(
            "{GOOD}\n[registry]\nrequire_signatures = true\n\
             signing_key = {{ id = \"release\", key_file = \"{}\" }}\n\
             [[registry.trusted_keys]]\nid = \"release\"\npublic_key_file = \"{}\"\n",
            dir.join("release.key").display(),
            dir.join("release.pub").display()
        );
        (text, key)
    }

    #[test]
    fn registry_keys_are_read_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let (text, key) = with_registry(dir.path());
        let c = Config::parse(&text, "test").unwrap();
        let o = c.registry_options(false).unwrap();
        assert!(o.require_signatures);
        assert_eq!(o.trusted_keys.get("release"), Some(&key.verifying_key()));
        assert!(
            o.signing_key.is_none(),
            "the private key read without --sign"
        );
        let o = c.registry_options(true).unwrap();
        let (id, signing) = o.signing_key.unwrap();
        assert_eq!(
            (id.as_str(), signing.to_bytes()),
            ("release", key.to_bytes())
        );
        // The bare 64 hex characters are a key too; no [registry] trusts nothing.
        std::fs::write(
            dir.path().join("release.pub"),
            hex::encode(key.verifying_key().as_bytes()),
        )
        .unwrap();
        assert_eq!(c.trusted_keys().unwrap().len(), 1);
        let plain = Config::parse(GOOD, "test").unwrap().registry_options(true);
        assert!(
            plain
                .unwrap_err()
                .to_string()
                .contains("registry.signing_key")
        );
        let o = Config::parse(GOOD, "test")
            .unwrap()
            .registry_options(false)
            .unwrap();
        assert!(o.trusted_keys.is_empty() && !o.require_signatures);
    }

    #[test]
    fn key_files_are_checked_naming_what_was_expected() {
        let prefix = PUBLIC_KEY_PREFIX;
        let good = "ab".repeat(32);
        assert!(key_bytes(&format!("{prefix}{good}\n"), prefix, SECRET_KEY_PREFIX).is_ok());
        for (text, needle) in [
            (String::new(), "found 0 characters"),
            (format!("{prefix}{}", &good[..62]), "64 hex characters"),
            (format!("{prefix}{good}00"), "64 hex characters"),
            (format!("{prefix}{}zz", &good[..62]), "64 hex characters"),
            (format!("{SECRET_KEY_PREFIX}{good}"), "private key"),
            (format!("{prefix}{good}\n{prefix}{good}"), "several lines"),
        ] {
            let err = key_bytes(&text, prefix, SECRET_KEY_PREFIX).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {needle:?} not in {err}");
            assert!(!err.contains(&good), "the error repeats the key: {err}");
        }
        let err = key_bytes(&format!("{prefix}{good}"), SECRET_KEY_PREFIX, prefix).unwrap_err();
        assert!(err.contains("public key"), "{err}");
        for id in ["", "a b", "../x", &"k".repeat(65)] {
            assert!(!is_key_id(id), "{id:?}");
        }
        assert!(is_key_id("release-2026.1_a"));
    }

    #[test]
    fn semantic_errors_name_the_setting() {
        let cases = [
            (
                GOOD.replace("\"infer\"]", "\"nope\"]"),
                "http.keys[0].scopes",
            ),
            (
                GOOD.replace("sha256 = \"5e8", "key = \"hunter2\"\n#"),
                "http.keys[0].key",
            ),
            (
                GOOD.replace("sha256 = \"5e8", "key = \"${MLOPS_TEST_UNSET_VAR}\"\n#"),
                "MLOPS_TEST_UNSET_VAR is not set",
            ),
            (
                GOOD.replace("weight = 0.05", "weight = 1.5"),
                "deployments[2]",
            ),
            (
                GOOD.replace("\"@challenger\"", "\"@\""),
                "deployments[0].shadows[0]",
            ),
            (
                GOOD.replace("name = \"ab\"", "name = \"fraud\""),
                "configured twice",
            ),
        ];
        for (text, needle) in cases {
            let c = Config::parse(&text, "test").unwrap();
            let err = c
                .http_config()
                .and_then(|_| c.deployment_configs(&unopened_features()?).map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
