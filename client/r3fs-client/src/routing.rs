//! The routing cache: mgmtd's routing info as the client uses it, kept current.
//!
//! - [`RoutingSnapshot`]: one routing version, decoded: each chain's version and ordered targets
//!   with their public states, the data-plane address of every target, and the chain tables.
//! - [`RoutingSource`]: where versions come from ([`MgmtdClient`], which follows the primary, or
//!   a test double).
//! - [`RoutingCache`]: holds the newest snapshot, watches for newer ones in the background
//!   (long-poll), and refreshes on demand when a storage target says the client's chain version
//!   is stale. Published versions only grow.
//!
//! Address convention (`r3fs_types::data_plane`, shared with the storage daemon, and pinned by a
//! test here): a storage node registers one service address per shard (core), named
//! `data/<shard>`, numbered 0..n without gaps; target `t` of a node with `n` shards is served by
//! shard `t % n`.

use crate::config::RoutingConfig;
use crate::error::{ClientError, ClientResult};
use async_trait::async_trait;
use r3fs_rpc::mgmtd as pb;
use r3fs_rpc::mgmtd_client::MgmtdClient;
use r3fs_types::{
    ChainId, ChainTableId, ChainTableVersion, ChainVersion, ErrorCode, NodeId, PublicTargetState,
    TargetId,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use r3fs_types::data_plane::parse_data_address_name;
pub use r3fs_types::data_plane::{DATA_ADDRESS_PREFIX, shard_of};

/// One chain at one chain version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRoute {
    pub chain: ChainId,
    pub version: ChainVersion,
    /// In chain order, head first (mgmtd lists serving targets first, then syncing, waiting,
    /// last-serving and offline ones).
    pub targets: Vec<(TargetId, PublicTargetState)>,
}

impl ChainRoute {
    /// Where writes go: the first target that takes writes, if it is serving.
    pub fn head(&self) -> Option<TargetId> {
        self.targets
            .iter()
            .find(|(_, state)| state.takes_writes())
            .filter(|(_, state)| *state == PublicTargetState::Serving)
            .map(|(target, _)| *target)
    }

    /// Targets that serve reads, in chain order.
    pub fn serving(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.targets.iter().filter(|(_, s)| s.serves_reads()).map(|(t, _)| *t)
    }

    /// The last serving target: in CRAQ it commits first, so it never has a pending version.
    pub fn tail(&self) -> Option<TargetId> {
        self.targets.iter().rev().find(|(_, s)| s.serves_reads()).map(|(t, _)| *t)
    }
}

/// One routing version, decoded for the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingSnapshot {
    pub version: u64,
    chains: HashMap<ChainId, ChainRoute>,
    target_nodes: HashMap<TargetId, NodeId>,
    /// Data-plane addresses of each storage node, by shard.
    data_addresses: HashMap<NodeId, Vec<SocketAddr>>,
    chain_tables: HashMap<(ChainTableId, ChainTableVersion), Arc<[ChainId]>>,
}

fn public_state(value: i32) -> Option<PublicTargetState> {
    Some(match pb::PublicTargetState::try_from(value).ok()? {
        pb::PublicTargetState::Unspecified => return None,
        pb::PublicTargetState::Serving => PublicTargetState::Serving,
        pb::PublicTargetState::Syncing => PublicTargetState::Syncing,
        pb::PublicTargetState::Waiting => PublicTargetState::Waiting,
        pb::PublicTargetState::LastServing => PublicTargetState::LastServing,
        pb::PublicTargetState::Offline => PublicTargetState::Offline,
    })
}

