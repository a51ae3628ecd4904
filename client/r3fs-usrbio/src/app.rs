//! The application side: a [`Session`] with the ring server of one mount, [`Iov`] buffers,
//! [`Ior`] rings, and registered files.
//!
//! Use: `Session::shared(mount)` (one connection per server per process), `create_iov(bytes)`,
//! `create_ior(entries)`, `register_fd(fd)` for files opened on the mount, then per batch
//! `prep_io` ... `submit` and `wait`. An [`Ior`] is used by one thread at a time (`&mut self`);
//! sessions and iovs may be shared between threads.
//!
//! Bounds: at most `entries` I/Os of one ring are prepared, in flight or completed-but-unreaped at
//! once ([`Ior::prep_io`] answers EAGAIN beyond that), so the server can always post every
//! completion without waiting for the application.

use crate::locate::{Errno, socket_path_for};
use crate::proto::{self, Request};
use crate::ring::{self, Cqe, RingView, Sqe};
use crate::shm::Mapping;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, Errno>;

/// One connection to the ring server of a mount. Everything registered through it (iovs, rings,
/// files) lives until deregistered or until the connection closes (the process exits or dies).
#[derive(Debug)]
pub struct Session {
    socket: Mutex<UnixStream>,
    socket_path: PathBuf,
    /// Registered fds of this process → the server's file ids.
    files: Mutex<HashMap<RawFd, u32>>,
    broken: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    /// Connects to the server for `locator` (a path on the mount, or the socket itself).
    pub fn connect(locator: impl AsRef<Path>) -> Result<Arc<Session>> {
        let socket_path = socket_path_for(locator.as_ref())?;
        let socket = UnixStream::connect(&socket_path)?;
        Ok(Arc::new(Session {
            socket: Mutex::new(socket),
            socket_path,
            files: Mutex::new(HashMap::new()),
            broken: AtomicBool::new(false),
        }))
    }

    /// The process-wide session for `locator`'s server (connected on first use, and again after
    /// a connection broke).
    pub fn shared(locator: impl AsRef<Path>) -> Result<Arc<Session>> {
        let socket_path = socket_path_for(locator.as_ref())?;
        Session::shared_by_socket(&socket_path)
    }

    /// The process-wide session of the server whose mount holds the open file `fd`.
    pub fn shared_for_fd(fd: BorrowedFd<'_>) -> Result<Arc<Session>> {
        let stat = crate::shm::fstat(fd)?;
        Session::shared_by_socket(&crate::locate::socket_path_for_dev(stat.st_dev))
    }

