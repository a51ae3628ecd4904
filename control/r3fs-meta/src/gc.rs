//! The background collector: removes the chunks and then the inodes of files whose last link is
//! gone, empties directory trees detached by recursive removes, and expires write sessions that
//! stopped being renewed.
//!
//! Every step re-reads what it acts on inside its transaction, so any number of collectors (one
//! per meta instance) may run at once: they may repeat a chunk removal (idempotent), never
//! remove an inode twice or one that got a new session.

use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::schema::{self, GcKind, InodeData, InodeKind};
use crate::store::{MetaStore, detach_tree, drop_link, read_sessions};
use crate::txn::Tx;
use r3fs_kv::{RangeRequest, ReadMode};
use r3fs_types::{ErrorCode, InodeId};
use std::sync::Arc;
use std::time::Duration;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub files_removed: u64,
    pub chunks_removed: u64,
    /// Files kept because a write session is still live.
    pub files_waiting_for_sessions: u64,
    /// Files kept because no storage client is configured to remove their chunks.
    pub files_waiting_for_storage: u64,
    pub tree_entries_removed: u64,
    pub trees_finished: u64,
    pub sessions_expired: u64,
    /// Queue entries left for later passes.
    pub queue_entries_seen: u64,
}

/// Where the next pass continues (per store instance; losing it only costs re-reading).
#[derive(Debug, Default)]
pub(crate) struct GcCursors {
    queue: std::sync::Mutex<Option<Vec<u8>>>,
    sessions: std::sync::Mutex<Option<Vec<u8>>>,
}

