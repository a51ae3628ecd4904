//! A whole r3fs cluster of real processes on loopback for integration tests: r3fs-mgmtd, N
//! r3fs-storage daemons, the targets, chains and chain table, optionally r3fs-meta and an
//! r3fs-fuse mount, each with a generated config under one temp directory.
//!
//! ```ignore
//! let cluster = Cluster::builder("my-test").storage_nodes(3).replication(3).chains(3).meta(MetaAuth::StaticAdmin).start().await;
//! ```
//!
//! Placement is fixed and predictable so tests can name targets: storage node ids are
//! `2..2+N` (mgmtd is node 1), chain `c` (1-based) holds `replication` targets on consecutive
//! nodes starting at node index `c-1` (so heads differ between chains), and the target of chain
//! `c` on node `n` is `c * 100 + n` ([`target_id`]).
//!
//! Every wait is bounded ([`START_TIMEOUT`], [`WAIT_TIMEOUT`]) and never asserts a timing. When a
//! test panics, dropping the [`Cluster`] prints the last lines of every daemon's output, then kills
//! them; otherwise it stops them cleanly (SIGTERM, last started first; the storage daemons
//! together). The temp directory goes last, after every process is gone.
//!
//! Why this does not reuse `r3fs up` (tools/r3fs): the testkit is a dev-dependency of crates in
//! every layer, and r3fs depends on those crates, so depending on it would be a cycle; and tests
//! need things `up` deliberately refuses (kill -9 and restart of one daemon, chains the test
//! creates itself, per-test config overrides). The harness depends only on proto crates and
//! drives the daemons through their binaries and mgmtd's admin gRPC API.

use crate::{Proc, binary, free_port};
use r3fs_rpc::admin;
use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest wait for one daemon's readiness line (includes building it on a cold, busy machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for a cluster state reached through mgmtd (targets up to date, replicas serving).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Grace a daemon gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// Lines of each daemon's output printed when a test fails.
pub const LOG_TAIL_LINES: usize = 60;
/// The chain table the harness uploads (the one meta's root layout uses).
pub const CHAIN_TABLE_ID: u32 = 1;
/// Node id of the first storage daemon (mgmtd is node 1).
pub const FIRST_STORAGE_NODE: u32 = 2;

/// statfs `f_type` of a FUSE mount.
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Target id of chain `chain` on storage node `node`.
pub fn target_id(chain: u32, node: u32) -> u64 {
    u64::from(chain) * 100 + u64::from(node)
}

/// A daemon role: selects the generated config an override applies to, and its log filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Mgmtd,
    Storage,
    Meta,
    Fuse,
}

impl Role {
    fn package(self) -> &'static str {
        match self {
            Role::Mgmtd => "r3fs-mgmtd",
            Role::Storage => "r3fs-storage",
            Role::Meta => "r3fs-meta",
            Role::Fuse => "r3fs-fuse",
        }
    }

    /// The line a daemon prints once it serves.
    fn ready_line(self) -> &'static str {
        match self {
            Role::Mgmtd => "r3fs-mgmtd is primary",
            Role::Storage => "serving targets on",
            Role::Meta => "r3fs-meta listening on",
            Role::Fuse => "r3fs-fuse mounted",
        }
    }
}

/// How r3fs-meta authenticates and whether it reaches storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaAuth {
    /// `[[auth.static_users]]` holding the admin token: meta never talks to mgmtd and has no
    /// storage client (lengths come only from client reports).
    StaticAdmin,
    /// `[mgmtd]` with the admin token in a file: tokens, routing and the storage client all come
    /// from mgmtd (truncate on storage, lengths settled from storage, the chunk collector).
    Mgmtd,
}

/// Settings of a cluster; see [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    cluster_id: String,
    storage_nodes: u32,
    replication: u32,
    chains: u32,
    chunk_size_bytes: u32,
    stripe_size: Option<u32>,
    storage_cores: u32,
    target_capacity_bytes: u64,
    mgmtd_kv_on_disk: bool,
    meta: Option<MetaAuth>,
    fuse: bool,
    overrides: BTreeMap<Role, Vec<String>>,
    /// Per storage node: TOML merged after the role's overrides.
    node_overrides: BTreeMap<u32, Vec<String>>,
    /// Per storage node: its target path, when not `<dir>/node<n>-disk0`.
    disks: BTreeMap<u32, PathBuf>,
    /// The address mgmtd listens on (and everyone reaches it at).
    mgmtd_host: String,
    /// Commands the daemons of a role, or one storage node, run under (`ip netns exec <ns>`).
    wrappers: BTreeMap<Role, Vec<String>>,
    node_wrappers: BTreeMap<u32, Vec<String>>,
    log_filters: BTreeMap<Role, String>,
    binaries: BTreeMap<Role, PathBuf>,
}

