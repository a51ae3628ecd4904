//! Embedded durable backend on fjall (an LSM tree with a write-ahead journal): the default store
//! of a single-node deployment.
//!
//! fjall supplies durable storage, MVCC snapshots and atomic multi-key write batches. Conflict
//! detection is ours, the same code as the memory backend's ([`crate::ranges`]), not fjall's
//! `OptimisticTxDatabase`: that one marks a whole requested range read even when a limit stopped
//! the scan early, has no range clear, no atomic add, no snapshot reads inside a write
//! transaction and no explicit read conflict ranges — every one of which the trait promises.
//!
//! Commit path (`docs/design/kv.md` has the numbered steps): transactions hand their
//! [`CommitRequest`] to one committer thread. It takes a *group* of queued requests, checks each
//! against the conflict history (and the ones before it in the group), computes their effects
//! (range clears expand to the keys present; atomic adds read the latest value, so they take no
//! read conflict), writes the whole group as one fjall batch persisted per [`Durability`], and
//! only then publishes the new version and acknowledges. One fdatasync thus covers every
//! transaction that queued behind the previous one (group commit), and a reader never sees a
//! write that is not yet durable.
//!
//! On-disk layout: one fjall keyspace `kv`; a user key `k` is stored as `0x01 ++ k` (fjall refuses
//! empty keys; the trait allows them); `0x00 ++ name` holds backend metadata (`format`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::buffer::{CommitRequest, PointOp, apply_add};
use crate::optimistic::{Engine, OptimisticTxn};
use crate::ranges::{ConflictHistory, HistoryLimits};
use crate::{KeyValue, Kv, KvError, TXN_SIZE_MAX, Txn};

const KEYSPACE_NAME: &str = "kv";
const USER_TAG: u8 = 0x01;
const META_TAG: u8 = 0x00;
const FORMAT_KEY: &[u8] = b"\x00format";
const FORMAT_VALUE: &[u8] = b"r3fs-kv-fjall-1";

/// When a commit is acknowledged relative to the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fdatasync the journal before acknowledging: survives process and machine crashes.
    #[default]
    SyncData,
    /// fsync (data and metadata) before acknowledging.
    SyncAll,
    /// Hand the journal to the OS before acknowledging: survives a process crash (kill -9) but not
    /// a power loss. For tests and scratch clusters only.
    Buffer,
}

impl Durability {
    fn persist_mode(self) -> PersistMode {
        match self {
            Durability::SyncData => PersistMode::SyncData,
            Durability::SyncAll => PersistMode::SyncAll,
            Durability::Buffer => PersistMode::Buffer,
        }
    }
}

/// Configuration of [`FjallKv`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FjallConfig {
    /// Directory of the store; created if missing. Required.
    pub path: PathBuf,
    pub durability: Durability,
    /// Block cache of fjall.
    pub cache_bytes: u64,
    /// Commits waiting for the committer thread; more wait in `commit` (backpressure).
    pub commit_queue_txns_max: usize,
    /// Transactions persisted by one journal write and sync.
    pub commit_group_txns_max: usize,
    /// Mutation bytes of one group; a group stops taking transactions once past it.
    pub commit_group_bytes_max: usize,
    /// Committed write sets kept for conflict checks; older read versions conflict.
    pub conflict_history_txns_max: usize,
    /// Bytes of keys in the kept write sets.
    pub conflict_history_bytes_max: usize,
}

impl Default for FjallConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            durability: Durability::SyncData,
            cache_bytes: 64 << 20,
            commit_queue_txns_max: 1_024,
            commit_group_txns_max: 256,
            commit_group_bytes_max: 16 << 20,
            conflict_history_txns_max: 100_000,
            conflict_history_bytes_max: 64 << 20,
        }
    }
}

