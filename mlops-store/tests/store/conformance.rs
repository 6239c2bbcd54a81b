//! The conformance kit of mlops-core (`mlops_core::testkit`) on every storage
//! backend: each trait's suite runs on a fresh root of every kind available
//! (`memory://`, `file://`, and the S3- and Azure-compatible servers when present).

use std::sync::Arc;

use mlops_core::testkit;
use mlops_store::{
    InMemoryOnlineStore, ObjectAuditLog, ObjectFeatureStore, ObjectRegistry, ObjectSnapshotStore,
    ObjectTracker,
};

use crate::roots;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_keeps_the_contract_on_every_backend() {
    for root in roots("kit-registry") {
        println!("registry on {}", root.url());
        testkit::registry::conformance(&ObjectRegistry::new(&root)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_keeps_the_contract_on_every_backend() {
    for root in roots("kit-tracker") {
        println!("tracker on {}", root.url());
        testkit::tracker::conformance(&ObjectTracker::new(&root)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_keeps_the_contract_on_every_backend() {
    for root in roots("kit-audit") {
        println!("audit log on {}", root.url());
        testkit::audit::conformance(&ObjectAuditLog::new(&root)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_keep_the_contract_on_every_backend() {
    for root in roots("kit-snapshots") {
        println!("snapshots on {}", root.url());
        testkit::snapshots::conformance(&ObjectSnapshotStore::new(&root)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feature_store_keeps_the_contract_on_every_backend() {
    for root in roots("kit-features") {
        println!("feature store on {}", root.url());
        let online = Arc::new(InMemoryOnlineStore::new());
        testkit::features::definitions(&ObjectFeatureStore::new(&root, online.clone())).await;
    }
    for root in roots("kit-features-data") {
        println!("feature store data on {}", root.url());
        let online = Arc::new(InMemoryOnlineStore::new());
        testkit::features::offline_and_online(&ObjectFeatureStore::new(&root, online)).await;
    }
}

/// The feature store with its online part in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mlops_redis),
    ignore = "needs redis-server on PATH or MLOPS_TEST_REDIS_URL (see CONTRIBUTING.md)"
)]
async fn the_feature_store_keeps_the_contract_with_redis_online() {
    let url = crate::services::redis_url();
    let namespace = crate::unique("mlops-kit");
    let online = Arc::new(
        mlops_store::RedisOnlineStore::connect(&url, &namespace)
            .await
            .unwrap(),
    );
    let root = mlops_store::StoreRoot::open("memory://").unwrap();
    testkit::features::offline_and_online(&ObjectFeatureStore::new(&root, online)).await;
}
