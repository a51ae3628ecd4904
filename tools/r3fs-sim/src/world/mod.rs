//! The simulated world: a clock, an event queue, the network, storage nodes running CRAQ replicas
//! over [`SimStore`]s, the mgmtd model, and clients. One seeded [`SimRng`] makes every choice, and
//! every collection iterates in a fixed order, so a seed replays the same run exactly.
//!
//! A *step* is one event: a message delivery, a storage op completing, a replica clock tick, a
//! heartbeat, mgmtd's failure-detector period, a client timer, a restart or a partition healing.
//! Faults are injected between steps while the workload runs ([`SimConfig::steps`] steps); then
//! faults stop, partitions heal, crashed nodes restart, clients finish what they are doing, and the
//! run continues until every chain has all its targets serving and every replica is idle, when
//! the replicas are compared. The checks of [`crate::checker`] run after every step.

use crate::checker::{Check, Checker, Violation, ViolationKind};
use crate::config::{PlantedBug, SimConfig};
use crate::mgmtd::MgmtdModel;
use crate::net::{Endpoint, Message, Partitions, Payload, Request, TargetReport, links_between};
use crate::report::{RunReport, RunStats};
use crate::rng::SimRng;
use crate::store::SimStore;
use bytes::Bytes;
use r3fs_craq::{
    ChainRouting, FenceReason, Input, OpId, Output, PeerMessage, ReadOutcome, ReadRequest, Refusal,
    Replica, ReplyToken, StorageOp, StorageResult, Update, UpdateAck, UpdateTag, View,
    WriteOutcome, WriteRequest,
};
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, InodeId, LocalTargetState,
    PublicTargetState, TargetId,
};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use tracing::debug;

mod client;
mod daemon;

/// Bytes of chunk data one simulated target may hold; far above what a run writes, so `NoSpace`
/// never interferes with the checks.
const TARGET_BYTES_MAX: u64 = 64 << 20;

/// Events scheduled at once. A run keeps a few per node and client plus the messages and storage
/// ops in flight, all bounded by the replicas' own bounds; more means a feedback loop in the
/// simulator or the code under test, reported as a violation rather than eating memory.
const EVENTS_MAX: usize = 1 << 20;

#[derive(Clone, Debug)]
enum Event {
    Deliver(Message),
    StorageDone { target: TargetId, generation: u64, op: OpId },
    NodeTick(usize),
    Heartbeat(usize),
    FailureCheck,
    ClientWake { client: usize, generation: u64 },
    Restart(usize),
    Heal(u64),
}

#[derive(Debug)]
struct Scheduled {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    // Reversed: `BinaryHeap` pops the largest, the world wants the earliest (ties by insertion).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// This seed's fault intensities, drawn below the configured maxima.
#[derive(Clone, Copy, Debug)]
struct FaultProfile {
    drop_per_mille: u32,
    corrupt_per_mille: u32,
    delay_spike_per_mille: u32,
    crash_interval_ms: Option<u64>,
    partition_interval_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Workload and faults.
    Active,
    /// Faults stopped at `since_step`; waiting for the cluster to settle.
    Healing { since_step: u64 },
}

#[derive(Debug)]
struct NodeState {
    up: bool,
    targets: Vec<TargetId>,
    heartbeat_version: u64,
    /// Send time of each heartbeat not yet answered, by version.
    heartbeats_sent_ms: BTreeMap<u64, u64>,
    /// The daemon serves clients until then: half the heartbeat timeout after sending the last
    /// heartbeat mgmtd accepted. Mgmtd declares the node dead no earlier than a full timeout
    /// after *receiving* that heartbeat, so a node cut off from mgmtd stops serving before its
    /// chains are reconfigured without it.
    lease_until_ms: u64,
}

/// A storage op handed to the disk and not yet completed.
#[derive(Debug)]
struct InflightOp {
    request: StorageOp,
    /// The replica served reads when it issued the op.
    issued_serving: bool,
}

/// One target as its storage daemon hosts it.
#[derive(Debug)]
struct TargetHost {
    chain: ChainId,
    node: usize,
    /// `None` while the node is down.
    replica: Option<Replica>,
    /// Bumped whenever the replica is replaced (crash, fence): completions of ops the previous
    /// replica issued land on the disk but are not delivered.
    generation: u64,
    store: SimStore,
    inflight: BTreeMap<(u64, OpId), InflightOp>,
    /// What the daemon reports in heartbeats: up-to-date as of a chain version once it serves or
    /// finished a resync there, online (`None`) otherwise (the 3FS daemon contract).
    claims_up_to_date: Option<ChainVersion>,
    /// Restarted and not yet rejoined: reports offline until mgmtd publishes a chain version in
    /// which this target neither serves nor syncs (docs/design/simulation.md, "Restart").
    recovering: bool,
    /// The newest routing the daemon received for its chain.
    routing: Option<ChainRouting>,
}

#[derive(Clone, Debug)]
enum OpKind {
    Write { chain: ChainId, chunk: ChunkId, update: Update, tag: UpdateTag },
    Read { chain: ChainId, chunk: ChunkId, offset_bytes: u32, length_bytes: u32 },
}

impl OpKind {
    fn chain(&self) -> ChainId {
        match self {
            OpKind::Write { chain, .. } | OpKind::Read { chain, .. } => *chain,
        }
    }

