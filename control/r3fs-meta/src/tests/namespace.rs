//! Namespace operations, one test function per operation, each run on both backends.

use super::{Backend, Env, code, create_args, errno, ok, on_both_backends, root, touch};
use crate::schema::{InodeData, InodeKind};
use crate::store::{CreateArgs, MetaOptions, MetaStore, OpenFlags, RemoveKind};
use r3fs_types::error::errno::*;
use r3fs_types::{ChainSelection, ErrorCode, InodeId};

const R: InodeId = InodeId::ROOT;

on_both_backends!(
    format_is_idempotent,
    create_lookup_stat_and_batch_stat,
    create_exclusive_and_not,
    mkdir_and_mkdirs,
    symlink_readlink_and_resolution,
    hard_links,
    unlink_and_rmdir,
    rename_cases,
    readdir_pages_are_stable,
    real_path_follows_renames,
    layouts_are_inherited_and_settable,
    names_and_limits,
    statfs_counts_inodes,
    remove_tree_detaches_and_collects,
);

async fn format_is_idempotent(backend: Backend) {
    let env = Env::new(backend).await;
    let root_before = ok(env.store.stat(&root(), R, "", false).await);
    ok(env.store.mkdir(&root(), R, "d", 0o755).await);
    // A second store over the same KV finds the format and the tree.
    let again = ok(MetaStore::new(
        env.kv.clone(),
        MetaOptions::default(),
        super::test_retry(),
        Default::default(),
    )
    .await);
    assert_eq!(again.format(), env.store.format());
    assert_eq!(ok(again.stat(&root(), R, "", false).await), root_before);
    assert!(ok(again.stat(&root(), R, "/d", false).await).is_dir());
    assert_eq!(root_before.st_mode(), 0o040755);
    env.assert_consistent().await;
}

async fn create_lookup_stat_and_batch_stat(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let dir = ok(env.store.mkdir(&user, R, "dir", 0o755).await);
    let file = ok(touch(&env, &user, "dir/f").await);
    assert!(file.created && file.session.is_none());
    assert_eq!(file.inode.kind(), InodeKind::File);
    assert_eq!(file.inode.st_mode(), 0o100644);
    assert_eq!(file.inode.attr.nlink, 1);
    assert_eq!(file.inode.size(), 0);
    assert_eq!(ok(env.store.lookup(&user, dir.id, "f").await), file.inode);
    assert_eq!(ok(env.store.lookup(&user, dir.id, ".").await).id, dir.id);
    assert_eq!(ok(env.store.lookup(&user, dir.id, "..").await).id, R);
    assert_eq!(errno(env.store.lookup(&user, dir.id, "missing").await), ENOENT);
    assert_eq!(errno(env.store.lookup(&user, file.inode.id, "x").await), ENOTDIR);
    // stat by path (absolute, relative, with . and ..), and by inode (empty path).
    assert_eq!(ok(env.store.stat(&user, R, "/dir/f", true).await), file.inode);
    assert_eq!(ok(env.store.stat(&user, dir.id, "./f", true).await), file.inode);
    assert_eq!(ok(env.store.stat(&user, dir.id, "../dir//f", true).await), file.inode);
    assert_eq!(ok(env.store.stat(&user, file.inode.id, "", true).await), file.inode);
    assert_eq!(errno(env.store.stat(&user, R, "dir/f/", true).await), ENOTDIR);
    assert_eq!(errno(env.store.stat(&user, R, "dir/f/x", true).await), ENOTDIR);
    let stats = ok(env.store.batch_stat(&[file.inode.id, InodeId(999_999), dir.id]).await);
    assert_eq!(stats, vec![Some(file.inode.clone()), None, Some(dir.clone())]);
    let limit = env.store.options().limits.batch_stat_max;
    assert_eq!(errno(env.store.batch_stat(&vec![R; limit + 1]).await), EINVAL);
    env.assert_consistent().await;
}

