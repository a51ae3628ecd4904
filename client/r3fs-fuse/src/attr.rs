//! Conversions between meta's records and what the kernel wants: inode → `FileAttr`, r3fs error
//! → errno, names and times. Pure, so unit-tested without a mount.

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};
use r3fs_client::ClientError;
use r3fs_rpc::meta as pb;
use r3fs_types::ErrorCode;
use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `st_blksize`: what `cp` and stdio size their buffers by. Large requests suit the data path
/// (the kernel splits writes at 1 MiB anyway).
pub const BLOCK_SIZE_BYTES: u32 = 1 << 20;

/// Nanoseconds since the epoch (negative before it) as a `SystemTime`.
pub fn time_from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// A `SystemTime` as nanoseconds since the epoch, saturating at the i64 range.
pub fn time_to_ns(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map(|n| -n).unwrap_or(i64::MIN),
    }
}

/// utimensat's time (UTIME_NOW or an explicit time) as meta's `TimeSet`.
pub fn time_set(time: TimeOrNow) -> pb::TimeSet {
    let how = match time {
        TimeOrNow::Now => pb::time_set::How::Now(true),
        TimeOrNow::SpecificTime(at) => pb::time_set::How::AtNs(time_to_ns(at)),
    };
    pb::TimeSet { how: Some(how) }
}

/// The kernel's attributes of an inode record. `size_floor` raises the size: bytes this mount
/// wrote that meta has not been told about yet (see `OpenInodes`).
pub fn file_attr(inode: &pb::Inode, size_floor: u64) -> Result<FileAttr, Errno> {
    let kind = match pb::InodeKind::try_from(inode.kind) {
        Ok(pb::InodeKind::File) => FileType::RegularFile,
        Ok(pb::InodeKind::Directory) => FileType::Directory,
        Ok(pb::InodeKind::Symlink) => FileType::Symlink,
        _ => {
            tracing::error!(
                inode = inode.id,
                kind = inode.kind,
                "meta sent an inode of no known kind"
            );
            return Err(Errno::EIO);
        }
    };
    let size = inode.size.max(size_floor);
    Ok(FileAttr {
        ino: INodeNo(inode.id),
        size,
        // Holes are not tracked: report the length, like a file without holes.
        blocks: size.div_ceil(512),
        atime: time_from_ns(inode.atime_ns),
        mtime: time_from_ns(inode.mtime_ns),
        ctime: time_from_ns(inode.ctime_ns),
        crtime: time_from_ns(inode.ctime_ns),
        kind,
        perm: (inode.mode & 0o7777) as u16,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: 0,
        blksize: BLOCK_SIZE_BYTES,
        flags: 0,
    })
}

/// The kernel's file type of a directory entry.
pub fn entry_type(kind: i32) -> FileType {
    match pb::InodeKind::try_from(kind) {
        Ok(pb::InodeKind::Directory) => FileType::Directory,
        Ok(pb::InodeKind::Symlink) => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

/// The errno of a client error. Failures the caller cannot act on (retries exhausted, internal
/// errors) are logged here, where they are handled; expected outcomes (ENOENT, EEXIST...) only at
/// debug.
pub fn errno(op: &str, error: &ClientError) -> Errno {
    match error.code() {
        ErrorCode::NotFound
        | ErrorCode::Exists
        | ErrorCode::NotDirectory
        | ErrorCode::IsDirectory
        | ErrorCode::NotEmpty
        | ErrorCode::PermissionDenied
        | ErrorCode::InvalidName
        | ErrorCode::InvalidArgument
        | ErrorCode::NameTooLong
        | ErrorCode::TooManySymlinks
        | ErrorCode::TooManyLinks
        | ErrorCode::Busy => tracing::debug!("{op}: {error}"),
        _ => tracing::warn!("{op} failed: {error}"),
    }
    Errno::from_i32(error.errno())
}

/// A name from the kernel as UTF-8 (meta's names are strings); EINVAL otherwise.
pub fn name(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

/// The inode of a response, or EIO if meta sent none.
pub fn inode_of(response: pb::InodeResponse, op: &str) -> Result<pb::Inode, Errno> {
    response.inode.ok_or_else(|| {
        tracing::error!("{op}: meta answered without an inode");
        Errno::EIO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(kind: pb::InodeKind) -> pb::Inode {
        pb::Inode {
            id: 1234,
            kind: kind as i32,
            mode: 0o104755,
            uid: 7,
            gid: 8,
            nlink: 2,
            atime_ns: 1_500_000_000_123_456_789,
            mtime_ns: -1_000_000_001,
            ctime_ns: 0,
            size: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn attributes_follow_the_record() {
        let attr = file_attr(&inode(pb::InodeKind::File), 0).expect("a file");
        assert_eq!(attr.ino, INodeNo(1234));
        assert_eq!(
            (attr.kind, attr.perm, attr.uid, attr.gid, attr.nlink),
            (FileType::RegularFile, 0o4755, 7, 8, 2)
        );
        assert_eq!((attr.size, attr.blocks), (1000, 2));
        assert_eq!(time_to_ns(attr.atime), 1_500_000_000_123_456_789);
        assert_eq!(time_to_ns(attr.mtime), -1_000_000_001);
        assert_eq!(attr.ctime, UNIX_EPOCH);
        assert_eq!(file_attr(&inode(pb::InodeKind::File), 5000).expect("file").size, 5000);
        assert_eq!(
            file_attr(&inode(pb::InodeKind::Directory), 0).expect("dir").kind,
            FileType::Directory
        );
        assert_eq!(
            file_attr(&inode(pb::InodeKind::Symlink), 0).expect("link").kind,
            FileType::Symlink
        );
        assert_eq!(file_attr(&inode(pb::InodeKind::Unspecified), 0), Err(Errno::EIO));
    }

    #[test]
    fn errors_map_to_their_errno() {
        for (code, expected) in [
            (ErrorCode::NotFound, Errno::ENOENT),
            (ErrorCode::Exists, Errno::EEXIST),
            (ErrorCode::NotEmpty, Errno::ENOTEMPTY),
            (ErrorCode::IsDirectory, Errno::EISDIR),
            (ErrorCode::NotDirectory, Errno::ENOTDIR),
            (ErrorCode::PermissionDenied, Errno::EACCES),
            (ErrorCode::NoSpace, Errno::ENOSPC),
            (ErrorCode::RetriesExhausted, Errno::EIO),
        ] {
            assert_eq!(errno("test", &ClientError::failed(code, "x")), expected, "{code}");
        }
    }

    #[test]
    fn names_must_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(name(OsStr::new("ok")), Ok("ok".to_string()));
        assert_eq!(name(OsStr::from_bytes(b"\xff")), Err(Errno::EINVAL));
    }

    #[test]
    fn times_round_trip() {
        for ns in [0, 1, -1, 1_700_000_000_000_000_001, -5_000_000_000] {
            assert_eq!(time_to_ns(time_from_ns(ns)), ns);
        }
        assert_eq!(time_set(TimeOrNow::Now).how, Some(pb::time_set::How::Now(true)));
    }
}
