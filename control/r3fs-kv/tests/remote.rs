//! The conformance suite against the remote backend: a KV server in this process (over memory
//! and over fjall) reached through `RemoteKv` on loopback; and the real `r3fs-kvd` binary keeping
//! acknowledged commits across a kill -9.

use std::sync::Arc;
use std::time::Duration;

use r3fs_kv::conformance::{self, ConflictCheck};
use r3fs_kv::remote::{RemoteConfig, RemoteKv, ServerConfig, serve};
use r3fs_kv::{FjallConfig, FjallKv, Kv, MemoryKv, ReadMode};
use r3fs_testkit::{Proc, binary, free_port};

/// Serves `backend` on a fresh loopback port from a dedicated runtime thread and returns a client.
fn remote_over(backend: Arc<dyn Kv>) -> anyhow::Result<Arc<dyn Kv>> {
    let (ready, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ready.send(listener.local_addr().expect("address")).expect("send address");
            serve(backend, ServerConfig::default(), listener, std::future::pending()).await
        })
    });
    let address = address.recv_timeout(Duration::from_secs(10))?;
    let config = RemoteConfig { address: address.to_string(), ..RemoteConfig::default() };
    Ok(Arc::new(RemoteKv::connect_lazy(&config)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_checks_over_memory() -> anyhow::Result<()> {
    conformance::run_targeted(&|| remote_over(Arc::new(MemoryKv::default()))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_checks_over_fjall() -> anyhow::Result<()> {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_targeted(&|| {
        let dir = tempfile::tempdir()?;
        let config = FjallConfig { path: dir.path().to_path_buf(), ..FjallConfig::default() };
        let kv = FjallKv::open(&config)?;
        dirs.lock().expect("dirs").push(dir);
        remote_over(Arc::new(kv))
    })
    .await
}

#[test]
fn model_based_over_memory() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let _guard = runtime.enter();
    conformance::model_based(
        &|| remote_over(Arc::new(MemoryKv::default())),
        64,
        ConflictCheck::Exact,
    )
}

/// The real server: acknowledged commits survive `kill -9` of r3fs-kvd and a restart on the same
/// directory; a transaction left open by a vanished client does not block others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvd_keeps_acknowledged_commits_across_kill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let start = || {
        let mut command = std::process::Command::new(binary("r3fs-kv", "r3fs-kvd"));
        command.arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--data-dir").arg(dir.path());
        let mut proc = Proc::spawn("r3fs-kvd", command);
        proc.wait_for_line("r3fs-kvd listening on", Duration::from_secs(60));
        proc
    };
    let mut server = start();
    let config = RemoteConfig { address: format!("127.0.0.1:{port}"), ..RemoteConfig::default() };
    let kv = RemoteKv::connect_lazy(&config)?;
    let mut acknowledged = Vec::new();
    for i in 0u32..50 {
        let mut txn = kv.begin().await?;
        txn.set(format!("key-{i:03}").as_bytes(), &i.to_le_bytes())?;
        txn.commit().await?;
        acknowledged.push(i);
    }
    // An abandoned transaction holding writes must simply vanish with its client.
    let mut abandoned = kv.begin().await?;
    abandoned.set(b"never", b"committed")?;
    drop(abandoned);
    server.kill9();

    let _server = start();
    let mut txn = kv.begin().await?;
    for i in acknowledged {
        let value = txn.get(format!("key-{i:03}").as_bytes(), ReadMode::Serializable).await?;
        assert_eq!(value, Some(i.to_le_bytes().to_vec()), "acknowledged key-{i:03} lost");
    }
    assert_eq!(txn.get(b"never", ReadMode::Serializable).await?, None);
    Ok(())
}
