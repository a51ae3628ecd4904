//! An offline consistency checker: reads every meta table from one snapshot and reports every
//! broken invariant (it never repairs). Tests run it after concurrent operations; operators can
//! run it against a quiet store. On FoundationDB a large store exceeds one transaction's five
//! seconds: this is a tool for tests and small trees.
//!
//! Invariants checked:
//! 1. The format record and the root directory exist; the root is its own parent.
//! 2. Every entry's parent is a directory and its child exists with the kind the entry states.
//! 3. A live directory (nlink 1) other than the root has exactly one entry, and its parent/name
//!    fields match it; the root and removed directories (nlink 0, queued as trees) have none.
//! 4. A file or symlink has nlink = number of entries naming it, and one back-reference per
//!    entry, no others; a file with nlink 0 is queued for collection.
//! 5. Every inode is reachable from the root or from a queued tree, or is a queued file; walking
//!    entries visits no directory twice (no cycles), and parent pointers of reachable directories
//!    lead to the root.
//! 6. Queue entries and sessions name existing inodes of the right kind.
//! 7. The inode counter equals the number of inodes.

use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::schema::{self, DirEntry, GcEntry, GcKind, Inode, InodeKind, Session};
use r3fs_kv::{Kv, RangeRequest, ReadMode, Txn};
use r3fs_types::InodeId;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    pub inodes: usize,
    pub entries: usize,
    pub gc_entries: usize,
    pub sessions: usize,
    /// Every violated invariant, one line each. Empty means consistent.
    pub problems: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

const SCAN_PAGE_KEYS: usize = 10_000;

