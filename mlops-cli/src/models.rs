//! `mlops models`: the registry from the command line (list, show, register,
//! alias set, archive, verify), on the storage root of the config file, with
//! its `[registry]` keys; and `keygen`, which makes a signing key pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use mlops::core::model::{
    ModelArtifact, ModelMetadata, ModelRegistry, ModelVersion, VersionSelector, VersionStatus,
};
use mlops::core::{Error, ModelLoader, Result};
use mlops::store::{ObjectAuditLog, ObjectRegistry, StoreRoot};
use mlops::train::TabularLoader;

use ed25519_dalek::SigningKey;

use crate::config::{Config, is_key_id, public_key_text, secret_key_text};

/// What `mlops models` does.
#[derive(Debug, Subcommand)]
pub(crate) enum ModelsCommand {
    /// Every model with its versions and aliases.
    List,
    /// One model's versions (number, status, flavor, size, digest, creator).
    Show {
        /// The model.
        name: String,
    },
    /// Registers FILE as the next version of NAME.
    Register {
        /// The model.
        name: String,
        /// The artifact's bytes.
        file: PathBuf,
        /// The loader that reads it: `burn-tabular` (this SDK's trainer) or
        /// `onnx` (scikit-learn, XGBoost, LightGBM, PyTorch exports).
        #[arg(long)]
        flavor: String,
        /// Sign the version with `[registry] signing_key`.
        #[arg(long)]
        sign: bool,
        /// ONNX only: a Parquet sample of the model's inputs (typically of its
        /// training data) to fit drift references from. Columns are named as the
        /// inputs, or `input[j]` for column j of an `[N, F]` input.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// A description recorded with the version.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Points an alias at a version.
    Alias {
        /// The model.
        name: String,
        /// The alias (e.g. `champion`).
        alias: String,
        /// The version number.
        version: u64,
    },
    /// Archives a version (kept for the record, never served).
    Archive {
        /// The model.
        name: String,
        /// The version number.
        version: u64,
    },
    /// Re-reads a version's artifact and checks its digest (and signature, when
    /// signed); archived versions too.
    Verify {
        /// The model.
        name: String,
        /// A number, an alias (`@champion`) or `latest` (the default).
        #[arg(default_value = "latest")]
        version: String,
    },
    /// Where a version came from and where it went, as JSON: its ancestors,
    /// training run, dataset snapshot, feature views, code version, who moved
    /// which alias to it, and the serving replicas that reported it.
    Lineage {
        /// The model.
        name: String,
        /// A number, an alias (`@champion`) or `latest` (the default).
        #[arg(default_value = "latest")]
        version: String,
    },
    /// Makes an ed25519 key pair for signing versions: DIR/ID.key (the private
    /// key, mode 0600, for `[registry] signing_key`) and DIR/ID.pub (for
    /// `[[registry.trusted_keys]]`). Never overwrites a key. Reads no config.
    Keygen {
        /// The directory to write them in (made if missing).
        #[arg(long)]
        out: PathBuf,
        /// The key id signatures name it by.
        #[arg(long, default_value = "mlops")]
        id: String,
    },
}

/// The registry of `config` with its `[registry]` keys (and, with `sign`, its
/// signing key), and whether it checks signatures.
pub(crate) fn registry(config: &Path, sign: bool) -> Result<(ObjectRegistry, bool)> {
    let config = Config::load(config)?;
    let options = config.registry_options(sign)?;
    let checks = options.require_signatures || !options.trusted_keys.is_empty();
    let root = StoreRoot::open_with_options(&config.storage_root()?, config.storage_options()?)?;
    // Every change made from the command line is in the audit log.
    let registry = ObjectRegistry::new(&root)
        .with_options(options)
        .with_audit(Arc::new(ObjectAuditLog::new(&root)))
        .with_actor("mlops-cli");
    // With [access], every write is checked for the configured principal.
    let registry = match &config.access {
        Some(access) => registry
            .with_authorizer(Arc::new(access.policy()?))
            .with_actor(access.principal()?),
        None => registry,
    };
    Ok((registry, checks))
}

/// Writes `text` to the new file `path` (never over an existing one), readable
/// by its owner only when `private`.
fn write_new(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let what = || format!("key file {}", path.display());
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::invalid_input(what(), "it exists; a key is never overwritten")
        } else {
            Error::invalid_input(what(), e.to_string())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::backend(what(), e))
}

