//! Bounds and timers of one replica. Embedded in the storage daemon's config file.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaConfig {
    /// Largest chunk; writes past it are refused with `InvalidArgument`.
    pub chunk_size_bytes_max: u32,
    /// Chunks with work in progress (active or queued updates, resync transfers); new work on
    /// other chunks is refused with `Busy` beyond it.
    pub chunks_active_max: usize,
    /// Updates queued behind the active one on one chunk; `ChunkBusy` beyond it.
    pub chunk_queue_len_max: usize,
    /// Client and forwarded payload bytes held in queues and in flight; `Busy` beyond it.
    pub held_payload_bytes_max: u64,
    /// Retries of one client write waiting for its outcome (each gets the reply).
    pub replies_per_update_max: usize,
    /// Client reads with a storage op in flight; `Busy` beyond it.
    pub reads_inflight_max: usize,
    /// How long a predecessor waits for an ack (or a refused successor to catch up) before it
    /// sends an update or a resync message again.
    pub forward_retry_interval_ms: u64,
    /// Channels remembered for idempotent retries.
    pub dedup_entries_max: usize,
    /// Chunk metadata per storage listing and per resync page.
    pub list_page_len: u32,
    /// Remote chunk metadata a resync holds in memory at once.
    pub resync_remote_metas_max: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            chunk_size_bytes_max: 64 << 20,
            chunks_active_max: 4096,
            chunk_queue_len_max: 64,
            held_payload_bytes_max: 1 << 30,
            replies_per_update_max: 8,
            reads_inflight_max: 1024,
            forward_retry_interval_ms: 500,
            dedup_entries_max: 1 << 16,
            list_page_len: 256,
            resync_remote_metas_max: 16 << 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid replica config: {}", violations.join("; "))]
pub struct ConfigError {
    pub violations: Vec<String>,
}

impl ReplicaConfig {
    /// Reports every violation at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut violations = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                violations.push(format!("{name} must be positive"));
            }
        };
        positive("chunk_size_bytes_max", u64::from(self.chunk_size_bytes_max));
        positive("chunks_active_max", self.chunks_active_max as u64);
        positive("chunk_queue_len_max", self.chunk_queue_len_max as u64);
        positive("held_payload_bytes_max", self.held_payload_bytes_max);
        positive("replies_per_update_max", self.replies_per_update_max as u64);
        positive("reads_inflight_max", self.reads_inflight_max as u64);
        positive("forward_retry_interval_ms", self.forward_retry_interval_ms);
        positive("dedup_entries_max", self.dedup_entries_max as u64);
        positive("list_page_len", u64::from(self.list_page_len));
        positive("resync_remote_metas_max", self.resync_remote_metas_max as u64);
        if self.held_payload_bytes_max < u64::from(self.chunk_size_bytes_max) {
            violations.push(format!(
                "held_payload_bytes_max ({}) must hold at least one full chunk ({})",
                self.held_payload_bytes_max, self.chunk_size_bytes_max
            ));
        }
        if violations.is_empty() { Ok(()) } else { Err(ConfigError { violations }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_violations_are_all_reported() {
        assert!(ReplicaConfig::default().validate().is_ok());
        let config = ReplicaConfig {
            chunks_active_max: 0,
            forward_retry_interval_ms: 0,
            held_payload_bytes_max: 1,
            ..ReplicaConfig::default()
        };
        let err = config.validate().expect_err("invalid");
        assert_eq!(err.violations.len(), 3, "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let parsed: Result<ReplicaConfig, _> = toml::from_str("chunk_size_bytes_max = 1024\n");
        assert_eq!(parsed.expect("known key").chunk_size_bytes_max, 1024);
        assert!(toml::from_str::<ReplicaConfig>("chunk_size_max = 1\n").is_err());
    }
}
