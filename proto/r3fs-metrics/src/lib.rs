//! Metrics every r3fs daemon records and exposes.
//!
//! Key types: [`Registry`] (families of labelled series; [`global`] is the one each daemon uses),
//! [`Counter`], [`Gauge`], [`Latency`] (an hdrhistogram of microseconds exposed as a Prometheus
//! summary with windowed quantiles), [`Sample`] (one number of a snapshot, what the collector
//! stores), [`MetricsConfig`] (the `[metrics]` section of every daemon's config) and
//! [`Exporter`] (the `/metrics` HTTP endpoint and the push loop to r3fs-monitor, on their own
//! tokio thread so a daemon's runtime, glommio or tokio, does not matter).
//!
//! Invariants:
//! - Names are `r3fs_<service>_<thing>_<unit>`; [`valid_name`] is checked when a family is
//!   created, and a family keeps one kind and one help text for its life.
//! - Label cardinality is bounded: a family holds at most [`SERIES_PER_FAMILY_MAX`] series. A
//!   series beyond the bound is handed out detached (recording into it is harmless and never
//!   exposed) and `r3fs_metrics_series_dropped_total` counts it, so a label bug cannot grow a
//!   daemon's memory or a ClickHouse table without bound.
//! - Recording never blocks on IO: counters and gauges are atomics, a latency takes one
//!   uncontended per-series mutex.
//! - [`render`] and [`parse`] round-trip: what a daemon exposes is what the collector stores.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod http;
mod text;

pub use config::MetricsConfig;
pub use http::{
    Exporter, ExporterError, INSTANCE_HEADER, Request, Response, SERVICE_HEADER, http_get,
    http_post, serve,
};
pub use text::{ParseError, parse, render, render_samples};

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most series (label combinations) one family holds; more are detached and counted.
pub const SERIES_PER_FAMILY_MAX: usize = 1024;
/// Most labels one series carries.
pub const LABELS_PER_SERIES_MAX: usize = 8;
/// Quantiles of a latency summary cover the last full window plus the current one.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);
/// Largest latency a histogram tracks exactly (one hour in microseconds); longer ones saturate.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Quantiles every latency summary exposes.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
const DROPPED_SERIES: &str = "r3fs_metrics_series_dropped_total";

/// The kind of a family, as Prometheus's `# TYPE` line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// One number of a snapshot: a counter or gauge value, or one quantile/count/sum of a summary
/// (Prometheus naming: `<name>{quantile="0.99"}`, `<name>_count`, `<name>_sum`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The labels as Prometheus writes them inside the braces: `a="1",b="2"`.
    pub fn labels_text(&self) -> String {
        text::labels_text(&self.labels)
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (states, queue lengths, bytes used).
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct LatencyInner {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    rotated_at: Instant,
    count: u64,
    sum_us: u64,
}

impl LatencyInner {
    fn new() -> Self {
        let histogram = || {
            // Bounds are constants that hdrhistogram accepts (low 1, high >= 2, 3 digits).
            Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds")
        };
        LatencyInner {
            current: histogram(),
            previous: histogram(),
            rotated_at: Instant::now(),
            count: 0,
            sum_us: 0,
        }
    }

    fn rotate_if_due(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.rotated_at);
        if age >= LATENCY_WINDOW {
            if age >= 2 * LATENCY_WINDOW {
                // Nothing recorded in the last full window is older than two windows.
                self.previous.reset();
                self.current.reset();
            } else {
                std::mem::swap(&mut self.previous, &mut self.current);
                self.current.reset();
            }
            self.rotated_at = now;
        }
    }
}

/// A latency distribution in microseconds: exposed as quantiles over the recent window
/// ([`LATENCY_WINDOW`]) plus a cumulative count and sum.
#[derive(Clone, Debug)]
pub struct Latency(Arc<Mutex<LatencyInner>>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Arc::new(Mutex::new(LatencyInner::new())))
    }
}

impl Latency {
    pub fn record_us(&self, us: u64) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.rotate_if_due(Instant::now());
        inner.current.saturating_record(us.clamp(1, LATENCY_MAX_US));
        inner.count += 1;
        inner.sum_us = inner.sum_us.saturating_add(us);
    }

    pub fn record(&self, elapsed: Duration) {
        self.record_us(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records the time since `start`.
    pub fn record_since(&self, start: Instant) {
        self.record(start.elapsed());
    }

    /// (quantile values over the window, cumulative count, cumulative sum in microseconds).
    fn summary(&self) -> (Vec<(f64, u64)>, u64, u64) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.rotate_if_due(Instant::now());
        let mut merged = inner.previous.clone();
        // Same bounds on both histograms: the add cannot fail.
        let _ = merged.add(&inner.current);
        let quantiles = QUANTILES
            .iter()
            .map(|&q| (q, if merged.is_empty() { 0 } else { merged.value_at_quantile(q) }))
            .collect();
        (quantiles, inner.count, inner.sum_us)
    }
}

#[derive(Clone, Debug)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Latency(Latency),
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    help: String,
    series: BTreeMap<Vec<(String, String)>, Series>,
}

