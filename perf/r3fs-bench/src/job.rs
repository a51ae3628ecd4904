//! One job clone: lay out its files (untimed), then run the IO loop until its bytes, loops or
//! runtime are done, recording every IO's latencies.

use crate::engine::{self, Completion, Direction, IoRequest, Queued};
use crate::options::{EngineKind, JobOptions, RwMode};
use crate::pattern;
use crate::stats::{JobResult, ThreadUsage};
use anyhow::{Context, Result, bail};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A job clone ready to run: its options and the files it uses.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub options: Arc<JobOptions>,
    pub group_id: usize,
    pub clone_index: u32,
    pub files: Vec<PathBuf>,
    /// Bytes per file (the IO range of each file).
    pub file_bytes: u64,
}

impl JobPlan {
    /// Expands `numjobs` into clones and names their files as fio does:
    /// `directory/filename`, or `directory/name.clone.file`.
    pub fn expand(options: &JobOptions, group_id: usize) -> Result<Vec<JobPlan>> {
        let options = Arc::new(options.clone());
        let directory = options.directory.clone().unwrap_or_else(|| PathBuf::from("."));
        let mut plans = Vec::new();
        for clone_index in 0..options.numjobs {
            let files: Vec<PathBuf> = match &options.filename {
                Some(name) if name.is_absolute() => vec![name.clone()],
                Some(name) => vec![directory.join(name)],
                None => (0..options.nrfiles)
                    .map(|file| directory.join(format!("{}.{clone_index}.{file}", options.name)))
                    .collect(),
            };
            let file_bytes = match options.file_bytes() {
                Some(bytes) => bytes,
                None => existing_size(&files[0])?,
            };
            if file_bytes < options.bs {
                bail!(
                    "job {}: file size {file_bytes} is smaller than bs={}",
                    options.name,
                    options.bs
                );
            }
            plans.push(JobPlan {
                options: options.clone(),
                group_id,
                clone_index,
                files,
                file_bytes,
            });
        }
        Ok(plans)
    }

    /// Bytes this clone will transfer, or None when only runtime ends it.
    pub fn target_bytes(&self) -> Option<u64> {
        if self.options.time_based {
            return None;
        }
        let blocks_per_file = self.file_bytes / self.options.bs;
        let pass = blocks_per_file * self.options.bs * self.files.len() as u64;
        Some(self.options.io_size.unwrap_or(pass * u64::from(self.options.loops)))
    }
}

fn existing_size(path: &PathBuf) -> Result<u64> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{}: give size= or an existing file", path.display()))?;
    // Seeking to the end also sizes block devices, whose metadata length is 0.
    file.seek(SeekFrom::End(0)).with_context(|| format!("size {}", path.display()))
}

/// Live counters of a running clone, read by the progress monitor.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: [AtomicU64; 2],
    pub ios: [AtomicU64; 2],
    pub running: AtomicBool,
    pub finished: AtomicBool,
}

/// Creates the files; for jobs that read, writes the pattern into any part not yet there
/// (fio's "laying out IO file"), outside the timed run.
pub fn prepare(plan: &JobPlan) -> Result<()> {
    const LAYOUT_CHUNK_BYTES: usize = 1 << 20;
    for (index, path) in plan.files.iter().enumerate() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        let length = file.seek(SeekFrom::End(0)).context("size file")?;
        if !plan.options.rw.reads() || length >= plan.file_bytes {
            continue;
        }
        let tag = pattern::file_tag(plan.clone_index, index as u32);
        let mut buffer = vec![0u8; LAYOUT_CHUNK_BYTES];
        pattern::fill(&mut buffer);
        let end = plan.file_bytes.next_multiple_of(pattern::SECTOR_BYTES as u64);
        let mut offset = 0;
        file.seek(SeekFrom::Start(0)).context("seek")?;
        while offset < end {
            let len = (end - offset).min(LAYOUT_CHUNK_BYTES as u64) as usize;
            pattern::stamp(&mut buffer[..len], tag, offset);
            file.write_all(&buffer[..len])
                .with_context(|| format!("lay out {}", path.display()))?;
            offset += len as u64;
        }
        file.sync_all().with_context(|| format!("sync {}", path.display()))?;
    }
    Ok(())
}

