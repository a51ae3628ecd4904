//! USRBIO against a real cluster (mgmtd, a storage daemon and meta on loopback, booted by
//! r3fs-testkit's harness) with the ring server in this process, standing in for the FUSE daemon
//! (see tests/common). One cluster serves
//! every scenario, in order:
//! 1. the Rust API writes random ranges through rings and reads them back byte for byte, from two
//!    sessions at once;
//! 2. bad arguments are refused with errnos on the application side, and hostile ring entries
//!    (written straight into shared memory, bypassing those checks) complete with errnos;
//! 3. a ring whose indices are corrupted ends only its own session;
//! 4. the Rust example, run as a separate process, is killed with SIGKILL mid-I/O: its session
//!    ends, its file is closed, and the server keeps serving a second run of the example;
//! 5. the C example is compiled with `cc` against the checked-in header and run;
//! 6. (root with /dev/fuse) the real thing: r3fs-fuse mounts the cluster (the harness's
//!    `mount_fuse`) and serves rings from the mount's socket directory, and the C and Rust
//!    examples open files on the mount and move their bytes through rings.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, Rig, profile_dir, wait_for};
use r3fs_testkit::Proc;
use r3fs_testkit::cluster::{FuseMount, fuse_unavailable};
use r3fs_usrbio::proto::{self, Request};
use r3fs_usrbio::ring::{self, Cqe, RingView, Sqe};
use r3fs_usrbio::shm::Mapping;
use r3fs_usrbio::{Errno, Session};
use rand::{Rng, RngCore, SeedableRng};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Option<Duration> = Some(Duration::from_secs(60));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rings_against_a_real_cluster() {
    let cluster = common::start_cluster().await;
    let rig = Rig::start(&cluster, "a");
    round_trips(&cluster, &rig).await;
    println!("round trips ok: {:?}", rig.server.stats());
    bad_arguments(&cluster, &rig).await;
    println!("bad arguments ok: {:?}", rig.server.stats());
    corrupted_ring(&cluster, &rig).await;
    println!("corrupted ring ok: {:?}", rig.server.stats());
    killed_application(&cluster, &rig).await;
    println!("killed application ok: {:?}", rig.server.stats());
    c_example(&cluster, &rig).await;
    println!("C example ok: {:?}", rig.server.stats());
    rig.server.shutdown().await;
    match fuse_unavailable() {
        Some(reason) => println!("skipping the FUSE mount scenario: {reason}"),
        None => {
            through_the_fuse_mount(&cluster).await;
            println!("FUSE mount ok");
        }
    }
}

fn socket(rig: &Rig) -> std::path::PathBuf {
    rig.server.socket_path().to_path_buf()
}

/// Runs blocking application code off the runtime (the server shares it).
async fn app<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("application thread")
}

async fn round_trips(cluster: &Cluster, rig: &Rig) {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let a = rig.placeholder(cluster, "/a.bin", "a.bin").await;
    let b = rig.placeholder(cluster, "/b.bin", "b.bin").await;
    let (socket_a, socket_b) = (socket(rig), socket(rig));
    let one = app(move || write_and_verify(&socket_a, &a, seed));
    let two = app(move || write_and_verify(&socket_b, &b, seed.wrapping_add(1)));
    let (one, two) = tokio::join!(one, two);
    let (len_a, len_b) = (one.expect("session a"), two.expect("session b"));
    wait_for("sessions closed", || rig.server.stats().sessions == 0).await;
    // Deregistration closed the files, so meta has the written lengths.
    for (path, len) in [("/a.bin", len_a), ("/b.bin", len_b)] {
        let file =
            cluster.files.open(path, &r3fs_client::OpenOptions::read_only()).await.expect("reopen");
        assert_eq!(file.len().await.expect("length"), len, "{path}");
    }
}

