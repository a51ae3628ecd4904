//! What clients ask a replica, what it answers, and what replicas of one chain tell each other.
//! These are in-memory types: the wire crate encodes them; the replica never sees bytes of a frame.

use crate::types::{ChunkMeta, ChunkState, Digest, Update, UpdateTag};
use bytes::Bytes;
use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ErrorCode};

/// Correlates a client request with its reply; chosen by the IO edge (connection + request id),
/// opaque to the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyToken(pub u64);

/// A client write, sent to the head of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    pub chain: ChainId,
    /// The chain version the client saw; a stale one is refused with the current one.
    pub chain_version: ChainVersion,
    pub chunk: ChunkId,
    pub update: Update,
    /// CRC32C of `update.payload()`, computed by the client before sending.
    pub payload_checksum: u32,
    pub tag: UpdateTag,
}

/// A committed write: the version it got and the resulting chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOk {
    pub version: ChunkVersion,
    pub length_bytes: u32,
    pub checksum: u32,
    pub removed: bool,
}

impl WriteOk {
    pub fn from_state(state: &ChunkState) -> WriteOk {
        WriteOk {
            version: state.version,
            length_bytes: state.length_bytes,
            checksum: state.checksum,
            removed: state.removed,
        }
    }
}

/// An expected refusal: data, not an error. `chain_version` is the replica's current one, so a
/// client refused with `StaleChainVersion` learns how far behind it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub chain_version: ChainVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Committed(WriteOk),
    Refused(Refusal),
}

/// A client read of committed data; any serving replica answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub chunk: ChunkId,
    pub offset_bytes: u32,
    pub length_bytes: u32,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReadOk {
    /// The committed version the data belongs to.
    pub version: ChunkVersion,
    /// The chunk's committed length (the data may be shorter than asked at the end).
    pub chunk_length_bytes: u32,
    pub data: Bytes,
    /// CRC32C of `data`, so the client checks it end to end.
    pub checksum: u32,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReadOutcome {
    Data(ReadOk),
    Refused(Refusal),
}

/// An update travelling down the chain with the version the head assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedUpdate {
    pub chain: ChainId,
    /// The sender's chain version; the receiver accepts only its own.
    pub chain_version: ChainVersion,
    pub chunk: ChunkId,
    /// The update version; the receiver's committed version must be the one before it (or the
    /// update must be a full replace).
    pub version: ChunkVersion,
    pub update: Update,
    pub payload_checksum: u32,
    pub tag: Option<UpdateTag>,
    /// What the chunk must look like after applying: the receiver refuses to write a pending
    /// version that differs, so replicas never commit diverging bytes.
    pub expected: Digest,
}

/// "Everything from me to the tail committed this version."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateAck {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub chunk: ChunkId,
    /// The version acknowledged (the forwarded one).
    pub version: ChunkVersion,
    /// The sender's committed version after handling the update.
    pub committed: Digest,
}

/// Why a successor did not take a forwarded update (or a resync transfer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Chain versions differ: one side has not seen the latest routing yet.
    StaleChainVersion,
    /// The sender is not the receiver's predecessor at this chain version.
    NotPredecessor,
    /// The payload failed its CRC32C: corrupted in flight.
    ChecksumMismatch,
    /// Applying the update would not produce the expected digest: the receiver's base differs.
    Diverged,
    /// The receiver is missing versions before this one.
    VersionGap { committed: ChunkVersion },
    /// The receiver is at a bound (queue, in-flight bytes); retry later.
    Busy,
    /// The receiver's storage failed with this code.
    Storage(ErrorCode),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateRefused {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub chunk: ChunkId,
    pub version: ChunkVersion,
    pub reason: RefuseReason,
}

/// One replica's committed copy of a chunk, sent whole to another replica of the chain. Two
/// messages carry it:
/// - [`PeerMessage::SyncChunk`] (resync, predecessor to successor): the successor sets its chunk
///   to exactly this state. `state: None` means the predecessor has no record of the chunk, so the
///   successor deletes it.
/// - [`PeerMessage::FetchChunkReply`] (repair, answering [`PeerMessage::FetchChunk`]): the asker
///   installs the copy only if it matches its own committed metadata exactly (version, length,
///   CRC32C of the bytes), so the copy is verified twice, by the sender's store on read and by the
///   receiver against the checksum it recorded when the version committed. `state: None` means
///   the sender has no good copy (absent, removed, corrupt there too, or its store failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkCopy {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub chunk: ChunkId,
    /// The sender's committed state (see the type's note for what `None` means per message).
    pub state: Option<ChunkState>,
    pub data: Bytes,
    /// CRC32C of `data`.
    pub checksum: u32,
}

/// Messages between the replicas of one chain. Links are FIFO per (sender, receiver) pair; any
/// message may be lost, and every sender retries on a timer, so receivers handle duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// Predecessor to successor.
    Update(ForwardedUpdate),
    /// Successor to predecessor.
    Ack(UpdateAck),
    /// Successor to predecessor.
    Refused(UpdateRefused),
    /// Resync, predecessor to successor: list your chunk metadata after `after`.
    DumpMetaRequest {
        chain: ChainId,
        chain_version: ChainVersion,
        after: Option<ChunkId>,
    },
    /// Resync, successor to predecessor: one page; `more` says whether another follows.
    DumpMetaReply {
        chain: ChainId,
        chain_version: ChainVersion,
        after: Option<ChunkId>,
        metas: Vec<ChunkMeta>,
        more: bool,
    },
    /// Resync, predecessor to successor: set your chunk to this copy.
    SyncChunk(ChunkCopy),
    /// Resync, successor to predecessor: the chunk now equals the sent state.
    SyncAck {
        chain: ChainId,
        chain_version: ChainVersion,
        chunk: ChunkId,
    },
    /// Resync, successor to predecessor: a transfer was refused.
    SyncRefused {
        chain: ChainId,
        chain_version: ChainVersion,
        chunk: ChunkId,
        reason: RefuseReason,
    },
    /// Resync, predecessor to successor: every chunk was transferred at this chain version.
    SyncDone {
        chain: ChainId,
        chain_version: ChainVersion,
    },
    SyncDoneAck {
        chain: ChainId,
        chain_version: ChainVersion,
    },
    /// Repair, any chain member to another: send me your committed copy of `chunk` (mine failed
    /// its checksum on disk). Answered with [`PeerMessage::FetchChunkReply`].
    FetchChunk {
        chain: ChainId,
        chain_version: ChainVersion,
        chunk: ChunkId,
    },
    /// Repair: the sender's committed copy, read and verified by its store.
    FetchChunkReply(ChunkCopy),
}

impl PeerMessage {
    pub fn chain(&self) -> ChainId {
        match self {
            PeerMessage::Update(m) => m.chain,
            PeerMessage::Ack(m) => m.chain,
            PeerMessage::Refused(m) => m.chain,
            PeerMessage::SyncChunk(m) | PeerMessage::FetchChunkReply(m) => m.chain,
            PeerMessage::DumpMetaRequest { chain, .. }
            | PeerMessage::DumpMetaReply { chain, .. }
            | PeerMessage::SyncAck { chain, .. }
            | PeerMessage::SyncRefused { chain, .. }
            | PeerMessage::SyncDone { chain, .. }
            | PeerMessage::SyncDoneAck { chain, .. }
            | PeerMessage::FetchChunk { chain, .. } => *chain,
        }
    }
}
