//! `mlops retrain --config mlops.toml [--once]`: the retraining loops of the
//! config's `[[retrain]]` sections, as a long-running service (a tick every
//! `interval` until SIGTERM) or one tick each per invocation (`--once`, for a
//! Kubernetes CronJob).
//!
//! ```toml
//! [[retrain]]
//! model = "fraud"                        # the registry name
//! deployment = "fraud"                   # the served deployment (default: model)
//! # Steered through the storage root (the default): every `mlops serve` replica
//! # applies the loop's routing and reports its live statistics there.
//! report_max_age = "60s"                 # replicas silent longer are left out
//! # Or one server's admin API (one replica only):
//! # server = "http://mlops:8000"
//! # admin_key_file = "/run/secrets/mlops/admin-key"   # or admin_key = "${MLOPS_ADMIN_KEY}"
//! task = "binary_classification"
//! labels = { view = "chargebacks", column = "is_fraud" }   # labelled rows: a feature view
//! features = ["card:spend_7d", "card:txn_count_7d"]
//! metric = "roc_auc"                     # default: roc_auc, accuracy or rmse by task
//! margin = 0.01                          # how much better a challenger must be offline
//! training_window = "7d"
//! holdout_fraction = 0.2
//! interval = "5m"                        # between ticks without --once
//! lease_ttl = "30m"                      # longer than the longest training
//! triggers = { on_drift = true, quality_threshold = 0.75, every = "7d", min_new_rows = 10000 }
//! guardrails = { min_rows = 1000, cooldown = "1h", max_retrains = 4, per = "1d" }
//! canary = { initial_weight = 0.1, step = 0.3, min_live_rows = 100, judge_within = "1d", tolerance = 0.02 }
//! network = { hidden = [64, 64] }        # optional, as in `mlops train` jobs
//! training = { epochs = 20 }
//! ```
//!
//! The loop's state and lease are kept on the storage root, so any number of
//! these processes (a CronJob's runs, replicas, a restart mid-rollout) act as
//! one loop per model: the lease holder acts, the others stand by. A process
//! gives its leases up when it exits (after `--once`'s tick, or on SIGTERM), so
//! the next run acts at once; one that dies holding a lease blocks the others
//! until `lease_ttl` has passed, and the next to act finishes or undoes what it
//! left half-done. Labelled
//! rows are the rows of the `labels` view whose label is not null, by event
//! time; the view's join keys and `event_timestamp` join the features and are
//! not features themselves.
//!
//! Without `server`, the loop steers the fleet on the storage root
//! ([`FleetTraffic`](mlops::core::fleet::FleetTraffic)): its routing intents
//! reach every replica of `mlops serve` (each applies them within its `[fleet]
//! interval`) and its judgement reads the replicas' merged reports. With
//! `server`, routing and live quality go through that one server's admin API:
//! one process, fit for a single replica.

use std::sync::Arc;
use std::time::Duration;

use mlops::chrono::Utc;
use mlops::core::feature::FeatureRef;
use mlops::core::fleet::FleetTraffic;
use mlops::core::monitoring::TrafficControl;
use mlops::core::retrain::{
    CanaryPolicy, Decision, Guardrails, LoopPhase, RetrainConfig, RetrainLoop, RetrainServices,
    Triggers,
};
use mlops::core::{Error, Result, Task};
use mlops::serve::RemoteServer;
use mlops::store::{
    InMemoryOnlineStore, ObjectAuditLog, ObjectFeatureStore, ObjectFleet, ObjectLoopStates,
    ObjectSnapshotStore, ObjectTracker, StoreRoot, ViewLabels,
};
use mlops::train::{Progress, TabularLoader, TabularTrainer};
use serde::Deserialize;

use crate::config::{Config, duration, expand};
use crate::train::{Network, Training, trainer_config};

/// How long between ticks when `interval` is not set.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// How old a replica's report may be and still count, when
/// `report_max_age` is not set.
const DEFAULT_REPORT_MAX_AGE: Duration = Duration::from_secs(60);

/// A `[[retrain]]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrainToml {
    model: String,
    deployment: Option<String>,
    server: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    report_max_age: Option<Duration>,
    admin_key_file: Option<String>,
    admin_key: Option<String>,
    task: Task,
    labels: LabelsToml,
    features: Vec<String>,
    metric: Option<String>,
    margin: Option<f64>,
    experiment: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    training_window: Option<Duration>,
    holdout_fraction: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    lease_ttl: Option<Duration>,
    min_live_rows: Option<usize>,
    #[serde(default)]
    triggers: TriggersToml,
    #[serde(default)]
    guardrails: GuardrailsToml,
    #[serde(default)]
    canary: CanaryToml,
    #[serde(default)]
    network: Network,
    #[serde(default)]
    training: Training,
}

