//! `mlops models`: the registry from the command line (list, show, register,
//! alias set, archive, verify), on the storage root of the config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use mlops::core::model::{
    ModelArtifact, ModelMetadata, ModelRegistry, ModelVersion, VersionSelector, VersionStatus,
};
use mlops::core::{Error, Result};
use mlops::store::{ObjectAuditLog, ObjectRegistry, StoreRoot};

use crate::config::Config;

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
        /// The loader that reads it (e.g. `tabular-mlp`).
        #[arg(long)]
        flavor: String,
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
}

fn registry(config: &Path) -> Result<ObjectRegistry> {
    let config = Config::load(config)?;
    let root = StoreRoot::open_with_options(&config.storage_root()?, config.storage_options()?)?;
    // Every change made from the command line is in the audit log.
    Ok(ObjectRegistry::new(&root)
        .with_audit(Arc::new(ObjectAuditLog::new(&root)))
        .with_actor("mlops-cli"))
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
    let registry = registry(config)?;
    match command {
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
        ModelsCommand::Register { name, file, flavor } => {
            let bytes = std::fs::read(&file).map_err(|e| {
                Error::invalid_input(format!("artifact file {}", file.display()), e.to_string())
            })?;
            let v = registry
                .register(
                    &name,
                    ModelArtifact::new(flavor, bytes),
                    ModelMetadata::default(),
                )
                .await?;
            if json {
                println!("{}", version_json(&v));
            } else {
                println!("registered {name} version {} ({})", v.version, v.digest);
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
        ModelsCommand::Verify { name, version } => {
            let selector: VersionSelector = version.parse()?;
            let number = registry.get_version(&name, &selector).await?.version;
            let (v, _) = registry.load_archived_artifact(&name, number).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"model": name, "version": v.version, "verified": true, "digest": v.digest.to_string()})
                );
            } else {
                println!(
                    "{name} version {}: digest {} verified{}",
                    v.version,
                    v.digest,
                    v.signature.as_ref().map_or(String::new(), |s| format!(
                        ", signed by {} (the signature is checked only against trusted keys, \
                             which the config does not name yet)",
                        s.key_id
                    ))
                );
            }
        }
    }
    Ok(())
}
