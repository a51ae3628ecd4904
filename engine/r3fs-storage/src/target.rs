//! The storage contract of r3fs-craq ([`r3fs_craq::StorageOp`]) carried out on one target's
//! r3fs-chunk [`ChunkStore`]: the CRAQ replica decides, this module does the disk IO.
//!
//! The two crates model a chunk slightly differently; this adapter bridges the gaps:
//! - Tombstones: the craq contract keeps a removed chunk's version ("versions only grow"). The
//!   chunk store keeps committed removals as durable tombstones, both those committed through
//!   the write path and those resync installs (a staged and committed removal at exactly the
//!   predecessor's version); an in-memory map (bounded by [`TOMBSTONES_MAX`]) remains as a
//!   second source for committed removals.
//! - Update tags (which client write produced a version) are kept in memory for pending and
//!   committed versions (bounded by [`TAGS_MAX`]); the replica's dedup table is the first line of
//!   defense against retried writes, these tags the second, and neither survives a restart.
//! - The chunk size (the class a growing chunk jumps to) travels with each request; the store
//!   is given the size the request named, or `chunk_size_bytes_max` when unknown.
//!
//! Every read verifies the store's per-unit checksums. A write's payload is staged from the
//! memory it was received into when the device adopts it (`crate::buf::PayloadDevice`), else
//! copied once into a device buffer.

use crate::buf::PayloadDevice;
use bytes::Bytes;
use r3fs_chunk::{
    ChunkBuf, ChunkStore, CommitOutcome, Device, StageOutcome, StageRequest,
    StoreError as ChunkError, UpdateOp, UpdateOutcome,
};
use r3fs_craq::{
    ChunkMeta, ChunkState, Digest, PendingWrite, StorageOp, StorageResult, StoreError, Update,
    UpdateTag, Which,
};
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Tombstones remembered per target.
pub const TOMBSTONES_MAX: usize = 1 << 20;
/// Update tags remembered per target.
pub const TAGS_MAX: usize = 1 << 20;

/// One target's chunk store with the craq contract on top. Lives on its shard's thread.
pub struct TargetStore<D: Device> {
    store: ChunkStore<D>,
    chunk_size_default: u32,
    tombstones: RefCell<BTreeMap<ChunkId, (ChunkVersion, ChainVersion)>>,
    tags: RefCell<BTreeMap<(ChunkId, ChunkVersion), UpdateTag>>,
}

impl<D: Device> std::fmt::Debug for TargetStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetStore").field("store", &self.store).finish()
    }
}

fn bounded_insert<K: Ord + Copy, V>(map: &mut BTreeMap<K, V>, key: K, value: V, max: usize) {
    if map.len() >= max && !map.contains_key(&key) {
        // Forget the smallest key: an arbitrary but deterministic victim.
        map.pop_first();
    }
    map.insert(key, value);
}

fn io_error(error: ChunkError) -> StoreError {
    StoreError::Io { message: error.to_string() }
}

impl<D: PayloadDevice> TargetStore<D> {
    pub fn new(store: ChunkStore<D>, chunk_size_default: u32) -> Self {
        Self {
            store,
            chunk_size_default,
            tombstones: RefCell::new(BTreeMap::new()),
            tags: RefCell::new(BTreeMap::new()),
        }
    }

    pub fn store(&self) -> &ChunkStore<D> {
        &self.store
    }

    fn tag(&self, chunk: ChunkId, version: ChunkVersion) -> Option<UpdateTag> {
        self.tags.borrow().get(&(chunk, version)).copied()
    }

