//! A transaction's private state, sans IO: buffered writes, read-your-writes merging over a
//! snapshot, the read conflict set and size accounting. Shared by the memory and embedded backends
//! so both give exactly the same semantics; only snapshot reads and commit differ per backend.
//!
//! Writes are kept as *cleared ranges* plus *point operations*; the state a transaction would
//! commit is "apply the cleared ranges, then the point operations". A `clear_range` drops the
//! point operations inside it, and a later point operation overrides the range, so that order is
//! the order the caller issued them in.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::ranges::{RangeSet, WriteSet, key_after};
use crate::{
    KEY_SIZE_MAX, KeyValue, KvError, RangeRequest, ReadMode, TXN_SIZE_MAX, VALUE_SIZE_MAX,
};

/// Bytes charged for an atomic add's operand, like FoundationDB's 8-byte parameter.
const ADD_OPERAND_SIZE: usize = 8;

/// A buffered write to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PointOp {
    Set(Vec<u8>),
    Clear,
    /// Add to whatever value is committed when this transaction commits (the base is not known
    /// to the transaction, so no read conflict is taken).
    Add(i64),
}

/// FoundationDB's ADD mutation with an 8-byte operand: the existing value is read as a
/// little-endian integer, zero-extended if shorter than 8 bytes and truncated if longer; the sum
/// wraps; the result is always 8 bytes. An absent value counts as zero.
pub(crate) fn apply_add(base: Option<&[u8]>, delta: i64) -> Vec<u8> {
    let mut bytes = [0u8; 8];
    if let Some(base) = base {
        let len = base.len().min(8);
        bytes[..len].copy_from_slice(&base[..len]);
    }
    i64::from_le_bytes(bytes).wrapping_add(delta).to_le_bytes().to_vec()
}

/// What the buffer knows about one key without the snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Local<'a> {
    /// The value is decided by this transaction's writes.
    Known(Option<&'a [u8]>),
    /// The snapshot's value, plus `delta` if `Some`.
    FromSnapshot { add: Option<i64> },
}

/// Everything a backend needs to commit a transaction.
#[derive(Debug)]
pub(crate) struct CommitRequest {
    pub(crate) read_version: u64,
    pub(crate) reads: RangeSet,
    pub(crate) cleared: RangeSet,
    pub(crate) points: BTreeMap<Vec<u8>, PointOp>,
    pub(crate) size_bytes: usize,
}

impl CommitRequest {
    /// A transaction without writes commits trivially and never conflicts: it serialises at its
    /// read version (FoundationDB does not even send it to the resolvers).
    pub(crate) fn is_read_only(&self) -> bool {
        self.cleared.is_empty() && self.points.is_empty()
    }

    pub(crate) fn write_set(&self) -> WriteSet {
        WriteSet { points: self.points.keys().cloned().collect(), ranges: self.cleared.clone() }
    }
}

#[derive(Debug, Default)]
pub(crate) struct TxnBuffer {
    points: BTreeMap<Vec<u8>, PointOp>,
    cleared: RangeSet,
    reads: RangeSet,
    /// Bytes of mutations and conflict ranges issued so far, FoundationDB's measure for
    /// `transaction_too_large`. Overwrites are charged again, as there.
    size_bytes: usize,
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > KEY_SIZE_MAX {
        return Err(KvError::TooLarge { what: "key", size: key.len(), limit: KEY_SIZE_MAX });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > VALUE_SIZE_MAX {
        return Err(KvError::TooLarge { what: "value", size: value.len(), limit: VALUE_SIZE_MAX });
    }
    Ok(())
}

impl TxnBuffer {
    fn charge(&mut self, bytes: usize) -> Result<(), KvError> {
        let size = self.size_bytes.saturating_add(bytes);
        if size > TXN_SIZE_MAX {
            return Err(KvError::TooLarge { what: "transaction", size, limit: TXN_SIZE_MAX });
        }
        self.size_bytes = size;
        Ok(())
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        self.charge(key.len() + value.len())?;
        self.points.insert(key.to_vec(), PointOp::Set(value.to_vec()));
        Ok(())
    }

    pub(crate) fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        self.charge(key.len())?;
        self.points.insert(key.to_vec(), PointOp::Clear);
        Ok(())
    }