    fn shared_by_socket(socket_path: &Path) -> Result<Arc<Session>> {
        static SESSIONS: OnceLock<Mutex<HashMap<PathBuf, Arc<Session>>>> = OnceLock::new();
        let mut sessions = lock(SESSIONS.get_or_init(Default::default));
        if let Some(session) = sessions.get(socket_path)
            && !session.broken.load(Ordering::Relaxed)
        {
            return Ok(session.clone());
        }
        let session = Session::connect(socket_path)?;
        sessions.insert(socket_path.to_path_buf(), session.clone());
        Ok(session)
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// One request and its reply.
    fn call(&self, op: u32, args: [u64; 4], fds: &[RawFd]) -> Result<u64> {
        let mut socket = lock(&self.socket);
        let request = Request { op, args }.encode();
        let outcome = (|| -> std::io::Result<i64> {
            let sent = proto::send_with_fds(socket.as_raw_fd(), &request, fds)?;
            if sent != request.len() {
                // A 40-byte message on a blocking Unix stream socket goes whole or not at all.
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            let mut reply = [0u8; proto::REPLY_BYTES];
            socket.read_exact(&mut reply)?;
            Ok(proto::decode_reply(&reply))
        })();
        match outcome {
            Ok(result) if result >= 0 => Ok(result as u64),
            Ok(result) => Err(Errno(i32::try_from(-result).unwrap_or(libc::EIO))),
            Err(error) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(error.into())
            }
        }
    }

    /// Creates a shared buffer of `size` bytes that I/O of this session's rings can use.
    pub fn create_iov(self: &Arc<Self>, size: usize) -> Result<Iov> {
        let mem = Mapping::create("r3fs-usrbio-iov", size)?;
        let id = self.call(proto::OP_REG_IOV, [size as u64, 0, 0, 0], &[mem.fd().as_raw_fd()])?;
        Ok(Iov { session: self.clone(), id: id as u32, mem })
    }

    /// Creates a ring of `entries` (a power of two, at most [`ring::ENTRIES_MAX`]).
    pub fn create_ior(self: &Arc<Self>, entries: u32) -> Result<Ior> {
        if !ring::entries_valid(entries) {
            return Err(Errno(libc::EINVAL));
        }
        let mem = Mapping::create("r3fs-usrbio-ior", ring::ring_bytes(entries))?;
        // SAFETY: the mapping is page-aligned, ring_bytes(entries) long, and kept in the Ior.
        let ring = unsafe { RingView::new(mem.as_ptr(), entries) };
        ring.init();
        let submit = eventfd()?;
        let complete = eventfd()?;
        let fds = [mem.fd().as_raw_fd(), submit.as_raw_fd(), complete.as_raw_fd()];
        let id = self.call(proto::OP_REG_IOR, [u64::from(entries), 0, 0, 0], &fds)?;
        Ok(Ior {
            session: self.clone(),
            id: id as u32,
            ring,
            _mem: mem,
            submit,
            complete,
            prepared: 0,
            published: 0,
            cq_head: 0,
            outstanding: 0,
        })
    }

    /// Registers an open file of the mount (its access mode decides what I/O it may take).
    /// EEXIST if `fd` is already registered with this session.
    pub fn register_fd(&self, fd: BorrowedFd<'_>) -> Result<()> {
        let raw = fd.as_raw_fd();
        if lock(&self.files).contains_key(&raw) {
            return Err(Errno(libc::EEXIST));
        }
        let id = self.call(proto::OP_REG_FD, [0; 4], &[raw])?;
        lock(&self.files).insert(raw, id as u32);
        Ok(())
    }

    /// Forgets a registered fd; the server finishes its in-flight I/O and closes its handle
    /// (reporting the written length) before this returns. EBADF if it was not registered.
    pub fn deregister_fd(&self, fd: RawFd) -> Result<()> {
        let id = lock(&self.files).remove(&fd).ok_or(Errno(libc::EBADF))?;
        self.call(proto::OP_DEREG_FD, [u64::from(id), 0, 0, 0], &[]).map(|_| ())
    }

    fn file_id(&self, fd: RawFd) -> Option<u32> {
        lock(&self.files).get(&fd).copied()
    }
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer. EAGAIN (counter saturated) means a wake-up is
    // already pending, which is all a signal needs.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
}

fn eventfd_clear(fd: BorrowedFd<'_>) {
    let mut value = [0u8; 8];
    // SAFETY: reads 8 bytes into a live buffer; nonblocking (EAGAIN when already clear).
    unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr() as *mut libc::c_void, 8) };
}

/// A shared buffer. I/O moves data between it and files without further copies in this process.
#[derive(Debug)]
pub struct Iov {
    session: Arc<Session>,
    id: u32,
    mem: Mapping,
}

impl Iov {
    pub fn as_ptr(&self) -> *mut u8 {
        self.mem.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.mem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<()> {
        let end = offset.checked_add(data.len()).ok_or(Errno(libc::EFAULT))?;
        if end > self.len() {
            return Err(Errno(libc::EFAULT));
        }
        // SAFETY: the range is inside the live mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copies the buffer at `offset` into `out`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(out.len()).ok_or(Errno(libc::EFAULT))?;
        if end > self.len() {
            return Err(Errno(libc::EFAULT));
        }
        // SAFETY: the range is inside the live mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }

    /// The whole buffer as a slice, for zero-copy use.
    ///
    /// # Safety
    /// No I/O that reads into the buffer may be in flight while the slice is alive (the server
    /// writes those bytes from another process), and the caller must not create overlapping
    /// mutable slices.
    #[allow(clippy::mut_from_ref)] // shared memory: the contract above replaces the borrow rules
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the caller upholds the contract above; the mapping lives as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }
}

impl Drop for Iov {
    fn drop(&mut self) {
        if let Err(error) =
            self.session.call(proto::OP_DEREG_IOV, [u64::from(self.id), 0, 0, 0], &[])
        {
            tracing::debug!(iov = self.id, "deregistering an iov failed: {error}");
        }
    }
}

/// A submission/completion ring.
#[derive(Debug)]
pub struct Ior {
    session: Arc<Session>,
    id: u32,
    ring: RingView,
    _mem: Mapping,
    submit: OwnedFd,
    complete: OwnedFd,
    /// SQ index one past the last prepared entry.
    prepared: u32,
    /// SQ index one past the last submitted entry.
    published: u32,
    cq_head: u32,
    /// Prepared and not yet reaped.
    outstanding: u32,
}

impl Ior {
    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    /// Prepared, in flight or completed but not reaped.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Prepares one I/O of `len` bytes between `iov[buf_offset..]` and registered file `fd` at
    /// `file_offset` (read: file → buffer). Returns its position in the batch. Errors: EINVAL (zero
    /// length, an iov of another session), EFAULT (buffer outside the iov), EBADF (fd not
    /// registered), EAGAIN (ring full: reap completions first).
    #[allow(clippy::too_many_arguments)] // the shape of 3FS's hf3fs_prep_io, kept for the C ABI
    pub fn prep_io(
        &mut self,
        iov: &Iov,
        read: bool,
        buf_offset: usize,
        fd: RawFd,
        file_offset: u64,
        len: usize,
        userdata: u64,
    ) -> Result<u32> {
        if len == 0 || !Arc::ptr_eq(&iov.session, &self.session) {
            return Err(Errno(libc::EINVAL));
        }
        match buf_offset.checked_add(len) {
            Some(end) if end <= iov.len() => {}
            _ => return Err(Errno(libc::EFAULT)),
        }
        if file_offset.checked_add(len as u64).is_none() {
            return Err(Errno(libc::EINVAL));
        }
        let file_id = self.session.file_id(fd).ok_or(Errno(libc::EBADF))?;
        if self.outstanding >= self.entries() {
            return Err(Errno(libc::EAGAIN));
        }
        let sqe = Sqe {
            userdata,
            file_offset,
            buf_offset: buf_offset as u64,
            len: len as u64,
            iov_id: iov.id,
            file_id,
            opcode: if read { ring::OP_READ } else { ring::OP_WRITE },
            reserved: [0; 7],
        };
        self.ring.write_sqe(self.prepared, &sqe);
        self.prepared = self.prepared.wrapping_add(1);
        self.outstanding += 1;
        Ok(self.prepared.wrapping_sub(self.published) - 1)
    }

