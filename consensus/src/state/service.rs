//! Services: what an operator declares (a [`ServiceSpec`]) and where the fabric runs it (owner
//! site, epoch, instances).
//!
//! Invariants:
//! - a service's `epoch` only goes up, by one, each time a site is assigned ownership; and it
//!   never goes backwards for a *name*, also across delete and re-create: a deleted name leaves
//!   a [`Tombstone`] with its last epoch, and a re-created service starts from there, so its
//!   first owner gets an epoch above every epoch the name ever had. We keep a per-name tombstone
//!   rather than one fabric-wide counter so that a service's epochs stay small and dense (the
//!   first owner of a new name is epoch 1), at the cost of one small entry per name ever
//!   deleted;
//! - deleting is a revocation, like a move away: a service with instances stays in the state,
//!   [`Service::deleting`], with every instance revoked, until each is confirmed stopped or
//!   given up after its lease ran out; only then is it removed. While it is deleting it cannot
//!   be owned, placed or re-created (a create is refused with
//!   [`CommandError::ServiceDeleting`], naming the wait), so an old holder that may still serve
//!   behind a partition never overlaps a new one;
//! - an owner is assigned only when the service has no instance left anywhere, so instances of
//!   two sites never coexist in the state; within one ownership, a spec update
//!   ([`Command::UpdateService`]) that changes what an instance runs bumps the epoch without
//!   touching the instances, so instances of the owner's epochs `owner_epoch..=epoch` (old and
//!   new spec, same site) may coexist while the planner replaces the old ones one at a time;
//! - every instance command names the epoch it is about, and a command for another epoch is
//!   refused ([`CommandError::StaleEpoch`]): the epoch is the fencing token;
//! - every placement of a service gets its own number ([`Instance::placement`]), and a host's
//!   report ([`Command::InstanceRunning`], [`Command::InstanceStopped`]) names it: a report
//!   about an earlier placement on the same host under the same epoch (replayed, or late) is
//!   refused ([`CommandError::StalePlacement`]) and cannot touch the newer one.
//!
//! Decisions (when to revoke, where to place) are not made here but by the planner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::Command;
use super::{Capacity, CommandError, NodeId, invalid, validate_name};

/// What an operator declares. Parsed from TOML (`sitectl service create --file`) or JSON (admin
/// API); unknown fields are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1–63 of a-z, 0-9 and inner `-`.
    pub name: String,
    /// How to run one instance.
    pub kind: WorkloadKind,
    pub placement: Placement,
    /// Name in the fabric's DNS zone, relative to the zone (`web` → `web.<zone>`).
    #[serde(default)]
    pub dns_name: Option<String>,
    /// What one instance needs from its host.
    #[serde(default)]
    pub resources: Capacity,
    /// Volumes the service writes to (at most one instance then); the service runs where their
    /// primary copy is.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Most data a failover may lose: a replica that lags by more is not promoted unless the
    /// operator forces it. `None`: any lag is accepted.
    #[serde(default, with = "humantime_serde")]
    pub max_rpo: Option<std::time::Duration>,
}

/// The workload driver and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum WorkloadKind {
    /// A process started and supervised by the host's agent.
    Process(ProcessSpec),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program to run (a path, or a name looked up in the agent's PATH).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// TCP port the service listens on at its host's addresses.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Sites in priority order: the service lives in the first usable one.
    pub sites: Vec<String>,
    /// Instances to run in the owning site, each on its own host.
    #[serde(default = "one")]
    pub instances: u32,
    /// Services whose instances must not share a host with this one's.
    #[serde(default)]
    pub anti_affinity: Vec<String>,
}

fn one() -> u32 {
    1
}

/// Most instances one service may ask for.
pub const MAX_INSTANCES: u32 = 64;

/// A service as the fabric runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub spec: ServiceSpec,
    pub created_ms: u64,
    /// Fencing token: bumps on every ownership assignment, and on a spec update that changes
    /// what an instance runs. Instances carry the epoch they were placed in.
    pub epoch: u64,
    /// The epoch at which the current owner was assigned. Instances of epochs from it up to
    /// `epoch` belong to the current ownership: after a spec update the ones below `epoch` keep
    /// running (the previous spec) until the planner replaces them, one at a time.
    pub owner_epoch: u64,
    /// Site that holds the ownership lease, if any yet.
    pub owner: Option<String>,
    pub owner_since_ms: u64,
    /// A site the operator asked to move to (switchover, failback); cleared once it owns it.
    pub target: Option<String>,
    /// Instances by host.
    pub instances: BTreeMap<NodeId, Instance>,
    /// Unix ms at which an operator deleted it, while its revoked instances still hold their
    /// slots; the service is removed when the last one is stopped or given up.
    pub deleting: Option<u64>,
    /// How many instances were ever placed; the next one is placement `placements + 1`.
    pub placements: u64,
}

/// What a deleted name leaves behind, so that the name's epochs never go backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The last epoch the name had; a re-created service continues from it.
    pub epoch: u64,
    /// Unix ms of the removal (when its last instance was stopped or given up).
    pub removed_ms: u64,
}

