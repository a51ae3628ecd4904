//! The metadata log: appending records, writing checkpoints, replaying at open.
//!
//! A log file (`meta-<generation>.log`) reads:
//! `Header · CheckpointEntry* · (Put|Delete|Stage|Abort)* · CheckpointEnd ·
//! (Put|Delete|Stage|Abort|Seal)*`.
//! The part before `CheckpointEnd` (the body) is the state as of one moment plus the records
//! committed while the checkpoint was being written; `CheckpointEnd` is written only after the
//! body is durable, so a file that has it is complete. After it come the commits, each batch one
//! aligned write and one sync; replay stops at the first record whose checksum fails (the torn
//! last batch of a crash).

use crate::config::COMMIT_BATCH_RECORDS_LIMIT;
use crate::device::{Device, DeviceFile};
use crate::format::{
    self, ChunkState, DecodeError, EntryState, FORMAT_VERSION, LOG_MAGIC, RECORD_BYTES, Record,
    Staged, Tombstone, UNIT_BYTES,
};
use r3fs_types::{ChunkId, ChunkVersion};
use std::collections::BTreeMap;
use std::io;

/// Where the next record goes: `pos` bytes are valid; `page` holds the bytes of the partial
/// page `[align_down(pos), pos)` so that an append can rewrite that page whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogTail {
    pub pos: u64,
    pub page: Vec<u8>,
}

impl LogTail {
    /// The aligned write that appends `records` (whole encoded records), and the tail after it.
    pub fn prepare(&self, records: &[u8]) -> (u64, Vec<u8>, LogTail) {
        assert_eq!(records.len() % RECORD_BYTES, 0);
        assert_eq!(self.page.len() as u64, self.pos % UNIT_BYTES as u64);
        let offset = self.pos - self.page.len() as u64;
        let mut bytes = Vec::with_capacity(format::align_up(self.page.len() + records.len()));
        bytes.extend_from_slice(&self.page);
        bytes.extend_from_slice(records);
        let end = offset + bytes.len() as u64;
        let keep = bytes.len() % UNIT_BYTES;
        let page = bytes[bytes.len() - keep..].to_vec();
        bytes.resize(format::align_up(bytes.len()), 0);
        (offset, bytes, LogTail { pos: end, page })
    }
}

/// Writes `bytes` (aligned) at `offset` through a device buffer.
pub async fn write_bytes<D: Device>(
    device: &D,
    file: &D::File,
    offset: u64,
    bytes: &[u8],
) -> io::Result<()> {
    let mut buf = device.alloc_buf(bytes.len());
    buf.as_mut().copy_from_slice(bytes);
    file.write_at(buf, offset).await
}

/// Appends records at `tail` (no sync); returns the new tail.
pub async fn append<D: Device>(
    device: &D,
    file: &D::File,
    tail: &LogTail,
    records: &[u8],
) -> io::Result<LogTail> {
    let (offset, bytes, next) = tail.prepare(records);
    write_bytes(device, file, offset, &bytes).await?;
    Ok(next)
}

/// Builds a checkpoint in a new log file: header and entries first, then (at `finish`) the
/// records committed meanwhile, a sync, the end marker, a sync.
#[derive(Debug)]
pub struct CheckpointWriter {
    pub generation: u64,
    pub base_seq: u64,
    pub tail: LogTail,
    entries: u64,
    body_crc: u32,
    last_seq: u64,
    header_done: bool,
}

impl CheckpointWriter {
    pub fn new(generation: u64, base_seq: u64) -> CheckpointWriter {
        CheckpointWriter {
            generation,
            base_seq,
            tail: LogTail::default(),
            entries: 0,
            body_crc: 0,
            last_seq: base_seq,
            header_done: false,
        }
    }

    fn encode_into(&mut self, out: &mut Vec<u8>, record: &Record) {
        let bytes = format::encode(record, self.generation);
        self.body_crc = crc32c::crc32c_append(self.body_crc, &bytes);
        out.extend_from_slice(&bytes);
    }

    /// Encodes the header (first call only) and checkpoint entries.
    pub fn encode_entries(
        &mut self,
        entries: impl IntoIterator<Item = (ChunkId, EntryState)>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.header_done {
            self.header_done = true;
            let header = Record::Header {
                base_seq: self.base_seq,
                format_version: FORMAT_VERSION,
                generation: self.generation,
            };
            self.encode_into(&mut out, &header);
        }
        for (chunk, entry) in entries {
            self.entries += 1;
            self.encode_into(&mut out, &Record::CheckpointEntry { chunk, entry });
        }
        out
    }

