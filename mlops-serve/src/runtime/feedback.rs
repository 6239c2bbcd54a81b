//! Feedback: true outcomes joined to served predictions by request id, and the
//! live quality of each version over its latest labelled predictions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use mlops_core::inference::{Tensor, TensorData};
use mlops_core::monitoring::LiveQuality;
use mlops_core::{Error, Result, Task, metrics};

use crate::config::FeedbackConfig;

struct Pending {
    version: u64,
    scores: Vec<f64>,
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
    labelled: BTreeMap<u64, VecDeque<(f64, f64)>>,
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

    /// Refuses request ids longer than the configured limit: each is kept until
    /// its outcome arrives, so their length is memory a client controls.
    pub(crate) fn check_id(&self, id: &str) -> Result<()> {
        if id.len() > self.config.max_id_bytes {
            return Err(Error::invalid_input(
                "request id",
                format!(
                    "{} bytes long; a deployment with feedback takes ids of at most {} bytes",
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
        match b.pending.insert(id.to_owned(), Pending { version, scores }) {
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
        let pending = b.pending.get(id).ok_or_else(|| {
            Error::not_found(
                mlops_core::ResourceKind::Object,
                format!(
                    "prediction {id:?} of {deployment} (unknown, already labelled, or forgotten)"
                ),
            )
        })?;
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
        let labelled = b.labelled.entry(pending.version).or_default();
        for (s, o) in pending.scores.iter().zip(outcomes) {
            labelled.push_back((*s, *o));
            if labelled.len() > window {
                labelled.pop_front();
            }
        }
        Ok(pending.version)
    }

    /// Live metrics per version.
    pub(crate) fn quality(&self) -> BTreeMap<u64, LiveQuality> {
        let Ok(b) = self.inner.lock() else {
            return BTreeMap::new();
        };
        b.labelled
            .iter()
            .map(|(v, rows)| (*v, quality_of(self.config.task, rows)))
            .collect()
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
    }
}
