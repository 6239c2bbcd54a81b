//! `mlops features`: the feature store on the config's storage root (offline
//! history) and its `[online]` store (the latest values, for serving).
//!
//! ```text
//! mlops features apply DEFINITIONS.toml [--force] [--dry-run]
//! mlops features list
//! mlops features ingest VIEW FILE.parquet
//! mlops features materialize [VIEW...] [--start TIME] [--end TIME] | --incremental [--end TIME]
//! mlops features historical ENTITIES.parquet --feature VIEW:FEATURE... -o OUT.parquet
//! mlops features get --feature VIEW:FEATURE... --entity KEY=VALUE[,KEY=VALUE]...
//! ```
//!
//! # The definitions file
//!
//! `apply` reads entities and feature views from a TOML file; each maps 1:1 onto
//! the SDK's `Entity` and `FeatureView`:
//!
//! ```toml
//! # An entity: what features describe, and the column that identifies it.
//! [[entities]]
//! name = "customer"
//! join_key = "customer_id"
//! type = "int64"
//! description = "A card holder"          # optional
//!
//! # A feature view: a table of features keyed by its entities' join keys.
//! [[views]]
//! name = "customer_stats"
//! entities = ["customer"]                # join keys of these entities (in this
//!                                        # file or already applied), and/or
//! # join_keys = [{ name = "customer_id", type = "int64" }]
//! event_time = "event_ts"                # when each row's values became true
//! created_time = "created_ts"            # optional: when the row was written
//! ttl = "30d"                            # optional: how long a value stays valid
//! owner = "risk-team"                    # optional
//! description = "Card activity"          # optional
//! tags = { domain = "payments" }         # optional
//! features = [
//!     { name = "txn_count_7d", type = "int64" },
//!     { name = "amount_avg_7d", type = "float64" },
//!     { name = "segment", type = "string" },
//! ]
//! ```
//!
//! Types: `bool`, `int8` `int16` `int32` `int64`, `uint8` `uint16` `uint32`
//! `uint64`, `float32` `float64`, `string`, `binary`, and `list<T>` of a numeric
//! `T` (features only; join keys are integers, strings or binary). A `ttl` is a
//! duration (`90s`, `12h`, `30d`). Unknown keys are errors naming the key and the
//! line. The whole file is checked before anything is applied: a bad entity or
//! view, an unknown entity, a join key whose type differs from its entity's, or a
//! change that does not fit a view's stored data (a join key, time column or
//! feature type changed, a feature removed; `--force` replaces it anyway)
//! applies nothing. Applying the same file again changes nothing; the report
//! says, per entity and view, `created`, `updated` or `unchanged`; each change
//! is recorded in the audit log.
//!
//! Entity files for `historical` hold the join keys and a timestamp column
//! (`event_timestamp` unless `--timestamp-column`); each row gets the feature
//! values as of its timestamp (point-in-time correct), in input order.
//! `materialize` and `get` need a shared online store (`[online] url =
//! "redis://..."`): the default, this process's memory, would be gone when the
//! command exits, so they refuse it (exit 2).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int8Array, Int16Array, Int32Array, Int64Array, LargeBinaryArray,
    LargeStringArray, RecordBatch, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use clap::Subcommand;
use mlops::arrow::schema::{DataType, Field};
use mlops::chrono::{DateTime, Utc};
use mlops::core::audit::{AuditEvent, AuditLog};
use mlops::core::feature::{
    ApplyOptions, Entity, FeatureDefinitions, FeatureField, FeatureRef, FeatureView,
    HistoricalOptions, OfflineFeatureStore, OnlineFeatureStore,
};
use mlops::core::{Error, Result};
use mlops::store::{
    InMemoryOnlineStore, ObjectAuditLog, ObjectFeatureStore, StoreRoot, view_incompatibility,
};
use serde::Deserialize;

use crate::config::Config;

