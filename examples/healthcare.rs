//! Privacy-separated healthcare pipeline: each stage acts as its own principal
//! under one access policy, and only what the policy grants happens.
//!
//! ```text
//! cargo run --example healthcare
//! ```
//!
//! - `pipeline` writes the identifying `vitals` view and its de-identified
//!   copy `vitals_deid`, and loads both online;
//! - `trainer` builds its training set from the de-identified view only (the
//!   identifying one is refused), trains and registers a model, and may point
//!   `challenger` at it but not `champion`;
//! - `release` alone moves `champion`;
//! - `server` reads online features at request time and never the offline
//!   store.
//!
//! Every decision lands in the audit log with its principal; the example ends
//! by printing them.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::DataType;
use mlops::core::access::Policy;
use mlops::core::audit::AuditLog as _;
use mlops::core::feature::{
    ApplyOptions, FeatureDefinitions as _, FeatureView, HistoricalOptions,
    OfflineFeatureStore as _, OnlineFeatureStore as _,
};
use mlops::prelude::*;
use mlops::store::{InMemoryOnlineStore, ObjectAuditLog, ObjectFeatureStore};
use mlops::train::Progress;

const POLICY: &str = r#"
[roles.pipeline]
grants = [{ actions = ["write", "materialize"], resources = ["view:*"] }]

[roles.training]
grants = [{ actions = ["read"], resources = ["view:*_deid"] },
          { actions = ["register"], resources = ["model:readmission"] },
          { actions = ["promote"], resources = ["alias:readmission@challenger"] }]

[roles.release]
grants = [{ actions = ["promote"], resources = ["alias:readmission@champion"] }]

[roles.serving]
grants = [{ actions = ["read"], resources = ["feature:vitals_deid:*"] }]

[principals]
pipeline = ["pipeline"]
trainer = ["training"]
release = ["release"]
server = ["serving"]
"#;

