//! A small real cluster on loopback for the ring tests, booted by r3fs-testkit's harness:
//! r3fs-mgmtd, one r3fs-storage daemon (two shards) holding two single-replica chains, and
//! r3fs-meta (static admin token, no storage client); a [`FileClient`] on it; plus a
//! [`RingServer`] in the test process over that client, serving "mount" directory
//! `placeholders` where local files stand for r3fs inodes ([`InodeMap`]).
#![allow(dead_code)]

use r3fs_client::{ClientConfig, FileClient};
use r3fs_testkit::cluster::{self, MetaAuth};
use r3fs_usrbio::{InodeMap, RingServer, RingServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Chunk size of meta's root layout (the harness's default).
pub const CHUNK: usize = 64 << 10;

pub struct Cluster {
    // First: the client goes before the daemons stop.
    pub files: FileClient,
    pub daemons: cluster::Cluster,
}

impl Cluster {
    /// The cluster's directory (configs, disks, stand-in mounts, the compiled C example).
    pub fn dir(&self) -> &Path {
        self.daemons.dir()
    }
}

/// Boots the cluster and connects a file client.
pub async fn start_cluster() -> Cluster {
    let daemons = cluster::Cluster::builder("usrbio-test")
        .storage_nodes(1)
        .replication(1)
        .chains(2)
        .storage_cores(2)
        .chunk_size(CHUNK as u32)
        .meta(MetaAuth::StaticAdmin)
        .start()
        .await;
    let mut config = ClientConfig {
        mgmtd_addresses: vec![daemons.mgmtd_address().to_string()],
        meta_addresses: vec![daemons.meta_address().to_string()],
        token: daemons.token().to_string(),
        ..Default::default()
    };
    config.retry.backoff_initial_ms = 5;
    config.retry.backoff_max_ms = 200;
    config.file.length_report_interval_ms = 200;
    let files = FileClient::connect(config).await.expect("connect the file client");
    Cluster { files, daemons }
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
        let mount = cluster.dir().join(format!("{name}-mount"));
        let socket_dir = cluster.dir().join(format!("{name}-run"));
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

/// Waits (bounded by the harness's `WAIT_TIMEOUT`) until `check` holds.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    cluster::eventually(what, async || check().then_some(())).await
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
