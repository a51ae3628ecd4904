//! fio-shaped reports: the normal text output and `--output-format=json` with fio's field names
//! (`jobs[].read.bw` in KiB/s, `bw_bytes`, `iops`, `runtime` in ms, `slat_ns`/`clat_ns`/`lat_ns`
//! with `percentile`, `usr_cpu`/`sys_cpu` in percent, ...).

use crate::run::GroupResult;
use crate::stats::{JobResult, LatencyStats, PERCENTILES, mean_stdev};
use serde_json::Value;
use std::fmt::Write;

const DIRECTION_NAMES: [&str; 2] = ["read", "write"];

/// What is printed for each group: the merged result (group_reporting) or each clone.
pub fn reported_results(group: &GroupResult) -> Vec<JobResult> {
    if group.group_reporting {
        let mut merged = group.clones[0].clone();
        for clone in &group.clones[1..] {
            merged.merge(clone);
        }
        vec![merged]
    } else {
        group.clones.clone()
    }
}

/// A group's aggregate bandwidth per direction (bytes/s over the longest clone).
fn group_bandwidth(group: &GroupResult) -> [f64; 2] {
    let elapsed = group.clones.iter().map(|c| c.elapsed_ns).max().unwrap_or(0);
    let mut bandwidth = [0.0; 2];
    for (direction, value) in bandwidth.iter_mut().enumerate() {
        let bytes: u64 = group.clones.iter().map(|c| c.directions[direction].bytes).sum();
        *value = crate::stats::rate(bytes, elapsed);
    }
    bandwidth
}

/// `value` with up to 4 significant digits and a unit prefix: `2048`, `18.8`, `72.3k`.
pub fn format_scaled(value: f64, base: f64, units: &[&str]) -> String {
    let mut value = value.max(0.0);
    let mut unit = 0;
    while value >= 10_000.0 && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    let digits = if unit == 0 || value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$}{}", units[unit])
}

/// A bandwidth: `2048MiB/s` (base 1024) or `2147MB/s` (base 1000).
pub fn format_rate(bytes_per_second: f64, base: f64) -> String {
    format!("{}/s", format_size(bytes_per_second, base))
}

