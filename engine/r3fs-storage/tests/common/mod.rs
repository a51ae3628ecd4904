//! The suite's cluster shape on `r3fs_testkit::cluster::Cluster` (real r3fs-mgmtd and
//! r3fs-storage processes; each test places its own chains), the routing-snapshot wait clients
//! act on, and data-plane helpers (write and read with bounded retries). Every wait is bounded.

#![allow(dead_code)] // each test file uses a subset

pub mod load;
pub mod loopfs;
pub mod netns;

pub use r3fs_testkit::pattern;

use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_storage::client::DataClient;
use r3fs_storage::routing::RoutingSnapshot;
use r3fs_testkit::cluster::{Cluster, ClusterBuilder, Role, eventually};
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, PublicTargetState, TargetId,
};
use r3fs_wire::{BatchReadItem, BatchReadRequest, Outcome, UpdateKind, UpdateReply, UpdateRequest};
use std::collections::BTreeMap;
use std::time::Duration;

pub const CHUNK_SIZE: u32 = 1 << 20;

/// The suite's cluster: `nodes` storage daemons (node ids `2..2+nodes`) of this package's
/// binary, no chain yet (each test makes its own with [`start_chain`]). mgmtd declares a daemon
/// dead after 1.5 s without a heartbeat (so daemons fence after 0.75 s); storage logs at debug
/// (the resync test reads the progress lines), drains 3 s on SIGTERM, 1 GiB per target.
pub fn storage_cluster(nodes: u32) -> ClusterBuilder {
    let builder = Cluster::builder("test")
        .storage_nodes(nodes)
        .chains(0)
        .target_capacity(1 << 30)
        .config(Role::Mgmtd, "heartbeat_timeout_ms = 1500")
        .config(Role::Storage, "shutdown_drain_ms = 3000")
        .log(Role::Storage, "info,r3fs_storage=debug");
    // This package's own binary in its tests; a package that includes this module (the
    // monitor's cluster test) lets the harness build it.
    match option_env!("CARGO_BIN_EXE_r3fs-storage") {
        Some(path) => builder.binary(Role::Storage, path),
        None => builder,
    }
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

/// Waits until every listed target of `chain` is serving, and the routing says so.
pub async fn wait_serving(
    admin: &MgmtdClient,
    chain: u32,
    serving: Vec<TargetId>,
) -> RoutingSnapshot {
    eventually("chain serving", async || {
        let info = admin.get_routing_info(0, Duration::ZERO).await.ok()??;
        let (snapshot, _) = RoutingSnapshot::from_pb(&info);
        let routing = snapshot.chains.get(&ChainId(chain))?;
        let all = serving.iter().all(|t| routing.state_of(*t) == Some(PublicTargetState::Serving));
        (all && serving.iter().all(|t| snapshot.address_of(*t).is_some())).then_some(snapshot)
    })
    .await
}

/// The check of [`verify_replicas`] for content acknowledged whole: the bytes read are exactly
/// the acknowledged ones.
pub fn same_bytes(target: TargetId, chunk: ChunkId, expected: &[u8], bytes: &[u8]) {
    assert!(
        bytes == expected,
        "target {target} chunk {chunk}: {} bytes differ from the {} acknowledged",
        bytes.len(),
        expected.len()
    );
}

/// Waits until every target of `members` serves, then reads every chunk of `acked` from each
/// replica (every read must succeed) and judges the bytes with `check(target, chunk,
/// expected, read)`, e.g. [`same_bytes`]. Returns how many replicas were read.
pub async fn verify_replicas(
    admin: &MgmtdClient,
    chain: u32,
    members: &[(u64, u32)],
    acked: &BTreeMap<ChunkId, Vec<u8>>,
    check: impl Fn(TargetId, ChunkId, &[u8], &[u8]),
) -> usize {
    let all: Vec<TargetId> = members.iter().map(|m| TargetId(m.0)).collect();
    let snapshot = wait_serving(admin, chain, all.clone()).await;
    for &target in &all {
        let address = snapshot.address_of(target).expect("replica address");
        let mut client = DataClient::connect(address).await.expect("connect to a replica");
        for (&chunk, expected) in acked {
            let (outcome, bytes) = read(&mut client, chain, chunk, 0, CHUNK_SIZE).await;
            assert_eq!(outcome, Outcome::Ok, "target {target} chunk {chunk}");
            check(target, chunk, expected, &bytes);
        }
    }
    all.len()
}

/// Runs `program` with `args` to completion; Err names the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
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
