//! Page-aligned payload buffers: a frame's payload is read from the socket straight into one,
//! then shared as `Bytes` (forwarded to the successor, checked, staged) without another copy on
//! the network path.
//!
//! Payload buffers are recycled per thread ([`AlignedBuf::for_payload`]): allocating a fresh
//! 4 MiB buffer per request cost the daemon more than half its CPU in page faults, zeroing and
//! `munmap` (measured with `perf record` on the datapath benchmark). A shard's executor thread
//! keeps up to [`POOL_BYTES_MAX`] of released buffers and hands them out again.

use bytes::Bytes;
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::RefCell;
use std::ptr::NonNull;

/// Alignment of payload buffers: the O_DIRECT unit, so a device that accepts foreign buffers can
/// write them as they are.
pub const PAYLOAD_ALIGN: usize = 4096;

/// Payloads at least this large take pooled buffers; smaller ones are cheap to allocate.
pub const POOLED_BYTES_MIN: usize = 64 << 10;

/// Released buffers a thread keeps for reuse, in bytes.
pub const POOL_BYTES_MAX: usize = 64 << 20;

const _: () = assert!(POOLED_BYTES_MIN.is_power_of_two() && POOLED_BYTES_MIN >= PAYLOAD_ALIGN);

/// An owned, initialised, page-aligned byte buffer.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like a Box<[u8]>); nothing is shared.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the bytes.
unsafe impl Sync for AlignedBuf {}

/// Released allocations of one thread, by size (each size a power of two).
struct Pool {
    free: Vec<(NonNull<u8>, Layout)>,
    bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, layout) in self.free.drain(..) {
            // SAFETY: each entry was allocated with its layout and is owned by the pool only.
            unsafe { dealloc(ptr.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { free: Vec::new(), bytes: 0 }) };
}

fn layout_of(size: usize) -> Layout {
    match Layout::from_size_align(size, PAYLOAD_ALIGN) {
        Ok(layout) => layout,
        Err(_) => panic!("payload buffer of {size} bytes exceeds the address space"),
    }
}

/// `size` freshly allocated, zeroed bytes.
fn allocate_zeroed(layout: Layout) -> NonNull<u8> {
    // SAFETY: callers pass layouts with a non-zero size.
    let raw = unsafe { alloc(layout) };
    let Some(ptr) = NonNull::new(raw) else { handle_alloc_error(layout) };
    // SAFETY: `raw` points at `layout.size()` writable bytes we own; zeroing makes them
    // initialised, so slices over them are sound (a recycled buffer stays initialised).
    unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, layout.size()) };
    ptr
}

impl AlignedBuf {
    /// A buffer of `len` zero bytes (at least one page is allocated so the pointer is real).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let layout = layout_of(len.max(1).next_multiple_of(PAYLOAD_ALIGN));
        AlignedBuf { ptr: allocate_zeroed(layout), len, layout }
    }

    /// A buffer of `len` bytes for a payload the caller overwrites completely before anyone reads
    /// it: recycled from this thread's pool when one fits (its bytes are a previous payload's),
    /// otherwise fresh and zeroed. Returned to the pool when the last `Bytes` view drops.
    pub fn for_payload(len: usize) -> AlignedBuf {
        if len < POOLED_BYTES_MIN {
            return AlignedBuf::zeroed(len);
        }
        let layout = layout_of(len.next_power_of_two());
        let reused = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let index = pool.free.iter().position(|(_, l)| *l == layout)?;
            let (ptr, _) = pool.free.swap_remove(index);
            pool.bytes -= layout.size();
            Some(ptr)
        });
        let ptr = reused.ok().flatten().unwrap_or_else(|| allocate_zeroed(layout));
        AlignedBuf { ptr, len, layout }
    }

    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes live at `ptr` for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let (ptr, layout) = (self.ptr, self.layout);
        if layout.size() >= POOLED_BYTES_MIN && layout.size().is_power_of_two() {
            // Keep it for the next payload of this thread unless the pool is full (or the
            // thread is exiting and its pool is gone).
            let kept = POOL.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.bytes + layout.size() > POOL_BYTES_MAX {
                    return false;
                }
                pool.bytes += layout.size();
                pool.free.push((ptr, layout));
                true
            });
            if kept == Ok(true) {
                return;
            }
        }
        // SAFETY: allocated with exactly this layout, freed once (not kept by the pool).
        unsafe { dealloc(ptr.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_shared_without_copy() {
        let mut buf = AlignedBuf::zeroed(10_000);
        assert_eq!(buf.as_ref().as_ptr() as usize % PAYLOAD_ALIGN, 0);
        assert!(buf.as_ref().iter().all(|b| *b == 0));
        buf.as_mut()[9_999] = 7;
        let ptr = buf.as_ref().as_ptr();
        let bytes = buf.into_bytes();
        assert_eq!(bytes.as_ptr(), ptr, "Bytes views the same memory");
        assert_eq!((bytes.len(), bytes[9_999]), (10_000, 7));
        let slice = bytes.slice(4096..);
        drop(bytes);
        assert_eq!(slice.len(), 10_000 - 4096);
        assert_eq!(AlignedBuf::zeroed(0).as_ref().len(), 0);
    }

    #[test]
    fn payload_buffers_are_recycled_within_the_pool_bound() {
        let first = AlignedBuf::for_payload(4 << 20);
        let ptr = first.as_ref().as_ptr();
        assert_eq!(ptr as usize % PAYLOAD_ALIGN, 0);
        drop(first.into_bytes());
        // The same allocation comes back for the next payload of that size class.
        let mut again = AlignedBuf::for_payload(3 << 20);
        assert_eq!(again.as_ref().as_ptr(), ptr);
        assert_eq!(again.as_mut().len(), 3 << 20);
        // Holding more than the bound: the excess is freed, the pool stays within it.
        let held: Vec<AlignedBuf> =
            (0..POOL_BYTES_MAX / (4 << 20) + 4).map(|_| AlignedBuf::for_payload(4 << 20)).collect();
        drop(held);
        drop(again);
        let pooled = POOL.with(|pool| pool.borrow().bytes);
        assert!(pooled <= POOL_BYTES_MAX, "{pooled}");
        assert!(pooled >= 4 << 20, "{pooled}");
        // Small payloads are plain allocations.
        assert_eq!(AlignedBuf::for_payload(100).as_ref().len(), 100);
    }
}
