//! Durable single-key transactions per second: the figure that chose the embedded backend.
//!
//! `cargo bench -p r3fs-kv --bench kv_bench` (set `R3FS_KV_BENCH_SYNCED_TXNS` to change the number
//! of durable transactions per scenario, default 2000, unsynced scenarios run 10x as many; set
//! `R3FS_KV_BENCH_ROUNDS`, default 3, to change how often every scenario runs — the disk is shared
//! and noisy, so scenarios are interleaved round by round and the median is reported). Each
//! scenario writes 100-byte values under distinct keys in a fresh directory under the system temp
//! dir and commits every transaction on its own. "synced" means the commit returned only after
//! fdatasync. The first two lines are raw floors: 100-byte writes each followed by fdatasync,
//! appending (the file grows) and overwriting a preallocated file (no size change, as fjall's
//! preallocated journal). `R3FS_KV_BENCH_ONLY=<substring>` runs only the matching scenarios.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use fjall::{KeyspaceCreateOptions, OptimisticTxDatabase, PersistMode, Readable};
use r3fs_kv::{Durability, FjallConfig, FjallKv, Kv, MemoryKv, ReadMode};

const VALUE: [u8; 100] = [7; 100];

fn key(i: usize) -> Vec<u8> {
    format!("key/{i:010}").into_bytes()
}

struct Row {
    scenario: &'static str,
    txns: usize,
    seconds: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.txns as f64 / self.seconds
    }
}

/// Runs one scenario and logs its figure to stderr (the summary goes to stdout).
fn timed(
    scenario: &'static str,
    txns: usize,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Row> {
    let start = Instant::now();
    let only = std::env::var("R3FS_KV_BENCH_ONLY").unwrap_or_default();
    if !scenario.contains(only.as_str()) {
        return Ok(Row { scenario, txns: 0, seconds: 1.0 });
    }
    run().with_context(|| scenario.to_string())?;
    let row = Row { scenario, txns, seconds: start.elapsed().as_secs_f64() };
    eprintln!(
        "  {:<58} {:>7} txns {:>8.3} s {:>10.0} tx/s",
        row.scenario,
        row.txns,
        row.seconds,
        row.rate()
    );
    Ok(row)
}

fn fdatasync_append(txns: usize) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("log"))?;
    timed("raw: append 100 B + fdatasync", txns, || {
        for _ in 0..txns {
            file.write_all(&VALUE)?;
            file.sync_data()?;
        }
        Ok(())
    })
}

fn fdatasync_overwrite(txns: usize) -> anyhow::Result<Row> {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir()?;
    let file = std::fs::File::create(dir.path().join("log"))?;
    let len = (txns * VALUE.len()) as u64;
    // Written once and synced, so later writes change neither size nor allocation.
    file.write_all_at(&vec![0; len as usize], 0)?;
    file.sync_all()?;
    timed("raw: overwrite 100 B in a written file + fdatasync", txns, || {
        for i in 0..txns {
            file.write_all_at(&VALUE, (i * VALUE.len()) as u64)?;
            file.sync_data()?;
        }
        Ok(())
    })
}

fn fjall_optimistic(txns: usize, mode: PersistMode, scenario: &'static str) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let db = OptimisticTxDatabase::builder(dir.path()).manual_journal_persist(true).open()?;
    let keyspace = db.keyspace("bench", KeyspaceCreateOptions::default)?;
    timed(scenario, txns, || {
        for i in 0..txns {
            let mut tx = db.write_tx()?.durability(Some(mode));
            let key = key(i);
            tx.get(&keyspace, &key)?;
            tx.insert(&keyspace, key, VALUE);
            tx.commit()?.map_err(|_| anyhow::anyhow!("unexpected conflict"))?;
        }
        Ok(())
    })
}

fn redb_immediate(txns: usize) -> anyhow::Result<Row> {
    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bench");
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("redb"))?;
    timed("redb 4.6, one writer, durability Immediate", txns, || {
        for i in 0..txns {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(TABLE)?;
                table.insert(key(i).as_slice(), VALUE.as_slice())?;
            }
            tx.commit()?;
        }
        Ok(())
    })
}

