//! Concurrent conflicting operations: each race must end as some serial order would, and leave a
//! tree fsck finds consistent.

use super::{Backend, Env, create_args, ok, on_both_backends, root};
use crate::error::MetaResult;
use crate::store::{MetaStore, RemoveKind};
use r3fs_types::{ErrorCode, InodeId};
use std::sync::Arc;

const R: InodeId = InodeId::ROOT;

on_both_backends!(
    concurrent_creates_of_one_name_have_one_winner,
    crossing_renames_never_make_cycles,
    create_races_unlink,
    random_operations_keep_the_tree_consistent,
);

async fn concurrent_creates_of_one_name_have_one_winner(backend: Backend) {
    let env = Env::new(backend).await;
    ok(env.store.mkdir(&root(), R, "d", 0o777).await);
    for round in 0..5 {
        let name = format!("d/f{round}");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = env.store.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                store.create(&root(), R, &name, &create_args(0o644)).await
            }));
        }
        let mut winners = 0;
        for task in tasks {
            match task.await.expect("task ran") {
                Ok(_) => winners += 1,
                Err(e) => assert_eq!(e.code, ErrorCode::Exists, "{e}"),
            }
        }
        assert_eq!(winners, 1, "exactly one create of {name} wins");
        // The same for mkdir and symlink racing each other on one name.
        let name = format!("d/m{round}");
        let (user, args) = (root(), create_args(0o644));
        let (a, b, c) = tokio::join!(
            env.store.mkdir(&user, R, &name, 0o755),
            env.store.symlink(&user, R, &name, "target"),
            env.store.create(&user, R, &name, &args),
        );
        let oks = [a.is_ok(), b.is_ok(), c.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(oks, 1, "one of mkdir/symlink/create of {name} wins");
    }
    env.assert_consistent().await;
}

/// Returns Ok(()) for the expected refusals of a racing rename.
fn tolerate(result: MetaResult<()>) {
    if let Err(e) = result {
        assert!(
            matches!(
                e.code,
                ErrorCode::NotFound
                    | ErrorCode::InvalidArgument
                    | ErrorCode::NotEmpty
                    | ErrorCode::Exists
            ),
            "unexpected rename error {e}"
        );
    }
}

async fn crossing_renames_never_make_cycles(backend: Backend) {
    let env = Env::new(backend).await;
    let user = root();
    for round in 0..12 {
        let base = format!("r{round}");
        ok(env.store.mkdirs(&user, R, &format!("{base}/a/x"), 0o755).await);
        ok(env.store.mkdirs(&user, R, &format!("{base}/b/y"), 0o755).await);
        let base_id = ok(env.store.stat(&user, R, &base, true).await).id;
        let s1 = env.store.clone();
        let s2 = env.store.clone();
        // The brief's race: mv a/x b/ and mv b/y a/x/.
        let one =
            tokio::spawn(
                async move { s1.rename(&root(), base_id, "a/x", base_id, "b/x", false).await },
            );
        let two = tokio::spawn(async move {
            s2.rename(&root(), base_id, "b/y", base_id, "a/x/y", false).await
        });
        tolerate(one.await.expect("task"));
        tolerate(two.await.expect("task"));
        // The classic cycle race: mv a b/a and mv b a/b; at most one may succeed.
        let s1 = env.store.clone();
        let s2 = env.store.clone();
        let one =
            tokio::spawn(
                async move { s1.rename(&root(), base_id, "a", base_id, "b/a", false).await },
            );
        let two =
            tokio::spawn(
                async move { s2.rename(&root(), base_id, "b", base_id, "a/b", false).await },
            );
        let (one, two) = (one.await.expect("task"), two.await.expect("task"));
        assert!(one.is_err() || two.is_err(), "both crossing renames succeeded in round {round}");
        tolerate(one);
        tolerate(two);
        env.assert_consistent().await;
    }
}

async fn create_races_unlink(backend: Backend) {
    let env = Env::new(backend).await;
    ok(env.store.mkdir(&root(), R, "d", 0o777).await);
    for round in 0..10 {
        let name = format!("d/f{}", round % 3);
        let mut tasks = Vec::new();
        for task in 0..6 {
            let store = env.store.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                if task % 2 == 0 {
                    store.create(&root(), R, &name, &create_args(0o644)).await.map(|_| ())
                } else {
                    store.unlink(&root(), R, &name).await
                }
            }));
        }
        for task in tasks {
            if let Err(e) = task.await.expect("task") {
                assert!(matches!(e.code, ErrorCode::Exists | ErrorCode::NotFound), "{e}");
            }
        }
        env.assert_consistent().await;
    }
    env.drain_gc().await;
    env.assert_consistent().await;
}

/// A small xorshift generator: each task's sequence is fixed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

async fn random_op(store: &MetaStore, rng: &mut Rng) -> MetaResult<()> {
    const DIRS: [&str; 4] = ["", "p", "q", "p/r"];
    let dir = |rng: &mut Rng| DIRS[rng.next(DIRS.len() as u64) as usize];
    let path = |rng: &mut Rng| {
        let d = dir(rng);
        let n = rng.next(4);
        if d.is_empty() { format!("n{n}") } else { format!("{d}/n{n}") }
    };
    let user = root();
    match rng.next(9) {
        0 | 1 => store.create(&user, R, &path(rng), &create_args(0o644)).await.map(|_| ()),
        2 => store.mkdir(&user, R, &path(rng), 0o755).await.map(|_| ()),
        3 => store.unlink(&user, R, &path(rng)).await,
        4 => store.rmdir(&user, R, &path(rng)).await,
        5 | 6 => store.rename(&user, R, &path(rng), R, &path(rng), false).await,
        7 => store.link(&user, R, &path(rng), R, &path(rng)).await.map(|_| ()),
        _ => store.remove(&user, R, &path(rng), RemoveKind::Tree).await,
    }
}

async fn random_operations_keep_the_tree_consistent(backend: Backend) {
    let env = Env::new(backend).await;
    ok(env.store.mkdirs(&root(), R, "p/r", 0o755).await);
    ok(env.store.mkdir(&root(), R, "q", 0o755).await);
    let seed =
        std::env::var("R3FS_META_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    println!("random operations seed {seed} (replay with R3FS_META_SEED={seed})");
    for round in 0..4u64 {
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let store: Arc<MetaStore> = env.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng((seed ^ (round << 32) ^ (task + 1))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    | 1);
                let mut errors = Vec::new();
                for _ in 0..40 {
                    if let Err(e) = random_op(&store, &mut rng).await {
                        errors.push(e.code);
                    }
                }
                errors
            }));
        }
        for task in tasks {
            for error in task.await.expect("task") {
                // Expected POSIX outcomes of random operations; anything else (a conflict that
                // outlived its retries, an internal error) is a failure.
                assert!(
                    matches!(
                        error,
                        ErrorCode::NotFound
                            | ErrorCode::Exists
                            | ErrorCode::NotDirectory
                            | ErrorCode::IsDirectory
                            | ErrorCode::NotEmpty
                            | ErrorCode::InvalidArgument
                            | ErrorCode::PermissionDenied
                            | ErrorCode::Busy
                    ),
                    "unexpected error {error}"
                );
            }
        }
        env.assert_consistent().await;
        ok(env.store.gc_pass().await);
        env.assert_consistent().await;
    }
    env.drain_gc().await;
    env.assert_consistent().await;
}
