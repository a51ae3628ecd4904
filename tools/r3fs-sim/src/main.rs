//! `r3fs-sim`: runs the deterministic simulator over a range of seeds (or replays one) and prints
//! each failing seed first, then a summary. Exit status 1 when any seed failed.
//!
//! ```text
//! r3fs-sim --seeds 1000                      # seeds 0..1000
//! r3fs-sim --seed 4711 -v                    # replay one seed with an event trace
//! r3fs-sim --seeds 200 --plant-bug early-commit
//! cargo run --release -p r3fs-sim -- --seeds 100000
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use r3fs_sim::{PlantedBug, RunReport, SimConfig};
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "r3fs-sim",
    version,
    about = "Deterministic simulation of r3fs replication and chain management"
)]
struct Args {
    /// How many seeds to run, starting at --start-seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    start_seed: u64,
    /// Replay exactly this seed (overrides --seeds / --start-seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Events per seed while faults are injected.
    #[arg(long)]
    steps: Option<u64>,
    /// Events allowed after faults stop for the cluster to converge.
    #[arg(long)]
    heal_steps_max: Option<u64>,
    /// Storage nodes.
    #[arg(long)]
    nodes: Option<usize>,
    /// Chains (each with --replicas targets on distinct nodes).
    #[arg(long)]
    chains: Option<usize>,
    #[arg(long)]
    replicas: Option<usize>,
    #[arg(long)]
    clients: Option<usize>,
    /// Run without injected faults.
    #[arg(long)]
    no_faults: bool,
    /// Let delayed messages be overtaken on their own link (a reconnect); by default links are
    /// FIFO, as r3fs-craq assumes.
    #[arg(long)]
    reorder_within_links: bool,
    /// Swap in a known bug to see the checks catch it: early-commit, serve-pending, skip-resync,
    /// rejoin-serving, forget-staged, unleased-reads.
    #[arg(long, value_parser = parse_bug)]
    plant_bug: Option<PlantedBug>,
    /// Worker threads for a sweep (each run stays single-threaded and deterministic).
    #[arg(long)]
    jobs: Option<usize>,
    /// Stop starting new seeds after the first failure.
    #[arg(long)]
    fail_fast: bool,
    /// -v: trace every simulator event (best with --seed); -vv: also the replicas' debug logs.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_bug(name: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug {name:?}; one of {}", names.join(", "))
    })
}

fn replay_command(args: &Args, config: &SimConfig, seed: u64) -> String {
    let mut command = format!("r3fs-sim --seed {seed} --steps {}", config.steps);
    if let Some(bug) = config.plant_bug {
        command.push_str(&format!(" --plant-bug {bug}"));
    }
    for (flag, value) in [
        ("--nodes", args.nodes),
        ("--chains", args.chains),
        ("--replicas", args.replicas),
        ("--clients", args.clients),
    ] {
        if let Some(value) = value {
            command.push_str(&format!(" {flag} {value}"));
        }
    }
    if args.no_faults {
        command.push_str(" --no-faults");
    }
    if args.reorder_within_links {
        command.push_str(" --reorder-within-links");
    }
    command + " -v"
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.verbose > 0 {
        let filter =
            if args.verbose > 1 { "r3fs_sim=debug,r3fs_craq=debug" } else { "r3fs_sim=debug" };
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_target(false)
            .without_time()
            .with_writer(std::io::stdout)
            .init();
    }
    let mut config = SimConfig::default();
    if let Some(steps) = args.steps {
        config.steps = steps;
    }
    if let Some(heal) = args.heal_steps_max {
        config.heal_steps_max = heal;
    }
    if let Some(nodes) = args.nodes {
        config.nodes = nodes;
        config.faults.nodes_down_max = nodes;
    }
    if let Some(chains) = args.chains {
        config.chains = chains;
    }
    if let Some(replicas) = args.replicas {
        config.replicas = replicas;
    }
    if let Some(clients) = args.clients {
        config.clients = clients;
    }
    config.faults.enabled = !args.no_faults;
    config.faults.reorder_within_links = args.reorder_within_links;
    config.plant_bug = args.plant_bug;
    config.validate().context("check the simulation parameters")?;

    let (seeds, jobs) = match args.seed {
        Some(seed) => (seed..seed + 1, 1),
        None => {
            let end = args.start_seed.checked_add(args.seeds).context("seed range overflows")?;
            let jobs = args
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            (args.start_seed..end, jobs)
        }
    };
    if args.seed.is_some() {
        // The seed first, so that even a run that hangs or panics names what to replay.
        println!("seed {}", seeds.start);
    }
    let started = Instant::now();
    let out = Mutex::new(std::io::stdout());
    let single = args.seed.is_some();
    let on_report = |report: &RunReport| {
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        match &report.violation {
            Some(violation) => {
                // Written as one block so that parallel workers do not interleave lines.
                let _ = writeln!(
                    out,
                    "seed {}: FAILED {violation}\n  {}\n  replay: {}",
                    report.seed,
                    report.stats,
                    replay_command(&args, &config, report.seed)
                );
            }
            None if single => {
                let _ = writeln!(out, "seed {}: passed; {}", report.seed, report.stats);
            }
            None => {}
        }
    };
    let sweep = r3fs_sim::sweep(&config, seeds, jobs, args.fail_fast, &on_report)
        .context("run the simulation")?;
    let elapsed = started.elapsed();
    println!(
        "{sweep}; {:.1} s{}",
        elapsed.as_secs_f64(),
        config.plant_bug.map_or(String::new(), |b| format!("; planted bug: {b}"))
    );
    if !sweep.failures.is_empty() {
        let seeds: Vec<String> =
            sweep.failures.iter().take(20).map(|r| r.seed.to_string()).collect();
        bail!(
            "{} of {} seeds failed (first: {})",
            sweep.failures.len(),
            sweep.seeds_run,
            seeds.join(", ")
        );
    }
    Ok(())
}
