//! The routing info as the storage daemon and its clients use it: which node and shard serve a
//! target, each chain's ordered targets with public states, and the data-plane address of every
//! shard of every storage node.
//!
//! Address convention: `r3fs_types::data_plane` defines it once for the daemon and the client (one
//! `data/<shard>` address per shard; target `t` of a node with `n` shards is served by shard
//! [`shard_of`]`(t, n)`), re-exported here.

use r3fs_craq::{ChainRouting, ChainTarget};
use r3fs_rpc::mgmtd as pb;
use r3fs_types::{ChainId, ChainVersion, LocalTargetState, NodeId, PublicTargetState, TargetId};
use std::collections::BTreeMap;
use std::net::SocketAddr;

use r3fs_types::data_plane::parse_data_address_name;
pub use r3fs_types::data_plane::{DATA_ADDRESS_PREFIX, data_address_name, shard_of};

/// Where a target lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetPlacement {
    pub node: NodeId,
    pub disk_index: u32,
    pub chain: ChainId,
    /// `None` while its chain has not been uploaded.
    pub public_state: Option<PublicTargetState>,
}

/// One routing version, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingSnapshot {
    pub version: u64,
    pub chains: BTreeMap<ChainId, ChainRouting>,
    pub targets: BTreeMap<TargetId, TargetPlacement>,
    /// Data-plane addresses of each storage node, indexed by shard.
    pub data_addresses: BTreeMap<NodeId, Vec<SocketAddr>>,
}

pub fn public_state_from_pb(value: i32) -> Option<PublicTargetState> {
    Some(match pb::PublicTargetState::try_from(value).ok()? {
        pb::PublicTargetState::Unspecified => return None,
        pb::PublicTargetState::Serving => PublicTargetState::Serving,
        pb::PublicTargetState::Syncing => PublicTargetState::Syncing,
        pb::PublicTargetState::Waiting => PublicTargetState::Waiting,
        pb::PublicTargetState::LastServing => PublicTargetState::LastServing,
        pb::PublicTargetState::Offline => PublicTargetState::Offline,
    })
}

pub fn local_state_to_pb(value: LocalTargetState) -> pb::LocalTargetState {
    match value {
        LocalTargetState::UpToDate => pb::LocalTargetState::UpToDate,
        LocalTargetState::Online => pb::LocalTargetState::Online,
        LocalTargetState::Offline => pb::LocalTargetState::Offline,
    }
}

impl RoutingSnapshot {
    /// Decodes mgmtd's routing info; entries that make no sense (unknown states, unparsable
    /// addresses) are skipped with a message each, so one bad entry cannot stop the data plane.
    pub fn from_pb(info: &pb::RoutingInfo) -> (RoutingSnapshot, Vec<String>) {
        let mut problems = Vec::new();
        let mut snapshot = RoutingSnapshot { version: info.routing_version, ..Default::default() };
        for node in &info.nodes {
            let mut shards: BTreeMap<usize, SocketAddr> = BTreeMap::new();
            let mut bad = false;
            for address in &node.addresses {
                let Some(index) = parse_data_address_name(&address.name) else { continue };
                match (index, address.address.parse::<SocketAddr>()) {
                    (Ok(index), Ok(socket)) => {
                        shards.insert(index, socket);
                    }
                    _ => {
                        bad = true;
                        problems.push(format!(
                            "node {}: bad data address {:?} = {:?}",
                            node.node_id, address.name, address.address
                        ))
                    }
                }
            }
            // Without every shard's address the modulo rule would misroute: skip the node.
            if bad {
                continue;
            }
            // Shards are numbered 0..n without gaps, or the modulo rule would misroute.
            if !shards.is_empty() {
                if shards.keys().copied().eq(0..shards.len()) {
                    snapshot
                        .data_addresses
                        .insert(NodeId(node.node_id), shards.into_values().collect());
                } else {
                    problems.push(format!("node {}: data shard numbers have gaps", node.node_id));
                }
            }
        }
        for chain in &info.chains {
            let mut targets = Vec::with_capacity(chain.targets.len());
            for target in &chain.targets {
                match public_state_from_pb(target.public_state) {
                    Some(state) => {
                        targets.push(ChainTarget { target: TargetId(target.target_id), state })
                    }
                    None => problems.push(format!(
                        "chain {}: target {} has no public state",
                        chain.chain_id, target.target_id
                    )),
                }
            }
            let routing = ChainRouting {
                chain: ChainId(chain.chain_id),
                chain_version: ChainVersion(chain.chain_version),
                targets,
            };
            match routing.validate() {
                Ok(()) => {
                    snapshot.chains.insert(routing.chain, routing);
                }
                Err(error) => problems.push(format!("chain {}: {error}", chain.chain_id)),
            }
        }
        for target in &info.targets {
            snapshot.targets.insert(
                TargetId(target.target_id),
                TargetPlacement {
                    node: NodeId(target.node_id),
                    disk_index: target.disk_index,
                    chain: ChainId(target.chain_id),
                    public_state: public_state_from_pb(target.public_state),
                },
            );
        }
        (snapshot, problems)
    }

