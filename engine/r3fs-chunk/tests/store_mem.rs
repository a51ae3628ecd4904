//! Behaviour of the chunk store on the in-memory device: staging and committing, partial
//! updates, in-place appends, truncation, removal, listing, resync install, corruption, disk
//! full, failures, compaction and group commit.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use r3fs_chunk::format::SizeClass;
use r3fs_chunk::mem::MemDiskOptions;
use r3fs_chunk::{
    CommitOutcome, ReadRequest, StageOutcome, StageRequest, StoreConfig, StoreError, UpdateOp,
    UpdateOutcome,
};
use r3fs_types::{ChainVersion, ChunkVersion, ErrorCode, InodeId};

const KIB: u32 = 1024;
const MIB: u32 = 1024 * 1024;

fn harness(seed: u64) -> MemHarness {
    MemHarness::new(seed, MemDiskOptions::default(), small_config())
}

#[test]
fn staged_version_is_invisible_until_commit_and_survives_reopen() {
    let mut h = harness(1);
    let store = h.store();
    let c = chunk(7, 0);
    let v1 = bytes(1, 100_000);
    let v2 = bytes(2, 70_000);
    assert!(matches!(
        h.run(write(&store, c, 1, 256 * KIB, 0, &v1)).unwrap(),
        UpdateOutcome::Committed(Some(_))
    ));
    let staged = h.run(store.stage(StageRequest {
        chunk: c,
        version: ChunkVersion(2),
        chain_version: ChainVersion(3),
        chunk_size: 256 * KIB,
        op: UpdateOp::Replace { data: buf(&store, &v2), crc: crc32c::crc32c(&v2) },
    }));
    let StageOutcome::Staged(pending) = staged.unwrap() else { panic!() };
    assert_eq!(pending.len, 70_000);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), v1, "readers see the committed version");
    let meta = store.metadata(c).unwrap();
    assert_eq!(meta.committed.unwrap().version, ChunkVersion(1));
    assert_eq!(meta.pending.unwrap().version, ChunkVersion(2));
    // Committing another version is refused as data, not an error.
    assert_eq!(
        h.run(store.commit(c, ChunkVersion(3))).unwrap(),
        CommitOutcome::VersionMismatch { pending: ChunkVersion(2) }
    );
    let CommitOutcome::Committed(Some(meta)) = h.run(store.commit(c, ChunkVersion(2))).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (meta.version, meta.chain_version, meta.len),
        (ChunkVersion(2), ChainVersion(3), 70_000)
    );
    assert_eq!(meta.crc, crc32c::crc32c(&v2));
    assert_eq!(
        h.run(store.commit(c, ChunkVersion(2))).unwrap(),
        CommitOutcome::AlreadyCommitted { committed: ChunkVersion(2) }
    );
    assert_eq!(h.run(read_all(&store, c)).unwrap(), v2);
    // An old version is refused.
    let stale = h.run(write(&store, c, 2, 256 * KIB, 0, &v1)).unwrap();
    assert_eq!(stale, UpdateOutcome::AlreadyCommitted { committed: ChunkVersion(2) });
    h.close_and_reopen();
    let store = h.store();
    assert_eq!(h.run(read_all(&store, c)).unwrap(), v2);
    assert!(store.metadata(c).unwrap().pending.is_none());
}

#[test]
fn partial_writes_appends_and_holes() {
    let mut h = harness(2);
    let store = h.store();
    let c = chunk(1, 3);
    let mut model = Vec::new();
    let mut version = 0;
    let mut apply = |h: &mut MemHarness, offset: u32, data: Vec<u8>| {
        version += 1;
        let end = offset as usize + data.len();
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&data);
        let outcome = h.run(write(&store, c, version, 4 * MIB, offset, &data)).unwrap();
        let UpdateOutcome::Committed(Some(meta)) = outcome else { panic!("{outcome:?}") };
        assert_eq!(meta.len as usize, model.len());
        assert_eq!(meta.crc, crc32c::crc32c(&model), "chunk crc after write at {offset}");
        assert_eq!(h.run(read_all(&store, c)).unwrap(), model);
    };
    apply(&mut h, 0, bytes(1, 64 * 1024)); // fills a 64 KiB block exactly
    apply(&mut h, 64 * KIB, bytes(2, 64 * 1024)); // outgrows it: copy into a 4 MiB block
    apply(&mut h, 128 * KIB, bytes(3, 100_000)); // in place, ends mid-unit
    apply(&mut h, 300 * KIB, bytes(4, 5000)); // unaligned committed end: copy-on-write
    apply(&mut h, 512 * KIB, bytes(5, 8192)); // hole of zeros, in place
    apply(&mut h, 1000, bytes(6, 3000)); // unaligned overwrite inside
    apply(&mut h, 0, bytes(7, 10)); // tiny overwrite at the start
    // Partial reads at odd places, each with its crc.
    for (offset, len) in
        [(0u32, 1u32), (4095, 2), (1000, 3000), (500 * KIB, 20 * KIB), (520 * KIB, 100 * KIB)]
    {
        let read = h.run(store.read(c, offset, len)).unwrap();
        let end = (offset as usize + len as usize).min(model.len());
        assert_eq!(read.data(), &model[offset as usize..end]);
        assert_eq!(read.crc, crc32c::crc32c(read.data()));
    }
    let past_end = h.run(store.read(c, model.len() as u32 + 10, 10)).unwrap();
    assert!(past_end.is_empty());
    h.close_and_reopen();
    assert_eq!(h.run(read_all(&h.store(), c)).unwrap(), model);
}

