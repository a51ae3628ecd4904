//! One simulated target's chunk store: [`MemoryChunkStore`] (the craq storage contract) plus the
//! crash behaviour of engine/r3fs-chunk.
//!
//! r3fs-chunk's durability contract: committed state changes only by applying a durable record, so
//! after a crash every chunk is at its old or its new committed state. Ops are atomic, so a write
//! torn by the crash is one that did not happen (the real store detects the torn record by its
//! checksum and drops it): the simulator decides, per op in flight at the crash, whether it
//! landed. Pending (staged) versions survive a crash, as CRAQ's recovery rules need and as
//! r3fs-chunk's stage records make them (docs/design/chunk-store.md); r3fs-chunk forgot them
//! before, which [`SimStore::forget_staged`] reproduces for the `forget-staged` planted bug.

use bytes::Bytes;
use r3fs_craq::{
    ChunkMeta, ChunkState, ChunkStore, MemoryChunkStore, StorageOp, StorageResult, Which,
};
use r3fs_types::ChunkId;

/// See the module docs.
#[derive(Debug)]
pub struct SimStore {
    chunk_size_bytes_max: u32,
    bytes_max: u64,
    inner: MemoryChunkStore,
}

impl SimStore {
    pub fn new(chunk_size_bytes_max: u32, bytes_max: u64) -> Self {
        Self {
            chunk_size_bytes_max,
            bytes_max,
            inner: MemoryChunkStore::new(chunk_size_bytes_max, bytes_max),
        }
    }

    pub fn execute(&mut self, op: &StorageOp) -> StorageResult {
        r3fs_craq::execute(&mut self.inner, op)
    }

    /// The committed state and bytes of one chunk (`ChunkState::ABSENT` and no bytes when the
    /// store never heard of it). `None` if the store's own checksum fails: the simulator injects
    /// no disk corruption, so callers report that as a broken contract.
    pub fn committed(&self, chunk: ChunkId) -> Option<(ChunkMeta, Bytes)> {
        self.inner.read_full(chunk, Which::Committed).ok()
    }

    pub fn meta(&self, chunk: ChunkId) -> ChunkMeta {
        self.inner.meta(chunk).unwrap_or(ChunkMeta::absent(chunk))
    }

    pub fn metas(&self) -> Vec<ChunkMeta> {
        self.inner.metas().collect()
    }

    /// Every committed chunk (tombstones included) with its bytes, in chunk order.
    pub fn committed_chunks(&self) -> Vec<(ChunkId, ChunkState, Bytes)> {
        self.inner
            .committed()
            .filter(|(_, state, _)| state.version.0 > 0)
            .map(|(chunk, state, data)| (chunk, *state, data.clone()))
            .collect()
    }

    /// A crash under r3fs-chunk's old contract: every pending version is forgotten;
    /// committed state stays. A chunk that never committed anything vanishes.
    pub fn forget_staged(&mut self) {
        let kept = self.committed_chunks();
        let mut fresh = MemoryChunkStore::new(self.chunk_size_bytes_max, self.bytes_max);
        for (chunk, state, data) in kept {
            // Replays the durable record: the same state and bytes the store committed.
            let replayed = fresh.sync_replace(chunk, Some(&state), &data);
            assert!(replayed.is_ok(), "replaying committed chunk {chunk}: {replayed:?}");
        }
        self.inner = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r3fs_craq::{PendingWrite, Update};
    use r3fs_types::{ChainVersion, ChunkVersion, InodeId};

    fn chunk(i: u64) -> ChunkId {
        ChunkId::new(InodeId(1), i)
    }

    fn pending(version: u64, data: &'static [u8]) -> StorageOp {
        StorageOp::WritePending {
            chunk: chunk(1),
            write: PendingWrite {
                version: ChunkVersion(version),
                chain_version: ChainVersion(1),
                update: Update::Replace { data: Bytes::from_static(data) },
                tag: None,
                expected: None,
            },
        }
    }

    #[test]
    fn forgetting_staged_versions_keeps_committed_state() {
        let mut store = SimStore::new(64, 1 << 20);
        assert!(matches!(store.execute(&pending(1, b"one")), StorageResult::Meta(_)));
        let commit = StorageOp::Commit { chunk: chunk(1), version: ChunkVersion(1) };
        assert!(matches!(store.execute(&commit), StorageResult::Meta(_)));
        assert!(matches!(store.execute(&pending(2, b"two")), StorageResult::Meta(_)));
        let only_pending = StorageOp::WritePending {
            chunk: chunk(2),
            write: PendingWrite {
                version: ChunkVersion(1),
                chain_version: ChainVersion(1),
                update: Update::Remove,
                tag: None,
                expected: None,
            },
        };
        assert!(matches!(store.execute(&only_pending), StorageResult::Meta(_)));
        store.forget_staged();
        let meta = store.meta(chunk(1));
        assert_eq!(meta.committed.version, ChunkVersion(1));
        assert!(meta.pending.is_none());
        let (_, data) = store.committed(chunk(1)).expect("verified");
        assert_eq!(&data[..], b"one");
        assert!(store.meta(chunk(2)).is_absent());
        assert_eq!(store.metas().len(), 1);
    }
}
