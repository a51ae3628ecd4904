//! Property tests of the whole codec: round trips of every message kind, single-bit corruption,
//! truncation and garbage.

use crate::frame::test_support::seal_raw;
use crate::frame::{FIXED_HEADER_LEN, offset};
use crate::storage::*;
use crate::{
    Decoded, Frame, FrameLimits, Message, MessageKind, Outcome, decode_frame, decode_head,
    encode_head,
};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, InodeId, RequestId, TargetId,
};

const LIMITS: FrameLimits = FrameLimits::DEFAULT;

fn crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

fn len_u32(data: &[u8]) -> u32 {
    u32::try_from(data.len()).expect("test payloads are small")
}

fn chunk_id() -> impl Strategy<Value = ChunkId> {
    (any::<u64>(), any::<u64>()).prop_map(|(inode, index)| ChunkId::new(InodeId(inode), index))
}

fn failure() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL)
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Ok), failure().prop_map(Outcome::Failed)]
}

fn data(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=len_max)
}

fn update_request() -> impl Strategy<Value = (Message, Vec<u8>)> {
    (
        proptest::sample::select(UpdateKind::ALL),
        (any::<u32>(), any::<u32>(), chunk_id(), any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<Option<u64>>()),
        data(300),
    )
        .prop_map(
            |(
                kind,
                (chain, chain_version, chunk_id, offset, length, chunk_size),
                (update_version, client, sequence, sender),
                data,
            )| {
                let data = if kind.carries_data() { data } else { Vec::new() };
                let length = if kind.carries_data() { len_u32(&data) } else { length };
                let message = UpdateRequest {
                    kind,
                    chain_id: ChainId(chain),
                    chain_version: ChainVersion(chain_version),
                    chunk_id,
                    offset,
                    length,
                    chunk_size,
                    update_version: ChunkVersion(update_version),
                    client_id: ClientId(client),
                    sequence,
                    payload_crc32c: crc(&data),
                    sending_target_id: sender.map(TargetId),
                };
                (message.into(), data)
            },
        )
}

fn update_reply() -> impl Strategy<Value = (Message, Vec<u8>)> {
    (outcome(), any::<Option<u32>>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(outcome, current, commit, length, chunk_crc)| {
            let message = UpdateReply {
                outcome,
                current_chain_version: current.map(ChainVersion),
                commit_version: ChunkVersion(commit),
                chunk_length: length,
                chunk_crc32c: chunk_crc,
            };
            (message.into(), Vec::new())
        },
    )
}

fn batch_read_request() -> impl Strategy<Value = (Message, Vec<u8>)> {
    proptest::collection::vec(
        (any::<u32>(), chunk_id(), any::<u32>(), any::<u32>()).prop_map(
            |(chain, chunk_id, offset, length)| BatchReadItem {
                chain_id: ChainId(chain),
                chunk_id,
                offset,
                length,
            },
        ),
        0..20,
    )
    .prop_map(|items| (BatchReadRequest { items }.into(), Vec::new()))
}

fn batch_read_reply() -> impl Strategy<Value = (Message, Vec<u8>)> {
    let item = prop_oneof![
        data(64).prop_map(|d| (Outcome::Ok, d)),
        failure().prop_map(|code| (Outcome::Failed(code), Vec::new())),
    ];
    prop_oneof![
        proptest::collection::vec(item, 0..12).prop_map(|items| {
            let mut payload = Vec::new();
            let items = items
                .into_iter()
                .map(|(outcome, d)| {
                    payload.extend_from_slice(&d);
                    BatchReadReplyItem { outcome, length: len_u32(&d), crc32c: crc(&d) }
                })
                .collect();
            (BatchReadReply { outcome: Outcome::Ok, items }.into(), payload)
        }),
        failure().prop_map(|code| {
            (
                BatchReadReply { outcome: Outcome::Failed(code), items: Vec::new() }.into(),
                Vec::new(),
            )
        }),
    ]
}

fn query_last_chunk() -> impl Strategy<Value = (Message, Vec<u8>)> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, i, b, e)| {
            let message = QueryLastChunkRequest {
                chain_id: ChainId(c),
                inode: InodeId(i),
                chunk_index_begin: b,
                chunk_index_end: e,
            };
            (message.into(), Vec::new())
        }),
        (outcome(), any::<Option<(u64, u32)>>()).prop_map(|(outcome, last)| {
            let message = QueryLastChunkReply {
                outcome,
                last_chunk: last.map(|(index, length)| LastChunk { index, length }),
            };
            (message.into(), Vec::new())
        }),
    ]
}

