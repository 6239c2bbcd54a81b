//! [`ModelRegistry`]: numbering, immutability, aliases, archival, integrity and
//! the errors its contract names.

use crate::error::Error;
use crate::model::{ModelArtifact, ModelMetadata, ModelRegistry, VersionSelector};

use super::expect_err;

/// Runs the registry contract on an empty `registry`.
pub async fn conformance(registry: &dyn ModelRegistry) {
    let model = "conformance-model";
    let mut metadata = ModelMetadata::default();
    metadata.metrics.insert("roc_auc".into(), 0.9);
    let v1 = registry
        .register(
            model,
            ModelArtifact::new("flavor-a", b"one".to_vec()),
            metadata.clone(),
        )
        .await
        .expect("register v1");
    let v2 = registry
        .register(
            model,
            ModelArtifact::new("flavor-a", b"two".to_vec()),
            ModelMetadata::default(),
        )
        .await
        .expect("register v2");
    assert_eq!(
        (v1.version, v2.version),
        (1, 2),
        "versions are numbered 1, 2, ..."
    );
    assert_eq!(
        v1.metadata.metrics.get("roc_auc"),
        Some(&0.9),
        "metadata is kept"
    );

    let (version, artifact) = registry
        .load_artifact(model, &VersionSelector::Number(1))
        .await
        .expect("load v1");
    assert_eq!(version.version, 1);
    assert_eq!(
        artifact.bytes.as_ref(),
        b"one",
        "an artifact comes back as registered"
    );
    artifact.verify().expect("a loaded artifact verifies");
    let latest = registry
        .get_version(model, &VersionSelector::Latest)
        .await
        .expect("latest");
    assert_eq!(latest.version, 2, "latest is the highest version");

    registry
        .set_alias(model, "champion", 1)
        .await
        .expect("set alias");
    let by_alias = registry
        .get_version(model, &VersionSelector::Alias("champion".into()))
        .await
        .expect("resolve alias");
    assert_eq!(by_alias.version, 1);
    registry
        .set_alias(model, "champion", 2)
        .await
        .expect("move alias");
    assert_eq!(
        registry.aliases(model).await.expect("aliases")["champion"],
        2
    );
    expect_err(
        registry.set_alias(model, "champion", 99).await,
        "an alias to an unknown version",
        |e| matches!(e, Error::NotFound { .. }),
    );
    expect_err(
        registry.archive_version(model, 2).await,
        "archiving a version an alias points at",
        |e| matches!(e, Error::Conflict { .. }),
    );
    registry
        .archive_version(model, 1)
        .await
        .expect("archive v1");
    expect_err(
        registry.set_alias(model, "challenger", 1).await,
        "an alias to an archived version",
        |e| matches!(e, Error::Conflict { .. }),
    );
    expect_err(
        registry
            .load_artifact(model, &VersionSelector::Number(1))
            .await,
        "loading an archived version",
        |e| matches!(e, Error::Conflict { .. }),
    );
    registry
        .delete_alias(model, "champion")
        .await
        .expect("delete alias");
    expect_err(
        registry
            .get_version(model, &VersionSelector::Alias("champion".into()))
            .await,
        "a deleted alias",
        |e| matches!(e, Error::NotFound { .. }),
    );
    let versions = registry.list_versions(model).await.expect("list versions");
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2],
        "every version is listed, archived ones included"
    );
    assert!(
        registry
            .list_models()
            .await
            .expect("list models")
            .contains(&model.to_owned())
    );

    expect_err(
        registry
            .get_version("conformance-unknown", &VersionSelector::Latest)
            .await,
        "an unknown model",
        |e| matches!(e, Error::NotFound { .. }),
    );
    expect_err(
        registry
            .register(
                "../conformance",
                ModelArtifact::new("f", vec![1]),
                ModelMetadata::default(),
            )
            .await,
        "a model name that could escape its directory",
        |e| matches!(e, Error::InvalidInput { .. }),
    );
    let tampered = ModelArtifact {
        bytes: b"not what was hashed".to_vec().into(),
        ..ModelArtifact::new("flavor-a", b"original".to_vec())
    };
    expect_err(
        registry
            .register(model, tampered, ModelMetadata::default())
            .await,
        "an artifact whose bytes do not match its digest",
        |e| matches!(e, Error::Integrity { .. } | Error::InvalidInput { .. }),
    );
    assert_eq!(
        registry
            .list_versions(model)
            .await
            .expect("list versions")
            .len(),
        2,
        "a refused registration leaves no version behind"
    );
}
