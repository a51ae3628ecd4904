//! An in-memory [`Device`] that can lose power.
//!
//! [`MemDisk`] keeps, per file, the durable bytes and the list of operations since the last
//! `sync_data`; per directory, the durable names and the creations/removals since the last
//! `sync_dir`. A power loss ([`MemDisk::crash`], or armed with [`MemDisk::crash_after_ops`] to
//! strike inside the N-th mutating operation) keeps a random subset of the unsynced operations,
//! tearing writes at random 512-byte sectors, and invalidates every handle of the old "boot":
//! their operations fail from then on, as a dead process's would never run. A seeded SplitMix64
//! decides everything, so a failing seed replays exactly.
//!
//! It also enforces the direct-IO contract (aligned offsets and lengths) so that a store tested
//! here does not fail on a real disk, can emulate a full file system (`ENOSPC`), fail syncs, and
//! yield on every operation so concurrent tasks interleave.

use crate::device::{Device, DeviceFile, IoBuf};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Sector size at which a crash tears writes.
pub const SECTOR_BYTES: usize = 512;

/// Knobs of a [`MemDisk`].
#[derive(Clone, Debug)]
pub struct MemDiskOptions {
    /// Offsets and lengths of reads and writes must be multiples of this.
    pub alignment: usize,
    /// Bytes the "file system" holds (sum of file lengths); `None` = unlimited.
    pub capacity_bytes: Option<u64>,
    /// Yield to the executor once per operation, so that concurrent tasks interleave.
    pub yield_per_op: bool,
    /// Each operation also yields a random number of extra times, up to this many, so that
    /// concurrent operations complete in varying orders (seeded, like everything else).
    pub jitter_yields_max: u32,
    /// Model a file system whose `sync_data` flushes the whole device cache (ext4, XFS): a sync
    /// of one file also makes durable every completed *overwrite* of any other file, i.e. a
    /// write that lies entirely in ranges written and made durable by a sync of that file
    /// before (written extents: no file-system metadata to update), unless an earlier
    /// unsynced size change or hole of that file overlaps it. Anything else (a write into new
    /// or once-punched space, a size change) still needs a sync of its own file.
    pub device_flush: bool,
}

impl Default for MemDiskOptions {
    fn default() -> Self {
        MemDiskOptions {
            alignment: 4096,
            capacity_bytes: None,
            yield_per_op: false,
            jitter_yields_max: 0,
            device_flush: false,
        }
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Punch { offset: u64, len: u64 },
}

#[derive(Debug, Default)]
struct FileState {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<FileOp>,
    /// Sorted, disjoint ranges written and then made durable by a sync of this file (the
    /// "written extents" an overwrite needs no metadata for; see `device_flush`).
    written: Vec<(u64, u64)>,
}

/// `ranges` (sorted, disjoint) plus `[start, end)`.
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let (mut start, mut end) = (start, end);
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if b < start || a > end {
            out.push((a, b));
        } else {
            start = start.min(a);
            end = end.max(b);
        }
    }
    out.push((start, end));
    out.sort_unstable();
    *ranges = out;
}

/// `ranges` minus `[start, end)`.
fn remove_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if b <= start || a >= end {
            out.push((a, b));
            continue;
        }
        if a < start {
            out.push((a, start));
        }
        if b > end {
            out.push((end, b));
        }
    }
    *ranges = out;
}

fn covers(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    ranges.iter().any(|&(a, b)| a <= start && end <= b)
}

impl FileState {
    /// What a durable `op` does to the written ranges.
    fn note_durable(&mut self, op: &FileOp) {
        match op {
            FileOp::Write { offset, data } => {
                add_range(&mut self.written, *offset, offset + data.len() as u64);
            }
            FileOp::SetLen(len) => remove_range(&mut self.written, *len, u64::MAX),
            FileOp::Punch { offset, len } => remove_range(&mut self.written, *offset, offset + len),
        }
    }