/// `mlops models keygen`: a new key pair in `out`.
fn keygen(out: &Path, id: &str, json: bool) -> Result<()> {
    if !is_key_id(id) {
        return Err(Error::invalid_input(
            "keygen --id",
            format!("{id:?} is not a key id: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let secret = out.join(format!("{id}.key"));
    let public = out.join(format!("{id}.pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Error::invalid_input(
                format!("key file {}", p.display()),
                "it exists; a key is never overwritten",
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| {
        Error::invalid_input(format!("keygen --out {}", out.display()), e.to_string())
    })?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| Error::backend("the operating system's random source", e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    // The private key first: a pair is never left with only its public half.
    write_new(&secret, &secret_key_text(&key), true)?;
    write_new(&public, &public_key_text(&key.verifying_key()), false)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"id": id, "key_file": secret.display().to_string(), "public_key_file": public.display().to_string()})
        );
    } else {
        println!(
            "wrote {} (private, mode 0600) and {}\n\n\
             [registry]\n\
             signing_key = {{ id = \"{id}\", key_file = \"{}\" }}\n\n\
             [[registry.trusted_keys]]\n\
             id = \"{id}\"\n\
             public_key_file = \"{}\"",
            secret.display(),
            public.display(),
            secret.display(),
            public.display()
        );
    }
    Ok(())
}

fn status(v: &ModelVersion) -> &'static str {
    match v.status {
        VersionStatus::Active => "active",
        VersionStatus::Archived => "archived",
    }
}

fn version_json(v: &ModelVersion) -> serde_json::Value {
    serde_json::json!({
        "version": v.version,
        "status": status(v),
        "flavor": v.flavor,
        "size_bytes": v.size_bytes,
        "digest": v.digest.to_string(),
        "created_by": v.created_by,
        "created_at": v.created_at.to_rfc3339(),
        "signed_by": v.signature.as_ref().map(|s| s.key_id.clone()),
    })
}

/// Runs `command` on the registry of the `config` file.
pub(crate) async fn run(config: &Path, command: ModelsCommand, json: bool) -> Result<()> {
    let sign = match &command {
        ModelsCommand::Keygen { out, id } => return keygen(out, id, json),
        ModelsCommand::Register { sign, .. } => *sign,
        _ => false,
    };
    let (registry, checks_signatures) = registry(config, sign)?;
    match command {
        ModelsCommand::Keygen { .. } => {}
        ModelsCommand::List => {
            let mut rows = Vec::new();
            for name in registry.list_models().await? {
                let versions = registry.list_versions(&name).await?;
                let aliases = registry.aliases(&name).await?;
                rows.push((name, versions, aliases));
            }
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|(n, v, a)| serde_json::json!({"model": n, "versions": v.len(), "aliases": a}))
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                println!("{:<24} {:>8}  ALIASES", "MODEL", "VERSIONS");
                for (n, v, a) in rows {
                    let aliases: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("{n:<24} {:>8}  {}", v.len(), aliases.join(", "));
                }
            }
        }
        ModelsCommand::Show { name } => {
            let versions = registry.list_versions(&name).await?;
            if versions.is_empty() {
                return Err(Error::not_found(mlops::core::ResourceKind::Model, &name));
            }
            let aliases = registry.aliases(&name).await?;
            if json {
                let out: Vec<_> = versions.iter().map(version_json).collect();
                println!(
                    "{}",
                    serde_json::json!({"model": name, "aliases": aliases, "versions": out})
                );
            } else {
                println!(
                    "{:>7}  {:<8}  {:<14} {:>10}  {:<18}  CREATED BY",
                    "VERSION", "STATUS", "FLAVOR", "BYTES", "DIGEST"
                );
                for v in &versions {
                    let digest = v.digest.to_string();
                    println!(
                        "{:>7}  {:<8}  {:<14} {:>10}  {:<18}  {}",
                        v.version,
                        status(v),
                        v.flavor,
                        v.size_bytes,
                        digest.get(..18).unwrap_or(&digest),
                        v.created_by
                    );
                }
                for (a, v) in aliases {
                    println!("@{a} -> {v}");
                }
            }
        }
        ModelsCommand::Register {
            name,
            file,
            flavor,
            reference,
            description,
            ..
        } => {
            let bytes = std::fs::read(&file).map_err(|e| {
                Error::invalid_input(format!("artifact file {}", file.display()), e.to_string())
            })?;
            let metadata = ModelMetadata {
                description,
                ..Default::default()
            };
            let (artifact, metadata) =
                artifact_for(&flavor, bytes, metadata, reference.as_deref())?;
            let v = registry.register(&name, artifact, metadata).await?;
            if json {
                println!("{}", version_json(&v));
            } else {
                println!(
                    "registered {name} version {} ({}){}",
                    v.version,
                    v.digest,
                    v.signature
                        .as_ref()
                        .map_or(String::new(), |s| format!(", signed by {}", s.key_id))
                );
            }
        }
        ModelsCommand::Alias {
            name,
            alias,
            version,
        } => {
            registry.set_alias(&name, &alias, version).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"model": name, "alias": alias, "version": version})
                );
            } else {
                println!("{name}@{alias} -> {version}");
            }
        }
        ModelsCommand::Archive { name, version } => {
            let v = registry.archive_version(&name, version).await?;
            if json {
                println!("{}", version_json(&v));
            } else {
                println!("archived {name} version {version}");
            }
        }
        ModelsCommand::Lineage { name, version } => {
            let selector: VersionSelector = version.parse()?;
            let number = registry.get_version(&name, &selector).await?.version;
            let loaded = Config::load(config)?;
            let root =
                StoreRoot::open_with_options(&loaded.storage_root()?, loaded.storage_options()?)?;
            let lineage = mlops::store::version_lineage(&root, &name, number).await?;
            let text = serde_json::to_string_pretty(&lineage)
                .map_err(|e| Error::backend("serde_json", e))?;
            println!("{text}");
        }
        ModelsCommand::Verify { name, version } => {
            let selector: VersionSelector = version.parse()?;
            let number = registry.get_version(&name, &selector).await?.version;
            let (v, _) = registry.load_archived_artifact(&name, number).await?;
            // With trusted keys, the load above checked the signature too.
            let signature = match (&v.signature, checks_signatures) {
                (Some(s), true) => format!("signed by {}, signature verified", s.key_id),
                (Some(s), false) => format!(
                    "signed by {}, signature not checked: [registry] trusts no key",
                    s.key_id
                ),
                (None, _) => "unsigned".to_owned(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "model": name,
                        "version": v.version,
                        "verified": true,
                        "digest": v.digest.to_string(),
                        "signed_by": v.signature.as_ref().map(|s| s.key_id.clone()),
                        "signature_verified": v.signature.is_some() && checks_signatures,
                    })
                );
            } else {
                println!(
                    "{name} version {}: digest {} verified; {signature}",
                    v.version, v.digest
                );
            }
        }
    }
    Ok(())
}

