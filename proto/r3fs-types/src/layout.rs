//! A file's layout: how its bytes map to chunks and its chunks to chains.
//!
//! A file of layout `L` is cut into chunks of `L.chunk_size` bytes; chunk `i` lives on the chain at
//! table position `L.stripe_positions()[i % L.stripe_size]` of chain table
//! (`L.chain_table_id`, `L.chain_table_version`). The positions are chosen once per file by
//! [`ChainSelection`], whose algorithms are specified here (docs/design/layout.md) and versioned in
//! their names: no library's RNG decides where data lives, so a new release cannot move it.

use crate::ids::{ChainTableId, ChainTableVersion};
use serde::{Deserialize, Serialize};

/// Smallest allowed chunk: 64 KiB.
pub const CHUNK_SIZE_MIN: u32 = 64 << 10;
/// Largest allowed chunk: 64 MiB.
pub const CHUNK_SIZE_MAX: u32 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layout {
    pub chain_table_id: ChainTableId,
    pub chain_table_version: ChainTableVersion,
    /// Bytes per chunk; a power of two in [`CHUNK_SIZE_MIN`, `CHUNK_SIZE_MAX`].
    pub chunk_size: u32,
    /// How many chains one file's chunks rotate over.
    pub stripe_size: u32,
    pub chains: ChainSelection,
}

/// Which chain-table positions (0-based) a file uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChainSelection {
    /// Partial Fisher-Yates shuffle of `0..table_len` driven by SplitMix64 seeded with `seed`;
    /// the first `stripe_size` positions are the file's. Specification (frozen):
    /// `state = seed`; `next()`: `state += 0x9E3779B97F4A7C15; z = state;
    /// z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31`
    /// (wrapping arithmetic). For `i in 0..stripe_size`: `j = i + next() % (table_len - i)`,
    /// swap positions `i` and `j`.
    ShuffleV1 { seed: u64 },
    /// Explicit table positions, in stripe order.
    List(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("chunk size {0} is not a power of two between 64 KiB and 64 MiB")]
    ChunkSize(u32),
    #[error("stripe size must be at least 1")]
    EmptyStripe,
    #[error("stripe size {stripe_size} exceeds the chain table's {table_len} chains")]
    StripeTooWide { stripe_size: u32, table_len: u32 },
    #[error("chain list has {actual} entries but stripe size is {expected}")]
    ListLength { expected: u32, actual: usize },
    #[error("chain table position {position} is outside a table of {table_len} chains")]
    PositionOutOfRange { position: u32, table_len: u32 },
    #[error("chain table position {0} appears twice")]
    DuplicatePosition(u32),
}

impl Layout {
    /// Checks the layout against a chain table of `table_len` chains.
    pub fn validate(&self, table_len: u32) -> Result<(), LayoutError> {
        if !self.chunk_size.is_power_of_two()
            || !(CHUNK_SIZE_MIN..=CHUNK_SIZE_MAX).contains(&self.chunk_size)
        {
            return Err(LayoutError::ChunkSize(self.chunk_size));
        }
        if self.stripe_size == 0 {
            return Err(LayoutError::EmptyStripe);
        }
        if self.stripe_size > table_len {
            return Err(LayoutError::StripeTooWide { stripe_size: self.stripe_size, table_len });
        }
        if let ChainSelection::List(list) = &self.chains {
            if list.len() != self.stripe_size as usize {
                return Err(LayoutError::ListLength {
                    expected: self.stripe_size,
                    actual: list.len(),
                });
            }
            let mut seen = std::collections::HashSet::new();
            for &position in list {
                if position >= table_len {
                    return Err(LayoutError::PositionOutOfRange { position, table_len });
                }
                if !seen.insert(position) {
                    return Err(LayoutError::DuplicatePosition(position));
                }
            }
        }
        Ok(())
    }

    /// The chain-table positions of this file, in stripe order. Callers cache the result per file:
    /// it costs O(table_len).
    pub fn stripe_positions(&self, table_len: u32) -> Result<Vec<u32>, LayoutError> {
        self.validate(table_len)?;
        Ok(match &self.chains {
            ChainSelection::List(list) => list.clone(),
            ChainSelection::ShuffleV1 { seed } => shuffle_v1(*seed, table_len, self.stripe_size),
        })
    }

