//! The gRPC face of [`MetaStore`] (`r3fs.meta.Meta`): resolves the caller's token to a user
//! through a [`UserResolver`], converts messages, and maps errors with
//! [`r3fs_rpc::status_from_error`] (the only ErrorCode -> gRPC mapping).

use crate::error::MetaError;
use crate::perm::{TimeSet, User};
use crate::schema::{Inode, InodeData, InodeKind};
use crate::store::{
    CreateArgs, LengthOutcome, LengthReport, MetaStore, OpenFlags, Opened, RemoveKind, SetAttr,
};
use crate::user::UserResolver;
use r3fs_rpc::meta::meta_server::{Meta, MetaServer};
use r3fs_rpc::meta::{self as pb};
use r3fs_rpc::mgmtd_client::token_from_metadata;
use r3fs_rpc::status_from_error;
use r3fs_types::{
    ChainSelection, ChainTableId, ChainTableVersion, ClientId, ErrorCode, InodeId, Layout,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug)]
pub struct MetaService {
    store: Arc<MetaStore>,
    users: Arc<dyn UserResolver>,
}

type Reply<T> = Result<Response<T>, Status>;

/// Maps an operation's error to its status. Expected outcomes (ENOENT, EEXIST, ...) are the
/// caller's business; failures of the service itself are logged here, where they are handled.
fn status(error: MetaError) -> Status {
    crate::metrics::error(error.code);
    if matches!(error.code, ErrorCode::Internal | ErrorCode::KvIo) {
        tracing::error!(code = %error.code, message = %error.message, "meta operation failed");
    }
    status_from_error(error.code, error.message)
}

fn invalid(message: impl Into<String>) -> Status {
    status_from_error(ErrorCode::InvalidArgument, message)
}

impl MetaService {
    pub fn new(store: Arc<MetaStore>, users: Arc<dyn UserResolver>) -> Self {
        Self { store, users }
    }

    pub fn into_server(self) -> MetaServer<Self> {
        MetaServer::new(self)
    }

    /// The verified caller: the token in the metadata, resolved by the resolver.
    async fn user<T>(&self, request: &Request<T>) -> Result<User, Status> {
        let token = token_from_metadata(request.metadata()).ok_or_else(|| {
            status_from_error(ErrorCode::Unauthenticated, "no `authorization: Bearer` token")
        })?;
        self.users.resolve(token).await.map_err(status)
    }
}

// ---- conversions ------------------------------------------------------------------------

fn inode_id(id: u64) -> InodeId {
    if id == 0 { InodeId::ROOT } else { InodeId(id) }
}

fn path_at(target: Option<pb::PathAt>) -> (InodeId, String) {
    let target = target.unwrap_or_default();
    (inode_id(target.at), target.path)
}

fn kind_to_pb(kind: InodeKind) -> pb::InodeKind {
    match kind {
        InodeKind::File => pb::InodeKind::File,
        InodeKind::Directory => pb::InodeKind::Directory,
        InodeKind::Symlink => pb::InodeKind::Symlink,
    }
}

pub fn layout_to_pb(layout: &Layout) -> pb::Layout {
    let chains = match &layout.chains {
        ChainSelection::ShuffleV1 { seed } => pb::layout::Chains::ShuffleV1Seed(*seed),
        ChainSelection::List(positions) => {
            pb::layout::Chains::ChainList(pb::ChainList { positions: positions.clone() })
        }
    };
    pb::Layout {
        chain_table_id: layout.chain_table_id.0,
        chain_table_version: layout.chain_table_version.0,
        chunk_size: layout.chunk_size,
        stripe_size: layout.stripe_size,
        chains: Some(chains),
    }
}

pub fn layout_from_pb(layout: pb::Layout) -> Result<Layout, Status> {
    let chains = match layout.chains {
        Some(pb::layout::Chains::ShuffleV1Seed(seed)) => ChainSelection::ShuffleV1 { seed },
        Some(pb::layout::Chains::ChainList(list)) => ChainSelection::List(list.positions),
        None => return Err(invalid("layout without a chain selection")),
    };
    Ok(Layout {
        chain_table_id: ChainTableId(layout.chain_table_id),
        chain_table_version: ChainTableVersion(layout.chain_table_version),
        chunk_size: layout.chunk_size,
        stripe_size: layout.stripe_size,
        chains,
    })
}

pub fn inode_to_pb(inode: &Inode) -> pb::Inode {
    let mut out = pb::Inode {
        id: inode.id.0,
        kind: kind_to_pb(inode.kind()) as i32,
        mode: inode.st_mode(),
        uid: inode.attr.uid,
        gid: inode.attr.gid,
        nlink: inode.attr.nlink,
        atime_ns: inode.attr.atime_ns,
        mtime_ns: inode.attr.mtime_ns,
        ctime_ns: inode.attr.ctime_ns,
        size: inode.size(),
        layout: inode.layout().map(layout_to_pb),
        ..Default::default()
    };
    match &inode.data {
        InodeData::File { truncate_version, .. } => out.truncate_version = *truncate_version,
        InodeData::Directory { parent, .. } => out.parent = parent.0,
        InodeData::Symlink { target } => out.symlink_target = target.clone(),
    }
    out
}

