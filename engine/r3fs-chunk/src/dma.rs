//! The real device: O_DIRECT files through glommio's io_uring reactor (feature `glommio`).
//!
//! This module is the only place in the crate that names glommio: the chunk store is the storage
//! daemon's disk edge, and keeping the DMA file code next to the format it serves lets the store
//! be tested against the real disk in this crate. Everything else is written against
//! [`crate::device`].
//!
//! [`DmaDevice::open`] refuses a target directory, with a message naming the cause, when
//! - another process (or another store in this one) holds its `LOCK` file (`flock`);
//! - its file system rejects a 4 KiB O_DIRECT write and read-back (tmpfs, some FUSE and network
//!   file systems, or a device whose logical block exceeds 4 KiB);
//! - `RLIMIT_MEMLOCK` is below what the executor's registered IO memory needs (three rings
//!   each register it; without CAP_IPC_LOCK the kernel charges every registration).
//!
//! It also carries the glommio workarounds of PLATFORM.md: files are always opened read-write
//! (`DmaFile::create` is write-only), and the first DMA file opened on the executor thread is the
//! non-empty probe file, so glommio's per-device poll probe does not misjudge the disk from an
//! empty file (which makes every later read fail with EOPNOTSUPP).
//!
//! Must run inside a glommio `LocalExecutor`.

use crate::device::{Device, DeviceFile, IoBuf};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

/// Name of the lock file in a target directory.
pub const LOCK_FILE: &str = "LOCK";
const PROBE_FILE: &str = ".odirect-probe";
const PROBE_BYTES: usize = 4096;
/// glommio refuses to start below this much lockable memory.
const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// glommio registers its IO memory with each of its three rings (main, latency, poll); the
/// kernel charges every registration to RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
const GLOMMIO_RINGS: u64 = 3;

/// How the executor that runs the store was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaDeviceConfig {
    /// The IO memory given to `LocalExecutorBuilder::io_memory` (registered with io_uring).
    pub io_memory_bytes: u64,
}

impl Default for DmaDeviceConfig {
    fn default() -> Self {
        // Fits the 8 MiB RLIMIT_MEMLOCK of common distributions: 3 x 2 MiB + 512 KiB.
        DmaDeviceConfig { io_memory_bytes: 2 << 20 }
    }
}

/// Why a target directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceOpenError {
    #[error(
        "target directory {dir} is in use by another chunk store (flock on {lock} failed: \
         {source}); stop the other storage daemon or pick another directory"
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the file system holding {dir} does not support O_DIRECT with 4 KiB alignment ({detail}); \
         put the target on a local disk file system such as ext4 or xfs"
    )]
    DirectIoUnsupported { dir: PathBuf, detail: String },
    #[error(
        "RLIMIT_MEMLOCK is {limit_bytes} bytes but the executor's registered IO memory needs \
         {needed_bytes} bytes ({rings} rings x {io_memory_bytes} bytes + {min_bytes} bytes); \
         raise the limit (ulimit -l / LimitMEMLOCK=) or lower io_memory_bytes"
    )]
    MemlockTooLow {
        limit_bytes: u64,
        needed_bytes: u64,
        rings: u64,
        io_memory_bytes: u64,
        min_bytes: u64,
    },
    #[error("I/O error while {op} in {dir}: {source}")]
    Io {
        op: &'static str,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Lockable memory an executor with `io_memory_bytes` of registered IO memory needs.
pub fn memlock_needed_bytes(io_memory_bytes: u64) -> u64 {
    GLOMMIO_RINGS * io_memory_bytes + GLOMMIO_MEMLOCK_MIN_BYTES
}

/// Checks RLIMIT_MEMLOCK against what the executor locks: glommio's own minimum always, and the
/// registered IO memory unless the process has CAP_IPC_LOCK (then the kernel does not charge
/// registrations to the limit).
pub fn check_memlock(io_memory_bytes: u64) -> Result<(), DeviceOpenError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        return Err(DeviceOpenError::Io {
            op: "reading RLIMIT_MEMLOCK",
            dir: PathBuf::new(),
            source: io::Error::last_os_error(),
        });
    }
    let limit_bytes = if limit.rlim_cur == libc::RLIM_INFINITY { u64::MAX } else { limit.rlim_cur };
    check_memlock_against(limit_bytes, io_memory_bytes, has_ipc_lock_capability())
}

