//! Fill-the-disk fault tests with real processes: one mgmtd and three storage daemons holding one
//! replication-3 chain, whose targets live on small real ext4 file systems (image files on loop
//! devices, mounted in temp dirs; skipped with a printed reason where loop devices or root are
//! missing). The chunk store's own capacity is far above the file systems, so the file system is
//! what runs out.
//!
//! - `replicated_chain_fills_every_disk`: every replica's disk is small. Whole-chunk writes go
//!   through the head until one is refused. Checks: the refusal is `NoSpace` (errno ENOSPC, not
//!   retryable), more writes keep being refused cleanly, every daemon keeps running and serves
//!   reads, every acknowledged write reads back bit-exact from every replica, again after each
//!   daemon is restarted on its full disk (the chunk store's metadata survived), and after chunks
//!   are removed, writes succeed again and read back.
//! - `one_full_replica_fails_writes_cleanly`: only the tail's disk is small. Writes that the tail
//!   cannot store are refused to the client with `NoSpace` (the head and middle drop their
//!   pending versions), the chain stays serving and consistent (every acknowledged write on every
//!   replica), and after removals the chain takes writes again.

mod common;

use common::loopfs::LoopFs;
use common::*;
use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_storage::client::DataClient;
use r3fs_storage::routing::RoutingSnapshot;
use r3fs_testkit::cluster::{Cluster, eventually};
use r3fs_types::error::errno;
use r3fs_types::{ChainId, ChunkId, ErrorCode, InodeId, TargetId};
use r3fs_wire::{Outcome, UpdateKind, UpdateRequest};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const CHAIN: u32 = 1;
const MEMBERS: [(u64, u32); 3] = [(101, 2), (102, 3), (103, 4)];
/// Each small file system: room for a few dozen 1 MiB chunks after ext4's own metadata.
const FS_BYTES: u64 = 40 << 20;
/// A write neither acknowledged nor refused within this is a hang (the test fails).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on writes before a disk must be full (FS_BYTES / CHUNK_SIZE plus slack).
const WRITES_MAX: u64 = 200;
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct SmallDisks {
    // Field order is drop order: daemons stop before their file systems are unmounted.
    cluster: Cluster,
    /// The loop file systems by node.
    disks: BTreeMap<u32, LoopFs>,
}

/// Starts mgmtd and three daemons holding the chain; the nodes in `small` get their target path
/// on a fresh small ext4 file system, the others on the cluster's temp dir. None when loop file
/// systems cannot be made here (the reason is printed).
async fn start_cluster(small: &[u32]) -> Option<SmallDisks> {
    let mut disks = BTreeMap::new();
    for &node in small {
        match LoopFs::create(Path::new(env!("CARGO_TARGET_TMPDIR")), FS_BYTES) {
            Ok(fs) => {
                disks.insert(node, fs);
            }
            Err(reason) => {
                println!("SKIPPED: cannot make a small real file system here: {reason}");
                return None;
            }
        }
    }
    let mut builder = storage_cluster(3);
    for (&node, fs) in &disks {
        builder = builder.storage_disk(node, &fs.mount);
    }
    let mut cluster = builder.start().await;
    start_chain(&mut cluster, CHAIN, &MEMBERS).await;
    Some(SmallDisks { cluster, disks })
}

async fn routing(admin: &MgmtdClient) -> RoutingSnapshot {
    let info = admin.get_routing_info(0, Duration::ZERO).await.expect("routing").expect("some");
    RoutingSnapshot::from_pb(&info).0
}

/// The client's view: acknowledged chunk contents, and what was refused.
#[derive(Default)]
struct Model {
    acked: BTreeMap<ChunkId, Vec<u8>>,
    acks: u64,
    refusals: BTreeMap<String, u64>,
}

/// One client talking to the chain's head, following it when it moves or restarts.
struct Writer {
    client: Option<(std::net::SocketAddr, DataClient)>,
    sequence: u64,
}

