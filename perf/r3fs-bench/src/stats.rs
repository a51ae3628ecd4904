//! What a job measured: per direction, bytes and IOs, latencies (exact min/max/mean/stdev by
//! Welford's method, percentiles from an hdrhistogram), bandwidth and IOPS samples; per job,
//! elapsed time and the thread's CPU time from getrusage.

use hdrhistogram::Histogram;

/// fio's default percentile list.
pub const PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// Latencies in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyStats {
    histogram: Histogram<u64>,
    pub count: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    mean_ns: f64,
    /// Sum of squared differences from the mean (Welford).
    m2: f64,
}

impl Default for LatencyStats {
    fn default() -> Self {
        LatencyStats {
            // Three significant digits, growing as needed: percentiles are within 0.1%.
            histogram: Histogram::new(3).expect("3 significant digits is valid"),
            count: 0,
            min_ns: 0,
            max_ns: 0,
            mean_ns: 0.0,
            m2: 0.0,
        }
    }
}

impl LatencyStats {
    pub fn record(&mut self, nanos: u64) {
        let nanos = nanos.max(1);
        // The histogram grows to fit (auto-resize); it can only fail past u64's range.
        if self.histogram.record(nanos).is_err() {
            self.histogram.saturating_record(nanos);
        }
        if self.count == 0 || nanos < self.min_ns {
            self.min_ns = nanos;
        }
        self.max_ns = self.max_ns.max(nanos);
        self.count += 1;
        let delta = nanos as f64 - self.mean_ns;
        self.mean_ns += delta / self.count as f64;
        self.m2 += delta * (nanos as f64 - self.mean_ns);
    }

    pub fn mean_ns(&self) -> f64 {
        self.mean_ns
    }

    /// Sample standard deviation, as fio prints.
    pub fn stdev_ns(&self) -> f64 {
        if self.count < 2 { 0.0 } else { (self.m2 / (self.count - 1) as f64).sqrt() }
    }

    pub fn percentile_ns(&self, percentile: f64) -> u64 {
        if self.count == 0 { 0 } else { self.histogram.value_at_quantile(percentile / 100.0) }
    }

    /// Combines two sets (Chan et al.'s parallel variance).
    pub fn merge(&mut self, other: &LatencyStats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        let total = self.count + other.count;
        let delta = other.mean_ns - self.mean_ns;
        self.m2 +=
            other.m2 + delta * delta * (self.count as f64 * other.count as f64) / total as f64;
        self.mean_ns += delta * other.count as f64 / total as f64;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count = total;
        self.histogram.add(&other.histogram).expect("auto-resizing histograms always add");
    }
}

/// Mean and sample standard deviation of a list.
pub fn mean_stdev(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let variance =
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    (mean, variance.sqrt())
}

#[derive(Clone, Debug, Default)]
pub struct DirectionStats {
    pub bytes: u64,
    pub ios: u64,
    /// Submission latency: IO prepared -> handed to the kernel/daemon (not for sync engines).
    pub slat: LatencyStats,
    /// Completion latency: handed over -> completion seen.
    pub clat: LatencyStats,
    /// Total latency: prepared -> completion seen.
    pub lat: LatencyStats,
    /// Bandwidth samples (bytes/s), one per sampling interval of one job.
    pub bw_samples: Vec<f64>,
    pub iops_samples: Vec<f64>,
}

impl DirectionStats {
    pub fn merge(&mut self, other: &DirectionStats) {
        self.bytes += other.bytes;
        self.ios += other.ios;
        self.slat.merge(&other.slat);
        self.clat.merge(&other.clat);
        self.lat.merge(&other.lat);
        self.bw_samples.extend_from_slice(&other.bw_samples);
        self.iops_samples.extend_from_slice(&other.iops_samples);
    }
}

/// One job clone's results, or a group's when merged for group_reporting.
#[derive(Clone, Debug, Default)]
pub struct JobResult {
    pub name: String,
    pub group_id: usize,
    /// Job clones merged into this result.
    pub jobs: usize,
    /// [read, write].
    pub directions: [DirectionStats; 2],
    /// Wall time from the job's start to its end, including end_fsync.
    pub elapsed_ns: u64,
    /// Per-clone wall times (one entry unless merged), for the group's run=min-max.
    pub clone_elapsed_ns: Vec<u64>,
    pub user_cpu_ns: u64,
    pub system_cpu_ns: u64,
    pub context_switches: u64,
    pub major_faults: u64,
    pub minor_faults: u64,
    /// First errno an IO failed with (fio's err=); 0 when all succeeded.
    pub error: i32,
    pub synchronous_engine: bool,
    pub options: Vec<(String, String)>,
}