/// The decision of [`check_memlock`], for a given limit and capability.
pub fn check_memlock_against(
    limit_bytes: u64,
    io_memory_bytes: u64,
    ipc_lock: bool,
) -> Result<(), DeviceOpenError> {
    let needed =
        if ipc_lock { GLOMMIO_MEMLOCK_MIN_BYTES } else { memlock_needed_bytes(io_memory_bytes) };
    if limit_bytes < needed {
        return Err(DeviceOpenError::MemlockTooLow {
            limit_bytes,
            needed_bytes: needed,
            rings: if ipc_lock { 0 } else { GLOMMIO_RINGS },
            io_memory_bytes,
            min_bytes: GLOMMIO_MEMLOCK_MIN_BYTES,
        });
    }
    Ok(())
}

/// Whether the effective capability set holds CAP_IPC_LOCK (bit 14 of CapEff).
fn has_ipc_lock_capability() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// A target directory whose files are read and written with O_DIRECT through io_uring.
#[derive(Debug)]
pub struct DmaDevice {
    dir: PathBuf,
    /// The directory's file system flushes the device cache on every `fdatasync` (ext4, XFS).
    flushes_device: bool,
    /// Held for the device's lifetime: the flock is the ownership of the target.
    _lock: File,
}

impl DmaDevice {
    /// Checks, locks and probes `dir` (created if missing). Call on the executor thread that
    /// will run the store, before opening any other DMA file on it.
    pub async fn open(dir: &Path, config: &DmaDeviceConfig) -> Result<DmaDevice, DeviceOpenError> {
        let io_err = |op: &'static str| {
            let dir = dir.to_path_buf();
            move |source: io::Error| DeviceOpenError::Io { op, dir, source }
        };
        check_memlock(config.io_memory_bytes)?;
        std::fs::create_dir_all(dir).map_err(io_err("creating the target directory"))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("opening the lock file"))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DeviceOpenError::Locked {
                dir: dir.to_path_buf(),
                lock: lock_path,
                source: io::Error::last_os_error(),
            });
        }
        probe_direct_io(dir)?;
        // The glommio workaround: the thread's first DMA file is non-empty.
        let probe = dir.join(PROBE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&probe)
            .await
            .map_err(|e| io_err("opening the probe file")(e.into()))?;
        let read = file
            .read_at_aligned(0, PROBE_BYTES)
            .await
            .map_err(|e| io_err("reading the probe file through io_uring")(e.into()))?;
        if read.len() != PROBE_BYTES {
            return Err(DeviceOpenError::DirectIoUnsupported {
                dir: dir.to_path_buf(),
                detail: format!("io_uring read back {} of {PROBE_BYTES} bytes", read.len()),
            });
        }
        drop(read);
        file.close().await.map_err(|e| io_err("closing the probe file")(e.into()))?;
        let flushes_device = fs_flushes_device_on_sync(&lock);
        Ok(DmaDevice { dir: dir.to_path_buf(), flushes_device, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Writes and reads back 4 KiB with O_DIRECT using plain syscalls (glommio silently falls back
/// to buffered IO on tmpfs, so it cannot be the judge).
fn probe_direct_io(dir: &Path) -> Result<(), DeviceOpenError> {
    let unsupported =
        |detail: String| DeviceOpenError::DirectIoUnsupported { dir: dir.to_path_buf(), detail };
    // The probe file is kept between opens (never truncated or removed): a later probe then
    // overwrites a block the file system already allocated, so a store reopened on a full disk
    // still passes (reads and removals must keep working there).
    let path = dir.join(PROBE_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| unsupported(format!("open with O_DIRECT: {e}")))?;
    // An aligned window inside a Vec: no unsafe allocation needed.
    let mut backing = vec![0u8; 2 * PROBE_BYTES];
    let skew = backing.as_ptr().align_offset(PROBE_BYTES);
    let window = &mut backing[skew..skew + PROBE_BYTES];
    for (i, byte) in window.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    file.write_all_at(window, 0).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            // O_DIRECT was accepted; the file system has no block for the probe.
            DeviceOpenError::Io {
                op: "probing O_DIRECT (disk full)",
                dir: dir.to_path_buf(),
                source: e,
            }
        } else {
            unsupported(format!("4 KiB aligned O_DIRECT write: {e}"))
        }
    })?;
    window.fill(0);
    file.read_exact_at(window, 0)
        .map_err(|e| unsupported(format!("4 KiB aligned O_DIRECT read: {e}")))?;
    if window.iter().enumerate().any(|(i, b)| *b != (i % 251) as u8) {
        return Err(unsupported("O_DIRECT read back different bytes".into()));
    }
    file.sync_all().map_err(|e| DeviceOpenError::Io {
        op: "syncing the probe file",
        dir: dir.to_path_buf(),
        source: e,
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Device buffers and the per-thread buffer pool
//
// glommio writes only its own `DmaBuffer` and frees one it was given by value when the write
// completes, so an owned buffer cannot be reused: every large write faulted in and zeroed fresh
// pages (`clear_page_erms` was most of the storage shard's CPU while 4 MiB writes streamed in).
// Large buffers are therefore `Rc<DmaBuffer>`s written with `DmaFile::write_rc_at`: once the write
// completes and every other holder is gone, the buffer goes back to this thread's pool.
//
// The same pooled memory carries network payloads ([`PayloadBuf`]): the storage daemon receives
// a payload from the socket straight into one, shares it (forwarding, checksums) through
// [`SharedPayload`], and when the chunk store asks for the buffer to write that payload from,
// [`adopting`] hands it the payload's own memory instead of a fresh buffer to copy into.

/// Buffers at least this large come from the pool; smaller ones from glommio's registered arena
/// (a slab: no page faults, and registered buffers are written with fixed-buffer IO).
pub const POOLED_BYTES_MIN: usize = 64 << 10;

/// Free buffers a thread keeps for reuse, in bytes (buffers in use are bounded by their users:
/// the daemon's per-connection windows and the store's writes in flight). Released buffers
/// beyond it are freed, the least recently released first.
pub const BUF_POOL_BYTES_MAX: usize = 64 << 20;

const _: () =
    assert!(POOLED_BYTES_MIN.is_multiple_of(UNIT_ALIGN) && POOLED_BYTES_MIN <= BUF_POOL_BYTES_MAX);

/// Alignment and size granule of every buffer: the O_DIRECT unit.
const UNIT_ALIGN: usize = 4096;

/// Counters of one thread's pool (monotonic except `free_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufPoolStats {
    /// Pooled-size buffers handed out from the free list.
    pub reused: u64,
    /// Pooled-size buffers that had to be allocated (and zeroed) because none of that size was free.
    pub allocated: u64,
    /// Released buffers freed because the free list was full (or the buffer alone exceeded it).
    pub freed: u64,
    /// Device buffers that were a received payload's own memory (no copy).
    pub adopted: u64,
    /// Bytes currently on the free list (at most [`BUF_POOL_BYTES_MAX`]).
    pub free_bytes: usize,
}

struct BufPool {
    /// Free buffers of exact sizes, least recently released first.
    free: Vec<DmaBuffer>,
    free_bytes: usize,
    free_bytes_max: usize,
    /// Payloads shared as [`SharedPayload`], by the address of their first byte: how
    /// [`adopting`] recognises a payload from its bytes.
    shared: HashMap<usize, Weak<Slot>>,
    /// The payload [`adopting`] offers to the next `alloc_buf` of its size.
    offered: Option<Rc<Slot>>,
    stats: BufPoolStats,
}

impl BufPool {
    fn new() -> BufPool {
        BufPool {
            free: Vec::new(),
            free_bytes: 0,
            free_bytes_max: BUF_POOL_BYTES_MAX,
            shared: HashMap::new(),
            offered: None,
            stats: BufPoolStats { reused: 0, allocated: 0, freed: 0, adopted: 0, free_bytes: 0 },
        }
    }

    fn take(&mut self, size: usize) -> Option<DmaBuffer> {
        let index = self.free.iter().rposition(|b| b.len() == size)?;
        let buf = self.free.remove(index);
        self.free_bytes -= size;
        self.stats.reused += 1;
        Some(buf)
    }

    fn put(&mut self, buf: DmaBuffer) {
        let size = buf.len();
        if size > self.free_bytes_max {
            self.stats.freed += 1;
            return;
        }
        while self.free_bytes + size > self.free_bytes_max {
            let oldest = self.free.remove(0);
            self.free_bytes -= oldest.len();
            self.stats.freed += 1;
        }
        self.free_bytes += size;
        self.free.push(buf);
    }
}

thread_local! {
    static POOL: RefCell<BufPool> = RefCell::new(BufPool::new());
}

/// This thread's pool counters.
pub fn buf_pool_stats() -> BufPoolStats {
    POOL.with(|pool| {
        let pool = pool.borrow();
        BufPoolStats { free_bytes: pool.free_bytes, ..pool.stats }
    })
}

/// Sets this thread's free-list bound (the default is [`BUF_POOL_BYTES_MAX`]); frees the excess.
pub fn set_buf_pool_bytes_max(bytes_max: usize) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.free_bytes_max = bytes_max;
        while pool.free_bytes > bytes_max {
            let oldest = pool.free.remove(0);
            pool.free_bytes -= oldest.len();
            pool.stats.freed += 1;
        }
    });
}

