//! Block allocation and space accounting (pure; the store does the file IO it asks for).
//!
//! Each size class has one file of equal slots. A slot is exactly one of: used (by a committed
//! or pending chunk, or quarantined), free and backed by file-system space, free and unbacked
//! (a punched hole or a failed growth), or in limbo (being backed right now). Only used and
//! backed slots count against the target's capacity; reclaiming space for another class punches
//! free slots of other classes.
//!
//! Blocks being read are never handed out again until their readers finish: [`Allocator::release`]
//! of a block with readers defers the free to the last [`Allocator::end_read`].

use crate::format::{BlockAddr, CLASS_COUNT, SizeClass};
use crate::hash::{FastMap, FastSet};
use std::collections::{BTreeSet, HashSet};

#[derive(Debug, Default)]
struct ClassSpace {
    /// Slots in the file's index space.
    slots: u32,
    free: BTreeSet<u32>,
    unbacked: BTreeSet<u32>,
    used: u32,
    /// Slots being backed (counted as reserved, in neither set).
    limbo: u32,
}

#[derive(Debug, Default)]
struct ReadState {
    readers: u32,
    /// Largest unit end any current reader may touch.
    units_end_max: u32,
    free_when_idle: bool,
}

/// What the store must do to hand out a block.
#[derive(Debug, PartialEq, Eq)]
pub enum Grant {
    /// A backed free slot: ready.
    Ready(BlockAddr),
    /// Back `addr` (fallocate its stride), then [`Allocator::backed`] or [`Allocator::backing_failed`].
    Back(BlockAddr),
    /// Grow the class file to hold `slots` new slots starting at `first`, handing out `first`;
    /// then [`Allocator::grown`] or [`Allocator::growth_failed`].
    Grow { first: BlockAddr, slots: u32 },
    /// Punch these free slots of other classes first (already moved to unbacked), then ask again.
    Reclaim(Vec<BlockAddr>),
    /// Not enough space even after reclaiming everything free.
    NoSpace { needed_bytes: u64, free_bytes: u64 },
}

/// Space counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Configured limit for block space.
    pub capacity_bytes: u64,
    /// Block space backed by the file system (used + free-backed + in limbo).
    pub reserved_bytes: u64,
    /// Block space of used slots (committed, pending, quarantined).
    pub used_bytes: u64,
    /// Block space that cannot be reused before a restart (an IO was cancelled mid-flight).
    pub quarantined_bytes: u64,
}

impl SpaceStats {
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes)
    }
}

#[derive(Debug)]
pub struct Allocator {
    classes: [ClassSpace; CLASS_COUNT],
    capacity_bytes: u64,
    grow_bytes_max: u64,
    quarantined_bytes: u64,
    reads: FastMap<BlockAddr, ReadState>,
    /// Blocks whose in-place updates were cancelled mid-IO: only copy-on-write until restart.
    tainted: FastSet<BlockAddr>,
}

impl Allocator {
    /// `slots[c]` slots exist in class `c`'s file; `used` are referenced; all others are free and
    /// assumed backed (conservative: reserved space is never under-counted).
    pub fn new(
        capacity_bytes: u64,
        grow_bytes_max: u64,
        slots: [u32; CLASS_COUNT],
        used: impl IntoIterator<Item = BlockAddr>,
    ) -> Result<Allocator, String> {
        let mut classes: [ClassSpace; CLASS_COUNT] = Default::default();
        let mut taken: Vec<HashSet<u32>> = vec![HashSet::new(); CLASS_COUNT];
        for addr in used {
            let c = addr.class.index();
            if addr.slot >= slots[c] {
                return Err(format!(
                    "block {} of {} is beyond the end of its file ({} slots)",
                    addr.slot,
                    addr.class.file_name(),
                    slots[c]
                ));
            }
            if !taken[c].insert(addr.slot) {
                return Err(format!(
                    "block {} of {} is referenced by two chunks",
                    addr.slot,
                    addr.class.file_name()
                ));
            }
        }
        for (c, space) in classes.iter_mut().enumerate() {
            space.slots = slots[c];
            space.used = taken[c].len() as u32;
            space.free = (0..slots[c]).filter(|s| !taken[c].contains(s)).collect();
        }
        Ok(Allocator {
            classes,
            capacity_bytes,
            grow_bytes_max,
            quarantined_bytes: 0,
            reads: FastMap::default(),
            tainted: FastSet::default(),
        })
    }

