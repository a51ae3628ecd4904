//! The real `r3fs` binary against a real `r3fs-mgmtd` on loopback (memory store, fast timers).
//! Storage nodes are simulated by registering and heartbeating through
//! `r3fs_rpc::mgmtd_client::MgmtdClient`, as a storage daemon does. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_testkit::{Proc, binary, free_port, wait_until};
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(120);
/// Longest wait for mgmtd to notice a change (heartbeat timeout is 3 s below, generous for a
/// loaded 2-core machine: a missed heartbeat would push a fake node's targets into resync).
const CONVERGE: Duration = Duration::from_secs(20);
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

const MGMTD_CONFIG: &str = r#"
node_id = 1
listen = "127.0.0.1:0"
lease_timeout_ms = 2000
lease_renew_interval_ms = 200
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 3000
failure_check_interval_ms = 100
[kv]
backend = "memory"
"#;

struct Mgmtd {
    _proc: Proc,
    address: String,
    dir: tempfile::TempDir,
}

fn start_mgmtd() -> Mgmtd {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mgmtd.toml");
    std::fs::write(&path, MGMTD_CONFIG).expect("write mgmtd config");
    let mut command = Command::new(binary("r3fs-mgmtd", "r3fs-mgmtd"));
    command.arg("--config").arg(&path).env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("r3fs-mgmtd", command);
    let line = proc.wait_for_line("r3fs-mgmtd listening on", STARTUP);
    let address = line.rsplit(' ').next().expect("address in the readiness line").to_string();
    proc.wait_for_line("r3fs-mgmtd is primary", STARTUP);
    Mgmtd { _proc: proc, address, dir }
}

