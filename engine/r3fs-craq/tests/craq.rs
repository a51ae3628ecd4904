//! CRAQ replica behaviour: step-by-step cases on a hand-driven chain, then seeded simulations with
//! random interleavings, faults and chain changes. Every simulation prints its seed first.

mod harness;

use harness::*;
use r3fs_craq::{
    ChunkStore, Input, Output, PeerMessage, ReadOutcome, RefuseReason, Update, WriteOutcome,
};
use r3fs_types::{ChainVersion, ChunkVersion, ErrorCode, PublicTargetState::*};

fn committed(outcome: Option<WriteOutcome>) -> r3fs_craq::WriteOk {
    match outcome {
        Some(WriteOutcome::Committed(ok)) => ok,
        other => panic!("expected a committed write, got {other:?}"),
    }
}

fn refused_code(outcome: &ReadOutcome) -> Option<ErrorCode> {
    match outcome {
        ReadOutcome::Refused(r) => Some(r.code),
        ReadOutcome::Data(_) => None,
    }
}

fn data(outcome: &ReadOutcome) -> (ChunkVersion, Vec<u8>) {
    match outcome {
        ReadOutcome::Data(ok) => (ok.version, ok.data.to_vec()),
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn write_through_head_reads_back_from_every_replica() {
    let mut m = Manual::new(3);
    let c = chunk(1);
    let t =
        m.write(target(1), 1, c, Update::Write { offset_bytes: 3, data: bytes(b"abc") }, tag(1, 1));
    m.deliver_all();
    let ok = committed(m.take_write(t));
    assert_eq!(ok.version, ChunkVersion(1));
    for r in 1..=3 {
        assert_eq!(data(&m.read(target(r), 1, c)), (ChunkVersion(1), b"\0\0\0abc".to_vec()));
    }
}

#[test]
fn stale_chain_versions_are_refused_with_the_current_one() {
    let mut m = Manual::new(2);
    let routing = r3fs_craq::ChainRouting {
        chain: CHAIN,
        chain_version: ChainVersion(5),
        targets: vec![
            r3fs_craq::ChainTarget { target: target(1), state: Serving },
            r3fs_craq::ChainTarget { target: target(2), state: Serving },
        ],
    };
    m.handle(target(1), Input::Routing(routing.clone()));
    m.handle(target(2), Input::Routing(routing));
    let c = chunk(1);
    let t = m.write(target(1), 4, c, Update::Truncate { length_bytes: 1 }, tag(1, 1));
    match m.take_write(t) {
        Some(WriteOutcome::Refused(r)) => {
            assert_eq!((r.code, r.chain_version), (ErrorCode::StaleChainVersion, ChainVersion(5)))
        }
        other => panic!("{other:?}"),
    }
    let read = m.read(target(2), 6, c);
    assert!(
        matches!(read, ReadOutcome::Refused(r) if r.code == ErrorCode::StaleChainVersion && r.chain_version == ChainVersion(5))
    );
    let t = m.write(target(2), 5, c, Update::Truncate { length_bytes: 1 }, tag(1, 1));
    assert!(
        matches!(m.take_write(t), Some(WriteOutcome::Refused(r)) if r.code == ErrorCode::NotHead)
    );

    // A forwarded update at another chain version is refused with the receiver's version.
    let t = m.write(target(1), 5, c, Update::Truncate { length_bytes: 2 }, tag(1, 1));
    let (from, to, PeerMessage::Update(mut update)) = m.messages.pop_front().expect("forwarded")
    else {
        panic!("expected an update")
    };
    update.chain_version = ChainVersion(4);
    m.handle(to, Input::Peer { from, message: PeerMessage::Update(update) });
    match m.messages.pop_front() {
        Some((_, _, PeerMessage::Refused(r))) => {
            assert_eq!(
                (r.reason, r.chain_version),
                (RefuseReason::StaleChainVersion, ChainVersion(5))
            )
        }
        other => panic!("{other:?}"),
    }
    // The head resends on its timer and the write completes.
    m.handle(target(1), Input::Tick { now_ms: 10_000 });
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(1));
}

#[test]
fn a_chunk_with_a_pending_version_is_never_served() {
    let mut m = Manual::new(2);
    let (head, tail, c) = (target(1), target(2), chunk(1));
    let t = m.write(head, 1, c, Update::Replace { data: bytes(b"one") }, tag(1, 1));
    m.deliver_all();
    committed(m.take_write(t));

    // v2 is pending at the head, not yet forwarded: the head refuses, the tail serves v1.
    let t = m.write(head, 1, c, Update::Replace { data: bytes(b"two") }, tag(1, 2));
    assert_eq!(refused_code(&m.read(head, 1, c)), Some(ErrorCode::ChunkNotCommitted));
    assert_eq!(data(&m.read(tail, 1, c)), (ChunkVersion(1), b"one".to_vec()));

    // The tail writes its pending copy but has not committed: it refuses too.
    m.hold_storage.insert(tail);
    m.deliver_one();
    assert!(m.complete_one(tail), "get meta");
    assert!(m.complete_one(tail), "write pending");
    assert_eq!(refused_code(&m.read_held(tail, c)), Some(ErrorCode::ChunkNotCommitted));
    assert!(m.complete_one(tail), "commit");
    m.hold_storage.remove(&tail);

    // Committed at the tail, the ack not yet at the head: the tail serves v2, the head refuses.
    assert_eq!(data(&m.read(tail, 1, c)), (ChunkVersion(2), b"two".to_vec()));
    assert_eq!(refused_code(&m.read(head, 1, c)), Some(ErrorCode::ChunkNotCommitted));
    assert!(m.take_write(t).is_none(), "no answer before the head commits");
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(2));
    assert_eq!(data(&m.read(head, 1, c)), (ChunkVersion(2), b"two".to_vec()));
}

