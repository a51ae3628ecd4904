//! The operator's chain operations (docs/design/operations.md): `remove-target`,
//! `add-target-to-chain`, `rotate-last-serving`, `shutdown-all-chains`, `start-all-chains`. Each
//! is one mgmtd admin RPC (one fenced KV transaction); refusals come back with mgmtd's message,
//! which says what to do instead.

use super::ctx::Ctx;
use super::view::ChainView;
use anyhow::Context;
use clap::Args;
use r3fs_rpc::{admin, mgmtd as pb};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct RemoveTargetArgs {
    #[arg(long)]
    pub target_id: u64,
}

#[derive(Debug, Args)]
pub struct AddTargetToChainArgs {
    #[arg(long)]
    pub chain_id: u32,
    /// A new target id (or one removed from this chain earlier).
    #[arg(long)]
    pub target_id: u64,
    /// The storage node that holds the target (its daemon creates it on disk).
    #[arg(long)]
    pub node_id: u32,
    /// Which disk of the node (0-based).
    #[arg(long)]
    pub disk_index: u32,
}

#[derive(Debug, Args)]
pub struct RotateLastServingArgs {
    #[arg(long)]
    pub chain_id: u32,
    /// The member to make last-serving (it serves at once if alive).
    #[arg(long)]
    pub target_id: u64,
}

#[derive(Debug, Args)]
pub struct StartAllChainsArgs {
    /// Start although some last-serving targets have not reported since the shutdown (their
    /// chains serve from the targets that are back; the missing ones resync when they return).
    #[arg(long)]
    pub force: bool,
}

#[derive(Serialize)]
struct ChainChange {
    chain: Option<ChainView>,
    routing_version: u64,
}

fn print_chain(
    ctx: &Ctx,
    what: &str,
    chain: Option<&pb::Chain>,
    routing_version: u64,
) -> anyhow::Result<()> {
    let chain = chain.map(ChainView::from);
    if ctx.json() {
        return ctx.print_json(&ChainChange { chain, routing_version });
    }
    println!("{what}; routing version {routing_version}.");
    if let Some(chain) = chain {
        let targets: Vec<String> =
            chain.targets.iter().map(|t| format!("{}({})", t.target_id, t.public_state)).collect();
        println!("Chain {} version {}: {}", chain.chain_id, chain.chain_version, targets.join(" "));
    }
    Ok(())
}

pub async fn remove_target(ctx: &Ctx, args: RemoveTargetArgs) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .remove_target(admin::RemoveTargetRequest { target_id: args.target_id })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| format!("remove target {} from its chain", args.target_id))?;
    print_chain(
        ctx,
        &format!("Target {} removed from its chain (its data stays on disk)", args.target_id),
        response.chain.as_ref(),
        response.routing_version,
    )
}

pub async fn add_target_to_chain(ctx: &Ctx, args: AddTargetToChainArgs) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .add_target_to_chain(admin::AddTargetToChainRequest {
            chain_id: args.chain_id,
            target_id: args.target_id,
            node_id: args.node_id,
            disk_index: args.disk_index,
        })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| format!("add target {} to chain {}", args.target_id, args.chain_id))?;
    print_chain(
        ctx,
        &format!(
            "Target {} added to chain {}: it resyncs, then serves (watch list-targets)",
            args.target_id, args.chain_id
        ),
        response.chain.as_ref(),
        response.routing_version,
    )
}

pub async fn rotate_last_serving(ctx: &Ctx, args: RotateLastServingArgs) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .rotate_last_serving(admin::RotateLastServingRequest {
            chain_id: args.chain_id,
            target_id: args.target_id,
        })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| {
            format!("make target {} last-serving in chain {}", args.target_id, args.chain_id)
        })?;
    print_chain(
        ctx,
        &format!("Target {} is chain {}'s last-serving target", args.target_id, args.chain_id),
        response.chain.as_ref(),
        response.routing_version,
    )
}

#[derive(Serialize)]
struct ChainsOutput {
    chains_changed: u32,
    routing_version: u64,
}

pub async fn shutdown_all_chains(ctx: &Ctx) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .shutdown_all_chains(admin::ShutdownAllChainsRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("shut down every chain")?;
    let output = ChainsOutput {
        chains_changed: response.chains_changed,
        routing_version: response.routing_version,
    };
    if ctx.json() {
        return ctx.print_json(&output);
    }
    println!(
        "Every chain is shut down ({} changed); routing version {}. No chain takes writes; stop the \
         storage daemons now, and run start-all-chains once they are back.",
        output.chains_changed, output.routing_version
    );
    Ok(())
}

pub async fn start_all_chains(ctx: &Ctx, args: StartAllChainsArgs) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .start_all_chains(admin::StartAllChainsRequest { force: args.force })
        .await
        .map_err(|status| mgmtd.error(status))
        .context("start every chain")?;
    let output = ChainsOutput {
        chains_changed: response.chains_changed,
        routing_version: response.routing_version,
    };
    if ctx.json() {
        return ctx.print_json(&output);
    }
    println!(
        "Chains started ({} changed); routing version {}.",
        output.chains_changed, output.routing_version
    );
    Ok(())
}
