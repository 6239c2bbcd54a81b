//! Experiments that decide with statistics: running statistics per arm
//! ([`ArmStats`]), a sequential test valid however often it is looked at
//! ([`SequentialTest`]: the mixture sequential probability ratio test, mSPRT),
//! and Thompson-sampling traffic allocation ([`thompson_weights`]).
//!
//! A live experiment is looked at again and again (every tick of the loop,
//! every dashboard refresh). A fixed-horizon test read at each look promotes a
//! variant that is no better far more often than its nominal rate (the
//! simulation in this module's tests: about 5x at 40 looks). The mSPRT's
//! confidence sequence holds at every look at once: with the normal mixture
//! of scale `tau` over the lift `theta` (Johari, Pekelis and Walsh, "Always
//! valid inference", 2017), the lift `d` measured with variance `V` excludes
//! `theta0` at level `alpha` when
//!
//! ```text
//! Lambda(theta0) = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2))) >= 1 / alpha
//! ```
//!
//! so the `1 - alpha` confidence sequence is `d +- r` with
//! `r^2 = 2 V (V + tau^2) / tau^2 * (ln(1 / alpha) + ln((V + tau^2) / V) / 2)`.
//! A variant is declared better when the whole interval lies above the margin,
//! worse when it lies below zero. `V` uses each arm's sample variance (the
//! normal approximation: valid as samples grow, which `min_samples` guards).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Count, mean and spread of one arm's observations (per-prediction loss, a
/// conversion, an order value), updated one value at a time (Welford) and
/// mergeable across windows or replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    n: u64,
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
}

impl ArmStats {
    /// No observations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Statistics of `values`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first value that is not finite.
    pub fn of(values: &[f64]) -> Result<Self> {
        let mut s = Self::new();
        for &v in values {
            s.push(v)?;
        }
        Ok(s)
    }

    /// Adds one observation.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for NaN or an infinity (nothing is added).
    pub fn push(&mut self, value: f64) -> Result<()> {
        if !value.is_finite() {
            return Err(Error::invalid_input(
                "experiment observation",
                format!("{value} is not a finite number"),
            ));
        }
        self.n += 1;
        let delta = value - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (value - self.mean);
        Ok(())
    }

    /// Adds every observation of `other` (Chan's parallel update).
    pub fn merge(&mut self, other: &ArmStats) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        let mean = self.mean + delta * other.n as f64 / n as f64;
        self.m2 += other.m2 + delta * delta * self.n as f64 * other.n as f64 / n as f64;
        self.mean = mean;
        self.n = n;
    }

    /// The observations added since `earlier` was taken of the same stream
    /// (the reverse of [`merge`](Self::merge)): a canary's period, from the
    /// totals at its start and now. A stream that was reset in between (fewer
    /// observations now than then: a restarted server) gives its current
    /// statistics.
    pub fn since(&self, earlier: &ArmStats) -> ArmStats {
        if earlier.n == 0 || earlier.n > self.n {
            return *self;
        }
        let n = self.n - earlier.n;
        if n == 0 {
            return ArmStats::new();
        }
        let mean = (self.n as f64 * self.mean - earlier.n as f64 * earlier.mean) / n as f64;
        let delta = mean - earlier.mean;
        let m2 = self.m2 - earlier.m2 - delta * delta * earlier.n as f64 * n as f64 / self.n as f64;
        ArmStats {
            n,
            mean,
            m2: m2.max(0.0),
        }
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Their mean (0 with none).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Their sample variance (0 with fewer than two).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }
}

/// What the evidence says about a variant against the champion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Better than the champion by more than the margin.
    Better,
    /// Worse than the champion.
    Worse,
    /// Not enough evidence either way yet.
    Undecided,
}

