//! The whole feature store: the offline store and an online store together,
//! implementing [`FeatureStore`](mlops_core::FeatureStore).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::take;
use arrow::datatypes::{Field, FieldRef, Schema};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mlops_core::access::{Action, Authorizer, Resource};
use mlops_core::audit::{AuditEvent, AuditLog};
use mlops_core::feature::{
    ApplyOptions, Entity, FeatureDefinitions, FeatureRef, FeatureStatus, FeatureView,
    HistoricalOptions, IngestReceipt, MaterializeReport, OfflineFeatureStore, OnlineFeatureColumn,
    OnlineFeatureStore, OnlineFeatures,
};
use mlops_core::{Error, ResourceKind, Result};

use crate::offline::ObjectOfflineStore;
use crate::online::OnlineStore;
use crate::root::StoreRoot;

/// Offline storage on a [`StoreRoot`] plus an [`OnlineStore`], as one
/// [`FeatureStore`](mlops_core::FeatureStore).
///
/// ```
/// # async fn demo() -> mlops_core::Result<()> {
/// use std::sync::Arc;
/// use mlops_store::{InMemoryOnlineStore, ObjectFeatureStore, StoreRoot};
/// let store = ObjectFeatureStore::new(&StoreRoot::open("memory://")?, Arc::new(InMemoryOnlineStore::new()));
/// # let _ = store;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ObjectFeatureStore {
    offline: ObjectOfflineStore,
    online: Arc<dyn OnlineStore>,
    /// View definitions for online reads, refreshed at most every `refresh`.
    views: Arc<std::sync::RwLock<Option<CachedViews>>>,
    refresh: std::time::Duration,
    /// Who acts through this store and what they may do.
    guard: Option<Guard>,
}

/// A principal, the authorizer that decides for it, and where decisions go.
#[derive(Debug, Clone)]
struct Guard {
    authorizer: Arc<dyn Authorizer>,
    principal: String,
    audit: Option<Arc<dyn AuditLog>>,
}

/// View definitions and when they were read.
type CachedViews = (std::time::Instant, HashMap<String, Arc<CachedView>>);

/// A view definition with the output fields of its features, built once.
#[derive(Debug)]
struct CachedView {
    view: FeatureView,
    /// Per feature of the view, in its order: the nullable output field.
    fields: Vec<FieldRef>,
}

