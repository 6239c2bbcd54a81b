//! Evaluation metrics, defined as scikit-learn defines them (checked against
//! scikit-learn on committed fixtures: `mlops-train/tests/fixtures/`). The model
//! server's live quality and the retraining loop use them too.
//!
//! Classification metrics take integer class labels `0..k` and, where they need
//! scores, probabilities: one per row for binary tasks (the positive class, label 1),
//! `k` per row (row-major) for multi-class ones.
//!
//! ```
//! use mlops_core::metrics;
//!
//! let y = [0, 0, 1, 1];
//! let p = [0.1, 0.4, 0.35, 0.8];
//! assert_eq!(metrics::roc_auc(&y, &p)?, 0.75);
//! assert!((metrics::average_precision(&y, &p)? - 0.8333333333333333).abs() < 1e-12);
//! # Ok::<(), mlops_core::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::train::Task;

fn check_lengths(what: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::invalid_input(
            what,
            format!("{a} labels but {b} predictions"),
        ));
    }
    if a == 0 {
        return Err(Error::invalid_input(what, "no rows to evaluate"));
    }
    Ok(())
}

fn check_finite(what: &str, values: &[f64]) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_input(
            what,
            format!("prediction {i} is {}, not a finite number", values[i]),
        ));
    }
    Ok(())
}

/// The share of rows whose predicted class equals the true class.
pub fn accuracy(y_true: &[usize], y_pred: &[usize]) -> Result<f64> {
    check_lengths("accuracy", y_true.len(), y_pred.len())?;
    let hits = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / y_true.len() as f64)
}

/// The confusion matrix: `matrix[true][predicted]` counts, for classes `0..classes`.
pub fn confusion_matrix(
    y_true: &[usize],
    y_pred: &[usize],
    classes: usize,
) -> Result<Vec<Vec<u64>>> {
    check_lengths("confusion matrix", y_true.len(), y_pred.len())?;
    let mut m = vec![vec![0u64; classes]; classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        if t >= classes || p >= classes {
            return Err(Error::invalid_input(
                "confusion matrix",
                format!("class {} outside 0..{classes}", t.max(p)),
            ));
        }
        m[t][p] += 1;
    }
    Ok(m)
}

/// Precision, recall and F1 of one class from a confusion matrix; 0 where the
/// denominator is 0 (scikit-learn's `zero_division` default).
fn prf_of_class(m: &[Vec<u64>], class: usize) -> (f64, f64, f64) {
    let tp = m[class][class] as f64;
    let predicted: u64 = m.iter().map(|row| row[class]).sum();
    let actual: u64 = m[class].iter().sum();
    let ratio = |num: f64, den: f64| if den == 0.0 { 0.0 } else { num / den };
    let precision = ratio(tp, predicted as f64);
    let recall = ratio(tp, actual as f64);
    // scikit-learn computes F1 as 2 tp / (2 tp + fp + fn).
    let f1 = ratio(2.0 * tp, (predicted + actual) as f64);
    (precision, recall, f1)
}

/// Precision, recall and F1: of class 1 for two classes (scikit-learn's
/// `average="binary"`), otherwise the unweighted mean over classes (`"macro"`).
pub fn precision_recall_f1(
    y_true: &[usize],
    y_pred: &[usize],
    classes: usize,
) -> Result<(f64, f64, f64)> {
    let m = confusion_matrix(y_true, y_pred, classes)?;
    if classes == 2 {
        return Ok(prf_of_class(&m, 1));
    }
    let mut sum = (0.0, 0.0, 0.0);
    for c in 0..classes {
        let (p, r, f) = prf_of_class(&m, c);
        sum = (sum.0 + p, sum.1 + r, sum.2 + f);
    }
    let k = classes as f64;
    Ok((sum.0 / k, sum.1 / k, sum.2 / k))
}

/// Indices of `scores` by descending score.
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Area under the ROC curve of binary labels (`positive[i]`) against scores, ties
/// counted half (equal to the trapezoidal area scikit-learn computes).
fn binary_auc(positive: &[bool], scores: &[f64]) -> Result<f64> {
    let order = descending(scores);
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return Err(Error::invalid_input(
            "ROC AUC",
            "needs both classes among the labels; only one is present",
        ));
    }
    // Walk tie groups from the highest score: each negative scores against every
    // positive above it, half against positives tied with it.
    let (mut pos_above, mut area) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0.0, 0.0);
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if positive[order[j]] {
                pos += 1.0;
            } else {
                neg += 1.0;
            }
            j += 1;
        }
        area += neg * (pos_above + pos / 2.0);
        pos_above += pos;
        i = j;
    }
    Ok(area / (n_pos * n_neg))
}

