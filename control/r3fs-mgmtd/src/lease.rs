//! The mgmtd lease: which instance is primary, with fencing.
//!
//! Two records (docs/design/mgmtd.md):
//! - `lease/holder` ([`LeaseHolder`]): node id, per-process instance nonce, address and *epoch*.
//!   It changes only when the lease changes hands, and the epoch then grows by one.
//! - `lease/expiry` ([`LeaseExpiry`]): until when the holder's term runs; rewritten by every
//!   renewal. Kept apart so renewals do not conflict with the primary's own writes.
//!
//! Every instance runs [`lease_round`] each renew interval: one transaction that reads both records,
//! applies the pure rule [`decide`], writes the result and its own presence record. Every write
//! transaction of the primary first runs [`check_fence`], which reads `lease/holder`
//! *serializably*: if another instance takes the lease over concurrently, the KV's conflict
//! detection aborts one of the two, and on retry the deposed primary sees the new holder and stops
//! with NotPrimary. Safety therefore rests on the KV's serializability, not on clocks; clocks (the
//! expiry) only decide *when* a silent primary may be replaced and when an instance stops trusting
//! its own in-memory view.

use r3fs_kv::{Kv, ReadMode, RetryPolicy, Txn, retry};
use r3fs_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::{MgmtdError, Result};
use crate::keys;
use crate::records::{self, PresenceRecord};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub node_id: NodeId,
    pub instance: u64,
    /// gRPC address of the holder: where followers redirect clients.
    pub address: String,
    /// Fencing epoch: grows by one on every change of holder.
    pub epoch: u64,
    pub acquired_unix_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseExpiry {
    /// The epoch this expiry belongs to (an expiry of an older epoch means "expired").
    pub epoch: u64,
    pub expires_unix_ms: u64,
}

/// An instance competing for the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: NodeId,
    /// Random per process start.
    pub instance: u64,
    pub address: String,
}

/// Outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: extend the expiry.
    Renew,
    /// Vacant, expired, or held by our own previous run: take it with this epoch.
    Acquire { epoch: u64 },
    /// Someone else holds a live lease.
    Follow,
}

/// The lease rule. Pure: `now_unix_ms` is the deciding instance's clock.
///
/// A holder with our node id but another instance nonce is our previous process (a node id names
/// one mgmtd instance; two live processes with one id are a misconfiguration): we take over at once
/// instead of waiting out its lease, so a restarted single mgmtd serves again immediately.
pub fn decide(
    holder: Option<&LeaseHolder>,
    expiry: Option<&LeaseExpiry>,
    me: &Candidate,
    now_unix_ms: u64,
) -> Decision {
    let Some(holder) = holder else { return Decision::Acquire { epoch: 1 } };
    if holder.node_id == me.node_id {
        return if holder.instance == me.instance {
            Decision::Renew
        } else {
            Decision::Acquire { epoch: holder.epoch + 1 }
        };
    }
    if is_live(holder, expiry, now_unix_ms) {
        Decision::Follow
    } else {
        Decision::Acquire { epoch: holder.epoch + 1 }
    }
}

fn is_live(holder: &LeaseHolder, expiry: Option<&LeaseExpiry>, now_unix_ms: u64) -> bool {
    expiry.is_some_and(|e| e.epoch == holder.epoch && now_unix_ms < e.expires_unix_ms)
}

/// What an instance learned from one lease round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: LeaseHolder,
    pub expires_unix_ms: u64,
}

impl LeaseView {
    pub fn is_mine(&self, me: &Candidate) -> bool {
        self.holder.node_id == me.node_id && self.holder.instance == me.instance
    }

    pub fn fence(&self) -> Fence {
        Fence {
            instance: self.holder.instance,
            epoch: self.holder.epoch,
            expires_unix_ms: self.expires_unix_ms,
        }
    }
}

/// What the primary's write transactions check against the stored lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub instance: u64,
    pub epoch: u64,
    /// Local view of the expiry when the fence was issued (fast refusal before any KV access).
    pub expires_unix_ms: u64,
}

/// One lease round of `me` at `now_unix_ms` (see the module doc); also records `presence`.
pub async fn lease_round(
    kv: &dyn Kv,
    policy: &RetryPolicy,
    me: &Candidate,
    presence: &PresenceRecord,
    now_unix_ms: u64,
    lease_timeout_ms: u64,
) -> Result<LeaseView> {
    retry::run(kv, policy, |txn| {
        let me = me.clone();
        let presence = presence.clone();
        Box::pin(async move {
            let holder: Option<LeaseHolder> =
                records::get(txn, &keys::lease_holder(), ReadMode::Serializable).await?;
            let expiry: Option<LeaseExpiry> =
                records::get(txn, &keys::lease_expiry(), ReadMode::Serializable).await?;
            records::put(txn, &keys::presence(presence.node_id), &presence)?;
            let expires_unix_ms = now_unix_ms.saturating_add(lease_timeout_ms);
            match (decide(holder.as_ref(), expiry.as_ref(), &me, now_unix_ms), holder) {
                (Decision::Renew, Some(holder)) => {
                    let expiry = LeaseExpiry { epoch: holder.epoch, expires_unix_ms };
                    records::put(txn, &keys::lease_expiry(), &expiry)?;
                    Ok(LeaseView { holder, expires_unix_ms })
                }
                (Decision::Acquire { epoch }, _) => {
                    let holder = LeaseHolder {
                        node_id: me.node_id,
                        instance: me.instance,
                        address: me.address.clone(),
                        epoch,
                        acquired_unix_ms: now_unix_ms,
                    };
                    records::put(txn, &keys::lease_holder(), &holder)?;
                    records::put(
                        txn,
                        &keys::lease_expiry(),
                        &LeaseExpiry { epoch, expires_unix_ms },
                    )?;
                    Ok(LeaseView { holder, expires_unix_ms })
                }
                (Decision::Follow, Some(holder)) => {
                    let expires_unix_ms = expiry.map_or(0, |e| e.expires_unix_ms);
                    Ok(LeaseView { holder, expires_unix_ms })
                }
                (Decision::Renew | Decision::Follow, None) => {
                    // decide() never renews or follows a vacant lease.
                    Err(MgmtdError::Corrupt {
                        key: "mgmtd/lease/holder".into(),
                        reason: "lease rule followed a vacant lease".into(),
                    })
                }
            }
        })
    })
    .await
}