trait ReadHeld {
    fn read_held(&mut self, t: r3fs_types::TargetId, c: r3fs_types::ChunkId) -> ReadOutcome;
}

impl ReadHeld for Manual {
    /// A read on a target whose storage is held: completes just the read's op.
    fn read_held(&mut self, t: r3fs_types::TargetId, c: r3fs_types::ChunkId) -> ReadOutcome {
        let token = self.token();
        let request = r3fs_craq::ReadRequest {
            chain: CHAIN,
            chain_version: ChainVersion(1),
            chunk: c,
            offset_bytes: 0,
            length_bytes: CHUNK_SIZE_MAX,
        };
        self.handle(t, Input::ClientRead { token, request });
        let ops = self.held.get_mut(&t).expect("held");
        let (op, request) = ops.pop().expect("the read op is the newest");
        let result = r3fs_craq::execute(&mut self.nodes.get_mut(&t).expect("node").1, &request);
        self.handle(t, Input::StorageDone { op, result });
        self.take_read(token).expect("answered")
    }
}

#[test]
fn retried_writes_apply_once() {
    let mut m = Manual::new(3);
    let c = chunk(1);
    let update = Update::Write { offset_bytes: 0, data: bytes(b"x") };
    // The original and two retries while it is in flight: one update, three identical answers.
    let t1 = m.write(target(1), 1, c, update.clone(), tag(7, 1));
    let t2 = m.write(target(1), 1, c, update.clone(), tag(7, 1));
    m.deliver_one();
    let t3 = m.write(target(1), 1, c, update.clone(), tag(7, 1));
    m.deliver_all();
    let ok = committed(m.take_write(t1));
    assert_eq!(committed(m.take_write(t2)), ok);
    assert_eq!(committed(m.take_write(t3)), ok);
    // A retry after the commit is answered from the dedup table.
    let t4 = m.write(target(1), 1, c, update.clone(), tag(7, 1));
    assert_eq!(committed(m.take_write(t4)), ok);
    assert!(m.messages.is_empty(), "nothing forwarded for a duplicate");
    for r in 1..=3 {
        assert_eq!(
            r3fs_craq::ChunkStore::meta(&m.nodes[&target(r)].1, c).expect("meta").committed.version,
            ChunkVersion(1)
        );
    }
    // Once the channel moved on, the old write is a superseded duplicate.
    let t5 = m.write(target(1), 1, c, update.clone(), tag(7, 2));
    m.deliver_all();
    assert_eq!(committed(m.take_write(t5)).version, ChunkVersion(2));
    let t6 = m.write(target(1), 1, c, update, tag(7, 1));
    assert!(
        matches!(m.take_write(t6), Some(WriteOutcome::Refused(r)) if r.code == ErrorCode::InvalidArgument)
    );
}

