//! The server's Prometheus metrics, in one registry per server (no global state,
//! so several servers in one process keep their own counts).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub(crate) model: String,
    pub(crate) version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DriftLabels {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QualityLabels {
    pub(crate) model: String,
    pub(crate) version: String,
    pub(crate) metric: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) model: String,
    pub(crate) outcome: String,
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
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) latency: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub(crate) batch_rows: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub(crate) queue_depth: Family<ModelLabels, Gauge>,
    pub(crate) cache: Family<OutcomeLabels, Counter>,
    pub(crate) loads: Family<RequestLabels, Counter>,
    pub(crate) shadow: Family<OutcomeLabels, Counter>,
    pub(crate) dropped: Family<OutcomeLabels, Counter>,
    pub(crate) drift_detected: Family<DriftLabels, Gauge>,
    pub(crate) drift_share: Family<DriftLabels, FloatGauge>,
    pub(crate) drift_windows: Family<DriftLabels, Counter>,
    pub(crate) live_quality: Family<QualityLabels, FloatGauge>,
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
        let cache = Family::<OutcomeLabels, Counter>::default();
        let loads = Family::<RequestLabels, Counter>::default();
        let shadow = Family::<OutcomeLabels, Counter>::default();
        let dropped = Family::<OutcomeLabels, Counter>::default();
        let drift_detected = Family::<DriftLabels, Gauge>::default();
        let drift_share = Family::<DriftLabels, FloatGauge>::default();
        let drift_windows = Family::<DriftLabels, Counter>::default();
        let live_quality = Family::<QualityLabels, FloatGauge>::default();
        let mut registry = Registry::with_prefix("mlops");
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
            "Requests waiting in a model's batch queue",
            queue_depth.clone(),
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
            dropped,
            drift_detected,
            drift_share,
            drift_windows,
            live_quality,
            requests,
            latency,
            batch_rows,
            queue_depth,
            cache,
            loads,
            shadow,
        }
    }

    pub(crate) fn observe_request(&self, model: &str, version: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                version: version.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
                version: version.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn count(family: &Family<OutcomeLabels, Counter>, model: &str, outcome: &str) {
        family
            .get_or_create(&OutcomeLabels {
                model: model.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub(crate) fn record_drift(
        &self,
        model: &str,
        version: u64,
        kind: &str,
        summary: &mlops_core::monitoring::DriftSummary,
    ) {
        let labels = DriftLabels {
            model: model.to_owned(),
            version: version.to_string(),
            kind: kind.to_owned(),
        };
        self.drift_detected
            .get_or_create(&labels)
            .set(i64::from(summary.drifted));
        self.drift_share
            .get_or_create(&labels)
            .set(summary.share_drifted);
        self.drift_windows.get_or_create(&labels).inc();
    }

    pub(crate) fn record_quality(
        &self,
        model: &str,
        version: u64,
        quality: &mlops_core::monitoring::LiveQuality,
    ) {
        for (metric, value) in &quality.metrics {
            self.live_quality
                .get_or_create(&QualityLabels {
                    model: model.to_owned(),
                    version: version.to_string(),
                    metric: metric.clone(),
                })
                .set(*value);
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
}
