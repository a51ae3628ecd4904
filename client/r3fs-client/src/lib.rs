//! r3fs client library (tokio): everything a process needs to read and write r3fs files, with or
//! without a mount.
//!
//! Key types:
//! - [`RoutingCache`]: mgmtd's routing info (chains, chain versions, target states, data-plane
//!   addresses, chain tables), watched in the background and refreshed when a storage target
//!   says the client's chain version is stale. Fed by a [`RoutingSource`] ([`MgmtdClient`], which
//!   follows the primary mgmtd).
//! - [`StorageClient`]: the data plane. A pool of pipelined r3fs-wire connections per storage
//!   address; chunk writes to the chain head, batch reads spread over serving replicas, last-chunk
//!   queries, truncation and chunk removal; retries with backoff and bounds; in-flight byte
//!   windows per connection and overall. The meta service uses it without a mount.
//! - [`MetaClient`]: the meta service's gRPC API with the token, deadlines and failover.
//! - [`FileClient`] / [`File`]: `open`/`create`/`read_at`/`write_at`/`fsync`/`truncate`/`len`/
//!   `close` over both; writers report their written length to meta periodically and on
//!   fsync/close.
//! - [`FileMap`] and [`plan`]: the pure mapping from file ranges to chunks and chains.
//!
//! Invariants:
//! - Writes go to the head, with the chain version the client saw; reads go to serving replicas.
//! - Every byte written carries the CRC32C the client computed once; every byte read is checked
//!   against the replica's CRC32C before it reaches the caller.
//! - A write holds one write channel for all its attempts, so retries reuse its (client id,
//!   sequence) and are applied at most once; one channel never has two updates in flight.
//! - Every wait is bounded: retries (attempts and elapsed time), requests (timeouts), in-flight
//!   bytes (semaphores), connections per address, batch sizes.
//! - Holes read as zeros.
//!
//! Design note: docs/design/client.md.

pub mod config;
mod conn;
pub mod error;
pub mod file;
pub mod meta;
pub mod plan;
pub mod retry;
pub mod routing;
pub mod storage;

pub use config::ClientConfig;
pub use error::{ClientError, ClientResult};
pub use file::{File, FileClient, OpenOptions};
pub use meta::MetaClient;
pub use plan::FileMap;
pub use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
pub use routing::{RoutingCache, RoutingSnapshot, RoutingSource};
pub use storage::{ChunkRead, LastChunk, ReadData, StorageClient, StorageStats, UpdateDone};