#[test]
fn truncate_shrinks_and_extends_with_zeros() {
    let mut h = harness(3);
    let store = h.store();
    let c = chunk(2, 0);
    let data = bytes(9, 200_000);
    h.run(write(&store, c, 1, MIB, 0, &data)).unwrap();
    let truncate = |version: u64, len: u32| StageRequest {
        chunk: c,
        version: ChunkVersion(version),
        chain_version: ChainVersion(1),
        chunk_size: MIB,
        op: UpdateOp::Truncate { len },
    };
    let UpdateOutcome::Committed(Some(meta)) = h.run(store.update(truncate(2, 123_457))).unwrap()
    else {
        panic!()
    };
    assert_eq!(meta.crc, crc32c::crc32c(&data[..123_457]));
    assert_eq!(h.run(read_all(&store, c)).unwrap(), &data[..123_457]);
    // Extend from an unaligned length: old bytes past the end must not reappear.
    let UpdateOutcome::Committed(Some(meta)) = h.run(store.update(truncate(3, 150_000))).unwrap()
    else {
        panic!()
    };
    let mut expected = data[..123_457].to_vec();
    expected.resize(150_000, 0);
    assert_eq!(meta.crc, crc32c::crc32c(&expected));
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected);
    // Shrink to an aligned length, then extend in place.
    h.run(store.update(truncate(4, 65_536))).unwrap();
    h.run(store.update(truncate(5, 300_000))).unwrap();
    expected.truncate(65_536);
    expected.resize(300_000, 0);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected);
    // Truncate to zero keeps an empty chunk; truncating a missing chunk creates zeros.
    h.run(store.update(truncate(6, 0))).unwrap();
    assert_eq!(h.run(read_all(&store, c)).unwrap(), Vec::<u8>::new());
    assert_eq!(store.metadata(c).unwrap().committed.unwrap().len, 0);
    let other = chunk(2, 1);
    h.run(store.update(StageRequest { chunk: other, ..truncate(1, 5000) })).unwrap();
    assert_eq!(h.run(read_all(&store, other)).unwrap(), vec![0u8; 5000]);
    h.close_and_reopen();
    assert_eq!(h.run(read_all(&h.store(), other)).unwrap(), vec![0u8; 5000]);
}

