//! The chain protocol between storage daemons: CRAQ [`PeerMessage`]s as frames on a TCP
//! connection between two shards.
//!
//! Clients speak r3fs-wire's storage catalog. Replicas need more than that catalog carries (the
//! digest a successor must reach, update tags, refusal reasons, resync pages of full chunk
//! states), so the link between shards has its own frame, built like r3fs-wire's: a fixed
//! header, a typed message header, a raw payload (chunk data), one CRC32C over both headers and
//! one over the payload. Both kinds of connection share a port: the first four bytes of a
//! connection (`R3FW` or `R3FP`) say which protocol it speaks.
//!
//! Fixed header, little-endian:
//!
//! | bytes | field |
//! | ----- | ----- |
//! | 0..4 | magic `"R3FP"` |
//! | 4 | version (1) |
//! | 5 | message kind |
//! | 6..8 | reserved, 0 |
//! | 8..16 | sending target |
//! | 16..24 | receiving target |
//! | 24..28 | message header length |
//! | 28..32 | payload length |
//! | 32..36 | payload CRC32C |
//! | 36..40 | header CRC32C over bytes 0..40 (this field zeroed) and the message header |
//!
//! Invariants: decoding never panics and checks every length against [`PEER_HEADER_LEN_MAX`] and
//! the payload limit before waiting for or allocating it; the payload CRC is verified before a
//! message reaches a replica (and the replica checks the update's own checksum again).

use bytes::Bytes;
use r3fs_craq::{
    ChunkCopy, ChunkMeta, ChunkState, Digest, ForwardedUpdate, PeerMessage, RefuseReason, Update,
    UpdateAck, UpdateRefused, UpdateTag,
};
use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, ErrorCode, TargetId};

pub const PEER_MAGIC: [u8; 4] = *b"R3FP";
pub const PEER_VERSION: u8 = 1;
pub const PEER_FIXED_LEN: usize = 40;
/// Largest message header: a resync page of metadata.
pub const PEER_HEADER_LEN_MAX: u32 = 4 << 20;

/// Why bytes from a peer are not a valid frame. The connection is closed after any of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerFrameError {
    #[error("bad peer frame magic {0:02x?}")]
    BadMagic(Vec<u8>),
    #[error("unsupported peer frame version {0}")]
    Version(u8),
    #[error("unknown peer message kind {0}")]
    Kind(u8),
    #[error("peer frame length {len} over the limit {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("peer frame header checksum mismatch")]
    HeaderChecksum,
    #[error("peer frame payload checksum mismatch")]
    PayloadChecksum,
    #[error("malformed peer message: {0}")]
    Malformed(&'static str),
}

/// A decoded head; the payload follows.
#[derive(Debug)]
pub struct PeerHead {
    pub from: TargetId,
    pub to: TargetId,
    pub head_len: usize,
    pub payload_len: u32,
    pub payload_crc32c: u32,
    kind: u8,
    header: Vec<u8>,
}

