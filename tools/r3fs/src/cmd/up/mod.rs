//! `r3fs up`: a whole cluster on this machine in one command. Starts r3fs-mgmtd, the storage
//! daemons, r3fs-meta and (with `--mount`) r3fs-fuse as child processes with all state under one
//! data directory; initializes the cluster on the first run (admin token, targets, chains, chain
//! table, root layout) and reuses everything on later runs; prints what runs where and
//! `r3fs cluster ready`; stops everything in reverse order on Ctrl-C or SIGTERM; stops everything
//! and exits non-zero when a daemon dies. See docs/design/local-cluster.md.

mod child;
mod plan;

use super::ctx::{Ctx, write_secret_file};
use anyhow::{Context, anyhow, bail};
use child::{Daemon, POLL_INTERVAL_MS};
use clap::Args;
use plan::{ClusterShape, Layout, ShapeFlags};
use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_rpc::{admin, error_from_status};
use r3fs_types::ErrorCode;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Bounded waits of each start-up step (a cold machine with 2 cores is slow; none of these are
/// expected to take long).
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Grace given to each daemon at stop before SIGKILL (storage drains and syncs its stores).
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How often a waiting step prints that it is still waiting.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory holding all state: configs, logs, the admin token, mgmtd's and meta's stores,
    /// and every storage target. Created if missing; a later run reuses it.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Also mount the file system here (runs r3fs-fuse; needs /dev/fuse, usually root).
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
    /// Storage daemons to run [first run: 3].
    #[arg(long, value_name = "N")]
    pub storage_nodes: Option<u32>,
    /// Replicas per chain [first run: 3].
    #[arg(long, value_name = "N")]
    pub replication: Option<u32>,
    /// Targets on each storage node [first run: the smallest value >= 4 that forms whole chains].
    #[arg(long, value_name = "N")]
    pub targets_per_node: Option<u32>,
    /// Chunk size of the root directory's layout [first run: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u32>,
    /// Fixed ports: mgmtd on PORT, meta on PORT+1, storage node i's data plane on PORT+10+i.
    /// 0 (the default) picks free ports at every start.
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub base_port: u16,
    /// Longest wait for the whole cluster to serve (chains may need a resync after a restart).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub ready_timeout: u64,
}

// ---- signals: Ctrl-C and SIGTERM set a flag every wait checks ----

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Only async-signal-safe work: two atomic stores.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe; sigaction's
        // struct is fully initialized (zeroed, then the handler set).
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error()).context("install the signal handler");
        }
    }
    Ok(())
}

fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

// ---- binaries ----

/// The daemons `up` runs: (binary name, cargo package).
const MGMTD_BIN: (&str, &str) = ("r3fs-mgmtd", "r3fs-mgmtd");
const META_BIN: (&str, &str) = ("r3fs-meta", "r3fs-meta");
const STORAGE_BIN: (&str, &str) = ("r3fs-storage", "r3fs-storage");
const FUSE_BIN: (&str, &str) = ("r3fs-fuse", "r3fs-fuse");

/// Sibling binaries live next to the running `r3fs` (cargo puts every workspace binary of a
/// profile in one directory; an install copies them together).
fn locate(dir: &Path, (bin, package): (&str, &str)) -> anyhow::Result<PathBuf> {
    let path = dir.join(bin);
    if path.is_file() {
        return Ok(path);
    }
    bail!(
        "{bin} not found at {}: r3fs up runs the daemons that sit next to the r3fs binary. Build \
         them all with `cargo build --release --workspace --bins` (or this one with `cargo build \
         --release -p {package}`) and run r3fs from the same target directory",
        path.display()
    )
}

// ---- the running cluster ----

/// The daemons started so far, in start order; stopped in reverse.
#[derive(Debug, Default)]
struct Cluster {
    daemons: Vec<Daemon>,
    mount: Option<PathBuf>,
}

impl Cluster {
    /// The first daemon that exited, with its report.
    fn dead(&mut self) -> Option<String> {
        self.daemons.iter_mut().find_map(|d| d.exited().map(|status| d.death_report(status)))
    }

