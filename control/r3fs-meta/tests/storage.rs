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

use r3fs_client::{ChunkRead, ClientConfig, FileClient, MgmtdClient, MgmtdClientConfig, ReadData};
use r3fs_rpc::meta::{self as meta_pb};
use r3fs_rpc::{admin, mgmtd as pb};
use r3fs_testkit::{Proc, binary, free_port};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(180);
const CHUNK: usize = 64 << 10;
const NODES: [u32; 3] = [2, 3, 4];
const CHAINS: [u32; 2] = [1, 2];
/// `[store] capacity_bytes` of every target.
const TARGET_CAPACITY: u64 = 256 << 20;

/// Target of `chain` on `node`.
fn target(chain: u32, node: u32) -> u64 {
    u64::from(chain) * 100 + u64::from(node)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

struct Cluster {
    _mgmtd: Proc,
    _storage: Vec<Proc>,
    meta: Proc,
    mgmtd_address: String,
    meta_address: String,
    token: String,
    _dir: tempfile::TempDir,
}

fn start_mgmtd(dir: &Path) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "node_id = 1\nlisten = \"{address}\"\nlease_timeout_ms = 2000\nlease_renew_interval_ms = 500\n\
         heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 3000\nfailure_check_interval_ms = 200\n\
         routing_wait_max_ms = 5000\nshutdown_grace_ms = 1000\n[kv]\nbackend = \"memory\"\n"
    );
    let path = dir.join("mgmtd.toml");
    std::fs::write(&path, config).expect("write the mgmtd config");
    let mut command = Command::new(binary("r3fs-mgmtd", "r3fs-mgmtd"));
    command.arg("--config").arg(&path);
    let mut proc = Proc::spawn("r3fs-mgmtd", command);
    proc.wait_for_line("is primary", START_TIMEOUT);
    (proc, address)
}

