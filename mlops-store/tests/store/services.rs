//! The outside services some tests need, found or started once per test run.
//!
//! Each is taken from its `MLOPS_TEST_*` variable when set (as `.ci/run` does), or
//! started here on a free loopback port when its program is installed; the build
//! script (`build.rs`) tells which, and tests that need a missing one are ignored
//! with the reason. A started server is stopped when the test process exits (a
//! shell watchdog kills it once the process is gone), so nothing is left running.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A free loopback port (there is a small window in which another process could
/// take it; the service's start then fails loudly).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Runs `command` (a shell command line) in the background until this test
/// process exits.
// The watchdog outlives every test by design: it ends after this process does.
#[allow(clippy::zombie_processes)]
fn spawn_until_exit(command: &str, log: &str) {
    let parent = std::process::id();
    let script = format!(
        "{command} >{log} 2>&1 & child=$!; trap 'kill $child 2>/dev/null' EXIT; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
}

/// Waits until something listens on `port`, or panics naming the service and its log.
fn wait_for(port: u16, what: &str, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port} within 30 s; see {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Redis server's URL (only called by tests that the build script enables).
pub(crate) fn redis_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("MLOPS_TEST_REDIS_URL") {
            return url;
        }
        let port = free_port();
        let log = std::env::temp_dir().join(format!("mlops-test-redis-{port}.log"));
        let log = log.display().to_string();
        spawn_until_exit(
            &format!("redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no"),
            &log,
        );
        wait_for(port, "redis-server", &log);
        format!("redis://127.0.0.1:{port}")
    })
    .clone()
}

/// The S3-compatible server's endpoint and a bucket on it.
pub(crate) fn s3() -> Option<(String, String)> {
    static S3: OnceLock<Option<(String, String)>> = OnceLock::new();
    S3.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("MLOPS_TEST_S3_ENDPOINT") {
            let bucket =
                std::env::var("MLOPS_TEST_S3_BUCKET").unwrap_or_else(|_| "mlops-test".into());
            return Some((endpoint, bucket));
        }
        if !cfg!(mlops_s3) {
            return None;
        }
        let port = free_port();
        let log = std::env::temp_dir().join(format!("mlops-test-moto-{port}.log"));
        let log = log.display().to_string();
        spawn_until_exit(&format!("moto_server -H 127.0.0.1 -p {port}"), &log);
        wait_for(port, "moto_server", &log);
        create_bucket(port, "mlops-test");
        Some((format!("http://127.0.0.1:{port}"), "mlops-test".into()))
    })
    .clone()
}

/// Creates `bucket` on the moto server at `port` (moto takes unsigned requests).
fn create_bucket(port: u16, bucket: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            write!(
                s,
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        });
        match answer {
            Ok(reply) if reply.starts_with("HTTP/1.1 200") => return,
            other => assert!(
                Instant::now() < deadline,
                "moto did not create bucket {bucket}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Azure Blob-compatible server's container (Azurite, at
/// `AZURITE_BLOB_STORAGE_URL`), from `MLOPS_TEST_AZURE_CONTAINER`.
pub(crate) fn azure_container() -> Option<String> {
    std::env::var("MLOPS_TEST_AZURE_CONTAINER").ok()
}

/// A Python that imports duckdb: `MLOPS_TEST_PYTHON`, else `python3`.
pub(crate) fn duckdb_python() -> String {
    std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// What the storage suites ran on besides `memory://` and `file://`, for the
/// marker tests in `main.rs`.
pub(crate) fn cloud_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if s3().is_some() {
        out.push("s3");
    }
    if azure_container().is_some() {
        out.push("azure");
    }
    out
}
