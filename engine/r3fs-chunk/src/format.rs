//! The on-disk format (version 1): size classes, block layout, metadata-log records.
//!
//! Everything here is pure: encoding and decoding only, no IO. docs/design/chunk-store.md
//! describes the same format in prose; a change here is a new format version, never an edit.

use r3fs_types::{ChainVersion, ChunkId, ChunkVersion};

/// Format version written into every metadata-log header.
pub const FORMAT_VERSION: u32 = 1;

/// The unit of IO alignment and of data checksums: every data read and write covers whole units,
/// and every unit of a block has its own CRC32C in the block's header.
pub const UNIT_BYTES: usize = 4096;
/// Checksum bytes per unit in a block header.
pub const UNIT_CRC_BYTES: usize = 4;

/// Smallest block (size class 0): 64 KiB of data.
pub const CLASS_BYTES_MIN: u32 = 64 << 10;
/// Largest block: 64 MiB of data, the largest chunk.
pub const CLASS_BYTES_MAX: u32 = 64 << 20;
/// Size classes are powers of two from [`CLASS_BYTES_MIN`] to [`CLASS_BYTES_MAX`].
pub const CLASS_COUNT: usize = 11;

const _: () = assert!(CLASS_BYTES_MIN << (CLASS_COUNT - 1) == CLASS_BYTES_MAX);
const _: () = assert!((CLASS_BYTES_MIN as usize).is_multiple_of(UNIT_BYTES));
const _: () = assert!(r3fs_types::layout::CHUNK_SIZE_MIN == CLASS_BYTES_MIN);
const _: () = assert!(r3fs_types::layout::CHUNK_SIZE_MAX == CLASS_BYTES_MAX);

/// Bytes of one metadata-log record. 64 divides 512, so a record never straddles a logical
/// block and a torn write can only lose whole records.
pub const RECORD_BYTES: usize = 64;
const _: () = assert!(512 % RECORD_BYTES == 0);
const _: () = assert!(UNIT_BYTES.is_multiple_of(RECORD_BYTES));

/// One size class: blocks of `data_bytes` data preceded by a header of unit checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeClass(u8);

impl SizeClass {
    pub const ALL: [SizeClass; CLASS_COUNT] = {
        let mut all = [SizeClass(0); CLASS_COUNT];
        let mut i = 0;
        while i < CLASS_COUNT {
            all[i] = SizeClass(i as u8);
            i += 1;
        }
        all
    };

    pub fn from_index(index: u8) -> Option<SizeClass> {
        ((index as usize) < CLASS_COUNT).then_some(SizeClass(index))
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The smallest class that holds `len` bytes (at least the minimum class).
    pub fn for_len(len: u32) -> Option<SizeClass> {
        if len > CLASS_BYTES_MAX {
            return None;
        }
        let bytes = len.max(CLASS_BYTES_MIN).next_power_of_two();
        Some(SizeClass((bytes / CLASS_BYTES_MIN).trailing_zeros() as u8))
    }

    /// Data bytes of a block of this class.
    pub fn data_bytes(self) -> u32 {
        CLASS_BYTES_MIN << self.0
    }

    pub fn units(self) -> u32 {
        self.data_bytes() / UNIT_BYTES as u32
    }

    /// Header bytes: one CRC32C per unit, rounded up to whole units.
    pub fn header_bytes(self) -> u32 {
        let raw = self.units() as usize * UNIT_CRC_BYTES;
        raw.div_ceil(UNIT_BYTES) as u32 * UNIT_BYTES as u32
    }

    /// Distance between consecutive blocks in the class's file.
    pub fn stride_bytes(self) -> u64 {
        u64::from(self.header_bytes()) + u64::from(self.data_bytes())
    }

    /// File holding this class's blocks.
    pub fn file_name(self) -> String {
        let kib = self.data_bytes() >> 10;
        if kib >= 1024 { format!("blocks-{}MiB", kib >> 10) } else { format!("blocks-{kib}KiB") }
    }
}

/// Unit checksums per header page.
pub const CRCS_PER_PAGE: usize = UNIT_BYTES / UNIT_CRC_BYTES;

/// Where a block lives: its class and slot in the class file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockAddr {
    pub class: SizeClass,
    pub slot: u32,
}

