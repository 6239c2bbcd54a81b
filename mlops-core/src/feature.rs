//! Feature definitions and the [`FeatureStore`] trait.
//!
//! A [`FeatureView`] is a named table of features keyed by one or more entity join
//! keys and stamped with an event time (and optionally a created time). A
//! [`FeatureRef`] (`"view:feature"`) names one feature of one view in requests.
//!
//! ```
//! use std::time::Duration;
//! use arrow_schema::DataType;
//! use mlops_core::feature::{FeatureRef, FeatureView};
//!
//! let view = FeatureView::builder("customer_stats")
//!     .join_key("customer_id", DataType::Int64)
//!     .event_time("event_ts")
//!     .created_time("created_ts")
//!     .ttl(Duration::from_secs(86_400))
//!     .feature("txn_count_7d", DataType::Int64)
//!     .feature("amount_avg_7d", DataType::Float64)
//!     .build()?;
//! assert_eq!(view.schema().fields().len(), 5);
//!
//! let r: FeatureRef = "customer_stats:amount_avg_7d".parse()?;
//! assert_eq!(r.view(), "customer_stats");
//! assert!("customer_stats".parse::<FeatureRef>().is_err());
//! # Ok::<(), mlops_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ResourceKind, Result};
use crate::validate_name;

/// A column of a feature view: a join key or a feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureField {
    /// Column name.
    pub name: String,
    /// Arrow type of the column.
    pub data_type: DataType,
}

impl FeatureField {
    /// A field `name` of `data_type`.
    pub fn new(name: impl Into<String>, data_type: DataType) -> Self {
        Self {
            name: name.into(),
            data_type,
        }
    }
}

/// An entity: the thing features describe (a customer, a card, a merchant),
/// identified by a join key column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The entity's name, e.g. `customer`.
    pub name: String,
    /// The join key column that identifies it, e.g. `customer_id`.
    pub join_key: FeatureField,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

impl Entity {
    /// An entity `name` identified by `join_key` of type `data_type`.
    pub fn new(name: impl Into<String>, join_key: impl Into<String>, data_type: DataType) -> Self {
        Self {
            name: name.into(),
            join_key: FeatureField::new(join_key, data_type),
            description: String::new(),
        }
    }

    /// Checks the names; the error names the entity.
    pub fn validate(&self) -> Result<()> {
        validate_name(ResourceKind::Entity, &self.name)?;
        validate_name(ResourceKind::Column, &self.join_key.name)?;
        check_key_type(&format!("entity {}", self.name), &self.join_key)
    }
}

