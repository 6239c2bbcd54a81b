//! [`version_lineage`]: where a model version came from and where it went, from
//! what a storage root holds: its manifest and signature, the chain of versions
//! it was derived from, the training run (parameters, metrics, code version),
//! the dataset snapshot it was trained on, the feature views it reads, who moved
//! which alias to it (the audit log), and the serving replicas that reported it
//! (the fleet).

use chrono::{DateTime, Utc};
use mlops_core::audit::AuditLog;
use mlops_core::feature::FeatureView;
use mlops_core::fleet::FleetStore;
use mlops_core::model::{ModelRegistry, VersionSelector};
use mlops_core::tracking::{ExperimentTracker, Run};
use mlops_core::{Error, Result};
use serde::Serialize;

use crate::root::StoreRoot;
use crate::{
    DatasetSnapshot, ObjectAuditLog, ObjectFleet, ObjectOfflineStore, ObjectRegistry,
    ObjectSnapshotStore, ObjectTracker,
};

/// A feature the version reads, with its view's definition when it is still
/// defined.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureOrigin {
    /// `view:feature`.
    pub reference: String,
    /// The view as defined now (`None`: no longer defined).
    pub view: Option<FeatureView>,
}

/// An alias moved to the version, from the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AliasMove {
    /// The alias (`champion`, `challenger`, ...).
    pub alias: String,
    /// Who moved it (the key, user or service that did).
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A serving replica's last report that included the version.
#[derive(Debug, Clone, Serialize)]
pub struct ServedBy {
    /// The deployment.
    pub deployment: String,
    /// The replica.
    pub replica: String,
    /// When it reported.
    pub at: DateTime<Utc>,
    /// Its share of that replica's traffic then.
    pub traffic_share: f64,
}

/// Everything the root knows of one model version's origin and use.
#[derive(Debug, Clone, Serialize)]
pub struct VersionLineage {
    /// The model.
    pub model: String,
    /// The version.
    pub version: u64,
    /// Its artifact's digest.
    pub digest: String,
    /// Its flavor.
    pub flavor: String,
    /// Who registered it, when.
    pub created_by: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// `Active` or `Archived`.
    pub status: String,
    /// The key that signed it, if signed.
    pub signed_by: Option<String>,
    /// The code that trained it, as recorded at training.
    pub code_version: Option<String>,
    /// The versions it was derived from, nearest first.
    pub ancestors: Vec<u64>,
    /// The training run.
    pub run: Option<Run>,
    /// The dataset snapshot it was trained on.
    pub snapshot: Option<DatasetSnapshot>,
    /// The features it reads.
    pub features: Vec<FeatureOrigin>,
    /// Aliases naming it now.
    pub aliases: Vec<String>,
    /// Alias moves to it, oldest first (who approved it where).
    pub alias_moves: Vec<AliasMove>,
    /// Serving replicas whose latest report included it.
    pub served_by: Vec<ServedBy>,
}

