//! `r3fs-storage --config storage.toml [--node-id N] [--listen-host IP]`
//!
//! Prints `r3fs-storage node N serving targets on ADDR[,ADDR...]` on stdout once every existing
//! target is open and the node is registered with mgmtd. SIGTERM or SIGINT drains the shards,
//! makes every chunk store durable (fdatasync) and exits 0. An unreadable or invalid config
//! exits 2 after listing every problem; a refused start (memlock, O_DIRECT, locked target, ...)
//! exits 1 with the cause.

use anyhow::Context;
use clap::Parser;
use r3fs_storage::config::StorageConfig;
use r3fs_storage::daemon::{self, Daemon};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "r3fs-storage", version, about = "r3fs storage daemon")]
struct Args {
    /// TOML config (see docs/design/storage-daemon.md).
    #[arg(long)]
    config: PathBuf,
    /// Overrides `node_id`.
    #[arg(long)]
    node_id: Option<u32>,
    /// Overrides `listen_host`.
    #[arg(long)]
    listen_host: Option<String>,
    /// Validates the config and exits.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> anyhow::Result<StorageConfig> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read config {}", args.config.display()))?;
    let mut config = StorageConfig::from_toml(&text)
        .with_context(|| format!("parse config {}", args.config.display()))?;
    if let Some(node_id) = args.node_id {
        config.node_id = node_id;
    }
    if let Some(host) = &args.listen_host {
        config.listen_host = host.clone();
    }
    Ok(config)
}

/// Keeps chunk-sized allocations (the chunk store's DMA buffers, up to 32 MiB) in malloc's heaps
/// instead of a fresh `mmap` each: glibc's default maps every large allocation anew and unmaps it
/// on free, so each 4 MiB write paid page faults, zeroing and `munmap` (`perf record` on the
/// datapath benchmark; docs/design/storage-daemon.md). Freed memory is returned to the system
/// only past `TRIM_THRESHOLD_BYTES` at the top of a heap.
fn tune_malloc() {
    const MMAP_THRESHOLD_BYTES: i32 = 32 << 20; // glibc's maximum on 64-bit
    const TRIM_THRESHOLD_BYTES: i32 = 512 << 20;
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    };
    if !ok {
        tracing::warn!("mallopt refused the allocation thresholds; large buffers will be mmapped");
    }
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
            eprintln!("r3fs-storage: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(errors) = config.validate() {
        for error in &errors {
            eprintln!("r3fs-storage: invalid config: {error}");
        }
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("r3fs-storage: config is valid");
        return ExitCode::SUCCESS;
    }
    tune_malloc();
    // Before any thread starts, so every thread inherits the blocked mask and only the
    // main thread takes the signals.
    if let Err(error) = daemon::block_signals() {
        eprintln!("r3fs-storage: block signals: {error}");
        return ExitCode::FAILURE;
    }
    let node = config.node_id;
    let _metrics = match r3fs_metrics::Exporter::start(
        &config.metrics,
        r3fs_metrics::global(),
        "storage",
        &format!("node-{node}"),
    ) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("r3fs-storage: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut daemon = match Daemon::start(config) {
        Ok(daemon) => daemon,
        Err(error) => {
            tracing::error!("start-up refused: {error}");
            eprintln!("r3fs-storage: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addresses: Vec<String> = daemon.addresses.iter().map(|a| a.to_string()).collect();
    println!("r3fs-storage node {node} serving targets on {}", addresses.join(","));
    match daemon::wait_for_signal() {
        Ok(signal) => tracing::info!(signal, "shutting down"),
        Err(error) => tracing::error!(%error, "waiting for a signal failed; shutting down"),
    }
    daemon.stop();
    println!("r3fs-storage node {node} stopped");
    ExitCode::SUCCESS
}
