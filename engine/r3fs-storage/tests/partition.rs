//! Network partition test with real processes in separate network namespaces (`ip netns`):
//! mgmtd in one namespace, each of three storage daemons (one replication-3 chain) in its own,
//! all joined by veth pairs to a bridge in the test's namespace, where the clients run. Skipped
//! with a printed reason where namespaces cannot be made (not root, no `ip`).
//!
//! `partitioned_head_fences_and_rejoins`: while a writer streams writes, the chain head's
//! namespace starts dropping every packet to mgmtd (a blackhole route: silent loss both ways for
//! TCP). Clients can still reach the old head — the split-brain case: a client with stale
//! routing keeps sending writes to it for the whole partition. Checks: the old head refuses
//! writes with `Fenced` (it stops acknowledging after half the heartbeat timeout without mgmtd)
//! and never acknowledges a write after its first `Fenced` while cut off; mgmtd takes it out of
//! the chain and the writer continues on the new head; after the link heals the old head resyncs
//! and serves again. Every write acknowledged by anyone (the writer and the stale client) is then
//! read back bit-exact from every replica. Prints the counts and the longest gap between two
//! acknowledgements; timings are never asserted.

mod common;

use common::load::*;
use common::netns::Net;
use common::*;
use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_storage::client::DataClient;
use r3fs_testkit::cluster::{Role, eventually};
use r3fs_types::{ChainId, ChunkId, ErrorCode, InodeId, PublicTargetState, TargetId};
use r3fs_wire::Outcome;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MEMBERS: [(u64, u32); 3] = [(101, 2), (102, 3), (103, 4)];
/// Namespace index of mgmtd (the storage nodes use their node id).
const MGMTD_NS: u8 = 10;
/// mgmtd's failure detection (the daemons fence after half of it).
const HEARTBEAT_TIMEOUT_MS: u64 = 1500;

/// What the stale client saw from the old head.
#[derive(Default)]
struct Stale {
    model: Model,
    first_fenced: Option<Duration>,
    /// Acknowledgements received after the first `Fenced` (must stay 0).
    acks_after_fenced: u64,
}

