//! The Rust half of `benches/registry_vs_mlflow.py`: registers 100 versions of a
//! 100 KB model on a `file://` root, loads the latest by alias and lists versions,
//! printing one JSON line per operation.
//!
//! ```text
//! python3 benches/registry_vs_mlflow.py            # both sides, one run
//! cargo bench --bench registry_compare -- DIR      # this side alone, in DIR
//! ```

use std::path::PathBuf;
use std::time::Instant;

use mlops::core::model::{ModelArtifact, ModelMetadata, ModelRegistry, VersionSelector};
use mlops::store::{ObjectRegistry, StoreRoot};

const VERSIONS: usize = 100;
const MODEL_BYTES: usize = 100 * 1024;
const LOADS: usize = 50;

fn report(op: &str, seconds: f64, count: usize) {
    println!("{{\"op\": \"{op}\", \"seconds\": {seconds:.6}, \"count\": {count}}}");
}

fn main() {
    let dir: PathBuf = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("mlops-registry-bench-{}", std::process::id()))
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let root =
            StoreRoot::open(&format!("file://{}", dir.display())).unwrap_or_else(|e| panic!("{e}"));
        let registry = ObjectRegistry::new(&root);

        let start = Instant::now();
        let mut last = 0;
        for i in 0..VERSIONS {
            let mut bytes = vec![0u8; MODEL_BYTES];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let mut metadata = ModelMetadata::default();
            metadata
                .metrics
                .insert("roc_auc".into(), 0.8 + i as f64 / 1000.0);
            let v = registry
                .register("bench-model", ModelArtifact::new("bench", bytes), metadata)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            last = v.version;
        }
        report(
            "register_100_versions",
            start.elapsed().as_secs_f64(),
            VERSIONS,
        );

        registry
            .set_alias("bench-model", "champion", last)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let champion: VersionSelector = "@champion".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut best = f64::INFINITY;
        for _ in 0..LOADS {
            let start = Instant::now();
            let (_, artifact) = registry
                .load_artifact("bench-model", &champion)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(artifact.bytes.len(), MODEL_BYTES);
            best = best.min(start.elapsed().as_secs_f64());
        }
        report("load_latest_by_alias", best, 1);

        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = Instant::now();
            let versions = registry
                .list_versions("bench-model")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(versions.len(), VERSIONS);
            best = best.min(start.elapsed().as_secs_f64());
        }
        report("list_versions", best, VERSIONS);
    });
}
