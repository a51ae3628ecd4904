//! Every KV key the meta service writes, in one registry.
//!
//! All keys start with the namespace byte `m` followed by a one-byte tag, so the meta service can
//! share a KV cluster with mgmtd (which uses its own namespace) and `fsck` can scan one table at a
//! time. No prefix is a prefix of another (a unit test checks the registry).
//!
//! | prefix | key                                   | value            |
//! | ------ | ------------------------------------- | ---------------- |
//! | `mF`   | (none)                                | `FormatRecord`   |
//! | `mI`   | inode id, little-endian               | `InodeRecord`    |
//! | `mD`   | parent id (BE) + name bytes           | `DirEntryRecord` |
//! | `mL`   | inode id (BE) + parent id (BE) + name | empty            |
//! | `mA`   | shard (BE u16)                        | block counter    |
//! | `mN`   | shard (u8)                            | i64 LE (atomic)  |
//! | `mG`   | inode id (BE)                         | `GcRecord`       |
//! | `mS`   | inode id (BE) + session id (BE)       | `SessionRecord`  |
//!
//! Inode keys are little-endian so that consecutively allocated ids scatter over the key space
//! (FoundationDB shards by key range; big-endian ids would send every create of one batch to one
//! storage server). Directory entries are keyed big-endian parent first so one directory's
//! entries are one contiguous range, sorted by name: listing is a range read.

use crate::error::{MetaError, MetaResult};
use r3fs_types::InodeId;

pub const FORMAT: &[u8] = b"mF";
pub const INODE: &[u8] = b"mI";
pub const DIR_ENTRY: &[u8] = b"mD";
pub const LINK_BACKREF: &[u8] = b"mL";
pub const ID_ALLOC: &[u8] = b"mA";
pub const INODE_COUNT: &[u8] = b"mN";
pub const GC_QUEUE: &[u8] = b"mG";
pub const SESSION: &[u8] = b"mS";

/// The registry: name and prefix of every table.
pub const REGISTRY: &[(&str, &[u8])] = &[
    ("format", FORMAT),
    ("inode", INODE),
    ("dir_entry", DIR_ENTRY),
    ("link_backref", LINK_BACKREF),
    ("id_alloc", ID_ALLOC),
    ("inode_count", INODE_COUNT),
    ("gc_queue", GC_QUEUE),
    ("session", SESSION),
];

/// First key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xff prefix gets here; no registered prefix is one.
    vec![0xff; prefix.len() + 1]
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

pub fn format_key() -> Vec<u8> {
    FORMAT.to_vec()
}

pub fn inode_key(id: InodeId) -> Vec<u8> {
    join(&[INODE, &id.0.to_le_bytes()])
}

pub fn decode_inode_key(key: &[u8]) -> MetaResult<InodeId> {
    let rest = strip(key, INODE)?;
    Ok(InodeId(u64::from_le_bytes(fixed8(rest, "inode key")?)))
}

pub fn dir_entry_key(parent: InodeId, name: &str) -> Vec<u8> {
    join(&[DIR_ENTRY, &parent.0.to_be_bytes(), name.as_bytes()])
}

/// `[begin, end)` of every entry of directory `parent`.
pub fn dir_entry_range(parent: InodeId) -> (Vec<u8>, Vec<u8>) {
    let begin = join(&[DIR_ENTRY, &parent.0.to_be_bytes()]);
    let end = prefix_end(&begin);
    (begin, end)
}

/// Splits an entry key into parent and name.
pub fn decode_dir_entry_key(key: &[u8]) -> MetaResult<(InodeId, String)> {
    let rest = strip(key, DIR_ENTRY)?;
    if rest.len() < 8 {
        return Err(MetaError::corrupt("directory entry key too short"));
    }
    let (parent, name) = rest.split_at(8);
    let parent = InodeId(u64::from_be_bytes(fixed8(parent, "entry parent")?));
    let name = std::str::from_utf8(name)
        .map_err(|_| MetaError::corrupt("directory entry name is not UTF-8"))?;
    Ok((parent, name.to_string()))
}

pub fn backref_key(inode: InodeId, parent: InodeId, name: &str) -> Vec<u8> {
    join(&[LINK_BACKREF, &inode.0.to_be_bytes(), &parent.0.to_be_bytes(), name.as_bytes()])
}

pub fn backref_range(inode: InodeId) -> (Vec<u8>, Vec<u8>) {
    let begin = join(&[LINK_BACKREF, &inode.0.to_be_bytes()]);
    let end = prefix_end(&begin);
    (begin, end)
}

