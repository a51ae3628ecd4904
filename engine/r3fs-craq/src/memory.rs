//! An in-memory [`ChunkStore`], for tests and the deterministic simulator only: it keeps every
//! chunk in a `BTreeMap`, verifies checksums on every read like a real store, and has hooks to
//! corrupt data and to run out of space. It is not a production store (no durability).

use crate::storage::{ChunkStore, PendingWrite, StoreError, Which};
use crate::types::{ChunkMeta, ChunkState, Digest};
use bytes::Bytes;
use r3fs_types::{ChunkId, ChunkVersion};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Version {
    state: ChunkState,
    data: Bytes,
}

#[derive(Clone, Debug)]
struct Entry {
    committed: Version,
    pending: Option<Version>,
}

impl Entry {
    fn meta(&self, chunk: ChunkId) -> ChunkMeta {
        ChunkMeta {
            chunk,
            committed: self.committed.state,
            pending: self.pending.as_ref().map(|v| v.state),
        }
    }

    fn bytes(&self) -> u64 {
        self.committed.data.len() as u64 + self.pending.as_ref().map_or(0, |v| v.data.len() as u64)
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct MemoryChunkStore {
    chunk_size_bytes_max: u32,
    /// Capacity: writes that would exceed it fail with [`StoreError::NoSpace`].
    bytes_max: u64,
    bytes_used: u64,
    chunks: BTreeMap<ChunkId, Entry>,
}

impl MemoryChunkStore {
    pub fn new(chunk_size_bytes_max: u32, bytes_max: u64) -> Self {
        Self { chunk_size_bytes_max, bytes_max, bytes_used: 0, chunks: BTreeMap::new() }
    }

    pub fn set_bytes_max(&mut self, bytes_max: u64) {
        self.bytes_max = bytes_max;
    }

    pub fn bytes_used(&self) -> u64 {
        self.bytes_used
    }

    /// The committed state and content of every chunk (tombstones included), for checks.
    pub fn committed(&self) -> impl Iterator<Item = (ChunkId, &ChunkState, &Bytes)> {
        self.chunks.iter().map(|(id, e)| (*id, &e.committed.state, &e.committed.data))
    }

    /// Every chunk's metadata.
    pub fn metas(&self) -> impl Iterator<Item = ChunkMeta> + '_ {
        self.chunks.iter().map(|(id, e)| e.meta(*id))
    }

    /// Test hook: flips one byte of the committed content without fixing its checksum, as a bad
    /// disk would. Returns false when there is nothing to corrupt.
    pub fn corrupt_committed(&mut self, chunk: ChunkId) -> bool {
        let Some(entry) = self.chunks.get_mut(&chunk) else { return false };
        if entry.committed.data.is_empty() {
            return false;
        }
        let mut data = entry.committed.data.to_vec();
        data[0] ^= 0xff;
        entry.committed.data = Bytes::from(data);
        true
    }

    fn verified(chunk: ChunkId, version: &Version) -> Result<(), StoreError> {
        let actual = Digest::of(version.state.version, &version.data, version.state.removed);
        if actual.same_content(&version.state.digest()) {
            Ok(())
        } else {
            Err(StoreError::Corrupt { chunk })
        }
    }

    fn entry_meta(&self, chunk: ChunkId) -> ChunkMeta {
        self.chunks.get(&chunk).map_or(ChunkMeta::absent(chunk), |e| e.meta(chunk))
    }

    fn check_space(&self, chunk: ChunkId, freed: u64, added: u64) -> Result<(), StoreError> {
        if self.bytes_used - freed + added > self.bytes_max {
            return Err(StoreError::NoSpace { chunk });
        }
        Ok(())
    }
}

impl ChunkStore for MemoryChunkStore {
    fn meta(&self, chunk: ChunkId) -> Result<ChunkMeta, StoreError> {
        Ok(self.entry_meta(chunk))
    }

