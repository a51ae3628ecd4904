//! Chunk store bandwidth and IOPS next to fio's, in one run, on the same file system.
//!
//! `cargo run --release -p r3fs-chunk --example chunkbench -- [--dir DIR] [--size-mib N] ...`
//!
//! For each repetition (fio first, then the store, so that drift hits both alike):
//! 1. sequential write of `--size-mib` in 4 MiB blocks at queue depth `--seq-qd` into new
//!    space: fio `--rw=write --bs=4M` on a new file; the store: `seq-qd` concurrent `update`s
//!    of new 4 MiB chunks on a new target (stage and commit in one step, durable on return: a
//!    chain's tail, or a target without replication);
//! 2. the same again over the space written before (fio rewrites its file; the store writes
//!    version 2 of every chunk, copy-on-write into the blocks the previous chunks freed) — the
//!    steady state of a long-lived target. fio also runs once more with `--end_fsync=1` and
//!    once with `--fdatasync=1` (an fdatasync queued after every write: durability's price);
//! 3. the store's rewrite once more as a chain's head or middle replica does it: `stage`
//!    (durable on return, since the successor may rely on it), then `commit` (durable on
//!    return): two log syncs per update instead of one;
//! 4. sequential read of the data: fio `--rw=read` against full-chunk store reads (every unit's
//!    checksum verified);
//! 5. 4 KiB random reads at queue depth `--rand-qd` for `--rand-seconds`: fio `--rw=randread`
//!    against store reads of one random 4 KiB unit of a random chunk.
//!
//! fio runs with `--ioengine=io_uring --direct=1 --fixedbufs=1`: the store's IO buffers come from
//! glommio's arena, registered with the ring, so fio registers its buffers too (without it, fio
//! pins the pages of every 4 MiB IO and reads only about half as fast on this virtual disk: the
//! plain fio read is reported as well, `vs fio, no fixedbufs`). The store's write buffers are
//! filled before the clock starts, as fio's are. Medians over repetitions are printed with the store/fio
//! ratios; per-phase details (commit latency, batches, executor CPU) go to stderr.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use r3fs_chunk::dma::{DmaDevice, DmaDeviceConfig};
use r3fs_chunk::{
    ChunkStore, CommitOutcome, StageOutcome, StageRequest, StoreConfig, UpdateOp, UpdateOutcome,
};
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, InodeId};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

const BLOCK: usize = 4 << 20;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Directory to benchmark in (on the file system under test).
    #[arg(long, default_value = "/tmp/r3fs-chunkbench")]
    dir: PathBuf,
    /// Bytes written and read sequentially, in MiB (a multiple of 4).
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Queue depth of the sequential phases.
    #[arg(long, default_value_t = 8)]
    seq_qd: usize,
    /// Queue depth of the random-read phase.
    #[arg(long, default_value_t = 32)]
    rand_qd: usize,
    #[arg(long, default_value_t = 10)]
    rand_seconds: u64,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// IO memory registered by the store's executor (glommio's buffer arena).
    #[arg(long, default_value_t = 96)]
    io_memory_mib: u64,
    /// The store's `write_inflight_bytes_max` in KiB (default: the store's default).
    #[arg(long)]
    write_inflight_kib: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    /// Into new space (a fresh file / a new target).
    write_bytes_per_sec: f64,
    /// Over space written before (a file rewritten / a target in steady state).
    rewrite_bytes_per_sec: f64,
    /// The rewrite including making it durable (fio `--end_fsync=1`; every store commit is
    /// durable anyway).
    durable_rewrite_bytes_per_sec: f64,
    /// fio only: the rewrite with an `fdatasync` queued after every write (`--fdatasync=1`), the
    /// closest fio comes to "every write durable".
    synced_rewrite_bytes_per_sec: f64,
    /// Store only: the rewrite as separate stage and commit (a head or middle replica).
    staged_rewrite_bytes_per_sec: f64,
    read_bytes_per_sec: f64,
    /// fio only: the read without registered buffers (`--fixedbufs=0`).
    plain_read_bytes_per_sec: f64,
    rand_read_iops: f64,
}

