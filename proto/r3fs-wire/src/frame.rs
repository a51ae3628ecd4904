//! The frame: a 32-byte fixed header, the message header (a typed [`Message`]), then the raw
//! payload (chunk data).
//!
//! Fixed header, little-endian (offsets in [`offset`]):
//!
//! | bytes | field |
//! | ----- | ----- |
//! | 0..4 | magic `"R3FW"` |
//! | 4 | protocol version (1) |
//! | 5 | flags (none defined in version 1: must be 0) |
//! | 6..8 | message kind |
//! | 8..16 | request id |
//! | 16..20 | message header length |
//! | 20..24 | payload length |
//! | 24..28 | payload CRC32C |
//! | 28..32 | header CRC32C over bytes 0..32 (this field zeroed) and the message header |
//!
//! Two ways in. [`decode_frame`] works on a `BytesMut` and hands back the payload as a `Bytes`
//! slice of that buffer (no copy). [`decode_head`] parses only the fixed and message headers from
//! a `&[u8]` and says how many payload bytes follow, so the IO edge can read the payload straight
//! into its own (aligned, O_DIRECT-ready) buffer and check it with [`FrameHead::verify_payload`].
//! One way out: [`encode_head`] writes only the head for a payload the caller keeps, whose CRC32C
//! it may have computed already, so the writer sends head and payload with one `writev`.

use crate::error::{EncodeError, FrameError};
use crate::limits::FrameLimits;
use crate::message::{Message, MessageKind};
use bytes::{BufMut, Bytes, BytesMut};
use r3fs_types::RequestId;
use std::ops::Range;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"R3FW";
/// The frame format version this build speaks. A change of any layout is a new version.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const FIXED_HEADER_LEN: usize = 32;
/// Frame flag bits this version defines: none. The byte is the place for frame-level features
/// (compressed payload, ...); a version-1 decoder refuses any set bit so no peer relying on one is
/// misread.
pub const FRAME_FLAGS_KNOWN: u8 = 0;

/// Byte offsets of the fixed header's fields. Part of the wire format.
pub mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 5;
    pub const KIND: usize = 6;
    pub const REQUEST_ID: usize = 8;
    pub const MESSAGE_HEADER_LEN: usize = 16;
    pub const PAYLOAD_LEN: usize = 20;
    pub const PAYLOAD_CRC32C: usize = 24;
    pub const HEADER_CRC32C: usize = 28;
}

const _: () = assert!(offset::HEADER_CRC32C + 4 == FIXED_HEADER_LEN);
const _: () = assert!(offset::PAYLOAD_CRC32C + 4 == offset::HEADER_CRC32C);
const _: () = assert!(offset::PAYLOAD_LEN + 4 == offset::PAYLOAD_CRC32C);
const _: () = assert!(offset::MESSAGE_HEADER_LEN + 4 == offset::PAYLOAD_LEN);
const _: () = assert!(offset::REQUEST_ID + 8 == offset::MESSAGE_HEADER_LEN);
const _: () = assert!(offset::KIND + 2 == offset::REQUEST_ID);
const _: () = assert!(offset::FLAGS + 1 == offset::KIND);
const _: () = assert!(offset::VERSION + 1 == offset::FLAGS);
const _: () = assert!(offset::MAGIC + MAGIC.len() == offset::VERSION);

/// Progress of a decode: either the thing, or how many bytes (counted from the frame's first
/// byte) the buffer must hold before calling again can make progress. Waiting for a frame is
/// normal, not an error; the bound is checked against the limits before it is reported, so a
/// caller may reserve that much.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    Complete(T),
    NeedMore { needed_len: usize },
}

impl<T> Decoded<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decoded<U> {
        match self {
            Decoded::Complete(value) => Decoded::Complete(f(value)),
            Decoded::NeedMore { needed_len } => Decoded::NeedMore { needed_len },
        }
    }
}

/// Length and CRC32C of a payload the caller keeps in its own buffer(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadInfo {
    pub len: u32,
    pub crc32c: u32,
}

impl PayloadInfo {
    pub const EMPTY: PayloadInfo = PayloadInfo { len: 0, crc32c: 0 };

    /// Computes the CRC32C of one buffer.
    pub fn of(payload: &[u8]) -> Result<PayloadInfo, EncodeError> {
        Self::of_slices(&[payload])
    }

