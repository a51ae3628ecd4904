//! File length (reports, truncate versions, settling from storage), write sessions and the
//! collector, against [`super::InMemoryChunkStorageForTests`].

use super::{Backend, Env, errno, ok, on_both_backends, root, touch};
use crate::perm::User;
use crate::store::{LengthReport, MetaOptions, OpenFlags, SetAttr};
use r3fs_types::error::errno::*;
use r3fs_types::{ChainSelection, ChainTableId, ChainTableVersion, ClientId, InodeId, Layout};

const R: InodeId = InodeId::ROOT;
const MIB: u64 = 1 << 20;

on_both_backends!(
    reports_never_move_length_backwards_past_a_truncate,
    fsync_and_close_settle_length_from_storage,
    truncate_cuts_storage_chunks,
    without_storage_shrinking_is_refused,
    collection_waits_for_write_sessions,
    expired_sessions_are_ended_and_settled,
    without_storage_files_wait_in_the_queue,
    failed_chunk_removal_stays_queued_and_is_retried,
);

fn write_flags() -> OpenFlags {
    OpenFlags { read: true, write: true, truncate: false }
}

/// A directory whose files have 1 MiB chunks striped over 4 chains.
async fn striped_dir(env: &Env, path: &str) {
    ok(env.store.mkdir(&root(), R, path, 0o777).await);
    let layout = Layout {
        chain_table_id: ChainTableId(1),
        chain_table_version: ChainTableVersion(1),
        chunk_size: MIB as u32,
        stripe_size: 4,
        chains: ChainSelection::ShuffleV1 { seed: 0 },
    };
    ok(env.store.set_layout(&root(), R, path, &layout).await);
}

fn report(length: u64, truncate_version: u64) -> Option<LengthReport> {
    Some(LengthReport { length, truncate_version })
}

fn version_of(inode: &crate::schema::Inode) -> u64 {
    match inode.data {
        crate::schema::InodeData::File { truncate_version, .. } => truncate_version,
        _ => panic!("not a file"),
    }
}

async fn reports_never_move_length_backwards_past_a_truncate(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let opened = ok(env
        .store
        .create(
            &user,
            R,
            "f",
            &super::CreateArgs { flags: write_flags(), ..super::create_args(0o644) },
        )
        .await);
    let (id, session) = (opened.inode.id, opened.session);
    assert!(session.is_some());
    let first = ok(env.store.report_length(&user, id, session, report(100, 0)).await);
    assert!(first.adopted && first.session_live);
    assert_eq!(first.inode.size(), 100);
    let lower = ok(env.store.report_length(&user, id, session, report(50, 0)).await);
    assert!(!lower.adopted);
    assert_eq!(lower.inode.size(), 100, "a lower report does not shrink the file");
    let truncated = ok(env.store.truncate(&user, id, 10, None).await);
    assert_eq!((truncated.size(), version_of(&truncated)), (10, 1));
    let stale = ok(env.store.report_length(&user, id, session, report(100, 0)).await);
    assert!(!stale.adopted, "a report made before the truncate is ignored");
    assert_eq!(stale.inode.size(), 10);
    let fresh = ok(env.store.report_length(&user, id, session, report(30, 1)).await);
    assert!(fresh.adopted);
    assert_eq!(fresh.inode.size(), 30);
    // Reports renew the session and touch mtime.
    env.clock.advance_ms(1000);
    let renewed = ok(env.store.report_length(&user, id, session, None).await);
    assert!(renewed.session_live);
    let sessions = ok(env.store.sessions(id).await);
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].renewed_ns > sessions[0].opened_ns);
    let touched = ok(env.store.report_length(&user, id, session, report(30, 1)).await);
    assert!(touched.inode.attr.mtime_ns > fresh.inode.attr.mtime_ns);
    // Without a session, reporting needs write permission.
    let other = User::new(5, 5, vec![]);
    assert_eq!(errno(env.store.report_length(&other, id, None, report(40, 1)).await), EACCES);
    assert_eq!(
        errno(env.store.report_length(&other, id, Some(12345), report(40, 1)).await),
        EACCES
    );
    assert!(ok(env.store.report_length(&other, id, session, report(40, 1)).await).adopted);
    // Closing an unknown session without write permission: a no-op outcome, not an error.
    let stale_close = ok(env.store.close(&other, id, 12345, report(1 << 30, 1)).await);
    assert!(!stale_close.session_live && !stale_close.adopted);
    assert_eq!(stale_close.inode.size(), 40);
    assert_eq!(errno(env.store.report_length(&user, R, None, None).await), EINVAL);
    env.assert_consistent().await;
}

