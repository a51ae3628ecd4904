//! The operator's chain operations through the real `r3fs` binary against real processes on
//! loopback (r3fs-testkit's cluster: r3fs-mgmtd and three r3fs-storage daemons), with data
//! written and read through the client library (docs/design/operations.md):
//!
//! - migration: data written through chain 1 = [102, 103]; `add-target-to-chain` puts a new
//!   target 104 on the third daemon, writes keep flowing while it resyncs, it serves;
//!   `remove-target 102`; the other old replica's daemon is killed, so every read must come from
//!   104: every acknowledged byte reads back.
//! - refusals with their text: removing the only serving replica, rotating the last-serving
//!   target of a serving chain, adding a target twice.
//! - `shutdown-all-chains`: every serving replica becomes last-serving, `list-chains` says so,
//!   both storage daemons restart, and `start-all-chains` makes both replicas serve at once,
//!   without a resync; the data still reads back.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use r3fs_client::{
    ChunkRead, ClientConfig, MgmtdClient, MgmtdClientConfig, ReadData, RoutingCache, StorageClient,
};
use r3fs_rpc::{admin, mgmtd as pb};
use r3fs_testkit::cluster::{Cluster, eventually};
use r3fs_types::{ChainId, ChunkId, InodeId};

const CHUNK_SIZE: u32 = 64 << 10;
const CHAIN: u32 = 1;
/// Chunks written before the migration, and how many more rounds of writes run while the new
/// target syncs (bounded: the loop stops once it serves).
const CHUNKS_BEFORE: u64 = 48;
const WRITE_ROUNDS_MAX: u64 = 400;

fn r3fs(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs"));
    command.env_remove("R3FS_MGMTD").env_remove("R3FS_TOKEN").env_remove("R3FS_TOKEN_FILE");
    command.args(["--mgmtd", cluster.mgmtd_address(), "--token", cluster.token()]);
    command.args(args);
    command.output().expect("run r3fs")
}

fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = r3fs(cluster, args);
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "r3fs {args:?} failed\nstdout:\n{out}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Runs `r3fs` and requires failure; returns stderr.
fn fails(cluster: &Cluster, args: &[&str]) -> String {
    let output = r3fs(cluster, args);
    assert!(
        !output.status.success(),
        "r3fs {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn storage_client(cluster: &Cluster) -> StorageClient {
    let mut config = ClientConfig {
        mgmtd_addresses: vec![cluster.mgmtd_address().to_string()],
        token: cluster.token().to_string(),
        ..Default::default()
    };
    config.retry.backoff_initial_ms = 5;
    config.retry.backoff_max_ms = 200;
    config.routing.refresh_interval_min_ms = 20;
    let mgmtd = MgmtdClient::new(MgmtdClientConfig::new(
        vec![cluster.mgmtd_address().to_string()],
        Some(cluster.token().to_string()),
    ))
    .expect("mgmtd client");
    let routing =
        RoutingCache::start(Arc::new(mgmtd), config.routing.clone()).await.expect("routing cache");
    StorageClient::new(config, Arc::new(routing)).expect("storage client")
}

/// Deterministic bytes for (chunk, generation).
fn pattern(chunk: u64, generation: u64, len: usize) -> Vec<u8> {
    let mut x = (chunk * 1_000_003 + generation).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn chunk_id(index: u64) -> ChunkId {
    ChunkId::new(InodeId(4242), index)
}

/// Public states of chain 1's targets, head first.
async fn chain_states(cluster: &Cluster) -> Vec<(u64, i32)> {
    let chains =
        cluster.admin().list_chains(admin::ListChainsRequest {}).await.expect("list chains");
    let chain = chains.chains.iter().find(|c| c.chain_id == CHAIN).expect("chain 1");
    chain.targets.iter().map(|t| (t.target_id, t.public_state)).collect()
}

fn state_of(states: &[(u64, i32)], target: u64) -> Option<pb::PublicTargetState> {
    states
        .iter()
        .find(|(t, _)| *t == target)
        .and_then(|(_, s)| pb::PublicTargetState::try_from(*s).ok())
}

/// Reads every chunk in `expected` and checks it byte for byte; returns the bytes verified.
async fn verify(client: &StorageClient, expected: &BTreeMap<u64, Vec<u8>>) -> u64 {
    let items: Vec<ChunkRead> = expected
        .keys()
        .map(|&i| ChunkRead {
            chain: ChainId(CHAIN),
            chunk: chunk_id(i),
            offset: 0,
            length: CHUNK_SIZE,
        })
        .collect();
    let got = client.read_chunks(&items).await.expect("read every chunk");
    let mut bytes = 0u64;
    for ((index, want), data) in expected.iter().zip(got) {
        match data {
            ReadData::Data(data) => {
                assert!(
                    data[..] == want[..],
                    "chunk {index}: {} bytes differ from what was acknowledged",
                    data.len()
                );
                bytes += data.len() as u64;
            }
            ReadData::Absent => panic!("chunk {index} is missing"),
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_a_replica_and_refuse_unsafe_operations() {
    let mut cluster = Cluster::builder("operations-test")
        .storage_nodes(3)
        .replication(2)
        .chains(1)
        .chunk_size(CHUNK_SIZE)
        .start()
        .await;
    let (old_head, old_tail, new) = (102u64, 103u64, 104u64);
    assert_eq!(cluster.chain_targets(CHAIN), vec![old_head, old_tail]);
    let client = storage_client(&cluster).await;

    // Data before the migration.
    let mut expected: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for i in 0..CHUNKS_BEFORE {
        let data = pattern(i, 0, CHUNK_SIZE as usize);
        client
            .write_chunk(ChainId(CHAIN), chunk_id(i), CHUNK_SIZE, 0, &data)
            .await
            .expect("write before the migration");
        expected.insert(i, data);
    }

    // Refusal: a target already in the chain.
    let refused = fails(
        &cluster,
        &[
            "add-target-to-chain",
            "--chain-id",
            "1",
            "--target-id",
            "103",
            "--node-id",
            "3",
            "--disk-index",
            "0",
        ],
    );
    assert!(refused.contains("already in chain"), "{refused}");

    // Add the new target on node 4; writes keep flowing (overwrites and new chunks) while it
    // resyncs, until it serves.
    let out = ok(
        &cluster,
        &[
            "add-target-to-chain",
            "--chain-id",
            "1",
            "--target-id",
            "104",
            "--node-id",
            "4",
            "--disk-index",
            "0",
        ],
    );
    assert!(out.contains("Target 104 added to chain 1"), "{out}");
    let mut saw_syncing = false;
    let mut rounds = 0u64;
    loop {
        let states = chain_states(&cluster).await;
        let state = state_of(&states, new);
        saw_syncing |= state == Some(pb::PublicTargetState::Syncing);
        if state == Some(pb::PublicTargetState::Serving) {
            break;
        }
        assert!(rounds < WRITE_ROUNDS_MAX, "target 104 never served: {states:?}");
        // Overwrite an old chunk and add a new one.
        let old = rounds % CHUNKS_BEFORE;
        let data = pattern(old, rounds + 1, CHUNK_SIZE as usize);
        client
            .write_chunk(ChainId(CHAIN), chunk_id(old), CHUNK_SIZE, 0, &data)
            .await
            .expect("overwrite during the resync");
        expected.insert(old, data);
        let fresh = CHUNKS_BEFORE + rounds;
        let data = pattern(fresh, 0, CHUNK_SIZE as usize / 2);
        client
            .write_chunk(ChainId(CHAIN), chunk_id(fresh), CHUNK_SIZE, 0, &data)
            .await
            .expect("new chunk during the resync");
        expected.insert(fresh, data);
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "target 104 serves after {rounds} write rounds during its resync (seen syncing: {saw_syncing})"
    );
    let listed = ok(&cluster, &["list-targets"]);
    assert!(listed.contains("Resync"), "the progress column is listed:\n{listed}");

    // Remove the old head (another replica serves), then lose the other old replica: every read
    // now comes from the new target.
    let out = ok(&cluster, &["remove-target", "--target-id", "102"]);
    assert!(out.contains("Target 102 removed"), "{out}");
    let states = chain_states(&cluster).await;
    assert_eq!(state_of(&states, old_head), None, "102 left the chain: {states:?}");
    cluster.kill9_storage(3);
    eventually("the old tail taken offline", || async {
        let states = chain_states(&cluster).await;
        (state_of(&states, old_tail) == Some(pb::PublicTargetState::Offline)
            && state_of(&states, new) == Some(pb::PublicTargetState::Serving))
        .then_some(())
    })
    .await;
    // The first pass may try the dead replica first (the client's routing can lag mgmtd's) and
    // retry on the new one; once the client has caught up, a second pass asks 104 alone.
    verify(&client, &expected).await;
    let before = client.stats().read_items_by_target;
    let bytes = verify(&client, &expected).await;
    let mut reads = client.stats().read_items_by_target;
    for (target, items) in before {
        *reads.entry(target).or_default() -= items;
    }
    reads.retain(|_, items| *items > 0);
    println!("verified {} chunks, {bytes} bytes, read from target 104 alone", expected.len());
    println!("read items by target in the second pass: {reads:?}");
    assert!(
        !reads.is_empty() && reads.keys().all(|t| t.0 == new),
        "every read of the second pass went to the new target: {reads:?}"
    );

    // Refusals, with the text an operator sees.
    let refused = fails(&cluster, &["remove-target", "--target-id", "104"]);
    assert!(
        refused.contains("only serving replica") && refused.contains("add-target-to-chain"),
        "{refused}"
    );
    let refused =
        fails(&cluster, &["rotate-last-serving", "--chain-id", "1", "--target-id", "103"]);
    assert!(refused.contains("still has a serving or syncing target"), "{refused}");
    let refused = fails(&cluster, &["remove-target", "--target-id", "102"]);
    assert!(refused.contains("not in chain"), "{refused}");

    // The old tail's daemon returns: 103 resyncs from 104 and serves again.
    cluster.restart_storage(3);
    eventually("103 serving again after its resync", || async {
        let states = chain_states(&cluster).await;
        (state_of(&states, old_tail) == Some(pb::PublicTargetState::Serving)).then_some(())
    })
    .await;

    // Orderly stop: every serving replica becomes last-serving, nothing takes writes, the chains
    // are frozen and list-chains says so; membership changes wait.
    let out = ok(&cluster, &["shutdown-all-chains"]);
    assert!(out.contains("Every chain is shut down"), "{out}");
    let chains = ok(&cluster, &["list-chains"]);
    assert!(chains.contains("shut down"), "{chains}");
    let states = chain_states(&cluster).await;
    for target in [old_tail, new] {
        assert_eq!(
            state_of(&states, target),
            Some(pb::PublicTargetState::LastServing),
            "{states:?}"
        );
    }
    let refused = fails(
        &cluster,
        &[
            "add-target-to-chain",
            "--chain-id",
            "1",
            "--target-id",
            "102",
            "--node-id",
            "2",
            "--disk-index",
            "0",
        ],
    );
    assert!(refused.contains("start-all-chains"), "{refused}");
    // Both daemons restart (a full stop), and report their targets online.
    cluster.restart_storage(3);
    cluster.restart_storage(4);
    eventually("the restarted targets reported online", || async {
        let listed = cluster.admin().list_targets(admin::ListTargetsRequest {}).await.ok()?;
        [old_tail, new]
            .iter()
            .all(|t| {
                listed.targets.iter().any(|i| {
                    i.target_id == *t && i.local_state == pb::LocalTargetState::Online as i32
                })
            })
            .then_some(())
    })
    .await;
    let out = ok(&cluster, &["start-all-chains"]);
    assert!(out.contains("Chains started"), "{out}");
    // Both serve at once: no resync after an orderly stop.
    let states = chain_states(&cluster).await;
    for target in [old_tail, new] {
        assert_eq!(state_of(&states, target), Some(pb::PublicTargetState::Serving), "{states:?}");
    }
    let data = pattern(9_999, 0, 4096);
    client
        .write_chunk(ChainId(CHAIN), chunk_id(9_999), CHUNK_SIZE, 0, &data)
        .await
        .expect("write after start-all-chains");
    expected.insert(9_999, data);
    let bytes = verify(&client, &expected).await;
    println!("after shutdown/start: verified {} chunks, {bytes} bytes", expected.len());
}
