//! Models, their versions and artifacts, and the [`ModelRegistry`] trait.
//!
//! ```
//! use mlops_core::model::{ModelArtifact, VersionSelector};
//!
//! let artifact = ModelArtifact::new("burn-mlp", b"weights".to_vec());
//! assert!(artifact.digest.as_str().starts_with("sha256:"));
//! artifact.verify()?;
//!
//! assert_eq!("latest".parse::<VersionSelector>()?, VersionSelector::Latest);
//! assert_eq!("3".parse::<VersionSelector>()?, VersionSelector::Number(3));
//! assert_eq!("@champion".parse::<VersionSelector>()?, VersionSelector::Alias("champion".into()));
//! assert!("0".parse::<VersionSelector>().is_err());
//! # Ok::<(), mlops_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ResourceKind, Result};
use crate::feature::FeatureRef;
use crate::inference::{Datatype, Tensor, TensorData, TensorSpec};
use crate::validate_name;

/// A content digest, written `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentDigest(String);

impl ContentDigest {
    /// The SHA-256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The digest as written, `sha256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, without the `sha256:` prefix (usable as a file name).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Checks that `bytes` have this digest; [`Error::Integrity`] names `target`.
    pub fn verify(&self, target: &str, bytes: &[u8]) -> Result<()> {
        let actual = Self::of(bytes);
        if &actual == self {
            Ok(())
        } else {
            Err(Error::integrity(
                target,
                format!("content digest is {actual}, expected {self}"),
            ))
        }
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ContentDigest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let hex_part = s.strip_prefix("sha256:").ok_or_else(|| {
            Error::invalid_input(format!("content digest {s:?}"), "expected \"sha256:<hex>\"")
        })?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::invalid_input(
                format!("content digest {s:?}"),
                "expected 64 lowercase hex digits after \"sha256:\"",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for ContentDigest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ContentDigest> for String {
    fn from(d: ContentDigest) -> String {
        d.0
    }
}

/// A detached signature over a model version's manifest and artifact digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSignature {
    /// The algorithm, e.g. `ed25519`.
    pub algorithm: String,
    /// Which trusted key signed it.
    pub key_id: String,
    /// The signature bytes, hex encoded.
    pub signature: String,
}

/// A serialized model: weights plus whatever the flavor's loader needs
/// (preprocessing, signature, drift reference), with its content digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelArtifact {
    /// Which [`ModelLoader`](crate::ModelLoader) can read the bytes, e.g. `burn-mlp`.
    pub flavor: String,
    /// The serialized model.
    pub bytes: Bytes,
    /// SHA-256 of `bytes`.
    pub digest: ContentDigest,
    /// A signature, when the registry signs versions.
    pub signature: Option<ArtifactSignature>,
}

impl ModelArtifact {
    /// An artifact of `flavor` holding `bytes`; the digest is computed here.
    pub fn new(flavor: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            flavor: flavor.into(),
            digest: ContentDigest::of(&bytes),
            bytes,
            signature: None,
        }
    }

    /// Recomputes the digest: [`Error::Integrity`] when the bytes changed.
    pub fn verify(&self) -> Result<()> {
        self.digest
            .verify(&format!("{} artifact", self.flavor), &self.bytes)
    }
}

/// A model's declared inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Inputs, by name.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, by name.
    pub outputs: Vec<TensorSpec>,
    /// The other form the inputs may take: one `FP32` tensor `[N, F]` whose
    /// column `j` is input `j` (the form KServe and Triton clients send). Only
    /// for signatures whose inputs are all numeric and one-dimensional; see
    /// [`Signature::with_matrix_input`] and [`Signature::columns_from_matrix`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_input: Option<TensorSpec>,
}

/// `values` (column `column` of matrix input `matrix`) as `to`; integers must
/// be whole and in range.
fn column_as(
    values: Vec<f32>,
    to: Datatype,
    input: &str,
    matrix: &str,
    column: usize,
) -> Result<TensorData> {
    let what = || format!("input '{input}' (column {column} of '{matrix}')");
    macro_rules! whole {
        ($variant:ident, $t:ty) => {
            TensorData::$variant(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let ok = v.fract() == 0.0
                            && f64::from(v) >= <$t>::MIN as f64
                            && f64::from(v) <= <$t>::MAX as f64;
                        if ok {
                            Ok(v as $t)
                        } else {
                            Err(Error::invalid_input(
                                what(),
                                format!(
                                    "element {i} is {v}, not a whole number in the range of {to:?}"
                                ),
                            ))
                        }
                    })
                    .collect::<Result<Vec<$t>>>()?,
            )
        };
    }
    Ok(match to {
        Datatype::Fp32 => TensorData::Fp32(values),
        Datatype::Fp16 => TensorData::Fp16(values),
        Datatype::Fp64 => TensorData::Fp64(values.into_iter().map(f64::from).collect()),
        Datatype::Int8 => whole!(Int8, i8),
        Datatype::Int16 => whole!(Int16, i16),
        Datatype::Int32 => whole!(Int32, i32),
        Datatype::Int64 => whole!(Int64, i64),
        Datatype::Uint8 => whole!(Uint8, u8),
        Datatype::Uint16 => whole!(Uint16, u16),
        Datatype::Uint32 => whole!(Uint32, u32),
        Datatype::Uint64 => whole!(Uint64, u64),
        Datatype::Bool | Datatype::Bytes => {
            return Err(Error::invalid_input(
                what(),
                format!("a {to:?} input has no matrix form"),
            ));
        }
    })
}

