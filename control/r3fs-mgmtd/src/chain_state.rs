//! The chain state machine: recomputes a chain's public target states and order from its targets'
//! local states (docs/design/chain-state.md). Pure code, no IO and no clock: mgmtd calls
//! [`ChainState::recompute`] inside its KV transactions, and a simulator can drive it directly.
//!
//! The rules are 3FS's state-transition table (design_notes.md, "Failure detection"), made
//! precise where the table leaves room:
//!
//! | local      | current public          | next public                                    |
//! | ---------- | ----------------------- | ---------------------------------------------- |
//! | up-to-date | serving, syncing, lastsrv | serving                                      |
//! | up-to-date | waiting, offline        | waiting                                        |
//! | online     | serving, lastsrv        | serving                                        |
//! | online     | syncing, waiting        | syncing if it is the sync candidate, else waiting |
//! | online     | offline                 | waiting                                        |
//! | offline    | lastsrv                 | lastsrv                                        |
//! | offline    | serving                 | lastsrv if every serving target failed in this step and it is the first of them, else offline |
//! | offline    | syncing, waiting, offline | offline                                      |
//!
//! - "Predecessor is serving" becomes: the chain is ordered serving, syncing, waiting, lastsrv,
//!   offline; the *sync candidate* is the first online target in the syncing/waiting group (the
//!   current syncing target first) and it syncs only if some target is serving. So at most one
//!   target syncs per chain, and it always sits right behind the serving ones.
//! - A target that fails moves to the end of the chain (behind targets that were already offline).
//! - A last-serving target exists only while no target serves; when a target serves again (the
//!   last-serving one returning, or a syncing one finishing in the same step) it is demoted to
//!   offline.
//! - One [`ChainState::recompute`] applies the table until nothing changes (at most three rounds:
//!   offline -> waiting -> syncing) and bumps the chain version once if anything changed, so
//!   intermediate states are never published.
//!
//! Invariants (checked by [`ChainState::check`] and by the property tests below): targets are a
//! permutation of the original set; the order is grouped as above; at most one target syncs and
//! only when one serves; at most one is last-serving and never together with a serving or syncing
//! one; versions only grow.

use r3fs_types::{ChainId, ChainVersion, LocalTargetState, PublicTargetState, TargetId};
use serde::{Deserialize, Serialize};

/// Most targets one chain may hold (replication factor bound).
pub const CHAIN_TARGETS_MAX: usize = 16;

/// Rounds of the table until a fixed point; three are enough (offline -> waiting -> syncing), one
/// more proves it.
const ROUNDS_MAX: usize = 4;

/// One chain member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainMember {
    pub target_id: TargetId,
    pub public_state: PublicTargetState,
}

/// A chain: ordered members (head first) and its version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    pub chain_id: ChainId,
    pub version: ChainVersion,
    pub members: Vec<ChainMember>,
}

/// Why a chain cannot be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a chain needs at least one target")]
    Empty,
    #[error("a chain holds at most {CHAIN_TARGETS_MAX} targets, not {0}")]
    TooLong(usize),
    #[error("target {0} appears twice in the chain")]
    DuplicateTarget(TargetId),
}

/// Why an operator's change of a chain is refused. The texts are shown to operators as they
/// are: each says what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainOpError {
    #[error("target {target} is not in chain {chain}")]
    NotMember { chain: ChainId, target: TargetId },
    #[error("target {target} is already in chain {chain}")]
    AlreadyMember { chain: ChainId, target: TargetId },
    #[error("chain {chain} already holds {CHAIN_TARGETS_MAX} targets; remove one first")]
    Full { chain: ChainId },
    #[error(
        "target {target} is the only target of chain {chain}; add another with add-target-to-chain and wait until it serves, then remove {target}"
    )]
    OnlyTarget { chain: ChainId, target: TargetId },
    #[error(
        "target {target} is the only serving replica of chain {chain}: removing it would leave the chain without an up-to-date replica; add a target with add-target-to-chain and wait until it serves (r3fs list-targets), then remove {target}"
    )]
    OnlyServing { chain: ChainId, target: TargetId },
    #[error(
        "target {target} is the last-serving target of chain {chain} and holds its newest data: bring it back (the chain then serves again), or, if it is lost for good, make another target last-serving with rotate-last-serving first"
    )]
    OnlyLastServing { chain: ChainId, target: TargetId },
    #[error(
        "chain {chain} still has a serving or syncing target ({target}): rotate-last-serving applies only to a chain that has lost every serving replica"
    )]
    StillServing { chain: ChainId, target: TargetId },
}

/// Order of the groups in a chain.
fn group_rank(state: PublicTargetState) -> u8 {
    match state {
        PublicTargetState::Serving => 0,
        PublicTargetState::Syncing => 1,
        PublicTargetState::Waiting => 2,
        PublicTargetState::LastServing => 3,
        PublicTargetState::Offline => 4,
    }
}

