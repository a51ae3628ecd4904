//! Benchmark of the storage daemon's data path next to fio on the same disk, in the same run:
//! sequential 4 MiB writes and reads, then 4 KiB random reads, replication 1, one daemon over
//! loopback TCP.
//!
//! ```text
//! cargo build --release -p r3fs-storage --example datapath_bench
//! target/release/examples/datapath_bench --dir /var/tmp/r3fs-bench --total-mib 1024 --depth 4
//! ```
//!
//! Starts r3fs-mgmtd (memory KV) and one r3fs-storage (1 core) with its target under `--dir`,
//! creates a one-target chain, writes `--total-mib` MiB as whole 4 MiB chunks with `--depth`
//! connections in flight (each write is acknowledged after its commit is durable), reads them back
//! the same way (every item's CRC32C checked), reads random 4 KiB pieces of them for
//! `--rand-seconds` with `--rand-depth` connections, then runs fio with the same block size,
//! depth and size on the same directory (O_DIRECT, io_uring; `--fio 0` skips it) and prints both
//! with the ratios. For each phase it also prints the daemon's CPU time (user + system, from
//! /proc) per GiB or per 1000 reads: the data path's CPU cost, which a loaded machine disturbs
//! less than throughput. The 1-minute load average is printed before and after.
//!
//! `--storage-bin PATH` runs that r3fs-storage binary instead of building this checkout's, so
//! two builds can be compared back to back (A/B); `--mgmtd-bin PATH` likewise for r3fs-mgmtd.

use r3fs_rpc::admin;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_storage::client::DataClient;
use r3fs_storage::routing::RoutingSnapshot;
use r3fs_testkit::{Proc, binary, free_port};
use r3fs_types::{
    ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, InodeId, PublicTargetState, TargetId,
};
use r3fs_wire::{BatchReadItem, BatchReadRequest, Outcome, UpdateKind, UpdateRequest};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BLOCK: usize = 4 << 20;

struct Args {
    dir: PathBuf,
    total_mib: u64,
    depth: usize,
    rand_seconds: u64,
    rand_depth: usize,
    fio: bool,
    storage_bin: Option<PathBuf>,
    mgmtd_bin: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from("/var/tmp/r3fs-bench"),
        total_mib: 1024,
        depth: 4,
        rand_seconds: 5,
        rand_depth: 32,
        fio: true,
        storage_bin: None,
        mgmtd_bin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--total-mib" => args.total_mib = value.parse().expect("--total-mib is a number"),
            "--depth" => args.depth = value.parse().expect("--depth is a number"),
            "--rand-seconds" => {
                args.rand_seconds = value.parse().expect("--rand-seconds is a number");
            }
            "--rand-depth" => args.rand_depth = value.parse().expect("--rand-depth is a number"),
            "--fio" => args.fio = value != "0",
            "--storage-bin" => args.storage_bin = Some(PathBuf::from(value)),
            "--mgmtd-bin" => args.mgmtd_bin = Some(PathBuf::from(value)),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        args.depth >= 1 && args.rand_depth >= 1 && args.total_mib >= 4,
        "depths >= 1 and total >= 4 MiB"
    );
    args
}

fn start_mgmtd(dir: &Path, bin: Option<&Path>) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let config = dir.join("mgmtd.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 1\nlisten = \"{address}\"\nheartbeat_interval_ms = 500\nheartbeat_timeout_ms = 60000\nfailure_check_interval_ms = 1000\n\
             [kv]\nbackend = \"memory\"\n"
        ),
    )
    .expect("write mgmtd config");
    let bin = bin.map_or_else(|| binary("r3fs-mgmtd", "r3fs-mgmtd"), Path::to_path_buf);
    let mut command = Command::new(bin);
    command.arg("--config").arg(&config);
    let mut proc = Proc::spawn("r3fs-mgmtd", command);
    proc.wait_for_line("is primary", Duration::from_secs(120));
    (proc, address)
}

fn start_storage(dir: &Path, mgmtd: &str, token: &str, bin: Option<&Path>) -> Proc {
    let disk = dir.join("disk0");
    std::fs::create_dir_all(&disk).expect("disk dir");
    let config = dir.join("storage.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 2\ntarget_paths = [\"{}\"]\ncores = 1\nmgmtd_addresses = [\"{mgmtd}\"]\n\
             token = \"{token}\"\nio_memory_bytes = 1048576\n[store]\ncapacity_bytes = 68719476736\n",
            disk.display()
        ),
    )
    .expect("write storage config");
    let bin = bin.map_or_else(|| binary("r3fs-storage", "r3fs-storage"), Path::to_path_buf);
    let mut command = Command::new(bin);
    command.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("r3fs-storage", command);
    proc.wait_for_line("serving targets on", Duration::from_secs(120));
    proc
}

