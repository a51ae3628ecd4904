//! The meta service's storage edge against real processes on loopback: one r3fs-mgmtd, three
//! r3fs-storage daemons holding two replication-3 chains, and r3fs-meta configured only with
//! `[mgmtd]` (it builds its storage client from that). A file is written through the client
//! library, and then:
//! - fsync and close give the exact length computed from storage, including bytes a writer put
//!   on storage without reporting them;
//! - a shrinking truncate removes the chunks past the new end on every replica and cuts the
//!   chunk holding it, so extending the file again reads zeros, not the old bytes;
//! - unlink hands the file to the collector, which removes its chunks on storage and then the
//!   inode;
//! - statfs reports the capacity the storage daemons report through their heartbeats.

use r3fs_client::{ChunkRead, ClientConfig, FileClient, ReadData};
use r3fs_rpc::meta::{self as meta_pb};
use r3fs_testkit::cluster::{Cluster, MetaAuth, Role, eventually};
use r3fs_testkit::pattern;
use std::time::Duration;

const CHUNK: usize = 64 << 10;
/// `[store] capacity_bytes` of every target.
const TARGET_CAPACITY: u64 = 256 << 20;

/// Three storage nodes, two replication-3 chains, and meta with `[mgmtd]` only (tokens, routing
/// and storage access all come from there), collecting every 100 ms.
async fn start_cluster() -> Cluster {
    Cluster::builder("meta-storage-test")
        .storage_nodes(3)
        .replication(3)
        .chains(2)
        .chunk_size(CHUNK as u32)
        .target_capacity(TARGET_CAPACITY)
        .meta(MetaAuth::Mgmtd)
        .binary(Role::Meta, env!("CARGO_BIN_EXE_r3fs-meta"))
        .config(
            Role::Meta,
            "[meta.gc]\ninterval_ms = 100\n[mgmtd]\nrouting_refresh_ms = 100\n\
             [storage.retry]\nbackoff_initial_ms = 5\nbackoff_max_ms = 200\n",
        )
        .start()
        .await
}

fn client_config(cluster: &Cluster) -> ClientConfig {
    let mut config = ClientConfig {
        mgmtd_addresses: vec![cluster.mgmtd_address().to_string()],
        meta_addresses: vec![cluster.meta_address().to_string()],
        token: cluster.token().to_string(),
        ..Default::default()
    };
    config.retry.backoff_initial_ms = 5;
    config.retry.backoff_max_ms = 200;
    config.routing.refresh_interval_min_ms = 20;
    // Long enough that no periodic report lands during the test: what meta learns, it learns
    // from fsync, close or storage.
    config.file.length_report_interval_ms = 600_000;
    config
}

async fn stat_size(client: &FileClient, path: &str) -> u64 {
    let response = client
        .meta()
        .stat(meta_pb::StatRequest {
            target: Some(r3fs_client::meta::path_at(0, path)),
            follow: true,
        })
        .await
        .expect("stat");
    response.inode.expect("an inode").size
}

