//! Batch scoring: Parquet files, a snapshot or in-memory batches through a
//! predictor, predictions next to the keys, committed by a manifest, recorded
//! in the tracker and the audit log; bad input and a storage failure half-way
//! commit nothing.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use bytes::Bytes;
use mlops_core::audit::AuditLog;
use mlops_core::inference::{Datatype, Tensor, TensorData, TensorSpec};
use mlops_core::model::Signature;
use mlops_core::tracking::{ExperimentTracker, RunStatus};
use mlops_core::{Error, Predictor};
use mlops_store::{
    FaultyStore, ObjectAuditLog, ObjectSnapshotStore, ObjectTracker, ScoreJob, ScoreManifest,
    ScoreProgress, ScoreRecorders, ScoreSource, StoreRoot, score_dataset,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::roots;

/// `y = 2 x + z` over an input `x` (`[N]`) and `z`; with `matrix`, one input
/// `f` of shape `[N, 2]` and the output `[N, 2]` (`[2 f0, 3 f1]`).
#[derive(Debug)]
struct Doubler {
    signature: Signature,
    matrix: bool,
}

impl Doubler {
    fn columns() -> Self {
        Self {
            signature: Signature {
                inputs: vec![
                    TensorSpec::new("x", Datatype::Fp64, vec![-1]),
                    TensorSpec::new("z", Datatype::Fp64, vec![-1]),
                ],
                outputs: vec![TensorSpec::new("y", Datatype::Fp64, vec![-1])],
                matrix_input: None,
            },
            matrix: false,
        }
    }

    fn matrix() -> Self {
        Self {
            signature: Signature {
                inputs: vec![TensorSpec::new("f", Datatype::Fp32, vec![-1, 2])],
                outputs: vec![TensorSpec::new("g", Datatype::Fp32, vec![-1, 2])],
                matrix_input: None,
            },
            matrix: true,
        }
    }
}

impl Predictor for Doubler {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn predict(&self, inputs: &[Tensor]) -> mlops_core::Result<Vec<Tensor>> {
        let checked = self.signature.check_inputs(inputs)?;
        if self.matrix {
            let TensorData::Fp32(f) = &checked[0].data else {
                unreachable!()
            };
            let g: Vec<f32> = f
                .chunks_exact(2)
                .flat_map(|r| [2.0 * r[0], 3.0 * r[1]])
                .collect();
            return Ok(vec![Tensor::new(
                "g",
                vec![g.len() / 2, 2],
                TensorData::Fp32(g),
            )?]);
        }
        let (TensorData::Fp64(x), TensorData::Fp64(z)) = (&checked[0].data, &checked[1].data)
        else {
            unreachable!()
        };
        let y: Vec<f64> = x.iter().zip(z).map(|(x, z)| 2.0 * x + z).collect();
        Ok(vec![Tensor::new("y", vec![y.len()], TensorData::Fp64(y))?])
    }
}

fn rows(start: i64, n: i64) -> RecordBatch {
    let id: Vec<i64> = (start..start + n).collect();
    let x: Vec<f64> = id.iter().map(|&i| i as f64 * 0.5).collect();
    let z: Vec<f64> = id.iter().map(|&i| (i % 7) as f64).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(id)) as _),
        ("x", Arc::new(Float64Array::from(x)) as _),
        ("z", Arc::new(Float64Array::from(z)) as _),
    ])
    .unwrap()
}

fn parquet(batch: &RecordBatch) -> Bytes {
    let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    Bytes::from(w.into_inner().unwrap())
}

/// Every row of a committed output, by its manifest.
async fn read_output(root: &StoreRoot, manifest: &ScoreManifest) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for part in &manifest.parts {
        let bytes = root.get(part).await.unwrap();
        for b in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            out.push(b.unwrap());
        }
    }
    out
}

