//! A real ClickHouse server for tests: its own temp directory, generated config, free ports, run
//! as the `clickhouse` user when the test runs as root (the server refuses to run as root with
//! a data directory owned by another user, and Debian's package creates that user).

#![allow(dead_code)] // each test file uses a subset

use r3fs_testkit::{Proc, free_port, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

pub const SERVER: &str = "/usr/bin/clickhouse-server";
/// The Debian package's binary; `clickhouse-server` is a symlink to it.
pub const SERVER_ALT: &str = "/usr/sbin/clickhouse-server";

pub struct ClickHouse {
    pub proc: Option<Proc>,
    pub http_port: u16,
    pub url: String,
    dir: TempDir,
}

fn server_binary() -> Option<PathBuf> {
    [SERVER_ALT, SERVER].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Why ClickHouse cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if server_binary().is_none() {
        return Some(format!(
            "skipped: no {SERVER_ALT} (install with `apt-get install clickhouse-server`; .ci/run does)"
        ));
    }
    None
}

fn chown_to_clickhouse(path: &Path) -> bool {
    Command::new("chown")
        .args(["-R", "clickhouse:clickhouse"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

impl ClickHouse {
    /// Starts a server on free ports; waits until it answers `SELECT 1`.
    pub fn start() -> ClickHouse {
        Self::start_on(free_port())
    }

    /// Starts a server whose HTTP interface listens on `http_port`.
    pub fn start_on(http_port: u16) -> ClickHouse {
        let dir = tempfile::Builder::new().prefix("r3fs-clickhouse").tempdir().expect("temp dir");
        let mut clickhouse =
            ClickHouse { proc: None, http_port, url: format!("http://127.0.0.1:{http_port}"), dir };
        clickhouse.spawn();
        clickhouse
    }

    fn spawn(&mut self) {
        let root = self.dir.path();
        std::fs::create_dir_all(root.join("data")).expect("data dir");
        std::fs::create_dir_all(root.join("tmp")).expect("tmp dir");
        let tcp_port = free_port();
        let root_text = root.display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root_text}/server.log</log><errorlog>{root_text}/server.err.log</errorlog><size>10M</size><count>1</count></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{root_text}/data/</path>
  <tmp_path>{root_text}/tmp/</tmp_path>
  <users_config>{root_text}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  <mlock_executable>false</mlock_executable>
</yandex>
"#,
            http = self.http_port
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(root.join("config.xml"), config).expect("write config.xml");
        std::fs::write(root.join("users.xml"), users).expect("write users.xml");
        let binary = server_binary().expect("checked by unavailable()");
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let mut command = if root_user {
            // The temp dir must be reachable by the clickhouse user.
            let mut perms = std::fs::metadata(root).expect("stat temp dir").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(root, perms).expect("chmod temp dir");
            assert!(chown_to_clickhouse(root), "chown the ClickHouse temp dir to clickhouse");
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid=clickhouse", "--regid=clickhouse", "--init-groups"])
                .arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        command.arg(format!("--config-file={}/config.xml", root.display())).current_dir(root);
        self.proc = Some(Proc::spawn("clickhouse-server", command));
        let url = format!("127.0.0.1:{}", self.http_port);
        let ready = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            query(&url, "SELECT 1").is_some_and(|body| body.trim() == "1")
        });
        if !ready {
            let log = std::fs::read_to_string(root.join("server.err.log")).unwrap_or_default();
            let output = self.proc.as_mut().map(|p| p.output().join("\n")).unwrap_or_default();
            panic!("clickhouse-server did not answer within 60 s\n{output}\n{log}");
        }
    }

    /// Stops the server (SIGKILL, as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs a query over the HTTP interface; the body as text.
    pub fn query(&self, sql: &str) -> String {
        query(&format!("127.0.0.1:{}", self.http_port), sql)
            .unwrap_or_else(|| panic!("query failed: {sql}"))
    }
}

/// `POST /` with the SQL as body, blocking (std TCP: tests call it from sync code too).
pub fn query(address: &str, sql: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // ClickHouse answers with chunked encoding: undo it.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.push_str(after.get(..size)?);
            rest = after.get(size + 2..)?;
        }
        return Some(out);
    }
    Some(body.to_string())
}