/// What `mlops features` does.
#[derive(Debug, Subcommand)]
pub(crate) enum FeaturesCommand {
    /// Registers the entities and feature views of a definitions file (its
    /// format is documented at the top of mlops-cli/src/features.rs):
    /// idempotent, reports what changed, applies nothing when any of it is
    /// wrong.
    Apply {
        /// The definitions file (TOML).
        definitions: PathBuf,
        /// Replace views even when the change does not fit their stored data.
        #[arg(long)]
        force: bool,
        /// Check the file and report what would change, applying nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The registered feature views.
    List,
    /// Appends the rows of a Parquet file to a view: all of them or, when any
    /// is wrong (a missing column, a wrong type, a null key), none.
    Ingest {
        /// The feature view.
        view: String,
        /// The Parquet file: the view's join keys, event time (any timestamp
        /// unit), created time if it has one, and features.
        file: PathBuf,
    },
    /// Loads the latest value per entity into the online store (`[online]`,
    /// which must be shared: redis://).
    Materialize {
        /// The views (default: every view).
        views: Vec<String>,
        /// Only what changed since the last incremental run, late rows included
        /// (what a CronJob runs).
        #[arg(long, conflicts_with = "start")]
        incremental: bool,
        /// Start of the event-time window, RFC 3339 (default: the beginning).
        #[arg(long)]
        start: Option<String>,
        /// End of the event-time window (exclusive), RFC 3339 (default: now).
        #[arg(long)]
        end: Option<String>,
    },
    /// A point-in-time correct training set: each entity row joined with the
    /// feature values as of its timestamp, written as Parquet.
    Historical {
        /// The entity rows (Parquet): join keys and a timestamp column.
        entities: PathBuf,
        /// A feature to join, `view:feature` (repeat for more).
        #[arg(long = "feature", short = 'f', required = true)]
        features: Vec<String>,
        /// Where to write the result (replaced only once complete).
        #[arg(long, short)]
        output: PathBuf,
        /// The entity file's timestamp column.
        #[arg(long, default_value = "event_timestamp")]
        timestamp_column: String,
        /// Name the output columns `view__feature` instead of `feature`.
        #[arg(long)]
        full_feature_names: bool,
    },
    /// The latest online values of features for some entities.
    Get {
        /// A feature to read, `view:feature` (repeat for more).
        #[arg(long = "feature", short = 'f', required = true)]
        features: Vec<String>,
        /// One entity: `KEY=VALUE`, comma-separated for composite keys (repeat
        /// for more entities).
        #[arg(long = "entity", short = 'e', required = true)]
        entities: Vec<String>,
    },
}

/// Runs a features command on the `config` file's storage root and online store.
pub(crate) async fn run(config: &Path, command: FeaturesCommand, json: bool) -> Result<()> {
    let config = Config::load(config)?;
    let root = StoreRoot::open_with_options(&config.storage_root()?, config.storage_options()?)?;
    // Only materialize and get touch the online store: the others never connect.
    let offline_only = || ObjectFeatureStore::new(&root, Arc::new(InMemoryOnlineStore::new()));
    match command {
        FeaturesCommand::Apply {
            definitions,
            force,
            dry_run,
        } => {
            let audit = ObjectAuditLog::new(&root);
            apply(&offline_only(), &audit, &definitions, force, dry_run, json).await
        }
        FeaturesCommand::List => list(&offline_only(), json).await,
        FeaturesCommand::Ingest { view, file } => {
            let batch = crate::io::read_parquet(&file)?;
            let receipt = offline_only().ingest(&view, batch).await?;
            if json {
                print_json(&receipt)
            } else {
                println!(
                    "ingested {} rows into view {} ({} files)",
                    receipt.rows,
                    receipt.view,
                    receipt.files.len()
                );
                Ok(())
            }
        }
        FeaturesCommand::Materialize {
            views,
            incremental,
            start,
            end,
        } => {
            let start = start.map(|s| parse_time("--start", &s)).transpose()?;
            let end = end.map(|s| parse_time("--end", &s)).transpose()?;
            let store = online(&config, &root, "materialize into").await?;
            materialize(&store, views, incremental, start, end, json).await
        }
        FeaturesCommand::Historical {
            entities,
            features,
            output,
            timestamp_column,
            full_feature_names,
        } => {
            let refs = parse_refs(&features)?;
            let entity_df = crate::io::read_parquet(&entities)?;
            let mut options = HistoricalOptions::default();
            options.event_timestamp_column = timestamp_column;
            options.full_feature_names = full_feature_names;
            let batch = offline_only()
                .get_historical_features(entity_df, &refs, options)
                .await?;
            crate::io::write_parquet(&output, &batch)?;
            let columns: Vec<&str> = batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "output": output.display().to_string(),
                        "rows": batch.num_rows(),
                        "columns": columns,
                    })
                );
            } else {
                println!(
                    "wrote {} rows to {} ({})",
                    batch.num_rows(),
                    output.display(),
                    columns.join(", ")
                );
            }
            Ok(())
        }
        FeaturesCommand::Get { features, entities } => {
            let refs = parse_refs(&features)?;
            let store = online(&config, &root, "read from").await?;
            get(&store, &refs, &entities, json).await
        }
    }
}