impl ClusterBuilder {
    /// Storage daemons to run (node ids `2..2+n`) [3].
    pub fn storage_nodes(mut self, n: u32) -> Self {
        self.storage_nodes = n;
        self
    }

    /// Targets per chain [3].
    pub fn replication(mut self, n: u32) -> Self {
        self.replication = n;
        self
    }

    /// Chains created at start and listed in chain table 1 [3]. With 0 the harness creates no
    /// target, chain or table (the test makes its own with [`Cluster::create_chain`]), and meta
    /// and FUSE cannot run.
    pub fn chains(mut self, n: u32) -> Self {
        self.chains = n;
        self
    }

    /// Chunk size of meta's root layout [64 KiB].
    pub fn chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size_bytes = bytes;
        self
    }

    /// Stripe size of meta's root layout [the number of chains].
    pub fn stripe_size(mut self, n: u32) -> Self {
        self.stripe_size = Some(n);
        self
    }

    /// Cores (shards) of each storage daemon [1]; with 2 or more, targets spread over shards that
    /// each have their own data-plane port.
    pub fn storage_cores(mut self, n: u32) -> Self {
        self.storage_cores = n;
        self
    }

    /// `[store] capacity_bytes` of every target [256 MiB].
    pub fn target_capacity(mut self, bytes: u64) -> Self {
        self.target_capacity_bytes = bytes;
        self
    }

    /// mgmtd keeps its state in the embedded (fjall) store under the cluster directory instead of
    /// memory, so [`Cluster::restart_mgmtd`] keeps the cluster.
    pub fn mgmtd_kv_on_disk(mut self) -> Self {
        self.mgmtd_kv_on_disk = true;
        self
    }

    /// Also run r3fs-meta (started once every replica serves).
    pub fn meta(mut self, auth: MetaAuth) -> Self {
        self.meta = Some(auth);
        self
    }

    /// Also mount r3fs-fuse on `<dir>/mnt` (needs [`MetaAuth`] meta; check [`fuse_unavailable`]
    /// first and skip with its reason).
    pub fn fuse(mut self) -> Self {
        self.fuse = true;
        self
    }

    /// TOML merged into the generated config of every daemon of `role` (tables merge key by key,
    /// other values replace), e.g. `"[meta.gc]\ninterval_ms = 100"`. May be given several times.
    pub fn config(mut self, role: Role, toml: &str) -> Self {
        self.overrides.entry(role).or_default().push(toml.to_string());
        self
    }

    /// TOML merged into the config of storage node `node` only, after the role's overrides:
    /// what differs per daemon (a metrics port, a listen host). May be given several times.
    pub fn storage_config(mut self, node: u32, toml: &str) -> Self {
        self.node_overrides.entry(node).or_default().push(toml.to_string());
        self
    }

    /// Storage node `node` keeps its targets under `path` (an existing directory, e.g. a small
    /// loop-mounted file system a test fills) instead of `<dir>/node<n>-disk0`;
    /// [`Cluster::storage_disk`] returns it.
    pub fn storage_disk(mut self, node: u32, path: impl Into<PathBuf>) -> Self {
        self.disks.insert(node, path.into());
        self
    }

    /// The host mgmtd listens on ["127.0.0.1"], e.g. the address of the network namespace a
    /// [`ClusterBuilder::wrapper`] runs it in.
    pub fn mgmtd_host(mut self, host: &str) -> Self {
        self.mgmtd_host = host.to_string();
        self
    }

    /// The daemons of `role` run as `<argv...> <binary> --config <file>`, e.g.
    /// `["ip", "netns", "exec", "ns1"]` to run them in a network namespace (the wrapper must
    /// exec the binary, so a kill -9 reaches the daemon itself).
    pub fn wrapper(mut self, role: Role, argv: &[&str]) -> Self {
        self.wrappers.insert(role, argv.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Like [`ClusterBuilder::wrapper`] for storage node `node` only (over the role's).
    pub fn storage_wrapper(mut self, node: u32, argv: &[&str]) -> Self {
        self.node_wrappers.insert(node, argv.iter().map(|a| a.to_string()).collect());
        self
    }

    /// `RUST_LOG` of the daemons of `role` ["info"].
    pub fn log(mut self, role: Role, filter: &str) -> Self {
        self.log_filters.insert(role, filter.to_string());
        self
    }

    /// Runs this binary for `role` instead of building the workspace one: a package's own tests
    /// pass `env!("CARGO_BIN_EXE_<name>")`, which cargo has built already.
    pub fn binary(mut self, role: Role, path: impl Into<PathBuf>) -> Self {
        self.binaries.insert(role, path.into());
        self
    }

    /// Boots the cluster: mgmtd, init-cluster, the storage daemons (started together), targets,
    /// chains and the chain table, then meta and the mount. Panics (printing what every daemon
    /// said) if any step does not finish within its bound.
    pub async fn start(self) -> Cluster {
        self.check();
        let started = Instant::now();
        let phase = |what: &str| println!("[{:>7.1?}] cluster: {what}", started.elapsed());
        // target/tmp (CARGO_TARGET_TMPDIR of integration tests): on the target disk, not /tmp.
        let tmp = crate::profile_dir().parent().expect("target/<profile> has a parent").join("tmp");
        std::fs::create_dir_all(&tmp).expect("create target/tmp");
        let dir = tempfile::tempdir_in(&tmp).expect("cluster temp dir under target/tmp");
        let mut daemons = Daemons::default();

        // 1. mgmtd and the admin token.
        // free_port probes loopback: a fresh namespace of a wrapped mgmtd has every port free.
        let mgmtd_address = format!("{}:{}", self.mgmtd_host, free_port());
        let mgmtd_config = format!(
            "node_id = 1\nlisten = \"{mgmtd_address}\"\nlease_timeout_ms = 2000\n\
             lease_renew_interval_ms = 500\nheartbeat_interval_ms = 200\n\
             heartbeat_timeout_ms = 3000\nfailure_check_interval_ms = 200\n\
             routing_wait_max_ms = 5000\nshutdown_grace_ms = 1000\n[kv]\nbackend = \"memory\"\n"
        );
        let on_disk = format!(
            "[kv]\nbackend = \"fjall\"\n[kv.fjall]\npath = \"{}\"\n",
            dir.path().join("mgmtd-kv").display()
        );
        let base: &[&str] =
            if self.mgmtd_kv_on_disk { &[&mgmtd_config, &on_disk] } else { &[&mgmtd_config] };
        let mgmtd_config = self.write_config(dir.path(), Role::Mgmtd, "mgmtd", base);
        daemons.mgmtd = Some(self.daemon(Role::Mgmtd, "r3fs-mgmtd", mgmtd_config, Vec::new()));
        let bootstrap = mgmtd_client(&mgmtd_address, None);
        let init = bootstrap
            .init_cluster(admin::InitClusterRequest {
                cluster_id: self.cluster_id.clone(),
                ..Default::default()
            })
            .await
            .expect("init the cluster");
        let token = init.admin_token;
        let admin = mgmtd_client(&mgmtd_address, Some(token.clone()));
        phase("mgmtd up, cluster initialized");

        // 2. Storage daemons: started together, awaited in turn, so their start-ups overlap.
        let nodes: Vec<u32> =
            (FIRST_STORAGE_NODE..FIRST_STORAGE_NODE + self.storage_nodes).collect();
        let mut pending = Vec::new();
        for &node in &nodes {
            // Cluster::storage_disk names the same directory.
            let disk = self.disk(dir.path(), node);
            std::fs::create_dir_all(&disk).expect("create the storage disk directory");
            let text = format!(
                "node_id = {node}\ntarget_paths = [\"{disk}\"]\ntargets_per_path = {per_path}\n\
                 cores = {cores}\nmgmtd_addresses = [\"{mgmtd_address}\"]\ntoken = \"{token}\"\n\
                 listen_host = \"127.0.0.1\"\nio_memory_bytes = 1048576\ntick_interval_ms = 10\n\
                 shutdown_drain_ms = 2000\n\
                 [store]\ncapacity_bytes = {capacity}\nheader_cache_bytes = 4194304\n\
                 log_compaction_bytes_min = 8388608\nlog_extent_bytes = 1048576\n\
                 commit_batch_records_max = 256\ngrow_bytes_max = 67108864\n\
                 [replica]\nchunk_size_bytes_max = 4194304\nheld_payload_bytes_max = 268435456\n\
                 forward_retry_interval_ms = 100\n",
                disk = disk.display(),
                per_path = self.chains.max(4),
                cores = self.storage_cores,
                capacity = self.target_capacity_bytes,
            );
            let name = format!("storage{node}");
            let node_overrides = self.node_overrides.get(&node).map(Vec::as_slice);
            let config = self.write_config_then(
                dir.path(),
                Role::Storage,
                &name,
                &[&text],
                node_overrides.unwrap_or_default(),
            );
            let mut launch = self.command(Role::Storage, config, Vec::new());
            if let Some(wrapper) = self.node_wrappers.get(&node) {
                launch.wrapper = wrapper.clone();
            }
            let daemon = Daemon::spawn_unready(
                format!("r3fs-storage-{node}"),
                launch,
                Role::Storage.ready_line(),
            );
            pending.push((node, daemon));
        }
        for (node, mut daemon) in pending {
            daemon.wait_ready();
            daemons.storage.insert(node, daemon);
        }
        phase("storage daemons up");

        let mut cluster = Cluster {
            daemons,
            admin,
            token,
            mgmtd_address,
            meta_address: None,
            nodes,
            chains: BTreeMap::new(),
            settings: self.clone(),
            dir,
        };

        // 3. Targets, chains, the chain table.
        if self.chains > 0 {
            let n = self.storage_nodes as usize;
            for chain in 1..=self.chains {
                let members = (0..self.replication as usize)
                    .map(|k| {
                        let node = cluster.nodes[(chain as usize - 1 + k) % n];
                        (target_id(chain, node), node)
                    })
                    .collect::<Vec<_>>();
                cluster.chains.insert(chain, members);
            }
            cluster.create_targets_and_chains().await;
            let table = cluster
                .admin
                .upload_chain_table(admin::UploadChainTableRequest {
                    table_id: CHAIN_TABLE_ID,
                    chain_ids: cluster.chains.keys().copied().collect(),
                    description: format!("{} (r3fs-testkit)", self.cluster_id),
                })
                .await
                .expect("upload the chain table");
            assert_eq!(table.version, 1, "a new cluster's chain table is version 1");
            phase("chains serving");
        }

        // 4. meta.
        if let Some(auth) = self.meta {
            let address = format!("127.0.0.1:{}", free_port());
            let mut text = format!(
                "listen = \"{address}\"\n[kv]\nbackend = \"memory\"\n\
                 [meta.format.root_layout]\nchain_table_id = {CHAIN_TABLE_ID}\n\
                 chain_table_version = 1\nchunk_size = {chunk}\nstripe_size = {stripe}\n\
                 chains = {{ ShuffleV1 = {{ seed = 0 }} }}\n",
                chunk = self.chunk_size_bytes,
                stripe = self.stripe_size.unwrap_or(self.chains),
            );
            match auth {
                MetaAuth::StaticAdmin => text.push_str(&format!(
                    "[[auth.static_users]]\ntoken = \"{}\"\nuid = 0\ngid = 0\nadmin = true\n",
                    cluster.token
                )),
                MetaAuth::Mgmtd => text.push_str(&format!(
                    "[mgmtd]\naddresses = [\"{}\"]\ntoken_file = \"{}\"\n",
                    cluster.mgmtd_address,
                    cluster.token_file().display()
                )),
            }
            let config = self.write_config(cluster.dir(), Role::Meta, "meta", &[&text]);
            cluster.daemons.meta = Some(self.daemon(Role::Meta, "r3fs-meta", config, Vec::new()));
            cluster.meta_address = Some(address);
            phase("meta up");
        }

        // 5. The mount.
        if self.fuse {
            let mount = cluster.mount_fuse("mnt");
            cluster.daemons.fuse = Some(mount);
            phase("fuse mounted");
        }
        cluster
    }

    /// Where storage node `node` keeps its targets.
    fn disk(&self, dir: &Path, node: u32) -> PathBuf {
        self.disks.get(&node).cloned().unwrap_or_else(|| dir.join(format!("node{node}-disk0")))
    }

    fn check(&self) {
        assert!(self.storage_nodes >= 1, "a cluster needs a storage daemon");
        assert!(
            FIRST_STORAGE_NODE + self.storage_nodes <= 100,
            "target ids are chain * 100 + node: at most 98 storage nodes"
        );
        // With chains(0) the test places its own chains: the replication setting is unused.
        assert!(
            self.chains == 0 || (1..=self.storage_nodes).contains(&self.replication),
            "replication {} needs 1..={} storage nodes",
            self.replication,
            self.storage_nodes
        );
        let nodes = FIRST_STORAGE_NODE..FIRST_STORAGE_NODE + self.storage_nodes;
        let per_node = self.node_overrides.keys().chain(self.disks.keys());
        for node in per_node.chain(self.node_wrappers.keys()) {
            assert!(nodes.contains(node), "storage node {node} is not one of {nodes:?}");
        }
        assert!(self.meta.is_none() || self.chains > 0, "meta's root layout needs chains");
        assert!(!self.fuse || self.meta.is_some(), "the FUSE mount needs meta");
    }

    fn write_config(&self, dir: &Path, role: Role, name: &str, base: &[&str]) -> PathBuf {
        self.write_config_then(dir, role, name, base, &[])
    }

    /// `base`, then the role's overrides, then `last` (one daemon's own overrides).
    fn write_config_then(
        &self,
        dir: &Path,
        role: Role,
        name: &str,
        base: &[&str],
        last: &[String],
    ) -> PathBuf {
        let mut table = toml::Table::new();
        let overrides = self.overrides.get(&role).map(Vec::as_slice).unwrap_or_default();
        let texts = base.iter().copied().chain(overrides.iter().chain(last).map(String::as_str));
        for text in texts {
            let part: toml::Table = text
                .parse()
                .unwrap_or_else(|e| panic!("{name} config fragment is not TOML ({e}):\n{text}"));
            merge(&mut table, part);
        }
        let path = dir.join(format!("{name}.toml"));
        let text = toml::to_string(&table).expect("render a TOML table");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn command(&self, role: Role, config: PathBuf, env: Vec<(String, OsString)>) -> Launch {
        let program = self
            .binaries
            .get(&role)
            .cloned()
            .unwrap_or_else(|| binary(role.package(), role.package()));
        let log = self.log_filters.get(&role).cloned().unwrap_or_else(|| "info".into());
        let mut env = env;
        env.push(("RUST_LOG".into(), log.into()));
        let wrapper = self.wrappers.get(&role).cloned().unwrap_or_default();
        Launch { wrapper, program, config, env }
    }

    fn daemon(
        &self,
        role: Role,
        name: &str,
        config: PathBuf,
        env: Vec<(String, OsString)>,
    ) -> Daemon {
        let mut daemon = Daemon::spawn_unready(
            name.to_string(),
            self.command(role, config, env),
            role.ready_line(),
        );
        daemon.wait_ready();
        daemon
    }
}

/// Deep merge: tables merge key by key, everything else in `from` replaces what `into` has.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge(existing, table)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn mgmtd_client(address: &str, token: Option<String>) -> MgmtdClient {
    let mut config = MgmtdClientConfig::new(vec![address.to_string()], token);
    config.request_timeout_ms = 10_000;
    MgmtdClient::new(config).expect("mgmtd client")
}

/// How to (re)start one daemon.
#[derive(Debug, Clone)]
struct Launch {
    /// argv run before the program (empty: the program itself).
    wrapper: Vec<String>,
    program: PathBuf,
    config: PathBuf,
    env: Vec<(String, OsString)>,
}

/// One daemon process and how to start it again.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    launch: Launch,
    ready_line: &'static str,
    proc: Proc,
}

impl Daemon {
    fn spawn_unready(name: String, launch: Launch, ready_line: &'static str) -> Daemon {
        let proc = launch.spawn(&name);
        Daemon { name, launch, ready_line, proc }
    }

    fn wait_ready(&mut self) -> String {
        self.proc.wait_for_line(self.ready_line, START_TIMEOUT)
    }

    /// The process (its output, `wait_for_line`, `kill9`, `terminate`).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.launch.config
    }

    /// Starts the daemon again with the same config (killing it first if it still runs) and
    /// waits for its readiness line.
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc = self.launch.spawn(&self.name);
        self.wait_ready();
    }

    fn tail(&mut self) -> String {
        let lines = self.proc.output();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!("---- last {} lines of {} ----\n{}", tail.len(), self.name, tail.join("\n"))
    }

    fn print_tail(&mut self) {
        eprintln!("{}", self.tail());
    }

    /// After SIGTERM: `None` if the daemon exited with status 0 within [`STOP_GRACE`], else what
    /// happened and the tail of its output.
    fn wait_stopped(&mut self) -> Option<String> {
        let already = self.proc.has_exited();
        let how = match self.proc.wait_exit(STOP_GRACE) {
            Some(status) if status.success() => return None,
            Some(status) => format!("exited with {status}"),
            None if already => "had died before the stop".to_string(),
            None => format!("was killed: still running {STOP_GRACE:?} after SIGTERM"),
        };
        let tail = self.tail();
        Some(format!("{} {how}\n{tail}", self.name))
    }
}

