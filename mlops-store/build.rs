//! Test support only. Tells this crate's integration tests which outside programs
//! are installed, so a test whose service is missing is reported by `cargo test`
//! as ignored, with the reason, instead of passing without having run. With
//! `MLOPS_TEST_REQUIRE_ALL=1` (as CI sets it) a missing service fails the build
//! instead, naming what is missing and how to get it. Outside this repository (a
//! crate that depends on mlops-store) it probes nothing.
//!
//! When to run again: cargo reruns this script when one of the variables below
//! changes, and when a path given by `rerun-if-changed` has a newer modification
//! time than the last run (for a directory, the newest of everything under it,
//! walked recursively). So while a program is missing, every `PATH` directory is
//! watched (installing `redis-server` adds an entry to one of them), and while a
//! Python module is missing, the Python's site-packages directories are too
//! (`pip install duckdb` adds entries there). Only directories that exist are
//! named: cargo treats a missing path as always changed, and would rerun this
//! script, and rebuild the crate, on every build.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 (CI does) to make a missing service a build failure.
const REQUIRE_ALL: &str = "MLOPS_TEST_REQUIRE_ALL";

/// How long a probe (a Python import) may take before it counts as failed.
const PROBE_LIMIT: Duration = Duration::from_secs(120);

/// The directories of `PATH` that exist, absolute ones only.
fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .filter(|dir| dir.is_absolute() && dir.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `program` is an executable on `PATH`.
fn on_path(program: &str) -> bool {
    path_dirs().iter().any(|dir| dir.join(program).is_file())
}

/// Runs `program` with `args`; its standard output when it succeeds within
/// [`PROBE_LIMIT`], else why not (it is killed when it runs too long).
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("`{program}` could not be started: {e}"))?;
    let mut pipe = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(pipe) = pipe.as_mut() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    });
    let deadline = Instant::now() + PROBE_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{program}` was still running after {PROBE_LIMIT:?}"
                ));
            }
            Err(e) => return Err(format!("waiting for `{program}`: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("`{program} {}` failed ({status})", args.join(" ")));
    }
    // A child of it that kept the pipe open must not hang the build either.
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            return Err(format!("`{program}` exited, but its output stayed open"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reader.join().unwrap_or_default())
}

/// The Python the tests use: `MLOPS_TEST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether the Python imports `module`; the reason when not.
fn python_has(module: &str) -> Result<(), String> {
    run(&python(), &["-c", &format!("import {module}")]).map(|_| ())
}

/// The Python's site-packages directories that exist (none when it cannot run).
fn site_packages() -> Vec<PathBuf> {
    let script = "import site\n\
                  dirs = list(site.getsitepackages()) + [site.getusersitepackages()]\n\
                  print('\\n'.join(dirs))";
    run(&python(), &["-c", script])
        .map(|out| {
            out.lines()
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute() && dir.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// A test service: its cfg, whether it was found, and what to do when not.
struct Service {
    cfg: &'static str,
    what: &'static str,
    found: Result<(), String>,
    how: &'static str,
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
        REQUIRE_ALL,
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // Any rerun-if-changed turns off cargo's default (rerun when any file of the
    // package changes): this script itself is then the one file to watch.
    println!("cargo::rerun-if-changed=build.rs");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if !Path::new(&manifest).join("../.ci/run").is_file() {
        return;
    }
    let set = |var: &str| std::env::var_os(var).is_some();
    let program = |var: &str, name: &str| {
        if set(var) || on_path(name) {
            Ok(())
        } else {
            Err(format!("no `{name}` on PATH and {var} is not set"))
        }
    };
    let services = [
        Service {
            cfg: "mlops_redis",
            what: "Redis",
            found: program("MLOPS_TEST_REDIS_URL", "redis-server"),
            how: "apt install redis-server, or set MLOPS_TEST_REDIS_URL=redis://host:port",
        },
        Service {
            cfg: "mlops_s3",
            what: "an S3-compatible server (moto)",
            found: program("MLOPS_TEST_S3_ENDPOINT", "moto_server"),
            how: "pip install \"moto[server]\" (for moto_server on PATH), or set \
                  MLOPS_TEST_S3_ENDPOINT (and MLOPS_TEST_S3_BUCKET)",
        },
        Service {
            cfg: "mlops_azure",
            what: "an Azure Blob-compatible server (Azurite)",
            found: if set("MLOPS_TEST_AZURE_CONTAINER") {
                Ok(())
            } else {
                Err("MLOPS_TEST_AZURE_CONTAINER is not set".into())
            },
            how: "npm install -g azurite, start azurite-blob with a container created, and set \
                  MLOPS_TEST_AZURE_CONTAINER and AZURITE_BLOB_STORAGE_URL (as .ci/run does)",
        },
        Service {
            cfg: "mlops_duckdb",
            what: "a Python with duckdb",
            found: python_has("duckdb"),
            how: "pip install duckdb, or set MLOPS_TEST_PYTHON to a Python that has it",
        },
    ];
    let mut watch = BTreeSet::new();
    let mut missing = Vec::new();
    for s in &services {
        match &s.found {
            Ok(()) => println!("cargo::rustc-cfg={}", s.cfg),
            Err(why) => {
                match s.cfg {
                    // Only its variable tells (rerun-if-env-changed above).
                    "mlops_azure" => {}
                    // A Python, or the module added to its site-packages.
                    "mlops_duckdb" => {
                        watch.extend(path_dirs());
                        watch.extend(site_packages());
                    }
                    // A program added to a PATH directory.
                    _ => watch.extend(path_dirs()),
                }
                missing.push(format!("- {}: {why}; to get it: {}", s.what, s.how));
            }
        }
    }
    // A Python named by its path: its directory, for when it appears there.
    let python = python();
    let parent = Path::new(&python)
        .parent()
        .filter(|d| d.is_absolute() && d.is_dir());
    let no_duckdb = services
        .iter()
        .any(|s| s.cfg == "mlops_duckdb" && s.found.is_err());
    if let Some(dir) = parent.filter(|_| no_duckdb) {
        watch.insert(dir.to_path_buf());
    }
    for dir in &watch {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    if !missing.is_empty() && std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!(
            "{REQUIRE_ALL}=1, but the tests of mlops-store need what is missing here:\n{}\n\
             (see CONTRIBUTING.md; unset {REQUIRE_ALL} to run without them, their tests \
             then reported as ignored)",
            missing.join("\n")
        );
    }
}
