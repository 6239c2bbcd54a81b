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
    /// Per view, the event time (µs) up to which it was materialized online.
    #[serde(default)]
    pub(super) watermarks: BTreeMap<String, i64>,
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
                    incompatibility(old, &view).map_or(Ok(()), |reason| {
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
    /// The materialization watermark of `view` (µs), if it was ever materialized
    /// incrementally.
    pub(crate) async fn watermark(&self, view: &str) -> Result<Option<i64>> {
        Ok(self.read_definitions().await?.watermarks.get(view).copied())
    }
    /// Moves the watermark of `view` forward to `to_us` (never back).
    pub(crate) async fn advance_watermark(&self, view: &str, to_us: i64) -> Result<()> {
        self.definitions()
            .update(|d: Option<Definitions>| {
                let mut d = d.unwrap_or_default();
                let w = d.watermarks.entry(view.to_owned()).or_insert(to_us);
                *w = (*w).max(to_us);
                Ok((d, ()))
            })
            .await
    }
}

/// Why `new` does not fit data stored under `old`, if it does not.
pub(super) fn incompatibility(old: &FeatureView, new: &FeatureView) -> Option<String> {
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
