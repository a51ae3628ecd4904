//! The metadata service's metrics (docs/design/monitoring.md): operations per type with their
//! latency, errors by code, and transaction conflict retries. Labels are bounded: operation
//! names are the fixed RPC names, error codes the fixed `ErrorCode` set.

use r3fs_metrics::global;
use r3fs_types::ErrorCode;
use std::time::Instant;

/// Times one RPC from construction to drop; counts it under its name.
#[derive(Debug)]
pub struct OpTimer {
    op: &'static str,
    started: Instant,
}

/// Starts timing RPC `op`.
pub fn op(op: &'static str) -> OpTimer {
    OpTimer { op, started: Instant::now() }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let labels = [("op", self.op)];
        global()
            .counter("r3fs_meta_ops_total", "Metadata RPCs handled, by operation", &labels)
            .inc();
        global()
            .latency(
                "r3fs_meta_op_latency_us",
                "Metadata RPC latency, microseconds, by operation",
                &labels,
            )
            .record_since(self.started);
    }
}

/// An operation failed with `code` (expected outcomes such as NotFound included).
pub fn error(code: ErrorCode) {
    let code = code.to_string();
    global()
        .counter(
            "r3fs_meta_op_errors_total",
            "Metadata RPCs that failed, by error code",
            &[("code", &code)],
        )
        .inc();
}

/// A transaction attempt conflicted and is retried.
pub fn conflict_retry() {
    global()
        .counter(
            "r3fs_meta_txn_conflict_retries_total",
            "Metadata transactions retried after a KV conflict",
            &[],
        )
        .inc();
}
