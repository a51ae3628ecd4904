//! A chain as mgmtd publishes it, and one target's view of it (head, predecessor, successor).

use r3fs_types::{ChainId, ChainVersion, PublicTargetState, TargetId};

/// Upper bound on targets per chain: replication factors are small, and a bound keeps every
/// per-chain scan trivially cheap.
pub const CHAIN_TARGETS_MAX: usize = 16;

/// One target of a chain with its public state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTarget {
    pub target: TargetId,
    pub state: PublicTargetState,
}

/// A chain at one chain version: its targets in order. Writes flow through the targets whose state
/// takes writes (serving, syncing), in this order; mgmtd keeps serving targets first and moves
/// offline ones to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRouting {
    pub chain: ChainId,
    pub chain_version: ChainVersion,
    pub targets: Vec<ChainTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("chain {chain} has no targets")]
    Empty { chain: ChainId },
    #[error("chain {chain} has {count} targets, over the limit of {CHAIN_TARGETS_MAX}")]
    TooManyTargets { chain: ChainId, count: usize },
    #[error("chain {chain} lists target {target} twice")]
    DuplicateTarget { chain: ChainId, target: TargetId },
}

impl ChainRouting {
    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.targets.is_empty() {
            return Err(RoutingError::Empty { chain: self.chain });
        }
        if self.targets.len() > CHAIN_TARGETS_MAX {
            return Err(RoutingError::TooManyTargets {
                chain: self.chain,
                count: self.targets.len(),
            });
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|u| u.target == t.target) {
                return Err(RoutingError::DuplicateTarget { chain: self.chain, target: t.target });
            }
        }
        Ok(())
    }

    /// The targets writes flow through, head first.
    pub fn write_chain(&self) -> impl Iterator<Item = &ChainTarget> {
        self.targets.iter().filter(|t| t.state.takes_writes())
    }

    /// The target clients send writes to: the first target of the write chain, if it is serving.
    pub fn head(&self) -> Option<TargetId> {
        self.write_chain()
            .next()
            .filter(|t| t.state == PublicTargetState::Serving)
            .map(|t| t.target)
    }

    /// Targets that serve reads.
    pub fn readable(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.targets.iter().filter(|t| t.state.serves_reads()).map(|t| t.target)
    }

    pub fn state_of(&self, target: TargetId) -> Option<PublicTargetState> {
        self.targets.iter().find(|t| t.target == target).map(|t| t.state)
    }

    /// `target`'s place in the write chain.
    pub fn view_of(&self, target: TargetId) -> View {
        let write: Vec<&ChainTarget> = self.write_chain().collect();
        let position = write.iter().position(|t| t.target == target);
        let predecessor = position.and_then(|i| i.checked_sub(1)).map(|i| write[i].target);
        let successor = position.and_then(|i| write.get(i + 1)).map(|t| **t);
        View {
            chain_version: self.chain_version,
            state: self.state_of(target),
            position,
            predecessor,
            successor,
        }
    }
}

/// One target's place in a chain at one chain version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub chain_version: ChainVersion,
    /// `None` when the chain does not list the target at all.
    pub state: Option<PublicTargetState>,
    /// Index in the write chain; `None` when the target takes no writes.
    pub position: Option<usize>,
    pub predecessor: Option<TargetId>,
    pub successor: Option<ChainTarget>,
}

impl View {
    pub fn in_write_chain(&self) -> bool {
        self.position.is_some()
    }

    /// Head: first in the write chain and serving (a syncing head has incomplete data and
    /// must not order writes).
    pub fn is_head(&self) -> bool {
        self.position == Some(0) && self.state == Some(PublicTargetState::Serving)
    }

    pub fn is_tail(&self) -> bool {
        self.in_write_chain() && self.successor.is_none()
    }

    pub fn serves_reads(&self) -> bool {
        self.state.is_some_and(|s| s.serves_reads())
    }

    /// Mgmtd has declared the target dead: 3FS storage services exit in this case, since they
    /// may be cut off from the cluster and must not act on stale beliefs.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self.state,
            None | Some(PublicTargetState::Offline) | Some(PublicTargetState::LastServing)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PublicTargetState::*;

    fn chain(states: &[(u64, PublicTargetState)]) -> ChainRouting {
        ChainRouting {
            chain: ChainId(1),
            chain_version: ChainVersion(3),
            targets: states
                .iter()
                .map(|&(t, state)| ChainTarget { target: TargetId(t), state })
                .collect(),
        }
    }

    #[test]
    fn views_follow_the_write_chain() {
        let routing = chain(&[(1, Serving), (2, Serving), (3, Syncing), (4, Offline)]);
        assert!(routing.validate().is_ok());
        assert_eq!(routing.head(), Some(TargetId(1)));
        let head = routing.view_of(TargetId(1));
        assert!(head.is_head() && !head.is_tail());
        assert_eq!(head.successor.map(|t| t.target), Some(TargetId(2)));
        let middle = routing.view_of(TargetId(2));
        assert_eq!(middle.predecessor, Some(TargetId(1)));
        assert_eq!(middle.successor, Some(ChainTarget { target: TargetId(3), state: Syncing }));
        let tail = routing.view_of(TargetId(3));
        assert!(tail.is_tail() && !tail.serves_reads());
        let offline = routing.view_of(TargetId(4));
        assert!(!offline.in_write_chain() && offline.is_fenced());
        assert!(routing.view_of(TargetId(9)).is_fenced());
        assert_eq!(routing.readable().collect::<Vec<_>>(), vec![TargetId(1), TargetId(2)]);
    }

    #[test]
    fn a_syncing_head_takes_no_writes() {
        let routing = chain(&[(1, Syncing), (2, Offline)]);
        assert_eq!(routing.head(), None);
        assert!(!routing.view_of(TargetId(1)).is_head());
    }

    #[test]
    fn validation() {
        assert!(matches!(chain(&[]).validate(), Err(RoutingError::Empty { .. })));
        assert!(matches!(
            chain(&[(1, Serving), (1, Syncing)]).validate(),
            Err(RoutingError::DuplicateTarget { .. })
        ));
        let many: Vec<_> = (0..17).map(|t| (t, Serving)).collect();
        assert!(matches!(chain(&many).validate(), Err(RoutingError::TooManyTargets { .. })));
    }
}
