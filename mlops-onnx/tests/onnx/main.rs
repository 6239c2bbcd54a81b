//! The ONNX loader against onnxruntime, on models exported by the real tools
//! (`tests/fixtures/make_fixtures.py` builds them and records onnxruntime's
//! answers in `expected.json`), and against bad models and bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use mlops_core::inference::{Datatype, Tensor, TensorData};
use mlops_core::model::{ModelArtifact, ModelMetadata};
use mlops_core::{Error, ModelLoader, Predictor};
use mlops_onnx::testkit::{
    MODELS, max_relative_difference, model_bytes, onnxruntime_outputs, probe_inputs,
};
use mlops_onnx::{OnnxLoader, OnnxModel, OnnxRegistration, prepare_onnx};
use prost::Message;

fn bytes_of(name: &str) -> Vec<u8> {
    model_bytes(name).unwrap()
}

fn inputs_of(name: &str) -> Vec<Tensor> {
    probe_inputs(name).unwrap()
}

fn load(name: &str) -> Arc<dyn Predictor> {
    let artifact = ModelArtifact::new("onnx", bytes_of(name));
    OnnxLoader
        .load(&artifact)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_exported_model_answers_as_onnxruntime_does() {
    let mut table = vec![
        "| model | output | elements | max relative difference |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    for name in MODELS {
        let model = load(name);
        let outputs = model
            .predict(&inputs_of(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let wanted = onnxruntime_outputs(name).unwrap();
        assert_eq!(outputs.len(), wanted.len(), "{name}: output count");
        for (ours, theirs) in outputs.iter().zip(&wanted) {
            assert_eq!(
                ours.name, theirs.name,
                "{name}: outputs in the graph's order"
            );
            let diff = max_relative_difference(ours, theirs).unwrap_or_else(|| {
                panic!(
                    "{name}/{}: ours {ours:?}\nonnxruntime's {theirs:?}",
                    ours.name
                )
            });
            let exact = !matches!(ours.data, TensorData::Fp32(_) | TensorData::Fp64(_));
            table.push(format!(
                "| {name} | {} | {} | {} |",
                ours.name,
                ours.data.len(),
                if exact {
                    "exact".to_owned()
                } else {
                    format!("{diff:.2e}")
                }
            ));
            assert!(
                diff <= 1e-5,
                "{name}/{}: relative difference {diff:e}",
                ours.name
            );
        }
    }
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("onnx-equality.md");
    std::fs::write(&report, table.join("\n") + "\n").expect("report");
    println!("{}", table.join("\n"));
}

#[test]
fn the_signature_comes_from_the_graph() {
    let pipeline = load("pipeline_logreg");
    let s = pipeline.signature();
    let inputs: Vec<(&str, Datatype, &[i64])> = s
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype, &t.shape[..]))
        .collect();
    assert_eq!(
        inputs,
        [
            ("amount", Datatype::Fp32, &[-1, 1][..]),
            ("age", Datatype::Fp32, &[-1, 1][..]),
            ("country", Datatype::Bytes, &[-1, 1][..]),
        ]
    );
    let outputs: Vec<(&str, Datatype, &[i64])> = s
        .outputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype, &t.shape[..]))
        .collect();
    assert_eq!(
        outputs,
        [
            ("output_label", Datatype::Int64, &[-1][..]),
            ("output_probability", Datatype::Fp32, &[-1, 2][..]),
        ]
    );
    let mlp = load("mlp");
    assert_eq!(mlp.signature().inputs[0].shape, [-1, 3]);
    assert_eq!(mlp.signature().outputs[0].shape, [-1, 1]);
    let regressor = load("gbt_regressor");
    assert_eq!(regressor.signature().outputs[0].datatype, Datatype::Fp32);
    assert_eq!(regressor.signature().outputs[0].shape, [-1, 1]);

    let info = OnnxModel::from_bytes(&bytes_of("pipeline_logreg")).expect("loads");
    assert_eq!(info.info().producer, "skl2onnx");
    assert!(info.info().operators.contains(&"OneHotEncoder".to_owned()));
}