fn inode_reply(inode: &Inode) -> Reply<pb::InodeResponse> {
    Ok(Response::new(pb::InodeResponse { inode: Some(inode_to_pb(inode)) }))
}

fn open_reply(opened: &Opened) -> Reply<pb::OpenResponse> {
    Ok(Response::new(pb::OpenResponse {
        inode: Some(inode_to_pb(&opened.inode)),
        created: opened.created,
        session: opened.session.unwrap_or(0),
    }))
}

fn length_reply(outcome: &LengthOutcome) -> Reply<pb::LengthResponse> {
    Ok(Response::new(pb::LengthResponse {
        inode: Some(inode_to_pb(&outcome.inode)),
        adopted: outcome.adopted,
        session_live: outcome.session_live,
    }))
}

fn flags(flags: Option<pb::OpenFlags>) -> OpenFlags {
    let flags = flags.unwrap_or_default();
    OpenFlags { read: flags.read, write: flags.write, truncate: flags.truncate }
}

fn time_set(time: Option<pb::TimeSet>) -> Result<Option<TimeSet>, Status> {
    match time.and_then(|t| t.how) {
        None => Ok(None),
        Some(pb::time_set::How::Now(true)) => Ok(Some(TimeSet::Now)),
        Some(pb::time_set::How::Now(false)) => Err(invalid("TimeSet.now must be true when set")),
        Some(pb::time_set::How::AtNs(ns)) => Ok(Some(TimeSet::At(ns))),
    }
}

