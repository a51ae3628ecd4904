//! The FUSE daemon's metrics (docs/design/monitoring.md): requests per operation and outcome,
//! and their latency per operation, in `r3fs_metrics::global()`.
//!
//! Every request the daemon answers from a tokio task runs inside [`observe`], which times it
//! and counts it as `ok` unless its reply was an error ([`failed`], called by the `fail!` macro
//! in fs.rs before `reply.error`). Labels are bounded: `op` is one of the fixed FUSE operation
//! names of fs.rs, `outcome` is `ok` or `error`. Requests rejected synchronously on the event
//! loop before any task starts (a bad name, an unknown file handle) are not counted.

use std::cell::Cell;
use std::future::Future;
use std::time::Instant;

tokio::task_local! {
    static FAILED: Cell<bool>;
}

/// Marks the request being observed on this task as failed (a no-op outside [`observe`]).
pub fn failed() {
    let _ = FAILED.try_with(|failed| failed.set(true));
}

/// Runs the request `op`'s work, then counts it by outcome and records its latency.
pub async fn observe<F: Future<Output = ()>>(op: &'static str, work: F) {
    let started = Instant::now();
    let failed = FAILED
        .scope(Cell::new(false), async move {
            work.await;
            FAILED.with(Cell::get)
        })
        .await;
    let registry = r3fs_metrics::global();
    let outcome = if failed { "error" } else { "ok" };
    registry
        .counter(
            "r3fs_fuse_ops_total",
            "FUSE requests answered, by operation and outcome",
            &[("op", op), ("outcome", outcome)],
        )
        .inc();
    registry
        .latency(
            "r3fs_fuse_op_latency_us",
            "FUSE request latency from dispatch to reply, microseconds, by operation",
            &[("op", op)],
        )
        .record_since(started);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(op: &str, outcome: &str) -> f64 {
        r3fs_metrics::global()
            .snapshot()
            .iter()
            .find(|s| {
                s.name == "r3fs_fuse_ops_total"
                    && s.label("op") == Some(op)
                    && s.label("outcome") == Some(outcome)
            })
            .map_or(0.0, |s| s.value)
    }

    /// An observed request that replies with an error is counted as one; one that does not is
    /// counted as ok; both appear in the rendered text with a latency summary.
    #[tokio::test]
    async fn requests_are_counted_by_op_and_outcome() {
        let (ok, error) = (ops("metrics_test", "ok"), ops("metrics_test", "error"));
        observe("metrics_test", async {}).await;
        observe("metrics_test", async { failed() }).await;
        observe("metrics_test", async {
            tokio::task::yield_now().await;
            failed();
        })
        .await;
        assert_eq!(ops("metrics_test", "ok"), ok + 1.0);
        assert_eq!(ops("metrics_test", "error"), error + 2.0);
        let text = r3fs_metrics::render(r3fs_metrics::global());
        assert!(
            text.contains("r3fs_fuse_ops_total{op=\"metrics_test\",outcome=\"error\"}"),
            "{text}"
        );
        assert!(text.contains("r3fs_fuse_op_latency_us_count{op=\"metrics_test\"}"), "{text}");
        // Outside `observe`, marking a failure does nothing (and does not panic).
        failed();
    }
}
