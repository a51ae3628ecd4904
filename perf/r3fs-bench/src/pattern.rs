//! The data r3fs-bench writes, so that a test (or a person) can check a file afterwards.
//!
//! Every 512-byte sector written at file offset `o` holds, little-endian, `o` in bytes 0..8 and
//! the file's tag ([`file_tag`]) in bytes 8..16; the other 496 bytes are a fixed pseudo-random
//! sequence ([`base_byte`]) that depends only on the position inside the sector. Buffers are
//! filled with the base pattern once and only the 16-byte stamps are rewritten per IO (32 bytes
//! per KiB), so making the data checkable costs almost nothing next to the IO, as fio's
//! fill-once buffers do. The data is not compressible-proof (it repeats every sector): r3fs does
//! not compress, and neither does the file system under the raw fio baseline.

/// Stamps are placed every this many bytes; `bs` and every offset are multiples of it.
pub const SECTOR_BYTES: usize = 512;
const STAMP_BYTES: usize = 16;
const TAG_SALT: u64 = 0x5233_4653_0000_0000; // "R3FS" in the high half: zeros never match.

/// The tag of file `file_index` of clone `clone_index` of a job.
pub fn file_tag(clone_index: u32, file_index: u32) -> u64 {
    TAG_SALT ^ (u64::from(clone_index) << 16) ^ u64::from(file_index)
}

/// The byte at position `index` (16..512) of every sector.
pub fn base_byte(index: usize) -> u8 {
    ((index as u32).wrapping_mul(2_654_435_761) >> 24) as u8
}

/// Fills a whole buffer with the base pattern (stamps are written per IO by [`stamp`]).
pub fn fill(buffer: &mut [u8]) {
    for (index, byte) in buffer.iter_mut().enumerate() {
        *byte = base_byte(index % SECTOR_BYTES);
    }
}

/// Writes the stamps of a buffer that will be written at `offset` of the file tagged `tag`.
pub fn stamp(buffer: &mut [u8], tag: u64, offset: u64) {
    debug_assert_eq!(offset % SECTOR_BYTES as u64, 0);
    for (index, sector) in buffer.chunks_exact_mut(SECTOR_BYTES).enumerate() {
        let sector_offset = offset + (index * SECTOR_BYTES) as u64;
        sector[0..8].copy_from_slice(&sector_offset.to_le_bytes());
        sector[8..STAMP_BYTES].copy_from_slice(&tag.to_le_bytes());
    }
}

/// Why a region does not hold the pattern.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("sector at file offset {sector_offset}: {what}")]
pub struct Mismatch {
    pub sector_offset: u64,
    pub what: String,
}

/// Checks that `data`, read from `offset` of the file tagged `tag`, holds the pattern.
pub fn check(data: &[u8], tag: u64, offset: u64) -> Result<(), Mismatch> {
    if !offset.is_multiple_of(SECTOR_BYTES as u64) || !data.len().is_multiple_of(SECTOR_BYTES) {
        return Err(Mismatch { sector_offset: offset, what: "region not sector-aligned".into() });
    }
    for (index, sector) in data.chunks_exact(SECTOR_BYTES).enumerate() {
        let sector_offset = offset + (index * SECTOR_BYTES) as u64;
        let mismatch = |what: String| Mismatch { sector_offset, what };
        let found_offset = u64::from_le_bytes(sector[0..8].try_into().expect("8 bytes"));
        if found_offset != sector_offset {
            return Err(mismatch(format!("stamped offset {found_offset}")));
        }
        let found_tag = u64::from_le_bytes(sector[8..16].try_into().expect("8 bytes"));
        if found_tag != tag {
            return Err(mismatch(format!("tag {found_tag:#x}, expected {tag:#x}")));
        }
        if let Some(position) = (STAMP_BYTES..SECTOR_BYTES).find(|&i| sector[i] != base_byte(i)) {
            return Err(mismatch(format!("byte {position} differs from the base pattern")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_buffers_check_and_damage_is_found() {
        let mut buffer = vec![0u8; 4096];
        fill(&mut buffer);
        stamp(&mut buffer, file_tag(1, 2), 8192);
        assert_eq!(check(&buffer, file_tag(1, 2), 8192), Ok(()));
        assert!(check(&buffer, file_tag(1, 3), 8192).is_err(), "another file's tag");
        assert!(check(&buffer, file_tag(1, 2), 4096).is_err(), "another offset");
        buffer[1000] ^= 1;
        let error = check(&buffer, file_tag(1, 2), 8192).expect_err("a flipped bit");
        assert_eq!(error.sector_offset, 8192 + 512);
        assert!(check(&[0u8; 512], file_tag(0, 0), 0).is_err(), "zeros are not the pattern");
    }
}
