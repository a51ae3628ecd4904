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
//! - Receive: one reader task reads into a `BytesMut`, decodes each frame's head and hands the
//!   frame to its waiting request; payloads are views of the read buffer, not copies. A request
//!   may name a [`Destination`] (the caller's own buffer, e.g. the ring's shared memory): when its
//!   reply is a batch read whose items fit the destination, the reader receives the payload
//!   straight into it and computes the payload CRC32C over the bytes in place (see
//!   [`Destination`] for who owns those bytes and when). A decode error, a payload CRC mismatch,
//!   EOF or IO error breaks the connection.
//! - Bounds: a request first takes `window` permits (its request and expected reply payload
//!   bytes) from the connection's in-flight byte window, and holds them until the caller drops
//!   the [`Reply`]; each request has a deadline covering the wait for the window, the send and
//!   the reply.

use bytes::{Bytes, BytesMut};
use r3fs_types::{ErrorCode, RequestId};
use r3fs_wire::{
    Decoded, FIXED_HEADER_LEN, Frame, FrameHead, FrameLimits, Message, PayloadInfo, decode_head,
    encode_head,
};
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

/// Smallest read the reader asks the socket for.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Bytes a request without payload counts against the window (its head and reply head).
pub(crate) const REQUEST_OVERHEAD_BYTES: u32 = 256;
/// Most bytes the reader receives into a destination per `recv` (and so the longest the
/// destination's lock is held: one `recv` of this size plus its CRC32C, tens of microseconds).
const IN_PLACE_RECV_BYTES_MAX: usize = 1 << 20;
/// Scratch size for discarding the rest of a payload whose destination was revoked.
const DISCARD_CHUNK_BYTES: usize = 64 << 10;

/// A caller's buffer that a batch-read reply is received into without a copy: one segment per
/// requested item, in request order; item `k`'s bytes (at most the segment's length) land at the
/// start of segment `k`.
///
/// Ownership (the invariant that makes the raw pointers sound):
/// - The bytes belong to the caller. While its request is outstanding it lends them to the
///   connection's reader task, which writes (and reads, for the CRC32C) them only inside
///   [`Destination::with_segments`], i.e. holding the lock and only while the destination is
///   armed.
/// - The caller disarms the destination (under the same lock) before it uses the bytes again:
///   `Connection::call_into` does so on every way out — reply, error, timeout, or its future
///   being dropped (the guard's `Drop`) — so once `call_into` has returned or been dropped,
///   nothing writes into the buffer, and a late reply is received into scratch and dropped.
///   Disarming waits at most for one `recv` of `IN_PLACE_RECV_BYTES_MAX` bytes in progress.
/// - A retry is a new request with a new destination over the same bytes: the old one was
///   disarmed before the failure reached the caller, so one request at most writes there.
/// - On any failure the bytes may hold part of a reply: the caller must not report them as data
///   (the storage client returns an error or overwrites them with a verified retry).
pub(crate) struct Destination {
    state: Mutex<DestinationState>,
}

struct DestinationState {
    armed: bool,
    segments: Vec<(*mut u8, usize)>,
}

// SAFETY: the pointers are only dereferenced under the mutex while armed, and the creator
// guarantees they stay valid and unaliased until it disarms (see the type's invariant).
unsafe impl Send for DestinationState {}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Destination")
            .field("armed", &state.armed)
            .field("segments", &state.segments.len())
            .finish()
    }
}

impl Destination {
    /// # Safety
    /// Each `(ptr, len)` must be valid for reads and writes of `len` bytes, the segments must
    /// not overlap, and nothing else may access them until [`Destination::disarm`] has returned
    /// (`Connection::call_into` disarms before it returns or when dropped).
    pub(crate) unsafe fn new(segments: Vec<(*mut u8, usize)>) -> Arc<Destination> {
        Arc::new(Destination { state: Mutex::new(DestinationState { armed: true, segments }) })
    }

