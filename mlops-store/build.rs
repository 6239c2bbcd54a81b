//! Test support only. Tells this crate's integration tests which outside programs
//! are installed, so a test whose service is missing is reported by `cargo test`
//! as ignored, with the reason, instead of passing without having run. Outside this
//! repository (a crate that depends on mlops-store) it probes nothing.

use std::path::Path;
use std::process::Command;

/// Whether `program` is an executable on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether a Python (`MLOPS_TEST_PYTHON`, else `python3`) imports `module`.
fn python_has(module: &str) -> bool {
    let python = std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    let cfgs = ["mlops_redis", "mlops_s3", "mlops_azure", "mlops_duckdb"];
    for cfg in cfgs {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in [
        "PATH",
        "MLOPS_TEST_PYTHON",
        "MLOPS_TEST_REDIS_URL",
        "MLOPS_TEST_S3_ENDPOINT",
        "MLOPS_TEST_AZURE_CONTAINER",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if !Path::new(&manifest).join("../.ci/run").is_file() {
        return;
    }
    let set = |var: &str| std::env::var_os(var).is_some();
    let found = [
        set("MLOPS_TEST_REDIS_URL") || on_path("redis-server"),
        set("MLOPS_TEST_S3_ENDPOINT") || on_path("moto_server"),
        set("MLOPS_TEST_AZURE_CONTAINER"),
        python_has("duckdb"),
    ];
    for (cfg, found) in cfgs.iter().zip(found) {
        if found {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
