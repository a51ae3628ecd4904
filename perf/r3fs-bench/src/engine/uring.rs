//! io_uring: IOs are queued as SQEs, submitted by `commit`, reaped from the CQ.

use super::{AlignedBuffers, Completion, Direction, Engine, IoRequest, Queued, open_file};
use anyhow::{Context, Result};
use io_uring::{IoUring, opcode, types};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct Uring {
    ring: IoUring,
    files: Vec<File>,
    buffers: AlignedBuffers,
    /// IOs handed to the kernel and not yet reaped.
    in_flight: usize,
    /// IOs in the SQ not yet submitted.
    queued: usize,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("in_flight", &self.in_flight)
            .field("queued", &self.queued)
            .finish()
    }
}

impl Uring {
    pub fn new(slots: usize, slot_bytes: usize, iodepth: u32) -> Result<Self> {
        let entries = iodepth.max(1).next_power_of_two();
        let ring = IoUring::new(entries)
            .with_context(|| format!("create an io_uring with {entries} entries"))?;
        Ok(Uring {
            ring,
            files: Vec::new(),
            buffers: AlignedBuffers::new(slots, slot_bytes),
            in_flight: 0,
            queued: 0,
        })
    }
}

fn retry_interrupted<T>(mut operation: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match operation() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl Engine for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn open(&mut self, path: &Path, direct: bool) -> Result<usize> {
        self.files.push(open_file(path, direct)?);
        Ok(self.files.len() - 1)
    }

    fn buffer(&mut self, slot: usize) -> &mut [u8] {
        self.buffers.slot(slot)
    }

    fn queue(&mut self, request: IoRequest) -> io::Result<Queued> {
        let fd = types::Fd(self.files[request.file].as_raw_fd());
        let pointer = self.buffers.slot_pointer(request.slot);
        let len =
            u32::try_from(request.len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let entry = match request.direction {
            Direction::Read => opcode::Read::new(fd, pointer, len).offset(request.offset).build(),
            Direction::Write => {
                opcode::Write::new(fd, pointer as *const u8, len).offset(request.offset).build()
            }
        }
        .user_data(request.slot as u64);
        // SAFETY: the buffer slot stays allocated and untouched by the job until this IO is
        // reaped (the job reuses a slot only after its completion), and the file stays open.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            // The SQ is full of unsubmitted entries: submit them and try again.
            self.commit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        self.queued += 1;
        Ok(Queued::Pending)
    }

    fn commit(&mut self) -> io::Result<()> {
        while self.queued > 0 {
            let submitted = retry_interrupted(|| self.ring.submit())?;
            self.queued -= submitted.min(self.queued);
            self.in_flight += submitted;
            if submitted == 0 {
                // The kernel took nothing (CQ overflow back-pressure): let completions drain.
                break;
            }
        }
        Ok(())
    }

    fn reap(&mut self, min: usize, completions: &mut Vec<Completion>) -> io::Result<()> {
        let wanted = min.min(self.in_flight);
        let mut reaped = 0;
        loop {
            let before = completions.len();
            for entry in self.ring.completion() {
                let result = entry.result();
                completions.push(Completion {
                    slot: entry.user_data() as usize,
                    result: if result < 0 { Err(-result) } else { Ok(result as usize) },
                });
            }
            let got = completions.len() - before;
            reaped += got;
            self.in_flight -= got.min(self.in_flight);
            if reaped >= wanted {
                return Ok(());
            }
            retry_interrupted(|| self.ring.submit_and_wait(wanted - reaped))?;
        }
    }

    fn sync(&mut self, file: usize) -> io::Result<()> {
        self.files[file].sync_all()
    }

    fn is_synchronous(&self) -> bool {
        false
    }
}
