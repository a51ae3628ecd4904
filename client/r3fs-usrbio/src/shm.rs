//! Shared memory regions: sealed memfds mapped by both processes.
//!
//! The application creates each region (iov or ring) with `memfd_create` (tmpfs-backed shared
//! memory, the same pages /dev/shm would hold, but anonymous) and seals it against shrinking and
//! growing before handing the fd to the server. The server refuses a region without those seals:
//! otherwise the application could truncate the file under the server's mapping and the server's
//! next access would die of SIGBUS. Anonymous regions also leave nothing behind when the
//! application is killed. Regions are never mlocked (RLIMIT_MEMLOCK is small and nothing here
//! needs pinned pages: data moves by copies into and out of socket buffers).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Seals every region must carry.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// One mapping of a shared region (unmapped on drop).
#[derive(Debug)]
pub struct Mapping {
    base: *mut u8,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; who may touch which bytes when is the ring
// protocol's business, and the pointer stays valid until drop.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a zeroed, sealed region of `len` bytes (`name` shows in /proc/<pid>/fd).
    pub fn create(name: &str, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let name =
            std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid C string; the flags are constants.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: fd is a memfd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a memfd created with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Mapping::map(fd, len)
    }

    /// Maps a region received from the application after checking its seals and size.
    pub fn from_received(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: fcntl on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & REQUIRED_SEALS != REQUIRED_SEALS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shared region is not a memfd sealed against shrinking and growing",
            ));
        }
        let stat = fstat(fd.as_fd())?;
        if len == 0 || u64::try_from(stat.st_size).ok() != Some(len as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "shared region size mismatch"));
        }
        Mapping::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of a file of at least `len` bytes (sealed: it stays so).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { base: base as *mut u8, len, fd })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len came from a successful mmap and nobody uses the mapping any more
        // (users hold the Mapping alive while they touch it).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// fstat of an fd.
pub fn fstat(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: stat points to writable memory of the right type.
    if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { stat.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_bytes_and_unsealed_or_resized_regions_are_refused() {
        let a = Mapping::create("r3fs-test", 8192).expect("create");
        let fd = a.fd().try_clone_to_owned().expect("dup");
        let b = Mapping::from_received(fd, 8192).expect("map the received region");
        // SAFETY: both mappings are 8192 bytes and alive.
        unsafe {
            *a.as_ptr().add(5000) = 42;
            assert_eq!(*b.as_ptr().add(5000), 42);
        }
        // The seals hold: the region cannot shrink under the server.
        // SAFETY: ftruncate on a valid fd.
        assert_ne!(unsafe { libc::ftruncate(a.fd().as_raw_fd(), 10) }, 0);
        let fd = a.fd().try_clone_to_owned().expect("dup");
        assert!(Mapping::from_received(fd, 4096).is_err(), "wrong size refused");

        // A plain tmpfs file (no seals) is refused.
        let file = tempfile::tempfile_in("/dev/shm").expect("a /dev/shm file");
        file.set_len(8192).expect("size it");
        assert!(Mapping::from_received(OwnedFd::from(file), 8192).is_err());
    }
}
