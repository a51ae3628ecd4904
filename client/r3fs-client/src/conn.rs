//! Data-plane connections: pipelined r3fs-wire requests over tokio TCP, and the pool that keeps a
//! few connections per storage address.
//!
//! One [`Connection`] carries many requests at once, matched to replies by `RequestId`:
//! - Send: the caller encodes only the frame head and writes `head + payload` with vectored
//!   writes straight from the caller's buffer, under the connection's write lock. The payload is
//!   never copied, and its CRC32C (computed once by the caller) is the frame's payload CRC.
//!   If the caller's future is dropped in the middle of a frame, the stream is no longer aligned
//!   on frames: the connection is marked broken (never reused) and its requests fail with
//!   ConnectionLost.
//! - Receive: one reader task reads into a `BytesMut`, decodes whole frames (`decode_frame`
//!   checks both CRCs) and hands each to its waiting request; payloads are views of the read
//!   buffer, not copies. A decode error, EOF or IO error breaks the connection.
//! - Bounds: a request first takes `window` permits (its request and expected reply payload
//!   bytes) from the connection's in-flight byte window, and holds them until the caller drops
//!   the [`Reply`]; each request has a deadline covering the wait for the window, the send and
//!   the reply.

use bytes::BytesMut;
use r3fs_types::{ErrorCode, RequestId};
use r3fs_wire::{
    Decoded, FIXED_HEADER_LEN, Frame, FrameLimits, Message, PayloadInfo, decode_frame, encode_head,
};
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

/// Smallest read the reader asks the socket for.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Bytes a request without payload counts against the window (its head and reply head).
pub(crate) const REQUEST_OVERHEAD_BYTES: u32 = 256;

/// Why a request did not get a reply. Always carries a stable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TransportError {
    pub(crate) code: ErrorCode,
    pub(crate) detail: String,
}

impl TransportError {
    pub(crate) fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }
}

/// A reply frame; holds the connection's window permits until dropped, so in-flight bytes count
/// until the caller has consumed the payload.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) frame: Frame,
    _window: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct State {
    next_request_id: u64,
    pending: HashMap<u64, oneshot::Sender<Frame>>,
    broken: Option<TransportError>,
}

#[derive(Debug)]
struct Shared {
    address: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere (every change is one statement).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection unusable and fails every waiting request (dropping their senders).
    fn break_with(&self, error: TransportError) {
        let mut state = self.lock();
        if state.broken.is_none() {
            tracing::debug!(address = %self.address, code = %error.code, "storage connection broken: {}", error.detail);
            state.broken = Some(error);
        }
        state.pending.clear();
    }

    fn broken(&self) -> Option<TransportError> {
        self.lock().broken.clone()
    }

    fn register(&self) -> Result<(u64, oneshot::Receiver<Frame>), TransportError> {
        let mut state = self.lock();
        if let Some(error) = &state.broken {
            return Err(error.clone());
        }
        let id = state.next_request_id;
        state.next_request_id += 1;
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id, tx);
        Ok((id, rx))
    }

    fn unregister(&self, id: u64) {
        self.lock().pending.remove(&id);
    }

    /// Hands a reply to its request; a reply nobody waits for (the request timed out) is dropped.
    fn deliver(&self, frame: Frame) {
        let sender = self.lock().pending.remove(&frame.request_id.0);
        match sender {
            Some(sender) => {
                let _ = sender.send(frame);
            }
            None => {
                tracing::debug!(address = %self.address, request_id = frame.request_id.0, "late reply dropped")
            }
        }
    }
}

/// Removes a request from the pending map however the call ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

/// Breaks the connection if dropped while armed: a frame was partly written.
struct BreakOnDrop<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.break_with(TransportError::new(
                ErrorCode::ConnectionLost,
                "a frame was abandoned half written",
            ));
        }
    }
}

