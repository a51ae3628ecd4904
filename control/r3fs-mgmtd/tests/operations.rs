//! The operator's chain operations through mgmtd's fenced transactions on a MemoryKv, with
//! heartbeats standing in for the storage daemons: add-target-to-chain (the new target syncs,
//! with its predecessor's resync progress copied onto it, then serves), remove-target and its
//! refusals, rotate-last-serving, and shutdown-all-chains / start-all-chains
//! (docs/design/operations.md).

mod common;

use std::sync::Arc;

use r3fs_kv::{Kv, MemoryKv, RetryPolicy};
use r3fs_mgmtd::clock::ManualClock;
use r3fs_mgmtd::error::MgmtdError;
use r3fs_mgmtd::records::ResyncRecord;
use r3fs_mgmtd::store::{
    self, ChainsOutcome, HeartbeatSpec, ResyncProgress, TargetReport, TargetSpec,
};
use r3fs_mgmtd::{Mgmtd, MgmtdOptions};
use r3fs_rpc::mgmtd::{self as pb, PublicTargetState as P};
use r3fs_types::{ChainId, ErrorCode, LocalTargetState as L, NodeId, TargetId};

const START_MS: u64 = 1_700_000_000_000;

struct Cluster {
    mgmtd: Arc<Mgmtd>,
    /// Next heartbeat version per storage node (10 and 11).
    versions: std::collections::HashMap<u32, u64>,
}

impl Cluster {
    async fn new() -> Cluster {
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
        let clock = Arc::new(ManualClock::new(START_MS));
        let options = MgmtdOptions {
            node_id: NodeId(1),
            address: "10.0.0.1:9100".into(),
            hostname: "mgmtd1".into(),
            release_version: "test".into(),
            lease_timeout_ms: 60_000,
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 30_000,
            routing_wait_max_ms: 1_000,
            retry: RetryPolicy::default(),
        };
        let mgmtd = Mgmtd::new(kv, clock, options);
        mgmtd.lease_tick().await.expect("take the lease");
        let mut cluster = Cluster { mgmtd, versions: Default::default() };
        // Chain 1 = [1, 2] on node 10, reported up to date before the upload (all serving); node
        // 11 is registered for targets added later. No chain yet, so the report's version is 0.
        let report = cluster.heartbeat(10, &[(1, L::UpToDate), (2, L::UpToDate)], 0, None);
        common::setup_chain(&cluster.mgmtd, &[10, 11], report).await;
        assert_eq!(cluster.chain().await, vec![(1, P::Serving), (2, P::Serving)]);
        cluster
    }

    /// Sends a heartbeat of `node` reporting `targets`, each claimed at the chain's current
    /// version; `resync` goes on the report of the first target.
    async fn beat(
        &mut self,
        node: u32,
        targets: &[(u64, L)],
        resync: Option<(u64, ResyncRecord)>,
    ) -> Result<store::HeartbeatOutcome, MgmtdError> {
        let chain_version = self.chain_version().await;
        let spec = self.heartbeat(node, targets, chain_version, resync);
        self.mgmtd.heartbeat(spec).await
    }

    /// The next heartbeat of `node` (its version counted here), each target claimed at
    /// `chain_version`; `resync` goes on the report of the first target.
    fn heartbeat(
        &mut self,
        node: u32,
        targets: &[(u64, L)],
        chain_version: u32,
        resync: Option<(u64, ResyncRecord)>,
    ) -> HeartbeatSpec {
        let version = self.versions.entry(node).or_insert(0);
        *version += 1;
        HeartbeatSpec {
            node_id: NodeId(node),
            heartbeat_version: *version,
            config_version: 0,
            release_version: "test".into(),
            targets: targets
                .iter()
                .enumerate()
                .map(|(i, &(target, local_state))| TargetReport {
                    target_id: TargetId(target),
                    local_state,
                    used_bytes: 0,
                    total_bytes: 0,
                    chain_version,
                    resync: resync.filter(|_| i == 0).map(|(synced, progress)| ResyncProgress {
                        target_id: TargetId(synced),
                        progress,
                    }),
                })
                .collect(),
        }
    }

    async fn routing(&self) -> pb::RoutingInfo {
        self.mgmtd.fresh_routing().await.expect("routing")
    }

    async fn chain(&self) -> Vec<(u64, P)> {
        let routing = self.routing().await;
        routing.chains[0]
            .targets
            .iter()
            .map(|t| (t.target_id, P::try_from(t.public_state).expect("known state")))
            .collect()
    }

    async fn chain_version(&self) -> u32 {
        self.routing().await.chains.first().map_or(0, |c| c.chain_version)
    }

    async fn target(&self, target: u64) -> pb::TargetInfo {
        self.routing()
            .await
            .targets
            .into_iter()
            .find(|t| t.target_id == target)
            .expect("target listed")
    }

