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
            let mut options = RegistryOptions::default();
            options.audit = Some(audit.clone());
            let r = ObjectRegistry::new(&root).with_options(options);
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

#[tokio::test]
async fn idempotent_requests_are_retried_within_the_policy() {
    use std::time::Duration;

    use mlops_store::RetryPolicy;

    let base = StoreRoot::open("memory://").unwrap();
    let faulty = Arc::new(FaultyStore::new(base.store().clone()));
    let mut policy = RetryPolicy::default();
    policy.max_retries = 3;
    policy.base_delay = Duration::from_millis(1);
    policy.max_delay = Duration::from_millis(5);
    let root = base.with_store(faulty.clone()).with_retry(policy);
    root.put("a", "x".into()).await.unwrap();
    // Two failures in a row are absorbed by the retries.
    faulty.fail_call(1);
    faulty.fail_call(2);
    assert_eq!(root.get("a").await.unwrap(), "x");
    faulty.fail_call(1);
    root.put("b", "y".into()).await.unwrap();
    // Bounded: a store that always fails gives up after 4 attempts, saying so.
    faulty.fail_every(1);
    let before = faulty.calls();
    let err = root.get("a").await.unwrap_err();
    assert_eq!(faulty.calls() - before, 4);
    assert!(err.to_string().contains("after 4 attempts"), "{err}");
    faulty.clear();
    // Conditional writes are not retried: their callers judge ambiguous outcomes.
    faulty.fail_call(1);
    assert!(root.put_if_absent("c", "z".into()).await.is_err());
    assert_eq!(faulty.calls() - before, 5);
    assert!(root.put_if_absent("c", "z".into()).await.unwrap());
    // Not-found is final.
    let before = faulty.calls();
    assert!(root.get_opt("missing").await.unwrap().is_none());
    assert_eq!(faulty.calls() - before, 1);
    // A registry over a flaky store still registers whole versions.
    faulty.fail_every(5);
    let r = ObjectRegistry::new(&root);
    let mut ok = 0;
    for i in 0..10 {
        if r.register(
            "m",
            ModelArtifact::new("x", vec![i]),
            ModelMetadata::default(),
        )
        .await
        .is_ok()
        {
            ok += 1;
        }
    }
    faulty.clear();
    assert!(ok >= 5, "{ok} of 10 registrations succeeded");
    assert_eq!(assert_whole(&r).await, ok);
}
