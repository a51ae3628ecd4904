//! Conversions between the stored records / r3fs-types and the gRPC messages. Enum values from the
//! wire that are unspecified or unknown become `None`, and callers refuse them with
//! InvalidArgument.

use r3fs_rpc::mgmtd as pb;
use r3fs_types::{LocalTargetState, NodeStatus, NodeType, PublicTargetState};

use crate::chain_state::ChainState;
use crate::records::{ChainTableRecord, ConfigRecord, NodeRecord, TargetRecord, UserRecord};

pub fn node_type_to_pb(value: NodeType) -> pb::NodeType {
    match value {
        NodeType::Mgmtd => pb::NodeType::Mgmtd,
        NodeType::Meta => pb::NodeType::Meta,
        NodeType::Storage => pb::NodeType::Storage,
        NodeType::Client => pb::NodeType::Client,
    }
}

pub fn node_type_from_pb(value: i32) -> Option<NodeType> {
    match pb::NodeType::try_from(value).ok()? {
        pb::NodeType::Unspecified => None,
        pb::NodeType::Mgmtd => Some(NodeType::Mgmtd),
        pb::NodeType::Meta => Some(NodeType::Meta),
        pb::NodeType::Storage => Some(NodeType::Storage),
        pb::NodeType::Client => Some(NodeType::Client),
    }
}

pub fn node_status_to_pb(value: NodeStatus) -> pb::NodeStatus {
    match value {
        NodeStatus::PrimaryMgmtd => pb::NodeStatus::PrimaryMgmtd,
        NodeStatus::HeartbeatConnected => pb::NodeStatus::HeartbeatConnected,
        NodeStatus::HeartbeatFailed => pb::NodeStatus::HeartbeatFailed,
        NodeStatus::Disabled => pb::NodeStatus::Disabled,
    }
}

pub fn node_status_from_pb(value: i32) -> Option<NodeStatus> {
    match pb::NodeStatus::try_from(value).ok()? {
        pb::NodeStatus::Unspecified => None,
        pb::NodeStatus::PrimaryMgmtd => Some(NodeStatus::PrimaryMgmtd),
        pb::NodeStatus::HeartbeatConnected => Some(NodeStatus::HeartbeatConnected),
        pb::NodeStatus::HeartbeatFailed => Some(NodeStatus::HeartbeatFailed),
        pb::NodeStatus::Disabled => Some(NodeStatus::Disabled),
    }
}

pub fn public_state_to_pb(value: PublicTargetState) -> pb::PublicTargetState {
    match value {
        PublicTargetState::Serving => pb::PublicTargetState::Serving,
        PublicTargetState::Syncing => pb::PublicTargetState::Syncing,
        PublicTargetState::Waiting => pb::PublicTargetState::Waiting,
        PublicTargetState::LastServing => pb::PublicTargetState::LastServing,
        PublicTargetState::Offline => pb::PublicTargetState::Offline,
    }
}

pub fn public_state_from_pb(value: i32) -> Option<PublicTargetState> {
    match pb::PublicTargetState::try_from(value).ok()? {
        pb::PublicTargetState::Unspecified => None,
        pb::PublicTargetState::Serving => Some(PublicTargetState::Serving),
        pb::PublicTargetState::Syncing => Some(PublicTargetState::Syncing),
        pb::PublicTargetState::Waiting => Some(PublicTargetState::Waiting),
        pb::PublicTargetState::LastServing => Some(PublicTargetState::LastServing),
        pb::PublicTargetState::Offline => Some(PublicTargetState::Offline),
    }
}

pub fn local_state_to_pb(value: LocalTargetState) -> pb::LocalTargetState {
    match value {
        LocalTargetState::UpToDate => pb::LocalTargetState::UpToDate,
        LocalTargetState::Online => pb::LocalTargetState::Online,
        LocalTargetState::Offline => pb::LocalTargetState::Offline,
    }
}

