//! What one simulated run looks like: cluster shape, timing, fault intensities, the storage
//! daemon's restart policy and an optional planted bug. Every bound is explicit; `validate`
//! reports every violation at once.

use std::fmt;

/// A deliberately wrong behaviour swapped in by the simulator's edge (never by the replica's code)
/// to show that the checks catch it. See docs/design/simulation.md, "Planted bugs".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// The head commits an update before its successor acknowledges it: the simulator hands the
    /// head a fabricated ack the moment it forwards the update.
    EarlyCommit,
    /// Replicas serve reads of chunks that have a pending version: the simulator hides the
    /// pending version from the metadata a read returns.
    ServePending,
    /// Resync transfers nothing: the simulator swallows every chunk transfer and fabricates the
    /// syncing target's ack.
    SkipResync,
    /// A restarted storage daemon rejoins its chains at once when mgmtd still lists its targets as
    /// serving (what engine/r3fs-storage does when its restart beats mgmtd's heartbeat timeout),
    /// instead of reporting them offline until mgmtd took them out.
    RejoinServing,
    /// A crash forgets every pending (staged) version, as engine/r3fs-chunk's contract said
    /// before its stage records. The CRAQ recovery rules need pending versions to survive: a
    /// head that comes back as the last serving target rolls them forward.
    ForgetStaged,
    /// A storage daemon cut off from mgmtd keeps serving reads at its old chain version (what
    /// engine/r3fs-storage does today: its heartbeat fence refuses only writes).
    UnleasedReads,
    /// Mgmtd trusts a target's up-to-date claim whatever chain version it was made at (what
    /// r3fs-mgmtd does today: heartbeats carry no chain version), so a delayed claim from an
    /// earlier resync can make a target serve that missed writes since.
    UnversionedClaims,
    /// A replica that was serving and receives a routing where it syncs keeps its work (what
    /// r3fs-craq did before 0320f9e: it fenced only on offline / last-serving). Such a jump means
    /// it missed the chain version that took it out, so its in-flight updates are stale. Planted
    /// at the edge: the daemon shows the replica its own state as still serving, so the replica
    /// acts as the tail it would have taken itself for.
    MissedOffline,
}

impl PlantedBug {
    pub const ALL: &'static [PlantedBug] = &[
        PlantedBug::EarlyCommit,
        PlantedBug::ServePending,
        PlantedBug::SkipResync,
        PlantedBug::RejoinServing,
        PlantedBug::ForgetStaged,
        PlantedBug::UnleasedReads,
        PlantedBug::UnversionedClaims,
        PlantedBug::MissedOffline,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::EarlyCommit => "early-commit",
            PlantedBug::ServePending => "serve-pending",
            PlantedBug::SkipResync => "skip-resync",
            PlantedBug::RejoinServing => "rejoin-serving",
            PlantedBug::ForgetStaged => "forget-staged",
            PlantedBug::UnleasedReads => "unleased-reads",
            PlantedBug::UnversionedClaims => "unversioned-claims",
            PlantedBug::MissedOffline => "missed-offline",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        Self::ALL.iter().copied().find(|b| b.name() == name)
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Simulated durations, all in simulated milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Replicas get a clock tick this often (drives their resends).
    pub tick_interval_ms: u64,
    /// The replicas' `forward_retry_interval_ms`.
    pub forward_retry_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Mgmtd takes a node's targets offline after this long without a heartbeat.
    pub heartbeat_timeout_ms: u64,
    /// Mgmtd's failure detector and chain recompute period.
    pub failure_check_interval_ms: u64,
    pub message_delay_ms_min: u64,
    pub message_delay_ms_max: u64,
    pub storage_delay_ms_min: u64,
    pub storage_delay_ms_max: u64,
    /// A client gives up on one attempt after this long and retries.
    pub client_timeout_ms: u64,
    pub client_backoff_ms_max: u64,
    /// Pause between a client's operations.
    pub client_think_ms_max: u64,
    /// A crashed node's supervisor restarts it after a delay in this range.
    pub restart_delay_ms_min: u64,
    pub restart_delay_ms_max: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            tick_interval_ms: 10,
            forward_retry_interval_ms: 40,
            heartbeat_interval_ms: 30,
            heartbeat_timeout_ms: 100,
            failure_check_interval_ms: 25,
            message_delay_ms_min: 1,
            message_delay_ms_max: 4,
            storage_delay_ms_min: 1,
            storage_delay_ms_max: 3,
            client_timeout_ms: 150,
            client_backoff_ms_max: 30,
            client_think_ms_max: 10,
            restart_delay_ms_min: 20,
            restart_delay_ms_max: 400,
        }
    }
}

