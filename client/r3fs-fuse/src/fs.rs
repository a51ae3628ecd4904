//! [`R3fs`]: the `fuser::Filesystem` over the client library.
//!
//! Threading: fuser's event-loop threads (each with its own cloned /dev/fuse fd) only decode a
//! request and spawn a task on the tokio runtime, which replies when the meta or storage calls
//! finish. So a slow request never blocks the loop, and writes to one file at different offsets
//! run at once (a `File` takes `&self` for reads and writes). The kernel bounds what is in flight
//! (`max_background`, and one request per blocked application thread).
//!
//! State kept here:
//! - open file handles (`fh` → [`OpenFile`]) and directory handles (`fh` → a listing cursor);
//! - per inode with open writers, the end of what this mount wrote ([`OpenInodes`]): meta learns
//!   lengths from periodic reports and on flush/fsync/close, so until then attributes are raised
//!   to what was written here, and the kernel never shrinks a file it is writing.
//!
//! Nothing else is cached in the daemon: attributes and entries are cached by the kernel for
//! `attr_timeout_ms` / `entry_timeout_ms`, and every open drops the file's page cache
//! (close-to-open consistency).

use crate::attr::{self, errno, file_attr, inode_of};
use crate::metrics;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use r3fs_client::meta::path_at;
use r3fs_client::{File, FileClient, MetaClient, OpenOptions};
use r3fs_rpc::meta as pb;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Replies with an error and marks the observed request as failed (crate::metrics).
macro_rules! fail {
    ($reply:expr, $errno:expr) => {{
        metrics::failed();
        $reply.error($errno)
    }};
}

/// Entries asked of meta per readdir page.
const READDIR_PAGE_ENTRIES: u32 = 1024;
/// `statfs` block size.
const STATFS_BLOCK_BYTES: u64 = 4096;

/// Settings of one mount.
#[derive(Clone, Debug)]
pub struct FsOptions {
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    pub max_write: u32,
}

/// One open regular file.
#[derive(Debug)]
struct OpenFile {
    file: File,
    writable: bool,
    /// Written since the last flush/fsync: the next one reports the length to meta.
    dirty: AtomicBool,
}

/// A directory listing in progress: meta pages by name, the kernel by offset. Entry `i` (from
/// 0, with "." and ".." first) has offset `i + 1`. Only a window from the kernel's offset on is
/// kept: the kernel reads forward, so memory stays at about one page however big the directory.
#[derive(Debug, Default)]
struct Listing {
    /// Offset index of `window[0]`.
    base: u64,
    window: VecDeque<(String, u64, FileType)>,
    /// Last name fetched from meta (the next page starts after it).
    after: String,
    started: bool,
    done: bool,
}

/// Per inode with writable handles in this mount: how many, and the end of what they wrote
/// under the current truncate.
#[derive(Debug, Default)]
struct Written {
    handles: usize,
    end: u64,
}

#[derive(Debug, Default)]
struct OpenInodes {
    inodes: Mutex<HashMap<u64, Written>>,
}

impl OpenInodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Written>> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, inode: u64) {
        self.lock().entry(inode).or_default().handles += 1;
    }

    fn released(&self, inode: u64) {
        let mut inodes = self.lock();
        if let Some(written) = inodes.get_mut(&inode) {
            written.handles -= 1;
            if written.handles == 0 {
                inodes.remove(&inode);
            }
        }
    }

    /// Raises `inode`'s written end; true if it grew.
    fn wrote(&self, inode: u64, end: u64) -> bool {
        match self.lock().get_mut(&inode) {
            Some(written) if end > written.end => {
                written.end = end;
                true
            }
            _ => false,
        }
    }

    fn truncated(&self, inode: u64) {
        if let Some(written) = self.lock().get_mut(&inode) {
            written.end = 0;
        }
    }

    /// The size floor of `inode`'s attributes.
    fn floor(&self, inode: u64) -> u64 {
        self.lock().get(&inode).map_or(0, |w| w.end)
    }
}

#[derive(Debug)]
struct Inner {
    files: FileClient,
    meta: MetaClient,
    options: FsOptions,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Listing>>>>,
    next_handle: AtomicU64,
    open_inodes: OpenInodes,
}

