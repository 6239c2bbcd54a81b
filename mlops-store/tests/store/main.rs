//! Integration tests of mlops-store, in one binary. Suites are written once and run
//! against every backend available: `memory://` and `file://` always, an
//! S3-compatible server when `MLOPS_TEST_S3_ENDPOINT` is set (with
//! `MLOPS_TEST_S3_BUCKET`, default `mlops-test`) or `moto_server` is installed
//! (then started here), and an Azure Blob-compatible server (Azurite) when
//! `MLOPS_TEST_AZURE_CONTAINER` is set. `.ci/run` starts both. A backend that is
//! not available shows as an ignored `storage_suites_ran_on_*` test, with the
//! reason: see `services.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod cloud;
mod concurrency;
mod conformance;
mod faults;
mod large;
mod offline;
mod online;
mod registry;
mod score;
mod services;
mod snapshots;
mod tracking;

use std::sync::atomic::{AtomicU64, Ordering};

use mlops_store::StoreRoot;

/// A store root for one test. A `file://` root lives in a fresh temporary
/// directory that is removed when this is dropped (at the end of the test, or of
/// the `for root in roots(..)` loop); cloud roots get a unique prefix on a test
/// server that lives only as long as the test run. Derefs to [`StoreRoot`].
#[derive(Debug)]
pub struct TestRoot {
    root: StoreRoot,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for TestRoot {
    type Target = StoreRoot;

    fn deref(&self) -> &StoreRoot {
        &self.root
    }
}

impl From<StoreRoot> for TestRoot {
    fn from(root: StoreRoot) -> Self {
        Self { root, _dir: None }
    }
}

/// A fresh `memory://` root.
pub fn memory_root() -> TestRoot {
    StoreRoot::open("memory://").unwrap().into()
}

/// A fresh, empty root of each kind available: `memory://`, `file://`, and the S3-
/// and Azure-compatible servers when configured (every one the build found).
pub fn roots(name: &str) -> Vec<TestRoot> {
    let mut out = vec![memory_root(), local_root(name)];
    out.extend(cloud_roots(name));
    assert!(
        out.len() >= 2,
        "no roots made for {name}: the suites would not run"
    );
    out
}

/// Waits for a spawned task, at most two minutes; panics naming `what` when it
/// did not finish by then (a deadlock or a hang becomes a failure) or panicked.
pub async fn join<T>(what: &str, task: tokio::task::JoinHandle<T>) -> T {
    let limit = std::time::Duration::from_secs(120);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what} failed: {e}"),
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// A unique suffix for test prefixes and namespaces: the process id, the time
/// and a counter, so two calls in one process never collide either.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fresh roots on the S3- and Azure-compatible test servers, when configured;
/// one of each server the build script found (`cfg(mlops_s3)`, `cfg(mlops_azure)`)
/// without fail.
pub fn cloud_roots(name: &str) -> Vec<TestRoot> {
    let mut out = Vec::new();
    if let Some((_, bucket)) = services::s3() {
        out.push(open_root(&format!("s3://{bucket}/{}", unique(name))).into());
    }
    if let Some(container) = services::azure_container() {
        out.push(open_root(&format!("az://{container}/{}", unique(name))).into());
    }
    let has = |scheme: &str| out.iter().any(|r: &TestRoot| r.url().starts_with(scheme));
    assert!(
        !cfg!(mlops_s3) || has("s3://"),
        "the build found an S3-compatible server, but {name} got no s3:// root"
    );
    assert!(
        !cfg!(mlops_azure) || has("az://"),
        "the build found an Azure Blob-compatible server, but {name} got no az:// root"
    );
    out
}

/// Opens `url` with the test servers' options (endpoint, credentials, plain HTTP).
pub fn open_root(url: &str) -> StoreRoot {
    let options: Vec<(String, String)> = if url.starts_with("s3://") {
        let (endpoint, _) = services::s3().expect("an S3 root without an S3 server");
        [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_virtual_hosted_style_request", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    } else if url.starts_with("az://") {
        vec![("azure_storage_use_emulator".into(), "true".into())]
    } else {
        Vec::new()
    };
    StoreRoot::open_with_options(url, options).unwrap()
}

/// A `file://` root in a fresh temporary directory (a unique name), removed
/// with everything in it when the returned root is dropped.
pub fn local_root(name: &str) -> TestRoot {
    let dir = tempfile::Builder::new()
        .prefix(&format!("mlops-store-test-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("no temporary directory for {name}: {e}"));
    let root = StoreRoot::open(&format!("file://{}", dir.path().display())).unwrap();
    TestRoot {
        root,
        _dir: Some(dir),
    }
}

/// The local directory of a `file://` root.
pub fn local_dir(root: &StoreRoot) -> Option<std::path::PathBuf> {
    root.url()
        .strip_prefix("file://")
        .map(std::path::PathBuf::from)
}

/// The storage suites above ran on an S3-compatible server too.
#[test]
#[cfg_attr(
    not(mlops_s3),
    ignore = "no S3-compatible server: the storage suites ran on memory:// and file:// only \
              (install moto[server] so moto_server is on PATH, or set MLOPS_TEST_S3_ENDPOINT; \
              see CONTRIBUTING.md)"
)]
fn storage_suites_ran_on_s3() {
    assert!(services::cloud_backends().contains(&"s3"));
}

/// The storage suites above ran on an Azure Blob-compatible server too.
#[test]
#[cfg_attr(
    not(mlops_azure),
    ignore = "no Azure Blob-compatible server: the storage suites ran on memory:// and file:// \
              only (start Azurite and set MLOPS_TEST_AZURE_CONTAINER; see CONTRIBUTING.md)"
)]
fn storage_suites_ran_on_azure() {
    assert!(services::cloud_backends().contains(&"azure"));
}