    async fn add(&self, target: u64, node: u32) -> Result<u32, MgmtdError> {
        let spec = TargetSpec {
            target_id: TargetId(target),
            node_id: NodeId(node),
            disk_index: 0,
            chain_id: ChainId(1),
        };
        let (chain, _) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::add_target_to_chain(txn, ctx, &spec).await })
            })
            .await?;
        Ok(chain.version.0)
    }

    async fn remove(&self, target: u64) -> Result<u32, MgmtdError> {
        let (chain, _) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::remove_target(txn, ctx, TargetId(target)).await })
            })
            .await?;
        Ok(chain.version.0)
    }

    async fn rotate(&self, target: u64) -> Result<u32, MgmtdError> {
        let (chain, _) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move {
                    store::rotate_last_serving(txn, ctx, ChainId(1), TargetId(target)).await
                })
            })
            .await?;
        Ok(chain.version.0)
    }

    async fn shutdown(&self) -> ChainsOutcome {
        self.mgmtd
            .write_routing(|txn, ctx| {
                Box::pin(async move { store::shutdown_all_chains(txn, ctx).await })
            })
            .await
            .expect("shutdown-all-chains")
    }

    async fn start(&self, force: bool) -> Result<ChainsOutcome, MgmtdError> {
        self.mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::start_all_chains(txn, ctx, force).await })
            })
            .await
    }
}

fn refusal(result: Result<u32, MgmtdError>) -> (ErrorCode, String) {
    match result.expect_err("refused") {
        MgmtdError::Refused { code, message } => (code, message),
        other => panic!("expected a refusal, got {other}"),
    }
}

const PROGRESS: ResyncRecord =
    ResyncRecord { chunks_total: 100, chunks_done: 42, bytes_done: 42 << 20, started_unix_ms: 7 };

#[tokio::test]
async fn migration_adds_a_syncing_target_with_progress_then_removes_the_old_one() {
    let mut c = Cluster::new().await;
    let v0 = c.chain_version().await;

    // The new target on node 11 enters offline (its daemon has not reported it yet).
    assert_eq!(c.add(3, 11).await.expect("add"), v0 + 1);
    assert_eq!(c.chain().await, vec![(1, P::Serving), (2, P::Serving), (3, P::Offline)]);
    assert_eq!(c.target(3).await.node_id, 11, "the target record was created with its placement");
    // Adding it again is refused.
    let (code, message) = refusal(c.add(3, 11).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("already in chain C1"), "{message}");
    // Its daemon creates it and reports it online: it syncs behind the serving targets.
    c.beat(11, &[(3, L::Online)], None).await.expect("heartbeat");
    assert_eq!(c.chain().await, vec![(1, P::Serving), (2, P::Serving), (3, P::Syncing)]);

    // The predecessor (2) reports progress: copied onto 3 without a routing-version bump.
    let before = c.routing().await.routing_version;
    c.beat(10, &[(2, L::UpToDate), (1, L::UpToDate)], Some((3, PROGRESS))).await.expect("beat");
    let routing = c.routing().await;
    assert_eq!(routing.routing_version, before, "progress is informational");
    let info = c.target(3).await;
    assert_eq!(
        info.resync,
        Some(pb::ResyncProgress {
            target_id: 3,
            chunks_total: 100,
            chunks_done: 42,
            bytes_done: 42 << 20,
            started_unix_ms: 7
        })
    );
    // A report about a target that is not syncing is dropped.
    c.beat(10, &[(2, L::UpToDate)], Some((1, PROGRESS))).await.expect("beat");
    assert_eq!(c.target(1).await.resync, None);

    // The resync finishes: 3 serves and its progress is cleared.
    c.beat(11, &[(3, L::UpToDate)], None).await.expect("heartbeat");
    assert_eq!(c.chain().await, vec![(1, P::Serving), (2, P::Serving), (3, P::Serving)]);
    assert_eq!(c.target(3).await.resync, None);

    // Migration done: remove the old replica 1 (others serve).
    c.remove(1).await.expect("remove a serving target while others serve");
    assert_eq!(c.chain().await, vec![(2, P::Serving), (3, P::Serving)]);
    let removed = c.target(1).await;
    assert_eq!(removed.public_state, P::Unspecified as i32, "in no chain any more");
    assert_eq!(removed.chain_id, 1);
    let (code, _) = refusal(c.remove(1).await);
    assert_eq!(code, ErrorCode::TargetNotFound);

    // 3's node dies: 2 is the only serving replica and may not leave.
    c.beat(11, &[(3, L::Offline)], None).await.expect("heartbeat");
    assert_eq!(c.chain().await, vec![(2, P::Serving), (3, P::Offline)]);
    let (code, message) = refusal(c.remove(2).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("only serving replica") && message.contains("add-target-to-chain"));
    // The removed target can come back: it resyncs like a new one.
    c.add(1, 10).await.expect("add back");
    assert_eq!(c.chain().await, vec![(2, P::Serving), (1, P::Waiting), (3, P::Offline)]);
    // Placement must match the record; the node must be a registered storage node.
    let (code, message) = refusal(c.add(3, 10).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("exists on node"), "{message}");
    let (code, _) = refusal(c.add(9, 99).await);
    assert_eq!(code, ErrorCode::NodeNotFound);
}