    fn lock(&self) -> MutexGuard<'_, DestinationState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After this returns, the reader never touches the segments again.
    pub(crate) fn disarm(&self) {
        self.lock().armed = false;
    }

    fn segment_lens(&self) -> Vec<usize> {
        self.lock().segments.iter().map(|&(_, len)| len).collect()
    }

    /// Runs `f` over the segments while armed (None once disarmed), holding the lock.
    fn with_segments<R>(&self, f: impl FnOnce(&mut [(*mut u8, usize)]) -> R) -> Option<R> {
        let mut state = self.lock();
        if !state.armed {
            return None;
        }
        Some(f(&mut state.segments))
    }
}

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
    /// The payload was received into the request's [`Destination`] (`frame.payload` is empty;
    /// `frame.payload_crc32c` was verified over the destination's bytes).
    pub(crate) in_place: bool,
    _window: OwnedSemaphorePermit,
}

/// What the reader hands a waiting request.
#[derive(Debug)]
struct Delivery {
    frame: Frame,
    in_place: bool,
}

#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Delivery>,
    destination: Option<Arc<Destination>>,
}

#[derive(Debug)]
struct State {
    next_request_id: u64,
    pending: HashMap<u64, Waiter>,
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

    fn register(
        &self,
        destination: Option<Arc<Destination>>,
    ) -> Result<(u64, oneshot::Receiver<Delivery>), TransportError> {
        let mut state = self.lock();
        if let Some(error) = &state.broken {
            return Err(error.clone());
        }
        let id = state.next_request_id;
        state.next_request_id += 1;
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id, Waiter { reply: tx, destination });
        Ok((id, rx))
    }

    fn unregister(&self, id: u64) {
        self.lock().pending.remove(&id);
    }

    /// The destination of a waiting request, if it named one.
    fn destination_of(&self, id: u64) -> Option<Arc<Destination>> {
        self.lock().pending.get(&id).and_then(|w| w.destination.clone())
    }

    /// Hands a reply to its request; a reply nobody waits for (the request timed out) is dropped.
    fn deliver(&self, frame: Frame, in_place: bool) {
        let waiter = self.lock().pending.remove(&frame.request_id.0);
        match waiter {
            Some(waiter) => {
                let _ = waiter.reply.send(Delivery { frame, in_place });
            }
            None => {
                tracing::debug!(address = %self.address, request_id = frame.request_id.0, "late reply dropped")
            }
        }
    }
}

/// Removes a request from the pending map and disarms its destination however the call ends
/// (returned or dropped): after this, the reader never writes into the caller's buffer.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
    destination: Option<Arc<Destination>>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
        if let Some(destination) = &self.destination {
            destination.disarm();
        }
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
    #[cfg(test)]
    pub(crate) async fn call(
        &self,
        message: &Message,
        payload: &[u8],
        payload_crc32c: u32,
        window: u32,
        timeout: Duration,
    ) -> Result<Reply, TransportError> {
        self.call_into(message, payload, payload_crc32c, window, timeout, None).await
    }

    /// [`Connection::call`], receiving a batch-read reply's payload into `destination` when it
    /// fits (then [`Reply::in_place`]). `destination` is disarmed before this returns, and if
    /// this future is dropped, before the drop completes.
    pub(crate) async fn call_into(
        &self,
        message: &Message,
        payload: &[u8],
        payload_crc32c: u32,
        window: u32,
        timeout: Duration,
        destination: Option<Arc<Destination>>,
    ) -> Result<Reply, TransportError> {
        // Disarms on every way out, the early ones included.
        let _disarm = DisarmOnDrop(destination.clone());
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
        let (id, reply) = self.shared.register(destination.clone())?;
        let _pending = PendingGuard { shared: &self.shared, id, destination };
        let mut head = BytesMut::with_capacity(FIXED_HEADER_LEN + message.encoded_len());
        encode_head(&mut head, RequestId(id), message, info, &self.limits)
            .map_err(|e| TransportError::new(e.code(), e.to_string()))?;
        match tokio::time::timeout_at(deadline, self.send(&head, payload)).await {
            Ok(result) => result?,
            Err(_) => return Err(self.timeout_error(timeout, "sending")),
        }
        let Delivery { frame, in_place } = match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(delivery)) => delivery,
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
        Ok(Reply { frame, in_place, _window: permit })
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

