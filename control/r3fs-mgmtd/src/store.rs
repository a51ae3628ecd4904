//! mgmtd's state in the KV: one function per transaction body.
//!
//! Every write body takes a [`WriteCtx`] and starts with [`WriteCtx::check`] (the lease fence), so
//! a deposed primary cannot change anything; [`crate::core::Mgmtd`] runs the bodies through
//! `r3fs_kv::retry::run`. Bodies decide only from what they read in the current attempt, so a
//! retry after a conflict is safe. Read bodies use snapshot reads and are never committed.
//!
//! Whatever changes routing info (nodes' membership/status/addresses, targets' local states,
//! chains, chain tables) bumps `mgmtd/routing-version` in the same transaction; heartbeat
//! counters, used bytes and reported versions are refreshed without a bump.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use r3fs_kv::{ReadMode, Txn};
use r3fs_rpc::mgmtd as pb;
use r3fs_types::{
    ChainId, ChainTableId, ChainTableVersion, ErrorCode, LocalTargetState, NodeId, NodeStatus,
    NodeType, TargetId,
};

use crate::chain_state::{ChainOpError, ChainState};
use crate::convert;
use crate::error::{MgmtdError, Result};
use crate::keys;
use crate::lease::{self, Fence, LeaseHolder};
use crate::records::{
    self, ChainTableRecord, ChainsStoppedRecord, ClusterRecord, ConfigRecord, NodeRecord,
    PresenceRecord, ResyncRecord, TargetRecord, UserRecord,
};

use ReadMode::{Serializable, Snapshot};

/// Node ids mgmtd allocates (RegisterNode with node_id 0) start here, far above the small ids
/// operators configure for storage and meta nodes.
pub const NODE_ID_ALLOCATED_MIN: u32 = 1 << 30;
/// Bounds of request contents (each also documented in the .proto).
pub const ADDRESSES_MAX: usize = 16;
pub const HEARTBEAT_TARGETS_MAX: usize = 4_096;
pub const SPECS_MAX: usize = 4_096;
pub const CHAIN_TABLE_CHAINS_MAX: usize = 16_384;
pub const NAME_LEN_MAX: usize = 64;
pub const TEXT_LEN_MAX: usize = 1_024;
pub const GROUPS_MAX: usize = 64;
pub const CONFIG_BYTES_MAX: usize = 64 << 10;

/// The fence and the time of one write; built only by [`crate::core::Mgmtd`].
#[derive(Clone, Copy, Debug)]
pub struct WriteCtx {
    pub fence: Fence,
    pub now_unix_ms: u64,
}

impl WriteCtx {
    /// The fencing check: first statement of every write body.
    pub async fn check(&self, txn: &mut dyn Txn) -> Result<()> {
        lease::check_fence(txn, &self.fence, self.now_unix_ms).await
    }
}

fn refused<T>(code: ErrorCode, message: impl Into<String>) -> Result<T> {
    Err(MgmtdError::refused(code, message))
}

fn check_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return refused(ErrorCode::InvalidArgument, format!("{what} exceeds {max} bytes"));
    }
    Ok(())
}

async fn bump_routing_version(txn: &mut dyn Txn) -> Result<u64> {
    let version = records::get_u64(txn, &keys::routing_version(), Serializable).await? + 1;
    records::put_u64(txn, &keys::routing_version(), version)?;
    Ok(version)
}

pub async fn routing_version(txn: &mut dyn Txn) -> Result<u64> {
    records::get_u64(txn, &keys::routing_version(), Snapshot).await
}

/// Whether shutdown-all-chains froze the chains (until start-all-chains).
pub async fn chains_stopped(
    txn: &mut dyn Txn,
    mode: ReadMode,
) -> Result<Option<ChainsStoppedRecord>> {
    records::get::<ChainsStoppedRecord>(txn, &keys::chains_stopped(), mode).await
}

/// The stored local state of every member of `chain` (offline for a target without a record).
async fn member_states(
    txn: &mut dyn Txn,
    chain: &ChainState,
) -> Result<HashMap<TargetId, LocalTargetState>> {
    let mut local = HashMap::new();
    for target_id in chain.target_ids().collect::<Vec<_>>() {
        let state = records::get::<TargetRecord>(txn, &keys::target(target_id), Serializable)
            .await?
            .map_or(LocalTargetState::Offline, |t| t.local_state);
        local.insert(target_id, state);
    }
    Ok(local)
}

/// Stores a changed chain and clears the resync progress of every target of `before` or `next`
/// that is not syncing in `next` (progress describes only a resync under way).
async fn put_chain(txn: &mut dyn Txn, before: &ChainState, next: &ChainState) -> Result<()> {
    records::put(txn, &keys::chain(next.chain_id), next)?;
    let targets: BTreeSet<TargetId> = before.target_ids().chain(next.target_ids()).collect();
    for target_id in targets {
        if next.public_state(target_id) == Some(r3fs_types::PublicTargetState::Syncing) {
            continue;
        }
        let key = keys::target(target_id);
        if let Some(mut target) = records::get::<TargetRecord>(txn, &key, Serializable).await?
            && target.resync.take().is_some()
        {
            records::put(txn, &key, &target)?;
        }
    }
    Ok(())
}

/// Recomputes `chains` from their targets' stored local states; returns whether any changed.
/// Does nothing while the chains are shut down: alive daemons' reports would otherwise make the
/// last-serving targets serve again (docs/design/operations.md).
async fn recompute_chains(txn: &mut dyn Txn, chains: &BTreeSet<ChainId>) -> Result<bool> {
    if chains.is_empty() || chains_stopped(txn, Serializable).await?.is_some() {
        return Ok(false);
    }
    let mut changed = false;
    for &chain_id in chains {
        let Some(chain) =
            records::get::<ChainState>(txn, &keys::chain(chain_id), Serializable).await?
        else {
            continue; // Targets may name a chain that is not uploaded yet.
        };
        let local = member_states(txn, &chain).await?;
        let next = chain.recompute(|t| local.get(&t).copied().unwrap_or(LocalTargetState::Offline));
        if next != chain {
            tracing::info!(chain = %chain_id, from = %chain.version, to = %next.version, members = ?next.members, "chain changed");
            put_chain(txn, &chain, &next).await?;
            changed = true;
        }
    }
    Ok(changed)
}