    pub(crate) fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        check_key(begin)?;
        check_key(end)?;
        if begin >= end {
            // `[begin, end)` holds no key. FoundationDB rejects an inverted range
            // (`inverted_range`); an empty set is the same answer without a new error kind.
            return Ok(());
        }
        self.charge(begin.len() + end.len())?;
        // Point operations inside the range are superseded by it.
        let mut inside = self.points.split_off(begin);
        let mut after = inside.split_off(end);
        self.points.append(&mut after);
        self.cleared.insert(begin, end);
        Ok(())
    }

    pub(crate) fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError> {
        check_key(key)?;
        self.charge(key.len() + ADD_OPERAND_SIZE)?;
        let op = match self.points.get(key) {
            Some(PointOp::Set(value)) => PointOp::Set(apply_add(Some(value), delta)),
            Some(PointOp::Clear) => PointOp::Set(apply_add(None, delta)),
            Some(PointOp::Add(earlier)) => PointOp::Add(earlier.wrapping_add(delta)),
            None if self.cleared.contains(key) => PointOp::Set(apply_add(None, delta)),
            None => PointOp::Add(delta),
        };
        self.points.insert(key.to_vec(), op);
        Ok(())
    }

    pub(crate) fn add_read_conflict_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
    ) -> Result<(), KvError> {
        if begin >= end {
            return Ok(());
        }
        self.charge(begin.len() + end.len())?;
        self.reads.insert(begin, end);
        Ok(())
    }

    /// What this transaction's writes say about `key`.
    pub(crate) fn local(&self, key: &[u8]) -> Local<'_> {
        match self.points.get(key) {
            Some(PointOp::Set(value)) => Local::Known(Some(value)),
            Some(PointOp::Clear) => Local::Known(None),
            Some(PointOp::Add(delta)) => Local::FromSnapshot { add: Some(*delta) },
            None if self.cleared.contains(key) => Local::Known(None),
            None => Local::FromSnapshot { add: None },
        }
    }

    /// Point read. `snapshot` is consulted only when this transaction's writes do not decide the
    /// value; only then is a read conflict taken (as FoundationDB's read-your-writes layer does).
    pub(crate) fn get(
        &mut self,
        key: &[u8],
        mode: ReadMode,
        snapshot: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, KvError>,
    ) -> Result<Option<Vec<u8>>, KvError> {
        if key.len() > KEY_SIZE_MAX {
            // No such key can have been written.
            return Ok(None);
        }
        let add = match self.local(key) {
            Local::Known(value) => return Ok(value.map(<[u8]>::to_vec)),
            Local::FromSnapshot { add } => add,
        };
        let base = snapshot(key)?;
        if mode == ReadMode::Serializable {
            self.add_read_conflict_range(key, &key_after(key))?;
        }
        Ok(match add {
            Some(delta) => Some(apply_add(base.as_deref(), delta)),
            None => base,
        })
    }

    /// Range read merging `snapshot` (the snapshot's pairs in `[begin, end)`, in the requested
    /// direction) with this transaction's writes. A serializable read takes a read conflict on the
    /// part of the range it actually covered: all of it, or up to and including the last key
    /// returned when the limit was reached.
    pub(crate) fn get_range<I>(
        &mut self,
        snapshot: I,
        request: &RangeRequest,
    ) -> Result<Vec<KeyValue>, KvError>
    where
        I: Iterator<Item = Result<KeyValue, KvError>>,
    {
        let RangeRequest { begin, end, limit, reverse, mode } = request;
        if begin >= end {
            return Ok(Vec::new());
        }
        let out = self.merge_range(snapshot, request)?;
        if *mode == ReadMode::Serializable {
            let limited = *limit != 0 && out.len() == *limit;
            match out.last() {
                Some((last, _)) if limited && !*reverse => {
                    self.add_read_conflict_range(begin, &key_after(last))?
                }
                Some((last, _)) if limited => self.add_read_conflict_range(last, end)?,
                _ => self.add_read_conflict_range(begin, end)?,
            }
        }
        Ok(out)
    }

    fn merge_range<I>(&self, snapshot: I, request: &RangeRequest) -> Result<Vec<KeyValue>, KvError>
    where
        I: Iterator<Item = Result<KeyValue, KvError>>,
    {
        let RangeRequest { begin, end, limit, reverse, .. } = request;
        let bounds = (Bound::Included(begin.as_slice()), Bound::Excluded(end.as_slice()));
        let local = self.points.range::<[u8], _>(bounds);
        let mut local: Box<dyn Iterator<Item = (&Vec<u8>, &PointOp)>> =
            if *reverse { Box::new(local.rev()) } else { Box::new(local) };
        let mut snapshot = snapshot;
        let mut out: Vec<KeyValue> = Vec::new();
        let mut next_local = local.next();
        let mut next_snapshot = snapshot.next().transpose()?;
        // Keys in the requested order: `before(a, b)` says a comes first.
        let before = |a: &[u8], b: &[u8]| if *reverse { a > b } else { a < b };
        while *limit == 0 || out.len() < *limit {
            let take_local = match (&next_local, &next_snapshot) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((local_key, _)), Some((snapshot_key, _))) => !before(snapshot_key, local_key),
            };
            if take_local {
                let Some((key, op)) = next_local.take() else { break };
                next_local = local.next();
                let base = if next_snapshot.as_ref().is_some_and(|(k, _)| k == key) {
                    let base = next_snapshot.take().map(|(_, value)| value);
                    next_snapshot = snapshot.next().transpose()?;
                    base
                } else {
                    None
                };
                match op {
                    PointOp::Set(value) => out.push((key.clone(), value.clone())),
                    PointOp::Clear => {}
                    PointOp::Add(delta) => {
                        out.push((key.clone(), apply_add(base.as_deref(), *delta)))
                    }
                }
            } else {
                let Some((key, value)) = next_snapshot.take() else { break };
                next_snapshot = snapshot.next().transpose()?;
                if !self.cleared.contains(&key) {
                    out.push((key, value));
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn into_commit_request(self, read_version: u64) -> Result<CommitRequest, KvError> {
        if self.size_bytes > TXN_SIZE_MAX {
            return Err(KvError::TooLarge {
                what: "transaction",
                size: self.size_bytes,
                limit: TXN_SIZE_MAX,
            });
        }
        Ok(CommitRequest {
            read_version,
            reads: self.reads,
            cleared: self.cleared,
            points: self.points,
            size_bytes: self.size_bytes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn snapshot_of(
        pairs: &[(&[u8], &[u8])],
        reverse: bool,
    ) -> impl Iterator<Item = Result<KeyValue, KvError>> {
        let mut pairs: Vec<KeyValue> =
            pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        if reverse {
            pairs.reverse();
        }
        pairs.into_iter().map(Ok)
    }

    fn request(begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> RangeRequest {
        RangeRequest {
            begin: begin.to_vec(),
            end: end.to_vec(),
            limit,
            reverse,
            mode: ReadMode::Serializable,
        }
    }

    #[test]
    fn add_follows_foundationdb_width_rules() {
        assert_eq!(apply_add(None, 5), 5i64.to_le_bytes().to_vec());
        assert_eq!(apply_add(Some(&[1]), 1), 2i64.to_le_bytes().to_vec());
        let long = [1u8, 0, 0, 0, 0, 0, 0, 0, 9, 9];
        assert_eq!(apply_add(Some(&long), 1), 2i64.to_le_bytes().to_vec());
        assert_eq!(apply_add(Some(&i64::MAX.to_le_bytes()), 1), i64::MIN.to_le_bytes().to_vec());
    }

    #[test]
    fn range_merges_writes_and_limits_conflict_to_what_was_read() {
        let snapshot: &[(&[u8], &[u8])] = &[(b"a", b"1"), (b"c", b"3"), (b"e", b"5"), (b"g", b"7")];
        let mut buffer = TxnBuffer::default();
        buffer.set(b"b", b"2").unwrap();
        buffer.clear(b"c").unwrap();
        buffer.atomic_add(b"e", 1).unwrap();
        buffer.clear_range(b"f", b"h").unwrap();
        let got =
            buffer.get_range(snapshot_of(snapshot, false), &request(b"a", b"z", 3, false)).unwrap();
        let mut e = b"5".to_vec();
        e.resize(8, 0);
        e[0] += 1;
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
                (b"e".to_vec(), e.clone())
            ]
        );
        assert!(buffer.reads.contains(b"e"));
        assert!(!buffer.reads.contains(b"e\0"), "limited read conflicts only on what it read");
        let got =
            buffer.get_range(snapshot_of(snapshot, true), &request(b"a", b"z", 0, true)).unwrap();
        assert_eq!(
            got,
            vec![
                (b"e".to_vec(), e),
                (b"b".to_vec(), b"2".to_vec()),
                (b"a".to_vec(), b"1".to_vec())
            ]
        );
        assert!(buffer.reads.contains(b"y"));
    }

    #[test]
    fn clear_range_supersedes_earlier_points_and_later_points_override_it() {
        let mut buffer = TxnBuffer::default();
        buffer.set(b"b", b"x").unwrap();
        buffer.clear_range(b"a", b"c").unwrap();
        assert_eq!(buffer.local(b"b"), Local::Known(None));
        buffer.atomic_add(b"b", 3).unwrap();
        assert_eq!(buffer.local(b"b"), Local::Known(Some(&3i64.to_le_bytes())));
        buffer.clear_range(b"b", b"a").unwrap();
        assert_eq!(
            buffer.local(b"b"),
            Local::Known(Some(&3i64.to_le_bytes())),
            "inverted range is empty"
        );
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let mut buffer = TxnBuffer::default();
        let key = vec![0u8; KEY_SIZE_MAX + 1];
        assert!(matches!(buffer.set(&key, b""), Err(KvError::TooLarge { what: "key", .. })));
        let value = vec![0u8; VALUE_SIZE_MAX + 1];
        assert!(matches!(buffer.set(b"k", &value), Err(KvError::TooLarge { what: "value", .. })));
        let value = vec![0u8; VALUE_SIZE_MAX];
        let mut wrote = 0usize;
        let err = loop {
            match buffer.set(&wrote.to_be_bytes(), &value) {
                Ok(()) => wrote += 1,
                Err(err) => break err,
            }
        };
        assert!(matches!(err, KvError::TooLarge { what: "transaction", .. }));
        assert_eq!(wrote, TXN_SIZE_MAX / (VALUE_SIZE_MAX + 8));
        assert!(buffer.local(&wrote.to_be_bytes()) == Local::FromSnapshot { add: None });
    }
}
