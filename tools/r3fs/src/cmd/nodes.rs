//! `list-nodes`, `disable-node`, `enable-node`.

use super::ctx::Ctx;
use super::view::NodeView;
use anyhow::Context;
use clap::Args;
use r3fs::output::{Table, format_utc_ms};
use r3fs_rpc::admin;

#[derive(Debug, Args)]
pub struct NodeIdArgs {
    /// The node's id.
    pub node_id: u32,
}

/// The table 3FS's `list-nodes` prints. mgmtd does not report process ids, so Pid is `N/A`; the
/// column stays so scripts written for 3FS keep their column positions.
pub fn nodes_table(nodes: &[NodeView]) -> Table {
    let mut table = Table::new(&[
        "Id",
        "Type",
        "Status",
        "Hostname",
        "Pid",
        "LastHeartbeatTime",
        "ConfigVersion",
        "ReleaseVersion",
    ]);
    for node in nodes {
        table.row(vec![
            node.node_id.to_string(),
            node.node_type.clone(),
            node.status.clone(),
            if node.hostname.is_empty() { "N/A".into() } else { node.hostname.clone() },
            "N/A".into(),
            format_utc_ms(node.last_heartbeat_unix_ms),
            node.config_version.to_string(),
            if node.release_version.is_empty() {
                "N/A".into()
            } else {
                node.release_version.clone()
            },
        ]);
    }
    table
}

pub async fn list_nodes(ctx: &Ctx) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .list_nodes(admin::ListNodesRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("list nodes")?;
    let nodes: Vec<NodeView> = response.nodes.iter().map(NodeView::from).collect();
    if ctx.json() {
        return ctx.print_json(&nodes);
    }
    print!("{}", nodes_table(&nodes).render());
    Ok(())
}

pub async fn set_disabled(ctx: &Ctx, args: NodeIdArgs, disabled: bool) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let verb = if disabled { "disable" } else { "enable" };
    let response = mgmtd
        .client
        .set_node_disabled(admin::SetNodeDisabledRequest { node_id: args.node_id, disabled })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| format!("{verb} node {}", args.node_id))?;
    let node = response.node.as_ref().map(NodeView::from);
    if ctx.json() {
        return ctx.print_json(&node);
    }
    match node {
        Some(node) => print!("{}", nodes_table(&[node]).render()),
        None => println!("node {} {verb}d", args.node_id),
    }
    Ok(())
}
