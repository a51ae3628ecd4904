//! Running a metadata operation as one KV transaction with conflict retry, and typed reads and
//! writes of the schema's records inside it.

use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::schema::{self, DirEntry, Inode, InodeKind};
use r3fs_kv::retry::{RetryPolicy, Retryable};
use r3fs_kv::{Kv, RangeRequest, ReadMode, Txn};
use r3fs_types::{ErrorCode, InodeId};
use rand::Rng;
use std::ops::ControlFlow;
use std::time::Duration;

impl Retryable for MetaError {
    fn is_retryable(&self) -> bool {
        self.code == ErrorCode::KvConflict
    }
}

/// Runs `$body` (a block using `$tx: &mut Tx`) in a transaction with serializable reads and
/// commits it, retrying conflicts with the bounds and jittered backoff of `$policy` — the loop of
/// [`r3fs_kv::retry::run`]. A macro rather than that function: its
/// `for<'a> FnMut(&'a mut dyn Txn) -> BoxFuture<'a, _>` cannot borrow the caller's arguments (the
/// request, the user) inside the future, and async closures that can make futures rustc does not
/// prove `Send` (a known higher-ranked lifetime limitation), which tonic handlers must be.
///
/// The body is an async block: `return` and `?` leave the attempt, not the caller. It must decide
/// only from what it reads in this attempt; when it fails, its writes are dropped with the
/// transaction.
#[macro_export]
macro_rules! transact {
    ($kv:expr, $policy:expr, |$tx:ident| $body:block) => {{
        let kv: &dyn r3fs_kv::Kv = $kv;
        let policy: &r3fs_kv::retry::RetryPolicy = $policy;
        let mut attempt = 1u32;
        loop {
            let outcome = async {
                let mut txn = kv.begin().await?;
                let value = {
                    let mut tx_value = $crate::txn::Tx::serializable(&mut *txn);
                    #[allow(unused_mut)]
                    let mut $tx = &mut tx_value;
                    let result: $crate::error::MetaResult<_> = async $body.await;
                    result?
                };
                txn.commit().await?;
                $crate::error::MetaResult::Ok(value)
            }
            .await;
            match $crate::txn::after_attempt(kv, policy, attempt, outcome).await {
                ::std::ops::ControlFlow::Break(result) => break result,
                ::std::ops::ControlFlow::Continue(()) => attempt += 1,
            }
        }
    }};
}

/// Runs `$body` (a block using `$tx: &mut Tx`) on a snapshot: reads add no conflicts and the
/// transaction is never committed, so it cannot fail with a conflict.
#[macro_export]
macro_rules! snapshot {
    ($kv:expr, |$tx:ident| $body:block) => {{
        let kv: &dyn r3fs_kv::Kv = $kv;
        async {
            let mut txn = kv.begin().await?;
            let mut tx_value = $crate::txn::Tx::snapshot(&mut *txn);
            #[allow(unused_mut)]
            let mut $tx = &mut tx_value;
            let result: $crate::error::MetaResult<_> = async $body.await;
            result
        }
        .await
    }};
}

/// After an attempt of [`transact!`]: the result to return, or `Continue` after sleeping a
/// jittered backoff when the error is a conflict and attempts remain.
pub async fn after_attempt<T>(
    kv: &dyn Kv,
    policy: &RetryPolicy,
    attempt: u32,
    outcome: MetaResult<T>,
) -> ControlFlow<MetaResult<T>> {
    let error = match outcome {
        Ok(value) => return ControlFlow::Break(Ok(value)),
        Err(error) => error,
    };
    if !error.is_retryable() {
        return ControlFlow::Break(Err(error));
    }
    if attempt >= policy.attempts_max.max(1) {
        tracing::warn!(
            backend = kv.backend_name(),
            attempts = attempt,
            "meta transaction still conflicting; giving up"
        );
        return ControlFlow::Break(Err(error));
    }
    let bound_ms = policy.backoff_bound_ms(attempt);
    let sleep_ms = if bound_ms == 0 { 0 } else { rand::rng().random_range(0..=bound_ms) };
    if sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    crate::metrics::conflict_retry();
    ControlFlow::Continue(())
}

