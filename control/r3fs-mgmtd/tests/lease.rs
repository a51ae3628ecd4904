//! Several mgmtd instances sharing one MemoryKv in one process, each on its own manual clock (so
//! clock skew can be staged): election, renewal, expiry and takeover, fencing of a deposed
//! primary, clean release, restart under the same node id, and heartbeat failure detection.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use r3fs_kv::{Kv, MemoryKv, ReadMode, RetryPolicy};
use r3fs_mgmtd::clock::ManualClock;
use r3fs_mgmtd::error::MgmtdError;
use r3fs_mgmtd::lease::{self, Candidate};
use r3fs_mgmtd::records::PresenceRecord;
use r3fs_mgmtd::store::{self, HeartbeatSpec, TargetReport};
use r3fs_mgmtd::{Mgmtd, MgmtdOptions, Role};
use r3fs_types::{ErrorCode, LocalTargetState, NodeId, NodeStatus, NodeType, TargetId};

const LEASE_TIMEOUT_MS: u64 = 1_000;
const HEARTBEAT_TIMEOUT_MS: u64 = 500;
const START_MS: u64 = 1_700_000_000_000;

fn options(node: u32) -> MgmtdOptions {
    MgmtdOptions {
        node_id: NodeId(node),
        address: format!("10.0.0.{node}:9100"),
        hostname: format!("mgmtd{node}"),
        release_version: "test".into(),
        lease_timeout_ms: LEASE_TIMEOUT_MS,
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS,
        routing_wait_max_ms: 1_000,
        retry: RetryPolicy::default(),
    }
}

struct Instance {
    mgmtd: Arc<Mgmtd>,
    clock: Arc<ManualClock>,
}

fn instance(kv: &Arc<dyn Kv>, node: u32) -> Instance {
    let clock = Arc::new(ManualClock::new(START_MS));
    Instance { mgmtd: Mgmtd::new(kv.clone(), clock.clone(), options(node)), clock }
}

fn primary_of(role: &Role) -> Option<(NodeId, u64)> {
    match role {
        Role::Primary { holder, fence } => Some((holder.node_id, fence.epoch)),
        Role::Follower { primary: Some(holder) } => Some((holder.node_id, holder.epoch)),
        _ => None,
    }
}

fn is_primary(instance: &Instance) -> bool {
    matches!(instance.mgmtd.role(), Role::Primary { .. })
}

/// A harmless fenced write: store a config version.
async fn write(instance: &Instance) -> Result<u64, MgmtdError> {
    instance
        .mgmtd
        .write(|txn, ctx| {
            Box::pin(async move { store::set_config(txn, ctx, NodeType::Meta, "a = 1", "t").await })
        })
        .await
}

