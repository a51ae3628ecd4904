//! The cluster manager as the simulator runs it: mgmtd's own chain logic
//! ([`r3fs_mgmtd::chain_state::ChainState`]) fed by a heartbeat failure detector.
//!
//! Each storage node heartbeats the local state of each of its targets; mgmtd stores it. The
//! failure detector sets every target of a node silent for longer than the heartbeat timeout
//! offline. As in r3fs-mgmtd's heartbeat transaction, a *new* up-to-date claim (the stored state
//! is not up-to-date) is accepted only if made at the chain's current version, else taken as
//! online: a claim delayed across a chain change would promote a target that missed writes. Every heartbeat
//! and every failure-detector period recomputes every chain; a chain whose public states or order
//! changed gets a new chain version, which the world then publishes as routing. Mgmtd's lease,
//! KV store and gRPC surface are not simulated: they decide *who* computes the chain, not *what*.

use crate::net::TargetReport;
use r3fs_craq::{ChainRouting, ChainTarget};
use r3fs_mgmtd::chain_state::ChainState;
use r3fs_types::{ChainId, ChainVersion, LocalTargetState, PublicTargetState, TargetId};
use std::collections::BTreeMap;

/// See the module docs.
#[derive(Debug)]
pub struct MgmtdModel {
    heartbeat_timeout_ms: u64,
    chains: BTreeMap<ChainId, ChainState>,
    /// Node and chain of each target.
    target_node: BTreeMap<TargetId, usize>,
    target_chain: BTreeMap<TargetId, ChainId>,
    /// Trust up-to-date claims whatever chain version they were made at (a planted bug).
    trust_unversioned_claims: bool,
    /// Last accepted heartbeat per node: when, and its version.
    last_heard_ms: Vec<u64>,
    last_heartbeat_version: Vec<u64>,
    /// The local state mgmtd holds per target.
    stored: BTreeMap<TargetId, LocalTargetState>,
    /// Nodes the failure detector already took offline (until they heartbeat again).
    failed: Vec<bool>,
}

impl MgmtdModel {
    /// Chains start at version 1 with every target serving (fresh targets are empty, hence
    /// equal), every node heard from at time 0 and reporting up-to-date.
    pub fn new(
        heartbeat_timeout_ms: u64,
        nodes: usize,
        chains: &BTreeMap<ChainId, Vec<(TargetId, usize)>>,
        trust_unversioned_claims: bool,
    ) -> Result<Self, String> {
        let mut model = Self {
            heartbeat_timeout_ms,
            chains: BTreeMap::new(),
            target_node: BTreeMap::new(),
            target_chain: BTreeMap::new(),
            trust_unversioned_claims,
            last_heard_ms: vec![0; nodes],
            last_heartbeat_version: vec![0; nodes],
            stored: BTreeMap::new(),
            failed: vec![false; nodes],
        };
        for (&chain, targets) in chains {
            let ids: Vec<TargetId> = targets.iter().map(|(t, _)| *t).collect();
            let state = ChainState::new(chain, &ids).map_err(|e| format!("chain {chain}: {e}"))?;
            model.chains.insert(chain, state);
            for &(target, node) in targets {
                model.target_node.insert(target, node);
                model.target_chain.insert(target, chain);
                model.stored.insert(target, LocalTargetState::UpToDate);
            }
        }
        Ok(model)
    }