impl CachedView {
    fn new(view: FeatureView) -> Self {
        let fields = view
            .features
            .iter()
            .map(|f| Arc::new(Field::new(&f.name, f.data_type.clone(), true)))
            .collect();
        Self { view, fields }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl ObjectFeatureStore {
    /// The feature store with offline data under `root` and online values in `online`.
    pub fn new(root: &StoreRoot, online: Arc<dyn OnlineStore>) -> Self {
        Self {
            offline: ObjectOfflineStore::new(root),
            online,
            views: Arc::new(std::sync::RwLock::new(None)),
            refresh: std::time::Duration::from_secs(1),
            guard: None,
        }
    }

    /// Acts as `principal` under `authorizer`: writes and definitions need
    /// `write` on `view:NAME`, materialization `materialize` on it, offline
    /// reads (training sets) `read` on each view read, online reads `read` on
    /// each `feature:VIEW:FEATURE` (so serving can be allowed online features
    /// and denied the offline store). Denials are written to `audit` with the
    /// principal, and so are allows, except online reads' (one per request
    /// would put an audit write on the serving path). A denied call does
    /// nothing else.
    pub fn with_authorizer(
        mut self,
        authorizer: Arc<dyn Authorizer>,
        principal: impl Into<String>,
        audit: Option<Arc<dyn AuditLog>>,
    ) -> Self {
        self.guard = Some(Guard {
            authorizer,
            principal: principal.into(),
            audit,
        });
        self
    }

    /// Checks `action` on every resource; records denials (and allows, when
    /// `record_allow`).
    async fn check(
        &self,
        action: Action,
        resources: &[Resource],
        record_allow: bool,
    ) -> Result<()> {
        let Some(g) = &self.guard else {
            return Ok(());
        };
        for r in resources {
            let decision = g.authorizer.authorize(&g.principal, action, r);
            if let Some(audit) = &g.audit
                && (decision.is_err() || record_allow)
            {
                let mut event = AuditEvent::new(
                    &g.principal,
                    if decision.is_ok() {
                        "access.allow"
                    } else {
                        "access.deny"
                    },
                    r.to_string(),
                )
                .detail("action", action.to_string());
                if let Err(e) = &decision {
                    event = event.detail("reason", e.to_string());
                }
                audit.append(event).await?;
            }
            decision?;
        }
        Ok(())
    }

    /// How long online reads may use cached view definitions (default 1 s; zero
    /// re-reads them on every request). Changes made through this instance are seen
    /// at once.
    pub fn with_definition_refresh(mut self, every: std::time::Duration) -> Self {
        self.refresh = every;
        self
    }

    /// The views named `names` for an online read, in order: from the cache when
    /// it is fresh (one clock read and one lock for them all).
    async fn cached_views(&self, names: &[&str]) -> Result<Vec<Arc<CachedView>>> {
        let pick = |views: &HashMap<String, Arc<CachedView>>| {
            names
                .iter()
                .map(|name| {
                    views
                        .get(*name)
                        .cloned()
                        .ok_or_else(|| Error::not_found(ResourceKind::FeatureView, *name))
                })
                .collect::<Result<Vec<_>>>()
        };
        {
            let cache = self.views.read().unwrap_or_else(|p| p.into_inner());
            if let Some((at, views)) = cache.as_ref()
                && at.elapsed() < self.refresh
            {
                return pick(views);
            }
        }
        let views: HashMap<String, Arc<CachedView>> = self
            .offline
            .list_views()
            .await?
            .into_iter()
            .map(|v| (v.name.clone(), Arc::new(CachedView::new(v))))
            .collect();
        let found = pick(&views);
        *self.views.write().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), views));
        found
    }

    fn forget_views(&self) {
        *self.views.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The offline half.
    pub fn offline(&self) -> &ObjectOfflineStore {
        &self.offline
    }

    async fn materialize_us(&self, view: &str, start_us: i64, end_us: i64) -> Result<usize> {
        let def = self.offline.get_view(view).await?;
        let latest = self.offline.latest_rows(&def, start_us, end_us).await?;
        if latest.num_rows() == 0 {
            return Ok(0);
        }
        self.online.write(&def, &latest).await
    }

    /// [`OnlineFeatureStore::get_online_features`] at a given time (the TTL is judged
    /// against `now`).
    pub async fn get_online_features_at(
        &self,
        entity_rows: RecordBatch,
        features: &[FeatureRef],
        now: DateTime<Utc>,
    ) -> Result<OnlineFeatures> {
        self.online_features(entity_rows, features, Some(now)).await
    }

    /// Online retrieval at `now`; `None` reads the clock, and only when one of the
    /// views has a TTL.
    async fn online_features(
        &self,
        entity_rows: RecordBatch,
        features: &[FeatureRef],
        now: Option<DateTime<Utc>>,
    ) -> Result<OnlineFeatures> {
        if entity_rows.num_rows() == 0 {
            return Err(Error::invalid_input(
                "online request",
                "it has no entity rows",
            ));
        }
        if features.is_empty() {
            return Err(Error::invalid_input(
                "online request",
                "it names no features",
            ));
        }
        // Per view, the positions in `features` of the features asked from it.
        let mut by_view: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let request_schema = entity_rows.schema();
        for (i, f) in features.iter().enumerate() {
            if features[..i].iter().any(|g| g.feature() == f.feature()) {
                return Err(Error::invalid_input(
                    format!("feature '{}'", f.feature()),
                    "requested from two views; output columns would clash",
                ));
            }
            if request_schema.column_with_name(f.feature()).is_some() {
                return Err(Error::invalid_input(
                    format!("feature '{}'", f.feature()),
                    "the request already has a column of that name",
                ));
            }
            by_view.entry(f.view()).or_default().push(i);
        }
        let n = entity_rows.num_rows();
        // Resolve and check every view first, then read them all at once.
        let mut plans = Vec::with_capacity(by_view.len());
        // The output field of each feature, from the view's cached fields.
        let mut fields: Vec<Option<FieldRef>> = vec![None; features.len()];
        let names: Vec<&str> = by_view.keys().copied().collect();
        // Shared, not copied: the cache hands out the same definitions.
        let views = self.cached_views(&names).await?;
        for ((_, positions), cached) in by_view.into_iter().zip(views) {
            for &i in &positions {
                let index = cached
                    .view
                    .features
                    .iter()
                    .position(|v| v.name == features[i].feature())
                    .ok_or_else(|| {
                        Error::not_found(ResourceKind::Feature, features[i].to_string())
                    })?;
                fields[i] = Some(cached.fields[index].clone());
            }
            let wanted: Vec<String> = positions
                .iter()
                .map(|&i| features[i].feature().to_owned())
                .collect();
            plans.push((cached, positions, wanted));
        }
        let now_us = match now {
            Some(now) => micros(now),
            None if plans.iter().any(|(cached, _, _)| cached.view.ttl.is_some()) => {
                micros(Utc::now())
            }
            // No TTL to judge: the time is not used.
            None => 0,
        };
        let reads = futures_util::future::try_join_all(
            plans
                .iter()
                .map(|(cached, _, wanted)| self.online.read(&cached.view, &entity_rows, wanted)),
        )
        .await?;
        let mut results: Vec<Option<(ArrayRef, OnlineFeatureColumn)>> =
            (0..features.len()).map(|_| None).collect();
        for ((cached, positions, _), read) in plans.iter().zip(reads) {
            let view = &cached.view;
            let ttl_us = view
                .ttl
                .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            // What holds for every feature of the view: found or not, fresh or
            // not, and the event time.
            let event_times: Vec<Option<DateTime<Utc>>> = read
                .rows
                .iter()
                .map(|r| {
                    r.as_ref()
                        .and_then(|f| DateTime::from_timestamp_micros(f.event_us))
                })
                .collect();
            let base: Vec<Result<u32, FeatureStatus>> = read
                .rows
                .iter()
                .map(|r| match r {
                    None => Err(FeatureStatus::NotFound),
                    Some(f)
                        if ttl_us.is_some_and(|ttl| now_us.saturating_sub(f.event_us) > ttl) =>
                    {
                        Err(FeatureStatus::OutsideMaxAge)
                    }
                    Some(f) => Ok(f.row as u32),
                })
                .collect();
            for (c, &i) in positions.iter().enumerate() {
                let values = read.values.column(c);
                let mut statuses = Vec::with_capacity(n);
                // Whether every row is present, fresh and non-null, in request
                // order: then the values are the column as read.
                let mut in_order = values.len() == n;
                for (k, b) in base.iter().enumerate() {
                    statuses.push(match *b {
                        Err(status) => status,
                        Ok(row) if values.is_null(row as usize) => FeatureStatus::NullValue,
                        Ok(_) => FeatureStatus::Present,
                    });
                    in_order &= *b == Ok(k as u32) && statuses[k] == FeatureStatus::Present;
                }
                let column = if in_order {
                    values.clone()
                } else if values.is_empty() {
                    new_null_array(values.data_type(), n)
                } else {
                    let picks: UInt32Array = base
                        .iter()
                        .zip(&statuses)
                        .map(|(b, s)| match (b, s) {
                            (Ok(row), FeatureStatus::Present) => Some(*row),
                            _ => None,
                        })
                        .collect();
                    take(values.as_ref(), &picks, None).map_err(|e| Error::backend("arrow", e))?
                };
                let f = &features[i];
                results[i] = Some((
                    column,
                    OnlineFeatureColumn {
                        feature: f.clone(),
                        column: f.feature().to_owned(),
                        statuses,
                        event_times: event_times.clone(),
                    },
                ));
            }
        }
        let mut out_fields: Vec<FieldRef> = request_schema.fields().iter().cloned().collect();
        let mut arrays: Vec<ArrayRef> = entity_rows.columns().to_vec();
        let mut columns = Vec::with_capacity(features.len());
        for ((f, result), field) in features.iter().zip(results).zip(fields) {
            let (array, meta) =
                result.ok_or_else(|| Error::not_found(ResourceKind::Feature, f.to_string()))?;
            out_fields.push(match field {
                Some(field) if field.data_type() == array.data_type() => field,
                _ => Arc::new(Field::new(f.feature(), array.data_type().clone(), true)),
            });
            arrays.push(array);
            columns.push(meta);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(out_fields)), arrays)
            .map_err(|e| Error::backend("arrow", e))?;
        Ok(OnlineFeatures { batch, columns })
    }
}

