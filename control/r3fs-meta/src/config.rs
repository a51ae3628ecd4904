//! The `r3fs-meta` daemon's configuration (`--config meta.toml`). Every section rejects unknown
//! keys; [`Config::validate`] reports every violation at once. `meta.example.toml` next to this
//! crate's manifest documents every key and is parsed by a test.

use crate::store::MetaOptions;
use r3fs_client::ClientConfig;
use r3fs_client::config::{RetryConfig, RoutingConfig, RpcConfig, StorageConfig};
use r3fs_kv::KvConfig;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// gRPC listen address ("host:port"; port 0 picks a free one, printed at start).
    pub listen: String,
    /// The KV store: `backend = "memory" | "fjall" | "fdb"` and its section.
    pub kv: KvConfig,
    /// Limits, sessions, collector and format options of the store.
    pub meta: MetaOptions,
    pub auth: AuthConfig,
    /// mgmtd: resolves tokens and provides routing info. Without it, tokens come from
    /// `auth.static_users` and statfs reports unknown capacity.
    pub mgmtd: Option<MgmtdConfig>,
    /// The storage edge (last chunks, truncation, chunk removal). Needs `[mgmtd]`: routing and
    /// the token come from there.
    pub storage: StorageAccessConfig,
    /// Run the background collector (deleted files, detached trees, expired sessions).
    pub collector_enabled: bool,
    /// Metrics endpoint and push target (`[metrics]`, see r3fs_metrics::MetricsConfig).
    pub metrics: r3fs_metrics::MetricsConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a resolved token is trusted without asking mgmtd again (a revoked token keeps
    /// working at most this long).
    pub user_cache_ttl_ms: u64,
    pub user_cache_entries_max: usize,
    /// Standalone deployments without mgmtd: a fixed token table.
    pub static_users: Vec<StaticUser>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            user_cache_ttl_ms: 30_000,
            user_cache_entries_max: 100_000,
            static_users: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub token: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MgmtdConfig {
    /// mgmtd gRPC addresses ("host:port").
    pub addresses: Vec<String>,
    /// File holding this service's own token (used to call ResolveToken and GetRoutingInfo).
    pub token_file: PathBuf,
    /// Routing info is refetched at most this often for statfs and layout checks.
    #[serde(default = "default_routing_refresh_ms")]
    pub routing_refresh_ms: u64,
}

fn default_routing_refresh_ms() -> u64 {
    5_000
}

/// How meta reaches storage: the client library's data plane with this service's own token and
/// mgmtd's routing. Each sub-table is the client library's section of the same name
/// (docs/design/client.md documents every key).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageAccessConfig {
    /// Talk to storage. Without it (or without `[mgmtd]`) shrinking truncates of non-empty files
    /// are refused, fsync/close keep the writers' reported lengths, and deleted files wait in
    /// the collection queue.
    pub enabled: bool,
    /// Bounds of every storage operation's retries (attempts, backoff, elapsed time).
    pub retry: RetryConfig,
    /// Connections, timeouts and in-flight bounds of the data plane.
    pub data_plane: StorageConfig,
    /// How the routing cache follows mgmtd.
    pub routing: RoutingConfig,
    /// Timeouts of the routing fetches from mgmtd.
    pub rpc: RpcConfig,
}

impl Default for StorageAccessConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retry: RetryConfig::default(),
            data_plane: StorageConfig::default(),
            routing: RoutingConfig::default(),
            rpc: RpcConfig::default(),
        }
    }
}

impl StorageAccessConfig {
    /// The client library's config for this service: `[mgmtd]`'s addresses and `token`.
    pub fn client_config(&self, mgmtd: &MgmtdConfig, token: &str) -> ClientConfig {
        ClientConfig {
            mgmtd_addresses: mgmtd.addresses.clone(),
            meta_addresses: Vec::new(),
            token: token.to_string(),
            client_id: 0,
            retry: self.retry.clone(),
            storage: self.data_plane.clone(),
            routing: self.routing.clone(),
            rpc: self.rpc.clone(),
            ..ClientConfig::default()
        }
    }
}

impl Config {
    pub fn new_default() -> Self {
        Self { listen: "127.0.0.1:8100".into(), collector_enabled: true, ..Default::default() }
    }

