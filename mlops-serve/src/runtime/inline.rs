//! Where an unbatched call runs when its deployment leaves it to the server
//! (`DeploymentConfig::inline_max_rows` unset): on the async worker that read
//! the request when the model answers requests of that size in less than
//! [`INLINE_BUDGET`], else on the blocking pool.
//!
//! Handing a call to the blocking pool costs 15-30 µs; a small tabular model
//! answers a few rows in 1-20 µs, so running it in place multiplies throughput,
//! while a slow model run in place would stall every request of that worker.
//! The timer learns each version's call time per size class from every call
//! (in place or on the pool), so a model that turns slow moves back to the pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Calls predicted to take less than this run in place.
pub(crate) const INLINE_BUDGET: Duration = Duration::from_micros(20);
/// Calls timed in a size class before its calls may run in place.
pub(crate) const MIN_SAMPLES: u64 = 8;
/// The largest request (in rows) that may run in place; the size classes are
/// `1`, `2..=4`, `5..=16` and `17..=64` rows.
pub(crate) const MAX_INLINE_ROWS: usize = 64;

/// Per size class: the smoothed call time (ns) and how many calls were timed.
#[derive(Debug, Default)]
struct Class {
    nanos: AtomicU64,
    samples: AtomicU64,
}

/// A model version's call times, learned from its calls.
#[derive(Debug, Default)]
pub(crate) struct CallTimer {
    classes: [Class; 4],
}

fn class_of(rows: usize) -> Option<usize> {
    match rows {
        0..=1 => Some(0),
        2..=4 => Some(1),
        5..=16 => Some(2),
        17..=MAX_INLINE_ROWS => Some(3),
        _ => None,
    }
}

impl CallTimer {
    /// Records that a call of `rows` rows took `took`.
    pub(crate) fn record(&self, rows: usize, took: Duration) {
        let Some(c) = class_of(rows) else { return };
        let class = &self.classes[c];
        let x = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let first = class.samples.fetch_add(1, Ordering::Relaxed) == 0;
        // An exponential average (weight 1/8): one slow call (a first call that
        // builds caches, a preemption) moves it, a run of them decides.
        let _ = class
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if first { x } else { old - old / 8 + x / 8 })
            });
    }

    /// Whether a call of `rows` rows should run in place: its size class was
    /// timed at least [`MIN_SAMPLES`] times and averages under [`INLINE_BUDGET`].
    pub(crate) fn runs_inline(&self, rows: usize) -> bool {
        let Some(c) = class_of(rows) else {
            return false;
        };
        let class = &self.classes[c];
        class.samples.load(Ordering::Relaxed) >= MIN_SAMPLES
            && class.nanos.load(Ordering::Relaxed) < INLINE_BUDGET.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_classes_run_inline_once_timed_and_slow_ones_move_back() {
        let t = CallTimer::default();
        let fast = Duration::from_micros(3);
        for i in 0..MIN_SAMPLES {
            assert!(!t.runs_inline(1), "not before {MIN_SAMPLES} samples ({i})");
            t.record(1, fast);
        }
        assert!(t.runs_inline(1));
        // Other size classes are judged on their own samples.
        assert!(!t.runs_inline(3) && !t.runs_inline(64));
        // Requests beyond the largest class never run in place.
        for _ in 0..20 {
            t.record(MAX_INLINE_ROWS + 1, fast);
        }
        assert!(!t.runs_inline(MAX_INLINE_ROWS + 1));
        // One slow call does not flip it; a run of them does.
        t.record(1, Duration::from_micros(100));
        assert!(t.runs_inline(1));
        let mut calls = 0;
        while t.runs_inline(1) {
            t.record(1, Duration::from_micros(200));
            calls += 1;
            assert!(calls < 50, "still in place after {calls} slow calls");
        }
        // And fast calls bring it back.
        let mut calls = 0;
        while !t.runs_inline(1) {
            t.record(1, fast);
            calls += 1;
            assert!(calls < 100, "still on the pool after {calls} fast calls");
        }
    }
}