#[test]
fn any_batch_size_is_answered_row_by_row() {
    let model = load("random_forest");
    let input = &inputs_of("random_forest")[0];
    let TensorData::Fp32(all) = &input.data else {
        panic!("fp32 input")
    };
    let whole = model.predict(std::slice::from_ref(input)).expect("batch");
    let TensorData::Fp32(probabilities) = &whole[1].data else {
        panic!("fp32 probabilities")
    };
    // One row at a time gives the rows of the batch.
    for row in [0usize, 7, 63] {
        let one = Tensor::new(
            "input",
            vec![1, 3],
            TensorData::Fp32(all[row * 3..row * 3 + 3].to_vec()),
        )
        .expect("tensor");
        let answer = model.predict(&[one]).expect("one row");
        let TensorData::Fp32(p) = &answer[1].data else {
            panic!("fp32")
        };
        assert_eq!(p[..], probabilities[row * 2..row * 2 + 2], "row {row}");
    }
    // 1024 rows (the probe repeated) and no rows at all.
    let big: Vec<f32> = all.iter().copied().cycle().take(1024 * 3).collect();
    let answer = model
        .predict(&[Tensor::new("input", vec![1024, 3], TensorData::Fp32(big)).expect("tensor")])
        .expect("1024 rows");
    assert_eq!(answer[0].shape[..], [1024]);
    assert_eq!(answer[1].shape[..], [1024, 2]);
    let empty = model
        .predict(&[Tensor::new("input", vec![0, 3], TensorData::Fp32(vec![])).expect("tensor")])
        .expect("no rows");
    assert_eq!(empty[0].shape[..], [0]);
    assert_eq!(empty[1].shape[..], [0, 2]);
}

#[test]
fn concurrent_requests_get_their_own_answers() {
    let model = load("pipeline_logreg");
    let inputs = inputs_of("pipeline_logreg");
    let reference = model.predict(&inputs).expect("answer");
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(model.predict(&inputs).expect("answer"), reference);
                }
            });
        }
    });
}

fn invalid(result: mlops_core::Result<Vec<Tensor>>) -> String {
    match result {
        Err(e @ Error::InvalidInput { .. }) => e.to_string(),
        other => panic!("expected an invalid-input error, got {other:?}"),
    }
}

#[test]
fn bad_requests_are_refused_with_the_input_named() {
    let pipeline = load("pipeline_logreg");
    let amount = Tensor::new("amount", vec![2, 1], TensorData::Fp32(vec![1.0, 2.0])).expect("t");
    let age = Tensor::new("age", vec![2, 1], TensorData::Fp32(vec![30.0, 40.0])).expect("t");
    let country = |v: Vec<Vec<u8>>| {
        Tensor::new("country", vec![v.len(), 1], TensorData::Bytes(v)).expect("t")
    };
    let ok = pipeline
        .predict(&[
            amount.clone(),
            age.clone(),
            country(vec![b"fr".to_vec(), b"br".to_vec()]),
        ])
        .expect("a good request");
    assert_eq!(ok[0].shape[..], [2]);

    let message = invalid(pipeline.predict(&[amount.clone(), age.clone()]));
    assert!(
        message.contains("country") && message.contains("missing"),
        "{message}"
    );
    let message = invalid(pipeline.predict(&[
        amount.clone(),
        Tensor::new("age", vec![2, 1], TensorData::Fp64(vec![30.0, 40.0])).expect("t"),
        country(vec![b"fr".to_vec(), b"br".to_vec()]),
    ]));
    assert!(message.contains("age"), "{message}");
    let message = invalid(pipeline.predict(&[
        amount.clone(),
        age.clone(),
        country(vec![vec![0xff, 0xfe], b"br".to_vec()]),
    ]));
    assert!(
        message.contains("country") && message.contains("UTF-8"),
        "{message}"
    );
    let message =
        invalid(pipeline.predict(&[amount.clone(), age.clone(), country(vec![b"fr".to_vec()])]));
    assert!(message.contains("rows"), "{message}");

    let mlp = load("mlp");
    let message =
        invalid(mlp.predict(&[
            Tensor::new("input", vec![1, 4], TensorData::Fp32(vec![0.0; 4])).expect("t"),
        ]));
    assert!(message.contains("input"), "{message}");
    let message = invalid(mlp.predict(&[
        Tensor::new("features", vec![1, 3], TensorData::Fp32(vec![0.0; 3])).expect("t"),
    ]));
    assert!(message.contains("features"), "{message}");

    // NaN is a value, not an error: trees send it down their missing-value branch.
    let forest = load("random_forest");
    let nan = Tensor::new(
        "input",
        vec![1, 3],
        TensorData::Fp32(vec![f32::NAN, 30.0, 2.0]),
    )
    .expect("t");
    let answer = forest.predict(&[nan]).expect("NaN features are answered");
    let TensorData::Fp32(p) = &answer[1].data else {
        panic!("fp32")
    };
    assert!((p[0] + p[1] - 1.0).abs() < 1e-5, "{p:?}");
}