    fn chunk(&self) -> ChunkId {
        match self {
            OpKind::Write { chunk, .. } | OpKind::Read { chunk, .. } => *chunk,
        }
    }
}

#[derive(Debug)]
struct ClientOp {
    serial: u64,
    kind: OpKind,
    attempts: u32,
    /// The newest version of the chunk this client had observed when the operation started.
    seen_before: ChunkVersion,
}

#[derive(Debug)]
struct ClientState {
    id: ClientId,
    routing: BTreeMap<ChainId, ChainRouting>,
    next_seq: u64,
    next_serial: u64,
    op: Option<ClientOp>,
    /// Newest version per chunk this client observed (acknowledged or read).
    seen: BTreeMap<ChunkId, ChunkVersion>,
    /// Only the newest scheduled wake-up acts.
    generation: u64,
    stopped: bool,
}

/// What a reply token stands for; kept after the client moved on, since heads may still answer.
#[derive(Clone, Debug)]
struct TokenInfo {
    client: usize,
    serial: u64,
    kind: OpKind,
}

/// See the module docs.
#[derive(Debug)]
pub struct World {
    config: SimConfig,
    profile: FaultProfile,
    rng: SimRng,
    now_ms: u64,
    step: u64,
    next_seq: u64,
    events: BinaryHeap<Scheduled>,
    partitions: Partitions,
    nodes: Vec<NodeState>,
    targets: BTreeMap<TargetId, TargetHost>,
    chain_targets: BTreeMap<ChainId, Vec<TargetId>>,
    chain_chunks: BTreeMap<ChainId, Vec<ChunkId>>,
    /// Replicas created per chain since the start (see [`Checker::visible`]).
    dedup_epoch: BTreeMap<ChainId, u64>,
    /// Latest delivery time scheduled per directed link, to keep links FIFO.
    link_clock_ms: BTreeMap<(Endpoint, Endpoint), u64>,
    mgmtd: MgmtdModel,
    clients: Vec<ClientState>,
    tokens: BTreeMap<ReplyToken, TokenInfo>,
    next_token: u64,
    checker: Checker,
    stats: RunStats,
    phase: Phase,
    next_crash_ms: Option<u64>,
    next_partition_ms: Option<u64>,
    /// Something the durability check depends on changed since it last ran.
    dirty: bool,
    violation: Option<Violation>,
}

impl World {
    /// Builds the cluster of `config` (which must be valid) at time 0: every chain at version 1
    /// with all targets serving, every replica and client holding that routing.
    pub fn new(config: SimConfig) -> Result<World, crate::config::ConfigError> {
        config.validate()?;
        let mut rng = SimRng::new(config.seed);
        let profile = draw_profile(&config, &mut rng);
        let replica_config = config.replica_config();

        // Placement: chain c takes `replicas` distinct nodes from a seeded shuffle.
        let mut nodes: Vec<NodeState> = (0..config.nodes)
            .map(|_| NodeState {
                up: true,
                targets: Vec::new(),
                heartbeat_version: 0,
                heartbeats_sent_ms: BTreeMap::new(),
                lease_until_ms: config.timing.heartbeat_timeout_ms / 2,
            })
            .collect();
        let mut targets = BTreeMap::new();
        let mut chain_targets = BTreeMap::new();
        let mut chain_chunks = BTreeMap::new();
        let mut placement = BTreeMap::new();
        for c in 0..config.chains {
            let chain = ChainId(c as u32 + 1);
            let mut order: Vec<usize> = (0..config.nodes).collect();
            for i in (1..order.len()).rev() {
                let j = rng.index(i + 1);
                order.swap(i, j);
            }
            let mut members = Vec::new();
            for (r, &node) in order.iter().take(config.replicas).enumerate() {
                let target = TargetId((c as u64 + 1) * 100 + r as u64 + 1);
                nodes[node].targets.push(target);
                members.push((target, node));
                let replica = Replica::new(replica_config.clone(), target, chain)
                    .expect("SimConfig::validate checked the replica config");
                targets.insert(
                    target,
                    TargetHost {
                        chain,
                        node,
                        replica: Some(replica),
                        generation: 0,
                        store: SimStore::new(config.chunk_size_bytes_max, TARGET_BYTES_MAX),
                        inflight: BTreeMap::new(),
                        claims_up_to_date: None,
                        recovering: false,
                        routing: None,
                    },
                );
            }
            chain_targets.insert(chain, members.iter().map(|(t, _)| *t).collect::<Vec<_>>());
            chain_chunks.insert(
                chain,
                (0..config.chunks_per_chain as u64)
                    .map(|i| ChunkId::new(InodeId(u64::from(chain.0)), i))
                    .collect::<Vec<_>>(),
            );
            placement.insert(chain, members);
        }
        let trust_unversioned_claims = config.plant_bug == Some(PlantedBug::UnversionedClaims);
        let mgmtd = MgmtdModel::new(
            config.timing.heartbeat_timeout_ms,
            config.nodes,
            &placement,
            trust_unversioned_claims,
        )
        .map_err(|e| crate::config::ConfigError { violations: vec![e] })?;
        let routing: BTreeMap<ChainId, ChainRouting> =
            mgmtd.routings().into_iter().map(|r| (r.chain, r)).collect();
        let clients = (0..config.clients)
            .map(|i| ClientState {
                id: ClientId(i as u64 + 1),
                routing: routing.clone(),
                next_seq: 1,
                next_serial: 0,
                op: None,
                seen: BTreeMap::new(),
                generation: 0,
                stopped: false,
            })
            .collect();
        let mut world = World {
            checker: Checker::new(config.chunk_size_bytes_max),
            profile,
            rng,
            now_ms: 0,
            step: 0,
            next_seq: 0,
            events: BinaryHeap::new(),
            partitions: Partitions::default(),
            nodes,
            targets,
            chain_targets,
            dedup_epoch: BTreeMap::new(),
            link_clock_ms: BTreeMap::new(),
            chain_chunks,
            mgmtd,
            clients,
            tokens: BTreeMap::new(),
            next_token: 0,
            stats: RunStats::default(),
            phase: Phase::Active,
            next_crash_ms: None,
            next_partition_ms: None,
            dirty: false,
            violation: None,
            config,
        };
        world.next_crash_ms =
            world.profile.crash_interval_ms.map(|i| world.rng.range(i / 2, i * 2));
        world.next_partition_ms =
            world.profile.partition_interval_ms.map(|i| world.rng.range(i / 2, i * 2));
        debug!(target: "r3fs_sim", seed = world.config.seed, profile = ?world.profile, "world");
        for (chain, routing) in routing {
            for target in world.chain_targets[&chain].clone() {
                world.daemon_routing(target, routing.clone());
            }
        }
        for node in 0..world.config.nodes {
            let tick = world.rng.range(1, world.config.timing.tick_interval_ms);
            world.schedule(tick, Event::NodeTick(node));
            let beat = world.rng.range(1, world.config.timing.heartbeat_interval_ms);
            world.schedule(beat, Event::Heartbeat(node));
        }
        world.schedule(world.config.timing.failure_check_interval_ms, Event::FailureCheck);
        for client in 0..world.config.clients {
            world.client_pause(client, world.config.timing.client_think_ms_max);
        }
        Ok(world)
    }

