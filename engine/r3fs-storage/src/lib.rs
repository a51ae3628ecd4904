//! r3fs storage daemon (library half; the binary is `r3fs-storage`).
//!
//! The daemon runs one glommio executor ("shard") per configured core. Every storage target (a
//! directory on one disk) belongs to exactly one shard (`target % cores`), and everything about it
//! happens on that shard's thread: its chunk store (r3fs-chunk over O_DIRECT + io_uring), its CRAQ
//! replica (r3fs-craq, a sans-IO state machine this crate drives), its client connections and its
//! replication traffic. No lock is shared between shards. Each shard listens on its own
//! data-plane port; the addresses are published to mgmtd as `data/<shard>`, so a client reaches the
//! owning core directly ([`routing::shard_of`]). A tokio thread talks gRPC to mgmtd (register,
//! heartbeat with local target states, routing updates) and hands changes to the shards over
//! channels ([`control`]).
//!
//! Key types: [`config::StorageConfig`] (the TOML config, `validate()` lists every violation),
//! [`daemon::Daemon`] (start-up checks, threads, shutdown), [`shard`] (per-core event loop),
//! [`target::TargetStore`] (the craq storage contract over the chunk store), [`peer`] (the
//! frame of the chain protocol between shards), [`client::DataClient`] (a minimal tokio client of
//! the data plane, for tests, benchmarks and tools).
//!
//! Invariants:
//! - A target's state is touched only on its shard's thread.
//! - Every payload is CRC32C-checked when it arrives (frame checksum), again by the replica
//!   (update checksum) and by the chunk store on every read (unit checksums).
//! - Every queue and window is bounded: in-flight bytes and requests per connection, frames
//!   queued per peer, connections per shard, and the replica's own bounds.
//! - Expected outcomes (stale chain version, not committed, busy) travel as reply outcomes.
//!
//! Design: docs/design/storage-daemon.md.

pub mod buf;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod pace;
pub mod peer;
pub mod routing;
pub mod shard;
pub mod target;