/// The r3fs file system as fuser sees it.
#[derive(Debug)]
pub struct R3fs {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn handle(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, open: OpenFile) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        if open.writable {
            self.open_inodes.opened(open.file.inode().0);
        }
        lock(&self.handles).insert(fh, Arc::new(open));
        FileHandle(fh)
    }

    /// Any writable handle of `inode` in this mount (its session lets ftruncate through).
    fn writable_handle(&self, inode: u64) -> Option<Arc<OpenFile>> {
        lock(&self.handles).values().find(|h| h.writable && h.file.inode().0 == inode).cloned()
    }

    fn attr(&self, inode: &pb::Inode) -> Result<FileAttr, Errno> {
        file_attr(inode, self.open_inodes.floor(inode.id))
    }

    async fn stat(&self, ino: u64) -> Result<pb::Inode, Errno> {
        let response = self
            .meta
            .batch_stat(pb::BatchStatRequest { inodes: vec![ino] })
            .await
            .map_err(|e| errno("getattr", &e))?;
        response.inodes.into_iter().next().and_then(|r| r.inode).ok_or(Errno::ENOENT)
    }

    /// New inodes belong to the token's user; give them to the calling user instead (the kernel
    /// checked the caller may create here: `default_permissions`). A setgid parent's group is
    /// kept. Best effort: a token that may not chown leaves the token user as owner.
    async fn give_to_caller(&self, uid: u32, gid: u32, inode: pb::Inode) -> pb::Inode {
        if inode.uid == uid && inode.gid == gid {
            return inode;
        }
        let mut gid = Some(gid);
        if let Ok(parent) = self.parent_of_new(&inode).await
            && parent.mode & libc::S_ISGID != 0
        {
            gid = None;
        }
        let request = pb::SetAttrRequest {
            target: Some(path_at(inode.id, "")),
            follow: false,
            uid: Some(uid),
            gid,
            // chown clears setuid/setgid; keep the bits the new inode was given.
            mode: Some(inode.mode & 0o7777),
            ..Default::default()
        };
        match self.meta.set_attr(request).await {
            Ok(pb::InodeResponse { inode: Some(changed) }) => changed,
            Ok(_) => inode,
            Err(error) => {
                tracing::debug!(inode = inode.id, "cannot give a new inode to uid {uid}: {error}");
                inode
            }
        }
    }

    /// The parent of a just-created directory (from its record) or of anything else (unknown:
    /// treated as not setgid, which costs nothing for files whose group came from the caller).
    async fn parent_of_new(&self, inode: &pb::Inode) -> Result<pb::Inode, Errno> {
        if inode.kind == pb::InodeKind::Directory as i32 {
            self.stat(inode.parent).await
        } else {
            Err(Errno::ENOENT)
        }
    }
}

impl R3fs {
    pub fn new(files: FileClient, options: FsOptions, runtime: tokio::runtime::Handle) -> R3fs {
        let meta = files.meta().clone();
        R3fs {
            inner: Arc::new(Inner {
                files,
                meta,
                options,
                handles: Mutex::default(),
                dirs: Mutex::default(),
                next_handle: AtomicU64::new(1),
                open_inodes: OpenInodes::default(),
            }),
            runtime,
        }
    }

    /// Runs `work` on the runtime: the event loop moves on at once.
    /// The request `op` is counted and timed (crate::metrics).
    fn spawn<F, Fut>(&self, op: &'static str, work: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(metrics::observe(op, work(self.inner.clone())));
    }

    /// The hooks this mount's USRBIO ring server calls (see [`RingHooks`]); complete them with
    /// [`RingHooks::for_mount`] once the mount exists.
    pub fn ring_hooks(&self) -> RingHooks {
        RingHooks { inner: self.inner.clone(), dev: 0, notifier: None }
    }

    fn reply_entry(inner: &Inner, reply: ReplyEntry, inode: Result<pb::Inode, Errno>) {
        match inode.and_then(|inode| inner.attr(&inode)) {
            Ok(attr) => reply.entry(&inner.options.entry_timeout, &attr, Generation(0)),
            Err(e) => fail!(reply, e),
        }
    }
}

