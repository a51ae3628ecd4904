//! What `r3fs up` decides without doing IO: the cluster's recorded shape (`cluster.toml`), where
//! every piece of state lives under the data directory, and the config file of every daemon.
//!
//! Invariant: a data directory's shape (node count, replication, targets, chunk size) is fixed by
//! its first run and recorded; a later run reuses it and refuses flags that contradict it, since
//! the targets, chains and files already on disk were made for that shape.

use anyhow::{Context, bail};
use r3fs::placement::{self, Placement, PlacementSpec};
use r3fs_types::NodeId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the `cluster.toml` format; a different one is refused.
pub const STATE_FORMAT: u32 = 1;
/// Node id of the (single) mgmtd.
pub const MGMTD_NODE_ID: u32 = 1;
/// Storage node ids start here (3FS's convention, also gen-chain-table's default).
pub const FIRST_STORAGE_NODE_ID: u32 = 10_001;
/// The chain table files are striped over.
pub const CHAIN_TABLE_ID: u32 = 1;
pub const DEFAULT_STORAGE_NODES: u32 = 3;
pub const DEFAULT_REPLICATION: u32 = 3;
/// Lower bound for the default targets per node: enough chains that a file's stripes spread.
pub const DEFAULT_TARGETS_PER_NODE_MIN: u32 = 4;
pub const DEFAULT_CHUNK_SIZE_BYTES: u32 = 1 << 20;
/// Most chains one file stripes over by default.
pub const STRIPE_SIZE_MAX: u32 = 8;
/// Capacity given to each target when the file system's free space cannot be read.
pub const TARGET_CAPACITY_BYTES_FALLBACK: u64 = 64 << 30;
/// Smallest capacity given to a target.
pub const TARGET_CAPACITY_BYTES_MIN: u64 = 1 << 30;
/// Registered IO memory per storage executor: with one shard, 3 x 1 MiB + 512 KiB of locked
/// memory, well under the 8 MiB RLIMIT_MEMLOCK Debian gives a login by default.
pub const STORAGE_IO_MEMORY_BYTES: u64 = 1 << 20;

/// The shape of the cluster in a data directory, fixed by the first run (`cluster.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterShape {
    pub format: u32,
    pub storage_nodes: u32,
    pub replication: u32,
    pub targets_per_node: u32,
    pub chunk_size_bytes: u32,
    pub stripe_size: u32,
    pub target_capacity_bytes: u64,
}

/// The shape flags as given on the command line (absent = recorded value or default).
#[derive(Clone, Copy, Debug, Default)]
pub struct ShapeFlags {
    pub storage_nodes: Option<u32>,
    pub replication: Option<u32>,
    pub targets_per_node: Option<u32>,
    pub chunk_size_bytes: Option<u32>,
}

impl ClusterShape {
    /// The shape of a new cluster from the flags, with defaults for what is absent.
    /// `free_bytes` is the free space of the data directory's file system, if known.
    pub fn new(flags: ShapeFlags, free_bytes: Option<u64>) -> anyhow::Result<ClusterShape> {
        let storage_nodes = flags.storage_nodes.unwrap_or(DEFAULT_STORAGE_NODES);
        let replication = flags.replication.unwrap_or(DEFAULT_REPLICATION);
        if storage_nodes == 0 {
            bail!("--storage-nodes must be at least 1");
        }
        if replication == 0 || replication > storage_nodes {
            bail!(
                "--replication {replication} needs 1..={storage_nodes} (replicas of a chain sit on distinct storage nodes)"
            );
        }
        let targets_per_node = match flags.targets_per_node {
            Some(n) => n,
            None => placement::targets_per_disk_for(
                storage_nodes as usize,
                1,
                replication,
                DEFAULT_TARGETS_PER_NODE_MIN,
            )
            .context("choose targets per node")?,
        };
        let chunk_size_bytes = flags.chunk_size_bytes.unwrap_or(DEFAULT_CHUNK_SIZE_BYTES);
        if !chunk_size_bytes.is_power_of_two() || !(64 << 10..=4 << 20).contains(&chunk_size_bytes)
        {
            bail!("--chunk-size {chunk_size_bytes} must be a power of two in 64 KiB..=4 MiB");
        }
        let mut shape = ClusterShape {
            format: STATE_FORMAT,
            storage_nodes,
            replication,
            targets_per_node,
            chunk_size_bytes,
            stripe_size: 1,
            target_capacity_bytes: TARGET_CAPACITY_BYTES_FALLBACK,
        };
        let chains = shape.placement()?.chains.len() as u32;
        shape.stripe_size = chains.clamp(1, STRIPE_SIZE_MAX);
        let targets = u64::from(storage_nodes) * u64::from(targets_per_node);
        if let Some(free) = free_bytes {
            shape.target_capacity_bytes = (free / targets).max(TARGET_CAPACITY_BYTES_MIN);
        }
        Ok(shape)
    }