/// Disarms a destination when dropped.
struct DisarmOnDrop(Option<Arc<Destination>>);

impl Drop for DisarmOnDrop {
    fn drop(&mut self) {
        if let Some(destination) = &self.0 {
            destination.disarm();
        }
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

async fn read_loop(reader: OwnedReadHalf, shared: Arc<Shared>, limits: FrameLimits) {
    let error = match receive_frames(&reader, &shared, &limits).await {
        Ok(never) => match never {},
        Err(error) => error,
    };
    shared.break_with(error);
}

/// Receives frames until the connection fails (the only way out).
async fn receive_frames(
    reader: &OwnedReadHalf,
    shared: &Shared,
    limits: &FrameLimits,
) -> Result<std::convert::Infallible, TransportError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut needed = FIXED_HEADER_LEN;
    loop {
        while buf.len() >= needed {
            let head = match decode_head(&buf, limits) {
                Ok(Decoded::Complete(head)) => head,
                // The codec asks for more only when the buffer is shorter; anything else
                // would spin here.
                Ok(Decoded::NeedMore { needed_len }) if needed_len > buf.len() => {
                    needed = needed_len;
                    continue;
                }
                Ok(Decoded::NeedMore { needed_len }) => {
                    return Err(TransportError::new(
                        ErrorCode::Internal,
                        format!("decoder asked for {needed_len} bytes with {} buffered", buf.len()),
                    ));
                }
                Err(e) => {
                    return Err(TransportError::new(
                        e.code(),
                        format!("bad frame from {}: {e}", shared.address),
                    ));
                }
            };
            if head.kind().is_request() {
                return Err(TransportError::new(
                    ErrorCode::MalformedFrame,
                    format!("storage sent a {:?} request to a client", head.kind()),
                ));
            }
            if let Some((destination, runs)) = in_place_target(shared, &head) {
                let _ = buf.split_to(head.head_len);
                receive_in_place(reader, &mut buf, &head, &destination, &runs).await.map_err(
                    |e| TransportError::new(e.code, format!("{}: {}", shared.address, e.detail)),
                )?;
                needed = FIXED_HEADER_LEN;
                let frame = Frame {
                    request_id: head.request_id,
                    message: head.message,
                    payload: Bytes::new(),
                    payload_crc32c: head.payload_crc32c,
                };
                shared.deliver(frame, true);
                continue;
            }
            let frame_len = head.frame_len();
            if buf.len() < frame_len {
                // The head is decoded again once the whole frame is here (heads are small).
                needed = frame_len;
                break;
            }
            head.verify_payload(&buf[head.payload_range()]).map_err(|e| {
                TransportError::new(e.code(), format!("bad frame from {}: {e}", shared.address))
            })?;
            let frame_bytes = buf.split_to(frame_len).freeze();
            needed = FIXED_HEADER_LEN;
            let frame = Frame {
                request_id: head.request_id,
                payload: frame_bytes.slice(head.head_len..),
                message: head.message,
                payload_crc32c: head.payload_crc32c,
            };
            shared.deliver(frame, false);
        }
        // `needed` is bounded by the frame limits (decode checks lengths before asking).
        buf.reserve((needed - buf.len()).max(READ_CHUNK_BYTES));
        match read_some(reader, &mut buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!("{} closed the connection", shared.address),
                ));
            }
            Ok(0) => {
                return Err(TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!(
                        "{} closed the connection inside a frame ({} of {needed} bytes)",
                        shared.address,
                        buf.len()
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!("read from {}: {e}", shared.address),
                ));
            }
        }
    }
}

