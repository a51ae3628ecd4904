//! The storage daemons: each hosts its targets' replicas, runs their storage ops against
//! [`SimStore`]s, carries out their outputs, follows mgmtd's routing and heartbeats, and holds the
//! lease that makes a daemon cut off from mgmtd stop serving clients. Also where the checks that
//! need a replica's view run: CRAQ's commit rule when a commit is issued, and the committed
//! history when a serving replica's store changes.

use super::*;

impl World {
    // ----- storage -----

    /// Runs one op against the target's store and records what it changed for the checks.
    pub(super) fn execute(&mut self, target: TargetId, op: &InflightOp) -> StorageResult {
        let host = self.targets.get_mut(&target).expect("hosted target");
        let mut result = host.store.execute(&op.request);
        let changed = match (&op.request, &result) {
            (StorageOp::Commit { chunk, .. }, StorageResult::Meta(_))
            | (StorageOp::SyncReplace { chunk, .. }, StorageResult::Meta(_)) => Some(*chunk),
            _ => None,
        };
        if self.config.plant_bug == Some(PlantedBug::ServePending)
            && let (StorageOp::Read { .. }, StorageResult::Data { meta, .. }) =
                (&op.request, &mut result)
        {
            meta.pending = None;
        }
        if let Some(chunk) = changed {
            self.dirty = true;
            // A resync replace lands only on a syncing target, which serves no reads: what it
            // holds is checked when it starts serving (`expose`) and when the run settles.
            debug!(
                target: "r3fs_sim",
                step = self.step,
                "{target} {} chunk {chunk}: committed {:?}",
                if matches!(op.request, StorageOp::Commit { .. }) { "commit" } else { "sync-replace" },
                self.targets[&target].store.meta(chunk).committed.digest()
            );
            if matches!(op.request, StorageOp::Commit { .. }) {
                let serving = self.targets[&target]
                    .replica
                    .as_ref()
                    .and_then(|r| r.view())
                    .is_some_and(View::serves_reads);
                if op.issued_serving || serving {
                    self.visible(target, chunk);
                }
            }
        }
        result
    }

    /// `target` serves reads and holds `chunk` committed: readers can see that version, so it
    /// belongs to the chain's committed history.
    fn visible(&mut self, target: TargetId, chunk: ChunkId) {
        let Some((meta, data)) = self.targets[&target].store.committed(chunk) else {
            return self.fail(
                ViolationKind::Contract,
                format!("{target}: committed chunk {chunk} fails its checksum"),
            );
        };
        if meta.committed.version.0 > 0 {
            debug!(target: "r3fs_sim", step = self.step, "{target} shows chunk {chunk} {:?}", meta.committed.digest());
            let epoch = self.dedup_epoch.get(&self.targets[&target].chain).copied().unwrap_or(0);
            let check = self.checker.visible(chunk, meta.committed, data, epoch);
            self.record(check);
        }
    }

    /// A replica's view changed. If it serves reads now (a synced target that starts serving,
    /// a last-serving one back), everything it holds committed is visible.
    fn expose(&mut self, target: TargetId) {
        let host = &self.targets[&target];
        if !host.replica.as_ref().and_then(|r| r.view()).is_some_and(View::serves_reads) {
            return;
        }
        for chunk in self.chain_chunks[&host.chain].clone() {
            self.visible(target, chunk);
        }
    }

    /// CRAQ's commit rule, checked where it is applied: a replica with a successor commits a
    /// version only after that successor acknowledged it, which it does once it committed it.
    fn check_commit_rule(&mut self, target: TargetId, view: Option<View>, request: &StorageOp) {
        let StorageOp::Commit { chunk, version } = request else { return };
        let Some(successor) = view.and_then(|v| v.successor) else { return };
        let Some(pending) = self.targets[&target].store.meta(*chunk).pending else { return };
        let theirs = self.targets[&successor.target].store.meta(*chunk).committed;
        let holds = theirs.version > *version
            || (theirs.version == *version && theirs.digest() == pending.digest());
        if !holds {
            self.fail(
                ViolationKind::CommitBeforeSuccessor,
                format!(
                    "{target} commits chunk {chunk} {version} while its successor {} holds {:?}",
                    successor.target,
                    theirs.digest()
                ),
            );
        }
    }

