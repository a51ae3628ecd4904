//! The cluster harness itself, against the real daemons: a small cluster (two storage nodes, one
//! replication-2 chain, meta through mgmtd, a FUSE mount when this machine can mount) boots with
//! the generated configs carrying the overrides; a file written through the mount survives a
//! kill -9 and restart of one storage daemon and a restart of mgmtd (on-disk KV); the cluster stops
//! cleanly. A daemon that never becomes ready fails the start with its output instead of hanging.

use r3fs_rpc::{admin, mgmtd as pb};
use r3fs_testkit::cluster::{Cluster, MetaAuth, Role, eventually, fuse_unavailable};

async fn public_state(cluster: &Cluster, target: u64) -> Option<i32> {
    let list = cluster.admin().list_targets(admin::ListTargetsRequest {}).await.ok()?;
    Some(list.targets.iter().find(|t| t.target_id == target)?.public_state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cluster_boots_survives_a_kill_and_a_mgmtd_restart_and_stops_cleanly() {
    // A disk the test chose for node 2 (as a test that fills a small file system does).
    let own_disk_root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let own_disk = own_disk_root.path().join("disk");
    let mut builder = Cluster::builder("testkit-test")
        .storage_nodes(2)
        .replication(2)
        .chains(1)
        .mgmtd_kv_on_disk()
        .meta(MetaAuth::Mgmtd)
        .config(Role::Mgmtd, "heartbeat_timeout_ms = 1500")
        .config(Role::Storage, "[store]\ncapacity_bytes = 134217728")
        .storage_config(3, "tick_interval_ms = 20")
        .storage_disk(2, &own_disk);
    let fuse = fuse_unavailable();
    match &fuse {
        None => builder = builder.fuse(),
        Some(reason) => println!("the FUSE part is skipped: {reason}"),
    }
    let mut cluster = builder.start().await;

    // The overrides are merged into the generated configs, the rest kept.
    let mgmtd_config =
        std::fs::read_to_string(cluster.mgmtd().config_path()).expect("read the mgmtd config");
    assert!(mgmtd_config.contains("heartbeat_timeout_ms = 1500"), "{mgmtd_config}");
    assert!(mgmtd_config.contains("backend = \"fjall\""), "{mgmtd_config}");
    assert!(mgmtd_config.contains("lease_timeout_ms = 2000"), "{mgmtd_config}");
    let storage_config =
        std::fs::read_to_string(cluster.storage(2).config_path()).expect("read a storage config");
    assert!(storage_config.contains("capacity_bytes = 134217728"), "{storage_config}");
    assert!(storage_config.contains("log_extent_bytes = 1048576"), "{storage_config}");
    assert!(storage_config.contains("tick_interval_ms = 10"), "{storage_config}");
    assert!(storage_config.contains(&format!("{}", own_disk.display())), "{storage_config}");
    // Node 3's own override, over the role's.
    let node3_config =
        std::fs::read_to_string(cluster.storage(3).config_path()).expect("read node 3's config");
    assert!(node3_config.contains("tick_interval_ms = 20"), "{node3_config}");
    assert!(node3_config.contains("capacity_bytes = 134217728"), "{node3_config}");
    assert_eq!(cluster.storage_disk(2), own_disk);
    assert_eq!(cluster.storage_disk(3), cluster.dir().join("node3-disk0"));

    // Placement: node ids from 2, chain 1 headed on the first node, targets chain * 100 + node.
    assert_eq!(cluster.storage_nodes(), &[2, 3]);
    assert_eq!(cluster.chain_ids(), vec![1]);
    assert_eq!(cluster.chain_targets(1), vec![102, 103]);
    assert!(own_disk.join("target-102").is_dir(), "node 2 keeps its target on its own disk");
    let routing = cluster.admin().get_routing_info(0, std::time::Duration::ZERO).await;
    let routing = routing.expect("routing info").expect("a routing version");
    let chain = routing.chains.iter().find(|c| c.chain_id == 1).expect("chain 1 in the routing");
    let members: Vec<u64> = chain.targets.iter().map(|t| t.target_id).collect();
    assert_eq!(members, vec![102, 103]);
    let table = routing.chain_tables.iter().find(|t| t.table_id == 1).expect("chain table 1");
    assert_eq!(table.chain_ids, vec![1]);

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = cluster.fuse().map(|mount| mount.path("survivor.bin"));
    if let Some(file) = &file {
        std::fs::write(file, &data).expect("write through the mount");
        assert_eq!(std::fs::read(file).expect("read through the mount"), data);
    }

    // kill -9 the tail's daemon: mgmtd takes its target offline; restarted, it serves again.
    cluster.kill9_storage(3);
    eventually("target 103 to go offline", async || {
        let state = public_state(&cluster, 103).await?;
        (state == pb::PublicTargetState::Offline as i32).then_some(())
    })
    .await;
    cluster.restart_storage(3);
    cluster.wait_serving(&cluster.target_ids()).await;

    // mgmtd's state is on disk: after kill -9 and a restart it still knows the cluster.
    cluster.mgmtd().proc().kill9();
    cluster.restart_mgmtd();
    cluster.wait_serving(&cluster.target_ids()).await;
    if let Some(file) = &file {
        eventually("the file to read back through the mount", async || {
            std::fs::read(file).ok().filter(|read| *read == data)
        })
        .await;
    }

    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "exited before printing")]
async fn a_daemon_that_never_becomes_ready_fails_the_start() {
    Cluster::builder("testkit-refused").binary(Role::Mgmtd, "/bin/false").start().await;
}
