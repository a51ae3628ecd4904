//! The storage client: chunk reads and writes over the data plane, with routing, retries,
//! checksums and in-flight bounds. Usable without a mount: the meta service uses it for file
//! lengths, truncation and chunk removal.
//!
//! - Writes ([`StorageClient::write_chunk`], [`StorageClient::truncate_chunk`]) go to the chain's
//!   head with the chain version the client knows. The data's CRC32C is computed once and is both
//!   the update's end-to-end checksum and the frame's payload CRC. Each update holds one write
//!   channel for all its attempts: the wire client id `client_id << 16 | channel` plus the
//!   channel's sequence number identify it, so a retried update is applied once (the replicas'
//!   dedup table), and a channel never has two updates in flight (what the replicas require).
//! - Reads ([`StorageClient::read_chunks`]) are spread over the serving replicas of each chain
//!   (per chunk, rotating per call), grouped per storage address into batch reads bounded in
//!   items and bytes, sent in parallel; every item's CRC32C is checked against the replica's.
//!   A missing chunk reads as [`ReadData::Absent`] (a hole); a chunk that is not committed on
//!   one replica is read again from the tail.
//! - Every failure goes through [`crate::retry::disposition`]: stale routing refreshes the cache
//!   (waiting for the chain version the replica reported), transient errors back off, and the
//!   operation gives up after the retry bounds with R3FS-5005 RetriesExhausted.

use crate::config::ClientConfig;
use crate::conn::{Destination, Pool, PoolSettings, REQUEST_OVERHEAD_BYTES, Reply, TransportError};
use crate::error::{ClientError, ClientResult};
use crate::plan::{FileMap, fill_piece};
use crate::retry::{Attempts, Disposition, Op, disposition};
use crate::routing::{RoutingCache, RoutingSnapshot};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, InodeId, Layout, TargetId,
};
use r3fs_wire::{
    BatchReadItem, BatchReadRequest, FrameLimits, Message, Outcome, QueryLastChunkRequest,
    RemoveChunksRequest, UpdateKind, UpdateReply, UpdateRequest,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bits of the wire client id that number the channel.
pub const CHANNEL_BITS: u32 = 16;
const _: () = assert!(crate::config::WRITE_CHANNELS_MAX <= 1 << CHANNEL_BITS);

pub use r3fs_wire::LastChunk;

/// One committed update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateDone {
    pub commit_version: ChunkVersion,
    /// The chunk's length after the update.
    pub chunk_length: u32,
    /// CRC32C of the whole chunk after the update.
    pub chunk_crc32c: u32,
}

/// One byte range of one chunk to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRead {
    pub chain: ChainId,
    pub chunk: ChunkId,
    pub offset: u32,
    pub length: u32,
}

/// What a read of one range found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// The bytes the chunk holds from the offset on: fewer than asked when the chunk ends
    /// inside the range (the rest is a hole). A view of the receive buffer, not a copy.
    Data(Bytes),
    /// No such chunk: the whole range is a hole.
    Absent,
}

/// Counters of the client's data-plane work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Read items sent to each target (how the load spread).
    pub read_items_by_target: BTreeMap<TargetId, u64>,
    /// Updates sent to each target (always a head).
    pub updates_by_target: BTreeMap<TargetId, u64>,
    /// Failures that were retried.
    pub retries: u64,
    /// Item checksum mismatches detected on reads.
    pub checksum_mismatches: u64,
    /// Read bytes the connection received straight into the caller's buffer.
    pub read_bytes_in_place: u64,
    /// Read bytes received into a reply buffer and then copied to the caller (replies that did
    /// not fit the caller's buffer, or reads through [`StorageClient::read_chunks_with`]).
    pub read_bytes_copied: u64,
}

/// What one read item found, inside the client.
enum Got {
    /// The bytes, in a reply buffer.
    Data(Bytes),
    /// This many bytes were received into the item's destination segment and verified.
    InPlace(u32),
    /// No such chunk.
    Absent,
}

/// The caller's buffer cut into one segment per read item (pointer, length): where replies are
/// received in place. Disjoint ranges of one `&mut [u8]` that the reading call borrows until it
/// returns; see [`Destination`] for how they are lent to a connection.
struct Segments(Vec<(*mut u8, usize)>);

// SAFETY: the segments are disjoint parts of a `&mut [u8]` borrowed by the call that owns this
// value; they are only accessed from that call (and, while a request is armed, by the
// connection's reader under the destination's lock), never concurrently on the same bytes.
unsafe impl Send for Segments {}
// SAFETY: as above; shared references are only used to read the pointers.
unsafe impl Sync for Segments {}

impl Segments {
    /// Segment `i` (a method, so closures capture the whole `Segments`, which is Send + Sync).
    fn get(&self, i: usize) -> (*mut u8, usize) {
        self.0[i]
    }
}

/// Why one attempt failed.
#[derive(Clone, Debug)]
struct Failure {
    code: ErrorCode,
    detail: String,
    /// The target that answered or could not be reached.
    target: Option<TargetId>,
    /// The replica's chain version, when it refused ours as stale.
    current_chain_version: Option<ChainVersion>,
}

impl Failure {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Failure { code, detail: detail.into(), target: None, current_chain_version: None }
    }

    fn at(mut self, target: TargetId) -> Self {
        self.target = Some(target);
        self
    }

    fn transport(error: TransportError, target: TargetId) -> Self {
        Failure::new(error.code, error.detail).at(target)
    }
}

/// The write channels: at most one update in flight per channel, sequence numbers growing per
/// channel.
#[derive(Debug)]
struct Channels {
    client_id: u64,
    free: Mutex<Vec<(u32, u64)>>,
    available: Arc<Semaphore>,
}

struct ChannelLease<'a> {
    channels: &'a Channels,
    channel: u32,
    sequence: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ChannelLease<'_> {
    fn drop(&mut self) {
        self.channels
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.channel, self.sequence + 1));
    }
}

impl ChannelLease<'_> {
    fn wire_client_id(&self) -> ClientId {
        ClientId(self.channels.client_id << CHANNEL_BITS | u64::from(self.channel))
    }
}