/// `name`'s graph with the first node of type `op` changed to `new_op` in `domain`.
fn with_operator(name: &str, op: &str, new_op: &str, domain: &str) -> Vec<u8> {
    let mut proto = tract_onnx::pb::ModelProto::decode(&bytes_of(name)[..]).expect("decodes");
    let graph = proto.graph.as_mut().expect("graph");
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == op)
        .expect("the operator");
    node.op_type = new_op.to_owned();
    node.domain = domain.to_owned();
    proto.encode_to_vec()
}

#[test]
fn models_the_loader_cannot_run_are_refused_at_load_naming_why() {
    let unknown = with_operator("mlp", "Relu", "Frobnicate", "");
    let Err(e) = OnnxModel::from_bytes(&unknown) else {
        panic!("loaded an unknown operator")
    };
    let message = e.to_string();
    assert!(
        message.contains("Frobnicate") && message.contains("/1/Relu"),
        "{message}"
    );

    let foreign = with_operator("mlp", "Relu", "Relu", "com.microsoft");
    let Err(e) = OnnxModel::from_bytes(&foreign) else {
        panic!("loaded a foreign domain")
    };
    assert!(e.to_string().contains("com.microsoft"), "{e}");

    let ml = with_operator("pipeline_logreg", "Scaler", "Imputer", "ai.onnx.ml");
    let Err(e) = OnnxModel::from_bytes(&ml) else {
        panic!("loaded Imputer")
    };
    assert!(e.to_string().contains("Imputer"), "{e}");

    for garbage in [&b""[..], b"not an onnx file at all", &[0xff; 64][..]] {
        let Err(e) = OnnxModel::from_bytes(garbage) else {
            panic!("loaded garbage")
        };
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    }

    // A truncated file is refused, not half-loaded.
    let bytes = bytes_of("random_forest");
    assert!(OnnxModel::from_bytes(&bytes[..bytes.len() / 2]).is_err());
}

#[test]
fn the_loader_checks_flavor_and_digest() {
    let mut artifact = ModelArtifact::new("onnx", bytes_of("mlp"));
    assert!(OnnxLoader.load(&artifact).is_ok());
    let mut tampered = artifact.bytes.to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    artifact.bytes = tampered.into();
    assert!(matches!(
        OnnxLoader.load(&artifact),
        Err(Error::Integrity { .. })
    ));
    let other = ModelArtifact::new("burn-tabular", bytes_of("mlp"));
    let Err(e) = OnnxLoader.load(&other) else {
        panic!("loaded another flavor")
    };
    assert!(e.to_string().contains("burn-tabular"), "{e}");
}

