//! What the meta service needs from storage, behind a trait: the last chunk of a file on each of
//! its chains (to compute the exact length), cutting one chunk (truncate) and removing ranges of
//! chunks (truncate, garbage collection).
//!
//! [`ClientChunkStorage`] is the production implementation: the client library's
//! [`StorageClient`] over the storage data plane, with routing from mgmtd. It connects on first
//! use, so the daemon starts (and serves the namespace) while mgmtd or storage is still coming
//! up; until then the operations that need storage fail with a retryable error and the collector
//! keeps its queue. Unit tests use `tests::InMemoryChunkStorageForTests`.

use crate::error::{MetaError, MetaResult};
use async_trait::async_trait;
use r3fs_client::{ClientConfig, ClientError, FileMap, StorageClient};
use r3fs_types::{ErrorCode, InodeId, Layout};
use std::ops::Range;
use std::sync::Arc;

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

    /// Makes chunk `index` of `inode` hold no bytes past `length`. A shorter or absent chunk may be
    /// left alone or extended with zeros (storage does the latter); both read the same.
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

/// Storage requests queued for the worker thread at most; callers wait beyond it.
pub const STORAGE_REQUESTS_QUEUED_MAX: usize = 1024;
/// Storage requests the worker runs at once; the queue holds the rest. (The client bounds its
/// in-flight bytes and connections on its own.)
pub const STORAGE_REQUESTS_INFLIGHT_MAX: usize = 256;

/// [`ChunkStorage`] over the data plane. Every call goes through the client's retry loop
/// (stale routing, uncommitted chunks, dropped connections, busy targets), bounded by
/// `config.retry`: attempts, doubling jittered backoff and total elapsed time.
///
/// The client runs on a thread of its own (a current-thread runtime): the client library's
/// futures cannot be proven `Send` by today's compiler (its retry loop takes an async closure
/// over borrowed arguments), and meta's gRPC handlers run on a multi-threaded runtime. Requests
/// and replies cross over channels with owned data; dropping this value stops the thread.
#[derive(Debug)]
pub struct ClientChunkStorage {
    requests: tokio::sync::mpsc::Sender<Request>,
}

#[derive(Debug)]
enum Request {
    QueryLastChunks {
        inode: InodeId,
        layout: Layout,
        reply: tokio::sync::oneshot::Sender<MetaResult<Vec<Option<LastChunk>>>>,
    },
    TruncateChunk {
        inode: InodeId,
        layout: Layout,
        index: u64,
        length: u32,
        reply: tokio::sync::oneshot::Sender<MetaResult<()>>,
    },
    RemoveChunks {
        inode: InodeId,
        layout: Layout,
        indexes: Range<u64>,
        reply: tokio::sync::oneshot::Sender<MetaResult<u64>>,
    },
}