    /// Refuses flags that contradict the recorded shape.
    pub fn check_flags(&self, flags: ShapeFlags, state_file: &Path) -> anyhow::Result<()> {
        let mut conflicts = Vec::new();
        for (name, given, recorded) in [
            ("--storage-nodes", flags.storage_nodes, self.storage_nodes),
            ("--replication", flags.replication, self.replication),
            ("--targets-per-node", flags.targets_per_node, self.targets_per_node),
            ("--chunk-size", flags.chunk_size_bytes, self.chunk_size_bytes),
        ] {
            if let Some(given) = given
                && given != recorded
            {
                conflicts.push(format!("{name} {given} (recorded: {recorded})"));
            }
        }
        if !conflicts.is_empty() {
            bail!(
                "this data directory holds a cluster of another shape; {} contradict {}. Omit \
                 these flags to reuse the cluster, or use a new --data directory",
                conflicts.join(", "),
                state_file.display()
            );
        }
        Ok(())
    }

    pub fn parse(text: &str) -> anyhow::Result<ClusterShape> {
        let shape: ClusterShape = toml::from_str(text)?;
        if shape.format != STATE_FORMAT {
            bail!("format {} is not the supported format {STATE_FORMAT}", shape.format);
        }
        Ok(shape)
    }

    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Written by the first `r3fs up` on this directory: the cluster's shape. Later runs\n\
             # reuse it; do not edit (targets and chains on disk were made for it).\n{body}"
        )
    }

    pub fn storage_node_ids(&self) -> Vec<NodeId> {
        (0..self.storage_nodes).map(|i| NodeId(FIRST_STORAGE_NODE_ID + i)).collect()
    }

    /// Targets, chains (head first) and the chain table: the same on every run (deterministic).
    pub fn placement(&self) -> anyhow::Result<Placement> {
        let spec = PlacementSpec {
            nodes: self.storage_node_ids(),
            disks_per_node: 1,
            targets_per_disk: self.targets_per_node,
            replication: self.replication,
        };
        placement::generate(&spec).context("place targets and chains")
    }
}

/// Where everything lives under the data directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Layout {
        Layout { root }
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("cluster.toml")
    }
    pub fn token_file(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("up.lock")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }
    pub fn config_file(&self, name: &str) -> PathBuf {
        self.config_dir().join(format!("{name}.toml"))
    }
    pub fn mgmtd_kv(&self) -> PathBuf {
        self.root.join("mgmtd").join("kv")
    }
    pub fn meta_kv(&self) -> PathBuf {
        self.root.join("meta").join("kv")
    }
    pub fn storage_disk(&self, node: NodeId) -> PathBuf {
        self.root.join("storage").join(node.0.to_string()).join("disk0")
    }
}

/// TOML string literal (paths and addresses may hold quotes or backslashes).
fn q(text: impl AsRef<str>) -> String {
    toml::Value::String(text.as_ref().to_string()).to_string()
}

