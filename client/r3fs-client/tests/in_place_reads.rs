//! Reads received straight into the caller's buffer (design/client.md, Connections 4), through
//! the whole storage client against the in-process storage cluster (tests/support): the bytes
//! land in place (no copy counted), holes and short chunks still read as zeros, and an item
//! whose end-to-end CRC fails is never reported: it is read again from another replica, which
//! overwrites what the bad reply left in the buffer. The connection-level cases (a corrupted
//! or short frame, a request cancelled mid-payload) are unit tests in src/conn.rs.

#[allow(dead_code)]
mod support;

use r3fs_client::{ClientConfig, RoutingCache, StorageClient};
use r3fs_types::{InodeId, Layout};
use std::sync::Arc;
use support::CHUNK;
use support::fake::{FakeCluster, ManualRouting, target_of};

fn layout(stripe: u32) -> Layout {
    support::layout(stripe, 3)
}

async fn client(cluster: &FakeCluster) -> StorageClient {
    let mut config = ClientConfig::default();
    config.retry.backoff_initial_ms = 1;
    config.retry.backoff_max_ms = 20;
    config.routing.refresh_interval_min_ms = 1;
    config.storage.request_timeout_ms = 10_000;
    let source = ManualRouting::new(cluster.routing_info());
    let routing =
        RoutingCache::start(source, config.routing.clone()).await.expect("routing starts");
    StorageClient::new(config, Arc::new(routing)).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_land_in_the_callers_buffer_without_a_copy() {
    let cluster = FakeCluster::start(2).await;
    let client = client(&cluster).await;
    let map = client.file_map(InodeId(5), &layout(2)).await.expect("file map");
    // Chunks 0-2 written, chunk 3 a hole, chunk 4 written only in part.
    let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 253) as u8 ^ 0x5A).collect();
    client.write(&map, 0, &data).await.expect("write");
    client.write(&map, 4 * u64::from(CHUNK), b"short chunk").await.expect("write");
    let len = 5 * CHUNK as usize;
    let mut expected = vec![0u8; len];
    expected[..data.len()].copy_from_slice(&data);
    expected[4 * CHUNK as usize..][..11].copy_from_slice(b"short chunk");
    let before = client.stats();
    // Unaligned on both ends, across every chunk.
    let mut buf = vec![0xEE; len - 100];
    client.read(&map, 37, &mut buf).await.expect("read");
    assert!(buf[..] == expected[37..len - 63], "bit-exact, holes as zeros");
    let stats = client.stats();
    let in_place = stats.read_bytes_in_place - before.read_bytes_in_place;
    assert_eq!(in_place, (data.len() - 37 + 11) as u64, "every stored byte received in place");
    assert_eq!(stats.read_bytes_copied, before.read_bytes_copied, "nothing copied: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_failing_its_crc_in_place_is_read_again_and_never_reported() {
    let cluster = FakeCluster::start(1).await;
    let client = client(&cluster).await;
    let map = client.file_map(InodeId(6), &layout(1)).await.expect("file map");
    let data: Vec<u8> = (0..4 * CHUNK).map(|i| (i % 241) as u8).collect();
    client.write(&map, 0, &data).await.expect("write");
    // The middle replica's item CRCs are wrong (its frames are intact): the bytes it sends land
    // in the buffer, and must not count as read.
    cluster.lock().faults.corrupt_reads_on = Some(target_of(1, 1));
    for _ in 0..6 {
        let mut buf = vec![0xEE; data.len()];
        client.read(&map, 0, &mut buf).await.expect("read");
        assert!(buf == data);
    }
    let stats = client.stats();
    assert!(stats.checksum_mismatches > 0, "the bad replica was read and caught: {stats:?}");
    assert!(stats.read_bytes_in_place >= 6 * data.len() as u64);
    assert_eq!(stats.read_bytes_copied, 0, "{stats:?}");
}