// ---- cluster and users ----

#[derive(Debug)]
pub struct InitSpec {
    pub cluster_id: String,
    pub admin_name: String,
    pub admin_uid: u32,
    pub admin_gid: u32,
    pub token_hash_hex: String,
}

pub async fn init_cluster(txn: &mut dyn Txn, ctx: WriteCtx, spec: &InitSpec) -> Result<UserRecord> {
    ctx.check(txn).await?;
    if spec.cluster_id.is_empty() {
        return refused(ErrorCode::InvalidArgument, "cluster_id must not be empty");
    }
    check_text("cluster_id", &spec.cluster_id, NAME_LEN_MAX)?;
    check_text("admin_name", &spec.admin_name, NAME_LEN_MAX)?;
    if let Some(cluster) =
        records::get::<ClusterRecord>(txn, &keys::cluster(), Serializable).await?
    {
        return refused(
            ErrorCode::UserExists,
            format!(
                "cluster {:?} is already initialized (its admin user exists)",
                cluster.cluster_id
            ),
        );
    }
    let cluster =
        ClusterRecord { cluster_id: spec.cluster_id.clone(), created_unix_ms: ctx.now_unix_ms };
    records::put(txn, &keys::cluster(), &cluster)?;
    let admin = UserRecord {
        uid: spec.admin_uid,
        name: if spec.admin_name.is_empty() { "root".into() } else { spec.admin_name.clone() },
        gid: spec.admin_gid,
        groups: Vec::new(),
        admin: true,
        created_unix_ms: ctx.now_unix_ms,
        token_sha256: spec.token_hash_hex.clone(),
    };
    records::put(txn, &keys::user(admin.uid), &admin)?;
    records::put_u64(txn, &keys::token(&admin.token_sha256), u64::from(admin.uid))?;
    bump_routing_version(txn).await?;
    Ok(admin)
}

/// The user owning the token with this hash, or Unauthenticated.
pub async fn resolve_token(txn: &mut dyn Txn, token_hash_hex: &str) -> Result<UserRecord> {
    let key = keys::token(token_hash_hex);
    let uid = match txn.get(&key, Snapshot).await? {
        Some(bytes) => records::decode_u64(&key, &bytes)?,
        None => {
            let initialized =
                records::get::<ClusterRecord>(txn, &keys::cluster(), Snapshot).await?.is_some();
            let hint = if initialized { "" } else { " (the cluster is not initialized yet)" };
            return refused(ErrorCode::Unauthenticated, format!("unknown or removed token{hint}"));
        }
    };
    let uid = u32::try_from(uid).map_err(|_| MgmtdError::Corrupt {
        key: "mgmtd/token/..".into(),
        reason: format!("uid {uid} out of range"),
    })?;
    match records::get::<UserRecord>(txn, &keys::user(uid), Snapshot).await? {
        Some(user) if user.token_sha256 == token_hash_hex => Ok(user),
        _ => refused(ErrorCode::Unauthenticated, "unknown or removed token"),
    }
}

#[derive(Debug)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub admin: bool,
    pub token_hash_hex: String,
}

pub async fn add_user(txn: &mut dyn Txn, ctx: WriteCtx, spec: &UserSpec) -> Result<UserRecord> {
    ctx.check(txn).await?;
    if spec.name.is_empty() {
        return refused(ErrorCode::InvalidArgument, "user name must not be empty");
    }
    check_text("user name", &spec.name, NAME_LEN_MAX)?;
    if spec.groups.len() > GROUPS_MAX {
        return refused(ErrorCode::InvalidArgument, format!("at most {GROUPS_MAX} groups"));
    }
    if records::get::<UserRecord>(txn, &keys::user(spec.uid), Serializable).await?.is_some() {
        return refused(ErrorCode::UserExists, format!("uid {} already exists", spec.uid));
    }
    let users: Vec<UserRecord> = records::scan(txn, keys::users(), Serializable).await?;
    if users.iter().any(|u| u.name == spec.name) {
        return refused(ErrorCode::UserExists, format!("user name {:?} already exists", spec.name));
    }
    let user = UserRecord {
        uid: spec.uid,
        name: spec.name.clone(),
        gid: spec.gid,
        groups: spec.groups.clone(),
        admin: spec.admin,
        created_unix_ms: ctx.now_unix_ms,
        token_sha256: spec.token_hash_hex.clone(),
    };
    records::put(txn, &keys::user(user.uid), &user)?;
    records::put_u64(txn, &keys::token(&user.token_sha256), u64::from(user.uid))?;
    Ok(user)
}

pub async fn remove_user(txn: &mut dyn Txn, ctx: WriteCtx, uid: u32) -> Result<UserRecord> {
    ctx.check(txn).await?;
    let Some(user) = records::get::<UserRecord>(txn, &keys::user(uid), Serializable).await? else {
        return refused(ErrorCode::UserNotFound, format!("no user with uid {uid}"));
    };
    if user.admin {
        let users: Vec<UserRecord> = records::scan(txn, keys::users(), Serializable).await?;
        if users.iter().filter(|u| u.admin).count() <= 1 {
            return refused(ErrorCode::PermissionDenied, "the last admin user cannot be removed");
        }
    }
    txn.clear(&keys::user(uid))?;
    txn.clear(&keys::token(&user.token_sha256))?;
    Ok(user)
}

pub async fn list_users(txn: &mut dyn Txn) -> Result<Vec<UserRecord>> {
    records::scan(txn, keys::users(), Snapshot).await
}

// ---- membership ----

#[derive(Clone, Debug)]
pub struct RegisterSpec {
    pub node_id: NodeId,
    pub node_type: NodeType,
    pub hostname: String,
    pub addresses: Vec<(String, String)>,
    pub release_version: String,
    pub config_version: u64,
}

#[derive(Clone, Debug)]
pub struct RegisterOutcome {
    pub node_id: NodeId,
    pub last_heartbeat_version: u64,
    pub routing_version: u64,
}

