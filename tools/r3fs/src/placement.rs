//! Chain-table placement: which targets form each replication chain.
//!
//! Given storage nodes, disks per node, targets per disk and a replication factor `k`,
//! [`generate`] builds chains of `k` targets such that:
//!
//! 1. every target (node, disk, slot) is in exactly one chain;
//! 2. a chain's replicas sit on `k` distinct nodes, all on the same disk index (as in 3FS, so the
//!    targets of one disk index form an independent "plane" and every disk carries equal load);
//! 3. every pair of nodes shares about the same number of chains, so when a node fails its
//!    chains' surviving replicas, and with them the recovery traffic, spread evenly over the
//!    other nodes. Pairs of disks on one disk index are balanced as a secondary goal (a single
//!    disk failure).
//!
//! The construction is deterministic (no RNG): a greedy pass fills each disk index's chains one
//! by one, always taking the nodes that must be taken for the rest to stay feasible and otherwise
//! the nodes that have shared the fewest chains with those already chosen; then a local search
//! swaps nodes between two chains of the same disk index while that lowers the sum of
//! `(pair count - mean)^4` (lowest when the counts are equal, and steep against outliers on
//! either side). See docs/design/placement.md, which also states the balance bound the property
//! tests check.
//!
//! Id scheme (documented for operators, checked by [`Placement::verify`]):
//! `target id = node id * 1_000_000 + disk index * 1_000 + slot` and
//! `chain id = (disk index + 1) * 100_000 + chain number within that disk index (1-based)`.

use r3fs_types::{ChainId, NodeId, TargetId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Most storage nodes one placement may cover (bounds the node-pair matrix and the greedy's cost).
pub const NODES_MAX: usize = 1_000;
/// Disk indexes must fit the 3 decimal digits the target id reserves for them.
pub const DISKS_PER_NODE_MAX: u32 = 999;
/// Slots must fit the 3 decimal digits the target id reserves for them.
pub const TARGETS_PER_DISK_MAX: u32 = 999;
/// Chain numbers within a disk index must fit the 5 decimal digits the chain id reserves.
pub const CHAINS_PER_DISK_MAX: u64 = 99_999;
/// Most targets in one placement (bounds memory and run time).
pub const TARGETS_TOTAL_MAX: u64 = 1_000_000;
/// Work bound of the local search: swap candidates evaluated, over all passes. Deterministic (a
/// count, not a clock), so the same input always gives the same chains.
pub const SWAP_EVALUATIONS_MAX: u64 = 20_000_000;
/// Full passes of the local search at most (it stops earlier once a pass improves nothing).
pub const LOCAL_SEARCH_PASSES_MAX: u32 = 64;

pub const TARGET_ID_NODE_FACTOR: u64 = 1_000_000;
pub const TARGET_ID_DISK_FACTOR: u64 = 1_000;
pub const CHAIN_ID_DISK_FACTOR: u32 = 100_000;

const _: () = assert!(TARGETS_PER_DISK_MAX as u64 <= TARGET_ID_DISK_FACTOR);
const _: () = assert!(
    (DISKS_PER_NODE_MAX as u64) * TARGET_ID_DISK_FACTOR + TARGET_ID_DISK_FACTOR
        <= TARGET_ID_NODE_FACTOR
);
const _: () = assert!(CHAINS_PER_DISK_MAX < CHAIN_ID_DISK_FACTOR as u64);
// The largest chain id fits a u32.
const _: () = assert!(
    (DISKS_PER_NODE_MAX as u64 + 1) * CHAIN_ID_DISK_FACTOR as u64 + CHAINS_PER_DISK_MAX
        <= u32::MAX as u64
);

/// Target id of slot `slot` of disk `disk_index` of `node`.
pub fn target_id(node: NodeId, disk_index: u32, slot: u32) -> TargetId {
    TargetId(
        u64::from(node.0) * TARGET_ID_NODE_FACTOR
            + u64::from(disk_index) * TARGET_ID_DISK_FACTOR
            + u64::from(slot),
    )
}

/// Chain id of the `number`-th (0-based) chain of disk index `disk_index`.
pub fn chain_id(disk_index: u32, number: u32) -> ChainId {
    ChainId((disk_index + 1) * CHAIN_ID_DISK_FACTOR + number + 1)
}

/// What to place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlacementSpec {
    /// Storage node ids, distinct and non-zero. Order does not matter (the result is the same for
    /// any order: nodes are sorted first).
    pub nodes: Vec<NodeId>,
    pub disks_per_node: u32,
    pub targets_per_disk: u32,
    /// Replicas per chain (`k`).
    pub replication: u32,
}

/// One reason a [`PlacementSpec`] cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecViolation {
    #[error("no storage nodes given")]
    NoNodes,
    #[error("{0} storage nodes exceed the limit of {NODES_MAX}")]
    TooManyNodes(usize),
    #[error("node id 0 is reserved")]
    ZeroNodeId,
    #[error("node id {0} appears twice")]
    DuplicateNode(NodeId),
    #[error("disks per node must be between 1 and {DISKS_PER_NODE_MAX}, got {0}")]
    DisksPerNode(u32),
    #[error("targets per disk must be between 1 and {TARGETS_PER_DISK_MAX}, got {0}")]
    TargetsPerDisk(u32),
    #[error("replication factor must be at least 1, got {0}")]
    ReplicationZero(u32),
    #[error(
        "replication factor {replication} needs at least {replication} storage nodes (replicas sit on distinct nodes), got {nodes}"
    )]
    TooFewNodes { replication: u32, nodes: usize },
    #[error(
        "{nodes} nodes x {targets_per_disk} targets per disk = {slots} targets per disk index is not a multiple of the replication factor {replication}, so some targets would be left out; use {suggestion} targets per disk (or --min-targets-per-disk)"
    )]
    NotDivisible {
        nodes: usize,
        targets_per_disk: u32,
        slots: u64,
        replication: u32,
        suggestion: String,
    },
    #[error(
        "{0} chains per disk index exceed the limit of {CHAINS_PER_DISK_MAX} of the chain id scheme"
    )]
    TooManyChains(u64),
    #[error("{0} targets in total exceed the limit of {TARGETS_TOTAL_MAX}")]
    TooManyTargets(u64),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Every violation found, not just the first.
    #[error("invalid placement request: {}", join(.0))]
    Invalid(Vec<SpecViolation>),
    #[error(
        "no targets-per-disk value in {min}..={TARGETS_PER_DISK_MAX} fits {nodes} nodes, {disks_per_node} disks per node and replication {replication}"
    )]
    NoTargetsPerDisk { min: u32, nodes: usize, disks_per_node: u32, replication: u32 },
}

