//! The transaction retry loop every caller uses: begin, run the body, commit; on a retryable error
//! (a conflict) back off and run the body again on a fresh snapshot, a bounded number of times.
//!
//! The body must be safe to run more than once: it may not have effects outside the transaction,
//! and it must decide from what it reads in *this* attempt. Expected outcomes ("file exists") are
//! returned as `Ok` data or as non-retryable errors, which end the loop at once; their writes are
//! not committed when the body returns `Err`.
//!
//! Backoff is exponential with full jitter: before attempt `n + 1` the loop sleeps a uniformly
//! random time in `[0, min(backoff_max_ms, backoff_initial_ms * 2^(n - 1))]`, so contending
//! transactions spread out instead of colliding again in lock step.

use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use serde::Deserialize;

use crate::{Kv, KvError, Txn};

/// Whether an error means "run the transaction again".
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

impl Retryable for KvError {
    fn is_retryable(&self) -> bool {
        match self {
            KvError::Conflict => true,
            KvError::TooLarge { .. } | KvError::Io(_) => false,
        }
    }
}

/// Bounds of [`run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. At least 1.
    pub attempts_max: u32,
    /// Upper bound of the random sleep before the second attempt; doubles per attempt.
    pub backoff_initial_ms: u64,
    /// Cap on the upper bound of every sleep.
    pub backoff_max_ms: u64,
}

impl Default for RetryPolicy {
    /// Ten attempts; the sleep bound grows 2, 4, 8, ... ms, capped at 1 s, so a transaction
    /// sleeps at most 2 + 4 + ... + 512 = 1,022 ms in total before giving up, well inside
    /// FoundationDB's 5 s transaction lifetime.
    fn default() -> Self {
        Self { attempts_max: 10, backoff_initial_ms: 2, backoff_max_ms: 1_000 }
    }
}

impl RetryPolicy {
    /// Every violated bound, as one message each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.attempts_max == 0 {
            errors.push("retry.attempts_max must be at least 1".to_string());
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            errors.push(format!(
                "retry.backoff_initial_ms ({}) must not exceed retry.backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Upper bound of the sleep after the `failed_attempts`-th failure (1-based).
    pub fn backoff_bound_ms(&self, failed_attempts: u32) -> u64 {
        let doublings = failed_attempts.saturating_sub(1).min(63);
        self.backoff_initial_ms.saturating_mul(1u64 << doublings).min(self.backoff_max_ms)
    }
}

/// Runs `body` in a transaction on `kv` and commits it, retrying retryable errors from begin, the
/// body's reads, the body itself or commit, at most `policy.attempts_max` attempts in total. Returns
/// the body's value from the attempt that committed, the first non-retryable error, or — when the
/// attempts are used up — the last retryable error.
///
/// ```
/// use r3fs_kv::{Kv, KvError, MemoryKv, ReadMode, RetryPolicy, retry};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let kv = MemoryKv::default();
/// let seen = retry::run(&kv, &RetryPolicy::default(), |txn| {
///     Box::pin(async move {
///         let old = txn.get(b"counter", ReadMode::Serializable).await?;
///         txn.atomic_add(b"counter", 1)?;
///         Ok::<_, KvError>(old)
///     })
/// })
/// .await?;
/// assert_eq!(seen, None);
/// # Ok::<(), KvError>(())
/// # }).unwrap();
/// ```
pub async fn run<T, E, F>(kv: &dyn Kv, policy: &RetryPolicy, mut body: F) -> Result<T, E>
where
    F: for<'a> FnMut(&'a mut dyn Txn) -> BoxFuture<'a, Result<T, E>>,
    E: From<KvError> + Retryable,
{
    let attempts_max = policy.attempts_max.max(1);
    let mut attempt = 1u32;
    loop {
        let error = match attempt_once(kv, &mut body).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !error.is_retryable() {
            return Err(error);
        }
        if attempt >= attempts_max {
            tracing::warn!(
                backend = kv.backend_name(),
                attempts = attempt,
                "kv transaction still conflicting after the last attempt; giving up"
            );
            return Err(error);
        }
        let bound_ms = policy.backoff_bound_ms(attempt);
        let sleep_ms = if bound_ms == 0 { 0 } else { rand::rng().random_range(0..=bound_ms) };
        tracing::debug!(
            backend = kv.backend_name(),
            attempt,
            sleep_ms,
            "kv transaction conflicted; retrying"
        );
        if sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        }
        attempt += 1;
    }
}

async fn attempt_once<T, E, F>(kv: &dyn Kv, body: &mut F) -> Result<T, E>
where
    F: for<'a> FnMut(&'a mut dyn Txn) -> BoxFuture<'a, Result<T, E>>,
    E: From<KvError> + Retryable,
{
    let mut txn = kv.begin().await?;
    // On Err the transaction is dropped uncommitted: its writes vanish.
    let value = body(&mut *txn).await?;
    txn.commit().await?;
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn backoff_bound_doubles_and_caps() {
        let policy = RetryPolicy { attempts_max: 5, backoff_initial_ms: 3, backoff_max_ms: 20 };
        let bounds: Vec<u64> = (1..=5).map(|n| policy.backoff_bound_ms(n)).collect();
        assert_eq!(bounds, vec![3, 6, 12, 20, 20]);
        assert_eq!(policy.backoff_bound_ms(1_000), 20, "no overflow on long runs");
    }

    #[test]
    fn validate_reports_every_violation() {
        let policy = RetryPolicy { attempts_max: 0, backoff_initial_ms: 5, backoff_max_ms: 1 };
        let errors = policy.validate().unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