fn session(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

fn length_args(request: &pb::LengthRequest) -> (InodeId, Option<u64>, Option<LengthReport>) {
    let report = request.has_report.then_some(LengthReport {
        length: request.length,
        truncate_version: request.truncate_version,
    });
    (InodeId(request.inode), session(request.session), report)
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("lookup");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        inode_reply(&self.store.lookup(&user, inode_id(r.parent), &r.name).await.map_err(status)?)
    }

    async fn stat(&self, request: Request<pb::StatRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("stat");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.target);
        inode_reply(&self.store.stat(&user, at, &path, r.follow).await.map_err(status)?)
    }

    async fn batch_stat(
        &self,
        request: Request<pb::BatchStatRequest>,
    ) -> Reply<pb::BatchStatResponse> {
        let _op = crate::metrics::op("batch_stat");
        self.user(&request).await?;
        let ids: Vec<InodeId> = request.into_inner().inodes.into_iter().map(InodeId).collect();
        let inodes = self.store.batch_stat(&ids).await.map_err(status)?;
        let inodes = inodes
            .iter()
            .map(|inode| pb::InodeResponse { inode: inode.as_ref().map(inode_to_pb) })
            .collect();
        Ok(Response::new(pb::BatchStatResponse { inodes }))
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Reply<pb::OpenResponse> {
        let _op = crate::metrics::op("create");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.target);
        let args = CreateArgs {
            mode: r.mode,
            exclusive: r.exclusive,
            flags: flags(r.flags),
            client: ClientId(r.client_id),
        };
        open_reply(&self.store.create(&user, at, &path, &args).await.map_err(status)?)
    }

    async fn open(&self, request: Request<pb::OpenRequest>) -> Reply<pb::OpenResponse> {
        let _op = crate::metrics::op("open");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.target);
        let opened = self
            .store
            .open(&user, at, &path, flags(r.flags), ClientId(r.client_id))
            .await
            .map_err(status)?;
        open_reply(&opened)
    }

    async fn mkdir(&self, request: Request<pb::MkdirRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("mkdir");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.target);
        let inode = if r.recursive {
            self.store.mkdirs(&user, at, &path, r.mode).await
        } else {
            self.store.mkdir(&user, at, &path, r.mode).await
        };
        inode_reply(&inode.map_err(status)?)
    }

    async fn symlink(&self, request: Request<pb::SymlinkRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("symlink");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.target);
        inode_reply(&self.store.symlink(&user, at, &path, &r.link_target).await.map_err(status)?)
    }

    async fn read_link(
        &self,
        request: Request<pb::ReadLinkRequest>,
    ) -> Reply<pb::ReadLinkResponse> {
        let _op = crate::metrics::op("read_link");
        let user = self.user(&request).await?;
        let (at, path) = path_at(request.into_inner().target);
        let link_target = self.store.readlink(&user, at, &path).await.map_err(status)?;
        Ok(Response::new(pb::ReadLinkResponse { link_target }))
    }

    async fn link(&self, request: Request<pb::LinkRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("link");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (old_at, old_path) = path_at(r.old_path);
        let (new_at, new_path) = path_at(r.new_path);
        let inode =
            self.store.link(&user, old_at, &old_path, new_at, &new_path).await.map_err(status)?;
        inode_reply(&inode)
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Reply<pb::RemoveResponse> {
        let _op = crate::metrics::op("remove");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let kind = match pb::RemoveKind::try_from(r.kind) {
            Ok(pb::RemoveKind::File) => RemoveKind::File,
            Ok(pb::RemoveKind::EmptyDirectory) => RemoveKind::EmptyDir,
            Ok(pb::RemoveKind::Tree) => RemoveKind::Tree,
            _ => return Err(invalid(format!("unknown remove kind {}", r.kind))),
        };
        let (at, path) = path_at(r.target);
        self.store.remove(&user, at, &path, kind).await.map_err(status)?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn rename(&self, request: Request<pb::RenameRequest>) -> Reply<pb::RenameResponse> {
        let _op = crate::metrics::op("rename");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (src_at, src_path) = path_at(r.source);
        let (dst_at, dst_path) = path_at(r.destination);
        self.store
            .rename(&user, src_at, &src_path, dst_at, &dst_path, r.no_replace)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RenameResponse {}))
    }

    async fn read_dir(&self, request: Request<pb::ReadDirRequest>) -> Reply<pb::ReadDirResponse> {
        let _op = crate::metrics::op("read_dir");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.directory);
        let after = (!r.after.is_empty()).then_some(r.after.as_str());
        let limit = if r.limit == 0 { usize::MAX } else { r.limit as usize };
        let page = self.store.readdir(&user, at, &path, after, limit).await.map_err(status)?;
        let entries = page
            .entries
            .into_iter()
            .map(|e| pb::DirEntry {
                name: e.name,
                inode: e.inode.0,
                kind: kind_to_pb(e.kind) as i32,
            })
            .collect();
        Ok(Response::new(pb::ReadDirResponse { entries, more: page.more }))
    }

    async fn set_attr(&self, request: Request<pb::SetAttrRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("set_attr");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.target);
        let changes = SetAttr {
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            atime: time_set(r.atime)?,
            mtime: time_set(r.mtime)?,
            length: r.length,
            session: session(r.session),
        };
        inode_reply(
            &self.store.setattr(&user, at, &path, r.follow, &changes).await.map_err(status)?,
        )
    }

    async fn report_length(
        &self,
        request: Request<pb::LengthRequest>,
    ) -> Reply<pb::LengthResponse> {
        let _op = crate::metrics::op("report_length");
        let user = self.user(&request).await?;
        let (id, session, report) = length_args(request.get_ref());
        length_reply(&self.store.report_length(&user, id, session, report).await.map_err(status)?)
    }

    async fn fsync(&self, request: Request<pb::LengthRequest>) -> Reply<pb::LengthResponse> {
        let _op = crate::metrics::op("fsync");
        let user = self.user(&request).await?;
        let (id, session, report) = length_args(request.get_ref());
        length_reply(&self.store.fsync(&user, id, session, report).await.map_err(status)?)
    }

    async fn close(&self, request: Request<pb::LengthRequest>) -> Reply<pb::LengthResponse> {
        let _op = crate::metrics::op("close");
        let user = self.user(&request).await?;
        let (id, session, report) = length_args(request.get_ref());
        let session = session.ok_or_else(|| invalid("close needs the write session"))?;
        length_reply(&self.store.close(&user, id, session, report).await.map_err(status)?)
    }

    async fn stat_fs(&self, request: Request<pb::StatFsRequest>) -> Reply<pb::StatFsResponse> {
        let _op = crate::metrics::op("stat_fs");
        self.user(&request).await?;
        let statfs = self.store.statfs().await.map_err(status)?;
        let capacity = statfs.capacity.unwrap_or_default();
        Ok(Response::new(pb::StatFsResponse {
            capacity_known: statfs.capacity.is_some(),
            total_bytes: capacity.total_bytes,
            used_bytes: capacity.used_bytes,
            inodes: statfs.inodes,
            name_length_max: statfs.name_length_max,
        }))
    }

    async fn real_path(
        &self,
        request: Request<pb::RealPathRequest>,
    ) -> Reply<pb::RealPathResponse> {
        let _op = crate::metrics::op("real_path");
        self.user(&request).await?;
        let id = inode_id(request.into_inner().inode);
        let path = self.store.real_path(id).await.map_err(status)?;
        Ok(Response::new(pb::RealPathResponse { path }))
    }

    async fn set_layout(&self, request: Request<pb::SetLayoutRequest>) -> Reply<pb::InodeResponse> {
        let _op = crate::metrics::op("set_layout");
        let user = self.user(&request).await?;
        let r = request.into_inner();
        let (at, path) = path_at(r.directory);
        let layout = layout_from_pb(r.layout.ok_or_else(|| invalid("no layout"))?)?;
        inode_reply(&self.store.set_layout(&user, at, &path, &layout).await.map_err(status)?)
    }
}