impl JobResult {
    pub fn merge(&mut self, other: &JobResult) {
        for (mine, theirs) in self.directions.iter_mut().zip(&other.directions) {
            mine.merge(theirs);
        }
        self.jobs += other.jobs;
        self.elapsed_ns = self.elapsed_ns.max(other.elapsed_ns);
        self.clone_elapsed_ns.extend_from_slice(&other.clone_elapsed_ns);
        self.user_cpu_ns += other.user_cpu_ns;
        self.system_cpu_ns += other.system_cpu_ns;
        self.context_switches += other.context_switches;
        self.major_faults += other.major_faults;
        self.minor_faults += other.minor_faults;
        if self.error == 0 {
            self.error = other.error;
        }
    }

    /// Bytes per second of one direction over the elapsed time.
    pub fn bandwidth(&self, direction: usize) -> f64 {
        rate(self.directions[direction].bytes, self.elapsed_ns)
    }

    pub fn iops(&self, direction: usize) -> f64 {
        rate(self.directions[direction].ios, self.elapsed_ns)
    }

    /// CPU percent of one core over the elapsed time, summed over merged clones as fio does.
    pub fn cpu_percent(&self, cpu_ns: u64) -> f64 {
        if self.elapsed_ns == 0 { 0.0 } else { 100.0 * cpu_ns as f64 / self.elapsed_ns as f64 }
    }
}

pub fn rate(count: u64, elapsed_ns: u64) -> f64 {
    if elapsed_ns == 0 { 0.0 } else { count as f64 * 1e9 / elapsed_ns as f64 }
}

/// The calling thread's resource usage.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadUsage {
    pub user_ns: u64,
    pub system_ns: u64,
    pub context_switches: u64,
    pub major_faults: u64,
    pub minor_faults: u64,
}

impl ThreadUsage {
    pub fn now() -> ThreadUsage {
        // SAFETY: getrusage fills the zeroed struct; RUSAGE_THREAD is Linux's per-thread usage.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
                return ThreadUsage::default();
            }
            usage
        };
        let nanos = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        ThreadUsage {
            user_ns: nanos(usage.ru_utime),
            system_ns: nanos(usage.ru_stime),
            context_switches: (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
            major_faults: usage.ru_majflt as u64,
            minor_faults: usage.ru_minflt as u64,
        }
    }

    pub fn since(self, start: ThreadUsage) -> ThreadUsage {
        ThreadUsage {
            user_ns: self.user_ns.saturating_sub(start.user_ns),
            system_ns: self.system_ns.saturating_sub(start.system_ns),
            context_switches: self.context_switches.saturating_sub(start.context_switches),
            major_faults: self.major_faults.saturating_sub(start.major_faults),
            minor_faults: self.minor_faults.saturating_sub(start.minor_faults),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_stats_are_exact_and_merge_like_one_set() {
        let values: Vec<u64> = (1..=1000).map(|v| v * 1000).collect();
        let mut all = LatencyStats::default();
        let (mut first, mut second) = (LatencyStats::default(), LatencyStats::default());
        for (index, &value) in values.iter().enumerate() {
            all.record(value);
            if index % 3 == 0 { first.record(value) } else { second.record(value) }
        }
        first.merge(&second);
        let as_f64: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        let (mean, stdev) = mean_stdev(&as_f64);
        for stats in [&all, &first] {
            assert_eq!((stats.count, stats.min_ns, stats.max_ns), (1000, 1000, 1_000_000));
            assert!((stats.mean_ns() - mean).abs() < 1e-6, "{}", stats.mean_ns());
            assert!((stats.stdev_ns() - stdev).abs() < 1e-3, "{}", stats.stdev_ns());
            let median = stats.percentile_ns(50.0);
            assert!((499_000..=501_000).contains(&median), "{median}");
        }
    }
}
