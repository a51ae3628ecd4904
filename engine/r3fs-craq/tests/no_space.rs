//! A replica whose disk is full: a write that some replica cannot store is refused to the client
//! with `NoSpace`, hop by hop, and every replica drops its pending version of it, so the chain
//! stays consistent and serving, and takes writes again once there is space.

mod harness;

use harness::*;
use r3fs_craq::{ChunkStore, ReadOutcome, Update, WriteOutcome};
use r3fs_types::{ChunkVersion, ErrorCode};

fn data(outcome: &ReadOutcome) -> (ChunkVersion, Vec<u8>) {
    match outcome {
        ReadOutcome::Data(ok) => (ok.version, ok.data.to_vec()),
        other => panic!("expected data, got {other:?}"),
    }
}

fn refused(outcome: Option<WriteOutcome>) -> ErrorCode {
    match outcome {
        Some(WriteOutcome::Refused(r)) => r.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn no_pending(m: &Manual, c: r3fs_types::ChunkId) {
    for (t, (_, store)) in &m.nodes {
        let meta = store.meta(c).expect("meta");
        assert_eq!(meta.pending, None, "{t} still holds a pending version of {c}");
    }
}

/// The full replica is `full` (1 = head, 2 = middle, 3 = tail of a 3-replica chain).
fn full_replica_refuses_cleanly(full: u64) {
    let mut m = Manual::new(3);
    let (c1, c2) = (chunk(1), chunk(2));
    let t = m.write(target(1), 1, c1, Update::Replace { data: bytes(b"abc") }, tag(1, 1));
    m.deliver_all();
    assert!(matches!(m.take_write(t), Some(WriteOutcome::Committed(_))));

    // No byte more fits on the full replica.
    let store = &mut m.nodes.get_mut(&target(full)).expect("node").1;
    let used = store.bytes_used();
    store.set_bytes_max(used);

    let t = m.write(target(1), 1, c2, Update::Replace { data: bytes(b"defgh") }, tag(1, 2));
    m.deliver_all();
    assert_eq!(refused(m.take_write(t)), ErrorCode::NoSpace);
    let t = m.write(target(1), 1, c1, Update::Replace { data: bytes(b"longer") }, tag(1, 3));
    m.deliver_all();
    assert_eq!(refused(m.take_write(t)), ErrorCode::NoSpace);

    // Nothing of the refused writes is left anywhere; every replica serves the committed data.
    no_pending(&m, c1);
    no_pending(&m, c2);
    for r in 1..=3 {
        assert_eq!(data(&m.read(target(r), 1, c1)), (ChunkVersion(1), b"abc".to_vec()));
        let read = m.read(target(r), 1, c2);
        assert!(
            matches!(read, ReadOutcome::Refused(ref x) if x.code == ErrorCode::ChunkNotFound),
            "{read:?}"
        );
    }

    // Space again: the same chunks take writes, at the versions that follow the committed ones.
    m.nodes.get_mut(&target(full)).expect("node").1.set_bytes_max(1 << 30);
    let t = m.write(target(1), 1, c2, Update::Replace { data: bytes(b"defgh") }, tag(1, 4));
    m.deliver_all();
    assert!(
        matches!(m.take_write(t), Some(WriteOutcome::Committed(ok)) if ok.version == ChunkVersion(1))
    );
    let t = m.write(target(1), 1, c1, Update::Replace { data: bytes(b"longer") }, tag(1, 5));
    m.deliver_all();
    assert!(
        matches!(m.take_write(t), Some(WriteOutcome::Committed(ok)) if ok.version == ChunkVersion(2))
    );
    for r in 1..=3 {
        assert_eq!(data(&m.read(target(r), 1, c1)), (ChunkVersion(2), b"longer".to_vec()));
        assert_eq!(data(&m.read(target(r), 1, c2)), (ChunkVersion(1), b"defgh".to_vec()));
    }
}

#[test]
fn a_full_tail_fails_the_write_and_every_replica_drops_it() {
    full_replica_refuses_cleanly(3);
}

#[test]
fn a_full_middle_fails_the_write_and_the_head_drops_it() {
    full_replica_refuses_cleanly(2);
}

#[test]
fn a_full_head_refuses_before_forwarding() {
    full_replica_refuses_cleanly(1);
}
