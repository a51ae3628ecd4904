//! Resync with real processes on loopback: one mgmtd and two storage daemons holding one
//! replication-2 chain. The tail is killed (kill -9), chunks are written while it is away, it
//! comes back and its predecessor resyncs it (full-chunk replaces of what differs).
//!
//! - `resync_bandwidth_limit_is_a_lower_bound`: with `resync_bytes_per_sec` set low, the resync
//!   of `B` bytes cannot finish sooner than `(B - largest chunk) / limit` after the restart (the
//!   limiter's guarantee: see src/pace.rs). A lower bound, not a benchmark.
//! - `resync_without_a_limit_completes`: the same with the knob unset (0).
//!
//! Both check the data on the resynced replica, and the resync progress the predecessor puts in
//! its heartbeats (`TargetReport.resync`): its debug line for every report, and mgmtd's
//! `TargetInfo.resync` when mgmtd copies it (printed either way).

mod common;

use common::*;
use r3fs_rpc::admin;
use r3fs_storage::client::DataClient;
use r3fs_testkit::cluster::{Role, eventually};
use r3fs_types::{ChainId, ChunkId, InodeId, PublicTargetState, TargetId};
use r3fs_wire::Outcome;
use std::time::{Duration, Instant};

const CHAIN: u32 = 1;
const MEMBERS: [(u64, u32); 2] = [(201, 2), (202, 3)];
/// Chunks written before the kill (the same on both replicas afterwards: not transferred).
const BEFORE: u64 = 2;
/// Whole chunks written while the tail is away: what the resync must send.
const DURING: u64 = 6;
const LIMIT_BYTES_PER_SEC: u64 = 2 << 20;
/// The tests start three processes each: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chunk(i: u64) -> ChunkId {
    ChunkId::new(InodeId(31), i)
}

/// Removes ANSI colour sequences from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

struct Run {
    elapsed: Duration,
    bytes: u64,
    largest: u64,
}

