//! Records stored in the KV and their typed, validated in-memory forms.
//!
//! Values are protobuf messages (prost derive, no `.proto`): fields can be added without a format
//! break, and decoding bytes that came from the store yields a typed error, never a panic. Every
//! record carries what its key also says (an inode record its id) and decoding checks both agree.

use crate::error::{MetaError, MetaResult};
use prost::Message;
use r3fs_types::{ChainSelection, ChainTableId, ChainTableVersion, ClientId, InodeId, Layout};

/// Version of the on-KV format; bumped only with a migration.
pub const FORMAT_VERSION: u32 = 1;

/// Permission bits a mode may carry (rwx for user/group/other plus setuid, setgid, sticky).
pub const MODE_PERMISSION_MASK: u32 = 0o7777;
pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_ISVTX: u32 = 0o1000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InodeKind {
    File,
    Directory,
    Symlink,
}

impl InodeKind {
    fn to_wire(self) -> u32 {
        match self {
            InodeKind::File => 1,
            InodeKind::Directory => 2,
            InodeKind::Symlink => 3,
        }
    }

    fn from_wire(value: u32) -> MetaResult<Self> {
        match value {
            1 => Ok(InodeKind::File),
            2 => Ok(InodeKind::Directory),
            3 => Ok(InodeKind::Symlink),
            other => Err(MetaError::corrupt(format!("unknown inode kind {other}"))),
        }
    }

    /// The file-type bits of `st_mode`.
    pub fn type_bits(self) -> u32 {
        match self {
            InodeKind::File => S_IFREG,
            InodeKind::Directory => S_IFDIR,
            InodeKind::Symlink => S_IFLNK,
        }
    }
}

/// Attributes every inode has. Times are nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Permission bits only (`MODE_PERMISSION_MASK`); the type comes from the inode's kind.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Number of directory entries naming this inode. Directories always have 1 (the root 1 as
    /// well): counting subdirectories would make every mkdir write its parent, a hot key. Like
    /// btrfs, so `find` knows not to use the leaf optimisation.
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeData {
    File {
        /// Length in bytes as meta knows it (see docs/design/metadata.md, "File length").
        length: u64,
        /// Bumped by every truncate; length reports made under an older version are ignored.
        truncate_version: u64,
        layout: Layout,
    },
    Directory {
        /// The directory's parent (the root is its own parent). Kept so a directory's real path
        /// and rename's cycle check need no reverse index.
        parent: InodeId,
        /// Name of the entry in `parent` that points here ("" for the root).
        name: String,
        /// Default layout of files created here (each file draws its own ShuffleV1 seed).
        layout: Layout,
    },
    Symlink {
        target: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub id: InodeId,
    pub attr: Attr,
    pub data: InodeData,
}

impl Inode {
    pub fn kind(&self) -> InodeKind {
        match self.data {
            InodeData::File { .. } => InodeKind::File,
            InodeData::Directory { .. } => InodeKind::Directory,
            InodeData::Symlink { .. } => InodeKind::Symlink,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == InodeKind::Directory
    }

    /// `st_mode`: type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind().type_bits() | (self.attr.mode & MODE_PERMISSION_MASK)
    }

    /// `st_size`: file length, symlink target length, 0 for directories.
    pub fn size(&self) -> u64 {
        match &self.data {
            InodeData::File { length, .. } => *length,
            InodeData::Directory { .. } => 0,
            InodeData::Symlink { target } => target.len() as u64,
        }
    }

    pub fn layout(&self) -> Option<&Layout> {
        match &self.data {
            InodeData::File { layout, .. } | InodeData::Directory { layout, .. } => Some(layout),
            InodeData::Symlink { .. } => None,
        }
    }

    /// The parent of a directory.
    pub fn dir_parent(&self) -> Option<InodeId> {
        match &self.data {
            InodeData::Directory { parent, .. } => Some(*parent),
            _ => None,
        }
    }
}

/// A directory entry: `name` in directory `parent` names `inode`, whose kind is copied here so a
/// listing needs no inode reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub parent: InodeId,
    pub name: String,
    pub inode: InodeId,
    pub kind: InodeKind,
}

/// What the garbage collector must do with a queued inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcKind {
    /// A file whose last link is gone: remove its chunks, then the inode (once no write session
    /// is live).
    File,
    /// A directory detached from the tree by a recursive remove: empty it in bounded batches.
    Tree,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcEntry {
    pub inode: InodeId,
    pub kind: GcKind,
    pub enqueued_ns: i64,
}