/// `labels = { view, column }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsToml {
    view: String,
    column: String,
}

/// `triggers = { ... }`: unset keys keep the SDK's defaults (drift on).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggersToml {
    on_drift: Option<bool>,
    quality_threshold: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    every: Option<Duration>,
    min_new_rows: Option<usize>,
}

/// `guardrails = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailsToml {
    min_rows: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    cooldown: Option<Duration>,
    max_retrains: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    per: Option<Duration>,
}

/// `canary = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryToml {
    initial_weight: Option<f64>,
    step: Option<f64>,
    min_live_rows: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    judge_within: Option<Duration>,
    tolerance: Option<f64>,
}

/// Sets `target` to `value` when the file gives one.
fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *target = v;
    }
}

impl RetrainToml {
    /// Where errors point: `retrain[i] (model)`.
    fn at(&self, i: usize) -> String {
        format!("config retrain[{i}] ({})", self.model)
    }

    /// The loop's settings, checked as far as the file alone allows.
    fn loop_config(&self, i: usize) -> Result<RetrainConfig> {
        let at = self.at(i);
        let features: Vec<FeatureRef> = self
            .features
            .iter()
            .enumerate()
            .map(|(j, f)| {
                f.parse().map_err(|e| {
                    Error::invalid_input(format!("{at}.features[{j}]"), format!("{f:?}: {e}"))
                })
            })
            .collect::<Result<_>>()?;
        if features.is_empty() {
            return Err(Error::invalid_input(
                format!("{at}.features"),
                "lists no feature (view:feature)",
            ));
        }
        let metric = self.metric.clone().unwrap_or_else(|| {
            match self.task {
                Task::BinaryClassification => "roc_auc",
                Task::MulticlassClassification => "accuracy",
                Task::Regression => "rmse",
            }
            .to_owned()
        });
        if mlops::core::metrics::higher_is_better(&metric).is_none() {
            return Err(Error::invalid_input(
                format!("{at}.metric"),
                format!(
                    "{metric:?} is not a known metric (roc_auc, accuracy, log_loss, rmse, mae, ...)"
                ),
            ));
        }
        let deployment = self
            .deployment
            .clone()
            .unwrap_or_else(|| self.model.clone());
        let mut c = RetrainConfig::new(
            &self.model,
            deployment,
            features,
            &self.labels.column,
            metric,
        );
        set(&mut c.margin, self.margin);
        set(&mut c.experiment, self.experiment.clone());
        set(&mut c.training_window, self.training_window);
        set(&mut c.holdout_fraction, self.holdout_fraction);
        set(&mut c.lease_ttl, self.lease_ttl);
        set(&mut c.min_live_rows, self.min_live_rows);
        let t = &self.triggers;
        let mut triggers = Triggers::default();
        triggers.on_drift = t.on_drift.unwrap_or(true);
        triggers.quality_threshold = t.quality_threshold;
        triggers.every = t.every;
        triggers.min_new_rows = t.min_new_rows;
        c.triggers = triggers;
        let g = &self.guardrails;
        let mut guardrails = Guardrails::default();
        set(&mut guardrails.min_rows, g.min_rows);
        set(&mut guardrails.cooldown, g.cooldown);
        set(&mut guardrails.max_retrains, g.max_retrains);
        set(&mut guardrails.per, g.per);
        c.guardrails = guardrails;
        let k = &self.canary;
        let mut canary = CanaryPolicy::default();
        set(&mut canary.initial_weight, k.initial_weight);
        set(&mut canary.step, k.step);
        set(&mut canary.min_live_rows, k.min_live_rows);
        set(&mut canary.judge_within, k.judge_within);
        set(&mut canary.tolerance, k.tolerance);
        c.canary = canary;
        if self.interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid_input(
                format!("{at}.interval"),
                "must be positive",
            ));
        }
        Ok(c)
    }

    /// The admin key the server's routing and health need (`None` when the
    /// loop steers the fleet on the storage root).
    fn admin_key(&self, i: usize) -> Result<Option<String>> {
        let at = self.at(i);
        if self.server.is_none() {
            if self.admin_key_file.is_some() || self.admin_key.is_some() {
                return Err(Error::invalid_input(
                    at,
                    "an admin key without `server` is unused: the loop steers the fleet on \
                     the storage root; set `server` to steer one server instead",
                ));
            }
            return Ok(None);
        }
        self.server_key(&at).map(Some)
    }

    fn server_key(&self, at: &str) -> Result<String> {
        let at = at.to_owned();
        match (&self.admin_key_file, &self.admin_key) {
            (Some(file), None) => {
                let file = expand(&format!("{at}.admin_key_file"), file)?;
                let key = std::fs::read_to_string(&file).map_err(|e| {
                    Error::invalid_input(format!("{at}.admin_key_file"), format!("{file}: {e}"))
                })?;
                Ok(key.trim().to_owned())
            }
            (None, Some(key)) if key.starts_with("${") => expand(&format!("{at}.admin_key"), key),
            (None, Some(_)) => Err(Error::invalid_input(
                format!("{at}.admin_key"),
                "a key is never written in the file: use \"${ENV_VAR}\" or admin_key_file",
            )),
            (Some(_), Some(_)) => Err(Error::invalid_input(
                at,
                "give one of admin_key_file and admin_key",
            )),
            (None, None) => Err(Error::invalid_input(
                at,
                "needs admin_key_file or admin_key: the server's routing and health need the \
                 admin scope",
            )),
        }
    }
}