/// A whole message with the chunk size an update was written with (edge information the
/// replica does not carry; 0 when the message is not an update).
#[derive(Debug)]
pub struct PeerFrame {
    pub from: TargetId,
    pub to: TargetId,
    pub message: PeerMessage,
    pub chunk_size: u32,
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn chain(&mut self, chain: ChainId, version: ChainVersion) {
        self.u32(chain.0);
        self.u32(version.0);
    }
    fn chunk(&mut self, chunk: ChunkId) {
        self.0.extend_from_slice(&chunk.to_bytes());
    }
    fn opt_chunk(&mut self, chunk: Option<ChunkId>) {
        self.u8(u8::from(chunk.is_some()));
        self.chunk(chunk.unwrap_or(ChunkId::new(r3fs_types::InodeId(0), 0)));
    }
    fn digest(&mut self, d: &Digest) {
        self.u64(d.version.0);
        self.u32(d.length_bytes);
        self.u32(d.checksum);
        self.u8(u8::from(d.removed));
    }
    fn tag(&mut self, tag: Option<UpdateTag>) {
        self.u8(u8::from(tag.is_some()));
        let tag = tag.unwrap_or(UpdateTag { client: ClientId(0), channel: 0, seq: 0 });
        self.u64(tag.client.0);
        self.u32(tag.channel);
        self.u64(tag.seq);
    }
    fn state(&mut self, s: &ChunkState) {
        self.u64(s.version.0);
        self.u32(s.chain_version.0);
        self.u32(s.length_bytes);
        self.u32(s.checksum);
        self.u8(u8::from(s.removed));
        self.tag(s.tag);
    }
    fn opt_state(&mut self, s: Option<&ChunkState>) {
        self.u8(u8::from(s.is_some()));
        if let Some(s) = s {
            self.state(s);
        }
    }
    /// A chunk copy's fields; its data travels as the frame's payload, returned here.
    fn chunk_copy(&mut self, c: &ChunkCopy) -> Bytes {
        self.chain(c.chain, c.chain_version);
        self.chunk(c.chunk);
        self.opt_state(c.state.as_ref());
        self.u32(c.checksum);
        c.data.clone()
    }
    fn reason(&mut self, reason: RefuseReason) {
        let (code, arg) = match reason {
            RefuseReason::StaleChainVersion => (1, 0),
            RefuseReason::NotPredecessor => (2, 0),
            RefuseReason::ChecksumMismatch => (3, 0),
            RefuseReason::Diverged => (4, 0),
            RefuseReason::VersionGap { committed } => (5, committed.0),
            RefuseReason::Busy => (6, 0),
            RefuseReason::Storage(code) => (7, u64::from(code.code())),
        };
        self.u8(code);
        self.u64(arg);
    }
}

struct R<'a>(&'a [u8]);

type Res<T> = Result<T, PeerFrameError>;

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if self.0.len() < n {
            return Err(PeerFrameError::Malformed("message ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Res<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(PeerFrameError::Malformed("flag is neither 0 nor 1")),
        }
    }
    fn u32(&mut self) -> Res<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Res<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn chain(&mut self) -> Res<(ChainId, ChainVersion)> {
        Ok((ChainId(self.u32()?), ChainVersion(self.u32()?)))
    }
    fn chunk(&mut self) -> Res<ChunkId> {
        ChunkId::try_from_slice(self.take(ChunkId::LEN)?)
            .ok_or(PeerFrameError::Malformed("chunk id"))
    }
    fn opt_chunk(&mut self) -> Res<Option<ChunkId>> {
        let present = self.bool()?;
        let chunk = self.chunk()?;
        Ok(present.then_some(chunk))
    }
    fn digest(&mut self) -> Res<Digest> {
        Ok(Digest {
            version: ChunkVersion(self.u64()?),
            length_bytes: self.u32()?,
            checksum: self.u32()?,
            removed: self.bool()?,
        })
    }
    fn tag(&mut self) -> Res<Option<UpdateTag>> {
        let present = self.bool()?;
        let tag =
            UpdateTag { client: ClientId(self.u64()?), channel: self.u32()?, seq: self.u64()? };
        Ok(present.then_some(tag))
    }
    fn state(&mut self) -> Res<ChunkState> {
        Ok(ChunkState {
            version: ChunkVersion(self.u64()?),
            chain_version: ChainVersion(self.u32()?),
            length_bytes: self.u32()?,
            checksum: self.u32()?,
            removed: self.bool()?,
            tag: self.tag()?,
        })
    }
    fn opt_state(&mut self) -> Res<Option<ChunkState>> {
        if self.bool()? { Ok(Some(self.state()?)) } else { Ok(None) }
    }
    /// A chunk copy whose data is the frame's `payload`.
    fn chunk_copy(&mut self, payload: Bytes) -> Res<ChunkCopy> {
        let (chain, chain_version) = self.chain()?;
        Ok(ChunkCopy {
            chain,
            chain_version,
            chunk: self.chunk()?,
            state: self.opt_state()?,
            checksum: self.u32()?,
            data: payload,
        })
    }
    fn reason(&mut self) -> Res<RefuseReason> {
        let code = self.u8()?;
        let arg = self.u64()?;
        Ok(match code {
            1 => RefuseReason::StaleChainVersion,
            2 => RefuseReason::NotPredecessor,
            3 => RefuseReason::ChecksumMismatch,
            4 => RefuseReason::Diverged,
            5 => RefuseReason::VersionGap { committed: ChunkVersion(arg) },
            6 => RefuseReason::Busy,
            7 => RefuseReason::Storage(
                u16::try_from(arg)
                    .ok()
                    .and_then(ErrorCode::from_code)
                    .ok_or(PeerFrameError::Malformed("refusal error code"))?,
            ),
            _ => return Err(PeerFrameError::Malformed("refusal reason")),
        })
    }
    fn finish(&self) -> Res<()> {
        if self.0.is_empty() { Ok(()) } else { Err(PeerFrameError::Malformed("trailing bytes")) }
    }
}