    pub(super) fn storage_done(&mut self, target: TargetId, generation: u64, op: OpId) {
        let host = self.targets.get_mut(&target).expect("hosted target");
        let Some(inflight) = host.inflight.remove(&(generation, op)) else {
            return; // resolved by a crash
        };
        let result = self.execute(target, &inflight);
        let host = &self.targets[&target];
        if host.generation == generation && host.replica.is_some() {
            self.drive(target, Input::StorageDone { op, result });
        }
    }

    // ----- storage daemons -----

    /// Feeds one input to a target's replica and carries out its outputs (and whatever inputs a
    /// planted bug fabricates in reply).
    pub(super) fn drive(&mut self, target: TargetId, input: Input) {
        let mut inputs = VecDeque::from([input]);
        let mut replace = false;
        while let Some(input) = inputs.pop_front() {
            let Some(host) = self.targets.get_mut(&target) else { return };
            let Some(replica) = host.replica.as_mut() else { return };
            let view_before = replica.view().copied();
            replica.handle(input);
            let outputs = replica.drain_outputs();
            let view = replica.view().copied();
            if view != view_before {
                self.expose(target);
            }
            for output in outputs {
                self.on_output(target, output, view, &mut inputs, &mut replace);
            }
        }
        if replace {
            self.replace_replica(target);
        }
    }

    fn on_output(
        &mut self,
        target: TargetId,
        output: Output,
        view: Option<View>,
        inputs: &mut VecDeque<Input>,
        replace: &mut bool,
    ) {
        let node = self.node_of(target);
        match output {
            Output::Send { to, message } => {
                if self.config.plant_bug == Some(PlantedBug::EarlyCommit)
                    && view.is_some_and(|v| v.is_head())
                    && let PeerMessage::Update(update) = &message
                {
                    inputs.push_back(Input::Peer {
                        from: to,
                        message: PeerMessage::Ack(UpdateAck {
                            chain: update.chain,
                            chain_version: update.chain_version,
                            chunk: update.chunk,
                            version: update.version,
                            committed: update.expected,
                        }),
                    });
                }
                if self.config.plant_bug == Some(PlantedBug::SkipResync)
                    && let PeerMessage::SyncChunk(sync) = &message
                {
                    inputs.push_back(Input::Peer {
                        from: to,
                        message: PeerMessage::SyncAck {
                            chain: sync.chain,
                            chain_version: sync.chain_version,
                            chunk: sync.chunk,
                        },
                    });
                    return;
                }
                let Some(to_host) = self.targets.get(&to) else { return };
                let to_node = to_host.node;
                self.send(
                    Endpoint::Node(node),
                    Endpoint::Node(to_node),
                    Payload::Peer { from: target, to, message },
                );
            }
            Output::Storage { op, request } => {
                let t = &self.config.timing;
                let delay = self.rng.range(t.storage_delay_ms_min, t.storage_delay_ms_max);
                let host = self.targets.get_mut(&target).expect("hosted target");
                let generation = host.generation;
                let issued_serving = view.is_some_and(|v| v.serves_reads());
                self.check_commit_rule(target, view, &request);
                let host = self.targets.get_mut(&target).expect("hosted target");
                host.inflight.insert((generation, op), InflightOp { request, issued_serving });
                self.schedule(delay, Event::StorageDone { target, generation, op });
            }
            Output::WriteReply { token, outcome } => {
                let Some(info) = self.tokens.get(&token).cloned() else { return };
                if let (WriteOutcome::Committed(ok), OpKind::Write { chunk, tag, .. }) =
                    (&outcome, &info.kind)
                {
                    self.stats.acks_checked += 1;
                    let check = self.checker.acknowledged(*chunk, *tag, ok);
                    self.record(check);
                    self.dirty = true;
                }
                let payload = Payload::WriteReply { client: info.client, token, outcome };
                self.send(Endpoint::Node(node), Endpoint::Client(info.client), payload);
            }
            Output::ReadReply { token, outcome } => {
                let Some(info) = self.tokens.get(&token).cloned() else { return };
                if let (
                    ReadOutcome::Data(ok),
                    OpKind::Read { chunk, offset_bytes, length_bytes, .. },
                ) = (&outcome, &info.kind)
                {
                    let check =
                        self.checker.read_served(target, *chunk, *offset_bytes, *length_bytes, ok);
                    self.record(check);
                }
                let payload = Payload::ReadReply { client: info.client, token, outcome };
                self.send(Endpoint::Node(node), Endpoint::Client(info.client), payload);
            }
            Output::SyncDone { chain_version } => {
                debug!(target: "r3fs_sim", step = self.step, %target, %chain_version, "sync done");
                self.stats.syncs_done += 1;
                let host = self.targets.get_mut(&target).expect("hosted target");
                host.claims_up_to_date = Some(chain_version);
            }
            Output::ChunkCorrupt { chunk }
            | Output::ChunkRepaired { chunk, .. }
            | Output::ChunkUnrepairable { chunk } => self.fail(
                ViolationKind::Contract,
                format!("{target} reports chunk {chunk} corrupt, but no corruption was injected"),
            ),
            Output::Fenced { reason } => {
                self.stats.replicas_fenced += 1;
                debug!(target: "r3fs_sim", step = self.step, %target, ?reason, "fenced");
                match reason {
                    FenceReason::Routing { .. } => *replace = true,
                    FenceReason::Storage(error) => self.fail(
                        ViolationKind::Contract,
                        format!("{target} fenced by a storage error: {error}"),
                    ),
                    FenceReason::Contract(detail) => self.fail(
                        ViolationKind::Contract,
                        format!("{target} fenced: storage broke its contract: {detail}"),
                    ),
                }
            }
        }
    }

