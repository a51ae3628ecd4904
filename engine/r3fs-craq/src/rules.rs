//! The chain-side rules as pure functions of chunk metadata, so the replica, the future resync
//! and failover code and the tests all decide the same way. See docs/design/craq.md.

use crate::types::{ChunkMeta, next_version};
use r3fs_types::ChunkVersion;

/// What a successor does with a forwarded update at `version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardDecision {
    /// Write it as the pending version (replacing a pending copy of the same version, which a
    /// re-forward after a chain change or a lost ack produces).
    Apply,
    /// This version (or a later one) is already committed here: acknowledge without applying.
    /// Makes re-forwards and duplicated messages harmless.
    AlreadyApplied,
    /// Versions between the committed one and this are missing here: refuse, so the predecessor
    /// sends a full replace instead.
    Gap { committed: ChunkVersion },
}

/// Successor rule: an incremental update must be exactly the next version after the committed
/// one; a full replace (which does not depend on the base) may skip versions.
pub fn decide_forward(
    meta: &ChunkMeta,
    version: ChunkVersion,
    full_replace: bool,
) -> ForwardDecision {
    let committed = meta.committed.version;
    if version <= committed {
        ForwardDecision::AlreadyApplied
    } else if full_replace || version == next_version(committed) {
        ForwardDecision::Apply
    } else {
        ForwardDecision::Gap { committed }
    }
}

/// What the head does before assigning a version to a new client write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadDecision {
    /// Assign this update version (committed + 1).
    Assign(ChunkVersion),
    /// A pending version exists that no in-memory update owns (the head restarted, or it was a
    /// middle replica whose predecessor vanished): roll it forward first. Never roll back: the
    /// tail may already have committed it and served it to readers.
    ResolvePending(ChunkVersion),
}

pub fn decide_head(meta: &ChunkMeta) -> HeadDecision {
    match meta.pending {
        Some(pending) => HeadDecision::ResolvePending(pending.version),
        None => HeadDecision::Assign(next_version(meta.committed.version)),
    }
}

/// What a serving replica answers to a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadDecision {
    /// Only a committed version exists: it is the chain's latest committed state.
    Serve,
    /// A pending version exists: the tail may already have committed it, so the committed copy
    /// here may be older than what another reader saw. Answer `ChunkNotCommitted`; the client
    /// retries (here later, or at another replica such as the tail).
    NotCommitted,
    /// No chunk, or a tombstone.
    NotFound,
}

pub fn decide_read(meta: &ChunkMeta) -> ReadDecision {
    if meta.pending.is_some() {
        ReadDecision::NotCommitted
    } else if meta.committed.removed {
        ReadDecision::NotFound
    } else {
        ReadDecision::Serve
    }
}

/// Resync rule: whether the predecessor (`local`) must send its committed chunk to a syncing
/// successor (`remote`), from their metadata. Versions and checksums are both compared, so a
/// replica that kept a same-numbered version with other bytes (a divergent history) is repaired.
/// A remote pending version is always overwritten: on a syncing target it is left over from
/// before it went offline, and nothing else would resolve it.
pub fn needs_transfer(local: Option<&ChunkMeta>, remote: Option<&ChunkMeta>) -> bool {
    match (local, remote) {
        (None, None) => false,
        // Anything committed here goes over, tombstones included (they carry the version number
        // forward). Only an in-flight first write (nothing committed yet) stays: the write path
        // forwards it.
        (Some(local), None) => local.committed.version.0 > 0,
        // Only the remote has it: it is deleted there.
        (None, Some(remote)) => !remote.is_absent(),
        (Some(local), Some(remote)) => {
            remote.pending.is_some() || remote.committed.digest() != local.committed.digest()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChunkState;
    use r3fs_types::{ChunkId, InodeId};

    fn meta(committed: u64, pending: Option<u64>) -> ChunkMeta {
        let state = |v: u64| ChunkState {
            version: ChunkVersion(v),
            removed: false,
            length_bytes: 1,
            checksum: v as u32,
            ..ChunkState::ABSENT
        };
        ChunkMeta {
            chunk: ChunkId::new(InodeId(1), 0),
            committed: if committed == 0 { ChunkState::ABSENT } else { state(committed) },
            pending: pending.map(state),
        }
    }

    #[test]
    fn successor_accepts_only_the_next_version() {
        use ForwardDecision::*;
        assert_eq!(decide_forward(&meta(3, None), ChunkVersion(4), false), Apply);
        assert_eq!(decide_forward(&meta(3, Some(4)), ChunkVersion(4), false), Apply);
        assert_eq!(decide_forward(&meta(3, None), ChunkVersion(3), false), AlreadyApplied);
        assert_eq!(decide_forward(&meta(3, None), ChunkVersion(2), true), AlreadyApplied);
        assert_eq!(
            decide_forward(&meta(3, None), ChunkVersion(6), false),
            Gap { committed: ChunkVersion(3) }
        );
        assert_eq!(decide_forward(&meta(3, None), ChunkVersion(6), true), Apply);
    }

    #[test]
    fn head_resolves_pending_before_assigning() {
        assert_eq!(decide_head(&meta(0, None)), HeadDecision::Assign(ChunkVersion(1)));
        assert_eq!(decide_head(&meta(5, None)), HeadDecision::Assign(ChunkVersion(6)));
        assert_eq!(decide_head(&meta(5, Some(6))), HeadDecision::ResolvePending(ChunkVersion(6)));
    }

    #[test]
    fn reads_never_serve_a_chunk_with_a_pending_version() {
        assert_eq!(decide_read(&meta(2, None)), ReadDecision::Serve);
        assert_eq!(decide_read(&meta(2, Some(3))), ReadDecision::NotCommitted);
        assert_eq!(decide_read(&meta(0, None)), ReadDecision::NotFound);
        assert_eq!(decide_read(&meta(0, Some(1))), ReadDecision::NotCommitted);
    }

    #[test]
    fn transfer_rules() {
        assert!(!needs_transfer(None, None));
        assert!(needs_transfer(Some(&meta(2, None)), None));
        assert!(!needs_transfer(Some(&meta(0, Some(1))), None));
        let mut tombstone = meta(3, None);
        tombstone.committed.removed = true;
        tombstone.committed.length_bytes = 0;
        assert!(needs_transfer(Some(&tombstone), None), "tombstones keep versions growing");
        assert!(needs_transfer(None, Some(&meta(2, None))));
        assert!(!needs_transfer(Some(&meta(2, None)), Some(&meta(2, None))));
        assert!(!needs_transfer(Some(&meta(2, Some(3))), Some(&meta(2, None))));
        assert!(needs_transfer(Some(&meta(3, None)), Some(&meta(2, None))));
        assert!(needs_transfer(Some(&meta(2, None)), Some(&meta(2, Some(3)))));
        let mut diverged = meta(2, None);
        diverged.committed.checksum ^= 1;
        assert!(needs_transfer(Some(&meta(2, None)), Some(&diverged)));
    }
}