impl RoutingSnapshot {
    /// Decodes mgmtd's routing info. Entries that make no sense (unknown states, unparsable
    /// addresses, shard gaps) are skipped with one message each, so one bad entry cannot stop
    /// the data plane.
    pub fn from_pb(info: &pb::RoutingInfo) -> (RoutingSnapshot, Vec<String>) {
        let mut problems = Vec::new();
        let mut snapshot = RoutingSnapshot { version: info.routing_version, ..Default::default() };
        for node in &info.nodes {
            let mut shards: BTreeMap<usize, SocketAddr> = BTreeMap::new();
            let mut bad = false;
            for address in &node.addresses {
                let Some(index) = parse_data_address_name(&address.name) else { continue };
                match (index, address.address.parse::<SocketAddr>()) {
                    (Ok(index), Ok(socket)) => {
                        shards.insert(index, socket);
                    }
                    _ => {
                        bad = true;
                        problems.push(format!(
                            "node {}: bad data address {:?} = {:?}; its targets are unreachable",
                            node.node_id, address.name, address.address
                        ));
                    }
                }
            }
            // With one shard missing the shard count is wrong, and so would be every target's
            // shard: better unreachable than sent to the wrong core.
            if shards.is_empty() || bad {
                continue;
            }
            // Without gaps, or the modulo rule would send requests to the wrong core.
            if shards.keys().copied().eq(0..shards.len()) {
                snapshot
                    .data_addresses
                    .insert(NodeId(node.node_id), shards.into_values().collect());
            } else {
                problems.push(format!("node {}: data shard numbers have gaps", node.node_id));
            }
        }
        for chain in &info.chains {
            let mut targets = Vec::with_capacity(chain.targets.len());
            let mut valid = !chain.targets.is_empty();
            for target in &chain.targets {
                let id = TargetId(target.target_id);
                let duplicate = targets.iter().any(|(t, _)| *t == id);
                match public_state(target.public_state) {
                    Some(state) if !duplicate => targets.push((id, state)),
                    _ => valid = false,
                }
            }
            if !valid {
                problems.push(format!(
                    "chain {}: empty, duplicate or stateless targets",
                    chain.chain_id
                ));
                continue;
            }
            let id = ChainId(chain.chain_id);
            snapshot.chains.insert(
                id,
                ChainRoute { chain: id, version: ChainVersion(chain.chain_version), targets },
            );
        }
        for target in &info.targets {
            snapshot.target_nodes.insert(TargetId(target.target_id), NodeId(target.node_id));
        }
        for table in &info.chain_tables {
            let chains: Arc<[ChainId]> = table.chain_ids.iter().map(|&c| ChainId(c)).collect();
            snapshot
                .chain_tables
                .insert((ChainTableId(table.table_id), ChainTableVersion(table.version)), chains);
        }
        (snapshot, problems)
    }

    pub fn chain(&self, chain: ChainId) -> Option<&ChainRoute> {
        self.chains.get(&chain)
    }

    /// The chain ids of one chain table version, in table order.
    pub fn chain_table(
        &self,
        id: ChainTableId,
        version: ChainTableVersion,
    ) -> Option<&Arc<[ChainId]>> {
        self.chain_tables.get(&(id, version))
    }

    /// The data-plane address of the shard that serves `target`.
    pub fn address_of(&self, target: TargetId) -> Option<SocketAddr> {
        let node = self.target_nodes.get(&target)?;
        let shards = self.data_addresses.get(node)?;
        shards.get(shard_of(target, shards.len())).copied()
    }

    /// The version of `chain` in this snapshot, if the chain is known.
    pub fn chain_version(&self, chain: ChainId) -> Option<ChainVersion> {
        self.chains.get(&chain).map(|c| c.version)
    }
}

/// Where routing versions come from.
#[async_trait]
pub trait RoutingSource: Send + Sync + fmt::Debug + 'static {
    /// The routing info if its version is above `known`, waiting up to `wait` for one
    /// (`wait` zero: answer now). `Ok(None)`: nothing newer within `wait`.
    async fn fetch(&self, known: u64, wait: Duration) -> ClientResult<Option<pb::RoutingInfo>>;
}

#[async_trait]
impl RoutingSource for MgmtdClient {
    async fn fetch(&self, known: u64, wait: Duration) -> ClientResult<Option<pb::RoutingInfo>> {
        let info = self.get_routing_info(known, wait).await?;
        // mgmtd answers the current version when asked with wait 0; only newer ones are news.
        Ok(info.filter(|info| info.routing_version > known))
    }
}

/// Counters of the cache's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutingStats {
    /// On-demand fetches (after a stale-routing refusal).
    pub refreshes: u64,
    /// Versions published (initial one included).
    pub versions_published: u64,
}

