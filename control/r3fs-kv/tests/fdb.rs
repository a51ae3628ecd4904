//! The conformance suite against FoundationDB (feature `fdb`). Needs libfdb_c to link and a
//! reachable cluster to run: without a cluster file it prints why and passes without checking.

#![cfg(feature = "fdb")]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use r3fs_kv::config::FdbConfig;
use r3fs_kv::conformance::{self, ConflictCheck};
use r3fs_kv::fdb::FdbKv;
use r3fs_kv::{KEY_SIZE_MAX, Kv};

/// The cluster file FoundationDB would use, if it exists.
fn cluster_file() -> Option<PathBuf> {
    let path = std::env::var_os("FDB_CLUSTER_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(foundationdb::default_config_path()));
    path.exists().then_some(path)
}

/// Each fresh store is a new random prefix under this run's prefix `r3fs-kv-test/<run>/`.
struct Fresh {
    cluster_file: PathBuf,
    run: u64,
}

const PREFIX_LEN: usize = "r3fs-kv-test/0123456789abcdef/0123456789abcdef/".len();

impl Fresh {
    fn open(&self, key_prefix: String) -> anyhow::Result<FdbKv> {
        let config = FdbConfig { cluster_file: Some(self.cluster_file.clone()), key_prefix };
        FdbKv::open(&config).context("open FoundationDB")
    }

    /// Clears every key this run wrote.
    async fn clean_up(&self) -> anyhow::Result<()> {
        let kv = self.open(format!("r3fs-kv-test/{:016x}/", self.run))?;
        let mut txn = kv.begin().await?;
        txn.clear_range(b"", b"\xff")?;
        txn.commit().await?;
        Ok(())
    }
}

impl conformance::Factory for Fresh {
    fn fresh(&self) -> anyhow::Result<Arc<dyn Kv>> {
        let prefix = format!("r3fs-kv-test/{:016x}/{:016x}/", self.run, rand::random::<u64>());
        let kv = self.open(prefix.clone())?;
        assert_eq!(prefix.len(), PREFIX_LEN);
        Ok(Arc::new(kv))
    }

    fn key_size_max(&self) -> usize {
        KEY_SIZE_MAX - PREFIX_LEN
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_against_a_cluster() -> anyhow::Result<()> {
    let Some(cluster_file) = cluster_file() else {
        println!("skipped: no FoundationDB cluster file (FDB_CLUSTER_FILE or the default path)");
        return Ok(());
    };
    let fresh = Arc::new(Fresh { cluster_file, run: rand::random() });
    let targeted = conformance::run_targeted(&*fresh).await;
    // The model test runs its own runtime, so it gets its own thread.
    let for_model = fresh.clone();
    let model = std::thread::spawn(move || {
        conformance::model_based(&*for_model, 32, ConflictCheck::NoMissed)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("model test panicked"))?;
    let cleaned = fresh.clean_up().await;
    r3fs_kv::fdb::stop_network();
    targeted?;
    model?;
    cleaned
}
