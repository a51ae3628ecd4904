//! How an application finds the ring server of a mount, and the errno-style error both sides
//! speak.
//!
//! The FUSE daemon serving a mount listens on `<dir>/usrbio-<st_dev in hex>.sock`, where `<dir>`
//! is `$R3FS_USRBIO_DIR` or `/run/r3fs` and `st_dev` is the device number the kernel gives the
//! mount (what `stat` reports for every file on it). So an application needs no configuration: any
//! path on the mount, or any open fd of a file on it, names the server. A locator that is itself
//! a Unix socket is used as is.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Environment variable naming the socket directory.
pub const SOCKET_DIR_ENV: &str = "R3FS_USRBIO_DIR";
/// Socket directory when the variable is unset.
pub const SOCKET_DIR_DEFAULT: &str = "/run/r3fs";

/// The socket directory in effect.
pub fn socket_dir() -> PathBuf {
    std::env::var_os(SOCKET_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SOCKET_DIR_DEFAULT))
}

/// The server socket of the mount whose files have device number `dev`.
pub fn socket_path_for_dev(dev: u64) -> PathBuf {
    socket_dir().join(format!("usrbio-{dev:x}.sock"))
}

/// The server socket for `locator`: the locator itself if it is a socket, else the socket of the
/// mount holding it.
pub fn socket_path_for(locator: &Path) -> io::Result<PathBuf> {
    let metadata = std::fs::metadata(locator)?;
    if metadata.file_type().is_socket() {
        return Ok(locator.to_path_buf());
    }
    Ok(socket_path_for_dev(std::os::unix::fs::MetadataExt::dev(&metadata)))
}

/// A POSIX errno: what every fallible call of this crate returns (negated in the C ABI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The C ABI's return value: the negative errno.
    pub fn negative(self) -> i32 {
        -self.0.abs()
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", io::Error::from_raw_os_error(self.0), self.0)
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(error: io::Error) -> Self {
        Errno(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for io::Error {
    fn from(errno: Errno) -> Self {
        io::Error::from_raw_os_error(errno.0)
    }
}
