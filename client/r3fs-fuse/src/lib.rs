//! r3fs FUSE daemon: mounts an r3fs cluster as a POSIX file system. The only crate that names
//! fuser.
//!
//! Key types:
//! - [`FuseConfig`]: the daemon's config (`--config fuse.toml`).
//! - [`fs::R3fs`]: the `fuser::Filesystem`: every namespace operation is one meta call (lookup,
//!   getattr, setattr, mkdir, rmdir, unlink, rename, link, symlink, readlink, readdir, statfs,
//!   create, open); file bytes move through the client library's `File` straight to storage.
//! - [`run`]: checks the mount point and /dev/fuse, connects, mounts, prints the readiness line
//!   [`READY_PREFIX`]` <mountpoint>` once the mount answers, and unmounts on SIGTERM/SIGINT.
//!
//! Invariants:
//! - The event-loop threads never wait on the network: each request becomes a tokio task that
//!   replies when done, so one slow request does not hold up others, and writes to one file at
//!   different offsets run in parallel.
//! - Permission checks are the kernel's (`default_permissions`, against the attributes meta
//!   returns); meta acts as the token's user. New inodes are given to the calling user.
//! - A written length reaches meta on flush (every close), fsync and release, and periodically
//!   (the client library); until then this mount reports the written end as the size.
//!
//! Design note: docs/design/fuse.md.

pub mod attr;
pub mod config;
pub mod fs;
pub mod metrics;

pub use config::FuseConfig;

use anyhow::{Context, bail};
use fuser::{MountOption, SessionACL};
use r3fs_client::FileClient;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The line printed (on stdout) once the mount answers: `r3fs-fuse mounted <mountpoint>`.
pub const READY_PREFIX: &str = "r3fs-fuse mounted";
/// The FUSE super block magic (statfs f_type of a FUSE mount).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// How long the mount may take to answer before start-up fails.
const MOUNT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// After a lazy unmount (the mount was busy at shutdown), how long to wait for the last user.
const BUSY_UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// Refuses a mount point that cannot work, with a message that says why.
pub fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container \
             the device (--device /dev/fuse)"
        );
    }
    let metadata = match std::fs::metadata(mountpoint) {
        Ok(metadata) => metadata,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mount point {} is a dead FUSE mount (its daemon exited): unmount it first \
             (umount -l {})",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("mount point {}", mountpoint.display()));
        }
    };
    if !metadata.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let parent = mountpoint.canonicalize()?.parent().map(Path::to_path_buf);
    if let Some(parent) = parent {
        let parent = std::fs::metadata(&parent)
            .with_context(|| format!("parent of the mount point {}", parent.display()))?;
        if parent.dev() != metadata.dev() {
            bail!(
                "mount point {} is busy: something is already mounted there",
                mountpoint.display()
            );
        }
    }
    Ok(())
}

fn statfs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `buf` a writable statfs.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut buf) };
    (rc == 0).then_some(buf.f_type)
}

