//! r3fs metadata service: a POSIX namespace (inodes, directory entries, symlinks, hard links,
//! permissions, write sessions, file lengths, deletion) over the transactional KV
//! (`r3fs_kv::Kv`). Design note: `docs/design/metadata.md`.
//!
//! Key types:
//! - [`store::MetaStore`]: every operation (lookup, stat, create, mkdir, rename, readdir,
//!   setattr, open/close, fsync, ...), each one KV transaction with conflict retry.
//! - [`service::MetaService`]: the gRPC face (`r3fs.meta.Meta`), which resolves the caller's
//!   token with a [`user::UserResolver`] ([`mgmtd::MgmtdUserResolver`] behind
//!   [`user::CachedUserResolver`], or [`user::StaticUserResolver`]).
//! - [`storage::ChunkStorage`]: what meta needs from storage (last chunk per chain, truncation,
//!   removal); [`cluster::ClusterInfo`]: capacity and chain tables from mgmtd's routing info.
//! - [`fsck::fsck`]: checks every invariant below over a whole store.
//! - [`keys`] (the one registry of key prefixes) and [`schema`] (records and their codecs).
//!
//! Invariants:
//! - The service is stateless: every fact lives in the KV, so any number of instances may serve
//!   one file system (with FoundationDB). The only process-local state is a block of free inode
//!   ids and the collector's scan cursors, both safe to lose.
//! - Every entry names an existing inode; a file's nlink equals its entries; a file with no
//!   entries is queued for collection in the same transaction that removed its last entry;
//!   directories form a tree rooted at [`r3fs_types::InodeId::ROOT`] (or at a detached tree
//!   being collected).
//! - The user of a request comes from a verified token, never from the request body.
//! - Meta is off the data path: no chunk bytes pass through it.

#[macro_use]
pub mod txn;
pub mod alloc;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fsck;
pub mod gc;
pub mod keys;
pub mod metrics;
pub mod mgmtd;
pub mod names;
pub mod perm;
pub mod resolve;
pub mod schema;
pub mod service;
pub mod storage;
pub mod store;
pub mod user;

/// Compile-time check that the operations' futures are `Send` (tonic handlers must be; async
/// closures would not be, which is why [`transact!`] is a macro).
#[cfg(test)]
mod send_probe {
    fn assert_send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    fn probe(
        store: &crate::store::MetaStore,
        user: &crate::perm::User,
        args: &crate::store::CreateArgs,
    ) {
        let f = store.create(user, r3fs_types::InodeId::ROOT, "x", args);
        assert_send(&f);
        let g = store.rename(
            user,
            r3fs_types::InodeId::ROOT,
            "x",
            r3fs_types::InodeId::ROOT,
            "y",
            false,
        );
        assert_send(&g);
        let h = store.gc_pass();
        assert_send(&h);
        let i = store.readdir(user, r3fs_types::InodeId::ROOT, "", None, 5);
        assert_send(&i);
    }
}

#[cfg(test)]
mod tests;
