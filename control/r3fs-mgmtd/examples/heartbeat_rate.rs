//! Measures how many heartbeats per second one primary commits (each is one fenced KV transaction),
//! on the memory and the embedded (fjall, synced) store, with `NODES` storage nodes of
//! `TARGETS_PER_NODE` targets each reporting unchanged states (the steady state).
//!
//! `cargo run --release -p r3fs-mgmtd --example heartbeat_rate`

use std::sync::Arc;
use std::time::{Duration, Instant};

use r3fs_kv::{FjallConfig, FjallKv, Kv, MemoryKv, RetryPolicy};
use r3fs_mgmtd::clock::SystemClock;
use r3fs_mgmtd::store::{self, HeartbeatSpec, RegisterSpec, TargetReport, TargetSpec};
use r3fs_mgmtd::{Mgmtd, MgmtdOptions};
use r3fs_types::{ChainId, LocalTargetState, NodeId, NodeType, TargetId};

const NODES: u32 = 20;
const TARGETS_PER_NODE: u64 = 16;
const DURATION: Duration = Duration::from_secs(3);
const CONCURRENCY: u32 = 8;

async fn measure(name: &str, kv: Arc<dyn Kv>) -> anyhow::Result<()> {
    let options = MgmtdOptions {
        node_id: NodeId(1),
        address: "127.0.0.1:1".into(),
        hostname: "bench".into(),
        release_version: "bench".into(),
        lease_timeout_ms: 60_000,
        heartbeat_interval_ms: 1_000,
        heartbeat_timeout_ms: 60_000,
        routing_wait_max_ms: 1_000,
        retry: RetryPolicy::default(),
    };
    let mgmtd = Mgmtd::new(kv, Arc::new(SystemClock), options);
    mgmtd.lease_tick().await?;
    let targets: Vec<TargetSpec> = (0..NODES)
        .flat_map(|n| {
            (0..TARGETS_PER_NODE).map(move |t| TargetSpec {
                target_id: TargetId(u64::from(n) * 1_000 + t + 1),
                node_id: NodeId(n + 10),
                disk_index: 0,
                chain_id: ChainId(n + 1),
            })
        })
        .collect();
    mgmtd
        .write_routing(move |txn, ctx| {
            let targets = targets.clone();
            Box::pin(async move { store::create_targets(txn, ctx, &targets).await })
        })
        .await?;
    for n in 0..NODES {
        let spec = RegisterSpec {
            node_id: NodeId(n + 10),
            node_type: NodeType::Storage,
            hostname: format!("storage{n}"),
            addresses: vec![],
            release_version: "bench".into(),
            config_version: 0,
        };
        mgmtd.register_node(spec).await?;
    }
    let deadline = Instant::now() + DURATION;
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let mgmtd = mgmtd.clone();
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            let mut version = 0u64;
            while Instant::now() < deadline {
                version += 1;
                // Each worker owns the nodes n with n % CONCURRENCY == worker.
                for n in (worker..NODES).step_by(CONCURRENCY as usize) {
                    let spec = HeartbeatSpec {
                        node_id: NodeId(n + 10),
                        heartbeat_version: version,
                        config_version: 0,
                        release_version: "bench".into(),
                        targets: (0..TARGETS_PER_NODE)
                            .map(|t| TargetReport {
                                target_id: TargetId(u64::from(n) * 1_000 + t + 1),
                                local_state: LocalTargetState::UpToDate,
                                used_bytes: 1 << 30,
                                total_bytes: 4 << 30,
                                resync: None,
                                chain_version: 0,
                            })
                            .collect(),
                    };
                    mgmtd.heartbeat(spec).await?;
                    count += 1;
                }
            }
            anyhow::Ok(count)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    println!(
        "{name}: {total} heartbeats in {:?} = {:.0}/s ({NODES} nodes x {TARGETS_PER_NODE} targets, {CONCURRENCY} concurrent)",
        DURATION,
        total as f64 / DURATION.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    measure("memory", Arc::new(MemoryKv::default())).await?;
    let dir = tempfile::tempdir()?;
    let fjall = tokio::task::block_in_place(|| FjallKv::open(&FjallConfig::at(dir.path())))?;
    measure("fjall (sync_data)", Arc::new(fjall)).await?;
    Ok(())
}
