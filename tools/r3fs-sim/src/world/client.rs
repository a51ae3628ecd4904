//! The clients: each runs one operation at a time (a write with a fresh tag, or a read of a
//! random range) against its cached routing, retries on timeouts and refusals like r3fs-client
//! (refreshing routing when the refusal says it is stale), and checks what it gets back against
//! what it observed before (its session guarantees).

use super::*;

impl World {
    // ----- clients -----

    pub(super) fn client_pause(&mut self, client: usize, delay_max_ms: u64) {
        let delay = self.rng.range(1, delay_max_ms.max(1));
        let c = &mut self.clients[client];
        c.generation += 1;
        let generation = c.generation;
        self.schedule(delay, Event::ClientWake { client, generation });
    }

    pub(super) fn client_wake(&mut self, client: usize) {
        if self.clients[client].op.is_none() {
            if self.clients[client].stopped {
                return;
            }
            self.client_new_op(client);
        }
        self.client_attempt(client);
    }

    fn client_new_op(&mut self, client: usize) {
        let chain = ChainId(self.rng.index(self.config.chains) as u32 + 1);
        let chunks = &self.chain_chunks[&chain];
        let chunk = chunks[self.rng.index(chunks.len())];
        let size_max = self.config.chunk_size_bytes_max;
        let kind = if self.rng.chance(550) {
            let write_max = self.config.write_bytes_max;
            let update = match self.rng.below(20) {
                0..=13 => {
                    let len = self.rng.range(1, u64::from(write_max)) as u32;
                    let offset = self.rng.range(0, u64::from(size_max - len)) as u32;
                    Update::Write {
                        offset_bytes: offset,
                        data: Bytes::from(self.rng.bytes(len as usize)),
                    }
                }
                14 => {
                    Update::Truncate { length_bytes: self.rng.range(0, u64::from(size_max)) as u32 }
                }
                15 => {
                    Update::Extend { length_bytes: self.rng.range(0, u64::from(size_max)) as u32 }
                }
                16..=18 => {
                    let len = self.rng.range(0, u64::from(write_max)) as usize;
                    Update::Replace { data: Bytes::from(self.rng.bytes(len)) }
                }
                _ => Update::Remove,
            };
            let c = &mut self.clients[client];
            let tag = UpdateTag { client: c.id, channel: 0, seq: c.next_seq };
            c.next_seq += 1;
            self.checker.issue(tag, chunk, update.clone());
            self.stats.writes_issued += 1;
            OpKind::Write { chain, chunk, update, tag }
        } else {
            let offset_bytes = self.rng.range(0, u64::from(size_max / 2)) as u32;
            let length_bytes = self.rng.range(1, u64::from(size_max)) as u32;
            OpKind::Read { chain, chunk, offset_bytes, length_bytes }
        };
        let c = &mut self.clients[client];
        let seen_before = c.seen.get(&chunk).copied().unwrap_or_default();
        let serial = c.next_serial;
        c.next_serial += 1;
        c.op = Some(ClientOp { serial, kind, attempts: 0, seen_before });
    }

    fn client_attempt(&mut self, client: usize) {
        let attempts_max = self.config.client_attempts_max;
        let c = &mut self.clients[client];
        let Some(op) = c.op.as_mut() else { return };
        op.attempts += 1;
        if op.attempts > attempts_max {
            match op.kind {
                OpKind::Write { .. } => self.stats.writes_abandoned += 1,
                OpKind::Read { .. } => self.stats.reads_abandoned += 1,
            }
            return self.client_finish(client);
        }
        let kind = op.kind.clone();
        let serial = op.serial;
        let Some(routing) = c.routing.get(&kind.chain()).cloned() else {
            return self.client_retry(client, true);
        };
        let target = match &kind {
            OpKind::Write { .. } => routing.head(),
            OpKind::Read { .. } => {
                let readable: Vec<TargetId> = routing.readable().collect();
                (!readable.is_empty()).then(|| readable[self.rng.index(readable.len())])
            }
        };
        let Some(target) = target else { return self.client_retry(client, true) };
        let token = ReplyToken(self.next_token);
        self.next_token += 1;
        self.tokens.insert(token, TokenInfo { client, serial, kind: kind.clone() });
        let request = match kind {
            OpKind::Write { chain, chunk, update, tag } => Request::Write(WriteRequest {
                chain,
                chain_version: routing.chain_version,
                chunk,
                payload_checksum: update.payload_checksum(),
                update,
                tag,
            }),
            OpKind::Read { chain, chunk, offset_bytes, length_bytes } => {
                Request::Read(ReadRequest {
                    chain,
                    chain_version: routing.chain_version,
                    chunk,
                    offset_bytes,
                    length_bytes,
                })
            }
        };
        let node = self.node_of(target);
        let payload = Payload::Request { client, to: target, token, request };
        self.send(Endpoint::Client(client), Endpoint::Node(node), payload);
        let c = &mut self.clients[client];
        c.generation += 1;
        let generation = c.generation;
        self.schedule(
            self.config.timing.client_timeout_ms,
            Event::ClientWake { client, generation },
        );
    }

