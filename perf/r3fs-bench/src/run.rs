//! Runs the jobs: groups in order (a `stonewall` job starts a new group), every clone of a group
//! on its own thread, started together once all have laid out their files; a monitor thread
//! samples bandwidth and IOPS every 500 ms (fio's default `bwavgtime`/`iopsavgtime`) and prints
//! the progress line.

use crate::job::{self, JobPlan, Progress};
use crate::options::{EtaMode, RunOptions};
use crate::report::{format_rate, format_scaled};
use crate::stats::JobResult;
use anyhow::{Context, Result, anyhow};
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Per job, per direction: bandwidth samples (bytes/s) and IOPS samples.
type JobSamples = [(Vec<f64>, Vec<f64>); 2];

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The results of one reporting group, one entry per clone.
#[derive(Debug)]
pub struct GroupResult {
    pub group_id: usize,
    pub group_reporting: bool,
    pub clones: Vec<JobResult>,
}

pub fn run(options: &RunOptions) -> Result<Vec<GroupResult>> {
    let mut groups: Vec<Vec<&crate::options::JobOptions>> = Vec::new();
    for job in &options.jobs {
        if groups.is_empty() || job.stonewall {
            groups.push(Vec::new());
        }
        groups.last_mut().expect("a group was pushed").push(job);
    }
    let show_progress = match options.eta {
        EtaMode::Always => true,
        EtaMode::Never => false,
        EtaMode::Auto => std::io::stderr().is_terminal(),
    };
    let mut results = Vec::new();
    for (group_id, jobs) in groups.into_iter().enumerate() {
        let mut plans = Vec::new();
        for job in &jobs {
            plans.extend(JobPlan::expand(job, group_id)?);
        }
        let group_reporting = jobs.iter().any(|job| job.group_reporting);
        let clones = run_group(plans, show_progress)?;
        results.push(GroupResult { group_id, group_reporting, clones });
    }
    Ok(results)
}

fn run_group(plans: Vec<JobPlan>, show_progress: bool) -> Result<Vec<JobResult>> {
    let count = plans.len();
    let progress: Arc<Vec<Progress>> = Arc::new((0..count).map(|_| Progress::default()).collect());
    let barrier = Arc::new(Barrier::new(count + 1));
    let samples: Arc<Mutex<Vec<JobSamples>>> =
        Arc::new(Mutex::new(vec![Default::default(); count]));
    let mut threads = Vec::new();
    for (index, plan) in plans.iter().cloned().enumerate() {
        let (progress, barrier) = (progress.clone(), barrier.clone());
        let name = format!("{}.{}", plan.options.name, plan.clone_index);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let ready = job::setup(&plan);
                barrier.wait();
                let result = ready.and_then(|ready| job::run(&plan, ready, &progress[index]));
                // A failed job still counts as finished for the monitor.
                progress[index].finished.store(true, Ordering::Relaxed);
                result
            })
            .context("start a job thread")?;
        threads.push(thread);
    }
    barrier.wait();
    let start = Instant::now();
    let monitor = {
        let (progress, samples, plans) = (progress.clone(), samples.clone(), plans.clone());
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || monitor(&plans, &progress, &samples, start, show_progress))
            .context("start the monitor thread")?
    };
    let mut results = Vec::new();
    let mut first_error = None;
    for thread in threads {
        match thread.join().map_err(|_| anyhow!("a job thread panicked"))? {
            Ok(result) => results.push(result),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    monitor.join().map_err(|_| anyhow!("the monitor thread panicked"))?;
    if let Some(error) = first_error {
        return Err(error);
    }
    let samples = samples.lock().map_err(|_| anyhow!("samples lock poisoned"))?;
    for (result, job_samples) in results.iter_mut().zip(samples.iter()) {
        for (direction, (bw, iops)) in result.directions.iter_mut().zip(job_samples) {
            if direction.ios > 0 {
                direction.bw_samples = bw.clone();
                direction.iops_samples = iops.clone();
            }
        }
    }
    Ok(results)
}

fn monitor(
    plans: &[JobPlan],
    progress: &[Progress],
    samples: &Mutex<Vec<JobSamples>>,
    start: Instant,
    show_progress: bool,
) {
    let count = progress.len();
    let mut last = vec![[(0u64, 0u64); 2]; count];
    let mut last_sample = start;
    let mut printer = Printer { last_print: start, previous: [0; 4] };
    let mut printed = false;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let all_done = progress.iter().all(|p| p.finished.load(Ordering::Relaxed));
        let now = Instant::now();
        if now - last_sample >= SAMPLE_INTERVAL {
            let seconds = (now - last_sample).as_secs_f64();
            let mut samples = samples.lock().expect("samples lock");
            for (index, job) in progress.iter().enumerate() {
                if !job.running.load(Ordering::Relaxed) || job.finished.load(Ordering::Relaxed) {
                    continue; // a partial interval at the end would read low
                }
                for direction in 0..2 {
                    let bytes = job.bytes[direction].load(Ordering::Relaxed);
                    let ios = job.ios[direction].load(Ordering::Relaxed);
                    let (last_bytes, last_ios) = last[index][direction];
                    samples[index][direction].0.push((bytes - last_bytes) as f64 / seconds);
                    samples[index][direction].1.push((ios - last_ios) as f64 / seconds);
                    last[index][direction] = (bytes, ios);
                }
            }
            last_sample = now;
        }
        if show_progress && (now - printer.last_print >= PROGRESS_INTERVAL || all_done) {
            print_progress(plans, progress, start, now, &mut printer, all_done);
            printed = true;
        }
        if all_done {
            break;
        }
    }
    if printed {
        eprintln!();
    }
}