#[async_trait]
impl FeatureDefinitions for ObjectFeatureStore {
    async fn apply_entity(&self, entity: Entity) -> Result<()> {
        self.check(Action::Write, &[Resource::view(&entity.name)], true)
            .await?;
        self.offline.apply_entity(entity).await
    }

    async fn apply_view(&self, view: FeatureView, options: ApplyOptions) -> Result<()> {
        self.check(Action::Write, &[Resource::view(&view.name)], true)
            .await?;
        self.offline.apply_view(view, options).await?;
        self.forget_views();
        Ok(())
    }

    async fn get_view(&self, name: &str) -> Result<FeatureView> {
        self.offline.get_view(name).await
    }

    async fn list_views(&self) -> Result<Vec<FeatureView>> {
        self.offline.list_views().await
    }
}

#[async_trait]
impl OfflineFeatureStore for ObjectFeatureStore {
    async fn ingest(&self, view: &str, batch: RecordBatch) -> Result<IngestReceipt> {
        self.check(Action::Write, &[Resource::view(view)], true)
            .await?;
        self.offline.ingest(view, batch).await
    }

    async fn get_historical_features(
        &self,
        entity_df: RecordBatch,
        features: &[FeatureRef],
        options: HistoricalOptions,
    ) -> Result<RecordBatch> {
        let mut views: Vec<Resource> = features.iter().map(|f| Resource::view(f.view())).collect();
        views.dedup();
        self.check(Action::Read, &views, true).await?;
        self.offline
            .get_historical_features(entity_df, features, options)
            .await
    }

