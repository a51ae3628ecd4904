//! Metadata throughput on the embedded (fjall) store: create, stat, readdir and unlink
//! operations per second for 1, 8 and 64 concurrent clients, in the style of mdtest.
//!
//! Each client is a task that works in a directory of its own (mdtest's unique-directory mode;
//! `--shared-dir` puts every client in one directory). Phases run one after another: every
//! client creates its files, then stats each by path, then lists its directory in pages, then
//! unlinks its files. By default the store runs in-process, so the figures are the meta logic
//! plus the KV; `--grpc` puts a real `MetaService` on loopback in between (one connection per
//! client), adding protobuf, HTTP/2 and token resolution.
//!
//! ```text
//! cargo run --release -p r3fs-meta --example metabench -- [--files 8192] [--clients 1,8,64]
//!     [--durability sync_data|buffer] [--shared-dir] [--grpc]
//! ```

use hdrhistogram::Histogram;
use r3fs_kv::{Durability, FjallConfig, FjallKv, Kv};
use r3fs_meta::perm::User;
use r3fs_meta::service::MetaService;
use r3fs_meta::store::{CreateArgs, Deps, MetaOptions, MetaStore, OpenFlags};
use r3fs_meta::user::StaticUserResolver;
use r3fs_rpc::meta::meta_client::MetaClient;
use r3fs_rpc::meta::{self as pb};
use r3fs_types::{ClientId, InodeId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug)]
struct Args {
    files_total: usize,
    clients: Vec<usize>,
    durability: Durability,
    shared_dir: bool,
    grpc: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        files_total: 8192,
        clients: vec![1, 8, 64],
        durability: Durability::SyncData,
        shared_dir: false,
        grpc: false,
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
            "--grpc" => args.grpc = true,
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

/// Where the operations go: the store in-process, or a gRPC server on loopback.
#[async_trait::async_trait]
trait Target: Send + Sync {
    async fn create(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()>;
    async fn stat(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()>;
    /// Names of the next page after `after`.
    async fn readdir(
        &self,
        client: usize,
        dir: InodeId,
        after: Option<String>,
    ) -> anyhow::Result<Vec<String>>;
    async fn unlink(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()>;
}

const PAGE: usize = 128;

struct Local(Arc<MetaStore>);

#[async_trait::async_trait]
impl Target for Local {
    async fn create(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()> {
        let args = CreateArgs {
            mode: 0o644,
            exclusive: true,
            flags: OpenFlags::default(),
            client: ClientId(client as u64 + 1),
        };
        self.0.create(&User::root(), dir, name, &args).await?;
        Ok(())
    }

    async fn stat(&self, _: usize, dir: InodeId, name: &str) -> anyhow::Result<()> {
        self.0.stat(&User::root(), dir, name, false).await?;
        Ok(())
    }

    async fn readdir(
        &self,
        _: usize,
        dir: InodeId,
        after: Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        let page = self.0.readdir(&User::root(), dir, "", after.as_deref(), PAGE).await?;
        Ok(page.entries.into_iter().map(|e| e.name).collect())
    }

    async fn unlink(&self, _: usize, dir: InodeId, name: &str) -> anyhow::Result<()> {
        self.0.unlink(&User::root(), dir, name).await?;
        Ok(())
    }
}

/// One connection per client to an in-process gRPC server on loopback.
struct Remote(Vec<MetaClient<Channel>>);

const TOKEN: &str = "metabench";

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {TOKEN}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

fn path(dir: InodeId, name: &str) -> Option<pb::PathAt> {
    Some(pb::PathAt { at: dir.0, path: name.to_string() })
}

#[async_trait::async_trait]
impl Target for Remote {
    async fn create(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()> {
        let message = pb::CreateRequest {
            target: path(dir, name),
            mode: 0o644,
            exclusive: true,
            flags: Some(pb::OpenFlags::default()),
            client_id: client as u64 + 1,
        };
        self.0[client].clone().create(request(message)).await?;
        Ok(())
    }

    async fn stat(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()> {
        let message = pb::StatRequest { target: path(dir, name), follow: false };
        self.0[client].clone().stat(request(message)).await?;
        Ok(())
    }

    async fn readdir(
        &self,
        client: usize,
        dir: InodeId,
        after: Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        let message = pb::ReadDirRequest {
            directory: path(dir, ""),
            after: after.unwrap_or_default(),
            limit: PAGE as u32,
        };
        let page = self.0[client].clone().read_dir(request(message)).await?.into_inner();
        Ok(page.entries.into_iter().map(|e| e.name).collect())
    }

    async fn unlink(&self, client: usize, dir: InodeId, name: &str) -> anyhow::Result<()> {
        let message =
            pb::RemoveRequest { target: path(dir, name), kind: pb::RemoveKind::File as i32 };
        self.0[client].clone().remove(request(message)).await?;
        Ok(())
    }
}

/// Serves `store` on a loopback port; returns one connected client per bench client.
async fn serve(store: Arc<MetaStore>, clients: usize) -> anyhow::Result<Remote> {
    let users = StaticUserResolver::new([(TOKEN.to_string(), User::root())]);
    let service = MetaService::new(store, Arc::new(users));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(incoming),
    );
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(MetaClient::connect(format!("http://{address}")).await?);
    }
    Ok(Remote(connections))
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
    let target: Arc<dyn Target> =
        if args.grpc { Arc::new(serve(store, clients).await?) } else { Arc::new(Local(store)) };
    let name = |client: usize, index: usize| format!("c{client}-f{index}");

    let (t, d) = (target.clone(), dirs.clone());
    let create = phase(clients, per_client, move |client, index| {
        let (t, d) = (t.clone(), d.clone());
        async move {
            t.create(client, d[client], &name(client, index)).await?;
            Ok(1)
        }
    })
    .await?;

    let (t, d) = (target.clone(), dirs.clone());
    let stat = phase(clients, per_client, move |client, index| {
        let (t, d) = (t.clone(), d.clone());
        async move {
            t.stat(client, d[client], &name(client, index)).await?;
            Ok(1)
        }
    })
    .await?;

    // One "operation" is one readdir page of up to 128 entries; the rate counts entries. Each
    // client lists its whole directory (with --shared-dir, everyone's files).
    let entries_per_dir = if args.shared_dir { per_client * clients } else { per_client };
    let pages = entries_per_dir.div_ceil(PAGE);
    let cursors: Arc<Vec<Mutex<Option<String>>>> =
        Arc::new((0..clients).map(|_| Mutex::new(None)).collect());
    let (t, d) = (target.clone(), dirs.clone());
    let readdir = phase(clients, pages, move |client, _| {
        let (t, d, cursors) = (t.clone(), d.clone(), cursors.clone());
        async move {
            let after = cursors[client].lock().unwrap_or_else(|e| e.into_inner()).clone();
            let names = t.readdir(client, d[client], after).await?;
            *cursors[client].lock().unwrap_or_else(|e| e.into_inner()) = names.last().cloned();
            Ok(names.len() as u64)
        }
    })
    .await?;

    let (t, d) = (target.clone(), dirs.clone());
    let unlink = phase(clients, per_client, move |client, index| {
        let (t, d) = (t.clone(), d.clone());
        async move {
            t.unlink(client, d[client], &name(client, index)).await?;
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
        "metabench: {} files in total, durability {:?}, {} directories, {} on fjall",
        args.files_total,
        args.durability,
        if args.shared_dir { "one shared" } else { "per-client" },
        if args.grpc { "gRPC on loopback (one connection per client)" } else { "in-process store" }
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
