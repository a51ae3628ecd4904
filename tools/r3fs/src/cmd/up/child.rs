//! One daemon of the local cluster as a child process: its output appended to a log file, its
//! readiness line found by reading that file, a bounded clean stop (SIGTERM, then SIGKILL), and
//! the tail of its log for an operator when it dies.
//!
//! Children run in their own process group, so a Ctrl-C at the terminal reaches `r3fs up` only
//! and the launcher decides the order in which daemons stop. Each child also gets
//! `PR_SET_PDEATHSIG = SIGTERM`: if the launcher itself is killed (SIGKILL), the kernel tells its
//! children to stop instead of leaving them running without a supervisor.

use anyhow::{Context, bail};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of a dead child's log shown to the operator.
pub const LOG_TAIL_LINES: usize = 30;
/// Most bytes read back from a log file at once (readiness scan and tail).
const LOG_READ_BYTES_MAX: u64 = 1 << 20;
/// How often readiness and liveness are polled.
pub const POLL_INTERVAL_MS: u64 = 50;

#[derive(Debug)]
pub struct Daemon {
    /// Short name used in messages and as the log file's stem ("mgmtd", "storage-101", ...).
    pub name: String,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Log length when this run of the daemon started: readiness lines are searched after it.
    log_start: u64,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `command` with stdin closed and stdout + stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Daemon> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log file {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().with_context(|| format!("clone {}", log_path.display()))?;
        command.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(err));
        command.process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
        // it is the only call made between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command.spawn().with_context(|| format!("start {name} ({program})"))?;
        Ok(Daemon {
            name: name.to_string(),
            log_path: log_path.to_path_buf(),
            child: Some(child),
            log_start,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the child has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Output of this run of the daemon so far (at most the last [`LOG_READ_BYTES_MAX`] bytes).
    pub fn output(&self) -> String {
        read_log(&self.log_path, self.log_start).unwrap_or_default()
    }

    /// The last `lines` lines of this run's output.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.output();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until this run's output has a line containing `needle`; returns the line. Fails
    /// with the log tail if the child exits first or `timeout` passes, or if `interrupted`
    /// returns true (a stop signal arrived).
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
        interrupted: &dyn Fn() -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the log before checking for exit, so a line written just before a clean exit
            // still counts.
            let exited = self.exited();
            if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(status) = exited {
                bail!("{}", self.death_report(status));
            }
            if interrupted() {
                bail!("interrupted while waiting for {} to start", self.name);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} printed no {needle:?} line within {timeout:?}; last lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    indent(&self.tail(LOG_TAIL_LINES))
                );
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// What an operator needs when the daemon died: how, and the end of its log.
    pub fn death_report(&self, status: ExitStatus) -> String {
        format!(
            "{} (pid {}) exited unexpectedly ({status}); last lines of {}:\n{}",
            self.name,
            self.pid(),
            self.log_path.display(),
            indent(&self.tail(LOG_TAIL_LINES))
        )
    }

    /// Sends SIGTERM (once; a no-op after exit).
    pub fn signal_stop(&mut self) {
        if self.exited().is_none()
            && let Some(child) = &self.child
        {
            // SAFETY: kill(2) on our own unreaped child's pid has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after it. Returns the exit status
    /// and whether the stop was clean (exit 0 within the grace period).
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(status) = self.exited() {
            return (Some(status), false);
        }
        self.signal_stop();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return (Some(status), status.success());
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
        (self.exit, false)
    }
}

impl Drop for Daemon {
    /// Never leave a daemon behind: a launcher that returns early (an error path) kills what it
    /// started. The orderly path stops every daemon before this runs.
    fn drop(&mut self) {
        if self.exited().is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_log(path: &Path, start: u64) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let from = start.max(len.saturating_sub(LOG_READ_BYTES_MAX));
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(LOG_READ_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn finds_the_readiness_line_of_this_run_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("d.log");
        std::fs::write(&log, "old run: ready at 1\n").expect("seed the log");
        let mut daemon =
            Daemon::spawn("d", sh("echo starting; sleep 0.2; echo ready at 2; sleep 30"), &log)
                .expect("spawn");
        let line =
            daemon.wait_for_line("ready at", Duration::from_secs(20), &|| false).expect("ready");
        assert_eq!(line, "ready at 2");
        let (status, clean) = daemon.stop(Duration::from_secs(10));
        // sh dies of SIGTERM: not a clean exit, but it did stop.
        assert!(status.is_some() && !clean, "{status:?}");
    }

    #[test]
    fn a_death_before_readiness_reports_the_log_tail() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("d.log");
        let mut daemon =
            Daemon::spawn("d", sh("echo bad config line >&2; exit 2"), &log).expect("spawn");
        let error =
            daemon.wait_for_line("ready", Duration::from_secs(20), &|| false).expect_err("it died");
        let message = format!("{error:#}");
        assert!(message.contains("exited unexpectedly"), "{message}");
        assert!(message.contains("bad config line"), "{message}");
    }

    #[test]
    fn a_clean_exit_at_sigterm_is_clean_and_drop_kills() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("d.log");
        let script = "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.05; done";
        let mut daemon = Daemon::spawn("d", sh(script), &log).expect("spawn");
        daemon.wait_for_line("up", Duration::from_secs(20), &|| false).expect("up");
        let (status, clean) = daemon.stop(Duration::from_secs(20));
        assert!(clean, "{status:?}\n{}", daemon.output());
        assert!(daemon.output().contains("bye"));

        let daemon = Daemon::spawn("e", sh("sleep 30"), &log).expect("spawn");
        let pid = daemon.pid();
        drop(daemon);
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "child {pid} survived drop");
    }
}
