//! The ring memory format shared by the application and the server, and the four single-producer
//! single-consumer operations on it.
//!
//! One ring region (a sealed memfd, see [`crate::shm`]) holds a header, the submission queue
//! (SQ, written by the application, read by the server) and the completion queue (CQ, written by
//! the server, read by the application):
//!
//! ```text
//! offset 0    magic u64, version u32, entries u32
//! offset 64   sq_head u32   (server: next SQE it will take)
//! offset 128  sq_tail u32   (application: one past the last SQE it submitted)
//! offset 192  cq_head u32   (application: next CQE it will reap)
//! offset 256  cq_tail u32   (server: one past the last CQE it posted)
//! offset 320  entries x Sqe (48 bytes each), then entries x Cqe (16 bytes each)
//! ```
//!
//! Indices are free-running `u32` counters (wrapping); slot = index & (entries - 1). Each index has
//! one writer and lives on its own cache line. A writer publishes entries with a Release store of
//! its index; a reader loads the other side's index with Acquire before touching entries.
//!
//! Neither side trusts the other's index: a reader checks that `tail - head <= entries` and treats
//! anything else as a broken ring. The server copies each SQE out of shared memory once and
//! validates the copy (so the application cannot change it between check and use).

use std::sync::atomic::{AtomicU32, Ordering};

/// "R3FSUSRB".
pub const RING_MAGIC: u64 = 0x4252_5355_5346_3352;
pub const RING_VERSION: u32 = 1;
/// Upper bound of ring entries (SQ and CQ each).
pub const ENTRIES_MAX: u32 = 4096;

const LINE_BYTES: usize = 64;
const SQ_HEAD_OFFSET: usize = LINE_BYTES;
const SQ_TAIL_OFFSET: usize = 2 * LINE_BYTES;
const CQ_HEAD_OFFSET: usize = 3 * LINE_BYTES;
const CQ_TAIL_OFFSET: usize = 4 * LINE_BYTES;
const SQES_OFFSET: usize = 5 * LINE_BYTES;

/// Read from the file into the iov.
pub const OP_READ: u8 = 1;
/// Write from the iov into the file.
pub const OP_WRITE: u8 = 2;
/// Make the file's ring writes durable and its length visible to every client (`iov_id`,
/// `buf_offset` and `len` must be 0; `file_offset` is ignored). Completes with 0.
pub const OP_FSYNC: u8 = 3;

/// One submission queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    /// Returned unchanged in the completion.
    pub userdata: u64,
    pub file_offset: u64,
    /// Offset of the buffer inside the iov.
    pub buf_offset: u64,
    pub len: u64,
    /// The iov (server id) holding the buffer.
    pub iov_id: u32,
    /// The registered file (server id).
    pub file_id: u32,
    /// [`OP_READ`], [`OP_WRITE`] or [`OP_FSYNC`].
    pub opcode: u8,
    pub reserved: [u8; 7],
}

/// One completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// Bytes transferred (a read stops at the end of the file), or a negative errno.
    pub result: i64,
    pub userdata: u64,
}

pub const SQE_BYTES: usize = 48;
pub const CQE_BYTES: usize = 16;
const _: () = assert!(std::mem::size_of::<Sqe>() == SQE_BYTES);
const _: () = assert!(std::mem::size_of::<Cqe>() == CQE_BYTES);
const _: () = assert!(SQES_OFFSET.is_multiple_of(8) && CQ_TAIL_OFFSET + 4 <= SQES_OFFSET);
const _: () = assert!(ENTRIES_MAX.is_power_of_two());

/// Whether `entries` is a valid ring size.
pub fn entries_valid(entries: u32) -> bool {
    entries.is_power_of_two() && entries <= ENTRIES_MAX
}

/// Bytes of a ring region with `entries` entries.
pub fn ring_bytes(entries: u32) -> usize {
    SQES_OFFSET + entries as usize * (SQE_BYTES + CQE_BYTES)
}

/// Why a ring can no longer be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring header has the wrong magic, version or size")]
    BadHeader,
    #[error("the other side published an index out of bounds (head {head}, tail {tail})")]
    BadIndex { head: u32, tail: u32 },
}

/// A view of a ring region. It does not own the memory: the owner keeps the mapping alive for as
/// long as the view is used.
#[derive(Clone, Copy, Debug)]
pub struct RingView {
    base: *mut u8,
    entries: u32,
}

// SAFETY: the view only touches the region through atomics (indices) and volatile copies of
// plain-old-data entries; the region is shared memory meant for concurrent use.
unsafe impl Send for RingView {}
unsafe impl Sync for RingView {}

