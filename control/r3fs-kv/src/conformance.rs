//! The conformance suite every [`Kv`] backend runs (feature `conformance`): one definition of the
//! semantics in `lib.rs`, checked the same way against memory, fjall and FoundationDB.
//!
//! - [`model_based`]: random interleavings of up to three transactions doing every operation,
//!   checked step by step against a `BTreeMap` model that also predicts which commits conflict.
//! - Targeted checks: [`read_your_writes`], [`snapshot_isolation`], [`write_skew_is_prevented`],
//!   [`snapshot_reads_do_not_conflict`], [`range_reads_conflict_on_phantoms`],
//!   [`atomic_add_takes_no_read_conflict`], [`explicit_read_conflict_range`],
//!   [`retry_converges_under_contention`], [`concurrent_transfers_stay_serializable`],
//!   [`retry_gives_up_and_respects_non_retryable`], [`limits`].
//! - Durability, for backends that have it: [`durability_across_reopen`], and a kill -9 test built
//!   from [`crash_child`] (run in a child process) and [`verify_after_crash`].
//!
//! Each check returns `anyhow::Result` so a failure says what diverged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, anyhow, bail, ensure};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use crate::retry::{self, RetryPolicy, Retryable};
use crate::{
    KEY_SIZE_MAX, KeyValue, Kv, KvError, RangeRequest, ReadMode, TXN_SIZE_MAX, Txn, VALUE_SIZE_MAX,
};

/// Makes fresh, empty stores of one backend.
pub trait Factory: Send + Sync {
    fn fresh(&self) -> anyhow::Result<Arc<dyn Kv>>;

    /// Longest user key the backend accepts ([`KEY_SIZE_MAX`] unless keys are prefixed).
    fn key_size_max(&self) -> usize {
        KEY_SIZE_MAX
    }
}

impl<F> Factory for F
where
    F: Fn() -> anyhow::Result<Arc<dyn Kv>> + Send + Sync,
{
    fn fresh(&self) -> anyhow::Result<Arc<dyn Kv>> {
        self()
    }
}

fn range(begin: &[u8], end: &[u8], limit: usize, reverse: bool, mode: ReadMode) -> RangeRequest {
    RangeRequest { begin: begin.to_vec(), end: end.to_vec(), limit, reverse, mode }
}

