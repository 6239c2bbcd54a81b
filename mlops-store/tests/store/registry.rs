//! The registry's contract on every backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use mlops_core::audit::{AuditLog, ChainVerdict};
use mlops_core::model::{
    Comparison, MetricFilter, ModelArtifact, ModelMetadata, ModelRegistry, VersionQuery,
    VersionSelector, VersionStatus,
};
use mlops_core::{Error, ResourceKind};
use mlops_store::{ObjectAuditLog, ObjectRegistry, RegistryOptions, StoreRoot};

use crate::{local_dir, roots};

fn artifact(i: u8) -> ModelArtifact {
    ModelArtifact::new("burn-mlp", vec![i; 1000])
}

fn metadata(auc: f64, team: &str) -> ModelMetadata {
    let mut m = ModelMetadata::default();
    m.metrics.insert("roc_auc".into(), auc);
    m.tags.insert("team".into(), team.into());
    m.params.insert("hidden".into(), "64".into());
    m.lineage.run_id = Some("run-1".into());
    m.lineage.dataset_snapshot_id = Some("snap-1".into());
    m.lineage.feature_refs = vec!["tx:amount".parse().unwrap()];
    m
}

#[tokio::test]
async fn versions_aliases_and_search() {
    for root in roots("registry") {
        let audit = Arc::new(ObjectAuditLog::new(&root));
        let mut options = RegistryOptions::default();
        options.actor = Some("ci".into());
        options.audit = Some(audit.clone());
        let r = ObjectRegistry::new(&root).with_options(options);
        let v1 = r
            .register("fraud", artifact(1), metadata(0.81, "risk"))
            .await
            .unwrap();
        let v2 = r
            .register("fraud", artifact(2), metadata(0.86, "risk"))
            .await
            .unwrap();
        let v3 = r
            .register("fraud", artifact(1), metadata(0.79, "growth"))
            .await
            .unwrap();
        assert_eq!((v1.version, v2.version, v3.version), (1, 2, 3));
        assert_eq!(v1.digest, v3.digest, "identical artifacts share one blob");
        assert_eq!(v1.created_by, "ci");
        r.register("churn", artifact(9), ModelMetadata::default())
            .await
            .unwrap();

        assert_eq!(
            r.get_version("fraud", &VersionSelector::Latest)
                .await
                .unwrap()
                .version,
            3
        );
        assert_eq!(
            r.get_version("fraud", &VersionSelector::Number(2))
                .await
                .unwrap()
                .metadata
                .metrics["roc_auc"],
            0.86
        );
        r.set_alias("fraud", "champion", 2).await.unwrap();
        r.set_alias("fraud", "challenger", 3).await.unwrap();
        let (v, a) = r
            .load_artifact("fraud", &"@champion".parse().unwrap())
            .await
            .unwrap();
        assert_eq!((v.version, a.bytes[0]), (2, 2));
        r.set_alias("fraud", "champion", 3).await.unwrap();
        assert_eq!(
            r.aliases("fraud").await.unwrap(),
            BTreeMap::from([("challenger".into(), 3), ("champion".into(), 3)])
        );
        r.delete_alias("fraud", "challenger").await.unwrap();
        assert!(matches!(
            r.delete_alias("fraud", "challenger").await.unwrap_err(),
            Error::NotFound {
                kind: ResourceKind::Alias,
                ..
            }
        ));

        assert_eq!(r.list_models().await.unwrap(), vec!["churn", "fraud"]);
        assert_eq!(
            r.list_versions("fraud")
                .await
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let q = VersionQuery {
            tags: BTreeMap::from([("team".into(), "risk".into())]),
            metrics: vec![MetricFilter {
                metric: "roc_auc".into(),
                op: Comparison::Gt,
                value: 0.8,
            }],
            ..Default::default()
        };
        let found: Vec<u64> = r
            .search_versions(&q)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(found, vec![1, 2]);

        // Archival: not while an alias points at it; then hidden from latest.
        let err = r.archive_version("fraud", 3).await.unwrap_err();
        assert!(
            matches!(err, Error::Conflict { .. }) && err.to_string().contains("alias 'champion'"),
            "{err}"
        );
        r.set_alias("fraud", "champion", 2).await.unwrap();
        let archived = r.archive_version("fraud", 3).await.unwrap();
        assert_eq!(archived.status, VersionStatus::Archived);
        assert_eq!(
            r.get_version("fraud", &VersionSelector::Latest)
                .await
                .unwrap()
                .version,
            2
        );
        let err = r.set_alias("fraud", "champion", 3).await.unwrap_err();
        assert!(
            matches!(err, Error::Conflict { .. }) && err.to_string().contains("archived"),
            "{err}"
        );
        assert!(
            !r.search_versions(&VersionQuery::default())
                .await
                .unwrap()
                .iter()
                .any(|v| v.version == 3 && v.model == "fraud")
        );

        // Every change is in the audit log, and the chain holds.
        let entries = audit.entries(1, 100).await.unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e.event.action.as_str()).collect();
        assert_eq!(actions.iter().filter(|a| **a == "register").count(), 4);
        assert!(
            actions.contains(&"set_alias")
                && actions.contains(&"delete_alias")
                && actions.contains(&"archive")
        );
        assert!(matches!(
            audit.verify().await.unwrap(),
            ChainVerdict::Intact { .. }
        ));
    }
}

