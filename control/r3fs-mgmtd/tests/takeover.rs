//! Failover through gRPC: two mgmtd servers in one process share one MemoryKv (the shared store a
//! two-process test would need is the lead's remote KV backend, not available yet). A client
//! configured with the follower's address first is redirected to the primary; when the primary
//! stops without releasing its lease, the follower takes over after the lease expires and the
//! client and a routing watcher follow it; a clean shutdown hands the lease over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use r3fs_kv::{Kv, MemoryKv};
use r3fs_mgmtd::clock::SystemClock;
use r3fs_mgmtd::{MgmtdConfig, Role, Server};
use r3fs_rpc::admin as admin_pb;
use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};

fn config(node_id: u32) -> MgmtdConfig {
    let text = format!(
        r#"
        node_id = {node_id}
        listen = "127.0.0.1:0"
        lease_timeout_ms = 600
        lease_renew_interval_ms = 100
        heartbeat_interval_ms = 100
        heartbeat_timeout_ms = 1000
        failure_check_interval_ms = 100
        shutdown_grace_ms = 1000
        [kv]
        backend = "memory"
        "#
    );
    let config: MgmtdConfig = toml::from_str(&text).expect("config");
    config.validate().expect("valid config");
    config
}

async fn wait_for_role(server: &Server, primary: bool) {
    let mut role = server.mgmtd().subscribe_role();
    let wanted = |r: &Role| matches!(r, Role::Primary { .. }) == primary && *r != Role::Starting;
    tokio::time::timeout(Duration::from_secs(10), role.wait_for(wanted))
        .await
        .expect("role reached in time")
        .expect("role channel open");
}

fn client(addresses: Vec<String>, token: Option<String>) -> MgmtdClient {
    let mut config = MgmtdClientConfig::new(addresses, token);
    config.attempts_max = 20;
    config.backoff_initial_ms = 20;
    config.backoff_max_ms = 200;
    config.request_timeout_ms = 5_000;
    MgmtdClient::new(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_the_primary_across_failover() {
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
    let a = Server::start(&config(1), kv.clone(), Arc::new(SystemClock)).await.expect("start a");
    wait_for_role(&a, true).await;
    let b = Server::start(&config(2), kv.clone(), Arc::new(SystemClock)).await.expect("start b");
    wait_for_role(&b, false).await;
    let (a_address, b_address) = (a.local_addr().to_string(), b.local_addr().to_string());

    // The follower answers GetPrimary itself and redirects everything else.
    let anonymous = client(vec![b_address.clone(), a_address.clone()], None);
    let primary = anonymous.get_primary(pb::GetPrimaryRequest {}).await.expect("get primary");
    assert!(!primary.is_primary);
    assert_eq!(primary.primary_address, a_address);
    let init = anonymous
        .init_cluster(admin_pb::InitClusterRequest {
            cluster_id: "failover".into(),
            ..Default::default()
        })
        .await
        .expect("init through the follower's redirect");
    assert_eq!(anonymous.current_address(), a_address, "the client followed the redirect");

    let admin = client(vec![b_address.clone(), a_address.clone()], Some(init.admin_token.clone()));
    let start = admin.get_routing_info(0, Duration::ZERO).await.expect("routing").expect("some");
    let mut watcher = admin.watch_routing(start.routing_version);
    admin
        .create_targets(admin_pb::CreateTargetsRequest {
            targets: vec![admin_pb::TargetSpec {
                target_id: 1,
                node_id: 9,
                disk_index: 0,
                chain_id: 1,
            }],
        })
        .await
        .expect("create target 1");
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("in time")
        .expect("item");
    assert!(seen.targets.iter().any(|t| t.target_id == 1));

    // A "crashes" (keeps its lease): B takes over once it expires.
    a.stop_without_release().await.expect("stop a");
    wait_for_role(&b, true).await;
    let epoch = match b.mgmtd().role() {
        Role::Primary { fence, .. } => fence.epoch,
        other => panic!("b is not primary: {other:?}"),
    };
    assert_eq!(epoch, 2);

    // The same client (still pointing at A) reaches B; the token and state survived.
    admin
        .create_targets(admin_pb::CreateTargetsRequest {
            targets: vec![admin_pb::TargetSpec {
                target_id: 2,
                node_id: 9,
                disk_index: 0,
                chain_id: 1,
            }],
        })
        .await
        .expect("create target 2 on the new primary");
    assert_eq!(admin.current_address(), b_address);
    let seen = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("in time")
        .expect("item");
    assert!(seen.targets.iter().any(|t| t.target_id == 2), "the watcher followed the new primary");

    // A clean shutdown releases the lease: a new instance takes over without waiting it out.
    b.shutdown().await.expect("shutdown b");
    let started = Instant::now();
    let c = Server::start(&config(3), kv.clone(), Arc::new(SystemClock)).await.expect("start c");
    wait_for_role(&c, true).await;
    eprintln!(
        "c became primary {:?} after b's clean shutdown (lease timeout 600 ms)",
        started.elapsed()
    );
    let c_admin = client(vec![c.local_addr().to_string()], Some(init.admin_token));
    let targets =
        c_admin.list_targets(admin_pb::ListTargetsRequest {}).await.expect("list").targets;
    assert_eq!(targets.iter().map(|t| t.target_id).collect::<Vec<_>>(), vec![1, 2]);
    c.shutdown().await.expect("shutdown c");
}