/// A member's state between the table lookup and the group-level decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tentative {
    Serving,
    /// Online and may sync; `was_syncing` ranks the current syncing target first.
    SyncCandidate {
        was_syncing: bool,
    },
    Waiting,
    LastServing,
    /// `newly`: it was not offline before this round, so it goes behind the old offline ones.
    Offline {
        newly: bool,
    },
}

impl ChainState {
    /// A new chain at version 1 with every target serving: fresh targets are empty, hence equal.
    /// Call [`ChainState::recompute`] right after to apply the targets' actual local states.
    pub fn new(chain_id: ChainId, targets: &[TargetId]) -> Result<ChainState, ChainError> {
        if targets.is_empty() {
            return Err(ChainError::Empty);
        }
        if targets.len() > CHAIN_TARGETS_MAX {
            return Err(ChainError::TooLong(targets.len()));
        }
        for (i, target) in targets.iter().enumerate() {
            if targets[..i].contains(target) {
                return Err(ChainError::DuplicateTarget(*target));
            }
        }
        let members = targets
            .iter()
            .map(|&target_id| ChainMember { target_id, public_state: PublicTargetState::Serving })
            .collect();
        Ok(ChainState { chain_id, version: ChainVersion(1), members })
    }

    pub fn public_state(&self, target: TargetId) -> Option<PublicTargetState> {
        self.members.iter().find(|m| m.target_id == target).map(|m| m.public_state)
    }

    pub fn target_ids(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.members.iter().map(|m| m.target_id)
    }

    /// The chain after applying the targets' local states; the version is bumped by one iff the
    /// order or any public state changed. `local` must answer for every member.
    pub fn recompute(&self, local: impl Fn(TargetId) -> LocalTargetState) -> ChainState {
        let mut members = self.members.clone();
        for _ in 0..ROUNDS_MAX {
            let next = round(&members, &local);
            if next == members {
                break;
            }
            members = next;
        }
        debug_assert_eq!(round(&members, &local), members, "recompute reached no fixed point");
        let version = if members == self.members { self.version } else { self.version.next() };
        let next = ChainState { chain_id: self.chain_id, version, members };
        debug_assert_eq!(next.check(), Ok(()));
        next
    }

    /// Checks the structural invariants; returns the first violation.
    pub fn check(&self) -> Result<(), String> {
        let ranks: Vec<u8> = self.members.iter().map(|m| group_rank(m.public_state)).collect();
        if ranks.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("chain {} is not grouped: {:?}", self.chain_id, self.members));
        }
        let count = |s| self.members.iter().filter(|m| m.public_state == s).count();
        let serving = count(PublicTargetState::Serving);
        let syncing = count(PublicTargetState::Syncing);
        let last_serving = count(PublicTargetState::LastServing);
        if syncing > 1 {
            return Err(format!("chain {} has {syncing} syncing targets", self.chain_id));
        }
        if syncing == 1 && serving == 0 {
            return Err(format!("chain {} syncs with no serving target", self.chain_id));
        }
        if last_serving > 0 && serving + syncing > 0 {
            return Err(format!(
                "chain {} has a last-serving target next to serving/syncing ones",
                self.chain_id
            ));
        }
        Ok(())
    }
}

impl ChainState {
    /// Operator's remove-target: the chain without `target`, recomputed from `local`, at the next
    /// version. The chain's state is first brought up to date with `local`, so the refusals
    /// judge what is true now: the chain must keep at least one target; a target may not leave
    /// if it is the only serving one (the rest would miss its writes) or the only last-serving
    /// one while nothing serves (it holds the newest data).
    pub fn remove_member(
        &self,
        target: TargetId,
        local: impl Fn(TargetId) -> LocalTargetState,
    ) -> Result<ChainState, ChainOpError> {
        let chain = self.chain_id;
        let now = self.recompute(&local);
        let Some(state) = now.public_state(target) else {
            return Err(ChainOpError::NotMember { chain, target });
        };
        if now.members.len() == 1 {
            return Err(ChainOpError::OnlyTarget { chain, target });
        }
        let count = |s| now.members.iter().filter(|m| m.public_state == s).count();
        match state {
            PublicTargetState::Serving if count(PublicTargetState::Serving) == 1 => {
                return Err(ChainOpError::OnlyServing { chain, target });
            }
            PublicTargetState::LastServing if count(PublicTargetState::LastServing) == 1 => {
                return Err(ChainOpError::OnlyLastServing { chain, target });
            }
            _ => {}
        }
        let members = now.members.iter().filter(|m| m.target_id != target).copied().collect();
        let removed = ChainState { chain_id: chain, version: self.version, members };
        Ok(removed.recompute(&local).bumped_from(self))
    }

