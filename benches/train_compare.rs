//! The Rust half of `benches/train_vs_torch.py`: on the generated fraud-like data,
//! prints JSON lines with
//! - `epoch`: rows per second of one training epoch of a 20->64->64->1 MLP
//!   (ReLU, AdamW, batch 1024) on the 20 numeric features;
//! - `auc`: the ROC AUC on the held-out `valid` split after a fixed number of
//!   epochs of a 64->64 MLP on all 23 features, and of the linear model;
//! - `inference`: batch inference rows per second over the `valid` split, and
//!   single-request latency through the `Predictor` trait (1 and 64 rows).
//!
//! The device comes from `MLOPS_DEVICE` (`cpu`, `wgpu`, `cuda`; default `cpu`), so
//! the same benchmark runs unchanged on a GPU machine built with the matching
//! feature.
//!
//! ```text
//! python3 benches/train_vs_torch.py                       # everything, one run
//! cargo bench --bench train_compare -- DATA.parquet [EPOCHS]   # this side alone
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch, kernels::cmp::eq};
use arrow::datatypes::Int64Type;
use arrow_array::StringArray;
use mlops::core::{Predictor, Task};
use mlops::train::{
    ModelSpec, Progress, TabularTrainer, TrainConfig, TrainDevice, metrics, tensors_from_batch,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

fn read_parquet(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(1 << 20).build())
        .unwrap_or_else(|e| panic!("{e}"));
    let batches: Vec<RecordBatch> = reader
        .map(|b| b.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    concat_batches(&batches[0].schema(), &batches).unwrap_or_else(|e| panic!("{e}"))
}

fn split(data: &RecordBatch, which: &str) -> RecordBatch {
    let col = data
        .column_by_name("split")
        .unwrap_or_else(|| panic!("no split column"));
    let mask = eq(col, &StringArray::new_scalar(which)).unwrap_or_else(|e| panic!("{e}"));
    let out = filter_record_batch(data, &mask).unwrap_or_else(|e| panic!("{e}"));
    let keep: Vec<usize> = (0..out.num_columns())
        .filter(|&i| out.schema().field(i).name() != "split")
        .collect();
    out.project(&keep).unwrap_or_else(|e| panic!("{e}"))
}

fn config(model: ModelSpec, epochs: usize, device: TrainDevice) -> TrainConfig {
    let mut c = TrainConfig::new(Task::BinaryClassification, model);
    c.batch_size = 1024;
    c.epochs = epochs;
    c.early_stopping = None;
    c.progress = Progress::Hidden;
    c.device = device;
    c.seed = 1;
    c
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let path = args
        .first()
        .unwrap_or_else(|| panic!("usage: train_compare DATA.parquet [EPOCHS]"));
    let epochs: usize = args.get(1).and_then(|e| e.parse().ok()).unwrap_or(5);
    let device: TrainDevice = std::env::var("MLOPS_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let data = read_parquet(Path::new(path));
    let (train, valid) = (split(&data, "train"), split(&data, "valid"));
    let engine = format!("mlops {device}");

    // One epoch on the 20 numeric features: 20 -> 64 -> 64 -> 1.
    let numeric: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
    let mut c = config(ModelSpec::mlp([64, 64]), 1, device);
    c.features = Some(numeric);
    c.validation_fraction = 0.01;
    c.drift_reference = false;
    let out = TabularTrainer::new(c)
        .fit_detailed(&train, "is_fraud")
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{}",
        json!({"what": "epoch", "engine": engine, "rows_per_second": out.history[0].rows_per_second,
               "rows": (train.num_rows() as f64 * 0.99).round()})
    );
    // That model's batch inference over the valid split: the rows, columns and
    // layer sizes of PyTorch's forward pass in the script (ours also reads the
    // Arrow columns and standardizes them). The best of 5 passes after a
    // warm-up pass, as the script times PyTorch.
    let numeric_model = out.model;
    numeric_model
        .predict_batch(&valid)
        .unwrap_or_else(|e| panic!("{e}"));
    let best = (0..5)
        .map(|_| {
            let started = Instant::now();
            let scored = numeric_model
                .predict_batch(&valid)
                .unwrap_or_else(|e| panic!("{e}"));
            std::hint::black_box(scored);
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        json!({"what": "numeric_inference", "engine": engine,
               "batch_rows_per_second": valid.num_rows() as f64 / best,
               "rows": valid.num_rows()})
    );

    // Validation ROC AUC on the shared split after a fixed number of epochs.
    let y: Vec<usize> = valid
        .column_by_name("is_fraud")
        .unwrap_or_else(|| panic!("no label"))
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let mut inference_model = None;
    for (name, model, learning_rate) in [
        ("mlp 64x64", ModelSpec::mlp([64, 64]), 1e-3),
        ("linear, lr 1e-2", ModelSpec::Linear, 1e-2),
    ] {
        let mut c = config(model, epochs, device);
        c.learning_rate = learning_rate;
        c.validation_fraction = 0.05;
        let started = Instant::now();
        let out = TabularTrainer::new(c)
            .fit_detailed(&train, "is_fraud")
            .unwrap_or_else(|e| panic!("{e}"));
        let seconds = started.elapsed().as_secs_f64();
        let scores: Vec<f64> = out
            .model
            .predict_batch(&valid)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(f64::from)
            .collect();
        let auc = metrics::roc_auc(&y, &scores).unwrap_or_else(|e| panic!("{e}"));
        let ap = metrics::average_precision(&y, &scores).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{}",
            json!({"what": "auc", "engine": format!("{engine} {name}"), "epochs": epochs,
                   "roc_auc": auc, "average_precision": ap, "fit_seconds": seconds})
        );
        inference_model.get_or_insert(out.model);
    }

    // Inference: a whole split through the Arrow path, and single requests
    // through the Predictor trait as a server calls it.
    let Some(model) = inference_model else { return };
    let started = Instant::now();
    let scored = model
        .predict_batch(&valid)
        .unwrap_or_else(|e| panic!("{e}"));
    let batch_rps = scored.len() as f64 / started.elapsed().as_secs_f64();
    let predictor: Arc<dyn Predictor> = model;
    let mut latency = serde_json::Map::new();
    for rows in [1usize, 64] {
        let inputs = tensors_from_batch(&predictor.signature().inputs, &valid.slice(0, rows))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut micros: Vec<f64> = (0..2000)
            .map(|_| {
                let t = Instant::now();
                predictor.predict(&inputs).unwrap_or_else(|e| panic!("{e}"));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        micros.sort_by(f64::total_cmp);
        latency.insert(
            format!("{rows}_row_p50_us"),
            json!(micros[micros.len() / 2]),
        );
        latency.insert(
            format!("{rows}_row_p99_us"),
            json!(micros[micros.len() * 99 / 100]),
        );
    }
    println!(
        "{}",
        json!({"what": "inference", "engine": engine, "batch_rows_per_second": batch_rps,
               "rows": valid.num_rows(), "latency": latency})
    );
}
