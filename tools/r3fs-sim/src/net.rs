//! The simulated network: endpoints, what travels between them, and partitions.
//!
//! Every message is scheduled for delivery after a random delay; a delay spike holds one message
//! back so that later ones on the same link overtake it (reordering). Loss and corruption are
//! decided when a message is sent; a partition cuts a directed link and is checked when a message
//! arrives, so messages in flight when it starts are lost too (a broken connection).

use r3fs_craq::{ChainRouting, PeerMessage, ReadOutcome, ReplyToken, WriteOutcome};
use r3fs_craq::{ReadRequest, WriteRequest};
use r3fs_types::{ChainVersion, LocalTargetState, TargetId};
use std::collections::BTreeMap;
use std::fmt;

/// Who sends and receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Node(usize),
    Client(usize),
    Mgmtd,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Node(n) => write!(f, "node{n}"),
            Endpoint::Client(c) => write!(f, "client{c}"),
            Endpoint::Mgmtd => f.write_str("mgmtd"),
        }
    }
}

/// One target's line in a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetReport {
    pub target: TargetId,
    pub state: LocalTargetState,
    /// The chain version an up-to-date claim was made at: when the daemon saw the target serving
    /// or finished its resync. Mgmtd trusts the claim only at that chain version.
    pub claimed_at: ChainVersion,
}

/// A client request as it travels to a target.
#[derive(Clone, Debug)]
pub enum Request {
    Write(WriteRequest),
    Read(ReadRequest),
}

#[derive(Clone, Debug)]
pub enum Payload {
    /// Between two replicas of one chain.
    Peer {
        from: TargetId,
        to: TargetId,
        message: PeerMessage,
    },
    /// Client to target.
    Request {
        client: usize,
        to: TargetId,
        token: ReplyToken,
        request: Request,
    },
    WriteReply {
        client: usize,
        token: ReplyToken,
        outcome: WriteOutcome,
    },
    ReadReply {
        client: usize,
        token: ReplyToken,
        outcome: ReadOutcome,
    },
    /// Storage node to mgmtd; `version` grows with every heartbeat of the node, across restarts
    /// (registration returns the last one, as r3fs-mgmtd does).
    Heartbeat {
        node: usize,
        version: u64,
        states: Vec<TargetReport>,
    },
    /// Mgmtd to a node: the heartbeat `version` was accepted; carries the node's chains, which
    /// the daemon applies before it extends its lease.
    HeartbeatReply {
        version: u64,
        routings: Vec<ChainRouting>,
    },
    /// Mgmtd to a node or a client: pushed to nodes on every change, sent to clients on request.
    Routing {
        routings: Vec<ChainRouting>,
    },
    /// Client to mgmtd.
    RoutingRequest {
        client: usize,
    },
}

impl Payload {
    /// A short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Peer { message, .. } => match message {
                PeerMessage::Update(_) => "update",
                PeerMessage::Ack(_) => "ack",
                PeerMessage::Refused(_) => "refused",
                PeerMessage::DumpMetaRequest { .. } => "dump-meta",
                PeerMessage::DumpMetaReply { .. } => "dump-meta-reply",
                PeerMessage::SyncChunk(_) => "sync-chunk",
                PeerMessage::SyncAck { .. } => "sync-ack",
                PeerMessage::SyncRefused { .. } => "sync-refused",
                PeerMessage::SyncDone { .. } => "sync-done",
                PeerMessage::SyncDoneAck { .. } => "sync-done-ack",
                PeerMessage::FetchChunk { .. } => "fetch-chunk",
                PeerMessage::FetchChunkReply(_) => "fetch-chunk-reply",
            },
            Payload::Request { request: Request::Write(_), .. } => "write",
            Payload::Request { request: Request::Read(_), .. } => "read",
            Payload::WriteReply { .. } => "write-reply",
            Payload::ReadReply { .. } => "read-reply",
            Payload::Heartbeat { .. } => "heartbeat",
            Payload::HeartbeatReply { .. } => "heartbeat-reply",
            Payload::Routing { .. } => "routing",
            Payload::RoutingRequest { .. } => "routing-request",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Message {
    pub from: Endpoint,
    pub to: Endpoint,
    pub payload: Payload,
}

/// Directed links currently cut. Partitions may overlap, so each link counts the partitions that
/// cut it and is whole again only when all of them healed.
#[derive(Debug, Default)]
pub struct Partitions {
    next_id: u64,
    active: BTreeMap<u64, Vec<(Endpoint, Endpoint)>>,
    cut: BTreeMap<(Endpoint, Endpoint), u32>,
}

impl Partitions {
    /// Cuts `links` until [`Partitions::heal`] with the returned id.
    pub fn start(&mut self, links: Vec<(Endpoint, Endpoint)>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        for link in &links {
            *self.cut.entry(*link).or_default() += 1;
        }
        self.active.insert(id, links);
        id
    }

    pub fn heal(&mut self, id: u64) {
        let Some(links) = self.active.remove(&id) else { return };
        for link in links {
            if let Some(count) = self.cut.get_mut(&link) {
                *count -= 1;
                if *count == 0 {
                    self.cut.remove(&link);
                }
            }
        }
    }

    pub fn heal_all(&mut self) {
        let ids: Vec<u64> = self.active.keys().copied().collect();
        for id in ids {
            self.heal(id);
        }
        debug_assert!(self.cut.is_empty());
    }

    pub fn blocks(&self, from: Endpoint, to: Endpoint) -> bool {
        self.cut.contains_key(&(from, to))
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }
}

/// Both directions between every pair drawn from `a` and `b`.
pub fn links_between(a: &[Endpoint], b: &[Endpoint]) -> Vec<(Endpoint, Endpoint)> {
    let mut links = Vec::new();
    for &x in a {
        for &y in b {
            if x != y {
                links.push((x, y));
                links.push((y, x));
            }
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_partitions_heal_independently() {
        let mut p = Partitions::default();
        let a = p.start(links_between(&[Endpoint::Node(0)], &[Endpoint::Mgmtd]));
        let b = p.start(vec![(Endpoint::Node(0), Endpoint::Mgmtd)]);
        assert!(p.blocks(Endpoint::Node(0), Endpoint::Mgmtd));
        assert!(p.blocks(Endpoint::Mgmtd, Endpoint::Node(0)));
        p.heal(a);
        assert!(p.blocks(Endpoint::Node(0), Endpoint::Mgmtd), "b still cuts it");
        assert!(!p.blocks(Endpoint::Mgmtd, Endpoint::Node(0)));
        p.heal(b);
        assert!(!p.blocks(Endpoint::Node(0), Endpoint::Mgmtd));
        assert_eq!(p.active(), 0);
    }
}
