//! Every KV key mgmtd reads or writes, in one registry, so no two mechanisms collide and the
//! layout can be read in one place. All keys start with [`PREFIX`] so mgmtd can share one KV with
//! other services (3FS keeps mgmtd's and meta's state in the same FoundationDB).
//!
//! Integers in keys are big-endian, so key order is id order and range scans come back sorted.
//!
//! | key | value |
//! | --- | --- |
//! | `mgmtd/lease/holder` | [`crate::lease::LeaseHolder`]: who holds the lease and its epoch (changes only on takeover) |
//! | `mgmtd/lease/expiry` | [`crate::lease::LeaseExpiry`]: until when (rewritten by every renewal) |
//! | `mgmtd/presence/<node u32>` | [`crate::records::PresenceRecord`] of each mgmtd instance |
//! | `mgmtd/cluster` | [`crate::records::ClusterRecord`]: set once by init-cluster |
//! | `mgmtd/routing-version` | u64 big-endian: the routing version |
//! | `mgmtd/node-id-next` | u32 big-endian: next allocated node id |
//! | `mgmtd/node/<node u32>` | [`crate::records::NodeRecord`] |
//! | `mgmtd/target/<target u64>` | [`crate::records::TargetRecord`] |
//! | `mgmtd/chain/<chain u32>` | [`crate::chain_state::ChainState`] |
//! | `mgmtd/chain-table/<table u32>/<version u32>` | [`crate::records::ChainTableRecord`] |
//! | `mgmtd/user/<uid u32>` | [`crate::records::UserRecord`] |
//! | `mgmtd/token/<sha256, 64 hex digits>` | uid u32 big-endian |
//! | `mgmtd/config/<node type u8>/<version u64>` | [`crate::records::ConfigRecord`] |

use r3fs_types::{ChainId, ChainTableId, ChainTableVersion, NodeId, NodeType, TargetId};

pub const PREFIX: &[u8] = b"mgmtd/";

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// The first key after every key that starts with `prefix` (FoundationDB's `strinc`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xff prefix gets here; mgmtd's prefixes are ASCII.
    vec![0xff]
}

/// `[begin, end)` of every key under `prefix`.
pub fn range(prefix: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let end = prefix_end(&prefix);
    (prefix, end)
}

pub fn lease_holder() -> Vec<u8> {
    key(&[b"lease/holder"])
}

pub fn lease_expiry() -> Vec<u8> {
    key(&[b"lease/expiry"])
}

pub fn presence(node: NodeId) -> Vec<u8> {
    key(&[b"presence/", &node.0.to_be_bytes()])
}

pub fn presences() -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"presence/"]))
}

pub fn cluster() -> Vec<u8> {
    key(&[b"cluster"])
}

pub fn routing_version() -> Vec<u8> {
    key(&[b"routing-version"])
}

pub fn node_id_next() -> Vec<u8> {
    key(&[b"node-id-next"])
}

pub fn node(node: NodeId) -> Vec<u8> {
    key(&[b"node/", &node.0.to_be_bytes()])
}

pub fn nodes() -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"node/"]))
}

pub fn target(target: TargetId) -> Vec<u8> {
    key(&[b"target/", &target.0.to_be_bytes()])
}

pub fn targets() -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"target/"]))
}

pub fn chain(chain: ChainId) -> Vec<u8> {
    key(&[b"chain/", &chain.0.to_be_bytes()])
}

pub fn chains() -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"chain/"]))
}

/// Set by shutdown-all-chains, cleared by start-all-chains: while present, chains are frozen.
pub fn chains_stopped() -> Vec<u8> {
    key(&[b"chains-stopped"])
}

pub fn chain_table(table: ChainTableId, version: ChainTableVersion) -> Vec<u8> {
    key(&[b"chain-table/", &table.0.to_be_bytes(), b"/", &version.0.to_be_bytes()])
}

/// Every version of one chain table.
pub fn chain_table_versions(table: ChainTableId) -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"chain-table/", &table.0.to_be_bytes(), b"/"]))
}

pub fn chain_tables() -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"chain-table/"]))
}

pub fn user(uid: u32) -> Vec<u8> {
    key(&[b"user/", &uid.to_be_bytes()])
}

pub fn users() -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"user/"]))
}

/// `hash_hex`: the token's SHA-256 in lower-case hex ([`crate::auth::token_hash_hex`]).
pub fn token(hash_hex: &str) -> Vec<u8> {
    key(&[b"token/", hash_hex.as_bytes()])
}

fn node_type_byte(node_type: NodeType) -> u8 {
    match node_type {
        NodeType::Mgmtd => 1,
        NodeType::Meta => 2,
        NodeType::Storage => 3,
        NodeType::Client => 4,
    }
}

pub fn config(node_type: NodeType, version: u64) -> Vec<u8> {
    key(&[b"config/", &[node_type_byte(node_type)], b"/", &version.to_be_bytes()])
}

/// Every config version of one node type.
pub fn configs(node_type: NodeType) -> (Vec<u8>, Vec<u8>) {
    range(key(&[b"config/", &[node_type_byte(node_type)], b"/"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_their_keys_and_nothing_else() {
        let (begin, end) = nodes();
        for id in [0, 1, 255, 256, u32::MAX] {
            let k = node(NodeId(id));
            assert!(begin <= k && k < end);
        }
        assert!(presence(NodeId(1)) >= end || presence(NodeId(1)) < begin);
        let (begin, end) = chain_table_versions(ChainTableId(1));
        assert!(chain_table(ChainTableId(1), ChainTableVersion(u32::MAX)) < end);
        assert!(chain_table(ChainTableId(2), ChainTableVersion(0)) >= end);
        assert!(chain_table(ChainTableId(1), ChainTableVersion(0)) >= begin);
        let (begin, end) = configs(NodeType::Meta);
        assert!(config(NodeType::Meta, u64::MAX) < end && config(NodeType::Meta, 1) >= begin);
        assert!(config(NodeType::Storage, 1) >= end);
        let (begin, end) = chains();
        assert!(chains_stopped() < begin || chains_stopped() >= end);
    }

    #[test]
    fn big_endian_ids_sort_numerically() {
        assert!(target(TargetId(2)) < target(TargetId(256)));
        assert!(user(9) < user(10));
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
