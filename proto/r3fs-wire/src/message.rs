//! Message kinds, the [`Message`] enum over the storage catalog, and reply [`Outcome`]s.
//!
//! A message is the typed header between a frame's fixed header and its payload. Each kind has a
//! hand-written little-endian layout (see `storage.rs` and docs/design/wire-frames.md); every
//! accepted message has exactly one encoding (reserved bytes and absent optional fields are zero),
//! so decoding then encoding reproduces the input bytes.

use crate::error::MessageError;
use crate::storage::{
    BatchReadReply, BatchReadRequest, GetChunkMetasReply, GetChunkMetasRequest, Ping, Pong,
    QueryLastChunkReply, QueryLastChunkRequest, RemoveChunksReply, RemoveChunksRequest,
    UpdateReply, UpdateRequest,
};
use bytes::BufMut;
use r3fs_types::ErrorCode;

macro_rules! message_kinds {
    ($($variant:ident = $code:literal, $reply:ident;)*) => {
        /// The `kind` field of the fixed header: which message the message header holds.
        /// Requests are odd, their replies the next even number.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum MessageKind {
            $($variant = $code,)*
        }

        impl MessageKind {
            pub const ALL: &'static [MessageKind] = &[$(MessageKind::$variant),*];

            pub fn code(self) -> u16 {
                self as u16
            }

            pub fn from_code(code: u16) -> Option<MessageKind> {
                match code {
                    $($code => Some(MessageKind::$variant),)*
                    _ => None,
                }
            }

            /// The kind of the reply to this request, or `None` for a reply.
            pub fn reply_kind(self) -> Option<MessageKind> {
                match self {
                    $(MessageKind::$variant => message_kinds!(@reply $reply),)*
                }
            }
        }

        /// One typed message header. Each variant wraps the struct of the same name.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $($variant($variant),)*
        }

        impl Message {
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(Message::$variant(_) => MessageKind::$variant,)*
                }
            }

            /// Bytes [`Message::encode`] appends.
            pub fn encoded_len(&self) -> usize {
                match self {
                    $(Message::$variant(m) => WireMessage::encoded_len(m),)*
                }
            }

            /// Appends exactly [`Message::encoded_len`] bytes. Call [`Message::validate`] first
            /// (the frame encoder does): an invalid message encodes, but the peer rejects it.
            pub fn encode(&self, out: &mut impl BufMut) {
                match self {
                    $(Message::$variant(m) => WireMessage::encode(m, out),)*
                }
            }

            /// Decodes a message header of the given kind; the bytes must be exactly one message.
            pub fn decode(kind: MessageKind, bytes: &[u8]) -> Result<Message, MessageError> {
                Ok(match kind {
                    $(MessageKind::$variant => {
                        let message = <$variant as WireMessage>::decode(bytes)?;
                        WireMessage::validate(&message)?;
                        Message::$variant(message)
                    })*
                })
            }

            /// Checks the rules that are not a matter of byte layout (list bounds, consistency
            /// between fields). The decoder applies the same checks.
            pub fn validate(&self) -> Result<(), MessageError> {
                match self {
                    $(Message::$variant(m) => WireMessage::validate(m),)*
                }
            }

            /// Checks that the frame's payload (its length and CRC32C, both from the fixed header)
            /// is what this message says it carries.
            pub fn check_payload(
                &self,
                payload_len: u32,
                payload_crc32c: u32,
            ) -> Result<(), MessageError> {
                match self {
                    $(Message::$variant(m) => {
                        WireMessage::check_payload(m, payload_len, payload_crc32c)
                    })*
                }
            }
        }

        $(
            impl From<$variant> for Message {
                fn from(message: $variant) -> Message {
                    Message::$variant(message)
                }
            }
        )*
    };
    (@reply none) => { None };
    (@reply $reply:ident) => { Some(MessageKind::$reply) };
}