/// Typed access to the schema inside one transaction. `mode` is used for every read: write
/// transactions read serializably (their reads are their preconditions), read-only ones by
/// snapshot (they never commit, so they cannot conflict).
pub struct Tx<'a> {
    pub txn: &'a mut dyn Txn,
    pub mode: ReadMode,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl<'a> Tx<'a> {
    pub fn serializable(txn: &'a mut dyn Txn) -> Self {
        Self { txn, mode: ReadMode::Serializable }
    }

    pub fn snapshot(txn: &'a mut dyn Txn) -> Self {
        Self { txn, mode: ReadMode::Snapshot }
    }

    pub async fn inode(&mut self, id: InodeId) -> MetaResult<Option<Inode>> {
        match self.txn.get(&keys::inode_key(id), self.mode).await? {
            Some(bytes) => Ok(Some(schema::decode_inode(id, &bytes)?)),
            None => Ok(None),
        }
    }

    pub async fn inode_required(&mut self, id: InodeId) -> MetaResult<Inode> {
        self.inode(id).await?.ok_or_else(|| MetaError::not_found(format!("inode {id}")))
    }

    pub fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        Ok(self.txn.set(&keys::inode_key(inode.id), &schema::encode_inode(inode))?)
    }

    pub fn clear_inode(&mut self, id: InodeId) -> MetaResult<()> {
        Ok(self.txn.clear(&keys::inode_key(id))?)
    }

    pub async fn entry(&mut self, parent: InodeId, name: &str) -> MetaResult<Option<DirEntry>> {
        match self.txn.get(&keys::dir_entry_key(parent, name), self.mode).await? {
            Some(bytes) => Ok(Some(schema::decode_dir_entry(parent, name.to_string(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Writes an entry and, for non-directories, its link back-reference.
    pub fn put_entry(&mut self, entry: &DirEntry) -> MetaResult<()> {
        self.txn.set(
            &keys::dir_entry_key(entry.parent, &entry.name),
            &schema::encode_dir_entry(entry.inode, entry.kind),
        )?;
        if entry.kind != InodeKind::Directory {
            self.txn.set(&keys::backref_key(entry.inode, entry.parent, &entry.name), &[])?;
        }
        Ok(())
    }

    pub fn clear_entry(&mut self, entry: &DirEntry) -> MetaResult<()> {
        self.txn.clear(&keys::dir_entry_key(entry.parent, &entry.name))?;
        if entry.kind != InodeKind::Directory {
            self.txn.clear(&keys::backref_key(entry.inode, entry.parent, &entry.name))?;
        }
        Ok(())
    }

    /// Up to `limit` entries of `parent` with names after `after` (all when `None`), by name.
    pub async fn entries(
        &mut self,
        parent: InodeId,
        after: Option<&str>,
        limit: usize,
    ) -> MetaResult<Vec<DirEntry>> {
        let (begin, end) = keys::dir_entry_range(parent);
        let begin = match after {
            // The first key after `after`'s own: its key followed by a zero byte.
            Some(name) => {
                let mut key = keys::dir_entry_key(parent, name);
                key.push(0);
                key
            }
            None => begin,
        };
        let request = RangeRequest { begin, end, limit, reverse: false, mode: self.mode };
        let pairs = self.txn.get_range(&request).await?;
        let mut entries = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let (entry_parent, name) = keys::decode_dir_entry_key(&key)?;
            if entry_parent != parent {
                return Err(MetaError::corrupt(format!(
                    "range of {parent} returned an entry of {entry_parent}"
                )));
            }
            entries.push(schema::decode_dir_entry(parent, name, &value)?);
        }
        Ok(entries)
    }

    pub async fn is_empty_dir(&mut self, dir: InodeId) -> MetaResult<bool> {
        Ok(self.entries(dir, None, 1).await?.is_empty())
    }

    /// Adjusts the approximate inode count (conflict-free atomic add on a random shard).
    pub fn count_inodes(&mut self, delta: i64) -> MetaResult<()> {
        let shard = rand::random::<u8>() % INODE_COUNT_SHARDS;
        Ok(self.txn.atomic_add(&keys::inode_count_key(shard), delta)?)
    }
}

/// Shards of the inode counter: atomic adds never conflict, but one key written by every create
/// would still be one hot key on one FoundationDB storage server.
pub const INODE_COUNT_SHARDS: u8 = 16;