async fn fsync_and_close_settle_length_from_storage(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    striped_dir(&env, "d").await;
    let opened = ok(env.store.open(&user, R, "d", OpenFlags::default(), ClientId(1)).await);
    assert!(opened.session.is_none(), "directories get no session");
    let file = ok(env
        .store
        .create(
            &user,
            R,
            "d/f",
            &super::CreateArgs { flags: write_flags(), ..super::create_args(0o644) },
        )
        .await);
    let (id, session) = (file.inode.id, file.session.expect("write session"));
    let layout = file.inode.layout().cloned().expect("layout");
    // The writer wrote 5.5 MiB but reported nothing: fsync finds it on storage.
    env.storage.write(id, &layout, 0, 5 * MIB + MIB / 2);
    let synced = ok(env.store.fsync(&user, id, Some(session), None).await);
    assert_eq!(synced.inode.size(), 5 * MIB + MIB / 2);
    assert!(synced.adopted);
    // More writes, then close: the exact length is adopted and the session ends.
    env.storage.write(id, &layout, 9 * MIB, 123);
    let closed = ok(env.store.close(&user, id, session, report(6 * MIB, 0)).await);
    assert!(closed.session_live);
    assert_eq!(closed.inode.size(), 9 * MIB + 123);
    assert!(ok(env.store.sessions(id).await).is_empty());
    // An extending truncate makes a sparse file that storage cannot see; settling never
    // shrinks it.
    ok(env.store.truncate(&user, id, 20 * MIB, None).await);
    let settled = ok(env.store.settle_length(id).await).expect("a file");
    assert_eq!(settled.size(), 20 * MIB);
    // Closing an unknown session is data, not an error.
    let again = ok(env.store.close(&user, id, session, None).await);
    assert!(!again.session_live);
    env.assert_consistent().await;
}

async fn truncate_cuts_storage_chunks(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    striped_dir(&env, "d").await;
    let file = ok(touch(&env, &user, "d/f").await).inode;
    let layout = file.layout().cloned().expect("layout");
    env.storage.write(file.id, &layout, 0, 10 * MIB);
    ok(env.store.report_length(&user, file.id, None, report(10 * MIB, 0)).await);
    let cut = ok(env.store.truncate(&user, file.id, 2 * MIB + MIB / 2, None).await);
    assert_eq!(cut.size(), 2 * MIB + MIB / 2);
    assert_eq!(env.storage.chunk_count(file.id), 3, "chunks 0, 1 and half of 2 remain");
    let settled = ok(env.store.fsync(&user, file.id, None, None).await);
    assert_eq!(settled.inode.size(), 2 * MIB + MIB / 2, "storage agrees after the cut");
    ok(env.store.truncate(&user, file.id, 2 * MIB, None).await);
    assert_eq!(env.storage.chunk_count(file.id), 2);
    // O_TRUNC through open and through create.
    let trunc = OpenFlags { write: true, truncate: true, read: false };
    let opened = ok(env.store.open(&user, R, "d/f", trunc, ClientId(1)).await);
    assert_eq!((opened.inode.size(), env.storage.chunk_count(file.id)), (0, 0));
    assert_eq!(errno(env.store.truncate(&user, file.id, u64::MAX, None).await), EFBIG);
    env.assert_consistent().await;
}

async fn without_storage_shrinking_is_refused(backend: Backend) {
    let env = Env::with(backend, false, MetaOptions::default()).await;
    let user = root();
    let file = ok(touch(&env, &user, "f").await).inode;
    let trunc = OpenFlags { write: true, truncate: true, read: false };
    ok(env.store.open(&user, R, "f", trunc, ClientId(1)).await);
    ok(env
        .store
        .setattr(&user, R, "f", true, &SetAttr { length: Some(100), ..Default::default() })
        .await);
    // Two truncates so far (O_TRUNC, then the extension): version 2.
    assert!(ok(env.store.report_length(&user, file.id, None, report(200, 2)).await).adopted);
    assert_eq!(errno(env.store.truncate(&user, file.id, 50, None).await), EOPNOTSUPP);
    let sessions_before = ok(env.store.sessions(file.id).await).len();
    assert_eq!(errno(env.store.open(&user, R, "f", trunc, ClientId(1)).await), EOPNOTSUPP);
    let sessions_after = ok(env.store.sessions(file.id).await).len();
    assert_eq!(sessions_after, sessions_before, "the failed open left no session behind");
    assert_eq!(ok(env.store.stat(&user, R, "f", true).await).size(), 200);
    // Without storage, fsync adopts reports only.
    let synced = ok(env.store.fsync(&user, file.id, None, report(300, 2)).await);
    assert_eq!(synced.inode.size(), 300);
    env.assert_consistent().await;
}

