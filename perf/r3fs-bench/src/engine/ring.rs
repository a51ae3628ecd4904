//! The r3fs native ring (client/r3fs-usrbio): one shared-memory iov holding every buffer slot,
//! one ior of `ior_depth` entries, files registered by fd. Data moves between the iov and the
//! storage connections inside the mount's serving process, with no copy through the kernel.

use super::{Completion, Direction, Engine, IoRequest, Queued, open_file};
use anyhow::{Context, Result, anyhow};
use r3fs_usrbio::{Cqe, Ior, Iov, Session};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;

pub struct Ring {
    session: Arc<Session>,
    iov: Iov,
    ior: Ior,
    files: Vec<File>,
    slot_bytes: usize,
    slots: usize,
    cqes: Vec<Cqe>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("slots", &self.slots)
            .field("entries", &self.ior.entries())
            .finish()
    }
}

fn errno(error: r3fs_usrbio::Errno) -> io::Error {
    io::Error::from_raw_os_error(error.0)
}

impl Ring {
    /// `ior_depth` 0 means `slots`; rounded up to a power of two as the ring requires.
    pub fn new(mountpoint: &Path, slots: usize, slot_bytes: usize, ior_depth: u32) -> Result<Self> {
        let session = Session::shared(mountpoint)
            .map_err(|e| anyhow!("connect to the ring server of {}: {e}", mountpoint.display()))?;
        let bytes = slots.checked_mul(slot_bytes).context("iov size overflows")?;
        let iov =
            session.create_iov(bytes).map_err(|e| anyhow!("create a {bytes}-byte iov: {e}"))?;
        let depth = if ior_depth == 0 { slots as u32 } else { ior_depth };
        // The ring must hold every IO the job keeps in flight.
        let entries = depth.max(slots as u32).next_power_of_two();
        let ior = session
            .create_ior(entries)
            .map_err(|e| anyhow!("create an ior of {entries} entries: {e}"))?;
        let cqes = vec![Cqe::default(); entries as usize];
        Ok(Ring { session, iov, ior, files: Vec::new(), slot_bytes, slots, cqes })
    }
}

impl Engine for Ring {
    fn name(&self) -> &'static str {
        "r3fs-ring"
    }

    fn open(&mut self, path: &Path, direct: bool) -> Result<usize> {
        let file = open_file(path, direct)?;
        self.session
            .register_fd(file.as_fd())
            .map_err(|e| anyhow!("register {} with the ring server: {e}", path.display()))?;
        self.files.push(file);
        Ok(self.files.len() - 1)
    }

    fn buffer(&mut self, slot: usize) -> &mut [u8] {
        assert!(slot < self.slots, "slot {slot} out of range");
        // SAFETY: in bounds of the iov (slots * slot_bytes bytes); the job touches a slot only
        // while no IO on it is in flight, and &mut self keeps the slice unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.iov.as_ptr().add(slot * self.slot_bytes),
                self.slot_bytes,
            )
        }
    }

    fn queue(&mut self, request: IoRequest) -> io::Result<Queued> {
        let fd = self.files[request.file].as_raw_fd();
        let read = request.direction == Direction::Read;
        let buf_offset = request.slot * self.slot_bytes;
        self.ior
            .prep_io(
                &self.iov,
                read,
                buf_offset,
                fd,
                request.offset,
                request.len,
                request.slot as u64,
            )
            .map_err(errno)?;
        Ok(Queued::Pending)
    }

    fn commit(&mut self) -> io::Result<()> {
        self.ior.submit().map(|_| ()).map_err(errno)
    }

    fn reap(&mut self, min: usize, completions: &mut Vec<Completion>) -> io::Result<()> {
        let mut reaped = 0;
        while reaped < min {
            let count = self.ior.wait(&mut self.cqes, min - reaped, None).map_err(errno)?;
            for cqe in &self.cqes[..count] {
                completions.push(Completion {
                    slot: cqe.userdata as usize,
                    result: if cqe.result < 0 {
                        Err(i32::try_from(-cqe.result).unwrap_or(libc::EIO))
                    } else {
                        Ok(cqe.result as usize)
                    },
                });
            }
            reaped += count;
            if count == 0 {
                break; // nothing in flight
            }
        }
        Ok(())
    }

    /// Through the ring (its fsync entry), as an application of the native API would; the job
    /// calls it with nothing in flight.
    fn sync(&mut self, file: usize) -> io::Result<()> {
        const SYNC_USERDATA: u64 = u64::MAX;
        self.ior.prep_fsync(self.files[file].as_raw_fd(), SYNC_USERDATA).map_err(errno)?;
        self.ior.submit().map_err(errno)?;
        let count = self.ior.wait(&mut self.cqes, 1, None).map_err(errno)?;
        let Some(cqe) = self.cqes[..count].first() else {
            return Err(io::Error::other("the ring fsync was lost"));
        };
        if count > 1 || cqe.userdata != SYNC_USERDATA {
            return Err(io::Error::other("a completion arrived during the ring fsync"));
        }
        if cqe.result < 0 {
            let errno = i32::try_from(-cqe.result).unwrap_or(libc::EIO);
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    fn is_synchronous(&self) -> bool {
        false
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        for file in &self.files {
            // The server finishes the file's in-flight IO and closes its handle.
            let _ = self.session.deregister_fd(file.as_raw_fd());
        }
    }
}
