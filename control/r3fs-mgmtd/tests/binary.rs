//! The real `r3fs-mgmtd` binary on loopback, driven through `r3fs_rpc::mgmtd_client::MgmtdClient`:
//! tokens, membership and failure detection, routing watch and long-poll, configs, restart with
//! the embedded store, and TLS. Every wait is bounded.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use r3fs_rpc::admin as admin_pb;
use r3fs_rpc::error_from_status;
use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::{ClientTls, MgmtdClient, MgmtdClientConfig};
use r3fs_testkit::Proc;
use r3fs_types::ErrorCode;

const STARTUP: Duration = Duration::from_secs(60);

/// Fast timers so failure detection takes well under a second.
const FAST: &str = r#"
lease_timeout_ms = 2000
lease_renew_interval_ms = 200
heartbeat_interval_ms = 100
heartbeat_timeout_ms = 600
failure_check_interval_ms = 100
routing_wait_max_ms = 10000
shutdown_grace_ms = 2000
"#;

struct Daemon {
    proc: Proc,
    address: String,
}

fn start(dir: &Path, name: &str, config: &str) -> Daemon {
    let mut daemon = spawn(dir, name, config);
    daemon.proc.wait_for_line("r3fs-mgmtd is primary", STARTUP);
    daemon
}

/// Starts an instance and waits until it serves (primary or not).
fn spawn(dir: &Path, name: &str, config: &str) -> Daemon {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    // Cargo builds this package's binary for its integration tests and names it here, so no
    // nested `cargo build` (r3fs_testkit::binary) has to wait for the shared target's lock.
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs-mgmtd"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn(name, command);
    let line = proc.wait_for_line("r3fs-mgmtd listening on", STARTUP);
    let address = line.rsplit(' ').next().expect("address in the readiness line").to_string();
    Daemon { proc, address }
}

fn memory_config(node_id: u32) -> String {
    format!("node_id = {node_id}\nlisten = \"127.0.0.1:0\"\n{FAST}\n[kv]\nbackend = \"memory\"\n")
}

fn client(address: &str, token: Option<&str>) -> MgmtdClient {
    client_to(vec![address.to_string()], token.map(str::to_string))
}

fn client_to(addresses: Vec<String>, token: Option<String>) -> MgmtdClient {
    let mut config = MgmtdClientConfig::new(addresses, token);
    config.request_timeout_ms = 5_000;
    config.attempts_max = 5;
    config.backoff_initial_ms = 20;
    config.backoff_max_ms = 200;
    MgmtdClient::new(config).expect("client")
}

async fn init(address: &str) -> (MgmtdClient, String) {
    let anonymous = client(address, None);
    let response = anonymous
        .init_cluster(admin_pb::InitClusterRequest {
            cluster_id: "test".into(),
            ..Default::default()
        })
        .await
        .expect("init cluster");
    let token = response.admin_token;
    assert!(token.starts_with("r3fs-"));
    (client(address, Some(&token)), token)
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> ErrorCode {
    error_from_status(&result.expect_err("the call must fail"))
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn register(node_id: u32, node_type: pb::NodeType) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        node_id,
        node_type: node_type.into(),
        hostname: format!("host{node_id}"),
        addresses: vec![pb::ServiceAddress {
            name: "data".into(),
            address: format!("127.0.0.1:{}", 20_000 + node_id),
        }],
        release_version: "test".into(),
        config_version: 0,
    }
}

