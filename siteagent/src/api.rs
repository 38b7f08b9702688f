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
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`; `relayed` on a host that is no
    /// Raft member (it follows the state through a relay).
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
    /// For a spec update: every field that changes, old → new.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spec_changes: Vec<SpecChange>,
}

/// One field of a service spec that an update changes; absent values are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecChange {
    /// Dotted path, as in the spec file: `kind.process.env.GREETING`, `placement.instances`.
    pub field: String,
    /// The value now, as JSON.
    pub old: String,
    /// The value after the update, as JSON.
    pub new: String,
}

impl SpecChange {
    /// Every leaf field whose value differs between `old` and `new`, in path order. Lists are
    /// compared whole (`placement.sites`, `kind.process.args`).
    pub fn between(
        old: &consensus::state::ServiceSpec,
        new: &consensus::state::ServiceSpec,
    ) -> Vec<SpecChange> {
        fn flatten(
            prefix: &str,
            v: &serde_json::Value,
            out: &mut std::collections::BTreeMap<String, String>,
        ) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let path = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        flatten(&path, v, out);
                    }
                }
                leaf => {
                    out.insert(prefix.to_string(), leaf.to_string());
                }
            }
        }
        let fields = |spec| {
            let mut out = std::collections::BTreeMap::new();
            if let Ok(v) = serde_json::to_value(spec) {
                flatten("", &v, &mut out);
            }
            out
        };
        let (old, new) = (fields(old), fields(new));
        let null = "null".to_string();
        old.keys()
            .chain(new.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|field| {
                let (o, n) = (old.get(field), new.get(field));
                (o != n).then(|| SpecChange {
                    field: field.clone(),
                    old: o.unwrap_or(&null).clone(),
                    new: n.unwrap_or(&null).clone(),
                })
            })
            .collect()
    }
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
    /// `voter` or `learner` (Raft members), or `host` (registered, follows the state through
    /// a relay).
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

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::state::{ServiceSpec, WorkloadKind};

    #[test]
    fn spec_changes_list_every_changed_leaf_with_absent_values_as_null() {
        let old = ServiceSpec::process("web", &["s1", "s2"], "fabric-demo", 8080);
        assert!(SpecChange::between(&old, &old).is_empty());
        let mut new = old.clone();
        let WorkloadKind::Process(p) = &mut new.kind;
        p.env.insert("NOTE".into(), "v2".into());
        p.port = 8081;
        new.placement.instances = 2;
        new.dns_name = None;
        let changes: Vec<(String, String, String)> = SpecChange::between(&old, &new)
            .into_iter()
            .map(|c| (c.field, c.old, c.new))
            .collect();
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            changes,
            [
                s("dns_name", "\"web\"", "null"),
                s("kind.process.env.NOTE", "null", "\"v2\""),
                s("kind.process.port", "8080", "8081"),
                s("placement.instances", "1", "2"),
            ]
        );
    }
}

/// `GET /v1/volumes`: a volume with every copy and where it is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub primary: String,
    pub epoch: u64,
    pub uid: u64,
    /// The service that writes to it, if any.
    pub service: Option<String>,
    /// Where the primary copy is served: `nbd://ip:port/name`, when a host serves it.
    pub nbd: Option<String>,
    /// Open NBD connections on the primary, as last reported.
    pub writers: u32,
    /// The host whose agent last reported as the primary (under this epoch): it holds the
    /// primary copy open.
    pub reporter: Option<u64>,
    pub copies: Vec<CopyView>,
}

/// One site's copy of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyView {
    pub site: String,
    /// The host whose agent holds it now.
    pub host: Option<u64>,
    pub mode: consensus::state::ReplicationMode,
    pub state: consensus::state::CopyState,
    pub since_ms: u64,
    pub lag: consensus::state::Lag,
    /// Unix ms of the primary's last report about it (0: never).
    pub reported_ms: u64,
}

/// Body of `POST /v1/volumes/{name}/promote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Site whose copy becomes the primary.
    pub site: String,
    /// Promote even a copy that may lack acknowledged writes (recorded in the event).
    #[serde(default)]
    pub force: bool,
}