/// Upper bounds of the fault intensities; each seed draws its own intensities below them, so a
/// sweep mixes calm and stormy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    pub enabled: bool,
    /// Messages lost.
    pub drop_per_mille_max: u32,
    /// Payload-carrying messages with one byte flipped (their checksums no longer match).
    pub corrupt_per_mille_max: u32,
    /// Messages held back by an extra delay, which reorders them behind later ones.
    pub delay_spike_per_mille_max: u32,
    pub delay_spike_ms_max: u64,
    /// Mean time between injected crashes / partitions (a seed may also draw "none").
    pub crash_interval_ms_min: u64,
    pub partition_interval_ms_min: u64,
    pub partition_duration_ms_max: u64,
    /// Nodes down at once (crashed, not yet restarted).
    pub nodes_down_max: usize,
    /// Let a delayed message be overtaken by later ones on the same link (a reconnect). Off by
    /// default: r3fs-craq assumes FIFO links, and the peer transport is one TCP connection per
    /// pair; across links, messages always interleave freely.
    pub reorder_within_links: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            drop_per_mille_max: 60,
            corrupt_per_mille_max: 10,
            delay_spike_per_mille_max: 60,
            delay_spike_ms_max: 80,
            crash_interval_ms_min: 150,
            partition_interval_ms_min: 150,
            partition_duration_ms_max: 400,
            nodes_down_max: 4,
            reorder_within_links: false,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    pub seed: u64,
    /// Events processed while the workload runs and faults are injected.
    pub steps: u64,
    /// Events allowed after faults stop for every chain to heal and converge; a run that does not
    /// converge within them fails (a liveness violation).
    pub heal_steps_max: u64,
    pub nodes: usize,
    pub chains: usize,
    /// Targets per chain, each on a different node.
    pub replicas: usize,
    pub chunks_per_chain: usize,
    pub clients: usize,
    pub chunk_size_bytes_max: u32,
    /// Largest payload of one client write.
    pub write_bytes_max: u32,
    /// Attempts of one client operation before the client gives up on it.
    pub client_attempts_max: u32,
    pub timing: Timing,
    pub faults: FaultConfig,
    pub plant_bug: Option<PlantedBug>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 2_000,
            heal_steps_max: 40_000,
            nodes: 4,
            chains: 2,
            replicas: 3,
            chunks_per_chain: 3,
            clients: 3,
            chunk_size_bytes_max: 96,
            write_bytes_max: 24,
            client_attempts_max: 40,
            timing: Timing::default(),
            faults: FaultConfig::default(),
            plant_bug: None,
        }
    }
}

/// Everything wrong with a [`SimConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulation config: {}", violations.join("; "))]
pub struct ConfigError {
    pub violations: Vec<String>,
}

/// Ids are small integers packed into target ids and chunk ids; these bounds keep them apart.
pub const NODES_MAX: usize = 64;
pub const CHAINS_MAX: usize = 64;
pub const CLIENTS_MAX: usize = 64;

