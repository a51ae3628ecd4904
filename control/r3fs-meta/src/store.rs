//! [`MetaStore`]: the metadata operations. Stateless apart from an id block cache: every fact
//! lives in the KV, so any number of stores (in any number of processes) may serve the same file
//! system at once. Each operation is one KV transaction run with conflict retry (truncate,
//! fsync and close add storage calls between two transactions; see docs/design/metadata.md).

use crate::alloc::InodeAllocator;
use crate::clock::Clock;
use crate::cluster::{Capacity, ClusterInfo};
use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::names::{Last, Limits, check_name};
use crate::perm::{self, MAY_EXEC, MAY_READ, MAY_WRITE, TimeSet, User, check_inode};
use crate::resolve::{ParentAndLast, Resolver};
use crate::schema::{
    self, Attr, DirEntry, Format, GcKind, Inode, InodeData, InodeKind, S_ISGID, Session,
};
use crate::storage::{ChunkStorage, length_from_last_chunks, truncate_to};
use crate::txn::{INODE_COUNT_SHARDS, Tx};
use r3fs_kv::retry::RetryPolicy;
use r3fs_kv::{Kv, RangeRequest, ReadMode};
use r3fs_types::{ChainSelection, ClientId, ErrorCode, InodeId, Layout};
use serde::Deserialize;
use std::sync::Arc;

/// Largest file length (off_t is signed).
pub const FILE_LENGTH_MAX: u64 = i64::MAX as u64;

/// Options of the store (the `[meta]` part of the service config).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaOptions {
    pub limits: Limits,
    /// A write session not renewed (open, length report, fsync) for this long expires: its file
    /// may then be collected, and its length is settled from storage.
    pub session_timeout_ms: u64,
    pub gc: GcOptions,
    pub format: FormatOptions,
}

impl Default for MetaOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            session_timeout_ms: 5 * 60 * 1000,
            gc: GcOptions::default(),
            format: FormatOptions::default(),
        }
    }
}

/// The background collector and session sweeper.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcOptions {
    /// Pause between passes.
    pub interval_ms: u64,
    /// Queue entries looked at per pass.
    pub entries_per_pass_max: usize,
    /// Directory entries removed per transaction when emptying a detached tree.
    pub tree_entries_per_txn_max: usize,
    /// Sessions looked at per pass for expiry.
    pub sessions_per_pass_max: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            entries_per_pass_max: 1_024,
            tree_entries_per_txn_max: 256,
            sessions_per_pass_max: 4_096,
        }
    }
}

/// Used only when the store is formatted (first start on an empty KV).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormatOptions {
    pub id_shards: u32,
    pub id_batch: u64,
    /// Default layout of the root directory (inherited by everything created below it).
    pub root_layout: Layout,
}

impl Default for FormatOptions {
    fn default() -> Self {
        Self {
            id_shards: 64,
            id_batch: 1024,
            root_layout: Layout {
                chain_table_id: r3fs_types::ChainTableId(1),
                chain_table_version: r3fs_types::ChainTableVersion(1),
                chunk_size: 4 << 20,
                stripe_size: 1,
                chains: ChainSelection::ShuffleV1 { seed: 0 },
            },
        }
    }
}

impl MetaOptions {
    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.limits.validate(&mut errors);
        if self.session_timeout_ms < 1_000 {
            errors.push(format!(
                "session_timeout_ms ({}) must be at least 1000",
                self.session_timeout_ms
            ));
        }
        if self.gc.interval_ms == 0 {
            errors.push("gc.interval_ms must be at least 1".into());
        }
        for (name, value) in [
            ("gc.entries_per_pass_max", self.gc.entries_per_pass_max),
            ("gc.tree_entries_per_txn_max", self.gc.tree_entries_per_txn_max),
            ("gc.sessions_per_pass_max", self.gc.sessions_per_pass_max),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        // One tree step writes about three keys per entry; stay far below the KV's txn limit.
        if self.gc.tree_entries_per_txn_max > 10_000 {
            errors.push("gc.tree_entries_per_txn_max must be at most 10000".into());
        }
        if self.format.id_shards == 0 || self.format.id_shards > u32::from(u16::MAX) {
            errors
                .push(format!("format.id_shards ({}) must be in 1..=65535", self.format.id_shards));
        }
        if self.format.id_batch == 0 || self.format.id_batch > 1 << 20 {
            errors
                .push(format!("format.id_batch ({}) must be in 1..=1048576", self.format.id_batch));
        }
        if let Err(e) = self.format.root_layout.validate(u32::MAX) {
            errors.push(format!("format.root_layout: {e}"));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// What the store talks to besides the KV.
#[derive(Clone, Debug)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    /// `None` without storage access (no `[mgmtd]`, or `storage.enabled = false`): shrinking
    /// truncates are refused, lengths come from reports only, deleted files wait in the queue.
    pub storage: Option<Arc<dyn ChunkStorage>>,
    /// `None` without mgmtd: statfs reports unknown capacity, layouts are checked without the
    /// chain table's length.
    pub cluster: Option<Arc<dyn ClusterInfo>>,
}

impl Default for Deps {
    fn default() -> Self {
        Self { clock: Arc::new(crate::clock::SystemClock), storage: None, cluster: None }
    }
}

/// Flags of an open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    /// O_TRUNC: set the length to 0 after opening.
    pub truncate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateArgs {
    /// Permission bits (the client has applied its umask).
    pub mode: u32,
    /// O_EXCL: fail with Exists if the name exists.
    pub exclusive: bool,
    pub flags: OpenFlags,
    pub client: ClientId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub inode: Inode,
    /// Whether this call created the file.
    pub created: bool,
    /// The write session, when opened for writing.
    pub session: Option<u64>,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// Truncate (or extend) to this length.
    pub length: Option<u64>,
    /// A write session of this file: proof the caller opened it for writing (ftruncate on a
    /// writable descriptor needs no write permission at call time).
    pub session: Option<u64>,
}

/// A writer's claim: "the file is at least `length` bytes, as of truncate version
/// `truncate_version`" (the version it last saw in an inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthReport {
    pub length: u64,
    pub truncate_version: u64,
}

/// Result of a length report, fsync or close. Expected outcomes are data: a stale report or an
/// expired session is not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthOutcome {
    pub inode: Inode,
    /// Whether the report moved the length.
    pub adopted: bool,
    /// Whether the session named in the call existed (and was renewed or closed).
    pub session_live: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// More entries follow the last one returned.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// `None` when no mgmtd routing info is available.
    pub capacity: Option<Capacity>,
    /// Approximate number of inodes.
    pub inodes: u64,
    pub name_length_max: u32,
}

