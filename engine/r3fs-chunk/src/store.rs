//! The chunk store of one target: staging, committing, reading, removing chunks.
//!
//! See the crate docs for the model and docs/design/chunk-store.md for the format and the crash
//! argument. Concurrency: one executor thread; [`ChunkStore`] is a cheap `Rc` handle; no
//! `RefCell` borrow is ever held across an `.await`. Every log write happens in the [`Flusher`]
//! task, so a caller that drops a `commit` future never leaves a half-written batch behind.

use crate::alloc::{Allocator, Grant, SpaceStats};
use crate::cache::PageCache;
use crate::config::StoreConfig;
use crate::crc::{CrcFold, combine, zeros_crc};
use crate::device::{Device, DeviceFile};
use crate::error::{OpenError, StoreError};
use crate::format::{
    self, BlockAddr, CLASS_BYTES_MAX, CLASS_BYTES_MIN, CLASS_COUNT, CRCS_PER_PAGE, ChunkState,
    EntryState, RECORD_BYTES, Record, SizeClass, Staged, Tombstone, UNIT_BYTES, UnitKey, align_up,
    pages_for_units, units_for,
};
use crate::gate::WriteGate;
use crate::journal::{self, CheckpointWriter, Durable, LogTail, ReplayError};
use futures::future::poll_fn;
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, InodeId};
use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::{Bound, Range};
use std::rc::Rc;
use std::task::{Poll, Waker};

const UNIT: u32 = UNIT_BYTES as u32;
const PAGE_UNITS: u32 = CRCS_PER_PAGE as u32;
static ZERO_UNIT: [u8; UNIT_BYTES] = [0; UNIT_BYTES];

/// Chunks per [`ChunkStore::batch_read`].
pub const BATCH_READ_MAX: usize = 4096;
/// Chunks removed per [`ChunkStore::remove_range`] call (the caller resumes for more).
pub const REMOVE_RANGE_MAX: usize = 4096;
/// Entries per [`ChunkStore::list`] call.
pub const LIST_MAX: usize = 65536;
/// Checkpoint entries per incremental compaction step (1 MiB of log).
const COMPACTION_SLICE_ENTRIES: usize = 16 * 1024;
/// Attempts to obtain a block (growth and reclaim may need several rounds).
const ALLOC_ATTEMPTS_MAX: usize = 8;

const _: () = assert!(CLASS_BYTES_MAX.is_multiple_of(UNIT) && CLASS_BYTES_MIN.is_multiple_of(UNIT));

/// Chunk bytes in a device buffer, padded to whole units. Obtain with [`ChunkStore::alloc_buf`],
/// fill `data_mut()`, hand to a [`StageRequest`]: the store writes it out without copying.
#[derive(Debug)]
pub struct ChunkBuf<B> {
    buf: B,
    len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> ChunkBuf<B> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn data(&self) -> &[u8] {
        &self.buf.as_ref()[..self.len]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[..self.len]
    }
}

/// An update of one chunk, staged as its pending version.
#[derive(Debug)]
pub struct StageRequest<B> {
    pub chunk: ChunkId,
    /// The new version; must exceed the committed one.
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    /// The file's chunk size: a power of two in 64 KiB..=64 MiB; the chunk never grows beyond it.
    pub chunk_size: u32,
    pub op: UpdateOp<B>,
}

/// What an update does. The base of a partial update is always the committed content.
#[derive(Debug)]
pub enum UpdateOp<B> {
    /// Writes `data` at `offset` (zero-filling any hole); `crc` is the sender's CRC32C of `data`.
    Write {
        offset: u32,
        data: ChunkBuf<B>,
        crc: u32,
    },
    /// Sets the length, dropping bytes or appending zeros.
    Truncate {
        len: u32,
    },
    /// Grows the chunk with zeros to at least `len` bytes; a chunk already that long keeps its
    /// bytes (the new version has the same content). The metadata service's "extend the last
    /// chunk" when a file grows past it.
    Extend {
        len: u32,
    },
    Remove,
    /// The chunk becomes exactly `data`.
    Replace {
        data: ChunkBuf<B>,
        crc: u32,
    },
}

/// A chunk's committed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedMeta {
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    pub len: u32,
    pub crc: u32,
}

/// A chunk's pending (staged, uncommitted) version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingMeta {
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    /// The pending version removes the chunk.
    pub removal: bool,
    pub len: u32,
    pub crc: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub chunk: ChunkId,
    pub committed: Option<CommittedMeta>,
    /// What a committed removal left (never together with `committed`): the chunk reads as
    /// absent, but its version lives on until the chunk is written again or removed by range.
    pub tombstone: Option<Tombstone>,
    pub pending: Option<PendingMeta>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageOutcome {
    Staged(PendingMeta),
    /// The committed version is already at least the requested one.
    AlreadyCommitted {
        committed: ChunkVersion,
    },
    /// Another update of this chunk is being staged or committed.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable. `None`: the chunk is removed.
    Committed(Option<CommittedMeta>),
    AlreadyCommitted {
        committed: ChunkVersion,
    },
    /// Nothing is staged for this chunk.
    NotStaged,
    /// A different version is staged.
    VersionMismatch {
        pending: ChunkVersion,
    },
    Busy,
}

/// Outcome of a one-step update (stage and commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    Committed(Option<CommittedMeta>),
    AlreadyCommitted { committed: ChunkVersion },
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveRangeOutcome {
    pub removed: u64,
    /// Chunks skipped because an update of theirs was in flight.
    pub busy: Vec<ChunkId>,
    /// More chunks remain from this index on.
    pub resume_from: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub chunk: ChunkId,
    pub offset: u32,
    pub len: u32,
}

/// Verified bytes of a committed chunk, in the device's read buffer.
#[derive(Debug)]
pub struct ReadOutcome<R> {
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    pub chunk_len: u32,
    pub offset: u32,
    /// CRC32C of the returned bytes.
    pub crc: u32,
    buf: Option<R>,
    start: usize,
    len: usize,
}

impl<R: AsRef<[u8]>> ReadOutcome<R> {
    /// The bytes `[offset, offset + len)` of the chunk (shorter at its end).
    pub fn data(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[][..], |b| &b.as_ref()[self.start..self.start + self.len])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device buffer and the range of the data in it (for zero-copy sends).
    pub fn into_parts(self) -> (Option<R>, Range<usize>) {
        (self.buf, self.start..self.start + self.len)
    }
}

/// Where a chunk's block lives (diagnostics and fault tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLocation {
    pub file_name: String,
    pub header_offset: u64,
    pub data_offset: u64,
    pub data_bytes: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub space: SpaceStats,
    pub chunks: u64,
    pub log_generation: u64,
    pub log_bytes: u64,
    pub header_cache_bytes: u64,
    pub commit_batches: u64,
    pub commit_records: u64,
    pub compactions: u64,
    /// Compactions that could not start or were abandoned (retried later).
    pub compaction_failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Put(ChunkState),
    Delete,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    version: ChunkVersion,
    chain_version: ChainVersion,
    change: Change,
    /// A block allocated for this version (freed if it never commits).
    owned: Option<BlockAddr>,
    /// Its stage record is durable (a `stage`), rather than about to be committed by the same
    /// call (`update`, `install`), which needs no record of its own.
    durable: bool,
}

impl Pending {
    /// As recorded in a stage record or a checkpoint.
    fn staged(&self) -> Staged {
        match self.change {
            Change::Put(state) => Staged { state, removal: false },
            Change::Delete => Staged {
                state: ChunkState {
                    version: self.version,
                    chain_version: self.chain_version,
                    len: 0,
                    crc: 0,
                    block: None,
                    serial: 0,
                },
                removal: true,
            },
        }
    }

    fn from_staged(staged: Staged, committed_block: Option<BlockAddr>) -> Pending {
        let state = staged.state;
        Pending {
            version: state.version,
            chain_version: state.chain_version,
            change: if staged.removal { Change::Delete } else { Change::Put(state) },
            // In place (an append, a truncation) it shares the committed block.
            owned: state.block.filter(|b| Some(*b) != committed_block),
            durable: true,
        }
    }

    fn meta(&self) -> PendingMeta {
        let (removal, len, crc) = match self.change {
            Change::Put(s) => (false, s.len, s.crc),
            Change::Delete => (true, 0, 0),
        };
        PendingMeta { version: self.version, chain_version: self.chain_version, removal, len, crc }
    }
}

#[derive(Debug, Default)]
struct Entry {
    committed: Option<ChunkState>,
    /// Left by a committed removal; never together with `committed`.
    tombstone: Option<Tombstone>,
    pending: Option<Pending>,
    /// A stage's IO is in flight.
    staging: bool,
    /// A record of this chunk is queued or being written.
    committing: bool,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.committed.is_none()
            && self.tombstone.is_none()
            && self.pending.is_none()
            && !self.staging
            && !self.committing
    }

    /// The committed version, a tombstone's included (0 for a chunk never written).
    fn version(&self) -> ChunkVersion {
        match (&self.committed, &self.tombstone) {
            (Some(c), _) => c.version,
            (None, Some(t)) => t.version,
            (None, None) => ChunkVersion(0),
        }
    }
}

fn committed_meta(state: &ChunkState) -> CommittedMeta {
    CommittedMeta {
        version: state.version,
        chain_version: state.chain_version,
        len: state.len,
        crc: state.crc,
    }
}

fn chunk_meta(chunk: ChunkId, entry: &Entry) -> ChunkMeta {
    ChunkMeta {
        chunk,
        committed: entry.committed.as_ref().map(committed_meta),
        tombstone: entry.tombstone,
        pending: entry.pending.as_ref().map(Pending::meta),
    }
}

/// What one log record does once durable.
#[derive(Clone, Copy, Debug)]
enum LogOp {
    /// The chunk's new committed state.
    Put(ChunkState),
    /// The committed state goes: a tombstone stays, or nothing (a removal by range). `release`:
    /// the block of a staged version removed with it.
    Delete { tombstone: Option<Tombstone>, release: Option<BlockAddr> },
    /// A staged version, replacing any other.
    Stage(Pending),
    /// A staged version is dropped; its block is free once the record is durable.
    Abort { version: ChunkVersion, release: Option<BlockAddr> },
}

impl LogOp {
    /// Chunk bytes whose data the record points at (bounded per batch: replay re-verifies
    /// them).
    fn data_bytes(&self) -> u64 {
        match self {
            LogOp::Put(state) => u64::from(state.len),
            LogOp::Stage(pending) => u64::from(pending.meta().len),
            LogOp::Delete { .. } | LogOp::Abort { .. } => 0,
        }
    }