/// Why a metric could not be registered. These are programming errors of the caller (a bad
/// name, one name used with two kinds); [`Registry`]'s convenience methods log them once and
/// hand out a detached series instead of failing the daemon.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("metric name {0:?} is not r3fs_<service>_<thing>_<unit> in [a-z0-9_]")]
    BadName(String),
    #[error("label name {0:?} is not [a-z_][a-z0-9_]*")]
    BadLabel(String),
    #[error("metric {name} is a {existing} and cannot be registered as a {requested}")]
    KindMismatch { name: String, existing: &'static str, requested: &'static str },
    #[error("metric {0} has more than {LABELS_PER_SERIES_MAX} labels")]
    TooManyLabels(String),
}

/// Families of labelled series, by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
    dropped_series: Counter,
}

/// The process-wide registry every daemon records into.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::new)
}

/// `r3fs_<service>_<thing>_<unit>`: lower-case ASCII, digits and underscores, at least three
/// parts after the `r3fs_` prefix.
pub fn valid_name(name: &str) -> bool {
    name.starts_with("r3fs_")
        && name.split('_').filter(|p| !p.is_empty()).count() >= 4
        && !name.ends_with('_')
        && !name.contains("__")
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_label(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name != "quantile"
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Result<Option<Series>, RegisterError> {
        if !valid_name(name) {
            return Err(RegisterError::BadName(name.to_string()));
        }
        if labels.len() > LABELS_PER_SERIES_MAX {
            return Err(RegisterError::TooManyLabels(name.to_string()));
        }
        if let Some((bad, _)) = labels.iter().find(|(k, _)| !valid_label(k)) {
            return Err(RegisterError::BadLabel(bad.to_string()));
        }
        let mut key: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        key.sort();
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            kind,
            help: help.to_string(),
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            return Err(RegisterError::KindMismatch {
                name: name.to_string(),
                existing: family.kind.as_str(),
                requested: kind.as_str(),
            });
        }
        if let Some(series) = family.series.get(&key) {
            return Ok(Some(series.clone()));
        }
        if family.series.len() >= SERIES_PER_FAMILY_MAX {
            self.dropped_series.inc();
            return Ok(None);
        }
        let series = match kind {
            Kind::Counter => Series::Counter(Counter::default()),
            Kind::Gauge => Series::Gauge(Gauge::default()),
            Kind::Summary => Series::Latency(Latency::default()),
        };
        family.series.insert(key, series.clone());
        Ok(Some(series))
    }

    fn report(error: &RegisterError) {
        tracing::error!(%error, "metric not registered; recording into a detached series");
    }

    /// The counter `name{labels}`, created on first use. Callers on hot paths keep the handle.
    pub fn try_counter(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Counter, RegisterError> {
        Ok(match self.series(name, help, Kind::Counter, labels)? {
            Some(Series::Counter(c)) => c,
            _ => Counter::default(),
        })
    }

    pub fn try_gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Gauge, RegisterError> {
        Ok(match self.series(name, help, Kind::Gauge, labels)? {
            Some(Series::Gauge(g)) => g,
            _ => Gauge::default(),
        })
    }

    pub fn try_latency(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Result<Latency, RegisterError> {
        Ok(match self.series(name, help, Kind::Summary, labels)? {
            Some(Series::Latency(l)) => l,
            _ => Latency::default(),
        })
    }

    /// Like [`Registry::try_counter`], but a registration error is logged and a detached
    /// counter returned: metrics must never take a daemon down.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        self.try_counter(name, help, labels).unwrap_or_else(|e| {
            Self::report(&e);
            Counter::default()
        })
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        self.try_gauge(name, help, labels).unwrap_or_else(|e| {
            Self::report(&e);
            Gauge::default()
        })
    }

    pub fn latency(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Latency {
        self.try_latency(name, help, labels).unwrap_or_else(|e| {
            Self::report(&e);
            Latency::default()
        })
    }

    /// Series handed out detached because their family was full.
    pub fn dropped_series(&self) -> u64 {
        self.dropped_series.get()
    }

    /// Every family with its help text, kind and samples, sorted by name; the registry's own
    /// dropped-series counter comes last.
    pub fn families(&self) -> Vec<(String, String, Kind, Vec<Sample>)> {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(families.len() + 1);
        for (name, family) in families.iter() {
            let mut samples = Vec::new();
            for (labels, series) in &family.series {
                let sample = |name: String, labels: Vec<(String, String)>, value: f64| Sample {
                    name,
                    labels,
                    value,
                };
                match series {
                    Series::Counter(c) => {
                        samples.push(sample(name.clone(), labels.clone(), c.get() as f64))
                    }
                    Series::Gauge(g) => {
                        samples.push(sample(name.clone(), labels.clone(), g.get() as f64))
                    }
                    Series::Latency(l) => {
                        let (quantiles, count, sum) = l.summary();
                        for (q, v) in quantiles {
                            let mut with_q = labels.clone();
                            with_q.push(("quantile".to_string(), format_quantile(q)));
                            samples.push(sample(name.clone(), with_q, v as f64));
                        }
                        samples.push(sample(format!("{name}_count"), labels.clone(), count as f64));
                        samples.push(sample(format!("{name}_sum"), labels.clone(), sum as f64));
                    }
                }
            }
            out.push((name.clone(), family.help.clone(), family.kind, samples));
        }
        drop(families);
        out.push((
            DROPPED_SERIES.to_string(),
            format!("Series not created because their family already held {SERIES_PER_FAMILY_MAX}"),
            Kind::Counter,
            vec![Sample {
                name: DROPPED_SERIES.to_string(),
                labels: Vec::new(),
                value: self.dropped_series.get() as f64,
            }],
        ));
        out
    }

    /// Every sample, flattened: what the push loop and the collector carry.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.families().into_iter().flat_map(|(_, _, _, samples)| samples).collect()
    }
}

