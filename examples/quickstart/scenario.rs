//! The story of the quickstart: the closed loop on a fraud-detection case, day by
//! day, shared by `examples/quickstart` and its integration test
//! (`tests/closed_loop.rs`, on a smaller run). The world it plays is in
//! `world.rs`, the stack it wires in `stack.rs`.
//!
//! Simulated days of card transactions with a concept drift half-way: before it,
//! fraud follows large amounts; after it, amounts grow for everyone and fraud
//! follows risky merchants on cards with little recent spend. Card features
//! (7-day spend and count) live in the feature store; transactions carry the
//! amount and the merchant's risk; chargebacks label them a little later.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mlops::core::audit::ChainVerdict;
use mlops::core::inference::{InferenceRequest, ParameterValue, Tensor, TensorData};
use mlops::core::monitoring::{DriftSummary, ModelHealth, TrafficControl};
use mlops::core::retrain::Decision;
use mlops::prelude::*;
use mlops::serve::ROUTING_KEY;

use crate::stack;
use crate::world::{Chargebacks, DAY_US, Rng, World, at, tx_batch};

/// The size of a run.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// Where everything is stored (`memory://`, a directory, `s3://...`).
    pub(crate) root: String,
    /// Cards.
    pub(crate) cards: usize,
    /// Transactions per simulated day.
    pub(crate) tx_per_day: usize,
    /// Days of history before serving starts.
    pub(crate) history_days: i64,
    /// Days served before the drift.
    pub(crate) days_before_drift: i64,
    /// Days served after it.
    pub(crate) days_after_drift: i64,
    /// Transactions per HTTP request.
    pub(crate) rows_per_request: usize,
}

impl Scenario {
    /// The quickstart's size.
    pub(crate) fn full(root: String) -> Self {
        Self {
            root,
            cards: 2000,
            tx_per_day: 2500,
            history_days: 10,
            days_before_drift: 4,
            days_after_drift: 10,
            rows_per_request: 25,
        }
    }
}

/// What happened.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// One line per event, in order.
    pub(crate) timeline: Vec<String>,
    /// Live ROC AUC of the serving champion per simulated day.
    pub(crate) daily_auc: Vec<(i64, f64)>,
    /// Whether served inputs were found to drift.
    pub(crate) drift_detected: bool,
    /// Versions promoted to champion.
    pub(crate) promoted: Vec<u64>,
    /// Mean daily live ROC AUC of the champion over the days before the drift.
    pub(crate) auc_before: f64,
    /// The same over the two days after it.
    pub(crate) auc_after_drift: f64,
    /// The same over the last two days.
    pub(crate) auc_end: f64,
    /// Inference log records written.
    pub(crate) logged: u64,
}

/// How long the drift monitors may take to catch up with a day of traffic.
const MONITOR_LIMIT: Duration = Duration::from_secs(120);