#[test]
fn corrupted_payloads_are_refused_at_every_hop() {
    let mut m = Manual::new(2);
    let c = chunk(1);
    let token = m.token();
    let update = Update::Replace { data: bytes(b"data") };
    let request = r3fs_craq::WriteRequest {
        chain: CHAIN,
        chain_version: ChainVersion(1),
        chunk: c,
        payload_checksum: update.payload_checksum() ^ 1,
        update: update.clone(),
        tag: tag(1, 1),
    };
    m.handle(target(1), Input::ClientWrite { token, request });
    assert!(
        matches!(m.take_write(token), Some(WriteOutcome::Refused(r)) if r.code == ErrorCode::ChecksumMismatch)
    );

    let t = m.write(target(1), 1, c, update, tag(1, 1));
    let (from, to, PeerMessage::Update(mut forwarded)) = m.messages.pop_front().expect("forwarded")
    else {
        panic!("expected an update")
    };
    forwarded.update = Update::Replace { data: bytes(b"dat!") };
    m.handle(to, Input::Peer { from, message: PeerMessage::Update(forwarded) });
    assert!(matches!(
        m.messages.front(),
        Some((_, _, PeerMessage::Refused(r))) if r.reason == RefuseReason::ChecksumMismatch
    ));
    assert!(m.nodes[&target(2)].1.meta(c).expect("meta").is_absent(), "nothing applied");
    m.deliver_all();
    m.handle(target(1), Input::Tick { now_ms: 10_000 });
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(1));

    // A chunk corrupted on disk is refused on read and reported.
    assert!(m.nodes.get_mut(&target(2)).expect("node").1.corrupt_committed(c));
    assert_eq!(refused_code(&m.read(target(2), 1, c)), Some(ErrorCode::ChunkCorrupt));
    assert!(
        m.replies.iter().any(|(_, o)| matches!(o, Output::ChunkCorrupt { chunk } if *chunk == c))
    );
}

#[test]
fn a_chunk_corrupted_on_disk_is_repaired_from_a_peer_at_the_same_version() {
    let mut m = Manual::new(3);
    let c = chunk(1);
    let t = m.write(target(1), 1, c, Update::Replace { data: bytes(b"first") }, tag(1, 1));
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(1));
    let t = m.write(target(1), 1, c, Update::Replace { data: bytes(b"good data") }, tag(1, 2));
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(2));

    // The middle replica's committed bytes rot: the read is refused (the client reads another
    // replica) and the replica fetches a verified copy from a peer.
    assert!(m.nodes.get_mut(&target(2)).expect("node").1.corrupt_committed(c));
    assert_eq!(refused_code(&m.read(target(2), 1, c)), Some(ErrorCode::ChunkCorrupt));
    assert!(
        m.messages.iter().any(|(from, to, msg)| *from == target(2)
            && *to == target(1)
            && matches!(msg, PeerMessage::FetchChunk { .. })),
        "the predecessor is asked first: {:?}",
        m.messages
    );
    m.deliver_all();
    assert!(m.replies.iter().any(|(t, o)| *t == target(2)
        && matches!(o, Output::ChunkRepaired { chunk, from } if *chunk == c && *from == target(1))));
    assert_eq!(data(&m.read(target(2), 1, c)), (ChunkVersion(2), b"good data".to_vec()));
    assert_eq!(m.nodes[&target(2)].0.stats().chunks_repaired, 1);

    // Writes go on through the repaired replica.
    let t =
        m.write(target(1), 1, c, Update::Write { offset_bytes: 0, data: bytes(b"G") }, tag(1, 3));
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(3));
    for r in 1..=3 {
        assert_eq!(data(&m.read(target(r), 1, c)), (ChunkVersion(3), b"Good data".to_vec()));
    }
}

#[test]
fn a_write_onto_a_corrupt_base_waits_for_the_repair() {
    let mut m = Manual::new(2);
    let c = chunk(1);
    let t = m.write(target(1), 1, c, Update::Replace { data: bytes(b"base bytes") }, tag(1, 1));
    m.deliver_all();
    committed(m.take_write(t));
    // The head's committed copy is corrupt; a partial write needs it as its base.
    assert!(m.nodes.get_mut(&target(1)).expect("node").1.corrupt_committed(c));
    let t =
        m.write(target(1), 1, c, Update::Write { offset_bytes: 0, data: bytes(b"B") }, tag(1, 2));
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(2));
    assert!(m.nodes[&target(1)].0.fenced().is_none(), "repaired, not fenced");
    for r in 1..=2 {
        assert_eq!(data(&m.read(target(r), 1, c)), (ChunkVersion(2), b"Base bytes".to_vec()));
    }
}

#[test]
fn a_chunk_corrupt_on_every_replica_stays_refused_and_is_reported_lost() {
    let mut m = Manual::new(2);
    let c = chunk(1);
    let t = m.write(target(1), 1, c, Update::Replace { data: bytes(b"data") }, tag(1, 1));
    m.deliver_all();
    committed(m.take_write(t));
    for r in 1..=2 {
        assert!(m.nodes.get_mut(&target(r)).expect("node").1.corrupt_committed(c));
    }
    assert_eq!(refused_code(&m.read(target(1), 1, c)), Some(ErrorCode::ChunkCorrupt));
    m.deliver_all(); // terminates: the two corrupt replicas do not ask each other forever
    assert!(
        m.replies.iter().any(|(t, o)| *t == target(1)
            && matches!(o, Output::ChunkUnrepairable { chunk } if *chunk == c))
    );
    assert!(!m.replies.iter().any(|(_, o)| matches!(o, Output::ChunkRepaired { .. })));
    for r in 1..=2 {
        // Still refused, never served as zeros or as the rotten bytes.
        assert_eq!(refused_code(&m.read(target(r), 1, c)), Some(ErrorCode::ChunkCorrupt));
    }
    m.deliver_all();
}

