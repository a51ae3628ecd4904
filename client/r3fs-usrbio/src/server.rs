//! The serving side: a [`RingServer`] runs inside the process that owns a [`FileClient`] (the
//! FUSE daemon), accepts application sessions on a Unix socket, maps their shared regions, and
//! performs their ring I/O with the file API straight from and into the shared buffers.
//!
//! Invariants:
//! - Nothing an application does blocks the server: each session and each ring is its own task;
//!   eventfds and the ring memory are only touched without blocking; a completion is posted only
//!   into a CQ slot known to be free (a ring takes a new entry only while entries in flight plus
//!   completions not yet reaped stay below the ring size).
//! - Every entry is copied out of shared memory once and validated (opcode, iov, range, file,
//!   access mode) before use; a bad entry completes with a negative errno.
//! - A session's regions stay mapped by the server until its last I/O has finished, whatever the
//!   application does (it cannot shrink them: they are sealed).
//! - When the connection closes (exit, crash, kill -9), the session's rings stop taking entries,
//!   finish what is in flight, and its files are closed (their written length reported).

use crate::locate::Errno;
use crate::proto::{self, Request};
use crate::ring::{self, Cqe, RingView, Sqe};
use crate::shm::{Mapping, fstat};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use r3fs_client::{File, FileClient, OpenOptions};
use r3fs_types::InodeId;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::{Notify, RwLock, watch};
use tokio::task::JoinSet;

/// Maps a file an application opened on the mount to the r3fs inode it names, and hears what
/// ring I/O does to it, so the process serving the mount keeps its own view true (the FUSE
/// daemon raises the size it reports and invalidates the kernel's cached attributes).
pub trait FileResolver: Send + Sync + std::fmt::Debug + 'static {
    /// `dev` and `ino` are the fstat of the application's fd; Err(errno) if it is not a file of
    /// this server's mount.
    fn resolve(&self, dev: u64, ino: u64) -> Result<InodeId, Errno>;

    /// The server opened `inode` for a session (after `resolve`).
    fn opened(&self, _inode: InodeId, _writable: bool) {}

    /// A ring write to `inode` ending at `end` succeeded. Called before its completion is
    /// posted, so whatever this does is visible to the application when it reaps it.
    fn written(&self, _inode: InodeId, _end: u64) {}

    /// The server closed its handle of `inode` (the written length is in meta by then).
    fn closed(&self, _inode: InodeId, _writable: bool) {}
}

/// The resolver of a FUSE mount: files on the mount's device; the inode number the kernel shows
/// is translated by `inode_of` (the FUSE daemon's own numbering).
pub struct MountResolver {
    dev: u64,
    inode_of: Box<dyn Fn(u64) -> Option<InodeId> + Send + Sync>,
}

impl MountResolver {
    pub fn new(
        dev: u64,
        inode_of: impl Fn(u64) -> Option<InodeId> + Send + Sync + 'static,
    ) -> Self {
        MountResolver { dev, inode_of: Box::new(inode_of) }
    }
}

impl std::fmt::Debug for MountResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountResolver").field("dev", &self.dev).finish_non_exhaustive()
    }
}

impl FileResolver for MountResolver {
    fn resolve(&self, dev: u64, ino: u64) -> Result<InodeId, Errno> {
        if dev != self.dev {
            return Err(Errno(libc::EXDEV));
        }
        (self.inode_of)(ino).ok_or(Errno(libc::ENOENT))
    }
}

/// A resolver without a mount: local placeholder files (by device and inode number) stand for
/// r3fs inodes. For running the ring server where no FUSE mount exists (tests, tools).
#[derive(Debug, Default)]
pub struct InodeMap {
    map: Mutex<HashMap<(u64, u64), InodeId>>,
}

impl InodeMap {
    /// Makes the local file at `placeholder` stand for `inode`.
    pub fn insert(&self, placeholder: &Path, inode: InodeId) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(placeholder)?;
        lock(&self.map).insert((metadata.dev(), metadata.ino()), inode);
        Ok(())
    }
}