pub async fn register_node(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    spec: &RegisterSpec,
) -> Result<RegisterOutcome> {
    ctx.check(txn).await?;
    if spec.node_type == NodeType::Mgmtd {
        return refused(
            ErrorCode::InvalidArgument,
            "mgmtd instances announce themselves through the shared KV, not RegisterNode",
        );
    }
    if spec.addresses.len() > ADDRESSES_MAX {
        return refused(ErrorCode::InvalidArgument, format!("at most {ADDRESSES_MAX} addresses"));
    }
    check_text("hostname", &spec.hostname, TEXT_LEN_MAX)?;
    check_text("release_version", &spec.release_version, TEXT_LEN_MAX)?;
    for (name, address) in &spec.addresses {
        check_text("address name", name, NAME_LEN_MAX)?;
        check_text("address", address, TEXT_LEN_MAX)?;
    }
    let node_id = if spec.node_id.0 == 0 {
        let next = records::get_u64(txn, &keys::node_id_next(), Serializable).await?;
        let id = next.max(u64::from(NODE_ID_ALLOCATED_MIN));
        let id = u32::try_from(id)
            .map_err(|_| MgmtdError::refused(ErrorCode::Internal, "node ids are exhausted"))?;
        records::put_u64(txn, &keys::node_id_next(), u64::from(id) + 1)?;
        NodeId(id)
    } else {
        spec.node_id
    };
    let existing = records::get::<NodeRecord>(txn, &keys::node(node_id), Serializable).await?;
    if let Some(existing) = &existing {
        if existing.node_type != spec.node_type {
            return refused(
                ErrorCode::InvalidArgument,
                format!(
                    "node {node_id} is registered as {}, not {}",
                    existing.node_type, spec.node_type
                ),
            );
        }
        if existing.status == NodeStatus::Disabled {
            return refused(ErrorCode::PermissionDenied, format!("node {node_id} is disabled"));
        }
    }
    let last_heartbeat_version = existing.as_ref().map_or(0, |n| n.heartbeat_version);
    let node = NodeRecord {
        node_id,
        node_type: spec.node_type,
        status: NodeStatus::HeartbeatConnected,
        hostname: spec.hostname.clone(),
        addresses: spec.addresses.clone(),
        heartbeat_version: last_heartbeat_version,
        last_heartbeat_unix_ms: ctx.now_unix_ms,
        config_version: spec.config_version,
        release_version: spec.release_version.clone(),
    };
    let routing_changed = existing.as_ref().is_none_or(|old| {
        old.status != node.status
            || old.hostname != node.hostname
            || old.addresses != node.addresses
    });
    records::put(txn, &keys::node(node_id), &node)?;
    let routing_version = if routing_changed {
        tracing::info!(node = %node_id, node_type = %spec.node_type, "node registered");
        bump_routing_version(txn).await?
    } else {
        routing_version(txn).await?
    };
    Ok(RegisterOutcome { node_id, last_heartbeat_version, routing_version })
}

#[derive(Clone, Debug)]
pub struct HeartbeatSpec {
    pub node_id: NodeId,
    pub heartbeat_version: u64,
    pub config_version: u64,
    pub release_version: String,
    pub targets: Vec<TargetReport>,
}

/// One target's line in a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetReport {
    pub target_id: TargetId,
    pub local_state: LocalTargetState,
    pub used_bytes: u64,
    /// The target's capacity (0 = unknown).
    pub total_bytes: u64,
    /// Chain version the daemon's claim was made at; 0 = unversioned.
    pub chain_version: u32,
    /// Set while this target resyncs its successor: how far that resync has come.
    pub resync: Option<ResyncProgress>,
}

/// A predecessor's report of its successor's resync (mgmtd.proto's ResyncProgress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    /// The target being synced.
    pub target_id: TargetId,
    pub progress: ResyncRecord,
}

#[derive(Clone, Debug)]
pub struct HeartbeatOutcome {
    pub node_type: NodeType,
    pub routing_version: u64,
    pub latest_config_version: u64,
    pub ignored_target_ids: Vec<TargetId>,
}

pub async fn heartbeat(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    spec: &HeartbeatSpec,
) -> Result<HeartbeatOutcome> {
    ctx.check(txn).await?;
    if spec.targets.len() > HEARTBEAT_TARGETS_MAX {
        return refused(
            ErrorCode::InvalidArgument,
            format!("at most {HEARTBEAT_TARGETS_MAX} targets per heartbeat"),
        );
    }
    check_text("release_version", &spec.release_version, TEXT_LEN_MAX)?;
    let Some(mut node) =
        records::get::<NodeRecord>(txn, &keys::node(spec.node_id), Serializable).await?
    else {
        return refused(
            ErrorCode::NodeNotFound,
            format!("node {} is not registered", spec.node_id),
        );
    };
    if node.status == NodeStatus::Disabled {
        return refused(ErrorCode::PermissionDenied, format!("node {} is disabled", spec.node_id));
    }
    if spec.heartbeat_version <= node.heartbeat_version {
        return refused(
            ErrorCode::StaleHeartbeat,
            format!(
                "heartbeat version {} of node {} is not above {}",
                spec.heartbeat_version, spec.node_id, node.heartbeat_version
            ),
        );
    }
    let mut routing_changed = node.status != NodeStatus::HeartbeatConnected;
    if routing_changed {
        tracing::info!(node = %spec.node_id, "node heartbeat connected");
    }
    node.status = NodeStatus::HeartbeatConnected;
    node.heartbeat_version = spec.heartbeat_version;
    node.last_heartbeat_unix_ms = ctx.now_unix_ms;
    node.config_version = spec.config_version;
    node.release_version = spec.release_version.clone();
    records::put(txn, &keys::node(spec.node_id), &node)?;

    let mut ignored = Vec::new();
    let mut dirty_chains = BTreeSet::new();
    for report in &spec.targets {
        let TargetReport {
            target_id,
            mut local_state,
            used_bytes,
            total_bytes,
            chain_version,
            resync: _,
        } = *report;
        let key = keys::target(target_id);
        let Some(mut target) = records::get::<TargetRecord>(txn, &key, Serializable).await? else {
            ignored.push(target_id);
            continue;
        };
        if target.node_id != spec.node_id {
            ignored.push(target_id);
            continue;
        }
        if local_state == LocalTargetState::UpToDate
            && target.local_state != LocalTargetState::UpToDate
            && chain_version != 0
        {
            // A new up-to-date claim: accept it only if made at the chain's current version, so
            // a delayed claim from an earlier resync cannot make a target serve that has missed
            // writes since. (An unchanged claim was checked when it was first accepted.)
            let current =
                records::get::<ChainState>(txn, &keys::chain(target.chain_id), Serializable)
                    .await?
                    .map(|chain| chain.version.0);
            if current.is_some_and(|current| chain_version < current) {
                tracing::info!(target = %target_id, claim = chain_version, current = ?current, "up-to-date claim at an old chain version taken as online");
                local_state = LocalTargetState::Online;
            }
        }
        let state_changed = target.local_state != local_state;
        if state_changed {
            tracing::info!(target = %target_id, from = %target.local_state, to = %local_state, "target local state");
            target.local_state = local_state;
            dirty_chains.insert(target.chain_id);
            routing_changed = true;
        }
        if state_changed || target.used_bytes != used_bytes || target.total_bytes != total_bytes {
            target.used_bytes = used_bytes;
            target.total_bytes = total_bytes;
            records::put(txn, &key, &target)?;
        }
    }
    recompute_chains(txn, &dirty_chains).await?;
    for report in &spec.targets {
        if let Some(resync) = report.resync
            && !ignored.contains(&report.target_id)
        {
            record_resync(txn, report.target_id, resync).await?;
        }
    }
    let routing_version = if routing_changed {
        bump_routing_version(txn).await?
    } else {
        routing_version(txn).await?
    };
    let latest_config_version = latest_config(txn, node.node_type).await?.map_or(0, |c| c.version);
    Ok(HeartbeatOutcome {
        node_type: node.node_type,
        routing_version,
        latest_config_version,
        ignored_target_ids: ignored,
    })
}

