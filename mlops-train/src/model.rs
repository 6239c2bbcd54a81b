//! A trained tabular model: preprocessing and network together, as a
//! [`Predictor`], serialized into a [`ModelArtifact`] and read back by
//! [`TabularLoader`].
//!
//! Artifact layout (flavor [`FLAVOR`]): the 8 bytes `MLOPSTAB`, a little-endian
//! `u32` format version, a little-endian `u64` header length, the JSON header
//! (task, classes, network spec, fitted preprocessing, signature, drift reference),
//! then the weights in safetensors.

use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use burn::tensor::{Device, Tensor, TensorData, activation};
use mlops_core::drift::{DriftDetector, TableDriftDetector, TableReference};
use mlops_core::inference::{Datatype, TensorData as V2Data};
use mlops_core::{
    CheckedInputs, Error, ModelArtifact, ModelLoader, Predictor, Result, Signature, Task,
    Tensor as V2Tensor, TensorSpec,
};
use serde::{Deserialize, Serialize};

use crate::device::TrainDevice;
use crate::net::{ModelSpec, Net, SmallKernel, read_f32};
use crate::prep::{FeatureEncoding, Preprocessor};

/// The artifact flavor of models trained by [`TabularTrainer`](crate::TabularTrainer).
pub const FLAVOR: &str = "burn-tabular";

const MAGIC: &[u8; 8] = b"MLOPSTAB";
const FORMAT_VERSION: u32 = 1;

/// The output tensor names.
pub mod outputs {
    /// Binary classification: the positive class's probability, `FP32 [-1]`.
    pub const PROBABILITY: &str = "probability";
    /// Multi-class classification: one probability per class, `FP32 [-1, k]`.
    pub const PROBABILITIES: &str = "probabilities";
    /// Regression: the predicted value, `FP32 [-1]`.
    pub const PREDICTION: &str = "prediction";
}

/// Everything about a model but its weights: the artifact header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The task.
    pub task: Task,
    /// The label column it was trained on.
    pub label: String,
    /// Class names, in output order (classification); the positive class is the
    /// second of two.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Regression target scaling: the network predicts `(y - mean) / std`.
    #[serde(default)]
    pub target_scale: Option<(f64, f64)>,
    /// The network.
    pub spec: ModelSpec,
    /// Fitted preprocessing of each raw feature.
    pub features: Vec<FeatureEncoding>,
    /// Inputs and outputs.
    pub signature: Signature,
    /// The training split's drift reference profile, over the raw features.
    #[serde(default)]
    pub drift_reference: Option<TableReference>,
    /// The validation split's profile of the first output (binary and regression
    /// models), for monitoring served predictions.
    #[serde(default)]
    pub prediction_reference: Option<TableReference>,
}

impl ModelCard {
    /// Width of the network's output layer.
    pub(crate) fn net_outputs(&self) -> usize {
        match self.task {
            Task::MulticlassClassification => self.classes.len(),
            Task::BinaryClassification | Task::Regression => 1,
        }
    }

    /// The signature a model of this card has.
    pub(crate) fn signature_for(task: Task, classes: usize, prep: &Preprocessor) -> Signature {
        let output = match task {
            Task::BinaryClassification => {
                TensorSpec::new(outputs::PROBABILITY, Datatype::Fp32, vec![-1])
            }
            Task::MulticlassClassification => TensorSpec::new(
                outputs::PROBABILITIES,
                Datatype::Fp32,
                vec![-1, i64::try_from(classes).unwrap_or(i64::MAX)],
            ),
            Task::Regression => TensorSpec::new(outputs::PREDICTION, Datatype::Fp32, vec![-1]),
        };
        // A model on numeric columns also takes them as one `[N, F]` FP32 tensor
        // `input` (the form KServe and Triton clients send).
        Signature::new(prep.input_specs(), vec![output]).with_matrix_input(MATRIX_INPUT)
    }
}

/// The name of the `[N, F]` tensor form of a numeric model's inputs
/// ([`Signature::matrix_input`]).
pub const MATRIX_INPUT: &str = "input";

/// A trained tabular model: raw features in, probabilities or values out.
///
/// Implements [`Predictor`]; use [`TabularModel::predict_batch`] for Arrow data
/// (nulls allowed) and [`TabularModel::to_artifact`] to serialize it.
#[derive(Debug)]
pub struct TabularModel {
    card: ModelCard,
    prep: Preprocessor,
    // burn modules are `Send` but not `Sync`; each call clones the (reference
    // counted) weights out under the lock and runs without it.
    net: Mutex<Net>,
    device: Device,
    /// Plain-loop forward pass for requests of a few rows.
    small: Option<SmallKernel>,
    /// Detectors over the card's references, built once.
    input_drift: Option<Arc<dyn DriftDetector>>,
    prediction_drift: Option<Arc<dyn DriftDetector>>,
}

