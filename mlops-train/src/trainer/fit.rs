//! The training loop: optimizer and schedule, mini-batches and loss, early
//! stopping with best-weights restore, and the evaluation report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::compute::take_record_batch;
use arrow_array::{RecordBatch, UInt32Array};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, activation};
use mlops_core::drift::{TableDriftConfig, TableDriftDetector};
use mlops_core::{Error, EvaluationReport, ModelMetadata, Result, Task, TrainedModel};

use crate::model::{ModelCard, TabularModel};
use crate::net::{Net, read_f32};
use crate::prep::Preprocessor;
use mlops_core::metrics;
use mlops_core::rng::SplitMix64;

/// Scores of an encoded matrix through `net` on `device`, in chunks: per row one
/// probability (binary), `k` (multi-class) or the standardized value (regression).
pub(crate) fn score_net(
    net: &Net,
    task: Task,
    rows: usize,
    width: usize,
    matrix: &[f32],
    device: &Device,
) -> Result<Vec<f32>> {
    const CHUNK: usize = 65_536;
    let mut out = Vec::new();
    for start in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - start);
        let x = Tensor::<2>::from_data(
            TensorData::new(
                matrix[start * width..(start + n) * width].to_vec(),
                [n, width],
            ),
            device,
        );
        let z = net.forward(x, None);
        let z = match task {
            Task::BinaryClassification => activation::sigmoid(z),
            Task::MulticlassClassification => activation::softmax(z, 1),
            Task::Regression => z,
        };
        out.extend(read_f32(z)?);
    }
    Ok(out)
}
/// The drift reference profile of `columns` (all when `None`) of `batch`.
pub(super) fn reference_of(
    batch: &RecordBatch,
    columns: Option<Vec<String>>,
    seed: u64,
) -> Result<mlops_core::drift::TableReference> {
    let mut config = TableDriftConfig::default();
    config.columns = columns;
    config.seed = seed;
    Ok(TableDriftDetector::fit(batch, &config)?.reference().clone())
}
/// Metrics of scores against labels.
pub(super) fn report(
    task: Task,
    labels: &Labels,
    rows: &[u32],
    scores: &[f32],
    scale: Option<(f64, f64)>,
) -> Result<EvaluationReport> {
    let metrics = match labels {
        Labels::Classes { ids, names } => {
            let y: Vec<usize> = rows.iter().map(|&r| ids[r as usize]).collect();
            let p: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
            metrics::classification_report(&y, &p, names.len())?
        }
        Labels::Values(values) => {
            let y: Vec<f64> = rows.iter().map(|&r| values[r as usize]).collect();
            let (mean, std) = scale.unwrap_or((0.0, 1.0));
            let p: Vec<f64> = scores.iter().map(|&s| f64::from(s) * std + mean).collect();
            metrics::regression_report(&y, &p)?
        }
    };
    Ok(EvaluationReport {
        task,
        rows: rows.len(),
        metrics,
    })
}
/// Adam or AdamW with the configured weight decay (epsilon 1e-8, as PyTorch).
pub(super) fn optimizer(cfg: &TrainConfig) -> burn::optim::ModuleOptimizer {
    match cfg.optimizer {
        OptimizerKind::AdamW => AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(cfg.weight_decay as f32)
            .init(),
        OptimizerKind::Adam => AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(
                (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)),
            )
            .init(),
    }
}
/// A progress bar on a terminal, a hidden one otherwise.
pub(super) fn progress_bar(mode: Progress, total_steps: usize) -> indicatif::ProgressBar {
    if mode == Progress::Auto && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total_steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps {msg} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}
/// The task's loss over one mini-batch of outputs `z`: class-weighted binary or
/// multi-class cross-entropy (divided by the weights' sum, as PyTorch), or the
/// mean squared error of the standardized target.
pub(super) fn batch_loss(
    task: Task,
    labels: &Labels,
    chunk: &[u32],
    class_weight: &[f64],
    target_scale: Option<(f64, f64)>,
    z: Tensor<2>,
    device: &Device,
) -> Tensor<1> {
    let b = chunk.len();
    match labels {
        Labels::Classes { ids, .. } if task == Task::BinaryClassification => {
            let (mut y, mut w) = (Vec::with_capacity(b), Vec::with_capacity(b));
            for &r in chunk {
                let c = ids[r as usize];
                y.push(c as f32);
                w.push(class_weight[c] as f32);
            }
            let w_sum: f32 = w.iter().sum();
            let y = Tensor::<2>::from_data(TensorData::new(y, [b, 1]), device);
            let w = Tensor::<2>::from_data(TensorData::new(w, [b, 1]), device);
            let pos = activation::log_sigmoid(z.clone());
            let neg = activation::log_sigmoid(z.neg());
            let nll = (y.clone() * pos + (y.neg().add_scalar(1.0)) * neg).neg();
            (nll * w).sum().div_scalar(w_sum.max(f32::MIN_POSITIVE))
        }
        Labels::Classes { ids, names } => {
            let k = names.len();
            let mut yw = vec![0.0f32; b * k];
            let mut w_sum = 0.0f32;
            for (i, &r) in chunk.iter().enumerate() {
                let c = ids[r as usize];
                yw[i * k + c] = class_weight[c] as f32;
                w_sum += class_weight[c] as f32;
            }
            let yw = Tensor::<2>::from_data(TensorData::new(yw, [b, k]), device);
            (activation::log_softmax(z, 1) * yw)
                .sum()
                .neg()
                .div_scalar(w_sum.max(f32::MIN_POSITIVE))
        }
        Labels::Values(v) => {
            let (mean, std) = target_scale.unwrap_or((0.0, 1.0));
            let y: Vec<f32> = chunk
                .iter()
                .map(|&r| ((v[r as usize] - mean) / std) as f32)
                .collect();
            let y = Tensor::<2>::from_data(TensorData::new(y, [b, 1]), device);
            let d = z - y;
            (d.clone() * d).mean()
        }
    }
}
/// Gathers rows of a row-major matrix.
pub(super) fn gather(matrix: &[f32], width: usize, rows: &[u32], out: &mut Vec<f32>) {
    out.clear();
    for &r in rows {
        let r = r as usize;
        out.extend_from_slice(&matrix[r * width..(r + 1) * width]);
    }
}

