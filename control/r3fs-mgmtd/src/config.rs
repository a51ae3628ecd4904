//! `r3fs-mgmtd --config mgmtd.toml`: every key has a default in code; unknown keys are errors;
//! [`MgmtdConfig::validate`] reports every violation at once, relations included. The documented
//! example lives in docs/design/mgmtd.md and a test parses it.

use std::net::SocketAddr;
use std::path::PathBuf;

use r3fs_kv::KvConfig;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MgmtdConfig {
    /// This instance's node id (unique among all nodes, mgmtd or not; non-zero).
    pub node_id: u32,
    /// Address the gRPC server binds ("127.0.0.1:0" picks a free port).
    pub listen: String,
    /// Address other nodes reach this instance at ("host:port"); empty = the bound address.
    pub advertise_address: String,
    /// Shown in list-nodes; empty = the machine's host name.
    pub hostname: String,
    /// A primary that has not renewed its lease for this long may be replaced.
    pub lease_timeout_ms: u64,
    /// How often every instance runs a lease round (renew, or try to take over).
    pub lease_renew_interval_ms: u64,
    /// How often nodes are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A node silent for longer is HEARTBEAT_FAILED and its targets OFFLINE.
    pub heartbeat_timeout_ms: u64,
    /// How often the primary looks for silent nodes.
    pub failure_check_interval_ms: u64,
    /// Longest long-poll of GetRoutingInfo.
    pub routing_wait_max_ms: u64,
    /// Bounded wait for in-flight requests at shutdown.
    pub shutdown_grace_ms: u64,
    /// The state store (`[kv]`, see r3fs_kv::config): "memory" or "fjall" (embedded).
    pub kv: KvConfig,
    /// Serve gRPC over TLS when present.
    pub tls: Option<TlsConfig>,
    /// Metrics endpoint and push target (`[metrics]`, see r3fs_metrics::MetricsConfig).
    pub metrics: r3fs_metrics::MetricsConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of this server.
    pub cert_path: PathBuf,
    /// PEM private key of the certificate.
    pub key_path: PathBuf,
}

impl Default for MgmtdConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:9100".to_string(),
            advertise_address: String::new(),
            hostname: String::new(),
            lease_timeout_ms: 10_000,
            lease_renew_interval_ms: 2_000,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            failure_check_interval_ms: 500,
            routing_wait_max_ms: 60_000,
            shutdown_grace_ms: 5_000,
            kv: KvConfig::default(),
            tls: None,
            metrics: r3fs_metrics::MetricsConfig::default(),
        }
    }
}

impl MgmtdConfig {
    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.node_id == 0 {
            errors.push("node_id must be non-zero".to_string());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!("listen {:?} is not an ip:port socket address", self.listen));
        }
        if !self.advertise_address.is_empty() && !self.advertise_address.contains(':') {
            errors.push(format!("advertise_address {:?} is not host:port", self.advertise_address));
        }
        for (name, value) in [
            ("lease_timeout_ms", self.lease_timeout_ms),
            ("lease_renew_interval_ms", self.lease_renew_interval_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("failure_check_interval_ms", self.failure_check_interval_ms),
            ("routing_wait_max_ms", self.routing_wait_max_ms),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be positive"));
            }
        }
        if self.lease_timeout_ms < 2 * self.lease_renew_interval_ms {
            errors.push(format!(
                "lease_timeout_ms ({}) must be at least 2 x lease_renew_interval_ms ({}): one lost renewal must not cost the lease",
                self.lease_timeout_ms, self.lease_renew_interval_ms
            ));
        }
        if self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms {
            errors.push(format!(
                "heartbeat_timeout_ms ({}) must be at least 2 x heartbeat_interval_ms ({}): one lost heartbeat must not fail a node",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if 2 * self.failure_check_interval_ms > self.heartbeat_timeout_ms {
            errors.push(format!(
                "failure_check_interval_ms ({}) must be at most heartbeat_timeout_ms / 2 ({})",
                self.failure_check_interval_ms,
                self.heartbeat_timeout_ms / 2
            ));
        }
        if self.routing_wait_max_ms > 600_000 {
            errors.push("routing_wait_max_ms must be at most 600000 (10 minutes)".to_string());
        }
        if let Some(tls) = &self.tls
            && (tls.cert_path.as_os_str().is_empty() || tls.key_path.as_os_str().is_empty())
        {
            errors.push("tls.cert_path and tls.key_path must both be set".to_string());
        }
        if let Err(kv_errors) = self.kv.validate() {
            errors.extend(kv_errors.into_iter().map(|e| format!("kv.{e}")));
        }
        errors.extend(self.metrics.validate());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_a_kv_choice() {
        let mut config = MgmtdConfig::default();
        let errors = config.validate().expect_err("fjall needs a path");
        assert_eq!(errors.len(), 1, "{errors:?}");
        config.kv.backend = r3fs_kv::config::Backend::Memory;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_violation_including_relations() {
        let text = r#"
            node_id = 0
            listen = "nowhere"
            lease_timeout_ms = 1000
            lease_renew_interval_ms = 600
            heartbeat_interval_ms = 1000
            heartbeat_timeout_ms = 1500
            failure_check_interval_ms = 1000
            [kv]
            backend = "memory"
        "#;
        let config: MgmtdConfig = toml::from_str(text).expect("parse");
        let errors = config.validate().expect_err("invalid");
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("2 x lease_renew_interval_ms")));
        assert!(errors.iter().any(|e| e.contains("2 x heartbeat_interval_ms")));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<MgmtdConfig>("lease_timeout = 5").is_err());
        assert!(
            toml::from_str::<MgmtdConfig>("[tls]\ncert_path = \"a\"\nkey_path = \"b\"\nca = 1")
                .is_err()
        );
    }

    /// The example in docs/design/mgmtd.md parses and validates, so the doc stays true.
    #[test]
    fn documented_example_is_valid() {
        let doc = include_str!("../../../docs/design/mgmtd.md");
        let start = doc.find("```toml\n").expect("a toml block in docs/design/mgmtd.md") + 8;
        let end = start + doc[start..].find("```").expect("end of the toml block");
        let config: MgmtdConfig =
            toml::from_str(&doc[start..end]).expect("documented example parses");
        assert_eq!(config.validate(), Ok(()));
    }
}