#[test]
fn extend_grows_with_zeros_and_never_shrinks() {
    let mut h = harness(31);
    let store = h.store();
    let c = chunk(2, 0);
    let data = bytes(4, 100_001);
    h.run(write(&store, c, 1, MIB, 0, &data)).unwrap();
    let extend = |version: u64, len: u32| StageRequest {
        chunk: c,
        version: ChunkVersion(version),
        chain_version: ChainVersion(1),
        chunk_size: MIB,
        op: UpdateOp::Extend { len },
    };
    // Shorter than the chunk: a new version with the same bytes.
    let UpdateOutcome::Committed(Some(meta)) = h.run(store.update(extend(2, 5))).unwrap() else {
        panic!()
    };
    assert_eq!(
        (meta.version, meta.len, meta.crc),
        (ChunkVersion(2), 100_001, crc32c::crc32c(&data))
    );
    assert_eq!(h.run(read_all(&store, c)).unwrap(), data);
    // Longer, from an unaligned length (copy-on-write) ...
    let UpdateOutcome::Committed(Some(meta)) = h.run(store.update(extend(3, 200_000))).unwrap()
    else {
        panic!()
    };
    let mut expected = data.clone();
    expected.resize(200_000, 0);
    assert_eq!((meta.len, meta.crc), (200_000, crc32c::crc32c(&expected)));
    // ... and from an aligned one, as a stage later committed (the chain's path).
    h.run(store.update(StageRequest { op: UpdateOp::Truncate { len: 196_608 }, ..extend(4, 0) }))
        .unwrap();
    expected.truncate(196_608);
    let StageOutcome::Staged(pending) = h.run(store.stage(extend(5, MIB))).unwrap() else {
        panic!()
    };
    assert_eq!(pending.len, MIB);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected, "the committed version until commit");
    h.run(store.commit(c, ChunkVersion(5))).unwrap();
    expected.resize(MIB as usize, 0);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected);
    // Past the chunk size: refused, nothing changed.
    assert!(matches!(
        h.run(store.update(StageRequest { chunk_size: 64 * KIB, ..extend(6, 64 * KIB + 1) })),
        Err(StoreError::InvalidArgument(_))
    ));
    // A missing chunk is created with zeros; everything survives a reopen.
    let other = chunk(2, 1);
    h.run(store.update(StageRequest { chunk: other, ..extend(1, 4097) })).unwrap();
    h.close_and_reopen();
    let store = h.store();
    assert_eq!(h.run(read_all(&store, other)).unwrap(), vec![0u8; 4097]);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected);
}

#[test]
fn remove_range_last_chunk_list_and_no_leak() {
    let mut h = harness(4);
    let store = h.store();
    for index in 0..10 {
        h.run(write(&store, chunk(5, index), 1, 64 * KIB, 0, &bytes(index, 1000 + index as usize)))
            .unwrap();
    }
    h.run(write(&store, chunk(6, 0), 1, 64 * KIB, 0, b"other file")).unwrap();
    let last = store.last_chunk(InodeId(5)).unwrap();
    assert_eq!((last.chunk, last.committed.unwrap().len), (chunk(5, 9), 1009));
    let listed = store.list(chunk(5, 8), 10);
    assert_eq!(
        listed.iter().map(|m| m.chunk).collect::<Vec<_>>(),
        vec![chunk(5, 8), chunk(5, 9), chunk(6, 0)]
    );
    let removed = h.run(store.remove_range(InodeId(5), 4..100)).unwrap();
    assert_eq!((removed.removed, removed.busy.len(), removed.resume_from), (6, 0, None));
    assert_eq!(store.last_chunk(InodeId(5)).unwrap().chunk, chunk(5, 3));
    assert!(matches!(h.run(store.read(chunk(5, 4), 0, 10)), Err(StoreError::ChunkNotFound(_))));
    assert_eq!(store.stats().chunks, 5);
    let used = store.space().used_bytes;
    h.close_and_reopen();
    let store = h.store();
    assert_eq!(store.space().used_bytes, used, "reopen frees nothing referenced and leaks nothing");
    assert_eq!(store.list(chunk(0, 0), 100).len(), 5);
    h.run(store.remove_range(InodeId(5), 0..u64::MAX)).unwrap();
    h.run(store.remove_range(InodeId(6), 0..1)).unwrap();
    assert_eq!(store.space().used_bytes, 0);
    assert!(store.last_chunk(InodeId(5)).is_none());
}

#[test]
fn install_replaces_whatever_is_there() {
    let mut h = harness(5);
    let store = h.store();
    let c = chunk(9, 9);
    h.run(write(&store, c, 10, 64 * KIB, 0, &bytes(1, 5000))).unwrap();
    let data = bytes(2, 3000);
    let install = StageRequest {
        chunk: c,
        version: ChunkVersion(4),
        chain_version: ChainVersion(8),
        chunk_size: 64 * KIB,
        op: UpdateOp::Replace { data: buf(&store, &data), crc: crc32c::crc32c(&data) },
    };
    let UpdateOutcome::Committed(Some(meta)) = h.run(store.install(install)).unwrap() else {
        panic!()
    };
    assert_eq!((meta.version, meta.chain_version), (ChunkVersion(4), ChainVersion(8)));
    assert_eq!(h.run(read_all(&store, c)).unwrap(), data);
}

#[test]
fn wrong_sender_checksum_is_refused_before_any_io() {
    let mut h = harness(6);
    let store = h.store();
    let data = bytes(3, 9000);
    let request = StageRequest {
        chunk: chunk(1, 1),
        version: ChunkVersion(1),
        chain_version: ChainVersion(1),
        chunk_size: 64 * KIB,
        op: UpdateOp::Write { offset: 0, data: buf(&store, &data), crc: crc32c::crc32c(&data) ^ 1 },
    };
    let err = h.run(store.stage(request)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChecksumMismatch);
    assert!(store.metadata(chunk(1, 1)).is_none());
    assert_eq!(store.space().used_bytes, 0);
}