#[derive(Debug)]
struct Shared {
    source: Arc<dyn RoutingSource>,
    config: RoutingConfig,
    current: watch::Sender<Arc<RoutingSnapshot>>,
    /// Held while one on-demand fetch runs (single flight); remembers when the last one ended.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    refreshes: AtomicU64,
    published: AtomicU64,
}

impl Shared {
    /// Installs `info` if it is newer than what the cache holds.
    fn publish(&self, info: &pb::RoutingInfo) {
        let (snapshot, problems) = RoutingSnapshot::from_pb(info);
        let version = snapshot.version;
        let installed = self.current.send_if_modified(|current| {
            if snapshot.version > current.version {
                *current = Arc::new(snapshot);
                true
            } else {
                false
            }
        });
        if installed {
            self.published.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(routing_version = version, "routing updated");
            for problem in problems {
                tracing::warn!(routing_version = version, "routing entry skipped: {problem}");
            }
        }
    }

    fn snapshot(&self) -> Arc<RoutingSnapshot> {
        self.current.borrow().clone()
    }
}

/// The newest routing snapshot, kept current by a background watcher and by on-demand refreshes.
/// Dropping the cache stops the watcher.
#[derive(Debug)]
pub struct RoutingCache {
    shared: Arc<Shared>,
    watcher: tokio::task::AbortHandle,
}

impl Drop for RoutingCache {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl RoutingCache {
    /// Fetches the current routing (failing if mgmtd cannot be reached within its client's
    /// bounds) and starts the background watcher. Must run inside a tokio runtime.
    pub async fn start(
        source: Arc<dyn RoutingSource>,
        config: RoutingConfig,
    ) -> ClientResult<RoutingCache> {
        let first = source.fetch(0, Duration::ZERO).await?.ok_or_else(|| {
            ClientError::failed(ErrorCode::Unavailable, "mgmtd returned no routing info")
        })?;
        let (current, _) = watch::channel(Arc::new(RoutingSnapshot::default()));
        let shared = Arc::new(Shared {
            source,
            config,
            current,
            refresh: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
            published: AtomicU64::new(0),
        });
        shared.publish(&first);
        let watcher = tokio::spawn(watch_loop(shared.clone())).abort_handle();
        Ok(RoutingCache { shared, watcher })
    }

    /// The newest snapshot.
    pub fn snapshot(&self) -> Arc<RoutingSnapshot> {
        self.shared.snapshot()
    }

    /// A receiver that sees every newer snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingSnapshot>> {
        self.shared.current.subscribe()
    }

    pub fn stats(&self) -> RoutingStats {
        RoutingStats {
            refreshes: self.shared.refreshes.load(Ordering::Relaxed),
            versions_published: self.shared.published.load(Ordering::Relaxed),
        }
    }

    /// Asks mgmtd for a newer version now. Concurrent callers share one fetch, and a refresh
    /// within `refresh_interval_min_ms` of the last one is reused rather than repeated.
    pub async fn refresh(&self) -> ClientResult<Arc<RoutingSnapshot>> {
        let mut last = self.shared.refresh.lock().await;
        let interval = Duration::from_millis(self.shared.config.refresh_interval_min_ms);
        if last.is_some_and(|at| at.elapsed() < interval) {
            return Ok(self.snapshot());
        }
        self.shared.refreshes.fetch_add(1, Ordering::Relaxed);
        let known = self.snapshot().version;
        let result = self.shared.source.fetch(known, Duration::ZERO).await;
        *last = Some(Instant::now());
        if let Some(info) = result? {
            self.shared.publish(&info);
        }
        Ok(self.snapshot())
    }