impl BlockAddr {
    /// File offset of the block's header.
    pub fn offset(self) -> u64 {
        u64::from(self.slot) * self.class.stride_bytes()
    }

    /// File offset of data unit `unit`.
    pub fn unit_offset(self, unit: u32) -> u64 {
        self.offset() + u64::from(self.class.header_bytes()) + u64::from(unit) * UNIT_BYTES as u64
    }

    /// File offset of header page `page`.
    pub fn header_page_offset(self, page: u32) -> u64 {
        self.offset() + u64::from(page) * UNIT_BYTES as u64
    }
}

/// Units needed for `len` bytes.
pub fn units_for(len: u32) -> u32 {
    (len as usize).div_ceil(UNIT_BYTES) as u32
}

/// Header pages that hold the checksums of units `[0, units)`.
pub fn pages_for_units(units: u32) -> u32 {
    (units as usize).div_ceil(CRCS_PER_PAGE) as u32
}

pub fn align_up(value: usize) -> usize {
    value.div_ceil(UNIT_BYTES) * UNIT_BYTES
}

/// The per-unit key mixed into stored unit checksums: a unit's stored checksum is
/// `crc32c(unit bytes) ^ unit_key(chunk, serial, unit)`. A block that holds another chunk's data,
/// an older allocation's data (a lost write) or a unit at the wrong place fails verification even
/// though its bytes are internally consistent.
#[derive(Clone, Copy, Debug)]
pub struct UnitKey(u32);

impl UnitKey {
    pub fn new(chunk: ChunkId, serial: u64) -> UnitKey {
        let seed = crc32c::crc32c(&chunk.to_bytes());
        UnitKey(crc32c::crc32c_append(seed, &serial.to_le_bytes()))
    }

    pub fn for_unit(self, unit: u32) -> u32 {
        crc32c::crc32c_append(self.0, &unit.to_le_bytes())
    }
}

/// Kinds of metadata-log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// First record of a log file: magic, format version, generation, base sequence number.
    Header = 1,
    /// A chunk's committed state as of the checkpoint.
    CheckpointEntry = 2,
    /// Closes the checkpoint: entry count and next block serial. A log without it is incomplete.
    CheckpointEnd = 3,
    /// A chunk's new committed state.
    Put = 4,
    /// A chunk is removed.
    Delete = 5,
    /// Every batch before this record is durable, data included (written at a clean close).
    Seal = 6,
    /// A chunk's staged (pending) version: survives a crash until committed, aborted or
    /// replaced.
    Stage = 7,
    /// A staged version is dropped.
    Abort = 8,
}

impl RecordKind {
    fn from_u8(value: u8) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Header,
            2 => RecordKind::CheckpointEntry,
            3 => RecordKind::CheckpointEnd,
            4 => RecordKind::Put,
            5 => RecordKind::Delete,
            6 => RecordKind::Seal,
            7 => RecordKind::Stage,
            8 => RecordKind::Abort,
            _ => return None,
        })
    }
}

/// Magic in the chunk-id field of a header record.
pub const LOG_MAGIC: [u8; 16] = *b"r3fs-chunk-log\0\x01";

/// The committed state of one chunk as recorded in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkState {
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
    pub len: u32,
    /// CRC32C of the chunk's bytes `[0, len)`.
    pub crc: u32,
    /// `None` only for an empty chunk.
    pub block: Option<BlockAddr>,
    /// Allocation serial of the block (keys the unit checksums); 0 without a block.
    pub serial: u64,
}

/// What a committed removal leaves: the version numbers, so that versions never go back
/// (r3fs-craq's "versions only grow"), without data or a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub version: ChunkVersion,
    pub chain_version: ChainVersion,
}

