//! The remote backend: any [`Kv`] served over gRPC ([`serve`]) and a client ([`RemoteKv`]), so several
//! processes — e.g. mgmtd instances electing a primary — share one embedded store.
//!
//! One gRPC stream is one transaction: the server begins it when the stream opens, answers every
//! request in order, and drops (aborts) it when the stream ends without a commit, when the client
//! disappears, or when it outlives `txn_duration_max_ms` (answered as a conflict, like
//! FoundationDB's `transaction_too_old`, so the caller's retry loop starts afresh).
//!
//! Writes are pipelined: the client checks limits locally, sends the write and does not wait for its
//! acknowledgement until the next read or the commit, which first collect every outstanding
//! acknowledgement in order. Reads therefore see the transaction's own writes (the server-side
//! transaction applies them in order) and a failed write fails the next call.
//!
//! Trust: the server authenticates nobody; bind it to loopback or a private network
//! (docs/design/kv.md).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use r3fs_rpc::kv::kv_service_client::KvServiceClient;
use r3fs_rpc::kv::kv_service_server::{KvService, KvServiceServer};
use r3fs_rpc::kv::{self as pb, txn_request::Op};
use r3fs_types::ErrorCode;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnboundedReceiverStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::buffer::{check_key, check_value};
use crate::{KeyValue, Kv, KvError, RangeRequest, ReadMode, TXN_SIZE_MAX, Txn};

/// Client side of the remote backend (`[kv.remote]` in a service's config).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The KV server, `host:port` or `http://host:port`.
    pub address: String,
    pub connect_timeout_ms: u64,
    /// Bound on waiting for any one answer of the server.
    pub request_timeout_ms: u64,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self { address: String::new(), connect_timeout_ms: 2_000, request_timeout_ms: 10_000 }
    }
}

impl RemoteConfig {
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.address.is_empty() {
            errors.push("kv.remote.address must name the KV server (host:port)".to_string());
        } else if Endpoint::from_shared(uri(&self.address)).is_err() {
            errors.push(format!("kv.remote.address {:?} is not a valid address", self.address));
        }
        if self.connect_timeout_ms == 0 {
            errors.push("kv.remote.connect_timeout_ms must be positive".to_string());
        }
        if self.request_timeout_ms == 0 {
            errors.push("kv.remote.request_timeout_ms must be positive".to_string());
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

fn uri(address: &str) -> String {
    if address.contains("://") { address.to_string() } else { format!("http://{address}") }
}

/// A [`Kv`] whose transactions run on a KV server.
#[derive(Debug)]
pub struct RemoteKv {
    client: KvServiceClient<Channel>,
    address: String,
    request_timeout: Duration,
}

impl RemoteKv {
    /// Connects lazily: a server that is down now is tried again by every `begin`.
    pub fn connect_lazy(config: &RemoteConfig) -> Result<Self, KvError> {
        config.validate().map_err(|errors| {
            KvError::Io(format!("invalid kv.remote config: {}", errors.join("; ")))
        })?;
        let endpoint = Endpoint::from_shared(uri(&config.address))
            .map_err(|e| KvError::Io(format!("kv server address {}: {e}", config.address)))?
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms));
        Ok(Self {
            client: KvServiceClient::new(endpoint.connect_lazy()),
            address: config.address.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        })
    }
}

#[async_trait]
impl Kv for RemoteKv {
    async fn begin(&self) -> Result<Box<dyn Txn>, KvError> {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let mut client = self.client.clone();
        let call = client.transact(UnboundedReceiverStream::new(outgoing));
        let responses = tokio::time::timeout(self.request_timeout, call)
            .await
            .map_err(|_| {
                KvError::Io(format!(
                    "kv server {} did not open a transaction in time",
                    self.address
                ))
            })?
            .map_err(|status| {
                KvError::Io(format!("kv server {}: {}", self.address, status.message()))
            })?
            .into_inner();
        Ok(Box::new(RemoteTxn {
            requests,
            responses,
            unacknowledged: 0,
            size_bytes: 0,
            request_timeout: self.request_timeout,
        }))
    }

    fn backend_name(&self) -> &'static str {
        "remote"
    }
}

