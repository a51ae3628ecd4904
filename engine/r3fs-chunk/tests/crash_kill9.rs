//! A real process is killed with SIGKILL in the middle of writing, on the real disk.
//!
//! The test spawns this test binary again with `R3FS_CHUNK_KILL9_DIR` set; in that child,
//! `kill9_child_entry_point` opens the store and updates chunks forever, printing
//! `ACK <chunk> <version> <len> <crc>` after each update is acknowledged (durable). The parent
//! kills it at a random moment, reopens the store and checks that every chunk is at its last
//! acknowledged version or at the one update that was in flight, with exactly the bytes and
//! checksum that version must have. Several rounds run on the same directory, each child
//! resuming where the store is.
//!
//! Every update is a deterministic function of (chunk, version) and the chunk's previous
//! content, so the parent recomputes any version's bytes by replaying from version 1. The mix
//! covers in-place appends (aligned and not), copy-on-write overwrites, full replaces and
//! truncations.

#![cfg(feature = "glommio")]
#![allow(clippy::unwrap_used)]

mod common;

use common::chunk;
use glommio::{LocalExecutorBuilder, Placement};
use r3fs_chunk::dma::{DmaDevice, DmaDeviceConfig};
use r3fs_chunk::{
    ChunkStore, Device, StageRequest, StoreConfig, StoreError, UpdateOp, UpdateOutcome,
};
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "R3FS_CHUNK_KILL9_DIR";
const CHUNKS: u64 = 8;
const CHUNK_SIZE: u32 = 1 << 20;

fn config() -> StoreConfig {
    StoreConfig {
        log_compaction_bytes_min: 1 << 20,
        log_extent_bytes: 1 << 20,
        grow_bytes_max: 16 << 20,
        ..StoreConfig::default()
    }
}

fn target(i: u64) -> ChunkId {
    chunk(42, i)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What version `version` of chunk `i` does to the content before it.
enum Step {
    Write { offset: u32, data: Vec<u8> },
    Truncate { len: u32 },
    Replace { data: Vec<u8> },
}

fn step(i: u64, version: u64, before: &[u8]) -> Step {
    let h = mix(i << 32 ^ version);
    let len = 1 + (h >> 8) as u32 % (192 << 10);
    let fill = |len: u32| common::bytes(h ^ 0xABCD, len as usize);
    let end = before.len() as u32;
    match h % 10 {
        // Appends: at the end, at the next unit boundary, or past a hole.
        0..=3 => {
            let offset = match (h >> 40) % 3 {
                0 => end,
                1 => end.div_ceil(4096) * 4096,
                _ => end + (h >> 44) as u32 % 20_000,
            };
            if offset >= CHUNK_SIZE {
                return Step::Truncate { len: (h >> 20) as u32 % CHUNK_SIZE };
            }
            Step::Write { offset, data: fill(len.min(CHUNK_SIZE - offset)) }
        }
        4 | 5 => {
            let offset = (h >> 36) as u32 % end.max(1);
            Step::Write { offset, data: fill(len.min(CHUNK_SIZE - offset)) }
        }
        6 | 7 => Step::Replace { data: fill(len) },
        _ => Step::Truncate { len: (h >> 20) as u32 % (end + 50_000).min(CHUNK_SIZE) },
    }
}

fn apply(before: &[u8], step: &Step) -> Vec<u8> {
    let mut after = before.to_vec();
    match step {
        Step::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if after.len() < end {
                after.resize(end, 0);
            }
            after[*offset as usize..end].copy_from_slice(data);
        }
        Step::Truncate { len } => after.resize(*len as usize, 0),
        Step::Replace { data } => after = data.clone(),
    }
    after
}

/// Content of chunk `i` at `version` (0 = absent, treated as empty).
fn content_at(i: u64, version: u64, cache: &mut HashMap<(u64, u64), Vec<u8>>) -> Vec<u8> {
    if version == 0 {
        return Vec::new();
    }
    if let Some(c) = cache.get(&(i, version)) {
        return c.clone();
    }
    let mut v = version;
    while v > 0 && !cache.contains_key(&(i, v - 1)) {
        v -= 1;
    }
    let mut content = if v == 0 { Vec::new() } else { cache[&(i, v - 1)].clone() };
    for w in v.max(1)..=version {
        content = apply(&content, &step(i, w, &content));
        cache.insert((i, w), content.clone());
    }
    content
}

fn request<D: Device>(
    store: &ChunkStore<D>,
    i: u64,
    version: u64,
    step: Step,
) -> StageRequest<D::Buf> {
    let buf = |data: &[u8]| {
        let mut buf = store.alloc_buf(data.len());
        buf.data_mut().copy_from_slice(data);
        buf
    };
    let op = match step {
        Step::Write { offset, data } => {
            UpdateOp::Write { offset, crc: crc32c::crc32c(&data), data: buf(&data) }
        }
        Step::Truncate { len } => UpdateOp::Truncate { len },
        Step::Replace { data } => {
            UpdateOp::Replace { crc: crc32c::crc32c(&data), data: buf(&data) }
        }
    };
    StageRequest {
        chunk: target(i),
        version: ChunkVersion(version),
        chain_version: ChainVersion(1),
        chunk_size: CHUNK_SIZE,
        op,
    }
}

