//! The conformance suite of the store: every test function runs against the in-memory KV and the
//! embedded (fjall) KV, through [`on_both_backends!`]. Storage is the in-memory
//! [`InMemoryChunkStorageForTests`], used only here, for the GC and length logic.

mod checks;
mod concurrency;
mod gc_length;
mod model;
mod namespace;
mod permissions;

use crate::cluster::{Capacity, ClusterInfo};
use crate::error::{MetaError, MetaResult};
use crate::fsck::fsck;
use crate::perm::User;
use crate::storage::{ChunkStorage, LastChunk};
use crate::store::{CreateArgs, Deps, MetaOptions, MetaStore, OpenFlags, Opened};
use async_trait::async_trait;
use r3fs_kv::retry::RetryPolicy;
use r3fs_kv::{Durability, FjallConfig, FjallKv, Kv, MemoryConfig, MemoryKv};
use r3fs_types::{ChainTableId, ChainTableVersion, ClientId, ErrorCode, InodeId, Layout};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Fjall,
}

/// Generates, for each listed `async fn name(backend: Backend)`, one test per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::tests::Backend::Memory).await
                }
            )*
        }
        mod on_fjall {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::tests::Backend::Fjall).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// A chunk store that keeps only chunk lengths, for tests of the GC and length logic.
#[derive(Debug, Default)]
pub(crate) struct InMemoryChunkStorageForTests {
    chunks: Mutex<BTreeMap<(InodeId, u64), u32>>,
    /// The next this many `remove_chunks` calls fail as an unreachable storage would.
    pub removals_to_fail: std::sync::atomic::AtomicU32,
}

impl InMemoryChunkStorageForTests {
    /// Simulates a client writing `[offset, offset + length)`.
    pub fn write(&self, inode: InodeId, layout: &Layout, offset: u64, length: u64) {
        let chunk_size = u64::from(layout.chunk_size);
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let mut position = offset;
        let end = offset + length;
        while position < end {
            let index = position / chunk_size;
            let chunk_end = ((index + 1) * chunk_size).min(end);
            let in_chunk = (chunk_end - index * chunk_size) as u32;
            let slot = chunks.entry((inode, index)).or_insert(0);
            *slot = (*slot).max(in_chunk);
            position = chunk_end;
        }
    }

    pub fn chunk_count(&self, inode: InodeId) -> usize {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        chunks.range((inode, 0)..=(inode, u64::MAX)).count()
    }
}

#[async_trait]
impl ChunkStorage for InMemoryChunkStorageForTests {
    async fn query_last_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
    ) -> MetaResult<Vec<Option<LastChunk>>> {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = vec![None; layout.stripe_size as usize];
        for (&(_, index), &length) in chunks.range((inode, 0)..=(inode, u64::MAX)) {
            last[layout.stripe_slot(index)] = Some(LastChunk { index, length });
        }
        Ok(last)
    }

    async fn truncate_chunk(
        &self,
        inode: InodeId,
        _layout: &Layout,
        index: u64,
        length: u32,
    ) -> MetaResult<()> {
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = chunks.get_mut(&(inode, index)) {
            *slot = (*slot).min(length);
        }
        Ok(())
    }

    async fn remove_chunks(
        &self,
        inode: InodeId,
        _layout: &Layout,
        indexes: Range<u64>,
    ) -> MetaResult<u64> {
        use std::sync::atomic::Ordering;
        let fail = self
            .removals_to_fail
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(MetaError::new(ErrorCode::RetriesExhausted, "storage unreachable (test)"));
        }
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let doomed: Vec<_> = chunks
            .range((inode, indexes.start)..=(inode, u64::MAX))
            .map(|(key, _)| *key)
            .filter(|(_, index)| indexes.end == u64::MAX || *index < indexes.end)
            .collect();
        for key in &doomed {
            chunks.remove(key);
        }
        Ok(doomed.len() as u64)
    }
}

/// Mgmtd's routing info as a test sees it: one chain table of 8 chains, fixed capacity.
#[derive(Debug)]
pub(crate) struct StaticClusterForTests;

