//! r3fs-sim: a deterministic simulator of r3fs replication and chain management.
//!
//! One thread runs mgmtd's chain logic ([`r3fs_mgmtd::chain_state`], fed by a heartbeat failure
//! detector) and the CRAQ replicas of several chains ([`r3fs_craq::Replica`], the production state
//! machine) over in-memory chunk stores with the crash behaviour of engine/r3fs-chunk, plus clients
//! that write and read with retries. A seeded RNG drives every choice: message delays, losses,
//! corruption and reordering, partitions, node crashes with torn writes, and restarts. After every
//! step the [`checker`] verifies that no acknowledged write is lost, that reads return only
//! committed data and never go back behind what the same client observed, and, once faults stop,
//! that every chain's replicas converge. A failing run prints its seed; `--seed N` replays it.
//!
//! Key types: [`SimConfig`] (the run's shape, with [`PlantedBug`]s to prove the checks bite),
//! [`World`] (one run), [`RunReport`] / [`SweepReport`], [`run`] and [`sweep`].
//!
//! Invariants: the simulator never reads the wall clock or an unseeded random source, and iterates
//! only ordered collections, so a (config, seed) pair always produces the same run. Planted bugs
//! act at the simulator's edge (a fabricated message, a hidden pending version, a daemon policy);
//! production code paths never change. Design: docs/design/simulation.md.

pub mod checker;
pub mod config;
pub mod mgmtd;
pub mod net;
pub mod report;
pub mod rng;
pub mod store;
pub mod world;

pub use checker::{Violation, ViolationKind};
pub use config::{ConfigError, FaultConfig, PlantedBug, SimConfig, Timing};
pub use report::{RunReport, RunStats, SweepReport};
pub use world::World;

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs one seed (`config.seed`) to its end.
pub fn run(config: &SimConfig) -> Result<RunReport, ConfigError> {
    Ok(World::new(config.clone())?.run())
}

/// Runs every seed of `seeds` with `config` on `jobs` threads and calls `on_report` (from the
/// worker threads, in completion order) for each. Each run is single-threaded and deterministic;
/// threads only split the seeds. With `stop_on_failure`, no new seed starts after a failure.
pub fn sweep(
    config: &SimConfig,
    seeds: Range<u64>,
    jobs: usize,
    stop_on_failure: bool,
    on_report: &(dyn Fn(&RunReport) + Sync),
) -> Result<SweepReport, ConfigError> {
    config.validate()?;
    let next = AtomicU64::new(seeds.start);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let totals = Mutex::new(SweepReport::default());
    let worker = || {
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let seed = next.fetch_add(1, Ordering::Relaxed);
            if seed >= seeds.end {
                return;
            }
            let world = World::new(SimConfig { seed, ..config.clone() })
                .expect("validated above; the seed is not part of validation");
            let report = world.run();
            on_report(&report);
            let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
            totals.seeds_run += 1;
            totals.totals.add(&report.stats);
            if !report.passed() {
                totals.failures.push(report);
                if stop_on_failure {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(worker);
        }
    });
    let mut report = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    report.failures.sort_by_key(|r| r.seed);
    Ok(report)
}