const KIND_UPDATE: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_REFUSED: u8 = 3;
const KIND_DUMP_META_REQUEST: u8 = 4;
const KIND_DUMP_META_REPLY: u8 = 5;
const KIND_SYNC_CHUNK: u8 = 6;
const KIND_SYNC_ACK: u8 = 7;
const KIND_SYNC_REFUSED: u8 = 8;
const KIND_SYNC_DONE: u8 = 9;
const KIND_SYNC_DONE_ACK: u8 = 10;
const KIND_FETCH_CHUNK: u8 = 11;
const KIND_FETCH_CHUNK_REPLY: u8 = 12;

/// Encodes a message into its head (fixed + message header) and its payload (shared, not
/// copied). `chunk_size` travels with updates so the successor stages with the file's chunk size.
pub fn encode(
    from: TargetId,
    to: TargetId,
    message: &PeerMessage,
    chunk_size: u32,
) -> Result<(Vec<u8>, Bytes), PeerFrameError> {
    let mut w = W(Vec::with_capacity(160));
    let (kind, payload, payload_crc) = match message {
        PeerMessage::Update(u) => {
            w.chain(u.chain, u.chain_version);
            w.chunk(u.chunk);
            w.u64(u.version.0);
            let (code, offset, length, data) = match &u.update {
                Update::Write { offset_bytes, data } => (1, *offset_bytes, 0, data.clone()),
                Update::Truncate { length_bytes } => (2, 0, *length_bytes, Bytes::new()),
                Update::Remove => (3, 0, 0, Bytes::new()),
                Update::Replace { data } => (4, 0, 0, data.clone()),
                Update::Extend { length_bytes } => (5, 0, *length_bytes, Bytes::new()),
            };
            w.u8(code);
            w.u32(offset);
            w.u32(length);
            w.u32(u.payload_checksum);
            w.u32(chunk_size);
            w.tag(u.tag);
            w.digest(&u.expected);
            // The update's own checksum covers exactly the payload: reuse it for the frame.
            (KIND_UPDATE, data, u.payload_checksum)
        }
        PeerMessage::Ack(a) => {
            w.chain(a.chain, a.chain_version);
            w.chunk(a.chunk);
            w.u64(a.version.0);
            w.digest(&a.committed);
            (KIND_ACK, Bytes::new(), 0)
        }
        PeerMessage::Refused(r) => {
            w.chain(r.chain, r.chain_version);
            w.chunk(r.chunk);
            w.u64(r.version.0);
            w.reason(r.reason);
            (KIND_REFUSED, Bytes::new(), 0)
        }
        PeerMessage::DumpMetaRequest { chain, chain_version, after } => {
            w.chain(*chain, *chain_version);
            w.opt_chunk(*after);
            (KIND_DUMP_META_REQUEST, Bytes::new(), 0)
        }
        PeerMessage::DumpMetaReply { chain, chain_version, after, metas, more } => {
            w.chain(*chain, *chain_version);
            w.opt_chunk(*after);
            w.u8(u8::from(*more));
            w.u32(u32::try_from(metas.len()).map_err(|_| PeerFrameError::TooLarge {
                len: metas.len() as u64,
                max: u64::from(u32::MAX),
            })?);
            for meta in metas {
                w.chunk(meta.chunk);
                w.state(&meta.committed);
                w.opt_state(meta.pending.as_ref());
            }
            (KIND_DUMP_META_REPLY, Bytes::new(), 0)
        }
        PeerMessage::SyncChunk(c) => (KIND_SYNC_CHUNK, w.chunk_copy(c), c.checksum),
        PeerMessage::SyncAck { chain, chain_version, chunk } => {
            w.chain(*chain, *chain_version);
            w.chunk(*chunk);
            (KIND_SYNC_ACK, Bytes::new(), 0)
        }
        PeerMessage::SyncRefused { chain, chain_version, chunk, reason } => {
            w.chain(*chain, *chain_version);
            w.chunk(*chunk);
            w.reason(*reason);
            (KIND_SYNC_REFUSED, Bytes::new(), 0)
        }
        PeerMessage::SyncDone { chain, chain_version } => {
            w.chain(*chain, *chain_version);
            (KIND_SYNC_DONE, Bytes::new(), 0)
        }
        PeerMessage::SyncDoneAck { chain, chain_version } => {
            w.chain(*chain, *chain_version);
            (KIND_SYNC_DONE_ACK, Bytes::new(), 0)
        }
        PeerMessage::FetchChunk { chain, chain_version, chunk } => {
            w.chain(*chain, *chain_version);
            w.chunk(*chunk);
            (KIND_FETCH_CHUNK, Bytes::new(), 0)
        }
        PeerMessage::FetchChunkReply(c) => (KIND_FETCH_CHUNK_REPLY, w.chunk_copy(c), c.checksum),
    };
    let header = w.0;
    let header_len =
        u32::try_from(header.len()).ok().filter(|&len| len <= PEER_HEADER_LEN_MAX).ok_or(
            PeerFrameError::TooLarge { len: header.len() as u64, max: PEER_HEADER_LEN_MAX.into() },
        )?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| PeerFrameError::TooLarge {
        len: payload.len() as u64,
        max: u64::from(r3fs_wire::PAYLOAD_LEN_MAX),
    })?;
    // An empty payload has the empty CRC whatever a message says.
    let payload_crc = if payload.is_empty() { 0 } else { payload_crc };
    let mut head = Vec::with_capacity(PEER_FIXED_LEN + header.len());
    head.extend_from_slice(&PEER_MAGIC);
    head.push(PEER_VERSION);
    head.push(kind);
    head.extend_from_slice(&[0, 0]);
    head.extend_from_slice(&from.0.to_le_bytes());
    head.extend_from_slice(&to.0.to_le_bytes());
    head.extend_from_slice(&header_len.to_le_bytes());
    head.extend_from_slice(&payload_len.to_le_bytes());
    head.extend_from_slice(&payload_crc.to_le_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&header);
    let crc = crc32c::crc32c(&head);
    head[36..40].copy_from_slice(&crc.to_le_bytes());
    Ok((head, payload))
}

