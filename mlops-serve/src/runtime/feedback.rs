//! Feedback: true outcomes and business metrics joined to served predictions
//! by id, and the live quality of each version: metrics over its latest
//! labelled predictions, and the per-prediction loss and business metrics
//! since it was first served and over recent windows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use mlops_core::experiment::ArmStats;
use mlops_core::inference::{Tensor, TensorData};
use mlops_core::monitoring::LiveQuality;
use mlops_core::{Error, Result, Task, metrics};

use crate::config::FeedbackConfig;

/// Width of a window bucket, in seconds.
const BUCKET_SECONDS: i64 = 600;
/// The windows of [`LiveQuality::windows`], in buckets.
const WINDOWS: [(&str, i64); 3] = [("1h", 6), ("24h", 144), ("7d", 1008)];
/// Business metrics a version keeps, at most (each costs up to its buckets).
pub(crate) const MAX_BUSINESS_METRICS: usize = 32;
/// Business metrics one feedback call may carry, at most.
pub(crate) const MAX_METRICS_PER_CALL: usize = 16;

struct Pending {
    version: u64,
    scores: Vec<f64>,
    /// Business metrics already recorded for it (each at most once): bit `i`
    /// is its version's `names[i]`.
    measured: u32,
}

/// Statistics since the start and per 10-minute bucket (the latest week).
#[derive(Debug, Default)]
struct Windowed {
    total: ArmStats,
    buckets: VecDeque<(i64, ArmStats)>,
}

impl Windowed {
    fn push(&mut self, bucket: i64, value: f64) -> Result<()> {
        self.total.push(value)?;
        match self.buckets.back_mut() {
            Some((b, stats)) if *b == bucket => stats.push(value)?,
            _ => {
                let mut stats = ArmStats::new();
                stats.push(value)?;
                self.buckets.push_back((bucket, stats));
            }
        }
        let longest = WINDOWS[WINDOWS.len() - 1].1;
        while self
            .buckets
            .front()
            .is_some_and(|(b, _)| bucket - b >= longest)
        {
            self.buckets.pop_front();
        }
        Ok(())
    }

    /// The statistics of the `buckets` latest buckets up to `now`.
    fn window(&self, now: i64, buckets: i64) -> ArmStats {
        let mut out = ArmStats::new();
        for (b, stats) in self.buckets.iter().rev() {
            if now - b >= buckets {
                break;
            }
            if *b <= now {
                out.merge(stats);
            }
        }
        out
    }
}

/// One version's labelled predictions and business metrics.
#[derive(Debug, Default)]
struct VersionBook {
    /// The latest (score, outcome) pairs, for the window's metrics.
    recent: VecDeque<(f64, f64)>,
    loss: Windowed,
    /// Business metric names in the order first seen (at most
    /// [`MAX_BUSINESS_METRICS`], so a pending prediction's `measured` bits
    /// name them), and their statistics.
    names: Vec<String>,
    business: Vec<Windowed>,
}

/// The bucket of the time `unix_seconds`.
pub(crate) fn bucket_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(BUCKET_SECONDS)
}

/// The bucket of now.
fn now_bucket() -> i64 {
    bucket_of(chrono::Utc::now().timestamp())
}

/// Whether `name` may name a business metric: 1 to 64 of letters, digits and
/// `_ . : -` (it becomes a key in answers and the audit of decisions).
fn check_metric_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(
            "feedback metrics",
            format!(
                "{:?} is not a metric name (1 to 64 letters, digits, '_', '.', ':' or '-')",
                name.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// Predictions awaiting outcomes, and labelled windows per version.
#[derive(Debug)]
pub(crate) struct FeedbackBook {
    config: FeedbackConfig,
    inner: Mutex<BookInner>,
}

#[derive(Default)]
struct BookInner {
    pending: HashMap<String, Pending>,
    order: VecDeque<String>,
    versions: BTreeMap<u64, VersionBook>,
    /// What `pending` and `order` hold, in bytes (approximately).
    bytes: usize,
}

/// The bytes a pending prediction holds (its id, scores and map entry).
fn pending_cost(id: &str, scores: usize) -> usize {
    id.len() + scores * 8 + 64
}

/// The bytes an id in the eviction order holds.
fn order_cost(id: &str) -> usize {
    id.len() + 24
}

impl std::fmt::Debug for BookInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BookInner({} pending)", self.pending.len())
    }
}