impl Signature {
    /// A signature of `inputs` and `outputs`, without a matrix form.
    pub fn new(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Self {
        Self {
            inputs,
            outputs,
            matrix_input: None,
        }
    }

    /// Declares the matrix form `name` (`FP32`, `[-1, inputs]`) when every input
    /// is numeric and one-dimensional and no input is called `name`; otherwise
    /// the signature is returned unchanged.
    ///
    /// ```
    /// use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
    /// use mlops_core::model::Signature;
    ///
    /// let s = Signature::new(
    ///     vec![
    ///         TensorSpec::new("amount", Datatype::Fp64, vec![-1]),
    ///         TensorSpec::new("hour", Datatype::Int64, vec![-1]),
    ///     ],
    ///     vec![TensorSpec::new("probability", Datatype::Fp32, vec![-1])],
    /// )
    /// .with_matrix_input("input");
    /// let x = Tensor::new("input", vec![2, 2], TensorData::Fp32(vec![12.5, 3.0, 40.0, 23.0]))?;
    /// let columns = s.columns_from_matrix(vec![x])?;
    /// assert_eq!(columns[0].data, TensorData::Fp64(vec![12.5, 40.0]));
    /// assert_eq!(columns[1].data, TensorData::Int64(vec![3, 23]));
    /// # Ok::<(), mlops_core::Error>(())
    /// ```
    pub fn with_matrix_input(mut self, name: &str) -> Self {
        let numeric = |s: &TensorSpec| !matches!(s.datatype, Datatype::Bool | Datatype::Bytes);
        if !self.inputs.is_empty()
            && self
                .inputs
                .iter()
                .all(|s| s.shape.len() == 1 && numeric(s) && s.name != name)
        {
            let width = i64::try_from(self.inputs.len()).unwrap_or(i64::MAX);
            self.matrix_input = Some(TensorSpec::new(name, Datatype::Fp32, vec![-1, width]));
        }
        self
    }

    /// The per-input tensors of a request in the matrix form (one tensor named
    /// as [`Signature::matrix_input`], `[N, F]`, `FP32`): column `j` becomes
    /// input `j`, converted to its datatype (integers must be whole). Any other
    /// request is returned as it is, to be checked by
    /// [`Signature::check_inputs`]. A matrix of the wrong width or type is an
    /// error naming it.
    pub fn columns_from_matrix(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let Some(spec) = &self.matrix_input else {
            return Ok(inputs);
        };
        if inputs.len() != 1 || inputs[0].name != spec.name {
            return Ok(inputs);
        }
        let Some(matrix) = inputs.into_iter().next() else {
            return Ok(Vec::new());
        };
        spec.check(&matrix)?;
        let rows = matrix.rows();
        let width = self.inputs.len();
        let TensorData::Fp32(values) = &matrix.data else {
            return Err(Error::invalid_input(
                format!("input '{}'", spec.name),
                "must be FP32",
            ));
        };
        self.inputs
            .iter()
            .enumerate()
            .map(|(j, input)| {
                let column: Vec<f32> = values.iter().skip(j).step_by(width).copied().collect();
                let data = column_as(column, input.datatype, &input.name, &spec.name, j)?;
                Tensor::new(input.name.clone(), vec![rows], data)
            })
            .collect()
    }

    /// Checks a request's inputs: every declared input present once, nothing
    /// undeclared, datatypes and shapes as declared, and the same number of rows in
    /// every input. The error names the input and the difference.
    ///
    /// The [`CheckedInputs`] it returns is the only way to make one: it is what
    /// [`Predictor::predict_checked`](crate::Predictor::predict_checked) takes.
    pub fn check_inputs<'a>(&'a self, inputs: &'a [Tensor]) -> Result<CheckedInputs<'a>> {
        // Which declared input each tensor is: clients usually send them in the
        // declared order, so the same position is tried first.
        let mut seen = vec![false; self.inputs.len()];
        for (position, t) in inputs.iter().enumerate() {
            let index = match self.inputs.get(position) {
                Some(s) if s.name == t.name => Some(position),
                _ => self.inputs.iter().position(|s| s.name == t.name),
            };
            let Some(index) = index else {
                let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::invalid_input(
                    format!("input '{}'", t.name),
                    format!("the model has no such input; its inputs are {names:?}"),
                ));
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(Error::invalid_input(
                    format!("input '{}'", t.name),
                    "given more than once",
                ));
            }
            self.inputs[index].check(t)?;
        }
        if let Some(missing) = self.inputs.iter().zip(&seen).find(|(_, seen)| !**seen) {
            return Err(Error::invalid_input(
                format!("input '{}'", missing.0.name),
                "missing from the request",
            ));
        }
        if let Some(first) = inputs.first()
            && let Some(other) = inputs.iter().find(|t| t.rows() != first.rows())
        {
            {
                return Err(Error::invalid_input(
                    format!("input '{}'", other.name),
                    format!(
                        "{} rows where input '{}' has {}; all inputs must have the same rows",
                        other.rows(),
                        first.name,
                        first.rows()
                    ),
                ));
            }
        }
        Ok(CheckedInputs {
            tensors: inputs,
            signature: self,
        })
    }
}