#[tokio::test]
async fn rotate_last_serving_lets_a_surviving_target_serve() {
    let mut c = Cluster::new().await;
    // 2 fails, then 1: 1 is last-serving.
    c.beat(10, &[(1, L::UpToDate), (2, L::Offline)], None).await.expect("beat");
    c.beat(10, &[(1, L::Offline), (2, L::Offline)], None).await.expect("beat");
    assert_eq!(c.chain().await, vec![(1, P::LastServing), (2, P::Offline)]);
    // 2 comes back and waits: no source.
    c.beat(10, &[(2, L::Online)], None).await.expect("beat");
    assert_eq!(c.chain().await, vec![(2, P::Waiting), (1, P::LastServing)]);
    // 1's disk is lost: the operator lets 2 serve.
    let (code, _) = refusal(c.rotate(9).await);
    assert_eq!(code, ErrorCode::TargetNotFound);
    c.rotate(2).await.expect("rotate");
    assert_eq!(c.chain().await, vec![(2, P::Serving), (1, P::Offline)]);
    let (code, message) = refusal(c.rotate(1).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("serving or syncing target (T2)"), "{message}");
}

#[tokio::test]
async fn shutdown_freezes_the_chains_and_start_serves_without_resync() {
    let mut c = Cluster::new().await;
    let v0 = c.chain_version().await;
    let outcome = c.shutdown().await;
    assert_eq!(outcome.chains_changed, 1);
    assert_eq!(c.chain().await, vec![(1, P::LastServing), (2, P::LastServing)]);
    assert_eq!(c.chain_version().await, v0 + 1);
    assert_eq!(c.shutdown().await.chains_changed, 0, "idempotent");
    let listed = c
        .mgmtd
        .read(|txn| {
            Box::pin(async move { store::chains_stopped(txn, r3fs_kv::ReadMode::Snapshot).await })
        })
        .await
        .expect("read the flag");
    assert_eq!(listed.map(|s| s.stopped_unix_ms), Some(START_MS));

    // Alive daemons report online (their targets are last-serving): the chain stays frozen.
    c.beat(10, &[(1, L::Online), (2, L::Online)], None).await.expect("beat");
    assert_eq!(c.chain().await, vec![(1, P::LastServing), (2, P::LastServing)]);
    // Membership changes (and new chains, which would serve at once) wait for the start.
    let upload = common::upload_chain(&c.mgmtd).await;
    for refused in [c.remove(2).await, c.add(3, 11).await, c.rotate(2).await, upload] {
        let (code, message) = refusal(refused);
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(message.contains("start-all-chains"), "{message}");
    }
    // The daemons stop; only 2's comes back before the start.
    c.beat(10, &[(1, L::Offline), (2, L::Online)], None).await.expect("beat");
    let message = match c.start(false).await.expect_err("1 has not reported") {
        MgmtdError::Refused { message, .. } => message,
        other => panic!("{other}"),
    };
    assert!(message.contains("targets T1 have not reported") && message.contains("--force"));
    // Both back: both serve at once, no resync.
    c.beat(10, &[(1, L::Online), (2, L::Online)], None).await.expect("beat");
    assert_eq!(c.start(false).await.expect("start").chains_changed, 1);
    assert_eq!(c.chain().await, vec![(1, P::Serving), (2, P::Serving)]);
    assert_eq!(c.start(false).await.expect("no-op").chains_changed, 0);

    // Forced start with one target missing: the other serves, the missing one resyncs later.
    c.shutdown().await;
    c.beat(10, &[(1, L::Offline), (2, L::Online)], None).await.expect("beat");
    c.start(true).await.expect("forced start");
    assert_eq!(c.chain().await, vec![(2, P::Serving), (1, P::Offline)]);
    c.beat(10, &[(1, L::Online), (2, L::UpToDate)], None).await.expect("beat");
    assert_eq!(c.chain().await, vec![(2, P::Serving), (1, P::Syncing)]);
}

/// create-targets and add-target-to-chain refuse a zero id with one check and one message.
#[tokio::test]
async fn zero_ids_are_refused_alike_by_create_targets_and_add_target_to_chain() {
    let c = Cluster::new().await;
    let spec = TargetSpec {
        target_id: TargetId(0),
        node_id: NodeId(11),
        disk_index: 0,
        chain_id: ChainId(1),
    };
    let created = c
        .mgmtd
        .write_routing(move |txn, ctx| {
            Box::pin(async move { store::create_targets(txn, ctx, &[spec]).await })
        })
        .await
        .map(|(created, _)| created);
    let added = c.add(0, 11).await;
    let expected =
        "node, target and chain ids must be non-zero (got node N11, target T0, chain C1)";
    for refused in [created, added] {
        let (code, message) = refusal(refused);
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert_eq!(message, expected);
    }
    let (_, message) = refusal(c.add(3, 0).await);
    assert!(message.contains("got node N0, target T3"), "{message}");
    assert_eq!(c.chain().await, vec![(1, P::Serving), (2, P::Serving)], "nothing changed");
}
