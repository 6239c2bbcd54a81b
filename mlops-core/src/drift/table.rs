//! The table-level drift detector: one method per column, chosen by type and size
//! the way Evidently chooses by default, combined into an overall verdict.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::ks::ks_2samp_sorted;
use super::sort::{par_map, sort_floats};
use super::univariate::{std_dev, wasserstein_sorted};
use super::{
    DriftDetector, DriftMethod, DriftReport, FeatureDrift, OverallDrift, OverallRule, PSI_BINS,
    PSI_EPSILON, QuantileBins, chi_squared, jensen_shannon, psi,
};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Reference samples up to this many values count as "small": KS for numeric
/// columns and chi-squared for categorical ones; larger ones get normed
/// Wasserstein and Jensen-Shannon (Evidently's defaults).
pub const SMALL_SAMPLE_LIMIT: usize = 1000;

/// A numeric column with at most this many distinct reference values is compared
/// as categorical (its values are the categories), as Evidently does.
pub const LOW_CARDINALITY_LIMIT: usize = 5;

/// Default cap on the reference values kept per numeric column (for KS and
/// Wasserstein); larger references are subsampled deterministically. PSI and binned
/// Jensen-Shannon always use bin counts over the whole reference.
pub const DEFAULT_MAX_NUMERIC_SAMPLE: usize = 10_000;

/// Default cap on the categories kept per categorical column: the most frequent
/// ones; the rest, and values unseen at fit time, share one "other" bucket.
pub const DEFAULT_MAX_CATEGORIES: usize = 1_000;

/// How a column is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// Compared as numbers.
    Numeric,
    /// Compared as category counts (strings, booleans, dictionaries, and numeric
    /// columns with few distinct values).
    Categorical,
}

/// A per-column choice that replaces the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnOverride {
    /// The method to use.
    pub method: Option<DriftMethod>,
    /// The threshold: a significance level for tests, a distance for distances.
    pub threshold: Option<f64>,
}

/// How a [`TableDriftDetector`] is fitted.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TableDriftConfig {
    /// The columns to compare; `None` takes every column of a supported type
    /// (integers, floats, booleans, strings, string dictionaries).
    pub columns: Option<Vec<String>>,
    /// Per-column method and threshold overrides.
    pub overrides: BTreeMap<String, ColumnOverride>,
    /// How per-column verdicts combine. Default: drift when half the columns drifted
    /// (Evidently's dataset drift).
    pub rule: OverallRule,
    /// Cap on reference values kept per numeric column.
    pub max_numeric_sample: usize,
    /// Cap on categories kept per categorical column.
    pub max_categories: usize,
    /// Seed of the deterministic subsampling.
    pub seed: u64,
}

impl Default for TableDriftConfig {
    fn default() -> Self {
        Self {
            columns: None,
            overrides: BTreeMap::new(),
            rule: OverallRule::ShareOfDrifted { share: 0.5 },
            max_numeric_sample: DEFAULT_MAX_NUMERIC_SAMPLE,
            max_categories: DEFAULT_MAX_CATEGORIES,
            seed: 0,
        }
    }
}

/// What is kept of one reference column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Profile {
    /// Many distinct numbers.
    Numeric {
        /// Sorted reference values, at most `max_numeric_sample`.
        sample: Vec<f64>,
        /// Quantile bins fitted on the whole reference.
        bins: QuantileBins,
        /// Whole-reference counts per bin.
        bin_counts: Vec<u64>,
        /// Whole-reference population standard deviation.
        std: f64,
    },
    /// Few distinct numbers, compared as categories.
    Levels {
        /// The distinct values, ascending.
        levels: Vec<f64>,
        /// Counts per level, then one "other" bucket.
        counts: Vec<u64>,
    },
    /// Strings or booleans.
    Categories {
        /// The kept categories.
        categories: Vec<String>,
        /// Counts per category, then one "other" bucket.
        counts: Vec<u64>,
    },
}

