//! Newtype ids. Each wraps one integer; they never mix by accident.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }
    };
}

id_newtype!(
    /// A node of the cluster (mgmtd, meta, storage or client process).
    NodeId(u32), "N"
);
id_newtype!(
    /// A storage target: one slice of one disk, owned by one core of one storage node.
    TargetId(u64), "T"
);
id_newtype!(
    /// A replication chain: an ordered list of targets holding the same chunks.
    ChainId(u32), "C"
);
id_newtype!(
    /// Bumped by mgmtd on every change of a chain's membership or target states. Writes carry the
    /// version the client saw; replicas refuse a stale one.
    ChainVersion(u32), "v"
);
id_newtype!(
    /// A chain table: the list of chains a layout selects from.
    ChainTableId(u32), "CT"
);
id_newtype!(
    /// Chain tables are immutable once uploaded; a change is a new version.
    ChainTableVersion(u32), "v"
);
id_newtype!(
    /// Version of the whole routing snapshot published by mgmtd.
    RoutingVersion(u64), "r"
);
id_newtype!(
    /// A file-system inode.
    InodeId(u64), "I"
);
id_newtype!(
    /// Update/commit version of one chunk, assigned by the chain head.
    ChunkVersion(u64), "u"
);
id_newtype!(
    /// A client instance; with a sequence number it makes retried writes idempotent.
    ClientId(u64), "client-"
);
id_newtype!(
    /// Correlates a request with its response on one connection.
    RequestId(u64), "req-"
);

impl InodeId {
    /// The root directory.
    pub const ROOT: InodeId = InodeId(1);
}

impl ChainVersion {
    pub fn next(self) -> ChainVersion {
        ChainVersion(self.0 + 1)
    }
}

/// A chunk: the unit of data on a chain. 16 bytes, big-endian inode id then big-endian chunk index,
/// so that byte order equals `(inode, index)` order: range scans over one file's chunks are
/// contiguous and ordered, in the chunk store and in the KV alike.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId {
    pub inode: InodeId,
    pub index: u64,
}

impl ChunkId {
    pub const LEN: usize = 16;

    pub fn new(inode: InodeId, index: u64) -> Self {
        Self { inode, index }
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.inode.0.to_be_bytes());
        out[8..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        let (inode, index) = bytes.split_at(8);
        // The splits are exactly 8 bytes each by construction.
        let inode = u64::from_be_bytes(inode.try_into().expect("8-byte half"));
        let index = u64::from_be_bytes(index.try_into().expect("8-byte half"));
        Self { inode: InodeId(inode), index }
    }

    /// Decodes from a slice that came from disk or the network.
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; Self::LEN] = bytes.try_into().ok()?;
        Some(Self::from_bytes(array))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:016x}", self.inode.0, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunk_id_byte_order_is_value_order(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let x = ChunkId::new(InodeId(a.0), a.1);
            let y = ChunkId::new(InodeId(b.0), b.1);
            prop_assert_eq!(x.cmp(&y), x.to_bytes().cmp(&y.to_bytes()));
            prop_assert_eq!(ChunkId::from_bytes(x.to_bytes()), x);
        }
    }

    #[test]
    fn chunk_id_rejects_wrong_length() {
        assert!(ChunkId::try_from_slice(&[0u8; 15]).is_none());
        assert!(ChunkId::try_from_slice(&[0u8; 17]).is_none());
    }
}