/// Average precision of binary labels against scores: `sum_n (R_n - R_{n-1}) P_n`
/// over distinct score thresholds, as scikit-learn's `average_precision_score`.
fn binary_ap(positive: &[bool], scores: &[f64]) -> Result<f64> {
    let order = descending(scores);
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    if n_pos == 0.0 {
        return Err(Error::invalid_input(
            "average precision",
            "needs at least one positive label",
        ));
    }
    let (mut tp, mut fp, mut last_recall, mut ap) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if positive[order[j]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        let recall = tp / n_pos;
        ap += (recall - last_recall) * (tp / (tp + fp));
        last_recall = recall;
        i = j;
    }
    Ok(ap)
}

/// Scores of class `c` in row-major probabilities of `classes` columns.
fn column(probs: &[f64], classes: usize, c: usize) -> Vec<f64> {
    probs.iter().skip(c).step_by(classes).copied().collect()
}

fn check_scores(what: &str, y_true: &[usize], probs: &[f64], classes: usize) -> Result<()> {
    let per_row = if classes == 2 { 1 } else { classes };
    check_lengths(what, y_true.len() * per_row, probs.len())?;
    check_finite(what, probs)?;
    if let Some(&c) = y_true.iter().find(|&&c| c >= classes) {
        return Err(Error::invalid_input(
            what,
            format!("class {c} outside 0..{classes}"),
        ));
    }
    Ok(())
}

/// Macro average over classes of a one-vs-rest binary metric.
fn one_vs_rest(
    y_true: &[usize],
    probs: &[f64],
    classes: usize,
    metric: fn(&[bool], &[f64]) -> Result<f64>,
) -> Result<f64> {
    let mut sum = 0.0;
    for c in 0..classes {
        let positive: Vec<bool> = y_true.iter().map(|&t| t == c).collect();
        sum += metric(&positive, &column(probs, classes, c))?;
    }
    Ok(sum / classes as f64)
}

/// ROC AUC of binary labels against positive-class scores.
pub fn roc_auc(y_true: &[usize], scores: &[f64]) -> Result<f64> {
    check_scores("ROC AUC", y_true, scores, 2)?;
    let positive: Vec<bool> = y_true.iter().map(|&t| t == 1).collect();
    binary_auc(&positive, scores)
}

/// Average precision (PR AUC) of binary labels against positive-class scores.
pub fn average_precision(y_true: &[usize], scores: &[f64]) -> Result<f64> {
    check_scores("average precision", y_true, scores, 2)?;
    let positive: Vec<bool> = y_true.iter().map(|&t| t == 1).collect();
    binary_ap(&positive, scores)
}

/// Multi-class ROC AUC: one-vs-rest, macro averaged (scikit-learn's
/// `multi_class="ovr"`), from row-major probabilities.
pub fn roc_auc_ovr(y_true: &[usize], probs: &[f64], classes: usize) -> Result<f64> {
    check_scores("ROC AUC", y_true, probs, classes)?;
    one_vs_rest(y_true, probs, classes, binary_auc)
}

/// Multi-class average precision: one-vs-rest, macro averaged.
pub fn average_precision_ovr(y_true: &[usize], probs: &[f64], classes: usize) -> Result<f64> {
    check_scores("average precision", y_true, probs, classes)?;
    one_vs_rest(y_true, probs, classes, binary_ap)
}

/// Mean negative log-likelihood of the true classes; probabilities are clipped to
/// `[eps, 1 - eps]` with `eps` the `f64` machine epsilon, as scikit-learn does.
/// `probs` holds one positive-class probability per row when `classes == 2`, else
/// `classes` per row.
pub fn log_loss(y_true: &[usize], probs: &[f64], classes: usize) -> Result<f64> {
    check_scores("log loss", y_true, probs, classes)?;
    let clip = |p: f64| p.clamp(f64::EPSILON, 1.0 - f64::EPSILON);
    let total: f64 = if classes == 2 {
        y_true
            .iter()
            .zip(probs)
            .map(|(&t, &p)| {
                if t == 1 {
                    -clip(p).ln()
                } else {
                    -clip(1.0 - p).ln()
                }
            })
            .sum()
    } else {
        y_true
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let row = &probs[i * classes..(i + 1) * classes];
                // scikit-learn renormalizes clipped rows.
                let clipped: Vec<f64> = row.iter().map(|&p| clip(p)).collect();
                let sum: f64 = clipped.iter().sum();
                -(clipped[t] / sum).ln()
            })
            .sum()
    };
    Ok(total / y_true.len() as f64)
}

fn check_regression(what: &str, y_true: &[f64], y_pred: &[f64]) -> Result<()> {
    check_lengths(what, y_true.len(), y_pred.len())?;
    check_finite(what, y_pred)?;
    check_finite(what, y_true)
}

/// Root mean squared error.
pub fn rmse(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    check_regression("RMSE", y_true, y_pred)?;
    let sse: f64 = y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| (t - p) * (t - p))
        .sum();
    Ok((sse / y_true.len() as f64).sqrt())
}

