//! A fault-injecting [`ObjectStore`] wrapper, to prove that every operation either
//! succeeds or fails cleanly when storage misbehaves half-way.
//!
//! ```
//! # async fn demo() -> mlops_core::Result<()> {
//! use std::sync::Arc;
//! use object_store::memory::InMemory;
//! use mlops_store::{FaultyStore, StoreRoot};
//!
//! let faulty = Arc::new(FaultyStore::new(Arc::new(InMemory::new())));
//! let root = StoreRoot::from_store(faulty.clone(), Default::default(), "memory://faulty");
//! faulty.fail_call(1);                       // the next call fails before reaching storage
//! assert!(root.put("a", "x".into()).await.is_err());
//! assert!(root.put("a", "x".into()).await.is_ok());
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

#[derive(Debug, Default)]
struct Plan {
    /// Calls made so far.
    calls: u64,
    /// Absolute call numbers that fail before reaching the store.
    fail_before: BTreeSet<u64>,
    /// Absolute call numbers whose write is performed, then reported as failed.
    fail_after: BTreeSet<u64>,
    /// Every n-th call fails (0: never).
    every: u64,
    latency: Duration,
    /// Bytes returned by reads.
    bytes_read: u64,
    /// Multipart uploads started.
    multipart_uploads: u64,
    /// The next multipart upload loses its connection after this many parts.
    drop_upload_after_parts: Option<usize>,
    /// Create-if-absent writes to paths containing this answer "already exists"
    /// without writing (another writer got there first, as far as the caller
    /// can tell).
    taken: Option<String>,
}

/// What to do with one call.
enum Verdict {
    Pass,
    FailBefore(u64),
    FailAfter(u64),
}