/// A pooled buffer of exactly `size` bytes (a multiple of the unit, at least one unit):
/// recycled when one of that size is free, else newly allocated and zeroed once so every byte
/// is initialised (recycled buffers keep earlier bytes, which the `Device` contract allows).
fn pooled_buffer(size: usize) -> DmaBuffer {
    debug_assert!(size >= UNIT_ALIGN && size.is_multiple_of(UNIT_ALIGN));
    if let Ok(Some(buf)) = POOL.try_with(|pool| pool.borrow_mut().take(size)) {
        return buf;
    }
    let _ = POOL.try_with(|pool| pool.borrow_mut().stats.allocated += 1);
    // The global (heap) variant: glommio's per-executor one hands out its registered arena for
    // small sizes, which must not be kept in a pool (nor freed off the executor's thread).
    let mut buf = glommio::allocate_dma_buffer_global(size);
    buf.as_bytes_mut().fill(0);
    buf
}

/// One pooled buffer shared by its users (a payload's views, a device buffer, a write in
/// flight); returned to the pool when the last one lets go.
#[derive(Debug)]
struct Slot {
    /// `Rc` because glommio's `write_rc_at` keeps a reference until the kernel is done with the
    /// memory, even when the write's future is dropped first.
    dma: ManuallyDrop<Rc<DmaBuffer>>,
    /// Length of the payload in it while shared as a [`SharedPayload`] (0: not shared).
    shared_len: Cell<usize>,
}

