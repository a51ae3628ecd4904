//! Payload buffers.
//!
//! A frame's payload is read from the socket straight into pooled DMA memory
//! ([`r3fs_chunk::dma::PayloadBuf`], see [`read_payload_into`]) and shared as `Bytes` (forwarded
//! to the successor, checked, staged) without a copy. When the chunk store asks its device for
//! the buffer to write that payload from, [`PayloadDevice::adopting`] hands it the payload's own
//! memory: the bytes that arrived from the network are the bytes the disk write reads, and the
//! memory goes back to the shard's pool afterwards (docs/design/storage-daemon.md, "Payload
//! memory").
//!
//! [`AlignedBuf`] remains for small page-aligned scratch buffers (the O_DIRECT probe).

use bytes::Bytes;
use r3fs_chunk::Device;
use r3fs_chunk::dma::{DmaDevice, PayloadBuf};
use r3fs_chunk::mem::MemDevice;
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::ptr::NonNull;

/// Alignment of payload buffers: the O_DIRECT unit, so a device that accepts foreign buffers can
/// write them as they are.
pub const PAYLOAD_ALIGN: usize = 4096;

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
        // SAFETY: allocated with exactly this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A device whose buffers can be a received payload's own memory.
pub trait PayloadDevice: Device {
    /// Runs `alloc` (which asks the device for one buffer of `data.len()` bytes, e.g.
    /// `ChunkStore::alloc_buf`); `true` when that buffer is `data`'s own memory, so the caller
    /// must not copy `data` into it.
    fn adopting<R>(data: &[u8], alloc: impl FnOnce() -> R) -> (R, bool);
}

impl PayloadDevice for DmaDevice {
    fn adopting<R>(data: &[u8], alloc: impl FnOnce() -> R) -> (R, bool) {
        r3fs_chunk::dma::adopting(data, alloc)
    }
}

impl PayloadDevice for MemDevice {
    fn adopting<R>(_data: &[u8], alloc: impl FnOnce() -> R) -> (R, bool) {
        (alloc(), false)
    }
}

/// A received payload of `len` bytes: `buffered` bytes already read (copied from the head
/// buffer), the rest read from `reader` straight into pooled DMA memory that the chunk store can
/// write from. Every byte is overwritten before the payload is shared (a recycled buffer holds
/// an earlier payload); a failed read drops the buffer unshared.
pub async fn read_payload_into<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
    buffered: &[u8],
    len: usize,
) -> std::io::Result<Bytes> {
    use futures::AsyncReadExt;
    let mut payload = PayloadBuf::new(len);
    let have = buffered.len().min(len);
    payload.as_mut()[..have].copy_from_slice(&buffered[..have]);
    reader.read_exact(&mut payload.as_mut()[have..]).await?;
    Ok(Bytes::from_owner(payload.share()))
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