/// What `remove` removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveKind {
    /// unlink(2): anything but a directory.
    File,
    /// rmdir(2): an empty directory.
    EmptyDir,
    /// A file, or a directory with everything below it (detached at once, emptied in the
    /// background).
    Tree,
}

#[derive(Debug)]
pub struct MetaStore {
    pub(crate) kv: Arc<dyn Kv>,
    pub(crate) options: MetaOptions,
    pub(crate) retry: RetryPolicy,
    pub(crate) deps: Deps,
    ids: InodeAllocator,
    format: Format,
    pub(crate) gc_cursors: crate::gc::GcCursors,
}

impl MetaStore {
    /// Opens the file system in `kv`, formatting it (root directory, format record) if the KV
    /// holds none.
    pub async fn new(
        kv: Arc<dyn Kv>,
        options: MetaOptions,
        retry: RetryPolicy,
        deps: Deps,
    ) -> MetaResult<Self> {
        options.validate().map_err(|e| MetaError::new(ErrorCode::InvalidConfig, e.join("; ")))?;
        let now = deps.clock.now_ns();
        let format_options = options.format.clone();
        let format = transact!(&*kv, &retry, |tx| {
            {
                if let Some(bytes) = tx.txn.get(&keys::format_key(), ReadMode::Serializable).await?
                {
                    let format = schema::decode_format(&bytes)?;
                    if tx.inode(InodeId::ROOT).await?.is_none() {
                        return Err(MetaError::corrupt("formatted store without a root directory"));
                    }
                    return Ok(format);
                }
                let format = Format {
                    format_version: schema::FORMAT_VERSION,
                    id_shards: format_options.id_shards,
                    id_batch: format_options.id_batch,
                    created_ns: now,
                };
                tx.txn.set(&keys::format_key(), &schema::encode_format(&format))?;
                tx.put_inode(&Inode {
                    id: InodeId::ROOT,
                    attr: Attr {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        nlink: 1,
                        atime_ns: now,
                        mtime_ns: now,
                        ctime_ns: now,
                    },
                    data: InodeData::Directory {
                        parent: InodeId::ROOT,
                        name: String::new(),
                        layout: format_options.root_layout.clone(),
                    },
                })?;
                tx.count_inodes(1)?;
                tracing::info!("formatted a new file system");
                Ok(format)
            }
        })?;
        let ids = InodeAllocator::new(format.id_shards, format.id_batch);
        Ok(Self { kv, options, retry, deps, ids, format, gc_cursors: Default::default() })
    }