async fn create_exclusive_and_not(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let first = ok(touch(&env, &user, "f").await);
    assert_eq!(errno(touch(&env, &user, "f").await), EEXIST);
    let open = CreateArgs {
        exclusive: false,
        flags: OpenFlags { read: true, write: true, truncate: false },
        ..create_args(0o600)
    };
    let again = ok(env.store.create(&user, R, "f", &open).await);
    assert!(!again.created);
    assert_eq!(again.inode.id, first.inode.id);
    assert!(again.session.is_some(), "opened for writing: a session");
    ok(env.store.mkdir(&user, R, "d", 0o755).await);
    assert_eq!(errno(env.store.create(&user, R, "d", &open).await), EISDIR);
    let read_only =
        CreateArgs { flags: OpenFlags { read: true, ..Default::default() }, ..open.clone() };
    assert_eq!(errno(env.store.create(&user, R, "d", &read_only).await), EISDIR);
    assert_eq!(errno(env.store.create(&user, R, "d/.", &open).await), EISDIR);
    assert_eq!(errno(env.store.create(&user, R, "new/", &open).await), EISDIR);
    assert_eq!(errno(env.store.create(&user, R, "nodir/f", &open).await), ENOENT);
    assert_eq!(errno(env.store.create(&user, R, "f/g", &open).await), ENOTDIR);
    // Non-exclusive create through a symlink opens its target.
    ok(env.store.symlink(&user, R, "link", "f").await);
    let via_link = ok(env.store.create(&user, R, "link", &open).await);
    assert_eq!(via_link.inode.id, first.inode.id);
    assert_eq!(errno(env.store.create(&user, R, "link", &create_args(0o644)).await), EEXIST);
    env.assert_consistent().await;
}

async fn mkdir_and_mkdirs(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let a = ok(env.store.mkdir(&user, R, "a", 0o1777).await);
    assert_eq!(a.st_mode(), 0o041777);
    assert_eq!(a.dir_parent(), Some(R));
    assert_eq!(errno(env.store.mkdir(&user, R, "a", 0o755).await), EEXIST);
    assert_eq!(errno(env.store.mkdir(&user, R, "/", 0o755).await), EEXIST);
    assert_eq!(errno(env.store.mkdir(&user, R, "a/..", 0o755).await), EEXIST);
    assert_eq!(errno(env.store.mkdir(&user, R, "x/y", 0o755).await), ENOENT);
    let b = ok(env.store.mkdir(&user, R, "a/b/", 0o755).await);
    assert_eq!(b.dir_parent(), Some(a.id));
    // mkdirs: creates what is missing, walks what exists (including through symlinks).
    let deep = ok(env.store.mkdirs(&user, R, "a/b/c/d/e", 0o700).await);
    assert_eq!(ok(env.store.stat(&user, R, "/a/b/c/d/e", true).await), deep);
    assert_eq!(ok(env.store.mkdirs(&user, R, "a/b/c/d/e", 0o700).await), deep);
    ok(env.store.symlink(&user, R, "to_c", "a/b/c").await);
    let via = ok(env.store.mkdirs(&user, R, "to_c/d/f/g", 0o755).await);
    assert_eq!(ok(env.store.stat(&user, R, "a/b/c/d/f/g", true).await), via);
    ok(touch(&env, &user, "a/file").await);
    assert_eq!(errno(env.store.mkdirs(&user, R, "a/file/x", 0o755).await), ENOTDIR);
    assert_eq!(errno(env.store.mkdirs(&user, R, "a/file", 0o755).await), ENOTDIR);
    ok(env.store.symlink(&user, R, "dangling", "nowhere").await);
    assert_eq!(errno(env.store.mkdirs(&user, R, "dangling/x", 0o755).await), EEXIST);
    // setgid directories pass their group and the bit on.
    let sg = ok(env.store.mkdir(&user, R, "sg", 0o2775).await);
    ok(env
        .store
        .setattr(
            &user,
            sg.id,
            "",
            false,
            &crate::store::SetAttr { gid: Some(50), ..Default::default() },
        )
        .await);
    let inner = ok(env.store.mkdir(&user, sg.id, "inner", 0o755).await);
    assert_eq!((inner.attr.gid, inner.attr.mode & 0o2000), (50, 0o2000));
    let inner_file = ok(touch(&env, &user, "sg/f").await);
    assert_eq!(inner_file.inode.attr.gid, 50);
    env.assert_consistent().await;
}

