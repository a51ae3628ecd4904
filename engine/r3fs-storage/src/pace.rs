//! Resync bandwidth limit (`resync_bytes_per_sec`): a virtual clock of when the link is next
//! free. Each full-chunk transfer books `bytes / rate` seconds starting at the later of now and
//! the end of the previous booking, and may not be written before its booked start. So `n`
//! transfers of `b` bytes queued at once take at least `(n - 1) x b / rate` before the last one
//! starts: the whole transfer of `B` bytes lasts at least `(B - largest frame) / rate`. Idle time
//! earns no credit (no burst after a pause).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct ResyncPacer {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    next_free: Instant,
}

impl ResyncPacer {
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        Self { rate: bytes_per_sec, next_free: now }
    }

    /// Books a transfer of `bytes` at `now`: `Some(instant)` before which it must not be
    /// written, or `None` to write it at once.
    pub fn book(&mut self, bytes: u64, now: Instant) -> Option<Instant> {
        if self.rate == 0 {
            return None;
        }
        let start = self.next_free.max(now);
        self.next_free = start + Self::cost(bytes, self.rate);
        (start > now).then_some(start)
    }

    /// Time `bytes` occupy the link at `rate` bytes per second, rounded up to nanoseconds so a
    /// sum of bookings never undercuts the limit.
    fn cost(bytes: u64, rate: u64) -> Duration {
        let nanos = (u128::from(bytes) * 1_000_000_000).div_ceil(u128::from(rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut pacer = ResyncPacer::new(0, t0);
        for _ in 0..100 {
            assert_eq!(pacer.book(64 << 20, t0), None);
        }
    }

    #[test]
    fn back_to_back_transfers_are_spaced_by_size_over_rate() {
        let t0 = Instant::now();
        let mut pacer = ResyncPacer::new(1 << 20, t0); // 1 MiB/s
        assert_eq!(pacer.book(1 << 20, t0), None, "the first goes at once");
        assert_eq!(pacer.book(512 << 10, t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(pacer.book(1 << 20, t0), Some(t0 + Duration::from_millis(1500)));
        // n frames totalling B bytes: the last starts at (B - its own size) / rate.
        let mut pacer = ResyncPacer::new(3_000_000, t0);
        let mut last = t0;
        let sizes = [1_000_000u64, 250_000, 4_000_000, 750_000, 1_000_000];
        for &b in &sizes {
            last = pacer.book(b, t0).unwrap_or(t0);
        }
        let before_last: u64 = sizes[..sizes.len() - 1].iter().sum();
        let exact = Duration::from_nanos(before_last * 1_000_000_000 / 3_000_000);
        assert!(last - t0 >= exact, "never faster than the rate");
        assert!(last - t0 <= exact + Duration::from_nanos(sizes.len() as u64), "rounding only");
    }

    #[test]
    fn idle_time_earns_no_burst() {
        let t0 = Instant::now();
        let mut pacer = ResyncPacer::new(1000, t0);
        assert_eq!(pacer.book(500, t0), None);
        // Long after the link went idle: this one goes at once, the next waits its full cost.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(pacer.book(2000, later), None);
        assert_eq!(pacer.book(1, later), Some(later + Duration::from_secs(2)));
    }

    #[test]
    fn huge_sizes_and_tiny_rates_do_not_overflow() {
        let t0 = Instant::now();
        let mut pacer = ResyncPacer::new(1, t0);
        assert_eq!(pacer.book(64 << 20, t0), None);
        assert_eq!(pacer.book(1, t0), Some(t0 + Duration::from_secs(64 << 20)));
        assert_eq!(ResyncPacer::cost(u64::MAX, 1), Duration::from_nanos(u64::MAX));
    }
}
