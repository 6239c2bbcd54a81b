//! Training: tasks, models, determinism, early stopping, class weights, bad input.

use std::sync::{Arc, Mutex};

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use mlops_core::{Error, Task, Trainer};
use mlops_train::{
    Activation, ClassWeights, EarlyStopping, EpochObserver, EpochRecord, LrSchedule, ModelSpec,
    OptimizerKind, Progress, TabularTrainer, TrainConfig, tensors_from_batch,
};

use crate::data;

pub(crate) fn config(task: Task, model: ModelSpec) -> TrainConfig {
    let mut c = TrainConfig::new(task, model);
    c.progress = Progress::Hidden;
    c.epochs = 8;
    c.batch_size = 64;
    c.learning_rate = 0.01;
    c
}

#[test]
fn binary_models_learn_the_signal() {
    let data = data::binary(3000, 1);
    for model in [
        ModelSpec::Linear,
        ModelSpec::Mlp {
            hidden: vec![16, 8],
            activation: Activation::Gelu,
            dropout: 0.1,
        },
    ] {
        let out = TabularTrainer::new(config(Task::BinaryClassification, model.clone()))
            .fit_detailed(&data, "is_fraud")
            .unwrap();
        let m = &out.trained.report.metrics;
        assert!(m["roc_auc"] > 0.93, "{model:?}: {m:?}");
        assert!(m["accuracy"] > 0.85, "{model:?}: {m:?}");
        for key in ["precision", "recall", "f1", "average_precision", "log_loss"] {
            assert!(m[key].is_finite(), "{key}");
        }
        assert_eq!(out.trained.report.rows, 600);
        // The noise column and the label's classes are in the card.
        assert_eq!(out.model.card().classes, vec!["false", "true"]);
        assert_eq!(out.model.card().features.len(), 4);
        assert!(out.model.drift_reference().is_some());
        assert!(out.model.card().prediction_reference.is_some());
        assert_eq!(out.trained.metadata.metrics, *m);
        assert!(out.trained.metadata.params["model"].starts_with(&model.describe()));
    }
}

#[test]
fn multiclass_and_regression() {
    let data = data::multiclass(1500, 2);
    let mut cfg = config(Task::MulticlassClassification, ModelSpec::mlp([16]));
    cfg.schedule = LrSchedule::Cosine { min_lr: 0.001 };
    let out = TabularTrainer::new(cfg)
        .fit_detailed(&data, "species")
        .unwrap();
    let m = &out.trained.report.metrics;
    assert!(m["accuracy"] > 0.9 && m["roc_auc"] > 0.97, "{m:?}");
    assert_eq!(
        out.model.card().classes,
        vec!["setosa", "versicolor", "virginica"]
    );
    let probs = out.model.predict_batch(&data).unwrap();
    assert_eq!(probs.len(), 1500 * 3);
    for row in probs.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    let data = data::regression(2000, 3);
    let mut cfg = config(Task::Regression, ModelSpec::Linear);
    cfg.optimizer = OptimizerKind::Adam;
    cfg.weight_decay = 0.0;
    cfg.epochs = 30;
    cfg.early_stopping = None;
    let out = TabularTrainer::new(cfg).fit_detailed(&data, "y").unwrap();
    let m = &out.trained.report.metrics;
    assert!(m["r2"] > 0.99 && m["rmse"] < 0.5, "{m:?}");
    assert_eq!(out.history.len(), 30);
    assert_eq!(out.best_epoch, 30);
    // Predictions come back on the target's scale.
    let pred = out.model.predict_batch(&data).unwrap();
    let y = data
        .column(3)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert!((f64::from(pred[0]) - y.value(0)).abs() < 1.0);
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let data = data::binary(800, 4);
    let cfg = config(
        Task::BinaryClassification,
        ModelSpec::Mlp {
            hidden: vec![8],
            activation: Activation::Relu,
            dropout: 0.2,
        },
    );
    let a = TabularTrainer::new(cfg.clone())
        .fit(&data, "is_fraud")
        .unwrap();
    let b = TabularTrainer::new(cfg.clone())
        .fit(&data, "is_fraud")
        .unwrap();
    assert_eq!(a.artifact.digest, b.artifact.digest);
    assert_eq!(a.report, b.report);
    let mut other = cfg;
    other.seed = 99;
    let c = TabularTrainer::new(other).fit(&data, "is_fraud").unwrap();
    assert_ne!(a.artifact.digest, c.artifact.digest);
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<EpochRecord>>);