fn target_spec(target_id: u64, node_id: u32, chain_id: u32) -> admin_pb::TargetSpec {
    admin_pb::TargetSpec { target_id, node_id, disk_index: 0, chain_id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_users_and_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), "mgmtd-tokens", &memory_config(1));
    let anonymous = client(&daemon.address, None);

    let primary = anonymous.get_primary(pb::GetPrimaryRequest {}).await.expect("get primary");
    assert!(primary.is_primary);
    assert_eq!(primary.primary_address, daemon.address);
    let refused = anonymous.list_nodes(admin_pb::ListNodesRequest {}).await.expect_err("no token");
    assert_eq!(error_from_status(&refused), ErrorCode::Unauthenticated);

    let (admin, admin_token) = init(&daemon.address).await;
    let again = anonymous
        .init_cluster(admin_pb::InitClusterRequest { cluster_id: "x".into(), ..Default::default() })
        .await;
    assert_eq!(code(again), ErrorCode::UserExists);

    let wrong = client(&daemon.address, Some("r3fs-not-a-real-token"));
    let refused = wrong.list_nodes(admin_pb::ListNodesRequest {}).await.expect_err("wrong token");
    assert_eq!(error_from_status(&refused), ErrorCode::Unauthenticated);
    assert!(refused.message().contains("R3FS-1005"), "{}", refused.message());
    admin.list_nodes(admin_pb::ListNodesRequest {}).await.expect("admin lists nodes");

    // A plain user reads but may not change the cluster or register servers.
    let added = admin
        .add_user(admin_pb::AddUserRequest {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![10, 20],
            admin: false,
        })
        .await
        .expect("add alice");
    let alice = client(&daemon.address, Some(&added.token));
    alice.list_targets(admin_pb::ListTargetsRequest {}).await.expect("alice reads");
    let denied = alice
        .create_targets(admin_pb::CreateTargetsRequest { targets: vec![target_spec(1, 10, 1)] })
        .await;
    assert_eq!(code(denied), ErrorCode::PermissionDenied);
    assert_eq!(
        code(alice.register_node(register(10, pb::NodeType::Storage)).await),
        ErrorCode::PermissionDenied
    );
    let client_node =
        alice.register_node(register(0, pb::NodeType::Client)).await.expect("client node");
    assert!(client_node.node_id >= 1 << 30, "allocated id {}", client_node.node_id);
    let beat =
        |node_id| pb::HeartbeatRequest { node_id, heartbeat_version: 1, ..Default::default() };
    alice.heartbeat(beat(client_node.node_id)).await.expect("a client node's heartbeat");
    admin
        .register_node(register(10, pb::NodeType::Storage))
        .await
        .expect("admin registers storage");
    assert_eq!(
        code(alice.heartbeat(beat(10)).await),
        ErrorCode::PermissionDenied,
        "forged server heartbeat"
    );
    let duplicate = admin
        .add_user(admin_pb::AddUserRequest {
            name: "alice".into(),
            uid: 1001,
            ..Default::default()
        })
        .await;
    assert_eq!(code(duplicate), ErrorCode::UserExists);

    // Token resolution for meta.
    let resolved = alice
        .resolve_token(pb::ResolveTokenRequest { token: added.token.clone() })
        .await
        .expect("resolve")
        .user
        .expect("user");
    assert_eq!(
        (resolved.uid, resolved.gid, resolved.groups.clone(), resolved.admin),
        (1000, 1000, vec![10, 20], false)
    );
    let unknown = admin.resolve_token(pb::ResolveTokenRequest { token: "r3fs-nope".into() }).await;
    assert_eq!(code(unknown), ErrorCode::Unauthenticated);
    let root = admin
        .resolve_token(pb::ResolveTokenRequest { token: admin_token.clone() })
        .await
        .expect("root");
    assert!(root.user.expect("user").admin);

    // Removing a user revokes its token at once; the last admin stays.
    admin.remove_user(admin_pb::RemoveUserRequest { uid: 1000 }).await.expect("remove alice");
    assert_eq!(
        code(alice.list_targets(admin_pb::ListTargetsRequest {}).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code(admin.remove_user(admin_pb::RemoveUserRequest { uid: 0 }).await),
        ErrorCode::PermissionDenied
    );
    let users = admin.list_users(admin_pb::ListUsersRequest {}).await.expect("users").users;
    assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), vec!["root"]);

    // Configs: TOML checked, versions grow, latest by default, listing without content.
    let bad = admin
        .set_config(admin_pb::SetConfigRequest {
            node_type: pb::NodeType::Meta.into(),
            content: "not = [toml".into(),
            description: String::new(),
        })
        .await;
    assert_eq!(code(bad), ErrorCode::InvalidConfig);
    for (content, expected) in [("workers = 4\n", 1), ("workers = 8\n", 2)] {
        let version = admin
            .set_config(admin_pb::SetConfigRequest {
                node_type: pb::NodeType::Meta.into(),
                content: content.into(),
                description: format!("v{expected}"),
            })
            .await
            .expect("set config")
            .version;
        assert_eq!(version, expected);
    }
    let latest = admin
        .get_config(pb::GetConfigRequest { node_type: pb::NodeType::Meta.into(), version: 0 })
        .await
        .expect("latest");
    assert_eq!((latest.version, latest.content.as_str()), (2, "workers = 8\n"));
    let first = admin
        .get_config(pb::GetConfigRequest { node_type: pb::NodeType::Meta.into(), version: 1 })
        .await
        .expect("v1");
    assert_eq!(first.content, "workers = 4\n");
    let missing = admin
        .get_config(pb::GetConfigRequest { node_type: pb::NodeType::Storage.into(), version: 0 })
        .await;
    assert_eq!(code(missing), ErrorCode::ConfigNotFound);
    let versions = admin
        .list_config_versions(pb::ListConfigVersionsRequest {
            node_type: pb::NodeType::Meta.into(),
        })
        .await
        .expect("list versions")
        .versions;
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
    assert!(versions.iter().all(|v| v.content.is_empty()));
}