#[test]
fn corrupt_bytes_on_disk_are_never_returned() {
    let mut h = harness(7);
    let store = h.store();
    let c = chunk(3, 0);
    let data = bytes(4, 3 * 4096 + 100);
    h.run(write(&store, c, 1, 64 * KIB, 0, &data)).unwrap();
    let location = store.locate(c).unwrap();
    // Flip a byte in unit 1.
    assert!(h.disk.corrupt(&location.file_name, location.data_offset + 4096 + 17, 0x40));
    let err = h.run(store.read(c, 0, u32::MAX)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChunkCorrupt, "{err}");
    let err = h.run(store.read(c, 4096, 10)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChunkCorrupt);
    // Units that are intact still read.
    assert_eq!(h.run(store.read(c, 8192, 100)).unwrap().data(), &data[8192..8292]);
    // A partial update needs the old bytes: it fails rather than spreading the damage.
    let err = h.run(write(&store, c, 2, 64 * KIB, 10, b"x")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChunkCorrupt);
    // A header checksum flip is caught too (after a reopen empties the cache).
    h.close_and_reopen();
    let store = h.store();
    let location = store.locate(c).unwrap();
    assert!(h.disk.corrupt(&location.file_name, location.header_offset + 2 * 4 + 1, 0x01));
    let err = h.run(store.read(c, 2 * 4096, 1)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChunkCorrupt);
    // A full overwrite heals the chunk.
    h.run(write(&store, c, 3, 64 * KIB, 0, &data)).unwrap();
    assert_eq!(h.run(read_all(&store, c)).unwrap(), data);
}

#[test]
fn a_block_of_another_chunk_fails_verification() {
    // Two chunks with identical bytes: pointing one at the other's block must not verify,
    // because unit checksums are keyed by chunk id and block serial.
    let mut h = harness(8);
    let store = h.store();
    let data = bytes(5, 8192);
    h.run(write(&store, chunk(1, 0), 1, 64 * KIB, 0, &data)).unwrap();
    h.run(write(&store, chunk(1, 1), 1, 64 * KIB, 0, &data)).unwrap();
    let a = store.locate(chunk(1, 0)).unwrap();
    let b = store.locate(chunk(1, 1)).unwrap();
    assert_ne!(a.header_offset, b.header_offset);
    let file = h.disk.read_file(&a.file_name).unwrap();
    // Copy b's header over a's: a's data still matches, but the keys differ.
    for i in 0..4096u64 {
        let xor = file[(a.header_offset + i) as usize] ^ file[(b.header_offset + i) as usize];
        if xor != 0 {
            h.disk.corrupt(&a.file_name, a.header_offset + i, xor);
        }
    }
    h.close_and_reopen();
    let err = h.run(h.store().read(chunk(1, 0), 0, 100)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ChunkCorrupt);
}

#[test]
fn capacity_limit_gives_no_space_and_keeps_data() {
    let config =
        StoreConfig { capacity_bytes: (64 << 20) + (64 << 10) + (4 << 20), ..small_config() };
    let mut h = MemHarness::new(9, MemDiskOptions::default(), config);
    let store = h.store();
    let mut written = Vec::new();
    let mut outcome = Ok(UpdateOutcome::Busy);
    for index in 0..100u64 {
        let data = bytes(index, 900 * 1024);
        outcome = h.run(write(&store, chunk(4, index), 1, MIB, 0, &data));
        if outcome.is_err() {
            break;
        }
        written.push((chunk(4, index), data));
    }
    let err = outcome.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpace, "{err}");
    assert!(written.len() >= 60, "only {} MiB-class chunks fit", written.len());
    let space = store.space();
    assert!(space.reserved_bytes <= space.capacity_bytes);
    for (c, data) in &written {
        assert_eq!(&h.run(read_all(&store, *c)).unwrap(), data);
    }
    // Removing chunks makes room again, also for another size class (punching free blocks).
    let last = written.len() as u64;
    h.run(store.remove_range(InodeId(4), 0..last)).unwrap();
    let big = bytes(77, 40 << 20);
    h.run(write(&store, chunk(8, 0), 1, 64 * MIB, 0, &big)).unwrap();
    assert_eq!(h.run(read_all(&store, chunk(8, 0))).unwrap(), big);
    h.close_and_reopen();
    assert_eq!(h.run(read_all(&h.store(), chunk(8, 0))).unwrap(), big);
}

