//! What members say to each other: the four messages and the gossip they carry.
//!
//! Invariant: every message carries gossip; the wire form is serde (the shell picks the codec).
//!
//! It does not decide what to send or how to apply what was received (see [`super::Swim`]).

use consensus::NodeId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

/// One piece of gossip: what someone believes about `member` at `incarnation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub member: NodeId,
    pub incarnation: u64,
    pub state: MemberState,
    pub from: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Ping {
        seq: u64,
        gossip: Vec<Update>,
    },
    /// "Probe `target` for me and tell me": the receiver pings target and forwards the ack.
    PingReq {
        seq: u64,
        target: NodeId,
        gossip: Vec<Update>,
    },
    Ack {
        seq: u64,
        gossip: Vec<Update>,
    },
    /// Lifeguard: the intermediary of a PingReq got no ack from the target in time.
    Nack {
        seq: u64,
        gossip: Vec<Update>,
    },
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::PingReq { .. } => "ping-req",
            Message::Ack { .. } => "ack",
            Message::Nack { .. } => "nack",
        }
    }

    pub(super) fn into_gossip(self) -> Vec<Update> {
        match self {
            Message::Ping { gossip, .. }
            | Message::PingReq { gossip, .. }
            | Message::Ack { gossip, .. }
            | Message::Nack { gossip, .. } => gossip,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub message: Message,
}
