//! `r3fs-storage --config storage.toml`: every key but the node id, the target paths, the mgmtd
//! addresses and the token has a default in code; unknown keys are errors; [`StorageConfig::validate`]
//! reports every violation at once, relations included. The documented example lives in
//! docs/design/storage-daemon.md and a test parses it.

use r3fs_chunk::StoreConfig;
use r3fs_craq::ReplicaConfig;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// Most shards (glommio executors) one daemon runs.
pub const CORES_MAX: u32 = 64;
/// Most target paths (disks) one daemon serves.
pub const TARGET_PATHS_MAX: usize = 64;
/// Smallest registered IO memory per executor glommio works with.
pub const IO_MEMORY_BYTES_MIN: u64 = 256 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// This node's id as registered with mgmtd (non-zero, unique in the cluster).
    pub node_id: u32,
    /// One directory per disk. A target lives in `<path>/target-<id>`; mgmtd's `disk_index` of a
    /// target indexes this list.
    pub target_paths: Vec<PathBuf>,
    /// Most targets created on one path.
    pub targets_per_path: u32,
    /// Shards: one glommio executor thread each. Target `t` lives on shard `t % cores`.
    pub cores: u32,
    /// Pin shard `i` to CPU `i` (off by default: tests share small machines).
    pub pin_cores: bool,
    /// mgmtd gRPC addresses ("host:port").
    pub mgmtd_addresses: Vec<String>,
    /// Admin token presented to mgmtd (storage nodes register with an admin token).
    pub token: String,
    /// IP address the data-plane listeners bind.
    pub listen_host: String,
    /// Shard `i` listens on `listen_port_base + i`; 0 lets each shard pick a free port (tests).
    pub listen_port_base: u16,
    /// Address published to mgmtd for the data plane; empty = `listen_host`.
    pub advertise_host: String,
    /// Registered IO memory of each executor (`LocalExecutorBuilder::io_memory`). The daemon
    /// needs `cores x (3 x io_memory_bytes + 512 KiB)` of RLIMIT_MEMLOCK and refuses to start
    /// below it.
    pub io_memory_bytes: u64,
    /// Payload bytes one connection may have in flight (read but not yet answered); reading from
    /// the socket pauses beyond it.
    pub inflight_bytes_max: u64,
    /// Requests one connection may have in flight.
    pub inflight_requests_max: u32,
    /// Open data-plane connections per shard; more are closed at once.
    pub connections_max: u32,
    /// Frames queued to one peer (another shard); more are dropped (the replica resends).
    pub peer_queue_len_max: u32,
    /// How often each replica's clock ticks (drives resends).
    pub tick_interval_ms: u64,
    /// Bounded wait at SIGTERM for replicas to finish their work before the stores close.
    pub shutdown_drain_ms: u64,
    /// How long a connect to mgmtd or a peer may take.
    pub connect_timeout_ms: u64,
    /// Resync bandwidth per shard: full-chunk transfers to a syncing successor are paced to this
    /// many payload bytes per second (0 = unlimited). Frames behind a paced transfer on the same
    /// link wait with it, so the link stays in order.
    pub resync_bytes_per_sec: u64,
    /// Chunk store knobs of every target (`[store]`, see r3fs_chunk::StoreConfig).
    pub store: StoreConfig,
    /// CRAQ replica bounds of every target (`[replica]`, see r3fs_craq::ReplicaConfig).
    pub replica: ReplicaConfig,
    /// Metrics endpoint and push target (`[metrics]`, see r3fs_metrics::MetricsConfig).
    pub metrics: r3fs_metrics::MetricsConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            target_paths: Vec::new(),
            targets_per_path: 16,
            cores: 1,
            pin_cores: false,
            mgmtd_addresses: Vec::new(),
            token: String::new(),
            listen_host: "127.0.0.1".to_string(),
            listen_port_base: 0,
            advertise_host: String::new(),
            io_memory_bytes: 1 << 20,
            inflight_bytes_max: 256 << 20,
            inflight_requests_max: 1024,
            connections_max: 1024,
            peer_queue_len_max: 4096,
            tick_interval_ms: 20,
            shutdown_drain_ms: 10_000,
            connect_timeout_ms: 2_000,
            resync_bytes_per_sec: 0,
            store: StoreConfig::default(),
            replica: ReplicaConfig::default(),
            metrics: r3fs_metrics::MetricsConfig::default(),
        }
    }
}

