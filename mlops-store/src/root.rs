//! One place where everything persistent lives: an object store and a prefix in it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use mlops_core::{Error, Result};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
};
use url::Url;

use crate::error::storage_error;

/// An object store and the prefix under which the SDK keeps its files.
///
/// Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct StoreRoot {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    conditional_update: bool,
    multipart_threshold: usize,
}

/// Objects of at least this many bytes are written as multipart uploads.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 16 << 20;
/// The part size of multipart uploads (S3 needs at least 5 MiB).
const MULTIPART_PART: usize = 8 << 20;

impl fmt::Debug for StoreRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreRoot")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("conditional_update", &self.conditional_update)
            .finish_non_exhaustive()
    }
}

impl StoreRoot {
    /// The URL schemes this build can open: `file` and `memory` always, `s3`,
    /// `gs` and `az` where the `aws`, `gcp` and `azure` cargo features are on.
    /// Any other scheme is refused by [`open`](Self::open) with an error that
    /// names the feature it needs.
    pub fn backends() -> Vec<&'static str> {
        let mut schemes = vec!["file", "memory"];
        for (scheme, built) in [
            ("s3", cfg!(feature = "aws")),
            ("gs", cfg!(feature = "gcp")),
            ("az", cfg!(feature = "azure")),
        ] {
            if built {
                schemes.push(scheme);
            }
        }
        schemes
    }

    /// Opens the root at `url` (see the crate docs for the URL forms); cloud
    /// backends read their configuration from the environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*` variables).
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with_options(url, Self::options_from_env())
    }

    /// The cloud backends' options found in the environment: every `AWS_*`,
    /// `GOOGLE_*` and `AZURE_*` variable as a lower-case option key (so web
    /// identity, `GOOGLE_APPLICATION_CREDENTIALS` and the like apply). Put
    /// explicit options after these to override them in
    /// [`open_with_options`](Self::open_with_options); keys a backend does not
    /// know are ignored.
    pub fn options_from_env() -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| {
                k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    }

    /// Opens the root at `url` with explicit backend options (for S3 e.g.
    /// `aws_endpoint`, `aws_region`, `aws_allow_http`, `aws_access_key_id`).
    pub fn open_with_options(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let bad = |reason: String| Error::invalid_input(format!("store URL {url:?}"), reason);
        if url.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if !url.contains("://") {
            return Self::open_local(PathBuf::from(url), url);
        }
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (scheme, _) = ObjectStoreScheme::parse(&parsed).map_err(|_| {
            bad(format!(
                "unsupported scheme {:?}; use file://, memory://, s3://, gs:// or az://",
                parsed.scheme()
            ))
        })?;
        match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute local path".into()))?;
                Self::open_local(dir, url)
            }
            ObjectStoreScheme::Memory => {
                let prefix = Path::parse(parsed.path()).map_err(|e| bad(e.to_string()))?;
                Ok(Self {
                    url: url.to_owned(),
                    store: Arc::new(InMemory::new()),
                    prefix,
                    conditional_update: true,
                    multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
                })
            }
            ObjectStoreScheme::AmazonS3 if !cfg!(feature = "aws") => Err(bad(
                "s3:// needs the `aws` cargo feature of mlops-store (or mlops)".into(),
            )),
            ObjectStoreScheme::GoogleCloudStorage if !cfg!(feature = "gcp") => Err(bad(
                "gs:// needs the `gcp` cargo feature of mlops-store (or mlops)".into(),
            )),
            ObjectStoreScheme::MicrosoftAzure if !cfg!(feature = "azure") => Err(bad(
                "az:// needs the `azure` cargo feature of mlops-store (or mlops)".into(),
            )),
            ObjectStoreScheme::Http => Err(bad(
                "http(s):// stores are read-only and not supported as a root".into(),
            )),
            _ => {
                let (store, prefix) = object_store::parse_url_opts(&parsed, options)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Self {
                    url: url.to_owned(),
                    store: Arc::from(store),
                    prefix,
                    conditional_update: true,
                    multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
                })
            }
        }
    }

    fn open_local(dir: PathBuf, url: &str) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::storage(url, e))?;
        // Every write is fsynced, with its directory: a power loss cannot truncate
        // a commit or a state and leave a view unreadable.
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| storage_error(url, e))?
            .with_fsync(true);
        Ok(Self {
            url: url.to_owned(),
            store: Arc::new(store),
            prefix: Path::default(),
            // LocalFileSystem answers update-if-unchanged with NotImplemented.
            conditional_update: false,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
        })
    }

    /// A root over an existing store (a wrapper that injects faults or counts
    /// requests, say), under `prefix`. It is assumed to support update-if-unchanged
    /// writes (`PutMode::Update`); say otherwise with
    /// [`StoreRoot::with_conditional_update`].
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: Path, url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            store,
            prefix,
            conditional_update: true,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
        }
    }

    /// The same root over another store (e.g. this root's store wrapped to inject
    /// faults), keeping the URL, prefix and capabilities.
    pub fn with_store(&self, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            ..self.clone()
        }
    }

    /// Declares whether the backend supports update-if-unchanged writes
    /// (`PutMode::Update`). Without them, mutable objects are kept as create-only
    /// sequences instead (see the crate docs' storage layout).
    pub fn with_conditional_update(mut self, supported: bool) -> Self {
        self.conditional_update = supported;
        self
    }

    /// Whether the backend supports update-if-unchanged writes: memory, S3, GCS and
    /// Azure do; the local file system does not.
    pub fn supports_conditional_update(&self) -> bool {
        self.conditional_update
    }

    /// The URL the root was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix inside the store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The full path of `relative` (slash-separated) under the root. Segments are
    /// percent-encoded by `object_store` where needed, so a name cannot escape the
    /// root.
    pub fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(self.prefix.clone(), |p, segment| p.join(segment))
    }

    /// Retries transient failures of idempotent requests (reads, heads,
    /// delimiter listings, unconditional writes) under `policy`; see
    /// [`RetryPolicy`](crate::RetryPolicy). Conditional writes are left to their
    /// callers, which already handle ambiguous outcomes.
    pub fn with_retry(&self, policy: crate::RetryPolicy) -> Self {
        self.with_store(Arc::new(crate::retry::RetryingStore::new(
            self.store.clone(),
            policy,
        )))
    }

    /// Writes objects of at least `bytes` bytes as multipart uploads (8 MiB
    /// parts, uploaded concurrently) instead of one request. Default 16 MiB.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes.max(1);
        self
    }

    /// Uploads `bytes` in parts; a failed part or completion aborts the upload, so
    /// nothing becomes visible.
    async fn put_multipart(&self, path: &Path, bytes: Bytes) -> Result<()> {
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| storage_error(&self.describe(path), e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
        writer.put(bytes);
        writer
            .finish()
            .await
            .map_err(|e| storage_error(&self.describe(path), e))?;
        Ok(())
    }

    /// Writes `bytes` at `relative`, replacing what was there (multipart above the
    /// threshold).
    pub async fn put(&self, relative: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(relative);
        if bytes.len() >= self.multipart_threshold {
            return self.put_multipart(&path, bytes).await;
        }
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| storage_error(&self.describe(&path), e))?;
        Ok(())
    }

    /// Reads the whole object at `relative`.
    pub async fn get(&self, relative: &str) -> Result<Bytes> {
        let path = self.path(relative);
        let describe = self.describe(&path);
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| storage_error(&describe, e))?;
        result
            .bytes()
            .await
            .map_err(|e| storage_error(&describe, e))
    }

    /// Reads the whole object at `relative`, or `None` when there is none.
    pub async fn get_opt(&self, relative: &str) -> Result<Option<Bytes>> {
        match self.get(relative).await {
            Ok(b) => Ok(Some(b)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes` at `relative` only if nothing is there, in one conditional
    /// request (`PutMode::Create`, atomic on every backend) whatever the size:
    /// `true` when written, `false` when an object already existed (it is left
    /// untouched). Every control object (manifests, commits, audit entries, state
    /// cells) is written this way.
    pub async fn put_if_absent(&self, relative: &str, bytes: Bytes) -> Result<bool> {
        let path = self.path(relative);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(storage_error(&self.describe(&path), e)),
        }
    }

    /// Writes `bytes` at `relative` unless an object is there: for names no two
    /// writers choose for different bytes (content addresses, unique file names)
    /// only. Above the multipart threshold the check and the upload are two steps
    /// (a multipart upload cannot be conditional), which is safe for such names
    /// and only for them: anything else uses [`put_if_absent`](Self::put_if_absent).
    pub async fn put_unique(&self, relative: &str, bytes: Bytes) -> Result<bool> {
        if bytes.len() < self.multipart_threshold {
            return self.put_if_absent(relative, bytes).await;
        }
        let path = self.path(relative);
        match self.store.head(&path).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_error(&self.describe(&path), e)),
        }
        self.put_multipart(&path, bytes).await?;
        Ok(true)
    }

    /// The numbers `n` of the objects named `<n><suffix>` under `relative`
    /// (numbered entries: versions, sequence states, audit entries), ascending.
    pub async fn list_numbered(&self, relative: &str, suffix: &str) -> Result<Vec<u64>> {
        let dir = self.path(relative);
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| storage_error(&self.describe(&dir), e))?;
        let mut numbers: Vec<u64> = metas
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .and_then(|f| f.strip_suffix(suffix))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The names of the "directories" directly under `relative`, sorted.
    pub async fn list_children(&self, relative: &str) -> Result<Vec<String>> {
        let dir = self.path(relative);
        let listing = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| storage_error(&self.describe(&dir), e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// `url` plus `path`, for messages.
    pub fn describe(&self, path: &Path) -> String {
        format!("{} ({path})", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_local_roots_store_and_read() {
        let mem = StoreRoot::open("memory:///pre").unwrap();
        mem.put("a/b.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(&mem.get("a/b.json").await.unwrap()[..], b"{}");
        assert_eq!(mem.path("a/b.json").as_ref(), "pre/a/b.json");

        let dir = std::env::temp_dir().join(format!("mlops-root-test-{}", std::process::id()));
        let local = StoreRoot::open(&format!("file://{}", dir.display())).unwrap();
        local
            .put("x/y.bin", Bytes::from_static(b"123"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("x/y.bin")).unwrap(), b"123");
        // A plain path opens the same directory.
        let plain = StoreRoot::open(dir.to_str().unwrap()).unwrap();
        assert_eq!(&plain.get("x/y.bin").await.unwrap()[..], b"123");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn missing_objects_are_not_found_errors_naming_the_path() {
        let mem = StoreRoot::open("memory://").unwrap();
        let err = mem.get("models/fraud/manifest.json").await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        assert!(
            err.to_string().contains("models/fraud/manifest.json"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn create_only_writes_and_numbered_listings() {
        for root in [
            StoreRoot::open("memory://").unwrap(),
            StoreRoot::open(
                std::env::temp_dir()
                    .join(format!("mlops-root-helpers-{}", std::process::id()))
                    .to_str()
                    .unwrap(),
            )
            .unwrap(),
        ] {
            assert!(
                root.put_if_absent("d/1.json", Bytes::from_static(b"a"))
                    .await
                    .unwrap()
            );
            assert!(
                !root
                    .put_if_absent("d/1.json", Bytes::from_static(b"b"))
                    .await
                    .unwrap()
            );
            assert_eq!(
                &root.get("d/1.json").await.unwrap()[..],
                b"a",
                "the first write stands"
            );
            root.put("d/10.json", Bytes::new()).await.unwrap();
            root.put("d/notes.txt", Bytes::new()).await.unwrap();
            root.put("d/x.json", Bytes::new()).await.unwrap();
            assert_eq!(root.list_numbered("d", ".json").await.unwrap(), vec![1, 10]);
            assert!(
                root.list_numbered("nothing-here", ".json")
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(root.get_opt("d/2.json").await.unwrap(), None);
            root.put("m/a/x", Bytes::new()).await.unwrap();
            root.put("m/b/y", Bytes::new()).await.unwrap();
            assert_eq!(root.list_children("m").await.unwrap(), vec!["a", "b"]);
        }
    }

    #[test]
    fn segments_cannot_escape_the_root() {
        let mem = StoreRoot::open("memory:///root").unwrap();
        let p = mem.path("../../etc/passwd");
        assert!(p.as_ref().starts_with("root/"), "{p}");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = StoreRoot::open("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme \"ftp\""), "{err}");
        assert!(
            StoreRoot::open("")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        // Each cloud scheme opens where its feature is built and is otherwise
        // refused naming the feature. (This crate's tests build all of them; the
        // facade's `backends_left_out_of_the_build_are_named` runs in a build
        // without them, as `.ci/run` does.)
        let built = StoreRoot::backends();
        for (url, scheme, feature) in [
            ("s3://bucket/p", "s3", "`aws`"),
            ("gs://bucket/p", "gs", "`gcp`"),
            ("az://container/p", "az", "`azure`"),
        ] {
            let result = StoreRoot::open_with_options(url, Vec::new());
            if built.contains(&scheme) {
                if let Err(e) = result {
                    assert!(!e.to_string().contains("cargo feature"), "{url}: {e}");
                }
            } else {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.contains(feature) && err.contains("cargo feature"),
                    "{err}"
                );
            }
        }
        let err = StoreRoot::open("https://example.com/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported as a root"), "{err}");
    }
}
