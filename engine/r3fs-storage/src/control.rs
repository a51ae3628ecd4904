//! The control thread: a small tokio runtime that talks gRPC to mgmtd for the whole daemon.
//!
//! 1. Registers the node with its data-plane addresses (`data/<shard>`), retrying until mgmtd
//!    answers or the daemon stops.
//! 2. Long-polls the routing info and hands every new version to every shard.
//! 3. Sends a heartbeat every `heartbeat_interval_ms` (as mgmtd dictates) with the latest local
//!    state and used bytes of every target, as the shards last reported them.
//! 4. Tells the shards to refuse client writes (`Fenced`) after half the heartbeat timeout
//!    without a successful heartbeat: by then mgmtd may be about to declare the node dead and
//!    reorganize its chains, and a cut-off head must not keep ordering writes.

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
use std::sync::Arc;
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
    /// Receives `Ok(())` once the node is registered.
    pub registered: std::sync::mpsc::Sender<Result<(), String>>,
    pub stop: watch::Receiver<bool>,
}

/// Runs until `stop` turns true.
pub async fn run(setup: ControlSetup) {
    let ControlSetup { config, shard_addresses, commands, mut events, registered, mut stop } =
        setup;
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

    // 3. Heartbeats.
    let mut interval_ms = registration.heartbeat_interval_ms.max(10);
    let mut timeout_ms = registration.heartbeat_timeout_ms.max(2 * interval_ms);
    let mut version = registration.last_heartbeat_version + 1;
    let mut reports: BTreeMap<TargetId, TargetReport> = BTreeMap::new();
    let mut last_ok = Instant::now();
    let mut writable = true;
    let mut commands = commands;
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
                    used_bytes: r.used_bytes,
                    total_bytes: r.total_bytes,
                })
                .collect(),
        };
        version += 1;
        match client.heartbeat(request).await {
            Ok(response) => {
                last_ok = Instant::now();
                interval_ms = response.heartbeat_interval_ms.max(10);
                timeout_ms = response.heartbeat_timeout_ms.max(2 * interval_ms);
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
        let now_writable = last_ok.elapsed() < Duration::from_millis(timeout_ms / 2);
        if now_writable != writable {
            writable = now_writable;
            for shard in commands.iter_mut() {
                let _ = shard.send(ShardCommand::Writable(writable)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = stop.changed() => break,
        }
    }
    routing_task.abort();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
