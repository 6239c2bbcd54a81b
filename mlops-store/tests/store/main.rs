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
mod services;
mod snapshots;
mod tracking;

use mlops_store::StoreRoot;

/// A fresh, empty root of each kind available.
pub fn roots(name: &str) -> Vec<StoreRoot> {
    let mut out = vec![StoreRoot::open("memory://").unwrap(), local_root(name)];
    out.extend(cloud_roots(name));
    out
}

/// A unique suffix for test prefixes.
fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Fresh roots on the S3- and Azure-compatible test servers, when configured.
pub fn cloud_roots(name: &str) -> Vec<StoreRoot> {
    let mut out = Vec::new();
    if let Some((_, bucket)) = services::s3() {
        out.push(open_root(&format!("s3://{bucket}/{}", unique(name))));
    }
    if let Some(container) = services::azure_container() {
        out.push(open_root(&format!("az://{container}/{}", unique(name))));
    }
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
