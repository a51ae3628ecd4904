//! The storage message catalog: what clients and replicas send to storage targets, and the
//! replies. Layouts are fixed, little-endian, with the byte offsets listed in
//! docs/design/wire-frames.md; the decoders below follow them field by field.
//!
//! Expected outcomes (stale chain version, chunk not committed, no such chunk) are [`Outcome`]
//! data in the replies. Semantic checks that need storage state or the layout (`offset + length
//! <= chunk_size`, chunk size a power of two) belong to the storage service, which answers them
//! with `InvalidArgument`; the codec checks only what makes a message self-consistent.

use crate::cursor::{PutExt, Reader};
use crate::error::MessageError;
use crate::limits::{BATCH_READ_ITEMS_MAX, CHUNK_METAS_MAX};
use crate::message::{Outcome, WireMessage, expect_payload_len};
use bytes::BufMut;
use r3fs_types::{ChainId, ChainVersion, ChunkId, ChunkVersion, ClientId, InodeId, TargetId};
use std::ops::Range;

/// Bytes of a list message's fixed prefix (before its entries).
pub const LIST_PREFIX_LEN: usize = 8;
/// Bytes of one [`BatchReadItem`].
pub const BATCH_READ_ITEM_LEN: usize = 28;
/// Bytes of one [`BatchReadReplyItem`].
pub const BATCH_READ_REPLY_ITEM_LEN: usize = 12;
/// Bytes of one [`ChunkMeta`].
pub const CHUNK_META_LEN: usize = 32;

pub const UPDATE_REQUEST_LEN: usize = 80;
pub const UPDATE_REPLY_LEN: usize = 24;
pub const QUERY_LAST_CHUNK_REQUEST_LEN: usize = 32;
pub const QUERY_LAST_CHUNK_REPLY_LEN: usize = 16;
pub const REMOVE_CHUNKS_REQUEST_LEN: usize = 40;
pub const REMOVE_CHUNKS_REPLY_LEN: usize = 16;
pub const GET_CHUNK_METAS_REQUEST_LEN: usize = 40;
pub const PING_LEN: usize = 8;

/// The largest fixed-size message; [`crate::FrameLimits`] may not go below it.
pub const FIXED_MESSAGE_LEN_MAX: usize = UPDATE_REQUEST_LEN;

const _: () = assert!(UPDATE_REQUEST_LEN >= UPDATE_REPLY_LEN);
const _: () = assert!(UPDATE_REQUEST_LEN >= REMOVE_CHUNKS_REQUEST_LEN);
const _: () = assert!(UPDATE_REQUEST_LEN >= GET_CHUNK_METAS_REQUEST_LEN);
const _: () = assert!(UPDATE_REQUEST_LEN >= QUERY_LAST_CHUNK_REQUEST_LEN);
const _: () = assert!(UPDATE_REQUEST_LEN >= LIST_PREFIX_LEN);

fn expect_len(bytes: &[u8], expected: usize) -> Result<(), MessageError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(MessageError::Length { expected, actual: bytes.len() })
    }
}

/// Reads an optional u32/u64 stored as (presence bit, value): an absent value must be zero.
fn optional<T: Default + PartialEq>(
    present: bool,
    value: T,
    field: &'static str,
) -> Result<Option<T>, MessageError> {
    match (present, value == T::default()) {
        (true, _) => Ok(Some(value)),
        (false, true) => Ok(None),
        (false, false) => Err(MessageError::AbsentNotZero { field }),
    }
}

// ---------------------------------------------------------------------------------------------
// Update (write path)
// ---------------------------------------------------------------------------------------------

/// What an update does to one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UpdateKind {
    /// Write `length` bytes (the payload) at `offset`, growing the chunk if needed.
    Write = 1,
    /// Set the chunk's length to `length` (`offset` is 0), dropping bytes past it.
    Truncate = 2,
    /// Remove the chunk.
    Remove = 3,
    /// Grow the chunk with zeros to at least `offset + length` bytes.
    Extend = 4,
    /// Replace the whole chunk with the payload (`offset` 0, `length` = new chunk length): used
    /// by resync to copy a chunk to a recovering replica.
    FullReplace = 5,
}

impl UpdateKind {
    pub const ALL: &'static [UpdateKind] = &[
        UpdateKind::Write,
        UpdateKind::Truncate,
        UpdateKind::Remove,
        UpdateKind::Extend,
        UpdateKind::FullReplace,
    ];

    pub fn from_code(code: u8) -> Option<UpdateKind> {
        Some(match code {
            1 => UpdateKind::Write,
            2 => UpdateKind::Truncate,
            3 => UpdateKind::Remove,
            4 => UpdateKind::Extend,
            5 => UpdateKind::FullReplace,
            _ => return None,
        })
    }

    /// Whether the frame's payload holds `length` bytes of chunk data.
    pub fn carries_data(self) -> bool {
        matches!(self, UpdateKind::Write | UpdateKind::FullReplace)
    }
}