/// One read into the spare capacity of `buf`.
async fn read_some(reader: &OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    loop {
        reader.readable().await?;
        match reader.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// `(segment index, bytes)`: one item's part of a payload received in place.
type Run = (usize, usize);

/// The destination a reply's payload goes into, and how: `(segment, bytes)` per item in payload
/// order. None (the reply is received into the read buffer as usual) unless the request named a
/// destination, the reply is a successful batch read with one item per segment, and every item
/// fits its segment.
fn in_place_target(shared: &Shared, head: &FrameHead) -> Option<(Arc<Destination>, Vec<Run>)> {
    if head.payload_len == 0 {
        return None;
    }
    let Message::BatchReadReply(reply) = &head.message else { return None };
    if reply.outcome.error().is_some() {
        return None;
    }
    let destination = shared.destination_of(head.request_id.0)?;
    let lens = destination.segment_lens();
    if reply.items.len() != lens.len() {
        return None;
    }
    let mut runs = Vec::with_capacity(lens.len());
    for (k, (item, &len)) in reply.items.iter().zip(&lens).enumerate() {
        if item.length as usize > len {
            return None;
        }
        if item.length > 0 {
            runs.push((k, item.length as usize));
        }
    }
    // decode_head checked that the items' lengths add up to the payload length.
    debug_assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), head.payload_len as usize);
    Some((destination, runs))
}

/// Where the next payload byte goes: run index and offset inside the run.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    run: usize,
    offset: usize,
}

/// Receives `head`'s payload into `destination`: first the bytes already in `buf`, then
/// straight from the socket. Every write into the destination (and the CRC32C over it) happens
/// under its lock while it is armed; once the caller disarmed it, the rest of the payload is
/// read into scratch and dropped, so the stream stays aligned on frames. A payload whose CRC32C
/// does not match the head's fails with FrameChecksum (the caller breaks the connection).
async fn receive_in_place(
    reader: &OwnedReadHalf,
    buf: &mut BytesMut,
    head: &FrameHead,
    destination: &Destination,
    runs: &[Run],
) -> Result<(), TransportError> {
    let mut left = head.payload_len as usize;
    let mut crc = 0u32;
    let mut cursor = Cursor::default();
    // Bytes of the payload already read along with the head.
    let early = buf.split_to(left.min(buf.len()));
    left -= early.len();
    crc = crc32c::crc32c_append(crc, &early);
    let mut from = &early[..];
    // Copy into the destination (if still armed); either way the cursor moves on.
    let copied = destination.with_segments(|segments| {
        while !from.is_empty() {
            let (segment, len) = runs[cursor.run];
            let n = (len - cursor.offset).min(from.len());
            // SAFETY: the segment is valid for its length while armed (Destination::new's
            // contract) and runs fit their segments (in_place_target checked).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    from.as_ptr(),
                    segments[segment].0.add(cursor.offset),
                    n,
                )
            };
            from = &from[n..];
            advance(&mut cursor, runs, n);
        }
    });
    if copied.is_none() {
        advance(&mut cursor, runs, early.len());
    }
    drop(early);
    let mut scratch: Vec<u8> = Vec::new();
    while left > 0 {
        reader
            .readable()
            .await
            .map_err(|e| TransportError::new(ErrorCode::ConnectionLost, format!("read: {e}")))?;
        let (segment, len) = runs[cursor.run];
        let want = (len - cursor.offset).min(IN_PLACE_RECV_BYTES_MAX);
        let received = destination.with_segments(|segments| {
            // SAFETY: as above; `want` stays inside the current run, hence the segment.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(segments[segment].0.add(cursor.offset), want)
            };
            let n = reader.try_read(dst)?;
            crc = crc32c::crc32c_append(crc, &dst[..n]);
            Ok::<usize, std::io::Error>(n)
        });
        let received = match received {
            Some(result) => result,
            None => {
                // Disarmed: the caller has its buffer back. Discard into scratch.
                scratch.resize(want.min(DISCARD_CHUNK_BYTES), 0);
                let dst = &mut scratch[..];
                let n = reader.try_read(dst);
                if let Ok(n) = n {
                    crc = crc32c::crc32c_append(crc, &dst[..n]);
                }
                n
            }
        };
        match received {
            Ok(0) => {
                return Err(TransportError::new(
                    ErrorCode::ConnectionLost,
                    format!(
                        "closed the connection inside a frame ({left} of {} payload bytes missing)",
                        head.payload_len
                    ),
                ));
            }
            Ok(n) => {
                left -= n;
                advance(&mut cursor, runs, n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(TransportError::new(ErrorCode::ConnectionLost, format!("read: {e}")));
            }
        }
    }
    if crc != head.payload_crc32c {
        return Err(TransportError::new(
            ErrorCode::FrameChecksum,
            format!(
                "payload CRC32C {crc:#010x} received in place, frame says {:#010x}",
                head.payload_crc32c
            ),
        ));
    }
    Ok(())
}