impl Slot {
    fn new(size: usize) -> Rc<Slot> {
        Rc::new(Slot {
            dma: ManuallyDrop::new(Rc::new(pooled_buffer(size))),
            shared_len: Cell::new(0),
        })
    }

    fn ptr(&self) -> *mut u8 {
        // glommio's heap storage hands out the pointer of its own allocation (a raw `NonNull`),
        // so writing through it is allowed; every access below stays within `len()`.
        self.dma.as_ptr().cast_mut()
    }

    fn len(&self) -> usize {
        self.dma.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `dma` is not used afterwards.
        let dma = unsafe { ManuallyDrop::take(&mut self.dma) };
        let address = dma.as_ptr() as usize;
        let shared = self.shared_len.get() != 0;
        let returned = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if shared {
                pool.shared.remove(&address);
            }
            // A write whose future was dropped may still hold the buffer (the kernel may still
            // read it): then glommio frees it when that IO completes, and it is not reused.
            match Rc::try_unwrap(dma) {
                Ok(buf) if buf.len() >= POOLED_BYTES_MIN => pool.put(buf),
                Ok(small) => drop(small),
                Err(still_used) => drop(still_used),
            }
        });
        // The thread is exiting (its pool is gone): `dma` was moved into the closure and dropped.
        let _ = returned;
    }
}

