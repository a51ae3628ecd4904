//! r3fs data-plane wire format: the frame codec and the storage message catalog. Sans-IO: no
//! sockets here, only bytes in and typed values out (and back).
//!
//! Key types:
//! - [`Frame`] / [`FrameHead`]: a frame is a 32-byte fixed header, a typed message header
//!   ([`Message`]), then a raw payload (chunk data). Both headers are covered by one header
//!   CRC32C, the payload by its own CRC32C.
//! - [`decode_frame`] (over `BytesMut`, payload returned as a `Bytes` view of the input) and
//!   [`decode_head`] (over `&[u8]`, stops before the payload so the IO edge reads it into its own
//!   aligned buffer); [`encode_head`] writes only the head for a payload the caller keeps, with a
//!   CRC32C it may have computed already.
//! - [`Decoded`]: `Complete` or `NeedMore { needed_len }`; [`FrameError`] / [`EncodeError`]: typed
//!   failures, each with its stable `ErrorCode` (MalformedFrame, FrameTooLarge, FrameChecksum).
//! - [`storage`]: `UpdateRequest`/`UpdateReply`, `BatchReadRequest`/`BatchReadReply`,
//!   `QueryLastChunk*`, `RemoveChunks*`, `GetChunkMetas*`, `Ping`/`Pong`.
//! - [`FrameLimits`] and the wire constants in [`limits`].
//!
//! Invariants:
//! - Decoding never panics and never allocates or waits on a length before checking it against
//!   the limits; list lengths are checked against the message header's size before allocating.
//! - The payload is never copied by encode or decode.
//! - Every accepted frame has exactly one encoding: decoding then encoding gives back the same
//!   bytes (reserved bytes, unused flag bits and absent optional fields must be zero).
//! - The encoder refuses what the decoder would refuse, so this build never sends what it cannot
//!   read.
//! - Expected outcomes (stale chain version, not committed, ...) are [`Outcome`] data in replies.
//!
//! Layout, limits and the reasons for hand-written layouts: docs/design/wire-frames.md.

#![forbid(unsafe_code)]

mod cursor;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod storage;

#[cfg(test)]
mod proptests;

pub use error::{EncodeError, FrameError, MessageError};
pub use frame::{
    Decoded, FIXED_HEADER_LEN, Frame, FrameHead, MAGIC, PROTOCOL_VERSION, PayloadInfo,
    decode_frame, decode_head, encode_head,
};
pub use limits::{
    BATCH_READ_ITEMS_MAX, CHUNK_METAS_MAX, FRAME_LEN_MAX, FrameLimits, LimitsError,
    MESSAGE_HEADER_LEN_MAX, PAYLOAD_LEN_MAX,
};
pub use message::{Message, MessageKind, Outcome};
pub use storage::{
    BatchReadItem, BatchReadReply, BatchReadReplyItem, BatchReadRequest, ChunkMeta,
    GetChunkMetasReply, GetChunkMetasRequest, ItemCheckError, LastChunk, Ping, Pong,
    QueryLastChunkReply, QueryLastChunkRequest, RemoveChunksReply, RemoveChunksRequest, UpdateKind,
    UpdateReply, UpdateRequest,
};
