//! How a storage node publishes its data-plane addresses, and which of them serves a target.
//!
//! A storage node runs one shard (core) per data-plane listener and registers one
//! `ServiceAddress` per shard with mgmtd, named `data/<shard>`, numbered `0..n` without gaps.
//! Target `t` of a node with `n` shards is owned by shard [`shard_of`]`(t, n)`, so a client finds
//! the address of any target from the routing info alone and its request lands on the core that
//! owns the target without a hop. The storage daemon (publisher) and the client (reader) both use
//! this module: it is the one definition of the rule.

use crate::TargetId;

/// Prefix of the data-plane service names a storage node registers.
pub const DATA_ADDRESS_PREFIX: &str = "data/";

/// The shard of a node with `shards` shards that owns `target`.
///
/// Panics if `shards` is 0: every storage node has at least one shard.
pub fn shard_of(target: TargetId, shards: usize) -> usize {
    assert!(shards > 0, "a storage node has at least one shard");
    (target.0 % shards as u64) as usize
}

/// The service name of shard `shard`'s data-plane address.
pub fn data_address_name(shard: usize) -> String {
    format!("{DATA_ADDRESS_PREFIX}{shard}")
}

/// The shard a service name publishes: `None` for names that are not data-plane addresses,
/// `Some(Err(_))` for a `data/` name whose shard number does not parse.
pub fn parse_data_address_name(name: &str) -> Option<Result<usize, std::num::ParseIntError>> {
    let index = name.strip_prefix(DATA_ADDRESS_PREFIX)?;
    Some(index.parse::<usize>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        for shard in [0usize, 1, 17, 63] {
            assert_eq!(parse_data_address_name(&data_address_name(shard)), Some(Ok(shard)));
        }
        assert_eq!(data_address_name(3), "data/3");
        assert_eq!(parse_data_address_name("grpc"), None);
        assert!(matches!(parse_data_address_name("data/x"), Some(Err(_))));
        assert!(matches!(parse_data_address_name("data/"), Some(Err(_))));
    }

    /// The modulo rule is part of the protocol between daemon and client: pinned.
    #[test]
    fn targets_map_to_shards_by_modulo() {
        assert_eq!(shard_of(TargetId(0), 1), 0);
        assert_eq!(shard_of(TargetId(7), 1), 0);
        assert_eq!(shard_of(TargetId(101), 2), 1);
        assert_eq!(shard_of(TargetId(102), 2), 0);
        assert_eq!(shard_of(TargetId(1_000_000_123), 4), 3);
    }
}