impl Launch {
    fn spawn(&self, name: &str) -> Proc {
        let mut command = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.arg("--config").arg(&self.config);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        Proc::spawn(name, command)
    }
}

/// Every daemon, stopped in reverse start order when dropped.
#[derive(Debug, Default)]
struct Daemons {
    mgmtd: Option<Daemon>,
    storage: BTreeMap<u32, Daemon>,
    meta: Option<Daemon>,
    fuse: Option<FuseMount>,
}

impl Daemons {
    fn print_tails(&mut self) {
        let fuse = self.fuse.as_mut().map(|f| &mut f.daemon);
        let all =
            self.mgmtd.iter_mut().chain(self.storage.values_mut()).chain(self.meta.iter_mut());
        for daemon in all.chain(fuse) {
            daemon.print_tail();
        }
    }

    /// SIGTERM, last started first; the storage daemons together. Returns a line for each
    /// daemon that did not exit with status 0 within [`STOP_GRACE`] (it is killed then), with
    /// the tail of its output.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut fuse) = self.fuse.take() {
            problems.extend(fuse.stop());
        }
        let meta = self.meta.take();
        let storage = std::mem::take(&mut self.storage).into_values();
        let mgmtd = self.mgmtd.take();
        let stages: [Vec<Daemon>; 3] =
            [meta.into_iter().collect(), storage.collect(), mgmtd.into_iter().collect()];
        for mut stage in stages {
            for daemon in &mut stage {
                daemon.proc.send_sigterm();
            }
            for daemon in &mut stage {
                problems.extend(daemon.wait_stopped());
            }
        }
        problems
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_tails();
            // Fast: the mount still goes first (its Drop detaches it), the rest are killed.
            self.fuse.take();
        } else {
            self.stop();
        }
    }
}