/// Writes random ranges of a model file through one ring, reads random ranges back and compares;
/// returns the file length.
fn write_and_verify(socket: &Path, placeholder: &Path, seed: u64) -> Result<u64, Errno> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let session = Session::connect(socket)?;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(placeholder).unwrap();
    let fd = file.as_raw_fd();
    session.register_fd(file.as_fd())?;
    assert_eq!(session.register_fd(file.as_fd()), Err(Errno(libc::EEXIST)));
    let iov = session.create_iov(4 << 20)?;
    let mut ior = session.create_ior(16)?;
    let mut model = vec![0u8; 20 * common::CHUNK + 999];
    // Batches of up to 16 writes of disjoint random ranges (each at its own place in the iov).
    for _ in 0..4 {
        let batch = rng.random_range(1..=16usize);
        let mut used = 0usize;
        let slot = (4 << 20) / 16;
        let mut expected = Vec::new();
        for i in 0..batch {
            let len = rng.random_range(1..slot.min(3 * common::CHUNK));
            let at = rng.random_range(0..(model.len() - len) as u64);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            iov.write_bytes(i * slot, &data)?;
            // Entries of one batch run in any order: keep their ranges disjoint.
            if expected.iter().any(|&(_, o, l, _)| at < o + l as u64 && o < at + len as u64) {
                continue;
            }
            ior.prep_io(&iov, false, i * slot, fd, at, len, i as u64)?;
            expected.push((i as u64, at, len, data));
            used += 1;
        }
        assert_eq!(ior.submit()?, used as u32);
        let mut cqes = vec![Cqe::default(); used];
        let mut done = 0;
        while done < used {
            done += ior.wait(&mut cqes[done..], used - done, WAIT)?;
        }
        for (i, at, len, data) in expected {
            let cqe = cqes.iter().find(|c| c.userdata == i).expect("a completion per write");
            assert_eq!(cqe.result, len as i64, "write {i}");
            model[at as usize..at as usize + len].copy_from_slice(&data);
        }
    }
    // Reads: random ranges, and one across the end of the file (short).
    let end = model.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let mut ranges: Vec<(u64, usize)> = (0..12)
        .map(|_| {
            let len = rng.random_range(1..2 * common::CHUNK);
            (rng.random_range(0..(end.max(len) - len) as u64), len)
        })
        .collect();
    ranges.push((end as u64 - 10.min(end as u64), 4096));
    for (i, &(at, len)) in ranges.iter().enumerate() {
        ior.prep_io(&iov, true, i * (256 << 10), fd, at, len, i as u64)?;
    }
    ior.submit()?;
    let mut cqes = vec![Cqe::default(); ranges.len()];
    let mut done = 0;
    while done < ranges.len() {
        done += ior.wait(&mut cqes[done..], ranges.len() - done, WAIT)?;
    }
    for cqe in cqes {
        let i = cqe.userdata as usize;
        let (at, len) = ranges[i];
        let expected = len.min(end - at as usize);
        assert_eq!(cqe.result, expected as i64, "read {i} at {at}+{len} (file end {end})");
        let mut got = vec![0u8; expected];
        iov.read_bytes(i * (256 << 10), &mut got)?;
        assert!(
            got == model[at as usize..at as usize + expected],
            "read {i} at {at}+{len} differs"
        );
    }
    drop(ior);
    drop(iov);
    session.deregister_fd(fd)?;
    assert_eq!(session.deregister_fd(fd), Err(Errno(libc::EBADF)));
    Ok(end as u64)
}

