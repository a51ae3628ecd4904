//! Chunks corrupted on disk, with real processes on loopback: one mgmtd and three storage daemons
//! holding one replication-3 chain. Nothing is stopped: the test flips bytes inside chunk data in
//! a replica's block files (located through the on-disk format of docs/design/chunk-store.md:
//! the data of a chunk lies in one slot of a `blocks-<class>` file), then reads every chunk
//! through every replica.
//!
//! Checked: a read of a corrupted copy is refused with `ChunkCorrupt` (the code clients retry on
//! another replica) and another replica serves the right bytes; the daemon reports the chunk (a
//! warn line naming the chunk, `r3fs_storage_corrupt_chunks_total{target}`), repairs it from a
//! chain peer, and afterwards the corrupted replica itself serves the right bytes
//! (`r3fs_storage_chunks_repaired_total`). A partial write whose base is corrupt at the head
//! waits for the repair and commits. A chunk corrupted on every replica stays refused everywhere
//! (never served as zeros or rotten bytes) and is reported unrepairable.

mod common;

use bytes::Bytes;
use common::*;
use r3fs_storage::client::DataClient;
use r3fs_storage::routing::RoutingSnapshot;
use r3fs_testkit::free_port;
use r3fs_types::{ChainId, ChunkId, ErrorCode, InodeId, TargetId};
use r3fs_wire::{BatchReadItem, BatchReadRequest, Outcome};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const CHAIN: u32 = 1;
const MEMBERS: [(u64, u32); 3] = [(101, 2), (102, 3), (103, 4)];
const CHUNKS: u64 = 7;
/// Chunks corrupted on the middle replica only.
const MIDDLE_CORRUPT: [u64; 4] = [0, 1, 2, 3];
/// Corrupted on every replica: lost.
const LOST: u64 = 4;
/// Corrupted at the head, then partially overwritten through the chain.
const HEAD_CORRUPT: u64 = 5;

fn chunk(i: u64) -> ChunkId {
    ChunkId::new(InodeId(77), i)
}

fn content(i: u64) -> Vec<u8> {
    pattern(5000 + i, (256 << 10) + i as usize * 4096 + 123)
}

/// `GET /metrics` from a daemon's exporter.
fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to metrics");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read metrics");
    text
}