    fn record(&self, seq: u64, chunk: ChunkId) -> Record {
        match *self {
            LogOp::Put(state) => Record::Put { seq, chunk, state },
            LogOp::Delete { tombstone, .. } => Record::Delete { seq, chunk, tombstone },
            LogOp::Stage(pending) => Record::Stage { seq, chunk, staged: pending.staged() },
            LogOp::Abort { version, .. } => Record::Abort { seq, chunk, version },
        }
    }
}

#[derive(Debug)]
struct QueueItem {
    ticket: u64,
    chunk: ChunkId,
    op: LogOp,
}

#[derive(Debug)]
struct Compaction<F> {
    file: Rc<F>,
    name: String,
    writer: CheckpointWriter,
    cursor: Option<ChunkId>,
    scanned: bool,
    /// Records made durable in the old log since the checkpoint began.
    committed: Vec<Record>,
}

struct Inner<D: Device> {
    chunks: BTreeMap<ChunkId, Entry>,
    alloc: Allocator,
    cache: PageCache,
    /// Block files written since the last batch was formed in a way that needs their own
    /// `sync_data` (not a mere overwrite of a `stable` slot).
    dirty: [bool; CLASS_COUNT],
    /// Per class, slots written whole (header and data) and since made durable by a sync of
    /// their file: overwriting them changes no file-system metadata, so when the device's
    /// `sync_data` flushes the whole device the batch's log sync makes such a write durable
    /// and the block file needs no sync of its own (which on ext4 waits for every other write
    /// in flight to that file). A slot stops being stable when it is punched or backed again.
    stable: [HashSet<u32>; CLASS_COUNT],
    /// Per class, slots written whole since the class's last sync began: stable once it ends.
    fresh: [Vec<u32>; CLASS_COUNT],
    next_serial: u64,
    failed: Option<String>,
    log_space_low: bool,
    log_file: Rc<D::File>,
    generation: u64,
    next_generation: u64,
    tail: LogTail,
    zeroed_end: u64,
    next_seq: u64,
    queue: VecDeque<QueueItem>,
    next_ticket: u64,
    /// Every ticket below this is applied.
    applied_through: u64,
    waiters: Vec<Waker>,
    flusher_waker: Option<Waker>,
    closing: bool,
    flusher_done: bool,
    compaction: Option<Compaction<D::File>>,
    compaction_retry_pos: u64,
    compaction_requested: bool,
    stats: StoreStats,
}

impl<D: Device> Inner<D> {
    fn wake_waiters(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    fn wake_flusher(&mut self) {
        if let Some(waker) = self.flusher_waker.take() {
            waker.wake();
        }
    }

    fn enqueue(&mut self, chunk: ChunkId, op: LogOp) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(QueueItem { ticket, chunk, op });
        self.wake_flusher();
        ticket
    }

    fn release_block(&mut self, addr: BlockAddr) {
        if self.alloc.release(addr) {
            self.cache.forget_block(addr, pages_for_units(addr.class.units()));
        }
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            tracing::error!(reason = %why, "chunk store stops accepting updates");
            self.failed = Some(why);
        }
        self.wake_waiters();
    }

    /// Applies a durable record to the in-memory state.
    fn apply(&mut self, item: &QueueItem) {
        if let LogOp::Abort { release, .. } = item.op {
            // The staged version left memory when it was aborted; only its block waited.
            if let Some(block) = release {
                self.release_block(block);
            }
            return;
        }
        let Some(entry) = self.chunks.get_mut(&item.chunk) else {
            panic!("committed chunk {} has no entry", item.chunk);
        };
        assert!(entry.committing, "chunk {} applied without a queued commit", item.chunk);
        entry.committing = false;
        let mut released = Vec::new();
        match item.op {
            LogOp::Stage(pending) => {
                let replaced = entry.pending.replace(pending).and_then(|p| p.owned);
                released.extend(replaced.filter(|b| Some(*b) != pending.owned));
            }
            LogOp::Put(state) => {
                let old = entry.committed.replace(state);
                entry.tombstone = None;
                released.extend(old.and_then(|s| s.block).filter(|b| Some(*b) != state.block));
            }
            LogOp::Delete { tombstone, release } => {
                let old = entry.committed.take();
                entry.tombstone = tombstone;
                released.extend(old.and_then(|s| s.block));
                released.extend(release);
            }
            LogOp::Abort { .. } => unreachable!("handled above"),
        }
        if entry.is_empty() {
            self.chunks.remove(&item.chunk);
        }
        for block in released {
            self.release_block(block);
        }
    }
}

struct Shared<D: Device> {
    device: D,
    files: Vec<D::File>,
    config: StoreConfig,
    /// Admits chunk-data writes to the device (`config.write_inflight_bytes_max`).
    write_gate: WriteGate,
    inner: RefCell<Inner<D>>,
    /// Live [`ChunkStore`] handles.
    handles: std::cell::Cell<usize>,
}

impl<D: Device> Shared<D> {
    fn inner(&self) -> RefMut<'_, Inner<D>> {
        self.inner.borrow_mut()
    }

    fn file(&self, class: SizeClass) -> &D::File {
        &self.files[class.index()]
    }
}

/// The chunk store of one target. Clone it freely (a handle); every clone is the same store.
/// When the last handle is dropped the flusher finishes the queued commits and stops, which
/// releases the device (and the target's lock).
pub struct ChunkStore<D: Device> {
    shared: Rc<Shared<D>>,
    /// Whether this handle counts in `Shared::handles` (the flusher's own does not).
    counted: bool,
}

impl<D: Device> ChunkStore<D> {
    fn new_handle(shared: Rc<Shared<D>>) -> Self {
        shared.handles.set(shared.handles.get() + 1);
        ChunkStore { shared, counted: true }
    }
}

impl<D: Device> Clone for ChunkStore<D> {
    fn clone(&self) -> Self {
        ChunkStore::new_handle(self.shared.clone())
    }
}

impl<D: Device> Drop for ChunkStore<D> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let left = self.shared.handles.get() - 1;
        self.shared.handles.set(left);
        if left == 0
            && let Ok(mut inner) = self.shared.inner.try_borrow_mut()
        {
            inner.closing = true;
            inner.wake_flusher();
        }
    }
}

impl<D: Device> std::fmt::Debug for ChunkStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore").field("stats", &self.stats()).finish()
    }
}

/// The task that writes commit batches and compacts the log. Run it on the store's executor
/// (`glommio::spawn_local(flusher.run()).detach()`); commits wait for it.
pub struct Flusher<D: Device> {
    shared: Rc<Shared<D>>,
}

impl<D: Device> std::fmt::Debug for Flusher<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

/// Marks a block as being read until dropped.
struct ReadGuard<'a, D: Device> {
    shared: &'a Shared<D>,
    addr: BlockAddr,
}

impl<'a, D: Device> ReadGuard<'a, D> {
    fn begin(shared: &'a Shared<D>, addr: BlockAddr, units_end: u32) -> Self {
        shared.inner().alloc.begin_read(addr, units_end);
        ReadGuard { shared, addr }
    }
}

impl<D: Device> Drop for ReadGuard<'_, D> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.shared.inner.try_borrow_mut()
            && inner.alloc.end_read(self.addr)
        {
            inner.cache.forget_block(self.addr, pages_for_units(self.addr.class.units()));
        }
    }
}

/// Undoes a stage that did not finish: clears `staging`, and frees, quarantines or taints the
/// blocks it touched depending on whether IO might still be in flight.
struct StagingGuard<'a, D: Device> {
    shared: &'a Shared<D>,
    chunk: ChunkId,
    new_block: Option<BlockAddr>,
    in_place: Option<BlockAddr>,
    io_in_flight: bool,
    done: bool,
}

