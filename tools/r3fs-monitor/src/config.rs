//! `r3fs-monitor --config monitor.toml`: every key has a default; unknown keys are errors;
//! [`MonitorConfig::validate`] reports every violation at once. The documented example is
//! docs/examples/monitor.toml, loaded by this crate's tests.

use serde::Deserialize;
use std::net::SocketAddr;

/// Largest buffer accepted: about 2 GiB at ~200 bytes per row.
pub const BUFFER_ROWS_MAX_LIMIT: usize = 10_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Address ("ip:port") daemons push to (`POST /push`); the monitor's own metrics are served
    /// on the same listener at `GET /metrics`.
    pub listen: String,
    /// The monitor's own samples are stored with this instance name; empty = "monitor".
    pub instance: String,
    /// Daemons to scrape (`GET /metrics`) instead of, or besides, receiving their pushes.
    pub scrape_targets: Vec<ScrapeTarget>,
    /// How often targets are scraped and the monitor records its own metrics.
    pub scrape_interval_ms: u64,
    /// How often buffered rows are inserted while ClickHouse is healthy.
    pub flush_interval_ms: u64,
    /// Most rows in one INSERT.
    pub batch_rows_max: usize,
    /// Most rows buffered while ClickHouse is down or slow (about 200 bytes each); beyond it
    /// the oldest are dropped and counted in `r3fs_monitor_rows_dropped_total`.
    pub buffer_rows_max: usize,
    /// Where samples are stored.
    pub clickhouse: ClickHouseConfig,
}

/// One daemon's metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeTarget {
    /// `storage`, `mgmtd`, `meta`, `fuse`, ...
    pub service: String,
    /// Name stored in the `instance` column (e.g. `node-10001`).
    pub instance: String,
    /// "host:port" of the daemon's `[metrics] listen`.
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface URL of the server.
    pub url: String,
    /// Database (created if missing).
    pub database: String,
    /// Table (created if missing).
    pub table: String,
    pub user: String,
    pub password: String,
    /// Bound on one INSERT, DDL statement, or scrape.
    pub timeout_ms: u64,
    /// Longest wait between insert attempts while ClickHouse is failing (doubling from
    /// `flush_interval_ms`).
    pub retry_backoff_max_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".to_string(),
            database: "r3fs".to_string(),
            table: "samples".to_string(),
            user: String::new(),
            password: String::new(),
            timeout_ms: 10_000,
            retry_backoff_max_ms: 30_000,
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            listen: "0.0.0.0:10000".to_string(),
            instance: String::new(),
            scrape_targets: Vec::new(),
            scrape_interval_ms: 10_000,
            flush_interval_ms: 1_000,
            batch_rows_max: 100_000,
            buffer_rows_max: 1_000_000,
            clickhouse: ClickHouseConfig::default(),
        }
    }
}

fn identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl MonitorConfig {
    pub fn from_toml(text: &str) -> Result<MonitorConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!("listen {:?} is not ip:port", self.listen));
        }
        for (i, target) in self.scrape_targets.iter().enumerate() {
            if target.service.is_empty() || target.instance.is_empty() {
                errors.push(format!("scrape_targets[{i}] needs a service and an instance"));
            }
            if !target.address.contains(':') {
                errors.push(format!(
                    "scrape_targets[{i}].address {:?} is not host:port",
                    target.address
                ));
            }
        }
        if self.scrape_interval_ms < 100 {
            errors.push("scrape_interval_ms must be >= 100".to_string());
        }
        if self.flush_interval_ms < 10 {
            errors.push("flush_interval_ms must be >= 10".to_string());
        }
        if self.batch_rows_max == 0 {
            errors.push("batch_rows_max must be > 0".to_string());
        }
        if self.buffer_rows_max < self.batch_rows_max {
            errors.push("buffer_rows_max must be >= batch_rows_max".to_string());
        }
        if self.buffer_rows_max > BUFFER_ROWS_MAX_LIMIT {
            errors.push(format!("buffer_rows_max must be <= {BUFFER_ROWS_MAX_LIMIT}"));
        }
        let ch = &self.clickhouse;
        if !(ch.url.starts_with("http://") || ch.url.starts_with("https://")) {
            errors.push(format!("clickhouse.url {:?} is not an http(s) URL", ch.url));
        }
        if !identifier(&ch.database) {
            errors.push(format!("clickhouse.database {:?} is not an identifier", ch.database));
        }
        if !identifier(&ch.table) {
            errors.push(format!("clickhouse.table {:?} is not an identifier", ch.table));
        }
        if ch.timeout_ms == 0 {
            errors.push("clickhouse.timeout_ms must be > 0".to_string());
        }
        if ch.retry_backoff_max_ms < self.flush_interval_ms {
            errors.push("clickhouse.retry_backoff_max_ms must be >= flush_interval_ms".to_string());
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        MonitorConfig::default().validate().unwrap();
    }

    #[test]
    fn reports_every_violation() {
        let mut config = MonitorConfig {
            listen: "x".into(),
            batch_rows_max: 10,
            buffer_rows_max: 5,
            ..MonitorConfig::default()
        };
        config.clickhouse.database = "r3fs; DROP".into();
        config.clickhouse.url = "ftp://x".into();
        assert_eq!(config.validate().unwrap_err().len(), 4);
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(MonitorConfig::from_toml("lisen = \"0.0.0.0:1\"\n").is_err());
        assert!(MonitorConfig::from_toml("[clickhouse]\nurll = \"x\"\n").is_err());
    }
}