#[test]
fn full_file_system_gives_no_space() {
    let options = MemDiskOptions { capacity_bytes: Some(2 << 20), ..MemDiskOptions::default() };
    let mut h = MemHarness::new(10, options, small_config());
    let store = h.store();
    let kept = bytes(1, 100_000);
    h.run(write(&store, chunk(1, 0), 1, 128 * KIB, 0, &kept)).unwrap();
    let mut err = None;
    for index in 1..100 {
        if let Err(e) =
            h.run(write(&store, chunk(1, index), 1, 128 * KIB, 0, &bytes(index, 100_000)))
        {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the file system fills up");
    assert_eq!(err.code(), ErrorCode::NoSpace, "{err}");
    assert!(store.failure().is_none(), "a full file system is not a store failure");
    assert_eq!(h.run(read_all(&store, chunk(1, 0))).unwrap(), kept);
}

#[test]
fn sync_failure_stops_updates_but_not_reads() {
    let mut h = harness(11);
    let store = h.store();
    let data = bytes(2, 5000);
    h.run(write(&store, chunk(1, 0), 1, 64 * KIB, 0, &data)).unwrap();
    h.disk.fail_syncs_after(Some(0));
    let err = h.run(write(&store, chunk(1, 1), 1, 64 * KIB, 0, &data)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TargetNotServing, "{err}");
    let err = h.run(write(&store, chunk(1, 2), 1, 64 * KIB, 0, &data)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TargetNotServing);
    assert_eq!(h.run(read_all(&store, chunk(1, 0))).unwrap(), data);
    h.disk.fail_syncs_after(None);
    h.reopen().unwrap();
    assert_eq!(h.run(read_all(&h.store(), chunk(1, 0))).unwrap(), data);
}

#[test]
fn compaction_keeps_every_chunk() {
    let mut h = harness(12);
    let store = h.store();
    let mut expected = std::collections::BTreeMap::new();
    // Enough commits for several automatic compactions (64 KiB threshold = 1024 records).
    for round in 0..6u64 {
        for index in 0..500u64 {
            let data = bytes(round * 1000 + index, 100 + index as usize);
            h.run(write(&store, chunk(1, index), round + 1, 64 * KIB, 0, &data)).unwrap();
            expected.insert(index, data);
        }
        h.run(store.remove_range(InodeId(1), 450 - round * 10..500)).unwrap();
        for index in 450 - round * 10..500 {
            expected.remove(&index);
        }
    }
    assert!(store.stats().compactions >= 2, "{:?}", store.stats());
    h.run(store.compact()).unwrap();
    for (index, data) in &expected {
        assert_eq!(&h.run(read_all(&store, chunk(1, *index))).unwrap(), data);
    }
    let used = store.space().used_bytes;
    h.close_and_reopen();
    let store = h.store();
    assert_eq!(store.stats().chunks as usize, expected.len());
    assert_eq!(store.space().used_bytes, used);
    for (index, data) in &expected {
        assert_eq!(&h.run(read_all(&store, chunk(1, *index))).unwrap(), data);
    }
}

#[test]
fn concurrent_commits_share_log_writes() {
    let options = MemDiskOptions { yield_per_op: true, ..MemDiskOptions::default() };
    let mut h = MemHarness::new(13, options, small_config());
    let store = h.store();
    let writes = (0..64u64).map(|i| {
        let store = store.clone();
        async move { write(&store, chunk(2, i), 1, 64 * KIB, 0, &bytes(i, 3000)).await }
    });
    let results = h.run(futures::future::join_all(writes));
    assert!(results.iter().all(|r| matches!(r, Ok(UpdateOutcome::Committed(_)))));
    let stats = store.stats();
    assert_eq!(stats.commit_records, 64);
    assert!(stats.commit_batches < 64, "group commit batches records: {stats:?}");
    // Batch reads see them all.
    let requests: Vec<ReadRequest> =
        (0..64).map(|i| ReadRequest { chunk: chunk(2, i), offset: 0, len: 3000 }).collect();
    let reads = h.run(store.batch_read(&requests)).unwrap();
    for (i, read) in reads.into_iter().enumerate() {
        assert_eq!(read.unwrap().data(), &bytes(i as u64, 3000)[..]);
    }
}

#[test]
fn busy_and_abort() {
    let options = MemDiskOptions { yield_per_op: true, ..MemDiskOptions::default() };
    let mut h = MemHarness::new(14, options, small_config());
    let store = h.store();
    let c = chunk(1, 0);
    let first = write_request(&store, c, 1, 64 * KIB, 0, &bytes(1, 5000));
    let second = write_request(&store, c, 2, 64 * KIB, 0, &bytes(2, 5000));
    let (a, b) = h.run(futures::future::join(store.stage(first), store.stage(second)));
    assert!(matches!(a.unwrap(), StageOutcome::Staged(_)));
    assert_eq!(b.unwrap(), StageOutcome::Busy, "one update of a chunk at a time");
    assert!(h.run(store.abort(c, ChunkVersion(1))).unwrap());
    assert!(store.metadata(c).is_none());
    assert_eq!(store.space().used_bytes, 0, "an aborted stage frees its block");
    assert_eq!(h.run(store.commit(c, ChunkVersion(1))).unwrap(), CommitOutcome::NotStaged);
}

#[test]
fn cancelled_stage_quarantines_its_block_until_restart() {
    let options = MemDiskOptions { yield_per_op: true, ..MemDiskOptions::default() };
    let mut h = MemHarness::new(15, options, small_config());
    let store = h.store();
    let c = chunk(1, 0);
    let request = write_request(&store, c, 1, 64 * KIB, 0, &bytes(1, 5000));
    // Poll the stage into its data write (growth, then the writes, each yield once), then
    // drop it with the write in flight.
    {
        let mut stage = Box::pin(store.stage(request));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..2 {
            assert!(stage.as_mut().poll(&mut cx).is_pending());
        }
    }
    assert!(store.metadata(c).is_none());
    assert!(store.space().quarantined_bytes > 0);
    // The chunk is usable again at once.
    h.run(write(&store, c, 2, 64 * KIB, 0, &bytes(2, 5000))).unwrap();
    h.close_and_reopen();
    let store = h.store();
    assert_eq!(store.space().quarantined_bytes, 0);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), bytes(2, 5000));
}

