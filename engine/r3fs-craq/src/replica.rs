//! The replica of one target: a sans-IO state machine. It consumes [`Input`]s (client requests,
//! peer messages, storage completions, routing updates, clock ticks) and emits [`Output`]s (peer
//! messages, storage ops, client replies). It never blocks, never reads a clock, and iterates only
//! ordered maps, so the same inputs always give the same outputs.
//!
//! Per chunk, work is strictly serialized: one [`Work`] is active (at most one storage op in
//! flight for it), the rest wait in a bounded queue. Reads bypass the queue: the store answers
//! them atomically with the chunk's metadata, and a chunk with a pending version is not served.

use crate::config::{ConfigError, ReplicaConfig};
use crate::dedup::{DedupCheck, DedupTable};
use crate::message::{
    ChunkCopy, ForwardedUpdate, PeerMessage, ReadOk, ReadOutcome, ReadRequest, Refusal,
    RefuseReason, ReplyToken, UpdateAck, UpdateRefused, WriteOk, WriteOutcome, WriteRequest,
};
use crate::routing::{ChainRouting, View};
use crate::rules::{self, ForwardDecision, HeadDecision, ReadDecision};
use crate::storage::{OpId, PendingWrite, StorageOp, StorageResult, StoreError, Which};
use crate::types::{ChannelKey, ChunkMeta, ChunkState, Digest, Update, UpdateTag};
use bytes::Bytes;
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ErrorCode, PublicTargetState, TargetId,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Rounds over the chain's serving peers a repair makes before it gives up (each peer is asked
/// once per round, waiting `forward_retry_interval_ms` for its answer).
pub const REPAIR_ROUNDS_MAX: u32 = 3;
use tracing::{debug, error, warn};

/// Everything that can happen to a replica.
#[derive(Clone, Debug)]
pub enum Input {
    ClientWrite {
        token: ReplyToken,
        request: WriteRequest,
    },
    ClientRead {
        token: ReplyToken,
        request: ReadRequest,
    },
    Peer {
        from: TargetId,
        message: PeerMessage,
    },
    StorageDone {
        op: OpId,
        result: StorageResult,
    },
    /// The chain as mgmtd published it; older versions are ignored.
    Routing(ChainRouting),
    /// The edge's monotonic clock. Retries are driven by it; nothing else reads time.
    Tick {
        now_ms: u64,
    },
}

/// Everything a replica asks its edge to do.
#[derive(Clone, Debug)]
pub enum Output {
    Send {
        to: TargetId,
        message: PeerMessage,
    },
    Storage {
        op: OpId,
        request: StorageOp,
    },
    WriteReply {
        token: ReplyToken,
        outcome: WriteOutcome,
    },
    ReadReply {
        token: ReplyToken,
        outcome: ReadOutcome,
    },
    /// A resync into this target completed at this chain version: the daemon may report the
    /// target up to date in its next heartbeat.
    SyncDone {
        chain_version: ChainVersion,
    },
    /// A chunk failed its checksum in storage: report it (the read was refused). The replica
    /// repairs it from a chain peer (see [`Output::ChunkRepaired`]).
    ChunkCorrupt {
        chunk: ChunkId,
    },
    /// A corrupted chunk was rewritten with `from`'s copy, verified against this replica's own
    /// committed metadata, at the same committed version.
    ChunkRepaired {
        chunk: ChunkId,
        from: TargetId,
    },
    /// No serving peer had a good copy of the committed version: the chunk stays refused (its
    /// data is lost here until a later repair succeeds). Never zeroed or replaced by anything
    /// unverified.
    ChunkUnrepairable {
        chunk: ChunkId,
    },
    /// The replica stopped for good (see [`FenceReason`]); the daemon should take the target
    /// offline and restart it through resync.
    Fenced {
        reason: FenceReason,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceReason {
    /// Mgmtd lists the target as offline / last-serving, or not at all: it may be cut off from the
    /// cluster, and acting on its old view could serve stale data.
    Routing { state: Option<PublicTargetState> },
    /// Storage failed in a way that leaves this replica's state unknown.
    Storage(StoreError),
    /// Storage answered something the contract does not allow.
    Contract(String),
}

/// A unit of per-chunk work.
#[derive(Debug)]
struct Work {
    kind: WorkKind,
    /// Clients waiting for this update's outcome (the original request and attached retries).
    replies: Vec<ReplyToken>,
    /// Payload bytes accounted against `held_payload_bytes_max`.
    held_bytes: u64,
}

#[derive(Debug)]
enum WorkKind {
    /// Head: a client write to order.
    Client(WriteRequest),
    /// Middle or tail: an update from the predecessor.
    Forward { from: TargetId, update: ForwardedUpdate },
    /// Head: roll forward a pending version no in-memory update owns.
    Resolve { from_scan: bool },
    /// Syncing target: set a chunk to the predecessor's committed state.
    SyncApply { from: TargetId, sync: ChunkCopy },
    /// Predecessor: send this chunk's committed state to the syncing successor.
    SyncTransfer { resync_id: u64 },
    /// Any replica: the committed copy failed its checksum; fetch a good one from a chain peer.
    Repair,
}

#[derive(Clone, Debug)]
enum Phase {
    LoadMeta,
    WritePending,
    /// Reading a whole version to send it as a full replace.
    ReadForForward {
        which: Which,
    },
    AwaitAck {
        to: TargetId,
        resend_at_ms: u64,
        post_commit: bool,
    },
    Commit,
    SyncReplace,
    ReadForSync,
    AwaitSyncAck {
        to: TargetId,
        resend_at_ms: u64,
        message: ChunkCopy,
    },
    /// Repair: asked `from` for its committed copy (attempt number `attempt`, counted over
    /// every peer asked).
    AwaitFetch {
        from: TargetId,
        resend_at_ms: u64,
        attempt: u32,
    },
    /// Repair: installing the verified copy at the committed version.
    RepairReplace {
        from: TargetId,
    },
    /// The successor had no space for the update: dropping the pending version here before the
    /// write is refused upstream with `code`.
    AbortPending {
        code: ErrorCode,
    },
}

#[derive(Debug)]
struct Active {
    work: Work,
    phase: Phase,
    /// The storage op in flight for this work, if any.
    op: Option<OpId>,
    /// Once a pending version exists here: the update as this replica passes it on.
    update: Option<ForwardedUpdate>,
    /// The successor whose ack let this replica commit (`None` when it committed as tail).
    acked_by: Option<TargetId>,
    /// Set when the local commit completed.
    committed: Option<ChunkState>,
}

#[derive(Debug, Default)]
struct Slot {
    active: Option<Active>,
    queue: VecDeque<Work>,
}

#[derive(Debug)]
enum OpPurpose {
    Slot(ChunkId),
    Read {
        token: ReplyToken,
        request: ReadRequest,
    },
    DumpMeta {
        to: TargetId,
        chain_version: ChainVersion,
        after: Option<ChunkId>,
    },
    ResolveScan,
    ResyncScan {
        resync_id: u64,
    },
    /// Reading the committed copy a peer asked for to repair its own.
    Fetch {
        to: TargetId,
        chunk: ChunkId,
    },
}

/// The head's scan for pending versions to roll forward after it became head.
#[derive(Debug)]
struct ResolveScan {
    after: Option<ChunkId>,
    exhausted: bool,
    outstanding: usize,
}

#[derive(Debug)]
enum ResyncPhase {
    DumpRemote {
        after: Option<ChunkId>,
        resend_at_ms: u64,
    },
    ScanLocal {
        after: Option<ChunkId>,
        exhausted: bool,
        scanning: bool,
    },
    Done {
        resend_at_ms: u64,
    },
    Finished,
    /// Gave up (a bound was hit); the next routing change starts over.
    Failed,
}

/// This replica syncing its successor.
#[derive(Debug)]
struct ResyncOut {
    id: u64,
    successor: TargetId,
    chain_version: ChainVersion,
    phase: ResyncPhase,
    remote: BTreeMap<ChunkId, ChunkMeta>,
    transfers_outstanding: usize,
    /// Chunks found to differ so far (final once the local scan is exhausted).
    chunks_total: u64,
    /// Transfers the successor acknowledged, and their payload bytes.
    chunks_done: u64,
    bytes_done: u64,
}

/// How far this replica's resync of its successor has come (for the daemon's heartbeat).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    /// The target being synced.
    pub successor: TargetId,
    /// Names this run: a new routing starts a new resync with a new id.
    pub resync_id: u64,
    /// Chunks found to differ (full-chunk replaces or removals to send). The local metadata is
    /// compared page by page (`list_page_len` chunks), so this grows while `scan_complete` is
    /// false and is final once it is true.
    pub chunks_total: u64,
    pub scan_complete: bool,
    /// Transfers the successor acknowledged, and the payload bytes they carried.
    pub chunks_done: u64,
    pub bytes_done: u64,
}

/// Counters for tests, the simulator and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub writes_committed: u64,
    pub duplicate_writes_answered: u64,
    pub forwards_sent: u64,
    pub full_replaces_sent: u64,
    pub pending_resolved: u64,
    pub sync_transfers: u64,
    pub reads_not_committed: u64,
    pub chunks_repaired: u64,
    pub chunks_unrepairable: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    target: TargetId,
    chain: ChainId,
    routing: Option<ChainRouting>,
    view: Option<View>,
    now_ms: u64,
    next_op: u64,
    ops: BTreeMap<OpId, OpPurpose>,
    slots: BTreeMap<ChunkId, Slot>,
    /// Tags of updates queued or active here, so a client retry joins the update in flight.
    channels: BTreeMap<ChannelKey, (u64, ChunkId)>,
    dedup: DedupTable,
    held_payload_bytes: u64,
    reads_inflight: usize,
    resolve: Option<ResolveScan>,
    resync_out: Option<ResyncOut>,
    next_resync_id: u64,
    sync_done_reported: Option<ChainVersion>,
    /// Chunks whose last repair found no good copy: work that trips over their corruption again
    /// is not requeued behind another repair (bounded by `chunks_active_max`).
    unrepairable: BTreeSet<ChunkId>,
    fenced: Option<FenceReason>,
    outputs: Vec<Output>,
    stats: ReplicaStats,
}

