//! The Redis online store (cargo feature `redis`).
//!
//! Key layout: one hash per entity and view table,
//! `<namespace>:<view>:<table>:<key>` where `<table>` is 16 hex digits of the
//! SHA-256 of the view's key and feature list (so a changed view starts afresh) and
//! `<key>` is the hex of the entity key in Arrow's row format. Fields: `e` (event
//! time, µs), `c` (created time, µs, 0 without a created-time column) and `v` (the
//! features in Arrow's row format). A Lua script replaces a hash only with a
//! strictly newer (event, created) row, atomically; with a TTL the hash expires
//! at event time + 2 x TTL, so a value past its TTL is still reported as
//! `OUTSIDE_MAX_AGE` for a while before it disappears. Reads are one pipelined
//! round trip of `HMGET`s.

use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use mlops_core::feature::FeatureView;
use mlops_core::model::ContentDigest;
use mlops_core::{Error, Result};
use redis::aio::ConnectionManager;

use super::encode::Codec;
use super::{OnlineRead, OnlineRow, OnlineStore};

/// Identifies the table of a view: its name and everything its rows' encoding
/// depends on (key and feature names and types).
fn table_key(view: &FeatureView) -> String {
    let features: Vec<String> = view
        .features
        .iter()
        .map(|f| format!("{}:{}", f.name, f.data_type))
        .collect();
    let keys: Vec<String> = view
        .join_keys
        .iter()
        .map(|k| format!("{}:{}", k.name, k.data_type))
        .collect();
    format!("{}|{}|{}", view.name, keys.join(","), features.join(","))
}

const WRITE_SCRIPT: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'e', 'c')
if cur[1] then
  local ce = tonumber(cur[1])
  local cc = tonumber(cur[2])
  local e = tonumber(ARGV[1])
  local c = tonumber(ARGV[2])
  if e < ce or (e == ce and c <= cc) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'c', ARGV[2], 'v', ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
return 1
"#;

/// An [`OnlineStore`] on Redis. Clones share one multiplexed, reconnecting
/// connection.
#[derive(Clone)]
pub struct RedisOnlineStore {
    connection: ConnectionManager,
    namespace: Arc<str>,
    script_sha: Arc<str>,
}

impl std::fmt::Debug for RedisOnlineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOnlineStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn redis_error(e: redis::RedisError) -> Error {
    Error::backend("redis", e)
}

impl RedisOnlineStore {
    /// Connects to `url` (`redis://host:port/db`); every key starts with
    /// `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            // The URL may hold a password: the error names the setting only.
            .map_err(|e| Error::invalid_input("Redis URL", e.to_string()))?;
        let connection = ConnectionManager::new(client).await.map_err(redis_error)?;
        Ok(Self {
            connection,
            namespace: namespace.into(),
            script_sha: redis::Script::new(WRITE_SCRIPT).get_hash().into(),
        })
    }

    fn key_prefix(&self, view: &FeatureView) -> String {
        let digest = ContentDigest::of(table_key(view).as_bytes());
        format!("{}:{}:{}", self.namespace, view.name, &digest.hex()[..16])
    }
}

#[async_trait]
impl OnlineStore for RedisOnlineStore {
    async fn write(&self, view: &FeatureView, rows: &RecordBatch) -> Result<usize> {
        let encoded = Codec::new(view)?.encode_rows(view, rows)?;
        let (key_rows, value_rows, event, created) =
            (encoded.keys, encoded.values, encoded.event, encoded.created);
        let ttl_ms = view
            .ttl
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let prefix = self.key_prefix(view);
        let mut con = self.connection.clone();
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(WRITE_SCRIPT)
            .query_async::<String>(&mut con)
            .await
            .map_err(redis_error)?;
        let mut changed = 0usize;
        // Bounded pipelines keep each request a reasonable size.
        for chunk_start in (0..rows.num_rows()).step_by(1000) {
            let mut pipe = redis::pipe();
            for i in chunk_start..(chunk_start + 1000).min(rows.num_rows()) {
                let expire_at_ms = ttl_ms.map_or(0, |ttl| {
                    (event[i] / 1000)
                        .saturating_add(ttl.saturating_mul(2))
                        .max(1)
                });
                pipe.cmd("EVALSHA")
                    .arg(&*self.script_sha)
                    .arg(1)
                    .arg(format!("{prefix}:{}", hex::encode(key_rows.row(i).data())))
                    .arg(event[i])
                    .arg(created.as_ref().map_or(0, |c| c[i]))
                    .arg(value_rows.row(i).data())
                    .arg(expire_at_ms);
            }
            let results: Vec<i64> = pipe.query_async(&mut con).await.map_err(redis_error)?;
            changed += results.iter().filter(|&&r| r == 1).count();
        }
        Ok(changed)
    }

    async fn read(
        &self,
        view: &FeatureView,
        keys: &RecordBatch,
        features: &[String],
    ) -> Result<OnlineRead> {
        let codec = Codec::new(view)?;
        let (wanted, key_rows) = codec.plan_read(view, keys, features)?;
        let prefix = self.key_prefix(view);
        let mut pipe = redis::pipe();
        for i in 0..keys.num_rows() {
            pipe.cmd("HMGET")
                .arg(format!("{prefix}:{}", hex::encode(key_rows.row(i))))
                .arg("e")
                .arg("c")
                .arg("v");
        }
        let mut con = self.connection.clone();
        let answers: Vec<(Option<i64>, Option<i64>, Option<Vec<u8>>)> =
            pipe.query_async(&mut con).await.map_err(redis_error)?;
        let mut found: Vec<Vec<u8>> = Vec::new();
        let mut rows = Vec::with_capacity(answers.len());
        for (e, c, v) in answers {
            rows.push(match (e, v) {
                (Some(event_us), Some(values)) => {
                    found.push(values);
                    Some(OnlineRow {
                        event_us,
                        created_us: view.created_time_column.as_ref().and(c),
                        row: found.len() - 1,
                    })
                }
                _ => None,
            });
        }
        let values = codec.decode_values(view, &wanted, found.iter().map(Vec::as_slice))?;
        Ok(OnlineRead { values, rows })
    }
}