/// A write session: a client has the file open for writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub inode: InodeId,
    pub session: u64,
    pub client: ClientId,
    pub opened_ns: i64,
    /// Last open, length report, fsync or explicit renewal; the session expires
    /// `session_timeout_ms` after it.
    pub renewed_ns: i64,
}

/// Parameters fixed when the file system is formatted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub format_version: u32,
    pub id_shards: u32,
    pub id_batch: u64,
    pub created_ns: i64,
}

// ---- wire records -------------------------------------------------------------------------

#[derive(Clone, PartialEq, Message)]
struct LayoutRecord {
    #[prost(uint32, tag = "1")]
    chain_table_id: u32,
    #[prost(uint32, tag = "2")]
    chain_table_version: u32,
    #[prost(uint32, tag = "3")]
    chunk_size: u32,
    #[prost(uint32, tag = "4")]
    stripe_size: u32,
    /// 1 = ShuffleV1 (`seed`), 2 = List (`positions`).
    #[prost(uint32, tag = "5")]
    selection: u32,
    #[prost(uint64, tag = "6")]
    seed: u64,
    #[prost(uint32, repeated, tag = "7")]
    positions: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct InodeRecord {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(uint32, tag = "3")]
    mode: u32,
    #[prost(uint32, tag = "4")]
    uid: u32,
    #[prost(uint32, tag = "5")]
    gid: u32,
    #[prost(uint32, tag = "6")]
    nlink: u32,
    #[prost(int64, tag = "7")]
    atime_ns: i64,
    #[prost(int64, tag = "8")]
    mtime_ns: i64,
    #[prost(int64, tag = "9")]
    ctime_ns: i64,
    #[prost(uint64, tag = "10")]
    length: u64,
    #[prost(uint64, tag = "11")]
    truncate_version: u64,
    #[prost(message, optional, tag = "12")]
    layout: Option<LayoutRecord>,
    #[prost(uint64, tag = "13")]
    parent: u64,
    #[prost(string, tag = "14")]
    name: String,
    #[prost(string, tag = "15")]
    symlink_target: String,
}

#[derive(Clone, PartialEq, Message)]
struct DirEntryRecord {
    #[prost(uint64, tag = "1")]
    inode: u64,
    #[prost(uint32, tag = "2")]
    kind: u32,
}

#[derive(Clone, PartialEq, Message)]
struct GcRecord {
    /// 1 = file, 2 = tree.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(int64, tag = "2")]
    enqueued_ns: i64,
}

#[derive(Clone, PartialEq, Message)]
struct SessionRecord {
    #[prost(uint64, tag = "1")]
    client: u64,
    #[prost(int64, tag = "2")]
    opened_ns: i64,
    #[prost(int64, tag = "3")]
    renewed_ns: i64,
}