fn pairs(items: &[(&[u8], &[u8])]) -> Vec<KeyValue> {
    items.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

async fn put(kv: &dyn Kv, items: &[(&[u8], &[u8])]) -> anyhow::Result<()> {
    let mut txn = kv.begin().await?;
    for (key, value) in items {
        txn.set(key, value)?;
    }
    txn.commit().await.context("commit setup transaction")
}

async fn read(kv: &dyn Kv, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut txn = kv.begin().await?;
    Ok(txn.get(key, ReadMode::Snapshot).await?)
}

fn is_conflict(result: &Result<(), KvError>) -> bool {
    matches!(result, Err(KvError::Conflict))
}

/// A transaction sees its own sets, clears, range clears and adds in point and range reads, in
/// both directions, before commit; nobody else does until it commits.
pub async fn read_your_writes(kv: &dyn Kv) -> anyhow::Result<()> {
    put(kv, &[(b"ryw/a", b"1"), (b"ryw/b", b"2"), (b"ryw/c", b"3"), (b"ryw/d", b"4")]).await?;
    let mut txn = kv.begin().await?;
    txn.set(b"ryw/a", b"10")?;
    txn.clear(b"ryw/b")?;
    txn.clear_range(b"ryw/c", b"ryw/e")?;
    txn.set(b"ryw/d", b"40")?;
    txn.atomic_add(b"ryw/n", 7)?;
    txn.atomic_add(b"ryw/n", -2)?;
    ensure!(txn.get(b"ryw/a", ReadMode::Serializable).await?.as_deref() == Some(&b"10"[..]));
    ensure!(txn.get(b"ryw/b", ReadMode::Serializable).await?.is_none());
    ensure!(txn.get(b"ryw/c", ReadMode::Snapshot).await?.is_none());
    ensure!(txn.get(b"ryw/n", ReadMode::Snapshot).await? == Some(5i64.to_le_bytes().to_vec()));
    let expected = pairs(&[(b"ryw/a", b"10"), (b"ryw/d", b"40"), (b"ryw/n", &5i64.to_le_bytes())]);
    let got = txn.get_range(&range(b"ryw/", b"ryw0", 0, false, ReadMode::Serializable)).await?;
    ensure!(got == expected, "forward range saw {got:?}");
    let got = txn.get_range(&range(b"ryw/", b"ryw0", 2, true, ReadMode::Snapshot)).await?;
    let reversed: Vec<KeyValue> = expected.iter().rev().take(2).cloned().collect();
    ensure!(got == reversed, "reverse limited range saw {got:?}");
    ensure!(read(kv, b"ryw/a").await?.as_deref() == Some(&b"1"[..]), "uncommitted write leaked");
    txn.commit().await?;
    ensure!(read(kv, b"ryw/a").await?.as_deref() == Some(&b"10"[..]));
    ensure!(read(kv, b"ryw/c").await?.is_none());
    ensure!(read(kv, b"ryw/n").await? == Some(5i64.to_le_bytes().to_vec()));
    Ok(())
}

/// A transaction reads the state as of its begin: later commits are invisible to it, in point and
/// range reads.
pub async fn snapshot_isolation(kv: &dyn Kv) -> anyhow::Result<()> {
    put(kv, &[(b"si/a", b"old")]).await?;
    let mut reader = kv.begin().await?;
    put(kv, &[(b"si/a", b"new"), (b"si/b", b"new")]).await?;
    let mut clearer = kv.begin().await?;
    clearer.clear_range(b"si/", b"si0")?;
    clearer.commit().await?;
    ensure!(reader.get(b"si/a", ReadMode::Serializable).await?.as_deref() == Some(&b"old"[..]));
    let got = reader.get_range(&range(b"si/", b"si0", 0, false, ReadMode::Snapshot)).await?;
    ensure!(got == pairs(&[(b"si/a", b"old")]), "range saw {got:?}");
    ensure!(read(kv, b"si/a").await?.is_none(), "a new transaction sees the clear");
    Ok(())
}

/// Two transactions each read both keys and write one: whichever commits second conflicts, so the
/// invariant "at least one key is 1" holds. Checked sequentially and with both commits racing.
pub async fn write_skew_is_prevented(kv: Arc<dyn Kv>) -> anyhow::Result<()> {
    for round in 0..2 {
        put(&*kv, &[(b"skew/x", b"1"), (b"skew/y", b"1")]).await?;
        let mut first = kv.begin().await?;
        let mut second = kv.begin().await?;
        for txn in [&mut first, &mut second] {
            ensure!(
                txn.get(b"skew/x", ReadMode::Serializable).await?.as_deref() == Some(&b"1"[..])
            );
            ensure!(
                txn.get(b"skew/y", ReadMode::Serializable).await?.as_deref() == Some(&b"1"[..])
            );
        }
        first.set(b"skew/x", b"0")?;
        second.set(b"skew/y", b"0")?;
        let (a, b) = if round == 0 {
            let a = first.commit().await;
            (a, second.commit().await)
        } else {
            let a = tokio::spawn(first.commit());
            let b = tokio::spawn(second.commit());
            (a.await?, b.await?)
        };
        let committed = [&a, &b].iter().filter(|r| r.is_ok()).count();
        ensure!(committed == 1, "round {round}: exactly one must commit, got {a:?} and {b:?}");
        ensure!(is_conflict(&a) || is_conflict(&b), "the loser must see Conflict: {a:?} {b:?}");
        let x = read(&*kv, b"skew/x").await?;
        let y = read(&*kv, b"skew/y").await?;
        ensure!(
            x.as_deref() == Some(&b"1"[..]) || y.as_deref() == Some(&b"1"[..]),
            "write skew: {x:?} {y:?}"
        );
    }
    Ok(())
}

/// Snapshot reads add nothing to the conflict set.
pub async fn snapshot_reads_do_not_conflict(kv: &dyn Kv) -> anyhow::Result<()> {
    put(kv, &[(b"snap/a", b"1")]).await?;
    let mut txn = kv.begin().await?;
    txn.get(b"snap/a", ReadMode::Snapshot).await?;
    txn.get_range(&range(b"snap/", b"snap0", 0, false, ReadMode::Snapshot)).await?;
    put(kv, &[(b"snap/a", b"2"), (b"snap/b", b"2")]).await?;
    txn.set(b"snap/c", b"3")?;
    txn.commit().await.context("snapshot reads must not conflict")?;
    Ok(())
}

/// A serializable range read conflicts with a later insert into the range (a phantom), even when
/// it returned nothing; a limited read conflicts only on the part it covered.
pub async fn range_reads_conflict_on_phantoms(kv: &dyn Kv) -> anyhow::Result<()> {
    let mut txn = kv.begin().await?;
    ensure!(
        txn.get_range(&range(b"ph/", b"ph0", 0, false, ReadMode::Serializable)).await?.is_empty()
    );
    put(kv, &[(b"ph/new", b"x")]).await?;
    txn.set(b"ph-other", b"y")?;
    ensure!(
        is_conflict(&txn.commit().await),
        "phantom insert into an empty read range must conflict"
    );

    // Each case on its own prefix `lim<case>/` holding b, d, f.
    // Forward, limit 1: covers [lim/, lim/b]. Reverse, limit 1: covers [lim/f, lim0).
    let cases: [(&[u8], bool, bool); 5] = [
        (b"e", false, false),
        (b"a", false, true),
        (b"b", false, true),
        (b"c", true, false),
        (b"g", true, true),
    ];
    for (case, (insert, reverse, conflicts)) in cases.into_iter().enumerate() {
        let key = |suffix: &[u8]| [format!("lim{case}/").as_bytes(), suffix].concat();
        put(kv, &[(&key(b"b"), b"1"), (&key(b"d"), b"1"), (&key(b"f"), b"1")]).await?;
        let mut txn = kv.begin().await?;
        let got = txn
            .get_range(&range(&key(b""), &key(b"\xff"), 1, reverse, ReadMode::Serializable))
            .await?;
        let first = if reverse { key(b"f") } else { key(b"b") };
        ensure!(got == vec![(first, b"1".to_vec())], "case {case}: limited read saw {got:?}");
        put(kv, &[(&key(insert), b"2")]).await?;
        txn.set(b"lim-out", b"z")?;
        let result = txn.commit().await;
        ensure!(
            is_conflict(&result) == conflicts,
            "case {case}: limit 1, reverse {reverse}, insert {insert:?}: {result:?}"
        );
    }
    Ok(())
}

/// Concurrent atomic adds to one key both commit and sum; a serializable read of the key makes
/// the reader conflict with a concurrent add.
pub async fn atomic_add_takes_no_read_conflict(kv: &dyn Kv) -> anyhow::Result<()> {
    let mut a = kv.begin().await?;
    let mut b = kv.begin().await?;
    a.atomic_add(b"add/n", 5)?;
    b.atomic_add(b"add/n", -2)?;
    a.commit().await.context("first add")?;
    b.commit().await.context("second add must not conflict")?;
    ensure!(read(kv, b"add/n").await? == Some(3i64.to_le_bytes().to_vec()));

    let mut reader = kv.begin().await?;
    let seen = reader.get(b"add/n", ReadMode::Serializable).await?;
    ensure!(seen == Some(3i64.to_le_bytes().to_vec()));
    let mut adder = kv.begin().await?;
    adder.atomic_add(b"add/n", 1)?;
    adder.commit().await?;
    reader.atomic_add(b"add/n", 1)?;
    ensure!(
        is_conflict(&reader.commit().await),
        "a serializable read of an added key must conflict"
    );
    ensure!(read(kv, b"add/n").await? == Some(4i64.to_le_bytes().to_vec()));
    Ok(())
}

/// `add_read_conflict_range` conflicts exactly like a read of the range.
pub async fn explicit_read_conflict_range(kv: &dyn Kv) -> anyhow::Result<()> {
    for (written, conflicts) in [(&b"rc/m"[..], true), (&b"rc0"[..], false)] {
        let mut txn = kv.begin().await?;
        txn.add_read_conflict_range(b"rc/", b"rc0")?;
        txn.set(b"rc-out", b"1")?;
        put(kv, &[(written, b"1")]).await?;
        let result = txn.commit().await;
        ensure!(is_conflict(&result) == conflicts, "write {written:?}: {result:?}");
    }
    Ok(())
}

fn counter_value(value: Option<Vec<u8>>) -> anyhow::Result<u64> {
    match value {
        None => Ok(0),
        Some(bytes) => Ok(u64::from_le_bytes(
            bytes.as_slice().try_into().map_err(|_| anyhow!("counter of {} bytes", bytes.len()))?,
        )),
    }
}

/// `tasks` tasks each increment one counter once with read-modify-write through [`retry::run`];
/// every run succeeds and the counter ends at exactly `tasks`.
pub async fn retry_converges_under_contention(kv: Arc<dyn Kv>, tasks: usize) -> anyhow::Result<()> {
    let policy = RetryPolicy { attempts_max: 200, backoff_initial_ms: 1, backoff_max_ms: 20 };
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let kv = kv.clone();
        let attempts = attempts.clone();
        handles.push(tokio::spawn(async move {
            retry::run(&*kv, &policy, |txn| {
                attempts.fetch_add(1, Ordering::Relaxed);
                Box::pin(async move {
                    let value = txn.get(b"contended", ReadMode::Serializable).await?;
                    let next = counter_value(value).map_err(|e| KvError::Io(e.to_string()))? + 1;
                    // Yield so that other tasks interleave between the read and the commit.
                    tokio::task::yield_now().await;
                    txn.set(b"contended", &next.to_le_bytes())?;
                    Ok::<_, KvError>(())
                })
            })
            .await
        }));
    }
    for handle in handles {
        handle.await?.context("a retried increment failed")?;
    }
    let value = counter_value(read(&*kv, b"contended").await?)?;
    ensure!(value == tasks as u64, "counter is {value}, expected {tasks}");
    ensure!(attempts.load(Ordering::Relaxed) >= tasks);
    Ok(())
}

