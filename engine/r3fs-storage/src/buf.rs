//! Page-aligned payload buffers: a frame's payload is read from the socket straight into one,
//! then shared as `Bytes` (forwarded to the successor, checked, staged) without another copy on
//! the network path.

use bytes::Bytes;
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::ptr::NonNull;

/// Alignment of payload buffers: the O_DIRECT unit, so a device that accepts foreign buffers can
/// write them as they are.
pub const PAYLOAD_ALIGN: usize = 4096;

/// An owned, zero-initialised, page-aligned byte buffer.
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

impl AlignedBuf {
    /// A buffer of `len` zero bytes (at least one page is allocated so the pointer is real).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let size = len.max(1).next_multiple_of(PAYLOAD_ALIGN);
        let layout = match Layout::from_size_align(size, PAYLOAD_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("payload buffer of {len} bytes exceeds the address space"),
        };
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else { handle_alloc_error(layout) };
        // SAFETY: `raw` points at `size` writable bytes we own; zeroing makes them initialised,
        // so slices over them are sound.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) };
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
        // SAFETY: allocated in `zeroed` with exactly this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
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
}