async fn bad_arguments(cluster: &Cluster, rig: &Rig) {
    let rw = rig.placeholder(cluster, "/bad.bin", "bad.bin").await;
    let unmapped = rig.mount.join("unmapped.bin");
    std::fs::write(&unmapped, b"").unwrap();
    let socket = socket(rig);
    app(move || {
        let session = Session::connect(&socket).unwrap();
        let other = Session::connect(&socket).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&rw).unwrap();
        let read_only = std::fs::File::open(&rw).unwrap();
        let (fd, ro) = (file.as_raw_fd(), read_only.as_raw_fd());
        session.register_fd(file.as_fd()).unwrap();
        session.register_fd(read_only.as_fd()).unwrap();
        // A local file that stands for no r3fs inode, and a directory, are refused.
        let stray = std::fs::File::open(&unmapped).unwrap();
        assert_eq!(session.register_fd(stray.as_fd()), Err(Errno(libc::EXDEV)));
        let dir = std::fs::File::open(rig_mount(&rw)).unwrap();
        assert_eq!(session.register_fd(dir.as_fd()), Err(Errno(libc::EISDIR)));
        let iov = session.create_iov(1 << 20).unwrap();
        let foreign = other.create_iov(4096).unwrap();
        let mut ior = session.create_ior(4).unwrap();
        assert_eq!(session.create_ior(3).err(), Some(Errno(libc::EINVAL)));
        assert_eq!(session.create_ior(8192).err(), Some(Errno(libc::EINVAL)));
        // Application-side checks.
        assert_eq!(ior.prep_io(&iov, true, 0, fd + 1000, 0, 10, 0), Err(Errno(libc::EBADF)));
        assert_eq!(ior.prep_fsync(fd + 1000, 0), Err(Errno(libc::EBADF)));
        assert_eq!(ior.prep_io(&iov, true, (1 << 20) - 5, fd, 0, 10, 0), Err(Errno(libc::EFAULT)));
        assert_eq!(ior.prep_io(&iov, true, usize::MAX, fd, 0, 10, 0), Err(Errno(libc::EFAULT)));
        assert_eq!(ior.prep_io(&iov, true, 0, fd, 0, 0, 0), Err(Errno(libc::EINVAL)));
        assert_eq!(ior.prep_io(&foreign, true, 0, fd, 0, 10, 0), Err(Errno(libc::EINVAL)));
        assert_eq!(ior.prep_io(&iov, true, 0, fd, u64::MAX - 2, 10, 0), Err(Errno(libc::EINVAL)));
        // Ring full: 4 entries outstanding, the fifth is refused until one is reaped.
        for i in 0..4 {
            ior.prep_io(&iov, false, 0, fd, i * 100, 100, i).unwrap();
        }
        assert_eq!(ior.prep_io(&iov, false, 0, fd, 0, 1, 9), Err(Errno(libc::EAGAIN)));
        assert_eq!(ior.prep_fsync(fd, 9), Err(Errno(libc::EAGAIN)));
        // A write through a read-only registration completes with EBADF (server-side check).
        assert_eq!(ior.submit(), Ok(4));
        let mut cqes = [Cqe::default(); 4];
        let mut n = 0;
        while n < 4 {
            n += ior.wait(&mut cqes[n..], 4 - n, WAIT).unwrap();
        }
        assert!(cqes.iter().all(|c| c.result == 100), "{cqes:?}");
        ior.prep_io(&iov, false, 0, ro, 0, 10, 7).unwrap();
        ior.submit().unwrap();
        assert_eq!(ior.wait(&mut cqes, 1, WAIT), Ok(1));
        assert_eq!(cqes[0], Cqe { result: -i64::from(libc::EBADF), userdata: 7 });
        // fsync needs no write access (as fsync(2) on a read-only fd).
        ior.prep_fsync(ro, 8).unwrap();
        ior.prep_fsync(fd, 9).unwrap();
        ior.submit().unwrap();
        let mut n = 0;
        while n < 2 {
            n += ior.wait(&mut cqes[n..], 2 - n, WAIT).unwrap();
        }
        let mut synced: Vec<Cqe> = cqes[..2].to_vec();
        synced.sort_by_key(|c| c.userdata);
        assert_eq!(synced, [Cqe { result: 0, userdata: 8 }, Cqe { result: 0, userdata: 9 }]);
        // Waiting for more than is in flight returns at once with what there is.
        assert_eq!(ior.wait(&mut cqes, 4, None), Ok(0));
        drop(ior);
        session.deregister_fd(ro).unwrap();
        session.deregister_fd(fd).unwrap();

        hostile_entries(&session_socket(&session), &file);
    })
    .await;
    wait_for("sessions closed", || rig.server.stats().sessions == 0).await;
    let stats = rig.server.stats();
    assert_eq!((stats.iovs, stats.iors, stats.files), (0, 0, 0), "{stats:?}");
}

fn rig_mount(file: &Path) -> std::path::PathBuf {
    file.parent().unwrap().to_path_buf()
}

fn session_socket(session: &Session) -> std::path::PathBuf {
    session.socket_path().to_path_buf()
}

/// A raw client speaking the control protocol and writing ring memory directly.
struct RawClient {
    socket: UnixStream,
}

impl RawClient {
    fn call(&mut self, op: u32, args: [u64; 4], fds: &[i32]) -> i64 {
        let request = Request { op, args }.encode();
        proto::send_with_fds(self.socket.as_raw_fd(), &request, fds).unwrap();
        let mut reply = [0u8; proto::REPLY_BYTES];
        self.socket.read_exact(&mut reply).unwrap();
        proto::decode_reply(&reply)
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall; the fd is owned right away.
    unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)) }
}

struct RawRing {
    view: RingView,
    _mem: Mapping,
    submit: OwnedFd,
    complete: OwnedFd,
    tail: u32,
    cq_head: u32,
}