/// A running cluster; see the module docs. Dropping it stops everything and removes its
/// directory.
#[derive(Debug)]
pub struct Cluster {
    daemons: Daemons,
    admin: MgmtdClient,
    token: String,
    mgmtd_address: String,
    meta_address: Option<String>,
    nodes: Vec<u32>,
    /// Chain id -> (target id, node id) of its members, head first.
    chains: BTreeMap<u32, Vec<(u64, u32)>>,
    /// What the cluster was built with (overrides, binaries, log filters for later daemons).
    settings: ClusterBuilder,
    // Last: removed after every process is gone.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Settings with defaults: 3 storage nodes, replication 3, 3 chains, 64 KiB chunks, one core
    /// per storage daemon, 256 MiB per target, no meta, no mount. `cluster_id` names the cluster
    /// in mgmtd (and in the chain table's description).
    pub fn builder(cluster_id: &str) -> ClusterBuilder {
        ClusterBuilder {
            cluster_id: cluster_id.to_string(),
            storage_nodes: 3,
            replication: 3,
            chains: 3,
            chunk_size_bytes: 64 << 10,
            stripe_size: None,
            storage_cores: 1,
            target_capacity_bytes: 256 << 20,
            mgmtd_kv_on_disk: false,
            meta: None,
            fuse: false,
            overrides: BTreeMap::new(),
            node_overrides: BTreeMap::new(),
            disks: BTreeMap::new(),
            mgmtd_host: "127.0.0.1".to_string(),
            wrappers: BTreeMap::new(),
            node_wrappers: BTreeMap::new(),
            log_filters: BTreeMap::new(),
            binaries: BTreeMap::new(),
        }
    }

