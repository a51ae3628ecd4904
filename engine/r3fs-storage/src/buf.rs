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

    /// The whole write path's memory handling on the real device: a payload received into pooled
    /// memory is staged through `TargetStore` from that memory (adopted, not copied), reads back
    /// bit-exact, and the buffer is recycled for the next payload. Whole-unit and ragged lengths.
    #[test]
    fn a_received_payload_is_staged_from_its_own_memory_and_recycled() {
        use crate::target::TargetStore;
        use glommio::{LocalExecutorBuilder, Placement};
        use r3fs_chunk::dma::{DmaDeviceConfig, buf_pool_stats};
        use r3fs_chunk::{ChunkStore, StoreConfig};
        use r3fs_craq::{PendingWrite, StorageOp, StorageResult, Update, Which};
        use r3fs_types::{ChainVersion, ChunkId, ChunkVersion, InodeId};

        let dir = tempfile::Builder::new().prefix("r3fs-storage-buf-").tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(DmaDeviceConfig::default().io_memory_bytes as usize)
            .make()
            .expect("executor");
        executor.run(async move {
            let device =
                DmaDevice::open(&path, &DmaDeviceConfig::default()).await.expect("open device");
            let config = StoreConfig { capacity_bytes: 256 << 20, ..StoreConfig::default() };
            let (store, flusher) = ChunkStore::open(device, config).await.expect("open store");
            glommio::spawn_local(flusher.run()).detach();
            let target = TargetStore::new(store, 1 << 20);
            for (i, len) in [(1u64, 1 << 20), (2, (1 << 20) - 1234), (3, 1 << 20)] {
                let content: Vec<u8> = (0..len).map(|b| (b as u64 * 7 + i) as u8).collect();
                // The first bytes arrived with the frame head, the rest from the "socket".
                let mut socket = futures::io::Cursor::new(content[100..].to_vec());
                let payload =
                    read_payload_into(&mut socket, &content[..100], len).await.expect("read");
                let before = buf_pool_stats();
                let chunk = ChunkId::new(InodeId(9), i);
                let write = PendingWrite {
                    version: ChunkVersion(1),
                    chain_version: ChainVersion(1),
                    update: Update::Write { offset_bytes: 0, data: payload.clone() },
                    tag: None,
                    expected: None,
                };
                let staged = target.execute(StorageOp::WritePending { chunk, write }, None).await;
                assert!(matches!(staged, StorageResult::Meta(_)), "{staged:?}");
                assert_eq!(buf_pool_stats().adopted, before.adopted + 1, "staged without a copy");
                assert_eq!(payload.as_ref(), &content[..], "the payload's bytes are untouched");
                let commit = StorageOp::Commit { chunk, version: ChunkVersion(1) };
                assert!(matches!(target.execute(commit, None).await, StorageResult::Meta(_)));
                let full = StorageOp::ReadFull { chunk, which: Which::Committed };
                let StorageResult::Data { data, .. } = target.execute(full, None).await else {
                    panic!("read failed")
                };
                assert_eq!(data.as_ref(), &content[..]);
                drop(payload);
                if i == 3 {
                    // Same size as the first payload, whose buffer went back to the pool.
                    assert!(buf_pool_stats().reused > 0);
                }
            }
        });
    }
}