async fn symlink_readlink_and_resolution(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    ok(env.store.mkdirs(&user, R, "a/b", 0o755).await);
    let file = ok(touch(&env, &user, "a/b/f").await).inode;
    let rel = ok(env.store.symlink(&user, R, "a/rel", "b/f").await);
    assert_eq!(rel.kind(), InodeKind::Symlink);
    assert_eq!(rel.size(), 3);
    assert_eq!(rel.st_mode(), 0o120777);
    ok(env.store.symlink(&user, R, "abs", "/a/b").await);
    assert_eq!(ok(env.store.readlink(&user, R, "a/rel").await), "b/f");
    assert_eq!(ok(env.store.stat(&user, R, "a/rel", true).await), file);
    assert_eq!(ok(env.store.stat(&user, R, "a/rel", false).await), rel);
    // Intermediate symlinks are always followed, absolute targets restart at the root.
    assert_eq!(ok(env.store.stat(&user, R, "abs/f", false).await), file);
    assert!(ok(env.store.stat(&user, R, "abs/", false).await).is_dir());
    assert_eq!(errno(env.store.readlink(&user, R, "a/b/f").await), EINVAL);
    ok(env.store.symlink(&user, R, "dangling", "no/such").await);
    assert_eq!(errno(env.store.stat(&user, R, "dangling", true).await), ENOENT);
    assert!(ok(env.store.stat(&user, R, "dangling", false).await).kind() == InodeKind::Symlink);
    // Loops hit the follow limit.
    ok(env.store.symlink(&user, R, "loop1", "loop2").await);
    ok(env.store.symlink(&user, R, "loop2", "loop1").await);
    assert_eq!(errno(env.store.stat(&user, R, "loop1", true).await), ELOOP);
    assert_eq!(errno(env.store.stat(&user, R, "loop1/x", true).await), ELOOP);
    ok(env.store.symlink(&user, R, "self", "self/x").await);
    assert_eq!(errno(env.store.stat(&user, R, "self", true).await), ELOOP);
    assert_eq!(errno(env.store.symlink(&user, R, "empty", "").await), ENOENT);
    assert_eq!(errno(env.store.symlink(&user, R, "abs", "x").await), EEXIST);
    let long = "x".repeat(env.store.options().limits.path_length_max + 1);
    assert_eq!(errno(env.store.symlink(&user, R, "long", &long).await), ENAMETOOLONG);
    env.assert_consistent().await;
}

async fn hard_links(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    ok(env.store.mkdir(&user, R, "d", 0o755).await);
    let file = ok(touch(&env, &user, "f").await).inode;
    let linked = ok(env.store.link(&user, R, "f", R, "d/g").await);
    assert_eq!((linked.id, linked.attr.nlink), (file.id, 2));
    assert_eq!(ok(env.store.stat(&user, R, "d/g", true).await).attr.nlink, 2);
    assert_eq!(errno(env.store.link(&user, R, "f", R, "d/g").await), EEXIST);
    assert_eq!(
        errno(env.store.link(&user, R, "d", R, "d2").await),
        EACCES,
        "no links to directories"
    );
    assert_eq!(errno(env.store.link(&user, R, "missing", R, "x").await), ENOENT);
    assert_eq!(errno(env.store.link(&user, R, "f", R, "nodir/x").await), ENOENT);
    // A symlink is linked itself, not followed.
    let sym = ok(env.store.symlink(&user, R, "s", "f").await);
    assert_eq!(ok(env.store.link(&user, R, "s", R, "s2").await).id, sym.id);
    env.assert_consistent().await;
    ok(env.store.unlink(&user, R, "f").await);
    let left = ok(env.store.stat(&user, R, "d/g", true).await);
    assert_eq!((left.id, left.attr.nlink), (file.id, 1));
    assert_eq!(ok(env.store.real_path(file.id).await), "/d/g");
    // The link limit.
    let small = MetaOptions {
        limits: crate::names::Limits { hard_link_max: 3, ..Default::default() },
        ..Default::default()
    };
    let limited = Env::with(backend, true, small).await;
    ok(touch(&limited, &user, "f").await);
    ok(limited.store.link(&user, R, "f", R, "f2").await);
    ok(limited.store.link(&user, R, "f", R, "f3").await);
    assert_eq!(errno(limited.store.link(&user, R, "f", R, "f4").await), EMLINK);
    env.assert_consistent().await;
    limited.assert_consistent().await;
}