    /// Encodes records committed since the checkpoint began (seq must continue the chain).
    pub fn encode_committed(&mut self, records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            if let Record::Put { seq, .. }
            | Record::Delete { seq, .. }
            | Record::Stage { seq, .. }
            | Record::Abort { seq, .. } = record
            {
                assert_eq!(*seq, self.last_seq + 1, "committed records must be contiguous");
                self.last_seq = *seq;
            }
            self.encode_into(&mut out, record);
        }
        out
    }

    pub fn end_record(&self, next_serial: u64) -> Vec<u8> {
        let record = Record::CheckpointEnd {
            base_seq: self.last_seq,
            entries: self.entries,
            next_serial,
            body_crc: self.body_crc,
        };
        format::encode(&record, self.generation).to_vec()
    }

    /// Writes pending bytes (header/entries/committed records) at the current tail.
    pub async fn write<D: Device>(
        &mut self,
        device: &D,
        file: &D::File,
        bytes: &[u8],
    ) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.tail = append(device, file, &self.tail, bytes).await?;
        Ok(())
    }

    /// Makes the body durable, then writes and syncs the end marker, then syncs the directory.
    pub async fn finish<D: Device>(
        &mut self,
        device: &D,
        file: &D::File,
        next_serial: u64,
    ) -> io::Result<()> {
        file.sync_data().await?;
        let end = self.end_record(next_serial);
        self.tail = append(device, file, &self.tail, &end).await?;
        file.sync_data().await?;
        device.sync_dir().await
    }
}

/// What the log says about one chunk: its committed state or tombstone, and its staged
/// version. Every record is a whole state of one of these parts, so replaying records on top
/// of a checkpoint whose entries may be newer than its base seq still ends in the right state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub committed: Option<ChunkState>,
    pub tombstone: Option<Tombstone>,
    pub staged: Option<Staged>,
}