    /// Operator's add-target-to-chain: `target` appended as offline, then recomputed from
    /// `local`, at the next version. A new target never serves before a resync: an up-to-date
    /// claim on an offline target only makes it wait (the table), and its daemon, seeing it
    /// waiting, reports it online, so it syncs from the serving targets (while writes flow to
    /// it) and serves once its resync is done.
    pub fn add_member(
        &self,
        target: TargetId,
        local: impl Fn(TargetId) -> LocalTargetState,
    ) -> Result<ChainState, ChainOpError> {
        let chain = self.chain_id;
        if self.public_state(target).is_some() {
            return Err(ChainOpError::AlreadyMember { chain, target });
        }
        if self.members.len() >= CHAIN_TARGETS_MAX {
            return Err(ChainOpError::Full { chain });
        }
        let mut members = self.members.clone();
        members.push(ChainMember { target_id: target, public_state: PublicTargetState::Offline });
        let added = ChainState { chain_id: chain, version: self.version, members };
        Ok(added.recompute(&local).bumped_from(self))
    }

    /// Operator's rotate-last-serving: for a chain that has lost every serving replica, make
    /// `target` its (only) last-serving target in place of the current one(s), then recompute
    /// from `local` (so an alive `target` serves at once and the others resync from it). Writes
    /// committed after `target` stopped serving exist only on the old last-serving target(s) and
    /// are lost unless one of those returns before any new write: the operator's decision.
    /// Unchanged (same version) if `target` already is the only last-serving target.
    pub fn rotate_last_serving(
        &self,
        target: TargetId,
        local: impl Fn(TargetId) -> LocalTargetState,
    ) -> Result<ChainState, ChainOpError> {
        let chain = self.chain_id;
        let now = self.recompute(&local);
        if now.public_state(target).is_none() {
            return Err(ChainOpError::NotMember { chain, target });
        }
        if let Some(up) = now.members.iter().find(|m| m.public_state.takes_writes()) {
            return Err(ChainOpError::StillServing { chain, target: up.target_id });
        }
        let mut members: Vec<ChainMember> = now
            .members
            .iter()
            .map(|m| {
                let public_state = if m.target_id == target {
                    PublicTargetState::LastServing
                } else if m.public_state == PublicTargetState::LastServing {
                    PublicTargetState::Offline
                } else {
                    m.public_state
                };
                ChainMember { target_id: m.target_id, public_state }
            })
            .collect();
        members.sort_by_key(|m| group_rank(m.public_state));
        if members == self.members {
            return Ok(self.clone());
        }
        let rotated = ChainState { chain_id: chain, version: self.version, members };
        Ok(rotated.recompute(&local).bumped_from(self))
    }

    /// Orderly stop (3FS's shutdown-all-chains): every serving target becomes last-serving,
    /// syncing and waiting ones offline, so the chain takes no writes. Every last-serving target
    /// then holds every committed write, so on restart whichever returns first serves without a
    /// resync (and the others that return in the same recompute serve too); later ones resync.
    /// mgmtd must not recompute a shut-down chain until the operator starts the chains again,
    /// since alive daemons' reports would make the last-serving targets serve at once.
    pub fn shutdown(&self) -> ChainState {
        let mut members: Vec<ChainMember> = self
            .members
            .iter()
            .map(|m| {
                let public_state = match m.public_state {
                    PublicTargetState::Serving | PublicTargetState::LastServing => {
                        PublicTargetState::LastServing
                    }
                    PublicTargetState::Syncing
                    | PublicTargetState::Waiting
                    | PublicTargetState::Offline => PublicTargetState::Offline,
                };
                ChainMember { target_id: m.target_id, public_state }
            })
            .collect();
        members.sort_by_key(|m| group_rank(m.public_state));
        let version = if members == self.members { self.version } else { self.version.next() };
        let next = ChainState { chain_id: self.chain_id, version, members };
        debug_assert_eq!(next.check(), Ok(()));
        next
    }

    /// `self` (an operator's change of `before`, recomputed) at exactly one version above
    /// `before`: the change and the recompute are published as one step.
    fn bumped_from(mut self, before: &ChainState) -> ChainState {
        self.version = before.version.next();
        debug_assert_eq!(self.check(), Ok(()));
        self
    }
}

