//! Online stores: the latest feature values per entity, for low-latency lookups
//! when serving.

mod encode;
mod fixed;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt::Debug;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use mlops_core::Result;
use mlops_core::feature::FeatureView;

pub use memory::InMemoryOnlineStore;
#[cfg(feature = "redis")]
pub use redis::RedisOnlineStore;

/// Opens the online store at `url`: `memory://` keeps the values in this
/// process's memory (nothing outlives it, and no other process sees them);
/// `redis://host:port[/db]` or `rediss://` shares them through Redis (the
/// `redis` cargo feature), every key starting with `namespace`. A URL of
/// another scheme, or Redis in a build without the feature, is
/// [`Error::InvalidInput`](mlops_core::Error::InvalidInput) naming what is
/// wrong (never the URL itself, which may hold a password).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = mlops_store::open_online_store("memory://", "mlops").await?;
/// assert!(mlops_store::open_online_store("ftp://x", "mlops").await.is_err());
/// # Ok::<(), mlops_core::Error>(()) }).unwrap();
/// ```
pub async fn open_online_store(
    url: &str,
    namespace: &str,
) -> Result<std::sync::Arc<dyn OnlineStore>> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("memory") => Ok(std::sync::Arc::new(InMemoryOnlineStore::new())),
        Some("redis" | "rediss") => open_redis(url, namespace).await,
        Some(other) => Err(mlops_core::Error::invalid_input(
            "online store URL",
            format!("unsupported scheme {other:?}: expected memory:// or redis://"),
        )),
        None => Err(mlops_core::Error::invalid_input(
            "online store URL",
            "expected memory:// or redis://host:port",
        )),
    }
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, namespace: &str) -> Result<std::sync::Arc<dyn OnlineStore>> {
    if namespace.is_empty() {
        return Err(mlops_core::Error::invalid_input(
            "online store namespace",
            "must not be empty",
        ));
    }
    Ok(std::sync::Arc::new(
        RedisOnlineStore::connect(url, namespace).await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_url: &str, _namespace: &str) -> Result<std::sync::Arc<dyn OnlineStore>> {
    Err(mlops_core::Error::invalid_input(
        "online store URL",
        "redis:// needs the `redis` cargo feature (mlops/redis), which this build lacks",
    ))
}

/// One entity's stored row for a view, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineRow {
    /// When the values became true (microseconds since the epoch, UTC).
    pub event_us: i64,
    /// When the row was written (microseconds), if the view has a created-time column.
    pub created_us: Option<i64>,
    /// Index of the row in the batch the values are in.
    pub row: usize,
}

/// The answer of [`OnlineStore::read`]: the found rows' features as one batch
/// (one row per found entity, in request order), and per requested key the index of
/// its row in that batch.
#[derive(Debug, Clone)]
pub struct OnlineRead {
    /// Feature columns (in the order asked) of the rows found.
    pub values: RecordBatch,
    /// Per requested key: its row in `values` with its times, or `None` when the
    /// store holds nothing for it.
    pub rows: Vec<Option<OnlineRow>>,
}

/// Holds the latest row per entity key and view.
///
/// Contract for implementations:
/// - `write` keeps, per key, the row with the greatest (event time, created time);
///   an older row never replaces a newer one, and writing the same rows again
///   changes nothing (idempotent);
/// - `read` answers in request order; concurrent reads do not wait for writes to
///   other keys;
/// - keys are the view's join key columns, with the view's types
///   ([`Error::SchemaMismatch`](mlops_core::Error::SchemaMismatch) otherwise).
#[async_trait]
pub trait OnlineStore: Send + Sync + Debug {
    /// Writes `rows` (the view's schema: keys, times, features) and returns how
    /// many entity rows were inserted or replaced.
    async fn write(&self, view: &FeatureView, rows: &RecordBatch) -> Result<usize>;

    /// Reads `features` of `view` for the keys in `keys` (the view's join key
    /// columns, one row per requested entity).
    async fn read(
        &self,
        view: &FeatureView,
        keys: &RecordBatch,
        features: &[String],
    ) -> Result<OnlineRead>;
}
