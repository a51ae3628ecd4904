//! The file API: [`FileClient`] opens and creates files through meta and moves their bytes with
//! the [`StorageClient`]; a [`File`] is one open file.
//!
//! Length protocol (meta's side: docs/design/metadata.md):
//! - A writer tracks the end of what it wrote (`written_end`) under the truncate version it saw.
//!   It reports it to meta with `ReportLength` at most every `length_report_interval_ms` (a
//!   background renewer also keeps the write session alive while the file is idle), and always
//!   with `Fsync` and `Close`, which also settle the exact length from storage.
//! - Reads are clipped to the larger of meta's length and `written_end`; a read reaching past
//!   that asks meta for the current length first (another client may have appended). Inside the
//!   length, holes read as zeros.
//! - `truncate` goes through meta (which cuts storage first) and starts a new truncate version:
//!   reports made under the old one are ignored by meta.
//!
//! Dropping a [`File`] without [`File::close`] stops its renewer; its write session then expires
//! in meta, which settles the length from storage.

use crate::config::ClientConfig;
use crate::error::{ClientError, ClientResult};
use crate::meta::{MetaClient, layout_from_pb, path_at};
use crate::plan::{FileMap, clip_to_length, range_end};
use crate::routing::RoutingCache;
use crate::storage::StorageClient;
use r3fs_rpc::meta as pb;
use r3fs_rpc::mgmtd_client::{MgmtdClient, MgmtdClientConfig};
use r3fs_types::{ErrorCode, InodeId};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to open a file (POSIX open flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    /// O_CREAT.
    pub create: bool,
    /// O_EXCL (with `create`).
    pub exclusive: bool,
    /// O_TRUNC.
    pub truncate: bool,
    /// Permission bits of a created file (umask already applied).
    pub mode: u32,
}

impl OpenOptions {
    pub fn read_only() -> Self {
        Self {
            read: true,
            write: false,
            create: false,
            exclusive: false,
            truncate: false,
            mode: 0o644,
        }
    }

    pub fn read_write() -> Self {
        Self { write: true, ..Self::read_only() }
    }

    /// Create if missing, open for reading and writing.
    pub fn create() -> Self {
        Self { create: true, ..Self::read_write() }
    }
}

/// Opens files: a meta client and a storage client over one routing cache.
#[derive(Clone, Debug)]
pub struct FileClient {
    meta: MetaClient,
    storage: StorageClient,
    config: ClientConfig,
}

impl FileClient {
    /// Connects to mgmtd (follows the primary), loads the routing, and prepares meta and storage
    /// clients. Fails if mgmtd cannot be reached within its retry bounds.
    pub async fn connect(config: ClientConfig) -> ClientResult<FileClient> {
        let storage = StorageClient::connect(config.clone()).await?;
        let meta = MetaClient::new(&config)?;
        Ok(FileClient { meta, storage, config })
    }