    async fn materialize(
        &self,
        view: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<MaterializeReport> {
        self.check(Action::Materialize, &[Resource::view(view)], true)
            .await?;
        if end <= start {
            return Err(Error::invalid_input(
                format!("materialization of view {view}"),
                format!("the window [{start}, {end}) is empty"),
            ));
        }
        let written = self
            .materialize_us(view, micros(start), micros(end))
            .await?;
        Ok(MaterializeReport {
            view: view.to_owned(),
            start,
            end,
            entities_written: written,
        })
    }

    async fn materialize_incremental(
        &self,
        view: &str,
        end: DateTime<Utc>,
    ) -> Result<MaterializeReport> {
        self.check(Action::Materialize, &[Resource::view(view)], true)
            .await?;
        let def = self.offline.get_view(view).await?;
        let (rows, next, previous) = self.offline.incremental_rows(&def, micros(end)).await?;
        let written = if rows.num_rows() == 0 {
            0
        } else {
            self.online.write(&def, &rows).await?
        };
        // Recorded once the rows are online: a crash in between loads them again
        // (a row replaces only an older one, so twice is the same as once).
        self.offline.record_progress(view, next).await?;
        let start_us = previous.map_or(i64::MIN, |p| p.end_us);
        Ok(MaterializeReport {
            view: view.to_owned(),
            start: DateTime::from_timestamp_micros(start_us).unwrap_or(DateTime::<Utc>::MIN_UTC),
            end,
            entities_written: written,
        })
    }
}

#[async_trait]
impl OnlineFeatureStore for ObjectFeatureStore {
    async fn get_online_features(
        &self,
        entity_rows: RecordBatch,
        features: &[FeatureRef],
    ) -> Result<OnlineFeatures> {
        if self.guard.is_some() {
            let wanted: Vec<Resource> = features
                .iter()
                .map(|f| Resource::feature(f.view(), f.feature()))
                .collect();
            self.check(Action::Read, &wanted, false).await?;
        }
        self.online_features(entity_rows, features, None).await
    }
}