impl Writer {
    /// Sends one update to the current head, retrying only transient refusals (busy, routing
    /// moving) with the same sequence. Returns the final outcome.
    async fn update(
        &mut self,
        admin: &MgmtdClient,
        request: UpdateRequest,
        data: &[u8],
    ) -> Outcome {
        let started = Instant::now();
        loop {
            let snapshot = routing(admin).await;
            let chain = &snapshot.chains[&ChainId(CHAIN)];
            let head = chain.head().and_then(|h| snapshot.address_of(h)).expect("head address");
            if self.client.as_ref().is_none_or(|(a, _)| *a != head) {
                let client = DataClient::connect(head).await.expect("connect to the head");
                self.client = Some((head, client));
            }
            let (_, client) = self.client.as_mut().expect("client");
            let request = UpdateRequest { chain_version: chain.chain_version, ..request.clone() };
            match tokio::time::timeout(CALL_TIMEOUT, client.update(request.clone(), data)).await {
                Ok(Ok(reply)) => match reply.outcome {
                    Outcome::Failed(code)
                        if code.is_retryable() && started.elapsed() < CALL_TIMEOUT =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    outcome => return outcome,
                },
                // A restarted daemon closed the connection: connect again and resend (same
                // sequence, so a write that was applied is not applied twice).
                Ok(Err(error)) if started.elapsed() < CALL_TIMEOUT => {
                    let _ = error;
                    self.client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(error)) => panic!("update {request:?}: connection failed: {error}"),
                Err(_) => panic!(
                    "update {request:?} was neither acknowledged nor refused in {CALL_TIMEOUT:?}: \
                     a full disk must fail a write cleanly, not hang it"
                ),
            }
        }
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    async fn write_chunk(
        &mut self,
        admin: &MgmtdClient,
        model: &mut Model,
        chunk: ChunkId,
        seed: u64,
    ) -> Outcome {
        let data = pattern(seed, CHUNK_SIZE as usize);
        let sequence = self.next_sequence();
        let request =
            write_request(CHAIN, r3fs_types::ChainVersion(0), chunk, 0, &data, 7, sequence);
        let outcome = self.update(admin, request, &data).await;
        match outcome {
            Outcome::Ok => {
                model.acked.insert(chunk, data);
                model.acks += 1;
            }
            Outcome::Failed(code) => *model.refusals.entry(format!("{code:?}")).or_default() += 1,
        }
        outcome
    }

    async fn remove_chunk(&mut self, admin: &MgmtdClient, model: &mut Model, chunk: ChunkId) {
        let sequence = self.next_sequence();
        let request = UpdateRequest {
            kind: UpdateKind::Remove,
            length: 0,
            payload_crc32c: crc32c::crc32c(&[]),
            ..write_request(CHAIN, r3fs_types::ChainVersion(0), chunk, 0, &[], 7, sequence)
        };
        let outcome = self.update(admin, request, &[]).await;
        assert_eq!(outcome, Outcome::Ok, "removing {chunk} on a full disk");
        model.acked.remove(&chunk);
    }
}

fn chunk(index: u64) -> ChunkId {
    ChunkId::new(InodeId(9), index)
}

/// Writes new whole chunks from `*next` on until one is refused; returns the refusal.
async fn fill(
    writer: &mut Writer,
    admin: &MgmtdClient,
    model: &mut Model,
    next: &mut u64,
) -> ErrorCode {
    let first = *next;
    loop {
        assert!(*next - first < WRITES_MAX, "{WRITES_MAX} chunk writes and the disk is not full");
        let outcome = writer.write_chunk(admin, model, chunk(*next), 5000 + *next).await;
        *next += 1;
        if let Outcome::Failed(code) = outcome {
            return code;
        }
    }
}

/// Reads every acknowledged chunk from every replica and compares bytes; also checks that the
/// chunks the model says were never acknowledged-and-kept are absent or unchanged is not
/// claimed: only acknowledged content is asserted.
async fn verify(admin: &MgmtdClient, model: &Model) -> usize {
    verify_replicas(admin, CHAIN, &MEMBERS, &model.acked, same_bytes).await
}

/// Restarts each daemon on a small disk in turn (SIGTERM, start on the same full disk) and waits
/// until the whole chain serves again after each (the target rejoins through resync).
async fn restart_full(setup: &mut SmallDisks) {
    let all: Vec<TargetId> = MEMBERS.iter().map(|m| TargetId(m.0)).collect();
    let admin = setup.cluster.admin().clone();
    for &node in setup.disks.keys() {
        let before = routing(&admin).await.chains[&ChainId(CHAIN)].chain_version;
        let daemon = setup.cluster.storage(node);
        assert!(daemon.proc().terminate(Duration::from_secs(30)), "clean stop");
        daemon.restart();
        // A restarted target rejoins through resync, which bumps the chain version: wait for
        // that, not for the routing from before the restart.
        eventually("the restarted target serves again", async || {
            let snapshot = wait_serving(&admin, CHAIN, all.clone()).await;
            (snapshot.chains[&ChainId(CHAIN)].chain_version > before).then_some(())
        })
        .await;
    }
}

fn check_clean_no_space(code: ErrorCode) {
    assert_eq!(code, ErrorCode::NoSpace, "a full disk is reported as NoSpace");
    assert_eq!(code.errno(), errno::ENOSPC, "NoSpace surfaces as ENOSPC");
    assert!(!code.is_retryable(), "NoSpace is final for the client");
}

/// The whole scenario; `small` lists the nodes on small disks.
async fn fill_verify_restart_free(name: &str, small: &[u32]) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut setup) = start_cluster(small).await else { return };
    let admin = setup.cluster.admin().clone();
    let mut model = Model::default();
    let mut writer = Writer { client: None, sequence: 0 };
    let mut next = 0u64;

    let started = Instant::now();
    let code = fill(&mut writer, &admin, &mut model, &mut next).await;
    let filled_after = started.elapsed();
    check_clean_no_space(code);
    let acked_when_full = model.acks;
    let free: Vec<(u32, u64)> = setup.disks.iter().map(|(n, fs)| (*n, fs.free_bytes())).collect();

    // More writes keep being refused the same way, promptly, and nothing hangs.
    for _ in 0..3 {
        let outcome = writer.write_chunk(&admin, &mut model, chunk(next), 5000 + next).await;
        next += 1;
        let Outcome::Failed(code) = outcome else { panic!("a write on a full disk succeeded") };
        check_clean_no_space(code);
    }
    for (_, node) in MEMBERS {
        let running = !setup.cluster.storage(node).proc().has_exited();
        assert!(running, "daemon {node} keeps running on a full disk");
    }
    // Reads keep working, from every replica.
    let replicas = verify(&admin, &model).await;

    // The chunk store's metadata survives a restart on a full disk.
    let restart_started = Instant::now();
    restart_full(&mut setup).await;
    let restarted_after = restart_started.elapsed();
    verify(&admin, &model).await;

    // Removing chunks frees space: writes succeed again.
    let removed: Vec<ChunkId> = model.acked.keys().copied().step_by(2).collect();
    for chunk in &removed {
        writer.remove_chunk(&admin, &mut model, *chunk).await;
    }
    let acked_before_refill = model.acks;
    let code = fill(&mut writer, &admin, &mut model, &mut next).await;
    check_clean_no_space(code);
    let refilled = model.acks - acked_before_refill;
    assert!(refilled > 0, "writes succeed again after chunks were removed");
    verify(&admin, &model).await;

    println!(
        "{name}: {acked_when_full} whole-chunk writes acknowledged before the first NoSpace \
         ({filled_after:?}); free bytes per small disk then {free:?}; {} chunks removed, then {refilled} \
         more writes acknowledged until NoSpace again; {} acknowledged chunks verified bit-exact on \
         {replicas} replicas, before and after restarting every daemon on a full disk (all back \
         serving in {restarted_after:?}); refusals seen: {:?}",
        removed.len(),
        model.acked.len(),
        model.refusals,
    );
    // The daemons stop before their file systems are unmounted.
    let SmallDisks { cluster, disks } = setup;
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
    drop(disks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_chain_fills_every_disk() {
    fill_verify_restart_free("every replica on a small disk", &[2, 3, 4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_full_replica_fails_writes_cleanly() {
    fill_verify_restart_free("only the tail on a small disk", &[4]).await;
}