/// Requests of at most this many rows use the plain-loop kernel.
const SMALL_ROWS: usize = 16;

/// [`TabularModel::predict_batch`] splits batches into parts of at least this
/// many rows across the cores.
pub const PARALLEL_ROWS: usize = 8192;

impl TabularModel {
    /// The model of `card` and `net`; fails when a drift reference of the card is
    /// not valid.
    pub(crate) fn new(card: ModelCard, net: Net, device: Device) -> Result<Self> {
        let prep = Preprocessor::from_encodings(card.features.clone());
        // Reading the weights back cannot fail for a model just built or loaded;
        // if it did, every request would simply take the burn path.
        let small = SmallKernel::from_net(&net).ok().flatten();
        let detector = |r: &Option<TableReference>| -> Result<Option<Arc<dyn DriftDetector>>> {
            Ok(match r {
                Some(r) => Some(Arc::new(TableDriftDetector::from_reference(r.clone())?)),
                None => None,
            })
        };
        Ok(Self {
            input_drift: detector(&card.drift_reference)?,
            prediction_drift: detector(&card.prediction_reference)?,
            card,
            prep,
            net: Mutex::new(net),
            device,
            small,
        })
    }

    /// The model's description: task, classes, spec, preprocessing, signature.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The drift reference of the training data, when it was profiled.
    pub fn drift_reference(&self) -> Option<&TableReference> {
        self.card.drift_reference.as_ref()
    }

    fn net(&self) -> Result<Net> {
        self.net
            .lock()
            .map(|n| n.clone())
            .map_err(|_| Error::backend("burn", "a previous prediction panicked"))
    }

    /// Scores of an encoded row-major matrix: per row one probability (binary), `k`
    /// probabilities (multi-class) or one value (regression), as `f32`.
    pub(crate) fn score_matrix(&self, rows: usize, matrix: Vec<f32>) -> Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let width = self.prep.width();
        if rows <= SMALL_ROWS
            && let Some(kernel) = &self.small
        {
            return Ok(self.finish_small(kernel.forward(&matrix, rows), rows));
        }
        let x = Tensor::<2>::from_data(TensorData::new(matrix, [rows, width]), &self.device);
        let out = self.net()?.forward(x, None);
        let out = match self.card.task {
            Task::BinaryClassification => activation::sigmoid(out),
            Task::MulticlassClassification => activation::softmax(out, 1),
            Task::Regression => match self.card.target_scale {
                Some((mean, std)) => out.mul_scalar(std).add_scalar(mean),
                None => out,
            },
        };
        read_f32(out)
    }

    /// The task's output function over raw outputs of the small kernel.
    fn finish_small(&self, mut raw: Vec<f32>, rows: usize) -> Vec<f32> {
        match self.card.task {
            Task::BinaryClassification => {
                for z in &mut raw {
                    *z = 1.0 / (1.0 + (-*z).exp());
                }
            }
            Task::MulticlassClassification => {
                let k = raw.len() / rows.max(1);
                for row in raw.chunks_mut(k.max(1)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for z in row.iter_mut() {
                        *z = (*z - max).exp();
                        sum += *z;
                    }
                    for z in row.iter_mut() {
                        *z /= sum;
                    }
                }
            }
            Task::Regression => {
                if let Some((mean, std)) = self.card.target_scale {
                    for z in &mut raw {
                        *z = (f64::from(*z) * std + mean) as f32;
                    }
                }
            }
        }
        raw
    }

    /// Scores of Arrow data holding the raw feature columns (nulls allowed).
    ///
    /// A batch of at least [`PARALLEL_ROWS`] rows is cut into one contiguous
    /// part per core, each encoded and scored on a thread of its own; the scores
    /// come back in row order.
    pub fn predict_batch(&self, batch: &RecordBatch) -> Result<Vec<f32>> {
        let rows = batch.num_rows();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let parts = cores.min(rows / PARALLEL_ROWS.max(1)).max(1);
        if parts == 1 {
            let matrix = self.prep.transform(batch)?;
            return self.score_matrix(rows, matrix);
        }
        let per_part = rows.div_ceil(parts);
        let results: Vec<Result<Vec<f32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..parts)
                .map(|p| {
                    let start = p * per_part;
                    let part = batch.slice(start, per_part.min(rows - start));
                    scope.spawn(move || {
                        let matrix = self.prep.transform(&part)?;
                        self.score_matrix(part.num_rows(), matrix)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::backend("burn", "a scoring thread panicked"))
                    })
                })
                .collect()
        });
        let mut scores = Vec::with_capacity(rows * self.card.net_outputs());
        for part in results {
            scores.extend(part?);
        }
        Ok(scores)
    }

    /// The model serialized into an artifact of flavor [`FLAVOR`].
    pub fn to_artifact(&self) -> Result<ModelArtifact> {
        let header = serde_json::to_vec(&self.card).map_err(|e| Error::backend("model card", e))?;
        let weights = self.net()?.to_safetensors()?;
        let mut bytes = Vec::with_capacity(20 + header.len() + weights.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&weights);
        Ok(ModelArtifact::new(FLAVOR, bytes))
    }

    /// Reads an artifact written by [`TabularModel::to_artifact`] onto `device`
    /// (without autodiff). The digest is verified first.
    pub fn from_artifact(artifact: &ModelArtifact, device: &Device) -> Result<Self> {
        if artifact.flavor != FLAVOR {
            return Err(Error::invalid_input(
                format!("artifact flavor {:?}", artifact.flavor),
                format!("this loader reads {FLAVOR:?} artifacts only"),
            ));
        }
        artifact.verify()?;
        let bad = |reason: String| Error::integrity(format!("{FLAVOR} artifact"), reason);
        let bytes = &artifact.bytes[..];
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            return Err(bad("it does not start with the MLOPSTAB header".into()));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}; this build reads version {FORMAT_VERSION}"
            )));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..20]);
        let header_len = usize::try_from(u64::from_le_bytes(len))
            .ok()
            .filter(|&l| l <= bytes.len() - 20)
            .ok_or_else(|| bad("the header length runs past the end".into()))?;
        let card: ModelCard = serde_json::from_slice(&bytes[20..20 + header_len])
            .map_err(|e| bad(format!("unreadable header: {e}")))?;
        card.spec.validate()?;
        let prep = Preprocessor::from_encodings(card.features.clone());
        let net = Net::from_safetensors(
            &card.spec,
            prep.width(),
            card.net_outputs(),
            &bytes[20 + header_len..],
            device,
        )?;
        Self::new(card, net, device.clone())
    }

    fn outputs_of(&self, rows: usize, scores: Vec<f32>) -> Result<Vec<V2Tensor>> {
        let spec = self
            .card
            .signature
            .outputs
            .first()
            .ok_or_else(|| Error::backend("model card", "the signature has no output"))?;
        let shape = match self.card.task {
            Task::MulticlassClassification => vec![rows, self.card.classes.len()],
            _ => vec![rows],
        };
        V2Tensor::new(&spec.name, shape, V2Data::Fp32(scores)).map(|t| vec![t])
    }
}