    pub fn options(&self) -> &MetaOptions {
        &self.options
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    pub(crate) fn now(&self) -> i64 {
        self.deps.clock.now_ns()
    }

    fn limits(&self) -> &Limits {
        &self.options.limits
    }

    async fn new_id(&self) -> MetaResult<InodeId> {
        self.ids.next(&*self.kv, &self.retry).await
    }

    // ---- lookups ------------------------------------------------------------------------

    /// The inode named `name` in directory `parent` (`.` and `..` included).
    pub async fn lookup(&self, user: &User, parent: InodeId, name: &str) -> MetaResult<Inode> {
        snapshot!(&*self.kv, |tx| {
            let dir = tx.inode_required(parent).await?;
            if !dir.is_dir() {
                return Err(MetaError::not_directory(format!("{parent} is not a directory")));
            }
            check_inode(user, &dir, MAY_EXEC)?;
            match name {
                "." => Ok(dir),
                ".." => Resolver::new(user, self.limits()).dir_parent(tx, &dir).await,
                _ => {
                    check_name(name, self.limits())?;
                    let entry = tx
                        .entry(parent, name)
                        .await?
                        .ok_or_else(|| MetaError::not_found(format!("{name:?} in {parent}")))?;
                    tx.inode_required(entry.inode).await
                }
            }
        })
    }

    /// stat/lstat of `path` relative to `at`; an empty path is `at` itself (getattr).
    pub async fn stat(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        follow: bool,
    ) -> MetaResult<Inode> {
        snapshot!(&*self.kv, |tx| {
            Resolver::new(user, self.limits()).resolve(tx, at, path, follow).await
        })
    }

    /// Inodes by id, from one snapshot; `None` for ids that do not exist.
    pub async fn batch_stat(&self, ids: &[InodeId]) -> MetaResult<Vec<Option<Inode>>> {
        if ids.len() > self.limits().batch_stat_max {
            return Err(MetaError::invalid(format!(
                "batch of {} inodes exceeds batch_stat_max {}",
                ids.len(),
                self.limits().batch_stat_max
            )));
        }
        snapshot!(&*self.kv, |tx| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                out.push(tx.inode(id).await?);
            }
            Ok(out)
        })
    }

    pub async fn readlink(&self, user: &User, at: InodeId, path: &str) -> MetaResult<String> {
        let inode = self.stat(user, at, path, false).await?;
        match inode.data {
            InodeData::Symlink { target } => Ok(target),
            _ => Err(MetaError::invalid(format!("{} is not a symlink", inode.id))),
        }
    }

    /// One page of a directory: entries with names after `after`, in name order. Paging by name
    /// is stable while entries change: an entry present for the whole listing is returned exactly
    /// once; one added or removed meanwhile may or may not be.
    pub async fn readdir(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        after: Option<&str>,
        limit: usize,
    ) -> MetaResult<DirPage> {
        let limit = limit.clamp(1, self.limits().readdir_page_max);
        snapshot!(&*self.kv, |tx| {
            let dir = Resolver::new(user, self.limits()).resolve(tx, at, path, true).await?;
            if !dir.is_dir() {
                return Err(MetaError::not_directory(format!("{} is not a directory", dir.id)));
            }
            check_inode(user, &dir, MAY_READ)?;
            let mut entries = tx.entries(dir.id, after, limit + 1).await?;
            let more = entries.len() > limit;
            entries.truncate(limit);
            Ok(DirPage { entries, more })
        })
    }

    /// The absolute path of an inode: a directory's by its parent chain, a file's or symlink's
    /// through one of its links. NotFound for an inode no longer reachable from the root.
    pub async fn real_path(&self, inode: InodeId) -> MetaResult<String> {
        snapshot!(&*self.kv, |tx| {
            let mut node = tx.inode_required(inode).await?;
            let mut names: Vec<String> = Vec::new();
            if !node.is_dir() {
                let (begin, end) = keys::backref_range(inode);
                let request = RangeRequest { begin, end, limit: 1, reverse: false, mode: tx.mode };
                let first = tx.txn.get_range(&request).await?;
                let Some((key, _)) = first.into_iter().next() else {
                    return Err(MetaError::not_found(format!("{inode} has no links")));
                };
                let (_, parent, name) = keys::decode_backref_key(&key)?;
                names.push(name);
                node = tx.inode_required(parent).await?;
            }
            for _ in 0..self.limits().directory_depth_max {
                let InodeData::Directory { parent, name, .. } = &node.data else {
                    return Err(MetaError::corrupt(format!(
                        "{} on a parent chain is not a directory",
                        node.id
                    )));
                };
                if node.id == InodeId::ROOT {
                    names.reverse();
                    return Ok(format!("/{}", names.join("/")));
                }
                // A directory detached by a recursive remove keeps its parent pointer; only a
                // live entry proves it is still in the tree.
                match tx.entry(*parent, name).await? {
                    Some(entry) if entry.inode == node.id => {}
                    _ => {
                        return Err(MetaError::not_found(format!(
                            "{} is not reachable from the root",
                            node.id
                        )));
                    }
                }
                names.push(name.clone());
                node = tx.inode_required(*parent).await?;
            }
            Err(MetaError::new(ErrorCode::NameTooLong, "directory deeper than directory_depth_max"))
        })
    }

    pub async fn statfs(&self) -> MetaResult<StatFs> {
        let inodes = snapshot!(&*self.kv, |tx| {
            let mut total: i64 = 0;
            for shard in 0..INODE_COUNT_SHARDS {
                if let Some(bytes) =
                    tx.txn.get(&keys::inode_count_key(shard), ReadMode::Snapshot).await?
                {
                    let bytes: [u8; 8] = bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| MetaError::corrupt("inode counter is not 8 bytes"))?;
                    total = total.saturating_add(i64::from_le_bytes(bytes));
                }
            }
            Ok(total.max(0) as u64)
        })?;
        let capacity = match &self.deps.cluster {
            Some(cluster) => Some(cluster.capacity().await?),
            None => None,
        };
        Ok(StatFs { capacity, inodes, name_length_max: self.limits().name_length_max as u32 })
    }

    /// Open write sessions of a file.
    pub async fn sessions(&self, inode: InodeId) -> MetaResult<Vec<Session>> {
        snapshot!(&*self.kv, |tx| { read_sessions(tx, inode).await })
    }

    // ---- creation -----------------------------------------------------------------------

    fn new_attr(user: &User, parent: &Inode, mode: u32, kind: InodeKind, now: i64) -> Attr {
        let mut mode = mode & schema::MODE_PERMISSION_MASK;
        let inherit_group = parent.attr.mode & S_ISGID != 0;
        let gid = if inherit_group { parent.attr.gid } else { user.gid };
        if kind == InodeKind::Directory && inherit_group {
            mode |= S_ISGID;
        }
        if kind == InodeKind::File && mode & S_ISGID != 0 && !user.is_root() && !user.in_group(gid)
        {
            mode &= !S_ISGID;
        }
        Attr { mode, uid: user.uid, gid, nlink: 1, atime_ns: now, mtime_ns: now, ctime_ns: now }
    }

    /// A new file's layout: its directory's, with a ShuffleV1 seed of its own so files of one
    /// directory spread over the chain table.
    fn file_layout(dir_layout: &Layout) -> Layout {
        let mut layout = dir_layout.clone();
        if let ChainSelection::ShuffleV1 { .. } = layout.chains {
            layout.chains = ChainSelection::ShuffleV1 { seed: rand::random() };
        }
        layout
    }

    fn dir_layout(parent: &Inode) -> MetaResult<Layout> {
        match &parent.data {
            InodeData::Directory { layout, .. } => Ok(layout.clone()),
            _ => Err(MetaError::not_directory(format!("{} is not a directory", parent.id))),
        }
    }

    /// Checks that `parent` is a directory still in the tree and that `user` may add or remove
    /// entries in it.
    fn check_parent_writable(user: &User, parent: &Inode) -> MetaResult<()> {
        check_live_dir(parent)?;
        check_inode(user, parent, MAY_WRITE | MAY_EXEC)
    }

    /// Creates (or, unless `exclusive`, opens) a regular file.
    pub async fn create(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        args: &CreateArgs,
    ) -> MetaResult<Opened> {
        let opened = transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let mut resolver = Resolver::new(user, self.limits());
            let ParentAndLast { parent, last, trailing_slash } =
                resolver.parent_of(tx, at, path).await?;
            let name = match last {
                Last::Name(name) => name,
                _ => {
                    return Err(MetaError::is_directory(
                        "cannot create a file named by . or .. or /",
                    ));
                }
            };
            check_name(&name, self.limits())?;
            check_live_dir(&parent)?;
            check_inode(user, &parent, MAY_EXEC)?;
            if let Some(entry) = tx.entry(parent.id, &name).await? {
                if args.exclusive {
                    return Err(MetaError::exists(format!("{name:?} exists")));
                }
                let mut inode = tx.inode_required(entry.inode).await?;
                if let InodeData::Symlink { target } = &inode.data {
                    // O_CREAT without O_EXCL follows a symlink to an existing file; a
                    // dangling one is refused rather than creating its target.
                    resolver.follow_symlink()?;
                    inode = resolver.resolve(tx, parent.id, target, true).await?;
                }
                if inode.is_dir() {
                    // open(O_CREAT) of an existing directory is EISDIR whatever the access mode.
                    return Err(MetaError::is_directory(format!("{name:?} is a directory")));
                }
                let session = self.open_existing(tx, user, &inode, args.flags, args.client, now)?;
                return Ok(Opened { inode, created: false, session });
            }
            if trailing_slash {
                return Err(MetaError::is_directory(format!("{name:?}/ cannot be a file")));
            }
            check_inode(user, &parent, MAY_WRITE)?;
            let inode = Inode {
                id: self.new_id().await?,
                attr: Self::new_attr(user, &parent, args.mode, InodeKind::File, now),
                data: InodeData::File {
                    length: 0,
                    truncate_version: 0,
                    layout: Self::file_layout(&Self::dir_layout(&parent)?),
                },
            };
            tx.put_inode(&inode)?;
            tx.put_entry(&DirEntry {
                parent: parent.id,
                name,
                inode: inode.id,
                kind: InodeKind::File,
            })?;
            tx.count_inodes(1)?;
            let session = if args.flags.write {
                Some(put_session(tx, inode.id, args.client, now)?)
            } else {
                None
            };
            Ok(Opened { inode, created: true, session })
        })?;
        self.finish_open(user, opened, args.flags).await
    }

    /// Opens an existing file or directory.
    pub async fn open(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        flags: OpenFlags,
        client: ClientId,
    ) -> MetaResult<Opened> {
        let opened = transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let inode = Resolver::new(user, self.limits()).resolve(tx, at, path, true).await?;
            let session = self.open_existing(tx, user, &inode, flags, client, now)?;
            Ok(Opened { inode, created: false, session })
        })?;
        self.finish_open(user, opened, flags).await
    }

    fn open_existing(
        &self,
        tx: &mut Tx<'_>,
        user: &User,
        inode: &Inode,
        flags: OpenFlags,
        client: ClientId,
        now: i64,
    ) -> MetaResult<Option<u64>> {
        if inode.attr.nlink == 0 {
            return Err(MetaError::not_found(format!("{} was removed", inode.id)));
        }
        let writes = flags.write || flags.truncate;
        if inode.is_dir() && writes {
            return Err(MetaError::is_directory(format!("{} is a directory", inode.id)));
        }
        let mut mask = 0;
        if flags.read {
            mask |= MAY_READ;
        }
        if writes {
            mask |= MAY_WRITE;
        }
        check_inode(user, inode, mask)?;
        if flags.write && inode.kind() == InodeKind::File {
            return Ok(Some(put_session(tx, inode.id, client, now)?));
        }
        Ok(None)
    }

    /// O_TRUNC after the open transaction (truncation needs storage calls between two
    /// transactions, see [`MetaStore::truncate`]).
    async fn finish_open(
        &self,
        user: &User,
        mut opened: Opened,
        flags: OpenFlags,
    ) -> MetaResult<Opened> {
        if flags.truncate && !opened.created && opened.inode.kind() == InodeKind::File {
            let id = opened.inode.id;
            match self.truncate(user, id, 0, opened.session).await {
                Ok(inode) => opened.inode = inode,
                Err(error) => {
                    // The open failed as a whole: do not leave its session to expire.
                    if let Some(session) = opened.session {
                        let key = keys::session_key(id, session);
                        let ended = transact!(&*self.kv, &self.retry, |tx| {
                            tx.txn.clear(&key)?;
                            Ok(())
                        });
                        if let Err(e) = ended {
                            tracing::warn!(inode = %id, session, error = %e, "ending the session of a failed open");
                        }
                    }
                    return Err(error);
                }
            }
        }
        Ok(opened)
    }

    pub async fn mkdir(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        mode: u32,
    ) -> MetaResult<Inode> {
        transact!(&*self.kv, &self.retry, |tx| {
            let ParentAndLast { parent, last, .. } =
                Resolver::new(user, self.limits()).parent_of(tx, at, path).await?;
            let Last::Name(name) = last else {
                return Err(MetaError::exists("the directory exists"));
            };
            self.mkdir_in(tx, user, &parent, name, mode).await
        })
    }

    pub(crate) async fn mkdir_in(
        &self,
        tx: &mut Tx<'_>,
        user: &User,
        parent: &Inode,
        name: String,
        mode: u32,
    ) -> MetaResult<Inode> {
        check_name(&name, self.limits())?;
        Self::check_parent_writable(user, parent)?;
        if tx.entry(parent.id, &name).await?.is_some() {
            return Err(MetaError::exists(format!("{name:?} exists")));
        }
        let now = self.now();
        let inode = Inode {
            id: self.new_id().await?,
            attr: Self::new_attr(user, parent, mode, InodeKind::Directory, now),
            data: InodeData::Directory {
                parent: parent.id,
                name: name.clone(),
                layout: Self::dir_layout(parent)?,
            },
        };
        tx.put_inode(&inode)?;
        tx.put_entry(&DirEntry {
            parent: parent.id,
            name,
            inode: inode.id,
            kind: InodeKind::Directory,
        })?;
        tx.count_inodes(1)?;
        Ok(inode)
    }

    /// mkdir -p: creates every missing directory of `path`; existing ones (or symlinks to them)
    /// are fine, anything else on the way is NotDirectory / Exists.
    pub async fn mkdirs(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        mode: u32,
    ) -> MetaResult<Inode> {
        transact!(&*self.kv, &self.retry, |tx| {
            let parsed = crate::names::parse_path(path, self.limits())?;
            let mut current =
                tx.inode_required(if parsed.absolute { InodeId::ROOT } else { at }).await?;
            let mut resolver = Resolver::new(user, self.limits());
            let mut done = String::new();
            for component in parsed.components {
                if !done.is_empty() {
                    done.push('/');
                }
                done.push_str(&component);
                // Resolve what exists through the normal walk (symlinks, `..`), create what
                // does not.
                match resolver.resolve(tx, current.id, &component, true).await {
                    Ok(next) if next.is_dir() => current = next,
                    Ok(_) => {
                        return Err(MetaError::not_directory(format!(
                            "{done:?} is not a directory"
                        )));
                    }
                    Err(e)
                        if e.code == ErrorCode::NotFound
                            && component != "."
                            && component != ".." =>
                    {
                        if tx.entry(current.id, &component).await?.is_some() {
                            // A dangling symlink.
                            return Err(MetaError::exists(format!(
                                "{done:?} exists and is not a directory"
                            )));
                        }
                        current = self.mkdir_in(tx, user, &current, component, mode).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !current.is_dir() {
                return Err(MetaError::not_directory(format!("{} is not a directory", current.id)));
            }
            Ok(current)
        })
    }

    pub async fn symlink(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        target: &str,
    ) -> MetaResult<Inode> {
        if target.is_empty() {
            return Err(MetaError::not_found("empty symlink target"));
        }
        if target.len() > self.limits().path_length_max {
            return Err(MetaError::new(
                ErrorCode::NameTooLong,
                "symlink target exceeds path_length_max",
            ));
        }
        if target.contains('\0') {
            return Err(MetaError::new(ErrorCode::InvalidName, "symlink target contains NUL"));
        }
        transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let ParentAndLast { parent, last, .. } =
                Resolver::new(user, self.limits()).parent_of(tx, at, path).await?;
            let Last::Name(name) = last else {
                return Err(MetaError::exists("the name exists"));
            };
            check_name(&name, self.limits())?;
            Self::check_parent_writable(user, &parent)?;
            if tx.entry(parent.id, &name).await?.is_some() {
                return Err(MetaError::exists(format!("{name:?} exists")));
            }
            let inode = Inode {
                id: self.new_id().await?,
                attr: Attr {
                    mode: 0o777,
                    ..Self::new_attr(user, &parent, 0o777, InodeKind::Symlink, now)
                },
                data: InodeData::Symlink { target: target.to_string() },
            };
            tx.put_inode(&inode)?;
            tx.put_entry(&DirEntry {
                parent: parent.id,
                name,
                inode: inode.id,
                kind: InodeKind::Symlink,
            })?;
            tx.count_inodes(1)?;
            Ok(inode)
        })
    }

    /// Hard link: a new entry `new_path` for the file or symlink at `old_path` (not followed).
    pub async fn link(
        &self,
        user: &User,
        old_at: InodeId,
        old_path: &str,
        new_at: InodeId,
        new_path: &str,
    ) -> MetaResult<Inode> {
        transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let mut inode =
                Resolver::new(user, self.limits()).resolve(tx, old_at, old_path, false).await?;
            if inode.is_dir() {
                return Err(MetaError::denied(
                    "operation not permitted: hard links to directories",
                ));
            }
            if inode.attr.nlink == 0 {
                return Err(MetaError::not_found(format!("{} was removed", inode.id)));
            }
            if inode.attr.nlink >= self.limits().hard_link_max {
                return Err(MetaError::new(
                    ErrorCode::TooManyLinks,
                    format!("{} has {} links", inode.id, inode.attr.nlink),
                ));
            }
            let ParentAndLast { parent, last, .. } =
                Resolver::new(user, self.limits()).parent_of(tx, new_at, new_path).await?;
            let Last::Name(name) = last else {
                return Err(MetaError::exists("the name exists"));
            };
            check_name(&name, self.limits())?;
            Self::check_parent_writable(user, &parent)?;
            if tx.entry(parent.id, &name).await?.is_some() {
                return Err(MetaError::exists(format!("{name:?} exists")));
            }
            inode.attr.nlink += 1;
            inode.attr.ctime_ns = now;
            tx.put_inode(&inode)?;
            tx.put_entry(&DirEntry {
                parent: parent.id,
                name,
                inode: inode.id,
                kind: inode.kind(),
            })?;
            Ok(inode)
        })
    }

    // ---- removal ------------------------------------------------------------------------

    pub async fn unlink(&self, user: &User, at: InodeId, path: &str) -> MetaResult<()> {
        self.remove(user, at, path, RemoveKind::File).await
    }

    pub async fn rmdir(&self, user: &User, at: InodeId, path: &str) -> MetaResult<()> {
        self.remove(user, at, path, RemoveKind::EmptyDir).await
    }

    /// unlink, rmdir or a recursive remove, in one transaction.
    pub async fn remove(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        kind: RemoveKind,
    ) -> MetaResult<()> {
        transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let ParentAndLast { parent, last, trailing_slash } =
                Resolver::new(user, self.limits()).parent_of(tx, at, path).await?;
            let name = match (last, kind) {
                (Last::Name(name), _) => name,
                (Last::None, RemoveKind::File) | (Last::Dot | Last::DotDot, RemoveKind::File) => {
                    return Err(MetaError::is_directory("cannot unlink a directory"));
                }
                (Last::None, _) => {
                    return Err(MetaError::new(ErrorCode::Busy, "cannot remove the root"));
                }
                (Last::Dot, _) => return Err(MetaError::invalid("cannot remove .")),
                (Last::DotDot, _) => {
                    return Err(MetaError::new(ErrorCode::NotEmpty, "cannot remove .."));
                }
            };
            check_name(&name, self.limits())?;
            check_live_dir(&parent)?;
            check_inode(user, &parent, MAY_EXEC)?;
            let entry = tx
                .entry(parent.id, &name)
                .await?
                .ok_or_else(|| MetaError::not_found(format!("{name:?} in {}", parent.id)))?;
            let inode = tx.inode_required(entry.inode).await?;
            perm::check_delete(user, &parent, &inode)?;
            match (inode.is_dir(), kind) {
                (true, RemoveKind::File) => {
                    return Err(MetaError::is_directory(format!("{name:?} is a directory")));
                }
                (false, RemoveKind::EmptyDir) => {
                    return Err(MetaError::not_directory(format!("{name:?} is not a directory")));
                }
                (false, _) if trailing_slash => {
                    return Err(MetaError::not_directory(format!("{name:?} is not a directory")));
                }
                _ => {}
            }
            tx.clear_entry(&entry)?;
            if !inode.is_dir() {
                return drop_link(tx, inode, now);
            }
            if kind == RemoveKind::Tree {
                if !user.is_root() {
                    check_tree_removable(tx, user, &inode, self.limits()).await?;
                }
                return detach_tree(tx, inode, now);
            }
            if !tx.is_empty_dir(inode.id).await? {
                return Err(MetaError::new(ErrorCode::NotEmpty, format!("{name:?} is not empty")));
            }
            tx.clear_inode(inode.id)?;
            tx.count_inodes(-1)?;
            Ok(())
        })
    }

    // ---- rename -------------------------------------------------------------------------

    /// rename(2): atomic; replaces a target of the same kind (an empty directory by a directory,
    /// a non-directory by a non-directory); refuses to move a directory below itself. With
    /// `no_replace` (RENAME_NOREPLACE) an existing target is Exists.
    pub async fn rename(
        &self,
        user: &User,
        src_at: InodeId,
        src_path: &str,
        dst_at: InodeId,
        dst_path: &str,
        no_replace: bool,
    ) -> MetaResult<()> {
        transact!(&*self.kv, &self.retry, |tx| {
            self.rename_in(tx, user, src_at, src_path, dst_at, dst_path, no_replace).await
        })
    }

    /// The body of [`MetaStore::rename`], in a transaction of the caller's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn rename_in(
        &self,
        tx: &mut Tx<'_>,
        user: &User,
        src_at: InodeId,
        src_path: &str,
        dst_at: InodeId,
        dst_path: &str,
        no_replace: bool,
    ) -> MetaResult<()> {
        let now = self.now();
        let src = Resolver::new(user, self.limits()).parent_of(tx, src_at, src_path).await?;
        let dst = Resolver::new(user, self.limits()).parent_of(tx, dst_at, dst_path).await?;
        let (Last::Name(src_name), Last::Name(dst_name)) = (&src.last, &dst.last) else {
            return Err(MetaError::new(ErrorCode::Busy, "cannot rename . or .. or /"));
        };
        check_name(src_name, self.limits())?;
        check_name(dst_name, self.limits())?;
        check_live_dir(&src.parent)?;
        check_live_dir(&dst.parent)?;
        check_inode(user, &src.parent, MAY_EXEC)?;
        let src_entry = tx
            .entry(src.parent.id, src_name)
            .await?
            .ok_or_else(|| MetaError::not_found(format!("{src_name:?} in {}", src.parent.id)))?;
        let mut inode = tx.inode_required(src_entry.inode).await?;
        perm::check_delete(user, &src.parent, &inode)?;
        check_inode(user, &dst.parent, MAY_WRITE | MAY_EXEC)?;
        if (src.trailing_slash || dst.trailing_slash) && !inode.is_dir() {
            return Err(MetaError::not_directory(format!("{src_name:?} is not a directory")));
        }
        let dst_entry = tx.entry(dst.parent.id, dst_name).await?;
        if let Some(existing) = &dst_entry {
            if existing.inode == inode.id {
                // Both names already link the same inode: POSIX says do nothing.
                return Ok(());
            }
            if no_replace {
                return Err(MetaError::exists(format!("{dst_name:?} exists")));
            }
        }
        let moves_dir = inode.is_dir() && src.parent.id != dst.parent.id;
        if moves_dir {
            // Its `..` changes: needs write permission on the directory itself.
            check_inode(user, &inode, MAY_WRITE)?;
            check_not_ancestor(tx, inode.id, &dst.parent, self.limits()).await?;
        }
        if let Some(existing) = dst_entry {
            let victim = tx.inode_required(existing.inode).await?;
            perm::check_delete(user, &dst.parent, &victim)?;
            match (inode.is_dir(), victim.is_dir()) {
                (true, false) => {
                    return Err(MetaError::not_directory(format!(
                        "{dst_name:?} is not a directory"
                    )));
                }
                (false, true) => {
                    return Err(MetaError::is_directory(format!("{dst_name:?} is a directory")));
                }
                (true, true) => {
                    if !tx.is_empty_dir(victim.id).await? {
                        return Err(MetaError::new(
                            ErrorCode::NotEmpty,
                            format!("{dst_name:?} is not empty"),
                        ));
                    }
                    tx.clear_entry(&existing)?;
                    tx.clear_inode(victim.id)?;
                    tx.count_inodes(-1)?;
                }
                (false, false) => {
                    tx.clear_entry(&existing)?;
                    drop_link(tx, victim, now)?;
                }
            }
        }
        tx.clear_entry(&src_entry)?;
        tx.put_entry(&DirEntry {
            parent: dst.parent.id,
            name: dst_name.clone(),
            inode: inode.id,
            kind: inode.kind(),
        })?;
        if let InodeData::Directory { parent, name, .. } = &mut inode.data {
            *parent = dst.parent.id;
            *name = dst_name.clone();
        }
        inode.attr.ctime_ns = now;
        tx.put_inode(&inode)?;
        Ok(())
    }

    // ---- attributes ---------------------------------------------------------------------

    /// chmod, chown, utimens and truncate of the inode at `path` (empty: `at` itself).
    pub async fn setattr(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        follow: bool,
        changes: &SetAttr,
    ) -> MetaResult<Inode> {
        let mut inode = self.stat(user, at, path, follow).await?;
        if let Some(length) = changes.length {
            inode = self.truncate(user, inode.id, length, changes.session).await?;
        }
        let others = changes.mode.is_some()
            || changes.uid.is_some()
            || changes.gid.is_some()
            || changes.atime.is_some()
            || changes.mtime.is_some();
        if !others {
            return Ok(inode);
        }
        let id = inode.id;
        transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let mut inode = tx.inode_required(id).await?;
            let kind = inode.kind();
            if let Some(mode) = changes.mode {
                inode.attr.mode = perm::chmod(user, &inode.attr, kind, mode)?;
            }
            if changes.uid.is_some() || changes.gid.is_some() {
                let (uid, gid, mode) =
                    perm::chown(user, &inode.attr, kind, changes.uid, changes.gid)?;
                inode.attr.uid = uid;
                inode.attr.gid = gid;
                inode.attr.mode = mode;
            }
            for (set, field) in [(changes.atime, 0), (changes.mtime, 1)] {
                let Some(set) = set else { continue };
                perm::check_utimens(user, &inode, matches!(set, TimeSet::At(_)))?;
                let value = match set {
                    TimeSet::Now => now,
                    TimeSet::At(ns) => ns,
                };
                if field == 0 {
                    inode.attr.atime_ns = value;
                } else {
                    inode.attr.mtime_ns = value;
                }
            }
            inode.attr.ctime_ns = now;
            tx.put_inode(&inode)?;
            Ok(inode)
        })
    }

    /// Sets a file's length. Storage is cut first (so no stale bytes survive past the new end),
    /// then the length is committed with a new truncate version, unless another truncate
    /// committed meanwhile, in which case the whole step repeats.
    pub async fn truncate(
        &self,
        user: &User,
        id: InodeId,
        length: u64,
        session: Option<u64>,
    ) -> MetaResult<Inode> {
        if length > FILE_LENGTH_MAX {
            return Err(MetaError::new(
                ErrorCode::FileTooLarge,
                format!("length {length} exceeds {FILE_LENGTH_MAX}"),
            ));
        }
        for _ in 0..self.retry.attempts_max.max(1) {
            let (version, old_length, layout) = snapshot!(&*self.kv, |tx| {
                let inode = tx.inode_required(id).await?;
                let has_session = match session {
                    Some(s) => {
                        tx.txn.get(&keys::session_key(id, s), ReadMode::Snapshot).await?.is_some()
                    }
                    None => false,
                };
                match &inode.data {
                    InodeData::File { length, truncate_version, layout } => {
                        if !has_session {
                            check_inode(user, &inode, MAY_WRITE)?;
                        }
                        Ok((*truncate_version, *length, layout.clone()))
                    }
                    InodeData::Directory { .. } => {
                        Err(MetaError::is_directory(format!("{id} is a directory")))
                    }
                    InodeData::Symlink { .. } => {
                        Err(MetaError::invalid(format!("{id} is a symlink")))
                    }
                }
            })?;
            match &self.deps.storage {
                Some(storage) => truncate_to(&**storage, id, &layout, length).await?,
                None if length < old_length => {
                    return Err(MetaError::new(
                        ErrorCode::NotSupported,
                        "shrinking a file needs a storage client, and this meta service has none configured",
                    ));
                }
                None => {}
            }
            let committed = transact!(&*self.kv, &self.retry, |tx| {
                let now = self.now();
                let mut inode = tx.inode_required(id).await?;
                let InodeData::File { length: current, truncate_version, .. } = &mut inode.data
                else {
                    return Err(MetaError::internal("inode changed kind"));
                };
                if *truncate_version != version {
                    return Ok(None);
                }
                *current = length;
                *truncate_version += 1;
                inode.attr.mtime_ns = now;
                inode.attr.ctime_ns = now;
                tx.put_inode(&inode)?;
                Ok(Some(inode))
            })?;
            if let Some(inode) = committed {
                return Ok(inode);
            }
            tracing::debug!(inode = %id, "truncate raced another truncate; repeating");
        }
        Err(MetaError::new(ErrorCode::Busy, "truncate kept racing other truncates"))
    }

    /// Sets the default layout of a directory (validated against the chain table when mgmtd's
    /// routing info is available).
    pub async fn set_layout(
        &self,
        user: &User,
        at: InodeId,
        path: &str,
        layout: &Layout,
    ) -> MetaResult<Inode> {
        let table_len = match &self.deps.cluster {
            Some(cluster) => cluster
                .chain_table_len(layout.chain_table_id, layout.chain_table_version)
                .await?
                .ok_or_else(|| {
                    MetaError::new(
                        ErrorCode::ChainTableNotFound,
                        format!(
                            "chain table {} {}",
                            layout.chain_table_id, layout.chain_table_version
                        ),
                    )
                })?,
            None => u32::MAX,
        };
        layout.validate(table_len).map_err(|e| MetaError::invalid(format!("layout: {e}")))?;
        transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let mut inode = Resolver::new(user, self.limits()).resolve(tx, at, path, true).await?;
            perm::check_set_layout(user, &inode)?;
            let InodeData::Directory { layout: current, .. } = &mut inode.data else {
                return Err(MetaError::not_directory(format!("{} is not a directory", inode.id)));
            };
            *current = layout.clone();
            inode.attr.ctime_ns = now;
            tx.put_inode(&inode)?;
            Ok(inode)
        })
    }

    // ---- length and sessions ------------------------------------------------------------

    /// A writer reports the length it wrote (and renews its session). Adopted only if it moves
    /// the length forward and was made under the current truncate version.
    pub async fn report_length(
        &self,
        user: &User,
        id: InodeId,
        session: Option<u64>,
        report: Option<LengthReport>,
    ) -> MetaResult<LengthOutcome> {
        self.report_step(user, id, session, report, false).await
    }

    /// fsync: adopts the writer's report, then the exact length computed from storage.
    pub async fn fsync(
        &self,
        user: &User,
        id: InodeId,
        session: Option<u64>,
        report: Option<LengthReport>,
    ) -> MetaResult<LengthOutcome> {
        let mut outcome = self.report_step(user, id, session, report, false).await?;
        if let Some(inode) = self.settle_length(id).await? {
            outcome.adopted |= inode.size() != outcome.inode.size();
            outcome.inode = inode;
        }
        Ok(outcome)
    }

    /// close of a write session: adopts the report, ends the session, settles the length from
    /// storage.
    pub async fn close(
        &self,
        user: &User,
        id: InodeId,
        session: u64,
        report: Option<LengthReport>,
    ) -> MetaResult<LengthOutcome> {
        let mut outcome = self.report_step(user, id, Some(session), report, true).await?;
        if let Some(inode) = self.settle_length(id).await? {
            outcome.adopted |= inode.size() != outcome.inode.size();
            outcome.inode = inode;
        }
        Ok(outcome)
    }

    async fn report_step(
        &self,
        user: &User,
        id: InodeId,
        session: Option<u64>,
        report: Option<LengthReport>,
        close: bool,
    ) -> MetaResult<LengthOutcome> {
        transact!(&*self.kv, &self.retry, |tx| {
            let now = self.now();
            let mut inode = tx.inode_required(id).await?;
            let session_live = match session {
                Some(s) => {
                    let key = keys::session_key(id, s);
                    match tx.txn.get(&key, ReadMode::Serializable).await? {
                        Some(bytes) => {
                            let mut record = schema::decode_session(id, s, &bytes)?;
                            if close {
                                tx.txn.clear(&key)?;
                            } else {
                                record.renewed_ns = now;
                                tx.txn.set(&key, &schema::encode_session(&record))?;
                            }
                            true
                        }
                        None => false,
                    }
                }
                None => false,
            };
            if !session_live && let Err(denied) = check_inode(user, &inode, MAY_WRITE) {
                if close {
                    // Closing a session that already expired is an expected outcome, not an
                    // error; without a session or write permission the report is not trusted.
                    return Ok(LengthOutcome { inode, adopted: false, session_live: false });
                }
                return Err(denied);
            }
            let InodeData::File { length, truncate_version, .. } = &mut inode.data else {
                return Err(MetaError::invalid(format!("{id} is not a regular file")));
            };
            let mut adopted = false;
            if let Some(report) = report {
                if report.length > FILE_LENGTH_MAX {
                    return Err(MetaError::new(
                        ErrorCode::FileTooLarge,
                        "reported length too large",
                    ));
                }
                if report.truncate_version == *truncate_version && report.length > *length {
                    *length = report.length;
                    adopted = true;
                }
                // The writer wrote since its last report: the data changed.
                inode.attr.mtime_ns = now;
                inode.attr.ctime_ns = now;
                tx.put_inode(&inode)?;
            }
            Ok(LengthOutcome { inode, adopted, session_live })
        })
    }

    /// Computes the exact length from storage (the end of the furthest last chunk over the
    /// file's chains) and adopts it if it is larger, unless a truncate committed meanwhile.
    /// `None` without a storage client or when the file is gone.
    pub async fn settle_length(&self, id: InodeId) -> MetaResult<Option<Inode>> {
        let Some(storage) = &self.deps.storage else { return Ok(None) };
        for _ in 0..self.retry.attempts_max.max(1) {
            let inode = match snapshot!(&*self.kv, |tx| { tx.inode(id).await })? {
                Some(inode) => inode,
                None => return Ok(None),
            };
            let InodeData::File { truncate_version: version, layout, .. } = &inode.data else {
                return Ok(Some(inode));
            };
            let last = storage.query_last_chunks(id, layout).await?;
            if last.len() != layout.stripe_size as usize {
                return Err(MetaError::internal(format!(
                    "storage answered {} chains for a stripe of {}",
                    last.len(),
                    layout.stripe_size
                )));
            }
            let stored = length_from_last_chunks(layout, &last);
            let version = *version;
            let settled = transact!(&*self.kv, &self.retry, |tx| {
                let Some(mut inode) = tx.inode(id).await? else { return Ok(Some(None)) };
                let InodeData::File { length, truncate_version, .. } = &mut inode.data else {
                    return Err(MetaError::internal("inode changed kind"));
                };
                if *truncate_version != version {
                    return Ok(None);
                }
                if stored > *length {
                    *length = stored;
                    tx.put_inode(&inode)?;
                }
                Ok(Some(Some(inode)))
            })?;
            if let Some(result) = settled {
                return Ok(result);
            }
        }
        Err(MetaError::new(ErrorCode::Busy, "length settlement kept racing truncates"))
    }
}

