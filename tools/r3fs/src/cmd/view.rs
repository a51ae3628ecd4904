//! mgmtd's protobuf messages as operators see them: the stable upper-case names of
//! `r3fs-types` for enums, and serde views for `--json` (prost types do not derive Serialize, and
//! the JSON shape should not follow protobuf field renames anyway).

use anyhow::bail;
use r3fs_rpc::mgmtd as pb;
use r3fs_types::{LocalTargetState, NodeStatus, NodeType, PublicTargetState};
use serde::Serialize;

fn unknown(value: i32) -> String {
    format!("UNKNOWN({value})")
}

pub fn node_type_name(value: i32) -> String {
    let name = match pb::NodeType::try_from(value) {
        Ok(pb::NodeType::Mgmtd) => NodeType::Mgmtd.name(),
        Ok(pb::NodeType::Meta) => NodeType::Meta.name(),
        Ok(pb::NodeType::Storage) => NodeType::Storage.name(),
        Ok(pb::NodeType::Client) => NodeType::Client.name(),
        Ok(pb::NodeType::Unspecified) | Err(_) => return unknown(value),
    };
    name.to_string()
}

pub fn node_status_name(value: i32) -> String {
    let name = match pb::NodeStatus::try_from(value) {
        Ok(pb::NodeStatus::PrimaryMgmtd) => NodeStatus::PrimaryMgmtd.name(),
        Ok(pb::NodeStatus::HeartbeatConnected) => NodeStatus::HeartbeatConnected.name(),
        Ok(pb::NodeStatus::HeartbeatFailed) => NodeStatus::HeartbeatFailed.name(),
        Ok(pb::NodeStatus::Disabled) => NodeStatus::Disabled.name(),
        Ok(pb::NodeStatus::Unspecified) | Err(_) => return unknown(value),
    };
    name.to_string()
}

/// `N/A` for a target whose chain was not uploaded yet (the proto's UNSPECIFIED).
pub fn public_state_name(value: i32) -> String {
    let name = match pb::PublicTargetState::try_from(value) {
        Ok(pb::PublicTargetState::Serving) => PublicTargetState::Serving.name(),
        Ok(pb::PublicTargetState::Syncing) => PublicTargetState::Syncing.name(),
        Ok(pb::PublicTargetState::Waiting) => PublicTargetState::Waiting.name(),
        Ok(pb::PublicTargetState::LastServing) => PublicTargetState::LastServing.name(),
        Ok(pb::PublicTargetState::Offline) => PublicTargetState::Offline.name(),
        Ok(pb::PublicTargetState::Unspecified) => "N/A",
        Err(_) => return unknown(value),
    };
    name.to_string()
}

/// `N/A` before the owning daemon first reported the target.
pub fn local_state_name(value: i32) -> String {
    let name = match pb::LocalTargetState::try_from(value) {
        Ok(pb::LocalTargetState::UpToDate) => LocalTargetState::UpToDate.name(),
        Ok(pb::LocalTargetState::Online) => LocalTargetState::Online.name(),
        Ok(pb::LocalTargetState::Offline) => LocalTargetState::Offline.name(),
        Ok(pb::LocalTargetState::Unspecified) => "N/A",
        Err(_) => return unknown(value),
    };
    name.to_string()
}

/// Parses a node type as operators write it (`STORAGE`, `storage`, ...).
pub fn parse_node_type(text: &str) -> anyhow::Result<pb::NodeType> {
    Ok(match NodeType::from_name(text) {
        Some(NodeType::Mgmtd) => pb::NodeType::Mgmtd,
        Some(NodeType::Meta) => pb::NodeType::Meta,
        Some(NodeType::Storage) => pb::NodeType::Storage,
        Some(NodeType::Client) => pb::NodeType::Client,
        None => bail!(
            "unknown node type {text:?}; expected one of {}",
            NodeType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
        ),
    })
}

#[derive(Debug, Serialize)]
pub struct AddressView {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: u32,
    pub node_type: String,
    pub status: String,
    pub hostname: String,
    pub addresses: Vec<AddressView>,
    pub heartbeat_version: u64,
    pub last_heartbeat_unix_ms: u64,
    pub config_version: u64,
    pub release_version: String,
}