fn raw_ring(client: &mut RawClient, entries: u32) -> (RawRing, i64) {
    let mem = Mapping::create("test-ring", ring::ring_bytes(entries)).unwrap();
    // SAFETY: page-aligned mapping of the right size, kept in RawRing.
    let view = unsafe { RingView::new(mem.as_ptr(), entries) };
    view.init();
    let (submit, complete) = (eventfd(), eventfd());
    let id = client.call(
        proto::OP_REG_IOR,
        [u64::from(entries), 0, 0, 0],
        &[mem.fd().as_raw_fd(), submit.as_raw_fd(), complete.as_raw_fd()],
    );
    (RawRing { view, _mem: mem, submit, complete, tail: 0, cq_head: 0 }, id)
}

impl RawRing {
    fn submit(&mut self, sqes: &[Sqe]) {
        for sqe in sqes {
            self.view.write_sqe(self.tail, sqe);
            self.tail = self.tail.wrapping_add(1);
        }
        self.view.publish_sq_tail(self.tail);
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes to an eventfd.
        unsafe { libc::write(self.submit.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    fn reap(&mut self, count: usize) -> Vec<Cqe> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while out.len() < count {
            match self.view.reap(&mut self.cq_head).unwrap() {
                Some(cqe) => out.push(cqe),
                None => {
                    assert!(std::time::Instant::now() < deadline, "no completion");
                    let mut pfd = libc::pollfd {
                        fd: self.complete.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one live pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                }
            }
        }
        out.sort_by_key(|c| c.userdata);
        out
    }
}

/// Entries that skip the application library's checks complete with errnos; unsealed or
/// mis-sized regions and non-eventfds are refused at registration.
fn hostile_entries(socket: &Path, file: &std::fs::File) {
    let mut client = RawClient { socket: UnixStream::connect(socket).unwrap() };
    let iov = Mapping::create("test-iov", 65536).unwrap();
    let iov_id = client.call(proto::OP_REG_IOV, [65536, 0, 0, 0], &[iov.fd().as_raw_fd()]);
    assert!(iov_id > 0, "{iov_id}");
    let file_id = client.call(proto::OP_REG_FD, [0; 4], &[file.as_raw_fd()]);
    assert!(file_id > 0, "{file_id}");
    // Registration refusals.
    assert_eq!(
        client.call(proto::OP_REG_IOV, [4096, 0, 0, 0], &[iov.fd().as_raw_fd()]),
        -i64::from(libc::EINVAL)
    );
    let plain = tempfile::tempfile_in("/dev/shm").unwrap();
    plain.set_len(4096).unwrap();
    assert_eq!(
        client.call(proto::OP_REG_IOV, [4096, 0, 0, 0], &[plain.as_raw_fd()]),
        -i64::from(libc::EINVAL)
    );
    assert_eq!(client.call(proto::OP_REG_IOV, [4096, 0, 0, 0], &[]), -i64::from(libc::EINVAL));
    let mem = Mapping::create("test-ring", ring::ring_bytes(4)).unwrap();
    assert_eq!(
        client.call(
            proto::OP_REG_IOR,
            [4, 0, 0, 0],
            &[mem.fd().as_raw_fd(), plain.as_raw_fd(), plain.as_raw_fd()]
        ),
        -i64::from(libc::EINVAL),
        "a non-eventfd is refused"
    );
    assert_eq!(client.call(99, [0; 4], &[]), -i64::from(libc::EOPNOTSUPP));
    assert_eq!(client.call(proto::OP_DEREG_FD, [12345, 0, 0, 0], &[]), -i64::from(libc::EBADF));

    let (mut ring, ring_id) = raw_ring(&mut client, 8);
    assert!(ring_id > 0, "{ring_id}");
    let good = Sqe {
        userdata: 0,
        file_offset: 0,
        buf_offset: 0,
        len: 100,
        iov_id: iov_id as u32,
        file_id: file_id as u32,
        opcode: ring::OP_WRITE,
        reserved: [0; 7],
    };
    let sqes = [
        good,
        Sqe { userdata: 1, opcode: 77, ..good },
        Sqe { userdata: 2, iov_id: 999, ..good },
        Sqe { userdata: 3, buf_offset: 65536 - 50, ..good },
        Sqe { userdata: 4, buf_offset: u64::MAX, ..good },
        Sqe { userdata: 5, file_id: 999, ..good },
        Sqe { userdata: 6, len: 0, ..good },
        Sqe { userdata: 7, file_offset: u64::MAX - 10, ..good },
    ];
    ring.submit(&sqes);
    let results: Vec<i64> = ring.reap(8).iter().map(|c| c.result).collect();
    let e = |errno: i32| -i64::from(errno);
    // fsync entries carry no buffer: a length, buffer offset or iov is refused.
    let fsync = Sqe { userdata: 10, opcode: ring::OP_FSYNC, iov_id: 0, len: 0, ..good };
    ring.submit(&[
        fsync,
        Sqe { userdata: 11, len: 100, ..fsync },
        Sqe { userdata: 12, iov_id: iov_id as u32, ..fsync },
        Sqe { userdata: 13, buf_offset: 8, ..fsync },
        Sqe { userdata: 14, file_id: 999, ..fsync },
    ]);
    let mut synced = ring.reap(5);
    synced.sort_by_key(|c| c.userdata);
    let synced: Vec<i64> = synced.iter().map(|c| c.result).collect();
    assert_eq!(synced, [0, e(libc::EINVAL), e(libc::EINVAL), e(libc::EINVAL), e(libc::EBADF)]);
    assert_eq!(
        results,
        vec![
            100,
            e(libc::EINVAL),
            e(libc::EFAULT),
            e(libc::EFAULT),
            e(libc::EFAULT),
            e(libc::EBADF),
            e(libc::EINVAL),
            e(libc::EINVAL)
        ]
    );
    // More entries than the ring holds without reaping: the server takes only what it can post.
    let burst: Vec<Sqe> =
        (0..8).map(|i| Sqe { userdata: 100 + i, file_offset: i * 100, ..good }).collect();
    ring.submit(&burst);
    assert_eq!(ring.reap(8).len(), 8);
    assert_eq!(client.call(proto::OP_DEREG_IOR, [ring_id as u64, 0, 0, 0], &[]), 0);
    assert_eq!(client.call(proto::OP_DEREG_FD, [file_id as u64, 0, 0, 0], &[]), 0);
}

async fn corrupted_ring(cluster: &Cluster, rig: &Rig) {
    let path = rig.placeholder(cluster, "/corrupt.bin", "corrupt.bin").await;
    let socket = socket(rig);
    let healthy_socket = socket.clone();
    let healthy_path = path.clone();
    app(move || {
        // A healthy session alongside.
        let healthy = Session::connect(&healthy_socket).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&healthy_path).unwrap();
        healthy.register_fd(file.as_fd()).unwrap();
        let iov = healthy.create_iov(4096).unwrap();
        let mut ior = healthy.create_ior(4).unwrap();

        let mut client = RawClient { socket: UnixStream::connect(&socket).unwrap() };
        let (mut ring, id) = raw_ring(&mut client, 4);
        assert!(id > 0);
        // Publish a tail far beyond the ring: the server must not follow it.
        ring.tail = 1000;
        ring.submit(&[]);
        let mut byte = [0u8; 1];
        client.socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(
            client.socket.read(&mut byte).unwrap(),
            0,
            "the server ends the corrupted session"
        );

        // The healthy session still works.
        iov.write_bytes(0, b"still serving").unwrap();
        ior.prep_io(&iov, false, 0, file.as_raw_fd(), 0, 13, 1).unwrap();
        ior.submit().unwrap();
        let mut cqes = [Cqe::default(); 1];
        assert_eq!(ior.wait(&mut cqes, 1, WAIT), Ok(1));
        assert_eq!(cqes[0].result, 13);
        drop(ior);
        healthy.deregister_fd(file.as_raw_fd()).unwrap();
    })
    .await;
    wait_for("sessions closed", || rig.server.stats().sessions == 0).await;
}

/// Example `name` of this crate, built first (once per test process) with the same cargo and
/// profile as the running test: `cargo test --test rings` alone does not build examples.
fn example(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = profile_dir();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", "r3fs-usrbio", "--example", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        let status = tokio::task::block_in_place(|| command.status())
            .expect("run cargo to build an example");
        assert!(status.success(), "cargo build of example {name} failed");
        built.push(name.to_string());
    }
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} does not exist after building it", path.display());
    path
}

