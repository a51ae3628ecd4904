//! A minimal data-plane client over tokio TCP: r3fs-wire frames to one shard's address. Used by
//! the integration tests, the benchmark and tools; the client library may reuse or replace it.
//!
//! One [`DataClient`] is one connection. [`DataClient::send`] and [`DataClient::recv`] pipeline
//! requests (the server answers each request once, in any order); [`DataClient::call`] is the
//! one-request convenience. Every received frame's header and payload checksums are verified by
//! the decoder; batch-read items are verified again against their own CRC32C.

use bytes::{Bytes, BytesMut};
use r3fs_types::RequestId;
use r3fs_wire::{
    BatchReadReply, BatchReadRequest, Decoded, Frame, FrameError, FrameLimits, Message,
    PayloadInfo, UpdateReply, UpdateRequest, decode_frame, encode_head,
};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("cannot encode the request: {0}")]
    Encode(#[from] r3fs_wire::EncodeError),
    #[error("the server answered {got:?} where {expected} was expected")]
    UnexpectedReply { expected: &'static str, got: Box<Message> },
    #[error("batch read data failed its checksum: {0}")]
    ItemChecksum(#[from] r3fs_wire::ItemCheckError),
    #[error("the server closed the connection")]
    Closed,
}

#[derive(Debug)]
pub struct DataClient {
    stream: TcpStream,
    buf: BytesMut,
    next_request: u64,
    limits: FrameLimits,
}

impl DataClient {
    pub async fn connect(address: SocketAddr) -> Result<DataClient, ClientError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(DataClient {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            next_request: 1,
            limits: FrameLimits::DEFAULT,
        })
    }

    /// Sends one request; the payload's CRC32C is computed here. Returns its request id.
    pub async fn send(
        &mut self,
        message: Message,
        payload: &[u8],
    ) -> Result<RequestId, ClientError> {
        let info = PayloadInfo::of(payload)?;
        self.send_with_info(message, payload, info).await
    }

    /// Sends one request whose payload CRC32C the caller already has (or, in fault tests,
    /// deliberately gets wrong: the server must refuse it).
    pub async fn send_with_info(
        &mut self,
        message: Message,
        payload: &[u8],
        info: PayloadInfo,
    ) -> Result<RequestId, ClientError> {
        let request_id = RequestId(self.next_request);
        self.next_request += 1;
        let mut head = BytesMut::with_capacity(128);
        encode_head(&mut head, request_id, &message, info, &self.limits)?;
        self.stream.write_all(&head).await?;
        if !payload.is_empty() {
            self.stream.write_all(payload).await?;
        }
        Ok(request_id)
    }

    /// Sends bytes as they are (fault tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next reply frame, whatever its request.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            match decode_frame(&mut self.buf, &self.limits)? {
                Decoded::Complete(frame) => return Ok(frame),
                Decoded::NeedMore { needed_len } => {
                    self.buf
                        .reserve(needed_len.saturating_sub(self.buf.len()).max(READ_CHUNK_BYTES));
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(ClientError::Closed);
                    }
                }
            }
        }
    }

    /// One request, one reply.
    pub async fn call(&mut self, message: Message, payload: &[u8]) -> Result<Frame, ClientError> {
        let id = self.send(message, payload).await?;
        let frame = self.recv().await?;
        if frame.request_id != id {
            return Err(ClientError::UnexpectedReply {
                expected: "the reply to the last request",
                got: Box::new(frame.message),
            });
        }
        Ok(frame)
    }

    pub async fn update(
        &mut self,
        request: UpdateRequest,
        data: &[u8],
    ) -> Result<UpdateReply, ClientError> {
        match self.call(request.into(), data).await?.message {
            Message::UpdateReply(reply) => Ok(reply),
            other => {
                Err(ClientError::UnexpectedReply { expected: "UpdateReply", got: Box::new(other) })
            }
        }
    }

    /// Reads a batch; every item's data is checked against its CRC32C.
    pub async fn batch_read(
        &mut self,
        request: BatchReadRequest,
    ) -> Result<(BatchReadReply, Bytes), ClientError> {
        let frame = self.call(request.into(), &[]).await?;
        match frame.message {
            Message::BatchReadReply(reply) => {
                reply.verify_item_crc32cs(&frame.payload)?;
                Ok((reply, frame.payload))
            }
            other => Err(ClientError::UnexpectedReply {
                expected: "BatchReadReply",
                got: Box::new(other),
            }),
        }
    }
}