    /// The craq view of a chunk: the store's committed and pending versions, or the tombstone.
    pub fn meta(&self, chunk: ChunkId) -> ChunkMeta {
        let meta = self.store.metadata(chunk);
        let committed = match meta.and_then(|m| m.committed) {
            Some(c) => ChunkState {
                version: c.version,
                chain_version: c.chain_version,
                length_bytes: c.len,
                checksum: c.crc,
                removed: false,
                tag: self.tag(chunk, c.version),
            },
            // The store keeps committed removals as durable tombstones (r3fs-chunk); the
            // in-memory map still covers resync's tombstone installs.
            None => match meta
                .and_then(|m| m.tombstone)
                .map(|t| (t.version, t.chain_version))
                .or_else(|| self.tombstones.borrow().get(&chunk).copied())
            {
                Some((version, chain_version)) => ChunkState {
                    version,
                    chain_version,
                    tag: self.tag(chunk, version),
                    ..ChunkState::ABSENT
                },
                None => ChunkState::ABSENT,
            },
        };
        let pending = meta.and_then(|m| m.pending).map(|p| ChunkState {
            version: p.version,
            chain_version: p.chain_version,
            length_bytes: p.len,
            checksum: p.crc,
            removed: p.removal,
            tag: self.tag(chunk, p.version),
        });
        ChunkMeta { chunk, committed, pending }
    }

    /// The device buffer to stage `data` from: the received payload's own memory when the
    /// device can adopt it (no copy), else a copy.
    fn chunk_buf(&self, data: &[u8]) -> ChunkBuf<D::Buf> {
        let (mut buf, adopted) = D::adopting(data, || self.store.alloc_buf(data.len()));
        if !adopted {
            buf.data_mut().copy_from_slice(data);
        }
        buf
    }

    /// Runs one op; `chunk_size` is the file's chunk size when the edge knows it.
    pub async fn execute(&self, op: StorageOp, chunk_size: Option<u32>) -> StorageResult {
        let result = match op {
            StorageOp::GetMeta { chunk } => Ok(StorageResult::Meta(self.meta(chunk))),
            StorageOp::WritePending { chunk, write } => {
                self.write_pending(chunk, write, chunk_size).await.map(StorageResult::Meta)
            }
            StorageOp::Commit { chunk, version } => {
                self.commit(chunk, version).await.map(StorageResult::Meta)
            }
            StorageOp::Read { chunk, offset_bytes, length_bytes } => self
                .read(chunk, offset_bytes, length_bytes)
                .await
                .map(|(meta, data)| StorageResult::Data { meta, data }),
            StorageOp::ReadFull { chunk, which } => self
                .read_full(chunk, which)
                .await
                .map(|(meta, data)| StorageResult::Data { meta, data }),
            StorageOp::SyncReplace { chunk, state, data } => {
                self.sync_replace(chunk, state, &data, chunk_size).await.map(StorageResult::Meta)
            }
            StorageOp::ListMetas { after, limit, pending_only } => {
                let (metas, more) = self.list_metas(after, limit, pending_only);
                Ok(StorageResult::Metas { metas, more })
            }
            StorageOp::AbortPending { chunk, version } => {
                // Dropped or not there (already gone): either way no pending `version` is left.
                match self.store.abort(chunk, version).await {
                    Ok(_) => Ok(StorageResult::Meta(self.meta(chunk))),
                    Err(error) => Err(io_error(error)),
                }
            }
        };
        result.unwrap_or_else(StorageResult::Failed)
    }