/// One TCP connection to a storage address.
#[derive(Debug)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    reader: tokio::task::AbortHandle,
    window: Arc<Semaphore>,
    window_bytes: u32,
    limits: FrameLimits,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    pub(crate) async fn connect(
        address: SocketAddr,
        connect_timeout: Duration,
        window_bytes: u32,
        limits: FrameLimits,
    ) -> Result<Connection, TransportError> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!("connect to {address}: {e}"),
                ));
            }
            Err(_) => {
                return Err(TransportError::new(
                    ErrorCode::Timeout,
                    format!("connect to {address}: no answer within {connect_timeout:?}"),
                ));
            }
        };
        // Requests are small heads followed by big payloads; never let Nagle hold a head back.
        stream.set_nodelay(true).map_err(|e| {
            TransportError::new(ErrorCode::ConnectionLost, format!("set TCP_NODELAY: {e}"))
        })?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            address,
            state: Mutex::new(State { next_request_id: 1, pending: HashMap::new(), broken: None }),
        });
        let reader = tokio::spawn(read_loop(read, shared.clone(), limits)).abort_handle();
        Ok(Connection {
            shared,
            writer: tokio::sync::Mutex::new(write),
            reader,
            window: Arc::new(Semaphore::new(window_bytes as usize)),
            window_bytes,
            limits,
        })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.shared.address
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.shared.lock().broken.is_some()
    }

    /// Window bytes not taken by requests in flight.
    pub(crate) fn available_window(&self) -> usize {
        self.window.available_permits()
    }

    /// Sends `message` with `payload` (whose CRC32C the caller computed) and waits for the reply,
    /// all within `timeout`. `window` is the request's count against the in-flight byte window
    /// (its payload plus the reply payload it expects); it is clamped to the whole window so a
    /// request bigger than the window still runs, alone.
    pub(crate) async fn call(
        &self,
        message: &Message,
        payload: &[u8],
        payload_crc32c: u32,
        window: u32,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        let deadline = Instant::now() + timeout;
        let expected = message.kind().reply_kind().ok_or_else(|| {
            TransportError::new(
                ErrorCode::Internal,
                format!("{:?} is not a request", message.kind()),
            )
        })?;
        let window = window.clamp(1, self.window_bytes);
        let permit =
            match tokio::time::timeout_at(deadline, self.window.clone().acquire_many_owned(window))
                .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => {
                    return Err(TransportError::new(
                        ErrorCode::Internal,
                        "window semaphore closed",
                    ));
                }
                Err(_) => {
                    return Err(self.timeout_error(timeout, "waiting for the in-flight window"));
                }
            };
        let info = PayloadInfo::with_crc32c(payload.len(), payload_crc32c)
            .map_err(|e| TransportError::new(e.code(), e.to_string()))?;
        let (id, reply) = self.shared.register()?;
        let _pending = PendingGuard { shared: &self.shared, id };
        let mut head = BytesMut::with_capacity(FIXED_HEADER_LEN + message.encoded_len());
        encode_head(&mut head, RequestId(id), message, info, &self.limits)
            .map_err(|e| TransportError::new(e.code(), e.to_string()))?;
        match tokio::time::timeout_at(deadline, self.send(&head, payload)).await {
            Ok(result) => result?,
            Err(_) => return Err(self.timeout_error(timeout, "sending")),
        }
        let frame = match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => {
                return Err(self.shared.broken().unwrap_or_else(|| {
                    TransportError::new(ErrorCode::ConnectionLost, "the connection closed")
                }));
            }
            Err(_) => return Err(self.timeout_error(timeout, "waiting for the reply")),
        };
        if frame.kind() != expected {
            let error = TransportError::new(
                ErrorCode::MalformedFrame,
                format!("{} answered {:?} to a {:?}", self.address(), frame.kind(), message.kind()),
            );
            self.shared.break_with(error.clone());
            return Err(error);
        }
        Ok(Reply { frame, _window: permit })
    }

    fn timeout_error(&self, timeout: Duration, what: &str) -> TransportError {
        TransportError::new(
            ErrorCode::Timeout,
            format!("{}: {what}: no reply within {timeout:?}", self.address()),
        )
    }

    async fn send(&self, head: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        let mut writer = self.writer.lock().await;
        if let Some(error) = self.shared.broken() {
            return Err(error);
        }
        let mut guard = BreakOnDrop { shared: &self.shared, armed: true };
        let result = write_all_vectored(&mut writer, &[head, payload]).await;
        guard.armed = false;
        result.map_err(|e| {
            let error = TransportError::new(
                ErrorCode::ConnectionLost,
                format!("write to {}: {e}", self.address()),
            );
            self.shared.break_with(error.clone());
            error
        })
    }
}

