//! FoundationDB backend (feature `fdb`), through the `foundationdb` crate (API 7.3).
//!
//! The trait's semantics are FoundationDB's, so this is a thin mapping; the differences that remain
//! are deliberate and listed in `docs/design/kv.md`:
//! - The read version is fetched in [`Kv::begin`] (FoundationDB would fetch it lazily at the first
//!   read), so "the snapshot is taken at begin" holds here as on the other backends.
//! - Every key is stored under [`FdbConfig::key_prefix`]; user keys may therefore be at most
//!   `KEY_SIZE_MAX - prefix length` bytes ([`FdbKv::key_size_max`]).
//! - Errors: retryable-and-not-committed errors (`not_committed`, `transaction_too_old`,
//!   `future_version`, ...) become [`KvError::Conflict`], which [`crate::retry::run`] retries.
//!   `commit_unknown_result` (the commit may or may not have happened) becomes [`KvError::Io`] and
//!   is *not* retried: our transactions are not required to be idempotent.
//! - An inverted range (begin > end) is an empty range, as on the other backends, instead of
//!   FoundationDB's `inverted_range` error.
//!
//! The client network thread is started once per process, on first open; call [`stop_network`]
//! before the process exits (FoundationDB cannot restart it afterwards).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{ConflictRangeType, MutationType, StreamingMode};
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};

use crate::config::FdbConfig;
use crate::{
    KEY_SIZE_MAX, KeyValue, Kv, KvError, RangeRequest, ReadMode, TXN_SIZE_MAX, Txn, VALUE_SIZE_MAX,
};

/// FoundationDB's `transaction_too_large`.
const FDB_TRANSACTION_TOO_LARGE: i32 = 2101;

/// Longest key prefix accepted, so user keys keep at least 9,000 of the 10,000 key bytes.
pub const KEY_PREFIX_SIZE_MAX: usize = 1_000;

enum Network {
    NotStarted,
    Running(NetworkAutoStop),
    Failed(String),
    Stopped,
}

static NETWORK: Mutex<Network> = Mutex::new(Network::NotStarted);

/// Starts the FoundationDB client network thread once per process.
fn ensure_network() -> Result<(), KvError> {
    let mut network = NETWORK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match &*network {
        Network::Running(_) => Ok(()),
        Network::Failed(error) => Err(KvError::Io(error.clone())),
        Network::Stopped => Err(KvError::Io(
            "the FoundationDB network was stopped; it cannot restart in this process".to_string(),
        )),
        Network::NotStarted => {
            // SAFETY: `boot` requires the returned handle to be dropped before the process exits;
            // it lives in `NETWORK` until `stop_network` drops it (an exit without that is the
            // same as an abort, which FoundationDB tolerates).
            let booted =
                FdbApiBuilder::default().build().and_then(|builder| unsafe { builder.boot() });
            match booted {
                Ok(handle) => {
                    *network = Network::Running(handle);
                    Ok(())
                }
                Err(error) => {
                    let message = format!("start the FoundationDB client network: {error}");
                    *network = Network::Failed(message.clone());
                    Err(KvError::Io(message))
                }
            }
        }
    }
}

/// Stops the FoundationDB client network thread (joins it). Call once at shutdown, after every
/// [`FdbKv`] and transaction is dropped.
pub fn stop_network() {
    let mut network = NETWORK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Network::Running(handle) = std::mem::replace(&mut *network, Network::Stopped) {
        drop(handle);
    }
}

fn map_error(error: FdbError, size_bytes: usize) -> KvError {
    if error.code() == FDB_TRANSACTION_TOO_LARGE {
        return KvError::TooLarge { what: "transaction", size: size_bytes, limit: TXN_SIZE_MAX };
    }
    if error.is_retryable_not_committed() {
        return KvError::Conflict;
    }
    if error.is_maybe_committed() {
        return KvError::Io(format!(
            "FoundationDB commit outcome unknown (error {}: {}); the transaction may have committed",
            error.code(),
            error.message()
        ));
    }
    KvError::Io(format!("FoundationDB error {}: {}", error.code(), error.message()))
}

/// The FoundationDB [`Kv`].
#[derive(Clone)]
pub struct FdbKv {
    db: Arc<Database>,
    prefix: Arc<[u8]>,
}

impl std::fmt::Debug for FdbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdbKv").field("prefix", &String::from_utf8_lossy(&self.prefix)).finish()
    }
}

impl FdbKv {
    /// Starts the client network if needed and opens the database named by the cluster file.
    pub fn open(config: &FdbConfig) -> Result<Self, KvError> {
        if config.key_prefix.len() > KEY_PREFIX_SIZE_MAX {
            return Err(KvError::TooLarge {
                what: "fdb.key_prefix",
                size: config.key_prefix.len(),
                limit: KEY_PREFIX_SIZE_MAX,
            });
        }
        ensure_network()?;
        let cluster_file =
            match &config.cluster_file {
                Some(path) => Some(path.to_str().ok_or_else(|| {
                    KvError::Io(format!("cluster file path {path:?} is not UTF-8"))
                })?),
                None => None,
            };
        let db = Database::new(cluster_file).map_err(|e| map_error(e, 0))?;
        tracing::info!(cluster_file = ?config.cluster_file, prefix = %config.key_prefix, "opened FoundationDB kv store");
        Ok(Self { db: Arc::new(db), prefix: config.key_prefix.as_bytes().into() })
    }