#[tokio::test]
async fn one_primary_takeover_after_expiry_and_the_deposed_primary_is_fenced() {
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
    let a = instance(&kv, 1);
    let b = instance(&kv, 2);
    let c = instance(&kv, 3);

    // A runs first and wins; B and C follow A.
    assert_eq!(primary_of(&a.mgmtd.lease_tick().await.expect("a tick")), Some((NodeId(1), 1)));
    assert!(is_primary(&a));
    for other in [&b, &c] {
        let role = other.mgmtd.lease_tick().await.expect("tick");
        assert!(matches!(role, Role::Follower { primary: Some(ref h) } if h.node_id == NodeId(1)));
        let refused = write(other).await.expect_err("a follower cannot write");
        assert!(
            matches!(refused, MgmtdError::NotPrimary { primary_address: Some(ref address) } if address == "10.0.0.1:9100"),
            "{refused:?}"
        );
    }
    assert_eq!(write(&a).await.expect("primary writes"), 1);

    // A renews in time: B, C stay followers even after the first term would have ended.
    for _ in 0..3 {
        for i in [&a, &b, &c] {
            i.clock.advance_ms(LEASE_TIMEOUT_MS / 2);
        }
        a.mgmtd.lease_tick().await.expect("renew");
        b.mgmtd.lease_tick().await.expect("b tick");
        c.mgmtd.lease_tick().await.expect("c tick");
        assert!(is_primary(&a) && !is_primary(&b) && !is_primary(&c));
    }

    // A stalls (no renewals) while its own clock also stands still, so A still believes it is
    // primary. B's clock passes the expiry: B takes over with a higher epoch.
    b.clock.advance_ms(LEASE_TIMEOUT_MS + 1);
    c.clock.advance_ms(LEASE_TIMEOUT_MS + 1);
    assert_eq!(
        primary_of(&b.mgmtd.lease_tick().await.expect("b takes over")),
        Some((NodeId(2), 2))
    );
    assert!(is_primary(&b));
    assert!(is_primary(&a), "A has not noticed yet");

    // A's write is fenced by the KV record, not by its own (stale) view.
    let fenced = write(&a).await.expect_err("deposed primary must be fenced");
    assert!(
        matches!(fenced, MgmtdError::NotPrimary { primary_address: Some(ref address) } if address == "10.0.0.2:9100"),
        "{fenced:?}"
    );
    assert_eq!(write(&b).await.expect("new primary writes"), 2);

    // A's next round makes it a follower of B; C follows B too.
    assert!(
        matches!(a.mgmtd.lease_tick().await.expect("a tick"), Role::Follower { primary: Some(ref h) } if h.node_id == NodeId(2))
    );
    assert_eq!(primary_of(&c.mgmtd.lease_tick().await.expect("c tick")), Some((NodeId(2), 2)));

    // B shuts down cleanly: it releases the lease and C takes over at once, without waiting.
    assert!(b.mgmtd.release_lease().await.expect("release"));
    assert_eq!(
        primary_of(&c.mgmtd.lease_tick().await.expect("c takes over")),
        Some((NodeId(3), 3))
    );
    assert!(matches!(write(&b).await, Err(MgmtdError::NotPrimary { .. })));
    assert_eq!(write(&c).await.expect("c writes"), 3);
}

/// The fencing race at the KV level: a write transaction of the old primary that read the lease
/// before a takeover committed cannot commit after it.
#[tokio::test]
async fn a_write_racing_a_takeover_conflicts() {
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
    let policy = RetryPolicy::default();
    let presence = |node: u32, now: u64| PresenceRecord {
        node_id: NodeId(node),
        instance: u64::from(node),
        address: String::new(),
        hostname: String::new(),
        release_version: String::new(),
        last_seen_unix_ms: now,
    };
    let old = Candidate { node_id: NodeId(1), instance: 1, address: "old:1".into() };
    let new = Candidate { node_id: NodeId(2), instance: 2, address: "new:1".into() };
    let view =
        lease::lease_round(&*kv, &policy, &old, &presence(1, 0), 0, 100).await.expect("acquire");
    let fence = view.fence();

    let mut txn = kv.begin().await.expect("begin");
    lease::check_fence(&mut *txn, &fence, 50).await.expect("still the holder at t=50");
    txn.set(b"mgmtd/test", b"from the old primary").expect("set");

    let taken = lease::lease_round(&*kv, &policy, &new, &presence(2, 200), 200, 100)
        .await
        .expect("takeover");
    assert_eq!(taken.holder.epoch, 2);

    let error = txn.commit().await.expect_err("the old primary's write must conflict");
    assert!(matches!(error, r3fs_kv::KvError::Conflict), "{error:?}");
    let mut check = kv.begin().await.expect("begin");
    assert_eq!(check.get(b"mgmtd/test", ReadMode::Snapshot).await.expect("get"), None);
    let refused = lease::check_fence(&mut *check, &fence, 50).await.expect_err("fenced on retry");
    assert!(
        matches!(refused, MgmtdError::NotPrimary { primary_address: Some(ref a) } if a == "new:1")
    );
}