    /// The cluster's directory (configs, disks, the mount point).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn mgmtd_address(&self) -> &str {
        &self.mgmtd_address
    }

    /// meta's address. Panics if the cluster runs no meta.
    pub fn meta_address(&self) -> &str {
        self.meta_address.as_deref().expect("the cluster runs no meta (builder: .meta(..))")
    }

    /// The admin token made by init-cluster.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A file holding the admin token (for configs that take `token_file`).
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir().join("admin.token");
        if !path.exists() {
            std::fs::write(&path, format!("{}\n", self.token)).expect("write the token file");
        }
        path
    }

    /// An mgmtd client holding the admin token.
    pub fn admin(&self) -> &MgmtdClient {
        &self.admin
    }

    /// Storage node ids, ascending.
    pub fn storage_nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// Chain ids the harness created (or [`Cluster::create_chain`] added), ascending.
    pub fn chain_ids(&self) -> Vec<u32> {
        self.chains.keys().copied().collect()
    }

    /// Target ids of `chain`, head first as uploaded.
    pub fn chain_targets(&self, chain: u32) -> Vec<u64> {
        self.chains.get(&chain).map(|m| m.iter().map(|t| t.0).collect()).unwrap_or_default()
    }

    /// Every target the cluster created.
    pub fn target_ids(&self) -> Vec<u64> {
        self.chains.values().flatten().map(|t| t.0).collect()
    }

    pub fn mgmtd(&mut self) -> &mut Daemon {
        self.daemons.mgmtd.as_mut().expect("mgmtd runs while the cluster lives")
    }

    /// The storage daemon of `node`. Panics on an unknown node.
    pub fn storage(&mut self, node: u32) -> &mut Daemon {
        self.daemons.storage.get_mut(&node).unwrap_or_else(|| panic!("no storage node {node}"))
    }

    /// The directory holding the targets of storage node `node` (its `target_paths[0]`).
    pub fn storage_disk(&self, node: u32) -> PathBuf {
        self.settings.disk(self.dir(), node)
    }

    /// meta's daemon. Panics if the cluster runs no meta.
    pub fn meta(&mut self) -> &mut Daemon {
        self.daemons.meta.as_mut().expect("the cluster runs no meta (builder: .meta(..))")
    }

    /// The mount started by the builder's `.fuse()`, if any.
    pub fn fuse(&mut self) -> Option<&mut FuseMount> {
        self.daemons.fuse.as_mut()
    }

    /// SIGKILL storage node `node`, as a crash would.
    pub fn kill9_storage(&mut self, node: u32) {
        self.storage(node).proc.kill9();
    }

    /// Starts storage node `node` again (same config and disk) and waits until it serves its
    /// data plane (its targets may still be recovering: wait with [`Cluster::wait_serving`]).
    pub fn restart_storage(&mut self, node: u32) {
        self.storage(node).restart();
    }

    /// Starts mgmtd again on the same address. Without `mgmtd_kv_on_disk` it comes back empty.
    pub fn restart_mgmtd(&mut self) {
        self.mgmtd().restart();
    }

    /// Creates chain `chain` of `members` ((target id, node id), head first): the targets, a
    /// wait until their daemons report them up to date (a chain uploaded before starts
    /// degraded), the chain, and a wait until every member serves. Does not touch the chain table.
    pub async fn create_chain(&mut self, chain: u32, members: &[(u64, u32)]) {
        self.chains.insert(chain, members.to_vec());
        let only: BTreeMap<u32, Vec<(u64, u32)>> = [(chain, members.to_vec())].into();
        create_targets_and_chains(&self.admin, &only).await;
    }

    async fn create_targets_and_chains(&self) {
        create_targets_and_chains(&self.admin, &self.chains).await;
    }

    /// Waits until every target in `targets` is public state SERVING.
    pub async fn wait_serving(&self, targets: &[u64]) {
        wait_target_states(&self.admin, targets, "serving", |t| {
            t.public_state == pb::PublicTargetState::Serving as i32
        })
        .await;
    }

    /// Mounts another r3fs-fuse on `<dir>/<name>` (meta required), its ring-server socket in
    /// `<dir>/<name>-run` (`R3FS_USRBIO_DIR`). Unmounted when the returned value drops.
    pub fn mount_fuse(&self, name: &str) -> FuseMount {
        let builder = &self.settings;
        let mountpoint = self.dir().join(name);
        let socket_dir = self.dir().join(format!("{name}-run"));
        std::fs::create_dir_all(&mountpoint).expect("create the mount point");
        let text = format!(
            "mountpoint = \"{}\"\nmgmtd_addresses = [\"{}\"]\nmeta_addresses = [\"{}\"]\n\
             token_file = \"{}\"\nthreads = 4\n",
            mountpoint.display(),
            self.mgmtd_address,
            self.meta_address(),
            self.token_file().display()
        );
        let config =
            builder.write_config(self.dir(), Role::Fuse, &format!("fuse-{name}"), &[&text]);
        let env = vec![("R3FS_USRBIO_DIR".to_string(), socket_dir.clone().into_os_string())];
        let mut daemon = Daemon::spawn_unready(
            format!("r3fs-fuse-{name}"),
            builder.command(Role::Fuse, config, env),
            Role::Fuse.ready_line(),
        );
        let line = daemon.wait_ready();
        assert_eq!(line, format!("r3fs-fuse mounted {}", mountpoint.display()));
        assert_eq!(statfs_type(&mountpoint), Some(FUSE_SUPER_MAGIC), "the mount answers");
        FuseMount { daemon, mountpoint, socket_dir }
    }

    /// Stops every daemon cleanly (SIGTERM, last started first; daemons of one role together)
    /// and returns a report (what happened, the tail of its output) for each daemon that did not
    /// exit with status 0 within [`STOP_GRACE`], including one that had died before.
    pub fn stop(mut self) -> Vec<String> {
        self.daemons.stop()
    }
}

