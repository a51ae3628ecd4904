//! IO engines: how a job's IOs reach the file. Shaped after fio's engine interface so that
//! synchronous engines (psync) and rings (io_uring, the r3fs native ring) share one job loop:
//! `queue` either completes the IO at once or leaves it pending, `commit` hands pending IOs to
//! the kernel or daemon, `reap` waits for completions.
//!
//! The engine owns the IO buffers (`slots` of `slot_bytes`, 4 KiB aligned for O_DIRECT) because
//! a ring engine must place them in memory it shares with the serving process.

mod psync;
mod ring;
mod uring;

use crate::options::{EngineKind, JobOptions};
use anyhow::{Context, Result};
use std::alloc::Layout;
use std::io;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Read = 0,
    Write = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Read, Direction::Write];
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One IO: `len` bytes between buffer `slot` and `offset` of file `file`.
#[derive(Clone, Copy, Debug)]
pub struct IoRequest {
    pub slot: usize,
    pub file: usize,
    pub offset: u64,
    pub len: usize,
    pub direction: Direction,
}

/// A finished IO: bytes transferred, or the errno.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub slot: usize,
    pub result: Result<usize, i32>,
}

/// What `queue` did with an IO.
#[derive(Debug)]
pub enum Queued {
    /// Waits for `commit` (then `reap`).
    Pending,
    /// Done already (synchronous engines): bytes transferred or errno.
    Done(Result<usize, i32>),
}

pub trait Engine {
    fn name(&self) -> &'static str;
    /// Opens a file (already created and sized by the job); returns its index for [`IoRequest`].
    fn open(&mut self, path: &Path, direct: bool) -> Result<usize>;
    fn buffer(&mut self, slot: usize) -> &mut [u8];
    fn queue(&mut self, request: IoRequest) -> io::Result<Queued>;
    /// Submits every pending IO.
    fn commit(&mut self) -> io::Result<()>;
    /// Waits until at least `min` IOs completed (fewer only if fewer are in flight).
    fn reap(&mut self, min: usize, completions: &mut Vec<Completion>) -> io::Result<()>;
    /// Makes a file's written data durable (fio `end_fsync`).
    fn sync(&mut self, file: usize) -> io::Result<()>;
    /// True if `queue` always completes IOs (fio reports no submission latency for these).
    fn is_synchronous(&self) -> bool;
}

/// Creates the engine a job asked for, with `slots` buffers of `slot_bytes`.
pub fn create(job: &JobOptions, slots: usize, slot_bytes: usize) -> Result<Box<dyn Engine>> {
    match job.ioengine {
        EngineKind::Psync => Ok(Box::new(psync::Psync::new(slots, slot_bytes))),
        EngineKind::IoUring => Ok(Box::new(uring::Uring::new(slots, slot_bytes, job.iodepth)?)),
        EngineKind::R3fsRing => {
            let mountpoint =
                job.mountpoint.as_deref().context("ioengine=r3fs-ring needs mountpoint")?;
            Ok(Box::new(ring::Ring::new(mountpoint, slots, slot_bytes, job.ior_depth)?))
        }
    }
}

/// IO buffers, aligned for O_DIRECT.
#[derive(Debug)]
pub struct AlignedBuffers {
    pointer: *mut u8,
    layout: Layout,
    slot_bytes: usize,
}

// SAFETY: the buffers are plain memory owned by this value; it is moved to the job thread
// before use and never shared.
unsafe impl Send for AlignedBuffers {}

pub const BUFFER_ALIGN_BYTES: usize = 4096;

impl AlignedBuffers {
    pub fn new(slots: usize, slot_bytes: usize) -> Self {
        let total = slots.checked_mul(slot_bytes).expect("buffer size overflows").max(1);
        let layout =
            Layout::from_size_align(total, BUFFER_ALIGN_BYTES).expect("valid buffer layout");
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        if pointer.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuffers { pointer, layout, slot_bytes }
    }

    pub fn slot(&mut self, slot: usize) -> &mut [u8] {
        assert!((slot + 1) * self.slot_bytes <= self.layout.size(), "slot {slot} out of range");
        // SAFETY: in bounds (asserted), and the &mut self borrow makes it unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pointer.add(slot * self.slot_bytes),
                self.slot_bytes,
            )
        }
    }

    /// The address of a slot, for engines that hand it to the kernel.
    pub fn slot_pointer(&mut self, slot: usize) -> *mut u8 {
        self.slot(slot).as_mut_ptr()
    }
}

impl Drop for AlignedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.pointer, self.layout) }
    }
}

pub(crate) fn open_file(path: &Path, direct: bool) -> Result<std::fs::File> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path).with_context(|| {
        format!("open {}{}", path.display(), if direct { " with O_DIRECT" } else { "" })
    })
}
