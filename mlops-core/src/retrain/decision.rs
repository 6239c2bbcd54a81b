//! [`Decision`]: what one tick of the loop decided, and why.

/// One decision of the loop, with its reason.
///
/// New kinds of decision may be added in minor releases (`#[non_exhaustive]`): a
/// `match` on it needs a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Decision {
    /// Triggers fired.
    Triggered {
        /// Why.
        reasons: Vec<String>,
    },
    /// Triggers fired but a guard rail held.
    Skipped {
        /// Which and why.
        reason: String,
    },
    /// A challenger was trained and evaluated next to the champion.
    Evaluated {
        /// The champion's version.
        champion: u64,
        /// The champion's hold-out metric.
        champion_metric: f64,
        /// The challenger's hold-out metric.
        challenger_metric: f64,
        /// Rows trained on and held out.
        rows: (usize, usize),
        /// The tracker run.
        run_id: String,
    },
    /// The challenger did not win by the margin; nothing was registered.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The challenger was registered and sent a share of traffic.
    CanaryStarted {
        /// Its version.
        version: u64,
        /// Its share.
        weight: f64,
    },
    /// The canary held up live and got more traffic.
    CanaryRamped {
        /// Its version.
        version: u64,
        /// Its new share.
        weight: f64,
    },
    /// The canary took all traffic and the `champion` alias.
    Promoted {
        /// The new champion.
        version: u64,
        /// The one it replaced.
        previous: u64,
    },
    /// The canary fell behind live (or could not be judged in time), lost its
    /// traffic and its `challenger` alias, and was archived.
    RolledBack {
        /// Its version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// The canary's evidence reached a verdict (the canary's rule is
    /// [`CanaryEvidence`](super::CanaryEvidence)): the statistics behind the
    /// ramp, promotion or rollback that follows.
    Judged {
        /// The canary's version.
        version: u64,
        /// The verdict with its lift, always-valid interval, p-value, sample
        /// sizes and test settings.
        evidence: String,
    },
    /// An instance picked the loop up where the stored state says it was:
    /// after a restart, a failed tick, or taking over from an instance whose
    /// lease expired.
    Resumed {
        /// The instance now acting.
        instance: String,
        /// The instance it took over from, if another.
        from: Option<String>,
        /// The phase it found.
        phase: String,
    },
    /// A retrain interrupted before its canary started was undone: the
    /// versions it registered were archived and its run ended as failed.
    Abandoned {
        /// The retrain's tracker run.
        run_id: String,
        /// The versions archived (none if it stopped before registering).
        versions: Vec<u64>,
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The audit action this decision is recorded under (`retrain.*`,
    /// `rollout.*`).
    pub(super) fn action(&self) -> &'static str {
        match self {
            Self::Triggered { .. } => "retrain.trigger",
            Self::Skipped { .. } => "retrain.skip",
            Self::Evaluated { .. } => "retrain.evaluate",
            Self::Rejected { .. } => "retrain.reject",
            Self::CanaryStarted { .. } => "rollout.canary_start",
            Self::CanaryRamped { .. } => "rollout.canary_ramp",
            Self::Promoted { .. } => "rollout.promote",
            Self::RolledBack { .. } => "rollout.rollback",
            Self::Judged { .. } => "rollout.judge",
            Self::Resumed { .. } => "retrain.resume",
            Self::Abandoned { .. } => "retrain.abandon",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Triggered { reasons } => write!(f, "retrain triggered: {}", reasons.join("; ")),
            Self::Skipped { reason } => write!(f, "retrain skipped: {reason}"),
            Self::Evaluated {
                champion,
                champion_metric,
                challenger_metric,
                rows,
                ..
            } => write!(
                f,
                "challenger trained on {} rows; on the {} most recent: champion v{champion} {champion_metric:.4}, challenger {challenger_metric:.4}",
                rows.0, rows.1
            ),
            Self::Rejected { reason } => write!(f, "challenger rejected: {reason}"),
            Self::CanaryStarted { version, weight } => {
                write!(
                    f,
                    "v{version} registered; canary at {:.0}% of traffic",
                    weight * 100.0
                )
            }
            Self::CanaryRamped { version, weight } => {
                write!(
                    f,
                    "canary v{version} holds up live; now {:.0}% of traffic",
                    weight * 100.0
                )
            }
            Self::Promoted { version, previous } => {
                write!(f, "v{version} promoted to champion (replacing v{previous})")
            }
            Self::RolledBack { version, reason } => {
                write!(f, "canary v{version} rolled back: {reason}")
            }
            Self::Judged { version, evidence } => {
                write!(f, "canary v{version} judged on live evidence: {evidence}")
            }
            Self::Resumed {
                instance,
                from,
                phase,
            } => {
                write!(f, "instance {instance} resumed the loop")?;
                if let Some(from) = from {
                    write!(f, " from {from}, whose lease expired,")?;
                }
                write!(f, " at: {phase}")
            }
            Self::Abandoned {
                run_id,
                versions,
                reason,
            } => {
                write!(f, "retrain run {run_id} abandoned: {reason}")?;
                if versions.is_empty() {
                    write!(f, "; nothing had been registered")
                } else {
                    let v: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                    write!(f, "; archived {}", v.join(", "))
                }
            }
        }
    }
}