async fn create_targets_and_chains(admin: &MgmtdClient, chains: &BTreeMap<u32, Vec<(u64, u32)>>) {
    let targets: Vec<admin::TargetSpec> = chains
        .iter()
        .flat_map(|(&chain, members)| {
            members.iter().map(move |&(target, node)| admin::TargetSpec {
                target_id: target,
                node_id: node,
                disk_index: 0,
                chain_id: chain,
            })
        })
        .collect();
    let ids: Vec<u64> = targets.iter().map(|t| t.target_id).collect();
    admin.create_targets(admin::CreateTargetsRequest { targets }).await.expect("create targets");
    wait_target_states(admin, &ids, "up to date", |t| {
        t.local_state == pb::LocalTargetState::UpToDate as i32
    })
    .await;
    let specs = chains
        .iter()
        .map(|(&chain, members)| admin::ChainSpec {
            chain_id: chain,
            target_ids: members.iter().map(|m| m.0).collect(),
        })
        .collect();
    admin.upload_chains(admin::UploadChainsRequest { chains: specs }).await.expect("upload chains");
    wait_target_states(admin, &ids, "serving", |t| {
        t.public_state == pb::PublicTargetState::Serving as i32
    })
    .await;
}

async fn wait_target_states(
    admin: &MgmtdClient,
    targets: &[u64],
    what: &str,
    good: impl Fn(&pb::TargetInfo) -> bool,
) {
    let wanted: BTreeSet<u64> = targets.iter().copied().collect();
    let mut last = String::from("no answer from mgmtd yet");
    let reached = eventually_within(WAIT_TIMEOUT, async || {
        let list = match admin.list_targets(admin::ListTargetsRequest {}).await {
            Ok(list) => list,
            Err(status) => {
                last = format!("list targets: {status}");
                return None;
            }
        };
        let bad: Vec<String> = list
            .targets
            .iter()
            .filter(|t| wanted.contains(&t.target_id) && !good(t))
            .map(|t| {
                format!("{} (public {}, local {})", t.target_id, t.public_state, t.local_state)
            })
            .collect();
        let known = list.targets.iter().filter(|t| wanted.contains(&t.target_id)).count();
        if bad.is_empty() && known == wanted.len() {
            return Some(());
        }
        last = format!("{known} of {} known; not yet: {}", wanted.len(), bad.join(", "));
        None
    })
    .await;
    assert!(reached.is_some(), "targets not {what} within {WAIT_TIMEOUT:?}: {last}");
}

