//! Storage failing half-way: every registration and audit append either succeeds
//! or fails with an error, and in both cases nothing stored before is lost and no
//! partial version becomes visible.

use std::sync::Arc;

use mlops_core::audit::{AuditEvent, AuditLog, ChainVerdict};
use mlops_core::model::{ModelArtifact, ModelMetadata, ModelRegistry, VersionSelector};
use mlops_store::{FaultyStore, ObjectAuditLog, ObjectRegistry, RegistryOptions, StoreRoot};

/// Every visible version is complete: its manifest reads and its artifact verifies.
async fn assert_whole(r: &ObjectRegistry) -> u64 {
    let versions = r.list_versions("m").await.unwrap();
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v.version, i as u64 + 1, "versions stay gap-free");
        r.load_artifact("m", &VersionSelector::Number(v.version))
            .await
            .unwrap();
    }
    versions.len() as u64
}

#[tokio::test]
async fn a_registration_interrupted_at_any_step_leaves_no_partial_version() {
    for base in crate::roots("faults") {
        for after_write in [false, true] {
            // Count the calls a registration makes, then fail each in turn.
            let faulty = Arc::new(FaultyStore::new(base.store().clone()));
            let root = base.with_store(faulty.clone());
            let audit = Arc::new(ObjectAuditLog::new(&root));
            let options = RegistryOptions {
                audit: Some(audit.clone()),
                ..Default::default()
            };
            let r = ObjectRegistry::new(&root, options);
            let mut seed = 0u8;
            let mut next_artifact = || {
                seed = seed.wrapping_add(1);
                ModelArtifact::new("burn-mlp", vec![seed; 256])
            };
            let start = faulty.calls();
            r.register("m", next_artifact(), ModelMetadata::default())
                .await
                .unwrap();
            let calls_per_registration = faulty.calls() - start + 4;
            for k in 1..=calls_per_registration {
                let before = assert_whole(&r).await;
                if after_write {
                    faulty.fail_after_write(k);
                } else {
                    faulty.fail_call(k);
                }
                let outcome = r
                    .register("m", next_artifact(), ModelMetadata::default())
                    .await;
                faulty.clear();
                let after = assert_whole(&r).await;
                match outcome {
                    Ok(v) => assert_eq!((v.version, after), (before + 1, before + 1)),
                    // A failed registration adds nothing, or one whole version when
                    // the manifest write happened but its answer was lost, or when
                    // the audit entry failed after it (which the error says).
                    Err(e) => {
                        let committed = after_write || e.to_string().contains("was done");
                        assert!(
                            after == before || (committed && after == before + 1),
                            "step {k}: {e}"
                        );
                    }
                }
                // The next registration works and takes the next number.
                let v = r
                    .register("m", next_artifact(), ModelMetadata::default())
                    .await
                    .unwrap();
                assert_eq!(v.version, after + 1, "step {k}");
                // The audit chain is never broken by a failed append.
                assert!(
                    matches!(audit.verify().await.unwrap(), ChainVerdict::Intact { .. }),
                    "step {k}"
                );
            }
        }
    }
}

#[tokio::test]
async fn audit_appends_survive_failures() {
    let base = StoreRoot::open("memory://").unwrap();
    let faulty = Arc::new(FaultyStore::new(base.store().clone()));
    let log = ObjectAuditLog::new(&base.with_store(faulty.clone()));
    log.append(AuditEvent::new("ci", "act", "first"))
        .await
        .unwrap();
    faulty.fail_every(3);
    let mut ok = 1;
    for i in 0..30 {
        if log
            .append(AuditEvent::new("ci", "act", format!("e{i}")))
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    faulty.clear();
    let verdict = log.verify().await.unwrap();
    let ChainVerdict::Intact { entries, .. } = verdict else {
        panic!("{verdict:?}")
    };
    assert!(entries >= ok, "{entries} stored, {ok} acknowledged");
}
