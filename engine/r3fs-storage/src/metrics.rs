//! The storage daemon's metrics (docs/design/monitoring.md): per-target read and write ops,
//! bytes and latency, target local and public states and space, and replication forwarding.
//!
//! Shards record from their own threads; handles are cached per thread, so a data-path record
//! is a hash lookup and atomic adds (a latency takes its series' uncontended mutex), never a
//! registry lookup. Labels are bounded: one series set per target (at most
//! `targets_per_path x target_paths` per node) and per peer address.

use r3fs_chunk::dma::BufPoolStats;
use r3fs_metrics::{Counter, Gauge, Latency, global};
use r3fs_types::{LocalTargetState, PublicTargetState, TargetId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

struct TargetMetrics {
    read_ok: Counter,
    read_failed: Counter,
    read_bytes: Counter,
    read_latency: Latency,
    write_ok: Counter,
    write_failed: Counter,
    write_bytes: Counter,
    write_latency: Latency,
    local_state: Gauge,
    public_state: Gauge,
    used_bytes: Gauge,
    capacity_bytes: Gauge,
    corrupt_chunks: Counter,
    chunks_repaired: Counter,
    chunks_unrepairable: Counter,
}

impl TargetMetrics {
    fn new(target: TargetId) -> TargetMetrics {
        let registry = global();
        let id = target.0.to_string();
        let t = |outcome: &'static str| [("target", id.clone()), ("outcome", outcome.to_string())];
        let ops = |name: &str, help: &str, outcome: &'static str| {
            let labels = t(outcome);
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            registry.counter(name, help, &labels)
        };
        let one = [("target", id.as_str())];
        TargetMetrics {
            read_ok: ops("r3fs_storage_read_ops_total", "Chunk reads answered, by target and outcome", "ok"),
            read_failed: ops("r3fs_storage_read_ops_total", "Chunk reads answered, by target and outcome", "failed"),
            read_bytes: registry.counter("r3fs_storage_read_bytes_total", "Bytes read and returned", &one),
            read_latency: registry.latency(
                "r3fs_storage_read_latency_us",
                "Chunk read latency from request arrival to reply, microseconds",
                &one,
            ),
            write_ok: ops("r3fs_storage_write_ops_total", "Client updates answered at the head, by target and outcome", "ok"),
            write_failed: ops("r3fs_storage_write_ops_total", "Client updates answered at the head, by target and outcome", "failed"),
            write_bytes: registry.counter("r3fs_storage_write_bytes_total", "Bytes of committed client writes", &one),
            write_latency: registry.latency(
                "r3fs_storage_write_latency_us",
                "Client update latency at the head, through the chain and back, microseconds",
                &one,
            ),
            local_state: registry.gauge(
                "r3fs_storage_target_local_state",
                "Local target state reported to mgmtd: 0 up-to-date, 1 online, 2 offline",
                &one,
            ),
            public_state: registry.gauge(
                "r3fs_storage_target_public_state",
                "Public target state from routing: 0 serving, 1 syncing, 2 waiting, 3 last-serving, 4 offline, -1 unknown",
                &one,
            ),
            used_bytes: registry.gauge("r3fs_storage_target_used_bytes", "Bytes used by the target's chunks", &one),
            capacity_bytes: registry.gauge("r3fs_storage_target_capacity_bytes", "Capacity of the target", &one),
            corrupt_chunks: registry.counter(
                "r3fs_storage_corrupt_chunks_total",
                "Chunks found failing their checksum on disk (each detection: a read, a write's base, a resync transfer or a peer's repair request)",
                &one,
            ),
            chunks_repaired: registry.counter(
                "r3fs_storage_chunks_repaired_total",
                "Corrupt chunks rewritten with a verified copy from a chain peer",
                &one,
            ),
            chunks_unrepairable: registry.counter(
                "r3fs_storage_chunks_unrepairable_total",
                "Corrupt chunks no serving peer had a good copy of (data lost on this target; reads stay refused)",
                &one,
            ),
        }
    }
}

/// One shard's buffer pool series and the counts already published.
struct PoolMetrics {
    free_bytes: Gauge,
    reused: Counter,
    allocated: Counter,
    freed: Counter,
    adopted: Counter,
    published: BufPoolStats,
}

thread_local! {
    static POOL: RefCell<Option<PoolMetrics>> = const { RefCell::new(None) };
    static TARGETS: RefCell<HashMap<TargetId, TargetMetrics>> = RefCell::new(HashMap::new());
    static PEERS: RefCell<HashMap<SocketAddr, (Latency, Counter)>> = RefCell::new(HashMap::new());
}

fn with_target(target: TargetId, f: impl FnOnce(&TargetMetrics)) {
    TARGETS.with(|targets| {
        let mut targets = targets.borrow_mut();
        f(targets.entry(target).or_insert_with(|| TargetMetrics::new(target)));
    });
}

/// A client update answered (`bytes` of payload, committed or refused).
pub fn write_done(target: TargetId, started: Instant, bytes: u64, ok: bool) {
    with_target(target, |m| {
        if ok {
            m.write_ok.inc();
            m.write_bytes.add(bytes);
        } else {
            m.write_failed.inc();
        }
        m.write_latency.record_since(started);
    });
}

