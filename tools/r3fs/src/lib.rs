//! The `r3fs` admin command as a library: the pieces the binary and its tests share.
//!
//! - [`placement`]: deterministic chain-table placement ([`placement::generate`]) and its
//!   recovery-traffic [`placement::BalanceReport`]; sans-IO.
//! - [`files`]: the chains / chain-table / targets file formats `gen-chain-table` writes and the
//!   upload commands read (3FS-compatible CSV).
//! - [`output`]: aligned human tables and UTC timestamps.
//!
//! Invariants: a [`placement::Placement`] returned by `generate` has passed
//! [`placement::Placement::verify`] (distinct nodes per chain, every target used exactly once);
//! nothing here performs IO, so every rule is unit- and property-tested without a cluster.

pub mod files;
pub mod output;
pub mod placement;