/// Copies a predecessor's resync report onto the synced target, if that target is syncing in the
/// reporter's chain now (a late report about a finished or abandoned resync is dropped). No
/// routing-version bump: progress is informational, like used bytes.
async fn record_resync(
    txn: &mut dyn Txn,
    reporter: TargetId,
    resync: ResyncProgress,
) -> Result<()> {
    let Some(from) =
        records::get::<TargetRecord>(txn, &keys::target(reporter), Serializable).await?
    else {
        return Ok(());
    };
    let Some(chain) =
        records::get::<ChainState>(txn, &keys::chain(from.chain_id), Serializable).await?
    else {
        return Ok(());
    };
    if chain.public_state(reporter).is_none()
        || chain.public_state(resync.target_id) != Some(r3fs_types::PublicTargetState::Syncing)
    {
        return Ok(());
    }
    let key = keys::target(resync.target_id);
    let Some(mut target) = records::get::<TargetRecord>(txn, &key, Serializable).await? else {
        return Ok(());
    };
    if target.resync != Some(resync.progress) {
        target.resync = Some(resync.progress);
        records::put(txn, &key, &target)?;
    }
    Ok(())
}

/// Marks silent nodes failed and their targets offline. `silent` pairs each node with the
/// heartbeat version the failure detector saw: a node that heartbeated since is left alone.
/// Returns the new routing version if anything changed.
pub async fn mark_nodes_failed(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    silent: &[(NodeId, u64)],
) -> Result<Option<u64>> {
    ctx.check(txn).await?;
    let mut failed = BTreeSet::new();
    for &(node_id, seen_version) in silent {
        let key = keys::node(node_id);
        let Some(mut node) = records::get::<NodeRecord>(txn, &key, Serializable).await? else {
            continue;
        };
        if node.status != NodeStatus::HeartbeatConnected || node.heartbeat_version != seen_version {
            continue;
        }
        tracing::warn!(node = %node_id, heartbeat_version = seen_version, "node heartbeat failed");
        node.status = NodeStatus::HeartbeatFailed;
        records::put(txn, &key, &node)?;
        failed.insert(node_id);
    }
    if failed.is_empty() {
        return Ok(None);
    }
    offline_targets_of(txn, &failed).await?;
    Ok(Some(bump_routing_version(txn).await?))
}

/// Sets every target of `nodes` offline and recomputes their chains.
async fn offline_targets_of(txn: &mut dyn Txn, nodes: &BTreeSet<NodeId>) -> Result<()> {
    let targets: Vec<TargetRecord> = records::scan(txn, keys::targets(), Serializable).await?;
    let mut dirty_chains = BTreeSet::new();
    for mut target in targets.into_iter().filter(|t| nodes.contains(&t.node_id)) {
        if target.local_state != LocalTargetState::Offline {
            target.local_state = LocalTargetState::Offline;
            records::put(txn, &keys::target(target.target_id), &target)?;
            dirty_chains.insert(target.chain_id);
        }
    }
    recompute_chains(txn, &dirty_chains).await?;
    Ok(())
}

pub async fn set_node_disabled(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    node_id: NodeId,
    disabled: bool,
) -> Result<(NodeRecord, u64)> {
    ctx.check(txn).await?;
    let key = keys::node(node_id);
    let Some(mut node) = records::get::<NodeRecord>(txn, &key, Serializable).await? else {
        return refused(ErrorCode::NodeNotFound, format!("no node {node_id}"));
    };
    if node.node_type == NodeType::Mgmtd {
        return refused(ErrorCode::InvalidArgument, "mgmtd instances cannot be disabled");
    }
    let next = match (disabled, node.status) {
        (true, NodeStatus::Disabled) | (false, NodeStatus::HeartbeatConnected) => None,
        (true, _) => Some(NodeStatus::Disabled),
        (false, NodeStatus::Disabled) => Some(NodeStatus::HeartbeatFailed),
        (false, _) => None,
    };
    let Some(status) = next else {
        return Ok((node, routing_version(txn).await?));
    };
    tracing::info!(node = %node_id, %status, "node status set by operator");
    node.status = status;
    records::put(txn, &key, &node)?;
    if disabled {
        offline_targets_of(txn, &BTreeSet::from([node_id])).await?;
    }
    let version = bump_routing_version(txn).await?;
    Ok((node, version))
}