    pub fn stats(&self) -> SpaceStats {
        let mut stats = SpaceStats {
            capacity_bytes: self.capacity_bytes,
            quarantined_bytes: self.quarantined_bytes,
            ..SpaceStats::default()
        };
        for class in SizeClass::ALL {
            let space = &self.classes[class.index()];
            let stride = class.stride_bytes();
            stats.reserved_bytes += u64::from(space.slots - space.unbacked.len() as u32) * stride;
            stats.used_bytes += u64::from(space.used) * stride;
        }
        stats
    }

    /// Slots in class `class`'s index space (the file may be shorter after failed growth).
    pub fn slots(&self, class: SizeClass) -> u32 {
        self.classes[class.index()].slots
    }

    /// Highest used-or-limbo slot + 1: the file may be truncated to this many slots.
    pub fn trim_slots(&mut self, class: SizeClass) -> u32 {
        let space = &mut self.classes[class.index()];
        while space.slots > 0 {
            let last = space.slots - 1;
            if space.free.remove(&last) || space.unbacked.remove(&last) {
                space.slots = last;
            } else {
                break;
            }
        }
        space.slots
    }

    /// Decides how to obtain a block of `class`.
    pub fn grant(&mut self, class: SizeClass) -> Grant {
        let c = class.index();
        let stride = class.stride_bytes();
        if let Some(slot) = self.classes[c].free.pop_first() {
            self.classes[c].used += 1;
            return Grant::Ready(BlockAddr { class, slot });
        }
        let stats = self.stats();
        let headroom = self.capacity_bytes.saturating_sub(stats.reserved_bytes);
        if headroom >= stride {
            let space = &mut self.classes[c];
            if let Some(slot) = space.unbacked.pop_first() {
                space.used += 1;
                space.limbo += 1;
                return Grant::Back(BlockAddr { class, slot });
            }
            let by_budget = headroom / stride;
            let by_step = (self.grow_bytes_max / stride).max(1);
            let slots = by_budget.min(by_step).min(u64::from(u32::MAX - space.slots)) as u32;
            if slots == 0 {
                return Grant::NoSpace { needed_bytes: stride, free_bytes: 0 };
            }
            let first = BlockAddr { class, slot: space.slots };
            space.slots += slots;
            space.used += 1;
            space.limbo += slots;
            return Grant::Grow { first, slots };
        }
        // Reclaim free backed slots of other classes, highest first (files stay compact).
        let needed = stride - headroom;
        let reclaimable: u64 = SizeClass::ALL
            .iter()
            .filter(|k| **k != class)
            .map(|k| self.classes[k.index()].free.len() as u64 * k.stride_bytes())
            .sum();
        if reclaimable < needed {
            return Grant::NoSpace { needed_bytes: stride, free_bytes: headroom + reclaimable };
        }
        let mut victims = Vec::new();
        let mut got = 0;
        // Largest classes first: fewer punches.
        for k in SizeClass::ALL.iter().rev().filter(|k| **k != class) {
            let space = &mut self.classes[k.index()];
            while got < needed {
                let Some(slot) = space.free.pop_last() else { break };
                space.unbacked.insert(slot);
                victims.push(BlockAddr { class: *k, slot });
                got += k.stride_bytes();
            }
        }
        Grant::Reclaim(victims)
    }