/// The feature store with the config's online store, which must outlive this
/// process (not `memory://`).
async fn online(config: &Config, root: &StoreRoot, doing: &str) -> Result<ObjectFeatureStore> {
    let (online, in_memory) = config.online_store().await?;
    if in_memory {
        return Err(Error::invalid_input(
            "config [online] url",
            format!(
                "the online store is this process's memory (memory://, the default), so there \
                 is nothing to {doing} that outlives the command; set [online] url = \
                 \"redis://host:port\" (or \"${{REDIS_URL}}\")"
            ),
        ));
    }
    Ok(ObjectFeatureStore::new(root, online))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(value).map_err(|e| Error::backend("json", e))?
    );
    Ok(())
}

fn parse_refs(features: &[String]) -> Result<Vec<FeatureRef>> {
    features.iter().map(|f| f.parse()).collect()
}

fn parse_time(flag: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Error::invalid_input(
                format!("{flag} {text:?}"),
                format!("{e}; expected RFC 3339, e.g. 2026-01-31T00:00:00Z"),
            )
        })
}

// ---------------------------------------------------------------- definitions

/// A definitions file (see the module documentation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionsToml {
    #[serde(default)]
    entities: Vec<EntityToml>,
    #[serde(default)]
    views: Vec<ViewToml>,
}

/// `[[entities]]`: an [`Entity`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityToml {
    name: String,
    join_key: String,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default)]
    description: String,
}

/// `[[views]]`: a [`FeatureView`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewToml {
    name: String,
    #[serde(default)]
    entities: Vec<String>,
    #[serde(default)]
    join_keys: Vec<FieldToml>,
    event_time: String,
    created_time: Option<String>,
    ttl: Option<String>,
    features: Vec<FieldToml>,
    owner: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

/// A join key or a feature: `{ name = "...", type = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldToml {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
}

/// The Arrow type a definitions file's `type` names; the error names `what`
/// and lists the types there are.
fn parse_type(what: &str, text: &str) -> Result<DataType> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("list<").and_then(|s| s.strip_suffix('>')) {
        let item = parse_type(what, inner)?;
        if !item.is_primitive() {
            return Err(Error::invalid_input(
                what,
                format!("type {text:?}: list items must be numeric"),
            ));
        }
        return Ok(DataType::List(Arc::new(Field::new("item", item, true))));
    }
    Ok(match t {
        "bool" | "boolean" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "string" => DataType::Utf8,
        "binary" => DataType::Binary,
        _ => {
            return Err(Error::invalid_input(
                what,
                format!(
                    "unknown type {text:?}; expected bool, int8, int16, int32, int64, uint8, \
                     uint16, uint32, uint64, float32, float64, string, binary or list<T>"
                ),
            ));
        }
    })
}