    /// A flush of the device cache (a sync of another file): applies the unsynced overwrites
    /// of written ranges that no earlier unsynced operation overlaps.
    fn device_flush(&mut self) {
        let mut blocked: Vec<(u64, u64)> = Vec::new();
        let mut len = self.durable.len() as u64;
        let mut kept = Vec::new();
        for op in std::mem::take(&mut self.unsynced) {
            match &op {
                FileOp::Write { offset, data } => {
                    let end = offset + data.len() as u64;
                    let free = !blocked.iter().any(|&(a, b)| a < end && *offset < b);
                    if free && covers(&self.written, *offset, end) {
                        apply(&mut self.durable, &op);
                        continue;
                    }
                    len = len.max(end);
                    add_range(&mut blocked, *offset, end);
                }
                FileOp::SetLen(new_len) => {
                    add_range(&mut blocked, (*new_len).min(len), u64::MAX);
                    len = *new_len;
                }
                FileOp::Punch { offset, len: n } => add_range(&mut blocked, *offset, offset + n),
            }
            kept.push(op);
        }
        self.unsynced = kept;
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Create { name: String, id: u64 },
    Remove { name: String },
}

#[derive(Debug)]
struct Disk {
    rng: u64,
    boot: u64,
    options: MemDiskOptions,
    next_id: u64,
    files: HashMap<u64, FileState>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    unsynced_dir: Vec<DirOp>,
    mutating_ops: u64,
    crash_at_op: Option<u64>,
    fail_syncs_after: Option<u64>,
    next_read_delay_yields: u32,
    crashes: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn apply(bytes: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        FileOp::SetLen(len) => bytes.resize(*len as usize, 0),
        FileOp::Punch { offset, len } => {
            let start = (*offset as usize).min(bytes.len());
            let end = (*offset as usize + *len as usize).min(bytes.len());
            bytes[start..end].fill(0);
        }
    }
}

fn power_loss_error() -> io::Error {
    io::Error::other("simulated power loss: this device handle is dead")
}

impl Disk {
    fn random(&mut self) -> u64 {
        splitmix(&mut self.rng)
    }

    fn coin(&mut self) -> bool {
        self.random() & 1 == 1
    }

    /// Power loss: keep a random subset of unsynced operations, tear writes by sector.
    fn crash(&mut self) {
        let ids: Vec<u64> = {
            let mut ids: Vec<u64> = self.files.keys().copied().collect();
            ids.sort_unstable();
            ids
        };
        for id in ids {
            let mut state = self.files.remove(&id).unwrap_or_default();
            let mut bytes = std::mem::take(&mut state.durable);
            let mut written = std::mem::take(&mut state.written);
            for op in &state.unsynced {
                // Whether or not it survives, a size change or hole may have hit those ranges.
                match op {
                    FileOp::Write { .. } => {}
                    FileOp::SetLen(len) => remove_range(&mut written, *len, u64::MAX),
                    FileOp::Punch { offset, len } => {
                        remove_range(&mut written, *offset, offset + len)
                    }
                }
            }
            for op in std::mem::take(&mut state.unsynced) {
                match self.random() % 3 {
                    0 => {} // lost
                    1 => apply(&mut bytes, &op),
                    _ => match op {
                        FileOp::Write { offset, data } => {
                            for (i, sector) in data.chunks(SECTOR_BYTES).enumerate() {
                                if self.coin() {
                                    let at = offset + (i * SECTOR_BYTES) as u64;
                                    apply(
                                        &mut bytes,
                                        &FileOp::Write { offset: at, data: sector.to_vec() },
                                    );
                                }
                            }
                        }
                        other => apply(&mut bytes, &other),
                    },
                }
            }
            self.files.insert(
                id,
                FileState { current: bytes.clone(), durable: bytes, unsynced: Vec::new(), written },
            );
        }
        let mut names = self.durable_names.clone();
        for op in std::mem::take(&mut self.unsynced_dir) {
            if self.coin() {
                match op {
                    DirOp::Create { name, id } => {
                        names.insert(name, id);
                    }
                    DirOp::Remove { name } => {
                        names.remove(&name);
                    }
                }
            }
        }
        let live: std::collections::HashSet<u64> = names.values().copied().collect();
        self.files.retain(|id, _| live.contains(id));
        self.durable_names = names.clone();
        self.names = names;
        self.boot += 1;
        self.crashes += 1;
        self.crash_at_op = None;
    }

    /// Counts a mutating operation; `Err` when an armed crash strikes now. `partial` runs the
    /// operation's effect first when the crash lets it half-happen.
    fn mutating(&mut self, partial: impl FnOnce(&mut Disk)) -> io::Result<()> {
        self.mutating_ops += 1;
        if self.crash_at_op.is_some_and(|at| self.mutating_ops >= at) {
            if self.coin() {
                partial(self);
            }
            self.crash();
            return Err(power_loss_error());
        }
        Ok(())
    }

