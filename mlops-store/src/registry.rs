//! The model registry on object storage.
//!
//! Layout under the root (all JSON readable by other tools):
//!
//! ```text
//! registry/blobs/sha256/<hex>                      artifact bytes, content-addressed
//! registry/models/<model>/versions/<version>.json  one immutable manifest per version
//!                                                  (20-digit zero-padded number)
//! registry/models/<model>/state.json               aliases and archived versions
//!   or registry/models/<model>/state/<seq>.json    (the same, as a create-only
//!                                                  sequence on backends without
//!                                                  update-if-unchanged, e.g. local disk)
//! ```
//!
//! Registration writes the artifact first, then claims the next version number by
//! creating its manifest with a create-if-absent write; a writer that loses the race
//! takes the next number. So versions are 1..N without gaps or duplicates whatever
//! the number of writers, and a registration interrupted at any step leaves no
//! visible partial version (at most an unreferenced blob). Aliases and archival are
//! one compare-and-swap state per model, so an alias can never point at an archived
//! version even when both change at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use mlops_core::access::{Action, Authorizer, Resource};
use mlops_core::audit::{AuditEvent, AuditLog};
use mlops_core::model::{
    ArtifactSignature, ModelArtifact, ModelMetadata, ModelRegistry, ModelVersion, VersionQuery,
    VersionSelector, VersionStatus,
};
use mlops_core::{Error, ResourceKind, Result, validate_name};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::cas::{CasCell, Token, backoff};
use crate::error::storage_error;
use crate::root::StoreRoot;

/// Default limit on a version's metadata, as JSON.
pub const DEFAULT_MAX_METADATA_BYTES: usize = 256 * 1024;
const MAX_ATTEMPTS: u32 = 1000;
/// Retries of an audit append after a transient failure.
const AUDIT_RETRIES: u32 = 3;

/// How a [`ObjectRegistry`] behaves.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RegistryOptions {
    /// Who is recorded as creator and in the audit log. Default `"unknown"`.
    pub actor: Option<String>,
    /// Signs every new version's manifest and digest: `(key id, key)`.
    pub signing_key: Option<(String, SigningKey)>,
    /// Public keys whose signatures are accepted, by key id. When any is set,
    /// only versions signed by one of them load (unsigned ones and ones signed by
    /// another key are refused).
    pub trusted_keys: BTreeMap<String, VerifyingKey>,
    /// Refuse to load versions that are unsigned or not signed by a trusted key,
    /// even with no trusted keys (then nothing loads: a registry that must not
    /// serve until keys are configured).
    pub require_signatures: bool,
    /// Limit on metadata size; 0 means [`DEFAULT_MAX_METADATA_BYTES`].
    pub max_metadata_bytes: usize,
    /// Where every change is recorded.
    pub audit: Option<Arc<dyn AuditLog>>,
    /// Who may register (`register` on `model:NAME`), move aliases (`promote`
    /// on `alias:MODEL@ALIAS`) and archive (`archive` on `model:NAME`); the
    /// principal is the registry's actor. Every decision is audited
    /// (`access.allow` / `access.deny`); a denied call writes nothing else.
    /// None: everything is allowed, nothing extra audited.
    pub authorizer: Option<Arc<dyn Authorizer>>,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("actor", &self.actor)
            .field("signing_key_id", &self.signing_key.as_ref().map(|k| &k.0))
            .field(
                "trusted_keys",
                &self.trusted_keys.keys().collect::<Vec<_>>(),
            )
            .field("require_signatures", &self.require_signatures)
            .field("max_metadata_bytes", &self.max_metadata_bytes)
            .field("audit", &self.audit.is_some())
            .field("authorizer", &self.authorizer)
            .finish()
    }
}

/// Why and when a version was archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tombstone {
    by: String,
    at: DateTime<Utc>,
}

/// The mutable state of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ModelState {
    aliases: BTreeMap<String, u64>,
    archived: BTreeMap<u64, Tombstone>,
}