/// Checks that the output holds ids `0..n` in order with `y = 2 x + z`.
fn check_doubled(batches: &[RecordBatch], n: i64) {
    let mut next = 0i64;
    for b in batches {
        assert_eq!(
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["id", "y"]
        );
        let id = b.column(0).as_primitive::<Int64Type>();
        let y = b.column(1).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert_eq!(id.value(i), next, "rows in input order");
            let want = next as f64 * 0.5 * 2.0 + (next % 7) as f64;
            assert_eq!(y.value(i), want, "row {next}");
            next += 1;
        }
    }
    assert_eq!(next, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_through_the_model_into_committed_parts() {
    for root in roots("score-files") {
        root.put("in/a.parquet", parquet(&rows(0, 6000)))
            .await
            .unwrap();
        root.put("in/b.parquet", parquet(&rows(6000, 4000)))
            .await
            .unwrap();
        let tracker: Arc<dyn ExperimentTracker> = Arc::new(ObjectTracker::new(&root));
        let audit = Arc::new(ObjectAuditLog::new(&root));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let told = seen.clone();
        let recorders = ScoreRecorders {
            tracker: Some(tracker.clone()),
            audit: Some(audit.clone() as Arc<dyn AuditLog>),
            progress: Some(ScoreProgress(Arc::new(move |rows| {
                told.lock().unwrap().push(rows)
            }))),
        };
        let mut job = ScoreJob::new(
            "fraud",
            3,
            ScoreSource::Files(vec!["in/a.parquet".into(), "in/b.parquet".into()]),
            "scores/fraud-v3",
        )
        .with_keys(&["id"]);
        job.batch_rows = 1000;
        job.part_rows = 3000;
        let manifest = score_dataset(&root, Arc::new(Doubler::columns()), &job, &recorders)
            .await
            .unwrap();
        assert_eq!(manifest.rows, 10_000);
        assert_eq!(manifest.parts.len(), 4, "{:?}", manifest.parts);
        assert_eq!(manifest.columns, ["id", "y"]);
        // Progress after every batch of 1,000 rows, up to the total.
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert_eq!(seen, (1..=10).map(|k| k * 1000).collect::<Vec<u64>>());
        check_doubled(&read_output(&root, &manifest).await, 10_000);
        // The manifest on storage is the one returned.
        let stored: ScoreManifest =
            serde_json::from_slice(&root.get("scores/fraud-v3/_manifest.json").await.unwrap())
                .unwrap();
        assert_eq!(stored, manifest);
        // Recorded: a finished run with its lineage and rows; one audit entry.
        let run = tracker
            .get_run(manifest.run_id.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Finished);
        assert_eq!(run.params["model"], "fraud");
        assert_eq!(run.params["version"], "3");
        assert_eq!(run.latest_metrics["rows"], 10_000.0);
        let entries = audit.entries(0, 100).await.unwrap();
        let entry = entries.iter().find(|e| e.event.action == "score").unwrap();
        assert_eq!(entry.event.target, "model fraud version 3");
        assert_eq!(entry.event.details["rows"], "10000");
        // A finished output is never overwritten.
        let again = score_dataset(&root, Arc::new(Doubler::columns()), &job, &recorders).await;
        assert!(matches!(again, Err(Error::Conflict { .. })), "{again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_batches_and_matrix_inputs_are_scored() {
    let root = crate::memory_root();
    let snapshots = ObjectSnapshotStore::new(&root);
    let snap = snapshots
        .snapshot_batches(&[rows(0, 700), rows(700, 300)], "hold-out")
        .await
        .unwrap();
    let job = ScoreJob::new("m", 1, ScoreSource::Snapshot(snap.id.clone()), "out/snap")
        .with_keys(&["id"]);
    let manifest = score_dataset(
        &root,
        Arc::new(Doubler::columns()),
        &job,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(manifest.snapshot_id.as_deref(), Some(snap.id.as_str()));
    check_doubled(&read_output(&root, &manifest).await, 1000);

    let job = ScoreJob::new("m", 1, ScoreSource::Batches(vec![rows(0, 500)]), "out/mem")
        .with_keys(&["id"]);
    let manifest = score_dataset(
        &root,
        Arc::new(Doubler::columns()),
        &job,
        &Default::default(),
    )
    .await
    .unwrap();
    check_doubled(&read_output(&root, &manifest).await, 500);

    // A matrix input from columns f[0], f[1]; a matrix output as g[0], g[1].
    let f0: Vec<f64> = (0..10).map(f64::from).collect();
    let f1: Vec<f64> = (0..10).map(|i| f64::from(i) + 0.5).collect();
    let batch = RecordBatch::try_from_iter([
        ("f[0]", Arc::new(Float64Array::from(f0.clone())) as _),
        ("f[1]", Arc::new(Float64Array::from(f1.clone())) as _),
    ])
    .unwrap();
    let job = ScoreJob::new("m", 1, ScoreSource::Batches(vec![batch]), "out/matrix");
    let manifest = score_dataset(
        &root,
        Arc::new(Doubler::matrix()),
        &job,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(manifest.columns, ["g[0]", "g[1]"]);
    let out = read_output(&root, &manifest).await;
    let g0 = out[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Float32Type>();
    let g1 = out[0]
        .column(1)
        .as_primitive::<arrow::datatypes::Float32Type>();
    for i in 0..10 {
        assert_eq!(f64::from(g0.value(i)), 2.0 * f0[i]);
        assert_eq!(f64::from(g1.value(i)), 3.0 * f1[i]);
    }
}

/// Expects an error naming `needle`, and no manifest under `output`.
async fn refused(root: &StoreRoot, job: &ScoreJob, predictor: Arc<dyn Predictor>, needle: &str) {
    let result = score_dataset(root, predictor, job, &Default::default()).await;
    let Err(e) = result else {
        panic!("scored: {result:?}")
    };
    assert!(e.to_string().contains(needle), "{needle:?} not in: {e}");
    let manifest = format!("{}/_manifest.json", job.output);
    assert!(
        root.get_opt(&manifest).await.unwrap().is_none(),
        "committed after: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_storage_failures_commit_nothing() {
    let root = crate::memory_root();
    let doubler = || Arc::new(Doubler::columns()) as Arc<dyn Predictor>;
    root.put("in/ok.parquet", parquet(&rows(0, 100)))
        .await
        .unwrap();
    root.put("in/junk.parquet", Bytes::from_static(b"not parquet"))
        .await
        .unwrap();
    let no_z = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2])) as _),
        ("x", Arc::new(Float64Array::from(vec![1.0, 2.0])) as _),
    ])
    .unwrap();
    let with_null = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2])) as _),
        (
            "x",
            Arc::new(Float64Array::from(vec![Some(1.0), None])) as _,
        ),
        ("z", Arc::new(Float64Array::from(vec![1.0, 2.0])) as _),
    ])
    .unwrap();
    assert_eq!(with_null.column(1).null_count(), 1);
    let cases: Vec<(ScoreJob, &str)> = vec![
        (
            ScoreJob::new("m", 1, ScoreSource::Batches(vec![no_z]), "out/a"),
            "'z'",
        ),
        (
            ScoreJob::new("m", 1, ScoreSource::Batches(vec![with_null]), "out/b"),
            "'x'",
        ),
        (
            ScoreJob::new("m", 1, ScoreSource::Batches(vec![rows(0, 5)]), "out/c")
                .with_keys(&["account"]),
            "account",
        ),
        (
            ScoreJob::new(
                "m",
                1,
                ScoreSource::Files(vec!["in/ok.parquet".into(), "in/junk.parquet".into()]),
                "out/d",
            ),
            "in/junk.parquet",
        ),
        (
            ScoreJob::new(
                "m",
                1,
                ScoreSource::Files(vec!["in/missing.parquet".into()]),
                "out/e",
            ),
            "in/missing.parquet",
        ),
        (
            ScoreJob::new("m", 1, ScoreSource::Snapshot("nope".into()), "out/f"),
            "nope",
        ),
        (
            ScoreJob::new("m", 1, ScoreSource::Batches(vec![rows(0, 5)]), ""),
            "output",
        ),
    ];
    for (job, needle) in &cases {
        refused(&root, job, doubler(), needle).await;
    }
    let mut zero = ScoreJob::new("m", 1, ScoreSource::Batches(vec![rows(0, 5)]), "out/g");
    zero.batch_rows = 0;
    refused(&root, &zero, doubler(), "batch_rows").await;

    // A store that fails half-way (on the second part's write): nothing is
    // committed, and the same job succeeds once the store recovers.
    let faulty = Arc::new(FaultyStore::new(root.store().clone()));
    let flaky = root.with_store(faulty.clone());
    let mut job = ScoreJob::new(
        "m",
        1,
        ScoreSource::Batches(vec![rows(0, 3000)]),
        "out/flaky",
    )
    .with_keys(&["id"]);
    job.batch_rows = 500;
    job.part_rows = 1000;
    // Calls: the manifest check, then the first part's write, then the second's.
    faulty.fail_call(3);
    let result = score_dataset(&flaky, doubler(), &job, &Default::default()).await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        flaky
            .get_opt("out/flaky/_manifest.json")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        flaky
            .get_opt("out/flaky/part-00000.parquet")
            .await
            .unwrap()
            .is_some(),
        "the failure came half-way, after the first part was stored"
    );
    faulty.clear();
    let manifest = score_dataset(&flaky, doubler(), &job, &Default::default())
        .await
        .unwrap();
    check_doubled(&read_output(&flaky, &manifest).await, 3000);
}