/// Mirrors the mgmtd instances' presence records into node records: the lease holder is
/// PRIMARY_MGMTD, an instance seen within `timeout_ms` HEARTBEAT_CONNECTED, others
/// HEARTBEAT_FAILED. Returns the new routing version if a status or address changed.
pub async fn sync_mgmtd_nodes(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    holder: &LeaseHolder,
    timeout_ms: u64,
) -> Result<Option<u64>> {
    ctx.check(txn).await?;
    let presences: Vec<PresenceRecord> =
        records::scan(txn, keys::presences(), Serializable).await?;
    let mut changed = false;
    for presence in presences {
        let status = if presence.node_id == holder.node_id && presence.instance == holder.instance {
            NodeStatus::PrimaryMgmtd
        } else if ctx.now_unix_ms.saturating_sub(presence.last_seen_unix_ms) <= timeout_ms {
            NodeStatus::HeartbeatConnected
        } else {
            NodeStatus::HeartbeatFailed
        };
        let key = keys::node(presence.node_id);
        let existing = records::get::<NodeRecord>(txn, &key, Serializable).await?;
        if let Some(existing) = &existing
            && existing.node_type != NodeType::Mgmtd
        {
            tracing::error!(node = %presence.node_id, "an mgmtd instance uses the node id of a {} node", existing.node_type);
            continue;
        }
        let node = NodeRecord {
            node_id: presence.node_id,
            node_type: NodeType::Mgmtd,
            status,
            hostname: presence.hostname.clone(),
            addresses: vec![("grpc".to_string(), presence.address.clone())],
            heartbeat_version: 0,
            last_heartbeat_unix_ms: presence.last_seen_unix_ms,
            config_version: 0,
            release_version: presence.release_version.clone(),
        };
        let differs = existing.as_ref().is_none_or(|old| {
            old.status != node.status
                || old.addresses != node.addresses
                || old.hostname != node.hostname
                || old.release_version != node.release_version
        });
        if differs {
            tracing::info!(node = %node.node_id, status = %node.status, "mgmtd instance status");
            records::put(txn, &key, &node)?;
            changed = true;
        }
    }
    if changed { Ok(Some(bump_routing_version(txn).await?)) } else { Ok(None) }
}

/// The type of a registered node, if any.
pub async fn node_type_of(txn: &mut dyn Txn, node_id: NodeId) -> Result<Option<NodeType>> {
    Ok(records::get::<NodeRecord>(txn, &keys::node(node_id), Snapshot).await?.map(|n| n.node_type))
}

/// Every non-mgmtd node whose stored status is HEARTBEAT_CONNECTED, with its heartbeat version
/// (a new primary starts failure detection from these).
pub async fn connected_nodes(txn: &mut dyn Txn) -> Result<Vec<(NodeId, u64)>> {
    let nodes: Vec<NodeRecord> = records::scan(txn, keys::nodes(), Snapshot).await?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.node_type != NodeType::Mgmtd && n.status == NodeStatus::HeartbeatConnected)
        .map(|n| (n.node_id, n.heartbeat_version))
        .collect())
}

// ---- targets, chains, chain tables ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub target_id: TargetId,
    pub node_id: NodeId,
    pub disk_index: u32,
    pub chain_id: ChainId,
}

impl TargetSpec {
    /// Refuses a spec with a zero id (0 is no node, target or chain): the one check and message
    /// for create-targets and add-target-to-chain.
    fn check_ids(&self) -> Result<()> {
        if self.target_id.0 == 0 || self.node_id.0 == 0 || self.chain_id.0 == 0 {
            return refused(
                ErrorCode::InvalidArgument,
                format!(
                    "node, target and chain ids must be non-zero (got node {}, target {}, chain {})",
                    self.node_id, self.target_id, self.chain_id
                ),
            );
        }
        Ok(())
    }

    /// The record of a target just created: offline until its daemon reports it.
    fn new_record(&self) -> TargetRecord {
        TargetRecord {
            target_id: self.target_id,
            node_id: self.node_id,
            disk_index: self.disk_index,
            chain_id: self.chain_id,
            local_state: LocalTargetState::Offline,
            used_bytes: 0,
            total_bytes: 0,
            resync: None,
        }
    }
}

pub async fn create_targets(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    specs: &[TargetSpec],
) -> Result<(u32, u64)> {
    ctx.check(txn).await?;
    if specs.len() > SPECS_MAX {
        return refused(
            ErrorCode::InvalidArgument,
            format!("at most {SPECS_MAX} targets per call"),
        );
    }
    let mut seen = BTreeSet::new();
    let mut created = 0u32;
    for spec in specs {
        spec.check_ids()?;
        if !seen.insert(spec.target_id) {
            return refused(
                ErrorCode::InvalidArgument,
                format!("target {} appears twice", spec.target_id),
            );
        }
        let key = keys::target(spec.target_id);
        if let Some(existing) = records::get::<TargetRecord>(txn, &key, Serializable).await? {
            if (existing.node_id, existing.disk_index, existing.chain_id)
                != (spec.node_id, spec.disk_index, spec.chain_id)
            {
                return refused(
                    ErrorCode::InvalidArgument,
                    format!(
                        "target {} exists on node {} disk {} chain {}",
                        spec.target_id, existing.node_id, existing.disk_index, existing.chain_id
                    ),
                );
            }
            continue;
        }
        if let Some(chain) =
            records::get::<ChainState>(txn, &keys::chain(spec.chain_id), Serializable).await?
            && chain.public_state(spec.target_id).is_none()
        {
            return refused(
                ErrorCode::InvalidArgument,
                format!(
                    "chain {} already exists without target {}: add it with add-target-to-chain",
                    spec.chain_id, spec.target_id
                ),
            );
        }
        records::put(txn, &key, &spec.new_record())?;
        created += 1;
    }
    let version =
        if created > 0 { bump_routing_version(txn).await? } else { routing_version(txn).await? };
    Ok((created, version))
}