impl FjallConfig {
    /// A durable store at `path` with the other settings at their defaults.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push("fjall.path must name the store's directory".to_string());
        }
        for (name, value) in [
            ("commit_queue_txns_max", self.commit_queue_txns_max),
            ("commit_group_txns_max", self.commit_group_txns_max),
            ("conflict_history_txns_max", self.conflict_history_txns_max),
            ("conflict_history_bytes_max", self.conflict_history_bytes_max),
        ] {
            if value == 0 {
                errors.push(format!("fjall.{name} must be at least 1"));
            }
        }
        if self.commit_group_bytes_max < TXN_SIZE_MAX {
            errors.push(format!(
                "fjall.commit_group_bytes_max ({}) must hold one largest transaction ({TXN_SIZE_MAX} bytes)",
                self.commit_group_bytes_max
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

fn io_error(context: &str, error: impl std::fmt::Display) -> KvError {
    KvError::Io(format!("fjall {context}: {error}"))
}

fn encode(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(USER_TAG);
    stored.extend_from_slice(key);
    stored
}

fn decode(stored: &[u8]) -> Result<Vec<u8>, KvError> {
    match stored.split_first() {
        Some((&USER_TAG, key)) => Ok(key.to_vec()),
        _ => Err(KvError::Io(format!("fjall: stored key {stored:02x?} lacks the user tag"))),
    }
}

/// Counters of the commit path, for metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Journal writes (one sync each when durable).
    pub groups: u64,
    /// Transactions those writes committed.
    pub transactions: u64,
    /// Transactions refused with a conflict.
    pub conflicts: u64,
}

#[derive(Debug, Default)]
struct SharedStats {
    groups: AtomicU64,
    transactions: AtomicU64,
    conflicts: AtomicU64,
}

struct CommitJob {
    request: CommitRequest,
    reply: oneshot::Sender<Result<(), KvError>>,
}

/// State owned by the committer thread.
struct Committer {
    db: Database,
    keyspace: Keyspace,
    durability: Durability,
    group_txns_max: usize,
    group_bytes_max: usize,
    history: ConflictHistory,
    /// Version of the last transaction accepted into a group.
    version: u64,
    published_version: Arc<AtomicU64>,
    stats: Arc<SharedStats>,
    /// Set once a journal write failed: the disk state is unknown, so nothing commits after it.
    failure: Option<String>,
}

/// Keys (encoded) mapped to their new value (`None` = cleared), for one group or transaction.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

impl Committer {
    fn run(mut self, mut jobs: mpsc::Receiver<CommitJob>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut group_bytes = first.request.size_bytes;
            let mut group = vec![first];
            while group.len() < self.group_txns_max && group_bytes < self.group_bytes_max {
                match jobs.try_recv() {
                    Ok(job) => {
                        group_bytes += job.request.size_bytes;
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<CommitJob>) {
        if let Some(failure) = &self.failure {
            for job in group {
                let _ = job.reply.send(Err(KvError::Io(failure.clone())));
            }
            return;
        }
        let latest = self.db.snapshot();
        let mut overlay = Overlay::new();
        let mut accepted = Vec::with_capacity(group.len());
        for CommitJob { request, reply } in group {
            if let Err(error) = self.history.check(request.read_version, &request.reads) {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(error));
                continue;
            }
            match self.effects(&latest, &overlay, &request) {
                Ok(effects) => {
                    overlay.extend(effects);
                    self.version += 1;
                    self.history.record(self.version, request.write_set());
                    accepted.push(reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        drop(latest);
        if accepted.is_empty() {
            return;
        }
        let mut batch = self.db.batch().durability(Some(self.durability.persist_mode()));
        for (key, value) in overlay {
            match value {
                Some(value) => batch.insert(&self.keyspace, key, value),
                None => batch.remove(&self.keyspace, key),
            }
        }
        match batch.commit() {
            Ok(()) => {
                // Readers that begin from now on see this group; it is durable already.
                self.published_version.store(self.version, Ordering::Release);
                self.stats.groups.fetch_add(1, Ordering::Relaxed);
                self.stats.transactions.fetch_add(accepted.len() as u64, Ordering::Relaxed);
                for reply in accepted {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) => {
                let failure = format!(
                    "fjall journal write failed; store is read-only until restart: {error}"
                );
                tracing::error!(%failure, "kv commit failed");
                for reply in accepted {
                    let _ = reply.send(Err(KvError::Io(failure.clone())));
                }
                self.failure = Some(failure);
            }
        }
    }

    /// The writes `request` makes on top of the latest committed state plus `overlay` (the
    /// transactions accepted earlier in this group).
    fn effects(
        &self,
        latest: &Snapshot,
        overlay: &Overlay,
        request: &CommitRequest,
    ) -> Result<Overlay, KvError> {
        let mut effects = Overlay::new();
        for (begin, end) in request.cleared.iter() {
            let (begin, end) = (encode(begin), encode(end));
            for guard in latest.range(&self.keyspace, begin.as_slice()..end.as_slice()) {
                let key = guard.key().map_err(|e| io_error("scan range to clear", e))?;
                effects.insert(key.to_vec(), None);
            }
            for (key, value) in overlay.range(begin..end) {
                if value.is_some() {
                    effects.insert(key.clone(), None);
                }
            }
        }
        for (key, op) in &request.points {
            let key = encode(key);
            let value = match op {
                PointOp::Set(value) => Some(value.clone()),
                PointOp::Clear => None,
                PointOp::Add(delta) => {
                    let base = match effects.get(&key).or_else(|| overlay.get(&key)) {
                        Some(value) => value.clone(),
                        None => latest
                            .get(&self.keyspace, &key)
                            .map_err(|e| io_error("read value to add to", e))?
                            .map(|value| value.to_vec()),
                    };
                    Some(apply_add(base.as_deref(), *delta))
                }
            };
            effects.insert(key, value);
        }
        Ok(effects)
    }
}

struct FjallEngine {
    db: Database,
    keyspace: Keyspace,
    published_version: Arc<AtomicU64>,
    stats: Arc<SharedStats>,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<CommitJob>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FjallEngine {
    fn drop(&mut self) {
        // Closing the queue ends the committer once it has answered every queued commit; joining
        // it means the store's files are released when the last handle is gone, so the same
        // process can reopen it.
        self.jobs = None;
        let handle =
            self.committer.get_mut().map(Option::take).unwrap_or_else(|p| p.into_inner().take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("kv committer thread panicked");
        }
    }
}

#[async_trait]
impl Engine for FjallEngine {
    type Snapshot = Snapshot;

    fn snapshot_get(&self, snapshot: &Snapshot, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        snapshot
            .get(&self.keyspace, encode(key))
            .map(|value| value.map(|value| value.to_vec()))
            .map_err(|e| io_error("get", e))
    }

    fn snapshot_range<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<KeyValue, KvError>> + 'a> {
        let iter = snapshot.range(&self.keyspace, encode(begin)..encode(end));
        let pair = |guard: fjall::Guard| {
            let (key, value) = guard.into_inner().map_err(|e| io_error("range read", e))?;
            Ok((decode(&key)?, value.to_vec()))
        };
        if reverse { Box::new(iter.rev().map(pair)) } else { Box::new(iter.map(pair)) }
    }

    async fn commit(&self, request: CommitRequest) -> Result<(), KvError> {
        let stopped = || KvError::Io("fjall committer thread stopped".to_string());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(CommitJob { request, reply }).await.map_err(|_| stopped())?;
        // If this future is dropped here the commit may still happen: like FoundationDB's
        // `commit_unknown_result`, an abandoned commit has an unknown outcome.
        answer.await.map_err(|_| stopped())?
    }
}

/// The embedded durable [`Kv`]. Cheap to clone; the store closes when the last clone and the last
/// transaction are dropped.
#[derive(Clone)]
pub struct FjallKv {
    engine: Arc<FjallEngine>,
}

impl std::fmt::Debug for FjallKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallKv")
            .field("published_version", &self.engine.published_version.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FjallKv {
    /// Opens (creating if needed) the store at `config.path`, recovering committed transactions
    /// from the journal. Blocking.
    pub fn open(config: &FjallConfig) -> Result<Self, KvError> {
        config.validate().map_err(|errors| {
            KvError::Io(format!("invalid fjall config: {}", errors.join("; ")))
        })?;
        let db = Database::builder(&config.path)
            .cache_size(config.cache_bytes)
            // Every batch names its own persist mode.
            .manual_journal_persist(true)
            .open()
            .map_err(|e| io_error(&format!("open {}", config.path.display()), e))?;
        let keyspace = db
            .keyspace(KEYSPACE_NAME, KeyspaceCreateOptions::default)
            .map_err(|e| io_error("open keyspace", e))?;
        match keyspace.get(FORMAT_KEY).map_err(|e| io_error("read format marker", e))? {
            Some(format) if &*format == FORMAT_VALUE => {}
            Some(format) => {
                return Err(KvError::Io(format!(
                    "{} holds kv format {:?}, this build reads {:?}",
                    config.path.display(),
                    String::from_utf8_lossy(&format),
                    String::from_utf8_lossy(FORMAT_VALUE)
                )));
            }
            None => {
                debug_assert_eq!(FORMAT_KEY[0], META_TAG);
                let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
                batch.insert(&keyspace, FORMAT_KEY, FORMAT_VALUE);
                batch.commit().map_err(|e| io_error("write format marker", e))?;
            }
        }
        let published_version = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(SharedStats::default());
        let committer = Committer {
            db: db.clone(),
            keyspace: keyspace.clone(),
            durability: config.durability,
            group_txns_max: config.commit_group_txns_max,
            group_bytes_max: config.commit_group_bytes_max,
            history: ConflictHistory::new(
                HistoryLimits {
                    txns_max: config.conflict_history_txns_max,
                    bytes_max: config.conflict_history_bytes_max,
                },
                0,
            ),
            version: 0,
            published_version: published_version.clone(),
            stats: stats.clone(),
            failure: None,
        };
        let (jobs, queue) = mpsc::channel(config.commit_queue_txns_max);
        let handle = std::thread::Builder::new()
            .name("r3fs-kv-commit".to_string())
            .spawn(move || committer.run(queue))
            .map_err(|e| io_error("spawn committer thread", e))?;
        tracing::info!(path = %config.path.display(), durability = ?config.durability, "opened fjall kv store");
        Ok(Self {
            engine: Arc::new(FjallEngine {
                db,
                keyspace,
                published_version,
                stats,
                jobs: Some(jobs),
                committer: Mutex::new(Some(handle)),
            }),
        })
    }
}

impl FjallKv {
    /// Commit-path counters since open.
    pub fn commit_stats(&self) -> CommitStats {
        let stats = &self.engine.stats;
        CommitStats {
            groups: stats.groups.load(Ordering::Relaxed),
            transactions: stats.transactions.load(Ordering::Relaxed),
            conflicts: stats.conflicts.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl Kv for FjallKv {
    async fn begin(&self) -> Result<Box<dyn Txn>, KvError> {
        // Version first, snapshot second: the snapshot then holds at least every commit up to the
        // read version (possibly a later group too, which only makes the conflict check stricter).
        let read_version = self.engine.published_version.load(Ordering::Acquire);
        let snapshot = self.engine.db.snapshot();
        Ok(Box::new(OptimisticTxn::new(self.engine.clone(), snapshot, read_version)))
    }

    fn backend_name(&self) -> &'static str {
        "fjall"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn validate_reports_every_violation() {
        let config = FjallConfig {
            commit_group_txns_max: 0,
            commit_group_bytes_max: 1,
            ..FjallConfig::default()
        };
        let errors = config.validate().unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(FjallConfig::at("/tmp/x").validate().is_ok());
    }

    #[tokio::test]
    async fn transaction_older_than_the_history_conflicts_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let config = FjallConfig {
            durability: Durability::Buffer,
            conflict_history_txns_max: 2,
            ..FjallConfig::at(dir.path())
        };
        let kv = FjallKv::open(&config).unwrap();
        let mut old = kv.begin().await.unwrap();
        for round in 0..3u8 {
            let mut txn = kv.begin().await.unwrap();
            txn.set(b"k", &[round]).unwrap();
            txn.commit().await.unwrap();
        }
        // fjall's snapshot still serves the old view ...
        assert_eq!(old.get(b"k", crate::ReadMode::Snapshot).await.unwrap(), None);
        // ... but the history can no longer vouch for it.
        old.set(b"other", b"x").unwrap();
        assert!(matches!(old.commit().await, Err(KvError::Conflict)));
        assert_eq!(kv.commit_stats().conflicts, 1);
    }

    #[test]
    fn keys_round_trip_through_the_tag() {
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
        assert_eq!(decode(&encode(b"\x00abc")).unwrap(), b"\x00abc");
        assert!(decode(FORMAT_KEY).is_err());
        assert!(encode(b"") > FORMAT_KEY.to_vec(), "user keys sort after metadata");
    }
}