fn join(violations: &[SpecViolation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The smallest targets-per-disk `r >= min` that uses every target (`nodes * r` divisible by
/// `replication`) and gives every node enough peer slots to share chains with every other node
/// (`disks * r * (replication - 1) >= nodes - 1`), as 3FS's MIN_TARGETS_PER_DISK does.
pub fn targets_per_disk_for(
    nodes: usize,
    disks_per_node: u32,
    replication: u32,
    min: u32,
) -> Result<u32, PlacementError> {
    let fits = |r: u32| {
        let k = u64::from(replication.max(1));
        let slots = nodes as u64 * u64::from(r);
        let peer_slots = u64::from(disks_per_node) * u64::from(r) * (k - 1);
        slots.is_multiple_of(k) && (k == 1 || peer_slots >= (nodes as u64).saturating_sub(1))
    };
    (min.max(1)..=TARGETS_PER_DISK_MAX).find(|&r| fits(r)).ok_or(PlacementError::NoTargetsPerDisk {
        min,
        nodes,
        disks_per_node,
        replication,
    })
}

impl PlacementSpec {
    /// Every reason this spec cannot be placed, at once.
    pub fn validate(&self) -> Result<(), PlacementError> {
        let mut violations = Vec::new();
        let v = self.nodes.len();
        if v == 0 {
            violations.push(SpecViolation::NoNodes);
        }
        if v > NODES_MAX {
            violations.push(SpecViolation::TooManyNodes(v));
        }
        if self.nodes.contains(&NodeId(0)) {
            violations.push(SpecViolation::ZeroNodeId);
        }
        let mut sorted = self.nodes.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] && !violations.contains(&SpecViolation::DuplicateNode(pair[0])) {
                violations.push(SpecViolation::DuplicateNode(pair[0]));
            }
        }
        if !(1..=DISKS_PER_NODE_MAX).contains(&self.disks_per_node) {
            violations.push(SpecViolation::DisksPerNode(self.disks_per_node));
        }
        if !(1..=TARGETS_PER_DISK_MAX).contains(&self.targets_per_disk) {
            violations.push(SpecViolation::TargetsPerDisk(self.targets_per_disk));
        }
        let k = self.replication;
        if k == 0 {
            violations.push(SpecViolation::ReplicationZero(k));
        } else if v > 0 && (k as usize) > v {
            violations.push(SpecViolation::TooFewNodes { replication: k, nodes: v });
        }
        let slots = v as u64 * u64::from(self.targets_per_disk);
        if k > 0 && v > 0 && self.targets_per_disk > 0 && !slots.is_multiple_of(u64::from(k)) {
            let suggestion = match targets_per_disk_for(v, 1, k, self.targets_per_disk) {
                Ok(r) => r.to_string(),
                Err(_) => "another number of".to_string(),
            };
            violations.push(SpecViolation::NotDivisible {
                nodes: v,
                targets_per_disk: self.targets_per_disk,
                slots,
                replication: k,
                suggestion,
            });
        }
        if k > 0 {
            let chains_per_disk = slots / u64::from(k);
            if chains_per_disk > CHAINS_PER_DISK_MAX {
                violations.push(SpecViolation::TooManyChains(chains_per_disk));
            }
        }
        let total = slots * u64::from(self.disks_per_node);
        if total > TARGETS_TOTAL_MAX {
            violations.push(SpecViolation::TooManyTargets(total));
        }
        if violations.is_empty() { Ok(()) } else { Err(PlacementError::Invalid(violations)) }
    }

    pub fn chains_per_disk(&self) -> u32 {
        // validate() bounds this by CHAINS_PER_DISK_MAX.
        (self.nodes.len() as u64 * u64::from(self.targets_per_disk) / u64::from(self.replication))
            as u32
    }
}

/// A target of the placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PlacedTarget {
    pub target_id: TargetId,
    pub node_id: NodeId,
    pub disk_index: u32,
    pub chain_id: ChainId,
}

/// A chain of the placement; `targets[0]` is the head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlacedChain {
    pub chain_id: ChainId,
    pub disk_index: u32,
    pub targets: Vec<TargetId>,
}

/// How the local search ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SearchStats {
    /// Greedy starts tried (see [`STARTS_MAX`]); the other counts sum over them.
    pub starts: u32,
    pub passes: u32,
    pub swaps: u64,
    pub evaluations: u64,
    /// Whether the kept start's last pass found no improving swap (a local optimum), rather than
    /// running out of passes or evaluations.
    pub converged: bool,
}

/// The result of [`generate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub spec: PlacementSpec,
    /// Sorted by chain id.
    pub chains: Vec<PlacedChain>,
    /// Sorted by target id.
    pub targets: Vec<PlacedTarget>,
    /// Chain table order: chain `i` of every disk index, then chain `i + 1`, ..., so consecutive
    /// table positions fall on different disks.
    pub table: Vec<ChainId>,
    pub search: SearchStats,
}

