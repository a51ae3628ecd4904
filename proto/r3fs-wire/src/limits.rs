//! Size limits of a frame, as constants (what the wire format permits) and as [`FrameLimits`] (what
//! one endpoint accepts, never more than the constants).
//!
//! Every length field is checked against these limits before anything is allocated or waited for,
//! so a corrupt or hostile length can cost at most one frame of the configured size.

use crate::frame::FIXED_HEADER_LEN;
use crate::storage::{
    BATCH_READ_ITEM_LEN, BATCH_READ_REPLY_ITEM_LEN, CHUNK_META_LEN, FIXED_MESSAGE_LEN_MAX,
    LIST_PREFIX_LEN,
};
use r3fs_types::layout::CHUNK_SIZE_MAX;

/// Largest message header (the typed message between the fixed header and the payload): 1 MiB.
pub const MESSAGE_HEADER_LEN_MAX: u32 = 1 << 20;

/// Largest payload: one whole chunk of the largest chunk size (64 MiB). A `FullReplace` during
/// resync carries a whole chunk; a batch read whose data would exceed this must be split by the
/// client.
pub const PAYLOAD_LEN_MAX: u32 = CHUNK_SIZE_MAX;

/// Largest whole frame: fixed header, message header and payload at their limits.
pub const FRAME_LEN_MAX: u64 =
    FIXED_HEADER_LEN as u64 + MESSAGE_HEADER_LEN_MAX as u64 + PAYLOAD_LEN_MAX as u64;

/// Most ranges in one `BatchReadRequest` (and items in its reply).
pub const BATCH_READ_ITEMS_MAX: u32 = 8 << 10;

/// Most entries in one `GetChunkMetasReply`; a request's `limit` above this is clamped by the
/// server.
pub const CHUNK_METAS_MAX: u32 = 16 << 10;

// A whole chunk fits in one frame: resync replaces chunks whole.
const _: () = assert!(PAYLOAD_LEN_MAX >= CHUNK_SIZE_MAX);
// The biggest list messages fit in the message header limit.
const _: () = assert!(
    LIST_PREFIX_LEN as u64 + BATCH_READ_ITEMS_MAX as u64 * BATCH_READ_ITEM_LEN as u64
        <= MESSAGE_HEADER_LEN_MAX as u64
);
const _: () = assert!(
    LIST_PREFIX_LEN as u64 + BATCH_READ_ITEMS_MAX as u64 * BATCH_READ_REPLY_ITEM_LEN as u64
        <= MESSAGE_HEADER_LEN_MAX as u64
);
const _: () = assert!(
    LIST_PREFIX_LEN as u64 + CHUNK_METAS_MAX as u64 * CHUNK_META_LEN as u64
        <= MESSAGE_HEADER_LEN_MAX as u64
);
// Every length fits the header's u32 fields, and a whole frame is addressable in memory (the
// frame length is computed in usize after the limits are checked).
const _: () = assert!(FRAME_LEN_MAX <= u32::MAX as u64);
const _: () = assert!(FRAME_LEN_MAX <= isize::MAX as u64);

/// What one endpoint accepts. A daemon may lower the limits (to bound memory per connection),
/// never raise them above the wire constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest message header accepted, in bytes.
    pub message_header_len_max: u32,
    /// Largest payload accepted, in bytes.
    pub payload_len_max: u32,
}

impl FrameLimits {
    /// The wire constants: what every r3fs endpoint accepts unless configured lower.
    pub const DEFAULT: FrameLimits = FrameLimits {
        message_header_len_max: MESSAGE_HEADER_LEN_MAX,
        payload_len_max: PAYLOAD_LEN_MAX,
    };

    /// Reports every violation at once.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let mut violations = Vec::new();
        if self.message_header_len_max > MESSAGE_HEADER_LEN_MAX {
            violations.push(format!(
                "message_header_len_max {} exceeds the wire limit {MESSAGE_HEADER_LEN_MAX}",
                self.message_header_len_max
            ));
        }
        if (self.message_header_len_max as usize) < FIXED_MESSAGE_LEN_MAX {
            violations.push(format!(
                "message_header_len_max {} is below {FIXED_MESSAGE_LEN_MAX}, the largest fixed-size message",
                self.message_header_len_max
            ));
        }
        if self.payload_len_max > PAYLOAD_LEN_MAX {
            violations.push(format!(
                "payload_len_max {} exceeds the wire limit {PAYLOAD_LEN_MAX}",
                self.payload_len_max
            ));
        }
        if violations.is_empty() { Ok(()) } else { Err(LimitsError { violations }) }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Every way a [`FrameLimits`] is out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid frame limits: {}", violations.join("; "))]
pub struct LimitsError {
    pub violations: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid() {
        assert_eq!(FrameLimits::default().validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_violation() {
        let limits =
            FrameLimits { message_header_len_max: 1, payload_len_max: PAYLOAD_LEN_MAX + 1 };
        let error = limits.validate().expect_err("both fields out of range");
        assert_eq!(error.violations.len(), 2, "{error}");
        let limits = FrameLimits {
            message_header_len_max: MESSAGE_HEADER_LEN_MAX + 1,
            payload_len_max: 4096,
        };
        assert_eq!(limits.validate().expect_err("too large").violations.len(), 1);
    }
}