fn le32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses the head at the start of `buf`. `Ok(Err(needed))`: `buf` must hold `needed` bytes first
/// (a bound already checked against the limits).
pub fn decode_head(buf: &[u8], payload_len_max: u32) -> Res<Result<PeerHead, usize>> {
    let magic_len = buf.len().min(4);
    if buf[..magic_len] != PEER_MAGIC[..magic_len] {
        return Err(PeerFrameError::BadMagic(buf[..magic_len].to_vec()));
    }
    if buf.len() < PEER_FIXED_LEN {
        return Ok(Err(PEER_FIXED_LEN));
    }
    if buf[4] != PEER_VERSION {
        return Err(PeerFrameError::Version(buf[4]));
    }
    let kind = buf[5];
    if !(KIND_UPDATE..=KIND_FETCH_CHUNK_REPLY).contains(&kind) {
        return Err(PeerFrameError::Kind(kind));
    }
    if buf[6..8] != [0, 0] {
        return Err(PeerFrameError::Malformed("reserved bytes"));
    }
    let header_len = le32(buf, 24);
    let payload_len = le32(buf, 28);
    if header_len > PEER_HEADER_LEN_MAX {
        return Err(PeerFrameError::TooLarge {
            len: header_len.into(),
            max: PEER_HEADER_LEN_MAX.into(),
        });
    }
    if payload_len > payload_len_max {
        return Err(PeerFrameError::TooLarge {
            len: payload_len.into(),
            max: payload_len_max.into(),
        });
    }
    let head_len = PEER_FIXED_LEN + header_len as usize;
    if buf.len() < head_len {
        return Ok(Err(head_len));
    }
    let mut fixed = [0u8; PEER_FIXED_LEN];
    fixed.copy_from_slice(&buf[..PEER_FIXED_LEN]);
    fixed[36..40].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &buf[PEER_FIXED_LEN..head_len]);
    if crc != le32(buf, 36) {
        return Err(PeerFrameError::HeaderChecksum);
    }
    let payload_crc32c = le32(buf, 32);
    if payload_len == 0 && payload_crc32c != 0 {
        return Err(PeerFrameError::PayloadChecksum);
    }
    Ok(Ok(PeerHead {
        from: TargetId(le64(buf, 8)),
        to: TargetId(le64(buf, 16)),
        head_len,
        payload_len,
        payload_crc32c,
        kind,
        header: buf[PEER_FIXED_LEN..head_len].to_vec(),
    }))
}