#[async_trait]
impl ClusterInfo for StaticClusterForTests {
    async fn capacity(&self) -> MetaResult<Capacity> {
        Ok(Capacity { total_bytes: 1 << 40, used_bytes: 1 << 30 })
    }

    async fn chain_table_len(
        &self,
        table: ChainTableId,
        version: ChainTableVersion,
    ) -> MetaResult<Option<u32>> {
        Ok((table == ChainTableId(1) && version == ChainTableVersion(1)).then_some(8))
    }
}

/// A store over a fresh KV of one backend.
#[derive(Debug)]
pub(crate) struct Env {
    pub store: Arc<MetaStore>,
    pub kv: Arc<dyn Kv>,
    pub storage: Arc<InMemoryChunkStorageForTests>,
    pub clock: Arc<crate::clock::ManualClock>,
    /// Keeps the fjall directory alive as long as the store.
    pub _dir: Option<tempfile::TempDir>,
}

pub(crate) fn new_kv(backend: Backend) -> (Arc<dyn Kv>, Option<tempfile::TempDir>) {
    match backend {
        Backend::Memory => (Arc::new(MemoryKv::new(&MemoryConfig::default())), None),
        Backend::Fjall => {
            let dir = tempfile::tempdir().expect("create a temp dir for fjall");
            let config =
                FjallConfig { durability: Durability::Buffer, ..FjallConfig::at(dir.path()) };
            let kv = FjallKv::open(&config).expect("open fjall");
            (Arc::new(kv), Some(dir))
        }
    }
}

/// Retries generous enough for tests that make many tasks contend on one key.
pub(crate) fn test_retry() -> RetryPolicy {
    RetryPolicy { attempts_max: 200, backoff_initial_ms: 1, backoff_max_ms: 20 }
}

impl Env {
    pub async fn new(backend: Backend) -> Env {
        Self::with(backend, true, MetaOptions::default()).await
    }

    pub async fn with(backend: Backend, with_storage: bool, options: MetaOptions) -> Env {
        let (kv, dir) = new_kv(backend);
        let storage = Arc::new(InMemoryChunkStorageForTests::default());
        let clock = Arc::new(crate::clock::ManualClock::new(1_700_000_000_000_000_000));
        let deps = Deps {
            clock: clock.clone(),
            storage: with_storage.then(|| storage.clone() as Arc<dyn ChunkStorage>),
            cluster: Some(Arc::new(StaticClusterForTests)),
        };
        let store = MetaStore::new(kv.clone(), options, test_retry(), deps)
            .await
            .expect("open the meta store");
        Env { store: Arc::new(store), kv, storage, clock, _dir: dir }
    }

    /// Runs fsck and fails the test with every problem found.
    pub async fn assert_consistent(&self) {
        let report = fsck(&*self.kv).await.expect("fsck runs");
        assert!(report.is_clean(), "fsck found problems:\n{}", report.problems.join("\n"));
    }

    /// Runs collector passes until the queue is empty (bounded).
    pub async fn drain_gc(&self) {
        for _ in 0..100 {
            self.store.gc_pass().await.expect("gc pass");
            let report = fsck(&*self.kv).await.expect("fsck runs");
            if report.gc_entries == 0 {
                return;
            }
        }
        panic!("the collection queue did not drain");
    }
}

pub(crate) fn root() -> User {
    User::root()
}

#[track_caller]
pub(crate) fn ok<T>(result: MetaResult<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("unexpected error: {error}"),
    }
}

#[track_caller]
pub(crate) fn code<T: std::fmt::Debug>(result: MetaResult<T>) -> ErrorCode {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(MetaError { code, .. }) => code,
    }
}

#[track_caller]
pub(crate) fn errno<T: std::fmt::Debug>(result: MetaResult<T>) -> i32 {
    code(result).errno()
}

pub(crate) fn create_args(mode: u32) -> CreateArgs {
    CreateArgs { mode, exclusive: true, flags: OpenFlags::default(), client: ClientId(1) }
}

/// Creates a file (O_EXCL, not opened for writing) as `user`.
pub(crate) async fn touch(env: &Env, user: &User, path: &str) -> MetaResult<Opened> {
    env.store.create(user, InodeId::ROOT, path, &create_args(0o644)).await
}
