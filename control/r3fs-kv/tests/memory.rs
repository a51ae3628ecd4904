//! The conformance suite against the in-memory backend.

use std::sync::Arc;

use r3fs_kv::conformance::{self, ConflictCheck};
use r3fs_kv::{Kv, MemoryKv};

fn fresh() -> anyhow::Result<Arc<dyn Kv>> {
    Ok(Arc::new(MemoryKv::default()))
}

#[test]
fn model_based() -> anyhow::Result<()> {
    conformance::model_based(&fresh, 1_000, ConflictCheck::Exact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_checks() -> anyhow::Result<()> {
    conformance::run_targeted(&fresh).await
}