fn account_key(account: usize) -> Vec<u8> {
    format!("bank/{account:02}").into_bytes()
}

fn balance(value: Option<Vec<u8>>) -> Result<i64, KvError> {
    let bytes = value.ok_or_else(|| KvError::Io("account missing".to_string()))?;
    let bytes: [u8; 8] =
        bytes.as_slice().try_into().map_err(|_| KvError::Io("balance width".to_string()))?;
    Ok(i64::from_le_bytes(bytes))
}

/// Serializability under concurrent commits: `tasks` tasks move money between accounts with
/// read-check-write transactions (a transfer happens only if the source can pay), while an auditor
/// reads every account in one transaction. Every audit and the final state must show the same total
/// and no negative balance; a lost update or write skew would break one of the two.
pub async fn concurrent_transfers_stay_serializable(
    kv: Arc<dyn Kv>,
    tasks: usize,
    transfers_per_task: usize,
) -> anyhow::Result<()> {
    const ACCOUNTS: usize = 6;
    const OPENING_BALANCE: i64 = 10;
    let total = ACCOUNTS as i64 * OPENING_BALANCE;
    let mut setup = kv.begin().await?;
    for account in 0..ACCOUNTS {
        setup.set(&account_key(account), &OPENING_BALANCE.to_le_bytes())?;
    }
    setup.commit().await?;
    let policy = RetryPolicy { attempts_max: 500, backoff_initial_ms: 1, backoff_max_ms: 10 };
    let audit = move |kv: Arc<dyn Kv>| async move {
        let mut txn = kv.begin().await?;
        let all =
            txn.get_range(&range(b"bank/", b"bank0", 0, false, ReadMode::Serializable)).await?;
        let mut sum = 0;
        for (key, value) in all {
            let amount = balance(Some(value))?;
            ensure!(
                amount >= 0,
                "negative balance on {:?}: {amount}",
                String::from_utf8_lossy(&key)
            );
            sum += amount;
        }
        ensure!(sum == total, "audit saw a total of {sum}, expected {total}");
        Ok::<_, anyhow::Error>(())
    };
    let mut handles = Vec::new();
    for task in 0..tasks {
        let kv = kv.clone();
        handles.push(tokio::spawn(async move {
            for transfer in 0..transfers_per_task {
                let from = (task + transfer) % ACCOUNTS;
                let to = (task * 7 + transfer * 3 + 1) % ACCOUNTS;
                let amount = (transfer % 4) as i64 + 1;
                retry::run(&*kv, &policy, |txn| {
                    Box::pin(async move {
                        if from == to {
                            return Ok(());
                        }
                        let from_balance =
                            balance(txn.get(&account_key(from), ReadMode::Serializable).await?)?;
                        let to_balance =
                            balance(txn.get(&account_key(to), ReadMode::Serializable).await?)?;
                        tokio::task::yield_now().await;
                        if from_balance >= amount {
                            txn.set(&account_key(from), &(from_balance - amount).to_le_bytes())?;
                            txn.set(&account_key(to), &(to_balance + amount).to_le_bytes())?;
                        }
                        Ok::<_, KvError>(())
                    })
                })
                .await?;
            }
            Ok::<_, KvError>(())
        }));
    }
    let auditor = {
        let kv = kv.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                audit(kv.clone()).await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    for handle in handles {
        handle.await?.context("a transfer failed")?;
    }
    auditor.await??;
    audit(kv).await.context("final audit")
}

/// An error type of a caller: an expected outcome plus KV failures.
#[derive(Debug)]
enum CallerError {
    AlreadyExists,
    Kv(KvError),
}

impl From<KvError> for CallerError {
    fn from(error: KvError) -> Self {
        CallerError::Kv(error)
    }
}

impl Retryable for CallerError {
    fn is_retryable(&self) -> bool {
        matches!(self, CallerError::Kv(error) if error.is_retryable())
    }
}

/// [`retry::run`] stops after `attempts_max` attempts with the last conflict, and returns a
/// non-retryable error after one attempt without committing its writes.
pub async fn retry_gives_up_and_respects_non_retryable(kv: Arc<dyn Kv>) -> anyhow::Result<()> {
    let policy = RetryPolicy { attempts_max: 4, backoff_initial_ms: 1, backoff_max_ms: 2 };
    let attempts = AtomicUsize::new(0);
    let result: Result<(), KvError> = retry::run(&*kv, &policy, |txn| {
        attempts.fetch_add(1, Ordering::Relaxed);
        let kv = kv.clone();
        Box::pin(async move {
            txn.get(b"always", ReadMode::Serializable).await?;
            // Someone else writes what this attempt read, every time.
            let mut other = kv.begin().await?;
            other.atomic_add(b"always", 1)?;
            other.commit().await?;
            txn.set(b"always-out", b"x")?;
            Ok(())
        })
    })
    .await;
    ensure!(matches!(result, Err(KvError::Conflict)), "expected the last conflict, got {result:?}");
    ensure!(
        attempts.load(Ordering::Relaxed) == 4,
        "attempts: {}",
        attempts.load(Ordering::Relaxed)
    );
    ensure!(read(&*kv, b"always-out").await?.is_none());

    attempts.store(0, Ordering::Relaxed);
    let result: Result<(), CallerError> = retry::run(&*kv, &policy, |txn| {
        attempts.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            txn.set(b"exists-side-effect", b"x")?;
            Err(CallerError::AlreadyExists)
        })
    })
    .await;
    ensure!(matches!(result, Err(CallerError::AlreadyExists)), "got {result:?}");
    ensure!(attempts.load(Ordering::Relaxed) == 1, "an expected outcome must not be retried");
    ensure!(
        read(&*kv, b"exists-side-effect").await?.is_none(),
        "writes of a failed body must not commit"
    );
    Ok(())
}

