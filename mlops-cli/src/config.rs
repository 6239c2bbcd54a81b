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
//! request_timeout = "30s"
//!
//! [[http.keys]]
//! name = "app"
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! scopes = ["infer"]
//!
//! [[http.keys]]
//! name = "ops"
//! key_file = "/run/secrets/ops-key"     # or key = "${OPS_KEY}"
//! scopes = ["admin"]
//!
//! [[deployments]]
//! name = "fraud"
//! model = "fraud"
//! routing = { fixed = "@champion" }    # or { split = [...] }, { canary = {...} }
//! shadows = ["@challenger"]
//! reload_interval = "10s"
//! batching = { max_batch_size = 64, max_queue_delay = "500us" }
//! cache = { max_entries = 100000, ttl = "60s" }
//! monitoring = { window_rows = 1000, min_rows = 100 }   # drift of inputs and predictions
//! feedback = { task = "binary_classification", window = 1000 }   # live quality
//! ```
//!
//! Unknown keys are errors. Secrets never sit in the file: a string may be
//! `${ENV_VAR}` (the whole value), a key may be given as `key_file`, and keys in
//! the file itself are SHA-256 digests (`sha256`). Every error names the key, and
//! parse errors the line and what was expected.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mlops::core::model::VersionSelector;
use mlops::core::{Error, Result};
use mlops::serve::{
    ApiKeys, Arm, BatchConfig, CacheConfig, DeploymentConfig, FeedbackConfig, HttpConfig,
    MonitorConfig, Routing, Scope,
};
use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) storage: Storage,
    #[serde(default)]
    pub(crate) http: Http,
    #[serde(default)]
    pub(crate) deployments: Vec<Deployment>,
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
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_header_bytes: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) request_timeout: Option<Duration>,
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
            max_concurrency: None,
            max_connections: None,
            max_header_bytes: None,
            request_timeout: None,
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
    #[serde(default)]
    pub(crate) inline_max_rows: usize,
    pub(crate) monitoring: Option<Monitoring>,
    pub(crate) feedback: Option<Feedback>,
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map(Some)
}

fn required_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
}

/// `value`, or the environment variable it names as `${NAME}`; `key` names the
/// setting in the error.
fn expand(key: &str, value: &str) -> Result<String> {
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
        if h.allow_unauthenticated {
            c = c.allow_unauthenticated();
        }
        if let Some(v) = h.max_body_bytes {
            c = c.with_max_body_bytes(v);
        }
        if let Some(v) = h.max_concurrency {
            c = c.with_max_concurrency(v);
        }
        if let Some(v) = h.max_connections {
            c = c.with_max_connections(v);
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
    pub(crate) fn deployment_configs(&self) -> Result<Vec<DeploymentConfig>> {
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
        let d = c.deployment_configs().unwrap();
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
                .and_then(|_| c.deployment_configs().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