    /// A replica fenced by routing (mgmtd took its target out) is replaced by a fresh one that
    /// rejoins through resync, as engine/r3fs-storage does: its store keeps everything.
    pub(super) fn replace_replica(&mut self, target: TargetId) {
        let replica_config = self.config.replica_config();
        let now_ms = self.now_ms;
        let host = self.targets.get_mut(&target).expect("hosted target");
        let mut replica = Replica::new(replica_config, target, host.chain)
            .expect("SimConfig::validate checked the replica config");
        replica.handle(Input::Tick { now_ms });
        host.replica = Some(replica);
        host.generation += 1;
        host.claims_up_to_date = None;
        *self.dedup_epoch.entry(host.chain).or_default() += 1;
        if let Some(routing) = host.routing.clone() {
            self.drive(target, Input::Routing(routing));
        }
    }

    /// The daemon received a routing for `target`'s chain.
    pub(super) fn daemon_routing(&mut self, target: TargetId, routing: ChainRouting) {
        let host = self.targets.get_mut(&target).expect("hosted target");
        if host.replica.is_none()
            || host.routing.as_ref().is_some_and(|r| r.chain_version >= routing.chain_version)
        {
            return;
        }
        host.routing = Some(routing.clone());
        let state = routing.state_of(target);
        let was_serving = host
            .replica
            .as_ref()
            .and_then(|r| r.view())
            .is_some_and(|v| v.state == Some(PublicTargetState::Serving));
        // Serving never turns into syncing directly: the replica missed the chain version that
        // took it out. r3fs-craq fences itself then (and the daemon replaces it, below through
        // `Output::Fenced`); the planted bug hides the jump from the replica by showing it its
        // old state, which is what craq did before it checked (it committed its in-flight
        // write alone as the syncing tail).
        let hidden_jump = self.config.plant_bug == Some(PlantedBug::MissedOffline)
            && was_serving
            && state == Some(PublicTargetState::Syncing);
        let handed = if hidden_jump {
            debug!(target: "r3fs_sim", step = self.step, %target, "planted bug: the jump to syncing is hidden from the replica");
            let mut shown = routing.clone();
            for t in shown.targets.iter_mut().filter(|t| t.target == target) {
                t.state = PublicTargetState::Serving;
            }
            shown
        } else {
            routing.clone()
        };
        let host = self.targets.get_mut(&target).expect("hosted target");
        if host.recovering {
            if matches!(state, Some(PublicTargetState::Serving | PublicTargetState::Syncing)) {
                return; // keep reporting offline until mgmtd took the target out
            }
            host.recovering = false;
            debug!(target: "r3fs_sim", step = self.step, %target, ?state, "rejoins after restart");
        }
        match state {
            Some(PublicTargetState::Serving) => {
                host.claims_up_to_date = Some(routing.chain_version);
            }
            Some(PublicTargetState::Syncing) => {}
            _ => host.claims_up_to_date = None,
        }
        self.drive(target, Input::Routing(handed));
    }