#[allow(clippy::too_many_arguments)] // one flag per fio option, spelled out at each call
fn fio(
    args: &Args,
    file: &Path,
    rw: &str,
    bs: &str,
    qd: usize,
    timed: bool,
    end_fsync: bool,
    fixedbufs: bool,
    fdatasync: bool,
) -> Result<serde_json::Value> {
    let mut command = Command::new("fio");
    command
        .arg("--name=bench")
        .arg(format!("--filename={}", file.display()))
        .arg("--ioengine=io_uring")
        .arg("--direct=1")
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={qd}"))
        .arg(format!("--size={}M", args.size_mib))
        .arg("--numjobs=1")
        .arg("--output-format=json");
    if timed {
        command.arg(format!("--runtime={}", args.rand_seconds)).arg("--time_based");
    }
    if end_fsync {
        command.arg("--end_fsync=1");
    }
    if fixedbufs {
        command.arg("--fixedbufs=1");
    }
    if fdatasync {
        command.arg("--fdatasync=1");
    }
    let output = command.output().context("run fio (apt-get install fio)")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("parse fio's JSON")
}

fn fio_figures(args: &Args) -> Result<Figures> {
    let dir = args.dir.join("fio");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("data");
    let write = fio(args, &file, "write", "4M", args.seq_qd, false, false, true, false)?;
    let rewrite = fio(args, &file, "write", "4M", args.seq_qd, false, false, true, false)?;
    let synced = fio(args, &file, "write", "4M", args.seq_qd, false, false, true, true)?;
    // Also leaves no dirty data in the host's cache to slow the read phases down.
    let durable = fio(args, &file, "write", "4M", args.seq_qd, false, true, true, false)?;
    let read = fio(args, &file, "read", "4M", args.seq_qd, false, false, true, false)?;
    let plain_read = fio(args, &file, "read", "4M", args.seq_qd, false, false, false, false)?;
    let rand = fio(args, &file, "randread", "4k", args.rand_qd, true, false, true, false)?;
    let job = |v: &serde_json::Value, dir: &str, key: &str| {
        v["jobs"][0][dir][key].as_f64().context("fio JSON field")
    };
    let figures = Figures {
        write_bytes_per_sec: job(&write, "write", "bw_bytes")?,
        rewrite_bytes_per_sec: job(&rewrite, "write", "bw_bytes")?,
        durable_rewrite_bytes_per_sec: job(&durable, "write", "bw_bytes")?,
        synced_rewrite_bytes_per_sec: job(&synced, "write", "bw_bytes")?,
        staged_rewrite_bytes_per_sec: job(&rewrite, "write", "bw_bytes")?,
        read_bytes_per_sec: job(&read, "read", "bw_bytes")?,
        plain_read_bytes_per_sec: job(&plain_read, "read", "bw_bytes")?,
        rand_read_iops: job(&rand, "read", "iops")?,
    };
    std::fs::remove_dir_all(&dir)?;
    Ok(figures)
}

fn chunk(index: u64) -> ChunkId {
    ChunkId::new(InodeId(1000), index)
}