/// The entities and views of the file at `path`, each validated; the views'
/// entity references resolved against the file's entities, then `known`.
fn read_definitions(path: &Path, known: &[Entity]) -> Result<(Vec<Entity>, Vec<FeatureView>)> {
    let source = || format!("definitions file {}", path.display());
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::invalid_input(source(), e.to_string()))?;
    let file: DefinitionsToml =
        toml::from_str(&text).map_err(|e| Error::invalid_input(source(), e.to_string()))?;
    if file.entities.is_empty() && file.views.is_empty() {
        return Err(Error::invalid_input(
            source(),
            "it defines nothing: expected [[entities]] or [[views]]",
        ));
    }
    let mut entities: Vec<Entity> = Vec::new();
    for e in file.entities {
        let what = format!("{}: entity {}", source(), e.name);
        if entities.iter().any(|x| x.name == e.name) {
            return Err(Error::invalid_input(what, "it is defined more than once"));
        }
        let mut entity = Entity::new(
            &e.name,
            &e.join_key,
            parse_type(&format!("{what}: join_key {}", e.join_key), &e.data_type)?,
        );
        entity.description = e.description;
        entity
            .validate()
            .map_err(|err| Error::invalid_input(&what, err.to_string()))?;
        entities.push(entity);
    }
    let mut views: Vec<FeatureView> = Vec::new();
    for v in file.views {
        let what = format!("{}: view {}", source(), v.name);
        if views.iter().any(|x| x.name == v.name) {
            return Err(Error::invalid_input(what, "it is defined more than once"));
        }
        let mut b = FeatureView::builder(&v.name).event_time(&v.event_time);
        for name in &v.entities {
            let entity = entities
                .iter()
                .chain(known)
                .find(|e| &e.name == name)
                .ok_or_else(|| {
                    Error::invalid_input(
                        &what,
                        format!("entity {name:?} is neither in this file nor applied before"),
                    )
                })?;
            b = b.entity(entity);
        }
        for k in &v.join_keys {
            b = b.join_key(
                &k.name,
                parse_type(&format!("{what}: join key {}", k.name), &k.data_type)?,
            );
        }
        for f in &v.features {
            b = b.feature(
                &f.name,
                parse_type(&format!("{what}: feature {}", f.name), &f.data_type)?,
            );
        }
        if let Some(c) = &v.created_time {
            b = b.created_time(c);
        }
        if let Some(ttl) = &v.ttl {
            let d: Duration = humantime::parse_duration(ttl).map_err(|e| {
                Error::invalid_input(
                    format!("{what}: ttl {ttl:?}"),
                    format!("{e}; expected a duration such as 12h or 30d"),
                )
            })?;
            b = b.ttl(d);
        }
        if let Some(o) = &v.owner {
            b = b.owner(o);
        }
        b = b.description(&v.description);
        for (k, val) in &v.tags {
            b = b.tag(k, val);
        }
        let view = b
            .build()
            .map_err(|err| Error::invalid_input(&what, err.to_string()))?;
        // A join key must have its entity's type, wherever the entity is defined.
        for key in &view.join_keys {
            if let Some(e) = entities
                .iter()
                .chain(known)
                .find(|e| e.join_key.name == key.name && e.join_key.data_type != key.data_type)
            {
                return Err(Error::invalid_input(
                    &what,
                    format!(
                        "join key '{}' has type {}, but entity {} declares it {}",
                        key.name, key.data_type, e.name, e.join_key.data_type
                    ),
                ));
            }
        }
        views.push(view);
    }
    Ok((entities, views))
}

/// What applying a definition does to the store.
fn change<T: PartialEq>(old: Option<&T>, new: &T) -> &'static str {
    match old {
        None => "created",
        Some(o) if o == new => "unchanged",
        Some(_) => "updated",
    }
}