async fn killed_application(cluster: &Cluster, rig: &Rig) {
    let path = rig.placeholder(cluster, "/killed.bin", "killed.bin").await;
    let mut command = Command::new(example("usrbio_roundtrip"));
    command.arg(&rig.mount).arg(&path).arg("--loop").env("R3FS_USRBIO_DIR", &rig.socket_dir);
    let mut victim = Proc::spawn("usrbio_roundtrip --loop", command);
    let line = tokio::task::block_in_place(|| {
        victim.wait_for_line("round 1 ok", Duration::from_secs(120))
    });
    println!("victim: {line}");
    // Kill it while its next round is in flight.
    let before = rig.server.stats().ios_completed;
    wait_for("the next round under way", || rig.server.stats().ios_completed > before).await;
    victim.kill9();
    wait_for("the killed session ended", || rig.server.stats().sessions == 0).await;
    let stats = rig.server.stats();
    assert_eq!((stats.iovs, stats.iors, stats.files), (0, 0, 0), "{stats:?}");
    // The server keeps serving: the same example runs to completion on the same file.
    let mut command = Command::new(example("usrbio_roundtrip"));
    command.arg(&rig.mount).arg(&path).env("R3FS_USRBIO_DIR", &rig.socket_dir);
    let output = tokio::task::block_in_place(|| command.output()).expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "example failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("usrbio round trip ok"), "{stdout}");
}