    /// A `Grant::Back` succeeded.
    pub fn backed(&mut self, addr: BlockAddr) {
        let space = &mut self.classes[addr.class.index()];
        assert!(space.limbo > 0);
        space.limbo -= 1;
    }

    /// A `Grant::Back` failed: the slot is unbacked again.
    pub fn backing_failed(&mut self, addr: BlockAddr) {
        let space = &mut self.classes[addr.class.index()];
        assert!(space.limbo > 0 && space.used > 0);
        space.limbo -= 1;
        space.used -= 1;
        space.unbacked.insert(addr.slot);
    }

    /// A `Grant::Grow` succeeded: the other new slots are free.
    pub fn grown(&mut self, first: BlockAddr, slots: u32) {
        let space = &mut self.classes[first.class.index()];
        assert!(space.limbo >= slots);
        space.limbo -= slots;
        space.free.extend(first.slot + 1..first.slot + slots);
    }

    /// A `Grant::Grow` failed: the new slots stay in the index space, unbacked.
    pub fn growth_failed(&mut self, first: BlockAddr, slots: u32) {
        let space = &mut self.classes[first.class.index()];
        assert!(space.limbo >= slots && space.used > 0);
        space.limbo -= slots;
        space.used -= 1;
        space.unbacked.extend(first.slot..first.slot + slots);
    }

    /// Punching a reclaimed slot failed: it is still backed, so count it as free again.
    pub fn punch_failed(&mut self, addr: BlockAddr) {
        let space = &mut self.classes[addr.class.index()];
        if space.unbacked.remove(&addr.slot) {
            space.free.insert(addr.slot);
        }
    }

    /// The block is no longer referenced; it is free once its readers finish. Returns whether
    /// it was freed now.
    pub fn release(&mut self, addr: BlockAddr) -> bool {
        self.tainted.remove(&addr);
        if let Some(read) = self.reads.get_mut(&addr) {
            read.free_when_idle = true;
            return false;
        }
        self.free_now(addr);
        true
    }

    fn free_now(&mut self, addr: BlockAddr) {
        let space = &mut self.classes[addr.class.index()];
        assert!(space.used > 0, "release of {addr:?} with no used slots");
        assert!(addr.slot < space.slots);
        space.used -= 1;
        let fresh = space.free.insert(addr.slot);
        assert!(fresh, "double free of {addr:?}");
    }

    /// The block may still be written by an IO nobody waits for: never reuse it in this run.
    pub fn quarantine(&mut self, addr: BlockAddr) {
        self.quarantined_bytes += addr.class.stride_bytes();
    }

    pub fn taint(&mut self, addr: BlockAddr) {
        self.tainted.insert(addr);
    }

    pub fn is_tainted(&self, addr: BlockAddr) -> bool {
        self.tainted.contains(&addr)
    }

    pub fn begin_read(&mut self, addr: BlockAddr, units_end: u32) {
        let read = self.reads.entry(addr).or_default();
        read.readers += 1;
        read.units_end_max = read.units_end_max.max(units_end);
    }

    /// Returns whether the block was freed now (its release was waiting for this reader).
    pub fn end_read(&mut self, addr: BlockAddr) -> bool {
        let Some(read) = self.reads.get_mut(&addr) else {
            panic!("end_read of {addr:?} without begin_read");
        };
        read.readers -= 1;
        if read.readers > 0 {
            return false;
        }
        let free = read.free_when_idle;
        self.reads.remove(&addr);
        if free {
            self.free_now(addr);
        }
        free
    }

    /// The highest unit end a current reader of `addr` may read (0 without readers).
    pub fn read_units_end(&self, addr: BlockAddr) -> u32 {
        self.reads.get(&addr).map_or(0, |r| r.units_end_max)
    }

