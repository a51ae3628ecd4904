//! Key ranges and conflict history: the sans-IO core of optimistic concurrency control shared by
//! the memory and embedded backends (FoundationDB has its own resolvers).
//!
//! A transaction's *read set* and every committed transaction's *write set* are sets of half-open
//! key ranges `[begin, end)`. A commit conflicts iff some transaction that committed after its read
//! version wrote into a range it read serializably. [`ConflictHistory`] keeps the write sets of
//! recent commits keyed by commit version, bounded in count and bytes; a read version older than
//! what it still holds cannot be checked and conflicts (FoundationDB's `transaction_too_old`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use crate::KvError;

/// The smallest key strictly greater than `key`: `key` followed by a zero byte. `[key,
/// key_after(key))` is the range holding exactly `key`.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut after = Vec::with_capacity(key.len() + 1);
    after.extend_from_slice(key);
    after.push(0);
    after
}

/// A set of keys represented as disjoint, non-adjacent half-open ranges, kept merged so that
/// membership and intersection tests are one ordered lookup each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// begin -> end; ranges are disjoint and never touch (touching ranges are merged).
    ranges: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl RangeSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Adds `[begin, end)`; an empty or inverted range adds nothing.
    pub(crate) fn insert(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        let mut merged_begin = begin.to_vec();
        let mut merged_end = end.to_vec();
        // Every range that overlaps or touches [begin, end] starts at or before `end`; walking
        // backwards from there, stop at the first one that ends before `begin`.
        let mut absorbed = Vec::new();
        for (range_begin, range_end) in
            self.ranges.range::<[u8], _>((Bound::Unbounded, Bound::Included(end))).rev()
        {
            if range_end.as_slice() < begin {
                break;
            }
            absorbed.push(range_begin.clone());
            if range_begin < &merged_begin {
                merged_begin = range_begin.clone();
            }
            if range_end > &merged_end {
                merged_end = range_end.clone();
            }
        }
        for range_begin in absorbed {
            self.ranges.remove(&range_begin);
        }
        self.ranges.insert(merged_begin, merged_end);
    }

    /// Whether `key` is in the set.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match self.ranges.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back() {
            Some((_, end)) => end.as_slice() > key,
            None => false,
        }
    }

    /// Whether the set shares a key with `[begin, end)`.
    pub(crate) fn intersects(&self, begin: &[u8], end: &[u8]) -> bool {
        if begin >= end {
            return false;
        }
        // Only the last range starting before `end` can reach past `begin`: earlier ones end
        // before it starts.
        match self.ranges.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(end))).next_back() {
            Some((_, range_end)) => range_end.as_slice() > begin,
            None => false,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ranges.iter().map(|(b, e)| (b.as_slice(), e.as_slice()))
    }

    /// Bytes of keys held, for memory accounting.
    pub(crate) fn bytes(&self) -> usize {
        self.ranges.iter().map(|(b, e)| b.len() + e.len()).sum()
    }
}

/// What one committed transaction wrote: point keys and cleared ranges.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteSet {
    pub(crate) points: BTreeSet<Vec<u8>>,
    pub(crate) ranges: RangeSet,
}

impl WriteSet {
    /// Whether this write set touches any key of `reads`.
    pub(crate) fn intersects(&self, reads: &RangeSet) -> bool {
        reads.iter().any(|(begin, end)| {
            self.ranges.intersects(begin, end)
                || self
                    .points
                    .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                    .next()
                    .is_some()
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.points.iter().map(Vec::len).sum::<usize>() + self.ranges.bytes()
    }
}

/// Bounds of the conflict history. A transaction whose read version predates the retained history
/// gets [`KvError::Conflict`] at commit (memory backend: also on reads) and is retried with a fresh
/// snapshot, like FoundationDB's `transaction_too_old`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    pub(crate) txns_max: usize,
    pub(crate) bytes_max: usize,
}

/// Write sets of recently committed transactions, ascending by commit version.
#[derive(Debug)]
pub(crate) struct ConflictHistory {
    entries: VecDeque<(u64, WriteSet)>,
    bytes: usize,
    /// Every commit with a version above this is in `entries`; a read version below it cannot be
    /// checked.
    horizon_version: u64,
    limits: HistoryLimits,
}

impl ConflictHistory {
    pub(crate) fn new(limits: HistoryLimits, start_version: u64) -> Self {
        assert!(limits.txns_max >= 1, "conflict history must hold at least one transaction");
        Self { entries: VecDeque::new(), bytes: 0, horizon_version: start_version, limits }
    }