/// `tasks` tasks share `txns` transactions; each does a serializable get and a set.
fn r3fs_kv(
    runtime: &tokio::runtime::Runtime,
    kv: Arc<dyn Kv>,
    txns: usize,
    tasks: usize,
    scenario: &'static str,
) -> anyhow::Result<Row> {
    timed(scenario, txns, || {
        runtime.block_on(async {
            let mut handles = Vec::new();
            for task in 0..tasks {
                let kv = kv.clone();
                handles.push(tokio::spawn(async move {
                    for i in (task..txns).step_by(tasks) {
                        let mut txn = kv.begin().await?;
                        let key = key(i);
                        txn.get(&key, ReadMode::Serializable).await?;
                        txn.set(&key, &VALUE)?;
                        txn.commit().await?;
                    }
                    Ok::<_, r3fs_kv::KvError>(())
                }));
            }
            for handle in handles {
                handle.await??;
            }
            Ok(())
        })
    })
}

fn fjall_kv(durability: Durability) -> anyhow::Result<(tempfile::TempDir, FjallKv)> {
    let dir = tempfile::tempdir()?;
    let kv = FjallKv::open(&FjallConfig { durability, ..FjallConfig::at(dir.path()) })?;
    Ok((dir, kv))
}

/// Runs a FjallKv scenario and reports how many transactions each journal sync carried: a figure
/// that, unlike the rate, does not depend on how busy the shared machine is.
fn fjall_kv_scenario(
    runtime: &tokio::runtime::Runtime,
    durability: Durability,
    txns: usize,
    tasks: usize,
    scenario: &'static str,
) -> anyhow::Result<Row> {
    let (_dir, kv) = fjall_kv(durability)?;
    let row = r3fs_kv(runtime, Arc::new(kv.clone()), txns, tasks, scenario)?;
    let stats = kv.commit_stats();
    if stats.groups > 0 {
        eprintln!(
            "    {} transactions in {} journal writes: {:.1} per write, {} conflicts",
            stats.transactions,
            stats.groups,
            stats.transactions as f64 / stats.groups as f64,
            stats.conflicts
        );
    }
    Ok(row)
}

fn main() -> anyhow::Result<()> {
    let synced: usize = match std::env::var("R3FS_KV_BENCH_SYNCED_TXNS") {
        Ok(text) => text.parse().context("R3FS_KV_BENCH_SYNCED_TXNS")?,
        Err(_) => 2_000,
    };
    let rounds: usize = match std::env::var("R3FS_KV_BENCH_ROUNDS") {
        Ok(text) => text.parse().context("R3FS_KV_BENCH_ROUNDS")?,
        Err(_) => 3,
    };
    let unsynced = synced * 10;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows: Vec<Row> = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        rows.push(fdatasync_append(synced)?);
        rows.push(fdatasync_overwrite(synced)?);
        rows.push(fjall_optimistic(
            synced,
            PersistMode::SyncData,
            "fjall 3.1 OptimisticTxDatabase, one writer, synced",
        )?);
        rows.push(redb_immediate(synced)?);
        rows.push(fjall_kv_scenario(
            &runtime,
            Durability::SyncData,
            synced,
            1,
            "r3fs-kv FjallKv, 1 task, synced",
        )?);
        rows.push(fjall_kv_scenario(
            &runtime,
            Durability::SyncData,
            synced * 4,
            16,
            "r3fs-kv FjallKv, 16 tasks, synced (group commit)",
        )?);
        rows.push(fjall_kv_scenario(
            &runtime,
            Durability::SyncData,
            synced * 8,
            64,
            "r3fs-kv FjallKv, 64 tasks, synced (group commit)",
        )?);
        rows.push(fjall_optimistic(
            unsynced,
            PersistMode::Buffer,
            "fjall 3.1 OptimisticTxDatabase, one writer, unsynced",
        )?);
        rows.push(fjall_kv_scenario(
            &runtime,
            Durability::Buffer,
            unsynced,
            1,
            "r3fs-kv FjallKv, 1 task, unsynced (Buffer)",
        )?);
        rows.push(r3fs_kv(
            &runtime,
            Arc::new(MemoryKv::default()),
            unsynced,
            1,
            "r3fs-kv MemoryKv, 1 task",
        )?);
    }
    println!("single-key transactions, each committed on its own (synced = fdatasync before ack)");
    println!("median of {rounds} interleaved rounds; min..max in brackets");
    let mut scenarios: Vec<&'static str> = Vec::new();
    for row in &rows {
        if !scenarios.contains(&row.scenario) {
            scenarios.push(row.scenario);
        }
    }
    for scenario in scenarios {
        let mut rates: Vec<f64> =
            rows.iter().filter(|r| r.scenario == scenario).map(Row::rate).collect();
        rates.sort_by(f64::total_cmp);
        let (Some(min), Some(max)) = (rates.first(), rates.last()) else { continue };
        let median = rates[rates.len() / 2];
        println!("{scenario:<58} {median:>9.0} tx/s  [{min:.0}..{max:.0}]");
    }
    Ok(())
}
