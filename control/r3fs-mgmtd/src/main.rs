//! `r3fs-mgmtd --config mgmtd.toml [--listen ADDR] [--data-dir DIR] [--node-id N]`
//!
//! Prints `r3fs-mgmtd listening on ADDR` on stdout once serving and `r3fs-mgmtd is primary (epoch
//! N)` whenever it becomes primary; logs go to stderr (RUST_LOG, default info). SIGTERM or SIGINT
//! stops it cleanly (exit 0); an invalid config exits 2 after listing every problem.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use r3fs_mgmtd::clock::SystemClock;
use r3fs_mgmtd::{MgmtdConfig, Role, Server};

#[derive(Debug, Parser)]
#[command(name = "r3fs-mgmtd", version, about = "r3fs cluster manager")]
struct Args {
    /// TOML config (every key optional; see docs/design/mgmtd.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `advertise_address`.
    #[arg(long)]
    advertise: Option<String>,
    /// Uses the embedded (fjall) store in this directory (overrides `[kv]`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `node_id`.
    #[arg(long)]
    node_id: Option<u32>,
    /// Validates the config and exits.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> anyhow::Result<MgmtdConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config {}", path.display()))?;
            toml::from_str::<MgmtdConfig>(&text)
                .with_context(|| format!("parse config {}", path.display()))?
        }
        None => MgmtdConfig::default(),
    };
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    if let Some(advertise) = &args.advertise {
        config.advertise_address = advertise.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.kv.backend = r3fs_kv::config::Backend::Fjall;
        config.kv.fjall.path = dir.clone();
    }
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    Ok(config)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("r3fs-mgmtd: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(errors) = config.validate() {
        for error in &errors {
            eprintln!("r3fs-mgmtd: invalid config: {error}");
        }
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("r3fs-mgmtd: config is valid");
        return ExitCode::SUCCESS;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("r3fs-mgmtd failed: {error:#}");
            eprintln!("r3fs-mgmtd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: MgmtdConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(async move {
        let kv_config = config.kv.clone();
        let kv = tokio::task::spawn_blocking(move || r3fs_kv::open(&kv_config))
            .await
            .context("open the kv store")?
            .context("open the kv store")?;
        let server =
            Server::start(&config, kv, Arc::new(SystemClock)).await.context("start mgmtd")?;
        println!("r3fs-mgmtd listening on {}", server.local_addr());
        let _metrics = r3fs_metrics::Exporter::start(
            &config.metrics,
            r3fs_metrics::global(),
            "mgmtd",
            &format!("mgmtd-{}", config.node_id),
        )
        .context("start the metrics exporter")?;
        let metrics_watch = tokio::spawn(r3fs_mgmtd::metrics::watch(server.mgmtd().clone()));
        let mut role = server.mgmtd().subscribe_role();
        let announcer = tokio::spawn(async move {
            let mut was_primary = false;
            loop {
                let is_primary = match &*role.borrow_and_update() {
                    Role::Primary { fence, .. } => {
                        if !was_primary {
                            println!("r3fs-mgmtd is primary (epoch {})", fence.epoch);
                        }
                        true
                    }
                    _ => false,
                };
                was_primary = is_primary;
                if role.changed().await.is_err() {
                    return;
                }
            }
        });
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("install the SIGTERM handler")?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        announcer.abort();
        metrics_watch.abort();
        server.shutdown().await.context("shut down")?;
        tracing::info!("stopped");
        Ok(())
    })
}