async fn unlink_and_rmdir(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let d = ok(env.store.mkdir(&user, R, "d", 0o755).await);
    let f = ok(touch(&env, &user, "d/f").await).inode;
    ok(env.store.symlink(&user, R, "d/s", "f").await);
    assert_eq!(errno(env.store.unlink(&user, R, "d").await), EISDIR);
    assert_eq!(errno(env.store.rmdir(&user, R, "d").await), ENOTEMPTY);
    assert_eq!(errno(env.store.rmdir(&user, R, "d/f").await), ENOTDIR);
    assert_eq!(errno(env.store.rmdir(&user, R, "d/.").await), EINVAL);
    assert_eq!(errno(env.store.rmdir(&user, R, "d/..").await), ENOTEMPTY);
    assert_eq!(errno(env.store.rmdir(&user, R, "/").await), EBUSY);
    assert_eq!(errno(env.store.unlink(&user, R, "/").await), EISDIR);
    assert_eq!(errno(env.store.unlink(&user, R, "d/missing").await), ENOENT);
    assert_eq!(errno(env.store.unlink(&user, R, "d/f/").await), ENOTDIR);
    ok(env.store.unlink(&user, R, "d/s").await);
    assert_eq!(errno(env.store.stat(&user, R, "d/s", false).await), ENOENT);
    ok(env.store.unlink(&user, R, "d/f").await);
    // The last link of a file: queued for collection in the same transaction.
    let gone = ok(env.store.batch_stat(&[f.id]).await);
    assert_eq!(gone[0].as_ref().map(|i| i.attr.nlink), Some(0));
    let report = ok(crate::fsck::fsck(&*env.kv).await);
    assert_eq!(report.gc_entries, 1);
    env.assert_consistent().await;
    ok(env.store.rmdir(&user, R, "d").await);
    assert_eq!(ok(env.store.batch_stat(&[d.id]).await), vec![None]);
    assert_eq!(errno(env.store.rmdir(&user, R, "d").await), ENOENT);
    // Creating inside a removed directory (by handle) fails.
    assert_eq!(errno(env.store.create(&user, d.id, "x", &create_args(0o644)).await), ENOENT);
    env.drain_gc().await;
    assert_eq!(ok(env.store.batch_stat(&[f.id]).await), vec![None]);
    env.assert_consistent().await;
}

