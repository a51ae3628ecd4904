//! `r3fs-kvd`: serves one KV backend (the embedded store by default) over gRPC, so several
//! processes — mgmtd instances sharing one lease record, for instance — use one store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use r3fs_kv::KvConfig;
use r3fs_kv::config::Backend;
use r3fs_kv::remote::{ServerConfig, serve};

#[derive(Debug, Parser)]
#[command(name = "r3fs-kvd", version, about = "Serve an r3fs transactional KV store over gRPC")]
struct Args {
    /// `[kv]`-section TOML choosing the backend (default: fjall under --data-dir).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of the embedded store, when no config file names one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on. Bind loopback or a private network: the server authenticates nobody.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// A transaction open longer than this is aborted (answered as a conflict).
    #[arg(long, default_value_t = 5_000)]
    txn_duration_max_ms: u64,
}

fn kv_config(args: &Args) -> anyhow::Result<KvConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))?
        }
        None => KvConfig::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.fjall.path = dir.clone();
    }
    anyhow::ensure!(config.backend != Backend::Remote, "r3fs-kvd cannot serve a remote backend");
    if let Err(errors) = config.validate() {
        anyhow::bail!("invalid kv config:\n  {}", errors.join("\n  "));
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = kv_config(&args)?;
    let kv = tokio::task::block_in_place(|| r3fs_kv::open(&config)).context("open the kv store")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let address = listener.local_addr().context("read the listening address")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    println!("r3fs-kvd listening on {address} (backend {})", kv.backend_name());
    let server =
        ServerConfig { txn_duration_max_ms: args.txn_duration_max_ms, ..ServerConfig::default() };
    serve(kv, server, listener, shutdown).await.context("serve the kv store")?;
    Ok(())
}
