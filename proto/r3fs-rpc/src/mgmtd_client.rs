//! A client of the cluster manager that follows the primary: the one way storage daemons, meta
//! services, clients and the CLI talk to mgmtd.
//!
//! [`MgmtdClient`] holds a list of mgmtd addresses and a user token. Every call:
//! 1. goes to the address it believes is the primary (the first one at start);
//! 2. carries the token in the metadata entry `authorization: Bearer <token>`
//!    ([`TOKEN_METADATA_KEY`]);
//! 3. on R3FS-2001 NotPrimary, switches to the address in the status's
//!    [`PRIMARY_ADDRESS_METADATA_KEY`] entry (adding it to the list if new) and retries at once,
//!    at most [`MgmtdClientConfig::redirects_max`] times per call;
//! 4. on an unavailable server (connection refused, NotPrimary without an address, lease lost),
//!    moves to the next address and retries after an exponential, capped backoff, at most
//!    [`MgmtdClientConfig::attempts_max`] attempts;
//! 5. returns any other status unchanged (read it with [`crate::error_from_status`]).
//!
//! A retried call may have taken effect the first time (a connection can drop after the server
//! committed): mutating calls then see their own effect (e.g. UserExists, StaleHeartbeat), which
//! callers treat as such. Timeouts are never retried.
//!
//! [`RoutingWatcher`] streams routing-info versions (r3fs.mgmtd.Mgmtd/WatchRoutingInfo),
//! reconnecting to the new primary when a stream ends.
//!
//! The server side of the conventions is here too ([`not_primary_status`], [`token_from_metadata`])
//! so both ends encode them in one place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r3fs_types::ErrorCode;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::admin::admin_client::AdminClient;
use crate::mgmtd::mgmtd_client::MgmtdClient as MgmtdGrpcClient;
use crate::mgmtd::{self as pb};
use crate::{admin, error_from_status, status_from_error};

/// Metadata entry that carries the caller's token: `authorization: Bearer <token>`.
pub const TOKEN_METADATA_KEY: &str = "authorization";
/// Scheme prefix of the [`TOKEN_METADATA_KEY`] value.
pub const TOKEN_SCHEME: &str = "Bearer ";
/// Metadata entry of a NotPrimary status: the primary's gRPC address ("host:port").
pub const PRIMARY_ADDRESS_METADATA_KEY: &str = "r3fs-primary-address";

/// Most addresses a client remembers (configured plus learned from redirects).
pub const ADDRESSES_MAX: usize = 64;

/// The token a request carries, if any (server side).
pub fn token_from_metadata(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get(TOKEN_METADATA_KEY)?.to_str().ok()?;
    let token = value.strip_prefix(TOKEN_SCHEME)?.trim();
    (!token.is_empty()).then_some(token)
}

/// The NotPrimary status a non-primary mgmtd answers, pointing at the primary when known.
pub fn not_primary_status(primary_address: Option<&str>) -> Status {
    let message = match primary_address {
        Some(address) => format!("this mgmtd is not the primary; the primary is {address}"),
        None => {
            "this mgmtd is not the primary and knows no primary holding a valid lease".to_string()
        }
    };
    let mut status = status_from_error(ErrorCode::NotPrimary, message);
    if let Some(value) = primary_address.and_then(|a| AsciiMetadataValue::try_from(a).ok()) {
        status.metadata_mut().insert(PRIMARY_ADDRESS_METADATA_KEY, value);
    }
    status
}

/// The primary's address carried by a NotPrimary status.
pub fn primary_address_from_status(status: &Status) -> Option<String> {
    let value = status.metadata().get(PRIMARY_ADDRESS_METADATA_KEY)?.to_str().ok()?;
    (!value.is_empty()).then(|| value.to_string())
}

/// TLS for the connection to mgmtd (the server's certificate is checked against `ca_pem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA (or self-signed certificate) that signed mgmtd's certificate.
    pub ca_pem: Vec<u8>,
    /// Name the certificate must be valid for (e.g. "mgmtd.r3fs" or "localhost").
    pub domain: String,
}

/// Bounds and identity of a [`MgmtdClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MgmtdClientConfig {
    /// mgmtd gRPC addresses, "host:port". At least one.
    pub addresses: Vec<String>,
    /// The user token sent with every call (`None`: only GetPrimary and InitCluster work).
    pub token: Option<String>,
    pub connect_timeout_ms: u64,
    /// Deadline of one unary attempt (a long-poll adds its wait to it).
    pub request_timeout_ms: u64,
    /// Attempts per call against unavailable servers, the first included.
    pub attempts_max: u32,
    /// First backoff; doubles per failed attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// NotPrimary redirects followed per call (without backoff).
    pub redirects_max: u32,
    /// `Some`: connect with TLS.
    pub tls: Option<ClientTls>,
}

