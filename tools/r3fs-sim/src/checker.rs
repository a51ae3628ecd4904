//! The invariants the simulator checks, and the record of what happened that they are checked
//! against. The definitions are in docs/design/simulation.md ("Checks"); in short:
//!
//! - CRAQ's commit rule: a replica with a successor commits a version only once that successor
//!   holds it committed (checked by the world where the commit is issued).
//! - The *chain history* `H`: per chunk, every version readers could see, i.e. committed at a
//!   replica that served reads (in its own view), with its bytes and the tag of the client write
//!   that produced it. A version is *committed* iff it is in `H`.
//! - `H` is valid: versions of a chunk are contiguous from 1, each is the previous one with its
//!   tagged client write applied, a client write is applied at most once (within craq's dedup
//!   horizon), and a version once in `H` never changes its bytes.
//! - Every acknowledged write is in `H` under its tag, and every target mgmtd lists as serving (or
//!   last-serving) holds it: its committed version of the chunk is at least the acknowledged one,
//!   with the same bytes when equal.
//! - A read returns bytes of a version in `H`; and per client, nothing older than what the same
//!   client observed (acknowledged or read) before it sent the request.
//! - After faults stop: all replicas of a chain converge to the newest version in `H` of every
//!   chunk.

use bytes::Bytes;
use r3fs_craq::{ChunkState, Digest, ReadOk, Update, UpdateTag, WriteOk};
use r3fs_types::{ChunkId, ChunkVersion, TargetId};
use std::collections::BTreeMap;
use std::fmt;

/// Which invariant failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// A replica committed a version before its successor held it committed.
    CommitBeforeSuccessor,
    /// The chain history is not a valid sequence of client writes.
    InvalidHistory,
    /// One version of a chunk was committed with two different contents.
    DivergentCommit,
    /// A write was acknowledged that is not committed (or under another tag).
    AckNotCommitted,
    /// An acknowledged write is missing from a serving target.
    LostWrite,
    /// A read returned bytes of no committed version.
    ReadNotCommitted,
    /// A read (or a write's version) went back behind what the same client had observed.
    StaleRead,
    /// A replica or the mgmtd model reported that its contract was broken.
    Contract,
    /// After faults stopped, the cluster did not settle within the step budget.
    NotConverged,
    /// After settling, replicas of a chain differ, or lost the newest committed version.
    Diverged,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::CommitBeforeSuccessor => "commit-before-successor",
            ViolationKind::InvalidHistory => "invalid-history",
            ViolationKind::DivergentCommit => "divergent-commit",
            ViolationKind::AckNotCommitted => "ack-not-committed",
            ViolationKind::LostWrite => "lost-write",
            ViolationKind::ReadNotCommitted => "read-not-committed",
            ViolationKind::StaleRead => "stale-read",
            ViolationKind::Contract => "contract",
            ViolationKind::NotConverged => "not-converged",
            ViolationKind::Diverged => "diverged",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed check: which, and what exactly. `step` and `time_ms` are filled in by the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub step: u64,
    pub time_ms: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at step {} (t={} ms): {}", self.kind, self.step, self.time_ms, self.detail)
    }
}

pub type Check = Result<(), (ViolationKind, String)>;

fn fail(kind: ViolationKind, detail: String) -> Check {
    Err((kind, detail))
}

/// One version in the chain history.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub state: ChunkState,
    pub data: Bytes,
}

/// What a client asked a chain to write.
#[derive(Clone, Debug)]
struct Issued {
    chunk: ChunkId,
    update: Update,
}

/// See the module docs.
#[derive(Debug)]
pub struct Checker {
    chunk_size_bytes_max: u32,
    history: BTreeMap<ChunkId, BTreeMap<ChunkVersion, HistoryEntry>>,
    /// Where each client write landed in the history, and the dedup epoch of its chain then.
    applied: BTreeMap<UpdateTag, (ChunkId, ChunkVersion, u64)>,
    /// Client writes applied again after their chain lost its dedup memory (allowed, counted).
    reapplied: u64,
    issued: BTreeMap<UpdateTag, Issued>,
    /// Acknowledged versions per chunk with their digest.
    acked: BTreeMap<ChunkId, BTreeMap<ChunkVersion, Digest>>,
}

impl Checker {
    pub fn new(chunk_size_bytes_max: u32) -> Self {
        Self {
            chunk_size_bytes_max,
            history: BTreeMap::new(),
            applied: BTreeMap::new(),
            reapplied: 0,
            issued: BTreeMap::new(),
            acked: BTreeMap::new(),
        }
    }