    fn write_pending(
        &mut self,
        chunk: ChunkId,
        write: &PendingWrite,
    ) -> Result<ChunkMeta, StoreError> {
        let absent = Entry {
            committed: Version { state: ChunkState::ABSENT, data: Bytes::new() },
            pending: None,
        };
        let entry = self.chunks.get(&chunk).cloned().unwrap_or(absent);
        if write.version <= entry.committed.state.version {
            return Err(StoreError::VersionConflict {
                chunk,
                meta: Box::new(entry.meta(chunk)),
                detail: "pending version not after committed",
            });
        }
        Self::verified(chunk, &entry.committed)?;
        let applied = write
            .update
            .apply(&entry.committed.data, self.chunk_size_bytes_max)
            .map_err(|e| match e {
                crate::types::ApplyError::TooLarge { length_bytes, .. } => {
                    StoreError::TooLarge { chunk, length_bytes }
                }
            })?;
        let digest = Digest::of(write.version, &applied.content, applied.removed);
        if let Some(expected) = write.expected
            && !(expected.same_content(&digest) && expected.version == write.version)
        {
            return Err(StoreError::Diverged { chunk, expected, actual: digest });
        }
        let old_pending = entry.pending.as_ref().map_or(0, |v| v.data.len() as u64);
        self.check_space(chunk, old_pending, applied.content.len() as u64)?;
        let state = ChunkState {
            version: write.version,
            chain_version: write.chain_version,
            length_bytes: digest.length_bytes,
            checksum: digest.checksum,
            removed: applied.removed,
            tag: write.tag,
        };
        let mut entry = entry;
        entry.pending = Some(Version { state, data: Bytes::from(applied.content) });
        self.bytes_used = self.bytes_used - old_pending
            + entry.pending.as_ref().map_or(0, |v| v.data.len() as u64);
        let meta = entry.meta(chunk);
        assert!(meta.check().is_ok(), "{:?}", meta.check());
        self.chunks.insert(chunk, entry);
        Ok(meta)
    }

    fn commit(&mut self, chunk: ChunkId, version: ChunkVersion) -> Result<ChunkMeta, StoreError> {
        let Some(entry) = self.chunks.get_mut(&chunk) else {
            return Err(StoreError::NoPending { chunk });
        };
        match entry.pending.take_if(|p| p.state.version == version) {
            Some(pending) => {
                self.bytes_used -= entry.committed.data.len() as u64;
                entry.committed = pending;
            }
            None if entry.pending.is_none() && entry.committed.state.version == version => {}
            None => {
                return Err(StoreError::VersionConflict {
                    chunk,
                    meta: Box::new(entry.meta(chunk)),
                    detail: "commit of a version that is not pending",
                });
            }
        }
        Ok(entry.meta(chunk))
    }

