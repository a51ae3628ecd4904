//! POSIX behaviour of a mounted r3fs: real syscalls and real commands (`cp`, `dd`, `rm -rf`,
//! `fio`) against the real `r3fs-fuse` binary over a real cluster (mgmtd, three storage daemons
//! with replication-3 chains, meta) on loopback.
//!
//! One cluster serves every scenario (starting it dominates the cost), so this file has its own
//! harness (`harness = false`): it boots the cluster once with r3fs-testkit's [`Cluster`]
//! (mounted on `<dir>/mnt`), runs each scenario in its own directory of the mount, catches a
//! failing scenario's panic so the others still run, always unmounts and stops the daemons, and
//! fails if any scenario failed. `cargo test -p r3fs-fuse --test posix -- <filter>` runs the
//! scenarios whose name contains the filter.

use r3fs_testkit::cluster::{
    Cluster, FUSE_SUPER_MAGIC, FuseMount, MetaAuth, Role, fuse_unavailable, statfs_type,
};
use rand::{RngCore, SeedableRng};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Chunk size of the root layout: a 1 MiB kernel write spans two chunks.
const CHUNK: usize = 512 << 10;

/// What a scenario may use of the mount besides its own directory.
struct Mounted {
    mountpoint: PathBuf,
    /// The mounted daemon's config (a second daemon started with it finds the mount busy).
    config: PathBuf,
}

type Scenario = fn(&Mounted, &Path);

const SCENARIOS: &[(&str, Scenario)] = &[
    ("error_codes", error_codes),
    ("write_read_and_reopen", write_read_and_reopen),
    ("open_flags", open_flags),
    ("rename", rename),
    ("links", links),
    ("sparse_files", sparse_files),
    ("truncate", truncate),
    ("timestamps_and_modes", timestamps_and_modes),
    ("readdir_many", readdir_many),
    ("large_file", large_file),
    ("parallel_writers", parallel_writers),
    ("commands", commands),
    ("rm_rf_tree", rm_rf_tree),
    ("non_root_user", non_root_user),
    ("fio", fio),
    ("busy_mountpoint", busy_mountpoint),
];

fn main() {
    if let Some(reason) = fuse_unavailable() {
        println!("skipped: FUSE tests need a mount: {reason}");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = SCENARIOS
        .iter()
        .filter(|(name, _)| args.is_empty() || args.iter().any(|a| name.contains(a.as_str())))
        .collect();
    if selected.is_empty() {
        println!("no scenario matches {args:?}");
        return;
    }
    // The daemons' admin client lives on this runtime: it outlives the cluster.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the cluster");
    let mut cluster = runtime.block_on(
        Cluster::builder("fuse-test")
            .chunk_size(CHUNK as u32)
            .target_capacity(512 << 20)
            .meta(MetaAuth::Mgmtd)
            .fuse()
            .config(Role::Fuse, "[client.file]\nlength_report_interval_ms = 1000")
            .log(Role::Storage, "warn")
            .binary(Role::Fuse, env!("CARGO_BIN_EXE_r3fs-fuse"))
            .start(),
    );
    let mount = cluster.fuse().expect("the builder's .fuse() mount");
    let mounted = Mounted {
        mountpoint: mount.mountpoint().to_path_buf(),
        config: mount.daemon().config_path().to_path_buf(),
    };
    let mut failed = Vec::new();
    for (name, scenario) in selected {
        let dir = mounted.mountpoint.join(name);
        fs::create_dir(&dir).expect("create the scenario directory");
        println!("scenario {name} ...");
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&mounted, &dir);
        }));
        match outcome {
            Ok(()) => println!("scenario {name} ok ({:?})", started.elapsed()),
            Err(_) => {
                println!("scenario {name} FAILED");
                failed.push(*name);
            }
        }
    }
    if !sigterm_unmounts(cluster.fuse().expect("the mount")) {
        failed.push("sigterm_unmounts");
    }
    let problems = cluster.stop();
    if !problems.is_empty() {
        println!("the daemons did not stop cleanly:\n{}", problems.join("\n"));
        failed.push("clean_stop");
    }
    drop(runtime);
    if !failed.is_empty() {
        eprintln!("failed scenarios: {failed:?}");
        std::process::exit(1);
    }
    println!("every scenario passed");
}

