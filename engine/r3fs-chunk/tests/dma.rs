//! The chunk store on the real device: O_DIRECT files through glommio's io_uring, in a temporary
//! directory of the machine's disk. A smaller model test with reopens, a corrupt chunk, a full
//! target, and the refusals at open (another owner, no O_DIRECT, too little RLIMIT_MEMLOCK).

#![cfg(feature = "glommio")]
#![allow(clippy::unwrap_used)]

mod common;

use common::{bytes, chunk, read_all, write};
use glommio::{LocalExecutorBuilder, Placement};
use r3fs_chunk::dma::{
    DeviceOpenError, DmaDevice, DmaDeviceConfig, check_memlock, check_memlock_against,
};
use r3fs_chunk::{ChunkStore, StageRequest, StoreConfig, StoreError, UpdateOp, UpdateOutcome};
use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, ErrorCode, InodeId};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

/// Devices are open only under a read guard, child processes start only under the write guard:
/// a child forked while a device is open holds its `LOCK` flock until it execs, so a test that
/// closes a device and reopens it at that moment would find it still locked.
static CHILDREN: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run_glommio<T: Send + 'static>(future: impl Future<Output = T> + 'static) -> T
where
{
    let _no_children = CHILDREN.read().unwrap_or_else(|p| p.into_inner());
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(DmaDeviceConfig::default().io_memory_bytes as usize)
        .make()
        .unwrap();
    executor.run(future)
}

fn config() -> StoreConfig {
    StoreConfig {
        capacity_bytes: 1 << 30,
        log_compaction_bytes_min: 1 << 20,
        log_extent_bytes: 1 << 20,
        grow_bytes_max: 8 << 20,
        ..StoreConfig::default()
    }
}

async fn open(dir: &Path, config: StoreConfig) -> ChunkStore<DmaDevice> {
    let device = DmaDevice::open(dir, &DmaDeviceConfig::default()).await.unwrap();
    let (store, flusher) = ChunkStore::open(device, config).await.unwrap();
    glommio::spawn_local(flusher.run()).detach();
    store
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("r3fs-chunk-dma-").tempdir().unwrap()
}

#[test]
fn model_with_reopens_on_the_real_disk() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run_glommio(async move {
        let seed = 0x5EED_0001u64;
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut model: HashMap<ChunkId, Vec<u8>> = HashMap::new();
        let mut store = open(&path, config()).await;
        let chunks: Vec<(ChunkId, u32)> = (0..8u64)
            .map(|i| (chunk(1 + i % 2, i / 2), if i % 2 == 0 { 64 << 10 } else { 1 << 20 }))
            .collect();
        let mut version = 0u64;
        for step in 0..300 {
            let (c, size) = chunks[rng.random_range(0..chunks.len())];
            version += 1;
            match rng.random_range(0..10) {
                0..=5 => {
                    let offset = if rng.random_bool(0.5) {
                        rng.random_range(0..size / 4096) * 4096
                    } else {
                        rng.random_range(0..size)
                    };
                    let len = rng.random_range(1..=(size - offset).min(300_000));
                    let data = bytes(version, len as usize);
                    let outcome = write(&store, c, version, size, offset, &data).await.unwrap();
                    assert!(matches!(outcome, UpdateOutcome::Committed(_)));
                    let entry = model.entry(c).or_default();
                    let end = offset as usize + data.len();
                    if entry.len() < end {
                        entry.resize(end, 0);
                    }
                    entry[offset as usize..end].copy_from_slice(&data);
                }
                6 | 7 => {
                    let len = rng.random_range(0..=size);
                    let request = StageRequest {
                        chunk: c,
                        version: ChunkVersion(version),
                        chain_version: ChainVersion(1),
                        chunk_size: size,
                        op: UpdateOp::Truncate { len },
                    };
                    store.update(request).await.unwrap();
                    model.entry(c).or_default().resize(len as usize, 0);
                }
                8 => {
                    store.remove_range(c.inode, c.index..c.index + 1).await.unwrap();
                    model.remove(&c);
                }
                _ => {
                    // Reopen: cleanly, or by just dropping the store (a restart without close:
                    // everything acknowledged is already durable).
                    if rng.random_bool(0.5) {
                        store.close().await.unwrap();
                    } else {
                        drop(store);
                        // The dropped store's flusher still holds the lock until it notices.
                        glommio::yield_if_needed().await;
                    }
                    store = reopen_until_unlocked(&path).await;
                }
            }
            let expected = model.get(&c);
            match (read_all(&store, c).await, expected) {
                (Ok(data), Some(model)) => assert_eq!(&data, model, "step {step} chunk {c}"),
                (Err(StoreError::ChunkNotFound(_)), None) => {}
                (other, _) => panic!("step {step} chunk {c}: {other:?}"),
            }
        }
        store.close().await.unwrap();
        let store = open(&path, config()).await;
        let mut used = 0;
        for (c, _) in &chunks {
            match (read_all(&store, *c).await, model.get(c)) {
                (Ok(data), Some(model)) => assert_eq!(&data, model),
                (Err(StoreError::ChunkNotFound(_)), None) => {}
                (other, _) => panic!("chunk {c} after reopen: {other:?}"),
            }
            if let Some(location) = store.locate(*c) {
                used += r3fs_chunk::format::SizeClass::for_len(location.data_bytes)
                    .unwrap()
                    .stride_bytes();
            }
        }
        assert_eq!(store.space().used_bytes, used, "no leaked blocks");
        store.close().await.unwrap();
    });
}

