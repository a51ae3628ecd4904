//! SIGKILL of a storage daemon during a stream of writes (replication 1): after a restart every
//! acknowledged write reads back with its checksum, and the write in flight at the kill is either
//! wholly there or wholly absent.

mod common;

use common::*;
use r3fs_storage::client::DataClient;
use r3fs_types::{ChainId, ChunkId, InodeId, TargetId};
use r3fs_wire::Outcome;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const CHAIN: u32 = 1;
const CHUNKS: u64 = 6;
const WRITE_BYTES: usize = 64 << 10;
const ACKS_BEFORE_KILL: u64 = 40;
const WRITES_MAX: u64 = 100_000;
/// Retryable refusals of one write before the test fails (20 ms apart).
const RETRIES_MAX: u32 = 500;

/// What the writer knows when the connection dies: the acknowledged content of every chunk and
/// the write that was in flight.
struct Model {
    acked: BTreeMap<ChunkId, Vec<u8>>,
    in_flight: Option<(ChunkId, usize, Vec<u8>)>,
    acks: u64,
}

fn apply(content: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if content.len() < offset + data.len() {
        content.resize(offset + data.len(), 0);
    }
    content[offset..offset + data.len()].copy_from_slice(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let mut cluster = storage_cluster(1).start().await;
    let routing = start_chain(&mut cluster, CHAIN, &[(101, 2)]).await;
    let version = routing.chains[&ChainId(CHAIN)].chain_version;
    let address = routing.address_of(TargetId(101)).expect("address");

    let acks = Arc::new(AtomicU64::new(0));
    let writer_acks = acks.clone();
    let writer = tokio::spawn(async move {
        let mut client = DataClient::connect(address).await.expect("connect");
        let mut model = Model { acked: BTreeMap::new(), in_flight: None, acks: 0 };
        for i in 0..WRITES_MAX {
            let chunk = ChunkId::new(InodeId(3), i % CHUNKS);
            let offset = ((i / CHUNKS) % 8) as usize * WRITE_BYTES;
            let data = pattern(i, WRITE_BYTES);
            model.in_flight = Some((chunk, offset, data.clone()));
            let request = write_request(CHAIN, version, chunk, offset as u32, &data, 1, i + 1);
            // A retryable refusal (the daemon applies mgmtd's routing a moment after mgmtd
            // publishes it: TargetNotServing) is retried with the same sequence, a bounded
            // number of times; any other refusal fails the test.
            let mut refusals = 0;
            loop {
                match client.update(request.clone(), &data).await {
                    Ok(reply) if reply.outcome == Outcome::Ok => break,
                    Ok(reply) => {
                        let retryable =
                            matches!(reply.outcome, Outcome::Failed(c) if c.is_retryable());
                        refusals += 1;
                        assert!(
                            retryable && refusals < RETRIES_MAX,
                            "write {i} refused: {reply:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => return model, // the daemon died
                }
            }
            apply(model.acked.entry(chunk).or_default(), offset, &data);
            model.in_flight = None;
            model.acks += 1;
            writer_acks.store(model.acks, Ordering::SeqCst);
        }
        model
    });
    let killed =
        r3fs_testkit::wait_until(Duration::from_secs(60), Duration::from_millis(1), || {
            acks.load(Ordering::SeqCst) >= ACKS_BEFORE_KILL
        });
    assert!(killed, "the writer made no progress");
    cluster.kill9_storage(2);
    let model = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer stops")
        .expect("writer task");
    assert!(model.acks >= ACKS_BEFORE_KILL);
    println!(
        "killed after {} acknowledged writes (in flight: {})",
        model.acks,
        model.in_flight.is_some()
    );

    cluster.restart_storage(2);
    let routing = wait_serving(cluster.admin(), CHAIN, vec![TargetId(101)]).await;
    let address = routing.address_of(TargetId(101)).expect("address after restart");
    let mut client = DataClient::connect(address).await.expect("reconnect");
    for index in 0..CHUNKS {
        let chunk = ChunkId::new(InodeId(3), index);
        let acked = model.acked.get(&chunk).cloned().unwrap_or_default();
        let (outcome, bytes) = read(&mut client, CHAIN, chunk, 0, CHUNK_SIZE).await;
        if acked.is_empty() && outcome != Outcome::Ok {
            continue; // never acknowledged, never (durably) written
        }
        assert_eq!(outcome, Outcome::Ok, "chunk {chunk}");
        if bytes == acked {
            continue;
        }
        // Only the write in flight may have landed on top of the acknowledged content.
        let (c, offset, data) =
            model.in_flight.clone().expect("content differs without a write in flight");
        assert_eq!(c, chunk, "chunk {chunk} differs, but the write in flight was to {c}");
        let mut with_in_flight = acked.clone();
        apply(&mut with_in_flight, offset, &data);
        assert!(
            bytes == with_in_flight,
            "chunk {chunk}: neither the acknowledged nor the next state"
        );
    }
    let problems = cluster.stop();
    assert!(problems.is_empty(), "no clean stop after the restart: {problems:?}");
}
