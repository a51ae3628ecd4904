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

/// Keeps frame-sized allocations (each storage reply of a 4 MiB read is read into a fresh buffer
/// of its size) in malloc's heaps instead of a fresh `mmap` each: glibc's default maps every
/// allocation above 128 KiB anew and unmaps it on free, so every large read paid page faults and
/// zeroing in this daemon (`perf record` of native-ring reads, docs/benchmarks.md). The same
/// settings as the storage daemon's.
fn tune_malloc() -> bool {
    const MMAP_THRESHOLD_BYTES: i32 = 32 << 20; // glibc's maximum on 64-bit
    const TRIM_THRESHOLD_BYTES: i32 = 512 << 20;
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    }
}

fn main() -> anyhow::Result<()> {
    let malloc_tuned = tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !malloc_tuned {
        tracing::warn!("mallopt refused the allocation thresholds; large buffers will be mmapped");
    }
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