    /// A client sends a new write for the first time.
    pub fn issue(&mut self, tag: UpdateTag, chunk: ChunkId, update: Update) {
        let previous = self.issued.insert(tag, Issued { chunk, update });
        assert!(previous.is_none(), "clients never reuse a tag: {tag:?}");
    }

    pub fn history(&self, chunk: ChunkId) -> Option<&BTreeMap<ChunkVersion, HistoryEntry>> {
        self.history.get(&chunk)
    }

    /// The newest committed version of a chunk.
    pub fn newest(&self, chunk: ChunkId) -> Option<&HistoryEntry> {
        self.history.get(&chunk).and_then(|h| h.values().next_back())
    }

    pub fn chunks_with_history(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.history.keys().copied()
    }

    pub fn versions_committed(&self) -> usize {
        self.history.values().map(BTreeMap::len).sum()
    }

    pub fn writes_reapplied(&self) -> u64 {
        self.reapplied
    }

    /// A replica serving reads holds `state` with `data` committed: it enters the history (or
    /// must equal what the history holds for that version).
    ///
    /// `dedup_epoch` counts the replicas of the chain created since the start (restarts, and
    /// replacements after a fence): craq applies a client write at most once only while some
    /// replica's dedup table or the chunk's last tag remembers it, and a new replica remembers
    /// nothing. So a write applied twice within one epoch is a violation; across epochs it is
    /// the documented limit, counted in [`Checker::writes_reapplied`].
    pub fn visible(
        &mut self,
        chunk: ChunkId,
        state: ChunkState,
        data: Bytes,
        dedup_epoch: u64,
    ) -> Check {
        let digest = state.digest();
        if let Some(known) = self.history.get(&chunk).and_then(|h| h.get(&state.version)) {
            if known.state.digest() != digest || known.data != data {
                return fail(
                    ViolationKind::DivergentCommit,
                    format!(
                        "chunk {chunk} {}: committed as {:?}, committed again as {:?}",
                        state.version,
                        known.state.digest(),
                        digest
                    ),
                );
            }
            return Ok(());
        }
        let version = state.version;
        let empty = Bytes::new();
        let base = if version.0 == 1 {
            &empty
        } else {
            match self.history.get(&chunk).and_then(|h| h.get(&ChunkVersion(version.0 - 1))) {
                Some(previous) => &previous.data,
                None => {
                    return fail(
                        ViolationKind::InvalidHistory,
                        format!(
                            "chunk {chunk}: {version} committed without version {}",
                            version.0 - 1
                        ),
                    );
                }
            }
        };
        let Some(tag) = state.tag else {
            return fail(
                ViolationKind::InvalidHistory,
                format!("chunk {chunk} {version}: committed without the tag of a client write"),
            );
        };
        let Some(issued) = self.issued.get(&tag) else {
            return fail(
                ViolationKind::InvalidHistory,
                format!("chunk {chunk} {version}: tag {tag:?} names no write any client sent"),
            );
        };
        if issued.chunk != chunk {
            return fail(
                ViolationKind::InvalidHistory,
                format!("chunk {chunk} {version}: tag {tag:?} was a write to {}", issued.chunk),
            );
        }
        let reapplied = match self.applied.get(&tag) {
            Some((other_chunk, other_version, epoch)) if *epoch == dedup_epoch => {
                return fail(
                    ViolationKind::InvalidHistory,
                    format!(
                        "chunk {chunk} {version}: write {tag:?} applied a second time (first as {other_chunk} {other_version}) though no replica of the chain restarted since"
                    ),
                );
            }
            Some(_) => true,
            None => false,
        };
        let expected = match issued.update.apply(base, self.chunk_size_bytes_max) {
            Ok(applied) => applied,
            Err(error) => {
                return fail(
                    ViolationKind::InvalidHistory,
                    format!("chunk {chunk} {version}: write {tag:?} cannot apply: {error}"),
                );
            }
        };
        let expected_digest = Digest::of(version, &expected.content, expected.removed);
        if expected_digest != digest || expected.content[..] != data[..] {
            return fail(
                ViolationKind::InvalidHistory,
                format!(
                    "chunk {chunk} {version}: write {tag:?} ({:?}) applied to {} gives {expected_digest:?}, committed {digest:?}",
                    issued.update,
                    version.0 - 1,
                ),
            );
        }
        if reapplied {
            self.reapplied += 1;
        }
        self.applied.insert(tag, (chunk, version, dedup_epoch));
        self.history.entry(chunk).or_default().insert(version, HistoryEntry { state, data });
        Ok(())
    }

