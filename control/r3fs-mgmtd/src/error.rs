//! mgmtd's error type: what a request or a KV transaction body can end with.

use r3fs_kv::{KvError, Retryable};
use r3fs_rpc::mgmtd_client::not_primary_status;
use r3fs_rpc::status_from_error;
use r3fs_types::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum MgmtdError {
    #[error("kv: {0}")]
    Kv(#[from] KvError),
    /// This instance does not hold the lease (fencing). Carries the primary's address if a valid
    /// lease names one.
    #[error("not primary (primary: {primary_address:?})")]
    NotPrimary { primary_address: Option<String> },
    /// An expected refusal (bad argument, missing object, wrong token, ...): its code is what the
    /// caller sees.
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// A stored record failed to decode: the store was written by something else or is damaged.
    #[error("corrupt record at key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

pub type Result<T, E = MgmtdError> = std::result::Result<T, E>;

impl MgmtdError {
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        MgmtdError::Refused { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::refused(ErrorCode::InvalidArgument, message)
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            MgmtdError::Kv(error) => error.code(),
            MgmtdError::NotPrimary { .. } => ErrorCode::NotPrimary,
            MgmtdError::Refused { code, .. } => *code,
            MgmtdError::Corrupt { .. } => ErrorCode::Internal,
        }
    }
}

impl Retryable for MgmtdError {
    fn is_retryable(&self) -> bool {
        matches!(self, MgmtdError::Kv(error) if error.is_retryable())
    }
}

impl From<MgmtdError> for tonic::Status {
    fn from(error: MgmtdError) -> Self {
        match error {
            MgmtdError::NotPrimary { primary_address } => {
                not_primary_status(primary_address.as_deref())
            }
            MgmtdError::Refused { code, message } => status_from_error(code, message),
            other => {
                // Handled here: the caller only sees the code and a one-line summary.
                tracing::error!(error = %other, "mgmtd request failed");
                status_from_error(other.code(), other.to_string())
            }
        }
    }
}