    /// Retries the current operation after a backoff, first asking mgmtd for fresh routing.
    fn client_retry(&mut self, client: usize, refresh_routing: bool) {
        if refresh_routing {
            self.send(
                Endpoint::Client(client),
                Endpoint::Mgmtd,
                Payload::RoutingRequest { client },
            );
        }
        self.client_pause(client, self.config.timing.client_backoff_ms_max);
    }

    fn client_finish(&mut self, client: usize) {
        self.clients[client].op = None;
        self.client_pause(client, self.config.timing.client_think_ms_max);
    }

    pub(super) fn client_receive(&mut self, client: usize, payload: Payload) {
        match payload {
            Payload::Routing { routings } => {
                let c = &mut self.clients[client];
                for routing in routings {
                    let newer = c
                        .routing
                        .get(&routing.chain)
                        .is_none_or(|r| r.chain_version < routing.chain_version);
                    if newer {
                        c.routing.insert(routing.chain, routing);
                    }
                }
            }
            Payload::WriteReply { token, outcome, .. } => {
                if let Some(op) = self.client_current(client, token) {
                    self.client_write_outcome(client, op, outcome);
                }
            }
            Payload::ReadReply { token, outcome, .. } => {
                if let Some(op) = self.client_current(client, token) {
                    self.client_read_outcome(client, op, outcome);
                }
            }
            other => debug!(target: "r3fs_sim", "client{client} ignores {}", other.kind()),
        }
    }

    /// The client's current operation if `token` belongs to it (any attempt of it); late replies
    /// to finished operations are dropped.
    fn client_current(&self, client: usize, token: ReplyToken) -> Option<(OpKind, ChunkVersion)> {
        let info = self.tokens.get(&token)?;
        let op = self.clients[client].op.as_ref()?;
        (info.client == client && info.serial == op.serial)
            .then(|| (op.kind.clone(), op.seen_before))
    }

    fn client_observe(&mut self, client: usize, chunk: ChunkId, version: ChunkVersion) {
        let seen = self.clients[client].seen.entry(chunk).or_default();
        *seen = (*seen).max(version);
    }

    fn client_write_outcome(
        &mut self,
        client: usize,
        (kind, seen_before): (OpKind, ChunkVersion),
        outcome: WriteOutcome,
    ) {
        let chunk = kind.chunk();
        match outcome {
            WriteOutcome::Committed(ok) => {
                if ok.version <= seen_before {
                    let id = self.clients[client].id;
                    self.fail(
                        ViolationKind::StaleRead,
                        format!(
                            "{id}'s write to chunk {chunk} was acknowledged as {}, but the client had already observed {seen_before}",
                            ok.version
                        ),
                    );
                }
                self.stats.writes_acked += 1;
                self.client_observe(client, chunk, ok.version);
                self.client_finish(client);
            }
            WriteOutcome::Refused(refusal) => match refusal.code {
                ErrorCode::StaleChainVersion
                | ErrorCode::NotHead
                | ErrorCode::TargetNotServing
                | ErrorCode::ChainNotFound
                | ErrorCode::Fenced => self.client_retry(client, true),
                ErrorCode::Busy
                | ErrorCode::ChunkBusy
                | ErrorCode::ChecksumMismatch
                | ErrorCode::Internal => self.client_retry(client, false),
                _ => {
                    debug!(target: "r3fs_sim", step = self.step, client, code = %refusal.code, "write refused for good");
                    self.stats.writes_refused += 1;
                    self.client_finish(client);
                }
            },
        }
    }

    fn client_read_outcome(
        &mut self,
        client: usize,
        (kind, seen_before): (OpKind, ChunkVersion),
        outcome: ReadOutcome,
    ) {
        let chunk = kind.chunk();
        let id = self.clients[client].id;
        match outcome {
            ReadOutcome::Data(ok) => {
                if crc32c::crc32c(&ok.data) != ok.checksum {
                    return self.client_retry(client, false); // corrupted in flight
                }
                if ok.version < seen_before {
                    self.fail(
                        ViolationKind::StaleRead,
                        format!(
                            "{id} read chunk {chunk} at {} after it had observed {seen_before}",
                            ok.version
                        ),
                    );
                }
                self.stats.reads_checked += 1;
                self.client_observe(client, chunk, ok.version);
                self.client_finish(client);
            }
            ReadOutcome::Refused(refusal) => match refusal.code {
                ErrorCode::ChunkNotFound => {
                    if !self.checker.removed_since(chunk, seen_before) {
                        self.fail(
                            ViolationKind::StaleRead,
                            format!(
                                "{id} was told chunk {chunk} does not exist after it had observed {seen_before}, and no removal was committed since"
                            ),
                        );
                    }
                    self.stats.reads_checked += 1;
                    self.client_finish(client);
                }
                ErrorCode::StaleChainVersion
                | ErrorCode::NotHead
                | ErrorCode::TargetNotServing
                | ErrorCode::ChainNotFound
                | ErrorCode::Fenced => self.client_retry(client, true),
                _ => self.client_retry(client, false),
            },
        }
    }
}
