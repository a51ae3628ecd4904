//! Helpers for tests that run real r3fs processes on loopback: locate (and build) a workspace binary,
//! pick free ports, and keep children that are killed when the test ends, however it ends; and
//! [`cluster::Cluster`], a whole cluster of real daemons (mgmtd, storage, meta, FUSE) built with
//! a builder, for the integration tests of every layer.
//!
//! Invariant: depends only on proto crates (r3fs-rpc for mgmtd's admin API), which depend on
//! nothing else in the workspace, so any crate may use it as a dev-dependency without a cycle or
//! a layering edge. It drives the daemons through their binaries, never links them.

pub mod cluster;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of binary `bin` of workspace package `package`, built first (once per test process) with the
/// same cargo and profile as the running test, so a test never runs a stale binary.
///
/// Cargo releases its build lock while tests run, so building from inside a test is safe.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let profile_dir = profile_dir();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let key = format!("{package}/{bin}");
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&key) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", package, "--bin", bin]);
        if release {
            command.arg("--release");
        }
        let status = command.status().unwrap_or_else(|e| panic!("run cargo to build {key}: {e}"));
        assert!(status.success(), "cargo build of {key} failed");
        built.insert(key);
    }
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{} does not exist after building it", path.display());
    path
}

/// `target/<profile>`: the test binary lives in `target/<profile>/deps`.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let deps = exe.parent().expect("test executable has a parent directory");
    deps.parent().expect("deps directory has a parent").to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on loopback");
    listener.local_addr().expect("local address of the ephemeral listener").port()
}

/// A child process killed (SIGKILL) and reaped when dropped. Its stdout and stderr lines are
/// collected so a test can wait for a readiness line and print them on failure.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Spawns `command` with piped output.
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc { name: name.to_string(), child: Some(child), lines, seen: Vec::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until an output line contains `needle`; returns that line. Panics with the output so
    /// far after `timeout` or if the process exits.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line with {needle:?} within {timeout:?}; output:\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited before printing {needle:?}; output:\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// Lines printed so far (drains what is pending without waiting).
    pub fn output(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.send_sigterm();
        self.wait_exit(timeout).is_some_and(|status| status.success())
    }

    /// Sends SIGTERM without waiting (stop several processes at once, then [`Proc::wait_exit`]).
    pub fn send_sigterm(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own, not yet reaped child's pid has no memory-safety
            // preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status; `None` if it did
    /// not exit in time (it is killed then) or had already been reaped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Whether the process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `len` deterministic, well-mixed test bytes for `seed` (xorshift64): different seeds give
/// different bytes, so data read back from the wrong place or version does not match.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Polls `condition` every `interval` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_line_and_kills_on_drop() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo starting; echo ready on 1234; sleep 30"]);
        let mut proc = Proc::spawn("sh", command);
        let line = proc.wait_for_line("ready", Duration::from_secs(10));
        assert_eq!(line, "ready on 1234");
        let pid = proc.pid();
        drop(proc);
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "child {pid} survived drop");
    }

    #[test]
    fn patterns_differ_by_seed_and_repeat_for_one() {
        assert_eq!(pattern(7, 4096), pattern(7, 4096));
        assert_ne!(pattern(7, 4096), pattern(8, 4096));
        assert_eq!(pattern(7, 10), pattern(7, 4096)[..10]);
        let distinct: HashSet<u8> = pattern(1, 4096).into_iter().collect();
        assert!(distinct.len() > 200, "bytes are well mixed: {} distinct", distinct.len());
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("port from free_port binds");
    }
}