impl FileResolver for InodeMap {
    fn resolve(&self, dev: u64, ino: u64) -> Result<InodeId, Errno> {
        lock(&self.map).get(&(dev, ino)).copied().ok_or(Errno(libc::EXDEV))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bounds and the socket of a [`RingServer`].
#[derive(Clone, Debug)]
pub struct RingServerConfig {
    pub socket_path: PathBuf,
    pub sessions_max: usize,
    pub iovs_per_session_max: usize,
    pub iors_per_session_max: usize,
    pub files_per_session_max: usize,
    /// Largest iov one session may register.
    pub iov_bytes_max: u64,
    /// Largest ring (entries, a power of two, at most [`ring::ENTRIES_MAX`]).
    pub entries_max: u32,
}

impl RingServerConfig {
    /// Defaults, listening on `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        RingServerConfig {
            socket_path: socket_path.into(),
            sessions_max: 256,
            iovs_per_session_max: 64,
            iors_per_session_max: 64,
            files_per_session_max: 4096,
            iov_bytes_max: 64 << 30,
            entries_max: ring::ENTRIES_MAX,
        }
    }

    /// Defaults, listening where applications of the mount with device number `dev` look
    /// ([`crate::locate::socket_path_for_dev`]).
    pub fn for_mount_dev(dev: u64) -> Self {
        RingServerConfig::new(crate::locate::socket_path_for_dev(dev))
    }
}

/// Counters of a running server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub sessions: usize,
    pub iovs: usize,
    pub iors: usize,
    pub files: usize,
    pub ios_completed: u64,
    pub ios_failed: u64,
    pub sessions_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicUsize,
    iovs: AtomicUsize,
    iors: AtomicUsize,
    files: AtomicUsize,
    ios_completed: AtomicU64,
    ios_failed: AtomicU64,
    sessions_refused: AtomicU64,
}

#[derive(Debug)]
struct ServerState {
    config: RingServerConfig,
    files: FileClient,
    resolver: Arc<dyn FileResolver>,
    counters: Counters,
}

/// The ring server. Dropping it without [`RingServer::shutdown`] aborts its tasks.
#[derive(Debug)]
pub struct RingServer {
    state: Arc<ServerState>,
    stop: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl RingServer {
    /// Binds the socket (replacing a stale one) and starts accepting sessions. Must be called
    /// inside a tokio runtime.
    pub fn start(
        config: RingServerConfig,
        files: FileClient,
        resolver: Arc<dyn FileResolver>,
    ) -> io::Result<RingServer> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if !ring::entries_valid(config.entries_max) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "entries_max must be a power of two <= 4096",
            ));
        }
        let path = &config.socket_path;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if let Ok(metadata) = std::fs::symlink_metadata(path)
            && metadata.file_type().is_socket()
        {
            std::fs::remove_file(path)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        // Any local user may connect: a session can only name files through fds it holds, so the
        // kernel has already checked its right to open them.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let state =
            Arc::new(ServerState { config, files, resolver, counters: Counters::default() });
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(state.clone(), listener, stop_rx));
        tracing::info!(socket = %state.config.socket_path.display(), "usrbio ring server listening");
        Ok(RingServer { state, stop, accept: Some(accept) })
    }

    pub fn socket_path(&self) -> &Path {
        &self.state.config.socket_path
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.state.counters;
        ServerStats {
            sessions: c.sessions.load(Ordering::Relaxed),
            iovs: c.iovs.load(Ordering::Relaxed),
            iors: c.iors.load(Ordering::Relaxed),
            files: c.files.load(Ordering::Relaxed),
            ios_completed: c.ios_completed.load(Ordering::Relaxed),
            ios_failed: c.ios_failed.load(Ordering::Relaxed),
            sessions_refused: c.sessions_refused.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, ends every session (in-flight I/O finishes, files are closed) and removes
    /// the socket.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let _ = std::fs::remove_file(&self.state.config.socket_path);
    }
}

impl Drop for RingServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