async fn rename_cases(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let store = &env.store;
    ok(store.mkdirs(&user, R, "a/sub", 0o755).await);
    let b = ok(store.mkdir(&user, R, "b", 0o755).await);
    let f = ok(touch(&env, &user, "a/f").await).inode;
    // Within a directory, then across directories.
    ok(store.rename(&user, R, "a/f", R, "a/g", false).await);
    assert_eq!(ok(store.stat(&user, R, "a/g", true).await).id, f.id);
    assert_eq!(errno(store.stat(&user, R, "a/f", true).await), ENOENT);
    ok(store.rename(&user, R, "a/g", R, "b/g", false).await);
    assert_eq!(ok(store.real_path(f.id).await), "/b/g");
    // A directory across directories: its parent pointer follows.
    let sub = ok(store.stat(&user, R, "a/sub", true).await);
    ok(store.rename(&user, R, "a/sub", b.id, "moved", false).await);
    let moved = ok(store.stat(&user, R, "b/moved", true).await);
    assert_eq!((moved.id, moved.dir_parent()), (sub.id, Some(b.id)));
    assert_eq!(ok(store.stat(&user, R, "b/moved/..", true).await).id, b.id);
    // Replacing a file drops the victim's link (and queues it).
    let victim = ok(touch(&env, &user, "b/victim").await).inode;
    ok(store.rename(&user, R, "b/g", R, "b/victim", false).await);
    assert_eq!(ok(store.stat(&user, R, "b/victim", true).await).id, f.id);
    assert_eq!(ok(store.batch_stat(&[victim.id]).await)[0].as_ref().map(|i| i.attr.nlink), Some(0));
    // Replacing an empty directory; refusing a non-empty one.
    ok(store.mkdir(&user, R, "empty", 0o755).await);
    ok(store.rename(&user, R, "b/moved", R, "empty", false).await);
    assert_eq!(ok(store.stat(&user, R, "empty", true).await).id, sub.id);
    ok(store.mkdirs(&user, R, "full/x", 0o755).await);
    ok(store.mkdir(&user, R, "other", 0o755).await);
    assert_eq!(errno(store.rename(&user, R, "other", R, "full", false).await), ENOTEMPTY);
    // Kind mismatches.
    assert_eq!(errno(store.rename(&user, R, "other", R, "b/victim", false).await), ENOTDIR);
    assert_eq!(errno(store.rename(&user, R, "b/victim", R, "other", false).await), EISDIR);
    // Into its own subtree, onto itself, ancestors.
    assert_eq!(errno(store.rename(&user, R, "full", R, "full/x/y", false).await), EINVAL);
    assert_eq!(errno(store.rename(&user, R, "full", R, "full/y", false).await), EINVAL);
    assert_eq!(errno(store.rename(&user, R, "full/x", R, "full", false).await), ENOTEMPTY);
    ok(store.rename(&user, R, "full", R, "full", false).await);
    // Two names of one inode: nothing happens.
    ok(store.link(&user, R, "b/victim", R, "alias").await);
    ok(store.rename(&user, R, "alias", R, "b/victim", false).await);
    assert!(ok(store.stat(&user, R, "alias", true).await).attr.nlink == 2);
    // RENAME_NOREPLACE, dots, missing sources.
    assert_eq!(errno(store.rename(&user, R, "alias", R, "other", true).await), EEXIST);
    assert_eq!(errno(store.rename(&user, R, "a/.", R, "z", false).await), EBUSY);
    assert_eq!(errno(store.rename(&user, R, "z", R, "..", false).await), EBUSY);
    assert_eq!(errno(store.rename(&user, R, "nothing", R, "z", false).await), ENOENT);
    assert_eq!(errno(store.rename(&user, R, "alias/", R, "z", false).await), ENOTDIR);
    env.assert_consistent().await;
}

async fn readdir_pages_are_stable(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let dir = ok(env.store.mkdir(&user, R, "d", 0o755).await);
    let mut names: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
    for name in &names {
        ok(touch(&env, &user, &format!("d/{name}")).await);
    }
    ok(env.store.mkdir(&user, dir.id, "sub", 0o755).await);
    names.push("sub".into());
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = ok(env.store.readdir(&user, R, "d", after.as_deref(), 7).await);
        pages += 1;
        assert!(page.entries.len() <= 7);
        // Churn while listing: remove an entry already listed, add one before the cursor and
        // one after it; names present throughout must still come exactly once.
        if pages == 2 {
            ok(env.store.unlink(&user, R, "d/n00").await);
            ok(touch(&env, &user, "d/a_before").await);
            ok(touch(&env, &user, "d/z_after").await);
        }
        seen.extend(page.entries.iter().map(|e| e.name.clone()));
        after = page.entries.last().map(|e| e.name.clone());
        if !page.more {
            break;
        }
    }
    assert!(pages >= 4);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages come in name order without duplicates");
    for name in &names {
        assert!(seen.contains(name), "{name} present throughout was listed");
    }
    assert!(seen.contains(&"z_after".to_string()), "added after the cursor: listed");
    assert!(!seen.contains(&"a_before".to_string()), "added before the cursor: not listed");
    let sub = ok(env.store.readdir(&user, R, "d", Some("sua"), 10).await);
    assert_eq!(sub.entries[0].name, "sub");
    assert_eq!(sub.entries[0].kind, InodeKind::Directory);
    assert_eq!(errno(env.store.readdir(&user, R, "d/n01", None, 10).await), ENOTDIR);
    let empty = ok(env.store.readdir(&user, dir.id, "sub", None, 10).await);
    assert!(empty.entries.is_empty() && !empty.more);
    env.assert_consistent().await;
}

