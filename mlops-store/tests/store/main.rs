//! Integration tests of mlops-store, in one binary. Suites are written once and run
//! against every backend available here (`memory://`, `file://`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod concurrency;
mod faults;
mod offline;
mod online;
mod registry;
mod snapshots;
mod tracking;

use mlops_store::StoreRoot;

/// A fresh, empty root of each kind.
pub fn roots(name: &str) -> Vec<StoreRoot> {
    vec![StoreRoot::open("memory://").unwrap(), local_root(name)]
}

/// A fresh directory under the target dir's temp area.
pub fn local_root(name: &str) -> StoreRoot {
    let dir = std::env::temp_dir().join(format!(
        "mlops-store-test-{}-{}-{}",
        name,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    StoreRoot::open(&format!("file://{}", dir.display())).unwrap()
}

/// The local directory of a `file://` root.
pub fn local_dir(root: &StoreRoot) -> Option<std::path::PathBuf> {
    root.url()
        .strip_prefix("file://")
        .map(std::path::PathBuf::from)
}