async fn accept_loop(
    state: Arc<ServerState>,
    listener: tokio::net::UnixListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if sessions.len() >= state.config.sessions_max {
                        state.counters.sessions_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("usrbio: refusing a session: {} sessions open", sessions.len());
                        drop(stream);
                        continue;
                    }
                    sessions.spawn(serve_session(state.clone(), stream, stop.clone()));
                }
                Err(error) => {
                    tracing::warn!("usrbio: accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    while sessions.join_next().await.is_some() {}
}

/// An open file of a session. I/O holds the read side; deregistration takes the write side
/// (waiting for in-flight I/O) and closes the file.
#[derive(Debug)]
struct OpenFile {
    handle: Arc<RwLock<Option<File>>>,
    inode: InodeId,
    readable: bool,
    writable: bool,
    /// The server's resolver, told about writes and the close.
    resolver: Arc<dyn FileResolver>,
}

#[derive(Debug, Default)]
struct SessionState {
    iovs: Mutex<HashMap<u32, Arc<Mapping>>>,
    files: Mutex<HashMap<u32, Arc<OpenFile>>>,
    next_id: AtomicU32,
    /// A ring found its memory corrupted: end the session so the application notices.
    kill: Notify,
}

impl SessionState {
    fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

struct RingTask {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

struct Session {
    server: Arc<ServerState>,
    state: Arc<SessionState>,
    rings: HashMap<u32, RingTask>,
}

/// Reads one request (40 bytes, fds as they come). None at end of stream.
async fn read_request(
    stream: &UnixStream,
) -> io::Result<Option<([u8; proto::REQUEST_BYTES], Vec<OwnedFd>)>> {
    let mut buf = [0u8; proto::REQUEST_BYTES];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        let raw = stream.as_raw_fd();
        let n = stream
            .async_io(Interest::READABLE, || proto::recv_with_fds(raw, &mut buf[got..], &mut fds))
            .await?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
        if fds.len() > proto::FDS_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too many fds"));
        }
    }
    Ok(Some((buf, fds)))
}

async fn serve_session(
    server: Arc<ServerState>,
    mut stream: UnixStream,
    mut stop: watch::Receiver<bool>,
) {
    server.counters.sessions.fetch_add(1, Ordering::Relaxed);
    let mut session = Session {
        server: server.clone(),
        state: Arc::new(SessionState::default()),
        rings: HashMap::new(),
    };
    let kill = session.state.clone();
    loop {
        let request = tokio::select! {
            request = read_request(&stream) => request,
            _ = stop.changed() => break,
            _ = kill.kill.notified() => {
                tracing::warn!("usrbio: ending a session whose ring memory was corrupted");
                break;
            }
        };
        let (bytes, fds) = match request {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!("usrbio: session read failed: {error}");
                break;
            }
        };
        let Some(request) = Request::decode(&bytes) else {
            tracing::warn!("usrbio: ending a session that sent a message with a wrong magic");
            break;
        };
        let result = match session.handle(request, fds).await {
            Ok(value) => value as i64,
            Err(errno) => i64::from(errno.negative()),
        };
        if let Err(error) = stream.write_all(&proto::encode_reply(result)).await {
            tracing::debug!("usrbio: session write failed: {error}");
            break;
        }
    }
    drop(stream);
    session.teardown().await;
    server.counters.sessions.fetch_sub(1, Ordering::Relaxed);
}

fn take_fds<const N: usize>(fds: Vec<OwnedFd>) -> Result<[OwnedFd; N], Errno> {
    <[OwnedFd; N]>::try_from(fds).map_err(|_| Errno(libc::EINVAL))
}

fn id_arg(request: &Request) -> Result<u32, Errno> {
    u32::try_from(request.args[0]).map_err(|_| Errno(libc::EINVAL))
}