const N: i64 = 2000;

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// Vitals per patient: heart rate, and (de-identified) a risk score and age
/// band; readmission is likelier with higher risk.
fn vitals(deid: bool) -> Result<RecordBatch> {
    let ids: Vec<i64> = (0..N).collect();
    let risk: Vec<f64> = ids
        .iter()
        .map(|i| ((i * 37) % 100) as f64 / 100.0)
        .collect();
    let columns: Vec<(&str, ArrayRef)> = if deid {
        vec![
            ("patient_id", Arc::new(Int64Array::from(ids.clone()))),
            ("ts", ts(vec![1_000; N as usize])),
            ("risk", Arc::new(Float64Array::from(risk))),
            (
                "age_band",
                Arc::new(Float64Array::from_iter_values(
                    ids.iter().map(|i| (i % 8) as f64),
                )),
            ),
        ]
    } else {
        vec![
            ("patient_id", Arc::new(Int64Array::from(ids.clone()))),
            ("ts", ts(vec![1_000; N as usize])),
            (
                "heart_rate",
                Arc::new(Float64Array::from_iter_values(
                    risk.iter().map(|r| 60.0 + 60.0 * r),
                )),
            ),
        ]
    };
    RecordBatch::try_from_iter(columns).map_err(|e| Error::invalid_input("vitals", e.to_string()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let policy = Arc::new(Policy::parse(POLICY, "toml", "healthcare policy")?);
    let root = StoreRoot::open("memory://")?;
    let online = Arc::new(InMemoryOnlineStore::new());
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let features = |who: &str| {
        ObjectFeatureStore::new(&root, online.clone()).with_authorizer(
            policy.clone(),
            who,
            Some(audit.clone()),
        )
    };
    let registry = |who: &str| {
        ObjectRegistry::new(&root)
            .with_audit(audit.clone())
            .with_authorizer(policy.clone())
            .with_actor(who)
    };

    // The pipeline writes both views and loads them online.
    let pipeline = features("pipeline");
    for (name, deid, columns) in [
        ("vitals", false, vec!["heart_rate"]),
        ("vitals_deid", true, vec!["risk", "age_band"]),
    ] {
        let mut view = FeatureView::builder(name)
            .join_key("patient_id", DataType::Int64)
            .event_time("ts");
        for c in columns {
            view = view.feature(c, DataType::Float64);
        }
        pipeline
            .apply_view(view.build()?, ApplyOptions::default())
            .await?;
        pipeline.ingest(name, vitals(deid)?).await?;
        pipeline
            .materialize(
                name,
                mlops::chrono::DateTime::UNIX_EPOCH,
                mlops::chrono::Utc::now(),
            )
            .await?;
    }
    println!("pipeline: wrote vitals and vitals_deid, loaded both online");

    // Training reads the de-identified view; the identifying one is refused.
    let trainer = features("trainer");
    let ids: Vec<i64> = (0..N).collect();
    let labels = RecordBatch::try_from_iter([
        (
            "patient_id",
            Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
        ),
        ("event_timestamp", ts(vec![2_000; N as usize])),
        (
            "readmitted",
            Arc::new(Int64Array::from_iter_values(
                // Risk predicts readmission, not perfectly: one in 13 goes
                // the other way.
                ids.iter()
                    .map(|i| i64::from(((i * 37) % 100 > 60) != (i % 13 == 0))),
            )) as ArrayRef,
        ),
    ])
    .map_err(|e| Error::invalid_input("labels", e.to_string()))?;
    let refused = trainer
        .get_historical_features(
            labels.clone(),
            &["vitals:heart_rate".parse()?],
            HistoricalOptions::default(),
        )
        .await;
    match refused {
        Err(e) => println!("trainer: refused the identifying view: {e}"),
        Ok(_) => return Err(Error::invalid_input("policy", "the trainer read vitals")),
    }
    let set = trainer
        .get_historical_features(
            labels,
            &["vitals_deid:risk".parse()?, "vitals_deid:age_band".parse()?],
            HistoricalOptions::default(),
        )
        .await?;
    let mut config = TrainConfig::new(Task::BinaryClassification, ModelSpec::Linear);
    config.exclude = vec!["patient_id".into(), "event_timestamp".into()];
    config.progress = Progress::Hidden;
    config.epochs = 20;
    config.learning_rate = 0.05;
    let trained = TabularTrainer::new(config).fit(&set, "readmitted")?;
    println!(
        "trainer: trained on {} de-identified rows, validation ROC AUC {:.3}",
        set.num_rows(),
        trained.report.metrics["roc_auc"]
    );
    let as_trainer = registry("trainer");
    let version = as_trainer
        .register("readmission", trained.artifact, trained.metadata)
        .await?
        .version;
    as_trainer
        .set_alias("readmission", "challenger", version)
        .await?;
    match as_trainer
        .set_alias("readmission", "champion", version)
        .await
    {
        Err(e) => println!("trainer: registered v{version} as challenger; champion refused: {e}"),
        Ok(()) => return Err(Error::invalid_input("policy", "the trainer moved champion")),
    }

    // Release moves champion.
    registry("release")
        .set_alias("readmission", "champion", version)
        .await?;
    println!("release: v{version} is champion");

    // Serving reads online features only.
    let server = features("server");
    let keys = RecordBatch::try_from_iter([(
        "patient_id",
        Arc::new(Int64Array::from(vec![7])) as ArrayRef,
    )])
    .map_err(|e| Error::invalid_input("keys", e.to_string()))?;
    let found = server
        .get_online_features(keys, &["vitals_deid:risk".parse()?])
        .await?;
    println!(
        "server: online risk of patient 7 read ({} row)",
        found.batch.num_rows()
    );
    let offline = server
        .get_historical_features(
            set.clone(),
            &["vitals_deid:risk".parse()?],
            HistoricalOptions::default(),
        )
        .await;
    match offline {
        Err(e) => println!("server: refused the offline store: {e}"),
        Ok(_) => {
            return Err(Error::invalid_input(
                "policy",
                "the server read the offline store",
            ));
        }
    }

    println!("\naccess decisions in the audit log:");
    for e in audit.entries(1, 10_000).await? {
        if e.event.action.starts_with("access.") {
            println!(
                "  {:>3}  {:<13} {:<9} {}",
                e.seq, e.event.action, e.event.actor, e.event.target
            );
        }
    }
    Ok(())
}