/// A [`ModelRegistry`] on a [`StoreRoot`]: safe for many writers on many machines
/// sharing one bucket or directory, with content-addressed artifacts, digest
/// verification on every load and optional ed25519 signatures.
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_core::model::{ModelArtifact, ModelMetadata, ModelRegistry, VersionSelector};
/// use mlops_store::{ObjectRegistry, RegistryOptions, StoreRoot};
///
/// let registry = ObjectRegistry::new(&StoreRoot::open("memory://")?);
/// let v = registry.register("fraud", ModelArtifact::new("burn-mlp", vec![1, 2, 3]), ModelMetadata::default()).await?;
/// registry.set_alias("fraud", "champion", v.version).await?;
/// let (version, artifact) = registry.load_artifact("fraud", &"@champion".parse()?).await?;
/// assert_eq!((version.version, &artifact.bytes[..]), (1, &[1u8, 2, 3][..]));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectRegistry {
    root: StoreRoot,
    options: RegistryOptions,
    /// Manifests already read, by model. Manifests never change, so a cached one is
    /// always right; clones of the registry share the cache.
    manifests: Arc<Mutex<HashMap<String, ManifestCache>>>,
    /// The last state read of each model, to re-read it cheaply.
    states: Arc<Mutex<HashMap<String, (ModelState, Token)>>>,
}

/// The manifests of one model read so far.
#[derive(Debug, Default)]
struct ManifestCache {
    by_version: BTreeMap<u64, ModelVersion>,
    /// Every version up to this one is in `by_version` (0: not known yet).
    complete_upto: u64,
}

fn version_path(model: &str, version: u64) -> String {
    format!("registry/models/{model}/versions/{version:020}.json")
}

fn blob_path(artifact_hex: &str) -> String {
    format!("registry/blobs/sha256/{artifact_hex}")
}

/// The bytes a signature covers: the manifest without its signature and status.
fn signed_message(version: &ModelVersion) -> Result<Vec<u8>> {
    let mut unsigned = version.clone();
    unsigned.signature = None;
    unsigned.status = VersionStatus::Active;
    serde_json::to_vec(&unsigned).map_err(|e| Error::invalid_input("model manifest", e.to_string()))
}

impl ObjectRegistry {
    /// A registry under `root` with the default [`RegistryOptions`] (no signing,
    /// no audit log).
    pub fn new(root: &StoreRoot) -> Self {
        Self {
            root: root.clone(),
            options: RegistryOptions::default(),
            manifests: Arc::new(Mutex::new(HashMap::new())),
            states: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The registry with `options` (signing, trusted keys, limits, audit).
    pub fn with_options(mut self, options: RegistryOptions) -> Self {
        self.options = options;
        self
    }

    /// Records every change in `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.options.audit = Some(audit);
        self
    }

    /// Checks every register, alias move and archive with `authorizer` (see
    /// [`RegistryOptions::authorizer`]).
    pub fn with_authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.options.authorizer = Some(authorizer);
        self
    }

