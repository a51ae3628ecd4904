//! The control protocol on the server's Unix socket: fixed-size little-endian messages, with file
//! descriptors passed as SCM_RIGHTS ancillary data.
//!
//! Request (40 bytes): magic u32, op u32, args [u64; 4]. Reply (16 bytes): result i64 (a
//! non-negative value, or a negative errno), reserved u64. The application sends one request and waits for its
//! reply before the next, so the server keeps at most one request per session in hand.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// "R3UB".
pub const REQUEST_MAGIC: u32 = 0x4255_3352;
pub const REQUEST_BYTES: usize = 40;
pub const REPLY_BYTES: usize = 16;
/// Most fds one request carries (REG_IOR: ring, submit eventfd, completion eventfd).
pub const FDS_MAX: usize = 3;

/// Register an iov. fds: [memfd]; args: [size].
pub const OP_REG_IOV: u32 = 1;
/// args: [iov id].
pub const OP_DEREG_IOV: u32 = 2;
/// Register a ring. fds: [ring memfd, submit eventfd, completion eventfd]; args: [entries].
pub const OP_REG_IOR: u32 = 3;
/// args: [ior id]. Replies once the ring's in-flight I/O has finished.
pub const OP_DEREG_IOR: u32 = 4;
/// Register an open file of the mount. fds: [the file]; reply: file id.
pub const OP_REG_FD: u32 = 5;
/// args: [file id]. Replies once the file's in-flight I/O has finished and it is closed.
pub const OP_DEREG_FD: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: u32,
    pub args: [u64; 4],
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut out = [0u8; REQUEST_BYTES];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.op.to_le_bytes());
        for (i, arg) in self.args.iter().enumerate() {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        out
    }

    /// None: not a request (wrong magic).
    pub fn decode(bytes: &[u8; REQUEST_BYTES]) -> Option<Request> {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if magic != REQUEST_MAGIC {
            return None;
        }
        let op = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        Some(Request { op, args: [word(8), word(16), word(24), word(32)] })
    }
}

pub fn encode_reply(result: i64) -> [u8; REPLY_BYTES] {
    let mut out = [0u8; REPLY_BYTES];
    out[0..8].copy_from_slice(&result.to_le_bytes());
    out
}

pub fn decode_reply(bytes: &[u8; REPLY_BYTES]) -> i64 {
    i64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

const CMSG_SPACE_BYTES: usize = 64;
const _: () = assert!(FDS_MAX * 4 + 16 <= CMSG_SPACE_BYTES);

#[repr(C, align(8))]
struct CmsgBuffer([u8; CMSG_SPACE_BYTES]);

/// sendmsg of `bytes` with `fds` attached (blocking or not, as the socket is). Returns bytes sent.
pub fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= FDS_MAX, "at most {FDS_MAX} fds per message");
    let mut iov =
        libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = CmsgBuffer([0; CMSG_SPACE_BYTES]);
    // SAFETY: zeroed msghdr is valid; fields set below point to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let fd_bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure computations.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to a buffer of at least `space` bytes, 8-aligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg) as *mut RawFd,
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg describes live buffers.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// recvmsg into `buf`; fds that arrive are appended to `fds` (owned: closed if dropped). More
/// than [`FDS_MAX`] fds, or a truncated control message, is an error (the fds that did arrive are
/// closed).
pub fn recv_with_fds(socket: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov =
        libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut control = CmsgBuffer([0; CMSG_SPACE_BYTES]);
    // SAFETY: zeroed msghdr is valid; fields set below point to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CMSG_SPACE_BYTES as _;
    // SAFETY: msg describes live buffers.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let before = fds.len();
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > FDS_MAX {
        fds.truncate(before);
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many fds in one message"));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn request_round_trip_and_wrong_magic() {
        let request = Request { op: OP_REG_IOR, args: [64, u64::MAX, 0, 7] };
        assert_eq!(Request::decode(&request.encode()), Some(request));
        let mut bytes = request.encode();
        bytes[0] ^= 1;
        assert_eq!(Request::decode(&bytes), None);
        assert_eq!(decode_reply(&encode_reply(-22)), -22);
    }

    #[test]
    fn fds_travel_with_the_message() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let file = tempfile::tempfile().expect("temp file");
        let request = Request { op: OP_REG_FD, args: [0; 4] }.encode();
        assert_eq!(send_with_fds(a.as_raw_fd(), &request, &[file.as_raw_fd()]).expect("send"), 40);
        let mut buf = [0u8; REQUEST_BYTES];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).expect("recv"), 40);
        assert_eq!(fds.len(), 1);
        let (x, y) = (
            crate::shm::fstat(std::os::fd::AsFd::as_fd(&fds[0])).expect("stat received"),
            crate::shm::fstat(std::os::fd::AsFd::as_fd(&file)).expect("stat original"),
        );
        assert_eq!((x.st_dev, x.st_ino), (y.st_dev, y.st_ino));
    }
}