    /// Over existing clients (sharing their connections and routing).
    pub fn from_parts(
        config: ClientConfig,
        meta: MetaClient,
        storage: StorageClient,
    ) -> FileClient {
        FileClient { meta, storage, config }
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    pub fn storage(&self) -> &StorageClient {
        &self.storage
    }

    /// Opens (or creates) the regular file at `path` (absolute, or relative to the root).
    pub async fn open(&self, path: &str, options: &OpenOptions) -> ClientResult<File> {
        self.open_at(0, path, options).await
    }

    /// Opens an inode by number (what a FUSE daemon does): `path` empty names `at` itself.
    pub async fn open_inode(&self, inode: InodeId, options: &OpenOptions) -> ClientResult<File> {
        self.open_at(inode.0, "", &OpenOptions { create: false, ..*options }).await
    }

    /// Opens (or creates) `path` relative to directory inode `at` (0: the root; an absolute
    /// path ignores `at`).
    pub async fn open_at(&self, at: u64, path: &str, options: &OpenOptions) -> ClientResult<File> {
        let flags =
            pb::OpenFlags { read: options.read, write: options.write, truncate: options.truncate };
        let client_id = self.storage.client_id().0;
        let opened = if options.create {
            self.meta
                .create(pb::CreateRequest {
                    target: Some(path_at(at, path)),
                    mode: options.mode,
                    exclusive: options.exclusive,
                    flags: Some(flags),
                    client_id,
                })
                .await?
        } else {
            self.meta
                .open(pb::OpenRequest {
                    target: Some(path_at(at, path)),
                    flags: Some(flags),
                    client_id,
                })
                .await?
        };
        let inode = opened.inode.ok_or_else(|| {
            ClientError::failed(
                ErrorCode::Internal,
                format!("meta opened {path:?} without an inode"),
            )
        })?;
        if inode.kind != pb::InodeKind::File as i32 {
            return Err(ClientError::failed(
                ErrorCode::IsDirectory,
                format!("{path:?} is not a regular file"),
            ));
        }
        File::open(self, inode, opened.session, options.write).await
    }

    /// Creates (or opens) `path` for reading and writing.
    pub async fn create(&self, path: &str) -> ClientResult<File> {
        self.open(path, &OpenOptions::create()).await
    }
}

impl StorageClient {
    /// A storage client with its own mgmtd client and routing cache, from the client config
    /// (`mgmtd_addresses`, `token`, retry bounds). For the meta service and tools that have no
    /// mount.
    pub async fn connect(config: ClientConfig) -> ClientResult<StorageClient> {
        config.validate().map_err(ClientError::InvalidConfig)?;
        let mut mgmtd = MgmtdClientConfig::new(
            config.mgmtd_addresses.clone(),
            (!config.token.is_empty()).then(|| config.token.clone()),
        );
        mgmtd.connect_timeout_ms = config.rpc.connect_timeout_ms;
        mgmtd.request_timeout_ms = config.rpc.request_timeout_ms;
        mgmtd.attempts_max = config.retry.attempts_max;
        mgmtd.backoff_initial_ms = config.retry.backoff_initial_ms;
        mgmtd.backoff_max_ms = config.retry.backoff_max_ms;
        let mgmtd =
            MgmtdClient::new(mgmtd).map_err(|e| ClientError::InvalidConfig(vec![e.to_string()]))?;
        let routing = RoutingCache::start(Arc::new(mgmtd), config.routing.clone()).await?;
        StorageClient::new(config, Arc::new(routing))
    }
}

#[derive(Debug)]
struct LengthState {
    /// Meta's length as last seen.
    length: u64,
    /// The truncate version of `length`; reports carry it.
    truncate_version: u64,
    /// End of the bytes this handle wrote under `truncate_version`.
    written_end: u64,
    /// `written_end` as last reported to meta.
    reported_end: u64,
    last_report: Instant,
}

#[derive(Debug)]
struct Shared {
    meta: MetaClient,
    inode: InodeId,
    /// The write session (0: none).
    session: u64,
    state: Mutex<LengthState>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LengthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn adopt(&self, inode: Option<&pb::Inode>) {
        if let Some(inode) = inode {
            let mut state = self.lock();
            if inode.truncate_version != state.truncate_version {
                // Another truncate happened: what this handle wrote before it no longer counts.
                state.truncate_version = inode.truncate_version;
                state.written_end = 0;
                state.reported_end = 0;
            }
            state.length = inode.size;
        }
    }

    /// The report to send: the written end under the current truncate version, if new.
    fn report(&self, always: bool) -> pb::LengthRequest {
        let state = self.lock();
        let has_report = self.session != 0
            && (always || state.written_end > state.reported_end)
            && state.written_end > 0;
        pb::LengthRequest {
            inode: self.inode.0,
            session: self.session,
            has_report,
            length: if has_report { state.written_end } else { 0 },
            truncate_version: if has_report { state.truncate_version } else { 0 },
        }
    }

    fn reported(&self, request: &pb::LengthRequest, response: &pb::LengthResponse) {
        if !response.session_live && self.session != 0 {
            tracing::warn!(inode = %self.inode, session = self.session, "the write session expired; meta settles the length from storage");
        }
        {
            let mut state = self.lock();
            state.last_report = Instant::now();
            if request.has_report && request.truncate_version == state.truncate_version {
                state.reported_end = state.reported_end.max(request.length);
            }
        }
        self.adopt(response.inode.as_ref());
    }

    async fn report_length(&self) -> ClientResult<()> {
        let request = self.report(false);
        let response = self.meta.report_length(request).await?;
        self.reported(&request, &response);
        Ok(())
    }
}

/// One open regular file.
#[derive(Debug)]
pub struct File {
    shared: Arc<Shared>,
    /// The inode record meta returned when this file was opened.
    opened: pb::Inode,
    storage: StorageClient,
    map: FileMap,
    writable: bool,
    report_interval: Duration,
    renewer: Option<tokio::task::AbortHandle>,
}

impl Drop for File {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
    }
}

impl File {
    async fn open(
        client: &FileClient,
        inode: pb::Inode,
        session: u64,
        writable: bool,
    ) -> ClientResult<File> {
        let layout = inode.layout.as_ref().ok_or_else(|| {
            ClientError::failed(ErrorCode::Internal, format!("inode {} has no layout", inode.id))
        })?;
        let layout = layout_from_pb(layout)?;
        let id = InodeId(inode.id);
        let opened = inode.clone();
        let map = client.storage.file_map(id, &layout).await?;
        let shared = Arc::new(Shared {
            meta: client.meta.clone(),
            inode: id,
            session,
            state: Mutex::new(LengthState {
                length: inode.size,
                truncate_version: inode.truncate_version,
                written_end: 0,
                reported_end: 0,
                last_report: Instant::now(),
            }),
        });
        let report_interval = Duration::from_millis(client.config.file.length_report_interval_ms);
        let renewer = (session != 0)
            .then(|| tokio::spawn(renew(Arc::downgrade(&shared), report_interval)).abort_handle());
        Ok(File {
            shared,
            opened,
            storage: client.storage.clone(),
            map,
            writable,
            report_interval,
            renewer,
        })
    }

