//! Issue acceptance: two real `r3fs-mgmtd` processes share one store (a real `r3fs-kvd` serving the
//! embedded fjall store); killing the primary with SIGKILL lets the other take over once the lease
//! expires, and the `r3fs` CLI, given both addresses, follows it. Every wait is bounded.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use r3fs_testkit::{Proc, binary, free_port, wait_until};
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(120);
const LEASE_TIMEOUT_MS: u64 = 2_000;

fn mgmtd_config(node_id: u32, port: u16, kv_address: &str) -> String {
    format!(
        r#"node_id = {node_id}
listen = "127.0.0.1:{port}"
lease_timeout_ms = {LEASE_TIMEOUT_MS}
lease_renew_interval_ms = 200
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 3000
failure_check_interval_ms = 100
[kv]
backend = "remote"
[kv.remote]
address = "{kv_address}"
"#
    )
}

fn spawn_mgmtd(dir: &Path, node_id: u32, port: u16, kv_address: &str) -> Proc {
    let path = dir.join(format!("mgmtd{node_id}.toml"));
    std::fs::write(&path, mgmtd_config(node_id, port, kv_address)).expect("write mgmtd config");
    let mut command = Command::new(binary("r3fs-mgmtd", "r3fs-mgmtd"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn(&format!("mgmtd{node_id}"), command);
    proc.wait_for_line("r3fs-mgmtd listening on", STARTUP);
    proc
}

fn r3fs(mgmtd: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs"));
    command.env_remove("R3FS_MGMTD").env_remove("R3FS_TOKEN").env_remove("R3FS_TOKEN_FILE");
    command.arg("--mgmtd").arg(mgmtd).args(args);
    command.output().expect("run r3fs")
}

fn ok(mgmtd: &str, args: &[&str]) -> String {
    let output = r3fs(mgmtd, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "r3fs {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn primary_of(nodes: &Value) -> Option<u64> {
    nodes.as_array()?.iter().find(|n| n["status"] == "PRIMARY_MGMTD")?["node_id"].as_u64()
}

/// Polls `list-nodes` until it names `expected` as the primary mgmtd (an instance lists itself
/// once its first lease renewal is recorded), failing with the last listing after a bound.
fn wait_for_primary(mgmtd: &str, token: &str, expected: u64) {
    let mut last = Value::Null;
    let found = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let text = ok(mgmtd, &["--token", token, "--json", "list-nodes"]);
        last = serde_json::from_str(&text).expect("list-nodes --json");
        primary_of(&last) == Some(expected)
    });
    assert!(found, "mgmtd {expected} never listed as primary: {last}");
}

#[test]
fn the_secondary_takes_over_and_the_cli_follows_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv_port = free_port();
    let kv_address = format!("127.0.0.1:{kv_port}");
    let mut kvd_command = Command::new(binary("r3fs-kv", "r3fs-kvd"));
    kvd_command.arg("--listen").arg(&kv_address).arg("--data-dir").arg(dir.path().join("kv"));
    let mut kvd = Proc::spawn("r3fs-kvd", kvd_command);
    kvd.wait_for_line("r3fs-kvd listening on", STARTUP);

    let (port1, port2) = (free_port(), free_port());
    let mut first = spawn_mgmtd(dir.path(), 1, port1, &kv_address);
    first.wait_for_line("r3fs-mgmtd is primary", STARTUP);
    let mut second = spawn_mgmtd(dir.path(), 2, port2, &kv_address);
    let both = format!("127.0.0.1:{port1},127.0.0.1:{port2}");

    let out = ok(&both, &["init-cluster", "--cluster-id", "failover-test"]);
    let token = out.lines().find(|l| l.starts_with("r3fs-")).expect("admin token line").to_string();
    wait_for_primary(&both, &token, 1);

    let killed_at = Instant::now();
    first.kill9();
    // Bounded by three lease timeouts: the lease must expire, then the standby's next renewal
    // attempt claims it; a loaded 2-core machine gets slack.
    second.wait_for_line(
        "r3fs-mgmtd is primary",
        Duration::from_millis(3 * LEASE_TIMEOUT_MS + 10_000),
    );
    println!(
        "takeover observed {} ms after SIGKILL (lease timeout {LEASE_TIMEOUT_MS} ms)",
        killed_at.elapsed().as_millis()
    );

    // The CLI is given both addresses; the first is dead, so it must find and follow the new
    // primary, and the state written through the old primary (the admin user) is still there.
    wait_for_primary(&both, &token, 2);
    let users: Value =
        serde_json::from_str(&ok(&both, &["--token", &token, "--json", "user-list"]))
            .expect("json");
    assert!(users.to_string().contains("admin"), "the admin user survived the takeover: {users}");
}