/// The fitted reference of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// The column's name.
    pub name: String,
    /// Its Arrow type at fit time.
    pub data_type: DataType,
    /// How it is compared.
    pub kind: ColumnKind,
    /// The method used.
    pub method: DriftMethod,
    /// The threshold used.
    pub threshold: f64,
    /// Non-null, finite reference values.
    pub count: usize,
    /// Null reference values.
    pub nulls: usize,
    /// NaN or infinite reference values (left out).
    pub non_finite: usize,
    profile: Profile,
}

/// A fitted reference: serializable, so it can travel inside a model artifact, and
/// bounded in size by the caps of [`TableDriftConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableReference {
    /// Format version of this structure.
    pub format_version: u32,
    /// Rows in the reference batch.
    pub rows: usize,
    /// The overall rule.
    pub rule: OverallRule,
    /// One profile per compared column, in order.
    pub columns: Vec<ColumnProfile>,
}

/// Detects drift of a table against a reference table, per column and overall.
///
/// Per column (unless overridden), as Evidently by default:
///
/// | Column | Reference <= 1000 values | Larger reference |
/// |---|---|---|
/// | numeric, more than 5 distinct values | KS (p < 0.05) | normed Wasserstein (>= 0.1) |
/// | numeric with <= 5 distinct values, boolean, string, dictionary | chi-squared (p < 0.05) | Jensen-Shannon (>= 0.1) |
///
/// Overall: a share of drifted columns, or Bonferroni / Benjamini-Hochberg
/// correction of the tests' p-values (as alibi-detect), see [`OverallRule`].
///
/// Nulls, NaN and infinities are counted and reported, never compared. A current
/// column with no usable value is reported as drifted, with a note. Missing columns
/// and type changes are [`Error::SchemaMismatch`]; an empty batch is
/// [`Error::InvalidInput`].
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Float64Array, RecordBatch, StringArray};
/// use mlops_core::drift::{TableDriftConfig, TableDriftDetector};
/// use mlops_core::DriftDetector;
///
/// let batch = |shift: f64, city: &str| RecordBatch::try_from_iter([
///     ("amount", Arc::new(Float64Array::from_iter_values((0..500).map(|i| i as f64 + shift))) as _),
///     ("city", Arc::new(StringArray::from_iter_values((0..500).map(|i| if i % 2 == 0 { "paris" } else { city }))) as _),
/// ]).unwrap();
/// let detector = TableDriftDetector::fit(&batch(0.0, "rome"), &TableDriftConfig::default())?;
/// assert!(!detector.detect(&batch(0.0, "rome"))?.overall.drifted);
/// let report = detector.detect(&batch(250.0, "oslo"))?;
/// assert!(report.overall.drifted);
/// assert!(report.feature("amount").unwrap().drifted);
/// # Ok::<(), mlops_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TableDriftDetector {
    reference: TableReference,
    /// Category name to index, rebuilt from the reference (not serialized).
    lookups: Vec<HashMap<String, usize>>,
}

const FORMAT_VERSION: u32 = 1;