async fn kill_write_restart(limit: u64) -> Run {
    let mut cluster = storage_cluster(2)
        .config(Role::Storage, &format!("resync_bytes_per_sec = {limit}"))
        .start()
        .await;
    let admin = cluster.admin().clone();
    let snapshot = start_chain(&mut cluster, CHAIN, &MEMBERS).await;
    let head_address = snapshot.address_of(TargetId(201)).expect("head address");
    let mut head = DataClient::connect(head_address).await.expect("connect head");
    let mut expected = Vec::new();
    let mut seq = 0;
    let chain_version = snapshot.chains[&ChainId(CHAIN)].chain_version;
    for i in 0..BEFORE {
        let data = pattern(i, 100 << 10);
        seq += 1;
        let reply = write(
            &mut head,
            write_request(CHAIN, chain_version, chunk(i), 0, &data, 5, seq),
            &data,
        )
        .await;
        assert_eq!(reply.outcome, Outcome::Ok);
        expected.push(data);
    }

    cluster.kill9_storage(MEMBERS[1].1);
    let snapshot = eventually("the tail taken out", async || {
        let info = admin.get_routing_info(0, Duration::ZERO).await.ok()??;
        let (snapshot, _) = r3fs_storage::routing::RoutingSnapshot::from_pb(&info);
        let chain = snapshot.chains.get(&ChainId(CHAIN))?;
        (chain.state_of(TargetId(202)) == Some(PublicTargetState::Offline)).then_some(snapshot)
    })
    .await;
    let chain_version = snapshot.chains[&ChainId(CHAIN)].chain_version;
    let mut bytes = 0;
    for i in BEFORE..BEFORE + DURING {
        let data = pattern(i, CHUNK_SIZE as usize);
        seq += 1;
        let request = write_request(CHAIN, chain_version, chunk(i), 0, &data, 5, seq);
        // The head may apply the new chain version a moment after mgmtd published it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = write(&mut head, request.clone(), &data).await;
            if reply.outcome == Outcome::Ok {
                break;
            }
            assert!(Instant::now() < deadline, "write {i} with the tail away: {reply:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bytes += data.len() as u64;
        expected.push(data);
    }

    let restarted = Instant::now();
    cluster.restart_storage(MEMBERS[1].1);
    let mut reported = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(list) = admin.list_targets(admin::ListTargetsRequest {}).await {
            for info in &list.targets {
                if let Some(progress) = info.resync {
                    reported.push((info.target_id, progress));
                }
            }
        }
        let serving = async {
            let info = admin.get_routing_info(0, Duration::ZERO).await.ok()??;
            let (snapshot, _) = r3fs_storage::routing::RoutingSnapshot::from_pb(&info);
            let chain = snapshot.chains.get(&ChainId(CHAIN))?;
            Some(chain.state_of(TargetId(202)) == Some(PublicTargetState::Serving))
        }
        .await;
        if serving == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted tail did not serve again in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = restarted.elapsed();

    // The resynced replica holds every chunk.
    let snapshot = wait_serving(&admin, CHAIN, vec![TargetId(201), TargetId(202)]).await;
    let tail = snapshot.address_of(TargetId(202)).expect("tail address");
    let mut client = DataClient::connect(tail).await.expect("connect tail");
    for (i, want) in expected.iter().enumerate() {
        let (outcome, got) = read(&mut client, CHAIN, chunk(i as u64), 0, CHUNK_SIZE).await;
        assert_eq!(outcome, Outcome::Ok, "chunk {i} on the resynced tail");
        assert!(got == *want, "chunk {i} on the resynced tail: wrong bytes");
    }

    // Progress as the predecessor reported it in its heartbeats.
    let lines: Vec<String> = cluster
        .storage(MEMBERS[0].1)
        .proc()
        .output()
        .iter()
        .map(|l| plain(l))
        .filter(|l| l.contains("resync progress reported"))
        .collect();
    let totals: Vec<u64> = lines.iter().filter_map(|l| field(l, "chunks_total")).collect();
    let done: Vec<u64> = lines.iter().filter_map(|l| field(l, "chunks_done")).collect();
    let done_bytes: Vec<u64> = lines.iter().filter_map(|l| field(l, "bytes_done")).collect();
    assert!(totals.iter().all(|t| *t <= DURING), "only the changed chunks differ: {totals:?}");
    assert!(done.windows(2).all(|w| w[0] <= w[1]) || done.is_empty(), "{done:?}");
    if limit > 0 {
        // Seconds of paced transfers: reports every 250 ms must have seen them under way.
        assert!(
            totals.contains(&DURING),
            "no report with every differing chunk counted: {lines:?}"
        );
        assert!(done.iter().any(|d| (1..DURING).contains(d)), "no report mid-way: {lines:?}");
    }
    for (target, progress) in &reported {
        assert_eq!(*target, 202, "only the synced target carries progress: {reported:?}");
        assert!(progress.chunks_total <= DURING && progress.chunks_done <= progress.chunks_total);
    }
    println!(
        "resync (limit {limit} B/s): {DURING} chunks ({bytes} bytes) sent, serving again {:?} \
         after the restart; predecessor reported progress {} times (max chunks_total {:?}, \
         chunks_done {:?}, bytes_done {:?}); mgmtd's list-targets showed it {} times{}",
        elapsed,
        lines.len(),
        totals.iter().max(),
        done.iter().max(),
        done_bytes.iter().max(),
        reported.len(),
        reported.last().map(|(_, p)| format!(" (last {p:?})")).unwrap_or_default(),
    );
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
    Run { elapsed, bytes, largest: u64::from(CHUNK_SIZE) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_bandwidth_limit_is_a_lower_bound() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let run = kill_write_restart(LIMIT_BYTES_PER_SEC).await;
    let bound =
        Duration::from_secs_f64((run.bytes - run.largest) as f64 / LIMIT_BYTES_PER_SEC as f64);
    assert!(
        run.elapsed >= bound,
        "resync of {} bytes at {LIMIT_BYTES_PER_SEC} B/s finished {:?} after the restart, under \
         the limiter's lower bound {bound:?}",
        run.bytes,
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_without_a_limit_completes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let run = kill_write_restart(0).await;
    assert_eq!(run.bytes, DURING * u64::from(CHUNK_SIZE));
}