/// One look at an experiment: the measured lift, its always-valid interval and
/// the verdict, with what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The variant's mean minus the champion's, signed so that positive is
    /// better (for a lower-is-better metric, the champion's minus the
    /// variant's).
    pub lift: f64,
    /// The always-valid `1 - alpha` confidence sequence for the lift, at this
    /// look (infinite before `min_samples`).
    pub interval: (f64, f64),
    /// `1 / Lambda(margin)`: the mSPRT p-value against "the lift is the
    /// margin", at this look (1 when the lift is not above the margin).
    pub p_value: f64,
    /// Observations of the champion and the variant.
    pub samples: (u64, u64),
    /// The verdict.
    pub verdict: Verdict,
    /// The test's settings, for the record.
    pub test: SequentialTest,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.test;
        write!(
            f,
            "lift {:+.4} (always-valid {:.0}% interval {:+.4}..{:+.4}, mSPRT p {:.4}, tau {}) over \
             {} champion and {} variant observations: ",
            self.lift,
            (1.0 - t.alpha) * 100.0,
            self.interval.0,
            self.interval.1,
            self.p_value,
            t.effect_scale,
            self.samples.0,
            self.samples.1
        )?;
        match self.verdict {
            Verdict::Better => write!(f, "better than the champion by more than {}", t.margin),
            Verdict::Worse => write!(f, "worse than the champion"),
            Verdict::Undecided => write!(f, "undecided"),
        }
    }
}

/// The mSPRT for "the variant beats the champion by more than `margin`", at
/// false-positive rate `alpha` however often it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// The false-positive rate (0 < alpha < 1).
    pub alpha: f64,
    /// How much better the variant must be, in the metric's units (>= 0).
    pub margin: f64,
    /// The mixture's scale `tau`: the size of lift the test is most sensitive
    /// to, in the metric's units (e.g. 0.02 for a conversion rate).
    pub effect_scale: f64,
    /// Whether a larger metric is better (a conversion) or a smaller one (a
    /// loss).
    pub higher_is_better: bool,
    /// Observations each arm needs before any verdict (the normal
    /// approximation's guard).
    pub min_samples: u64,
}

impl SequentialTest {
    /// A test at `alpha` for a lift above `margin`, most sensitive around
    /// `effect_scale`, with 30 observations per arm before any verdict.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the setting out of range.
    pub fn new(alpha: f64, margin: f64, effect_scale: f64, higher_is_better: bool) -> Result<Self> {
        let t = Self {
            alpha,
            margin,
            effect_scale,
            higher_is_better,
            min_samples: 30,
        };
        t.check()?;
        Ok(t)
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the setting out of range.
    pub fn check(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::invalid_input(
                "experiment alpha",
                format!("{} is not in (0, 1)", self.alpha),
            ));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(Error::invalid_input(
                "experiment margin",
                format!("{} is not a finite number >= 0", self.margin),
            ));
        }
        if !(self.effect_scale.is_finite() && self.effect_scale > 0.0) {
            return Err(Error::invalid_input(
                "experiment effect_scale",
                format!("{} is not a finite number > 0", self.effect_scale),
            ));
        }
        if self.min_samples < 2 {
            return Err(Error::invalid_input(
                "experiment min_samples",
                "at least 2 observations per arm are needed for a variance",
            ));
        }
        Ok(())
    }

    /// The evidence on `variant` against `champion` at this look.
    pub fn compare(&self, champion: &ArmStats, variant: &ArmStats) -> Evidence {
        let lift = if self.higher_is_better {
            variant.mean() - champion.mean()
        } else {
            champion.mean() - variant.mean()
        };
        let samples = (champion.count(), variant.count());
        let undecided = |lift| Evidence {
            lift,
            interval: (f64::NEG_INFINITY, f64::INFINITY),
            p_value: 1.0,
            samples,
            verdict: Verdict::Undecided,
            test: *self,
        };
        if champion.count() < self.min_samples || variant.count() < self.min_samples {
            return undecided(lift);
        }
        // A floor on the variance: two arms that never varied (yet) must not
        // make an interval of zero width.
        let floor = 1e-12 + (self.effect_scale * 1e-3).powi(2);
        let v = (champion.variance() / champion.count() as f64
            + variant.variance() / variant.count() as f64)
            .max(floor);
        let tau2 = self.effect_scale * self.effect_scale;
        let radius = (2.0 * v * (v + tau2) / tau2
            * ((1.0 / self.alpha).ln() + 0.5 * ((v + tau2) / v).ln()))
        .sqrt();
        let interval = (lift - radius, lift + radius);
        let p_value = if lift > self.margin {
            let d = lift - self.margin;
            let log_lambda = 0.5 * (v / (v + tau2)).ln() + tau2 * d * d / (2.0 * v * (v + tau2));
            (-log_lambda).exp().min(1.0)
        } else {
            1.0
        };
        let verdict = if interval.0 > self.margin {
            Verdict::Better
        } else if interval.1 < 0.0 {
            Verdict::Worse
        } else {
            Verdict::Undecided
        };
        Evidence {
            lift,
            interval,
            p_value,
            samples,
            verdict,
            test: *self,
        }
    }
}