impl MgmtdClientConfig {
    /// Defaults: 2 s connect, 10 s per request, 8 attempts with 50 ms .. 2 s backoff (at most
    /// ~6 s of backoff in total), 4 redirects.
    pub fn new(addresses: Vec<String>, token: Option<String>) -> Self {
        Self {
            addresses,
            token,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            attempts_max: 8,
            backoff_initial_ms: 50,
            backoff_max_ms: 2_000,
            redirects_max: 4,
            tls: None,
        }
    }

    /// Every violation at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.addresses.is_empty() {
            errors.push("mgmtd client: at least one mgmtd address is needed".to_string());
        }
        if self.addresses.len() > ADDRESSES_MAX {
            errors.push(format!("mgmtd client: at most {ADDRESSES_MAX} addresses"));
        }
        for address in &self.addresses {
            if address.is_empty() || address.contains("://") || !address.contains(':') {
                errors.push(format!("mgmtd client: address {address:?} is not host:port"));
            }
        }
        if let Some(token) = &self.token
            && AsciiMetadataValue::try_from(format!("{TOKEN_SCHEME}{token}")).is_err()
        {
            errors.push("mgmtd client: the token is not printable ASCII".to_string());
        }
        if self.attempts_max == 0 {
            errors.push("mgmtd client: attempts_max must be at least 1".to_string());
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            errors.push("mgmtd client: timeouts must be positive".to_string());
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            errors.push(format!(
                "mgmtd client: backoff_initial_ms ({}) exceeds backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn backoff(&self, failed_attempts: u32) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(20);
        let bound = self.backoff_initial_ms.saturating_mul(1 << doublings).min(self.backoff_max_ms);
        // Half fixed, half jitter, so clients that lost the same primary spread out.
        let jitter = if bound < 2 { 0 } else { pseudo_random() % (bound / 2) };
        Duration::from_millis(bound / 2 + jitter)
    }
}

/// Cheap jitter source (not for secrets): the clock's nanoseconds, mixed.
fn pseudo_random() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut z = u64::from(nanos).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// Why a client could not be built.
#[derive(Debug)]
pub enum ClientError {
    InvalidConfig(Vec<String>),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::InvalidConfig(errors) => {
                write!(f, "invalid mgmtd client config: {}", errors.join("; "))
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// Follow-the-primary mgmtd client; cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct MgmtdClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: MgmtdClientConfig,
    token: Option<AsciiMetadataValue>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    addresses: Vec<String>,
    /// Index into `addresses` of the believed primary.
    current: usize,
    /// Lazily connected channels by address.
    channels: HashMap<String, Channel>,
}

/// What to do after a failed attempt.
enum Next {
    Redirect(String),
    Rotate,
    Fail,
}

macro_rules! unary_calls {
    ($($(#[$doc:meta])* $name:ident: $client:ident, $req:ty => $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, request: $req) -> Result<$resp, Status> {
                let timeout = self.request_timeout();
                self.call(request, timeout, |channel, request| async move {
                    $client::new(channel).$name(request).await
                })
                .await
            }
        )*
    };
}

impl MgmtdClient {
    /// Builds a client; connects lazily, so this does no IO.
    pub fn new(config: MgmtdClientConfig) -> Result<MgmtdClient, ClientError> {
        config.validate().map_err(ClientError::InvalidConfig)?;
        let token = match &config.token {
            Some(token) => Some(
                AsciiMetadataValue::try_from(format!("{TOKEN_SCHEME}{token}"))
                    .map_err(|e| ClientError::InvalidConfig(vec![e.to_string()]))?,
            ),
            None => None,
        };
        let state =
            State { addresses: config.addresses.clone(), current: 0, channels: HashMap::new() };
        Ok(MgmtdClient { inner: Arc::new(Inner { config, token, state: Mutex::new(state) }) })
    }

    /// The same connections with another token (e.g. the CLI after init-cluster).
    pub fn with_token(&self, token: Option<String>) -> Result<MgmtdClient, ClientError> {
        let mut config = self.inner.config.clone();
        config.token = token;
        MgmtdClient::new(config)
    }

    pub fn config(&self) -> &MgmtdClientConfig {
        &self.inner.config
    }

    /// The address calls currently go to.
    pub fn current_address(&self) -> String {
        let state = self.lock();
        state.addresses[state.current].clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data (plain assignments).
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.request_timeout_ms)
    }

    fn channel(&self) -> Result<(String, Channel), Status> {
        let mut state = self.lock();
        let address = state.addresses[state.current].clone();
        if let Some(channel) = state.channels.get(&address) {
            return Ok((address, channel.clone()));
        }
        let config = &self.inner.config;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| {
                status_from_error(
                    ErrorCode::InvalidArgument,
                    format!("mgmtd address {address}: {e}"),
                )
            })?
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            let tls_config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
                .domain_name(tls.domain.clone());
            endpoint = endpoint.tls_config(tls_config).map_err(|e| {
                status_from_error(ErrorCode::InvalidConfig, format!("mgmtd client TLS: {e}"))
            })?;
        }
        let channel = endpoint.connect_lazy();
        state.channels.insert(address.clone(), channel.clone());
        Ok((address, channel))
    }

    /// Points calls at `address` (a primary named by a NotPrimary answer).
    fn switch_to(&self, address: &str) {
        let mut state = self.lock();
        let index = match state.addresses.iter().position(|a| a == address) {
            Some(index) => index,
            None if state.addresses.len() < ADDRESSES_MAX => {
                state.addresses.push(address.to_string());
                state.addresses.len() - 1
            }
            // Full: replace the current (failed) one rather than grow without bound.
            None => {
                let current = state.current;
                state.addresses[current] = address.to_string();
                current
            }
        };
        state.current = index;
    }

    /// Moves past `failed` unless another call already did.
    fn rotate_from(&self, failed: &str) {
        let mut state = self.lock();
        if state.addresses[state.current] == failed {
            state.current = (state.current + 1) % state.addresses.len();
        }
    }

    fn classify(&self, status: &Status, address: &str) -> Next {
        match error_from_status(status) {
            ErrorCode::NotPrimary => match primary_address_from_status(status) {
                Some(primary) if primary != address => Next::Redirect(primary),
                _ => Next::Rotate,
            },
            ErrorCode::Unavailable | ErrorCode::LeaseLost | ErrorCode::ConnectionLost => {
                Next::Rotate
            }
            _ => Next::Fail,
        }
    }

    fn decorate<T>(&self, request: &mut Request<T>, timeout: Option<Duration>) {
        if let Some(token) = &self.inner.token {
            request.metadata_mut().insert(TOKEN_METADATA_KEY, token.clone());
        }
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
    }

    /// Runs one rpc with the follow-the-primary and retry rules of the module doc. `timeout`
    /// bounds each attempt (for a streaming rpc: until the response headers arrive).
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        request: Req,
        timeout: Duration,
        rpc: F,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.call_inner(request, timeout, true, rpc).await
    }

    async fn call_inner<Req, Resp, F, Fut>(
        &self,
        request: Req,
        timeout: Duration,
        deadline_header: bool,
        rpc: F,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let config = &self.inner.config;
        let mut failures = 0u32;
        let mut redirects = 0u32;
        loop {
            let (address, channel) = self.channel()?;
            let mut attempt = Request::new(request.clone());
            self.decorate(&mut attempt, deadline_header.then_some(timeout));
            let status = match tokio::time::timeout(timeout, rpc(channel, attempt)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => {
                    return Err(status_from_error(
                        ErrorCode::Timeout,
                        format!("mgmtd at {address} did not answer within {timeout:?}"),
                    ));
                }
            };
            match self.classify(&status, &address) {
                Next::Redirect(primary) if redirects < config.redirects_max => {
                    redirects += 1;
                    tracing::debug!(%address, %primary, "mgmtd is not primary; following");
                    self.switch_to(&primary);
                }
                Next::Redirect(_) | Next::Rotate => {
                    failures += 1;
                    if failures >= config.attempts_max {
                        return Err(status);
                    }
                    self.rotate_from(&address);
                    tokio::time::sleep(config.backoff(failures)).await;
                }
                Next::Fail => return Err(status),
            }
        }
    }

    unary_calls! {
        /// Who is primary (any instance answers; no token needed).
        get_primary: MgmtdGrpcClient, pb::GetPrimaryRequest => pb::GetPrimaryResponse;
        register_node: MgmtdGrpcClient, pb::RegisterNodeRequest => pb::RegisterNodeResponse;
        heartbeat: MgmtdGrpcClient, pb::HeartbeatRequest => pb::HeartbeatResponse;
        get_config: MgmtdGrpcClient, pb::GetConfigRequest => pb::ConfigVersion;
        list_config_versions: MgmtdGrpcClient, pb::ListConfigVersionsRequest => pb::ListConfigVersionsResponse;
        resolve_token: MgmtdGrpcClient, pb::ResolveTokenRequest => pb::ResolveTokenResponse;
        init_cluster: AdminClient, admin::InitClusterRequest => admin::InitClusterResponse;
        list_nodes: AdminClient, admin::ListNodesRequest => admin::ListNodesResponse;
        set_node_disabled: AdminClient, admin::SetNodeDisabledRequest => admin::SetNodeDisabledResponse;
        list_chains: AdminClient, admin::ListChainsRequest => admin::ListChainsResponse;
        list_chain_tables: AdminClient, admin::ListChainTablesRequest => admin::ListChainTablesResponse;
        list_targets: AdminClient, admin::ListTargetsRequest => admin::ListTargetsResponse;
        create_targets: AdminClient, admin::CreateTargetsRequest => admin::CreateTargetsResponse;
        upload_chains: AdminClient, admin::UploadChainsRequest => admin::UploadChainsResponse;
        upload_chain_table: AdminClient, admin::UploadChainTableRequest => admin::UploadChainTableResponse;
        offline_target: AdminClient, admin::OfflineTargetRequest => admin::OfflineTargetResponse;
        remove_target: AdminClient, admin::RemoveTargetRequest => admin::RemoveTargetResponse;
        add_target_to_chain: AdminClient, admin::AddTargetToChainRequest => admin::AddTargetToChainResponse;
        rotate_last_serving: AdminClient, admin::RotateLastServingRequest => admin::RotateLastServingResponse;
        shutdown_all_chains: AdminClient, admin::ShutdownAllChainsRequest => admin::ShutdownAllChainsResponse;
        start_all_chains: AdminClient, admin::StartAllChainsRequest => admin::StartAllChainsResponse;
        add_user: AdminClient, admin::AddUserRequest => admin::AddUserResponse;
        list_users: AdminClient, admin::ListUsersRequest => admin::ListUsersResponse;
        remove_user: AdminClient, admin::RemoveUserRequest => admin::RemoveUserResponse;
        set_config: AdminClient, admin::SetConfigRequest => admin::SetConfigResponse;
    }

    /// The current routing info, or — with `wait` — the first version above `known_version`
    /// published within `wait` (long-poll). `Ok(None)`: nothing newer within `wait`.
    pub async fn get_routing_info(
        &self,
        known_version: u64,
        wait: Duration,
    ) -> Result<Option<pb::RoutingInfo>, Status> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let request = pb::GetRoutingInfoRequest { known_routing_version: known_version, wait_ms };
        let timeout = self.request_timeout() + wait;
        let response = self
            .call(request, timeout, |channel, request| async move {
                MgmtdGrpcClient::new(channel).get_routing_info(request).await
            })
            .await?;
        Ok(if response.changed { response.routing } else { None })
    }

    /// A watcher of routing versions above `known_version`.
    pub fn watch_routing(&self, known_version: u64) -> RoutingWatcher {
        RoutingWatcher { client: self.clone(), known_version, stream: None }
    }

    async fn open_watch(&self, known_version: u64) -> Result<Streaming<pb::RoutingInfo>, Status> {
        let request = pb::WatchRoutingInfoRequest { known_routing_version: known_version };
        // No deadline header: it would end the stream; the timeout bounds only the open.
        self.call_inner(request, self.request_timeout(), false, |channel, request| async move {
            MgmtdGrpcClient::new(channel).watch_routing_info(request).await
        })
        .await
    }
}