    fn usage_bytes(&self) -> u64 {
        self.files.values().map(|f| f.current.len() as u64).sum()
    }

    fn check_growth(&self, file: u64, new_len: u64) -> io::Result<()> {
        let Some(capacity) = self.options.capacity_bytes else { return Ok(()) };
        let old_len = self.files.get(&file).map_or(0, |f| f.current.len() as u64);
        if new_len > old_len && self.usage_bytes() + (new_len - old_len) > capacity {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn check_aligned(&self, offset: u64, len: usize) -> io::Result<()> {
        let alignment = self.options.alignment as u64;
        if !offset.is_multiple_of(alignment) || !(len as u64).is_multiple_of(alignment) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unaligned direct IO: offset {offset}, length {len}"),
            ));
        }
        Ok(())
    }

    fn file_op(&mut self, id: u64, op: FileOp) {
        let state = self.files.entry(id).or_default();
        apply(&mut state.current, &op);
        state.unsynced.push(op);
    }
}

/// A simulated disk shared by the devices of successive "boots".
#[derive(Clone, Debug)]
pub struct MemDisk {
    disk: Rc<RefCell<Disk>>,
}

impl MemDisk {
    pub fn new(seed: u64, options: MemDiskOptions) -> MemDisk {
        MemDisk {
            disk: Rc::new(RefCell::new(Disk {
                rng: seed,
                boot: 0,
                options,
                next_id: 1,
                files: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                unsynced_dir: Vec::new(),
                mutating_ops: 0,
                crash_at_op: None,
                fail_syncs_after: None,
                next_read_delay_yields: 0,
                crashes: 0,
            })),
        }
    }

    /// A device for the current boot. Devices of earlier boots fail every operation.
    pub fn device(&self) -> MemDevice {
        MemDevice { disk: self.disk.clone(), boot: self.disk.borrow().boot }
    }

    /// Power loss now.
    pub fn crash(&self) {
        self.disk.borrow_mut().crash();
    }

    /// Arms a power loss inside the `ops`-th mutating operation from now (1 = the next one).
    pub fn crash_after_ops(&self, ops: u64) {
        let mut disk = self.disk.borrow_mut();
        disk.crash_at_op = Some(disk.mutating_ops + ops.max(1));
    }

    /// Whether an armed power loss is still pending.
    pub fn crash_armed(&self) -> bool {
        self.disk.borrow().crash_at_op.is_some()
    }

    /// How many power losses happened.
    pub fn crashes(&self) -> u64 {
        self.disk.borrow().crashes
    }

    /// Makes every `sync_data` after the next `syncs` ones fail with EIO (`None` disarms).
    pub fn fail_syncs_after(&self, syncs: Option<u64>) {
        self.disk.borrow_mut().fail_syncs_after = syncs;
    }

    /// Makes the next read take `yields` extra turns of the executor (a slow read racing
    /// with updates).
    pub fn delay_next_read(&self, yields: u32) {
        self.disk.borrow_mut().next_read_delay_yields = yields;
    }

    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.disk.borrow_mut().options.capacity_bytes = capacity_bytes;
    }

    /// The current (not necessarily durable) bytes of a file.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let disk = self.disk.borrow();
        let id = disk.names.get(name)?;
        disk.files.get(id).map(|f| f.current.clone())
    }

    /// Flips bits in a file, durably (bit rot, a misdirected write by another program).
    pub fn corrupt(&self, name: &str, offset: u64, xor: u8) -> bool {
        let mut disk = self.disk.borrow_mut();
        let Some(&id) = disk.names.get(name) else { return false };
        let Some(state) = disk.files.get_mut(&id) else { return false };
        let at = offset as usize;
        if at >= state.current.len() {
            return false;
        }
        state.current[at] ^= xor;
        if at < state.durable.len() {
            state.durable[at] ^= xor;
        }
        true
    }

    pub fn file_names(&self) -> Vec<String> {
        self.disk.borrow().names.keys().cloned().collect()
    }
}

/// The [`Device`] of one boot of a [`MemDisk`].
#[derive(Clone, Debug)]
pub struct MemDevice {
    disk: Rc<RefCell<Disk>>,
    boot: u64,
}