fn format_quantile(q: f64) -> String {
    format!("{q}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        assert!(valid_name("r3fs_storage_read_bytes"));
        assert!(valid_name("r3fs_meta_op_latency_us"));
        assert!(!valid_name("r3fs_storage_bytes"));
        assert!(!valid_name("storage_read_bytes_total"));
        assert!(!valid_name("r3fs_Storage_read_bytes"));
        assert!(!valid_name("r3fs_storage__read_bytes"));
        assert!(!valid_name("r3fs_storage_read_bytes_"));
    }

    #[test]
    fn registration_errors_are_reported() {
        let registry = Registry::new();
        assert_eq!(
            registry.try_counter("bad", "", &[]).unwrap_err(),
            RegisterError::BadName("bad".to_string())
        );
        registry.try_counter("r3fs_test_things_total", "", &[]).unwrap();
        assert!(matches!(
            registry.try_gauge("r3fs_test_things_total", "", &[]),
            Err(RegisterError::KindMismatch { .. })
        ));
        assert_eq!(
            registry.try_counter("r3fs_test_other_total", "", &[("Bad", "x")]).unwrap_err(),
            RegisterError::BadLabel("Bad".to_string())
        );
        assert!(registry.try_counter("r3fs_test_other_total", "", &[("quantile", "x")]).is_err());
    }

    #[test]
    fn same_labels_share_one_series_in_any_order() {
        let registry = Registry::new();
        let a = registry.counter("r3fs_test_ops_total", "ops", &[("op", "read"), ("target", "1")]);
        let b = registry.counter("r3fs_test_ops_total", "ops", &[("target", "1"), ("op", "read")]);
        a.add(2);
        b.inc();
        let samples = registry.snapshot();
        let ops: Vec<_> = samples.iter().filter(|s| s.name == "r3fs_test_ops_total").collect();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].value, 3.0);
        assert_eq!(ops[0].labels_text(), r#"op="read",target="1""#);
    }

    #[test]
    fn cardinality_is_bounded_and_drops_are_counted() {
        let registry = Registry::new();
        for i in 0..SERIES_PER_FAMILY_MAX + 10 {
            let label = i.to_string();
            registry.counter("r3fs_test_ids_total", "", &[("id", &label)]).inc();
        }
        assert_eq!(registry.dropped_series(), 10);
        let samples = registry.snapshot();
        let ids = samples.iter().filter(|s| s.name == "r3fs_test_ids_total").count();
        assert_eq!(ids, SERIES_PER_FAMILY_MAX);
        let dropped = samples.iter().find(|s| s.name == DROPPED_SERIES).unwrap();
        assert_eq!(dropped.value, 10.0);
    }

    #[test]
    fn latency_exposes_quantiles_count_and_sum() {
        let registry = Registry::new();
        let latency = registry.latency("r3fs_test_op_latency_us", "op latency", &[("op", "x")]);
        for us in 1..=1000u64 {
            latency.record_us(us);
        }
        let samples = registry.snapshot();
        let find = |name: &str, q: Option<&str>| {
            samples
                .iter()
                .find(|s| s.name == name && s.label("quantile") == q)
                .map(|s| s.value)
                .unwrap()
        };
        assert_eq!(find("r3fs_test_op_latency_us_count", None), 1000.0);
        assert_eq!(find("r3fs_test_op_latency_us_sum", None), 500_500.0);
        let p50 = find("r3fs_test_op_latency_us", Some("0.5"));
        let p99 = find("r3fs_test_op_latency_us", Some("0.99"));
        // hdrhistogram with 3 significant digits: within 0.1% of the exact quantile.
        assert!((499.0..=501.0).contains(&p50), "p50 {p50}");
        assert!((989.0..=991.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn window_rotation_forgets_old_quantiles_but_keeps_totals() {
        let mut inner = LatencyInner::new();
        inner.current.saturating_record(10_000);
        inner.count = 1;
        let start = inner.rotated_at;
        inner.rotate_if_due(start + LATENCY_WINDOW);
        assert_eq!(inner.previous.len(), 1, "one window back is still reported");
        assert!(inner.current.is_empty());
        inner.rotate_if_due(start + 3 * LATENCY_WINDOW);
        assert!(inner.previous.is_empty() && inner.current.is_empty());
        assert_eq!(inner.count, 1);
    }
}
