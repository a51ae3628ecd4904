//! r3fs shared vocabulary: the types every service and the client agree on.
//!
//! - [`ids`]: newtype ids ([`NodeId`], [`TargetId`], [`ChainId`], [`ChainVersion`], [`InodeId`],
//!   the 16-byte [`ChunkId`] that sorts by inode then chunk index, ...).
//! - [`layout`]: a file's [`Layout`] and the versioned, specified chain selection that maps a
//!   chunk index to a position in a chain table.
//! - [`state`]: target public/local states and node kinds/statuses.
//! - [`error`]: stable [`ErrorCode`]s with their POSIX errno.
//! - [`data_plane`]: the `data/<shard>` address rule (which published address serves a target).
//!
//! Invariants: this crate does no IO and depends on nothing else in the workspace. Every encoding
//! defined here (ChunkId bytes, chain selection) is part of the on-disk / on-wire format: changing
//! one means a new version, never an edit.

#![cfg_attr(test, allow(clippy::unwrap_used))] // a failed unwrap is a failed test

pub mod data_plane;
pub mod error;
pub mod ids;
pub mod layout;
pub mod state;

pub use error::ErrorCode;
pub use ids::{
    ChainId, ChainTableId, ChainTableVersion, ChainVersion, ChunkId, ChunkVersion, ClientId,
    InodeId, NodeId, RequestId, RoutingVersion, TargetId,
};
pub use layout::{ChainSelection, Layout, LayoutError};
pub use state::{LocalTargetState, NodeStatus, NodeType, PublicTargetState};
