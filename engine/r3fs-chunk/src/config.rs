//! Chunk store configuration (one per target).

use crate::format::{CLASS_BYTES_MAX, RECORD_BYTES, UNIT_BYTES};
use serde::Deserialize;

/// Limits and knobs of one target's chunk store. Defaults suit a data disk; tests shrink them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Bytes of block space (headers included) the target may use. Metadata logs are extra
    /// (bounded by compaction: about `log_compaction_bytes_min` plus twice the live metadata).
    pub capacity_bytes: u64,
    /// Memory for cached block-header pages (stored unit checksums).
    pub header_cache_bytes: u64,
    /// The log is compacted when it exceeds this and twice its live size.
    pub log_compaction_bytes_min: u64,
    /// The log file is zero-filled ahead in steps of this many bytes, so that appends overwrite
    /// allocated space and a sync needs no file-system metadata update.
    pub log_extent_bytes: u64,
    /// Records per metadata-log write (one group commit).
    pub commit_batch_records_max: u32,
    /// A class file grows by at most this many bytes at a time.
    pub grow_bytes_max: u64,
    /// Chunk-data bytes written to the device at once; more wait in the store, in arrival
    /// order (`gate.rs`). Just enough to keep the disk busy: what is queued beyond that only
    /// delays the log writes and syncs that every update waits for. A larger write goes alone.
    pub write_inflight_bytes_max: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            capacity_bytes: 1 << 40,
            header_cache_bytes: 64 << 20,
            log_compaction_bytes_min: 64 << 20,
            log_extent_bytes: 4 << 20,
            commit_batch_records_max: 4096,
            grow_bytes_max: 256 << 20,
            write_inflight_bytes_max: 8 << 20,
        }
    }
}

/// Chunk bytes per group commit (a batch takes at least one record whatever its size): after a
/// crash, the opener re-reads and verifies the chunks of the last batch, so this bounds the extra
/// work of an open.
pub const COMMIT_BATCH_BYTES_MAX: u64 = 256 << 20;
const _: () = assert!(COMMIT_BATCH_BYTES_MAX >= CLASS_BYTES_MAX as u64);

/// Records of one batch must stay far below a log extent (replay tells a torn last batch from
/// mid-log damage by distance).
pub const COMMIT_BATCH_RECORDS_LIMIT: u32 = 16 * 1024;

impl StoreConfig {
    /// Every violation at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.capacity_bytes < u64::from(CLASS_BYTES_MAX) + (64 << 10) {
            errors.push(format!(
                "capacity_bytes ({}) must hold at least one largest block ({} bytes)",
                self.capacity_bytes,
                u64::from(CLASS_BYTES_MAX) + (64 << 10)
            ));
        }
        if self.log_extent_bytes == 0 || !self.log_extent_bytes.is_multiple_of(UNIT_BYTES as u64) {
            errors.push(format!(
                "log_extent_bytes ({}) must be a positive multiple of {UNIT_BYTES}",
                self.log_extent_bytes
            ));
        }
        if self.commit_batch_records_max == 0
            || self.commit_batch_records_max > COMMIT_BATCH_RECORDS_LIMIT
        {
            errors.push(format!(
                "commit_batch_records_max ({}) must be in 1..={COMMIT_BATCH_RECORDS_LIMIT}",
                self.commit_batch_records_max
            ));
        }
        let batch_bytes = u64::from(self.commit_batch_records_max) * RECORD_BYTES as u64;
        if self.log_extent_bytes < 2 * batch_bytes {
            errors.push(format!(
                "log_extent_bytes ({}) must be at least twice a full batch ({batch_bytes} bytes = \
                 commit_batch_records_max x {RECORD_BYTES})",
                self.log_extent_bytes
            ));
        }
        if self.log_compaction_bytes_min < self.log_extent_bytes {
            errors.push(format!(
                "log_compaction_bytes_min ({}) must be at least log_extent_bytes ({})",
                self.log_compaction_bytes_min, self.log_extent_bytes
            ));
        }
        if self.grow_bytes_max == 0 {
            errors.push("grow_bytes_max must be positive".to_string());
        }
        if self.write_inflight_bytes_max < UNIT_BYTES as u64 {
            errors.push(format!(
                "write_inflight_bytes_max ({}) must be at least {UNIT_BYTES}",
                self.write_inflight_bytes_max
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_violations_are_all_reported() {
        StoreConfig::default().validate().unwrap();
        let bad = StoreConfig {
            capacity_bytes: 1,
            log_extent_bytes: 100,
            commit_batch_records_max: 0,
            grow_bytes_max: 0,
            write_inflight_bytes_max: 0,
            ..StoreConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().len(), 5);
        let parsed: StoreConfig = serde_json::from_str("{\"capacity_bytes\": 2}").unwrap();
        assert_eq!(parsed.capacity_bytes, 2);
        assert_eq!(parsed.log_extent_bytes, StoreConfig::default().log_extent_bytes);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(serde_json::from_str::<StoreConfig>("{\"capacity\": 1}").is_err());
    }
}
