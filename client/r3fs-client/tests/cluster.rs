//! The client against real processes on loopback: one r3fs-mgmtd, three r3fs-storage daemons
//! (two shards each, so the `data/<shard>` address convention is exercised) holding three
//! replication-3 chains, and one r3fs-meta. A file written through the file API reads back
//! bit-exact (unaligned ranges, holes, past the end), reads spread over every replica, the
//! storage-only API (last chunks, removal) agrees, and a client whose routing is stale (a target
//! taken offline through the admin API while its watcher is held back) recovers transparently.

use r3fs_client::routing::RoutingSource;
use r3fs_client::{
    ClientConfig, ClientResult, FileClient, MgmtdClient, MgmtdClientConfig, RoutingCache,
    StorageClient,
};
use r3fs_rpc::{admin, mgmtd as pb};
use r3fs_testkit::cluster::{Cluster, MetaAuth, eventually, target_id};
use r3fs_types::TargetId;
use rand::{Rng, RngCore, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

/// Three storage nodes with two shards each (targets land on shard `target % 2`, each with its
/// own data-plane port), three replication-3 chains with heads on different nodes, and meta
/// that knows the admin token statically.
async fn start_cluster() -> Cluster {
    Cluster::builder("client-test")
        .storage_nodes(3)
        .replication(3)
        .chains(3)
        .storage_cores(2)
        .chunk_size(CHUNK as u32)
        .meta(MetaAuth::StaticAdmin)
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
    config.file.length_report_interval_ms = 200;
    config
}

/// A routing source whose background watch can be held back, so the client keeps a stale
/// routing until a storage target refuses it (on-demand refreshes still reach mgmtd).
#[derive(Debug)]
struct HeldBackWatch {
    mgmtd: MgmtdClient,
    held: AtomicBool,
}

#[async_trait::async_trait]
impl RoutingSource for HeldBackWatch {
    async fn fetch(&self, known: u64, wait: Duration) -> ClientResult<Option<pb::RoutingInfo>> {
        if !wait.is_zero() && self.held.load(Ordering::Relaxed) {
            tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
            return Ok(None);
        }
        RoutingSource::fetch(&self.mgmtd, known, wait).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_a_real_cluster_and_stale_routing_recovers() {
    let started = Instant::now();
    let cluster = start_cluster().await;
    println!("cluster up after {:?} (includes building the daemons)", started.elapsed());
    let started = Instant::now();
    let config = client_config(&cluster);
    let files = FileClient::connect(config.clone()).await.expect("connect");
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // Two written ranges with a hole between them: 10 chunks and a bit from an unaligned
    // offset, then 5000 bytes 20 chunks in.
    let file = files.create("/data.bin").await.expect("create");
    assert_eq!(file.map().chains().len(), 3);
    let mut model = vec![0u8; 20 * CHUNK + 5007];
    for (offset, len) in [(1000usize, 10 * CHUNK + 123), (20 * CHUNK + 7, 5000)] {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        assert_eq!(file.write_at(offset as u64, &data).await.expect("write"), len);
        model[offset..offset + len].copy_from_slice(&data);
    }
    file.fsync().await.expect("fsync");
    assert_eq!(file.len().await.expect("len"), model.len() as u64);

    let mut ranges = vec![(0u64, model.len()), (12 * CHUNK as u64, 3 * CHUNK), (5, 7)];
    for _ in 0..30 {
        let offset = rng.random_range(0..model.len() as u64);
        ranges.push((offset, rng.random_range(1..3 * CHUNK)));
    }
    for (offset, len) in ranges {
        let mut buf = vec![0xEE; len];
        let n = file.read_at(offset, &mut buf).await.expect("read");
        let expected = &model[offset as usize..(offset as usize + len).min(model.len())];
        assert_eq!(n, expected.len(), "read at {offset}+{len}");
        assert!(buf[..n] == *expected, "range {offset}+{len} differs");
    }
    let mut past = [0u8; 16];
    assert_eq!(file.read_at(model.len() as u64, &mut past).await.expect("read at the end"), 0);

    // Every replica of every chain served reads.
    let stats = files.storage().stats();
    for chain in cluster.chain_ids() {
        for &node in cluster.storage_nodes() {
            let t = TargetId(target_id(chain, node));
            assert!(
                stats.read_items_by_target.get(&t).copied().unwrap_or(0) > 0,
                "{t} served no reads: {stats:?}"
            );
        }
    }
    let length = file.close().await.expect("close");
    assert_eq!(length, model.len() as u64);

    // Growing through meta (a new truncate version) reads as a hole; a write after it is
    // reported under the new version.
    let grower =
        files.open("/data.bin", &r3fs_client::OpenOptions::read_write()).await.expect("open rw");
    grower.truncate(model.len() as u64 + 2 * CHUNK as u64).await.expect("grow");
    model.resize(model.len() + 2 * CHUNK, 0);
    assert_eq!(grower.len().await.expect("len"), model.len() as u64);
    let tail = vec![0x5Au8; 100];
    let at = model.len() - 50;
    grower.write_at(at as u64, &tail).await.expect("write past the end");
    model.resize(at, 0);
    model.extend_from_slice(&tail);
    assert_eq!(grower.close().await.expect("close"), model.len() as u64);

    // Reopened read-only, by another handle: same bytes.
    let reader =
        files.open("/data.bin", &r3fs_client::OpenOptions::read_only()).await.expect("open");
    let mut whole = vec![0u8; model.len() + 100];
    assert_eq!(reader.read_at(0, &mut whole).await.expect("read"), model.len());
    assert!(whole[..model.len()] == model[..]);
    assert!(reader.write_at(0, b"x").await.is_err(), "read-only handles refuse writes");

    // The storage-only API (what meta uses) agrees with the file.
    let storage = files.storage();
    assert_eq!(
        storage.file_length(reader.map()).await.expect("length from storage"),
        model.len() as u64
    );

    // Stale routing: a client whose watcher is held back, a head taken offline by the operator.
    let source = Arc::new(HeldBackWatch {
        mgmtd: MgmtdClient::new(MgmtdClientConfig::new(
            vec![cluster.mgmtd_address().to_string()],
            Some(cluster.token().to_string()),
        ))
        .expect("mgmtd client"),
        held: AtomicBool::new(true),
    });
    let routing =
        RoutingCache::start(source.clone(), config.routing.clone()).await.expect("routing");
    let stale = StorageClient::new(config.clone(), Arc::new(routing)).expect("client");
    let map = stale.file_map(reader.inode(), reader.map().layout()).await.expect("map");
    let chain = map.chain_of(0);
    let before = stale.routing().snapshot().chain(chain).expect("chain").clone();
    let old_head = before.head().expect("a head");
    let offlined = cluster
        .admin()
        .offline_target(admin::OfflineTargetRequest { target_id: old_head.0 })
        .await
        .expect("offline the head");
    let new_version = offlined.chain.expect("chain").chain_version;
    assert!(new_version > before.version.0);
    // Wait until the old head's daemon has seen it (it drops the target and brings it back
    // through recovery, which moves its public state off OFFLINE): from then on the storage side
    // refuses the client's chain version, whatever the timing.
    eventually("the old head's daemon to notice", || async {
        let list = cluster.admin().list_targets(admin::ListTargetsRequest {}).await.ok()?;
        let state = list.targets.iter().find(|t| t.target_id == old_head.0)?.public_state;
        (state != pb::PublicTargetState::Offline as i32).then_some(())
    })
    .await;
    assert_eq!(
        stale.routing().snapshot().chain_version(chain),
        Some(before.version),
        "the client's routing is stale"
    );

    let patch = vec![0xA5u8; 3 * CHUNK];
    stale.write(&map, 0, &patch).await.expect("the write recovers from stale routing");
    model[..patch.len()].copy_from_slice(&patch);
    let refreshed = stale.routing().snapshot();
    assert!(
        refreshed.chain_version(chain).is_some_and(|v| v.0 >= new_version),
        "the client refreshed its routing"
    );
    assert!(stale.routing().stats().refreshes > 0);
    assert_ne!(
        refreshed.chain(chain).and_then(|c| c.head()),
        Some(old_head),
        "writes moved to the new head"
    );
    let mut buf = vec![0u8; model.len()];
    stale.read(&map, 0, &mut buf).await.expect("read after the change");
    assert!(buf == model, "data differs after the head went offline");
    let new_head = refreshed.chain(chain).and_then(|c| c.head()).expect("a new head");
    let stats = stale.stats();
    assert!(
        stats.updates_by_target.contains_key(&old_head),
        "the first attempt used the stale head: {stats:?}"
    );
    assert!(stats.updates_by_target.contains_key(&new_head), "{stats:?}");
    assert!(stats.retries > 0);
    source.held.store(false, Ordering::Relaxed);

    // Removal through the storage API leaves nothing behind: chunks 0..=10, 20 and 22 were
    // written.
    const WRITTEN_CHUNKS: u64 = 13;
    assert_eq!(stale.remove_file_chunks(&map, 0..u64::MAX).await.expect("remove"), WRITTEN_CHUNKS);
    assert_eq!(stale.file_length(&map).await.expect("length"), 0);
    println!("client scenario took {:?}", started.elapsed());
}
