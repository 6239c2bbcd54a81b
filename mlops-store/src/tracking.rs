//! Experiment tracking on object storage.
//!
//! Layout under the root:
//!
//! ```text
//! tracking/runs/<run id>.json                                  which experiment a run is in
//! tracking/experiments/<experiment>/runs/<run id>/run.json     the run (or run/<seq>.json
//!                                                              on local disk)
//! tracking/experiments/<experiment>/runs/<run id>/metrics/<batch>.json
//!                                                              metric points, one object per
//!                                                              log_metrics call
//! tracking/experiments/<experiment>/runs/<run id>/artifacts/<name>
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use futures_util::TryStreamExt;
use mlops_core::audit::{AuditEvent, AuditLog};
use mlops_core::tracking::{ExperimentTracker, MetricPoint, Run, RunQuery, RunStatus};
use mlops_core::{Error, ResourceKind, Result, validate_name};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::cas::CasCell;
use crate::error::storage_error;
use crate::root::StoreRoot;

/// The most points one `log_metrics` call may carry.
pub const MAX_POINTS_PER_CALL: usize = 100_000;
/// The largest value of a param or tag, in bytes.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Serialize, Deserialize)]
struct RunIndex {
    experiment: String,
}

/// An [`ExperimentTracker`] on a [`StoreRoot`].
///
/// Run state changes are compare-and-swap updates, so concurrent writers to one run
/// never lose each other's params or tags. Metric points are appended as one object
/// per call (no rewrite of earlier points); the run keeps the latest value of each
/// metric. Run lifecycle, params, tags and artifacts go to the audit log when one is
/// given; individual metric points do not (they are data, not changes of record).
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use std::collections::BTreeMap;
/// use mlops_core::tracking::{ExperimentTracker, MetricPoint, RunStatus};
/// use mlops_store::{ObjectTracker, StoreRoot};
///
/// let tracker = ObjectTracker::new(&StoreRoot::open("memory://")?).with_actor("alice");
/// let run = tracker.start_run("fraud", Some("mlp-64"), BTreeMap::new()).await?;
/// tracker.log_metrics(&run.id, vec![MetricPoint::now("val_auc", 0.91, 1)]).await?;
/// let run = tracker.end_run(&run.id, RunStatus::Finished).await?;
/// assert_eq!(run.latest_metrics["val_auc"], 0.91);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectTracker {
    root: StoreRoot,
    audit: Option<Arc<dyn AuditLog>>,
    actor: String,
}

impl ObjectTracker {
    /// A tracker under `root`, recording nothing in an audit log; the actor is
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

    fn run_dir(experiment: &str, run_id: &str) -> String {
        format!("tracking/experiments/{experiment}/runs/{run_id}")
    }

    fn cell(&self, experiment: &str, run_id: &str) -> CasCell {
        CasCell::new(
            &self.root,
            format!("{}/run", Self::run_dir(experiment, run_id)),
        )
    }

    async fn experiment_of(&self, run_id: &str) -> Result<String> {
        validate_name(ResourceKind::Run, run_id)?;
        let relative = format!("tracking/runs/{run_id}.json");
        let bytes = self
            .root
            .get_opt(&relative)
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Run, run_id))?;
        let index: RunIndex = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(
                self.root.describe(&self.root.path(&relative)),
                format!("not a valid run index: {e}"),
            )
        })?;
        Ok(index.experiment)
    }

    /// Applies `f` to a running run, atomically.
    async fn change_run(
        &self,
        run_id: &str,
        mut f: impl FnMut(&mut Run) -> Result<()>,
    ) -> Result<Run> {
        let experiment = self.experiment_of(run_id).await?;
        self.cell(&experiment, run_id)
            .update(|run: Option<Run>| {
                let mut run = run.ok_or_else(|| Error::not_found(ResourceKind::Run, run_id))?;
                f(&mut run)?;
                let out = run.clone();
                Ok((run, out))
            })
            .await
    }

    async fn audit(
        &self,
        action: &str,
        run_id: &str,
        details: Vec<(String, String)>,
    ) -> Result<()> {
        if let Some(log) = &self.audit {
            let mut event = AuditEvent::new(self.actor.clone(), action, format!("run {run_id}"));
            event.details.extend(details);
            log.append(event).await?;
        }
        Ok(())
    }

    /// Creates `relative` if absent: its location, or [`Error::AlreadyExists`].
    async fn put_create(&self, relative: &str, bytes: Vec<u8>) -> Result<String> {
        if self.root.put_if_absent(relative, bytes.into()).await? {
            Ok(self.root.describe(&self.root.path(relative)))
        } else {
            Err(Error::already_exists(ResourceKind::Object, relative))
        }
    }
}