    /// Fails if a daemon died or a stop was requested: checked by every wait.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Some(report) = self.dead() {
            bail!("{report}");
        }
        if stop_requested() {
            bail!(
                "interrupted by {} during start-up",
                signal_name(STOP_SIGNAL.load(Ordering::SeqCst))
            );
        }
        Ok(())
    }

    /// Stops every daemon, last started first: the mount goes before the services it uses, and
    /// mgmtd last. Returns the daemons that did not stop cleanly.
    fn stop_all(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(mut daemon) = self.daemons.pop() {
            let was_dead = daemon.exited();
            let (status, clean) = daemon.stop(STOP_GRACE);
            if was_dead.is_some() {
                // Already reported by whoever noticed the death.
                continue;
            }
            if clean {
                println!("stopped {} (pid {})", daemon.name, daemon.pid());
            } else {
                let how = status.map_or("was killed".to_string(), |s| format!("exited with {s}"));
                problems.push(format!(
                    "{} {how} at stop; last lines of {}:\n{}",
                    daemon.name,
                    daemon.log_path.display(),
                    child::indent(&daemon.tail(child::LOG_TAIL_LINES))
                ));
            }
            if daemon.name == "fuse"
                && !clean
                && let Some(mount) = &self.mount
            {
                detach_mount(mount, &mut problems);
            }
        }
        problems
    }
}

/// After a FUSE daemon that did not unmount, detach the mount so the directory is usable again.
fn detach_mount(mount: &Path, problems: &mut Vec<String>) {
    let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else { return };
    // SAFETY: umount2 reads a NUL-terminated path we own.
    let result = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            problems.push(format!("detach the mount at {}: {error}", mount.display()));
        }
    }
}

/// Polls `check` until it returns `Some`, printing progress, failing on a dead daemon, a stop
/// request or `timeout`.
async fn wait_for<T>(
    cluster: &mut Cluster,
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>, String>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut next_progress = start + PROGRESS_INTERVAL;
    let mut last = String::new();
    loop {
        cluster.check()?;
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(state) => last = state,
        }
        if start.elapsed() >= timeout {
            bail!("gave up waiting for {what} after {timeout:?} (last seen: {last})");
        }
        if Instant::now() >= next_progress {
            println!("still waiting for {what} ({:.0?}): {last}", start.elapsed());
            next_progress += PROGRESS_INTERVAL;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_config(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    let mode = if secret { 0o600 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("set the mode of {}", path.display()))
}

fn create_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create directory {}", path.display()))
}

/// Holds an exclusive lock on `<data>/up.lock` while `up` runs: two launchers on one directory
/// would start two sets of daemons on the same stores.
#[derive(Debug)]
struct DirLock {
    _file: std::fs::File,
}

fn lock_data_dir(layout: &Layout) -> anyhow::Result<DirLock> {
    use std::os::fd::AsRawFd;
    let path = layout.lock_file();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another `r3fs up` is running on {} (it holds {}); stop it first",
            layout.root.display(),
            path.display()
        );
    }
    Ok(DirLock { _file: file })
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// The shape recorded in the data directory, or a new one (recorded now).
fn load_or_create_shape(
    layout: &Layout,
    flags: ShapeFlags,
) -> anyhow::Result<(ClusterShape, bool)> {
    let path = layout.state_file();
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let shape =
            ClusterShape::parse(&text).with_context(|| format!("parse {}", path.display()))?;
        shape.check_flags(flags, &path)?;
        return Ok((shape, false));
    }
    let shape = ClusterShape::new(flags, free_bytes(&layout.root))?;
    write_config(&path, &shape.render(), false)?;
    Ok((shape, true))
}

fn last_word(line: &str) -> String {
    line.rsplit(' ').next().unwrap_or_default().to_string()
}

fn port_or_zero(base: u16, offset: u16) -> anyhow::Result<u16> {
    if base == 0 {
        return Ok(0);
    }
    base.checked_add(offset).with_context(|| format!("--base-port {base} + {offset} exceeds 65535"))
}

fn rpc_error(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {}: {}", error_from_status(&status), status.message())
}