async fn scan_table(txn: &mut dyn Txn, prefix: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let (mut begin, end) = keys::table_range(prefix);
    let mut out = Vec::new();
    loop {
        let request = RangeRequest {
            begin: begin.clone(),
            end: end.clone(),
            limit: SCAN_PAGE_KEYS,
            reverse: false,
            mode: ReadMode::Snapshot,
        };
        let page = txn.get_range(&request).await?;
        let full = page.len() == SCAN_PAGE_KEYS;
        if let Some((key, _)) = page.last() {
            begin = key.clone();
            begin.push(0);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

pub async fn fsck(kv: &dyn Kv) -> MetaResult<FsckReport> {
    let mut txn = kv.begin().await?;
    let txn = &mut *txn;
    let mut problems = Vec::new();

    if txn.get(&keys::format_key(), ReadMode::Snapshot).await?.is_none() {
        problems.push("no format record".to_string());
    }
    let mut inodes: BTreeMap<InodeId, Inode> = BTreeMap::new();
    for (key, value) in scan_table(txn, keys::INODE).await? {
        let id = keys::decode_inode_key(&key)?;
        match schema::decode_inode(id, &value) {
            Ok(inode) => {
                inodes.insert(id, inode);
            }
            Err(e) => problems.push(format!("inode {id}: {e}")),
        }
    }
    let mut entries: Vec<DirEntry> = Vec::new();
    for (key, value) in scan_table(txn, keys::DIR_ENTRY).await? {
        let (parent, name) = keys::decode_dir_entry_key(&key)?;
        match schema::decode_dir_entry(parent, name.clone(), &value) {
            Ok(entry) => entries.push(entry),
            Err(e) => problems.push(format!("entry {name:?} of {parent}: {e}")),
        }
    }
    let mut backrefs: BTreeSet<(InodeId, InodeId, String)> = BTreeSet::new();
    for (key, _) in scan_table(txn, keys::LINK_BACKREF).await? {
        backrefs.insert(keys::decode_backref_key(&key)?);
    }
    let mut gc: BTreeMap<InodeId, GcEntry> = BTreeMap::new();
    for (key, value) in scan_table(txn, keys::GC_QUEUE).await? {
        let id = keys::decode_gc_key(&key)?;
        gc.insert(id, schema::decode_gc(id, &value)?);
    }
    let mut sessions: Vec<Session> = Vec::new();
    for (key, value) in scan_table(txn, keys::SESSION).await? {
        let (inode, session) = keys::decode_session_key(&key)?;
        sessions.push(schema::decode_session(inode, session, &value)?);
    }
    let mut counter: i64 = 0;
    for (_, value) in scan_table(txn, keys::INODE_COUNT).await? {
        let bytes: [u8; 8] = value
            .as_slice()
            .try_into()
            .map_err(|_| MetaError::corrupt("inode counter is not 8 bytes"))?;
        counter += i64::from_le_bytes(bytes);
    }

    // 1. Root.
    match inodes.get(&InodeId::ROOT) {
        None => problems.push("no root inode".to_string()),
        Some(root) if root.dir_parent() != Some(InodeId::ROOT) => {
            problems.push("the root is not a directory that is its own parent".to_string());
        }
        Some(_) => {}
    }

    // 2. Entries point at existing inodes of the stated kind, from directories.
    let mut entries_to: HashMap<InodeId, Vec<&DirEntry>> = HashMap::new();
    let mut children: HashMap<InodeId, Vec<&DirEntry>> = HashMap::new();
    for entry in &entries {
        match inodes.get(&entry.parent) {
            Some(parent) if parent.is_dir() => {}
            Some(_) => problems
                .push(format!("entry {:?} has non-directory parent {}", entry.name, entry.parent)),
            None => {
                problems.push(format!("entry {:?} has missing parent {}", entry.name, entry.parent))
            }
        }
        match inodes.get(&entry.inode) {
            None => problems.push(format!(
                "entry {:?} of {} names missing inode {}",
                entry.name, entry.parent, entry.inode
            )),
            Some(child) if child.kind() != entry.kind => problems.push(format!(
                "entry {:?} of {} says {:?} but {} is {:?}",
                entry.name,
                entry.parent,
                entry.kind,
                child.id,
                child.kind()
            )),
            Some(_) => {}
        }
        entries_to.entry(entry.inode).or_default().push(entry);
        children.entry(entry.parent).or_default().push(entry);
    }

    // 3 and 4. Link counts, back-references and directory parent fields.
    let mut expected_backrefs: BTreeSet<(InodeId, InodeId, String)> = BTreeSet::new();
    for inode in inodes.values() {
        let links = entries_to.get(&inode.id).map_or(&[][..], |v| v.as_slice());
        match inode.kind() {
            InodeKind::Directory => {
                let expected =
                    if inode.id == InodeId::ROOT || inode.attr.nlink == 0 { 0 } else { 1 };
                if links.len() != expected {
                    problems.push(format!(
                        "directory {} (nlink {}) has {} entries",
                        inode.id,
                        inode.attr.nlink,
                        links.len()
                    ));
                }
                if inode.attr.nlink > 1 {
                    problems.push(format!("directory {} has nlink {}", inode.id, inode.attr.nlink));
                }
                if inode.attr.nlink == 0 && gc.get(&inode.id).map(|g| g.kind) != Some(GcKind::Tree)
                {
                    problems
                        .push(format!("removed directory {} is not queued as a tree", inode.id));
                }
                if let (Some(entry), schema::InodeData::Directory { parent, name, .. }) =
                    (links.first(), &inode.data)
                    && (entry.parent != *parent || entry.name != *name)
                {
                    problems.push(format!(
                        "directory {} records parent {parent} name {name:?} but its entry is {:?} in {}",
                        inode.id, entry.name, entry.parent
                    ));
                }
            }
            kind => {
                if inode.attr.nlink as usize != links.len() {
                    problems.push(format!(
                        "{:?} {} has nlink {} but {} entries",
                        kind,
                        inode.id,
                        inode.attr.nlink,
                        links.len()
                    ));
                }
                if inode.attr.nlink == 0
                    && (kind != InodeKind::File
                        || gc.get(&inode.id).map(|g| g.kind) != Some(GcKind::File))
                {
                    problems.push(format!(
                        "unlinked {:?} {} is not queued for collection",
                        kind, inode.id
                    ));
                }
                for entry in links {
                    expected_backrefs.insert((inode.id, entry.parent, entry.name.clone()));
                }
            }
        }
    }
    for missing in expected_backrefs.difference(&backrefs) {
        problems.push(format!("missing back-reference {missing:?}"));
    }
    for extra in backrefs.difference(&expected_backrefs) {
        problems.push(format!("stale back-reference {extra:?}"));
    }

    // 5. Reachability and cycles: walk entries from the root and from queued trees.
    let mut seen: BTreeSet<InodeId> = BTreeSet::new();
    let mut queue: VecDeque<InodeId> = VecDeque::new();
    let roots = std::iter::once(InodeId::ROOT)
        .chain(gc.values().filter(|g| g.kind == GcKind::Tree).map(|g| g.inode));
    for root in roots {
        if seen.insert(root) {
            queue.push_back(root);
        }
    }
    while let Some(dir) = queue.pop_front() {
        for entry in children.get(&dir).map_or(&[][..], |v| v.as_slice()) {
            if entry.kind == InodeKind::Directory {
                if !seen.insert(entry.inode) {
                    problems.push(format!(
                        "directory {} is reached twice (cycle or second entry)",
                        entry.inode
                    ));
                    continue;
                }
                queue.push_back(entry.inode);
            } else {
                seen.insert(entry.inode);
            }
        }
    }
    for inode in inodes.values() {
        let queued_file = gc.get(&inode.id).is_some_and(|g| g.kind == GcKind::File);
        if !seen.contains(&inode.id) && !queued_file {
            problems.push(format!("{:?} {} is unreachable", inode.kind(), inode.id));
        }
    }
    // Parent pointers of directories reachable from the root lead back to the root.
    for inode in inodes.values().filter(|i| i.is_dir() && i.attr.nlink > 0) {
        let mut current = inode;
        let mut hops = 0usize;
        while current.id != InodeId::ROOT {
            hops += 1;
            let next = current.dir_parent().and_then(|p| inodes.get(&p));
            match next {
                Some(next) if hops <= inodes.len() && next.attr.nlink > 0 => current = next,
                // Detached trees hang below a removed directory: not the root's business.
                Some(next) if next.attr.nlink == 0 => break,
                _ => {
                    problems.push(format!(
                        "parent chain of directory {} does not reach the root",
                        inode.id
                    ));
                    break;
                }
            }
        }
    }

    // 6. Queue entries and sessions.
    for entry in gc.values() {
        match inodes.get(&entry.inode) {
            // A file whose inode is gone but whose queue entry is not: a half-finished step.
            None => problems.push(format!("queue entry {} names a missing inode", entry.inode)),
            Some(inode) if inode.attr.nlink != 0 => {
                problems.push(format!("queued inode {} is still linked", entry.inode))
            }
            Some(inode) if (entry.kind == GcKind::Tree) != inode.is_dir() => {
                problems.push(format!("queue entry {} has the wrong kind", entry.inode))
            }
            Some(_) => {}
        }
    }
    for session in &sessions {
        match inodes.get(&session.inode) {
            Some(inode) if inode.kind() == InodeKind::File => {}
            _ => problems.push(format!(
                "session {} names {} which is not a file",
                session.session, session.inode
            )),
        }
    }

    // 7. The counter.
    if counter != inodes.len() as i64 {
        problems
            .push(format!("inode counter says {counter} but there are {} inodes", inodes.len()));
    }

    Ok(FsckReport {
        inodes: inodes.len(),
        entries: entries.len(),
        gc_entries: gc.len(),
        sessions: sessions.len(),
        problems,
    })
}