pub async fn upload_chains(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    specs: &[(ChainId, Vec<TargetId>)],
) -> Result<(u32, u64)> {
    ctx.check(txn).await?;
    if specs.len() > SPECS_MAX {
        return refused(ErrorCode::InvalidArgument, format!("at most {SPECS_MAX} chains per call"));
    }
    // A chain created now would serve at once, while every other chain is frozen.
    refuse_while_stopped(txn, "upload-chains").await?;
    let mut chains_seen = BTreeSet::new();
    let mut targets_seen = BTreeMap::new();
    let mut created = 0u32;
    for (chain_id, target_ids) in specs {
        if chain_id.0 == 0 {
            return refused(ErrorCode::InvalidArgument, "chain ids must be non-zero");
        }
        if !chains_seen.insert(*chain_id) {
            return refused(ErrorCode::InvalidArgument, format!("chain {chain_id} appears twice"));
        }
        let fresh = ChainState::new(*chain_id, target_ids)
            .map_err(|e| MgmtdError::invalid(format!("chain {chain_id}: {e}")))?;
        let mut local = HashMap::new();
        for &target_id in target_ids {
            if let Some(other) = targets_seen.insert(target_id, *chain_id) {
                return refused(
                    ErrorCode::InvalidArgument,
                    format!("target {target_id} is in chains {other} and {chain_id}"),
                );
            }
            let Some(target) =
                records::get::<TargetRecord>(txn, &keys::target(target_id), Serializable).await?
            else {
                return refused(
                    ErrorCode::TargetNotFound,
                    format!("no target {target_id} (create it first)"),
                );
            };
            if target.chain_id != *chain_id {
                return refused(
                    ErrorCode::InvalidArgument,
                    format!(
                        "target {target_id} was created for chain {}, not {chain_id}",
                        target.chain_id
                    ),
                );
            }
            local.insert(target_id, target.local_state);
        }
        if let Some(existing) =
            records::get::<ChainState>(txn, &keys::chain(*chain_id), Serializable).await?
        {
            let old: BTreeSet<TargetId> = existing.target_ids().collect();
            let new: BTreeSet<TargetId> = target_ids.iter().copied().collect();
            if old != new {
                return refused(
                    ErrorCode::InvalidArgument,
                    format!(
                        "chain {chain_id} exists with other targets; membership changes are separate operations"
                    ),
                );
            }
            continue;
        }
        let chain =
            fresh.recompute(|t| local.get(&t).copied().unwrap_or(LocalTargetState::Offline));
        tracing::info!(chain = %chain_id, version = %chain.version, members = ?chain.members, "chain created");
        records::put(txn, &keys::chain(*chain_id), &chain)?;
        created += 1;
    }
    let version =
        if created > 0 { bump_routing_version(txn).await? } else { routing_version(txn).await? };
    Ok((created, version))
}

pub async fn upload_chain_table(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    table_id: ChainTableId,
    chain_ids: &[ChainId],
    description: &str,
) -> Result<(ChainTableVersion, u64)> {
    ctx.check(txn).await?;
    if table_id.0 == 0 {
        return refused(ErrorCode::InvalidArgument, "chain table ids must be non-zero");
    }
    if chain_ids.is_empty() || chain_ids.len() > CHAIN_TABLE_CHAINS_MAX {
        return refused(
            ErrorCode::InvalidArgument,
            format!("a chain table holds 1 to {CHAIN_TABLE_CHAINS_MAX} chains"),
        );
    }
    check_text("description", description, TEXT_LEN_MAX)?;
    let mut seen = BTreeSet::new();
    for &chain_id in chain_ids {
        if !seen.insert(chain_id) {
            return refused(ErrorCode::InvalidArgument, format!("chain {chain_id} appears twice"));
        }
        if txn.get(&keys::chain(chain_id), Serializable).await?.is_none() {
            return refused(ErrorCode::ChainNotFound, format!("no chain {chain_id}"));
        }
    }
    let last: Option<ChainTableRecord> =
        records::last(txn, keys::chain_table_versions(table_id), Serializable).await?;
    let version = ChainTableVersion(last.map_or(0, |t| t.version.0) + 1);
    let table = ChainTableRecord {
        table_id,
        version,
        chain_ids: chain_ids.to_vec(),
        description: description.to_string(),
    };
    records::put(txn, &keys::chain_table(table_id, version), &table)?;
    tracing::info!(table = %table_id, %version, chains = chain_ids.len(), "chain table uploaded");
    Ok((version, bump_routing_version(txn).await?))
}

pub async fn offline_target(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    target_id: TargetId,
) -> Result<(Option<ChainState>, u64)> {
    ctx.check(txn).await?;
    let key = keys::target(target_id);
    let Some(mut target) = records::get::<TargetRecord>(txn, &key, Serializable).await? else {
        return refused(ErrorCode::TargetNotFound, format!("no target {target_id}"));
    };
    let changed = target.local_state != LocalTargetState::Offline;
    if changed {
        tracing::info!(target = %target_id, "target set offline by operator");
        target.local_state = LocalTargetState::Offline;
        records::put(txn, &key, &target)?;
        recompute_chains(txn, &BTreeSet::from([target.chain_id])).await?;
    }
    let chain =
        records::get::<ChainState>(txn, &keys::chain(target.chain_id), Serializable).await?;
    let version =
        if changed { bump_routing_version(txn).await? } else { routing_version(txn).await? };
    Ok((chain, version))
}

// ---- operator's chain operations (docs/design/operations.md) ----

fn chain_refused(error: ChainOpError) -> MgmtdError {
    let code = match error {
        ChainOpError::NotMember { .. } => ErrorCode::TargetNotFound,
        _ => ErrorCode::InvalidArgument,
    };
    MgmtdError::refused(code, error.to_string())
}

async fn refuse_while_stopped(txn: &mut dyn Txn, what: &str) -> Result<()> {
    if chains_stopped(txn, Serializable).await?.is_some() {
        return refused(
            ErrorCode::InvalidArgument,
            format!(
                "the chains are shut down (shutdown-all-chains): run start-all-chains before {what}"
            ),
        );
    }
    Ok(())
}