/// Buffer of a [`MemDevice`].
#[derive(Debug)]
pub struct MemBuf(Vec<u8>);

impl AsRef<[u8]> for MemBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for MemBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl IoBuf for MemBuf {}

/// An open file of a [`MemDevice`].
#[derive(Debug)]
pub struct MemFile {
    disk: Rc<RefCell<Disk>>,
    boot: u64,
    id: u64,
}

/// Resolves after yielding once to the executor.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

async fn maybe_yield(disk: &Rc<RefCell<Disk>>) {
    let yields = {
        let mut disk = disk.borrow_mut();
        let jitter = match disk.options.jitter_yields_max {
            0 => 0,
            max => (disk.random() % u64::from(max + 1)) as u32,
        };
        u32::from(disk.options.yield_per_op) + jitter
    };
    for _ in 0..yields {
        YieldOnce(false).await;
    }
}

fn live(disk: &Disk, boot: u64) -> io::Result<()> {
    if disk.boot != boot { Err(power_loss_error()) } else { Ok(()) }
}

impl DeviceFile for MemFile {
    type Buf = MemBuf;
    type ReadBuf = Vec<u8>;

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        maybe_yield(&self.disk).await;
        let delay = std::mem::take(&mut self.disk.borrow_mut().next_read_delay_yields);
        for _ in 0..delay {
            YieldOnce(false).await;
        }
        let disk = self.disk.borrow();
        live(&disk, self.boot)?;
        disk.check_aligned(offset, len)?;
        let bytes = disk.files.get(&self.id).map_or(&[][..], |f| &f.current[..]);
        let start = (offset as usize).min(bytes.len());
        let end = (offset as usize + len).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    async fn write_at(&self, buf: MemBuf, offset: u64) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        disk.check_aligned(offset, buf.0.len())?;
        disk.check_growth(self.id, offset + buf.0.len() as u64)?;
        let id = self.id;
        let op = FileOp::Write { offset, data: buf.0 };
        let partial = op.clone();
        disk.mutating(move |d| d.file_op(id, partial))?;
        disk.file_op(id, op);
        Ok(())
    }

    async fn sync_data(&self) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        let id = self.id;
        let sync = move |d: &mut Disk| {
            if let Some(state) = d.files.get_mut(&id) {
                // Replaying the unsynced operations costs what they wrote, not the file size.
                for op in std::mem::take(&mut state.unsynced) {
                    apply(&mut state.durable, &op);
                    state.note_durable(&op);
                }
            }
            if d.options.device_flush {
                for (other, state) in d.files.iter_mut() {
                    if *other != id {
                        state.device_flush();
                    }
                }
            }
        };
        disk.mutating(sync)?;
        if let Some(left) = disk.fail_syncs_after {
            if left == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            disk.fail_syncs_after = Some(left - 1);
        }
        sync(&mut disk);
        Ok(())
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        let end = offset + len;
        let old_len = disk.files.get(&self.id).map_or(0, |f| f.current.len() as u64);
        if end <= old_len {
            return Ok(());
        }
        disk.check_growth(self.id, end)?;
        let id = self.id;
        disk.mutating(move |d| d.file_op(id, FileOp::SetLen(end)))?;
        disk.file_op(id, FileOp::SetLen(end));
        Ok(())
    }

    async fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        let id = self.id;
        disk.mutating(move |d| d.file_op(id, FileOp::Punch { offset, len }))?;
        disk.file_op(id, FileOp::Punch { offset, len });
        Ok(())
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        disk.check_growth(self.id, len)?;
        let id = self.id;
        disk.mutating(move |d| d.file_op(id, FileOp::SetLen(len)))?;
        disk.file_op(id, FileOp::SetLen(len));
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let disk = self.disk.borrow();
        live(&disk, self.boot)?;
        Ok(disk.files.get(&self.id).map_or(0, |f| f.current.len() as u64))
    }
}

impl Device for MemDevice {
    type Buf = MemBuf;
    type ReadBuf = Vec<u8>;
    type File = MemFile;

    fn alloc_buf(&self, len: usize) -> MemBuf {
        // Junk, not zeros: a store that forgets to fill a byte it writes out is caught.
        MemBuf(vec![0xA5; len])
    }

    fn sync_flushes_device(&self) -> bool {
        self.disk.borrow().options.device_flush
    }

