//! The retry policy: which failures are retried and how (pure), the backoff schedule (pure, with
//! the jitter passed in so tests are deterministic), and [`Attempts`], the per-operation tracker
//! that sleeps between attempts and gives up with R3FS-5005 RetriesExhausted.
//!
//! Every retry is counted in `r3fs_client_retries_total{reason}` and every give-up in
//! `r3fs_client_retries_exhausted_total{reason}` (docs/design/monitoring.md); the reason is one of
//! the fixed strings of [`retry_reason`], so the label set stays bounded.

use crate::config::RetryConfig;
use crate::error::ClientError;
use r3fs_types::ErrorCode;
use std::time::{Duration, Instant};

/// Which kind of storage request failed: the same code can mean different things for a write
/// (sent to the head) and a read (any serving replica).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// An update (write, truncate, remove chunk) or RemoveChunks, sent to the chain head.
    Update,
    /// A batch read or a last-chunk query, sent to a serving replica.
    Read,
}

/// What to do about one failure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disposition {
    /// Try again (after a backoff) if the bounds allow.
    pub retry: bool,
    /// The routing the request was built from is probably stale: refresh it first.
    pub refresh_routing: bool,
    /// For reads: prefer another replica than the one that failed.
    pub other_replica: bool,
}

const FAIL: Disposition =
    Disposition { retry: false, refresh_routing: false, other_replica: false };
const BACKOFF: Disposition =
    Disposition { retry: true, refresh_routing: false, other_replica: false };
const REFRESH: Disposition =
    Disposition { retry: true, refresh_routing: true, other_replica: true };
const ELSEWHERE: Disposition =
    Disposition { retry: true, refresh_routing: false, other_replica: true };

/// The retry rules, one place for all of them.
pub fn disposition(code: ErrorCode, op: Op) -> Disposition {
    use ErrorCode as E;
    match code {
        // The routing moved: the target is no longer head/serving, or the chain version changed.
        // A storage daemon answers TargetNotFound / ChainNotFound for a target it no longer
        // hosts (dropped after going offline): also a sign of stale routing.
        E::StaleChainVersion
        | E::NotHead
        | E::TargetNotServing
        | E::ChainNotFound
        | E::TargetNotFound => REFRESH,
        // The replica cannot answer this one right now; another replica (for reads: the tail
        // commits first) or a later attempt can.
        E::ChunkNotCommitted => ELSEWHERE,
        // Data damaged on the way or on one replica's disk: another copy may be fine. A corrupt
        // chunk is final for a write (the head refuses to build on it).
        E::ChecksumMismatch | E::FrameChecksum => ELSEWHERE,
        E::ChunkCorrupt if op == Op::Read => ELSEWHERE,
        // The connection or the server is in trouble.
        E::ConnectionLost | E::Timeout | E::Unavailable => match op {
            Op::Read => ELSEWHERE,
            Op::Update => BACKOFF,
        },
        E::Busy | E::ChunkBusy => match op {
            Op::Read => ELSEWHERE,
            Op::Update => BACKOFF,
        },
        // A fenced daemon lost mgmtd: its chain will be reconfigured (refresh) or it recovers.
        E::Fenced => REFRESH,
        _ => FAIL,
    }
}

/// The metric label for a failure that is retried: a fixed, small set of strings.
pub fn retry_reason(code: ErrorCode) -> &'static str {
    use ErrorCode as E;
    match code {
        E::StaleChainVersion
        | E::NotHead
        | E::TargetNotServing
        | E::ChainNotFound
        | E::TargetNotFound
        | E::Fenced
        | E::NotPrimary => "stale_routing",
        E::ChunkNotCommitted => "not_committed",
        E::ChecksumMismatch | E::FrameChecksum | E::ChunkCorrupt => "checksum",
        E::ConnectionLost | E::Unavailable => "connection",
        E::Timeout => "timeout",
        E::Busy | E::ChunkBusy => "busy",
        _ => "other",
    }
}

fn count_retry(name: &str, help: &str, code: ErrorCode) {
    r3fs_metrics::global().counter(name, help, &[("reason", retry_reason(code))]).inc();
}

