//! The model registry on its own: versions, aliases, archival, integrity checks on
//! every load, and the audit trail of every change.
//!
//! ```text
//! cargo run --example registry
//! ```

use std::sync::Arc;

use mlops::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let root = StoreRoot::open("memory://")?; // or a directory, s3://, gs://, az://
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let registry = ObjectRegistry::new(&root)
        .with_audit(audit.clone())
        .with_actor("example");

    let mut metadata = ModelMetadata::default();
    metadata.metrics.insert("roc_auc".into(), 0.91);
    let v1 = registry
        .register(
            "fraud",
            ModelArtifact::new("my-flavor", b"weights v1".to_vec()),
            metadata,
        )
        .await?;
    let v2 = registry
        .register(
            "fraud",
            ModelArtifact::new("my-flavor", b"weights v2".to_vec()),
            ModelMetadata::default(),
        )
        .await?;
    registry.set_alias("fraud", "champion", v1.version).await?;
    registry
        .set_alias("fraud", "challenger", v2.version)
        .await?;
    println!("aliases: {:?}", registry.aliases("fraud").await?);

    // Loading by alias verifies the digest of the bytes.
    let (version, artifact) = registry
        .load_artifact("fraud", &"@champion".parse()?)
        .await?;
    println!(
        "champion: v{} ({} bytes, sha256 {})",
        version.version,
        artifact.bytes.len(),
        version.digest
    );

    // Promote the challenger; the old champion can then be archived.
    registry.set_alias("fraud", "champion", v2.version).await?;
    registry.delete_alias("fraud", "challenger").await?;
    registry.archive_version("fraud", v1.version).await?;
    match registry.set_alias("fraud", "champion", v1.version).await {
        Err(e) => println!("an archived version takes no alias: {e}"),
        Ok(()) => {
            return Err(Error::backend(
                "example",
                "an archived version took an alias",
            ));
        }
    }

    // Every change is in the hash-chained audit log.
    for entry in audit.entries(0, 100).await? {
        println!(
            "audit #{}: {} {} by {}",
            entry.seq, entry.event.action, entry.event.target, entry.event.actor
        );
    }
    println!("audit chain: {:?}", audit.verify().await?);
    Ok(())
}
