//! One shard: a glommio executor thread that owns some targets and everything about them.
//!
//! The shard is the IO edge of its replicas. Its event sources are client connections (r3fs-wire
//! frames), peer connections (the chain protocol of [`crate::peer`]), storage completions, a
//! clock tick, and commands from the control thread (routing snapshots, writability, shutdown).
//! Each event becomes a replica [`Input`]; the replica's [`Output`]s become frames to peers,
//! storage tasks, and replies. State lives in one `Rc<RefCell<Shard>>`; no borrow is held across
//! an `.await`.

use crate::buf::read_payload_into;
use crate::config::StorageConfig;
use crate::peer;
use crate::routing::{RoutingSnapshot, TargetPlacement};
use crate::target::TargetStore;
use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use futures::{FutureExt, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use r3fs_chunk::dma::{DmaDevice, DmaDeviceConfig};
use r3fs_chunk::{ChunkStore, StoreConfig};
use r3fs_craq::{
    ChainRouting, FenceReason, Input, Output, PeerMessage, ReadOutcome, ReadRequest, Replica,
    ReplyToken, Update, UpdateTag, WriteOutcome, WriteRequest,
};
use r3fs_types::{
    ChainId, ChunkId, ClientId, ErrorCode, InodeId, LocalTargetState, NodeId, PublicTargetState,
    RequestId, TargetId,
};
use r3fs_wire::{
    BatchReadReply, BatchReadReplyItem, ChunkMeta as WireChunkMeta, Decoded, FrameHead,
    FrameLimits, GetChunkMetasReply, LastChunk, Message, Outcome, PayloadInfo, Pong,
    QueryLastChunkReply, RemoveChunksReply, UpdateKind, UpdateReply, encode_head,
};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Chunk sizes remembered per shard (the class a growing chunk jumps to).
const CHUNK_SIZES_MAX: usize = 1 << 16;
/// Client id of the shard's own updates (chunk removal on behalf of RemoveChunks).
const INTERNAL_CLIENT: ClientId = ClientId(u64::MAX);
/// How often a shard reports its targets to the control thread.
const REPORT_INTERVAL_MS: u64 = 250;
/// Bytes read ahead for a frame head: enough for any fixed-size message.
const HEAD_READ_BYTES: usize = 4096;

/// What the control thread tells a shard.
#[derive(Debug)]
pub enum ShardCommand {
    Routing(Arc<RoutingSnapshot>),
    /// True after too long without a successful heartbeat, false again once a heartbeat succeeded
    /// and the routing version its reply named is applied: while fenced, refuse client reads and
    /// writes (`Fenced`), since mgmtd may have reorganized the chains without this node.
    Fence(bool),
    Shutdown,
}

/// One target's state as its daemon reports it to mgmtd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetReport {
    pub target: TargetId,
    pub local_state: LocalTargetState,
    pub used_bytes: u64,
    /// The chain version at which `local_state` was decided (the claim's version, 0 = none).
    pub chain_version: u32,
    /// The store's configured capacity.
    pub total_bytes: u64,
    /// Set while this target resyncs its successor (a chain predecessor's report).
    pub resync: Option<ResyncReport>,
}

/// How far a target's resync of its successor has come (`mgmtd.proto` `ResyncProgress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncReport {
    /// The target being synced.
    pub target: TargetId,
    /// Chunks found to differ so far; final once the predecessor's metadata scan is complete.
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub bytes_done: u64,
    /// Wall-clock milliseconds when this shard first saw the resync running.
    pub started_unix_ms: u64,
}

/// What a shard tells the control thread.
#[derive(Debug)]
pub enum ShardEvent {
    Reports { shard: usize, reports: Vec<TargetReport> },
}

/// Everything a shard thread starts from.
#[derive(Debug)]
pub struct ShardSetup {
    pub index: usize,
    pub config: StorageConfig,
    pub node: NodeId,
    /// Existing targets of this shard found on disk at start: (target, directory, disk index).
    pub existing: Vec<(TargetId, PathBuf, u32)>,
    pub listen: SocketAddr,
    pub commands: mpsc::Receiver<ShardCommand>,
    pub events: mpsc::Sender<ShardEvent>,
    /// The routing version this shard has applied, for the control thread's unfencing rule.
    pub applied_routing: Arc<AtomicU64>,
    /// Receives the bound address once every existing target is open, or why start-up failed.
    pub ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
}

type Store = TargetStore<DmaDevice>;

struct TargetSlot {
    store: Rc<Store>,
    replica: Option<Replica>,
    /// Bumped whenever the replica is replaced: completions of the old one are dropped.
    generation: u64,
    local_state: LocalTargetState,
    /// Chain version at which `local_state` was decided (reported with it; 0 = none).
    claim_chain_version: u32,
    /// Opened at start-up from disk: the target may have missed writes while the daemon was down,
    /// and mgmtd may still list it as serving (a restart faster than the heartbeat timeout). It
    /// reports offline and gets no replica until mgmtd's routing has taken it out of the serving
    /// set (offline, waiting or last-serving) or it belongs to no chain; then it rejoins through
    /// the normal path (online -> waiting -> syncing -> resync -> up to date). Finding 5 of
    /// docs/design/simulation.md.
    rejoining: bool,
    /// The store failed: the target is offline until the daemon restarts.
    failed: bool,
    /// The resync of the successor this target runs: (replica generation, resync id, start in
    /// unix milliseconds), so a report names when it began.
    resync_started: Option<(u64, u64, u64)>,
}

/// Where a replica's answer goes.
enum Sink {
    Update { conn: Rc<Conn>, request_id: RequestId, held_bytes: u64, started: Instant, bytes: u64 },
    BatchItem { batch: Rc<RefCell<BatchState>>, index: usize },
    Remove { agg: Rc<RefCell<RemoveState>> },
}

struct BatchState {
    conn: Rc<Conn>,
    started: Instant,
    request_id: RequestId,
    items: Vec<(BatchReadReplyItem, Bytes)>,
    remaining: usize,
}

struct RemoveState {
    conn: Rc<Conn>,
    request_id: RequestId,
    remaining: usize,
    removed: u32,
    more: bool,
    refusal: Option<r3fs_craq::Refusal>,
}

/// A frame on its way to a client: head, payload pieces, and the credit it releases once sent.
struct OutFrame {
    head: BytesMut,
    payload: Vec<Bytes>,
    release_bytes: u64,
    release_request: bool,
}

/// The write side of a client connection and its in-flight window.
struct Conn {
    out: mpsc::UnboundedSender<OutFrame>,
    inflight_bytes: Cell<u64>,
    inflight_requests: Cell<u32>,
    reader_waker: RefCell<Option<Waker>>,
}