// ---- helpers shared by operations and the collector --------------------------------------

pub(crate) fn check_live_dir(dir: &Inode) -> MetaResult<()> {
    if !dir.is_dir() {
        return Err(MetaError::not_directory(format!("{} is not a directory", dir.id)));
    }
    if dir.attr.nlink == 0 {
        return Err(MetaError::not_found(format!("directory {} was removed", dir.id)));
    }
    Ok(())
}

fn put_session(tx: &mut Tx<'_>, inode: InodeId, client: ClientId, now: i64) -> MetaResult<u64> {
    // Random ids: no counter to contend on; a collision (2^-64) would merge two sessions of one
    // file, which only delays its collection.
    let session = rand::random::<u64>().max(1);
    let record = Session { inode, session, client, opened_ns: now, renewed_ns: now };
    tx.txn.set(&keys::session_key(inode, session), &schema::encode_session(&record))?;
    Ok(session)
}

pub(crate) async fn read_sessions(tx: &mut Tx<'_>, inode: InodeId) -> MetaResult<Vec<Session>> {
    let (begin, end) = keys::session_range(inode);
    let request = RangeRequest { begin, end, limit: 0, reverse: false, mode: tx.mode };
    let mut sessions = Vec::new();
    for (key, value) in tx.txn.get_range(&request).await? {
        let (key_inode, session) = keys::decode_session_key(&key)?;
        sessions.push(schema::decode_session(key_inode, session, &value)?);
    }
    Ok(sessions)
}

