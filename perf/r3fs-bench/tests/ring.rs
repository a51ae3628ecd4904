//! The r3fs-ring engine against a real local cluster: `r3fs up --mount` runs mgmtd, meta, the
//! storage daemons and r3fs-fuse (which serves the USRBIO rings); r3fs-bench writes, reads and
//! mixes through the native ring, the JSON byte counts are checked, and the files, read back
//! through the mount right after each run, have their length and hold the written pattern.
//! Skips with a printed reason where this machine cannot mount FUSE.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use r3fs_bench::pattern;
use r3fs_testkit::{Proc, binary};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The first start may include building the daemons.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

fn skip_reason() -> Option<&'static str> {
    if std::env::var_os("R3FS_TEST_NO_FUSE").is_some() {
        Some("R3FS_TEST_NO_FUSE is set")
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is absent")
    } else if unsafe { libc::geteuid() } != 0 {
        Some("not running as root (mounting needs it here)")
    } else {
        None
    }
}

fn bench(arguments: &[String]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_r3fs-bench"))
        .args(arguments)
        .output()
        .expect("run r3fs-bench");
    assert!(
        output.status.success(),
        "r3fs-bench {arguments:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("the JSON report parses")
}

#[test]
fn the_ring_engine_moves_the_expected_bytes_through_a_real_mount() {
    if let Some(reason) = skip_reason() {
        println!("SKIP: {reason}");
        return;
    }
    for (package, bin) in [
        ("r3fs-mgmtd", "r3fs-mgmtd"),
        ("r3fs-meta", "r3fs-meta"),
        ("r3fs-storage", "r3fs-storage"),
        ("r3fs-fuse", "r3fs-fuse"),
    ] {
        binary(package, bin);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mount = dir.path().join("mnt");
    std::fs::create_dir_all(&mount).expect("mount point");
    let mut command = Command::new(binary("r3fs", "r3fs"));
    command.arg("up").arg("--data").arg(dir.path().join("data")).arg("--mount").arg(&mount);
    command.env_remove("R3FS_MGMTD").env_remove("R3FS_TOKEN").env_remove("R3FS_TOKEN_FILE");
    let mut up = Proc::spawn("r3fs up", command);
    up.wait_for_line("r3fs cluster ready", READY_TIMEOUT);

    const FILE_BYTES: u64 = 4 << 20;
    const NRFILES: u64 = 2;
    for rw in ["write", "randread", "randrw", "read"] {
        let report = bench(&[
            "--output-format=json".to_string(),
            format!("--directory={}", mount.join("bench").display()),
            format!("--mountpoint={}", mount.display()),
            "--ioengine=r3fs-ring".into(),
            "--name=ring".into(),
            format!("--rw={rw}"),
            "--bs=256k".into(),
            format!("--size={}", FILE_BYTES * NRFILES),
            format!("--nrfiles={NRFILES}"),
            "--iodepth=4".into(),
            "--ior_depth=8".into(),
            "--end_fsync=1".into(),
        ]);
        let job = &report["jobs"][0];
        assert_eq!(job["error"], 0, "{rw}");
        let read = job["read"]["io_bytes"].as_u64().unwrap();
        let write = job["write"]["io_bytes"].as_u64().unwrap();
        assert_eq!(read + write, FILE_BYTES * NRFILES, "{rw}: one pass over both files");
        match rw {
            "write" => assert_eq!(read, 0),
            "randrw" => assert!(read > 0 && write > 0, "{read} {write}"),
            _ => assert_eq!(write, 0),
        }
        // Right after the run (its ring fsync and deregistration), the files read back through
        // the mount have their full length and the written pattern.
        for file in 0..NRFILES as u32 {
            let path = mount.join("bench").join(format!("ring.0.{file}"));
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            assert_eq!(data.len() as u64, FILE_BYTES, "{rw}: {}", path.display());
            pattern::check(&data, pattern::file_tag(0, file), 0)
                .unwrap_or_else(|e| panic!("{rw}: {}: {e}", path.display()));
        }
    }
    assert!(up.terminate(STOP_TIMEOUT), "r3fs up stops cleanly");
}