pub async fn up(_ctx: &Ctx, args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locate the running r3fs binary")?;
    let bin_dir = exe.parent().context("the r3fs binary has no directory")?.to_path_buf();
    let mgmtd_bin = locate(&bin_dir, MGMTD_BIN)?;
    let storage_bin = locate(&bin_dir, STORAGE_BIN)?;
    let meta_bin = locate(&bin_dir, META_BIN)?;
    let fuse_bin = match &args.mount {
        Some(_) => Some(locate(&bin_dir, FUSE_BIN)?),
        None => None,
    };
    if args.mount.is_some() && !Path::new("/dev/fuse").exists() {
        bail!(
            "--mount needs /dev/fuse, which this machine lacks (load the fuse module, or in a \
             container pass --device /dev/fuse); run without --mount to use the cluster through \
             the client library"
        );
    }

    create_dir(&args.data)?;
    let root = args
        .data
        .canonicalize()
        .with_context(|| format!("resolve --data {}", args.data.display()))?;
    let layout = Layout::new(root);
    let _lock = lock_data_dir(&layout)?;
    for dir in [layout.config_dir(), layout.log_dir(), layout.mgmtd_kv(), layout.meta_kv()] {
        create_dir(&dir)?;
    }
    let mount = match &args.mount {
        Some(mount) => {
            create_dir(mount)?;
            Some(mount.canonicalize().with_context(|| format!("resolve {}", mount.display()))?)
        }
        None => None,
    };
    let flags = ShapeFlags {
        storage_nodes: args.storage_nodes,
        replication: args.replication,
        targets_per_node: args.targets_per_node,
        chunk_size_bytes: args.chunk_size,
    };
    let (shape, new_shape) = load_or_create_shape(&layout, flags)?;
    install_signal_handlers()?;

    let mut cluster = Cluster { mount: mount.clone(), ..Cluster::default() };
    let outcome = start(
        &mut cluster,
        &args,
        &layout,
        &shape,
        new_shape,
        Binaries { mgmtd: mgmtd_bin, storage: storage_bin, meta: meta_bin, fuse: fuse_bin },
        mount.as_deref(),
        &exe,
    )
    .await;
    let result = match outcome {
        Ok(()) => supervise(&mut cluster).await,
        Err(error) => Err(error),
    };
    if result.is_err() {
        println!("r3fs up failed: stopping the cluster (last started first)");
    }
    let problems = cluster.stop_all();
    match (result, problems.is_empty()) {
        (Ok(()), true) => {
            println!("r3fs cluster stopped");
            Ok(())
        }
        (Ok(()), false) => bail!("the cluster did not stop cleanly:\n{}", problems.join("\n")),
        (Err(error), true) => Err(error),
        (Err(error), false) => Err(error
            .context(format!("and the cluster did not stop cleanly:\n{}", problems.join("\n")))),
    }
}

#[derive(Debug)]
struct Binaries {
    mgmtd: PathBuf,
    storage: PathBuf,
    meta: PathBuf,
    fuse: Option<PathBuf>,
}