impl GcCursors {
    fn take(slot: &std::sync::Mutex<Option<Vec<u8>>>) -> Option<Vec<u8>> {
        slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(slot: &std::sync::Mutex<Option<Vec<u8>>>, value: Option<Vec<u8>>) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl MetaStore {
    /// One pass of the collector over at most `gc.entries_per_pass_max` queue entries and
    /// `gc.sessions_per_pass_max` sessions, continuing where the last pass stopped.
    pub async fn gc_pass(&self) -> MetaResult<GcReport> {
        let mut report = GcReport::default();
        let (begin, end) = keys::table_range(keys::GC_QUEUE);
        let start = GcCursors::take(&self.gc_cursors.queue).unwrap_or(begin);
        let limit = self.options.gc.entries_per_pass_max;
        let page = self.scan(start, end, limit).await?;
        let next = if page.len() == limit { page.last().map(|(key, _)| after(key)) } else { None };
        GcCursors::put(&self.gc_cursors.queue, next);
        // Set when storage looks unreachable: each further file would wait out the client's whole
        // retry bound too, so the rest of this pass leaves files for the next one.
        let mut storage_down = false;
        for (key, value) in page {
            report.queue_entries_seen += 1;
            let inode = keys::decode_gc_key(&key)?;
            let entry = schema::decode_gc(inode, &value)?;
            let result = match entry.kind {
                GcKind::File if storage_down => {
                    report.files_waiting_for_storage += 1;
                    continue;
                }
                GcKind::File => self.collect_file(inode, &mut report).await,
                GcKind::Tree => self.collect_tree(inode, &mut report).await,
            };
            if let Err(error) = result {
                // One bad entry must not stop the others; the next pass retries it.
                tracing::warn!(inode = %inode, %error, "garbage collection step failed");
                storage_down |= entry.kind == GcKind::File && storage_unreachable(error.code);
            }
        }
        self.expire_sessions(&mut report).await?;
        Ok(report)
    }

    async fn scan(
        &self,
        begin: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut txn = self.kv.begin().await?;
        let request = RangeRequest { begin, end, limit, reverse: false, mode: ReadMode::Snapshot };
        Ok(txn.get_range(&request).await?)
    }

    fn session_timeout_ns(&self) -> i64 {
        i64::try_from(self.options.session_timeout_ms).unwrap_or(i64::MAX / 1_000_000) * 1_000_000
    }

    async fn collect_file(&self, id: InodeId, report: &mut GcReport) -> MetaResult<()> {
        let now = self.now();
        let timeout_ns = self.session_timeout_ns();
        let (inode, sessions) = {
            let mut txn = self.kv.begin().await?;
            let mut tx = Tx::snapshot(&mut *txn);
            (tx.inode(id).await?, read_sessions(&mut tx, id).await?)
        };
        if sessions.iter().any(|s| s.renewed_ns.saturating_add(timeout_ns) > now) {
            report.files_waiting_for_sessions += 1;
            return Ok(());
        }
        if let Some(inode) = &inode {
            if inode.attr.nlink != 0 || inode.kind() != InodeKind::File {
                return Err(MetaError::corrupt(format!(
                    "{id} is queued for collection but is live"
                )));
            }
            let InodeData::File { layout, .. } = &inode.data else { unreachable!("checked kind") };
            let Some(storage) = &self.deps.storage else {
                report.files_waiting_for_storage += 1;
                return Ok(());
            };
            report.chunks_removed += storage.remove_chunks(id, layout, 0..u64::MAX).await?;
        }
        let removed = transact!(&*self.kv, &self.retry, |tx| {
            if tx.txn.get(&keys::gc_key(id), ReadMode::Serializable).await?.is_none() {
                return Ok(false);
            }
            let sessions = read_sessions(tx, id).await?;
            if sessions.iter().any(|s| s.renewed_ns.saturating_add(timeout_ns) > self.now()) {
                return Ok(false);
            }
            let (begin, end) = keys::session_range(id);
            tx.txn.clear_range(&begin, &end)?;
            tx.txn.clear(&keys::gc_key(id))?;
            if tx.inode(id).await?.is_some() {
                tx.clear_inode(id)?;
                tx.count_inodes(-1)?;
            }
            Ok(true)
        })?;
        if removed {
            report.files_removed += 1;
            tracing::debug!(inode = %id, "collected file");
        }
        Ok(())
    }

    /// Empties a detached directory in steps of `gc.tree_entries_per_txn_max` entries: child
    /// directories are detached in turn (queued as trees), files lose a link. When empty, the
    /// directory goes too.
    async fn collect_tree(&self, id: InodeId, report: &mut GcReport) -> MetaResult<()> {
        let batch = self.options.gc.tree_entries_per_txn_max;
        // Bounded per pass so one huge directory cannot starve the rest of the queue.
        for _ in 0..self.options.gc.entries_per_pass_max {
            let (removed, finished) = transact!(&*self.kv, &self.retry, |tx| {
                let now = self.now();
                if tx.txn.get(&keys::gc_key(id), ReadMode::Serializable).await?.is_none() {
                    return Ok((0, true));
                }
                let Some(dir) = tx.inode(id).await? else {
                    tx.txn.clear(&keys::gc_key(id))?;
                    return Ok((0, true));
                };
                if !dir.is_dir() || dir.attr.nlink != 0 {
                    return Err(MetaError::corrupt(format!(
                        "{id} is queued as a tree but is not a removed directory"
                    )));
                }
                let entries = tx.entries(id, None, batch).await?;
                for entry in &entries {
                    tx.clear_entry(entry)?;
                    let Some(child) = tx.inode(entry.inode).await? else {
                        tracing::error!(parent = %id, name = %entry.name, "entry names a missing inode");
                        continue;
                    };
                    if child.is_dir() {
                        detach_tree(tx, child, now)?;
                    } else {
                        drop_link(tx, child, now)?;
                    }
                }
                let finished = entries.len() < batch;
                if finished {
                    tx.clear_inode(id)?;
                    tx.txn.clear(&keys::gc_key(id))?;
                    tx.count_inodes(-1)?;
                }
                Ok((entries.len() as u64, finished))
            })?;
            report.tree_entries_removed += removed;
            if finished {
                report.trees_finished += 1;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Ends sessions not renewed within `session_timeout_ms` and settles their files' lengths
    /// from storage (the writer may have died between writing and reporting).
    async fn expire_sessions(&self, report: &mut GcReport) -> MetaResult<()> {
        let timeout_ns = self.session_timeout_ns();
        let (begin, end) = keys::table_range(keys::SESSION);
        let start = GcCursors::take(&self.gc_cursors.sessions).unwrap_or(begin);
        let limit = self.options.gc.sessions_per_pass_max;
        let page = self.scan(start, end, limit).await?;
        let next = if page.len() == limit { page.last().map(|(key, _)| after(key)) } else { None };
        GcCursors::put(&self.gc_cursors.sessions, next);
        let now = self.now();
        for (key, value) in page {
            let (inode, session) = keys::decode_session_key(&key)?;
            let record = schema::decode_session(inode, session, &value)?;
            if record.renewed_ns.saturating_add(timeout_ns) > now {
                continue;
            }
            let expired = transact!(&*self.kv, &self.retry, |tx| {
                let Some(bytes) = tx.txn.get(&key, ReadMode::Serializable).await? else {
                    return Ok(false);
                };
                let record = schema::decode_session(inode, session, &bytes)?;
                if record.renewed_ns.saturating_add(timeout_ns) > self.now() {
                    return Ok(false);
                }
                tx.txn.clear(&key)?;
                Ok(true)
            })?;
            if expired {
                report.sessions_expired += 1;
                tracing::info!(inode = %inode, session, client = %record.client, "write session expired");
                match self.settle_length(inode).await {
                    Ok(_) => {}
                    Err(e) if e.code == ErrorCode::NotFound => {}
                    Err(e) => {
                        tracing::warn!(inode = %inode, error = %e, "settling the length of an expired session failed")
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs collector passes every `gc.interval_ms` until `shutdown` resolves.
    pub async fn run_collector(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let interval = Duration::from_millis(self.options.gc.interval_ms);
        let mut waiting_for_storage_logged = 0;
        tokio::pin!(shutdown);
        loop {
            match self.gc_pass().await {
                Ok(report) => {
                    if report.files_waiting_for_storage > 0
                        && report.files_waiting_for_storage != waiting_for_storage_logged
                    {
                        tracing::warn!(
                            files = report.files_waiting_for_storage,
                            "deleted files wait for chunk removal: no storage client is configured"
                        );
                    }
                    waiting_for_storage_logged = report.files_waiting_for_storage;
                    if report.files_removed + report.trees_finished + report.sessions_expired > 0 {
                        tracing::debug!(?report, "collector pass");
                    }
                }
                Err(error) => tracing::warn!(%error, "collector pass failed"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Failure codes that say storage as a whole (not this file) could not be reached in time.
fn storage_unreachable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RetriesExhausted
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::ConnectionLost
    )
}

/// The first key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}
