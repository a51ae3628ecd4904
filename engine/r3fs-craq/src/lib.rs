//! CRAQ chain replication for r3fs chunks, as plain code: the replica of one storage target is a
//! sans-IO state machine ([`Replica`]) that consumes [`Input`]s and emits [`Output`]s. The storage
//! daemon is its real IO edge (network, O_DIRECT chunk store, clock); a deterministic simulator can
//! drive many replicas with injected faults through exactly the same code.
//!
//! Key types:
//! - [`Replica`], [`Input`], [`Output`]: the state machine and its events and actions.
//! - [`ChainRouting`], [`View`]: a chain at one chain version and a target's place in it.
//! - [`StorageOp`], [`StorageResult`], [`ChunkStore`]: the storage contract; [`MemoryChunkStore`]
//!   implements it in memory for tests and simulation.
//! - [`PeerMessage`] and the client types ([`WriteRequest`], [`ReadRequest`], outcomes).
//! - [`rules`]: the chain-side rules as pure functions (successor acceptance, head resolution of
//!   pending versions, reads, resync transfer selection).
//!
//! Invariants (checked by the tests in `tests/`, argued in docs/design/craq.md):
//! - No acknowledged write is lost: the head answers a client only after every replica in the
//!   current write chain committed the update.
//! - Reads never return uncommitted data: a chunk with a pending version is refused with
//!   `ChunkNotCommitted`.
//! - Versions only grow: a chunk's committed version increases by one per update (removal leaves
//!   a tombstone, never a reset), and a replica never commits bytes whose digest differs from its
//!   predecessor's.
//! - Each client write (client, channel, seq) is applied at most once while the dedup table or the
//!   chunk metadata remembers it.
//! - Every payload is CRC32C-checked at every hop before it is applied, and on every read.

pub mod config;
pub mod dedup;
pub mod memory;
pub mod message;
pub mod replica;
pub mod routing;
pub mod rules;
pub mod storage;
pub mod types;

pub use config::{ConfigError, ReplicaConfig};
pub use dedup::{DedupCheck, DedupTable};
pub use memory::MemoryChunkStore;
pub use message::{
    ChunkCopy, ForwardedUpdate, PeerMessage, ReadOk, ReadOutcome, ReadRequest, Refusal,
    RefuseReason, ReplyToken, UpdateAck, UpdateRefused, WriteOk, WriteOutcome, WriteRequest,
};
pub use replica::{FenceReason, Input, Output, Replica, ReplicaStats, ResyncProgress};
pub use routing::{CHAIN_TARGETS_MAX, ChainRouting, ChainTarget, RoutingError, View};
pub use storage::{
    ChunkStore, OpId, PendingWrite, StorageOp, StorageResult, StoreError, Which, execute,
};
pub use types::{
    Applied, ApplyError, ChannelKey, ChunkMeta, ChunkState, Digest, Update, UpdateTag,
};