/// Checks every `[[retrain]]` section of `config` (for `mlops check`): the
/// number of loops.
pub(crate) fn check(config: &Config) -> Result<usize> {
    for (i, r) in config.retrain.iter().enumerate() {
        r.loop_config(i)?;
    }
    Ok(config.retrain.len())
}

/// One configured loop, ready to tick.
struct Loop {
    model: String,
    interval: Duration,
    retrain: RetrainLoop,
}

/// Opens the loops of `config` (only `model` when given).
async fn open(
    config_path: &std::path::Path,
    model: Option<&str>,
    instance: Option<&str>,
) -> Result<Vec<Loop>> {
    let config = Config::load(config_path)?;
    let chosen: Vec<(usize, &RetrainToml)> = config
        .retrain
        .iter()
        .enumerate()
        .filter(|(_, r)| model.is_none_or(|m| m == r.model))
        .collect();
    if chosen.is_empty() {
        return Err(match model {
            Some(m) => Error::invalid_input(
                "--model",
                format!(
                    "no [[retrain]] section of {} is for model {m:?}",
                    config_path.display()
                ),
            ),
            None => Error::invalid_input(
                format!("config {}", config_path.display()),
                "has no [[retrain]] section: nothing to run",
            ),
        });
    }
    // Everything the file says is checked before anything is opened.
    let mut settings = Vec::new();
    for &(i, r) in &chosen {
        settings.push((r.loop_config(i)?, r.admin_key(i)?));
    }
    let root = StoreRoot::open_with_options(&config.storage_root()?, config.storage_options()?)?;
    let sign = config.registry.signing_key.is_some();
    let registry = Arc::new(
        crate::models::registry(config_path, sign)?
            .0
            .with_actor("retrain-loop"),
    );
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let store = Arc::new(ObjectFeatureStore::new(
        &root,
        Arc::new(InMemoryOnlineStore::new()),
    ));
    let tracker = Arc::new(
        ObjectTracker::new(&root)
            .with_audit(audit.clone())
            .with_actor("retrain-loop"),
    );
    let snapshots = Arc::new(
        ObjectSnapshotStore::new(&root)
            .with_audit(audit.clone())
            .with_actor("retrain-loop"),
    );
    let states = Arc::new(ObjectLoopStates::new(&root));
    let mut loops = Vec::new();
    for ((i, r), (loop_config, admin_key)) in chosen.into_iter().zip(settings) {
        let at = r.at(i);
        let view = store
            .offline()
            .get_view(&r.labels.view)
            .await
            .map_err(|e| Error::invalid_input(format!("{at}.labels.view"), e.to_string()))?;
        if !view.features.iter().any(|f| f.name == r.labels.column) {
            return Err(Error::invalid_input(
                format!("{at}.labels.column"),
                format!("view {} has no feature {:?}", view.name, r.labels.column),
            ));
        }
        // The labelled rows' keys and time join the features; they are not
        // features.
        let mut exclude: Vec<String> = view.join_keys.iter().map(|k| k.name.clone()).collect();
        exclude.push("event_timestamp".into());
        let trainer = TabularTrainer::new(trainer_config(
            r.task,
            &r.network,
            &r.training,
            Progress::Hidden,
            exclude,
        ));
        let traffic: Arc<dyn TrafficControl> = match (&r.server, admin_key) {
            (Some(url), Some(key)) => Arc::new(
                RemoteServer::new(url)
                    .map_err(|e| Error::invalid_input(format!("{at}.server"), e.to_string()))?
                    .with_api_key(key),
            ),
            _ => Arc::new(FleetTraffic::new(
                Arc::new(ObjectFleet::new(&root)),
                r.report_max_age.unwrap_or(DEFAULT_REPORT_MAX_AGE),
            )),
        };
        let services = RetrainServices::new(
            store.clone(),
            Arc::new(ViewLabels::new(
                store.offline(),
                &r.labels.view,
                &r.labels.column,
            )),
            Arc::new(trainer),
            Arc::new(TabularLoader::default()),
            registry.clone(),
            traffic,
            tracker.clone(),
            audit.clone(),
        )
        .with_snapshots(snapshots.clone())
        .with_state(states.clone());
        let mut retrain = RetrainLoop::new(loop_config, services)?;
        if let Some(name) = instance {
            retrain = retrain.with_instance(name);
        }
        loops.push(Loop {
            model: r.model.clone(),
            interval: r.interval.unwrap_or(DEFAULT_INTERVAL),
            retrain,
        });
    }
    Ok(loops)
}