/// A named table of features with Feast's semantics: rows are keyed by the join
/// keys, stamped with an event time, and valid for `ttl` after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureView {
    /// The view's name; also its directory in storage.
    pub name: String,
    /// Entity join key columns (at least one; several make a composite key).
    pub join_keys: Vec<FeatureField>,
    /// The event-time column: when the feature values became true. Any Arrow
    /// timestamp unit is accepted on ingestion.
    pub event_time_column: String,
    /// An optional created-time column: when the row was written. Breaks ties on
    /// event time and, by default, hides rows created after a training row's time.
    #[serde(default)]
    pub created_time_column: Option<String>,
    /// How long after its event time a value stays valid; `None` keeps it forever.
    #[serde(default)]
    pub ttl: Option<Duration>,
    /// The feature columns.
    pub features: Vec<FeatureField>,
    /// Who owns the view.
    #[serde(default)]
    pub owner: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl FeatureView {
    /// Starts building a view named `name`.
    pub fn builder(name: impl Into<String>) -> FeatureViewBuilder {
        FeatureViewBuilder {
            view: FeatureView {
                name: name.into(),
                join_keys: Vec::new(),
                event_time_column: String::new(),
                created_time_column: None,
                ttl: None,
                features: Vec::new(),
                owner: None,
                description: String::new(),
                tags: BTreeMap::new(),
            },
        }
    }

    /// Checks the definition: valid names, at least one join key and one feature,
    /// an event-time column, no column named twice, key types that can be joined on.
    pub fn validate(&self) -> Result<()> {
        validate_name(ResourceKind::FeatureView, &self.name)?;
        let what = || format!("feature view {}", self.name);
        if self.join_keys.is_empty() {
            return Err(Error::invalid_input(what(), "it has no join key"));
        }
        if self.features.is_empty() {
            return Err(Error::invalid_input(what(), "it has no feature"));
        }
        if self.event_time_column.is_empty() {
            return Err(Error::invalid_input(what(), "it has no event-time column"));
        }
        if self.ttl == Some(Duration::ZERO) {
            return Err(Error::invalid_input(
                what(),
                "a TTL of zero would hide every value; use None for no TTL",
            ));
        }
        let mut seen = HashSet::new();
        let columns = self
            .join_keys
            .iter()
            .map(|f| f.name.as_str())
            .chain([self.event_time_column.as_str()])
            .chain(self.created_time_column.as_deref())
            .chain(self.features.iter().map(|f| f.name.as_str()));
        for c in columns {
            validate_name(ResourceKind::Column, c)?;
            if !seen.insert(c) {
                return Err(Error::invalid_input(
                    what(),
                    format!("column '{c}' is named more than once"),
                ));
            }
        }
        for k in &self.join_keys {
            check_key_type(&what(), k)?;
        }
        for f in &self.features {
            if !is_supported_feature_type(&f.data_type) {
                return Err(Error::invalid_input(
                    what(),
                    format!("feature '{}' has unsupported type {}", f.name, f.data_type),
                ));
            }
        }
        Ok(())
    }

    /// The feature named `name`.
    pub fn feature(&self, name: &str) -> Option<&FeatureField> {
        self.features.iter().find(|f| f.name == name)
    }

    /// The Arrow schema of the view's stored rows: join keys (non-null), event time
    /// and created time (non-null, microsecond UTC timestamps), features (nullable).
    pub fn schema(&self) -> Arc<Schema> {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields: Vec<Field> = self
            .join_keys
            .iter()
            .map(|k| Field::new(&k.name, k.data_type.clone(), false))
            .collect();
        fields.push(Field::new(&self.event_time_column, ts.clone(), false));
        if let Some(c) = &self.created_time_column {
            fields.push(Field::new(c, ts, false));
        }
        fields.extend(
            self.features
                .iter()
                .map(|f| Field::new(&f.name, f.data_type.clone(), true)),
        );
        Arc::new(Schema::new(fields))
    }

    /// References to every feature of the view.
    pub fn feature_refs(&self) -> Vec<FeatureRef> {
        let view: Arc<str> = Arc::from(self.name.as_str());
        self.features
            .iter()
            .map(|f| FeatureRef {
                view: view.clone(),
                feature: Arc::from(f.name.as_str()),
            })
            .collect()
    }
}

fn check_key_type(what: &str, key: &FeatureField) -> Result<()> {
    let ok = matches!(
        key.data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Binary
            | DataType::LargeBinary
    );
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(
            what,
            format!(
                "join key '{}' has type {}; join keys must be integers, strings or binary",
                key.name, key.data_type
            ),
        ))
    }
}

fn is_supported_feature_type(t: &DataType) -> bool {
    t.is_primitive()
        || matches!(
            t,
            DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Binary
                | DataType::LargeBinary
        )
        || matches!(t, DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)
            if f.data_type().is_primitive())
}

/// Builds a [`FeatureView`]; [`FeatureViewBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct FeatureViewBuilder {
    view: FeatureView,
}

impl FeatureViewBuilder {
    /// Adds a join key column.
    pub fn join_key(mut self, name: impl Into<String>, data_type: DataType) -> Self {
        self.view.join_keys.push(FeatureField::new(name, data_type));
        self
    }

    /// Adds the join key of `entity`.
    pub fn entity(mut self, entity: &Entity) -> Self {
        self.view.join_keys.push(entity.join_key.clone());
        self
    }

    /// Sets the event-time column.
    pub fn event_time(mut self, column: impl Into<String>) -> Self {
        self.view.event_time_column = column.into();
        self
    }

    /// Sets the created-time column.
    pub fn created_time(mut self, column: impl Into<String>) -> Self {
        self.view.created_time_column = Some(column.into());
        self
    }

    /// Sets the time-to-live of feature values.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.view.ttl = Some(ttl);
        self
    }

    /// Adds a feature column.
    pub fn feature(mut self, name: impl Into<String>, data_type: DataType) -> Self {
        self.view.features.push(FeatureField::new(name, data_type));
        self
    }

    /// Sets the owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.view.owner = Some(owner.into());
        self
    }

    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.view.description = text.into();
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.view.tags.insert(key.into(), value.into());
        self
    }

    /// The validated view.
    pub fn build(self) -> Result<FeatureView> {
        self.view.validate()?;
        Ok(self.view)
    }
}