impl TableDriftDetector {
    /// Fits the detector on `reference`.
    pub fn fit(reference: &RecordBatch, config: &TableDriftConfig) -> Result<Self> {
        check_rule(&config.rule)?;
        if reference.num_rows() == 0 {
            return Err(Error::invalid_input("reference batch", "it has no rows"));
        }
        if config.max_numeric_sample == 0 || config.max_categories == 0 {
            return Err(Error::invalid_input(
                "drift configuration",
                "max_numeric_sample and max_categories must be at least 1",
            ));
        }
        let schema = reference.schema();
        let names: Vec<String> = match &config.columns {
            Some(cols) => {
                if cols.is_empty() {
                    return Err(Error::invalid_input("drift columns", "the list is empty"));
                }
                cols.clone()
            }
            None => schema
                .fields()
                .iter()
                .filter(|f| family(f.data_type()).is_some())
                .map(|f| f.name().clone())
                .collect(),
        };
        if names.is_empty() {
            return Err(Error::invalid_input(
                "reference batch",
                "it has no column of a supported type (integers, floats, booleans, strings)",
            ));
        }
        if let Some(unknown) = config.overrides.keys().find(|k| !names.contains(k)) {
            return Err(Error::invalid_input(
                format!("override for column '{unknown}'"),
                "the column is not compared",
            ));
        }
        let mut arrays = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            let array = reference.column_by_name(name).ok_or_else(|| {
                Error::schema_mismatch("drift reference", name, "a column", "no such column")
            })?;
            arrays.push((index, name, array.as_ref()));
        }
        let columns = par_map(&arrays, |&(index, name, array)| {
            let seed = config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            fit_column(name, array, config, config.overrides.get(name), seed)
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        Ok(Self::build(TableReference {
            format_version: FORMAT_VERSION,
            rows: reference.num_rows(),
            rule: config.rule,
            columns,
        }))
    }

    /// A detector from a reference fitted earlier (e.g. read back from a model
    /// artifact); the reference is checked, so a corrupted one is an error, not a
    /// panic later.
    pub fn from_reference(reference: TableReference) -> Result<Self> {
        if reference.format_version != FORMAT_VERSION {
            return Err(Error::invalid_input(
                "drift reference",
                format!(
                    "format version {} is not supported (expected {FORMAT_VERSION})",
                    reference.format_version
                ),
            ));
        }
        check_rule(&reference.rule)?;
        if reference.columns.is_empty() {
            return Err(Error::invalid_input("drift reference", "it has no column"));
        }
        for c in &reference.columns {
            let bad = |reason: &str| {
                Error::invalid_input(
                    format!("drift reference column '{}'", c.name),
                    reason.to_owned(),
                )
            };
            let ok = match &c.profile {
                Profile::Numeric {
                    sample,
                    bins,
                    bin_counts,
                    std,
                } => {
                    !sample.is_empty()
                        && sample.iter().all(|v| v.is_finite())
                        && sample.windows(2).all(|w| w[0] <= w[1])
                        && bin_counts.len() == bins.bin_count()
                        && std.is_finite()
                }
                Profile::Levels { levels, counts } => {
                    counts.len() == levels.len() + 1 && levels.windows(2).all(|w| w[0] < w[1])
                }
                Profile::Categories { categories, counts } => counts.len() == categories.len() + 1,
            };
            if !ok {
                return Err(bad("its profile is inconsistent (corrupted?)"));
            }
            check_method(c.kind, c.method).map_err(|e| bad(&e))?;
            check_threshold(c.method, c.threshold).map_err(|e| bad(&e))?;
        }
        Ok(Self::build(reference))
    }

    fn build(reference: TableReference) -> Self {
        let lookups = reference
            .columns
            .iter()
            .map(|c| match &c.profile {
                Profile::Categories { categories, .. } => categories
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), i))
                    .collect(),
                _ => HashMap::new(),
            })
            .collect();
        Self { reference, lookups }
    }

    /// The fitted reference (serialize it to keep it).
    pub fn reference(&self) -> &TableReference {
        &self.reference
    }

    /// Checks that a schema has every compared column with a comparable type:
    /// [`Error::SchemaMismatch`] naming the column otherwise.
    pub fn check_schema(&self, schema: &Schema) -> Result<()> {
        for profile in &self.reference.columns {
            let field = schema.field_with_name(&profile.name).map_err(|_| {
                Error::schema_mismatch(
                    "drift detection",
                    &profile.name,
                    format!("a column of type {}", profile.data_type),
                    "no such column",
                )
            })?;
            if family(field.data_type()) != family(&profile.data_type) {
                return Err(Error::schema_mismatch(
                    "drift detection",
                    &profile.name,
                    family_name(&profile.data_type),
                    field.data_type().to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Compares the rows of several batches (with the same columns) together, as one
    /// sample, without concatenating them.
    pub fn detect_batches(&self, batches: &[RecordBatch]) -> Result<DriftReport> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        for b in batches {
            self.check_schema(&b.schema())?;
        }
        if rows == 0 {
            return Err(Error::invalid_input("current data", "it has no rows"));
        }
        let work: Vec<(&ColumnProfile, &HashMap<String, usize>)> =
            self.reference.columns.iter().zip(&self.lookups).collect();
        let mut features = par_map(&work, |&(profile, lookup)| {
            let arrays: Vec<&dyn Array> = batches
                .iter()
                .filter_map(|b| b.column_by_name(&profile.name))
                .map(|a| a.as_ref())
                .collect();
            compare_column(profile, lookup, &arrays)
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        let overall = apply_rule(self.reference.rule, &mut features);
        Ok(DriftReport {
            features,
            overall,
            reference_rows: self.reference.rows,
            current_rows: rows,
        })
    }
}

impl DriftDetector for TableDriftDetector {
    fn features(&self) -> Vec<String> {
        self.reference
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    fn detect(&self, current: &RecordBatch) -> Result<DriftReport> {
        TableDriftDetector::detect_batches(self, std::slice::from_ref(current))
    }

    /// Every compared column with the type of its reference.
    fn input_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.reference
                .columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn check_schema(&self, schema: &Schema) -> Result<()> {
        TableDriftDetector::check_schema(self, schema)
    }

    fn detect_batches(&self, batches: &[RecordBatch]) -> Result<DriftReport> {
        TableDriftDetector::detect_batches(self, batches)
    }
}

/// Column type families: values of one family can be compared with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Number,
    Boolean,
    Text,
}

fn family(t: &DataType) -> Option<Family> {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64 => Some(Family::Number),
        DataType::Boolean => Some(Family::Boolean),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(Family::Text),
        DataType::Dictionary(_, v) if family(v) == Some(Family::Text) => Some(Family::Text),
        _ => None,
    }
}

fn family_name(t: &DataType) -> String {
    match family(t) {
        Some(Family::Number) => format!("a numeric column (as at fit time: {t})"),
        Some(Family::Boolean) => "a boolean column".into(),
        Some(Family::Text) => format!("a string column (as at fit time: {t})"),
        None => t.to_string(),
    }
}

fn check_rule(rule: &OverallRule) -> Result<()> {
    let (name, v) = match *rule {
        OverallRule::Bonferroni { alpha } => ("alpha", alpha),
        OverallRule::BenjaminiHochberg { fdr } => ("fdr", fdr),
        OverallRule::ShareOfDrifted { share } => ("share", share),
    };
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(Error::invalid_input(
            "overall drift rule",
            format!("{name} is {v}; it must be in (0, 1]"),
        ))
    }
}

fn check_method(kind: ColumnKind, method: DriftMethod) -> std::result::Result<(), String> {
    use DriftMethod::*;
    let ok = match kind {
        ColumnKind::Numeric => matches!(
            method,
            KolmogorovSmirnov
                | Wasserstein
                | WassersteinNormed
                | PopulationStabilityIndex
                | JensenShannon
                | ChiSquared
        ),
        ColumnKind::Categorical => {
            matches!(
                method,
                ChiSquared | JensenShannon | PopulationStabilityIndex
            )
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "method {method} does not apply to a {} column",
            match kind {
                ColumnKind::Numeric => "numeric",
                ColumnKind::Categorical => "categorical",
            }
        ))
    }
}

fn default_threshold(method: DriftMethod) -> Option<f64> {
    match method {
        DriftMethod::KolmogorovSmirnov
        | DriftMethod::ChiSquared
        | DriftMethod::MaximumMeanDiscrepancy => Some(0.05),
        DriftMethod::WassersteinNormed
        | DriftMethod::JensenShannon
        | DriftMethod::PopulationStabilityIndex => Some(0.1),
        // A raw distance is in the column's units: no threshold fits every column.
        DriftMethod::Wasserstein => None,
    }
}

fn check_threshold(method: DriftMethod, t: f64) -> std::result::Result<(), String> {
    let ok = if method.is_test() {
        t > 0.0 && t < 1.0
    } else {
        t.is_finite() && t > 0.0
    };
    if ok {
        Ok(())
    } else if method.is_test() {
        Err(format!(
            "threshold {t} for {method} must be a significance level in (0, 1)"
        ))
    } else {
        Err(format!(
            "threshold {t} for {method} must be a positive distance"
        ))
    }
}

/// Values of a numeric column: finite ones, and counts of nulls and non-finite ones.
#[derive(Debug, Default)]
struct Numbers {
    values: Vec<f64>,
    nulls: usize,
    non_finite: usize,
}

fn read_numbers(arrays: &[&dyn Array]) -> Numbers {
    let mut out = Numbers::default();
    macro_rules! push {
        ($a:expr, $t:ty) => {
            for v in $a.as_primitive::<$t>().iter() {
                match v {
                    None => out.nulls += 1,
                    Some(x) => {
                        let f = x as f64;
                        if f.is_finite() {
                            out.values.push(f);
                        } else {
                            out.non_finite += 1;
                        }
                    }
                }
            }
        };
    }
    for a in arrays {
        match a.data_type() {
            DataType::Int8 => push!(a, Int8Type),
            DataType::Int16 => push!(a, Int16Type),
            DataType::Int32 => push!(a, Int32Type),
            DataType::Int64 => push!(a, Int64Type),
            DataType::UInt8 => push!(a, UInt8Type),
            DataType::UInt16 => push!(a, UInt16Type),
            DataType::UInt32 => push!(a, UInt32Type),
            DataType::UInt64 => push!(a, UInt64Type),
            DataType::Float32 => push!(a, Float32Type),
            DataType::Float64 => push!(a, Float64Type),
            _ => {}
        }
    }
    out
}

/// Calls `f` with each string value (or `None` for a null) of text and boolean
/// columns; dictionary values are resolved once per dictionary entry by `resolve`.
fn for_each_category<T: Copy>(
    arrays: &[&dyn Array],
    mut resolve: impl FnMut(&str) -> T,
    mut f: impl FnMut(Option<T>),
) {
    for a in arrays {
        match a.data_type() {
            DataType::Boolean => {
                let (t, fl) = (resolve("true"), resolve("false"));
                for v in a.as_boolean().iter() {
                    f(v.map(|b| if b { t } else { fl }));
                }
            }
            DataType::Utf8 => a
                .as_string::<i32>()
                .iter()
                .for_each(|v| f(v.map(&mut resolve))),
            DataType::LargeUtf8 => a
                .as_string::<i64>()
                .iter()
                .for_each(|v| f(v.map(&mut resolve))),
            DataType::Utf8View => a
                .as_string_view()
                .iter()
                .for_each(|v| f(v.map(&mut resolve))),
            DataType::Dictionary(_, _) => {
                if let Some(dict) = a.as_any_dictionary_opt() {
                    let resolved: Vec<Option<T>> = text_values(dict.values().as_ref())
                        .into_iter()
                        .map(|v| v.map(&mut resolve))
                        .collect();
                    for (row, key) in dict.normalized_keys().into_iter().enumerate() {
                        if a.is_null(row) {
                            f(None);
                        } else {
                            f(resolved.get(key).copied().flatten());
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The values of a plain text array (a dictionary's values).
fn text_values(a: &dyn Array) -> Vec<Option<&str>> {
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().collect(),
        DataType::Utf8View => a.as_string_view().iter().collect(),
        _ => vec![None; a.len()],
    }
}

/// Picks `k` of `n` indices without replacement, deterministically from `seed`.
fn subsample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k.min(n));
    idx
}

fn fit_column(
    name: &str,
    array: &dyn Array,
    config: &TableDriftConfig,
    over: Option<&ColumnOverride>,
    seed: u64,
) -> Result<ColumnProfile> {
    let what = || format!("drift reference column '{name}'");
    let fam = family(array.data_type()).ok_or_else(|| {
        Error::invalid_input(
            what(),
            format!(
                "type {} is not supported; use integers, floats, booleans or strings",
                array.data_type()
            ),
        )
    })?;
    let (kind, profile, count, nulls, non_finite) = match fam {
        Family::Number => {
            let nums = read_numbers(&[array]);
            if nums.values.is_empty() {
                return Err(Error::invalid_input(
                    what(),
                    format!(
                        "it has no usable value ({} nulls, {} NaN or infinite)",
                        nums.nulls, nums.non_finite
                    ),
                ));
            }
            let mut sorted = nums.values;
            sort_floats(&mut sorted);
            // Distinct values, but stop counting past the low-cardinality limit.
            let mut distinct: Vec<f64> = Vec::with_capacity(LOW_CARDINALITY_LIMIT + 1);
            for &v in &sorted {
                if distinct.last() != Some(&v) {
                    distinct.push(v);
                    if distinct.len() > LOW_CARDINALITY_LIMIT {
                        break;
                    }
                }
            }
            let count = sorted.len();
            let profile = if distinct.len() <= LOW_CARDINALITY_LIMIT {
                let mut counts = vec![0u64; distinct.len() + 1];
                for v in &sorted {
                    if let Ok(i) = distinct.binary_search_by(|l| l.total_cmp(v)) {
                        counts[i] += 1;
                    }
                }
                Profile::Levels {
                    levels: distinct,
                    counts,
                }
            } else {
                let bins = QuantileBins::fit_sorted(&sorted, PSI_BINS)?;
                let bin_counts = bins.counts(&sorted);
                let std = std_dev(&sorted);
                let sample = if count > config.max_numeric_sample {
                    let mut s: Vec<f64> = subsample_indices(count, config.max_numeric_sample, seed)
                        .into_iter()
                        .map(|i| sorted[i])
                        .collect();
                    sort_floats(&mut s);
                    s
                } else {
                    sorted
                };
                Profile::Numeric {
                    sample,
                    bins,
                    bin_counts,
                    std,
                }
            };
            let kind = match profile {
                Profile::Numeric { .. } => ColumnKind::Numeric,
                _ => ColumnKind::Categorical,
            };
            (kind, profile, count, nums.nulls, nums.non_finite)
        }
        Family::Boolean | Family::Text => {
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut by_index: Vec<u64> = Vec::new();
            let mut nulls = 0usize;
            for_each_category(
                &[array],
                |s| match index.get(s) {
                    Some(&i) => i,
                    None => {
                        let i = index.len();
                        index.insert(s.to_owned(), i);
                        i
                    }
                },
                |v| match v {
                    None => nulls += 1,
                    Some(i) => {
                        if i >= by_index.len() {
                            by_index.resize(i + 1, 0);
                        }
                        by_index[i] += 1;
                    }
                },
            );
            let counts: Vec<(String, u64)> = index
                .into_iter()
                .map(|(s, i)| (s, by_index.get(i).copied().unwrap_or(0)))
                .filter(|(_, c)| *c > 0)
                .collect();
            let count: u64 = counts.iter().map(|c| c.1).sum();
            if count == 0 {
                return Err(Error::invalid_input(
                    what(),
                    format!("it has no usable value ({nulls} nulls)"),
                ));
            }
            let mut ranked = counts;
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let other: u64 = ranked.iter().skip(config.max_categories).map(|c| c.1).sum();
            ranked.truncate(config.max_categories);
            let (categories, mut counts): (Vec<String>, Vec<u64>) = ranked.into_iter().unzip();
            counts.push(other);
            (
                ColumnKind::Categorical,
                Profile::Categories { categories, counts },
                count as usize,
                nulls,
                0,
            )
        }
    };
    let default_method = match (kind, count <= SMALL_SAMPLE_LIMIT) {
        (ColumnKind::Numeric, true) => DriftMethod::KolmogorovSmirnov,
        (ColumnKind::Numeric, false) => DriftMethod::WassersteinNormed,
        (ColumnKind::Categorical, true) => DriftMethod::ChiSquared,
        (ColumnKind::Categorical, false) => DriftMethod::JensenShannon,
    };
    let method = over.and_then(|o| o.method).unwrap_or(default_method);
    check_method(kind, method).map_err(|e| Error::invalid_input(what(), e))?;
    let threshold = match over
        .and_then(|o| o.threshold)
        .or_else(|| default_threshold(method))
    {
        Some(t) => t,
        None => {
            return Err(Error::invalid_input(
                what(),
                format!("method {method} needs an explicit threshold (in the column's units)"),
            ));
        }
    };
    check_threshold(method, threshold).map_err(|e| Error::invalid_input(what(), e))?;
    Ok(ColumnProfile {
        name: name.to_owned(),
        data_type: array.data_type().clone(),
        kind,
        method,
        threshold,
        count,
        nulls,
        non_finite,
        profile,
    })
}

fn compare_column(
    profile: &ColumnProfile,
    lookup: &HashMap<String, usize>,
    arrays: &[&dyn Array],
) -> Result<FeatureDrift> {
    let method = profile.method;
    let mut result = FeatureDrift {
        feature: profile.name.clone(),
        method,
        statistic: 0.0,
        p_value: None,
        threshold: profile.threshold,
        drifted: false,
        reference_count: profile.count,
        current_count: 0,
        current_nulls: 0,
        current_non_finite: 0,
        note: None,
    };
    // (reference counts, current counts) for the count-based methods.
    let (ref_counts, cur_counts): (Vec<u64>, Vec<u64>) = match &profile.profile {
        Profile::Numeric {
            sample,
            bins,
            bin_counts,
            std,
        } => {
            let mut nums = read_numbers(arrays);
            result.current_nulls = nums.nulls;
            result.current_non_finite = nums.non_finite;
            result.current_count = nums.values.len();
            if nums.values.is_empty() {
                return Ok(no_values(result));
            }
            match method {
                DriftMethod::KolmogorovSmirnov => {
                    sort_floats(&mut nums.values);
                    let r = ks_2samp_sorted(sample, &nums.values);
                    result.statistic = r.statistic;
                    result.p_value = Some(r.p_value);
                    result.drifted = r.p_value < profile.threshold;
                    return Ok(result);
                }
                DriftMethod::Wasserstein | DriftMethod::WassersteinNormed => {
                    sort_floats(&mut nums.values);
                    let mut d = wasserstein_sorted(sample, &nums.values);
                    if method == DriftMethod::WassersteinNormed {
                        d /= std;
                    }
                    result.statistic = d;
                    result.drifted = d >= profile.threshold;
                    return Ok(result);
                }
                _ => (bin_counts.clone(), bins.counts(&nums.values)),
            }
        }
        Profile::Levels { levels, counts } => {
            let nums = read_numbers(arrays);
            result.current_nulls = nums.nulls;
            result.current_non_finite = nums.non_finite;
            result.current_count = nums.values.len();
            let mut cur = vec![0u64; counts.len()];
            for v in &nums.values {
                let i = levels
                    .binary_search_by(|l| l.total_cmp(v))
                    .unwrap_or(levels.len());
                cur[i] += 1;
            }
            (counts.clone(), cur)
        }
        Profile::Categories { counts, .. } => {
            let mut cur = vec![0u64; counts.len()];
            let other = counts.len() - 1;
            let mut nulls = 0usize;
            for_each_category(
                arrays,
                |s| lookup.get(s).copied().unwrap_or(other),
                |v| match v {
                    None => nulls += 1,
                    Some(i) => cur[i] += 1,
                },
            );
            result.current_nulls = nulls;
            result.current_count = cur.iter().sum::<u64>() as usize;
            (counts.clone(), cur)
        }
    };
    if result.current_count == 0 {
        return Ok(no_values(result));
    }
    match method {
        DriftMethod::ChiSquared => {
            let r = chi_squared(&ref_counts, &cur_counts)?;
            result.statistic = r.statistic;
            result.p_value = Some(r.p_value);
            result.drifted = r.p_value < profile.threshold;
        }
        DriftMethod::JensenShannon => {
            let to_f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            result.statistic = jensen_shannon(&to_f(&ref_counts), &to_f(&cur_counts))?;
            result.drifted = result.statistic >= profile.threshold;
        }
        DriftMethod::PopulationStabilityIndex => {
            result.statistic = psi(&ref_counts, &cur_counts, PSI_EPSILON)?;
            result.drifted = result.statistic >= profile.threshold;
        }
        other => {
            return Err(Error::invalid_input(
                format!("column '{}'", profile.name),
                format!("method {other} does not apply to its profile"),
            ));
        }
    }
    Ok(result)
}

fn no_values(mut result: FeatureDrift) -> FeatureDrift {
    result.drifted = true;
    result.note = Some(format!(
        "the current sample has no usable value ({} nulls, {} NaN or infinite) where the \
         reference has {}: counted as drift",
        result.current_nulls, result.current_non_finite, result.reference_count
    ));
    result
}

/// Applies the overall rule; corrections change the tests' thresholds and verdicts.
fn apply_rule(rule: OverallRule, features: &mut [FeatureDrift]) -> OverallDrift {
    let n = features.len();
    let tests: Vec<usize> = (0..n)
        .filter(|&i| features[i].method.is_test() && features[i].p_value.is_some())
        .collect();
    let drifted_any = match rule {
        OverallRule::ShareOfDrifted { .. } => None,
        OverallRule::Bonferroni { alpha } => {
            let t = alpha / n as f64;
            for &i in &tests {
                let f = &mut features[i];
                f.threshold = t;
                f.drifted = f.p_value.is_some_and(|p| p < t);
            }
            Some(())
        }
        OverallRule::BenjaminiHochberg { fdr } => {
            let m = tests.len();
            let mut p: Vec<f64> = tests.iter().filter_map(|&i| features[i].p_value).collect();
            p.sort_unstable_by(f64::total_cmp);
            let threshold = (0..m)
                .rev()
                .find(|&k| p[k] < fdr * (k + 1) as f64 / m as f64)
                .map(|k| fdr * (k + 1) as f64 / m as f64);
            for &i in &tests {
                let f = &mut features[i];
                match threshold {
                    Some(t) => {
                        f.threshold = t;
                        f.drifted = f.p_value.is_some_and(|p| p < t);
                    }
                    None => {
                        f.threshold = fdr / m as f64;
                        f.drifted = false;
                    }
                }
            }
            Some(())
        }
    };
    let drifted_features = features.iter().filter(|f| f.drifted).count();
    let share_drifted = drifted_features as f64 / n.max(1) as f64;
    let drifted = match (rule, drifted_any) {
        (OverallRule::ShareOfDrifted { share }, _) => share_drifted >= share,
        _ => drifted_features > 0,
    };
    OverallDrift {
        rule,
        drifted,
        drifted_features,
        share_drifted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsampling_is_deterministic_and_without_replacement() {
        let a = subsample_indices(1000, 100, 7);
        assert_eq!(a, subsample_indices(1000, 100, 7));
        assert_ne!(a, subsample_indices(1000, 100, 8));
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 100);
    }
}
