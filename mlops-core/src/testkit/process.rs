//! Child processes in tests that cannot hang and never outlive their test.
//!
//! `std::process::Child` is neither killed when dropped nor waited on with a
//! deadline, and a blocking read of its pipes waits forever on a child that
//! prints nothing. [`ChildGuard`] kills and reaps its process on every exit path
//! (a failed assertion included); [`Lines`] reads a pipe on a thread of its own
//! so every wait for a line has a deadline; [`output_within`] is
//! `Command::output` with one. Every wait that runs out panics, naming what it
//! waited for and what the process printed, so a hang becomes a failure with a
//! message.
//!
//! ```no_run
//! use std::process::{Command, Stdio};
//! use std::time::Duration;
//! use mlops_core::testkit::process::ChildGuard;
//!
//! let mut server = ChildGuard::spawn(
//!     "the server",
//!     Command::new("my-server").stdout(Stdio::piped()),
//! );
//! let lines = server.stdout_lines();
//! let addr = lines.wait_for("its address", Duration::from_secs(60), |l| {
//!     l.strip_prefix("listening on ").map(str::to_owned)
//! });
//! # let _ = addr;
//! server.signal("TERM");
//! assert!(server.wait_within(Duration::from_secs(30)).success());
//! // Dropped on any path: killed and reaped if still running.
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many of the last lines a [`Lines`] keeps to show when a wait fails.
const KEPT_LINES: usize = 40;

/// A spawned child process that is killed and reaped when the guard is dropped,
/// unless it has already been waited on.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    what: String,
    reaped: bool,
}