/// Runs `r3fs` with `--mgmtd` (if given) and no inherited token settings.
fn r3fs(mgmtd: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs"));
    command.env_remove("R3FS_MGMTD").env_remove("R3FS_TOKEN").env_remove("R3FS_TOKEN_FILE");
    for name in [
        "STORAGE_NODE_NUM",
        "NUM_DISKS_PER_NODE",
        "NUM_TARGETS_PER_DISK",
        "MIN_TARGETS_PER_DISK",
        "REPLICATION_FACTOR",
    ] {
        command.env_remove(name);
    }
    if let Some(address) = mgmtd {
        command.arg("--mgmtd").arg(address);
    }
    command.args(args);
    command.output().expect("run r3fs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `r3fs` and requires success; returns stdout.
fn ok(mgmtd: &str, args: &[&str]) -> String {
    let output = r3fs(Some(mgmtd), args);
    assert!(
        output.status.success(),
        "r3fs {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs `r3fs` and requires failure; returns stderr.
fn fails(mgmtd: Option<&str>, args: &[&str]) -> String {
    let output = r3fs(mgmtd, args);
    assert!(!output.status.success(), "r3fs {args:?} succeeded:\n{}", stdout(&output));
    assert!(output.stdout.is_empty(), "a failed command printed to stdout: {}", stdout(&output));
    stderr(&output)
}

fn json(mgmtd: &str, token: &str, command: &str) -> Value {
    let text = ok(mgmtd, &["--token", token, "--json", command]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command} --json: {e}\n{text}"))
}

/// init-cluster, returning the admin token it printed.
fn init_cluster(mgmtd: &Mgmtd) -> String {
    let token_file = mgmtd.dir.path().join("admin.token");
    let out = ok(
        &mgmtd.address,
        &["init-cluster", "--cluster-id", "cli-test", "--token-out", path(&token_file)],
    );
    let token = out
        .lines()
        .find(|l| l.starts_with("r3fs-"))
        .unwrap_or_else(|| panic!("no token line in:\n{out}"))
        .to_string();
    let saved = std::fs::read_to_string(&token_file).expect("token file");
    assert_eq!(saved.trim(), token);
    token
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn node_status(nodes: &Value, node_id: u64) -> Option<String> {
    nodes.as_array()?.iter().find(|n| n["node_id"] == node_id)?["status"].as_str().map(String::from)
}

/// A storage-like node: registers, then heartbeats every 200 ms reporting its targets
/// UPTODATE, until stopped.
struct FakeStorage {
    stop: Arc<AtomicBool>,
}

impl FakeStorage {
    fn start(
        runtime: &tokio::runtime::Runtime,
        address: &str,
        token: &str,
        node_id: u32,
        targets: Vec<u64>,
    ) -> Self {
        let reports = targets
            .iter()
            .map(|&target_id| pb::TargetReport {
                target_id,
                local_state: pb::LocalTargetState::UpToDate as i32,
                used_bytes: 4096,
                ..Default::default()
            })
            .collect();
        Self::reporting(runtime, address, token, node_id, Arc::new(Mutex::new(reports)))
    }

    /// Heartbeats whatever `reports` holds at the time (the test changes it as it goes).
    fn reporting(
        runtime: &tokio::runtime::Runtime,
        address: &str,
        token: &str,
        node_id: u32,
        reports: Arc<Mutex<Vec<pb::TargetReport>>>,
    ) -> Self {
        let mut config = MgmtdClientConfig::new(vec![address.to_string()], Some(token.to_string()));
        config.request_timeout_ms = 2_000;
        let client = MgmtdClient::new(config).expect("mgmtd client");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let registered = runtime.block_on(client.register_node(pb::RegisterNodeRequest {
            node_id,
            node_type: pb::NodeType::Storage as i32,
            hostname: format!("storage-{node_id}"),
            addresses: vec![pb::ServiceAddress {
                name: "data".into(),
                address: format!("127.0.0.1:{}", 20_000 + node_id % 1000),
            }],
            release_version: "cli-test".into(),
            config_version: 0,
        }));
        let registered = registered.expect("register the storage node");
        runtime.spawn(async move {
            let mut version = registered.last_heartbeat_version;
            while !stopped.load(Ordering::Relaxed) {
                version += 1;
                let request = pb::HeartbeatRequest {
                    node_id,
                    heartbeat_version: version,
                    config_version: 0,
                    release_version: "cli-test".into(),
                    targets: reports.lock().expect("reports lock").clone(),
                };
                // A failed heartbeat is retried by the next one, as a daemon would.
                let _ = client.heartbeat(request).await;
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        });
        FakeStorage { stop }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for FakeStorage {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn unreachable_mgmtd_error_names_the_address() {
    // Nobody listens on a port that was just free.
    let address = format!("127.0.0.1:{}", free_port());
    let error = fails(Some(&address), &["--token", "x", "list-nodes"]);
    assert!(error.contains(&format!("cannot reach mgmtd at {address}")), "{error}");
    assert!(error.starts_with("error: list nodes: "), "{error}");

    let error = fails(None, &["list-nodes"]);
    assert!(error.contains("--mgmtd") && error.contains("R3FS_MGMTD"), "{error}");
}

#[test]
fn init_cluster_prints_the_token_once_and_tokens_are_checked() {
    let mgmtd = start_mgmtd();
    let address = mgmtd.address.as_str();
    let token = init_cluster(&mgmtd);

    let error = fails(Some(address), &["init-cluster"]);
    assert!(error.contains("already initialized"), "{error}");
    assert!(error.contains("R3FS-2009"), "{error}");

    // Wrong and missing tokens are refused with a message that says what to do.
    let error = fails(Some(address), &["--token", "r3fs-not-a-token", "list-nodes"]);
    assert!(error.contains("refused the token") && error.contains("R3FS-1005"), "{error}");
    assert!(error.contains("--token"), "{error}");
    let error = fails(Some(address), &["list-nodes"]);
    assert!(error.contains("refused the token"), "{error}");

    // The token file works like --token.
    let token_file = mgmtd.dir.path().join("admin.token");
    let out = ok(address, &["--token-file", path(&token_file), "list-nodes"]);

    // Ids are checked by mgmtd, one message for both commands that place a target.
    let ids = ["--node-id", "0", "--disk-index", "0", "--target-id", "7", "--chain-id", "1"];
    for command in ["create-target", "add-target-to-chain"] {
        let args: Vec<&str> =
            ["--token-file", path(&token_file), command].into_iter().chain(ids).collect();
        let error = fails(Some(address), &args);
        assert!(
            error.contains("node, target and chain ids must be non-zero (got node N0, target T7"),
            "{command}: {error}"
        );
    }
    let header = out.lines().next().expect("header");
    for column in [
        "Id",
        "Type",
        "Status",
        "Hostname",
        "Pid",
        "LastHeartbeatTime",
        "ConfigVersion",
        "ReleaseVersion",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(out.contains("PRIMARY_MGMTD"), "{out}");

    // A user without admin rights can read but not change; a removed user's token stops working.
    let out = ok(address, &["--token", &token, "user-add", "alice", "--uid", "1000"]);
    let alice = out.lines().find(|l| l.starts_with("r3fs-")).expect("alice's token").to_string();
    ok(address, &["--token", &alice, "list-nodes"]);
    let error = fails(Some(address), &["--token", &alice, "user-add", "bob", "--uid", "1001"]);
    assert!(error.contains("admin"), "{error}");
    let users = json(address, &token, "user-list");
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
    ok(address, &["--token", &token, "user-remove", "alice"]);
    let error = fails(Some(address), &["--token", &alice, "list-nodes"]);
    assert!(error.contains("refused the token"), "{error}");

    // Configs round-trip.
    let config = mgmtd.dir.path().join("storage.toml");
    std::fs::write(&config, "[server]\nthreads = 4\n").expect("write config");
    let out = ok(
        address,
        &["--token", &token, "set-config", "--type", "storage", "--file", path(&config)],
    );
    assert!(out.contains("version 1"), "{out}");
    let out = ok(address, &["--token", &token, "get-config", "--type", "STORAGE"]);
    assert_eq!(out, "[server]\nthreads = 4\n");
    std::fs::write(&config, "not toml [").expect("write config");
    let error = fails(
        Some(address),
        &["--token", &token, "set-config", "--type", "storage", "--file", path(&config)],
    );
    assert!(error.contains("not valid TOML"), "{error}");
}

#[test]
fn storage_nodes_go_from_connected_to_failed_and_uploaded_chains_are_listed() {
    let mgmtd = start_mgmtd();
    let address = mgmtd.address.as_str();
    let token = init_cluster(&mgmtd);

    // Placement for 5 storage nodes x 2 disks x 3 targets per disk, replication 3.
    let output_dir = mgmtd.dir.path().join("placement");
    let out = ok(
        address,
        &[
            "gen-chain-table",
            "--num-nodes",
            "5",
            "--disks-per-node",
            "2",
            "--targets-per-disk",
            "3",
            "--replication",
            "3",
            "--output",
            path(&output_dir),
        ],
    );
    assert!(out.contains("chains: 10 (5 per disk index)"), "{out}");
    let targets_file: PathBuf = output_dir.join("generated_targets.csv");
    let targets_text = std::fs::read_to_string(&targets_file).expect("targets file");
    let mut targets_by_node: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for line in targets_text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let target: u64 = cells[0].parse().expect("target id");
        let node: u32 = cells[1].parse().expect("node id");
        targets_by_node.entry(node).or_default().push(target);
    }
    assert_eq!(targets_by_node.len(), 5);

    // Five storage-like nodes register and heartbeat their targets as UPTODATE.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nodes: Vec<FakeStorage> = targets_by_node
        .iter()
        .map(|(&node, targets)| {
            FakeStorage::start(&runtime, address, &token, node, targets.clone())
        })
        .collect();
    let connected = wait_until(CONVERGE, Duration::from_millis(100), || {
        let listed = json(address, &token, "list-nodes");
        (10_001..=10_005)
            .all(|id| node_status(&listed, id).as_deref() == Some("HEARTBEAT_CONNECTED"))
    });
    assert!(connected, "storage nodes never showed HEARTBEAT_CONNECTED");
    let table = ok(address, &["--token", &token, "list-nodes"]);
    let row = table.lines().find(|l| l.starts_with("10001 ")).expect("row of node 10001");
    assert!(row.contains("STORAGE") && row.contains("HEARTBEAT_CONNECTED"), "{row}");
    assert!(row.contains("storage-10001") && row.contains("cli-test"), "{row}");

    // Upload the generated placement.
    // One line of create_target_cmd.txt is a valid r3fs command line; the targets file then
    // creates the rest, leaving the identical existing target alone.
    let commands = std::fs::read_to_string(output_dir.join("create_target_cmd.txt"))
        .expect("create-target commands");
    assert_eq!(commands.lines().count(), 30);
    let first: Vec<&str> = commands.lines().next().expect("a command").split_whitespace().collect();
    let mut args = vec!["--token", token.as_str()];
    args.extend(first);
    let out = ok(address, &args);
    assert!(out.contains("Created 1 targets (0 already existed)"), "{out}");
    let out = ok(address, &["--token", &token, "create-targets", path(&targets_file)]);
    assert!(out.contains("Created 29 targets (1 already existed)"), "{out}");
    // As in a real deployment, chains are uploaded once the daemons report their new targets;
    // a chain whose target is not reported yet would start with it OFFLINE, and a target must
    // then resync, which these fake nodes do not do.
    let reported = wait_until(CONVERGE, Duration::from_millis(100), || {
        let targets = json(address, &token, "list-targets");
        targets.as_array().is_some_and(|all| {
            all.len() == 30 && all.iter().all(|t| t["local_state"] == "UPTODATE")
        })
    });
    assert!(reported, "targets never reported UPTODATE: {}", json(address, &token, "list-targets"));
    let chains_file = output_dir.join("generated_chains.csv");
    let out = ok(address, &["--token", &token, "upload-chains", path(&chains_file)]);
    assert!(out.contains("Uploaded 10 chains (10 new"), "{out}");
    // Idempotent re-upload.
    let out = ok(address, &["--token", &token, "upload-chains", path(&chains_file)]);
    assert!(out.contains("(0 new, 10 already present)"), "{out}");
    let table_file = output_dir.join("generated_chain_table.csv");
    let out = ok(
        address,
        &["--token", &token, "upload-chain-table", "--desc", "cli-test", "1", path(&table_file)],
    );
    assert!(out.contains("chain table 1 version 1 with 10 chains"), "{out}");

    // list-chains shows exactly the generated chains, head first, and every target serving once
    // the nodes report them up to date.
    let chains_text = std::fs::read_to_string(&chains_file).expect("chains file");
    let generated: Vec<Vec<u64>> = chains_text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|c| c.parse().expect("id")).collect())
        .collect();
    let serving = wait_until(CONVERGE, Duration::from_millis(100), || {
        let chains = json(address, &token, "list-chains");
        let chains = chains.as_array().expect("chains array");
        chains.len() == generated.len()
            && chains.iter().all(|c| {
                c["targets"]
                    .as_array()
                    .is_some_and(|t| t.iter().all(|t| t["public_state"] == "SERVING"))
            })
    });
    assert!(serving, "chains never became fully SERVING: {}", json(address, &token, "list-chains"));
    let chains = json(address, &token, "list-chains");
    for (listed, expected) in chains.as_array().expect("chains").iter().zip(&generated) {
        assert_eq!(listed["chain_id"], expected[0]);
        let ids: Vec<u64> = listed["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| t["target_id"].as_u64().expect("target id"))
            .collect();
        assert_eq!(ids, expected[1..], "chain {} order", expected[0]);
    }
    let table = ok(address, &["--token", &token, "list-chains"]);
    assert!(table.starts_with("ChainId"), "{table}");
    assert_eq!(table.lines().count(), 11, "{table}");
    assert!(table.lines().skip(1).all(|l| l.contains("3/3")), "{table}");

    let tables = json(address, &token, "list-chain-tables");
    assert_eq!(tables[0]["table_id"], 1);
    assert_eq!(tables[0]["chain_ids"].as_array().map(Vec::len), Some(10));
    assert_eq!(tables[0]["description"], "cli-test");

    let listed = json(address, &token, "list-targets");
    let listed = listed.as_array().expect("targets");
    assert_eq!(listed.len(), 30);
    assert!(listed.iter().all(|t| t["local_state"] == "UPTODATE"), "{listed:?}");
    assert_eq!(listed.iter().filter(|t| t["role"] == "HEAD").count(), 10);
    let table = ok(address, &["--token", &token, "list-targets"]);
    assert!(table.lines().next().is_some_and(|h| h.contains("PublicState")), "{table}");

    // Node 10001 stops heartbeating: mgmtd marks it failed and its targets offline.
    nodes[0].stop();
    let failed = wait_until(CONVERGE, Duration::from_millis(100), || {
        node_status(&json(address, &token, "list-nodes"), 10_001).as_deref()
            == Some("HEARTBEAT_FAILED")
    });
    assert!(failed, "node 10001 never showed HEARTBEAT_FAILED");
    let offline = wait_until(CONVERGE, Duration::from_millis(100), || {
        let targets = json(address, &token, "list-targets");
        targets.as_array().is_some_and(|all| {
            all.iter().filter(|t| t["node_id"] == 10_001).all(|t| t["local_state"] == "OFFLINE")
        })
    });
    assert!(offline, "node 10001's targets never went OFFLINE");
    let listed = json(address, &token, "list-nodes");
    for id in 10_002..=10_005 {
        assert_eq!(node_status(&listed, id).as_deref(), Some("HEARTBEAT_CONNECTED"), "{listed}");
    }

    // An operator takes one target of a healthy node offline.
    let target = targets_by_node[&10_002][0].to_string();
    let out = ok(address, &["--token", &token, "offline-target", "--target-id", &target]);
    assert!(out.contains(&format!("Target {target} is offline")), "{out}");
    drop(nodes);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

fn report(target_id: u64, state: pb::LocalTargetState) -> pb::TargetReport {
    pb::TargetReport {
        target_id,
        local_state: state as i32,
        used_bytes: 4096,
        ..Default::default()
    }
}

fn target_json(address: &str, token: &str, target: u64) -> Value {
    let listed = json(address, token, "list-targets");
    listed
        .as_array()
        .and_then(|a| a.iter().find(|t| t["target_id"] == target).cloned())
        .unwrap_or(Value::Null)
}

/// Resync progress a predecessor reports reaches `list-targets` (the storage daemon's side is
/// simulated: heartbeats carry `TargetReport.resync`), and disappears once the target serves.
#[test]
fn list_targets_shows_resync_progress_of_a_syncing_target() {
    let mgmtd = start_mgmtd();
    let address = mgmtd.address.as_str();
    let token = init_cluster(&mgmtd);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let up = pb::LocalTargetState::UpToDate;
    let head = Arc::new(Mutex::new(vec![report(1, up)]));
    let tail = Arc::new(Mutex::new(vec![report(2, up)]));
    let _a = FakeStorage::reporting(&runtime, address, &token, 10, head.clone());
    let _b = FakeStorage::reporting(&runtime, address, &token, 11, tail.clone());
    for (target, node) in [("1", "10"), ("2", "11")] {
        ok(
            address,
            &[
                "--token",
                &token,
                "create-target",
                "--node-id",
                node,
                "--disk-index",
                "0",
                "--target-id",
                target,
                "--chain-id",
                "1",
            ],
        );
    }
    let reported = wait_until(CONVERGE, Duration::from_millis(100), || {
        [1, 2].iter().all(|&t| target_json(address, &token, t)["local_state"] == "UPTODATE")
    });
    assert!(reported, "targets never reported: {}", json(address, &token, "list-targets"));
    let chains = mgmtd.dir.path().join("chains.csv");
    std::fs::write(&chains, "ChainId,TargetId,TargetId\n1,1,2\n").expect("write chains file");
    ok(address, &["--token", &token, "upload-chains", path(&chains)]);

    // Target 2 restarts: offline, then online, so it syncs from 1.
    *tail.lock().expect("lock") = vec![report(2, pb::LocalTargetState::Offline)];
    let offline = wait_until(CONVERGE, Duration::from_millis(100), || {
        target_json(address, &token, 2)["public_state"] == "OFFLINE"
    });
    assert!(offline, "{}", json(address, &token, "list-targets"));
    *tail.lock().expect("lock") = vec![report(2, pb::LocalTargetState::Online)];
    let syncing = wait_until(CONVERGE, Duration::from_millis(100), || {
        target_json(address, &token, 2)["public_state"] == "SYNCING"
    });
    assert!(syncing, "{}", json(address, &token, "list-targets"));

    // 1 reports how far the resync of 2 has come.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
        - 30_000;
    let mut with_progress = report(1, up);
    with_progress.resync = Some(pb::ResyncProgress {
        target_id: 2,
        chunks_total: 100,
        chunks_done: 42,
        bytes_done: 42 << 20,
        started_unix_ms: started,
    });
    *head.lock().expect("lock") = vec![with_progress];
    let shown = wait_until(CONVERGE, Duration::from_millis(100), || {
        target_json(address, &token, 2)["resync"]["chunks_done"] == 42
    });
    assert!(shown, "{}", json(address, &token, "list-targets"));
    let table = ok(address, &["--token", &token, "list-targets"]);
    assert!(table.lines().next().expect("header").contains("Resync"), "{table}");
    let row = table.lines().find(|l| l.trim_start().starts_with("2 ")).expect("row of 2");
    assert!(row.contains("42/100 chunks, 42.0 MiB, "), "{table}");
    assert!(target_json(address, &token, 1).get("resync").is_none(), "only the synced target");

    // The resync finishes: 2 serves and the progress is gone.
    *head.lock().expect("lock") = vec![report(1, up)];
    *tail.lock().expect("lock") = vec![report(2, up)];
    let served = wait_until(CONVERGE, Duration::from_millis(100), || {
        let t = target_json(address, &token, 2);
        t["public_state"] == "SERVING" && t.get("resync").is_none()
    });
    assert!(served, "{}", json(address, &token, "list-targets"));
}

#[test]
fn gen_chain_table_reports_balance_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = r3fs(
        None,
        &[
            "gen-chain-table",
            "--num-nodes",
            "5",
            "--disks-per-node",
            "8",
            "--targets-per-disk",
            "12",
            "--output",
            path(dir.path()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("chains: 160 (20 per disk index)"), "{text}");
    assert!(text.contains("max/mean 1.000"), "{text}");
    for name in [
        "generated_chains.csv",
        "generated_chain_table.csv",
        "generated_targets.csv",
        "create_target_cmd.txt",
    ] {
        assert!(dir.path().join(name).exists(), "{name} missing");
    }
    // Existing files are not replaced without --force.
    let error = fails(
        None,
        &["gen-chain-table", "--num-nodes", "5", "--disks-per-node", "8", "-o", path(dir.path())],
    );
    assert!(error.contains("already exists") && error.contains("--force"), "{error}");
    // Indivisible targets are refused with a suggestion.
    let error = fails(
        None,
        &[
            "gen-chain-table",
            "--num-nodes",
            "5",
            "--disks-per-node",
            "1",
            "--targets-per-disk",
            "4",
            "--dry-run",
        ],
    );
    assert!(error.contains("use 6 targets per disk"), "{error}");
    // 3FS's environment names work.
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs"));
    command
        .args(["--json", "gen-chain-table", "--dry-run"])
        .env("STORAGE_NODE_NUM", "6")
        .env("NUM_DISKS_PER_NODE", "2")
        .env("MIN_TARGETS_PER_DISK", "4")
        .env("REPLICATION_FACTOR", "3")
        .env_remove("NUM_TARGETS_PER_DISK");
    let out = command.output().expect("run r3fs");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["report"]["nodes"], 6);
    assert_eq!(report["report"]["targets_per_disk"], 4);
    assert_eq!(report["report"]["chains"], 16);
    assert_eq!(report["files"].as_array().map(Vec::len), Some(0));
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = r3fs(None, &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains("gen-chain-table") && script.contains("list-nodes"), "{shell}");
    }
}
