//! r3fs's RDMA data-plane transport.
//!
//! With the `rdma` feature, [`rdma`] wraps ibverbs (through `rdma-sys`) into the few safe types the
//! data plane needs: an opened [`rdma::Device`], registered [`rdma::MemoryRegion`]s, and a reliable
//! connected [`rdma::Link`] that moves bytes with one-sided RDMA READ and WRITE. The TCP connection
//! of the data plane stays the control channel: it carries the link handshake ([`rdma::Endpoint`])
//! and every request and reply; only payloads move over RDMA, described by a [`rdma::RemoteBuf`].
//! See docs/design/rdma.md.
//!
//! Without the feature the crate is empty, so nothing links against libibverbs.

#[cfg(feature = "rdma")]
pub mod rdma;