/// Builds the chains for `spec` (deterministic: the same spec always gives the same chains).
pub fn generate(spec: &PlacementSpec) -> Result<Placement, PlacementError> {
    spec.validate()?;
    let mut nodes = spec.nodes.clone();
    nodes.sort();
    let v = nodes.len();
    let k = spec.replication as usize;
    let disks = spec.disks_per_node;
    let r = spec.targets_per_disk;
    let b = spec.chains_per_disk() as usize;

    // planes[d][c]: node indexes (into `nodes`) of chain c of disk index d, sorted. Several
    // starts differ only in how the greedy breaks ties; the best result is kept. Later starts run
    // only while half the work bound is unspent, so large placements get one thorough start.
    let shape = Shape { v, k, r, b, disks: disks as usize };
    let mut best: Option<(Score, Vec<Vec<Vec<u32>>>)> = None;
    let mut search =
        SearchStats { starts: 0, passes: 0, swaps: 0, evaluations: 0, converged: false };
    let starts = if k > 1 && k < v { STARTS_MAX } else { 1 };
    let pair_slots = u64::from(disks) * u64::from(r) * (k as u64).saturating_sub(1);
    let peers = (v as u64).saturating_sub(1).max(1);
    let ideal_max = pair_slots.div_ceil(peers) as u32;
    let ideal_min = (pair_slots / peers) as u32;
    for start in 0..starts {
        if start > 0 && search.evaluations >= SWAP_EVALUATIONS_MAX / 2 {
            break;
        }
        let (planes, score, stats) =
            build_start(&shape, start, SWAP_EVALUATIONS_MAX - search.evaluations);
        search.starts += 1;
        search.passes += stats.passes;
        search.swaps += stats.swaps;
        search.evaluations += stats.evaluations;
        let ideal = score.0 <= ideal_max && score.1.0 >= ideal_min;
        if best.as_ref().is_none_or(|(best_score, _)| score < *best_score) {
            search.converged = stats.converged;
            best = Some((score, planes));
        }
        if ideal {
            // Every pair within [floor(mean), ceil(mean)]: no start can do better.
            break;
        }
    }
    let (_, planes) = best.expect("at least one start ran");

    let ordered_planes = order_members(&planes, v, k);

    // Give each (node, disk) its slots in chain-id order.
    let mut next_slot = vec![vec![0u32; v]; disks as usize];
    let mut chains = Vec::with_capacity(b * disks as usize);
    let mut targets = Vec::with_capacity(b * k * disks as usize);
    for (d, plane) in ordered_planes.into_iter().enumerate() {
        let disk_index = d as u32;
        for (c, ordered) in plane.into_iter().enumerate() {
            let id = chain_id(disk_index, c as u32);
            let mut chain_targets = Vec::with_capacity(k);
            for node in ordered {
                let slot = &mut next_slot[d][node as usize];
                let target = target_id(nodes[node as usize], disk_index, *slot);
                *slot += 1;
                chain_targets.push(target);
                targets.push(PlacedTarget {
                    target_id: target,
                    node_id: nodes[node as usize],
                    disk_index,
                    chain_id: id,
                });
            }
            chains.push(PlacedChain { chain_id: id, disk_index, targets: chain_targets });
        }
    }
    chains.sort_by_key(|c| c.chain_id);
    targets.sort();
    let table = (0..b as u32).flat_map(|c| (0..disks).map(move |d| chain_id(d, c))).collect();
    let placement = Placement { spec: spec.clone(), chains, targets, table, search };
    if let Err(problems) = placement.verify() {
        // The construction guarantees these; a failure here is a bug, not bad input.
        panic!("placement violates its invariants: {}", problems.join("; "));
    }
    Ok(placement)
}

/// Starts of greedy plus local search, each breaking the greedy's ties differently.
pub const STARTS_MAX: u32 = 8;

/// Dimensions of one placement run.
#[derive(Debug, Clone, Copy)]
struct Shape {
    v: usize,
    k: usize,
    r: u32,
    b: usize,
    disks: usize,
}

/// How good a start's result is; lower is better: the largest node-pair count, then the smallest
/// (negated), then the objective of the local search.
type Score = (u32, std::cmp::Reverse<u32>, i128, i128);

/// One start: the greedy with tie-break variant `start`, then the local search within
/// `evaluations_max`.
fn build_start(
    shape: &Shape,
    start: u32,
    evaluations_max: u64,
) -> (Vec<Vec<Vec<u32>>>, Score, SearchStats) {
    let Shape { v, k, r, b, disks } = *shape;
    let peer_slots_per_disk = u64::from(r) * (k as u64 - 1);
    let mut pairs = PairMatrix::new(v, peer_slots_per_disk * disks as u64);
    let mut disk_pairs = PairMatrix::new(v, peer_slots_per_disk);
    let mut planes = Vec::with_capacity(disks);
    for d in 0..disks {
        let plane = greedy_plane(shape, start, d * b, &mut pairs, &mut disk_pairs);
        clear_plane(&mut disk_pairs, &plane);
        planes.push(plane);
    }
    // With one replica there are no pairs, and with k = v every chain holds every node: nothing
    // to improve either way.
    let stats = if k > 1 && k < v {
        local_search(&mut planes, &mut pairs, &mut disk_pairs, evaluations_max)
    } else {
        SearchStats { starts: 1, passes: 0, swaps: 0, evaluations: 0, converged: true }
    };
    let mut disk_cost = 0;
    for plane in &planes {
        for chain in plane {
            disk_pairs.add_chain(chain, 1);
        }
        disk_cost += disk_pairs.total_cost();
        clear_plane(&mut disk_pairs, plane);
    }
    let score = (pairs.max(), std::cmp::Reverse(pairs.min()), pairs.total_cost(), disk_cost);
    (planes, score, stats)
}

