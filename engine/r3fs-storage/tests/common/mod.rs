//! Real processes on loopback: one r3fs-mgmtd (memory KV) and r3fs-storage daemons, each with
//! its own temp directories and generated config. Every wait is bounded.

#![allow(dead_code)] // each test file uses a subset

pub mod load;
pub mod loopfs;
pub mod netns;

use r3fs_rpc::admin;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_storage::client::DataClient;
use r3fs_storage::routing::RoutingSnapshot;
use r3fs_testkit::cluster::{Cluster, ClusterBuilder, Role};
use r3fs_testkit::{Proc, binary, free_port};
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, LocalTargetState, PublicTargetState,
    TargetId,
};
use r3fs_wire::{BatchReadItem, BatchReadRequest, Outcome, UpdateKind, UpdateReply, UpdateRequest};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const START_TIMEOUT: Duration = Duration::from_secs(120);
pub const CHUNK_SIZE: u32 = 1 << 20;

pub struct Mgmtd {
    pub proc: Proc,
    pub address: String,
    _dir: TempDir,
}

impl Mgmtd {
    /// An mgmtd started by the caller (its own config), listening on `address`.
    pub fn from_parts(proc: Proc, address: String) -> Mgmtd {
        Mgmtd { proc, address, _dir: tempfile::tempdir().expect("mgmtd temp dir") }
    }
}

/// The suite's cluster: `nodes` storage daemons (node ids `2..2+nodes`) of this package's
/// binary, no chain yet (each test makes its own with [`start_chain`]). mgmtd declares a daemon
/// dead after 1.5 s without a heartbeat (so daemons fence after 0.75 s); storage logs at debug
/// (the resync test reads the progress lines), drains 3 s on SIGTERM, 1 GiB per target.
pub fn storage_cluster(nodes: u32) -> ClusterBuilder {
    Cluster::builder("test")
        .storage_nodes(nodes)
        .chains(0)
        .target_capacity(1 << 30)
        .config(Role::Mgmtd, "heartbeat_timeout_ms = 1500")
        .config(Role::Storage, "shutdown_drain_ms = 3000")
        .log(Role::Storage, "info,r3fs_storage=debug")
        .binary(Role::Storage, env!("CARGO_BIN_EXE_r3fs-storage"))
}

/// Creates chain `chain` of `members` ((target id, node id), head first) and waits until every
/// member serves and mgmtd's routing (what clients act on) says so, with every address.
pub async fn start_chain(
    cluster: &mut Cluster,
    chain: u32,
    members: &[(u64, u32)],
) -> RoutingSnapshot {
    cluster.create_chain(chain, members).await;
    wait_serving(cluster.admin(), chain, members.iter().map(|m| TargetId(m.0)).collect()).await
}

pub fn start_mgmtd() -> Mgmtd {
    let dir = tempfile::tempdir().expect("mgmtd temp dir");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let config = format!(
        "node_id = 1\nlisten = \"{address}\"\nlease_timeout_ms = 2000\nlease_renew_interval_ms = 500\n\
         heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1500\nfailure_check_interval_ms = 200\n\
         routing_wait_max_ms = 5000\nshutdown_grace_ms = 1000\n[kv]\nbackend = \"memory\"\n"
    );
    let path = dir.path().join("mgmtd.toml");
    std::fs::write(&path, config).expect("write mgmtd config");
    let mut command = Command::new(binary("r3fs-mgmtd", "r3fs-mgmtd"));
    command.arg("--config").arg(&path);
    let mut proc = Proc::spawn("r3fs-mgmtd", command);
    proc.wait_for_line("is primary", START_TIMEOUT);
    Mgmtd { proc, address, _dir: dir }
}