    /// Longest user key: [`KEY_SIZE_MAX`] less the prefix.
    pub fn key_size_max(&self) -> usize {
        KEY_SIZE_MAX - self.prefix.len()
    }
}

#[async_trait]
impl Kv for FdbKv {
    async fn begin(&self) -> Result<Box<dyn Txn>, KvError> {
        let trx = self.db.create_trx().map_err(|e| map_error(e, 0))?;
        // Fix the snapshot now rather than at the first read.
        trx.get_read_version().await.map_err(|e| map_error(e, 0))?;
        Ok(Box::new(FdbTxn {
            trx,
            prefix: self.prefix.clone(),
            key_size_max: self.key_size_max(),
            size_bytes: 0,
        }))
    }

    fn backend_name(&self) -> &'static str {
        "fdb"
    }
}

struct FdbTxn {
    trx: Transaction,
    prefix: Arc<[u8]>,
    key_size_max: usize,
    /// Bytes of mutations and read conflict ranges, FoundationDB's measure, tracked here so the
    /// limit is reported like on the other backends.
    size_bytes: usize,
}

impl FdbTxn {
    fn key(&self, key: &[u8]) -> Result<Vec<u8>, KvError> {
        if key.len() > self.key_size_max {
            return Err(KvError::TooLarge {
                what: "key",
                size: key.len(),
                limit: self.key_size_max,
            });
        }
        Ok(self.bound(key))
    }

    /// A range bound (not subject to the key limit).
    fn bound(&self, key: &[u8]) -> Vec<u8> {
        [&self.prefix[..], key].concat()
    }

    fn strip<'a>(&self, stored: &'a [u8]) -> Result<&'a [u8], KvError> {
        stored.strip_prefix(&self.prefix[..]).ok_or_else(|| {
            KvError::Io(format!("FoundationDB returned key {stored:02x?} outside the prefix"))
        })
    }

    fn charge(&mut self, bytes: usize) -> Result<(), KvError> {
        let size = self.size_bytes.saturating_add(bytes);
        if size > TXN_SIZE_MAX {
            return Err(KvError::TooLarge { what: "transaction", size, limit: TXN_SIZE_MAX });
        }
        self.size_bytes = size;
        Ok(())
    }
}

#[async_trait]
impl Txn for FdbTxn {
    async fn get(&mut self, key: &[u8], mode: ReadMode) -> Result<Option<Vec<u8>>, KvError> {
        if key.len() > self.key_size_max {
            return Ok(None);
        }
        let snapshot = mode == ReadMode::Snapshot;
        if !snapshot {
            self.charge(2 * key.len() + 1)?;
        }
        let value = self
            .trx
            .get(&self.bound(key), snapshot)
            .await
            .map_err(|e| map_error(e, self.size_bytes))?;
        Ok(value.map(|value| value.to_vec()))
    }

    async fn get_range(&mut self, request: &RangeRequest) -> Result<Vec<KeyValue>, KvError> {
        if request.begin >= request.end {
            return Ok(Vec::new());
        }
        let snapshot = request.mode == ReadMode::Snapshot;
        if !snapshot {
            self.charge(request.begin.len() + request.end.len())?;
        }
        let (begin, end) = (self.bound(&request.begin), self.bound(&request.end));
        let mut option = RangeOption {
            begin: KeySelector::first_greater_or_equal(begin.clone()),
            end: KeySelector::first_greater_or_equal(end.clone()),
            limit: (request.limit > 0).then_some(request.limit),
            reverse: request.reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((begin.as_slice(), end.as_slice()))
        };
        let mut out = Vec::new();
        let mut iteration = 1;
        loop {
            let values = self
                .trx
                .get_range(&option, iteration, snapshot)
                .await
                .map_err(|e| map_error(e, self.size_bytes))?;
            for pair in &values {
                out.push((self.strip(pair.key())?.to_vec(), pair.value().to_vec()));
            }
            match option.next_range(&values) {
                Some(next) => {
                    option = next;
                    iteration += 1;
                }
                None => break,
            }
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let stored = self.key(key)?;
        if value.len() > VALUE_SIZE_MAX {
            return Err(KvError::TooLarge {
                what: "value",
                size: value.len(),
                limit: VALUE_SIZE_MAX,
            });
        }
        self.charge(key.len() + value.len())?;
        self.trx.set(&stored, value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        let stored = self.key(key)?;
        self.charge(key.len())?;
        self.trx.clear(&stored);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        let (begin, end) = (self.key(begin)?, self.key(end)?);
        if begin >= end {
            return Ok(());
        }
        self.charge(begin.len() + end.len())?;
        self.trx.clear_range(&begin, &end);
        Ok(())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError> {
        let stored = self.key(key)?;
        self.charge(key.len() + 8)?;
        self.trx.atomic_op(&stored, &delta.to_le_bytes(), MutationType::Add);
        Ok(())
    }

    fn add_read_conflict_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if begin >= end {
            return Ok(());
        }
        self.charge(begin.len() + end.len())?;
        let (begin, end) = (self.bound(begin), self.bound(end));
        self.trx
            .add_conflict_range(&begin, &end, ConflictRangeType::Read)
            .map_err(|e| map_error(e, self.size_bytes))
    }

    async fn commit(self: Box<Self>) -> Result<(), KvError> {
        let size_bytes = self.size_bytes;
        match self.trx.commit().await {
            Ok(_) => Ok(()),
            Err(error) => Err(map_error(FdbError::from(error), size_bytes)),
        }
    }
}
