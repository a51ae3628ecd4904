//! Fault tests with real processes on loopback: one mgmtd and three storage daemons holding one
//! replication-3 chain, under a steady stream of client writes.
//!
//! - `sigkill_middle_replica_and_resync`: kill -9 a middle replica while writes flow; mgmtd takes
//!   it out of the chain after the heartbeat timeout; the daemon comes back, its target resyncs
//!   from its predecessor while writes keep flowing, and serves again.
//! - `sigkill_head_mid_write_and_resync`: kill -9 the chain head; the client follows the routing
//!   to the new head and retries the write in flight (same client id and sequence); the old head
//!   comes back through resync.
//!
//! - `mgmtd_restart_fences_and_resumes`: kill -9 mgmtd (fjall KV on disk) under writes; every
//!   daemon fences itself after half the heartbeat timeout (writes AND reads refused with
//!   `Fenced`), then serves again once mgmtd is back and its routing is applied.
//!
//! Each test then verifies every acknowledged write on every replica (the writer retries a write
//! until it is acknowledged, so the model is the acknowledged writes applied in order) and prints
//! how many acknowledged writes were verified and the longest gap between two acknowledgements
//! (the unavailability a client saw). Timings are printed, never asserted.

mod common;

use common::load::*;
use common::*;
use r3fs_storage::client::DataClient;
use r3fs_testkit::cluster::{Cluster, ClusterBuilder};
use r3fs_types::{ChainId, ChunkId, ErrorCode, InodeId, PublicTargetState, TargetId};
use r3fs_wire::Outcome;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: each starts four processes, and 2-core CI runners
/// would otherwise run twelve at once.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MEMBERS: [(u64, u32); 3] = [(101, 2), (102, 3), (103, 4)];

/// Three daemons holding the replication-3 chain the load writes to.
async fn start_cluster(builder: ClusterBuilder) -> Cluster {
    let mut cluster = builder.start().await;
    start_chain(&mut cluster, CHAIN, &MEMBERS).await;
    cluster
}

/// Kills `victim` after some acknowledged writes, lets the chain run without it, brings it back,
/// waits for it to serve again while writes continue, then verifies everything.
async fn kill_and_rejoin(name: &str, victim_node: u32, victim_target: u64) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = start_cluster(storage_cluster(3)).await;
    let load = Load::start(cluster.admin().clone());

    load.wait_acks(60, "before the kill");
    let before_kill = load.acks();
    let killed_at = Instant::now();
    cluster.kill9_storage(victim_node);
    // The chain continues without the victim.
    load.wait_acks(before_kill + 60, "without the victim");
    let degraded_after = killed_at.elapsed();
    let snapshot = routing(cluster.admin()).await.expect("routing");
    let chain = &snapshot.chains[&ChainId(CHAIN)];
    assert_eq!(
        chain.state_of(TargetId(victim_target)),
        Some(PublicTargetState::Offline),
        "mgmtd took the killed target out: {chain:?}"
    );

    // Bring it back while writes flow: it resyncs and serves again.
    let restarted_at = Instant::now();
    cluster.restart_storage(victim_node);
    let all: Vec<TargetId> = MEMBERS.iter().map(|m| TargetId(m.0)).collect();
    wait_serving(cluster.admin(), CHAIN, all).await;
    let rejoined_after = restarted_at.elapsed();
    let at_rejoin = load.acks();
    load.wait_acks(at_rejoin + 30, "after the rejoin");
    let model = load.finish().await;
    let replicas =
        verify_replicas(cluster.admin(), CHAIN, &MEMBERS, &model.acked, same_bytes).await;
    println!(
        "{name}: {} acknowledged writes ({} during the outage and resync) verified on {replicas} \
         replicas over {} chunks; longest gap between acknowledgements {:?}; 60 writes after the \
         kill acknowledged {:?} after it; target {victim_target} serving again {:?} after its \
         restart; refusals seen by the client: {:?}",
        model.acks,
        at_rejoin - before_kill,
        model.acked.len(),
        model.gap_max,
        degraded_after,
        rejoined_after,
        model.refusals,
    );
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_middle_replica_and_resync() {
    kill_and_rejoin("kill -9 middle replica", 3, 102).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_head_mid_write_and_resync() {
    kill_and_rejoin("kill -9 chain head", 2, 101).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmtd_restart_fences_and_resumes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // mgmtd's KV on disk (fjall), so it can be killed and started again.
    let mut cluster = start_cluster(storage_cluster(3).mgmtd_kv_on_disk()).await;
    let load = Load::start(cluster.admin().clone());
    load.wait_acks(60, "before mgmtd dies");
    let routing_before = routing(cluster.admin()).await.expect("routing");
    let killed_at = Instant::now();
    cluster.mgmtd().proc().kill9();

    // Every daemon fences itself: the writer (whose routing is still valid) sees Fenced, and a
    // read sent straight to the tail is refused too.
    let fenced =
        r3fs_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(5), || {
            load.fenced() > 0
        });
    assert!(fenced, "no write was refused with Fenced while mgmtd was down");
    let fenced_after = killed_at.elapsed();
    let tail = routing_before.address_of(TargetId(MEMBERS[2].0)).expect("tail address");
    let mut tail_client = DataClient::connect(tail).await.expect("connect to the tail");
    let request = r3fs_wire::BatchReadRequest {
        items: vec![r3fs_wire::BatchReadItem {
            chain_id: ChainId(CHAIN),
            chunk_id: ChunkId::new(InodeId(9), 0),
            offset: 0,
            length: 4096,
        }],
    };
    // Each daemon fences on its own heartbeat clock, so the tail may fence a little after the
    // head refused the first write: poll until it refuses, within a bound.
    let read_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (reply, _) = tail_client.batch_read(request.clone()).await.expect("read from the tail");
        if reply.items[0].outcome == Outcome::Failed(ErrorCode::Fenced) {
            break;
        }
        assert!(
            Instant::now() < read_deadline,
            "a fenced daemon must refuse reads; the tail still answers {:?}",
            reply.items[0].outcome
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acks_while_down = load.acks();

    // mgmtd comes back on the same address and KV; the daemons heartbeat again, apply its
    // routing and lift the fence.
    let restarted_at = Instant::now();
    cluster.restart_mgmtd();
    load.wait_acks(acks_while_down + 60, "after mgmtd's restart");
    let resumed_after = restarted_at.elapsed();
    let model = load.finish().await;
    let replicas =
        verify_replicas(cluster.admin(), CHAIN, &MEMBERS, &model.acked, same_bytes).await;
    println!(
        "mgmtd kill -9 and restart: {} acknowledged writes verified on {replicas} replicas over {} \
         chunks; first Fenced refusal {:?} after the kill; 60 writes acknowledged {:?} after \
         mgmtd's restart; longest gap between acknowledgements {:?}; refusals: {:?}",
        model.acks,
        model.acked.len(),
        fenced_after,
        resumed_after,
        model.gap_max,
        model.refusals,
    );
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
}