pub fn format_size(bytes: f64, base: f64) -> String {
    if base == 1024.0 {
        format_scaled(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"])
    } else {
        format_scaled(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB"])
    }
}

/// fio's rule: microseconds once the minimum passes 9999 ns, milliseconds past 9999 us.
fn latency_unit(min_ns: u64) -> (&'static str, f64) {
    if min_ns > 9_999_999 {
        ("msec", 1e6)
    } else if min_ns > 9_999 {
        ("usec", 1e3)
    } else {
        ("nsec", 1.0)
    }
}

fn latency_line(out: &mut String, label: &str, stats: &LatencyStats) {
    let (unit, divisor) = latency_unit(stats.min_ns);
    let _ = writeln!(
        out,
        "    {label} ({unit}): min={:.0}, max={:.0}, avg={:.2}, stdev={:.2}",
        stats.min_ns as f64 / divisor,
        stats.max_ns as f64 / divisor,
        stats.mean_ns() / divisor,
        stats.stdev_ns() / divisor
    );
}

fn percentile_lines(out: &mut String, stats: &LatencyStats) {
    let top = stats.percentile_ns(PERCENTILES[PERCENTILES.len() - 1]);
    let (unit, divisor) = if top > 99_999_999 {
        ("msec", 1e6)
    } else if top > 99_999 {
        ("usec", 1e3)
    } else {
        ("nsec", 1.0)
    };
    let values: Vec<u64> = PERCENTILES
        .iter()
        .map(|&p| (stats.percentile_ns(p) as f64 / divisor).round() as u64)
        .collect();
    let width = values.iter().map(|v| v.to_string().len()).max().unwrap_or(1).max(5);
    let _ = writeln!(out, "    clat percentiles ({unit}):");
    for (row, chunk) in PERCENTILES.iter().zip(&values).collect::<Vec<_>>().chunks(4).enumerate() {
        let cells: Vec<String> = chunk
            .iter()
            .map(|(p, v)| format!("{:>5.2}th=[{:>width$}]", p, v, width = width))
            .collect();
        let last = (row + 1) * 4 >= PERCENTILES.len();
        let _ = writeln!(out, "     | {}{}", cells.join(", "), if last { "" } else { "," });
    }
}

/// The normal (text) report.
pub fn text(groups: &[GroupResult]) -> String {
    let mut out = String::new();
    let date = local_time_text();
    let pid = std::process::id();
    for group in groups {
        let group_bw = group_bandwidth(group);
        for result in reported_results(group) {
            let _ = writeln!(
                out,
                "{}: (groupid={}, jobs={}): err={:>2}: pid={pid}: {date}",
                result.name, result.group_id, result.jobs, result.error
            );
            for (direction, name) in DIRECTION_NAMES.iter().enumerate() {
                let stats = &result.directions[direction];
                if stats.ios == 0 {
                    continue;
                }
                let bw = result.bandwidth(direction);
                let _ = writeln!(
                    out,
                    "  {name}: IOPS={}, BW={} ({})({}/{}msec)",
                    format_scaled(result.iops(direction), 1000.0, &["", "k", "M", "G"]),
                    format_rate(bw, 1024.0),
                    format_rate(bw, 1000.0),
                    format_size(stats.bytes as f64, 1024.0),
                    result.elapsed_ns / 1_000_000
                );
                if !result.synchronous_engine {
                    latency_line(&mut out, "slat", &stats.slat);
                }
                latency_line(&mut out, "clat", &stats.clat);
                latency_line(&mut out, " lat", &stats.lat);
                percentile_lines(&mut out, &stats.clat);
                if !stats.bw_samples.is_empty() {
                    let kib: Vec<f64> = stats.bw_samples.iter().map(|b| b / 1024.0).collect();
                    let (mean, stdev) = mean_stdev(&kib);
                    let (unit, divisor) = if mean >= 10_000.0 * 1024.0 {
                        ("GiB/s", 1024.0 * 1024.0)
                    } else if mean >= 10_000.0 {
                        ("MiB/s", 1024.0)
                    } else {
                        ("KiB/s", 1.0)
                    };
                    let min = kib.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = kib.iter().copied().fold(0.0, f64::max);
                    let per = percent_of(mean * 1024.0 * result.jobs as f64, group_bw[direction]);
                    let _ = writeln!(
                        out,
                        "   bw ({unit:>7}): min={:>5.0}, max={:>5.0}, per={per:.2}%, avg={:.2}, stdev={:.2}, samples={}",
                        min / divisor,
                        max / divisor,
                        mean / divisor,
                        stdev / divisor,
                        kib.len()
                    );
                    let (mean, stdev) = mean_stdev(&stats.iops_samples);
                    let min = stats.iops_samples.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = stats.iops_samples.iter().copied().fold(0.0, f64::max);
                    let _ = writeln!(
                        out,
                        "   iops        : min={min:>5.0}, max={max:>5.0}, avg={mean:.2}, stdev={stdev:.2}, samples={}",
                        stats.iops_samples.len()
                    );
                }
            }
            let _ = writeln!(
                out,
                "  cpu          : usr={:.2}%, sys={:.2}%, ctx={}, majf={}, minf={}",
                result.cpu_percent(result.user_cpu_ns),
                result.cpu_percent(result.system_cpu_ns),
                result.context_switches,
                result.major_faults,
                result.minor_faults
            );
            out.push('\n');
        }
        let _ = writeln!(out, "Run status group {} (all jobs):", group.group_id);
        for (direction, name) in ["READ", "WRITE"].iter().enumerate() {
            let bytes: u64 = group.clones.iter().map(|c| c.directions[direction].bytes).sum();
            if bytes == 0 {
                continue;
            }
            let per_clone: Vec<f64> = group.clones.iter().map(|c| c.bandwidth(direction)).collect();
            let low = per_clone.iter().copied().fold(f64::INFINITY, f64::min);
            let high = per_clone.iter().copied().fold(0.0, f64::max);
            let runs: Vec<u64> = group.clones.iter().map(|c| c.elapsed_ns / 1_000_000).collect();
            let _ = writeln!(
                out,
                "  {name:>5}: bw={} ({}), {}-{} ({}-{}), io={} ({}), run={}-{}msec",
                format_rate(group_bw[direction], 1024.0),
                format_rate(group_bw[direction], 1000.0),
                format_rate(low, 1024.0),
                format_rate(high, 1024.0),
                format_rate(low, 1000.0),
                format_rate(high, 1000.0),
                format_size(bytes as f64, 1024.0),
                format_size(bytes as f64, 1000.0),
                runs.iter().min().copied().unwrap_or(0),
                runs.iter().max().copied().unwrap_or(0)
            );
        }
        out.push('\n');
    }
    out
}

fn percent_of(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { 100.0 * part / whole } else { 0.0 }
}

/// A JSON value whose objects keep their keys in fio's order (serde_json's own map sorts them).
#[derive(Debug)]
pub enum Node {
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    Leaf(Value),
}

impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Node::Leaf(value) => value.serialize(serializer),
            Node::Array(items) => items.serialize(serializer),
            Node::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

pub trait IntoNode {
    fn into_node(self) -> Node;
}

impl IntoNode for Node {
    fn into_node(self) -> Node {
        self
    }
}

macro_rules! leaf_types {
    ($($t:ty),*) => {$(
        impl IntoNode for $t {
            fn into_node(self) -> Node {
                Node::Leaf(Value::from(self))
            }
        }
    )*};
}
leaf_types!(u64, usize, i32, f64, String, &str, Value);

macro_rules! object {
    ($($key:expr => $value:expr),* $(,)?) => {
        Node::Object(vec![$(($key.to_string(), IntoNode::into_node($value))),*])
    };
}

fn latency_json(stats: &LatencyStats, percentiles: bool) -> Node {
    let mut object = object! {
        "min" => stats.min_ns,
        "max" => stats.max_ns,
        "mean" => stats.mean_ns(),
        "stddev" => stats.stdev_ns(),
        "N" => stats.count,
    };
    if percentiles && stats.count > 0 {
        let table = PERCENTILES
            .iter()
            .map(|&p| (format!("{p:.6}"), stats.percentile_ns(p).into_node()))
            .collect();
        if let Node::Object(entries) = &mut object {
            entries.push(("percentile".to_string(), Node::Object(table)));
        }
    }
    object
}

fn direction_json(result: &JobResult, direction: usize, group_bw: f64) -> Node {
    let stats = &result.directions[direction];
    let bw = result.bandwidth(direction);
    let kib: Vec<f64> = stats.bw_samples.iter().map(|b| b / 1024.0).collect();
    let (bw_mean, bw_dev) = mean_stdev(&kib);
    let (iops_mean, iops_dev) = mean_stdev(&stats.iops_samples);
    let min_of = |values: &[f64]| values.iter().copied().fold(f64::INFINITY, f64::min);
    let max_of = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    let empty = kib.is_empty();
    object! {
        "io_bytes" => stats.bytes,
        "io_kbytes" => stats.bytes / 1024,
        "bw_bytes" => bw.round() as u64,
        "bw" => (bw / 1024.0).round() as u64,
        "iops" => result.iops(direction),
        "runtime" => if stats.ios == 0 { 0 } else { result.elapsed_ns / 1_000_000 },
        "total_ios" => stats.ios,
        "short_ios" => 0u64,
        "drop_ios" => 0u64,
        "slat_ns" => latency_json(&stats.slat, false),
        "clat_ns" => latency_json(&stats.clat, true),
        "lat_ns" => latency_json(&stats.lat, false),
        "bw_min" => if empty { 0 } else { min_of(&kib).round() as u64 },
        "bw_max" => if empty { 0 } else { max_of(&kib).round() as u64 },
        "bw_agg" => percent_of(bw_mean * 1024.0 * result.jobs as f64, group_bw),
        "bw_mean" => bw_mean,
        "bw_dev" => bw_dev,
        "bw_samples" => kib.len(),
        "iops_min" => if empty { 0 } else { min_of(&stats.iops_samples).round() as u64 },
        "iops_max" => if empty { 0 } else { max_of(&stats.iops_samples).round() as u64 },
        "iops_mean" => iops_mean,
        "iops_stddev" => iops_dev,
        "iops_samples" => stats.iops_samples.len(),
    }
}

fn options_json(options: &[(String, String)]) -> Node {
    Node::Object(options.iter().map(|(k, v)| (k.clone(), v.clone().into_node())).collect())
}

/// The `--output-format=json` report (serialize it with serde_json).
pub fn json(groups: &[GroupResult], global: &[(String, String)]) -> Node {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut jobs = Vec::new();
    for group in groups {
        let group_bw = group_bandwidth(group);
        for result in reported_results(group) {
            jobs.push(object! {
                "jobname" => result.name.as_str(),
                "groupid" => result.group_id,
                "jobs" => result.jobs,
                "error" => result.error,
                "eta" => 0u64,
                "elapsed" => result.elapsed_ns.div_ceil(1_000_000_000),
                "job options" => options_json(&result.options),
                "read" => direction_json(&result, 0, group_bw[0]),
                "write" => direction_json(&result, 1, group_bw[1]),
                "job_runtime" => result.elapsed_ns / 1_000_000,
                "usr_cpu" => result.cpu_percent(result.user_cpu_ns),
                "sys_cpu" => result.cpu_percent(result.system_cpu_ns),
                "ctx" => result.context_switches,
                "majf" => result.major_faults,
                "minf" => result.minor_faults,
            });
        }
    }
    object! {
        "r3fs-bench version" => concat!("r3fs-bench-", env!("CARGO_PKG_VERSION")),
        "timestamp" => now.as_secs(),
        "timestamp_ms" => now.as_millis() as u64,
        "time" => local_time_text(),
        "global options" => options_json(global),
        "jobs" => Node::Array(jobs),
        "disk_util" => Value::Array(Vec::new()),
    }
}

/// `Tue Nov 24 19:33:17 2026`, in local time, as fio prints it.
fn local_time_text() -> String {
    // SAFETY: time/localtime_r/strftime with a stack buffer of the length passed.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut broken_down: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut broken_down).is_null() {
            return String::new();
        }
        let mut buffer = [0u8; 64];
        let written = libc::strftime(
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            c"%a %b %e %H:%M:%S %Y".as_ptr(),
            &broken_down,
        );
        String::from_utf8_lossy(&buffer[..written]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_scaled_like_fio() {
        assert_eq!(format_rate(2048.0 * 1048576.0, 1024.0), "2048MiB/s");
        assert_eq!(format_rate(2048.0 * 1048576.0, 1000.0), "2147MB/s");
        assert_eq!(format_rate(18.8 * 1048576.0, 1024.0), "18.8MiB/s");
        assert_eq!(format_scaled(4801.0, 1000.0, &["", "k"]), "4801");
        assert_eq!(format_scaled(72_345.0, 1000.0, &["", "k"]), "72.3k");
        assert_eq!(format_size(10.0 * 1073741824.0, 1024.0), "10.0GiB");
    }
}