use std::future::Future;

#[test]
fn in_flight_reader_of_an_old_version_is_not_overwritten_in_place() {
    // A reader of a long committed version is still reading when the chunk is truncated and
    // then extended: the extension must not write into units that reader covers.
    let options = MemDiskOptions { yield_per_op: true, ..MemDiskOptions::default() };
    let mut h =
        MemHarness::new(16, options, StoreConfig { header_cache_bytes: 0, ..small_config() });
    let store = h.store();
    let c = chunk(1, 0);
    let old = bytes(1, 256 * 1024);
    h.run(write(&store, c, 1, 256 * KIB, 0, &old)).unwrap();
    let before = store.locate(c).unwrap();
    let truncate = |version: u64, len: u32| StageRequest {
        chunk: c,
        version: ChunkVersion(version),
        chain_version: ChainVersion(1),
        chunk_size: 256 * KIB,
        op: UpdateOp::Truncate { len },
    };
    h.disk.delay_next_read(1000);
    let reader = {
        let store = store.clone();
        async move { store.read(c, 0, u32::MAX).await.map(|r| r.data().to_vec()) }
    };
    let writer = {
        let store = store.clone();
        async move {
            store.update(truncate(2, 64 * 1024)).await.unwrap();
            store.update(truncate(3, 200 * 1024)).await.unwrap();
        }
    };
    let (read, ()) = h.run(futures::future::join(reader, writer));
    assert_eq!(read.unwrap(), old, "the reader sees the version it started on, intact");
    assert_ne!(store.locate(c).unwrap(), before, "the extension was copied, not done in place");
    let mut expected = old[..64 * 1024].to_vec();
    expected.resize(200 * 1024, 0);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected);
}

#[test]
fn extension_without_readers_happens_in_place() {
    let mut h = harness(17);
    let store = h.store();
    let c = chunk(1, 0);
    h.run(write(&store, c, 1, 256 * KIB, 0, &bytes(1, 64 * 1024))).unwrap();
    let before = store.locate(c).unwrap();
    // A 64 KiB chunk sits in a 64 KiB block: growing it moves it once, to the chunk size class.
    h.run(write(&store, c, 2, 256 * KIB, 64 * KIB, &bytes(2, 4096))).unwrap();
    let grown = store.locate(c).unwrap();
    assert_ne!(grown, before);
    assert_eq!(grown.data_bytes, 256 * KIB);
    // From then on appends stay in place.
    h.run(write(&store, c, 3, 256 * KIB, 68 * KIB, &bytes(3, 100 * 1024))).unwrap();
    assert_eq!(store.locate(c).unwrap(), grown);
}