    /// A head answered a client write with `ok`.
    pub fn acknowledged(&mut self, chunk: ChunkId, tag: UpdateTag, ok: &WriteOk) -> Check {
        let digest = Digest {
            version: ok.version,
            length_bytes: ok.length_bytes,
            checksum: ok.checksum,
            removed: ok.removed,
        };
        match self.history.get(&chunk).and_then(|h| h.get(&ok.version)) {
            None => {
                return fail(
                    ViolationKind::AckNotCommitted,
                    format!(
                        "write {tag:?} acknowledged as chunk {chunk} {}, which no serving replica committed",
                        ok.version
                    ),
                );
            }
            Some(known) if known.state.digest() != digest || known.state.tag != Some(tag) => {
                return fail(
                    ViolationKind::AckNotCommitted,
                    format!(
                        "write {tag:?} acknowledged as chunk {chunk} {} {digest:?}; committed is {:?} by {:?}",
                        ok.version,
                        known.state.digest(),
                        known.state.tag
                    ),
                );
            }
            Some(_) => {}
        }
        let acked = self.acked.entry(chunk).or_default();
        if let Some(previous) = acked.insert(ok.version, digest)
            && previous != digest
        {
            return fail(
                ViolationKind::AckNotCommitted,
                format!(
                    "chunk {chunk} {} acknowledged as {previous:?} and as {digest:?}",
                    ok.version
                ),
            );
        }
        Ok(())
    }

    pub fn acked_chunks(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.acked.keys().copied()
    }

    /// `target`, which mgmtd lists as serving or last-serving, must hold every acknowledged write
    /// of `chunk`; `committed` is its committed state.
    pub fn durable_at(&self, target: TargetId, chunk: ChunkId, committed: &ChunkState) -> Check {
        let Some(acked) = self.acked.get(&chunk) else { return Ok(()) };
        let Some((newest, _)) = acked.last_key_value() else { return Ok(()) };
        if committed.version < *newest {
            return fail(
                ViolationKind::LostWrite,
                format!(
                    "acknowledged chunk {chunk} {newest} is missing on {target}, which serves {}",
                    committed.version
                ),
            );
        }
        if let Some(digest) = acked.get(&committed.version)
            && *digest != committed.digest()
        {
            return fail(
                ViolationKind::LostWrite,
                format!(
                    "{target} holds chunk {chunk} {} as {:?}; acknowledged as {digest:?}",
                    committed.version,
                    committed.digest()
                ),
            );
        }
        Ok(())
    }

    /// A replica answered a read of `[offset, offset + length)` with `ok`.
    pub fn read_served(
        &self,
        target: TargetId,
        chunk: ChunkId,
        offset_bytes: u32,
        length_bytes: u32,
        ok: &ReadOk,
    ) -> Check {
        let Some(known) = self.history.get(&chunk).and_then(|h| h.get(&ok.version)) else {
            return fail(
                ViolationKind::ReadNotCommitted,
                format!(
                    "{target} served chunk {chunk} {}, which no serving replica committed",
                    ok.version
                ),
            );
        };
        let data = &known.data;
        let start = (offset_bytes as usize).min(data.len());
        let end = start.saturating_add(length_bytes as usize).min(data.len());
        if known.state.removed
            || ok.chunk_length_bytes != known.state.length_bytes
            || ok.data[..] != data[start..end]
        {
            return fail(
                ViolationKind::ReadNotCommitted,
                format!(
                    "{target} served chunk {chunk} {} [{offset_bytes}, +{length_bytes}) with bytes that differ from the committed version",
                    ok.version
                ),
            );
        }
        Ok(())
    }

