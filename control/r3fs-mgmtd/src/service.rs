//! The gRPC services (r3fs.mgmtd.Mgmtd and r3fs.admin.Admin) over [`Mgmtd`].
//!
//! Every handler except GetPrimary and InitCluster runs in this order: (1) primary check —
//! a follower answers NotPrimary with the primary's address before looking at the token, so
//! clients are redirected first; (2) authentication ([`Access`]); (3) argument decoding (unknown
//! enum values are InvalidArgument); (4) one KV transaction.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use r3fs_rpc::admin::{self as admin_pb, admin_server::Admin};
use r3fs_rpc::mgmtd::{self as pb, mgmtd_server::Mgmtd as MgmtdRpc};
use r3fs_rpc::mgmtd_client::token_from_metadata;
use r3fs_types::{ChainId, ChainTableId, ErrorCode, LocalTargetState, NodeId, NodeType, TargetId};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::convert;
use crate::core::{Mgmtd, Role, wait_until};
use crate::error::MgmtdError;
use crate::lease;
use crate::records::{ResyncRecord, UserRecord};
use crate::store;

/// Both gRPC services of one instance.
#[derive(Clone, Debug)]
pub struct MgmtdService {
    mgmtd: Arc<Mgmtd>,
    /// Flips to true on shutdown: open watch streams end so the server can drain.
    shutdown: watch::Receiver<bool>,
}

impl MgmtdService {
    pub fn new(mgmtd: Arc<Mgmtd>, shutdown: watch::Receiver<bool>) -> Self {
        Self { mgmtd, shutdown }
    }

    fn primary(&self) -> Result<(), Status> {
        self.mgmtd.fence().map(|_| ()).map_err(Status::from)
    }