/// One application of the table plus the group-level rules.
fn round(
    members: &[ChainMember],
    local: &impl Fn(TargetId) -> LocalTargetState,
) -> Vec<ChainMember> {
    use LocalTargetState as L;
    use PublicTargetState as P;

    let tentative: Vec<Tentative> = members
        .iter()
        .map(|m| match (local(m.target_id), m.public_state) {
            (L::UpToDate | L::Online, P::Serving | P::LastServing) => Tentative::Serving,
            (L::UpToDate, P::Syncing) => Tentative::Serving,
            (L::UpToDate, P::Waiting | P::Offline) => Tentative::Waiting,
            (L::Online, P::Syncing) => Tentative::SyncCandidate { was_syncing: true },
            (L::Online, P::Waiting) => Tentative::SyncCandidate { was_syncing: false },
            (L::Online, P::Offline) => Tentative::Waiting,
            (L::Offline, P::LastServing) => Tentative::LastServing,
            (L::Offline, P::Offline) => Tentative::Offline { newly: false },
            (L::Offline, P::Serving | P::Syncing | P::Waiting) => {
                Tentative::Offline { newly: true }
            }
        })
        .collect();

    let any_serving = tentative.contains(&Tentative::Serving);
    let mut tentative = tentative;
    // Several last-serving targets exist only after an orderly shutdown
    // ([`ChainState::shutdown`]): every target serving then holds every committed write, and no
    // write commits while none serves, so whichever returns first may serve.
    if any_serving {
        // Someone serves (again): a last-serving target is no longer the only holder of the newest
        // data, and must resync like any other returning target.
        for t in &mut tentative {
            if *t == Tentative::LastServing {
                *t = Tentative::Offline { newly: false };
            }
        }
    } else if let Some(first) = members.iter().position(|m| m.public_state == P::Serving) {
        // Every serving target failed in this round: the first of them (the head, which also holds
        // any pending update) keeps the identity of the last serving replica.
        debug_assert_eq!(tentative[first], Tentative::Offline { newly: true });
        tentative[first] = Tentative::LastServing;
    }

    // Sync candidate: the current syncing target if still a candidate, else the first candidate in
    // chain order; it syncs only if some target serves.
    let candidate = tentative
        .iter()
        .position(|t| *t == Tentative::SyncCandidate { was_syncing: true })
        .or_else(|| tentative.iter().position(|t| matches!(t, Tentative::SyncCandidate { .. })));

    let mut ranked: Vec<(u8, usize, ChainMember)> = members
        .iter()
        .zip(&tentative)
        .enumerate()
        .map(|(i, (m, t))| {
            let (rank, state) = match *t {
                Tentative::Serving => (0, P::Serving),
                Tentative::SyncCandidate { .. } if any_serving && candidate == Some(i) => {
                    (1, P::Syncing)
                }
                Tentative::SyncCandidate { .. } | Tentative::Waiting => (2, P::Waiting),
                Tentative::LastServing => (3, P::LastServing),
                Tentative::Offline { newly: false } => (4, P::Offline),
                Tentative::Offline { newly: true } => (5, P::Offline),
            };
            (rank, i, ChainMember { target_id: m.target_id, public_state: state })
        })
        .collect();
    // Stable by (group, old position): failed targets go behind the old offline ones.
    ranked.sort_by_key(|&(rank, i, _)| (rank, i));
    ranked.into_iter().map(|(_, _, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use LocalTargetState as L;
    use PublicTargetState as P;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    fn ids(n: u64) -> Vec<TargetId> {
        (1..=n).map(TargetId).collect()
    }

    fn states(chain: &ChainState) -> Vec<(u64, P)> {
        chain.members.iter().map(|m| (m.target_id.0, m.public_state)).collect()
    }

    fn with_local(map: &[(u64, L)]) -> impl Fn(TargetId) -> L + '_ {
        move |t| map.iter().find(|(id, _)| *id == t.0).map_or(L::Offline, |(_, s)| *s)
    }

    #[test]
    fn new_chain_validates_its_targets() {
        assert_eq!(ChainState::new(ChainId(1), &[]), Err(ChainError::Empty));
        assert_eq!(
            ChainState::new(ChainId(1), &[TargetId(1), TargetId(1)]),
            Err(ChainError::DuplicateTarget(TargetId(1)))
        );
        assert_eq!(ChainState::new(ChainId(1), &ids(17)), Err(ChainError::TooLong(17)));
        let chain = ChainState::new(ChainId(1), &ids(3)).expect("valid chain");
        assert_eq!(chain.version, ChainVersion(1));
        assert!(chain.members.iter().all(|m| m.public_state == P::Serving));
    }

    #[test]
    fn failed_middle_target_moves_to_the_end_and_resyncs() {
        let chain = ChainState::new(ChainId(7), &ids(3)).expect("valid chain");
        let up = [(1, L::UpToDate), (2, L::UpToDate), (3, L::UpToDate)];
        let same = chain.recompute(with_local(&up));
        assert_eq!(same, chain, "no change, no version bump");

        let failed =
            chain.recompute(with_local(&[(1, L::UpToDate), (2, L::Offline), (3, L::UpToDate)]));
        assert_eq!(states(&failed), vec![(1, P::Serving), (3, P::Serving), (2, P::Offline)]);
        assert_eq!(failed.version, ChainVersion(2));

        // It restarts: offline -> waiting -> syncing in one recompute (one version bump).
        let back =
            failed.recompute(with_local(&[(1, L::UpToDate), (2, L::Online), (3, L::UpToDate)]));
        assert_eq!(states(&back), vec![(1, P::Serving), (3, P::Serving), (2, P::Syncing)]);
        assert_eq!(back.version, ChainVersion(3));

        let done = back.recompute(with_local(&up));
        assert_eq!(states(&done), vec![(1, P::Serving), (3, P::Serving), (2, P::Serving)]);
        assert_eq!(done.version, ChainVersion(4));
    }

    #[test]
    fn last_serving_keeps_identity_until_it_returns() {
        let chain = ChainState::new(ChainId(1), &ids(3)).expect("valid chain");
        let all_up = [(1, L::UpToDate), (2, L::UpToDate), (3, L::UpToDate)];
        // 3 fails, then 1 and 2 fail together: 1 (first serving) is last-serving.
        let c = chain.recompute(with_local(&[(1, L::UpToDate), (2, L::UpToDate), (3, L::Offline)]));
        let c = c.recompute(with_local(&[(3, L::Offline)]));
        assert_eq!(states(&c), vec![(1, P::LastServing), (3, P::Offline), (2, P::Offline)]);
        // 2 and 3 come back: no serving source, they wait.
        let c = c.recompute(with_local(&[(2, L::Online), (3, L::Online)]));
        assert_eq!(states(&c), vec![(3, P::Waiting), (2, P::Waiting), (1, P::LastServing)]);
        // Even claiming up-to-date does not make them serve.
        let c = c.recompute(with_local(&[(2, L::UpToDate), (3, L::UpToDate)]));
        assert!(c.members.iter().all(|m| m.public_state != P::Serving));
        // 1 returns: it serves, the others then sync from it one at a time.
        let c = c.recompute(with_local(&[(1, L::Online), (2, L::Online), (3, L::Online)]));
        assert_eq!(states(&c), vec![(1, P::Serving), (3, P::Syncing), (2, P::Waiting)]);
        let c = c.recompute(with_local(&[(1, L::UpToDate), (2, L::Online), (3, L::UpToDate)]));
        assert_eq!(states(&c), vec![(1, P::Serving), (3, P::Serving), (2, P::Syncing)]);
        let c = c.recompute(with_local(&all_up));
        assert!(c.members.iter().all(|m| m.public_state == P::Serving));
    }

    #[test]
    fn syncing_target_that_finishes_as_its_source_fails_serves() {
        let chain = ChainState {
            chain_id: ChainId(1),
            version: ChainVersion(5),
            members: vec![
                ChainMember { target_id: TargetId(1), public_state: P::Serving },
                ChainMember { target_id: TargetId(2), public_state: P::Syncing },
            ],
        };
        let c = chain.recompute(with_local(&[(1, L::Offline), (2, L::UpToDate)]));
        assert_eq!(states(&c), vec![(2, P::Serving), (1, P::Offline)]);
        // Not finished: it cannot go on without a source, and 1 is last-serving.
        let c = chain.recompute(with_local(&[(1, L::Offline), (2, L::Online)]));
        assert_eq!(states(&c), vec![(2, P::Waiting), (1, P::LastServing)]);
    }

    fn chain_of(members: &[(u64, P)]) -> ChainState {
        ChainState {
            chain_id: ChainId(1),
            version: ChainVersion(10),
            members: members
                .iter()
                .map(|&(t, public_state)| ChainMember { target_id: TargetId(t), public_state })
                .collect(),
        }
    }

    #[test]
    fn remove_member_refuses_to_strand_the_chain() {
        let chain = chain_of(&[(1, P::Serving), (2, P::Serving), (3, P::Offline)]);
        let up = [(1, L::UpToDate), (2, L::UpToDate)];
        let c = chain.remove_member(TargetId(2), with_local(&up)).expect("another serves");
        assert_eq!(states(&c), vec![(1, P::Serving), (3, P::Offline)]);
        assert_eq!(c.version, ChainVersion(11));
        let c = c.remove_member(TargetId(3), with_local(&up)).expect("offline target");
        assert_eq!(states(&c), vec![(1, P::Serving)]);
        assert_eq!(c.version, ChainVersion(12));
        assert_eq!(
            c.remove_member(TargetId(1), with_local(&up)),
            Err(ChainOpError::OnlyTarget { chain: ChainId(1), target: TargetId(1) })
        );
        assert_eq!(
            c.remove_member(TargetId(9), with_local(&up)),
            Err(ChainOpError::NotMember { chain: ChainId(1), target: TargetId(9) })
        );
        // 2 serves in the stored chain but its daemon died: judged on the recomputed chain, 1
        // is the only serving replica left.
        let refused = chain.remove_member(TargetId(1), with_local(&[(1, L::UpToDate)]));
        assert_eq!(
            refused,
            Err(ChainOpError::OnlyServing { chain: ChainId(1), target: TargetId(1) })
        );
        let message = refused.expect_err("refused").to_string();
        assert!(message.contains("add-target-to-chain"), "{message}");
        // The last-serving target holds the newest data.
        let down = chain_of(&[(1, P::LastServing), (2, P::Offline)]);
        assert_eq!(
            down.remove_member(TargetId(1), with_local(&[])),
            Err(ChainOpError::OnlyLastServing { chain: ChainId(1), target: TargetId(1) })
        );
        let c = down.remove_member(TargetId(2), with_local(&[])).expect("offline target");
        assert_eq!(states(&c), vec![(1, P::LastServing)]);
    }

    #[test]
    fn added_member_syncs_before_it_serves() {
        let chain = chain_of(&[(1, P::Serving), (2, P::Serving)]);
        let fresh = [(1, L::UpToDate), (2, L::UpToDate), (3, L::UpToDate)];
        // A just-created target claims up-to-date (it belongs to no chain yet): it waits.
        let c = chain.add_member(TargetId(3), with_local(&fresh)).expect("added");
        assert_eq!(states(&c), vec![(1, P::Serving), (2, P::Serving), (3, P::Waiting)]);
        assert_eq!(c.version, ChainVersion(11));
        assert_eq!(c.recompute(with_local(&fresh)), c, "an up-to-date claim never skips the sync");
        // Its daemon sees it waiting and reports online: it syncs, then serves.
        let syncing = [(1, L::UpToDate), (2, L::UpToDate), (3, L::Online)];
        let c = c.recompute(with_local(&syncing));
        assert_eq!(states(&c), vec![(1, P::Serving), (2, P::Serving), (3, P::Syncing)]);
        let c = c.recompute(with_local(&fresh));
        assert!(c.members.iter().all(|m| m.public_state == P::Serving));
        // Online at once: syncing in the same step.
        let c2 = chain.add_member(TargetId(3), with_local(&syncing)).expect("added");
        assert_eq!(states(&c2), vec![(1, P::Serving), (2, P::Serving), (3, P::Syncing)]);
        assert_eq!(c2.version, ChainVersion(11));
        assert_eq!(
            chain.add_member(TargetId(2), with_local(&fresh)),
            Err(ChainOpError::AlreadyMember { chain: ChainId(1), target: TargetId(2) })
        );
        let full = ChainState::new(ChainId(1), &ids(CHAIN_TARGETS_MAX as u64)).expect("valid");
        assert_eq!(
            full.add_member(TargetId(99), with_local(&[])),
            Err(ChainOpError::Full { chain: ChainId(1) })
        );
    }

    #[test]
    fn rotate_last_serving_moves_the_identity() {
        let down = chain_of(&[(2, P::Waiting), (1, P::LastServing), (3, P::Offline)]);
        // 1's disk is gone; 2 is alive and waiting: it becomes last-serving and serves at once,
        // and 3 (alive too) syncs from it.
        let local = [(2, L::Online), (3, L::Online)];
        let c = down.rotate_last_serving(TargetId(2), with_local(&local)).expect("rotated");
        assert_eq!(states(&c), vec![(2, P::Serving), (3, P::Syncing), (1, P::Offline)]);
        assert_eq!(c.version, ChainVersion(11));
        // To a target that is down: it is last-serving and the chain waits for it.
        let c = down.rotate_last_serving(TargetId(3), with_local(&[(2, L::Online)])).expect("ok");
        assert_eq!(states(&c), vec![(2, P::Waiting), (3, P::LastServing), (1, P::Offline)]);
        // Already the last-serving target: no change.
        assert_eq!(
            down.rotate_last_serving(TargetId(1), with_local(&[(2, L::Online)])),
            Ok(down.clone())
        );
        let serving = chain_of(&[(1, P::Serving), (2, P::Offline)]);
        assert_eq!(
            serving.rotate_last_serving(TargetId(2), with_local(&[(1, L::UpToDate)])),
            Err(ChainOpError::StillServing { chain: ChainId(1), target: TargetId(1) })
        );
        assert_eq!(
            down.rotate_last_serving(TargetId(7), with_local(&[])),
            Err(ChainOpError::NotMember { chain: ChainId(1), target: TargetId(7) })
        );
    }

    #[test]
    fn shutdown_keeps_every_serving_replica_as_last_serving() {
        let chain = chain_of(&[(1, P::Serving), (2, P::Serving), (3, P::Syncing), (4, P::Offline)]);
        let stopped = chain.shutdown();
        assert_eq!(
            states(&stopped),
            vec![(1, P::LastServing), (2, P::LastServing), (3, P::Offline), (4, P::Offline)]
        );
        assert_eq!(stopped.version, ChainVersion(11));
        assert_eq!(stopped.check(), Ok(()));
        assert_eq!(stopped.shutdown(), stopped, "idempotent");
        assert!(!stopped.members.iter().any(|m| m.public_state.takes_writes()));
        // Restart: 1 and 2 report online in the same step: both serve without a resync; 3
        // (incomplete) resyncs; 4 waits.
        let all = [(1, L::Online), (2, L::Online), (3, L::Online), (4, L::Online)];
        let c = stopped.recompute(with_local(&all));
        assert_eq!(
            states(&c),
            vec![(1, P::Serving), (2, P::Serving), (3, P::Syncing), (4, P::Waiting)]
        );
        // Only 2 is back at first: it serves alone, and 1 must resync when it returns (writes
        // may have committed without it).
        let c = stopped.recompute(with_local(&[(2, L::Online)]));
        assert_eq!(
            states(&c),
            vec![(2, P::Serving), (1, P::Offline), (3, P::Offline), (4, P::Offline)]
        );
    }

    // ---- property tests against a model of the storage daemons and of writes ----

    #[derive(Clone, Debug)]
    enum Action {
        Crash(usize),
        Restart(usize),
        /// The syncing target's daemon finishes its resync.
        FinishSync(usize),
        Write,
        /// The daemon reads the routing info and follows it (late: daemons see changes whenever
        /// they next fetch, so their heartbeats may report stale claims meanwhile).
        Observe(usize),
        /// mgmtd recomputes the chain; with `Some(i)` an operator's offline-target forces target
        /// `i`'s local state to offline for this recompute.
        Recompute(Option<usize>),
        /// An operator's shutdown-all-chains (the next recompute is the restart).
        Shutdown,
    }

    fn action(n: usize) -> impl Strategy<Value = Action> {
        prop_oneof![
            (0..n).prop_map(Action::Crash),
            (0..n).prop_map(Action::Restart),
            (0..n).prop_map(Action::FinishSync),
            Just(Action::Write),
            (0..n).prop_map(Action::Observe),
            Just(Action::Recompute(None)),
            Just(Action::Recompute(None)),
            (0..n).prop_map(|i| Action::Recompute(Some(i))),
            Just(Action::Shutdown),
        ]
    }

    /// What a storage daemon knows about its target.
    #[derive(Clone, Debug)]
    struct Daemon {
        alive: bool,
        /// Claims up-to-date in heartbeats: set when the target serves or finishes a sync, cleared
        /// by a restart or an admin offline (the 3FS daemon contract).
        claims_up_to_date: bool,
        /// Model truth: holds every committed write.
        complete: bool,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Runs random failures, restarts, syncs and writes against the state machine and checks,
        /// after every recompute: the structural invariants; versions only grow and bump exactly
        /// when the chain changes; the target set is kept; failed targets are at the end; a chain
        /// that loses its last serving target keeps that target's identity as last-serving; and
        /// every serving target holds every committed write.
        #[test]
        fn chain_state_machine_is_safe(n in 1usize..=5, actions in prop::collection::vec(action(5), 1..80)) {
            let targets = ids(n as u64);
            let mut chain = ChainState::new(ChainId(1), &targets).expect("valid chain");
            let mut daemons: Vec<Daemon> = (0..n).map(|_| Daemon { alive: true, claims_up_to_date: true, complete: true }).collect();
            let set: BTreeSet<TargetId> = targets.iter().copied().collect();
            for action in actions {
                match action {
                    Action::Crash(i) if i < n => daemons[i].alive = false,
                    Action::Restart(i) if i < n && !daemons[i].alive => {
                        daemons[i].alive = true;
                        daemons[i].claims_up_to_date = false;
                    }
                    Action::FinishSync(i) if i < n => {
                        let syncing = chain.public_state(targets[i]) == Some(P::Syncing);
                        // A sync copies from the serving predecessor, which must be alive.
                        let source_alive = chain.members.iter().any(|m| m.public_state == P::Serving && daemons[(m.target_id.0 - 1) as usize].alive);
                        if syncing && daemons[i].alive && source_alive {
                            daemons[i].claims_up_to_date = true;
                            daemons[i].complete = true;
                        }
                    }
                    Action::Write => {
                        // A write commits only if the chain has a serving head and every target
                        // that takes writes acknowledges (is alive).
                        let takers: Vec<usize> = chain.members.iter().filter(|m| m.public_state.takes_writes()).map(|m| (m.target_id.0 - 1) as usize).collect();
                        let has_serving = chain.members.iter().any(|m| m.public_state == P::Serving);
                        if has_serving && takers.iter().all(|&i| daemons[i].alive) {
                            for (i, d) in daemons.iter_mut().enumerate() {
                                if !takers.contains(&i) {
                                    d.complete = false;
                                }
                            }
                        }
                    }
                    Action::Recompute(forced_offline) => {
                        let local: HashMap<TargetId, L> = targets.iter().enumerate().map(|(i, &t)| {
                            let d = &daemons[i];
                            let state = if !d.alive || forced_offline == Some(i) { L::Offline } else if d.claims_up_to_date { L::UpToDate } else { L::Online };
                            (t, state)
                        }).collect();
                        let next = chain.recompute(|t| local[&t]);
                        prop_assert_eq!(next.check(), Ok(()));
                        prop_assert!(next.version >= chain.version);
                        prop_assert_eq!(next.version > chain.version, next.members != chain.members);
                        prop_assert!(next.version.0 <= chain.version.0 + 1);
                        let next_set: BTreeSet<TargetId> = next.target_ids().collect();
                        prop_assert_eq!(&next_set, &set);
                        prop_assert_eq!(next.members.len(), n);
                        // Failed targets moved to the end, behind those already offline.
                        let newly_failed: Vec<TargetId> = chain.members.iter()
                            .filter(|m| m.public_state != P::Offline && m.public_state != P::LastServing)
                            .filter(|m| next.public_state(m.target_id) == Some(P::Offline))
                            .map(|m| m.target_id).collect();
                        let tail: Vec<TargetId> = next.target_ids().skip(n - newly_failed.len()).collect();
                        prop_assert_eq!(tail, newly_failed);
                        // Losing every serving target leaves exactly one last-serving target, one
                        // that was serving.
                        let served_before: Vec<TargetId> = chain.members.iter().filter(|m| m.public_state == P::Serving).map(|m| m.target_id).collect();
                        let serves_now = next.members.iter().any(|m| m.public_state == P::Serving);
                        if !served_before.is_empty() && !serves_now {
                            let last: Vec<TargetId> = next.members.iter().filter(|m| m.public_state == P::LastServing).map(|m| m.target_id).collect();
                            prop_assert_eq!(last.len(), 1);
                            prop_assert!(served_before.contains(&last[0]));
                        }
                        // A last-serving target keeps its identity: while some exist, only they may
                        // become serving.
                        if chain.members.iter().any(|m| m.public_state == P::LastServing) {
                            for m in &next.members {
                                if m.public_state == P::Serving {
                                    prop_assert!(matches!(chain.public_state(m.target_id), Some(P::LastServing | P::Syncing)),
                                        "{:?} serves while others were last-serving: {:?}", m.target_id, chain);
                                }
                            }
                        }
                        // Safety: every serving target holds every committed write.
                        for m in &next.members {
                            if m.public_state == P::Serving {
                                prop_assert!(daemons[(m.target_id.0 - 1) as usize].complete,
                                    "{:?} serves without every committed write: {:?} -> {:?}", m.target_id, chain, next);
                            }
                        }
                        chain = next;
                    }
                    Action::Shutdown => {
                        let next = chain.shutdown();
                        prop_assert_eq!(next.check(), Ok(()));
                        prop_assert!(!next.members.iter().any(|m| m.public_state.takes_writes()));
                        chain = next;
                    }
                    Action::Observe(i) if i < n && daemons[i].alive => {
                        // A serving target claims up-to-date; one that mgmtd took out of
                        // serving/syncing must recover (report online, resync) first.
                        match chain.public_state(targets[i]) {
                            Some(P::Serving) => daemons[i].claims_up_to_date = true,
                            Some(P::Offline | P::Waiting | P::LastServing) => daemons[i].claims_up_to_date = false,
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        }

        /// Recompute is idempotent: applying the same local states twice changes nothing more.
        #[test]
        fn recompute_reaches_a_fixed_point(n in 1usize..=6, locals in prop::collection::vec(0u8..3, 6), publics in prop::collection::vec(0u8..5, 6)) {
            let targets = ids(n as u64);
            let mut chain = ChainState::new(ChainId(1), &targets).expect("valid chain");
            for (m, p) in chain.members.iter_mut().zip(&publics) {
                m.public_state = P::ALL[*p as usize];
            }
            let local = |t: TargetId| [L::UpToDate, L::Online, L::Offline][locals[(t.0 - 1) as usize] as usize];
            let once = chain.recompute(local);
            prop_assert_eq!(once.check(), Ok(()));
            let twice = once.recompute(local);
            prop_assert_eq!(&twice, &once);
        }
    }
}
