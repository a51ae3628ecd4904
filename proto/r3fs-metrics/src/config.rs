//! The `[metrics]` section every daemon's config embeds.

use serde::Deserialize;
use std::net::SocketAddr;

/// Shortest push interval accepted: the collector batches per push, so faster buys nothing.
pub const PUSH_INTERVAL_MS_MIN: u64 = 100;

/// Where a daemon exposes its metrics and where it pushes them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address ("ip:port") of the HTTP endpoint serving `GET /metrics` in Prometheus text
    /// format; empty = no endpoint.
    pub listen: String,
    /// Address ("host:port") of r3fs-monitor's push listener; empty = no push (the monitor may
    /// scrape `listen` instead).
    pub push_target: String,
    /// How often the daemon pushes a snapshot to `push_target`.
    pub push_interval_ms: u64,
    /// Name this daemon's samples carry in the monitor (`instance` column); empty = the
    /// daemon's default (`<service>-<node id>` or `<service>-<listen address>`).
    pub instance: String,
    /// Bound on one push or scrape request.
    pub timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: String::new(),
            push_target: String::new(),
            push_interval_ms: 10_000,
            instance: String::new(),
            timeout_ms: 5_000,
        }
    }
}

impl MetricsConfig {
    /// Every violation, one message each, prefixed with `metrics.`.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!("metrics.listen {:?} is not ip:port", self.listen));
        }
        if !self.push_target.is_empty() && !self.push_target.contains(':') {
            errors.push(format!("metrics.push_target {:?} is not host:port", self.push_target));
        }
        if self.push_interval_ms < PUSH_INTERVAL_MS_MIN {
            errors.push(format!("metrics.push_interval_ms must be >= {PUSH_INTERVAL_MS_MIN}"));
        }
        if self.timeout_ms == 0 {
            errors.push("metrics.timeout_ms must be > 0".to_string());
        }
        if !self.push_target.is_empty() && self.timeout_ms > self.push_interval_ms {
            errors.push("metrics.timeout_ms must be <= metrics.push_interval_ms".to_string());
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_off() {
        let config = MetricsConfig::default();
        assert!(config.validate().is_empty());
        assert!(config.listen.is_empty() && config.push_target.is_empty());
    }

    #[test]
    fn reports_every_violation() {
        let config = MetricsConfig {
            listen: "nowhere".to_string(),
            push_target: "monitor".to_string(),
            push_interval_ms: 10,
            instance: String::new(),
            timeout_ms: 0,
        };
        assert_eq!(config.validate().len(), 4, "{:?}", config.validate());
    }
}
