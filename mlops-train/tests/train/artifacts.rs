//! Artifacts: a loaded model answers exactly as the trained one; damaged or foreign
//! artifacts and bad requests are refused clearly.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use bytes::Bytes;
use mlops_core::inference::{Datatype, TensorData};
use mlops_core::{Error, ModelArtifact, ModelLoader, Predictor, Task, Tensor, Trainer};
use mlops_train::{ModelSpec, TabularLoader, TabularTrainer, tensors_from_batch};

use crate::data;
use crate::training::config;

fn requests() -> RecordBatch {
    // Includes a country never seen in training.
    RecordBatch::try_from_iter([
        (
            "amount",
            Arc::new(Float64Array::from(vec![120.0, 900.0, 310.5])) as ArrayRef,
        ),
        (
            "age",
            Arc::new(Int64Array::from(vec![25, 61, 40])) as ArrayRef,
        ),
        (
            "country",
            Arc::new(StringArray::from(vec!["fr", "br", "jp"])) as ArrayRef,
        ),
        (
            "noise",
            Arc::new(Float64Array::from(vec![0.0, 1.0, -1.0])) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn loaded_model_answers_exactly_as_the_trained_one() {
    let data = data::binary(1200, 11);
    let trained = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::mlp([16, 16])))
        .fit(&data, "is_fraud")
        .unwrap();
    let loader = TabularLoader::default();
    assert!(loader.can_load(&trained.artifact.flavor));
    let loaded = loader.load(&trained.artifact).unwrap();
    assert_eq!(loaded.signature(), trained.predictor.signature());
    let sig = loaded.signature();
    assert_eq!(sig.inputs.len(), 4);
    assert_eq!(sig.inputs[1].datatype, Datatype::Int64);
    assert_eq!(sig.inputs[2].datatype, Datatype::Bytes);
    assert_eq!(sig.outputs[0].name, "probability");

    let inputs = tensors_from_batch(&sig.inputs, &requests()).unwrap();
    let a = trained.predictor.predict(&inputs).unwrap();
    let b = loaded.predict(&inputs).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].shape[..], [3]);
    let p = a[0].data.to_f32_vec().unwrap();
    assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));

    // Nulls through the Arrow path, and the same values as the tensor path.
    let model = loader.load_model(&trained.artifact).unwrap();
    assert_eq!(model.predict_batch(&requests()).unwrap(), p);
    let with_nulls = RecordBatch::try_from_iter(
        requests()
            .schema()
            .fields()
            .iter()
            .zip(requests().columns())
            .map(|(f, c)| {
                let c: ArrayRef = if f.name() == "amount" {
                    Arc::new(Float64Array::from(vec![None, Some(1.0), None]))
                } else {
                    c.clone()
                };
                (f.name().clone(), c)
            }),
    )
    .unwrap();
    assert_eq!(model.predict_batch(&with_nulls).unwrap().len(), 3);
    assert!(model.drift_reference().is_some());

    // Concurrent predictions from many threads agree.
    let loaded: Arc<dyn Predictor> = loaded;
    // Each thread sends its answer; the wait for each has a deadline (a thread
    // that panicked drops its sender without sending: reported on join).
    let (sender, answers) = std::sync::mpsc::channel();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (m, i, sender) = (loaded.clone(), inputs.clone(), sender.clone());
            std::thread::spawn(move || {
                let _ = sender.send(m.predict(&i).unwrap());
            })
        })
        .collect();
    drop(sender);
    for t in 0..handles.len() {
        let answer = answers
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("prediction thread {t} gave no answer within 120 s: {e}"));
        assert_eq!(answer, a);
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn multiclass_and_regression_round_trip() {
    let data = data::multiclass(600, 12);
    let trained = TabularTrainer::new(config(Task::MulticlassClassification, ModelSpec::Linear))
        .fit(&data, "species")
        .unwrap();
    let loaded = TabularLoader::default().load(&trained.artifact).unwrap();
    let inputs = tensors_from_batch(&loaded.signature().inputs, &data.slice(0, 5)).unwrap();
    let out = loaded.predict(&inputs).unwrap();
    assert_eq!(out[0].shape[..], [5, 3]);
    assert_eq!(out, trained.predictor.predict(&inputs).unwrap());

    let data = data::regression(600, 13);
    let trained = TabularTrainer::new(config(Task::Regression, ModelSpec::mlp([8])))
        .fit(&data, "y")
        .unwrap();
    let loaded = TabularLoader::default().load(&trained.artifact).unwrap();
    let inputs = tensors_from_batch(&loaded.signature().inputs, &data.slice(0, 4)).unwrap();
    assert_eq!(
        loaded.predict(&inputs).unwrap(),
        trained.predictor.predict(&inputs).unwrap()
    );
}

