//! [`RetryPolicy`] and the store wrapper that applies it: transient failures of
//! idempotent requests are retried with bounded, jittered exponential backoff.
//!
//! Only requests that are safe to repeat are retried: reads, listings, heads, and
//! unconditional writes (of immutable, content-addressed or uniquely named
//! objects). Conditional writes (create-if-absent, update-if-unchanged) are never
//! retried here: when one fails after reaching storage, only its caller can tell
//! whether it landed, and the registry, audit log and compare-and-swap cells do
//! exactly that.
//!
//! ```
//! use std::time::Duration;
//! use mlops_store::{RetryPolicy, StoreRoot};
//!
//! let mut policy = RetryPolicy::default();
//! policy.max_retries = 5;
//! policy.base_delay = Duration::from_millis(20);
//! policy.max_delay = Duration::from_secs(2);
//! let root = StoreRoot::open("memory://")?.with_retry(policy);
//! # Ok::<(), mlops_core::Error>(())
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// How transient storage failures are retried.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt, at most (0: no retries).
    pub max_retries: u32,
    /// The first wait; each retry doubles it.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries, from 50 ms up to 2 s.
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry `attempt` (from 1), with up to 50% random jitter.
    fn delay(&self, attempt: u32, jitter: u64) -> Duration {
        let exp = self.base_delay.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let capped = exp.min(self.max_delay);
        let fraction = (jitter % 1000) as f64 / 2000.0;
        capped.mul_f64(1.0 - fraction)
    }
}

/// Whether an error may go away on its own.
fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

/// Wraps a store and retries its idempotent requests under a [`RetryPolicy`].
pub(crate) struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    jitter: AtomicU64,
}

impl fmt::Debug for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryingStore")
            .field("inner", &self.inner.to_string())
            .field("policy", &self.policy)
            .finish()
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryingStore({})", self.inner)
    }
}

impl RetryingStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            jitter: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    async fn retry<T, F, Fut>(&self, op: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && attempt < self.policy.max_retries => {
                    attempt += 1;
                    let j = self
                        .jitter
                        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                    tokio::time::sleep(self.policy.delay(attempt, j >> 17)).await;
                }
                Err(e) if attempt > 0 => {
                    return Err(object_store::Error::Generic {
                        store: "RetryingStore",
                        source: format!("{op} failed after {} attempts: {e}", attempt + 1).into(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite) {
            // Conditional: its caller decides what an ambiguous failure means.
            return self.inner.put_opts(location, payload, opts).await;
        }
        self.retry("put", || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.retry("put_multipart", || {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.retry("get", || self.inner.get_opts(location, options.clone()))
            .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.retry("get_ranges", || self.inner.get_ranges(location, ranges))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.retry("list", || self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