impl<D: Device> Drop for StagingGuard<'_, D> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(mut inner) = self.shared.inner.try_borrow_mut() else { return };
        if let Some(addr) = self.new_block {
            if self.io_in_flight {
                tracing::warn!(chunk = %self.chunk, ?addr, "stage cancelled mid-IO: block quarantined until restart");
                inner.alloc.quarantine(addr);
            } else {
                inner.release_block(addr);
            }
        }
        if let (Some(addr), true) = (self.in_place, self.io_in_flight) {
            inner.alloc.taint(addr);
        }
        if let Some(entry) = inner.chunks.get_mut(&self.chunk) {
            entry.staging = false;
            if entry.is_empty() {
                inner.chunks.remove(&self.chunk);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct StageParams {
    chunk: ChunkId,
    version: ChunkVersion,
    chain_version: ChainVersion,
    chunk_size: u32,
}

impl StageParams {
    fn state(&self, len: u32, crc: u32, block: Option<BlockAddr>, serial: u64) -> ChunkState {
        ChunkState {
            version: self.version,
            chain_version: self.chain_version,
            len,
            crc,
            block,
            serial,
        }
    }
}

/// Plain CRC32C of each unit of `padded` (whole units) and of its first `len` bytes.
fn payload_crcs(padded: &[u8], len: usize) -> (Vec<u32>, u32) {
    assert_eq!(padded.len(), align_up(len));
    let mut units = Vec::with_capacity(padded.len() / UNIT_BYTES);
    let mut fold = CrcFold::new();
    for unit in padded.chunks_exact(UNIT_BYTES) {
        let take = (len - fold.len() as usize).min(UNIT_BYTES);
        if take == UNIT_BYTES {
            let crc = crc32c::crc32c(unit);
            fold.push_unit(crc);
            units.push(crc);
        } else {
            let partial = crc32c::crc32c(&unit[..take]);
            fold.push(partial, take as u64);
            units.push(crc32c::crc32c_append(partial, &unit[take..]));
        }
    }
    (units, fold.crc())
}

/// Header pages `first_page..` holding `stored` (the checksums of units from the first page's
/// first unit on): their bytes, and the per-page checksum slices for the cache.
fn header_pages(stored: &[u32]) -> (Vec<u8>, Vec<Rc<[u32]>>) {
    let mut bytes = Vec::with_capacity(align_up(stored.len() * 4));
    let mut pages = Vec::new();
    for page in stored.chunks(CRCS_PER_PAGE) {
        for crc in page {
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        pages.push(Rc::from(page));
    }
    bytes.resize(align_up(bytes.len()), 0);
    (bytes, pages)
}

fn parse_page(bytes: &[u8], units: usize) -> Rc<[u32]> {
    bytes
        .chunks_exact(4)
        .take(units)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

fn validate_chunk_size(chunk_size: u32) -> Result<(), StoreError> {
    if !chunk_size.is_power_of_two() || !(CLASS_BYTES_MIN..=CLASS_BYTES_MAX).contains(&chunk_size) {
        return Err(StoreError::InvalidArgument(format!(
            "chunk size {chunk_size} is not a power of two in 64 KiB..=64 MiB"
        )));
    }
    Ok(())
}

/// The class of a new block for `len` bytes. A chunk outgrowing its block jumps to the class of
/// the full chunk size: a streaming writer then copies its first piece once, not at every
/// doubling.
fn choose_class(len: u32, chunk_size: u32, base: Option<BlockAddr>) -> SizeClass {
    let need = SizeClass::for_len(len).unwrap_or(SizeClass::ALL[CLASS_COUNT - 1]);
    match base {
        Some(b) if len > b.class.data_bytes() => {
            need.max(SizeClass::for_len(chunk_size).unwrap_or(need))
        }
        _ => need,
    }
}

/// Whether a block holds exactly the committed state `state` of `chunk`: every unit's keyed
/// checksum and the chunk checksum verify. A block past the end of its file does not.
async fn verify_block<F: DeviceFile>(
    file: &F,
    chunk: ChunkId,
    state: &ChunkState,
) -> std::io::Result<bool> {
    let Some(addr) = state.block else { return Ok(state.len == 0) };
    let units = units_for(state.len);
    let header_bytes = addr.class.header_bytes() as usize;
    let len = header_bytes + (units * UNIT) as usize;
    let buf = file.read_at(addr.offset(), len).await?;
    let Some(bytes) = buf.as_ref().get(..len) else { return Ok(false) };
    let (header, data) = bytes.split_at(header_bytes);
    let key = UnitKey::new(chunk, state.serial);
    let mut fold = CrcFold::new();
    for (i, unit) in data.chunks_exact(UNIT_BYTES).enumerate() {
        let at = i * 4;
        let stored =
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let crc = crc32c::crc32c(unit);
        if crc ^ key.for_unit(i as u32) != stored {
            return Ok(false);
        }
        let start = i * UNIT_BYTES;
        let take = (state.len as usize - start).min(UNIT_BYTES);
        if take == UNIT_BYTES {
            fold.push_unit(crc);
        } else {
            fold.push_bytes(&unit[..take]);
        }
    }
    Ok(fold.crc() == state.crc)
}

impl<D: Device> ChunkStore<D> {
    /// Opens (or formats, if the directory holds no store) the store on `device`.
    pub async fn open(device: D, config: StoreConfig) -> Result<(Self, Flusher<D>), OpenError> {
        config.validate().map_err(OpenError::InvalidConfig)?;
        let names = device.list().await.map_err(OpenError::io("listing the target directory"))?;
        let mut generations: Vec<u64> =
            names.iter().filter_map(|n| format::parse_log_file_name(n)).collect();
        generations.sort_unstable_by(|a, b| b.cmp(a));
        let max_generation = generations.first().copied().unwrap_or(0);

        let mut chosen = None;
        for &generation in &generations {
            let name = format::log_file_name(generation);
            let file =
                device.open(&name, false).await.map_err(OpenError::io("opening a metadata log"))?;
            match journal::replay(&file, generation).await {
                Ok(replayed) => {
                    chosen = Some((generation, replayed));
                    break;
                }
                Err(ReplayError::Incomplete(why)) => {
                    tracing::warn!(log = %name, %why, "ignoring an incomplete metadata log");
                }
                Err(ReplayError::Corrupt(why)) => {
                    return Err(OpenError::Corrupt(format!("{name}: {why}")));
                }
                Err(ReplayError::Io(e)) => {
                    return Err(OpenError::Io { op: "reading a metadata log", source: e });
                }
            }
        }

        let mut files = Vec::with_capacity(CLASS_COUNT);
        let mut slots = [0u32; CLASS_COUNT];
        let mut any_data = false;
        for class in SizeClass::ALL {
            let file = device
                .open(&class.file_name(), true)
                .await
                .map_err(OpenError::io("opening a block file"))?;
            let len = file.size().await.map_err(OpenError::io("sizing a block file"))?;
            any_data |= len > 0;
            // A partial last slot counts: a crash may keep a block's bytes (written past the
            // end) but lose the growth that covered the rest of its slot.
            slots[class.index()] =
                u32::try_from(len.div_ceil(class.stride_bytes())).map_err(|_| {
                    OpenError::Corrupt(format!("{} is impossibly large", class.file_name()))
                })?;
            files.push(file);
        }

        let replayed = match chosen {
            Some((generation, replayed)) => {
                tracing::info!(
                    generation,
                    chunks = replayed.chunks.len(),
                    log_bytes = replayed.valid_bytes,
                    "replayed metadata log"
                );
                replayed
            }
            None if !any_data => journal::Replayed {
                chunks: BTreeMap::new(),
                next_seq: 1,
                next_serial: 1,
                valid_bytes: 0,
                last_batch: Vec::new(),
            },
            None => {
                return Err(OpenError::Corrupt(format!(
                    "block files hold data but no complete metadata log exists (found \
                     generations {generations:?})"
                )));
            }
        };

        // The last batch's records were written while its data was being synced: keep each
        // only if its data verifies, else fall back to the chunk's state before the batch.
        let mut replayed = replayed;
        for change in std::mem::take(&mut replayed.last_batch) {
            let mut intact = true;
            for state in change.written.iter().flatten() {
                let file = &files[state.block.map_or(0, |b| b.class.index())];
                intact &= verify_block(file, change.chunk, state)
                    .await
                    .map_err(OpenError::io("verifying the last commit batch"))?;
            }
            if !intact {
                tracing::warn!(
                    chunk = %change.chunk,
                    "the data of this chunk's last update never reached the disk: reverting to \
                     its state before that update"
                );
                if change.previous.is_empty() {
                    replayed.chunks.remove(&change.chunk);
                } else {
                    replayed.chunks.insert(change.chunk, change.previous);
                }
            }
        }

        let used = replayed.chunks.values().flat_map(Durable::blocks);
        let mut alloc = Allocator::new(config.capacity_bytes, config.grow_bytes_max, slots, used)
            .map_err(OpenError::Corrupt)?;
        for (chunk, durable) in &replayed.chunks {
            let states = durable.committed.iter().chain(durable.staged.as_ref().map(|s| &s.state));
            for state in states {
                if state.len > 0 && state.block.is_none() {
                    return Err(OpenError::Corrupt(format!(
                        "chunk {chunk} has {} bytes but no block",
                        state.len
                    )));
                }
            }
        }

        // A fresh generation at every open: stale or torn records of the old log can never be
        // mistaken for new ones, and the log starts compact.
        let generation = max_generation + 1;
        let name = format::log_file_name(generation);
        let log_file =
            device.open(&name, true).await.map_err(OpenError::io("creating a metadata log"))?;
        log_file.set_len(0).await.map_err(OpenError::io("resetting a metadata log"))?;
        let mut writer = CheckpointWriter::new(generation, replayed.next_seq - 1);
        let entries: Vec<(ChunkId, EntryState)> = replayed
            .chunks
            .iter()
            .flat_map(|(chunk, durable)| durable.entries().map(|e| (*chunk, e)))
            .collect();
        for slice in entries.chunks(COMPACTION_SLICE_ENTRIES) {
            let bytes = writer.encode_entries(slice.iter().copied());
            writer
                .write(&device, &log_file, &bytes)
                .await
                .map_err(OpenError::io("writing a checkpoint"))?;
        }
        if replayed.chunks.is_empty() {
            let bytes = writer.encode_entries(std::iter::empty());
            writer
                .write(&device, &log_file, &bytes)
                .await
                .map_err(OpenError::io("writing a checkpoint"))?;
        }
        writer
            .finish(&device, &log_file, replayed.next_serial)
            .await
            .map_err(OpenError::io("syncing a checkpoint"))?;
        for old in names.iter().filter(|n| format::parse_log_file_name(n).is_some()) {
            device.remove(old).await.map_err(OpenError::io("removing an old metadata log"))?;
        }
        device.sync_dir().await.map_err(OpenError::io("syncing the target directory"))?;

        // Drop free slots at the end of each block file; complete a partial last used slot.
        for class in SizeClass::ALL {
            let keep = u64::from(alloc.trim_slots(class)) * class.stride_bytes();
            let file = &files[class.index()];
            let len = file.size().await.map_err(OpenError::io("sizing a block file"))?;
            if len != keep {
                file.set_len(keep).await.map_err(OpenError::io("trimming a block file"))?;
            }
        }

        let tail = writer.tail.clone();
        let zeroed_end = align_up(tail.pos as usize) as u64;
        let stats = StoreStats { log_generation: generation, ..StoreStats::default() };
        let inner = Inner {
            chunks: replayed
                .chunks
                .into_iter()
                .map(|(chunk, durable)| {
                    let committed_block = durable.committed.and_then(|c| c.block);
                    let entry = Entry {
                        committed: durable.committed,
                        tombstone: durable.tombstone,
                        pending: durable.staged.map(|s| Pending::from_staged(s, committed_block)),
                        ..Entry::default()
                    };
                    (chunk, entry)
                })
                .collect(),
            alloc,
            cache: PageCache::new(config.header_cache_bytes),
            dirty: [false; CLASS_COUNT],
            stable: Default::default(),
            fresh: Default::default(),
            next_serial: replayed.next_serial,
            failed: None,
            log_space_low: false,
            log_file: Rc::new(log_file),
            generation,
            next_generation: generation + 1,
            tail,
            zeroed_end,
            next_seq: replayed.next_seq,
            queue: VecDeque::new(),
            next_ticket: 0,
            applied_through: 0,
            waiters: Vec::new(),
            flusher_waker: None,
            closing: false,
            flusher_done: false,
            compaction: None,
            compaction_retry_pos: 0,
            compaction_requested: false,
            stats,
        };
        let shared = Rc::new(Shared {
            device,
            files,
            write_gate: WriteGate::new(config.write_inflight_bytes_max),
            config,
            inner: RefCell::new(inner),
            handles: std::cell::Cell::new(0),
        });
        let store = ChunkStore::new_handle(shared.clone());
        store.extend_log().await;
        if let Some(why) = shared.inner().failed.clone() {
            return Err(OpenError::Corrupt(why));
        }
        Ok((store, Flusher { shared }))
    }

    /// A buffer for `len` bytes of chunk data (at most 64 MiB).
    pub fn alloc_buf(&self, len: usize) -> ChunkBuf<D::Buf> {
        let buf = self.shared.device.alloc_buf(align_up(len.max(1)));
        ChunkBuf { buf, len }
    }

    pub fn metadata(&self, chunk: ChunkId) -> Option<ChunkMeta> {
        let inner = self.shared.inner.borrow();
        let entry = inner.chunks.get(&chunk)?;
        let meta = chunk_meta(chunk, entry);
        (meta.committed.is_some() || meta.tombstone.is_some() || meta.pending.is_some())
            .then_some(meta)
    }

    /// The committed chunk of `inode` with the highest index (the file's last chunk).
    pub fn last_chunk(&self, inode: InodeId) -> Option<ChunkMeta> {
        let inner = self.shared.inner.borrow();
        inner
            .chunks
            .range(ChunkId::new(inode, 0)..=ChunkId::new(inode, u64::MAX))
            .rev()
            .find(|(_, e)| e.committed.is_some())
            .map(|(chunk, e)| chunk_meta(*chunk, e))
    }

    /// Committed chunks and tombstones from `start` on, in `ChunkId` order, at most `limit`
    /// (capped at [`LIST_MAX`]): resync compares both.
    pub fn list(&self, start: ChunkId, limit: usize) -> Vec<ChunkMeta> {
        let inner = self.shared.inner.borrow();
        inner
            .chunks
            .range(start..)
            .filter(|(_, e)| e.committed.is_some() || e.tombstone.is_some())
            .take(limit.min(LIST_MAX))
            .map(|(chunk, e)| chunk_meta(*chunk, e))
            .collect()
    }

    /// Chunks with a staged (pending) version from `start` on, in `ChunkId` order, at most
    /// `limit` (capped at [`LIST_MAX`]): a replica that becomes its chain's head scans them to
    /// roll forward updates it did not order itself.
    pub fn list_staged(&self, start: ChunkId, limit: usize) -> Vec<ChunkMeta> {
        let inner = self.shared.inner.borrow();
        inner
            .chunks
            .range(start..)
            .filter(|(_, e)| e.pending.is_some())
            .take(limit.min(LIST_MAX))
            .map(|(chunk, e)| chunk_meta(*chunk, e))
            .collect()
    }

    pub fn locate(&self, chunk: ChunkId) -> Option<BlockLocation> {
        let inner = self.shared.inner.borrow();
        let addr = inner.chunks.get(&chunk)?.committed?.block?;
        Some(Self::location(addr))
    }

    /// Where the block of a chunk's staged version lives, when it has one of its own (not
    /// shared with the committed version).
    pub fn locate_pending(&self, chunk: ChunkId) -> Option<BlockLocation> {
        let inner = self.shared.inner.borrow();
        let addr = inner.chunks.get(&chunk)?.pending?.owned?;
        Some(Self::location(addr))
    }

    fn location(addr: BlockAddr) -> BlockLocation {
        BlockLocation {
            file_name: addr.class.file_name(),
            header_offset: addr.offset(),
            data_offset: addr.unit_offset(0),
            data_bytes: addr.class.data_bytes(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        let inner = self.shared.inner.borrow();
        StoreStats {
            space: inner.alloc.stats(),
            chunks: inner.chunks.values().filter(|e| e.committed.is_some()).count() as u64,
            log_generation: inner.generation,
            log_bytes: inner.tail.pos,
            header_cache_bytes: inner.cache.bytes(),
            ..inner.stats
        }
    }

    pub fn space(&self) -> SpaceStats {
        self.shared.inner.borrow().alloc.stats()
    }

    /// Why the store stopped accepting updates, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.inner.borrow().failed.clone()
    }

    /// Reads committed bytes `[offset, offset + len)` of a chunk, verifying every unit's checksum.
    pub async fn read(
        &self,
        chunk: ChunkId,
        offset: u32,
        len: u32,
    ) -> Result<ReadOutcome<D::ReadBuf>, StoreError> {
        let state = {
            let inner = self.shared.inner.borrow();
            inner
                .chunks
                .get(&chunk)
                .and_then(|e| e.committed)
                .ok_or(StoreError::ChunkNotFound(chunk))?
        };
        self.read_state(chunk, state, offset, len).await
    }

    /// Reads bytes of a chunk's staged (pending) version, verifying every unit's checksum: a
    /// chain replica re-sends a pending version whole when its successor lacks the base.
    /// `Ok(None)` when nothing is staged, or the staged version removes the chunk.
    pub async fn read_pending(
        &self,
        chunk: ChunkId,
        offset: u32,
        len: u32,
    ) -> Result<Option<ReadOutcome<D::ReadBuf>>, StoreError> {
        let state = {
            let inner = self.shared.inner.borrow();
            match inner.chunks.get(&chunk).and_then(|e| e.pending) {
                Some(Pending { change: Change::Put(state), .. }) => state,
                _ => return Ok(None),
            }
        };
        self.read_state(chunk, state, offset, len).await.map(Some)
    }

    /// Reads many chunks concurrently; results are in request order.
    pub async fn batch_read(
        &self,
        requests: &[ReadRequest],
    ) -> Result<Vec<Result<ReadOutcome<D::ReadBuf>, StoreError>>, StoreError> {
        if requests.len() > BATCH_READ_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "batch of {} reads exceeds {BATCH_READ_MAX}",
                requests.len()
            )));
        }
        Ok(futures::future::join_all(requests.iter().map(|r| self.read(r.chunk, r.offset, r.len)))
            .await)
    }

    async fn read_state(
        &self,
        chunk: ChunkId,
        state: ChunkState,
        offset: u32,
        len: u32,
    ) -> Result<ReadOutcome<D::ReadBuf>, StoreError> {
        let end = (u64::from(offset) + u64::from(len)).min(u64::from(state.len)) as u32;
        let mut outcome = ReadOutcome {
            version: state.version,
            chain_version: state.chain_version,
            chunk_len: state.len,
            offset,
            crc: 0,
            buf: None,
            start: 0,
            len: 0,
        };
        if offset >= end {
            return Ok(outcome);
        }
        let corrupt = |detail: String| StoreError::ChunkCorrupt { chunk, detail };
        let Some(addr) = state.block else {
            return Err(corrupt(format!("{} bytes but no block", state.len)));
        };
        let shared = &*self.shared;
        let u0 = offset / UNIT;
        let u1 = units_for(end);
        let (p0, p1) = (u0 / PAGE_UNITS, (u1 - 1) / PAGE_UNITS);
        // No await between the state lookup and this: the block cannot be freed under us.
        let _guard = ReadGuard::begin(shared, addr, u1);
        let mut pages: Vec<Option<Rc<[u32]>>> = {
            let mut inner = shared.inner();
            (p0..=p1).map(|p| inner.cache.get(addr, p, u1.min((p + 1) * PAGE_UNITS))).collect()
        };
        let missing = pages.iter().position(Option::is_none).map(|first| {
            let last = pages.iter().rposition(Option::is_none).unwrap_or(first);
            (p0 + first as u32, p0 + last as u32)
        });
        let file = shared.file(addr.class);
        let data_offset = addr.unit_offset(u0);
        let data_len = ((u1 - u0) * UNIT) as usize;
        let io = StoreError::io("reading a chunk");
        let (buf, data_start) = match missing {
            None => (file.read_at(data_offset, data_len).await.map_err(io)?, 0),
            Some((pa, pb)) if u0 == 0 => {
                // Header pages directly precede the data: one read.
                let start = addr.header_page_offset(pa);
                let buf = file
                    .read_at(start, (data_offset - start) as usize + data_len)
                    .await
                    .map_err(io)?;
                self.fill_pages(&mut pages, buf.as_ref(), addr, (p0, pa, pb), state.len)
                    .map_err(corrupt)?;
                (buf, (data_offset - start) as usize)
            }
            Some((pa, pb)) => {
                let header_len = ((pb - pa + 1) * UNIT) as usize;
                let (data, header) = futures::join!(
                    file.read_at(data_offset, data_len),
                    file.read_at(addr.header_page_offset(pa), header_len)
                );
                let (data, header) = (
                    data.map_err(StoreError::io("reading a chunk"))?,
                    header.map_err(StoreError::io("reading a block header"))?,
                );
                self.fill_pages(&mut pages, header.as_ref(), addr, (p0, pa, pb), state.len)
                    .map_err(corrupt)?;
                (data, 0)
            }
        };
        let bytes = buf.as_ref();
        if bytes.len() < data_start + data_len {
            return Err(corrupt(format!(
                "block {} of {} lies beyond the end of the file",
                addr.slot,
                addr.class.file_name()
            )));
        }
        let data = &bytes[data_start..data_start + data_len];
        let key = UnitKey::new(chunk, state.serial);
        let rel_start = (offset - u0 * UNIT) as usize;
        let n = (end - offset) as usize;
        let mut fold = CrcFold::new();
        for (k, unit) in data.chunks_exact(UNIT_BYTES).enumerate() {
            let i = u0 + k as u32;
            let page = pages[(i / PAGE_UNITS - p0) as usize].as_ref();
            let stored = page.and_then(|p| p.get((i % PAGE_UNITS) as usize).copied());
            let crc = crc32c::crc32c(unit);
            if stored != Some(crc ^ key.for_unit(i)) {
                tracing::warn!(%chunk, unit = i, "chunk unit fails its checksum");
                return Err(corrupt(format!(
                    "unit {i} (chunk bytes {}..{}) fails its checksum",
                    u64::from(i) * u64::from(UNIT),
                    u64::from(i + 1) * u64::from(UNIT)
                )));
            }
            if rel_start == 0 {
                let unit_start = k * UNIT_BYTES;
                if unit_start + UNIT_BYTES <= n {
                    fold.push_unit(crc);
                } else if unit_start < n {
                    fold.push_bytes(&unit[..n - unit_start]);
                }
            }
        }
        outcome.crc = if rel_start == 0 {
            fold.crc()
        } else {
            crc32c::crc32c(&data[rel_start..rel_start + n])
        };
        if offset == 0 && end == state.len && outcome.crc != state.crc {
            return Err(corrupt(format!(
                "units verify but the chunk checksum is {:08x}, committed {:08x}",
                outcome.crc, state.crc
            )));
        }
        outcome.start = data_start + rel_start;
        outcome.len = n;
        outcome.buf = Some(buf);
        Ok(outcome)
    }

    /// Parses header pages `pa..=pb` from `bytes` into `pages` (indexed from `p0`) and caches
    /// them, vouching only for the units of the committed length the reader saw.
    fn fill_pages(
        &self,
        pages: &mut [Option<Rc<[u32]>>],
        bytes: &[u8],
        addr: BlockAddr,
        (p0, pa, pb): (u32, u32, u32),
        chunk_len: u32,
    ) -> Result<(), String> {
        let units = addr.class.units();
        let valid = units_for(chunk_len);
        let mut inner = self.shared.inner();
        for p in pa..=pb {
            let at = ((p - pa) * UNIT) as usize;
            let Some(page_bytes) = bytes.get(at..at + UNIT_BYTES) else {
                return Err(format!("header page {p} lies beyond the end of the file"));
            };
            let first = p * PAGE_UNITS;
            let count = (units - first).min(PAGE_UNITS) as usize;
            let crcs = parse_page(page_bytes, count);
            let valid_end = valid.min(first + count as u32);
            if valid_end > first {
                inner.cache.insert(addr, p, crcs.clone(), valid_end, false);
            }
            pages[(p - p0) as usize] = Some(crcs);
        }
        Ok(())
    }

    /// Stages an update as the chunk's pending version (durable data, volatile metadata: a
    /// crash forgets it). The base of a partial update is the committed content.
    /// Writes a pending version. Durable on return: it survives a crash (with its data) until
    /// it is committed, aborted or replaced, so a chain replica that restarts still holds what
    /// it may have passed on to its successor.
    pub async fn stage(&self, request: StageRequest<D::Buf>) -> Result<StageOutcome, StoreError> {
        self.stage_inner(request, false, true).await
    }

    /// `durable`: log a stage record and wait for it; without, the pending version is only in
    /// memory (the caller commits it at once, and the commit's record covers both).
    async fn stage_inner(
        &self,
        request: StageRequest<D::Buf>,
        force: bool,
        durable: bool,
    ) -> Result<StageOutcome, StoreError> {
        let StageRequest { chunk, version, chain_version, chunk_size, op } = request;
        validate_chunk_size(chunk_size)?;
        match &op {
            UpdateOp::Write { offset, data, .. } => {
                if data.is_empty() {
                    return Err(StoreError::InvalidArgument("empty write".into()));
                }
                if u64::from(*offset) + data.len() as u64 > u64::from(chunk_size) {
                    return Err(StoreError::InvalidArgument(format!(
                        "write of {} bytes at {offset} exceeds chunk size {chunk_size}",
                        data.len()
                    )));
                }
            }
            UpdateOp::Replace { data, .. } if data.len() as u64 > u64::from(chunk_size) => {
                return Err(StoreError::InvalidArgument(format!(
                    "{} bytes exceed chunk size {chunk_size}",
                    data.len()
                )));
            }
            UpdateOp::Truncate { len } | UpdateOp::Extend { len } if *len > chunk_size => {
                return Err(StoreError::InvalidArgument(format!(
                    "length {len} exceeds chunk size {chunk_size}"
                )));
            }
            _ => {}
        }
        let shared = &*self.shared;
        let base = {
            let mut inner = shared.inner();
            if let Some(why) = &inner.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            if inner.log_space_low
                && matches!(op, UpdateOp::Write { .. } | UpdateOp::Replace { .. })
            {
                return Err(StoreError::NoSpace { needed_bytes: 0, free_bytes: 0 });
            }
            let entry = inner.chunks.entry(chunk).or_default();
            if entry.staging || entry.committing {
                return Ok(StageOutcome::Busy);
            }
            let committed = entry.version();
            if !force && committed.0 > 0 && committed >= version {
                return Ok(StageOutcome::AlreadyCommitted { committed });
            }
            entry.staging = true;
            entry.committed
        };
        let mut guard = StagingGuard {
            shared,
            chunk,
            new_block: None,
            in_place: None,
            io_in_flight: false,
            done: false,
        };
        let params = StageParams { chunk, version, chain_version, chunk_size };
        let (change, owned) = match op {
            UpdateOp::Remove => (Change::Delete, None),
            UpdateOp::Truncate { len } => {
                self.stage_truncate(&mut guard, params, base, len).await?
            }
            UpdateOp::Extend { len } => {
                // The base is the committed content: never shorter than it was.
                let len = len.max(base.map_or(0, |b| b.len));
                self.stage_truncate(&mut guard, params, base, len).await?
            }
            UpdateOp::Write { offset, data, crc } => {
                self.stage_write(&mut guard, params, base, offset, data, crc, false).await?
            }
            UpdateOp::Replace { data, crc } => {
                self.stage_write(&mut guard, params, base, 0, data, crc, true).await?
            }
        };
        let pending = Pending { version, chain_version, change, owned, durable };
        let ticket = {
            let mut inner = shared.inner();
            guard.done = true;
            let Some(entry) = inner.chunks.get_mut(&chunk) else {
                panic!("staging chunk {chunk} lost its entry");
            };
            entry.staging = false;
            if durable {
                // The pending version becomes visible (and replaces the old one, whose block is
                // freed) when its record is durable. Until then the chunk is busy.
                entry.committing = true;
                Some(inner.enqueue(chunk, LogOp::Stage(pending)))
            } else {
                match entry.pending.replace(pending) {
                    Some(old) if old.durable => {
                        // Its stage record must not come back at the next open; its block is
                        // free once the abort is durable. The caller's commit, queued next,
                        // waits for both.
                        let op = LogOp::Abort { version: old.version, release: old.owned };
                        inner.enqueue(chunk, op);
                    }
                    Some(old) => {
                        if let Some(block) = old.owned {
                            inner.release_block(block);
                        }
                    }
                    None => {}
                }
                None
            }
        };
        if let Some(ticket) = ticket {
            self.wait_applied(ticket).await?;
        }
        Ok(StageOutcome::Staged(pending.meta()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn stage_write(
        &self,
        guard: &mut StagingGuard<'_, D>,
        params: StageParams,
        base: Option<ChunkState>,
        offset: u32,
        data: ChunkBuf<D::Buf>,
        client_crc: u32,
        replace: bool,
    ) -> Result<(Change, Option<BlockAddr>), StoreError> {
        let ChunkBuf { mut buf, len } = data;
        let n = len as u32;
        let padded = align_up(len);
        buf.as_mut()[len..padded].fill(0);
        let end = offset + n;
        let base_len = base.map_or(0, |b| b.len);
        let new_len = if replace { n } else { base_len.max(end) };
        let aligned = offset.is_multiple_of(UNIT);
        let (units, crc) = if aligned && len > 0 {
            let (units, crc) = payload_crcs(&buf.as_ref()[..padded], len);
            (Some(units), crc)
        } else {
            (None, crc32c::crc32c(&buf.as_ref()[..len]))
        };
        if crc != client_crc {
            return Err(StoreError::ChecksumMismatch {
                chunk: params.chunk,
                expected: client_crc,
                actual: crc,
            });
        }
        if new_len == 0 {
            return Ok((Change::Put(params.state(0, 0, None, 0)), None));
        }
        let base_block = base.and_then(|b| b.block);
        if let (Some(b), Some(block), Some(units), false) = (base, base_block, &units, replace)
            && offset >= base_len
            && base_len.is_multiple_of(UNIT)
            && self.in_place_ok(block, base_len, new_len)
        {
            let payload = Payload { offset, buf, len: n, units: units.clone(), crc };
            return self.append_in_place(guard, params, b, new_len, Some(payload)).await;
        }
        // A replace says what the chunk is; only growth by writes guesses it will grow on.
        let class = choose_class(new_len, params.chunk_size, base_block.filter(|_| !replace));
        if offset == 0 && (replace || n >= base_len) {
            let Some(units) = units else { unreachable!("offset 0 is aligned") };
            return self.write_new_block(guard, params, class, buf, &units, new_len, crc).await;
        }
        // Merge into a fresh copy of the committed content.
        let mut content = self.shared.device.alloc_buf(align_up(new_len as usize));
        content.as_mut().fill(0);
        if let Some(b) = base.filter(|b| b.len > 0) {
            let read = self.read_state(params.chunk, b, 0, b.len).await?;
            content.as_mut()[..b.len as usize].copy_from_slice(read.data());
        }
        content.as_mut()[offset as usize..end as usize].copy_from_slice(&buf.as_ref()[..len]);
        drop(buf);
        let (units, crc) = payload_crcs(content.as_ref(), new_len as usize);
        self.write_new_block(guard, params, class, content, &units, new_len, crc).await
    }

    async fn stage_truncate(
        &self,
        guard: &mut StagingGuard<'_, D>,
        params: StageParams,
        base: Option<ChunkState>,
        len: u32,
    ) -> Result<(Change, Option<BlockAddr>), StoreError> {
        let base = base.filter(|b| b.block.is_some());
        let Some(b) = base else {
            if len == 0 {
                return Ok((Change::Put(params.state(0, 0, None, 0)), None));
            }
            let mut content = self.shared.device.alloc_buf(align_up(len as usize));
            content.as_mut().fill(0);
            let units = vec![crc32c::crc32c(&ZERO_UNIT); units_for(len) as usize];
            let class = choose_class(len, params.chunk_size, None);
            return self
                .write_new_block(guard, params, class, content, &units, len, zeros_crc(len.into()))
                .await;
        };
        let Some(block) = b.block else { unreachable!("filtered above") };
        if len == b.len {
            return Ok((Change::Put(params.state(len, b.crc, b.block, b.serial)), None));
        }
        if len == 0 {
            return Ok((Change::Put(params.state(0, 0, None, 0)), None));
        }
        if len < b.len {
            // Same block, shorter: bytes past the end stay on disk but are never read; an
            // in-place extension later only starts at a unit boundary past them.
            let read = self.read_state(params.chunk, b, 0, len).await?;
            return Ok((Change::Put(params.state(len, read.crc, b.block, b.serial)), None));
        }
        if b.len % UNIT == 0 && self.in_place_ok(block, b.len, len) {
            return self.append_in_place(guard, params, b, len, None).await;
        }
        let mut content = self.shared.device.alloc_buf(align_up(len as usize));
        content.as_mut().fill(0);
        let read = self.read_state(params.chunk, b, 0, b.len).await?;
        content.as_mut()[..b.len as usize].copy_from_slice(read.data());
        drop(read);
        let (units, crc) = payload_crcs(content.as_ref(), len as usize);
        let class = choose_class(len, params.chunk_size, Some(block));
        self.write_new_block(guard, params, class, content, &units, len, crc).await
    }

    /// Whether `[base_len, new_len)` may be written into the committed block itself: it fits,
    /// no cancelled IO may still hit the block, and no reader reads past `base_len`.
    fn in_place_ok(&self, block: BlockAddr, base_len: u32, new_len: u32) -> bool {
        let inner = self.shared.inner.borrow();
        new_len <= block.class.data_bytes()
            && !inner.alloc.is_tainted(block)
            && inner.alloc.read_units_end(block) <= base_len / UNIT
    }

    /// Writes a whole new block: data units and header pages.
    #[allow(clippy::too_many_arguments)]
    async fn write_new_block(
        &self,
        guard: &mut StagingGuard<'_, D>,
        params: StageParams,
        class: SizeClass,
        data: D::Buf,
        units: &[u32],
        len: u32,
        crc: u32,
    ) -> Result<(Change, Option<BlockAddr>), StoreError> {
        assert_eq!(units.len(), units_for(len) as usize);
        assert_eq!(data.as_ref().len(), align_up(len as usize));
        let addr = self.obtain_block(class).await?;
        guard.new_block = Some(addr);
        let serial = {
            let mut inner = self.shared.inner();
            let serial = inner.next_serial;
            inner.next_serial += 1;
            serial
        };
        let key = UnitKey::new(params.chunk, serial);
        let stored: Vec<u32> =
            units.iter().enumerate().map(|(i, c)| c ^ key.for_unit(i as u32)).collect();
        let (header, pages) = header_pages(&stored);
        let mut header_buf = self.shared.device.alloc_buf(header.len());
        header_buf.as_mut().copy_from_slice(&header);
        let file = self.shared.file(class);
        let permit =
            self.shared.write_gate.admit((data.as_ref().len() + header.len()) as u64).await;
        guard.io_in_flight = true;
        let (data_written, header_written) = futures::join!(
            file.write_at(data, addr.unit_offset(0)),
            file.write_at(header_buf, addr.header_page_offset(0))
        );
        guard.io_in_flight = false;
        drop(permit);
        data_written.map_err(StoreError::io("writing chunk data"))?;
        header_written.map_err(StoreError::io("writing a block header"))?;
        let flushes_device = self.shared.device.sync_flushes_device();
        let mut inner = self.shared.inner();
        let c = class.index();
        if !(flushes_device && inner.stable[c].contains(&addr.slot)) {
            inner.dirty[c] = true;
            if units.len() as u32 == class.units() {
                inner.fresh[c].push(addr.slot);
            }
        }
        inner.cache.forget_block(addr, pages_for_units(class.units()));
        let unit_count = units.len() as u32;
        for (p, crcs) in pages.into_iter().enumerate() {
            let p = p as u32;
            let valid_end = unit_count.min((p + 1) * PAGE_UNITS);
            inner.cache.insert(addr, p, crcs, valid_end, true);
        }
        Ok((Change::Put(params.state(len, crc, Some(addr), serial)), Some(addr)))
    }

    /// Appends to the committed block past its (unit-aligned) committed length: zero units for
    /// any hole, the payload's units, and the header pages covering them. Readers of the
    /// committed version never look there, and the header bytes they rely on are rewritten
    /// with identical values.
    async fn append_in_place(
        &self,
        guard: &mut StagingGuard<'_, D>,
        params: StageParams,
        base: ChunkState,
        new_len: u32,
        payload: Option<Payload<D::Buf>>,
    ) -> Result<(Change, Option<BlockAddr>), StoreError> {
        let Some(block) = base.block else { unreachable!("in-place needs a block") };
        assert_eq!(base.len % UNIT, 0);
        let first_unit = base.len / UNIT;
        let data_unit = payload.as_ref().map_or(units_for(new_len), |p| p.offset / UNIT);
        let end_unit = units_for(new_len);
        let key = UnitKey::new(params.chunk, base.serial);
        let zero_crc = crc32c::crc32c(&ZERO_UNIT);
        let first_page = first_unit / PAGE_UNITS;
        let page_start = first_page * PAGE_UNITS;
        let file = self.shared.file(block.class);
        // Checksums already in the first page, for units below the committed length.
        let mut stored: Vec<u32> = Vec::with_capacity((end_unit - page_start) as usize);
        if first_unit > page_start {
            let cached = self.shared.inner().cache.get(block, first_page, first_unit);
            let page = match cached {
                Some(page) => page,
                None => {
                    let bytes = file
                        .read_at(block.header_page_offset(first_page), UNIT_BYTES)
                        .await
                        .map_err(StoreError::io("reading a block header"))?;
                    if bytes.as_ref().len() < UNIT_BYTES {
                        return Err(StoreError::ChunkCorrupt {
                            chunk: params.chunk,
                            detail: "block header lies beyond the end of the file".into(),
                        });
                    }
                    parse_page(bytes.as_ref(), CRCS_PER_PAGE)
                }
            };
            stored.extend_from_slice(&page[..(first_unit - page_start) as usize]);
        }
        for i in first_unit..data_unit {
            stored.push(zero_crc ^ key.for_unit(i));
        }
        if let Some(p) = &payload {
            for (k, crc) in p.units.iter().enumerate() {
                stored.push(crc ^ key.for_unit(data_unit + k as u32));
            }
        }
        assert_eq!(stored.len(), (end_unit - page_start) as usize);
        let (header, pages) = header_pages(&stored);
        let mut header_buf = self.shared.device.alloc_buf(header.len());
        header_buf.as_mut().copy_from_slice(&header);
        let hole_units = data_unit.min(end_unit) - first_unit;
        let hole = (hole_units > 0).then(|| {
            let mut zeros = self.shared.device.alloc_buf((hole_units * UNIT) as usize);
            zeros.as_mut().fill(0);
            zeros
        });
        let write_bytes = header_buf.as_ref().len()
            + hole.as_ref().map_or(0, |z| z.as_ref().len())
            + payload.as_ref().map_or(0, |p| p.buf.as_ref().len());
        let permit = self.shared.write_gate.admit(write_bytes as u64).await;
        guard.in_place = Some(block);
        guard.io_in_flight = true;
        let write_hole = async {
            match hole {
                Some(zeros) => file.write_at(zeros, block.unit_offset(first_unit)).await,
                None => Ok(()),
            }
        };
        let (payload_buf, payload_meta) = match payload {
            Some(Payload { offset, buf, len, crc, .. }) => (Some((buf, offset)), Some((len, crc))),
            None => (None, None),
        };
        let write_payload = async {
            match payload_buf {
                Some((buf, offset)) => file.write_at(buf, block.unit_offset(offset / UNIT)).await,
                None => Ok(()),
            }
        };
        let (hole_written, payload_written, header_written) = futures::join!(
            write_hole,
            write_payload,
            file.write_at(header_buf, block.header_page_offset(first_page))
        );
        guard.io_in_flight = false;
        drop(permit);
        hole_written.map_err(StoreError::io("writing chunk data"))?;
        payload_written.map_err(StoreError::io("writing chunk data"))?;
        header_written.map_err(StoreError::io("writing a block header"))?;
        // Committed bytes, then zeros up to the payload (or the new end), then the payload.
        let zeros_end = match payload_meta {
            Some(_) => data_unit * UNIT,
            None => new_len,
        };
        let hole_bytes = u64::from(zeros_end - base.len);
        let mut new_crc = combine(base.crc, zeros_crc(hole_bytes), hole_bytes);
        if let Some((len, crc)) = payload_meta {
            new_crc = combine(new_crc, crc, u64::from(len));
        }
        let flushes_device = self.shared.device.sync_flushes_device();
        let mut inner = self.shared.inner();
        if !(flushes_device && inner.stable[block.class.index()].contains(&block.slot)) {
            inner.dirty[block.class.index()] = true;
        }
        for (k, crcs) in pages.into_iter().enumerate() {
            let p = first_page + k as u32;
            let valid_end = end_unit.min((p + 1) * PAGE_UNITS);
            inner.cache.insert(block, p, crcs, valid_end, true);
        }
        Ok((Change::Put(params.state(new_len, new_crc, Some(block), base.serial)), None))
    }

    /// Obtains a free block of `class`, growing or reclaiming space as needed.
    async fn obtain_block(&self, class: SizeClass) -> Result<BlockAddr, StoreError> {
        let stride = class.stride_bytes();
        let file = self.shared.file(class);
        for _ in 0..ALLOC_ATTEMPTS_MAX {
            let grant = self.shared.inner().alloc.grant(class);
            match grant {
                Grant::Ready(addr) => return Ok(addr),
                Grant::Back(addr) => {
                    self.shared.inner().stable[class.index()].remove(&addr.slot);
                    let result = file.allocate(addr.offset(), stride).await;
                    let mut inner = self.shared.inner();
                    return match result {
                        Ok(()) => {
                            inner.alloc.backed(addr);
                            Ok(addr)
                        }
                        Err(e) => {
                            inner.alloc.backing_failed(addr);
                            Err(StoreError::io("allocating block space")(e))
                        }
                    };
                }
                Grant::Grow { first, slots } => {
                    {
                        let stable = &mut self.shared.inner().stable[class.index()];
                        for slot in first.slot..first.slot + slots {
                            stable.remove(&slot);
                        }
                    }
                    let result = file.allocate(first.offset(), u64::from(slots) * stride).await;
                    let mut inner = self.shared.inner();
                    match result {
                        Ok(()) => {
                            inner.alloc.grown(first, slots);
                            return Ok(first);
                        }
                        Err(e) => {
                            inner.alloc.growth_failed(first, slots);
                            let no_space = e.raw_os_error() == Some(libc::ENOSPC);
                            if !(no_space && slots > 1) {
                                return Err(StoreError::io("growing a block file")(e));
                            }
                            // Retry one slot at a time.
                        }
                    }
                }
                Grant::Reclaim(victims) => {
                    for victim in victims {
                        self.shared.inner().stable[victim.class.index()].remove(&victim.slot);
                        let victim_file = self.shared.file(victim.class);
                        let stride = victim.class.stride_bytes();
                        if let Err(e) = victim_file.punch_hole(victim.offset(), stride).await {
                            tracing::warn!(?victim, error = %e, "punching a free block failed");
                            self.shared.inner().alloc.punch_failed(victim);
                        }
                    }
                }
                Grant::NoSpace { needed_bytes, free_bytes } => {
                    return Err(StoreError::NoSpace { needed_bytes, free_bytes });
                }
            }
        }
        let free_bytes = self.space().free_bytes();
        Err(StoreError::NoSpace { needed_bytes: stride, free_bytes })
    }

    /// Commits the staged version `version` of a chunk: one log record, durable on return.
    pub async fn commit(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Result<CommitOutcome, StoreError> {
        let (ticket, change) = {
            let mut inner = self.shared.inner();
            if let Some(why) = &inner.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            let Some(entry) = inner.chunks.get_mut(&chunk) else {
                return Ok(CommitOutcome::NotStaged);
            };
            if entry.staging || entry.committing {
                return Ok(CommitOutcome::Busy);
            }
            let committed = Some(entry.version()).filter(|v| v.0 > 0 && *v >= version);
            let pending = match entry.pending {
                Some(p) if p.version == version => p,
                Some(p) => {
                    return Ok(match committed {
                        Some(committed) => CommitOutcome::AlreadyCommitted { committed },
                        None => CommitOutcome::VersionMismatch { pending: p.version },
                    });
                }
                None => {
                    return Ok(match committed {
                        Some(committed) => CommitOutcome::AlreadyCommitted { committed },
                        None => CommitOutcome::NotStaged,
                    });
                }
            };
            entry.pending = None;
            entry.committing = true;
            let op = match pending.change {
                Change::Put(state) => LogOp::Put(state),
                Change::Delete => LogOp::Delete {
                    tombstone: Some(Tombstone {
                        version: pending.version,
                        chain_version: pending.chain_version,
                    }),
                    release: None,
                },
            };
            (inner.enqueue(chunk, op), pending.change)
        };
        self.wait_applied(ticket).await?;
        Ok(CommitOutcome::Committed(match change {
            Change::Put(state) => Some(committed_meta(&state)),
            Change::Delete => None,
        }))
    }

    /// Stage and commit in one step (a chain's tail, or a store without replication).
    pub async fn update(&self, request: StageRequest<D::Buf>) -> Result<UpdateOutcome, StoreError> {
        let (chunk, version) = (request.chunk, request.version);
        self.stage_then_commit(request, false, chunk, version).await
    }

    /// Installs a full chunk at exactly `version`, whatever the local state (resync).
    pub async fn install(
        &self,
        request: StageRequest<D::Buf>,
    ) -> Result<UpdateOutcome, StoreError> {
        if !matches!(request.op, UpdateOp::Replace { .. }) {
            return Err(StoreError::InvalidArgument("install takes a full-chunk replace".into()));
        }
        let (chunk, version) = (request.chunk, request.version);
        self.stage_then_commit(request, true, chunk, version).await
    }

    async fn stage_then_commit(
        &self,
        request: StageRequest<D::Buf>,
        force: bool,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Result<UpdateOutcome, StoreError> {
        match self.stage_inner(request, force, false).await? {
            StageOutcome::Busy => Ok(UpdateOutcome::Busy),
            StageOutcome::AlreadyCommitted { committed } => {
                Ok(UpdateOutcome::AlreadyCommitted { committed })
            }
            StageOutcome::Staged(_) => match self.commit(chunk, version).await? {
                CommitOutcome::Committed(meta) => Ok(UpdateOutcome::Committed(meta)),
                CommitOutcome::AlreadyCommitted { committed } => {
                    Ok(UpdateOutcome::AlreadyCommitted { committed })
                }
                // Another caller committed, aborted or replaced our stage in between.
                CommitOutcome::Busy
                | CommitOutcome::NotStaged
                | CommitOutcome::VersionMismatch { .. } => Ok(UpdateOutcome::Busy),
            },
        }
    }

    /// Drops a staged version. Returns whether one was dropped; durable on return (a crash
    /// afterwards does not bring it back).
    pub async fn abort(&self, chunk: ChunkId, version: ChunkVersion) -> Result<bool, StoreError> {
        let ticket = {
            let mut inner = self.shared.inner();
            if let Some(why) = &inner.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            let Some(entry) = inner.chunks.get_mut(&chunk) else { return Ok(false) };
            if entry.staging
                || entry.committing
                || entry.pending.map(|p| p.version) != Some(version)
            {
                return Ok(false);
            }
            let Some(pending) = entry.pending.take() else { return Ok(false) };
            if entry.is_empty() {
                inner.chunks.remove(&chunk);
            }
            if pending.durable {
                // Its block is free only once the abort is durable: until then the stage
                // record still points at it.
                Some(inner.enqueue(chunk, LogOp::Abort { version, release: pending.owned }))
            } else {
                if let Some(block) = pending.owned {
                    inner.release_block(block);
                }
                None
            }
        };
        if let Some(ticket) = ticket {
            self.wait_applied(ticket).await?;
        }
        Ok(true)
    }

    /// Removes the chunks of `inode` with index in `indexes` (committed and staged alike), at
    /// most [`REMOVE_RANGE_MAX`] per call; durable on return.
    pub async fn remove_range(
        &self,
        inode: InodeId,
        indexes: Range<u64>,
    ) -> Result<RemoveRangeOutcome, StoreError> {
        let mut outcome = RemoveRangeOutcome { removed: 0, busy: Vec::new(), resume_from: None };
        if indexes.is_empty() {
            return Ok(outcome);
        }
        let last_ticket = {
            let mut inner = self.shared.inner();
            if let Some(why) = &inner.failed {
                return Err(StoreError::Failed(why.clone()));
            }
            let range = (
                Bound::Included(ChunkId::new(inode, indexes.start)),
                Bound::Excluded(ChunkId::new(inode, indexes.end)),
            );
            let chunks: Vec<ChunkId> =
                inner.chunks.range(range).map(|(c, _)| *c).take(REMOVE_RANGE_MAX + 1).collect();
            let mut last_ticket = None;
            for (i, chunk) in chunks.into_iter().enumerate() {
                if i == REMOVE_RANGE_MAX {
                    outcome.resume_from = Some(chunk.index);
                    break;
                }
                let Some(entry) = inner.chunks.get_mut(&chunk) else { continue };
                if entry.staging || entry.committing {
                    outcome.busy.push(chunk);
                    continue;
                }
                // Everything goes, durably: committed state, tombstone and staged version (whose
                // block is free once the record is).
                let release = entry.pending.take().and_then(|p| p.owned);
                let has_committed = entry.committed.is_some();
                entry.committing = true;
                let op = LogOp::Delete { tombstone: None, release };
                last_ticket = Some(inner.enqueue(chunk, op));
                if has_committed {
                    outcome.removed += 1;
                }
            }
            last_ticket
        };
        if let Some(ticket) = last_ticket {
            self.wait_applied(ticket).await?;
        }
        Ok(outcome)
    }

    async fn wait_applied(&self, ticket: u64) -> Result<(), StoreError> {
        poll_fn(|cx| {
            let mut inner = self.shared.inner();
            if inner.applied_through > ticket {
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = &inner.failed {
                return Poll::Ready(Err(StoreError::Failed(why.clone())));
            }
            if inner.flusher_done {
                return Poll::Ready(Err(StoreError::Failed("the store is closed".into())));
            }
            inner.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Writes the log until every queued commit is durable, then stops the flusher.
    pub async fn close(self) -> Result<(), StoreError> {
        {
            let mut inner = self.shared.inner();
            inner.closing = true;
            inner.wake_flusher();
        }
        poll_fn(|cx| {
            let mut inner = self.shared.inner();
            if inner.flusher_done {
                return Poll::Ready(());
            }
            inner.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await;
        match self.failure() {
            Some(why) => Err(StoreError::Failed(why)),
            None => Ok(()),
        }
    }

    /// Keeps one log extent of zeros ahead of the tail (appends then overwrite allocated space).
    async fn extend_log(&self) {
        let (file, start, len) = {
            let inner = self.shared.inner();
            let extent = self.shared.config.log_extent_bytes;
            if inner.failed.is_some() || inner.zeroed_end >= inner.tail.pos + extent / 2 {
                return;
            }
            let start = inner.zeroed_end.max(align_up(inner.tail.pos as usize) as u64);
            (inner.log_file.clone(), start, extent)
        };
        let mut zeros = self.shared.device.alloc_buf(len as usize);
        zeros.as_mut().fill(0);
        let result = file.write_at(zeros, start).await;
        let mut inner = self.shared.inner();
        if !Rc::ptr_eq(&file, &inner.log_file) {
            return; // the log was switched meanwhile
        }
        match result {
            Ok(()) => {
                inner.zeroed_end = inner.zeroed_end.max(start + len);
                inner.log_space_low = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if !inner.log_space_low {
                    tracing::warn!("metadata log cannot grow: file system full; refusing writes");
                }
                inner.log_space_low = true;
            }
            Err(e) => inner.fail(format!("zero-filling the metadata log: {e}")),
        }
    }
}

struct Payload<B> {
    offset: u32,
    buf: B,
    len: u32,
    units: Vec<u32>,
    crc: u32,
}

enum Work {
    Batch,
    StartCompaction,
    Compact,
    Exit,
}

impl<D: Device> Flusher<D> {
    /// Runs until the store is closed (or fails, or its last handle is dropped).
    ///
    /// One batch at a time: its block files are synced while its records are written and the
    /// log is synced, so a commit waits for about one device flush, not two in a row. The
    /// records may thus reach the disk before their data; replay verifies the data of the last
    /// batch and reverts what did not make it (which is why only one batch is ever in flight,
    /// and why the blocks it frees are released only after both syncs).
    pub async fn run(self) {
        let store = ChunkStore { shared: self.shared, counted: false };
        loop {
            let work = poll_fn(|cx| {
                let mut inner = store.shared.inner();
                if inner.failed.is_some() {
                    // Nothing more can be made durable: waiters see the failure.
                    return Poll::Ready(Work::Exit);
                } else if !inner.queue.is_empty() {
                    return Poll::Ready(Work::Batch);
                } else if inner.compaction.is_some() {
                    return Poll::Ready(Work::Compact);
                } else if inner.compaction_requested {
                    return Poll::Ready(Work::StartCompaction);
                } else if inner.closing {
                    return Poll::Ready(Work::Exit);
                }
                inner.flusher_waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            match work {
                Work::Exit => break,
                Work::StartCompaction => store.maybe_start_compaction().await,
                Work::Compact => store.compaction_step().await,
                Work::Batch => {
                    let Some(batch) = store.form_batch() else { continue };
                    let (synced, logged) =
                        futures::join!(store.sync_batch_data(&batch), store.log_batch(&batch));
                    if let (true, Some((records, tail))) = (synced, logged) {
                        store.apply_batch(batch, records, tail);
                    }
                    store.extend_log().await;
                    store.maybe_start_compaction().await;
                    // One compaction step per batch: compaction progresses under load.
                    store.compaction_step().await;
                }
            }
        }
        store.seal().await;
        let mut inner = store.shared.inner();
        inner.flusher_done = true;
        inner.wake_waiters();
    }
}

/// Queued commits taken together, with the block files written before they were queued.
#[derive(Debug)]
struct FormedBatch {
    items: Vec<QueueItem>,
    sync_classes: Vec<SizeClass>,
    /// Per synced class, the slots written whole before the batch: stable once synced.
    fresh: Vec<(SizeClass, Vec<u32>)>,
}

impl<D: Device> ChunkStore<D> {
    /// Takes up to a batch of queued commits and the set of block files written so far (every
    /// queued update's data write completed before it was queued).
    fn form_batch(&self) -> Option<FormedBatch> {
        let mut inner = self.shared.inner();
        if inner.failed.is_some() || inner.queue.is_empty() {
            return None;
        }
        // Bounded in records, and in chunk bytes a crash may leave for replay to verify.
        let records_max = self.shared.config.commit_batch_records_max as usize;
        let bytes_max = crate::config::COMMIT_BATCH_BYTES_MAX;
        let mut take = 0;
        let mut bytes = 0u64;
        for item in &inner.queue {
            let len = item.op.data_bytes();
            if take == records_max || (take > 0 && bytes + len > bytes_max) {
                break;
            }
            take += 1;
            bytes += len;
        }
        let items: Vec<QueueItem> = inner.queue.drain(..take).collect();
        let sync_classes: Vec<SizeClass> =
            SizeClass::ALL.into_iter().filter(|c| inner.dirty[c.index()]).collect();
        inner.dirty = [false; CLASS_COUNT];
        let fresh = sync_classes
            .iter()
            .map(|c| (*c, std::mem::take(&mut inner.fresh[c.index()])))
            .filter(|(_, slots)| !slots.is_empty())
            .collect();
        Some(FormedBatch { items, sync_classes, fresh })
    }

    /// Data before the records that point at it. False (and the store failed) on error.
    async fn sync_batch_data(&self, batch: &FormedBatch) -> bool {
        let synced = futures::future::join_all(
            batch.sync_classes.iter().map(|c| self.shared.file(*c).sync_data()),
        )
        .await;
        let mut inner = self.shared.inner();
        if let Some(e) = synced.into_iter().find_map(Result::err) {
            inner.fail(format!("syncing block files before a commit: {e}"));
            return false;
        }
        // A slot punched meanwhile may land here; it is backed again (and so leaves the set)
        // before anything is written to it.
        for (class, slots) in &batch.fresh {
            inner.stable[class.index()].extend(slots.iter().copied());
        }
        true
    }

    /// Appends a batch's records (the first flagged as a batch start) and syncs the log.
    /// Returns the records and the new tail; `None` (and the store failed) on error.
    async fn log_batch(&self, batch: &FormedBatch) -> Option<(Vec<Record>, LogTail)> {
        let (records, log_file, offset, bytes, new_tail) = {
            let mut inner = self.shared.inner();
            let mut records = Vec::with_capacity(batch.items.len());
            let mut encoded = Vec::with_capacity(batch.items.len() * RECORD_BYTES);
            for (i, item) in batch.items.iter().enumerate() {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                let record = item.op.record(seq, item.chunk);
                let flags = if i == 0 { format::FLAG_BATCH_START } else { 0 };
                encoded.extend_from_slice(&format::encode_flagged(
                    &record,
                    inner.generation,
                    flags,
                ));
                records.push(record);
            }
            let (offset, bytes, new_tail) = inner.tail.prepare(&encoded);
            (records, inner.log_file.clone(), offset, bytes, new_tail)
        };
        if let Err(e) = journal::write_bytes(&self.shared.device, &log_file, offset, &bytes).await {
            self.shared.inner().fail(format!("writing the metadata log: {e}"));
            return None;
        }
        if let Err(e) = log_file.sync_data().await {
            self.shared.inner().fail(format!("syncing the metadata log: {e}"));
            return None;
        }
        Some((records, new_tail))
    }

    /// At a clean stop: records that every batch is durable, so the next open verifies nothing.
    async fn seal(&self) {
        let (log_file, offset, bytes, new_tail) = {
            let mut inner = self.shared.inner();
            if inner.failed.is_some() {
                return;
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let record = Record::Seal { seq };
            let encoded =
                format::encode_flagged(&record, inner.generation, format::FLAG_BATCH_START);
            let (offset, bytes, new_tail) = inner.tail.prepare(&encoded);
            (inner.log_file.clone(), offset, bytes, new_tail)
        };
        let written = journal::write_bytes(&self.shared.device, &log_file, offset, &bytes).await;
        let synced = match written {
            Ok(()) => log_file.sync_data().await,
            Err(e) => Err(e),
        };
        let mut inner = self.shared.inner();
        match synced {
            Ok(()) => inner.tail = new_tail,
            Err(e) => inner.fail(format!("sealing the metadata log: {e}")),
        }
    }

    /// Both syncs of a batch are done: apply it, wake the committers.
    fn apply_batch(&self, batch: FormedBatch, records: Vec<Record>, new_tail: LogTail) {
        let mut inner = self.shared.inner();
        inner.tail = new_tail;
        let aligned_end = align_up(inner.tail.pos as usize) as u64;
        inner.zeroed_end = inner.zeroed_end.max(aligned_end);
        for item in &batch.items {
            inner.apply(item);
        }
        inner.applied_through = batch.items.last().map_or(inner.applied_through, |i| i.ticket + 1);
        inner.stats.commit_batches += 1;
        inner.stats.commit_records += batch.items.len() as u64;
        if let Some(compaction) = inner.compaction.as_mut() {
            compaction.committed.extend(records);
        }
        inner.wake_waiters();
    }

    /// Starts a compaction when the log has grown enough (or one was requested). Runs in the
    /// flusher between batches, so the checkpoint's base seq is exactly the durable one.
    async fn maybe_start_compaction(&self) {
        let (generation, base_seq) = {
            let mut inner = self.shared.inner();
            let live_bytes = inner.chunks.len() as u64 * RECORD_BYTES as u64;
            let threshold = self.shared.config.log_compaction_bytes_min.max(2 * live_bytes);
            let requested = std::mem::take(&mut inner.compaction_requested);
            let due = inner.tail.pos >= threshold && inner.tail.pos >= inner.compaction_retry_pos;
            if inner.compaction.is_some()
                || inner.failed.is_some()
                || inner.closing
                || !(due || requested)
            {
                if requested && inner.compaction.is_none() {
                    inner.wake_waiters();
                }
                return;
            }
            let generation = inner.next_generation;
            inner.next_generation += 1;
            (generation, inner.next_seq - 1)
        };
        let name = format::log_file_name(generation);
        let opened = match self.shared.device.open(&name, true).await {
            Ok(file) => file.set_len(0).await.map(|()| file),
            Err(e) => Err(e),
        };
        let mut inner = self.shared.inner();
        match opened {
            Ok(file) => {
                tracing::info!(
                    generation,
                    log_bytes = inner.tail.pos,
                    "compacting the metadata log"
                );
                inner.compaction = Some(Compaction {
                    file: Rc::new(file),
                    name,
                    writer: CheckpointWriter::new(generation, base_seq),
                    cursor: None,
                    scanned: false,
                    committed: Vec::new(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a log compaction");
                inner.stats.compaction_failures += 1;
                inner.compaction_retry_pos =
                    inner.tail.pos + self.shared.config.log_compaction_bytes_min;
                inner.wake_waiters();
            }
        }
    }

    /// Writes one slice of the checkpoint, or finishes it and switches logs.
    async fn compaction_step(&self) {
        let Some((file, scanned)) = ({
            let inner = self.shared.inner();
            inner.compaction.as_ref().map(|c| (c.file.clone(), c.scanned))
        }) else {
            return;
        };
        let device = &self.shared.device;
        if !scanned {
            let (bytes, mut writer) = {
                let mut inner = self.shared.inner();
                let inner = &mut *inner;
                let Some(compaction) = inner.compaction.as_mut() else { return };
                let start = match compaction.cursor {
                    Some(c) => Bound::Excluded(c),
                    None => Bound::Unbounded,
                };
                let mut entries = Vec::with_capacity(COMPACTION_SLICE_ENTRIES);
                let mut scanned_all = true;
                for (chunk, entry) in inner.chunks.range((start, Bound::Unbounded)) {
                    if entries.len() >= COMPACTION_SLICE_ENTRIES {
                        scanned_all = false;
                        break;
                    }
                    compaction.cursor = Some(*chunk);
                    if let Some(state) = entry.committed {
                        entries.push((*chunk, EntryState::Committed(state)));
                    }
                    if let Some(tombstone) = entry.tombstone {
                        entries.push((*chunk, EntryState::Tombstone(tombstone)));
                    }
                    // Only staged versions whose record is durable: one staged by `update` or
                    // `install` is about to be committed by a record this checkpoint keeps.
                    if let Some(pending) = entry.pending.filter(|p| p.durable) {
                        entries.push((*chunk, EntryState::Staged(pending.staged())));
                    }
                }
                compaction.scanned = scanned_all;
                let bytes = compaction.writer.encode_entries(entries);
                // The writer's tail moves with the write; take it out for the await.
                let writer = std::mem::replace(&mut compaction.writer, CheckpointWriter::new(0, 0));
                (bytes, writer)
            };
            let result = writer.write(device, &file, &bytes).await;
            if let Some(compaction) = self.shared.inner().compaction.as_mut() {
                compaction.writer = writer;
            }
            if let Err(e) = result {
                self.abort_compaction(e).await;
            }
            return;
        }
        // Finish: the records committed meanwhile, sync, end marker, sync, directory sync.
        let (mut writer, bytes, next_serial, name) = {
            let mut inner = self.shared.inner();
            let next_serial = inner.next_serial;
            let Some(compaction) = inner.compaction.as_mut() else { return };
            let committed = std::mem::take(&mut compaction.committed);
            let bytes = compaction.writer.encode_committed(&committed);
            let writer = std::mem::replace(&mut compaction.writer, CheckpointWriter::new(0, 0));
            (writer, bytes, next_serial, compaction.name.clone())
        };
        if let Err(e) = writer.write(device, &file, &bytes).await {
            self.abort_compaction(e).await;
            return;
        }
        if let Err(e) = writer.finish(device, &file, next_serial).await {
            // The end marker may be durable: this file may now win at the next open, so no
            // commit may go to the old log any more.
            self.shared.inner().fail(format!("finishing a log compaction: {e}"));
            return;
        }
        let old_name = {
            let mut inner = self.shared.inner();
            let old = format::log_file_name(inner.generation);
            inner.compaction = None;
            inner.log_file = file;
            inner.generation = writer.generation;
            inner.tail = writer.tail.clone();
            inner.zeroed_end = align_up(inner.tail.pos as usize) as u64;
            inner.stats.compactions += 1;
            inner.stats.log_generation = writer.generation;
            inner.wake_waiters();
            tracing::info!(generation = writer.generation, log_bytes = inner.tail.pos, log = %name, "metadata log compacted");
            old
        };
        if let Err(e) = self.shared.device.remove(&old_name).await {
            tracing::warn!(log = %old_name, error = %e, "removing the old metadata log failed");
        }
        self.extend_log().await;
    }

    async fn abort_compaction(&self, error: std::io::Error) {
        let name = {
            let mut inner = self.shared.inner();
            tracing::warn!(error = %error, "log compaction failed; will retry later");
            inner.stats.compaction_failures += 1;
            inner.compaction_retry_pos =
                inner.tail.pos + self.shared.config.log_compaction_bytes_min;
            inner.wake_waiters();
            inner.compaction.take().map(|c| c.name)
        };
        if let Some(name) = name {
            // Without its end marker the file is ignored at open anyway.
            let _ = self.shared.device.remove(&name).await;
        }
    }

    /// Compacts the metadata log now (tests and tools); returns when the new log is in use.
    pub async fn compact(&self) -> Result<(), StoreError> {
        let (before, failures_before) = {
            let mut inner = self.shared.inner();
            inner.compaction_requested = true;
            inner.wake_flusher();
            (inner.stats.compactions, inner.stats.compaction_failures)
        };
        poll_fn(|cx| {
            let mut inner = self.shared.inner();
            if let Some(why) = &inner.failed {
                return Poll::Ready(Err(StoreError::Failed(why.clone())));
            }
            if inner.stats.compactions > before {
                return Poll::Ready(Ok(()));
            }
            if inner.flusher_done {
                return Poll::Ready(Err(StoreError::Failed("the store is closed".into())));
            }
            if inner.stats.compaction_failures > failures_before {
                return Poll::Ready(Err(StoreError::Io {
                    op: "compacting the metadata log",
                    source: std::io::Error::other("the compaction failed; see the log"),
                }));
            }
            inner.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