    /// Computes the CRC32C of buffers sent back to back (a batch read's items), in one pass.
    pub fn of_slices(slices: &[&[u8]]) -> Result<PayloadInfo, EncodeError> {
        let len: u64 = slices.iter().map(|s| s.len() as u64).sum();
        let len =
            u32::try_from(len).map_err(|_| EncodeError::PayloadTooLarge { len, max: u32::MAX })?;
        let crc32c = slices.iter().fold(0, |crc, slice| crc32c::crc32c_append(crc, slice));
        Ok(PayloadInfo { len, crc32c })
    }

    /// A payload whose CRC32C the caller already has (the client computes the data CRC once;
    /// storage keeps the same value with the chunk). Trusted: a wrong value makes the peer
    /// reject the frame with `FrameChecksum`.
    pub fn with_crc32c(len: usize, crc32c: u32) -> Result<PayloadInfo, EncodeError> {
        let len = u32::try_from(len)
            .map_err(|_| EncodeError::PayloadTooLarge { len: len as u64, max: u32::MAX })?;
        Ok(PayloadInfo { len, crc32c })
    }
}

/// Appends the head of a frame (fixed header + message header) to `out`; the payload described
/// by `payload` is sent after it by the caller, from its own buffer. Returns the head's length.
///
/// Refuses exactly what [`decode_head`] would refuse with the same limits: an invalid message, a
/// payload that disagrees with the message, a size over the limits.
pub fn encode_head(
    out: &mut BytesMut,
    request_id: RequestId,
    message: &Message,
    payload: PayloadInfo,
    limits: &FrameLimits,
) -> Result<usize, EncodeError> {
    let kind = message.kind();
    if payload.len > limits.payload_len_max {
        return Err(EncodeError::PayloadTooLarge {
            len: u64::from(payload.len),
            max: limits.payload_len_max,
        });
    }
    message.validate().map_err(|error| EncodeError::Message { kind, error })?;
    message
        .check_payload(payload.len, payload.crc32c)
        .map_err(|error| EncodeError::Message { kind, error })?;
    if payload.len == 0 && payload.crc32c != 0 {
        return Err(EncodeError::Message {
            kind,
            error: crate::MessageError::PayloadCrcMismatch { message: payload.crc32c, frame: 0 },
        });
    }
    let message_len = message.encoded_len();
    let message_len_wire = u32::try_from(message_len)
        .ok()
        .filter(|&len| len <= limits.message_header_len_max)
        .ok_or(EncodeError::MessageHeaderTooLarge {
            len: message_len,
            max: limits.message_header_len_max,
        })?;

    let start = out.len();
    out.reserve(FIXED_HEADER_LEN + message_len);
    out.put_slice(&MAGIC);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(0);
    out.put_u16_le(kind.code());
    out.put_u64_le(request_id.0);
    out.put_u32_le(message_len_wire);
    out.put_u32_le(payload.len);
    out.put_u32_le(payload.crc32c);
    out.put_u32_le(0);
    message.encode(out);
    let head = &mut out[start..];
    // The length a message reports and the bytes it writes agree, or every frame it heads is
    // garbage: checked in release builds too (it is one comparison).
    assert_eq!(head.len(), FIXED_HEADER_LEN + message_len, "{kind:?} encoded_len disagrees");
    let crc = crc32c::crc32c(head);
    head[offset::HEADER_CRC32C..FIXED_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(FIXED_HEADER_LEN + message_len)
}

/// A decoded head: everything but the payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub request_id: RequestId,
    pub message: Message,
    /// Bytes of fixed header + message header: the payload starts here.
    pub head_len: usize,
    pub payload_len: u32,
    /// Already checked against the message (and, for an empty payload, against the empty CRC).
    pub payload_crc32c: u32,
}

impl FrameHead {
    pub fn kind(&self) -> MessageKind {
        self.message.kind()
    }

    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.head_len + self.payload_len as usize
    }

    /// Where the payload lies, counted from the frame's first byte.
    pub fn payload_range(&self) -> Range<usize> {
        self.head_len..self.frame_len()
    }

    /// Checks a payload the IO edge read into its own buffer: its length, then its CRC32C.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() != self.payload_len as usize {
            return Err(FrameError::PayloadLength {
                expected: self.payload_len,
                actual: payload.len(),
            });
        }
        let actual = crc32c::crc32c(payload);
        if actual != self.payload_crc32c {
            return Err(FrameError::PayloadChecksum { expected: self.payload_crc32c, actual });
        }
        Ok(())
    }
}