    /// Primary check, then the token.
    async fn caller<T>(&self, request: &Request<T>, access: Access) -> Result<UserRecord, Status> {
        self.primary()?;
        let token = token_from_metadata(request.metadata());
        Ok(self.mgmtd.authenticate(token, access).await?)
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::from(MgmtdError::invalid(message))
}

fn node_type(value: i32) -> Result<NodeType, Status> {
    convert::node_type_from_pb(value).ok_or_else(|| invalid(format!("unknown node type {value}")))
}

type RoutingStream = Pin<Box<dyn Stream<Item = Result<pb::RoutingInfo, Status>> + Send>>;

#[tonic::async_trait]
impl MgmtdRpc for MgmtdService {
    async fn get_primary(
        &self,
        _request: Request<pb::GetPrimaryRequest>,
    ) -> Result<Response<pb::GetPrimaryResponse>, Status> {
        let now = self.mgmtd.now_unix_ms();
        let view = lease::read(&**self.mgmtd.kv()).await?;
        let is_primary = self.primary().is_ok();
        let answering_node_id = self.mgmtd.options().node_id.0;
        let response = match view {
            Some(view) if now < view.expires_unix_ms => pb::GetPrimaryResponse {
                is_primary,
                primary_node_id: view.holder.node_id.0,
                primary_address: view.holder.address,
                lease_epoch: view.holder.epoch,
                lease_expires_unix_ms: view.expires_unix_ms,
                answering_node_id,
            },
            Some(view) => pb::GetPrimaryResponse {
                is_primary,
                lease_epoch: view.holder.epoch,
                lease_expires_unix_ms: view.expires_unix_ms,
                answering_node_id,
                ..Default::default()
            },
            None => pb::GetPrimaryResponse { is_primary, answering_node_id, ..Default::default() },
        };
        Ok(Response::new(response))
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        self.primary()?;
        let node_type = node_type(request.get_ref().node_type)?;
        let access = if node_type == NodeType::Client { Access::User } else { Access::Admin };
        self.caller(&request, access).await?;
        let request = request.into_inner();
        let spec = store::RegisterSpec {
            node_id: NodeId(request.node_id),
            node_type,
            hostname: request.hostname,
            addresses: request.addresses.into_iter().map(|a| (a.name, a.address)).collect(),
            release_version: request.release_version,
            config_version: request.config_version,
        };
        let outcome = self.mgmtd.register_node(spec).await?;
        let options = self.mgmtd.options();
        Ok(Response::new(pb::RegisterNodeResponse {
            node_id: outcome.node_id.0,
            last_heartbeat_version: outcome.last_heartbeat_version,
            routing_version: outcome.routing_version,
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            heartbeat_timeout_ms: options.heartbeat_timeout_ms,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        // Like registration: a server's heartbeats (which set its targets' states) need an admin
        // token, a client's any valid token.
        let user = self.caller(&request, Access::User).await?;
        let request = request.into_inner();
        let node = NodeId(request.node_id);
        let node_type = self
            .mgmtd
            .read(move |txn| Box::pin(async move { store::node_type_of(txn, node).await }))
            .await?;
        if node_type.is_some_and(|t| t != NodeType::Client) && !user.admin {
            return Err(Status::from(MgmtdError::refused(
                ErrorCode::PermissionDenied,
                format!("heartbeats of node {node} need an admin token"),
            )));
        }
        let mut targets =
            Vec::with_capacity(request.targets.len().min(store::HEARTBEAT_TARGETS_MAX));
        for report in request.targets.iter().take(store::HEARTBEAT_TARGETS_MAX + 1) {
            let state: LocalTargetState = convert::local_state_from_pb(report.local_state)
                .ok_or_else(|| {
                    invalid(format!("target {}: unknown local state", report.target_id))
                })?;
            targets.push(store::TargetReport {
                target_id: TargetId(report.target_id),
                local_state: state,
                used_bytes: report.used_bytes,
                total_bytes: report.total_bytes,
                chain_version: report.chain_version,
                resync: report.resync.as_ref().map(|r| store::ResyncProgress {
                    target_id: TargetId(r.target_id),
                    progress: ResyncRecord {
                        chunks_total: r.chunks_total,
                        chunks_done: r.chunks_done,
                        bytes_done: r.bytes_done,
                        started_unix_ms: r.started_unix_ms,
                    },
                }),
            });
        }
        let spec = store::HeartbeatSpec {
            node_id: NodeId(request.node_id),
            heartbeat_version: request.heartbeat_version,
            config_version: request.config_version,
            release_version: request.release_version,
            targets,
        };
        let outcome = self.mgmtd.heartbeat(spec).await?;
        let options = self.mgmtd.options();
        Ok(Response::new(pb::HeartbeatResponse {
            routing_version: outcome.routing_version,
            latest_config_version: outcome.latest_config_version,
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            heartbeat_timeout_ms: options.heartbeat_timeout_ms,
            ignored_target_ids: outcome.ignored_target_ids.iter().map(|t| t.0).collect(),
        }))
    }

    async fn get_routing_info(
        &self,
        request: Request<pb::GetRoutingInfoRequest>,
    ) -> Result<Response<pb::GetRoutingInfoResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let request = request.into_inner();
        let known = request.known_routing_version;
        let wait_ms = request.wait_ms.min(self.mgmtd.options().routing_wait_max_ms);
        if wait_ms > 0 {
            let mut versions = self.mgmtd.subscribe_routing();
            let mut role = self.mgmtd.subscribe_role();
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = wait_until(&mut versions, |v| *v > known) => {}
                _ = wait_until(&mut role, |r| !matches!(r, Role::Primary { .. })) => {
                    let not_primary = MgmtdError::NotPrimary { primary_address: None };
                    return Err(self.primary().err().unwrap_or_else(|| Status::from(not_primary)));
                }
                _ = wait_until(&mut shutdown, |stop| *stop) => {}
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
        let routing = self.mgmtd.routing().await?;
        let changed = routing.routing_version > known;
        Ok(Response::new(pb::GetRoutingInfoResponse {
            changed,
            routing: changed.then(|| (*routing).clone()),
        }))
    }

    type WatchRoutingInfoStream = RoutingStream;

    async fn watch_routing_info(
        &self,
        request: Request<pb::WatchRoutingInfoRequest>,
    ) -> Result<Response<Self::WatchRoutingInfoStream>, Status> {
        self.caller(&request, Access::User).await?;
        let state = WatchState {
            mgmtd: self.mgmtd.clone(),
            known: request.get_ref().known_routing_version,
            versions: self.mgmtd.subscribe_routing(),
            role: self.mgmtd.subscribe_role(),
            shutdown: self.shutdown.clone(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigVersion>, Status> {
        self.caller(&request, Access::User).await?;
        let node_type = node_type(request.get_ref().node_type)?;
        let version = request.get_ref().version;
        let record = self
            .mgmtd
            .read(move |txn| {
                Box::pin(async move { store::get_config(txn, node_type, version).await })
            })
            .await?;
        Ok(Response::new(convert::config_to_pb(&record, true)))
    }

    async fn list_config_versions(
        &self,
        request: Request<pb::ListConfigVersionsRequest>,
    ) -> Result<Response<pb::ListConfigVersionsResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let node_type = node_type(request.get_ref().node_type)?;
        let records = self
            .mgmtd
            .read(move |txn| {
                Box::pin(async move { store::list_config_versions(txn, node_type).await })
            })
            .await?;
        let versions = records.iter().map(|r| convert::config_to_pb(r, false)).collect();
        Ok(Response::new(pb::ListConfigVersionsResponse { versions }))
    }

    async fn resolve_token(
        &self,
        request: Request<pb::ResolveTokenRequest>,
    ) -> Result<Response<pb::ResolveTokenResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let user = self.mgmtd.authenticate(Some(&request.get_ref().token), Access::User).await?;
        Ok(Response::new(pb::ResolveTokenResponse { user: Some(convert::user_to_pb(&user)) }))
    }
}

/// State of one WatchRoutingInfo stream.
struct WatchState {
    mgmtd: Arc<Mgmtd>,
    known: u64,
    versions: watch::Receiver<u64>,
    role: watch::Receiver<Role>,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl WatchState {
    /// The next item, or `None` to end the stream.
    async fn next(&mut self) -> Option<Result<pb::RoutingInfo, Status>> {
        loop {
            if self.done || *self.shutdown.borrow() {
                return None;
            }
            if let Err(error) = self.mgmtd.fence() {
                // Deposed: end the stream with NotPrimary so the client follows the new primary.
                self.done = true;
                return Some(Err(Status::from(error)));
            }
            if *self.versions.borrow_and_update() > self.known {
                match self.mgmtd.routing().await {
                    Ok(routing) if routing.routing_version > self.known => {
                        self.known = routing.routing_version;
                        return Some(Ok((*routing).clone()));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.done = true;
                        return Some(Err(Status::from(error)));
                    }
                }
            }
            tokio::select! {
                changed = self.versions.changed() => if changed.is_err() { return None },
                changed = self.role.changed() => if changed.is_err() { return None },
                changed = self.shutdown.changed() => if changed.is_err() { return None },
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for MgmtdService {
    async fn init_cluster(
        &self,
        request: Request<admin_pb::InitClusterRequest>,
    ) -> Result<Response<admin_pb::InitClusterResponse>, Status> {
        self.primary()?;
        let request = request.into_inner();
        let token = auth::generate_token();
        let spec = Arc::new(store::InitSpec {
            cluster_id: request.cluster_id,
            admin_name: request.admin_name,
            admin_uid: request.admin_uid,
            admin_gid: request.admin_gid,
            token_hash_hex: auth::token_hash_hex(&token),
        });
        let admin = self
            .mgmtd
            .write(move |txn, ctx| {
                let spec = spec.clone();
                Box::pin(async move { store::init_cluster(txn, ctx, &spec).await })
            })
            .await?;
        tracing::info!(admin = %admin.name, uid = admin.uid, "cluster initialized");
        Ok(Response::new(admin_pb::InitClusterResponse {
            admin: Some(convert::user_to_pb(&admin)),
            admin_token: token,
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<admin_pb::ListNodesRequest>,
    ) -> Result<Response<admin_pb::ListNodesResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let routing = self.mgmtd.fresh_routing().await?;
        Ok(Response::new(admin_pb::ListNodesResponse {
            nodes: routing.nodes,
            routing_version: routing.routing_version,
        }))
    }

    async fn set_node_disabled(
        &self,
        request: Request<admin_pb::SetNodeDisabledRequest>,
    ) -> Result<Response<admin_pb::SetNodeDisabledResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let node = NodeId(request.get_ref().node_id);
        let disabled = request.get_ref().disabled;
        let (record, _) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::set_node_disabled(txn, ctx, node, disabled).await })
            })
            .await?;
        Ok(Response::new(admin_pb::SetNodeDisabledResponse {
            node: Some(convert::node_to_pb(&record)),
        }))
    }

    async fn list_chains(
        &self,
        request: Request<admin_pb::ListChainsRequest>,
    ) -> Result<Response<admin_pb::ListChainsResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let routing = self.mgmtd.fresh_routing().await?;
        let stopped = self
            .mgmtd
            .read(|txn| {
                Box::pin(
                    async move { store::chains_stopped(txn, r3fs_kv::ReadMode::Snapshot).await },
                )
            })
            .await?;
        Ok(Response::new(admin_pb::ListChainsResponse {
            chains: routing.chains,
            routing_version: routing.routing_version,
            chains_stopped_unix_ms: stopped.map_or(0, |s| s.stopped_unix_ms),
        }))
    }

    async fn list_chain_tables(
        &self,
        request: Request<admin_pb::ListChainTablesRequest>,
    ) -> Result<Response<admin_pb::ListChainTablesResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let routing = self.mgmtd.fresh_routing().await?;
        Ok(Response::new(admin_pb::ListChainTablesResponse {
            chain_tables: routing.chain_tables,
            routing_version: routing.routing_version,
        }))
    }

    async fn list_targets(
        &self,
        request: Request<admin_pb::ListTargetsRequest>,
    ) -> Result<Response<admin_pb::ListTargetsResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let routing = self.mgmtd.fresh_routing().await?;
        Ok(Response::new(admin_pb::ListTargetsResponse {
            targets: routing.targets,
            routing_version: routing.routing_version,
        }))
    }

    async fn create_targets(
        &self,
        request: Request<admin_pb::CreateTargetsRequest>,
    ) -> Result<Response<admin_pb::CreateTargetsResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let specs: Arc<Vec<store::TargetSpec>> = Arc::new(
            request
                .get_ref()
                .targets
                .iter()
                .take(store::SPECS_MAX + 1)
                .map(|t| store::TargetSpec {
                    target_id: TargetId(t.target_id),
                    node_id: NodeId(t.node_id),
                    disk_index: t.disk_index,
                    chain_id: ChainId(t.chain_id),
                })
                .collect(),
        );
        let (created, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                let specs = specs.clone();
                Box::pin(async move { store::create_targets(txn, ctx, &specs).await })
            })
            .await?;
        Ok(Response::new(admin_pb::CreateTargetsResponse { created, routing_version }))
    }

    async fn upload_chains(
        &self,
        request: Request<admin_pb::UploadChainsRequest>,
    ) -> Result<Response<admin_pb::UploadChainsResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let specs: Arc<Vec<(ChainId, Vec<TargetId>)>> = Arc::new(
            request
                .get_ref()
                .chains
                .iter()
                .take(store::SPECS_MAX + 1)
                .map(|c| {
                    (ChainId(c.chain_id), c.target_ids.iter().copied().map(TargetId).collect())
                })
                .collect(),
        );
        let (created, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                let specs = specs.clone();
                Box::pin(async move { store::upload_chains(txn, ctx, &specs).await })
            })
            .await?;
        Ok(Response::new(admin_pb::UploadChainsResponse { created, routing_version }))
    }

