//! `r3fs-meta`: the metadata daemon. Opens the configured KV, formats it if empty, serves
//! `r3fs.meta.Meta` over gRPC, runs the background collector, and exits cleanly on SIGTERM or
//! SIGINT (stops accepting, finishes in-flight requests, stops the collector).

use anyhow::{Context, bail};
use clap::Parser;
use r3fs_meta::config::Config;
use r3fs_meta::mgmtd::{MgmtdClusterInfo, MgmtdUserResolver};
use r3fs_meta::perm::User;
use r3fs_meta::service::MetaService;
use r3fs_meta::storage::{ChunkStorage, ClientChunkStorage};
use r3fs_meta::store::{Deps, MetaStore};
use r3fs_meta::user::{CachedUserResolver, StaticUserResolver, UserResolver};
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "r3fs-meta", about = "r3fs metadata service")]
struct Args {
    /// Config file (TOML); see meta.example.toml.
    #[arg(long)]
    config: PathBuf,
    /// Overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `kv.backend`.
    #[arg(long, value_parser = ["memory", "fjall"])]
    kv_backend: Option<String>,
    /// Overrides `kv.fjall.path`.
    #[arg(long)]
    kv_path: Option<PathBuf>,
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read config {}", args.config.display()))?;
    let mut config =
        Config::parse(&text).with_context(|| format!("parse config {}", args.config.display()))?;
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    match args.kv_backend.as_deref() {
        Some("memory") => config.kv.backend = r3fs_kv::config::Backend::Memory,
        Some("fjall") => config.kv.backend = r3fs_kv::config::Backend::Fjall,
        _ => {}
    }
    if let Some(path) = &args.kv_path {
        config.kv.fjall.path = path.clone();
    }
    if let Err(errors) = config.validate() {
        bail!("invalid config {}:\n  {}", args.config.display(), errors.join("\n  "));
    }
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = load(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let kv_config = config.kv.clone();
    let kv = tokio::task::spawn_blocking(move || r3fs_kv::open(&kv_config))
        .await
        .context("join the KV opener")?
        .context("open the KV store")?;
    tracing::info!(backend = kv.backend_name(), "KV store open");

    let ttl = Duration::from_millis(config.auth.user_cache_ttl_ms);
    let entries_max = config.auth.user_cache_entries_max;
    let (users, cluster, storage): (Arc<dyn UserResolver>, _, _) = match &config.mgmtd {
        Some(mgmtd) => {
            let token = std::fs::read_to_string(&mgmtd.token_file)
                .with_context(|| {
                    format!("read the mgmtd token file {}", mgmtd.token_file.display())
                })?
                .trim()
                .to_string();
            let storage = if config.storage.enabled {
                let client_config = config.storage.client_config(mgmtd, &token);
                let storage = ClientChunkStorage::new(client_config)
                    .context("configure the storage client")?;
                Some(Arc::new(storage) as Arc<dyn ChunkStorage>)
            } else {
                tracing::warn!(
                    "storage.enabled = false: shrinking truncates of non-empty files are refused \
                     and deleted files wait in the collection queue"
                );
                None
            };
            let client =
                MgmtdClient::new(MgmtdClientConfig::new(mgmtd.addresses.clone(), Some(token)))
                    .map_err(|e| anyhow::anyhow!("configure the mgmtd client: {e}"))?;
            let cluster = MgmtdClusterInfo::new(
                client.clone(),
                Duration::from_millis(mgmtd.routing_refresh_ms),
            );
            let users = CachedUserResolver::new(MgmtdUserResolver::new(client), ttl, entries_max);
            (Arc::new(users) as Arc<dyn UserResolver>, Some(Arc::new(cluster) as _), storage)
        }
        None => {
            tracing::warn!(
                "no [mgmtd] configured: callers are authenticated by the static token table"
            );
            let table = config.auth.static_users.iter().map(|u| {
                (
                    u.token.clone(),
                    User { uid: u.uid, gid: u.gid, groups: u.groups.clone(), admin: u.admin },
                )
            });
            tracing::warn!(
                "no [mgmtd]: no storage access (shrinking truncates of non-empty files are \
                 refused, deleted files wait in the collection queue)"
            );
            (Arc::new(StaticUserResolver::new(table)) as Arc<dyn UserResolver>, None, None)
        }
    };
    let deps = Deps { storage, cluster, ..Deps::default() };
    let store = Arc::new(
        MetaStore::new(kv, config.meta.clone(), config.kv.retry, deps)
            .await
            .context("open the metadata store")?,
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let collector = config.collector_enabled.then(|| {
        let mut stop = stop_rx.clone();
        tokio::spawn(store.clone().run_collector(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }))
    });

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let address = listener.local_addr().context("local address of the listener")?;
    let service = MetaService::new(store.clone(), users);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let _metrics = r3fs_metrics::Exporter::start(
        &config.metrics,
        r3fs_metrics::global(),
        "meta",
        &format!("meta-{address}"),
    )
    .context("start the metrics exporter")?;
    println!("r3fs-meta listening on {address}");
    std::io::stdout().flush().context("flush stdout")?;
    tracing::info!(%address, "serving r3fs.meta.Meta");

    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await
        .context("serve gRPC")?;
    tracing::info!("stopped accepting requests; stopping the collector");
    let _ = stop_tx.send(true);
    if let Some(collector) = collector {
        collector.await.context("join the collector")?;
    }
    tracing::info!("r3fs-meta stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
