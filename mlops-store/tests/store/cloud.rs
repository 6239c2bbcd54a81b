//! Opening cloud roots: configuration, and clear errors for what is missing.

use mlops_store::StoreRoot;

use crate::open_root;

#[test]
fn gcs_urls_and_options_are_understood() {
    // No GCS emulator runs here: configuration only.
    let root = StoreRoot::open_with_options(
        "gs://my-bucket/models/prod",
        [("google_skip_signature".to_owned(), "true".to_owned())],
    )
    .unwrap();
    assert_eq!(root.url(), "gs://my-bucket/models/prod");
    assert_eq!(root.prefix().as_ref(), "models/prod");
    let s3 = StoreRoot::open_with_options(
        "s3://b/p",
        [
            ("aws_region".to_owned(), "eu-west-1".to_owned()),
            ("aws_skip_signature".to_owned(), "true".to_owned()),
        ],
    )
    .unwrap();
    assert_eq!(s3.prefix().as_ref(), "p");
}

#[tokio::test]
#[cfg_attr(
    not(any(mlops_s3, mlops_azure)),
    ignore = "needs an S3- or Azure-compatible server (see CONTRIBUTING.md)"
)]
async fn a_missing_bucket_or_container_is_a_clear_error() {
    let mut urls = Vec::new();
    if crate::services::s3().is_some() {
        urls.push("s3://no-such-bucket-mlops/x");
    }
    if crate::services::azure_container().is_some() {
        urls.push("az://no-such-container-mlops/x");
    }
    assert!(
        !urls.is_empty(),
        "no S3- or Azure-compatible server configured: nothing was checked"
    );
    for url in urls {
        let root = open_root(url);
        let err = root.put("a", "x".into()).await.unwrap_err().to_string();
        assert!(err.contains("no-such-"), "{url}: {err}");
        let err = root.get("a").await.unwrap_err().to_string();
        assert!(err.contains("no-such-"), "{url}: {err}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(mlops_azure),
    ignore = "needs Azurite: start it and set MLOPS_TEST_AZURE_CONTAINER (see CONTRIBUTING.md)"
)]
async fn wrong_credentials_are_a_clear_error() {
    let container = crate::services::azure_container().expect("MLOPS_TEST_AZURE_CONTAINER");
    // Azurite checks the shared key: a wrong one is refused, and the error says
    // where and why.
    let url = format!("az://{container}/creds");
    let root = StoreRoot::open_with_options(
        &url,
        [
            ("azure_storage_use_emulator".to_owned(), "true".to_owned()),
            (
                "azure_storage_account_key".to_owned(),
                "d3Jvbmcga2V5".to_owned(),
            ),
        ],
    )
    .unwrap();
    let err = root.put("a", "x".into()).await.unwrap_err().to_string();
    assert!(err.contains(&url) || err.contains("creds"), "{err}");
    assert!(
        err.to_lowercase().contains("auth") || err.contains("403"),
        "{err}"
    );
}
