//! A real cluster on loopback with the real `r3fs-fuse` binary mounted on a temporary directory:
//! one r3fs-mgmtd, three r3fs-storage daemons holding three replication-3 chains, r3fs-meta, and
//! r3fs-fuse. Dropping [`Mounted`] stops the daemon (SIGTERM) and detaches the mount if it is
//! still there, however the test ended.

#![allow(dead_code)]

use r3fs_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_rpc::{admin, mgmtd as pb};
use r3fs_testkit::{Proc, binary, free_port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Chunk size of the root layout: a 1 MiB kernel write spans two chunks.
pub const CHUNK: usize = 512 << 10;
const NODES: [u32; 3] = [2, 3, 4];
const CHAINS: [u32; 3] = [1, 2, 3];
/// statfs f_type of a FUSE mount.
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn target(chain: u32, node: u32) -> u64 {
    u64::from(chain) * 100 + u64::from(node)
}

/// The reason to skip, if this machine cannot mount FUSE.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent: FUSE tests skipped".into());
    }
    None
}

pub fn statfs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statfs buffer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut buf) };
    (rc == 0).then_some(buf.f_type)
}

/// The cluster without the mount.
pub struct Cluster {
    pub mgmtd: Proc,
    pub storage: Vec<Proc>,
    pub meta: Proc,
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

fn start_storage(dir: &Path, node: u32, mgmtd: &str, token: &str) -> Proc {
    let disk = dir.join(format!("node{node}-disk0"));
    std::fs::create_dir_all(&disk).expect("create the disk directory");
    let config = format!(
        r#"node_id = {node}
target_paths = ["{disk}"]
targets_per_path = 4
cores = 1
mgmtd_addresses = ["{mgmtd}"]
token = "{token}"
listen_host = "127.0.0.1"
io_memory_bytes = 1048576
tick_interval_ms = 10
shutdown_drain_ms = 2000

[store]
capacity_bytes = 536870912
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
    let path = dir.join(format!("storage{node}.toml"));
    std::fs::write(&path, config).expect("write the storage config");
    let mut command = Command::new(binary("r3fs-storage", "r3fs-storage"));
    command.arg("--config").arg(&path).env("RUST_LOG", "warn");
    let mut proc = Proc::spawn(&format!("r3fs-storage-{node}"), command);
    proc.wait_for_line("serving targets on", START_TIMEOUT);
    proc
}

fn start_meta(dir: &Path, token: &str, mgmtd: &str) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let token_file = dir.join("meta.token");
    std::fs::write(&token_file, token).expect("write the meta token file");
    // With [mgmtd], meta resolves tokens through mgmtd (the admin token is root) and reaches
    // storage (truncation, file lengths, collection) when its build supports it.
    let config = format!(
        r#"listen = "{address}"
[kv]
backend = "memory"
[meta.format.root_layout]
chain_table_id = 1
chain_table_version = 1
chunk_size = {CHUNK}
stripe_size = 3
chains = {{ ShuffleV1 = {{ seed = 0 }} }}
[mgmtd]
addresses = ["{mgmtd}"]
token_file = "{token_file}"
"#,
        token_file = token_file.display()
    );
    let path = dir.join("meta.toml");
    std::fs::write(&path, config).expect("write the meta config");
    let mut command = Command::new(binary("r3fs-meta", "r3fs-meta"));
    command.arg("--config").arg(&path).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("r3fs-meta", command);
    proc.wait_for_line("r3fs-meta listening on", START_TIMEOUT);
    (proc, address)
}

fn eventually<T>(
    runtime: &tokio::runtime::Runtime,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    runtime.block_on(async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

impl Cluster {
    pub fn start() -> Cluster {
        let t0 = Instant::now();
        let phase = |what: &str| println!("[{:>7.1?}] {what}", t0.elapsed());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let (mgmtd, mgmtd_address) = start_mgmtd(dir.path());
        let bootstrap = MgmtdClient::new(MgmtdClientConfig::new(vec![mgmtd_address.clone()], None))
            .expect("mgmtd client");
        let init = runtime
            .block_on(bootstrap.init_cluster(admin::InitClusterRequest {
                cluster_id: "fuse-test".into(),
                ..Default::default()
            }))
            .expect("init the cluster");
        let token = init.admin_token;
        let admin = MgmtdClient::new(MgmtdClientConfig::new(
            vec![mgmtd_address.clone()],
            Some(token.clone()),
        ))
        .expect("admin client");
        let storage: Vec<Proc> = NODES
            .iter()
            .map(|&node| start_storage(dir.path(), node, &mgmtd_address, &token))
            .collect();
        phase("mgmtd and storage daemons up");
        let targets = CHAINS
            .iter()
            .flat_map(|&chain| {
                NODES.iter().map(move |&node| admin::TargetSpec {
                    target_id: target(chain, node),
                    node_id: node,
                    disk_index: 0,
                    chain_id: chain,
                })
            })
            .collect();
        runtime
            .block_on(admin.create_targets(admin::CreateTargetsRequest { targets }))
            .expect("create targets");
        eventually(&runtime, "targets up to date", async || {
            let list = admin.list_targets(admin::ListTargetsRequest {}).await.ok()?;
            let up = list
                .targets
                .iter()
                .filter(|t| t.local_state == pb::LocalTargetState::UpToDate as i32)
                .count();
            (up == CHAINS.len() * NODES.len()).then_some(())
        });
        let chains = CHAINS
            .iter()
            .map(|&chain| {
                let mut members: Vec<u64> = NODES.iter().map(|&node| target(chain, node)).collect();
                members.rotate_left(chain as usize - 1);
                admin::ChainSpec { chain_id: chain, target_ids: members }
            })
            .collect();
        runtime
            .block_on(admin.upload_chains(admin::UploadChainsRequest { chains }))
            .expect("upload chains");
        runtime
            .block_on(admin.upload_chain_table(admin::UploadChainTableRequest {
                table_id: 1,
                chain_ids: CHAINS.to_vec(),
                description: "fuse test".into(),
            }))
            .expect("upload the chain table");
        eventually(&runtime, "every target serving", async || {
            let list = admin.list_chains(admin::ListChainsRequest {}).await.ok()?;
            let serving = list
                .chains
                .iter()
                .flat_map(|c| &c.targets)
                .filter(|t| t.public_state == pb::PublicTargetState::Serving as i32)
                .count();
            (serving == CHAINS.len() * NODES.len()).then_some(())
        });
        phase("chains serving");
        let (meta, meta_address) = start_meta(dir.path(), &token, &mgmtd_address);
        phase("meta up");
        Cluster { mgmtd, storage, meta, mgmtd_address, meta_address, token, dir }
    }

    /// A fuse.toml for this cluster.
    pub fn fuse_config(&self, mountpoint: &Path) -> PathBuf {
        let token_file = self.dir.path().join("fuse.token");
        std::fs::write(&token_file, &self.token).expect("write the token file");
        let config = format!(
            "mountpoint = \"{}\"\nmgmtd_addresses = [\"{}\"]\nmeta_addresses = [\"{}\"]\n\
             token_file = \"{}\"\nthreads = 4\n[client.file]\nlength_report_interval_ms = 1000\n",
            mountpoint.display(),
            self.mgmtd_address,
            self.meta_address,
            token_file.display()
        );
        let path = self.dir.path().join("fuse.toml");
        std::fs::write(&path, config).expect("write the fuse config");
        path
    }
}

/// `r3fs-fuse` mounted on a fresh directory of the cluster's temp dir.
pub struct Mounted {
    pub fuse: Proc,
    pub mountpoint: PathBuf,
}

impl Mounted {
    pub fn start(cluster: &Cluster) -> Mounted {
        let mountpoint = cluster.dir.path().join("mnt");
        std::fs::create_dir_all(&mountpoint).expect("create the mount point");
        let config = cluster.fuse_config(&mountpoint);
        let mut command = Command::new(binary("r3fs-fuse", "r3fs-fuse"));
        command.arg("--config").arg(&config).env("RUST_LOG", "info");
        let mut fuse = Proc::spawn("r3fs-fuse", command);
        let line = fuse.wait_for_line("r3fs-fuse mounted", START_TIMEOUT);
        assert_eq!(line, format!("r3fs-fuse mounted {}", mountpoint.display()));
        assert_eq!(statfs_type(&mountpoint), Some(FUSE_SUPER_MAGIC), "the mount answers");
        Mounted { fuse, mountpoint }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.fuse.has_exited() {
            self.fuse.terminate(Duration::from_secs(20));
        }
        if statfs_type(&self.mountpoint) == Some(FUSE_SUPER_MAGIC)
            || std::fs::metadata(&self.mountpoint)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
        {
            use std::os::unix::ffi::OsStrExt;
            let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())
                .expect("a path without NUL");
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
