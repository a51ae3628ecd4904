//! When the server goes away (the FUSE daemon exits or dies) while I/O is in flight, an
//! application waiting for completions with no time limit gets ECONNRESET instead of waiting
//! forever, and later calls fail instead of hanging. The "server" is a stand-in that speaks the
//! control protocol just far enough to accept an iov, a ring and a file, then hangs up.
#![allow(clippy::unwrap_used)]

use r3fs_usrbio::proto::{self, Request};
use r3fs_usrbio::{Cqe, Errno, Session};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;

#[test]
fn a_vanished_server_fails_waits_and_calls() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("usrbio.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (hang_up, hang_up_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        for (op, fd_count, id) in
            [(proto::OP_REG_IOV, 1, 1), (proto::OP_REG_IOR, 3, 2), (proto::OP_REG_FD, 1, 3)]
        {
            let mut buf = [0u8; proto::REQUEST_BYTES];
            let mut fds = Vec::new();
            let mut got = 0;
            while got < buf.len() {
                got += proto::recv_with_fds(stream.as_raw_fd(), &mut buf[got..], &mut fds).unwrap();
            }
            assert_eq!(Request::decode(&buf).map(|r| r.op), Some(op));
            assert_eq!(fds.len(), fd_count);
            stream.write_all(&proto::encode_reply(id)).unwrap();
        }
        // Hang up once the application has submitted.
        hang_up_rx.recv().unwrap();
    });
    let session = Session::connect(&socket).unwrap();
    let iov = session.create_iov(4096).unwrap();
    let mut ior = session.create_ior(4).unwrap();
    let file = tempfile::tempfile().unwrap();
    session.register_fd(file.as_fd()).unwrap();
    ior.prep_io(&iov, true, 0, file.as_raw_fd(), 0, 100, 1).unwrap();
    assert_eq!(ior.submit(), Ok(1));
    hang_up.send(()).unwrap();
    server.join().unwrap();
    let mut cqes = [Cqe::default(); 1];
    assert_eq!(ior.wait(&mut cqes, 1, None), Err(Errno(libc::ECONNRESET)));
    assert!(session.create_iov(4096).is_err(), "calls on a dead session fail");
}
