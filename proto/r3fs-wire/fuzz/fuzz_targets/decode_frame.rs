//! Fuzzes both decode paths of r3fs-wire with three kinds of input, chosen by the first byte:
//!
//! - mode 0: the bytes as they are (magic, version, limits and checksum checks);
//! - mode 1: the bytes with their payload and header CRC32Cs fixed up, so corrupt-looking
//!   headers reach the message decoders;
//! - mode 2: a frame built around the bytes (`kind: u16`, `message_len: u16`, then message and
//!   payload), always with a valid fixed header and checksums.
//!
//! Bit 2 of the mode byte selects small limits instead of the defaults.
//!
//! Oracles, besides "no panic, no abort, no huge allocation":
//! - `decode_head` and `decode_frame` agree (same error, same head, same need-more);
//! - `NeedMore` asks for more than is there and never beyond the limits;
//! - whatever decodes is canonical: re-encoding it gives back exactly the input bytes;
//! - the decoded payload is a view into the input buffer, not a copy.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use r3fs_wire::frame::offset;
use r3fs_wire::{
    Decoded, FIXED_HEADER_LEN, FrameLimits, MAGIC, PROTOCOL_VERSION, decode_frame, decode_head,
};

const SMALL: FrameLimits = FrameLimits { message_header_len_max: 4096, payload_len_max: 4096 };

fn le_u32(bytes: &[u8], at: usize) -> usize {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word) as usize
}

/// Fixes up the payload CRC (when the payload is all there) and the header CRC (when the message
/// header is all there) of the frame at the start of `bytes`.
fn seal(bytes: &mut [u8]) {
    if bytes.len() < FIXED_HEADER_LEN {
        return;
    }
    let head_len = FIXED_HEADER_LEN.saturating_add(le_u32(bytes, offset::MESSAGE_HEADER_LEN));
    let payload_len = le_u32(bytes, offset::PAYLOAD_LEN);
    if let Some(payload) = bytes.get(head_len..head_len.saturating_add(payload_len)) {
        let crc = crc32c::crc32c(payload);
        bytes[offset::PAYLOAD_CRC32C..offset::PAYLOAD_CRC32C + 4]
            .copy_from_slice(&crc.to_le_bytes());
    }
    if head_len <= bytes.len() {
        bytes[offset::HEADER_CRC32C..FIXED_HEADER_LEN].fill(0);
        let crc = crc32c::crc32c(&bytes[..head_len]);
        bytes[offset::HEADER_CRC32C..FIXED_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A frame around fuzzer-chosen kind, message bytes and payload.
fn synthesize(data: &[u8]) -> Vec<u8> {
    let (kind, message_len, rest) = match data {
        [k0, k1, l0, l1, rest @ ..] => {
            (u16::from_le_bytes([*k0, *k1]), usize::from(u16::from_le_bytes([*l0, *l1])), rest)
        }
        _ => return data.to_vec(),
    };
    let (message, payload) = rest.split_at(message_len.min(rest.len()));
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + rest.len());
    out.put_slice(&MAGIC);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(0);
    out.put_u16_le(kind);
    out.put_u64_le(1);
    out.put_u32_le(message.len() as u32);
    out.put_u32_le(payload.len() as u32);
    out.put_u32_le(0);
    out.put_u32_le(0);
    out.put_slice(message);
    out.put_slice(payload);
    seal(&mut out);
    out
}

fn check(input: &[u8], limits: &FrameLimits) {
    let mut buf = BytesMut::from(input);
    let mut consumed = 0usize;
    // Several frames may lie back to back; each iteration removes one from the front.
    loop {
        let base = buf.as_ptr() as usize;
        let head = decode_head(&buf, limits);
        let frame = decode_frame(&mut buf, limits);
        match (head, frame) {
            (Err(head_error), Err(frame_error)) => {
                assert_eq!(head_error, frame_error, "the two paths disagree on the error");
                return;
            }
            // The head is fine but the payload is not: only the whole-frame path sees it.
            (Ok(Decoded::Complete(head)), Err(frame_error)) => {
                let payload = &input[consumed..][head.payload_range()];
                assert_eq!(head.verify_payload(payload), Err(frame_error));
                return;
            }
            (Ok(Decoded::NeedMore { needed_len: a }), Ok(Decoded::NeedMore { needed_len: b })) => {
                assert_eq!(a, b, "the two paths need different amounts");
                assert!(a > buf.len());
                assert!(
                    a <= FIXED_HEADER_LEN
                        + limits.message_header_len_max as usize
                        + limits.payload_len_max as usize
                );
                return;
            }
            (Ok(Decoded::Complete(head)), Ok(Decoded::NeedMore { needed_len })) => {
                assert_eq!(needed_len, head.frame_len());
                assert!(needed_len > buf.len());
                return;
            }
            (Ok(Decoded::Complete(head)), Ok(Decoded::Complete(frame))) => {
                let frame_len = head.frame_len();
                let original = &input[consumed..consumed + frame_len];
                assert_eq!(frame.message, head.message);
                assert_eq!(frame.payload.as_ptr() as usize, base + head.head_len, "payload copied");
                let mut again = BytesMut::new();
                frame.encode(&mut again, limits).expect("a decoded frame encodes");
                assert_eq!(&again[..], original, "decoded frame is not canonical");
                consumed += frame_len;
            }
            (head, frame) => panic!("paths disagree: {head:?} vs {frame:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = if mode & 4 != 0 { SMALL } else { FrameLimits::DEFAULT };
    match mode & 3 {
        0 => check(rest, &limits),
        1 => {
            let mut bytes = rest.to_vec();
            seal(&mut bytes);
            check(&bytes, &limits);
        }
        _ => check(&synthesize(rest), &limits),
    }
});
