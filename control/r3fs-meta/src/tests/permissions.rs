//! Permission checks through the operations: mode bits, groups, sticky directories, root, and
//! attribute changes (chmod, chown, utimens, truncate).

use super::{Backend, Env, errno, ok, on_both_backends, root, touch};
use crate::perm::{TimeSet, User};
use crate::store::{OpenFlags, RemoveKind, SetAttr};
use r3fs_types::error::errno::*;
use r3fs_types::{ClientId, InodeId};

const R: InodeId = InodeId::ROOT;

on_both_backends!(
    mode_bits_guard_operations,
    sticky_directories,
    setattr_rules,
    recursive_remove_checks_the_tree,
);

fn alice() -> User {
    User::new(1000, 1000, vec![])
}

fn bob() -> User {
    User::new(1001, 1001, vec![2000])
}

/// Makes `path` (a directory) owned by `user` with `mode`.
async fn own(env: &Env, path: &str, user: &User, mode: u32) {
    let changes = SetAttr {
        uid: Some(user.uid),
        gid: Some(user.gid),
        mode: Some(mode),
        ..Default::default()
    };
    ok(env.store.setattr(&root(), R, path, true, &changes).await);
}

async fn mode_bits_guard_operations(backend: Backend) {
    let env = Env::new(backend).await;
    let (alice, bob) = (alice(), bob());
    // The root directory is root's, 0755: others may not create in it.
    assert_eq!(errno(touch(&env, &alice, "f").await), EACCES);
    assert_eq!(errno(env.store.mkdir(&alice, R, "d", 0o755).await), EACCES);
    ok(env.store.mkdir(&root(), R, "home", 0o755).await);
    own(&env, "home", &alice, 0o750).await;
    ok(touch(&env, &alice, "home/mine").await);
    // bob is not in alice's group: no search permission below home.
    assert_eq!(errno(env.store.stat(&bob, R, "home/mine", true).await), EACCES);
    assert_eq!(errno(env.store.readdir(&bob, R, "home", None, 10).await), EACCES);
    // A supplementary group grants the group class.
    ok(env
        .store
        .setattr(&root(), R, "home", true, &SetAttr { gid: Some(2000), ..Default::default() })
        .await);
    assert!(ok(env.store.stat(&bob, R, "home/mine", true).await).attr.uid == alice.uid);
    ok(env.store.readdir(&bob, R, "home", None, 10).await);
    assert_eq!(errno(touch(&env, &bob, "home/his").await), EACCES, "group has r-x only");
    // Opening follows the file's bits: 0644 lets bob read, not write.
    let read = OpenFlags { read: true, ..Default::default() };
    let write = OpenFlags { write: true, ..Default::default() };
    ok(env.store.open(&bob, R, "home/mine", read, ClientId(2)).await);
    assert_eq!(errno(env.store.open(&bob, R, "home/mine", write, ClientId(2)).await), EACCES);
    assert_eq!(errno(env.store.unlink(&bob, R, "home/mine").await), EACCES);
    assert_eq!(errno(env.store.rename(&bob, R, "home/mine", R, "home/x", false).await), EACCES);
    // Root overrides.
    ok(env.store.open(&root(), R, "home/mine", write, ClientId(3)).await);
    ok(touch(&env, &root(), "home/roots").await);
    // Moving a directory to another parent needs write permission on it (its `..` changes).
    ok(env.store.mkdir(&alice, R, "home/sub", 0o755).await);
    ok(env.store.mkdir(&root(), R, "shared", 0o777).await);
    own(&env, "home/sub", &root(), 0o755).await;
    assert_eq!(
        errno(env.store.rename(&alice, R, "home/sub", R, "shared/sub", false).await),
        EACCES
    );
    ok(env.store.rename(&alice, R, "home/sub", R, "home/sub2", false).await);
    // Opening a directory for writing.
    assert_eq!(errno(env.store.open(&root(), R, "home", write, ClientId(1)).await), EISDIR);
    env.assert_consistent().await;
}

