//! The openraft type configuration of the fabric and the node record Raft keeps per member.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{CommandResult, NodeId, Proposal};

/// What Raft remembers about a member: where to reach it and where it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricNode {
    /// WAN (QUIC) address, `ip:port`.
    pub addr: String,
    /// Admin API address, `ip:port`.
    pub admin_addr: String,
    pub site: String,
}

impl fmt::Display for FabricNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.site, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The fabric's Raft types: proposals in, command results out, snapshots as bytes.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = NodeId,
        Node = FabricNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, FabricNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, FabricNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, FabricNode>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
