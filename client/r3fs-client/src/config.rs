//! The client's configuration: where mgmtd and meta are, the user token, and every bound the
//! client keeps (retries, timeouts, in-flight bytes, batch sizes). Every key has a default in code;
//! unknown keys are errors; [`ClientConfig::validate`] reports every violation at once, relations
//! included. docs/design/client.md shows a documented example that a test parses.

use r3fs_types::layout::CHUNK_SIZE_MIN;
use r3fs_wire::{BATCH_READ_ITEMS_MAX, PAYLOAD_LEN_MAX};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Upper bound of the connections kept to one storage address.
pub const CONNECTIONS_PER_ADDRESS_MAX: u32 = 64;
/// Upper bound of `write_channels`: concurrent chunk updates of one client.
pub const WRITE_CHANNELS_MAX: u32 = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// mgmtd gRPC addresses ("host:port"); the client follows the primary among them.
    pub mgmtd_addresses: Vec<String>,
    /// meta gRPC addresses ("host:port"); calls go to the first that answers.
    pub meta_addresses: Vec<String>,
    /// The user token every gRPC call (mgmtd, meta) carries as `authorization: Bearer <token>`.
    /// Data-plane frames carry none: the wire format has no field for it.
    pub token: String,
    /// This client's id for write idempotency; 0 = pick a random one at start.
    pub client_id: u64,
    pub retry: RetryConfig,
    pub storage: StorageConfig,
    pub routing: RoutingConfig,
    pub file: FileConfig,
    pub rpc: RpcConfig,
}

/// How the client retries transient failures (stale routing, not committed, connection reset,
/// busy). Backoff doubles from `backoff_initial_ms` up to `backoff_max_ms`, half fixed and half
/// jitter; an operation gives up after `attempts_max` attempts or `elapsed_max_ms`, whichever
/// comes first, with R3FS-5005 RetriesExhausted naming the last failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per operation, the first included.
    pub attempts_max: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Wall-clock bound of one operation's retries.
    pub elapsed_max_ms: u64,
}

/// The data plane: connections to storage addresses and the bounds on what is in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub connect_timeout_ms: u64,
    /// Bound of one request: from sending its first byte to its reply.
    pub request_timeout_ms: u64,
    /// Connections opened to one storage address when the existing ones are busy.
    pub connections_per_address: u32,
    /// Request and reply payload bytes in flight on one connection.
    pub inflight_bytes_per_connection_max: u64,
    /// Request and reply payload bytes in flight over all connections of this client.
    pub inflight_bytes_max: u64,
    /// Largest data of one batch-read request (its reply payload).
    pub batch_read_bytes_max: u64,
    /// Most items of one batch-read request.
    pub batch_read_items_max: u32,
    /// Concurrent chunk updates; each uses its own idempotency channel (see docs/design/client.md).
    pub write_channels: u32,
    /// Chunk requests one file operation keeps in flight at once.
    pub parallel_chunks_max: u32,
    /// Chunks one RemoveChunks request removes at most.
    pub remove_chunks_limit: u32,
}

/// How the routing cache follows mgmtd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Long-poll wait of the background watcher (mgmtd caps it with its own maximum).
    pub watch_wait_ms: u64,
    /// After a failed watch poll, wait this long before the next one.
    pub watch_retry_ms: u64,
    /// A refresh asked for within this long of the last one reuses it.
    pub refresh_interval_min_ms: u64,
    /// How long a request refused with a newer chain version waits for mgmtd to publish it.
    pub stale_wait_max_ms: u64,
}

/// The file API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// A writer reports its written length to meta at most this often (also renews its
    /// session); fsync and close always report.
    pub length_report_interval_ms: u64,
}

/// gRPC calls to meta (mgmtd calls use the same timeouts through `MgmtdClientConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            mgmtd_addresses: vec!["127.0.0.1:9100".to_string()],
            meta_addresses: Vec::new(),
            token: String::new(),
            client_id: 0,
            retry: RetryConfig::default(),
            storage: StorageConfig::default(),
            routing: RoutingConfig::default(),
            file: FileConfig::default(),
            rpc: RpcConfig::default(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts_max: 12,
            backoff_initial_ms: 10,
            backoff_max_ms: 1_000,
            elapsed_max_ms: 30_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            connections_per_address: 2,
            inflight_bytes_per_connection_max: 64 << 20,
            inflight_bytes_max: 512 << 20,
            batch_read_bytes_max: 16 << 20,
            batch_read_items_max: 1024,
            write_channels: 256,
            parallel_chunks_max: 64,
            remove_chunks_limit: 4096,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            watch_wait_ms: 30_000,
            watch_retry_ms: 500,
            refresh_interval_min_ms: 50,
            stale_wait_max_ms: 5_000,
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        Self { length_report_interval_ms: 5_000 }
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self { connect_timeout_ms: 2_000, request_timeout_ms: 10_000 }
    }
}