async fn real_path_follows_renames(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let c = ok(env.store.mkdirs(&user, R, "a/b/c", 0o755).await);
    let f = ok(touch(&env, &user, "a/b/c/f").await).inode;
    assert_eq!(ok(env.store.real_path(R).await), "/");
    assert_eq!(ok(env.store.real_path(c.id).await), "/a/b/c");
    assert_eq!(ok(env.store.real_path(f.id).await), "/a/b/c/f");
    ok(env.store.rename(&user, R, "a/b", R, "top", false).await);
    assert_eq!(ok(env.store.real_path(c.id).await), "/top/c");
    assert_eq!(ok(env.store.real_path(f.id).await), "/top/c/f");
    ok(env.store.remove(&user, R, "top", RemoveKind::Tree).await);
    assert_eq!(errno(env.store.real_path(c.id).await), ENOENT);
    assert_eq!(errno(env.store.real_path(InodeId(123_456_789)).await), ENOENT);
    env.assert_consistent().await;
}

async fn layouts_are_inherited_and_settable(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let root_layout = env.store.options().format.root_layout.clone();
    let d = ok(env.store.mkdir(&user, R, "d", 0o755).await);
    assert_eq!(d.layout(), Some(&root_layout));
    let mut wide = root_layout.clone();
    wide.stripe_size = 4;
    wide.chunk_size = 1 << 20;
    let d = ok(env.store.set_layout(&user, R, "d", &wide).await);
    assert_eq!(d.layout(), Some(&wide));
    let f1 = ok(touch(&env, &user, "d/f1").await).inode;
    let f2 = ok(touch(&env, &user, "d/f2").await).inode;
    let (Some(l1), Some(l2)) = (f1.layout(), f2.layout()) else { panic!("files have layouts") };
    assert_eq!((l1.stripe_size, l1.chunk_size), (4, 1 << 20));
    assert_ne!(l1.chains, l2.chains, "each file draws its own ShuffleV1 seed");
    assert!(matches!(l1.chains, ChainSelection::ShuffleV1 { .. }));
    let sub = ok(env.store.mkdir(&user, R, "d/sub", 0o755).await);
    assert_eq!(sub.layout(), Some(&wide), "subdirectories inherit the default");
    // The chain table has 8 chains (StaticClusterForTests).
    let mut too_wide = wide.clone();
    too_wide.stripe_size = 9;
    assert_eq!(errno(env.store.set_layout(&user, R, "d", &too_wide).await), EINVAL);
    let mut unknown = wide.clone();
    unknown.chain_table_id = r3fs_types::ChainTableId(7);
    assert_eq!(
        code(env.store.set_layout(&user, R, "d", &unknown).await),
        ErrorCode::ChainTableNotFound
    );
    let mut bad_chunk = wide.clone();
    bad_chunk.chunk_size = 1000;
    assert_eq!(errno(env.store.set_layout(&user, R, "d", &bad_chunk).await), EINVAL);
    assert_eq!(errno(env.store.set_layout(&user, R, "d/f1", &wide).await), ENOTDIR);
    let pinned =
        r3fs_types::Layout { chains: ChainSelection::List(vec![7, 0]), stripe_size: 2, ..wide };
    ok(env.store.set_layout(&user, R, "d", &pinned).await);
    let f3 = ok(touch(&env, &user, "d/f3").await).inode;
    assert_eq!(f3.layout(), Some(&pinned), "an explicit chain list is kept as is");
    env.assert_consistent().await;
}