#[test]
fn a_peer_copy_that_does_not_match_the_committed_metadata_is_never_installed() {
    let mut m = Manual::new(2);
    let c = chunk(1);
    let t = m.write(target(1), 1, c, Update::Replace { data: bytes(b"data") }, tag(1, 1));
    m.deliver_all();
    committed(m.take_write(t));
    assert!(m.nodes.get_mut(&target(2)).expect("node").1.corrupt_committed(c));
    assert_eq!(refused_code(&m.read(target(2), 1, c)), Some(ErrorCode::ChunkCorrupt));
    // A forged answer: the right version and checksum claim, other bytes.
    let (from, to, PeerMessage::FetchChunk { chain, chain_version, .. }) =
        m.messages.pop_front().expect("fetch request")
    else {
        panic!("expected a fetch request")
    };
    assert_eq!((from, to), (target(2), target(1)));
    let state = m.nodes[&target(1)].1.meta(c).expect("meta").committed;
    let forged = r3fs_craq::ChunkCopy {
        chain,
        chain_version,
        chunk: c,
        state: Some(state),
        data: bytes(b"dat!"),
        checksum: state.checksum,
    };
    let message = PeerMessage::FetchChunkReply(forged);
    m.handle(target(2), Input::Peer { from: target(1), message });
    assert_eq!(refused_code(&m.read(target(2), 1, c)), Some(ErrorCode::ChunkCorrupt));
    // The next peer ask (the only peer, again) gets the real copy.
    m.deliver_all();
    assert_eq!(data(&m.read(target(2), 1, c)).1, b"data".to_vec());
}

#[test]
fn a_restarted_head_resolves_pending_versions_without_a_client_retry() {
    let mut m = Manual::new(1);
    let (head, c) = (target(1), chunk(1));
    m.hold_storage.insert(head);
    m.write(head, 1, c, Update::Replace { data: bytes(b"pending") }, tag(1, 1));
    assert!(m.complete_one(head), "get meta");
    assert!(m.complete_one(head), "write pending");
    // The process dies before the commit op runs; the store keeps the pending version.
    m.hold_storage.remove(&head);
    m.restart(head);
    m.set_chain(2, &[(1, Serving)]);
    // Nobody writes the chunk again: the new head's scan alone must roll the pending version
    // forward, or reads would be refused forever.
    assert_eq!(data(&m.read(head, 2, c)), (ChunkVersion(1), b"pending".to_vec()));
    // The client's retry is recognised from the tag kept in the chunk metadata.
    let t = m.write(head, 2, c, Update::Replace { data: bytes(b"pending") }, tag(1, 1));
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(1));
}

#[test]
fn an_update_committing_while_the_chain_grows_reaches_the_new_successor() {
    let mut m = Manual::new(2);
    let (head, tail, new, c) = (target(1), target(2), target(3), chunk(1));
    m.add_node(new);
    m.hold_storage.insert(tail);
    let t = m.write(head, 1, c, Update::Replace { data: bytes(b"v1") }, tag(1, 1));
    m.deliver_one();
    assert!(m.complete_one(tail), "get meta");
    assert!(m.complete_one(tail), "write pending; the commit op is now held");
    // Mgmtd adds T3 as syncing behind the tail while the tail's commit is in flight.
    m.set_chain(2, &[(1, Serving), (2, Serving), (3, Syncing)]);
    m.deliver_all(); // the dump request and reply; the tail's listing op is held
    // The listing runs before the commit: it sees only the pending version, which resync skips.
    let held = m.held[&tail].len();
    assert_eq!(held, 2, "commit and listing held");
    m.complete_nth(tail, 1);
    m.complete_nth(tail, 0);
    m.hold_storage.remove(&tail);
    while m.complete_one(tail) {}
    m.deliver_all();
    m.handle(tail, Input::Tick { now_ms: 10_000 });
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(1));
    let meta = m.nodes[&new].1.meta(c).expect("meta");
    assert_eq!(meta.committed.version, ChunkVersion(1), "the syncing successor got the update");
    assert!(m.replies.iter().any(|(t, o)| *t == new && matches!(o, Output::SyncDone { .. })));
}

