//! What the client reports to its callers. Every error carries a stable [`ErrorCode`], so a FUSE
//! daemon answers `code().errno()` and a user can search for `R3FS-<code>`.
//!
//! Expected protocol outcomes (stale chain version, chunk not committed, not found) never reach
//! this type while a retry can still resolve them: they are data inside the retry loops. Only the
//! final verdict is an error.

use r3fs_types::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The configuration (or a config-like argument) is invalid; every violation is listed.
    #[error("R3FS-1007 InvalidConfig: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// A server, or a local check, refused the operation with an error that retrying cannot fix.
    #[error("{code}: {detail}")]
    Failed { code: ErrorCode, detail: String },
    /// Transient failures did not clear within the retry bound.
    #[error(
        "R3FS-5005 RetriesExhausted: gave up after {attempts} attempts in {elapsed_ms} ms; last failure {last_code}: {detail}"
    )]
    RetriesExhausted { attempts: u32, elapsed_ms: u64, last_code: ErrorCode, detail: String },
}

impl ClientError {
    pub fn failed(code: ErrorCode, detail: impl Into<String>) -> ClientError {
        ClientError::Failed { code, detail: detail.into() }
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            ClientError::Failed { code, .. } => *code,
            ClientError::RetriesExhausted { .. } => ErrorCode::RetriesExhausted,
        }
    }

    /// The POSIX errno a file-system front end reports.
    pub fn errno(&self) -> i32 {
        self.code().errno()
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Failed {
            code: r3fs_rpc::error_from_status(&status),
            detail: status.message().to_string(),
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_errnos() {
        let e = ClientError::failed(ErrorCode::NoSpace, "full");
        assert_eq!(e.code(), ErrorCode::NoSpace);
        assert_eq!(e.errno(), r3fs_types::error::errno::ENOSPC);
        assert_eq!(e.to_string(), "R3FS-4008 NoSpace: full");
        let e = ClientError::RetriesExhausted {
            attempts: 3,
            elapsed_ms: 10,
            last_code: ErrorCode::ChunkNotCommitted,
            detail: "x".into(),
        };
        assert_eq!(e.code(), ErrorCode::RetriesExhausted);
        assert!(e.to_string().contains("R3FS-4002 ChunkNotCommitted"), "{e}");
        let status = r3fs_rpc::status_from_error(ErrorCode::NotFound, "no such file");
        assert_eq!(ClientError::from(status).code(), ErrorCode::NotFound);
    }
}