#[test]
fn registration_fits_drift_references_that_travel_in_the_file() {
    for name in ["pipeline_logreg", "mlp"] {
        let reference = inputs_of(name);
        let registration = OnnxRegistration {
            reference: Some(reference.clone()),
            ..Default::default()
        };
        let (artifact, metadata) = prepare_onnx(&bytes_of(name), &registration).expect("prepared");
        assert_eq!(artifact.flavor, "onnx");
        let model = OnnxLoader.load(&artifact).expect("loads with references");
        assert_eq!(metadata.signature.as_ref(), Some(model.signature()));
        let inputs = model.input_drift().expect("an input reference");
        let mut names: Vec<String> = inputs
            .input_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        names.sort();
        let want: Vec<&str> = if name == "mlp" {
            vec!["input[0]", "input[1]", "input[2]"]
        } else {
            vec!["age", "amount", "country"]
        };
        assert_eq!(names, want, "{name}: the reference's columns");
        assert!(
            model.prediction_drift().is_some(),
            "{name}: a prediction reference"
        );
        // The answers do not change.
        let plain = load(name);
        assert_eq!(
            model.predict(&reference).expect("a"),
            plain.predict(&reference).expect("b")
        );
    }

    // The file with references is still a valid ONNX file with the same graph.
    let (artifact, _) = prepare_onnx(
        &bytes_of("mlp"),
        &OnnxRegistration {
            reference: Some(inputs_of("mlp")),
            ..Default::default()
        },
    )
    .expect("prepared");
    let proto = tract_onnx::pb::ModelProto::decode(&artifact.bytes[..]).expect("decodes");
    assert!(
        proto
            .metadata_props
            .iter()
            .any(|e| e.key == mlops_onnx::INPUT_REFERENCE_KEY)
    );
    // Adding references to a file that has them is refused.
    let again = prepare_onnx(
        &artifact.bytes,
        &OnnxRegistration {
            reference: Some(inputs_of("mlp")),
            ..Default::default()
        },
    );
    assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
}

#[test]
fn registration_refuses_bad_references_and_signatures() {
    let wrong = OnnxRegistration {
        reference: Some(vec![
            Tensor::new("input", vec![2, 4], TensorData::Fp32(vec![0.0; 8])).expect("t"),
        ]),
        ..Default::default()
    };
    let Err(e) = prepare_onnx(&bytes_of("mlp"), &wrong) else {
        panic!("a 4-wide reference for a 3-wide model")
    };
    assert!(e.to_string().contains("reference batch"), "{e}");

    let metadata = ModelMetadata {
        signature: Some(Default::default()),
        ..Default::default()
    };
    let Err(e) = prepare_onnx(
        &bytes_of("mlp"),
        &OnnxRegistration {
            metadata,
            ..Default::default()
        },
    ) else {
        panic!("a signature unlike the graph's")
    };
    assert!(e.to_string().contains("signature"), "{e}");

    let unknown = with_operator("mlp", "Relu", "Frobnicate", "");
    assert!(prepare_onnx(&unknown, &OnnxRegistration::default()).is_err());
}

#[test]
fn every_model_passes_the_loader_conformance_suite() {
    for name in MODELS {
        let registration = OnnxRegistration {
            reference: Some(inputs_of(name)),
            ..Default::default()
        };
        let (artifact, _) = prepare_onnx(&bytes_of(name), &registration).unwrap();
        let original = OnnxModel::from_bytes(&artifact.bytes).unwrap();
        mlops_core::testkit::predictor::round_trip(
            &OnnxLoader,
            &original,
            &artifact,
            &inputs_of(name),
        );
    }
}

/// A batch size asked for again gets a plan built for it; its answers stay
/// those of the plan for any size (within float rounding) and of onnxruntime.
#[test]
fn repeated_batch_sizes_answer_alike_from_their_own_plan() {
    for name in MODELS {
        let probe = inputs_of(name);
        let wanted = onnxruntime_outputs(name).unwrap();
        // The 64-row probe: the smallest sized batch. First call: the plan for
        // any size; second: the size's own plan is built in the background;
        // once it is there, calls use it.
        let concrete = OnnxModel::from_bytes(&bytes_of(name)).unwrap();
        let mut answers: Vec<Vec<Tensor>> =
            (0..2).map(|_| concrete.predict(&probe).unwrap()).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !concrete.has_plan_for(64) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no plan for 64 rows after 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        answers.push(concrete.predict(&probe).unwrap());
        assert!(
            !concrete.has_plan_for(65),
            "{name}: a size never asked for has no plan"
        );
        for answer in &answers {
            for (ours, theirs) in answer.iter().zip(&wanted) {
                let diff = max_relative_difference(ours, theirs).unwrap();
                assert!(diff <= 1e-5, "{name}/{}: {diff:e}", ours.name);
            }
            for (a, b) in answer.iter().zip(&answers[0]) {
                let diff = max_relative_difference(a, b).unwrap();
                assert!(
                    diff <= 1e-6,
                    "{name}/{}: sized and any-size plans differ by {diff:e}",
                    a.name
                );
            }
        }
    }
}