/// The first output's values as one score per row.
pub(crate) fn scores_of(outputs: &[Tensor]) -> Option<Vec<f64>> {
    let first = outputs.first()?;
    let per_row: usize = first.shape.get(1..).map_or(1, |r| r.iter().product());
    if per_row != 1 {
        return None;
    }
    Some(match &first.data {
        TensorData::Fp64(v) => v.clone(),
        other => other
            .to_f32_vec()
            .ok()?
            .into_iter()
            .map(f64::from)
            .collect(),
    })
}

impl FeedbackBook {
    pub(crate) fn new(config: FeedbackConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(BookInner::default()),
        }
    }

    /// Refuses prediction ids longer than the configured limit before any
    /// lookup: the server issues 32-character ids, so a longer one is a
    /// client's mistake (or a probe), named as such.
    pub(crate) fn check_id(&self, id: &str) -> Result<()> {
        if id.len() > self.config.max_id_bytes {
            return Err(Error::invalid_input(
                "prediction id",
                format!(
                    "{} bytes long; feedback names a prediction by the id the server \
                     returned with it (parameters.prediction_id), at most {} bytes",
                    id.len(),
                    self.config.max_id_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Remembers a served prediction under its request id, forgetting the oldest
    /// beyond the count and byte limits.
    pub(crate) fn record_prediction(&self, id: &str, version: u64, outputs: &[Tensor]) {
        let Some(scores) = scores_of(outputs) else {
            return;
        };
        if id.len() > self.config.max_id_bytes {
            return;
        }
        let Ok(mut b) = self.inner.lock() else { return };
        let cost = pending_cost(id, scores.len());
        let pending = Pending {
            version,
            scores,
            measured: 0,
        };
        match b.pending.insert(id.to_owned(), pending) {
            Some(old) => {
                b.bytes = b.bytes.saturating_sub(pending_cost(id, old.scores.len())) + cost;
            }
            None => {
                b.order.push_back(id.to_owned());
                b.bytes += cost + order_cost(id);
            }
        }
        while b.order.len() > self.config.max_pending || b.bytes > self.config.max_pending_bytes {
            let Some(old) = b.order.pop_front() else {
                break;
            };
            let mut freed = order_cost(&old);
            if let Some(p) = b.pending.remove(&old) {
                freed += pending_cost(&old, p.scores.len());
            }
            b.bytes = b.bytes.saturating_sub(freed);
        }
    }

    /// Joins outcomes (one per row of the request) to the prediction `id`; returns
    /// the version that served it.
    pub(crate) fn record_outcomes(
        &self,
        deployment: &str,
        id: &str,
        outcomes: &[f64],
    ) -> Result<u64> {
        self.record_outcomes_at(deployment, id, outcomes, now_bucket())
    }

    /// [`record_outcomes`](Self::record_outcomes) in the window bucket `bucket`.
    pub(crate) fn record_outcomes_at(
        &self,
        deployment: &str,
        id: &str,
        outcomes: &[f64],
        bucket: i64,
    ) -> Result<u64> {
        self.check_id(id)?;
        if let Some(o) = outcomes.iter().find(|o| !o.is_finite()) {
            return Err(Error::invalid_input(
                "feedback outcomes",
                format!("{o} is not a finite number"),
            ));
        }
        if matches!(self.config.task, Task::BinaryClassification)
            && let Some(o) = outcomes.iter().find(|&&o| o != 0.0 && o != 1.0)
        {
            return Err(Error::invalid_input(
                "feedback outcomes",
                format!("{o} is not 0 or 1"),
            ));
        }
        let mut b = self
            .inner
            .lock()
            .map_err(|_| Error::backend("feedback", "poisoned"))?;
        let pending = b.pending.get(id).ok_or_else(|| unknown(deployment, id))?;
        if pending.scores.len() != outcomes.len() {
            return Err(Error::invalid_input(
                "feedback outcomes",
                format!(
                    "{} outcomes for a prediction of {} rows",
                    outcomes.len(),
                    pending.scores.len()
                ),
            ));
        }
        let Some(pending) = b.pending.remove(id) else {
            return Err(Error::backend("feedback", "the prediction vanished"));
        };
        // Its id stays in the eviction order (and is counted there) until popped.
        b.bytes = b
            .bytes
            .saturating_sub(pending_cost(id, pending.scores.len()));
        let window = self.config.window.max(1);
        let task = self.config.task;
        let book = b.versions.entry(pending.version).or_default();
        for (s, o) in pending.scores.iter().zip(outcomes) {
            book.recent.push_back((*s, *o));
            if book.recent.len() > window {
                book.recent.pop_front();
            }
            book.loss.push(bucket, row_loss(task, *s, *o))?;
        }
        Ok(pending.version)
    }

    /// Records business metrics (a conversion, an order value) of the
    /// prediction `id` for the version that served it; each name at most once
    /// per prediction. The prediction stays open for its outcomes.
    pub(crate) fn record_metrics_at(
        &self,
        deployment: &str,
        id: &str,
        values: &BTreeMap<String, f64>,
        bucket: i64,
    ) -> Result<u64> {
        self.check_id(id)?;
        if values.is_empty() || values.len() > MAX_METRICS_PER_CALL {
            return Err(Error::invalid_input(
                "feedback metrics",
                format!(
                    "{} given; a call takes 1 to {MAX_METRICS_PER_CALL}",
                    values.len()
                ),
            ));
        }
        for (name, v) in values {
            check_metric_name(name)?;
            if !v.is_finite() {
                return Err(Error::invalid_input(
                    "feedback metrics",
                    format!("{name} = {v} is not a finite number"),
                ));
            }
        }
        let mut b = self
            .inner
            .lock()
            .map_err(|_| Error::backend("feedback", "poisoned"))?;
        let BookInner {
            pending, versions, ..
        } = &mut *b;
        let p = pending.get_mut(id).ok_or_else(|| unknown(deployment, id))?;
        let book = versions.entry(p.version).or_default();
        let index = |name: &str| book.names.iter().position(|n| n == name);
        if let Some(name) = values
            .keys()
            .find(|n| index(n).is_some_and(|i| p.measured & (1 << i) != 0))
        {
            return Err(Error::conflict(
                format!("prediction {id:?} of {deployment}"),
                format!("its {name} was already recorded"),
            ));
        }
        let new = values.keys().filter(|n| index(n).is_none()).count();
        if book.names.len() + new > MAX_BUSINESS_METRICS {
            return Err(Error::invalid_input(
                "feedback metrics",
                format!(
                    "version {} of {deployment} already keeps {} business metrics; at most \
                     {MAX_BUSINESS_METRICS} are kept",
                    p.version,
                    book.names.len()
                ),
            ));
        }
        for (name, v) in values {
            let i = match book.names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    book.names.push(name.clone());
                    book.business.push(Windowed::default());
                    book.names.len() - 1
                }
            };
            book.business[i].push(bucket, *v)?;
            p.measured |= 1 << i;
        }
        Ok(p.version)
    }

    /// Live metrics per version.
    pub(crate) fn quality(&self) -> BTreeMap<u64, LiveQuality> {
        self.quality_at(now_bucket())
    }

    /// Live metrics per version, the windows ending in bucket `now`.
    pub(crate) fn quality_at(&self, now: i64) -> BTreeMap<u64, LiveQuality> {
        let Ok(b) = self.inner.lock() else {
            return BTreeMap::new();
        };
        b.versions
            .iter()
            .map(|(v, book)| {
                let mut q = quality_of(self.config.task, &book.recent);
                q.loss = book.loss.total;
                q.business = book
                    .names
                    .iter()
                    .zip(&book.business)
                    .map(|(n, w)| (n.clone(), w.total))
                    .collect();
                for (label, buckets) in WINDOWS {
                    let mut w =
                        BTreeMap::from([("loss".to_owned(), book.loss.window(now, buckets))]);
                    for (n, m) in book.names.iter().zip(&book.business) {
                        w.insert(n.clone(), m.window(now, buckets));
                    }
                    q.windows.insert(label.to_owned(), w);
                }
                (*v, q)
            })
            .collect()
    }
}

/// The error for feedback on a prediction the book does not hold.
fn unknown(deployment: &str, id: &str) -> Error {
    Error::not_found(
        mlops_core::ResourceKind::Object,
        format!("prediction {id:?} of {deployment} (unknown, already labelled, or forgotten)"),
    )
}

/// One labelled prediction's loss: the Brier score for classification, the
/// absolute error for regression.
fn row_loss(task: Task, score: f64, outcome: f64) -> f64 {
    match task {
        Task::Regression => (score - outcome).abs(),
        _ => (score.clamp(0.0, 1.0) - outcome).powi(2),
    }
}

fn quality_of(task: Task, rows: &VecDeque<(f64, f64)>) -> LiveQuality {
    let scores: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut m = BTreeMap::new();
    match task {
        Task::Regression => {
            let y: Vec<f64> = rows.iter().map(|r| r.1).collect();
            if let Ok(r) = metrics::regression_report(&y, &scores) {
                m = r;
            }
        }
        _ => {
            let y: Vec<usize> = rows.iter().map(|r| usize::from(r.1 == 1.0)).collect();
            let clipped: Vec<f64> = scores.iter().map(|s| s.clamp(0.0, 1.0)).collect();
            if let Ok(r) = metrics::classification_report(&y, &clipped, 2) {
                m = r;
            }
        }
    }
    LiveQuality {
        rows: rows.len(),
        metrics: m,
        ..LiveQuality::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn book() -> FeedbackBook {
        FeedbackBook::new(FeedbackConfig::new(Task::BinaryClassification))
    }

    fn predict(b: &FeedbackBook, id: &str, version: u64, score: f32) {
        let t = Tensor::new("p", vec![1, 1], TensorData::Fp32(vec![score])).unwrap();
        b.record_prediction(id, version, &[t]);
    }

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn loss_and_business_metrics_accumulate_per_version_and_over_windows() {
        let b = book();
        // Version 1 at bucket 0 and 10 (100 minutes later); version 2 at 10.
        for (i, (version, bucket, score, outcome)) in
            [(1, 0, 0.9, 1.0), (1, 10, 0.2, 1.0), (2, 10, 0.7, 0.0)]
                .into_iter()
                .enumerate()
        {
            let id = format!("r{i}");
            predict(&b, &id, version, score);
            b.record_metrics_at(
                "d",
                &id,
                &metrics(&[("order_value", 10.0 * i as f64)]),
                bucket,
            )
            .unwrap();
            b.record_outcomes_at("d", &id, &[outcome], bucket).unwrap();
        }
        let q = b.quality_at(10);
        let v1 = &q[&1];
        assert_eq!(v1.loss.count(), 2);
        let brier = ((0.9f64 - 1.0).powi(2) + (0.2f64 - 1.0).powi(2)) / 2.0;
        assert!((v1.loss.mean() - brier).abs() < 1e-6, "{v1:?}");
        assert_eq!(v1.business["order_value"].count(), 2);
        // The last hour holds only the bucket-10 row; the day holds both.
        assert_eq!(v1.windows["1h"]["loss"].count(), 1);
        assert_eq!(v1.windows["24h"]["loss"].count(), 2);
        assert_eq!(v1.windows["1h"]["order_value"].count(), 1);
        assert!((v1.windows["1h"]["order_value"].mean() - 10.0).abs() < 1e-9);
        assert_eq!(q[&2].loss.count(), 1);
        // A week later the windows are empty; the totals stay.
        let later = b.quality_at(10 + 1008);
        assert_eq!(later[&1].windows["7d"]["loss"].count(), 0);
        assert_eq!(later[&1].loss.count(), 2);
    }

    #[test]
    fn business_metrics_are_bounded_and_recorded_once_per_prediction() {
        let b = book();
        predict(&b, "a", 1, 0.5);
        b.record_metrics_at("d", "a", &metrics(&[("conversion", 1.0)]), 0)
            .unwrap();
        let again = b
            .record_metrics_at("d", "a", &metrics(&[("conversion", 1.0)]), 0)
            .unwrap_err();
        assert!(matches!(again, Error::Conflict { .. }), "{again}");
        // Another metric for the same prediction is fine, and outcomes still
        // close it afterwards.
        b.record_metrics_at("d", "a", &metrics(&[("revenue", 3.5)]), 0)
            .unwrap();
        b.record_outcomes_at("d", "a", &[1.0], 0).unwrap();
        assert!(
            b.record_metrics_at("d", "a", &metrics(&[("x", 1.0)]), 0)
                .is_err()
        );
        // Bad names, values and counts name the problem; nothing is recorded.
        predict(&b, "b", 1, 0.5);
        for (m, needle) in [
            (metrics(&[("", 1.0)]), "metric name"),
            (metrics(&[("a b", 1.0)]), "metric name"),
            (metrics(&[("ok", f64::NAN)]), "finite"),
            (BTreeMap::new(), "1 to 16"),
            ((0..17).map(|i| (format!("m{i}"), 1.0)).collect(), "1 to 16"),
        ] {
            let e = b
                .record_metrics_at("d", "b", &m, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert_eq!(b.quality_at(0)[&1].business.len(), 2);
        // At most 32 names per version.
        for i in 0..30 {
            let id = format!("n{i}");
            predict(&b, &id, 1, 0.5);
            b.record_metrics_at("d", &id, &metrics(&[(&format!("k{i}"), 1.0)]), 0)
                .unwrap();
        }
        predict(&b, "over", 1, 0.5);
        let e = b
            .record_metrics_at("d", "over", &metrics(&[("k99", 1.0)]), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 32"), "{e}");
        assert!(
            b.record_metrics_at("d", "nope", &metrics(&[("k0", 1.0)]), 0)
                .is_err()
        );
    }
}