    async fn write_pending(
        &self,
        chunk: ChunkId,
        write: PendingWrite,
        chunk_size: Option<u32>,
    ) -> Result<ChunkMeta, StoreError> {
        let before = self.meta(chunk);
        if write.version <= before.committed.version {
            return Err(StoreError::VersionConflict {
                chunk,
                meta: Box::new(before),
                detail: "pending version not after committed",
            });
        }
        let chunk_size = chunk_size.unwrap_or(self.chunk_size_default);
        let op = match &write.update {
            Update::Write { offset_bytes, data } => UpdateOp::Write {
                offset: *offset_bytes,
                data: self.chunk_buf(data),
                crc: crc32c::crc32c(data),
            },
            Update::Truncate { length_bytes } => UpdateOp::Truncate { len: *length_bytes },
            Update::Extend { length_bytes } => UpdateOp::Extend { len: *length_bytes },
            Update::Remove => UpdateOp::Remove,
            Update::Replace { data } => {
                UpdateOp::Replace { data: self.chunk_buf(data), crc: crc32c::crc32c(data) }
            }
        };
        let request = StageRequest {
            chunk,
            version: write.version,
            chain_version: write.chain_version,
            chunk_size,
            op,
        };
        let staged = match self.store.stage(request).await {
            Ok(StageOutcome::Staged(pending)) => pending,
            Ok(StageOutcome::AlreadyCommitted { .. }) => {
                return Err(StoreError::VersionConflict {
                    chunk,
                    meta: Box::new(self.meta(chunk)),
                    detail: "the store holds a newer committed version",
                });
            }
            Ok(StageOutcome::Busy) => {
                return Err(StoreError::Io {
                    message: format!("chunk {chunk} is busy in the store"),
                });
            }
            Err(ChunkError::NoSpace { .. }) => return Err(StoreError::NoSpace { chunk }),
            Err(ChunkError::InvalidArgument(_)) => {
                let length_bytes = match &write.update {
                    Update::Write { offset_bytes, data } => {
                        u64::from(*offset_bytes) + data.len() as u64
                    }
                    Update::Truncate { length_bytes } | Update::Extend { length_bytes } => {
                        u64::from(*length_bytes)
                    }
                    Update::Replace { data } => data.len() as u64,
                    Update::Remove => 0,
                };
                return Err(StoreError::TooLarge { chunk, length_bytes });
            }
            Err(ChunkError::ChunkCorrupt { .. }) => return Err(StoreError::Corrupt { chunk }),
            Err(error) => return Err(io_error(error)),
        };
        let actual = Digest {
            version: write.version,
            length_bytes: staged.len,
            checksum: staged.crc,
            removed: staged.removal,
        };
        if let Some(expected) = write.expected
            && !(expected.same_content(&actual) && expected.version == write.version)
        {
            // The contract: a diverging write leaves nothing behind.
            self.store.abort(chunk, write.version).await.map_err(io_error)?;
            return Err(StoreError::Diverged { chunk, expected, actual });
        }
        if let Some(tag) = write.tag {
            bounded_insert(&mut self.tags.borrow_mut(), (chunk, write.version), tag, TAGS_MAX);
        }
        let meta = self.meta(chunk);
        debug_assert!(meta.check().is_ok(), "{:?}", meta.check());
        Ok(meta)
    }

    async fn commit(&self, chunk: ChunkId, version: ChunkVersion) -> Result<ChunkMeta, StoreError> {
        let pending_chain_version = self.meta(chunk).pending.map(|p| p.chain_version);
        match self.store.commit(chunk, version).await.map_err(io_error)? {
            CommitOutcome::Committed(Some(_)) => {
                self.tombstones.borrow_mut().remove(&chunk);
            }
            CommitOutcome::Committed(None) => {
                let chain_version = pending_chain_version.unwrap_or_default();
                bounded_insert(
                    &mut self.tombstones.borrow_mut(),
                    chunk,
                    (version, chain_version),
                    TOMBSTONES_MAX,
                );
            }
            CommitOutcome::AlreadyCommitted { committed } if committed == version => {}
            CommitOutcome::NotStaged
                if self.tombstones.borrow().get(&chunk).map(|t| t.0) == Some(version) => {}
            CommitOutcome::NotStaged => return Err(StoreError::NoPending { chunk }),
            CommitOutcome::AlreadyCommitted { .. } | CommitOutcome::VersionMismatch { .. } => {
                return Err(StoreError::VersionConflict {
                    chunk,
                    meta: Box::new(self.meta(chunk)),
                    detail: "commit of a version that is not pending",
                });
            }
            CommitOutcome::Busy => {
                return Err(StoreError::Io {
                    message: format!("chunk {chunk} is busy in the store"),
                });
            }
        }
        // Tags of versions older than the committed one are of no use any more.
        let mut tags = self.tags.borrow_mut();
        let stale: Vec<_> =
            tags.range((chunk, ChunkVersion(0))..(chunk, version)).map(|(key, _)| *key).collect();
        for key in stale {
            tags.remove(&key);
        }
        drop(tags);
        Ok(self.meta(chunk))
    }

