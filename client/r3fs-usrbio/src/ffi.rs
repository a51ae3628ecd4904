//! The C ABI (header: `include/r3fs_usrbio.h`, kept in step by a test). Every function returns 0
//! or a count on success and a negative errno on failure; none panics across the boundary.
//!
//! Sessions are process-wide and found from the `mount` argument (any path on the mount, or the
//! server's socket) or, for `r3fs_reg_fd`, from the fd's device.
#![allow(non_camel_case_types)]

use crate::app::{Ior, Iov, Session};
use crate::locate::Errno;
use crate::ring::Cqe;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// An iov (opaque to C).
#[derive(Debug)]
pub struct r3fs_iov {
    inner: Iov,
}

/// A ring (opaque to C).
#[derive(Debug)]
pub struct r3fs_ior {
    inner: Ior,
}

/// A completion: same layout as [`Cqe`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct r3fs_cqe {
    /// Bytes transferred, or a negative errno.
    pub result: i64,
    pub userdata: u64,
}

const _: () = assert!(std::mem::size_of::<r3fs_cqe>() == std::mem::size_of::<Cqe>());
const _: () = assert!(std::mem::align_of::<r3fs_cqe>() == std::mem::align_of::<Cqe>());
const _: () = assert!(std::mem::offset_of!(r3fs_cqe, result) == std::mem::offset_of!(Cqe, result));
const _: () =
    assert!(std::mem::offset_of!(r3fs_cqe, userdata) == std::mem::offset_of!(Cqe, userdata));

/// Runs `body`, turning errors and panics into negative errnos.
fn guard(body: impl FnOnce() -> Result<c_int, Errno>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(errno)) => errno.negative(),
        Err(_) => -libc::EIO,
    }
}

/// # Safety
/// `mount` must be null or a NUL-terminated string.
unsafe fn mount_path(mount: *const c_char) -> Result<std::path::PathBuf, Errno> {
    if mount.is_null() {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let mount = unsafe { CStr::from_ptr(mount) };
    Ok(std::path::PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
        mount.to_bytes(),
    )))
}

/// Creates a shared buffer of `size` bytes for I/O with the server of `mount`.
///
/// # Safety
/// `iov` must be valid for a pointer write; `mount` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_iovcreate(
    iov: *mut *mut r3fs_iov,
    mount: *const c_char,
    size: usize,
) -> c_int {
    guard(|| {
        if iov.is_null() {
            return Err(Errno(libc::EINVAL));
        }
        // SAFETY: the caller's contract.
        let session = Session::shared(unsafe { mount_path(mount) }?)?;
        let created = Box::new(r3fs_iov { inner: session.create_iov(size)? });
        // SAFETY: iov is valid for writes (checked non-null; the caller's contract).
        unsafe { *iov = Box::into_raw(created) };
        Ok(0)
    })
}

/// Destroys an iov (null is ignored).
///
/// # Safety
/// `iov` must come from `r3fs_iovcreate` and not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_iovdestroy(iov: *mut r3fs_iov) {
    if !iov.is_null() {
        // SAFETY: created by Box::into_raw in r3fs_iovcreate; ownership comes back here.
        let iov = unsafe { Box::from_raw(iov) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(iov)));
    }
}

/// The first byte of the iov's buffer.
///
/// # Safety
/// `iov` must be null or a live iov.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_iov_base(iov: *const r3fs_iov) -> *mut u8 {
    // SAFETY: the caller's contract.
    match unsafe { iov.as_ref() } {
        Some(iov) => iov.inner.as_ptr(),
        None => std::ptr::null_mut(),
    }
}

/// The iov's size in bytes.
///
/// # Safety
/// `iov` must be null or a live iov.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_iov_size(iov: *const r3fs_iov) -> usize {
    // SAFETY: the caller's contract.
    unsafe { iov.as_ref() }.map_or(0, |iov| iov.inner.len())
}

/// Creates a ring of `entries` (a power of two, at most 4096) with the server of `mount`.
///
/// # Safety
/// `ior` must be valid for a pointer write; `mount` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_iorcreate(
    ior: *mut *mut r3fs_ior,
    mount: *const c_char,
    entries: c_int,
) -> c_int {
    guard(|| {
        if ior.is_null() {
            return Err(Errno(libc::EINVAL));
        }
        let entries = u32::try_from(entries).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: the caller's contract.
        let session = Session::shared(unsafe { mount_path(mount) }?)?;
        let created = Box::new(r3fs_ior { inner: session.create_ior(entries)? });
        // SAFETY: ior is valid for writes (checked non-null; the caller's contract).
        unsafe { *ior = Box::into_raw(created) };
        Ok(0)
    })
}

