//! mgmtd's metrics (docs/design/monitoring.md): lease role, routing version, nodes by status,
//! targets by public and local state, and chains by how many of their targets serve. Series are
//! aggregate counts, so their number does not grow with the cluster; per-target detail lives in
//! the storage daemons' own metrics.

use crate::core::{Mgmtd, Role};
use r3fs_metrics::global;
use r3fs_rpc::mgmtd as pb;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the gauges are refreshed even without a routing change (used bytes move without
/// one).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Most replicas a chain is assumed to have when labelling chains by serving count.
const SERVING_LABEL_MAX: usize = 16;

/// Sets every routing gauge from one snapshot.
pub fn record_routing(info: &pb::RoutingInfo) {
    let registry = global();
    registry
        .gauge("r3fs_mgmtd_routing_version_number", "Published routing version", &[])
        .set(i64::try_from(info.routing_version).unwrap_or(i64::MAX));

    let mut nodes: BTreeMap<&'static str, i64> = BTreeMap::new();
    for status in ["primary_mgmtd", "connected", "failed", "disabled", "unknown"] {
        nodes.insert(status, 0);
    }
    for node in &info.nodes {
        let status = match pb::NodeStatus::try_from(node.status) {
            Ok(pb::NodeStatus::PrimaryMgmtd) => "primary_mgmtd",
            Ok(pb::NodeStatus::HeartbeatConnected) => "connected",
            Ok(pb::NodeStatus::HeartbeatFailed) => "failed",
            Ok(pb::NodeStatus::Disabled) => "disabled",
            _ => "unknown",
        };
        *nodes.entry(status).or_default() += 1;
    }
    for (status, count) in nodes {
        registry
            .gauge("r3fs_mgmtd_nodes_count", "Nodes by status", &[("status", status)])
            .set(count);
    }

    let mut public: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut local: BTreeMap<&'static str, i64> = BTreeMap::new();
    for state in ["serving", "syncing", "waiting", "last_serving", "offline", "unassigned"] {
        public.insert(state, 0);
    }
    for state in ["up_to_date", "online", "offline", "unknown"] {
        local.insert(state, 0);
    }
    let mut used_bytes: u64 = 0;
    for target in &info.targets {
        let p = match pb::PublicTargetState::try_from(target.public_state) {
            Ok(pb::PublicTargetState::Serving) => "serving",
            Ok(pb::PublicTargetState::Syncing) => "syncing",
            Ok(pb::PublicTargetState::Waiting) => "waiting",
            Ok(pb::PublicTargetState::LastServing) => "last_serving",
            Ok(pb::PublicTargetState::Offline) => "offline",
            _ => "unassigned",
        };
        let l = match pb::LocalTargetState::try_from(target.local_state) {
            Ok(pb::LocalTargetState::UpToDate) => "up_to_date",
            Ok(pb::LocalTargetState::Online) => "online",
            Ok(pb::LocalTargetState::Offline) => "offline",
            _ => "unknown",
        };
        *public.entry(p).or_default() += 1;
        *local.entry(l).or_default() += 1;
        used_bytes = used_bytes.saturating_add(target.used_bytes);
    }
    for (state, count) in public {
        registry
            .gauge(
                "r3fs_mgmtd_targets_public_count",
                "Targets by public state",
                &[("state", state)],
            )
            .set(count);
    }
    for (state, count) in local {
        registry
            .gauge(
                "r3fs_mgmtd_targets_local_count",
                "Targets by reported local state",
                &[("state", state)],
            )
            .set(count);
    }
    registry
        .gauge("r3fs_mgmtd_targets_used_bytes", "Bytes used on all targets", &[])
        .set(i64::try_from(used_bytes).unwrap_or(i64::MAX));

    let mut by_serving = [0i64; SERVING_LABEL_MAX + 1];
    for chain in &info.chains {
        let serving = chain
            .targets
            .iter()
            .filter(|t| t.public_state == pb::PublicTargetState::Serving as i32)
            .count();
        by_serving[serving.min(SERVING_LABEL_MAX)] += 1;
    }
    registry.gauge("r3fs_mgmtd_chains_count", "Chains", &[]).set(info.chains.len() as i64);
    for (serving, count) in by_serving.iter().enumerate() {
        // Only label values that occur or did occur: zero series for counts never seen are noise.
        if *count > 0 || serving <= 3 {
            let label = serving.to_string();
            registry
                .gauge(
                    "r3fs_mgmtd_chains_by_serving_count",
                    "Chains by number of serving targets (0 = unavailable)",
                    &[("serving", &label)],
                )
                .set(*count);
        }
    }
}

/// Keeps the gauges current while mgmtd runs: on every routing change and every
/// [`REFRESH_INTERVAL`]. Only the primary publishes routing figures (a standby's view may lag).
pub async fn watch(mgmtd: Arc<Mgmtd>) {
    let primary = global().gauge(
        "r3fs_mgmtd_primary_role_flag",
        "1 while this instance holds the lease",
        &[],
    );
    let mut routing = mgmtd.subscribe_routing();
    loop {
        let is_primary = matches!(mgmtd.role(), Role::Primary { .. });
        primary.set(i64::from(is_primary));
        if is_primary {
            match mgmtd.routing().await {
                Ok(info) => record_routing(&info),
                Err(error) => tracing::debug!(%error, "routing for metrics not read"),
            }
        }
        tokio::select! {
            changed = routing.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REFRESH_INTERVAL) => {}
        }
    }
}
