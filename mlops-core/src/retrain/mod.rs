//! [`RetrainLoop`]: drift- and quality-triggered retraining with a safe rollout,
//! written against the SDK's traits only.
//!
//! Each [`RetrainLoop::tick`]:
//! - while a canary runs: compares the challenger's live quality with the
//!   champion's; ramps the canary up a step when it holds, promotes it (moves the
//!   `champion` alias, routes all traffic to it) at full weight, or rolls it back
//!   when it falls behind by more than the tolerance;
//! - otherwise: checks the triggers (drift of served inputs or predictions, live
//!   quality below a threshold, a schedule, enough new labelled rows) and the
//!   guard rails (cool-down, at most N retrains per period, minimum data); builds
//!   the training set with the feature store's point-in-time join over labelled
//!   rows; holds out the most recent rows; trains a challenger; evaluates champion
//!   and challenger on the same hold-out; registers the challenger with its
//!   lineage; and starts a canary only if it wins by the configured margin.
//!
//! Every decision is returned, appended to the audit log, and recorded in the
//! experiment tracker (one run per retrain).
//!
//! The loop's place ([`LoopState`]) is kept in a [`LoopStateStore`] and changed
//! only by compare-and-swap, under a lease: any number of instances may tick the
//! same loop (replicas, restarts); one acts at a time, and whichever acts next
//! finishes or undoes what a crashed one left half-done, so a rollout always
//! ends with the old champion fully restored or the challenger fully promoted.
//!
//! Training and evaluation are CPU-bound: `tick` hands them to the services'
//! [`BlockingExecutor`](crate::exec::BlockingExecutor) and awaits them, so the loop can be driven from any task of
//! an async runtime without stalling it.

mod decision;
mod holdout;
mod machine;
mod policy;
mod state;

pub use decision::Decision;
pub use machine::{RetrainLoop, RetrainServices};
pub use policy::{CanaryEvidence, CanaryPolicy, Guardrails, RetrainConfig, Triggers};
pub use state::{
    InMemoryLoopStates, Lease, LoopPhase, LoopState, LoopStateStore, expected_revision,
};
