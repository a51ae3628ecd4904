//! A small real cluster on loopback for the ring tests: r3fs-mgmtd, one r3fs-storage daemon (two
//! shards) holding two single-replica chains, and r3fs-meta; plus a [`RingServer`] in the test
//! process over a [`FileClient`], serving "mount" directory `placeholders` where local files stand
//! for r3fs inodes ([`InodeMap`]).
#![allow(dead_code)]

use r3fs_client::{ClientConfig, FileClient, MgmtdClient, MgmtdClientConfig};
use r3fs_rpc::{admin, mgmtd as pb};
use r3fs_testkit::{Proc, binary, free_port};
use r3fs_usrbio::{InodeMap, RingServer, RingServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(300);
pub const CHUNK: usize = 64 << 10;
const NODE: u32 = 2;
const CHAINS: [u32; 2] = [1, 2];

pub struct Cluster {
    _mgmtd: Proc,
    _storage: Proc,
    _meta: Proc,
    pub files: FileClient,
    pub mgmtd_address: String,
    pub meta_address: String,
    pub token: String,
    pub dir: tempfile::TempDir,
}

fn start_mgmtd(dir: &Path) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "node_id = 1\nlisten = \"{address}\"\nlease_timeout_ms = 2000\nlease_renew_interval_ms = 500\n\
         heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 3000\nfailure_check_interval_ms = 200\n\
         routing_wait_max_ms = 5000\nshutdown_grace_ms = 1000\n[kv]\nbackend = \"memory\"\n"
    );
    let path = dir.join("mgmtd.toml");
    std::fs::write(&path, config).expect("write the mgmtd config");
    let mut command = Command::new(binary("r3fs-mgmtd", "r3fs-mgmtd"));
    command.arg("--config").arg(&path);
    let mut proc = Proc::spawn("r3fs-mgmtd", command);
    proc.wait_for_line("is primary", START_TIMEOUT);
    (proc, address)
}

fn start_storage(dir: &Path, mgmtd: &str, token: &str) -> Proc {
    let disk = dir.join("disk0");
    std::fs::create_dir_all(&disk).expect("create the disk directory");
    let config = format!(
        r#"node_id = {NODE}
target_paths = ["{disk}"]
targets_per_path = 2
cores = 2
mgmtd_addresses = ["{mgmtd}"]
token = "{token}"
listen_host = "127.0.0.1"
io_memory_bytes = 1048576
tick_interval_ms = 10
shutdown_drain_ms = 2000

[store]
capacity_bytes = 268435456
header_cache_bytes = 4194304
log_compaction_bytes_min = 8388608
log_extent_bytes = 1048576
commit_batch_records_max = 256
grow_bytes_max = 67108864

[replica]
chunk_size_bytes_max = 4194304
held_payload_bytes_max = 268435456
forward_retry_interval_ms = 100
"#,
        disk = disk.display()
    );
    let path = dir.join("storage.toml");
    std::fs::write(&path, config).expect("write the storage config");
    let mut command = Command::new(binary("r3fs-storage", "r3fs-storage"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("r3fs-storage", command);
    proc.wait_for_line("serving targets on", START_TIMEOUT);
    proc
}

fn start_meta(dir: &Path, token: &str) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"listen = "{address}"
[kv]
backend = "memory"
[meta.format.root_layout]
chain_table_id = 1
chain_table_version = 1
chunk_size = {CHUNK}
stripe_size = 2
chains = {{ ShuffleV1 = {{ seed = 0 }} }}
[[auth.static_users]]
token = "{token}"
uid = 0
gid = 0
admin = true
"#
    );
    let path = dir.join("meta.toml");
    std::fs::write(&path, config).expect("write the meta config");
    let mut command = Command::new(binary("r3fs-meta", "r3fs-meta"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("r3fs-meta", command);
    proc.wait_for_line("r3fs-meta listening on", START_TIMEOUT);
    (proc, address)
}

async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Boots the cluster and connects a file client.
pub async fn start_cluster() -> Cluster {
    let t0 = Instant::now();
    let phase = |what: &str| println!("[{:>7.1?}] {what}", t0.elapsed());
    let dir =
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir on the target disk");
    let (mgmtd, mgmtd_address) = start_mgmtd(dir.path());
    let bootstrap = MgmtdClient::new(MgmtdClientConfig::new(vec![mgmtd_address.clone()], None))
        .expect("mgmtd client");
    let init = bootstrap
        .init_cluster(admin::InitClusterRequest {
            cluster_id: "usrbio-test".into(),
            ..Default::default()
        })
        .await
        .expect("init the cluster");
    let token = init.admin_token;
    let admin =
        MgmtdClient::new(MgmtdClientConfig::new(vec![mgmtd_address.clone()], Some(token.clone())))
            .expect("admin client");
    let storage = start_storage(dir.path(), &mgmtd_address, &token);
    phase("mgmtd and storage up");
    let targets = CHAINS
        .iter()
        .map(|&chain| admin::TargetSpec {
            target_id: u64::from(chain) * 100 + u64::from(NODE),
            node_id: NODE,
            disk_index: 0,
            chain_id: chain,
        })
        .collect();
    admin.create_targets(admin::CreateTargetsRequest { targets }).await.expect("create targets");
    eventually("targets up to date", || async {
        let list = admin.list_targets(admin::ListTargetsRequest {}).await.ok()?;
        let up = list
            .targets
            .iter()
            .filter(|t| t.local_state == pb::LocalTargetState::UpToDate as i32)
            .count();
        (up == CHAINS.len()).then_some(())
    })
    .await;
    let chains = CHAINS
        .iter()
        .map(|&chain| admin::ChainSpec {
            chain_id: chain,
            target_ids: vec![u64::from(chain) * 100 + u64::from(NODE)],
        })
        .collect();
    admin.upload_chains(admin::UploadChainsRequest { chains }).await.expect("upload chains");
    admin
        .upload_chain_table(admin::UploadChainTableRequest {
            table_id: 1,
            chain_ids: CHAINS.to_vec(),
            description: "usrbio test".into(),
        })
        .await
        .expect("upload the chain table");
    eventually("every target serving", || async {
        let list = admin.list_chains(admin::ListChainsRequest {}).await.ok()?;
        let serving = list
            .chains
            .iter()
            .flat_map(|c| &c.targets)
            .filter(|t| t.public_state == pb::PublicTargetState::Serving as i32)
            .count();
        (serving == CHAINS.len()).then_some(())
    })
    .await;
    let (meta, meta_address) = start_meta(dir.path(), &token);
    phase("meta up");
    let mut config = ClientConfig {
        mgmtd_addresses: vec![mgmtd_address.clone()],
        meta_addresses: vec![meta_address.clone()],
        token: token.clone(),
        ..Default::default()
    };
    config.retry.backoff_initial_ms = 5;
    config.retry.backoff_max_ms = 200;
    config.file.length_report_interval_ms = 200;
    let files = FileClient::connect(config).await.expect("connect the file client");
    Cluster {
        _mgmtd: mgmtd,
        _storage: storage,
        _meta: meta,
        files,
        mgmtd_address,
        meta_address,
        token,
        dir,
    }
}

/// A ring server over the cluster, standing in for a FUSE mount: `mount` is a local directory
/// whose files stand for r3fs inodes (see [`Rig::placeholder`]); the socket lives in `socket_dir`
/// under the name applications derive from the directory's device number.
pub struct Rig {
    pub server: RingServer,
    pub inodes: Arc<InodeMap>,
    pub mount: PathBuf,
    pub socket_dir: PathBuf,
}

impl Rig {
    pub fn start(cluster: &Cluster, name: &str) -> Rig {
        let mount = cluster.dir.path().join(format!("{name}-mount"));
        let socket_dir = cluster.dir.path().join(format!("{name}-run"));
        std::fs::create_dir_all(&mount).expect("create the stand-in mount");
        let dev = std::fs::metadata(&mount).expect("stat the stand-in mount").dev();
        let socket = socket_dir.join(format!("usrbio-{dev:x}.sock"));
        let inodes = Arc::new(InodeMap::default());
        let server =
            RingServer::start(RingServerConfig::new(socket), cluster.files.clone(), inodes.clone())
                .expect("start the ring server");
        Rig { server, inodes, mount, socket_dir }
    }

    /// Creates r3fs file `path` and a local placeholder `<mount>/<name>` that stands for it.
    pub async fn placeholder(&self, cluster: &Cluster, path: &str, name: &str) -> PathBuf {
        let file = cluster.files.create(path).await.expect("create the r3fs file");
        let inode = file.inode();
        file.close().await.expect("close the new file");
        let local = self.mount.join(name);
        std::fs::write(&local, b"").expect("create the placeholder");
        self.inodes.insert(&local, inode).expect("map the placeholder");
        local
    }
}

/// Waits (bounded) until `check` holds.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `target/<profile>`, where cargo puts examples (`examples/`) and libraries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// The directory holding libr3fs_usrbio.so / .a, built first (once per test process) with the
/// same cargo and profile as the running test.
pub fn library_dir() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = profile_dir();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", "r3fs-usrbio", "--lib"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("run cargo to build r3fs-usrbio's libraries");
        assert!(status.success(), "cargo build of r3fs-usrbio's libraries failed");
    });
    assert!(dir.join("libr3fs_usrbio.so").exists(), "no libr3fs_usrbio.so in {}", dir.display());
    dir
}

