//! `r3fs-monitor --config monitor.toml [--listen ADDR] [--clickhouse-url URL]`
//!
//! Prints `r3fs-monitor listening on ADDR` once the push listener is bound, then collects until
//! SIGTERM or SIGINT, flushes what is buffered (bounded by the insert timeout) and exits 0. An
//! unreadable or invalid config exits 2 after listing every problem. ClickHouse being down is
//! not an error: rows are buffered up to `buffer_rows_max`.

use anyhow::Context;
use clap::Parser;
use r3fs_metrics::Registry;
use r3fs_monitor::{Monitor, MonitorConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "r3fs-monitor", version, about = "r3fs metrics collector (ClickHouse)")]
struct Args {
    /// TOML config (see docs/examples/monitor.toml).
    #[arg(long)]
    config: PathBuf,
    /// Overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `clickhouse.url`.
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Validates the config and exits.
    #[arg(long)]
    check_config: bool,
}

fn load(args: &Args) -> anyhow::Result<MonitorConfig> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read config {}", args.config.display()))?;
    let mut config = MonitorConfig::from_toml(&text)
        .with_context(|| format!("parse config {}", args.config.display()))?;
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    if let Some(url) = &args.clickhouse_url {
        config.clickhouse.url = url.clone();
    }
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
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
            eprintln!("r3fs-monitor: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(errors) = config.validate() {
        for error in &errors {
            eprintln!("r3fs-monitor: invalid config: {error}");
        }
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("r3fs-monitor: config is valid");
        return ExitCode::SUCCESS;
    }
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("r3fs-monitor: start tokio: {error}");
                return ExitCode::FAILURE;
            }
        };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let address = listener.local_addr().context("local address")?;
        let monitor = Monitor::new(config, Registry::new());
        let handler = monitor.clone();
        tokio::spawn(r3fs_metrics::serve(listener, move |request| handler.handle(request)));
        println!("r3fs-monitor listening on {address}");
        monitor.run(shutdown_signal()).await;
        Ok(())
    });
    match result {
        Ok(()) => {
            println!("r3fs-monitor stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("r3fs-monitor: {error:#}");
            ExitCode::FAILURE
        }
    }
}
