//! In-memory backend with FoundationDB semantics, for tests and simulation.
//!
//! Data is multi-versioned: each key holds its values by commit version, so a transaction reads
//! the state as of its read version however many commits follow. Versions older than the conflict
//! history's horizon are pruned (keeping the newest one at or below it), so a transaction older
//! than the horizon fails reads and commit with [`KvError::Conflict`], like FoundationDB's
//! `transaction_too_old`, and is retried on a fresh snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::Deserialize;

use crate::buffer::{CommitRequest, PointOp, apply_add};
use crate::optimistic::{Engine, OptimisticTxn};
use crate::ranges::{ConflictHistory, HistoryLimits};
use crate::{KeyValue, Kv, KvError, Txn};

/// Keys examined per lock acquisition during a range scan, so a long scan never holds the store's
/// lock for long.
const SCAN_BATCH_KEYS_MAX: usize = 128;

/// Commits between sweeps that prune versions of keys no commit touched since.
const SWEEP_INTERVAL_COMMITS: u64 = 4_096;

/// Configuration of [`MemoryKv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Committed write sets kept for conflict checks; older read versions conflict.
    pub conflict_history_txns_max: usize,
    /// Bytes of keys in the kept write sets.
    pub conflict_history_bytes_max: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { conflict_history_txns_max: 100_000, conflict_history_bytes_max: 64 << 20 }
    }
}

impl MemoryConfig {
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.conflict_history_txns_max == 0 {
            errors.push("memory.conflict_history_txns_max must be at least 1".to_string());
        }
        if self.conflict_history_bytes_max == 0 {
            errors.push("memory.conflict_history_bytes_max must be at least 1".to_string());
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    pub(crate) fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            txns_max: self.conflict_history_txns_max,
            bytes_max: self.conflict_history_bytes_max,
        }
    }
}

/// Values of one key, ascending by commit version; `None` is a clear.
type VersionChain = Vec<(u64, Option<Vec<u8>>)>;

fn visible_at(chain: &VersionChain, read_version: u64) -> Option<&Vec<u8>> {
    let after = chain.partition_point(|(version, _)| *version <= read_version);
    after.checked_sub(1).and_then(|index| chain[index].1.as_ref())
}

/// Drops versions no read at or above `horizon` can see. Returns whether the chain is now empty.
fn prune(chain: &mut VersionChain, horizon: u64) -> bool {
    let at_or_below = chain.partition_point(|(version, _)| *version <= horizon);
    if at_or_below > 1 {
        chain.drain(..at_or_below - 1);
    }
    if chain.first().is_some_and(|(version, value)| *version <= horizon && value.is_none()) {
        chain.remove(0);
    }
    chain.is_empty()
}

#[derive(Debug)]
struct MemoryState {
    /// Version of the latest commit; a new transaction reads at it.
    version: u64,
    data: BTreeMap<Vec<u8>, VersionChain>,
    history: ConflictHistory,
    commits_since_sweep: u64,
}

impl MemoryState {
    fn check_readable(&self, read_version: u64) -> Result<(), KvError> {
        if read_version < self.history.horizon_version() {
            return Err(KvError::Conflict);
        }
        Ok(())
    }

    fn latest(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.data.get(key).and_then(|chain| visible_at(chain, self.version))
    }

    /// Records `key`'s value at `version`; a second write in the same commit (a point write after
    /// a range clear over it) replaces the first.
    fn push(&mut self, key: Vec<u8>, version: u64, value: Option<Vec<u8>>) {
        let chain = self.data.entry(key).or_default();
        match chain.last_mut() {
            Some((last, slot)) if *last == version => *slot = value,
            Some((last, _)) => {
                assert!(*last < version, "versions of a key must ascend");
                chain.push((version, value));
            }
            None => chain.push((version, value)),
        }
    }