#[derive(Clone, PartialEq, Message)]
struct FormatRecord {
    #[prost(uint32, tag = "1")]
    format_version: u32,
    #[prost(uint32, tag = "2")]
    id_shards: u32,
    #[prost(uint64, tag = "3")]
    id_batch: u64,
    #[prost(int64, tag = "4")]
    created_ns: i64,
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> MetaResult<M> {
    M::decode(bytes).map_err(|e| MetaError::corrupt(format!("{what}: {e}")))
}

fn layout_to_record(layout: &Layout) -> LayoutRecord {
    let (selection, seed, positions) = match &layout.chains {
        ChainSelection::ShuffleV1 { seed } => (1, *seed, Vec::new()),
        ChainSelection::List(list) => (2, 0, list.clone()),
    };
    LayoutRecord {
        chain_table_id: layout.chain_table_id.0,
        chain_table_version: layout.chain_table_version.0,
        chunk_size: layout.chunk_size,
        stripe_size: layout.stripe_size,
        selection,
        seed,
        positions,
    }
}

fn layout_from_record(record: LayoutRecord) -> MetaResult<Layout> {
    let chains = match record.selection {
        1 => ChainSelection::ShuffleV1 { seed: record.seed },
        2 => ChainSelection::List(record.positions),
        other => return Err(MetaError::corrupt(format!("unknown chain selection {other}"))),
    };
    let layout = Layout {
        chain_table_id: ChainTableId(record.chain_table_id),
        chain_table_version: ChainTableVersion(record.chain_table_version),
        chunk_size: record.chunk_size,
        stripe_size: record.stripe_size,
        chains,
    };
    // The chain table's length is not known here; check what can be checked without it.
    layout.validate(u32::MAX).map_err(|e| MetaError::corrupt(format!("stored layout: {e}")))?;
    Ok(layout)
}

pub fn encode_inode(inode: &Inode) -> Vec<u8> {
    assert!(inode.attr.mode & !MODE_PERMISSION_MASK == 0, "mode carries type bits");
    let mut record = InodeRecord {
        id: inode.id.0,
        kind: inode.kind().to_wire(),
        mode: inode.attr.mode,
        uid: inode.attr.uid,
        gid: inode.attr.gid,
        nlink: inode.attr.nlink,
        atime_ns: inode.attr.atime_ns,
        mtime_ns: inode.attr.mtime_ns,
        ctime_ns: inode.attr.ctime_ns,
        ..Default::default()
    };
    match &inode.data {
        InodeData::File { length, truncate_version, layout } => {
            record.length = *length;
            record.truncate_version = *truncate_version;
            record.layout = Some(layout_to_record(layout));
        }
        InodeData::Directory { parent, name, layout } => {
            record.parent = parent.0;
            record.name = name.clone();
            record.layout = Some(layout_to_record(layout));
        }
        InodeData::Symlink { target } => record.symlink_target = target.clone(),
    }
    record.encode_to_vec()
}

/// Decodes the inode stored under the key of `id`.
pub fn decode_inode(id: InodeId, bytes: &[u8]) -> MetaResult<Inode> {
    let record: InodeRecord = decode(bytes, "inode record")?;
    if record.id != id.0 {
        return Err(MetaError::corrupt(format!(
            "inode key {id} holds the record of I{}",
            record.id
        )));
    }
    if record.mode & !MODE_PERMISSION_MASK != 0 {
        return Err(MetaError::corrupt(format!("inode {id} mode {:o}", record.mode)));
    }
    let kind = InodeKind::from_wire(record.kind)?;
    let layout = || {
        record
            .layout
            .clone()
            .ok_or_else(|| MetaError::corrupt(format!("inode {id} has no layout")))
            .and_then(layout_from_record)
    };
    let data = match kind {
        InodeKind::File => InodeData::File {
            length: record.length,
            truncate_version: record.truncate_version,
            layout: layout()?,
        },
        InodeKind::Directory => InodeData::Directory {
            parent: InodeId(record.parent),
            name: record.name.clone(),
            layout: layout()?,
        },
        InodeKind::Symlink => InodeData::Symlink { target: record.symlink_target.clone() },
    };
    Ok(Inode {
        id,
        attr: Attr {
            mode: record.mode,
            uid: record.uid,
            gid: record.gid,
            nlink: record.nlink,
            atime_ns: record.atime_ns,
            mtime_ns: record.mtime_ns,
            ctime_ns: record.ctime_ns,
        },
        data,
    })
}

pub fn encode_dir_entry(inode: InodeId, kind: InodeKind) -> Vec<u8> {
    DirEntryRecord { inode: inode.0, kind: kind.to_wire() }.encode_to_vec()
}

pub fn decode_dir_entry(parent: InodeId, name: String, bytes: &[u8]) -> MetaResult<DirEntry> {
    let record: DirEntryRecord = decode(bytes, "directory entry")?;
    if record.inode == 0 {
        return Err(MetaError::corrupt(format!("entry {name:?} of {parent} names inode 0")));
    }
    Ok(DirEntry {
        parent,
        name,
        inode: InodeId(record.inode),
        kind: InodeKind::from_wire(record.kind)?,
    })
}

pub fn encode_gc(kind: GcKind, enqueued_ns: i64) -> Vec<u8> {
    let kind = match kind {
        GcKind::File => 1,
        GcKind::Tree => 2,
    };
    GcRecord { kind, enqueued_ns }.encode_to_vec()
}

pub fn decode_gc(inode: InodeId, bytes: &[u8]) -> MetaResult<GcEntry> {
    let record: GcRecord = decode(bytes, "gc record")?;
    let kind = match record.kind {
        1 => GcKind::File,
        2 => GcKind::Tree,
        other => return Err(MetaError::corrupt(format!("unknown gc kind {other}"))),
    };
    Ok(GcEntry { inode, kind, enqueued_ns: record.enqueued_ns })
}

pub fn encode_session(session: &Session) -> Vec<u8> {
    SessionRecord {
        client: session.client.0,
        opened_ns: session.opened_ns,
        renewed_ns: session.renewed_ns,
    }
    .encode_to_vec()
}

pub fn decode_session(inode: InodeId, session: u64, bytes: &[u8]) -> MetaResult<Session> {
    let record: SessionRecord = decode(bytes, "session record")?;
    Ok(Session {
        inode,
        session,
        client: ClientId(record.client),
        opened_ns: record.opened_ns,
        renewed_ns: record.renewed_ns,
    })
}

pub fn encode_format(format: &Format) -> Vec<u8> {
    FormatRecord {
        format_version: format.format_version,
        id_shards: format.id_shards,
        id_batch: format.id_batch,
        created_ns: format.created_ns,
    }
    .encode_to_vec()
}

pub fn decode_format(bytes: &[u8]) -> MetaResult<Format> {
    let record: FormatRecord = decode(bytes, "format record")?;
    if record.format_version != FORMAT_VERSION {
        return Err(MetaError::new(
            r3fs_types::ErrorCode::NotSupported,
            format!(
                "the store has metadata format {} but this binary speaks {FORMAT_VERSION}",
                record.format_version
            ),
        ));
    }
    if record.id_shards == 0 || record.id_batch == 0 {
        return Err(MetaError::corrupt("format record has zero id shards or batch"));
    }
    Ok(Format {
        format_version: record.format_version,
        id_shards: record.id_shards,
        id_batch: record.id_batch,
        created_ns: record.created_ns,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn test_layout(seed: u64) -> Layout {
        Layout {
            chain_table_id: ChainTableId(1),
            chain_table_version: ChainTableVersion(1),
            chunk_size: 1 << 20,
            stripe_size: 4,
            chains: ChainSelection::ShuffleV1 { seed },
        }
    }

    fn attr(mode: u32) -> Attr {
        Attr { mode, uid: 1, gid: 2, nlink: 1, atime_ns: 3, mtime_ns: -4, ctime_ns: 5 }
    }

    proptest! {
        #[test]
        fn inodes_round_trip(
            id in 1u64.., mode in 0u32..0o7777, length in any::<u64>(), tv in any::<u64>(),
            seed in any::<u64>(), kind in 0u8..4, text in "[a-z/]{0,30}"
        ) {
            let data = match kind {
                0 => InodeData::File { length, truncate_version: tv, layout: test_layout(seed) },
                1 => InodeData::Directory { parent: InodeId(length), name: text, layout: test_layout(seed) },
                2 => InodeData::Directory {
                    parent: InodeId(1),
                    name: String::new(),
                    layout: Layout { chains: ChainSelection::List(vec![3, 1, 2, 0]), ..test_layout(0) },
                },
                _ => InodeData::Symlink { target: text },
            };
            let inode = Inode { id: InodeId(id), attr: attr(mode), data };
            let bytes = encode_inode(&inode);
            prop_assert_eq!(decode_inode(InodeId(id), &bytes).unwrap(), inode);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_inode(InodeId(5), &bytes);
            let _ = decode_dir_entry(InodeId(1), "x".into(), &bytes);
            let _ = decode_gc(InodeId(5), &bytes);
            let _ = decode_session(InodeId(5), 1, &bytes);
            let _ = decode_format(&bytes);
        }
    }

    #[test]
    fn a_record_under_the_wrong_key_is_corrupt() {
        let inode = Inode {
            id: InodeId(9),
            attr: attr(0o644),
            data: InodeData::Symlink { target: "t".into() },
        };
        let error = decode_inode(InodeId(10), &encode_inode(&inode)).unwrap_err();
        assert_eq!(error.code, r3fs_types::ErrorCode::Internal);
    }

    #[test]
    fn st_mode_combines_type_and_permissions() {
        let inode = Inode {
            id: InodeId(9),
            attr: attr(0o1755),
            data: InodeData::Directory {
                parent: InodeId::ROOT,
                name: "d".into(),
                layout: test_layout(1),
            },
        };
        assert_eq!(inode.st_mode(), 0o041755);
    }
}