/// Writes every part, in order, with vectored writes (one `writev` per round; no copies).
async fn write_all_vectored(writer: &mut OwnedWriteHalf, parts: &[&[u8]]) -> std::io::Result<()> {
    const PARTS_MAX: usize = 4;
    assert!(parts.len() <= PARTS_MAX, "at most {PARTS_MAX} parts per frame");
    let mut index = 0;
    let mut offset = 0;
    loop {
        while index < parts.len() && offset == parts[index].len() {
            index += 1;
            offset = 0;
        }
        if index == parts.len() {
            return Ok(());
        }
        let mut slices = [IoSlice::new(&[]); PARTS_MAX];
        let mut count = 0;
        for (i, part) in parts[index..].iter().enumerate() {
            let part = if i == 0 { &part[offset..] } else { part };
            if !part.is_empty() {
                slices[count] = IoSlice::new(part);
                count += 1;
            }
        }
        let mut written = writer.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = parts[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
}

async fn read_loop(mut reader: OwnedReadHalf, shared: Arc<Shared>, limits: FrameLimits) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut needed = FIXED_HEADER_LEN;
    let error = 'connection: loop {
        while buf.len() >= needed {
            match decode_frame(&mut buf, &limits) {
                Ok(Decoded::Complete(frame)) => {
                    needed = FIXED_HEADER_LEN;
                    if frame.kind().is_request() {
                        break 'connection TransportError::new(
                            ErrorCode::MalformedFrame,
                            format!("storage sent a {:?} request to a client", frame.kind()),
                        );
                    }
                    shared.deliver(frame);
                }
                // The codec asks for more only when the buffer is shorter; anything else
                // would spin here.
                Ok(Decoded::NeedMore { needed_len }) if needed_len > buf.len() => {
                    needed = needed_len
                }
                Ok(Decoded::NeedMore { needed_len }) => {
                    break 'connection TransportError::new(
                        ErrorCode::Internal,
                        format!("decoder asked for {needed_len} bytes with {} buffered", buf.len()),
                    );
                }
                Err(e) => {
                    break 'connection TransportError::new(
                        e.code(),
                        format!("bad frame from {}: {e}", shared.address),
                    );
                }
            }
        }
        // `needed` is bounded by the frame limits (decode checks lengths before asking).
        buf.reserve((needed - buf.len()).max(READ_CHUNK_BYTES));
        match reader.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => {
                break TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!("{} closed the connection", shared.address),
                );
            }
            Ok(0) => {
                break TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!(
                        "{} closed the connection inside a frame ({} of {needed} bytes)",
                        shared.address,
                        buf.len()
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => {
                break TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!("read from {}: {e}", shared.address),
                );
            }
        }
    };
    shared.break_with(error);
}

/// Bounds of the pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) connections_per_address: usize,
    pub(crate) window_bytes: u32,
    pub(crate) limits: FrameLimits,
}

#[derive(Debug, Default)]
struct AddressPool {
    connections: Mutex<Vec<Arc<Connection>>>,
    /// One connect at a time per address, so a burst does not open more than the bound.
    connecting: tokio::sync::Mutex<()>,
}

impl AddressPool {
    /// Drops broken connections; returns the live one with the most free window, and the count.
    fn best(&self) -> (Option<Arc<Connection>>, usize) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|c| !c.is_broken());
        let best = connections.iter().max_by_key(|c| c.available_window()).cloned();
        (best, connections.len())
    }
}

/// Connections per storage address, opened on demand.
#[derive(Debug)]
pub(crate) struct Pool {
    settings: PoolSettings,
    addresses: Mutex<HashMap<SocketAddr, Arc<AddressPool>>>,
}

impl Pool {
    pub(crate) fn new(settings: PoolSettings) -> Pool {
        assert!(settings.connections_per_address > 0, "at least one connection per address");
        Pool { settings, addresses: Mutex::new(HashMap::new()) }
    }