impl Channels {
    fn new(client_id: u64, count: u32) -> Channels {
        Channels {
            client_id,
            // Popped from the end: channel 0 first.
            free: Mutex::new((0..count).rev().map(|c| (c, 1)).collect()),
            available: Arc::new(Semaphore::new(count as usize)),
        }
    }

    async fn acquire(&self) -> ChannelLease<'_> {
        let permit = self
            .available
            .clone()
            .acquire_owned()
            .await
            .expect("the channel semaphore is never closed");
        let (channel, sequence) = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .expect("a permit guarantees a free channel");
        ChannelLease { channels: self, channel, sequence, _permit: permit }
    }
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    routing: Arc<RoutingCache>,
    pool: Pool,
    inflight: Arc<Semaphore>,
    inflight_bytes_max: u32,
    channels: Channels,
    client_id: ClientId,
    rotor: AtomicU64,
    stats: Mutex<StorageStats>,
}

/// The data-plane client; cheap to clone (clones share connections, channels and bounds).
#[derive(Clone, Debug)]
pub struct StorageClient {
    inner: Arc<Inner>,
}

/// A random client id that fits the wire id's high bits.
pub(crate) fn random_client_id() -> u64 {
    loop {
        let id = rand::random::<u64>() >> CHANNEL_BITS;
        if id != 0 {
            return id;
        }
    }
}

impl StorageClient {
    /// A client over `routing`. `config.client_id` 0 picks a random id.
    pub fn new(config: ClientConfig, routing: Arc<RoutingCache>) -> ClientResult<StorageClient> {
        config.validate().map_err(ClientError::InvalidConfig)?;
        let client_id = match config.client_id {
            0 => random_client_id(),
            id if id >> (64 - CHANNEL_BITS) == 0 => id,
            id => {
                return Err(ClientError::InvalidConfig(vec![format!(
                    "client_id {id} must fit in {} bits",
                    64 - CHANNEL_BITS
                )]));
            }
        };
        let s = &config.storage;
        // validate() bounds both windows by u32::MAX.
        let window_bytes = u32::try_from(s.inflight_bytes_per_connection_max).unwrap_or(u32::MAX);
        let inflight_bytes_max = u32::try_from(s.inflight_bytes_max).unwrap_or(u32::MAX);
        let pool = Pool::new(PoolSettings {
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            connections_per_address: s.connections_per_address as usize,
            window_bytes,
            limits: FrameLimits::DEFAULT,
        });
        let channels = Channels::new(client_id, s.write_channels);
        Ok(StorageClient {
            inner: Arc::new(Inner {
                pool,
                inflight: Arc::new(Semaphore::new(inflight_bytes_max as usize)),
                inflight_bytes_max,
                channels,
                client_id: ClientId(client_id),
                rotor: AtomicU64::new(rand::random()),
                stats: Mutex::new(StorageStats::default()),
                routing,
                config,
            }),
        })
    }

    /// This client's id (the wire ids are `id << 16 | channel`).
    pub fn client_id(&self) -> ClientId {
        self.inner.client_id
    }

