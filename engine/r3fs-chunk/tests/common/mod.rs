//! Shared helpers of the chunk-store tests: a harness that runs a store on a crashable
//! in-memory disk (fresh executor per boot), buffers, and deterministic data.

#![allow(dead_code, clippy::unwrap_used)]

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use r3fs_chunk::mem::{MemDevice, MemDisk, MemDiskOptions};
use r3fs_chunk::{
    ChunkBuf, ChunkStore, Device, OpenError, StageRequest, StoreConfig, StoreError, UpdateOp,
    UpdateOutcome,
};
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, InodeId};
use std::future::Future;

/// Small everything, so that growth, reclaim and compaction all happen in short tests.
pub fn small_config() -> StoreConfig {
    StoreConfig {
        capacity_bytes: 256 << 20,
        header_cache_bytes: 1 << 20,
        log_compaction_bytes_min: 64 << 10,
        log_extent_bytes: 64 << 10,
        commit_batch_records_max: 256,
        grow_bytes_max: 1 << 20,
        // Below the tests' chunk sizes: concurrent writes queue at the gate.
        write_inflight_bytes_max: 256 << 10,
    }
}

pub struct MemHarness {
    pub disk: MemDisk,
    pub config: StoreConfig,
    pool: LocalPool,
    store: Option<ChunkStore<MemDevice>>,
}

impl MemHarness {
    pub fn new(seed: u64, options: MemDiskOptions, config: StoreConfig) -> MemHarness {
        let disk = MemDisk::new(seed, options);
        let mut harness = MemHarness { disk, config, pool: LocalPool::new(), store: None };
        harness.reopen().unwrap();
        harness
    }

    pub fn store(&self) -> ChunkStore<MemDevice> {
        self.store.clone().expect("store is open")
    }

    /// Runs a future (and the flusher) to completion.
    pub fn run<T>(&mut self, future: impl Future<Output = T>) -> T {
        self.pool.run_until(future)
    }

    /// Opens the store again on the disk's current boot, on a fresh executor (a crashed
    /// boot's tasks die with its executor, as a killed process's would).
    pub fn reopen(&mut self) -> Result<(), OpenError> {
        self.store = None;
        self.pool = LocalPool::new();
        let device = self.disk.device();
        let config = self.config.clone();
        let (store, flusher) = self.pool.run_until(ChunkStore::open(device, config))?;
        self.pool.spawner().spawn_local(flusher.run()).unwrap();
        self.store = Some(store);
        Ok(())
    }

    /// Closes cleanly, then reopens.
    pub fn close_and_reopen(&mut self) {
        let store = self.store.take().unwrap();
        self.pool.run_until(store.close()).unwrap();
        self.reopen().unwrap();
    }
}

pub fn chunk(inode: u64, index: u64) -> ChunkId {
    ChunkId::new(InodeId(inode), index)
}

/// Deterministic bytes for (seed, len): the testkit's pattern, under the name these suites use.
pub use r3fs_testkit::pattern as bytes;

pub fn buf<D: Device>(store: &ChunkStore<D>, data: &[u8]) -> ChunkBuf<D::Buf> {
    let mut buf = store.alloc_buf(data.len());
    buf.data_mut().copy_from_slice(data);
    buf
}

pub fn write_request<D: Device>(
    store: &ChunkStore<D>,
    chunk: ChunkId,
    version: u64,
    chunk_size: u32,
    offset: u32,
    data: &[u8],
) -> StageRequest<D::Buf> {
    StageRequest {
        chunk,
        version: ChunkVersion(version),
        chain_version: ChainVersion(1),
        chunk_size,
        op: UpdateOp::Write { offset, data: buf(store, data), crc: crc32c::crc32c(data) },
    }
}

pub async fn write<D: Device>(
    store: &ChunkStore<D>,
    chunk: ChunkId,
    version: u64,
    chunk_size: u32,
    offset: u32,
    data: &[u8],
) -> Result<UpdateOutcome, StoreError> {
    store.update(write_request(store, chunk, version, chunk_size, offset, data)).await
}

pub async fn read_all<D: Device>(
    store: &ChunkStore<D>,
    chunk: ChunkId,
) -> Result<Vec<u8>, StoreError> {
    let read = store.read(chunk, 0, u32::MAX).await?;
    assert_eq!(read.crc, crc32c::crc32c(read.data()), "returned crc matches returned bytes");
    Ok(read.data().to_vec())
}