/// Inputs that passed [`Signature::check_inputs`], with the signature they passed.
///
/// Only `check_inputs` makes one, so a function taking `CheckedInputs` knows the
/// check ran. It derefs to the tensors.
///
/// ```
/// use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
/// use mlops_core::model::Signature;
///
/// let signature = Signature {
///     inputs: vec![TensorSpec::new("x", Datatype::Fp32, vec![-1])],
///     outputs: vec![TensorSpec::new("y", Datatype::Fp32, vec![-1])],
///     matrix_input: None,
/// };
/// let inputs = [Tensor::new("x", vec![2], TensorData::Fp32(vec![1.0, 2.0]))?];
/// let checked = signature.check_inputs(&inputs)?;
/// assert_eq!(checked.len(), 1);
/// assert!(checked.is_for(&signature));
/// assert!(!checked.is_for(&Signature::default()));
/// # Ok::<(), mlops_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CheckedInputs<'a> {
    tensors: &'a [Tensor],
    signature: &'a Signature,
}

impl<'a> CheckedInputs<'a> {
    /// The tensors, in the order given.
    pub fn tensors(&self) -> &'a [Tensor] {
        self.tensors
    }

    /// The signature they were checked against.
    pub fn signature(&self) -> &'a Signature {
        self.signature
    }

    /// Whether they were checked against `signature` (the same one, or an equal
    /// one): what a predictor that skips its own check must make sure of.
    pub fn is_for(&self, signature: &Signature) -> bool {
        std::ptr::eq(self.signature, signature) || self.signature == signature
    }
}

impl std::ops::Deref for CheckedInputs<'_> {
    type Target = [Tensor];
    fn deref(&self) -> &[Tensor] {
        self.tensors
    }
}

/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The tracker run that trained it.
    #[serde(default)]
    pub run_id: Option<String>,
    /// The dataset snapshot it was trained on.
    #[serde(default)]
    pub dataset_snapshot_id: Option<String>,
    /// The features it reads.
    #[serde(default)]
    pub feature_refs: Vec<FeatureRef>,
    /// The code that trained it (a commit, a tag).
    #[serde(default)]
    pub code_version: Option<String>,
    /// The version it was derived from (e.g. the champion a retrain replaced).
    #[serde(default)]
    pub parent_version: Option<u64>,
}

/// What is recorded with a model version besides its artifact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Hyperparameters, as strings (as MLflow records them).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Evaluation metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Declared inputs and outputs.
    #[serde(default)]
    pub signature: Option<Signature>,
    /// Where it came from.
    #[serde(default)]
    pub lineage: Lineage,
}

/// Whether a version may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Usable.
    Active,
    /// Archived: kept for the record, not servable, no alias may point at it.
    Archived,
}

/// One immutable version of a registered model (its manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// The model's name.
    pub model: String,
    /// The version number, from 1.
    pub version: u64,
    /// The artifact's flavor.
    pub flavor: String,
    /// The artifact's digest.
    pub digest: ContentDigest,
    /// The artifact's size in bytes.
    pub size_bytes: u64,
    /// Metadata given at registration.
    pub metadata: ModelMetadata,
    /// Who registered it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Active or archived.
    pub status: VersionStatus,
    /// A signature over the manifest and digest, when signed.
    #[serde(default)]
    pub signature: Option<ArtifactSignature>,
}