/// Orders each chain's members (head first) so that every node holds about the same number of
/// chains at each position, the head above all (the head takes a chain's writes). A greedy pass
/// fills positions chain by chain with the member least used at that position; then, while some
/// chain's head has headed at least two chains more than another member of that chain, the two
/// trade places (each trade lowers the sum of squared head counts, so this ends).
fn order_members(planes: &[Vec<Vec<u32>>], v: usize, k: usize) -> Vec<Vec<Vec<u32>>> {
    let mut position_counts = vec![vec![0u32; v]; k];
    let mut ordered_planes: Vec<Vec<Vec<u32>>> = planes
        .iter()
        .map(|plane| {
            plane
                .iter()
                .map(|members| {
                    let mut left = members.clone();
                    let mut ordered = Vec::with_capacity(k);
                    for counts in position_counts.iter_mut() {
                        let pick = (0..left.len())
                            .min_by_key(|&i| (counts[left[i] as usize], left[i]))
                            .expect("a chain has as many members as positions");
                        let node = left.remove(pick);
                        counts[node as usize] += 1;
                        ordered.push(node);
                    }
                    ordered
                })
                .collect()
        })
        .collect();
    let heads = &mut position_counts[0];
    loop {
        let mut traded = false;
        for chain in ordered_planes.iter_mut().flatten() {
            let head = chain[0] as usize;
            let best = (1..chain.len()).min_by_key(|&i| (heads[chain[i] as usize], i));
            if let Some(i) = best
                && heads[chain[i] as usize] + 2 <= heads[head]
            {
                heads[head] -= 1;
                heads[chain[i] as usize] += 1;
                chain.swap(0, i);
                traded = true;
            }
        }
        if !traded {
            break;
        }
    }
    ordered_planes
}

/// Symmetric v x v counts of chains shared by two nodes.
///
/// It also scores counts for the local search: a pair counted `p` times costs `(p - mean)^4`
/// (scaled by `(v - 1)^4` to stay in integers). The cost is steep on both sides of the mean,
/// so the search pulls down the largest counts and lifts the smallest, which is what the
/// max/mean and min of the balance report measure (a plain sum of squares, flat near the mean,
/// left some pairs of few-chain planes far from it).
#[derive(Debug)]
struct PairMatrix {
    v: usize,
    counts: Vec<u32>,
    /// `up_cost[p]`: cost(p + 1) - cost(p).
    up_cost: Vec<i128>,
    /// `v - 1` (at least 1) and the (chain, peer) slots per node: mean pair count = slots / peers.
    peers: u64,
    pair_slots_per_node: u64,
}

impl PairMatrix {
    /// `pair_slots_per_node` is how many (chain, peer) slots each node has in total; spread over
    /// `v - 1` peers it gives the mean pair count, and no pair can count more than it.
    fn new(v: usize, pair_slots_per_node: u64) -> Self {
        // (v - 1) * (p - mean) is an exact integer; at most 1e3 * 1e6 here, so its 4th power fits
        // an i128.
        let peers = i128::from((v as u64).saturating_sub(1).max(1) as u32);
        let slots = i128::from(pair_slots_per_node);
        let cost = |p: i128| {
            let q = peers * p - slots;
            q * q * q * q
        };
        // validate() bounds pair_slots_per_node by TARGETS_TOTAL_MAX * (k - 1) / v; the table
        // costs 16 bytes per possible count.
        let up_cost = (0..=pair_slots_per_node as i128).map(|p| cost(p + 1) - cost(p)).collect();
        Self { v, counts: vec![0; v * v], up_cost, peers: peers as u64, pair_slots_per_node }
    }

    /// Largest and smallest count over distinct pairs.
    fn max(&self) -> u32 {
        self.off_diagonal().max().unwrap_or(0)
    }

    fn min(&self) -> u32 {
        self.off_diagonal().min().unwrap_or(0)
    }

    fn off_diagonal(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.v).flat_map(move |a| (a + 1..self.v).map(move |b| self.counts[a * self.v + b]))
    }

    /// The objective: the summed cost of every pair's count.
    fn total_cost(&self) -> i128 {
        self.off_diagonal().map(|p| (0..p as usize).map(|q| self.up_cost[q]).sum::<i128>()).sum()
    }

    /// Whether some pair of `members` is counted at least one above the mean.
    fn is_hot(&self, members: &[u32]) -> bool {
        members.iter().enumerate().any(|(i, &a)| {
            members[i + 1..].iter().any(|&b| {
                let count = u64::from(self.get(a, b));
                count >= 1 && (count - 1) * self.peers >= self.pair_slots_per_node
            })
        })
    }

    /// Change of the cost of a pair counted `count` times when it gains (`up`) or loses one.
    fn step_cost(&self, count: u32, up: bool) -> i128 {
        let count = count as usize;
        if up { self.up_cost[count] } else { -self.up_cost[count - 1] }
    }

    fn get(&self, a: u32, b: u32) -> u32 {
        self.counts[a as usize * self.v + b as usize]
    }

    fn bump(&mut self, a: u32, b: u32, delta: i32) {
        for (x, y) in [(a, b), (b, a)] {
            let cell = &mut self.counts[x as usize * self.v + y as usize];
            *cell = cell.checked_add_signed(delta).expect("pair counts never go negative");
        }
    }

    fn add_chain(&mut self, members: &[u32], delta: i32) {
        for (i, &a) in members.iter().enumerate() {
            for &b in &members[i + 1..] {
                self.bump(a, b, delta);
            }
        }
    }
}

fn clear_plane(disk_pairs: &mut PairMatrix, plane: &[Vec<u32>]) {
    for chain in plane {
        disk_pairs.add_chain(chain, -1);
    }
}