/// What each chunk of the file holds on storage (`None`: absent), read from serving replicas.
async fn stored_chunks(
    client: &FileClient,
    map: &r3fs_client::FileMap,
    count: u64,
) -> Vec<Option<Vec<u8>>> {
    let items: Vec<ChunkRead> = (0..count)
        .map(|index| ChunkRead {
            chain: map.chain_of(index),
            chunk: map.chunk_id(index),
            offset: 0,
            length: CHUNK as u32,
        })
        .collect();
    let data = client.storage().read_chunks(&items).await.expect("read chunks from storage");
    data.into_iter()
        .map(|d| match d {
            ReadData::Data(bytes) => Some(bytes.to_vec()),
            ReadData::Absent => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_uses_storage_for_length_truncate_gc_and_capacity() {
    let mut cluster = start_cluster().await;
    let client = FileClient::connect(client_config(&cluster)).await.expect("file client");
    let storage = client.storage().clone();

    // 1. fsync: the writer reports 2 chunks, but 5 chunks and 1234 bytes are on storage (a
    //    second writer of the same file, say, that has not reported yet). Meta settles the
    //    length from the last chunk of each chain.
    let data = pattern(1, 5 * CHUNK + 1234);
    let file = client.create("/f").await.expect("create /f");
    let map = file.map().clone();
    assert_eq!(map.chains().len(), 2, "the root layout stripes over both chains");
    file.write_at(0, &data[..2 * CHUNK]).await.expect("write through the file");
    storage.write(&map, 2 * CHUNK as u64, &data[2 * CHUNK..]).await.expect("write to storage");
    assert_eq!(stat_size(&client, "/f").await, 0, "nothing was reported yet");
    file.fsync().await.expect("fsync");
    assert_eq!(stat_size(&client, "/f").await, data.len() as u64, "fsync settles from storage");
    file.close().await.expect("close /f");

    // 2. close: a file written only on storage gets its exact length when its session closes.
    let tail = pattern(2, 3 * CHUNK + 77);
    let other = client.create("/g").await.expect("create /g");
    storage.write(other.map(), 0, &tail).await.expect("write /g to storage");
    assert_eq!(other.close().await.expect("close /g"), tail.len() as u64);
    assert_eq!(stat_size(&client, "/g").await, tail.len() as u64);

    // 3. A shrinking truncate: chunks 3..=5 go, chunk 2 is cut to 100 bytes, on storage.
    let cut = 2 * CHUNK + 100;
    let file = client.open("/f", &r3fs_client::OpenOptions::read_write()).await.expect("reopen /f");
    file.truncate(cut as u64).await.expect("truncate down");
    assert_eq!(stat_size(&client, "/f").await, cut as u64);
    assert_eq!(storage.file_length(&map).await.expect("length on storage"), cut as u64);
    let chunks = stored_chunks(&client, &map, 6).await;
    for (index, chunk) in chunks.iter().enumerate() {
        let start = index * CHUNK;
        match index {
            0 | 1 => assert_eq!(chunk.as_deref(), Some(&data[start..start + CHUNK])),
            2 => {
                let bytes = chunk.as_deref().expect("the cut chunk stays");
                assert!(bytes.len() >= 100, "chunk 2 holds {} bytes", bytes.len());
                assert_eq!(&bytes[..100], &data[start..start + 100]);
                assert!(bytes[100..].iter().all(|&b| b == 0), "nothing of the old bytes past 100");
            }
            _ => assert_eq!(*chunk, None, "chunk {index} past the end is removed"),
        }
    }
    // Every replica agrees: the last chunk on each chain, asked of each chain's tail.
    let last = storage.query_last_chunks(&map).await.expect("last chunks");
    let furthest = last.iter().flatten().map(|c| c.index).max();
    assert_eq!(furthest, Some(2), "{last:?}");
    // Extending again shows zeros past the cut, not the bytes that were there.
    file.truncate(data.len() as u64).await.expect("truncate up");
    let mut read = vec![0xAAu8; data.len()];
    assert_eq!(file.read_at(0, &mut read).await.expect("read /f"), data.len());
    assert_eq!(&read[..cut], &data[..cut]);
    assert!(read[cut..].iter().all(|&b| b == 0), "zeros past the truncated end");
    file.close().await.expect("close /f again");

    // 4. statfs: two chains, each as large as its smallest target, from the heartbeats.
    let statfs = eventually("statfs to report the targets' capacity", || async {
        let statfs = client.meta().stat_fs(meta_pb::StatFsRequest {}).await.ok()?;
        (statfs.total_bytes > 0).then_some(statfs)
    })
    .await;
    assert!(statfs.capacity_known);
    assert_eq!(statfs.total_bytes, cluster.chain_ids().len() as u64 * TARGET_CAPACITY);
    let statfs = eventually("statfs to report used bytes", || async {
        let statfs = client.meta().stat_fs(meta_pb::StatFsRequest {}).await.ok()?;
        (statfs.used_bytes > 0).then_some(statfs)
    })
    .await;
    assert!(statfs.used_bytes < statfs.total_bytes);
    println!("statfs: {} of {} bytes used", statfs.used_bytes, statfs.total_bytes);

    // 5. unlink: the collector removes the chunks on storage, then the inode.
    let inode = map.inode();
    client
        .meta()
        .remove(meta_pb::RemoveRequest {
            target: Some(r3fs_client::meta::path_at(0, "/f")),
            kind: meta_pb::RemoveKind::File as i32,
        })
        .await
        .expect("unlink /f");
    eventually("the collector to remove the chunks and the inode of /f", || async {
        let last = storage.query_last_chunks(&map).await.ok()?;
        let stat = client
            .meta()
            .batch_stat(meta_pb::BatchStatRequest { inodes: vec![inode.0] })
            .await
            .ok()?;
        let gone = stat.inodes.first().is_some_and(|r| r.inode.is_none());
        (last.iter().all(Option::is_none) && gone).then_some(())
    })
    .await;
    assert!(stored_chunks(&client, &map, 6).await.iter().all(Option::is_none));
    // The other file is untouched.
    let g = client.open("/g", &r3fs_client::OpenOptions::read_only()).await.expect("open /g");
    let mut read = vec![0u8; tail.len()];
    assert_eq!(g.read_at(0, &mut read).await.expect("read /g"), tail.len());
    assert_eq!(read, tail);

    cluster.meta().proc().wait_for_line("storage client connected", Duration::from_secs(1));
}
