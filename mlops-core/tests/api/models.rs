//! Model types: digests, selectors, signatures and queries.

use std::collections::BTreeMap;

use chrono::Utc;
use mlops_core::Error;
use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
use mlops_core::model::{
    Comparison, ContentDigest, MetricFilter, ModelArtifact, ModelMetadata, ModelVersion, Signature,
    VersionQuery, VersionSelector, VersionStatus,
};

#[test]
fn artifacts_detect_a_flipped_byte() {
    let mut artifact = ModelArtifact::new("burn-mlp", vec![1u8, 2, 3, 4]);
    artifact.verify().unwrap();
    let mut bytes = artifact.bytes.to_vec();
    bytes[2] ^= 0x01;
    artifact.bytes = bytes.into();
    let err = artifact.verify().unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }), "{err:?}");
    assert!(err.to_string().contains("burn-mlp artifact"), "{err}");
}

#[test]
fn digests_parse_strictly() {
    let d = ContentDigest::of(b"abc");
    assert_eq!(
        d.as_str(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(d.as_str().parse::<ContentDigest>().unwrap(), d);
    assert_eq!(d.hex().len(), 64);
    for bad in [
        "",
        "md5:abc",
        "sha256:xyz",
        "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
    ] {
        assert!(bad.parse::<ContentDigest>().is_err(), "{bad}");
    }
    assert!(serde_json::from_str::<ContentDigest>("\"sha256:00\"").is_err());
}

#[test]
fn version_selectors_parse_and_print() {
    assert_eq!(
        "latest".parse::<VersionSelector>().unwrap(),
        VersionSelector::Latest
    );
    assert_eq!(
        "12".parse::<VersionSelector>().unwrap(),
        VersionSelector::Number(12)
    );
    assert_eq!(
        "champion".parse::<VersionSelector>().unwrap(),
        VersionSelector::Alias("champion".into())
    );
    assert_eq!(
        VersionSelector::Alias("champion".into()).to_string(),
        "@champion"
    );
    assert_eq!(VersionSelector::Number(3).to_string(), "3");
    for bad in ["0", "99999999999999999999999", "@", "", "a/b", "@../x"] {
        let err = bad.parse::<VersionSelector>().unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad}: {err:?}");
    }
}

fn signature() -> Signature {
    Signature {
        inputs: vec![
            TensorSpec::new("amount", Datatype::Fp32, vec![-1]),
            TensorSpec::new("merchant", Datatype::Bytes, vec![-1]),
            TensorSpec::new("dense", Datatype::Fp32, vec![-1, 3]),
        ],
        outputs: vec![TensorSpec::new("probability", Datatype::Fp32, vec![-1, 1])],
        matrix_input: None,
    }
}

fn inputs(rows: usize) -> Vec<Tensor> {
    vec![
        Tensor::new("amount", vec![rows], TensorData::Fp32(vec![1.0; rows])).unwrap(),
        Tensor::new(
            "merchant",
            vec![rows],
            TensorData::Bytes(vec![b"m".to_vec(); rows]),
        )
        .unwrap(),
        Tensor::new(
            "dense",
            vec![rows, 3],
            TensorData::Fp32(vec![0.0; rows * 3]),
        )
        .unwrap(),
    ]
}

#[test]
fn signatures_check_requests() {
    let sig = signature();
    sig.check_inputs(&inputs(4)).unwrap();

    let mut missing = inputs(2);
    missing.remove(1);
    let msg = sig.check_inputs(&missing).unwrap_err().to_string();
    assert!(
        msg.contains("input 'merchant'") && msg.contains("missing"),
        "{msg}"
    );

    let mut unknown = inputs(2);
    unknown.push(Tensor::new("extra", vec![2], TensorData::Fp32(vec![0.0; 2])).unwrap());
    let msg = sig.check_inputs(&unknown).unwrap_err().to_string();
    assert!(
        msg.contains("input 'extra'") && msg.contains("no such input"),
        "{msg}"
    );

    let mut wrong_type = inputs(2);
    wrong_type[0] = Tensor::new("amount", vec![2], TensorData::Fp64(vec![0.0; 2])).unwrap();
    let msg = sig.check_inputs(&wrong_type).unwrap_err().to_string();
    assert!(
        msg.contains("datatype FP64 where the model expects FP32"),
        "{msg}"
    );

    let mut wrong_shape = inputs(2);
    wrong_shape[2] = Tensor::new("dense", vec![2, 4], TensorData::Fp32(vec![0.0; 8])).unwrap();
    let msg = sig.check_inputs(&wrong_shape).unwrap_err().to_string();
    assert!(
        msg.contains("shape [2, 4] where the model expects [-1, 3]"),
        "{msg}"
    );

    let mut ragged = inputs(2);
    ragged[0] = Tensor::new("amount", vec![3], TensorData::Fp32(vec![0.0; 3])).unwrap();
    let msg = sig.check_inputs(&ragged).unwrap_err().to_string();
    assert!(msg.contains("all inputs must have the same rows"), "{msg}");

    let mut twice = inputs(2);
    twice.push(twice[0].clone());
    assert!(
        sig.check_inputs(&twice)
            .unwrap_err()
            .to_string()
            .contains("more than once")
    );
}

#[test]
fn version_queries_filter_on_tags_metrics_and_status() {
    let mut metadata = ModelMetadata::default();
    metadata.metrics.insert("roc_auc".into(), 0.91);
    metadata.tags.insert("team".into(), "risk".into());
    let mut v = ModelVersion {
        model: "fraud".into(),
        version: 2,
        flavor: "burn-mlp".into(),
        digest: ContentDigest::of(b"w"),
        size_bytes: 1,
        metadata,
        created_by: "ci".into(),
        created_at: Utc::now(),
        status: VersionStatus::Active,
        signature: None,
    };
    let q = |metric: f64, op: Comparison| VersionQuery {
        model: Some("fraud".into()),
        tags: BTreeMap::from([("team".into(), "risk".into())]),
        metrics: vec![MetricFilter {
            metric: "roc_auc".into(),
            op,
            value: metric,
        }],
        include_archived: false,
    };
    assert!(q(0.9, Comparison::Gt).matches(&v));
    assert!(!q(0.95, Comparison::Ge).matches(&v));
    assert!(
        !VersionQuery {
            model: Some("other".into()),
            ..Default::default()
        }
        .matches(&v)
    );
    v.status = VersionStatus::Archived;
    assert!(!q(0.9, Comparison::Gt).matches(&v));
    assert!(
        VersionQuery {
            include_archived: true,
            ..Default::default()
        }
        .matches(&v)
    );
    let json = serde_json::to_string(&v).unwrap();
    let back: ModelVersion = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
}

#[test]
fn the_matrix_form_maps_onto_numeric_inputs_or_is_refused_naming_why() {
    let numeric = Signature::new(
        vec![
            TensorSpec::new("amount", Datatype::Fp64, vec![-1]),
            TensorSpec::new("hour", Datatype::Int64, vec![-1]),
            TensorSpec::new("ratio", Datatype::Fp32, vec![-1]),
        ],
        vec![TensorSpec::new("probability", Datatype::Fp32, vec![-1])],
    )
    .with_matrix_input("input");
    let spec = numeric.matrix_input.clone().unwrap();
    assert_eq!(
        (spec.name.as_str(), spec.datatype, &spec.shape[..]),
        ("input", Datatype::Fp32, &[-1, 3][..])
    );
    let x = |w: usize, v: Vec<f32>| {
        Tensor::new("input", vec![v.len() / w, w], TensorData::Fp32(v)).unwrap()
    };
    let columns = numeric
        .columns_from_matrix(vec![x(3, vec![1.5, 2.0, 0.25, -3.0, 23.0, 1.0])])
        .unwrap();
    assert_eq!(columns[0].data, TensorData::Fp64(vec![1.5, -3.0]));
    assert_eq!(columns[1].data, TensorData::Int64(vec![2, 23]));
    assert_eq!(columns[2].data, TensorData::Fp32(vec![0.25, 1.0]));
    assert!(numeric.check_inputs(&columns).is_ok());
    // Per-column requests pass through untouched.
    let same = numeric.columns_from_matrix(columns.clone()).unwrap();
    assert_eq!(same, columns);
    // The wrong width, a fraction for an integer input, the wrong type.
    let e = numeric
        .columns_from_matrix(vec![x(2, vec![1.0, 2.0])])
        .unwrap_err();
    assert!(e.to_string().contains("input"), "{e}");
    let e = numeric
        .columns_from_matrix(vec![x(3, vec![1.0, 2.5, 3.0])])
        .unwrap_err();
    assert!(
        e.to_string().contains("hour") && e.to_string().contains("2.5"),
        "{e}"
    );
    let e = numeric
        .columns_from_matrix(vec![x(3, vec![1.0, 1e30, 3.0])])
        .unwrap_err();
    assert!(e.to_string().contains("hour"), "{e}");
    let doubles = Tensor::new("input", vec![1, 3], TensorData::Fp64(vec![1.0, 2.0, 3.0])).unwrap();
    assert!(numeric.columns_from_matrix(vec![doubles]).is_err());
    // Strings or matrix inputs have no matrix form; nor does a clash of names.
    assert!(
        signature()
            .with_matrix_input("input")
            .matrix_input
            .is_none()
    );
    let clash = Signature::new(
        vec![TensorSpec::new("input", Datatype::Fp32, vec![-1])],
        vec![],
    )
    .with_matrix_input("input");
    assert!(clash.matrix_input.is_none());
    // It survives serialization; an older signature without it still reads.
    let text = serde_json::to_string(&numeric).unwrap();
    assert_eq!(serde_json::from_str::<Signature>(&text).unwrap(), numeric);
    let old = r#"{"inputs":[],"outputs":[]}"#;
    assert_eq!(
        serde_json::from_str::<Signature>(old).unwrap().matrix_input,
        None
    );
}
