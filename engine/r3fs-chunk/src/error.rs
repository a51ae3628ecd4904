//! Errors of the chunk store. Expected protocol outcomes (stale versions, busy chunks, nothing
//! staged) are not here: they are the `*Outcome` enums of [`crate::store`].

use r3fs_types::{ChunkId, ErrorCode};
use std::io;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no space left on the target: a block of {needed_bytes} bytes is needed, \
         {free_bytes} bytes can be freed or grown within the capacity"
    )]
    NoSpace { needed_bytes: u64, free_bytes: u64 },
    #[error("chunk {0} not found")]
    ChunkNotFound(ChunkId),
    #[error("chunk {chunk} is corrupt on disk: {detail}")]
    ChunkCorrupt { chunk: ChunkId, detail: String },
    #[error(
        "data checksum mismatch for chunk {chunk}: sender said {expected:08x}, data is {actual:08x}"
    )]
    ChecksumMismatch { chunk: ChunkId, expected: u32, actual: u32 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("I/O error while {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A metadata-log write or sync failed earlier: durability can no longer be promised, so
    /// the store refuses updates until it is reopened (reads still work).
    #[error("the chunk store stopped accepting updates after an earlier failure: {0}")]
    Failed(String),
}

impl StoreError {
    /// The stable code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NoSpace { .. } => ErrorCode::NoSpace,
            StoreError::ChunkNotFound(_) => ErrorCode::ChunkNotFound,
            StoreError::ChunkCorrupt { .. } => ErrorCode::ChunkCorrupt,
            StoreError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            StoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            StoreError::Io { .. } => ErrorCode::Internal,
            StoreError::Failed(_) => ErrorCode::TargetNotServing,
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                StoreError::NoSpace { needed_bytes: 0, free_bytes: 0 }
            } else {
                StoreError::Io { op, source }
            }
        }
    }
}

/// Why a store did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid chunk store config: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    #[error("the target's metadata is corrupt or unreadable: {0}")]
    Corrupt(String),
    #[error("I/O error while {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl OpenError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> OpenError {
        move |source| OpenError::Io { op, source }
    }
}