    /// The oldest read version that can still be checked.
    pub(crate) fn horizon_version(&self) -> u64 {
        self.horizon_version
    }

    /// Ok if no transaction committed after `read_version` wrote into `reads`.
    pub(crate) fn check(&self, read_version: u64, reads: &RangeSet) -> Result<(), KvError> {
        if read_version < self.horizon_version {
            return Err(KvError::Conflict);
        }
        if reads.is_empty() {
            return Ok(());
        }
        let first_newer = self.entries.partition_point(|(version, _)| *version <= read_version);
        let conflicted =
            self.entries.range(first_newer..).any(|(_, writes)| writes.intersects(reads));
        if conflicted { Err(KvError::Conflict) } else { Ok(()) }
    }

    /// Records a commit. Versions must ascend.
    pub(crate) fn record(&mut self, version: u64, writes: WriteSet) {
        if let Some((last, _)) = self.entries.back() {
            assert!(version > *last, "commit versions must ascend: {version} after {last}");
        }
        assert!(version > self.horizon_version, "commit version {version} below the horizon");
        self.bytes += writes.bytes();
        self.entries.push_back((version, writes));
        while self.entries.len() > self.limits.txns_max
            || (self.bytes > self.limits.bytes_max && self.entries.len() > 1)
        {
            let Some((version, writes)) = self.entries.pop_front() else { break };
            self.bytes -= writes.bytes();
            self.horizon_version = version;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model_contains(ranges: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
        ranges.iter().any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0u8..4, 0..3)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The merged representation answers membership and intersection exactly like the list of
        /// ranges it was built from, and stays disjoint and non-adjacent.
        #[test]
        fn range_set_matches_list_model(
            inserted in prop::collection::vec((small_key(), small_key()), 0..8),
            probes in prop::collection::vec((small_key(), small_key()), 1..16),
        ) {
            let mut set = RangeSet::default();
            for (b, e) in &inserted {
                set.insert(b, e);
            }
            let mut previous_end: Option<&[u8]> = None;
            for (b, e) in set.iter() {
                prop_assert!(b < e);
                if let Some(previous_end) = previous_end {
                    prop_assert!(previous_end < b, "ranges must be disjoint and non-adjacent");
                }
                previous_end = Some(e);
            }
            // Every key of length <= 3 over {0..4} is a probe point.
            let mut universe = vec![Vec::new()];
            for len in 1..=3usize {
                let mut next = Vec::new();
                for key in universe.iter().filter(|k| k.len() == len - 1) {
                    for byte in 0u8..5 {
                        let mut k = key.clone();
                        k.push(byte);
                        next.push(k);
                    }
                }
                universe.extend(next);
            }
            for key in &universe {
                prop_assert_eq!(set.contains(key), model_contains(&inserted, key), "key {:?}", key);
            }
            for (b, e) in &probes {
                let expected = universe
                    .iter()
                    .any(|k| b <= k && k < e && model_contains(&inserted, k));
                // Exact: a non-empty intersection of two ranges contains the larger of their
                // begins, which is a universe key.
                prop_assert_eq!(set.intersects(b, e), expected, "probe {:?}..{:?}", b, e);
            }
        }
    }

    #[test]
    fn intersects_is_exact_at_boundaries() {
        let mut set = RangeSet::default();
        set.insert(b"b", b"d");
        assert!(!set.intersects(b"a", b"b"));
        assert!(set.intersects(b"a", b"b\0"));
        assert!(set.intersects(b"c", b"z"));
        assert!(!set.intersects(b"d", b"z"));
        assert!(!set.intersects(b"c", b"c"));
        set.insert(b"d", b"e");
        assert_eq!(set.len(), 1, "touching ranges merge");
    }

    #[test]
    fn history_detects_only_newer_writes_and_bounds_itself() {
        let mut history =
            ConflictHistory::new(HistoryLimits { txns_max: 2, bytes_max: usize::MAX }, 0);
        let mut writes = WriteSet::default();
        writes.points.insert(b"k".to_vec());
        history.record(1, writes.clone());
        let mut reads = RangeSet::default();
        reads.insert(b"a", b"z");
        assert!(matches!(history.check(0, &reads), Err(KvError::Conflict)));
        assert!(history.check(1, &reads).is_ok(), "a commit at the read version was seen");
        history.record(2, WriteSet::default());
        history.record(3, WriteSet::default());
        assert_eq!(history.len(), 2);
        assert_eq!(history.horizon_version(), 1);
        assert!(matches!(history.check(0, &RangeSet::default()), Err(KvError::Conflict)));
        assert!(history.check(1, &reads).is_ok());
    }
}