#[test]
fn resync_progress_counts_chunks_found_to_differ_then_acknowledged() {
    let mut m = Manual::new(1);
    let (head, new) = (target(1), target(2));
    let sizes = [10usize, 200, 100];
    for (i, len) in sizes.iter().enumerate() {
        let data = bytes(&vec![i as u8 + 1; *len]);
        let t = m.write(head, 1, chunk(i as u64), Update::Replace { data }, tag(i as u64 + 1, 1));
        committed(m.take_write(t));
    }
    assert_eq!(m.nodes[&head].0.resync_progress(), None, "no resync yet");
    m.add_node(new);
    m.set_chain(2, &[(1, Serving), (2, Syncing)]);
    let progress = |m: &Manual| m.nodes[&head].0.resync_progress();
    let started = progress(&m).expect("resync running");
    assert_eq!(started.successor, new);
    assert_eq!((started.chunks_total, started.chunks_done, started.bytes_done), (0, 0, 0));
    assert!(!started.scan_complete, "the successor's metadata is not compared yet");
    let mut seen = Vec::new();
    while m.deliver_one() {
        if let Some(p) = progress(&m) {
            seen.push((p.chunks_total, p.scan_complete, p.chunks_done, p.bytes_done));
        }
    }
    // After the compare: 3 chunks to send; then acknowledged one by one with their bytes.
    assert!(seen.contains(&(3, true, 0, 0)), "{seen:?}");
    assert!(seen.contains(&(3, true, 1, 10)), "{seen:?}");
    assert!(seen.contains(&(3, true, 3, 310)), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].2 <= w[1].2 && w[0].3 <= w[1].3), "monotonic: {seen:?}");
    assert_eq!(progress(&m), None, "finished resyncs are not reported");
    assert!(m.replies.iter().any(|(t, o)| *t == new && matches!(o, Output::SyncDone { .. })));
}

/// Random scripts on a few chunks, one channel per client.
fn concurrent_script(sim: &mut Sim, clients: u64, writes_per_client: usize) {
    for client in 1..=clients {
        let mut script = Vec::new();
        for i in 0..writes_per_client {
            let chunk_index = (i as u64 + client) % 2;
            let offset = ((client * 7 + i as u64 * 13) % 40) as u32;
            script.push(write_op(chunk_index, offset, 8 + i % 5, (client * 16 + i as u64) as u8));
            if i % 3 == 0 {
                script.push(read_op(chunk_index, 0, 64));
            }
        }
        sim.add_channel(client, 0, script);
    }
    // Readers hammer both chunks at random replicas, so reads race the updates in flight.
    for reader in 0..2u64 {
        let script =
            (0..writes_per_client * 2).map(|i| read_op((i as u64 + reader) % 2, 0, 64)).collect();
        sim.add_channel(100 + reader, 0, script);
    }
}

#[test]
fn concurrent_writes_to_one_chunk_are_totally_ordered() {
    for seed in seeds(24) {
        let mut sim = Sim::new(seed, 3, Faults::default());
        for client in 1..=4u64 {
            let script = (0..6)
                .map(|i| {
                    write_op(0, ((client * 5 + i * 3) % 30) as u32, 12, (client * 10 + i) as u8)
                })
                .chain([read_op(0, 0, 64)])
                .collect();
            sim.add_channel(client, 0, script);
        }
        sim.add_channel(100, 0, (0..20).map(|_| read_op(0, 0, 64)).collect());
        sim.run(200_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 24);
    }
}

#[test]
fn lossy_corrupting_network_still_converges_and_applies_each_write_once() {
    for seed in seeds(16) {
        let faults = Faults { drop_per_mille: 100, corrupt_per_mille: 100 };
        let mut sim = Sim::new(seed, 3, faults);
        sim.client_timeout_ms = 60; // clients retry aggressively: many duplicates
        concurrent_script(&mut sim, 3, 6);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 18);
    }
}

#[test]
fn middle_failure_reforwards_pending_updates() {
    for seed in seeds(12) {
        let mut sim = Sim::new(seed, 3, Faults::default());
        concurrent_script(&mut sim, 3, 8);
        sim.run_steps(150 + (seed % 20) * 20);
        sim.crash(2);
        sim.set_chain(&[(1, Serving), (3, Serving), (2, Offline)]);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 24);
    }
}

#[test]
fn tail_failure_makes_the_middle_commit() {
    for seed in seeds(12) {
        let mut sim = Sim::new(seed, 3, Faults::default());
        concurrent_script(&mut sim, 3, 8);
        sim.run_steps(150 + (seed % 20) * 20);
        sim.crash(3);
        sim.set_chain(&[(1, Serving), (2, Serving), (3, Offline)]);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 24);
    }
}

