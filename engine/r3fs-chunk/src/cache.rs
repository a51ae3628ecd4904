//! A bounded LRU cache of block header pages (stored unit checksums).
//!
//! Verifying a 4 KiB read needs the unit's stored checksum from the block header; with the page
//! cached a random read costs one IO instead of two. Each entry knows how many of its units are
//! valid: a reader that fetched a page only vouches for the units below the chunk length it saw,
//! while a writer vouches for everything it wrote. An insert never lowers what a present entry
//! vouches for, so a reader whose header read raced with an append cannot roll the cache back.

use crate::format::BlockAddr;
use crate::hash::FastMap;
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Debug)]
struct Entry {
    /// Stored checksums of the page's units (up to the block's unit count).
    crcs: Rc<[u32]>,
    /// Units `[page_first_unit, valid_end)` are valid; an absolute unit index.
    valid_end: u32,
    /// Last use. The LRU index keeps the tick of insertion (or of the last time eviction
    /// found the entry used): a hit costs no index update, eviction skips entries used since.
    tick: u64,
    indexed_tick: u64,
}

/// Key: block and header page index.
type Key = (BlockAddr, u32);

#[derive(Debug)]
pub struct PageCache {
    entries: FastMap<Key, Entry>,
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: u64,
    bytes_max: u64,
}

/// Approximate bookkeeping cost of an entry beyond its checksums.
const ENTRY_OVERHEAD_BYTES: u64 = 96;

impl PageCache {
    pub fn new(bytes_max: u64) -> PageCache {
        PageCache {
            entries: FastMap::default(),
            lru: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            bytes_max,
        }
    }

    fn cost(crcs: &[u32]) -> u64 {
        crcs.len() as u64 * 4 + ENTRY_OVERHEAD_BYTES
    }

    /// The page's checksums if they are valid up to absolute unit `units_end`.
    pub fn get(&mut self, addr: BlockAddr, page: u32, units_end: u32) -> Option<Rc<[u32]>> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(&(addr, page))?;
        if entry.valid_end < units_end {
            return None;
        }
        entry.tick = tick;
        Some(entry.crcs.clone())
    }

    /// Inserts a page vouched for up to absolute unit `valid_end`. `authoritative` (a writer)
    /// replaces any entry; otherwise (a reader) an entry vouching for more is kept.
    pub fn insert(
        &mut self,
        addr: BlockAddr,
        page: u32,
        crcs: Rc<[u32]>,
        valid_end: u32,
        authoritative: bool,
    ) {
        if self.bytes_max == 0 {
            return;
        }
        if let Some(old) = self.entries.get(&(addr, page)) {
            if !authoritative && old.valid_end >= valid_end {
                return;
            }
            self.remove(addr, page);
        }
        self.tick += 1;
        self.bytes += Self::cost(&crcs);
        self.lru.insert(self.tick, (addr, page));
        let tick = self.tick;
        self.entries.insert((addr, page), Entry { crcs, valid_end, tick, indexed_tick: tick });
        while self.bytes > self.bytes_max {
            let Some((indexed, key)) = self.lru.pop_first() else { break };
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            if entry.tick != indexed {
                // Used since it was indexed: give it its place back.
                entry.indexed_tick = entry.tick;
                self.lru.insert(entry.tick, key);
                continue;
            }
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes -= Self::cost(&entry.crcs);
            }
        }
    }

    fn remove(&mut self, addr: BlockAddr, page: u32) {
        if let Some(entry) = self.entries.remove(&(addr, page)) {
            self.lru.remove(&entry.indexed_tick);
            self.bytes -= Self::cost(&entry.crcs);
        }
    }

    /// Forgets every page of a block (it was freed or is being rewritten whole).
    pub fn forget_block(&mut self, addr: BlockAddr, pages: u32) {
        for page in 0..pages {
            self.remove(addr, page);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SizeClass;

    fn addr(slot: u32) -> BlockAddr {
        BlockAddr { class: SizeClass::ALL[0], slot }
    }

    #[test]
    fn readers_never_roll_back_writers_and_lru_evicts() {
        let mut cache = PageCache::new(2 * (16 * 4 + ENTRY_OVERHEAD_BYTES));
        let crcs: Rc<[u32]> = vec![1u32; 16].into();
        cache.insert(addr(0), 0, crcs.clone(), 16, true);
        cache.insert(addr(0), 0, vec![0u32; 16].into(), 8, false);
        assert_eq!(cache.get(addr(0), 0, 16).unwrap()[0], 1);
        assert!(cache.get(addr(0), 0, 17).is_none());
        cache.insert(addr(1), 0, crcs.clone(), 16, true);
        cache.get(addr(0), 0, 1);
        cache.insert(addr(2), 0, crcs, 16, true);
        assert!(cache.get(addr(1), 0, 1).is_none(), "least recently used is evicted");
        assert!(cache.get(addr(0), 0, 1).is_some());
        cache.forget_block(addr(0), 1);
        assert!(cache.get(addr(0), 0, 1).is_none());
    }
}
