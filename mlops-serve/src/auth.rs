//! Bearer API keys with scopes. Keys are kept only as SHA-256 digests and compared
//! in constant time; no key, hashed or not, ever appears in an error or a log.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use mlops_core::{Error, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Inference and model metadata.
    Infer,
    /// Feedback on served predictions (outcomes, business metrics): what the
    /// live quality and the retraining loop's canary judgement read, so it is
    /// granted apart from `infer`.
    Feedback,
    /// `GET /metrics`.
    Metrics,
    /// Everything: repository load/unload, reloads, routing, plus `infer`,
    /// `feedback` and `metrics`.
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Infer => "infer",
            Self::Feedback => "feedback",
            Self::Metrics => "metrics",
            Self::Admin => "admin",
        })
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "infer" => Ok(Self::Infer),
            "feedback" => Ok(Self::Feedback),
            "metrics" => Ok(Self::Metrics),
            "admin" => Ok(Self::Admin),
            other => Err(Error::invalid_input(
                format!("scope {other:?}"),
                "expected infer, feedback, metrics or admin",
            )),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Key {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// The API keys a server accepts.
///
/// ```
/// use mlops_serve::{ApiKeys, Scope};
///
/// let keys = ApiKeys::new()
///     .with_key("ci", "s3cret-infer-key", &[Scope::Infer])
///     .with_hashed_key("ops", &ApiKeys::digest_hex("s3cret-admin-key"), &[Scope::Admin])?;
/// assert!(keys.authorize(Some("Bearer s3cret-infer-key"), Scope::Infer).is_ok());
/// assert!(keys.authorize(Some("Bearer s3cret-infer-key"), Scope::Admin).is_err()); // 403
/// assert!(keys.authorize(Some("Bearer wrong"), Scope::Infer).is_err());            // 401
/// # Ok::<(), mlops_core::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

impl ApiKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The hex SHA-256 digest of `key`, as [`ApiKeys::with_hashed_key`] takes it
    /// (so configuration files need not hold the key itself).
    pub fn digest_hex(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    /// Accepts `key` (held only as its digest) under `name` with `scopes`.
    pub fn with_key(mut self, name: impl Into<String>, key: &str, scopes: &[Scope]) -> Self {
        self.keys.push(Key {
            name: name.into(),
            digest: Sha256::digest(key.as_bytes()).into(),
            scopes: scopes.to_vec(),
        });
        self
    }

    /// Accepts the key whose hex SHA-256 digest is `digest_hex`.
    pub fn with_hashed_key(
        mut self,
        name: impl Into<String>,
        digest_hex: &str,
        scopes: &[Scope],
    ) -> Result<Self> {
        let name = name.into();
        let bytes = hex::decode(digest_hex)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::invalid_input(
                    format!("API key {name}"),
                    "the digest must be 64 hex digits (SHA-256)",
                )
            })?;
        self.keys.push(Key {
            name,
            digest: bytes,
            scopes: scopes.to_vec(),
        });
        Ok(self)
    }

    /// Checks an `Authorization` header value for `scope`: a missing, malformed or
    /// unknown key is [`Error::Unauthorized`] (401); a known key without the scope
    /// is [`Error::Forbidden`] (403). Returns the key's name.
    pub fn authorize(&self, header: Option<&str>, scope: Scope) -> Result<&str> {
        let header = header.ok_or_else(|| Error::Unauthorized {
            reason: "no Authorization header; send \"Authorization: Bearer <key>\"".into(),
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Unauthorized {
                reason: "the Authorization header is not \"Bearer <key>\"".into(),
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every key, without stopping early, so timing says nothing
        // about which (or whether a) key matched.
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&digest)) {
                found = Some(k);
            }
        }
        let key = found.ok_or_else(|| Error::Unauthorized {
            reason: "unknown API key".into(),
        })?;
        if key.scopes.contains(&scope) || key.scopes.contains(&Scope::Admin) {
            Ok(&key.name)
        } else {
            Err(Error::Forbidden {
                reason: format!("API key {} lacks the {scope} scope", key.name),
            })
        }
    }

    /// Whether no key is configured (then nothing is checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key set a running HTTP face checks, replaceable while it serves (a key
/// rotated in its file and a SIGHUP, say): every request after
/// [`replace`](Self::replace) is checked against the new keys only.
///
/// ```
/// use mlops_serve::{ApiKeys, KeyRing, Scope};
///
/// let ring = KeyRing::new(ApiKeys::new().with_key("app", "old", &[Scope::Infer]));
/// ring.replace(ApiKeys::new().with_key("app", "new", &[Scope::Infer]))?;
/// assert!(ring.current().authorize(Some("Bearer old"), Scope::Infer).is_err());
/// assert!(ring.current().authorize(Some("Bearer new"), Scope::Infer).is_ok());
/// # Ok::<(), mlops_core::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct KeyRing(Arc<RwLock<Arc<ApiKeys>>>);

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyRing").field(&*self.current()).finish()
    }
}

impl KeyRing {
    /// A ring holding `keys`.
    pub fn new(keys: ApiKeys) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(keys))))
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<ApiKeys> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `keys` in force for every request from now on. An empty set is
    /// refused (the face would fail open): serving without keys takes a restart
    /// with `allow_unauthenticated`.
    pub fn replace(&self, keys: ApiKeys) -> Result<()> {
        if keys.is_empty() {
            return Err(Error::invalid_input(
                "API keys",
                "a running face cannot drop every key; keep at least one",
            ));
        }
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// The names of the keys in force, for logs.
    pub fn names(&self) -> Vec<String> {
        self.current().keys.iter().map(|k| k.name.clone()).collect()
    }
}