/// One read item answered.
pub fn read_done(target: TargetId, started: Instant, bytes: u64, ok: bool) {
    with_target(target, |m| {
        if ok {
            m.read_ok.inc();
            m.read_bytes.add(bytes);
        } else {
            m.read_failed.inc();
        }
        m.read_latency.record_since(started);
    });
}

/// The target's state and space as reported to mgmtd.
pub fn report(
    target: TargetId,
    local_state: LocalTargetState,
    used_bytes: u64,
    capacity_bytes: u64,
) {
    with_target(target, |m| {
        m.local_state.set(match local_state {
            LocalTargetState::UpToDate => 0,
            LocalTargetState::Online => 1,
            LocalTargetState::Offline => 2,
        });
        m.used_bytes.set(i64::try_from(used_bytes).unwrap_or(i64::MAX));
        m.capacity_bytes.set(i64::try_from(capacity_bytes).unwrap_or(i64::MAX));
    });
}

/// A chunk of `target` failed its checksum on disk.
pub fn chunk_corrupt(target: TargetId) {
    with_target(target, |m| m.corrupt_chunks.inc());
}

/// A corrupt chunk of `target` was repaired from a chain peer.
pub fn chunk_repaired(target: TargetId) {
    with_target(target, |m| m.chunks_repaired.inc());
}

/// A corrupt chunk of `target` found no good copy on any serving peer.
pub fn chunk_unrepairable(target: TargetId) {
    with_target(target, |m| m.chunks_unrepairable.inc());
}

/// The target's public state in the latest routing.
pub fn public_state(target: TargetId, state: Option<PublicTargetState>) {
    with_target(target, |m| {
        m.public_state.set(match state {
            Some(PublicTargetState::Serving) => 0,
            Some(PublicTargetState::Syncing) => 1,
            Some(PublicTargetState::Waiting) => 2,
            Some(PublicTargetState::LastServing) => 3,
            Some(PublicTargetState::Offline) => 4,
            None => -1,
        });
    });
}

/// A chain-protocol frame written to a peer: the time from queueing to the end of the write.
pub fn forwarded(peer: SocketAddr, queued: Instant) {
    PEERS.with(|peers| {
        let mut peers = peers.borrow_mut();
        let (latency, _) = peers.entry(peer).or_insert_with(|| peer_metrics(peer));
        latency.record_since(queued);
    });
}

/// A chain-protocol frame dropped (queue full or connection failed); the replica resends it.
pub fn forward_dropped(peer: SocketAddr) {
    PEERS.with(|peers| {
        let mut peers = peers.borrow_mut();
        peers.entry(peer).or_insert_with(|| peer_metrics(peer)).1.inc();
    });
}

fn peer_metrics(peer: SocketAddr) -> (Latency, Counter) {
    let address = peer.to_string();
    let labels = [("peer", address.as_str())];
    (
        global().latency(
            "r3fs_storage_forward_latency_us",
            "Chain-protocol frame from queueing to written to the peer, microseconds",
            &labels,
        ),
        global().counter(
            "r3fs_storage_forward_dropped_total",
            "Chain-protocol frames dropped (queue full or connection failed); replicas resend them",
            &labels,
        ),
    )
}

/// The shard's DMA buffer pool (r3fs_chunk::dma): published with the shard's periodic reports.
pub fn buf_pool(shard: usize, stats: BufPoolStats) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let m = pool.get_or_insert_with(|| {
            let registry = global();
            let id = shard.to_string();
            let labels = [("shard", id.as_str())];
            PoolMetrics {
                free_bytes: registry.gauge(
                    "r3fs_storage_buf_pool_free_bytes",
                    "Released DMA buffers the shard keeps for reuse (bounded by BUF_POOL_BYTES_MAX)",
                    &labels,
                ),
                reused: registry.counter(
                    "r3fs_storage_buf_pool_reused_total",
                    "Large DMA buffers handed out again from the shard's pool",
                    &labels,
                ),
                allocated: registry.counter(
                    "r3fs_storage_buf_pool_allocated_total",
                    "DMA buffers newly allocated because none of their size was free",
                    &labels,
                ),
                freed: registry.counter(
                    "r3fs_storage_buf_pool_freed_total",
                    "Released DMA buffers freed because the pool was full",
                    &labels,
                ),
                adopted: registry.counter(
                    "r3fs_storage_payloads_adopted_total",
                    "Received payloads the chunk store wrote from their own memory (no copy)",
                    &labels,
                ),
                published: BufPoolStats::default(),
            }
        });
        m.free_bytes.set(i64::try_from(stats.free_bytes).unwrap_or(i64::MAX));
        m.reused.add(stats.reused.saturating_sub(m.published.reused));
        m.allocated.add(stats.allocated.saturating_sub(m.published.allocated));
        m.freed.add(stats.freed.saturating_sub(m.published.freed));
        m.adopted.add(stats.adopted.saturating_sub(m.published.adopted));
        m.published = stats;
    });
}