/// Where the next IO of one file goes.
#[derive(Debug)]
struct FileCursor {
    blocks: u64,
    /// IOs issued in this pass.
    issued: u64,
    /// Random order without repeats: block = (step * issued + start) mod blocks, with step
    /// coprime to blocks, so one pass touches every block once (fio's random map).
    step: u64,
    start: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl FileCursor {
    fn new(blocks: u64) -> Self {
        FileCursor { blocks, issued: 0, step: 1, start: 0 }
    }

    fn new_pass(&mut self, rng: &mut Rng) {
        self.issued = 0;
        // A step near the golden-ratio fraction of the file scatters consecutive IOs.
        let mut step = ((self.blocks as f64 * 0.618_034) as u64 + rng.below(self.blocks.max(1)))
            % self.blocks.max(1);
        step = step.max(1);
        while gcd(step, self.blocks) != 1 {
            step += 1;
        }
        self.step = step;
        self.start = rng.below(self.blocks);
    }

    fn next_block(&mut self, random: bool, norandommap: bool, rng: &mut Rng) -> Option<u64> {
        if self.issued >= self.blocks {
            return None;
        }
        let position = self.issued;
        self.issued += 1;
        Some(match (random, norandommap) {
            (false, _) => position,
            (true, true) => rng.below(self.blocks),
            (true, false) => {
                ((u128::from(self.step) * u128::from(position) + u128::from(self.start))
                    % u128::from(self.blocks)) as u64
            }
        })
    }
}

/// xorshift64*: fast, seeded, good enough to pick offsets and directions.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next_u64() % bound }
    }
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    direction: Direction,
    len: usize,
    prepared: Instant,
    submitted: Instant,
}

/// A clone with its files laid out, engine created, files opened and buffers filled: all the
/// untimed work, done before the group's clones start together.
pub struct Ready {
    engine: Box<dyn engine::Engine>,
    tags: Vec<u64>,
    slots: usize,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("engine", &self.engine.name())
            .field("slots", &self.slots)
            .finish()
    }
}

/// The untimed part: [`prepare`] the files, then open them with the engine and fill buffers.
pub fn setup(plan: &JobPlan) -> Result<Ready> {
    prepare(plan)?;
    let options = &plan.options;
    let bs = usize::try_from(options.bs).context("bs fits in memory")?;
    // Synchronous engines have one IO at a time whatever iodepth says (as in fio).
    let slots = if options.ioengine == EngineKind::Psync { 1 } else { options.iodepth as usize };
    let mut engine = engine::create(options, slots, bs)?;
    let mut tags = Vec::new();
    for (index, path) in plan.files.iter().enumerate() {
        let file = engine.open(path, options.direct)?;
        debug_assert_eq!(file, index);
        tags.push(pattern::file_tag(plan.clone_index, index as u32));
    }
    for slot in 0..slots {
        pattern::fill(engine.buffer(slot));
    }
    Ok(Ready { engine, tags, slots })
}