/// A reference to one feature of one view, written `"view:feature"`. Cheap to
/// clone (the names are shared), as every online answer carries its references.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureRef {
    view: Arc<str>,
    feature: Arc<str>,
}

impl FeatureRef {
    /// A reference to `feature` of `view`, with both names validated.
    pub fn new(view: impl Into<String>, feature: impl Into<String>) -> Result<Self> {
        let r = Self {
            view: Arc::from(view.into()),
            feature: Arc::from(feature.into()),
        };
        validate_name(ResourceKind::FeatureView, &r.view)
            .and_then(|_| validate_name(ResourceKind::Feature, &r.feature))
            .map_err(|e| {
                Error::invalid_input(format!("feature reference \"{r}\""), e.to_string())
            })?;
        Ok(r)
    }

    /// The view's name.
    pub fn view(&self) -> &str {
        &self.view
    }

    /// The feature's name.
    pub fn feature(&self) -> &str {
        &self.feature
    }

    /// The output column name: `feature`, or `view__feature` with full names.
    pub fn column_name(&self, full_feature_names: bool) -> String {
        if full_feature_names {
            format!("{}__{}", self.view, self.feature)
        } else {
            self.feature.to_string()
        }
    }
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

impl FromStr for FeatureRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| {
            Error::invalid_input(
                format!("feature reference \"{s}\""),
                format!("{reason}; expected \"view:feature\""),
            )
        };
        let (view, feature) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
        if feature.contains(':') {
            return Err(bad("more than one ':'"));
        }
        if view.is_empty() {
            return Err(bad("the view name is empty"));
        }
        if feature.is_empty() {
            return Err(bad("the feature name is empty"));
        }
        Self::new(view, feature)
    }
}

impl Serialize for FeatureRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FeatureRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Options of [`FeatureDefinitions::apply_view`].
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyOptions {
    /// Replace an existing view even when the change is incompatible with the data
    /// already stored (a removed key, a changed type). Off by default.
    pub force: bool,
}

impl ApplyOptions {
    /// Options that replace the view even when the change is incompatible.
    pub fn forced() -> Self {
        Self { force: true }
    }
}

/// Options of [`OfflineFeatureStore::get_historical_features`].
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoricalOptions {
    /// The entity dataframe's timestamp column. Default `event_timestamp`.
    pub event_timestamp_column: String,
    /// Name output columns `view__feature` instead of `feature`. Default off.
    pub full_feature_names: bool,
    /// Also require a feature row's created time to be `<=` the entity row's
    /// timestamp, so a late backfill cannot leak into earlier training rows.
    /// Default on (Feast has no such guard).
    pub require_created_before_event: bool,
}

impl Default for HistoricalOptions {
    fn default() -> Self {
        Self {
            event_timestamp_column: "event_timestamp".into(),
            full_feature_names: false,
            require_created_before_event: true,
        }
    }
}

/// What an ingestion stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReceipt {
    /// The view written to.
    pub view: String,
    /// Rows accepted.
    pub rows: usize,
    /// The data files written (object paths under the store root).
    pub files: Vec<String>,
}

/// What a materialization loaded into the online store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterializeReport {
    /// The view materialized.
    pub view: String,
    /// Start of the event-time window (inclusive).
    pub start: DateTime<Utc>,
    /// End of the event-time window (exclusive).
    pub end: DateTime<Utc>,
    /// Entities whose latest row in the window was written online.
    pub entities_written: usize,
}

/// The status of one online feature value, with Feast's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeatureStatus {
    /// A value was found and is within the view's TTL.
    Present,
    /// A row was found but this feature is null in it.
    NullValue,
    /// No row for this entity key.
    NotFound,
    /// A row was found but it is older than the view's TTL; the value is null.
    OutsideMaxAge,
}

/// Per-value status and event time of one online feature column.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineFeatureColumn {
    /// The feature.
    pub feature: FeatureRef,
    /// Its column name in [`OnlineFeatures::batch`].
    pub column: String,
    /// One status per requested row.
    pub statuses: Vec<FeatureStatus>,
    /// One event time per requested row (`None` when not found).
    pub event_times: Vec<Option<DateTime<Utc>>>,
}

