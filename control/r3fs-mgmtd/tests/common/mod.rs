//! Test support for the suites that drive one mgmtd in process (lease.rs, operations.rs): the
//! chain they start from. Chain 1 = [T1, T2], both on storage node 10, reported up to date before
//! the chain is uploaded, so it starts with every target serving (a chain uploaded first would
//! start degraded: see docs/design/chain-state.md).

use r3fs_mgmtd::Mgmtd;
use r3fs_mgmtd::error::MgmtdError;
use r3fs_mgmtd::store::{self, HeartbeatSpec, RegisterSpec, TargetSpec};
use r3fs_types::{ChainId, NodeId, NodeType, TargetId};

/// The storage node that holds the chain's targets.
pub const CHAIN_NODE: u32 = 10;

/// Registers `node` as a storage node with one data address (10.0.1.<node>:9000).
async fn register_storage_node(mgmtd: &Mgmtd, node: u32) {
    let spec = RegisterSpec {
        node_id: NodeId(node),
        node_type: NodeType::Storage,
        hostname: format!("storage{node}"),
        addresses: vec![("data/0".into(), format!("10.0.1.{node}:9000"))],
        release_version: "test".into(),
        config_version: 0,
    };
    mgmtd.register_node(spec).await.expect("register storage node");
}

/// Uploads chain 1 = [T1, T2]; returns how many chains it created.
pub async fn upload_chain(mgmtd: &Mgmtd) -> Result<u32, MgmtdError> {
    let (created, _) = mgmtd
        .write_routing(|txn, ctx| {
            Box::pin(async move {
                store::upload_chains(txn, ctx, &[(ChainId(1), vec![TargetId(1), TargetId(2)])])
                    .await
            })
        })
        .await?;
    Ok(created)
}

/// Sets up chain 1 on `mgmtd` (which must hold the lease): registers `storage_nodes` (which
/// include [`CHAIN_NODE`]), creates T1 and T2 on [`CHAIN_NODE`], sends `heartbeat` (the node's
/// report of both targets) and uploads the chain.
pub async fn setup_chain(mgmtd: &Mgmtd, storage_nodes: &[u32], heartbeat: HeartbeatSpec) {
    assert!(storage_nodes.contains(&CHAIN_NODE), "the chain's node must be registered");
    for &node in storage_nodes {
        register_storage_node(mgmtd, node).await;
    }
    let targets: Vec<TargetSpec> = (1..=2)
        .map(|t| TargetSpec {
            target_id: TargetId(t),
            node_id: NodeId(CHAIN_NODE),
            disk_index: 0,
            chain_id: ChainId(1),
        })
        .collect();
    mgmtd
        .write_routing(move |txn, ctx| {
            let targets = targets.clone();
            Box::pin(async move { store::create_targets(txn, ctx, &targets).await })
        })
        .await
        .expect("create targets");
    mgmtd.heartbeat(heartbeat).await.expect("heartbeat before the upload");
    upload_chain(mgmtd).await.expect("upload chain");
}