#[test]
fn head_failure_new_head_takes_over_pending_updates() {
    for seed in seeds(12) {
        let mut sim = Sim::new(seed, 3, Faults::default());
        concurrent_script(&mut sim, 3, 8);
        sim.run_steps(150 + (seed % 20) * 20);
        sim.crash(1);
        sim.set_chain(&[(2, Serving), (3, Serving), (1, Offline)]);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 24);
    }
}

#[test]
fn a_restarted_target_is_resynced_then_serves() {
    for seed in seeds(12) {
        let mut sim = Sim::new(seed, 3, Faults { drop_per_mille: 20, corrupt_per_mille: 20 });
        concurrent_script(&mut sim, 3, 10);
        sim.run_steps(100 + (seed % 20) * 15);
        sim.crash(2);
        sim.set_chain(&[(1, Serving), (3, Serving), (2, Offline)]);
        sim.run_steps(300);
        sim.restart(2);
        sim.set_chain(&[(1, Serving), (3, Serving), (2, Syncing)]);
        let version = sim.chain_version();
        sim.run_until(400_000, |s| s.nodes[&target(2)].sync_done == Some(version)).expect("synced");
        sim.set_chain(&[(1, Serving), (3, Serving), (2, Serving)]);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 30);
        assert_eq!(sim.write_chain().len(), 3, "the check covered the resynced target");
    }
}

#[test]
fn predecessor_failure_during_resync_restarts_it_from_the_new_predecessor() {
    for seed in seeds(12) {
        let mut sim = Sim::new(seed, 3, Faults { drop_per_mille: 20, corrupt_per_mille: 0 });
        concurrent_script(&mut sim, 3, 10);
        sim.run_steps(100);
        sim.crash(3);
        sim.set_chain(&[(1, Serving), (2, Serving), (3, Offline)]);
        sim.run_steps(200);
        sim.restart(3);
        sim.set_chain(&[(1, Serving), (2, Serving), (3, Syncing)]);
        // T2 resyncs T3, and dies part way.
        sim.run_steps(20 + (seed % 10) * 10);
        sim.crash(2);
        sim.set_chain(&[(1, Serving), (3, Syncing), (2, Offline)]);
        let version = sim.chain_version();
        sim.run_until(400_000, |s| s.nodes[&target(3)].sync_done == Some(version)).expect("synced");
        sim.set_chain(&[(1, Serving), (3, Serving), (2, Offline)]);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 30);
        assert_eq!(sim.write_chain(), vec![target(1), target(3)]);
    }
}

#[test]
fn a_live_target_declared_offline_fences_itself_and_the_chain_goes_on() {
    for seed in seeds(12) {
        let mut sim = Sim::new(seed, 3, Faults::default());
        concurrent_script(&mut sim, 3, 8);
        sim.run_steps(100 + (seed % 10) * 20);
        // A partition: mgmtd stops hearing from T2, which is still running.
        sim.set_chain(&[(1, Serving), (3, Serving), (2, Offline)]);
        sim.run(400_000).expect("quiescent");
        assert!(sim.nodes[&target(2)].fenced, "T2 stopped acting on its old view");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 24);
    }
}

#[test]
fn a_restarted_lone_head_rolls_its_pending_version_forward() {
    let mut rolled_forward = 0;
    let seeds = seeds(40);
    let sweep = seeds.len() >= 40;
    for seed in seeds {
        let mut sim = Sim::new(seed, 1, Faults::default());
        sim.add_channel(
            1,
            0,
            vec![write_op(0, 0, 8, 1), write_op(0, 4, 8, 2), write_op(0, 2, 4, 3)],
        );
        // Crash at a random point, possibly between the pending write and its commit.
        sim.run_steps(3 + seed % 12);
        sim.crash(1);
        let pending = sim.nodes[&target(1)].store.metas().any(|m| m.pending.is_some());
        rolled_forward += u64::from(pending);
        sim.set_chain(&[(1, LastServing)]);
        sim.restart(1);
        sim.set_chain(&[(1, Serving)]);
        sim.run(100_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 3);
    }
    assert!(!sweep || rolled_forward > 0, "some run crashed with a pending version");
}