async fn sticky_directories(backend: Backend) {
    let env = Env::new(backend).await;
    let (alice, bob) = (alice(), bob());
    ok(env.store.mkdir(&root(), R, "tmp", 0o1777).await);
    ok(touch(&env, &alice, "tmp/a").await);
    ok(touch(&env, &bob, "tmp/b").await);
    // Both may write the directory, but only remove or rename away their own entries.
    assert_eq!(errno(env.store.unlink(&bob, R, "tmp/a").await), EACCES);
    assert_eq!(errno(env.store.rename(&bob, R, "tmp/a", R, "tmp/c", false).await), EACCES);
    assert_eq!(
        errno(env.store.rename(&bob, R, "tmp/b", R, "tmp/a", false).await),
        EACCES,
        "replacing alice's file"
    );
    ok(env.store.rename(&bob, R, "tmp/b", R, "tmp/b2", false).await);
    ok(env.store.unlink(&bob, R, "tmp/b2").await);
    // The directory's owner may remove anything in it, and so may root.
    ok(touch(&env, &alice, "tmp/a2").await);
    own(&env, "tmp", &bob, 0o1777).await;
    ok(env.store.unlink(&bob, R, "tmp/a").await);
    ok(env.store.unlink(&root(), R, "tmp/a2").await);
    env.assert_consistent().await;
}

async fn setattr_rules(backend: Backend) {
    let env = Env::new(backend).await;
    let (alice, bob) = (alice(), bob());
    ok(env.store.mkdir(&root(), R, "d", 0o777).await);
    let f = ok(touch(&env, &alice, "d/f").await).inode;
    assert_eq!((f.attr.uid, f.attr.gid), (1000, 1000));
    // chmod: owner yes, others no.
    let chmod = |mode| SetAttr { mode: Some(mode), ..Default::default() };
    assert_eq!(
        ok(env.store.setattr(&alice, R, "d/f", true, &chmod(0o4755)).await).attr.mode,
        0o4755
    );
    assert_eq!(errno(env.store.setattr(&bob, R, "d/f", true, &chmod(0o777)).await), EACCES);
    // chown: only root changes the owner; the owner may change the group to one of theirs.
    let to_bob = SetAttr { uid: Some(bob.uid), ..Default::default() };
    assert_eq!(errno(env.store.setattr(&alice, R, "d/f", true, &to_bob).await), EACCES);
    let alice_in_2000 = User::new(1000, 1000, vec![2000]);
    let regroup = SetAttr { gid: Some(2000), ..Default::default() };
    let f2 = ok(env.store.setattr(&alice_in_2000, R, "d/f", true, &regroup).await);
    assert_eq!((f2.attr.gid, f2.attr.mode), (2000, 0o755), "chown clears setuid");
    assert_eq!(
        errno(
            env.store
                .setattr(&alice, R, "d/f", true, &SetAttr { gid: Some(3000), ..Default::default() })
                .await
        ),
        EACCES
    );
    ok(env.store.setattr(&root(), R, "d/f", true, &to_bob).await);
    // utimens: explicit times need ownership; "now" also write permission.
    env.clock.advance_ms(5);
    let explicit =
        SetAttr { mtime: Some(TimeSet::At(42)), atime: Some(TimeSet::At(7)), ..Default::default() };
    let after = ok(env.store.setattr(&bob, R, "d/f", true, &explicit).await);
    assert_eq!((after.attr.mtime_ns, after.attr.atime_ns), (42, 7));
    assert!(after.attr.ctime_ns > f.attr.ctime_ns);
    assert_eq!(errno(env.store.setattr(&alice, R, "d/f", true, &explicit).await), EACCES);
    let now = SetAttr { mtime: Some(TimeSet::Now), ..Default::default() };
    assert_eq!(
        errno(env.store.setattr(&alice, R, "d/f", true, &now).await),
        EACCES,
        "0755: no write for alice"
    );
    ok(env.store.setattr(&bob, R, "d/f", true, &chmod(0o666)).await);
    let touched = ok(env.store.setattr(&alice, R, "d/f", true, &now).await);
    assert_eq!(touched.attr.mtime_ns, env.clock_now());
    // truncate: write permission, or a write session of the file.
    let grow = SetAttr { length: Some(10), ..Default::default() };
    assert_eq!(ok(env.store.setattr(&alice, R, "d/f", true, &grow).await).size(), 10);
    ok(env.store.setattr(&bob, R, "d/f", true, &chmod(0o644)).await);
    assert_eq!(errno(env.store.setattr(&alice, R, "d/f", true, &grow).await), EACCES);
    let opened = ok(env
        .store
        .open(
            &bob,
            R,
            "d/f",
            crate::store::OpenFlags { write: true, ..Default::default() },
            ClientId(9),
        )
        .await);
    ok(env.store.setattr(&root(), R, "d/f", true, &chmod(0o444)).await);
    let with_session = SetAttr { length: Some(20), session: opened.session, ..Default::default() };
    assert_eq!(ok(env.store.setattr(&bob, R, "d/f", true, &with_session).await).size(), 20);
    assert_eq!(errno(env.store.setattr(&root(), R, "d", true, &grow).await), EISDIR);
    // A directory's default layout: its owner, root or an admin may set it.
    let layout = env.store.options().format.root_layout.clone();
    assert_eq!(errno(env.store.set_layout(&alice, R, "d", &layout).await), EACCES);
    ok(env.store.mkdir(&alice, R, "d/mine", 0o755).await);
    ok(env.store.set_layout(&alice, R, "d/mine", &layout).await);
    let admin = User { admin: true, ..bob.clone() };
    ok(env.store.set_layout(&admin, R, "d", &layout).await);
    ok(env.store.symlink(&root(), R, "s", "d/f").await);
    assert_eq!(errno(env.store.setattr(&root(), R, "s", false, &grow).await), EINVAL);
    env.assert_consistent().await;
}

