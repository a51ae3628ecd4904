//! The storage client against an in-process storage cluster over loopback TCP (tests/support):
//! bit-exact round trips with holes, read spreading, stale routing, lost replies, corrupt and
//! uncommitted replicas, give-up bounds, pipelining within the in-flight window, truncation and
//! removal. The real-daemon version of the main scenarios is tests/cluster.rs.

mod support;

use r3fs_client::error::ClientError;
use r3fs_client::{ClientConfig, FileMap, RoutingCache, StorageClient};
use r3fs_types::{ChainId, ErrorCode, InodeId, Layout};
use rand::{Rng, RngCore, SeedableRng};
use std::sync::Arc;
use std::time::Duration;
use support::CHUNK;
use support::fake::{FakeCluster, ManualRouting, REPLICAS, target_of};

fn layout(stripe: u32) -> Layout {
    support::layout(stripe, 7)
}

fn config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.retry.backoff_initial_ms = 1;
    config.retry.backoff_max_ms = 20;
    config.retry.elapsed_max_ms = 20_000;
    config.routing.refresh_interval_min_ms = 1;
    config.storage.request_timeout_ms = 10_000;
    config
}

async fn client(
    cluster: &FakeCluster,
    config: ClientConfig,
) -> (StorageClient, Arc<ManualRouting>) {
    let source = ManualRouting::new(cluster.routing_info());
    let routing =
        RoutingCache::start(source.clone(), config.routing.clone()).await.expect("routing starts");
    let client = StorageClient::new(config, Arc::new(routing)).expect("client");
    (client, source)
}