/// Fills the `b` chains of one disk index, adding them to `pairs` and `disk_pairs` as it goes (on
/// return `disk_pairs` holds this plane's pair counts).
///
/// Feasibility: with `left` chains still to fill and remaining capacities `cap` (sum `k * left`),
/// a completion with distinct nodes per chain exists iff every `cap[i] <= left`. Taking every
/// node with `cap[i] == left` into the current chain (there are at most `k` of them, since the
/// capacities sum to `k * left`) keeps that true for the next chain, so the greedy never gets
/// stuck.
fn greedy_plane(
    shape: &Shape,
    start: u32,
    first_chain: usize,
    pairs: &mut PairMatrix,
    disk_pairs: &mut PairMatrix,
) -> Vec<Vec<u32>> {
    let Shape { v, k, r, b, .. } = *shape;
    let mut cap = vec![r; v];
    let mut plane = Vec::with_capacity(b);
    for c in 0..b {
        let left = (b - c) as u32;
        let mut chosen: Vec<u32> = (0..v as u32).filter(|&i| cap[i as usize] == left).collect();
        assert!(chosen.len() <= k, "greedy placement lost feasibility");
        while chosen.len() < k {
            // Only nodes within one of the largest remaining capacity compete: otherwise the
            // capacities drift apart over a plane and its last chains are forced onto the few
            // nodes left with room, which then share chain after chain.
            let open = |i: u32| cap[i as usize] > 0 && !chosen.contains(&i);
            let cap_max = (0..v as u32).filter(|&i| open(i)).map(|i| cap[i as usize]).max();
            let cap_floor = cap_max.expect("at least k nodes have capacity left").max(2) - 1;
            // Rotate ties by the global chain number so equal nodes take turns rather than the
            // lowest index always winning.
            // Each start walks the nodes with another stride.
            let stride = 2 * start as usize + 1;
            let turn = ((first_chain + c) * stride + start as usize) % v;
            let pick = (0..v as u32)
                .filter(|&i| open(i) && cap[i as usize] >= cap_floor)
                .min_by_key(|&i| {
                    let shared: u32 = chosen.iter().map(|&j| pairs.get(i, j)).sum();
                    let disk_shared: u32 = chosen.iter().map(|&j| disk_pairs.get(i, j)).sum();
                    let rotated = (i as usize + v - turn) % v;
                    (shared, disk_shared, std::cmp::Reverse(cap[i as usize]), rotated)
                })
                .expect("at least k nodes have capacity left");
            chosen.push(pick);
        }
        for &i in &chosen {
            cap[i as usize] -= 1;
        }
        chosen.sort_unstable();
        pairs.add_chain(&chosen, 1);
        disk_pairs.add_chain(&chosen, 1);
        plane.push(chosen);
    }
    assert!(cap.iter().all(|&c| c == 0), "every slot of the plane is used");
    plane
}

/// Change of the objective if `x` in chain `a` and `y` in chain `b` trade places. Elements
/// common to both chains keep their pairs (one lost, one gained), so only the members unique to
/// each side count; all the touched pairs are distinct.
fn swap_delta(m: &PairMatrix, a: &[u32], b: &[u32], x: u32, y: u32) -> i128 {
    let mut total = 0;
    for &p in a.iter().filter(|&&p| p != x && !b.contains(&p)) {
        total += m.step_cost(m.get(x, p), false) + m.step_cost(m.get(y, p), true);
    }
    for &q in b.iter().filter(|&&q| q != y && !a.contains(&q)) {
        total += m.step_cost(m.get(y, q), false) + m.step_cost(m.get(x, q), true);
    }
    total
}

/// First-improvement local search over swaps of one node between two chains of the same disk
/// index (which keeps every node's slot count per disk). Objective, lexicographic: the summed
/// cost of node-pair counts, then that of same-disk pair counts (see [`PairMatrix`]).
///
/// Two phases share one work bound. Focused passes pair only "hot" chains (holding a pair counted
/// at least one above its mean) with every other chain of their plane: cheap, and aimed at the
/// maximum the report measures, so large placements get most of the gain early. Then full passes
/// try every pair of chains until a pass improves nothing (a true local optimum) or the bound is
/// reached.
fn local_search(
    planes: &mut [Vec<Vec<u32>>],
    pairs: &mut PairMatrix,
    disk_pairs: &mut PairMatrix,
    evaluations_max: u64,
) -> SearchStats {
    let mut stats =
        SearchStats { starts: 1, passes: 0, swaps: 0, evaluations: 0, converged: false };
    for focused in [true, false] {
        while stats.passes < LOCAL_SEARCH_PASSES_MAX && stats.evaluations < evaluations_max {
            stats.passes += 1;
            let mut improved = false;
            for plane in planes.iter_mut() {
                for chain in plane.iter() {
                    disk_pairs.add_chain(chain, 1);
                }
                for i in 0..plane.len() {
                    if focused && !(pairs.is_hot(&plane[i]) || disk_pairs.is_hot(&plane[i])) {
                        continue;
                    }
                    let first = if focused { 0 } else { i + 1 };
                    for j in first..plane.len() {
                        if stats.evaluations >= evaluations_max {
                            break;
                        }
                        if j != i && try_swap(plane, i, j, pairs, disk_pairs, &mut stats) {
                            improved = true;
                        }
                    }
                }
                clear_plane(disk_pairs, plane);
            }
            if !improved {
                stats.converged = !focused && stats.evaluations < evaluations_max;
                break;
            }
        }
    }
    stats
}

/// Applies the best improving swap between chains `i` and `j`, if any.
fn try_swap(
    plane: &mut [Vec<u32>],
    i: usize,
    j: usize,
    pairs: &mut PairMatrix,
    disk_pairs: &mut PairMatrix,
    stats: &mut SearchStats,
) -> bool {
    let (a, b) = (&plane[i], &plane[j]);
    let mut best: Option<((i128, i128), u32, u32)> = None;
    for &x in a.iter().filter(|x| !b.contains(x)) {
        for &y in b.iter().filter(|y| !a.contains(y)) {
            stats.evaluations += 1;
            let node_delta = swap_delta(pairs, a, b, x, y);
            // The disk-pair term only breaks ties, so skip it when the node term already loses.
            if node_delta > 0 || best.is_some_and(|((n, _), _, _)| node_delta > n) {
                continue;
            }
            let delta = (node_delta, swap_delta(disk_pairs, a, b, x, y));
            if delta < (0, 0) && best.is_none_or(|(d, _, _)| delta < d) {
                best = Some((delta, x, y));
            }
        }
    }
    let Some((_, x, y)) = best else { return false };
    for m in [&mut *pairs, &mut *disk_pairs] {
        m.add_chain(&plane[i], -1);
        m.add_chain(&plane[j], -1);
    }
    for member in plane[i].iter_mut().filter(|m| **m == x) {
        *member = y;
    }
    for member in plane[j].iter_mut().filter(|m| **m == y) {
        *member = x;
    }
    plane[i].sort_unstable();
    plane[j].sort_unstable();
    for m in [&mut *pairs, &mut *disk_pairs] {
        m.add_chain(&plane[i], 1);
        m.add_chain(&plane[j], 1);
    }
    stats.swaps += 1;
    true
}