impl EpochObserver for Recorder {
    fn on_epoch(&self, record: &EpochRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    let data = data::binary(1500, 5);
    let mut cfg = config(Task::BinaryClassification, ModelSpec::mlp([32, 32]));
    // A large rate makes validation loss bounce, so the best epoch is early.
    cfg.learning_rate = 0.05;
    cfg.epochs = 40;
    cfg.early_stopping = Some(EarlyStopping {
        metric: "log_loss".into(),
        patience: 2,
        min_delta: 0.0,
    });
    let recorder = Arc::new(Recorder::default());
    let out = TabularTrainer::new(cfg)
        .with_observer(recorder.clone())
        .fit_detailed(&data, "is_fraud")
        .unwrap();
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen, out.history);
    assert!(out.history.len() < 40, "stopped early");
    assert_eq!(out.history.len(), out.best_epoch + 3);
    let best = &out.history[out.best_epoch - 1];
    assert_eq!(
        best.valid, out.trained.report.metrics,
        "the kept weights are the best epoch's"
    );
    let min = out
        .history
        .iter()
        .map(|r| r.valid["log_loss"])
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best.valid["log_loss"], min);
    assert!(
        out.history
            .iter()
            .all(|r| r.rows_per_second > 0.0 && r.train_loss.is_finite())
    );
}

#[test]
fn balanced_class_weights_raise_recall_of_a_rare_class() {
    // Positives are rare (about 5%) and only partly separable.
    let mut g = data::Gen::new(6);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..4000 {
        let v = g.normal();
        x.push(v);
        y.push(i64::from(v + 0.8 * g.normal() > 2.2));
    }
    let data = RecordBatch::try_from_iter([
        ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
        ("y", Arc::new(Int64Array::from(y)) as ArrayRef),
    ])
    .unwrap();
    let mut cfg = config(Task::BinaryClassification, ModelSpec::Linear);
    cfg.early_stopping = None;
    let plain = TabularTrainer::new(cfg.clone()).fit(&data, "y").unwrap();
    cfg.class_weights = ClassWeights::Balanced;
    let balanced = TabularTrainer::new(cfg).fit(&data, "y").unwrap();
    let (r0, r1) = (
        plain.report.metrics["recall"],
        balanced.report.metrics["recall"],
    );
    assert!(r1 > r0 + 0.2, "recall {r0} unweighted, {r1} balanced");
}

#[test]
fn evaluate_any_predictor_of_the_task() {
    let data = data::binary(1000, 7);
    let trainer = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::Linear));
    let trained = trainer.fit(&data, "is_fraud").unwrap();
    // Tensors cannot hold nulls: evaluate on rows without them.
    let amount = data.column(0);
    let keep: Vec<u32> = (0..data.num_rows() as u32)
        .filter(|&i| amount.is_valid(i as usize))
        .collect();
    let clean =
        arrow::compute::take_record_batch(&data, &arrow_array::UInt32Array::from(keep)).unwrap();
    let report = trainer
        .evaluate(trained.predictor.as_ref(), &clean, "is_fraud")
        .unwrap();
    assert_eq!(report.rows, clean.num_rows());
    assert!(report.metrics["roc_auc"] > 0.93, "{report:?}");
    let err = trainer
        .evaluate(trained.predictor.as_ref(), &data, "is_fraud")
        .unwrap_err();
    assert!(
        err.to_string().contains("amount") && err.to_string().contains("null"),
        "{err}"
    );
    // A single-class evaluation set still scores the right class.
    let positives = arrow::compute::filter_record_batch(
        &clean,
        clean.column(4).as_any().downcast_ref().unwrap(),
    )
    .unwrap();
    let report = trainer
        .evaluate(trained.predictor.as_ref(), &positives, "is_fraud")
        .unwrap();
    assert!(report.metrics["recall"] > 0.8, "{report:?}");
    assert!(!report.metrics.contains_key("roc_auc"));
    let inputs = tensors_from_batch(&trained.predictor.signature().inputs, &positives).unwrap();
    assert_eq!(inputs.len(), 4);
}

fn expect_err(data: &RecordBatch, label: &str, cfg: TrainConfig, needle: &str) -> Error {
    let err = TabularTrainer::new(cfg).fit(data, label).unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in: {err}"
    );
    err
}