    pub fn chain_ids(&self) -> impl Iterator<Item = ChainId> + '_ {
        self.chains.keys().copied()
    }

    pub fn chain(&self, chain: ChainId) -> Option<&ChainState> {
        self.chains.get(&chain)
    }

    /// A heartbeat from `node` arrived with its targets' local states. Like r3fs-mgmtd, it is
    /// refused (returns false) unless its version is above the node's last accepted one: a
    /// heartbeat delayed in the network must not overwrite newer local states.
    pub fn heartbeat(
        &mut self,
        node: usize,
        version: u64,
        now_ms: u64,
        states: &[TargetReport],
    ) -> bool {
        let Some(last_version) = self.last_heartbeat_version.get_mut(node) else { return false };
        if version <= *last_version {
            return false;
        }
        *last_version = version;
        self.last_heard_ms[node] = self.last_heard_ms[node].max(now_ms);
        self.failed[node] = false;
        for report in states {
            if self.target_node.get(&report.target) != Some(&node) {
                continue; // another node's target: ignored, as r3fs-mgmtd does
            }
            let stored = self.stored.get(&report.target).copied();
            let current = self.chain_version_of(report.target);
            let stale_claim = report.state == LocalTargetState::UpToDate
                && stored != Some(LocalTargetState::UpToDate)
                && current.is_some_and(|current| report.claimed_at < current)
                && !self.trust_unversioned_claims;
            let state = if stale_claim { LocalTargetState::Online } else { report.state };
            self.stored.insert(report.target, state);
        }
        true
    }

    fn chain_version_of(&self, target: TargetId) -> Option<ChainVersion> {
        self.target_chain.get(&target).and_then(|c| self.chains.get(c)).map(|c| c.version)
    }

    /// The failure detector: every target of a node silent for longer than the heartbeat
    /// timeout goes offline (once; a heartbeat brings its reports back).
    fn detect_failures(&mut self, now_ms: u64) {
        for node in 0..self.failed.len() {
            let silent =
                now_ms.saturating_sub(self.last_heard_ms[node]) > self.heartbeat_timeout_ms;
            if silent && !self.failed[node] {
                self.failed[node] = true;
                for (target, _) in self.target_node.iter().filter(|(_, n)| **n == node) {
                    self.stored.insert(*target, LocalTargetState::Offline);
                }
            }
        }
    }

    /// The local state mgmtd holds for `target`.
    pub fn local_state(&self, target: TargetId) -> LocalTargetState {
        self.stored.get(&target).copied().unwrap_or(LocalTargetState::Offline)
    }

    /// Recomputes every chain; returns the chains whose version changed. An invariant broken by
    /// mgmtd's chain logic is returned as an error.
    pub fn recompute(&mut self, now_ms: u64) -> Result<Vec<ChainId>, String> {
        self.detect_failures(now_ms);
        let mut changed = Vec::new();
        let locals = &self.stored;
        for (chain, state) in self.chains.iter_mut() {
            let next =
                state.recompute(|t| locals.get(&t).copied().unwrap_or(LocalTargetState::Offline));
            next.check().map_err(|e| format!("mgmtd chain logic broke an invariant: {e}"))?;
            if next.version < state.version {
                return Err(format!("chain {chain} version went back to {}", next.version));
            }
            if next.version != state.version {
                changed.push(*chain);
                *state = next;
            }
        }
        Ok(changed)
    }

    /// The routing replicas and clients receive for `chain`.
    pub fn routing(&self, chain: ChainId) -> Option<ChainRouting> {
        let state = self.chains.get(&chain)?;
        Some(ChainRouting {
            chain,
            chain_version: state.version,
            targets: state
                .members
                .iter()
                .map(|m| ChainTarget { target: m.target_id, state: m.public_state })
                .collect(),
        })
    }

    pub fn routings(&self) -> Vec<ChainRouting> {
        self.chains.keys().filter_map(|c| self.routing(*c)).collect()
    }

    /// Targets of `chain` that must hold every acknowledged write: serving ones, or the
    /// last-serving one while none serves.
    pub fn must_hold_acked(&self, chain: ChainId) -> Vec<TargetId> {
        self.chains.get(&chain).map_or_else(Vec::new, |state| {
            state
                .members
                .iter()
                .filter(|m| {
                    matches!(
                        m.public_state,
                        PublicTargetState::Serving | PublicTargetState::LastServing
                    )
                })
                .map(|m| m.target_id)
                .collect()
        })
    }

    /// Whether every target of every chain serves.
    pub fn all_serving(&self) -> bool {
        self.chains
            .values()
            .all(|s| s.members.iter().all(|m| m.public_state == PublicTargetState::Serving))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_goes_offline_and_comes_back_through_sync() {
        let chains = BTreeMap::from([(
            ChainId(1),
            vec![(TargetId(1), 0), (TargetId(2), 1), (TargetId(3), 2)],
        )]);
        let mut mgmtd = MgmtdModel::new(100, 3, &chains, false).expect("valid");
        let report = |t: u64, state, v: u32| TargetReport {
            target: TargetId(t),
            state,
            claimed_at: ChainVersion(v),
        };
        assert_eq!(mgmtd.recompute(50), Ok(vec![]));
        assert!(mgmtd.heartbeat(0, 1, 150, &[report(1, LocalTargetState::UpToDate, 1)]));
        assert!(mgmtd.heartbeat(2, 1, 150, &[report(3, LocalTargetState::UpToDate, 1)]));
        assert_eq!(mgmtd.recompute(150), Ok(vec![ChainId(1)]), "node 1 is silent");
        let routing = mgmtd.routing(ChainId(1)).expect("chain");
        assert_eq!(routing.state_of(TargetId(2)), Some(PublicTargetState::Offline));
        assert_eq!(routing.head(), Some(TargetId(1)));
        assert_eq!(mgmtd.must_hold_acked(ChainId(1)), vec![TargetId(1), TargetId(3)]);
        assert!(mgmtd.heartbeat(1, 1, 160, &[report(2, LocalTargetState::Online, 2)]));
        assert_eq!(mgmtd.recompute(160), Ok(vec![ChainId(1)]));
        let routing = mgmtd.routing(ChainId(1)).expect("chain");
        assert_eq!(routing.state_of(TargetId(2)), Some(PublicTargetState::Syncing));
        assert!(!mgmtd.all_serving());
        // Another node's heartbeat cannot speak for target 2, nor can a stale one of its own.
        assert!(mgmtd.heartbeat(0, 2, 170, &[report(2, LocalTargetState::UpToDate, 3)]));
        assert!(!mgmtd.heartbeat(1, 1, 170, &[report(2, LocalTargetState::UpToDate, 3)]));
        assert_eq!(mgmtd.local_state(TargetId(2)), LocalTargetState::Online);
        // A new up-to-date claim counts only if made at the chain's current version (now 3).
        assert!(mgmtd.heartbeat(1, 2, 170, &[report(2, LocalTargetState::UpToDate, 2)]));
        assert_eq!(mgmtd.local_state(TargetId(2)), LocalTargetState::Online);
        assert!(mgmtd.heartbeat(1, 3, 175, &[report(2, LocalTargetState::UpToDate, 3)]));
        assert_eq!(mgmtd.local_state(TargetId(2)), LocalTargetState::UpToDate);
        assert_eq!(mgmtd.recompute(175), Ok(vec![ChainId(1)]));
        assert!(mgmtd.all_serving());
        // Once accepted, the unchanged claim stands at later versions.
        assert!(mgmtd.heartbeat(1, 4, 180, &[report(2, LocalTargetState::UpToDate, 3)]));
        assert_eq!(mgmtd.local_state(TargetId(2)), LocalTargetState::UpToDate);
    }
}
