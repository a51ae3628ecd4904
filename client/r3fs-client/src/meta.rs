//! [`MetaClient`]: the meta service's gRPC API (proto/r3fs-rpc/proto/meta.proto) with the
//! client's conventions: every call carries the user token (`authorization: Bearer <token>`),
//! has a deadline, and moves to the next meta address (meta is stateless: any instance serves)
//! with a bounded backoff when the current one is unavailable. Other errors come back as
//! [`ClientError::Failed`] with the exact r3fs code from the status.
//!
//! A call retried after a connection loss may have taken effect the first time (meta committed,
//! the reply was lost): a retried exclusive create then sees Exists, a retried remove NotFound.
//! Callers treat those as such; timeouts are not retried.
//!
//! Also here: the conversions between [`Layout`] and its protobuf form.

use crate::config::{ClientConfig, RetryConfig};
use crate::error::{ClientError, ClientResult};
use crate::retry::Attempts;
use r3fs_rpc::meta as pb;
use r3fs_rpc::meta::meta_client::MetaClient as GrpcClient;
use r3fs_rpc::mgmtd_client::{TOKEN_METADATA_KEY, TOKEN_SCHEME};
use r3fs_types::{ChainSelection, ChainTableId, ChainTableVersion, ErrorCode, Layout};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// The protobuf form of a layout.
pub fn layout_to_pb(layout: &Layout) -> pb::Layout {
    pb::Layout {
        chain_table_id: layout.chain_table_id.0,
        chain_table_version: layout.chain_table_version.0,
        chunk_size: layout.chunk_size,
        stripe_size: layout.stripe_size,
        chains: Some(match &layout.chains {
            ChainSelection::ShuffleV1 { seed } => pb::layout::Chains::ShuffleV1Seed(*seed),
            ChainSelection::List(positions) => {
                pb::layout::Chains::ChainList(pb::ChainList { positions: positions.clone() })
            }
        }),
    }
}

/// A layout from its protobuf form (not validated against a chain table here).
pub fn layout_from_pb(layout: &pb::Layout) -> ClientResult<Layout> {
    let chains = match &layout.chains {
        Some(pb::layout::Chains::ShuffleV1Seed(seed)) => ChainSelection::ShuffleV1 { seed: *seed },
        Some(pb::layout::Chains::ChainList(list)) => ChainSelection::List(list.positions.clone()),
        None => {
            return Err(ClientError::failed(
                ErrorCode::InvalidArgument,
                "layout names no chain selection",
            ));
        }
    };
    Ok(Layout {
        chain_table_id: ChainTableId(layout.chain_table_id),
        chain_table_version: ChainTableVersion(layout.chain_table_version),
        chunk_size: layout.chunk_size,
        stripe_size: layout.stripe_size,
        chains,
    })
}

#[derive(Debug)]
struct Inner {
    addresses: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    token: Option<AsciiMetadataValue>,
    request_timeout: Duration,
    retry: RetryConfig,
}

/// The meta service's client; cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

macro_rules! meta_calls {
    ($($(#[$doc:meta])* $name:ident: $req:ty => $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, request: $req) -> ClientResult<$resp> {
                self.call(request, |mut client, request| async move { client.$name(request).await }).await
            }
        )*
    };
}