/// Gives the lease up if `me` holds it (clean shutdown), so another instance takes over without
/// waiting for the expiry.
pub async fn release(kv: &dyn Kv, policy: &RetryPolicy, me: &Candidate) -> Result<bool> {
    retry::run(kv, policy, |txn| {
        let me = me.clone();
        Box::pin(async move {
            let holder: Option<LeaseHolder> =
                records::get(txn, &keys::lease_holder(), ReadMode::Serializable).await?;
            match holder {
                Some(holder) if holder.node_id == me.node_id && holder.instance == me.instance => {
                    let expiry = LeaseExpiry { epoch: holder.epoch, expires_unix_ms: 0 };
                    records::put(txn, &keys::lease_expiry(), &expiry)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    })
    .await
}

/// The stored lease, if any (for GetPrimary), read without conflicts.
pub async fn read(kv: &dyn Kv) -> Result<Option<LeaseView>> {
    let mut txn = kv.begin().await?;
    let holder: Option<LeaseHolder> =
        records::get(&mut *txn, &keys::lease_holder(), ReadMode::Snapshot).await?;
    let expiry: Option<LeaseExpiry> =
        records::get(&mut *txn, &keys::lease_expiry(), ReadMode::Snapshot).await?;
    Ok(holder.map(|holder| {
        let expires_unix_ms =
            expiry.filter(|e| e.epoch == holder.epoch).map_or(0, |e| e.expires_unix_ms);
        LeaseView { holder, expires_unix_ms }
    }))
}

/// The fencing check every write transaction runs first: the stored lease must still be `fence`'s
/// and unexpired at `now_unix_ms`. Otherwise NotPrimary, pointing at the live holder if any.
pub async fn check_fence(txn: &mut dyn Txn, fence: &Fence, now_unix_ms: u64) -> Result<()> {
    let holder: Option<LeaseHolder> =
        records::get(txn, &keys::lease_holder(), ReadMode::Serializable).await?;
    let expiry: Option<LeaseExpiry> =
        records::get(txn, &keys::lease_expiry(), ReadMode::Snapshot).await?;
    match holder {
        Some(holder) if holder.instance == fence.instance && holder.epoch == fence.epoch => {
            if is_live(&holder, expiry.as_ref(), now_unix_ms) {
                Ok(())
            } else {
                Err(MgmtdError::NotPrimary { primary_address: None })
            }
        }
        Some(holder) => {
            let primary_address =
                is_live(&holder, expiry.as_ref(), now_unix_ms).then(|| holder.address.clone());
            Err(MgmtdError::NotPrimary { primary_address })
        }
        None => Err(MgmtdError::NotPrimary { primary_address: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(node: u32, instance: u64) -> Candidate {
        Candidate { node_id: NodeId(node), instance, address: format!("127.0.0.1:{node}") }
    }

    fn holder(node: u32, instance: u64, epoch: u64) -> LeaseHolder {
        LeaseHolder {
            node_id: NodeId(node),
            instance,
            address: format!("127.0.0.1:{node}"),
            epoch,
            acquired_unix_ms: 0,
        }
    }

    #[test]
    fn decide_follows_a_live_lease_and_takes_an_expired_one() {
        let me = candidate(2, 20);
        assert_eq!(decide(None, None, &me, 0), Decision::Acquire { epoch: 1 });
        let other = holder(1, 10, 4);
        let live = LeaseExpiry { epoch: 4, expires_unix_ms: 1_000 };
        assert_eq!(decide(Some(&other), Some(&live), &me, 999), Decision::Follow);
        assert_eq!(decide(Some(&other), Some(&live), &me, 1_000), Decision::Acquire { epoch: 5 });
        let stale_epoch = LeaseExpiry { epoch: 3, expires_unix_ms: 5_000 };
        assert_eq!(
            decide(Some(&other), Some(&stale_epoch), &me, 0),
            Decision::Acquire { epoch: 5 }
        );
        assert_eq!(decide(Some(&other), None, &me, 0), Decision::Acquire { epoch: 5 });
    }

    #[test]
    fn decide_renews_its_own_and_replaces_its_previous_run() {
        let me = candidate(2, 20);
        let mine = holder(2, 20, 7);
        let expired = LeaseExpiry { epoch: 7, expires_unix_ms: 0 };
        assert_eq!(decide(Some(&mine), Some(&expired), &me, 10), Decision::Renew);
        let previous_run = holder(2, 19, 7);
        let live = LeaseExpiry { epoch: 7, expires_unix_ms: 1_000 };
        assert_eq!(
            decide(Some(&previous_run), Some(&live), &me, 10),
            Decision::Acquire { epoch: 8 }
        );
    }
}