#[tokio::test]
async fn a_restarted_instance_with_the_same_node_id_takes_over_at_once() {
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
    let first = instance(&kv, 1);
    assert!(matches!(first.mgmtd.lease_tick().await.expect("tick"), Role::Primary { .. }));
    // The process dies without releasing; its replacement (same node id, new instance nonce)
    // does not wait for the old lease to expire.
    let second = instance(&kv, 1);
    assert_eq!(primary_of(&second.mgmtd.lease_tick().await.expect("tick")), Some((NodeId(1), 2)));
    assert!(matches!(write(&first).await, Err(MgmtdError::NotPrimary { .. })));
    write(&second).await.expect("the new process writes");
}

fn report(target: u64, local_state: LocalTargetState, chain_version: u32) -> TargetReport {
    TargetReport {
        target_id: TargetId(target),
        local_state,
        used_bytes: target * 100,
        total_bytes: target * 1000,
        chain_version,
        resync: None,
    }
}

fn heartbeat(version: u64) -> HeartbeatSpec {
    HeartbeatSpec {
        node_id: NodeId(common::CHAIN_NODE),
        heartbeat_version: version,
        config_version: 0,
        release_version: "test".into(),
        targets: vec![
            report(1, LocalTargetState::UpToDate, 0),
            report(2, LocalTargetState::UpToDate, 0),
        ],
    }
}

#[tokio::test]
async fn silent_node_fails_and_its_targets_go_offline() {
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
    let primary = instance(&kv, 1);
    primary.mgmtd.lease_tick().await.expect("tick");
    common::setup_chain(&primary.mgmtd, &[common::CHAIN_NODE], heartbeat(1)).await;
    primary.mgmtd.heartbeat(heartbeat(2)).await.expect("heartbeat 2");
    let stale = primary.mgmtd.heartbeat(heartbeat(2)).await.expect_err("same version again");
    assert_eq!(stale.code(), ErrorCode::StaleHeartbeat);

    let routing = primary.mgmtd.fresh_routing().await.expect("routing");
    let chain = &routing.chains[0];
    assert!(
        chain
            .targets
            .iter()
            .all(|t| t.public_state == r3fs_rpc::mgmtd::PublicTargetState::Serving as i32)
    );
    let version_before = routing.routing_version;

    // Heartbeats keep it alive across several timeouts' worth of time.
    for v in 3..7 {
        primary.clock.advance_ms(HEARTBEAT_TIMEOUT_MS / 2);
        primary.mgmtd.lease_tick().await.expect("renew");
        primary.mgmtd.heartbeat(heartbeat(v)).await.expect("heartbeat");
        primary.mgmtd.failure_tick().await.expect("failure tick");
    }
    let node = node_status(&primary, 10).await;
    assert_eq!(node, NodeStatus::HeartbeatConnected);

    // Silence: within the timeout nothing happens; past it the node fails.
    primary.clock.advance_ms(HEARTBEAT_TIMEOUT_MS / 2);
    primary.mgmtd.lease_tick().await.expect("renew");
    primary.mgmtd.failure_tick().await.expect("failure tick");
    assert_eq!(node_status(&primary, 10).await, NodeStatus::HeartbeatConnected);
    primary.clock.advance_ms(HEARTBEAT_TIMEOUT_MS / 2 + 1);
    primary.mgmtd.lease_tick().await.expect("renew");
    primary.mgmtd.failure_tick().await.expect("failure tick");
    assert_eq!(node_status(&primary, 10).await, NodeStatus::HeartbeatFailed);

    let routing = primary.mgmtd.fresh_routing().await.expect("routing");
    assert!(routing.routing_version > version_before);
    assert!(
        routing
            .targets
            .iter()
            .all(|t| t.local_state == r3fs_rpc::mgmtd::LocalTargetState::Offline as i32)
    );
    let states: Vec<i32> = routing.chains[0].targets.iter().map(|t| t.public_state).collect();
    assert_eq!(
        states,
        vec![
            r3fs_rpc::mgmtd::PublicTargetState::LastServing as i32,
            r3fs_rpc::mgmtd::PublicTargetState::Offline as i32
        ],
        "the first serving target keeps the last-serving identity"
    );
    assert!(routing.chains[0].chain_version > 1);

    // It comes back: connected again; its targets report online, the last-serving one serves
    // again and the other resyncs.
    let mut back = heartbeat(10);
    back.targets =
        vec![report(1, LocalTargetState::Online, 0), report(2, LocalTargetState::Online, 0)];
    primary.mgmtd.heartbeat(back).await.expect("heartbeat after failure");
    assert_eq!(node_status(&primary, 10).await, NodeStatus::HeartbeatConnected);
    let routing = primary.mgmtd.fresh_routing().await.expect("routing");
    let states: BTreeSet<(u64, i32)> =
        routing.chains[0].targets.iter().map(|t| (t.target_id, t.public_state)).collect();
    assert_eq!(
        states,
        BTreeSet::from([
            (1, r3fs_rpc::mgmtd::PublicTargetState::Serving as i32),
            (2, r3fs_rpc::mgmtd::PublicTargetState::Syncing as i32)
        ])
    );

    // An up-to-date claim for the syncing target made at an older chain version (a delayed
    // claim from before it missed writes) is taken as online: it keeps syncing. The same claim
    // at the current version finishes the resync.
    let current = routing.chains[0].chain_version;
    let failed_at = current - 1;
    let mut stale = heartbeat(11);
    stale.targets = vec![
        report(1, LocalTargetState::UpToDate, current),
        report(2, LocalTargetState::UpToDate, failed_at),
    ];
    primary.mgmtd.heartbeat(stale).await.expect("heartbeat with a stale claim");
    let routing = primary.mgmtd.fresh_routing().await.expect("routing");
    let syncing = r3fs_rpc::mgmtd::PublicTargetState::Syncing as i32;
    let target_2 = routing.chains[0].targets.iter().find(|t| t.target_id == 2).expect("target 2");
    assert_eq!(target_2.public_state, syncing, "a stale claim must not end the resync");
    let mut fresh = heartbeat(12);
    fresh.targets = vec![
        report(1, LocalTargetState::UpToDate, current),
        report(2, LocalTargetState::UpToDate, current),
    ];
    primary.mgmtd.heartbeat(fresh).await.expect("heartbeat with a current claim");
    let routing = primary.mgmtd.fresh_routing().await.expect("routing");
    let serving = r3fs_rpc::mgmtd::PublicTargetState::Serving as i32;
    assert!(routing.chains[0].targets.iter().all(|t| t.public_state == serving));
}