pub fn storage_config(node_id: u32, disk: &Path, mgmtd: &str, token: &str) -> String {
    format!(
        r#"node_id = {node_id}
target_paths = ["{disk}"]
targets_per_path = 4
cores = 1
mgmtd_addresses = ["{mgmtd}"]
token = "{token}"
listen_host = "127.0.0.1"
io_memory_bytes = 1048576
tick_interval_ms = 10
shutdown_drain_ms = 3000

[store]
capacity_bytes = 1073741824
header_cache_bytes = 4194304
log_compaction_bytes_min = 8388608
log_extent_bytes = 1048576
commit_batch_records_max = 256
grow_bytes_max = 67108864

[replica]
chunk_size_bytes_max = 4194304
held_payload_bytes_max = 268435456
forward_retry_interval_ms = 100
"#,
        disk = disk.display()
    )
}

pub struct Storage {
    pub proc: Proc,
    pub node_id: u32,
    pub config_path: PathBuf,
    pub disk: PathBuf,
}

impl Storage {
    pub fn spawn(&self) -> Proc {
        let mut command = Command::new(binary("r3fs-storage", "r3fs-storage"));
        command.arg("--config").arg(&self.config_path);
        command.env("RUST_LOG", "info,r3fs_storage=debug");
        let mut proc = Proc::spawn(&format!("r3fs-storage-{}", self.node_id), command);
        proc.wait_for_line("serving targets on", START_TIMEOUT);
        proc
    }

    pub fn restart(&mut self) {
        self.proc = self.spawn();
    }
}

pub fn start_storage(node_id: u32, root: &Path, mgmtd: &str, token: &str) -> Storage {
    let disk = root.join(format!("node{node_id}-disk0"));
    std::fs::create_dir_all(&disk).expect("create disk dir");
    let config_path = root.join(format!("storage{node_id}.toml"));
    std::fs::write(&config_path, storage_config(node_id, &disk, mgmtd, token))
        .expect("write config");
    let mut storage = Storage {
        proc: Proc::spawn("placeholder", Command::new("true")),
        node_id,
        config_path,
        disk,
    };
    storage.proc = storage.spawn();
    storage
}

pub fn admin_client(address: &str, token: Option<String>) -> MgmtdClient {
    let mut config = MgmtdClientConfig::new(vec![address.to_string()], token);
    config.request_timeout_ms = 10_000;
    MgmtdClient::new(config).expect("mgmtd client")
}

pub async fn init_cluster(address: &str) -> (MgmtdClient, String) {
    let client = admin_client(address, None);
    let response = client
        .init_cluster(admin::InitClusterRequest { cluster_id: "test".into(), ..Default::default() })
        .await
        .expect("init cluster");
    let token = response.admin_token;
    (client.with_token(Some(token.clone())).expect("client with token"), token)
}

/// Polls `check` every 100 ms for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates targets (one per node, in order), waits until their daemons report them up to date,
/// uploads the chain and waits until every member serves. Returns the routing snapshot.
pub async fn create_chain(
    admin: &MgmtdClient,
    chain: u32,
    members: &[(u64, u32)],
) -> RoutingSnapshot {
    let targets = members
        .iter()
        .map(|&(target_id, node_id)| admin::TargetSpec {
            target_id,
            node_id,
            disk_index: 0,
            chain_id: chain,
        })
        .collect();
    admin.create_targets(admin::CreateTargetsRequest { targets }).await.expect("create targets");
    eventually(Duration::from_secs(20), "targets reported up to date", || async {
        let list = admin.list_targets(admin::ListTargetsRequest {}).await.ok()?;
        let up = members.iter().all(|(t, _)| {
            list.targets.iter().any(|i| {
                i.target_id == *t
                    && i.local_state == r3fs_rpc::mgmtd::LocalTargetState::UpToDate as i32
            })
        });
        up.then_some(())
    })
    .await;
    let spec =
        admin::ChainSpec { chain_id: chain, target_ids: members.iter().map(|m| m.0).collect() };
    admin
        .upload_chains(admin::UploadChainsRequest { chains: vec![spec] })
        .await
        .expect("upload chain");
    wait_serving(admin, chain, members.iter().map(|m| TargetId(m.0)).collect()).await
}