/// Yields every routing version above the last one it returned, following the primary across
/// mgmtd failovers (see the module doc). Each [`RoutingWatcher::next`] is bounded by the client's
/// `attempts_max` reconnections.
#[derive(Debug)]
pub struct RoutingWatcher {
    client: MgmtdClient,
    known_version: u64,
    stream: Option<Streaming<pb::RoutingInfo>>,
}

impl RoutingWatcher {
    /// The newest version returned so far (or the one the watcher started from).
    pub fn known_version(&self) -> u64 {
        self.known_version
    }

    /// Waits for the next routing version above [`RoutingWatcher::known_version`].
    pub async fn next(&mut self) -> Result<pb::RoutingInfo, Status> {
        let config = self.client.config().clone();
        let mut failures = 0u32;
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => self.stream.insert(self.client.open_watch(self.known_version).await?),
            };
            let status = match stream.message().await {
                Ok(Some(info)) if info.routing_version > self.known_version => {
                    self.known_version = info.routing_version;
                    return Ok(info);
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    status_from_error(ErrorCode::ConnectionLost, "routing watch stream ended")
                }
                Err(status) => status,
            };
            self.stream = None;
            let retry = match error_from_status(&status) {
                ErrorCode::NotPrimary => {
                    if let Some(primary) = primary_address_from_status(&status) {
                        self.client.switch_to(&primary);
                    }
                    true
                }
                code => {
                    matches!(
                        code,
                        ErrorCode::Unavailable | ErrorCode::ConnectionLost | ErrorCode::LeaseLost
                    ) || status.code() == tonic::Code::Unknown
                }
            };
            failures += 1;
            if !retry || failures >= config.attempts_max {
                return Err(status);
            }
            tokio::time::sleep(config.backoff(failures)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_through_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(token_from_metadata(&metadata), None);
        metadata.insert(TOKEN_METADATA_KEY, AsciiMetadataValue::from_static("Bearer abc123"));
        assert_eq!(token_from_metadata(&metadata), Some("abc123"));
        metadata.insert(TOKEN_METADATA_KEY, AsciiMetadataValue::from_static("Basic abc123"));
        assert_eq!(token_from_metadata(&metadata), None, "other schemes are not tokens");
        metadata.insert(TOKEN_METADATA_KEY, AsciiMetadataValue::from_static("Bearer "));
        assert_eq!(token_from_metadata(&metadata), None, "empty token");
    }

