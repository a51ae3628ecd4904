//! Writes a file of an r3fs mount through a USRBIO ring and reads it back, checking every byte.
//!
//! `usrbio_roundtrip <mount> <file on the mount> [--loop]`
//!
//! `<mount>` is any path on the mount (or the server's socket). With `--loop` it repeats forever
//! (printing `round <n> ok` after each round): the tests kill it mid-I/O.
#![allow(clippy::unwrap_used)]

use r3fs_usrbio::{Cqe, Session};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;

const IOV_BYTES: usize = 8 << 20;
const DATA_BYTES: usize = 3 << 20;
const IO_BYTES: usize = 192 << 10;
const FILE_OFFSET: u64 = 1000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 3, "usage: usrbio_roundtrip <mount> <file> [--loop]");
    let repeat = args.get(3).is_some_and(|a| a == "--loop");
    let session = Session::shared(&args[1])?;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&args[2])?;
    session.register_fd(file.as_fd())?;
    let iov = session.create_iov(IOV_BYTES)?;
    let mut ior = session.create_ior(64)?;
    let fd = file.as_raw_fd();
    let mut round = 0u64;
    loop {
        round += 1;
        // A pattern that differs per round and per byte.
        let data: Vec<u8> =
            (0..DATA_BYTES).map(|i| ((i as u64 * 31 + round * 7) % 251) as u8).collect();
        iov.write_bytes(0, &data)?;
        let started = std::time::Instant::now();
        let pieces = DATA_BYTES.div_ceil(IO_BYTES);
        for piece in 0..pieces {
            let at = piece * IO_BYTES;
            let len = IO_BYTES.min(DATA_BYTES - at);
            ior.prep_io(&iov, false, at, fd, FILE_OFFSET + at as u64, len, piece as u64)?;
        }
        ior.submit()?;
        check_all(&mut ior, pieces, IO_BYTES, DATA_BYTES)?;
        let wrote = started.elapsed();
        let started = std::time::Instant::now();
        // Read it back into the second half of the buffer.
        let back = IOV_BYTES / 2;
        for piece in 0..pieces {
            let at = piece * IO_BYTES;
            let len = IO_BYTES.min(DATA_BYTES - at);
            ior.prep_io(&iov, true, back + at, fd, FILE_OFFSET + at as u64, len, piece as u64)?;
        }
        ior.submit()?;
        check_all(&mut ior, pieces, IO_BYTES, DATA_BYTES)?;
        let read_time = started.elapsed();
        let mib = DATA_BYTES as f64 / (1 << 20) as f64;
        println!(
            "round {round}: write {:.0} MiB/s, read {:.0} MiB/s ({} I/Os of {} KiB each way)",
            mib / wrote.as_secs_f64(),
            mib / read_time.as_secs_f64(),
            pieces,
            IO_BYTES >> 10
        );
        let mut read = vec![0u8; DATA_BYTES];
        iov.read_bytes(back, &mut read)?;
        if let Some(at) = read.iter().zip(&data).position(|(a, b)| a != b) {
            anyhow::bail!("byte {at} differs: read {} wrote {}", read[at], data[at]);
        }
        if !repeat {
            break;
        }
        println!("round {round} ok");
    }
    drop(ior);
    drop(iov);
    session.deregister_fd(fd)?;
    println!("usrbio round trip ok: {DATA_BYTES} bytes written and read back");
    Ok(())
}

/// Waits for `pieces` completions and checks each moved its whole piece.
fn check_all(
    ior: &mut r3fs_usrbio::Ior,
    pieces: usize,
    io: usize,
    total: usize,
) -> anyhow::Result<()> {
    let mut cqes = vec![Cqe::default(); pieces];
    let mut done = 0;
    while done < pieces {
        done += ior.wait(&mut cqes[done..], pieces - done, None)?;
    }
    for cqe in cqes {
        let piece = cqe.userdata as usize;
        let expected = io.min(total - piece * io) as i64;
        anyhow::ensure!(
            cqe.result == expected,
            "piece {piece}: result {} (expected {expected})",
            cqe.result
        );
    }
    Ok(())
}
