//! Start-up refusals of the real binary: an invalid config (every violation listed), a target
//! directory locked by another process, RLIMIT_MEMLOCK below the registered IO memory. None of
//! them needs mgmtd: the daemon refuses before it connects.

use r3fs_testkit::{Proc, wait_until};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn valid_config(disk: &Path) -> String {
    format!(
        "node_id = 9\ntarget_paths = [\"{}\"]\nmgmtd_addresses = [\"127.0.0.1:1\"]\ntoken = \"t\"\n\
         io_memory_bytes = 1048576\n",
        disk.display()
    )
}

/// The refused daemon must not linger (Proc does not expose the status; the message is the
/// contract, the exit status is checked where `output()` is used).
fn exits(proc: &mut Proc) {
    assert!(wait_until(TIMEOUT, Duration::from_millis(20), || proc.has_exited()), "still running");
}

#[test]
fn invalid_config_lists_every_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "node_id = 0\ntarget_paths = [\"relative/path\"]\ncores = 0\nmgmtd_addresses = []\n\
         tick_interval_ms = 0\n[replica]\nchunks_active_max = 0\n",
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_r3fs-storage"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run r3fs-storage");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "node_id must be non-zero",
        "target_paths[0] relative/path is not absolute",
        "cores (0)",
        "mgmtd_addresses must list",
        "token must be set",
        "tick_interval_ms must be positive",
        "replica.chunks_active_max must be positive",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }

    // An unparsable file and an unknown key are refused too, naming the problem.
    std::fs::write(&path, "node_id = 1\nnot_a_key = 3\n").expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_r3fs-storage"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run r3fs-storage");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_a_key"));
}

#[test]
fn a_target_locked_by_another_process_is_refused() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let disk = root.path().join("disk0");
    let target = disk.join("target-5");
    std::fs::create_dir_all(&target).expect("mkdir");
    // Hold the target's lock as another daemon would.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target.join("LOCK"))
        .expect("open lock file");
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let config = root.path().join("storage.toml");
    std::fs::write(&config, valid_config(&disk)).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs-storage"));
    command.arg("--config").arg(&config);
    let mut proc = Proc::spawn("r3fs-storage", command);
    let line = proc.wait_for_line("in use by another chunk store", TIMEOUT);
    assert!(line.contains("target-5"), "{line}");
    exits(&mut proc);
    drop(lock);
}

#[test]
fn memlock_below_the_registered_io_memory_is_refused() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let disk = root.path().join("disk0");
    let config = root.path().join("storage.toml");
    std::fs::write(&config, valid_config(&disk)).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs-storage"));
    command.arg("--config").arg(&config);
    let limit = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
    // SAFETY: setrlimit is async-signal-safe and only lowers this child's own limit.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut proc = Proc::spawn("r3fs-storage", command);
    // 1 core x (3 rings x 1 MiB + 512 KiB) = 3670016 bytes.
    let line = proc.wait_for_line("RLIMIT_MEMLOCK is 1048576 bytes", TIMEOUT);
    assert!(line.contains("3670016 bytes"), "{line}");
    exits(&mut proc);
}