/// A draw of the standard normal (Box-Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Traffic weights by Thompson sampling: each arm's share is the probability,
/// under a normal posterior of its mean (its mean, with variance
/// `variance / n`), that it is the best arm, estimated from `draws` joint
/// draws seeded by `seed`; then every arm gets at least `floor` (so none stops
/// being measured). Arms with fewer than two observations count as best in
/// every draw they tie (they share the exploration equally). The weights sum
/// to 1.
///
/// # Errors
/// [`Error::InvalidInput`] for no arms, no draws, or a floor that the arms
/// cannot all have (`floor * arms > 1`).
pub fn thompson_weights(
    arms: &[ArmStats],
    higher_is_better: bool,
    floor: f64,
    draws: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    if arms.is_empty() || draws == 0 {
        return Err(Error::invalid_input(
            "thompson weights",
            "needs at least one arm and one draw",
        ));
    }
    if !(floor >= 0.0 && floor * arms.len() as f64 <= 1.0) {
        return Err(Error::invalid_input(
            "thompson floor",
            format!(
                "{floor} x {} arms is not in [0, 1]: every arm could not have it",
                arms.len()
            ),
        ));
    }
    let sign = if higher_is_better { 1.0 } else { -1.0 };
    let mut rng = SplitMix64::new(seed);
    let mut wins = vec![0.0; arms.len()];
    let unmeasured: Vec<usize> = (0..arms.len()).filter(|&i| arms[i].count() < 2).collect();
    for _ in 0..draws {
        if !unmeasured.is_empty() {
            // An arm without data could be the best: it explores.
            let share = 1.0 / unmeasured.len() as f64;
            for &i in &unmeasured {
                wins[i] += share;
            }
            continue;
        }
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, a) in arms.iter().enumerate() {
            let sd = (a.variance() / a.count() as f64).sqrt();
            let x = sign * (a.mean() + sd * normal(&mut rng));
            if x > best.0 {
                best = (x, i);
            }
        }
        wins[best.1] += 1.0;
    }
    let rest = 1.0 - floor * arms.len() as f64;
    Ok(wins
        .into_iter()
        .map(|w| floor + rest * w / draws as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bernoulli(rng: &mut SplitMix64, p: f64) -> f64 {
        f64::from(u8::from(rng.next_f64() < p))
    }

    #[test]
    fn running_statistics_match_the_batch_and_merge() {
        let xs: Vec<f64> = (0..1000).map(|i| ((i * 37) % 101) as f64 / 7.0).collect();
        let all = ArmStats::of(&xs).unwrap();
        let mean = xs.iter().sum::<f64>() / 1000.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 999.0;
        assert!((all.mean() - mean).abs() < 1e-12);
        assert!((all.variance() - var).abs() < 1e-9);
        let mut a = ArmStats::of(&xs[..300]).unwrap();
        a.merge(&ArmStats::of(&xs[300..]).unwrap());
        assert_eq!(a.count(), 1000);
        assert!((a.mean() - mean).abs() < 1e-12 && (a.variance() - var).abs() < 1e-9);
        let mut empty = ArmStats::new();
        empty.merge(&all);
        assert_eq!(empty, all);
        // `since` takes the first part back off.
        let first = ArmStats::of(&xs[..300]).unwrap();
        let rest = all.since(&first);
        let direct = ArmStats::of(&xs[300..]).unwrap();
        assert_eq!(rest.count(), 700);
        assert!((rest.mean() - direct.mean()).abs() < 1e-9);
        assert!((rest.variance() - direct.variance()).abs() < 1e-6);
        assert_eq!(all.since(&all).count(), 0);
        assert_eq!(first.since(&all), first, "a reset stream is taken as it is");
        let mut s = ArmStats::of(&[1.0]).unwrap();
        assert!(s.push(f64::NAN).is_err() && s.push(f64::INFINITY).is_err());
        assert_eq!((s.count(), s.variance()), (1, 0.0), "nothing was added");
    }

    #[test]
    fn bad_settings_are_refused_naming_them() {
        for (t, needle) in [
            (SequentialTest::new(0.0, 0.0, 0.1, true), "alpha"),
            (SequentialTest::new(1.0, 0.0, 0.1, true), "alpha"),
            (SequentialTest::new(0.05, -0.1, 0.1, true), "margin"),
            (SequentialTest::new(0.05, f64::NAN, 0.1, true), "margin"),
            (SequentialTest::new(0.05, 0.0, 0.0, true), "effect_scale"),
        ] {
            let e = t.unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut t = SequentialTest::new(0.05, 0.0, 0.1, true).unwrap();
        t.min_samples = 1;
        assert!(t.check().unwrap_err().to_string().contains("min_samples"));
    }

    #[test]
    fn a_clear_winner_and_a_clear_loser_are_called_and_small_samples_are_not() {
        let t = SequentialTest::new(0.05, 0.01, 0.05, true).unwrap();
        let mut rng = SplitMix64::new(7);
        let champion = ArmStats::of(
            &(0..4000)
                .map(|_| bernoulli(&mut rng, 0.2))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let better = ArmStats::of(
            &(0..4000)
                .map(|_| bernoulli(&mut rng, 0.3))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let worse = ArmStats::of(
            &(0..4000)
                .map(|_| bernoulli(&mut rng, 0.1))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let e = t.compare(&champion, &better);
        assert_eq!(e.verdict, Verdict::Better, "{e}");
        assert!(e.p_value < 0.05 && e.interval.0 > 0.01, "{e}");
        assert!(e.to_string().contains("better than the champion"), "{e}");
        assert_eq!(t.compare(&champion, &worse).verdict, Verdict::Worse);
        // For a loss, lower is better: the same numbers read the other way.
        let loss = SequentialTest::new(0.05, 0.01, 0.05, false).unwrap();
        assert_eq!(loss.compare(&champion, &worse).verdict, Verdict::Better);
        let few = ArmStats::of(&[1.0; 29]).unwrap();
        let e = t.compare(&ArmStats::of(&[0.0; 29]).unwrap(), &few);
        assert_eq!(e.verdict, Verdict::Undecided, "under min_samples: {e}");
        // Arms that never varied do not make a zero-width interval.
        let e = t.compare(
            &ArmStats::of(&[0.0; 30]).unwrap(),
            &ArmStats::of(&[0.0; 30]).unwrap(),
        );
        assert_eq!(e.verdict, Verdict::Undecided, "{e}");
        assert!(e.interval.1 > e.interval.0, "{e}");
    }

    /// One experiment looked at every `step` observations per arm up to `max`:
    /// whether the rule `promote` fired at any look.
    fn peeking(
        rng: &mut SplitMix64,
        p: (f64, f64),
        step: usize,
        max: usize,
        promote: &dyn Fn(&ArmStats, &ArmStats) -> bool,
    ) -> bool {
        let (mut a, mut b) = (ArmStats::new(), ArmStats::new());
        for n in 1..=max {
            a.push(bernoulli(rng, p.0)).unwrap();
            b.push(bernoulli(rng, p.1)).unwrap();
            if n % step == 0 && promote(&a, &b) {
                return true;
            }
        }
        false
    }

    #[test]
    fn a_a_experiments_looked_at_40_times_promote_at_most_alpha() {
        let alpha = 0.05;
        let t = SequentialTest::new(alpha, 0.0, 0.05, true).unwrap();
        let mut rng = SplitMix64::new(2026);
        let runs = 1000;
        let msprt = |a: &ArmStats, b: &ArmStats| t.compare(a, b).verdict == Verdict::Better;
        let promoted = (0..runs)
            .filter(|_| peeking(&mut rng, (0.2, 0.2), 50, 2000, &msprt))
            .count();
        let rate = promoted as f64 / runs as f64;
        // Three standard errors of a rate alpha over 1,000 runs.
        let noise = 3.0 * (alpha * (1.0 - alpha) / runs as f64).sqrt();
        println!("A/A promotion rate over {runs} runs, 40 looks each: {rate}");
        assert!(rate <= alpha + noise, "A/A promotion rate {rate}");
        // The same looks with a fixed-horizon one-sided z-test at the same
        // alpha promote far more often: the simulation can tell the two apart.
        let z = |a: &ArmStats, b: &ArmStats| {
            let se = (a.variance() / a.count() as f64 + b.variance() / b.count() as f64).sqrt();
            se > 0.0 && (b.mean() - a.mean()) / se > 1.645
        };
        let naive = (0..runs)
            .filter(|_| peeking(&mut rng, (0.2, 0.2), 50, 2000, &z))
            .count() as f64
            / runs as f64;
        println!("the same looks with a fixed-horizon z-test: {naive}");
        assert!(naive > 2.0 * alpha, "the peeked z-test's rate {naive}");
    }

    #[test]
    fn a_known_effect_is_found_with_power() {
        let t = SequentialTest::new(0.05, 0.0, 0.05, true).unwrap();
        let mut rng = SplitMix64::new(11);
        let runs = 300;
        let msprt = |a: &ArmStats, b: &ArmStats| t.compare(a, b).verdict == Verdict::Better;
        let found = (0..runs)
            .filter(|_| peeking(&mut rng, (0.2, 0.25), 50, 3000, &msprt))
            .count() as f64
            / runs as f64;
        println!("power for 0.20 -> 0.25 within 3,000 per arm: {found}");
        assert!(
            found >= 0.8,
            "power {found} for 0.20 -> 0.25 within 3,000 per arm"
        );
    }

    #[test]
    fn thompson_weights_favour_the_best_arm_and_keep_the_floor() {
        let mut rng = SplitMix64::new(3);
        let arm = |p: f64, rng: &mut SplitMix64| {
            ArmStats::of(&(0..2000).map(|_| bernoulli(rng, p)).collect::<Vec<_>>()).unwrap()
        };
        let arms = [arm(0.2, &mut rng), arm(0.3, &mut rng), arm(0.2, &mut rng)];
        let w = thompson_weights(&arms, true, 0.05, 4000, 1).unwrap();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
        assert!(w[1] > 0.85 && w[0] >= 0.05 && w[2] >= 0.05, "{w:?}");
        let w = thompson_weights(&arms, false, 0.0, 4000, 1).unwrap();
        assert!(w[1] < 0.01, "lower is better now: {w:?}");
        let twins = [arm(0.2, &mut rng), arm(0.2, &mut rng)];
        let w = thompson_weights(&twins, true, 0.0, 4000, 1).unwrap();
        assert!((w[0] - 0.5).abs() < 0.2, "{w:?}");
        // An arm without data explores; bad settings are refused.
        let w = thompson_weights(&[arms[1], ArmStats::new()], true, 0.1, 100, 1).unwrap();
        assert!(w[1] > 0.5, "{w:?}");
        assert!(thompson_weights(&[], true, 0.0, 10, 1).is_err());
        assert!(thompson_weights(&arms, true, 0.5, 10, 1).is_err());
        assert!(thompson_weights(&arms, true, 0.0, 0, 1).is_err());
    }
}
