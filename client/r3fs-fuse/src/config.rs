//! The `r3fs-fuse` daemon's configuration (`--config fuse.toml`). Every key has a default in code;
//! unknown keys are errors; [`FuseConfig::validate`] reports every violation at once.
//! docs/design/fuse.md shows a documented example that a test parses.

use r3fs_client::ClientConfig;
use serde::Deserialize;
use std::path::PathBuf;

/// Largest write request the kernel sends (FUSE_MAX_PAGES: 256 pages of 4 KiB).
pub const KERNEL_WRITE_BYTES_MAX: u32 = 1 << 20;
/// Upper bound of `threads` (kernel reader threads and tokio workers each).
pub const THREADS_MAX: usize = 64;
/// Upper bound of the cache timeouts: a longer one would hide other clients' changes too long.
pub const CACHE_TIMEOUT_MS_MAX: u64 = 600_000;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FuseConfig {
    /// Directory to mount on (must exist, be a directory, and not be a mount point already).
    pub mountpoint: PathBuf,
    /// mgmtd gRPC addresses ("host:port").
    pub mgmtd_addresses: Vec<String>,
    /// meta gRPC addresses ("host:port").
    pub meta_addresses: Vec<String>,
    /// The user token; or leave empty and name a file holding it in `token_file`.
    pub token: String,
    pub token_file: Option<PathBuf>,
    /// Threads reading requests from /dev/fuse (each with its own cloned fd), and tokio workers
    /// serving them.
    pub threads: usize,
    /// How long the kernel trusts attributes and directory entries it got from this daemon.
    pub attr_timeout_ms: u64,
    pub entry_timeout_ms: u64,
    /// Largest write request asked of the kernel (it caps at 1 MiB).
    pub max_write: u32,
    /// Let users other than the one who mounted use the mount (kernel permission checks apply:
    /// the mount always uses `default_permissions`).
    pub allow_other: bool,
    /// Client library tuning (retries, timeouts, in-flight bounds). Its addresses and token are
    /// ignored: they come from the keys above.
    pub client: ClientConfig,
    /// Metrics endpoint and push target (`[metrics]`, see r3fs_metrics::MetricsConfig); the
    /// default instance name is `fuse-<mountpoint>`.
    pub metrics: r3fs_metrics::MetricsConfig,
}

impl Default for FuseConfig {
    fn default() -> Self {
        Self {
            mountpoint: PathBuf::new(),
            mgmtd_addresses: Vec::new(),
            meta_addresses: Vec::new(),
            token: String::new(),
            token_file: None,
            threads: 4,
            attr_timeout_ms: 1_000,
            entry_timeout_ms: 1_000,
            max_write: KERNEL_WRITE_BYTES_MAX,
            allow_other: true,
            client: ClientConfig::default(),
            metrics: r3fs_metrics::MetricsConfig::default(),
        }
    }
}

impl FuseConfig {
    pub fn parse(text: &str) -> Result<FuseConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every violation, one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.mountpoint.as_os_str().is_empty() {
            errors.push("mountpoint must be set".to_string());
        }
        if self.mgmtd_addresses.is_empty() {
            errors.push("mgmtd_addresses: at least one mgmtd address is needed".to_string());
        }
        if self.meta_addresses.is_empty() {
            errors.push("meta_addresses: at least one meta address is needed".to_string());
        }
        match (&self.token_file, self.token.is_empty()) {
            (Some(_), false) => errors.push("set token or token_file, not both".to_string()),
            (None, true) => errors.push("token or token_file must be set".to_string()),
            _ => {}
        }
        if !(1..=THREADS_MAX).contains(&self.threads) {
            errors.push(format!("threads ({}) must be in 1..={THREADS_MAX}", self.threads));
        }
        for (name, value) in
            [("attr_timeout_ms", self.attr_timeout_ms), ("entry_timeout_ms", self.entry_timeout_ms)]
        {
            if value > CACHE_TIMEOUT_MS_MAX {
                errors.push(format!("{name} ({value}) must be at most {CACHE_TIMEOUT_MS_MAX}"));
            }
        }
        if !(4096..=KERNEL_WRITE_BYTES_MAX).contains(&self.max_write) {
            errors.push(format!(
                "max_write ({}) must be in 4096..={KERNEL_WRITE_BYTES_MAX}",
                self.max_write
            ));
        }
        let client = ClientConfig {
            mgmtd_addresses: self.mgmtd_addresses.clone(),
            meta_addresses: self.meta_addresses.clone(),
            token: "checked-above".into(),
            ..self.client.clone()
        };
        if let Err(client) = client.validate() {
            errors.extend(client.into_iter().map(|e| format!("client: {e}")));
        }
        errors.extend(self.metrics.validate());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// The client library's config: `client` with the addresses and the token (read from
    /// `token_file` if set) filled in.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("read the token file {}: {e}", path.display()))?
                .trim()
                .to_string(),
            None => self.token.clone(),
        };
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        Ok(ClientConfig {
            mgmtd_addresses: self.mgmtd_addresses.clone(),
            meta_addresses: self.meta_addresses.clone(),
            token,
            ..self.client.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_validates() {
        let note = include_str!("../../../docs/design/fuse.md");
        let start = note.find("```toml\n").expect("the note has a toml block") + 8;
        let end = start + note[start..].find("```").expect("the block ends");
        let config = FuseConfig::parse(&note[start..end]).expect("the example parses");
        config.validate().expect("the example is valid");
        let defaults = FuseConfig {
            mountpoint: config.mountpoint.clone(),
            mgmtd_addresses: config.mgmtd_addresses.clone(),
            meta_addresses: config.meta_addresses.clone(),
            token: config.token.clone(),
            ..FuseConfig::default()
        };
        assert_eq!(config, defaults, "the example shows the defaults");
    }

    #[test]
    fn every_violation_is_reported() {
        let config = FuseConfig {
            threads: 0,
            max_write: 1,
            attr_timeout_ms: CACHE_TIMEOUT_MS_MAX + 1,
            metrics: r3fs_metrics::MetricsConfig {
                listen: "nowhere".into(),
                ..r3fs_metrics::MetricsConfig::default()
            },
            token_file: Some("t".into()),
            token: "x".into(),
            ..FuseConfig::default()
        };
        let errors = config.validate().expect_err("invalid");
        for needle in
            ["mountpoint", "mgmtd_addresses", "meta_addresses", "not both", "threads", "max_write"]
        {
            assert!(errors.iter().any(|e| e.contains(needle)), "{needle} missing from {errors:?}");
        }
        assert!(errors.iter().any(|e| e.contains("attr_timeout_ms")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("metrics.listen")), "{errors:?}");
        assert!(FuseConfig::parse("mountpoint = \"/m\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "secret\n").expect("write the token");
        let config = FuseConfig {
            mountpoint: "/m".into(),
            mgmtd_addresses: vec!["127.0.0.1:1".into()],
            meta_addresses: vec!["127.0.0.1:2".into()],
            token_file: Some(path),
            ..FuseConfig::default()
        };
        config.validate().expect("valid");
        let client = config.client_config().expect("client config");
        assert_eq!(client.token, "secret");
        assert_eq!(client.meta_addresses, vec!["127.0.0.1:2".to_string()]);
    }
}
