//! A tiny deterministic world for replicas: one seeded RNG picks the next event among message
//! deliveries (FIFO per link), storage completions (any order), routing deliveries, client
//! requests and replies, and clock ticks. Faults: dropped and corrupted messages, crashes (each
//! in-flight storage op of the crashed target lands or not), restarts. Clients retry like real
//! ones. After a run, `check` compares every replica and every client observation with a simple
//! model of the chunks.

#![allow(dead_code)] // each test file uses a subset

use bytes::Bytes;
use r3fs_craq::{
    ChainRouting, ChainTarget, ChunkStore, MemoryChunkStore, Output, PeerMessage, ReadOk,
    ReadOutcome, ReadRequest, Replica, ReplicaConfig, ReplyToken, StorageOp, Update, UpdateTag,
    WriteOk, WriteOutcome, WriteRequest, execute,
};
use r3fs_craq::{Input, OpId};
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, InodeId, PublicTargetState,
    TargetId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const CHAIN: ChainId = ChainId(1);
pub const CHUNK_SIZE_MAX: u32 = 256;

pub fn chunk(i: u64) -> ChunkId {
    ChunkId::new(InodeId(100), i)
}

pub fn target(i: u64) -> TargetId {
    TargetId(i)
}

pub fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        chunk_size_bytes_max: CHUNK_SIZE_MAX,
        chunks_active_max: 64,
        chunk_queue_len_max: 16,
        held_payload_bytes_max: 1 << 20,
        forward_retry_interval_ms: 50,
        list_page_len: 3, // small, so resync and resolve scans cross pages
        ..ReplicaConfig::default()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub drop_per_mille: u32,
    pub corrupt_per_mille: u32,
}

#[derive(Clone, Debug)]
pub enum ClientOp {
    Write { chunk: ChunkId, update: Update },
    Read { chunk: ChunkId, offset_bytes: u32, length_bytes: u32 },
}

#[derive(Debug)]
enum ChannelState {
    Idle,
    InFlight { token: ReplyToken, sent_at_ms: u64 },
    Backoff { until_ms: u64 },
}

#[derive(Debug)]
struct Channel {
    client: ClientId,
    channel: u32,
    next_seq: u64,
    script: VecDeque<ClientOp>,
    /// The op in progress with its tag (writes) and serial.
    current: Option<(ClientOp, Option<UpdateTag>, u64)>,
    state: ChannelState,
    serial: u64,
}

pub struct Node {
    pub replica: Replica,
    pub store: MemoryChunkStore,
    ops: Vec<(OpId, StorageOp)>,
    routing_inbox: VecDeque<ChainRouting>,
    pub alive: bool,
    pub sync_done: Option<ChainVersion>,
    pub fenced: bool,
}

#[derive(Clone, Debug)]
pub struct WriteRecord {
    pub tag: UpdateTag,
    pub chunk: ChunkId,
    pub update: Update,
    pub ok: WriteOk,
    pub acked_at_step: u64,
}

#[derive(Clone, Debug)]
pub enum ReadResult {
    Data(ReadOk),
    NotFound,
}

#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub chunk: ChunkId,
    pub offset_bytes: u32,
    pub length_bytes: u32,
    pub sent_at_step: u64,
    /// Newest version of this chunk any client observed (write ack or read) before this read
    /// was sent.
    pub acked_before: ChunkVersion,
    pub result: ReadResult,
}

/// What a client remembers about one attempt.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    idx: usize,
    serial: u64,
    tag: Option<UpdateTag>,
    sent_at_step: u64,
    acked_before: ChunkVersion,
}

pub struct Sim {
    pub seed: u64,
    pub rng: StdRng,
    pub nodes: BTreeMap<TargetId, Node>,
    pub routing: ChainRouting,
    pub faults: Faults,
    links: BTreeMap<(TargetId, TargetId), VecDeque<PeerMessage>>,
    to_replica: BTreeMap<TargetId, VecDeque<Input>>,
    to_client: BTreeMap<TargetId, VecDeque<Output>>,
    channels: Vec<Channel>,
    tokens: BTreeMap<ReplyToken, Attempt>,
    next_token: u64,
    pub now_ms: u64,
    pub step: u64,
    pub tick_ms: u64,
    pub client_timeout_ms: u64,
    pub writes: Vec<WriteRecord>,
    pub reads: Vec<ReadRecord>,
    pub refusals: BTreeMap<u16, u64>,
    pub corrupt_reports: u64,
    pub messages_dropped: u64,
    pub messages_corrupted: u64,
}