async fn names_and_limits(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let long = "n".repeat(256);
    assert_eq!(errno(touch(&env, &user, &long).await), ENAMETOOLONG);
    assert_eq!(errno(env.store.mkdir(&user, R, &long, 0o755).await), ENAMETOOLONG);
    ok(touch(&env, &user, &"n".repeat(255)).await);
    assert_eq!(errno(env.store.lookup(&user, R, "a/b").await), EINVAL);
    assert_eq!(errno(env.store.lookup(&user, R, "a\0b").await), EINVAL);
    assert_eq!(errno(env.store.lookup(&user, R, "").await), ENOENT);
    assert_eq!(errno(touch(&env, &user, "bad\0name").await), EINVAL);
    assert_eq!(errno(env.store.stat(&user, R, &"a/".repeat(2000), true).await), ENAMETOOLONG);
    let shallow = MetaOptions {
        limits: crate::names::Limits {
            path_depth_max: 4,
            symlink_follow_max: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let small = Env::with(backend, true, shallow).await;
    ok(small.store.mkdirs(&user, R, "a/b/c/d", 0o755).await);
    assert_eq!(errno(small.store.mkdirs(&user, R, "a/b/c/d/e", 0o755).await), ENAMETOOLONG);
    ok(small.store.symlink(&user, R, "l1", "a").await);
    ok(small.store.symlink(&user, R, "l2", "l1").await);
    ok(small.store.symlink(&user, R, "l3", "l2").await);
    assert!(ok(small.store.stat(&user, R, "l2", true).await).is_dir());
    assert_eq!(errno(small.store.stat(&user, R, "l3", true).await), ELOOP);
    // UTF-8 names of any script are fine.
    ok(touch(&env, &user, "données-数据-🙂").await);
    let entry = ok(env.store.lookup(&user, R, "données-数据-🙂").await);
    assert!(matches!(entry.data, InodeData::File { .. }));
    env.assert_consistent().await;
}

async fn statfs_counts_inodes(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let before = ok(env.store.statfs().await);
    assert_eq!(before.inodes, 1, "the root");
    assert_eq!(before.capacity.map(|c| c.total_bytes), Some(1 << 40));
    assert_eq!(before.name_length_max, 255);
    ok(env.store.mkdir(&user, R, "d", 0o755).await);
    for i in 0..5 {
        ok(touch(&env, &user, &format!("d/{i}")).await);
    }
    assert_eq!(ok(env.store.statfs().await).inodes, 7);
    ok(env.store.unlink(&user, R, "d/0").await);
    assert_eq!(ok(env.store.statfs().await).inodes, 7, "queued files still count");
    env.drain_gc().await;
    assert_eq!(ok(env.store.statfs().await).inodes, 6);
    let bare = Env::with(backend, false, MetaOptions::default()).await;
    let no_cluster = MetaStore::new(
        bare.kv.clone(),
        MetaOptions::default(),
        super::test_retry(),
        Default::default(),
    );
    assert_eq!(ok(ok(no_cluster.await).statfs().await).capacity, None);
    env.assert_consistent().await;
}

async fn remove_tree_detaches_and_collects(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    ok(env.store.mkdirs(&user, R, "t/a/b/c", 0o755).await);
    ok(env.store.mkdirs(&user, R, "t/x", 0o755).await);
    let mut files = Vec::new();
    for dir in ["t", "t/a", "t/a/b", "t/a/b/c", "t/x"] {
        for i in 0..3 {
            let file = ok(touch(&env, &user, &format!("{dir}/f{i}")).await).inode;
            let layout = file.layout().cloned().expect("file layout");
            env.storage.write(file.id, &layout, 0, 3 * u64::from(layout.chunk_size));
            files.push(file.id);
        }
    }
    ok(env.store.symlink(&user, R, "t/a/sym", "../x").await);
    // A hard link out of the tree keeps that file alive.
    let kept = ok(env.store.link(&user, R, "t/a/f0", R, "kept").await);
    let t = ok(env.store.stat(&user, R, "t", true).await);
    ok(env.store.remove(&user, R, "t", RemoveKind::Tree).await);
    assert_eq!(errno(env.store.stat(&user, R, "t", true).await), ENOENT);
    assert_eq!(ok(env.store.batch_stat(&[t.id]).await)[0].as_ref().map(|i| i.attr.nlink), Some(0));
    env.assert_consistent().await;
    env.drain_gc().await;
    env.assert_consistent().await;
    let left = ok(env.store.batch_stat(&files).await);
    let alive: Vec<_> = left.iter().flatten().map(|i| i.id).collect();
    assert_eq!(alive, vec![kept.id]);
    assert_eq!(ok(env.store.stat(&user, R, "kept", true).await).attr.nlink, 1);
    for id in &files {
        let expected = if *id == kept.id { 3 } else { 0 };
        assert_eq!(env.storage.chunk_count(*id), expected, "chunks of {id}");
    }
    assert_eq!(ok(env.store.statfs().await).inodes, 2, "root and the kept file");
    // Removing a file as a tree is an unlink; the root is refused.
    ok(env.store.remove(&user, R, "kept", RemoveKind::Tree).await);
    assert_eq!(errno(env.store.remove(&user, R, "/", RemoveKind::Tree).await), EBUSY);
    env.assert_consistent().await;
}