fn remove_chunks() -> impl Strategy<Value = (Message, Vec<u8>)> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>())
            .prop_map(|(c, v, i, b, e, limit)| {
                let message = RemoveChunksRequest {
                    chain_id: ChainId(c),
                    chain_version: ChainVersion(v),
                    inode: InodeId(i),
                    chunk_index_begin: b,
                    chunk_index_end: e,
                    limit,
                };
                (message.into(), Vec::new())
            }),
        (outcome(), any::<Option<u32>>(), any::<u32>(), any::<bool>()).prop_map(
            |(outcome, current, removed, more)| {
                let message = RemoveChunksReply {
                    outcome,
                    current_chain_version: current.map(ChainVersion),
                    removed_count: removed,
                    more,
                };
                (message.into(), Vec::new())
            }
        ),
    ]
}

fn get_chunk_metas() -> impl Strategy<Value = (Message, Vec<u8>)> {
    let meta = (chunk_id(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(chunk_id, version, length, crc32c)| ChunkMeta {
            chunk_id,
            commit_version: ChunkVersion(version),
            length,
            crc32c,
        },
    );
    prop_oneof![
        (any::<u32>(), any::<u64>(), proptest::option::of(chunk_id()), any::<u32>()).prop_map(
            |(c, t, start_after, limit)| {
                let message = GetChunkMetasRequest {
                    chain_id: ChainId(c),
                    target_id: TargetId(t),
                    start_after,
                    limit,
                };
                (message.into(), Vec::new())
            }
        ),
        (proptest::collection::vec(meta, 0..12), any::<bool>()).prop_map(|(metas, more)| {
            (GetChunkMetasReply { outcome: Outcome::Ok, metas, more }.into(), Vec::new())
        }),
        (failure(), any::<bool>()).prop_map(|(code, more)| {
            let message =
                GetChunkMetasReply { outcome: Outcome::Failed(code), metas: Vec::new(), more };
            (message.into(), Vec::new())
        }),
    ]
}

fn ping_pong() -> impl Strategy<Value = (Message, Vec<u8>)> {
    prop_oneof![
        (any::<u64>(), data(100)).prop_map(|(nonce, d)| (Ping { nonce }.into(), d)),
        (any::<u64>(), data(100)).prop_map(|(nonce, d)| (Pong { nonce }.into(), d)),
    ]
}

/// Any valid frame of any kind, with its payload.
fn frame() -> impl Strategy<Value = Frame> {
    (
        any::<u64>(),
        prop_oneof![
            update_request(),
            update_reply(),
            batch_read_request(),
            batch_read_reply(),
            query_last_chunk(),
            remove_chunks(),
            get_chunk_metas(),
            ping_pong(),
        ],
    )
        .prop_map(|(request_id, (message, payload))| {
            Frame::new(RequestId(request_id), message, Bytes::from(payload))
        })
}

fn encode(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    frame.encode(&mut out, &LIMITS).expect("generated frames are valid");
    out
}

/// Decodes `buf` as the IO edge would: if the decoder asks for more, give it (zeros) up to what
/// it asked for, bounded by the limits, and ask again. Returns the final answer.
fn decode_with_refill(bytes: &[u8], limits: &FrameLimits) -> Result<Frame, crate::FrameError> {
    let mut buf = BytesMut::from(bytes);
    for _ in 0..3 {
        match decode_frame(&mut buf, limits)? {
            Decoded::Complete(frame) => return Ok(frame),
            Decoded::NeedMore { needed_len } => {
                assert!(needed_len > buf.len(), "NeedMore must ask for more than is there");
                let frame_len_max = FIXED_HEADER_LEN
                    + limits.message_header_len_max as usize
                    + limits.payload_len_max as usize;
                assert!(needed_len <= frame_len_max, "NeedMore beyond the limits: {needed_len}");
                buf.resize(needed_len, 0);
            }
        }
    }
    panic!("decoder asked for more three times in a row")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_kind_round_trips(frame in frame()) {
        let bytes = encode(&frame);

        // Whole-frame path.
        let mut buf = bytes.clone();
        let Decoded::Complete(decoded) = decode_frame(&mut buf, &LIMITS)? else {
            panic!("a whole frame decodes");
        };
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&decoded, &frame);

        // Split path: head first, payload from wherever the IO edge put it.
        let Decoded::Complete(head) = decode_head(&bytes, &LIMITS)? else {
            panic!("a whole head decodes");
        };
        prop_assert_eq!(&head.message, &frame.message);
        prop_assert_eq!(head.request_id, frame.request_id);
        prop_assert_eq!(head.frame_len(), bytes.len());
        let own_buffer = bytes[head.payload_range()].to_vec();
        prop_assert_eq!(head.verify_payload(&own_buffer), Ok(()));

        // Canonical: the head written for the decoded message is byte-identical.
        let mut again = BytesMut::new();
        let head_len = encode_head(
            &mut again, head.request_id, &head.message, decoded.payload_info()?, &LIMITS,
        )?;
        prop_assert_eq!(head_len, head.head_len);
        prop_assert_eq!(&again[..], &bytes[..head_len]);

        if let Message::BatchReadReply(reply) = &decoded.message {
            prop_assert_eq!(reply.verify_item_crc32cs(&decoded.payload), Ok(()));
        }
    }

    #[test]
    fn frames_back_to_back_decode_in_order(frames in proptest::collection::vec(frame(), 1..6)) {
        let mut buf = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut buf, &LIMITS)?;
        }
        for frame in &frames {
            let Decoded::Complete(decoded) = decode_frame(&mut buf, &LIMITS)? else {
                panic!("frame decodes");
            };
            prop_assert_eq!(&decoded, frame);
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn truncation_always_asks_for_more(frame in frame()) {
        let bytes = encode(&frame);
        let head_len = frame.message.encoded_len() + FIXED_HEADER_LEN;
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            match decode_frame(&mut buf, &LIMITS)? {
                Decoded::NeedMore { needed_len } => {
                    prop_assert!(needed_len > cut && needed_len <= bytes.len(), "cut {cut}: {needed_len}");
                }
                Decoded::Complete(_) => panic!("a frame cut at {cut} of {} decoded", bytes.len()),
            }
            prop_assert_eq!(buf.len(), cut);
            match decode_head(&bytes[..cut], &LIMITS)? {
                Decoded::NeedMore { needed_len } => {
                    prop_assert!(cut < head_len && needed_len > cut && needed_len <= head_len);
                }
                Decoded::Complete(head) => {
                    prop_assert!(cut >= head_len);
                    prop_assert_eq!(&head.message, &frame.message);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_head(&bytes, &LIMITS);
        let _ = decode_frame(&mut BytesMut::from(&bytes[..]), &LIMITS);
        // The same bytes behind a valid magic and version reach the later checks.
        let mut prefixed = b"R3FW\x01".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = decode_head(&prefixed, &LIMITS);
        let _ = decode_frame(&mut BytesMut::from(&prefixed[..]), &LIMITS);
    }

    /// Random message bytes behind a correct header CRC reach the message decoders: they never
    /// panic, and whatever they accept is canonical (re-encodes to the same bytes).
    #[test]
    fn sealed_garbage_messages(
        (kind, message) in prop_oneof![
            (any::<u16>(), data(120)),
            (proptest::sample::select(MessageKind::ALL), 0u32..4)
                .prop_flat_map(|(kind, count)| {
                    // The kind's exact size, mostly-zero bytes: the decoders get past their length
                    // checks and meet valid-looking flags, outcomes and reserved fields.
                    let len = plausible_message_len(kind, count);
                    let byte = prop_oneof![3 => Just(0u8), 1 => Just(1u8), 2 => any::<u8>()];
                    (Just(kind), proptest::collection::vec(byte, len..=len), Just(count))
                })
                .prop_map(|(kind, mut message, count)| {
                    if list_count_at(kind).is_some_and(|at| message.len() >= at + 4) {
                        let at = list_count_at(kind).unwrap_or(0);
                        message[at..at + 4].copy_from_slice(&count.to_le_bytes());
                    }
                    (kind.code(), message)
                }),
        ],
        payload in data(50),
    ) {
        let bytes = seal_raw(kind, &message, &payload);
        if let Ok(Decoded::Complete(frame)) = decode_frame(&mut bytes.clone(), &LIMITS) {
            let mut again = BytesMut::new();
            frame.encode(&mut again, &LIMITS)?;
            // seal_raw uses request id 7 like any other; the whole frame must match.
            prop_assert_eq!(&again[..], &bytes[..]);
        }
    }
}

/// Where a list message keeps its entry count.
fn list_count_at(kind: MessageKind) -> Option<usize> {
    match kind {
        MessageKind::BatchReadRequest => Some(0),
        MessageKind::BatchReadReply | MessageKind::GetChunkMetasReply => Some(4),
        _ => None,
    }
}

/// The size a message of `kind` has (with `count` entries for a list).
fn plausible_message_len(kind: MessageKind, count: u32) -> usize {
    let count = count as usize;
    match kind {
        MessageKind::UpdateRequest => UPDATE_REQUEST_LEN,
        MessageKind::UpdateReply => UPDATE_REPLY_LEN,
        MessageKind::BatchReadRequest => LIST_PREFIX_LEN + count * BATCH_READ_ITEM_LEN,
        MessageKind::BatchReadReply => LIST_PREFIX_LEN + count * BATCH_READ_REPLY_ITEM_LEN,
        MessageKind::QueryLastChunkRequest => QUERY_LAST_CHUNK_REQUEST_LEN,
        MessageKind::QueryLastChunkReply => QUERY_LAST_CHUNK_REPLY_LEN,
        MessageKind::RemoveChunksRequest => REMOVE_CHUNKS_REQUEST_LEN,
        MessageKind::RemoveChunksReply => REMOVE_CHUNKS_REPLY_LEN,
        MessageKind::GetChunkMetasRequest => GET_CHUNK_METAS_REQUEST_LEN,
        MessageKind::GetChunkMetasReply => LIST_PREFIX_LEN + count * CHUNK_META_LEN,
        MessageKind::Ping | MessageKind::Pong => PING_LEN,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every accepted message has one encoding: set any byte of a valid message header to
    /// another value (with the header CRC fixed up), and the decoder either refuses it or decodes
    /// a message that encodes back to exactly those bytes. Catches a reserved field, unused flag
    /// bit or absent optional value that the decoder forgets to check.
    #[test]
    fn every_accepted_message_is_canonical(frame in frame()) {
        let bytes = encode(&frame);
        let head_len = FIXED_HEADER_LEN + frame.message.encoded_len();
        let message = &bytes[FIXED_HEADER_LEN..head_len];
        for at in 0..message.len() {
            for value in [0u8, 1, 2, 0x80, 0xFF] {
                let mut edited = message.to_vec();
                edited[at] = value;
                let sealed = seal_raw(frame.kind().code(), &edited, &frame.payload);
                let Ok(head) = decode_head(&sealed, &LIMITS) else { continue };
                let Decoded::Complete(head) = head else { panic!("whole head present") };
                let mut again = BytesMut::new();
                head.message.encode(&mut again);
                prop_assert_eq!(&again[..], &edited[..], "byte {} set to {:#x}", at, value);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any single-bit flip anywhere (fixed header, message header, payload) is reported, never
    /// decoded as some other frame, even when the IO edge supplies the extra bytes a corrupted
    /// length asks for. Small limits keep that refill cheap.
    #[test]
    fn every_single_bit_flip_is_caught(frame in frame()) {
        let limits = FrameLimits { message_header_len_max: 64 << 10, payload_len_max: 64 << 10 };
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes, &limits)?;
        for bit in 0..bytes.len() * 8 {
            let mut corrupt = bytes.to_vec();
            corrupt[bit / 8] ^= 1 << (bit % 8);
            match decode_with_refill(&corrupt, &limits) {
                Err(error) => {
                    // A flip in the payload is a checksum error, never a decode of the head.
                    if bit / 8 >= bytes.len() - frame.payload.len() {
                        prop_assert!(
                            matches!(error, crate::FrameError::PayloadChecksum { .. }),
                            "payload bit {bit}: {error:?}"
                        );
                    }
                }
                Ok(decoded) => panic!("bit {bit} flipped and still decoded: {decoded:?}"),
            }
            // The split path agrees: corruption of the head fails the head; of the payload, the
            // payload check.
            if let Ok(Decoded::Complete(head)) = decode_head(&corrupt, &limits) {
                prop_assert!(bit / 8 >= head.head_len, "head bit {bit} flipped and still decoded");
                let payload = corrupt.get(head.payload_range()).expect("payload present");
                prop_assert!(head.verify_payload(payload).is_err(), "payload bit {bit} passed");
            }
        }
    }
}

#[test]
fn header_checksum_covers_every_fixed_field() {
    // Fields that the early checks do not look at are caught by the header CRC alone.
    let frame = Frame::new(RequestId(11), Ping { nonce: 3 }, Bytes::from_static(b"xyz"));
    let bytes = encode(&frame);
    for at in [offset::REQUEST_ID, offset::PAYLOAD_CRC32C, offset::HEADER_CRC32C] {
        let mut corrupt = bytes.clone();
        corrupt[at] ^= 4;
        assert!(
            matches!(decode_head(&corrupt, &LIMITS), Err(crate::FrameError::HeaderChecksum { .. })),
            "offset {at}"
        );
    }
}
