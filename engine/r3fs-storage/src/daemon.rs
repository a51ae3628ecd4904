//! Start-up, the threads of the daemon, and clean shutdown.
//!
//! Start-up refuses, with a message naming the cause, when:
//! - RLIMIT_MEMLOCK is below what the executors register (`cores x (3 x io_memory_bytes +
//!   512 KiB)`, [`StorageConfig::memlock_needed_bytes`]);
//! - a target path's file system does not do O_DIRECT (4 KiB aligned write and read-back);
//! - a target directory is locked by another process (its chunk store's `LOCK` flock);
//! - a target's store cannot be opened (corrupt metadata, IO errors).
//!
//! Then: shards start (one glommio executor each, opening their existing targets), the control
//! thread registers with mgmtd, and [`Daemon::start`] returns; the binary prints its readiness
//! line and waits for SIGTERM/SIGINT, then [`Daemon::stop`] drains and closes every store.

use crate::buf::AlignedBuf;
use crate::config::StorageConfig;
use crate::control::{self, ControlSetup};
use crate::routing::shard_of;
use crate::shard::{self, ShardCommand, ShardSetup, parse_target_dir_name};
use futures::channel::mpsc;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use r3fs_types::{NodeId, TargetId};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// How long a shard may take to open its existing targets.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Commands queued per shard (routing snapshots, writability, shutdown).
const SHARD_COMMANDS_MAX: usize = 64;
/// Report batches queued from all shards to the control thread.
const SHARD_EVENTS_MAX: usize = 256;
const PROBE_FILE: &str = ".r3fs-storage-odirect-probe";
/// Space held back on each target path for the chunk stores' metadata (see [`hold_reserve`]).
const RESERVE_FILE: &str = ".r3fs-storage-metadata-reserve";

/// Why the daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "RLIMIT_MEMLOCK is {limit_bytes} bytes, but the daemon registers {needed_bytes} bytes of \
         IO memory with io_uring ({cores} cores x (3 rings x io_memory_bytes {io_memory_bytes} + \
         512 KiB)); raise the limit (ulimit -l, LimitMEMLOCK=) or lower io_memory_bytes or cores"
    )]
    MemlockTooLow { limit_bytes: u64, needed_bytes: u64, cores: u32, io_memory_bytes: u64 },
    #[error(
        "target path {path} does not support O_DIRECT ({detail}); put targets on a local disk \
         file system such as ext4 or xfs"
    )]
    DirectIoUnsupported { path: PathBuf, detail: String },
    #[error("target path {path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: io::Error },
    #[error("{0}")]
    Shard(String),
    #[error("{0}")]
    Control(String),
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    shards: Vec<ExecutorJoinHandle<()>>,
    commands: Vec<mpsc::Sender<ShardCommand>>,
    control: Option<std::thread::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The data-plane address of each shard.
    pub addresses: Vec<SocketAddr>,
    pub node: NodeId,
}

/// Checks RLIMIT_MEMLOCK against what the executors register.
pub fn check_memlock(config: &StorageConfig) -> Result<(), StartError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(StartError::Io {
            path: PathBuf::new(),
            op: "reading RLIMIT_MEMLOCK",
            source: io::Error::last_os_error(),
        });
    }
    let needed = config.memlock_needed_bytes();
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        return Err(StartError::MemlockTooLow {
            limit_bytes: limit.rlim_cur,
            needed_bytes: needed,
            cores: config.cores,
            io_memory_bytes: config.io_memory_bytes,
        });
    }
    Ok(())
}

/// Writes and reads back 4 KiB with O_DIRECT in `path` (plain syscalls: glommio silently falls
/// back to buffered IO on file systems without O_DIRECT, so it cannot be the judge).
pub fn probe_direct_io(path: &Path) -> Result<(), StartError> {
    let unsupported =
        |detail: String| StartError::DirectIoUnsupported { path: path.to_path_buf(), detail };
    // The probe file is kept between starts (never truncated or removed): a later probe then
    // overwrites a block the file system already allocated, so a daemon restarted on a full
    // disk still passes (it must: reads and removals work on a full disk).
    let probe = path.join(PROBE_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .map_err(|e| unsupported(format!("open with O_DIRECT: {e}")))?;
    let mut buf = AlignedBuf::zeroed(4096);
    for (i, byte) in buf.as_mut().iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    let result = file
        .write_all_at(buf.as_ref(), 0)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                // The file system took the O_DIRECT open; it has no block for the probe.
                StartError::Io {
                    path: path.to_path_buf(),
                    op: "probing O_DIRECT (disk full)",
                    source: e,
                }
            } else {
                unsupported(format!("4 KiB aligned O_DIRECT write: {e}"))
            }
        })
        .and_then(|()| {
            buf.as_mut().fill(0);
            file.read_exact_at(buf.as_mut(), 0)
                .map_err(|e| unsupported(format!("4 KiB aligned O_DIRECT read: {e}")))
        })
        .and_then(|()| {
            if buf.as_ref().iter().enumerate().all(|(i, b)| *b == (i % 251) as u8) {
                Ok(())
            } else {
                Err(unsupported("O_DIRECT read back different bytes".into()))
            }
        });
    drop(file);
    result
}

