//! Inode id allocation in batches, without a hot key.
//!
//! The id space above [`FIRST_ALLOCATED_ID`] is cut into blocks of `batch` ids. Block `b` of shard
//! `s` (of `shards`) covers ids `FIRST + (b * shards + s) * batch ..+ batch`, so blocks of
//! different shards never overlap and no two allocations of one shard get the same `b`. Shard `s`
//! keeps its next `b` under its own key; an instance that runs out of ids picks a random shard and
//! takes its next block in a small transaction of its own. Concurrent instances rarely pick the
//! same shard, and when they do the KV's conflict check hands the block to exactly one of them.
//!
//! `shards` and `batch` are fixed at format time (stored in the format record): changing them
//! would remap blocks onto ids already given out.
//!
//! Ids taken but unused (a create that failed, an instance that stopped) are simply skipped: the
//! space is 2^64.

use crate::error::{MetaError, MetaResult};
use crate::keys;

use r3fs_kv::retry::RetryPolicy;
use r3fs_kv::{Kv, ReadMode};
use r3fs_types::InodeId;
use std::ops::Range;

/// Ids below this are reserved (the root is 1).
pub const FIRST_ALLOCATED_ID: u64 = 1 << 10;

#[derive(Debug)]
pub struct InodeAllocator {
    shards: u32,
    batch: u64,
    pending: tokio::sync::Mutex<Range<u64>>,
}

impl InodeAllocator {
    pub fn new(shards: u32, batch: u64) -> Self {
        assert!(shards > 0 && shards <= u32::from(u16::MAX), "id shards out of range");
        assert!(batch > 0, "id batch must be positive");
        Self { shards, batch, pending: tokio::sync::Mutex::new(0..0) }
    }

    /// A fresh inode id. Refills from the KV when the local block is used up.
    pub async fn next(&self, kv: &dyn Kv, policy: &RetryPolicy) -> MetaResult<InodeId> {
        let mut pending = self.pending.lock().await;
        if pending.is_empty() {
            *pending = self.take_block(kv, policy).await?;
        }
        let id = pending.start;
        pending.start += 1;
        Ok(InodeId(id))
    }

    async fn take_block(&self, kv: &dyn Kv, policy: &RetryPolicy) -> MetaResult<Range<u64>> {
        let shard = (rand::random::<u32>() % self.shards) as u16;
        let key = keys::id_alloc_key(shard);
        let block = transact!(kv, policy, |tx| {
            {
                let block = match tx.txn.get(&key, ReadMode::Serializable).await? {
                    None => 0,
                    Some(bytes) => {
                        u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                            MetaError::corrupt(format!(
                                "id allocator shard {shard} holds {} bytes",
                                bytes.len()
                            ))
                        })?)
                    }
                };
                tx.txn.set(&key, &(block + 1).to_le_bytes())?;
                Ok(block)
            }
        })?;
        block_range(block, u64::from(shard), u64::from(self.shards), self.batch)
            .ok_or_else(|| MetaError::internal("inode id space exhausted"))
    }
}

/// Ids of block `block` of shard `shard`; `None` on overflow.
fn block_range(block: u64, shard: u64, shards: u64, batch: u64) -> Option<Range<u64>> {
    let start = block.checked_mul(shards)?.checked_add(shard)?.checked_mul(batch)?;
    let start = start.checked_add(FIRST_ALLOCATED_ID)?;
    let end = start.checked_add(batch)?;
    // Keep ids below 2^63 so they survive signed 64-bit APIs (FUSE's inode numbers are u64, but
    // some tools print them as signed).
    (end <= 1 << 63).then_some(start..end)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blocks_never_overlap(
            a in (0u64..1_000_000, 0u64..64), b in (0u64..1_000_000, 0u64..64)
        ) {
            prop_assume!(a != b);
            let x = block_range(a.0, a.1, 64, 1024).unwrap();
            let y = block_range(b.0, b.1, 64, 1024).unwrap();
            prop_assert!(x.end <= y.start || y.end <= x.start);
            prop_assert!(x.start >= FIRST_ALLOCATED_ID);
        }
    }

    #[test]
    fn overflow_is_refused() {
        assert!(block_range(u64::MAX / 64, 63, 64, 1024).is_none());
    }
}