/// One update of one chunk: client -> chain head, and each replica -> its successor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateRequest {
    pub kind: UpdateKind,
    pub chain_id: ChainId,
    /// The chain version the sender saw; a replica with another version refuses the update
    /// (`StaleChainVersion`, reporting its own).
    pub chain_version: ChainVersion,
    pub chunk_id: ChunkId,
    /// Byte offset inside the chunk.
    pub offset: u32,
    /// Bytes written (Write, FullReplace), new length (Truncate) or grown range (Extend).
    pub length: u32,
    /// The file's chunk size: a new chunk is created with this capacity.
    pub chunk_size: u32,
    /// 0 from a client; the head assigns the next version and forwards it down the chain.
    pub update_version: ChunkVersion,
    /// With `sequence`, identifies the client's update so a retry is applied once.
    pub client_id: ClientId,
    /// Per-client sequence number of this update.
    pub sequence: u64,
    /// CRC32C of the data: the end-to-end checksum the client computed once and storage keeps
    /// with the chunk. Always equals the frame's payload CRC32C (0 when there is no data).
    pub payload_crc32c: u32,
    /// The replica that forwarded this update; `None` when it comes from a client.
    pub sending_target_id: Option<TargetId>,
}

const UPDATE_FLAG_FROM_TARGET: u8 = 1;

impl WireMessage for UpdateRequest {
    fn encoded_len(&self) -> usize {
        UPDATE_REQUEST_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(self.kind as u8);
        out.put_u8(if self.sending_target_id.is_some() { UPDATE_FLAG_FROM_TARGET } else { 0 });
        out.put_u16_le(0);
        out.put_u32_le(self.chain_id.0);
        out.put_u32_le(self.chain_version.0);
        out.put_u32_le(self.offset);
        out.put_u32_le(self.length);
        out.put_u32_le(self.chunk_size);
        out.put_u32_le(self.payload_crc32c);
        out.put_u32_le(0);
        out.put_chunk_id(self.chunk_id);
        out.put_u64_le(self.update_version.0);
        out.put_u64_le(self.client_id.0);
        out.put_u64_le(self.sequence);
        out.put_u64_le(self.sending_target_id.map_or(0, |t| t.0));
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, UPDATE_REQUEST_LEN)?;
        let mut r = Reader::new(bytes);
        let kind_code = r.u8("kind")?;
        let kind = UpdateKind::from_code(kind_code)
            .ok_or(MessageError::UnknownValue { field: "kind", value: u64::from(kind_code) })?;
        let flags = r.flags("flags", UPDATE_FLAG_FROM_TARGET)?;
        r.reserved_u16("reserved0")?;
        let chain_id = ChainId(r.u32("chain_id")?);
        let chain_version = ChainVersion(r.u32("chain_version")?);
        let offset = r.u32("offset")?;
        let length = r.u32("length")?;
        let chunk_size = r.u32("chunk_size")?;
        let payload_crc32c = r.u32("payload_crc32c")?;
        r.reserved_u32("reserved1")?;
        let chunk_id = r.chunk_id("chunk_id")?;
        let update_version = ChunkVersion(r.u64("update_version")?);
        let client_id = ClientId(r.u64("client_id")?);
        let sequence = r.u64("sequence")?;
        let sending_target_id = optional(
            flags & UPDATE_FLAG_FROM_TARGET != 0,
            r.u64("sending_target_id")?,
            "sending_target_id",
        )?
        .map(TargetId);
        r.finish()?;
        Ok(UpdateRequest {
            kind,
            chain_id,
            chain_version,
            chunk_id,
            offset,
            length,
            chunk_size,
            update_version,
            client_id,
            sequence,
            payload_crc32c,
            sending_target_id,
        })
    }

    fn check_payload(&self, payload_len: u32, payload_crc32c: u32) -> Result<(), MessageError> {
        let expected = if self.kind.carries_data() { u64::from(self.length) } else { 0 };
        expect_payload_len(expected, payload_len)?;
        if self.payload_crc32c != payload_crc32c {
            return Err(MessageError::PayloadCrcMismatch {
                message: self.payload_crc32c,
                frame: payload_crc32c,
            });
        }
        Ok(())
    }
}

/// A replica's answer to an [`UpdateRequest`] (sent back up the chain, and by the head to the
/// client).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateReply {
    pub outcome: Outcome,
    /// The replica's chain version, when it refused the request's as stale.
    pub current_chain_version: Option<ChainVersion>,
    /// The chunk's version once the update committed.
    pub commit_version: ChunkVersion,
    /// The chunk's length after the update.
    pub chunk_length: u32,
    /// CRC32C of the whole chunk after the update.
    pub chunk_crc32c: u32,
}

const UPDATE_REPLY_FLAG_CHAIN_VERSION: u8 = 1;

