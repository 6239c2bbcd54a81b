//! Immutable, content-addressed dataset snapshots, like DVC's: a model's lineage
//! names the snapshot it was trained on, and resolving it proves the data is the
//! same bytes.
//!
//! Layout under the root:
//!
//! ```text
//! snapshots/<id>.json                the manifest: files with their size and digest
//! snapshots/blobs/sha256/<hex>       each file's bytes, stored once per content
//! ```
//!
//! The id is the SHA-256 of the manifest's file list (names, sizes, digests), so the
//! same data always gets the same id and a snapshot cannot change without changing
//! its id.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use mlops_core::audit::{AuditEvent, AuditLog};
use mlops_core::model::ContentDigest;
use mlops_core::{Error, ResourceKind, Result};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::root::StoreRoot;

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Its name in the snapshot (the source path, or `part-N.parquet`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes.
    pub digest: ContentDigest,
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSnapshot {
    /// Content id: SHA-256 (hex) of the file list.
    pub id: String,
    /// The files, in the order given.
    pub files: Vec<SnapshotFile>,
    /// Free text.
    pub description: String,
    /// Who took it.
    pub created_by: String,
    /// When (the first time this content was snapshotted).
    pub created_at: DateTime<Utc>,
}

/// Takes and resolves dataset snapshots under a [`StoreRoot`].
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use mlops_store::{ObjectSnapshotStore, StoreRoot};
/// let root = StoreRoot::open("memory://")?;
/// root.put("data/part-0.parquet", "not really parquet".into()).await?;
/// let snapshots = ObjectSnapshotStore::new(&root).with_actor("alice");
/// let snap = snapshots.snapshot_files(&["data/part-0.parquet"], "training set").await?;
/// assert_eq!(snapshots.resolve(&snap.id).await?.files.len(), 1);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectSnapshotStore {
    root: StoreRoot,
    audit: Option<Arc<dyn AuditLog>>,
    actor: String,
}

#[derive(Serialize)]
struct IdInput<'a> {
    files: &'a [SnapshotFile],
}

fn check_id(id: &str) -> Result<()> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::invalid_input(
            format!("snapshot id {id:?}"),
            "expected 64 lowercase hex digits",
        ))
    }
}

impl ObjectSnapshotStore {
    /// Snapshots under `root`, recording nothing in an audit log; the actor is
    /// `"unknown"` until [`with_actor`](Self::with_actor).
    pub fn new(root: &StoreRoot) -> Self {
        Self {
            root: root.clone(),
            audit: None,
            actor: "unknown".into(),
        }
    }

    /// Records every change in `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Records changes as done by `actor`.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Snapshots files already under the root (paths relative to it).
    pub async fn snapshot_files(
        &self,
        paths: &[&str],
        description: &str,
    ) -> Result<DatasetSnapshot> {
        if paths.is_empty() {
            return Err(Error::invalid_input("snapshot", "no files given"));
        }
        let mut contents = Vec::with_capacity(paths.len());
        for p in paths {
            contents.push(((*p).to_owned(), self.root.get(p).await?));
        }
        self.snapshot(contents, description).await
    }

    /// Snapshots Arrow batches (a feature-store query result, say), written as one
    /// Parquet file.
    pub async fn snapshot_batches(
        &self,
        batches: &[RecordBatch],
        description: &str,
    ) -> Result<DatasetSnapshot> {
        let first = batches
            .first()
            .ok_or_else(|| Error::invalid_input("snapshot", "no batches given"))?;
        let schema = first.schema();
        let mut buf = Vec::new();
        {
            let mut writer = ArrowWriter::try_new(&mut buf, schema.clone(), None)
                .map_err(|e| Error::backend("parquet", e))?;
            for (i, b) in batches.iter().enumerate() {
                if b.schema() != schema {
                    return Err(Error::invalid_input(
                        format!("snapshot batch {i}"),
                        "its schema differs from the first batch's",
                    ));
                }
                writer.write(b).map_err(|e| Error::backend("parquet", e))?;
            }
            writer.close().map_err(|e| Error::backend("parquet", e))?;
        }
        self.snapshot(
            vec![("part-0.parquet".to_owned(), Bytes::from(buf))],
            description,
        )
        .await
    }

    /// Snapshots named byte contents (files read from outside the root, say: the
    /// command line's `mlops datasets snapshot FILE...`). Names must be non-empty
    /// and distinct; the order given is kept and is part of the id.
    pub async fn snapshot_contents(
        &self,
        contents: Vec<(String, Bytes)>,
        description: &str,
    ) -> Result<DatasetSnapshot> {
        if contents.is_empty() {
            return Err(Error::invalid_input("snapshot", "no files given"));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &contents {
            if name.is_empty() {
                return Err(Error::invalid_input("snapshot", "a file has an empty name"));
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::invalid_input(
                    format!("snapshot file {name:?}"),
                    "given twice",
                ));
            }
        }
        self.snapshot(contents, description).await
    }