impl Conn {
    fn release(&self, bytes: u64, request: bool) {
        self.inflight_bytes.set(self.inflight_bytes.get() - bytes);
        if request {
            self.inflight_requests.set(self.inflight_requests.get() - 1);
        }
        if let Some(waker) = self.reader_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn send(&self, request_id: RequestId, message: Message, payload: Vec<Bytes>, held_bytes: u64) {
        let slices: Vec<&[u8]> = payload.iter().map(|b| &b[..]).collect();
        let mut head = BytesMut::with_capacity(128);
        let encoded = PayloadInfo::of_slices(&slices).and_then(|info| {
            encode_head(&mut head, request_id, &message, info, &FrameLimits::DEFAULT)
        });
        if let Err(error) = encoded {
            // A reply this build cannot encode is a bug here, not the client's fault.
            error!(%error, ?request_id, "cannot encode a reply; closing the connection");
            self.out.close_channel();
            return;
        }
        let frame = OutFrame { head, payload, release_bytes: held_bytes, release_request: true };
        if self.out.unbounded_send(frame).is_err() {
            // The writer is gone (connection closed): give the credit back ourselves.
            self.release(held_bytes, true);
        }
    }
}

struct Shard {
    index: usize,
    config: StorageConfig,
    node: NodeId,
    started: Instant,
    targets: BTreeMap<TargetId, TargetSlot>,
    creating: BTreeMap<TargetId, ()>,
    routing: Option<Arc<RoutingSnapshot>>,
    /// Pending answers, with the target whose replica owes them.
    sinks: HashMap<ReplyToken, (TargetId, Sink)>,
    next_token: u64,
    next_internal_seq: u64,
    peers: HashMap<SocketAddr, mpsc::Sender<PeerFrame>>,
    chunk_sizes: BTreeMap<ChunkId, u32>,
    /// No recent mgmtd contact: client reads and writes are refused (see [`ShardCommand::Fence`]).
    fenced: bool,
    applied_routing: Arc<AtomicU64>,
    /// Resync bandwidth limit: when the shard's next full-chunk transfer may start.
    sync_pacer: crate::pace::ResyncPacer,
    /// Resync transfers (successor, chunk) queued to a peer writer and not yet written: a resend
    /// of one of them is dropped instead of queued (and paced) again, or the replica's resend
    /// timer would book the bandwidth budget many times over for one transfer waiting its turn.
    sync_queued: Rc<RefCell<std::collections::HashSet<(TargetId, ChunkId)>>>,
    connections: u32,
    closing: bool,
}

/// Spawns a task on this shard, deferred: glommio's `spawn_local` polls a new task at once, which
/// would re-enter the shard state while the spawner still holds it. Tasks spawned through
/// `spawn_local_into` are only scheduled.
fn spawn(future: impl std::future::Future<Output = ()> + 'static) {
    let queue = glommio::executor().current_task_queue();
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(error) => error!(%error, "cannot spawn a shard task"),
    }
}

type ShardRc = Rc<RefCell<Shard>>;

fn now_ms(shard: &Shard) -> u64 {
    shard.started.elapsed().as_millis() as u64
}

/// Runs a shard until shutdown. Call inside its glommio executor.
pub async fn run(setup: ShardSetup) {
    let ShardSetup {
        index,
        config,
        node,
        existing,
        listen,
        mut commands,
        events,
        applied_routing,
        ready,
    } = setup;
    let listener = match TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(error) => {
            let _ = ready
                .send(Err(format!("shard {index}: bind data-plane address {listen}: {error}")));
            return;
        }
    };
    let bound = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            let _ = ready.send(Err(format!("shard {index}: local address: {error}")));
            return;
        }
    };
    let shard = Rc::new(RefCell::new(Shard {
        index,
        config: config.clone(),
        node,
        started: Instant::now(),
        targets: BTreeMap::new(),
        creating: BTreeMap::new(),
        routing: None,
        sinks: HashMap::new(),
        next_token: 1,
        next_internal_seq: 1,
        peers: HashMap::new(),
        chunk_sizes: BTreeMap::new(),
        fenced: false,
        applied_routing,
        sync_pacer: crate::pace::ResyncPacer::new(config.resync_bytes_per_sec, Instant::now()),
        sync_queued: Rc::new(RefCell::new(std::collections::HashSet::new())),
        connections: 0,
        closing: false,
    }));
    for (target, dir, _disk_index) in existing {
        match open_store(&dir, &config).await {
            Ok(store) => {
                info!(shard = index, %target, dir = %dir.display(), "target opened");
                insert_target(&shard, target, store, LocalTargetState::Offline, true);
            }
            Err(message) => {
                let _ = ready.send(Err(format!("target {target} in {}: {message}", dir.display())));
                return;
            }
        }
    }
    let _ = ready.send(Ok(bound));

    spawn(accept_loop(shard.clone(), listener));
    spawn(tick_loop(shard.clone()));
    spawn(report_loop(shard.clone(), events));

    while let Some(command) = commands.next().await {
        match command {
            ShardCommand::Routing(snapshot) => on_routing(&shard, snapshot),
            ShardCommand::Fence(fenced) => {
                let mut s = shard.borrow_mut();
                if s.fenced != fenced {
                    warn!(
                        shard = index,
                        fenced,
                        "client reads and writes {}",
                        if fenced { "refused (no mgmtd contact)" } else { "resume" }
                    );
                }
                s.fenced = fenced;
            }
            ShardCommand::Shutdown => break,
        }
    }
    shutdown(&shard).await;
}

/// Opens (creating if needed) a target directory's chunk store and starts its flusher.
async fn open_store(dir: &std::path::Path, config: &StorageConfig) -> Result<Store, String> {
    let device = DmaDevice::open(dir, &DmaDeviceConfig { io_memory_bytes: config.io_memory_bytes })
        .await
        .map_err(|e| e.to_string())?;
    let store_config: StoreConfig = config.store.clone();
    let (store, flusher) =
        ChunkStore::open(device, store_config).await.map_err(|e| e.to_string())?;
    spawn(flusher.run());
    Ok(TargetStore::new(store, config.replica.chunk_size_bytes_max))
}

fn insert_target(
    shard: &ShardRc,
    target: TargetId,
    store: Store,
    local_state: LocalTargetState,
    rejoining: bool,
) {
    let mut s = shard.borrow_mut();
    s.targets.insert(
        target,
        TargetSlot {
            store: Rc::new(store),
            replica: None,
            generation: 0,
            local_state,
            claim_chain_version: 0,
            rejoining,
            failed: false,
            resync_started: None,
        },
    );
    if let Some(routing) = s.routing.clone() {
        apply_routing(shard, &mut s, &routing, target);
    }
}