    async fn open(&self, name: &str, create: bool) -> io::Result<MemFile> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        if let Some(&id) = disk.names.get(name) {
            return Ok(MemFile { disk: self.disk.clone(), boot: self.boot, id });
        }
        if !create {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let id = disk.next_id;
        let op = DirOp::Create { name: name.to_string(), id };
        let partial = op.clone();
        disk.mutating(move |d| d.unsynced_dir.push(partial))?;
        disk.next_id += 1;
        disk.files.insert(id, FileState::default());
        disk.names.insert(name.to_string(), id);
        disk.unsynced_dir.push(op);
        Ok(MemFile { disk: self.disk.clone(), boot: self.boot, id })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        if !disk.names.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let op = DirOp::Remove { name: name.to_string() };
        let partial = op.clone();
        disk.mutating(move |d| d.unsynced_dir.push(partial))?;
        disk.names.remove(name);
        disk.unsynced_dir.push(op);
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let disk = self.disk.borrow();
        live(&disk, self.boot)?;
        Ok(disk.names.keys().cloned().collect())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        maybe_yield(&self.disk).await;
        let mut disk = self.disk.borrow_mut();
        live(&disk, self.boot)?;
        let sync = |d: &mut Disk| {
            d.durable_names = d.names.clone();
            d.unsynced_dir.clear();
        };
        disk.mutating(sync)?;
        sync(&mut disk);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn buf(byte: u8, len: usize) -> MemBuf {
        MemBuf(vec![byte; len])
    }

    #[test]
    fn synced_data_survives_and_unsynced_may_tear() {
        block_on(async {
            let mut torn = false;
            for seed in 0..64 {
                let disk = MemDisk::new(seed, MemDiskOptions::default());
                let dev = disk.device();
                let file = dev.open("f", true).await.unwrap();
                dev.sync_dir().await.unwrap();
                file.write_at(buf(1, 8192), 0).await.unwrap();
                file.sync_data().await.unwrap();
                file.write_at(buf(2, 8192), 0).await.unwrap();
                disk.crash();
                assert!(file.read_at(0, 4096).await.is_err(), "old handles are dead");
                let dev = disk.device();
                let file = dev.open("f", false).await.unwrap();
                let bytes = file.read_at(0, 8192).await.unwrap();
                assert_eq!(bytes.len(), 8192);
                for sector in bytes.chunks(SECTOR_BYTES) {
                    assert!(sector.iter().all(|&b| b == sector[0]), "a sector is never torn");
                    assert!(sector[0] == 1 || sector[0] == 2);
                }
                torn |= bytes.chunks(SECTOR_BYTES).any(|s| s[0] == 1)
                    && bytes.chunks(SECTOR_BYTES).any(|s| s[0] == 2);
            }
            assert!(torn, "some seed tears the unsynced write");
        });
    }

    #[test]
    fn unsynced_names_may_vanish_and_alignment_is_enforced() {
        block_on(async {
            let mut vanished = false;
            for seed in 0..32 {
                let disk = MemDisk::new(seed, MemDiskOptions::default());
                let dev = disk.device();
                let file = dev.open("x", true).await.unwrap();
                assert!(file.write_at(buf(0, 100), 0).await.is_err());
                file.write_at(buf(0, 4096), 0).await.unwrap();
                file.sync_data().await.unwrap();
                disk.crash();
                vanished |= disk.device().list().await.unwrap().is_empty();
            }
            assert!(vanished);
        });
    }

    #[test]
    fn armed_crash_strikes_inside_an_operation() {
        block_on(async {
            let disk = MemDisk::new(7, MemDiskOptions::default());
            let dev = disk.device();
            let file = dev.open("f", true).await.unwrap();
            disk.crash_after_ops(2);
            file.write_at(buf(3, 4096), 0).await.unwrap();
            assert!(file.sync_data().await.is_err());
            assert_eq!(disk.crashes(), 1);
            assert!(!disk.crash_armed());
        });
    }

    #[test]
    fn capacity_gives_enospc() {
        block_on(async {
            let disk = MemDisk::new(
                1,
                MemDiskOptions { capacity_bytes: Some(8192), ..Default::default() },
            );
            let dev = disk.device();
            let file = dev.open("f", true).await.unwrap();
            file.allocate(0, 8192).await.unwrap();
            let err = file.allocate(0, 12288).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        });
    }
}