/// A staged (pending) version as recorded: the state it will commit to, or a removal (then
/// `state` has no block, length 0, checksum 0, serial 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    pub state: ChunkState,
    pub removal: bool,
}

/// One entry of a checkpoint: a chunk has at most one of committed state and tombstone, and at
/// most one staged version besides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    Committed(ChunkState),
    Tombstone(Tombstone),
    Staged(Staged),
}

/// A decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Header {
        base_seq: u64,
        format_version: u32,
        generation: u64,
    },
    CheckpointEntry {
        chunk: ChunkId,
        entry: EntryState,
    },
    /// `base_seq`: the last seq in the body; `body_crc`: CRC32C of every body record's bytes.
    CheckpointEnd {
        base_seq: u64,
        entries: u64,
        next_serial: u64,
        body_crc: u32,
    },
    Put {
        seq: u64,
        chunk: ChunkId,
        state: ChunkState,
    },
    /// The chunk's committed state is removed: it leaves `tombstone`, or nothing at all (a
    /// file's chunks removed by range). Either way any staged version goes too.
    Delete {
        seq: u64,
        chunk: ChunkId,
        tombstone: Option<Tombstone>,
    },
    Seal {
        seq: u64,
    },
    Stage {
        seq: u64,
        chunk: ChunkId,
        staged: Staged,
    },
    Abort {
        seq: u64,
        chunk: ChunkId,
        version: ChunkVersion,
    },
}

/// Why a record did not decode. Replay treats any of these at the log tail as its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record checksum mismatch")]
    Checksum,
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("invalid size class {0}")]
    Class(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("chunk length {len} exceeds its block of {capacity} bytes")]
    Length { len: u32, capacity: u32 },
}

/// "No block" in the class byte.
const NO_CLASS: u8 = 0xFF;

fn record_crc(generation: u64, body: &[u8]) -> u32 {
    // Seeding with the generation binds a record to its log file.
    crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), body)
}

/// Flag of the first record of a commit batch (byte 6).
pub const FLAG_BATCH_START: u8 = 1;
/// Flag of a removal: a tombstone checkpoint entry, or a staged removal (byte 6).
const FLAG_REMOVAL: u8 = 2;
/// Flag of a checkpoint entry that is a staged version (byte 6).
const FLAG_STAGED: u8 = 4;

/// Layout of a record (little-endian; the chunk id in its own big-endian byte order):
/// `[0,4)` crc32c of `[4,64)` seeded with the log generation, `[4]` kind, `[5]` size class or
/// 0xFF, `[6]` flags, `[7]` zero, `[8,16)` seq, `[16,32)` chunk id, `[32,40)` version,
/// `[40,44)` chain version, `[44,48)` length, `[48,52)` chunk crc32c, `[52,56)` block slot,
/// `[56,64)` serial. A tombstone uses only version and chain version; an abort only version.
pub fn encode(record: &Record, generation: u64) -> [u8; RECORD_BYTES] {
    encode_flagged(record, generation, 0)
}