    #[test]
    fn not_primary_status_carries_the_address() {
        let status = not_primary_status(Some("10.0.0.1:9100"));
        assert_eq!(error_from_status(&status), ErrorCode::NotPrimary);
        assert_eq!(primary_address_from_status(&status).as_deref(), Some("10.0.0.1:9100"));
        let status = not_primary_status(None);
        assert_eq!(error_from_status(&status), ErrorCode::NotPrimary);
        assert_eq!(primary_address_from_status(&status), None);
    }

    #[test]
    fn config_validation_reports_every_violation() {
        let mut config = MgmtdClientConfig::new(vec![], Some("tok\nen".into()));
        config.attempts_max = 0;
        config.backoff_initial_ms = 10;
        config.backoff_max_ms = 1;
        let errors = config.validate().expect_err("invalid config");
        assert_eq!(errors.len(), 4, "{errors:?}");
        let config = MgmtdClientConfig::new(vec!["http://x:1".into()], None);
        assert_eq!(config.validate().expect_err("scheme in address").len(), 1);
        assert!(MgmtdClientConfig::new(vec!["127.0.0.1:9100".into()], None).validate().is_ok());
    }

    #[test]
    fn backoff_is_bounded() {
        let config = MgmtdClientConfig::new(vec!["a:1".into()], None);
        for failures in 1..100 {
            let backoff = config.backoff(failures);
            assert!(
                backoff <= Duration::from_millis(config.backoff_max_ms),
                "{failures}: {backoff:?}"
            );
            assert!(backoff >= Duration::from_millis(config.backoff_initial_ms / 2));
        }
    }

    /// Against an address nobody listens on, a call fails after the bounded attempts with the
    /// transport's Unavailable, and rotates through every configured address.
    #[tokio::test]
    async fn unreachable_mgmtd_fails_after_bounded_attempts() {
        let free = |_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("127.0.0.1:{}", listener.local_addr().expect("addr").port())
        };
        let addresses: Vec<String> = (0..2).map(free).collect();
        let mut config = MgmtdClientConfig::new(addresses.clone(), Some("t".into()));
        config.attempts_max = 3;
        config.backoff_initial_ms = 1;
        config.backoff_max_ms = 4;
        let client = MgmtdClient::new(config).expect("client");
        let status =
            client.get_primary(pb::GetPrimaryRequest {}).await.expect_err("nobody listens");
        assert_eq!(error_from_status(&status), ErrorCode::Unavailable, "{status:?}");
        // Two failures rotated twice over two addresses: back at the first.
        assert_eq!(client.current_address(), addresses[0]);
    }
}