/// A phase in a word, for output.
fn phase_name(phase: &LoopPhase) -> &'static str {
    match phase {
        LoopPhase::Watching => "watching",
        LoopPhase::Training { .. } => "training",
        LoopPhase::Canary { .. } => "canary",
        LoopPhase::Promoting { .. } => "promoting",
        LoopPhase::RollingBack { .. } => "rolling_back",
        _ => "other",
    }
}

/// Prints what one tick of `l` did.
fn report(l: &Loop, decisions: &[Decision], json: bool) {
    let state = l.retrain.state();
    let leader = l.retrain.is_leader();
    if json {
        let line = serde_json::json!({
            "model": l.model,
            "instance": l.retrain.instance(),
            "leader": leader,
            "lease_holder": state.lease.as_ref().map(|l| l.holder.clone()),
            "phase": phase_name(&state.phase),
            "revision": state.revision,
            "decisions": decisions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        println!("{line}");
        return;
    }
    if !leader {
        let holder = state.lease.as_ref();
        println!(
            "{}: standing by: instance {} holds the loop until {}",
            l.model,
            holder.map_or("?", |h| h.holder.as_str()),
            holder.map_or_else(|| "?".into(), |h| h.expires.to_rfc3339()),
        );
    } else if decisions.is_empty() {
        println!(
            "{}: {} (nothing to decide)",
            l.model,
            phase_name(&state.phase)
        );
    }
    for d in decisions {
        println!("{}: {d}", l.model);
    }
}

/// Gives up the leases this process holds, so the next run (a CronJob's, a
/// replacement pod) acts at once rather than after they expire. A failure
/// only delays that: the lease expires anyway.
async fn release(loops: &mut [Loop]) {
    for l in loops {
        if let Err(e) = l.retrain.release().await {
            tracing::warn!(model = %l.model, error = %e, "could not release the loop's lease; it expires at its ttl");
        }
    }
}

/// `mlops retrain`: one tick of each loop with `once`, else ticks until
/// SIGTERM or SIGINT. A failed tick is reported; with `once` it makes the
/// exit non-zero, otherwise the loop tries again at its next interval.
pub(crate) async fn run(
    config_path: &std::path::Path,
    model: Option<&str>,
    instance: Option<&str>,
    once: bool,
    json: bool,
) -> Result<()> {
    let mut loops = open(config_path, model, instance).await?;
    if once {
        let mut failed = None;
        for l in &mut loops {
            match l.retrain.tick(Utc::now()).await {
                Ok(d) => report(l, &d, json),
                Err(e) => {
                    tracing::error!(model = %l.model, error = %e, "retrain tick failed");
                    failed = Some(e);
                }
            }
        }
        release(&mut loops).await;
        return failed.map_or(Ok(()), Err);
    }
    let stop = crate::serve::stop_signal();
    tokio::pin!(stop);
    let mut next: Vec<tokio::time::Instant> =
        loops.iter().map(|_| tokio::time::Instant::now()).collect();
    loop {
        let (i, at) = next
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, t)| t)
            .ok_or_else(|| Error::invalid_input("retrain", "no loop to run"))?;
        tokio::select! {
            () = &mut stop => {
                tracing::info!("stopping: no tick is running");
                release(&mut loops).await;
                return Ok(());
            }
            () = tokio::time::sleep_until(at) => {}
        }
        let l = &mut loops[i];
        // A tick in progress finishes before a stop is honoured: its state
        // is written step by step, and the next instance resumes it anyway.
        match l.retrain.tick(Utc::now()).await {
            Ok(d) => {
                for d in &d {
                    tracing::info!(model = %l.model, decision = %d, "retrain decision");
                }
                report(l, &d, json);
            }
            Err(e) => {
                tracing::error!(model = %l.model, error = %e, "retrain tick failed; retrying at the next interval")
            }
        }
        next[i] = tokio::time::Instant::now() + l.interval;
    }
}
