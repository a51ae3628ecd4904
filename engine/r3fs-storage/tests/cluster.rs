//! Three storage daemons and one mgmtd on loopback, one replication-3 chain: writes through the
//! head read back identically from every replica; stale chain versions are refused with the
//! current one; a payload whose CRC does not match is refused; the meta-facing requests work;
//! SIGTERM stops a daemon cleanly.

mod common;

use common::*;
use r3fs_storage::client::DataClient;
use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ErrorCode, InodeId, TargetId};
use r3fs_wire::{
    GetChunkMetasRequest, Message, Outcome, PayloadInfo, QueryLastChunkRequest,
    RemoveChunksRequest, UpdateKind,
};

const CHAIN: u32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_three_chain_on_loopback() {
    let mut cluster = storage_cluster(3).start().await;
    let members = [(101, 2), (102, 3), (103, 4)];
    let routing = start_chain(&mut cluster, CHAIN, &members).await;
    let chain = &routing.chains[&ChainId(CHAIN)];
    let version = chain.chain_version;
    assert_eq!(chain.head(), Some(TargetId(101)));
    let head_address = routing.address_of(TargetId(101)).expect("head address");
    let mut head = DataClient::connect(head_address).await.expect("connect to the head");

    // Writes through the head: a few chunks, partial writes, an overwrite, a hole.
    let mut expected: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    let mut sequence = 0;
    for index in 0..4u64 {
        let chunk = ChunkId::new(InodeId(7), index);
        let data = pattern(index, 100_000 + index as usize * 1_000);
        sequence += 1;
        let reply =
            write(&mut head, write_request(CHAIN, version, chunk, 0, &data, 1, sequence), &data)
                .await;
        assert_eq!(reply.outcome, Outcome::Ok, "{reply:?}");
        assert_eq!(reply.commit_version, ChunkVersion(1));
        assert_eq!(reply.chunk_crc32c, crc32c::crc32c(&data));
        expected.push((chunk, data));
    }
    // Overwrite the middle of chunk 1 and write past the end of chunk 2 (zero-filled gap).
    let patch = pattern(99, 5_000);
    sequence += 1;
    let reply = write(
        &mut head,
        write_request(CHAIN, version, expected[1].0, 50_000, &patch, 1, sequence),
        &patch,
    )
    .await;
    assert_eq!((reply.outcome, reply.commit_version), (Outcome::Ok, ChunkVersion(2)));
    expected[1].1[50_000..55_000].copy_from_slice(&patch);
    sequence += 1;
    let far = 200_000u32;
    let reply = write(
        &mut head,
        write_request(CHAIN, version, expected[2].0, far, &patch, 1, sequence),
        &patch,
    )
    .await;
    assert_eq!(reply.outcome, Outcome::Ok, "{reply:?}");
    expected[2].1.resize(far as usize, 0);
    expected[2].1.extend_from_slice(&patch);
    assert_eq!(reply.chunk_length as usize, expected[2].1.len());

    // A retried write (same client and sequence) is applied once.
    let retry = write(
        &mut head,
        write_request(CHAIN, version, expected[2].0, far, &patch, 1, sequence),
        &patch,
    )
    .await;
    assert_eq!((retry.outcome, retry.commit_version), (Outcome::Ok, reply.commit_version));

    // Every replica serves the same bytes.
    for (target, _) in members {
        let address = routing.address_of(TargetId(target)).expect("replica address");
        let mut replica = DataClient::connect(address).await.expect("connect to a replica");
        for (chunk, data) in &expected {
            let (outcome, bytes) = read(&mut replica, CHAIN, *chunk, 0, CHUNK_SIZE).await;
            assert_eq!(outcome, Outcome::Ok, "target {target} chunk {chunk}");
            assert!(
                bytes == *data,
                "target {target} chunk {chunk}: {} bytes differ from {} written",
                bytes.len(),
                data.len()
            );
        }
        // A partial range.
        let (_, bytes) = read(&mut replica, CHAIN, expected[1].0, 49_000, 7_000).await;
        assert_eq!(bytes, expected[1].1[49_000..56_000]);
    }

    // A stale chain version is refused with the current one; nothing is written.
    let stale = ChainVersion(version.0 + 5);
    let data = pattern(5, 1_000);
    let reply = head
        .update(write_request(CHAIN, stale, expected[0].0, 0, &data, 2, 1), &data)
        .await
        .expect("update");
    assert_eq!(reply.outcome, Outcome::Failed(ErrorCode::StaleChainVersion));
    assert_eq!(reply.current_chain_version, Some(version));

    // A payload whose bytes do not match the frame's CRC32C is refused, and not written.
    let data = pattern(6, 4_096);
    let mut request = write_request(CHAIN, version, expected[0].0, 0, &data, 3, 1);
    let wrong = crc32c::crc32c(&data) ^ 0x5a5a;
    request.payload_crc32c = wrong;
    let id = head
        .send_with_info(
            request.into(),
            &data,
            PayloadInfo { len: data.len() as u32, crc32c: wrong },
        )
        .await
        .expect("send");
    let frame = head.recv().await.expect("reply to the corrupt frame");
    assert_eq!(frame.request_id, id);
    match frame.message {
        Message::UpdateReply(reply) => {
            assert_eq!(reply.outcome, Outcome::Failed(ErrorCode::FrameChecksum))
        }
        other => panic!("unexpected {other:?}"),
    }
    let (_, bytes) = read(&mut head, CHAIN, expected[0].0, 0, CHUNK_SIZE).await;
    assert!(bytes == expected[0].1, "the refused write changed the chunk");

    // Meta-facing requests: last chunk, chunk metas, truncate, remove a range.
    let reply = head
        .call(
            QueryLastChunkRequest {
                chain_id: ChainId(CHAIN),
                inode: InodeId(7),
                chunk_index_begin: 0,
                chunk_index_end: 100,
            }
            .into(),
            &[],
        )
        .await
        .expect("query last chunk");
    match reply.message {
        Message::QueryLastChunkReply(reply) => {
            let last = reply.last_chunk.expect("a last chunk");
            assert_eq!((last.index, last.length as usize), (3, expected[3].1.len()));
        }
        other => panic!("unexpected {other:?}"),
    }
    let reply = head
        .call(
            GetChunkMetasRequest {
                chain_id: ChainId(CHAIN),
                target_id: TargetId(101),
                start_after: None,
                limit: 2,
            }
            .into(),
            &[],
        )
        .await
        .expect("chunk metas");
    match reply.message {
        Message::GetChunkMetasReply(reply) => {
            assert!(reply.more);
            assert_eq!(reply.metas.len(), 2);
            assert_eq!(reply.metas[0].crc32c, crc32c::crc32c(&expected[0].1));
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut truncate = write_request(CHAIN, version, expected[3].0, 0, &[], 1, sequence + 1);
    truncate.kind = UpdateKind::Truncate;
    truncate.length = 10;
    let reply = write(&mut head, truncate, &[]).await;
    assert_eq!((reply.outcome, reply.chunk_length), (Outcome::Ok, 10));
    // Extend grows with zeros to at least `offset + length`, and never shrinks.
    let mut extend = write_request(CHAIN, version, expected[3].0, 60, &[], 1, sequence + 2);
    extend.kind = UpdateKind::Extend;
    extend.length = 40;
    let reply = write(&mut head, extend.clone(), &[]).await;
    assert_eq!((reply.outcome, reply.chunk_length), (Outcome::Ok, 100));
    extend.offset = 0;
    extend.length = 5;
    extend.sequence = sequence + 3;
    let reply = write(&mut head, extend, &[]).await;
    assert_eq!((reply.outcome, reply.chunk_length), (Outcome::Ok, 100));
    let mut extended = expected[3].1[..10].to_vec();
    extended.resize(100, 0);
    let reply = head
        .call(
            RemoveChunksRequest {
                chain_id: ChainId(CHAIN),
                chain_version: version,
                inode: InodeId(7),
                chunk_index_begin: 2,
                chunk_index_end: 3,
                limit: 16,
            }
            .into(),
            &[],
        )
        .await
        .expect("remove chunks");
    match reply.message {
        Message::RemoveChunksReply(reply) => {
            assert_eq!((reply.outcome, reply.removed_count, reply.more), (Outcome::Ok, 1, false))
        }
        other => panic!("unexpected {other:?}"),
    }
    for (target, _) in members {
        let address = routing.address_of(TargetId(target)).expect("replica address");
        let mut replica = DataClient::connect(address).await.expect("connect");
        let (outcome, _) = read(&mut replica, CHAIN, expected[2].0, 0, 16).await;
        assert_eq!(outcome, Outcome::Failed(ErrorCode::ChunkNotFound), "target {target}");
        let (_, bytes) = read(&mut replica, CHAIN, expected[3].0, 0, CHUNK_SIZE).await;
        assert_eq!(bytes, extended, "target {target}");
    }

    // SIGTERM: drain, sync, exit 0 (within STOP_GRACE), with the head's connection still open.
    let problems = cluster.stop();
    assert!(problems.is_empty(), "daemons that did not stop cleanly: {problems:?}");
    drop(head);
}