fn seeded() -> rand::rngs::StdRng {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

async fn read(client: &StorageClient, map: &FileMap, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEE; len];
    client.read(map, offset, &mut buf).await.expect("read");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_is_bit_exact_with_holes_and_reads_spread_over_replicas() {
    let cluster = FakeCluster::start(4).await;
    let (client, _) = client(&cluster, config()).await;
    let map = client.file_map(InodeId(77), &layout(4)).await.expect("file map");
    let mut rng = seeded();
    // Model: the file as bytes; unwritten ranges are zeros.
    let mut model = vec![0u8; 40 * CHUNK as usize];
    for (offset, len) in
        [(100_000usize, 600_000usize), (30 * CHUNK as usize + 5, 3 * CHUNK as usize), (7, 11)]
    {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        client.write(&map, offset as u64, &data).await.expect("write");
        model[offset..offset + len].copy_from_slice(&data);
    }
    let end = 33 * CHUNK as u64 + 5;
    // Whole file, chunk-aligned ranges, unaligned ranges, ranges inside holes and past the end.
    let mut ranges = vec![
        (0u64, model.len()),
        (CHUNK as u64, 2 * CHUNK as usize),
        (12 * CHUNK as u64, CHUNK as usize),
    ];
    for _ in 0..40 {
        let offset = rng.random_range(0..model.len() as u64);
        let len = rng.random_range(0..(model.len() - offset as usize).min(3 * CHUNK as usize));
        ranges.push((offset, len));
    }
    for (offset, len) in ranges {
        let got = read(&client, &map, offset, len).await;
        assert!(
            got == model[offset as usize..offset as usize + len],
            "range {offset}+{len} differs"
        );
    }
    assert_eq!(client.file_length(&map).await.expect("length"), end);

    // Every replica of every chain served reads.
    let stats = client.stats();
    for chain in 1..=4 {
        for replica in 0..REPLICAS {
            let target = target_of(chain, replica);
            assert!(
                stats.read_items_by_target.get(&target).copied().unwrap_or(0) > 0,
                "{target} served no reads: {stats:?}"
            );
        }
    }
    assert_eq!(
        cluster.lock().read_items_by_target,
        stats.read_items_by_target,
        "the servers saw what the client sent"
    );
    // Writes went to heads only.
    assert!(stats.updates_by_target.keys().all(|t| t.0 % 10 == 0), "{stats:?}");
    assert_eq!(cluster.lock().channel_conflicts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_routing_is_refreshed_transparently() {
    let cluster = FakeCluster::start(1).await;
    let (client, source) = client(&cluster, config()).await;
    let map = client.file_map(InodeId(5), &layout(1)).await.expect("file map");
    client.write(&map, 0, b"before").await.expect("write");

    // mgmtd takes the head offline; the storage side learns first, the client's routing lags.
    cluster.set_serving(target_of(1, 0), false);
    let publisher = {
        let info = cluster.routing_info();
        let source = source.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            source.publish(info);
        })
    };
    let refreshes_before = client.routing().stats().refreshes;
    client.write(&map, 6, b" after").await.expect("the write succeeds once routing catches up");
    publisher.await.expect("publisher");
    assert_eq!(read(&client, &map, 0, 12).await, b"before after");
    assert!(client.routing().stats().refreshes > refreshes_before);
    assert_eq!(client.routing().snapshot().chain_version(ChainId(1)).map(|v| v.0), Some(2));
    // The new head took the write; the offline replica serves no more reads.
    let stats = client.stats();
    assert!(stats.updates_by_target.contains_key(&target_of(1, 1)), "{stats:?}");
    let offline_reads = stats.read_items_by_target.get(&target_of(1, 0)).copied().unwrap_or(0);
    for _ in 0..10 {
        read(&client, &map, 0, 12).await;
    }
    assert_eq!(
        client.stats().read_items_by_target.get(&target_of(1, 0)).copied().unwrap_or(0),
        offline_reads
    );

    // A bare version bump (no membership change) is refreshed too.
    cluster.bump_chain_version(ChainId(1));
    source.publish(cluster.routing_info());
    client.write(&map, 0, b"BEFORE").await.expect("write after a bump");
    assert_eq!(read(&client, &map, 0, 12).await, b"BEFORE after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_retried_and_applied_once() {
    let cluster = FakeCluster::start(1).await;
    let (client, _) = client(&cluster, config()).await;
    let map = client.file_map(InodeId(9), &layout(1)).await.expect("file map");
    cluster.lock().faults.drop_after_apply = 1;
    client.write(&map, 10, b"exactly once").await.expect("write survives the lost reply");
    assert_eq!(cluster.lock().duplicates, 1, "the retry reused its (client, sequence)");
    assert_eq!(read(&client, &map, 10, 12).await, b"exactly once");
    // The next write uses a fresh sequence and is applied normally.
    client.write(&map, 0, b"0123456789").await.expect("write");
    assert_eq!(cluster.lock().duplicates, 1);
    assert_eq!(read(&client, &map, 0, 22).await, b"0123456789exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_uncommitted_replicas_are_bypassed() {
    let cluster = FakeCluster::start(2).await;
    let (client, _) = client(&cluster, config()).await;
    let map = client.file_map(InodeId(3), &layout(2)).await.expect("file map");
    let data: Vec<u8> = (0..8 * CHUNK).map(|i| (i % 251) as u8).collect();
    client.write(&map, 0, &data).await.expect("write");
    {
        let mut state = cluster.lock();
        state.faults.corrupt_reads_on = Some(target_of(1, 1));
        state.faults.not_committed_on = Some(target_of(2, 0));
    }
    for _ in 0..4 {
        assert!(read(&client, &map, 0, data.len()).await == data);
    }
    let stats = client.stats();
    assert!(stats.checksum_mismatches > 0, "the corrupt replica was read and caught: {stats:?}");
    assert!(stats.retries > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failures_give_up_with_a_clear_error_and_final_ones_at_once() {
    let cluster = FakeCluster::start(1).await;
    let mut config = config();
    config.retry.attempts_max = 4;
    let (client, _) = client(&cluster, config).await;
    let map = client.file_map(InodeId(1), &layout(1)).await.expect("file map");

    cluster.lock().faults.refuse_all_updates = Some(ErrorCode::ChunkBusy);
    let error = client.write(&map, 0, b"x").await.expect_err("always busy");
    match &error {
        ClientError::RetriesExhausted { attempts, last_code, .. } => {
            assert_eq!((*attempts, *last_code), (4, ErrorCode::ChunkBusy));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(error.code(), ErrorCode::RetriesExhausted);
    assert!(error.to_string().contains("R3FS-4007 ChunkBusy"), "{error}");

    cluster.lock().faults.refuse_all_updates = None;
    cluster.lock().faults.update_refusals.push_back(ErrorCode::NoSpace);
    let error = client.write(&map, 0, b"x").await.expect_err("no space");
    assert_eq!(error.code(), ErrorCode::NoSpace);
    client.write(&map, 0, b"x").await.expect("space again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_out_of_order_replies_on_one_connection_stay_within_the_window() {
    let cluster = FakeCluster::start(2).await;
    let window = 4 * CHUNK as u64;
    let mut config = config();
    config.storage.connections_per_address = 1;
    config.storage.inflight_bytes_per_connection_max = window;
    config.storage.parallel_chunks_max = 64;
    config.storage.batch_read_bytes_max = 2 * CHUNK as u64;
    let (client, _) = client(&cluster, config).await;
    cluster.lock().faults.reply_jitter_ms = 15;
    let map = client.file_map(InodeId(4), &layout(2)).await.expect("file map");
    let mut data = vec![0u8; 48 * CHUNK as usize];
    seeded().fill_bytes(&mut data);
    client.write(&map, 0, &data).await.expect("write");
    assert!(read(&client, &map, 0, data.len()).await == data);
    let state = cluster.lock();
    assert_eq!(state.channel_conflicts, 0, "one update per channel at a time");
    // Payload bytes only; the window also counts a small overhead per request.
    assert!(
        state.inflight_bytes_max_seen <= window,
        "{} > {window}",
        state.inflight_bytes_max_seen
    );
    assert!(state.inflight_bytes_max_seen > CHUNK as u64, "requests were pipelined");
    for address in &cluster.addresses {
        assert_eq!(client.connection_count(*address), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_remove_and_last_chunks() {
    let cluster = FakeCluster::start(3).await;
    let mut config = config();
    config.storage.remove_chunks_limit = 2;
    let (client, _) = client(&cluster, config).await;
    let map = client.file_map(InodeId(12), &layout(3)).await.expect("file map");
    let data = vec![7u8; 10 * CHUNK as usize];
    client.write(&map, 0, &data).await.expect("write");
    assert_eq!(client.file_length(&map).await.expect("length"), 10 * CHUNK as u64);
    let last = client.query_last_chunks(&map).await.expect("last chunks");
    assert_eq!(last.iter().flatten().map(|c| c.index).max(), Some(9));

    // Shrink to 4 chunks + 10 bytes, as meta's truncate does.
    let removed = client.remove_file_chunks(&map, 5..u64::MAX).await.expect("remove");
    assert_eq!(removed, 5);
    client.truncate_file_chunk(&map, 4, 10).await.expect("truncate");
    assert_eq!(client.file_length(&map).await.expect("length"), 4 * CHUNK as u64 + 10);
    let got = read(&client, &map, 0, 6 * CHUNK as usize).await;
    assert!(got[..4 * CHUNK as usize + 10].iter().all(|&b| b == 7));
    assert!(got[4 * CHUNK as usize + 10..].iter().all(|&b| b == 0), "cut bytes read as zeros");
    // Truncating up extends with zeros, reading as the hole it was.
    client.truncate_file_chunk(&map, 4, 100).await.expect("extend");
    assert_eq!(client.file_length(&map).await.expect("length"), 4 * CHUNK as u64 + 100);
    assert!(read(&client, &map, 4 * CHUNK as u64, 200).await[10..].iter().all(|&b| b == 0));
    let removed = client.remove_file_chunks(&map, 0..u64::MAX).await.expect("remove all");
    assert_eq!(removed, 5);
    assert_eq!(client.file_length(&map).await.expect("length"), 0);
    assert_eq!(client.query_last_chunks(&map).await.expect("last"), vec![None, None, None]);
}
