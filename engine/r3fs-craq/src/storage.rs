//! The storage contract of one target: what the replica asks of its chunk store.
//!
//! The replica never calls storage itself: it emits a [`StorageOp`] with an [`OpId`] and later
//! consumes the [`StorageResult`]. The IO edge runs the op however it likes (the storage daemon on
//! its glommio executor, the simulator against [`crate::MemoryChunkStore`] after a random delay).
//! [`ChunkStore`] states the semantics of each op as plain methods; [`execute`] maps an op onto
//! them, so any synchronous store (the in-memory one, a test double) is driven the same way.
//!
//! Every op is atomic: it happens entirely or not at all. The replica keeps at most one op per
//! chunk in flight besides reads, so the order in which ops on different chunks complete does not
//! matter.

use crate::types::{ChunkMeta, ChunkState, Digest, Update, UpdateTag};
use bytes::Bytes;
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, ErrorCode};

/// Names one storage op so its completion finds its way back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// A new pending version: `update` applied to a copy of the committed content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    /// The update version. Precondition: greater than the committed version (the replica makes
    /// it exactly one more, or larger only for a full replace at a syncing target).
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    pub update: Update,
    pub tag: Option<UpdateTag>,
    /// When set, the store refuses (with [`StoreError::Diverged`], writing nothing) unless the
    /// result has this length, checksum and removed flag: the check that replicas agree, made
    /// before anything is written.
    pub expected: Option<Digest>,
}

/// Which version of a chunk to read in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Committed,
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Metadata of one chunk ([`ChunkMeta::absent`] when unknown). Answer: `Meta`.
    GetMeta { chunk: ChunkId },
    /// Write a pending version, replacing any existing pending one. Answer: `Meta`.
    WritePending { chunk: ChunkId, write: PendingWrite },
    /// Make pending version `version` the committed one. Committing a version that is already
    /// committed succeeds (retries are harmless). Answer: `Meta`.
    Commit { chunk: ChunkId, version: ChunkVersion },
    /// Committed bytes `[offset, offset + length)`, clipped at the end, with the metadata read in
    /// the same atomic step (so the caller sees whether a pending version existed). The store
    /// verifies its own checksums of the bytes it reads. Answer: `Data`.
    Read { chunk: ChunkId, offset_bytes: u32, length_bytes: u32 },
    /// The whole content of one version, verified against its checksum. Answer: `Data`.
    ReadFull { chunk: ChunkId, which: Which },
    /// Resync: set the committed version to exactly `state` with content `data` (or delete every
    /// trace of the chunk when `state` is `None`), dropping any pending version. Answer: `Meta`.
    SyncReplace { chunk: ChunkId, state: Option<ChunkState>, data: Bytes },
    /// Metadata of chunks after `after` in id order, at most `limit`; `pending_only` skips chunks
    /// without a pending version. Answer: `Metas`.
    ListMetas { after: Option<ChunkId>, limit: u32, pending_only: bool },
    /// Drop pending version `version` (a successor could not store it), durably; the committed
    /// version is untouched. No pending version of that version is not an error (dropping is
    /// idempotent). Answer: `Meta`.
    AbortPending { chunk: ChunkId, version: ChunkVersion },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageResult {
    Meta(ChunkMeta),
    Data { meta: ChunkMeta, data: Bytes },
    Metas { metas: Vec<ChunkMeta>, more: bool },
    Failed(StoreError),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no space left for chunk {chunk}")]
    NoSpace { chunk: ChunkId },
    #[error("chunk {chunk} would be {length_bytes} bytes long, over the limit")]
    TooLarge { chunk: ChunkId, length_bytes: u64 },
    #[error("chunk {chunk}: applying the update gives {actual:?}, expected {expected:?}")]
    Diverged { chunk: ChunkId, expected: Digest, actual: Digest },
    #[error("chunk {chunk}: version precondition failed ({detail}); meta {meta:?}")]
    VersionConflict { chunk: ChunkId, meta: Box<ChunkMeta>, detail: &'static str },
    #[error("chunk {chunk}: no pending version")]
    NoPending { chunk: ChunkId },
    #[error("chunk {chunk} failed its checksum on disk")]
    Corrupt { chunk: ChunkId },
    #[error("storage IO failed: {message}")]
    Io { message: String },
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NoSpace { .. } => ErrorCode::NoSpace,
            StoreError::TooLarge { .. } => ErrorCode::InvalidArgument,
            StoreError::Diverged { .. } => ErrorCode::ChecksumMismatch,
            StoreError::VersionConflict { .. } | StoreError::NoPending { .. } => {
                ErrorCode::Internal
            }
            StoreError::Corrupt { .. } => ErrorCode::ChunkCorrupt,
            StoreError::Io { .. } => ErrorCode::Internal,
        }
    }

    /// Whether the target can keep going after this failure. A failed write for lack of space or
    /// a refused precondition leaves the store as it was; a disk that fails IO does not.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }
}

/// The semantics of each [`StorageOp`], as methods. See the op docs for the contract.
pub trait ChunkStore {
    fn meta(&self, chunk: ChunkId) -> Result<ChunkMeta, StoreError>;
    fn write_pending(
        &mut self,
        chunk: ChunkId,
        write: &PendingWrite,
    ) -> Result<ChunkMeta, StoreError>;
    fn commit(&mut self, chunk: ChunkId, version: ChunkVersion) -> Result<ChunkMeta, StoreError>;
    fn read(
        &self,
        chunk: ChunkId,
        offset_bytes: u32,
        length_bytes: u32,
    ) -> Result<(ChunkMeta, Bytes), StoreError>;
    fn read_full(&self, chunk: ChunkId, which: Which) -> Result<(ChunkMeta, Bytes), StoreError>;
    fn sync_replace(
        &mut self,
        chunk: ChunkId,
        state: Option<&ChunkState>,
        data: &[u8],
    ) -> Result<ChunkMeta, StoreError>;
    fn list_metas(
        &self,
        after: Option<ChunkId>,
        limit: u32,
        pending_only: bool,
    ) -> Result<(Vec<ChunkMeta>, bool), StoreError>;
    fn abort_pending(
        &mut self,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Result<ChunkMeta, StoreError>;
}

/// Runs one op against a synchronous store.
pub fn execute<S: ChunkStore + ?Sized>(store: &mut S, op: &StorageOp) -> StorageResult {
    let result = match op {
        StorageOp::GetMeta { chunk } => store.meta(*chunk).map(StorageResult::Meta),
        StorageOp::WritePending { chunk, write } => {
            store.write_pending(*chunk, write).map(StorageResult::Meta)
        }
        StorageOp::Commit { chunk, version } => {
            store.commit(*chunk, *version).map(StorageResult::Meta)
        }
        StorageOp::Read { chunk, offset_bytes, length_bytes } => store
            .read(*chunk, *offset_bytes, *length_bytes)
            .map(|(meta, data)| StorageResult::Data { meta, data }),
        StorageOp::ReadFull { chunk, which } => {
            store.read_full(*chunk, *which).map(|(meta, data)| StorageResult::Data { meta, data })
        }
        StorageOp::SyncReplace { chunk, state, data } => {
            store.sync_replace(*chunk, state.as_ref(), data).map(StorageResult::Meta)
        }
        StorageOp::ListMetas { after, limit, pending_only } => store
            .list_metas(*after, *limit, *pending_only)
            .map(|(metas, more)| StorageResult::Metas { metas, more }),
        StorageOp::AbortPending { chunk, version } => {
            store.abort_pending(*chunk, *version).map(StorageResult::Meta)
        }
    };
    result.unwrap_or_else(StorageResult::Failed)
}
