//! What a run and a sweep of runs report.

use crate::checker::Violation;
use std::fmt;

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Events processed in total (faulty phase plus healing).
    pub steps: u64,
    /// Events processed after faults stopped, until the cluster settled.
    pub heal_steps: u64,
    pub sim_time_ms: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_corrupted: u64,
    pub messages_delayed: u64,
    /// Messages lost to a partition or to a down node.
    pub messages_cut: u64,
    /// Storage ops in flight at a crash that landed anyway.
    pub torn_ops_landed: u64,
    pub torn_ops_lost: u64,
    pub chain_versions_published: u64,
    pub syncs_done: u64,
    pub replicas_fenced: u64,
    pub writes_issued: u64,
    /// Acknowledgements emitted by heads (retries answered again count again).
    pub acks_checked: u64,
    /// Writes whose acknowledgement reached the client.
    pub writes_acked: u64,
    /// Writes the client gave up on: their outcome is unknown (they may or may not commit).
    pub writes_abandoned: u64,
    /// Writes refused with a final error (nothing applied).
    pub writes_refused: u64,
    /// Reads answered to a client and checked (data or not found).
    pub reads_checked: u64,
    pub reads_abandoned: u64,
    pub versions_committed: u64,
    /// Client writes applied a second time after their chain lost its dedup memory in a restart
    /// (craq's documented at-most-once horizon).
    pub writes_reapplied: u64,
    /// Client requests a storage daemon refused because its heartbeat lease lapsed.
    pub requests_fenced: u64,
}

impl RunStats {
    pub fn faults_injected(&self) -> u64 {
        self.crashes
            + self.partitions
            + self.messages_dropped
            + self.messages_corrupted
            + self.messages_delayed
    }

    pub fn add(&mut self, other: &RunStats) {
        let RunStats {
            steps,
            heal_steps,
            sim_time_ms,
            crashes,
            restarts,
            partitions,
            messages_sent,
            messages_dropped,
            messages_corrupted,
            messages_delayed,
            messages_cut,
            torn_ops_landed,
            torn_ops_lost,
            chain_versions_published,
            syncs_done,
            replicas_fenced,
            writes_issued,
            acks_checked,
            writes_acked,
            writes_abandoned,
            writes_refused,
            reads_checked,
            reads_abandoned,
            versions_committed,
            writes_reapplied,
            requests_fenced,
        } = *other;
        self.steps += steps;
        self.heal_steps += heal_steps;
        self.sim_time_ms += sim_time_ms;
        self.crashes += crashes;
        self.restarts += restarts;
        self.partitions += partitions;
        self.messages_sent += messages_sent;
        self.messages_dropped += messages_dropped;
        self.messages_corrupted += messages_corrupted;
        self.messages_delayed += messages_delayed;
        self.messages_cut += messages_cut;
        self.torn_ops_landed += torn_ops_landed;
        self.torn_ops_lost += torn_ops_lost;
        self.chain_versions_published += chain_versions_published;
        self.syncs_done += syncs_done;
        self.replicas_fenced += replicas_fenced;
        self.writes_issued += writes_issued;
        self.acks_checked += acks_checked;
        self.writes_acked += writes_acked;
        self.writes_abandoned += writes_abandoned;
        self.writes_refused += writes_refused;
        self.reads_checked += reads_checked;
        self.reads_abandoned += reads_abandoned;
        self.versions_committed += versions_committed;
        self.writes_reapplied += writes_reapplied;
        self.requests_fenced += requests_fenced;
    }
}

impl fmt::Display for RunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "steps {} (healing {}), simulated {} ms; faults {} (crashes {}, partitions {}, \
             dropped {}, corrupted {}, delayed {}; torn ops landed {} lost {}); \
             chain versions {}, resyncs {}, fences {}; writes issued {}, acked {} \
             (acks checked {}), abandoned {}, refused {}; reads checked {} (abandoned {}); \
             versions committed {} (writes re-applied after a dedup loss {}); requests fenced {}",
            self.steps,
            self.heal_steps,
            self.sim_time_ms,
            self.faults_injected(),
            self.crashes,
            self.partitions,
            self.messages_dropped,
            self.messages_corrupted,
            self.messages_delayed,
            self.torn_ops_landed,
            self.torn_ops_lost,
            self.chain_versions_published,
            self.syncs_done,
            self.replicas_fenced,
            self.writes_issued,
            self.writes_acked,
            self.acks_checked,
            self.writes_abandoned,
            self.writes_refused,
            self.reads_checked,
            self.reads_abandoned,
            self.versions_committed,
            self.writes_reapplied,
            self.requests_fenced,
        )
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    pub seed: u64,
    pub stats: RunStats,
    /// The first failed check; `None` when every check passed and the cluster converged.
    pub violation: Option<Violation>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }
}

/// The outcome of many seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub seeds_run: u64,
    pub totals: RunStats,
    /// Failing runs in seed order.
    pub failures: Vec<RunReport>,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seeds run {}, failed {}; {}", self.seeds_run, self.failures.len(), self.totals)
    }
}