/// [`encode`] with flags (`FLAG_BATCH_START`).
pub fn encode_flagged(record: &Record, generation: u64, flags: u8) -> [u8; RECORD_BYTES] {
    let mut out = [0u8; RECORD_BYTES];
    let mut flags = flags;
    let tombstone_state = |t: Tombstone| ChunkState {
        version: t.version,
        chain_version: t.chain_version,
        len: 0,
        crc: 0,
        block: None,
        serial: 0,
    };
    let (kind, seq, chunk_bytes, state, extra) = match *record {
        Record::Header { base_seq, format_version, generation } => (
            RecordKind::Header,
            base_seq,
            LOG_MAGIC,
            None,
            Some((u64::from(format_version), generation)),
        ),
        Record::CheckpointEntry { chunk, entry } => {
            let state = match entry {
                EntryState::Committed(state) => state,
                EntryState::Tombstone(t) => {
                    flags |= FLAG_REMOVAL;
                    tombstone_state(t)
                }
                EntryState::Staged(staged) => {
                    flags |= FLAG_STAGED;
                    if staged.removal {
                        flags |= FLAG_REMOVAL;
                    }
                    staged.state
                }
            };
            (RecordKind::CheckpointEntry, 0, chunk.to_bytes(), Some(state), None)
        }
        Record::CheckpointEnd { base_seq, entries, next_serial, body_crc } => {
            out[48..52].copy_from_slice(&body_crc.to_le_bytes());
            (RecordKind::CheckpointEnd, base_seq, [0; 16], None, Some((entries, next_serial)))
        }
        Record::Put { seq, chunk, state } => {
            (RecordKind::Put, seq, chunk.to_bytes(), Some(state), None)
        }
        Record::Delete { seq, chunk, tombstone } => {
            (RecordKind::Delete, seq, chunk.to_bytes(), tombstone.map(tombstone_state), None)
        }
        Record::Seal { seq } => (RecordKind::Seal, seq, [0; 16], None, None),
        Record::Stage { seq, chunk, staged } => {
            if staged.removal {
                flags |= FLAG_REMOVAL;
            }
            (RecordKind::Stage, seq, chunk.to_bytes(), Some(staged.state), None)
        }
        Record::Abort { seq, chunk, version } => {
            out[32..40].copy_from_slice(&version.0.to_le_bytes());
            (RecordKind::Abort, seq, chunk.to_bytes(), None, None)
        }
    };
    out[4] = kind as u8;
    out[5] = NO_CLASS;
    out[6] = flags;
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..32].copy_from_slice(&chunk_bytes);
    if let Some(state) = state {
        out[32..40].copy_from_slice(&state.version.0.to_le_bytes());
        out[40..44].copy_from_slice(&state.chain_version.0.to_le_bytes());
        out[44..48].copy_from_slice(&state.len.to_le_bytes());
        out[48..52].copy_from_slice(&state.crc.to_le_bytes());
        if let Some(block) = state.block {
            out[5] = block.class.0;
            out[52..56].copy_from_slice(&block.slot.to_le_bytes());
        }
        out[56..64].copy_from_slice(&state.serial.to_le_bytes());
    }
    if let Some((a, b)) = extra {
        // Header: format version and generation; CheckpointEnd: entry count and next serial.
        out[32..40].copy_from_slice(&a.to_le_bytes());
        out[56..64].copy_from_slice(&b.to_le_bytes());
    }
    let crc = record_crc(generation, &out[4..]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(bytes: &[u8; RECORD_BYTES], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8; RECORD_BYTES], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The flags of an encoded record (valid once [`decode`] accepted it).
pub fn flags(bytes: &[u8; RECORD_BYTES]) -> u8 {
    bytes[6]
}

/// Decodes one record of log generation `generation`.
pub fn decode(bytes: &[u8; RECORD_BYTES], generation: u64) -> Result<Record, DecodeError> {
    if u32_at(bytes, 0) != record_crc(generation, &bytes[4..]) {
        return Err(DecodeError::Checksum);
    }
    let kind = RecordKind::from_u8(bytes[4]).ok_or(DecodeError::Kind(bytes[4]))?;
    let kind_flags = match kind {
        RecordKind::CheckpointEntry => FLAG_REMOVAL | FLAG_STAGED,
        RecordKind::Stage => FLAG_REMOVAL,
        _ => 0,
    };
    if bytes[6] & !(FLAG_BATCH_START | kind_flags) != 0 || bytes[7] != 0 {
        return Err(DecodeError::Reserved);
    }
    let removal = bytes[6] & FLAG_REMOVAL != 0;
    let staged_entry = bytes[6] & FLAG_STAGED != 0;
    let seq = u64_at(bytes, 8);
    let mut chunk_bytes = [0u8; 16];
    chunk_bytes.copy_from_slice(&bytes[16..32]);
    let chunk = ChunkId::from_bytes(chunk_bytes);
    let state = || -> Result<ChunkState, DecodeError> {
        let len = u32_at(bytes, 44);
        let block = match bytes[5] {
            NO_CLASS => None,
            index => {
                let class = SizeClass::from_index(index).ok_or(DecodeError::Class(index))?;
                Some(BlockAddr { class, slot: u32_at(bytes, 52) })
            }
        };
        let capacity = block.map_or(0, |b| b.class.data_bytes());
        if len > capacity {
            return Err(DecodeError::Length { len, capacity });
        }
        Ok(ChunkState {
            version: ChunkVersion(u64_at(bytes, 32)),
            chain_version: ChainVersion(u32_at(bytes, 40)),
            len,
            crc: u32_at(bytes, 48),
            block,
            serial: u64_at(bytes, 56),
        })
    };
    Ok(match kind {
        RecordKind::Header => Record::Header {
            base_seq: seq,
            format_version: u64_at(bytes, 32) as u32,
            generation: u64_at(bytes, 56),
        },
        RecordKind::CheckpointEntry => {
            let state = state()?;
            let entry = match (staged_entry, removal) {
                (true, removal) => EntryState::Staged(staged(state, removal)?),
                (false, true) => EntryState::Tombstone(tombstone(state)?),
                (false, false) => EntryState::Committed(state),
            };
            Record::CheckpointEntry { chunk, entry }
        }
        RecordKind::CheckpointEnd => Record::CheckpointEnd {
            base_seq: seq,
            entries: u64_at(bytes, 32),
            next_serial: u64_at(bytes, 56),
            body_crc: u32_at(bytes, 48),
        },
        RecordKind::Put => Record::Put { seq, chunk, state: state()? },
        RecordKind::Delete => {
            let state = state()?;
            // Version 0: an erase (and what a log written before tombstones holds).
            let tombstone = if state.version.0 == 0 {
                if state != tombstone_of_nothing() {
                    return Err(DecodeError::Reserved);
                }
                None
            } else {
                Some(tombstone(state)?)
            };
            Record::Delete { seq, chunk, tombstone }
        }
        RecordKind::Seal => Record::Seal { seq },
        RecordKind::Stage => Record::Stage { seq, chunk, staged: staged(state()?, removal)? },
        RecordKind::Abort => {
            if bytes[5] != NO_CLASS || bytes[40..64].iter().any(|b| *b != 0) {
                return Err(DecodeError::Reserved);
            }
            Record::Abort { seq, chunk, version: ChunkVersion(u64_at(bytes, 32)) }
        }
    })
}

/// The state fields of a record that names no state (an erase).
fn tombstone_of_nothing() -> ChunkState {
    ChunkState {
        version: ChunkVersion(0),
        chain_version: ChainVersion(0),
        len: 0,
        crc: 0,
        block: None,
        serial: 0,
    }
}

/// A tombstone from decoded state fields: only the version numbers may be set.
fn tombstone(state: ChunkState) -> Result<Tombstone, DecodeError> {
    if state.len != 0 || state.crc != 0 || state.block.is_some() || state.serial != 0 {
        return Err(DecodeError::Reserved);
    }
    Ok(Tombstone { version: state.version, chain_version: state.chain_version })
}

/// A staged version from decoded state fields: a removal carries no data.
fn staged(state: ChunkState, removal: bool) -> Result<Staged, DecodeError> {
    if removal && (state.len != 0 || state.crc != 0 || state.block.is_some() || state.serial != 0) {
        return Err(DecodeError::Reserved);
    }
    Ok(Staged { state, removal })
}

/// Name of the metadata log of generation `generation`.
pub fn log_file_name(generation: u64) -> String {
    format!("meta-{generation:016x}.log")
}

/// Parses a metadata-log file name back into its generation.
pub fn parse_log_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("meta-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use r3fs_types::InodeId;

    #[test]
    fn classes_cover_chunk_sizes() {
        assert_eq!(SizeClass::for_len(0), Some(SizeClass(0)));
        assert_eq!(SizeClass::for_len(1), Some(SizeClass(0)));
        assert_eq!(SizeClass::for_len(64 << 10), Some(SizeClass(0)));
        assert_eq!(SizeClass::for_len((64 << 10) + 1), Some(SizeClass(1)));
        assert_eq!(SizeClass::for_len(64 << 20), Some(SizeClass(10)));
        assert_eq!(SizeClass::for_len((64 << 20) + 1), None);
        for class in SizeClass::ALL {
            assert_eq!(class.stride_bytes() % UNIT_BYTES as u64, 0);
            assert!(class.header_bytes() as usize >= class.units() as usize * UNIT_CRC_BYTES);
        }
        assert_eq!(SizeClass(0).header_bytes(), 4096);
        assert_eq!(SizeClass(6).header_bytes(), 4096); // 4 MiB: 1024 units
        assert_eq!(SizeClass(10).header_bytes(), 64 << 10);
        assert_eq!(SizeClass(0).file_name(), "blocks-64KiB");
        assert_eq!(SizeClass(10).file_name(), "blocks-64MiB");
    }

    #[test]
    fn log_names_round_trip() {
        assert_eq!(parse_log_file_name(&log_file_name(0x1234)), Some(0x1234));
        assert_eq!(parse_log_file_name("meta-12.log"), None);
        assert_eq!(parse_log_file_name("blocks-64KiB"), None);
    }

    fn any_state() -> impl Strategy<Value = ChunkState> {
        (any::<u64>(), any::<u32>(), 0usize..CLASS_COUNT, any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(version, chain, class, slot, crc, serial)| {
                let class = SizeClass(class as u8);
                ChunkState {
                    version: ChunkVersion(version),
                    chain_version: ChainVersion(chain),
                    len: crc % (class.data_bytes() + 1),
                    crc,
                    block: Some(BlockAddr { class, slot }),
                    serial,
                }
            })
    }

    proptest! {
        #[test]
        fn records_round_trip_and_reject_flips(
            state in any_state(),
            ids in any::<(u64, u64)>(),
            seq in any::<u64>(),
            generation in any::<u64>(),
            flip in 0usize..RECORD_BYTES * 8,
        ) {
            let chunk = ChunkId::new(InodeId(ids.0), ids.1);
            let tombstone = Tombstone { version: ChunkVersion(state.version.0.max(1)), chain_version: state.chain_version };
            let removal = ChunkState { len: 0, crc: 0, block: None, serial: 0, ..state };
            let records = [
                Record::Header { base_seq: seq, format_version: FORMAT_VERSION, generation },
                Record::CheckpointEntry { chunk, entry: EntryState::Committed(state) },
                Record::CheckpointEntry { chunk, entry: EntryState::Tombstone(tombstone) },
                Record::CheckpointEntry { chunk, entry: EntryState::Staged(Staged { state, removal: false }) },
                Record::CheckpointEntry { chunk, entry: EntryState::Staged(Staged { state: removal, removal: true }) },
                Record::CheckpointEnd { base_seq: seq, entries: ids.0, next_serial: ids.1, body_crc: state.crc },
                Record::Put { seq, chunk, state },
                Record::Delete { seq, chunk, tombstone: None },
                Record::Delete { seq, chunk, tombstone: Some(tombstone) },
                Record::Seal { seq },
                Record::Put { seq, chunk, state: ChunkState { block: None, len: 0, ..state } },
                Record::Stage { seq, chunk, staged: Staged { state, removal: false } },
                Record::Stage { seq, chunk, staged: Staged { state: removal, removal: true } },
                Record::Abort { seq, chunk, version: state.version },
            ];
            for record in records {
                let mut bytes = encode(&record, generation);
                prop_assert_eq!(decode(&bytes, generation), Ok(record));
                // Another generation's record never decodes.
                prop_assert!(decode(&bytes, generation.wrapping_add(1)).is_err());
                bytes[flip / 8] ^= 1 << (flip % 8);
                prop_assert!(decode(&bytes, generation).is_err());
            }
        }
    }

    #[test]
    fn zero_page_is_not_a_record() {
        for generation in [0, 1, 7] {
            assert!(decode(&[0u8; RECORD_BYTES], generation).is_err());
        }
    }
}