    async fn read(
        &self,
        chunk: ChunkId,
        offset: u32,
        len: u32,
    ) -> Result<(ChunkMeta, Bytes), StoreError> {
        let meta = self.meta(chunk);
        if meta.committed.removed || len == 0 {
            return Ok((meta, Bytes::new()));
        }
        // No await between the metadata snapshot and the store's own lookup inside `read`.
        match self.store.read(chunk, offset, len).await {
            Ok(outcome) => Ok((meta, Bytes::copy_from_slice(outcome.data()))),
            Err(ChunkError::ChunkNotFound(_)) => Ok((ChunkMeta::absent(chunk), Bytes::new())),
            Err(ChunkError::ChunkCorrupt { .. }) => Err(StoreError::Corrupt { chunk }),
            Err(error) => Err(io_error(error)),
        }
    }

    async fn read_full(
        &self,
        chunk: ChunkId,
        which: Which,
    ) -> Result<(ChunkMeta, Bytes), StoreError> {
        let meta = self.meta(chunk);
        match which {
            Which::Committed => {
                let len = meta.committed.length_bytes;
                self.read(chunk, 0, len).await
            }
            Which::Pending => {
                let pending = meta.pending.ok_or(StoreError::NoPending { chunk })?;
                if pending.removed || pending.length_bytes == 0 {
                    return Ok((meta, Bytes::new()));
                }
                match self.store.read_pending(chunk, 0, pending.length_bytes).await {
                    Ok(Some(outcome)) => {
                        let data = Bytes::copy_from_slice(outcome.data());
                        if crc32c::crc32c(&data) != pending.checksum {
                            return Err(StoreError::Corrupt { chunk });
                        }
                        Ok((meta, data))
                    }
                    Ok(None) => Err(StoreError::NoPending { chunk }),
                    Err(ChunkError::ChunkCorrupt { .. }) => Err(StoreError::Corrupt { chunk }),
                    Err(error) => Err(io_error(error)),
                }
            }
        }
    }

    async fn sync_replace(
        &self,
        chunk: ChunkId,
        state: Option<ChunkState>,
        data: &[u8],
        chunk_size: Option<u32>,
    ) -> Result<ChunkMeta, StoreError> {
        let forget = |this: &Self| {
            this.tombstones.borrow_mut().remove(&chunk);
            let mut tags = this.tags.borrow_mut();
            let keys: Vec<_> = tags
                .range((chunk, ChunkVersion(0))..=(chunk, ChunkVersion(u64::MAX)))
                .map(|(key, _)| *key)
                .collect();
            for key in keys {
                tags.remove(&key);
            }
        };
        let remove = async {
            let range = chunk.index..chunk.index.saturating_add(1);
            let outcome = self.store.remove_range(chunk.inode, range).await.map_err(io_error)?;
            if !outcome.busy.is_empty() {
                return Err(StoreError::Io {
                    message: format!("chunk {chunk} is busy in the store"),
                });
            }
            Ok(())
        };
        match state {
            None => {
                remove.await?;
                forget(self);
            }
            Some(state) if state.removed => {
                // Durable like a removal through the write path: clear the chunk, then stage and
                // commit a removal at exactly the predecessor's version, which leaves the chunk
                // store's tombstone (one log record). A crash in between leaves the chunk absent
                // without a tombstone, which the next resync compares and fixes again.
                remove.await?;
                forget(self);
                let request = StageRequest {
                    chunk,
                    version: state.version,
                    chain_version: state.chain_version,
                    chunk_size: chunk_size.unwrap_or(self.chunk_size_default),
                    op: UpdateOp::Remove,
                };
                match self.store.update(request).await {
                    Ok(UpdateOutcome::Committed(None)) => {}
                    Ok(other) => {
                        return Err(StoreError::Io {
                            message: format!("chunk {chunk}: tombstone install answered {other:?}"),
                        });
                    }
                    Err(error) => return Err(io_error(error)),
                }
            }
            Some(state) => {
                let actual = Digest::of(state.version, data, false);
                if !actual.same_content(&state.digest()) {
                    return Err(StoreError::Diverged { chunk, expected: state.digest(), actual });
                }
                let request = StageRequest {
                    chunk,
                    version: state.version,
                    chain_version: state.chain_version,
                    chunk_size: chunk_size.unwrap_or(self.chunk_size_default),
                    op: UpdateOp::Replace { data: self.chunk_buf(data), crc: state.checksum },
                };
                match self.store.install(request).await {
                    Ok(UpdateOutcome::Committed(_))
                    | Ok(UpdateOutcome::AlreadyCommitted { .. }) => {}
                    Ok(UpdateOutcome::Busy) => {
                        return Err(StoreError::Io {
                            message: format!("chunk {chunk} is busy in the store"),
                        });
                    }
                    Err(ChunkError::NoSpace { .. }) => return Err(StoreError::NoSpace { chunk }),
                    Err(error) => return Err(io_error(error)),
                }
                forget(self);
                if let Some(tag) = state.tag {
                    bounded_insert(
                        &mut self.tags.borrow_mut(),
                        (chunk, state.version),
                        tag,
                        TAGS_MAX,
                    );
                }
            }
        }
        Ok(self.meta(chunk))
    }