impl SimConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut violations = Vec::new();
        let t = &self.timing;
        let f = &self.faults;
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                violations.push(format!("{name} must be positive"));
            }
        };
        positive("steps", self.steps);
        positive("heal_steps_max", self.heal_steps_max);
        positive("nodes", self.nodes as u64);
        positive("chains", self.chains as u64);
        positive("replicas", self.replicas as u64);
        positive("chunks_per_chain", self.chunks_per_chain as u64);
        positive("chunk_size_bytes_max", u64::from(self.chunk_size_bytes_max));
        positive("write_bytes_max", u64::from(self.write_bytes_max));
        positive("client_attempts_max", u64::from(self.client_attempts_max));
        positive("tick_interval_ms", t.tick_interval_ms);
        positive("forward_retry_interval_ms", t.forward_retry_interval_ms);
        positive("heartbeat_interval_ms", t.heartbeat_interval_ms);
        positive("failure_check_interval_ms", t.failure_check_interval_ms);
        positive("message_delay_ms_min", t.message_delay_ms_min);
        positive("storage_delay_ms_min", t.storage_delay_ms_min);
        positive("client_timeout_ms", t.client_timeout_ms);
        positive("client_backoff_ms_max", t.client_backoff_ms_max);
        positive("client_think_ms_max", t.client_think_ms_max);
        positive("restart_delay_ms_min", t.restart_delay_ms_min);
        if self.nodes > NODES_MAX {
            violations.push(format!("nodes ({}) must be at most {NODES_MAX}", self.nodes));
        }
        if self.chains > CHAINS_MAX {
            violations.push(format!("chains ({}) must be at most {CHAINS_MAX}", self.chains));
        }
        if self.clients > CLIENTS_MAX {
            violations.push(format!("clients ({}) must be at most {CLIENTS_MAX}", self.clients));
        }
        if self.replicas > self.nodes {
            violations.push(format!(
                "replicas ({}) must not exceed nodes ({}): a chain's targets sit on distinct nodes",
                self.replicas, self.nodes
            ));
        }
        if self.replicas > r3fs_craq::CHAIN_TARGETS_MAX {
            violations.push(format!(
                "replicas ({}) must be at most {}",
                self.replicas,
                r3fs_craq::CHAIN_TARGETS_MAX
            ));
        }
        if self.write_bytes_max > self.chunk_size_bytes_max {
            violations.push(format!(
                "write_bytes_max ({}) must not exceed chunk_size_bytes_max ({})",
                self.write_bytes_max, self.chunk_size_bytes_max
            ));
        }
        if t.heartbeat_timeout_ms < 2 * t.heartbeat_interval_ms {
            violations.push(format!(
                "heartbeat_timeout_ms ({}) must be at least 2 x heartbeat_interval_ms ({})",
                t.heartbeat_timeout_ms, t.heartbeat_interval_ms
            ));
        }
        if t.message_delay_ms_min > t.message_delay_ms_max {
            violations.push("message_delay_ms_min must not exceed message_delay_ms_max".into());
        }
        if t.storage_delay_ms_min > t.storage_delay_ms_max {
            violations.push("storage_delay_ms_min must not exceed storage_delay_ms_max".into());
        }
        if t.restart_delay_ms_min > t.restart_delay_ms_max {
            violations.push("restart_delay_ms_min must not exceed restart_delay_ms_max".into());
        }
        if t.client_timeout_ms <= 2 * t.message_delay_ms_max + t.storage_delay_ms_max {
            violations.push(format!(
                "client_timeout_ms ({}) must exceed a fault-free round trip (2 x {} + {} ms)",
                t.client_timeout_ms, t.message_delay_ms_max, t.storage_delay_ms_max
            ));
        }
        for (name, value) in [
            ("drop_per_mille_max", f.drop_per_mille_max),
            ("corrupt_per_mille_max", f.corrupt_per_mille_max),
            ("delay_spike_per_mille_max", f.delay_spike_per_mille_max),
        ] {
            if value > 1000 {
                violations.push(format!("{name} ({value}) must be at most 1000"));
            }
        }
        if f.enabled && f.crash_interval_ms_min == 0 {
            violations.push("crash_interval_ms_min must be positive".into());
        }
        if f.enabled && f.partition_interval_ms_min == 0 {
            violations.push("partition_interval_ms_min must be positive".into());
        }
        if violations.is_empty() { Ok(()) } else { Err(ConfigError { violations }) }
    }

    /// The replica configuration every simulated target runs: the production defaults with small
    /// bounds, so that queues fill, pages turn and resends happen within a short run.
    pub fn replica_config(&self) -> r3fs_craq::ReplicaConfig {
        r3fs_craq::ReplicaConfig {
            chunk_size_bytes_max: self.chunk_size_bytes_max,
            chunks_active_max: 64,
            chunk_queue_len_max: 8,
            held_payload_bytes_max: 64 << 10,
            replies_per_update_max: 4,
            reads_inflight_max: 64,
            forward_retry_interval_ms: self.timing.forward_retry_interval_ms,
            dedup_entries_max: 64,
            list_page_len: 2,
            resync_remote_metas_max: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_violation_is_reported() {
        let config = SimConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.replica_config().validate().is_ok());
        let bad = SimConfig {
            steps: 0,
            replicas: 5,
            nodes: 4,
            write_bytes_max: 1000,
            timing: Timing { heartbeat_timeout_ms: 10, ..Timing::default() },
            ..SimConfig::default()
        };
        let err = bad.validate().expect_err("invalid");
        assert_eq!(err.violations.len(), 4, "{err}");
    }

    #[test]
    fn bug_names_round_trip() {
        for bug in PlantedBug::ALL {
            assert_eq!(PlantedBug::from_name(bug.name()), Some(*bug));
        }
        assert_eq!(PlantedBug::from_name("none"), None);
    }
}