/// Bytes to hold back on `path` so its targets' stores can open again once data filled the disk:
/// opening a store writes a fresh checkpoint of its metadata log (at most the current log's size)
/// plus a zero-filled extent before it deletes the old log, so each target needs about its log's
/// size plus two extents at the next start (one more target's worth is kept for a new one).
fn reserve_bytes(config: &StorageConfig, path: &Path) -> u64 {
    let extent = config.store.log_extent_bytes;
    let mut bytes = 2 * extent;
    let targets = std::fs::read_dir(path).into_iter().flatten().flatten();
    for target in
        targets.filter(|e| e.file_name().to_str().and_then(parse_target_dir_name).is_some())
    {
        bytes += 2 * extent;
        for file in std::fs::read_dir(target.path()).into_iter().flatten().flatten() {
            let name = file.file_name();
            let is_log =
                name.to_str().is_some_and(|n| n.starts_with("meta-") && n.ends_with(".log"));
            if is_log && let Ok(meta) = file.metadata() {
                bytes += meta.len();
            }
        }
    }
    bytes
}

/// Frees the metadata reserve of `path` so the stores can open on a full disk.
fn release_reserve(path: &Path) -> Result<(), StartError> {
    match std::fs::remove_file(path.join(RESERVE_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StartError::Io {
            path: path.to_path_buf(),
            op: "removing the metadata reserve",
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Allocates the metadata reserve of `path` (`fallocate`, so the blocks are really taken) once
/// the stores are open. Data filling the disk then stops at `NoSpace` while the reserve is still
/// there for the next start ([`release_reserve`]). On a disk already too full, as much as fits
/// is held (halving down to one log extent) and the shortfall is logged.
fn hold_reserve(config: &StorageConfig, path: &Path) {
    let wanted = reserve_bytes(config, path);
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path.join(RESERVE_FILE))
    {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot create the metadata reserve");
            return;
        }
    };
    let mut bytes = wanted;
    loop {
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        if rc == 0 {
            if bytes < wanted {
                tracing::warn!(path = %path.display(), held = bytes, wanted, "the disk is nearly full: the metadata reserve is short");
            }
            return;
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOSPC) || bytes <= config.store.log_extent_bytes {
            tracing::warn!(path = %path.display(), %error, wanted, "no metadata reserve: a restart on a full disk may fail to open its stores");
            return;
        }
        bytes /= 2;
    }
}

/// Existing targets under the configured paths: (target, directory, disk index).
pub fn find_targets(config: &StorageConfig) -> Result<Vec<(TargetId, PathBuf, u32)>, StartError> {
    let mut found = Vec::new();
    for (disk, path) in config.target_paths.iter().enumerate() {
        let io_err = |op| move |source| StartError::Io { path: path.clone(), op, source };
        for entry in std::fs::read_dir(path).map_err(io_err("listing targets"))? {
            let entry = entry.map_err(io_err("listing targets"))?;
            let Some(target) = entry.file_name().to_str().and_then(parse_target_dir_name) else {
                continue;
            };
            if entry.file_type().map_err(io_err("listing targets"))?.is_dir() {
                found.push((target, entry.path(), disk as u32));
            }
        }
    }
    found.sort();
    Ok(found)
}

impl Daemon {
    /// Runs the start-up checks, starts the shards and the control thread, and returns once every
    /// target is open and the node is registered with mgmtd.
    pub fn start(config: StorageConfig) -> Result<Daemon, StartError> {
        check_memlock(&config)?;
        for path in &config.target_paths {
            std::fs::create_dir_all(path).map_err(|source| StartError::Io {
                path: path.clone(),
                op: "creating the target path",
                source,
            })?;
            probe_direct_io(path)?;
            release_reserve(path)?;
        }
        let existing = find_targets(&config)?;
        let cores = config.cores as usize;
        let host: IpAddr = config.listen_host.parse().map_err(|_| {
            StartError::Shard(format!("listen_host {:?} is not an IP", config.listen_host))
        })?;
        let (events_tx, events_rx) = mpsc::channel(SHARD_EVENTS_MAX);
        let mut shards = Vec::with_capacity(cores);
        let mut commands = Vec::with_capacity(cores);
        let mut readies = Vec::with_capacity(cores);
        let mut applied_routing: Vec<Arc<AtomicU64>> = Vec::with_capacity(cores);
        for index in 0..cores {
            let applied = Arc::new(AtomicU64::new(0));
            applied_routing.push(applied.clone());
            let (command_tx, command_rx) = mpsc::channel(SHARD_COMMANDS_MAX);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let port = if config.listen_port_base == 0 {
                0
            } else {
                config.listen_port_base + index as u16
            };
            let setup = ShardSetup {
                index,
                config: config.clone(),
                node: NodeId(config.node_id),
                existing: existing
                    .iter()
                    .filter(|(t, _, _)| shard_of(*t, cores) == index)
                    .cloned()
                    .collect(),
                listen: SocketAddr::new(host, port),
                commands: command_rx,
                events: events_tx.clone(),
                applied_routing: applied,
                ready: ready_tx,
            };
            let placement =
                if config.pin_cores { Placement::Fixed(index) } else { Placement::Unbound };
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("r3fs-shard-{index}"))
                .io_memory(config.io_memory_bytes as usize)
                .spawn(move || shard::run(setup))
                .map_err(|e| StartError::Shard(format!("starting shard {index}: {e}")))?;
            shards.push(handle);
            commands.push(command_tx);
            readies.push(ready_rx);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut daemon = Daemon {
            shards,
            commands,
            control: None,
            stop: stop_tx,
            addresses: Vec::new(),
            node: NodeId(config.node_id),
        };
        for (index, ready) in readies.into_iter().enumerate() {
            let result = ready
                .recv_timeout(SHARD_START_TIMEOUT)
                .map_err(|_| format!("shard {index} did not start within {SHARD_START_TIMEOUT:?}"))
                .and_then(|r| r);
            match result {
                Ok(address) => daemon.addresses.push(address),
                Err(message) => {
                    daemon.stop();
                    return Err(StartError::Shard(message));
                }
            }
        }
        for path in &config.target_paths {
            hold_reserve(&config, path);
        }
        let (registered_tx, registered_rx) = std::sync::mpsc::channel();
        let setup = ControlSetup {
            config: config.clone(),
            shard_addresses: daemon.addresses.clone(),
            commands: daemon.commands.clone(),
            events: events_rx,
            applied_routing,
            registered: registered_tx,
            stop: stop_rx,
        };
        let control = std::thread::Builder::new()
            .name("r3fs-control".into())
            .spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            tracing::error!(%error, "cannot build the control runtime");
                            return;
                        }
                    };
                runtime.block_on(control::run(setup));
            })
            .map_err(|e| StartError::Control(format!("starting the control thread: {e}")))?;
        daemon.control = Some(control);
        // Waits as long as mgmtd is unreachable: the control thread keeps retrying.
        match registered_rx.recv() {
            Ok(Ok(())) => Ok(daemon),
            Ok(Err(message)) => {
                daemon.stop();
                Err(StartError::Control(message))
            }
            Err(_) => {
                daemon.stop();
                Err(StartError::Control("the control thread stopped before registering".into()))
            }
        }
    }

    /// Drains every shard (bounded by `shutdown_drain_ms`), makes every store durable and closes
    /// it, then stops the control thread.
    pub fn stop(&mut self) {
        for command in &mut self.commands {
            // A full queue: the shard is behind; wait for room rather than skip the shutdown.
            let mut command = command.clone();
            let _ = futures::executor::block_on(futures::SinkExt::send(
                &mut command,
                ShardCommand::Shutdown,
            ));
        }
        for shard in self.shards.drain(..) {
            if let Err(error) = shard.join() {
                tracing::error!(%error, "a shard ended abnormally");
            }
        }
        let _ = self.stop.send(true);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it starts afterwards) so
