//! The simulated world of the quickstart: cards with daily 7-day features, the
//! day's transactions (with a concept drift half-way: fraud first follows large
//! amounts, then risky merchants on cards with little recent spend), and the
//! application's record of chargebacks, which labels transactions a little later.

use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use mlops::core::monitoring::LabelSource;
use mlops::prelude::*;

use crate::scenario::Scenario;

/// Microseconds in a day.
pub(crate) const DAY_US: i64 = 86_400_000_000;

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 * 2f64.powi(-53)
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Tx {
    pub(crate) card: i64,
    pub(crate) ts: i64,
    pub(crate) amount: f64,
    pub(crate) merchant_risk: f64,
    pub(crate) fraud: bool,
}

/// The world: cards' daily features and the transactions of each day.
pub(crate) struct World {
    pub(crate) start: i64,
    pub(crate) card_spend: Vec<Vec<f64>>,
    pub(crate) card_count: Vec<Vec<f64>>,
    pub(crate) drift_day: i64,
}

impl World {
    pub(crate) fn new(s: &Scenario, start: i64, rng: &mut Rng) -> Self {
        let days = (s.history_days + s.days_before_drift + s.days_after_drift + 1) as usize;
        let mut card_spend = Vec::new();
        let mut card_count = Vec::new();
        for _ in 0..s.cards {
            let level = (rng.normal() * 0.6 + 5.0).exp();
            card_spend.push(
                (0..days)
                    .map(|_| level * (0.7 + 0.6 * rng.uniform()))
                    .collect(),
            );
            card_count.push(
                (0..days)
                    .map(|_| (3.0 + 10.0 * rng.uniform()).round())
                    .collect(),
            );
        }
        Self {
            start,
            card_spend,
            card_count,
            drift_day: s.history_days + s.days_before_drift,
        }
    }

    pub(crate) fn day(&self, s: &Scenario, day: i64, rng: &mut Rng) -> Vec<Tx> {
        let drifted = day >= self.drift_day;
        (0..s.tx_per_day)
            .map(|_| {
                let card = (rng.uniform() * s.cards as f64) as usize % s.cards;
                let spend = self.card_spend[card][day as usize];
                let amount = (rng.normal() * 0.8 + if drifted { 4.6 } else { 3.8 }).exp();
                let merchant_risk = rng.uniform();
                let z_amount = (amount.ln() - 3.8) / 0.8;
                let z_spend = (spend.ln() - 5.0) / 0.6;
                let logit = if drifted {
                    -3.2 + 3.0 * (merchant_risk - 0.5) * 2.0 - 1.5 * z_spend
                } else {
                    -3.2 + 2.0 * z_amount + 0.8 * z_spend
                };
                let fraud = rng.uniform() < 1.0 / (1.0 + (-logit).exp());
                Tx {
                    card: card as i64,
                    ts: self.start
                        + day * DAY_US
                        + (rng.uniform() * (DAY_US - 2) as f64) as i64
                        + 1,
                    amount,
                    merchant_risk,
                    fraud,
                }
            })
            .collect()
    }

    /// The card view's rows of `day` (stamped at the day's start).
    pub(crate) fn card_rows(&self, day: i64) -> Result<RecordBatch> {
        let n = self.card_spend.len();
        let ts = vec![self.start + day * DAY_US; n];
        RecordBatch::try_from_iter([
            (
                "card_id",
                Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
            ),
            (
                "event_ts",
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")) as ArrayRef,
            ),
            (
                "spend_7d",
                Arc::new(Float64Array::from_iter_values(
                    self.card_spend.iter().map(|c| c[day as usize]),
                )) as ArrayRef,
            ),
            (
                "tx_7d",
                Arc::new(Float64Array::from_iter_values(
                    self.card_count.iter().map(|c| c[day as usize]),
                )) as ArrayRef,
            ),
        ])
        .map_err(|e| Error::invalid_input("card features", e.to_string()))
    }
}

pub(crate) fn tx_batch(txs: &[Tx]) -> Result<RecordBatch> {
    RecordBatch::try_from_iter([
        (
            "card_id",
            Arc::new(Int64Array::from_iter_values(txs.iter().map(|t| t.card))) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(txs.iter().map(|t| t.ts))
                    .with_timezone("UTC"),
            ) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from_iter_values(txs.iter().map(|t| t.amount))) as ArrayRef,
        ),
        (
            "merchant_risk",
            Arc::new(Float64Array::from_iter_values(
                txs.iter().map(|t| t.merchant_risk),
            )) as ArrayRef,
        ),
        (
            "is_fraud",
            Arc::new(Int64Array::from_iter_values(
                txs.iter().map(|t| i64::from(t.fraud)),
            )) as ArrayRef,
        ),
    ])
    .map_err(|e| Error::invalid_input("transactions", e.to_string()))
}

/// Labelled transactions (the app's record of chargebacks).
#[derive(Debug, Default)]
pub(crate) struct Chargebacks(pub(crate) Mutex<Vec<Tx>>);

#[async_trait]
impl LabelSource for Chargebacks {
    async fn labelled_rows(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RecordBatch> {
        let (a, b) = (since.timestamp_micros(), until.timestamp_micros());
        let rows: Vec<Tx> = self
            .0
            .lock()
            .map_err(|_| Error::backend("chargebacks", "poisoned"))?
            .iter()
            .filter(|t| t.ts >= a && t.ts < b)
            .copied()
            .collect();
        tx_batch(&rows)
    }
}

pub(crate) fn at(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}
