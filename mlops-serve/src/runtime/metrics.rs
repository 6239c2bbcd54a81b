//! The server's Prometheus metrics, in one registry per server (no global state,
//! so several servers in one process keep their own counts).
//!
//! Label values come only from names and versions the server has (callers pass
//! [`UNKNOWN`] for anything else), every value is escaped as the text format
//! requires, and each family holds at most [`MAX_SERIES`] series: beyond it,
//! new label sets are counted under `model="overflow"`, so no client can grow
//! `/metrics` without bound or write lines into it.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label value of a model or version the server does not have.
pub(crate) const UNKNOWN: &str = "unknown";
/// Series per metric family, at most.
pub(crate) const MAX_SERIES: usize = 2048;
/// The model label of the series that new label sets beyond [`MAX_SERIES`] share.
const OVERFLOW: &str = "overflow";

/// A label value, escaped as the Prometheus and OpenMetrics text formats require
/// (prometheus-client writes values verbatim): a backslash, a double quote or a
/// line break cannot end the value or start a forged line.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct Label(String);

impl From<&str> for Label {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for Label {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) model: Label,
    pub(crate) version: Label,
    pub(crate) status: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub(crate) model: Label,
    pub(crate) version: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DriftLabels {
    pub(crate) model: Label,
    pub(crate) version: Label,
    pub(crate) kind: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QualityLabels {
    pub(crate) model: Label,
    pub(crate) version: Label,
    pub(crate) metric: Label,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A refused request: the route group (`infer`, `admin`, `metrics`) and the
/// status (401 or 403); never the key, so the label set is fixed and small.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthLabels {
    pub(crate) group: String,
    pub(crate) status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) model: Label,
    pub(crate) outcome: Label,
}

/// A label set that can stand in for all the label sets beyond [`MAX_SERIES`].
pub(crate) trait Overflow: Clone + std::hash::Hash + Eq {
    /// The shared series: the model label says `overflow`, the rest is cleared.
    fn overflow() -> Self;
}

impl Overflow for RequestLabels {
    fn overflow() -> Self {
        Self {
            model: OVERFLOW.into(),
            version: "".into(),
            status: "".into(),
        }
    }
}

impl Overflow for ModelLabels {
    fn overflow() -> Self {
        Self {
            model: OVERFLOW.into(),
            version: "".into(),
        }
    }
}

impl Overflow for DriftLabels {
    fn overflow() -> Self {
        Self {
            model: OVERFLOW.into(),
            version: "".into(),
            kind: "".into(),
        }
    }
}

impl Overflow for QualityLabels {
    fn overflow() -> Self {
        Self {
            model: OVERFLOW.into(),
            version: "".into(),
            metric: "".into(),
        }
    }
}

impl Overflow for OutcomeLabels {
    fn overflow() -> Self {
        Self {
            model: OVERFLOW.into(),
            outcome: "".into(),
        }
    }
}

/// A metric family that holds at most [`MAX_SERIES`] series: label sets beyond
/// them share the overflow series.
#[derive(Debug)]
pub(crate) struct Bounded<S, M, C = fn() -> M> {
    family: Family<S, M, C>,
    /// Series created, counted here (prometheus-client has no public count); a
    /// race can only count one twice, which keeps the bound.
    created: AtomicUsize,
}

impl<S, M, C> Bounded<S, M, C>
where
    S: Overflow,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    fn new(family: Family<S, M, C>) -> Self {
        Self {
            family,
            created: AtomicUsize::new(0),
        }
    }

    /// `f` on the series of `labels`, or on the overflow series when the family
    /// is full and `labels` is new.
    pub(crate) fn with<R>(&self, labels: &S, f: impl FnOnce(&M) -> R) -> R {
        if let Some(m) = self.family.get(labels) {
            return f(&m);
        }
        if self.created.fetch_add(1, Ordering::Relaxed) >= MAX_SERIES {
            self.created.fetch_sub(1, Ordering::Relaxed);
            return f(&self.family.get_or_create(&S::overflow()));
        }
        f(&self.family.get_or_create(labels))
    }