fn is_host_port(address: &str) -> bool {
    !address.is_empty()
        && !address.contains("://")
        && address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl ClientConfig {
    /// Parses a TOML config (unknown keys are errors) and validates it.
    pub fn from_toml(text: &str) -> Result<ClientConfig, Vec<String>> {
        let config: ClientConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        config.validate()?;
        Ok(config)
    }

    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.mgmtd_addresses.is_empty() {
            errors.push("mgmtd_addresses: at least one mgmtd address is needed".to_string());
        }
        for address in self.mgmtd_addresses.iter().chain(&self.meta_addresses) {
            if !is_host_port(address) {
                errors.push(format!("address {address:?} is not host:port"));
            }
        }
        if self.token.chars().any(|c| !c.is_ascii_graphic()) {
            errors.push("token: must be printable ASCII without spaces".to_string());
        }
        let r = &self.retry;
        if r.attempts_max == 0 {
            errors.push("retry.attempts_max must be at least 1".to_string());
        }
        if r.backoff_initial_ms == 0 {
            errors.push("retry.backoff_initial_ms must be positive".to_string());
        }
        if r.backoff_initial_ms > r.backoff_max_ms {
            errors.push(format!(
                "retry.backoff_initial_ms ({}) exceeds retry.backoff_max_ms ({})",
                r.backoff_initial_ms, r.backoff_max_ms
            ));
        }
        if r.elapsed_max_ms < r.backoff_max_ms {
            errors.push(format!(
                "retry.elapsed_max_ms ({}) must be at least retry.backoff_max_ms ({})",
                r.elapsed_max_ms, r.backoff_max_ms
            ));
        }
        let s = &self.storage;
        if s.connect_timeout_ms == 0 || s.request_timeout_ms == 0 {
            errors.push("storage timeouts must be positive".to_string());
        }
        if s.connections_per_address == 0 || s.connections_per_address > CONNECTIONS_PER_ADDRESS_MAX
        {
            errors.push(format!(
                "storage.connections_per_address must be in 1..={CONNECTIONS_PER_ADDRESS_MAX}"
            ));
        }
        // Permits are counted in u32 by the semaphores. A request bigger than a window takes the
        // whole window (it runs alone), so no lower bound is needed for progress; one smallest
        // chunk is the useful minimum.
        let payload_max = u64::from(PAYLOAD_LEN_MAX);
        let window_min = u64::from(CHUNK_SIZE_MIN);
        if s.inflight_bytes_per_connection_max < window_min
            || s.inflight_bytes_per_connection_max > u64::from(u32::MAX)
        {
            errors.push(format!(
                "storage.inflight_bytes_per_connection_max must be in {window_min}..={}",
                u32::MAX
            ));
        }
        if s.inflight_bytes_max < s.inflight_bytes_per_connection_max
            || s.inflight_bytes_max > u64::from(u32::MAX)
        {
            errors.push(format!(
                "storage.inflight_bytes_max ({}) must be at least inflight_bytes_per_connection_max ({}) and at most {}",
                s.inflight_bytes_max,
                s.inflight_bytes_per_connection_max,
                u32::MAX
            ));
        }
        if s.batch_read_bytes_max == 0 || s.batch_read_bytes_max > payload_max {
            errors.push(format!("storage.batch_read_bytes_max must be in 1..={payload_max}"));
        }
        if s.batch_read_items_max == 0 || s.batch_read_items_max > BATCH_READ_ITEMS_MAX {
            errors.push(format!(
                "storage.batch_read_items_max must be in 1..={BATCH_READ_ITEMS_MAX}"
            ));
        }
        if s.write_channels == 0 || s.write_channels > WRITE_CHANNELS_MAX {
            errors.push(format!("storage.write_channels must be in 1..={WRITE_CHANNELS_MAX}"));
        }
        if s.parallel_chunks_max == 0 {
            errors.push("storage.parallel_chunks_max must be at least 1".to_string());
        }
        if s.remove_chunks_limit == 0 {
            errors.push("storage.remove_chunks_limit must be at least 1".to_string());
        }
        let g = &self.routing;
        if g.watch_wait_ms == 0 || g.watch_retry_ms == 0 || g.stale_wait_max_ms == 0 {
            errors.push(
                "routing: watch_wait_ms, watch_retry_ms and stale_wait_max_ms must be positive"
                    .to_string(),
            );
        }
        if g.stale_wait_max_ms > r.elapsed_max_ms {
            errors.push(format!(
                "routing.stale_wait_max_ms ({}) exceeds retry.elapsed_max_ms ({})",
                g.stale_wait_max_ms, r.elapsed_max_ms
            ));
        }
        if self.file.length_report_interval_ms == 0 {
            errors.push("file.length_report_interval_ms must be positive".to_string());
        }
        if self.rpc.connect_timeout_ms == 0 || self.rpc.request_timeout_ms == 0 {
            errors.push("rpc timeouts must be positive".to_string());
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.storage.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ClientConfig::default().validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_violation() {
        let mut config = ClientConfig {
            mgmtd_addresses: vec!["http://x:1".into()],
            token: "has space".into(),
            ..Default::default()
        };
        config.retry.attempts_max = 0;
        config.retry.backoff_initial_ms = 5_000;
        config.storage.inflight_bytes_max = 1;
        config.storage.batch_read_items_max = BATCH_READ_ITEMS_MAX + 1;
        config.storage.write_channels = 0;
        let errors = config.validate().expect_err("invalid");
        // address, token, attempts, initial > max, elapsed < max is fine (30s >= 1s), inflight,
        // items, channels.
        assert_eq!(errors.len(), 7, "{errors:#?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errors = ClientConfig::from_toml("tokn = \"x\"").expect_err("typo");
        assert!(errors[0].contains("tokn"), "{errors:?}");
        let errors = ClientConfig::from_toml("[storage]\nwrite_chanels = 3").expect_err("typo");
        assert!(errors[0].contains("write_chanels"), "{errors:?}");
    }

    /// The documented example in docs/design/client.md parses and shows the defaults.
    #[test]
    fn documented_example_is_the_defaults() {
        let doc = include_str!("../../../docs/design/client.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of the toml block");
        let config = ClientConfig::from_toml(&doc[start..end]).expect("the example is valid");
        assert_eq!(config, ClientConfig::default());
    }

    #[test]
    fn host_port_check() {
        assert!(is_host_port("127.0.0.1:9100"));
        assert!(is_host_port("mgmtd.r3fs:1"));
        assert!(!is_host_port("127.0.0.1"));
        assert!(!is_host_port(":80"));
        assert!(!is_host_port("x:99999"));
    }
}