    /// A live connection to `address` with room for `window` bytes if one exists or can be
    /// opened within the bound; otherwise the least loaded one (the request then waits for its
    /// window).
    pub(crate) async fn get(
        &self,
        address: SocketAddr,
        window: u32,
    ) -> Result<Arc<Connection>, TransportError> {
        let pool = self
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(address)
            .or_default()
            .clone();
        let max = self.settings.connections_per_address;
        let fits = |c: &Connection| c.available_window() >= window as usize;
        if let (Some(best), count) = pool.best()
            && (fits(&best) || count >= max)
        {
            return Ok(best);
        }
        let _connecting = pool.connecting.lock().await;
        if let (Some(best), count) = pool.best()
            && (fits(&best) || count >= max)
        {
            return Ok(best);
        }
        let s = &self.settings;
        match Connection::connect(address, s.connect_timeout, s.window_bytes, s.limits).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                pool.connections.lock().unwrap_or_else(|e| e.into_inner()).push(connection.clone());
                Ok(connection)
            }
            Err(error) => match pool.best() {
                (Some(best), _) => Ok(best),
                (None, _) => Err(error),
            },
        }
    }

    /// Live connections to `address` (for tests and stats).
    pub(crate) fn connection_count(&self, address: SocketAddr) -> usize {
        let pool = self.addresses.lock().unwrap_or_else(|e| e.into_inner()).get(&address).cloned();
        pool.map_or(0, |p| p.best().1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use r3fs_wire::{Frame, Ping, Pong};
    use tokio::net::TcpListener;

    const LIMITS: FrameLimits = FrameLimits::DEFAULT;

    async fn connect(listener: &TcpListener, window_bytes: u32) -> Connection {
        let address = listener.local_addr().expect("address");
        Connection::connect(address, Duration::from_secs(5), window_bytes, LIMITS)
            .await
            .expect("connect")
    }

    /// Reads one whole frame from a raw server socket.
    async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Frame {
        loop {
            if let Ok(Decoded::Complete(frame)) = decode_frame(buf, &LIMITS) {
                return frame;
            }
            assert!(stream.read_buf(buf).await.expect("read") > 0, "client closed");
        }
    }

    async fn reply(stream: &mut TcpStream, request: &Frame, message: Message) {
        let frame = Frame::new(request.request_id, message, request.payload.clone());
        let mut out = BytesMut::new();
        frame.encode(&mut out, &LIMITS).expect("encode");
        stream.write_all(&out).await.expect("write");
    }

    fn ping(nonce: u64) -> Message {
        Ping { nonce }.into()
    }

    #[tokio::test]
    async fn replies_are_matched_by_request_id_in_any_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, 1 << 20).await;
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = BytesMut::new();
            let first = read_frame(&mut stream, &mut buf).await;
            let second = read_frame(&mut stream, &mut buf).await;
            // Answer the second request first.
            for request in [&second, &first] {
                let Message::Ping(Ping { nonce }) = request.message else { panic!("ping") };
                reply(&mut stream, request, Pong { nonce }.into()).await;
            }
            stream
        });
        let timeout = Duration::from_secs(5);
        let (ping1, ping2) = (ping(1), ping(2));
        let a = connection.call(&ping1, b"one", crc32c::crc32c(b"one"), 64, timeout);
        let b = connection.call(&ping2, b"two!", crc32c::crc32c(b"two!"), 64, timeout);
        let (a, b) = tokio::join!(a, b);
        let (a, b) = (a.expect("first"), b.expect("second"));
        assert_eq!(a.frame.message, Pong { nonce: 1 }.into());
        assert_eq!(&a.frame.payload[..], b"one");
        assert_eq!(b.frame.message, Pong { nonce: 2 }.into());
        assert_eq!(&b.frame.payload[..], b"two!");
        drop(server.await.expect("server"));
    }

    #[tokio::test]
    async fn a_timed_out_request_leaves_the_connection_usable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, 1 << 20).await;
        let (mut stream, _) = listener.accept().await.expect("accept");
        let error = connection
            .call(&ping(1), &[], 0, 64, Duration::from_millis(50))
            .await
            .expect_err("nobody answers");
        assert_eq!(error.code, ErrorCode::Timeout);
        let mut buf = BytesMut::new();
        let late = read_frame(&mut stream, &mut buf).await;
        reply(&mut stream, &late, Pong { nonce: 1 }.into()).await;
        // The late reply is dropped; the next request gets its own answer.
        let ping2 = ping(2);
        let call = connection.call(&ping2, &[], 0, 64, Duration::from_secs(5));
        let serve = async {
            let request = read_frame(&mut stream, &mut buf).await;
            reply(&mut stream, &request, Pong { nonce: 2 }.into()).await;
        };
        let (result, ()) = tokio::join!(call, serve);
        assert_eq!(result.expect("second call").frame.message, Pong { nonce: 2 }.into());
        assert!(!connection.is_broken());
    }

    #[tokio::test]
    async fn garbage_or_a_close_mid_frame_breaks_the_connection() {
        for garbage in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let connection = connect(&listener, 1 << 20).await;
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = BytesMut::new();
                let request = read_frame(&mut stream, &mut buf).await;
                if garbage {
                    stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .expect("write");
                } else {
                    let frame = Frame::new(
                        request.request_id,
                        Pong { nonce: 1 },
                        Bytes::from_static(b"abcdef"),
                    );
                    let mut out = BytesMut::new();
                    frame.encode(&mut out, &LIMITS).expect("encode");
                    stream.write_all(&out[..out.len() - 3]).await.expect("write");
                }
                stream.shutdown().await.expect("shutdown");
                stream
            });
            let error = connection
                .call(&ping(1), &[], 0, 64, Duration::from_secs(5))
                .await
                .expect_err("the server misbehaves");
            let expected =
                if garbage { ErrorCode::MalformedFrame } else { ErrorCode::ConnectionLost };
            assert_eq!(error.code, expected, "{error:?}");
            assert!(connection.is_broken());
            let again = connection.call(&ping(2), &[], 0, 64, Duration::from_secs(5)).await;
            assert_eq!(
                again.expect_err("broken").code,
                expected,
                "a broken connection is never reused"
            );
            drop(server.await.expect("server"));
        }
    }

    /// A send abandoned in the middle of a frame (its deadline passed while the socket was
    /// full) must never let the next frame start mid-stream.
    #[tokio::test]
    async fn a_frame_abandoned_half_written_breaks_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, u32::MAX).await;
        // The server accepts but never reads, so the socket buffers fill up.
        let (_stream, _) = listener.accept().await.expect("accept");
        let payload = vec![7u8; 48 << 20];
        let crc = crc32c::crc32c(&payload);
        let error = connection
            .call(&ping(1), &payload, crc, 64, Duration::from_millis(300))
            .await
            .expect_err("cannot be sent in time");
        assert_eq!(error.code, ErrorCode::Timeout);
        assert!(connection.is_broken(), "half a frame went out");
        let again = connection.call(&ping(2), &[], 0, 64, Duration::from_secs(1)).await;
        assert_eq!(again.expect_err("broken").code, ErrorCode::ConnectionLost);
    }

    #[tokio::test]
    async fn the_window_bounds_bytes_in_flight() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = Arc::new(connect(&listener, 1000).await);
        let (mut stream, _) = listener.accept().await.expect("accept");
        let first = {
            let connection = connection.clone();
            tokio::spawn(async move {
                connection.call(&ping(1), &[], 0, 800, Duration::from_secs(5)).await
            })
        };
        let mut buf = BytesMut::new();
        let request = read_frame(&mut stream, &mut buf).await;
        assert_eq!(connection.available_window(), 200);
        // A second request of 800 bytes must wait for the first reply to be dropped.
        let second = connection.call(&ping(2), &[], 0, 800, Duration::from_millis(100)).await;
        assert_eq!(second.expect_err("no window").code, ErrorCode::Timeout);
        reply(&mut stream, &request, Pong { nonce: 1 }.into()).await;
        let first = first.await.expect("task").expect("first reply");
        assert_eq!(connection.available_window(), 200, "held until the reply is dropped");
        drop(first);
        assert_eq!(connection.available_window(), 1000);
    }
}