    /// Whether `labels` has a series.
    #[cfg(test)]
    fn has(&self, labels: &S) -> bool {
        self.family.get(labels).is_some()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

/// Counters, gauges and histograms of one server.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    registry: Mutex<Registry>,
    pub(crate) requests: Bounded<RequestLabels, Counter>,
    pub(crate) latency: Bounded<ModelLabels, Histogram, fn() -> Histogram>,
    pub(crate) batch_rows: Bounded<ModelLabels, Histogram, fn() -> Histogram>,
    pub(crate) queue_depth: Bounded<ModelLabels, Gauge>,
    pub(crate) abandoned: Bounded<ModelLabels, Counter>,
    pub(crate) cache: Bounded<OutcomeLabels, Counter>,
    pub(crate) loads: Bounded<RequestLabels, Counter>,
    pub(crate) shadow: Bounded<OutcomeLabels, Counter>,
    pub(crate) dropped: Bounded<OutcomeLabels, Counter>,
    pub(crate) drift_detected: Bounded<DriftLabels, Gauge>,
    pub(crate) drift_share: Bounded<DriftLabels, FloatGauge>,
    pub(crate) drift_windows: Bounded<DriftLabels, Counter>,
    pub(crate) live_quality: Bounded<QualityLabels, FloatGauge>,
    pub(crate) auth_failures: Family<AuthLabels, Counter>,
}

impl ServerMetrics {
    pub(crate) fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let batch_rows = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            batch_histogram,
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let abandoned = Family::<ModelLabels, Counter>::default();
        let cache = Family::<OutcomeLabels, Counter>::default();
        let loads = Family::<RequestLabels, Counter>::default();
        let shadow = Family::<OutcomeLabels, Counter>::default();
        let dropped = Family::<OutcomeLabels, Counter>::default();
        let drift_detected = Family::<DriftLabels, Gauge>::default();
        let drift_share = Family::<DriftLabels, FloatGauge>::default();
        let drift_windows = Family::<DriftLabels, Counter>::default();
        let live_quality = Family::<QualityLabels, FloatGauge>::default();
        let auth_failures = Family::<AuthLabels, Counter>::default();
        let mut registry = Registry::with_prefix("mlops");
        registry.register(
            "http_auth_failures",
            "Requests refused for a missing or unknown key (401) or a missing scope (403), by route group",
            auth_failures.clone(),
        );
        registry.register(
            "inference_requests",
            "Inference requests by model, version and HTTP status",
            requests.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time to answer an inference request, queueing included",
            latency.clone(),
        );
        registry.register(
            "batch_rows",
            "Rows per model call (dynamic batching)",
            batch_rows.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting in a model version's queue (batched, or for a running slot)",
            queue_depth.clone(),
        );
        registry.register(
            "abandoned_calls",
            "Requests whose model call was skipped because they timed out or their client left before it started",
            abandoned.clone(),
        );
        registry.register(
            "prediction_cache",
            "Prediction cache lookups by outcome (hit or miss)",
            cache.clone(),
        );
        registry.register(
            "model_loads",
            "Model version loads by outcome (status ok or error)",
            loads.clone(),
        );
        registry.register(
            "shadow_requests",
            "Requests mirrored to a shadow version, by outcome",
            shadow.clone(),
        );
        registry.register(
            "dropped_records",
            "Monitoring and log records dropped because a queue was full, by outcome",
            dropped.clone(),
        );
        registry.register(
            "drift_detected",
            "1 when the last compared window of served inputs or predictions drifted",
            drift_detected.clone(),
        );
        registry.register(
            "drift_share",
            "Share of features that drifted in the last compared window",
            drift_share.clone(),
        );
        registry.register(
            "drift_windows",
            "Windows of served data compared with the reference",
            drift_windows.clone(),
        );
        registry.register(
            "live_quality",
            "Quality over recent feedback, by version and metric",
            live_quality.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            dropped: Bounded::new(dropped),
            drift_detected: Bounded::new(drift_detected),
            drift_share: Bounded::new(drift_share),
            drift_windows: Bounded::new(drift_windows),
            live_quality: Bounded::new(live_quality),
            requests: Bounded::new(requests),
            latency: Bounded::new(latency),
            batch_rows: Bounded::new(batch_rows),
            queue_depth: Bounded::new(queue_depth),
            abandoned: Bounded::new(abandoned),
            cache: Bounded::new(cache),
            loads: Bounded::new(loads),
            shadow: Bounded::new(shadow),
            auth_failures,
        }
    }

