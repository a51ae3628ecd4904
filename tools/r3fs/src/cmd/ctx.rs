//! What every command shares: the global options, the mgmtd client built from them, the one
//! place gRPC failures become operator-facing errors, and output in table or JSON form.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use r3fs_rpc::error_from_status;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_types::ErrorCode;
use serde::Serialize;
use std::path::PathBuf;

/// Attempts per call against an unreachable mgmtd: an operator waiting at a prompt wants a quick
/// answer, not the daemons' patient retrying.
pub const CLI_ATTEMPTS_MAX: u32 = 3;
pub const CLI_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Longest accepted token file (tokens are short; this only stops reading a wrong, huge file).
pub const TOKEN_FILE_BYTES_MAX: u64 = 4_096;

/// Options accepted before or after any command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// mgmtd gRPC address(es), "host:port", comma-separated; calls follow the primary.
    #[arg(
        long,
        global = true,
        env = "R3FS_MGMTD",
        value_delimiter = ',',
        value_name = "ADDR[,ADDR..]"
    )]
    pub mgmtd: Vec<String>,

    /// User token sent with every call (takes precedence over --token-file).
    #[arg(long, global = true, env = "R3FS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the user token (e.g. the one init-cluster wrote).
    #[arg(long, global = true, env = "R3FS_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Deadline of each mgmtd request.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Per-invocation context handed to every command.
#[derive(Debug)]
pub struct Ctx {
    pub global: GlobalArgs,
}

impl Ctx {
    pub fn new(global: GlobalArgs) -> Self {
        Self { global }
    }

    pub fn json(&self) -> bool {
        self.global.json
    }

    /// The token from `--token`, R3FS_TOKEN or the token file, if any.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.global.token {
            return Ok(Some(token.trim().to_string()));
        }
        let Some(path) = &self.global.token_file else { return Ok(None) };
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("read token file {}", path.display()))?;
        if metadata.len() > TOKEN_FILE_BYTES_MAX {
            bail!(
                "token file {} has {} bytes; a token file holds one token (at most {TOKEN_FILE_BYTES_MAX} bytes)",
                path.display(),
                metadata.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("token file {} is empty", path.display());
        }
        Ok(Some(token.to_string()))
    }

    /// A client for the configured mgmtd addresses (connects lazily).
    pub fn client(&self) -> anyhow::Result<Mgmtd> {
        let addresses: Vec<String> = self
            .global
            .mgmtd
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addresses.is_empty() {
            bail!("no mgmtd address: pass --mgmtd HOST:PORT[,HOST:PORT..] or set R3FS_MGMTD");
        }
        let mut config = MgmtdClientConfig::new(addresses.clone(), self.token()?);
        config.attempts_max = CLI_ATTEMPTS_MAX;
        config.connect_timeout_ms = CLI_CONNECT_TIMEOUT_MS;
        config.request_timeout_ms = self.global.timeout_ms;
        let client = MgmtdClient::new(config).map_err(|e| anyhow!("{e}"))?;
        Ok(Mgmtd { client, addresses })
    }

    /// Prints `value` as pretty JSON.
    pub fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value).context("encode JSON output")?;
        println!("{text}");
        Ok(())
    }
}

/// Writes a token to a new file readable by its owner only; refuses to replace an existing file
/// (a token is shown once, so overwriting one could lose it).
pub fn write_secret_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create token file {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("write token file {}", path.display()))?;
    file.sync_all().with_context(|| format!("sync token file {}", path.display()))?;
    Ok(())
}

/// Reads a text file an operator named, bounded so a wrong path cannot exhaust memory.
pub fn read_input_file(
    path: &std::path::Path,
    what: &str,
    bytes_max: u64,
) -> anyhow::Result<String> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("read {what} {}", path.display()))?;
    if metadata.len() > bytes_max {
        bail!("{what} {} has {} bytes; the limit is {bytes_max}", path.display(), metadata.len());
    }
    std::fs::read_to_string(path).with_context(|| format!("read {what} {}", path.display()))
}

/// The mgmtd client plus what an error message needs to name.
#[derive(Debug, Clone)]
pub struct Mgmtd {
    pub client: MgmtdClient,
    addresses: Vec<String>,
}

impl Mgmtd {
    /// Turns a failed call into an error an operator can act on: an unreachable mgmtd names
    /// every address tried; a refused token says how to pass a valid one.
    pub fn error(&self, status: tonic::Status) -> anyhow::Error {
        describe_status(&status, &self.addresses, &self.client.current_address())
    }
}

/// See [`Mgmtd::error`].
pub fn describe_status(
    status: &tonic::Status,
    addresses: &[String],
    current: &str,
) -> anyhow::Error {
    let code = error_from_status(status);
    let tried = addresses.join(", ");
    let detail = status.message();
    match code {
        ErrorCode::Unavailable | ErrorCode::ConnectionLost if !detail.starts_with("R3FS-") => {
            // A transport failure: nobody answered.
            anyhow!("cannot reach mgmtd at {tried}: {detail}")
        }
        ErrorCode::NotPrimary => {
            anyhow!("no primary mgmtd found (tried {tried}); the instances answered: {detail}")
        }
        ErrorCode::Timeout => anyhow!("mgmtd at {current} timed out: {detail}"),
        ErrorCode::Unauthenticated => anyhow!(
            "mgmtd at {current} refused the token ({detail}); pass a valid token with --token, R3FS_TOKEN or --token-file"
        ),
        ErrorCode::PermissionDenied => anyhow!(
            "mgmtd at {current} denied the request ({detail}); this needs an admin user's token"
        ),
        _ if detail.starts_with("R3FS-") => anyhow!("mgmtd at {current}: {detail}"),
        _ => anyhow!("mgmtd at {current}: {code}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r3fs_rpc::status_from_error;

    #[test]
    fn unreachable_names_every_address() {
        let status = tonic::Status::unavailable("tcp connect error: Connection refused");
        let addresses = vec!["127.0.0.1:1".to_string(), "10.0.0.9:9100".to_string()];
        let message = describe_status(&status, &addresses, "127.0.0.1:1").to_string();
        assert!(message.contains("cannot reach mgmtd at 127.0.0.1:1, 10.0.0.9:9100"), "{message}");
        assert!(message.contains("Connection refused"));
    }

    #[test]
    fn refused_tokens_say_how_to_fix_it() {
        let status = status_from_error(ErrorCode::Unauthenticated, "unknown token");
        let message = describe_status(&status, &["a:1".into()], "a:1").to_string();
        assert!(message.contains("refused the token"), "{message}");
        assert!(message.contains("R3FS-1005"), "{message}");
        assert!(message.contains("--token"), "{message}");
        let status = status_from_error(ErrorCode::PermissionDenied, "admin only");
        let message = describe_status(&status, &["a:1".into()], "a:1").to_string();
        assert!(message.contains("admin"), "{message}");
    }

    #[test]
    fn server_errors_keep_their_code() {
        let status = status_from_error(ErrorCode::ChainNotFound, "chain C7");
        let message = describe_status(&status, &["a:1".into()], "a:1").to_string();
        assert!(message.contains("R3FS-") && message.contains("chain C7"), "{message}");
    }
}