async fn apply(
    store: &ObjectFeatureStore,
    audit: &dyn AuditLog,
    path: &Path,
    force: bool,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let known_entities = store.offline().list_entities().await?;
    let known_views: HashMap<String, FeatureView> = store
        .list_views()
        .await?
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let (entities, views) = read_definitions(path, &known_entities)?;
    // Every check first: nothing is applied unless all of it can be.
    if !force {
        for v in &views {
            if let Some(reason) = known_views
                .get(&v.name)
                .and_then(|old| view_incompatibility(old, v))
            {
                return Err(Error::conflict(
                    format!("feature view {}", v.name),
                    format!(
                        "{reason}; this does not fit the data already stored (apply with \
                         --force to replace it); nothing was applied"
                    ),
                ));
            }
        }
    }
    let entity_changes: Vec<(&Entity, &'static str)> = entities
        .iter()
        .map(|e| {
            let old = known_entities.iter().find(|k| k.name == e.name);
            (e, change(old, e))
        })
        .collect();
    let view_changes: Vec<(&FeatureView, &'static str)> = views
        .iter()
        .map(|v| (v, change(known_views.get(&v.name), v)))
        .collect();
    if !dry_run {
        // Each change is in the audit log, as registry changes are.
        let record = |target: String, what: &str, forced: bool| {
            AuditEvent::new("mlops-cli", "features apply", target)
                .detail("change", what)
                .detail("forced", forced.to_string())
        };
        for (e, what) in &entity_changes {
            if *what != "unchanged" {
                store.apply_entity((*e).clone()).await?;
                audit
                    .append(record(format!("entity {}", e.name), what, false))
                    .await?;
            }
        }
        let options = if force {
            ApplyOptions::forced()
        } else {
            ApplyOptions::default()
        };
        for (v, what) in &view_changes {
            if *what != "unchanged" {
                store.apply_view((*v).clone(), options.clone()).await?;
                audit
                    .append(record(format!("feature view {}", v.name), what, force))
                    .await?;
            }
        }
    }
    if json {
        let list = |items: Vec<(&str, &str)>| {
            items
                .into_iter()
                .map(|(name, change)| serde_json::json!({"name": name, "change": change}))
                .collect::<Vec<_>>()
        };
        println!(
            "{}",
            serde_json::json!({
                "dry_run": dry_run,
                "entities": list(entity_changes.iter().map(|(e, c)| (e.name.as_str(), *c)).collect()),
                "views": list(view_changes.iter().map(|(v, c)| (v.name.as_str(), *c)).collect()),
            })
        );
    } else {
        let prefix = if dry_run { "would be " } else { "" };
        for (e, c) in &entity_changes {
            println!("entity {}: {prefix}{c}", e.name);
        }
        for (v, c) in &view_changes {
            println!("view {}: {prefix}{c}", v.name);
        }
    }
    Ok(())
}

async fn list(store: &ObjectFeatureStore, json: bool) -> Result<()> {
    let views = store.list_views().await?;
    if json {
        return print_json(&views);
    }
    println!(
        "{:<32}  {:<24}  {:>8}  TTL",
        "VIEW", "JOIN KEYS", "FEATURES"
    );
    for v in views {
        let keys: Vec<&str> = v.join_keys.iter().map(|k| k.name.as_str()).collect();
        let ttl = v.ttl.map_or("-".to_owned(), |t| {
            humantime::format_duration(t).to_string()
        });
        println!(
            "{:<32}  {:<24}  {:>8}  {ttl}",
            v.name,
            keys.join(","),
            v.features.len()
        );
    }
    Ok(())
}

// ------------------------------------------------------------------- online

async fn materialize(
    store: &ObjectFeatureStore,
    views: Vec<String>,
    incremental: bool,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    json: bool,
) -> Result<()> {
    // Every named view must exist before any is materialized.
    let views = if views.is_empty() {
        store
            .list_views()
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect()
    } else {
        for v in &views {
            store.get_view(v).await?;
        }
        views
    };
    let end = end.unwrap_or_else(Utc::now);
    let start =
        start.unwrap_or(DateTime::<Utc>::UNIX_EPOCH - mlops::chrono::TimeDelta::days(365 * 1000));
    if !incremental && end <= start {
        return Err(Error::invalid_input(
            "--start/--end",
            format!("the window [{start}, {end}) is empty"),
        ));
    }
    let mut reports = Vec::new();
    let bar = crate::progress::bar(
        json,
        views.len() as u64,
        "{spinner} materializing {msg} ({pos}/{len} views, {elapsed})",
    );
    for v in &views {
        if let Some(bar) = &bar {
            bar.set_message(v.clone());
        }
        let report = if incremental {
            store.materialize_incremental(v, end).await
        } else {
            store.materialize(v, start, end).await
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return Err(e);
            }
        };
        if let Some(bar) = &bar {
            bar.inc(1);
            bar.suspend(|| {
                println!(
                    "view {}: {} entities written online (event time up to {})",
                    report.view,
                    report.entities_written,
                    report.end.to_rfc3339()
                );
            });
        } else if !json {
            println!(
                "view {}: {} entities written online (event time up to {})",
                report.view,
                report.entities_written,
                report.end.to_rfc3339()
            );
        }
        reports.push(report);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        print_json(&reports)?;
    } else if views.is_empty() {
        println!("no feature views to materialize");
    }
    Ok(())
}

/// The join keys the views of `refs` use, in order of first use, with types.
async fn key_fields(store: &ObjectFeatureStore, refs: &[FeatureRef]) -> Result<Vec<FeatureField>> {
    let mut keys: Vec<FeatureField> = Vec::new();
    let mut seen_views: Vec<&str> = Vec::new();
    for r in refs {
        if seen_views.contains(&r.view()) {
            continue;
        }
        seen_views.push(r.view());
        let view = store.get_view(r.view()).await?;
        for k in view.join_keys {
            if !keys.iter().any(|x| x.name == k.name) {
                keys.push(k);
            }
        }
    }
    Ok(keys)
}

/// One column of entity keys of type `field.data_type`, parsed from `values`.
fn key_column(field: &FeatureField, values: &[&str]) -> Result<ArrayRef> {
    fn ints<T: std::str::FromStr>(field: &FeatureField, values: &[&str]) -> Result<Vec<T>> {
        values
            .iter()
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    Error::invalid_input(
                        format!("--entity {}={v}", field.name),
                        format!("not a valid {} (the key's type)", field.data_type),
                    )
                })
            })
            .collect()
    }
    Ok(match field.data_type {
        DataType::Int8 => Arc::new(Int8Array::from(ints::<i8>(field, values)?)),
        DataType::Int16 => Arc::new(Int16Array::from(ints::<i16>(field, values)?)),
        DataType::Int32 => Arc::new(Int32Array::from(ints::<i32>(field, values)?)),
        DataType::Int64 => Arc::new(Int64Array::from(ints::<i64>(field, values)?)),
        DataType::UInt8 => Arc::new(UInt8Array::from(ints::<u8>(field, values)?)),
        DataType::UInt16 => Arc::new(UInt16Array::from(ints::<u16>(field, values)?)),
        DataType::UInt32 => Arc::new(UInt32Array::from(ints::<u32>(field, values)?)),
        DataType::UInt64 => Arc::new(UInt64Array::from(ints::<u64>(field, values)?)),
        DataType::Utf8 => Arc::new(StringArray::from(values.to_vec())),
        DataType::LargeUtf8 => Arc::new(LargeStringArray::from(values.to_vec())),
        DataType::Binary => Arc::new(BinaryArray::from_iter_values(
            values.iter().map(|v| v.as_bytes()),
        )),
        DataType::LargeBinary => Arc::new(LargeBinaryArray::from_iter_values(
            values.iter().map(|v| v.as_bytes()),
        )),
        ref other => {
            return Err(Error::invalid_input(
                format!("join key {}", field.name),
                format!("type {other} cannot be given on the command line"),
            ));
        }
    })
}

