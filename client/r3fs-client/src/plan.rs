//! Pure mapping from file ranges to chunks and chains (docs/design/layout.md), hole filling and
//! length clipping. No IO: everything here is checked by property tests against a byte-by-byte
//! model.

use r3fs_types::{ChainId, ChunkId, InodeId, Layout, LayoutError};
use std::sync::Arc;

/// The part of a file range that lies in one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPiece {
    /// Chunk index in the file.
    pub index: u64,
    /// Where the piece starts inside the chunk.
    pub offset_in_chunk: u32,
    /// Bytes of the piece (> 0).
    pub len: u32,
    /// Where the piece starts in the caller's buffer (relative to the range's start).
    pub buf_offset: usize,
}

impl ChunkPiece {
    pub fn buf_range(&self) -> std::ops::Range<usize> {
        self.buf_offset..self.buf_offset + self.len as usize
    }
}

/// Splits `[offset, offset + len)` at chunk boundaries, in file order. The caller makes sure the
/// end does not overflow u64 ([`range_end`]).
pub fn split_range(chunk_size: u32, offset: u64, len: usize) -> impl Iterator<Item = ChunkPiece> {
    assert!(chunk_size > 0, "a chunk holds at least one byte");
    let chunk_size = u64::from(chunk_size);
    let mut position = offset;
    let end = offset.saturating_add(len as u64);
    std::iter::from_fn(move || {
        if position >= end {
            return None;
        }
        let index = position / chunk_size;
        let offset_in_chunk = position % chunk_size;
        let piece_len = (chunk_size - offset_in_chunk).min(end - position);
        let piece = ChunkPiece {
            index,
            // Both are below chunk_size, a u32.
            offset_in_chunk: offset_in_chunk as u32,
            len: piece_len as u32,
            buf_offset: (position - offset) as usize,
        };
        position += piece_len;
        Some(piece)
    })
}

/// `offset + len`, or `None` when the range does not fit in a u64 file offset.
pub fn range_end(offset: u64, len: usize) -> Option<u64> {
    offset.checked_add(u64::try_from(len).ok()?)
}

/// How many bytes of `[offset, offset + len)` lie below `file_len` (what a read returns).
pub fn clip_to_length(offset: u64, len: usize, file_len: u64) -> usize {
    if offset >= file_len {
        return 0;
    }
    let available = file_len - offset;
    usize::try_from(available).map_or(len, |available| available.min(len))
}

/// Fills `out` (one piece of the caller's buffer) from what storage returned: the bytes it had
/// (possibly fewer than asked, at the end of a chunk) then zeros; `None` (no such chunk) is all
/// zeros. Holes read as zeros.
pub fn fill_piece(out: &mut [u8], data: Option<&[u8]>) {
    let data = data.unwrap_or(&[]);
    assert!(
        data.len() <= out.len(),
        "storage returned more than asked ({} > {})",
        data.len(),
        out.len()
    );
    let (filled, hole) = out.split_at_mut(data.len());
    filled.copy_from_slice(data);
    hole.fill(0);
}

/// The file length the last chunks of each chain imply: the end of the furthest one.
pub fn length_from_last_chunks(chunk_size: u32, last: &[Option<(u64, u32)>]) -> u64 {
    last.iter()
        .flatten()
        .map(|&(index, length)| {
            index.saturating_mul(u64::from(chunk_size)).saturating_add(u64::from(length))
        })
        .max()
        .unwrap_or(0)
}

/// A file's layout resolved against its chain table: which chain holds each chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMap {
    inode: InodeId,
    layout: Layout,
    /// Chain of each stripe slot, in stripe order.
    chains: Arc<[ChainId]>,
}

/// One piece of a file range with the chunk and chain that hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedPiece {
    pub piece: ChunkPiece,
    pub chunk: ChunkId,
    pub chain: ChainId,
}

impl FileMap {
    /// Resolves `layout` against the chain ids of its chain table (in table order).
    pub fn new(inode: InodeId, layout: Layout, table: &[ChainId]) -> Result<FileMap, LayoutError> {
        let table_len = u32::try_from(table.len()).unwrap_or(u32::MAX);
        let positions = layout.stripe_positions(table_len)?;
        // stripe_positions validated every position against the table length.
        let chains: Arc<[ChainId]> = positions.iter().map(|&p| table[p as usize]).collect();
        Ok(FileMap { inode, layout, chains })
    }

