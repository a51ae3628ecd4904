//! What the meta service needs from storage, behind a trait: the last chunk of a file on each of
//! its chains (to compute the exact length), cutting one chunk (truncate) and removing ranges of
//! chunks (truncate, garbage collection).
//!
//! The real implementation will come with the client library's storage client (a later issue);
//! until then the `r3fs-meta` binary runs without one and says what that disables (shrinking
//! truncates of non-empty files, chunk removal by the collector). Unit tests use
//! `tests::InMemoryChunkStorageForTests`.

use crate::error::MetaResult;
use async_trait::async_trait;
use r3fs_types::{InodeId, Layout};
use std::ops::Range;

/// The chunk with the highest index of one file on one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastChunk {
    pub index: u64,
    /// Bytes of data in that chunk.
    pub length: u32,
}

#[async_trait]
pub trait ChunkStorage: Send + Sync + std::fmt::Debug {
    /// For each stripe slot of `layout` (in stripe order), the last chunk of `inode` on that
    /// slot's chain, or `None` if the chain holds none of the file's chunks.
    async fn query_last_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
    ) -> MetaResult<Vec<Option<LastChunk>>>;

    /// Cuts chunk `index` of `inode` to `length` bytes (a no-op if it is shorter or absent).
    async fn truncate_chunk(
        &self,
        inode: InodeId,
        layout: &Layout,
        index: u64,
        length: u32,
    ) -> MetaResult<()>;

    /// Removes the file's chunks with an index in `indexes` (absent ones are skipped); returns how
    /// many were removed. `u64::MAX` as the end means "to the last chunk".
    async fn remove_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
        indexes: Range<u64>,
    ) -> MetaResult<u64>;
}

/// The file length the chunks imply: the end of the furthest last chunk.
pub fn length_from_last_chunks(layout: &Layout, last: &[Option<LastChunk>]) -> u64 {
    last.iter()
        .flatten()
        .map(|c| {
            c.index.saturating_mul(u64::from(layout.chunk_size)).saturating_add(u64::from(c.length))
        })
        .max()
        .unwrap_or(0)
}

/// Makes storage hold exactly the bytes below `length`: removes every chunk past the one holding
/// byte `length - 1` and cuts that one.
pub async fn truncate_to(
    storage: &dyn ChunkStorage,
    inode: InodeId,
    layout: &Layout,
    length: u64,
) -> MetaResult<()> {
    let chunk_size = u64::from(layout.chunk_size);
    let full_chunks = length / chunk_size;
    let tail = (length % chunk_size) as u32;
    if tail == 0 {
        storage.remove_chunks(inode, layout, full_chunks..u64::MAX).await?;
    } else {
        storage.remove_chunks(inode, layout, full_chunks + 1..u64::MAX).await?;
        storage.truncate_chunk(inode, layout, full_chunks, tail).await?;
    }
    Ok(())
}
