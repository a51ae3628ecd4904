//! Little-endian field reader and writer for fixed message layouts.
//!
//! The reader never panics and never allocates: a short buffer is a typed error naming the field.

use crate::error::MessageError;
use bytes::BufMut;
use r3fs_types::ChunkId;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], MessageError> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(MessageError::Truncated { field });
        };
        self.buf = rest;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, MessageError> {
        Ok(self.take::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MessageError> {
        Ok(u16::from_le_bytes(self.take(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.take(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.take(field)?))
    }

    /// A chunk id in its canonical 16-byte form (big-endian inode, big-endian index: see
    /// `r3fs_types::ChunkId`), the same bytes the chunk store and the KV use.
    pub(crate) fn chunk_id(&mut self, field: &'static str) -> Result<ChunkId, MessageError> {
        Ok(ChunkId::from_bytes(self.take(field)?))
    }

    /// A reserved field: must be zero so every accepted message has exactly one encoding.
    pub(crate) fn reserved_u8(&mut self, field: &'static str) -> Result<(), MessageError> {
        match self.u8(field)? {
            0 => Ok(()),
            _ => Err(MessageError::ReservedNotZero { field }),
        }
    }

    pub(crate) fn reserved_u16(&mut self, field: &'static str) -> Result<(), MessageError> {
        match self.u16(field)? {
            0 => Ok(()),
            _ => Err(MessageError::ReservedNotZero { field }),
        }
    }

    pub(crate) fn reserved_u32(&mut self, field: &'static str) -> Result<(), MessageError> {
        match self.u32(field)? {
            0 => Ok(()),
            _ => Err(MessageError::ReservedNotZero { field }),
        }
    }

    /// A flags byte with only `known` bits allowed.
    pub(crate) fn flags(&mut self, field: &'static str, known: u8) -> Result<u8, MessageError> {
        let bits = self.u8(field)?;
        if bits & !known != 0 {
            return Err(MessageError::UnknownFlags { field, bits: bits & !known });
        }
        Ok(bits)
    }

    /// Checks that the list prefix's `count` entries of `item_len` bytes exactly fill what is
    /// left, and that `count <= max`, before the caller allocates `count` entries.
    pub(crate) fn list_count(
        &self,
        field: &'static str,
        count: u32,
        item_len: usize,
        max: u32,
    ) -> Result<usize, MessageError> {
        if count > max {
            return Err(MessageError::TooManyItems {
                field,
                count: u64::from(count),
                max: u64::from(max),
            });
        }
        let count = count as usize;
        if count.checked_mul(item_len) != Some(self.buf.len()) {
            return Err(MessageError::ListLength {
                field,
                count: count as u64,
                actual: self.buf.len(),
            });
        }
        Ok(count)
    }

    pub(crate) fn finish(self) -> Result<(), MessageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MessageError::TrailingBytes { len: self.buf.len() })
        }
    }
}

/// Writes fields in the same order and widths as [`Reader`] reads them.
pub(crate) trait PutExt: BufMut {
    fn put_chunk_id(&mut self, id: ChunkId) {
        self.put_slice(&id.to_bytes());
    }
}

impl<B: BufMut + ?Sized> PutExt for B {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_name_the_field() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(reader.u16("a"), Ok(0x0201));
        assert_eq!(reader.u32("b"), Err(MessageError::Truncated { field: "b" }));
        // A failed read consumes nothing.
        assert_eq!(reader.u8("c"), Ok(3));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn reserved_and_flags_are_strict() {
        assert_eq!(
            Reader::new(&[1]).reserved_u8("r"),
            Err(MessageError::ReservedNotZero { field: "r" })
        );
        assert_eq!(
            Reader::new(&[0b11]).flags("f", 0b01),
            Err(MessageError::UnknownFlags { field: "f", bits: 0b10 })
        );
        assert_eq!(Reader::new(&[0b01]).flags("f", 0b01), Ok(0b01));
    }

    #[test]
    fn list_count_checks_bound_before_length() {
        let reader = Reader::new(&[0u8; 8]);
        assert_eq!(reader.list_count("l", 2, 4, 2), Ok(2));
        assert!(matches!(reader.list_count("l", 3, 4, 2), Err(MessageError::TooManyItems { .. })));
        assert!(matches!(reader.list_count("l", 1, 4, 2), Err(MessageError::ListLength { .. })));
        // A count whose byte size overflows usize is a length error, not a panic.
        let huge = Reader::new(&[]);
        assert!(matches!(
            huge.list_count("l", u32::MAX, usize::MAX, u32::MAX),
            Err(MessageError::ListLength { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut reader = Reader::new(&[0, 0, 9]);
        assert_eq!(reader.u16("a"), Ok(0));
        assert_eq!(reader.finish(), Err(MessageError::TrailingBytes { len: 1 }));
    }
}
