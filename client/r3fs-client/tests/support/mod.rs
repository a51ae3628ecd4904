pub mod fake;

use r3fs_types::{ChainSelection, ChainTableId, ChainTableVersion, Layout};

/// Chunk size of the test files.
pub const CHUNK: u32 = 64 << 10;

/// A layout on chain table 1 of the fake cluster: `stripe` chains, shuffled with `seed`.
pub fn layout(stripe: u32, seed: u64) -> Layout {
    Layout {
        chain_table_id: ChainTableId(1),
        chain_table_version: ChainTableVersion(1),
        chunk_size: CHUNK,
        stripe_size: stripe,
        chains: ChainSelection::ShuffleV1 { seed },
    }
}