/// The pure backoff schedule: after `failures` (>= 1) failed attempts, wait between half and all
/// of `min(initial * 2^(failures-1), max)`; `random` picks where (callers pass a random number;
/// tests pass fixed ones).
pub fn backoff_delay(config: &RetryConfig, failures: u32, random: u64) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let bound =
        config.backoff_initial_ms.saturating_mul(1u64 << doublings).min(config.backoff_max_ms);
    let half = bound / 2;
    let jitter = if bound - half == 0 { 0 } else { random % (bound - half + 1) };
    Duration::from_millis(half + jitter)
}

/// Counts one operation's attempts and decides when to give up.
#[derive(Debug)]
pub struct Attempts<'a> {
    config: &'a RetryConfig,
    started: Instant,
    failures: u32,
}

impl<'a> Attempts<'a> {
    pub fn new(config: &'a RetryConfig) -> Self {
        Self { config, started: Instant::now(), failures: 0 }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a retryable failure. Sleeps the backoff and returns `Ok` if another attempt is
    /// allowed, else the RetriesExhausted error naming this failure.
    pub async fn failed(&mut self, code: ErrorCode, detail: &str) -> Result<(), ClientError> {
        self.failures += 1;
        let delay = backoff_delay(self.config, self.failures, rand::random());
        let elapsed = self.started.elapsed();
        let elapsed_max = Duration::from_millis(self.config.elapsed_max_ms);
        if self.failures >= self.config.attempts_max || elapsed + delay > elapsed_max {
            count_retry(
                "r3fs_client_retries_exhausted_total",
                "Client operations that gave up after the retry bounds, by last failure",
                code,
            );
            return Err(ClientError::RetriesExhausted {
                attempts: self.failures,
                elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                last_code: code,
                detail: detail.to_string(),
            });
        }
        tracing::debug!(%code, failures = self.failures, ?delay, detail, "retrying");
        count_retry("r3fs_client_retries_total", "Client request retries, by failure reason", code);
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Time left before `elapsed_max_ms`.
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.config.elapsed_max_ms).saturating_sub(self.started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> RetryConfig {
        RetryConfig {
            attempts_max: 4,
            backoff_initial_ms: 10,
            backoff_max_ms: 1_000,
            elapsed_max_ms: 60_000,
        }
    }

    #[test]
    fn transient_codes_are_retried_and_final_ones_are_not() {
        for op in [Op::Read, Op::Update] {
            for code in [
                ErrorCode::StaleChainVersion,
                ErrorCode::ChunkNotCommitted,
                ErrorCode::ConnectionLost,
                ErrorCode::Timeout,
                ErrorCode::NotHead,
                ErrorCode::TargetNotServing,
                ErrorCode::ChunkBusy,
            ] {
                assert!(disposition(code, op).retry, "{code} {op:?}");
            }
            for code in [
                ErrorCode::NoSpace,
                ErrorCode::InvalidArgument,
                ErrorCode::PermissionDenied,
                ErrorCode::MalformedFrame,
                ErrorCode::Internal,
            ] {
                assert!(!disposition(code, op).retry, "{code} {op:?}");
            }
        }
        assert!(disposition(ErrorCode::StaleChainVersion, Op::Update).refresh_routing);
        assert!(disposition(ErrorCode::ChunkCorrupt, Op::Read).other_replica);
        assert!(!disposition(ErrorCode::ChunkCorrupt, Op::Update).retry);
    }

    /// Every code the ErrorCode table calls non-retryable is also final here, except a corrupt
    /// chunk on a read (another replica holds a good copy) and a storage target that does not
    /// know the chain or target (the client's routing is older than the daemon's).
    #[test]
    fn never_retries_what_the_code_table_calls_final() {
        for &code in ErrorCode::ALL {
            for op in [Op::Read, Op::Update] {
                let d = disposition(code, op);
                if d.retry && !code.is_retryable() {
                    assert!(
                        (code, op) == (ErrorCode::ChunkCorrupt, Op::Read)
                            || matches!(code, ErrorCode::ChainNotFound | ErrorCode::TargetNotFound),
                        "{code} {op:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = config();
        // random = 0 gives the lower half exactly.
        assert_eq!(backoff_delay(&c, 1, 0), Duration::from_millis(5));
        assert_eq!(backoff_delay(&c, 2, 0), Duration::from_millis(10));
        assert_eq!(backoff_delay(&c, 3, 0), Duration::from_millis(20));
        assert_eq!(backoff_delay(&c, 20, 0), Duration::from_millis(500));
        assert_eq!(backoff_delay(&c, 200, u64::MAX - 1), backoff_delay(&c, 200, u64::MAX - 1));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_and_whole_bound(failures in 1u32..100, random in any::<u64>(),
                initial in 1u64..500, extra in 0u64..5000) {
            let c = RetryConfig { attempts_max: 3, backoff_initial_ms: initial, backoff_max_ms: initial + extra, elapsed_max_ms: 100_000 };
            let delay = backoff_delay(&c, failures, random).as_millis() as u64;
            let bound = initial.saturating_mul(1u64 << (failures - 1).min(30)).min(initial + extra);
            prop_assert!(delay <= bound);
            prop_assert!(delay >= bound / 2);
        }
    }

    #[tokio::test]
    async fn attempts_give_up_after_the_bound_with_the_last_failure() {
        let c = RetryConfig {
            attempts_max: 3,
            backoff_initial_ms: 1,
            backoff_max_ms: 2,
            elapsed_max_ms: 10_000,
        };
        let mut attempts = Attempts::new(&c);
        attempts.failed(ErrorCode::ChunkBusy, "a").await.expect("first retry allowed");
        attempts.failed(ErrorCode::ChunkBusy, "b").await.expect("second retry allowed");
        let error = attempts.failed(ErrorCode::ConnectionLost, "c").await.expect_err("bound");
        match error {
            ClientError::RetriesExhausted { attempts, last_code, detail, .. } => {
                assert_eq!(
                    (attempts, last_code, detail.as_str()),
                    (3, ErrorCode::ConnectionLost, "c")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn attempts_give_up_after_the_elapsed_bound() {
        let c = RetryConfig {
            attempts_max: 1000,
            backoff_initial_ms: 40,
            backoff_max_ms: 40,
            elapsed_max_ms: 50,
        };
        let mut attempts = Attempts::new(&c);
        let mut rounds = 0;
        while attempts.failed(ErrorCode::Timeout, "t").await.is_ok() {
            rounds += 1;
            assert!(rounds < 10, "the elapsed bound must stop the loop");
        }
        assert!(attempts.failures() >= 1);
    }

    fn counted(name: &str, reason: &str) -> u64 {
        r3fs_metrics::global()
            .snapshot()
            .iter()
            .find(|s| s.name == name && s.label("reason") == Some(reason))
            .map_or(0, |s| s.value as u64)
    }

    /// Retries and give-ups are counted by reason and appear in the rendered text. The global
    /// registry is shared by the tests of this binary: compare before/after with `>=`.
    #[tokio::test]
    async fn retries_are_counted_by_reason() {
        let c = RetryConfig {
            attempts_max: 2,
            backoff_initial_ms: 1,
            backoff_max_ms: 2,
            elapsed_max_ms: 10_000,
        };
        let stale = counted("r3fs_client_retries_total", "stale_routing");
        let exhausted = counted("r3fs_client_retries_exhausted_total", "not_committed");
        let mut attempts = Attempts::new(&c);
        attempts.failed(ErrorCode::NotHead, "moved").await.expect("first retry allowed");
        attempts.failed(ErrorCode::ChunkNotCommitted, "x").await.expect_err("bound");
        assert!(counted("r3fs_client_retries_total", "stale_routing") > stale);
        assert!(counted("r3fs_client_retries_exhausted_total", "not_committed") > exhausted);
        let text = r3fs_metrics::render(r3fs_metrics::global());
        assert!(text.contains("r3fs_client_retries_total{reason=\"stale_routing\"}"), "{text}");
        assert!(text.contains("# TYPE r3fs_client_retries_total counter"), "{text}");
    }

    #[test]
    fn retry_reasons_are_a_fixed_small_set() {
        let reasons: std::collections::BTreeSet<_> =
            ErrorCode::ALL.iter().map(|&code| retry_reason(code)).collect();
        assert!(reasons.len() <= 8, "{reasons:?}");
        assert_eq!(retry_reason(ErrorCode::StaleChainVersion), "stale_routing");
        assert_eq!(retry_reason(ErrorCode::ConnectionLost), "connection");
    }
}