    pub fn routing(&self) -> &Arc<RoutingCache> {
        &self.inner.routing
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> StorageStats {
        self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Live connections to a storage address.
    pub fn connection_count(&self, address: SocketAddr) -> usize {
        self.inner.pool.connection_count(address)
    }

    fn count(&self, f: impl FnOnce(&mut StorageStats)) {
        f(&mut self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One request to one target: takes the global window, a connection, sends, waits. The
    /// reply payload may be received into `destination`, which is disarmed when this returns
    /// or is dropped, whatever happened.
    #[allow(clippy::too_many_arguments)]
    async fn call_into(
        &self,
        snapshot: &RoutingSnapshot,
        target: TargetId,
        message: &Message,
        payload: &[u8],
        payload_crc32c: u32,
        reply_bytes: u64,
        destination: Option<Arc<Destination>>,
    ) -> Result<(Reply, OwnedSemaphorePermit), Failure> {
        // Disarmed on every way out, also when no connection was reached.
        let _disarm = destination.clone().map(DisarmGuard);
        let address = snapshot.address_of(target).ok_or_else(|| {
            Failure::new(
                ErrorCode::TargetNotServing,
                format!("routing has no data address for target {target}"),
            )
            .at(target)
        })?;
        let window = (payload.len() as u64 + reply_bytes + u64::from(REQUEST_OVERHEAD_BYTES))
            .min(u64::from(u32::MAX)) as u32;
        let timeout = self.inner.config.request_timeout();
        let global = self
            .inner
            .inflight
            .clone()
            .acquire_many_owned(window.min(self.inner.inflight_bytes_max));
        let global = match tokio::time::timeout(timeout, global).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(Failure::new(ErrorCode::Internal, "in-flight semaphore closed"));
            }
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::Timeout,
                    "waiting for the client's in-flight byte window",
                )
                .at(target));
            }
        };
        let connection = self
            .inner
            .pool
            .get(address, window)
            .await
            .map_err(|e| Failure::transport(e, target))?;
        let reply = connection
            .call_into(message, payload, payload_crc32c, window, timeout, destination)
            .await
            .map_err(|e| Failure::transport(e, target))?;
        Ok((reply, global))
    }

    /// Runs `attempt` until it succeeds, a failure is final, or the retry bounds are reached.
    /// Between attempts it refreshes routing as the failure asks, and remembers which targets
    /// to avoid (for reads).
    async fn with_retries<T>(
        &self,
        op: Op,
        chain: ChainId,
        mut attempt: impl AsyncFnMut(&RoutingSnapshot, &[TargetId]) -> Result<T, Failure>,
    ) -> ClientResult<T> {
        let mut attempts = Attempts::new(&self.inner.config.retry);
        let mut avoid: Vec<TargetId> = Vec::new();
        loop {
            let snapshot = self.inner.routing.snapshot();
            let failure = match attempt(&snapshot, &avoid).await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let d = disposition(failure.code, op);
            if !d.retry {
                return Err(ClientError::Failed { code: failure.code, detail: failure.detail });
            }
            self.count(|s| s.retries += 1);
            if d.other_replica
                && let Some(target) = failure.target
                && !avoid.contains(&target)
                && avoid.len() < 16
            {
                avoid.push(target);
            }
            self.react(chain, &snapshot, &failure, d, &attempts).await;
            attempts.failed(failure.code, &failure.detail).await?;
        }
    }

    /// Brings the routing up to date after a failure that says it is stale.
    async fn react(
        &self,
        chain: ChainId,
        snapshot: &RoutingSnapshot,
        failure: &Failure,
        d: Disposition,
        attempts: &Attempts<'_>,
    ) {
        let routing = &self.inner.routing;
        if failure.code == ErrorCode::StaleChainVersion
            && let Some(theirs) = failure.current_chain_version
        {
            if snapshot.chain_version(chain).is_none_or(|ours| theirs > ours) {
                routing.wait_for_chain_version(chain, theirs, attempts.remaining()).await;
            }
            // Otherwise the replica is behind us: it will catch up; the backoff waits for it.
            return;
        }
        if d.refresh_routing
            && let Err(error) = routing.refresh().await
        {
            tracing::debug!(%chain, "routing refresh failed: {error}");
        }
    }

    // ---- updates ------------------------------------------------------------------------

    /// Writes `data` at `offset` of `chunk` (created with capacity `chunk_size` if new) through
    /// the head of `chain`.
    pub async fn write_chunk(
        &self,
        chain: ChainId,
        chunk: ChunkId,
        chunk_size: u32,
        offset: u32,
        data: &[u8],
    ) -> ClientResult<UpdateDone> {
        let length = u32::try_from(data.len())
            .ok()
            .filter(|&len| u64::from(offset) + u64::from(len) <= u64::from(chunk_size));
        let Some(length) = length else {
            return Err(ClientError::failed(
                ErrorCode::InvalidArgument,
                format!(
                    "write of {} bytes at {offset} does not fit a chunk of {chunk_size}",
                    data.len()
                ),
            ));
        };
        if length == 0 {
            return Err(ClientError::failed(ErrorCode::InvalidArgument, "empty chunk write"));
        }
        let done =
            self.update(chain, chunk, UpdateKind::Write, offset, length, chunk_size, data).await?;
        done.ok_or_else(|| {
            ClientError::failed(ErrorCode::Internal, "a write answered ChunkNotFound")
        })
    }

    /// Sets `chunk`'s length to `length` bytes: the replicas drop the bytes past it, and extend a
    /// shorter (or create an absent) chunk with zeros, which reads the same as the hole it was.
    /// `Ok(None)`: a replica answered that the chunk does not exist.
    pub async fn truncate_chunk(
        &self,
        chain: ChainId,
        chunk: ChunkId,
        chunk_size: u32,
        length: u32,
    ) -> ClientResult<Option<UpdateDone>> {
        if length > chunk_size {
            return Err(ClientError::failed(
                ErrorCode::InvalidArgument,
                format!("truncate to {length} past a chunk of {chunk_size}"),
            ));
        }
        self.update(chain, chunk, UpdateKind::Truncate, 0, length, chunk_size, &[]).await
    }

    /// Removes `chunk`. `Ok(None)`: it did not exist.
    pub async fn remove_chunk(
        &self,
        chain: ChainId,
        chunk: ChunkId,
        chunk_size: u32,
    ) -> ClientResult<Option<UpdateDone>> {
        self.update(chain, chunk, UpdateKind::Remove, 0, 0, chunk_size, &[]).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        chain: ChainId,
        chunk: ChunkId,
        kind: UpdateKind,
        offset: u32,
        length: u32,
        chunk_size: u32,
        data: &[u8],
    ) -> ClientResult<Option<UpdateDone>> {
        // Computed once: the end-to-end checksum and the frame's payload CRC of every attempt.
        let crc = if data.is_empty() { 0 } else { crc32c::crc32c(data) };
        let lease = self.inner.channels.acquire().await;
        let (client_id, sequence) = (lease.wire_client_id(), lease.sequence);
        let result = self
            .with_retries(
                Op::Update,
                chain,
                async |snapshot: &RoutingSnapshot, _avoid: &[TargetId]| {
                    let route = snapshot.chain(chain).ok_or_else(|| {
                        Failure::new(
                            ErrorCode::ChainNotFound,
                            format!("routing has no chain {chain}"),
                        )
                    })?;
                    let head = route.head().ok_or_else(|| {
                        Failure::new(
                            ErrorCode::TargetNotServing,
                            format!("chain {chain} has no serving head"),
                        )
                    })?;
                    let request = UpdateRequest {
                        kind,
                        chain_id: chain,
                        chain_version: route.version,
                        chunk_id: chunk,
                        offset,
                        length,
                        chunk_size,
                        update_version: ChunkVersion(0),
                        client_id,
                        sequence,
                        payload_crc32c: crc,
                        sending_target_id: None,
                    };
                    self.count(|s| *s.updates_by_target.entry(head).or_default() += 1);
                    let (reply, _window) = self
                        .call_into(snapshot, head, &Message::from(request), data, crc, 0, None)
                        .await?;
                    let Message::UpdateReply(reply) = reply.frame.message else {
                        return Err(Failure::new(
                            ErrorCode::MalformedFrame,
                            "update answered with another kind",
                        )
                        .at(head));
                    };
                    update_outcome(reply, kind, head)
                },
            )
            .await;
        drop(lease);
        result
    }

    // ---- reads --------------------------------------------------------------------------

    /// Reads every range; `Vec` in request order. Prefer [`StorageClient::read_chunks_with`] for
    /// large reads: it hands each batch over as it arrives.
    pub async fn read_chunks(&self, items: &[ChunkRead]) -> ClientResult<Vec<ReadData>> {
        let mut out: Vec<Option<ReadData>> = vec![None; items.len()];
        self.read_chunks_with(items, |index, data| out[index] = Some(data)).await?;
        out.into_iter()
            .enumerate()
            .map(|(i, data)| {
                data.ok_or_else(|| {
                    ClientError::failed(
                        ErrorCode::Internal,
                        format!("read item {i} was never answered"),
                    )
                })
            })
            .collect()
    }

    /// Reads every range and calls `sink(index, data)` exactly once per item, as replies arrive
    /// (so reply buffers are released batch by batch).
    pub async fn read_chunks_with(
        &self,
        items: &[ChunkRead],
        mut sink: impl FnMut(usize, ReadData),
    ) -> ClientResult<()> {
        self.read_items(items, None, |i, got| match got {
            Got::Data(bytes) => sink(i, ReadData::Data(bytes)),
            Got::Absent => sink(i, ReadData::Absent),
            Got::InPlace(_) => unreachable!("no destination was given"),
        })
        .await
    }

    /// Reads every range and calls `sink(index, got)` exactly once per item, as replies arrive.
    /// With `segments` (one per item, at least the item's length), replies are received into
    /// them when they fit ([`Got::InPlace`]); a segment's bytes are then only reported after
    /// their CRC32C checked out, and on an error return the segments hold unspecified bytes.
    async fn read_items(
        &self,
        items: &[ChunkRead],
        segments: Option<&Segments>,
        mut sink: impl FnMut(usize, Got),
    ) -> ClientResult<()> {
        if let Some(segments) = segments {
            assert_eq!(segments.0.len(), items.len(), "one segment per item");
            for (item, &(_, len)) in items.iter().zip(&segments.0) {
                assert!(item.length as usize <= len, "a segment holds its item");
            }
        }
        for item in items {
            if u64::from(item.offset) + u64::from(item.length)
                > u64::from(r3fs_types::layout::CHUNK_SIZE_MAX)
            {
                return Err(ClientError::failed(
                    ErrorCode::InvalidArgument,
                    format!("read {item:?} lies past any chunk"),
                ));
            }
        }
        let mut pending: Vec<usize> = (0..items.len()).filter(|&i| items[i].length > 0).collect();
        for i in (0..items.len()).filter(|&i| items[i].length == 0) {
            sink(i, Got::Data(Bytes::new()));
        }
        let mut attempts = Attempts::new(&self.inner.config.retry);
        // Per item: targets that failed it, and whether to read it from the tail.
        let mut avoid: HashMap<usize, Vec<TargetId>> = HashMap::new();
        let mut from_tail: Vec<bool> = vec![false; items.len()];
        let rotor = self.inner.rotor.fetch_add(1, Ordering::Relaxed);
        while !pending.is_empty() {
            let snapshot = self.inner.routing.snapshot();
            let mut failures: Vec<(usize, Failure)> = Vec::new();
            let batches = self.plan_reads(
                &snapshot,
                items,
                &pending,
                &avoid,
                &from_tail,
                rotor,
                &mut failures,
            );
            let mut running: FuturesUnordered<_> = batches
                .into_iter()
                .map(|batch| {
                    let snapshot = &snapshot;
                    async move {
                        let result = self.read_batch(snapshot, items, &batch, segments).await;
                        (batch, result)
                    }
                })
                .collect();
            while let Some((batch, result)) = running.next().await {
                match result {
                    Ok((reply, _windows)) => {
                        self.deliver_batch(items, &batch, reply, segments, &mut sink, &mut failures)
                    }
                    Err(failure) => failures.extend(
                        batch.entries.iter().map(|&(i, target)| (i, failure.clone().at(target))),
                    ),
                }
            }
            drop(running);
            if failures.is_empty() {
                return Ok(());
            }
            // Any final failure ends the read; otherwise adjust and retry the failed items.
            if let Some((_, failure)) =
                failures.iter().find(|(_, f)| !disposition(f.code, Op::Read).retry)
            {
                return Err(ClientError::Failed {
                    code: failure.code,
                    detail: failure.detail.clone(),
                });
            }
            self.count(|s| s.retries += failures.len() as u64);
            let mut refresh: Option<(ChainId, Failure, Disposition)> = None;
            pending = Vec::with_capacity(failures.len());
            for (i, failure) in &failures {
                let d = disposition(failure.code, Op::Read);
                if failure.code == ErrorCode::ChunkNotCommitted {
                    from_tail[*i] = true;
                }
                if d.other_replica
                    && let Some(target) = failure.target
                {
                    let avoided = avoid.entry(*i).or_default();
                    if !avoided.contains(&target) && avoided.len() < 16 {
                        avoided.push(target);
                    }
                }
                if (d.refresh_routing || failure.current_chain_version.is_some())
                    && refresh.is_none()
                {
                    refresh = Some((items[*i].chain, failure.clone(), d));
                }
                pending.push(*i);
            }
            if let Some((chain, failure, d)) = refresh {
                self.react(chain, &snapshot, &failure, d, &attempts).await;
            }
            let (_, last) = &failures[failures.len() - 1];
            attempts.failed(last.code, &last.detail).await?;
        }
        Ok(())
    }

    /// Chooses a replica per item and groups the items into batches per storage address.
    #[allow(clippy::too_many_arguments)]
    fn plan_reads(
        &self,
        snapshot: &RoutingSnapshot,
        items: &[ChunkRead],
        pending: &[usize],
        avoid: &HashMap<usize, Vec<TargetId>>,
        from_tail: &[bool],
        rotor: u64,
        failures: &mut Vec<(usize, Failure)>,
    ) -> Vec<ReadBatch> {
        let s = &self.inner.config.storage;
        let mut by_address: BTreeMap<SocketAddr, Vec<ReadBatch>> = BTreeMap::new();
        // Items seen per chain in this round: consecutive items of one chain go to consecutive
        // replicas (a file's chunks on one chain are `stripe_size` apart, so the chunk index
        // alone would send them all to one replica).
        let mut per_chain: HashMap<ChainId, u64> = HashMap::new();
        for &i in pending {
            let item = &items[i];
            let Some(route) = snapshot.chain(item.chain) else {
                failures.push((
                    i,
                    Failure::new(
                        ErrorCode::ChainNotFound,
                        format!("routing has no chain {}", item.chain),
                    ),
                ));
                continue;
            };
            let serving: Vec<TargetId> = route.serving().collect();
            let avoided = avoid.get(&i).map(Vec::as_slice).unwrap_or(&[]);
            let candidates: Vec<TargetId> =
                serving.iter().copied().filter(|t| !avoided.contains(t)).collect();
            let candidates = if candidates.is_empty() { serving } else { candidates };
            let target = if from_tail[i] {
                // The last serving replica not yet failed for this item (the tail commits
                // first), else the tail itself.
                candidates.last().copied().or_else(|| route.tail())
            } else if candidates.is_empty() {
                None
            } else {
                // Spread: each call starts at another replica, then rotates per item.
                let seen = per_chain.entry(item.chain).or_default();
                let choice = rotor.wrapping_add(*seen) % candidates.len() as u64;
                *seen += 1;
                Some(candidates[choice as usize])
            };
            let Some(target) = target else {
                failures.push((
                    i,
                    Failure::new(
                        ErrorCode::TargetNotServing,
                        format!("chain {} has no serving target", item.chain),
                    ),
                ));
                continue;
            };
            let Some(address) = snapshot.address_of(target) else {
                failures.push((
                    i,
                    Failure::new(
                        ErrorCode::TargetNotServing,
                        format!("routing has no data address for target {target}"),
                    )
                    .at(target),
                ));
                continue;
            };
            let batches = by_address.entry(address).or_default();
            let full = batches.last().is_none_or(|b| {
                b.entries.len() >= s.batch_read_items_max as usize
                    || b.bytes + u64::from(item.length) > s.batch_read_bytes_max
            });
            if full {
                batches.push(ReadBatch { address, entries: Vec::new(), bytes: 0 });
            }
            let batch = batches.last_mut().expect("just pushed");
            batch.entries.push((i, target));
            batch.bytes += u64::from(item.length);
        }
        by_address.into_values().flatten().collect()
    }

    async fn read_batch(
        &self,
        snapshot: &RoutingSnapshot,
        items: &[ChunkRead],
        batch: &ReadBatch,
        segments: Option<&Segments>,
    ) -> Result<(Reply, OwnedSemaphorePermit), Failure> {
        let request = BatchReadRequest {
            items: batch
                .entries
                .iter()
                .map(|&(i, _)| BatchReadItem {
                    chain_id: items[i].chain,
                    chunk_id: items[i].chunk,
                    offset: items[i].offset,
                    length: items[i].length,
                })
                .collect(),
        };
        self.count(|s| {
            for &(_, target) in &batch.entries {
                *s.read_items_by_target.entry(target).or_default() += 1;
            }
        });
        // Every entry of a batch shares the address; any of its targets names the connection.
        let target = batch.entries[0].1;
        // SAFETY: the batch's items are distinct, so their segments are disjoint parts of the
        // caller's buffer; no other request of this read is armed over them (an item is sent
        // again only after its failed request returned, which disarmed it), and the caller
        // touches a segment only once its item was delivered or the read ended.
        let destination = segments.map(|segments| unsafe {
            Destination::new(batch.entries.iter().map(|&(i, _)| segments.get(i)).collect())
        });
        self.call_into(snapshot, target, &Message::from(request), &[], 0, batch.bytes, destination)
            .await
    }

    /// Checks a batch reply item by item and hands good data to the sink.
    fn deliver_batch(
        &self,
        items: &[ChunkRead],
        batch: &ReadBatch,
        reply: Reply,
        segments: Option<&Segments>,
        sink: &mut impl FnMut(usize, Got),
        failures: &mut Vec<(usize, Failure)>,
    ) {
        let payload = reply.frame.payload.clone();
        // In place: the bytes are in the segments, and `call_into` has disarmed the destination,
        // so they are this read's own again.
        let in_place = match segments {
            Some(segments) if reply.in_place => Some(segments),
            _ => None,
        };
        let Message::BatchReadReply(answer) = reply.frame.message else {
            let failure =
                Failure::new(ErrorCode::MalformedFrame, "batch read answered with another kind");
            failures.extend(batch.entries.iter().map(|&(i, t)| (i, failure.clone().at(t))));
            return;
        };
        if let Some(code) = answer.outcome.error() {
            let failure = Failure::new(code, format!("batch read refused by {}", batch.address));
            failures.extend(batch.entries.iter().map(|&(i, t)| (i, failure.clone().at(t))));
            return;
        }
        if answer.items.len() != batch.entries.len() {
            let failure = Failure::new(
                ErrorCode::MalformedFrame,
                format!(
                    "{} answered {} items to a batch of {}",
                    batch.address,
                    answer.items.len(),
                    batch.entries.len()
                ),
            );
            failures.extend(batch.entries.iter().map(|&(i, t)| (i, failure.clone().at(t))));
            return;
        }
        // The frame CRC was verified over exactly these bytes; when the replica's item CRCs
        // combine to it, every item is verified without a second pass over the data.
        let verified = item_crcs_give(&answer.items, reply.frame.payload_crc32c);
        for ((item, range), &(i, target)) in answer.item_ranges().zip(&batch.entries) {
            match item.outcome {
                Outcome::Ok if item.length > items[i].length => failures.push((
                    i,
                    Failure::new(
                        ErrorCode::MalformedFrame,
                        format!(
                            "target {target} returned {} bytes for {}",
                            item.length, items[i].length
                        ),
                    )
                    .at(target),
                )),
                Outcome::Ok => {
                    let data: &[u8] = match in_place {
                        // SAFETY: the segment holds at least `item.length` bytes (checked
                        // above and by the reader), and nothing else touches it now.
                        Some(segments) => unsafe {
                            std::slice::from_raw_parts(segments.get(i).0, item.length as usize)
                        },
                        None => &payload[range.clone()],
                    };
                    let actual = if verified && item.length > 0 {
                        item.crc32c
                    } else {
                        crc32c::crc32c(data)
                    };
                    if actual != item.crc32c {
                        self.count(|s| s.checksum_mismatches += 1);
                        failures.push((
                            i,
                            Failure::new(
                                ErrorCode::ChecksumMismatch,
                                format!("{} of target {target}: CRC32C {actual:#010x}, replica says {:#010x}", items[i].chunk, item.crc32c),
                            )
                            .at(target),
                        ));
                    } else if in_place.is_some() {
                        self.count(|s| s.read_bytes_in_place += u64::from(item.length));
                        sink(i, Got::InPlace(item.length));
                    } else {
                        self.count(|s| s.read_bytes_copied += u64::from(item.length));
                        sink(i, Got::Data(payload.slice(range)));
                    }
                }
                Outcome::Failed(ErrorCode::ChunkNotFound) => sink(i, Got::Absent),
                Outcome::Failed(code) => {
                    failures.push((
                        i,
                        Failure::new(
                            code,
                            format!("{} refused by target {target}", items[i].chunk),
                        )
                        .at(target),
                    ));
                }
            }
        }
    }

    // ---- chain-wide requests ------------------------------------------------------------

    /// The last chunk of `inode` with index in `indexes` on `chain`, asked of the chain's tail
    /// (the replica that commits first), else another serving replica.
    pub async fn query_last_chunk(
        &self,
        chain: ChainId,
        inode: InodeId,
        indexes: Range<u64>,
    ) -> ClientResult<Option<LastChunk>> {
        self.with_retries(
            Op::Read,
            chain,
            async |snapshot: &RoutingSnapshot, avoid: &[TargetId]| {
                let route = snapshot.chain(chain).ok_or_else(|| {
                    Failure::new(ErrorCode::ChainNotFound, format!("routing has no chain {chain}"))
                })?;
                let target = route
                    .tail()
                    .filter(|t| !avoid.contains(t))
                    .or_else(|| route.serving().find(|t| !avoid.contains(t)))
                    .or_else(|| route.tail())
                    .ok_or_else(|| {
                        Failure::new(
                            ErrorCode::TargetNotServing,
                            format!("chain {chain} has no serving target"),
                        )
                    })?;
                let request = QueryLastChunkRequest {
                    chain_id: chain,
                    inode,
                    chunk_index_begin: indexes.start,
                    chunk_index_end: indexes.end,
                };
                let (reply, _window) = self
                    .call_into(snapshot, target, &Message::from(request), &[], 0, 0, None)
                    .await?;
                let Message::QueryLastChunkReply(reply) = reply.frame.message else {
                    return Err(Failure::new(
                        ErrorCode::MalformedFrame,
                        "last-chunk query answered with another kind",
                    )
                    .at(target));
                };
                match reply.outcome {
                    Outcome::Ok => Ok(reply.last_chunk),
                    Outcome::Failed(ErrorCode::ChunkNotFound) => Ok(None),
                    Outcome::Failed(code) => Err(Failure::new(
                        code,
                        format!("last-chunk query refused by target {target}"),
                    )
                    .at(target)),
                }
            },
        )
        .await
    }

    /// Removes the chunks of `inode` with index in `indexes` from `chain`, through its head,
    /// `remove_chunks_limit` at a time. Returns how many were removed.
    pub async fn remove_chunks(
        &self,
        chain: ChainId,
        inode: InodeId,
        indexes: Range<u64>,
    ) -> ClientResult<u64> {
        let limit = self.inner.config.storage.remove_chunks_limit;
        let mut removed = 0u64;
        // Each round removes up to `limit` chunks or reports that none remain; a server that
        // keeps saying "more" without removing anything is stuck.
        let mut idle_rounds = 0u32;
        loop {
            let (count, more) = self
                .with_retries(
                    Op::Update,
                    chain,
                    async |snapshot: &RoutingSnapshot, _avoid: &[TargetId]| {
                        let route = snapshot.chain(chain).ok_or_else(|| {
                            Failure::new(
                                ErrorCode::ChainNotFound,
                                format!("routing has no chain {chain}"),
                            )
                        })?;
                        let head = route.head().ok_or_else(|| {
                            Failure::new(
                                ErrorCode::TargetNotServing,
                                format!("chain {chain} has no serving head"),
                            )
                        })?;
                        let request = RemoveChunksRequest {
                            chain_id: chain,
                            chain_version: route.version,
                            inode,
                            chunk_index_begin: indexes.start,
                            chunk_index_end: indexes.end,
                            limit,
                        };
                        let (reply, _window) = self
                            .call_into(snapshot, head, &Message::from(request), &[], 0, 0, None)
                            .await?;
                        let Message::RemoveChunksReply(reply) = reply.frame.message else {
                            return Err(Failure::new(
                                ErrorCode::MalformedFrame,
                                "remove answered with another kind",
                            )
                            .at(head));
                        };
                        match reply.outcome {
                            Outcome::Ok => Ok((reply.removed_count, reply.more)),
                            Outcome::Failed(code) => Err(Failure {
                                code,
                                detail: format!(
                                    "remove of {inode} chunks refused by target {head}"
                                ),
                                target: Some(head),
                                current_chain_version: reply.current_chain_version,
                            }),
                        }
                    },
                )
                .await?;
            removed += u64::from(count);
            if !more {
                return Ok(removed);
            }
            idle_rounds = if count == 0 { idle_rounds + 1 } else { 0 };
            if idle_rounds >= self.inner.config.retry.attempts_max {
                return Err(ClientError::failed(
                    ErrorCode::Internal,
                    format!(
                        "chain {chain} keeps reporting more chunks of {inode} without removing any"
                    ),
                ));
            }
        }
    }

    // ---- file-level operations (a layout resolved against the routing) ------------------

    /// Resolves `layout` against its chain table, refreshing the routing once if the table is
    /// not known yet.
    pub async fn file_map(&self, inode: InodeId, layout: &Layout) -> ClientResult<FileMap> {
        let key = (layout.chain_table_id, layout.chain_table_version);
        let mut snapshot = self.inner.routing.snapshot();
        if snapshot.chain_table(key.0, key.1).is_none() {
            snapshot = self.inner.routing.refresh().await?;
        }
        let table = snapshot.chain_table(key.0, key.1).ok_or_else(|| {
            ClientError::failed(
                ErrorCode::ChainTableNotFound,
                format!("chain table {} {} is not in the routing", key.0, key.1),
            )
        })?;
        FileMap::new(inode, layout.clone(), table).map_err(|e| {
            ClientError::failed(ErrorCode::InvalidArgument, format!("layout of {inode}: {e}"))
        })
    }

    /// Writes `data` at file offset `offset`: one update per chunk piece, up to
    /// `parallel_chunks_max` at once, across the file's chains.
    pub async fn write(&self, map: &FileMap, offset: u64, data: &[u8]) -> ClientResult<()> {
        if crate::plan::range_end(offset, data.len()).is_none() {
            return Err(ClientError::failed(
                ErrorCode::FileTooLarge,
                "write past the largest offset",
            ));
        }
        let parallel = self.inner.config.storage.parallel_chunks_max as usize;
        futures::stream::iter(map.plan(offset, data.len()))
            .map(|p| {
                self.write_chunk(
                    p.chain,
                    p.chunk,
                    map.chunk_size(),
                    p.piece.offset_in_chunk,
                    &data[p.piece.buf_range()],
                )
            })
            .buffer_unordered(parallel)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// Reads file offset `offset` into `buf`; holes (missing chunks, bytes past a chunk's end)
    /// read as zeros. Does not know the file length: the file API clips to it.
    pub async fn read(&self, map: &FileMap, offset: u64, buf: &mut [u8]) -> ClientResult<()> {
        if crate::plan::range_end(offset, buf.len()).is_none() {
            return Err(ClientError::failed(
                ErrorCode::InvalidArgument,
                "read past the largest offset",
            ));
        }
        let pieces: Vec<_> = map.plan(offset, buf.len()).collect();
        let items: Vec<ChunkRead> = pieces
            .iter()
            .map(|p| ChunkRead {
                chain: p.chain,
                chunk: p.chunk,
                offset: p.piece.offset_in_chunk,
                length: p.piece.len,
            })
            .collect();
        // Replies are received straight into `buf` where they fit (see `read_items`); from here
        // on `buf` is only reached through these disjoint segments.
        let segments = {
            let base = buf.as_mut_ptr();
            Segments(
                pieces
                    .iter()
                    .map(|p| {
                        let range = p.piece.buf_range();
                        // SAFETY: the plan's pieces lie inside `buf` (plan.rs, property-tested).
                        (unsafe { base.add(range.start) }, range.len())
                    })
                    .collect(),
            )
        };
        self.read_items(&items, Some(&segments), |i, got| {
            let (ptr, len) = segments.get(i);
            // SAFETY: item `i` is delivered once, after every request over its segment was
            // disarmed; the segment is a disjoint part of `buf`.
            let out = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            match got {
                Got::Data(bytes) => fill_piece(out, Some(&bytes)),
                Got::InPlace(n) => out[n as usize..].fill(0),
                Got::Absent => fill_piece(out, None),
            }
        })
        .await
    }

    /// For each stripe slot, the last chunk of the file on that slot's chain.
    pub async fn query_last_chunks(&self, map: &FileMap) -> ClientResult<Vec<Option<LastChunk>>> {
        let inode = map.inode();
        futures::future::try_join_all(
            map.chains().iter().map(|&chain| self.query_last_chunk(chain, inode, 0..u64::MAX)),
        )
        .await
    }

    /// The length the file's chunks imply (the end of the furthest last chunk).
    pub async fn file_length(&self, map: &FileMap) -> ClientResult<u64> {
        let last = self.query_last_chunks(map).await?;
        let last: Vec<_> = last.iter().map(|c| c.map(|c| (c.index, c.length))).collect();
        Ok(crate::plan::length_from_last_chunks(map.chunk_size(), &last))
    }

    /// Sets chunk `index` of the file to `length` bytes (see [`StorageClient::truncate_chunk`]).
    pub async fn truncate_file_chunk(
        &self,
        map: &FileMap,
        index: u64,
        length: u32,
    ) -> ClientResult<()> {
        self.truncate_chunk(map.chain_of(index), map.chunk_id(index), map.chunk_size(), length)
            .await
            .map(|_| ())
    }

    /// Removes the file's chunks with index in `indexes` from every chain of its stripe;
    /// returns how many were removed. `u64::MAX` as the end means "to the last chunk".
    pub async fn remove_file_chunks(
        &self,
        map: &FileMap,
        indexes: Range<u64>,
    ) -> ClientResult<u64> {
        let inode = map.inode();
        let counts = futures::future::try_join_all(
            map.chains().iter().map(|&chain| self.remove_chunks(chain, inode, indexes.clone())),
        )
        .await?;
        Ok(counts.iter().sum())
    }
}