impl MetaClient {
    /// Connects lazily: no IO here. Needs at least one address in `config.meta_addresses`.
    pub fn new(config: &ClientConfig) -> ClientResult<MetaClient> {
        config.validate().map_err(ClientError::InvalidConfig)?;
        if config.meta_addresses.is_empty() {
            return Err(ClientError::InvalidConfig(vec![
                "meta_addresses: at least one meta address is needed".into(),
            ]));
        }
        let token = if config.token.is_empty() {
            None
        } else {
            Some(
                AsciiMetadataValue::try_from(format!("{TOKEN_SCHEME}{}", config.token))
                    .map_err(|e| ClientError::InvalidConfig(vec![format!("token: {e}")]))?,
            )
        };
        let mut channels = Vec::with_capacity(config.meta_addresses.len());
        for address in &config.meta_addresses {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| {
                    ClientError::InvalidConfig(vec![format!("meta address {address}: {e}")])
                })?
                .connect_timeout(Duration::from_millis(config.rpc.connect_timeout_ms))
                .tcp_nodelay(true);
            channels.push(endpoint.connect_lazy());
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                addresses: config.meta_addresses.clone(),
                channels,
                current: AtomicUsize::new(0),
                token,
                request_timeout: Duration::from_millis(config.rpc.request_timeout_ms),
                retry: config.retry.clone(),
            }),
        })
    }

    /// The address calls currently go to.
    pub fn current_address(&self) -> &str {
        let index = self.inner.current.load(Ordering::Relaxed) % self.inner.addresses.len();
        &self.inner.addresses[index]
    }

    /// Runs one rpc with the token, a deadline, and failover across addresses.
    async fn call<Req, Resp, F, Fut>(&self, request: Req, rpc: F) -> ClientResult<Resp>
    where
        Req: Clone,
        F: Fn(GrpcClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let inner = &self.inner;
        let mut attempts = Attempts::new(&inner.retry);
        loop {
            let raw = inner.current.load(Ordering::Relaxed);
            let index = raw % inner.channels.len();
            let mut attempt = Request::new(request.clone());
            if let Some(token) = &inner.token {
                attempt.metadata_mut().insert(TOKEN_METADATA_KEY, token.clone());
            }
            attempt.set_timeout(inner.request_timeout);
            let client = GrpcClient::new(inner.channels[index].clone());
            let status =
                match tokio::time::timeout(inner.request_timeout, rpc(client, attempt)).await {
                    Ok(Ok(response)) => return Ok(response.into_inner()),
                    Ok(Err(status)) => status,
                    Err(_) => {
                        return Err(ClientError::failed(
                            ErrorCode::Timeout,
                            format!(
                                "meta at {} did not answer within {:?}",
                                inner.addresses[index], inner.request_timeout
                            ),
                        ));
                    }
                };
            let code = r3fs_rpc::error_from_status(&status);
            if !matches!(code, ErrorCode::Unavailable | ErrorCode::ConnectionLost) {
                return Err(ClientError::Failed { code, detail: status.message().to_string() });
            }
            // Move on unless another call already did.
            let _ = inner.current.compare_exchange(
                raw,
                raw.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let detail = format!("meta at {}: {}", inner.addresses[index], status.message());
            attempts.failed(code, &detail).await?;
        }
    }

    meta_calls! {
        lookup: pb::LookupRequest => pb::InodeResponse;
        stat: pb::StatRequest => pb::InodeResponse;
        batch_stat: pb::BatchStatRequest => pb::BatchStatResponse;
        create: pb::CreateRequest => pb::OpenResponse;
        open: pb::OpenRequest => pb::OpenResponse;
        mkdir: pb::MkdirRequest => pb::InodeResponse;
        symlink: pb::SymlinkRequest => pb::InodeResponse;
        read_link: pb::ReadLinkRequest => pb::ReadLinkResponse;
        link: pb::LinkRequest => pb::InodeResponse;
        remove: pb::RemoveRequest => pb::RemoveResponse;
        rename: pb::RenameRequest => pb::RenameResponse;
        read_dir: pb::ReadDirRequest => pb::ReadDirResponse;
        set_attr: pb::SetAttrRequest => pb::InodeResponse;
        report_length: pb::LengthRequest => pb::LengthResponse;
        fsync: pb::LengthRequest => pb::LengthResponse;
        close: pb::LengthRequest => pb::LengthResponse;
        stat_fs: pb::StatFsRequest => pb::StatFsResponse;
        real_path: pb::RealPathRequest => pb::RealPathResponse;
        set_layout: pb::SetLayoutRequest => pb::InodeResponse;
    }
}

/// A path relative to the directory `at` (0 = the root), or absolute.
pub fn path_at(at: u64, path: &str) -> pb::PathAt {
    pb::PathAt { at, path: path.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_through_protobuf() {
        for chains in [ChainSelection::ShuffleV1 { seed: 99 }, ChainSelection::List(vec![3, 1, 2])]
        {
            let layout = Layout {
                chain_table_id: ChainTableId(2),
                chain_table_version: ChainTableVersion(5),
                chunk_size: 1 << 20,
                stripe_size: 3,
                chains,
            };
            assert_eq!(layout_from_pb(&layout_to_pb(&layout)).expect("round trip"), layout);
        }
        let mut missing = layout_to_pb(&Layout {
            chain_table_id: ChainTableId(1),
            chain_table_version: ChainTableVersion(1),
            chunk_size: 1 << 20,
            stripe_size: 1,
            chains: ChainSelection::ShuffleV1 { seed: 1 },
        });
        missing.chains = None;
        assert_eq!(
            layout_from_pb(&missing).expect_err("no selection").code(),
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn a_client_needs_a_meta_address() {
        let config = ClientConfig::default();
        assert!(matches!(MetaClient::new(&config), Err(ClientError::InvalidConfig(_))));
    }

    /// Against addresses nobody listens on, a call gives up after the retry bound with the
    /// transport's Unavailable, having tried every address.
    #[tokio::test]
    async fn unreachable_meta_fails_after_bounded_attempts() {
        let free = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("127.0.0.1:{}", listener.local_addr().expect("addr").port())
        };
        let config = ClientConfig {
            meta_addresses: vec![free(), free()],
            token: "t".into(),
            retry: RetryConfig {
                attempts_max: 3,
                backoff_initial_ms: 1,
                backoff_max_ms: 4,
                elapsed_max_ms: 10_000,
            },
            ..Default::default()
        };
        let client = MetaClient::new(&config).expect("client");
        let first = client.current_address().to_string();
        let error = client.stat_fs(pb::StatFsRequest {}).await.expect_err("nobody listens");
        match error {
            ClientError::RetriesExhausted { attempts, last_code, .. } => {
                assert_eq!((attempts, last_code), (3, ErrorCode::Unavailable));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_ne!(client.current_address(), first, "moved to the other address");
    }
}