/// Moves `cursor` on by `n` bytes across runs.
fn advance(cursor: &mut Cursor, runs: &[Run], mut n: usize) {
    while n > 0 {
        let left = runs[cursor.run].1 - cursor.offset;
        if n >= left {
            n -= left;
            cursor.run += 1;
            cursor.offset = 0;
        } else {
            cursor.offset += n;
            n = 0;
        }
    }
    if cursor.run < runs.len() && cursor.offset == runs[cursor.run].1 {
        cursor.run += 1;
        cursor.offset = 0;
    }
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
    use r3fs_wire::{Frame, Ping, Pong, decode_frame};
    use tokio::io::AsyncReadExt;
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

    // ---- replies received in place ------------------------------------------------------

    use r3fs_types::{ChainId, ChunkId, InodeId};
    use r3fs_wire::{BatchReadItem, BatchReadReply, BatchReadReplyItem, BatchReadRequest, Outcome};

    const SENTINEL: u8 = 0xEE;

    fn batch_read(lengths: &[u32]) -> Message {
        BatchReadRequest {
            items: lengths
                .iter()
                .enumerate()
                .map(|(k, &length)| BatchReadItem {
                    chain_id: ChainId(1),
                    chunk_id: ChunkId::new(InodeId(1), k as u64),
                    offset: 0,
                    length,
                })
                .collect(),
        }
        .into()
    }

    /// A batch-read reply frame answering `request` with these items' data, encoded whole.
    fn batch_reply_bytes(request: &Frame, items: &[&[u8]]) -> BytesMut {
        let reply = BatchReadReply {
            outcome: Outcome::Ok,
            items: items
                .iter()
                .map(|data| BatchReadReplyItem {
                    outcome: Outcome::Ok,
                    length: data.len() as u32,
                    crc32c: crc32c::crc32c(data),
                })
                .collect(),
        };
        let payload = Bytes::from(items.concat());
        let mut out = BytesMut::new();
        Frame::new(request.request_id, reply, payload).encode(&mut out, &LIMITS).expect("encode");
        out
    }

    /// A destination over `buf` cut into segments of these lengths.
    fn destination_over(buf: &mut [u8], lens: &[usize]) -> Arc<Destination> {
        assert!(lens.iter().sum::<usize>() <= buf.len());
        let mut segments = Vec::new();
        let mut at = 0;
        for &len in lens {
            segments.push((buf[at..].as_mut_ptr(), len));
            at += len;
        }
        // SAFETY: disjoint segments of `buf`, which the test does not touch until the call
        // using this destination has returned or been dropped.
        unsafe { Destination::new(segments) }
    }

    /// Answers one ping on `stream` (proves every earlier frame was consumed in order).
    async fn ping_round_trip(connection: &Connection, stream: &mut TcpStream, buf: &mut BytesMut) {
        let message = ping(9);
        let call = connection.call(&message, &[], 0, 64, Duration::from_secs(10));
        let serve = async {
            let request = read_frame(stream, buf).await;
            reply(stream, &request, Pong { nonce: 9 }.into()).await;
        };
        let (result, ()) = tokio::join!(call, serve);
        assert_eq!(result.expect("ping after").frame.message, Pong { nonce: 9 }.into());
    }

    #[tokio::test]
    async fn a_batch_read_reply_is_received_into_the_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, 64 << 20).await;
        let (mut stream, _) = listener.accept().await.expect("accept");
        // A big item (received mostly straight from the socket), an empty one, a short one.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let items: [&[u8]; 3] = [&big, b"", b"tail"];
        let lens = [big.len() + 10, 4, 8];
        let mut buf = vec![SENTINEL; lens.iter().sum()];
        let destination = destination_over(&mut buf, &lens);
        let message = batch_read(&[lens[0] as u32, 4, 8]);
        let call =
            connection.call_into(&message, &[], 0, 64, Duration::from_secs(30), Some(destination));
        let serve = async {
            let mut rbuf = BytesMut::new();
            let request = read_frame(&mut stream, &mut rbuf).await;
            let out = batch_reply_bytes(&request, &items);
            // In two writes, so part of the payload arrives after the head.
            stream.write_all(&out[..100]).await.expect("write");
            stream.flush().await.expect("flush");
            stream.write_all(&out[100..]).await.expect("write");
        };
        let (result, ()) = tokio::join!(call, serve);
        let reply = result.expect("reply");
        assert!(reply.in_place, "received into the destination");
        assert!(reply.frame.payload.is_empty());
        assert_eq!(reply.frame.payload_crc32c, crc32c::crc32c(&items.concat()));
        drop(reply);
        assert_eq!(&buf[..big.len()], &big[..]);
        assert!(buf[big.len()..lens[0]].iter().all(|&b| b == SENTINEL), "past the item: untouched");
        assert!(buf[lens[0]..lens[0] + 4].iter().all(|&b| b == SENTINEL), "empty item: untouched");
        assert_eq!(&buf[lens[0] + 4..lens[0] + 8], b"tail");
        assert!(buf[lens[0] + 8..].iter().all(|&b| b == SENTINEL));
        assert!(!connection.is_broken());
    }

    #[tokio::test]
    async fn a_reply_that_does_not_fit_is_received_as_usual() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, 1 << 20).await;
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![SENTINEL; 8];
        let destination = destination_over(&mut buf, &[4, 4]);
        let message = batch_read(&[4, 4]);
        let call =
            connection.call_into(&message, &[], 0, 64, Duration::from_secs(10), Some(destination));
        let serve = async {
            let mut rbuf = BytesMut::new();
            let request = read_frame(&mut stream, &mut rbuf).await;
            // The second item is longer than its segment (a misbehaving server).
            stream
                .write_all(&batch_reply_bytes(&request, &[b"ab", b"cdefgh"]))
                .await
                .expect("write");
        };
        let (result, ()) = tokio::join!(call, serve);
        let reply = result.expect("reply");
        assert!(!reply.in_place);
        assert_eq!(&reply.frame.payload[..], b"abcdefgh");
        drop(reply);
        assert_eq!(buf, vec![SENTINEL; 8], "nothing was written into the destination");
    }

    /// A payload whose bytes do not match the frame's CRC32C fails the request (and breaks the
    /// connection); the bytes left in the destination are never reported as a reply.
    #[tokio::test]
    async fn a_corrupted_payload_received_in_place_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, 1 << 20).await;
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![SENTINEL; 200_000];
        let destination = destination_over(&mut buf, &[200_000]);
        let message = batch_read(&[200_000]);
        let call =
            connection.call_into(&message, &[], 0, 64, Duration::from_secs(10), Some(destination));
        let serve = async {
            let mut rbuf = BytesMut::new();
            let request = read_frame(&mut stream, &mut rbuf).await;
            let mut out = batch_reply_bytes(&request, &[&vec![5u8; 200_000]]);
            let last = out.len() - 1;
            out[last] ^= 0x40; // the payload only: the head's own CRC still holds
            stream.write_all(&out).await.expect("write");
        };
        let (result, ()) = tokio::join!(call, serve);
        let error = result.expect_err("corrupted payload");
        assert_eq!(error.code, ErrorCode::FrameChecksum, "{error:?}");
        assert!(connection.is_broken());
    }

    #[tokio::test]
    async fn a_reply_cut_short_received_in_place_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connection = connect(&listener, 1 << 20).await;
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![SENTINEL; 300_000];
        let destination = destination_over(&mut buf, &[300_000]);
        let message = batch_read(&[300_000]);
        let call =
            connection.call_into(&message, &[], 0, 64, Duration::from_secs(10), Some(destination));
        let serve = async {
            let mut rbuf = BytesMut::new();
            let request = read_frame(&mut stream, &mut rbuf).await;
            let out = batch_reply_bytes(&request, &[&vec![5u8; 300_000]]);
            stream.write_all(&out[..out.len() - 1000]).await.expect("write");
            stream.shutdown().await.expect("shutdown");
        };
        let (result, ()) = tokio::join!(call, serve);
        assert_eq!(result.expect_err("cut short").code, ErrorCode::ConnectionLost);
        assert!(connection.is_broken());
    }

    /// Once a request's future is dropped (or its deadline passes) in the middle of receiving a
    /// reply in place, not one more byte lands in the caller's buffer: the rest is discarded,
    /// still checked, and the connection stays aligned on frames.
    #[tokio::test]
    async fn a_cancelled_request_never_writes_into_the_buffer_after_it_returns() {
        const LEN: usize = 400_000;
        for dropped in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let connection = connect(&listener, 1 << 20).await;
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![SENTINEL; LEN];
            let destination = destination_over(&mut buf, &[LEN]);
            let message = batch_read(&[LEN as u32]);
            let data = vec![1u8; LEN];
            let mut rbuf = BytesMut::new();
            let (first_half_sent, first_half_sent_rx) = oneshot::channel::<()>();
            let (call_ended, call_ended_rx) = oneshot::channel::<()>();
            let client = async {
                if dropped {
                    // The deadline is far; the future is dropped from outside instead.
                    let call = connection.call_into(
                        &message,
                        &[],
                        0,
                        64,
                        Duration::from_secs(60),
                        Some(destination),
                    );
                    tokio::pin!(call);
                    tokio::select! {
                        result = &mut call => panic!("answered before the cancellation: {result:?}"),
                        _ = first_half_sent_rx => {}
                    }
                    // Give the reader time to receive the first half (not required for the
                    // property; it makes the cancellation land mid-payload most of the time).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    let result = connection
                        .call_into(
                            &message,
                            &[],
                            0,
                            64,
                            Duration::from_millis(500),
                            Some(destination),
                        )
                        .await;
                    assert_eq!(result.expect_err("deadline").code, ErrorCode::Timeout);
                    drop(first_half_sent_rx);
                }
                call_ended.send(()).expect("server waits");
            };
            let serve = async {
                let request = read_frame(&mut stream, &mut rbuf).await;
                let mut out = batch_reply_bytes(&request, &[&data]);
                let half = out.len() / 2;
                stream.write_all(&out[..half]).await.expect("write");
                let _ = first_half_sent.send(());
                call_ended_rx.await.expect("client ended");
                out.split_off(half)
            };
            let ((), rest) = tokio::join!(client, serve);
            // The call is over: the buffer is the test's again. Snapshot it, then send the rest.
            let before = buf.clone();
            stream.write_all(&rest).await.expect("write rest");
            ping_round_trip(&connection, &mut stream, &mut rbuf).await;
            assert!(before == buf, "bytes landed after the request ended (dropped: {dropped})");
            assert!(buf[LEN / 2..].iter().all(|&b| b == SENTINEL), "second half never written");
            assert!(!connection.is_broken(), "the discarded payload kept the stream aligned");
        }
    }
}