impl WireMessage for UpdateReply {
    fn encoded_len(&self) -> usize {
        UPDATE_REPLY_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.outcome.to_wire());
        out.put_u8(if self.current_chain_version.is_some() {
            UPDATE_REPLY_FLAG_CHAIN_VERSION
        } else {
            0
        });
        out.put_u8(0);
        out.put_u32_le(self.current_chain_version.map_or(0, |v| v.0));
        out.put_u64_le(self.commit_version.0);
        out.put_u32_le(self.chunk_length);
        out.put_u32_le(self.chunk_crc32c);
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, UPDATE_REPLY_LEN)?;
        let mut r = Reader::new(bytes);
        let outcome = Outcome::from_wire("outcome", r.u16("outcome")?)?;
        let flags = r.flags("flags", UPDATE_REPLY_FLAG_CHAIN_VERSION)?;
        r.reserved_u8("reserved0")?;
        let current_chain_version = optional(
            flags & UPDATE_REPLY_FLAG_CHAIN_VERSION != 0,
            r.u32("current_chain_version")?,
            "current_chain_version",
        )?
        .map(ChainVersion);
        let commit_version = ChunkVersion(r.u64("commit_version")?);
        let chunk_length = r.u32("chunk_length")?;
        let chunk_crc32c = r.u32("chunk_crc32c")?;
        r.finish()?;
        Ok(UpdateReply {
            outcome,
            current_chain_version,
            commit_version,
            chunk_length,
            chunk_crc32c,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Batch read
// ---------------------------------------------------------------------------------------------

/// One byte range of one chunk to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReadItem {
    pub chain_id: ChainId,
    pub chunk_id: ChunkId,
    pub offset: u32,
    pub length: u32,
}

/// Many chunk ranges in one request, answered in one [`BatchReadReply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReadRequest {
    /// At most [`BATCH_READ_ITEMS_MAX`].
    pub items: Vec<BatchReadItem>,
}

impl BatchReadRequest {
    /// Bytes the reply's payload needs if every item is read in full. A server refuses
    /// (`InvalidArgument`) a batch above its payload limit: it could not answer it in one frame.
    pub fn total_len(&self) -> u64 {
        self.items.iter().map(|item| u64::from(item.length)).sum()
    }
}

impl WireMessage for BatchReadRequest {
    fn encoded_len(&self) -> usize {
        LIST_PREFIX_LEN + self.items.len() * BATCH_READ_ITEM_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        // validate() bounds the count far below u32::MAX; saturate rather than wrap regardless.
        out.put_u32_le(u32::try_from(self.items.len()).unwrap_or(u32::MAX));
        out.put_u32_le(0);
        for item in &self.items {
            out.put_u32_le(item.chain_id.0);
            out.put_u32_le(item.offset);
            out.put_u32_le(item.length);
            out.put_chunk_id(item.chunk_id);
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(bytes);
        let count = r.u32("item_count")?;
        r.reserved_u32("reserved0")?;
        let count = r.list_count("items", count, BATCH_READ_ITEM_LEN, BATCH_READ_ITEMS_MAX)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let chain_id = ChainId(r.u32("item.chain_id")?);
            let offset = r.u32("item.offset")?;
            let length = r.u32("item.length")?;
            let chunk_id = r.chunk_id("item.chunk_id")?;
            items.push(BatchReadItem { chain_id, chunk_id, offset, length });
        }
        r.finish()?;
        Ok(BatchReadRequest { items })
    }

    fn validate(&self) -> Result<(), MessageError> {
        check_count("items", self.items.len(), BATCH_READ_ITEMS_MAX)
    }
}

fn check_count(field: &'static str, count: usize, max: u32) -> Result<(), MessageError> {
    if count > max as usize {
        return Err(MessageError::TooManyItems { field, count: count as u64, max: u64::from(max) });
    }
    Ok(())
}

/// What became of one requested range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReadReplyItem {
    pub outcome: Outcome,
    /// Bytes of this item in the payload (may be less than requested at the end of a chunk);
    /// 0 when the item failed.
    pub length: u32,
    /// CRC32C of this item's bytes: end-to-end, from the replica that read them (0 when failed).
    pub crc32c: u32,
}

/// The answer to a [`BatchReadRequest`]: one item per requested range, in order. The payload is
/// the items' data back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReadReply {
    /// A failure of the whole request (then `items` is empty).
    pub outcome: Outcome,
    pub items: Vec<BatchReadReplyItem>,
}

/// A batch-read item whose data is not what its entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ItemCheckError {
    #[error("batch read item {index}: its data lies past the end of a {payload_len}-byte payload")]
    Missing { index: usize, payload_len: usize },
    #[error("batch read item {index}: CRC32C {expected:#010x} expected, data gives {actual:#010x}")]
    Checksum { index: usize, expected: u32, actual: u32 },
}

