//! The command tree: one module per command group, each owning its argument structs and its
//! `run` functions. Commands are flat verbs (`list-nodes`, `upload-chains`, ...) as in 3FS's
//! admin_cli, so scripts read the same; a new group (`up`, `mount`, `stats`, the fault-tolerance
//! operations in `ops`) is a new module plus its variants here.

pub mod chains;
pub mod cluster;
pub mod completions;
pub mod config;
pub mod ctx;
pub mod nodes;
pub mod ops;
pub mod placement;
pub mod stats;
pub mod targets;
pub mod up;
pub mod users;
pub mod view;

use clap::Subcommand;
use ctx::Ctx;

#[derive(Debug, Subcommand)]
pub enum Command {
    // ---- cluster ----
    /// Initialize a new cluster and print its admin token (once).
    InitCluster(cluster::InitClusterArgs),

    // ---- nodes ----
    /// List every node with its status and versions.
    ListNodes,
    /// Disable a node: its heartbeats are refused and its targets go offline.
    DisableNode(nodes::NodeIdArgs),
    /// Re-enable a disabled node.
    EnableNode(nodes::NodeIdArgs),

    // ---- chains and chain tables ----
    /// List every chain with its targets (head first) and their public states.
    ListChains,
    /// List every version of every chain table.
    ListChainTables,
    /// Create chains from a chains file (`ChainId,TargetId,...`, as gen-chain-table writes).
    UploadChains(chains::UploadChainsArgs),
    /// Add a new version of a chain table from a file (`ChainId` per line).
    UploadChainTable(chains::UploadChainTableArgs),

    // ---- targets ----
    /// List every target with its node, disk, chain, role and states.
    ListTargets,
    /// Create one target.
    CreateTarget(targets::CreateTargetArgs),
    /// Create the targets of a targets file (`TargetId,NodeId,DiskIndex,ChainId`).
    CreateTargets(targets::CreateTargetsArgs),
    /// Mark a target offline now, so its chain moves it to the end and it must recover.
    OfflineTarget(targets::OfflineTargetArgs),
    /// Take a target out of its chain for good (refused if the chain would lose its only serving
    /// or last-serving replica).
    RemoveTarget(ops::RemoveTargetArgs),
    /// Append a new target on a storage node to a chain: it resyncs, then serves (migration).
    AddTargetToChain(ops::AddTargetToChainArgs),
    /// Make another target last-serving in a chain that lost every serving replica (writes only
    /// the old last-serving target held are lost).
    RotateLastServing(ops::RotateLastServingArgs),
    /// Orderly full stop: no chain takes writes, and targets serve again after a restart without
    /// a resync; the chains stay frozen until start-all-chains.
    ShutdownAllChains,
    /// End a shutdown-all-chains: the chains follow their targets again.
    StartAllChains(ops::StartAllChainsArgs),

    // ---- placement ----
    /// Generate chains, a chain table and targets for a set of storage nodes and report how
    /// evenly a failed node's recovery traffic spreads.
    GenChainTable(placement::GenChainTableArgs),

    // ---- users ----
    /// Add a user and print its token (once).
    UserAdd(users::UserAddArgs),
    /// List users (never tokens).
    UserList,
    /// Remove a user; its token stops working at once.
    UserRemove(users::UserRemoveArgs),

    // ---- configs ----
    /// Store a new config version for a node type.
    SetConfig(config::SetConfigArgs),
    /// Print a node type's config (the latest, or one version), or list its versions.
    GetConfig(config::GetConfigArgs),

    // ---- local cluster ----
    /// Run a whole cluster on this machine (mgmtd, meta, storage daemons, optional FUSE mount)
    /// with all state under one directory; Ctrl-C stops it, running it again reuses the data.
    Up(up::UpArgs),

    // ---- monitoring ----
    /// Print recent metric figures from the ClickHouse that r3fs-monitor fills.
    Stats(stats::StatsArgs),

    // ---- shell ----
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
}

impl Command {
    pub async fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        match self {
            Command::InitCluster(args) => cluster::init_cluster(ctx, args).await,
            Command::ListNodes => nodes::list_nodes(ctx).await,
            Command::DisableNode(args) => nodes::set_disabled(ctx, args, true).await,
            Command::EnableNode(args) => nodes::set_disabled(ctx, args, false).await,
            Command::ListChains => chains::list_chains(ctx).await,
            Command::ListChainTables => chains::list_chain_tables(ctx).await,
            Command::UploadChains(args) => chains::upload_chains(ctx, args).await,
            Command::UploadChainTable(args) => chains::upload_chain_table(ctx, args).await,
            Command::ListTargets => targets::list_targets(ctx).await,
            Command::CreateTarget(args) => targets::create_target(ctx, args).await,
            Command::CreateTargets(args) => targets::create_targets(ctx, args).await,
            Command::OfflineTarget(args) => targets::offline_target(ctx, args).await,
            Command::RemoveTarget(args) => ops::remove_target(ctx, args).await,
            Command::AddTargetToChain(args) => ops::add_target_to_chain(ctx, args).await,
            Command::RotateLastServing(args) => ops::rotate_last_serving(ctx, args).await,
            Command::ShutdownAllChains => ops::shutdown_all_chains(ctx).await,
            Command::StartAllChains(args) => ops::start_all_chains(ctx, args).await,
            Command::GenChainTable(args) => placement::gen_chain_table(ctx, args),
            Command::UserAdd(args) => users::user_add(ctx, args).await,
            Command::UserList => users::user_list(ctx).await,
            Command::UserRemove(args) => users::user_remove(ctx, args).await,
            Command::SetConfig(args) => config::set_config(ctx, args).await,
            Command::GetConfig(args) => config::get_config(ctx, args).await,
            Command::Up(args) => up::up(ctx, args).await,
            Command::Stats(args) => stats::stats(ctx, args).await,
            Command::Completions(args) => completions::print(args),
        }
    }
}