/// [`wait_for_signal`] can take them synchronously.
pub fn block_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: pthread_sigmask with a valid set and a null old-set pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 { Err(io::Error::from_raw_os_error(rc)) } else { Ok(()) }
}

/// Waits for SIGTERM or SIGINT (blocked by [`block_signals`]); returns the signal number.
pub fn wait_for_signal() -> io::Result<i32> {
    let set = signal_set();
    let mut signal = 0;
    // SAFETY: sigwait with a valid set and a pointer to our own int.
    let rc = unsafe { libc::sigwait(&set, &mut signal) };
    if rc != 0 { Err(io::Error::from_raw_os_error(rc)) } else { Ok(signal) }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set we own; sigaddset adds valid signal numbers.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directories_are_found_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["target-3", "target-12", "target-x", "other", "target-0"] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        std::fs::write(dir.path().join("target-99"), b"a file, not a target").expect("write");
        let config = StorageConfig {
            target_paths: vec![dir.path().to_path_buf()],
            ..StorageConfig::default()
        };
        let found: Vec<u64> =
            find_targets(&config).expect("list").iter().map(|(t, _, _)| t.0).collect();
        assert_eq!(found, vec![3, 12]);
    }

    #[test]
    fn direct_io_probe_on_tmpfs_is_refused() {
        // /dev/shm is tmpfs on Linux: no O_DIRECT.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            println!("skipped: no /dev/shm on this machine");
            return;
        }
        let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
        match probe_direct_io(dir.path()) {
            Err(StartError::DirectIoUnsupported { detail, .. }) => {
                assert!(detail.contains("O_DIRECT"), "{detail}")
            }
            other => println!("skipped: /dev/shm accepted O_DIRECT here ({other:?})"),
        }
        let disk = tempfile::tempdir().expect("tempdir");
        if let Err(error) = probe_direct_io(disk.path()) {
            println!("note: the temp dir does not support O_DIRECT either: {error}");
        }
    }
}