impl Sim {
    /// A chain of `replicas` serving targets (T1 head ... Tn tail).
    pub fn new(seed: u64, replicas: u64, faults: Faults) -> Sim {
        println!("sim seed {seed} replicas {replicas} faults {faults:?}");
        let routing = ChainRouting {
            chain: CHAIN,
            chain_version: ChainVersion(1),
            targets: (1..=replicas)
                .map(|t| ChainTarget { target: target(t), state: PublicTargetState::Serving })
                .collect(),
        };
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            nodes: BTreeMap::new(),
            routing: routing.clone(),
            faults,
            links: BTreeMap::new(),
            to_replica: BTreeMap::new(),
            to_client: BTreeMap::new(),
            channels: Vec::new(),
            tokens: BTreeMap::new(),
            next_token: 0,
            now_ms: 0,
            step: 0,
            tick_ms: 10,
            client_timeout_ms: 400,
            writes: Vec::new(),
            reads: Vec::new(),
            refusals: BTreeMap::new(),
            corrupt_reports: 0,
            messages_dropped: 0,
            messages_corrupted: 0,
        };
        for t in 1..=replicas {
            let node = Node {
                replica: Replica::new(replica_config(), target(t), CHAIN).expect("valid config"),
                store: MemoryChunkStore::new(CHUNK_SIZE_MAX, 1 << 30),
                ops: Vec::new(),
                routing_inbox: VecDeque::from([routing.clone()]),
                alive: true,
                sync_done: None,
                fenced: false,
            };
            sim.nodes.insert(target(t), node);
        }
        sim
    }

    /// Adds a client channel with a script of operations, run one at a time.
    pub fn add_channel(&mut self, client: u64, channel: u32, script: Vec<ClientOp>) {
        self.channels.push(Channel {
            client: ClientId(client),
            channel,
            next_seq: 1,
            script: script.into(),
            current: None,
            state: ChannelState::Idle,
            serial: 0,
        });
    }

    /// Mgmtd publishes a new chain version; each live replica learns it at a random later step.
    pub fn set_chain(&mut self, targets: &[(u64, PublicTargetState)]) {
        self.routing.chain_version = self.routing.chain_version.next();
        self.routing.targets =
            targets.iter().map(|&(t, state)| ChainTarget { target: target(t), state }).collect();
        println!("step {}: chain {:?}", self.step, self.routing);
        let routing = self.routing.clone();
        for node in self.nodes.values_mut().filter(|n| n.alive) {
            node.routing_inbox.push_back(routing.clone());
        }
    }

    /// Kills a target: messages to it are lost, each of its in-flight storage ops lands or not.
    pub fn crash(&mut self, t: u64) {
        let t = target(t);
        println!("step {}: crash {t}", self.step);
        let node = self.nodes.get_mut(&t).expect("known target");
        node.alive = false;
        for (_, op) in std::mem::take(&mut node.ops) {
            if self.rng.random_bool(0.5) {
                execute(&mut node.store, &op);
            }
        }
        node.routing_inbox.clear();
        self.links.retain(|(_, to), _| *to != t);
        self.to_replica.remove(&t);
        self.to_client.remove(&t);
    }

    /// Restarts a crashed target with its store and a fresh replica (all in-memory state lost).
    pub fn restart(&mut self, t: u64) {
        let t = target(t);
        println!("step {}: restart {t}", self.step);
        let routing = self.routing.clone();
        let node = self.nodes.get_mut(&t).expect("known target");
        node.replica = Replica::new(replica_config(), t, CHAIN).expect("valid config");
        node.alive = true;
        node.fenced = false;
        node.sync_done = None;
        node.routing_inbox.push_back(routing);
    }

    fn tag_for(&mut self, idx: usize) -> UpdateTag {
        let ch = &mut self.channels[idx];
        let tag = UpdateTag { client: ch.client, channel: ch.channel, seq: ch.next_seq };
        ch.next_seq += 1;
        tag
    }

    /// Sends (or re-sends) a channel's current op to the replica the routing points at.
    fn client_send(&mut self, idx: usize) {
        let Some((op, tag, serial)) = self.channels[idx].current.clone() else { return };
        let routing = self.routing.clone();
        let dest = match &op {
            ClientOp::Write { .. } => routing.head(),
            ClientOp::Read { .. } => {
                let readable: Vec<TargetId> = routing.readable().collect();
                (!readable.is_empty()).then(|| readable[self.rng.random_range(0..readable.len())])
            }
        };
        let Some(dest) = dest else {
            self.channels[idx].state = ChannelState::Backoff { until_ms: self.now_ms + 50 };
            return;
        };
        let token = ReplyToken(self.next_token);
        self.next_token += 1;
        let acked_before = match &op {
            ClientOp::Read { chunk, .. } => self.observed_max(*chunk),
            ClientOp::Write { .. } => ChunkVersion(0),
        };
        self.tokens
            .insert(token, Attempt { idx, serial, tag, sent_at_step: self.step, acked_before });
        let input = match op {
            ClientOp::Write { chunk, update } => Input::ClientWrite {
                token,
                request: WriteRequest {
                    chain: CHAIN,
                    chain_version: routing.chain_version,
                    chunk,
                    payload_checksum: update.payload_checksum(),
                    update,
                    tag: tag.expect("writes have tags"),
                },
            },
            ClientOp::Read { chunk, offset_bytes, length_bytes } => Input::ClientRead {
                token,
                request: ReadRequest {
                    chain: CHAIN,
                    chain_version: routing.chain_version,
                    chunk,
                    offset_bytes,
                    length_bytes,
                },
            },
        };
        self.to_replica.entry(dest).or_default().push_back(input);
        self.channels[idx].state = ChannelState::InFlight { token, sent_at_ms: self.now_ms };
    }

    /// The newest version of `chunk` any client has observed so far: acknowledged by a write or
    /// returned by a read. A later read must not return anything older (linearizability).
    fn observed_max(&self, chunk: ChunkId) -> ChunkVersion {
        let acked = self.writes.iter().filter(|w| w.chunk == chunk).map(|w| w.ok.version);
        let read = self.reads.iter().filter(|r| r.chunk == chunk).filter_map(|r| match &r.result {
            ReadResult::Data(ok) => Some(ok.version),
            ReadResult::NotFound => None,
        });
        acked.chain(read).max().unwrap_or_default()
    }

    fn on_client_reply(&mut self, output: Output) {
        let (token, write, read) = match output {
            Output::WriteReply { token, outcome } => (token, Some(outcome), None),
            Output::ReadReply { token, outcome } => (token, None, Some(outcome)),
            _ => unreachable!("only replies reach clients"),
        };
        let Some(attempt) = self.tokens.remove(&token) else { return };
        let idx = attempt.idx;
        let current = self.channels[idx].current.clone();
        let same_op = current.as_ref().is_some_and(|c| c.2 == attempt.serial);
        let is_current = same_op
            && matches!(self.channels[idx].state, ChannelState::InFlight { token: t, .. } if t == token);
        if let Some(outcome) = write {
            match outcome {
                WriteOutcome::Committed(ok) => {
                    let tag = attempt.tag.expect("writes have tags");
                    if !same_op {
                        // A reply to an earlier attempt of a write that already completed: it
                        // must agree with the outcome recorded then.
                        let first = self.writes.iter().find(|w| w.tag == tag);
                        assert!(
                            first.is_some_and(|w| w.ok == ok),
                            "seed {}: late ack {ok:?} for {tag:?} disagrees with {first:?}",
                            self.seed
                        );
                        return;
                    }
                    // Any attempt's success completes the write.
                    let Some((ClientOp::Write { chunk, update }, _, _)) = current else {
                        unreachable!("a write attempt belongs to a write op")
                    };
                    self.writes.push(WriteRecord {
                        tag,
                        chunk,
                        update,
                        ok,
                        acked_at_step: self.step,
                    });
                    self.advance(idx);
                }
                WriteOutcome::Refused(refusal) => {
                    *self.refusals.entry(refusal.code.code()).or_default() += 1;
                    if !is_current {
                        return;
                    }
                    assert!(
                        refusal.code.is_retryable(),
                        "seed {}: write refused with {refusal:?}",
                        self.seed
                    );
                    self.channels[idx].state = ChannelState::Backoff { until_ms: self.now_ms + 30 };
                }
            }
        } else if let Some(outcome) = read {
            let Some((ClientOp::Read { chunk, offset_bytes, length_bytes }, _, _)) = current else {
                return;
            };
            if !is_current {
                return;
            }
            let result = match outcome {
                ReadOutcome::Data(ok) => ReadResult::Data(ok),
                ReadOutcome::Refused(refusal) if refusal.code == ErrorCode::ChunkNotFound => {
                    ReadResult::NotFound
                }
                ReadOutcome::Refused(refusal) => {
                    *self.refusals.entry(refusal.code.code()).or_default() += 1;
                    assert!(
                        refusal.code.is_retryable(),
                        "seed {}: read refused {refusal:?}",
                        self.seed
                    );
                    self.channels[idx].state = ChannelState::Backoff { until_ms: self.now_ms + 20 };
                    return;
                }
            };
            self.reads.push(ReadRecord {
                chunk,
                offset_bytes,
                length_bytes,
                sent_at_step: attempt.sent_at_step,
                acked_before: attempt.acked_before,
                result,
            });
            self.advance(idx);
        }
    }

    fn advance(&mut self, idx: usize) {
        let ch = &mut self.channels[idx];
        ch.current = None;
        ch.state = ChannelState::Idle;
    }

    fn start_next_op(&mut self, idx: usize) {
        let Some(op) = self.channels[idx].script.pop_front() else { return };
        let tag = matches!(op, ClientOp::Write { .. }).then(|| self.tag_for(idx));
        let ch = &mut self.channels[idx];
        ch.serial += 1;
        ch.current = Some((op, tag, ch.serial));
        self.client_send(idx);
    }

    /// Routes a replica's outputs into the world.
    fn route(&mut self, from: TargetId) {
        let outputs = self.nodes.get_mut(&from).expect("node").replica.drain_outputs();
        for output in outputs {
            match output {
                Output::Send { to, mut message } => {
                    if self.rng.random_range(0..1000) < self.faults.drop_per_mille {
                        self.messages_dropped += 1;
                        continue;
                    }
                    if self.rng.random_range(0..1000) < self.faults.corrupt_per_mille
                        && corrupt(&mut message)
                    {
                        self.messages_corrupted += 1;
                    }
                    self.links.entry((from, to)).or_default().push_back(message);
                }
                Output::Storage { op, request } => {
                    self.nodes.get_mut(&from).expect("node").ops.push((op, request))
                }
                Output::WriteReply { .. } | Output::ReadReply { .. } => {
                    self.to_client.entry(from).or_default().push_back(output)
                }
                Output::SyncDone { chain_version } => {
                    self.nodes.get_mut(&from).expect("node").sync_done = Some(chain_version)
                }
                Output::ChunkCorrupt { .. } => self.corrupt_reports += 1,
                Output::ChunkRepaired { .. } | Output::ChunkUnrepairable { .. } => {}
                Output::Fenced { reason } => {
                    println!("step {}: {from} fenced: {reason:?}", self.step);
                    self.nodes.get_mut(&from).expect("node").fenced = true;
                }
            }
        }
    }

    fn deliver(&mut self, to: TargetId, input: Input) {
        let node = self.nodes.get_mut(&to).expect("node");
        if !node.alive {
            return;
        }
        node.replica.handle(input);
        self.route(to);
    }

    fn tick(&mut self) {
        self.now_ms += self.tick_ms;
        let alive: Vec<TargetId> =
            self.nodes.iter().filter(|(_, n)| n.alive).map(|(t, _)| *t).collect();
        for t in alive {
            self.deliver(t, Input::Tick { now_ms: self.now_ms });
        }
        for idx in 0..self.channels.len() {
            let resend = match self.channels[idx].state {
                ChannelState::InFlight { sent_at_ms, .. } => {
                    sent_at_ms + self.client_timeout_ms <= self.now_ms
                }
                ChannelState::Backoff { until_ms } => until_ms <= self.now_ms,
                ChannelState::Idle => false,
            };
            if resend {
                self.client_send(idx);
            }
        }
    }

    /// Everything delivered, every script done, every replica idle.
    pub fn quiescent(&self) -> bool {
        self.links.values().all(VecDeque::is_empty)
            && self.to_replica.values().all(VecDeque::is_empty)
            && self.to_client.values().all(VecDeque::is_empty)
            && self.channels.iter().all(|c| c.script.is_empty() && c.current.is_none())
            && self.nodes.values().filter(|n| n.alive).all(|n| {
                n.ops.is_empty()
                    && n.routing_inbox.is_empty()
                    && (n.fenced || n.replica.is_quiescent())
            })
    }

    /// One event, chosen by the RNG among those possible.
    pub fn step_once(&mut self) {
        self.step += 1;
        #[derive(Clone, Copy)]
        enum Event {
            Link(TargetId, TargetId),
            Storage(TargetId),
            Routing(TargetId),
            ToReplica(TargetId),
            ToClient(TargetId),
            Issue(usize),
            Tick,
        }
        let mut events = Vec::new();
        for (&(from, to), q) in &self.links {
            if !q.is_empty() {
                events.push(Event::Link(from, to));
            }
        }
        for (&t, node) in &self.nodes {
            if node.alive && !node.ops.is_empty() {
                events.push(Event::Storage(t));
            }
            if node.alive && !node.routing_inbox.is_empty() {
                events.push(Event::Routing(t));
            }
        }
        for (&t, q) in &self.to_replica {
            if !q.is_empty() {
                events.push(Event::ToReplica(t));
            }
        }
        for (&t, q) in &self.to_client {
            if !q.is_empty() {
                events.push(Event::ToClient(t));
            }
        }
        for (i, c) in self.channels.iter().enumerate() {
            if c.current.is_none() && !c.script.is_empty() {
                events.push(Event::Issue(i));
            }
        }
        let event = if events.is_empty() || self.rng.random_range(0..100) < 3 {
            Event::Tick
        } else {
            events[self.rng.random_range(0..events.len())]
        };
        match event {
            Event::Link(from, to) => {
                let message = self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front);
                if let Some(message) = message {
                    self.deliver(to, Input::Peer { from, message });
                }
            }
            Event::Storage(t) => {
                let node = self.nodes.get_mut(&t).expect("node");
                let i = self.rng.random_range(0..node.ops.len());
                let (op, request) = node.ops.swap_remove(i);
                let result = execute(&mut node.store, &request);
                self.deliver(t, Input::StorageDone { op, result });
            }
            Event::Routing(t) => {
                let routing = self.nodes.get_mut(&t).and_then(|n| n.routing_inbox.pop_front());
                if let Some(routing) = routing {
                    self.deliver(t, Input::Routing(routing));
                }
            }
            Event::ToReplica(t) => {
                let input = self.to_replica.get_mut(&t).and_then(VecDeque::pop_front);
                if let Some(input) = input {
                    self.deliver(t, input);
                }
            }
            Event::ToClient(t) => {
                let output = self.to_client.get_mut(&t).and_then(VecDeque::pop_front);
                if let Some(output) = output {
                    self.on_client_reply(output);
                }
            }
            Event::Issue(i) => self.start_next_op(i),
            Event::Tick => self.tick(),
        }
    }

    /// Runs until quiescent, failing after `steps_max` events.
    pub fn run(&mut self, steps_max: u64) -> Result<(), String> {
        let start = self.step;
        while !self.quiescent() {
            if self.step - start >= steps_max {
                return Err(format!(
                    "seed {}: not quiescent after {steps_max} steps\n{}",
                    self.seed,
                    self.describe()
                ));
            }
            self.step_once();
        }
        Ok(())
    }

    /// Runs until `done` holds (checked between events), failing after `steps_max` events.
    pub fn run_until(&mut self, steps_max: u64, done: impl Fn(&Sim) -> bool) -> Result<(), String> {
        let start = self.step;
        while !done(self) {
            if self.step - start >= steps_max {
                return Err(format!(
                    "seed {}: condition not reached\n{}",
                    self.seed,
                    self.describe()
                ));
            }
            self.step_once();
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (t, n) in &self.nodes {
            out += &format!(
                "{t}: alive {} fenced {} quiescent {} ops {} view {:?}\n",
                n.alive,
                n.fenced,
                n.replica.is_quiescent(),
                n.ops.len(),
                n.replica.view()
            );
            for m in n.store.metas() {
                out += &format!("   {m:?}\n");
            }
        }
        for (i, c) in self.channels.iter().enumerate() {
            out += &format!(
                "channel {i}: {:?} left {} current {:?}\n",
                c.state,
                c.script.len(),
                c.current.as_ref().map(|x| (x.1, x.2))
            );
        }
        out
    }

    /// Replicas in the write chain (serving or syncing) that are alive.
    pub fn write_chain(&self) -> Vec<TargetId> {
        self.routing.write_chain().map(|t| t.target).filter(|t| self.nodes[t].alive).collect()
    }

    /// The checks every run ends with.
    pub fn check(&self) -> Result<(), String> {
        let seed = self.seed;
        // 1. Every write applied exactly once, in a total order per chunk: versions 1..=n.
        let mut per_chunk: BTreeMap<ChunkId, Vec<&WriteRecord>> = BTreeMap::new();
        let mut tags = BTreeSet::new();
        for w in &self.writes {
            if !tags.insert(w.tag) {
                return Err(format!("seed {seed}: write {:?} acknowledged twice", w.tag));
            }
            per_chunk.entry(w.chunk).or_default().push(w);
        }
        let mut models: BTreeMap<ChunkId, Vec<Model>> = BTreeMap::new();
        for (chunk, writes) in &mut per_chunk {
            writes.sort_by_key(|w| w.ok.version);
            let mut states = vec![Model::absent()];
            for (i, w) in writes.iter().enumerate() {
                if w.ok.version != ChunkVersion(i as u64 + 1) {
                    return Err(format!(
                        "seed {seed}: {chunk}: acknowledged versions are not 1..=n: {:?}",
                        writes.iter().map(|w| w.ok.version.0).collect::<Vec<_>>()
                    ));
                }
                let next = states.last().expect("absent first").apply(&w.update);
                if next.length_bytes() != w.ok.length_bytes
                    || next.removed != w.ok.removed
                    || crc32c::crc32c(&next.content) != w.ok.checksum
                {
                    return Err(format!(
                        "seed {seed}: {chunk} v{}: ack {:?} disagrees with the model",
                        i + 1,
                        w.ok
                    ));
                }
                states.push(next);
            }
            models.insert(*chunk, states);
        }
        // 2. Every live replica of the write chain holds exactly the model's final state, with no
        //    pending version left.
        for t in self.write_chain() {
            let node = &self.nodes[&t];
            if node.fenced {
                continue;
            }
            for meta in node.store.metas() {
                if meta.pending.is_some() {
                    return Err(format!("seed {seed}: {t}: pending version left: {meta:?}"));
                }
                if !models.contains_key(&meta.chunk) && !meta.committed.removed {
                    return Err(format!("seed {seed}: {t}: chunk nobody wrote: {meta:?}"));
                }
            }
            for (chunk, states) in &models {
                let expected = states.last().expect("states");
                let (meta, data) = node
                    .store
                    .read_full(*chunk, r3fs_craq::Which::Committed)
                    .map_err(|e| format!("seed {seed}: {t}: {e}"))?;
                if meta.committed.version.0 != states.len() as u64 - 1
                    || meta.committed.removed != expected.removed
                    || data[..] != expected.content[..]
                {
                    return Err(format!(
                        "seed {seed}: {t}: {chunk} committed {:?} ({} bytes), model v{} removed {} ({} bytes)",
                        meta.committed,
                        data.len(),
                        states.len() - 1,
                        expected.removed,
                        expected.content.len()
                    ));
                }
            }
        }
        // 3. Reads saw committed data only, and nothing older than a write acknowledged before
        //    they were sent.
        for r in &self.reads {
            let states = models.get(&r.chunk).cloned().unwrap_or_else(|| vec![Model::absent()]);
            match &r.result {
                ReadResult::Data(ok) => {
                    let v = ok.version.0 as usize;
                    if ok.version < r.acked_before {
                        return Err(format!(
                            "seed {seed}: read {r:?} older than v{} observed before it was sent",
                            r.acked_before.0
                        ));
                    }
                    let Some(state) = states.get(v) else {
                        return Err(format!(
                            "seed {seed}: read {r:?} of a version no client saw acknowledged"
                        ));
                    };
                    let start = (r.offset_bytes as usize).min(state.content.len());
                    let end = (start + r.length_bytes as usize).min(state.content.len());
                    if state.removed || ok.data[..] != state.content[start..end] {
                        return Err(format!(
                            "seed {seed}: read {r:?} returned bytes that v{v} never had"
                        ));
                    }
                    if crc32c::crc32c(&ok.data) != ok.checksum {
                        return Err(format!("seed {seed}: read {r:?} has a wrong checksum"));
                    }
                }
                ReadResult::NotFound => {
                    let from = r.acked_before.0 as usize;
                    if !states.iter().skip(from).any(|s| s.removed) {
                        return Err(format!(
                            "seed {seed}: read {r:?} found nothing, but the chunk existed since"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Flips a payload byte without fixing its checksum.
fn corrupt(message: &mut PeerMessage) -> bool {
    let flip = |data: &mut Bytes| {
        if data.is_empty() {
            return false;
        }
        let mut v = data.to_vec();
        v[0] ^= 0x5a;
        *data = Bytes::from(v);
        true
    };
    match message {
        PeerMessage::Update(u) => match &mut u.update {
            Update::Write { data, .. } | Update::Replace { data } => flip(data),
            _ => false,
        },
        PeerMessage::SyncChunk(s) => flip(&mut s.data),
        _ => false,
    }
}

/// The model of one chunk version, written independently of the crate's `Update::apply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub content: Vec<u8>,
    pub removed: bool,
}

impl Model {
    pub fn absent() -> Model {
        Model { content: Vec::new(), removed: true }
    }

    pub fn length_bytes(&self) -> u32 {
        self.content.len() as u32
    }

    pub fn apply(&self, update: &Update) -> Model {
        let base: &[u8] = if self.removed { &[] } else { &self.content };
        match update {
            Update::Write { offset_bytes, data } => {
                let mut content = Vec::new();
                let end = (*offset_bytes as usize + data.len()).max(base.len());
                for i in 0..end {
                    let o = *offset_bytes as usize;
                    let byte = if i >= o && i < o + data.len() {
                        data[i - o]
                    } else {
                        base.get(i).copied().unwrap_or(0)
                    };
                    content.push(byte);
                }
                Model { content, removed: false }
            }
            Update::Truncate { length_bytes } => Model {
                content: (0..*length_bytes as usize)
                    .map(|i| base.get(i).copied().unwrap_or(0))
                    .collect(),
                removed: false,
            },
            Update::Extend { length_bytes } => Model {
                content: (0..(*length_bytes as usize).max(base.len()))
                    .map(|i| base.get(i).copied().unwrap_or(0))
                    .collect(),
                removed: false,
            },
            Update::Remove => Model::absent(),
            Update::Replace { data } => Model { content: data.to_vec(), removed: false },
        }
    }
}

/// A write of `len` bytes of `fill` at `offset`.
pub fn write_op(chunk_index: u64, offset: u32, len: usize, fill: u8) -> ClientOp {
    ClientOp::Write {
        chunk: chunk(chunk_index),
        update: Update::Write { offset_bytes: offset, data: Bytes::from(vec![fill; len]) },
    }
}

pub fn read_op(chunk_index: u64, offset: u32, len: u32) -> ClientOp {
    ClientOp::Read { chunk: chunk(chunk_index), offset_bytes: offset, length_bytes: len }
}

/// Makes `ChunkStore` usable from tests without naming the trait at every call site.
pub fn committed_version(store: &MemoryChunkStore, c: ChunkId) -> ChunkVersion {
    store.meta(c).expect("memory store").committed.version
}

impl Sim {
    /// Runs exactly `steps` events (or fewer if the world is quiescent first).
    pub fn run_steps(&mut self, steps: u64) {
        for _ in 0..steps {
            if self.quiescent() {
                return;
            }
            self.step_once();
        }
    }

    /// The current chain version as mgmtd published it.
    pub fn chain_version(&self) -> ChainVersion {
        self.routing.chain_version
    }
}

/// A hand-driven chain for step-by-step tests: storage ops run at once unless held, messages wait
/// in one FIFO until delivered.
pub struct Manual {
    pub nodes: BTreeMap<TargetId, (Replica, MemoryChunkStore)>,
    pub messages: VecDeque<(TargetId, TargetId, PeerMessage)>,
    pub replies: Vec<(TargetId, Output)>,
    pub held: BTreeMap<TargetId, Vec<(OpId, StorageOp)>>,
    pub hold_storage: BTreeSet<TargetId>,
    next_token: u64,
}

impl Manual {
    /// `replicas` serving targets T1..Tn at chain version 1.
    pub fn new(replicas: u64) -> Manual {
        let routing = ChainRouting {
            chain: CHAIN,
            chain_version: ChainVersion(1),
            targets: (1..=replicas)
                .map(|t| ChainTarget { target: target(t), state: PublicTargetState::Serving })
                .collect(),
        };
        let mut manual = Manual {
            nodes: BTreeMap::new(),
            messages: VecDeque::new(),
            replies: Vec::new(),
            held: BTreeMap::new(),
            hold_storage: BTreeSet::new(),
            next_token: 0,
        };
        for t in 1..=replicas {
            let replica = Replica::new(replica_config(), target(t), CHAIN).expect("valid config");
            manual
                .nodes
                .insert(target(t), (replica, MemoryChunkStore::new(CHUNK_SIZE_MAX, 1 << 30)));
            manual.handle(target(t), Input::Routing(routing.clone()));
        }
        manual
    }

    pub fn handle(&mut self, t: TargetId, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let (replica, store) = self.nodes.get_mut(&t).expect("node");
            replica.handle(input);
            for output in replica.drain_outputs() {
                match output {
                    Output::Storage { op, request } => {
                        if self.hold_storage.contains(&t) {
                            self.held.entry(t).or_default().push((op, request));
                        } else {
                            let result = execute(store, &request);
                            inputs.push_back(Input::StorageDone { op, result });
                        }
                    }
                    Output::Send { to, message } => self.messages.push_back((t, to, message)),
                    other => self.replies.push((t, other)),
                }
            }
        }
    }

    /// Completes the oldest held storage op of `t`.
    pub fn complete_one(&mut self, t: TargetId) -> bool {
        let Some(ops) = self.held.get_mut(&t) else { return false };
        if ops.is_empty() {
            return false;
        }
        let (op, request) = ops.remove(0);
        let result = execute(&mut self.nodes.get_mut(&t).expect("node").1, &request);
        self.handle(t, Input::StorageDone { op, result });
        true
    }

    /// Completes held storage op number `i` of `t` (out of order).
    pub fn complete_nth(&mut self, t: TargetId, i: usize) {
        let (op, request) = self.held.get_mut(&t).expect("held ops").remove(i);
        let result = execute(&mut self.nodes.get_mut(&t).expect("node").1, &request);
        self.handle(t, Input::StorageDone { op, result });
    }

    /// Replaces `t`'s replica by a fresh one over the same store, as after a process restart.
    pub fn restart(&mut self, t: TargetId) {
        self.held.remove(&t);
        self.messages.retain(|(from, to, _)| *from != t && *to != t);
        let node = self.nodes.get_mut(&t).expect("node");
        node.0 = Replica::new(replica_config(), t, CHAIN).expect("valid config");
    }

    /// Gives every replica the chain at `chain_version`.
    pub fn set_chain(&mut self, chain_version: u32, targets: &[(u64, PublicTargetState)]) {
        let routing = ChainRouting {
            chain: CHAIN,
            chain_version: ChainVersion(chain_version),
            targets: targets
                .iter()
                .map(|&(t, state)| ChainTarget { target: target(t), state })
                .collect(),
        };
        let all: Vec<TargetId> = self.nodes.keys().copied().collect();
        for t in all {
            self.handle(t, Input::Routing(routing.clone()));
        }
    }

    /// Adds a target with an empty store and no routing yet.
    pub fn add_node(&mut self, t: TargetId) {
        let replica = Replica::new(replica_config(), t, CHAIN).expect("valid config");
        self.nodes.insert(t, (replica, MemoryChunkStore::new(CHUNK_SIZE_MAX, 1 << 30)));
    }

    /// Delivers the oldest message; returns false when none is left.
    pub fn deliver_one(&mut self) -> bool {
        let Some((from, to, message)) = self.messages.pop_front() else { return false };
        self.handle(to, Input::Peer { from, message });
        true
    }

    pub fn deliver_all(&mut self) {
        while self.deliver_one() {}
    }

    pub fn token(&mut self) -> ReplyToken {
        self.next_token += 1;
        ReplyToken(self.next_token)
    }

    pub fn write(
        &mut self,
        t: TargetId,
        chain_version: u32,
        c: ChunkId,
        update: Update,
        tag: UpdateTag,
    ) -> ReplyToken {
        let token = self.token();
        let request = WriteRequest {
            chain: CHAIN,
            chain_version: ChainVersion(chain_version),
            chunk: c,
            payload_checksum: update.payload_checksum(),
            update,
            tag,
        };
        self.handle(t, Input::ClientWrite { token, request });
        token
    }

    pub fn read(&mut self, t: TargetId, chain_version: u32, c: ChunkId) -> ReadOutcome {
        let token = self.token();
        let request = ReadRequest {
            chain: CHAIN,
            chain_version: ChainVersion(chain_version),
            chunk: c,
            offset_bytes: 0,
            length_bytes: CHUNK_SIZE_MAX,
        };
        self.handle(t, Input::ClientRead { token, request });
        self.take_read(token).expect("reads are answered at once when storage is not held")
    }

    pub fn take_read(&mut self, token: ReplyToken) -> Option<ReadOutcome> {
        let i = self
            .replies
            .iter()
            .position(|(_, o)| matches!(o, Output::ReadReply { token: t, .. } if *t == token))?;
        match self.replies.remove(i).1 {
            Output::ReadReply { outcome, .. } => Some(outcome),
            _ => unreachable!(),
        }
    }

    pub fn take_write(&mut self, token: ReplyToken) -> Option<WriteOutcome> {
        let i = self
            .replies
            .iter()
            .position(|(_, o)| matches!(o, Output::WriteReply { token: t, .. } if *t == token))?;
        match self.replies.remove(i).1 {
            Output::WriteReply { outcome, .. } => Some(outcome),
            _ => unreachable!(),
        }
    }
}

pub fn tag(client: u64, seq: u64) -> UpdateTag {
    UpdateTag { client: ClientId(client), channel: 0, seq }
}

pub fn bytes(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}

/// The seeds a simulation test runs: `R3FS_CRAQ_SEED=N` replays one seed (the one a failure
/// printed), `R3FS_CRAQ_SEEDS=K` sweeps seeds 0..K, otherwise 0..`default_count`.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("R3FS_CRAQ_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count =
        std::env::var("R3FS_CRAQ_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_count);
    (0..count).collect()
}