/// Everything until `r3fs cluster ready`.
#[allow(clippy::too_many_arguments)]
async fn start(
    cluster: &mut Cluster,
    args: &UpArgs,
    layout: &Layout,
    shape: &ClusterShape,
    new_shape: bool,
    bins: Binaries,
    mount: Option<&Path>,
    exe: &Path,
) -> anyhow::Result<()> {
    println!(
        "r3fs up: {} cluster in {}",
        if new_shape { "creating a new" } else { "restarting the" },
        layout.root.display()
    );

    // 1. mgmtd.
    let mgmtd_listen = format!("127.0.0.1:{}", port_or_zero(args.base_port, 0)?);
    let mgmtd_config = layout.config_file("mgmtd");
    write_config(&mgmtd_config, &plan::mgmtd_config(layout, &mgmtd_listen), false)?;
    let mut command = Command::new(&bins.mgmtd);
    command.arg("--config").arg(&mgmtd_config);
    let daemon = Daemon::spawn("mgmtd", command, &layout.log_file("mgmtd"))?;
    cluster.daemons.push(daemon);
    let mgmtd = cluster.daemons.last_mut().context("mgmtd")?;
    let line =
        mgmtd.wait_for_line("r3fs-mgmtd listening on", DAEMON_START_TIMEOUT, &stop_requested)?;
    let mgmtd_address = last_word(&line);
    mgmtd.wait_for_line("r3fs-mgmtd is primary", DAEMON_START_TIMEOUT, &stop_requested)?;
    println!("mgmtd serves at {mgmtd_address}");

    // 2. The admin token: made once by init-cluster, then read from the data directory.
    let token_file = layout.token_file();
    let token = if token_file.exists() {
        let text = std::fs::read_to_string(&token_file)
            .with_context(|| format!("read {}", token_file.display()))?;
        text.trim().to_string()
    } else {
        let bootstrap = mgmtd_client(&mgmtd_address, None)?;
        let request = admin::InitClusterRequest {
            cluster_id: "r3fs-local".into(),
            admin_name: "root".into(),
            admin_uid: 0,
            admin_gid: 0,
        };
        let response = match bootstrap.init_cluster(request).await {
            Ok(response) => response,
            Err(status) if error_from_status(&status) == ErrorCode::UserExists => bail!(
                "the cluster in {} is initialized but its admin token file {} is missing; \
                 restore the file, or start over with a new --data directory",
                layout.root.display(),
                token_file.display()
            ),
            Err(status) => return Err(rpc_error("initialize the cluster", status)),
        };
        write_secret_file(&token_file, &response.admin_token)?;
        println!("initialized the cluster; admin token saved in {}", token_file.display());
        response.admin_token
    };
    let admin = mgmtd_client(&mgmtd_address, Some(token.clone()))?;

    // 3. Storage daemons.
    let placement = shape.placement()?;
    for (i, node) in shape.storage_node_ids().into_iter().enumerate() {
        create_dir(&layout.storage_disk(node))?;
        let name = format!("storage-{}", node.0);
        let port = port_or_zero(args.base_port, 10 + i as u16)?;
        let config = layout.config_file(&name);
        let text = plan::storage_config(layout, shape, node, &mgmtd_address, &token, port);
        write_config(&config, &text, true)?;
        let mut command = Command::new(&bins.storage);
        command.arg("--config").arg(&config);
        cluster.daemons.push(Daemon::spawn(&name, command, &layout.log_file(&name))?);
    }
    // Started together, awaited in turn: their start-ups overlap.
    let storage_count = shape.storage_nodes as usize;
    let first_storage = cluster.daemons.len() - storage_count;
    for index in first_storage..cluster.daemons.len() {
        let daemon = &mut cluster.daemons[index];
        daemon.wait_for_line("serving targets on", DAEMON_START_TIMEOUT, &stop_requested)?;
    }
    println!("{storage_count} storage daemons registered");

    // 4. Targets, chains and the chain table: create what is missing (every call is idempotent,
    //    so an interrupted first run completes on the next).
    let existing: BTreeSet<u64> = admin
        .list_targets(admin::ListTargetsRequest {})
        .await
        .map_err(|s| rpc_error("list targets", s))?
        .targets
        .iter()
        .map(|t| t.target_id)
        .collect();
    let missing: Vec<admin::TargetSpec> = placement
        .targets
        .iter()
        .filter(|t| !existing.contains(&t.target_id.0))
        .map(|t| admin::TargetSpec {
            target_id: t.target_id.0,
            node_id: t.node_id.0,
            disk_index: t.disk_index,
            chain_id: t.chain_id.0,
        })
        .collect();
    if !missing.is_empty() {
        let count = missing.len();
        admin
            .create_targets(admin::CreateTargetsRequest { targets: missing })
            .await
            .map_err(|s| rpc_error("create targets", s))?;
        println!("created {count} targets");
    }
    let chains_known: BTreeSet<u32> = admin
        .list_chains(admin::ListChainsRequest {})
        .await
        .map_err(|s| rpc_error("list chains", s))?
        .chains
        .iter()
        .map(|c| c.chain_id)
        .collect();
    let new_chains: Vec<&r3fs::placement::PlacedChain> =
        placement.chains.iter().filter(|c| !chains_known.contains(&c.chain_id.0)).collect();
    if !new_chains.is_empty() {
        // Upload a chain only once its targets reported: a chain uploaded before starts
        // degraded (docs/design/chain-state.md).
        let wanted: BTreeSet<u64> =
            new_chains.iter().flat_map(|c| c.targets.iter().map(|t| t.0)).collect();
        let admin_ref = &admin;
        let wanted_ref = &wanted;
        wait_for(cluster, "new targets to report up to date", DAEMON_START_TIMEOUT, async || {
            let list = admin_ref
                .list_targets(admin::ListTargetsRequest {})
                .await
                .map_err(|s| s.message().to_string())?;
            let up = list
                .targets
                .iter()
                .filter(|t| {
                    wanted_ref.contains(&t.target_id)
                        && t.local_state == pb::LocalTargetState::UpToDate as i32
                })
                .count();
            if up == wanted_ref.len() {
                Ok(Some(()))
            } else {
                Err(format!("{up} of {} up to date", wanted_ref.len()))
            }
        })
        .await?;
        let chains = new_chains
            .iter()
            .map(|c| admin::ChainSpec {
                chain_id: c.chain_id.0,
                target_ids: c.targets.iter().map(|t| t.0).collect(),
            })
            .collect();
        admin
            .upload_chains(admin::UploadChainsRequest { chains })
            .await
            .map_err(|s| rpc_error("upload chains", s))?;
        println!("uploaded {} chains", new_chains.len());
    }
    let table_ids: Vec<u32> = placement.table.iter().map(|c| c.0).collect();
    let tables = admin
        .list_chain_tables(admin::ListChainTablesRequest {})
        .await
        .map_err(|s| rpc_error("list chain tables", s))?;
    match tables.chain_tables.iter().find(|t| t.table_id == plan::CHAIN_TABLE_ID && t.version == 1)
    {
        Some(table) if table.chain_ids == table_ids => {}
        Some(table) => bail!(
            "chain table {} version 1 in mgmtd lists chains {:?}, not the {:?} this data \
             directory's shape gives; was the cluster changed by hand?",
            plan::CHAIN_TABLE_ID,
            table.chain_ids,
            table_ids
        ),
        None => {
            let response = admin
                .upload_chain_table(admin::UploadChainTableRequest {
                    table_id: plan::CHAIN_TABLE_ID,
                    chain_ids: table_ids.clone(),
                    description: "r3fs up".into(),
                })
                .await
                .map_err(|s| rpc_error("upload the chain table", s))?;
            if response.version != 1 {
                bail!("the chain table was uploaded as version {}, expected 1", response.version);
            }
            println!("uploaded chain table {} ({} chains)", plan::CHAIN_TABLE_ID, table_ids.len());
        }
    }

    // 5. Every replica serving (after a restart, replicas that missed writes resync first).
    let chain_ids: BTreeSet<u32> = placement.chains.iter().map(|c| c.chain_id.0).collect();
    let replicas = placement.targets.len();
    let chain_ids_ref = &chain_ids;
    let admin_ref = &admin;
    wait_for(
        cluster,
        "every chain replica to serve",
        Duration::from_secs(args.ready_timeout),
        async || {
            let list = admin_ref
                .list_chains(admin::ListChainsRequest {})
                .await
                .map_err(|s| s.message().to_string())?;
            let serving = list
                .chains
                .iter()
                .filter(|c| chain_ids_ref.contains(&c.chain_id))
                .flat_map(|c| &c.targets)
                .filter(|t| t.public_state == pb::PublicTargetState::Serving as i32)
                .count();
            if serving == replicas {
                Ok(Some(()))
            } else {
                Err(format!("{serving} of {replicas} replicas serving"))
            }
        },
    )
    .await?;
    println!("{} chains serving ({replicas} replicas)", chain_ids.len());

    // 6. meta.
    let meta_listen = format!("127.0.0.1:{}", port_or_zero(args.base_port, 1)?);
    let meta_config = layout.config_file("meta");
    write_config(
        &meta_config,
        &plan::meta_config(layout, shape, &meta_listen, &mgmtd_address),
        false,
    )?;
    let mut command = Command::new(&bins.meta);
    command.arg("--config").arg(&meta_config);
    cluster.daemons.push(Daemon::spawn("meta", command, &layout.log_file("meta"))?);
    let meta = cluster.daemons.last_mut().context("meta")?;
    let line =
        meta.wait_for_line("r3fs-meta listening on", DAEMON_START_TIMEOUT, &stop_requested)?;
    let meta_address = last_word(&line);

    // 7. The mount.
    if let (Some(fuse_bin), Some(mount)) = (&bins.fuse, mount) {
        let fuse_config = layout.config_file("fuse");
        write_config(
            &fuse_config,
            &plan::fuse_config(layout, mount, &mgmtd_address, &meta_address),
            false,
        )?;
        let mut command = Command::new(fuse_bin);
        command.arg("--config").arg(&fuse_config);
        cluster.daemons.push(Daemon::spawn("fuse", command, &layout.log_file("fuse"))?);
        let fuse = cluster.daemons.last_mut().context("fuse")?;
        fuse.wait_for_line("r3fs-fuse mounted", DAEMON_START_TIMEOUT, &stop_requested)?;
    }

    // 8. What runs where.
    let mut out = String::new();
    out.push_str(&format!("\nr3fs local cluster in {}\n", layout.root.display()));
    out.push_str(&format!(
        "  {} storage nodes, replication {}, {} chains in chain table {}, chunk size {} bytes, \
         stripe {}\n",
        shape.storage_nodes,
        shape.replication,
        placement.chains.len(),
        plan::CHAIN_TABLE_ID,
        shape.chunk_size_bytes,
        shape.stripe_size
    ));
    for daemon in &cluster.daemons {
        let address = match daemon.name.as_str() {
            "mgmtd" => mgmtd_address.clone(),
            "meta" => meta_address.clone(),
            "fuse" => mount.map(|m| m.display().to_string()).unwrap_or_default(),
            _ => daemon
                .output()
                .lines()
                .find(|l| l.contains("serving targets on"))
                .map(last_word)
                .unwrap_or_default(),
        };
        out.push_str(&format!(
            "  {:<13} {:<22} pid {:<8} log {}\n",
            daemon.name,
            address,
            daemon.pid(),
            daemon.log_path.display()
        ));
    }
    out.push_str(&format!("  admin token   {}\n", layout.token_file().display()));
    out.push_str(&format!("  configs       {}\n", layout.config_dir().display()));
    out.push_str("\nUse it:\n");
    if let Some(mount) = mount {
        out.push_str(&format!("  ls {}\n", mount.display()));
    }
    out.push_str(&format!(
        "  R3FS_MGMTD={mgmtd_address} R3FS_TOKEN_FILE={} {} list-nodes\n",
        layout.token_file().display(),
        exe.display()
    ));
    out.push_str(&format!(
        "Stop with Ctrl-C (or `kill {}`); running the same command again reuses {}.\n",
        std::process::id(),
        layout.root.display()
    ));
    out.push_str("r3fs cluster ready\n");
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).context("print the summary")?;
    stdout.flush().context("flush stdout")?;
    Ok(())
}

/// Runs until a stop signal (Ok) or a daemon's death (Err, after which everything stops).
async fn supervise(cluster: &mut Cluster) -> anyhow::Result<()> {
    loop {
        if let Some(report) = cluster.dead() {
            return Err(anyhow!("{report}"));
        }
        if stop_requested() {
            println!(
                "{} received: stopping the cluster (last started first)",
                signal_name(STOP_SIGNAL.load(Ordering::SeqCst))
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 2)).await;
    }
}

fn mgmtd_client(address: &str, token: Option<String>) -> anyhow::Result<MgmtdClient> {
    let mut config = MgmtdClientConfig::new(vec![address.to_string()], token);
    config.request_timeout_ms = 10_000;
    MgmtdClient::new(config).map_err(|e| anyhow!("configure the mgmtd client: {e}"))
}
