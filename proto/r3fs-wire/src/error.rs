//! Typed decode and encode errors, each with its stable [`ErrorCode`].
//!
//! "Need more bytes" is not an error: it is [`crate::Decoded::NeedMore`]. Only when the stream
//! ends in the middle of a frame does the IO edge turn it into [`FrameError::Truncated`].

use crate::message::MessageKind;
use r3fs_types::ErrorCode;

/// Why bytes from the network are not a valid frame. After any of these the connection's byte
/// stream can no longer be trusted to be aligned on frames: the IO edge closes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {found:02x?} (expected \"R3FW\")")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported frame protocol version {found} (this build speaks {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("reserved frame flag bits {bits:#04x} are set")]
    UnknownFlags { bits: u8 },
    #[error("unknown message kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("message header of {len} bytes exceeds the limit of {max}")]
    MessageHeaderTooLarge { len: u32, max: u32 },
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: u32, max: u32 },
    #[error(
        "frame header checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}"
    )]
    HeaderChecksum { expected: u32, actual: u32 },
    #[error("payload checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    PayloadChecksum { expected: u32, actual: u32 },
    #[error("payload buffer holds {actual} bytes but the frame carries {expected}")]
    PayloadLength { expected: u32, actual: usize },
    #[error("malformed {kind:?} message: {error}")]
    Message { kind: MessageKind, error: MessageError },
    #[error("stream ended inside a frame: have {have_len} of {needed_len} bytes")]
    Truncated { have_len: usize, needed_len: usize },
}

impl FrameError {
    /// The stable code a peer or a log reports for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::MessageHeaderTooLarge { .. } | FrameError::PayloadTooLarge { .. } => {
                ErrorCode::FrameTooLarge
            }
            FrameError::HeaderChecksum { .. } | FrameError::PayloadChecksum { .. } => {
                ErrorCode::FrameChecksum
            }
            FrameError::BadMagic { .. }
            | FrameError::UnsupportedVersion { .. }
            | FrameError::UnknownFlags { .. }
            | FrameError::UnknownKind { .. }
            | FrameError::PayloadLength { .. }
            | FrameError::Message { .. }
            | FrameError::Truncated { .. } => ErrorCode::MalformedFrame,
        }
    }
}

impl From<FrameError> for ErrorCode {
    fn from(error: FrameError) -> Self {
        error.code()
    }
}

/// Why a message header (already covered by a good header checksum, so this is a peer bug or a
/// version mismatch, not line noise) is not a valid message of its kind, or disagrees with the
/// frame's payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message header must be {expected} bytes, got {actual}")]
    Length { expected: usize, actual: usize },
    #[error("message header ends inside field {field}")]
    Truncated { field: &'static str },
    #[error("{len} bytes follow the end of the message")]
    TrailingBytes { len: usize },
    #[error("field {field} has unknown value {value}")]
    UnknownValue { field: &'static str, value: u64 },
    #[error("field {field} has unknown flag bits {bits:#04x}")]
    UnknownFlags { field: &'static str, bits: u8 },
    #[error("reserved field {field} is not zero")]
    ReservedNotZero { field: &'static str },
    #[error("absent optional field {field} is not zero")]
    AbsentNotZero { field: &'static str },
    #[error("{field} has {count} entries, more than {max}")]
    TooManyItems { field: &'static str, count: u64, max: u64 },
    #[error("list {field} of {count} entries does not fill the {actual} bytes left")]
    ListLength { field: &'static str, count: u64, actual: usize },
    #[error("payload is {actual} bytes but the message implies {expected}")]
    PayloadLength { expected: u64, actual: u64 },
    #[error("message payload CRC32C {message:#010x} differs from the frame's {frame:#010x}")]
    PayloadCrcMismatch { message: u32, frame: u32 },
    #[error("inconsistent message: {what}")]
    Inconsistent { what: &'static str },
}

/// Why a frame cannot be encoded. The encoder refuses exactly what the decoder would refuse, so
/// a peer never receives a frame this build could not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message header of {len} bytes exceeds the limit of {max}")]
    MessageHeaderTooLarge { len: usize, max: u32 },
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: u64, max: u32 },
    #[error("invalid {kind:?} message: {error}")]
    Message { kind: MessageKind, error: MessageError },
}

impl EncodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EncodeError::MessageHeaderTooLarge { .. } | EncodeError::PayloadTooLarge { .. } => {
                ErrorCode::FrameTooLarge
            }
            EncodeError::Message { .. } => ErrorCode::InvalidArgument,
        }
    }
}

impl From<EncodeError> for ErrorCode {
    fn from(error: EncodeError) -> Self {
        error.code()
    }
}