impl BatchReadReply {
    /// Where each item's data lies in the payload. Valid for any decoded reply (the decoder
    /// checked that the lengths add up to the payload length).
    pub fn item_ranges(&self) -> impl Iterator<Item = (&BatchReadReplyItem, Range<usize>)> + '_ {
        let mut start = 0usize;
        self.items.iter().map(move |item| {
            let end = start + item.length as usize;
            let range = start..end;
            start = end;
            (item, range)
        })
    }

    /// Recomputes every item's CRC32C over its data. The frame's payload CRC already protects
    /// the transfer; this second pass checks the replica's end-to-end checksums.
    pub fn verify_item_crc32cs(&self, payload: &[u8]) -> Result<(), ItemCheckError> {
        for (index, (item, range)) in self.item_ranges().enumerate() {
            let Some(data) = payload.get(range) else {
                return Err(ItemCheckError::Missing { index, payload_len: payload.len() });
            };
            let actual = crc32c::crc32c(data);
            if actual != item.crc32c {
                return Err(ItemCheckError::Checksum { index, expected: item.crc32c, actual });
            }
        }
        Ok(())
    }
}

impl WireMessage for BatchReadReply {
    fn encoded_len(&self) -> usize {
        LIST_PREFIX_LEN + self.items.len() * BATCH_READ_REPLY_ITEM_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.outcome.to_wire());
        out.put_u16_le(0);
        out.put_u32_le(u32::try_from(self.items.len()).unwrap_or(u32::MAX));
        for item in &self.items {
            out.put_u16_le(item.outcome.to_wire());
            out.put_u16_le(0);
            out.put_u32_le(item.length);
            out.put_u32_le(item.crc32c);
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(bytes);
        let outcome = Outcome::from_wire("outcome", r.u16("outcome")?)?;
        r.reserved_u16("reserved0")?;
        let count = r.u32("item_count")?;
        let count =
            r.list_count("items", count, BATCH_READ_REPLY_ITEM_LEN, BATCH_READ_ITEMS_MAX)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let item_outcome = Outcome::from_wire("item.outcome", r.u16("item.outcome")?)?;
            r.reserved_u16("item.reserved0")?;
            let length = r.u32("item.length")?;
            let crc32c = r.u32("item.crc32c")?;
            items.push(BatchReadReplyItem { outcome: item_outcome, length, crc32c });
        }
        r.finish()?;
        Ok(BatchReadReply { outcome, items })
    }

    fn validate(&self) -> Result<(), MessageError> {
        check_count("items", self.items.len(), BATCH_READ_ITEMS_MAX)?;
        if !self.outcome.is_ok() && !self.items.is_empty() {
            return Err(MessageError::Inconsistent { what: "a failed batch read lists items" });
        }
        if self
            .items
            .iter()
            .any(|item| !item.outcome.is_ok() && (item.length, item.crc32c) != (0, 0))
        {
            return Err(MessageError::Inconsistent {
                what: "a failed batch read item has data or a checksum",
            });
        }
        Ok(())
    }

    fn check_payload(&self, payload_len: u32, _payload_crc32c: u32) -> Result<(), MessageError> {
        expect_payload_len(self.items.iter().map(|item| u64::from(item.length)).sum(), payload_len)
    }
}

// ---------------------------------------------------------------------------------------------
// File length
// ---------------------------------------------------------------------------------------------

/// Finds the last existing chunk of `inode` with index in `[chunk_index_begin,
/// chunk_index_end)`: the file length is `index * chunk_size + length` of the last chunk over
/// all the file's chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryLastChunkRequest {
    pub chain_id: ChainId,
    pub inode: InodeId,
    pub chunk_index_begin: u64,
    /// Exclusive.
    pub chunk_index_end: u64,
}

impl WireMessage for QueryLastChunkRequest {
    fn encoded_len(&self) -> usize {
        QUERY_LAST_CHUNK_REQUEST_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(self.chain_id.0);
        out.put_u32_le(0);
        out.put_u64_le(self.inode.0);
        out.put_u64_le(self.chunk_index_begin);
        out.put_u64_le(self.chunk_index_end);
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, QUERY_LAST_CHUNK_REQUEST_LEN)?;
        let mut r = Reader::new(bytes);
        let chain_id = ChainId(r.u32("chain_id")?);
        r.reserved_u32("reserved0")?;
        let inode = InodeId(r.u64("inode")?);
        let chunk_index_begin = r.u64("chunk_index_begin")?;
        let chunk_index_end = r.u64("chunk_index_end")?;
        r.finish()?;
        Ok(QueryLastChunkRequest { chain_id, inode, chunk_index_begin, chunk_index_end })
    }
}

/// The last chunk found in the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastChunk {
    pub index: u64,
    /// Committed length of that chunk.
    pub length: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryLastChunkReply {
    pub outcome: Outcome,
    /// `None` when the range holds no chunk on this chain.
    pub last_chunk: Option<LastChunk>,
}

const QUERY_LAST_CHUNK_FLAG_FOUND: u8 = 1;