    /// Runs to the end: the first violation, or convergence after faults stop.
    pub fn run(mut self) -> RunReport {
        while self.violation.is_none() {
            match self.phase {
                Phase::Active if self.step >= self.config.steps => self.begin_healing(),
                Phase::Healing { since_step } => {
                    if self.settled() {
                        self.final_check();
                        break;
                    }
                    if self.step - since_step >= self.config.heal_steps_max {
                        let detail = self.unsettled_reason();
                        self.fail(
                            ViolationKind::NotConverged,
                            format!(
                                "not settled {} steps after faults stopped: {detail}",
                                self.config.heal_steps_max
                            ),
                        );
                        break;
                    }
                }
                Phase::Active => {}
            }
            let Some(next) = self.events.pop() else {
                self.fail(ViolationKind::Contract, "the event queue ran dry".into());
                break;
            };
            debug_assert!(next.at_ms >= self.now_ms, "time goes forward");
            self.now_ms = next.at_ms;
            self.step += 1;
            if self.phase == Phase::Active {
                self.inject_faults();
            }
            self.handle(next.event);
            if self.dirty && self.violation.is_none() {
                self.dirty = false;
                self.check_durability();
            }
        }
        self.stats.steps = self.step;
        self.stats.sim_time_ms = self.now_ms;
        if let Phase::Healing { since_step } = self.phase {
            self.stats.heal_steps = self.step - since_step;
        }
        self.stats.versions_committed = self.checker.versions_committed() as u64;
        self.stats.writes_reapplied = self.checker.writes_reapplied();
        RunReport { seed: self.config.seed, stats: self.stats, violation: self.violation }
    }

