//! A streaming drift monitor for serving: fed batches of live rows, it keeps a
//! bounded window and reports drift per window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use chrono::{DateTime, TimeDelta, Utc};

use super::{DriftDetector, DriftReport};
use crate::error::{Error, Result};

/// Which rows a window holds and when it is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Consecutive, non-overlapping windows of exactly `rows` rows; each is compared
    /// once, when full.
    TumblingRows(usize),
    /// The latest `rows` rows, compared every `every` new rows once full.
    SlidingRows {
        /// Window size in rows.
        rows: usize,
        /// Compare after this many new rows.
        every: usize,
    },
    /// Consecutive windows of `duration`, aligned on the first observation; each is
    /// compared when the first row of a later window arrives (or on
    /// [`DriftMonitor::poll_at`]).
    TumblingTime(Duration),
    /// The rows observed in the last `duration`, compared at most every `every`.
    SlidingTime {
        /// Window length.
        duration: Duration,
        /// Minimum time between comparisons.
        every: Duration,
    },
}

/// One compared window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowReport {
    /// When the window's first batch was observed (for time windows: its start).
    pub start: DateTime<Utc>,
    /// When it was compared (for tumbling time windows: its end).
    pub end: DateTime<Utc>,
    /// Rows compared.
    pub rows: usize,
    /// The drift report.
    pub report: DriftReport,
}

/// Keeps a bounded window of live rows and compares it with a fitted
/// [`DriftDetector`]'s reference (any detector: [`TableDriftDetector`](super::TableDriftDetector),
/// [`MmdDriftDetector`](super::MmdDriftDetector), your own).
///
/// Memory is O(window): the window's rows as zero-copy slices of the observed
/// batches, plus at most one batch beyond it. Observing costs a schema check;
/// the comparison runs only when a window is due. Batches whose columns do not fit
/// the reference are refused when observed, so a bad batch never poisons a window.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Float64Array, RecordBatch};
/// use mlops_core::drift::{DriftMonitor, TableDriftConfig, TableDriftDetector, Window};
///
/// let batch = |from: usize, shift: f64| RecordBatch::try_from_iter([(
///     "x", Arc::new(Float64Array::from_iter_values((from..from + 100).map(|i| (i % 100) as f64 + shift))) as _,
/// )]).unwrap();
/// let detector = Arc::new(TableDriftDetector::fit(&batch(0, 0.0), &TableDriftConfig::default())?);
/// let mut monitor = DriftMonitor::new(detector, Window::TumblingRows(200), 1)?;
/// assert!(monitor.observe(&batch(0, 0.0))?.is_empty());       // 100 rows buffered
/// let reports = monitor.observe(&batch(0, 0.0))?;              // window of 200 full
/// assert_eq!(reports.len(), 1);
/// assert!(!reports[0].report.overall.drifted);
/// # Ok::<(), mlops_core::Error>(())
/// ```
#[derive(Debug)]
pub struct DriftMonitor {
    detector: Arc<dyn DriftDetector>,
    window: Window,
    min_rows: usize,
    batches: VecDeque<(DateTime<Utc>, RecordBatch)>,
    rows: usize,
    rows_since_compare: usize,
    window_start: Option<DateTime<Utc>>,
    last_compare: Option<DateTime<Utc>>,
}

impl DriftMonitor {
    /// A monitor comparing `window`s with `detector`'s reference; time windows with
    /// fewer than `min_rows` rows are skipped, not compared.
    pub fn new(detector: Arc<dyn DriftDetector>, window: Window, min_rows: usize) -> Result<Self> {
        let bad = |reason: &str| Error::invalid_input("drift monitor window", reason.to_owned());
        match window {
            Window::TumblingRows(0) => return Err(bad("a window of 0 rows")),
            Window::SlidingRows { rows, every } if rows == 0 || every == 0 => {
                return Err(bad("rows and every must be at least 1"));
            }
            Window::TumblingTime(d) if d.is_zero() => return Err(bad("a window of 0 seconds")),
            Window::SlidingTime { duration, .. } if duration.is_zero() => {
                return Err(bad("a window of 0 seconds"));
            }
            Window::TumblingTime(d) | Window::SlidingTime { duration: d, .. }
                if TimeDelta::from_std(d).is_err() =>
            {
                return Err(bad("the duration is too long"));
            }
            _ => {}
        }
        Ok(Self {
            detector,
            window,
            min_rows: min_rows.max(1),
            batches: VecDeque::new(),
            rows: 0,
            rows_since_compare: 0,
            window_start: None,
            last_compare: None,
        })
    }

    /// Rows currently held.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    /// Observes `batch` now; returns the windows that became due.
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<Vec<WindowReport>> {
        self.observe_at(batch, Utc::now())
    }

