//! Metadata throughput on the embedded (fjall) store: create, stat, readdir and unlink
//! operations per second for 1, 8 and 64 concurrent clients, in the style of mdtest.
//!
//! Each client is a task that works in a directory of its own (mdtest's unique-directory mode;
//! `--shared-dir` puts every client in one directory). Phases run one after another: every
//! client creates its files, then stats each by path, then lists its directory in pages, then
//! unlinks its files. The store runs in-process (no gRPC), so the figures are the meta logic
//! plus the KV: a network hop adds its own cost on top.
//!
//! ```text
//! cargo run --release -p r3fs-meta --example metabench -- [--files 8192] [--clients 1,8,64]
//!     [--durability sync_data|buffer] [--shared-dir]
//! ```

use hdrhistogram::Histogram;
use r3fs_kv::{Durability, FjallConfig, FjallKv, Kv};
use r3fs_meta::perm::User;
use r3fs_meta::store::{CreateArgs, Deps, MetaOptions, MetaStore, OpenFlags};
use r3fs_types::{ClientId, InodeId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Args {
    files_total: usize,
    clients: Vec<usize>,
    durability: Durability,
    shared_dir: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        files_total: 8192,
        clients: vec![1, 8, 64],
        durability: Durability::SyncData,
        shared_dir: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--files" => args.files_total = value()?.parse()?,
            "--clients" => {
                args.clients = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--durability" => {
                args.durability = match value()?.as_str() {
                    "sync_data" => Durability::SyncData,
                    "buffer" => Durability::Buffer,
                    other => anyhow::bail!("unknown durability {other}"),
                }
            }
            "--shared-dir" => args.shared_dir = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(args.files_total > 0 && !args.clients.is_empty(), "nothing to do");
    Ok(args)
}

/// What one phase measured.
struct Phase {
    ops: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn cell(&self) -> String {
        format!(
            "{:>9.0} ({:>5}/{:>6})",
            self.rate(),
            self.latency_us.value_at_quantile(0.5),
            self.latency_us.value_at_quantile(0.99)
        )
    }
}

/// Runs `op(client, index)` for every client over its `per_client` items, all clients at once.
async fn phase<F, Fut>(clients: usize, per_client: usize, op: F) -> anyhow::Result<Phase>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let mut ops = 0;
            for index in 0..per_client {
                let began = Instant::now();
                ops += op(client, index).await?;
                latency.record(began.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok((ops, latency))
        }));
    }
    let mut ops = 0;
    let mut latency_us = Histogram::<u64>::new(3)?;
    for task in tasks {
        let (n, h) = task.await??;
        ops += n;
        latency_us.add(&h)?;
    }
    Ok(Phase { ops, elapsed: start.elapsed(), latency_us })
}

async fn run(args: &Args, clients: usize) -> anyhow::Result<[Phase; 4]> {
    let dir = tempfile::tempdir()?;
    let config = FjallConfig { durability: args.durability, ..FjallConfig::at(dir.path()) };
    let kv: Arc<dyn Kv> = Arc::new(FjallKv::open(&config)?);
    let store = Arc::new(
        MetaStore::new(kv, MetaOptions::default(), Default::default(), Deps::default()).await?,
    );
    let user = User::root();
    let per_client = (args.files_total / clients).max(1);
    let mut dirs = Vec::with_capacity(clients);
    for client in 0..clients {
        let name = if args.shared_dir { "shared".to_string() } else { format!("client-{client}") };
        dirs.push(store.mkdirs(&user, InodeId::ROOT, &name, 0o755).await?.id);
    }
    let dirs = Arc::new(dirs);
    let name = |client: usize, index: usize| format!("c{client}-f{index}");

    let (s, d) = (store.clone(), dirs.clone());
    let create = phase(clients, per_client, move |client, index| {
        let (s, d) = (s.clone(), d.clone());
        async move {
            let args = CreateArgs {
                mode: 0o644,
                exclusive: true,
                flags: OpenFlags::default(),
                client: ClientId(client as u64 + 1),
            };
            s.create(&User::root(), d[client], &name(client, index), &args).await?;
            Ok(1)
        }
    })
    .await?;

    let (s, d) = (store.clone(), dirs.clone());
    let stat = phase(clients, per_client, move |client, index| {
        let (s, d) = (s.clone(), d.clone());
        async move {
            s.stat(&User::root(), d[client], &name(client, index), false).await?;
            Ok(1)
        }
    })
    .await?;

    // One "operation" is one readdir page of up to 128 entries; the rate counts entries. Each
    // client lists its whole directory (with --shared-dir, everyone's files).
    const PAGE: usize = 128;
    let entries_per_dir = if args.shared_dir { per_client * clients } else { per_client };
    let pages = entries_per_dir.div_ceil(PAGE);
    let cursors: Arc<Vec<Mutex<Option<String>>>> =
        Arc::new((0..clients).map(|_| Mutex::new(None)).collect());
    let (s, d) = (store.clone(), dirs.clone());
    let readdir = phase(clients, pages, move |client, _| {
        let (s, d, cursors) = (s.clone(), d.clone(), cursors.clone());
        async move {
            let after = cursors[client].lock().unwrap_or_else(|e| e.into_inner()).clone();
            let page = s.readdir(&User::root(), d[client], "", after.as_deref(), PAGE).await?;
            *cursors[client].lock().unwrap_or_else(|e| e.into_inner()) =
                page.entries.last().map(|e| e.name.clone());
            Ok(page.entries.len() as u64)
        }
    })
    .await?;

    let (s, d) = (store.clone(), dirs.clone());
    let unlink = phase(clients, per_client, move |client, index| {
        let (s, d) = (s.clone(), d.clone());
        async move {
            s.unlink(&User::root(), d[client], &name(client, index)).await?;
            Ok(1)
        }
    })
    .await?;
    Ok([create, stat, readdir, unlink])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    println!(
        "metabench: {} files in total, durability {:?}, {} directories, in-process store on fjall",
        args.files_total,
        args.durability,
        if args.shared_dir { "one shared" } else { "per-client" }
    );
    println!("ops/s (p50/p99 latency in us); readdir counts entries, pages of 128");
    println!(
        "{:>7} | {:>24} | {:>24} | {:>24} | {:>24}",
        "clients", "create", "stat", "readdir", "unlink"
    );
    for &clients in &args.clients {
        let [create, stat, readdir, unlink] = run(&args, clients).await?;
        println!(
            "{clients:>7} | {:>24} | {:>24} | {:>24} | {:>24}",
            create.cell(),
            stat.cell(),
            readdir.cell(),
            unlink.cell()
        );
    }
    Ok(())
}