impl ChildGuard {
    /// Spawns `command`; panics naming `what` when it cannot start.
    #[track_caller]
    pub fn spawn(what: &str, command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {what} ({command:?}): {e}"));
        Self {
            child,
            what: what.to_owned(),
            reaped: false,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, for anything this guard does not wrap (its stdin, say).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its standard output, read line by line on a thread (it must have been
    /// spawned with `Stdio::piped()` for stdout; panics otherwise).
    #[track_caller]
    pub fn stdout_lines(&mut self) -> Lines {
        let out: ChildStdout = self
            .child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("{}: stdout is not piped, or already taken", self.what));
        Lines::spawn(&format!("{} (stdout)", self.what), out)
    }

    /// Its standard error, read line by line on a thread (spawned with
    /// `Stdio::piped()` for stderr; panics otherwise).
    #[track_caller]
    pub fn stderr_lines(&mut self) -> Lines {
        let err: ChildStderr = self
            .child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("{}: stderr is not piped, or already taken", self.what));
        Lines::spawn(&format!("{} (stderr)", self.what), err)
    }

    /// Sends a signal by name (`"TERM"`, `"HUP"`, `"KILL"`) with `kill(1)`;
    /// panics when it cannot be delivered.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let out = output_within(
            &format!("kill -{name} {}", self.what),
            Command::new("kill").args(["-s", name, &self.id().to_string()]),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "could not send SIG{name} to {}: {}",
            self.what,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its exit status if it has exited by `limit`, else `None` (it keeps running).
    #[track_caller]
    pub fn try_wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return Some(status);
                }
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        }
    }

    /// Its exit status; panics naming the process when it is still running after
    /// `limit` (the guard then kills it).
    #[track_caller]
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        self.try_wait_within(limit).unwrap_or_else(|| {
            panic!(
                "{} (pid {}) was still running after {limit:?}",
                self.what,
                self.id()
            )
        })
    }

    /// Whether it is still running (reaps it when it has exited).
    pub fn is_running(&mut self) -> bool {
        self.try_wait_within(Duration::ZERO).is_none()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SIGKILL cannot be caught; the wait that follows reaps the zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of a pipe, read on a thread of its own; every wait has a deadline.
#[derive(Debug)]
pub struct Lines {
    what: String,
    receiver: Receiver<String>,
    seen: Arc<Mutex<VecDeque<String>>>,
}

impl Lines {
    /// Reads `pipe` line by line on a new thread until it closes.
    pub fn spawn(what: &str, pipe: impl Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        let seen = Arc::new(Mutex::new(VecDeque::new()));
        let kept = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == KEPT_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                // The receiver may be gone; the pipe is still drained.
                let _ = sender.send(line);
            }
        });
        Self {
            what: what.to_owned(),
            receiver,
            seen,
        }
    }

    /// The next line, `None` when the pipe closed; panics when none came within
    /// `limit`.
    #[track_caller]
    pub fn next_within(&self, limit: Duration) -> Option<String> {
        match self.receiver.recv_timeout(limit) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no line within {limit:?}; last lines:\n{}",
                self.what,
                self.recent()
            ),
        }
    }

    /// The first value `found` returns for a line read within `limit`; panics
    /// naming `what` (and the last lines read) when the pipe closes or the time
    /// runs out first.
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = found(&line) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: closed before {what}; last lines:\n{}",
                    self.what,
                    self.recent()
                ),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no {what} within {limit:?}; last lines:\n{}",
                    self.what,
                    self.recent()
                ),
            }
        }
    }

    /// Every line received so far and not yet taken, without waiting.
    pub fn drain(&self) -> Vec<String> {
        self.receiver.try_iter().collect()
    }

    /// The last lines read (at most 40), for failure messages.
    pub fn recent(&self) -> String {
        self.seen
            .lock()
            .map(|s| s.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// `command.output()` with a deadline: its exit status and everything it wrote.
/// Panics naming `what` when it cannot start or is still running after `limit`
/// (it is killed then, and the message shows what it wrote).
#[track_caller]
pub fn output_within(what: &str, command: &mut Command, limit: Duration) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(what, command);
    let collect = |pipe: Option<Box<dyn Read + Send>>| -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = collect(
        child
            .child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let Some(status) = child.try_wait_within(limit) else {
        drop(child); // killed: the pipes close and the readers finish
        let err = join_within(stderr, Duration::from_secs(5)).unwrap_or_default();
        panic!(
            "{what} was still running after {limit:?}; it wrote to stderr:\n{}",
            String::from_utf8_lossy(&err)
        );
    };
    // A grandchild that inherited the pipes could keep them open: bound the
    // wait for the readers too.
    let limit = Duration::from_secs(10);
    let open = || panic!("{what} exited but its output stayed open (a child of it still runs?)");
    let stdout = join_within(stdout, limit).unwrap_or_else(open);
    let stderr = join_within(stderr, limit).unwrap_or_else(open);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A reader thread's bytes, or `None` when it has not finished within `limit`.
fn join_within(reader: JoinHandle<Vec<u8>>, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(reader.join().unwrap_or_default())
}

/// Polls `done` until it returns true; panics naming `what` when it has not
/// after `limit`. For state that another process or thread changes (a file
/// appears, a port opens); async tests wait on their own runtime's timers.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_process() {
        let mut guard = ChildGuard::spawn("sleep", Command::new("sleep").arg("600"));
        let pid = guard.id();
        assert!(guard.is_running());
        drop(guard);
        // Reaped: no /proc entry (not even a zombie) is left.
        wait_until("the process is gone", Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    #[test]
    fn waits_run_out_with_a_message_naming_what() {
        let mut guard = ChildGuard::spawn(
            "a quiet sleeper",
            Command::new("sleep").arg("600").stdout(Stdio::piped()),
        );
        let lines = guard.stdout_lines();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lines.wait_for("its banner", Duration::from_millis(50), |_| Some(()))
        }))
        .expect_err("the wait must run out");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("a quiet sleeper") && msg.contains("its banner"),
            "{msg}"
        );
        assert!(guard.try_wait_within(Duration::from_millis(20)).is_none());
    }

    #[test]
    fn output_within_returns_what_was_written_or_kills() {
        let out = output_within(
            "sh",
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        let err = std::panic::catch_unwind(|| {
            output_within(
                "a hung command",
                Command::new("sh").args(["-c", "echo started >&2; exec sleep 600"]),
                Duration::from_millis(200),
            )
        })
        .expect_err("the command must be cut off");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("a hung command") && msg.contains("started"),
            "{msg}"
        );
    }

    #[test]
    fn lines_arrive_in_order_and_end_when_the_pipe_closes() {
        let mut guard = ChildGuard::spawn(
            "printf",
            Command::new("printf")
                .arg("a\\nb\\n")
                .stdout(Stdio::piped()),
        );
        let lines = guard.stdout_lines();
        let limit = Duration::from_secs(30);
        assert_eq!(lines.next_within(limit).as_deref(), Some("a"));
        assert_eq!(lines.next_within(limit).as_deref(), Some("b"));
        assert_eq!(lines.next_within(limit), None);
        assert!(guard.wait_within(limit).success());
    }
}