/// The entity rows of `--entity KEY=VALUE[,KEY=VALUE]` arguments: one row per
/// argument, every key of `keys` given once in each.
fn entity_rows(keys: &[FeatureField], entities: &[String]) -> Result<RecordBatch> {
    let expected = || {
        keys.iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut columns: Vec<Vec<&str>> = vec![Vec::new(); keys.len()];
    for arg in entities {
        let mut row: Vec<Option<&str>> = vec![None; keys.len()];
        for pair in arg.split(',') {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::invalid_input(
                    format!("--entity {arg:?}"),
                    format!("expected KEY=VALUE (keys: {})", expected()),
                )
            })?;
            let i = keys
                .iter()
                .position(|f| f.name == k.trim())
                .ok_or_else(|| {
                    Error::invalid_input(
                        format!("--entity {arg:?}"),
                        format!(
                            "unknown key {:?}; the features' views are keyed by {}",
                            k.trim(),
                            expected()
                        ),
                    )
                })?;
            if row[i].replace(v.trim()).is_some() {
                return Err(Error::invalid_input(
                    format!("--entity {arg:?}"),
                    format!("key {} is given twice", k.trim()),
                ));
            }
        }
        for (i, v) in row.into_iter().enumerate() {
            let v = v.ok_or_else(|| {
                Error::invalid_input(
                    format!("--entity {arg:?}"),
                    format!("key {} is missing (keys: {})", keys[i].name, expected()),
                )
            })?;
            columns[i].push(v);
        }
    }
    let arrays = keys
        .iter()
        .zip(&columns)
        .map(|(k, values)| Ok((k.name.clone(), key_column(k, values)?)))
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_from_iter(arrays).map_err(|e| Error::invalid_input("--entity", e.to_string()))
}