    /// Every snapshot's manifest, newest first. A manifest that does not match
    /// its id is an [`Error::Integrity`] naming it, as in [`get`](Self::get).
    pub async fn list(&self) -> Result<Vec<DatasetSnapshot>> {
        let dir = self.root.path("snapshots");
        let metas: Vec<object_store::ObjectMeta> = self
            .root
            .store()
            .list_with_delimiter(Some(&dir))
            .await
            .map(|l| l.objects)
            .map_err(|e| crate::storage_error(&self.root.describe(&dir), e))?;
        let mut out = Vec::new();
        for m in metas {
            let Some(id) = m.location.filename().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if check_id(id).is_ok() {
                out.push(self.get(id).await?);
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn snapshot(
        &self,
        contents: Vec<(String, Bytes)>,
        description: &str,
    ) -> Result<DatasetSnapshot> {
        let mut files = Vec::with_capacity(contents.len());
        for (name, bytes) in &contents {
            let digest = ContentDigest::of(bytes);
            self.root
                .put_unique(
                    &format!("snapshots/blobs/sha256/{}", digest.hex()),
                    bytes.clone(),
                )
                .await?;
            files.push(SnapshotFile {
                name: name.clone(),
                size: bytes.len() as u64,
                digest,
            });
        }
        let id_bytes = serde_json::to_vec(&IdInput { files: &files })
            .map_err(|e| Error::invalid_input("snapshot", e.to_string()))?;
        let id = ContentDigest::of(&id_bytes).hex().to_owned();
        let snapshot = DatasetSnapshot {
            id: id.clone(),
            files,
            description: description.to_owned(),
            created_by: self.actor.clone(),
            created_at: Utc::now(),
        };
        let manifest = serde_json::to_vec_pretty(&snapshot)
            .map_err(|e| Error::invalid_input("snapshot", e.to_string()))?;
        if !self
            .root
            .put_if_absent(&format!("snapshots/{id}.json"), manifest.into())
            .await?
        {
            // The same content was snapshotted before: that snapshot is this one.
            return self.get(&id).await;
        }
        if let Some(log) = &self.audit {
            log.append(
                AuditEvent::new(
                    self.actor.clone(),
                    "snapshot",
                    format!("dataset snapshot {id}"),
                )
                .detail("files", snapshot.files.len().to_string())
                .detail("description", description),
            )
            .await?;
        }
        Ok(snapshot)
    }

    /// The manifest of snapshot `id`, checked against its id.
    pub async fn get(&self, id: &str) -> Result<DatasetSnapshot> {
        check_id(id)?;
        let relative = format!("snapshots/{id}.json");
        let where_ = self.root.describe(&self.root.path(&relative));
        let bytes = self
            .root
            .get_opt(&relative)
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Snapshot, id))?;
        let snapshot: DatasetSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(
                where_.clone(),
                format!("not a valid snapshot manifest: {e}"),
            )
        })?;
        let id_bytes = serde_json::to_vec(&IdInput {
            files: &snapshot.files,
        })
        .map_err(|e| Error::invalid_input("snapshot", e.to_string()))?;
        if snapshot.id != id || ContentDigest::of(&id_bytes).hex() != id {
            return Err(Error::integrity(
                format!("dataset snapshot {id}"),
                "its manifest does not match its id",
            ));
        }
        Ok(snapshot)
    }

    /// The manifest of snapshot `id` after checking every file's bytes against
    /// their digest ([`Error::Integrity`] naming the file otherwise).
    pub async fn resolve(&self, id: &str) -> Result<DatasetSnapshot> {
        let snapshot = self.get(id).await?;
        for f in &snapshot.files {
            self.read_file(&snapshot, f).await?;
        }
        Ok(snapshot)
    }

    pub(crate) async fn read_file(
        &self,
        snapshot: &DatasetSnapshot,
        f: &SnapshotFile,
    ) -> Result<Bytes> {
        let bytes = self
            .root
            .get(&format!("snapshots/blobs/sha256/{}", f.digest.hex()))
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => Error::integrity(
                    format!("dataset snapshot {} file {}", snapshot.id, f.name),
                    "its bytes are missing from storage",
                ),
                other => other,
            })?;
        f.digest.verify(
            &format!("dataset snapshot {} file {}", snapshot.id, f.name),
            &bytes,
        )?;
        Ok(bytes)
    }

    /// The rows of a snapshot's Parquet files, verified.
    pub async fn read_batches(&self, id: &str) -> Result<Vec<RecordBatch>> {
        let snapshot = self.get(id).await?;
        let mut out = Vec::new();
        for f in &snapshot.files {
            let bytes = self.read_file(&snapshot, f).await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| {
                    Error::invalid_input(
                        format!("snapshot file {}", f.name),
                        format!("not Parquet: {e}"),
                    )
                })?;
            for batch in reader {
                out.push(batch.map_err(|e| Error::backend("parquet", e))?);
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl mlops_core::monitoring::DatasetSnapshots for ObjectSnapshotStore {
    async fn snapshot(&self, batches: &[RecordBatch], description: &str) -> Result<String> {
        Ok(self.snapshot_batches(batches, description).await?.id)
    }
}
