//! `pread`/`pwrite`: each IO completes inside `queue`, as fio's psync engine.

use super::{AlignedBuffers, Completion, Direction, Engine, IoRequest, Queued, open_file};
use anyhow::Result;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug)]
pub struct Psync {
    files: Vec<File>,
    buffers: AlignedBuffers,
}

impl Psync {
    pub fn new(slots: usize, slot_bytes: usize) -> Self {
        Psync { files: Vec::new(), buffers: AlignedBuffers::new(slots, slot_bytes) }
    }
}

impl Engine for Psync {
    fn name(&self) -> &'static str {
        "psync"
    }

    fn open(&mut self, path: &Path, direct: bool) -> Result<usize> {
        self.files.push(open_file(path, direct)?);
        Ok(self.files.len() - 1)
    }

    fn buffer(&mut self, slot: usize) -> &mut [u8] {
        self.buffers.slot(slot)
    }

    fn queue(&mut self, request: IoRequest) -> io::Result<Queued> {
        let file = &self.files[request.file];
        let buffer = &mut self.buffers.slot(request.slot)[..request.len];
        let result = match request.direction {
            Direction::Read => file.read_at(buffer, request.offset),
            Direction::Write => file.write_at(buffer, request.offset),
        };
        Ok(Queued::Done(result.map_err(|error| error.raw_os_error().unwrap_or(libc::EIO))))
    }

    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, _min: usize, _completions: &mut Vec<Completion>) -> io::Result<()> {
        Ok(())
    }

    fn sync(&mut self, file: usize) -> io::Result<()> {
        self.files[file].sync_all()
    }

    fn is_synchronous(&self) -> bool {
        true
    }
}
