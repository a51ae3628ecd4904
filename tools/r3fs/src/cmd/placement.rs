//! `gen-chain-table`: deterministic placement (r3fs::placement) written as the files the upload
//! commands read, with the recovery-traffic balance report. Needs no cluster.

use super::ctx::Ctx;
use anyhow::{Context, bail};
use clap::Args;
use r3fs::files;
use r3fs::placement::{self, BalanceReport, PlacementSpec};
use r3fs_types::NodeId;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The environment names follow 3FS's setup step, so an existing deployment script's variables
/// work unchanged.
#[derive(Debug, Args)]
pub struct GenChainTableArgs {
    /// Number of storage nodes; their ids are FIRST_NODE_ID, FIRST_NODE_ID + 1, ...
    #[arg(long, env = "STORAGE_NODE_NUM", required_unless_present = "node_ids")]
    pub num_nodes: Option<u32>,
    /// Id of the first storage node (with --num-nodes).
    #[arg(long, default_value_t = 10_001, conflicts_with = "node_ids")]
    pub first_node_id: u32,
    /// Explicit storage node ids, comma-separated (instead of --num-nodes).
    #[arg(long, value_delimiter = ',', conflicts_with = "num_nodes")]
    pub node_ids: Vec<u32>,
    /// Disks per storage node.
    #[arg(long, env = "NUM_DISKS_PER_NODE")]
    pub disks_per_node: u32,
    /// Targets per disk; by default the smallest valid value >= --min-targets-per-disk.
    #[arg(long, env = "NUM_TARGETS_PER_DISK")]
    pub targets_per_disk: Option<u32>,
    /// Lower bound for the chosen targets per disk.
    #[arg(long, env = "MIN_TARGETS_PER_DISK", default_value_t = 1)]
    pub min_targets_per_disk: u32,
    /// Replicas per chain.
    #[arg(long, env = "REPLICATION_FACTOR", default_value_t = 3)]
    pub replication: u32,
    /// Directory for the generated files (created if missing).
    #[arg(long, short = 'o', default_value = "output")]
    pub output: PathBuf,
    /// Replace generated files that already exist in the output directory.
    #[arg(long)]
    pub force: bool,
    /// Print the report only; write no files.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Serialize)]
struct GenOutput<'a> {
    report: &'a BalanceReport,
    files: Vec<PathBuf>,
}

fn spec(args: &GenChainTableArgs) -> anyhow::Result<PlacementSpec> {
    let nodes: Vec<NodeId> = if args.node_ids.is_empty() {
        let count = args.num_nodes.context("give --num-nodes or --node-ids")?;
        let last = args.first_node_id.checked_add(count.saturating_sub(1));
        if last.is_none() {
            bail!(
                "--first-node-id {} + --num-nodes {count} overflows a node id",
                args.first_node_id
            );
        }
        (0..count).map(|i| NodeId(args.first_node_id + i)).collect()
    } else {
        args.node_ids.iter().copied().map(NodeId).collect()
    };
    let targets_per_disk = match args.targets_per_disk {
        Some(r) if r < args.min_targets_per_disk => bail!(
            "--targets-per-disk {r} is below --min-targets-per-disk {}",
            args.min_targets_per_disk
        ),
        Some(r) => r,
        None => placement::targets_per_disk_for(
            nodes.len(),
            args.disks_per_node,
            args.replication,
            args.min_targets_per_disk,
        )?,
    };
    Ok(PlacementSpec {
        nodes,
        disks_per_node: args.disks_per_node,
        targets_per_disk,
        replication: args.replication,
    })
}

fn write_file(path: &Path, content: &str, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        bail!(
            "{} already exists; pass --force to replace it or choose another --output",
            path.display()
        );
    }
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))
}

pub fn gen_chain_table(ctx: &Ctx, args: GenChainTableArgs) -> anyhow::Result<()> {
    let spec = spec(&args)?;
    let placement = placement::generate(&spec).context("generate the placement")?;
    let report = placement.balance();
    let mut written = Vec::new();
    if !args.dry_run {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("create output directory {}", args.output.display()))?;
        for (name, content) in [
            (files::CHAINS_FILE, files::render_chains(&placement)),
            (files::CHAIN_TABLE_FILE, files::render_chain_table(&placement)),
            (files::TARGETS_FILE, files::render_targets(&placement)),
            (files::CREATE_TARGET_COMMANDS_FILE, files::render_create_target_commands(&placement)),
        ] {
            let path = args.output.join(name);
            write_file(&path, &content, args.force)?;
            written.push(path);
        }
    }
    if ctx.json() {
        return ctx.print_json(&GenOutput { report: &report, files: written });
    }
    println!("{report}");
    if !written.is_empty() {
        println!();
        for path in &written {
            println!("wrote {}", path.display());
        }
        let dir = args.output.display();
        println!();
        println!("next steps (with --mgmtd and an admin token):");
        println!("  r3fs create-targets {dir}/{}", files::TARGETS_FILE);
        println!("  r3fs upload-chains {dir}/{}", files::CHAINS_FILE);
        println!("  r3fs upload-chain-table --desc NAME 1 {dir}/{}", files::CHAIN_TABLE_FILE);
    }
    Ok(())
}
