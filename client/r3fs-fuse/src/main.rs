//! `r3fs-fuse --config fuse.toml [--mountpoint DIR]`: mounts an r3fs cluster. Prints
//! `r3fs-fuse mounted <mountpoint>` once the mount answers; SIGTERM or SIGINT unmounts.

use anyhow::Context;
use clap::Parser;
use r3fs_fuse::FuseConfig;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "r3fs-fuse", about = "Mount an r3fs cluster (FUSE)")]
struct Args {
    /// The daemon's config (docs/design/fuse.md documents every key).
    #[arg(long)]
    config: PathBuf,
    /// Overrides the config's mountpoint.
    #[arg(long)]
    mountpoint: Option<PathBuf>,
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
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read the config {}", args.config.display()))?;
    let mut config = FuseConfig::parse(&text)
        .with_context(|| format!("parse the config {}", args.config.display()))?;
    if let Some(mountpoint) = args.mountpoint {
        config.mountpoint = mountpoint;
    }
    r3fs_fuse::run(config)
}