impl Durable {
    /// The version that is committed here (a tombstone's included).
    pub fn version(&self) -> ChunkVersion {
        match (&self.committed, &self.tombstone) {
            (Some(c), _) => c.version,
            (None, Some(t)) => t.version,
            (None, None) => ChunkVersion(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_none() && self.tombstone.is_none() && self.staged.is_none()
    }

    /// A commit (or install): a staged version at or below it is done with.
    pub fn put(&mut self, state: ChunkState) {
        self.committed = Some(state);
        self.tombstone = None;
        self.staged = self.staged.filter(|s| s.state.version > state.version);
    }

    /// A removal: the tombstone, or nothing for an erase; any staged version goes too.
    pub fn delete(&mut self, tombstone: Option<Tombstone>) {
        self.committed = None;
        self.tombstone = tombstone;
        self.staged = None;
    }

    /// A new staged version replaces any other. One at or below the committed version can
    /// only be a record replayed over a checkpoint entry that already saw its commit.
    pub fn stage(&mut self, staged: Staged) {
        if staged.state.version > self.version() {
            self.staged = Some(staged);
        }
    }

    pub fn abort(&mut self, version: ChunkVersion) {
        if self.staged.is_some_and(|s| s.state.version == version) {
            self.staged = None;
        }
    }

    /// The checkpoint entries of this chunk.
    pub fn entries(&self) -> impl Iterator<Item = EntryState> {
        let committed = self.committed.map(EntryState::Committed);
        let tombstone = self.tombstone.map(EntryState::Tombstone);
        let staged = self.staged.map(EntryState::Staged);
        committed.into_iter().chain(tombstone).chain(staged)
    }

    /// The blocks this chunk references (a staged version may share the committed block: an
    /// in-place append or a truncation).
    pub fn blocks(&self) -> impl Iterator<Item = format::BlockAddr> {
        let committed = self.committed.and_then(|c| c.block);
        let staged = self.staged.and_then(|s| s.state.block).filter(|b| Some(*b) != committed);
        committed.into_iter().chain(staged)
    }
}

/// The outcome of replaying one log file.
#[derive(Debug)]
pub struct Replayed {
    pub chunks: BTreeMap<ChunkId, Durable>,
    /// Seq of the next record.
    pub next_seq: u64,
    pub next_serial: u64,
    /// Bytes of valid records.
    pub valid_bytes: u64,
    /// The chunks the last commit batch changed, with each one's state before the batch: a
    /// batch's records are written while its block files are synced, so after a crash the last
    /// batch's data may not have reached the disk. The opener verifies the states it put or
    /// staged and reverts the chunk if one fails.
    pub last_batch: Vec<LastBatchChange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastBatchChange {
    pub chunk: ChunkId,
    pub previous: Durable,
    /// States whose data the batch wrote (a put, a stage), to verify.
    pub written: [Option<ChunkState>; 2],
}

#[derive(Debug)]
pub enum ReplayError {
    /// The checkpoint never completed (a crash during compaction): the file is not usable.
    Incomplete(String),
    /// The file is damaged or from an unknown format; refuse to guess.
    Corrupt(String),
    Io(io::Error),
}

/// Bytes past the last valid record in which valid records may legally remain: the rest of a
/// torn last batch. Anything valid further away means mid-log damage.
const TORN_WINDOW_BYTES: u64 =
    COMMIT_BATCH_RECORDS_LIMIT as u64 * RECORD_BYTES as u64 + UNIT_BYTES as u64;

/// Bytes read per IO during replay.
const REPLAY_READ_BYTES: usize = 4 << 20;

#[derive(PartialEq, Eq)]
enum Phase {
    Header,
    Entries,
    Committed,
    Tail,
}

/// Replays log file `generation`.
pub async fn replay<F: DeviceFile>(file: &F, generation: u64) -> Result<Replayed, ReplayError> {
    let file_len = file.size().await.map_err(ReplayError::Io)?;
    let mut chunks: BTreeMap<ChunkId, Durable> = BTreeMap::new();
    let mut phase = Phase::Header;
    let mut last_seq = 0u64;
    let mut next_serial = 1u64;
    let mut entries = 0u64;
    let mut body_crc = 0u32;
    let mut valid_bytes = 0u64;
    let mut end_of_log: Option<u64> = None;
    // Chunks changed by the current tail batch: their state before it, and the latest put and
    // stage it wrote.
    let mut batch: BTreeMap<ChunkId, (Durable, [Option<ChunkState>; 2])> = BTreeMap::new();
    let mut offset = 0u64;
    while offset < file_len {
        let want = format::align_up((file_len - offset).min(REPLAY_READ_BYTES as u64) as usize);
        let buf = file.read_at(offset, want).await.map_err(ReplayError::Io)?;
        let bytes = buf.as_ref();
        if bytes.is_empty() {
            break;
        }
        for (i, raw) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            let at = offset + (i * RECORD_BYTES) as u64;
            let mut record_bytes = [0u8; RECORD_BYTES];
            record_bytes.copy_from_slice(raw);
            let decoded = format::decode(&record_bytes, generation);
            if let Some(end) = end_of_log {
                // Past the end: only the rest of a torn last batch may still decode.
                if let Ok(
                    Record::Put { seq, .. }
                    | Record::Delete { seq, .. }
                    | Record::Stage { seq, .. }
                    | Record::Abort { seq, .. },
                ) = decoded
                    && seq > last_seq
                    && at > end + TORN_WINDOW_BYTES
                {
                    return Err(ReplayError::Corrupt(format!(
                        "valid record seq {seq} at byte {at}, far past the end of the log at \
                             byte {end}: the log is damaged in the middle"
                    )));
                }
                continue;
            }
            let record = match decoded {
                Ok(record) => record,
                Err(DecodeError::Checksum) => {
                    if phase != Phase::Tail {
                        return Err(ReplayError::Incomplete(format!(
                            "checkpoint ends without its end marker at byte {at}"
                        )));
                    }
                    end_of_log = Some(at);
                    continue;
                }
                Err(other) => {
                    return Err(ReplayError::Corrupt(format!(
                        "record at byte {at} has a valid checksum but {other}"
                    )));
                }
            };
            let corrupt = |why: String| ReplayError::Corrupt(format!("record at byte {at}: {why}"));
            // Every record before the end marker is part of the body the marker checks.
            if !matches!(record, Record::CheckpointEnd { .. }) && phase != Phase::Tail {
                body_crc = crc32c::crc32c_append(body_crc, raw);
            }
            match (&phase, record) {
                (Phase::Header, Record::Header { base_seq, format_version, generation: g }) => {
                    if format_version != FORMAT_VERSION {
                        return Err(corrupt(format!(
                            "format version {format_version}, this build reads {FORMAT_VERSION}"
                        )));
                    }
                    if g != generation {
                        return Err(corrupt(format!(
                            "generation {g} in file of generation {generation}"
                        )));
                    }
                    if raw[16..32] != LOG_MAGIC {
                        return Err(corrupt("bad magic".to_string()));
                    }
                    last_seq = base_seq;
                    phase = Phase::Entries;
                }
                (Phase::Header, other) => {
                    return Err(corrupt(format!("expected a header, found {other:?}")));
                }
                (Phase::Entries, Record::CheckpointEntry { chunk, entry }) => {
                    entries += 1;
                    let durable = chunks.entry(chunk).or_default();
                    let duplicate = match entry {
                        EntryState::Committed(state) => {
                            next_serial = next_serial.max(state.serial + 1);
                            let seen = durable.committed.is_some() || durable.tombstone.is_some();
                            durable.committed = Some(state);
                            seen
                        }
                        EntryState::Tombstone(tombstone) => {
                            let seen = durable.committed.is_some() || durable.tombstone.is_some();
                            durable.tombstone = Some(tombstone);
                            seen
                        }
                        EntryState::Staged(staged) => {
                            next_serial = next_serial.max(staged.state.serial + 1);
                            durable.staged.replace(staged).is_some()
                        }
                    };
                    if duplicate {
                        return Err(corrupt(format!(
                            "chunk {chunk} appears twice in the checkpoint"
                        )));
                    }
                }
                (
                    _,
                    Record::Put { seq, chunk, .. }
                    | Record::Delete { seq, chunk, .. }
                    | Record::Stage { seq, chunk, .. }
                    | Record::Abort { seq, chunk, .. },
                ) if phase != Phase::Header => {
                    if seq != last_seq + 1 {
                        return Err(corrupt(format!("seq {seq} after seq {last_seq}")));
                    }
                    last_seq = seq;
                    let durable = chunks.entry(chunk).or_default();
                    let previous = *durable;
                    let mut written = None;
                    match record {
                        Record::Put { state, .. } => {
                            next_serial = next_serial.max(state.serial + 1);
                            durable.put(state);
                            written = Some((0, state));
                        }
                        Record::Delete { tombstone, .. } => durable.delete(tombstone),
                        Record::Stage { staged, .. } => {
                            next_serial = next_serial.max(staged.state.serial + 1);
                            durable.stage(staged);
                            written = Some((1, staged.state));
                        }
                        Record::Abort { version, .. } => durable.abort(version),
                        _ => unreachable!("matched above"),
                    }
                    if durable.is_empty() {
                        chunks.remove(&chunk);
                    }
                    if phase == Phase::Tail {
                        if format::flags(&record_bytes) & format::FLAG_BATCH_START != 0 {
                            batch.clear();
                        }
                        let change = batch.entry(chunk).or_insert((previous, [None, None]));
                        if let Some((i, state)) = written {
                            change.1[i] = Some(state);
                        }
                    }
                    if phase == Phase::Entries {
                        phase = Phase::Committed;
                    }
                }
                (Phase::Tail, Record::Seal { seq }) => {
                    if seq != last_seq + 1 {
                        return Err(corrupt(format!("seq {seq} after seq {last_seq}")));
                    }
                    last_seq = seq;
                    batch.clear();
                }
                (
                    Phase::Entries | Phase::Committed,
                    Record::CheckpointEnd {
                        base_seq,
                        entries: count,
                        next_serial: serial,
                        body_crc: crc,
                    },
                ) => {
                    if base_seq != last_seq || count != entries || crc != body_crc {
                        return Err(corrupt(format!(
                            "checkpoint end says seq {base_seq}, {count} entries, body crc \
                             {crc:08x}; found seq {last_seq}, {entries} entries, crc {body_crc:08x}"
                        )));
                    }
                    next_serial = next_serial.max(serial);
                    phase = Phase::Tail;
                }
                (_, other) => {
                    return Err(corrupt(format!("unexpected {other:?}")));
                }
            }
            valid_bytes = at + RECORD_BYTES as u64;
        }
        offset += bytes.len() as u64;
    }
    if phase != Phase::Tail {
        return Err(ReplayError::Incomplete(
            "the file ends before the checkpoint end marker".into(),
        ));
    }
    // Only states still live at the end need their data verified: a block the batch wrote
    // and then dropped again may already hold another chunk's data (it was freed once the batch
    // was durable), while a live block is never rewritten.
    let last_batch = batch
        .into_iter()
        .filter_map(|(chunk, (previous, [put, stage]))| {
            let now = chunks.get(&chunk).copied().unwrap_or_default();
            let put = put.filter(|s| now.committed == Some(*s));
            let stage = stage.filter(|s| now.staged.is_some_and(|n| n.state == *s));
            (put.is_some() || stage.is_some()).then_some(LastBatchChange {
                chunk,
                previous,
                written: [put, stage],
            })
        })
        .collect();
    Ok(Replayed { chunks, next_seq: last_seq + 1, next_serial, valid_bytes, last_batch })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_rewrites_the_partial_page() {
        let tail = LogTail::default();
        let records = vec![7u8; RECORD_BYTES * 3];
        let (offset, bytes, next) = tail.prepare(&records);
        assert_eq!(offset, 0);
        assert_eq!(bytes.len(), UNIT_BYTES);
        assert_eq!(next.pos, 3 * RECORD_BYTES as u64);
        assert_eq!(next.page, records);
        let more = vec![9u8; RECORD_BYTES * 64];
        let (offset, bytes, next2) = next.prepare(&more);
        assert_eq!(offset, 0);
        assert_eq!(bytes.len(), 2 * UNIT_BYTES);
        assert_eq!(&bytes[..3 * RECORD_BYTES], &records[..]);
        assert_eq!(next2.pos, 67 * RECORD_BYTES as u64);
        assert_eq!(next2.page.len(), 3 * RECORD_BYTES);
    }
}