/// Whether `fd` is an eventfd (so reading and writing 8 bytes never blocks once nonblocking).
fn make_nonblocking_eventfd(fd: &OwnedFd) -> Result<(), Errno> {
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(Errno::from)?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: fcntl on a valid fd.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: fcntl on a valid fd.
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

impl Session {
    async fn handle(&mut self, request: Request, fds: Vec<OwnedFd>) -> Result<u64, Errno> {
        let config = &self.server.config;
        let counters = &self.server.counters;
        match request.op {
            proto::OP_REG_IOV => {
                let [fd] = take_fds::<1>(fds)?;
                let size = request.args[0];
                if size == 0 || size > config.iov_bytes_max {
                    return Err(Errno(libc::EINVAL));
                }
                if lock(&self.state.iovs).len() >= config.iovs_per_session_max {
                    return Err(Errno(libc::EMFILE));
                }
                let size = usize::try_from(size).map_err(|_| Errno(libc::EINVAL))?;
                let mapping = Mapping::from_received(fd, size).map_err(|_| Errno(libc::EINVAL))?;
                let id = self.state.next_id();
                lock(&self.state.iovs).insert(id, Arc::new(mapping));
                counters.iovs.fetch_add(1, Ordering::Relaxed);
                Ok(u64::from(id))
            }
            proto::OP_DEREG_IOV => {
                // In-flight I/O keeps its own reference to the mapping.
                let removed = lock(&self.state.iovs).remove(&id_arg(&request)?);
                removed.ok_or(Errno(libc::ENOENT))?;
                counters.iovs.fetch_sub(1, Ordering::Relaxed);
                Ok(0)
            }
            proto::OP_REG_IOR => {
                let [ring_fd, submit, complete] = take_fds::<3>(fds)?;
                let entries = u32::try_from(request.args[0]).map_err(|_| Errno(libc::EINVAL))?;
                if !ring::entries_valid(entries) || entries > config.entries_max {
                    return Err(Errno(libc::EINVAL));
                }
                if self.rings.len() >= config.iors_per_session_max {
                    return Err(Errno(libc::EMFILE));
                }
                make_nonblocking_eventfd(&submit)?;
                make_nonblocking_eventfd(&complete)?;
                let mapping = Mapping::from_received(ring_fd, ring::ring_bytes(entries))
                    .map_err(|_| Errno(libc::EINVAL))?;
                // SAFETY: the mapping is page-aligned, ring_bytes(entries) long (checked), and moves
                // into the ring task, which outlives every use of the view.
                let view = unsafe { RingView::new(mapping.as_ptr(), entries) };
                view.check_header().map_err(|_| Errno(libc::EINVAL))?;
                // SAFETY: the OwnedFd is open, moves into the AsyncFd and is closed only with it.
                let submit = unsafe { AsyncFd::register_with_interest(submit, Interest::READABLE) }
                    .map_err(|error| Errno::from(io::Error::from(error)))?;
                let id = self.state.next_id();
                let (stop, stop_rx) = watch::channel(false);
                let ring = RingLoop {
                    server: self.server.clone(),
                    session: self.state.clone(),
                    view,
                    _mapping: mapping,
                    submit,
                    complete,
                };
                let join = tokio::spawn(ring.run(stop_rx));
                self.rings.insert(id, RingTask { stop, join });
                counters.iors.fetch_add(1, Ordering::Relaxed);
                Ok(u64::from(id))
            }
            proto::OP_DEREG_IOR => {
                let ring = self.rings.remove(&id_arg(&request)?).ok_or(Errno(libc::ENOENT))?;
                let _ = ring.stop.send(true);
                let _ = ring.join.await;
                counters.iors.fetch_sub(1, Ordering::Relaxed);
                Ok(0)
            }
            proto::OP_REG_FD => {
                let [fd] = take_fds::<1>(fds)?;
                if lock(&self.state.files).len() >= config.files_per_session_max {
                    return Err(Errno(libc::EMFILE));
                }
                let stat = fstat(fd.as_fd())?;
                if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(Errno(if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        libc::EISDIR
                    } else {
                        libc::EINVAL
                    }));
                }
                // SAFETY: fcntl on a valid fd.
                let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
                if flags < 0 || flags & libc::O_PATH != 0 {
                    return Err(Errno(libc::EBADF));
                }
                let inode = self.server.resolver.resolve(stat.st_dev, stat.st_ino)?;
                let access = flags & libc::O_ACCMODE;
                let (readable, writable) = (access != libc::O_WRONLY, access != libc::O_RDONLY);
                let options =
                    OpenOptions { read: readable, write: writable, ..OpenOptions::read_only() };
                // The application's fd is no longer needed: its open file description proved the
                // right to open the file with this access mode.
                drop(fd);
                let file = self.server.files.open_inode(inode, &options).await.map_err(|error| {
                    tracing::debug!(%inode, "usrbio: opening a registered file failed: {error}");
                    Errno(error.errno())
                })?;
                self.server.resolver.opened(inode, writable);
                let id = self.state.next_id();
                let open = OpenFile {
                    handle: Arc::new(RwLock::new(Some(file))),
                    inode,
                    readable,
                    writable,
                    resolver: self.server.resolver.clone(),
                };
                lock(&self.state.files).insert(id, Arc::new(open));
                counters.files.fetch_add(1, Ordering::Relaxed);
                Ok(u64::from(id))
            }
            proto::OP_DEREG_FD => {
                let file =
                    lock(&self.state.files).remove(&id_arg(&request)?).ok_or(Errno(libc::EBADF))?;
                counters.files.fetch_sub(1, Ordering::Relaxed);
                close_file(&file).await
            }
            _ => Err(Errno(libc::EOPNOTSUPP)),
        }
    }

    async fn teardown(mut self) {
        for ring in self.rings.values() {
            let _ = ring.stop.send(true);
        }
        for (_, ring) in self.rings.drain() {
            let _ = ring.join.await;
            self.server.counters.iors.fetch_sub(1, Ordering::Relaxed);
        }
        let files: Vec<_> = lock(&self.state.files).drain().map(|(_, file)| file).collect();
        for file in files {
            self.server.counters.files.fetch_sub(1, Ordering::Relaxed);
            if let Err(errno) = close_file(&file).await {
                tracing::warn!("usrbio: closing a file of an ended session failed: {errno}");
            }
        }
        let iovs = lock(&self.state.iovs).drain().count();
        self.server.counters.iovs.fetch_sub(iovs, Ordering::Relaxed);
    }
}

