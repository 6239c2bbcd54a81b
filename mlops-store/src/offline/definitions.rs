//! Definitions: entities and feature views in one compare-and-swap object, with
//! the materialization watermarks; incompatible changes refused unless forced.

use std::collections::BTreeMap;

use mlops_core::feature::{ApplyOptions, Entity, FeatureView};
use mlops_core::{Error, ResourceKind, Result, validate_name};
use serde::{Deserialize, Serialize};

use crate::cas::CasCell;

use super::ObjectOfflineStore;

/// Definitions of entities and views.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Definitions {
    pub(super) entities: BTreeMap<String, Entity>,
    pub(super) views: BTreeMap<String, FeatureView>,
    /// Per view, the event time (µs) up to which it was materialized online, as
    /// stores before commit-based progress recorded it (read only to carry on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) watermarks: BTreeMap<String, i64>,
    /// Per view, how far incremental materialization got.
    #[serde(default)]
    pub(super) materialized: BTreeMap<String, Progress>,
}

/// How far a view was materialized incrementally: every row of the commits up to
/// `commit` with event time before `end_us` is online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The event time (µs) the last run went up to.
    pub(crate) end_us: i64,
    /// The last commit the last run read.
    pub(crate) commit: u64,
}

impl ObjectOfflineStore {
    pub(super) fn definitions(&self) -> CasCell {
        CasCell::new(&self.root, "features/registry")
    }
    pub(super) async fn read_definitions(&self) -> Result<Definitions> {
        Ok(self
            .definitions()
            .read::<Definitions>()
            .await?
            .0
            .unwrap_or_default())
    }
    /// Registers or updates an entity.
    pub async fn apply_entity(&self, entity: Entity) -> Result<()> {
        entity.validate()?;
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                d.entities.insert(entity.name.clone(), entity.clone());
                Ok((d, ()))
            })
            .await
    }
    /// Registers or updates a view. A change that would not fit the data already
    /// stored (a join key, time column or feature type changed, a feature removed)
    /// is refused with [`Error::Conflict`] unless `options.force`.
    pub async fn apply_view(&self, view: FeatureView, options: ApplyOptions) -> Result<()> {
        view.validate()?;
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                for key in &view.join_keys {
                    if let Some(e) = d.entities.values().find(|e| e.join_key.name == key.name)
                        && e.join_key.data_type != key.data_type
                    {
                        return Err(Error::schema_mismatch(
                            format!("feature view {}", view.name),
                            &key.name,
                            format!("{} (as entity {} declares)", e.join_key.data_type, e.name),
                            key.data_type.to_string(),
                        ));
                    }
                }
                if let Some(old) = d.views.get(&view.name)
                    && !options.force
                {
                    view_incompatibility(old, &view).map_or(Ok(()), |reason| {
                        Err(Error::conflict(
                            format!("feature view {}", view.name),
                            format!("{reason}; this does not fit the data already stored (apply with force to replace it)"),
                        ))
                    })?;
                }
                d.views.insert(view.name.clone(), view.clone());
                Ok((d, ()))
            })
            .await
    }
    /// The view named `name`.
    pub async fn get_view(&self, name: &str) -> Result<FeatureView> {
        validate_name(ResourceKind::FeatureView, name)?;
        self.read_definitions()
            .await?
            .views
            .remove(name)
            .ok_or_else(|| Error::not_found(ResourceKind::FeatureView, name))
    }
    /// All views, by name.
    pub async fn list_views(&self) -> Result<Vec<FeatureView>> {
        Ok(self.read_definitions().await?.views.into_values().collect())
    }
    /// All entities, by name.
    pub async fn list_entities(&self) -> Result<Vec<Entity>> {
        Ok(self
            .read_definitions()
            .await?
            .entities
            .into_values()
            .collect())
    }
    /// How far `view` was materialized incrementally, if it ever was. A store
    /// that recorded only an event-time watermark carries on from it with no
    /// commit read: the next run re-reads every commit (writing online is
    /// idempotent), so no late row is missed.
    pub(crate) async fn progress(&self, view: &str) -> Result<Option<Progress>> {
        let d = self.read_definitions().await?;
        Ok(d.materialized.get(view).copied().or_else(|| {
            d.watermarks
                .get(view)
                .map(|&end_us| Progress { end_us, commit: 0 })
        }))
    }
    /// Records `progress` for `view`, never moving it back.
    pub(crate) async fn record_progress(&self, view: &str, progress: Progress) -> Result<()> {
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                let p = d.materialized.entry(view.to_owned()).or_insert(progress);
                p.end_us = p.end_us.max(progress.end_us);
                p.commit = p.commit.max(progress.commit);
                d.watermarks.remove(view);
                Ok((d, ()))
            })
            .await
    }
}

/// Why feature view `new` does not fit the data stored under `old`, if it
/// does not: a changed join key, time column or feature type, or a removed
/// feature. [`apply_view`](mlops_core::feature::FeatureDefinitions::apply_view)
/// refuses such a change unless forced; tools that check a whole set of
/// definitions before applying any (`mlops features apply`) ask here first.
pub fn view_incompatibility(old: &FeatureView, new: &FeatureView) -> Option<String> {
    if old.join_keys != new.join_keys {
        return Some("its join keys changed".into());
    }
    if old.event_time_column != new.event_time_column {
        return Some("its event-time column changed".into());
    }
    if old.created_time_column != new.created_time_column {
        return Some("its created-time column changed".into());
    }
    for f in &old.features {
        match new.feature(&f.name) {
            None => return Some(format!("feature '{}' was removed", f.name)),
            Some(n) if n.data_type != f.data_type => {
                return Some(format!(
                    "feature '{}' changed type from {} to {}",
                    f.name, f.data_type, n.data_type
                ));
            }
            Some(_) => {}
        }
    }
    None
}
