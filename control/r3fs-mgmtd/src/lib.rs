//! r3fs-mgmtd: the cluster manager.
//!
//! Several instances share one transactional KV (`Arc<dyn r3fs_kv::Kv>`); exactly one is primary
//! through a fenced lease ([`lease`]). The primary keeps membership (register, heartbeat, failure
//! detection), computes chain states ([`chain_state`], pure code), publishes versioned routing info
//! (fetch, long-poll, stream), and stores users/tokens and per-node-type configs. Followers answer
//! NotPrimary with the primary's address. Design: docs/design/mgmtd.md and
//! docs/design/chain-state.md.
//!
//! Key types: [`core::Mgmtd`] (one instance's logic, no gRPC), [`server::Server`] (gRPC and
//! timers), [`service::MgmtdService`] (the r3fs.mgmtd.Mgmtd and r3fs.admin.Admin services),
//! [`chain_state::ChainState`], [`config::MgmtdConfig`].
//!
//! Invariants:
//! - Every write is one KV transaction (through `r3fs_kv::retry::run`) whose first step is the
//!   lease fence ([`store::WriteCtx::check`]); a deposed primary changes nothing.
//! - Chain versions and the routing version only grow; any change of routing-relevant state bumps
//!   the routing version in the same transaction.
//! - Tokens are stored only as SHA-256 hashes.
//! - [`chain_state`] and [`lease::decide`] do no IO, so a simulator can drive them.

pub mod auth;
pub mod chain_state;
pub mod clock;
pub mod config;
pub mod convert;
pub mod core;
pub mod error;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod records;
pub mod server;
pub mod service;
pub mod store;

pub use crate::core::{Mgmtd, MgmtdOptions, Role};
pub use config::MgmtdConfig;
pub use error::MgmtdError;
pub use server::Server;
