//! Wall-clock time, behind a trait so lease and failure-detection tests run on a manual clock
//! without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to (tests, simulators).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_unix_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_unix_ms: u64) -> Self {
        Self { now_unix_ms: AtomicU64::new(start_unix_ms) }
    }

    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_unix_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.now_unix_ms.load(Ordering::SeqCst)
    }
}