async fn close_file(file: &OpenFile) -> Result<u64, Errno> {
    let taken = file.handle.write().await.take();
    match taken {
        Some(handle) => {
            let closed = handle.close().await.map(|_| 0).map_err(|error| Errno(error.errno()));
            file.resolver.closed(file.inode, file.writable);
            closed
        }
        None => Ok(0),
    }
}

type IoFuture = Pin<Box<dyn Future<Output = Cqe> + Send>>;

struct RingLoop {
    server: Arc<ServerState>,
    session: Arc<SessionState>,
    view: RingView,
    /// Keeps the ring memory mapped for as long as `view` is used.
    _mapping: Mapping,
    submit: AsyncFd<OwnedFd>,
    complete: OwnedFd,
}

impl RingLoop {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let entries = self.view.entries();
        let (mut sq_head, mut cq_tail) = (0u32, 0u32);
        let mut in_flight: FuturesUnordered<IoFuture> = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            if !stopping {
                match self.take_entries(&mut sq_head, cq_tail, &mut in_flight) {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!("usrbio: ring broken: {error}");
                        self.session.kill.notify_one();
                        stopping = true;
                    }
                }
            }
            if stopping && in_flight.is_empty() {
                break;
            }
            debug_assert!(in_flight.len() <= entries as usize);
            tokio::select! {
                Some(cqe) = in_flight.next(), if !in_flight.is_empty() => {
                    self.post(&mut cq_tail, cqe);
                    // Post whatever else is ready, then wake the application once.
                    while let Some(Some(cqe)) = in_flight.next().now_or_never() {
                        self.post(&mut cq_tail, cqe);
                    }
                    signal(&self.complete);
                }
                readable = self.submit.readable(), if !stopping => match readable {
                    Ok(mut guard) => {
                        let _ = guard.try_io(|fd| clear(fd.get_ref()));
                    }
                    Err(error) => {
                        tracing::warn!("usrbio: submit eventfd failed: {error}");
                        stopping = true;
                    }
                },
                _ = stop.changed(), if !stopping => stopping = true,
            }
        }
    }

    fn post(&self, cq_tail: &mut u32, cqe: Cqe) {
        let counters = &self.server.counters;
        if cqe.result < 0 {
            counters.ios_failed.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.ios_completed.fetch_add(1, Ordering::Relaxed);
        }
        self.view.post_cqe(cq_tail, cqe);
    }

    /// Takes entries while the CQ is sure to have room for their completions.
    fn take_entries(
        &self,
        sq_head: &mut u32,
        cq_tail: u32,
        in_flight: &mut FuturesUnordered<IoFuture>,
    ) -> Result<(), ring::RingError> {
        let entries = self.view.entries();
        let mut available = self.view.sq_available(*sq_head)?;
        let unreaped = self.view.cq_unreaped(cq_tail)?;
        while available > 0 && in_flight.len() as u32 + unreaped < entries {
            let sqe = self.view.take_sqe(sq_head);
            available -= 1;
            in_flight.push(self.start(sqe));
        }
        Ok(())
    }

    /// Validates one entry and starts its I/O; a bad entry completes at once with an errno.
    fn start(&self, sqe: Sqe) -> IoFuture {
        let userdata = sqe.userdata;
        let failed = move |errno: i32| -> IoFuture {
            Box::pin(std::future::ready(Cqe { result: -i64::from(errno), userdata }))
        };
        let read = match sqe.opcode {
            ring::OP_READ => true,
            ring::OP_WRITE => false,
            ring::OP_FSYNC => {
                if sqe.iov_id != 0 || sqe.buf_offset != 0 || sqe.len != 0 {
                    return failed(libc::EINVAL);
                }
                let Some(file) = lock(&self.session.files).get(&sqe.file_id).cloned() else {
                    return failed(libc::EBADF);
                };
                return Box::pin(AssertSend(fsync(file, userdata)));
            }
            _ => return failed(libc::EINVAL),
        };
        let Some(iov) = lock(&self.session.iovs).get(&sqe.iov_id).cloned() else {
            return failed(libc::EFAULT);
        };
        let (Ok(offset), Ok(len)) = (usize::try_from(sqe.buf_offset), usize::try_from(sqe.len))
        else {
            return failed(libc::EFAULT);
        };
        if len == 0 {
            return failed(libc::EINVAL);
        }
        match offset.checked_add(len) {
            Some(end) if end <= iov.len() => {}
            _ => return failed(libc::EFAULT),
        }
        if sqe.file_offset.checked_add(sqe.len).is_none() {
            return failed(libc::EINVAL);
        }
        let Some(file) = lock(&self.session.files).get(&sqe.file_id).cloned() else {
            return failed(libc::EBADF);
        };
        if (read && !file.readable) || (!read && !file.writable) {
            return failed(libc::EBADF);
        }
        Box::pin(AssertSend(perform(file, iov, offset, len, read, sqe.file_offset, userdata)))
    }
}

