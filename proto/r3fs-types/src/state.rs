//! Target and node states, named as in the 3FS design.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A target's state as the cluster sees it; computed by mgmtd from local states (see
/// docs/design/chain-state.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PublicTargetState {
    /// Up to date; serves reads and takes part in writes.
    Serving,
    /// Receiving a resync from its predecessor; takes writes, serves no reads.
    Syncing,
    /// Online but waiting its turn to sync (one syncing target per chain).
    Waiting,
    /// Was the last serving target of its chain when it went offline: it holds the newest data and
    /// must be the first to serve again.
    LastServing,
    /// Not reachable.
    Offline,
}

impl PublicTargetState {
    /// Whether a client may read from a target in this state.
    pub fn serves_reads(self) -> bool {
        self == PublicTargetState::Serving
    }

    /// Whether writes flow through a target in this state.
    pub fn takes_writes(self) -> bool {
        matches!(self, PublicTargetState::Serving | PublicTargetState::Syncing)
    }
}

/// A target's state as its own storage daemon reports it in heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LocalTargetState {
    /// Holds every committed chunk of its chain.
    UpToDate,
    /// Running, but may miss updates (after a restart or while syncing).
    Online,
    /// Not running (set by mgmtd when heartbeats stop, or by the daemon on a disk error).
    Offline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeType {
    Mgmtd,
    Meta,
    Storage,
    Client,
}

/// A node's status as an operator sees it in `r3fs list-nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    PrimaryMgmtd,
    HeartbeatConnected,
    HeartbeatFailed,
    Disabled,
}

macro_rules! display_names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];

            /// The stable upper-case name used in CLI output and configs.
            pub fn name(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),* }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(name))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

display_names!(PublicTargetState {
    Serving => "SERVING",
    Syncing => "SYNCING",
    Waiting => "WAITING",
    LastServing => "LASTSRV",
    Offline => "OFFLINE",
});
display_names!(LocalTargetState { UpToDate => "UPTODATE", Online => "ONLINE", Offline => "OFFLINE" });
display_names!(NodeType { Mgmtd => "MGMTD", Meta => "META", Storage => "STORAGE", Client => "CLIENT" });
display_names!(NodeStatus {
    PrimaryMgmtd => "PRIMARY_MGMTD",
    HeartbeatConnected => "HEARTBEAT_CONNECTED",
    HeartbeatFailed => "HEARTBEAT_FAILED",
    Disabled => "DISABLED",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in PublicTargetState::ALL {
            assert_eq!(PublicTargetState::from_name(s.name()), Some(*s));
        }
        for s in NodeStatus::ALL {
            assert_eq!(NodeStatus::from_name(&s.name().to_lowercase()), Some(*s));
        }
        assert_eq!(LocalTargetState::from_name("nonsense"), None);
    }

    #[test]
    fn only_serving_targets_serve_reads() {
        let readers: Vec<_> = PublicTargetState::ALL.iter().filter(|s| s.serves_reads()).collect();
        assert_eq!(readers, vec![&PublicTargetState::Serving]);
    }
}