/// Compiles the C example (once) and returns its path, or None without a C compiler.
fn compile_c_example(cluster: &Cluster) -> Option<std::path::PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        println!("skipping the C example: no C compiler ({cc})");
        return None;
    }
    let exe = cluster.dir().join("usrbio_example");
    if exe.exists() {
        return Some(exe);
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib_dir = common::library_dir();
    let compiled = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(crate_dir.join("examples/usrbio_example.c"))
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lr3fs_usrbio")
        .output()
        .expect("run cc");
    assert!(compiled.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&compiled.stderr));
    Some(exe)
}

/// The real thing: r3fs-fuse mounts the cluster and serves rings; the C and Rust examples open
/// files on the mount and move their bytes through rings.
async fn through_the_fuse_mount(cluster: &Cluster) {
    let mount = tokio::task::block_in_place(|| cluster.daemons.mount_fuse("mnt"));
    let c_file = mount.path("c-through-fuse.bin");
    let rust_file = mount.path("rust-through-fuse.bin");
    tokio::task::block_in_place(|| {
        std::fs::write(&c_file, b"").expect("create a file through FUSE");
        std::fs::write(&rust_file, b"").expect("create a file through FUSE");
    });
    if let Some(exe) = compile_c_example(cluster) {
        let mut command = Command::new(&exe);
        command.arg(mount.mountpoint()).arg(&c_file).env("R3FS_USRBIO_DIR", mount.socket_dir());
        let output = tokio::task::block_in_place(|| command.output()).expect("run the C example");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "C example through FUSE failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let file = cluster
            .files
            .open("/c-through-fuse.bin", &r3fs_client::OpenOptions::read_only())
            .await
            .unwrap();
        let data_bytes = (1usize << 20) + 123;
        let mut back = vec![0u8; data_bytes];
        assert_eq!(file.read_at(4103, &mut back).await.unwrap(), data_bytes);
        assert!(back.iter().enumerate().all(|(i, &b)| b == ((i * 131 + 17) % 253) as u8));
    }
    let mut command = Command::new(example("usrbio_roundtrip"));
    command.arg(mount.mountpoint()).arg(&rust_file).env("R3FS_USRBIO_DIR", mount.socket_dir());
    let output = tokio::task::block_in_place(|| command.output()).expect("run the Rust example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Rust example through FUSE failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("usrbio round trip ok"), "{stdout}");
    print!("through FUSE: {stdout}");
    ring_writes_show_through_the_mount(cluster, &mount).await;
    // The same bytes through the kernel's FUSE path, for comparison (same daemon, same build).
    let plain = mount.path("plain-through-fuse.bin");
    let data: Vec<u8> = (0..3usize << 20).map(|i| (i % 251) as u8).collect();
    let (write, read) = tokio::task::block_in_place(|| {
        let started = std::time::Instant::now();
        std::fs::write(&plain, &data).expect("write through FUSE");
        let write = started.elapsed();
        let started = std::time::Instant::now();
        let back = std::fs::read(&plain).expect("read through FUSE");
        assert!(back == data, "bytes through FUSE differ");
        (write, started.elapsed())
    });
    println!(
        "plain FUSE path, 3 MiB: write {:.0} MiB/s, read {:.0} MiB/s",
        3.0 / write.as_secs_f64(),
        3.0 / read.as_secs_f64()
    );
    tokio::task::block_in_place(move || drop(mount));
}

/// A file written through rings shows its new length through the mount as soon as the write's
/// completion is reaped (the kernel had cached length 0 just before), reads back through the
/// kernel's FUSE path, and after a ring fsync another client (meta) sees the length too.
async fn ring_writes_show_through_the_mount(cluster: &Cluster, mount: &FuseMount) {
    let path = mount.path("ring-stat.bin");
    let socket = std::fs::read_dir(mount.socket_dir())
        .expect("the ring server's socket directory")
        .map(|entry| entry.expect("a directory entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("the ring server's socket");
    const PIECE: usize = 1 << 20;
    let data: Vec<u8> = (0..3 * PIECE).map(|i| (i * 7 % 251) as u8).collect();
    let expected = data.clone();
    let fd_path = path.clone();
    let fd = app(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&fd_path)
            .unwrap();
        // The kernel caches these attributes (length 0) for attr_timeout_ms.
        assert_eq!(std::fs::metadata(&fd_path).unwrap().len(), 0);
        let session = Session::connect(&socket).unwrap();
        session.register_fd(file.as_fd()).unwrap();
        let iov = session.create_iov(data.len()).unwrap();
        iov.write_bytes(0, &data).unwrap();
        let mut ior = session.create_ior(4).unwrap();
        let mut cqes = [Cqe::default(); 1];
        for piece in 0..3 {
            let at = piece * PIECE;
            ior.prep_io(&iov, false, at, file.as_raw_fd(), at as u64, PIECE, piece as u64).unwrap();
            ior.submit().unwrap();
            assert_eq!(ior.wait(&mut cqes, 1, WAIT), Ok(1));
            assert_eq!(cqes[0], Cqe { result: PIECE as i64, userdata: piece as u64 });
            let length = std::fs::metadata(&fd_path).unwrap().len();
            assert_eq!(length, (at + PIECE) as u64, "stat right after ring write {piece}");
        }
        // Through the kernel's FUSE read path, while the ring server still holds the file.
        let back = std::fs::read(&fd_path).unwrap();
        assert!(back == data, "bytes read through the mount differ from the ring writes");
        ior.prep_fsync(file.as_raw_fd(), 99).unwrap();
        ior.submit().unwrap();
        assert_eq!(ior.wait(&mut cqes, 1, WAIT), Ok(1));
        assert_eq!(cqes[0], Cqe { result: 0, userdata: 99 });
        // Keep the registration (and the application's fd) open: meta must have the length now.
        (file, session, ior, iov)
    })
    .await;
    let other =
        cluster.files.open("/ring-stat.bin", &r3fs_client::OpenOptions::read_only()).await.unwrap();
    assert_eq!(other.len().await.unwrap(), expected.len() as u64, "meta's length after fsync");
    let mut back = vec![0u8; expected.len()];
    assert_eq!(other.read_at(0, &mut back).await.unwrap(), expected.len());
    assert!(back == expected);
    app(move || {
        let (file, session, ior, iov) = fd;
        drop(ior);
        drop(iov);
        session.deregister_fd(file.as_raw_fd()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * PIECE as u64);
    })
    .await;
}

async fn c_example(cluster: &Cluster, rig: &Rig) {
    let Some(exe) = compile_c_example(cluster) else { return };
    let path = rig.placeholder(cluster, "/from-c.bin", "from-c.bin").await;
    let mut command = Command::new(&exe);
    command.arg(&rig.mount).arg(&path).env("R3FS_USRBIO_DIR", &rig.socket_dir);
    let output = tokio::task::block_in_place(|| command.output()).expect("run the C example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "C example failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("c round trip ok"), "{stdout}");
    wait_for("the C session ended", || rig.server.stats().sessions == 0).await;
    // Through the file API too: the bytes the C program wrote, at its offset.
    let file =
        cluster.files.open("/from-c.bin", &r3fs_client::OpenOptions::read_only()).await.unwrap();
    let data_bytes = (1usize << 20) + 123;
    let mut back = vec![0u8; data_bytes];
    assert_eq!(file.read_at(4103, &mut back).await.unwrap(), data_bytes);
    assert!(back.iter().enumerate().all(|(i, &b)| b == ((i * 131 + 17) % 253) as u8));
}