/// Removes one link of a non-directory whose entry the caller has cleared: the last link of a
/// file queues it for collection (its chunks go first), of a symlink deletes it.
pub(crate) fn drop_link(tx: &mut Tx<'_>, mut inode: Inode, now: i64) -> MetaResult<()> {
    assert!(!inode.is_dir(), "drop_link of a directory");
    if inode.attr.nlink == 0 {
        return Err(MetaError::corrupt(format!("{} has an entry but no links", inode.id)));
    }
    inode.attr.nlink -= 1;
    inode.attr.ctime_ns = now;
    if inode.attr.nlink > 0 {
        return tx.put_inode(&inode);
    }
    match inode.kind() {
        InodeKind::File => {
            tx.put_inode(&inode)?;
            tx.txn.set(&keys::gc_key(inode.id), &schema::encode_gc(GcKind::File, now))?;
        }
        _ => {
            tx.clear_inode(inode.id)?;
            tx.count_inodes(-1)?;
        }
    }
    Ok(())
}

/// Detaches a directory whose entry the caller has cleared: marks it removed and queues it for
/// the collector, which empties it in bounded steps.
pub(crate) fn detach_tree(tx: &mut Tx<'_>, mut dir: Inode, now: i64) -> MetaResult<()> {
    dir.attr.nlink = 0;
    dir.attr.ctime_ns = now;
    tx.put_inode(&dir)?;
    tx.txn.set(&keys::gc_key(dir.id), &schema::encode_gc(GcKind::Tree, now))?;
    Ok(())
}