#[tokio::test]
async fn bad_input_and_unknown_names() {
    for root in roots("registry-bad") {
        let r = ObjectRegistry::new(&root);
        for bad in ["", "../x", "a/b", "with space"] {
            let err = r
                .register(bad, artifact(1), ModelMetadata::default())
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput { .. }),
                "{bad:?}: {err:?}"
            );
        }
        let err = r
            .get_version("nope", &VersionSelector::Latest)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        r.register("m", artifact(1), ModelMetadata::default())
            .await
            .unwrap();
        let err = r
            .get_version("m", &VersionSelector::Number(7))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("model version not found: m@7"),
            "{err}"
        );
        let err = r
            .get_version("m", &"@gold".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("alias not found: m@gold"), "{err}");
        let err = r.set_alias("m", "champion", 9).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        let err = r.set_alias("m", "latest", 1).await.unwrap_err();
        assert!(err.to_string().contains("version selectors"), "{err}");
        let err = r.set_alias("ghost", "champion", 1).await.unwrap_err();
        assert!(err.to_string().contains("model not found: ghost"), "{err}");

        let big = ModelMetadata {
            description: "x".repeat(300 * 1024),
            ..Default::default()
        };
        let err = r.register("m", artifact(2), big).await.unwrap_err();
        assert!(err.to_string().contains("the limit is 262144"), "{err}");
        let mut nan = ModelMetadata::default();
        nan.metrics.insert("loss".into(), f64::NAN);
        let err = r.register("m", artifact(2), nan).await.unwrap_err();
        assert!(err.to_string().contains("metric 'loss' is NaN"), "{err}");
        let mut tampered = artifact(3);
        tampered.bytes = vec![4u8; 1000].into();
        assert!(matches!(
            r.register("m", tampered, ModelMetadata::default())
                .await
                .unwrap_err(),
            Error::Integrity { .. }
        ));
        assert_eq!(
            r.list_versions("m").await.unwrap().len(),
            1,
            "nothing refused was stored"
        );
    }
}