/// Waits until every listed target of `chain` is serving, and the routing says so.
pub async fn wait_serving(
    admin: &MgmtdClient,
    chain: u32,
    serving: Vec<TargetId>,
) -> RoutingSnapshot {
    eventually(Duration::from_secs(60), "chain serving", || async {
        let info = admin.get_routing_info(0, Duration::ZERO).await.ok()??;
        let (snapshot, _) = RoutingSnapshot::from_pb(&info);
        let routing = snapshot.chains.get(&ChainId(chain))?;
        let all = serving.iter().all(|t| routing.state_of(*t) == Some(PublicTargetState::Serving));
        (all && serving.iter().all(|t| snapshot.address_of(*t).is_some())).then_some(snapshot)
    })
    .await
}

pub fn local_up_to_date() -> i32 {
    let _ = LocalTargetState::UpToDate;
    r3fs_rpc::mgmtd::LocalTargetState::UpToDate as i32
}

pub fn write_request(
    chain: u32,
    chain_version: ChainVersion,
    chunk: ChunkId,
    offset: u32,
    data: &[u8],
    client: u64,
    sequence: u64,
) -> UpdateRequest {
    UpdateRequest {
        kind: UpdateKind::Write,
        chain_id: ChainId(chain),
        chain_version,
        chunk_id: chunk,
        offset,
        length: data.len() as u32,
        chunk_size: CHUNK_SIZE,
        update_version: ChunkVersion(0),
        client_id: ClientId(client),
        sequence,
        payload_crc32c: crc32c::crc32c(data),
        sending_target_id: None,
    }
}

/// Writes through the head, retrying retryable refusals (busy, not committed) a bounded number
/// of times with the same sequence (so a retry is applied once).
pub async fn write(client: &mut DataClient, request: UpdateRequest, data: &[u8]) -> UpdateReply {
    for _ in 0..50 {
        let reply = client.update(request.clone(), data).await.expect("update call");
        match reply.outcome {
            Outcome::Failed(code)
                if code.is_retryable() && code != r3fs_types::ErrorCode::StaleChainVersion =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return reply,
        }
    }
    panic!("write {request:?} kept being refused");
}

/// Reads a whole range of one chunk from one replica, retrying ChunkNotCommitted.
pub async fn read(
    client: &mut DataClient,
    chain: u32,
    chunk: ChunkId,
    offset: u32,
    length: u32,
) -> (Outcome, Vec<u8>) {
    use r3fs_types::ErrorCode;
    // Transient answers a client retries: an update still pending, or a daemon that restarted
    // and has not yet learned its targets from mgmtd (whose routing may still list the target as
    // serving from before the restart).
    const TRANSIENT: [ErrorCode; 3] =
        [ErrorCode::ChunkNotCommitted, ErrorCode::TargetNotFound, ErrorCode::TargetNotServing];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let request = BatchReadRequest {
            items: vec![BatchReadItem {
                chain_id: ChainId(chain),
                chunk_id: chunk,
                offset,
                length,
            }],
        };
        let (reply, payload) = client.batch_read(request).await.expect("batch read");
        assert!(reply.outcome.is_ok(), "{reply:?}");
        let item = reply.items[0];
        let transient = matches!(item.outcome, Outcome::Failed(code) if TRANSIENT.contains(&code));
        if !transient {
            return (item.outcome, payload.to_vec());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chunk {chunk} stayed unreadable for 30 s: {:?}",
            item.outcome
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic test bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Drop for Storage {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.proc.output().join("\n");
            eprintln!("---- output of storage node {} ----\n{lines}", self.node_id);
        }
    }
}

impl Drop for Mgmtd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.proc.output().join("\n");
            eprintln!("---- output of mgmtd ----\n{lines}");
        }
    }
}