/// What the USRBIO ring server serving this mount tells the file system
/// (`r3fs_usrbio::FileResolver`): a file the ring server holds open for writing counts as a
/// writer of its inode here, so the size this mount reports is raised to the end of what rings
/// wrote (as for writes through the kernel) until the ring server closes it and meta has the
/// length. When a ring write raises that end, the kernel's cached attributes of the file are
/// dropped before the write's completion is posted, so `stat` through the mount shows the new
/// length as soon as the application reaps the completion.
#[derive(Debug)]
pub struct RingHooks {
    inner: Arc<Inner>,
    /// Device number of the mount: fds from elsewhere are refused.
    dev: u64,
    notifier: Option<fuser::Notifier>,
}

impl RingHooks {
    /// Binds the hooks to the mounted file system: its device number and the session's notifier.
    pub fn for_mount(self, dev: u64, notifier: fuser::Notifier) -> RingHooks {
        RingHooks { dev, notifier: Some(notifier), ..self }
    }
}

impl r3fs_usrbio::FileResolver for RingHooks {
    fn resolve(&self, dev: u64, ino: u64) -> Result<r3fs_types::InodeId, r3fs_usrbio::Errno> {
        // FUSE inode numbers are r3fs inode ids.
        if dev != self.dev {
            return Err(r3fs_usrbio::Errno(libc::EXDEV));
        }
        Ok(r3fs_types::InodeId(ino))
    }

    fn opened(&self, inode: r3fs_types::InodeId, writable: bool) {
        if writable {
            self.inner.open_inodes.opened(inode.0);
        }
    }

    fn written(&self, inode: r3fs_types::InodeId, end: u64) {
        if !self.inner.open_inodes.wrote(inode.0, end) {
            return;
        }
        // Attributes only (offset -1): dropping page-cache ranges takes page locks, and a page
        // being read in waits on this daemon. ENOENT: the kernel holds nothing of the inode.
        if let Some(notifier) = &self.notifier
            && let Err(error) = notifier.inval_inode(INodeNo(inode.0), -1, 0)
            && error.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(%inode, "cannot invalidate cached attributes: {error}");
        }
    }

    fn closed(&self, inode: r3fs_types::InodeId, writable: bool) {
        if writable {
            self.inner.open_inodes.released(inode.0);
        }
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let access = OpenFlags(flags).acc_mode();
    OpenOptions {
        read: access != OpenAccMode::O_WRONLY,
        write: access != OpenAccMode::O_RDONLY,
        create: false,
        exclusive: false,
        truncate: flags & libc::O_TRUNC != 0,
        mode: 0o644,
    }
}

/// O_DIRECT bypasses the page cache (and lets reads be 1 MiB instead of readahead's 128 KiB).
fn fopen_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_DIRECT != 0 { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::empty() }
}