/// The value of `name{target="<target>"}` (0 when absent).
fn metric(text: &str, name: &str, target: u64) -> u64 {
    let label = format!("target=\"{target}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Flips one byte inside every copy of `needle` found in the target's block files; returns how
/// many copies were changed. The write goes through the page cache and is synced; the daemon's
/// O_DIRECT reads see it (a direct read writes back and bypasses cached pages).
fn corrupt_on_disk(disk: &Path, target: u64, needle: &[u8]) -> usize {
    let dir = disk.join(format!("target-{target}"));
    let mut changed = 0;
    for entry in std::fs::read_dir(&dir).expect("list target dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !name.starts_with("blocks-") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read block file");
        if bytes.len() < needle.len() {
            continue;
        }
        // A chunk's data starts a block's data area: 4 KiB aligned (slots and headers are
        // multiples of 4 KiB), so only aligned offsets are compared.
        let hits: Vec<usize> = (0..bytes.len().saturating_sub(needle.len()) + 1)
            .step_by(4096)
            .filter(|&at| bytes[at..at + needle.len()] == *needle)
            .collect();
        if hits.is_empty() {
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open block file");
        for at in hits {
            let at = at + 100; // inside the first 4 KiB unit of the chunk's data
            use std::os::unix::fs::FileExt;
            file.write_all_at(&[bytes[at] ^ 0x5a], at as u64).expect("flip a byte");
            changed += 1;
        }
        file.sync_all().expect("sync block file");
    }
    changed
}

async fn read_once(client: &mut DataClient, chunk: ChunkId, len: u32) -> (Outcome, Bytes) {
    let request = BatchReadRequest {
        items: vec![BatchReadItem {
            chain_id: ChainId(CHAIN),
            chunk_id: chunk,
            offset: 0,
            length: len,
        }],
    };
    let (reply, payload) = client.batch_read(request).await.expect("batch read");
    assert!(reply.outcome.is_ok(), "{reply:?}");
    (reply.items[0].outcome, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_are_refused_served_elsewhere_reported_and_repaired() {
    // Each daemon exports its metrics on a port of its own: metrics[k] is MEMBERS[k]'s.
    let mut builder = storage_cluster(3);
    let mut metrics = Vec::new();
    for (_, node) in MEMBERS {
        let address = format!("127.0.0.1:{}", free_port());
        builder = builder.storage_config(node, &format!("[metrics]\nlisten = \"{address}\""));
        metrics.push(address);
    }
    let mut cluster = builder.start().await;
    let snapshot: RoutingSnapshot = start_chain(&mut cluster, CHAIN, &MEMBERS).await;
    let cluster_up = Instant::now();
    let chain_version = snapshot.chains[&ChainId(CHAIN)].chain_version;
    let address = |t: u64| -> SocketAddr { snapshot.address_of(TargetId(t)).expect("address") };

    // Write every chunk through the head.
    let mut expected: Vec<Vec<u8>> = (0..CHUNKS).map(content).collect();
    let mut head = DataClient::connect(address(101)).await.expect("connect head");
    for i in 0..CHUNKS {
        let data = &expected[i as usize];
        let request = write_request(CHAIN, chain_version, chunk(i), 0, data, 11, i + 1);
        let reply = write(&mut head, request, data).await;
        assert_eq!(reply.outcome, Outcome::Ok, "write chunk {i}");
    }

    // Rot: flip bytes in the chunk files on disk, nothing stopped.
    let disk = |t: u64| cluster.storage_disk(MEMBERS.iter().find(|m| m.0 == t).expect("member").1);
    let needle = |i: u64| content(i)[..64].to_vec();
    for i in MIDDLE_CORRUPT {
        assert_eq!(corrupt_on_disk(&disk(102), 102, &needle(i)), 1, "chunk {i} found once on 102");
    }
    for (t, _) in MEMBERS {
        assert_eq!(corrupt_on_disk(&disk(t), t, &needle(LOST)), 1, "lost chunk found on {t}");
    }
    assert_eq!(corrupt_on_disk(&disk(101), 101, &needle(HEAD_CORRUPT)), 1, "chunk on the head");

    // A partial write whose base is the head's corrupted copy: repaired first, then applied.
    let patch = pattern(42, 4096);
    let request = write_request(CHAIN, chain_version, chunk(HEAD_CORRUPT), 8192, &patch, 11, 100);
    let reply = write(&mut head, request, &patch).await;
    assert_eq!(reply.outcome, Outcome::Ok, "partial write onto a corrupt base");
    expected[HEAD_CORRUPT as usize][8192..8192 + 4096].copy_from_slice(&patch);

    // Read every chunk through every replica. A refused read is what a client retries on
    // another replica: do that, and check the bytes.
    let mut clients = Vec::new();
    for (t, _) in MEMBERS {
        clients.push((t, DataClient::connect(address(t)).await.expect("connect replica")));
    }
    let mut refused: Vec<(u64, u64)> = Vec::new();
    for i in 0..CHUNKS {
        let want = &expected[i as usize];
        let len = want.len() as u32;
        for r in 0..clients.len() {
            let t = clients[r].0;
            let (outcome, bytes) = read_once(&mut clients[r].1, chunk(i), len).await;
            match outcome {
                Outcome::Ok => assert!(bytes[..] == want[..], "chunk {i} from {t}: wrong bytes"),
                Outcome::Failed(ErrorCode::ChunkCorrupt) => {
                    refused.push((t, i));
                    if i == LOST {
                        continue;
                    }
                    let mut served = false;
                    for (other, (other_target, client)) in clients.iter_mut().enumerate() {
                        if other == r {
                            continue;
                        }
                        let (o, b) = read_once(client, chunk(i), len).await;
                        if o == Outcome::Ok {
                            assert!(
                                b[..] == want[..],
                                "chunk {i} from {other_target}: wrong bytes"
                            );
                            served = true;
                            break;
                        }
                    }
                    assert!(served, "chunk {i}: no other replica served it");
                }
                other => panic!("chunk {i} from {t}: {other:?}"),
            }
        }
    }
    for i in MIDDLE_CORRUPT {
        assert!(
            refused.contains(&(102, i)),
            "chunk {i} was read from its corrupted copy on 102 without a refusal: {refused:?}"
        );
    }

    // The corrupted replicas repair themselves: each now serves the right bytes itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (t, i) in refused.iter().copied().filter(|(_, i)| *i != LOST) {
        let r = clients.iter().position(|c| c.0 == t).expect("client");
        let want = &expected[i as usize];
        loop {
            let (outcome, bytes) = read_once(&mut clients[r].1, chunk(i), want.len() as u32).await;
            if outcome == Outcome::Ok {
                assert!(bytes[..] == want[..], "repaired chunk {i} on {t}: wrong bytes");
                break;
            }
            assert_eq!(outcome, Outcome::Failed(ErrorCode::ChunkCorrupt), "chunk {i} on {t}");
            assert!(Instant::now() < deadline, "chunk {i} on {t} not repaired within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The repaired copies are on disk: a fresh read verifies every unit again.
    for (t, _) in MEMBERS {
        let r = clients.iter().position(|c| c.0 == t).expect("client");
        for i in (0..CHUNKS).filter(|i| *i != LOST) {
            let want = &expected[i as usize];
            let (outcome, bytes) = read_once(&mut clients[r].1, chunk(i), want.len() as u32).await;
            assert_eq!(outcome, Outcome::Ok, "chunk {i} on {t} after repair");
            assert!(bytes[..] == want[..], "chunk {i} on {t} after repair: wrong bytes");
        }
    }

    // The lost chunk: refused on every replica, reported unrepairable, never served.
    let unrepairable;
    let lost_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut total = 0;
        for (address, (t, _)) in metrics.iter().zip(MEMBERS) {
            total += metric(&scrape(address), "r3fs_storage_chunks_unrepairable_total", t);
        }
        if total >= 3 {
            unrepairable = total;
            break;
        }
        assert!(Instant::now() < lost_deadline, "lost chunk not reported unrepairable: {total}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (t, client) in clients.iter_mut() {
        let (outcome, bytes) = read_once(client, chunk(LOST), 1 << 20).await;
        assert_eq!(outcome, Outcome::Failed(ErrorCode::ChunkCorrupt), "lost chunk on {t}");
        assert!(bytes.is_empty());
    }

    // Reported: metrics and a warn line naming each chunk.
    let mut corrupted = 0;
    let mut repaired = 0;
    for (address, (t, node)) in metrics.iter().zip(MEMBERS) {
        let text = scrape(address);
        let detected = metric(&text, "r3fs_storage_corrupt_chunks_total", t);
        let fixed = metric(&text, "r3fs_storage_chunks_repaired_total", t);
        let mine: Vec<u64> =
            refused.iter().filter(|(r, i)| *r == t && *i != LOST).map(|(_, i)| *i).collect();
        let expected_fixed = match t {
            102 => MIDDLE_CORRUPT.len() as u64,
            101 => 1,
            _ => 0,
        };
        assert_eq!(fixed, expected_fixed, "target {t} repaired count; refused reads {mine:?}");
        assert!(detected > fixed, "target {t}: {detected} detections, {fixed} repairs");
        corrupted += detected;
        repaired += fixed;
        let output = cluster.storage(node).proc().output().join("\n");
        let corrupt_ids: Vec<u64> = match t {
            102 => MIDDLE_CORRUPT.iter().copied().chain([LOST]).collect(),
            101 => vec![HEAD_CORRUPT, LOST],
            _ => vec![LOST],
        };
        for i in corrupt_ids {
            let id = chunk(i).to_string();
            assert!(
                output.lines().any(|l| l.contains("WARN")
                    && l.contains("failed its checksum")
                    && l.contains(&id)),
                "target {t}: no warn line for chunk {id}"
            );
        }
    }
    println!(
        "corrupt chunks: {} chunk copies flipped on disk ({} on the middle replica, 1 on the head \
         under a partial write, 1 chunk on all 3 replicas); {} corruption detections, {} copies \
         repaired from a peer, {} reports of the all-replica chunk as unrepairable; refused reads \
         (target, chunk): {refused:?}; {:?} from the cluster being up to the end",
        MIDDLE_CORRUPT.len() + 1 + MEMBERS.len(),
        MIDDLE_CORRUPT.len(),
        corrupted,
        repaired,
        unrepairable,
        cluster_up.elapsed(),
    );
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
}
