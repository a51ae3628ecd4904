//! The table that makes retried client writes idempotent: for each `(client, channel)`, the last
//! committed write's sequence number and outcome. Every replica records the writes it commits
//! (the tag travels with the forwarded update), so a new head answers retries of writes that
//! committed before the old head failed.

use crate::message::WriteOk;
use crate::types::{ChannelKey, UpdateTag};
use r3fs_types::ChunkId;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    seq: u64,
    chunk: ChunkId,
    ok: WriteOk,
    stamp: u64,
}

/// What the table knows about a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupCheck {
    /// Not seen: a new write (or one whose entry was evicted).
    New,
    /// This exact write committed with this outcome.
    Committed { chunk: ChunkId, ok: WriteOk },
    /// The channel has moved past this sequence number: a late duplicate of a write whose
    /// outcome the client already received.
    Superseded { last_seq: u64 },
}

/// Bounded: when full, the entry least recently recorded is evicted. A client retrying a write
/// after more than `entries_max` other channels wrote loses the guarantee (the chunk metadata
/// still remembers the last tag per chunk, see [`crate::ChunkState::tag`]).
#[derive(Clone, Debug)]
pub struct DedupTable {
    entries_max: usize,
    entries: BTreeMap<ChannelKey, Entry>,
    by_stamp: BTreeMap<u64, ChannelKey>,
    /// The channels whose last write is on each chunk, so a chunk's entries can be dropped
    /// without a scan.
    by_chunk: BTreeSet<(ChunkId, ChannelKey)>,
    next_stamp: u64,
}

impl DedupTable {
    pub fn new(entries_max: usize) -> Self {
        assert!(entries_max > 0, "a dedup table needs room for one entry");
        Self {
            entries_max,
            entries: BTreeMap::new(),
            by_stamp: BTreeMap::new(),
            by_chunk: BTreeSet::new(),
            next_stamp: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn check(&self, tag: &UpdateTag) -> DedupCheck {
        match self.entries.get(&tag.channel_key()) {
            None => DedupCheck::New,
            Some(e) if e.seq == tag.seq => DedupCheck::Committed { chunk: e.chunk, ok: e.ok },
            Some(e) if e.seq > tag.seq => DedupCheck::Superseded { last_seq: e.seq },
            Some(_) => DedupCheck::New,
        }
    }

    /// Records a committed write. Older sequence numbers never overwrite newer ones (a replica
    /// may commit a re-forwarded old update after the channel moved on elsewhere).
    pub fn record(&mut self, tag: &UpdateTag, chunk: ChunkId, ok: WriteOk) {
        let key = tag.channel_key();
        if let Some(old) = self.entries.get(&key) {
            if old.seq > tag.seq {
                return;
            }
            self.by_stamp.remove(&old.stamp);
            self.by_chunk.remove(&(old.chunk, key));
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.entries.insert(key, Entry { seq: tag.seq, chunk, ok, stamp });
        self.by_stamp.insert(stamp, key);
        self.by_chunk.insert((chunk, key));
        while self.entries.len() > self.entries_max {
            let Some((_, oldest)) = self.by_stamp.pop_first() else { break };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.by_chunk.remove(&(entry.chunk, oldest));
            }
        }
        debug_assert_eq!(self.entries.len(), self.by_stamp.len());
        debug_assert_eq!(self.entries.len(), self.by_chunk.len());
    }

    /// Forgets every write recorded on `chunk`: its content was replaced wholesale (resync), so
    /// the recorded outcomes may name versions the chunk no longer has. Retries of those writes
    /// are then recognised only by the chunk's last tag, or applied as new.
    pub fn forget_chunk(&mut self, chunk: ChunkId) {
        let start = ChannelKey { client: r3fs_types::ClientId(0), channel: 0 };
        let keys: Vec<ChannelKey> = self
            .by_chunk
            .range((chunk, start)..)
            .take_while(|(c, _)| *c == chunk)
            .map(|(_, key)| *key)
            .collect();
        for key in keys {
            self.by_chunk.remove(&(chunk, key));
            if let Some(entry) = self.entries.remove(&key) {
                self.by_stamp.remove(&entry.stamp);
            }
        }
        debug_assert_eq!(self.entries.len(), self.by_stamp.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r3fs_types::{ChunkVersion, ClientId, InodeId};

    fn tag(client: u64, seq: u64) -> UpdateTag {
        UpdateTag { client: ClientId(client), channel: 0, seq }
    }

    fn ok(v: u64) -> WriteOk {
        WriteOk { version: ChunkVersion(v), length_bytes: 0, checksum: 0, removed: false }
    }

    #[test]
    fn remembers_the_last_write_per_channel() {
        let chunk = ChunkId::new(InodeId(1), 0);
        let mut table = DedupTable::new(2);
        assert_eq!(table.check(&tag(1, 1)), DedupCheck::New);
        table.record(&tag(1, 1), chunk, ok(1));
        assert_eq!(table.check(&tag(1, 1)), DedupCheck::Committed { chunk, ok: ok(1) });
        assert_eq!(table.check(&tag(1, 2)), DedupCheck::New);
        table.record(&tag(1, 2), chunk, ok(2));
        assert_eq!(table.check(&tag(1, 1)), DedupCheck::Superseded { last_seq: 2 });
        table.record(&tag(1, 1), chunk, ok(1));
        assert_eq!(table.check(&tag(1, 2)), DedupCheck::Committed { chunk, ok: ok(2) });
        table.record(&tag(2, 1), chunk, ok(3));
        table.record(&tag(3, 1), chunk, ok(4));
        assert_eq!(table.len(), 2);
        assert_eq!(table.check(&tag(1, 2)), DedupCheck::New, "the oldest entry was evicted");
    }

    #[test]
    fn forgetting_a_chunk_drops_only_its_entries() {
        let a = ChunkId::new(InodeId(1), 0);
        let b = ChunkId::new(InodeId(1), 1);
        let mut table = DedupTable::new(8);
        table.record(&tag(1, 1), a, ok(1));
        table.record(&tag(2, 1), b, ok(1));
        table.record(&tag(3, 4), a, ok(2));
        // Channel 2 moves its last write onto chunk a: only that entry is on a now.
        table.record(&tag(2, 2), a, ok(3));
        table.record(&tag(1, 2), b, ok(2));
        table.forget_chunk(a);
        assert_eq!(table.len(), 1);
        assert_eq!(table.check(&tag(2, 2)), DedupCheck::New);
        assert_eq!(table.check(&tag(3, 4)), DedupCheck::New);
        assert_eq!(table.check(&tag(1, 2)), DedupCheck::Committed { chunk: b, ok: ok(2) });
        table.forget_chunk(b);
        assert!(table.is_empty());
        // Still a working table after being emptied.
        table.record(&tag(4, 1), a, ok(4));
        assert_eq!(table.check(&tag(4, 1)), DedupCheck::Committed { chunk: a, ok: ok(4) });
    }
}