async fn setup_chain(mgmtd: &str, dir: &Path, bin: Option<&Path>) -> (Proc, RoutingSnapshot) {
    let client =
        MgmtdClient::new(MgmtdClientConfig::new(vec![mgmtd.to_string()], None)).expect("client");
    let token = client
        .init_cluster(admin::InitClusterRequest {
            cluster_id: "bench".into(),
            ..Default::default()
        })
        .await
        .expect("init cluster")
        .admin_token;
    let admin = client.with_token(Some(token.clone())).expect("token");
    let storage = start_storage(dir, mgmtd, &token, bin);
    let spec = admin::TargetSpec { target_id: 101, node_id: 2, disk_index: 0, chain_id: 1 };
    admin
        .create_targets(admin::CreateTargetsRequest { targets: vec![spec] })
        .await
        .expect("create target");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = admin.list_targets(admin::ListTargetsRequest {}).await.expect("list targets");
        let up = r3fs_rpc::mgmtd::LocalTargetState::UpToDate as i32;
        if list.targets.iter().any(|t| t.target_id == 101 && t.local_state == up) {
            break;
        }
        assert!(Instant::now() < deadline, "target never reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let chain = admin::ChainSpec { chain_id: 1, target_ids: vec![101] };
    admin
        .upload_chains(admin::UploadChainsRequest { chains: vec![chain] })
        .await
        .expect("upload chain");
    loop {
        if let Some(info) = admin.get_routing_info(0, Duration::ZERO).await.expect("routing") {
            let (snapshot, _) = RoutingSnapshot::from_pb(&info);
            let serving = snapshot
                .chains
                .get(&ChainId(1))
                .is_some_and(|c| c.state_of(TargetId(101)) == Some(PublicTargetState::Serving));
            if serving && snapshot.address_of(TargetId(101)).is_some() {
                return (storage, snapshot);
            }
        }
        assert!(Instant::now() < deadline, "chain never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_writes(
    address: std::net::SocketAddr,
    version: ChainVersion,
    blocks: u64,
    depth: usize,
) -> f64 {
    let data = vec![0xA5u8; BLOCK];
    let crc = crc32c::crc32c(&data);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..depth as u64 {
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = DataClient::connect(address).await.expect("connect");
            for (done, block) in (lane..blocks).step_by(depth).enumerate() {
                let sequence = done as u64 + 1;
                let request = UpdateRequest {
                    kind: UpdateKind::Write,
                    chain_id: ChainId(1),
                    chain_version: version,
                    chunk_id: ChunkId::new(InodeId(1), block),
                    offset: 0,
                    length: BLOCK as u32,
                    chunk_size: BLOCK as u32,
                    update_version: ChunkVersion(0),
                    client_id: ClientId(lane + 1),
                    sequence,
                    payload_crc32c: crc,
                    sending_target_id: None,
                };
                // Failure detection is not under test: bounded retries of retryable refusals
                // (a loaded machine can delay a heartbeat) with the same sequence.
                let mut attempts = 0;
                loop {
                    let reply = client.update(request.clone(), &data).await.expect("write");
                    match reply.outcome {
                        Outcome::Ok => break,
                        Outcome::Failed(code) if code.is_retryable() && attempts < 100 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => panic!("write refused: {reply:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    (blocks * BLOCK as u64) as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64
}

async fn run_reads(address: std::net::SocketAddr, blocks: u64, depth: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..depth as u64 {
        tasks.push(tokio::spawn(async move {
            let mut client = DataClient::connect(address).await.expect("connect");
            for block in (lane..blocks).step_by(depth) {
                let item = BatchReadItem {
                    chain_id: ChainId(1),
                    chunk_id: ChunkId::new(InodeId(1), block),
                    offset: 0,
                    length: BLOCK as u32,
                };
                let (reply, payload) =
                    client.batch_read(BatchReadRequest { items: vec![item] }).await.expect("read");
                assert_eq!(reply.items[0].outcome, Outcome::Ok, "{reply:?}");
                assert_eq!(payload.len(), BLOCK);
            }
        }));
    }
    for task in tasks {
        task.await.expect("reader");
    }
    (blocks * BLOCK as u64) as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64
}

/// Random 4 KiB reads of the written chunks for `seconds` with `depth` connections: returns
/// (reads, elapsed seconds).
async fn run_random_reads(
    address: std::net::SocketAddr,
    blocks: u64,
    depth: usize,
    seconds: u64,
) -> (u64, f64) {
    const PIECE: u32 = 4096;
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for lane in 0..depth as u64 {
        tasks.push(tokio::spawn(async move {
            let mut client = DataClient::connect(address).await.expect("connect");
            // A fixed-seed xorshift per lane: no dependency for a uniform pick.
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (lane + 1);
            let mut reads = 0u64;
            while Instant::now() < until {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let block = state % blocks;
                let offset = (state >> 32) as u32 % (BLOCK as u32 / PIECE) * PIECE;
                let item = BatchReadItem {
                    chain_id: ChainId(1),
                    chunk_id: ChunkId::new(InodeId(1), block),
                    offset,
                    length: PIECE,
                };
                let (reply, payload) =
                    client.batch_read(BatchReadRequest { items: vec![item] }).await.expect("read");
                assert_eq!(reply.items[0].outcome, Outcome::Ok, "{reply:?}");
                assert_eq!(payload.len(), PIECE as usize);
                reads += 1;
            }
            reads
        }));
    }
    let mut reads = 0;
    for task in tasks {
        reads += task.await.expect("reader");
    }
    (reads, start.elapsed().as_secs_f64())
}

/// User + system CPU time of process `pid` so far, in seconds (/proc/<pid>/stat, clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// fio on the same directory: returns MiB/s.
fn fio(dir: &Path, rw: &str, total_mib: u64, depth: usize) -> Option<f64> {
    let output = Command::new("fio")
        .args([
            "--name=r3fs-bench",
            &format!("--directory={}", dir.display()),
            &format!("--rw={rw}"),
            "--bs=4M",
            &format!("--size={total_mib}M"),
            "--direct=1",
            "--ioengine=io_uring",
            &format!("--iodepth={depth}"),
            "--end_fsync=1",
            "--output-format=json",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let bytes = report["jobs"][0][rw]["bw_bytes"].as_f64()?;
    Some(bytes / (1 << 20) as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    let run_dir = tempfile::tempdir_in(&args.dir).expect("run dir");
    let blocks = args.total_mib / 4;
    let (mut mgmtd, address) = start_mgmtd(run_dir.path(), args.mgmtd_bin.as_deref());
    let (mut storage, routing) =
        setup_chain(&address, run_dir.path(), args.storage_bin.as_deref()).await;
    let version = routing.chains[&ChainId(1)].chain_version;
    let data_address = routing.address_of(TargetId(101)).expect("address");
    let pid = storage.pid();
    println!("load average before: {}", load_average());

    let cpu0 = cpu_seconds(pid);
    let write_mib_s = run_writes(data_address, version, blocks, args.depth).await;
    let cpu1 = cpu_seconds(pid);
    let read_mib_s = run_reads(data_address, blocks, args.depth).await;
    let cpu2 = cpu_seconds(pid);
    let (rand_reads, rand_elapsed) = if args.rand_seconds > 0 {
        run_random_reads(data_address, blocks, args.rand_depth, args.rand_seconds).await
    } else {
        (0, 1.0)
    };
    let cpu3 = cpu_seconds(pid);
    println!("load average after the daemon's phases: {}", load_average());
    assert!(storage.terminate(Duration::from_secs(30)), "clean daemon stop");
    mgmtd.kill9();

    let gib = args.total_mib as f64 / 1024.0;
    println!(
        "daemon CPU: write {:.2} s/GiB, sequential read {:.2} s/GiB, 4 KiB random read {:.1} ms per 1000 reads",
        (cpu1 - cpu0) / gib,
        (cpu2 - cpu1) / gib,
        (cpu3 - cpu2) * 1e6 / rand_reads.max(1) as f64,
    );
    if args.rand_seconds > 0 {
        println!(
            "4 KiB random read, {} connections: {:.0} IOPS ({rand_reads} reads in {rand_elapsed:.1} s)",
            args.rand_depth,
            rand_reads as f64 / rand_elapsed
        );
    }

    let (fio_write, fio_read) = if args.fio {
        let fio_dir = run_dir.path().join("fio");
        std::fs::create_dir_all(&fio_dir).expect("fio dir");
        (
            fio(&fio_dir, "write", args.total_mib, args.depth),
            fio(&fio_dir, "read", args.total_mib, args.depth),
        )
    } else {
        (None, None)
    };
    println!(
        "| sequential 4 MiB, depth {}, {} MiB | r3fs-storage MiB/s | fio MiB/s | ratio |",
        args.depth, args.total_mib
    );
    println!("| --- | --- | --- | --- |");
    for (name, ours, theirs) in [("write", write_mib_s, fio_write), ("read", read_mib_s, fio_read)]
    {
        match theirs {
            Some(fio) => println!("| {name} | {ours:.0} | {fio:.0} | {:.2} |", ours / fio),
            None => println!("| {name} | {ours:.0} | (fio not run) | - |"),
        }
    }
    println!("load average at the end: {}", load_average());
}