    /// Waits (at most `stale_wait_max_ms`, and at most `limit`) until the cache holds `chain` at
    /// `version` or newer: a storage target refused a request because it has seen that version
    /// and the client has not. Returns the newest snapshot either way; the caller's retry loop
    /// decides what to do if the version did not arrive.
    pub async fn wait_for_chain_version(
        &self,
        chain: ChainId,
        version: ChainVersion,
        limit: Duration,
    ) -> Arc<RoutingSnapshot> {
        let wait = Duration::from_millis(self.shared.config.stale_wait_max_ms).min(limit);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.subscribe();
        loop {
            let snapshot = self.snapshot();
            if snapshot.chain_version(chain).is_some_and(|v| v >= version) {
                return snapshot;
            }
            if let Err(error) = self.refresh().await {
                tracing::debug!(%chain, "routing refresh failed: {error}");
            }
            let snapshot = self.snapshot();
            if snapshot.chain_version(chain).is_some_and(|v| v >= version)
                || tokio::time::Instant::now() >= deadline
            {
                return snapshot;
            }
            // The watcher's long-poll returns as soon as mgmtd publishes; poll again after a
            // short while in case the watcher is backing off.
            let nap = tokio::time::Instant::now()
                + Duration::from_millis(self.shared.config.refresh_interval_min_ms.max(10));
            let _ = tokio::time::timeout_at(nap.min(deadline), changes.changed()).await;
        }
    }
}

