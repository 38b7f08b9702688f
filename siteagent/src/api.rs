//! The admin API's JSON shapes, shared by the agent (server) and `sitectl` (client).

use std::collections::BTreeMap;

use consensus::state::{Capacity, HostState, SiteState};
use serde::{Deserialize, Serialize};

use crate::config::AgentRole;

/// `GET /v1/status`: this agent's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Node id of the agent that answered.
    pub node: u64,
    pub site: String,
    pub roles: Vec<AgentRole>,
    /// Current Raft leader, if one is known.
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`.
    pub raft_state: String,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Replicated state revision (number of applied changes).
    pub revision: u64,
    pub hosts: Vec<HostSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub id: u64,
    pub site: String,
    pub state: HostState,
}

/// `GET /v1/sites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteView {
    pub name: String,
    pub priority: u32,
    pub state: SiteState,
    /// Unix ms of the last state change.
    pub since_ms: u64,
    pub hosts: usize,
    pub hosts_up: usize,
    /// Raft voters located in this site.
    pub voters: Vec<u64>,
}

/// `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub id: u64,
    pub site: String,
    pub address: String,
    pub admin_address: String,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub state: HostState,
    /// Unix ms of the last state change.
    pub since_ms: u64,
    /// Unix ms of the last liveness report.
    pub last_report_ms: u64,
    /// `voter`, `learner` or `none`.
    pub raft: String,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub revision: u64,
    pub at_ms: u64,
    pub actor: String,
    pub message: String,
}

/// `POST /v1/sites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteUpsert {
    pub name: String,
    pub priority: u32,
}

/// `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventNote {
    pub message: String,
}

/// Answer of every successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// State revision after the write.
    pub revision: u64,
}

/// `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node: u64,
    pub site: String,
    pub address: String,
    pub admin_address: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `rejected` (the command was invalid), `unavailable` (no leader / no quorum), `bad_request`,
    /// `not_found`, `internal`.
    pub kind: String,
    pub error: String,
}
