//! Codec cost per frame. The payload is never copied, so decoding costs one CRC32C pass over the
//! payload plus a constant; encoding a head with a precomputed CRC costs a constant.
//!
//! `cargo bench -p r3fs-wire --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, InodeId, RequestId};
use r3fs_wire::{
    Decoded, Frame, FrameLimits, PayloadInfo, UpdateKind, UpdateRequest, decode_frame, decode_head,
    encode_head,
};
use std::hint::black_box;

const LIMITS: FrameLimits = FrameLimits::DEFAULT;

fn write_frame(len: usize) -> Frame {
    let payload = Bytes::from(vec![0xA5u8; len]);
    let info = PayloadInfo::of(&payload).expect("bench payload fits");
    let request = UpdateRequest {
        kind: UpdateKind::Write,
        chain_id: ChainId(1),
        chain_version: ChainVersion(1),
        chunk_id: ChunkId::new(InodeId(7), 0),
        offset: 0,
        length: info.len,
        chunk_size: 64 << 20,
        update_version: ChunkVersion(0),
        client_id: ClientId(1),
        sequence: 1,
        payload_crc32c: info.crc32c,
        sending_target_id: None,
    };
    Frame::new(RequestId(1), request, payload)
}

fn codec(c: &mut Criterion) {
    for len in [4 << 10, 1 << 20, 4 << 20] {
        let frame = write_frame(len);
        let mut wire = BytesMut::new();
        frame.encode(&mut wire, &LIMITS).expect("encodes");
        let wire = wire.freeze();

        let mut group = c.benchmark_group(format!("write_{}KiB", len >> 10));
        group.throughput(Throughput::Bytes(len as u64));
        // The receive buffer is rebuilt outside the timed part (it stands for the socket read).
        group.bench_function("decode_frame", |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| match decode_frame(&mut buf, &LIMITS) {
                    Ok(Decoded::Complete(frame)) => black_box(frame),
                    other => panic!("bench frame must decode: {other:?}"),
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function("decode_head+verify_payload", |b| {
            b.iter(|| match decode_head(black_box(&wire), &LIMITS) {
                Ok(Decoded::Complete(head)) => {
                    head.verify_payload(&wire[head.payload_range()]).expect("payload verifies");
                    black_box(head)
                }
                other => panic!("bench head must decode: {other:?}"),
            })
        });
        let message = frame.message.clone();
        let info = frame.payload_info().expect("fits");
        let mut out = BytesMut::with_capacity(256);
        group.bench_function("encode_head(precomputed crc)", |b| {
            b.iter(|| {
                out.clear();
                encode_head(&mut out, RequestId(1), black_box(&message), info, &LIMITS)
                    .expect("encodes")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
