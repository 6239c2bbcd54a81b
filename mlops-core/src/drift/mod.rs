//! Drift: is the data a model sees now like the data it was trained on?
//!
//! A [`DriftDetector`] is fitted on a reference sample and compares current samples
//! with it, per feature and overall, in a [`DriftReport`].
//!
//! The univariate statistics match the implementations users trust, on the same
//! input (checked against committed scipy fixtures):
//!
//! | Function | Matches |
//! |---|---|
//! | [`ks_2samp`] | `scipy.stats.ks_2samp` (two-sided, `method="auto"`) |
//! | [`chi_squared`] | `scipy.stats.chi2_contingency` on the 2 x k table |
//! | [`jensen_shannon`] | `scipy.spatial.distance.jensenshannon(p, q, base=2)` |
//! | [`wasserstein`] | `scipy.stats.wasserstein_distance` |
//! | [`wasserstein_normed`] | the above divided by `numpy.std(reference)` (Evidently) |
//! | [`psi`], [`psi_numeric`] | PSI over [`PSI_BINS`] reference quantile bins, empty bins as [`PSI_EPSILON`] |

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod kolmogorov;
mod ks;
mod mmd;
mod monitor;
mod sort;
mod table;
mod univariate;

pub use ks::{KS_EXACT_MAX_N, KsResult, ks_2samp};
pub use mmd::{MmdConfig, MmdDriftDetector, MmdResult, mmd_test};
pub use monitor::{DriftMonitor, Window, WindowReport};
pub use table::{
    ColumnKind, ColumnOverride, ColumnProfile, DEFAULT_MAX_CATEGORIES, DEFAULT_MAX_NUMERIC_SAMPLE,
    LOW_CARDINALITY_LIMIT, SMALL_SAMPLE_LIMIT, TableDriftConfig, TableDriftDetector,
    TableReference,
};
pub use univariate::{
    ChiSquaredResult, PSI_BINS, PSI_EPSILON, QuantileBins, chi_squared, jensen_shannon, psi,
    psi_numeric, wasserstein, wasserstein_normed,
};

/// The survival function `Pr(D_n > x)` of the two-sided one-sample
/// Kolmogorov-Smirnov statistic for `n` observations: `scipy.stats.kstwo.sf(x, n)`.
/// NaN for `n == 0` or NaN `x`.
///
/// ```
/// let p = mlops_core::drift::kolmogorov_sf(100, 0.2);
/// assert!(p > 0.0005 && p < 0.001);
/// ```
pub fn kolmogorov_sf(n: u64, x: f64) -> f64 {
    kolmogorov::kolmogn_sf(n, x)
}

/// Refuses an empty sample or one holding NaN or infinity, naming `what` and the
/// first offending index.
pub(crate) fn check_sample(what: &str, values: &[f64]) -> Result<()> {
    if values.is_empty() {
        return Err(Error::invalid_input(what, "it is empty"));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid_input(
            what,
            format!("value {i} is {v}; drift statistics need finite numbers"),
        ));
    }
    Ok(())
}

/// A sorted copy of finite values.
pub(crate) fn sorted_copy(values: &[f64]) -> Vec<f64> {
    sort::sorted_floats(values)
}

/// A statistical test or distance used for one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMethod {
    /// Two-sample Kolmogorov-Smirnov test (numeric); drift when p < threshold.
    KolmogorovSmirnov,
    /// Chi-squared test on category counts; drift when p < threshold.
    ChiSquared,
    /// Population Stability Index over reference quantile bins; drift when >= threshold.
    PopulationStabilityIndex,
    /// Jensen-Shannon distance (base 2); drift when >= threshold.
    JensenShannon,
    /// Wasserstein-1 distance; drift when >= threshold.
    Wasserstein,
    /// Wasserstein-1 distance divided by the reference standard deviation; drift when
    /// >= threshold.
    WassersteinNormed,
    /// Maximum mean discrepancy with an RBF kernel and a permutation p-value
    /// (multivariate); drift when p < threshold.
    MaximumMeanDiscrepancy,
}

impl DriftMethod {
    /// Whether the method is a test with a p-value (drift when p < threshold) rather
    /// than a distance (drift when distance >= threshold).
    pub fn is_test(self) -> bool {
        matches!(
            self,
            Self::KolmogorovSmirnov | Self::ChiSquared | Self::MaximumMeanDiscrepancy
        )
    }
}

impl fmt::Display for DriftMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::KolmogorovSmirnov => "ks",
            Self::ChiSquared => "chi2",
            Self::PopulationStabilityIndex => "psi",
            Self::JensenShannon => "jensen_shannon",
            Self::Wasserstein => "wasserstein",
            Self::WassersteinNormed => "wasserstein_normed",
            Self::MaximumMeanDiscrepancy => "mmd",
        })
    }
}