/// The reason this machine cannot run the FUSE daemon, if any.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent".into());
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (the FUSE daemon mounts directly)".into());
    }
    None
}

/// `r3fs-fuse` mounted on `<dir>/mnt`, its ring server's socket in `<dir>/fuse-run`; unmounted on
/// drop (SIGTERM, then a lazy unmount if the daemon could not).
pub struct FuseMount {
    fuse: Proc,
    pub mountpoint: PathBuf,
    pub socket_dir: PathBuf,
}

impl FuseMount {
    pub fn start(cluster: &Cluster) -> FuseMount {
        let dir = cluster.dir.path();
        let mountpoint = dir.join("mnt");
        let socket_dir = dir.join("fuse-run");
        std::fs::create_dir_all(&mountpoint).expect("create the mount point");
        let token_file = dir.join("fuse.token");
        std::fs::write(&token_file, &cluster.token).expect("write the token file");
        let config = format!(
            "mountpoint = \"{}\"\nmgmtd_addresses = [\"{}\"]\nmeta_addresses = [\"{}\"]\n\
             token_file = \"{}\"\nthreads = 2\n",
            mountpoint.display(),
            cluster.mgmtd_address,
            cluster.meta_address,
            token_file.display()
        );
        let path = dir.join("fuse.toml");
        std::fs::write(&path, config).expect("write the fuse config");
        let mut command = Command::new(binary("r3fs-fuse", "r3fs-fuse"));
        command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("R3FS_USRBIO_DIR", &socket_dir);
        let mut fuse = Proc::spawn("r3fs-fuse", command);
        fuse.wait_for_line("r3fs-fuse mounted", START_TIMEOUT);
        FuseMount { fuse, mountpoint, socket_dir }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if !self.fuse.has_exited() {
            self.fuse.terminate(Duration::from_secs(20));
        }
        use std::os::unix::ffi::OsStrExt;
        if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; fails harmlessly if nothing is mounted there.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