/// How to pick a version of a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VersionSelector {
    /// A version number (from 1).
    Number(u64),
    /// The version an alias points at.
    Alias(String),
    /// The highest active version.
    Latest,
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Alias(a) => write!(f, "@{a}"),
            Self::Latest => f.write_str("latest"),
        }
    }
}

impl FromStr for VersionSelector {
    type Err = Error;

    /// `"latest"`, a number from 1, or an alias (`"@champion"` or `"champion"`).
    fn from_str(s: &str) -> Result<Self> {
        if s == "latest" {
            return Ok(Self::Latest);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u64>() {
                Ok(0) | Err(_) => Err(Error::invalid_input(
                    format!("version {s:?}"),
                    "version numbers start at 1 and fit in 64 bits",
                )),
                Ok(n) => Ok(Self::Number(n)),
            };
        }
        let alias = s.strip_prefix('@').unwrap_or(s);
        validate_name(ResourceKind::Alias, alias)?;
        Ok(Self::Alias(alias.to_owned()))
    }
}

/// A comparison used in metric filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
}

impl Comparison {
    /// Whether `left <op> right` holds (always false when either is NaN).
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Self::Lt => left < right,
            Self::Le => left <= right,
            Self::Gt => left > right,
            Self::Ge => left >= right,
            Self::Eq => left == right,
        }
    }
}

/// A condition on a metric: `metric <op> value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricFilter {
    /// The metric's name.
    pub metric: String,
    /// The comparison.
    pub op: Comparison,
    /// The value compared with.
    pub value: f64,
}

/// A search over model versions; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionQuery {
    /// Only versions of this model.
    pub model: Option<String>,
    /// Tags that must be present with these values.
    pub tags: BTreeMap<String, String>,
    /// Metric conditions.
    pub metrics: Vec<MetricFilter>,
    /// Include archived versions. Default off.
    pub include_archived: bool,
}

impl VersionQuery {
    /// Whether `version` satisfies the query.
    pub fn matches(&self, version: &ModelVersion) -> bool {
        self.model.as_ref().is_none_or(|m| *m == version.model)
            && (self.include_archived || version.status == VersionStatus::Active)
            && self
                .tags
                .iter()
                .all(|(k, v)| version.metadata.tags.get(k) == Some(v))
            && self.metrics.iter().all(|f| {
                version
                    .metadata
                    .metrics
                    .get(&f.metric)
                    .is_some_and(|&m| f.op.holds(m, f.value))
            })
    }
}

/// A versioned store of model artifacts.
///
/// Contract for implementations:
/// - `register` allocates the next version number atomically: concurrent
///   registrations, from any number of processes sharing the storage, get distinct,
///   gap-free numbers, and an interrupted registration leaves no visible version.
///   Versions are immutable once registered.
/// - `load_artifact` verifies the digest (and the signature when required) on every
///   load: corrupted or unsigned bytes give [`Error::Integrity`], never a model.
///   It refuses archived versions with [`Error::Conflict`]: an archived version
///   is never served by accident.
/// - `set_alias` moves an alias atomically; pointing it at an unknown version gives
///   [`Error::NotFound`], at an archived one [`Error::Conflict`].
/// - Unknown models, versions and aliases give [`Error::NotFound`]; invalid names give
///   [`Error::InvalidInput`].
#[async_trait]
pub trait ModelRegistry: Send + Sync + std::fmt::Debug {
    /// Registers `artifact` as the next version of `model`.
    async fn register(
        &self,
        model: &str,
        artifact: ModelArtifact,
        metadata: ModelMetadata,
    ) -> Result<ModelVersion>;

    /// The manifest of the selected version.
    async fn get_version(&self, model: &str, selector: &VersionSelector) -> Result<ModelVersion>;

    /// The selected version and its verified artifact.
    async fn load_artifact(
        &self,
        model: &str,
        selector: &VersionSelector,
    ) -> Result<(ModelVersion, ModelArtifact)>;

    /// Points `alias` at `version`, creating or moving it.
    async fn set_alias(&self, model: &str, alias: &str, version: u64) -> Result<()>;

    /// Removes `alias`.
    async fn delete_alias(&self, model: &str, alias: &str) -> Result<()>;

    /// The aliases of `model` and the versions they point at.
    async fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>>;

    /// All model names, sorted.
    async fn list_models(&self) -> Result<Vec<String>>;

    /// All versions of `model`, by ascending number, archived ones included.
    async fn list_versions(&self, model: &str) -> Result<Vec<ModelVersion>>;

    /// Versions matching `query`, by model then version.
    async fn search_versions(&self, query: &VersionQuery) -> Result<Vec<ModelVersion>>;

    /// Archives a version; fails with [`Error::Conflict`] while an alias points at it.
    async fn archive_version(&self, model: &str, version: u64) -> Result<ModelVersion>;
}