    /// Records changes as done by `actor`.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.options.actor = Some(actor.into());
        self
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, ManifestCache>> {
        // The cache holds only immutable manifests: a panic elsewhere cannot leave it
        // inconsistent.
        self.manifests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every version of `model`, ascending. Versions are gap-free (a number is only
    /// ever claimed after the one before it exists), so after the first listing it is
    /// enough to probe the number after the highest known one.
    async fn known_versions(&self, model: &str) -> Result<Vec<ModelVersion>> {
        let complete = self.cache().get(model).map_or(0, |c| c.complete_upto);
        let mut next = if complete == 0 {
            let numbers = self.version_numbers(model).await?;
            for &n in &numbers {
                if self.read_manifest(model, n).await?.is_none() {
                    return Err(Error::conflict(
                        format!("model {model} version {n}"),
                        "its manifest vanished while being read",
                    ));
                }
            }
            numbers.last().copied().unwrap_or(0) + 1
        } else {
            complete + 1
        };
        while self.read_manifest(model, next).await?.is_some() {
            next += 1;
        }
        let mut cache = self.cache();
        let entry = cache.entry(model.to_owned()).or_default();
        entry.complete_upto = next - 1;
        Ok(entry
            .by_version
            .range(..next)
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// Checks `action` on `resource` for the actor with the authorizer, if
    /// any, recording the decision in the audit log.
    async fn authorize(&self, action: Action, resource: Resource) -> Result<()> {
        let Some(authorizer) = &self.options.authorizer else {
            return Ok(());
        };
        let principal = self.actor();
        let decision = authorizer.authorize(&principal, action, &resource);
        let (verdict, reason) = match &decision {
            Ok(()) => ("access.allow", None),
            Err(e) => ("access.deny", Some(e.to_string())),
        };
        let mut details = vec![("action", action.to_string())];
        if let Some(r) = reason {
            details.push(("reason", r));
        }
        self.audit(verdict, resource.to_string(), &details).await?;
        decision
    }

    fn actor(&self) -> String {
        self.options
            .actor
            .clone()
            .unwrap_or_else(|| "unknown".into())
    }

    fn state(&self, model: &str) -> CasCell {
        CasCell::new(&self.root, format!("registry/models/{model}/state"))
    }

    /// Records a change that has already happened. Transient failures are retried;
    /// if the entry still cannot be written, the error says that the change itself
    /// was made, so the caller does not repeat it.
    async fn audit(&self, action: &str, target: String, details: &[(&str, String)]) -> Result<()> {
        let Some(log) = &self.options.audit else {
            return Ok(());
        };
        let mut event = AuditEvent::new(self.actor(), action, target.clone());
        for (k, v) in details {
            event = event.detail(*k, v.clone());
        }
        let mut attempt = 0;
        loop {
            match log.append(event.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < AUDIT_RETRIES => {
                    backoff(attempt).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::storage(
                        "audit log",
                        format!(
                            "{action} of {target} was done, but its audit entry could not be written: {e}"
                        ),
                    ));
                }
            }
        }
    }

    /// Version numbers with a manifest, ascending.
    async fn version_numbers(&self, model: &str) -> Result<Vec<u64>> {
        self.root
            .list_numbered(&format!("registry/models/{model}/versions"), ".json")
            .await
    }

    /// The model's state, re-read cheaply when it was read before (a conditional
    /// GET, or a probe for a newer sequence entry).
    async fn read_state(&self, model: &str) -> Result<ModelState> {
        let known = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned();
        let (state, token) = self.state(model).read_since(known).await?;
        let state = state.unwrap_or_default();
        if token != Token::Absent {
            self.states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(model.to_owned(), (state.clone(), token));
        }
        Ok(state)
    }

    async fn read_manifest(&self, model: &str, version: u64) -> Result<Option<ModelVersion>> {
        if let Some(v) = self
            .cache()
            .get(model)
            .and_then(|c| c.by_version.get(&version))
        {
            return Ok(Some(v.clone()));
        }
        let path = self.root.path(&version_path(model, version));
        let where_ = self.root.describe(&path);
        let Some(bytes) = self.root.get_opt(&version_path(model, version)).await? else {
            return Ok(None);
        };
        let v: ModelVersion = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(where_.clone(), format!("not a valid model manifest: {e}"))
        })?;
        if v.model != model || v.version != version {
            return Err(Error::integrity(
                where_,
                format!("the manifest names {}@{}", v.model, v.version),
            ));
        }
        self.cache()
            .entry(model.to_owned())
            .or_default()
            .by_version
            .insert(version, v.clone());
        Ok(Some(v))
    }

    /// Resolves a selector to a version number.
    async fn resolve(
        &self,
        model: &str,
        selector: &VersionSelector,
        state: &ModelState,
    ) -> Result<u64> {
        match selector {
            VersionSelector::Number(n) => Ok(*n),
            VersionSelector::Alias(a) => state
                .aliases
                .get(a)
                .copied()
                .ok_or_else(|| Error::not_found(ResourceKind::Alias, format!("{model}@{a}"))),
            VersionSelector::Latest => self
                .known_versions(model)
                .await?
                .into_iter()
                .map(|v| v.version)
                .rev()
                .find(|v| !state.archived.contains_key(v))
                .ok_or_else(|| {
                    Error::not_found(ResourceKind::ModelVersion, format!("{model}@latest"))
                }),
        }
    }

    async fn model_exists(&self, model: &str) -> Result<bool> {
        Ok(!self.known_versions(model).await?.is_empty())
    }

    /// Any version's verified artifact, archived ones included: for audits and
    /// reproductions. Serving goes through
    /// [`load_artifact`](ModelRegistry::load_artifact), which refuses archived
    /// versions.
    pub async fn load_archived_artifact(
        &self,
        model: &str,
        version: u64,
    ) -> Result<(ModelVersion, ModelArtifact)> {
        let version = self
            .get_version(model, &VersionSelector::Number(version))
            .await?;
        self.read_artifact(version).await
    }

    /// `version`'s artifact, its signature checked and its digest verified.
    async fn read_artifact(&self, version: ModelVersion) -> Result<(ModelVersion, ModelArtifact)> {
        self.check_signature(&version)?;
        let model = &version.model;
        let path = self.root.path(&blob_path(version.digest.hex()));
        let where_ = self.root.describe(&path);
        let bytes: Bytes = match self.root.store().get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| storage_error(&where_, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::integrity(
                    format!("model {model} version {}", version.version),
                    format!("its artifact {} is missing from storage", version.digest),
                ));
            }
            Err(e) => return Err(storage_error(&where_, e)),
        };
        let artifact = ModelArtifact {
            flavor: version.flavor.clone(),
            digest: version.digest.clone(),
            bytes,
            signature: version.signature.clone(),
        };
        version.digest.verify(
            &format!("model {model} version {} artifact", version.version),
            &artifact.bytes,
        )?;
        Ok((version, artifact))
    }

    fn check_signature(&self, v: &ModelVersion) -> Result<()> {
        let target = format!("model {} version {}", v.model, v.version);
        // Trusting keys means refusing what they did not sign.
        let required = self.options.require_signatures || !self.options.trusted_keys.is_empty();
        let Some(sig) = &v.signature else {
            return if required {
                Err(Error::integrity(
                    target,
                    "it is not signed and signatures are required",
                ))
            } else {
                Ok(())
            };
        };
        let Some(key) = self.options.trusted_keys.get(&sig.key_id) else {
            return if required {
                Err(Error::integrity(
                    target,
                    format!("signed by key '{}', which is not trusted", sig.key_id),
                ))
            } else {
                Ok(())
            };
        };
        let bytes = hex::decode(&sig.signature)
            .map_err(|_| Error::integrity(target.clone(), "the signature is not hex"))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes)
            .map_err(|_| Error::integrity(target.clone(), "the signature is malformed"))?;
        key.verify_strict(&signed_message(v)?, &signature)
            .map_err(|_| {
                Error::integrity(
                    target,
                    format!("the signature by key '{}' does not verify", sig.key_id),
                )
            })
    }

    fn with_status(v: ModelVersion, state: &ModelState) -> ModelVersion {
        let status = if state.archived.contains_key(&v.version) {
            VersionStatus::Archived
        } else {
            VersionStatus::Active
        };
        ModelVersion { status, ..v }
    }

    fn check_metadata(&self, model: &str, metadata: &ModelMetadata) -> Result<()> {
        let what = || format!("metadata of model {model}");
        if let Some((k, v)) = metadata.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::invalid_input(
                what(),
                format!("metric '{k}' is {v}; metrics must be finite"),
            ));
        }
        let size = serde_json::to_vec(metadata)
            .map_err(|e| Error::invalid_input(what(), e.to_string()))?
            .len();
        let limit = if self.options.max_metadata_bytes == 0 {
            DEFAULT_MAX_METADATA_BYTES
        } else {
            self.options.max_metadata_bytes
        };
        if size > limit {
            return Err(Error::invalid_input(
                what(),
                format!("it is {size} bytes as JSON; the limit is {limit}"),
            ));
        }
        Ok(())
    }

    /// Stores the artifact bytes once per content.
    async fn put_blob(&self, artifact: &ModelArtifact) -> Result<()> {
        let relative = blob_path(artifact.digest.hex());
        if self
            .root
            .put_unique(&relative, artifact.bytes.clone())
            .await?
        {
            return Ok(());
        }
        // Stored before (content-addressed): make sure it is whole.
        let path = self.root.path(&relative);
        let where_ = self.root.describe(&path);
        let meta = self
            .root
            .store()
            .head(&path)
            .await
            .map_err(|e| storage_error(&where_, e))?;
        if meta.size == artifact.bytes.len() as u64 {
            Ok(())
        } else {
            Err(Error::integrity(
                where_,
                format!(
                    "stored blob has {} bytes, expected {}",
                    meta.size,
                    artifact.bytes.len()
                ),
            ))
        }
    }
}