pub fn local_state_from_pb(value: i32) -> Option<LocalTargetState> {
    match pb::LocalTargetState::try_from(value).ok()? {
        pb::LocalTargetState::Unspecified => None,
        pb::LocalTargetState::UpToDate => Some(LocalTargetState::UpToDate),
        pb::LocalTargetState::Online => Some(LocalTargetState::Online),
        pb::LocalTargetState::Offline => Some(LocalTargetState::Offline),
    }
}

pub fn node_to_pb(node: &NodeRecord) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: node.node_id.0,
        node_type: node_type_to_pb(node.node_type).into(),
        status: node_status_to_pb(node.status).into(),
        hostname: node.hostname.clone(),
        addresses: node
            .addresses
            .iter()
            .map(|(name, address)| pb::ServiceAddress {
                name: name.clone(),
                address: address.clone(),
            })
            .collect(),
        heartbeat_version: node.heartbeat_version,
        last_heartbeat_unix_ms: node.last_heartbeat_unix_ms,
        config_version: node.config_version,
        release_version: node.release_version.clone(),
    }
}

pub fn chain_to_pb(chain: &ChainState) -> pb::Chain {
    pb::Chain {
        chain_id: chain.chain_id.0,
        chain_version: chain.version.0,
        targets: chain
            .members
            .iter()
            .map(|m| pb::ChainTarget {
                target_id: m.target_id.0,
                public_state: public_state_to_pb(m.public_state).into(),
            })
            .collect(),
    }
}

pub fn chain_table_to_pb(table: &ChainTableRecord) -> pb::ChainTable {
    pb::ChainTable {
        table_id: table.table_id.0,
        version: table.version.0,
        chain_ids: table.chain_ids.iter().map(|c| c.0).collect(),
        description: table.description.clone(),
    }
}

/// `public`: the target's state in its chain, `None` while its chain does not exist.
pub fn target_to_pb(target: &TargetRecord, public: Option<PublicTargetState>) -> pb::TargetInfo {
    pb::TargetInfo {
        target_id: target.target_id.0,
        node_id: target.node_id.0,
        disk_index: target.disk_index,
        chain_id: target.chain_id.0,
        public_state: public.map_or(pb::PublicTargetState::Unspecified, public_state_to_pb).into(),
        local_state: local_state_to_pb(target.local_state).into(),
        used_bytes: target.used_bytes,
        total_bytes: target.total_bytes,
        resync: target.resync.map(|r| pb::ResyncProgress {
            target_id: target.target_id.0,
            chunks_total: r.chunks_total,
            chunks_done: r.chunks_done,
            bytes_done: r.bytes_done,
            started_unix_ms: r.started_unix_ms,
        }),
    }
}

pub fn user_to_pb(user: &UserRecord) -> pb::User {
    pb::User {
        uid: user.uid,
        name: user.name.clone(),
        gid: user.gid,
        groups: user.groups.clone(),
        admin: user.admin,
        created_unix_ms: user.created_unix_ms,
    }
}

/// `with_content`: false for listings, which leave the TOML out.
pub fn config_to_pb(config: &ConfigRecord, with_content: bool) -> pb::ConfigVersion {
    pb::ConfigVersion {
        node_type: node_type_to_pb(config.node_type).into(),
        version: config.version,
        content: if with_content { config.content.clone() } else { String::new() },
        description: config.description.clone(),
        created_unix_ms: config.created_unix_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_unspecified_is_none() {
        for &t in NodeType::ALL {
            assert_eq!(node_type_from_pb(node_type_to_pb(t).into()), Some(t));
        }
        for &s in NodeStatus::ALL {
            assert_eq!(node_status_from_pb(node_status_to_pb(s).into()), Some(s));
        }
        for &s in PublicTargetState::ALL {
            assert_eq!(public_state_from_pb(public_state_to_pb(s).into()), Some(s));
        }
        for &s in LocalTargetState::ALL {
            assert_eq!(local_state_from_pb(local_state_to_pb(s).into()), Some(s));
        }
        assert_eq!(node_type_from_pb(0), None);
        assert_eq!(local_state_from_pb(0), None);
        assert_eq!(local_state_from_pb(99), None);
    }
}
