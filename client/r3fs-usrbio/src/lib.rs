//! r3fs USRBIO: zero-copy I/O rings between an application and the FUSE daemon of an r3fs mount,
//! in the manner of 3FS's USRBIO.
//!
//! The application shares two kinds of memory regions with the daemon: **iovs** (data buffers)
//! and **iors** (a submission and a completion ring). It registers files it opened on the mount,
//! prepares many reads and writes, submits them with one eventfd signal, and reaps completions.
//! The daemon's [`RingServer`] performs each I/O with r3fs-client's file API directly from or
//! into the shared buffer, so data crosses no socket or pipe between the two processes.
//!
//! Key types:
//! - application side ([`app`]): [`Session`] (one connection per mount per process), [`Iov`],
//!   [`Ior`] with `prep_io` / `submit` / `wait`; the C ABI in [`ffi`] (header
//!   `include/r3fs_usrbio.h`).
//! - serving side ([`server`]): [`RingServer`], [`RingServerConfig`], [`FileResolver`] with
//!   [`MountResolver`] (a FUSE mount) and [`InodeMap`] (no mount: tests and tools).
//! - shared formats: [`ring`] (the ring memory layout and its SPSC operations), [`proto`] (the
//!   control messages on the Unix socket), [`shm`] (sealed memfd regions), [`locate`] (where a
//!   mount's server listens).
//!
//! Invariants:
//! - The application never blocks the server: every ring index is checked, every entry is copied
//!   once and validated, completions only go into CQ slots known to be free, and eventfds are
//!   nonblocking. Bad requests complete with a negative errno.
//! - Shared regions are sealed memfds, so an application cannot shrink one under the server.
//! - Files are named by fds passed over the socket, never by numbers the application claims: the
//!   kernel checked the right to open them, and their access mode bounds the I/O allowed.
//! - A closed or dead application's session ends: its rings finish in-flight I/O and stop, its
//!   files are closed.
//!
//! Design note: docs/design/usrbio.md; API reference: docs/usrbio.md.

pub mod app;
pub mod ffi;
pub mod locate;
pub mod proto;
pub mod ring;
pub mod server;
pub mod shm;

pub use app::{Ior, Iov, Session};
pub use locate::{Errno, socket_path_for, socket_path_for_dev};
pub use ring::Cqe;
pub use server::{
    FileResolver, InodeMap, MountResolver, RingServer, RingServerConfig, ServerStats,
};