fn qp(path: &Path) -> String {
    q(path.to_string_lossy())
}

pub fn mgmtd_config(layout: &Layout, listen: &str) -> String {
    format!(
        "# Generated by `r3fs up` at every start; edits are overwritten.\n\
         node_id = {MGMTD_NODE_ID}\n\
         listen = {listen}\n\
         [kv]\n\
         backend = \"fjall\"\n\
         [kv.fjall]\n\
         path = {path}\n",
        listen = q(listen),
        path = qp(&layout.mgmtd_kv()),
    )
}

pub fn storage_config(
    layout: &Layout,
    shape: &ClusterShape,
    node: NodeId,
    mgmtd: &str,
    token: &str,
    listen_port_base: u16,
) -> String {
    format!(
        "# Generated by `r3fs up` at every start; edits are overwritten. Holds the admin token.\n\
         node_id = {node}\n\
         target_paths = [{disk}]\n\
         targets_per_path = {targets}\n\
         cores = 1\n\
         mgmtd_addresses = [{mgmtd}]\n\
         token = {token}\n\
         listen_host = \"127.0.0.1\"\n\
         listen_port_base = {listen_port_base}\n\
         io_memory_bytes = {STORAGE_IO_MEMORY_BYTES}\n\
         \n\
         [store]\n\
         capacity_bytes = {capacity}\n\
         header_cache_bytes = 8388608\n\
         log_compaction_bytes_min = 16777216\n\
         log_extent_bytes = 1048576\n\
         grow_bytes_max = 67108864\n\
         \n\
         [replica]\n\
         chunk_size_bytes_max = {chunk}\n",
        node = node.0,
        disk = qp(&layout.storage_disk(node)),
        targets = shape.targets_per_node,
        mgmtd = q(mgmtd),
        token = q(token),
        capacity = shape.target_capacity_bytes,
        chunk = shape.chunk_size_bytes.max(DEFAULT_CHUNK_SIZE_BYTES),
    )
}

pub fn meta_config(layout: &Layout, shape: &ClusterShape, listen: &str, mgmtd: &str) -> String {
    format!(
        "# Generated by `r3fs up` at every start; edits are overwritten.\n\
         listen = {listen}\n\
         collector_enabled = true\n\
         \n\
         [kv]\n\
         backend = \"fjall\"\n\
         [kv.fjall]\n\
         path = {kv}\n\
         \n\
         # Used once, when meta formats its empty store: the root directory's layout.\n\
         [meta.format.root_layout]\n\
         chain_table_id = {CHAIN_TABLE_ID}\n\
         chain_table_version = 1\n\
         chunk_size = {chunk}\n\
         stripe_size = {stripe}\n\
         chains = {{ ShuffleV1 = {{ seed = 0 }} }}\n\
         \n\
         [mgmtd]\n\
         addresses = [{mgmtd}]\n\
         token_file = {token}\n",
        listen = q(listen),
        kv = qp(&layout.meta_kv()),
        chunk = shape.chunk_size_bytes,
        stripe = shape.stripe_size,
        mgmtd = q(mgmtd),
        token = qp(&layout.token_file()),
    )
}

