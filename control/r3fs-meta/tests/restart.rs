//! The real `r3fs-meta` process on loopback with the embedded (fjall) store: a tree with hard
//! links, symlinks and renames survives a restart unchanged; tokens are required; errors carry
//! their r3fs code.

use r3fs_rpc::error_from_status;
use r3fs_rpc::meta::meta_client::MetaClient;
use r3fs_rpc::meta::{self as pb};
use r3fs_testkit::{Proc, free_port};
use r3fs_types::ErrorCode;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "integration-root-token";
const ALICE: &str = "integration-alice-token";

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let config = format!(
        r#"
listen = "127.0.0.1:{port}"
[kv]
backend = "fjall"
[kv.fjall]
path = "{kv}"
[meta.gc]
interval_ms = 100
[[auth.static_users]]
token = "{TOKEN}"
uid = 0
gid = 0
admin = true
[[auth.static_users]]
token = "{ALICE}"
uid = 1000
gid = 1000
"#,
        kv = dir.join("kv").display()
    );
    let path = dir.join("meta.toml");
    std::fs::write(&path, config).expect("write the config");
    path
}

/// This crate's own binary, built by `cargo test` with the test's feature set.
/// (`r3fs_testkit::binary` runs `cargo build`, whose feature unification differs from
/// `cargo test`'s here and rebuilds the crate on every run: a minute on this machine.)
fn meta_binary() -> &'static str {
    env!("CARGO_BIN_EXE_r3fs-meta")
}

fn start(config: &Path) -> (Proc, String) {
    let mut command = Command::new(meta_binary());
    command.arg("--config").arg(config).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("r3fs-meta", command);
    let line = proc.wait_for_line("r3fs-meta listening on", Duration::from_secs(60));
    let address = line.rsplit(' ').next().expect("an address").to_string();
    (proc, address)
}

struct Client {
    inner: MetaClient<Channel>,
    token: &'static str,
}

impl Client {
    async fn connect(address: &str, token: &'static str) -> Client {
        let inner = MetaClient::connect(format!("http://{address}")).await.expect("connect");
        Client { inner, token }
    }

    fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let value = format!("Bearer {}", self.token).parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
        request
    }
}

fn at(path: &str) -> Option<pb::PathAt> {
    Some(pb::PathAt { at: 0, path: path.to_string() })
}

async fn create(c: &mut Client, path: &str) -> pb::Inode {
    let request = pb::CreateRequest {
        target: at(path),
        mode: 0o644,
        exclusive: true,
        flags: Some(pb::OpenFlags { read: true, write: false, truncate: false }),
        client_id: 1,
    };
    let response = c.inner.create(c.req(request)).await.expect("create");
    response.into_inner().inode.expect("inode")
}

async fn mkdir(c: &mut Client, path: &str, recursive: bool) -> pb::Inode {
    let request = pb::MkdirRequest { target: at(path), mode: 0o755, recursive };
    c.inner.mkdir(c.req(request)).await.expect("mkdir").into_inner().inode.expect("inode")
}

async fn rename(c: &mut Client, from: &str, to: &str) {
    let request = pb::RenameRequest { source: at(from), destination: at(to), no_replace: false };
    c.inner.rename(c.req(request)).await.expect("rename");
}

/// Everything observable about the tree: path -> (kind, mode, uid, gid, nlink, size, inode,
/// symlink target, truncate version, layout).
type Snapshot = BTreeMap<String, String>;

