//! The control thread: a small tokio runtime that talks gRPC to mgmtd for the whole daemon.
//!
//! 1. Registers the node with its data-plane addresses (`data/<shard>`), retrying until mgmtd
//!    answers or the daemon stops.
//! 2. Long-polls the routing info and hands every new version to every shard.
//! 3. Sends a heartbeat every `heartbeat_interval_ms` (as mgmtd dictates) with the latest local
//!    state and used bytes of every target, as the shards last reported them.
//! 4. Fences the shards (client reads and writes refused with `Fenced`) after half the heartbeat
//!    timeout without a successful heartbeat: by then mgmtd may be about to declare the node dead
//!    and reorganize its chains; a cut-off head must not keep ordering writes, and a cut-off
//!    replica must not serve reads a newer chain has overtaken (finding 3 of
//!    docs/design/simulation.md). The fence lifts only once a heartbeat succeeded again AND every
//!    shard applied the routing version that heartbeat's reply named, so the node serves again
//!    only under the chains mgmtd decided while it was away. A separate task checks the fence
//!    every `interval / 4`, so a heartbeat call that hangs (partition) cannot delay it.

use crate::config::StorageConfig;
use crate::routing::{RoutingSnapshot, data_address_name, local_state_to_pb};
use crate::shard::{ShardCommand, ShardEvent, TargetReport};
use futures::SinkExt;
use futures::channel::mpsc;
use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_types::{ErrorCode, TargetId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long one routing long-poll waits.
const ROUTING_WAIT_MS: u64 = 2_000;
/// Pause after a failed mgmtd call before the next attempt.
const RETRY_PAUSE_MS: u64 = 200;

#[derive(Debug)]
pub struct ControlSetup {
    pub config: StorageConfig,
    pub shard_addresses: Vec<SocketAddr>,
    pub commands: Vec<mpsc::Sender<ShardCommand>>,
    pub events: mpsc::Receiver<ShardEvent>,
    /// The routing version each shard has applied.
    pub applied_routing: Vec<Arc<AtomicU64>>,
    /// Receives `Ok(())` once the node is registered.
    pub registered: std::sync::mpsc::Sender<Result<(), String>>,
    pub stop: watch::Receiver<bool>,
}

/// Runs until `stop` turns true.
pub async fn run(setup: ControlSetup) {
    let ControlSetup {
        config,
        shard_addresses,
        commands,
        mut events,
        applied_routing,
        registered,
        mut stop,
    } = setup;
    let mut client_config =
        MgmtdClientConfig::new(config.mgmtd_addresses.clone(), Some(config.token.clone()));
    client_config.connect_timeout_ms = config.connect_timeout_ms;
    client_config.attempts_max = 3;
    let client = match MgmtdClient::new(client_config) {
        Ok(client) => client,
        Err(error) => {
            let _ = registered.send(Err(error.to_string()));
            return;
        }
    };
    let host = config.advertised_host().to_string();
    let addresses: Vec<pb::ServiceAddress> = shard_addresses
        .iter()
        .enumerate()
        .map(|(i, addr)| pb::ServiceAddress {
            name: data_address_name(i),
            address: SocketAddr::new(host.parse().unwrap_or(addr.ip()), addr.port()).to_string(),
        })
        .collect();
    let register = pb::RegisterNodeRequest {
        node_id: config.node_id,
        node_type: pb::NodeType::Storage as i32,
        hostname: hostname(),
        addresses,
        release_version: env!("CARGO_PKG_VERSION").to_string(),
        config_version: 0,
    };
    // 1. Register, until it works or we are told to stop.
    let registration = loop {
        tokio::select! {
            result = client.register_node(register.clone()) => match result {
                Ok(response) => break response,
                Err(status) => {
                    let code = r3fs_rpc::error_from_status(&status);
                    warn!(%code, message = status.message(), "registering with mgmtd failed; retrying");
                    if matches!(code, ErrorCode::Unauthenticated | ErrorCode::PermissionDenied | ErrorCode::InvalidArgument) {
                        let _ = registered.send(Err(format!("mgmtd refused the registration: {code}: {}", status.message())));
                        return;
                    }
                }
            },
            _ = stop.changed() => return,
        }
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
    };
    info!(node = config.node_id, "registered with mgmtd");
    let _ = registered.send(Ok(()));

    // 2. Routing, in its own task.
    let routing_client = client.clone();
    let mut routing_commands = commands.clone();
    let mut routing_stop = stop.clone();
    let routing_task = tokio::spawn(async move {
        let mut known = 0u64;
        loop {
            let result = tokio::select! {
                result = routing_client.get_routing_info(known, Duration::from_millis(ROUTING_WAIT_MS)) => result,
                _ = routing_stop.changed() => return,
            };
            match result {
                Ok(Some(info)) => {
                    known = info.routing_version;
                    let (snapshot, problems) = RoutingSnapshot::from_pb(&info);
                    for problem in problems {
                        warn!(%problem, "routing info entry skipped");
                    }
                    debug!(version = known, "routing update");
                    let snapshot = Arc::new(snapshot);
                    for shard in routing_commands.iter_mut() {
                        // Bounded channel: waits while a shard is behind, never drops a version.
                        let _ = shard.send(ShardCommand::Routing(snapshot.clone())).await;
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    debug!(message = status.message(), "routing poll failed; retrying");
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                }
            }
        }
    });

    // 3. Heartbeats, and 4. the fence, in its own task.
    let interval_ms = registration.heartbeat_interval_ms.max(10);
    let timeout_ms = registration.heartbeat_timeout_ms.max(2 * interval_ms);
    let fence = Arc::new(Mutex::new(FenceClock {
        last_ok: Instant::now(),
        routing_version: registration.routing_version,
        interval_ms,
        timeout_ms,
    }));
    let fence_task =
        tokio::spawn(fence_loop(fence.clone(), applied_routing, commands.clone(), stop.clone()));
    let mut version = registration.last_heartbeat_version + 1;
    let mut reports: BTreeMap<TargetId, TargetReport> = BTreeMap::new();
    loop {
        while let Ok(ShardEvent::Reports { reports: shard_reports, .. }) = events.try_recv() {
            for report in shard_reports {
                reports.insert(report.target, report);
            }
        }
        let request = pb::HeartbeatRequest {
            node_id: config.node_id,
            heartbeat_version: version,
            config_version: 0,
            release_version: env!("CARGO_PKG_VERSION").to_string(),
            targets: reports
                .values()
                .map(|r| pb::TargetReport {
                    target_id: r.target.0,
                    local_state: local_state_to_pb(r.local_state) as i32,
                    chain_version: r.chain_version,
                    used_bytes: r.used_bytes,
                    total_bytes: r.total_bytes,
                    resync: r.resync.map(|p| pb::ResyncProgress {
                        target_id: p.target.0,
                        chunks_total: p.chunks_total,
                        chunks_done: p.chunks_done,
                        bytes_done: p.bytes_done,
                        started_unix_ms: p.started_unix_ms,
                    }),
                })
                .collect(),
        };
        version += 1;
        let sent_at = Instant::now();
        match client.heartbeat(request).await {
            Ok(response) => {
                let mut clock = fence.lock().unwrap_or_else(|p| p.into_inner());
                // Contact dates from when the heartbeat was sent: mgmtd's timer may have run
                // for that long before the reply arrived.
                clock.last_ok = sent_at;
                clock.routing_version = response.routing_version;
                clock.interval_ms = response.heartbeat_interval_ms.max(10);
                clock.timeout_ms = response.heartbeat_timeout_ms.max(2 * clock.interval_ms);
            }
            Err(status) => {
                let code = r3fs_rpc::error_from_status(&status);
                warn!(%code, message = status.message(), "heartbeat failed");
                if code == ErrorCode::StaleHeartbeat || code == ErrorCode::NodeNotFound {
                    // mgmtd lost track of us (or saw a newer heartbeat): register again.
                    if let Ok(response) = client.register_node(register.clone()).await {
                        version = response.last_heartbeat_version + 1;
                    }
                }
            }
        }
        let interval_ms = fence.lock().unwrap_or_else(|p| p.into_inner()).interval_ms;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = stop.changed() => break,
        }
    }
    routing_task.abort();
    fence_task.abort();
}

/// What the fence decides from: the last successful heartbeat and what its reply said.
#[derive(Debug)]
struct FenceClock {
    /// When the last heartbeat that succeeded was sent.
    last_ok: Instant,
    /// The routing version that heartbeat's reply named.
    routing_version: u64,
    interval_ms: u64,
    timeout_ms: u64,
}

/// The fence rule: fenced once `timeout / 2` passed since the last successful heartbeat was
/// sent; unfenced only when a heartbeat succeeded since and every shard applied the routing
/// version its reply named.
fn fenced_now(clock: &FenceClock, applied_min: u64, fenced: bool) -> bool {
    let silent = clock.last_ok.elapsed() >= Duration::from_millis(clock.timeout_ms / 2);
    if silent {
        return true;
    }
    fenced && applied_min < clock.routing_version
}

async fn fence_loop(
    clock: Arc<Mutex<FenceClock>>,
    applied_routing: Vec<Arc<AtomicU64>>,
    mut commands: Vec<mpsc::Sender<ShardCommand>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut fenced = false;
    loop {
        let (now_fenced, interval_ms) = {
            let clock = clock.lock().unwrap_or_else(|p| p.into_inner());
            let applied_min =
                applied_routing.iter().map(|a| a.load(Ordering::SeqCst)).min().unwrap_or(0);
            (fenced_now(&clock, applied_min, fenced), clock.interval_ms)
        };
        if now_fenced != fenced {
            fenced = now_fenced;
            if fenced {
                warn!(
                    "no successful heartbeat for half the heartbeat timeout: fencing every shard"
                );
            } else {
                info!("mgmtd reachable and its routing applied: lifting the fence");
            }
            for shard in commands.iter_mut() {
                let _ = shard.send(ShardCommand::Fence(fenced)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis((interval_ms / 4).max(5))) => {}
            _ = stop.changed() => return,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(ago_ms: u64, routing_version: u64) -> FenceClock {
        FenceClock {
            last_ok: Instant::now() - Duration::from_millis(ago_ms),
            routing_version,
            interval_ms: 100,
            timeout_ms: 1_000,
        }
    }

    #[test]
    fn fences_after_half_the_heartbeat_timeout() {
        assert!(!fenced_now(&clock(0, 5), 5, false));
        assert!(!fenced_now(&clock(400, 5), 5, false));
        assert!(fenced_now(&clock(600, 5), 5, false));
        // Silent is fenced whatever the routing.
        assert!(fenced_now(&clock(600, 5), 9, true));
    }

    #[test]
    fn lifts_the_fence_only_once_the_named_routing_is_applied() {
        // A heartbeat succeeded again, naming routing 7: the shards still run 6.
        assert!(fenced_now(&clock(0, 7), 6, true));
        assert!(!fenced_now(&clock(0, 7), 7, true));
        assert!(!fenced_now(&clock(0, 7), 8, true));
        // While not fenced, a routing change in flight does not fence by itself.
        assert!(!fenced_now(&clock(0, 7), 6, false));
    }
}