fn le_u16(buf: &[u8], at: usize) -> u16 {
    let mut bytes = [0u8; 2];
    bytes.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(bytes)
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Parses the fixed header and the message header at the start of `buf` (which may hold more:
/// the payload, further frames). Never reads the payload: the caller reads
/// [`FrameHead::payload_len`] bytes from [`FrameHead::head_len`] on, wherever it likes, and
/// checks them with [`FrameHead::verify_payload`].
///
/// Checks, in order: magic and version (on as many bytes as are present), flags, kind, both
/// lengths against `limits`, then (once the message header is present) the header CRC32C, the
/// message, and that the payload length and CRC agree with the message. So `NeedMore` is only
/// ever reported for a size within the limits.
pub fn decode_head(buf: &[u8], limits: &FrameLimits) -> Result<Decoded<FrameHead>, FrameError> {
    let magic_len = buf.len().min(MAGIC.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Err(FrameError::BadMagic { found: buf[..magic_len].to_vec() });
    }
    if let Some(&version) = buf.get(offset::VERSION)
        && version != PROTOCOL_VERSION
    {
        return Err(FrameError::UnsupportedVersion { found: version, supported: PROTOCOL_VERSION });
    }
    let Some(fixed) = buf.first_chunk::<FIXED_HEADER_LEN>() else {
        return Ok(Decoded::NeedMore { needed_len: FIXED_HEADER_LEN });
    };
    let flags = fixed[offset::FLAGS];
    if flags & !FRAME_FLAGS_KNOWN != 0 {
        return Err(FrameError::UnknownFlags { bits: flags & !FRAME_FLAGS_KNOWN });
    }
    let kind_code = le_u16(fixed, offset::KIND);
    let kind =
        MessageKind::from_code(kind_code).ok_or(FrameError::UnknownKind { kind: kind_code })?;
    let request_id = RequestId(le_u64(fixed, offset::REQUEST_ID));
    let message_len = le_u32(fixed, offset::MESSAGE_HEADER_LEN);
    if message_len > limits.message_header_len_max {
        return Err(FrameError::MessageHeaderTooLarge {
            len: message_len,
            max: limits.message_header_len_max,
        });
    }
    let payload_len = le_u32(fixed, offset::PAYLOAD_LEN);
    if payload_len > limits.payload_len_max {
        return Err(FrameError::PayloadTooLarge { len: payload_len, max: limits.payload_len_max });
    }
    let payload_crc32c = le_u32(fixed, offset::PAYLOAD_CRC32C);
    let header_crc32c = le_u32(fixed, offset::HEADER_CRC32C);

    // Both lengths are within limits whose sum fits in usize (const-asserted in limits.rs).
    let head_len = FIXED_HEADER_LEN + message_len as usize;
    let Some(message_bytes) = buf.get(FIXED_HEADER_LEN..head_len) else {
        return Ok(Decoded::NeedMore { needed_len: head_len });
    };
    let mut fixed_zeroed = *fixed;
    fixed_zeroed[offset::HEADER_CRC32C..].fill(0);
    let actual = crc32c::crc32c_append(crc32c::crc32c(&fixed_zeroed), message_bytes);
    if actual != header_crc32c {
        return Err(FrameError::HeaderChecksum { expected: header_crc32c, actual });
    }

    let message = Message::decode(kind, message_bytes)
        .map_err(|error| FrameError::Message { kind, error })?;
    message
        .check_payload(payload_len, payload_crc32c)
        .map_err(|error| FrameError::Message { kind, error })?;
    if payload_len == 0 && payload_crc32c != 0 {
        return Err(FrameError::PayloadChecksum { expected: payload_crc32c, actual: 0 });
    }
    Ok(Decoded::Complete(FrameHead { request_id, message, head_len, payload_len, payload_crc32c }))
}

/// A whole frame whose payload shares the receive buffer's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub request_id: RequestId,
    pub message: Message,
    pub payload: Bytes,
    /// CRC32C of `payload`: verified when decoded, so a replica that forwards the payload reuses
    /// it instead of computing it again.
    pub payload_crc32c: u32,
}

impl Frame {
    /// A frame whose payload CRC32C is computed here.
    pub fn new(request_id: RequestId, message: impl Into<Message>, payload: Bytes) -> Frame {
        let payload_crc32c = crc32c::crc32c(&payload);
        Frame { request_id, message: message.into(), payload, payload_crc32c }
    }

    pub fn kind(&self) -> MessageKind {
        self.message.kind()
    }

    pub fn payload_info(&self) -> Result<PayloadInfo, EncodeError> {
        PayloadInfo::with_crc32c(self.payload.len(), self.payload_crc32c)
    }

    /// Appends only the head; send `self.payload` after it (e.g. with `writev`).
    pub fn encode_head(
        &self,
        out: &mut BytesMut,
        limits: &FrameLimits,
    ) -> Result<usize, EncodeError> {
        encode_head(out, self.request_id, &self.message, self.payload_info()?, limits)
    }

    /// Head and payload as two buffers for a vectored write; the payload is shared, not copied.
    pub fn encode_parts(&self, limits: &FrameLimits) -> Result<[Bytes; 2], EncodeError> {
        let mut head = BytesMut::new();
        self.encode_head(&mut head, limits)?;
        Ok([head.freeze(), self.payload.clone()])
    }

    /// Appends head and payload: copies the payload, so meant for small frames and tests. Bulk
    /// data goes through [`Frame::encode_parts`] or [`encode_head`].
    pub fn encode(&self, out: &mut BytesMut, limits: &FrameLimits) -> Result<(), EncodeError> {
        self.encode_head(out, limits)?;
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

/// Decodes one whole frame from the front of `buf`. On `Complete` the frame's bytes are split off
/// the buffer without a copy: the frame's payload is a `Bytes` view of them. On `NeedMore`, or
/// an error, `buf` is left as it was; call again once `buf.len() >= needed_len` (not on every
/// read, which would re-check the head each time).
pub fn decode_frame(
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Decoded<Frame>, FrameError> {
    let head = match decode_head(buf, limits)? {
        Decoded::Complete(head) => head,
        Decoded::NeedMore { needed_len } => return Ok(Decoded::NeedMore { needed_len }),
    };
    let frame_len = head.frame_len();
    let Some(payload) = buf.get(head.payload_range()) else {
        return Ok(Decoded::NeedMore { needed_len: frame_len });
    };
    head.verify_payload(payload)?;
    let frame_bytes = buf.split_to(frame_len).freeze();
    Ok(Decoded::Complete(Frame {
        request_id: head.request_id,
        message: head.message,
        payload: frame_bytes.slice(head.head_len..),
        payload_crc32c: head.payload_crc32c,
    }))
}

/// Builds frames from raw parts with correct checksums, to reach the message decoders with
/// bytes the encoder would never produce.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn seal_raw(kind_code: u16, message: &[u8], payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_slice(&MAGIC);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(0);
        out.put_u16_le(kind_code);
        out.put_u64_le(7);
        out.put_u32_le(u32::try_from(message.len()).expect("test message fits u32"));
        out.put_u32_le(u32::try_from(payload.len()).expect("test payload fits u32"));
        out.put_u32_le(crc32c::crc32c(payload));
        out.put_u32_le(0);
        out.put_slice(message);
        reseal(&mut out);
        out.put_slice(payload);
        out
    }

    /// Recomputes the header CRC of the frame at the start of `frame` after a test edited it.
    pub(crate) fn reseal(frame: &mut [u8]) {
        let message_len = le_u32(frame, offset::MESSAGE_HEADER_LEN) as usize;
        frame[offset::HEADER_CRC32C..FIXED_HEADER_LEN].fill(0);
        let crc = crc32c::crc32c(&frame[..FIXED_HEADER_LEN + message_len]);
        frame[offset::HEADER_CRC32C..FIXED_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{reseal, seal_raw};
    use super::*;
    use crate::error::MessageError;
    use crate::limits::PAYLOAD_LEN_MAX;
    use crate::storage::{Ping, UpdateKind, UpdateReply, UpdateRequest};
    use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, InodeId};

    const LIMITS: FrameLimits = FrameLimits::DEFAULT;

    fn write_request(data: &[u8]) -> UpdateRequest {
        UpdateRequest {
            kind: UpdateKind::Write,
            chain_id: ChainId(3),
            chain_version: ChainVersion(9),
            chunk_id: ChunkId::new(InodeId(42), 5),
            offset: 4096,
            length: u32::try_from(data.len()).expect("test data fits u32"),
            chunk_size: 1 << 20,
            update_version: ChunkVersion(0),
            client_id: ClientId(77),
            sequence: 12,
            payload_crc32c: crc32c::crc32c(data),
            sending_target_id: None,
        }
    }

    fn encoded(message: impl Into<Message>, payload: &[u8]) -> BytesMut {
        let frame = Frame::new(RequestId(1), message, Bytes::copy_from_slice(payload));
        let mut out = BytesMut::new();
        frame.encode(&mut out, &LIMITS).expect("valid frame encodes");
        out
    }

    fn decode_err(buf: &[u8]) -> FrameError {
        let head_err = decode_head(buf, &LIMITS).expect_err("decode_head must fail");
        let frame_err =
            decode_frame(&mut BytesMut::from(buf), &LIMITS).expect_err("decode_frame must fail");
        assert_eq!(head_err, frame_err, "both paths report the same error");
        head_err
    }

    #[test]
    fn fixed_header_layout_is_pinned() {
        let data = b"hello";
        let buf = encoded(write_request(data), data);
        assert_eq!(&buf[0..4], b"R3FW");
        assert_eq!(buf[offset::VERSION], 1);
        assert_eq!(buf[offset::FLAGS], 0);
        assert_eq!(le_u16(&buf, offset::KIND), MessageKind::UpdateRequest.code());
        assert_eq!(le_u64(&buf, offset::REQUEST_ID), 1);
        assert_eq!(le_u32(&buf, offset::MESSAGE_HEADER_LEN), 80);
        assert_eq!(le_u32(&buf, offset::PAYLOAD_LEN), 5);
        assert_eq!(le_u32(&buf, offset::PAYLOAD_CRC32C), crc32c::crc32c(data));
        assert_eq!(buf.len(), FIXED_HEADER_LEN + 80 + 5);
        assert_eq!(&buf[FIXED_HEADER_LEN + 80..], data);
    }

    #[test]
    fn bad_magic_is_caught_on_the_first_byte() {
        assert_eq!(decode_err(b"X"), FrameError::BadMagic { found: b"X".to_vec() });
        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[2] ^= 0x20;
        let error = decode_err(&buf);
        assert_eq!(error, FrameError::BadMagic { found: b"R3fW".to_vec() });
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn unsupported_version() {
        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[offset::VERSION] = 2;
        // Refused as soon as the byte is there, before the rest of the header arrives.
        let error = decode_err(&buf[..5]);
        assert_eq!(error, FrameError::UnsupportedVersion { found: 2, supported: 1 });
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn unknown_flags() {
        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[offset::FLAGS] = 0x80;
        reseal(&mut buf);
        let error = decode_err(&buf);
        assert_eq!(error, FrameError::UnknownFlags { bits: 0x80 });
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn unknown_kind() {
        let buf = seal_raw(999, &[0; 8], b"");
        let error = decode_err(&buf);
        assert_eq!(error, FrameError::UnknownKind { kind: 999 });
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn oversized_lengths_are_refused_before_waiting_for_them() {
        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[offset::MESSAGE_HEADER_LEN..offset::MESSAGE_HEADER_LEN + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        // Only the fixed header is present: no NeedMore for 4 GiB, an error at once.
        let error = decode_err(&buf[..FIXED_HEADER_LEN]);
        assert_eq!(
            error,
            FrameError::MessageHeaderTooLarge { len: u32::MAX, max: LIMITS.message_header_len_max }
        );
        assert_eq!(error.code(), ErrorCode::FrameTooLarge);

        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[offset::PAYLOAD_LEN..offset::PAYLOAD_LEN + 4]
            .copy_from_slice(&(PAYLOAD_LEN_MAX + 1).to_le_bytes());
        let error = decode_err(&buf[..FIXED_HEADER_LEN]);
        assert_eq!(
            error,
            FrameError::PayloadTooLarge { len: PAYLOAD_LEN_MAX + 1, max: PAYLOAD_LEN_MAX }
        );
        assert_eq!(error.code(), ErrorCode::FrameTooLarge);

        // A lowered limit applies.
        let small = FrameLimits { message_header_len_max: 4096, payload_len_max: 16 };
        let buf = encoded(Ping { nonce: 1 }, &[7; 17]);
        assert_eq!(
            decode_head(&buf, &small),
            Err(FrameError::PayloadTooLarge { len: 17, max: 16 })
        );
    }

    #[test]
    fn header_checksum() {
        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[FIXED_HEADER_LEN] ^= 1; // the nonce, inside the message header
        let error = decode_err(&buf);
        assert!(matches!(error, FrameError::HeaderChecksum { .. }), "{error:?}");
        assert_eq!(error.code(), ErrorCode::FrameChecksum);
    }

    #[test]
    fn payload_checksum_and_length() {
        let data = b"some chunk data";
        let mut buf = encoded(write_request(data), data);
        let last = buf.len() - 1;
        buf[last] ^= 0x10;
        let error = decode_frame(&mut buf.clone(), &LIMITS).expect_err("corrupt payload");
        assert!(matches!(error, FrameError::PayloadChecksum { .. }), "{error:?}");
        assert_eq!(error.code(), ErrorCode::FrameChecksum);

        // The split path: the head is fine, the payload check fails.
        let Ok(Decoded::Complete(head)) = decode_head(&buf, &LIMITS) else {
            panic!("head decodes")
        };
        let payload = &buf[head.payload_range()];
        assert!(matches!(head.verify_payload(payload), Err(FrameError::PayloadChecksum { .. })));
        assert_eq!(
            head.verify_payload(&payload[1..]),
            Err(FrameError::PayloadLength {
                expected: head.payload_len,
                actual: payload.len() - 1
            })
        );
        assert_eq!(
            FrameError::PayloadLength { expected: 1, actual: 0 }.code(),
            ErrorCode::MalformedFrame
        );
    }

    #[test]
    fn empty_payload_must_have_empty_crc() {
        let mut buf = encoded(Ping { nonce: 1 }, b"");
        buf[offset::PAYLOAD_CRC32C] = 1;
        reseal(&mut buf);
        assert_eq!(decode_err(&buf), FrameError::PayloadChecksum { expected: 1, actual: 0 });
    }

    #[test]
    fn message_errors_carry_the_kind() {
        let buf = seal_raw(MessageKind::Ping.code(), &[0; 9], b"");
        let error = decode_err(&buf);
        assert_eq!(
            error,
            FrameError::Message {
                kind: MessageKind::Ping,
                error: MessageError::Length { expected: 8, actual: 9 }
            }
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn payload_must_match_the_message() {
        // A write whose frame carries fewer bytes than the message says.
        let data = b"abcdef";
        let mut request = write_request(data);
        request.length = 7;
        let mut message = BytesMut::new();
        Message::from(request).encode(&mut message);
        let buf = seal_raw(MessageKind::UpdateRequest.code(), &message, data);
        assert_eq!(
            decode_err(&buf),
            FrameError::Message {
                kind: MessageKind::UpdateRequest,
                error: MessageError::PayloadLength { expected: 7, actual: 6 }
            }
        );
        // A reply kind without payload that carries one.
        let mut message = BytesMut::new();
        Message::from(UpdateReply::default()).encode(&mut message);
        let buf = seal_raw(MessageKind::UpdateReply.code(), &message, b"x");
        assert_eq!(
            decode_err(&buf),
            FrameError::Message {
                kind: MessageKind::UpdateReply,
                error: MessageError::PayloadLength { expected: 0, actual: 1 }
            }
        );
    }

    #[test]
    fn truncated_maps_to_malformed() {
        assert_eq!(
            FrameError::Truncated { have_len: 3, needed_len: 32 }.code(),
            ErrorCode::MalformedFrame
        );
    }

    #[test]
    fn need_more_reports_how_much() {
        let data = [9u8; 100];
        let buf = encoded(write_request(&data), &data);
        let head_len = FIXED_HEADER_LEN + 80;
        assert_eq!(decode_head(&buf[..0], &LIMITS), Ok(Decoded::NeedMore { needed_len: 32 }));
        assert_eq!(decode_head(&buf[..31], &LIMITS), Ok(Decoded::NeedMore { needed_len: 32 }));
        assert_eq!(
            decode_head(&buf[..32], &LIMITS),
            Ok(Decoded::NeedMore { needed_len: head_len })
        );
        assert!(matches!(decode_head(&buf[..head_len], &LIMITS), Ok(Decoded::Complete(_))));
        let mut partial = BytesMut::from(&buf[..head_len + 99]);
        assert_eq!(
            decode_frame(&mut partial, &LIMITS),
            Ok(Decoded::NeedMore { needed_len: head_len + 100 })
        );
        assert_eq!(partial.len(), head_len + 99, "NeedMore leaves the buffer alone");
    }

    #[test]
    fn encode_refuses_what_decode_refuses() {
        let data = b"abc";
        let mut request = write_request(data);
        request.payload_crc32c ^= 1;
        let error = encode_head(
            &mut BytesMut::new(),
            RequestId(1),
            &request.into(),
            PayloadInfo::of(data).expect("small payload"),
            &LIMITS,
        )
        .expect_err("message CRC differs from payload CRC");
        assert!(matches!(
            error,
            EncodeError::Message { error: MessageError::PayloadCrcMismatch { .. }, .. }
        ));
        assert_eq!(error.code(), ErrorCode::InvalidArgument);

        let error = encode_head(
            &mut BytesMut::new(),
            RequestId(1),
            &Ping { nonce: 0 }.into(),
            PayloadInfo { len: PAYLOAD_LEN_MAX + 1, crc32c: 0 },
            &LIMITS,
        )
        .expect_err("payload over the limit");
        assert_eq!(error.code(), ErrorCode::FrameTooLarge);

        let error = encode_head(
            &mut BytesMut::new(),
            RequestId(1),
            &Ping { nonce: 0 }.into(),
            PayloadInfo { len: 0, crc32c: 5 },
            &LIMITS,
        )
        .expect_err("empty payload with a CRC");
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
    }

    /// The benchmark-minded property: neither direction copies the payload.
    #[test]
    fn payload_is_never_copied() {
        let data = Bytes::from(vec![0xA5u8; 1 << 20]);
        let frame = Frame::new(RequestId(5), write_request(&data), data.clone());
        let [head, payload] = frame.encode_parts(&LIMITS).expect("encodes");
        assert_eq!(payload.as_ptr(), data.as_ptr(), "encode shares the caller's payload");
        assert_eq!(head.len(), FIXED_HEADER_LEN + 80);

        // Receive side: the frame arrives in one buffer (as after a read into BytesMut).
        let mut buf = BytesMut::with_capacity(head.len() + payload.len() + 64);
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(b"R3FW"); // the start of the next frame
        let base = buf.as_ptr() as usize;
        let Ok(Decoded::Complete(decoded)) = decode_frame(&mut buf, &LIMITS) else {
            panic!("frame decodes")
        };
        assert_eq!(decoded.payload.as_ptr() as usize, base + head.len(), "payload is a view");
        assert_eq!(decoded.payload, data);
        assert_eq!(&buf[..], b"R3FW", "the next frame's bytes stay in the buffer");
        assert_eq!(decoded, frame);
    }

    #[test]
    fn largest_payload_round_trips_without_copy() {
        let data = vec![0x5Au8; PAYLOAD_LEN_MAX as usize];
        let info = PayloadInfo::of(&data).expect("64 MiB fits");
        let mut request = write_request(&[]);
        request.kind = UpdateKind::FullReplace;
        request.offset = 0;
        request.length = info.len;
        request.chunk_size = info.len;
        request.payload_crc32c = info.crc32c;
        let message = Message::from(request);
        let mut buf = BytesMut::with_capacity(FIXED_HEADER_LEN + 80 + data.len());
        let head_len = encode_head(&mut buf, RequestId(9), &message, info, &LIMITS)
            .expect("full chunk encodes");
        buf.extend_from_slice(&data);
        let base = buf.as_ptr() as usize;
        let Ok(Decoded::Complete(frame)) = decode_frame(&mut buf, &LIMITS) else {
            panic!("full chunk decodes")
        };
        assert_eq!(frame.payload.as_ptr() as usize, base + head_len);
        assert_eq!(frame.payload.len(), data.len());
        assert_eq!(frame.message, message);
    }

    #[test]
    fn precomputed_crc_from_several_buffers() {
        let parts: [&[u8]; 3] = [b"abc", b"", b"defg"];
        let info = PayloadInfo::of_slices(&parts).expect("small");
        assert_eq!(info, PayloadInfo::of(b"abcdefg").expect("small"));
        assert_eq!(PayloadInfo::with_crc32c(7, info.crc32c), Ok(info));
    }
}