impl Filesystem for R3fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(self.inner.options.max_write) {
            tracing::info!("the kernel caps max_write at {nearest}");
            let _ = config.set_max_write(nearest);
        }
        // O_TRUNC in open (one meta call instead of open + setattr), parallel lookups and
        // readdirs in one directory, parallel direct I/O.
        for flag in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
        ] {
            if config.add_capabilities(flag).is_err() {
                tracing::info!("the kernel lacks {flag:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match attr::name(name) {
            Ok(name) => name,
            Err(e) => return fail!(reply, e),
        };
        self.spawn("lookup", move |inner| async move {
            let inode = inner
                .meta
                .lookup(pb::LookupRequest { parent: parent.0, name })
                .await
                .map_err(|e| errno("lookup", &e))
                .and_then(|r| inode_of(r, "lookup"));
            R3fs::reply_entry(&inner, reply, inode);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn("getattr", move |inner| async move {
            match inner.stat(ino.0).await.and_then(|inode| inner.attr(&inode)) {
                Ok(attr) => reply.attr(&inner.options.attr_timeout, &attr),
                Err(e) => fail!(reply, e),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.spawn("setattr", move |inner| async move {
            let result = async {
                let mut request = pb::SetAttrRequest {
                    target: Some(path_at(ino.0, "")),
                    follow: false,
                    mode: mode.map(|m| m & 0o7777),
                    uid,
                    gid,
                    atime: atime.map(attr::time_set),
                    mtime: mtime.map(attr::time_set),
                    ..Default::default()
                };
                if let Some(length) = size {
                    // Through a writable handle when there is one: its session stands for the
                    // permission it was opened with, and the handle learns the new truncate
                    // version (its later length reports count).
                    let handle = fh
                        .and_then(|fh| inner.handle(fh).ok())
                        .filter(|h| h.writable)
                        .or_else(|| inner.writable_handle(ino.0));
                    match handle {
                        Some(handle) => {
                            handle.file.truncate(length).await.map_err(|e| errno("truncate", &e))?
                        }
                        None => request.length = Some(length),
                    }
                    inner.open_inodes.truncated(ino.0);
                }
                let nothing_else = request.length.is_none()
                    && request.mode.is_none()
                    && request.uid.is_none()
                    && request.gid.is_none()
                    && request.atime.is_none()
                    && request.mtime.is_none();
                if nothing_else {
                    return inner.stat(ino.0).await;
                }
                let response =
                    inner.meta.set_attr(request).await.map_err(|e| errno("setattr", &e))?;
                inode_of(response, "setattr")
            }
            .await;
            match result.and_then(|inode| inner.attr(&inode)) {
                Ok(attr) => reply.attr(&inner.options.attr_timeout, &attr),
                Err(e) => fail!(reply, e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn("readlink", move |inner| async move {
            match inner
                .meta
                .read_link(pb::ReadLinkRequest { target: Some(path_at(ino.0, "")) })
                .await
            {
                Ok(response) => reply.data(response.link_target.as_bytes()),
                Err(e) => fail!(reply, errno("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files: r3fs has no device, FIFO or socket inodes.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return fail!(reply, Errno::EPERM);
        }
        let name = match attr::name(name) {
            Ok(name) => name,
            Err(e) => return fail!(reply, e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("mknod", move |inner| async move {
            let options = OpenOptions {
                read: false,
                write: false,
                create: true,
                exclusive: true,
                truncate: false,
                mode: mode & 0o7777,
            };
            let inode = match inner.files.open_at(parent.0, &name, &options).await {
                Ok(file) => {
                    let inode = file.opened().clone();
                    let _ = file.close().await;
                    Ok(inner.give_to_caller(uid, gid, inode).await)
                }
                Err(e) => Err(errno("mknod", &e)),
            };
            R3fs::reply_entry(&inner, reply, inode);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match attr::name(name) {
            Ok(name) => name,
            Err(e) => return fail!(reply, e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("mkdir", move |inner| async move {
            let request = pb::MkdirRequest {
                target: Some(path_at(parent.0, &name)),
                // The kernel applied the umask already (no FUSE_DONT_MASK).
                mode: mode & 0o7777,
                recursive: false,
            };
            let inode = match inner.meta.mkdir(request).await {
                Ok(response) => match inode_of(response, "mkdir") {
                    Ok(inode) => Ok(inner.give_to_caller(uid, gid, inode).await),
                    Err(e) => Err(e),
                },
                Err(e) => Err(errno("mkdir", &e)),
            };
            R3fs::reply_entry(&inner, reply, inode);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, pb::RemoveKind::File, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, pb::RemoveKind::EmptyDirectory, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (attr::name(link_name), attr::name(target.as_os_str())) {
            (Ok(name), Ok(target)) => (name, target),
            _ => return fail!(reply, Errno::EINVAL),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("symlink", move |inner| async move {
            let request =
                pb::SymlinkRequest { target: Some(path_at(parent.0, &name)), link_target: target };
            let inode = match inner.meta.symlink(request).await {
                Ok(response) => match inode_of(response, "symlink") {
                    Ok(inode) => Ok(inner.give_to_caller(uid, gid, inode).await),
                    Err(e) => Err(e),
                },
                Err(e) => Err(errno("symlink", &e)),
            };
            R3fs::reply_entry(&inner, reply, inode);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_EXCHANGE and RENAME_WHITEOUT are not supported (as on file systems without
        // them, EINVAL).
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return fail!(reply, Errno::EINVAL);
        }
        let (name, newname) = match (attr::name(name), attr::name(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return fail!(reply, Errno::EINVAL),
        };
        self.spawn("rename", move |inner| async move {
            let request = pb::RenameRequest {
                source: Some(path_at(parent.0, &name)),
                destination: Some(path_at(newparent.0, &newname)),
                no_replace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            };
            match inner.meta.rename(request).await {
                Ok(_) => reply.ok(),
                Err(e) => fail!(reply, errno("rename", &e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = match attr::name(newname) {
            Ok(name) => name,
            Err(e) => return fail!(reply, e),
        };
        self.spawn("link", move |inner| async move {
            let request = pb::LinkRequest {
                old_path: Some(path_at(ino.0, "")),
                new_path: Some(path_at(newparent.0, &newname)),
            };
            let inode = inner
                .meta
                .link(request)
                .await
                .map_err(|e| errno("link", &e))
                .and_then(|r| inode_of(r, "link"));
            R3fs::reply_entry(&inner, reply, inode);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let options = open_options(flags.0);
        self.spawn("open", move |inner| async move {
            match inner.files.open_inode(r3fs_types::InodeId(ino.0), &options).await {
                Ok(file) => {
                    if options.truncate {
                        inner.open_inodes.truncated(ino.0);
                    }
                    let fh = inner.add_handle(OpenFile {
                        file,
                        writable: options.write,
                        dirty: AtomicBool::new(false),
                    });
                    reply.opened(fh, fopen_flags(flags.0));
                }
                Err(e) => fail!(reply, errno("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = match self.inner.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return fail!(reply, e),
        };
        self.spawn("read", move |inner| async move {
            let mut buf = vec![0u8; size as usize];
            let mut n = match handle.file.read_at(offset, &mut buf).await {
                Ok(n) => n,
                Err(e) => return fail!(reply, errno("read", &e)),
            };
            // Another handle of this mount may have written further than this one knows (meta
            // has not been told yet): read up to that end, not to the handle's length.
            let floor = inner.open_inodes.floor(ino.0);
            let want = (offset + u64::from(size)).min(floor);
            let have = offset + n as u64;
            if want > have {
                let extra = &mut buf[n..(want - offset) as usize];
                match inner.files.storage().read(handle.file.map(), have, extra).await {
                    Ok(_) => n = (want - offset) as usize,
                    Err(e) => return fail!(reply, errno("read", &e)),
                }
            }
            reply.data(&buf[..n]);
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let handle = match self.inner.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return fail!(reply, e),
        };
        // The request buffer belongs to the event loop: the task needs its own copy.
        let data = data.to_vec();
        let inner = self.inner.clone();
        let runtime = self.runtime.clone();
        // The client's write future is not provably `Send` (rust-lang/rust#102211: closures over
        // borrowed chunk pieces inside it), so it cannot be `spawn`ed; it runs with `block_on`
        // on a blocking-pool thread instead, one per write in flight (the kernel bounds those).
        self.runtime.spawn_blocking(move || {
            runtime.block_on(metrics::observe("write", async move {
                match handle.file.write_at(offset, &data).await {
                    Ok(n) => {
                        handle.dirty.store(true, Ordering::Release);
                        inner.open_inodes.wrote(ino.0, offset + n as u64);
                        reply.written(n as u32);
                    }
                    Err(e) => fail!(reply, errno("write", &e)),
                }
            }))
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): report the length so the next open (here or on another client) sees it.
        let handle = match self.inner.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return fail!(reply, e),
        };
        self.spawn("flush", move |_inner| async move {
            match report(&handle).await {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, e),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Data is durable once a write returns (committed on every replica of its chain); fsync
        // makes the length durable in meta.
        let handle = match self.inner.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return fail!(reply, e),
        };
        self.spawn("fsync", move |_inner| async move {
            handle.dirty.store(true, Ordering::Release);
            match report(&handle).await {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, e),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(handle) = lock(&self.inner.handles).remove(&fh.0) else {
            return fail!(reply, Errno::EBADF);
        };
        self.spawn("release", move |inner| async move {
            let writable = handle.writable;
            let result = match Arc::try_unwrap(handle) {
                Ok(open) => open.file.close().await.map(|_| ()),
                // Still used by a request in flight (the kernel does not do that): report,
                // and let the session end when the last reference goes.
                Err(shared) => shared.file.fsync().await,
            };
            if writable {
                inner.open_inodes.released(ino.0);
            }
            match result {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, errno("release", &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.dirs).insert(fh, Arc::default());
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some(listing) = lock(&self.inner.dirs).get(&fh.0).cloned() else {
            return fail!(reply, Errno::EBADF);
        };
        self.spawn("readdir", move |inner| async move {
            let mut listing = listing.lock().await;
            match fill_directory(&inner, ino.0, &mut listing, offset, reply).await {
                Ok(()) => {}
                Err((reply, e)) => fail!(reply, e),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.inner.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is a committed KV transaction before it is answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn("statfs", move |inner| async move {
            match inner.meta.stat_fs(pb::StatFsRequest {}).await {
                Ok(fs) => {
                    let blocks = fs.total_bytes / STATFS_BLOCK_BYTES;
                    let free = fs.total_bytes.saturating_sub(fs.used_bytes) / STATFS_BLOCK_BYTES;
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        fs.inodes.saturating_add(u64::from(u32::MAX)),
                        u64::from(u32::MAX),
                        STATFS_BLOCK_BYTES as u32,
                        fs.name_length_max,
                        STATFS_BLOCK_BYTES as u32,
                    );
                }
                Err(e) => fail!(reply, errno("statfs", &e)),
            }
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks access itself and does not ask; this
        // answers when it does, from the mode bits (supplementary groups are not known here).
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("access", move |inner| async move {
            match inner.stat(ino.0).await {
                Ok(inode) => {
                    if may_access(&inode, uid, gid, mask.bits()) {
                        reply.ok()
                    } else {
                        fail!(reply, Errno::EACCES)
                    }
                }
                Err(e) => fail!(reply, e),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match attr::name(name) {
            Ok(name) => name,
            Err(e) => return fail!(reply, e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        let options = OpenOptions {
            create: true,
            exclusive: flags & libc::O_EXCL != 0,
            mode: mode & 0o7777,
            ..open_options(flags)
        };
        self.spawn("create", move |inner| async move {
            let file = match inner.files.open_at(parent.0, &name, &options).await {
                Ok(file) => file,
                Err(e) => return fail!(reply, errno("create", &e)),
            };
            let inode = inner.give_to_caller(uid, gid, file.opened().clone()).await;
            if options.truncate {
                inner.open_inodes.truncated(inode.id);
            }
            let attr = match inner.attr(&inode) {
                Ok(attr) => attr,
                Err(e) => return fail!(reply, e),
            };
            let fh = inner.add_handle(OpenFile {
                file,
                writable: options.write,
                dirty: AtomicBool::new(false),
            });
            reply.created(
                &inner.options.entry_timeout,
                &attr,
                Generation(0),
                fh,
                fopen_flags(flags),
            );
        });
    }
}

impl R3fs {
    fn remove(&self, parent: INodeNo, name: &OsStr, kind: pb::RemoveKind, reply: ReplyEmpty) {
        let name = match attr::name(name) {
            Ok(name) => name,
            Err(e) => return fail!(reply, e),
        };
        self.spawn(
            if kind == pb::RemoveKind::File { "unlink" } else { "rmdir" },
            move |inner| async move {
                let request =
                    pb::RemoveRequest { target: Some(path_at(parent.0, &name)), kind: kind as i32 };
                match inner.meta.remove(request).await {
                    Ok(_) => reply.ok(),
                    Err(e) => fail!(reply, errno("remove", &e)),
                }
            },
        );
    }
}

/// Reports a written handle's length to meta (flush, fsync); a clean handle costs nothing.
async fn report(handle: &OpenFile) -> Result<(), Errno> {
    if !handle.writable || !handle.dirty.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    handle.file.fsync().await.map_err(|e| {
        handle.dirty.store(true, Ordering::Release);
        errno("fsync", &e)
    })
}

/// Whether `uid`/`gid` may access `inode` for `mask` (R_OK 4, W_OK 2, X_OK 1) by its mode bits.
fn may_access(inode: &pb::Inode, uid: u32, gid: u32, mask: i32) -> bool {
    let mask = (mask & 0o7) as u32;
    if mask == 0 {
        return true;
    }
    if uid == 0 {
        // Root: read and write always; execute if anyone may (or a directory).
        let any_x = inode.mode & 0o111 != 0 || inode.kind == pb::InodeKind::Directory as i32;
        return mask & 1 == 0 || any_x;
    }
    let class = if inode.uid == uid {
        (inode.mode >> 6) & 0o7
    } else if inode.gid == gid {
        (inode.mode >> 3) & 0o7
    } else {
        inode.mode & 0o7
    };
    class & mask == mask
}

/// Answers one readdir from `listing`, fetching pages from meta as needed.
async fn fill_directory(
    inner: &Inner,
    ino: u64,
    listing: &mut Listing,
    offset: u64,
    mut reply: ReplyDirectory,
) -> Result<(), (ReplyDirectory, Errno)> {
    if offset < listing.base || !listing.started {
        // A new listing (or a seek backwards: start again and skip forward).
        *listing = Listing { started: true, ..Listing::default() };
        let parent = match inner.stat(ino).await {
            Ok(dir) => dir.parent,
            Err(e) => return Err((reply, e)),
        };
        listing.window.push_back((".".into(), ino, FileType::Directory));
        listing.window.push_back(("..".into(), parent, FileType::Directory));
    }
    // Forget what the kernel has consumed.
    while listing.base < offset && !listing.window.is_empty() {
        listing.window.pop_front();
        listing.base += 1;
    }
    let mut next = offset;
    loop {
        let index = (next - listing.base) as usize;
        if index >= listing.window.len() {
            if listing.done {
                break;
            }
            let request = pb::ReadDirRequest {
                directory: Some(path_at(ino, "")),
                after: listing.after.clone(),
                limit: READDIR_PAGE_ENTRIES,
            };
            let page = match inner.meta.read_dir(request).await {
                Ok(page) => page,
                Err(e) => return Err((reply, errno("readdir", &e))),
            };
            if let Some(last) = page.entries.last() {
                listing.after = last.name.clone();
            }
            listing.done = !page.more || page.entries.is_empty();
            listing.window.extend(
                page.entries.into_iter().map(|e| (e.name, e.inode, attr::entry_type(e.kind))),
            );
            continue;
        }
        let (name, inode, kind) = &listing.window[index];
        if reply.add(INodeNo(*inode), next + 1, *kind, name) {
            break;
        }
        next += 1;
    }
    reply.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_by_mode_bits() {
        let inode = pb::Inode {
            uid: 10,
            gid: 20,
            mode: 0o640,
            kind: pb::InodeKind::File as i32,
            ..Default::default()
        };
        assert!(may_access(&inode, 10, 99, 6));
        assert!(!may_access(&inode, 10, 99, 1));
        assert!(may_access(&inode, 11, 20, 4));
        assert!(!may_access(&inode, 11, 20, 2));
        assert!(!may_access(&inode, 11, 21, 4));
        assert!(may_access(&inode, 11, 21, 0), "F_OK");
        assert!(may_access(&inode, 0, 0, 6), "root reads and writes");
        assert!(!may_access(&inode, 0, 0, 1), "root executes only with some x bit");
    }

    #[test]
    fn open_flags_map_to_options() {
        let read = open_options(libc::O_RDONLY);
        assert!(read.read && !read.write && !read.truncate);
        let write = open_options(libc::O_WRONLY | libc::O_TRUNC);
        assert!(!write.read && write.write && write.truncate);
        let both = open_options(libc::O_RDWR | libc::O_APPEND);
        assert!(both.read && both.write);
        assert_eq!(fopen_flags(libc::O_RDWR | libc::O_DIRECT), FopenFlags::FOPEN_DIRECT_IO);
        assert_eq!(fopen_flags(libc::O_RDWR), FopenFlags::empty());
    }

    #[test]
    fn open_inodes_track_written_ends_until_the_last_writer_leaves() {
        let open = OpenInodes::default();
        open.wrote(5, 100);
        assert_eq!(open.floor(5), 0, "no writer: nothing tracked");
        open.opened(5);
        open.opened(5);
        open.wrote(5, 100);
        open.wrote(5, 50);
        assert_eq!(open.floor(5), 100);
        open.truncated(5);
        assert_eq!(open.floor(5), 0);
        open.wrote(5, 10);
        open.released(5);
        assert_eq!(open.floor(5), 10);
        open.released(5);
        assert_eq!(open.floor(5), 0);
    }
}