impl From<&pb::NodeInfo> for NodeView {
    fn from(node: &pb::NodeInfo) -> Self {
        Self {
            node_id: node.node_id,
            node_type: node_type_name(node.node_type),
            status: node_status_name(node.status),
            hostname: node.hostname.clone(),
            addresses: node
                .addresses
                .iter()
                .map(|a| AddressView { name: a.name.clone(), address: a.address.clone() })
                .collect(),
            heartbeat_version: node.heartbeat_version,
            last_heartbeat_unix_ms: node.last_heartbeat_unix_ms,
            config_version: node.config_version,
            release_version: node.release_version.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChainTargetView {
    pub target_id: u64,
    pub public_state: String,
}

#[derive(Debug, Serialize)]
pub struct ChainView {
    pub chain_id: u32,
    pub chain_version: u32,
    /// Head first.
    pub targets: Vec<ChainTargetView>,
}

impl From<&pb::Chain> for ChainView {
    fn from(chain: &pb::Chain) -> Self {
        Self {
            chain_id: chain.chain_id,
            chain_version: chain.chain_version,
            targets: chain
                .targets
                .iter()
                .map(|t| ChainTargetView {
                    target_id: t.target_id,
                    public_state: public_state_name(t.public_state),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChainTableView {
    pub table_id: u32,
    pub version: u32,
    pub chain_ids: Vec<u32>,
    pub description: String,
}

impl From<&pb::ChainTable> for ChainTableView {
    fn from(table: &pb::ChainTable) -> Self {
        Self {
            table_id: table.table_id,
            version: table.version,
            chain_ids: table.chain_ids.clone(),
            description: table.description.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub target_id: u64,
    pub node_id: u32,
    pub disk_index: u32,
    pub chain_id: u32,
    /// HEAD, MIDDLE, TAIL (or SOLE for a one-replica chain); N/A outside any uploaded chain.
    pub role: String,
    pub public_state: String,
    pub local_state: String,
    pub used_bytes: u64,
    /// While the target syncs: how far its resync has come, as its predecessor last reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ResyncView {
    /// Chunks found to differ (0 while the predecessor still compares chunk metadata).
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub bytes_done: u64,
    pub started_unix_ms: u64,
}

impl From<&pb::ResyncProgress> for ResyncView {
    fn from(r: &pb::ResyncProgress) -> Self {
        Self {
            chunks_total: r.chunks_total,
            chunks_done: r.chunks_done,
            bytes_done: r.bytes_done,
            started_unix_ms: r.started_unix_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub uid: u32,
    pub name: String,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub admin: bool,
    pub created_unix_ms: u64,
}

impl From<&pb::User> for UserView {
    fn from(user: &pb::User) -> Self {
        Self {
            uid: user.uid,
            name: user.name.clone(),
            gid: user.gid,
            groups: user.groups.clone(),
            admin: user.admin,
            created_unix_ms: user.created_unix_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigView {
    pub node_type: String,
    pub version: u64,
    pub description: String,
    pub created_unix_ms: u64,
    /// Absent in version listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl ConfigView {
    pub fn new(config: &pb::ConfigVersion, with_content: bool) -> Self {
        Self {
            node_type: node_type_name(config.node_type),
            version: config.version,
            description: config.description.clone(),
            created_unix_ms: config.created_unix_ms,
            content: with_content.then(|| config.content.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_match_r3fs_types() {
        assert_eq!(
            node_status_name(pb::NodeStatus::HeartbeatConnected as i32),
            "HEARTBEAT_CONNECTED"
        );
        assert_eq!(node_status_name(pb::NodeStatus::HeartbeatFailed as i32), "HEARTBEAT_FAILED");
        assert_eq!(node_type_name(pb::NodeType::Storage as i32), "STORAGE");
        assert_eq!(public_state_name(pb::PublicTargetState::LastServing as i32), "LASTSRV");
        assert_eq!(public_state_name(0), "N/A");
        assert_eq!(local_state_name(pb::LocalTargetState::UpToDate as i32), "UPTODATE");
        assert_eq!(node_type_name(99), "UNKNOWN(99)");
    }

    #[test]
    fn node_types_parse_in_any_case() {
        assert_eq!(parse_node_type("storage").expect("valid"), pb::NodeType::Storage);
        assert_eq!(parse_node_type("META").expect("valid"), pb::NodeType::Meta);
        let error = parse_node_type("disk").expect_err("invalid").to_string();
        assert!(error.contains("STORAGE"), "{error}");
    }
}