/// The verdict on one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// The feature (column) name.
    pub feature: String,
    /// The method used.
    pub method: DriftMethod,
    /// The test statistic or the distance.
    pub statistic: f64,
    /// The p-value, for tests.
    pub p_value: Option<f64>,
    /// The threshold the verdict used: a significance level for tests (after any
    /// multiple-test correction), a distance for distances.
    pub threshold: f64,
    /// Whether this feature drifted.
    pub drifted: bool,
    /// Non-null values in the reference sample.
    pub reference_count: usize,
    /// Non-null values in the current sample.
    pub current_count: usize,
    /// Nulls in the current sample (not part of the statistic).
    pub current_nulls: usize,
    /// NaN and infinite values in the current sample (not part of the statistic).
    #[serde(default)]
    pub current_non_finite: usize,
    /// Why the verdict is what it is when no statistic could be computed (e.g. the
    /// current sample has only nulls, which counts as drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How per-feature verdicts combine into the overall one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverallRule {
    /// Drift when any test is significant at `alpha / n_features`.
    Bonferroni {
        /// The family-wise significance level.
        alpha: f64,
    },
    /// Drift when the Benjamini-Hochberg procedure rejects any null hypothesis at
    /// false discovery rate `fdr`.
    BenjaminiHochberg {
        /// The false discovery rate.
        fdr: f64,
    },
    /// Drift when at least this share of features drifted.
    ShareOfDrifted {
        /// The share, in (0, 1].
        share: f64,
    },
}

/// The overall verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverallDrift {
    /// The rule applied.
    pub rule: OverallRule,
    /// Whether the data drifted.
    pub drifted: bool,
    /// How many features drifted.
    pub drifted_features: usize,
    /// Their share of all features compared.
    pub share_drifted: f64,
}

/// Per-feature and overall drift of a current sample against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// One verdict per feature, in the reference's column order.
    pub features: Vec<FeatureDrift>,
    /// The overall verdict.
    pub overall: OverallDrift,
    /// Rows in the reference sample.
    pub reference_rows: usize,
    /// Rows in the current sample.
    pub current_rows: usize,
}

impl DriftReport {
    /// The verdict on `feature`.
    pub fn feature(&self, feature: &str) -> Option<&FeatureDrift> {
        self.features.iter().find(|f| f.feature == feature)
    }
}

/// Compares current data with a fitted reference.
///
/// Contract for implementations:
/// - fitting happens at construction; `detect` never changes the reference;
/// - a current batch missing a reference column, or with a column whose type
///   changed, gives [`Error::SchemaMismatch`]; an
///   empty sample gives [`Error::InvalidInput`];
///   nulls are counted and reported, not compared; NaN and infinities never
///   produce a NaN verdict;
/// - the same inputs always give the same report (subsampling is seeded).
///
/// CPU-bound: async callers run it on a blocking pool.
pub trait DriftDetector: Send + Sync + fmt::Debug {
    /// The features (columns) compared, in order.
    fn features(&self) -> Vec<String>;

    /// Compares `current` with the reference.
    fn detect(&self, current: &RecordBatch) -> Result<DriftReport>;

    /// The columns a current sample must have, with the types they are compared
    /// as: a caller that builds samples from other data (the model server, from
    /// served tensors) casts to these. The default is every feature as a nullable
    /// `Float64`, as numeric detectors compare them.
    fn input_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.features()
                .into_iter()
                .map(|name| Field::new(name, DataType::Float64, true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Checks that `schema` has every compared column:
    /// [`Error::SchemaMismatch`] naming the first missing one. Detectors that also
    /// check types override it.
    fn check_schema(&self, schema: &Schema) -> Result<()> {
        for feature in self.features() {
            if schema.field_with_name(&feature).is_err() {
                return Err(Error::schema_mismatch(
                    "drift detection",
                    &feature,
                    "a compared column",
                    "no such column",
                ));
            }
        }
        Ok(())
    }

    /// Compares the rows of several batches (with the same columns) together, as
    /// one sample. The default concatenates them and calls
    /// [`detect`](Self::detect); detectors that can read them in place override it.
    fn detect_batches(&self, batches: &[RecordBatch]) -> Result<DriftReport> {
        match batches {
            [] => Err(Error::invalid_input("current data", "it has no rows")),
            [one] => self.detect(one),
            [first, ..] => {
                let batch = arrow_select::concat::concat_batches(&first.schema(), batches)
                    .map_err(|e| Error::invalid_input("current data", e.to_string()))?;
                self.detect(&batch)
            }
        }
    }
}
