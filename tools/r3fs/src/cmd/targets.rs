//! `list-targets`, `create-target`, `create-targets`, `offline-target`.

use super::ctx::{Ctx, read_input_file};
use super::view::{ChainView, ResyncView, TargetView, local_state_name, public_state_name};
use anyhow::Context;
use clap::Args;
use r3fs::files::{self, TargetSpec};
use r3fs::output::Table;
use r3fs_rpc::admin;
use r3fs_types::{ChainId, NodeId, TargetId};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// mgmtd takes at most this many targets per CreateTargets call (admin.proto).
pub const CREATE_TARGETS_BATCH_MAX: usize = 4_096;
/// Largest targets file read.
pub const TARGETS_FILE_BYTES_MAX: u64 = 128 << 20;

#[derive(Debug, Args)]
pub struct CreateTargetArgs {
    #[arg(long)]
    pub node_id: u32,
    /// Which disk of the node (0-based).
    #[arg(long)]
    pub disk_index: u32,
    #[arg(long)]
    pub target_id: u64,
    /// The chain the target will join.
    #[arg(long)]
    pub chain_id: u32,
}

#[derive(Debug, Args)]
pub struct CreateTargetsArgs {
    /// Targets file: header `TargetId,NodeId,DiskIndex,ChainId` (gen-chain-table's
    /// generated_targets.csv).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct OfflineTargetArgs {
    #[arg(long)]
    pub target_id: u64,
}

/// HEAD / MIDDLE / TAIL by position in the chain; SOLE for a one-target chain.
fn role(position: usize, len: usize) -> &'static str {
    match (position, len) {
        (_, 1) => "SOLE",
        (0, _) => "HEAD",
        (p, l) if p + 1 == l => "TAIL",
        _ => "MIDDLE",
    }
}