/// FoundationDB's limits: the largest key (`key_size_max`, normally [`KEY_SIZE_MAX`]) and value
/// round-trip; one byte more is `TooLarge`; so is a transaction past [`TXN_SIZE_MAX`] (at the
/// write or at commit).
pub async fn limits(kv: &dyn Kv, key_size_max: usize) -> anyhow::Result<()> {
    let key = vec![b'k'; key_size_max];
    let value = vec![b'v'; VALUE_SIZE_MAX];
    put(kv, &[(&key, &value)]).await?;
    ensure!(read(kv, &key).await? == Some(value.clone()));
    let mut txn = kv.begin().await?;
    let too_long_key = vec![b'k'; key_size_max + 1];
    let result = txn.set(&too_long_key, b"");
    ensure!(matches!(result, Err(KvError::TooLarge { .. })), "key: {result:?}");
    let result = txn.set(b"k", &vec![0; VALUE_SIZE_MAX + 1]);
    ensure!(matches!(result, Err(KvError::TooLarge { .. })), "value: {result:?}");
    let result = txn.atomic_add(&too_long_key, 1);
    ensure!(matches!(result, Err(KvError::TooLarge { .. })), "add key: {result:?}");
    drop(txn);

    let mut txn = kv.begin().await?;
    let mut written = 0usize;
    let mut set_error = None;
    while written <= TXN_SIZE_MAX / VALUE_SIZE_MAX + 1 {
        if let Err(error) = txn.set(format!("big/{written:04}").as_bytes(), &value) {
            set_error = Some(error);
            break;
        }
        written += 1;
    }
    let result = match set_error {
        Some(error) => Err(error),
        None => txn.commit().await,
    };
    ensure!(matches!(result, Err(KvError::TooLarge { .. })), "oversized transaction: {result:?}");
    ensure!(read(kv, b"big/0000").await?.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Model-based test.

/// How strictly [`model_based`] holds a backend to the model's conflict predictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictCheck {
    /// Commits conflict exactly when the model says (memory, fjall: same resolver as the model).
    Exact,
    /// Predicted conflicts must happen; extra ones are tolerated (FoundationDB may conflict more,
    /// e.g. on range reads whose part was decided by the transaction's own writes).
    NoMissed,
}

/// Keys of the model's universe. Every range bound is one of them, so the model can track read
/// and write sets as sets of universe keys exactly: a non-empty intersection of two ranges
/// contains the larger begin, which is a universe key.
const UNIVERSE: &[&[u8]] = &[b"", b"\x00", b"a", b"a\x00", b"ab", b"b", b"c", b"cc", b"d", b"\xff"];

#[derive(Clone, Debug)]
enum Op {
    Get { key: usize, mode: ReadMode },
    Range { begin: usize, end: usize, limit: usize, reverse: bool, mode: ReadMode },
    Set { key: usize, value: Vec<u8> },
    Clear { key: usize },
    ClearRange { begin: usize, end: usize },
    Add { key: usize, delta: i64 },
    ReadConflict { begin: usize, end: usize },
}

#[derive(Clone, Debug)]
enum Step {
    Op { slot: usize, op: Op },
    Commit { slot: usize },
    Abort { slot: usize },
}

const SLOTS: usize = 3;

fn mode_strategy() -> impl Strategy<Value = ReadMode> {
    prop_oneof![Just(ReadMode::Serializable), Just(ReadMode::Snapshot)]
}

/// Mostly a few hot keys, so that transactions collide and operations on one key pile up.
fn key_strategy() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![3 => 2usize..6, 1 => 0..UNIVERSE.len()]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = key_strategy();
    // The end bound may be one past the universe: "no upper bound" within it.
    let bound = 0..=UNIVERSE.len();
    prop_oneof![
        3 => (key.clone(), mode_strategy()).prop_map(|(key, mode)| Op::Get { key, mode }),
        3 => (bound.clone(), bound.clone(), 0usize..4, any::<bool>(), mode_strategy())
            .prop_map(|(begin, end, limit, reverse, mode)| Op::Range { begin, end, limit, reverse, mode }),
        4 => (key.clone(), prop::collection::vec(any::<u8>(), 0..10)).prop_map(|(key, value)| Op::Set { key, value }),
        1 => key.clone().prop_map(|key| Op::Clear { key }),
        1 => (bound.clone(), bound.clone()).prop_map(|(begin, end)| Op::ClearRange { begin, end }),
        2 => (key, prop_oneof![-3i64..4, Just(i64::MAX), Just(i64::MIN)]).prop_map(|(key, delta)| Op::Add { key, delta }),
        1 => (bound.clone(), bound).prop_map(|(begin, end)| Op::ReadConflict { begin, end }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..SLOTS, op_strategy()).prop_map(|(slot, op)| Step::Op { slot, op }),
        2 => (0..SLOTS).prop_map(|slot| Step::Commit { slot }),
        1 => (0..SLOTS).prop_map(|slot| Step::Abort { slot }),
    ]
}