message_kinds! {
    UpdateRequest = 1, UpdateReply;
    UpdateReply = 2, none;
    BatchReadRequest = 3, BatchReadReply;
    BatchReadReply = 4, none;
    QueryLastChunkRequest = 5, QueryLastChunkReply;
    QueryLastChunkReply = 6, none;
    RemoveChunksRequest = 7, RemoveChunksReply;
    RemoveChunksReply = 8, none;
    GetChunkMetasRequest = 9, GetChunkMetasReply;
    GetChunkMetasReply = 10, none;
    Ping = 11, Pong;
    Pong = 12, none;
}

impl MessageKind {
    pub fn is_request(self) -> bool {
        self.reply_kind().is_some()
    }
}

/// What every message type implements; [`Message`] dispatches to it.
pub(crate) trait WireMessage: Sized {
    fn encoded_len(&self) -> usize;
    fn encode(&self, out: &mut impl BufMut);
    /// Parses the byte layout only; [`WireMessage::validate`] runs after.
    fn decode(bytes: &[u8]) -> Result<Self, MessageError>;
    fn validate(&self) -> Result<(), MessageError> {
        Ok(())
    }
    /// Default: the kind carries no payload.
    fn check_payload(&self, payload_len: u32, _payload_crc32c: u32) -> Result<(), MessageError> {
        expect_payload_len(0, payload_len)
    }
}

pub(crate) fn expect_payload_len(expected: u64, actual: u32) -> Result<(), MessageError> {
    if expected == u64::from(actual) {
        Ok(())
    } else {
        Err(MessageError::PayloadLength { expected, actual: u64::from(actual) })
    }
}

/// The result a reply reports. Expected failures (stale chain version, chunk not committed, ...)
/// travel here as data; they are never decode errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Outcome {
    #[default]
    Ok,
    Failed(ErrorCode),
}

impl Outcome {
    pub fn is_ok(self) -> bool {
        self == Outcome::Ok
    }

    pub fn error(self) -> Option<ErrorCode> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(code) => Some(code),
        }
    }

    /// 0 for success, else the stable error code.
    pub(crate) fn to_wire(self) -> u16 {
        match self {
            Outcome::Ok => 0,
            Outcome::Failed(code) => code.code(),
        }
    }

    /// An unknown code is a decode error rather than a guess: a reply must never be read as a
    /// different outcome than the one sent. New codes that replies may carry therefore ship to
    /// readers before writers.
    pub(crate) fn from_wire(field: &'static str, value: u16) -> Result<Outcome, MessageError> {
        if value == 0 {
            return Ok(Outcome::Ok);
        }
        ErrorCode::from_code(value)
            .map(Outcome::Failed)
            .ok_or(MessageError::UnknownValue { field, value: u64::from(value) })
    }
}

impl From<Result<(), ErrorCode>> for Outcome {
    fn from(result: Result<(), ErrorCode>) -> Self {
        match result {
            Ok(()) => Outcome::Ok,
            Err(code) => Outcome::Failed(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_pair() {
        for &kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_code(kind.code()), Some(kind));
            match kind.reply_kind() {
                Some(reply) => {
                    assert_eq!(kind.code() % 2, 1, "{kind:?}");
                    assert_eq!(reply.code(), kind.code() + 1);
                    assert!(!reply.is_request());
                }
                None => assert_eq!(kind.code() % 2, 0, "{kind:?}"),
            }
        }
        assert_eq!(MessageKind::from_code(0), None);
        assert_eq!(MessageKind::from_code(13), None);
    }

    #[test]
    fn outcome_round_trips_every_code() {
        assert_eq!(Outcome::from_wire("o", 0), Ok(Outcome::Ok));
        for &code in ErrorCode::ALL {
            let outcome = Outcome::Failed(code);
            assert_eq!(Outcome::from_wire("o", outcome.to_wire()), Ok(outcome));
        }
        assert_eq!(
            Outcome::from_wire("o", 65535),
            Err(MessageError::UnknownValue { field: "o", value: 65535 })
        );
    }
}