async fn watch_loop(shared: Arc<Shared>) {
    let wait = Duration::from_millis(shared.config.watch_wait_ms);
    let retry = Duration::from_millis(shared.config.watch_retry_ms);
    loop {
        let known = shared.snapshot().version;
        match shared.source.fetch(known, wait).await {
            Ok(Some(info)) => shared.publish(&info),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!("routing watch failed (retrying in {retry:?}): {error}");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A routing source whose versions a test publishes by hand.
    #[derive(Debug, Default)]
    pub(crate) struct ManualSource {
        pub(crate) info: Mutex<pb::RoutingInfo>,
        pub(crate) changed: tokio::sync::Notify,
        pub(crate) fetches: AtomicU64,
    }

    impl ManualSource {
        pub(crate) fn set(&self, info: pb::RoutingInfo) {
            *self.info.lock().expect("lock") = info;
            self.changed.notify_waiters();
        }
    }

    #[async_trait]
    impl RoutingSource for ManualSource {
        async fn fetch(&self, known: u64, wait: Duration) -> ClientResult<Option<pb::RoutingInfo>> {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = self.changed.notified();
                {
                    let info = self.info.lock().expect("lock");
                    if info.routing_version > known {
                        return Ok(Some(info.clone()));
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(None);
                }
            }
        }
    }

    pub(crate) fn info(version: u64, chain_version: u32) -> pb::RoutingInfo {
        pb::RoutingInfo {
            routing_version: version,
            nodes: vec![pb::NodeInfo {
                node_id: 2,
                addresses: vec![
                    pb::ServiceAddress { name: "data/1".into(), address: "127.0.0.1:7001".into() },
                    pb::ServiceAddress { name: "data/0".into(), address: "127.0.0.1:7000".into() },
                    pb::ServiceAddress { name: "grpc".into(), address: "127.0.0.1:9".into() },
                ],
                ..Default::default()
            }],
            chains: vec![pb::Chain {
                chain_id: 1,
                chain_version,
                targets: vec![
                    pb::ChainTarget {
                        target_id: 11,
                        public_state: pb::PublicTargetState::Serving as i32,
                    },
                    pb::ChainTarget {
                        target_id: 12,
                        public_state: pb::PublicTargetState::Serving as i32,
                    },
                    pb::ChainTarget {
                        target_id: 13,
                        public_state: pb::PublicTargetState::Offline as i32,
                    },
                ],
            }],
            targets: [11, 12, 13]
                .into_iter()
                .map(|t| pb::TargetInfo {
                    target_id: t,
                    node_id: 2,
                    chain_id: 1,
                    ..Default::default()
                })
                .collect(),
            chain_tables: vec![pb::ChainTable {
                table_id: 1,
                version: 1,
                chain_ids: vec![1],
                description: String::new(),
            }],
        }
    }

    #[test]
    fn decodes_chains_addresses_and_tables() {
        let (snapshot, problems) = RoutingSnapshot::from_pb(&info(5, 3));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(snapshot.version, 5);
        // The storage daemon's convention: target % shards.
        assert_eq!(
            snapshot.address_of(TargetId(11)),
            Some("127.0.0.1:7001".parse().expect("addr"))
        );
        assert_eq!(
            snapshot.address_of(TargetId(12)),
            Some("127.0.0.1:7000".parse().expect("addr"))
        );
        assert_eq!(snapshot.address_of(TargetId(99)), None);
        let chain = snapshot.chain(ChainId(1)).expect("chain 1");
        assert_eq!(chain.version, ChainVersion(3));
        assert_eq!(chain.head(), Some(TargetId(11)));
        assert_eq!(chain.tail(), Some(TargetId(12)));
        assert_eq!(chain.serving().collect::<Vec<_>>(), vec![TargetId(11), TargetId(12)]);
        assert_eq!(
            snapshot.chain_table(ChainTableId(1), ChainTableVersion(1)).map(|t| t.to_vec()),
            Some(vec![ChainId(1)])
        );
    }

    #[test]
    fn bad_entries_are_skipped_and_reported() {
        let mut bad = info(5, 3);
        bad.nodes[0].addresses[0].address = "nonsense".into();
        bad.chains[0].targets[1].target_id = 11;
        let (snapshot, problems) = RoutingSnapshot::from_pb(&bad);
        assert_eq!(problems.len(), 2, "{problems:?}"); // bad address, duplicate target
        assert!(snapshot.chain(ChainId(1)).is_none());
        assert_eq!(snapshot.address_of(TargetId(11)), None);
        assert_eq!(snapshot.address_of(TargetId(12)), None, "the whole node is unroutable");

        let mut gap = info(5, 3);
        gap.nodes[0].addresses.remove(1); // data/0 gone: only data/1 left
        let (snapshot, problems) = RoutingSnapshot::from_pb(&gap);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(snapshot.address_of(TargetId(11)), None);
    }

    #[test]
    fn a_syncing_first_target_is_no_head() {
        let route = ChainRoute {
            chain: ChainId(1),
            version: ChainVersion(1),
            targets: vec![
                (TargetId(1), PublicTargetState::Syncing),
                (TargetId(2), PublicTargetState::Offline),
            ],
        };
        assert_eq!(route.head(), None);
        assert_eq!(route.tail(), None);
    }

    #[tokio::test]
    async fn watcher_installs_newer_versions_and_refresh_is_single_flight() {
        let source = Arc::new(ManualSource::default());
        source.set(info(1, 1));
        let config = RoutingConfig {
            watch_wait_ms: 60_000,
            refresh_interval_min_ms: 60_000,
            ..Default::default()
        };
        let cache = RoutingCache::start(source.clone(), config).await.expect("start");
        assert_eq!(cache.snapshot().version, 1);
        let mut changes = cache.subscribe();
        source.set(info(2, 2));
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the watcher sees version 2")
            .expect("cache alive");
        assert_eq!(cache.snapshot().chain_version(ChainId(1)), Some(ChainVersion(2)));

        // An older version is never installed.
        source.set(info(1, 1));
        cache.refresh().await.expect("refresh");
        assert_eq!(cache.snapshot().version, 2);
        // A second refresh within the minimum interval reuses the first.
        let before = cache.stats().refreshes;
        cache.refresh().await.expect("refresh");
        assert_eq!(cache.stats().refreshes, before);
    }

    #[tokio::test]
    async fn waiting_for_a_chain_version_returns_once_it_is_published() {
        let source = Arc::new(ManualSource::default());
        source.set(info(1, 1));
        let config = RoutingConfig { refresh_interval_min_ms: 1, ..Default::default() };
        let cache = Arc::new(RoutingCache::start(source.clone(), config).await.expect("start"));
        let publisher = {
            let source = source.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                source.set(info(7, 4));
            })
        };
        let snapshot = cache
            .wait_for_chain_version(ChainId(1), ChainVersion(4), Duration::from_secs(20))
            .await;
        assert_eq!(snapshot.chain_version(ChainId(1)), Some(ChainVersion(4)));
        publisher.await.expect("publisher");
        // A version that never comes: the wait ends at its bound with what there is.
        let config = RoutingConfig {
            stale_wait_max_ms: 30,
            refresh_interval_min_ms: 1,
            ..Default::default()
        };
        let cache = RoutingCache::start(source, config).await.expect("start");
        let snapshot = cache
            .wait_for_chain_version(ChainId(1), ChainVersion(9), Duration::from_secs(20))
            .await;
        assert_eq!(snapshot.chain_version(ChainId(1)), Some(ChainVersion(4)));
    }
}