#[test]
fn pending_versions_can_be_listed_and_read() {
    let mut h = harness(18);
    let store = h.store();
    let c = chunk(3, 3);
    let committed = bytes(1, 10_000);
    h.run(write(&store, c, 1, 256 * KIB, 0, &committed)).unwrap();
    let appended = bytes(2, 5_000);
    let staged = h.run(store.stage(write_request(&store, c, 2, 256 * KIB, 12_288, &appended)));
    assert!(matches!(staged.unwrap(), StageOutcome::Staged(_)));
    let listed = store.list_staged(chunk(0, 0), 10);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].pending.unwrap().version, ChunkVersion(2));
    let pending = h.run(store.read_pending(c, 0, u32::MAX)).unwrap().unwrap();
    let mut expected = committed.clone();
    expected.resize(12_288, 0);
    expected.extend_from_slice(&appended);
    assert_eq!(pending.data(), &expected[..]);
    assert_eq!(pending.crc, crc32c::crc32c(&expected));
    assert_eq!(h.run(read_all(&store, c)).unwrap(), committed, "readers still see v1");
    assert!(h.run(store.read_pending(chunk(3, 4), 0, 10)).unwrap().is_none());
    h.run(store.commit(c, ChunkVersion(2))).unwrap();
    assert!(store.list_staged(chunk(0, 0), 10).is_empty());
    assert_eq!(h.run(read_all(&store, c)).unwrap(), expected);
}

/// A staged version is durable once `stage` returns: after a power cut the store still holds
/// it, bytes and all, and can commit it (simulator finding 4: a chain head that crashed holding
/// a version its tail had already committed must not come back without it).
#[test]
fn a_staged_version_survives_a_power_cut_and_commits_after_it() {
    let mut h = harness(21);
    let store = h.store();
    let (c, in_place, removed) = (chunk(9, 0), chunk(9, 1), chunk(9, 2));
    let v1 = bytes(1, 8192);
    h.run(write(&store, c, 1, 256 * KIB, 0, &v1)).unwrap();
    h.run(write(&store, in_place, 1, 256 * KIB, 0, &v1)).unwrap();
    h.run(write(&store, removed, 1, 256 * KIB, 0, &v1)).unwrap();
    let v2 = bytes(2, 70_000);
    let request = StageRequest {
        chunk: c,
        version: ChunkVersion(2),
        chain_version: ChainVersion(4),
        chunk_size: 256 * KIB,
        op: UpdateOp::Replace { data: buf(&store, &v2), crc: crc32c::crc32c(&v2) },
    };
    assert!(matches!(h.run(store.stage(request)).unwrap(), StageOutcome::Staged(_)));
    // An aligned append is staged in place, in the committed block.
    let tail = bytes(3, 4096);
    let request = write_request(&store, in_place, 2, 256 * KIB, 8192, &tail);
    assert!(matches!(h.run(store.stage(request)).unwrap(), StageOutcome::Staged(_)));
    let request = StageRequest {
        chunk: removed,
        version: ChunkVersion(2),
        chain_version: ChainVersion(4),
        chunk_size: 256 * KIB,
        op: UpdateOp::Remove,
    };
    assert!(matches!(h.run(store.stage(request)).unwrap(), StageOutcome::Staged(_)));
    let used = store.space().used_bytes;
    h.disk.crash();
    h.reopen().unwrap();
    let store = h.store();
    assert_eq!(store.space().used_bytes, used, "staged blocks are neither freed nor leaked");
    let meta = store.metadata(c).unwrap();
    assert_eq!(meta.committed.unwrap().version, ChunkVersion(1));
    let pending = meta.pending.expect("the staged version survived");
    assert_eq!((pending.version, pending.chain_version), (ChunkVersion(2), ChainVersion(4)));
    assert_eq!((pending.len, pending.crc), (70_000, crc32c::crc32c(&v2)));
    let read = h.run(store.read_pending(c, 0, 70_000)).unwrap().expect("staged bytes");
    assert_eq!(read.data(), &v2[..]);
    assert_eq!(h.run(read_all(&store, c)).unwrap(), v1, "readers still see the committed one");
    let appended = store.metadata(in_place).unwrap().pending.expect("the in-place stage survived");
    assert_eq!(appended.len, 8192 + 4096);
    assert!(store.metadata(removed).unwrap().pending.expect("the staged removal survived").removal);
    // Each commits after the restart as it would have before.
    h.run(store.commit(c, ChunkVersion(2))).unwrap();
    h.run(store.commit(in_place, ChunkVersion(2))).unwrap();
    h.run(store.commit(removed, ChunkVersion(2))).unwrap();
    assert_eq!(h.run(read_all(&store, c)).unwrap(), v2);
    assert_eq!(h.run(read_all(&store, in_place)).unwrap(), [&v1[..], &tail[..]].concat());
    assert!(matches!(h.run(read_all(&store, removed)), Err(StoreError::ChunkNotFound(_))));
    // Aborted and replaced staged versions do not come back.
    let request = write_request(&store, c, 3, 256 * KIB, 0, &bytes(4, 100));
    h.run(store.stage(request)).unwrap();
    assert!(h.run(store.abort(c, ChunkVersion(3))).unwrap());
    let request = write_request(&store, in_place, 3, 256 * KIB, 0, &bytes(5, 100));
    h.run(store.stage(request)).unwrap();
    h.run(write(&store, in_place, 4, 256 * KIB, 0, &bytes(6, 100))).unwrap();
    h.disk.crash();
    h.reopen().unwrap();
    let store = h.store();
    assert!(store.metadata(c).unwrap().pending.is_none(), "an abort is durable");
    assert!(store.metadata(in_place).unwrap().pending.is_none(), "a replaced stage is gone");
    assert_eq!(store.metadata(in_place).unwrap().committed.unwrap().version, ChunkVersion(4));
}

