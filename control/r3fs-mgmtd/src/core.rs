//! [`Mgmtd`]: one mgmtd instance's logic over `Arc<dyn Kv>` and a [`Clock`], without gRPC.
//!
//! It keeps the instance's [`Role`] (from lease rounds), the primary's in-memory failure-detector
//! timers, the published routing version and a cache of the routing snapshot. Several instances
//! can share one KV in one process: the lease tests drive them with a manual clock by calling
//! [`Mgmtd::lease_tick`] and [`Mgmtd::failure_tick`] directly; the server calls the same two from
//! timers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use r3fs_kv::{Kv, RetryPolicy, Txn, retry};
use r3fs_rpc::mgmtd as pb;
use r3fs_types::{ErrorCode, NodeId};
use tokio::sync::watch;

use crate::auth::{self, Access};
use crate::clock::Clock;
use crate::error::{MgmtdError, Result};
use crate::lease::{self, Candidate, Fence, LeaseHolder, LeaseView};
use crate::records::{PresenceRecord, UserRecord};
use crate::store::{self, WriteCtx};

/// Settings of one instance (from [`crate::config::MgmtdConfig`]).
#[derive(Clone, Debug)]
pub struct MgmtdOptions {
    pub node_id: NodeId,
    /// gRPC address others reach this instance at.
    pub address: String,
    pub hostname: String,
    pub release_version: String,
    pub lease_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub routing_wait_max_ms: u64,
    pub retry: RetryPolicy,
}

/// What this instance is, as of its last lease round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No lease round has completed yet.
    Starting,
    /// Holds the lease; writes carry this fence.
    Primary { fence: Fence, holder: LeaseHolder },
    /// Another instance holds a live lease (`Some`), or none is known to (`None`).
    Follower { primary: Option<LeaseHolder> },
}

/// Per-node failure-detector entry (primary only): when the node was last heard from and the
/// heartbeat version then.
#[derive(Clone, Copy, Debug)]
struct Liveness {
    last_seen_unix_ms: u64,
    heartbeat_version: u64,
}

#[derive(Debug, Default)]
struct Detector {
    nodes: HashMap<NodeId, Liveness>,
    /// When the last failure tick ran: a tick that comes much later (process paused, clock jumped)
    /// restarts every timer rather than failing every node at once.
    last_tick_unix_ms: u64,
}