fn ensure_running(run: &Run) -> Result<()> {
    if run.status == RunStatus::Running {
        Ok(())
    } else {
        Err(Error::conflict(
            format!("run {}", run.id),
            format!(
                "it has ended ({:?}); nothing more can be logged to it",
                run.status
            ),
        ))
    }
}

fn check_entries(what: &str, entries: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in entries {
        validate_name(ResourceKind::Column, k)
            .map_err(|e| Error::invalid_input(format!("{what} '{k}'"), e.to_string()))?;
        if v.len() > MAX_VALUE_BYTES {
            return Err(Error::invalid_input(
                format!("{what} '{k}'"),
                format!(
                    "its value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                    v.len()
                ),
            ));
        }
    }
    Ok(())
}

fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}

#[async_trait]
impl ExperimentTracker for ObjectTracker {
    async fn start_run(
        &self,
        experiment: &str,
        name: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> Result<Run> {
        validate_name(ResourceKind::Experiment, experiment)?;
        if name.is_some_and(|n| n.len() > MAX_VALUE_BYTES) {
            return Err(Error::invalid_input(
                "run name",
                format!("it is longer than {MAX_VALUE_BYTES} bytes"),
            ));
        }
        check_entries("tag", &tags)?;
        let run = loop {
            let id = new_run_id();
            let index = serde_json::to_vec(&RunIndex {
                experiment: experiment.to_owned(),
            })
            .map_err(|e| Error::invalid_input("run index", e.to_string()))?;
            match self
                .put_create(&format!("tracking/runs/{id}.json"), index)
                .await
            {
                Ok(_) => {}
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
            break Run {
                id,
                experiment: experiment.to_owned(),
                name: name.map(str::to_owned),
                status: RunStatus::Running,
                start_time: Utc::now(),
                end_time: None,
                params: BTreeMap::new(),
                tags,
                latest_metrics: BTreeMap::new(),
                artifacts: Vec::new(),
            };
        };
        let cell = self.cell(experiment, &run.id);
        cell.write(&run, &crate::cas::Token::Absent).await?;
        self.audit(
            "start_run",
            &run.id,
            vec![("experiment".into(), experiment.to_owned())],
        )
        .await?;
        Ok(run)
    }

    async fn log_params(&self, run_id: &str, params: BTreeMap<String, String>) -> Result<()> {
        check_entries("param", &params)?;
        let details: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (format!("param.{k}"), v.clone()))
            .collect();
        self.change_run(run_id, |run| {
            ensure_running(run)?;
            for (k, v) in &params {
                match run.params.get(k) {
                    Some(old) if old != v => {
                        return Err(Error::conflict(
                            format!("run {run_id} param '{k}'"),
                            format!("it is already {old:?}; params cannot change (got {v:?})"),
                        ));
                    }
                    _ => {
                        run.params.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(())
        })
        .await?;
        self.audit("log_params", run_id, details).await
    }

    async fn log_metrics(&self, run_id: &str, points: Vec<MetricPoint>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        if points.len() > MAX_POINTS_PER_CALL {
            return Err(Error::invalid_input(
                "metric points",
                format!(
                    "{} in one call; the limit is {MAX_POINTS_PER_CALL}",
                    points.len()
                ),
            ));
        }
        for p in &points {
            validate_name(ResourceKind::Column, &p.key)
                .map_err(|e| Error::invalid_input(format!("metric '{}'", p.key), e.to_string()))?;
            if !p.value.is_finite() {
                return Err(Error::invalid_input(
                    format!("metric '{}' at step {}", p.key, p.step),
                    format!("value {} is not finite", p.value),
                ));
            }
        }
        let experiment = self.experiment_of(run_id).await?;
        let (run, _) = self.cell(&experiment, run_id).read::<Run>().await?;
        ensure_running(&run.ok_or_else(|| Error::not_found(ResourceKind::Run, run_id))?)?;
        let batch = serde_json::to_vec(&points)
            .map_err(|e| Error::invalid_input("metric points", e.to_string()))?;
        loop {
            let name = new_run_id();
            let path = format!("{}/metrics/{name}.json", Self::run_dir(&experiment, run_id));
            match self.put_create(&path, batch.clone()).await {
                Ok(_) => break,
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        // Latest value per key: highest step, then latest time.
        let mut latest: BTreeMap<&str, &MetricPoint> = BTreeMap::new();
        for p in &points {
            let e = latest.entry(&p.key).or_insert(p);
            if (p.step, p.timestamp) >= (e.step, e.timestamp) {
                *e = p;
            }
        }
        self.change_run(run_id, |run| {
            for p in latest.values() {
                run.latest_metrics.insert(p.key.clone(), p.value);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn set_tags(&self, run_id: &str, tags: BTreeMap<String, String>) -> Result<()> {
        check_entries("tag", &tags)?;
        let details: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| (format!("tag.{k}"), v.clone()))
            .collect();
        self.change_run(run_id, |run| {
            run.tags.extend(tags.clone());
            Ok(())
        })
        .await?;
        self.audit("set_tags", run_id, details).await
    }

    async fn log_artifact(&self, run_id: &str, name: &str, bytes: Bytes) -> Result<String> {
        validate_name(ResourceKind::Artifact, name)?;
        let experiment = self.experiment_of(run_id).await?;
        let (run, _) = self.cell(&experiment, run_id).read::<Run>().await?;
        ensure_running(&run.ok_or_else(|| Error::not_found(ResourceKind::Run, run_id))?)?;
        let size = bytes.len();
        let location = match self
            .put_create(
                &format!("{}/artifacts/{name}", Self::run_dir(&experiment, run_id)),
                bytes.to_vec(),
            )
            .await
        {
            Err(Error::AlreadyExists { .. }) => {
                return Err(Error::already_exists(
                    ResourceKind::Artifact,
                    format!("run {run_id} artifact {name}"),
                ));
            }
            other => other?,
        };
        self.change_run(run_id, |run| {
            if !run.artifacts.iter().any(|a| a == name) {
                run.artifacts.push(name.to_owned());
            }
            Ok(())
        })
        .await?;
        self.audit(
            "log_artifact",
            run_id,
            vec![
                ("name".into(), name.to_owned()),
                ("size_bytes".into(), size.to_string()),
            ],
        )
        .await?;
        Ok(location)
    }

    async fn end_run(&self, run_id: &str, status: RunStatus) -> Result<Run> {
        if status == RunStatus::Running {
            return Err(Error::invalid_input(
                "run status",
                "a run cannot end as Running",
            ));
        }
        let run = self
            .change_run(run_id, |run| {
                ensure_running(run)?;
                run.status = status;
                run.end_time = Some(Utc::now());
                Ok(())
            })
            .await?;
        self.audit(
            "end_run",
            run_id,
            vec![("status".into(), format!("{status:?}"))],
        )
        .await?;
        Ok(run)
    }

    async fn get_run(&self, run_id: &str) -> Result<Run> {
        let experiment = self.experiment_of(run_id).await?;
        self.cell(&experiment, run_id)
            .read::<Run>()
            .await?
            .0
            .ok_or_else(|| Error::not_found(ResourceKind::Run, run_id))
    }

    async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<MetricPoint>> {
        let experiment = self.experiment_of(run_id).await?;
        let dir = self
            .root
            .path(&format!("{}/metrics", Self::run_dir(&experiment, run_id)));
        let metas: Vec<object_store::ObjectMeta> = self
            .root
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| storage_error(&self.root.describe(&dir), e))?;
        let mut out = Vec::new();
        for m in metas {
            let where_ = self.root.describe(&m.location);
            let bytes = self
                .root
                .store()
                .get(&m.location)
                .await
                .map_err(|e| storage_error(&where_, e))?
                .bytes()
                .await
                .map_err(|e| storage_error(&where_, e))?;
            let points: Vec<MetricPoint> = serde_json::from_slice(&bytes)
                .map_err(|e| Error::integrity(where_, format!("not a valid metric batch: {e}")))?;
            out.extend(points.into_iter().filter(|p| p.key == key));
        }
        out.sort_by_key(|p| (p.step, p.timestamp));
        Ok(out)
    }

    async fn search_runs(&self, query: &RunQuery) -> Result<Vec<Run>> {
        let experiments = match &query.experiment {
            Some(e) => {
                validate_name(ResourceKind::Experiment, e)?;
                vec![e.clone()]
            }
            None => self.root.list_children("tracking/experiments").await?,
        };
        let mut out = Vec::new();
        for experiment in experiments {
            for run_id in self
                .root
                .list_children(&format!("tracking/experiments/{experiment}/runs"))
                .await?
            {
                if let (Some(run), _) = self.cell(&experiment, &run_id).read::<Run>().await?
                    && query.matches(&run)
                {
                    out.push(run);
                }
            }
        }
        out.sort_by(|a, b| {
            b.start_time
                .cmp(&a.start_time)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(out)
    }
}