/// Smallest item worth a `crc32c_combine` (O(log n) 32x32 GF(2) matrix squarings, about
/// 1-10 µs) rather than a second hardware CRC32C pass over its bytes (about 0.1 ns a byte, in
/// cache right after the receive). Combining every 4 KiB item cost 27% of the ring server's CPU
/// on 4 KiB random reads (docs/benchmarks.md, "Native path profile").
const COMBINE_MIN_BYTES: u32 = 64 << 10;

/// Whether the ok items' CRC32Cs, in order, give `payload_crc32c` (the frame CRC, verified over
/// exactly the items' bytes back to back), so each item's bytes are what its replica read. A
/// lone item needs no combining: the payload is its bytes. False when checking that way would
/// cost more than recomputing each item's CRC (an item after the first is under
/// `COMBINE_MIN_BYTES`): the caller then recomputes.
fn item_crcs_give(items: &[r3fs_wire::BatchReadReplyItem], payload_crc32c: u32) -> bool {
    let mut data = items.iter().filter(|item| item.outcome.is_ok() && item.length > 0);
    let Some(first) = data.next() else { return payload_crc32c == 0 };
    let mut crc = first.crc32c;
    for item in data {
        if item.length < COMBINE_MIN_BYTES {
            return false;
        }
        crc = crc32c::crc32c_combine(crc, item.crc32c, item.length as usize);
    }
    crc == payload_crc32c
}