/// A client whose routing is from before the partition: sends a new write (inode 10, its own
/// client id) to `old_head` with `chain_version` every few ms until `stop`, never refreshing.
async fn stale_client(
    old_head: SocketAddr,
    chain_version: r3fs_types::ChainVersion,
    cut_at: Instant,
    stop: Arc<AtomicBool>,
) -> Stale {
    let mut stale = Stale::default();
    let mut client: Option<DataClient> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // Every write goes to a place of its own, so a write in doubt (no reply) never
        // overlaps an acknowledged one.
        let chunk = ChunkId::new(InodeId(10), i / OFFSETS);
        let offset = (i % OFFSETS) as usize * WRITE_BYTES;
        let data = pattern(90_000 + i, WRITE_BYTES);
        i += 1;
        if client.is_none() {
            match tokio::time::timeout(CALL_TIMEOUT, DataClient::connect(old_head)).await {
                Ok(Ok(c)) => client = Some(c),
                _ => {
                    *stale.model.refusals.entry("connect failed".into()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("client");
        let request = write_request(CHAIN, chain_version, chunk, offset as u32, &data, 8, i);
        match tokio::time::timeout(CALL_TIMEOUT, c.update(request, &data)).await {
            Ok(Ok(reply)) if reply.outcome == Outcome::Ok => {
                apply(stale.model.acked.entry(chunk).or_default(), offset, &data);
                stale.model.acks += 1;
                if stale.first_fenced.is_some() {
                    stale.acks_after_fenced += 1;
                }
            }
            Ok(Ok(reply)) => {
                let Outcome::Failed(code) = reply.outcome else { unreachable!() };
                if code == ErrorCode::Fenced && stale.first_fenced.is_none() {
                    stale.first_fenced = Some(cut_at.elapsed());
                }
                *stale.model.refusals.entry(format!("{code:?}")).or_default() += 1;
            }
            Ok(Err(_)) | Err(_) => {
                // A write in doubt (no reply): it may or may not have been applied; the model
                // claims nothing about its place. Reconnect.
                *stale.model.refusals.entry("no reply".into()).or_default() += 1;
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stale
}

/// Reads every chunk of `writer` (compared whole) and of `stale` (compared at the places it
/// acknowledged: its writes in doubt may have landed elsewhere) from every replica.
async fn verify(admin: &MgmtdClient, writer: &Model, stale: &Model) -> usize {
    verify_replicas(admin, CHAIN, &MEMBERS, &writer.acked, same_bytes).await;
    verify_replicas(admin, CHAIN, &MEMBERS, &stale.acked, |target, chunk, expected, bytes| {
        assert!(bytes.len() >= expected.len(), "target {target} chunk {chunk} is short");
        // All-zero places of the model are holes (never acknowledged); the pattern never
        // produces 32 KiB of zeros.
        let lost = expected
            .chunks(WRITE_BYTES)
            .zip(bytes.chunks(WRITE_BYTES))
            .any(|(e, b)| e.iter().any(|x| *x != 0) && e != b);
        assert!(!lost, "target {target} chunk {chunk}: a write the old head acknowledged is lost");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_head_fences_and_rejoins() {
    let mut net = match Net::create() {
        Ok(net) => net,
        Err(reason) => {
            println!("SKIPPED: cannot make network namespaces here: {reason}");
            return;
        }
    };
    for index in [MGMTD_NS, 2, 3, 4] {
        if let Err(reason) = net.add(index) {
            println!("SKIPPED: cannot make network namespaces here: {reason}");
            return;
        }
    }

    // mgmtd in its own namespace, reached by the daemons and the test through the bridge; each
    // daemon in its own, listening on (and advertising) its namespace address. Declared after
    // `net`, the cluster stops before the namespaces go.
    let mgmtd_ns = net.namespace(MGMTD_NS);
    let mut builder = storage_cluster(3)
        .config(Role::Mgmtd, &format!("heartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}"))
        .mgmtd_host(&net.address(MGMTD_NS))
        .wrapper(Role::Mgmtd, &["ip", "netns", "exec", &mgmtd_ns]);
    for &(_, node) in &MEMBERS {
        let ns = net.namespace(node as u8);
        builder = builder
            .storage_wrapper(node, &["ip", "netns", "exec", &ns])
            .storage_config(node, &format!("listen_host = \"{}\"", net.address(node as u8)));
    }
    let mut cluster = builder.start().await;
    let admin = cluster.admin().clone();
    let before = start_chain(&mut cluster, CHAIN, &MEMBERS).await;
    let head = TargetId(MEMBERS[0].0);
    let head_node = MEMBERS[0].1 as u8;
    let old_head = before.address_of(head).expect("head address");
    assert_eq!(old_head.ip().to_string(), net.address(head_node), "the head advertises its ns");
    let old_version = before.chains[&ChainId(CHAIN)].chain_version;

    let load = Load::start(admin.clone());
    load.wait_acks(60, "before the partition");

    // Cut the head from mgmtd; clients still reach it.
    let cut_at = Instant::now();
    let acks_at_cut = load.acks();
    net.block(head_node, &net.address(MGMTD_NS));
    let stale_stop = Arc::new(AtomicBool::new(false));
    let stale_task = tokio::spawn(stale_client(old_head, old_version, cut_at, stale_stop.clone()));

    // mgmtd takes the head out; the writer continues on the new head.
    eventually("the cut-off head is taken out of the chain", async || {
        let snapshot = routing(&admin).await?;
        let chain = &snapshot.chains[&ChainId(CHAIN)];
        (chain.state_of(head) != Some(PublicTargetState::Serving) && chain.head() != Some(head))
            .then_some(())
    })
    .await;
    let failover_after = cut_at.elapsed();
    load.wait_acks(load.acks() + 60, "on the new head");
    // Keep the partition a while longer so the stale client probes the fenced head for long.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acks_partitioned = load.acks() - acks_at_cut;

    // Heal: the old head reaches mgmtd again, resyncs and serves.
    let healed_at = Instant::now();
    net.unblock(head_node, &net.address(MGMTD_NS));
    let all: Vec<TargetId> = MEMBERS.iter().map(|m| TargetId(m.0)).collect();
    wait_serving(&admin, CHAIN, all).await;
    let rejoined_after = healed_at.elapsed();
    stale_stop.store(true, Ordering::SeqCst);
    let stale = tokio::time::timeout(Duration::from_secs(60), stale_task)
        .await
        .expect("stale client stops")
        .expect("stale client task");
    let at_rejoin = load.acks();
    load.wait_acks(at_rejoin + 30, "after the rejoin");
    let model = load.finish().await;

    assert!(
        stale.first_fenced.is_some(),
        "the cut-off head never refused the stale client with Fenced: {:?}",
        stale.model.refusals
    );
    assert_eq!(
        stale.acks_after_fenced, 0,
        "the cut-off head acknowledged writes after it had fenced itself"
    );
    let replicas = verify(&admin, &model, &stale.model).await;
    println!(
        "network partition of the chain head from mgmtd: {} writer acknowledgements ({} while \
         the head was cut off) and {} acknowledged by the old head to a stale client, all \
         verified on {replicas} replicas over {} chunks; the old head first refused with Fenced \
         {:?} after the cut (heartbeat timeout {HEARTBEAT_TIMEOUT_MS} ms), 0 acknowledgements after \
         that; mgmtd took it out {:?} after the cut; it served again {:?} after the link healed; \
         longest gap between the writer's acknowledgements {:?}; writer refusals {:?}; stale \
         client refusals {:?}",
        model.acks,
        acks_partitioned,
        stale.model.acks,
        model.acked.len() + stale.model.acked.len(),
        stale.first_fenced.expect("fenced"),
        failover_after,
        rejoined_after,
        model.gap_max,
        model.refusals,
        stale.model.refusals,
    );
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
    drop(net);
}