use super::config::*;
use super::data::*;
use super::split::split;
use super::{TabularTrainer, TrainOutcome};

impl TabularTrainer {
    /// Trains and returns the model with its per-epoch history.
    pub fn fit_detailed(&self, data: &RecordBatch, label: &str) -> Result<TrainOutcome> {
        let cfg = &self.config;
        cfg.validate()?;
        let features = self.feature_names(data, label)?;
        if data.num_rows() < 2 {
            return Err(Error::invalid_input(
                "training data",
                format!(
                    "has {} rows; need at least 2 (a training and a validation row)",
                    data.num_rows()
                ),
            ));
        }
        let labels = read_labels(cfg, data, label)?;
        let class_info = match &labels {
            Labels::Classes { ids, names } => Some((ids.as_slice(), names.len())),
            Labels::Values(_) => None,
        };
        let (train_rows, valid_rows) = split(
            data.num_rows(),
            class_info,
            cfg.validation_fraction,
            cfg.seed,
        );
        if train_rows.is_empty() || valid_rows.is_empty() {
            return Err(Error::invalid_input(
                "training data",
                "too few rows to hold out a validation split",
            ));
        }
        let features_only = data
            .project(
                &features
                    .iter()
                    .map(|f| data.schema_ref().index_of(f))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Error::schema_mismatch(
                            "training data",
                            label,
                            "feature columns",
                            e.to_string(),
                        )
                    })?,
            )
            .map_err(|e| Error::backend("arrow", e))?;
        let train_batch = take_record_batch(&features_only, &UInt32Array::from(train_rows.clone()))
            .map_err(|e| Error::backend("arrow", e))?;
        let prep = Preprocessor::fit(&train_batch, &features, &cfg.prep)?;
        let width = prep.width();
        let all = prep.transform(&features_only)?;

        // Targets and per-row loss weights.
        let (names, outputs) = match &labels {
            Labels::Classes { names, .. } if cfg.task == Task::MulticlassClassification => {
                (names.clone(), names.len())
            }
            Labels::Classes { names, .. } => (names.clone(), 1),
            Labels::Values(_) => (Vec::new(), 1),
        };
        let target_scale = target_scale(&labels, &train_rows);
        let class_weight = class_weights(&labels, &cfg.class_weights, &train_rows)?;

        let device = cfg.device.open()?;
        let eval_device = device.clone().without_autodiff();
        let mut init_rng = SplitMix64::fork(cfg.seed, 2);
        let mut net = Net::init(&cfg.model, width, outputs, &mut init_rng, &device);
        let mut optim = optimizer(cfg);

        let steps_per_epoch = train_rows.len().div_ceil(cfg.batch_size);
        let total_steps = steps_per_epoch * cfg.epochs;
        let progress = progress_bar(cfg.progress, total_steps);

        let monitor = cfg.early_stopping.as_ref().map(|es| {
            let higher = metrics::higher_is_better(&es.metric).unwrap_or(false);
            (es, higher)
        });
        let mut shuffle_rng = SplitMix64::fork(cfg.seed, 3);
        let mut dropout_rng = SplitMix64::fork(cfg.seed, 4);
        let mut order = train_rows.clone();
        let valid_matrix = {
            let mut m = Vec::new();
            gather(&all, width, &valid_rows, &mut m);
            m
        };
        let mut history = Vec::new();
        let mut best: Option<(f64, usize, Net)> = None;
        let mut since_best = 0;
        let mut xb = Vec::with_capacity(cfg.batch_size * width);
        let mut step = 0;
        for epoch in 1..=cfg.epochs {
            progress.set_prefix(epoch.to_string());
            shuffle_rng.shuffle(&mut order);
            let started = Instant::now();
            let (mut loss_sum, mut batches) = (0.0f64, 0usize);
            let mut lr = cfg.learning_rate;
            for chunk in order.chunks(cfg.batch_size) {
                lr = cfg
                    .schedule
                    .rate(cfg.learning_rate, epoch - 1, step, total_steps);
                step += 1;
                let b = chunk.len();
                gather(&all, width, chunk, &mut xb);
                let x = Tensor::<2>::from_data(TensorData::new(xb.clone(), [b, width]), &device);
                let z = net.forward(x, Some(&mut dropout_rng));
                let loss = batch_loss(
                    cfg.task,
                    &labels,
                    chunk,
                    &class_weight,
                    target_scale,
                    z,
                    &device,
                );
                let loss_value = read_f32(loss.clone())?.first().copied().unwrap_or(f32::NAN);
                if !loss_value.is_finite() {
                    return Err(Error::invalid_input(
                        "training",
                        format!(
                            "the loss became {loss_value} in epoch {epoch}; lower the learning rate \
                             (now {lr})"
                        ),
                    ));
                }
                loss_sum += f64::from(loss_value);
                batches += 1;
                let grads = GradientsParams::from_grads(loss.backward(), &net.layers);
                let layers = optim.step(lr, net.layers.clone(), grads);
                net = net.with_layers(layers);
                progress.inc(1);
            }
            let elapsed = started.elapsed().max(Duration::from_nanos(1));
            let eval_net = net.with_layers(burn::module::Module::valid(&net.layers));
            let scores = score_net(
                &eval_net,
                cfg.task,
                valid_rows.len(),
                width,
                &valid_matrix,
                &eval_device,
            )?;
            let valid = report(cfg.task, &labels, &valid_rows, &scores, target_scale)?.metrics;
            let record = EpochRecord {
                epoch,
                train_loss: loss_sum / batches.max(1) as f64,
                valid,
                learning_rate: lr,
                rows_per_second: train_rows.len() as f64 / elapsed.as_secs_f64(),
            };
            progress.set_message(format!("loss {:.4}", record.train_loss));
            if let Some(o) = &self.observer {
                o.on_epoch(&record);
            }
            let mut stop = false;
            match monitor {
                Some((es, higher)) => {
                    let value = record.valid.get(&es.metric).copied().ok_or_else(|| {
                        Error::invalid_input(
                            "early_stopping.metric",
                            format!(
                                "{:?} could not be computed on the validation split",
                                es.metric
                            ),
                        )
                    })?;
                    let improved = match &best {
                        None => true,
                        Some((b, _, _)) if higher => value > b + es.min_delta,
                        Some((b, _, _)) => value < b - es.min_delta,
                    };
                    if improved {
                        best = Some((value, epoch, eval_net));
                        since_best = 0;
                    } else {
                        since_best += 1;
                        stop = since_best > es.patience;
                    }
                }
                None => best = Some((0.0, epoch, eval_net)),
            }
            history.push(record);
            if stop {
                break;
            }
        }
        progress.finish_and_clear();
        let (_, best_epoch, final_net) =
            best.ok_or_else(|| Error::invalid_input("training", "no epoch ran"))?;

        let scores = score_net(
            &final_net,
            cfg.task,
            valid_rows.len(),
            width,
            &valid_matrix,
            &eval_device,
        )?;
        let evaluation = report(cfg.task, &labels, &valid_rows, &scores, target_scale)?;
        let drift_reference = if cfg.drift_reference {
            Some(reference_of(
                &train_batch,
                Some(features.clone()),
                cfg.seed,
            )?)
        } else {
            None
        };
        let signature = ModelCard::signature_for(cfg.task, names.len(), &prep);
        let prediction_reference = match (cfg.drift_reference, cfg.task, signature.outputs.first())
        {
            (true, Task::BinaryClassification | Task::Regression, Some(output)) => {
                let (mean, std) = target_scale.unwrap_or((0.0, 1.0));
                let values: Vec<f64> = scores.iter().map(|&s| f64::from(s) * std + mean).collect();
                let batch = RecordBatch::try_from_iter([(
                    output.name.clone(),
                    std::sync::Arc::new(arrow_array::Float64Array::from(values))
                        as arrow_array::ArrayRef,
                )])
                .map_err(|e| Error::backend("arrow", e))?;
                Some(reference_of(&batch, None, cfg.seed)?)
            }
            _ => None,
        };
        let card = ModelCard {
            task: cfg.task,
            label: label.to_owned(),
            classes: names,
            target_scale,
            spec: cfg.model.clone(),
            features: prep.features().to_vec(),
            signature: signature.clone(),
            drift_reference,
            prediction_reference,
        };
        let model = Arc::new(TabularModel::new(card, final_net, eval_device)?);
        let artifact = model.to_artifact()?;
        let mut params = cfg.params();
        params.insert("best_epoch".into(), best_epoch.to_string());
        params.insert("features".into(), features.join(","));
        let metadata = ModelMetadata {
            description: format!("{} on {} rows", cfg.model.describe(), train_rows.len()),
            params,
            metrics: evaluation.metrics.clone(),
            signature: Some(signature),
            ..ModelMetadata::default()
        };
        let trained = TrainedModel {
            predictor: model.clone(),
            artifact,
            metadata,
            report: evaluation,
        };
        Ok(TrainOutcome {
            model,
            trained,
            history,
            best_epoch,
        })
    }
}
