//! Tests of the tests: fsck must report damage it is shown, and two transactions interleaved by
//! hand must conflict where a race would break the tree (so the concurrent tests, which cannot
//! force an interleaving, rest on a property that is checked deterministically here).

use super::{Backend, Env, errno, ok, on_both_backends, root, touch};
use crate::fsck::fsck;
use crate::keys;
use crate::schema::{DirEntry, InodeData, InodeKind};
use crate::txn::Tx;
use r3fs_types::error::errno::*;
use r3fs_types::{ErrorCode, InodeId};

const R: InodeId = InodeId::ROOT;

on_both_backends!(
    fsck_reports_damage,
    interleaved_crossing_renames_conflict,
    interleaved_creates_of_one_name_conflict,
);

/// Runs `f` in a raw transaction and commits it.
async fn raw(env: &Env, f: impl AsyncFnOnce(&mut Tx<'_>)) {
    let mut txn = env.kv.begin().await.expect("begin");
    {
        let mut tx = Tx::serializable(&mut *txn);
        f(&mut tx).await;
    }
    txn.commit().await.expect("commit the damage");
}

async fn problems(env: &Env) -> Vec<String> {
    fsck(&*env.kv).await.expect("fsck runs").problems
}

async fn fsck_reports_damage(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let f = ok(touch(&env, &user, "f").await).inode;
    env.assert_consistent().await;

    // A wrong link count.
    let mut bumped = f.clone();
    bumped.attr.nlink = 2;
    raw(&env, async |tx| ok(tx.put_inode(&bumped))).await;
    let found = problems(&env).await;
    assert!(found.iter().any(|p| p.contains("nlink 2 but 1 entries")), "{found:?}");
    raw(&env, async |tx| ok(tx.put_inode(&f))).await;
    env.assert_consistent().await;

    // A missing back-reference.
    raw(&env, async |tx| tx.txn.clear(&keys::backref_key(f.id, R, "f")).expect("clear")).await;
    let found = problems(&env).await;
    assert!(found.iter().any(|p| p.contains("missing back-reference")), "{found:?}");

    // An entry to nothing.
    let env = Env::new(backend).await;
    let f = ok(touch(&env, &user, "f").await).inode;
    raw(&env, async |tx| ok(tx.clear_inode(f.id))).await;
    let found = problems(&env).await;
    assert!(found.iter().any(|p| p.contains("names missing inode")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("inode counter")), "{found:?}");

    // A directory cycle cut off from the root: a moved into its own child b.
    let env = Env::new(backend).await;
    let a = ok(env.store.mkdir(&user, R, "a", 0o755).await);
    let b = ok(env.store.mkdir(&user, R, "a/b", 0o755).await);
    raw(&env, async |tx| {
        let entry = ok(tx.entry(R, "a").await).expect("entry a");
        ok(tx.clear_entry(&entry));
        ok(tx.put_entry(&DirEntry {
            parent: b.id,
            name: "a".into(),
            inode: a.id,
            kind: InodeKind::Directory,
        }));
        let mut moved = a.clone();
        if let InodeData::Directory { parent, .. } = &mut moved.data {
            *parent = b.id;
        }
        ok(tx.put_inode(&moved));
    })
    .await;
    let found = problems(&env).await;
    assert!(found.iter().any(|p| p.contains("unreachable")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("does not reach the root")), "{found:?}");

    // A record that does not decode.
    let env = Env::new(backend).await;
    let f = ok(touch(&env, &user, "f").await).inode;
    raw(&env, async |tx| tx.txn.set(&keys::inode_key(f.id), b"\xff\xff\xff").expect("set")).await;
    assert!(!problems(&env).await.is_empty());
    assert_eq!(errno(env.store.stat(&user, R, "f", true).await), EIO);
}

async fn interleaved_crossing_renames_conflict(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    ok(env.store.mkdirs(&user, R, "a/x", 0o755).await);
    ok(env.store.mkdirs(&user, R, "b/y", 0o755).await);
    // Both bodies run on snapshots taken before either commits.
    let mut t1 = env.kv.begin().await.expect("begin");
    let mut t2 = env.kv.begin().await.expect("begin");
    ok(env.store.rename_in(&mut Tx::serializable(&mut *t1), &user, R, "a", R, "b/a", false).await);
    ok(env.store.rename_in(&mut Tx::serializable(&mut *t2), &user, R, "b", R, "a/b", false).await);
    t1.commit().await.expect("the first rename commits");
    let second = t2.commit().await;
    assert!(matches!(second, Err(r3fs_kv::KvError::Conflict)), "{second:?}");
    // Retried on a fresh snapshot, the second finds no a/ at the root any more; aimed at a's new
    // place it is refused: b would move below itself.
    assert_eq!(errno(env.store.rename(&user, R, "b", R, "a/b", false).await), ENOENT);
    assert_eq!(errno(env.store.rename(&user, R, "b", R, "b/a/b", false).await), EINVAL);
    env.assert_consistent().await;

    // The brief's pair: mv a/x b/ racing mv b/y a/x/.
    let env = Env::new(backend).await;
    ok(env.store.mkdirs(&user, R, "a/x", 0o755).await);
    ok(env.store.mkdirs(&user, R, "b/y", 0o755).await);
    let mut t1 = env.kv.begin().await.expect("begin");
    let mut t2 = env.kv.begin().await.expect("begin");
    ok(env
        .store
        .rename_in(&mut Tx::serializable(&mut *t1), &user, R, "a/x", R, "b/x", false)
        .await);
    ok(env
        .store
        .rename_in(&mut Tx::serializable(&mut *t2), &user, R, "b/y", R, "a/x/y", false)
        .await);
    t1.commit().await.expect("commit");
    assert!(matches!(t2.commit().await, Err(r3fs_kv::KvError::Conflict)));
    assert_eq!(errno(env.store.rename(&user, R, "b/y", R, "a/x/y", false).await), ENOENT);
    // The other order: y goes into x first, then x (with y) moves to b.
    ok(env.store.rename(&user, R, "b/x", R, "a/x", false).await);
    ok(env.store.rename(&user, R, "b/y", R, "a/x/y", false).await);
    ok(env.store.rename(&user, R, "a/x", R, "b/x", false).await);
    assert!(ok(env.store.stat(&user, R, "b/x/y", true).await).is_dir());
    env.assert_consistent().await;
}

async fn interleaved_creates_of_one_name_conflict(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    let root_inode = ok(env.store.stat(&user, R, "", true).await);
    let mut t1 = env.kv.begin().await.expect("begin");
    let mut t2 = env.kv.begin().await.expect("begin");
    let one = ok(env
        .store
        .mkdir_in(&mut Tx::serializable(&mut *t1), &user, &root_inode, "n".into(), 0o755)
        .await);
    let two = ok(env
        .store
        .mkdir_in(&mut Tx::serializable(&mut *t2), &user, &root_inode, "n".into(), 0o755)
        .await);
    assert_ne!(one.id, two.id);
    t1.commit().await.expect("commit");
    assert!(matches!(t2.commit().await, Err(r3fs_kv::KvError::Conflict)));
    assert_eq!(ok(env.store.stat(&user, R, "n", true).await).id, one.id);
    assert_eq!(errno(env.store.mkdir(&user, R, "n", 0o755).await), EEXIST);
    env.assert_consistent().await;
    // An error inside a body leaves nothing behind.
    assert_eq!(
        super::code(env.store.rename(&user, R, "n", R, "n/inside", false).await),
        ErrorCode::InvalidArgument
    );
    env.assert_consistent().await;
}
