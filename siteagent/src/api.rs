//! The admin API's JSON shapes, shared by the agent (server) and `sitectl` (client).

use std::collections::BTreeMap;

use std::net::IpAddr;

use consensus::state::{
    Capacity, Health, HostState, InstanceState, ServiceSpec, SiteAdmin, SiteState,
};
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
    /// The membership is not mid-change and this agent has applied it.
    #[serde(default)]
    pub membership_settled: bool,
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`.
    pub raft_state: String,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Replicated state revision (number of applied changes).
    pub revision: u64,
    pub hosts: Vec<HostSummary>,
    /// This agent's ownership lease: whether it may still vouch for what it serves.
    pub lease_valid: bool,
    /// Milliseconds of lease left.
    pub lease_remaining_ms: u64,
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
    /// `active`, `maintenance`, `down` or `lost`.
    pub state: SiteState,
    /// Health verdict of the quorum, and since when (unix ms).
    pub health: Health,
    pub health_since_ms: u64,
    /// What operators declared, and since when (unix ms).
    pub admin: SiteAdmin,
    pub admin_since_ms: u64,
    pub hosts: usize,
    pub hosts_up: usize,
    /// Raft voters located in this site.
    pub voters: Vec<u64>,
    /// Services this site owns.
    pub services: Vec<String>,
}

/// `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub id: u64,
    pub site: String,
    pub address: String,
    pub admin_address: String,
    /// Where its workloads are reachable.
    pub addresses: Vec<IpAddr>,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    /// `up`, `draining` or `down`.
    pub state: HostState,
    pub health: Health,
    /// Unix ms of the last health change.
    pub health_since_ms: u64,
    pub drained: bool,
    /// Unix ms of registration.
    pub registered_ms: u64,
    /// `voter`, `learner` or `none`.
    pub raft: String,
    /// Instances on this host: `service (state, epoch N)`.
    pub instances: Vec<String>,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub owner: Option<String>,
    pub epoch: u64,
    /// Unix ms since the owner last changed.
    pub owner_since_ms: u64,
    /// A planned move in progress.
    pub target: Option<String>,
    /// Unix ms at which it was deleted, while its instances are still being stopped.
    #[serde(default)]
    pub deleting_since_ms: Option<u64>,
    /// Fully qualified DNS name, if it has one.
    pub dns_name: Option<String>,
    pub instances: Vec<InstanceView>,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub host: u64,
    pub site: Option<String>,
    pub epoch: u64,
    pub state: InstanceState,
    pub since_ms: u64,
    /// `ip:port` endpoints of this instance.
    pub endpoints: Vec<String>,
}

/// Body of the operations (`drain`, `maintenance`, `switchover`, `failover`, `failback`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    /// Only compute and return the plan.
    #[serde(default)]
    pub dry_run: bool,
    /// Target site (`switchover`).
    #[serde(default)]
    pub to: Option<String>,
    /// Act even when the fabric sees no reason to (`failover` of a site that looks alive).
    #[serde(default)]
    pub force: bool,
}

/// Answer of an operation: what it changes and the plan that follows from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationResult {
    pub dry_run: bool,
    /// The change itself, in words.
    pub change: String,
    /// The planner's steps that follow, in order (as the dry run predicts them).
    pub plan: Vec<PlanStep>,
    /// State revision after the change (absent on a dry run).
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub action: failover::planner::Action,
    pub description: String,
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
