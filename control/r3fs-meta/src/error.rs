//! The one error type of the meta service: a stable [`ErrorCode`] (which carries the POSIX errno a
//! client reports) and a human message. Callers branch on `code`, never on the message.

use r3fs_kv::KvError;
use r3fs_types::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct MetaError {
    pub code: ErrorCode,
    pub message: String,
}

pub type MetaResult<T> = Result<T, MetaError>;

impl MetaError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The errno the kernel would report for this error.
    pub fn errno(&self) -> i32 {
        self.code.errno()
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    pub fn exists(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::Exists, what)
    }

    pub fn not_directory(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotDirectory, what)
    }

    pub fn is_directory(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::IsDirectory, what)
    }

    pub fn invalid(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, what)
    }

    pub fn denied(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, what)
    }

    /// A record in the KV failed to decode or broke an invariant: the store is damaged or was
    /// written by an incompatible version.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, format!("corrupt metadata: {}", what.into()))
    }

    pub fn internal(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, what)
    }

    pub fn is_conflict(&self) -> bool {
        self.code == ErrorCode::KvConflict
    }
}

impl From<KvError> for MetaError {
    fn from(error: KvError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}