impl ClientChunkStorage {
    /// Starts the worker thread, which connects with `config` (mgmtd addresses, the meta
    /// service's token, retry and data-plane bounds) on the first request. Fails if `config` is
    /// invalid or the thread cannot start.
    pub fn new(config: ClientConfig) -> MetaResult<Self> {
        config.validate().map_err(|errors| {
            MetaError::new(
                ErrorCode::InvalidConfig,
                format!("storage client: {}", errors.join("; ")),
            )
        })?;
        let (requests, receiver) = tokio::sync::mpsc::channel(STORAGE_REQUESTS_QUEUED_MAX);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MetaError::internal(format!("start the storage client runtime: {e}")))?;
        std::thread::Builder::new()
            .name("r3fs-meta-storage".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, serve(config, receiver));
            })
            .map_err(|e| MetaError::internal(format!("start the storage client thread: {e}")))?;
        Ok(Self { requests })
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(tokio::sync::oneshot::Sender<MetaResult<T>>) -> Request,
    ) -> MetaResult<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || MetaError::new(ErrorCode::Unavailable, "the storage client stopped");
        self.requests.send(request(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The worker: one local task per request (at most `STORAGE_REQUESTS_INFLIGHT_MAX` at once), all
/// sharing one lazily connected client.
async fn serve(config: ClientConfig, mut requests: tokio::sync::mpsc::Receiver<Request>) {
    let client = std::rc::Rc::new(Connector { config, client: tokio::sync::OnceCell::new() });
    let inflight = Arc::new(tokio::sync::Semaphore::new(STORAGE_REQUESTS_INFLIGHT_MAX));
    while let Some(request) = requests.recv().await {
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let client = client.clone();
        tokio::task::spawn_local(async move {
            client.handle(request).await;
            drop(permit);
        });
    }
}

#[derive(Debug)]
struct Connector {
    config: ClientConfig,
    client: tokio::sync::OnceCell<StorageClient>,
}

impl Connector {
    /// The client, connecting (fetching routing from mgmtd) on first use. A failed connection is
    /// not remembered: the next request tries again.
    async fn client(&self) -> MetaResult<&StorageClient> {
        self.client
            .get_or_try_init(|| async {
                let client = StorageClient::connect(self.config.clone()).await?;
                tracing::info!(client_id = %client.client_id(), "storage client connected");
                Ok::<_, ClientError>(client)
            })
            .await
            .map_err(|e| from_client_error("connect the storage client", &e))
    }

    async fn map(&self, inode: InodeId, layout: &Layout) -> MetaResult<(&StorageClient, FileMap)> {
        let client = self.client().await?;
        let map = client
            .file_map(inode, layout)
            .await
            .map_err(|e| from_client_error(&format!("resolve the layout of {inode}"), &e))?;
        Ok((client, map))
    }

    async fn handle(&self, request: Request) {
        // A caller that gave up dropped its receiver; its answer is not needed.
        match request {
            Request::QueryLastChunks { inode, layout, reply } => {
                let _ = reply.send(self.query_last_chunks(inode, &layout).await);
            }
            Request::TruncateChunk { inode, layout, index, length, reply } => {
                let _ = reply.send(self.truncate_chunk(inode, &layout, index, length).await);
            }
            Request::RemoveChunks { inode, layout, indexes, reply } => {
                let _ = reply.send(self.remove_chunks(inode, &layout, indexes).await);
            }
        }
    }

    async fn query_last_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
    ) -> MetaResult<Vec<Option<LastChunk>>> {
        let (client, map) = self.map(inode, layout).await?;
        let last = client
            .query_last_chunks(&map)
            .await
            .map_err(|e| from_client_error(&format!("query the last chunks of {inode}"), &e))?;
        Ok(last
            .into_iter()
            .map(|c| c.map(|c| LastChunk { index: c.index, length: c.length }))
            .collect())
    }

    async fn truncate_chunk(
        &self,
        inode: InodeId,
        layout: &Layout,
        index: u64,
        length: u32,
    ) -> MetaResult<()> {
        let (client, map) = self.map(inode, layout).await?;
        client.truncate_file_chunk(&map, index, length).await.map_err(|e| {
            from_client_error(&format!("truncate chunk {index} of {inode} to {length}"), &e)
        })
    }

    async fn remove_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
        indexes: Range<u64>,
    ) -> MetaResult<u64> {
        let (client, map) = self.map(inode, layout).await?;
        client.remove_file_chunks(&map, indexes.clone()).await.map_err(|e| {
            from_client_error(
                &format!("remove chunks {}..{} of {inode}", indexes.start, indexes.end),
                &e,
            )
        })
    }
}

/// Keeps the client's stable code (its errno is what a caller of meta sees) and says what meta
/// was doing.
fn from_client_error(doing: &str, error: &ClientError) -> MetaError {
    MetaError::new(error.code(), format!("storage: {doing}: {error}"))
}

#[async_trait]
impl ChunkStorage for ClientChunkStorage {
    async fn query_last_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
    ) -> MetaResult<Vec<Option<LastChunk>>> {
        let layout = layout.clone();
        self.ask(|reply| Request::QueryLastChunks { inode, layout, reply }).await
    }

    async fn truncate_chunk(
        &self,
        inode: InodeId,
        layout: &Layout,
        index: u64,
        length: u32,
    ) -> MetaResult<()> {
        let layout = layout.clone();
        self.ask(|reply| Request::TruncateChunk { inode, layout, index, length, reply }).await
    }

    async fn remove_chunks(
        &self,
        inode: InodeId,
        layout: &Layout,
        indexes: Range<u64>,
    ) -> MetaResult<u64> {
        let layout = layout.clone();
        self.ask(|reply| Request::RemoveChunks { inode, layout, indexes, reply }).await
    }
}
