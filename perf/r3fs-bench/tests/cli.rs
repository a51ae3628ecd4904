//! Runs the real `r3fs-bench` binary on a temp dir: option errors, every engine x rw mode with
//! byte counts checked from the JSON report and the files checked for the written pattern,
//! group reporting, job files and the text report. No timing assertions.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use r3fs_bench::pattern;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bench(arguments: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r3fs-bench")).args(arguments).output().expect("run r3fs-bench")
}

fn strings(arguments: &[&str]) -> Vec<String> {
    arguments.iter().map(|a| a.to_string()).collect()
}

/// io_uring may be disabled (sysctl kernel.io_uring_disabled, seccomp): skip those cases then.
fn io_uring_available(output: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("create an io_uring") {
        eprintln!("skipping io_uring cases: {stderr}");
        return false;
    }
    true
}

fn json_report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "r3fs-bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("the JSON report parses")
}

fn check_file(path: &Path, clone: u32, file: u32, bytes: u64) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(data.len() as u64, bytes, "{} length", path.display());
    pattern::check(&data, pattern::file_tag(clone, file), 0)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn unknown_options_are_refused_by_name() {
    let output = bench(&strings(&["--name=a", "--size=1M", "--frobnicate=3"]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown option 'frobnicate'"), "{stderr}");
    let output = bench(&strings(&["--name=a", "--size=1M", "--ioengine=libaio"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ioengine"));
    let output = bench(&strings(&["--name=a"]));
    assert!(String::from_utf8_lossy(&output.stderr).contains("size or filesize is required"));
}

#[test]
fn every_engine_and_mode_moves_the_expected_bytes_and_writes_the_pattern() {
    const FILE_BYTES: u64 = 256 << 10;
    const NRFILES: u64 = 2;
    for engine in ["psync", "io_uring"] {
        for rw in ["read", "write", "randread", "randwrite", "randrw"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let direct = if engine == "io_uring" { "1" } else { "0" };
            let output = bench(&[
                "--output-format=json".to_string(),
                format!("--directory={}", dir.path().display()),
                format!("--name={rw}"),
                format!("--rw={rw}"),
                "--bs=4k".into(),
                format!("--size={}", FILE_BYTES * NRFILES),
                format!("--nrfiles={NRFILES}"),
                format!("--ioengine={engine}"),
                "--iodepth=8".into(),
                format!("--direct={direct}"),
                "--loops=2".into(),
            ]);
            if engine == "io_uring" && !io_uring_available(&output) {
                return;
            }
            let report = json_report(&output);
            let job = &report["jobs"][0];
            assert_eq!(job["jobname"], rw);
            assert_eq!(job["error"], 0);
            let read = job["read"]["io_bytes"].as_u64().expect("read.io_bytes");
            let write = job["write"]["io_bytes"].as_u64().expect("write.io_bytes");
            let expected = FILE_BYTES * NRFILES * 2;
            assert_eq!(read + write, expected, "{engine} {rw}: two passes over both files");
            let ios = job["read"]["total_ios"].as_u64().unwrap()
                + job["write"]["total_ios"].as_u64().unwrap();
            assert_eq!(ios, expected / 4096, "{engine} {rw}: one IO per block");
            match rw {
                "read" | "randread" => assert_eq!(write, 0, "{rw} writes nothing"),
                "write" | "randwrite" => assert_eq!(read, 0, "{rw} reads nothing"),
                _ => assert!(read > 0 && write > 0, "randrw does both: {read} {write}"),
            }
            let clat = &job[if read > 0 { "read" } else { "write" }]["clat_ns"];
            assert!(
                clat["N"].as_u64().unwrap() > 0
                    && clat["percentile"]["99.000000"].as_u64().unwrap() > 0
            );
            if engine == "io_uring" {
                assert!(
                    job["read"]["slat_ns"]["N"].as_u64().unwrap()
                        + job["write"]["slat_ns"]["N"].as_u64().unwrap()
                        > 0
                );
            }
            for file in 0..NRFILES as u32 {
                check_file(&dir.path().join(format!("{rw}.0.{file}")), 0, file, FILE_BYTES);
            }
        }
    }
}

#[test]
fn group_reporting_merges_clones_and_time_based_runs_until_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = bench(&[
        "--output-format=json".to_string(),
        format!("--directory={}", dir.path().display()),
        "--group_reporting".into(),
        "--name=seq".into(),
        "--rw=write".into(),
        "--bs=64k".into(),
        "--size=1M".into(),
        "--numjobs=3".into(),
        "--end_fsync=1".into(),
        "--name=timed".into(),
        "--stonewall".into(),
        "--rw=randread".into(),
        "--bs=4k".into(),
        "--size=256k".into(),
        "--runtime=1".into(),
        "--time_based".into(),
    ]);
    let report = json_report(&output);
    let jobs = report["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2, "one merged report per group");
    assert_eq!((jobs[0]["jobs"].as_u64(), jobs[0]["groupid"].as_u64()), (Some(3), Some(0)));
    assert_eq!(jobs[0]["write"]["io_bytes"], 3 << 20);
    for clone in 0..3 {
        check_file(&dir.path().join(format!("seq.{clone}.0")), clone, 0, 1 << 20);
    }
    assert_eq!(jobs[1]["groupid"], 1);
    let bytes = jobs[1]["read"]["io_bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes.is_multiple_of(4096), "{bytes}");
    assert!(jobs[1]["job_runtime"].as_u64().unwrap() >= 1000, "runs at least its runtime");
}

#[test]
fn job_files_run_and_the_text_report_is_shaped_like_fio() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job_file = dir.path().join("jobs.fio");
    std::fs::write(
        &job_file,
        format!(
            "[global]\ndirectory={}\nbs=8k\nsize=512k\n\n[mixed]\nrw=randrw\nrwmixread=70\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let output = bench(&["--eta=never".to_string(), job_file.display().to_string()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "mixed: (groupid=0, jobs=1): err= 0",
        "  read: IOPS=",
        "  write: IOPS=",
        "clat percentiles",
        "cpu          : usr=",
        "Run status group 0 (all jobs):",
        "READ: bw=",
        "WRITE: bw=",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    check_file(&dir.path().join("mixed.0.0"), 0, 0, 512 << 10);
}

#[test]
fn the_ring_engine_needs_a_mountpoint() {
    let output = bench(&strings(&["--name=a", "--size=1M", "--ioengine=r3fs-ring"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("mountpoint"));
}