/// Runs the daemon until SIGTERM/SIGINT (or an external unmount).
pub fn run(config: FuseConfig) -> anyhow::Result<()> {
    config.validate().map_err(|errors| anyhow::anyhow!("invalid config: {}", errors.join("; ")))?;
    let client_config = config.client_config().map_err(anyhow::Error::msg)?;
    let mountpoint = config.mountpoint.clone();
    check_mountpoint(&mountpoint)?;
    // The `/metrics` endpoint and push loop run on their own thread until `_metrics` drops.
    let _metrics = r3fs_metrics::Exporter::start(
        &config.metrics,
        r3fs_metrics::global(),
        "fuse",
        &format!("fuse-{}", mountpoint.display()),
    )
    .context("start the metrics exporter")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .thread_name("r3fs-fuse-io")
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let files = runtime
        .block_on(FileClient::connect(client_config))
        .context("connect to mgmtd (routing info)")?;
    // Fail now, with a clear message, if meta is unreachable or refuses the token.
    runtime
        .block_on(files.meta().stat_fs(r3fs_rpc::meta::StatFsRequest {}))
        .context("reach the meta service")?;

    let ring_files = files.clone();
    let filesystem = fs::R3fs::new(
        files,
        fs::FsOptions {
            attr_timeout: Duration::from_millis(config.attr_timeout_ms),
            entry_timeout: Duration::from_millis(config.entry_timeout_ms),
            max_write: config.max_write,
        },
        runtime.handle().clone(),
    );
    let ring_hooks = filesystem.ring_hooks();
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        MountOption::FSName("r3fs".into()),
        MountOption::Subtype("r3fs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoAtime,
    ];
    fuse_config.acl = if config.allow_other { SessionACL::All } else { SessionACL::Owner };
    fuse_config.n_threads = Some(config.threads);
    fuse_config.clone_fd = true;
    let session = fuser::Session::new(filesystem, &mountpoint, &fuse_config)
        .with_context(|| format!("mount on {}", mountpoint.display()))?;
    let notifier = session.notifier();
    let background = session.spawn().context("start the FUSE event loops")?;

    let started = Instant::now();
    while statfs_type(&mountpoint) != Some(FUSE_SUPER_MAGIC) {
        if started.elapsed() > MOUNT_ANSWER_TIMEOUT || background.guard.is_finished() {
            bail!("the mount on {} did not answer", mountpoint.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rings = start_rings(&runtime, ring_files, ring_hooks, notifier, &mountpoint);
    println!("{READY_PREFIX} {}", mountpoint.display());
    let _ = std::io::stdout().flush();
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");

    let signal = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("watch SIGINT")?;
        loop {
            tokio::select! {
                _ = term.recv() => return anyhow::Ok(Some("SIGTERM")),
                _ = int.recv() => return anyhow::Ok(Some("SIGINT")),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if background.guard.is_finished() {
                        return anyhow::Ok(None);
                    }
                }
            }
        }
    })?;
    if let Some(rings) = rings {
        runtime.block_on(rings.shutdown());
    }
    match signal {
        Some(signal) => {
            tracing::info!("{signal}: unmounting {}", mountpoint.display());
            unmount(background, &mountpoint)?;
        }
        None => {
            tracing::info!("{} was unmounted", mountpoint.display());
            background.join().context("the FUSE event loop failed")?;
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    eprintln!("r3fs-fuse unmounted {}", mountpoint.display());
    Ok(())
}

/// Starts the USRBIO ring server of this mount (docs/usrbio.md): applications find it from the
/// mount's device number and name files by fds opened here (FUSE inode numbers are r3fs inode
/// ids); `hooks` keep the sizes this mount reports true after ring writes. Failing to start it
/// only disables ring I/O.
fn start_rings(
    runtime: &tokio::runtime::Runtime,
    files: FileClient,
    hooks: fs::RingHooks,
    notifier: fuser::Notifier,
    mountpoint: &Path,
) -> Option<r3fs_usrbio::RingServer> {
    let dev = match std::fs::metadata(mountpoint) {
        Ok(metadata) => metadata.dev(),
        Err(error) => {
            tracing::warn!(
                "usrbio ring server not started: stat {}: {error}",
                mountpoint.display()
            );
            return None;
        }
    };
    let _entered = runtime.enter();
    let resolver = hooks.for_mount(dev, notifier);
    let config = r3fs_usrbio::RingServerConfig::for_mount_dev(dev);
    match r3fs_usrbio::RingServer::start(config, files, std::sync::Arc::new(resolver)) {
        Ok(server) => Some(server),
        Err(error) => {
            tracing::warn!("usrbio ring server not started: {error}");
            None
        }
    }
}

/// Unmounts; if the mount is busy (files open), detaches it lazily and waits a little for the
/// last user before exiting anyway (the kernel then fails their calls with ENOTCONN).
fn unmount(background: fuser::BackgroundSession, mountpoint: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string.
    if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!("unmount of {} failed ({error}): detaching it", mountpoint.display());
        // SAFETY: as above.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = std::io::Error::last_os_error();
            bail!("cannot unmount {}: {error}", mountpoint.display());
        }
        let started = Instant::now();
        while !background.guard.is_finished() {
            if started.elapsed() > BUSY_UNMOUNT_WAIT {
                tracing::warn!("files are still open on the detached mount; exiting anyway");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    background.join().context("the FUSE event loop failed")
}