    pub(super) fn send_heartbeat(&mut self, node: usize) {
        let states: Vec<TargetReport> = self.nodes[node]
            .targets
            .iter()
            .map(|&target| {
                let host = &self.targets[&target];
                let seen = host.routing.as_ref().map_or(ChainVersion(0), |r| r.chain_version);
                let (state, claimed_at) = match host.claims_up_to_date {
                    _ if host.recovering => (LocalTargetState::Offline, seen),
                    Some(at) => (LocalTargetState::UpToDate, at),
                    None => (LocalTargetState::Online, seen),
                };
                TargetReport { target, state, claimed_at }
            })
            .collect();
        self.nodes[node].heartbeat_version += 1;
        let version = self.nodes[node].heartbeat_version;
        self.nodes[node].heartbeats_sent_ms.insert(version, self.now_ms);
        let payload = Payload::Heartbeat { node, version, states };
        self.send(Endpoint::Node(node), Endpoint::Mgmtd, payload);
    }

    pub(super) fn node_receive(&mut self, node: usize, payload: Payload) {
        match payload {
            Payload::Peer { from, to, message } => {
                if self.targets.get(&to).is_some_and(|h| h.node == node) {
                    self.drive(to, Input::Peer { from, message });
                }
            }
            Payload::Request { client, to, token, request } => {
                if self.targets.get(&to).is_none_or(|h| h.node != node) {
                    return;
                }
                let leased = self.now_ms <= self.nodes[node].lease_until_ms;
                let unleased_reads = self.config.plant_bug == Some(PlantedBug::UnleasedReads);
                if !leased && (matches!(request, Request::Write(_)) || !unleased_reads) {
                    return self.refuse_fenced(node, client, to, token, &request);
                }
                let input = match request {
                    Request::Write(request) => Input::ClientWrite { token, request },
                    Request::Read(request) => Input::ClientRead { token, request },
                };
                self.drive(to, input);
            }
            Payload::HeartbeatReply { version, routings } => {
                self.node_routings(node, routings);
                let n = &mut self.nodes[node];
                if let Some(sent_ms) = n.heartbeats_sent_ms.get(&version).copied() {
                    let lease = sent_ms + self.config.timing.heartbeat_timeout_ms / 2;
                    n.lease_until_ms = n.lease_until_ms.max(lease);
                }
                n.heartbeats_sent_ms.retain(|v, _| *v > version);
            }
            Payload::Routing { routings } => self.node_routings(node, routings),
            other => debug!(target: "r3fs_sim", "node{node} ignores {}", other.kind()),
        }
    }

    /// The daemon lost its lease: it answers clients itself, as r3fs-storage does.
    fn refuse_fenced(
        &mut self,
        node: usize,
        client: usize,
        target: TargetId,
        token: ReplyToken,
        request: &Request,
    ) {
        self.stats.requests_fenced += 1;
        let chain_version =
            self.targets[&target].replica.as_ref().map_or(ChainVersion(0), Replica::chain_version);
        let refusal = Refusal { code: ErrorCode::Fenced, chain_version };
        let payload = match request {
            Request::Write(_) => {
                Payload::WriteReply { client, token, outcome: WriteOutcome::Refused(refusal) }
            }
            Request::Read(_) => {
                Payload::ReadReply { client, token, outcome: ReadOutcome::Refused(refusal) }
            }
        };
        self.send(Endpoint::Node(node), Endpoint::Client(client), payload);
    }

    fn node_routings(&mut self, node: usize, routings: Vec<ChainRouting>) {
        for routing in routings {
            let mine: Vec<TargetId> = self.nodes[node]
                .targets
                .iter()
                .copied()
                .filter(|t| self.targets[t].chain == routing.chain)
                .collect();
            for target in mine {
                self.daemon_routing(target, routing.clone());
            }
        }
    }
}