impl TabularModel {
    /// Answers inputs that passed the signature check.
    fn answer(&self, inputs: &[V2Tensor]) -> Result<Vec<V2Tensor>> {
        let (rows, matrix) = self.prep.transform_tensors(inputs)?;
        let scores = self.score_matrix(rows, matrix)?;
        self.outputs_of(rows, scores)
    }
}

impl Predictor for TabularModel {
    fn signature(&self) -> &Signature {
        &self.card.signature
    }

    fn predict(&self, inputs: &[V2Tensor]) -> Result<Vec<V2Tensor>> {
        if let (Some(matrix), [only]) = (&self.card.signature.matrix_input, inputs)
            && only.name == matrix.name
        {
            let columns = self.card.signature.columns_from_matrix(inputs.to_vec())?;
            return self.predict(&columns);
        }
        let checked = self.card.signature.check_inputs(inputs)?;
        self.answer(&checked)
    }

    /// `predict` without checking the inputs against the signature again when they
    /// were checked against this model's; the encoder still refuses a missing
    /// input or a wrong row count.
    fn predict_checked(&self, inputs: CheckedInputs<'_>) -> Result<Vec<V2Tensor>> {
        if inputs.is_for(&self.card.signature) {
            self.answer(&inputs)
        } else {
            self.predict(&inputs)
        }
    }

    fn input_drift(&self) -> Option<Arc<dyn DriftDetector>> {
        self.input_drift.clone()
    }

    fn prediction_drift(&self) -> Option<Arc<dyn DriftDetector>> {
        self.prediction_drift.clone()
    }
}

/// Loads [`FLAVOR`] artifacts into [`TabularModel`] predictors, on the CPU by
/// default or on a chosen device.
///
/// ```
/// use mlops_core::ModelLoader;
/// use mlops_train::TabularLoader;
///
/// let loader = TabularLoader::default();
/// assert!(loader.can_load("burn-tabular"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct TabularLoader {
    device: TrainDevice,
}

impl TabularLoader {
    /// A loader that places models on `device`.
    pub fn on(device: TrainDevice) -> Self {
        Self { device }
    }

    /// Loads `artifact` as a concrete [`TabularModel`].
    pub fn load_model(&self, artifact: &ModelArtifact) -> Result<TabularModel> {
        let device = self.device.open()?.without_autodiff();
        TabularModel::from_artifact(artifact, &device)
    }
}

impl ModelLoader for TabularLoader {
    fn flavors(&self) -> Vec<String> {
        vec![FLAVOR.to_owned()]
    }

    fn load(&self, artifact: &ModelArtifact) -> Result<Arc<dyn Predictor>> {
        Ok(Arc::new(self.load_model(artifact)?))
    }
}