/// A buffer the device writes from: aligned to the unit; contents unspecified when allocated.
#[derive(Debug)]
pub struct DmaBuf(BufKind);

#[derive(Debug)]
enum BufKind {
    /// Small: from glommio's registered arena, written (and freed) by value.
    Arena(DmaBuffer),
    /// Large: pooled, written with `write_rc_at` and recycled afterwards.
    Pooled(Rc<Slot>),
}

impl DmaBuf {
    /// Whether this buffer is a received payload's own memory.
    pub fn is_adopted(&self) -> bool {
        matches!(&self.0, BufKind::Pooled(slot) if slot.shared_len.get() != 0)
    }
}

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            BufKind::Arena(buf) => buf.as_bytes(),
            // SAFETY: `len()` initialised bytes (zeroed when allocated) live at `ptr()` for as
            // long as the slot; nothing writes the ones a shared payload covers.
            BufKind::Pooled(slot) => unsafe { std::slice::from_raw_parts(slot.ptr(), slot.len()) },
        }
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            BufKind::Arena(buf) => buf.as_bytes_mut(),
            // SAFETY: as above. A buffer allocated by `alloc_buf` is this `DmaBuf`'s alone. An
            // adopted payload's views read its first `shared_len` bytes meanwhile: the chunk
            // store writes only the unit padding after them (`Device::alloc_buf` callers write
            // the bytes they write out, and the store writes a payload's bytes out as they are;
            // its per-unit checksums, taken after the padding, would catch anything else).
            BufKind::Pooled(slot) => unsafe {
                std::slice::from_raw_parts_mut(slot.ptr(), slot.len())
            },
        }
    }
}

impl IoBuf for DmaBuf {}

/// A payload buffer filled from the network, exclusively owned until [`PayloadBuf::share`].
#[derive(Debug)]
pub struct PayloadBuf {
    slot: Rc<Slot>,
    len: usize,
}

impl PayloadBuf {
    /// `len` bytes of pooled memory (padded to whole units): contents unspecified (a previous
    /// payload's bytes, or zeros); the caller overwrites all `len` before sharing.
    pub fn new(len: usize) -> PayloadBuf {
        let size = len.max(1).div_ceil(UNIT_ALIGN) * UNIT_ALIGN;
        PayloadBuf { slot: Slot::new(size), len }
    }

    /// Shares the payload read-only. While any view lives, [`adopting`] recognises its bytes.
    pub fn share(self) -> SharedPayload {
        let PayloadBuf { slot, len } = self;
        // Only pooled sizes can be adopted (smaller device buffers come from the arena).
        if len > 0 && slot.len() >= POOLED_BYTES_MIN {
            slot.shared_len.set(len);
            let _ = POOL.try_with(|pool| {
                pool.borrow_mut().shared.insert(slot.ptr() as usize, Rc::downgrade(&slot));
            });
        }
        SharedPayload { slot: ManuallyDrop::new(slot), len, thread: std::thread::current().id() }
    }
}

impl AsRef<[u8]> for PayloadBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= slot.len()` initialised bytes at `ptr()`, alive with the slot.
        unsafe { std::slice::from_raw_parts(self.slot.ptr(), self.len) }
    }
}

impl AsMut<[u8]> for PayloadBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; before `share` no other handle to the slot exists (the slot's `Rc`
        // is not cloned until then), so the access is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.slot.ptr(), self.len) }
    }
}

/// A received payload shared read-only, e.g. as the owner of a `bytes::Bytes`
/// (`Bytes::from_owner`): `Send + Sync` as such owners must be, though it belongs to the thread
/// that made it. Dropped on another thread, it leaks its buffer rather than touch that thread's
/// reference counts or pool (the storage daemon never moves payloads between shards).
#[derive(Debug)]
pub struct SharedPayload {
    slot: ManuallyDrop<Rc<Slot>>,
    len: usize,
    thread: std::thread::ThreadId,
}

// SAFETY: other threads only read the payload's bytes (immutable while shared) and the slot's
// plain fields; the `Rc` counts and the pool are touched only on `thread` (see `Drop`).
unsafe impl Send for SharedPayload {}
// SAFETY: `&SharedPayload` only reads the bytes.
unsafe impl Sync for SharedPayload {}

impl AsRef<[u8]> for SharedPayload {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= slot.len()` initialised bytes, alive while the slot is; while shared
        // nothing writes them (the store writes only the padding after them).
        unsafe { std::slice::from_raw_parts(self.slot.ptr(), self.len) }
    }
}

