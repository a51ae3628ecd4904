//! CRC32C helpers: fast concatenation of unit checksums and checksums of zero runs.
//!
//! `crc32c(A ‖ B) = shift_{|B|}(crc32c(A)) ^ crc32c(B)`, where `shift_n` is linear over GF(2).
//! The crc32c crate's `crc32c_combine` computes `shift_n` in O(log n) matrix squarings (about a
//! microsecond); folding the 1024 unit checksums of a 4 MiB chunk that way would cost a
//! millisecond. [`UnitShift`] tabulates `shift_4096` once (four 256-entry tables), so folding a
//! unit costs four lookups.

use crate::format::UNIT_BYTES;
use std::sync::OnceLock;

/// `shift_{UNIT_BYTES}` as byte-indexed lookup tables.
struct UnitShift {
    tables: [[u32; 256]; 4],
}

impl UnitShift {
    fn build() -> UnitShift {
        // The image of each basis vector; linearity gives the rest.
        let mut basis = [0u32; 32];
        for (bit, image) in basis.iter_mut().enumerate() {
            *image = crc32c::crc32c_combine(1u32 << bit, 0, UNIT_BYTES);
        }
        let mut tables = [[0u32; 256]; 4];
        for (byte, table) in tables.iter_mut().enumerate() {
            for (value, entry) in table.iter_mut().enumerate() {
                let mut image = 0;
                for bit in 0..8 {
                    if value & (1 << bit) != 0 {
                        image ^= basis[byte * 8 + bit];
                    }
                }
                *entry = image;
            }
        }
        UnitShift { tables }
    }

    fn apply(&self, crc: u32) -> u32 {
        let [b0, b1, b2, b3] = crc.to_le_bytes();
        self.tables[0][b0 as usize]
            ^ self.tables[1][b1 as usize]
            ^ self.tables[2][b2 as usize]
            ^ self.tables[3][b3 as usize]
    }
}

fn unit_shift() -> &'static UnitShift {
    static SHIFT: OnceLock<UnitShift> = OnceLock::new();
    SHIFT.get_or_init(UnitShift::build)
}

/// Running CRC32C of a byte stream assembled from known pieces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrcFold {
    crc: u32,
    len: u64,
}

impl CrcFold {
    pub fn new() -> CrcFold {
        CrcFold::default()
    }

    /// Continues with a piece of `UNIT_BYTES` bytes whose CRC32C is `unit_crc` (fast path).
    pub fn push_unit(&mut self, unit_crc: u32) {
        self.crc = unit_shift().apply(self.crc) ^ unit_crc;
        self.len += UNIT_BYTES as u64;
    }

    /// Continues with a piece of `len` bytes whose CRC32C is `crc`.
    pub fn push(&mut self, crc: u32, len: u64) {
        if len == UNIT_BYTES as u64 {
            return self.push_unit(crc);
        }
        self.crc = if self.len == 0 { crc } else { combine(self.crc, crc, len) };
        self.len += len;
    }

    /// Continues with the bytes themselves.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.len += bytes.len() as u64;
    }

    /// Continues with `len` zero bytes.
    pub fn push_zeros(&mut self, len: u64) {
        if len > 0 {
            self.push(zeros_crc(len), len);
        }
    }

    pub fn crc(&self) -> u32 {
        self.crc
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `crc32c(A ‖ B)` from `crc32c(A)`, `crc32c(B)` and `|B|`.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    if len_b == 0 {
        return crc_a;
    }
    // len_b fits usize on every platform this crate builds for (64-bit Linux).
    crc32c::crc32c_combine(crc_a, crc_b, len_b as usize)
}

/// CRC32C of `len` zero bytes, by doubling from tabulated powers of two.
pub fn zeros_crc(len: u64) -> u32 {
    static POWERS: OnceLock<[u32; 40]> = OnceLock::new();
    let powers = POWERS.get_or_init(|| {
        let mut powers = [0u32; 40];
        powers[0] = crc32c::crc32c(&[0u8]);
        for k in 1..powers.len() {
            let half = 1u64 << (k - 1);
            powers[k] = combine(powers[k - 1], powers[k - 1], half);
        }
        powers
    });
    assert!(len < 1u64 << 40, "zero run of {len} bytes is beyond any chunk");
    let mut crc = 0u32;
    let mut started = false;
    for (k, &power) in powers.iter().enumerate() {
        if len & (1u64 << k) != 0 {
            crc = if started { combine(crc, power, 1u64 << k) } else { power };
            started = true;
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_runs() {
        for len in [0u64, 1, 2, 3, 511, 4096, 4097, 65536, 1 << 20, (1 << 20) + 12345] {
            let expected = crc32c::crc32c(&vec![0u8; len as usize]);
            assert_eq!(zeros_crc(len), expected, "len {len}");
        }
    }

    proptest! {
        #[test]
        fn fold_matches_direct(data in proptest::collection::vec(any::<u8>(), 0..5 * UNIT_BYTES),
                               split in 0usize..5 * UNIT_BYTES, zeros in 0u64..10_000) {
            let split = split.min(data.len());
            let mut fold = CrcFold::new();
            fold.push_bytes(&data[..split]);
            let mut rest = &data[split..];
            while rest.len() >= UNIT_BYTES {
                fold.push_unit(crc32c::crc32c(&rest[..UNIT_BYTES]));
                rest = &rest[UNIT_BYTES..];
            }
            fold.push(crc32c::crc32c(rest), rest.len() as u64);
            fold.push_zeros(zeros);
            let mut expected = data.clone();
            expected.resize(data.len() + zeros as usize, 0);
            prop_assert_eq!(fold.crc(), crc32c::crc32c(&expected));
            prop_assert_eq!(fold.len(), expected.len() as u64);
        }
    }
}