/// The loaders this binary serves with: the SDK's tabular models, and ONNX
/// models when built with the `onnx` feature (the default).
pub(crate) fn loaders() -> Vec<Arc<dyn ModelLoader>> {
    vec![
        Arc::new(TabularLoader::default()),
        #[cfg(feature = "onnx")]
        Arc::new(mlops::onnx::OnnxLoader),
    ]
}

/// The flavors [`loaders`] read, for messages.
pub(crate) fn flavors() -> Vec<String> {
    loaders().iter().flat_map(|l| l.flavors()).collect()
}

/// What `models register` registers for FILE of `flavor`: an ONNX file is
/// loaded first (a model this binary cannot serve is refused, naming the
/// operator), takes its signature from the graph and, with `reference`, drift
/// references fitted on that Parquet sample.
fn artifact_for(
    flavor: &str,
    bytes: Vec<u8>,
    metadata: ModelMetadata,
    reference: Option<&Path>,
) -> Result<(ModelArtifact, ModelMetadata)> {
    #[cfg(feature = "onnx")]
    if flavor == mlops::onnx::FLAVOR {
        let reference = match reference {
            None => None,
            Some(path) => {
                let model = mlops::onnx::OnnxModel::from_bytes(&bytes)?;
                let batch = crate::io::read_parquet(path)?;
                Some(mlops::core::inference::tensors_for_signature(
                    mlops::core::Predictor::signature(&model),
                    &batch,
                )?)
            }
        };
        return mlops::onnx::prepare_onnx(
            &bytes,
            &mlops::onnx::OnnxRegistration {
                metadata,
                reference,
                ..Default::default()
            },
        );
    }
    if reference.is_some() {
        return Err(Error::invalid_input(
            "--reference",
            format!(
                "only ONNX models take a reference batch here; a {flavor} model carries its own"
            ),
        ));
    }
    Ok((ModelArtifact::new(flavor, bytes), metadata))
}

/// The selected version of `model` and its predictor, loaded off the async
/// workers by the loader of its flavor; an error names a flavor this binary
/// does not load.
pub(crate) async fn load_predictor(
    registry: &ObjectRegistry,
    model: &str,
    selector: &VersionSelector,
) -> Result<(ModelVersion, Arc<dyn mlops::core::Predictor>)> {
    let (version, artifact) = registry.load_artifact(model, selector).await?;
    let Some(loader) = loaders().into_iter().find(|l| l.can_load(&artifact.flavor)) else {
        return Err(Error::invalid_input(
            format!("model {model} version {}", version.version),
            format!(
                "its flavor {:?} is not one this binary loads ({})",
                artifact.flavor,
                flavors().join(", ")
            ),
        ));
    };
    let predictor = tokio::task::spawn_blocking(move || loader.load(&artifact))
        .await
        .map_err(|e| Error::backend("model loader", e.to_string()))??;
    Ok((version, predictor))
}