/// The answer of [`OnlineFeatureStore::get_online_features`].
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineFeatures {
    /// The request's key columns followed by one column per feature, in request order.
    pub batch: RecordBatch,
    /// Status and event time of every value, one entry per feature column.
    pub columns: Vec<OnlineFeatureColumn>,
}

/// The definitions part of a feature store: entities and feature views.
///
/// Contract for implementations: `apply_*` is atomic and safe against concurrent
/// writers: two processes applying at once either both succeed in some order or
/// one gets [`Error::Conflict`]; neither change is lost silently. An incompatible
/// change to an existing view is refused with [`Error::Conflict`] unless
/// [`ApplyOptions::force`] is set. Unknown names: [`Error::NotFound`].
#[async_trait]
pub trait FeatureDefinitions: Send + Sync + std::fmt::Debug {
    /// Registers or updates an entity.
    async fn apply_entity(&self, entity: Entity) -> Result<()>;

    /// Registers or updates a feature view.
    async fn apply_view(&self, view: FeatureView, options: ApplyOptions) -> Result<()>;

    /// The view named `name`.
    async fn get_view(&self, name: &str) -> Result<FeatureView>;

    /// All views, sorted by name.
    async fn list_views(&self) -> Result<Vec<FeatureView>>;
}

/// The offline part of a feature store: history in, point-in-time correct
/// training sets out, and materialization of the latest values online.
///
/// Contract for implementations:
/// - `ingest` validates the whole batch first (missing or extra columns and wrong
///   types: [`Error::SchemaMismatch`]; null keys or timestamps:
///   [`Error::InvalidInput`]) and makes it visible atomically: a reader sees all of
///   it or none of it, and a failure leaves no partial data. Re-ingesting the same
///   rows does not duplicate them in query results.
/// - `get_historical_features` returns one row per entity row, in input order, and
///   never a value whose event time is after the row's timestamp (see
///   [`HistoricalOptions`]). Unknown views or features: [`Error::NotFound`].
/// - `materialize` is idempotent and never replaces a newer online value by an older.
#[async_trait]
pub trait OfflineFeatureStore: Send + Sync + std::fmt::Debug {
    /// Appends `batch` to the view `view`.
    async fn ingest(&self, view: &str, batch: RecordBatch) -> Result<IngestReceipt>;

    /// Point-in-time correct join of `entity_df` with `features`.
    async fn get_historical_features(
        &self,
        entity_df: RecordBatch,
        features: &[FeatureRef],
        options: HistoricalOptions,
    ) -> Result<RecordBatch>;

    /// Loads the latest row per entity with event time in `[start, end)` online.
    async fn materialize(
        &self,
        view: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<MaterializeReport>;

    /// Materializes what changed since the last incremental run: the rows with
    /// event time from that run's end up to `end`, and every row committed since
    /// that run with event time before `end`, however late it arrived (progress
    /// is tracked by commit, not by event time, so the online store agrees with
    /// the offline join after late data). Then records how far it got.
    async fn materialize_incremental(
        &self,
        view: &str,
        end: DateTime<Utc>,
    ) -> Result<MaterializeReport>;
}

/// The online part of a feature store: low-latency lookups by entity key, which
/// is all serving-time enrichment needs.
///
/// Contract for implementations: `get_online_features` answers in request order
/// with a [`FeatureStatus`] per value and enforces the view's TTL at read time.
/// Unknown views or features: [`Error::NotFound`].
#[async_trait]
pub trait OnlineFeatureStore: Send + Sync + std::fmt::Debug {
    /// Looks up `features` for the entity keys in `entity_rows` (one row per key).
    async fn get_online_features(
        &self,
        entity_rows: RecordBatch,
        features: &[FeatureRef],
    ) -> Result<OnlineFeatures>;
}

/// A whole feature store: definitions ([`FeatureDefinitions`]), offline storage
/// with point-in-time correct retrieval ([`OfflineFeatureStore`]) and an online
/// store for low-latency lookups ([`OnlineFeatureStore`]).
///
/// Implemented for every type that implements the three parts; code that needs
/// one role takes that part (serving-time enrichment takes
/// `Arc<dyn OnlineFeatureStore>`), and an `Arc<dyn FeatureStore>` coerces to any
/// of them.
pub trait FeatureStore: FeatureDefinitions + OfflineFeatureStore + OnlineFeatureStore {}

impl<T: FeatureDefinitions + OfflineFeatureStore + OnlineFeatureStore + ?Sized> FeatureStore for T {}
