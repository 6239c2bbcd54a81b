//! Test support only. Tells this crate's integration tests which outside tools are
//! installed (Python's tritonclient, Prometheus' promtool), so a test whose tool is
//! missing is reported by `cargo test` as ignored, with the reason, instead of
//! passing without having run. Outside this repository it probes nothing.

use std::path::Path;
use std::process::Command;

fn main() {
    for cfg in ["mlops_tritonclient", "mlops_promtool"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in ["PATH", "MLOPS_TEST_PYTHON", "MLOPS_TEST_PROMTOOL"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if !Path::new(&manifest).join("../.ci/run").is_file() {
        return;
    }
    let python = std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs(&python, &["-c", "import tritonclient.http, numpy"]) {
        println!("cargo::rustc-cfg=mlops_tritonclient");
    }
    let promtool = std::env::var("MLOPS_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    if runs(&promtool, &["--version"]) {
        println!("cargo::rustc-cfg=mlops_promtool");
    }
}