#[async_trait]
impl ModelRegistry for ObjectRegistry {
    async fn register(
        &self,
        model: &str,
        artifact: ModelArtifact,
        metadata: ModelMetadata,
    ) -> Result<ModelVersion> {
        validate_name(ResourceKind::Model, model)?;
        validate_name(ResourceKind::Artifact, &artifact.flavor)
            .map_err(|e| Error::invalid_input("artifact flavor", e.to_string()))?;
        self.authorize(Action::Register, Resource::model(model))
            .await?;
        artifact.verify()?;
        self.check_metadata(model, &metadata)?;
        self.put_blob(&artifact).await?;

        let mut next = self
            .version_numbers(model)
            .await?
            .last()
            .copied()
            .unwrap_or(0)
            + 1;
        for attempt in 0..MAX_ATTEMPTS {
            let mut manifest = ModelVersion {
                model: model.to_owned(),
                version: next,
                flavor: artifact.flavor.clone(),
                digest: artifact.digest.clone(),
                size_bytes: artifact.bytes.len() as u64,
                metadata: metadata.clone(),
                created_by: self.actor(),
                created_at: Utc::now(),
                status: VersionStatus::Active,
                signature: None,
            };
            if let Some((key_id, key)) = &self.options.signing_key {
                let sig = key.sign(&signed_message(&manifest)?);
                manifest.signature = Some(ArtifactSignature {
                    algorithm: "ed25519".into(),
                    key_id: key_id.clone(),
                    signature: hex::encode(sig.to_bytes()),
                });
            }
            let bytes = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| Error::invalid_input("model manifest", e.to_string()))?;
            if self
                .root
                .put_if_absent(&version_path(model, next), bytes.into())
                .await?
            {
                self.audit(
                    "register",
                    format!("model {model} version {next}"),
                    &[
                        ("digest", manifest.digest.to_string()),
                        ("flavor", manifest.flavor.clone()),
                        ("size_bytes", manifest.size_bytes.to_string()),
                    ],
                )
                .await?;
                return Ok(manifest);
            }
            // Another writer took this number: continue after the highest.
            let highest = self
                .known_versions(model)
                .await?
                .last()
                .map_or(0, |v| v.version);
            next = highest.max(next) + 1;
            if attempt > 8 {
                backoff(attempt.min(4)).await;
            }
        }
        Err(Error::conflict(
            format!("model {model}"),
            format!("no version number could be claimed in {MAX_ATTEMPTS} attempts"),
        ))
    }

    async fn get_version(&self, model: &str, selector: &VersionSelector) -> Result<ModelVersion> {
        validate_name(ResourceKind::Model, model)?;
        let state = self.read_state(model).await?;
        let n = self.resolve(model, selector, &state).await?;
        match self.read_manifest(model, n).await? {
            Some(v) => Ok(Self::with_status(v, &state)),
            None if !self.model_exists(model).await? => {
                Err(Error::not_found(ResourceKind::Model, model))
            }
            None => Err(Error::not_found(
                ResourceKind::ModelVersion,
                format!("{model}@{n}"),
            )),
        }
    }

    async fn load_artifact(
        &self,
        model: &str,
        selector: &VersionSelector,
    ) -> Result<(ModelVersion, ModelArtifact)> {
        let version = self.get_version(model, selector).await?;
        if version.status == VersionStatus::Archived {
            return Err(Error::conflict(
                format!("model {model} version {}", version.version),
                "it is archived and cannot be served (ObjectRegistry::load_archived_artifact \
                 reads it for an audit or a reproduction)",
            ));
        }
        self.read_artifact(version).await
    }

    async fn set_alias(&self, model: &str, alias: &str, version: u64) -> Result<()> {
        validate_name(ResourceKind::Model, model)?;
        check_alias(alias)?;
        self.authorize(Action::Promote, Resource::alias(model, alias))
            .await?;
        if self.read_manifest(model, version).await?.is_none() {
            return Err(if self.model_exists(model).await? {
                Error::not_found(ResourceKind::ModelVersion, format!("{model}@{version}"))
            } else {
                Error::not_found(ResourceKind::Model, model)
            });
        }
        let previous = self
            .state(model)
            .update(|state: Option<ModelState>| {
                let mut state = state.unwrap_or_default();
                if state.archived.contains_key(&version) {
                    return Err(Error::conflict(
                        format!("model {model} alias {alias}"),
                        format!("version {version} is archived"),
                    ));
                }
                let previous = state.aliases.insert(alias.to_owned(), version);
                Ok((state, previous))
            })
            .await?;
        self.audit(
            "set_alias",
            format!("model {model} alias {alias}"),
            &[
                ("version", version.to_string()),
                (
                    "previous",
                    previous.map_or_else(|| "none".into(), |p| p.to_string()),
                ),
            ],
        )
        .await
    }

    async fn delete_alias(&self, model: &str, alias: &str) -> Result<()> {
        validate_name(ResourceKind::Model, model)?;
        check_alias(alias)?;
        self.authorize(Action::Promote, Resource::alias(model, alias))
            .await?;
        let removed = self
            .state(model)
            .update(|state: Option<ModelState>| {
                let mut state = state.unwrap_or_default();
                match state.aliases.remove(alias) {
                    Some(v) => Ok((state, v)),
                    None => Err(Error::not_found(
                        ResourceKind::Alias,
                        format!("{model}@{alias}"),
                    )),
                }
            })
            .await?;
        self.audit(
            "delete_alias",
            format!("model {model} alias {alias}"),
            &[("version", removed.to_string())],
        )
        .await
    }

    async fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>> {
        validate_name(ResourceKind::Model, model)?;
        if !self.model_exists(model).await? {
            return Err(Error::not_found(ResourceKind::Model, model));
        }
        Ok(self.read_state(model).await?.aliases)
    }

    async fn list_models(&self) -> Result<Vec<String>> {
        self.root.list_children("registry/models").await
    }

    async fn list_versions(&self, model: &str) -> Result<Vec<ModelVersion>> {
        validate_name(ResourceKind::Model, model)?;
        let versions = self.known_versions(model).await?;
        if versions.is_empty() {
            return Err(Error::not_found(ResourceKind::Model, model));
        }
        let state = self.read_state(model).await?;
        Ok(versions
            .into_iter()
            .map(|v| Self::with_status(v, &state))
            .collect())
    }

    async fn search_versions(&self, query: &VersionQuery) -> Result<Vec<ModelVersion>> {
        let models = match &query.model {
            Some(m) => vec![m.clone()],
            None => self.list_models().await?,
        };
        let mut out = Vec::new();
        for m in models {
            match self.list_versions(&m).await {
                Ok(vs) => out.extend(vs.into_iter().filter(|v| query.matches(v))),
                Err(Error::NotFound { .. }) if query.model.is_some() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn archive_version(&self, model: &str, version: u64) -> Result<ModelVersion> {
        validate_name(ResourceKind::Model, model)?;
        self.authorize(Action::Archive, Resource::model(model))
            .await?;
        let manifest = self.read_manifest(model, version).await?.ok_or_else(|| {
            Error::not_found(ResourceKind::ModelVersion, format!("{model}@{version}"))
        })?;
        let by = self.actor();
        let state = self
            .state(model)
            .update(|state: Option<ModelState>| {
                let mut state = state.unwrap_or_default();
                if let Some((alias, _)) = state.aliases.iter().find(|(_, v)| **v == version) {
                    return Err(Error::conflict(
                        format!("model {model} version {version}"),
                        format!("alias '{alias}' points at it; move the alias first"),
                    ));
                }
                state.archived.entry(version).or_insert_with(|| Tombstone {
                    by: by.clone(),
                    at: Utc::now(),
                });
                let snapshot = state.clone();
                Ok((state, snapshot))
            })
            .await?;
        self.audit("archive", format!("model {model} version {version}"), &[])
            .await?;
        Ok(Self::with_status(manifest, &state))
    }
}

/// Aliases may not read as a version selector of another kind.
fn check_alias(alias: &str) -> Result<()> {
    validate_name(ResourceKind::Alias, alias)?;
    if alias == "latest" || alias.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid_input(
            format!("alias {alias:?}"),
            "\"latest\" and numbers are version selectors, not aliases",
        ));
    }
    Ok(())
}