/// Refuses if `moving` is `start` or one of its ancestors.
async fn check_not_ancestor(
    tx: &mut Tx<'_>,
    moving: InodeId,
    start: &Inode,
    limits: &Limits,
) -> MetaResult<()> {
    let mut current = start.clone();
    for _ in 0..limits.directory_depth_max {
        if current.id == moving {
            return Err(MetaError::invalid("cannot move a directory into its own subtree"));
        }
        if current.id == InodeId::ROOT {
            return Ok(());
        }
        let parent = current.dir_parent().ok_or_else(|| {
            MetaError::corrupt(format!("{} on a parent chain is not a directory", current.id))
        })?;
        current = tx.inode_required(parent).await?;
    }
    Err(MetaError::new(ErrorCode::NameTooLong, "directory deeper than directory_depth_max"))
}

/// A non-root recursive remove must be allowed what `rm -r` would need: read, write and search
/// on every directory of the tree, and the sticky rule on every entry of a sticky directory.
async fn check_tree_removable(
    tx: &mut Tx<'_>,
    user: &User,
    root: &Inode,
    limits: &Limits,
) -> MetaResult<()> {
    let mut stack = vec![root.clone()];
    let mut dirs = 0usize;
    while let Some(dir) = stack.pop() {
        dirs += 1;
        if dirs > limits.remove_tree_check_dirs_max {
            return Err(MetaError::new(
                ErrorCode::NotSupported,
                format!(
                    "tree has more than {} directories to check; remove subtrees first or as root",
                    limits.remove_tree_check_dirs_max
                ),
            ));
        }
        check_inode(user, &dir, MAY_READ | MAY_WRITE | MAY_EXEC)?;
        let sticky = dir.attr.mode & schema::S_ISVTX != 0;
        let mut after: Option<String> = None;
        loop {
            let page = tx.entries(dir.id, after.as_deref(), 1024).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            for entry in page {
                if entry.kind == InodeKind::Directory || sticky {
                    let child = tx.inode_required(entry.inode).await?;
                    if sticky {
                        perm::check_delete(user, &dir, &child)?;
                    }
                    if child.is_dir() {
                        stack.push(child);
                    }
                }
            }
        }
    }
    Ok(())
}