pub async fn list_targets(ctx: &Ctx) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let targets = mgmtd
        .client
        .list_targets(admin::ListTargetsRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("list targets")?;
    let chains = mgmtd
        .client
        .list_chains(admin::ListChainsRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("list chains to find each target's role")?;
    let mut roles: HashMap<u64, &'static str> = HashMap::new();
    for chain in &chains.chains {
        for (position, target) in chain.targets.iter().enumerate() {
            roles.insert(target.target_id, role(position, chain.targets.len()));
        }
    }
    let views: Vec<TargetView> = targets
        .targets
        .iter()
        .map(|t| TargetView {
            target_id: t.target_id,
            node_id: t.node_id,
            disk_index: t.disk_index,
            chain_id: t.chain_id,
            role: roles.get(&t.target_id).copied().unwrap_or("N/A").to_string(),
            public_state: public_state_name(t.public_state),
            local_state: local_state_name(t.local_state),
            used_bytes: t.used_bytes,
            resync: t.resync.as_ref().map(ResyncView::from),
        })
        .collect();
    if ctx.json() {
        return ctx.print_json(&views);
    }
    let mut table = Table::new(&[
        "TargetId",
        "ChainId",
        "Role",
        "PublicState",
        "LocalState",
        "NodeId",
        "DiskIndex",
        "UsedSize",
        "Resync",
    ]);
    let now_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for t in &views {
        table.row(vec![
            t.target_id.to_string(),
            t.chain_id.to_string(),
            t.role.clone(),
            t.public_state.clone(),
            t.local_state.clone(),
            t.node_id.to_string(),
            t.disk_index.to_string(),
            format_bytes(t.used_bytes),
            t.resync.map_or_else(String::new, |r| format_resync(&r, now_unix_ms)),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// A resync's progress for the list-targets column: `42/100 chunks, 1.2 GiB, 30 s`
/// (`comparing` before the predecessor knows how many chunks differ).
pub fn format_resync(r: &ResyncView, now_unix_ms: u64) -> String {
    let chunks = if r.chunks_total == 0 && r.chunks_done == 0 {
        "comparing".to_string()
    } else {
        format!("{}/{} chunks", r.chunks_done, r.chunks_total)
    };
    let elapsed_s = now_unix_ms.saturating_sub(r.started_unix_ms) / 1_000;
    format!("{chunks}, {}, {elapsed_s} s", format_bytes(r.bytes_done))
}

/// Binary units with one decimal (`1.5 GiB`), bytes below 1 KiB.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[derive(Serialize)]
struct CreateTargetsOutput {
    targets: usize,
    created: u32,
    routing_version: u64,
}

async fn send_targets(ctx: &Ctx, targets: &[TargetSpec], source: &str) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let mut output = CreateTargetsOutput { targets: targets.len(), created: 0, routing_version: 0 };
    // Each batch is one mgmtd transaction; re-running after a partial failure is safe because
    // creating an identical existing target is a no-op.
    for (i, batch) in targets.chunks(CREATE_TARGETS_BATCH_MAX).enumerate() {
        let request = admin::CreateTargetsRequest {
            targets: batch
                .iter()
                .map(|t| admin::TargetSpec {
                    target_id: t.target_id.0,
                    node_id: t.node_id.0,
                    disk_index: t.disk_index,
                    chain_id: t.chain_id.0,
                })
                .collect(),
        };
        let response = mgmtd
            .client
            .create_targets(request)
            .await
            .map_err(|status| mgmtd.error(status))
            .with_context(|| {
                let first = i * CREATE_TARGETS_BATCH_MAX;
                format!(
                    "create targets {}..{} of {} from {source}",
                    first + 1,
                    first + batch.len(),
                    targets.len()
                )
            })?;
        output.created += response.created;
        output.routing_version = response.routing_version;
    }
    if ctx.json() {
        return ctx.print_json(&output);
    }
    println!(
        "Created {} targets ({} already existed); routing version {}.",
        output.created,
        output.targets - output.created as usize,
        output.routing_version
    );
    Ok(())
}

pub async fn create_target(ctx: &Ctx, args: CreateTargetArgs) -> anyhow::Result<()> {
    let target = TargetSpec {
        target_id: TargetId(args.target_id),
        node_id: NodeId(args.node_id),
        disk_index: args.disk_index,
        chain_id: ChainId(args.chain_id),
    };
    send_targets(ctx, &[target], "the command line").await
}

pub async fn create_targets(ctx: &Ctx, args: CreateTargetsArgs) -> anyhow::Result<()> {
    let text = read_input_file(&args.file, "targets file", TARGETS_FILE_BYTES_MAX)?;
    let targets = files::parse_targets(&text)
        .with_context(|| format!("parse targets file {}", args.file.display()))?;
    send_targets(ctx, &targets, &args.file.display().to_string()).await
}

pub async fn offline_target(ctx: &Ctx, args: OfflineTargetArgs) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .offline_target(admin::OfflineTargetRequest { target_id: args.target_id })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| format!("mark target {} offline", args.target_id))?;
    let chain = response.chain.as_ref().map(ChainView::from);
    if ctx.json() {
        return ctx.print_json(&chain);
    }
    println!("Target {} is offline; routing version {}.", args.target_id, response.routing_version);
    if let Some(chain) = chain {
        let targets: Vec<String> =
            chain.targets.iter().map(|t| format!("{}({})", t.target_id, t.public_state)).collect();
        println!("Chain {} version {}: {}", chain.chain_id, chain.chain_version, targets.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_chain_positions() {
        assert_eq!(role(0, 1), "SOLE");
        assert_eq!((role(0, 3), role(1, 3), role(2, 3)), ("HEAD", "MIDDLE", "TAIL"));
        assert_eq!((role(0, 2), role(1, 2)), ("HEAD", "TAIL"));
    }

    #[test]
    fn resync_progress_reads_as_chunks_bytes_and_seconds() {
        let r = ResyncView {
            chunks_total: 100,
            chunks_done: 42,
            bytes_done: 1288 << 20,
            started_unix_ms: 1_000,
        };
        assert_eq!(format_resync(&r, 31_500), "42/100 chunks, 1.3 GiB, 30 s");
        let start =
            ResyncView { chunks_total: 0, chunks_done: 0, bytes_done: 0, started_unix_ms: 5 };
        assert_eq!(format_resync(&start, 1), "comparing, 0 B, 0 s");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
    }
}
