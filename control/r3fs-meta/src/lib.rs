//! r3fs metadata service (work in progress).
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
pub mod mgmtd;
pub mod names;
pub mod perm;
pub mod resolve;
pub mod schema;
pub mod service;
pub mod storage;
pub mod store;
pub mod user;

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