async fn collection_waits_for_write_sessions(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let opened = ok(env
        .store
        .create(
            &user,
            R,
            "f",
            &super::CreateArgs { flags: write_flags(), ..super::create_args(0o644) },
        )
        .await);
    let (id, session) = (opened.inode.id, opened.session.expect("session"));
    let layout = opened.inode.layout().cloned().expect("layout");
    env.storage.write(id, &layout, 0, 9 * MIB);
    ok(env.store.unlink(&user, R, "f").await);
    let pass = ok(env.store.gc_pass().await);
    assert_eq!((pass.files_waiting_for_sessions, pass.files_removed), (1, 0));
    // The open file stays usable: reports and fsync still work on it.
    assert!(ok(env.store.report_length(&user, id, Some(session), report(MIB, 0)).await).adopted);
    assert_eq!(errno(env.store.open(&user, id, "", write_flags(), ClientId(2)).await), ENOENT);
    assert_eq!(errno(env.store.link(&user, id, "", R, "again").await), ENOENT);
    env.assert_consistent().await;
    ok(env.store.close(&user, id, session, None).await);
    let pass = ok(env.store.gc_pass().await);
    assert_eq!(pass.files_removed, 1);
    assert!(pass.chunks_removed >= 3);
    assert_eq!(env.storage.chunk_count(id), 0);
    assert_eq!(ok(env.store.batch_stat(&[id]).await), vec![None]);
    env.assert_consistent().await;
}

async fn expired_sessions_are_ended_and_settled(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let timeout_ms = env.store.options().session_timeout_ms as i64;
    let opened = ok(env
        .store
        .create(
            &user,
            R,
            "f",
            &super::CreateArgs { flags: write_flags(), ..super::create_args(0o644) },
        )
        .await);
    let (id, session) = (opened.inode.id, opened.session.expect("session"));
    let layout = opened.inode.layout().cloned().expect("layout");
    env.storage.write(id, &layout, 0, 3 * MIB + 7);
    // Not yet expired.
    env.clock.advance_ms(timeout_ms / 2);
    assert_eq!(ok(env.store.gc_pass().await).sessions_expired, 0);
    // A renewal pushes expiry out.
    ok(env.store.report_length(&user, id, Some(session), None).await);
    env.clock.advance_ms(timeout_ms / 2 + 1);
    assert_eq!(ok(env.store.gc_pass().await).sessions_expired, 0);
    env.clock.advance_ms(timeout_ms);
    let pass = ok(env.store.gc_pass().await);
    assert_eq!(pass.sessions_expired, 1);
    assert!(ok(env.store.sessions(id).await).is_empty());
    assert_eq!(
        ok(env.store.stat(&user, R, "f", true).await).size(),
        3 * MIB + 7,
        "settled from storage"
    );
    // The writer comes back: its session is gone, which it learns as data.
    let late = ok(env.store.report_length(&user, id, Some(session), None).await);
    assert!(!late.session_live);
    // An unlinked file whose writer vanished is collected once the session expires.
    let second = ok(env
        .store
        .create(
            &user,
            R,
            "g",
            &super::CreateArgs { flags: write_flags(), ..super::create_args(0o644) },
        )
        .await);
    ok(env.store.unlink(&user, R, "g").await);
    assert_eq!(ok(env.store.gc_pass().await).files_waiting_for_sessions, 1);
    env.clock.advance_ms(timeout_ms + 1);
    env.drain_gc().await;
    assert_eq!(ok(env.store.batch_stat(&[second.inode.id]).await), vec![None]);
    env.assert_consistent().await;
}

async fn without_storage_files_wait_in_the_queue(backend: Backend) {
    let env = Env::with(backend, false, MetaOptions::default()).await;
    let user = root();
    let file = ok(touch(&env, &user, "f").await).inode;
    ok(env.store.unlink(&user, R, "f").await);
    let pass = ok(env.store.gc_pass().await);
    assert_eq!((pass.files_waiting_for_storage, pass.files_removed), (1, 0));
    assert!(ok(env.store.batch_stat(&[file.id]).await)[0].is_some(), "kept until chunks can go");
    env.assert_consistent().await;
}

async fn failed_chunk_removal_stays_queued_and_is_retried(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let mut files = Vec::new();
    for name in ["f", "g"] {
        let file = ok(touch(&env, &user, name).await).inode;
        let crate::schema::InodeData::File { layout, .. } = &file.data else { panic!("a file") };
        env.storage.write(file.id, layout, 0, 3 * u64::from(layout.chunk_size));
        ok(env.store.unlink(&user, R, name).await);
        files.push(file.id);
    }
    // The first removal fails as unreachable storage does: that file stays queued, and the
    // other is left for the next pass rather than waiting out the same failure.
    env.storage.removals_to_fail.store(1, std::sync::atomic::Ordering::Relaxed);
    let pass = ok(env.store.gc_pass().await);
    assert_eq!(
        (pass.queue_entries_seen, pass.files_removed, pass.files_waiting_for_storage),
        (2, 0, 1),
        "{pass:?}"
    );
    for &id in &files {
        assert!(ok(env.store.batch_stat(&[id]).await)[0].is_some(), "kept while chunks stay");
        assert_eq!(env.storage.chunk_count(id), 3);
    }
    env.assert_consistent().await;
    let pass = ok(env.store.gc_pass().await);
    assert_eq!((pass.files_removed, pass.chunks_removed), (2, 6), "{pass:?}");
    for &id in &files {
        assert_eq!(env.storage.chunk_count(id), 0);
        assert!(ok(env.store.batch_stat(&[id]).await)[0].is_none());
    }
    env.assert_consistent().await;
}