async fn shutdown(shard: &ShardRc) {
    let (index, drain_ms) = {
        let mut s = shard.borrow_mut();
        s.closing = true;
        (s.index, s.config.shutdown_drain_ms)
    };
    let deadline = Instant::now() + Duration::from_millis(drain_ms);
    loop {
        let busy = shard
            .borrow()
            .targets
            .values()
            .filter(|t| t.replica.as_ref().is_some_and(|r| !r.is_quiescent()))
            .count();
        if busy == 0 {
            break;
        }
        if Instant::now() >= deadline {
            warn!(shard = index, busy, "shutdown: replicas still busy after the drain bound");
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let stores: Vec<(TargetId, Rc<Store>)> =
        shard.borrow_mut().targets.iter().map(|(t, slot)| (*t, slot.store.clone())).collect();
    for (target, store) in stores {
        // Close makes every queued commit durable (fdatasync of the metadata log).
        if let Err(error) = store.store().clone().close().await {
            error!(shard = index, %target, %error, "closing the chunk store failed");
        }
    }
    info!(shard = index, "shard stopped");
}

// ---------------------------------------------------------------------------------------------
// Routing and targets
// ---------------------------------------------------------------------------------------------

fn on_routing(shard: &ShardRc, snapshot: Arc<RoutingSnapshot>) {
    let mut s = shard.borrow_mut();
    if s.routing.as_ref().is_some_and(|r| r.version >= snapshot.version) {
        return;
    }
    s.routing = Some(snapshot.clone());
    let cores = s.config.cores as usize;
    let (node, index) = (s.node, s.index);
    let mine: Vec<(TargetId, TargetPlacement)> =
        snapshot.targets_of_shard(node, index, cores).map(|(t, p)| (t, *p)).collect();
    for (target, placement) in mine {
        if s.targets.contains_key(&target) {
            apply_routing(shard, &mut s, &snapshot, target);
        } else if !s.creating.contains_key(&target) && !s.closing {
            s.creating.insert(target, ());
            spawn(create_target(shard.clone(), target, placement));
        }
    }
    // Every replica of this shard has been handed its chain of this version.
    s.applied_routing.store(snapshot.version, Ordering::SeqCst);
}

/// Brings one open target in line with a routing snapshot: creates its replica once its chain
/// is known, replaces a fenced replica, and hands the chain to the replica.
fn apply_routing(shard: &ShardRc, s: &mut Shard, snapshot: &RoutingSnapshot, target: TargetId) {
    let Some(placement) = snapshot.targets.get(&target).copied() else { return };
    crate::metrics::public_state(target, placement.public_state);
    let replica_config = s.config.replica.clone();
    let index = s.index;
    let now = now_ms(s);
    let Some(slot) = s.targets.get_mut(&target) else { return };
    if slot.failed {
        return;
    }
    if slot.rejoining {
        let chain_version = snapshot.chains.get(&placement.chain).map(|c| c.chain_version);
        match placement.public_state {
            Some(PublicTargetState::Serving | PublicTargetState::Syncing) => {
                debug!(shard = index, %target, "restarted target still listed as serving or syncing; reporting offline");
                slot.local_state = LocalTargetState::Offline;
                slot.claim_chain_version = chain_version.map_or(0, |v| v.0);
                return;
            }
            _ => {
                info!(shard = index, %target, state = ?placement.public_state, "restarted target taken out by mgmtd; rejoining through resync");
                slot.rejoining = false;
                slot.local_state = LocalTargetState::Online;
            }
        }
    }
    let stale_chain = slot.replica.as_ref().is_some_and(|r| r.chain() != placement.chain);
    let fenced = slot.replica.as_ref().is_some_and(|r| r.fenced().is_some());
    let mut replaced = false;
    if slot.replica.is_none() || stale_chain || fenced {
        if fenced || stale_chain {
            info!(shard = index, %target, "restarting the replica (fenced or moved)");
        }
        match Replica::new(replica_config, target, placement.chain) {
            Ok(mut replica) => {
                replica.handle(Input::Tick { now_ms: now });
                replaced = slot.replica.replace(replica).is_some();
                slot.generation += 1;
            }
            Err(error) => {
                error!(shard = index, %target, %error, "invalid replica config");
                return;
            }
        }
    }
    // The local state mgmtd's chain state machine expects (docs/design/chain-state.md): up to
    // date while serving; online while waiting, offline or last-serving, so it can be picked to
    // sync (an up-to-date report would park a waiting target); while syncing, online until the
    // replica reports the resync done.
    let chain_version = snapshot.chains.get(&placement.chain).map_or(0, |c| c.chain_version.0);
    match placement.public_state {
        Some(PublicTargetState::Serving) => {
            slot.local_state = LocalTargetState::UpToDate;
            slot.claim_chain_version = chain_version;
        }
        Some(
            PublicTargetState::Waiting
            | PublicTargetState::Offline
            | PublicTargetState::LastServing,
        ) => {
            slot.local_state = LocalTargetState::Online;
            slot.claim_chain_version = chain_version;
        }
        Some(PublicTargetState::Syncing) | None => {}
    }
    if replaced {
        refuse_owed(s, target);
    }
    if let Some(chain) = snapshot.chains.get(&placement.chain) {
        let chain: ChainRouting = chain.clone();
        drive(shard, s, target, Input::Routing(chain));
    }
}

async fn create_target(shard: ShardRc, target: TargetId, placement: TargetPlacement) {
    let (config, index) = {
        let s = shard.borrow();
        (s.config.clone(), s.index)
    };
    let result = async {
        let path = config
            .target_paths
            .get(placement.disk_index as usize)
            .ok_or_else(|| format!("disk index {} has no target path", placement.disk_index))?;
        let dir = path.join(target_dir_name(target));
        if !dir.exists() {
            let count = count_targets(path).map_err(|e| format!("list {}: {e}", path.display()))?;
            if count >= config.targets_per_path as usize {
                return Err(format!(
                    "{} already holds {count} targets (targets_per_path = {})",
                    path.display(),
                    config.targets_per_path
                ));
            }
        }
        open_store(&dir, &config).await.map(|store| (store, dir))
    }
    .await;
    shard.borrow_mut().creating.remove(&target);
    match result {
        Ok((store, dir)) => {
            info!(shard = index, %target, dir = %dir.display(), chain = %placement.chain, "target created");
            // A target created while its chain is not uploaded yet is trivially up to date; one
            // added to an existing chain must be synced first.
            let state = if placement.public_state.is_none() {
                LocalTargetState::UpToDate
            } else {
                LocalTargetState::Online
            };
            insert_target(&shard, target, store, state, false);
        }
        Err(message) => error!(shard = index, %target, %message, "cannot create target"),
    }
}

pub fn target_dir_name(target: TargetId) -> String {
    format!("target-{}", target.0)
}

pub fn parse_target_dir_name(name: &str) -> Option<TargetId> {
    name.strip_prefix("target-")?.parse::<u64>().ok().filter(|id| *id != 0).map(TargetId)
}

pub fn count_targets(path: &std::path::Path) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir(path)? {
        if entry?.file_name().to_str().and_then(parse_target_dir_name).is_some() {
            count += 1;
        }
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------------
// Driving replicas
// ---------------------------------------------------------------------------------------------

/// Feeds one input to a target's replica and carries out its outputs.
fn drive(shard: &ShardRc, s: &mut Shard, target: TargetId, input: Input) {
    let Some(slot) = s.targets.get_mut(&target) else { return };
    let Some(replica) = slot.replica.as_mut() else { return };
    replica.handle(input);
    let outputs = replica.drain_outputs();
    let generation = slot.generation;
    let store = slot.store.clone();
    for output in outputs {
        match output {
            Output::Send { to, message } => send_peer(s, target, to, message),
            Output::Storage { op, request } => {
                let chunk_size = chunk_of(&request).and_then(|c| s.chunk_sizes.get(&c).copied());
                let shard = shard.clone();
                let store = store.clone();
                spawn(async move {
                    let result = store.execute(request, chunk_size).await;
                    let mut s = shard.borrow_mut();
                    let current =
                        s.targets.get(&target).is_some_and(|t| t.generation == generation);
                    if current {
                        drive(&shard, &mut s, target, Input::StorageDone { op, result });
                    }
                });
            }
            Output::WriteReply { token, outcome } => answer_write(s, token, outcome),
            Output::ReadReply { token, outcome } => answer_read(s, token, outcome),
            Output::SyncDone { chain_version } => {
                info!(shard = s.index, %target, %chain_version, "resync into this target done");
                if let Some(slot) = s.targets.get_mut(&target) {
                    slot.local_state = LocalTargetState::UpToDate;
                    slot.claim_chain_version = chain_version.0;
                }
            }
            Output::ChunkCorrupt { chunk } => {
                warn!(shard = s.index, %target, %chunk, "chunk failed its checksum on disk; refused and repairing from a chain peer");
                crate::metrics::chunk_corrupt(target);
            }
            Output::ChunkRepaired { chunk, from } => {
                info!(shard = s.index, %target, %chunk, %from, "corrupt chunk repaired with a verified copy from a chain peer");
                crate::metrics::chunk_repaired(target);
            }
            Output::ChunkUnrepairable { chunk } => {
                error!(shard = s.index, %target, %chunk, "corrupt chunk has no good copy on any serving peer: its data is lost here and reads stay refused");
                crate::metrics::chunk_unrepairable(target);
            }
            Output::Fenced { reason } => {
                let index = s.index;
                if let Some(slot) = s.targets.get_mut(&target) {
                    match &reason {
                        FenceReason::Routing { state } => {
                            info!(shard = index, %target, ?state, "replica fenced by routing; restarting it to rejoin through resync");
                            slot.local_state = LocalTargetState::Online;
                            // The routing that fenced it may stay current for long: mgmtd waits
                            // for this very target to sync, and a fenced replica answers nothing,
                            // so waiting for the next routing change would stall the resync for
                            // good. Restart the replica under the current routing right away,
                            // as that change would (the new replica starts without the stale
                            // work, so it does not fence again).
                            let shard = shard.clone();
                            spawn(async move {
                                let mut s = shard.borrow_mut();
                                if let Some(snapshot) = s.routing.clone() {
                                    apply_routing(&shard, &mut s, &snapshot, target);
                                }
                            });
                        }
                        FenceReason::Storage(error) => {
                            error!(shard = index, %target, %error, "storage failed; target offline");
                            slot.local_state = LocalTargetState::Offline;
                            slot.failed = true;
                        }
                        FenceReason::Contract(detail) => {
                            error!(shard = index, %target, %detail, "storage broke its contract; target offline");
                            slot.local_state = LocalTargetState::Offline;
                            slot.failed = true;
                        }
                    }
                }
            }
        }
    }
}

fn chunk_of(op: &r3fs_craq::StorageOp) -> Option<ChunkId> {
    use r3fs_craq::StorageOp::*;
    match op {
        GetMeta { chunk }
        | WritePending { chunk, .. }
        | Commit { chunk, .. }
        | Read { chunk, .. }
        | ReadFull { chunk, .. }
        | SyncReplace { chunk, .. }
        | AbortPending { chunk, .. } => Some(*chunk),
        ListMetas { .. } => None,
    }
}

fn remember_chunk_size(s: &mut Shard, chunk: ChunkId, chunk_size: u32) {
    if chunk_size == 0 {
        return;
    }
    if s.chunk_sizes.len() >= CHUNK_SIZES_MAX && !s.chunk_sizes.contains_key(&chunk) {
        s.chunk_sizes.pop_first();
    }
    s.chunk_sizes.insert(chunk, chunk_size);
}

fn send_peer(s: &mut Shard, from: TargetId, to: TargetId, message: PeerMessage) {
    let Some(address) = s.routing.as_ref().and_then(|r| r.address_of(to)) else {
        debug!(%to, "no address for peer target; the replica will resend");
        return;
    };
    let chunk_size = match &message {
        PeerMessage::Update(u) => s.chunk_sizes.get(&u.chunk).copied().unwrap_or(0),
        PeerMessage::SyncChunk(c) => s.chunk_sizes.get(&c.chunk).copied().unwrap_or(0),
        _ => 0,
    };
    let frame = match peer::encode(from, to, &message, chunk_size) {
        Ok(frame) => frame,
        Err(error) => {
            error!(%from, %to, %error, "cannot encode a peer message");
            return;
        }
    };
    let queue_len = s.config.peer_queue_len_max as usize;
    let connect_timeout = Duration::from_millis(s.config.connect_timeout_ms);
    let sync_key = match &message {
        PeerMessage::SyncChunk(c) => Some((to, c.chunk)),
        _ => None,
    };
    if let Some(key) = sync_key
        && s.sync_queued.borrow().contains(&key)
    {
        debug!(%to, chunk = %key.1, "resync transfer still queued; resend dropped");
        return;
    }
    let not_before = match sync_key {
        Some(_) => pace_resync(s, frame.1.len() as u64),
        None => None,
    };
    let frame =
        PeerFrame { head: frame.0, payload: frame.1, not_before, queued: Instant::now(), sync_key };
    let sync_queued = s.sync_queued.clone();
    let sender = s.peers.entry(address).or_insert_with(|| {
        let (tx, rx) = mpsc::channel(queue_len);
        spawn(peer_writer(address, rx, connect_timeout, sync_queued.clone()));
        tx
    });
    if let Some(key) = sync_key {
        sync_queued.borrow_mut().insert(key);
    }
    if let Err(error) = sender.try_send(frame) {
        if let Some(key) = sync_key {
            sync_queued.borrow_mut().remove(&key);
        }
        if error.is_disconnected() {
            s.peers.remove(&address);
        }
        crate::metrics::forward_dropped(address);
        debug!(%to, %address, "peer queue full or closed; dropped a message (the replica resends)");
    }
}

/// One chain-protocol frame queued to a peer: head, payload, and (for a paced resync transfer)
/// the instant before which it must not be written.
struct PeerFrame {
    head: Vec<u8>,
    payload: Bytes,
    not_before: Option<Instant>,
    /// When the frame was queued (forwarding latency).
    queued: Instant,
    /// A resync transfer's (successor, chunk), listed in the shard's `sync_queued` until written.
    sync_key: Option<(TargetId, ChunkId)>,
}

/// Paces a resync transfer of `bytes` against the shard's `resync_bytes_per_sec` budget: returns
/// when it may be written, and books its share of the budget.
fn pace_resync(s: &mut Shard, bytes: u64) -> Option<Instant> {
    s.sync_pacer.book(bytes, Instant::now())
}

/// Writes frames to one peer address, reconnecting as needed. Frames that cannot be sent are
/// dropped: every chain message is resent by its replica until acknowledged. A paced frame
/// holds back the frames queued behind it, so the link stays in order.
async fn peer_writer(
    address: SocketAddr,
    mut rx: mpsc::Receiver<PeerFrame>,
    connect_timeout: Duration,
    sync_queued: Rc<RefCell<std::collections::HashSet<(TargetId, ChunkId)>>>,
) {
    let mut stream: Option<TcpStream> = None;
    while let Some(PeerFrame { head, payload, not_before, queued, sync_key }) = rx.next().await {
        if let Some(at) = not_before {
            let now = Instant::now();
            if at > now {
                glommio::timer::sleep(at - now).await;
            }
        }
        if let Some(key) = sync_key {
            // Its turn has come: a resend from now on is a real retransmission.
            sync_queued.borrow_mut().remove(&key);
        }
        if stream.is_none() {
            match TcpStream::connect_timeout(address, connect_timeout).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(error) => {
                    crate::metrics::forward_dropped(address);
                    debug!(%address, %error, "peer connect failed; dropping a message");
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let mut result = s.write_all(&head).await;
        if result.is_ok() && !payload.is_empty() {
            result = s.write_all(&payload).await;
        }
        if let Err(error) = result {
            crate::metrics::forward_dropped(address);
            debug!(%address, %error, "peer write failed; reconnecting on the next message");
            stream = None;
        } else {
            crate::metrics::forwarded(address, queued);
        }
    }
}

async fn tick_loop(shard: ShardRc) {
    let interval = Duration::from_millis(shard.borrow().config.tick_interval_ms);
    loop {
        glommio::timer::sleep(interval).await;
        let mut s = shard.borrow_mut();
        let now = now_ms(&s);
        let targets: Vec<TargetId> = s.targets.keys().copied().collect();
        for target in targets {
            drive(&shard, &mut s, target, Input::Tick { now_ms: now });
        }
    }
}

async fn report_loop(shard: ShardRc, mut events: mpsc::Sender<ShardEvent>) {
    loop {
        let (index, reports) = {
            let mut s = shard.borrow_mut();
            let reports = s
                .targets
                .iter_mut()
                .map(|(target, slot)| {
                    let resync = resync_report(*target, slot);
                    let space = slot.store.store().space();
                    crate::metrics::report(
                        *target,
                        slot.local_state,
                        space.used_bytes,
                        space.capacity_bytes,
                    );
                    TargetReport {
                        target: *target,
                        local_state: slot.local_state,
                        chain_version: slot.claim_chain_version,
                        used_bytes: space.used_bytes,
                        total_bytes: space.capacity_bytes,
                        resync,
                    }
                })
                .collect();
            crate::metrics::buf_pool(s.index, r3fs_chunk::dma::buf_pool_stats());
            (s.index, reports)
        };
        // A full queue means the control thread has older reports pending: the next one
        // supersedes them anyway.
        let _ = events.try_send(ShardEvent::Reports { shard: index, reports });
        glommio::timer::sleep(Duration::from_millis(REPORT_INTERVAL_MS)).await;
    }
}

/// The resync `slot`'s replica runs, stamped with when this shard first saw it.
fn resync_report(target: TargetId, slot: &mut TargetSlot) -> Option<ResyncReport> {
    let Some(progress) = slot.replica.as_ref().and_then(|r| r.resync_progress()) else {
        slot.resync_started = None;
        return None;
    };
    let key = (slot.generation, progress.resync_id);
    let started_unix_ms = match slot.resync_started {
        Some((generation, id, started)) if (generation, id) == key => started,
        _ => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            slot.resync_started = Some((key.0, key.1, now));
            now
        }
    };
    debug!(
        %target,
        synced = %progress.successor,
        chunks_total = progress.chunks_total,
        scan_complete = progress.scan_complete,
        chunks_done = progress.chunks_done,
        bytes_done = progress.bytes_done,
        "resync progress reported"
    );
    Some(ResyncReport {
        target: progress.successor,
        chunks_total: progress.chunks_total,
        chunks_done: progress.chunks_done,
        bytes_done: progress.bytes_done,
        started_unix_ms,
    })
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

fn answer_write(s: &mut Shard, token: ReplyToken, outcome: WriteOutcome) {
    let Some((target, sink)) = s.sinks.remove(&token) else { return };
    match sink {
        Sink::Update { conn, request_id, held_bytes, started, bytes } => {
            let ok = matches!(outcome, WriteOutcome::Committed(_));
            crate::metrics::write_done(target, started, bytes, ok);
            let reply = match outcome {
                WriteOutcome::Committed(ok) => UpdateReply {
                    outcome: Outcome::Ok,
                    current_chain_version: None,
                    commit_version: ok.version,
                    chunk_length: ok.length_bytes,
                    chunk_crc32c: ok.checksum,
                },
                WriteOutcome::Refused(refusal) => UpdateReply {
                    outcome: Outcome::Failed(refusal.code),
                    current_chain_version: (refusal.code == ErrorCode::StaleChainVersion)
                        .then_some(refusal.chain_version),
                    ..UpdateReply::default()
                },
            };
            conn.send(request_id, reply.into(), Vec::new(), held_bytes);
        }
        Sink::Remove { agg } => {
            let mut state = agg.borrow_mut();
            match outcome {
                WriteOutcome::Committed(_) => state.removed += 1,
                WriteOutcome::Refused(refusal) => {
                    state.more = true;
                    state.refusal.get_or_insert(refusal);
                }
            }
            state.remaining -= 1;
            if state.remaining == 0 {
                finish_remove(&state);
            }
        }
        Sink::BatchItem { .. } => error!("a write reply for a read token"),
    }
}

/// Answers every request the replaced replica of `target` still owed: it never will.
fn refuse_owed(s: &mut Shard, target: TargetId) {
    let tokens: Vec<ReplyToken> =
        s.sinks.iter().filter(|(_, (t, _))| *t == target).map(|(token, _)| *token).collect();
    let refusal = r3fs_craq::Refusal {
        code: ErrorCode::TargetNotServing,
        chain_version: r3fs_types::ChainVersion(0),
    };
    for token in tokens {
        let is_read = matches!(s.sinks.get(&token), Some((_, Sink::BatchItem { .. })));
        if is_read {
            answer_read(s, token, ReadOutcome::Refused(refusal));
        } else {
            answer_write(s, token, WriteOutcome::Refused(refusal));
        }
    }
}

fn finish_remove(state: &RemoveState) {
    let reply = match (state.removed, state.refusal) {
        // Nothing removed and a refusal: report it (a stale chain version names the current one).
        (0, Some(refusal)) => RemoveChunksReply {
            outcome: Outcome::Failed(refusal.code),
            current_chain_version: (refusal.code == ErrorCode::StaleChainVersion)
                .then_some(refusal.chain_version),
            removed_count: 0,
            more: false,
        },
        _ => RemoveChunksReply {
            outcome: Outcome::Ok,
            current_chain_version: None,
            removed_count: state.removed,
            more: state.more,
        },
    };
    state.conn.send(state.request_id, reply.into(), Vec::new(), 0);
}

fn answer_read(s: &mut Shard, token: ReplyToken, outcome: ReadOutcome) {
    let Some((target, Sink::BatchItem { batch, index })) = s.sinks.remove(&token) else { return };
    let (bytes, ok) = match &outcome {
        ReadOutcome::Data(ok) => (ok.data.len() as u64, true),
        ReadOutcome::Refused(_) => (0, false),
    };
    crate::metrics::read_done(target, batch.borrow().started, bytes, ok);
    let item = match outcome {
        ReadOutcome::Data(ok) => (
            BatchReadReplyItem {
                outcome: Outcome::Ok,
                length: ok.data.len() as u32,
                crc32c: ok.checksum,
            },
            ok.data,
        ),
        ReadOutcome::Refused(refusal) => (
            BatchReadReplyItem { outcome: Outcome::Failed(refusal.code), length: 0, crc32c: 0 },
            Bytes::new(),
        ),
    };
    let mut state = batch.borrow_mut();
    state.items[index] = item;
    state.remaining -= 1;
    if state.remaining == 0 {
        finish_batch(&mut state);
    }
}

fn finish_batch(state: &mut BatchState) {
    let items = std::mem::take(&mut state.items);
    let reply =
        BatchReadReply { outcome: Outcome::Ok, items: items.iter().map(|(i, _)| *i).collect() };
    let payload: Vec<Bytes> =
        items.into_iter().map(|(_, data)| data).filter(|d| !d.is_empty()).collect();
    state.conn.send(state.request_id, reply.into(), payload, 0);
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

async fn accept_loop(shard: ShardRc, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        {
            let mut s = shard.borrow_mut();
            if s.closing || s.connections >= s.config.connections_max {
                warn!(shard = s.index, "connection refused: shard closing or at connections_max");
                continue;
            }
            s.connections += 1;
        }
        let _ = stream.set_nodelay(true);
        let shard2 = shard.clone();
        spawn(async move {
            serve_connection(shard2.clone(), stream).await;
            shard2.borrow_mut().connections -= 1;
        });
    }
}

/// Reads into `buf` until it holds at least `needed` bytes; reads at most up to `limit` bytes in
/// total so a payload that follows is not pulled into the head buffer. `Ok(false)`: clean EOF at a
/// frame boundary.
async fn fill(
    reader: &mut ReadHalf<TcpStream>,
    buf: &mut Vec<u8>,
    needed: usize,
    limit: usize,
) -> std::io::Result<bool> {
    while buf.len() < needed {
        let start = buf.len();
        let want = limit.max(needed);
        buf.resize(want, 0);
        let n = reader.read(&mut buf[start..want]).await;
        let n = match n {
            Ok(n) => n,
            Err(error) => {
                buf.truncate(start);
                return Err(error);
            }
        };
        buf.truncate(start + n);
        if n == 0 {
            if start == 0 {
                return Ok(false);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame",
            ));
        }
    }
    Ok(true)
}

/// Reads a frame's payload into pooled DMA memory the chunk store can write from
/// ([`crate::buf::read_payload_into`]): first the bytes already buffered behind the head, then
/// straight from the socket.
async fn read_payload(
    reader: &mut ReadHalf<TcpStream>,
    buf: &mut Vec<u8>,
    head_len: usize,
    payload_len: usize,
) -> std::io::Result<Bytes> {
    let buffered = (buf.len() - head_len).min(payload_len);
    let payload = read_payload_into(reader, &buf[head_len..head_len + buffered], payload_len).await;
    buf.drain(..head_len + buffered);
    payload
}

async fn serve_connection(shard: ShardRc, stream: TcpStream) {
    let (mut reader, writer) = stream.split();
    let mut buf: Vec<u8> = Vec::with_capacity(HEAD_READ_BYTES);
    match fill(&mut reader, &mut buf, 4, 4).await {
        Ok(true) => {}
        _ => return,
    }
    if buf[..4] == peer::PEER_MAGIC {
        serve_peer(shard, reader, buf).await;
    } else {
        serve_client(shard, reader, writer, buf).await;
    }
}

async fn serve_peer(shard: ShardRc, mut reader: ReadHalf<TcpStream>, mut buf: Vec<u8>) {
    let payload_max = r3fs_wire::PAYLOAD_LEN_MAX;
    loop {
        let head = loop {
            match peer::decode_head(&buf, payload_max) {
                Ok(Ok(head)) => break head,
                Ok(Err(needed)) => {
                    match fill(&mut reader, &mut buf, needed, needed.max(HEAD_READ_BYTES)).await {
                        Ok(true) => {}
                        _ => return,
                    }
                }
                Err(error) => {
                    warn!(%error, "bad peer frame; closing the connection");
                    return;
                }
            }
        };
        let (head_len, payload_len) = (head.head_len, head.payload_len as usize);
        let payload = match read_payload(&mut reader, &mut buf, head_len, payload_len).await {
            Ok(payload) => payload,
            Err(_) => return,
        };
        let frame = match head.finish(payload) {
            Ok(frame) => frame,
            Err(error) => {
                // The frame's extent was known, so the stream stays aligned; the sender resends.
                warn!(%error, "dropping a corrupt peer frame");
                continue;
            }
        };
        let mut s = shard.borrow_mut();
        if let PeerMessage::Update(update) = &frame.message {
            remember_chunk_size(&mut s, update.chunk, frame.chunk_size);
        }
        drive(&shard, &mut s, frame.to, Input::Peer { from: frame.from, message: frame.message });
    }
}

async fn serve_client(
    shard: ShardRc,
    mut reader: ReadHalf<TcpStream>,
    writer: WriteHalf<TcpStream>,
    mut buf: Vec<u8>,
) {
    let (out_tx, out_rx) = mpsc::unbounded();
    let conn = Rc::new(Conn {
        out: out_tx,
        inflight_bytes: Cell::new(0),
        inflight_requests: Cell::new(0),
        reader_waker: RefCell::new(None),
    });
    let (bytes_max, requests_max) = {
        let s = shard.borrow();
        (s.config.inflight_bytes_max, s.config.inflight_requests_max)
    };
    let writer_task = glommio::spawn_local(client_writer(conn.clone(), writer, out_rx));
    let limits = FrameLimits::DEFAULT;
    loop {
        let head: FrameHead = loop {
            match r3fs_wire::decode_head(&buf, &limits) {
                Ok(Decoded::Complete(head)) => break head,
                Ok(Decoded::NeedMore { needed_len }) => {
                    match fill(&mut reader, &mut buf, needed_len, needed_len.max(HEAD_READ_BYTES))
                        .await
                    {
                        Ok(true) => {}
                        _ => {
                            conn.out.close_channel();
                            let _ = writer_task.await;
                            return;
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, code = %error.code(), "bad frame from a client; closing the connection");
                    conn.out.close_channel();
                    let _ = writer_task.await;
                    return;
                }
            }
        };
        let payload_len = head.payload_len as u64;
        // The in-flight window: wait until this request fits.
        poll_fn(|cx| {
            let bytes = conn.inflight_bytes.get();
            let requests = conn.inflight_requests.get();
            if requests < requests_max && (bytes == 0 || bytes + payload_len <= bytes_max) {
                Poll::Ready(())
            } else {
                *conn.reader_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        conn.inflight_bytes.set(conn.inflight_bytes.get() + payload_len);
        conn.inflight_requests.set(conn.inflight_requests.get() + 1);
        let payload =
            match read_payload(&mut reader, &mut buf, head.head_len, payload_len as usize).await {
                Ok(payload) => payload,
                Err(_) => {
                    conn.out.close_channel();
                    let _ = writer_task.await;
                    return;
                }
            };
        if let Err(error) = head.verify_payload(&payload) {
            // The head was intact, so the stream is still aligned: refuse this request only.
            warn!(%error, request_id = ?head.request_id, "payload failed its checksum");
            refuse(&conn, &head.message, head.request_id, error.code(), payload_len);
            continue;
        }
        handle_request(&shard, &conn, head.request_id, head.message, payload, payload_len);
    }
}

async fn client_writer(
    conn: Rc<Conn>,
    mut writer: WriteHalf<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<OutFrame>,
) {
    let mut broken = false;
    while let Some(frame) = rx.next().await {
        if !broken {
            let mut result = writer.write_all(&frame.head).await;
            for piece in &frame.payload {
                if result.is_err() {
                    break;
                }
                result = writer.write_all(piece).await;
            }
            broken = result.is_err();
        }
        conn.release(frame.release_bytes, frame.release_request);
    }
    let _ = writer.close().now_or_never();
}

/// Answers a request with a failure of its kind.
fn refuse(conn: &Conn, message: &Message, request_id: RequestId, code: ErrorCode, held_bytes: u64) {
    let outcome = Outcome::Failed(code);
    let reply: Message = match message {
        Message::UpdateRequest(_) => UpdateReply { outcome, ..UpdateReply::default() }.into(),
        Message::BatchReadRequest(_) => BatchReadReply { outcome, items: Vec::new() }.into(),
        Message::QueryLastChunkRequest(_) => {
            QueryLastChunkReply { outcome, last_chunk: None }.into()
        }
        Message::RemoveChunksRequest(_) => {
            RemoveChunksReply { outcome, ..RemoveChunksReply::default() }.into()
        }
        Message::GetChunkMetasRequest(_) => {
            GetChunkMetasReply { outcome, ..GetChunkMetasReply::default() }.into()
        }
        Message::Ping(ping) => Pong { nonce: ping.nonce }.into(),
        // A reply sent to a server: answer with nothing but give the credit back.
        _ => {
            conn.release(held_bytes, true);
            return;
        }
    };
    conn.send(request_id, reply, Vec::new(), held_bytes);
}

/// The shard's target for `chain`, if it serves one.
fn target_for_chain(s: &Shard, chain: ChainId) -> Option<TargetId> {
    s.targets
        .iter()
        .find(|(_, slot)| slot.replica.as_ref().is_some_and(|r| r.chain() == chain))
        .map(|(t, _)| *t)
}

fn valid_chunk_size(chunk_size: u32, max: u32) -> bool {
    chunk_size.is_power_of_two() && (64 << 10..=max).contains(&chunk_size)
}

fn handle_request(
    shard: &ShardRc,
    conn: &Rc<Conn>,
    request_id: RequestId,
    message: Message,
    payload: Bytes,
    held: u64,
) {
    let mut s = shard.borrow_mut();
    match message {
        Message::UpdateRequest(request) => {
            let Some(target) = target_for_chain(&s, request.chain_id) else {
                return refuse(
                    conn,
                    &Message::UpdateRequest(request),
                    request_id,
                    ErrorCode::TargetNotFound,
                    held,
                );
            };
            let chunk_size_max = s.config.replica.chunk_size_bytes_max;
            let end = u64::from(request.offset) + u64::from(request.length);
            let code = if s.fenced {
                Some(ErrorCode::Fenced)
            } else if request.sending_target_id.is_some() {
                // Replicas speak the chain protocol, not client updates.
                Some(ErrorCode::InvalidArgument)
            } else if !valid_chunk_size(request.chunk_size, chunk_size_max)
                || end > u64::from(request.chunk_size)
                || (request.kind == UpdateKind::Write && request.length == 0)
            {
                Some(ErrorCode::InvalidArgument)
            } else {
                None
            };
            if let Some(code) = code {
                return refuse(conn, &Message::UpdateRequest(request), request_id, code, held);
            }
            let update = match request.kind {
                UpdateKind::Write => Update::Write { offset_bytes: request.offset, data: payload },
                UpdateKind::Truncate => Update::Truncate { length_bytes: request.length },
                UpdateKind::Remove => Update::Remove,
                UpdateKind::FullReplace => Update::Replace { data: payload },
                // Grow to at least the end of the range (checked against the chunk size above).
                UpdateKind::Extend => Update::Extend { length_bytes: end as u32 },
            };
            remember_chunk_size(&mut s, request.chunk_id, request.chunk_size);
            let token = ReplyToken(s.next_token);
            s.next_token += 1;
            let sink = Sink::Update {
                conn: conn.clone(),
                request_id,
                held_bytes: held,
                started: Instant::now(),
                bytes: u64::from(request.length),
            };
            s.sinks.insert(token, (target, sink));
            let write = WriteRequest {
                chain: request.chain_id,
                chain_version: request.chain_version,
                chunk: request.chunk_id,
                update,
                payload_checksum: request.payload_crc32c,
                tag: UpdateTag { client: request.client_id, channel: 0, seq: request.sequence },
            };
            drive(shard, &mut s, target, Input::ClientWrite { token, request: write });
        }
        Message::BatchReadRequest(request) => {
            if request.total_len() > u64::from(r3fs_wire::PAYLOAD_LEN_MAX)
                || request.items.is_empty()
            {
                return refuse(
                    conn,
                    &Message::BatchReadRequest(request),
                    request_id,
                    ErrorCode::InvalidArgument,
                    held,
                );
            }
            // The request carried no payload: its credit is returned with the reply.
            let batch = Rc::new(RefCell::new(BatchState {
                conn: conn.clone(),
                started: Instant::now(),
                request_id,
                items: vec![(BatchReadReplyItem::default(), Bytes::new()); request.items.len()],
                remaining: request.items.len(),
            }));
            for (index, item) in request.items.iter().enumerate() {
                // Fenced: mgmtd may already route this chain elsewhere, and a write acknowledged
                // there would be missing here (finding 3 of docs/design/simulation.md).
                let target = target_for_chain(&s, item.chain_id).filter(|_| !s.fenced);
                let Some(target) = target else {
                    let code = if s.fenced { ErrorCode::Fenced } else { ErrorCode::TargetNotFound };
                    let mut state = batch.borrow_mut();
                    state.items[index].0 =
                        BatchReadReplyItem { outcome: Outcome::Failed(code), length: 0, crc32c: 0 };
                    state.remaining -= 1;
                    continue;
                };
                let chain_version = s.targets[&target]
                    .replica
                    .as_ref()
                    .map(|r| r.chain_version())
                    .unwrap_or_default();
                let token = ReplyToken(s.next_token);
                s.next_token += 1;
                s.sinks.insert(token, (target, Sink::BatchItem { batch: batch.clone(), index }));
                let read = ReadRequest {
                    chain: item.chain_id,
                    chain_version,
                    chunk: item.chunk_id,
                    offset_bytes: item.offset,
                    length_bytes: item.length,
                };
                drive(shard, &mut s, target, Input::ClientRead { token, request: read });
            }
            let mut state = batch.borrow_mut();
            if state.remaining == 0 && !state.items.is_empty() {
                finish_batch(&mut state);
            }
        }
        Message::QueryLastChunkRequest(request) => {
            let target = target_for_chain(&s, request.chain_id);
            let Some(target) = target.filter(|_| !s.fenced) else {
                let code = if s.fenced { ErrorCode::Fenced } else { ErrorCode::TargetNotFound };
                return refuse(
                    conn,
                    &Message::QueryLastChunkRequest(request),
                    request_id,
                    code,
                    held,
                );
            };
            let store = s.targets[&target].store.clone();
            let last = last_chunk(
                &store,
                request.inode,
                request.chunk_index_begin,
                request.chunk_index_end,
            );
            let reply = QueryLastChunkReply { outcome: Outcome::Ok, last_chunk: last };
            conn.send(request_id, reply.into(), Vec::new(), held);
        }
        Message::RemoveChunksRequest(request) => {
            let Some(target) = target_for_chain(&s, request.chain_id) else {
                return refuse(
                    conn,
                    &Message::RemoveChunksRequest(request),
                    request_id,
                    ErrorCode::TargetNotFound,
                    held,
                );
            };
            if s.fenced {
                return refuse(
                    conn,
                    &Message::RemoveChunksRequest(request),
                    request_id,
                    ErrorCode::Fenced,
                    held,
                );
            }
            let slot = &s.targets[&target];
            let current = slot.replica.as_ref().map(|r| r.chain_version()).unwrap_or_default();
            if request.chain_version != current {
                let reply = RemoveChunksReply {
                    outcome: Outcome::Failed(ErrorCode::StaleChainVersion),
                    current_chain_version: Some(current),
                    ..RemoveChunksReply::default()
                };
                return conn.send(request_id, reply.into(), Vec::new(), held);
            }
            let limit = request.limit.clamp(1, 4096) as usize;
            let start = ChunkId::new(request.inode, request.chunk_index_begin);
            let chunks: Vec<ChunkId> = slot
                .store
                .store()
                .list(start, limit + 1)
                .into_iter()
                .map(|m| m.chunk)
                .take_while(|c| c.inode == request.inode && c.index < request.chunk_index_end)
                .collect();
            let more = chunks.len() > limit;
            let chunks: Vec<ChunkId> = chunks.into_iter().take(limit).collect();
            let agg = Rc::new(RefCell::new(RemoveState {
                conn: conn.clone(),
                request_id,
                remaining: chunks.len(),
                removed: 0,
                more,
                refusal: None,
            }));
            if chunks.is_empty() {
                finish_remove(&agg.borrow());
                conn.release(held, false);
                return;
            }
            for chunk in chunks {
                let token = ReplyToken(s.next_token);
                s.next_token += 1;
                let seq = s.next_internal_seq;
                s.next_internal_seq += 1;
                s.sinks.insert(token, (target, Sink::Remove { agg: agg.clone() }));
                let write = WriteRequest {
                    chain: request.chain_id,
                    chain_version: request.chain_version,
                    chunk,
                    update: Update::Remove,
                    payload_checksum: 0,
                    // One channel per removal: the shard's own removals never wait on each other.
                    tag: UpdateTag {
                        client: INTERNAL_CLIENT,
                        channel: (seq % u64::from(u32::MAX)) as u32,
                        seq,
                    },
                };
                drive(shard, &mut s, target, Input::ClientWrite { token, request: write });
            }
            conn.release(held, false);
        }
        Message::GetChunkMetasRequest(request) => {
            let Some(slot) = s.targets.get(&request.target_id) else {
                return refuse(
                    conn,
                    &Message::GetChunkMetasRequest(request),
                    request_id,
                    ErrorCode::TargetNotFound,
                    held,
                );
            };
            let limit = request.limit.clamp(1, r3fs_wire::CHUNK_METAS_MAX) as usize;
            let start = match request.start_after {
                None => ChunkId::new(InodeId(0), 0),
                Some(after) => match crate::target::next_chunk_id(after) {
                    Some(next) => next,
                    None => {
                        let reply = GetChunkMetasReply {
                            outcome: Outcome::Ok,
                            metas: Vec::new(),
                            more: false,
                        };
                        return conn.send(request_id, reply.into(), Vec::new(), held);
                    }
                },
            };
            let listed = slot.store.store().list(start, limit + 1);
            let more = listed.len() > limit;
            let metas = listed
                .into_iter()
                .take(limit)
                .filter_map(|m| {
                    m.committed.map(|c| WireChunkMeta {
                        chunk_id: m.chunk,
                        commit_version: c.version,
                        length: c.len,
                        crc32c: c.crc,
                    })
                })
                .collect();
            let reply = GetChunkMetasReply { outcome: Outcome::Ok, metas, more };
            conn.send(request_id, reply.into(), Vec::new(), held);
        }
        Message::Ping(ping) => {
            // Echo the payload: a cheap end-to-end check of the transport.
            let pieces = if payload.is_empty() { Vec::new() } else { vec![payload] };
            conn.send(request_id, Pong { nonce: ping.nonce }.into(), pieces, held);
        }
        other => refuse(conn, &other, request_id, ErrorCode::InvalidArgument, held),
    }
}

/// The committed chunk of `inode` with the highest index in `[begin, end)`.
fn last_chunk(store: &Store, inode: InodeId, begin: u64, end: u64) -> Option<LastChunk> {
    if begin >= end {
        return None;
    }
    let store = store.store();
    if let Some(meta) = store.last_chunk(inode)
        && (begin..end).contains(&meta.chunk.index)
    {
        return meta.committed.map(|c| LastChunk { index: meta.chunk.index, length: c.len });
    }
    // The file's last chunk lies past `end`: scan the range in pages.
    let mut found = None;
    let mut start = ChunkId::new(inode, begin);
    loop {
        let page = store.list(start, 4096);
        let mut last_seen = None;
        for meta in &page {
            if meta.chunk.inode != inode || meta.chunk.index >= end {
                return found;
            }
            if let Some(c) = meta.committed {
                found = Some(LastChunk { index: meta.chunk.index, length: c.len });
            }
            last_seen = Some(meta.chunk);
        }
        match last_seen.and_then(crate::target::next_chunk_id) {
            Some(next) if page.len() == 4096 => start = next,
            _ => return found,
        }
    }
}