async fn recursive_remove_checks_the_tree(backend: Backend) {
    let env = Env::new(backend).await;
    let alice = alice();
    ok(env.store.mkdir(&root(), R, "home", 0o777).await);
    ok(env.store.mkdirs(&alice, R, "home/t/a/b", 0o755).await);
    ok(touch(&env, &alice, "home/t/a/b/f").await);
    // A directory inside that alice may not write: rm -r would fail there, so must this.
    ok(env.store.mkdir(&root(), R, "home/t/a/locked", 0o755).await);
    ok(touch(&env, &root(), "home/t/a/locked/g").await);
    assert_eq!(errno(env.store.remove(&alice, R, "home/t", RemoveKind::Tree).await), EACCES);
    assert!(ok(env.store.stat(&alice, R, "home/t/a/b/f", true).await).attr.nlink == 1);
    ok(env.store.remove(&root(), R, "home/t/a/locked", RemoveKind::Tree).await);
    ok(env.store.remove(&alice, R, "home/t", RemoveKind::Tree).await);
    env.drain_gc().await;
    env.assert_consistent().await;
    let small = crate::store::MetaOptions {
        limits: crate::names::Limits { remove_tree_check_dirs_max: 2, ..Default::default() },
        ..Default::default()
    };
    let limited = Env::with(backend, true, small).await;
    ok(limited.store.mkdir(&root(), R, "home", 0o777).await);
    ok(limited.store.mkdirs(&alice, R, "home/t/a/b", 0o755).await);
    assert_eq!(
        errno(limited.store.remove(&alice, R, "home/t", RemoveKind::Tree).await),
        EOPNOTSUPP
    );
    ok(limited.store.remove(&root(), R, "home/t", RemoveKind::Tree).await);
    limited.assert_consistent().await;
}

impl Env {
    fn clock_now(&self) -> i64 {
        use crate::clock::Clock;
        self.clock.now_ns()
    }
}