#[test]
fn chain_changes_mid_run_with_faults_converge() {
    for seed in seeds(10) {
        let mut sim = Sim::new(seed, 4, Faults { drop_per_mille: 30, corrupt_per_mille: 30 });
        concurrent_script(&mut sim, 4, 8);
        sim.run_steps(200);
        sim.crash(3);
        sim.set_chain(&[(1, Serving), (2, Serving), (4, Serving), (3, Offline)]);
        sim.run_steps(200);
        sim.crash(1);
        sim.set_chain(&[(2, Serving), (4, Serving), (3, Offline), (1, Offline)]);
        sim.run(400_000).expect("quiescent");
        sim.check().expect("consistent");
        assert_eq!(sim.writes.len(), 32);
    }
}

/// Runs every storage op `t` holds, in order, including those the completions issue.
fn complete_all(m: &mut Manual, t: r3fs_types::TargetId) {
    while m.complete_one(t) {}
}

/// Simulator finding 2 (`missed-offline`): a head cut off from mgmtd misses the chain version
/// that took it out; the next one it sees makes it a syncing tail. It must not commit its
/// in-flight client write alone and acknowledge it: the chain moved on without it.
#[test]
fn a_serving_replica_that_missed_its_offline_version_fences_itself() {
    for state in [Syncing, Waiting] {
        let mut m = Manual::new(2);
        let (head, tail, c) = (target(1), target(2), chunk(1));
        let t = m.write(head, 1, c, Update::Replace { data: bytes(b"stale") }, tag(1, 1));
        // The forward never arrives (the head is cut off).
        m.messages.clear();
        // Chain version 2 took T1 out (offline); T1 never heard of it. Version 3 lists it back.
        let routing = r3fs_craq::ChainRouting {
            chain: CHAIN,
            chain_version: ChainVersion(3),
            targets: vec![
                r3fs_craq::ChainTarget { target: tail, state: Serving },
                r3fs_craq::ChainTarget { target: head, state },
            ],
        };
        m.handle(head, Input::Routing(routing));
        assert!(
            m.replies.iter().any(|(t, o)| *t == head
                && matches!(o, Output::Fenced { reason: r3fs_craq::FenceReason::Routing { state: Some(s) } } if *s == state)),
            "{state:?}: the replica fences itself"
        );
        assert!(
            matches!(m.take_write(t), Some(WriteOutcome::Refused(r)) if r.code == ErrorCode::TargetNotServing),
            "{state:?}: the in-flight write is refused, never acknowledged"
        );
        let meta = m.nodes[&head].1.meta(c).expect("meta");
        assert_eq!(meta.committed.version, ChunkVersion(0), "{state:?}: nothing committed alone");
        assert!(m.messages.is_empty(), "{state:?}: nothing sent after the fence");
    }
}

/// A restarted replica that finds itself syncing is recovering, not stale: no fence.
#[test]
fn a_fresh_replica_listed_syncing_is_not_fenced() {
    let mut m = Manual::new(2);
    m.restart(target(2));
    m.set_chain(3, &[(1, Serving), (2, Syncing)]);
    m.deliver_all();
    assert!(!m.replies.iter().any(|(_, o)| matches!(o, Output::Fenced { .. })));
    assert!(m.replies.iter().any(|(t, o)| *t == target(2) && matches!(o, Output::SyncDone { .. })));
}

/// Simulator finding 6 (`--reorder-within-links`): a resync transfer held back on its link
/// arrives after the forwarded update that superseded it. The syncing target must keep the newer
/// version it committed at the current chain version.
#[test]
fn a_sync_transfer_older_than_a_committed_update_is_ignored() {
    let mut m = Manual::new(2);
    let (head, syncing, c) = (target(1), target(2), chunk(1));
    let t = m.write(head, 1, c, Update::Replace { data: bytes(b"one") }, tag(1, 1));
    m.deliver_all();
    committed(m.take_write(t));
    // T2 goes offline (it fences), misses v2, restarts and syncs at chain version 3.
    m.set_chain(2, &[(1, Serving), (2, Offline)]);
    let t = m.write(head, 2, c, Update::Replace { data: bytes(b"two") }, tag(1, 2));
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(2));
    m.restart(syncing);
    m.set_chain(3, &[(1, Serving), (2, Syncing)]);
    let mut transfer = None;
    while let Some((from, to, message)) = m.messages.front().cloned() {
        if let PeerMessage::SyncChunk(sync) = &message {
            transfer = Some((from, to, sync.clone()));
        }
        m.deliver_one();
    }
    let (from, to, old) = transfer.expect("v2 was transferred");
    assert_eq!(old.state.map(|s| s.version), Some(ChunkVersion(2)));
    // A write at chain version 3 reaches the syncing target as a full replace and commits.
    let t = m.write(head, 3, c, Update::Write { offset_bytes: 0, data: bytes(b"3") }, tag(1, 3));
    m.deliver_all();
    assert_eq!(committed(m.take_write(t)).version, ChunkVersion(3));
    // Now the held-back copy of the transfer arrives.
    m.handle(to, Input::Peer { from, message: PeerMessage::SyncChunk(old) });
    assert!(
        matches!(m.messages.front(), Some((f, _, PeerMessage::SyncAck { chunk, .. })) if *f == syncing && *chunk == c),
        "acknowledged without being applied"
    );
    m.deliver_all();
    for r in [head, syncing] {
        let meta = m.nodes[&r].1.meta(c).expect("meta");
        assert_eq!(meta.committed.version, ChunkVersion(3), "{r} keeps the newest version");
    }
    let (_, data) = m.nodes[&syncing].1.read_full(c, r3fs_craq::Which::Committed).expect("read");
    assert_eq!(&data[..], b"3wo");
}