/// Heartbeats of a storage node, sent every 100 ms while `running`, reporting `state` for its
/// targets.
fn spawn_heartbeats(
    client: MgmtdClient,
    node_id: u32,
    targets: Vec<u64>,
    state: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    first_version: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut version = first_version;
        loop {
            if running.load(Ordering::SeqCst) {
                version += 1;
                let local_state = i32::try_from(state.load(Ordering::SeqCst)).expect("state");
                let request = pb::HeartbeatRequest {
                    node_id,
                    heartbeat_version: version,
                    config_version: 0,
                    release_version: "test".into(),
                    targets: targets
                        .iter()
                        .map(|&target_id| pb::TargetReport {
                            target_id,
                            local_state,
                            used_bytes: 4096,
                            ..Default::default()
                        })
                        .collect(),
                };
                if let Err(status) = client.heartbeat(request).await {
                    eprintln!("heartbeat of node {node_id} failed: {status:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn node_status(nodes: &[pb::NodeInfo], node_id: u32) -> pb::NodeStatus {
    let node = nodes.iter().find(|n| n.node_id == node_id).expect("node listed");
    pb::NodeStatus::try_from(node.status).expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_goes_heartbeat_failed_and_its_targets_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), "mgmtd-membership", &memory_config(1));
    let (admin, _) = init(&daemon.address).await;

    for node in [11, 12] {
        let response =
            admin.register_node(register(node, pb::NodeType::Storage)).await.expect("register");
        assert_eq!(response.node_id, node);
        assert_eq!(response.heartbeat_timeout_ms, 600);
    }
    admin
        .create_targets(admin_pb::CreateTargetsRequest {
            targets: vec![target_spec(101, 11, 1), target_spec(102, 12, 1)],
        })
        .await
        .expect("create targets");

    let up_to_date = pb::LocalTargetState::UpToDate as u64;
    let state_11 = Arc::new(AtomicU64::new(up_to_date));
    let state_12 = Arc::new(AtomicU64::new(up_to_date));
    let running_11 = Arc::new(AtomicBool::new(true));
    let running_12 = Arc::new(AtomicBool::new(true));
    let beats = [
        spawn_heartbeats(admin.clone(), 11, vec![101], state_11, running_11, 0),
        spawn_heartbeats(admin.clone(), 12, vec![102], state_12.clone(), running_12.clone(), 0),
    ];
    eventually(Duration::from_secs(10), "targets reported up to date", || async {
        let targets = admin.list_targets(admin_pb::ListTargetsRequest {}).await.ok()?.targets;
        targets.iter().all(|t| t.local_state == pb::LocalTargetState::UpToDate as i32).then_some(())
    })
    .await;
    admin
        .upload_chains(admin_pb::UploadChainsRequest {
            chains: vec![admin_pb::ChainSpec { chain_id: 1, target_ids: vec![101, 102] }],
        })
        .await
        .expect("upload chains");
    let table = admin
        .upload_chain_table(admin_pb::UploadChainTableRequest {
            table_id: 1,
            chain_ids: vec![1],
            description: "test".into(),
        })
        .await
        .expect("upload chain table");
    assert_eq!(table.version, 1);

    let chains = admin.list_chains(admin_pb::ListChainsRequest {}).await.expect("chains").chains;
    let serving = pb::PublicTargetState::Serving as i32;
    assert!(chains[0].targets.iter().all(|t| t.public_state == serving), "{chains:?}");
    let version_before = chains[0].chain_version;
    let nodes = admin.list_nodes(admin_pb::ListNodesRequest {}).await.expect("nodes").nodes;
    assert_eq!(node_status(&nodes, 11), pb::NodeStatus::HeartbeatConnected);
    assert_eq!(node_status(&nodes, 12), pb::NodeStatus::HeartbeatConnected);
    eventually(Duration::from_secs(10), "mgmtd to list itself as primary", || async {
        let nodes = admin.list_nodes(admin_pb::ListNodesRequest {}).await.ok()?.nodes;
        nodes
            .iter()
            .any(|n| n.node_id == 1 && n.status == pb::NodeStatus::PrimaryMgmtd as i32)
            .then_some(())
    })
    .await;

    // Node 12 stops heartbeating.
    running_12.store(false, Ordering::SeqCst);
    let chain = eventually(Duration::from_secs(10), "node 12 to fail", || async {
        let nodes = admin.list_nodes(admin_pb::ListNodesRequest {}).await.ok()?.nodes;
        if node_status(&nodes, 12) != pb::NodeStatus::HeartbeatFailed {
            return None;
        }
        let chains = admin.list_chains(admin_pb::ListChainsRequest {}).await.ok()?.chains;
        Some(chains[0].clone())
    })
    .await;
    let nodes = admin.list_nodes(admin_pb::ListNodesRequest {}).await.expect("nodes").nodes;
    assert_eq!(node_status(&nodes, 11), pb::NodeStatus::HeartbeatConnected, "node 11 still beats");
    let targets =
        admin.list_targets(admin_pb::ListTargetsRequest {}).await.expect("targets").targets;
    let target_102 = targets.iter().find(|t| t.target_id == 102).expect("target 102");
    assert_eq!(target_102.local_state, pb::LocalTargetState::Offline as i32);
    assert_eq!(target_102.public_state, pb::PublicTargetState::Offline as i32);
    let order: Vec<(u64, i32)> =
        chain.targets.iter().map(|t| (t.target_id, t.public_state)).collect();
    assert_eq!(order, vec![(101, serving), (102, pb::PublicTargetState::Offline as i32)]);
    assert!(chain.chain_version > version_before);

    // It restarts: registration tells it where its heartbeat versions must continue; it reports
    // online and resyncs.
    let registered =
        admin.register_node(register(12, pb::NodeType::Storage)).await.expect("re-register");
    assert!(registered.last_heartbeat_version > 0);
    state_12.store(pb::LocalTargetState::Online as u64, Ordering::SeqCst);
    let restarted = spawn_heartbeats(
        admin.clone(),
        12,
        vec![102],
        state_12,
        Arc::new(AtomicBool::new(true)),
        registered.last_heartbeat_version,
    );
    eventually(Duration::from_secs(10), "target 102 to sync", || async {
        let chains = admin.list_chains(admin_pb::ListChainsRequest {}).await.ok()?.chains;
        let states: Vec<i32> = chains[0].targets.iter().map(|t| t.public_state).collect();
        (states == vec![serving, pb::PublicTargetState::Syncing as i32]).then_some(())
    })
    .await;
    for beat in beats {
        beat.abort();
    }
    restarted.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_watch_and_long_poll_wake_on_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start(dir.path(), "mgmtd-watch", &memory_config(1));
    let (admin, _) = init(&daemon.address).await;
    // Wait until the primary has listed itself (a one-time routing change after start).
    let known = eventually(Duration::from_secs(10), "mgmtd to list itself", || async {
        let routing = admin.get_routing_info(0, Duration::ZERO).await.ok()??;
        routing
            .nodes
            .iter()
            .any(|n| n.node_id == 1 && n.status == pb::NodeStatus::PrimaryMgmtd as i32)
            .then_some(routing.routing_version)
    })
    .await;

    // Nothing changes: a short long-poll returns no routing.
    let nothing = admin.get_routing_info(known, Duration::from_millis(300)).await.expect("poll");
    assert!(nothing.is_none());

    let mut watcher = admin.watch_routing(known);
    let watch =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(10), watcher.next()).await },
        );
    let poller = admin.clone();
    let poll =
        tokio::spawn(async move { poller.get_routing_info(known, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin
        .create_targets(admin_pb::CreateTargetsRequest { targets: vec![target_spec(7, 3, 1)] })
        .await
        .expect("create target");

    let watched = watch.await.expect("join").expect("watch woke in time").expect("watch item");
    assert!(watched.routing_version > known);
    assert!(watched.targets.iter().any(|t| t.target_id == 7));
    let polled = poll.await.expect("join").expect("poll").expect("a newer version");
    assert!(polled.routing_version > known);
    assert!(polled.targets.iter().any(|t| t.target_id == 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_with_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("kv");
    let config = format!(
        "node_id = 1\nlisten = \"127.0.0.1:0\"\n{FAST}\n[kv]\nbackend = \"fjall\"\n[kv.fjall]\npath = \"{}\"\n",
        data.display()
    );
    let mut daemon = start(dir.path(), "mgmtd-restart-1", &config);
    let (admin, token) = init(&daemon.address).await;
    admin.register_node(register(5, pb::NodeType::Storage)).await.expect("register");
    admin
        .create_targets(admin_pb::CreateTargetsRequest { targets: vec![target_spec(51, 5, 2)] })
        .await
        .expect("targets");
    admin
        .upload_chains(admin_pb::UploadChainsRequest {
            chains: vec![admin_pb::ChainSpec { chain_id: 2, target_ids: vec![51] }],
        })
        .await
        .expect("chains");
    admin
        .upload_chain_table(admin_pb::UploadChainTableRequest {
            table_id: 3,
            chain_ids: vec![2],
            description: "kept".into(),
        })
        .await
        .expect("table");
    let before = admin.get_routing_info(0, Duration::ZERO).await.expect("routing").expect("some");
    assert!(daemon.proc.terminate(Duration::from_secs(10)), "clean exit on SIGTERM");

    let daemon = start(dir.path(), "mgmtd-restart-2", &config);
    let admin = client(&daemon.address, Some(&token));
    let after = admin.get_routing_info(0, Duration::ZERO).await.expect("routing").expect("some");
    assert!(after.routing_version >= before.routing_version);
    assert_eq!(after.chain_tables, before.chain_tables);
    assert_eq!(after.chains, before.chains);
    assert_eq!(
        after.targets.iter().map(|t| (t.target_id, t.node_id, t.chain_id)).collect::<Vec<_>>(),
        vec![(51, 5, 2)]
    );
    let anonymous = client(&daemon.address, None);
    let again = anonymous
        .init_cluster(admin_pb::InitClusterRequest { cluster_id: "x".into(), ..Default::default() })
        .await;
    assert_eq!(code(again), ErrorCode::UserExists, "the cluster stays initialized");
}

/// Runs `openssl` to make a CA and a server certificate for "localhost"; `None` (with the reason
/// printed) if openssl is missing.
fn make_certificates(dir: &Path) -> Option<()> {
    let run = |args: &[&str]| -> Option<()> {
        let status = Command::new("openssl").args(args).current_dir(dir).output();
        match status {
            Ok(output) if output.status.success() => Some(()),
            Ok(output) => panic!("openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr)),
            Err(error) => {
                eprintln!("skipping the TLS test: cannot run openssl ({error})");
                None
            }
        }
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=r3fs-test-ca"],
    ]
    .concat())?;
    run(&[
        &["req"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
    ]
    .concat())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusted_clients_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    if make_certificates(dir.path()).is_none() {
        return;
    }
    let config = format!(
        "{}\n[tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        memory_config(1),
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display()
    );
    let daemon = start(dir.path(), "mgmtd-tls", &config);
    let mut tls_config = MgmtdClientConfig::new(vec![daemon.address.clone()], None);
    tls_config.tls = Some(ClientTls {
        ca_pem: std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        domain: "localhost".into(),
    });
    tls_config.attempts_max = 2;
    let secure = MgmtdClient::new(tls_config).expect("tls client");
    let primary = secure.get_primary(pb::GetPrimaryRequest {}).await.expect("TLS call");
    assert!(primary.is_primary);
    let response = secure
        .init_cluster(admin_pb::InitClusterRequest {
            cluster_id: "tls".into(),
            ..Default::default()
        })
        .await
        .expect("init over TLS");
    assert!(!response.admin_token.is_empty());

    let mut plain = MgmtdClientConfig::new(vec![daemon.address.clone()], None);
    plain.attempts_max = 1;
    plain.request_timeout_ms = 2_000;
    let plain = MgmtdClient::new(plain).expect("plain client");
    plain.get_primary(pb::GetPrimaryRequest {}).await.expect_err("plain text is refused");
}

/// Two mgmtd processes share one store through a KV server (r3fs_kv::remote, hosted in this test
/// process so no second binary has to be built): the second follows the first and redirects
/// clients to it; after the primary is killed (-9, lease kept) the second takes over once the lease
/// expires, with the state and tokens intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_kv_server_and_fail_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv_address = serve_kv();
    let config = |node_id: u32| {
        format!(
            "node_id = {node_id}\nlisten = \"127.0.0.1:0\"\n{FAST}\n[kv]\nbackend = \"remote\"\n[kv.remote]\naddress = \"{kv_address}\"\n"
        )
    };
    let mut first = start(dir.path(), "mgmtd-shared-1", &config(1));
    let mut second = spawn(dir.path(), "mgmtd-shared-2", &config(2));

    let anonymous = client_to(vec![second.address.clone(), first.address.clone()], None);
    let primary = anonymous.get_primary(pb::GetPrimaryRequest {}).await.expect("get primary");
    assert_eq!((primary.is_primary, primary.primary_node_id), (false, 1), "the second follows");
    let init = anonymous
        .init_cluster(admin_pb::InitClusterRequest {
            cluster_id: "shared".into(),
            ..Default::default()
        })
        .await
        .expect("init through a redirect");
    assert_eq!(anonymous.current_address(), first.address);

    let admin = client_to(
        vec![first.address.clone(), second.address.clone()],
        Some(init.admin_token.clone()),
    );
    admin
        .create_targets(admin_pb::CreateTargetsRequest { targets: vec![target_spec(1, 9, 1)] })
        .await
        .expect("create a target on the first");

    first.proc.kill9();
    second.proc.wait_for_line("r3fs-mgmtd is primary (epoch 2)", STARTUP);
    admin
        .create_targets(admin_pb::CreateTargetsRequest { targets: vec![target_spec(2, 9, 1)] })
        .await
        .expect("create a target on the new primary");
    assert_eq!(admin.current_address(), second.address);
    let targets = admin.list_targets(admin_pb::ListTargetsRequest {}).await.expect("list").targets;
    assert_eq!(targets.iter().map(|t| t.target_id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(second.proc.terminate(Duration::from_secs(10)), "clean exit on SIGTERM");
}

/// Serves a MemoryKv over loopback from a dedicated thread (it lives until the test process
/// exits) and returns its address.
fn serve_kv() -> String {
    let (ready, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("kv server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ready.send(listener.local_addr().expect("address")).expect("send address");
            let kv: Arc<dyn r3fs_kv::Kv> = Arc::new(r3fs_kv::MemoryKv::default());
            let config = r3fs_kv::remote::ServerConfig::default();
            r3fs_kv::remote::serve(kv, config, listener, std::future::pending()).await
        })
    });
    address.recv_timeout(Duration::from_secs(10)).expect("kv server address").to_string()
}
