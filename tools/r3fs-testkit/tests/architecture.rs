//! Architecture invariants that `cargo metadata` can check (docs/ARCHITECTURE.md lists them):
//! layer edges between workspace crates, which crates may name the heavyweight packages, and the
//! workspace layout (top-level entries, folder name = crate name).

use cargo_metadata::{DependencyKind, MetadataCommand, Package};
use std::collections::BTreeMap;
use std::path::Path;

/// The group (top-level folder) of a workspace package.
fn group(package: &Package, root: &Path) -> String {
    let dir = package.manifest_path.parent().expect("manifest has a directory");
    let relative = dir.strip_prefix(root).expect("workspace member lies under the root");
    relative.components().next().expect("member is inside a group folder").as_str().to_string()
}

/// Which groups a group may depend on (normal and build dependencies; dev-dependencies too, except
/// on r3fs-testkit, which depends on nothing in the workspace).
fn allowed(from: &str, to: &str) -> bool {
    match from {
        "proto" => to == "proto",
        "engine" => matches!(to, "proto" | "engine"),
        "client" => matches!(to, "proto" | "client"),
        // meta reaches storage through the client library's storage client; never through engine.
        "control" => matches!(to, "proto" | "control" | "client"),
        "perf" => matches!(to, "proto" | "client" | "perf"),
        "tools" => true,
        _ => false,
    }
}

/// Packages that only some crates may name, and which ones.
fn may_use(package: &str, dependency: &str) -> bool {
    match dependency {
        "glommio" => package.starts_with("r3fs-storage") || package == "r3fs-chunk",
        "foundationdb" => package == "r3fs-kv",
        "fuser" => package == "r3fs-fuse",
        "rdma-sys" => package.starts_with("r3fs-storage") || package == "r3fs-net",
        _ => true,
    }
}

#[test]
fn layering_and_package_rules_hold() {
    let metadata = MetadataCommand::new().no_deps().exec().expect("run cargo metadata");
    let root = metadata.workspace_root.as_std_path();
    let groups: BTreeMap<String, String> = metadata
        .workspace_packages()
        .iter()
        .map(|p| (p.name.to_string(), group(p, root)))
        .collect();
    let mut violations = Vec::new();
    for package in metadata.workspace_packages() {
        let from = &groups[package.name.as_str()];
        for dependency in &package.dependencies {
            let name = dependency.name.as_str();
            if let Some(to) = groups.get(name) {
                let testkit_for_tests =
                    name == "r3fs-testkit" && dependency.kind == DependencyKind::Development;
                if !testkit_for_tests && !allowed(from, to) {
                    violations.push(format!("{} ({from}) depends on {name} ({to})", package.name));
                }
                if name == "r3fs-testkit" && dependency.kind != DependencyKind::Development {
                    violations.push(format!("{} uses r3fs-testkit outside tests", package.name));
                }
            } else if !may_use(package.name.as_str(), name) {
                violations.push(format!("{} may not depend on {name}", package.name));
            }
        }
    }
    assert!(violations.is_empty(), "forbidden dependency edges:\n{}", violations.join("\n"));
}

#[test]
fn the_rule_rejects_a_forbidden_edge() {
    // The checks above must be able to fail: the rules refuse the edges the architecture forbids.
    assert!(!allowed("engine", "control"));
    assert!(!allowed("control", "engine"));
    assert!(!allowed("proto", "engine"));
    assert!(!allowed("client", "control"));
    assert!(!may_use("r3fs-meta", "glommio"));
    assert!(!may_use("r3fs-mgmtd", "foundationdb"));
}

#[test]
fn workspace_layout_is_one_level_folder_equals_crate() {
    let metadata = MetadataCommand::new().no_deps().exec().expect("run cargo metadata");
    let root = metadata.workspace_root.as_std_path();
    let mut violations = Vec::new();
    for package in metadata.workspace_packages() {
        let dir = package.manifest_path.parent().expect("manifest has a directory");
        let relative = dir.strip_prefix(root).expect("member lies under the root");
        let parts: Vec<_> = relative.components().map(|c| c.as_str().to_string()).collect();
        if parts.len() != 2 || parts[1] != package.name.as_str() {
            violations.push(format!("{} lives at {relative}", package.name));
        }
    }
    let expected = ["engine", "control", "client", "proto", "tools", "perf", "docs"];
    for entry in std::fs::read_dir(root).expect("read the workspace root") {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().to_string();
        let is_dir = entry.file_type().expect("file type").is_dir();
        let tooling = name.starts_with('.') || name == "target" || name.starts_with("target-");
        if is_dir && !tooling && !expected.contains(&name.as_str()) {
            violations.push(format!("unexpected top-level folder {name}"));
        }
    }
    assert!(violations.is_empty(), "layout violations:\n{}", violations.join("\n"));
}