async fn get_chain(txn: &mut dyn Txn, chain_id: ChainId) -> Result<ChainState> {
    match records::get::<ChainState>(txn, &keys::chain(chain_id), Serializable).await? {
        Some(chain) => Ok(chain),
        None => refused(ErrorCode::ChainNotFound, format!("no chain {chain_id}")),
    }
}

/// Takes a target out of its chain for good (refusals: [`ChainState::remove_member`]). Its
/// record stays, in no chain, so its daemon sees it leave (its replica stops) and an operator
/// can add it back later (it then resyncs like a new target).
pub async fn remove_target(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    target_id: TargetId,
) -> Result<(ChainState, u64)> {
    ctx.check(txn).await?;
    refuse_while_stopped(txn, "remove-target").await?;
    let Some(target) =
        records::get::<TargetRecord>(txn, &keys::target(target_id), Serializable).await?
    else {
        return refused(ErrorCode::TargetNotFound, format!("no target {target_id}"));
    };
    let chain = get_chain(txn, target.chain_id).await?;
    let local = member_states(txn, &chain).await?;
    let next = chain
        .remove_member(target_id, |t| local.get(&t).copied().unwrap_or(LocalTargetState::Offline))
        .map_err(chain_refused)?;
    tracing::info!(target = %target_id, chain = %chain.chain_id, version = %next.version, members = ?next.members, "target removed from its chain by operator");
    put_chain(txn, &chain, &next).await?;
    Ok((next, bump_routing_version(txn).await?))
}

/// Appends a target (created here if new) to an existing chain, where it resyncs before it
/// serves ([`ChainState::add_member`]).
pub async fn add_target_to_chain(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    spec: &TargetSpec,
) -> Result<(ChainState, u64)> {
    ctx.check(txn).await?;
    spec.check_ids()?;
    refuse_while_stopped(txn, "add-target-to-chain").await?;
    let chain = get_chain(txn, spec.chain_id).await?;
    match records::get::<NodeRecord>(txn, &keys::node(spec.node_id), Serializable).await? {
        Some(node) if node.node_type != NodeType::Storage => {
            return refused(
                ErrorCode::InvalidArgument,
                format!("node {} is a {} node, not a storage node", spec.node_id, node.node_type),
            );
        }
        Some(node) if node.status == NodeStatus::Disabled => {
            return refused(
                ErrorCode::PermissionDenied,
                format!("node {} is disabled", spec.node_id),
            );
        }
        Some(_) => {}
        None => {
            return refused(
                ErrorCode::NodeNotFound,
                format!(
                    "no node {}: start its storage daemon first, so it creates the target",
                    spec.node_id
                ),
            );
        }
    }
    let key = keys::target(spec.target_id);
    match records::get::<TargetRecord>(txn, &key, Serializable).await? {
        Some(existing)
            if (existing.node_id, existing.disk_index, existing.chain_id)
                != (spec.node_id, spec.disk_index, spec.chain_id) =>
        {
            return refused(
                ErrorCode::InvalidArgument,
                format!(
                    "target {} exists on node {} disk {} chain {}",
                    spec.target_id, existing.node_id, existing.disk_index, existing.chain_id
                ),
            );
        }
        Some(_) => {}
        None => {
            records::put(txn, &key, &spec.new_record())?;
        }
    }
    let mut local = member_states(txn, &chain).await?;
    let state = records::get::<TargetRecord>(txn, &key, Serializable)
        .await?
        .map_or(LocalTargetState::Offline, |t| t.local_state);
    local.insert(spec.target_id, state);
    let next = chain
        .add_member(spec.target_id, |t| local.get(&t).copied().unwrap_or(LocalTargetState::Offline))
        .map_err(chain_refused)?;
    tracing::info!(target = %spec.target_id, node = %spec.node_id, chain = %chain.chain_id, version = %next.version, members = ?next.members, "target added to chain by operator");
    put_chain(txn, &chain, &next).await?;
    Ok((next, bump_routing_version(txn).await?))
}

/// Makes `target_id` the last-serving target of a chain that has lost every serving replica
/// ([`ChainState::rotate_last_serving`]).
pub async fn rotate_last_serving(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    chain_id: ChainId,
    target_id: TargetId,
) -> Result<(ChainState, u64)> {
    ctx.check(txn).await?;
    refuse_while_stopped(txn, "rotate-last-serving").await?;
    let chain = get_chain(txn, chain_id).await?;
    let local = member_states(txn, &chain).await?;
    let next = chain
        .rotate_last_serving(target_id, |t| {
            local.get(&t).copied().unwrap_or(LocalTargetState::Offline)
        })
        .map_err(chain_refused)?;
    if next == chain {
        return Ok((next, routing_version(txn).await?));
    }
    tracing::warn!(chain = %chain_id, target = %target_id, version = %next.version, members = ?next.members, "last-serving target rotated by operator");
    put_chain(txn, &chain, &next).await?;
    Ok((next, bump_routing_version(txn).await?))
}

/// What shutdown-all-chains and start-all-chains did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainsOutcome {
    pub chains_changed: u32,
    pub routing_version: u64,
}

/// Orderly full stop: every chain shut down ([`ChainState::shutdown`]) and frozen until
/// start-all-chains. Idempotent.
pub async fn shutdown_all_chains(txn: &mut dyn Txn, ctx: WriteCtx) -> Result<ChainsOutcome> {
    ctx.check(txn).await?;
    let already = chains_stopped(txn, Serializable).await?.is_some();
    let chains: Vec<ChainState> = records::scan(txn, keys::chains(), Serializable).await?;
    let mut changed = 0u32;
    for chain in &chains {
        let next = chain.shutdown();
        if next != *chain {
            put_chain(txn, chain, &next).await?;
            changed += 1;
        }
    }
    if !already {
        records::put(
            txn,
            &keys::chains_stopped(),
            &ChainsStoppedRecord { stopped_unix_ms: ctx.now_unix_ms },
        )?;
    }
    tracing::warn!(chains = chains.len(), changed, "every chain shut down by operator");
    let routing_version = if changed > 0 || !already {
        bump_routing_version(txn).await?
    } else {
        routing_version(txn).await?
    };
    Ok(ChainsOutcome { chains_changed: changed, routing_version })
}

