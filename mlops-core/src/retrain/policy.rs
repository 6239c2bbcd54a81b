//! The loop's configuration: what triggers a retrain ([`Triggers`]), what holds
//! one back ([`Guardrails`]), how a challenger is rolled out ([`CanaryPolicy`]), and
//! the whole [`RetrainConfig`].

use std::time::Duration;

use crate::error::Result;
use crate::experiment::SequentialTest;
use crate::feature::FeatureRef;

/// What starts a retrain.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Triggers {
    /// The champion's last window of served inputs or predictions drifted.
    pub on_drift: bool,
    /// The champion's live value of the loop's metric crossed this (below for
    /// higher-is-better metrics, above otherwise), over at least
    /// `min_live_rows` labelled predictions.
    pub quality_threshold: Option<f64>,
    /// At least this long since the last retrain (or since the loop started).
    pub every: Option<Duration>,
    /// At least this many labelled rows since the last retrain.
    pub min_new_rows: Option<usize>,
}

/// Limits on retraining.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Guardrails {
    /// Fewest labelled rows a training set needs.
    pub min_rows: usize,
    /// Shortest time between two retrains.
    pub cooldown: Duration,
    /// At most this many retrains ...
    pub max_retrains: usize,
    /// ... in this period.
    pub per: Duration,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            min_rows: 1000,
            cooldown: Duration::from_secs(3600),
            max_retrains: 4,
            per: Duration::from_secs(86_400),
        }
    }
}

/// How a challenger that won offline reaches all traffic.
///
/// `#[non_exhaustive]`: start from `default()` and set the fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CanaryPolicy {
    /// Its first share of traffic.
    pub initial_weight: f64,
    /// Added at each tick while it holds up.
    pub step: f64,
    /// Labelled live predictions each arm (the challenger and the champion)
    /// needs before each step.
    pub min_live_rows: usize,
    /// How long the canary may wait at one weight for those labels: past it,
    /// it is rolled back, and the decision says so.
    pub judge_within: Duration,
    /// Rolled back when its live metric is worse than the champion's by more
    /// than this.
    pub tolerance: f64,
    /// When set, the canary is judged by a sequential test on live statistics
    /// instead of `tolerance`: ramped (then promoted) while the evidence says
    /// it is better than the champion by the test's margin, rolled back as soon
    /// as it says worse, and left to wait (until `judge_within`) while
    /// undecided; every verdict is recorded with its statistics.
    pub evidence: Option<CanaryEvidence>,
}

/// The evidence rule of a canary: which live statistic decides, and the test.
///
/// `#[non_exhaustive]`: made by [`on_loss`](Self::on_loss) or
/// [`on_business_metric`](Self::on_business_metric).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CanaryEvidence {
    /// The sequential test (its `higher_is_better` set by the constructor).
    pub test: SequentialTest,
    /// `None`: the per-prediction loss of labelled predictions
    /// ([`LiveQuality::loss`](crate::monitoring::LiveQuality::loss), lower is
    /// better); `Some(name)`: that business metric.
    pub metric: Option<String>,
}

impl CanaryEvidence {
    /// Judged on the per-prediction loss: the challenger must lower it by more
    /// than `margin`, at false-positive rate `alpha`, the test most sensitive
    /// to differences around `effect_scale` (0.01 to 0.05 suits a Brier
    /// score).
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for settings out of
    /// range, naming them.
    pub fn on_loss(alpha: f64, margin: f64, effect_scale: f64) -> Result<Self> {
        Ok(Self {
            test: SequentialTest::new(alpha, margin, effect_scale, false)?,
            metric: None,
        })
    }

    /// Judged on a business metric the application feeds back (a conversion:
    /// `higher_is_better`).
    ///
    /// # Errors
    /// As [`on_loss`](Self::on_loss).
    pub fn on_business_metric(
        name: impl Into<String>,
        alpha: f64,
        margin: f64,
        effect_scale: f64,
        higher_is_better: bool,
    ) -> Result<Self> {
        Ok(Self {
            test: SequentialTest::new(alpha, margin, effect_scale, higher_is_better)?,
            metric: Some(name.into()),
        })
    }

    /// The statistic's name, for messages.
    pub fn metric_name(&self) -> &str {
        self.metric.as_deref().unwrap_or("loss")
    }
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        Self {
            initial_weight: 0.1,
            step: 0.3,
            min_live_rows: 100,
            judge_within: Duration::from_secs(86_400),
            tolerance: 0.02,
            evidence: None,
        }
    }
}

/// The loop's settings: made by [`RetrainConfig::new`], then set field by field
/// (`#[non_exhaustive]`: new settings may be added in minor releases).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetrainConfig {
    /// The model's name in the registry.
    pub model: String,
    /// The deployment serving it.
    pub deployment: String,
    /// The features joined onto labelled rows.
    pub features: Vec<FeatureRef>,
    /// The label column of the labelled rows.
    pub label: String,
    /// The metric that decides (`roc_auc`, `rmse`, ...): offline on the hold-out
    /// and live on feedback.
    pub metric: String,
    /// How much better (offline) a challenger must be.
    pub margin: f64,
    /// What starts a retrain.
    pub triggers: Triggers,
    /// Limits.
    pub guardrails: Guardrails,
    /// Labelled rows of this recent period make the training set.
    pub training_window: Duration,
    /// The most recent share of them is the hold-out both models are judged on.
    pub holdout_fraction: f64,
    /// The rollout.
    pub canary: CanaryPolicy,
    /// Fewest labelled live predictions for a quality trigger.
    pub min_live_rows: usize,
    /// The tracker experiment retrains are recorded in.
    pub experiment: String,
    /// Who the audit log names.
    pub actor: String,
    /// How long an instance's lease on the loop lasts from its last tick:
    /// another instance takes over once it has passed. Longer than the
    /// longest training (a lease that expires while its holder trains hands
    /// the loop over, and the challenger is discarded) and than a few tick
    /// intervals.
    pub lease_ttl: Duration,
}

impl RetrainConfig {
    /// Settings for `model` served as `deployment`, judged by `metric`, with the
    /// default guard rails and canary policy, a drift trigger, 7 days of training
    /// data, a 20% hold-out and a 15-minute lease.
    pub fn new(
        model: impl Into<String>,
        deployment: impl Into<String>,
        features: Vec<FeatureRef>,
        label: impl Into<String>,
        metric: impl Into<String>,
    ) -> Self {
        let model = model.into();
        Self {
            experiment: format!("{model}-retrain"),
            deployment: deployment.into(),
            model,
            features,
            label: label.into(),
            metric: metric.into(),
            margin: 0.0,
            triggers: Triggers {
                on_drift: true,
                ..Triggers::default()
            },
            guardrails: Guardrails::default(),
            training_window: Duration::from_secs(7 * 86_400),
            holdout_fraction: 0.2,
            canary: CanaryPolicy::default(),
            min_live_rows: 100,
            actor: "retrain-loop".into(),
            lease_ttl: Duration::from_secs(15 * 60),
        }
    }
}