impl Placement {
    /// Checks every structural invariant from the chains and targets themselves (not from the
    /// generator's bookkeeping): ids follow the scheme, each chain has `k` targets on distinct
    /// nodes of one disk index, every (node, disk, slot) is used by exactly one chain, and the
    /// chain table lists every chain once. Returns every problem found.
    pub fn verify(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let spec = &self.spec;
        let by_id: BTreeMap<TargetId, &PlacedTarget> =
            self.targets.iter().map(|t| (t.target_id, t)).collect();
        if by_id.len() != self.targets.len() {
            problems.push("a target id appears twice in the targets list".to_string());
        }
        let expected_targets =
            spec.nodes.len() * spec.disks_per_node as usize * spec.targets_per_disk as usize;
        if self.targets.len() != expected_targets {
            problems.push(format!("{} targets, expected {expected_targets}", self.targets.len()));
        }
        for node in &spec.nodes {
            for disk in 0..spec.disks_per_node {
                for slot in 0..spec.targets_per_disk {
                    let id = target_id(*node, disk, slot);
                    match by_id.get(&id) {
                        None => problems.push(format!("target {id} ({node} disk {disk}) unused")),
                        Some(t) if t.node_id != *node || t.disk_index != disk => problems.push(
                            format!("target {id} is listed on {} disk {}", t.node_id, t.disk_index),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
        let mut in_chains: BTreeMap<TargetId, ChainId> = BTreeMap::new();
        for chain in &self.chains {
            if chain.targets.len() != spec.replication as usize {
                problems.push(format!(
                    "chain {} has {} targets, expected {}",
                    chain.chain_id,
                    chain.targets.len(),
                    spec.replication
                ));
            }
            let mut nodes_seen = Vec::new();
            for target in &chain.targets {
                if let Some(previous) = in_chains.insert(*target, chain.chain_id) {
                    problems.push(format!(
                        "target {target} is in chains {previous} and {}",
                        chain.chain_id
                    ));
                }
                let Some(placed) = by_id.get(target) else {
                    problems
                        .push(format!("chain {} names unknown target {target}", chain.chain_id));
                    continue;
                };
                if placed.chain_id != chain.chain_id {
                    problems.push(format!(
                        "target {target} says chain {} but is in chain {}",
                        placed.chain_id, chain.chain_id
                    ));
                }
                if placed.disk_index != chain.disk_index {
                    problems.push(format!(
                        "chain {} mixes disk indexes {} and {}",
                        chain.chain_id, chain.disk_index, placed.disk_index
                    ));
                }
                if nodes_seen.contains(&placed.node_id) {
                    problems.push(format!(
                        "chain {} has two replicas on {}",
                        chain.chain_id, placed.node_id
                    ));
                }
                nodes_seen.push(placed.node_id);
            }
            let number = chain.chain_id.0 % CHAIN_ID_DISK_FACTOR;
            if chain.chain_id.0 / CHAIN_ID_DISK_FACTOR != chain.disk_index + 1 || number == 0 {
                problems.push(format!(
                    "chain id {} does not encode disk index {}",
                    chain.chain_id, chain.disk_index
                ));
            }
        }
        if in_chains.len() != self.targets.len() {
            problems.push(format!(
                "{} of {} targets are in a chain",
                in_chains.len(),
                self.targets.len()
            ));
        }
        let mut table = self.table.clone();
        table.sort();
        let mut chain_ids: Vec<ChainId> = self.chains.iter().map(|c| c.chain_id).collect();
        chain_ids.sort();
        if table != chain_ids {
            problems.push("the chain table does not list every chain exactly once".to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The per-node recovery-traffic balance, computed from the chains.
    pub fn balance(&self) -> BalanceReport {
        let node_of: BTreeMap<TargetId, NodeId> =
            self.targets.iter().map(|t| (t.target_id, t.node_id)).collect();
        let mut nodes = self.spec.nodes.clone();
        nodes.sort();
        let mut shared: BTreeMap<NodeId, BTreeMap<NodeId, u32>> = nodes
            .iter()
            .map(|&n| (n, nodes.iter().filter(|&&p| p != n).map(|&p| (p, 0)).collect()))
            .collect();
        let mut chains_of: BTreeMap<NodeId, u32> = nodes.iter().map(|&n| (n, 0)).collect();
        let mut heads_of: BTreeMap<NodeId, u32> = nodes.iter().map(|&n| (n, 0)).collect();
        for chain in &self.chains {
            let members: Vec<NodeId> =
                chain.targets.iter().filter_map(|t| node_of.get(t).copied()).collect();
            if let Some(head) = members.first() {
                *heads_of.entry(*head).or_default() += 1;
            }
            for &a in &members {
                *chains_of.entry(a).or_default() += 1;
                for &b in members.iter().filter(|&&b| b != a) {
                    *shared.entry(a).or_default().entry(b).or_default() += 1;
                }
            }
        }
        let per_node: Vec<NodeBalance> = nodes
            .iter()
            .map(|&node| {
                let peers: Vec<u32> = shared[&node].values().copied().collect();
                NodeBalance {
                    node_id: node,
                    chains: chains_of[&node],
                    heads: heads_of[&node],
                    peers: shared[&node].clone(),
                    peer_chains: Stats::of(&peers),
                }
            })
            .collect();
        let all: Vec<u32> = shared.values().flat_map(|m| m.values().copied()).collect();
        let heads: Vec<u32> = heads_of.values().copied().collect();
        BalanceReport {
            nodes: nodes.len(),
            disks_per_node: self.spec.disks_per_node,
            targets_per_disk: self.spec.targets_per_disk,
            replication: self.spec.replication,
            chains: self.chains.len(),
            chains_per_disk: self.chains.len() / self.spec.disks_per_node.max(1) as usize,
            targets_per_node: self.spec.disks_per_node * self.spec.targets_per_disk,
            overall: Stats::of(&all),
            heads: Stats::of(&heads),
            per_node,
            search: self.search,
        }
    }
}

/// Min, max and mean of a set of counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub min: u32,
    pub max: u32,
    pub mean: f64,
}

impl Stats {
    fn of(values: &[u32]) -> Stats {
        if values.is_empty() {
            return Stats { min: 0, max: 0, mean: 0.0 };
        }
        let sum: u64 = values.iter().map(|&x| u64::from(x)).sum();
        Stats {
            min: values.iter().copied().min().unwrap_or(0),
            max: values.iter().copied().max().unwrap_or(0),
            mean: sum as f64 / values.len() as f64,
        }
    }

    /// `max / mean`: 1.0 is perfect balance. 1.0 when there is nothing to balance.
    pub fn max_over_mean(&self) -> f64 {
        if self.mean == 0.0 { 1.0 } else { f64::from(self.max) / self.mean }
    }
}

/// For one node: how many of its chains each other node also holds. When this node fails, peer
/// `p` holds surviving replicas of `peers[p]` of its chains, so these counts are its recovery
/// traffic per peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeBalance {
    pub node_id: NodeId,
    pub chains: u32,
    /// Chains this node heads (takes the writes of).
    pub heads: u32,
    pub peers: BTreeMap<NodeId, u32>,
    pub peer_chains: Stats,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BalanceReport {
    pub nodes: usize,
    pub disks_per_node: u32,
    pub targets_per_disk: u32,
    pub replication: u32,
    pub chains: usize,
    pub chains_per_disk: usize,
    pub targets_per_node: u32,
    /// Over every (node, peer) pair.
    pub overall: Stats,
    /// Chains headed per node.
    pub heads: Stats,
    pub per_node: Vec<NodeBalance>,
    pub search: SearchStats,
}

impl fmt::Display for BalanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "placement: {} nodes x {} disks x {} targets per disk, replication {}",
            self.nodes, self.disks_per_node, self.targets_per_disk, self.replication
        )?;
        writeln!(
            f,
            "chains: {} ({} per disk index); targets: {} per node, {} per disk, {} in total",
            self.chains,
            self.chains_per_disk,
            self.targets_per_node,
            self.targets_per_disk,
            self.targets_per_node as usize * self.nodes
        )?;
        writeln!(
            f,
            "recovery-traffic balance: chains of a failed node whose surviving replicas each peer holds"
        )?;
        let mut rows = vec![vec![
            "Node".to_string(),
            "Chains".to_string(),
            "Heads".to_string(),
            "PeerMin".to_string(),
            "PeerMax".to_string(),
            "PeerMean".to_string(),
            "Max/Mean".to_string(),
        ]];
        for node in &self.per_node {
            rows.push(vec![
                node.node_id.0.to_string(),
                node.chains.to_string(),
                node.heads.to_string(),
                node.peer_chains.min.to_string(),
                node.peer_chains.max.to_string(),
                format!("{:.2}", node.peer_chains.mean),
                format!("{:.3}", node.peer_chains.max_over_mean()),
            ]);
        }
        f.write_str(&crate::output::render_table(&rows))?;
        writeln!(
            f,
            "overall: peer chains min {} max {} mean {:.2}, max/mean {:.3}; heads per node min {} max {}",
            self.overall.min,
            self.overall.max,
            self.overall.mean,
            self.overall.max_over_mean(),
            self.heads.min,
            self.heads.max
        )?;
        write!(
            f,
            "local search: {} starts, {} passes, {} swaps, {} evaluations, {}",
            self.search.starts,
            self.search.passes,
            self.search.swaps,
            self.search.evaluations,
            if self.search.converged { "converged" } else { "stopped at its work bound" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(nodes: u32, disks: u32, targets: u32, replication: u32) -> PlacementSpec {
        PlacementSpec {
            nodes: (10_001..10_001 + nodes).map(NodeId).collect(),
            disks_per_node: disks,
            targets_per_disk: targets,
            replication,
        }
    }

    /// The balance bound the generator promises (docs/design/placement.md): for every node, each
    /// peer shares at most `ceil(mean) + 1` and at least `floor(mean) - 1` of its chains.
    fn within_bound(report: &BalanceReport) -> Result<(), String> {
        for node in &report.per_node {
            let s = node.peer_chains;
            let high = s.mean.ceil() as u32 + 1;
            let low = (s.mean.floor() as u32).saturating_sub(1);
            if s.max > high || s.min < low {
                return Err(format!(
                    "{}: peer chains min {} max {} mean {:.2} outside [{low}, {high}]",
                    node.node_id, s.min, s.max, s.mean
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn five_nodes_eight_disks_twelve_targets_is_perfectly_balanced() {
        let placement = generate(&spec(5, 8, 12, 3)).expect("valid spec");
        let report = placement.balance();
        assert_eq!(report.chains, 160);
        assert_eq!(report.chains_per_disk, 20);
        assert_eq!(placement.targets.len(), 480);
        // 96 chains per node, 2 peers each: 192 peer slots over 4 peers = 48 each.
        for node in &report.per_node {
            assert_eq!(node.chains, 96);
            assert_eq!((node.peer_chains.min, node.peer_chains.max), (48, 48), "{node:?}");
            assert_eq!(node.heads, 32);
        }
        assert_eq!(report.overall.max_over_mean(), 1.0);
    }

    #[test]
    fn ids_follow_the_documented_scheme() {
        assert_eq!(target_id(NodeId(10_001), 7, 11), TargetId(10_001_007_011));
        assert_eq!(chain_id(0, 0), ChainId(100_001));
        assert_eq!(chain_id(7, 19), ChainId(800_020));
        let placement = generate(&spec(5, 8, 12, 3)).expect("valid spec");
        let last = placement.targets.last().expect("targets");
        assert_eq!(last.target_id, TargetId(10_005_007_011));
        assert_eq!(last.node_id, NodeId(10_005));
        assert_eq!(last.disk_index, 7);
        // The table interleaves disk indexes.
        assert_eq!(&placement.table[..3], &[ChainId(100_001), ChainId(200_001), ChainId(300_001)]);
    }

    #[test]
    fn generation_is_deterministic_and_ignores_node_order() {
        let a = generate(&spec(7, 3, 6, 3)).expect("valid spec");
        let mut shuffled = spec(7, 3, 6, 3);
        shuffled.nodes.reverse();
        let b = generate(&shuffled).expect("valid spec");
        assert_eq!(a.chains, b.chains);
        assert_eq!(a.targets, b.targets);
    }

    #[test]
    fn validation_reports_every_violation() {
        let bad = PlacementSpec {
            nodes: vec![NodeId(0), NodeId(3), NodeId(3)],
            disks_per_node: 0,
            targets_per_disk: 1_000,
            replication: 4,
        };
        let Err(PlacementError::Invalid(violations)) = bad.validate() else {
            panic!("invalid spec accepted");
        };
        assert!(violations.contains(&SpecViolation::ZeroNodeId));
        assert!(violations.contains(&SpecViolation::DuplicateNode(NodeId(3))));
        assert!(violations.contains(&SpecViolation::DisksPerNode(0)));
        assert!(violations.contains(&SpecViolation::TargetsPerDisk(1_000)));
        assert!(violations.contains(&SpecViolation::TooFewNodes { replication: 4, nodes: 3 }));

        let Err(PlacementError::Invalid(violations)) = spec(5, 1, 4, 3).validate() else {
            panic!("indivisible spec accepted");
        };
        let message = violations[0].to_string();
        assert!(message.contains("use 6 targets per disk"), "{message}");
    }

    #[test]
    fn targets_per_disk_follows_min_and_divisibility() {
        assert_eq!(targets_per_disk_for(5, 16, 3, 6), Ok(6));
        assert_eq!(targets_per_disk_for(5, 1, 3, 1), Ok(3));
        assert_eq!(targets_per_disk_for(5, 1, 3, 7), Ok(9));
        // 10 nodes, 1 disk, replication 2: r must reach 9 peer slots.
        assert_eq!(targets_per_disk_for(10, 1, 2, 1), Ok(9));
        assert_eq!(targets_per_disk_for(4, 1, 1, 1), Ok(1));
        assert!(targets_per_disk_for(5, 1, 3, 1_000).is_err());
    }

    #[test]
    fn replication_one_and_replication_equal_to_nodes_work() {
        let one = generate(&spec(3, 2, 2, 1)).expect("valid spec");
        assert_eq!(one.chains.len(), 12);
        let all = generate(&spec(4, 2, 3, 4)).expect("valid spec");
        assert!(all.balance().per_node.iter().all(|n| n.peer_chains.min == 6));
    }

    fn arbitrary_spec() -> impl Strategy<Value = PlacementSpec> {
        (1u32..=16, 1u32..=4, 1u32..=12, 1u32..=5).prop_filter_map(
            "replication fits the nodes",
            |(nodes, disks, min_targets, replication)| {
                let replication = replication.min(nodes);
                let targets =
                    targets_per_disk_for(nodes as usize, disks, replication, min_targets).ok()?;
                Some(spec(nodes, disks, targets, replication))
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn placements_are_valid_and_balanced(spec in arbitrary_spec()) {
            let placement = generate(&spec).expect("valid spec");
            // Independent model checks (verify() is the generator's own).
            let node_of: BTreeMap<TargetId, NodeId> =
                placement.targets.iter().map(|t| (t.target_id, t.node_id)).collect();
            let mut used = BTreeMap::new();
            for chain in &placement.chains {
                let mut nodes: Vec<NodeId> = chain.targets.iter().map(|t| node_of[t]).collect();
                nodes.sort();
                nodes.dedup();
                prop_assert_eq!(nodes.len(), spec.replication as usize, "replicas on distinct nodes");
                for t in &chain.targets {
                    *used.entry(*t).or_insert(0u32) += 1;
                }
            }
            let total = spec.nodes.len() * (spec.disks_per_node * spec.targets_per_disk) as usize;
            prop_assert_eq!(used.len(), total);
            prop_assert!(used.values().all(|&n| n == 1), "every target used exactly once");
            for node in &spec.nodes {
                for disk in 0..spec.disks_per_node {
                    for slot in 0..spec.targets_per_disk {
                        prop_assert!(used.contains_key(&target_id(*node, disk, slot)));
                    }
                }
            }
            prop_assert!(placement.verify().is_ok());
            let report = placement.balance();
            if let Err(problem) = within_bound(&report) {
                prop_assert!(false, "{}\n{}", problem, report);
            }
        }

        #[test]
        fn indivisible_specs_are_refused(nodes in 1u32..=24, targets in 1u32..=16, k in 1u32..=5) {
            let s = spec(nodes, 2, targets, k);
            let divisible = (nodes * targets).is_multiple_of(k) && k <= nodes;
            prop_assert_eq!(generate(&s).is_ok(), divisible);
        }
    }
}
