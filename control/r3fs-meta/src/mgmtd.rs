//! The mgmtd-backed implementations of [`UserResolver`] (Mgmtd.ResolveToken) and
//! [`ClusterInfo`] (routing info: target usage, chain tables), over the follow-the-primary
//! [`MgmtdClient`].

use crate::cluster::{Capacity, ClusterInfo};
use crate::error::{MetaError, MetaResult};
use crate::perm::User;
use crate::user::UserResolver;
use async_trait::async_trait;
use r3fs_rpc::error_from_status;
use r3fs_rpc::mgmtd::{ResolveTokenRequest, RoutingInfo};
use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_types::{ChainTableId, ChainTableVersion};
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

/// Routing info from mgmtd, fetched at most every `refresh` (statfs and set-layout are rare;
/// a slightly old usage figure is fine).
#[derive(Debug)]
pub struct MgmtdClusterInfo {
    client: MgmtdClient,
    refresh: Duration,
    cached: Mutex<Option<(Instant, Arc<RoutingInfo>)>>,
}

impl MgmtdClusterInfo {
    pub fn new(client: MgmtdClient, refresh: Duration) -> Self {
        Self { client, refresh, cached: Mutex::new(None) }
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
    /// Used bytes summed over targets. Routing info carries no target disk sizes yet, so
    /// `total_bytes` is 0 (unknown).
    async fn capacity(&self) -> MetaResult<Capacity> {
        let routing = self.routing().await?;
        let used_bytes =
            routing.targets.iter().map(|t| t.used_bytes).fold(0u64, u64::saturating_add);
        Ok(Capacity { total_bytes: 0, used_bytes })
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