impl Replica {
    pub fn new(
        config: ReplicaConfig,
        target: TargetId,
        chain: ChainId,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            dedup: DedupTable::new(config.dedup_entries_max),
            config,
            target,
            chain,
            routing: None,
            view: None,
            now_ms: 0,
            next_op: 0,
            ops: BTreeMap::new(),
            slots: BTreeMap::new(),
            channels: BTreeMap::new(),
            held_payload_bytes: 0,
            reads_inflight: 0,
            resolve: None,
            resync_out: None,
            next_resync_id: 0,
            sync_done_reported: None,
            unrepairable: BTreeSet::new(),
            fenced: None,
            outputs: Vec::new(),
            stats: ReplicaStats::default(),
        })
    }

    pub fn target(&self) -> TargetId {
        self.target
    }

    pub fn chain(&self) -> ChainId {
        self.chain
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    pub fn chain_version(&self) -> ChainVersion {
        self.view.map_or(ChainVersion(0), |v| v.chain_version)
    }

    pub fn fenced(&self) -> Option<&FenceReason> {
        self.fenced.as_ref()
    }

    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// The resync of the successor this replica is running, if any (finished or failed ones are
    /// not reported).
    pub fn resync_progress(&self) -> Option<ResyncProgress> {
        let r = self.resync_out.as_ref()?;
        let scan_complete = match r.phase {
            ResyncPhase::DumpRemote { .. } => false,
            ResyncPhase::ScanLocal { exhausted, .. } => exhausted,
            ResyncPhase::Done { .. } => true,
            ResyncPhase::Finished | ResyncPhase::Failed => return None,
        };
        Some(ResyncProgress {
            successor: r.successor,
            resync_id: r.id,
            chunks_total: r.chunks_total,
            scan_complete,
            chunks_done: r.chunks_done,
            bytes_done: r.bytes_done,
        })
    }

    /// Nothing in flight: no chunk work, no storage op, no scan or resync under way.
    pub fn is_quiescent(&self) -> bool {
        self.slots.is_empty()
            && self.ops.is_empty()
            && self.resolve.is_none()
            && self
                .resync_out
                .as_ref()
                .is_none_or(|r| matches!(r.phase, ResyncPhase::Finished | ResyncPhase::Failed))
    }

    /// Takes the outputs produced so far, in order.
    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Consumes one input; outputs accumulate until [`Replica::drain_outputs`].
    pub fn handle(&mut self, input: Input) {
        if let Input::Tick { now_ms } = input {
            self.now_ms = self.now_ms.max(now_ms);
            if self.fenced.is_none() {
                self.on_tick();
            }
            return;
        }
        if self.fenced.is_some() {
            match input {
                Input::ClientWrite { token, .. } => {
                    self.reply_write_refused(token, ErrorCode::TargetNotServing)
                }
                Input::ClientRead { token, .. } => {
                    self.reply_read_refused(token, ErrorCode::TargetNotServing)
                }
                _ => {}
            }
            return;
        }
        match input {
            Input::ClientWrite { token, request } => self.on_client_write(token, request),
            Input::ClientRead { token, request } => self.on_client_read(token, request),
            Input::Peer { from, message } => self.on_peer(from, message),
            Input::StorageDone { op, result } => self.on_storage_done(op, result),
            Input::Routing(routing) => self.on_routing(routing),
            Input::Tick { .. } => unreachable!("handled above"),
        }
    }

    // ----- small helpers -----

    fn refusal(&self, code: ErrorCode) -> Refusal {
        Refusal { code, chain_version: self.chain_version() }
    }

    fn reply_write_refused(&mut self, token: ReplyToken, code: ErrorCode) {
        let outcome = WriteOutcome::Refused(self.refusal(code));
        self.outputs.push(Output::WriteReply { token, outcome });
    }

    fn reply_read_refused(&mut self, token: ReplyToken, code: ErrorCode) {
        let outcome = ReadOutcome::Refused(self.refusal(code));
        self.outputs.push(Output::ReadReply { token, outcome });
    }

    fn send(&mut self, to: TargetId, message: PeerMessage) {
        self.outputs.push(Output::Send { to, message });
    }

    fn issue(&mut self, purpose: OpPurpose, request: StorageOp) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(op, purpose);
        self.outputs.push(Output::Storage { op, request });
        op
    }

    /// Issues a storage op on behalf of the chunk's active work and moves it to `phase`.
    fn issue_for(&mut self, chunk: ChunkId, phase: Phase, request: StorageOp) {
        let op = self.issue(OpPurpose::Slot(chunk), request);
        let active = self.active_mut(chunk).expect("issue_for needs an active work");
        active.op = Some(op);
        active.phase = phase;
    }

    fn active_mut(&mut self, chunk: ChunkId) -> Option<&mut Active> {
        self.slots.get_mut(&chunk).and_then(|s| s.active.as_mut())
    }

    fn resend_at(&self) -> u64 {
        self.now_ms + self.config.forward_retry_interval_ms
    }

    fn refuse_forward(&mut self, to: TargetId, update: &ForwardedUpdate, reason: RefuseReason) {
        debug!(target_id = %self.target, chunk = %update.chunk, version = %update.version, ?reason, "refuse update");
        let message = PeerMessage::Refused(UpdateRefused {
            chain: self.chain,
            chain_version: self.chain_version(),
            chunk: update.chunk,
            version: update.version,
            reason,
        });
        self.send(to, message);
    }

    fn register_tag(&mut self, tag: &UpdateTag, chunk: ChunkId) {
        self.channels.entry(tag.channel_key()).or_insert((tag.seq, chunk));
    }

    fn unregister_tag(&mut self, tag: &UpdateTag, chunk: ChunkId) {
        if self.channels.get(&tag.channel_key()) == Some(&(tag.seq, chunk)) {
            self.channels.remove(&tag.channel_key());
        }
    }

    /// Whether new work on `chunk` fits the bounds.
    fn admit(&self, chunk: ChunkId, bytes: u64) -> Result<(), ErrorCode> {
        match self.slots.get(&chunk) {
            None if self.slots.len() >= self.config.chunks_active_max => Err(ErrorCode::Busy),
            Some(slot) if slot.queue.len() >= self.config.chunk_queue_len_max => {
                Err(ErrorCode::ChunkBusy)
            }
            _ if self.held_payload_bytes + bytes > self.config.held_payload_bytes_max => {
                Err(ErrorCode::Busy)
            }
            _ => Ok(()),
        }
    }

    fn enqueue(&mut self, chunk: ChunkId, work: Work) {
        self.held_payload_bytes += work.held_bytes;
        self.slots.entry(chunk).or_default().queue.push_back(work);
        self.pump(chunk);
    }

    /// Starts the next queued work of an idle chunk; forgets the chunk when nothing is left.
    fn pump(&mut self, chunk: ChunkId) {
        loop {
            let Some(slot) = self.slots.get_mut(&chunk) else { return };
            if slot.active.is_some() {
                return;
            }
            let Some(work) = slot.queue.pop_front() else {
                self.slots.remove(&chunk);
                return;
            };
            if let WorkKind::SyncTransfer { resync_id } = work.kind
                && !self.resync_current(resync_id)
            {
                // Its resync was aborted: nothing to send.
                self.held_payload_bytes -= work.held_bytes;
                continue;
            }
            self.start(chunk, work);
        }
    }

    /// Every start issues exactly one storage op, so work never finishes re-entrantly here.
    fn start(&mut self, chunk: ChunkId, work: Work) {
        let (phase, request) = match &work.kind {
            WorkKind::Client(_) | WorkKind::Forward { .. } => {
                (Phase::LoadMeta, StorageOp::GetMeta { chunk })
            }
            WorkKind::Resolve { .. } => (
                Phase::ReadForForward { which: Which::Pending },
                StorageOp::ReadFull { chunk, which: Which::Pending },
            ),
            // The chunk's state decides whether the transfer is stale (see `on_meta_loaded`).
            WorkKind::SyncApply { .. } => (Phase::LoadMeta, StorageOp::GetMeta { chunk }),
            WorkKind::SyncTransfer { .. } => {
                (Phase::ReadForSync, StorageOp::ReadFull { chunk, which: Which::Committed })
            }
            WorkKind::Repair => (Phase::LoadMeta, StorageOp::GetMeta { chunk }),
        };
        let slot = self.slots.get_mut(&chunk).expect("start on a known chunk");
        slot.active = Some(Active {
            work,
            phase: Phase::LoadMeta,
            op: None,
            update: None,
            acked_by: None,
            committed: None,
        });
        self.issue_for(chunk, phase, request);
    }

    /// Ends the chunk's active work (its outcome already sent) and starts the next.
    fn finish(&mut self, chunk: ChunkId) {
        let Some(active) = self.slots.get_mut(&chunk).and_then(|s| s.active.take()) else {
            return;
        };
        if let Some(op) = active.op {
            self.ops.remove(&op);
        }
        self.held_payload_bytes -= active.work.held_bytes;
        let tag = match &active.work.kind {
            WorkKind::Client(request) => Some(request.tag),
            WorkKind::Forward { update, .. } => update.tag,
            _ => active.update.as_ref().and_then(|u| u.tag),
        };
        if let Some(tag) = tag {
            self.unregister_tag(&tag, chunk);
        }
        match active.work.kind {
            WorkKind::Resolve { from_scan: true } => self.resolve_work_done(),
            WorkKind::SyncTransfer { resync_id } => self.transfer_done(resync_id),
            _ => {}
        }
        self.pump(chunk);
    }

    /// Refuses every waiting client and forgets all chunk work.
    fn drop_all_work(&mut self, code: ErrorCode) {
        let slots = std::mem::take(&mut self.slots);
        for (_, slot) in slots {
            for work in slot.active.map(|a| a.work).into_iter().chain(slot.queue) {
                for token in work.replies {
                    self.reply_write_refused(token, code);
                }
            }
        }
        self.ops.retain(|_, p| {
            !matches!(p, OpPurpose::Slot(_) | OpPurpose::ResolveScan | OpPurpose::ResyncScan { .. })
        });
        self.channels.clear();
        self.held_payload_bytes = 0;
        self.resolve = None;
        self.resync_out = None;
    }

    fn fence(&mut self, reason: FenceReason) {
        error!(target_id = %self.target, chain = %self.chain, ?reason, "replica fenced");
        self.drop_all_work(ErrorCode::TargetNotServing);
        let ops = std::mem::take(&mut self.ops);
        for (_, purpose) in ops {
            if let OpPurpose::Read { token, .. } = purpose {
                self.reply_read_refused(token, ErrorCode::TargetNotServing);
            }
        }
        self.reads_inflight = 0;
        self.fenced = Some(reason.clone());
        self.outputs.push(Output::Fenced { reason });
    }

    // ----- routing and time -----

    fn on_routing(&mut self, routing: ChainRouting) {
        if routing.chain != self.chain {
            warn!(target_id = %self.target, chain = %routing.chain, "routing for another chain ignored");
            return;
        }
        if let Err(e) = routing.validate() {
            error!(target_id = %self.target, error = %e, "invalid routing ignored");
            return;
        }
        if let Some(current) = &self.routing {
            if routing.chain_version < current.chain_version || routing == *current {
                return;
            }
            if routing.chain_version == current.chain_version {
                error!(target_id = %self.target, chain_version = %routing.chain_version, "two different chains at one chain version; kept the first");
                return;
            }
        }
        let view = routing.view_of(self.target);
        let was_active = self.view.is_some_and(|v| v.in_write_chain());
        let was_serving = self.view.is_some_and(|v| v.state == Some(PublicTargetState::Serving));
        debug!(target_id = %self.target, chain_version = %view.chain_version, ?view, "routing");
        self.routing = Some(routing);
        self.view = Some(view);
        if view.is_fenced() && was_active {
            // Declared dead while taking part: this replica may be cut off, so it stops for
            // good (3FS services exit here). A freshly started replica that finds itself
            // offline is simply recovering and waits for mgmtd to let it sync.
            self.fence(FenceReason::Routing { state: view.state });
            return;
        }
        if was_serving
            && matches!(view.state, Some(PublicTargetState::Syncing | PublicTargetState::Waiting))
        {
            // Mgmtd never turns a serving target into a syncing or waiting one directly: it went
            // offline first, in a chain version this replica missed (cut off from mgmtd). Writes
            // were acknowledged without it since, so its in-flight work is stale: as a syncing
            // tail it would commit a client write alone and acknowledge it. It stops like an
            // offline replica; the daemon rejoins the target through resync.
            self.fence(FenceReason::Routing { state: view.state });
            return;
        }
        if !view.in_write_chain() {
            // Offline, last-serving or waiting: out of the write path until mgmtd starts a sync.
            self.drop_all_work(ErrorCode::TargetNotServing);
            return;
        }
        // Updates already pending here go to the (possibly new) successor at the new chain
        // version; if this replica became the tail, they commit now.
        let awaiting: Vec<ChunkId> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.active.as_ref().is_some_and(|a| matches!(a.phase, Phase::AwaitAck { .. }))
            })
            .map(|(c, _)| *c)
            .collect();
        for chunk in awaiting {
            let post_commit = matches!(
                self.active_mut(chunk).map(|a| &a.phase),
                Some(Phase::AwaitAck { post_commit: true, .. })
            );
            self.send_update(chunk, post_commit);
        }
        self.maybe_start_resync();
        if view.is_head() && self.resolve.is_none() {
            self.resolve = Some(ResolveScan { after: None, exhausted: false, outstanding: 0 });
            self.resolve_next_page();
        }
    }

    fn on_tick(&mut self) {
        let now = self.now_ms;
        // (chunk, whether it waits for an update ack rather than a sync ack)
        let due: Vec<(ChunkId, bool)> = self
            .slots
            .iter()
            .filter_map(|(chunk, s)| match s.active.as_ref().map(|a| &a.phase) {
                Some(Phase::AwaitAck { resend_at_ms, .. }) if *resend_at_ms <= now => {
                    Some((*chunk, true))
                }
                Some(Phase::AwaitSyncAck { resend_at_ms, .. }) if *resend_at_ms <= now => {
                    Some((*chunk, false))
                }
                _ => None,
            })
            .collect();
        let fetches_due: Vec<ChunkId> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.active.as_ref().is_some_and(
                    |a| matches!(a.phase, Phase::AwaitFetch { resend_at_ms, .. } if resend_at_ms <= now),
                )
            })
            .map(|(c, _)| *c)
            .collect();
        for chunk in fetches_due {
            self.repair_ask_next(chunk);
        }
        for (chunk, is_update) in due {
            if is_update {
                let post_commit = matches!(
                    self.active_mut(chunk).map(|a| &a.phase),
                    Some(Phase::AwaitAck { post_commit: true, .. })
                );
                self.send_update(chunk, post_commit);
            } else {
                self.resend_sync_chunk(chunk);
            }
        }
        self.resync_tick();
    }

    // ----- client writes (head) -----

    fn check_client_write(&self, request: &WriteRequest) -> Result<(), ErrorCode> {
        if request.chain != self.chain {
            return Err(ErrorCode::ChainNotFound);
        }
        let Some(view) = &self.view else { return Err(ErrorCode::TargetNotServing) };
        if request.chain_version != view.chain_version {
            return Err(ErrorCode::StaleChainVersion);
        }
        if !view.is_head() {
            return Err(ErrorCode::NotHead);
        }
        if request.update.payload_checksum() != request.payload_checksum {
            return Err(ErrorCode::ChecksumMismatch);
        }
        if request.update.check_size(self.config.chunk_size_bytes_max).is_err() {
            return Err(ErrorCode::InvalidArgument);
        }
        Ok(())
    }

    fn on_client_write(&mut self, token: ReplyToken, request: WriteRequest) {
        if let Err(code) = self.check_client_write(&request) {
            return self.reply_write_refused(token, code);
        }
        match self.dedup.check(&request.tag) {
            DedupCheck::Committed { chunk, ok } => {
                if chunk != request.chunk {
                    return self.reply_write_refused(token, ErrorCode::InvalidArgument);
                }
                self.stats.duplicate_writes_answered += 1;
                let outcome = WriteOutcome::Committed(ok);
                return self.outputs.push(Output::WriteReply { token, outcome });
            }
            DedupCheck::Superseded { last_seq } => {
                warn!(target_id = %self.target, tag = ?request.tag, last_seq, "late duplicate of a superseded write");
                return self.reply_write_refused(token, ErrorCode::InvalidArgument);
            }
            DedupCheck::New => {}
        }
        let key = request.tag.channel_key();
        if let Some(&(seq, chunk)) = self.channels.get(&key) {
            if seq == request.tag.seq
                && chunk == request.chunk
                && self.attach(chunk, &request.tag, token)
            {
                return;
            }
            // One outstanding write per channel: the client must learn the first one's outcome.
            return self.reply_write_refused(token, ErrorCode::Busy);
        }
        let bytes = request.update.payload().len() as u64;
        if let Err(code) = self.admit(request.chunk, bytes) {
            return self.reply_write_refused(token, code);
        }
        self.register_tag(&request.tag, request.chunk);
        let chunk = request.chunk;
        let work =
            Work { kind: WorkKind::Client(request), replies: vec![token], held_bytes: bytes };
        self.enqueue(chunk, work);
    }

    /// Attaches a retry to the queued or active update with this tag.
    fn attach(&mut self, chunk: ChunkId, tag: &UpdateTag, token: ReplyToken) -> bool {
        let replies_max = self.config.replies_per_update_max;
        let Some(slot) = self.slots.get_mut(&chunk) else { return false };
        let matches = |work: &Work, update: Option<&ForwardedUpdate>| match &work.kind {
            WorkKind::Client(r) => r.tag == *tag,
            WorkKind::Forward { update, .. } => update.tag.as_ref() == Some(tag),
            _ => update.and_then(|u| u.tag.as_ref()) == Some(tag),
        };
        let work = match slot.active.as_mut() {
            Some(active) if matches(&active.work, active.update.as_ref()) => Some(&mut active.work),
            _ => slot.queue.iter_mut().find(|w| matches(w, None)),
        };
        match work {
            Some(work) if work.replies.len() < replies_max => {
                work.replies.push(token);
                true
            }
            _ => false,
        }
    }

    fn on_meta_loaded(&mut self, chunk: ChunkId, meta: ChunkMeta) {
        if let Err(detail) = meta.check() {
            return self.fence(FenceReason::Contract(detail));
        }
        let view = self.view.expect("works exist only with a routing");
        let active = self.active_mut(chunk).expect("active");
        match &active.work.kind {
            WorkKind::Client(request) => {
                let request = request.clone();
                if !view.is_head() {
                    let code = if request.chain_version == view.chain_version {
                        ErrorCode::NotHead
                    } else {
                        ErrorCode::StaleChainVersion
                    };
                    for token in std::mem::take(&mut active.work.replies) {
                        self.reply_write_refused(token, code);
                    }
                    return self.finish(chunk);
                }
                // The dedup table again: while this write waited in the queue, the work ahead
                // of it may have committed the same tag (a roll-forward of its pending version
                // that registered the tag after this retry was admitted). The chunk's last tag
                // alone misses it once another write committed in between.
                match self.dedup.check(&request.tag) {
                    DedupCheck::Committed { chunk: recorded, ok } if recorded == chunk => {
                        self.stats.duplicate_writes_answered += 1;
                        return self.reply_all(chunk, ok);
                    }
                    DedupCheck::Committed { .. } | DedupCheck::Superseded { .. } => {
                        warn!(target_id = %self.target, tag = ?request.tag, %chunk, "queued write is a duplicate of another write");
                        let active = self.active_mut(chunk).expect("active");
                        for token in std::mem::take(&mut active.work.replies) {
                            self.reply_write_refused(token, ErrorCode::InvalidArgument);
                        }
                        return self.finish(chunk);
                    }
                    DedupCheck::New => {}
                }
                if meta.committed.tag == Some(request.tag) {
                    // A retry of the write this chunk last committed (the dedup table forgot it,
                    // e.g. after a restart): answer from the chunk's metadata.
                    self.stats.duplicate_writes_answered += 1;
                    let ok = WriteOk::from_state(&meta.committed);
                    self.dedup.record(&request.tag, chunk, ok);
                    return self.reply_all(chunk, ok);
                }
                match rules::decide_head(&meta) {
                    HeadDecision::ResolvePending(version) => {
                        debug!(target_id = %self.target, %chunk, %version, "head resolves a pending version first");
                        let slot = self.slots.get_mut(&chunk).expect("slot");
                        let client = slot.active.take().expect("active").work;
                        slot.queue.push_front(client);
                        let work = Work {
                            kind: WorkKind::Resolve { from_scan: false },
                            replies: Vec::new(),
                            held_bytes: 0,
                        };
                        self.start(chunk, work);
                    }
                    HeadDecision::Assign(version) => {
                        let write = PendingWrite {
                            version,
                            chain_version: view.chain_version,
                            update: request.update.clone(),
                            tag: Some(request.tag),
                            expected: None,
                        };
                        let request = StorageOp::WritePending { chunk, write };
                        self.issue_for(chunk, Phase::WritePending, request);
                    }
                }
            }
            WorkKind::Forward { from, update } => {
                let (from, update) = (*from, update.clone());
                if update.chain_version != view.chain_version {
                    self.refuse_forward(from, &update, RefuseReason::StaleChainVersion);
                    return self.finish(chunk);
                }
                if view.predecessor != Some(from) {
                    self.refuse_forward(from, &update, RefuseReason::NotPredecessor);
                    return self.finish(chunk);
                }
                let full = update.update.is_full_replace();
                match rules::decide_forward(&meta, update.version, full) {
                    ForwardDecision::AlreadyApplied => {
                        if meta.committed.version == update.version
                            && let Some(tag) = update.tag
                            && meta.committed.tag == Some(tag)
                        {
                            self.dedup.record(&tag, chunk, WriteOk::from_state(&meta.committed));
                        }
                        let ack = PeerMessage::Ack(UpdateAck {
                            chain: self.chain,
                            chain_version: view.chain_version,
                            chunk,
                            version: update.version,
                            committed: meta.committed.digest(),
                        });
                        self.send(from, ack);
                        self.finish(chunk);
                    }
                    ForwardDecision::Gap { committed } => {
                        self.refuse_forward(from, &update, RefuseReason::VersionGap { committed });
                        self.finish(chunk);
                    }
                    ForwardDecision::Apply => {
                        let write = PendingWrite {
                            version: update.version,
                            chain_version: view.chain_version,
                            update: update.update.clone(),
                            tag: update.tag,
                            expected: Some(update.expected),
                        };
                        let request = StorageOp::WritePending { chunk, write };
                        self.issue_for(chunk, Phase::WritePending, request);
                    }
                }
            }
            WorkKind::SyncApply { from, sync } => {
                let (from, sync) = (*from, sync.clone());
                if sync.chain_version != view.chain_version {
                    // The resync it belonged to is over; the current one sends its own.
                    return self.finish(chunk);
                }
                let sync_version = sync.state.map_or(ChunkVersion(0), |s| s.version);
                if meta.committed.chain_version == view.chain_version
                    && meta.committed.version >= sync_version
                {
                    // The write path already committed this version or a newer one here at the
                    // current chain version, so the transfer (read before that write, and
                    // overtaken by it on a reconnected link) is older than what this replica
                    // holds: applying it would roll back an acknowledged write. Acknowledge it
                    // without applying.
                    debug!(target_id = %self.target, %chunk, %sync_version, committed = %meta.committed.version, "stale sync transfer ignored");
                    let message = PeerMessage::SyncAck {
                        chain: self.chain,
                        chain_version: view.chain_version,
                        chunk,
                    };
                    self.send(from, message);
                    return self.finish(chunk);
                }
                let request = StorageOp::SyncReplace { chunk, state: sync.state, data: sync.data };
                self.issue_for(chunk, Phase::SyncReplace, request);
            }
            WorkKind::Repair => self.on_repair_meta(chunk, meta),
            kind => {
                let detail = format!("metadata loaded for {kind:?}");
                self.fence(FenceReason::Contract(detail));
            }
        }
    }

    fn on_pending_written(&mut self, chunk: ChunkId, meta: ChunkMeta) {
        let view = self.view.expect("routing");
        let active = self.active_mut(chunk).expect("active");
        let Some(pending) = meta.pending else {
            return self
                .fence(FenceReason::Contract(format!("{chunk}: write left no pending version")));
        };
        let update = match &active.work.kind {
            WorkKind::Client(request) => ForwardedUpdate {
                chain: request.chain,
                chain_version: view.chain_version,
                chunk,
                version: pending.version,
                update: request.update.clone(),
                payload_checksum: request.payload_checksum,
                tag: Some(request.tag),
                expected: pending.digest(),
            },
            WorkKind::Forward { update, .. } => {
                debug_assert_eq!(update.expected, pending.digest(), "the store checked it");
                update.clone()
            }
            kind => {
                let detail = format!("pending written for {kind:?}");
                return self.fence(FenceReason::Contract(detail));
            }
        };
        active.update = Some(update);
        self.send_update(chunk, false);
    }

    /// Passes the active work's update on: to the successor, or to the local commit when this
    /// replica is the tail. With `post_commit`, it is already committed here and only the
    /// successor's ack is missing.
    fn send_update(&mut self, chunk: ChunkId, post_commit: bool) {
        let view = self.view.expect("routing");
        let resend_at_ms = self.resend_at();
        let chain = self.chain;
        let Some(active) = self.active_mut(chunk) else { return };
        let Some(update) = active.update.as_mut() else { return };
        let Some(successor) = view.successor else {
            if post_commit {
                return self.finish_committed(chunk);
            }
            let version = update.version;
            return self.issue_for(chunk, Phase::Commit, StorageOp::Commit { chunk, version });
        };
        if (successor.state == PublicTargetState::Syncing || post_commit)
            && !update.update.is_full_replace()
        {
            // A syncing successor may lack the base (3FS rule: full-chunk replace to syncing
            // targets); after a commit only the committed copy is left to send.
            let which = if post_commit { Which::Committed } else { Which::Pending };
            let request = StorageOp::ReadFull { chunk, which };
            return self.issue_for(chunk, Phase::ReadForForward { which }, request);
        }
        update.chain = chain;
        update.chain_version = view.chain_version;
        let message = PeerMessage::Update(update.clone());
        let full = update.update.is_full_replace();
        active.phase = Phase::AwaitAck { to: successor.target, resend_at_ms, post_commit };
        self.stats.forwards_sent += 1;
        if full {
            self.stats.full_replaces_sent += 1;
        }
        self.send(successor.target, message);
    }

    /// A whole version was read to send as a full replace.
    fn on_read_for_forward(&mut self, chunk: ChunkId, which: Which, meta: ChunkMeta, data: Bytes) {
        let state = match which {
            Which::Pending => meta.pending,
            Which::Committed => Some(meta.committed),
        };
        let (chain, chain_version) = (self.chain, self.chain_version());
        let active = self.slots.get_mut(&chunk).and_then(|s| s.active.as_mut()).expect("active");
        let from_scan = match active.work.kind {
            WorkKind::Resolve { from_scan } => Some(from_scan),
            _ => None,
        };
        let Some(state) = state else {
            if from_scan.is_some() {
                // Resolved meanwhile (or never there): nothing to roll forward.
                return self.finish(chunk);
            }
            return self
                .fence(FenceReason::Contract(format!("{chunk}: {which:?} version vanished")));
        };
        let update = if state.removed { Update::Remove } else { Update::Replace { data } };
        let payload_checksum = update.payload_checksum();
        match active.update.as_mut() {
            Some(existing) => {
                if existing.version != state.version {
                    let detail = format!(
                        "{chunk}: expected version {} found {}",
                        existing.version, state.version
                    );
                    return self.fence(FenceReason::Contract(detail));
                }
                existing.update = update;
                existing.payload_checksum = payload_checksum;
            }
            None => {
                // Resolve: the pending version becomes this replica's update, as a full replace,
                // with the tag it was written with (so retries of it are answered).
                self.stats.pending_resolved += 1;
                active.update = Some(ForwardedUpdate {
                    chain,
                    chain_version,
                    chunk,
                    version: state.version,
                    update,
                    payload_checksum,
                    tag: state.tag,
                    expected: state.digest(),
                });
                if let Some(tag) = state.tag {
                    self.register_tag(&tag, chunk);
                }
            }
        }
        self.send_update(chunk, which == Which::Committed);
    }

    fn on_ack(&mut self, from: TargetId, ack: UpdateAck) {
        let successor = self.view.and_then(|v| v.successor).map(|s| s.target);
        let target = self.target;
        let Some(active) = self.active_mut(ack.chunk) else { return };
        let Phase::AwaitAck { to, post_commit, .. } = active.phase else { return };
        let Some(update) = active.update.as_ref() else { return };
        if to != from || successor != Some(from) || ack.version != update.version {
            return; // stale: an old successor, or an older version
        }
        if ack.committed.version != update.version || !ack.committed.same_content(&update.expected)
        {
            // The successor holds other bytes at this version, or is ahead: never commit over
            // a divergence. The chunk stays pending here (reads refuse it) until an operator or
            // a resync repairs the successor; retries keep reporting it.
            error!(target_id = %target, chunk = %ack.chunk, expected = ?update.expected, got = ?ack.committed, "successor diverged");
            return;
        }
        active.acked_by = Some(from);
        if post_commit {
            return self.finish_committed(ack.chunk);
        }
        let request = StorageOp::Commit { chunk: ack.chunk, version: ack.version };
        self.issue_for(ack.chunk, Phase::Commit, request);
    }

    fn on_refused(&mut self, from: TargetId, refused: UpdateRefused) {
        let chunk = refused.chunk;
        debug!(target_id = %self.target, %chunk, reason = ?refused.reason, "update refused");
        let Some(active) = self.active_mut(chunk) else { return };
        let Phase::AwaitAck { to, post_commit, .. } = active.phase else { return };
        let Some(update) = active.update.as_ref() else { return };
        if to != from || refused.version != update.version {
            return;
        }
        match refused.reason {
            RefuseReason::VersionGap { .. } | RefuseReason::Diverged
                if !update.update.is_full_replace() =>
            {
                // The successor's base differs from ours: send the whole chunk instead.
                let which = if post_commit { Which::Committed } else { Which::Pending };
                let request = StorageOp::ReadFull { chunk, which };
                self.issue_for(chunk, Phase::ReadForForward { which }, request);
            }
            RefuseReason::Storage(ErrorCode::NoSpace) if !post_commit => {
                // The successor's disk is full: it staged nothing, and nothing below it can
                // hold this version committed (a replica stages a version again only after its
                // earlier work on it ended uncommitted, or after a restart, which goes through
                // resync). So no replica commits it: drop it here and refuse the write upstream,
                // hop by hop to the client, instead of resending it until space appears.
                let version = update.version;
                warn!(target_id = %self.target, %chunk, %version, successor = %from, "successor has no space: the write is refused");
                let request = StorageOp::AbortPending { chunk, version };
                self.issue_for(chunk, Phase::AbortPending { code: ErrorCode::NoSpace }, request);
            }
            // Everything else resolves itself (routing catches up, queues drain, a corrupted
            // message is sent again): retry at the next resend time.
            _ => {}
        }
    }

    fn on_committed(&mut self, chunk: ChunkId, meta: ChunkMeta) {
        let successor = self.view.and_then(|v| v.successor).map(|s| s.target);
        let active = self.active_mut(chunk).expect("active");
        let update = active.update.as_ref().expect("commit after a pending version");
        if meta.committed.version != update.version || meta.pending.is_some() {
            let detail = format!("{chunk}: commit of {} left {meta:?}", update.version);
            return self.fence(FenceReason::Contract(detail));
        }
        active.committed = Some(meta.committed);
        if let Some(successor) = successor
            && active.acked_by != Some(successor)
        {
            // The chain grew (or changed) while committing: the current successor has not
            // acknowledged this version, so it gets it before anyone is told it committed.
            return self.send_update(chunk, true);
        }
        self.finish_committed(chunk);
    }

    /// The update committed here and at every successor: tell whoever waits.
    fn finish_committed(&mut self, chunk: ChunkId) {
        let view = self.view.expect("routing");
        let active = self.active_mut(chunk).expect("active");
        let committed = active.committed.expect("committed");
        let is_forward = matches!(active.work.kind, WorkKind::Forward { .. });
        let ok = WriteOk::from_state(&committed);
        if let Some(tag) = committed.tag {
            self.dedup.record(&tag, chunk, ok);
        }
        if is_forward && let Some(predecessor) = view.predecessor {
            let ack = PeerMessage::Ack(UpdateAck {
                chain: self.chain,
                chain_version: view.chain_version,
                chunk,
                version: committed.version,
                committed: committed.digest(),
            });
            self.send(predecessor, ack);
        }
        self.stats.writes_committed += 1;
        self.reply_all(chunk, ok);
    }

    fn reply_all(&mut self, chunk: ChunkId, ok: WriteOk) {
        let active = self.active_mut(chunk).expect("active");
        for token in std::mem::take(&mut active.work.replies) {
            self.outputs.push(Output::WriteReply { token, outcome: WriteOutcome::Committed(ok) });
        }
        self.finish(chunk);
    }

    // ----- updates from the predecessor -----

    fn on_forward(&mut self, from: TargetId, update: ForwardedUpdate) {
        let Some(view) = self.view else {
            return self.refuse_forward(from, &update, RefuseReason::StaleChainVersion);
        };
        if update.chain_version != view.chain_version {
            return self.refuse_forward(from, &update, RefuseReason::StaleChainVersion);
        }
        if view.predecessor != Some(from) {
            return self.refuse_forward(from, &update, RefuseReason::NotPredecessor);
        }
        if update.update.payload_checksum() != update.payload_checksum {
            return self.refuse_forward(from, &update, RefuseReason::ChecksumMismatch);
        }
        if update.update.check_size(self.config.chunk_size_bytes_max).is_err() {
            let reason = RefuseReason::Storage(ErrorCode::InvalidArgument);
            return self.refuse_forward(from, &update, reason);
        }
        let chunk = update.chunk;
        if let Some(slot) = self.slots.get_mut(&chunk) {
            let same = |w: &Work| {
                matches!(&w.kind, WorkKind::Forward { update: u, .. }
                    if u.version == update.version && u.chain_version == update.chain_version)
            };
            if slot.active.as_ref().is_some_and(|a| same(&a.work)) {
                return; // a resend of the update in progress; it is acknowledged when done
            }
            if let Some(queued) = slot.queue.iter_mut().find(|w| same(w)) {
                // Keep the newest copy: the payload is the same version, possibly re-converted.
                let bytes = update.update.payload().len() as u64;
                self.held_payload_bytes = self.held_payload_bytes - queued.held_bytes + bytes;
                queued.held_bytes = bytes;
                queued.kind = WorkKind::Forward { from, update };
                return;
            }
        }
        let bytes = update.update.payload().len() as u64;
        if self.admit(chunk, bytes).is_err() {
            return self.refuse_forward(from, &update, RefuseReason::Busy);
        }
        if let Some(tag) = update.tag {
            self.register_tag(&tag, chunk);
        }
        let work = Work {
            kind: WorkKind::Forward { from, update },
            replies: Vec::new(),
            held_bytes: bytes,
        };
        self.enqueue(chunk, work);
    }

    // ----- storage completions -----

    fn on_storage_done(&mut self, op: OpId, result: StorageResult) {
        let Some(purpose) = self.ops.remove(&op) else {
            return; // its work was dropped (routing change); the op's effect is harmless
        };
        match purpose {
            OpPurpose::Slot(chunk) => self.on_slot_op_done(chunk, op, result),
            OpPurpose::Read { token, request } => self.on_read_done(token, request, result),
            OpPurpose::DumpMeta { to, chain_version, after } => {
                self.on_dump_listed(to, chain_version, after, result)
            }
            OpPurpose::ResolveScan => self.on_resolve_page(result),
            OpPurpose::ResyncScan { resync_id } => self.on_resync_page(resync_id, result),
            OpPurpose::Fetch { to, chunk } => self.on_fetch_read(to, chunk, result),
        }
    }

    fn on_slot_op_done(&mut self, chunk: ChunkId, op: OpId, result: StorageResult) {
        let Some(active) = self.active_mut(chunk) else { return };
        if active.op != Some(op) {
            return;
        }
        active.op = None;
        let phase = active.phase.clone();
        let is_resolve = matches!(active.work.kind, WorkKind::Resolve { .. });
        if let StorageResult::Failed(error) = result {
            return self.on_slot_op_failed(chunk, &phase, is_resolve, error);
        }
        match (phase, result) {
            (Phase::LoadMeta, StorageResult::Meta(meta)) => self.on_meta_loaded(chunk, meta),
            (Phase::WritePending, StorageResult::Meta(meta)) => {
                self.on_pending_written(chunk, meta)
            }
            (Phase::Commit, StorageResult::Meta(meta)) => self.on_committed(chunk, meta),
            (Phase::ReadForForward { which }, StorageResult::Data { meta, data }) => {
                self.on_read_for_forward(chunk, which, meta, data)
            }
            (Phase::SyncReplace, StorageResult::Meta(_)) => self.on_sync_replaced(chunk),
            (Phase::AbortPending { code }, StorageResult::Meta(meta)) => {
                self.on_pending_aborted(chunk, code, meta)
            }
            (Phase::ReadForSync, StorageResult::Data { meta, data }) => {
                self.on_read_for_sync(chunk, meta, data)
            }
            (Phase::RepairReplace { from }, StorageResult::Meta(meta)) => {
                self.on_repair_installed(chunk, from, meta)
            }
            (phase, result) => {
                let detail = format!("{chunk}: result {result:?} in phase {phase:?}");
                self.fence(FenceReason::Contract(detail));
            }
        }
    }

    fn on_slot_op_failed(
        &mut self,
        chunk: ChunkId,
        phase: &Phase,
        is_resolve: bool,
        error: StoreError,
    ) {
        if is_resolve && matches!(error, StoreError::NoPending { .. }) {
            return self.finish(chunk); // resolved meanwhile
        }
        let refusable = matches!(phase, Phase::WritePending)
            && matches!(
                error,
                StoreError::NoSpace { .. }
                    | StoreError::TooLarge { .. }
                    | StoreError::Diverged { .. }
            );
        if let StoreError::Corrupt { chunk: corrupt } = error {
            self.outputs.push(Output::ChunkCorrupt { chunk: corrupt });
            // The committed copy failed its checksum under a write that builds on it or a resync
            // transfer that sends it: repair it first, then run the work again from the start
            // (nothing was written). A chunk whose last repair found no good copy is not retried
            // here (that would loop); the target leaves the chain as before.
            let restartable = matches!(phase, Phase::WritePending | Phase::ReadForSync);
            if restartable && corrupt == chunk && !self.unrepairable.contains(&chunk) {
                let slot = self.slots.get_mut(&chunk).expect("slot of the active work");
                let work = slot.active.take().expect("active").work;
                slot.queue.push_front(work);
                return self.start_repair(chunk);
            }
        }
        if !refusable {
            // The store's state for this chunk is no longer what the protocol assumes: leave the
            // chain; resync from the predecessor rebuilds this target.
            return self.fence(FenceReason::Storage(error));
        }
        // The write did nothing: refuse it.
        let code = error.code();
        let active = self.active_mut(chunk).expect("active");
        match &active.work.kind {
            WorkKind::Forward { from, update } => {
                let (from, update) = (*from, update.clone());
                let reason = match error {
                    StoreError::Diverged { .. } => RefuseReason::Diverged,
                    _ => RefuseReason::Storage(code),
                };
                warn!(target_id = %self.target, %chunk, %error, "forwarded update not applied");
                self.refuse_forward(from, &update, reason);
            }
            _ => {
                for token in std::mem::take(&mut active.work.replies) {
                    self.reply_write_refused(token, code);
                }
            }
        }
        self.finish(chunk);
    }

    /// The pending version a successor could not store is gone: refuse the write to whoever
    /// sent it (the predecessor, which drops its own pending version in turn, or the client).
    fn on_pending_aborted(&mut self, chunk: ChunkId, code: ErrorCode, meta: ChunkMeta) {
        let active = self.active_mut(chunk).expect("active");
        let version = active.update.as_ref().expect("abort after a pending version").version;
        if meta.pending.is_some_and(|p| p.version == version) {
            let detail = format!("{chunk}: abort of {version} left {meta:?}");
            return self.fence(FenceReason::Contract(detail));
        }
        match &active.work.kind {
            WorkKind::Forward { from, update } => {
                let (from, update) = (*from, update.clone());
                self.refuse_forward(from, &update, RefuseReason::Storage(code));
            }
            _ => {
                for token in std::mem::take(&mut active.work.replies) {
                    self.reply_write_refused(token, code);
                }
            }
        }
        self.finish(chunk);
    }

    // ----- reads -----

    fn on_client_read(&mut self, token: ReplyToken, request: ReadRequest) {
        let check = || -> Result<(), ErrorCode> {
            if request.chain != self.chain {
                return Err(ErrorCode::ChainNotFound);
            }
            let Some(view) = &self.view else { return Err(ErrorCode::TargetNotServing) };
            if request.chain_version != view.chain_version {
                return Err(ErrorCode::StaleChainVersion);
            }
            if !view.serves_reads() {
                return Err(ErrorCode::TargetNotServing);
            }
            if request.length_bytes > self.config.chunk_size_bytes_max {
                return Err(ErrorCode::InvalidArgument);
            }
            if self.reads_inflight >= self.config.reads_inflight_max {
                return Err(ErrorCode::Busy);
            }
            Ok(())
        };
        if let Err(code) = check() {
            return self.reply_read_refused(token, code);
        }
        self.reads_inflight += 1;
        let op = StorageOp::Read {
            chunk: request.chunk,
            offset_bytes: request.offset_bytes,
            length_bytes: request.length_bytes,
        };
        self.issue(OpPurpose::Read { token, request }, op);
    }

    fn on_read_done(&mut self, token: ReplyToken, request: ReadRequest, result: StorageResult) {
        self.reads_inflight -= 1;
        let (meta, data) = match result {
            StorageResult::Data { meta, data } => (meta, data),
            StorageResult::Failed(StoreError::Corrupt { chunk }) => {
                // The client reads another replica (ChunkCorrupt is retried elsewhere); this one
                // repairs its copy from a peer.
                self.outputs.push(Output::ChunkCorrupt { chunk });
                self.reply_read_refused(token, ErrorCode::ChunkCorrupt);
                return self.start_repair(chunk);
            }
            StorageResult::Failed(error) => {
                let code = error.code();
                self.reply_read_refused(token, code);
                if error.is_fatal() {
                    self.fence(FenceReason::Storage(error));
                }
                return;
            }
            other => {
                return self.fence(FenceReason::Contract(format!("read answered {other:?}")));
            }
        };
        if let Err(detail) = meta.check() {
            self.reply_read_refused(token, ErrorCode::Internal);
            return self.fence(FenceReason::Contract(detail));
        }
        // The routing may have moved while the op ran: answer only as a serving replica of the
        // version the client asked for.
        let serving =
            self.view.is_some_and(|v| v.serves_reads() && v.chain_version == request.chain_version);
        if !serving {
            return self.reply_read_refused(token, ErrorCode::StaleChainVersion);
        }
        match rules::decide_read(&meta) {
            ReadDecision::NotCommitted => {
                self.stats.reads_not_committed += 1;
                self.reply_read_refused(token, ErrorCode::ChunkNotCommitted)
            }
            ReadDecision::NotFound => self.reply_read_refused(token, ErrorCode::ChunkNotFound),
            ReadDecision::Serve => {
                let committed = meta.committed;
                let start = request.offset_bytes.min(committed.length_bytes);
                let expected_len = request.length_bytes.min(committed.length_bytes - start);
                let whole = start == 0 && expected_len == committed.length_bytes;
                let checksum = crc32c::crc32c(&data);
                if data.len() != expected_len as usize || (whole && checksum != committed.checksum)
                {
                    // The store already verifies its blocks; this double-checks the whole-chunk
                    // checksum whenever the read covers it.
                    error!(target_id = %self.target, chunk = %meta.chunk, "read returned bytes that do not match the chunk metadata");
                    self.outputs.push(Output::ChunkCorrupt { chunk: meta.chunk });
                    self.reply_read_refused(token, ErrorCode::ChunkCorrupt);
                    return self.start_repair(meta.chunk);
                }
                let ok = ReadOk {
                    version: committed.version,
                    chunk_length_bytes: committed.length_bytes,
                    data,
                    checksum,
                };
                self.outputs.push(Output::ReadReply { token, outcome: ReadOutcome::Data(ok) });
            }
        }
    }

    // ----- head: resolving pending versions -----

    fn resolve_next_page(&mut self) {
        let Some(scan) = &self.resolve else { return };
        let request = StorageOp::ListMetas {
            after: scan.after,
            limit: self.config.list_page_len,
            pending_only: true,
        };
        self.issue(OpPurpose::ResolveScan, request);
    }

    fn on_resolve_page(&mut self, result: StorageResult) {
        let StorageResult::Metas { metas, more } = result else {
            return match result {
                StorageResult::Failed(error) => self.fence(FenceReason::Storage(error)),
                other => self.fence(FenceReason::Contract(format!("listing answered {other:?}"))),
            };
        };
        let Some(scan) = self.resolve.as_mut() else { return };
        scan.after = metas.last().map(|m| m.chunk).or(scan.after);
        scan.exhausted = !more;
        let orphans: Vec<ChunkId> = metas
            .iter()
            .filter(|m| m.pending.is_some() && !self.slots.contains_key(&m.chunk))
            .map(|m| m.chunk)
            .collect();
        scan.outstanding += orphans.len();
        for chunk in orphans {
            let work = Work {
                kind: WorkKind::Resolve { from_scan: true },
                replies: Vec::new(),
                held_bytes: 0,
            };
            self.enqueue(chunk, work);
        }
        self.resolve_advance();
    }

    fn resolve_work_done(&mut self) {
        if let Some(scan) = self.resolve.as_mut() {
            scan.outstanding -= 1;
            self.resolve_advance();
        }
    }

    fn resolve_advance(&mut self) {
        let Some(scan) = &self.resolve else { return };
        if scan.outstanding > 0 {
            return;
        }
        if scan.exhausted {
            self.resolve = None;
        } else {
            self.resolve_next_page();
        }
    }

    // ----- resync: this replica as the syncing target -----

    fn on_sync_chunk(&mut self, from: TargetId, sync: ChunkCopy) {
        let refuse = |this: &mut Self, reason: RefuseReason| {
            let message = PeerMessage::SyncRefused {
                chain: this.chain,
                chain_version: this.chain_version(),
                chunk: sync.chunk,
                reason,
            };
            this.send(from, message);
        };
        let Some(view) = self.view else { return refuse(self, RefuseReason::StaleChainVersion) };
        if sync.chain_version != view.chain_version {
            return refuse(self, RefuseReason::StaleChainVersion);
        }
        if view.predecessor != Some(from) {
            return refuse(self, RefuseReason::NotPredecessor);
        }
        let digest_ok = sync
            .state
            .is_none_or(|s| Digest::of(s.version, &sync.data, s.removed).same_content(&s.digest()));
        if crc32c::crc32c(&sync.data) != sync.checksum || !digest_ok {
            return refuse(self, RefuseReason::ChecksumMismatch);
        }
        let chunk = sync.chunk;
        let bytes = sync.data.len() as u64;
        if let Some(slot) = self.slots.get_mut(&chunk) {
            let same =
                |w: &Work| matches!(&w.kind, WorkKind::SyncApply { sync: s, .. } if *s == sync);
            if slot.active.as_ref().is_some_and(|a| same(&a.work)) || slot.queue.iter().any(same) {
                return; // a resend; acknowledged when applied
            }
        }
        if self.admit(chunk, bytes).is_err() {
            return refuse(self, RefuseReason::Busy);
        }
        let work = Work {
            kind: WorkKind::SyncApply { from, sync },
            replies: Vec::new(),
            held_bytes: bytes,
        };
        self.enqueue(chunk, work);
    }

    fn on_sync_replaced(&mut self, chunk: ChunkId) {
        // The chunk is now exactly the predecessor's state; what this replica recorded about
        // earlier commits of it may describe versions the chain never kept (a tail that committed
        // a write its head never completed). A retry of such a write must not be answered from
        // here. The chunk's own last tag still recognises the write that made its current state.
        self.dedup.forget_chunk(chunk);
        let chain_version = self.chain_version();
        let active = self.active_mut(chunk).expect("active");
        if let WorkKind::SyncApply { from, .. } = active.work.kind {
            let message = PeerMessage::SyncAck { chain: self.chain, chain_version, chunk };
            self.send(from, message);
        }
        self.finish(chunk);
    }

    fn on_dump_request(
        &mut self,
        from: TargetId,
        chain_version: ChainVersion,
        after: Option<ChunkId>,
    ) {
        let Some(view) = self.view else { return };
        if chain_version != view.chain_version || view.predecessor != Some(from) {
            return; // the predecessor retries once the routings agree
        }
        let pending = self.ops.values().any(
            |p| matches!(p, OpPurpose::DumpMeta { to, after: a, .. } if *to == from && *a == after),
        );
        if pending {
            return;
        }
        let request =
            StorageOp::ListMetas { after, limit: self.config.list_page_len, pending_only: false };
        self.issue(OpPurpose::DumpMeta { to: from, chain_version, after }, request);
    }

    fn on_dump_listed(
        &mut self,
        to: TargetId,
        chain_version: ChainVersion,
        after: Option<ChunkId>,
        result: StorageResult,
    ) {
        match result {
            StorageResult::Metas { metas, more } => {
                let message = PeerMessage::DumpMetaReply {
                    chain: self.chain,
                    chain_version,
                    after,
                    metas,
                    more,
                };
                self.send(to, message);
            }
            StorageResult::Failed(error) => self.fence(FenceReason::Storage(error)),
            other => self.fence(FenceReason::Contract(format!("listing answered {other:?}"))),
        }
    }

    fn on_sync_done(&mut self, from: TargetId, chain_version: ChainVersion) {
        let Some(view) = self.view else { return };
        if chain_version != view.chain_version || view.predecessor != Some(from) {
            return;
        }
        if self.sync_done_reported != Some(chain_version) {
            self.sync_done_reported = Some(chain_version);
            self.outputs.push(Output::SyncDone { chain_version });
        }
        self.send(from, PeerMessage::SyncDoneAck { chain: self.chain, chain_version });
    }

    // ----- resync: this replica syncing its successor -----

    fn resync_current(&self, resync_id: u64) -> bool {
        self.resync_out.as_ref().is_some_and(|r| r.id == resync_id)
    }

    fn maybe_start_resync(&mut self) {
        let Some(view) = self.view else { return };
        let wanted = match view.successor {
            Some(s)
                if s.state == PublicTargetState::Syncing
                    && view.state == Some(PublicTargetState::Serving) =>
            {
                Some(s.target)
            }
            _ => None,
        };
        if let Some(r) = &self.resync_out
            && Some(r.successor) == wanted
            && r.chain_version == view.chain_version
        {
            return;
        }
        self.abort_resync();
        let Some(successor) = wanted else { return };
        let id = self.next_resync_id;
        self.next_resync_id += 1;
        debug!(target_id = %self.target, %successor, chain_version = %view.chain_version, "resync starts");
        self.resync_out = Some(ResyncOut {
            id,
            successor,
            chain_version: view.chain_version,
            phase: ResyncPhase::DumpRemote { after: None, resend_at_ms: self.resend_at() },
            remote: BTreeMap::new(),
            transfers_outstanding: 0,
            chunks_total: 0,
            chunks_done: 0,
            bytes_done: 0,
        });
        let message = PeerMessage::DumpMetaRequest {
            chain: self.chain,
            chain_version: view.chain_version,
            after: None,
        };
        self.send(successor, message);
    }

    /// Drops the running resync; its transfers end at their next step.
    fn abort_resync(&mut self) {
        let Some(old) = self.resync_out.take() else { return };
        self.ops.retain(
            |_, p| !matches!(p, OpPurpose::ResyncScan { resync_id } if *resync_id == old.id),
        );
        let waiting: Vec<ChunkId> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.active.as_ref().is_some_and(|a| {
                    matches!(a.work.kind, WorkKind::SyncTransfer { resync_id } if resync_id == old.id)
                        && matches!(a.phase, Phase::AwaitSyncAck { .. })
                })
            })
            .map(|(c, _)| *c)
            .collect();
        for chunk in waiting {
            self.finish(chunk);
        }
    }

    fn resync_tick(&mut self) {
        let now = self.now_ms;
        let resend_at_ms = self.resend_at();
        let chain = self.chain;
        let Some(r) = self.resync_out.as_mut() else { return };
        let message = match &mut r.phase {
            ResyncPhase::DumpRemote { after, resend_at_ms: at } if *at <= now => {
                *at = resend_at_ms;
                PeerMessage::DumpMetaRequest {
                    chain,
                    chain_version: r.chain_version,
                    after: *after,
                }
            }
            ResyncPhase::Done { resend_at_ms: at } if *at <= now => {
                *at = resend_at_ms;
                PeerMessage::SyncDone { chain, chain_version: r.chain_version }
            }
            _ => return,
        };
        let to = r.successor;
        self.send(to, message);
    }

    fn on_dump_reply(
        &mut self,
        from: TargetId,
        chain_version: ChainVersion,
        after: Option<ChunkId>,
        metas: Vec<ChunkMeta>,
        more: bool,
    ) {
        let remote_max = self.config.resync_remote_metas_max;
        let resend_at_ms = self.resend_at();
        let chain = self.chain;
        let Some(r) = self.resync_out.as_mut() else { return };
        let ResyncPhase::DumpRemote { after: expected, .. } = r.phase else { return };
        if r.successor != from || r.chain_version != chain_version || expected != after {
            return;
        }
        if r.remote.len() + metas.len() > remote_max {
            error!(target_id = %self.target, successor = %from, remote_max, "resync gave up: the successor lists more chunks than the bound");
            r.phase = ResyncPhase::Failed;
            return;
        }
        let last = metas.last().map(|m| m.chunk);
        r.remote.extend(metas.into_iter().map(|m| (m.chunk, m)));
        if more && last.is_some() {
            r.phase = ResyncPhase::DumpRemote { after: last, resend_at_ms };
            let message = PeerMessage::DumpMetaRequest { chain, chain_version, after: last };
            self.send(from, message);
        } else {
            r.phase = ResyncPhase::ScanLocal { after: None, exhausted: false, scanning: false };
            self.resync_advance();
        }
    }

    /// Lists the next local page, or ends the resync, once the current page's transfers finished.
    fn resync_advance(&mut self) {
        let page_len = self.config.list_page_len;
        let resend_at_ms = self.resend_at();
        let chain = self.chain;
        let Some(r) = self.resync_out.as_mut() else { return };
        let ResyncPhase::ScanLocal { after, exhausted, scanning } = &mut r.phase else { return };
        if *scanning || r.transfers_outstanding > 0 {
            return;
        }
        if *exhausted {
            debug_assert!(r.remote.is_empty(), "every remote chunk was compared");
            r.phase = ResyncPhase::Done { resend_at_ms };
            let message = PeerMessage::SyncDone { chain, chain_version: r.chain_version };
            let to = r.successor;
            return self.send(to, message);
        }
        *scanning = true;
        let request = StorageOp::ListMetas { after: *after, limit: page_len, pending_only: false };
        let resync_id = r.id;
        self.issue(OpPurpose::ResyncScan { resync_id }, request);
    }

    fn on_resync_page(&mut self, resync_id: u64, result: StorageResult) {
        let StorageResult::Metas { metas, more } = result else {
            return match result {
                StorageResult::Failed(error) => self.fence(FenceReason::Storage(error)),
                other => self.fence(FenceReason::Contract(format!("listing answered {other:?}"))),
            };
        };
        let Some(r) = self.resync_out.as_mut().filter(|r| r.id == resync_id) else { return };
        let ResyncPhase::ScanLocal { after, exhausted, scanning } = &mut r.phase else { return };
        *scanning = false;
        let last = metas.last().map(|m| m.chunk);
        *after = last.or(*after);
        *exhausted = !more;
        let mut transfers = Vec::new();
        for local in &metas {
            let remote = r.remote.remove(&local.chunk);
            if rules::needs_transfer(Some(local), remote.as_ref()) {
                transfers.push(local.chunk);
            }
        }
        // Remote chunks in the range this page covered that the local store does not have.
        let leftovers: Vec<ChunkId> = match (more, last) {
            (true, Some(last)) => r.remote.range(..=last).map(|(c, _)| *c).collect(),
            _ => r.remote.keys().copied().collect(),
        };
        for chunk in leftovers {
            let remote = r.remote.remove(&chunk);
            if rules::needs_transfer(None, remote.as_ref()) {
                transfers.push(chunk);
            }
        }
        r.transfers_outstanding += transfers.len();
        r.chunks_total += transfers.len() as u64;
        for chunk in transfers {
            self.stats.sync_transfers += 1;
            let work = Work {
                kind: WorkKind::SyncTransfer { resync_id },
                replies: Vec::new(),
                held_bytes: 0,
            };
            self.held_payload_bytes += work.held_bytes;
            self.slots.entry(chunk).or_default().queue.push_back(work);
            self.pump(chunk);
        }
        self.resync_advance();
    }

    fn transfer_done(&mut self, resync_id: u64) {
        let Some(r) = self.resync_out.as_mut().filter(|r| r.id == resync_id) else { return };
        r.transfers_outstanding -= 1;
        self.resync_advance();
    }

    fn on_read_for_sync(&mut self, chunk: ChunkId, meta: ChunkMeta, data: Bytes) {
        let active = self.active_mut(chunk).expect("active");
        let WorkKind::SyncTransfer { resync_id } = active.work.kind else {
            return self.fence(FenceReason::Contract(format!("{chunk}: sync read for other work")));
        };
        let Some(r) = self.resync_out.as_ref().filter(|r| r.id == resync_id) else {
            return self.finish(chunk);
        };
        // The state as of now (not as listed): the chunk may have changed since the listing.
        let state = (meta.committed.version.0 > 0).then_some(meta.committed);
        let message = ChunkCopy {
            chain: self.chain,
            chain_version: r.chain_version,
            chunk,
            state,
            checksum: crc32c::crc32c(&data),
            data,
        };
        let to = r.successor;
        let resend_at_ms = self.resend_at();
        let active = self.active_mut(chunk).expect("active");
        active.phase = Phase::AwaitSyncAck { to, resend_at_ms, message: message.clone() };
        self.send(to, PeerMessage::SyncChunk(message));
    }

    fn resend_sync_chunk(&mut self, chunk: ChunkId) {
        let resend_at_ms = self.resend_at();
        let Some(active) = self.active_mut(chunk) else { return };
        let Phase::AwaitSyncAck { to, resend_at_ms: at, message } = &mut active.phase else {
            return;
        };
        *at = resend_at_ms;
        let (to, message) = (*to, message.clone());
        self.send(to, PeerMessage::SyncChunk(message));
    }

    fn on_sync_ack(&mut self, from: TargetId, chain_version: ChainVersion, chunk: ChunkId) {
        let Some(r) = self.resync_out.as_ref() else { return };
        if r.successor != from || r.chain_version != chain_version {
            return;
        }
        let Some(active) = self.active_mut(chunk) else { return };
        let Phase::AwaitSyncAck { to, message, .. } = &active.phase else { return };
        if *to != from {
            return;
        }
        let bytes = message.data.len() as u64;
        if let Some(r) = self.resync_out.as_mut() {
            r.chunks_done += 1;
            r.bytes_done += bytes;
        }
        self.finish(chunk);
    }

    fn on_sync_done_ack(&mut self, from: TargetId, chain_version: ChainVersion) {
        let Some(r) = self.resync_out.as_mut() else { return };
        if r.successor == from
            && r.chain_version == chain_version
            && matches!(r.phase, ResyncPhase::Done { .. })
        {
            debug!(target_id = %self.target, successor = %from, "resync finished");
            r.phase = ResyncPhase::Finished;
        }
    }

    // ----- repair of a chunk corrupted on disk -----

    /// Queues a repair of `chunk` ahead of its other work (once: a repair already queued moves
    /// to the front, an active one is left alone).
    fn start_repair(&mut self, chunk: ChunkId) {
        if self.view.is_none() {
            return; // no chain known: no peer to ask
        }
        if !self.slots.contains_key(&chunk) && self.slots.len() >= self.config.chunks_active_max {
            warn!(target_id = %self.target, %chunk, "corrupt chunk not repaired now: too many chunks active");
            return;
        }
        let slot = self.slots.entry(chunk).or_default();
        if slot.active.as_ref().is_some_and(|a| matches!(a.work.kind, WorkKind::Repair)) {
            return;
        }
        slot.queue.retain(|w| !matches!(w.kind, WorkKind::Repair));
        let work = Work { kind: WorkKind::Repair, replies: Vec::new(), held_bytes: 0 };
        slot.queue.push_front(work);
        self.pump(chunk);
    }

    /// The chain's serving targets other than this one, predecessor and successor first.
    fn repair_peers(&self) -> Vec<TargetId> {
        let (Some(routing), Some(view)) = (&self.routing, &self.view) else { return Vec::new() };
        let serving: Vec<TargetId> = routing.readable().filter(|t| *t != self.target).collect();
        let mut peers: Vec<TargetId> = Vec::with_capacity(serving.len());
        let near = [view.predecessor, view.successor.map(|s| s.target)];
        for t in near.into_iter().flatten() {
            if serving.contains(&t) && !peers.contains(&t) {
                peers.push(t);
            }
        }
        peers.extend(serving.into_iter().filter(|t| !near.contains(&Some(*t))));
        peers
    }

    fn on_repair_meta(&mut self, chunk: ChunkId, meta: ChunkMeta) {
        let c = meta.committed;
        if c.version.0 == 0 || c.removed || c.length_bytes == 0 {
            // Nothing committed to repair any more (removed or replaced meanwhile).
            return self.finish(chunk);
        }
        if meta.pending.is_some() {
            // Installing a copy would drop the pending version, which a successor may already
            // hold. Leave the chunk refused; it is repaired once a later read finds it corrupt
            // with no pending version.
            warn!(target_id = %self.target, %chunk, "corrupt chunk has a pending version; repair deferred");
            self.note_unrepairable(chunk);
            return self.finish(chunk);
        }
        self.active_mut(chunk).expect("active").committed = Some(c);
        self.repair_ask_next(chunk);
    }

    /// Asks the next peer (round robin) for its committed copy, or gives up after
    /// [`REPAIR_ROUNDS_MAX`] rounds.
    fn repair_ask_next(&mut self, chunk: ChunkId) {
        let peers = self.repair_peers();
        let resend_at_ms = self.resend_at();
        let (chain, chain_version) = (self.chain, self.chain_version());
        let Some(active) = self.active_mut(chunk) else { return };
        let attempt = match active.phase {
            Phase::AwaitFetch { attempt, .. } => attempt + 1,
            _ => 0,
        };
        let attempts_max = (peers.len() as u32).saturating_mul(REPAIR_ROUNDS_MAX);
        if attempt >= attempts_max {
            return self.repair_give_up(chunk);
        }
        let from = peers[attempt as usize % peers.len()];
        active.phase = Phase::AwaitFetch { from, resend_at_ms, attempt };
        debug!(target_id = %self.target, %chunk, %from, attempt, "asking a peer for a good copy");
        self.send(from, PeerMessage::FetchChunk { chain, chain_version, chunk });
    }

    fn on_fetch_reply(&mut self, from: TargetId, fetched: ChunkCopy) {
        let chunk = fetched.chunk;
        let target = self.target;
        let Some(active) = self.active_mut(chunk) else { return };
        let Phase::AwaitFetch { from: asked, .. } = active.phase else { return };
        if asked != from || !matches!(active.work.kind, WorkKind::Repair) {
            return; // a late answer to an earlier request
        }
        let local = active.committed.expect("the repair loaded the chunk's metadata");
        // Verified against what this replica recorded when the version committed: same version,
        // same length, and the bytes' CRC32C equal to the recorded one.
        let good = fetched.state.is_some_and(|s| {
            s.version == local.version
                && !s.removed
                && s.length_bytes == local.length_bytes
                && s.checksum == local.checksum
        }) && fetched.data.len() == local.length_bytes as usize
            && fetched.checksum == local.checksum
            && crc32c::crc32c(&fetched.data) == local.checksum;
        if !good {
            warn!(target_id = %target, %chunk, %from, offered = ?fetched.state, want = ?local, "peer has no good copy of the committed version");
            return self.repair_ask_next(chunk);
        }
        let request = StorageOp::SyncReplace { chunk, state: Some(local), data: fetched.data };
        self.issue_for(chunk, Phase::RepairReplace { from }, request);
    }

    fn on_repair_installed(&mut self, chunk: ChunkId, from: TargetId, meta: ChunkMeta) {
        let active = self.active_mut(chunk).expect("active");
        let local = active.committed.expect("repair state");
        if meta.committed.digest() != local.digest() || meta.pending.is_some() {
            let detail = format!("{chunk}: repair install left {meta:?}, expected {local:?}");
            return self.fence(FenceReason::Contract(detail));
        }
        self.unrepairable.remove(&chunk);
        self.stats.chunks_repaired += 1;
        self.outputs.push(Output::ChunkRepaired { chunk, from });
        self.finish(chunk);
    }

    fn repair_give_up(&mut self, chunk: ChunkId) {
        error!(target_id = %self.target, %chunk, "no serving peer has a good copy of the corrupt chunk; it stays refused");
        self.note_unrepairable(chunk);
        self.stats.chunks_unrepairable += 1;
        self.outputs.push(Output::ChunkUnrepairable { chunk });
        self.finish(chunk);
    }

    fn note_unrepairable(&mut self, chunk: ChunkId) {
        if self.unrepairable.len() >= self.config.chunks_active_max {
            self.unrepairable.pop_first();
        }
        self.unrepairable.insert(chunk);
    }

    /// A chain member asks for this replica's committed copy of `chunk` to repair its own.
    fn on_fetch_request(&mut self, from: TargetId, chunk: ChunkId) {
        let member =
            self.routing.as_ref().is_some_and(|r| r.targets.iter().any(|t| t.target == from));
        if !member || self.reads_inflight >= self.config.reads_inflight_max {
            return; // not a chain member, or busy: the asker moves on or asks again
        }
        let asked = self
            .ops
            .values()
            .any(|p| matches!(p, OpPurpose::Fetch { to, chunk: c } if *to == from && *c == chunk));
        if asked {
            return;
        }
        self.reads_inflight += 1;
        let request = StorageOp::ReadFull { chunk, which: Which::Committed };
        self.issue(OpPurpose::Fetch { to: from, chunk }, request);
    }

    fn on_fetch_read(&mut self, to: TargetId, chunk: ChunkId, result: StorageResult) {
        self.reads_inflight -= 1;
        let none = (None, Bytes::new());
        let (state, data) = match result {
            StorageResult::Data { meta, data } => {
                let c = meta.committed;
                let ok = c.version.0 > 0
                    && !c.removed
                    && data.len() == c.length_bytes as usize
                    && crc32c::crc32c(&data) == c.checksum;
                if ok { (Some(c), data) } else { none }
            }
            StorageResult::Failed(StoreError::Corrupt { chunk: corrupt }) => {
                // Corrupt here too: say so, and repair this copy as well (unless its last repair
                // found no good copy: two corrupt replicas asking each other would never stop).
                self.outputs.push(Output::ChunkCorrupt { chunk: corrupt });
                if !self.unrepairable.contains(&corrupt) {
                    self.start_repair(corrupt);
                }
                none
            }
            StorageResult::Failed(error) => {
                if error.is_fatal() {
                    self.fence(FenceReason::Storage(error));
                    return;
                }
                none
            }
            other => {
                return self.fence(FenceReason::Contract(format!("read answered {other:?}")));
            }
        };
        // Verified above: the bytes' CRC32C is the committed one.
        let checksum = state.map_or(0, |s| s.checksum);
        let message = ChunkCopy {
            chain: self.chain,
            chain_version: self.chain_version(),
            chunk,
            state,
            data,
            checksum,
        };
        self.send(to, PeerMessage::FetchChunkReply(message));
    }

    // ----- peer dispatch -----

    fn on_peer(&mut self, from: TargetId, message: PeerMessage) {
        if message.chain() != self.chain {
            warn!(target_id = %self.target, chain = %message.chain(), "message for another chain ignored");
            return;
        }
        match message {
            PeerMessage::Update(update) => self.on_forward(from, update),
            PeerMessage::Ack(ack) => self.on_ack(from, ack),
            PeerMessage::Refused(refused) => self.on_refused(from, refused),
            PeerMessage::DumpMetaRequest { chain_version, after, .. } => {
                self.on_dump_request(from, chain_version, after)
            }
            PeerMessage::DumpMetaReply { chain_version, after, metas, more, .. } => {
                self.on_dump_reply(from, chain_version, after, metas, more)
            }
            PeerMessage::SyncChunk(sync) => self.on_sync_chunk(from, sync),
            PeerMessage::SyncAck { chain_version, chunk, .. } => {
                self.on_sync_ack(from, chain_version, chunk)
            }
            PeerMessage::SyncRefused { chunk, reason, .. } => {
                // Retried at the next resend time (routing catching up, queue space).
                debug!(target_id = %self.target, %chunk, ?reason, "sync transfer refused");
            }
            PeerMessage::SyncDone { chain_version, .. } => self.on_sync_done(from, chain_version),
            PeerMessage::SyncDoneAck { chain_version, .. } => {
                self.on_sync_done_ack(from, chain_version)
            }
            PeerMessage::FetchChunk { chunk, .. } => self.on_fetch_request(from, chunk),
            PeerMessage::FetchChunkReply(fetched) => self.on_fetch_reply(from, fetched),
        }
    }
}