#[derive(Debug)]
pub struct Mgmtd {
    kv: Arc<dyn Kv>,
    clock: Arc<dyn Clock>,
    options: MgmtdOptions,
    me: Candidate,
    role: watch::Sender<Role>,
    routing_version: watch::Sender<u64>,
    detector: Mutex<Detector>,
    routing_cache: Mutex<Option<Arc<pb::RoutingInfo>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Holders only assign plain values; a panic elsewhere cannot leave them half-updated.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mgmtd {
    pub fn new(kv: Arc<dyn Kv>, clock: Arc<dyn Clock>, options: MgmtdOptions) -> Arc<Mgmtd> {
        let me = Candidate {
            node_id: options.node_id,
            instance: rand::random::<u64>(),
            address: options.address.clone(),
        };
        Arc::new(Mgmtd {
            kv,
            clock,
            options,
            me,
            role: watch::Sender::new(Role::Starting),
            routing_version: watch::Sender::new(0),
            detector: Mutex::new(Detector::default()),
            routing_cache: Mutex::new(None),
        })
    }

    pub fn options(&self) -> &MgmtdOptions {
        &self.options
    }

    pub fn candidate(&self) -> &Candidate {
        &self.me
    }

    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    pub fn now_unix_ms(&self) -> u64 {
        self.clock.now_unix_ms()
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn subscribe_role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn subscribe_routing(&self) -> watch::Receiver<u64> {
        self.routing_version.subscribe()
    }

    /// The fence for a write now, or NotPrimary (with the primary's address when known).
    pub fn fence(&self) -> Result<Fence> {
        match self.role() {
            Role::Primary { fence, .. } if self.now_unix_ms() < fence.expires_unix_ms => Ok(fence),
            Role::Primary { .. } | Role::Starting => {
                Err(MgmtdError::NotPrimary { primary_address: None })
            }
            Role::Follower { primary } => {
                Err(MgmtdError::NotPrimary { primary_address: primary.map(|h| h.address) })
            }
        }
    }

    fn publish_routing(&self, version: u64) {
        self.routing_version.send_if_modified(|current| {
            if version > *current {
                *current = version;
                true
            } else {
                false
            }
        });
    }

    // ---- lease and failure detection ----

    /// One lease round (see [`crate::lease`]); updates and returns the role.
    pub async fn lease_tick(&self) -> Result<Role> {
        let now = self.now_unix_ms();
        let presence = PresenceRecord {
            node_id: self.me.node_id,
            instance: self.me.instance,
            address: self.me.address.clone(),
            hostname: self.options.hostname.clone(),
            release_version: self.options.release_version.clone(),
            last_seen_unix_ms: now,
        };
        let round = lease::lease_round(
            &*self.kv,
            &self.options.retry,
            &self.me,
            &presence,
            now,
            self.options.lease_timeout_ms,
        )
        .await;
        let view = match round {
            Ok(view) => view,
            Err(error) => {
                // Keep the role while our lease is still valid locally; past it, stop acting.
                if let Role::Primary { fence, .. } = self.role()
                    && now >= fence.expires_unix_ms
                {
                    tracing::warn!(%error, "lease round failed and the lease ran out; stepping down");
                    self.role.send_replace(Role::Follower { primary: None });
                }
                return Err(error);
            }
        };
        if view.is_mine(&self.me) {
            self.on_lease_held(&view, now).await?;
        } else {
            let live = now < view.expires_unix_ms;
            let role = Role::Follower { primary: live.then(|| view.holder.clone()) };
            if matches!(self.role(), Role::Primary { .. }) {
                tracing::warn!(primary = %view.holder.node_id, "lost the mgmtd lease");
            }
            lock(&self.detector).nodes.clear();
            self.role.send_if_modified(|current| {
                let changed = *current != role;
                *current = role.clone();
                changed
            });
        }
        Ok(self.role())
    }

    async fn on_lease_held(&self, view: &LeaseView, now: u64) -> Result<()> {
        let fence = view.fence();
        let continuing = matches!(self.role(), Role::Primary { fence: old, .. }
            if old.epoch == fence.epoch && now < old.expires_unix_ms);
        if continuing {
            self.role
                .send_modify(|role| *role = Role::Primary { fence, holder: view.holder.clone() });
            return Ok(());
        }
        // A new term (or our lease lapsed and nobody took it): start failure detection afresh,
        // giving every node a full timeout to reach us, and learn the routing version.
        let (connected, version) = self
            .read(|txn| {
                Box::pin(async move {
                    let connected = store::connected_nodes(txn).await?;
                    let version = store::routing_version(txn).await?;
                    Ok((connected, version))
                })
            })
            .await?;
        {
            let mut detector = lock(&self.detector);
            detector.nodes = connected
                .into_iter()
                .map(|(node, heartbeat_version)| {
                    (node, Liveness { last_seen_unix_ms: now, heartbeat_version })
                })
                .collect();
            detector.last_tick_unix_ms = now;
        }
        *lock(&self.routing_cache) = None;
        self.publish_routing(version);
        // Listed as PRIMARY_MGMTD before anyone is told this instance is primary.
        self.sync_mgmtd_nodes(fence, view.holder.clone()).await?;
        tracing::info!(epoch = fence.epoch, node = %self.me.node_id, "became the primary mgmtd");
        self.role.send_replace(Role::Primary { fence, holder: view.holder.clone() });
        Ok(())
    }

    /// The primary's periodic duty: fail nodes silent for longer than the heartbeat timeout and
    /// mirror mgmtd instances' presence into node records. A no-op on a follower.
    pub async fn failure_tick(&self) -> Result<()> {
        let Role::Primary { holder, .. } = self.role() else { return Ok(()) };
        let now = self.now_unix_ms();
        let timeout = self.options.heartbeat_timeout_ms;
        let silent: Vec<(NodeId, u64)> = {
            let mut detector = lock(&self.detector);
            let paused = now.saturating_sub(detector.last_tick_unix_ms) > timeout;
            detector.last_tick_unix_ms = now;
            if paused {
                tracing::warn!(
                    "failure detector was not run for longer than the heartbeat timeout; restarting its timers"
                );
                for liveness in detector.nodes.values_mut() {
                    liveness.last_seen_unix_ms = now;
                }
            }
            detector
                .nodes
                .iter()
                .filter(|(_, l)| now.saturating_sub(l.last_seen_unix_ms) > timeout)
                .map(|(&node, l)| (node, l.heartbeat_version))
                .collect()
        };
        if !silent.is_empty() {
            let failed = silent.clone();
            let version = self
                .write(move |txn, ctx| {
                    let failed = failed.clone();
                    Box::pin(async move { store::mark_nodes_failed(txn, ctx, &failed).await })
                })
                .await?;
            let mut detector = lock(&self.detector);
            for (node, version) in &silent {
                // Remove only if no heartbeat arrived meanwhile.
                if detector.nodes.get(node).is_some_and(|l| l.heartbeat_version == *version) {
                    detector.nodes.remove(node);
                }
            }
            drop(detector);
            if let Some(version) = version {
                self.publish_routing(version);
            }
        }
        let fence = self.fence()?;
        self.sync_mgmtd_nodes(fence, holder).await
    }

    /// Mirrors the mgmtd instances' presence into node records under `fence`.
    async fn sync_mgmtd_nodes(&self, fence: Fence, holder: LeaseHolder) -> Result<()> {
        let lease_timeout = self.options.lease_timeout_ms;
        let version = self
            .write_fenced(fence, move |txn, ctx| {
                let holder = holder.clone();
                Box::pin(
                    async move { store::sync_mgmtd_nodes(txn, ctx, &holder, lease_timeout).await },
                )
            })
            .await?;
        if let Some(version) = version {
            self.publish_routing(version);
        }
        Ok(())
    }

    /// Gives up the lease on a clean shutdown.
    pub async fn release_lease(&self) -> Result<bool> {
        let released = lease::release(&*self.kv, &self.options.retry, &self.me).await?;
        self.role.send_replace(Role::Follower { primary: None });
        Ok(released)
    }

    /// Notes that `node` was heard from (after its register/heartbeat transaction committed).
    fn heard_from(&self, node: NodeId, heartbeat_version: u64) {
        let now = self.now_unix_ms();
        lock(&self.detector)
            .nodes
            .insert(node, Liveness { last_seen_unix_ms: now, heartbeat_version });
    }

    // ---- transactions ----

    /// Runs a write body as the primary: fenced, retried on conflicts.
    pub async fn write<T, F>(&self, body: F) -> Result<T>
    where
        T: Send,
        F: for<'a> FnMut(&'a mut dyn Txn, WriteCtx) -> BoxFuture<'a, Result<T>> + Send,
    {
        self.write_fenced(self.fence()?, body).await
    }

    /// [`Self::write`] under an explicit fence (taking office, before the role says primary).
    async fn write_fenced<T, F>(&self, fence: Fence, mut body: F) -> Result<T>
    where
        T: Send,
        F: for<'a> FnMut(&'a mut dyn Txn, WriteCtx) -> BoxFuture<'a, Result<T>> + Send,
    {
        let ctx = WriteCtx { fence, now_unix_ms: self.now_unix_ms() };
        retry::run(&*self.kv, &self.options.retry, move |txn| body(txn, ctx)).await
    }

