//! The Rust half of `benches/drift_vs_scipy.py`: times the drift statistics on the
//! data files that script writes, and prints one JSON line per operation.
//!
//! Run through the script (it generates the data and times scipy in the same run):
//!
//! ```text
//! python3 benches/drift_vs_scipy.py
//! ```
//!
//! or by hand on a directory the script wrote: `cargo bench --bench drift_compare -- DIR`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use mlops::core::drift::{
    DriftDetector, TableDriftConfig, TableDriftDetector, chi_squared, ks_2samp, psi_numeric,
    wasserstein,
};

fn read_f64(path: &Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

fn read_i64(path: &Path) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// Best wall time of `repeats` runs, and the last result.
fn time<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..repeats {
        let start = Instant::now();
        let r = f();
        best = best.min(start.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.unwrap_or_else(f))
}

fn report(op: &str, seconds: f64, result: f64) {
    println!("{{\"op\": \"{op}\", \"seconds\": {seconds:.6}, \"result\": {result:.17e}}}");
}

fn table(dir: &Path, side: &str, numeric: usize, categorical: usize) -> RecordBatch {
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    for j in 0..numeric {
        let v = read_f64(&dir.join(format!("table_{side}_num{j}.f64")));
        columns.push((format!("num{j}"), Arc::new(Float64Array::from(v))));
    }
    for j in 0..categorical {
        let codes = read_i64(&dir.join(format!("table_{side}_cat{j}.i64")));
        let strings = StringArray::from_iter_values(codes.iter().map(|c| format!("cat{c}")));
        columns.push((format!("cat{j}"), Arc::new(strings)));
    }
    RecordBatch::try_from_iter(columns).unwrap_or_else(|e| panic!("table: {e}"))
}

fn main() {
    let dir: PathBuf = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("usage: cargo bench --bench drift_compare -- DATA_DIR (see benches/drift_vs_scipy.py)");
            std::process::exit(2);
        });
    let repeats = 5;

    let (a, b) = (
        read_f64(&dir.join("ks_ref.f64")),
        read_f64(&dir.join("ks_cur.f64")),
    );
    let (t, r) = time(repeats, || {
        ks_2samp(&a, &b).unwrap_or_else(|e| panic!("{e}"))
    });
    report("ks_2samp", t, r.p_value);
    let (t, w) = time(repeats, || {
        wasserstein(&a, &b).unwrap_or_else(|e| panic!("{e}"))
    });
    report("wasserstein", t, w);
    let (t, p) = time(repeats, || {
        psi_numeric(&a, &b).unwrap_or_else(|e| panic!("{e}"))
    });
    report("psi", t, p);

    let (cr, cc) = (
        read_i64(&dir.join("cat_ref.i64")),
        read_i64(&dir.join("cat_cur.i64")),
    );
    let (t, chi) = time(repeats, || {
        let count = |codes: &[i64]| {
            let mut counts = vec![0u64; 50];
            for &c in codes {
                counts[c as usize] += 1;
            }
            counts
        };
        chi_squared(&count(&cr), &count(&cc)).unwrap_or_else(|e| panic!("{e}"))
    });
    report("chi2_contingency", t, chi.p_value);

    let (reference, current) = (table(&dir, "ref", 15, 5), table(&dir, "cur", 15, 5));
    let config = TableDriftConfig::default();
    let (t, share) = time(repeats, || {
        let d = TableDriftDetector::fit(&reference, &config).unwrap_or_else(|e| panic!("{e}"));
        d.detect(&current)
            .unwrap_or_else(|e| panic!("{e}"))
            .overall
            .share_drifted
    });
    report("table_fit_and_detect", t, share);
    let d = TableDriftDetector::fit(&reference, &config).unwrap_or_else(|e| panic!("{e}"));
    let (t, share) = time(repeats, || {
        d.detect(&current)
            .unwrap_or_else(|e| panic!("{e}"))
            .overall
            .share_drifted
    });
    report("table_detect_prefitted", t, share);
}
