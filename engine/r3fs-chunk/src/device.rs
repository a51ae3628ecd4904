//! The IO edge of the chunk store: a directory of files read and written with direct IO.
//!
//! The store's logic is written against these traits only. Two implementations exist:
//! [`crate::mem::MemDevice`] (in memory, can crash and tear writes deterministically; used by
//! tests and simulators) and, with the `glommio` feature, [`crate::dma::DmaDevice`] (O_DIRECT
//! files through glommio's io_uring reactor, used by the storage daemon).
//!
//! Contract (what the store relies on, and what `MemDevice` enforces):
//! - Every read and write offset and length is a multiple of [`crate::format::UNIT_BYTES`].
//! - A completed `write_at` is visible to later reads; it is durable only after `sync_data` of
//!   the same file completes. Until then a crash may keep any subset of its 512-byte sectors.
//! - Rewriting a sector with identical bytes never damages it, even if the write is torn
//!   (sector writes are atomic: the device guarantees this for its logical block).
//! - `create`/`remove` of a name is durable only after `sync_dir`.
//! - Where [`Device::sync_flushes_device`] says so, `sync_data` of any file also makes durable
//!   every write of any file of the device that completed before the sync began and overwrote
//!   bytes written and synced (by their own file) before, with no size change or hole punched
//!   in between: such an overwrite needs no file-system metadata, only the device's cache
//!   flushed, and the file system flushes it on every `sync_data`.
//! - Futures are `!Send`: a store and its device live on one executor thread.

use std::io;

/// A buffer a device can write from: aligned to [`crate::format::UNIT_BYTES`].
pub trait IoBuf: AsRef<[u8]> + AsMut<[u8]> {}

/// One open file of a device.
#[allow(async_fn_in_trait)] // thread-per-core: these futures are deliberately not Send
pub trait DeviceFile {
    type Buf: IoBuf;
    type ReadBuf: AsRef<[u8]>;

    /// Reads `len` bytes at `offset`; the result is shorter only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// Writes the whole buffer at `offset`.
    async fn write_at(&self, buf: Self::Buf, offset: u64) -> io::Result<()>;
    /// Makes every completed write (and size change) durable.
    async fn sync_data(&self) -> io::Result<()>;
    /// Reserves space for `[offset, offset + len)`, growing the file if needed (fallocate).
    /// Fails with `ENOSPC` when the file system is full.
    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Releases the space of `[offset, offset + len)`; the range reads as zeros afterwards.
    async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    async fn set_len(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
}

/// A directory of files.
#[allow(async_fn_in_trait)] // thread-per-core: these futures are deliberately not Send
pub trait Device {
    type Buf: IoBuf;
    type ReadBuf: AsRef<[u8]>;
    type File: DeviceFile<Buf = Self::Buf, ReadBuf = Self::ReadBuf>;

    /// An aligned buffer of `len` bytes (`len` a multiple of the unit); its contents are
    /// unspecified, so callers write every byte they later write out.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Whether `sync_data` of one file flushes the device for all of them (see the contract
    /// above). `false` is always safe: every file is then synced on its own.
    fn sync_flushes_device(&self) -> bool {
        false
    }
    /// Opens `name` read-write, creating it when `create` (an existing file is kept as is).
    async fn open(&self, name: &str, create: bool) -> io::Result<Self::File>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Names of the regular files in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations and removals of names durable.
    async fn sync_dir(&self) -> io::Result<()>;
}
