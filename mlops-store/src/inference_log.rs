//! [`ObjectInferenceLog`]: the model server's inference log as Parquet files on a
//! storage root.

use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use futures_util::TryStreamExt;
use mlops_core::Result;
use mlops_core::monitoring::InferenceLogSink;

use crate::offline::write_parquet;
use crate::root::StoreRoot;

/// Writes each batch of inference records as one Parquet file under
/// `inference-log/date=YYYY-MM-DD/` of a root (Hive-style, so DuckDB, polars or
/// Spark read the log as one table). Files are created with create-if-absent
/// writes and never overwritten.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use mlops_store::{ObjectInferenceLog, StoreRoot};
/// let log = ObjectInferenceLog::new(&StoreRoot::open("memory://")?);
/// # Ok::<(), mlops_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct ObjectInferenceLog {
    root: StoreRoot,
    seq: AtomicU64,
    writer_id: u64,
}

impl ObjectInferenceLog {
    /// A log under `root`.
    pub fn new(root: &StoreRoot) -> Self {
        let writer_id =
            Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64 ^ u64::from(std::process::id());
        Self {
            root: root.clone(),
            seq: AtomicU64::new(0),
            writer_id,
        }
    }

    /// The Parquet files of the log (paths relative to the root), oldest first.
    pub async fn files(&self) -> Result<Vec<String>> {
        let dir = self.root.path("inference-log");
        let metas: Vec<object_store::ObjectMeta> = self
            .root
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| crate::storage_error(&self.root.describe(&dir), e))?;
        let prefix = format!("{}/", self.root.prefix());
        let mut out: Vec<String> = metas
            .iter()
            .map(|m| {
                let full = m.location.to_string();
                full.strip_prefix(&prefix)
                    .map_or(full.clone(), str::to_owned)
            })
            .collect();
        // Names sort by time within a day, and days sort by date.
        out.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
        Ok(out)
    }
}

#[async_trait]
impl InferenceLogSink for ObjectInferenceLog {
    async fn write(&self, records: RecordBatch) -> Result<()> {
        if records.num_rows() == 0 {
            return Ok(());
        }
        let bytes = Bytes::from(write_parquet(&records)?);
        let now = Utc::now();
        let day = Utc
            .timestamp_micros(now.timestamp_micros())
            .single()
            .unwrap_or(now)
            .format("%Y-%m-%d");
        loop {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let path = format!(
                "inference-log/date={day}/{:020}-{:016x}-{seq:06}.parquet",
                now.timestamp_micros(),
                self.writer_id
            );
            if self.root.put_unique(&path, bytes.clone()).await? {
                return Ok(());
            }
        }
    }
}