/// The health of `fraud` once its drift monitors have caught up: each version
/// still served has compared every full window (of `window` rows, tumbling) of
/// the rows `served` to it, for its inputs and its predictions. They work behind
/// a queue, so what they report right after the traffic may lag it, more so on a
/// busy machine; waiting on their window counts makes the day's reading the same
/// on any machine. An error names the versions still behind after
/// [`MONITOR_LIMIT`].
async fn monitors_caught_up(
    client: &RemoteServer,
    served: &BTreeMap<u64, usize>,
    window: usize,
) -> Result<ModelHealth> {
    let deadline = tokio::time::Instant::now() + MONITOR_LIMIT;
    loop {
        let health = TrafficControl::health(client, "fraud").await?;
        let windows = |d: &Option<DriftSummary>| d.as_ref().map_or(0, |d| d.windows);
        let behind: Vec<String> = served
            .iter()
            // A version no longer served (rolled back) is not read any more.
            .filter_map(|(v, rows)| Some((v, rows, health.versions.get(v)?)))
            .filter_map(|(v, rows, h)| {
                let owed = (rows / window) as u64;
                let (inputs, predictions) = (windows(&h.input_drift), windows(&h.prediction_drift));
                (inputs < owed || predictions < owed).then(|| {
                    format!("v{v}: {inputs} input and {predictions} prediction windows of {owed}")
                })
            })
            .collect();
        if behind.is_empty() {
            return Ok(health);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unavailable {
                what: "the drift monitors of fraud".into(),
                reason: format!(
                    "not caught up with the traffic after {MONITOR_LIMIT:?}: {}",
                    behind.join("; ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the scenario; `say` receives each timeline line as it happens.
pub(crate) async fn run(s: Scenario, say: impl Fn(&str)) -> Result<Outcome> {
    let mut out = Outcome::default();
    let log = |line: String, out: &mut Outcome| {
        say(&line);
        out.timeline.push(line);
    };
    let root = StoreRoot::open(&s.root)?;
    let mut rng = Rng(2026);
    let start = (Utc::now().timestamp_micros() / DAY_US
        - (s.history_days + s.days_before_drift + s.days_after_drift + 2))
        * DAY_US;
    let world = World::new(&s, start, &mut rng);

    // 1. Features: the card view, its history ingested offline.
    let audit = Arc::new(ObjectAuditLog::new(&root));
    let store = stack::feature_store(&root).await?;
    for day in 0..=s.history_days {
        store.ingest("card", world.card_rows(day)?).await?;
    }
    let chargebacks = Arc::new(Chargebacks::default());
    let mut history = Vec::new();
    for day in 0..s.history_days {
        history.extend(world.day(&s, day, &mut rng));
    }
    chargebacks
        .0
        .lock()
        .map_err(|_| Error::backend("chargebacks", "poisoned"))?
        .extend(history.iter().copied());
    log(
        format!(
            "day {:>2}: {} card feature rows and {} labelled transactions of history",
            0,
            s.cards as i64 * (s.history_days + 1),
            history.len()
        ),
        &mut out,
    );

    // 2. Training set point-in-time; champion trained and registered.
    let features = stack::features()?;
    let training = store
        .get_historical_features(tx_batch(&history)?, &features, HistoricalOptions::default())
        .await?;
    let trainer = Arc::new(stack::trainer());
    let fitted = {
        let t = trainer.clone();
        tokio::task::spawn_blocking(move || t.fit(&training, "is_fraud"))
            .await
            .map_err(|e| Error::backend("training", e.to_string()))??
    };
    let registry = Arc::new(ObjectRegistry::new(&root).with_audit(audit.clone()));
    let mut metadata = fitted.metadata.clone();
    metadata.lineage.feature_refs = features.clone();
    let v1 = registry
        .register("fraud", fitted.artifact.clone(), metadata)
        .await?;
    registry.set_alias("fraud", "champion", v1.version).await?;
    log(
        format!(
            "day {:>2}: champion v{} trained on {} rows (validation ROC AUC {:.3}) and registered",
            s.history_days,
            v1.version,
            history.len(),
            fitted.report.metrics["roc_auc"]
        ),
        &mut out,
    );

    // 3. Served over HTTP on loopback, with monitoring, feedback and an inference log.
    let serving =
        stack::serve_champion(&s, &root, registry.clone(), store.clone(), &features).await?;
    let (client, base) = (&serving.client, &serving.base);
    log(
        format!(
            "day {:>2}: serving at {base}/v2/models/fraud (HTTP, v2 protocol)",
            s.history_days
        ),
        &mut out,
    );

    // 4. The retraining loop, against the traits.
    let mut retrain = stack::retrain_loop(
        &s,
        &root,
        store.clone(),
        chargebacks.clone(),
        registry.clone(),
        client,
        audit.clone(),
        &features,
    )?;

    // 5. Simulated days of traffic and feedback.
    let first = s.history_days;
    let last = first + s.days_before_drift + s.days_after_drift;
    let mut seq = 0u64;
    // Rows served per version so far: how many drift windows its monitors owe.
    let mut served: BTreeMap<u64, usize> = BTreeMap::new();
    for day in first..last {
        if day == world.drift_day {
            log(
                format!(
                    "day {day:>2}: -- concept drift: amounts grow; fraud now follows risky merchants on low-spend cards --"
                ),
                &mut out,
            );
        }
        store.ingest("card", world.card_rows(day)?).await?;
        store
            .materialize(
                "card",
                at(start + (day - 1) * DAY_US),
                at(start + (day + 1) * DAY_US),
            )
            .await?;
        let txs = world.day(&s, day, &mut rng);
        let mut day_scores: BTreeMap<u64, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
        for chunk in txs.chunks(s.rows_per_request) {
            seq += 1;
            let n = chunk.len();
            let mut request = InferenceRequest::new(vec![
                Tensor::new(
                    "card_id",
                    vec![n],
                    TensorData::Int64(chunk.iter().map(|t| t.card).collect()),
                )?,
                Tensor::new(
                    "amount",
                    vec![n],
                    TensorData::Fp64(chunk.iter().map(|t| t.amount).collect()),
                )?,
                Tensor::new(
                    "merchant_risk",
                    vec![n],
                    TensorData::Fp64(chunk.iter().map(|t| t.merchant_risk).collect()),
                )?,
            ]);
            let id = format!("tx-{seq}");
            request.id = Some(id.clone());
            // Sticky routing by transaction id: the A/B and canary splits are the
            // same on every run.
            request
                .parameters
                .insert(ROUTING_KEY.into(), ParameterValue::String(id.clone()));
            let answer = client.infer("fraud", None, request).await?;
            let unreadable =
                |why: &str| Error::backend(format!("the answer to request {id}"), why.to_owned());
            let version: u64 = answer
                .model_version
                .as_deref()
                .ok_or_else(|| unreadable("it names no model version"))?
                .parse()
                .map_err(|_| unreadable("its model version is not a number"))?;
            let p = answer
                .outputs
                .first()
                .ok_or_else(|| unreadable("it has no output"))?
                .data
                .to_f32_vec()?;
            if p.len() != n {
                return Err(unreadable("it does not score every row"));
            }
            *served.entry(version).or_default() += n;
            let e = day_scores.entry(version).or_default();
            e.0.extend(chunk.iter().map(|t| usize::from(t.fraud)));
            e.1.extend(p.iter().map(|&v| f64::from(v)));
            // Chargebacks arrive: feedback through the HTTP API.
            let outcomes: Vec<f64> = chunk.iter().map(|t| f64::from(u8::from(t.fraud))).collect();
            // Feedback names the answer by the id the server issued for it.
            let prediction = answer
                .prediction_id()
                .ok_or_else(|| unreadable("it carries no prediction id"))?;
            client
                .record_feedback("fraud", prediction, &outcomes)
                .await?;
        }
        chargebacks
            .0
            .lock()
            .map_err(|_| Error::backend("chargebacks", "poisoned"))?
            .extend(txs.iter().copied());

        // The drift monitors run in the background: read the day's health once
        // they have compared every window of what was served.
        let health = monitors_caught_up(client, &served, stack::drift_window(&s)).await?;
        let champion = health
            .champion
            .ok_or_else(|| Error::backend("health of fraud", "it names no champion"))?;
        let (y, p) = day_scores.get(&champion).cloned().unwrap_or_default();
        let auc = mlops::core::metrics::roc_auc(&y, &p).unwrap_or(f64::NAN);
        out.daily_auc.push((day, auc));
        let mut drifted_columns = Vec::new();
        if let Some(h) = health.versions.get(&champion) {
            for (kind, d) in [
                ("inputs", &h.input_drift),
                ("predictions", &h.prediction_drift),
            ] {
                if let Some(d) = d
                    .as_ref()
                    .filter(|d| d.drifted || !d.drifted_features.is_empty())
                {
                    drifted_columns.push(format!("{} ({kind})", d.drifted_features.join(", ")));
                }
            }
        }
        out.drift_detected |= !drifted_columns.is_empty();
        log(
            format!(
                "day {day:>2}: {} transactions; champion v{champion} ROC AUC {auc:.3}{}{}",
                txs.len(),
                match health.canary {
                    Some(c) => format!(
                        "; canary v{c} at {:.0}%",
                        health
                            .versions
                            .get(&c)
                            .map_or(0.0, |h| h.traffic_share * 100.0)
                    ),
                    None => String::new(),
                },
                if drifted_columns.is_empty() {
                    String::new()
                } else {
                    format!("; drift in {}", drifted_columns.join(" and "))
                }
            ),
            &mut out,
        );

        let now = at(start + (day + 1) * DAY_US);
        let decisions = retrain.tick(now).await?;
        for d in &decisions {
            if let Decision::Promoted { version, .. } = d {
                out.promoted.push(*version);
            }
            log(format!("day {day:>2}:   {d}"), &mut out);
        }
    }

    // 6. Shut down gracefully: the inference log keeps every request.
    let inference_log = serving.inference_log.clone();
    out.logged = serving.shut_down().await?;
    let verdict = audit.verify().await?;
    let audit_ok = matches!(verdict, ChainVerdict::Intact { .. });
    let entries = audit.entries(0, usize::MAX).await?.len();
    log(
        format!(
            "end: {} requests in the inference log ({} files); audit log of {entries} entries {}",
            out.logged,
            inference_log.files().await?.len(),
            if audit_ok {
                "verified intact"
            } else {
                "FAILED verification"
            }
        ),
        &mut out,
    );

    let mean = |from: i64, to: i64| {
        let v: Vec<f64> = out
            .daily_auc
            .iter()
            .filter(|(d, a)| *d >= from && *d < to && a.is_finite())
            .map(|(_, a)| *a)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    out.auc_before = mean(first, world.drift_day);
    out.auc_after_drift = mean(world.drift_day, world.drift_day + 2);
    out.auc_end = mean(last - 2, last);
    Ok(out)
}
