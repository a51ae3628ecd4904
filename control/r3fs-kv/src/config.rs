//! Choosing and opening a backend from a service's config file:
//!
//! ```toml
//! [kv]
//! backend = "fjall"            # "memory" | "fjall" | "fdb" | "remote"
//! [kv.fjall]
//! path = "/var/lib/r3fs/meta-kv"
//! durability = "sync_data"     # "sync_data" | "sync_all" | "buffer"
//! [kv.retry]
//! attempts_max = 10
//! ```
//!
//! Only the chosen backend's section is validated; the others may stay at their defaults.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::remote::{RemoteConfig, RemoteKv};
use crate::{FjallConfig, FjallKv, Kv, KvError, MemoryConfig, MemoryKv, RetryPolicy};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Memory,
    #[default]
    Fjall,
    Fdb,
    /// A KV server (`r3fs-kvd`) shared by several processes.
    Remote,
}

/// Configuration of the FoundationDB backend. Parsed by every build so config files do not depend
/// on features; opening it needs the `fdb` feature.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdbConfig {
    /// Cluster file; `None` uses FoundationDB's default lookup (`FDB_CLUSTER_FILE`,
    /// `/etc/foundationdb/fdb.cluster`).
    pub cluster_file: Option<PathBuf>,
    /// Prepended to every key, so several r3fs clusters (or tests) can share one database.
    pub key_prefix: String,
}

/// The `[kv]` section of a service's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    pub backend: Backend,
    pub memory: MemoryConfig,
    pub fjall: FjallConfig,
    pub fdb: FdbConfig,
    pub remote: RemoteConfig,
    /// How callers retry conflicting transactions ([`crate::retry::run`]).
    pub retry: RetryPolicy,
}

impl KvConfig {
    /// Every violation at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let backend = match self.backend {
            Backend::Memory => self.memory.validate(),
            Backend::Fjall => self.fjall.validate(),
            Backend::Fdb if cfg!(feature = "fdb") => Ok(()),
            Backend::Fdb => {
                Err(vec!["kv.backend = \"fdb\" needs a build with the `fdb` feature".to_string()])
            }
            Backend::Remote => self.remote.validate(),
        };
        errors.extend(backend.err().unwrap_or_default());
        errors.extend(self.retry.validate().err().unwrap_or_default());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Opens the configured backend. Blocking (opening fjall recovers its journal).
pub fn open(config: &KvConfig) -> Result<Arc<dyn Kv>, KvError> {
    config
        .validate()
        .map_err(|errors| KvError::Io(format!("invalid kv config: {}", errors.join("; "))))?;
    match config.backend {
        Backend::Memory => Ok(Arc::new(MemoryKv::new(&config.memory))),
        Backend::Fjall => Ok(Arc::new(FjallKv::open(&config.fjall)?)),
        Backend::Fdb => open_fdb(&config.fdb),
        Backend::Remote => Ok(Arc::new(RemoteKv::connect_lazy(&config.remote)?)),
    }
}

#[cfg(feature = "fdb")]
fn open_fdb(config: &FdbConfig) -> Result<Arc<dyn Kv>, KvError> {
    Ok(Arc::new(crate::fdb::FdbKv::open(config)?))
}

#[cfg(not(feature = "fdb"))]
fn open_fdb(_config: &FdbConfig) -> Result<Arc<dyn Kv>, KvError> {
    Err(KvError::Io("the fdb backend is not compiled in (feature `fdb`)".to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_rejects_unknown_keys() {
        let text = r#"
            backend = "fjall"
            [fjall]
            path = "/var/lib/r3fs/meta-kv"
            durability = "sync_data"
            [retry]
            attempts_max = 10
        "#;
        let config: KvConfig = toml::from_str(text).unwrap();
        assert_eq!(config.fjall.path, PathBuf::from("/var/lib/r3fs/meta-kv"));
        assert_eq!(config.retry.attempts_max, 10);
        assert!(config.validate().is_ok());
        assert!(toml::from_str::<KvConfig>("[fjall]\npaht = \"x\"").is_err());
        assert!(toml::from_str::<KvConfig>("backend = \"memory\"\nextra = 1").is_err());
    }

    #[test]
    fn validate_checks_only_the_chosen_backend_and_reports_all() {
        let mut config = KvConfig { backend: Backend::Memory, ..KvConfig::default() };
        assert!(config.validate().is_ok(), "fjall.path is unused when the backend is memory");
        config.backend = Backend::Fjall;
        config.retry.attempts_max = 0;
        assert_eq!(config.validate().unwrap_err().len(), 2);
    }
}