struct RemoteTxn {
    requests: mpsc::UnboundedSender<pb::TxnRequest>,
    responses: Streaming<pb::TxnResponse>,
    /// Writes sent whose answers have not been read yet.
    unacknowledged: usize,
    /// Bytes of writes, charged like the local backends so the limit fails at the same call.
    size_bytes: usize,
    request_timeout: Duration,
}

impl RemoteTxn {
    fn send(&mut self, op: Op) -> Result<(), KvError> {
        self.requests
            .send(pb::TxnRequest { op: Some(op) })
            .map_err(|_| KvError::Io("the kv server closed the transaction".to_string()))
    }

    fn write(&mut self, op: Op, size_bytes: usize) -> Result<(), KvError> {
        let size = self.size_bytes + size_bytes;
        if size > TXN_SIZE_MAX {
            return Err(KvError::TooLarge { what: "transaction", size, limit: TXN_SIZE_MAX });
        }
        self.size_bytes = size;
        self.send(op)?;
        self.unacknowledged += 1;
        Ok(())
    }

    async fn answer(&mut self) -> Result<pb::TxnResponse, KvError> {
        let response = tokio::time::timeout(self.request_timeout, self.responses.message())
            .await
            .map_err(|_| KvError::Io("the kv server did not answer in time".to_string()))?
            .map_err(|status| KvError::Io(format!("kv server: {}", status.message())))?
            .ok_or_else(|| KvError::Io("the kv server ended the transaction".to_string()))?;
        match ErrorCode::from_code(u16::try_from(response.error_code).unwrap_or(u16::MAX)) {
            _ if response.error_code == 0 => Ok(response),
            Some(ErrorCode::KvConflict) => Err(KvError::Conflict),
            _ => Err(KvError::Io(format!(
                "kv server error {}: {}",
                response.error_code, response.error_message
            ))),
        }
    }

    /// Reads the answers of every write sent so far, in order.
    async fn settle(&mut self) -> Result<(), KvError> {
        while self.unacknowledged > 0 {
            self.unacknowledged -= 1;
            self.answer().await?;
        }
        Ok(())
    }

    async fn call(&mut self, op: Op) -> Result<pb::TxnResponse, KvError> {
        self.settle().await?;
        self.send(op)?;
        self.answer().await
    }
}

fn snapshot(mode: ReadMode) -> bool {
    mode == ReadMode::Snapshot
}

#[async_trait]
impl Txn for RemoteTxn {
    async fn get(&mut self, key: &[u8], mode: ReadMode) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let response =
            self.call(Op::Get(pb::Get { key: key.to_vec(), snapshot: snapshot(mode) })).await?;
        Ok(response.found.then_some(response.value))
    }

    async fn get_range(&mut self, request: &RangeRequest) -> Result<Vec<KeyValue>, KvError> {
        check_key(&request.begin)?;
        check_key(&request.end)?;
        let response = self
            .call(Op::GetRange(pb::GetRange {
                begin: request.begin.clone(),
                end: request.end.clone(),
                limit: request.limit as u64,
                reverse: request.reverse,
                snapshot: snapshot(request.mode),
            }))
            .await?;
        Ok(response.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        self.write(
            Op::Set(pb::Set { key: key.to_vec(), value: value.to_vec() }),
            key.len() + value.len(),
        )
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        self.write(Op::Clear(pb::Clear { key: key.to_vec() }), key.len())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        check_key(begin)?;
        check_key(end)?;
        if begin >= end {
            return Ok(());
        }
        let op = Op::ClearRange(pb::ClearRange { begin: begin.to_vec(), end: end.to_vec() });
        self.write(op, begin.len() + end.len())
    }

    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError> {
        check_key(key)?;
        self.write(Op::AtomicAdd(pb::AtomicAdd { key: key.to_vec(), delta }), key.len() + 8)
    }

    fn add_read_conflict_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if begin >= end {
            return Ok(());
        }
        let op = Op::ReadConflictRange(pb::ReadConflictRange {
            begin: begin.to_vec(),
            end: end.to_vec(),
        });
        // Not a write, but answered like one; it costs no transaction bytes.
        self.write(op, 0)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), KvError> {
        self.call(Op::Commit(pb::Commit {})).await.map(drop)
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// A transaction open longer than this is aborted and answered as a conflict.
    pub txn_duration_max_ms: u64,
    /// Answers buffered per stream before the server waits for the client to read.
    pub responses_buffered_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { txn_duration_max_ms: 5_000, responses_buffered_max: 64 }
    }
}