fn start_storage(dir: &Path, node: u32, mgmtd: &str, token: &str) -> Proc {
    let disk = dir.join(format!("node{node}-disk0"));
    std::fs::create_dir_all(&disk).expect("create the disk directory");
    let config = format!(
        r#"node_id = {node}
target_paths = ["{disk}"]
targets_per_path = 4
cores = 1
mgmtd_addresses = ["{mgmtd}"]
token = "{token}"
listen_host = "127.0.0.1"
io_memory_bytes = 1048576
tick_interval_ms = 10
shutdown_drain_ms = 2000

[store]
capacity_bytes = {TARGET_CAPACITY}
header_cache_bytes = 4194304
log_compaction_bytes_min = 8388608
log_extent_bytes = 1048576
commit_batch_records_max = 256
grow_bytes_max = 67108864

[replica]
chunk_size_bytes_max = 4194304
held_payload_bytes_max = 268435456
forward_retry_interval_ms = 100
"#,
        disk = disk.display()
    );
    let path = dir.join(format!("storage{node}.toml"));
    std::fs::write(&path, config).expect("write the storage config");
    let mut command = Command::new(binary("r3fs-storage", "r3fs-storage"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn(&format!("r3fs-storage-{node}"), command);
    proc.wait_for_line("serving targets on", START_TIMEOUT);
    proc
}

/// Meta with `[mgmtd]` only: tokens, routing and storage access all come from there.
fn start_meta(dir: &Path, mgmtd: &str, token: &str) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let token_file = dir.join("meta.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write the meta token file");
    let config = format!(
        r#"listen = "{address}"
[kv]
backend = "memory"
[meta.gc]
interval_ms = 100
[meta.format.root_layout]
chain_table_id = 1
chain_table_version = 1
chunk_size = {CHUNK}
stripe_size = 2
chains = {{ ShuffleV1 = {{ seed = 0 }} }}
[mgmtd]
addresses = ["{mgmtd}"]
token_file = "{token_file}"
routing_refresh_ms = 100
[storage.retry]
backoff_initial_ms = 5
backoff_max_ms = 200
"#,
        token_file = token_file.display()
    );
    let path = dir.join("meta.toml");
    std::fs::write(&path, config).expect("write the meta config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs-meta"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("r3fs-meta", command);
    proc.wait_for_line("r3fs-meta listening on", START_TIMEOUT);
    (proc, address)
}

async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_cluster() -> Cluster {
    let t0 = Instant::now();
    let phase = |what: &str| println!("[{:>7.1?}] {what}", t0.elapsed());
    let dir =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir on the target disk");
    let (mgmtd, mgmtd_address) = start_mgmtd(dir.path());
    let bootstrap = MgmtdClient::new(MgmtdClientConfig::new(vec![mgmtd_address.clone()], None))
        .expect("mgmtd client");
    let init = bootstrap
        .init_cluster(admin::InitClusterRequest {
            cluster_id: "meta-storage-test".into(),
            ..Default::default()
        })
        .await
        .expect("init the cluster");
    let token = init.admin_token;
    phase("mgmtd up, cluster initialized");
    let admin =
        MgmtdClient::new(MgmtdClientConfig::new(vec![mgmtd_address.clone()], Some(token.clone())))
            .expect("admin client");
    let storage: Vec<Proc> =
        NODES.iter().map(|&node| start_storage(dir.path(), node, &mgmtd_address, &token)).collect();
    phase("storage daemons up");
    let targets = CHAINS
        .iter()
        .flat_map(|&chain| {
            NODES.iter().map(move |&node| admin::TargetSpec {
                target_id: target(chain, node),
                node_id: node,
                disk_index: 0,
                chain_id: chain,
            })
        })
        .collect();
    admin.create_targets(admin::CreateTargetsRequest { targets }).await.expect("create targets");
    eventually("targets up to date", || async {
        let list = admin.list_targets(admin::ListTargetsRequest {}).await.ok()?;
        let up = list
            .targets
            .iter()
            .filter(|t| t.local_state == pb::LocalTargetState::UpToDate as i32)
            .count();
        (up == CHAINS.len() * NODES.len()).then_some(())
    })
    .await;
    let chains = CHAINS
        .iter()
        .map(|&chain| {
            let mut members: Vec<u64> = NODES.iter().map(|&node| target(chain, node)).collect();
            members.rotate_left(chain as usize - 1);
            admin::ChainSpec { chain_id: chain, target_ids: members }
        })
        .collect();
    admin.upload_chains(admin::UploadChainsRequest { chains }).await.expect("upload chains");
    let table = admin
        .upload_chain_table(admin::UploadChainTableRequest {
            table_id: 1,
            chain_ids: CHAINS.to_vec(),
            description: "meta storage test".into(),
        })
        .await
        .expect("upload the chain table");
    assert_eq!(table.version, 1);
    eventually("every target serving", || async {
        let list = admin.list_chains(admin::ListChainsRequest {}).await.ok()?;
        let serving = list
            .chains
            .iter()
            .flat_map(|c| &c.targets)
            .filter(|t| t.public_state == pb::PublicTargetState::Serving as i32)
            .count();
        (serving == CHAINS.len() * NODES.len()).then_some(())
    })
    .await;
    phase("chains serving");
    let (meta, meta_address) = start_meta(dir.path(), &mgmtd_address, &token);
    phase("meta up");
    Cluster {
        _mgmtd: mgmtd,
        _storage: storage,
        meta,
        mgmtd_address,
        meta_address,
        token,
        _dir: dir,
    }
}

fn client_config(cluster: &Cluster) -> ClientConfig {
    let mut config = ClientConfig {
        mgmtd_addresses: vec![cluster.mgmtd_address.clone()],
        meta_addresses: vec![cluster.meta_address.clone()],
        token: cluster.token.clone(),
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
    assert_eq!(statfs.total_bytes, CHAINS.len() as u64 * TARGET_CAPACITY);
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

    cluster.meta.wait_for_line("storage client connected", Duration::from_secs(1));
}