/// Key bytes of a bound index; `UNIVERSE.len()` is the key after every universe key.
fn bound_key(index: usize) -> Vec<u8> {
    match UNIVERSE.get(index) {
        Some(key) => key.to_vec(),
        None => b"\xff\x00".to_vec(),
    }
}

fn universe_in(begin: &[u8], end: &[u8]) -> impl Iterator<Item = Vec<u8>> {
    UNIVERSE.iter().map(|k| k.to_vec()).filter(move |k| begin <= k.as_slice() && k.as_slice() < end)
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Add(Vec<u8>, i64),
}

fn model_add(base: Option<&Vec<u8>>, delta: i64) -> Vec<u8> {
    let mut bytes = [0u8; 8];
    if let Some(base) = base {
        for (to, from) in bytes.iter_mut().zip(base.iter()) {
            *to = *from;
        }
    }
    i64::from_le_bytes(bytes).wrapping_add(delta).to_le_bytes().to_vec()
}

fn apply_mutation(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, mutation: &Mutation) {
    match mutation {
        Mutation::Set(key, value) => {
            map.insert(key.clone(), value.clone());
        }
        Mutation::Clear(key) => {
            map.remove(key);
        }
        Mutation::ClearRange(begin, end) => map.retain(|k, _| !(begin <= k && k < end)),
        Mutation::Add(key, delta) => {
            let value = model_add(map.get(key), *delta);
            map.insert(key.clone(), value);
        }
    }
}