pub fn decode_backref_key(key: &[u8]) -> MetaResult<(InodeId, InodeId, String)> {
    let rest = strip(key, LINK_BACKREF)?;
    if rest.len() < 16 {
        return Err(MetaError::corrupt("link back-reference key too short"));
    }
    let inode = InodeId(u64::from_be_bytes(fixed8(&rest[..8], "backref inode")?));
    let parent = InodeId(u64::from_be_bytes(fixed8(&rest[8..16], "backref parent")?));
    let name = std::str::from_utf8(&rest[16..])
        .map_err(|_| MetaError::corrupt("link back-reference name is not UTF-8"))?;
    Ok((inode, parent, name.to_string()))
}

pub fn id_alloc_key(shard: u16) -> Vec<u8> {
    join(&[ID_ALLOC, &shard.to_be_bytes()])
}

pub fn inode_count_key(shard: u8) -> Vec<u8> {
    join(&[INODE_COUNT, &[shard]])
}

pub fn gc_key(inode: InodeId) -> Vec<u8> {
    join(&[GC_QUEUE, &inode.0.to_be_bytes()])
}

pub fn decode_gc_key(key: &[u8]) -> MetaResult<InodeId> {
    let rest = strip(key, GC_QUEUE)?;
    Ok(InodeId(u64::from_be_bytes(fixed8(rest, "gc key")?)))
}

pub fn session_key(inode: InodeId, session: u64) -> Vec<u8> {
    join(&[SESSION, &inode.0.to_be_bytes(), &session.to_be_bytes()])
}

pub fn session_range(inode: InodeId) -> (Vec<u8>, Vec<u8>) {
    let begin = join(&[SESSION, &inode.0.to_be_bytes()]);
    let end = prefix_end(&begin);
    (begin, end)
}

pub fn decode_session_key(key: &[u8]) -> MetaResult<(InodeId, u64)> {
    let rest = strip(key, SESSION)?;
    if rest.len() != 16 {
        return Err(MetaError::corrupt("session key has the wrong length"));
    }
    let inode = InodeId(u64::from_be_bytes(fixed8(&rest[..8], "session inode")?));
    let session = u64::from_be_bytes(fixed8(&rest[8..], "session id")?);
    Ok((inode, session))
}

/// `[begin, end)` of a whole table.
pub fn table_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (prefix.to_vec(), prefix_end(prefix))
}

fn strip<'a>(key: &'a [u8], prefix: &[u8]) -> MetaResult<&'a [u8]> {
    key.strip_prefix(prefix).ok_or_else(|| {
        MetaError::corrupt(format!("key {key:?} lacks the expected prefix {prefix:?}"))
    })
}

fn fixed8(bytes: &[u8], what: &str) -> MetaResult<[u8; 8]> {
    bytes.try_into().map_err(|_| MetaError::corrupt(format!("{what}: expected 8 bytes")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_prefix_is_a_prefix_of_another() {
        for (i, (name_a, a)) in REGISTRY.iter().enumerate() {
            for (j, (name_b, b)) in REGISTRY.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{name_a} is a prefix of {name_b}");
                }
            }
            assert_eq!(a[0], b'm', "{name_a} is outside the meta namespace");
        }
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }

    proptest! {
        #[test]
        fn entry_keys_round_trip_and_stay_in_their_directory(
            parent in any::<u64>(), name in "[a-zA-Z0-9._-]{1,40}"
        ) {
            let key = dir_entry_key(InodeId(parent), &name);
            prop_assert_eq!(decode_dir_entry_key(&key).unwrap(), (InodeId(parent), name));
            let (begin, end) = dir_entry_range(InodeId(parent));
            prop_assert!(key >= begin && key < end);
        }

        #[test]
        fn entry_order_is_name_order(a in "[a-z]{0,8}", b in "[a-z]{0,8}") {
            let p = InodeId(7);
            prop_assert_eq!(dir_entry_key(p, &a).cmp(&dir_entry_key(p, &b)), a.cmp(&b));
        }

        #[test]
        fn other_keys_round_trip(inode in any::<u64>(), parent in any::<u64>(), session in any::<u64>()) {
            prop_assert_eq!(decode_inode_key(&inode_key(InodeId(inode))).unwrap(), InodeId(inode));
            prop_assert_eq!(decode_gc_key(&gc_key(InodeId(inode))).unwrap(), InodeId(inode));
            prop_assert_eq!(
                decode_session_key(&session_key(InodeId(inode), session)).unwrap(),
                (InodeId(inode), session)
            );
            prop_assert_eq!(
                decode_backref_key(&backref_key(InodeId(inode), InodeId(parent), "n")).unwrap(),
                (InodeId(inode), InodeId(parent), "n".to_string())
            );
        }
    }

    #[test]
    fn truncated_keys_are_errors_not_panics() {
        assert!(decode_inode_key(b"mI\x01").is_err());
        assert!(decode_dir_entry_key(b"mD\x00").is_err());
        assert!(decode_session_key(b"mS").is_err());
        assert!(decode_gc_key(b"xx12345678").is_err());
    }
}