pub fn fuse_config(layout: &Layout, mount: &Path, mgmtd: &str, meta: &str) -> String {
    format!(
        "# Generated by `r3fs up` at every start; edits are overwritten.\n\
         mountpoint = {mount}\n\
         mgmtd_addresses = [{mgmtd}]\n\
         meta_addresses = [{meta}]\n\
         token_file = {token}\n",
        mount = qp(mount),
        mgmtd = q(mgmtd),
        meta = q(meta),
        token = qp(&layout.token_file()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ClusterShape {
        ClusterShape::new(ShapeFlags::default(), Some(300 << 30)).expect("default shape")
    }

    #[test]
    fn the_default_shape_is_three_nodes_replication_three_with_several_chains() {
        let shape = shape();
        assert_eq!((shape.storage_nodes, shape.replication), (3, 3));
        let placement = shape.placement().expect("placement");
        assert_eq!(placement.targets.len() as u32, 3 * shape.targets_per_node);
        assert!(placement.chains.len() >= 4, "{}", placement.chains.len());
        for chain in &placement.chains {
            assert_eq!(chain.targets.len(), 3);
        }
        assert_eq!(shape.stripe_size, placement.chains.len() as u32);
        // 300 GiB over 12 targets.
        assert_eq!(shape.target_capacity_bytes, 25 << 30);
        assert_eq!(shape.placement().expect("again"), placement, "placement is deterministic");
    }

    #[test]
    fn the_shape_round_trips_and_contradicting_flags_are_refused() {
        let shape = shape();
        let parsed = ClusterShape::parse(&shape.render()).expect("parse");
        assert_eq!(parsed, shape);
        let path = Path::new("/d/cluster.toml");
        shape.check_flags(ShapeFlags::default(), path).expect("no flags");
        shape
            .check_flags(ShapeFlags { storage_nodes: Some(3), ..Default::default() }, path)
            .expect("same value");
        let error = shape
            .check_flags(
                ShapeFlags { storage_nodes: Some(5), replication: Some(2), ..Default::default() },
                path,
            )
            .expect_err("contradiction");
        let message = error.to_string();
        assert!(message.contains("--storage-nodes 5 (recorded: 3)"), "{message}");
        assert!(message.contains("--replication 2 (recorded: 3)"), "{message}");
        assert!(ClusterShape::parse("format = 9\n").is_err());
    }

    #[test]
    fn impossible_shapes_are_refused_with_the_reason() {
        let error = ClusterShape::new(
            ShapeFlags { storage_nodes: Some(2), replication: Some(3), ..Default::default() },
            None,
        )
        .expect_err("2 nodes cannot hold 3 replicas");
        assert!(error.to_string().contains("distinct storage nodes"), "{error}");
        assert!(
            ClusterShape::new(
                ShapeFlags { chunk_size_bytes: Some(3000), ..Default::default() },
                None
            )
            .is_err()
        );
        // 4 nodes x 1 target cannot form whole chains of 3: the error names the rule.
        let error = ClusterShape::new(
            ShapeFlags { targets_per_node: Some(1), storage_nodes: Some(4), ..Default::default() },
            None,
        )
        .expect_err("4 targets cannot form chains of 3");
        assert!(format!("{error:#}").contains("multiple"), "{error:#}");
    }

    #[test]
    fn generated_configs_parse_with_the_daemons_own_rules() {
        // The daemons are separate crates; parsing as TOML with the expected keys and quoting
        // checks what can be checked here. The end-to-end test (tests/up.rs) starts them.
        let layout = Layout::new(PathBuf::from("/tmp/dir with \"quotes\""));
        let shape = shape();
        for text in [
            mgmtd_config(&layout, "127.0.0.1:0"),
            storage_config(&layout, &shape, NodeId(10_001), "127.0.0.1:9000", "r3fs-x\"y", 0),
            meta_config(&layout, &shape, "127.0.0.1:0", "127.0.0.1:9000"),
            fuse_config(&layout, Path::new("/mnt/r3fs"), "127.0.0.1:9000", "127.0.0.1:9001"),
        ] {
            let value: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(!value.is_empty());
        }
        let storage: toml::Table = toml::from_str(&storage_config(
            &layout,
            &shape,
            NodeId(10_001),
            "127.0.0.1:9000",
            "r3fs-x\"y",
            0,
        ))
        .expect("storage");
        assert_eq!(storage["token"].as_str(), Some("r3fs-x\"y"));
        assert_eq!(
            storage["target_paths"][0].as_str(),
            Some("/tmp/dir with \"quotes\"/storage/10001/disk0")
        );
    }
}