    /// Observes `batch` at time `at` (for replay and tests); returns the windows
    /// that became due. Times should not go backwards; a batch older than the
    /// current time window is counted in it.
    pub fn observe_at(
        &mut self,
        batch: &RecordBatch,
        at: DateTime<Utc>,
    ) -> Result<Vec<WindowReport>> {
        self.detector.check_schema(&batch.schema())?;
        let mut out = Vec::new();
        if let Window::TumblingTime(_) = self.window {
            out.extend(self.poll_at(at)?);
        }
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        self.window_start.get_or_insert(at);
        self.batches.push_back((at, batch.clone()));
        self.rows += batch.num_rows();
        self.rows_since_compare += batch.num_rows();
        match self.window {
            Window::TumblingRows(size) => {
                while self.rows >= size {
                    let taken = self.take_front(size);
                    let start = taken.first().map_or(at, |b| b.0);
                    let batches: Vec<RecordBatch> = taken.into_iter().map(|b| b.1).collect();
                    out.push(self.compare(&batches, start, at)?);
                }
                self.window_start = self.batches.front().map(|b| b.0);
            }
            Window::SlidingRows { rows, every } => {
                if self.rows > rows {
                    self.take_front(self.rows - rows);
                }
                if self.rows == rows && self.rows_since_compare >= every {
                    self.rows_since_compare = 0;
                    let batches = self.window_batches();
                    let start = self.batches.front().map_or(at, |b| b.0);
                    out.push(self.compare(&batches, start, at)?);
                }
            }
            Window::SlidingTime { duration, every } => {
                let length = TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX);
                while self.batches.front().is_some_and(|b| b.0 < at - length) {
                    if let Some((_, old)) = self.batches.pop_front() {
                        self.rows -= old.num_rows();
                    }
                }
                let every = TimeDelta::from_std(every).unwrap_or(TimeDelta::MAX);
                let due = self.last_compare.is_none_or(|t| at - t >= every);
                if due && self.rows >= self.min_rows {
                    self.last_compare = Some(at);
                    let batches = self.window_batches();
                    out.push(self.compare(&batches, at - length, at)?);
                }
            }
            Window::TumblingTime(_) => {}
        }
        Ok(out)
    }

    /// Closes the tumbling time windows that ended by `at`, comparing each that has
    /// at least `min_rows` rows. Does nothing for other windows.
    pub fn poll_at(&mut self, at: DateTime<Utc>) -> Result<Vec<WindowReport>> {
        let Window::TumblingTime(d) = self.window else {
            return Ok(Vec::new());
        };
        let length = TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
        let Some(start) = self.window_start else {
            return Ok(Vec::new());
        };
        if at < start + length {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let batches: Vec<RecordBatch> = self.batches.drain(..).map(|b| b.1).collect();
        let rows = self.rows;
        self.rows = 0;
        if rows >= self.min_rows {
            out.push(self.compare(&batches, start, start + length)?);
        }
        // The window that contains `at`.
        let elapsed = (at - start).num_nanoseconds().unwrap_or(i64::MAX);
        let step = length.num_nanoseconds().unwrap_or(i64::MAX).max(1);
        self.window_start = Some(start + TimeDelta::nanoseconds((elapsed / step) * step));
        Ok(out)
    }

    /// Compares whatever is buffered now (if at least `min_rows` rows) and empties
    /// the buffer: call it on shutdown so the last partial window is not lost.
    pub fn flush(&mut self) -> Result<Option<WindowReport>> {
        let now = Utc::now();
        let start = self
            .window_start
            .or(self.batches.front().map(|b| b.0))
            .unwrap_or(now);
        let batches: Vec<RecordBatch> = self.batches.drain(..).map(|b| b.1).collect();
        let rows = self.rows;
        self.rows = 0;
        self.rows_since_compare = 0;
        self.window_start = None;
        if rows < self.min_rows {
            return Ok(None);
        }
        self.compare(&batches, start, now).map(Some)
    }

    fn window_batches(&self) -> Vec<RecordBatch> {
        self.batches.iter().map(|b| b.1.clone()).collect()
    }

    /// Removes and returns the first `n` rows, slicing the batch that straddles.
    fn take_front(&mut self, n: usize) -> Vec<(DateTime<Utc>, RecordBatch)> {
        let mut taken = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some((at, batch)) = self.batches.pop_front() else {
                break;
            };
            if batch.num_rows() <= left {
                left -= batch.num_rows();
                self.rows -= batch.num_rows();
                taken.push((at, batch));
            } else {
                taken.push((at, batch.slice(0, left)));
                self.batches
                    .push_front((at, batch.slice(left, batch.num_rows() - left)));
                self.rows -= left;
                left = 0;
            }
        }
        taken
    }

    fn compare(
        &self,
        batches: &[RecordBatch],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<WindowReport> {
        let report = self.detector.detect_batches(batches)?;
        Ok(WindowReport {
            start,
            end,
            rows: report.current_rows,
            report,
        })
    }
}