    /// Whether "not found" is a fresh enough answer for a client that had observed `seen`: the
    /// chunk must have been removed at `seen` or later.
    pub fn removed_since(&self, chunk: ChunkId, seen: ChunkVersion) -> bool {
        seen.0 == 0
            || self
                .history
                .get(&chunk)
                .is_some_and(|h| h.range(seen..).any(|(_, e)| e.state.removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r3fs_types::{ChainVersion, ClientId, InodeId};

    fn chunk() -> ChunkId {
        ChunkId::new(InodeId(1), 0)
    }

    fn tag(seq: u64) -> UpdateTag {
        UpdateTag { client: ClientId(1), channel: 0, seq }
    }

    fn state(version: u64, data: &[u8], tag: Option<UpdateTag>) -> ChunkState {
        let digest = Digest::of(ChunkVersion(version), data, false);
        ChunkState {
            version: ChunkVersion(version),
            chain_version: ChainVersion(1),
            length_bytes: digest.length_bytes,
            checksum: digest.checksum,
            removed: false,
            tag,
        }
    }

    fn write(data: &'static [u8]) -> Update {
        Update::Write { offset_bytes: 0, data: Bytes::from_static(data) }
    }

    fn ok_of(s: &ChunkState) -> WriteOk {
        WriteOk::from_state(s)
    }

    #[test]
    fn history_accepts_a_valid_sequence_and_rejects_the_rest() {
        let mut checker = Checker::new(64);
        checker.issue(tag(1), chunk(), write(b"ab"));
        checker.issue(tag(2), chunk(), write(b"x"));
        let v1 = state(1, b"ab", Some(tag(1)));
        assert_eq!(checker.visible(chunk(), v1, Bytes::from_static(b"ab"), 0), Ok(()));
        assert_eq!(checker.visible(chunk(), v1, Bytes::from_static(b"ab"), 0), Ok(()));
        // Version 3 without 2.
        let v3 = state(3, b"xb", Some(tag(2)));
        assert_eq!(
            checker.visible(chunk(), v3, Bytes::from_static(b"xb"), 0).map_err(|e| e.0),
            Err(ViolationKind::InvalidHistory)
        );
        // Wrong bytes for the write.
        let bad = state(2, b"xx", Some(tag(2)));
        assert_eq!(
            checker.visible(chunk(), bad, Bytes::from_static(b"xx"), 0).map_err(|e| e.0),
            Err(ViolationKind::InvalidHistory)
        );
        let v2 = state(2, b"xb", Some(tag(2)));
        assert_eq!(checker.visible(chunk(), v2, Bytes::from_static(b"xb"), 0), Ok(()));
        // The same write again: a violation while the chain's dedup memory is intact, the
        // documented limit after a replica restarted.
        let again = state(3, b"xb", Some(tag(2)));
        assert_eq!(
            checker.visible(chunk(), again, Bytes::from_static(b"xb"), 0).map_err(|e| e.0),
            Err(ViolationKind::InvalidHistory)
        );
        assert_eq!(checker.writes_reapplied(), 0);
        // Another content for a known version.
        let other = state(2, b"zz", Some(tag(2)));
        assert_eq!(
            checker.visible(chunk(), other, Bytes::from_static(b"zz"), 0).map_err(|e| e.0),
            Err(ViolationKind::DivergentCommit)
        );
        assert_eq!(checker.newest(chunk()).map(|e| e.state.version), Some(ChunkVersion(2)));
        assert_eq!(checker.visible(chunk(), again, Bytes::from_static(b"xb"), 1), Ok(()));
        assert_eq!(checker.writes_reapplied(), 1);
    }

    #[test]
    fn acks_reads_and_durability() {
        let mut checker = Checker::new(64);
        checker.issue(tag(1), chunk(), write(b"abc"));
        let v1 = state(1, b"abc", Some(tag(1)));
        assert_eq!(
            checker.acknowledged(chunk(), tag(1), &ok_of(&v1)).map_err(|e| e.0),
            Err(ViolationKind::AckNotCommitted),
            "not committed yet"
        );
        checker.visible(chunk(), v1, Bytes::from_static(b"abc"), 0).expect("valid");
        assert_eq!(checker.acknowledged(chunk(), tag(1), &ok_of(&v1)), Ok(()));
        assert_eq!(
            checker.acknowledged(chunk(), tag(2), &ok_of(&v1)).map_err(|e| e.0),
            Err(ViolationKind::AckNotCommitted),
            "another write's version"
        );
        assert_eq!(checker.durable_at(TargetId(2), chunk(), &v1), Ok(()));
        assert_eq!(
            checker.durable_at(TargetId(2), chunk(), &ChunkState::ABSENT).map_err(|e| e.0),
            Err(ViolationKind::LostWrite)
        );
        let read = |data: &'static [u8], version: u64| ReadOk {
            version: ChunkVersion(version),
            chunk_length_bytes: 3,
            data: Bytes::from_static(data),
            checksum: crc32c::crc32c(data),
        };
        assert_eq!(checker.read_served(TargetId(1), chunk(), 1, 5, &read(b"bc", 1)), Ok(()));
        assert_eq!(
            checker.read_served(TargetId(1), chunk(), 1, 5, &read(b"bd", 1)).map_err(|e| e.0),
            Err(ViolationKind::ReadNotCommitted)
        );
        assert_eq!(
            checker.read_served(TargetId(1), chunk(), 0, 5, &read(b"abc", 2)).map_err(|e| e.0),
            Err(ViolationKind::ReadNotCommitted)
        );
        assert!(checker.removed_since(chunk(), ChunkVersion(0)));
        assert!(!checker.removed_since(chunk(), ChunkVersion(1)));
    }
}
