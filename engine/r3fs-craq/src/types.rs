//! Plain data shared by the replica, its storage trait and its messages: update tags, updates and
//! their reference semantics, per-version chunk state.

use bytes::Bytes;
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, ClientId};
use std::fmt;

/// Identifies one client write across retries. A client keeps at most one outstanding write per
/// `(client, channel)` and bumps `seq` by one for each new write on that channel, so a replica needs
/// to remember only the last `seq` per channel to apply every write once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpdateTag {
    pub client: ClientId,
    pub channel: u32,
    pub seq: u64,
}

impl UpdateTag {
    /// The key under which replicas remember the channel's last write.
    pub fn channel_key(&self) -> ChannelKey {
        ChannelKey { client: self.client, channel: self.channel }
    }
}

/// One client's update channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub client: ClientId,
    pub channel: u32,
}

/// What a write does to a chunk. Every variant is applied to a copy of the committed content
/// (copy-on-write), so the committed version stays readable until the new one commits.
#[derive(Clone, PartialEq, Eq)]
pub enum Update {
    /// Write `data` at `offset`; a gap past the current end reads as zeros.
    Write { offset_bytes: u32, data: Bytes },
    /// Set the length, cutting or zero-extending.
    Truncate { length_bytes: u32 },
    /// Grow with zeros to at least `length_bytes`; a chunk already that long keeps its bytes (the
    /// new version has the same content). Unlike `Truncate`, its result depends on the base, so a
    /// replica whose base differs finds out through the digest check like for a partial write.
    Extend { length_bytes: u32 },
    /// Remove the chunk. Its versions live on in a tombstone so that versions only grow.
    Remove,
    /// Replace the whole content. Used between replicas when a successor must not depend on its
    /// own base (it is syncing, lags, or diverged); clients may also use it.
    Replace { data: Bytes },
}

impl fmt::Debug for Update {
    // Payloads are elided: a debug line must stay one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Update::Write { offset_bytes, data } => {
                write!(f, "Write {{ offset_bytes: {offset_bytes}, len: {} }}", data.len())
            }
            Update::Truncate { length_bytes } => write!(f, "Truncate {{ {length_bytes} }}"),
            Update::Extend { length_bytes } => write!(f, "Extend {{ {length_bytes} }}"),
            Update::Remove => f.write_str("Remove"),
            Update::Replace { data } => write!(f, "Replace {{ len: {} }}", data.len()),
        }
    }
}

/// Why an update cannot be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "the update would make the chunk {length_bytes} bytes long, over the {max_bytes} limit"
    )]
    TooLarge { length_bytes: u64, max_bytes: u32 },
}

impl Update {
    /// The bytes the update carries (empty for truncate and remove); the payload checksum covers
    /// exactly these.
    pub fn payload(&self) -> &[u8] {
        match self {
            Update::Write { data, .. } | Update::Replace { data } => data,
            Update::Truncate { .. } | Update::Extend { .. } | Update::Remove => &[],
        }
    }

    pub fn payload_checksum(&self) -> u32 {
        crc32c::crc32c(self.payload())
    }

    pub fn is_full_replace(&self) -> bool {
        matches!(self, Update::Replace { .. } | Update::Remove)
    }

    /// Checks the update against the chunk size limit without needing the base content.
    pub fn check_size(&self, chunk_size_bytes_max: u32) -> Result<(), ApplyError> {
        let length_bytes = match self {
            Update::Write { offset_bytes, data } => u64::from(*offset_bytes) + data.len() as u64,
            Update::Truncate { length_bytes } | Update::Extend { length_bytes } => {
                u64::from(*length_bytes)
            }
            Update::Remove => 0,
            Update::Replace { data } => data.len() as u64,
        };
        if length_bytes > u64::from(chunk_size_bytes_max) {
            return Err(ApplyError::TooLarge { length_bytes, max_bytes: chunk_size_bytes_max });
        }
        Ok(())
    }

    /// The reference semantics every store implements: applies the update to `base` (the committed
    /// content; empty for an absent or removed chunk) and returns the new content and whether the
    /// result is a tombstone.
    pub fn apply(&self, base: &[u8], chunk_size_bytes_max: u32) -> Result<Applied, ApplyError> {
        self.check_size(chunk_size_bytes_max)?;
        let applied = match self {
            Update::Write { offset_bytes, data } => {
                let start = *offset_bytes as usize;
                let end = start + data.len();
                let mut content = base.to_vec();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[start..end].copy_from_slice(data);
                Applied { content, removed: false }
            }
            Update::Truncate { length_bytes } => {
                let mut content = base.to_vec();
                content.resize(*length_bytes as usize, 0);
                Applied { content, removed: false }
            }
            Update::Extend { length_bytes } => {
                let mut content = base.to_vec();
                if content.len() < *length_bytes as usize {
                    content.resize(*length_bytes as usize, 0);
                }
                Applied { content, removed: false }
            }
            Update::Remove => Applied { content: Vec::new(), removed: true },
            Update::Replace { data } => Applied { content: data.to_vec(), removed: false },
        };
        Ok(applied)
    }
}

/// The result of [`Update::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub content: Vec<u8>,
    pub removed: bool,
}

/// What identifies one version's content: replicas compare digests at every hop to prove they
/// hold the same bytes without sending them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    pub version: ChunkVersion,
    pub length_bytes: u32,
    /// CRC32C of the whole content (0 for empty content).
    pub checksum: u32,
    pub removed: bool,
}

impl Digest {
    pub fn of(version: ChunkVersion, content: &[u8], removed: bool) -> Digest {
        debug_assert!(!removed || content.is_empty(), "a tombstone has no content");
        Digest {
            version,
            length_bytes: u32::try_from(content.len()).unwrap_or(u32::MAX),
            checksum: crc32c::crc32c(content),
            removed,
        }
    }

