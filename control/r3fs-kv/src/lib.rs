//! Transactional key-value store: the only way metadata (mgmtd's and meta's) reaches storage.
//!
//! The semantics are FoundationDB's, so every backend can stand in for it:
//! - A [`Txn`] reads from one consistent snapshot and sees its own writes.
//! - Serializable reads ([`Txn::get`], [`Txn::get_range`] with [`ReadMode::Serializable`]) add
//!   what they read to the transaction's read conflict set; [`ReadMode::Snapshot`] reads do not.
//! - [`Txn::commit`] fails with [`KvError::Conflict`] if a transaction that committed after this
//!   one's snapshot wrote a key or range this one read serializably (so write skew is prevented).
//! - A serializable point read of a key whose value this transaction's own writes decide takes no
//!   read conflict; a limited range read conflicts only on the part it covered (up to and
//!   including the last key returned).
//! - A transaction without writes commits without a conflict check (it serialises at its read
//!   version).
//! - [`Txn::atomic_add`] adds a little-endian i64 without a read conflict, with FoundationDB's
//!   width rules (an existing value shorter than 8 bytes is zero-extended, a longer one truncated;
//!   the result is 8 bytes; the sum wraps).
//! - A range `[begin, end)` with `begin >= end` is empty: reads return nothing, clears and
//!   conflict ranges do nothing (FoundationDB would fail with `inverted_range`).
//! - Limits are FoundationDB's ([`KEY_SIZE_MAX`], [`VALUE_SIZE_MAX`], [`TXN_SIZE_MAX`]) on every
//!   backend, so code that passes here does not fail there. Transaction size counts mutations and
//!   read conflict ranges, as FoundationDB does.
//! - A commit whose future is dropped before it resolves has an unknown outcome.
//!
//! Callers run transactions through [`retry::run`], which retries conflicts with a bounded
//! backoff.
//!
//! Backends:
//! - [`MemoryKv`]: multi-versioned in-memory store, for tests and simulation.
//! - [`FjallKv`]: the default, an embedded durable store on fjall with group commit.
//! - `fdb::FdbKv` (feature `fdb`): FoundationDB through the `foundationdb` crate.
//!
//! [`config::open`] opens the backend a [`KvConfig`] names.
//!
//! The memory and embedded backends share one implementation of read-your-writes, conflict
//! tracking and limits (`buffer`, `ranges`, `optimistic`), so they cannot drift apart; the
//! `conformance` suite (feature `conformance`) holds every backend to the same behaviour.
//! The `remote` backend ([`RemoteKv`], served by the `r3fs-kvd` binary) lets several processes,
//! such as mgmtd instances electing a primary, share one embedded store.
//! Design note: `docs/design/kv.md`.

use async_trait::async_trait;
use r3fs_types::ErrorCode;

mod buffer;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod memory;
mod optimistic;
mod ranges;
pub mod remote;
pub mod retry;

pub use config::{KvConfig, open};
pub use embedded::{CommitStats, Durability, FjallConfig, FjallKv};
pub use memory::{MemoryConfig, MemoryKv};
pub use remote::{RemoteConfig, RemoteKv};
pub use retry::{RetryPolicy, Retryable};

/// FoundationDB's limits, enforced by every backend.
pub const KEY_SIZE_MAX: usize = 10_000;
pub const VALUE_SIZE_MAX: usize = 100_000;
pub const TXN_SIZE_MAX: usize = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Another transaction committed a conflicting write; the whole transaction may be retried.
    #[error("transaction conflict")]
    Conflict,
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    #[error("kv store I/O: {0}")]
    Io(String),
}

impl KvError {
    pub fn code(&self) -> ErrorCode {
        match self {
            KvError::Conflict => ErrorCode::KvConflict,
            KvError::TooLarge { .. } => ErrorCode::KvTooLarge,
            KvError::Io(_) => ErrorCode::KvIo,
        }
    }
}

/// Whether a read adds to the transaction's read conflict set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    Serializable,
    Snapshot,
}

/// A range read: keys in `[begin, end)`, at most `limit` pairs (0 = no limit), ascending unless
/// `reverse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
    pub limit: usize,
    pub reverse: bool,
    pub mode: ReadMode,
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A store: hands out transactions. Object safe, so services pick a backend from config.
#[async_trait]
pub trait Kv: Send + Sync + std::fmt::Debug {
    async fn begin(&self) -> Result<Box<dyn Txn>, KvError>;

    /// Backend name for logs and metrics ("memory", "fjall", "fdb").
    fn backend_name(&self) -> &'static str;
}

/// One optimistic transaction. Writes are buffered until [`Txn::commit`].
#[async_trait]
pub trait Txn: Send {
    /// The value at `key` in this transaction's snapshot overlaid with its own writes. A key
    /// longer than [`KEY_SIZE_MAX`] cannot exist and reads as `None`.
    async fn get(&mut self, key: &[u8], mode: ReadMode) -> Result<Option<Vec<u8>>, KvError>;
    /// Pairs in the requested range of the snapshot overlaid with this transaction's writes.
    async fn get_range(&mut self, request: &RangeRequest) -> Result<Vec<KeyValue>, KvError>;
    /// Fails with [`KvError::TooLarge`] (and buffers nothing) past a limit.
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    fn clear(&mut self, key: &[u8]) -> Result<(), KvError>;
    /// Clears keys in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError>;
    /// Adds `delta` to the little-endian i64 stored at `key` (absent = 0) without reading it.
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError>;
    /// Adds `[begin, end)` to the read conflict set without reading it.
    fn add_read_conflict_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError>;
    /// Applies the writes atomically and durably (as the backend is configured), or fails with
    /// [`KvError::Conflict`] and applies nothing. Dropping a transaction instead discards it.
    async fn commit(self: Box<Self>) -> Result<(), KvError>;
}
