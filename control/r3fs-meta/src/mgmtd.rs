//! The mgmtd-backed implementations of [`UserResolver`] (Mgmtd.ResolveToken) and
//! [`ClusterInfo`] (routing info: target usage, chain tables), over the follow-the-primary
//! [`MgmtdClient`].

use crate::cluster::{Capacity, ClusterInfo};
use crate::error::{MetaError, MetaResult};
use crate::perm::User;
use crate::user::UserResolver;
use async_trait::async_trait;
use r3fs_rpc::admin::ListTargetsRequest;
use r3fs_rpc::error_from_status;
use r3fs_rpc::mgmtd::{PublicTargetState, ResolveTokenRequest, RoutingInfo, TargetInfo};
use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_types::{ChainTableId, ChainTableVersion};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn from_status(status: &tonic::Status) -> MetaError {
    MetaError::new(error_from_status(status), format!("mgmtd: {}", status.message()))
}

/// Resolves tokens with Mgmtd.ResolveToken (wrap it in a [`crate::user::CachedUserResolver`]).
#[derive(Debug, Clone)]
pub struct MgmtdUserResolver {
    client: MgmtdClient,
}

impl MgmtdUserResolver {
    pub fn new(client: MgmtdClient) -> Self {
        Self { client }
    }
}

#[async_trait]
impl UserResolver for MgmtdUserResolver {
    async fn resolve(&self, token: &str) -> MetaResult<User> {
        let response = self
            .client
            .resolve_token(ResolveTokenRequest { token: token.to_string() })
            .await
            .map_err(|s| from_status(&s))?;
        let user = response
            .user
            .ok_or_else(|| MetaError::internal("mgmtd resolved a token to no user"))?;
        Ok(User { uid: user.uid, gid: user.gid, groups: user.groups, admin: user.admin })
    }
}

/// Routing info and target usage from mgmtd, each fetched at most every `refresh` (statfs and
/// set-layout are rare; a slightly old usage figure is fine).
#[derive(Debug)]
pub struct MgmtdClusterInfo {
    client: MgmtdClient,
    refresh: Duration,
    cached: Mutex<Option<(Instant, Arc<RoutingInfo>)>>,
    capacity: Mutex<Option<(Instant, Capacity)>>,
}

impl MgmtdClusterInfo {
    pub fn new(client: MgmtdClient, refresh: Duration) -> Self {
        Self { client, refresh, cached: Mutex::new(None), capacity: Mutex::new(None) }
    }

    async fn routing(&self) -> MetaResult<Arc<RoutingInfo>> {
        {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, routing)) = cached.as_ref()
                && at.elapsed() < self.refresh
            {
                return Ok(routing.clone());
            }
        }
        let routing = self
            .client
            .get_routing_info(0, Duration::ZERO)
            .await
            .map_err(|s| from_status(&s))?
            .ok_or_else(|| MetaError::internal("mgmtd answered no routing info"))?;
        let routing = Arc::new(routing);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), routing.clone()));
        Ok(routing)
    }
}

#[async_trait]
impl ClusterInfo for MgmtdClusterInfo {
    /// What files can use, from the capacity and usage the storage daemons report in their
    /// heartbeats (see [`capacity_of`]). Asked with ListTargets, which reads the current figures:
    /// mgmtd serves routing info from a cache per routing version, and usage changes do not bump
    /// the version.
    async fn capacity(&self) -> MetaResult<Capacity> {
        {
            let cached = self.capacity.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, capacity)) = cached.as_ref()
                && at.elapsed() < self.refresh
            {
                return Ok(*capacity);
            }
        }
        let targets = self
            .client
            .list_targets(ListTargetsRequest {})
            .await
            .map_err(|s| from_status(&s))?
            .targets;
        let capacity = capacity_of(&targets);
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), capacity));
        Ok(capacity)
    }

    async fn chain_table_len(
        &self,
        table: ChainTableId,
        version: ChainTableVersion,
    ) -> MetaResult<Option<u32>> {
        let routing = self.routing().await?;
        Ok(routing
            .chain_tables
            .iter()
            .find(|t| t.table_id == table.0 && t.version == version.0)
            .map(|t| t.chain_ids.len() as u32))
    }
}