/// One open transaction of the model.
struct ModelTxn {
    txn: Box<dyn Txn>,
    /// Commits the transaction's snapshot includes.
    read_version: usize,
    /// Snapshot plus the transaction's own writes.
    view: BTreeMap<Vec<u8>, Vec<u8>>,
    mutations: Vec<Mutation>,
    /// Keys whose value the transaction's writes decide (reads of them take no conflict).
    decided: BTreeSet<Vec<u8>>,
    reads: BTreeSet<Vec<u8>>,
    writes: BTreeSet<Vec<u8>>,
}

struct Model {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Universe keys written by each commit, in commit order.
    log: Vec<BTreeSet<Vec<u8>>>,
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

async fn run_case(
    kv: Arc<dyn Kv>,
    steps: Vec<Step>,
    check: ConflictCheck,
) -> Result<(), TestCaseError> {
    let mut model = Model { committed: BTreeMap::new(), log: Vec::new() };
    let mut slots: Vec<Option<ModelTxn>> = (0..SLOTS).map(|_| None).collect();
    let kv_error = |what: &str, error: KvError| fail(format!("{what}: {error}"));
    for (index, step) in steps.into_iter().enumerate() {
        let slot = match &step {
            Step::Op { slot, .. } | Step::Commit { slot } | Step::Abort { slot } => *slot,
        };
        if slots[slot].is_none() {
            let txn = kv.begin().await.map_err(|e| kv_error("begin", e))?;
            slots[slot] = Some(ModelTxn {
                txn,
                read_version: model.log.len(),
                view: model.committed.clone(),
                mutations: Vec::new(),
                decided: BTreeSet::new(),
                reads: BTreeSet::new(),
                writes: BTreeSet::new(),
            });
        }
        let Some(open) = slots[slot].as_mut() else { continue };
        let at = format!("step {index} (slot {slot}) {step:?}");
        match step {
            Step::Op { op, .. } => apply_op(open, op, &at).await?,
            Step::Abort { .. } => slots[slot] = None,
            Step::Commit { .. } => {
                let Some(open) = slots[slot].take() else { continue };
                let result = open.txn.commit().await;
                let read_only = open.mutations.is_empty();
                let predicted_conflict = !read_only
                    && model.log[open.read_version..]
                        .iter()
                        .any(|written| !written.is_disjoint(&open.reads));
                match (&result, predicted_conflict) {
                    (Ok(()), false) => {
                        for mutation in &open.mutations {
                            apply_mutation(&mut model.committed, mutation);
                        }
                        model.log.push(open.writes);
                    }
                    (Err(KvError::Conflict), true) => {}
                    (Err(KvError::Conflict), false) if check == ConflictCheck::NoMissed => {}
                    (result, predicted) => {
                        return Err(fail(format!(
                            "{at}: commit gave {result:?}, model predicted conflict={predicted}"
                        )));
                    }
                }
            }
        }
    }
    drop(slots);
    // The committed state, read back whole.
    let mut txn = kv.begin().await.map_err(|e| kv_error("begin final read", e))?;
    let everything = range(b"", b"\xff\x01", 0, false, ReadMode::Snapshot);
    let got = txn.get_range(&everything).await.map_err(|e| kv_error("final read", e))?;
    let expected: Vec<KeyValue> = model.committed.into_iter().collect();
    prop_assert_eq!(got, expected, "final state");
    Ok(())
}

async fn apply_op(open: &mut ModelTxn, op: Op, at: &str) -> Result<(), TestCaseError> {
    let kv_error = |error: KvError| fail(format!("{at}: {error}"));
    match op {
        Op::Get { key, mode } => {
            let key = bound_key(key);
            let got = open.txn.get(&key, mode).await.map_err(kv_error)?;
            prop_assert_eq!(got.as_ref(), open.view.get(&key), "{}", at);
            if mode == ReadMode::Serializable && !open.decided.contains(&key) {
                open.reads.insert(key);
            }
        }
        Op::Range { begin, end, limit, reverse, mode } => {
            let (begin, end) = (bound_key(begin), bound_key(end));
            let request = range(&begin, &end, limit, reverse, mode);
            let got = open.txn.get_range(&request).await.map_err(kv_error)?;
            let mut expected: Vec<KeyValue> = if begin < end {
                open.view
                    .range(begin.clone()..end.clone())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            if reverse {
                expected.reverse();
            }
            if limit > 0 {
                expected.truncate(limit);
            }
            prop_assert_eq!(&got, &expected, "{}", at);
            if mode == ReadMode::Serializable {
                let covered: Vec<Vec<u8>> = match got.last() {
                    Some((last, _)) if limit > 0 && got.len() == limit && !reverse => {
                        universe_in(&begin, &end).filter(|k| k <= last).collect()
                    }
                    Some((last, _)) if limit > 0 && got.len() == limit => {
                        universe_in(&begin, &end).filter(|k| k >= last).collect()
                    }
                    _ => universe_in(&begin, &end).collect(),
                };
                open.reads.extend(covered);
            }
        }
        Op::Set { key, value } => {
            let key = bound_key(key);
            open.txn.set(&key, &value).map_err(kv_error)?;
            open.record(Mutation::Set(key.clone(), value), [key.clone()], Some(key));
        }
        Op::Clear { key } => {
            let key = bound_key(key);
            open.txn.clear(&key).map_err(kv_error)?;
            open.record(Mutation::Clear(key.clone()), [key.clone()], Some(key));
        }
        Op::ClearRange { begin, end } => {
            let (begin, end) = (bound_key(begin), bound_key(end));
            open.txn.clear_range(&begin, &end).map_err(kv_error)?;
            if begin < end {
                let keys: Vec<Vec<u8>> = universe_in(&begin, &end).collect();
                open.decided.extend(keys.iter().cloned());
                open.record(Mutation::ClearRange(begin, end), keys, None);
            }
        }
        Op::Add { key, delta } => {
            let key = bound_key(key);
            open.txn.atomic_add(&key, delta).map_err(kv_error)?;
            open.record(Mutation::Add(key.clone(), delta), [key], None);
        }
        Op::ReadConflict { begin, end } => {
            let (begin, end) = (bound_key(begin), bound_key(end));
            open.txn.add_read_conflict_range(&begin, &end).map_err(kv_error)?;
            open.reads.extend(universe_in(&begin, &end));
        }
    }
    Ok(())
}

impl ModelTxn {
    fn record(
        &mut self,
        mutation: Mutation,
        written: impl IntoIterator<Item = Vec<u8>>,
        decided: Option<Vec<u8>>,
    ) {
        apply_mutation(&mut self.view, &mutation);
        self.mutations.push(mutation);
        self.writes.extend(written);
        self.decided.extend(decided);
    }
}

/// Random interleavings of transactions checked against the model; `cases` fresh stores. Runs
/// its own tokio runtime, so call it from a plain `#[test]`, not from async code.
pub fn model_based(factory: &dyn Factory, cases: u32, check: ConflictCheck) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let steps = prop::collection::vec(step_strategy(), 1..48);
    runner
        .run(&steps, |steps| {
            let kv = factory.fresh().map_err(|e| fail(format!("open a fresh store: {e:#}")))?;
            runtime.block_on(run_case(kv, steps, check))
        })
        .map_err(|error| anyhow!("model-based test failed: {error}"))
}

// ---------------------------------------------------------------------------------------------
// Durability.

/// Writes through one handle, drops it, reopens the same store and finds exactly the committed
/// state; then writes and reopens once more. `open` opens the store at a fixed place each call.
pub async fn durability_across_reopen(
    open: &(dyn Fn() -> anyhow::Result<Arc<dyn Kv>> + Send + Sync),
) -> anyhow::Result<()> {
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    {
        let kv = open()?;
        for i in 0u32..50 {
            let mut txn = kv.begin().await?;
            let key = format!("dur/{i:03}").into_bytes();
            txn.set(&key, &i.to_le_bytes())?;
            txn.atomic_add(b"dur-count", 1)?;
            txn.commit().await?;
            expected.insert(key, i.to_le_bytes().to_vec());
        }
        let mut txn = kv.begin().await?;
        txn.clear_range(b"dur/010", b"dur/020")?;
        txn.set(b"", b"empty key")?;
        txn.commit().await?;
        expected
            .retain(|k, _| !(k.as_slice() >= &b"dur/010"[..] && k.as_slice() < &b"dur/020"[..]));
        expected.insert(b"".to_vec(), b"empty key".to_vec());
        expected.insert(b"dur-count".to_vec(), 50i64.to_le_bytes().to_vec());
        let mut uncommitted = kv.begin().await?;
        uncommitted.set(b"dur/never", b"x")?;
        drop(uncommitted);
    }
    for round in 0..2 {
        let kv = open().with_context(|| format!("reopen #{round}"))?;
        let mut txn = kv.begin().await?;
        let got: BTreeMap<Vec<u8>, Vec<u8>> = txn
            .get_range(&range(b"", b"\xff", 0, false, ReadMode::Snapshot))
            .await?
            .into_iter()
            .collect();
        ensure!(
            got == expected,
            "after reopen #{round}: {} keys, expected {}",
            got.len(),
            expected.len()
        );
        let key = format!("dur/after-reopen-{round}").into_bytes();
        put(&*kv, &[(&key, b"y")]).await?;
        expected.insert(key, b"y".to_vec());
    }
    Ok(())
}

/// Key of the `n`-th transaction of [`crash_child`] in `run`, on `side` "a" or "b".
fn crash_key(run: &str, side: &str, n: u64) -> Vec<u8> {
    format!("crash/{run}/{side}/{n:010}").into_bytes()
}

fn crash_counter_key(run: &str) -> Vec<u8> {
    format!("crash/{run}/count").into_bytes()
}

/// Child side of the kill -9 test: commits transactions forever (at most `transactions_max`),
/// each writing two keys and adding 1 to a counter, and prints `ACK <n>` after commit `n`
/// returned. The parent kills the process at a random moment.
/// Each `run` (a label without `/`) uses its own keys, so runs can share a store.
pub async fn crash_child(kv: &dyn Kv, run: &str, transactions_max: u64) -> anyhow::Result<()> {
    use std::io::Write;
    for n in 0..transactions_max {
        let mut txn = kv.begin().await?;
        txn.set(&crash_key(run, "a", n), &n.to_le_bytes())?;
        txn.set(&crash_key(run, "b", n), &n.to_le_bytes())?;
        txn.atomic_add(&crash_counter_key(run), 1)?;
        txn.commit().await?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ACK {n}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Parent side of the kill -9 test, after reopening the store: every acknowledged transaction is
/// there, and every transaction is all-or-nothing (both keys or neither, and the counter equals the
/// number of transactions present).
pub async fn verify_after_crash(
    kv: &dyn Kv,
    run: &str,
    acknowledged: &[u64],
) -> anyhow::Result<()> {
    let mut txn = kv.begin().await?;
    let side = |side: &str| {
        let prefix = format!("crash/{run}/{side}/").into_bytes();
        let mut end = prefix.clone();
        end.push(0xff);
        range(&prefix, &end, 0, false, ReadMode::Snapshot)
    };
    let a = txn.get_range(&side("a")).await?;
    let b = txn.get_range(&side("b")).await?;
    let count = txn.get(&crash_counter_key(run), ReadMode::Snapshot).await?;
    let count = match count {
        None => 0,
        Some(bytes) => i64::from_le_bytes(bytes.as_slice().try_into().context("counter width")?),
    };
    ensure!(a.len() == b.len(), "torn transactions: {} a-keys, {} b-keys", a.len(), b.len());
    ensure!(count == a.len() as i64, "counter {count} but {} transactions present", a.len());
    let present: BTreeSet<Vec<u8>> = a.into_iter().map(|(k, _)| k).collect();
    for n in acknowledged {
        if !present.contains(&crash_key(run, "a", *n)) {
            bail!("acknowledged transaction {n} lost ({} present)", present.len());
        }
    }
    Ok(())
}

/// Runs the parent side: spawns `child` (which must run [`crash_child`] for `run` and print to stdout),
/// kills it with SIGKILL once it acknowledged `acks_before_kill` commits, then reopens the store
/// with `reopen` and runs [`verify_after_crash`]. Returns how many commits were acknowledged.
pub async fn kill_child_and_verify(
    mut child: std::process::Command,
    run: &str,
    acks_before_kill: usize,
    reopen: impl FnOnce() -> anyhow::Result<Arc<dyn Kv>>,
) -> anyhow::Result<usize> {
    use std::io::BufRead;
    child.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::inherit());
    let mut process = child.spawn().context("spawn crash child")?;
    let stdout = process.stdout.take().context("child stdout")?;
    let mut acknowledged = Vec::new();
    let mut killed = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("read child stdout")?;
        if let Some(n) = line.strip_prefix("ACK ") {
            acknowledged.push(n.trim().parse::<u64>().with_context(|| format!("parse {line:?}"))?);
        }
        if !killed && acknowledged.len() >= acks_before_kill {
            // SIGKILL: no destructor, no flush, no journal close runs in the child.
            process.kill().context("kill child")?;
            killed = true;
            // Keep reading: lines already in the pipe were printed after their commit returned.
        }
    }
    let status = process.wait().context("reap child")?;
    ensure!(killed, "child exited by itself ({status}) after {} acks", acknowledged.len());
    let kv = reopen().context("reopen after kill -9")?;
    verify_after_crash(&*kv, run, &acknowledged).await?;
    Ok(acknowledged.len())
}

/// Convenience for backends without durability tests: runs every targeted async check on fresh
/// stores from `factory`.
pub async fn run_targeted(factory: &dyn Factory) -> anyhow::Result<()> {
    read_your_writes(&*factory.fresh()?).await.context("read_your_writes")?;
    snapshot_isolation(&*factory.fresh()?).await.context("snapshot_isolation")?;
    write_skew_is_prevented(factory.fresh()?).await.context("write_skew_is_prevented")?;
    snapshot_reads_do_not_conflict(&*factory.fresh()?)
        .await
        .context("snapshot_reads_do_not_conflict")?;
    range_reads_conflict_on_phantoms(&*factory.fresh()?)
        .await
        .context("range_reads_conflict_on_phantoms")?;
    atomic_add_takes_no_read_conflict(&*factory.fresh()?)
        .await
        .context("atomic_add_takes_no_read_conflict")?;
    explicit_read_conflict_range(&*factory.fresh()?)
        .await
        .context("explicit_read_conflict_range")?;
    retry_converges_under_contention(factory.fresh()?, 16)
        .await
        .context("retry_converges_under_contention")?;
    concurrent_transfers_stay_serializable(factory.fresh()?, 8, 40)
        .await
        .context("concurrent_transfers_stay_serializable")?;
    retry_gives_up_and_respects_non_retryable(factory.fresh()?).await.context("retry_gives_up")?;
    limits(&*factory.fresh()?, factory.key_size_max()).await.context("limits")?;
    Ok(())
}