    /// Checks the counters against the sets (tests and debug builds).
    pub fn check(&self) {
        for class in SizeClass::ALL {
            let space = &self.classes[class.index()];
            let accounted =
                space.free.len() as u64 + space.unbacked.len() as u64 + u64::from(space.used);
            // Limbo slots of a growth are counted in `used` for the one handed out only.
            assert!(
                accounted <= u64::from(space.slots),
                "{class:?}: {accounted} accounted slots in {} slots",
                space.slots
            );
            assert!(space.free.iter().chain(space.unbacked.iter()).all(|&s| s < space.slots));
            assert!(space.free.intersection(&space.unbacked).next().is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(i: u8) -> SizeClass {
        SizeClass::from_index(i).unwrap()
    }

    #[test]
    fn grows_then_reuses_then_reclaims() {
        let c0 = class(0);
        let c1 = class(1);
        let cap = 4 * c0.stride_bytes();
        let mut a = Allocator::new(cap, 2 * c0.stride_bytes(), [0; CLASS_COUNT], []).unwrap();
        let Grant::Grow { first, slots } = a.grant(c0) else { panic!() };
        assert_eq!((first.slot, slots), (0, 2));
        a.grown(first, slots);
        assert_eq!(a.grant(c0), Grant::Ready(BlockAddr { class: c0, slot: 1 }));
        let Grant::Grow { first, slots } = a.grant(c0) else { panic!() };
        assert_eq!((first.slot, slots), (2, 2));
        a.grown(first, slots);
        assert_eq!(a.stats().reserved_bytes, cap);
        // Class 1 needs space: nothing free to reclaim yet.
        assert!(matches!(a.grant(c1), Grant::NoSpace { .. }));
        a.release(BlockAddr { class: c0, slot: 0 });
        a.release(BlockAddr { class: c0, slot: 2 });
        // slot 3 is free too: three free class-0 slots, class 1 needs about two.
        let Grant::Reclaim(victims) = a.grant(c1) else { panic!() };
        assert_eq!(victims.len(), 2);
        let Grant::Grow { first, slots } = a.grant(c1) else { panic!() };
        assert_eq!(slots, 1);
        a.grown(first, slots);
        assert!(a.stats().reserved_bytes <= cap);
        a.check();
    }

    #[test]
    fn release_waits_for_readers() {
        let c0 = class(0);
        let addr = BlockAddr { class: c0, slot: 0 };
        let mut a = Allocator::new(
            u64::MAX,
            1 << 30,
            {
                let mut s = [0; CLASS_COUNT];
                s[0] = 1;
                s
            },
            [addr],
        )
        .unwrap();
        a.begin_read(addr, 3);
        assert_eq!(a.read_units_end(addr), 3);
        a.release(addr);
        assert!(matches!(a.grant(c0), Grant::Grow { .. }), "slot 0 is still being read");
        a.end_read(addr);
        assert_eq!(a.read_units_end(addr), 0);
        assert_eq!(a.grant(c0), Grant::Ready(addr));
    }

    #[test]
    fn open_rejects_double_reference() {
        let addr = BlockAddr { class: class(2), slot: 0 };
        let mut slots = [0; CLASS_COUNT];
        slots[2] = 1;
        assert!(Allocator::new(u64::MAX, 1 << 30, slots, [addr, addr]).is_err());
        assert!(Allocator::new(u64::MAX, 1 << 30, [0; CLASS_COUNT], [addr]).is_err());
    }

    #[test]
    fn failed_growth_leaves_unbacked_slots() {
        let c0 = class(0);
        let mut a = Allocator::new(u64::MAX, 4 * c0.stride_bytes(), [0; CLASS_COUNT], []).unwrap();
        let Grant::Grow { first, slots } = a.grant(c0) else { panic!() };
        a.growth_failed(first, slots);
        assert_eq!(a.stats().reserved_bytes, 0);
        assert_eq!(a.stats().used_bytes, 0);
        assert!(matches!(a.grant(c0), Grant::Back(_)));
        a.check();
    }
}
