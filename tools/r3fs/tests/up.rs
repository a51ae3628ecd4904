//! `r3fs up` end to end, with the real daemons: the first run initializes a cluster in a data
//! directory and serves it (list-nodes shows every node; a file written through the client
//! library, and through the FUSE mount when this machine can mount, is stored); SIGTERM stops
//! every daemon cleanly; a second run on the same directory restarts every daemon and the file
//! reads back bit-exact; a daemon killed under the launcher stops the whole cluster with a
//! non-zero exit and the dead daemon's log tail. Every wait is bounded.

use r3fs_client::{ClientConfig, FileClient, OpenOptions};
use r3fs_testkit::{Proc, binary, pattern};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// First start includes building the daemons (binary() runs cargo build once).
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

/// Every sibling binary `up` runs, built in the profile directory that holds `r3fs`.
fn build_daemons(with_fuse: bool) {
    for (package, bin) in
        [("r3fs-mgmtd", "r3fs-mgmtd"), ("r3fs-meta", "r3fs-meta"), ("r3fs-storage", "r3fs-storage")]
    {
        binary(package, bin);
    }
    if with_fuse {
        binary("r3fs-fuse", "r3fs-fuse");
    }
}

/// Whether this run can mount: /dev/fuse present, root, and the FUSE daemon is part of the
/// workspace, unless R3FS_TEST_NO_FUSE is set (machines whose FUSE cannot be used by tests).
/// Prints why not otherwise.
fn can_mount() -> bool {
    let fuse_crate =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../client/r3fs-fuse/Cargo.toml");
    let reason = if std::env::var_os("R3FS_TEST_NO_FUSE").is_some() {
        Some("R3FS_TEST_NO_FUSE is set")
    } else if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is absent")
    } else if unsafe { libc::geteuid() } != 0 {
        Some("not running as root (mounting needs it here)")
    } else if !fuse_crate.exists() {
        Some("the r3fs-fuse crate is not in this workspace")
    } else {
        None
    };
    if let Some(reason) = reason {
        println!(
            "SKIP the --mount part of this test: {reason}; the cluster is used through r3fs_client"
        );
        return false;
    }
    true
}

struct Up {
    proc: Proc,
    output: Vec<String>,
}

fn start_up(data: &Path, mount: Option<&Path>) -> Up {
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs"));
    command.arg("up").arg("--data").arg(data).env("RUST_LOG", "info");
    command.env_remove("R3FS_MGMTD").env_remove("R3FS_TOKEN").env_remove("R3FS_TOKEN_FILE");
    if let Some(mount) = mount {
        command.arg("--mount").arg(mount);
    }
    let mut proc = Proc::spawn("r3fs up", command);
    proc.wait_for_line("r3fs cluster ready", READY_TIMEOUT);
    let output = proc.output().to_vec();
    Up { proc, output }
}

impl Up {
    /// The summary line of daemon `name`: "  NAME  ADDRESS  pid N  log PATH".
    fn line(&self, name: &str) -> Vec<String> {
        let prefix = format!("  {name} ");
        let line = self
            .output
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", self.output.join("\n")));
        line.split_whitespace().map(String::from).collect()
    }

    fn address(&self, name: &str) -> String {
        self.line(name)[1].clone()
    }

    fn pid(&self, name: &str) -> i32 {
        let words = self.line(name);
        let at = words.iter().position(|w| w == "pid").expect("pid field");
        words[at + 1].parse().expect("pid number")
    }