    fn apply(&mut self, request: CommitRequest) -> Result<(), KvError> {
        self.history.check(request.read_version, &request.reads)?;
        let version = self.version + 1;
        let writes = request.write_set();
        let mut touched: Vec<Vec<u8>> = Vec::new();
        for (begin, end) in request.cleared.iter() {
            let live: Vec<Vec<u8>> = self
                .data
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                .filter(|(_, chain)| visible_at(chain, self.version).is_some())
                .map(|(key, _)| key.clone())
                .collect();
            for key in live {
                self.push(key.clone(), version, None);
                touched.push(key);
            }
        }
        for (key, op) in request.points {
            let value = match op {
                PointOp::Set(value) => Some(value),
                PointOp::Clear if self.latest(&key).is_none() => continue,
                PointOp::Clear => None,
                PointOp::Add(delta) => Some(apply_add(self.latest(&key).map(Vec::as_slice), delta)),
            };
            self.push(key.clone(), version, value);
            touched.push(key);
        }
        self.version = version;
        self.history.record(version, writes);
        let horizon = self.history.horizon_version();
        for key in touched {
            if let Some(chain) = self.data.get_mut(&key)
                && prune(chain, horizon)
            {
                self.data.remove(&key);
            }
        }
        self.commits_since_sweep += 1;
        if self.commits_since_sweep >= SWEEP_INTERVAL_COMMITS {
            self.commits_since_sweep = 0;
            self.data.retain(|_, chain| !prune(chain, horizon));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct MemoryEngine {
    state: Mutex<MemoryState>,
}

impl MemoryEngine {
    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A panic while holding the lock leaves no half-applied commit behind (commit validates
        // before it mutates), so the state is still consistent: keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The lazy scan behind a range read: examines at most [`SCAN_BATCH_KEYS_MAX`] keys per lock
/// acquisition and resumes after the last key it examined.
struct MemoryScan<'a> {
    engine: &'a MemoryEngine,
    read_version: u64,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    ready: VecDeque<KeyValue>,
    exhausted: bool,
}

impl MemoryScan<'_> {
    fn fill(&mut self) -> Result<(), KvError> {
        let state = self.engine.lock();
        state.check_readable(self.read_version)?;
        let bounds =
            (self.lower.as_ref().map(Vec::as_slice), self.upper.as_ref().map(Vec::as_slice));
        let range = state.data.range::<[u8], _>(bounds);
        let range: Box<dyn Iterator<Item = (&Vec<u8>, &VersionChain)>> =
            if self.reverse { Box::new(range.rev()) } else { Box::new(range) };
        let mut examined = 0usize;
        let mut last_key = None;
        for (key, chain) in range.take(SCAN_BATCH_KEYS_MAX) {
            examined += 1;
            if let Some(value) = visible_at(chain, self.read_version) {
                self.ready.push_back((key.clone(), value.clone()));
            }
            last_key = Some(key);
        }
        if examined < SCAN_BATCH_KEYS_MAX {
            self.exhausted = true;
        } else if let Some(last_key) = last_key {
            let resume = Bound::Excluded(last_key.clone());
            if self.reverse { self.upper = resume } else { self.lower = resume }
        }
        Ok(())
    }
}

impl Iterator for MemoryScan<'_> {
    type Item = Result<KeyValue, KvError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.exhausted {
            if let Err(error) = self.fill() {
                self.exhausted = true;
                return Some(Err(error));
            }
        }
        self.ready.pop_front().map(Ok)
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    /// The read version.
    type Snapshot = u64;

    fn snapshot_get(&self, read_version: &u64, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let state = self.lock();
        state.check_readable(*read_version)?;
        Ok(state.data.get(key).and_then(|chain| visible_at(chain, *read_version)).cloned())
    }

    fn snapshot_range<'a>(
        &'a self,
        read_version: &'a u64,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<KeyValue, KvError>> + 'a> {
        Box::new(MemoryScan {
            engine: self,
            read_version: *read_version,
            lower: Bound::Included(begin.to_vec()),
            upper: Bound::Excluded(end.to_vec()),
            reverse,
            ready: VecDeque::new(),
            exhausted: false,
        })
    }

    async fn commit(&self, request: CommitRequest) -> Result<(), KvError> {
        self.lock().apply(request)
    }
}

/// In-memory [`Kv`]; cheap to clone (clones share the store).
#[derive(Clone)]
pub struct MemoryKv {
    engine: Arc<MemoryEngine>,
}

impl std::fmt::Debug for MemoryKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.engine.lock();
        f.debug_struct("MemoryKv")
            .field("version", &state.version)
            .field("keys", &state.data.len())
            .finish()
    }
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new(&MemoryConfig::default())
    }
}

impl MemoryKv {
    pub fn new(config: &MemoryConfig) -> Self {
        let state = MemoryState {
            version: 0,
            data: BTreeMap::new(),
            history: ConflictHistory::new(config.history_limits(), 0),
            commits_since_sweep: 0,
        };
        Self { engine: Arc::new(MemoryEngine { state: Mutex::new(state) }) }
    }
}

#[async_trait]
impl Kv for MemoryKv {
    async fn begin(&self) -> Result<Box<dyn Txn>, KvError> {
        let read_version = self.engine.lock().version;
        Ok(Box::new(OptimisticTxn::new(self.engine.clone(), read_version, read_version)))
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::ReadMode;

    #[test]
    fn prune_keeps_what_reads_at_the_horizon_need() {
        let mut chain: VersionChain =
            vec![(1, Some(b"a".to_vec())), (3, Some(b"b".to_vec())), (5, None)];
        assert!(!prune(&mut chain, 4));
        assert_eq!(chain, vec![(3, Some(b"b".to_vec())), (5, None)]);
        assert_eq!(visible_at(&chain, 4), Some(&b"b".to_vec()));
        assert!(prune(&mut chain, 5), "a clear at the horizon is the same as no key");
    }

    #[tokio::test]
    async fn transaction_older_than_the_history_conflicts() {
        let kv = MemoryKv::new(&MemoryConfig {
            conflict_history_txns_max: 2,
            ..MemoryConfig::default()
        });
        let mut old = kv.begin().await.unwrap();
        for round in 0..3u8 {
            let mut txn = kv.begin().await.unwrap();
            txn.set(b"k", &[round]).unwrap();
            txn.commit().await.unwrap();
        }
        assert!(matches!(old.get(b"k", ReadMode::Snapshot).await, Err(KvError::Conflict)));
        old.set(b"other", b"x").unwrap();
        assert!(matches!(old.commit().await, Err(KvError::Conflict)));
    }
}
