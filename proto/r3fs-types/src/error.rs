//! Stable error codes. Users search for `R3FS-<code>`; a code, once released, never changes meaning.
//! Codes are grouped by the service that raises them (1xxx common, 2xxx mgmtd, 3xxx meta,
//! 4xxx storage, 5xxx transport/client, 6xxx KV). The mapping to gRPC status lives in `r3fs-rpc`,
//! in one place.

use std::fmt;

macro_rules! error_codes {
    ($($variant:ident = $code:literal, $errno:ident, $retryable:literal, $doc:literal;)*) => {
        /// A stable, searchable error code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[repr(u16)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant = $code,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn code(self) -> u16 {
                self as u16
            }

            pub fn from_code(code: u16) -> Option<Self> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$variant => stringify!($variant)),* }
            }

            /// The POSIX errno a file-system client reports for this code.
            pub fn errno(self) -> i32 {
                match self { $(ErrorCode::$variant => errno::$errno),* }
            }

            /// Whether a client may retry the same request (after refreshing routing, backing off).
            pub fn is_retryable(self) -> bool {
                match self { $(ErrorCode::$variant => $retryable),* }
            }

            /// One line for users.
            pub fn describe(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc),* }
            }
        }
    };
}

/// Linux errno values (stable ABI), kept here so this crate needs no libc.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const EPROTO: i32 = 71;
    pub const EBADMSG: i32 = 74;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ECONNRESET: i32 = 104;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECANCELED: i32 = 125;
    pub const EKEYREJECTED: i32 = 129;
}

error_codes! {
    InvalidArgument = 1001, EINVAL, false, "an argument is invalid";
    Internal = 1002, EIO, false, "internal error (a bug: please report it with the logs)";
    Timeout = 1003, ETIMEDOUT, true, "the operation timed out";
    Unavailable = 1004, EAGAIN, true, "the service is temporarily unavailable";
    Unauthenticated = 1005, EKEYREJECTED, false, "the token is missing, unknown or revoked";
    PermissionDenied = 1006, EACCES, false, "permission denied";
    InvalidConfig = 1007, EINVAL, false, "the configuration is invalid";
    NotSupported = 1008, EOPNOTSUPP, false, "the operation is not supported";
    Cancelled = 1009, ECANCELED, false, "the operation was cancelled";
    Busy = 1010, EBUSY, true, "the resource is busy";
    NotPrimary = 2001, EAGAIN, true, "this mgmtd is not the primary; follow the primary's address";
    NodeNotFound = 2002, ENOENT, false, "no such node";
    ChainNotFound = 2003, ENOENT, false, "no such chain";
    TargetNotFound = 2004, ENOENT, false, "no such target";
    ChainTableNotFound = 2005, ENOENT, false, "no such chain table or version";
    LeaseLost = 2006, EAGAIN, true, "the mgmtd lease was lost during the operation";
    StaleHeartbeat = 2007, EINVAL, false, "the heartbeat version is older than one already seen";
    UserNotFound = 2008, ENOENT, false, "no such user";
    UserExists = 2009, EEXIST, false, "the user already exists";
    ConfigNotFound = 2010, ENOENT, false, "no such config version";
    NotFound = 3001, ENOENT, false, "no such file or directory";
    Exists = 3002, EEXIST, false, "file exists";
    NotDirectory = 3003, ENOTDIR, false, "not a directory";
    IsDirectory = 3004, EISDIR, false, "is a directory";
    NotEmpty = 3005, ENOTEMPTY, false, "directory not empty";
    NameTooLong = 3006, ENAMETOOLONG, false, "file name too long";
    TooManySymlinks = 3007, ELOOP, false, "too many levels of symbolic links";
    InvalidName = 3008, EINVAL, false, "invalid file name";
    TooManyLinks = 3009, EMLINK, false, "too many hard links";
    CrossDevice = 3010, EXDEV, false, "cross-device link";
    FileTooLarge = 3011, EFBIG, false, "file too large";
    NoAttribute = 3012, ENODATA, false, "no such attribute";
    ReadOnly = 3013, EROFS, false, "read-only file system";
    StaleChainVersion = 4001, EAGAIN, true, "the chain version is stale; refresh routing and retry";
    ChunkNotCommitted = 4002, EAGAIN, true, "the chunk has an uncommitted update; retry";
    ChunkNotFound = 4003, ENOENT, false, "no such chunk";
    ChecksumMismatch = 4004, EIO, true, "data checksum mismatch";
    NotHead = 4005, EAGAIN, true, "this target is not the head of its chain";
    TargetNotServing = 4006, EAGAIN, true, "the target is not serving";
    ChunkBusy = 4007, EBUSY, true, "the chunk is being updated";
    NoSpace = 4008, ENOSPC, false, "no space left on the target's disk";
    Fenced = 4009, EAGAIN, true, "the storage daemon lost contact with mgmtd and refuses writes";
    ChunkCorrupt = 4010, EIO, false, "a chunk on disk failed its checksum";
    MalformedFrame = 5001, EPROTO, false, "a data-plane frame is malformed";
    FrameTooLarge = 5002, EPROTO, false, "a data-plane frame exceeds the size limit";
    FrameChecksum = 5003, EBADMSG, true, "a data-plane frame failed its checksum";
    ConnectionLost = 5004, ECONNRESET, true, "the connection was lost";
    RetriesExhausted = 5005, EIO, false, "gave up after the retry limit";
    KvConflict = 6001, EAGAIN, true, "a KV transaction conflicted with another; retry";
    KvIo = 6002, EIO, false, "the KV store failed";
    KvTooLarge = 6003, EINVAL, false, "a KV key, value or transaction is too large";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R3FS-{} {}", self.code(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.code()), "duplicate code {}", c.code());
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!(c.errno() > 0);
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::NoSpace.to_string(), "R3FS-4008 NoSpace");
    }

    /// Released codes never change meaning: pin a few representative ones.
    #[test]
    fn codes_are_stable() {
        assert_eq!(ErrorCode::StaleChainVersion.code(), 4001);
        assert_eq!(ErrorCode::NotPrimary.code(), 2001);
        assert_eq!(ErrorCode::NotFound.errno(), errno::ENOENT);
        assert_eq!(ErrorCode::NoSpace.errno(), errno::ENOSPC);
    }
}