    fn daemon_names(&self) -> Vec<String> {
        let mut names = vec!["mgmtd".to_string()];
        names.extend((0..3).map(|i| format!("storage-{}", 10_001 + i)));
        names.push("meta".to_string());
        names
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn r3fs_json(mgmtd: &str, token_file: &Path, command: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_r3fs"))
        .env_remove("R3FS_TOKEN")
        .arg("--mgmtd")
        .arg(mgmtd)
        .arg("--token-file")
        .arg(token_file)
        .arg("--json")
        .arg(command)
        .output()
        .expect("run r3fs");
    assert!(
        output.status.success(),
        "r3fs {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn client_config(up: &Up, token_file: &Path) -> ClientConfig {
    let token = std::fs::read_to_string(token_file).expect("token file").trim().to_string();
    ClientConfig {
        mgmtd_addresses: vec![up.address("mgmtd")],
        meta_addresses: vec![up.address("meta")],
        token,
        ..Default::default()
    }
}

/// Stops `up` with SIGTERM and checks every daemon it printed is gone and the exit was clean.
fn stop_cleanly(mut up: Up) {
    let pids: Vec<(String, i32)> =
        up.daemon_names().into_iter().map(|n| (n.clone(), up.pid(&n))).collect();
    let clean = up.proc.terminate(STOP_TIMEOUT);
    // The exit came first; its last lines may still be on their way through the pipe.
    up.proc.wait_for_line("r3fs cluster stopped", STOP_TIMEOUT);
    let output = up.proc.output().join("\n");
    assert!(clean, "r3fs up did not exit 0 at SIGTERM:\n{output}");
    assert!(output.contains("r3fs cluster stopped"), "{output}");
    for (name, pid) in pids {
        assert!(!alive(pid), "{name} (pid {pid}) still runs after r3fs up stopped");
        assert!(output.contains(&format!("stopped {name} (pid {pid})")), "{name}: {output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_initializes_serves_stops_and_restarts_with_the_same_data() {
    let mount_here = can_mount();
    build_daemons(mount_here);
    let dir =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir on the target disk");
    let data = dir.path().join("cluster");
    let mount: Option<PathBuf> = mount_here.then(|| dir.path().join("mnt"));
    let token_file = data.join("admin.token");

    // ---- first run: initialize ----
    let up = start_up(&data, mount.as_deref());
    let all = up.output.join("\n");
    assert!(all.contains("creating a new cluster"), "{all}");
    assert!(all.contains("initialized the cluster"), "{all}");
    let mgmtd = up.address("mgmtd");
    let nodes = r3fs_json(&mgmtd, &token_file, "list-nodes");
    let nodes = nodes.as_array().expect("node list");
    let storage: Vec<u64> = nodes
        .iter()
        .filter(|n| n["node_type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("storage")))
        .filter_map(|n| n["node_id"].as_u64())
        .collect();
    assert_eq!(storage, vec![10_001, 10_002, 10_003], "{nodes:#?}");
    assert!(nodes.iter().any(|n| n["node_id"] == 1), "mgmtd listed: {nodes:#?}");
    let chains = r3fs_json(&mgmtd, &token_file, "list-chains");
    let chains = chains.as_array().expect("chain list");
    assert!(chains.len() >= 4, "{chains:#?}");

    // A file through the client library: unaligned, several chunks (1 MiB), a hole.
    let files = FileClient::connect(client_config(&up, &token_file)).await.expect("connect");
    let data_a = pattern(7, (3 << 20) + 4321);
    let file = files.create("/persist.bin").await.expect("create");
    assert_eq!(file.write_at(0, &data_a).await.expect("write"), data_a.len());
    let tail = pattern(8, 777);
    let tail_at = (6u64 << 20) + 5;
    file.write_at(tail_at, &tail).await.expect("write past a hole");
    file.fsync().await.expect("fsync");
    assert_eq!(file.close().await.expect("close"), tail_at + tail.len() as u64);
    drop(files);
    // And through the mount, when this machine mounts.
    let mounted_data = pattern(9, (2 << 20) + 99);
    if let Some(mount) = &mount {
        std::fs::write(mount.join("via-mount.bin"), &mounted_data)
            .expect("write through the mount");
    }
    let first_pids: Vec<i32> = up.daemon_names().iter().map(|n| up.pid(n)).collect();
    stop_cleanly(up);

    // ---- second run: every daemon restarted, same data ----
    let up = start_up(&data, mount.as_deref());
    let all = up.output.join("\n");
    assert!(all.contains("restarting the cluster"), "{all}");
    assert!(!all.contains("initialized the cluster"), "initialized twice: {all}");
    for (name, old) in up.daemon_names().iter().zip(&first_pids) {
        assert_ne!(up.pid(name), *old, "{name} was not restarted");
    }
    let files = FileClient::connect(client_config(&up, &token_file)).await.expect("connect");
    let file = files.open("/persist.bin", &OpenOptions::read_only()).await.expect("open");
    let length = tail_at as usize + tail.len();
    assert_eq!(file.len().await.expect("len"), length as u64);
    let mut back = vec![0xEEu8; length];
    assert_eq!(file.read_at(0, &mut back).await.expect("read"), length);
    assert!(back[..data_a.len()] == data_a[..], "first range differs after the restart");
    assert!(back[data_a.len()..tail_at as usize].iter().all(|&b| b == 0), "hole is not zeros");
    assert!(back[tail_at as usize..] == tail[..], "tail differs after the restart");
    file.close().await.expect("close");
    drop(files);
    if let Some(mount) = &mount {
        let back = std::fs::read(mount.join("via-mount.bin")).expect("read through the mount");
        assert!(
            back == mounted_data,
            "the file written through the mount differs after the restart"
        );
        let listing: Vec<String> = std::fs::read_dir(mount)
            .expect("ls the mount")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(listing.contains(&"persist.bin".to_string()), "{listing:?}");
    }

    // ---- a daemon dies: the launcher stops everything and fails, showing its log ----
    let mut up = up;
    let victim = up.pid("storage-10002");
    let others: Vec<i32> =
        up.daemon_names().iter().filter(|n| *n != "storage-10002").map(|n| up.pid(n)).collect();
    // SAFETY: kill(2) of a pid the launcher printed (its child, still running).
    unsafe { libc::kill(victim, libc::SIGKILL) };
    up.proc.wait_for_line("exited unexpectedly", STOP_TIMEOUT);
    let exited =
        r3fs_testkit::wait_until(STOP_TIMEOUT, Duration::from_millis(100), || up.proc.has_exited());
    assert!(exited, "r3fs up kept running after a daemon died");
    let output = up.proc.output().join("\n");
    assert!(output.contains("storage-10002"), "{output}");
    assert!(output.contains("last lines of"), "{output}");
    for pid in others {
        assert!(!alive(pid), "pid {pid} still runs after the launcher gave up:\n{output}");
    }
}

#[test]
fn a_missing_daemon_binary_is_named_with_how_to_build_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lonely = dir.path().join("r3fs");
    std::fs::copy(env!("CARGO_BIN_EXE_r3fs"), &lonely).expect("copy r3fs alone");
    let output = Command::new(&lonely)
        .arg("up")
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .expect("run r3fs up");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("r3fs-mgmtd not found"), "{stderr}");
    assert!(stderr.contains("cargo build --release --workspace --bins"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "created state before checking the binaries");
}