    /// Same bytes, ignoring the version number.
    pub fn same_content(&self, other: &Digest) -> bool {
        self.length_bytes == other.length_bytes
            && self.checksum == other.checksum
            && self.removed == other.removed
    }
}

/// The state of one version (committed or pending) of a chunk, as the store keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkState {
    pub version: ChunkVersion,
    /// The chain version under which this version was written; resync compares it.
    pub chain_version: ChainVersion,
    pub length_bytes: u32,
    /// CRC32C of the whole content.
    pub checksum: u32,
    /// A tombstone: the chunk reads as absent, but its version number lives on.
    pub removed: bool,
    /// The client write that produced this version, if any: lets a retried write be recognised
    /// even after the replica restarted and lost its in-memory table.
    pub tag: Option<UpdateTag>,
}

impl ChunkState {
    /// The state of a chunk that was never written.
    pub const ABSENT: ChunkState = ChunkState {
        version: ChunkVersion(0),
        chain_version: ChainVersion(0),
        length_bytes: 0,
        checksum: 0,
        removed: true,
        tag: None,
    };

    pub fn digest(&self) -> Digest {
        Digest {
            version: self.version,
            length_bytes: self.length_bytes,
            checksum: self.checksum,
            removed: self.removed,
        }
    }
}

/// A chunk's metadata: its committed version and, while an update is in flight, its pending one.
/// Invariant: `pending.version > committed.version` whenever a pending version exists; it is
/// exactly `committed.version + 1` except for a full replace sent to a lagging (syncing) replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub chunk: ChunkId,
    pub committed: ChunkState,
    pub pending: Option<ChunkState>,
}

impl ChunkMeta {
    pub fn absent(chunk: ChunkId) -> ChunkMeta {
        ChunkMeta { chunk, committed: ChunkState::ABSENT, pending: None }
    }

    /// Whether the store holds nothing at all for this chunk (not even a tombstone).
    pub fn is_absent(&self) -> bool {
        self.committed.version == ChunkVersion(0) && self.pending.is_none()
    }

    /// Checks the structural invariant; stores assert it on every write and the replica on every
    /// read of metadata.
    pub fn check(&self) -> Result<(), String> {
        if let Some(pending) = &self.pending
            && pending.version <= self.committed.version
        {
            return Err(format!(
                "chunk {}: pending {} is not after committed {}",
                self.chunk, pending.version, self.committed.version
            ));
        }
        if self.committed.removed && self.committed.length_bytes != 0 {
            return Err(format!("chunk {}: a tombstone with content", self.chunk));
        }
        Ok(())
    }
}

/// The next version after `version`.
pub fn next_version(version: ChunkVersion) -> ChunkVersion {
    ChunkVersion(version.0 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_zero_fills_the_gap_and_overwrites_in_place() {
        let update = Update::Write { offset_bytes: 4, data: Bytes::from_static(b"xy") };
        let applied = update.apply(b"ab", 16).expect("fits");
        assert_eq!(applied.content, b"ab\0\0xy");
        let applied = update.apply(b"abcdefgh", 16).expect("fits");
        assert_eq!(applied.content, b"abcdxygh");
        assert!(!applied.removed);
    }

    #[test]
    fn truncate_remove_replace() {
        let t = Update::Truncate { length_bytes: 3 }.apply(b"abcdef", 16).expect("fits");
        assert_eq!(t.content, b"abc");
        let t = Update::Truncate { length_bytes: 5 }.apply(b"ab", 16).expect("fits");
        assert_eq!(t.content, b"ab\0\0\0");
        let e = Update::Extend { length_bytes: 5 }.apply(b"ab", 16).expect("fits");
        assert_eq!(e.content, b"ab\0\0\0");
        let e = Update::Extend { length_bytes: 2 }.apply(b"abcdef", 16).expect("fits");
        assert_eq!(e.content, b"abcdef", "never shrinks");
        let e = Update::Extend { length_bytes: 3 }.apply(b"", 16).expect("fits");
        assert!(!e.removed && e.content == b"\0\0\0", "creates a removed or absent chunk");
        let r = Update::Remove.apply(b"abc", 16).expect("fits");
        assert!(r.removed && r.content.is_empty());
        let r = Update::Replace { data: Bytes::from_static(b"q") }.apply(b"abc", 16).expect("fits");
        assert_eq!(r.content, b"q");
    }

    #[test]
    fn size_limit_is_enforced() {
        let update = Update::Write { offset_bytes: 15, data: Bytes::from_static(b"xy") };
        assert_eq!(
            update.apply(b"", 16),
            Err(ApplyError::TooLarge { length_bytes: 17, max_bytes: 16 })
        );
        assert!(Update::Truncate { length_bytes: 17 }.check_size(16).is_err());
        assert!(Update::Truncate { length_bytes: 16 }.check_size(16).is_ok());
        assert!(Update::Extend { length_bytes: 17 }.check_size(16).is_err());
    }

    #[test]
    fn meta_invariant() {
        let chunk = ChunkId::new(r3fs_types::InodeId(1), 0);
        let mut meta = ChunkMeta::absent(chunk);
        assert!(meta.check().is_ok() && meta.is_absent());
        meta.committed.version = ChunkVersion(1);
        meta.pending = Some(ChunkState { version: ChunkVersion(1), ..ChunkState::ABSENT });
        assert!(meta.check().is_err());
        meta.committed.version = ChunkVersion(0);
        meta.pending = Some(ChunkState { version: ChunkVersion(1), ..ChunkState::ABSENT });
        assert!(meta.check().is_ok() && !meta.is_absent());
    }
}