/// The lineage of `model` version `version` under `root`: see the module docs.
/// Parts the root does not hold (a run or snapshot deleted, no audit log, no
/// fleet) are left empty; the version itself must exist.
///
/// # Errors
/// [`Error::NotFound`] for an unknown model or version; storage errors.
pub async fn version_lineage(
    root: &StoreRoot,
    model: &str,
    version: u64,
) -> Result<VersionLineage> {
    let registry = ObjectRegistry::new(root);
    let v = registry
        .get_version(model, &VersionSelector::Number(version))
        .await?;
    let lineage = &v.metadata.lineage;
    // The parent chain, bounded by the versions that exist (no cycle can
    // hold more).
    let mut ancestors = Vec::new();
    let mut next = lineage.parent_version;
    while let Some(p) = next {
        if ancestors.contains(&p) || ancestors.len() > 10_000 {
            break;
        }
        ancestors.push(p);
        next = match registry
            .get_version(model, &VersionSelector::Number(p))
            .await
        {
            Ok(pv) => pv.metadata.lineage.parent_version,
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
    }
    let run = match &lineage.run_id {
        Some(id) => found(ObjectTracker::new(root).get_run(id).await)?,
        None => None,
    };
    let snapshot = match &lineage.dataset_snapshot_id {
        Some(id) => found(ObjectSnapshotStore::new(root).get(id).await)?,
        None => None,
    };
    let offline = ObjectOfflineStore::new(root);
    let mut features = Vec::new();
    for r in &lineage.feature_refs {
        features.push(FeatureOrigin {
            reference: r.to_string(),
            view: found(offline.get_view(r.view()).await)?,
        });
    }
    let aliases = registry
        .aliases(model)
        .await?
        .into_iter()
        .filter(|(_, n)| *n == version)
        .map(|(a, _)| a)
        .collect();
    let audit = ObjectAuditLog::new(root);
    let prefix = format!("model {model} alias ");
    let mut alias_moves = Vec::new();
    let mut from = 1;
    loop {
        let page = audit.entries(from, 1000).await?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in &page {
            if e.event.action == "set_alias"
                && e.event.details.get("version").map(String::as_str)
                    == Some(version.to_string().as_str())
                && let Some(alias) = e.event.target.strip_prefix(&prefix)
            {
                alias_moves.push(AliasMove {
                    alias: alias.to_owned(),
                    actor: e.event.actor.clone(),
                    at: e.time,
                });
            }
        }
    }
    let fleet = ObjectFleet::new(root);
    let mut served_by = Vec::new();
    for deployment in root.list_children("fleet").await? {
        for r in fleet.reports(&deployment).await? {
            if r.model != model {
                continue;
            }
            if let Some(h) = r.health.versions.get(&version) {
                served_by.push(ServedBy {
                    deployment: deployment.clone(),
                    replica: r.replica.clone(),
                    at: r.at,
                    traffic_share: h.traffic_share,
                });
            }
        }
    }
    Ok(VersionLineage {
        model: model.to_owned(),
        version,
        digest: v.digest.to_string(),
        flavor: v.flavor.clone(),
        created_by: v.created_by.clone(),
        created_at: v.created_at,
        status: format!("{:?}", v.status),
        signed_by: v.signature.as_ref().map(|s| s.key_id.clone()),
        code_version: lineage.code_version.clone(),
        ancestors,
        run,
        snapshot,
        features,
        aliases,
        alias_moves,
        served_by,
    })
}

/// `Some` of what was found, `None` for what is gone.
fn found<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::datatypes::DataType;
    use mlops_core::feature::ApplyOptions;
    use mlops_core::fleet::ReplicaReport;
    use mlops_core::model::{Lineage, ModelArtifact, ModelMetadata};
    use mlops_core::monitoring::{ModelHealth, VersionHealth};

    use super::*;

    #[tokio::test]
    async fn a_version_is_traced_back_to_its_data_and_forward_to_its_servers() {
        let root = StoreRoot::open("memory://").unwrap();
        let audit = Arc::new(ObjectAuditLog::new(&root));
        let registry = ObjectRegistry::new(&root)
            .with_audit(audit.clone())
            .with_actor("release-bot");
        let artifact = || ModelArtifact::new("test", vec![1, 2, 3]);
        registry
            .register("m", artifact(), ModelMetadata::default())
            .await
            .unwrap();
        let view = FeatureView::builder("card")
            .join_key("id", DataType::Int64)
            .event_time("ts")
            .feature("spend", DataType::Float64)
            .build()
            .unwrap();
        ObjectOfflineStore::new(&root)
            .apply_view(view, ApplyOptions::default())
            .await
            .unwrap();
        let run = ObjectTracker::new(&root)
            .start_run("m", Some("train"), BTreeMap::new())
            .await
            .unwrap();
        let snapshot = ObjectSnapshotStore::new(&root)
            .snapshot_contents(vec![("a.csv".into(), b"x,y\n1,2\n".to_vec().into())], "set")
            .await
            .unwrap();
        let metadata = ModelMetadata {
            lineage: Lineage {
                run_id: Some(run.id.clone()),
                dataset_snapshot_id: Some(snapshot.id.clone()),
                feature_refs: vec!["card:spend".parse().unwrap(), "gone:f".parse().unwrap()],
                code_version: Some("abc123 (clean)".into()),
                parent_version: Some(1),
            },
            ..ModelMetadata::default()
        };
        registry.register("m", artifact(), metadata).await.unwrap();
        registry.set_alias("m", "champion", 2).await.unwrap();
        let fleet = ObjectFleet::new(&root);
        for (deployment, model, replica) in [("d", "m", "pod-a"), ("other", "x", "pod-b")] {
            let report = ReplicaReport {
                replica: replica.into(),
                model: model.into(),
                at: Utc::now(),
                applied_revision: 0,
                health: ModelHealth {
                    champion: Some(2),
                    canary: None,
                    versions: BTreeMap::from([(
                        2,
                        VersionHealth {
                            traffic_share: 1.0,
                            ..VersionHealth::default()
                        },
                    )]),
                },
            };
            fleet.publish(deployment, &report).await.unwrap();
        }
        let l = version_lineage(&root, "m", 2).await.unwrap();
        assert_eq!(l.ancestors, vec![1]);
        assert_eq!(l.run.as_ref().unwrap().id, run.id);
        assert_eq!(l.snapshot.as_ref().unwrap().id, snapshot.id);
        assert_eq!(l.code_version.as_deref(), Some("abc123 (clean)"));
        assert_eq!(l.features.len(), 2);
        assert!(l.features[0].view.is_some() && l.features[1].view.is_none());
        assert_eq!(l.aliases, vec!["champion".to_owned()]);
        assert_eq!(l.alias_moves.len(), 1);
        assert_eq!(
            (
                l.alias_moves[0].alias.as_str(),
                l.alias_moves[0].actor.as_str()
            ),
            ("champion", "release-bot")
        );
        assert_eq!(l.served_by.len(), 1, "only deployments of model m");
        assert_eq!(l.served_by[0].replica, "pod-a");
        let json = serde_json::to_string(&l).unwrap();
        assert!(json.contains("\"ancestors\":[1]"), "{json}");
        // The first version has no history; unknown ones are not found.
        let first = version_lineage(&root, "m", 1).await.unwrap();
        assert!(first.ancestors.is_empty() && first.run.is_none() && first.served_by.is_empty());
        assert!(matches!(
            version_lineage(&root, "m", 9).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            version_lineage(&root, "nope", 1).await,
            Err(Error::NotFound { .. })
        ));
    }
}
