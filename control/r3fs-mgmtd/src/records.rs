//! Records mgmtd stores in the KV (JSON, so an operator can read a dump) and typed helpers to
//! read and write them inside a transaction. Decoding never panics: a bad record is
//! [`MgmtdError::Corrupt`] naming its key.

use r3fs_kv::{RangeRequest, ReadMode, Txn};
use r3fs_types::{
    ChainId, ChainTableId, ChainTableVersion, LocalTargetState, NodeId, NodeStatus, NodeType,
    TargetId,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{MgmtdError, Result};

/// Set once by init-cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster_id: String,
    pub created_unix_ms: u64,
}

/// One node (storage, meta, client, or an mgmtd instance mirrored from its presence record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub node_type: NodeType,
    /// Stored, not derived, so every instance and restart shows the same status the primary last
    /// decided; `Disabled` is sticky until an operator re-enables the node.
    pub status: NodeStatus,
    pub hostname: String,
    /// (service name, "host:port").
    pub addresses: Vec<(String, String)>,
    pub heartbeat_version: u64,
    pub last_heartbeat_unix_ms: u64,
    pub config_version: u64,
    pub release_version: String,
}

/// One storage target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub target_id: TargetId,
    pub node_id: NodeId,
    pub disk_index: u32,
    pub chain_id: ChainId,
    /// Last local state reported by its daemon (or set by mgmtd on failure / offline-target).
    pub local_state: LocalTargetState,
    pub used_bytes: u64,
    /// Capacity as last reported (0 = unknown; records written before the field read as 0).
    #[serde(default)]
    pub total_bytes: u64,
    /// While the target syncs: its resync progress as its predecessor last reported it
    /// (refreshed without a routing-version bump; cleared when it leaves syncing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncRecord>,
}

/// How far a target's resync has come (mgmtd.proto's ResyncProgress without the target id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRecord {
    pub chunks_total: u64,
    pub chunks_done: u64,
    pub bytes_done: u64,
    pub started_unix_ms: u64,
}

/// Present while the chains are shut down (shutdown-all-chains until start-all-chains).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainsStoppedRecord {
    pub stopped_unix_ms: u64,
}

/// One immutable chain table version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTableRecord {
    pub table_id: ChainTableId,
    pub version: ChainTableVersion,
    pub chain_ids: Vec<ChainId>,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub uid: u32,
    pub name: String,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub admin: bool,
    pub created_unix_ms: u64,
    /// SHA-256 of the token, hex. The token itself is never stored.
    pub token_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub node_type: NodeType,
    pub version: u64,
    pub content: String,
    pub description: String,
    pub created_unix_ms: u64,
}

/// Written by every mgmtd instance on every lease round: how the primary learns which instances
/// are alive, to show them in list-nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    pub node_id: NodeId,
    /// Random per process start: tells a restarted instance from its previous run.
    pub instance: u64,
    pub address: String,
    pub hostname: String,
    pub release_version: String,
    pub last_seen_unix_ms: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| MgmtdError::Corrupt { key: String::from("(encoding)"), reason: e.to_string() })
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| MgmtdError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

pub async fn get<T: DeserializeOwned>(
    txn: &mut dyn Txn,
    key: &[u8],
    mode: ReadMode,
) -> Result<Option<T>> {
    match txn.get(key, mode).await? {
        Some(bytes) => Ok(Some(decode(key, &bytes)?)),
        None => Ok(None),
    }
}

pub fn put<T: Serialize>(txn: &mut dyn Txn, key: &[u8], value: &T) -> Result<()> {
    txn.set(key, &encode(value)?)?;
    Ok(())
}

/// Every record in `[begin, end)`, ascending.
pub async fn scan<T: DeserializeOwned>(
    txn: &mut dyn Txn,
    (begin, end): (Vec<u8>, Vec<u8>),
    mode: ReadMode,
) -> Result<Vec<T>> {
    let request = RangeRequest { begin, end, limit: 0, reverse: false, mode };
    let pairs = txn.get_range(&request).await?;
    pairs.iter().map(|(key, value)| decode(key, value)).collect()
}

/// The last record in `[begin, end)`.
pub async fn last<T: DeserializeOwned>(
    txn: &mut dyn Txn,
    (begin, end): (Vec<u8>, Vec<u8>),
    mode: ReadMode,
) -> Result<Option<T>> {
    let request = RangeRequest { begin, end, limit: 1, reverse: true, mode };
    let pairs = txn.get_range(&request).await?;
    match pairs.first() {
        Some((key, value)) => Ok(Some(decode(key, value)?)),
        None => Ok(None),
    }
}

/// A big-endian u64 counter (absent = 0).
pub async fn get_u64(txn: &mut dyn Txn, key: &[u8], mode: ReadMode) -> Result<u64> {
    match txn.get(key, mode).await? {
        None => Ok(0),
        Some(bytes) => decode_u64(key, &bytes),
    }
}

pub fn decode_u64(key: &[u8], bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| MgmtdError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

pub fn put_u64(txn: &mut dyn Txn, key: &[u8], value: u64) -> Result<()> {
    txn.set(key, &value.to_be_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_corrupt() {
        let record = TargetRecord {
            target_id: TargetId(7),
            node_id: NodeId(3),
            disk_index: 1,
            chain_id: ChainId(9),
            local_state: LocalTargetState::UpToDate,
            used_bytes: 42,
            total_bytes: 1 << 30,
            resync: None,
        };
        let bytes = encode(&record).expect("encode");
        assert_eq!(decode::<TargetRecord>(b"k", &bytes).expect("decode"), record);
        // A record written before total_bytes existed reads as capacity unknown.
        let mut old = serde_json::to_value(&record).expect("to a JSON value");
        old.as_object_mut().expect("an object").remove("total_bytes").expect("the field");
        let old = serde_json::to_vec(&old).expect("encode the old form");
        let decoded =
            decode::<TargetRecord>(b"k", &old).expect("decode a record without total_bytes");
        assert_eq!(decoded, TargetRecord { total_bytes: 0, ..record });
        let error = decode::<TargetRecord>(b"mgmtd/target/x", b"{not json").expect_err("garbage");
        assert!(matches!(error, MgmtdError::Corrupt { ref key, .. } if key == "mgmtd/target/x"));
    }
}