/// Disarms a destination when dropped.
struct DisarmGuard(Arc<Destination>);

impl Drop for DisarmGuard {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

/// Items of one batch read: all to one address.
#[derive(Debug)]
struct ReadBatch {
    address: SocketAddr,
    /// (item index, target chosen for it).
    entries: Vec<(usize, TargetId)>,
    bytes: u64,
}

/// The update reply as data: success, "no such chunk" for truncate/remove, or a failure.
fn update_outcome(
    reply: UpdateReply,
    kind: UpdateKind,
    head: TargetId,
) -> Result<Option<UpdateDone>, Failure> {
    match reply.outcome {
        Outcome::Ok => Ok(Some(UpdateDone {
            commit_version: reply.commit_version,
            chunk_length: reply.chunk_length,
            chunk_crc32c: reply.chunk_crc32c,
        })),
        Outcome::Failed(ErrorCode::ChunkNotFound)
            if matches!(kind, UpdateKind::Truncate | UpdateKind::Remove) =>
        {
            Ok(None)
        }
        Outcome::Failed(code) => Err(Failure {
            code,
            detail: format!("{kind:?} refused by head {head}"),
            target: Some(head),
            current_chain_version: reply.current_chain_version,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channels_hand_out_distinct_ids_and_growing_sequences() {
        let channels = Channels::new(5, 2);
        {
            let a = channels.acquire().await;
            let b = channels.acquire().await;
            assert_ne!(a.wire_client_id(), b.wire_client_id());
            assert_eq!(a.wire_client_id(), ClientId(5 << CHANNEL_BITS));
            assert_eq!((a.sequence, b.sequence), (1, 1));
            // A third waits for one to come back.
            let third = tokio::time::timeout(Duration::from_millis(20), channels.acquire()).await;
            assert!(third.is_err(), "only two channels");
            let a_id = a.wire_client_id();
            drop(a);
            let c = channels.acquire().await;
            assert_eq!((c.wire_client_id(), c.sequence), (a_id, 2), "the channel's next sequence");
        }
    }

    /// The batch-read shortcut: item CRCs combined in order equal the CRC of the items' bytes
    /// back to back (empty and failed items contribute nothing).
    #[test]
    fn item_crcs_combine_to_the_payload_crc() {
        let parts: [&[u8]; 4] = [b"abc", b"", b"defgh", &[0u8; 4096]];
        let combined =
            parts.iter().fold(0, |crc, p| crc32c::crc32c_combine(crc, crc32c::crc32c(p), p.len()));
        assert_eq!(combined, crc32c::crc32c(&parts.concat()));
        let wrong = crc32c::crc32c_combine(crc32c::crc32c(b"abc"), crc32c::crc32c(b"x"), 1);
        assert_ne!(wrong, crc32c::crc32c(b"abcy"));
    }

    #[test]
    fn item_crcs_give_the_payload_crc_only_when_they_do() {
        use r3fs_wire::BatchReadReplyItem;
        let item = |data: &[u8]| BatchReadReplyItem {
            outcome: Outcome::Ok,
            length: data.len() as u32,
            crc32c: crc32c::crc32c(data),
        };
        let failed = BatchReadReplyItem {
            outcome: Outcome::Failed(ErrorCode::ChunkNotFound),
            length: 0,
            crc32c: 0,
        };
        let big_a = vec![1u8; COMBINE_MIN_BYTES as usize];
        let big_b = vec![2u8; COMBINE_MIN_BYTES as usize + 3];
        // A lone item (around failed and empty ones): its CRC is the payload's.
        let lone = [failed, item(b""), item(b"4 KiB of data"), failed];
        assert!(item_crcs_give(&lone, crc32c::crc32c(b"4 KiB of data")));
        assert!(!item_crcs_give(&lone, crc32c::crc32c(b"4 KiB of dat@")));
        // Big items combine.
        let both = [item(&big_a), failed, item(&big_b)];
        assert!(item_crcs_give(&both, crc32c::crc32c(&[&big_a[..], &big_b[..]].concat())));
        assert!(!item_crcs_give(&both, crc32c::crc32c(&[&big_b[..], &big_a[..]].concat())));
        // A small item after the first: recomputing is cheaper, so no verdict by combining.
        let small = [item(&big_a), item(b"xyz")];
        assert!(!item_crcs_give(&small, crc32c::crc32c(&[&big_a[..], b"xyz"].concat())));
        // Nothing but failures: an empty payload.
        assert!(item_crcs_give(&[failed], 0));
        assert!(!item_crcs_give(&[failed], 7));
    }

    #[test]
    fn update_outcomes() {
        let ok = UpdateReply {
            outcome: Outcome::Ok,
            commit_version: ChunkVersion(3),
            chunk_length: 9,
            ..Default::default()
        };
        assert_eq!(
            update_outcome(ok, UpdateKind::Write, TargetId(1)).expect("ok").map(|d| d.chunk_length),
            Some(9)
        );
        let missing = UpdateReply {
            outcome: Outcome::Failed(ErrorCode::ChunkNotFound),
            ..Default::default()
        };
        assert_eq!(
            update_outcome(missing.clone(), UpdateKind::Truncate, TargetId(1)).expect("absent"),
            None
        );
        assert!(update_outcome(missing, UpdateKind::Write, TargetId(1)).is_err());
        let stale = UpdateReply {
            outcome: Outcome::Failed(ErrorCode::StaleChainVersion),
            current_chain_version: Some(ChainVersion(4)),
            ..Default::default()
        };
        let failure = update_outcome(stale, UpdateKind::Write, TargetId(1)).expect_err("stale");
        assert_eq!(failure.current_chain_version, Some(ChainVersion(4)));
        assert_eq!(failure.target, Some(TargetId(1)));
    }
}