#[tokio::test]
async fn corrupted_storage_is_detected() {
    let root = crate::local_root("registry-corrupt");
    let dir = local_dir(&root).unwrap();
    let r = ObjectRegistry::new(&root);
    let v = r
        .register("m", artifact(5), ModelMetadata::default())
        .await
        .unwrap();
    // Flip one byte of the stored artifact.
    let blob = dir.join("registry/blobs/sha256").join(v.digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let err = r
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }), "{err:?}");
    assert!(
        err.to_string().contains("model m version 1 artifact"),
        "{err}"
    );
    // A manifest that is not JSON.
    r.register("m", artifact(6), ModelMetadata::default())
        .await
        .unwrap();
    std::fs::write(
        dir.join("registry/models/m/versions/00000000000000000002.json"),
        b"{ not json",
    )
    .unwrap();
    let err = r
        .get_version("m", &VersionSelector::Number(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Integrity { .. })
            && err.to_string().contains("not a valid model manifest"),
        "{err}"
    );
    // A missing blob.
    std::fs::remove_file(&blob).unwrap();
    let err = r
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing from storage"), "{err}");
}

#[tokio::test]
async fn signatures_are_required_when_configured() {
    let root = StoreRoot::open("memory://").unwrap();
    let key_a = SigningKey::from_bytes(&[7u8; 32]);
    let key_b = SigningKey::from_bytes(&[9u8; 32]);
    let mut signing = RegistryOptions::default();
    signing.signing_key = Some(("a".into(), key_a.clone()));
    let signer = ObjectRegistry::new(&root).with_options(signing);
    let plain = ObjectRegistry::new(&root);
    let signed = signer
        .register("m", artifact(1), metadata(0.9, "risk"))
        .await
        .unwrap();
    assert_eq!(signed.signature.as_ref().unwrap().algorithm, "ed25519");
    plain
        .register("m", artifact(2), ModelMetadata::default())
        .await
        .unwrap();

    let trusting = |keys: Vec<(&str, &SigningKey)>| {
        let mut options = RegistryOptions::default();
        options.trusted_keys = keys
            .into_iter()
            .map(|(id, k)| (id.to_owned(), k.verifying_key()))
            .collect();
        // Trusting keys is enough: require_signatures is not needed to refuse
        // unsigned versions and unknown signers.
        ObjectRegistry::new(&root).with_options(options)
    };
    trusting(vec![("a", &key_a)])
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap();
    let err = trusting(vec![("a", &key_a)])
        .load_artifact("m", &VersionSelector::Number(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    let err = trusting(vec![("b", &key_b)])
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");
    // A key id that is trusted but holds another key: the signature fails.
    let err = trusting(vec![("a", &key_b)])
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[tokio::test]
async fn archived_versions_do_not_load_unless_asked_for_explicitly() {
    let root = StoreRoot::open("memory://").unwrap();
    let r = ObjectRegistry::new(&root);
    for i in 1..=2u8 {
        r.register("m", artifact(i), ModelMetadata::default())
            .await
            .unwrap();
    }
    r.archive_version("m", 1).await.unwrap();
    let err = r
        .load_artifact("m", &VersionSelector::Number(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }) && err.to_string().contains("archived"),
        "{err}"
    );
    let (v, a) = r.load_archived_artifact("m", 1).await.unwrap();
    assert_eq!(
        (v.version, a.bytes.as_ref()),
        (1, artifact(1).bytes.as_ref())
    );
    r.load_artifact("m", &VersionSelector::Latest)
        .await
        .unwrap();
}

#[tokio::test]
async fn listing_after_many_registrations_sees_them_all() {
    for root in roots("registry-list") {
        let r = ObjectRegistry::new(&root);
        for i in 0..12u8 {
            r.register("m", artifact(i), ModelMetadata::default())
                .await
                .unwrap();
        }
        r.set_alias("m", "champion", 12).await.unwrap();
        r.load_artifact("m", &"@champion".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(r.list_versions("m").await.unwrap().len(), 12);
        // A second registry instance (another process) sees the same.
        let other = ObjectRegistry::new(&root);
        assert_eq!(other.list_versions("m").await.unwrap().len(), 12);
        r.register("m", artifact(99), ModelMetadata::default())
            .await
            .unwrap();
        assert_eq!(
            other.list_versions("m").await.unwrap().len(),
            13,
            "new versions are seen"
        );
    }
}

/// On local disk (no update-if-unchanged) every state change is a new object:
/// reading the state must not list them all.
#[tokio::test]
async fn local_state_reads_do_not_list_the_history() {
    let base = crate::local_root("cas-history");
    let faulty = Arc::new(mlops_store::FaultyStore::new(base.store().clone()));
    let root = base.with_store(faulty.clone());
    let r = ObjectRegistry::new(&root);
    for i in 1..=2u8 {
        r.register("m", artifact(i), ModelMetadata::default())
            .await
            .unwrap();
    }
    for i in 0..300u64 {
        r.set_alias("m", "champion", 1 + i % 2).await.unwrap();
    }
    let before = faulty.objects_listed();
    let fresh = ObjectRegistry::new(&root);
    assert_eq!(fresh.aliases("m").await.unwrap()["champion"], 2);
    let listed = faulty.objects_listed() - before;
    assert!(listed < 20, "one read listed {listed} objects");
}

/// Stage separation in the registry: only the release principal moves
/// `champion`; a denial names principal, action and resource, writes nothing
/// but its audit entry, and every decision is audited with the principal.
#[tokio::test]
async fn only_the_release_principal_moves_champion() {
    use mlops_core::access::Policy;
    use mlops_core::audit::AuditLog as _;
    let policy = Policy::parse(
        r#"
[roles.release]
grants = [{ actions = ["promote"], resources = ["alias:*@champion"] }]
[roles.training]
grants = [{ actions = ["register"], resources = ["model:*"] },
          { actions = ["promote"], resources = ["alias:*@challenger"] }]
[principals]
release-bot = ["release"]
trainer = ["training"]
"#,
        "toml",
        "test policy",
    )
    .unwrap();
    let root = mlops_store::StoreRoot::open("memory://").unwrap();
    let audit = std::sync::Arc::new(mlops_store::ObjectAuditLog::new(&root));
    let as_principal = |who: &str| {
        mlops_store::ObjectRegistry::new(&root)
            .with_audit(audit.clone())
            .with_authorizer(std::sync::Arc::new(policy.clone()))
            .with_actor(who)
    };
    let (trainer, release) = (as_principal("trainer"), as_principal("release-bot"));
    let artifact = || mlops_core::model::ModelArtifact::new("test", vec![1, 2, 3]);
    let meta = mlops_core::model::ModelMetadata::default;
    trainer.register("fraud", artifact(), meta()).await.unwrap();
    trainer.set_alias("fraud", "challenger", 1).await.unwrap();
    // The trainer may not move champion, nor archive; the release bot may not
    // register.
    let denied = trainer.set_alias("fraud", "champion", 1).await.unwrap_err();
    let text = denied.to_string();
    assert!(
        matches!(denied, mlops_core::Error::Forbidden { .. })
            && text.contains("trainer")
            && text.contains("promote")
            && text.contains("alias:fraud@champion"),
        "{text}"
    );
    assert!(trainer.archive_version("fraud", 1).await.is_err());
    assert!(release.register("fraud", artifact(), meta()).await.is_err());
    let aliases = trainer.aliases("fraud").await.unwrap();
    assert_eq!(
        aliases.get("champion"),
        None,
        "nothing written: {aliases:?}"
    );
    assert_eq!(trainer.list_versions("fraud").await.unwrap().len(), 1);
    release.set_alias("fraud", "champion", 1).await.unwrap();
    // Every decision is on record with its principal.
    let entries = audit.entries(1, 1000).await.unwrap();
    let decision = |action: &str, actor: &str, target: &str| {
        entries
            .iter()
            .any(|e| e.event.action == action && e.event.actor == actor && e.event.target == target)
    };
    assert!(decision("access.deny", "trainer", "alias:fraud@champion"));
    assert!(decision("access.deny", "release-bot", "model:fraud"));
    assert!(decision(
        "access.allow",
        "release-bot",
        "alias:fraud@champion"
    ));
    assert!(decision("access.allow", "trainer", "model:fraud"));
}