impl Drop for SharedPayload {
    fn drop(&mut self) {
        if std::thread::current().id() == self.thread {
            // SAFETY: taken once, here.
            drop(unsafe { ManuallyDrop::take(&mut self.slot) });
        }
        // Else: leaked (see the type's comment).
    }
}

/// Runs `alloc`, which asks this thread's [`DmaDevice`] for one buffer (e.g. through
/// `ChunkStore::alloc_buf(data.len())`); when `data` is exactly the bytes of a live
/// [`SharedPayload`] of this thread, that buffer is the payload's own memory and the result says
/// `true`: the caller must not copy `data` into it (its bytes already are `data`).
pub fn adopting<R>(data: &[u8], alloc: impl FnOnce() -> R) -> (R, bool) {
    // Every `Rc<Slot>` is moved out of the pool's borrow before it can drop: a slot's drop
    // borrows the pool itself.
    let found = POOL
        .try_with(|pool| {
            pool.borrow().shared.get(&(data.as_ptr() as usize)).and_then(Weak::upgrade)
        })
        .ok()
        .flatten();
    let Some(slot) = found.filter(|s| !data.is_empty() && s.shared_len.get() == data.len()) else {
        return (alloc(), false);
    };
    let stale = POOL.with(|pool| pool.borrow_mut().offered.replace(slot));
    drop(stale);
    let result = alloc();
    let unused = POOL.with(|pool| pool.borrow_mut().offered.take());
    (result, unused.is_none())
}

/// The result of a DMA read.
#[derive(Debug)]
pub struct DmaRead(ReadResult);

impl AsRef<[u8]> for DmaRead {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Whether the file system holding `file` is one whose `fdatasync` always ends with a flush of
/// the whole block device: ext4 (`ext4_sync_file` issues `blkdev_issue_flush` itself, or its
/// journal commit does) and XFS (`xfs_file_fsync`: a log force with a pre-flush, or an explicit
/// flush). An overwrite of written extents needs no metadata, so one `fdatasync` of any file
/// there makes it durable. Other file systems (btrfs, network or FUSE ones): `false`.
fn fs_flushes_device_on_sync(file: &File) -> bool {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs fills the struct we pass, for a descriptor we own.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialised by the successful call above.
    #[allow(clippy::unnecessary_cast)] // `f_type` is i64 on x86_64, narrower elsewhere
    let magic = unsafe { stat.assume_init() }.f_type as i64;
    magic == EXT4_SUPER_MAGIC || magic == XFS_SUPER_MAGIC
}

/// One O_DIRECT file of a [`DmaDevice`].
#[derive(Debug)]
pub struct DmaDeviceFile {
    file: DmaFile,
}

fn glommio_io<T>(e: glommio::GlommioError<T>) -> io::Error {
    e.into()
}

impl DeviceFile for DmaDeviceFile {
    type Buf = DmaBuf;
    type ReadBuf = DmaRead;

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<DmaRead> {
        self.file.read_at_aligned(offset, len).await.map(DmaRead).map_err(glommio_io)
    }

    async fn write_at(&self, buf: DmaBuf, offset: u64) -> io::Result<()> {
        let len = buf.as_ref().len();
        let written = match buf.0 {
            BufKind::Arena(buf) => self.file.write_at(buf, offset).await,
            BufKind::Pooled(slot) => self.file.write_rc_at(Rc::clone(&slot.dma), offset).await,
        }
        .map_err(glommio_io)?;
        if written != len {
            // Direct writes into allocated space are not short unless the disk is full.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short direct write: {written} of {len} bytes at {offset}"),
            ));
        }
        Ok(())
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(glommio_io)
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        // glommio only preallocates from offset 0, which would silently re-back punched free
        // blocks; fallocate is a metadata operation, so a direct call is short.
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, offset, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.file.deallocate(offset, len).await.map_err(glommio_io)
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(glommio_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_io)
    }
}

