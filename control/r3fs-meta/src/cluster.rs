//! What the meta service needs from mgmtd's routing info, behind a trait: storage capacity (for
//! statfs) and chain-table sizes (to validate a directory's layout).

use crate::error::MetaResult;
use async_trait::async_trait;
use r3fs_types::{ChainTableId, ChainTableVersion};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub used_bytes: u64,
}

#[async_trait]
pub trait ClusterInfo: Send + Sync + std::fmt::Debug {
    /// Sum over the storage targets of their disk size and used bytes.
    async fn capacity(&self) -> MetaResult<Capacity>;

    /// Number of chains in a chain table version; `None` if mgmtd does not know it.
    async fn chain_table_len(
        &self,
        table: ChainTableId,
        version: ChainTableVersion,
    ) -> MetaResult<Option<u32>>;
}