impl RingView {
    /// # Safety
    /// `base` must point to a mapping of at least `ring_bytes(entries)` bytes, aligned to 64, that
    /// outlives every use of the view, and `entries` must satisfy [`entries_valid`].
    pub unsafe fn new(base: *mut u8, entries: u32) -> RingView {
        debug_assert!(entries_valid(entries));
        debug_assert!((base as usize).is_multiple_of(LINE_BYTES));
        RingView { base, entries }
    }

    /// Writes the header of a fresh (zeroed) region: the application does this once.
    pub fn init(&self) {
        // SAFETY: the header lies inside the region (new's contract); nobody else uses it yet.
        unsafe {
            std::ptr::write_volatile(self.base as *mut u64, RING_MAGIC);
            std::ptr::write_volatile(self.base.add(8) as *mut u32, RING_VERSION);
            std::ptr::write_volatile(self.base.add(12) as *mut u32, self.entries);
        }
        std::sync::atomic::fence(Ordering::Release);
    }

    /// Checks the header the application wrote (the server does this before using the ring).
    pub fn check_header(&self) -> Result<(), RingError> {
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: the header lies inside the region.
        let (magic, version, entries) = unsafe {
            (
                std::ptr::read_volatile(self.base as *const u64),
                std::ptr::read_volatile(self.base.add(8) as *const u32),
                std::ptr::read_volatile(self.base.add(12) as *const u32),
            )
        };
        if magic != RING_MAGIC || version != RING_VERSION || entries != self.entries {
            return Err(RingError::BadHeader);
        }
        Ok(())
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the offsets are inside the header, 4-aligned (the base is 64-aligned), and an
        // AtomicU32 has the layout of a u32.
        unsafe { &*(self.base.add(offset) as *const AtomicU32) }
    }

    fn slot(&self, index: u32) -> usize {
        (index & (self.entries - 1)) as usize
    }

    fn sqe_ptr(&self, index: u32) -> *mut Sqe {
        // SAFETY: slot < entries, so the entry lies inside the region.
        unsafe { self.base.add(SQES_OFFSET + self.slot(index) * SQE_BYTES) as *mut Sqe }
    }

    fn cqe_ptr(&self, index: u32) -> *mut Cqe {
        let cqes = SQES_OFFSET + self.entries as usize * SQE_BYTES;
        // SAFETY: slot < entries, so the entry lies inside the region.
        unsafe { self.base.add(cqes + self.slot(index) * CQE_BYTES) as *mut Cqe }
    }

    fn checked_len(&self, head: u32, tail: u32) -> Result<u32, RingError> {
        let len = tail.wrapping_sub(head);
        if len > self.entries {
            return Err(RingError::BadIndex { head, tail });
        }
        Ok(len)
    }

    // ---- application side: SQ producer, CQ consumer ----

    /// The server's SQ head (entries it has taken).
    pub fn sq_head(&self) -> u32 {
        self.index(SQ_HEAD_OFFSET).load(Ordering::Acquire)
    }

    /// Writes the SQE at `index` (not yet visible to the server).
    pub fn write_sqe(&self, index: u32, sqe: &Sqe) {
        // SAFETY: inside the region; the server does not read this slot until `publish_sq_tail`.
        unsafe { std::ptr::write_volatile(self.sqe_ptr(index), *sqe) }
    }

    /// Makes SQEs up to `tail` visible to the server.
    pub fn publish_sq_tail(&self, tail: u32) {
        self.index(SQ_TAIL_OFFSET).store(tail, Ordering::Release);
    }

    /// Takes the next completion, if any; `head` is the application's CQ head (advanced here).
    pub fn reap(&self, head: &mut u32) -> Result<Option<Cqe>, RingError> {
        let tail = self.index(CQ_TAIL_OFFSET).load(Ordering::Acquire);
        if self.checked_len(*head, tail)? == 0 {
            return Ok(None);
        }
        // SAFETY: inside the region; the server published this slot with its Release store.
        let cqe = unsafe { std::ptr::read_volatile(self.cqe_ptr(*head)) };
        *head = head.wrapping_add(1);
        self.index(CQ_HEAD_OFFSET).store(*head, Ordering::Release);
        Ok(Some(cqe))
    }

    /// Whether the server has SQEs it has not taken yet.
    pub fn sq_pending(&self, tail: u32) -> bool {
        self.sq_head() != tail
    }

    // ---- server side: SQ consumer, CQ producer ----