/// Declares `perform`'s future Send. It is: everything it holds across an await (Arcs, a tokio
/// read guard, the file client's request futures, byte slices) is Send for every concrete
/// lifetime, which is what rustc's own diagnostic reports ("Send is actually implemented for
/// `&'0 File`, for some specific lifetime"). rustc cannot prove it for all lifetimes at once when
/// the future is coerced to `dyn Future + Send` (rust-lang/rust#110338, #102211).
struct AssertSend<F>(F);

// SAFETY: see the type's comment: the wrapped future only holds Send values; the compiler's
// limitation is about generalizing their lifetimes, not about thread safety.
unsafe impl<F> Send for AssertSend<F> {}

impl<F: Future> Future for AssertSend<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        // SAFETY: structural pinning of the only field; AssertSend never moves it.
        unsafe { self.map_unchecked_mut(|this| &mut this.0) }.poll(cx)
    }
}

/// One validated I/O: `[offset, offset + len)` lies inside `iov`.
async fn perform(
    file: Arc<OpenFile>,
    iov: Arc<Mapping>,
    offset: usize,
    len: usize,
    read: bool,
    file_offset: u64,
    userdata: u64,
) -> Cqe {
    let guard = file.handle.read().await;
    let Some(handle) = guard.as_ref() else {
        return Cqe { result: -i64::from(libc::EBADF), userdata };
    };
    debug_assert!(offset.checked_add(len).is_some_and(|end| end <= iov.len()));
    // SAFETY: the range lies inside the mapping (checked by the caller), which `iov` keeps alive
    // for this whole function. The bytes are shared with the application, which by the API
    // contract does not touch a buffer while its I/O is in flight; if it does, only the data of
    // this I/O is affected (a write's checksum then fails and it completes with an error).
    let buf = unsafe { shared_slice(&iov, offset, len) };
    let outcome = if read {
        handle.read_at(file_offset, buf).await
    } else {
        handle.write_at(file_offset, buf).await
    };
    match outcome {
        Ok(n) => {
            if !read {
                file.resolver.written(file.inode, file_offset + n as u64);
            }
            Cqe { result: n as i64, userdata }
        }
        Err(error) => {
            tracing::debug!("usrbio: I/O failed: {error}");
            Cqe { result: -i64::from(error.errno()), userdata }
        }
    }
}

/// One fsync entry: waits for the file's I/O already running (it takes the write side of the
/// handle's lock, so I/O taken after it waits in turn), then makes the written length durable
/// in meta (the data of a completed write is durable on every replica already).
async fn fsync(file: Arc<OpenFile>, userdata: u64) -> Cqe {
    let guard = file.handle.write().await;
    let Some(handle) = guard.as_ref() else {
        return Cqe { result: -i64::from(libc::EBADF), userdata };
    };
    match handle.fsync().await {
        Ok(()) => Cqe { result: 0, userdata },
        Err(error) => {
            tracing::debug!("usrbio: fsync failed: {error}");
            Cqe { result: -i64::from(error.errno()), userdata }
        }
    }
}

/// # Safety
/// `[offset, offset + len)` must lie inside `mapping`, and nothing else in this process may
/// use those bytes while the slice lives.
#[allow(clippy::mut_from_ref)]
unsafe fn shared_slice(mapping: &Mapping, offset: usize, len: usize) -> &mut [u8] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(mapping.as_ptr().add(offset), len) }
}

fn signal(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: 8 bytes from a live buffer to a nonblocking eventfd; EAGAIN (counter saturated)
    // means a wake-up is pending already.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
}

fn clear(fd: &OwnedFd) -> io::Result<()> {
    let mut value = [0u8; 8];
    // SAFETY: 8 bytes into a live buffer from a nonblocking eventfd.
    let n = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr() as *mut libc::c_void, 8) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