struct Printer {
    last_print: Instant,
    /// Totals at the last print: read bytes, write bytes, read IOs, write IOs.
    previous: [u64; 4],
}

fn print_progress(
    plans: &[JobPlan],
    progress: &[Progress],
    start: Instant,
    now: Instant,
    printer: &mut Printer,
    all_done: bool,
) {
    let Printer { last_print, previous } = printer;
    let interval = (now - *last_print).as_secs_f64().max(1e-3);
    *last_print = now;
    let elapsed = (now - start).as_secs_f64();
    let totals = [
        progress.iter().map(|p| p.bytes[0].load(Ordering::Relaxed)).sum::<u64>(),
        progress.iter().map(|p| p.bytes[1].load(Ordering::Relaxed)).sum::<u64>(),
        progress.iter().map(|p| p.ios[0].load(Ordering::Relaxed)).sum::<u64>(),
        progress.iter().map(|p| p.ios[1].load(Ordering::Relaxed)).sum::<u64>(),
    ];
    let previous = std::mem::replace(previous, totals);
    let delta: Vec<f64> = totals
        .iter()
        .zip(previous)
        .map(|(now, before)| now.saturating_sub(before) as f64 / interval)
        .collect();
    let mut status = String::new();
    let mut running = 0;
    let mut fractions = Vec::new();
    for (plan, job) in plans.iter().zip(progress) {
        let finished = job.finished.load(Ordering::Relaxed);
        let options = &plan.options;
        let letter = if finished {
            '_'
        } else {
            running += 1;
            match (options.rw.reads(), options.rw.writes(), options.rw.is_random()) {
                (true, false, false) => 'R',
                (true, false, true) => 'r',
                (false, true, false) => 'W',
                (false, true, true) => 'w',
                (_, _, false) => 'M',
                (_, _, true) => 'm',
            }
        };
        status.push(letter);
        let done = job.bytes[0].load(Ordering::Relaxed) + job.bytes[1].load(Ordering::Relaxed);
        let by_bytes = plan.target_bytes().map(|target| done as f64 / target.max(1) as f64);
        let by_time = options.runtime.map(|runtime| elapsed / runtime.as_secs_f64().max(1e-9));
        let fraction = if finished {
            1.0
        } else {
            by_bytes.into_iter().chain(by_time).fold(0.0, f64::max).min(1.0)
        };
        fractions.push(fraction);
    }
    let fraction = fractions.iter().sum::<f64>() / fractions.len().max(1) as f64;
    let eta_seconds =
        if fraction > 0.0 { (elapsed * (1.0 - fraction) / fraction).round() as u64 } else { 0 };
    let line = format!(
        "Jobs: {running} (f={running}): [{}][{:.1}%][r={},w={}][r={},w={} IOPS][eta {:02}m:{:02}s]",
        run_length(&status),
        100.0 * fraction,
        format_rate(delta[0], 1024.0),
        format_rate(delta[1], 1024.0),
        format_scaled(delta[2], 1000.0, &["", "k", "M", "G"]),
        format_scaled(delta[3], 1000.0, &["", "k", "M", "G"]),
        eta_seconds / 60,
        eta_seconds % 60
    );
    let mut stderr = std::io::stderr().lock();
    if std::io::stderr().is_terminal() {
        let _ = write!(stderr, "\r{line}\x1b[K");
    } else if !all_done {
        let _ = writeln!(stderr, "{line}");
    }
    let _ = stderr.flush();
}

/// `WWWW_` -> `W(4)_`, as fio compresses its status string.
fn run_length(status: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = status.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        let mut end = index;
        while end < chars.len() && chars[end] == chars[index] {
            end += 1;
        }
        match end - index {
            1 => out.push(chars[index]),
            n => out.push_str(&format!("{}({n})", chars[index])),
        }
        index = end;
    }
    out
}