    fn list_metas(
        &self,
        after: Option<ChunkId>,
        limit: u32,
        pending_only: bool,
    ) -> (Vec<ChunkMeta>, bool) {
        let start = match after {
            None => ChunkId::new(r3fs_types::InodeId(0), 0),
            Some(after) => match next_chunk_id(after) {
                Some(next) => next,
                None => return (Vec::new(), false),
            },
        };
        // One more than asked tells whether more follow.
        let want = limit as usize + 1;
        let listed = if pending_only {
            self.store.list_staged(start, want)
        } else {
            self.store.list(start, want)
        };
        let more = listed.len() > limit as usize;
        let metas = listed.into_iter().take(limit as usize).map(|m| self.meta(m.chunk)).collect();
        (metas, more)
    }
}

/// The chunk id right after `chunk` in id order.
pub fn next_chunk_id(chunk: ChunkId) -> Option<ChunkId> {
    match chunk.index.checked_add(1) {
        Some(index) => Some(ChunkId::new(chunk.inode, index)),
        None => {
            chunk.inode.0.checked_add(1).map(|inode| ChunkId::new(r3fs_types::InodeId(inode), 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use r3fs_chunk::StoreConfig;
    use r3fs_chunk::mem::{MemDisk, MemDiskOptions};
    use r3fs_types::InodeId;

    const CHUNK_SIZE: u32 = 1 << 20;

    fn config() -> StoreConfig {
        StoreConfig {
            capacity_bytes: 256 << 20,
            header_cache_bytes: 1 << 20,
            log_compaction_bytes_min: 4 << 20,
            log_extent_bytes: 1 << 20,
            commit_batch_records_max: 64,
            grow_bytes_max: 16 << 20,
            write_inflight_bytes_max: 2 << 20,
        }
    }

    fn write(version: u64, update: Update, expected: Option<Digest>) -> PendingWrite {
        PendingWrite {
            version: ChunkVersion(version),
            chain_version: ChainVersion(1),
            update,
            tag: None,
            expected,
        }
    }

    /// Extend through the adapter gives exactly the replica's reference semantics
    /// (`Update::apply`): zeros up to the length, never shorter, a missing chunk created.
    #[test]
    fn extend_follows_the_reference_semantics() {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        pool.run_until(async move {
            let disk = MemDisk::new(2, MemDiskOptions::default());
            let (store, flusher) = ChunkStore::open(disk.device(), config()).await.expect("open");
            spawner.spawn_local(flusher.run()).expect("spawn flusher");
            let target = TargetStore::new(store, CHUNK_SIZE);
            let chunk = ChunkId::new(InodeId(6), 0);
            let data = Bytes::from((0..10_001u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            let mut content = Vec::new();
            let updates = [
                Update::Extend { length_bytes: 3 },
                Update::Write { offset_bytes: 0, data },
                Update::Extend { length_bytes: 5 },
                Update::Extend { length_bytes: 70_000 },
            ];
            for (i, update) in updates.into_iter().enumerate() {
                let version = ChunkVersion(i as u64 + 1);
                let applied = update.apply(&content, CHUNK_SIZE).expect("fits");
                let expected = Digest::of(version, &applied.content, false);
                let w = write(version.0, update, Some(expected));
                assert!(matches!(
                    target.execute(StorageOp::WritePending { chunk, write: w }, None).await,
                    StorageResult::Meta(_)
                ));
                let commit = StorageOp::Commit { chunk, version };
                let StorageResult::Meta(meta) = target.execute(commit, None).await else {
                    panic!("commit failed")
                };
                assert_eq!(meta.committed.digest(), expected);
                let full = StorageOp::ReadFull { chunk, which: Which::Committed };
                let StorageResult::Data { data: read, .. } = target.execute(full, None).await
                else {
                    panic!("read failed")
                };
                assert_eq!(read.as_ref(), applied.content.as_slice());
                content = applied.content;
            }
            assert_eq!(content.len(), 70_000);
        });
    }

    /// Drives the adapter like the replica does: one op at a time per chunk, checking the
    /// contract's answers, including tombstones and a diverged expected digest.
    #[test]
    fn contract_over_the_chunk_store() {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        pool.run_until(async move {
            let disk = MemDisk::new(1, MemDiskOptions::default());
            let (store, flusher) = ChunkStore::open(disk.device(), config()).await.expect("open");
            spawner.spawn_local(flusher.run()).expect("spawn flusher");
            let target = TargetStore::new(store, CHUNK_SIZE);
            let chunk = ChunkId::new(InodeId(5), 0);
            let data = Bytes::from(vec![7u8; 10_000]);

            assert!(target.meta(chunk).is_absent());
            let expected = Digest::of(ChunkVersion(1), &data, false);
            let w = write(1, Update::Write { offset_bytes: 0, data: data.clone() }, Some(expected));
            let StorageResult::Meta(meta) =
                target.execute(StorageOp::WritePending { chunk, write: w }, Some(CHUNK_SIZE)).await
            else {
                panic!("write pending failed")
            };
            assert_eq!(meta.pending.map(|p| p.digest()), Some(expected));
            // Reads see the (absent) committed version plus the pending marker.
            let StorageResult::Data { meta, data: read } = target
                .execute(StorageOp::Read { chunk, offset_bytes: 0, length_bytes: 100 }, None)
                .await
            else {
                panic!("read failed")
            };
            assert!(meta.pending.is_some() && read.is_empty());
            // The pending version can be read whole (re-forwarding it).
            let StorageResult::Data { data: full, .. } =
                target.execute(StorageOp::ReadFull { chunk, which: Which::Pending }, None).await
            else {
                panic!("read pending failed")
            };
            assert_eq!(full, data);
            let StorageResult::Metas { metas, more } = target
                .execute(StorageOp::ListMetas { after: None, limit: 10, pending_only: true }, None)
                .await
            else {
                panic!("list failed")
            };
            assert_eq!((metas.len(), more), (1, false));

            let commit = StorageOp::Commit { chunk, version: ChunkVersion(1) };
            let StorageResult::Meta(meta) = target.execute(commit.clone(), None).await else {
                panic!("commit failed")
            };
            assert_eq!(meta.committed.digest(), expected);
            assert!(
                matches!(target.execute(commit, None).await, StorageResult::Meta(_)),
                "commit is idempotent"
            );
            let StorageResult::Data { data: read, .. } = target
                .execute(StorageOp::Read { chunk, offset_bytes: 9_000, length_bytes: 5_000 }, None)
                .await
            else {
                panic!("read failed")
            };
            assert_eq!(read, data.slice(9_000..));

            // A diverging expected digest writes nothing.
            let wrong = Digest::of(ChunkVersion(2), b"other", false);
            let w = write(2, Update::Truncate { length_bytes: 5 }, Some(wrong));
            assert!(matches!(
                target.execute(StorageOp::WritePending { chunk, write: w }, None).await,
                StorageResult::Failed(StoreError::Diverged { .. })
            ));
            assert!(target.meta(chunk).pending.is_none());

            // Removal leaves a tombstone whose version keeps growing.
            let w = write(2, Update::Remove, None);
            assert!(matches!(
                target.execute(StorageOp::WritePending { chunk, write: w }, None).await,
                StorageResult::Meta(_)
            ));
            let StorageResult::Meta(meta) =
                target.execute(StorageOp::Commit { chunk, version: ChunkVersion(2) }, None).await
            else {
                panic!("commit removal failed")
            };
            assert!(meta.committed.removed && meta.committed.version == ChunkVersion(2));
            assert!(meta.check().is_ok());

            // Resync installs an exact state.
            let state = ChunkState {
                version: ChunkVersion(9),
                chain_version: ChainVersion(3),
                length_bytes: 3,
                checksum: crc32c::crc32c(b"abc"),
                removed: false,
                tag: None,
            };
            let StorageResult::Meta(meta) = target
                .execute(
                    StorageOp::SyncReplace {
                        chunk,
                        state: Some(state),
                        data: Bytes::from_static(b"abc"),
                    },
                    None,
                )
                .await
            else {
                panic!("sync replace failed")
            };
            assert_eq!(meta.committed.digest(), state.digest());
            let StorageResult::Meta(meta) = target
                .execute(StorageOp::SyncReplace { chunk, state: None, data: Bytes::new() }, None)
                .await
            else {
                panic!("sync delete failed")
            };
            assert!(meta.is_absent());
        });
    }

    /// A removal installed by resync (the predecessor's tombstone) survives a restart, like a
    /// removal committed through the write path.
    #[test]
    fn resync_tombstones_are_durable() {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        pool.run_until(async move {
            let disk = MemDisk::new(1, MemDiskOptions::default());
            let chunk = ChunkId::new(InodeId(6), 2);
            let tombstone = ChunkState {
                version: ChunkVersion(4),
                chain_version: ChainVersion(3),
                removed: true,
                ..ChunkState::ABSENT
            };
            {
                let (store, flusher) =
                    ChunkStore::open(disk.device(), config()).await.expect("open");
                spawner.spawn_local(flusher.run()).expect("spawn flusher");
                let target = TargetStore::new(store, CHUNK_SIZE);
                // The successor still holds an older copy of a chunk the predecessor removed.
                let data = Bytes::from(vec![3u8; 5000]);
                let w = write(1, Update::Write { offset_bytes: 0, data }, None);
                let op = StorageOp::WritePending { chunk, write: w };
                assert!(matches!(target.execute(op, None).await, StorageResult::Meta(_)));
                let op = StorageOp::Commit { chunk, version: ChunkVersion(1) };
                assert!(matches!(target.execute(op, None).await, StorageResult::Meta(_)));
                let op =
                    StorageOp::SyncReplace { chunk, state: Some(tombstone), data: Bytes::new() };
                let StorageResult::Meta(meta) = target.execute(op, None).await else {
                    panic!("tombstone install failed")
                };
                assert_eq!(meta.committed.digest(), tombstone.digest());
                assert!(meta.pending.is_none());
                target.store().clone().close().await.expect("close");
            }
            let (store, flusher) = ChunkStore::open(disk.device(), config()).await.expect("reopen");
            spawner.spawn_local(flusher.run()).expect("spawn flusher");
            let target = TargetStore::new(store, CHUNK_SIZE);
            let meta = target.meta(chunk);
            assert!(meta.committed.removed, "{meta:?}");
            assert_eq!(meta.committed.version, ChunkVersion(4), "the version survives a restart");
            assert_eq!(meta.committed.chain_version, ChainVersion(3));
        });
    }

    #[test]
    fn next_chunk_id_carries_into_the_inode() {
        let last = ChunkId::new(InodeId(3), u64::MAX);
        assert_eq!(next_chunk_id(last), Some(ChunkId::new(InodeId(4), 0)));
        assert_eq!(next_chunk_id(ChunkId::new(InodeId(u64::MAX), u64::MAX)), None);
    }
}