    /// The data-plane address of the shard that serves `target`.
    pub fn address_of(&self, target: TargetId) -> Option<SocketAddr> {
        let placement = self.targets.get(&target)?;
        let shards = self.data_addresses.get(&placement.node)?;
        shards.get(shard_of(target, shards.len())).copied()
    }

    /// Targets of `node` that shard `shard` of `shards` owns.
    pub fn targets_of_shard(
        &self,
        node: NodeId,
        shard: usize,
        shards: usize,
    ) -> impl Iterator<Item = (TargetId, &TargetPlacement)> + '_ {
        self.targets
            .iter()
            .filter(move |(t, p)| p.node == node && shard_of(**t, shards) == shard)
            .map(|(t, p)| (*t, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> pb::RoutingInfo {
        pb::RoutingInfo {
            routing_version: 5,
            nodes: vec![pb::NodeInfo {
                node_id: 2,
                addresses: vec![
                    pb::ServiceAddress { name: "data/1".into(), address: "127.0.0.1:7001".into() },
                    pb::ServiceAddress { name: "data/0".into(), address: "127.0.0.1:7000".into() },
                    pb::ServiceAddress { name: "grpc".into(), address: "127.0.0.1:9".into() },
                ],
                ..Default::default()
            }],
            chains: vec![pb::Chain {
                chain_id: 1,
                chain_version: 3,
                targets: vec![
                    pb::ChainTarget { target_id: 11, public_state: 1 },
                    pb::ChainTarget { target_id: 12, public_state: 5 },
                ],
            }],
            targets: vec![
                pb::TargetInfo {
                    target_id: 11,
                    node_id: 2,
                    chain_id: 1,
                    public_state: 1,
                    ..Default::default()
                },
                pb::TargetInfo {
                    target_id: 12,
                    node_id: 2,
                    chain_id: 1,
                    public_state: 5,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn decodes_and_routes_targets_to_shards() {
        let (snapshot, problems) = RoutingSnapshot::from_pb(&info());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(snapshot.version, 5);
        assert_eq!(
            snapshot.address_of(TargetId(11)),
            Some("127.0.0.1:7001".parse().expect("addr"))
        );
        assert_eq!(
            snapshot.address_of(TargetId(12)),
            Some("127.0.0.1:7000".parse().expect("addr"))
        );
        let chain = &snapshot.chains[&ChainId(1)];
        assert_eq!(chain.head(), Some(TargetId(11)));
        assert_eq!(chain.state_of(TargetId(12)), Some(PublicTargetState::Offline));
        let shard1: Vec<_> = snapshot.targets_of_shard(NodeId(2), 1, 2).map(|(t, _)| t).collect();
        assert_eq!(shard1, vec![TargetId(11)]);
    }

    #[test]
    fn bad_entries_are_reported_not_fatal() {
        let mut info = info();
        info.nodes[0].addresses[0].address = "nonsense".into();
        info.chains[0].targets[1].target_id = 11;
        let (snapshot, problems) = RoutingSnapshot::from_pb(&info);
        assert_eq!(problems.len(), 2, "{problems:?}"); // bad address, duplicate target
        assert!(snapshot.chains.is_empty());
        assert!(snapshot.data_addresses.is_empty());
    }
}