/// Row `i` of `array` as JSON: numbers, booleans, strings, binary as hex,
/// lists as arrays; null as null.
fn json_value(array: &dyn Array, i: usize) -> serde_json::Value {
    use serde_json::Value;
    if array.is_null(i) {
        return Value::Null;
    }
    let float = |f: f64| {
        serde_json::Number::from_f64(f).map_or(Value::String(f.to_string()), Value::Number)
    };
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(i))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => array.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).into(),
        DataType::Binary => hex::encode(array.as_binary::<i32>().value(i)).into(),
        DataType::LargeBinary => hex::encode(array.as_binary::<i64>().value(i)).into(),
        DataType::List(_) => list_json(array.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => list_json(array.as_list::<i64>().value(i).as_ref()),
        DataType::FixedSizeList(..) => list_json(array.as_fixed_size_list().value(i).as_ref()),
        other => Value::String(format!("<{other}>")),
    }
}

fn list_json(items: &dyn Array) -> serde_json::Value {
    serde_json::Value::Array((0..items.len()).map(|j| json_value(items, j)).collect())
}

/// A JSON value as a table cell: strings without quotes.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn get(
    store: &ObjectFeatureStore,
    refs: &[FeatureRef],
    entities: &[String],
    json: bool,
) -> Result<()> {
    let keys = key_fields(store, refs).await?;
    let rows = entity_rows(&keys, entities)?;
    let answer = store.get_online_features(rows.clone(), refs).await?;
    let batch = &answer.batch;
    let key_values = |i: usize| -> Vec<(String, serde_json::Value)> {
        keys.iter()
            .enumerate()
            .map(|(k, f)| (f.name.clone(), json_value(rows.column(k).as_ref(), i)))
            .collect()
    };
    if json {
        let out: Vec<serde_json::Value> = (0..rows.num_rows())
            .map(|i| {
                let entity: serde_json::Map<String, serde_json::Value> =
                    key_values(i).into_iter().collect();
                let features: serde_json::Map<String, serde_json::Value> = answer
                    .columns
                    .iter()
                    .map(|c| {
                        let value = batch
                            .column_by_name(&c.column)
                            .map_or(serde_json::Value::Null, |a| json_value(a.as_ref(), i));
                        (
                            c.feature.to_string(),
                            serde_json::json!({
                                "value": value,
                                "status": c.statuses[i],
                                "event_time": c.event_times[i].map(|t| t.to_rfc3339()),
                            }),
                        )
                    })
                    .collect();
                serde_json::json!({"entity": entity, "features": features})
            })
            .collect();
        return print_json(&out);
    }
    let mut header: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
    header.extend(answer.columns.iter().map(|c| c.feature.to_string()));
    let mut table = vec![header];
    for i in 0..rows.num_rows() {
        let mut line: Vec<String> = key_values(i).iter().map(|(_, v)| cell(v)).collect();
        for c in &answer.columns {
            let value = batch
                .column_by_name(&c.column)
                .map_or(serde_json::Value::Null, |a| json_value(a.as_ref(), i));
            let status = c.statuses[i];
            line.push(match status {
                mlops::core::feature::FeatureStatus::Present => cell(&value),
                other => serde_json::to_value(other)
                    .map(|s| format!("- ({})", cell(&s)))
                    .unwrap_or_else(|_| "-".into()),
            });
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &table {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}