struct Service {
    kv: Arc<dyn Kv>,
    config: ServerConfig,
}

#[tonic::async_trait]
impl KvService for Service {
    type TransactStream = ReceiverStream<Result<pb::TxnResponse, Status>>;

    async fn transact(
        &self,
        request: Request<Streaming<pb::TxnRequest>>,
    ) -> Result<Response<Self::TransactStream>, Status> {
        let txn = self.kv.begin().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let (answers, stream) = mpsc::channel(self.config.responses_buffered_max);
        let duration_max = Duration::from_millis(self.config.txn_duration_max_ms);
        tokio::spawn(run_transaction(txn, request.into_inner(), answers, duration_max));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

fn error_response(error: &KvError) -> pb::TxnResponse {
    pb::TxnResponse {
        error_code: u32::from(error.code().code()),
        error_message: error.to_string(),
        ..Default::default()
    }
}

fn response_of(result: Result<pb::TxnResponse, KvError>) -> pb::TxnResponse {
    result.unwrap_or_else(|error| error_response(&error))
}

async fn run_transaction(
    mut txn: Box<dyn Txn>,
    mut requests: Streaming<pb::TxnRequest>,
    answers: mpsc::Sender<Result<pb::TxnResponse, Status>>,
    duration_max: Duration,
) {
    let deadline = tokio::time::Instant::now() + duration_max;
    loop {
        let request = match tokio::time::timeout_at(deadline, requests.message()).await {
            Err(_) => {
                let too_old = KvError::Conflict;
                let _ = answers.send(Ok(error_response(&too_old))).await;
                return;
            }
            // The client ended the stream or vanished: dropping `txn` aborts it.
            Ok(Ok(None) | Err(_)) => return,
            Ok(Ok(Some(request))) => request,
        };
        let response = match request.op {
            Some(Op::Commit(_)) => {
                let _ = answers
                    .send(Ok(response_of(txn.commit().await.map(|()| Default::default()))))
                    .await;
                return;
            }
            Some(op) => response_of(apply(&mut *txn, op).await),
            None => error_response(&KvError::Io("empty request".to_string())),
        };
        if answers.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

fn read_mode(snapshot: bool) -> ReadMode {
    if snapshot { ReadMode::Snapshot } else { ReadMode::Serializable }
}

async fn apply(txn: &mut dyn Txn, op: Op) -> Result<pb::TxnResponse, KvError> {
    let mut response = pb::TxnResponse::default();
    match op {
        Op::Get(get) => {
            if let Some(value) = txn.get(&get.key, read_mode(get.snapshot)).await? {
                response.found = true;
                response.value = value;
            }
        }
        Op::GetRange(range) => {
            let request = RangeRequest {
                begin: range.begin,
                end: range.end,
                limit: usize::try_from(range.limit).unwrap_or(usize::MAX),
                reverse: range.reverse,
                mode: read_mode(range.snapshot),
            };
            response.pairs = txn
                .get_range(&request)
                .await?
                .into_iter()
                .map(|(key, value)| pb::KeyValue { key, value })
                .collect();
        }
        Op::Set(set) => txn.set(&set.key, &set.value)?,
        Op::Clear(clear) => txn.clear(&clear.key)?,
        Op::ClearRange(range) => txn.clear_range(&range.begin, &range.end)?,
        Op::AtomicAdd(add) => txn.atomic_add(&add.key, add.delta)?,
        Op::ReadConflictRange(range) => txn.add_read_conflict_range(&range.begin, &range.end)?,
        Op::Commit(_) => unreachable!("commit is handled by the caller"),
    }
    Ok(response)
}

/// Serves `kv` on `listener` until `shutdown` completes.
pub async fn serve(
    kv: Arc<dyn Kv>,
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(KvServiceServer::new(Service { kv, config }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
