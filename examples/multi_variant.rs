//! A multi-variant SaaS experiment: which of three upgrade-offer models earns
//! the most? The champion and two challengers serve at once, sticky per
//! account; traffic follows Thompson sampling on the revenue each answer
//! earned (fed back by the application as a business metric), and a sequential
//! test, valid however many rounds look, drops a challenger once it is worse
//! than the champion and promotes one once it is better.
//!
//! ```text
//! cargo run --release --example multi_variant
//! ```
//!
//! The application shows an upgrade offer when the model's probability is over
//! 0.3: an accepted offer earns 20, a refused one costs 2 (an annoyed
//! customer), no offer earns nothing. Acceptance depends on usage and seats
//! differently per plan, an interaction the MLP sees and the linear models do
//! not; the third model was trained on a fraction of the data.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use mlops::core::experiment::{ArmStats, SequentialTest, Verdict, thompson_weights};
use mlops::core::inference::{InferenceRequest, ParameterValue, Tensor, TensorData};
use mlops::core::model::VersionSelector;
use mlops::prelude::*;
use mlops::serve::{Arm, FeedbackConfig, ROUTING_KEY};
use mlops::train::Progress;

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const PLANS: [&str; 3] = ["free", "team", "business"];

/// An account: usage (hours a week), seats, plan; whether it would accept.
struct Account {
    usage: f64,
    seats: f64,
    plan: &'static str,
    accepts: bool,
}

fn accounts(n: usize, rng: &mut Rng) -> Vec<Account> {
    (0..n)
        .map(|_| {
            let usage = 40.0 * rng.uniform();
            let seats = 1.0 + 49.0 * rng.uniform();
            let plan = PLANS[(rng.uniform() * 3.0) as usize % 3];
            // Heavy free users upgrade; team accounts upgrade with many seats;
            // business accounts that use it little do (to a cheaper tier):
            // the effects differ, even in sign, by plan.
            let logit = match plan {
                "free" => -5.0 + 0.3 * usage,
                "team" => -5.0 + 0.2 * seats,
                _ => 1.0 - 0.15 * usage,
            };
            let accepts = rng.uniform() < 1.0 / (1.0 + (-logit).exp());
            Account {
                usage,
                seats,
                plan,
                accepts,
            }
        })
        .collect()
}

fn fit(model: ModelSpec, rows: usize, rng: &mut Rng) -> Result<TrainedModel> {
    let a = accounts(rows, rng);
    let data = RecordBatch::try_from_iter([
        (
            "usage",
            Arc::new(Float64Array::from_iter_values(a.iter().map(|x| x.usage))) as ArrayRef,
        ),
        (
            "seats",
            Arc::new(Float64Array::from_iter_values(a.iter().map(|x| x.seats))) as ArrayRef,
        ),
        (
            "plan",
            Arc::new(StringArray::from_iter_values(a.iter().map(|x| x.plan))) as ArrayRef,
        ),
        (
            "accepted",
            Arc::new(Int64Array::from_iter_values(
                a.iter().map(|x| i64::from(x.accepts)),
            )) as ArrayRef,
        ),
    ])
    .map_err(|e| Error::invalid_input("accounts", e.to_string()))?;
    let mut config = TrainConfig::new(Task::BinaryClassification, model);
    config.progress = Progress::Hidden;
    config.learning_rate = 0.01;
    config.epochs = 30;
    TabularTrainer::new(config).fit(&data, "accepted")
}