/// A dropped store's device (and its flock) lives on in its flusher task until that task sees
/// no more handles; reopening may have to wait a turn.
async fn reopen_until_unlocked(path: &Path) -> ChunkStore<DmaDevice> {
    for _ in 0..100 {
        match DmaDevice::open(path, &DmaDeviceConfig::default()).await {
            Ok(device) => {
                let (store, flusher) = ChunkStore::open(device, config()).await.unwrap();
                glommio::spawn_local(flusher.run()).detach();
                return store;
            }
            Err(DeviceOpenError::Locked { .. }) => {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the target stayed locked");
}

#[test]
fn corrupt_bytes_on_disk_give_chunk_corrupt() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run_glommio(async move {
        let store = open(&path, config()).await;
        let c = chunk(3, 1);
        let data = bytes(1, 1 << 20);
        write(&store, c, 1, 4 << 20, 0, &data).await.unwrap();
        let location = store.locate(c).unwrap();
        store.close().await.unwrap();
        // Flip one byte in the middle of unit 100, behind the store's back.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.join(&location.file_name))
            .unwrap();
        let at = location.data_offset + 100 * 4096 + 1234;
        let mut byte = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
        byte[0] ^= 0x20;
        std::os::unix::fs::FileExt::write_all_at(&file, &byte, at).unwrap();
        file.sync_all().unwrap();
        drop(file);
        let store = open(&path, config()).await;
        let err = store.read(c, 0, u32::MAX).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ChunkCorrupt, "{err}");
        let err = store.read(c, 100 * 4096 + 1000, 10).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ChunkCorrupt);
        let good = store.read(c, 0, 4096).await.unwrap();
        assert_eq!(good.data(), &data[..4096]);
        store.close().await.unwrap();
    });
}

#[test]
fn small_capacity_gives_no_space_and_keeps_data() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run_glommio(async move {
        let capacity = (64 << 20) + (64 << 10) + (8 << 20);
        let store = open(&path, StoreConfig { capacity_bytes: capacity, ..config() }).await;
        let mut kept = Vec::new();
        let mut failure = None;
        for index in 0..1000u64 {
            let data = bytes(index, 4 << 20);
            match write(&store, chunk(5, index), 1, 4 << 20, 0, &data).await {
                Ok(_) => kept.push((chunk(5, index), data)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let err = failure.expect("the target fills up");
        assert_eq!(err.code(), ErrorCode::NoSpace, "{err}");
        assert!(kept.len() >= 17, "{} chunks of 4 MiB fit in {capacity} bytes", kept.len());
        assert!(store.space().reserved_bytes <= capacity);
        for (c, data) in &kept {
            assert_eq!(&read_all(&store, *c).await.unwrap(), data);
        }
        // Free one chunk: writing works again.
        store.remove_range(InodeId(5), 0..1).await.unwrap();
        write(&store, chunk(6, 0), 1, 4 << 20, 0, &bytes(9, 4 << 20)).await.unwrap();
        store.close().await.unwrap();
    });
}

#[test]
fn a_second_owner_is_refused() {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    run_glommio(async move {
        let first = DmaDevice::open(&path, &DmaDeviceConfig::default()).await.unwrap();
        let err = DmaDevice::open(&path, &DmaDeviceConfig::default()).await.unwrap_err();
        assert!(matches!(err, DeviceOpenError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        DmaDevice::open(&path, &DmaDeviceConfig::default()).await.unwrap();
    });
}

#[test]
fn too_little_memlock_is_refused_by_name() {
    // The decision, for a process without CAP_IPC_LOCK under the common 8 MiB limit.
    let err = check_memlock_against(8 << 20, 10 << 20, false).unwrap_err();
    assert!(err.to_string().contains("RLIMIT_MEMLOCK"), "{err}");
    assert!(
        matches!(err, DeviceOpenError::MemlockTooLow { needed_bytes, .. } if needed_bytes > 30 << 20)
    );
    check_memlock_against(8 << 20, DmaDeviceConfig::default().io_memory_bytes, false).unwrap();
    // With CAP_IPC_LOCK only glommio's own minimum counts.
    check_memlock_against(8 << 20, 1 << 30, true).unwrap();
    assert!(check_memlock_against(256 << 10, 0, true).is_err());
    // And this process passes with the default configuration.
    check_memlock(DmaDeviceConfig::default().io_memory_bytes).unwrap();
}

#[test]
fn a_file_system_without_o_direct_is_refused() {
    // ramfs has no direct IO (tmpfs gained it in Linux 6.6, so it cannot serve here).
    let dir = temp_dir();
    let mount = dir.path().join("ramfs");
    std::fs::create_dir(&mount).unwrap();
    let mounted = {
        let _children = CHILDREN.write().unwrap_or_else(|p| p.into_inner());
        std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(&mount)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !mounted {
        println!(
            "skipped: cannot mount a ramfs here (needs root) to get a file system without O_DIRECT"
        );
        return;
    }
    let target = mount.clone();
    let result = std::panic::catch_unwind(|| {
        run_glommio(async move {
            let err = DmaDevice::open(&target, &DmaDeviceConfig::default()).await.unwrap_err();
            assert!(matches!(err, DeviceOpenError::DirectIoUnsupported { .. }), "{err}");
            assert!(err.to_string().contains("O_DIRECT"), "{err}");
        })
    });
    {
        let _children = CHILDREN.write().unwrap_or_else(|p| p.into_inner());
        let _ = std::process::Command::new("umount").arg(&mount).status();
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