async fn snapshot(c: &mut Client) -> Snapshot {
    let mut out = Snapshot::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let mut after = String::new();
        loop {
            let request = pb::ReadDirRequest {
                directory: at(&format!("/{dir}")),
                after: after.clone(),
                limit: 3,
            };
            let page = c.inner.read_dir(c.req(request)).await.expect("readdir").into_inner();
            for entry in &page.entries {
                let path = if dir.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{dir}/{}", entry.name)
                };
                let request = pb::StatRequest { target: at(&path), follow: false };
                let inode = c
                    .inner
                    .stat(c.req(request))
                    .await
                    .expect("stat")
                    .into_inner()
                    .inode
                    .expect("inode");
                assert_eq!(inode.id, entry.inode, "entry and inode agree for {path}");
                assert_eq!(inode.kind, entry.kind);
                out.insert(
                    path.clone(),
                    format!("{inode:?}").replace(&format!("atime_ns: {}", inode.atime_ns), ""),
                );
                if inode.kind == pb::InodeKind::Directory as i32 {
                    dirs.push(path);
                }
            }
            match page.entries.last() {
                Some(last) if page.more => after = last.name.clone(),
                _ => break,
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), free_port());
    let (mut proc, address) = start(&config);
    let mut c = Client::connect(&address, TOKEN).await;

    // Build a tree with hard links, symlinks and renames.
    mkdir(&mut c, "data/train/shard", true).await;
    mkdir(&mut c, "data/eval", false).await;
    for i in 0..5 {
        create(&mut c, &format!("data/train/shard/part-{i}")).await;
    }
    let linked = create(&mut c, "data/eval/set").await;
    let request =
        pb::LinkRequest { old_path: at("data/eval/set"), new_path: at("data/train/set-link") };
    let link = c.inner.link(c.req(request)).await.expect("link").into_inner().inode.expect("inode");
    assert_eq!((link.id, link.nlink), (linked.id, 2));
    let request =
        pb::SymlinkRequest { target: at("latest"), link_target: "data/train/shard".into() };
    c.inner.symlink(c.req(request)).await.expect("symlink");
    let request =
        pb::SymlinkRequest { target: at("data/dangling"), link_target: "/nowhere".into() };
    c.inner.symlink(c.req(request)).await.expect("symlink");
    rename(&mut c, "data/train/shard/part-0", "data/eval/part-0").await;
    rename(&mut c, "data/train/shard", "data/shard-moved").await;
    rename(&mut c, "latest", "data/latest").await;
    let request = pb::RemoveRequest {
        target: at("data/train/shard-gone"),
        kind: pb::RemoveKind::File as i32,
    };
    let missing = c.inner.remove(c.req(request)).await.expect_err("nothing to remove");
    assert_eq!(error_from_status(&missing), ErrorCode::NotFound);
    let request = pb::RemoveRequest {
        target: at("data/shard-moved/part-4"),
        kind: pb::RemoveKind::File as i32,
    };
    c.inner.remove(c.req(request)).await.expect("unlink");
    let request =
        pb::SetAttrRequest { target: at("data/eval"), mode: Some(0o700), ..Default::default() };
    c.inner.set_attr(c.req(request)).await.expect("chmod");
    let request = pb::SetAttrRequest {
        target: at("data/eval/set"),
        length: Some(12345),
        ..Default::default()
    };
    c.inner.set_attr(c.req(request)).await.expect("extend");
    // Following the moved symlink's now-dangling target fails; the symlink itself is there.
    let request = pb::StatRequest { target: at("data/latest"), follow: true };
    let dangling = c.inner.stat(c.req(request)).await.expect_err("dangling");
    assert_eq!(error_from_status(&dangling), ErrorCode::NotFound);
    let request = pb::RealPathRequest { inode: linked.id };
    let real = c.inner.real_path(c.req(request)).await.expect("real path").into_inner().path;
    assert!(real == "/data/eval/set" || real == "/data/train/set-link", "{real}");

    // Tokens are checked: none is refused, alice may not write the root-owned directory.
    let no_token =
        c.inner.stat(Request::new(pb::StatRequest { target: at("data"), follow: true })).await;
    assert_eq!(error_from_status(&no_token.expect_err("no token")), ErrorCode::Unauthenticated);
    let mut alice = Client::connect(&address, ALICE).await;
    let request = pb::MkdirRequest { target: at("data/mine"), mode: 0o755, recursive: false };
    let denied = alice.inner.mkdir(alice.req(request)).await.expect_err("alice is not root");
    assert_eq!(error_from_status(&denied), ErrorCode::PermissionDenied);
    let bad = pb::RemoveRequest { target: at("x"), kind: 99 };
    assert_eq!(
        error_from_status(&c.inner.remove(c.req(bad)).await.expect_err("bad kind")),
        ErrorCode::InvalidArgument
    );

    let before = snapshot(&mut c).await;
    assert!(before.len() >= 12, "{before:#?}");
    let statfs = c.inner.stat_fs(c.req(pb::StatFsRequest {})).await.expect("statfs").into_inner();
    assert!(!statfs.capacity_known, "no mgmtd configured");

    assert!(
        proc.terminate(Duration::from_secs(20)),
        "r3fs-meta exits cleanly on SIGTERM: {:?}",
        proc.output()
    );
    drop(c);
    drop(alice);

    let (mut proc, address) = start(&config);
    let mut c = Client::connect(&address, TOKEN).await;
    let after = snapshot(&mut c).await;
    assert_eq!(before, after, "the tree changed across the restart");
    // Ids handed out after the restart do not collide with earlier ones.
    let fresh = create(&mut c, "data/after-restart").await;
    assert!(!before.values().any(|v| v.contains(&format!("id: {},", fresh.id))));
    let statfs_after =
        c.inner.stat_fs(c.req(pb::StatFsRequest {})).await.expect("statfs").into_inner();
    assert_eq!(statfs_after.inodes, statfs.inodes + 1);
    assert!(proc.terminate(Duration::from_secs(20)), "clean exit: {:?}", proc.output());
}

#[test]
fn an_invalid_config_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"nowhere\"\n[meta]\nsession_timeout_ms = 1\n").expect("write");
    let output = Command::new(meta_binary()).arg("--config").arg(&path).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in ["listen", "session_timeout_ms", "no way to authenticate"] {
        assert!(stderr.contains(needle), "{needle} missing from:\n{stderr}");
    }
}
