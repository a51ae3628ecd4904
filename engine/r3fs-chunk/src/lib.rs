//! r3fs chunk store: the chunks of one storage target, crash-consistent, over direct IO.
//!
//! A target is a directory on one disk, owned by one core. [`ChunkStore`] keeps its chunks
//! (`ChunkId` → bytes, 0..=64 MiB, with a version, a chain version and a CRC32C) in:
//! - block files, one per size class (64 KiB .. 64 MiB), of equal slots: a header of per-unit
//!   (4 KiB) checksums, then the data. Blocks are never shared between chunks.
//! - a metadata log: 64-byte checksummed records `ChunkId → {version, chain version, length,
//!   crc, block, serial}`, appended by group commit, checkpointed at every open and compacted
//!   incrementally while the store runs (docs/design/chunk-store.md).
//!
//! The CRAQ replica drives it in two steps: [`ChunkStore::stage`] writes a pending version
//! (copy-on-write into a fresh block, or appended in place past the committed length) while
//! readers keep seeing the committed one; [`ChunkStore::commit`] makes it the committed version
//! with one durable log record. Also: [`ChunkStore::read`] / [`ChunkStore::batch_read`],
//! [`ChunkStore::remove_range`], [`ChunkStore::last_chunk`], [`ChunkStore::list`] (resync scan),
//! [`ChunkStore::install`] (resync full-chunk replace), [`ChunkStore::space`].
//!
//! Invariants:
//! - Committed state is changed only by applying a record that is durable, after the data it
//!   points at is durable. After a crash at any point every chunk is at its old or its new
//!   committed state. Staged versions are durable once `stage` returns (stage records), and
//!   a committed removal leaves a durable tombstone with its version.
//! - A block is referenced by at most one chunk (its committed state, its staged version, or
//!   both for an in-place stage); blocks referenced by no record after replay are free (no
//!   space leaks across restarts).
//! - A read returns only bytes whose unit checksums verify (keyed by chunk and block serial, so
//!   misplaced or stale blocks fail too); otherwise `ChunkCorrupt`.
//! - IO goes through the [`device`] traits: [`mem::MemDevice`] (in memory, crashable) for
//!   tests and simulation, and [`dma::DmaDevice`] (feature `glommio`: O_DIRECT + io_uring) for
//!   the storage daemon. The store is the daemon's disk edge, which is why this crate, and only
//!   its `dma` module, names glommio.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod alloc;
mod cache;
pub mod config;
pub mod crc;
pub mod device;
#[cfg(feature = "glommio")]
pub mod dma;
pub mod error;
pub mod format;
mod gate;
mod hash;
mod journal;
pub mod mem;
pub mod store;

pub use alloc::SpaceStats;
pub use config::StoreConfig;
pub use device::{Device, DeviceFile, IoBuf};
pub use error::{OpenError, StoreError};
pub use format::Tombstone;
pub use store::{
    BlockLocation, ChunkBuf, ChunkMeta, ChunkStore, CommitOutcome, CommittedMeta, Flusher,
    PendingMeta, ReadOutcome, ReadRequest, RemoveRangeOutcome, StageOutcome, StageRequest,
    StoreStats, UpdateOp, UpdateOutcome,
};