impl PeerHead {
    /// Verifies the payload and builds the message.
    pub fn finish(self, payload: Bytes) -> Res<PeerFrame> {
        if payload.len() != self.payload_len as usize
            || crc32c::crc32c(&payload) != self.payload_crc32c
        {
            return Err(PeerFrameError::PayloadChecksum);
        }
        let no_payload = |payload: &Bytes| {
            if payload.is_empty() {
                Ok(())
            } else {
                Err(PeerFrameError::Malformed("unexpected payload"))
            }
        };
        let mut r = R(&self.header);
        let mut chunk_size = 0;
        let message = match self.kind {
            KIND_UPDATE => {
                let (chain, chain_version) = r.chain()?;
                let chunk = r.chunk()?;
                let version = ChunkVersion(r.u64()?);
                let code = r.u8()?;
                let offset = r.u32()?;
                let length = r.u32()?;
                let payload_checksum = r.u32()?;
                chunk_size = r.u32()?;
                let tag = r.tag()?;
                let expected = r.digest()?;
                if !matches!(code, 1 | 4) {
                    no_payload(&payload)?;
                }
                let update = match code {
                    1 => Update::Write { offset_bytes: offset, data: payload },
                    2 => Update::Truncate { length_bytes: length },
                    3 => Update::Remove,
                    4 => Update::Replace { data: payload },
                    5 => Update::Extend { length_bytes: length },
                    _ => return Err(PeerFrameError::Malformed("update kind")),
                };
                PeerMessage::Update(ForwardedUpdate {
                    chain,
                    chain_version,
                    chunk,
                    version,
                    update,
                    payload_checksum,
                    tag,
                    expected,
                })
            }
            KIND_ACK => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::Ack(UpdateAck {
                    chain,
                    chain_version,
                    chunk: r.chunk()?,
                    version: ChunkVersion(r.u64()?),
                    committed: r.digest()?,
                })
            }
            KIND_REFUSED => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::Refused(UpdateRefused {
                    chain,
                    chain_version,
                    chunk: r.chunk()?,
                    version: ChunkVersion(r.u64()?),
                    reason: r.reason()?,
                })
            }
            KIND_DUMP_META_REQUEST => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::DumpMetaRequest { chain, chain_version, after: r.opt_chunk()? }
            }
            KIND_DUMP_META_REPLY => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                let after = r.opt_chunk()?;
                let more = r.bool()?;
                let count = r.u32()? as usize;
                // Each entry takes at least 16 (chunk) + 42 (committed state: 21 + a 21-byte tag
                // slot) + 1 (no pending) bytes: bound the allocation by what is there. (63 refused
                // real replies of many entries without a pending state, which stalled resync.)
                if count > r.0.len() / 59 {
                    return Err(PeerFrameError::Malformed("meta count exceeds the message"));
                }
                let mut metas = Vec::with_capacity(count);
                for _ in 0..count {
                    metas.push(ChunkMeta {
                        chunk: r.chunk()?,
                        committed: r.state()?,
                        pending: r.opt_state()?,
                    });
                }
                PeerMessage::DumpMetaReply { chain, chain_version, after, metas, more }
            }
            KIND_SYNC_CHUNK => PeerMessage::SyncChunk(r.chunk_copy(payload)?),
            KIND_SYNC_ACK => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::SyncAck { chain, chain_version, chunk: r.chunk()? }
            }
            KIND_SYNC_REFUSED => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::SyncRefused {
                    chain,
                    chain_version,
                    chunk: r.chunk()?,
                    reason: r.reason()?,
                }
            }
            KIND_SYNC_DONE => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::SyncDone { chain, chain_version }
            }
            KIND_SYNC_DONE_ACK => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::SyncDoneAck { chain, chain_version }
            }
            KIND_FETCH_CHUNK => {
                no_payload(&payload)?;
                let (chain, chain_version) = r.chain()?;
                PeerMessage::FetchChunk { chain, chain_version, chunk: r.chunk()? }
            }
            KIND_FETCH_CHUNK_REPLY => PeerMessage::FetchChunkReply(r.chunk_copy(payload)?),
            other => return Err(PeerFrameError::Kind(other)),
        };
        r.finish()?;
        Ok(PeerFrame { from: self.from, to: self.to, message, chunk_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r3fs_types::InodeId;

    fn round_trip(message: PeerMessage) {
        let (head, payload) = encode(TargetId(1), TargetId(2), &message, 1 << 20).expect("encodes");
        let mut buf = head.clone();
        buf.extend_from_slice(&payload);
        // Every prefix asks for more, never errs.
        for cut in [0, 3, 20, PEER_FIXED_LEN, head.len() - 1] {
            assert!(matches!(decode_head(&buf[..cut], 1 << 26), Ok(Err(_))), "cut {cut}");
        }
        let parsed = decode_head(&buf, 1 << 26).expect("valid").expect("complete");
        assert_eq!(parsed.head_len, head.len());
        let frame = parsed.finish(payload).expect("payload");
        assert_eq!((frame.from, frame.to), (TargetId(1), TargetId(2)));
        assert_eq!(frame.message, message);
    }

    fn chunk() -> ChunkId {
        ChunkId::new(InodeId(9), 3)
    }

    fn state(v: u64) -> ChunkState {
        ChunkState {
            version: ChunkVersion(v),
            chain_version: ChainVersion(2),
            length_bytes: 5,
            checksum: 77,
            removed: false,
            tag: Some(UpdateTag { client: ClientId(4), channel: 1, seq: 8 }),
        }
    }

    #[test]
    fn every_message_round_trips() {
        let data = Bytes::from_static(b"hello");
        let digest = Digest::of(ChunkVersion(3), b"hello", false);
        let (c, v) = (ChainId(5), ChainVersion(6));
        for update in [
            Update::Write { offset_bytes: 7, data: data.clone() },
            Update::Truncate { length_bytes: 3 },
            Update::Remove,
            Update::Replace { data: data.clone() },
            Update::Extend { length_bytes: 12 },
        ] {
            round_trip(PeerMessage::Update(ForwardedUpdate {
                chain: c,
                chain_version: v,
                chunk: chunk(),
                version: ChunkVersion(3),
                payload_checksum: update.payload_checksum(),
                update,
                tag: Some(UpdateTag { client: ClientId(1), channel: 2, seq: 3 }),
                expected: digest,
            }));
        }
        round_trip(PeerMessage::Ack(UpdateAck {
            chain: c,
            chain_version: v,
            chunk: chunk(),
            version: ChunkVersion(3),
            committed: digest,
        }));
        for reason in [
            RefuseReason::VersionGap { committed: ChunkVersion(2) },
            RefuseReason::Storage(ErrorCode::NoSpace),
            RefuseReason::Busy,
        ] {
            round_trip(PeerMessage::Refused(UpdateRefused {
                chain: c,
                chain_version: v,
                chunk: chunk(),
                version: ChunkVersion(3),
                reason,
            }));
            round_trip(PeerMessage::SyncRefused {
                chain: c,
                chain_version: v,
                chunk: chunk(),
                reason,
            });
        }
        round_trip(PeerMessage::DumpMetaRequest {
            chain: c,
            chain_version: v,
            after: Some(chunk()),
        });
        round_trip(PeerMessage::DumpMetaReply {
            chain: c,
            chain_version: v,
            after: None,
            metas: vec![
                ChunkMeta { chunk: chunk(), committed: state(2), pending: Some(state(3)) },
                ChunkMeta::absent(chunk()),
            ],
            more: true,
        });
        round_trip(PeerMessage::SyncChunk(ChunkCopy {
            chain: c,
            chain_version: v,
            chunk: chunk(),
            state: Some(state(4)),
            checksum: crc32c::crc32c(&data),
            data: data.clone(),
        }));
        round_trip(PeerMessage::FetchChunk { chain: c, chain_version: v, chunk: chunk() });
        round_trip(PeerMessage::FetchChunkReply(ChunkCopy {
            chain: c,
            chain_version: v,
            chunk: chunk(),
            state: Some(state(4)),
            checksum: crc32c::crc32c(&data),
            data,
        }));
        round_trip(PeerMessage::FetchChunkReply(ChunkCopy {
            chain: c,
            chain_version: v,
            chunk: chunk(),
            state: None,
            checksum: 0,
            data: Bytes::new(),
        }));
        round_trip(PeerMessage::SyncAck { chain: c, chain_version: v, chunk: chunk() });
        round_trip(PeerMessage::SyncDone { chain: c, chain_version: v });
        round_trip(PeerMessage::SyncDoneAck { chain: c, chain_version: v });
    }

    /// A resync page of many entries without a pending state (the common case after a restart)
    /// is the smallest a valid reply gets per entry: the decoder's allocation bound must accept it.
    #[test]
    fn a_long_dump_meta_reply_of_minimal_entries_round_trips() {
        let metas = (0..1000)
            .map(|_| ChunkMeta { chunk: chunk(), committed: state(2), pending: None })
            .collect();
        round_trip(PeerMessage::DumpMetaReply {
            chain: ChainId(5),
            chain_version: ChainVersion(6),
            after: None,
            metas,
            more: false,
        });
    }

    #[test]
    fn corruption_is_detected() {
        let data = Bytes::from_static(b"payload!");
        let message = PeerMessage::SyncChunk(ChunkCopy {
            chain: ChainId(1),
            chain_version: ChainVersion(1),
            chunk: chunk(),
            state: None,
            checksum: crc32c::crc32c(&data),
            data: data.clone(),
        });
        let (mut head, payload) = encode(TargetId(1), TargetId(2), &message, 0).expect("encodes");
        let parsed = decode_head(&head, 1 << 20).expect("ok").expect("complete");
        assert_eq!(
            parsed.finish(Bytes::from_static(b"payloaX!")).expect_err("bad payload"),
            PeerFrameError::PayloadChecksum
        );
        head[PEER_FIXED_LEN] ^= 1;
        assert_eq!(
            decode_head(&head, 1 << 20).expect_err("bad header"),
            PeerFrameError::HeaderChecksum
        );
        assert!(matches!(decode_head(b"R3FW", 1 << 20), Err(PeerFrameError::BadMagic(_))));
        let mut big = encode(TargetId(1), TargetId(2), &message, 0).expect("encodes").0;
        big[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_head(&big, 1 << 20), Err(PeerFrameError::TooLarge { .. })));
        drop(payload);
    }
}