/// Destroys a ring after its in-flight I/O has finished (null is ignored).
///
/// # Safety
/// `ior` must come from `r3fs_iorcreate` and not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_iordestroy(ior: *mut r3fs_ior) {
    if !ior.is_null() {
        // SAFETY: created by Box::into_raw in r3fs_iorcreate; ownership comes back here.
        let ior = unsafe { Box::from_raw(ior) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(ior)));
    }
}

/// Registers `fd` (a file opened on an r3fs mount) for ring I/O. `flags` must be 0.
#[unsafe(no_mangle)]
pub extern "C" fn r3fs_reg_fd(fd: c_int, flags: u64) -> c_int {
    guard(|| {
        if fd < 0 || flags != 0 {
            return Err(Errno(if fd < 0 { libc::EBADF } else { libc::EINVAL }));
        }
        // SAFETY: the fd is only borrowed for the duration of this call; fstat and sendmsg fail
        // with EBADF if it is not open.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        Session::shared_for_fd(fd)?.register_fd(fd)?;
        Ok(0)
    })
}

/// Deregisters `fd`; its in-flight I/O finishes first.
#[unsafe(no_mangle)]
pub extern "C" fn r3fs_dereg_fd(fd: c_int) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(Errno(libc::EBADF));
        }
        // SAFETY: borrowed for this call only (fstat fails with EBADF if it is not open).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Session::shared_for_fd(borrowed)?.deregister_fd(fd)?;
        Ok(0)
    })
}

/// Prepares one I/O of `len` bytes between the buffer at `ptr` (inside `iov`) and registered
/// file `fd` at offset `off`. Returns the I/O's position in the batch.
///
/// # Safety
/// `ior` and `iov` must be null or live; `ptr` is only compared with the iov's bounds.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_prep_io(
    ior: *mut r3fs_ior,
    iov: *const r3fs_iov,
    read: bool,
    ptr: *mut c_void,
    fd: c_int,
    off: u64,
    len: u64,
    userdata: u64,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let (Some(ior), Some(iov)) = (unsafe { ior.as_mut() }, unsafe { iov.as_ref() }) else {
            return Err(Errno(libc::EINVAL));
        };
        let base = iov.inner.as_ptr() as usize;
        let buf_offset = (ptr as usize).checked_sub(base).ok_or(Errno(libc::EFAULT))?;
        let len = usize::try_from(len).map_err(|_| Errno(libc::EINVAL))?;
        let index = ior.inner.prep_io(&iov.inner, read, buf_offset, fd, off, len, userdata)?;
        Ok(index as c_int)
    })
}

/// Prepares an fsync of registered file `fd` (see `Ior::prep_fsync`). Returns its position in
/// the batch.
///
/// # Safety
/// `ior` must be null or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_prep_fsync(ior: *mut r3fs_ior, fd: c_int, userdata: u64) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let ior = unsafe { ior.as_mut() }.ok_or(Errno(libc::EINVAL))?;
        if fd < 0 {
            return Err(Errno(libc::EBADF));
        }
        Ok(ior.inner.prep_fsync(fd, userdata)? as c_int)
    })
}

/// Submits every prepared I/O; returns how many.
///
/// # Safety
/// `ior` must be null or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_submit_ios(ior: *mut r3fs_ior) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let ior = unsafe { ior.as_mut() }.ok_or(Errno(libc::EINVAL))?;
        Ok(ior.inner.submit()? as c_int)
    })
}

/// Waits for at least `min_results` completions (clamped to those in flight and to `cqec`) or
/// `timeout_ms` (negative: no limit), stores up to `cqec` in `cqes`, and returns how many.
///
/// # Safety
/// `ior` must be null or live; `cqes` valid for `cqec` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn r3fs_wait_for_ios(
    ior: *mut r3fs_ior,
    cqes: *mut r3fs_cqe,
    cqec: c_int,
    min_results: c_int,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let ior = unsafe { ior.as_mut() }.ok_or(Errno(libc::EINVAL))?;
        let count = usize::try_from(cqec).map_err(|_| Errno(libc::EINVAL))?;
        if cqes.is_null() || count == 0 {
            return Err(Errno(libc::EINVAL));
        }
        let min = usize::try_from(min_results).map_err(|_| Errno(libc::EINVAL))?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        // SAFETY: cqes is valid for `count` writes (the caller's contract), and r3fs_cqe has Cqe's
        // layout (both repr(C) { i64, u64 }).
        let out = unsafe { std::slice::from_raw_parts_mut(cqes as *mut Cqe, count) };
        Ok(ior.inner.wait(out, min, timeout)? as c_int)
    })
}