/// Mean absolute error.
pub fn mae(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    check_regression("MAE", y_true, y_pred)?;
    let sae: f64 = y_true.iter().zip(y_pred).map(|(t, p)| (t - p).abs()).sum();
    Ok(sae / y_true.len() as f64)
}

/// The coefficient of determination; for constant true values 1 when predictions
/// are exact, else 0 (scikit-learn's `force_finite`).
pub fn r2(y_true: &[f64], y_pred: &[f64]) -> Result<f64> {
    check_regression("R2", y_true, y_pred)?;
    let mean = y_true.iter().sum::<f64>() / y_true.len() as f64;
    let ss_tot: f64 = y_true.iter().map(|t| (t - mean) * (t - mean)).sum();
    let ss_res: f64 = y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| (t - p) * (t - p))
        .sum();
    Ok(if ss_tot == 0.0 {
        if ss_res == 0.0 { 1.0 } else { 0.0 }
    } else {
        1.0 - ss_res / ss_tot
    })
}

/// The predicted class of each row: `p >= 0.5` for binary scores, the most
/// probable class (lowest index on ties) for multi-class probabilities.
pub fn predicted_classes(probs: &[f64], classes: usize) -> Vec<usize> {
    if classes == 2 {
        return probs.iter().map(|&p| usize::from(p >= 0.5)).collect();
    }
    probs
        .chunks(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

/// Every classification metric: `accuracy`, `precision`, `recall`, `f1`, `roc_auc`,
/// `average_precision`, `log_loss`. For binary tasks `probs` has one score per row;
/// ROC AUC and average precision are left out when the labels hold one class only.
pub fn classification_report(
    y_true: &[usize],
    probs: &[f64],
    classes: usize,
) -> Result<BTreeMap<String, f64>> {
    check_scores("classification metrics", y_true, probs, classes)?;
    let y_pred = predicted_classes(probs, classes);
    let (precision, recall, f1) = precision_recall_f1(y_true, &y_pred, classes)?;
    let mut m = BTreeMap::from([
        ("accuracy".to_owned(), accuracy(y_true, &y_pred)?),
        ("precision".to_owned(), precision),
        ("recall".to_owned(), recall),
        ("f1".to_owned(), f1),
        ("log_loss".to_owned(), log_loss(y_true, probs, classes)?),
    ]);
    let (auc, ap) = if classes == 2 {
        (roc_auc(y_true, probs), average_precision(y_true, probs))
    } else {
        (
            roc_auc_ovr(y_true, probs, classes),
            average_precision_ovr(y_true, probs, classes),
        )
    };
    if let (Ok(auc), Ok(ap)) = (auc, ap) {
        m.insert("roc_auc".to_owned(), auc);
        m.insert("average_precision".to_owned(), ap);
    }
    Ok(m)
}

/// Every regression metric: `rmse`, `mae`, `r2`.
pub fn regression_report(y_true: &[f64], y_pred: &[f64]) -> Result<BTreeMap<String, f64>> {
    Ok(BTreeMap::from([
        ("rmse".to_owned(), rmse(y_true, y_pred)?),
        ("mae".to_owned(), mae(y_true, y_pred)?),
        ("r2".to_owned(), r2(y_true, y_pred)?),
    ]))
}

/// Whether a larger value of `metric` is better (`roc_auc`, `accuracy`, ...) or a
/// smaller one (`log_loss`, `rmse`, `mae`); `None` for an unknown metric.
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "accuracy" | "precision" | "recall" | "f1" | "roc_auc" | "average_precision" | "r2" => {
            Some(true)
        }
        "log_loss" | "rmse" | "mae" | "loss" => Some(false),
        _ => None,
    }
}

/// The metrics a task reports, for error messages and validation.
pub fn metrics_of(task: Task) -> &'static [&'static str] {
    match task {
        Task::BinaryClassification | Task::MulticlassClassification => &[
            "accuracy",
            "precision",
            "recall",
            "f1",
            "roc_auc",
            "average_precision",
            "log_loss",
            "loss",
        ],
        Task::Regression => &["rmse", "mae", "r2", "loss"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(roc_auc(&[0, 1], &[0.5, 0.5]).unwrap(), 0.5);
        assert_eq!(roc_auc(&[0, 1, 1], &[0.2, 0.9, 0.1]).unwrap(), 0.5);
        assert!(roc_auc(&[1, 1], &[0.2, 0.3]).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(accuracy(&[], &[]).is_err());
        assert!(accuracy(&[1], &[1, 0]).is_err());
        let err = roc_auc(&[0, 1], &[f64::NAN, 0.2]).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(confusion_matrix(&[3], &[0], 2).is_err());
        assert!(rmse(&[1.0], &[f64::INFINITY]).is_err());
    }

    #[test]
    fn r2_of_constant_targets() {
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 1.0]).unwrap(), 1.0);
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), 0.0);
    }
}