    fn abort_pending(
        &mut self,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Result<ChunkMeta, StoreError> {
        if let Some(entry) = self.chunks.get_mut(&chunk)
            && let Some(pending) = entry.pending.take_if(|p| p.state.version == version)
        {
            self.bytes_used -= pending.data.len() as u64;
        }
        Ok(self.entry_meta(chunk))
    }

    fn read(
        &self,
        chunk: ChunkId,
        offset_bytes: u32,
        length_bytes: u32,
    ) -> Result<(ChunkMeta, Bytes), StoreError> {
        let Some(entry) = self.chunks.get(&chunk) else {
            return Ok((ChunkMeta::absent(chunk), Bytes::new()));
        };
        Self::verified(chunk, &entry.committed)?;
        let data = &entry.committed.data;
        let start = (offset_bytes as usize).min(data.len());
        let end = start.saturating_add(length_bytes as usize).min(data.len());
        Ok((entry.meta(chunk), data.slice(start..end)))
    }

    fn read_full(&self, chunk: ChunkId, which: Which) -> Result<(ChunkMeta, Bytes), StoreError> {
        let Some(entry) = self.chunks.get(&chunk) else {
            return match which {
                Which::Committed => Ok((ChunkMeta::absent(chunk), Bytes::new())),
                Which::Pending => Err(StoreError::NoPending { chunk }),
            };
        };
        let version = match which {
            Which::Committed => &entry.committed,
            Which::Pending => entry.pending.as_ref().ok_or(StoreError::NoPending { chunk })?,
        };
        Self::verified(chunk, version)?;
        Ok((entry.meta(chunk), version.data.clone()))
    }

    fn sync_replace(
        &mut self,
        chunk: ChunkId,
        state: Option<&ChunkState>,
        data: &[u8],
    ) -> Result<ChunkMeta, StoreError> {
        let old = self.chunks.get(&chunk).map_or(0, Entry::bytes);
        let Some(state) = state else {
            self.chunks.remove(&chunk);
            self.bytes_used -= old;
            return Ok(ChunkMeta::absent(chunk));
        };
        let actual = Digest::of(state.version, data, state.removed);
        if !actual.same_content(&state.digest()) {
            return Err(StoreError::Diverged { chunk, expected: state.digest(), actual });
        }
        self.check_space(chunk, old, data.len() as u64)?;
        let entry = Entry {
            committed: Version { state: *state, data: Bytes::copy_from_slice(data) },
            pending: None,
        };
        self.bytes_used = self.bytes_used - old + entry.bytes();
        let meta = entry.meta(chunk);
        self.chunks.insert(chunk, entry);
        Ok(meta)
    }

    fn list_metas(
        &self,
        after: Option<ChunkId>,
        limit: u32,
        pending_only: bool,
    ) -> Result<(Vec<ChunkMeta>, bool), StoreError> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = self
            .chunks
            .range((start, Bound::Unbounded))
            .filter(|(_, e)| !pending_only || e.pending.is_some())
            .map(|(id, e)| e.meta(*id));
        let metas: Vec<ChunkMeta> = matching.by_ref().take(limit as usize).collect();
        let more = matching.next().is_some();
        Ok((metas, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Update;
    use r3fs_types::{ChainVersion, InodeId};

    fn chunk(i: u64) -> ChunkId {
        ChunkId::new(InodeId(7), i)
    }

    fn write(version: u64, update: Update) -> PendingWrite {
        PendingWrite {
            version: ChunkVersion(version),
            chain_version: ChainVersion(1),
            update,
            tag: None,
            expected: None,
        }
    }

    #[test]
    fn pending_then_commit_keeps_committed_readable_until_commit() {
        let mut store = MemoryChunkStore::new(64, 1 << 20);
        let w = write(1, Update::Write { offset_bytes: 0, data: Bytes::from_static(b"hello") });
        let meta = store.write_pending(chunk(1), &w).expect("write");
        assert_eq!(meta.pending.map(|p| p.version), Some(ChunkVersion(1)));
        let (meta, data) = store.read(chunk(1), 0, 10).expect("read");
        assert!(meta.pending.is_some() && data.is_empty() && meta.committed.removed);
        store.commit(chunk(1), ChunkVersion(1)).expect("commit");
        store.commit(chunk(1), ChunkVersion(1)).expect("a repeated commit is harmless");
        let (meta, data) = store.read(chunk(1), 1, 3).expect("read");
        assert_eq!((meta.committed.version, &data[..]), (ChunkVersion(1), &b"ell"[..]));
        assert!(store.commit(chunk(1), ChunkVersion(2)).is_err());
        assert!(store.write_pending(chunk(1), &write(1, Update::Remove)).is_err());
    }

    #[test]
    fn expected_digest_mismatch_writes_nothing() {
        let mut store = MemoryChunkStore::new(64, 1 << 20);
        let mut w = write(1, Update::Replace { data: Bytes::from_static(b"abc") });
        w.expected = Some(Digest::of(ChunkVersion(1), b"abd", false));
        assert!(matches!(store.write_pending(chunk(1), &w), Err(StoreError::Diverged { .. })));
        assert!(store.meta(chunk(1)).expect("meta").is_absent());
        w.expected = Some(Digest::of(ChunkVersion(1), b"abc", false));
        assert!(store.write_pending(chunk(1), &w).is_ok());
    }

    #[test]
    fn corruption_is_detected_on_read_and_space_is_bounded() {
        let mut store = MemoryChunkStore::new(64, 8);
        let w = write(1, Update::Replace { data: Bytes::from_static(b"abcdef") });
        store.write_pending(chunk(1), &w).expect("write");
        store.commit(chunk(1), ChunkVersion(1)).expect("commit");
        let w2 = write(2, Update::Replace { data: Bytes::from_static(b"abcdef") });
        assert!(matches!(store.write_pending(chunk(1), &w2), Err(StoreError::NoSpace { .. })));
        assert!(store.corrupt_committed(chunk(1)));
        assert!(matches!(store.read(chunk(1), 0, 1), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            store.read_full(chunk(1), Which::Committed),
            Err(StoreError::Corrupt { .. })
        ));
        store.sync_replace(chunk(1), None, b"").expect("delete");
        assert_eq!(store.bytes_used(), 0);
    }

    #[test]
    fn list_metas_pages() {
        let mut store = MemoryChunkStore::new(64, 1 << 20);
        for i in 0..5 {
            store
                .write_pending(chunk(i), &write(1, Update::Truncate { length_bytes: 1 }))
                .expect("w");
            if i % 2 == 0 {
                store.commit(chunk(i), ChunkVersion(1)).expect("commit");
            }
        }
        let (page, more) = store.list_metas(None, 2, false).expect("list");
        assert_eq!(page.iter().map(|m| m.chunk).collect::<Vec<_>>(), vec![chunk(0), chunk(1)]);
        assert!(more);
        let (page, more) = store.list_metas(Some(chunk(1)), 10, true).expect("list");
        assert_eq!(page.iter().map(|m| m.chunk).collect::<Vec<_>>(), vec![chunk(3)]);
        assert!(!more);
    }
}