impl WireMessage for QueryLastChunkReply {
    fn encoded_len(&self) -> usize {
        QUERY_LAST_CHUNK_REPLY_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.outcome.to_wire());
        out.put_u8(if self.last_chunk.is_some() { QUERY_LAST_CHUNK_FLAG_FOUND } else { 0 });
        out.put_u8(0);
        out.put_u32_le(self.last_chunk.map_or(0, |c| c.length));
        out.put_u64_le(self.last_chunk.map_or(0, |c| c.index));
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, QUERY_LAST_CHUNK_REPLY_LEN)?;
        let mut r = Reader::new(bytes);
        let outcome = Outcome::from_wire("outcome", r.u16("outcome")?)?;
        let flags = r.flags("flags", QUERY_LAST_CHUNK_FLAG_FOUND)?;
        r.reserved_u8("reserved0")?;
        let length = r.u32("last_chunk_length")?;
        let index = r.u64("last_chunk_index")?;
        r.finish()?;
        let found = flags & QUERY_LAST_CHUNK_FLAG_FOUND != 0;
        let last_chunk = optional(found, (index, length), "last_chunk")?
            .map(|(index, length)| LastChunk { index, length });
        Ok(QueryLastChunkReply { outcome, last_chunk })
    }
}

// ---------------------------------------------------------------------------------------------
// Remove a file's chunks
// ---------------------------------------------------------------------------------------------

/// Removes the chunks of `inode` with index in `[chunk_index_begin, chunk_index_end)`, at most
/// `limit` of them per request (the reply says whether more remain), through the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveChunksRequest {
    pub chain_id: ChainId,
    pub chain_version: ChainVersion,
    pub inode: InodeId,
    pub chunk_index_begin: u64,
    /// Exclusive.
    pub chunk_index_end: u64,
    /// Most chunks removed by this request: bounds the work one request can cause.
    pub limit: u32,
}