/// Polls `check` every 100 ms until it returns `Some` (returned) or `timeout` passes (`None`).
pub async fn eventually_within<T>(
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 100 ms until it returns `Some`; panics naming `what` after
/// [`WAIT_TIMEOUT`].
pub async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    match eventually_within(WAIT_TIMEOUT, check).await {
        Some(value) => value,
        None => panic!("timed out after {WAIT_TIMEOUT:?} waiting for {what}"),
    }
}

/// The reason this machine cannot mount r3fs-fuse, if any.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is absent".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (r3fs-fuse mounts directly)".into());
    }
    None
}

/// statfs `f_type` of `path`, if it can be statted.
pub fn statfs_type(path: &Path) -> Option<i64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut buf) };
    (rc == 0).then_some(buf.f_type as i64)
}

/// r3fs-fuse mounted on a directory of the cluster. Dropping it stops the daemon (SIGTERM) and
/// detaches the mount if the daemon left it behind, however the test ended.
#[derive(Debug)]
pub struct FuseMount {
    daemon: Daemon,
    mountpoint: PathBuf,
    socket_dir: PathBuf,
}

impl FuseMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `<mountpoint>/<relative>`.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// Where the daemon's ring server puts its socket (`R3FS_USRBIO_DIR`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// SIGTERM, then a lazy unmount if the mount is still there (or dead: ENOTCONN). Returns a
    /// problem if the daemon did not exit cleanly.
    fn stop(&mut self) -> Option<String> {
        let problem = if self.daemon.proc.has_exited() {
            None
        } else {
            self.daemon.proc.send_sigterm();
            self.daemon.wait_stopped()
        };
        let mounted = statfs_type(&self.mountpoint) == Some(FUSE_SUPER_MAGIC)
            || std::fs::metadata(&self.mountpoint)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
        if mounted
            && let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
        {
            // SAFETY: umount2 reads a NUL-terminated path we own.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        problem
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.stop();
    }
}
