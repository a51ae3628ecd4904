//! `list-chains`, `list-chain-tables`, `upload-chains`, `upload-chain-table`.

use super::ctx::{Ctx, read_input_file};
use super::view::{ChainTableView, ChainView};
use anyhow::{Context, bail};
use clap::Args;
use r3fs::files;
use r3fs::output::Table;
use r3fs_rpc::admin;
use serde::Serialize;
use std::path::PathBuf;

/// mgmtd takes at most this many chains per UploadChains call (admin.proto).
pub const UPLOAD_CHAINS_BATCH_MAX: usize = 4_096;
/// mgmtd accepts chains of 1 to this many targets (admin.proto).
pub const CHAIN_TARGETS_MAX: usize = 16;
/// A chain table is one KV value of at most this many chains (admin.proto).
pub const CHAIN_TABLE_CHAINS_MAX: usize = 16_384;
/// Largest chains or chain-table file read.
pub const CHAIN_FILE_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct UploadChainsArgs {
    /// Chains file: header `ChainId,TargetId,...`, one chain per line, head first.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct UploadChainTableArgs {
    /// Chain table id (layouts name it).
    pub table_id: u32,
    /// Chain table file: header `ChainId`, one chain id per line, in table order.
    pub file: PathBuf,
    /// Description stored with this version.
    #[arg(long = "desc", default_value = "")]
    pub description: String,
}

/// `SERVING` count over replicas, the quickest read of a chain's health.
fn serving(chain: &ChainView) -> String {
    let serving = chain.targets.iter().filter(|t| t.public_state == "SERVING").count();
    format!("{serving}/{}", chain.targets.len())
}

pub async fn list_chains(ctx: &Ctx) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .list_chains(admin::ListChainsRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("list chains")?;
    let chains: Vec<ChainView> = response.chains.iter().map(ChainView::from).collect();
    if ctx.json() {
        return ctx.print_json(&chains);
    }
    if response.chains_stopped_unix_ms != 0 {
        println!(
            "Every chain is shut down (shutdown-all-chains at unix ms {}): run start-all-chains to serve again.",
            response.chains_stopped_unix_ms
        );
    }
    let width = chains.iter().map(|c| c.targets.len()).max().unwrap_or(0);
    let mut header = vec!["ChainId", "ChainVersion", "Serving"];
    header.extend(std::iter::repeat_n("Target", width));
    let mut table = Table::new(&header);
    for chain in &chains {
        let mut row =
            vec![chain.chain_id.to_string(), chain.chain_version.to_string(), serving(chain)];
        row.extend(chain.targets.iter().map(|t| format!("{}({})", t.target_id, t.public_state)));
        row.resize(header.len(), String::new());
        table.row(row);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn list_chain_tables(ctx: &Ctx) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .list_chain_tables(admin::ListChainTablesRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("list chain tables")?;
    let tables: Vec<ChainTableView> =
        response.chain_tables.iter().map(ChainTableView::from).collect();
    if ctx.json() {
        return ctx.print_json(&tables);
    }
    let mut table = Table::new(&["ChainTableId", "ChainTableVersion", "ChainCount", "Desc"]);
    for t in &tables {
        table.row(vec![
            t.table_id.to_string(),
            t.version.to_string(),
            t.chain_ids.len().to_string(),
            t.description.clone(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

#[derive(Serialize)]
struct UploadChainsOutput {
    chains: usize,
    created: u32,
    routing_version: u64,
}

pub async fn upload_chains(ctx: &Ctx, args: UploadChainsArgs) -> anyhow::Result<()> {
    let text = read_input_file(&args.file, "chains file", CHAIN_FILE_BYTES_MAX)?;
    let chains = files::parse_chains(&text)
        .with_context(|| format!("parse chains file {}", args.file.display()))?;
    if let Some(chain) = chains.iter().find(|c| c.targets.len() > CHAIN_TARGETS_MAX) {
        bail!(
            "chain {} has {} targets; mgmtd accepts at most {CHAIN_TARGETS_MAX}",
            chain.chain_id,
            chain.targets.len()
        );
    }
    let mgmtd = ctx.client()?;
    let mut output = UploadChainsOutput { chains: chains.len(), created: 0, routing_version: 0 };
    // Each batch is one mgmtd transaction; a re-run after a partial failure is safe because
    // uploading an existing chain with the same targets is a no-op.
    for (i, batch) in chains.chunks(UPLOAD_CHAINS_BATCH_MAX).enumerate() {
        let request = admin::UploadChainsRequest {
            chains: batch
                .iter()
                .map(|c| admin::ChainSpec {
                    chain_id: c.chain_id.0,
                    target_ids: c.targets.iter().map(|t| t.0).collect(),
                })
                .collect(),
        };
        let response = mgmtd
            .client
            .upload_chains(request)
            .await
            .map_err(|status| mgmtd.error(status))
            .with_context(|| {
                let first = i * UPLOAD_CHAINS_BATCH_MAX;
                format!(
                    "upload chains {}..{} of {} from {}",
                    first + 1,
                    first + batch.len(),
                    chains.len(),
                    args.file.display()
                )
            })?;
        output.created += response.created;
        output.routing_version = response.routing_version;
    }
    if ctx.json() {
        return ctx.print_json(&output);
    }
    println!(
        "Uploaded {} chains ({} new, {} already present); routing version {}.",
        output.chains,
        output.created,
        output.chains - output.created as usize,
        output.routing_version
    );
    Ok(())
}

#[derive(Serialize)]
struct UploadChainTableOutput {
    table_id: u32,
    version: u32,
    chains: usize,
    routing_version: u64,
}

pub async fn upload_chain_table(ctx: &Ctx, args: UploadChainTableArgs) -> anyhow::Result<()> {
    if args.table_id == 0 {
        bail!("chain table id 0 is reserved; use 1 or above");
    }
    let text = read_input_file(&args.file, "chain table file", CHAIN_FILE_BYTES_MAX)?;
    let chain_ids = files::parse_chain_table(&text)
        .with_context(|| format!("parse chain table file {}", args.file.display()))?;
    if chain_ids.len() > CHAIN_TABLE_CHAINS_MAX {
        bail!(
            "the chain table lists {} chains; mgmtd stores at most {CHAIN_TABLE_CHAINS_MAX} per table",
            chain_ids.len()
        );
    }
    let mgmtd = ctx.client()?;
    let request = admin::UploadChainTableRequest {
        table_id: args.table_id,
        chain_ids: chain_ids.iter().map(|c| c.0).collect(),
        description: args.description.clone(),
    };
    let response = mgmtd
        .client
        .upload_chain_table(request)
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| {
            format!("upload chain table {} from {}", args.table_id, args.file.display())
        })?;
    let output = UploadChainTableOutput {
        table_id: args.table_id,
        version: response.version,
        chains: chain_ids.len(),
        routing_version: response.routing_version,
    };
    if ctx.json() {
        return ctx.print_json(&output);
    }
    println!(
        "Uploaded chain table {} version {} with {} chains; routing version {}.",
        output.table_id, output.version, output.chains, output.routing_version
    );
    Ok(())
}
