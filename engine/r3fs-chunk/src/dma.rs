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
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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

/// A DMA buffer (aligned, possibly registered with io_uring).
#[derive(Debug)]
pub struct DmaBuf(DmaBuffer);

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

impl IoBuf for DmaBuf {}

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
        let len = buf.0.len();
        let written = self.file.write_at(buf.0, offset).await.map_err(glommio_io)?;
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
        DmaBuf(glommio::allocate_dma_buffer(len))
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