/// The revenue of answering `account` with probability `p`.
fn revenue(p: f32, account: &Account) -> f64 {
    match (p > 0.3, account.accepts) {
        (false, _) => 0.0,
        (true, true) => 20.0,
        (true, false) => -2.0,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut rng = Rng(11);
    let registry = Arc::new(ObjectRegistry::new(&StoreRoot::open("memory://")?));
    for (name, spec, rows) in [
        ("champion (linear)", ModelSpec::Linear, 20_000),
        ("challenger B (MLP)", ModelSpec::mlp([32, 16]), 20_000),
        ("challenger C (linear, little data)", ModelSpec::Linear, 300),
    ] {
        let m = fit(spec, rows, &mut rng)?;
        let v = registry.register("upgrade", m.artifact, m.metadata).await?;
        println!(
            "v{}: {name}, offline ROC AUC {:.3}",
            v.version, m.report.metrics["roc_auc"]
        );
    }
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    let arm = |v: u64, w: f64| Arm::new(VersionSelector::Number(v), w);
    let mut config = DeploymentConfig::new(
        "upgrade",
        "upgrade",
        Routing::Split(vec![arm(1, 1.0), arm(2, 1.0), arm(3, 1.0)]),
    );
    config.feedback = Some(FeedbackConfig::new(Task::BinaryClassification));
    server.deploy(config).await?;

    // Revenue per answer: higher is better; a false "better" at most 5% of
    // the time however many rounds look; most sensitive to lifts near 0.5.
    let test = SequentialTest::new(0.05, 0.0, 0.5, true)?;
    let mut live: Vec<u64> = vec![1, 2, 3];
    for round in 1..=10 {
        for (i, account) in accounts(4000, &mut rng).iter().enumerate() {
            let mut request = InferenceRequest::new(vec![
                Tensor::new("usage", vec![1], TensorData::Fp64(vec![account.usage]))?,
                Tensor::new("seats", vec![1], TensorData::Fp64(vec![account.seats]))?,
                Tensor::new(
                    "plan",
                    vec![1],
                    TensorData::Bytes(vec![account.plan.as_bytes().to_vec()]),
                )?,
            ]);
            // The same account always sees the same variant.
            request.parameters.insert(
                ROUTING_KEY.into(),
                ParameterValue::String(format!("account-{round}-{i}")),
            );
            let answer = server.infer("upgrade", None, request).await?;
            let p = answer
                .outputs
                .first()
                .ok_or_else(|| Error::invalid_input("answer", "no output"))?
                .data
                .to_f32_vec()?
                .first()
                .copied()
                .unwrap_or(0.0);
            let prediction = answer
                .prediction_id()
                .ok_or_else(|| Error::invalid_input("answer", "no prediction id"))?;
            let earned = BTreeMap::from([("revenue".to_owned(), revenue(p, account))]);
            server.record_metrics("upgrade", prediction, &earned)?;
        }
        let quality = server.live_quality("upgrade")?;
        let stats = |v: u64| {
            quality
                .get(&v)
                .and_then(|q| q.business.get("revenue").copied())
                .unwrap_or_default()
        };
        let champion = stats(1);
        print!("round {round:>2}:");
        for &v in &live {
            let s = stats(v);
            print!(" v{v} {:.2}/answer over {}", s.mean(), s.count());
        }
        println!();
        // Each challenger against the champion.
        let mut promoted = None;
        for &v in live.clone().iter().filter(|&&v| v != 1) {
            let evidence = test.compare(&champion, &stats(v));
            match evidence.verdict {
                Verdict::Worse => {
                    live.retain(|&x| x != v);
                    println!("          v{v} dropped: {evidence}");
                }
                Verdict::Better if promoted.is_none() => {
                    promoted = Some(v);
                    println!("          v{v} promoted: {evidence}");
                }
                _ => {}
            }
        }
        if let Some(v) = promoted {
            server
                .set_routing("upgrade", Routing::Fixed(VersionSelector::Number(v)))
                .await?;
            println!("v{v} now answers every account");
            return Ok(());
        }
        // The rest of the traffic follows the chance each variant is the best.
        let arms: Vec<ArmStats> = live.iter().map(|&v| stats(v)).collect();
        let weights = thompson_weights(&arms, true, 0.1, 4000, round)?;
        server
            .set_routing(
                "upgrade",
                Routing::Split(
                    live.iter()
                        .zip(&weights)
                        .map(|(&v, &w)| arm(v, w))
                        .collect(),
                ),
            )
            .await?;
        let shares: Vec<String> = live
            .iter()
            .zip(&weights)
            .map(|(v, w)| format!("v{v} {:.0}%", w * 100.0))
            .collect();
        println!(
            "          traffic by Thompson sampling: {}",
            shares.join(", ")
        );
    }
    println!("no variant beat the champion with evidence; it keeps the traffic");
    Ok(())
}