    pub fn inode(&self) -> InodeId {
        self.shared.inode
    }

    /// The inode record (attributes) meta returned when this file was opened or created: what a
    /// FUSE daemon answers a create with, without asking meta again.
    pub fn opened(&self) -> &pb::Inode {
        &self.opened
    }

    /// The file's layout resolved against the routing.
    pub fn map(&self) -> &FileMap {
        &self.map
    }

    /// The write session (0: opened without write).
    pub fn session(&self) -> u64 {
        self.shared.session
    }

    fn known_length(&self) -> u64 {
        let state = self.shared.lock();
        state.length.max(state.written_end)
    }

    async fn refresh_length(&self) -> ClientResult<u64> {
        let response = self
            .shared
            .meta
            .batch_stat(pb::BatchStatRequest { inodes: vec![self.inode().0] })
            .await?;
        let inode = response.inodes.into_iter().next().and_then(|r| r.inode);
        match inode {
            Some(inode) => self.shared.adopt(Some(&inode)),
            None => {
                return Err(ClientError::failed(
                    ErrorCode::NotFound,
                    format!("{} was removed", self.inode()),
                ));
            }
        }
        Ok(self.known_length())
    }

    /// The file's length: meta's, or further if this handle wrote past it.
    pub async fn len(&self) -> ClientResult<u64> {
        self.refresh_length().await
    }

    /// Reads at `offset` into `buf`; returns the bytes read (fewer at the end of the file, 0 past
    /// it). Holes read as zeros.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> ClientResult<usize> {
        let end = range_end(offset, buf.len()).ok_or_else(|| {
            ClientError::failed(ErrorCode::InvalidArgument, "read past the largest offset")
        })?;
        let mut length = self.known_length();
        if end > length {
            length = self.refresh_length().await?;
        }
        let n = clip_to_length(offset, buf.len(), length);
        if n > 0 {
            self.storage.read(&self.map, offset, &mut buf[..n]).await?;
        }
        Ok(n)
    }

    /// Writes `data` at `offset`; all of it or an error.
    pub async fn write_at(&self, offset: u64, data: &[u8]) -> ClientResult<usize> {
        if !self.writable || self.shared.session == 0 {
            return Err(ClientError::failed(
                ErrorCode::PermissionDenied,
                format!("{} is not open for writing", self.inode()),
            ));
        }
        let end = range_end(offset, data.len()).ok_or_else(|| {
            ClientError::failed(ErrorCode::FileTooLarge, "write past the largest offset")
        })?;
        if data.is_empty() {
            return Ok(0);
        }
        let version = self.shared.lock().truncate_version;
        self.storage.write(&self.map, offset, data).await?;
        let due = {
            let mut state = self.shared.lock();
            if state.truncate_version == version {
                state.written_end = state.written_end.max(end);
            }
            state.last_report.elapsed() >= self.report_interval
        };
        if due && let Err(error) = self.shared.report_length().await {
            // The data is written; the length reaches meta with the next report, fsync or close.
            tracing::warn!(inode = %self.inode(), "length report failed: {error}");
        }
        Ok(data.len())
    }

    /// Makes the written length durable in meta and settles it from storage.
    pub async fn fsync(&self) -> ClientResult<()> {
        let request = self.shared.report(true);
        let response = self.shared.meta.fsync(request).await?;
        self.shared.reported(&request, &response);
        Ok(())
    }

    /// Sets the file's length (shrinks storage or extends with a hole).
    pub async fn truncate(&self, length: u64) -> ClientResult<()> {
        let response = self
            .shared
            .meta
            .set_attr(pb::SetAttrRequest {
                target: Some(path_at(self.inode().0, "")),
                follow: true,
                length: Some(length),
                session: self.shared.session,
                ..Default::default()
            })
            .await?;
        self.shared.adopt(response.inode.as_ref());
        Ok(())
    }

    /// Ends the write session with a final report; returns the file's length.
    pub async fn close(mut self) -> ClientResult<u64> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if self.shared.session != 0 {
            let request = self.shared.report(true);
            let response = self.shared.meta.close(request).await?;
            self.shared.reported(&request, &response);
        }
        Ok(self.known_length())
    }
}

/// Reports the written length (and renews the session) every `interval` while the file is open.
async fn renew(shared: std::sync::Weak<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else { return };
        if shared.lock().last_report.elapsed() < interval {
            continue;
        }
        if let Err(error) = shared.report_length().await {
            tracing::warn!(inode = %shared.inode, "session renewal failed: {error}");
        }
    }
}