#[test]
fn damaged_or_foreign_artifacts_are_refused() {
    let data = data::binary(300, 14);
    let trained = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::Linear))
        .fit(&data, "is_fraud")
        .unwrap();
    let loader = TabularLoader::default();

    let mut flipped = trained.artifact.bytes.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let tampered = ModelArtifact {
        bytes: Bytes::from(flipped.clone()),
        ..trained.artifact.clone()
    };
    assert!(matches!(
        loader.load(&tampered).unwrap_err(),
        Error::Integrity { .. }
    ));

    // Re-digested garbage: the digest matches but the content does not parse.
    for bytes in [b"not a model".to_vec(), flipped[..30].to_vec()] {
        let err = loader
            .load(&ModelArtifact::new("burn-tabular", bytes))
            .unwrap_err();
        assert!(matches!(err, Error::Integrity { .. }), "{err}");
    }
    let err = loader
        .load(&ModelArtifact::new("sklearn", b"x".to_vec()))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("sklearn"));
}

#[test]
fn bad_requests_are_named() {
    let data = data::binary(300, 15);
    let trained = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::Linear))
        .fit(&data, "is_fraud")
        .unwrap();
    let p = trained.predictor;
    let good = tensors_from_batch(&p.signature().inputs, &requests()).unwrap();
    let check = |inputs: Vec<Tensor>, needle: &str| {
        let err = p.predict(&inputs).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in {err}"
        );
    };
    // What the server calls after its own check answers as `predict` does.
    let checked = p.signature().check_inputs(&good).unwrap();
    assert_eq!(
        p.predict_checked(checked).unwrap(),
        p.predict(&good).unwrap()
    );
    let mut wrong_type = good.clone();
    wrong_type[1] = Tensor::new("age", vec![3], TensorData::Fp32(vec![1.0, 2.0, 3.0])).unwrap();
    // Inputs checked against another signature (one that takes FP32 ages) are
    // checked again against the model's own, and refused by name.
    let mut other = p.signature().clone();
    other
        .inputs
        .iter_mut()
        .filter(|s| s.name == "age")
        .for_each(|s| s.datatype = wrong_type[1].datatype());
    let elsewhere = other.check_inputs(&wrong_type).unwrap();
    let err = p.predict_checked(elsewhere).unwrap_err();
    assert!(err.to_string().contains("age"), "{err}");
    check(wrong_type, "age");
    let mut nan = good.clone();
    nan[0] = Tensor::new(
        "amount",
        vec![3],
        TensorData::Fp64(vec![1.0, f64::NAN, 3.0]),
    )
    .unwrap();
    check(nan.clone(), "amount");
    check(nan, "row 1 is not a finite number");
    check(good[1..].to_vec(), "amount");
    let mut short = good.clone();
    short[3] = Tensor::new("noise", vec![2], TensorData::Fp64(vec![1.0, 2.0])).unwrap();
    check(short, "rows");
    let mut not_utf8 = good.clone();
    not_utf8[2] = Tensor::new(
        "country",
        vec![3],
        TensorData::Bytes(vec![vec![0xff], vec![], vec![]]),
    )
    .unwrap();
    check(not_utf8, "UTF-8");
    // Zero rows give zero rows.
    let empty = tensors_from_batch(&p.signature().inputs, &requests().slice(0, 0)).unwrap();
    assert_eq!(p.predict(&empty).unwrap()[0].shape[..], [0]);
}

#[test]
fn one_row_and_batched_predictions_agree() {
    // Requests of a few rows use a plain-loop kernel, larger ones burn: the same row
    // scores the same (to float rounding) either way, for every task.
    let cases = [
        (
            data::binary(800, 16),
            "is_fraud",
            Task::BinaryClassification,
            ModelSpec::mlp([16, 8]),
        ),
        (
            data::multiclass(600, 17),
            "species",
            Task::MulticlassClassification,
            ModelSpec::Mlp {
                hidden: vec![8],
                activation: mlops_train::Activation::Tanh,
                dropout: 0.0,
            },
        ),
        (
            data::regression(600, 18),
            "y",
            Task::Regression,
            ModelSpec::Mlp {
                hidden: vec![8],
                activation: mlops_train::Activation::Silu,
                dropout: 0.0,
            },
        ),
    ];
    for (data, label, task, spec) in cases {
        let trained = TabularTrainer::new(config(task, spec))
            .fit(&data, label)
            .unwrap();
        let model = TabularLoader::default()
            .load_model(&trained.artifact)
            .unwrap();
        let rows = 40;
        let clean: Vec<u32> = (0..data.num_rows() as u32)
            .filter(|&i| (0..data.num_columns()).all(|c| data.column(c).is_valid(i as usize)))
            .take(rows)
            .collect();
        let subset =
            arrow::compute::take_record_batch(&data, &arrow_array::UInt32Array::from(clean))
                .unwrap();
        assert_eq!(subset.num_rows(), rows, "{task:?}: rows without nulls");
        let batched = model.predict_batch(&subset).unwrap();
        let per_row = batched.len() / rows;
        assert!(
            per_row > 0 && batched.len() == per_row * rows,
            "{task:?}: {} outputs for {rows} rows",
            batched.len()
        );
        for r in 0..rows {
            let one = model.predict_batch(&subset.slice(r, 1)).unwrap();
            assert_eq!(one.len(), per_row, "{task:?} row {r}");
            for (a, b) in one.iter().zip(&batched[r * per_row..(r + 1) * per_row]) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{task:?} row {r}: {a} vs {b}"
                );
            }
        }
    }
}

