//! One [`Txn`] implementation for every backend that resolves conflicts itself (memory, fjall):
//! the backend supplies snapshot reads and a commit function; [`TxnBuffer`] supplies
//! read-your-writes, the conflict set and the limits. Keeping this in one place is what makes the
//! backends behave identically.

use std::sync::Arc;

use async_trait::async_trait;

use crate::buffer::{CommitRequest, TxnBuffer};
use crate::{KeyValue, KvError, RangeRequest, ReadMode, Txn};

/// Snapshot reads and commit of one backend.
#[async_trait]
pub(crate) trait Engine: Send + Sync + 'static {
    /// A consistent read view, taken at `begin`.
    type Snapshot: Send + Sync;

    fn snapshot_get(
        &self,
        snapshot: &Self::Snapshot,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, KvError>;

    /// The snapshot's pairs in `[begin, end)` (`begin < end`), ascending or descending; read
    /// lazily, since a limited read stops early.
    fn snapshot_range<'a>(
        &'a self,
        snapshot: &'a Self::Snapshot,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<KeyValue, KvError>> + 'a>;

    /// Checks `request` against transactions committed after its read version and applies it
    /// atomically, or fails with [`KvError::Conflict`]. Never called for read-only transactions.
    async fn commit(&self, request: CommitRequest) -> Result<(), KvError>;
}

pub(crate) struct OptimisticTxn<E: Engine> {
    engine: Arc<E>,
    snapshot: E::Snapshot,
    read_version: u64,
    buffer: TxnBuffer,
}

impl<E: Engine> OptimisticTxn<E> {
    pub(crate) fn new(engine: Arc<E>, snapshot: E::Snapshot, read_version: u64) -> Self {
        Self { engine, snapshot, read_version, buffer: TxnBuffer::default() }
    }
}

#[async_trait]
impl<E: Engine> Txn for OptimisticTxn<E> {
    async fn get(&mut self, key: &[u8], mode: ReadMode) -> Result<Option<Vec<u8>>, KvError> {
        let Self { engine, snapshot, buffer, .. } = self;
        buffer.get(key, mode, |key| engine.snapshot_get(snapshot, key))
    }

    async fn get_range(&mut self, request: &RangeRequest) -> Result<Vec<KeyValue>, KvError> {
        if request.begin >= request.end {
            return Ok(Vec::new());
        }
        let Self { engine, snapshot, buffer, .. } = self;
        let pairs = engine.snapshot_range(snapshot, &request.begin, &request.end, request.reverse);
        buffer.get_range(pairs, request)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.buffer.set(key, value)
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        self.buffer.clear(key)
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.buffer.clear_range(begin, end)
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError> {
        self.buffer.atomic_add(key, delta)
    }

    fn add_read_conflict_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.buffer.add_read_conflict_range(begin, end)
    }

    async fn commit(self: Box<Self>) -> Result<(), KvError> {
        let Self { engine, snapshot, read_version, buffer } = *self;
        // Release the read view before waiting for the commit.
        drop(snapshot);
        let request = buffer.into_commit_request(read_version)?;
        if request.is_read_only() {
            return Ok(());
        }
        engine.commit(request).await
    }
}