/// Ends a shutdown: the chains follow their targets' local states again. Unless `force`, refused
/// while a last-serving target has not reported since (its chain would serve without it and it
/// would have to resync).
pub async fn start_all_chains(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    force: bool,
) -> Result<ChainsOutcome> {
    ctx.check(txn).await?;
    if chains_stopped(txn, Serializable).await?.is_none() {
        return Ok(ChainsOutcome {
            chains_changed: 0,
            routing_version: routing_version(txn).await?,
        });
    }
    let chains: Vec<ChainState> = records::scan(txn, keys::chains(), Serializable).await?;
    if !force {
        let mut missing = Vec::new();
        for chain in &chains {
            let local = member_states(txn, chain).await?;
            missing.extend(
                chain
                    .members
                    .iter()
                    .filter(|m| {
                        m.public_state == r3fs_types::PublicTargetState::LastServing
                            && local.get(&m.target_id) == Some(&LocalTargetState::Offline)
                    })
                    .map(|m| m.target_id.to_string()),
            );
        }
        if !missing.is_empty() {
            const SHOWN_MAX: usize = 32;
            let more = missing.len().saturating_sub(SHOWN_MAX);
            missing.truncate(SHOWN_MAX);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            return refused(
                ErrorCode::InvalidArgument,
                format!(
                    "last-serving targets {}{more} have not reported since the shutdown: start their storage daemons and wait until list-targets shows them online, or pass --force (their chains then serve from the targets that are back, and these resync when they return)",
                    missing.join(", ")
                ),
            );
        }
    }
    txn.clear(&keys::chains_stopped())?;
    let mut changed = 0u32;
    for chain in &chains {
        let local = member_states(txn, chain).await?;
        let next = chain.recompute(|t| local.get(&t).copied().unwrap_or(LocalTargetState::Offline));
        if next != *chain {
            put_chain(txn, chain, &next).await?;
            changed += 1;
        }
    }
    tracing::warn!(chains = chains.len(), changed, force, "chains started again by operator");
    Ok(ChainsOutcome { chains_changed: changed, routing_version: bump_routing_version(txn).await? })
}

// ---- routing snapshot ----

/// A consistent snapshot of routing info (one read-only transaction).
pub async fn routing_snapshot(txn: &mut dyn Txn) -> Result<pb::RoutingInfo> {
    let routing_version = routing_version(txn).await?;
    let nodes: Vec<NodeRecord> = records::scan(txn, keys::nodes(), Snapshot).await?;
    let presences: Vec<PresenceRecord> = records::scan(txn, keys::presences(), Snapshot).await?;
    let tables: Vec<ChainTableRecord> = records::scan(txn, keys::chain_tables(), Snapshot).await?;
    let chains: Vec<ChainState> = records::scan(txn, keys::chains(), Snapshot).await?;
    let targets: Vec<TargetRecord> = records::scan(txn, keys::targets(), Snapshot).await?;
    let last_seen: HashMap<NodeId, u64> =
        presences.iter().map(|p| (p.node_id, p.last_seen_unix_ms)).collect();
    let public: HashMap<TargetId, _> = chains
        .iter()
        .flat_map(|c| c.members.iter().map(|m| (m.target_id, m.public_state)))
        .collect();
    Ok(pb::RoutingInfo {
        routing_version,
        nodes: nodes
            .iter()
            .map(|node| {
                let mut info = convert::node_to_pb(node);
                if node.node_type == NodeType::Mgmtd
                    && let Some(&seen) = last_seen.get(&node.node_id)
                {
                    info.last_heartbeat_unix_ms = seen;
                }
                info
            })
            .collect(),
        chain_tables: tables.iter().map(convert::chain_table_to_pb).collect(),
        chains: chains.iter().map(convert::chain_to_pb).collect(),
        targets: targets
            .iter()
            .map(|t| convert::target_to_pb(t, public.get(&t.target_id).copied()))
            .collect(),
    })
}

// ---- configs ----

async fn latest_config(txn: &mut dyn Txn, node_type: NodeType) -> Result<Option<ConfigRecord>> {
    records::last(txn, keys::configs(node_type), Snapshot).await
}

pub async fn set_config(
    txn: &mut dyn Txn,
    ctx: WriteCtx,
    node_type: NodeType,
    content: &str,
    description: &str,
) -> Result<u64> {
    ctx.check(txn).await?;
    if content.len() > CONFIG_BYTES_MAX {
        return refused(
            ErrorCode::InvalidConfig,
            format!("a config holds at most {CONFIG_BYTES_MAX} bytes"),
        );
    }
    check_text("description", description, TEXT_LEN_MAX)?;
    if let Err(error) = content.parse::<toml::Table>() {
        return refused(ErrorCode::InvalidConfig, format!("the config is not valid TOML: {error}"));
    }
    let last: Option<ConfigRecord> =
        records::last(txn, keys::configs(node_type), Serializable).await?;
    let version = last.map_or(0, |c| c.version) + 1;
    let record = ConfigRecord {
        node_type,
        version,
        content: content.to_string(),
        description: description.to_string(),
        created_unix_ms: ctx.now_unix_ms,
    };
    records::put(txn, &keys::config(node_type, version), &record)?;
    tracing::info!(%node_type, version, "config version stored");
    Ok(version)
}

/// Version 0 means the latest.
pub async fn get_config(
    txn: &mut dyn Txn,
    node_type: NodeType,
    version: u64,
) -> Result<ConfigRecord> {
    let record = if version == 0 {
        latest_config(txn, node_type).await?
    } else {
        records::get(txn, &keys::config(node_type, version), Snapshot).await?
    };
    match record {
        Some(record) => Ok(record),
        None if version == 0 => {
            refused(ErrorCode::ConfigNotFound, format!("no config stored for {node_type}"))
        }
        None => refused(
            ErrorCode::ConfigNotFound,
            format!("no config version {version} for {node_type}"),
        ),
    }
}

pub async fn list_config_versions(
    txn: &mut dyn Txn,
    node_type: NodeType,
) -> Result<Vec<ConfigRecord>> {
    records::scan(txn, keys::configs(node_type), Snapshot).await
}
