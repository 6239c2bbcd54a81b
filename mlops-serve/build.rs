//! Test support only. Tells this crate's integration tests which outside tools are
//! installed (Python's tritonclient, Prometheus' promtool), so a test whose tool is
//! missing is reported by `cargo test` as ignored, with the reason, instead of
//! passing without having run. With `MLOPS_TEST_REQUIRE_ALL=1` (as CI sets it) a
//! missing tool fails the build instead, naming what is missing and how to get
//! it. Outside this repository it probes nothing.
//!
//! When to run again: cargo reruns this script when one of the variables below
//! changes, and when a path given by `rerun-if-changed` has a newer modification
//! time than the last run (for a directory, the newest of everything under it,
//! walked recursively). So while a tool is missing, every `PATH` directory is
//! watched (installing `promtool` or a Python adds an entry to one of them), and
//! while tritonclient is missing, the Python's site-packages directories are too
//! (`pip install` adds entries there). Only directories that exist are named:
//! cargo treats a missing path as always changed, and would rerun this script,
//! and rebuild the crate, on every build.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 (CI does) to make a missing tool a build failure.
const REQUIRE_ALL: &str = "MLOPS_TEST_REQUIRE_ALL";

/// How long a probe (a Python import, `promtool --version`) may take before it
/// counts as failed.
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

/// The Python's site-packages directories that exist (none when it cannot run).
fn site_packages(python: &str) -> Vec<PathBuf> {
    let script = "import site\n\
                  dirs = list(site.getsitepackages()) + [site.getusersitepackages()]\n\
                  print('\\n'.join(dirs))";
    run(python, &["-c", script])
        .map(|out| {
            out.lines()
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute() && dir.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    for cfg in ["mlops_tritonclient", "mlops_promtool"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in [
        "PATH",
        "MLOPS_TEST_PYTHON",
        "MLOPS_TEST_PROMTOOL",
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
    let python = std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let promtool = std::env::var("MLOPS_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut watch = BTreeSet::new();
    let mut missing = Vec::new();
    let triton = run(&python, &["-c", "import tritonclient.http, numpy"]).map(|_| ());
    let prom = run(&promtool, &["--version"]).map(|_| ());
    match &triton {
        Ok(()) => println!("cargo::rustc-cfg=mlops_tritonclient"),
        Err(why) => {
            // A Python added to PATH, or the modules to its site-packages.
            watch.extend(path_dirs());
            watch.extend(site_packages(&python));
            missing.push(format!(
                "- Python's tritonclient: {why}; to get it: pip install \"tritonclient[http]\" \
                 numpy, or set MLOPS_TEST_PYTHON to a Python that has them"
            ));
        }
    }
    match &prom {
        Ok(()) => println!("cargo::rustc-cfg=mlops_promtool"),
        Err(why) => {
            // promtool added to a PATH directory.
            watch.extend(path_dirs());
            missing.push(format!(
                "- Prometheus' promtool: {why}; to get it: apt install prometheus, or set \
                 MLOPS_TEST_PROMTOOL to its path"
            ));
        }
    }
    // A tool named by its path: its directory, for when it appears there.
    for (tool, is_missing) in [(&python, triton.is_err()), (&promtool, prom.is_err())] {
        let parent = Path::new(tool.as_str()).parent();
        if let Some(dir) = parent.filter(|d| is_missing && d.is_absolute() && d.is_dir()) {
            watch.insert(dir.to_path_buf());
        }
    }
    for dir in &watch {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    if !missing.is_empty() && std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!(
            "{REQUIRE_ALL}=1, but the tests of mlops-serve need what is missing here:\n{}\n\
             (see CONTRIBUTING.md; unset {REQUIRE_ALL} to run without them, their tests \
             then reported as ignored)",
            missing.join("\n")
        );
    }
}