async fn store_figures(args: Rc<Args>, payload: Rc<Vec<u8>>) -> Result<Figures> {
    let payload = payload.as_slice();
    let dir = args.dir.join("store");
    let _ = std::fs::remove_dir_all(&dir);
    let device_config = DmaDeviceConfig { io_memory_bytes: args.io_memory_mib << 20 };
    let device = DmaDevice::open(&dir, &device_config).await?;
    let defaults = StoreConfig::default();
    let config = StoreConfig {
        capacity_bytes: (args.size_mib << 20) * 2 + (1 << 30),
        write_inflight_bytes_max: args
            .write_inflight_kib
            .map_or(defaults.write_inflight_bytes_max, |kib| kib << 10),
        ..defaults
    };
    let (store, flusher) = ChunkStore::open(device, config).await?;
    glommio::spawn_local(flusher.run()).detach();
    let chunks = args.size_mib / 4;
    let crc = crc32c::crc32c(payload);

    let (write_secs, write_cpu) = write_pass(&store, &args, payload, 1, false).await?;
    let (rewrite_secs, _) = write_pass(&store, &args, payload, 2, false).await?;
    let (staged_secs, _) = write_pass(&store, &args, payload, 3, true).await?;

    // Sequential read, verified.
    let next = Rc::new(Cell::new(0u64));
    let cpu = thread_cpu();
    let started = Instant::now();
    let readers = (0..args.seq_qd).map(|_| {
        let (store, next) = (store.clone(), next.clone());
        async move {
            loop {
                let index = next.get();
                if index >= chunks {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(index + 1);
                let read = store.read(chunk(index), 0, BLOCK as u32).await?;
                if read.len() != BLOCK || read.crc != crc {
                    bail!("chunk {index} read back wrong");
                }
            }
        }
    });
    for result in futures::future::join_all(readers).await {
        result?;
    }
    let read_secs = started.elapsed().as_secs_f64();
    let read_cpu = thread_cpu() - cpu;

    // Random 4 KiB reads.
    let done = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs(args.rand_seconds);
    let cpu = thread_cpu();
    let started = Instant::now();
    let random = (0..args.rand_qd).map(|task| {
        let (store, done) = (store.clone(), done.clone());
        async move {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (task as u64) << 32;
            while Instant::now() < deadline {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let index = state % chunks;
                let unit = (state >> 32) % (BLOCK as u64 / 4096);
                let read = store.read(chunk(index), (unit * 4096) as u32, 4096).await?;
                if read.len() != 4096 {
                    bail!("short random read");
                }
                done.set(done.get() + 1);
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    for result in futures::future::join_all(random).await {
        result?;
    }
    let rand_secs = started.elapsed().as_secs_f64();
    let rand_cpu = thread_cpu() - cpu;
    let stats = store.stats();
    store.close().await?;
    std::fs::remove_dir_all(&dir)?;
    let bytes = (chunks * BLOCK as u64) as f64;
    let gib = bytes / f64::from(1u32 << 30);
    eprintln!(
        "  store: {} commit batches for {} records, header cache {} KiB; executor CPU: write \
         {:.2} s/GiB, read {:.2} s/GiB, random read {:.1} us/op",
        stats.commit_batches,
        stats.commit_records,
        stats.header_cache_bytes >> 10,
        write_cpu / gib,
        read_cpu / gib,
        1e6 * rand_cpu / done.get().max(1) as f64
    );
    Ok(Figures {
        write_bytes_per_sec: bytes / write_secs,
        rewrite_bytes_per_sec: bytes / rewrite_secs,
        durable_rewrite_bytes_per_sec: bytes / rewrite_secs,
        synced_rewrite_bytes_per_sec: bytes / rewrite_secs,
        staged_rewrite_bytes_per_sec: bytes / staged_secs,
        read_bytes_per_sec: bytes / read_secs,
        plain_read_bytes_per_sec: bytes / read_secs,
        rand_read_iops: done.get() as f64 / rand_secs,
    })
}

/// Writes every chunk once at `version` with `seq_qd` concurrent updates: `update` (one step),
/// or with `staged` `stage` then `commit` (as a chain's head or middle replica does). Returns
/// elapsed and executor CPU seconds.
async fn write_pass(
    store: &ChunkStore<DmaDevice>,
    args: &Args,
    payload: &[u8],
    version: u64,
    staged: bool,
) -> Result<(f64, f64)> {
    let chunks = args.size_mib / 4;
    let crc = crc32c::crc32c(payload);
    // The data arrives in DMA buffers (in the daemon, straight from the network): fill them
    // before the clock starts, as fio's buffers are.
    let buffers: Rc<std::cell::RefCell<Vec<_>>> = Rc::new(std::cell::RefCell::new(
        (0..chunks)
            .map(|_| {
                let mut data = store.alloc_buf(BLOCK);
                data.data_mut().copy_from_slice(payload);
                data
            })
            .collect(),
    ));
    let next = Rc::new(Cell::new(0u64));
    let stage_time = Rc::new(Cell::new(Duration::ZERO));
    let commit_time = Rc::new(Cell::new(Duration::ZERO));
    let batches = store.stats().commit_batches;
    let cpu = thread_cpu();
    let started = Instant::now();
    let writers = (0..args.seq_qd).map(|_| {
        let (store, next, buffers) = (store.clone(), next.clone(), buffers.clone());
        let (stage_time, commit_time) = (stage_time.clone(), commit_time.clone());
        async move {
            loop {
                let index = next.get();
                if index >= chunks {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(index + 1);
                let Some(data) = buffers.borrow_mut().pop() else { bail!("out of buffers") };
                let request = StageRequest {
                    chunk: chunk(index),
                    version: ChunkVersion(version),
                    chain_version: ChainVersion(1),
                    chunk_size: BLOCK as u32,
                    op: UpdateOp::Replace { data, crc },
                };
                let t0 = Instant::now();
                if !staged {
                    let updated = store.update(request).await?;
                    if !matches!(updated, UpdateOutcome::Committed(_)) {
                        bail!("update of chunk {index}: {updated:?}");
                    }
                    stage_time.set(stage_time.get() + t0.elapsed());
                    continue;
                }
                let staged = store.stage(request).await?;
                if !matches!(staged, StageOutcome::Staged(_)) {
                    bail!("stage of chunk {index}: {staged:?}");
                }
                let t1 = Instant::now();
                let committed = store.commit(chunk(index), ChunkVersion(version)).await?;
                if !matches!(committed, CommitOutcome::Committed(_)) {
                    bail!("commit of chunk {index}: {committed:?}");
                }
                stage_time.set(stage_time.get() + (t1 - t0));
                commit_time.set(commit_time.get() + t1.elapsed());
            }
        }
    });
    for result in futures::future::join_all(writers).await {
        result?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu;
    eprintln!(
        "  store write pass {version} ({}): {:.0} MiB/s; stage (or update) {:.1} ms + commit \
         {:.1} ms per update, {} commit batches",
        if staged { "stage + commit" } else { "update" },
        (chunks * BLOCK as u64) as f64 / secs / f64::from(1u32 << 20),
        stage_time.get().as_secs_f64() * 1e3 / chunks as f64,
        commit_time.get().as_secs_f64() * 1e3 / chunks as f64,
        store.stats().commit_batches - batches
    );
    Ok((secs, cpu))
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; RUSAGE_THREAD reads only this thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.size_mib == 0 || args.size_mib % 4 != 0 {
        bail!("--size-mib must be a positive multiple of 4");
    }
    std::fs::create_dir_all(&args.dir).context("create the benchmark directory")?;
    let payload: Vec<u8> =
        (0..BLOCK).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    println!(
        "chunkbench: {} MiB in 4 MiB blocks at QD {}, 4 KiB random reads at QD {} for {} s, \
         {} reps, in {}",
        args.size_mib,
        args.seq_qd,
        args.rand_qd,
        args.rand_seconds,
        args.reps,
        args.dir.display()
    );
    let mut fio_runs = Vec::new();
    let mut store_runs = Vec::new();
    for rep in 0..args.reps {
        let fio = fio_figures(&args)?;
        eprintln!("rep {rep} fio:   {fio:?}");
        let (a, p) = (args.clone(), payload.clone());
        let store = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory((args.io_memory_mib << 20) as usize)
            .spawn(move || async move { store_figures(Rc::new(a), Rc::new(p)).await })
            .map_err(|e| anyhow::anyhow!("start the executor: {e}"))?
            .join()
            .map_err(|e| anyhow::anyhow!("executor thread: {e}"))??;
        eprintln!("rep {rep} store: {store:?}");
        fio_runs.push(fio);
        store_runs.push(store);
    }
    let pick = |runs: &[Figures], f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    type Row = (&'static str, fn(&Figures) -> f64, f64, &'static str, f64);
    let mib = 1.0 / f64::from(1u32 << 20);
    // A name starting "vs " compares the row above it with another fio baseline.
    let rows: [Row; 8] = [
        ("seq write 4 MiB", |f| f.write_bytes_per_sec, mib, "MiB/s", 0.90),
        ("seq rewrite 4 MiB", |f| f.rewrite_bytes_per_sec, mib, "MiB/s", 0.90),
        ("  vs fio end_fsync", |f| f.durable_rewrite_bytes_per_sec, mib, "MiB/s", 0.90),
        ("  vs fio fdatasync=1", |f| f.synced_rewrite_bytes_per_sec, mib, "MiB/s", 0.90),
        ("seq rewrite 4 MiB, stage+commit", |f| f.staged_rewrite_bytes_per_sec, mib, "MiB/s", 0.90),
        ("seq read 4 MiB", |f| f.read_bytes_per_sec, mib, "MiB/s", 0.90),
        ("  vs fio, no fixedbufs", |f| f.plain_read_bytes_per_sec, mib, "MiB/s", 0.90),
        ("rand read 4 KiB", |f| f.rand_read_iops, 1.0, "IOPS", 0.70),
    ];
    println!("{:<32} {:>12} {:>12} {:>7} {:>7}", "", "store", "fio", "ratio", "target");
    let mut spreads = Vec::new();
    for (name, f, scale, unit, target) in rows {
        let store = pick(&store_runs, f);
        let fio = pick(&fio_runs, f);
        println!(
            "{name:<32} {:>12.0} {:>12.0} {:>6.0}% {:>6.0}%  {unit}",
            store * scale,
            fio * scale,
            100.0 * store / fio,
            100.0 * target
        );
        // The spread of the per-repetition ratios (each store run against the fio run before it).
        let ratios: Vec<f64> =
            store_runs.iter().zip(&fio_runs).map(|(s, b)| 100.0 * f(s) / f(b)).collect();
        let (lo, hi) =
            ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        spreads.push(format!("{}: {lo:.0}-{hi:.0}%", name.trim()));
    }
    println!("ratio per repetition, min-max ({} reps): {}", store_runs.len(), spreads.join(", "));
    Ok(())
}
