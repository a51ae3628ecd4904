//! POSIX permission checks (sans-IO): mode bits for owner, group (primary and supplementary) and
//! other; root overrides; the sticky bit on removal and rename; who may chmod, chown and set
//! times. Every check returns the errno the Linux kernel would: EACCES for missing mode bits,
//! EPERM for ownership rules.

use crate::error::{MetaError, MetaResult};
use crate::schema::{Attr, Inode, InodeKind, S_ISGID, S_ISUID, S_ISVTX};
use r3fs_types::ErrorCode;

/// A verified caller. Built from a token mgmtd vouched for (see [`crate::user`]), never from a
/// claim the client made about itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// May run administrative operations (mgmtd's notion; file access still follows mode bits).
    pub admin: bool,
}

impl User {
    pub fn root() -> Self {
        Self { uid: 0, gid: 0, groups: Vec::new(), admin: true }
    }

    pub fn new(uid: u32, gid: u32, groups: Vec<u32>) -> Self {
        Self { uid, gid, groups, admin: false }
    }

    /// uid 0 overrides mode bits, as CAP_DAC_OVERRIDE and CAP_FOWNER do for root on Linux.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// Checks `mask` (a combination of `MAY_*`) against the inode's mode for `user`.
pub fn check_access(user: &User, attr: &Attr, kind: InodeKind, mask: u32) -> MetaResult<()> {
    if user.is_root() {
        // Root may execute a file only if someone may; directories are always searchable.
        if mask & MAY_EXEC != 0 && kind != InodeKind::Directory && attr.mode & 0o111 == 0 {
            return Err(denied(mask));
        }
        return Ok(());
    }
    let bits = if user.uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if user.in_group(attr.gid) {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    if bits & mask == mask { Ok(()) } else { Err(denied(mask)) }
}

pub fn check_inode(user: &User, inode: &Inode, mask: u32) -> MetaResult<()> {
    check_access(user, &inode.attr, inode.kind(), mask)
}

fn denied(mask: u32) -> MetaError {
    let mut wanted = String::new();
    for (bit, letter) in [(MAY_READ, 'r'), (MAY_WRITE, 'w'), (MAY_EXEC, 'x')] {
        if mask & bit != 0 {
            wanted.push(letter);
        }
    }
    MetaError::denied(format!("needs {wanted} permission"))
}

/// An ownership rule failed. Linux reports EPERM here and EACCES for mode bits; `ErrorCode` has
/// one code (EACCES) for both, so the message says which rule failed.
fn not_permitted(what: &str) -> MetaError {
    MetaError::new(ErrorCode::PermissionDenied, format!("operation not permitted: {what}"))
}

/// May `user` remove or rename away entry `victim` of directory `dir`? Needs write and search
/// on `dir`; in a sticky directory additionally owning the victim or the directory (or root).
pub fn check_delete(user: &User, dir: &Inode, victim: &Inode) -> MetaResult<()> {
    check_inode(user, dir, MAY_WRITE | MAY_EXEC)?;
    if dir.attr.mode & S_ISVTX != 0
        && !user.is_root()
        && user.uid != victim.attr.uid
        && user.uid != dir.attr.uid
    {
        return Err(not_permitted("sticky directory: only the owner of the entry or directory"));
    }
    Ok(())
}

/// New mode after chmod by `user`, or EPERM. Non-owners may not chmod; a non-root owner who is
/// not in the file's group loses setgid silently, as on Linux.
pub fn chmod(user: &User, attr: &Attr, kind: InodeKind, mode: u32) -> MetaResult<u32> {
    if !user.is_root() && user.uid != attr.uid {
        return Err(not_permitted("only the owner may change the mode"));
    }
    let mut mode = mode & crate::schema::MODE_PERMISSION_MASK;
    if !user.is_root() && kind != InodeKind::Directory && !user.in_group(attr.gid) {
        mode &= !S_ISGID;
    }
    Ok(mode)
}

/// New (uid, gid, mode) after chown by `user`, or EPERM. Only root changes the owner; the owner
/// may change the group to one of their own groups. Changing either clears setuid, and setgid
/// when the group may execute (a setgid file without group exec is a mandatory-lock marker).
pub fn chown(
    user: &User,
    attr: &Attr,
    kind: InodeKind,
    uid: Option<u32>,
    gid: Option<u32>,
) -> MetaResult<(u32, u32, u32)> {
    let new_uid = uid.unwrap_or(attr.uid);
    let new_gid = gid.unwrap_or(attr.gid);
    if !user.is_root() && (uid.is_some() || gid.is_some()) {
        if user.uid != attr.uid {
            return Err(not_permitted("only the owner or root may chown"));
        }
        if new_uid != attr.uid {
            return Err(not_permitted("only root may change the owner"));
        }
        if new_gid != attr.gid && !user.in_group(new_gid) {
            return Err(not_permitted("the owner may only change the group to one of theirs"));
        }
    }
    let mut mode = attr.mode;
    if kind != InodeKind::Directory && (uid.is_some() || gid.is_some()) {
        mode &= !S_ISUID;
        if mode & 0o010 != 0 {
            mode &= !S_ISGID;
        }
    }
    Ok((new_uid, new_gid, mode))
}

/// How a time is set by utimens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(i64),
}

/// May `user` set times? Explicit times need ownership (EPERM); "now" also suffices with write
/// permission (EACCES otherwise).
pub fn check_utimens(user: &User, inode: &Inode, explicit: bool) -> MetaResult<()> {
    if user.is_root() || user.uid == inode.attr.uid {
        return Ok(());
    }
    if explicit {
        return Err(not_permitted("only the owner may set explicit times"));
    }
    check_inode(user, inode, MAY_WRITE)
}

/// May `user` change the default layout of a directory? Its owner, root or an admin.
pub fn check_set_layout(user: &User, dir: &Inode) -> MetaResult<()> {
    if user.is_root() || user.admin || user.uid == dir.attr.uid {
        Ok(())
    } else {
        Err(not_permitted("only the owner or an admin may set a directory's layout"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn attr(mode: u32, uid: u32, gid: u32) -> Attr {
        Attr { mode, uid, gid, nlink: 1, atime_ns: 0, mtime_ns: 0, ctime_ns: 0 }
    }

    #[test]
    fn owner_group_other_bits_are_chosen_in_order() {
        let a = attr(0o640, 10, 20);
        let owner = User::new(10, 99, vec![]);
        let member = User::new(11, 99, vec![20]);
        let primary = User::new(12, 20, vec![]);
        let other = User::new(13, 99, vec![]);
        assert!(check_access(&owner, &a, InodeKind::File, MAY_READ | MAY_WRITE).is_ok());
        assert!(check_access(&member, &a, InodeKind::File, MAY_READ).is_ok());
        assert!(check_access(&primary, &a, InodeKind::File, MAY_READ).is_ok());
        assert!(check_access(&member, &a, InodeKind::File, MAY_WRITE).is_err());
        assert!(check_access(&other, &a, InodeKind::File, MAY_READ).is_err());
        // The owner class applies even when it grants less than group or other.
        let b = attr(0o077, 10, 20);
        assert!(check_access(&owner, &b, InodeKind::File, MAY_READ).is_err());
    }

    #[test]
    fn root_overrides_except_exec_of_non_executable_files() {
        let root = User::root();
        let a = attr(0o000, 10, 20);
        assert!(check_access(&root, &a, InodeKind::File, MAY_READ | MAY_WRITE).is_ok());
        assert!(check_access(&root, &a, InodeKind::File, MAY_EXEC).is_err());
        assert!(check_access(&root, &a, InodeKind::Directory, MAY_EXEC).is_ok());
        let e = check_access(&root, &attr(0o001, 1, 1), InodeKind::File, MAY_EXEC);
        assert!(e.is_ok());
    }

    #[test]
    fn chown_rules() {
        let a = attr(0o6755, 10, 20);
        let owner = User::new(10, 20, vec![30]);
        assert!(chown(&owner, &a, InodeKind::File, Some(11), None).is_err());
        assert!(chown(&owner, &a, InodeKind::File, None, Some(40)).is_err());
        let (uid, gid, mode) = chown(&owner, &a, InodeKind::File, None, Some(30)).unwrap();
        assert_eq!((uid, gid, mode), (10, 30, 0o0755));
        let stranger = User::new(12, 30, vec![]);
        assert!(chown(&stranger, &a, InodeKind::File, None, Some(30)).is_err());
        let (uid, _, _) = chown(&User::root(), &a, InodeKind::File, Some(11), None).unwrap();
        assert_eq!(uid, 11);
    }

    #[test]
    fn chmod_rules() {
        let a = attr(0o644, 10, 20);
        assert!(chmod(&User::new(11, 20, vec![]), &a, InodeKind::File, 0o777).is_err());
        let owner_elsewhere = User::new(10, 99, vec![]);
        assert_eq!(chmod(&owner_elsewhere, &a, InodeKind::File, 0o2755).unwrap(), 0o755);
        assert_eq!(chmod(&User::new(10, 20, vec![]), &a, InodeKind::File, 0o2755).unwrap(), 0o2755);
    }
}