fn executor() -> glommio::LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(DmaDeviceConfig::default().io_memory_bytes as usize)
        .make()
        .unwrap()
}

async fn open(dir: &Path) -> ChunkStore<DmaDevice> {
    let device = DmaDevice::open(dir, &DmaDeviceConfig::default()).await.unwrap();
    let (store, flusher) = ChunkStore::open(device, config()).await.unwrap();
    glommio::spawn_local(flusher.run()).detach();
    store
}

/// Not a test of its own: the body of the child process (returns at once without the env var).
#[test]
fn kill9_child_entry_point() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    executor().run(async move {
        let store = open(Path::new(&dir)).await;
        let mut contents: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
        for i in 0..CHUNKS {
            let (version, content) = match store.read(target(i), 0, u32::MAX).await {
                Ok(read) => (read.version.0, read.data().to_vec()),
                Err(StoreError::ChunkNotFound(_)) => (0, Vec::new()),
                Err(e) => panic!("{e}"),
            };
            contents.insert(i, (version, content));
        }
        let mut stdout = std::io::stdout();
        writeln!(stdout, "READY").unwrap();
        stdout.flush().unwrap();
        for n in 0u64.. {
            let i = mix(n ^ 0x77) % CHUNKS;
            let (version, content) = contents.get_mut(&i).unwrap();
            let next = *version + 1;
            let step = step(i, next, content);
            let after = apply(content, &step);
            let outcome = store.update(request(&store, i, next, step)).await.unwrap();
            assert!(matches!(outcome, UpdateOutcome::Committed(_)), "{outcome:?}");
            *version = next;
            *content = after;
            writeln!(stdout, "ACK {i} {next} {} {:08x}", content.len(), crc32c::crc32c(content))
                .unwrap();
            stdout.flush().unwrap();
        }
    });
}

#[test]
fn kill_9_mid_write_loses_no_acknowledged_update() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("r3fs-chunk-kill9-").tempdir().unwrap();
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cache = HashMap::new();
    let mut total_acks = 0;
    for round in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_child_entry_point", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child to be writing, then let it run a random while and kill it.
        // (The harness prints "test <name> ... " on the same line before the child's output.)
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).expect("the child gets ready");
            if line.ends_with("READY") {
                break;
            }
            assert!(Instant::now() < deadline, "the child never got ready");
        }
        let run_for = Duration::from_millis(rng.random_range(100..700));
        let started = Instant::now();
        while started.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed, not finished");
        reader.join().unwrap();
        let mut acked: HashMap<u64, (u64, usize, u32)> = HashMap::new();
        for line in rx.try_iter() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() != Some(&"ACK") {
                continue;
            }
            let i: u64 = parts[1].parse().unwrap();
            let version: u64 = parts[2].parse().unwrap();
            let len: usize = parts[3].parse().unwrap();
            let crc = u32::from_str_radix(parts[4], 16).unwrap();
            acked.insert(i, (version, len, crc));
            total_acks += 1;
        }
        println!("round {round}: killed after {run_for:?}, {} chunks acknowledged", acked.len());
        let path = dir.path().to_path_buf();
        let found: Vec<(u64, u64, Vec<u8>, u32)> = executor().run(async move {
            let store = open(&path).await;
            let mut found = Vec::new();
            for i in 0..CHUNKS {
                match store.read(target(i), 0, u32::MAX).await {
                    Ok(read) => {
                        let meta = store.metadata(target(i)).unwrap().committed.unwrap();
                        assert_eq!(meta.crc, read.crc);
                        found.push((i, read.version.0, read.data().to_vec(), read.crc));
                    }
                    Err(StoreError::ChunkNotFound(_)) => found.push((i, 0, Vec::new(), 0)),
                    Err(e) => panic!("chunk {i} unreadable after kill -9: {e}"),
                }
            }
            store.close().await.unwrap();
            found
        });
        for (i, version, data, crc) in found {
            let floor = acked.get(&i).map_or(0, |a| a.0);
            // The child updates one chunk at a time: at most one version past the last ack.
            assert!(
                version == floor || version == floor + 1 || (floor == 0 && version > 0),
                "chunk {i}: version {version} after acknowledged version {floor}"
            );
            if let Some(&(v, len, acked_crc)) = acked.get(&i)
                && version == v
            {
                assert_eq!((data.len(), crc), (len, acked_crc), "chunk {i} v{v} as acknowledged");
            }
            let expected = content_at(i, version, &mut cache);
            assert_eq!(data.len(), expected.len(), "chunk {i} v{version} length");
            assert!(data == expected, "chunk {i} v{version} bytes differ from their definition");
            assert_eq!(crc, crc32c::crc32c(&expected));
        }
    }
    assert!(total_acks > 0, "the children acknowledged updates before being killed");
}