#[tokio::test]
async fn a_new_primary_gives_every_node_a_full_timeout() {
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
    let a = instance(&kv, 1);
    let b = instance(&kv, 2);
    a.mgmtd.lease_tick().await.expect("tick");
    common::setup_chain(&a.mgmtd, &[common::CHAIN_NODE], heartbeat(1)).await;
    a.mgmtd.heartbeat(heartbeat(2)).await.expect("heartbeat");
    // A dies; B takes over much later than the node's last heartbeat to A.
    b.clock.advance_ms(LEASE_TIMEOUT_MS * 3);
    b.mgmtd.lease_tick().await.expect("takeover");
    assert!(is_primary(&b));
    b.mgmtd.failure_tick().await.expect("failure tick");
    assert_eq!(node_status(&b, 10).await, NodeStatus::HeartbeatConnected, "grace after takeover");
    b.clock.advance_ms(HEARTBEAT_TIMEOUT_MS / 2);
    b.mgmtd.failure_tick().await.expect("failure tick");
    b.clock.advance_ms(HEARTBEAT_TIMEOUT_MS / 2 + 1);
    b.mgmtd.failure_tick().await.expect("failure tick");
    assert_eq!(node_status(&b, 10).await, NodeStatus::HeartbeatFailed);
}

async fn node_status(instance: &Instance, node: u32) -> NodeStatus {
    let routing = instance.mgmtd.fresh_routing().await.expect("routing");
    let info = routing.nodes.iter().find(|n| n.node_id == node).expect("node listed");
    r3fs_mgmtd::convert::node_status_from_pb(info.status).expect("valid status")
}