#[test]
fn bad_data_and_settings_are_named() {
    let cfg = || config(Task::BinaryClassification, ModelSpec::Linear);
    let data = data::binary(200, 8);
    let err = expect_err(&data, "nope", cfg(), "nope");
    assert!(matches!(err, Error::SchemaMismatch { .. }));

    let one_class = RecordBatch::try_from_iter([
        (
            "x",
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef,
        ),
        ("y", Arc::new(Int64Array::from(vec![1, 1, 1])) as ArrayRef),
    ])
    .unwrap();
    expect_err(&one_class, "y", cfg(), "single class");

    let three = data::multiclass(100, 1);
    expect_err(&three, "species", cfg(), "3 classes");

    let nan = RecordBatch::try_from_iter([
        (
            "x",
            Arc::new(Float64Array::from(vec![1.0, f64::NAN, 3.0, 4.0])) as ArrayRef,
        ),
        (
            "y",
            Arc::new(Int64Array::from(vec![0, 1, 0, 1])) as ArrayRef,
        ),
    ])
    .unwrap();
    expect_err(&nan, "y", cfg(), "column 'x'");

    let null_label = RecordBatch::try_from_iter([
        (
            "x",
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])) as ArrayRef,
        ),
        (
            "y",
            Arc::new(Int64Array::from(vec![Some(0), None, Some(0), Some(1)])) as ArrayRef,
        ),
    ])
    .unwrap();
    expect_err(&null_label, "y", cfg(), "row 1 is null");

    let with_ts = RecordBatch::try_from_iter([
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3, 4])) as ArrayRef,
        ),
        (
            "y",
            Arc::new(Int64Array::from(vec![0, 1, 0, 1])) as ArrayRef,
        ),
    ])
    .unwrap();
    let err = expect_err(&with_ts, "y", cfg(), "ts");
    assert!(matches!(err, Error::SchemaMismatch { .. }));
    let mut excluded = cfg();
    excluded.exclude = vec!["ts".into()];
    expect_err(&with_ts, "y", excluded, "no feature columns");

    let string_regression = RecordBatch::try_from_iter([
        (
            "x",
            Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
        ),
        ("y", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
    ])
    .unwrap();
    expect_err(
        &string_regression,
        "y",
        config(Task::Regression, ModelSpec::Linear),
        "column 'y'",
    );

    let empty = data.slice(0, 0);
    expect_err(&empty, "is_fraud", cfg(), "rows");

    for (mutate, needle) in [
        (
            Box::new(|c: &mut TrainConfig| c.epochs = 0) as Box<dyn Fn(&mut TrainConfig)>,
            "epochs",
        ),
        (
            Box::new(|c: &mut TrainConfig| c.learning_rate = f64::NAN),
            "learning_rate",
        ),
        (
            Box::new(|c: &mut TrainConfig| c.validation_fraction = 1.0),
            "validation_fraction",
        ),
        (
            Box::new(|c: &mut TrainConfig| c.model = ModelSpec::mlp([0])),
            "hidden",
        ),
        (
            Box::new(|c: &mut TrainConfig| {
                c.early_stopping = Some(EarlyStopping {
                    metric: "rmse".into(),
                    patience: 1,
                    min_delta: 0.0,
                })
            }),
            "rmse",
        ),
        (
            Box::new(|c: &mut TrainConfig| c.positive_class = Some("maybe".into())),
            "maybe",
        ),
        (
            Box::new(|c: &mut TrainConfig| {
                c.class_weights = ClassWeights::Custom([("true".to_owned(), -1.0)].into())
            }),
            "class_weights",
        ),
        (
            Box::new(|c: &mut TrainConfig| c.features = Some(vec!["is_fraud".into()])),
            "label",
        ),
    ] {
        let mut c = cfg();
        mutate(&mut c);
        expect_err(&data, "is_fraud", c, needle);
    }

    // A learning rate so large the loss overflows is a clear error, not NaN weights.
    let mut wild = config(Task::Regression, ModelSpec::mlp([64, 64]));
    wild.learning_rate = 1e12;
    wild.optimizer = OptimizerKind::Adam;
    let reg = data::regression(500, 1);
    let err = TabularTrainer::new(wild).fit(&reg, "y").unwrap_err();
    assert!(err.to_string().contains("learning rate"), "{err}");
}