    async fn upload_chain_table(
        &self,
        request: Request<admin_pb::UploadChainTableRequest>,
    ) -> Result<Response<admin_pb::UploadChainTableResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let request = request.into_inner();
        if request.chain_ids.len() > store::CHAIN_TABLE_CHAINS_MAX {
            return Err(invalid(format!(
                "a chain table holds at most {} chains",
                store::CHAIN_TABLE_CHAINS_MAX
            )));
        }
        let table = ChainTableId(request.table_id);
        let chains: Arc<Vec<ChainId>> =
            Arc::new(request.chain_ids.into_iter().map(ChainId).collect());
        let description = Arc::new(request.description);
        let (version, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                let chains = chains.clone();
                let description = description.clone();
                Box::pin(async move {
                    store::upload_chain_table(txn, ctx, table, &chains, &description).await
                })
            })
            .await?;
        Ok(Response::new(admin_pb::UploadChainTableResponse {
            version: version.0,
            routing_version,
        }))
    }

    async fn offline_target(
        &self,
        request: Request<admin_pb::OfflineTargetRequest>,
    ) -> Result<Response<admin_pb::OfflineTargetResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let target = TargetId(request.get_ref().target_id);
        let (chain, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::offline_target(txn, ctx, target).await })
            })
            .await?;
        Ok(Response::new(admin_pb::OfflineTargetResponse {
            chain: chain.as_ref().map(convert::chain_to_pb),
            routing_version,
        }))
    }

    async fn remove_target(
        &self,
        request: Request<admin_pb::RemoveTargetRequest>,
    ) -> Result<Response<admin_pb::RemoveTargetResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let target = TargetId(request.get_ref().target_id);
        let (chain, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::remove_target(txn, ctx, target).await })
            })
            .await?;
        Ok(Response::new(admin_pb::RemoveTargetResponse {
            chain: Some(convert::chain_to_pb(&chain)),
            routing_version,
        }))
    }

    async fn add_target_to_chain(
        &self,
        request: Request<admin_pb::AddTargetToChainRequest>,
    ) -> Result<Response<admin_pb::AddTargetToChainResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let r = request.get_ref();
        let spec = store::TargetSpec {
            target_id: TargetId(r.target_id),
            node_id: NodeId(r.node_id),
            disk_index: r.disk_index,
            chain_id: ChainId(r.chain_id),
        };
        let (chain, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::add_target_to_chain(txn, ctx, &spec).await })
            })
            .await?;
        Ok(Response::new(admin_pb::AddTargetToChainResponse {
            chain: Some(convert::chain_to_pb(&chain)),
            routing_version,
        }))
    }

    async fn rotate_last_serving(
        &self,
        request: Request<admin_pb::RotateLastServingRequest>,
    ) -> Result<Response<admin_pb::RotateLastServingResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let chain_id = ChainId(request.get_ref().chain_id);
        let target = TargetId(request.get_ref().target_id);
        let (chain, routing_version) = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(
                    async move { store::rotate_last_serving(txn, ctx, chain_id, target).await },
                )
            })
            .await?;
        Ok(Response::new(admin_pb::RotateLastServingResponse {
            chain: Some(convert::chain_to_pb(&chain)),
            routing_version,
        }))
    }

    async fn shutdown_all_chains(
        &self,
        request: Request<admin_pb::ShutdownAllChainsRequest>,
    ) -> Result<Response<admin_pb::ShutdownAllChainsResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let outcome = self
            .mgmtd
            .write_routing(|txn, ctx| {
                Box::pin(async move { store::shutdown_all_chains(txn, ctx).await })
            })
            .await?;
        Ok(Response::new(admin_pb::ShutdownAllChainsResponse {
            chains_changed: outcome.chains_changed,
            routing_version: outcome.routing_version,
        }))
    }

    async fn start_all_chains(
        &self,
        request: Request<admin_pb::StartAllChainsRequest>,
    ) -> Result<Response<admin_pb::StartAllChainsResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let force = request.get_ref().force;
        let outcome = self
            .mgmtd
            .write_routing(move |txn, ctx| {
                Box::pin(async move { store::start_all_chains(txn, ctx, force).await })
            })
            .await?;
        Ok(Response::new(admin_pb::StartAllChainsResponse {
            chains_changed: outcome.chains_changed,
            routing_version: outcome.routing_version,
        }))
    }

    async fn add_user(
        &self,
        request: Request<admin_pb::AddUserRequest>,
    ) -> Result<Response<admin_pb::AddUserResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let request = request.into_inner();
        let token = auth::generate_token();
        let spec = Arc::new(store::UserSpec {
            name: request.name,
            uid: request.uid,
            gid: request.gid,
            groups: request.groups,
            admin: request.admin,
            token_hash_hex: auth::token_hash_hex(&token),
        });
        let user = self
            .mgmtd
            .write(move |txn, ctx| {
                let spec = spec.clone();
                Box::pin(async move { store::add_user(txn, ctx, &spec).await })
            })
            .await?;
        tracing::info!(user = %user.name, uid = user.uid, admin = user.admin, "user added");
        Ok(Response::new(admin_pb::AddUserResponse {
            user: Some(convert::user_to_pb(&user)),
            token,
        }))
    }

    async fn list_users(
        &self,
        request: Request<admin_pb::ListUsersRequest>,
    ) -> Result<Response<admin_pb::ListUsersResponse>, Status> {
        self.caller(&request, Access::User).await?;
        let users =
            self.mgmtd.read(|txn| Box::pin(async move { store::list_users(txn).await })).await?;
        Ok(Response::new(admin_pb::ListUsersResponse {
            users: users.iter().map(convert::user_to_pb).collect(),
        }))
    }

    async fn remove_user(
        &self,
        request: Request<admin_pb::RemoveUserRequest>,
    ) -> Result<Response<admin_pb::RemoveUserResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let uid = request.get_ref().uid;
        let user = self
            .mgmtd
            .write(move |txn, ctx| Box::pin(async move { store::remove_user(txn, ctx, uid).await }))
            .await?;
        tracing::info!(user = %user.name, uid = user.uid, "user removed");
        Ok(Response::new(admin_pb::RemoveUserResponse {}))
    }

    async fn set_config(
        &self,
        request: Request<admin_pb::SetConfigRequest>,
    ) -> Result<Response<admin_pb::SetConfigResponse>, Status> {
        self.caller(&request, Access::Admin).await?;
        let request = request.into_inner();
        let node_type = node_type(request.node_type)?;
        if request.content.len() > store::CONFIG_BYTES_MAX {
            return Err(Status::from(MgmtdError::refused(
                ErrorCode::InvalidConfig,
                format!("a config holds at most {} bytes", store::CONFIG_BYTES_MAX),
            )));
        }
        let content = Arc::new(request.content);
        let description = Arc::new(request.description);
        let version = self
            .mgmtd
            .write(move |txn, ctx| {
                let content = content.clone();
                let description = description.clone();
                Box::pin(async move {
                    store::set_config(txn, ctx, node_type, &content, &description).await
                })
            })
            .await?;
        Ok(Response::new(admin_pb::SetConfigResponse { version }))
    }
}
