//! The outside services some tests need, found or started once per test process.
//!
//! Each is taken from its `MLOPS_TEST_*` variable when set (as `.ci/run` does), or
//! started here on a free loopback port when its program is installed; the build
//! script (`build.rs`) tells which, and tests that need a missing one are ignored
//! with the reason.
//!
//! # Lifetime
//!
//! A server started here is shared by every test of the process (it lives in a
//! `static`), so it cannot be a [`ChildGuard`](mlops_core::testkit::process::ChildGuard):
//! statics are never dropped, and a guard's `Drop` would never run. Instead a small
//! shell watchdog starts the server and polls this process: once the process is
//! gone (however it ended: tests done, a panic, a signal) the watchdog stops the
//! server (TERM, then KILL after 5 s) and removes its log. The watchdog also stops
//! the server when it is itself interrupted or terminated; only a SIGKILL of the
//! watchdog itself could leave the server behind.
//!
//! Every wait here has a deadline and fails naming the service and showing its log.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a service may take to start (a Python server importing its
/// dependencies on a machine whose cores are all busy can take a while).
const START_LIMIT: Duration = Duration::from_secs(120);

/// The limit of one connection attempt, read or write on a service's socket.
const IO_LIMIT: Duration = Duration::from_secs(30);

/// A free loopback port (there is a small window in which another process could
/// take it; the service's start then fails loudly).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The loopback address of `port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A log file of a service, unique to this process and port, in the temp dir.
fn log_path(service: &str, port: u16) -> String {
    std::env::temp_dir()
        .join(format!(
            "mlops-test-{service}-{}-{port}.log",
            std::process::id()
        ))
        .display()
        .to_string()
}

/// The end of a service's log, for failure messages.
fn log_tail(log: &str) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("(no log at {log}: {e})"),
    }
}

/// Starts `command` (a shell command line, its output to `log`) under a watchdog
/// that stops it and removes `log` once this test process has exited (see the
/// module's documentation).
// The watchdog outlives every test by design (it ends after this process does),
// so it is never waited on: it cannot be a ChildGuard (see the module docs).
#[allow(clippy::zombie_processes)]
fn spawn_until_exit(command: &str, log: &str) {
    let parent = std::process::id();
    // `stop` runs once whichever way the watchdog ends: TERM to the server, up to
    // 5 s for it to go, then KILL, and the log is removed.
    let script = format!(
        "{command} >'{log}' 2>&1 </dev/null & child=$!
         stop() {{
             trap - EXIT INT TERM HUP
             kill -TERM \"$child\" 2>/dev/null
             i=0
             while kill -0 \"$child\" 2>/dev/null && [ \"$i\" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
             kill -KILL \"$child\" 2>/dev/null
             wait \"$child\" 2>/dev/null
             rm -f '{log}'
         }}
         trap stop EXIT
         trap 'stop; exit 1' INT TERM HUP
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

/// Waits until something listens on `port`, or panics naming the service and
/// showing its log.
fn wait_for(port: u16, what: &str, log: &str) {
    let deadline = Instant::now() + START_LIMIT;
    while TcpStream::connect_timeout(&loopback(port), IO_LIMIT).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port} within {START_LIMIT:?}; its log ({log}):\n{}",
            log_tail(log)
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
        let log = log_path("redis", port);
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
        let log = log_path("moto", port);
        spawn_until_exit(&format!("moto_server -H 127.0.0.1 -p {port}"), &log);
        wait_for(port, "moto_server", &log);
        create_bucket(port, "mlops-test", &log);
        Some((format!("http://127.0.0.1:{port}"), "mlops-test".into()))
    })
    .clone()
}

/// Creates `bucket` on the moto server at `port` (moto takes unsigned requests).
fn create_bucket(port: u16, bucket: &str, log: &str) {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let answer = TcpStream::connect_timeout(&loopback(port), IO_LIMIT).and_then(|mut s| {
            // A server that accepts but never answers must not hang the test.
            s.set_read_timeout(Some(IO_LIMIT))?;
            s.set_write_timeout(Some(IO_LIMIT))?;
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
                "moto did not create bucket {bucket} within {START_LIMIT:?}: {other:?}; \
                 its log ({log}):\n{}",
                log_tail(log)
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