impl WireMessage for RemoveChunksRequest {
    fn encoded_len(&self) -> usize {
        REMOVE_CHUNKS_REQUEST_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(self.chain_id.0);
        out.put_u32_le(self.chain_version.0);
        out.put_u64_le(self.inode.0);
        out.put_u64_le(self.chunk_index_begin);
        out.put_u64_le(self.chunk_index_end);
        out.put_u32_le(self.limit);
        out.put_u32_le(0);
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, REMOVE_CHUNKS_REQUEST_LEN)?;
        let mut r = Reader::new(bytes);
        let chain_id = ChainId(r.u32("chain_id")?);
        let chain_version = ChainVersion(r.u32("chain_version")?);
        let inode = InodeId(r.u64("inode")?);
        let chunk_index_begin = r.u64("chunk_index_begin")?;
        let chunk_index_end = r.u64("chunk_index_end")?;
        let limit = r.u32("limit")?;
        r.reserved_u32("reserved0")?;
        r.finish()?;
        Ok(RemoveChunksRequest {
            chain_id,
            chain_version,
            inode,
            chunk_index_begin,
            chunk_index_end,
            limit,
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveChunksReply {
    pub outcome: Outcome,
    /// The replica's chain version, when it refused the request's as stale.
    pub current_chain_version: Option<ChainVersion>,
    pub removed_count: u32,
    /// The limit stopped the removal before the end of the range: send the request again.
    pub more: bool,
}

const REMOVE_CHUNKS_FLAG_MORE: u8 = 1;
const REMOVE_CHUNKS_FLAG_CHAIN_VERSION: u8 = 2;

impl WireMessage for RemoveChunksReply {
    fn encoded_len(&self) -> usize {
        REMOVE_CHUNKS_REPLY_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        let mut flags = 0;
        if self.more {
            flags |= REMOVE_CHUNKS_FLAG_MORE;
        }
        if self.current_chain_version.is_some() {
            flags |= REMOVE_CHUNKS_FLAG_CHAIN_VERSION;
        }
        out.put_u16_le(self.outcome.to_wire());
        out.put_u8(flags);
        out.put_u8(0);
        out.put_u32_le(self.current_chain_version.map_or(0, |v| v.0));
        out.put_u32_le(self.removed_count);
        out.put_u32_le(0);
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, REMOVE_CHUNKS_REPLY_LEN)?;
        let mut r = Reader::new(bytes);
        let outcome = Outcome::from_wire("outcome", r.u16("outcome")?)?;
        let flags = r.flags("flags", REMOVE_CHUNKS_FLAG_MORE | REMOVE_CHUNKS_FLAG_CHAIN_VERSION)?;
        r.reserved_u8("reserved0")?;
        let current_chain_version = optional(
            flags & REMOVE_CHUNKS_FLAG_CHAIN_VERSION != 0,
            r.u32("current_chain_version")?,
            "current_chain_version",
        )?
        .map(ChainVersion);
        let removed_count = r.u32("removed_count")?;
        r.reserved_u32("reserved1")?;
        r.finish()?;
        Ok(RemoveChunksReply {
            outcome,
            current_chain_version,
            removed_count,
            more: flags & REMOVE_CHUNKS_FLAG_MORE != 0,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Chunk metadata listing (resync)
// ---------------------------------------------------------------------------------------------

/// Lists a target's chunks on a chain in chunk-id order, for resync to compare replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetChunkMetasRequest {
    pub chain_id: ChainId,
    pub target_id: TargetId,
    /// Resume after this chunk id (exclusive); `None` starts at the first chunk.
    pub start_after: Option<ChunkId>,
    /// Most entries wanted; the server clamps it to [`CHUNK_METAS_MAX`].
    pub limit: u32,
}

const GET_CHUNK_METAS_FLAG_START: u8 = 1;

impl WireMessage for GetChunkMetasRequest {
    fn encoded_len(&self) -> usize {
        GET_CHUNK_METAS_REQUEST_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(self.chain_id.0);
        out.put_u32_le(self.limit);
        out.put_u64_le(self.target_id.0);
        out.put_u8(if self.start_after.is_some() { GET_CHUNK_METAS_FLAG_START } else { 0 });
        out.put_bytes(0, 7);
        out.put_slice(&self.start_after.map_or([0; ChunkId::LEN], ChunkId::to_bytes));
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        expect_len(bytes, GET_CHUNK_METAS_REQUEST_LEN)?;
        let mut r = Reader::new(bytes);
        let chain_id = ChainId(r.u32("chain_id")?);
        let limit = r.u32("limit")?;
        let target_id = TargetId(r.u64("target_id")?);
        let flags = r.flags("flags", GET_CHUNK_METAS_FLAG_START)?;
        r.reserved_u8("reserved0")?;
        r.reserved_u16("reserved1")?;
        r.reserved_u32("reserved2")?;
        let start = r.chunk_id("start_after")?;
        r.finish()?;
        let start_after =
            optional(flags & GET_CHUNK_METAS_FLAG_START != 0, start.to_bytes(), "start_after")?
                .map(ChunkId::from_bytes);
        Ok(GetChunkMetasRequest { chain_id, target_id, start_after, limit })
    }
}

/// One chunk as a replica holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub chunk_id: ChunkId,
    pub commit_version: ChunkVersion,
    pub length: u32,
    pub crc32c: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetChunkMetasReply {
    pub outcome: Outcome,
    /// In chunk-id order; at most [`CHUNK_METAS_MAX`]; empty when the request failed.
    pub metas: Vec<ChunkMeta>,
    /// The limit stopped the listing: ask again after the last entry.
    pub more: bool,
}

const GET_CHUNK_METAS_REPLY_FLAG_MORE: u8 = 1;

impl WireMessage for GetChunkMetasReply {
    fn encoded_len(&self) -> usize {
        LIST_PREFIX_LEN + self.metas.len() * CHUNK_META_LEN
    }

    fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.outcome.to_wire());
        out.put_u8(if self.more { GET_CHUNK_METAS_REPLY_FLAG_MORE } else { 0 });
        out.put_u8(0);
        out.put_u32_le(u32::try_from(self.metas.len()).unwrap_or(u32::MAX));
        for meta in &self.metas {
            out.put_chunk_id(meta.chunk_id);
            out.put_u64_le(meta.commit_version.0);
            out.put_u32_le(meta.length);
            out.put_u32_le(meta.crc32c);
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(bytes);
        let outcome = Outcome::from_wire("outcome", r.u16("outcome")?)?;
        let flags = r.flags("flags", GET_CHUNK_METAS_REPLY_FLAG_MORE)?;
        r.reserved_u8("reserved0")?;
        let count = r.u32("meta_count")?;
        let count = r.list_count("metas", count, CHUNK_META_LEN, CHUNK_METAS_MAX)?;
        let mut metas = Vec::with_capacity(count);
        for _ in 0..count {
            let chunk_id = r.chunk_id("meta.chunk_id")?;
            let commit_version = ChunkVersion(r.u64("meta.commit_version")?);
            let length = r.u32("meta.length")?;
            let crc32c = r.u32("meta.crc32c")?;
            metas.push(ChunkMeta { chunk_id, commit_version, length, crc32c });
        }
        r.finish()?;
        Ok(GetChunkMetasReply {
            outcome,
            metas,
            more: flags & GET_CHUNK_METAS_REPLY_FLAG_MORE != 0,
        })
    }

    fn validate(&self) -> Result<(), MessageError> {
        check_count("metas", self.metas.len(), CHUNK_METAS_MAX)?;
        if !self.outcome.is_ok() && !self.metas.is_empty() {
            return Err(MessageError::Inconsistent { what: "a failed chunk listing has entries" });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Liveness
// ---------------------------------------------------------------------------------------------

/// Liveness probe. Any payload is allowed and echoed back in the [`Pong`], which makes it the
/// frame for measuring raw transfer rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ping {
    pub nonce: u64,
}

/// Answer to a [`Ping`], with its nonce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pong {
    pub nonce: u64,
}

macro_rules! nonce_message {
    ($name:ident) => {
        impl WireMessage for $name {
            fn encoded_len(&self) -> usize {
                PING_LEN
            }

            fn encode(&self, out: &mut impl BufMut) {
                out.put_u64_le(self.nonce);
            }

            fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
                expect_len(bytes, PING_LEN)?;
                let mut r = Reader::new(bytes);
                let nonce = r.u64("nonce")?;
                r.finish()?;
                Ok($name { nonce })
            }

            fn check_payload(&self, _len: u32, _crc32c: u32) -> Result<(), MessageError> {
                Ok(())
            }
        }
    };
}

nonce_message!(Ping);
nonce_message!(Pong);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, MessageKind};
    use bytes::BytesMut;
    use r3fs_types::ErrorCode;

    fn bytes_of(message: impl Into<Message>) -> Vec<u8> {
        let mut out = BytesMut::new();
        message.into().encode(&mut out);
        out.to_vec()
    }

    fn decode(kind: MessageKind, bytes: &[u8]) -> Result<Message, MessageError> {
        Message::decode(kind, bytes)
    }

    fn write() -> UpdateRequest {
        UpdateRequest {
            kind: UpdateKind::Write,
            chain_id: ChainId(1),
            chain_version: ChainVersion(2),
            chunk_id: ChunkId::new(InodeId(3), 4),
            offset: 0,
            length: 3,
            chunk_size: 1 << 20,
            update_version: ChunkVersion(0),
            client_id: ClientId(5),
            sequence: 6,
            payload_crc32c: crc32c::crc32c(b"abc"),
            sending_target_id: Some(TargetId(8)),
        }
    }

    #[test]
    fn update_request_layout_is_pinned() {
        let bytes = bytes_of(write());
        assert_eq!(bytes.len(), UPDATE_REQUEST_LEN);
        assert_eq!(bytes[0], UpdateKind::Write as u8);
        assert_eq!(bytes[1], UPDATE_FLAG_FROM_TARGET);
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[32..48], &ChunkId::new(InodeId(3), 4).to_bytes());
        assert_eq!(&bytes[72..80], &8u64.to_le_bytes());
        assert_eq!(decode(MessageKind::UpdateRequest, &bytes), Ok(write().into()));
    }

    #[test]
    fn unknown_enum_values() {
        let mut bytes = bytes_of(write());
        bytes[0] = 9;
        assert_eq!(
            decode(MessageKind::UpdateRequest, &bytes),
            Err(MessageError::UnknownValue { field: "kind", value: 9 })
        );
        let mut bytes = bytes_of(UpdateReply::default());
        bytes[0..2].copy_from_slice(&1u16.to_le_bytes()); // not a code
        assert_eq!(
            decode(MessageKind::UpdateReply, &bytes),
            Err(MessageError::UnknownValue { field: "outcome", value: 1 })
        );
    }

    #[test]
    fn fixed_messages_have_exact_lengths() {
        let bytes = bytes_of(write());
        assert_eq!(
            decode(MessageKind::UpdateRequest, &bytes[..79]),
            Err(MessageError::Length { expected: 80, actual: 79 })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode(MessageKind::UpdateRequest, &longer),
            Err(MessageError::Length { expected: 80, actual: 81 })
        );
    }

    #[test]
    fn absent_optional_values_must_be_zero() {
        let mut bytes = bytes_of(write());
        bytes[1] = 0; // sending target absent, but its value is 8
        assert_eq!(
            decode(MessageKind::UpdateRequest, &bytes),
            Err(MessageError::AbsentNotZero { field: "sending_target_id" })
        );
        let mut bytes = bytes_of(QueryLastChunkReply::default());
        bytes[8] = 1; // last chunk index while "found" is clear
        assert_eq!(
            decode(MessageKind::QueryLastChunkReply, &bytes),
            Err(MessageError::AbsentNotZero { field: "last_chunk" })
        );
    }

    #[test]
    fn reserved_and_flag_bits_are_refused() {
        let mut bytes = bytes_of(write());
        bytes[2] = 1;
        assert_eq!(
            decode(MessageKind::UpdateRequest, &bytes),
            Err(MessageError::ReservedNotZero { field: "reserved0" })
        );
        let mut bytes = bytes_of(RemoveChunksReply::default());
        bytes[2] = 0x04;
        assert_eq!(
            decode(MessageKind::RemoveChunksReply, &bytes),
            Err(MessageError::UnknownFlags { field: "flags", bits: 0x04 })
        );
    }

    #[test]
    fn list_counts_are_checked_before_allocating() {
        // A count of u32::MAX in an 8-byte message: refused on the bound, nothing allocated.
        let mut bytes = bytes_of(BatchReadRequest::default());
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(MessageKind::BatchReadRequest, &bytes),
            Err(MessageError::TooManyItems {
                field: "items",
                count: u64::from(u32::MAX),
                max: u64::from(BATCH_READ_ITEMS_MAX)
            })
        );
        // A count within the bound whose entries are not all there.
        let mut bytes = bytes_of(GetChunkMetasReply::default());
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[0; CHUNK_META_LEN]);
        assert_eq!(
            decode(MessageKind::GetChunkMetasReply, &bytes),
            Err(MessageError::ListLength { field: "metas", count: 2, actual: CHUNK_META_LEN })
        );
    }

    #[test]
    fn largest_lists_round_trip_and_one_more_is_refused() {
        let item = BatchReadItem {
            chain_id: ChainId(1),
            chunk_id: ChunkId::new(InodeId(2), 3),
            offset: 0,
            length: 4096,
        };
        let full = BatchReadRequest { items: vec![item; BATCH_READ_ITEMS_MAX as usize] };
        let bytes = bytes_of(full.clone());
        assert_eq!(decode(MessageKind::BatchReadRequest, &bytes), Ok(full.clone().into()));
        let mut over = full;
        over.items.push(item);
        assert!(matches!(
            Message::from(over.clone()).validate(),
            Err(MessageError::TooManyItems { .. })
        ));
        assert!(matches!(
            decode(MessageKind::BatchReadRequest, &bytes_of(over)),
            Err(MessageError::TooManyItems { .. })
        ));

        let meta = ChunkMeta {
            chunk_id: ChunkId::new(InodeId(2), 3),
            commit_version: ChunkVersion(4),
            length: 5,
            crc32c: 6,
        };
        let full = GetChunkMetasReply {
            outcome: Outcome::Ok,
            metas: vec![meta; CHUNK_METAS_MAX as usize],
            more: true,
        };
        assert_eq!(
            decode(MessageKind::GetChunkMetasReply, &bytes_of(full.clone())),
            Ok(full.into())
        );
    }

    #[test]
    fn failed_batch_reads_carry_no_data() {
        let failed_with_items = BatchReadReply {
            outcome: Outcome::Failed(ErrorCode::TargetNotServing),
            items: vec![BatchReadReplyItem::default()],
        };
        let expected = MessageError::Inconsistent { what: "a failed batch read lists items" };
        assert_eq!(Message::from(failed_with_items.clone()).validate(), Err(expected.clone()));
        assert_eq!(
            decode(MessageKind::BatchReadReply, &bytes_of(failed_with_items)),
            Err(expected)
        );

        let failed_item_with_data = BatchReadReply {
            outcome: Outcome::Ok,
            items: vec![BatchReadReplyItem {
                outcome: Outcome::Failed(ErrorCode::ChunkNotFound),
                length: 4,
                crc32c: 0,
            }],
        };
        assert!(matches!(
            decode(MessageKind::BatchReadReply, &bytes_of(failed_item_with_data)),
            Err(MessageError::Inconsistent { .. })
        ));

        let failed_listing = GetChunkMetasReply {
            outcome: Outcome::Failed(ErrorCode::TargetNotFound),
            metas: vec![ChunkMeta {
                chunk_id: ChunkId::new(InodeId(1), 1),
                commit_version: ChunkVersion(1),
                length: 0,
                crc32c: 0,
            }],
            more: false,
        };
        assert!(matches!(
            decode(MessageKind::GetChunkMetasReply, &bytes_of(failed_listing)),
            Err(MessageError::Inconsistent { .. })
        ));
    }

    #[test]
    fn batch_read_payload_is_the_items_back_to_back() {
        let reply = BatchReadReply {
            outcome: Outcome::Ok,
            items: vec![
                BatchReadReplyItem {
                    outcome: Outcome::Ok,
                    length: 3,
                    crc32c: crc32c::crc32c(b"abc"),
                },
                BatchReadReplyItem {
                    outcome: Outcome::Failed(ErrorCode::ChunkNotCommitted),
                    length: 0,
                    crc32c: 0,
                },
                BatchReadReplyItem {
                    outcome: Outcome::Ok,
                    length: 2,
                    crc32c: crc32c::crc32c(b"de"),
                },
            ],
        };
        let ranges: Vec<_> = reply.item_ranges().map(|(_, range)| range).collect();
        assert_eq!(ranges, vec![0..3, 3..3, 3..5]);
        let message = Message::from(reply.clone());
        assert_eq!(message.check_payload(5, 0), Ok(()));
        assert_eq!(
            message.check_payload(6, 0),
            Err(MessageError::PayloadLength { expected: 5, actual: 6 })
        );
        assert_eq!(reply.verify_item_crc32cs(b"abcde"), Ok(()));
        assert!(matches!(
            reply.verify_item_crc32cs(b"abcdX"),
            Err(ItemCheckError::Checksum { index: 2, .. })
        ));
        assert_eq!(
            reply.verify_item_crc32cs(b"abc"),
            Err(ItemCheckError::Missing { index: 2, payload_len: 3 })
        );
    }

    #[test]
    fn update_payload_rules() {
        let write = Message::from(write());
        let crc = crc32c::crc32c(b"abc");
        assert_eq!(write.check_payload(3, crc), Ok(()));
        assert_eq!(
            write.check_payload(3, crc ^ 1),
            Err(MessageError::PayloadCrcMismatch { message: crc, frame: crc ^ 1 })
        );
        let mut truncate = self::write();
        truncate.kind = UpdateKind::Truncate;
        truncate.payload_crc32c = 0;
        let truncate = Message::from(truncate);
        assert_eq!(truncate.check_payload(0, 0), Ok(()));
        assert_eq!(
            truncate.check_payload(3, 0),
            Err(MessageError::PayloadLength { expected: 0, actual: 3 })
        );
        // Ping echoes any payload.
        assert_eq!(Message::from(Ping { nonce: 1 }).check_payload(99, 7), Ok(()));
    }
}