/// Runs one clone (after [`setup`]): the timed part.
pub fn run(plan: &JobPlan, ready: Ready, progress: &Progress) -> Result<JobResult> {
    let options = &plan.options;
    let bs = usize::try_from(options.bs).context("bs fits in memory")?;
    let Ready { mut engine, tags, slots } = ready;
    let synchronous = engine.is_synchronous();
    let mut rng = Rng::new(options.randseed ^ (u64::from(plan.clone_index) << 32));
    let blocks = plan.file_bytes / options.bs;
    let mut cursors: Vec<FileCursor> = plan.files.iter().map(|_| FileCursor::new(blocks)).collect();
    for cursor in &mut cursors {
        cursor.new_pass(&mut rng);
    }
    let mut result = JobResult {
        name: options.name.clone(),
        group_id: plan.group_id,
        jobs: 1,
        synchronous_engine: synchronous,
        options: options.given.clone(),
        ..JobResult::default()
    };
    let target_bytes = plan.target_bytes();
    let mut issued_bytes = 0u64;
    let mut loops_done = 0u32;
    let mut next_file = 0usize;
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut in_flight: Vec<Option<InFlight>> = vec![None; slots];
    let mut pending: Vec<usize> = Vec::with_capacity(slots);
    let mut completions: Vec<Completion> = Vec::with_capacity(slots);
    let mut stopping = false;

    let usage_start = ThreadUsage::now();
    let start = Instant::now();
    let deadline = options.runtime.map(|runtime| start + runtime);
    progress.running.store(true, Ordering::Relaxed);

    // Records a finished IO; returns false if it failed (the job then stops issuing).
    let finish =
        |result: &mut JobResult, io: InFlight, outcome: Result<usize, i32>, now: Instant| -> bool {
            let stats = &mut result.directions[io.direction.index()];
            let transferred = match outcome {
                Ok(bytes) if bytes == io.len => bytes,
                Ok(_) => {
                    result.error = libc::EIO; // a short IO inside the laid-out range
                    return false;
                }
                Err(errno) => {
                    result.error = errno;
                    return false;
                }
            };
            stats.bytes += transferred as u64;
            stats.ios += 1;
            stats.clat.record(duration_ns(now - io.submitted));
            stats.lat.record(duration_ns(now - io.prepared));
            progress.bytes[io.direction.index()].fetch_add(transferred as u64, Ordering::Relaxed);
            progress.ios[io.direction.index()].fetch_add(1, Ordering::Relaxed);
            true
        };

    loop {
        while !stopping && !free.is_empty() {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline)
                || target_bytes.is_some_and(|target| issued_bytes >= target)
            {
                stopping = true;
                break;
            }
            // Round-robin over the files that still have blocks in this pass.
            let mut found = None;
            for attempt in 0..cursors.len() {
                let file = (next_file + attempt) % cursors.len();
                if let Some(block) =
                    cursors[file].next_block(options.rw.is_random(), options.norandommap, &mut rng)
                {
                    found = Some((file, block));
                    next_file = (file + 1) % cursors.len();
                    break;
                }
            }
            let Some((file, block)) = found else {
                loops_done += 1;
                if options.time_based || loops_done < options.loops || options.io_size.is_some() {
                    for cursor in &mut cursors {
                        cursor.new_pass(&mut rng);
                    }
                    continue;
                }
                stopping = true;
                break;
            };
            let direction = match options.rw {
                RwMode::Read | RwMode::RandRead => Direction::Read,
                RwMode::Write | RwMode::RandWrite => Direction::Write,
                RwMode::ReadWrite | RwMode::RandRw => {
                    if rng.below(100) < u64::from(options.rwmixread) {
                        Direction::Read
                    } else {
                        Direction::Write
                    }
                }
            };
            let offset = block * options.bs;
            let slot = free.pop().expect("a free slot (loop condition)");
            if direction == Direction::Write {
                pattern::stamp(engine.buffer(slot), tags[file], offset);
            }
            issued_bytes += options.bs;
            let prepared = Instant::now();
            let request = IoRequest { slot, file, offset, len: bs, direction };
            match engine.queue(request).context("queue an IO")? {
                Queued::Done(outcome) => {
                    let io = InFlight { direction, len: bs, prepared, submitted: prepared };
                    if !finish(&mut result, io, outcome, Instant::now()) {
                        stopping = true;
                    }
                    free.push(slot);
                }
                Queued::Pending => {
                    in_flight[slot] =
                        Some(InFlight { direction, len: bs, prepared, submitted: prepared });
                    pending.push(slot);
                    if pending.len() >= options.iodepth_batch_submit as usize {
                        commit(&mut *engine, &mut pending, &mut in_flight, &mut result)?;
                    }
                }
            }
        }
        if !pending.is_empty() {
            commit(&mut *engine, &mut pending, &mut in_flight, &mut result)?;
        }
        let outstanding = slots - free.len();
        if outstanding == 0 {
            if stopping {
                break;
            }
            continue;
        }
        let min = (options.iodepth_batch_complete_min as usize).min(outstanding);
        engine.reap(min, &mut completions).context("reap completions")?;
        let now = Instant::now();
        for completion in completions.drain(..) {
            let io = in_flight[completion.slot]
                .take()
                .context("a completion for an IO not in flight")?;
            if !finish(&mut result, io, completion.result, now) {
                stopping = true;
            }
            free.push(completion.slot);
        }
    }
    if options.end_fsync && result.error == 0 {
        for file in 0..plan.files.len() {
            engine
                .sync(file)
                .with_context(|| format!("end_fsync {}", plan.files[file].display()))?;
        }
    }
    let elapsed = start.elapsed();
    let usage = ThreadUsage::now().since(usage_start);
    progress.finished.store(true, Ordering::Relaxed);
    drop(engine);
    if options.unlink {
        for path in &plan.files {
            std::fs::remove_file(path).with_context(|| format!("unlink {}", path.display()))?;
        }
    }
    result.elapsed_ns = duration_ns(elapsed);
    result.clone_elapsed_ns = vec![result.elapsed_ns];
    result.user_cpu_ns = usage.user_ns;
    result.system_cpu_ns = usage.system_ns;
    result.context_switches = usage.context_switches;
    result.major_faults = usage.major_faults;
    result.minor_faults = usage.minor_faults;
    Ok(result)
}

fn commit(
    engine: &mut dyn engine::Engine,
    pending: &mut Vec<usize>,
    in_flight: &mut [Option<InFlight>],
    result: &mut JobResult,
) -> Result<()> {
    engine.commit().context("submit IOs")?;
    let now = Instant::now();
    for slot in pending.drain(..) {
        let io = in_flight[slot].as_mut().context("a pending IO is in flight")?;
        io.submitted = now;
        result.directions[io.direction.index()].slat.record(duration_ns(now - io.prepared));
    }
    Ok(())
}

pub fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_pass_touches_every_block_once() {
        let mut rng = Rng::new(7);
        for blocks in [1u64, 2, 6, 97, 1000, 4096] {
            let mut cursor = FileCursor::new(blocks);
            cursor.new_pass(&mut rng);
            let mut seen = vec![false; blocks as usize];
            while let Some(block) = cursor.next_block(true, false, &mut rng) {
                assert!(!std::mem::replace(&mut seen[block as usize], true), "block {block} twice");
            }
            assert!(seen.iter().all(|&s| s), "{blocks} blocks: all touched");
        }
    }
}