/// Every chain holds a full copy of its chunks on each of its targets, so a chain can store as
/// much as its smallest target and has used as much as its fullest one; the file system is the
/// sum of its chains. Targets of chains not uploaded yet (public state unspecified) hold no file
/// data and are left out; a target whose capacity is not reported yet (0) does not count towards
/// its chain's minimum.
pub fn capacity_of(targets: &[TargetInfo]) -> Capacity {
    let mut chains: BTreeMap<u32, Capacity> = BTreeMap::new();
    for target in targets {
        if target.public_state == PublicTargetState::Unspecified as i32 {
            continue;
        }
        let chain = chains
            .entry(target.chain_id)
            .or_insert(Capacity { total_bytes: u64::MAX, used_bytes: 0 });
        if target.total_bytes > 0 {
            chain.total_bytes = chain.total_bytes.min(target.total_bytes);
        }
        chain.used_bytes = chain.used_bytes.max(target.used_bytes);
    }
    chains.values().fold(Capacity::default(), |sum, chain| Capacity {
        // u64::MAX: no target of the chain reported its capacity yet.
        total_bytes: sum.total_bytes.saturating_add(match chain.total_bytes {
            u64::MAX => 0,
            bytes => bytes,
        }),
        used_bytes: sum.used_bytes.saturating_add(chain.used_bytes),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    //! Against a fake mgmtd that answers only ResolveToken and GetRoutingInfo, and checks that
    //! the meta service authenticates itself with its own token.

    use super::*;
    use r3fs_rpc::mgmtd::mgmtd_server::{Mgmtd, MgmtdServer};
    use r3fs_rpc::mgmtd::{self as pb};
    use r3fs_rpc::mgmtd_client::{MgmtdClientConfig, token_from_metadata};
    use r3fs_rpc::status_from_error;
    use r3fs_types::ErrorCode;
    use tonic::{Request, Response, Status};

    const META_TOKEN: &str = "meta-service-token";

    #[derive(Debug)]
    struct FakeMgmtd;

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    fn check_caller<T>(request: &Request<T>) -> Result<(), Status> {
        match token_from_metadata(request.metadata()) {
            Some(META_TOKEN) => Ok(()),
            _ => Err(status_from_error(ErrorCode::Unauthenticated, "caller token")),
        }
    }

    #[tonic::async_trait]
    impl Mgmtd for FakeMgmtd {
        async fn get_primary(
            &self,
            _: Request<pb::GetPrimaryRequest>,
        ) -> Result<Response<pb::GetPrimaryResponse>, Status> {
            unimplemented()
        }
        async fn register_node(
            &self,
            _: Request<pb::RegisterNodeRequest>,
        ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
            unimplemented()
        }
        async fn heartbeat(
            &self,
            _: Request<pb::HeartbeatRequest>,
        ) -> Result<Response<pb::HeartbeatResponse>, Status> {
            unimplemented()
        }
        async fn get_routing_info(
            &self,
            request: Request<pb::GetRoutingInfoRequest>,
        ) -> Result<Response<pb::GetRoutingInfoResponse>, Status> {
            check_caller(&request)?;
            let target = |id, used_bytes, total_bytes| pb::TargetInfo {
                target_id: id,
                used_bytes,
                total_bytes,
                ..Default::default()
            };

            let routing = pb::RoutingInfo {
                routing_version: 7,
                chain_tables: vec![pb::ChainTable {
                    table_id: 1,
                    version: 2,
                    chain_ids: vec![1, 2, 3],
                    description: String::new(),
                }],
                targets: vec![target(1, 100, 1000), target(2, 250, 2000)],
                ..Default::default()
            };
            Ok(Response::new(pb::GetRoutingInfoResponse { changed: true, routing: Some(routing) }))
        }
        type WatchRoutingInfoStream = futures::stream::Empty<Result<pb::RoutingInfo, Status>>;
        async fn watch_routing_info(
            &self,
            _: Request<pb::WatchRoutingInfoRequest>,
        ) -> Result<Response<Self::WatchRoutingInfoStream>, Status> {
            unimplemented()
        }
        async fn get_config(
            &self,
            _: Request<pb::GetConfigRequest>,
        ) -> Result<Response<pb::ConfigVersion>, Status> {
            unimplemented()
        }
        async fn list_config_versions(
            &self,
            _: Request<pb::ListConfigVersionsRequest>,
        ) -> Result<Response<pb::ListConfigVersionsResponse>, Status> {
            unimplemented()
        }
        async fn resolve_token(
            &self,
            request: Request<pb::ResolveTokenRequest>,
        ) -> Result<Response<pb::ResolveTokenResponse>, Status> {
            check_caller(&request)?;
            if request.get_ref().token != "alice" {
                return Err(status_from_error(ErrorCode::Unauthenticated, "unknown token"));
            }
            let user = pb::User {
                uid: 1000,
                gid: 100,
                groups: vec![7, 8],
                admin: false,
                ..Default::default()
            };
            Ok(Response::new(pb::ResolveTokenResponse { user: Some(user) }))
        }
    }

    async fn fake_mgmtd() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MgmtdServer::new(FakeMgmtd))
                .serve_with_incoming(incoming),
        );
        address
    }

    fn client(address: &str, token: &str) -> MgmtdClient {
        let mut config = MgmtdClientConfig::new(vec![address.to_string()], Some(token.to_string()));
        config.attempts_max = 2;
        MgmtdClient::new(config).unwrap()
    }

    #[tokio::test]
    async fn resolves_tokens_through_mgmtd() {
        let address = fake_mgmtd().await;
        let resolver = MgmtdUserResolver::new(client(&address, META_TOKEN));
        let user = resolver.resolve("alice").await.unwrap();
        assert_eq!(user, User { uid: 1000, gid: 100, groups: vec![7, 8], admin: false });
        let unknown = resolver.resolve("mallory").await.unwrap_err();
        assert_eq!(unknown.code, ErrorCode::Unauthenticated);
        // mgmtd refuses a meta service that does not present a valid token of its own.
        let impostor = MgmtdUserResolver::new(client(&address, "wrong"));
        assert_eq!(impostor.resolve("alice").await.unwrap_err().code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn capacity_counts_each_chain_once() {
        let target = |target_id, chain_id, public_state: pb::PublicTargetState, used, total| {
            pb::TargetInfo {
                target_id,
                chain_id,
                public_state: public_state as i32,
                used_bytes: used,
                total_bytes: total,
                ..Default::default()
            }
        };
        use pb::PublicTargetState::{Offline, Serving, Syncing, Unspecified};
        let targets = [
            // Chain 1: smallest target 1000, fullest 250 (an offline member still counts: it
            // comes back with its data).
            target(11, 1, Serving, 100, 1000),
            target(12, 1, Syncing, 250, 2000),
            target(13, 1, Offline, 200, 1500),
            // Chain 2: target 21 has not reported its capacity yet.
            target(21, 2, Serving, 0, 0),
            target(22, 2, Serving, 40, 500),
            // Chain 3: nothing reported yet.
            target(31, 3, Serving, 0, 0),
            // Created, but its chain is not uploaded: no file data.
            target(41, 4, Unspecified, 7, 1 << 40),
        ];
        assert_eq!(capacity_of(&targets), Capacity { total_bytes: 1500, used_bytes: 290 });
        assert_eq!(capacity_of(&[]), Capacity::default());
    }

    #[tokio::test]
    async fn chain_tables_come_from_routing_info() {
        let address = fake_mgmtd().await;
        let cluster = MgmtdClusterInfo::new(client(&address, META_TOKEN), Duration::from_secs(60));
        let len = cluster.chain_table_len(ChainTableId(1), ChainTableVersion(2)).await.unwrap();
        assert_eq!(len, Some(3));
        let missing = cluster.chain_table_len(ChainTableId(1), ChainTableVersion(3)).await.unwrap();
        assert_eq!(missing, None);
    }
}