impl StorageConfig {
    /// Parses a config file's text.
    pub fn from_toml(text: &str) -> Result<StorageConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.node_id == 0 {
            errors.push("node_id must be non-zero".to_string());
        }
        if self.target_paths.is_empty() {
            errors.push("target_paths must list at least one directory".to_string());
        }
        if self.target_paths.len() > TARGET_PATHS_MAX {
            errors.push(format!("target_paths lists more than {TARGET_PATHS_MAX} directories"));
        }
        for (i, path) in self.target_paths.iter().enumerate() {
            if !path.is_absolute() {
                errors.push(format!("target_paths[{i}] {} is not absolute", path.display()));
            }
            if self.target_paths[..i].contains(path) {
                errors.push(format!("target_paths[{i}] {} is listed twice", path.display()));
            }
        }
        if self.targets_per_path == 0 {
            errors.push("targets_per_path must be positive".to_string());
        }
        if self.cores == 0 || self.cores > CORES_MAX {
            errors.push(format!("cores ({}) must be in 1..={CORES_MAX}", self.cores));
        }
        if self.mgmtd_addresses.is_empty() {
            errors.push("mgmtd_addresses must list at least one mgmtd".to_string());
        }
        for address in &self.mgmtd_addresses {
            if address.contains("://") || !address.contains(':') {
                errors.push(format!("mgmtd address {address:?} is not host:port"));
            }
        }
        if self.token.is_empty() {
            errors.push("token must be set (an admin token from init-cluster)".to_string());
        }
        if self.listen_host.parse::<IpAddr>().is_err() {
            errors.push(format!("listen_host {:?} is not an IP address", self.listen_host));
        }
        if !self.advertise_host.is_empty() && self.advertise_host.parse::<IpAddr>().is_err() {
            errors.push(format!("advertise_host {:?} is not an IP address", self.advertise_host));
        }
        if self.listen_port_base != 0
            && u32::from(self.listen_port_base) + self.cores > u32::from(u16::MAX) + 1
        {
            errors.push(format!(
                "listen_port_base ({}) + cores ({}) runs past port 65535",
                self.listen_port_base, self.cores
            ));
        }
        if self.io_memory_bytes < IO_MEMORY_BYTES_MIN || !self.io_memory_bytes.is_multiple_of(4096)
        {
            errors.push(format!(
                "io_memory_bytes ({}) must be a multiple of 4096 and at least {IO_MEMORY_BYTES_MIN}",
                self.io_memory_bytes
            ));
        }
        let frame_max = u64::from(self.replica.chunk_size_bytes_max);
        if self.inflight_bytes_max < frame_max {
            errors.push(format!(
                "inflight_bytes_max ({}) must hold one full chunk (replica.chunk_size_bytes_max = {})",
                self.inflight_bytes_max, frame_max
            ));
        }
        if u64::from(self.replica.chunk_size_bytes_max) > u64::from(r3fs_wire::PAYLOAD_LEN_MAX) {
            errors.push(format!(
                "replica.chunk_size_bytes_max ({}) exceeds the wire payload limit {}",
                self.replica.chunk_size_bytes_max,
                r3fs_wire::PAYLOAD_LEN_MAX
            ));
        }
        for (name, value) in [
            ("inflight_requests_max", u64::from(self.inflight_requests_max)),
            ("connections_max", u64::from(self.connections_max)),
            ("peer_queue_len_max", u64::from(self.peer_queue_len_max)),
            ("tick_interval_ms", self.tick_interval_ms),
            ("shutdown_drain_ms", self.shutdown_drain_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be positive"));
            }
        }
        if self.tick_interval_ms > self.replica.forward_retry_interval_ms {
            errors.push(format!(
                "tick_interval_ms ({}) must not exceed replica.forward_retry_interval_ms ({}): \
                 resends are driven by ticks",
                self.tick_interval_ms, self.replica.forward_retry_interval_ms
            ));
        }
        if let Err(store) = self.store.validate() {
            errors.extend(store.into_iter().map(|e| format!("store.{e}")));
        }
        if let Err(replica) = self.replica.validate() {
            errors.extend(replica.violations.into_iter().map(|e| format!("replica.{e}")));
        }
        errors.extend(self.metrics.validate());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Locked memory the daemon's executors register: checked against RLIMIT_MEMLOCK at start.
    pub fn memlock_needed_bytes(&self) -> u64 {
        u64::from(self.cores) * r3fs_chunk::dma::memlock_needed_bytes(self.io_memory_bytes)
    }