    // ----- plumbing -----

    fn schedule(&mut self, delay_ms: u64, event: Event) {
        if self.events.len() >= EVENTS_MAX {
            return self.fail(
                ViolationKind::Contract,
                format!("more than {EVENTS_MAX} events scheduled at once"),
            );
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(Scheduled { at_ms: self.now_ms + delay_ms, seq, event });
    }

    fn fail(&mut self, kind: ViolationKind, detail: String) {
        if self.violation.is_none() {
            debug!(target: "r3fs_sim", step = self.step, %kind, %detail, "VIOLATION");
            self.violation =
                Some(Violation { kind, step: self.step, time_ms: self.now_ms, detail });
        }
    }

    fn record(&mut self, check: Check) {
        if let Err((kind, detail)) = check {
            self.fail(kind, detail);
        }
    }

    fn faults_active(&self) -> bool {
        self.phase == Phase::Active && self.config.faults.enabled
    }

    fn node_of(&self, target: TargetId) -> usize {
        self.targets[&target].node
    }

    // ----- network -----

    fn send(&mut self, from: Endpoint, to: Endpoint, mut payload: Payload) {
        self.stats.messages_sent += 1;
        let t = &self.config.timing;
        let mut delay = self.rng.range(t.message_delay_ms_min, t.message_delay_ms_max);
        let mut overtakable = false;
        if self.faults_active() {
            if self.rng.chance(self.profile.drop_per_mille) {
                self.stats.messages_dropped += 1;
                debug!(target: "r3fs_sim", step = self.step, "drop {from}->{to} {}", payload.kind());
                return;
            }
            if self.rng.chance(self.profile.corrupt_per_mille) && corrupt(&mut payload) {
                self.stats.messages_corrupted += 1;
            }
            if self.rng.chance(self.profile.delay_spike_per_mille) {
                self.stats.messages_delayed += 1;
                delay += self.rng.range(1, self.config.faults.delay_spike_ms_max.max(1));
                overtakable = self.config.faults.reorder_within_links;
            }
        }
        let mut at_ms = self.now_ms + delay;
        if !overtakable {
            // FIFO per link: a slow message holds back the ones behind it (head-of-line
            // blocking); equal times keep send order through the event sequence number.
            let clock = self.link_clock_ms.entry((from, to)).or_default();
            at_ms = at_ms.max(*clock);
            *clock = at_ms;
        }
        self.schedule(at_ms - self.now_ms, Event::Deliver(Message { from, to, payload }));
    }

    fn deliver(&mut self, message: Message) {
        let Message { from, to, payload } = message;
        if self.partitions.blocks(from, to) {
            self.stats.messages_cut += 1;
            return;
        }
        debug!(target: "r3fs_sim", step = self.step, t = self.now_ms, "deliver {from}->{to} {}", payload.kind());
        match to {
            Endpoint::Node(node) => {
                if !self.nodes[node].up {
                    self.stats.messages_cut += 1;
                    return;
                }
                self.node_receive(node, payload);
            }
            Endpoint::Client(client) => self.client_receive(client, payload),
            Endpoint::Mgmtd => self.mgmtd_receive(from, payload),
        }
    }

    // ----- events -----

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver(message) => self.deliver(message),
            Event::StorageDone { target, generation, op } => {
                self.storage_done(target, generation, op)
            }
            Event::NodeTick(node) => {
                if self.nodes[node].up {
                    for target in self.nodes[node].targets.clone() {
                        self.drive(target, Input::Tick { now_ms: self.now_ms });
                    }
                }
                self.schedule(self.config.timing.tick_interval_ms, Event::NodeTick(node));
            }
            Event::Heartbeat(node) => {
                if self.nodes[node].up {
                    self.send_heartbeat(node);
                }
                self.schedule(self.config.timing.heartbeat_interval_ms, Event::Heartbeat(node));
            }
            Event::FailureCheck => {
                self.mgmtd_recompute();
                self.schedule(self.config.timing.failure_check_interval_ms, Event::FailureCheck);
            }
            Event::ClientWake { client, generation } => {
                if self.clients[client].generation == generation {
                    self.client_wake(client);
                }
            }
            Event::Restart(node) => self.restart(node),
            Event::Heal(id) => {
                debug!(target: "r3fs_sim", step = self.step, id, "partition heals");
                self.partitions.heal(id)
            }
        }
    }

