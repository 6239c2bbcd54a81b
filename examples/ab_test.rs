//! A retail A/B test: a new recommendation-conversion model gets a small, sticky
//! share of shoppers and more of them only while it converts better live.
//!
//! ```text
//! cargo run --release --example ab_test
//! ```
//!
//! Model A (linear) is the champion; model B (an MLP that sees the interaction
//! between discount and category) starts at 20% of traffic, sticky per shopper
//! (the `routing_key` parameter). After each round of traffic and feedback a
//! sequential test decides on the live per-prediction loss (Brier score) of
//! both, valid however many rounds look at it: B gains 30 points while its
//! always-valid interval says it is better, holds while undecided, and is
//! rolled back as soon as it says worse. Each verdict prints its evidence.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use mlops::core::experiment::{SequentialTest, Verdict};
use mlops::core::inference::{InferenceRequest, ParameterValue, Tensor, TensorData};
use mlops::prelude::*;
use mlops::serve::{FeedbackConfig, ROUTING_KEY};
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

const CATEGORIES: [&str; 4] = ["grocery", "fashion", "electronics", "toys"];

/// Price, discount and category of `n` offers, and whether each converted.
fn offers(n: usize, rng: &mut Rng) -> (Vec<f64>, Vec<f64>, Vec<&'static str>, Vec<i64>) {
    let (mut price, mut discount, mut category, mut bought) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let (p, d) = (5.0 + 95.0 * rng.uniform(), 0.5 * rng.uniform());
        let c = CATEGORIES[(rng.uniform() * 4.0) as usize % 4];
        // Discounts sell fashion and toys, barely electronics: an interaction.
        let lift = if c == "fashion" || c == "toys" {
            24.0
        } else {
            -12.0
        };
        let logit = 0.5 - 0.03 * p + lift * d;
        price.push(p);
        discount.push(d);
        category.push(c);
        bought.push(i64::from(rng.uniform() < 1.0 / (1.0 + (-logit).exp())));
    }
    (price, discount, category, bought)
}

fn fit(model: ModelSpec, rng: &mut Rng) -> Result<TrainedModel> {
    let (p, d, c, y) = offers(20_000, rng);
    let data = RecordBatch::try_from_iter([
        ("price", Arc::new(Float64Array::from(p)) as ArrayRef),
        ("discount", Arc::new(Float64Array::from(d)) as ArrayRef),
        ("category", Arc::new(StringArray::from(c)) as ArrayRef),
        ("bought", Arc::new(Int64Array::from(y)) as ArrayRef),
    ])
    .map_err(|e| Error::invalid_input("offers", e.to_string()))?;
    let mut config = TrainConfig::new(Task::BinaryClassification, model);
    config.progress = Progress::Hidden;
    config.learning_rate = 0.01;
    config.epochs = 30;
    TabularTrainer::new(config).fit(&data, "bought")
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut rng = Rng(7);
    let registry = Arc::new(ObjectRegistry::new(&StoreRoot::open("memory://")?));
    for (name, spec) in [("A", ModelSpec::Linear), ("B", ModelSpec::mlp([32, 16]))] {
        let m = fit(spec, &mut rng)?;
        let v = registry
            .register("conversion", m.artifact, m.metadata)
            .await?;
        println!(
            "model {name}: v{} (offline log loss {:.4})",
            v.version, m.report.metrics["log_loss"]
        );
    }
    let server = ModelServer::new(registry, vec![Arc::new(TabularLoader::default())]);
    let (a, b) = ("1".parse()?, "2".parse()?);
    let mut config = DeploymentConfig::new(
        "conversion",
        "conversion",
        Routing::Canary {
            stable: a,
            canary: b,
            weight: 0.2,
        },
    );
    config.feedback = Some(FeedbackConfig::new(Task::BinaryClassification).with_window(3000));
    server.deploy(config).await?;

    // Lower loss is better; a false "B is better" at most 5% of the time,
    // however many rounds look; most sensitive to differences near 0.01.
    let test = SequentialTest::new(0.05, 0.0, 0.01, false)?;
    let mut weight = 0.2;
    for round in 1..=6 {
        let (p, d, c, y) = offers(8000, &mut rng);
        for i in 0..p.len() {
            let mut request = InferenceRequest::new(vec![
                Tensor::new("price", vec![1], TensorData::Fp64(vec![p[i]]))?,
                Tensor::new("discount", vec![1], TensorData::Fp64(vec![d[i]]))?,
                Tensor::new(
                    "category",
                    vec![1],
                    TensorData::Bytes(vec![c[i].as_bytes().to_vec()]),
                )?,
            ]);
            let id = format!("{round}-{i}");
            request.id = Some(id.clone());
            // The same shopper always sees the same model.
            request.parameters.insert(
                ROUTING_KEY.into(),
                ParameterValue::String(format!("shopper-{}", i % 5000)),
            );
            let answer = server.infer("conversion", None, request).await?;
            // Feedback names the answer by the id the server issued for it.
            let prediction = answer
                .prediction_id()
                .ok_or_else(|| Error::invalid_input("answer", "no prediction id"))?;
            server.record_feedback("conversion", prediction, &[y[i] as f64])?;
        }
        let live = server.live_quality("conversion")?;
        let loss = |v: u64| live.get(&v).map(|q| q.loss).unwrap_or_default();
        let evidence = test.compare(&loss(1), &loss(2));
        let verdict = match evidence.verdict {
            Verdict::Better => {
                weight = (weight + 0.3_f64).min(1.0);
                "B is better: more traffic"
            }
            Verdict::Worse => {
                weight = 0.0;
                "B is worse: rolled back"
            }
            _ => "undecided: hold",
        };
        server.set_canary_weight("conversion", weight).await?;
        println!(
            "round {round}: {verdict}; B now gets {:.0}% of shoppers\n         Brier {evidence}",
            weight * 100.0
        );
        if weight >= 1.0 || weight == 0.0 {
            break;
        }
    }
    Ok(())
}