    /// Prepares an fsync of registered file `fd`: when it completes (result 0), every write to
    /// the file whose completion was reaped before it was submitted is durable and the file's
    /// length covers it for every client (meta has it) and for `stat` through the mount. It also
    /// waits for the file's I/O already running in the server when it starts; I/O of the same
    /// batch may run before or after it. Errors: EBADF (fd not registered), EAGAIN (ring full).
    pub fn prep_fsync(&mut self, fd: RawFd, userdata: u64) -> Result<u32> {
        let file_id = self.session.file_id(fd).ok_or(Errno(libc::EBADF))?;
        if self.outstanding >= self.entries() {
            return Err(Errno(libc::EAGAIN));
        }
        let sqe = Sqe { userdata, file_id, opcode: ring::OP_FSYNC, ..Sqe::default() };
        self.ring.write_sqe(self.prepared, &sqe);
        self.prepared = self.prepared.wrapping_add(1);
        self.outstanding += 1;
        Ok(self.prepared.wrapping_sub(self.published) - 1)
    }

    /// Hands every prepared I/O to the server; returns how many.
    pub fn submit(&mut self) -> Result<u32> {
        let count = self.prepared.wrapping_sub(self.published);
        if count > 0 {
            self.ring.publish_sq_tail(self.prepared);
            self.published = self.prepared;
            eventfd_signal(self.submit.as_fd());
        }
        Ok(count)
    }

    /// Reaps completions into `out`: returns once at least `min` (clamped to what is in flight
    /// and to `out.len()`) have arrived, or at `timeout` (None: no limit) with what has. Fails
    /// with ECONNRESET if the server went away.
    pub fn wait(
        &mut self,
        out: &mut [Cqe],
        min: usize,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let in_flight = self.published.wrapping_sub(self.prepared.wrapping_sub(self.outstanding));
        let min = min.min(out.len()).min(in_flight as usize);
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut n = 0;
        loop {
            while n < out.len() {
                match self.ring.reap(&mut self.cq_head).map_err(|_| Errno(libc::EPROTO))? {
                    Some(cqe) => {
                        out[n] = cqe;
                        n += 1;
                        self.outstanding -= 1;
                    }
                    None => break,
                }
            }
            if n > 0 && self.ring.sq_pending(self.published) {
                // The server pauses taking entries while the CQ has no room; there is room now.
                eventfd_signal(self.submit.as_fd());
            }
            if n >= min {
                return Ok(n);
            }
            let wait_ms = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(n);
                    }
                    i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
                }
            };
            self.poll_completion(wait_ms)?;
            eventfd_clear(self.complete.as_fd());
        }
    }

    fn poll_completion(&self, wait_ms: i32) -> Result<()> {
        let socket = lock(&self.session.socket).as_raw_fd();
        let mut fds = [
            libc::pollfd { fd: self.complete.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: socket, events: libc::POLLRDHUP, revents: 0 },
        ];
        // SAFETY: fds is a live array of two pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(error.into());
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            self.session.broken.store(true, Ordering::Relaxed);
            return Err(Errno(libc::ECONNRESET));
        }
        Ok(())
    }
}

impl Drop for Ior {
    fn drop(&mut self) {
        if let Err(error) =
            self.session.call(proto::OP_DEREG_IOR, [u64::from(self.id), 0, 0, 0], &[])
        {
            tracing::debug!(ior = self.id, "deregistering a ring failed: {error}");
        }
    }
}