impl Device for DmaDevice {
    type Buf = DmaBuf;
    type ReadBuf = DmaRead;
    type File = DmaDeviceFile;

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        if len >= POOLED_BYTES_MIN {
            let offered = POOL.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let fits = pool.offered.as_ref().is_some_and(|slot| slot.len() == len);
                let slot = if fits { pool.offered.take() } else { None };
                if slot.is_some() {
                    pool.stats.adopted += 1;
                }
                slot
            });
            if let Ok(Some(slot)) = offered {
                return DmaBuf(BufKind::Pooled(slot));
            }
            return DmaBuf(BufKind::Pooled(Slot::new(len)));
        }
        DmaBuf(BufKind::Arena(glommio::allocate_dma_buffer(len)))
    }

    fn sync_flushes_device(&self) -> bool {
        self.flushes_device
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<DmaDeviceFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(self.dir.join(name))
            .await
            .map_err(glommio_io)?;
        Ok(DmaDeviceFile { file })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.dir.join(name)).await.map_err(glommio_io)
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&self.dir).await.map_err(glommio_io)?;
        dir.sync().await.map_err(glommio_io)?;
        dir.close().await.map_err(glommio_io)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    const SIZE: usize = 256 << 10;

    fn free_bytes() -> usize {
        buf_pool_stats().free_bytes
    }

    #[test]
    fn released_buffers_are_reused_and_the_free_list_stays_within_its_bound() {
        // Each test runs on its own thread, so it has its own pool.
        let first = PayloadBuf::new(SIZE);
        let ptr = first.as_ref().as_ptr();
        drop(first);
        assert_eq!(free_bytes(), SIZE);
        let again = PayloadBuf::new(SIZE - 100); // same unit-padded size
        assert_eq!(again.as_ref().as_ptr(), ptr, "the released buffer is handed out again");
        assert_eq!(again.as_ref().len(), SIZE - 100);
        assert_eq!(buf_pool_stats().reused, 1);
        drop(again);

        set_buf_pool_bytes_max(4 * SIZE);
        let held: Vec<PayloadBuf> = (0..10).map(|_| PayloadBuf::new(SIZE)).collect();
        drop(held);
        assert_eq!(free_bytes(), 4 * SIZE, "10 released, 4 kept");
        assert_eq!(buf_pool_stats().freed, 6);

        // A buffer larger than the whole bound still works; it is freed, not kept.
        let mut big = PayloadBuf::new(8 * SIZE);
        big.as_mut().fill(7);
        assert!(big.as_ref().iter().all(|b| *b == 7));
        drop(big);
        assert_eq!(free_bytes(), 4 * SIZE);
        assert_eq!(buf_pool_stats().freed, 7);

        // Lowering the bound frees the excess at once.
        set_buf_pool_bytes_max(SIZE);
        assert_eq!(free_bytes(), SIZE);
        // Small buffers (below the pooled size) are never kept.
        drop(PayloadBuf::new(4096));
        assert_eq!(free_bytes(), SIZE);
    }

    #[test]
    fn a_fresh_buffer_is_initialised_and_a_recycled_one_keeps_old_bytes() {
        let fresh = PayloadBuf::new(SIZE);
        assert!(fresh.as_ref().iter().all(|b| *b == 0));
        let mut fresh = fresh;
        fresh.as_mut().fill(0xAB);
        drop(fresh);
        // Not zeroed again: a payload buffer is overwritten by its user before anyone reads it.
        let recycled = PayloadBuf::new(SIZE);
        assert!(recycled.as_ref().iter().all(|b| *b == 0xAB));
    }

    #[test]
    fn a_shared_payload_dropped_on_another_thread_is_leaked_not_recycled() {
        let mut payload = PayloadBuf::new(SIZE);
        payload.as_mut().fill(1);
        let shared = payload.share();
        std::thread::spawn(move || {
            assert_eq!(shared.as_ref().len(), SIZE);
            drop(shared);
        })
        .join()
        .unwrap();
        assert_eq!(free_bytes(), 0, "the other thread touched neither pool");
    }

    #[test]
    fn an_offer_nobody_takes_is_withdrawn() {
        let mut payload = PayloadBuf::new(SIZE);
        payload.as_mut().fill(2);
        let shared = payload.share();
        // The closure asks for no device buffer: not adopted, and the offer does not linger.
        let ((), adopted) = adopting(shared.as_ref(), || ());
        assert!(!adopted);
        assert!(POOL.with(|pool| pool.borrow().offered.is_none()));
        drop(shared);
        assert_eq!(free_bytes(), SIZE, "the payload's buffer went back to the pool");
        assert!(POOL.with(|pool| pool.borrow().shared.is_empty()));
    }

    fn run_glommio<T: Send + 'static>(future: impl Future<Output = T> + 'static) -> T {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(DmaDeviceConfig::default().io_memory_bytes as usize)
            .make()
            .unwrap();
        executor.run(future)
    }

    #[test]
    fn a_shared_payload_is_written_from_its_own_memory_and_recycled_after_the_write() {
        let dir = tempfile::Builder::new().prefix("r3fs-dma-pool-").tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run_glommio(async move {
            let device = DmaDevice::open(&path, &DmaDeviceConfig::default()).await.unwrap();
            let file = device.open("data", true).await.unwrap();
            let len = SIZE - 1000; // not a whole number of units: the padding is the writer's
            let mut payload = PayloadBuf::new(len);
            for (i, b) in payload.as_mut().iter_mut().enumerate() {
                *b = (i % 253) as u8;
            }
            let shared = payload.share();
            let expected = shared.as_ref().to_vec();
            let (mut buf, adopted) =
                adopting(shared.as_ref(), || device.alloc_buf(len.div_ceil(4096) * 4096));
            assert!(adopted);
            assert!(buf.is_adopted());
            assert_eq!(buf.as_ref().as_ptr(), shared.as_ref().as_ptr(), "no copy");
            assert_eq!(buf_pool_stats().adopted, 1);
            buf.as_mut()[len..].fill(0);
            file.write_at(buf, 0).await.unwrap();
            assert_eq!(shared.as_ref(), &expected[..], "the payload's view is unchanged");
            assert_eq!(free_bytes(), 0, "still shared");
            drop(shared);
            assert_eq!(
                free_bytes(),
                SIZE,
                "back in the pool once the write and the views are done"
            );
            let read = file.read_at(0, SIZE).await.unwrap();
            assert_eq!(&read.as_ref()[..len], &expected[..]);
            assert!(read.as_ref()[len..].iter().all(|b| *b == 0));

            // Bytes that are not a whole shared payload are copied, not adopted.
            let mut payload = PayloadBuf::new(SIZE);
            payload.as_mut().fill(3);
            let shared = payload.share();
            let (buf, adopted) =
                adopting(&shared.as_ref()[4096..], || device.alloc_buf(SIZE - 4096));
            assert!(!adopted && !buf.is_adopted());
            let (_, adopted) = adopting(&shared.as_ref()[..4096], || device.alloc_buf(4096));
            assert!(!adopted, "a prefix is not the payload");
            // A device buffer of another size than the payload's is not the payload either.
            let (buf, adopted) = adopting(shared.as_ref(), || device.alloc_buf(2 * SIZE));
            assert!(!adopted && !buf.is_adopted());
            // Store-sized buffers from alloc_buf are pooled too, and recycled after their write.
            drop((buf, shared));
            let before = buf_pool_stats();
            let mut buf = device.alloc_buf(SIZE);
            buf.as_mut().fill(9);
            file.write_at(buf, 0).await.unwrap();
            let after = buf_pool_stats();
            assert_eq!(after.reused, before.reused + 1);
            assert_eq!(after.free_bytes, before.free_bytes);
            // Small buffers come from glommio's registered arena.
            let small = device.alloc_buf(4096);
            file.write_at(small, 0).await.unwrap();
            file.sync_data().await.unwrap();
        });
    }
}