/// The conformance kit's round trip on our loader: a saved model loads back and
/// answers as it did, for each task and model shape.
#[test]
fn the_tabular_loader_keeps_the_round_trip_contract() {
    for (task, spec) in [
        (Task::BinaryClassification, ModelSpec::Linear),
        (Task::BinaryClassification, ModelSpec::mlp([8])),
        (Task::Regression, ModelSpec::mlp([8])),
    ] {
        let data = data::binary(300, 21);
        let label = "is_fraud";
        let trained = TabularTrainer::new(config(task, spec))
            .fit(&data, label)
            .unwrap();
        let inputs =
            tensors_from_batch(&trained.predictor.signature().inputs, &requests()).unwrap();
        mlops_core::testkit::predictor::round_trip(
            &TabularLoader::default(),
            trained.predictor.as_ref(),
            &trained.artifact,
            &inputs,
        );
    }
}

#[test]
fn numeric_models_also_take_one_matrix_tensor() {
    // The mixed model (a string column) keeps the per-column form only.
    let mixed = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::Linear))
        .fit(&data::binary(600, 3), "is_fraud")
        .unwrap();
    assert!(mixed.predictor.signature().matrix_input.is_none());

    // The same data without its string column: numeric only.
    let full = data::binary(1200, 5);
    let keep: Vec<usize> = (0..full.num_columns())
        .filter(|&i| full.schema().field(i).name() != "country")
        .collect();
    let numeric = full.project(&keep).unwrap();
    let trained = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::mlp([8])))
        .fit(&numeric, "is_fraud")
        .unwrap();
    let loaded = TabularLoader::default().load(&trained.artifact).unwrap();
    let sig = loaded.signature();
    let matrix = sig.matrix_input.clone().expect("a matrix form");
    assert_eq!(matrix.name, mlops_train::MATRIX_INPUT);
    assert_eq!(matrix.shape, [-1, sig.inputs.len() as i64]);

    // Row by row, the matrix gives what the columns give.
    let requests = requests();
    let keep: Vec<usize> = (0..requests.num_columns())
        .filter(|&i| requests.schema().field(i).name() != "country")
        .collect();
    let columns = tensors_from_batch(&sig.inputs, &requests.project(&keep).unwrap()).unwrap();
    let rows = columns[0].rows();
    let mut values = Vec::new();
    for r in 0..rows {
        for c in &columns {
            values.push(c.data.to_f32_vec().unwrap()[r]);
        }
    }
    let x = Tensor::new("input", vec![rows, columns.len()], TensorData::Fp32(values)).unwrap();
    assert_eq!(
        loaded.predict(&[x]).unwrap(),
        loaded.predict(&columns).unwrap()
    );
    // A matrix of the wrong width is refused naming it.
    let narrow = Tensor::new("input", vec![1, 1], TensorData::Fp32(vec![1.0])).unwrap();
    let e = loaded.predict(&[narrow]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidInput { .. }) && e.to_string().contains("input"),
        "{e}"
    );
}

#[test]
fn large_batches_split_across_cores_score_as_their_parts_do() {
    let trained = TabularTrainer::new(config(Task::BinaryClassification, ModelSpec::mlp([16, 16])))
        .fit_detailed(&data::binary(1200, 7), "is_fraud")
        .unwrap();
    // More than two parts' worth of rows (nulls and an unseen country included).
    let rows = 2 * mlops_train::PARALLEL_ROWS + 1001;
    let big = data::binary(rows, 8);
    let whole = trained.model.predict_batch(&big).unwrap();
    assert_eq!(whole.len(), rows);
    // The same rows scored in pieces below the split size, in order.
    let piece = mlops_train::PARALLEL_ROWS / 2;
    let mut pieces = Vec::new();
    for start in (0..rows).step_by(piece) {
        let part = big.slice(start, piece.min(rows - start));
        pieces.extend(trained.model.predict_batch(&part).unwrap());
    }
    assert_eq!(pieces.len(), rows);
    let worst = whole
        .iter()
        .zip(&pieces)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "parts and whole differ by {worst}");
    // A bad column is still refused naming it.
    let keep: Vec<usize> = (0..big.num_columns())
        .filter(|&i| big.schema().field(i).name() != "amount")
        .collect();
    let e = trained
        .model
        .predict_batch(&big.project(&keep).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("amount"), "{e}");
}