fn errno_of<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result.expect_err("the call must fail").raw_os_error().expect("an OS error")
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn error_codes(_m: &Mounted, dir: &Path) {
    let missing = dir.join("missing");
    assert_eq!(errno_of(File::open(&missing)), libc::ENOENT);
    assert_eq!(errno_of(fs::metadata(&missing)), libc::ENOENT);
    assert_eq!(errno_of(fs::remove_file(&missing)), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(dir.join("a/b"))), libc::ENOENT);

    fs::create_dir(dir.join("d")).expect("mkdir");
    assert_eq!(errno_of(fs::create_dir(dir.join("d"))), libc::EEXIST);
    fs::write(dir.join("d/f"), b"x").expect("write");
    assert_eq!(errno_of(fs::remove_dir(dir.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_file(dir.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(OpenOptions::new().write(true).open(dir.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::create_dir(dir.join("d/f/g"))), libc::ENOTDIR);
    assert_eq!(errno_of(File::create(dir.join("d/f/g"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_dir(dir.join("d/f"))), libc::ENOTDIR);
    assert_eq!(
        errno_of(OpenOptions::new().write(true).create_new(true).open(dir.join("d/f"))),
        libc::EEXIST
    );
    assert_eq!(errno_of(fs::read_dir(dir.join("d/f"))), libc::ENOTDIR);
    let long = "n".repeat(256);
    assert_eq!(errno_of(File::create(dir.join(long))), libc::ENAMETOOLONG);
    fs::remove_file(dir.join("d/f")).expect("unlink");
    fs::remove_dir(dir.join("d")).expect("rmdir");
    assert_eq!(errno_of(fs::metadata(dir.join("d"))), libc::ENOENT);
}

fn write_read_and_reopen(_m: &Mounted, dir: &Path) {
    // Unaligned sizes across chunk boundaries, written in one go and read back after reopening.
    let data = random_bytes(3 * CHUNK + 12_345, 1);
    let path = dir.join("data.bin");
    fs::write(&path, &data).expect("write");
    assert_eq!(fs::metadata(&path).expect("stat").len(), data.len() as u64);
    assert_eq!(fs::read(&path).expect("read"), data);

    // Size seen while the writer is still open, and reads through a second descriptor.
    let mut writer = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("open.bin"))
        .expect("open");
    writer.write_all(&data[..CHUNK + 1]).expect("write");
    assert_eq!(fs::metadata(dir.join("open.bin")).expect("stat").len(), CHUNK as u64 + 1);
    let mut reader = File::open(dir.join("open.bin")).expect("open for reading");
    let mut back = Vec::new();
    reader.read_to_end(&mut back).expect("read");
    assert_eq!(back, &data[..CHUNK + 1]);
    writer.sync_all().expect("fsync");
    drop(writer);

    // Unaligned reads at many offsets.
    let file = File::open(&path).expect("open");
    for (offset, len) in
        [(0usize, 1usize), (CHUNK - 3, 7), (2 * CHUNK + 1, CHUNK), (data.len() - 5, 100)]
    {
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, offset as u64).expect("pread");
        let end = (offset + len).min(data.len());
        assert_eq!(&buf[..n], &data[offset..end], "pread at {offset}");
    }
}

fn open_flags(_m: &Mounted, dir: &Path) {
    let path = dir.join("f");
    // O_EXCL
    File::options().write(true).create_new(true).open(&path).expect("O_EXCL create");
    assert_eq!(errno_of(File::options().write(true).create_new(true).open(&path)), libc::EEXIST);
    // O_APPEND
    {
        let mut f = File::options().append(true).open(&path).expect("O_APPEND");
        f.write_all(b"one ").expect("append");
        f.write_all(b"two").expect("append");
    }
    {
        let mut f = File::options().append(true).open(&path).expect("O_APPEND");
        f.write_all(b" three").expect("append");
    }
    assert_eq!(fs::read(&path).expect("read"), b"one two three");
    // O_TRUNC
    {
        let mut f = File::options().write(true).truncate(true).open(&path).expect("O_TRUNC");
        assert_eq!(fs::metadata(&path).expect("stat").len(), 0);
        f.write_all(b"new").expect("write");
    }
    assert_eq!(fs::read(&path).expect("read"), b"new");
    // O_DIRECT: aligned buffers and offsets, bypassing the page cache.
    let direct = dir.join("direct");
    let data = random_bytes(2 << 20, 2);
    let layout = std::alloc::Layout::from_size_align(data.len(), 4096).expect("layout");
    // SAFETY: the layout has a non-zero size; the buffer is freed below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    // SAFETY: `ptr` points to `data.len()` bytes owned here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, data.len()) };
    buf.copy_from_slice(&data);
    {
        let f = File::options()
            .write(true)
            .read(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(&direct)
            .expect("O_DIRECT open");
        f.write_all_at(buf, 0).expect("direct write");
        buf.fill(0);
        f.read_exact_at(buf, 0).expect("direct read");
        assert!(buf == data.as_slice(), "O_DIRECT read back what it wrote");
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    assert_eq!(fs::read(&direct).expect("buffered read"), data);
}

fn rename(_m: &Mounted, dir: &Path) {
    fs::write(dir.join("a"), b"from a").expect("write a");
    fs::write(dir.join("b"), b"from b").expect("write b");
    fs::rename(dir.join("a"), dir.join("b")).expect("rename over a file");
    assert_eq!(fs::read(dir.join("b")).expect("read b"), b"from a");
    assert_eq!(errno_of(fs::metadata(dir.join("a"))), libc::ENOENT);

    fs::create_dir_all(dir.join("d1/sub")).expect("mkdir");
    fs::create_dir(dir.join("d2")).expect("mkdir");
    fs::write(dir.join("d1/sub/f"), b"deep").expect("write");
    fs::rename(dir.join("d1"), dir.join("d2")).expect("rename a directory over an empty one");
    assert_eq!(fs::read(dir.join("d2/sub/f")).expect("read"), b"deep");
    fs::create_dir(dir.join("d3")).expect("mkdir");
    assert_eq!(errno_of(fs::rename(dir.join("d3"), dir.join("d2"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::rename(dir.join("d3"), dir.join("b"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::rename(dir.join("b"), dir.join("d3"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(dir.join("d2"), dir.join("d2/sub/x"))), libc::EINVAL);
    // Across directories.
    fs::rename(dir.join("b"), dir.join("d2/sub/moved")).expect("move a file");
    assert_eq!(fs::read(dir.join("d2/sub/moved")).expect("read"), b"from a");

    // renameat2 flags: NOREPLACE refuses an existing target; EXCHANGE is not supported.
    fs::write(dir.join("x"), b"x").expect("write");
    fs::write(dir.join("y"), b"y").expect("write");
    let c =
        |p: PathBuf| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).expect("path");
    let (x, y, z) = (c(dir.join("x")), c(dir.join("y")), c(dir.join("z")));
    let renameat2 = |from: &std::ffi::CString, to: &std::ffi::CString, flags: u32| {
        // SAFETY: NUL-terminated paths; AT_FDCWD.
        let rc = unsafe {
            libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags)
        };
        if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) }
    };
    assert_eq!(renameat2(&x, &y, libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(renameat2(&x, &y, libc::RENAME_EXCHANGE), libc::EINVAL);
    assert_eq!(renameat2(&x, &z, libc::RENAME_NOREPLACE), 0);
    assert_eq!(fs::read(dir.join("z")).expect("read"), b"x");
    assert_eq!(fs::read(dir.join("y")).expect("read"), b"y");
}

fn links(_m: &Mounted, dir: &Path) {
    fs::write(dir.join("file"), b"linked").expect("write");
    fs::hard_link(dir.join("file"), dir.join("hard")).expect("link");
    let a = fs::metadata(dir.join("file")).expect("stat");
    let b = fs::metadata(dir.join("hard")).expect("stat");
    assert_eq!(a.ino(), b.ino());
    assert_eq!(b.nlink(), 2);
    fs::remove_file(dir.join("file")).expect("unlink one link");
    assert_eq!(fs::read(dir.join("hard")).expect("read the other"), b"linked");
    assert_eq!(fs::metadata(dir.join("hard")).expect("stat").nlink(), 1);
    assert_eq!(errno_of(fs::hard_link(dir.join("hard"), dir.join("hard"))), libc::EEXIST);
    fs::create_dir(dir.join("dir")).expect("mkdir");
    assert_eq!(errno_of(fs::hard_link(dir.join("dir"), dir.join("dirlink"))), libc::EPERM);

    std::os::unix::fs::symlink("hard", dir.join("sym")).expect("symlink");
    assert_eq!(fs::read_link(dir.join("sym")).expect("readlink"), Path::new("hard"));
    assert_eq!(fs::read(dir.join("sym")).expect("read through"), b"linked");
    assert!(fs::symlink_metadata(dir.join("sym")).expect("lstat").file_type().is_symlink());
    assert_eq!(fs::symlink_metadata(dir.join("sym")).expect("lstat").len(), 4);
    std::os::unix::fs::symlink("nowhere", dir.join("dangling")).expect("symlink");
    assert_eq!(errno_of(File::open(dir.join("dangling"))), libc::ENOENT);
    std::os::unix::fs::symlink("dir", dir.join("dirsym")).expect("symlink to a directory");
    fs::write(dir.join("dirsym/inside"), b"i").expect("write through a directory symlink");
    assert_eq!(fs::read(dir.join("dir/inside")).expect("read"), b"i");
    assert_eq!(errno_of(fs::read_link(dir.join("hard"))), libc::EINVAL);
    fs::remove_file(dir.join("sym")).expect("unlink the symlink");
    assert_eq!(fs::read(dir.join("hard")).expect("target stays"), b"linked");
}

fn sparse_files(_m: &Mounted, dir: &Path) {
    let path = dir.join("sparse");
    let f = File::create(&path).expect("create");
    let far = 10 * CHUNK as u64 + 777;
    f.write_all_at(b"start", 0).expect("write");
    f.write_all_at(b"end", far).expect("write far");
    drop(f);
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.len(), far + 3);
    let data = fs::read(&path).expect("read");
    assert_eq!(&data[..5], b"start");
    assert!(data[5..far as usize].iter().all(|&b| b == 0), "the hole reads as zeros");
    assert_eq!(&data[far as usize..], b"end");
    // Extending with set_len makes a hole at the end.
    let f = File::options().write(true).open(&path).expect("open");
    f.set_len(far + 3 + 3 * CHUNK as u64).expect("extend");
    drop(f);
    let data = fs::read(&path).expect("read");
    assert_eq!(data.len() as u64, far + 3 + 3 * CHUNK as u64);
    assert!(data[far as usize + 3..].iter().all(|&b| b == 0));
}

fn truncate(_m: &Mounted, dir: &Path) {
    let data = random_bytes(3 * CHUNK + 100, 3);
    let path = dir.join("t");
    fs::write(&path, &data).expect("write");
    // Down, through a descriptor (ftruncate) to the middle of a chunk.
    let cut = CHUNK + CHUNK / 2 + 1;
    let f = File::options().write(true).open(&path).expect("open");
    f.set_len(cut as u64).expect("truncate down");
    drop(f);
    assert_eq!(fs::metadata(&path).expect("stat").len(), cut as u64);
    assert_eq!(fs::read(&path).expect("read"), &data[..cut]);
    // Up: the new tail reads as zeros, not as the old bytes.
    let f = File::options().write(true).open(&path).expect("open");
    f.set_len(data.len() as u64).expect("truncate up");
    drop(f);
    let back = fs::read(&path).expect("read");
    assert_eq!(&back[..cut], &data[..cut]);
    assert!(back[cut..].iter().all(|&b| b == 0), "bytes past a truncation read as zeros");
    // By path (truncate(2)) while nobody has it open, and to zero.
    run(Command::new("truncate").arg("-s").arg("10").arg(&path));
    assert_eq!(fs::read(&path).expect("read"), &data[..10]);
    run(Command::new("truncate").arg("-s").arg("0").arg(&path));
    assert_eq!(fs::metadata(&path).expect("stat").len(), 0);
    // Writing after a truncate under an open descriptor.
    let mut f = File::options().read(true).write(true).open(&path).expect("open");
    f.write_all(b"abcdef").expect("write");
    f.set_len(3).expect("truncate");
    f.seek(SeekFrom::Start(5)).expect("seek");
    f.write_all(b"Z").expect("write past the end");
    drop(f);
    assert_eq!(fs::read(&path).expect("read"), b"abc\0\0Z");
}

fn timestamps_and_modes(_m: &Mounted, dir: &Path) {
    let before = SystemTime::now() - Duration::from_secs(5);
    let path = dir.join("times");
    fs::write(&path, b"t").expect("write");
    let meta = fs::metadata(&path).expect("stat");
    let after = SystemTime::now() + Duration::from_secs(5);
    for time in [meta.modified().expect("mtime"), meta.accessed().expect("atime")] {
        assert!(time > before && time < after, "a new file's times are now: {time:?}");
    }
    // Explicit times (utimensat), with nanoseconds.
    let at = UNIX_EPOCH + Duration::new(981_173_106, 123_456_789);
    let f = File::options().write(true).open(&path).expect("open");
    f.set_times(std::fs::FileTimes::new().set_accessed(at).set_modified(at)).expect("utimens");
    drop(f);
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.modified().expect("mtime"), at);
    assert_eq!(meta.accessed().expect("atime"), at);
    run(Command::new("touch").arg("-m").arg("-d").arg("2001-02-03 04:05:06Z").arg(&path));
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.mtime(), 981_173_106);
    // touch (UTIME_NOW) moves it to now.
    run(Command::new("touch").arg(&path));
    assert!(fs::metadata(&path).expect("stat").modified().expect("mtime") > before);
    // chmod, chown
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(fs::metadata(&path).expect("stat").mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&path, Some(1234), Some(5678)).expect("chown");
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    fs::create_dir(dir.join("sub")).expect("mkdir");
    fs::set_permissions(dir.join("sub"), fs::Permissions::from_mode(0o1777)).expect("chmod dir");
    assert_eq!(fs::metadata(dir.join("sub")).expect("stat").mode() & 0o7777, 0o1777);
    assert!(fs::metadata(dir.join("sub")).expect("stat").is_dir());
}

fn readdir_many(_m: &Mounted, dir: &Path) {
    const COUNT: usize = 2000;
    let mut expected: Vec<String> = (0..COUNT).map(|i| format!("entry-{i:05}")).collect();
    for name in &expected[..COUNT - 10] {
        File::create(dir.join(name)).expect("create");
    }
    for name in &expected[COUNT - 10..] {
        fs::create_dir(dir.join(name)).expect("mkdir");
    }
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    expected.sort();
    assert_eq!(names.len(), COUNT, "each entry exactly once");
    assert_eq!(names, expected);
    let dirs = fs::read_dir(dir)
        .expect("readdir")
        .filter(|e| e.as_ref().expect("entry").file_type().expect("type").is_dir())
        .count();
    assert_eq!(dirs, 10, "entry types come from the listing");
    // `ls` agrees (and sees . and ..).
    let listing = run(Command::new("ls").arg("-a").arg(dir));
    assert_eq!(listing.lines().count(), COUNT + 2);
}

fn large_file(_m: &Mounted, dir: &Path) {
    // Past 4 GiB (and 32-bit offsets): write 1 MiB near 5 GiB, read it back, the hole is zeros.
    let path = dir.join("big");
    let offset = (5u64 << 30) + 12_345;
    let data = random_bytes(1 << 20, 4);
    let f = File::create(&path).expect("create");
    f.write_all_at(&data, offset).expect("write near 5 GiB");
    f.write_all_at(b"head", 0).expect("write at 0");
    drop(f);
    let len = fs::metadata(&path).expect("stat").len();
    assert_eq!(len, offset + data.len() as u64);
    let f = File::open(&path).expect("open");
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, offset).expect("read back");
    assert!(back == data, "bytes past 5 GiB read back");
    let mut hole = vec![1u8; 1 << 20];
    f.read_exact_at(&mut hole, 4u64 << 30).expect("read the hole at 4 GiB");
    assert!(hole.iter().all(|&b| b == 0));
    let mut head = [0u8; 4];
    f.read_exact_at(&mut head, 0).expect("read head");
    assert_eq!(&head, b"head");
    // dd with a skip past 4 GiB agrees.
    let local = tempfile::tempdir().expect("local temp dir");
    let copy = local.path().join("tail");
    run(Command::new("dd")
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", copy.display()))
        .arg("bs=1M")
        .arg("iflag=skip_bytes")
        .arg(format!("skip={offset}"))
        .arg("status=none"));
    assert!(fs::read(&copy).expect("read the copy") == data, "dd read past 5 GiB");
}

fn parallel_writers(_m: &Mounted, dir: &Path) {
    // Several threads write one file through one descriptor at different offsets at once.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 4 << 20;
    let path = dir.join("parallel");
    let file = std::sync::Arc::new(File::create(&path).expect("create"));
    let data = std::sync::Arc::new(random_bytes(THREADS * PER_THREAD, 5));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (file, data) = (file.clone(), data.clone());
            std::thread::spawn(move || {
                // Interleave: each thread writes 256 KiB pieces of its own stripe.
                let piece = 256 << 10;
                for i in 0..PER_THREAD / piece {
                    let offset = (i * THREADS + t) * piece;
                    file.write_all_at(&data[offset..offset + piece], offset as u64)
                        .expect("parallel pwrite");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("writer thread");
    }
    file.sync_all().expect("fsync");
    drop(file);
    assert!(fs::read(&path).expect("read") == *data, "parallel writes landed where written");
}

fn commands(_m: &Mounted, dir: &Path) {
    let local = tempfile::tempdir().expect("local temp dir");
    let source = local.path().join("source");
    fs::write(&source, random_bytes(5 * CHUNK + 3, 6)).expect("write the local file");
    // cp in and out, cmp.
    run(Command::new("cp").arg(&source).arg(dir.join("copy")));
    run(Command::new("cmp").arg(&source).arg(dir.join("copy")));
    run(Command::new("cp").arg(dir.join("copy")).arg(local.path().join("back")));
    run(Command::new("cmp").arg(&source).arg(local.path().join("back")));
    // cp -r of a tree, then diff -r.
    fs::create_dir_all(local.path().join("tree/a/b")).expect("mkdir");
    fs::write(local.path().join("tree/a/b/f"), b"f").expect("write");
    fs::write(local.path().join("tree/g"), random_bytes(100_000, 7)).expect("write");
    run(Command::new("cp").arg("-r").arg(local.path().join("tree")).arg(dir.join("tree")));
    run(Command::new("diff").arg("-r").arg(local.path().join("tree")).arg(dir.join("tree")));
    // dd: buffered and O_DIRECT, in 1 MiB blocks.
    let dd_out = dir.join("dd.bin");
    run(Command::new("dd")
        .arg(format!("if={}", source.display()))
        .arg(format!("of={}", dd_out.display()))
        .arg("bs=1M")
        .arg("status=none"));
    run(Command::new("cmp").arg(&source).arg(&dd_out));
    let direct = dir.join("dd-direct.bin");
    run(Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", direct.display()))
        .arg("bs=1M")
        .arg("count=8")
        .arg("oflag=direct")
        .arg("status=none"));
    assert_eq!(fs::metadata(&direct).expect("stat").len(), 8 << 20);
    let copy = local.path().join("direct-copy");
    run(Command::new("dd")
        .arg(format!("if={}", direct.display()))
        .arg(format!("of={}", copy.display()))
        .arg("bs=1M")
        .arg("iflag=direct")
        .arg("status=none"));
    run(Command::new("cmp").arg(&direct).arg(&copy));
    // ls -l, du, stat, df, mv, ln -s.
    run(Command::new("ls").arg("-lR").arg(dir));
    run(Command::new("mv").arg(dir.join("copy")).arg(dir.join("moved")));
    run(Command::new("ln").arg("-s").arg("moved").arg(dir.join("lnk")));
    run(Command::new("cmp").arg(&source).arg(dir.join("lnk")));
    run(Command::new("df").arg(dir));
    run(Command::new("sha256sum").arg(dir.join("moved")));
}

fn rm_rf_tree(_m: &Mounted, dir: &Path) {
    let root = dir.join("tree");
    let mut files = 0;
    for a in 0..4 {
        for b in 0..4 {
            let d = root.join(format!("a{a}/b{b}"));
            fs::create_dir_all(&d).expect("mkdir -p");
            for f in 0..8 {
                fs::write(d.join(format!("f{f}")), format!("{a}{b}{f}")).expect("write");
                files += 1;
            }
            std::os::unix::fs::symlink("f0", d.join("link")).expect("symlink");
        }
    }
    assert_eq!(files, 128);
    run(Command::new("rm").arg("-rf").arg(&root));
    assert_eq!(errno_of(fs::metadata(&root)), libc::ENOENT);
    assert_eq!(fs::read_dir(dir).expect("readdir").count(), 0);
}

fn non_root_user(_m: &Mounted, dir: &Path) {
    // The kernel checks permissions (default_permissions) for the calling user.
    fs::write(dir.join("private"), b"secret").expect("write");
    fs::set_permissions(dir.join("private"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(dir.join("public"), b"open").expect("write");
    fs::set_permissions(dir.join("public"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .output()
            .expect("run setpriv")
    };
    let private = dir.join("private").display().to_string();
    let public = dir.join("public").display().to_string();
    let out = as_nobody(&["cat", &private]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    let out = as_nobody(&["cat", &public]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"open");
    let new = dir.join("new").display().to_string();
    let out = as_nobody(&["touch", &new]);
    assert!(!out.status.success(), "no write permission on the directory: {out:?}");
    // In a directory nobody may write to, files are created as nobody.
    fs::create_dir(dir.join("shared")).expect("mkdir");
    fs::set_permissions(dir.join("shared"), fs::Permissions::from_mode(0o777)).expect("chmod");
    let mine = dir.join("shared/mine").display().to_string();
    let out = as_nobody(&["sh", "-c", &format!("echo hi > {mine}")]);
    assert!(out.status.success(), "{out:?}");
    let meta = fs::metadata(&mine).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "new files belong to the caller");
    let out = as_nobody(&["rm", &private]);
    assert!(!out.status.success(), "{out:?}");
}

fn fio(_m: &Mounted, dir: &Path) {
    let out = run(Command::new("fio")
        .arg("--name=r3fs")
        .arg(format!("--directory={}", dir.display()))
        .args(["--size=16M", "--bs=64k", "--rw=randwrite", "--numjobs=2", "--ioengine=psync"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_state_save=0", "--fallocate=none"])
        .arg("--group_reporting"));
    assert!(out.contains("r3fs"), "{out}");
    let out = run(Command::new("fio")
        .arg("--name=r3fs-direct")
        .arg(format!("--directory={}", dir.display()))
        .args(["--size=8M", "--bs=1M", "--rw=write", "--direct=1", "--ioengine=psync"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_state_save=0", "--fallocate=none"]));
    assert!(out.contains("r3fs-direct"), "{out}");
}

fn busy_mountpoint(m: &Mounted, dir: &Path) {
    // A second daemon on the same mount point refuses with a clear message; so does a file.
    let config = &m.config;
    let out = Command::new(env!("CARGO_BIN_EXE_r3fs-fuse"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("run r3fs-fuse");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("busy"), "{stderr}");
    fs::write(dir.join("file"), b"x").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_r3fs-fuse"))
        .arg("--config")
        .arg(config)
        .arg("--mountpoint")
        .arg(dir.join("file"))
        .output()
        .expect("run r3fs-fuse");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a directory"), "{stderr}");
}

/// SIGTERM unmounts cleanly: the daemon exits 0 and the directory is no longer a FUSE mount.
fn sigterm_unmounts(mount: &mut FuseMount) -> bool {
    println!("scenario sigterm_unmounts ...");
    let exited_cleanly = mount.daemon().proc().terminate(Duration::from_secs(30));
    let unmounted = statfs_type(mount.mountpoint()) != Some(FUSE_SUPER_MAGIC);
    let ok = exited_cleanly && unmounted;
    if ok {
        println!("scenario sigterm_unmounts ok");
    } else {
        println!(
            "scenario sigterm_unmounts FAILED (clean exit {exited_cleanly}, unmounted {unmounted}); output:\n{}",
            mount.daemon().proc().output().join("\n")
        );
    }
    ok
}