    pub fn inode(&self) -> InodeId {
        self.inode
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn chunk_size(&self) -> u32 {
        self.layout.chunk_size
    }

    /// The file's chains, in stripe order.
    pub fn chains(&self) -> &[ChainId] {
        &self.chains
    }

    pub fn chain_of(&self, index: u64) -> ChainId {
        self.chains[self.layout.stripe_slot(index)]
    }

    pub fn chunk_id(&self, index: u64) -> ChunkId {
        ChunkId::new(self.inode, index)
    }

    /// Every piece of `[offset, offset + len)` with its chunk and chain, in file order.
    pub fn plan(&self, offset: u64, len: usize) -> impl Iterator<Item = PlannedPiece> + '_ {
        split_range(self.layout.chunk_size, offset, len).map(|piece| PlannedPiece {
            piece,
            chunk: self.chunk_id(piece.index),
            chain: self.chain_of(piece.index),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use r3fs_types::{ChainSelection, ChainTableId, ChainTableVersion};

    #[test]
    fn split_examples() {
        let pieces: Vec<_> = split_range(100, 250, 260).collect();
        assert_eq!(
            pieces,
            vec![
                ChunkPiece { index: 2, offset_in_chunk: 50, len: 50, buf_offset: 0 },
                ChunkPiece { index: 3, offset_in_chunk: 0, len: 100, buf_offset: 50 },
                ChunkPiece { index: 4, offset_in_chunk: 0, len: 100, buf_offset: 150 },
                ChunkPiece { index: 5, offset_in_chunk: 0, len: 10, buf_offset: 250 },
            ]
        );
        assert_eq!(split_range(100, 5, 0).count(), 0);
        assert_eq!(range_end(u64::MAX, 1), None);
        assert_eq!(range_end(u64::MAX - 1, 1), Some(u64::MAX));
    }

    #[test]
    fn clipping_and_filling() {
        assert_eq!(clip_to_length(0, 10, 5), 5);
        assert_eq!(clip_to_length(5, 10, 5), 0);
        assert_eq!(clip_to_length(9, 10, 5), 0);
        assert_eq!(clip_to_length(2, 2, 100), 2);
        let mut out = [7u8; 6];
        fill_piece(&mut out, Some(b"ab"));
        assert_eq!(&out, b"ab\0\0\0\0");
        let mut out = [7u8; 3];
        fill_piece(&mut out, None);
        assert_eq!(out, [0; 3]);
        assert_eq!(length_from_last_chunks(10, &[None, Some((3, 4)), Some((2, 10))]), 34);
        assert_eq!(length_from_last_chunks(10, &[None]), 0);
    }

    fn layout_strategy() -> impl Strategy<Value = (Layout, u32)> {
        (16u32..=20, 1u32..40, 1u32..40, any::<u64>(), any::<bool>()).prop_map(
            |(shift, table_len, stripe, seed, list)| {
                let stripe = stripe.min(table_len);
                let chains = if list {
                    // Reverse order: a valid list that differs from the identity.
                    ChainSelection::List((0..stripe).map(|i| table_len - 1 - i).collect())
                } else {
                    ChainSelection::ShuffleV1 { seed }
                };
                let layout = Layout {
                    chain_table_id: ChainTableId(1),
                    chain_table_version: ChainTableVersion(1),
                    chunk_size: 1 << shift,
                    stripe_size: stripe,
                    chains,
                };
                (layout, table_len)
            },
        )
    }

    proptest! {
        /// Every byte of the range is covered exactly once, in order, by a piece that lies inside
        /// one chunk, at the right place, on the chain the layout note specifies.
        #[test]
        fn plan_covers_every_byte_once_within_chunks(
            (layout, table_len) in layout_strategy(),
            offset in 0u64..(1u64 << 34),
            len in 0usize..(5 << 20),
        ) {
            let table: Vec<ChainId> = (0..table_len).map(|i| ChainId(1000 + i)).collect();
            let map = FileMap::new(InodeId(42), layout.clone(), &table).expect("valid layout");
            let positions = layout.stripe_positions(table_len).expect("valid layout");
            let chunk_size = u64::from(layout.chunk_size);
            let mut next_buf = 0usize;
            for planned in map.plan(offset, len) {
                let p = planned.piece;
                prop_assert!(p.len > 0);
                prop_assert_eq!(p.buf_offset, next_buf, "contiguous, no overlap, no gap");
                next_buf += p.len as usize;
                prop_assert!(u64::from(p.offset_in_chunk) + u64::from(p.len) <= chunk_size);
                prop_assert_eq!(p.index * chunk_size + u64::from(p.offset_in_chunk), offset + p.buf_offset as u64);
                prop_assert_eq!(planned.chunk, ChunkId::new(InodeId(42), p.index));
                let slot = (p.index % u64::from(layout.stripe_size)) as usize;
                prop_assert_eq!(planned.chain, table[positions[slot] as usize]);
                // Only the first and last piece may be partial chunks.
                if p.buf_offset != 0 && p.buf_offset + p.len as usize != len {
                    prop_assert_eq!(u64::from(p.len), chunk_size);
                }
            }
            prop_assert_eq!(next_buf, len);
        }

        /// Filling pieces from a sparse model (some chunks missing, some short) reads exactly the
        /// model's bytes, zeros elsewhere.
        #[test]
        fn filling_matches_a_byte_model(
            offset in 0u64..4096, len in 0usize..4096,
            present in proptest::collection::vec(proptest::option::of(0u32..=512), 20),
        ) {
            let chunk_size = 512u32;
            // Model file: chunk i has present[i] bytes of value (i + 1); absent chunks are holes.
            let model = |pos: u64| -> u8 {
                let index = (pos / 512) as usize;
                match present.get(index).copied().flatten() {
                    Some(n) if (pos % 512) < u64::from(n) => (index + 1) as u8,
                    _ => 0,
                }
            };
            let mut out = vec![0xEEu8; len];
            for p in split_range(chunk_size, offset, len) {
                let stored = present.get(p.index as usize).copied().flatten();
                let data: Option<Vec<u8>> = stored.map(|n| {
                    let have = n.saturating_sub(p.offset_in_chunk).min(p.len);
                    vec![(p.index + 1) as u8; have as usize]
                });
                fill_piece(&mut out[p.buf_range()], data.as_deref());
            }
            for (i, &b) in out.iter().enumerate() {
                prop_assert_eq!(b, model(offset + i as u64), "byte {}", i);
            }
        }
    }
}
