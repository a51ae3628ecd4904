//! An in-process storage cluster that speaks r3fs-wire over loopback TCP, with fault injection:
//! the client's data plane is tested against real sockets and real frames, with faults a real
//! daemon cannot be made to produce on demand (a reply lost after the update applied, a corrupt
//! read item, a chunk that is not committed on one replica, a replica ahead of mgmtd).
//!
//! It is a test double of the storage daemon, not a model of CRAQ: a chain's replicas share one
//! chunk map (replication is instant), and the head applies updates. What it checks is the
//! protocol the client must follow: writes to the head with the current chain version, reads
//! to serving replicas, (client id, sequence) idempotency, one update in flight per channel.

use bytes::{Bytes, BytesMut};
use r3fs_client::{ClientResult, RoutingSource};
use r3fs_rpc::mgmtd as pb;
use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ErrorCode, TargetId};
use r3fs_wire::{
    BatchReadReply, BatchReadReplyItem, Decoded, Frame, FrameLimits, LastChunk, Message, Outcome,
    PayloadInfo, QueryLastChunkReply, RemoveChunksReply, UpdateKind, UpdateReply, decode_frame,
    encode_head,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const REPLICAS: u32 = 3;

/// Target id of replica `replica` (0-based, head first) of chain `chain`; it lives on node
/// `replica + 1`.
pub fn target_of(chain: u32, replica: u32) -> TargetId {
    TargetId(u64::from(chain) * 10 + u64::from(replica))
}

#[derive(Debug, Default)]
pub struct Chain {
    pub version: u32,
    /// Head first.
    pub targets: Vec<(TargetId, bool)>,
    pub chunks: HashMap<ChunkId, Vec<u8>>,
    pub commit_versions: HashMap<ChunkId, u64>,
}

impl Chain {
    fn head(&self) -> Option<TargetId> {
        self.targets.iter().find(|(_, serving)| *serving).map(|(t, _)| *t)
    }
}

/// Faults the next requests meet.
#[derive(Debug, Default)]
pub struct Faults {
    /// Codes the next updates are refused with, one each.
    pub update_refusals: VecDeque<ErrorCode>,
    /// The next this-many updates are applied, then the connection is closed without a reply.
    pub drop_after_apply: u32,
    /// Reads served by this target carry a wrong item CRC.
    pub corrupt_reads_on: Option<TargetId>,
    /// Reads served by this target answer ChunkNotCommitted.
    pub not_committed_on: Option<TargetId>,
    /// Every update is refused with this code.
    pub refuse_all_updates: Option<ErrorCode>,
    /// Each request waits up to this many ms (random) before its reply: replies leave out of
    /// order.
    pub reply_jitter_ms: u64,
}

#[derive(Debug, Default)]
pub struct State {
    pub chains: BTreeMap<ChainId, Chain>,
    pub faults: Faults,
    /// (wire client id, sequence) of every update applied.
    pub applied: HashSet<(u64, u64)>,
    /// Updates answered from the dedup set instead of being applied again.
    pub duplicates: u64,
    /// Channels with an update in progress: must never hold two.
    pub channels_busy: HashSet<u64>,
    pub channel_conflicts: u64,
    pub read_items_by_target: BTreeMap<TargetId, u64>,
    /// Request + reply payload bytes currently between receipt and reply, per connection.
    pub inflight_bytes: HashMap<u64, u64>,
    pub inflight_bytes_max_seen: u64,
    pub routing_version: u64,
}

#[derive(Debug)]
pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
    pub addresses: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeCluster {
    /// `chains` chains of [`REPLICAS`] targets each over [`REPLICAS`] nodes (one listener each).
    pub async fn start(chains: u32) -> FakeCluster {
        let mut state = State { routing_version: 1, ..Default::default() };
        for c in 1..=chains {
            state.chains.insert(
                ChainId(c),
                Chain {
                    version: 1,
                    targets: (0..REPLICAS).map(|r| (target_of(c, r), true)).collect(),
                    ..Default::default()
                },
            );
        }
        let state = Arc::new(Mutex::new(state));
        let mut addresses = Vec::new();
        let mut tasks = Vec::new();
        for node in 1..=REPLICAS {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            addresses.push(listener.local_addr().expect("local address"));
            tasks.push(tokio::spawn(serve(listener, node, state.clone())));
        }
        FakeCluster { state, addresses, tasks }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }

    /// The routing info mgmtd would publish for the cluster as it is now.
    pub fn routing_info(&self) -> pb::RoutingInfo {
        let state = self.lock();
        let nodes = self
            .addresses
            .iter()
            .enumerate()
            .map(|(i, address)| pb::NodeInfo {
                node_id: i as u32 + 1,
                node_type: pb::NodeType::Storage as i32,
                addresses: vec![pb::ServiceAddress {
                    name: "data/0".into(),
                    address: address.to_string(),
                }],
                ..Default::default()
            })
            .collect();
        let chains = state
            .chains
            .iter()
            .map(|(id, chain)| {
                let mut targets: Vec<_> = chain.targets.iter().filter(|(_, s)| *s).collect();
                targets.extend(chain.targets.iter().filter(|(_, s)| !*s));
                pb::Chain {
                    chain_id: id.0,
                    chain_version: chain.version,
                    targets: targets
                        .into_iter()
                        .map(|(t, serving)| pb::ChainTarget {
                            target_id: t.0,
                            public_state: if *serving {
                                pb::PublicTargetState::Serving as i32
                            } else {
                                pb::PublicTargetState::Offline as i32
                            },
                        })
                        .collect(),
                }
            })
            .collect();
        let targets = state
            .chains
            .iter()
            .flat_map(|(id, chain)| {
                chain.targets.iter().map(move |(t, _)| pb::TargetInfo {
                    target_id: t.0,
                    node_id: (t.0 % 10) as u32 + 1,
                    chain_id: id.0,
                    ..Default::default()
                })
            })
            .collect();
        pb::RoutingInfo {
            routing_version: state.routing_version,
            nodes,
            chain_tables: vec![pb::ChainTable {
                table_id: 1,
                version: 1,
                chain_ids: state.chains.keys().map(|c| c.0).collect(),
                description: String::new(),
            }],
            chains,
            targets,
        }
    }

    /// Takes a replica offline (as mgmtd would): bumps the chain and routing versions.
    pub fn set_serving(&self, target: TargetId, serving: bool) {
        let mut state = self.lock();
        let chain = state.chains.get_mut(&ChainId((target.0 / 10) as u32)).expect("chain");
        for entry in &mut chain.targets {
            if entry.0 == target {
                entry.1 = serving;
            }
        }
        chain.version += 1;
        state.routing_version += 1;
    }

    pub fn bump_chain_version(&self, chain: ChainId) {
        let mut state = self.lock();
        state.chains.get_mut(&chain).expect("chain").version += 1;
        state.routing_version += 1;
    }
}

/// A routing source whose version the test publishes from the fake cluster by hand, so the
/// client can be made to hold stale routing.
#[derive(Debug, Default)]
pub struct ManualRouting {
    info: Mutex<pb::RoutingInfo>,
    changed: tokio::sync::Notify,
}

impl ManualRouting {
    pub fn new(info: pb::RoutingInfo) -> Arc<ManualRouting> {
        Arc::new(ManualRouting { info: Mutex::new(info), changed: tokio::sync::Notify::new() })
    }

    pub fn publish(&self, info: pb::RoutingInfo) {
        *self.info.lock().expect("routing") = info;
        self.changed.notify_waiters();
    }
}

#[async_trait::async_trait]
impl RoutingSource for ManualRouting {
    async fn fetch(&self, known: u64, wait: Duration) -> ClientResult<Option<pb::RoutingInfo>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            {
                let info = self.info.lock().expect("routing");
                if info.routing_version > known {
                    return Ok(Some(info.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }
}

async fn serve(listener: TcpListener, node: u32, state: Arc<Mutex<State>>) {
    let mut connection_id = u64::from(node) << 32;
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        connection_id += 1;
        tokio::spawn(connection(stream, node, connection_id, state.clone()));
    }
}

enum Answer {
    Reply(Message, Bytes),
    /// Close the connection without answering.
    Drop,
}

async fn connection(stream: tokio::net::TcpStream, node: u32, id: u64, state: Arc<Mutex<State>>) {
    let (mut read, write) = stream.into_split();
    let write = Arc::new(tokio::sync::Mutex::new(write));
    let mut buf = BytesMut::with_capacity(1 << 20);
    loop {
        match decode_frame(&mut buf, &FrameLimits::DEFAULT) {
            Ok(Decoded::Complete(frame)) => {
                let state = state.clone();
                let write = write.clone();
                tokio::spawn(async move {
                    let bytes = frame.payload.len() as u64 + reply_bytes(&frame.message);
                    let channel = match &frame.message {
                        Message::UpdateRequest(request) => Some(request.client_id.0),
                        _ => None,
                    };
                    let jitter = {
                        let mut s = state.lock().expect("state");
                        if let Some(channel) = channel
                            && !s.channels_busy.insert(channel)
                        {
                            s.channel_conflicts += 1;
                        }
                        let now = s.inflight_bytes.entry(id).or_default();
                        *now += bytes;
                        let now = *now;
                        s.inflight_bytes_max_seen = s.inflight_bytes_max_seen.max(now);
                        s.faults.reply_jitter_ms
                    };
                    if jitter > 0 {
                        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % jitter))
                            .await;
                    }
                    let answer = handle(&state, node, &frame);
                    let mut w = write.lock().await;
                    {
                        // Before the reply leaves: the client may reuse the channel once it has it.
                        let mut s = state.lock().expect("state");
                        *s.inflight_bytes.entry(id).or_default() -= bytes;
                        if let Some(channel) = channel {
                            s.channels_busy.remove(&channel);
                        }
                    }
                    match answer {
                        Answer::Reply(message, payload) => {
                            let mut head = BytesMut::new();
                            let info = PayloadInfo::of(&payload).expect("payload fits");
                            encode_head(
                                &mut head,
                                frame.request_id,
                                &message,
                                info,
                                &FrameLimits::DEFAULT,
                            )
                            .expect("fake replies encode");
                            let _ = w.write_all(&head).await;
                            let _ = w.write_all(&payload).await;
                        }
                        Answer::Drop => {
                            let _ = w.shutdown().await;
                        }
                    }
                });
                continue;
            }
            Ok(Decoded::NeedMore { needed_len }) => {
                buf.reserve(needed_len.saturating_sub(buf.len()))
            }
            Err(error) => panic!("the client sent a bad frame: {error}"),
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn reply_bytes(message: &Message) -> u64 {
    match message {
        Message::BatchReadRequest(r) => r.total_len(),
        _ => 0,
    }
}

/// The target of `chain` on `node`, if any.
fn local_target(chain: &Chain, node: u32) -> Option<(TargetId, bool)> {
    chain.targets.iter().copied().find(|(t, _)| (t.0 % 10) as u32 + 1 == node)
}

fn handle(state: &Mutex<State>, node: u32, frame: &Frame) -> Answer {
    let mut s = state.lock().expect("state");
    let s = &mut *s;
    match &frame.message {
        Message::UpdateRequest(request) => {
            let refuse = |code: ErrorCode, current: Option<u32>| {
                Answer::Reply(
                    UpdateReply {
                        outcome: Outcome::Failed(code),
                        current_chain_version: current.map(ChainVersion),
                        ..Default::default()
                    }
                    .into(),
                    Bytes::new(),
                )
            };
            if let Some(code) = s.faults.refuse_all_updates {
                return refuse(code, None);
            }
            if let Some(code) = s.faults.update_refusals.pop_front() {
                return refuse(code, None);
            }
            let Some(chain) = s.chains.get_mut(&request.chain_id) else {
                return refuse(ErrorCode::ChainNotFound, None);
            };
            if request.chain_version.0 != chain.version {
                return refuse(ErrorCode::StaleChainVersion, Some(chain.version));
            }
            match local_target(chain, node) {
                Some((target, true)) if chain.head() == Some(target) => {}
                Some((_, true)) => return refuse(ErrorCode::NotHead, None),
                _ => return refuse(ErrorCode::TargetNotServing, None),
            }
            let tag = (request.client_id.0, request.sequence);
            let duplicate = !s.applied.insert(tag);
            let chunk = chain.chunks.get(&request.chunk_id).cloned();
            let outcome = if duplicate {
                s.duplicates += 1;
                Outcome::Ok
            } else {
                let mut data = chunk.unwrap_or_default();
                match request.kind {
                    UpdateKind::Write => {
                        let end = (request.offset + request.length) as usize;
                        if data.len() < end {
                            data.resize(end, 0);
                        }
                        data[request.offset as usize..end].copy_from_slice(&frame.payload);
                        chain.chunks.insert(request.chunk_id, data);
                        Outcome::Ok
                    }
                    // As the replicas do: cut, or extend (create) with zeros.
                    UpdateKind::Truncate => {
                        data.resize(request.length as usize, 0);
                        chain.chunks.insert(request.chunk_id, data);
                        Outcome::Ok
                    }
                    UpdateKind::Remove if chain.chunks.remove(&request.chunk_id).is_some() => {
                        Outcome::Ok
                    }
                    UpdateKind::Remove => Outcome::Failed(ErrorCode::ChunkNotFound),
                    other => panic!("the client sent a {other:?} update"),
                }
            };
            if outcome.is_ok() && !duplicate {
                *chain.commit_versions.entry(request.chunk_id).or_default() += 1;
            }
            let data = chain.chunks.get(&request.chunk_id);
            let reply = UpdateReply {
                outcome,
                current_chain_version: None,
                commit_version: ChunkVersion(
                    chain.commit_versions.get(&request.chunk_id).copied().unwrap_or(0),
                ),
                chunk_length: if outcome.is_ok() { data.map_or(0, |d| d.len() as u32) } else { 0 },
                chunk_crc32c: if outcome.is_ok() {
                    data.map_or(0, |d| crc32c::crc32c(d))
                } else {
                    0
                },
            };
            if s.faults.drop_after_apply > 0 {
                s.faults.drop_after_apply -= 1;
                return Answer::Drop;
            }
            Answer::Reply(reply.into(), Bytes::new())
        }
        Message::BatchReadRequest(request) => {
            let mut items = Vec::new();
            let mut payload = BytesMut::new();
            for item in &request.items {
                let chain = s.chains.get(&item.chain_id);
                let target = chain.and_then(|c| local_target(c, node));
                let outcome = match (chain, target) {
                    (Some(chain), Some((target, true))) => {
                        *s.read_items_by_target.entry(target).or_default() += 1;
                        if s.faults.not_committed_on == Some(target) {
                            Err(ErrorCode::ChunkNotCommitted)
                        } else {
                            match chain.chunks.get(&item.chunk_id) {
                                None => Err(ErrorCode::ChunkNotFound),
                                Some(data) => {
                                    let start = (item.offset as usize).min(data.len());
                                    let end = (start + item.length as usize).min(data.len());
                                    let mut crc = crc32c::crc32c(&data[start..end]);
                                    if s.faults.corrupt_reads_on == Some(target) {
                                        crc ^= 1;
                                    }
                                    payload.extend_from_slice(&data[start..end]);
                                    Ok(((end - start) as u32, crc))
                                }
                            }
                        }
                    }
                    _ => Err(ErrorCode::TargetNotServing),
                };
                items.push(match outcome {
                    Ok((length, crc32c)) => {
                        BatchReadReplyItem { outcome: Outcome::Ok, length, crc32c }
                    }
                    Err(code) => {
                        BatchReadReplyItem { outcome: Outcome::Failed(code), length: 0, crc32c: 0 }
                    }
                });
            }
            Answer::Reply(BatchReadReply { outcome: Outcome::Ok, items }.into(), payload.freeze())
        }
        Message::QueryLastChunkRequest(request) => {
            let last = s.chains.get(&request.chain_id).and_then(|chain| {
                chain
                    .chunks
                    .iter()
                    .filter(|(id, _)| {
                        id.inode == request.inode
                            && (request.chunk_index_begin..request.chunk_index_end)
                                .contains(&id.index)
                    })
                    .max_by_key(|(id, _)| id.index)
                    .map(|(id, data)| LastChunk { index: id.index, length: data.len() as u32 })
            });
            Answer::Reply(
                QueryLastChunkReply { outcome: Outcome::Ok, last_chunk: last }.into(),
                Bytes::new(),
            )
        }
        Message::RemoveChunksRequest(request) => {
            let Some(chain) = s.chains.get_mut(&request.chain_id) else {
                return Answer::Reply(
                    RemoveChunksReply {
                        outcome: Outcome::Failed(ErrorCode::ChainNotFound),
                        ..Default::default()
                    }
                    .into(),
                    Bytes::new(),
                );
            };
            if request.chain_version.0 != chain.version {
                return Answer::Reply(
                    RemoveChunksReply {
                        outcome: Outcome::Failed(ErrorCode::StaleChainVersion),
                        current_chain_version: Some(ChainVersion(chain.version)),
                        ..Default::default()
                    }
                    .into(),
                    Bytes::new(),
                );
            }
            let mut doomed: Vec<ChunkId> = chain
                .chunks
                .keys()
                .filter(|id| {
                    id.inode == request.inode
                        && (request.chunk_index_begin..request.chunk_index_end).contains(&id.index)
                })
                .copied()
                .collect();
            doomed.sort();
            let more = doomed.len() > request.limit as usize;
            doomed.truncate(request.limit as usize);
            for id in &doomed {
                chain.chunks.remove(id);
            }
            Answer::Reply(
                RemoveChunksReply {
                    outcome: Outcome::Ok,
                    current_chain_version: None,
                    removed_count: doomed.len() as u32,
                    more,
                }
                .into(),
                Bytes::new(),
            )
        }
        other => panic!("unexpected request {other:?} (request id {})", frame.request_id.0),
    }
}