/// One instance of a service on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub host: NodeId,
    pub epoch: u64,
    /// Which placement of its service this is (1, 2, …; never reused by the service). Host
    /// reports name it, so a late report about an earlier placement on the same host and epoch
    /// cannot act on this one.
    pub placement: u64,
    pub state: InstanceState,
    pub since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Placed; the host's agent has not reported it running yet.
    Assigned,
    /// The host's agent started it under its lease.
    Running,
    /// Must stop; it still occupies its slot until its host confirms the stop or the lease
    /// it may still hold has certainly run out.
    Revoked,
}

impl Instance {
    /// Placed or running, i.e. not revoked.
    pub fn live(&self) -> bool {
        self.state != InstanceState::Revoked
    }
}

impl ServiceSpec {
    /// A process service with one instance, no resources and its name as DNS name.
    pub fn process(name: &str, sites: &[&str], command: &str, port: u16) -> Self {
        ServiceSpec {
            name: name.into(),
            kind: WorkloadKind::Process(ProcessSpec {
                command: command.into(),
                args: vec![],
                env: BTreeMap::new(),
                port,
            }),
            placement: Placement {
                sites: sites.iter().map(|s| s.to_string()).collect(),
                instances: 1,
                anti_affinity: vec![],
            },
            dns_name: Some(name.into()),
            resources: Capacity::default(),
            volumes: vec![],
            max_rpo: None,
        }
    }

    /// Checks the spec on its own; the state checks sites and names against what exists.
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_name("service name", &self.name)?;
        match &self.kind {
            WorkloadKind::Process(p) => {
                if p.command.trim().is_empty() {
                    return Err(invalid("kind.process.command", "must not be empty"));
                }
                if p.port == 0 {
                    return Err(invalid("kind.process.port", "must be 1 to 65535"));
                }
                if let Some(k) = p.env.keys().find(|k| k.is_empty() || k.contains('=')) {
                    return Err(invalid(
                        "kind.process.env",
                        format!("`{k}` is not a variable name"),
                    ));
                }
            }
        }
        let sites = &self.placement.sites;
        if sites.is_empty() {
            return Err(invalid("placement.sites", "name at least one site"));
        }
        for (i, s) in sites.iter().enumerate() {
            if sites[..i].contains(s) {
                return Err(invalid("placement.sites", format!("`{s}` is listed twice")));
            }
        }
        if !(1..=MAX_INSTANCES).contains(&self.placement.instances) {
            return Err(invalid(
                "placement.instances",
                format!("must be 1 to {MAX_INSTANCES}"),
            ));
        }
        for other in &self.placement.anti_affinity {
            validate_name("placement.anti_affinity", other)?;
        }
        if let Some(name) = &self.dns_name {
            validate_dns_name(name)?;
        }
        Ok(())
    }
}

impl ServiceSpec {
    /// Whether an instance running `self` must be replaced to run `new`: what it runs (command,
    /// arguments, environment, port) changed. Placement, DNS name and resources apply without a
    /// restart.
    pub fn needs_restart_for(&self, new: &ServiceSpec) -> bool {
        self.kind != new.kind
    }
}

/// A name relative to the fabric zone: dot-separated labels, each a valid name.
fn validate_dns_name(name: &str) -> Result<(), CommandError> {
    if name.ends_with('.') {
        return Err(invalid(
            "dns_name",
            format!("`{name}` must be relative to the fabric zone (no trailing dot)"),
        ));
    }
    for label in name.split('.') {
        validate_name("dns_name", label)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, sites: &[&str]) -> ServiceSpec {
        ServiceSpec::process(name, sites, "fabric-demo", 8080)
    }

    #[test]
    fn spec_parses_from_toml_and_refuses_unknown_fields() {
        let text = r#"
            name = "web"
            dns_name = "web"
            [kind.process]
            command = "fabric-demo"
            port = 8080
            [placement]
            sites = ["s1", "s2"]
        "#;
        let s: ServiceSpec = toml::from_str(text).expect("parses");
        assert_eq!(s.placement.instances, 1);
        s.validate().expect("valid");
        let bad = text.replace("port = 8080", "port = 8080\nprot = 1");
        let err = toml::from_str::<ServiceSpec>(&bad).expect_err("unknown field");
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn spec_validation_names_the_field() {
        let mut s = spec("web", &["s1"]);
        s.placement.sites.clear();
        assert!(
            s.validate()
                .expect_err("no sites")
                .to_string()
                .contains("placement.sites")
        );
        let mut s = spec("web", &["s1", "s1"]);
        assert!(s.validate().is_err());
        s.placement.sites.pop();
        s.placement.instances = 0;
        assert!(
            s.validate()
                .expect_err("instances")
                .to_string()
                .contains("placement.instances")
        );
        let mut s = spec("web", &["s1"]);
        s.dns_name = Some("web.fabric.test.".into());
        assert!(
            s.validate()
                .expect_err("fqdn")
                .to_string()
                .contains("dns_name")
        );
        let mut s = spec("web", &["s1"]);
        s.dns_name = Some("api.v2".into());
        s.validate().expect("multi-label relative name");
    }
}