    /// Parses a config file's text; absent keys take their defaults.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Partial {
            listen: Option<String>,
            #[serde(default)]
            kv: KvConfig,
            #[serde(default)]
            meta: MetaOptions,
            #[serde(default)]
            auth: AuthConfig,
            mgmtd: Option<MgmtdConfig>,
            #[serde(default)]
            storage: StorageAccessConfig,
            collector_enabled: Option<bool>,
            #[serde(default)]
            metrics: r3fs_metrics::MetricsConfig,
        }
        let partial: Partial = toml::from_str(text)?;
        let defaults = Self::new_default();
        Ok(Self {
            listen: partial.listen.unwrap_or(defaults.listen),
            kv: partial.kv,
            meta: partial.meta,
            auth: partial.auth,
            mgmtd: partial.mgmtd,
            storage: partial.storage,
            collector_enabled: partial.collector_enabled.unwrap_or(defaults.collector_enabled),
            metrics: partial.metrics,
        })
    }

    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!("listen ({:?}) must be an IP address and port", self.listen));
        }
        errors.extend(
            self.kv.validate().err().unwrap_or_default().into_iter().map(|e| format!("kv: {e}")),
        );
        errors.extend(
            self.meta
                .validate()
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| format!("meta: {e}")),
        );
        if self.auth.user_cache_entries_max == 0 {
            errors.push("auth.user_cache_entries_max must be at least 1".into());
        }
        if self.auth.user_cache_ttl_ms > 600_000 {
            errors.push(
                "auth.user_cache_ttl_ms must be at most 600000 (revocations must take effect)"
                    .into(),
            );
        }
        let mut tokens = HashSet::new();
        for (i, user) in self.auth.static_users.iter().enumerate() {
            if user.token.trim().is_empty() {
                errors.push(format!("auth.static_users[{i}].token must not be empty"));
            } else if !tokens.insert(user.token.as_str()) {
                errors.push(format!("auth.static_users[{i}].token repeats an earlier token"));
            }
        }
        match &self.mgmtd {
            None if self.auth.static_users.is_empty() => errors.push(
                "no way to authenticate callers: configure [mgmtd] or [[auth.static_users]]".into(),
            ),
            Some(_) if !self.auth.static_users.is_empty() => errors.push(
                "configure either [mgmtd] or [[auth.static_users]], not both (one source of truth for tokens)".into(),
            ),
            Some(mgmtd) => {
                if mgmtd.addresses.is_empty() {
                    errors.push("mgmtd.addresses must name at least one address".into());
                }
                if mgmtd.token_file.as_os_str().is_empty() {
                    errors.push("mgmtd.token_file must name a file".into());
                }
                if mgmtd.routing_refresh_ms == 0 {
                    errors.push("mgmtd.routing_refresh_ms must be at least 1".into());
                }
            }
            None => {}
        }
        if let Some(mgmtd) = &self.mgmtd
            && self.storage.enabled
        {
            // The token is read at start; a placeholder stands in for it here.
            let client = self.storage.client_config(mgmtd, "token");
            errors.extend(
                client
                    .validate()
                    .err()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| format!("storage: {e}")),
            );
        }
        errors.extend(self.metrics.validate());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_validates() {
        let text = include_str!("../meta.example.toml");
        let config = Config::parse(text).expect("the example parses");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.listen, "127.0.0.1:8100");
        assert_eq!(config.auth.static_users.len(), 2);
        assert!(config.collector_enabled);
        // The example spells out the storage defaults.
        assert_eq!(config.storage, StorageAccessConfig::default());
    }

    #[test]
    fn storage_access_uses_the_mgmtd_section() {
        let text = "[kv]\nbackend = \"memory\"\n[mgmtd]\naddresses = [\"127.0.0.1:9000\"]\ntoken_file = \"/t\"\n\
                    [storage.retry]\nattempts_max = 3\n[storage.data_plane]\nremove_chunks_limit = 7\n";
        let config = Config::parse(text).expect("parses");
        assert_eq!(config.validate(), Ok(()));
        let mgmtd = config.mgmtd.as_ref().expect("mgmtd");
        let client = config.storage.client_config(mgmtd, "secret");
        assert_eq!(client.mgmtd_addresses, vec!["127.0.0.1:9000".to_string()]);
        assert_eq!(client.token, "secret");
        assert_eq!(client.retry.attempts_max, 3);
        assert_eq!(client.storage.remove_chunks_limit, 7);
        assert!(Config::parse("[storage]\nenable = true").is_err(), "unknown keys are refused");
        // The client library's own checks apply, prefixed with the section.
        let bad = format!("{text}[storage.routing]\nwatch_wait_ms = 0\n");
        let bad = bad.replace("attempts_max = 3", "attempts_max = 0");
        let errors = Config::parse(&bad).expect("parses").validate().expect_err("invalid");
        assert!(errors.iter().all(|e| e.starts_with("storage: ")), "{errors:#?}");
        assert!(!errors.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        assert!(Config::parse("lisen = \"x\"").is_err());
        assert!(Config::parse("[meta]\nsession_timeout = 5").is_err());
        assert!(Config::parse("[meta.limits]\nname_max = 5").is_err());
        assert!(
            Config::parse("[[auth.static_users]]\ntoken = \"t\"\nuid = 1\ngid = 1\nextra = 1")
                .is_err()
        );
    }

    #[test]
    fn validate_reports_every_violation() {
        let mut config = Config::parse("listen = \"nowhere\"").expect("parses");
        config.meta.session_timeout_ms = 1;
        config.auth.user_cache_entries_max = 0;
        config.kv.backend = r3fs_kv::config::Backend::Fjall;
        let errors = config.validate().expect_err("invalid");
        // listen, kv (fjall without a path), meta session timeout, cache size, no auth source.
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }
}