    /// SQEs published and not taken, given the server's `head`.
    pub fn sq_available(&self, head: u32) -> Result<u32, RingError> {
        let tail = self.index(SQ_TAIL_OFFSET).load(Ordering::Acquire);
        self.checked_len(head, tail)
    }

    /// Completions posted and not reaped, given the server's CQ `tail`.
    pub fn cq_unreaped(&self, tail: u32) -> Result<u32, RingError> {
        let head = self.index(CQ_HEAD_OFFSET).load(Ordering::Acquire);
        self.checked_len(head, tail)
    }

    /// Copies the SQE at `head` out of shared memory and releases its slot.
    pub fn take_sqe(&self, head: &mut u32) -> Sqe {
        // SAFETY: inside the region; `sq_available` said the application published it.
        let sqe = unsafe { std::ptr::read_volatile(self.sqe_ptr(*head)) };
        *head = head.wrapping_add(1);
        self.index(SQ_HEAD_OFFSET).store(*head, Ordering::Release);
        sqe
    }

    /// Posts a completion at `tail` (the caller made sure the slot is free) and publishes it.
    pub fn post_cqe(&self, tail: &mut u32, cqe: Cqe) {
        // SAFETY: inside the region; the slot is free because unreaped + in flight <= entries.
        unsafe { std::ptr::write_volatile(self.cqe_ptr(*tail), cqe) };
        *tail = tail.wrapping_add(1);
        self.index(CQ_TAIL_OFFSET).store(*tail, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Region([u8; 320 + 8 * 64]);

    #[test]
    fn sizes_and_bounds() {
        assert_eq!(ring_bytes(8), 320 + 8 * 64);
        assert!(entries_valid(1) && entries_valid(4096) && !entries_valid(0));
        assert!(!entries_valid(3) && !entries_valid(8192));
    }

    #[test]
    fn round_trip_with_wrapping_indices_and_bad_indices_detected() {
        let mut region = Box::new(Region([0; 320 + 8 * 64]));
        // SAFETY: the region is 64-aligned, large enough for 8 entries and outlives the view.
        let ring = unsafe { RingView::new(region.0.as_mut_ptr(), 8) };
        ring.init();
        ring.check_header().expect("header");
        // Start the counters near the wrap point.
        let start = u32::MAX - 3;
        let (mut app_tail, mut app_cq_head) = (start, start);
        let (mut srv_head, mut srv_cq_tail) = (start, start);
        ring.index(SQ_HEAD_OFFSET).store(start, Ordering::Relaxed);
        ring.index(CQ_HEAD_OFFSET).store(start, Ordering::Relaxed);
        ring.index(SQ_TAIL_OFFSET).store(start, Ordering::Relaxed);
        ring.index(CQ_TAIL_OFFSET).store(start, Ordering::Relaxed);
        for round in 0..5u64 {
            for i in 0..8u64 {
                let sqe = Sqe { userdata: round * 100 + i, len: i, ..Default::default() };
                ring.write_sqe(app_tail, &sqe);
                app_tail = app_tail.wrapping_add(1);
            }
            assert_eq!(ring.sq_available(srv_head), Ok(0), "nothing visible before publish");
            ring.publish_sq_tail(app_tail);
            assert_eq!(ring.sq_available(srv_head), Ok(8));
            for i in 0..8u64 {
                let sqe = ring.take_sqe(&mut srv_head);
                assert_eq!(sqe.userdata, round * 100 + i);
                ring.post_cqe(&mut srv_cq_tail, Cqe { result: i as i64, userdata: sqe.userdata });
            }
            assert!(!ring.sq_pending(app_tail));
            assert_eq!(ring.cq_unreaped(srv_cq_tail), Ok(8));
            for i in 0..8u64 {
                let cqe = ring.reap(&mut app_cq_head).expect("ring").expect("a completion");
                assert_eq!(cqe, Cqe { result: i as i64, userdata: round * 100 + i });
            }
            assert_eq!(ring.reap(&mut app_cq_head), Ok(None));
        }
        // A tail more than `entries` ahead of the head is refused, not followed.
        ring.publish_sq_tail(srv_head.wrapping_add(9));
        assert!(matches!(ring.sq_available(srv_head), Err(RingError::BadIndex { .. })));
        ring.publish_sq_tail(srv_head.wrapping_sub(1));
        assert!(matches!(ring.sq_available(srv_head), Err(RingError::BadIndex { .. })));
        // A wrong header is refused.
        // SAFETY: same region, viewed with another size.
        let other = unsafe { RingView::new(region.0.as_mut_ptr(), 4) };
        assert_eq!(other.check_header(), Err(RingError::BadHeader));
    }
}