    // ----- faults -----

    fn inject_faults(&mut self) {
        if !self.config.faults.enabled {
            return;
        }
        if let (Some(at), Some(interval)) = (self.next_crash_ms, self.profile.crash_interval_ms)
            && at <= self.now_ms
        {
            self.next_crash_ms = Some(self.now_ms + self.rng.range(interval / 2, interval * 2));
            self.inject_crash();
        }
        if let (Some(at), Some(interval)) =
            (self.next_partition_ms, self.profile.partition_interval_ms)
            && at <= self.now_ms
        {
            self.next_partition_ms = Some(self.now_ms + self.rng.range(interval / 2, interval * 2));
            self.inject_partition();
        }
    }

    fn inject_crash(&mut self) {
        let down = self.nodes.iter().filter(|n| !n.up).count();
        if down >= self.config.faults.nodes_down_max {
            return;
        }
        let up: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.nodes[n].up).collect();
        if up.is_empty() {
            return;
        }
        let node = up[self.rng.index(up.len())];
        self.crash(node);
        let t = &self.config.timing;
        let delay = self.rng.range(t.restart_delay_ms_min, t.restart_delay_ms_max);
        self.schedule(delay, Event::Restart(node));
    }

    fn inject_partition(&mut self) {
        let n = self.nodes.len();
        let node = self.rng.index(n);
        let me = [Endpoint::Node(node)];
        let others: Vec<Endpoint> = (0..n).filter(|&m| m != node).map(Endpoint::Node).collect();
        let clients: Vec<Endpoint> = (0..self.clients.len()).map(Endpoint::Client).collect();
        let (name, links) = match self.rng.below(6) {
            0 => ("node from mgmtd", links_between(&me, &[Endpoint::Mgmtd])),
            1 => ("node from its peers", links_between(&me, &others)),
            2 => {
                let mut everyone = others.clone();
                everyone.push(Endpoint::Mgmtd);
                everyone.extend(clients.iter().copied());
                ("node from everyone", links_between(&me, &everyone))
            }
            3 => {
                let group: Vec<Endpoint> =
                    (0..n).filter(|_| self.rng.chance(500)).map(Endpoint::Node).collect();
                let rest: Vec<Endpoint> =
                    (0..n).map(Endpoint::Node).filter(|e| !group.contains(e)).collect();
                ("nodes split in two", links_between(&group, &rest))
            }
            4 => ("node from clients", links_between(&me, &clients)),
            _ => {
                ("node cannot reach mgmtd (one way)", vec![(Endpoint::Node(node), Endpoint::Mgmtd)])
            }
        };
        if links.is_empty() {
            return;
        }
        self.stats.partitions += 1;
        let id = self.partitions.start(links);
        let duration = self.rng.range(1, self.config.faults.partition_duration_ms_max.max(1));
        debug!(target: "r3fs_sim", step = self.step, t = self.now_ms, node, id, duration, "partition: {name}");
        self.schedule(duration, Event::Heal(id));
    }

    /// The node stops: every storage op in flight lands or not (a torn write is one that did not
    /// land), then all in-memory state is gone. The store keeps what it made durable, pending
    /// versions included (`forget-staged` drops those).
    fn crash(&mut self, node: usize) {
        if !self.nodes[node].up {
            return;
        }
        debug!(target: "r3fs_sim", step = self.step, t = self.now_ms, node, "crash");
        self.stats.crashes += 1;
        self.nodes[node].up = false;
        self.nodes[node].lease_until_ms = 0;
        self.nodes[node].heartbeats_sent_ms.clear();
        for target in self.nodes[node].targets.clone() {
            let inflight =
                std::mem::take(&mut self.targets.get_mut(&target).expect("hosted target").inflight);
            for (_, op) in inflight {
                let mutates = matches!(
                    op.request,
                    StorageOp::WritePending { .. }
                        | StorageOp::Commit { .. }
                        | StorageOp::SyncReplace { .. }
                        | StorageOp::AbortPending { .. }
                );
                if !mutates {
                    continue;
                }
                if self.rng.chance(500) {
                    self.stats.torn_ops_landed += 1;
                    self.execute(target, &op);
                } else {
                    self.stats.torn_ops_lost += 1;
                }
            }
            let host = self.targets.get_mut(&target).expect("hosted target");
            if self.config.plant_bug == Some(PlantedBug::ForgetStaged) {
                host.store.forget_staged();
            }
            host.replica = None;
            host.generation += 1;
            host.claims_up_to_date = None;
            host.recovering = false;
            host.routing = None;
        }
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        debug!(target: "r3fs_sim", step = self.step, t = self.now_ms, node, "restart");
        self.stats.restarts += 1;
        self.nodes[node].up = true;
        // The storage daemon's restart policy; the planted bug is engine/r3fs-storage's today.
        let recovering = self.config.plant_bug != Some(PlantedBug::RejoinServing);
        let replica_config = self.config.replica_config();
        for target in self.nodes[node].targets.clone() {
            let now_ms = self.now_ms;
            let host = self.targets.get_mut(&target).expect("hosted target");
            let mut replica = Replica::new(replica_config.clone(), target, host.chain)
                .expect("SimConfig::validate checked the replica config");
            replica.handle(Input::Tick { now_ms });
            host.replica = Some(replica);
            host.recovering = recovering;
            host.claims_up_to_date = None;
            *self.dedup_epoch.entry(host.chain).or_default() += 1;
        }
        self.send_heartbeat(node);
    }

    fn begin_healing(&mut self) {
        debug!(target: "r3fs_sim", step = self.step, t = self.now_ms, "faults stop; healing");
        self.phase = Phase::Healing { since_step: self.step };
        self.partitions.heal_all();
        for node in 0..self.nodes.len() {
            if !self.nodes[node].up {
                self.restart(node);
            }
        }
        for client in &mut self.clients {
            client.stopped = true;
        }
    }

    // ----- mgmtd -----

    fn mgmtd_receive(&mut self, from: Endpoint, payload: Payload) {
        match payload {
            Payload::Heartbeat { node, version, states } => {
                debug!(target: "r3fs_sim", step = self.step, node, version, ?states, "heartbeat");
                if !self.mgmtd.heartbeat(node, version, self.now_ms, &states) {
                    return debug!(target: "r3fs_sim", step = self.step, node, version, "stale heartbeat refused");
                }
                self.mgmtd_recompute();
                let routings: Vec<ChainRouting> = self
                    .mgmtd
                    .routings()
                    .into_iter()
                    .filter(|r| {
                        self.nodes[node].targets.iter().any(|t| self.targets[t].chain == r.chain)
                    })
                    .collect();
                self.send(Endpoint::Mgmtd, from, Payload::HeartbeatReply { version, routings });
            }
            Payload::RoutingRequest { client } => {
                let routings = self.mgmtd.routings();
                self.send(Endpoint::Mgmtd, Endpoint::Client(client), Payload::Routing { routings });
            }
            other => debug!(target: "r3fs_sim", "mgmtd ignores {}", other.kind()),
        }
    }

    fn mgmtd_recompute(&mut self) {
        let changed = match self.mgmtd.recompute(self.now_ms) {
            Ok(changed) => changed,
            Err(detail) => return self.fail(ViolationKind::Contract, detail),
        };
        for chain in changed {
            self.dirty = true;
            self.stats.chain_versions_published += 1;
            let Some(routing) = self.mgmtd.routing(chain) else { continue };
            debug!(target: "r3fs_sim", step = self.step, t = self.now_ms, %chain, version = %routing.chain_version, targets = ?routing.targets, "chain changed");
            let mut nodes: Vec<usize> =
                self.chain_targets[&chain].iter().map(|t| self.targets[t].node).collect();
            nodes.sort_unstable();
            nodes.dedup();
            for node in nodes {
                let payload = Payload::Routing { routings: vec![routing.clone()] };
                self.send(Endpoint::Mgmtd, Endpoint::Node(node), payload);
            }
        }
    }

    // ----- checks -----

    /// Every target that mgmtd lists as serving (or last-serving) holds every acknowledged write.
    fn check_durability(&mut self) {
        let chains: Vec<ChainId> = self.mgmtd.chain_ids().collect();
        for chain in chains {
            for target in self.mgmtd.must_hold_acked(chain) {
                for &chunk in &self.chain_chunks[&chain] {
                    let committed = self.targets[&target].store.meta(chunk).committed;
                    let check = self.checker.durable_at(target, chunk, &committed);
                    if check.is_err() {
                        return self.record(check);
                    }
                }
            }
        }
    }

    /// Faults stopped and everything is done: all nodes up and rejoined, every target serving at
    /// the chain's current version, every replica idle, no storage op or client operation left.
    fn settled(&self) -> bool {
        self.unsettled_reason().is_empty()
    }

    fn unsettled_reason(&self) -> String {
        if let Some(n) = self.nodes.iter().position(|n| !n.up) {
            return format!("node{n} is down");
        }
        if !self.mgmtd.all_serving() {
            let chains: Vec<String> = self
                .mgmtd
                .routings()
                .iter()
                .map(|r| format!("{} {} {:?}", r.chain, r.chain_version, r.targets))
                .collect();
            return format!("not every target serves: {}", chains.join("; "));
        }
        for (target, host) in &self.targets {
            let version = self.mgmtd.chain(host.chain).map(|c| c.version);
            let Some(replica) = &host.replica else { return format!("{target} has no replica") };
            if host.recovering {
                return format!("{target} is recovering");
            }
            if Some(replica.chain_version()) != version {
                return format!(
                    "{target} is at chain version {} of {:?}",
                    replica.chain_version(),
                    version
                );
            }
            if !replica.is_quiescent() || !host.inflight.is_empty() {
                return format!("{target} is busy");
            }
        }
        if let Some(c) = self.clients.iter().position(|c| c.op.is_some()) {
            return format!("client{c} has an operation in flight");
        }
        String::new()
    }

    /// Every replica of every chain holds the newest committed version of every chunk, and no
    /// pending version.
    fn final_check(&mut self) {
        for (chain, targets) in self.chain_targets.clone() {
            for &chunk in &self.chain_chunks[&chain] {
                let newest = self.checker.newest(chunk).cloned();
                for &target in &targets {
                    let store = &self.targets[&target].store;
                    let meta = store.meta(chunk);
                    if let Some(pending) = meta.pending {
                        return self.fail(
                            ViolationKind::Diverged,
                            format!(
                                "{target} still holds pending chunk {chunk} {} after settling",
                                pending.version
                            ),
                        );
                    }
                    let Some((_, data)) = store.committed(chunk) else {
                        return self.fail(
                            ViolationKind::Contract,
                            format!("{target}: chunk {chunk} fails its checksum"),
                        );
                    };
                    let matches = match &newest {
                        Some(entry) => {
                            meta.committed.digest() == entry.state.digest() && data == entry.data
                        }
                        None => meta.is_absent(),
                    };
                    if !matches {
                        return self.fail(
                            ViolationKind::Diverged,
                            format!(
                                "{target} settled on chunk {chunk} {:?}; the newest committed version is {:?}",
                                meta.committed.digest(),
                                newest.as_ref().map(|e| e.state.digest())
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn draw_profile(config: &SimConfig, rng: &mut SimRng) -> FaultProfile {
    let f = &config.faults;
    if !f.enabled {
        return FaultProfile {
            drop_per_mille: 0,
            corrupt_per_mille: 0,
            delay_spike_per_mille: 0,
            crash_interval_ms: None,
            partition_interval_ms: None,
        };
    }
    // A quarter of the seeds go without each kind of fault, so its absence is covered too.
    let mut level =
        |max: u32| if rng.chance(250) { 0 } else { rng.range(0, u64::from(max)) as u32 };
    let drop_per_mille = level(f.drop_per_mille_max);
    let corrupt_per_mille = level(f.corrupt_per_mille_max);
    let delay_spike_per_mille = level(f.delay_spike_per_mille_max);
    let mut interval = |min: u64| (!rng.chance(250)).then(|| rng.range(min, min * 4));
    FaultProfile {
        drop_per_mille,
        corrupt_per_mille,
        delay_spike_per_mille,
        crash_interval_ms: interval(f.crash_interval_ms_min),
        partition_interval_ms: interval(f.partition_interval_ms_min),
    }
}

/// Flips one payload byte without fixing its checksum, as a bad link would; returns whether the
/// message carried a payload to corrupt.
fn corrupt(payload: &mut Payload) -> bool {
    fn flip(data: &mut Bytes) -> bool {
        if data.is_empty() {
            return false;
        }
        let mut bytes = data.to_vec();
        bytes[0] ^= 0x5a;
        *data = Bytes::from(bytes);
        true
    }
    fn flip_update(update: &mut Update) -> bool {
        match update {
            Update::Write { data, .. } | Update::Replace { data } => flip(data),
            Update::Truncate { .. } | Update::Extend { .. } | Update::Remove => false,
        }
    }
    match payload {
        Payload::Peer { message: PeerMessage::Update(update), .. } => {
            flip_update(&mut update.update)
        }
        Payload::Peer { message: PeerMessage::SyncChunk(sync), .. } => flip(&mut sync.data),
        Payload::Request { request: Request::Write(request), .. } => {
            flip_update(&mut request.update)
        }
        Payload::ReadReply { outcome: ReadOutcome::Data(ok), .. } => flip(&mut ok.data),
        _ => false,
    }
}