/// Simulator finding 7 (seed 57291): a syncing tail committed a write its head never completed;
/// a later resync from another predecessor deleted the chunk. When the former tail is head, a
/// retry of that write must not be answered from its dedup table (the write exists nowhere).
#[test]
fn a_resync_replace_drops_the_dedup_entries_of_the_chunk() {
    let mut m = Manual::new(1);
    let (old_head, tail, new_head, c) = (target(1), target(2), target(3), chunk(1));
    m.add_node(tail);
    m.add_node(new_head);
    m.set_chain(2, &[(1, Serving), (2, Syncing)]);
    m.deliver_all(); // an empty resync
    let update = Update::Replace { data: bytes(b"lost") };
    let t = m.write(old_head, 2, c, update.clone(), tag(1, 1));
    // The update reaches the tail, which commits and records the tag; the ack is lost.
    assert!(m.deliver_one());
    let (_, _, ack) = m.messages.pop_front().expect("the tail's ack");
    assert!(matches!(ack, PeerMessage::Ack(_)));
    assert_eq!(m.nodes[&tail].1.meta(c).expect("meta").committed.version, ChunkVersion(1));
    // T1 is taken out; T3, which never saw the write, serves and resyncs T2 (deleting the chunk).
    m.set_chain(3, &[(3, Serving), (1, Offline), (2, Syncing)]);
    assert!(m.take_write(t).is_some_and(|o| !matches!(o, WriteOutcome::Committed(_))));
    m.deliver_all();
    assert!(m.nodes[&tail].1.meta(c).expect("meta").is_absent(), "the resync deleted it");
    m.set_chain(4, &[(2, Serving), (3, Serving), (1, Offline)]);
    m.deliver_all();
    // The client's retry at the new head is applied, not answered from a stale table.
    let t = m.write(tail, 4, c, update, tag(1, 1));
    m.deliver_all();
    let ok = committed(m.take_write(t));
    assert_eq!(ok.version, ChunkVersion(1));
    for r in [tail, new_head] {
        let (meta, data) = m.nodes[&r].1.read_full(c, r3fs_craq::Which::Committed).expect("read");
        assert_eq!((meta.committed.version, &data[..]), (ChunkVersion(1), &b"lost"[..]), "{r}");
    }
}

/// Simulator finding 8 (seed 31578): a retry queued behind a roll-forward of its own pending
/// version and another client's write must be answered from the dedup table when its turn comes,
/// not applied a second time.
#[test]
fn a_queued_retry_rechecks_the_dedup_table_when_it_starts() {
    let mut m = Manual::new(1);
    let (head, c) = (target(1), chunk(1));
    m.hold_storage.insert(head);
    let w = Update::Replace { data: bytes(b"once") };
    m.write(head, 1, c, w.clone(), tag(1, 1));
    assert!(m.complete_one(head), "get meta");
    assert!(m.complete_one(head), "write pending");
    // The head restarts with the pending version in its store.
    m.restart(head);
    m.set_chain(2, &[(1, Serving)]);
    // Another client's write is admitted first, then the retry of the pending write: both wait
    // (the scan and the first metadata load are held).
    let other =
        m.write(head, 2, c, Update::Write { offset_bytes: 0, data: bytes(b"O") }, tag(2, 1));
    let retry = m.write(head, 2, c, w, tag(1, 1));
    complete_all(&mut m, head);
    // The other write found the pending version, rolled it forward (committing tag (1, 1) as v1)
    // and then committed as v2.
    assert_eq!(committed(m.take_write(other)).version, ChunkVersion(2));
    assert_eq!(committed(m.take_write(retry)).version, ChunkVersion(1), "answered, not re-applied");
    let (meta, data) = m.nodes[&head].1.read_full(c, r3fs_craq::Which::Committed).expect("read");
    assert_eq!((meta.committed.version, &data[..]), (ChunkVersion(2), &b"Once"[..]));
}