/// Wraps a store and makes chosen calls fail: the N-th from now, every N-th, or
/// after a write has actually happened (the caller sees an error although the object
/// was stored, as after a dropped connection), optionally adding latency to every
/// call. Calls are counted across all operations.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Mutex<Plan>,
    /// Objects returned by listings (shared with the listing streams).
    listed: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner.to_string())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    /// Wraps `inner`; no faults until some are planned.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            plan: Mutex::new(Plan::default()),
            listed: Arc::default(),
        }
    }

    /// Objects returned by listings so far: how much a read had to list.
    pub fn objects_listed(&self) -> u64 {
        self.listed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn counted(
        &self,
        stream: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let listed = self.listed.clone();
        stream
            .inspect(move |_| {
                listed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .boxed()
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        // A panic while holding the lock cannot leave the plan inconsistent.
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls made through the wrapper so far.
    pub fn calls(&self) -> u64 {
        self.plan().calls
    }

    /// Bytes returned by reads so far (whole gets and ranges).
    pub fn bytes_read(&self) -> u64 {
        self.plan().bytes_read
    }

    /// Answers every create-if-absent write to a path containing `fragment`
    /// with "already exists", writing nothing: a race lost every time.
    pub fn lose_creates_under(&self, fragment: &str) {
        self.plan().taken = Some(fragment.to_owned());
    }

    /// Multipart uploads started so far.
    pub fn multipart_uploads(&self) -> u64 {
        self.plan().multipart_uploads
    }

    /// The next multipart upload uploads `parts` parts, then its connection drops:
    /// every later part and the completion fail (the upload is never visible).
    pub fn drop_upload_after_parts(&self, parts: usize) {
        self.plan().drop_upload_after_parts = Some(parts);
    }

    /// The `n`-th call from now (1 = the next) fails before reaching the store.
    pub fn fail_call(&self, n: u64) {
        let mut p = self.plan();
        let at = p.calls + n;
        p.fail_before.insert(at);
    }

    /// The `n`-th call from now is carried out, and then reported as failed if it
    /// was a write (reads and lists just fail).
    pub fn fail_after_write(&self, n: u64) {
        let mut p = self.plan();
        let at = p.calls + n;
        p.fail_after.insert(at);
    }

    /// Every `n`-th call fails before reaching the store (0 turns this off).
    pub fn fail_every(&self, n: u64) {
        self.plan().every = n;
    }

    /// Adds `latency` to every call.
    pub fn set_latency(&self, latency: Duration) {
        self.plan().latency = latency;
    }

    /// Removes every planned fault and the latency.
    pub fn clear(&self) {
        let mut p = self.plan();
        p.taken = None;
        p.fail_before.clear();
        p.fail_after.clear();
        p.every = 0;
        p.latency = Duration::ZERO;
        p.drop_upload_after_parts = None;
    }

    fn next_call(&self) -> (Verdict, Duration) {
        let mut p = self.plan();
        p.calls += 1;
        let n = p.calls;
        let verdict = if p.fail_before.remove(&n) || (p.every > 0 && n.is_multiple_of(p.every)) {
            Verdict::FailBefore(n)
        } else if p.fail_after.remove(&n) {
            Verdict::FailAfter(n)
        } else {
            Verdict::Pass
        };
        (verdict, p.latency)
    }

    async fn enter(&self, op: &str, path: &Path) -> Result<Verdict> {
        let (verdict, latency) = self.next_call();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match verdict {
            Verdict::FailBefore(n) => Err(injected(n, op, path, "before the call")),
            v => Ok(v),
        }
    }
}

fn injected(n: u64, op: &str, path: &Path, when: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault on call {n} ({op} {path}), {when}").into(),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let verdict = self.enter("put", location).await?;
        let taken = self
            .plan()
            .taken
            .as_ref()
            .is_some_and(|f| location.as_ref().contains(f.as_str()));
        if taken && matches!(opts.mode, object_store::PutMode::Create) {
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "taken by another writer (injected)".into(),
            });
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        match verdict {
            Verdict::FailAfter(n) => Err(injected(n, "put", location, "after the write")),
            _ => Ok(result),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        match self.enter("put_multipart", location).await? {
            Verdict::FailAfter(n) => Err(injected(n, "put_multipart", location, "at the start")),
            _ => {
                let upload = self.inner.put_multipart_opts(location, opts).await?;
                let drop_after = {
                    let mut p = self.plan();
                    p.multipart_uploads += 1;
                    p.drop_upload_after_parts.take()
                };
                Ok(Box::new(FaultyUpload {
                    inner: upload,
                    location: location.clone(),
                    parts_left: drop_after,
                }))
            }
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.enter("get", location).await? {
            Verdict::FailAfter(n) => Err(injected(n, "get", location, "mid-read")),
            _ => {
                let result = self.inner.get_opts(location, options).await?;
                self.plan().bytes_read += result.range.end - result.range.start;
                Ok(result)
            }
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.enter("get_ranges", location).await? {
            Verdict::FailAfter(n) => Err(injected(n, "get_ranges", location, "mid-read")),
            _ => {
                let out = self.inner.get_ranges(location, ranges).await?;
                self.plan().bytes_read += out.iter().map(|b| b.len() as u64).sum::<u64>();
                Ok(out)
            }
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (verdict, _) = self.next_call();
        match verdict {
            Verdict::Pass => self.inner.delete_stream(locations),
            Verdict::FailBefore(n) | Verdict::FailAfter(n) => {
                let e = injected(n, "delete", &Path::default(), "before the call");
                futures_util::stream::once(async move { Err(e) }).boxed()
            }
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (verdict, _) = self.next_call();
        match verdict {
            Verdict::Pass => self.counted(self.inner.list(prefix)),
            Verdict::FailBefore(n) | Verdict::FailAfter(n) => {
                let e = injected(
                    n,
                    "list",
                    prefix.unwrap_or(&Path::default()),
                    "before the call",
                );
                futures_util::stream::once(async move { Err(e) }).boxed()
            }
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (verdict, _) = self.next_call();
        match verdict {
            Verdict::Pass => self.counted(self.inner.list_with_offset(prefix, offset)),
            Verdict::FailBefore(n) | Verdict::FailAfter(n) => {
                let e = injected(
                    n,
                    "list",
                    prefix.unwrap_or(&Path::default()),
                    "before the call",
                );
                futures_util::stream::once(async move { Err(e) }).boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let p = prefix.cloned().unwrap_or_default();
        match self.enter("list", &p).await? {
            Verdict::FailAfter(n) => Err(injected(n, "list", &p, "mid-listing")),
            _ => self.inner.list_with_delimiter(prefix).await,
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let verdict = self.enter("copy", to).await?;
        self.inner.copy_opts(from, to, options).await?;
        match verdict {
            Verdict::FailAfter(n) => Err(injected(n, "copy", to, "after the write")),
            _ => Ok(()),
        }
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let verdict = self.enter("rename", to).await?;
        self.inner.rename_opts(from, to, options).await?;
        match verdict {
            Verdict::FailAfter(n) => Err(injected(n, "rename", to, "after the write")),
            _ => Ok(()),
        }
    }
}

/// A multipart upload whose connection drops after a number of parts.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    parts_left: Option<usize>,
}

impl FaultyUpload {
    fn dropped(&self, what: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "FaultyStore",
            source: format!(
                "injected fault: the connection dropped mid-upload of {} ({what})",
                self.location
            )
            .into(),
        }
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        match &mut self.parts_left {
            Some(0) => {
                let e = self.dropped("a part");
                Box::pin(async move { Err(e) })
            }
            Some(n) => {
                *n -= 1;
                self.inner.put_part(data)
            }
            None => self.inner.put_part(data),
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        if self.parts_left == Some(0) {
            return Err(self.dropped("completion"));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