    /// Runs a read-only body on one snapshot (never committed).
    pub async fn read<T, F>(&self, body: F) -> Result<T>
    where
        F: for<'a> FnOnce(&'a mut dyn Txn) -> BoxFuture<'a, Result<T>>,
    {
        let mut txn = self.kv.begin().await?;
        body(&mut *txn).await
    }

    // ---- requests ----

    /// The user behind `token` if it grants `access`.
    pub async fn authenticate(&self, token: Option<&str>, access: Access) -> Result<UserRecord> {
        let Some(token) = token else {
            return Err(MgmtdError::refused(
                ErrorCode::Unauthenticated,
                "missing token: send metadata `authorization: Bearer <token>`",
            ));
        };
        if token.len() > auth::TOKEN_LEN_MAX {
            return Err(MgmtdError::refused(ErrorCode::Unauthenticated, "token too long"));
        }
        let hash = auth::token_hash_hex(token);
        let user = self
            .read(move |txn| Box::pin(async move { store::resolve_token(txn, &hash).await }))
            .await?;
        if access == Access::Admin && !user.admin {
            return Err(MgmtdError::refused(
                ErrorCode::PermissionDenied,
                format!("user {} (uid {}) is not an admin", user.name, user.uid),
            ));
        }
        Ok(user)
    }

    pub async fn register_node(&self, spec: store::RegisterSpec) -> Result<store::RegisterOutcome> {
        let spec = Arc::new(spec);
        let outcome = self
            .write(move |txn, ctx| {
                let spec = spec.clone();
                Box::pin(async move { store::register_node(txn, ctx, &spec).await })
            })
            .await?;
        self.heard_from(outcome.node_id, outcome.last_heartbeat_version);
        self.publish_routing(outcome.routing_version);
        Ok(outcome)
    }

    pub async fn heartbeat(&self, spec: store::HeartbeatSpec) -> Result<store::HeartbeatOutcome> {
        let (node, version) = (spec.node_id, spec.heartbeat_version);
        let spec = Arc::new(spec);
        let outcome = self
            .write(move |txn, ctx| {
                let spec = spec.clone();
                Box::pin(async move { store::heartbeat(txn, ctx, &spec).await })
            })
            .await?;
        self.heard_from(node, version);
        self.publish_routing(outcome.routing_version);
        Ok(outcome)
    }

    /// Runs a routing-changing write body and publishes the version it returns.
    pub async fn write_routing<T, F>(&self, body: F) -> Result<T>
    where
        T: Send + RoutingVersioned,
        F: for<'a> FnMut(&'a mut dyn Txn, WriteCtx) -> BoxFuture<'a, Result<T>> + Send,
    {
        let value = self.write(body).await?;
        if let Some(version) = value.routing_version() {
            self.publish_routing(version);
        }
        Ok(value)
    }

    /// The routing snapshot at the published version or newer (cached per version).
    pub async fn routing(&self) -> Result<Arc<pb::RoutingInfo>> {
        let wanted = *self.routing_version.borrow();
        if let Some(cached) = lock(&self.routing_cache).clone()
            && cached.routing_version >= wanted
        {
            return Ok(cached);
        }
        let snapshot = Arc::new(self.fresh_routing().await?);
        self.publish_routing(snapshot.routing_version);
        let mut cache = lock(&self.routing_cache);
        if cache.as_ref().is_none_or(|c| c.routing_version <= snapshot.routing_version) {
            *cache = Some(snapshot.clone());
        }
        Ok(snapshot)
    }

    /// A snapshot read now, bypassing the cache (admin listings want current used bytes).
    pub async fn fresh_routing(&self) -> Result<pb::RoutingInfo> {
        self.read(|txn| Box::pin(async move { store::routing_snapshot(txn).await })).await
    }
}

/// Write results that may carry a new routing version to publish.
pub trait RoutingVersioned {
    fn routing_version(&self) -> Option<u64>;
}

impl RoutingVersioned for u64 {
    fn routing_version(&self) -> Option<u64> {
        Some(*self)
    }
}

impl<A> RoutingVersioned for (A, u64) {
    fn routing_version(&self) -> Option<u64> {
        Some(self.1)
    }
}

impl RoutingVersioned for store::ChainsOutcome {
    fn routing_version(&self) -> Option<u64> {
        Some(self.routing_version)
    }
}

impl RoutingVersioned for Option<u64> {
    fn routing_version(&self) -> Option<u64> {
        *self
    }
}

impl RoutingVersioned for UserRecord {
    fn routing_version(&self) -> Option<u64> {
        None
    }
}

/// Waits until `condition` holds for the watched value; false if the sender is gone first.
/// (Unlike `watch::Receiver::wait_for`, holds no borrow when it returns, so callers stay `Send`.)
pub async fn wait_until<T>(
    receiver: &mut watch::Receiver<T>,
    condition: impl Fn(&T) -> bool,
) -> bool {
    receiver.wait_for(condition).await.is_ok()
}