    /// The host published for the data plane.
    pub fn advertised_host(&self) -> &str {
        if self.advertise_host.is_empty() { &self.listen_host } else { &self.advertise_host }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> StorageConfig {
        StorageConfig::from_toml(
            r#"
            node_id = 7
            target_paths = ["/data/d0"]
            mgmtd_addresses = ["127.0.0.1:9100"]
            token = "secret"
            "#,
        )
        .expect("minimal config parses")
    }

    #[test]
    fn minimal_config_is_valid() {
        assert_eq!(minimal().validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = StorageConfig::from_toml("node_id = 1\nnodeid = 2\n").expect_err("unknown key");
        assert!(error.to_string().contains("nodeid"), "{error}");
        let error =
            StorageConfig::from_toml("[store]\ncapacity = 1\n").expect_err("unknown nested key");
        assert!(error.to_string().contains("capacity"), "{error}");
    }

    #[test]
    fn every_violation_is_reported() {
        let config = StorageConfig {
            node_id: 0,
            target_paths: vec![PathBuf::from("relative"), PathBuf::from("relative")],
            targets_per_path: 0,
            cores: 0,
            token: String::new(),
            listen_host: "not-an-ip".into(),
            io_memory_bytes: 1000,
            inflight_bytes_max: 1,
            tick_interval_ms: 0,
            replica: ReplicaConfig { chunks_active_max: 0, ..ReplicaConfig::default() },
            ..StorageConfig::default()
        };
        let errors = config.validate().expect_err("invalid");
        for needle in [
            "node_id",
            "target_paths[0]",
            "listed twice",
            "targets_per_path",
            "cores",
            "mgmtd_addresses",
            "token",
            "listen_host",
            "io_memory_bytes",
            "inflight_bytes_max",
            "tick_interval_ms must be positive",
            "replica.chunks_active_max",
        ] {
            assert!(errors.iter().any(|e| e.contains(needle)), "{needle} missing from {errors:#?}");
        }
    }

    /// The documented example names every key and is valid.
    #[test]
    fn documented_example_parses_and_validates() {
        let doc = include_str!("../../../docs/design/storage-daemon.md");
        let start = doc.find("```toml").expect("example block") + "```toml".len();
        let end = start + doc[start..].find("```").expect("end of example");
        let config = StorageConfig::from_toml(&doc[start..end]).expect("example parses");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!((config.node_id, config.cores, config.listen_port_base), (2, 2, 9200));
    }

    #[test]
    fn memlock_sizing_is_explicit() {
        let config = StorageConfig { cores: 2, io_memory_bytes: 1 << 20, ..minimal() };
        // 2 shards x (3 rings x 1 MiB + 512 KiB).
        assert_eq!(config.memlock_needed_bytes(), 2 * (3 * (1 << 20) + (512 << 10)));
    }
}