    /// Counts a request: `model` and `version` must be ones the server has, or
    /// [`UNKNOWN`].
    pub(crate) fn observe_request(&self, model: &str, version: &str, status: u16, took: Duration) {
        self.requests.with(
            &RequestLabels {
                model: model.into(),
                version: version.into(),
                status: status.to_string().into(),
            },
            |m| m.inc(),
        );
        self.latency.with(
            &ModelLabels {
                model: model.into(),
                version: version.into(),
            },
            |m| m.observe(took.as_secs_f64()),
        );
    }

    pub(crate) fn count(family: &Bounded<OutcomeLabels, Counter>, model: &str, outcome: &str) {
        family.with(
            &OutcomeLabels {
                model: model.into(),
                outcome: outcome.into(),
            },
            |m| m.inc(),
        );
    }

    pub(crate) fn record_drift(
        &self,
        model: &str,
        version: u64,
        kind: &str,
        summary: &mlops_core::monitoring::DriftSummary,
    ) {
        let labels = DriftLabels {
            model: model.into(),
            version: version.to_string().into(),
            kind: kind.into(),
        };
        self.drift_detected
            .with(&labels, |m| m.set(i64::from(summary.drifted)));
        self.drift_share
            .with(&labels, |m| m.set(summary.share_drifted));
        self.drift_windows.with(&labels, |m| m.inc());
    }

    pub(crate) fn record_quality(
        &self,
        model: &str,
        version: u64,
        quality: &mlops_core::monitoring::LiveQuality,
    ) {
        for (metric, value) in &quality.metrics {
            self.live_quality.with(
                &QualityLabels {
                    model: model.into(),
                    version: version.to_string().into(),
                    metric: metric.as_str().into(),
                },
                |m| m.set(*value),
            );
        }
    }

    /// The Prometheus text exposition format (version 0.0.4), which every
    /// Prometheus and `promtool check metrics` read. prometheus-client writes
    /// OpenMetrics, where a counter family is named without its `_total` suffix
    /// and the text ends with `# EOF`; both are adjusted here.
    pub(crate) fn render(&self) -> String {
        let mut open_metrics = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &registry);
        }
        to_prometheus_text(&open_metrics)
    }
}

/// OpenMetrics text to the Prometheus 0.0.4 text format.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_help_and_type() {
        let m = ServerMetrics::new();
        m.observe_request("fraud", "1", 200, Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains("# HELP mlops_inference_requests_total "),
            "{text}"
        );
        assert!(text.contains("# TYPE mlops_inference_requests_total counter"));
        assert!(text.contains(
            "mlops_inference_requests_total{model=\"fraud\",version=\"1\",status=\"200\"} 1"
        ));
        assert!(text.contains("# TYPE mlops_inference_duration_seconds histogram"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = ServerMetrics::new();
        m.observe_request(
            "a\"} 1\nmlops_drift_detected{model=\"x",
            "back\\slash",
            200,
            Duration::ZERO,
        );
        let text = m.render();
        assert!(
            text.contains(
                r#"model="a\"} 1\nmlops_drift_detected{model=\"x",version="back\\slash""#
            ),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("mlops_drift_detected")));
    }

    #[test]
    fn each_family_is_bounded() {
        let m = ServerMetrics::new();
        for i in 0..MAX_SERIES + 500 {
            m.observe_request("m", &i.to_string(), 200, Duration::ZERO);
        }
        assert_eq!(m.requests.created.load(Ordering::Relaxed), MAX_SERIES);
        assert!(m.requests.has(&RequestLabels::overflow()));
        // Known series still count after the family filled up.
        m.observe_request("m", "0", 200, Duration::ZERO);
        let text = m.render();
        assert!(
            text.contains(r#"{model="m",version="0",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{model="overflow",version="",status=""} 500"#),
            "{text}"
        );
    }
}