/// A committed removal leaves a durable tombstone: after a power cut the chunk is still absent,
/// its version is kept (versions never go back), and its block is free. A removal by range
/// erases the tombstone too.
#[test]
fn a_removal_survives_a_power_cut_as_a_tombstone() {
    let mut h = harness(22);
    let store = h.store();
    let (c, other) = (chunk(11, 0), chunk(11, 1));
    h.run(write(&store, c, 5, 256 * KIB, 0, &bytes(1, 100_000))).unwrap();
    h.run(write(&store, other, 1, 64 * KIB, 0, &bytes(2, 10))).unwrap();
    let used_other = {
        let location = store.locate(other).unwrap();
        SizeClass::for_len(location.data_bytes).unwrap().stride_bytes()
    };
    let request = StageRequest {
        chunk: c,
        version: ChunkVersion(6),
        chain_version: ChainVersion(2),
        chunk_size: 256 * KIB,
        op: UpdateOp::Remove,
    };
    assert_eq!(h.run(store.update(request)).unwrap(), UpdateOutcome::Committed(None));
    h.disk.crash();
    h.reopen().unwrap();
    let store = h.store();
    assert!(matches!(h.run(read_all(&store, c)), Err(StoreError::ChunkNotFound(_))));
    let meta = store.metadata(c).expect("the tombstone is kept");
    assert!(meta.committed.is_none() && meta.pending.is_none());
    let tombstone = meta.tombstone.expect("tombstone");
    assert_eq!((tombstone.version, tombstone.chain_version), (ChunkVersion(6), ChainVersion(2)));
    assert_eq!(store.space().used_bytes, used_other, "the removed chunk's block is free");
    assert!(store.list(chunk(11, 0), 10).iter().any(|m| m.chunk == c), "resync lists it");
    assert_eq!(store.last_chunk(InodeId(11)).unwrap().chunk, other, "not a file's last chunk");
    // Versions never go back: an older write is refused, a newer one recreates the chunk.
    let stale = h.run(write(&store, c, 6, 256 * KIB, 0, &bytes(3, 10))).unwrap();
    assert_eq!(stale, UpdateOutcome::AlreadyCommitted { committed: ChunkVersion(6) });
    h.run(write(&store, c, 7, 256 * KIB, 0, &bytes(3, 10))).unwrap();
    assert!(store.metadata(c).unwrap().tombstone.is_none());
    // Remove again, compact (the checkpoint carries the tombstone), crash, reopen.
    let request = StageRequest {
        chunk: c,
        version: ChunkVersion(8),
        chain_version: ChainVersion(2),
        chunk_size: 256 * KIB,
        op: UpdateOp::Remove,
    };
    h.run(store.update(request)).unwrap();
    h.run(store.compact()).unwrap();
    h.disk.crash();
    h.reopen().unwrap();
    let store = h.store();
    assert_eq!(store.metadata(c).unwrap().tombstone.unwrap().version, ChunkVersion(8));
    // A removal by range (a deleted file) erases everything, durably.
    h.run(store.remove_range(InodeId(11), 0..2)).unwrap();
    h.disk.crash();
    h.reopen().unwrap();
    let store = h.store();
    assert!(store.metadata(c).is_none() && store.metadata(other).is_none());
    assert_eq!(store.space().used_bytes, 0);
}