    /// Index of the chunk holding byte `offset`.
    pub fn chunk_index(&self, offset: u64) -> u64 {
        offset / u64::from(self.chunk_size)
    }

    /// Offset of byte `offset` inside its chunk.
    pub fn offset_in_chunk(&self, offset: u64) -> u32 {
        // The remainder is below chunk_size, which is a u32.
        (offset % u64::from(self.chunk_size)) as u32
    }

    /// Which entry of `stripe_positions` holds chunk `index`.
    pub fn stripe_slot(&self, index: u64) -> usize {
        (index % u64::from(self.stripe_size)) as usize
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn shuffle_v1(seed: u64, table_len: u32, stripe_size: u32) -> Vec<u32> {
    let mut positions: Vec<u32> = (0..table_len).collect();
    let mut rng = SplitMix64(seed);
    for i in 0..stripe_size {
        let remaining = u64::from(table_len - i);
        // The remainder is below table_len, which is a u32.
        let j = i + (rng.next() % remaining) as u32;
        positions.swap(i as usize, j as usize);
    }
    positions.truncate(stripe_size as usize);
    positions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(stripe_size: u32, chains: ChainSelection) -> Layout {
        Layout {
            chain_table_id: ChainTableId(1),
            chain_table_version: ChainTableVersion(1),
            chunk_size: 1 << 20,
            stripe_size,
            chains,
        }
    }

    /// Golden vector: ShuffleV1 is part of the on-disk format. If this fails, the algorithm changed
    /// and existing files would read from the wrong chains: add ShuffleV2 instead.
    #[test]
    fn shuffle_v1_is_frozen() {
        let l = layout(8, ChainSelection::ShuffleV1 { seed: 42 });
        assert_eq!(l.stripe_positions(16).unwrap(), vec![5, 2, 1, 6, 14, 4, 11, 12]);
        let first = SplitMix64(0).next();
        assert_eq!(first, 0xE220_A839_7B1D_CDAF, "SplitMix64 reference value for seed 0");
    }

    #[test]
    fn rejects_bad_layouts() {
        let mut l = layout(2, ChainSelection::List(vec![0, 0]));
        assert_eq!(l.validate(4), Err(LayoutError::DuplicatePosition(0)));
        l.chains = ChainSelection::List(vec![0, 9]);
        assert_eq!(
            l.validate(4),
            Err(LayoutError::PositionOutOfRange { position: 9, table_len: 4 })
        );
        l.chains = ChainSelection::List(vec![0]);
        assert!(matches!(l.validate(4), Err(LayoutError::ListLength { .. })));
        l.chunk_size = 3 << 20;
        assert_eq!(l.validate(4), Err(LayoutError::ChunkSize(3 << 20)));
        let wide = layout(5, ChainSelection::ShuffleV1 { seed: 1 });
        assert!(matches!(wide.validate(4), Err(LayoutError::StripeTooWide { .. })));
        assert_eq!(
            layout(0, ChainSelection::ShuffleV1 { seed: 1 }).validate(4),
            Err(LayoutError::EmptyStripe)
        );
    }

    proptest! {
        #[test]
        fn shuffle_picks_distinct_positions_in_range(seed in any::<u64>(), table_len in 1u32..300, stripe in 1u32..300) {
            let stripe = stripe.min(table_len);
            let l = layout(stripe, ChainSelection::ShuffleV1 { seed });
            let positions = l.stripe_positions(table_len).unwrap();
            prop_assert_eq!(positions.len(), stripe as usize);
            let distinct: std::collections::HashSet<_> = positions.iter().collect();
            prop_assert_eq!(distinct.len(), positions.len());
            prop_assert!(positions.iter().all(|&p| p < table_len));
        }

        #[test]
        fn offsets_map_back(offset in any::<u64>()) {
            let l = layout(3, ChainSelection::ShuffleV1 { seed: 7 });
            let index = l.chunk_index(offset);
            prop_assert_eq!(index * u64::from(l.chunk_size) + u64::from(l.offset_in_chunk(offset)), offset);
        }
    }
}
