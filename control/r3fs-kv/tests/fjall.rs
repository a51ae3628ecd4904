//! The conformance suite against the embedded fjall backend, plus its durability tests: reopen
//! after a clean close, and reopen after the writing process was killed with SIGKILL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use r3fs_kv::conformance::{self, ConflictCheck};
use r3fs_kv::{Durability, FjallConfig, FjallKv, Kv};
use tempfile::TempDir;

/// Set in the child process of the kill -9 test to the store's directory.
const CRASH_CHILD_DIR_ENV: &str = "R3FS_KV_CRASH_CHILD_DIR";
/// Set in the child process of the kill -9 test to the run's label.
const CRASH_CHILD_RUN_ENV: &str = "R3FS_KV_CRASH_CHILD_RUN";

fn open_at(path: &Path, durability: Durability) -> anyhow::Result<Arc<dyn Kv>> {
    let config = FjallConfig { durability, ..FjallConfig::at(path) };
    Ok(Arc::new(
        FjallKv::open(&config).with_context(|| format!("open fjall at {}", path.display()))?,
    ))
}

/// Fresh stores in temporary directories that live as long as the factory.
struct Fresh {
    durability: Durability,
    dirs: Mutex<Vec<TempDir>>,
}

impl Fresh {
    fn new(durability: Durability) -> Self {
        Self { durability, dirs: Mutex::new(Vec::new()) }
    }
}

impl conformance::Factory for Fresh {
    fn fresh(&self) -> anyhow::Result<Arc<dyn Kv>> {
        let dir = tempfile::tempdir()?;
        let kv = open_at(dir.path(), self.durability)?;
        self.dirs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(dir);
        Ok(kv)
    }
}

#[test]
fn model_based() -> anyhow::Result<()> {
    // Durable commits: the model test also exercises the fsync path; cases stay few because each
    // opens a store.
    conformance::model_based(&Fresh::new(Durability::SyncData), 48, ConflictCheck::Exact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_checks() -> anyhow::Result<()> {
    conformance::run_targeted(&Fresh::new(Durability::SyncData)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_across_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    conformance::durability_across_reopen(&move || open_at(&path, Durability::SyncData)).await
}

/// Parent: runs this same test binary as the child (selected by the environment variable), kills
/// it with SIGKILL mid-stream and checks every acknowledged commit after reopening. Child: commits
/// until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(CRASH_CHILD_DIR_ENV) {
        let run = std::env::var(CRASH_CHILD_RUN_ENV).context("crash child run label")?;
        let kv = open_at(Path::new(&dir), Durability::SyncData)?;
        conformance::crash_child(&*kv, &run, 1_000_000).await?;
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    for round in 0..2 {
        let mut child = std::process::Command::new(std::env::current_exe()?);
        child
            .args(["--exact", "survives_kill_9", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_DIR_ENV, dir.path())
            .env(CRASH_CHILD_RUN_ENV, format!("run{round}"));
        let path = dir.path().to_path_buf();
        let run = format!("run{round}");
        // Kill at a different point each round; the second round also recovers over the first's
        // journal.
        let acks = conformance::kill_child_and_verify(child, &run, 150 + 97 * round, move || {
            open_at(&path, Durability::SyncData)
        })
        .await?;
        println!("round {round}: {acks} acknowledged commits survived kill -9");
    }
    Ok(())
}
