//! The fabric's replicated state and the only way to change it: a validated [`Command`].
//!
//! Invariant: [`FabricState::apply`] is deterministic. It reads no clock and no environment; the
//! proposer stamps wall-clock time into the [`Proposal`] before it enters the log, so every replica
//! computes the same state from the same log. A command that fails validation changes nothing and
//! returns a typed [`CommandError`]; the entry still occupies its log slot.
//!
//! This module does not decide anything (no health verdicts, no placement): it records what the
//! decision code and operators propose.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

mod apply_service;
mod apply_volume;
mod service;
mod volume;

pub use service::{
    Instance, InstanceState, MAX_INSTANCES, Placement, ProcessSpec, Service, ServiceSpec,
    Tombstone, WorkloadKind,
};
pub use volume::{
    CopyReport, CopyState, Lag, MAX_VOLUME_SIZE, MIN_VOLUME_SIZE, ReplicaSpec, ReplicationMode,
    Volume, VolumeCopy, VolumeSpec,
};

/// Raft node id; every agent has one, and a host's id is its agent's node id.
pub type NodeId = u64;

/// How many events the state keeps; older ones are dropped first.
pub const MAX_EVENTS: usize = 1000;

/// A data centre.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    /// Lower comes first when a service picks a site.
    pub priority: u32,
    /// Verdict of the health quorum: down when a majority of the other sites cannot reach it.
    pub health: Health,
    /// Wall-clock time (unix ms) of the last health change.
    pub health_since_ms: u64,
    /// What operators declared.
    pub admin: SiteAdmin,
    pub admin_since_ms: u64,
}

/// Health verdict of a host or a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// A site's operator-declared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteAdmin {
    /// Takes services.
    Active,
    /// Being evacuated or worked on: owns no services.
    Maintenance,
    /// Declared lost by an operator (`sitectl failover --site`): treated as down whatever the
    /// detectors say, until an operator activates it again.
    Lost,
}

/// What a site looks like to operators: its admin state, or `down` when the quorum says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteState {
    Active,
    Maintenance,
    Down,
    Lost,
}

impl Site {
    /// May own services: healthy and active.
    pub fn usable(&self) -> bool {
        self.health == Health::Up && self.admin == SiteAdmin::Active
    }

    pub fn state(&self) -> SiteState {
        match (self.admin, self.health) {
            (SiteAdmin::Lost, _) => SiteState::Lost,
            (_, Health::Down) => SiteState::Down,
            (SiteAdmin::Maintenance, _) => SiteState::Maintenance,
            (SiteAdmin::Active, Health::Up) => SiteState::Active,
        }
    }
}

/// A machine that runs an agent with the `host` role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: NodeId,
    pub site: String,
    /// The agent's WAN address (`ip:port`).
    pub address: String,
    /// The agent's admin API address (`ip:port`).
    pub admin_address: String,
    /// Addresses at which this host's workloads are reachable (IPv4 and/or IPv6).
    pub addresses: Vec<IpAddr>,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    /// Verdict of the host's site peers (or of the site's health when the site is down).
    pub health: Health,
    /// Wall-clock time (unix ms) of the last health change.
    pub health_since_ms: u64,
    /// Drained by an operator: takes no new instances and hands its instances over.
    pub drained: bool,
    pub drained_since_ms: u64,
    pub registered_ms: u64,
}

/// What a host looks like to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
    Draining,
    Down,
}

impl Host {
    pub fn state(&self) -> HostState {
        match (self.health, self.drained) {
            (Health::Down, _) => HostState::Down,
            (Health::Up, true) => HostState::Draining,
            (Health::Up, false) => HostState::Up,
        }
    }

    /// May take new instances.
    pub fn schedulable(&self) -> bool {
        self.health == Health::Up && !self.drained
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// CPU in thousandths of a core.
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_mib: u64,
}

impl Capacity {
    pub fn plus(self, o: Capacity) -> Capacity {
        Capacity {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
        }
    }

    /// Fits within `limit` on every dimension.
    pub fn fits(self, limit: Capacity) -> bool {
        self.cpu_millis <= limit.cpu_millis && self.memory_mib <= limit.memory_mib
    }
}

/// One observer's verdict on one subject, as last reported (only changes are reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub up: bool,
    pub since_ms: u64,
}

/// What a site's own failure detector (SWIM, inside the site) says about the site's agents, as
/// the site's reporter last wrote it: one write per change of the dead set, whatever the number
/// of agents that noticed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SiteView {
    /// The agent that wrote it (one of the site's own).
    pub reporter: NodeId,
    /// Agents of the site its detector declared dead.
    pub dead: BTreeSet<NodeId>,
    pub since_ms: u64,
}

/// One line of the bounded event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub at_ms: u64,
    pub actor: String,
    pub message: String,
}

/// The ownership lease's timing. Fencing is safe only when every agent uses the same: a holder
/// serves `lease - margin` after a confirmation while the planner reassigns `lease + margin` after
/// a revocation. The first agent to register records its terms; any other agent must match them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTerms {
    pub lease_ms: u64,
    pub margin_ms: u64,
}

impl LeaseTerms {
    /// Fencing needs a non-zero margin and a lease of more than twice it.
    pub fn is_safe(&self) -> bool {
        self.margin_ms > 0 && self.lease_ms > self.margin_ms.saturating_mul(2)
    }
}

impl fmt::Display for LeaseTerms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lease = {}ms, lease_margin = {}ms",
            self.lease_ms, self.margin_ms
        )
    }
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricState {
    /// Number of commands that changed the state; bumps by one on each.
    pub revision: u64,
    pub sites: BTreeMap<String, Site>,
    pub hosts: BTreeMap<NodeId, Host>,
    pub services: BTreeMap<String, Service>,
    /// Each site's view of its own agents, by site.
    #[serde(default)]
    pub site_views: BTreeMap<String, SiteView>,
    /// Cross-site observations: by observed site, then by observer (a few agents per site).
    #[serde(default)]
    pub site_observations: BTreeMap<String, BTreeMap<NodeId, Observation>>,
    pub events: VecDeque<Event>,
    /// The lease timing every agent agreed to; `None` until the first agent registers.
    pub lease_terms: Option<LeaseTerms>,
    /// Deleted service names with their last epoch; a name is here or in `services`, never in
    /// both.
    pub tombstones: BTreeMap<String, Tombstone>,
    /// Block volumes by name.
    pub volumes: BTreeMap<String, Volume>,
}

/// A command with the facts the proposer stamped on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Proposer's wall clock, unix ms.
    pub at_ms: u64,
    /// Who asked: `node 3`, `operator alice`, `planner (node 1)`.
    pub actor: String,
    pub command: Command,
    /// For the leader's plans and verdicts: the Raft term they were computed in. The state
    /// machine refuses such a proposal carried by a log entry of any other term
    /// ([`Proposal::check_term`]), so a plan of a deposed leader, forwarded to or re-proposed by
    /// a later leader, is never applied. `None` for everything else (operators, host reports).
    #[serde(default)]
    pub term: Option<u64>,
}

impl Proposal {
    /// A proposal valid in any term.
    pub fn new(at_ms: u64, actor: impl Into<String>, command: Command) -> Self {
        Self {
            at_ms,
            actor: actor.into(),
            command,
            term: None,
        }
    }

    /// Refuses a proposal planned in another term than the one of the log entry carrying it.
    pub fn check_term(&self, entry_term: u64) -> Result<(), CommandError> {
        match self.term {
            Some(planned) if planned != entry_term => Err(CommandError::PlannedInOtherTerm {
                planned,
                entry: entry_term,
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} by {}", self.command, self.actor)
    }
}

/// Every change to [`FabricState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a site or change its priority.
    UpsertSite {
        name: String,
        priority: u32,
    },
    /// Create a site if it does not exist; an existing site is left as it is.
    EnsureSite {
        name: String,
        priority: u32,
    },
    /// The health quorum's verdict on a site changed.
    SetSiteHealth {
        name: String,
        health: Health,
        reason: String,
    },
    /// Operator: maintenance, declared lost, or active again.
    SetSiteAdmin {
        name: String,
        admin: SiteAdmin,
    },
    /// Register a host or refresh its addresses, capacity and labels.
    RegisterHost {
        id: NodeId,
        site: String,
        address: String,
        admin_address: String,
        addresses: Vec<IpAddr>,
        capacity: Capacity,
        labels: BTreeMap<String, String>,
    },
    /// The health quorum's verdict on a host changed.
    SetHostHealth {
        id: NodeId,
        health: Health,
        reason: String,
    },
    /// Operator: drain a host (or undrain it).
    SetHostDrain {
        id: NodeId,
        drained: bool,
    },
    RemoveHost {
        id: NodeId,
    },
    /// A site's reporter: the site's detector now declares exactly `dead` of its agents dead.
    ReportSiteView {
        site: String,
        reporter: NodeId,
        dead: BTreeSet<NodeId>,
    },
    /// One of a site's observers of other sites changed its verdict on `site` (up: it reached
    /// at least one of its agents within the window).
    ObserveSite {
        observer: NodeId,
        site: String,
        up: bool,
    },
    CreateService {
        spec: ServiceSpec,
    },
    /// Operator: change the spec of service `name` in place, same owner and instances. When
    /// what an instance runs changes ([`ServiceSpec::needs_restart_for`]) the epoch goes up by
    /// one and the planner replaces the instances one at a time under it; otherwise the new
    /// spec simply applies. An unchanged spec is a no-op.
    UpdateService {
        name: String,
        spec: ServiceSpec,
    },
    /// Operator: revoke every instance, then remove the service once they are stopped or
    /// their lease has run out.
    DeleteService {
        name: String,
    },
    /// Operator: move a service to `site` (planned), or cancel such a move with `None`.
    SetServiceTarget {
        service: String,
        site: Option<String>,
    },
    /// Planner: `site` owns the service from now on, under `epoch` (= previous epoch + 1).
    AssignOwner {
        service: String,
        site: String,
        epoch: u64,
        reason: String,
    },
    /// Planner: run an instance on `host`, in the owner site, under the current epoch.
    PlaceInstance {
        service: String,
        host: NodeId,
        epoch: u64,
        reason: String,
    },
    /// Host agent: the instance is running.
    InstanceRunning {
        service: String,
        host: NodeId,
        epoch: u64,
        /// The [`Instance::placement`] it is about.
        placement: u64,
    },
    /// Planner: the instance must stop.
    RevokeInstance {
        service: String,
        host: NodeId,
        epoch: u64,
        /// Planned (switchover, drain, maintenance) rather than a failure.
        planned: bool,
        reason: String,
    },
    /// Host agent: the instance has stopped.
    InstanceStopped {
        service: String,
        host: NodeId,
        epoch: u64,
        /// The [`Instance::placement`] it is about.
        placement: u64,
    },
    /// Planner: a revoked instance whose host never confirmed the stop; its lease has run out.
    ForgetInstance {
        service: String,
        host: NodeId,
        epoch: u64,
        reason: String,
    },
    /// An operator's note in the event log.
    RecordEvent {
        message: String,
    },
    /// Operator: a new volume; its primary copy takes writes under epoch 1.
    CreateVolume {
        spec: VolumeSpec,
    },
    /// Operator: forget a volume no service uses (its files stay where they are).
    DeleteVolume {
        name: String,
    },
    /// The primary's agent: how every other copy stands, under the volume's epoch.
    ReportVolume {
        volume: String,
        epoch: u64,
        host: NodeId,
        /// Open NBD connections on the primary.
        writers: u32,
        copies: BTreeMap<String, CopyReport>,
    },
    /// The primary's agent, before it acknowledges any write the copy at `site` lacks: that
    /// copy is outdated (promoting it takes `--force`). `outdates` is the copy's new count.
    OutdateCopy {
        volume: String,
        site: String,
        epoch: u64,
        outdates: u64,
        reason: String,
    },
    /// Planner or operator: the copy at `site` takes the writes from now on, under `epoch`
    /// (= current + 1). Refused while a service using the volume has an instance anywhere, and
    /// for a copy that may lack acknowledged writes unless `force`.
    PromoteVolume {
        volume: String,
        site: String,
        epoch: u64,
        force: bool,
        reason: String,
    },
    /// Operator: promoting a copy of `volume` that lacks writes is accepted (forced failover).
    AcceptVolumeLoss {
        volume: String,
        reason: String,
    },
    /// Agent: it runs with these lease terms. The first sets the fabric's terms; an agent whose
    /// terms differ is refused (and must not hold or grant leases).
    AgreeLeaseTerms {
        node: NodeId,
        terms: LeaseTerms,
    },
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("unknown site `{0}`")]
    UnknownSite(String),
    #[error("unknown host {0}")]
    UnknownHost(NodeId),
    #[error("unknown service `{0}`")]
    UnknownService(String),
    #[error("service `{0}` already exists")]
    ServiceExists(String),
    #[error(
        "service `{name}` is being deleted: wait until its instances on hosts {hosts:?} are stopped or their lease has run out (lease + margin after the revocation), then create it again"
    )]
    ServiceDeleting { name: String, hosts: Vec<NodeId> },
    #[error("host {id} is registered in site `{registered}`, not `{requested}`")]
    HostSiteMismatch {
        id: NodeId,
        registered: String,
        requested: String,
    },
    #[error("service `{service}` has no instance on host {host}")]
    UnknownInstance { service: String, host: NodeId },
    #[error("service `{service}`: epoch {got} is stale (current {current})")]
    StaleEpoch {
        service: String,
        current: u64,
        got: u64,
    },
    #[error(
        "service `{service}`: the report is about placement {got} on host {host}, but the instance there now is placement {current} (a late report about an earlier placement)"
    )]
    StalePlacement {
        service: String,
        host: NodeId,
        current: u64,
        got: u64,
    },
    #[error("service `{service}`: {reason}")]
    Conflict { service: String, reason: String },
    #[error(
        "planned by the leader of term {planned} but committed in term {entry}: that leader was deposed"
    )]
    PlannedInOtherTerm { planned: u64, entry: u64 },
    #[error("service `{service}` already has {count} live instances, its spec allows {limit}")]
    TooManyInstances {
        service: String,
        count: u32,
        limit: u32,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("unknown volume `{0}`")]
    UnknownVolume(String),
    #[error("volume `{0}` already exists")]
    VolumeExists(String),
    #[error("volume `{volume}`: epoch {got} is stale (current {current})")]
    StaleVolumeEpoch {
        volume: String,
        current: u64,
        got: u64,
    },
    #[error("volume `{volume}`: {reason}")]
    VolumeConflict { volume: String, reason: String },
    #[error(
        "node {node} runs with failover {proposed}, but the fabric's agents run with {fabric}; every agent must use the same lease terms"
    )]
    LeaseTermsDiffer {
        node: NodeId,
        fabric: LeaseTerms,
        proposed: LeaseTerms,
    },
}

/// What a successful command reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// State revision after the command.
    pub revision: u64,
}

/// The state machine's answer for one log entry.
pub type CommandResult = Result<Applied, CommandError>;

fn invalid(field: &str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Names of sites, services and label keys: 1–63 of `[a-z0-9-]`, not starting or ending in `-`
/// (a DNS label, so they can appear in names the fabric serves).
pub fn validate_name(field: &str, name: &str) -> Result<(), CommandError> {
    if name.is_empty() || name.len() > 63 {
        return Err(invalid(
            field,
            format!("`{name}` must be 1 to 63 characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(invalid(
            field,
            format!("`{name}` may hold only a-z, 0-9 and inner `-`"),
        ));
    }
    Ok(())
}

fn validate_addr(field: &str, addr: &str) -> Result<(), CommandError> {
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| invalid(field, format!("`{addr}` is not an ip:port address")))
}

impl FabricState {
    /// Whether stopping `svc`'s instance on `host` is a planned stop: its owner site is up and
    /// not declared lost, and the host is up, so the holder hears the revocation and can confirm
    /// the stop. Otherwise it is a revocation whose slot is reused only after lease + margin.
    pub fn stop_is_planned(&self, svc: &Service, host: NodeId) -> bool {
        let owner_alive = svc
            .owner
            .as_ref()
            .and_then(|o| self.sites.get(o))
            .is_some_and(|s| s.health == Health::Up && s.admin != SiteAdmin::Lost);
        owner_alive
            && self
                .hosts
                .get(&host)
                .is_some_and(|h| h.health == Health::Up)
    }

    /// Applies one proposal. On error the state is unchanged.
    pub fn apply(&mut self, p: &Proposal) -> CommandResult {
        let message = self.apply_command(p.at_ms, &p.command)?;
        self.revision += 1;
        if let Some(message) = message {
            self.events.push_back(Event {
                revision: self.revision,
                at_ms: p.at_ms,
                actor: p.actor.clone(),
                message,
            });
            while self.events.len() > MAX_EVENTS {
                self.events.pop_front();
            }
        }
        Ok(Applied {
            revision: self.revision,
        })
    }

    fn site_mut(&mut self, name: &str) -> Result<&mut Site, CommandError> {
        self.sites
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownSite(name.to_string()))
    }

    fn host_mut(&mut self, id: NodeId) -> Result<&mut Host, CommandError> {
        self.hosts.get_mut(&id).ok_or(CommandError::UnknownHost(id))
    }

    /// Validates and performs the command; returns the event message, if it is worth one.
    fn apply_command(&mut self, now: u64, cmd: &Command) -> Result<Option<String>, CommandError> {
        match cmd {
            Command::UpsertSite { name, priority } => {
                validate_name("site name", name)?;
                match self.sites.get_mut(name) {
                    Some(site) if site.priority == *priority => Ok(None),
                    Some(site) => {
                        let old = std::mem::replace(&mut site.priority, *priority);
                        Ok(Some(format!("site {name} priority {old} -> {priority}")))
                    }
                    None => {
                        self.sites.insert(
                            name.clone(),
                            Site {
                                name: name.clone(),
                                priority: *priority,
                                health: Health::Up,
                                health_since_ms: now,
                                admin: SiteAdmin::Active,
                                admin_since_ms: now,
                            },
                        );
                        Ok(Some(format!("site {name} added (priority {priority})")))
                    }
                }
            }
            Command::EnsureSite { name, priority } => {
                if self.sites.contains_key(name) {
                    return Ok(None);
                }
                self.apply_command(
                    now,
                    &Command::UpsertSite {
                        name: name.clone(),
                        priority: *priority,
                    },
                )
            }
            Command::SetSiteHealth {
                name,
                health,
                reason,
            } => {
                let site = self.site_mut(name)?;
                if site.health == *health {
                    return Ok(None);
                }
                site.health = *health;
                site.health_since_ms = now;
                Ok(Some(format!("site {name} is {}: {reason}", lower(health))))
            }
            Command::SetSiteAdmin { name, admin } => {
                let site = self.site_mut(name)?;
                if site.admin == *admin {
                    return Ok(None);
                }
                let old = std::mem::replace(&mut site.admin, *admin);
                site.admin_since_ms = now;
                Ok(Some(format!(
                    "site {name} {} -> {}",
                    lower(&old),
                    lower(admin)
                )))
            }
            Command::RegisterHost {
                id,
                site,
                address,
                admin_address,
                addresses,
                capacity,
                labels,
            } => {
                if !self.sites.contains_key(site) {
                    return Err(CommandError::UnknownSite(site.clone()));
                }
                validate_addr("host address", address)?;
                validate_addr("host admin address", admin_address)?;
                for key in labels.keys() {
                    validate_name("label key", key)?;
                }
                match self.hosts.get_mut(id) {
                    Some(host) if host.site != *site => Err(CommandError::HostSiteMismatch {
                        id: *id,
                        registered: host.site.clone(),
                        requested: site.clone(),
                    }),
                    Some(host) => {
                        let changed = host.address != *address
                            || host.admin_address != *admin_address
                            || host.addresses != *addresses
                            || host.capacity != *capacity
                            || host.labels != *labels;
                        host.address = address.clone();
                        host.admin_address = admin_address.clone();
                        host.addresses = addresses.clone();
                        host.capacity = *capacity;
                        host.labels = labels.clone();
                        Ok(changed.then(|| format!("host {id} updated its registration")))
                    }
                    None => {
                        self.hosts.insert(
                            *id,
                            Host {
                                id: *id,
                                site: site.clone(),
                                address: address.clone(),
                                admin_address: admin_address.clone(),
                                addresses: addresses.clone(),
                                capacity: *capacity,
                                labels: labels.clone(),
                                health: Health::Up,
                                health_since_ms: now,
                                drained: false,
                                drained_since_ms: now,
                                registered_ms: now,
                            },
                        );
                        Ok(Some(format!("host {id} registered in site {site}")))
                    }
                }
            }
            Command::SetHostHealth { id, health, reason } => {
                let host = self.host_mut(*id)?;
                if host.health == *health {
                    return Ok(None);
                }
                host.health = *health;
                host.health_since_ms = now;
                Ok(Some(format!("host {id} is {}: {reason}", lower(health))))
            }
            Command::SetHostDrain { id, drained } => {
                let host = self.host_mut(*id)?;
                if host.drained == *drained {
                    return Ok(None);
                }
                host.drained = *drained;
                host.drained_since_ms = now;
                Ok(Some(format!(
                    "host {id} {}",
                    if *drained { "drained" } else { "undrained" }
                )))
            }
            Command::RemoveHost { id } => {
                if let Some(s) = self
                    .services
                    .values()
                    .find(|s| s.instances.contains_key(id))
                {
                    return Err(CommandError::Conflict {
                        service: s.spec.name.clone(),
                        reason: format!("host {id} still has an instance; drain it first"),
                    });
                }
                self.hosts
                    .remove(id)
                    .ok_or(CommandError::UnknownHost(*id))?;
                for view in self.site_views.values_mut() {
                    view.dead.remove(id);
                }
                for seen in self.site_observations.values_mut() {
                    seen.remove(id);
                }
                Ok(Some(format!("host {id} removed")))
            }
            Command::ReportSiteView {
                site,
                reporter,
                dead,
            } => {
                if !self.sites.contains_key(site) {
                    return Err(CommandError::UnknownSite(site.clone()));
                }
                let old = self.site_views.get(site);
                // The same dead set from another reporter changes nothing.
                if old.map_or(&BTreeSet::new(), |v| &v.dead) == dead {
                    return Ok(None);
                }
                let before = old.map(|v| v.dead.clone()).unwrap_or_default();
                self.site_views.insert(
                    site.clone(),
                    SiteView {
                        reporter: *reporter,
                        dead: dead.clone(),
                        since_ms: now,
                    },
                );
                let lost: Vec<_> = dead.difference(&before).collect();
                let back: Vec<_> = before.difference(dead).collect();
                Ok(Some(format!(
                    "site {site} (reported by node {reporter}): lost {lost:?}, back {back:?}"
                )))
            }
            Command::ObserveSite { observer, site, up } => {
                if !self.sites.contains_key(site) {
                    return Err(CommandError::UnknownSite(site.clone()));
                }
                let old = self
                    .site_observations
                    .get(site)
                    .and_then(|seen| seen.get(observer));
                // An absent observation means up already.
                if old.is_none_or(|o| o.up) == *up {
                    return Ok(None);
                }
                self.site_observations
                    .entry(site.clone())
                    .or_default()
                    .insert(
                        *observer,
                        Observation {
                            up: *up,
                            since_ms: now,
                        },
                    );
                Ok(Some(format!(
                    "node {observer} sees site {site} {}",
                    if *up { "up" } else { "down" }
                )))
            }
            Command::RecordEvent { message } => {
                if message.trim().is_empty() || message.len() > 1024 {
                    return Err(invalid("event message", "must be 1 to 1024 characters"));
                }
                Ok(Some(message.clone()))
            }
            Command::AgreeLeaseTerms { node, terms } => {
                if !terms.is_safe() {
                    return Err(invalid(
                        "lease terms",
                        format!("{terms}: the lease must be more than twice a non-zero margin"),
                    ));
                }
                match self.lease_terms {
                    Some(fabric) if fabric == *terms => Ok(None),
                    Some(fabric) => Err(CommandError::LeaseTermsDiffer {
                        node: *node,
                        fabric,
                        proposed: *terms,
                    }),
                    None => {
                        self.lease_terms = Some(*terms);
                        Ok(Some(format!("lease terms set by node {node}: {terms}")))
                    }
                }
            }
            Command::CreateVolume { .. }
            | Command::DeleteVolume { .. }
            | Command::ReportVolume { .. }
            | Command::OutdateCopy { .. }
            | Command::PromoteVolume { .. }
            | Command::AcceptVolumeLoss { .. } => self.apply_volume_command(now, cmd),
            service_command => self.apply_service_command(now, service_command),
        }
    }
}

/// `Up` → `up`, for event messages.
fn lower(v: &impl fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(command: Command) -> Proposal {
        Proposal::new(1_000, "test", command)
    }

    fn with_site(name: &str) -> FabricState {
        let mut s = FabricState::default();
        s.apply(&prop(Command::UpsertSite {
            name: name.into(),
            priority: 1,
        }))
        .expect("site");
        s
    }

    fn register(id: NodeId, site: &str) -> Command {
        Command::RegisterHost {
            id,
            site: site.into(),
            address: "127.0.0.1:1".into(),
            admin_address: "127.0.0.1:2".into(),
            addresses: vec!["127.0.0.1".parse().expect("ip")],
            capacity: Capacity::default(),
            labels: BTreeMap::new(),
        }
    }

    fn spec(name: &str, sites: &[&str]) -> ServiceSpec {
        ServiceSpec::process(name, sites, "fabric-demo", 8080)
    }

    #[test]
    fn the_first_lease_terms_hold_and_differing_ones_are_refused() {
        let terms = LeaseTerms {
            lease_ms: 6_000,
            margin_ms: 1_000,
        };
        let agree = |node, terms| prop(Command::AgreeLeaseTerms { node, terms });
        let mut s = FabricState::default();
        s.apply(&agree(1, terms)).expect("first terms");
        assert_eq!(s.lease_terms, Some(terms));
        s.apply(&agree(2, terms)).expect("same terms");
        let longer = LeaseTerms {
            lease_ms: 9_000,
            ..terms
        };
        let before = s.clone();
        let err = s.apply(&agree(3, longer)).expect_err("different terms");
        assert_eq!(
            err,
            CommandError::LeaseTermsDiffer {
                node: 3,
                fabric: terms,
                proposed: longer,
            }
        );
        assert!(err.to_string().contains("lease = 9000ms"), "{err}");
        assert_eq!(s, before);
        let unsafe_terms = LeaseTerms {
            lease_ms: 2_000,
            margin_ms: 1_000,
        };
        assert!(matches!(
            FabricState::default().apply(&agree(1, unsafe_terms)),
            Err(CommandError::Invalid { .. })
        ));
    }

    #[test]
    fn register_host_in_unknown_site_is_refused_and_changes_nothing() {
        let mut s = with_site("s1");
        let before = s.clone();
        assert_eq!(
            s.apply(&prop(register(1, "nope"))),
            Err(CommandError::UnknownSite("nope".into()))
        );
        assert_eq!(s, before);
    }

    #[test]
    fn reregistering_a_host_in_another_site_is_refused() {
        let mut s = with_site("s1");
        s.apply(&prop(Command::UpsertSite {
            name: "s2".into(),
            priority: 2,
        }))
        .expect("s2");
        s.apply(&prop(register(1, "s1"))).expect("register");
        assert!(matches!(
            s.apply(&prop(register(1, "s2"))),
            Err(CommandError::HostSiteMismatch { id: 1, .. })
        ));
        assert_eq!(s.hosts[&1].site, "s1");
    }

    #[test]
    fn revision_bumps_only_on_success() {
        let mut s = with_site("s1");
        assert_eq!(s.revision, 1);
        let _ = s.apply(&prop(Command::SetHostDrain {
            id: 9,
            drained: true,
        }));
        assert_eq!(s.revision, 1);
        assert_eq!(
            s.apply(&prop(register(9, "s1"))),
            Ok(Applied { revision: 2 })
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_field() {
        let mut s = FabricState::default();
        let err = s
            .apply(&prop(Command::UpsertSite {
                name: "Bad_Name".into(),
                priority: 1,
            }))
            .expect_err("bad name");
        assert!(err.to_string().contains("site name"), "{err}");
        assert!(s.sites.is_empty());
    }

    #[test]
    fn service_needs_known_sites_and_a_unique_name() {
        let mut s = with_site("s1");
        let mut no_sites = spec("web", &[]);
        no_sites.placement.sites.clear();
        assert!(matches!(
            s.apply(&prop(Command::CreateService { spec: no_sites })),
            Err(CommandError::Invalid { .. })
        ));
        assert_eq!(
            s.apply(&prop(Command::CreateService {
                spec: spec("web", &["s9"])
            })),
            Err(CommandError::UnknownSite("s9".into()))
        );
        assert!(s.services.is_empty());
        s.apply(&prop(Command::CreateService {
            spec: spec("web", &["s1"]),
        }))
        .expect("create");
        assert_eq!(
            s.apply(&prop(Command::CreateService {
                spec: spec("web", &["s1"])
            })),
            Err(CommandError::ServiceExists("web".into()))
        );
        let mut same_dns = spec("web2", &["s1"]);
        same_dns.dns_name = Some("web".into());
        let err = s
            .apply(&prop(Command::CreateService { spec: same_dns }))
            .expect_err("dns name taken");
        assert!(err.to_string().contains("dns_name"), "{err}");
    }

    /// A state with sites s1, s2, hosts 1 (s1) and 2 (s2), and service `web` owned by s1 at
    /// epoch 1 with an instance on host 1.
    fn placed() -> FabricState {
        let mut s = with_site("s1");
        for c in [
            Command::UpsertSite {
                name: "s2".into(),
                priority: 2,
            },
            register(1, "s1"),
            register(2, "s2"),
            Command::CreateService {
                spec: spec("web", &["s1", "s2"]),
            },
            Command::AssignOwner {
                service: "web".into(),
                site: "s1".into(),
                epoch: 1,
                reason: "test".into(),
            },
            Command::PlaceInstance {
                service: "web".into(),
                host: 1,
                epoch: 1,
                reason: "test".into(),
            },
        ] {
            s.apply(&prop(c)).expect("setup");
        }
        s
    }

    /// `web` to site s2 under `epoch`.
    fn assign(epoch: u64) -> Command {
        Command::AssignOwner {
            service: "web".into(),
            site: "s2".into(),
            epoch,
            reason: "test".into(),
        }
    }

    #[test]
    fn owner_changes_only_with_the_next_epoch_and_no_instance_left() {
        let mut s = placed();
        assert!(matches!(
            s.apply(&prop(assign(2))),
            Err(CommandError::Conflict { .. })
        ));
        s.apply(&prop(Command::RevokeInstance {
            service: "web".into(),
            host: 1,
            epoch: 1,
            planned: true,
            reason: "test".into(),
        }))
        .expect("revoke");
        // Still occupying its slot until stopped or forgotten.
        assert!(s.apply(&prop(assign(2))).is_err());
        s.apply(&prop(Command::InstanceStopped {
            service: "web".into(),
            host: 1,
            epoch: 1,
            placement: 1,
        }))
        .expect("stopped");
        assert!(matches!(
            s.apply(&prop(assign(3))),
            Err(CommandError::StaleEpoch { got: 3, .. })
        ));
        s.apply(&prop(assign(2))).expect("assign");
        assert_eq!(s.services["web"].owner.as_deref(), Some("s2"));
        assert_eq!(s.services["web"].epoch, 2);
    }

    #[test]
    fn instance_commands_with_an_old_epoch_are_refused() {
        let mut s = placed();
        let before = s.clone();
        assert!(matches!(
            s.apply(&prop(Command::InstanceRunning {
                service: "web".into(),
                host: 1,
                epoch: 0,
                placement: 1,
            })),
            Err(CommandError::StaleEpoch { got: 0, .. })
        ));
        assert!(matches!(
            s.apply(&prop(Command::InstanceStopped {
                service: "web".into(),
                host: 2,
                epoch: 1,
                placement: 1,
            })),
            Err(CommandError::UnknownInstance { host: 2, .. })
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn a_replayed_stop_of_an_earlier_placement_cannot_remove_the_newer_one_on_the_same_host_and_epoch()
     {
        use crate::fixture::{apply, place, revoke, running, stopped};
        let mut s = placed();
        assert_eq!(s.services["web"].instances[&1].placement, 1);
        apply(&mut s, running("web", 1, 1, 1));
        apply(&mut s, revoke("web", 1, 1));
        apply(&mut s, stopped("web", 1, 1, 1));
        // Placed again on the same host under the same epoch: a new placement.
        apply(&mut s, place("web", 1, 1));
        assert_eq!(s.services["web"].instances[&1].placement, 2);
        apply(&mut s, running("web", 1, 1, 2));
        let before = s.clone();
        for replay in [stopped("web", 1, 1, 1), running("web", 1, 1, 1)] {
            let err = s
                .apply(&prop(replay))
                .expect_err("a report about placement 1");
            assert_eq!(
                err,
                CommandError::StalePlacement {
                    service: "web".into(),
                    host: 1,
                    current: 2,
                    got: 1,
                }
            );
            assert!(err.to_string().contains("earlier placement"), "{err}");
        }
        assert_eq!(s, before, "a stale report changed the state");
        assert_eq!(
            s.services["web"].instances[&1].state,
            InstanceState::Running
        );
        apply(&mut s, stopped("web", 1, 1, 2));
        assert!(s.services["web"].instances.is_empty());
    }

    fn update(spec: ServiceSpec) -> Command {
        Command::UpdateService {
            name: "web".into(),
            spec,
        }
    }

    /// `web`'s spec in [`placed`] with `FOO=bar` added to its environment.
    fn web_with_env() -> ServiceSpec {
        let mut spec = spec("web", &["s1", "s2"]);
        let WorkloadKind::Process(p) = &mut spec.kind;
        p.env.insert("FOO".into(), "bar".into());
        spec
    }

    #[test]
    fn an_update_of_what_instances_run_bumps_the_epoch_and_keeps_owner_and_instances() {
        use crate::fixture::{apply, place, revoke, running, stopped};
        let mut s = placed();
        apply(&mut s, running("web", 1, 1, 1));
        s.apply(&prop(update(web_with_env()))).expect("update");
        let web = &s.services["web"];
        assert_eq!((web.epoch, web.owner_epoch), (2, 1));
        assert_eq!(web.owner.as_deref(), Some("s1"));
        assert_eq!(web.spec, web_with_env());
        assert_eq!(web.instances[&1].epoch, 1, "the old instance stays");
        assert_eq!(web.instances[&1].state, InstanceState::Running);
        assert!(
            s.events
                .back()
                .is_some_and(|e| e.message.contains("replaced one at a time under epoch 2")),
            "{:?}",
            s.events.back()
        );
        // Reports about the old instance still apply; new placements only under epoch 2.
        apply(&mut s, revoke("web", 1, 1));
        apply(&mut s, stopped("web", 1, 1, 1));
        assert!(matches!(
            s.apply(&prop(place("web", 1, 1))),
            Err(CommandError::StaleEpoch { current: 2, .. })
        ));
        apply(&mut s, place("web", 1, 2));
        apply(&mut s, running("web", 1, 2, 2));
        // A move after the update continues above it.
        assert!(matches!(
            s.apply(&prop(assign(2))),
            Err(CommandError::StaleEpoch { current: 2, .. })
        ));
        apply(&mut s, revoke("web", 1, 2));
        apply(&mut s, stopped("web", 1, 2, 2));
        apply(&mut s, assign(3));
        assert_eq!(
            (s.services["web"].epoch, s.services["web"].owner_epoch),
            (3, 3)
        );
    }

    #[test]
    fn an_update_that_changes_nothing_or_nothing_instances_run_does_not_bump_the_epoch() {
        let mut s = placed();
        let events = s.events.len();
        s.apply(&prop(update(spec("web", &["s1", "s2"]))))
            .expect("same spec");
        assert_eq!(s.events.len(), events, "a no-op recorded an event");
        assert_eq!(s.services["web"].epoch, 1);
        let mut more = spec("web", &["s1", "s2"]);
        more.placement.instances = 2;
        s.apply(&prop(update(more.clone()))).expect("scale");
        assert_eq!(s.services["web"].epoch, 1);
        assert_eq!(s.services["web"].spec, more);
        assert!(
            s.events
                .back()
                .is_some_and(|e| e.message.contains("no restart"))
        );
    }

    #[test]
    fn updates_are_refused_for_unknown_renamed_deleting_or_invalid_specs_and_change_nothing() {
        let mut s = placed();
        s.apply(&prop(Command::CreateService {
            spec: spec("api", &["s1"]),
        }))
        .expect("api");
        let before = s.clone();
        let check = |s: &mut FabricState, cmd: Command, want: &str| {
            let err = s.apply(&prop(cmd)).expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
        };
        let mut unknown = spec("nope", &["s1"]);
        unknown.dns_name = None;
        check(
            &mut s,
            Command::UpdateService {
                name: "nope".into(),
                spec: unknown,
            },
            "unknown service `nope`",
        );
        check(
            &mut s,
            update(spec("web2", &["s1", "s2"])),
            "cannot rename service `web` to `web2`",
        );
        let mut bad_port = web_with_env();
        let WorkloadKind::Process(p) = &mut bad_port.kind;
        p.port = 0;
        check(&mut s, update(bad_port), "kind.process.port");
        check(
            &mut s,
            update(spec("web", &["s1", "s9"])),
            "unknown site `s9`",
        );
        let mut taken = web_with_env();
        taken.dns_name = Some("api".into());
        check(&mut s, update(taken), "already the name of service `api`");
        check(
            &mut s,
            update(spec("web", &["s2"])),
            "site `s1` owns service `web`",
        );
        assert_eq!(s, before, "a refused update changed the state");
        s.apply(&prop(Command::DeleteService { name: "web".into() }))
            .expect("delete");
        check(&mut s, update(web_with_env()), "being deleted");
    }

    #[test]
    fn instances_go_only_to_hosts_of_the_owner_site() {
        let mut s = placed();
        let err = s
            .apply(&prop(Command::PlaceInstance {
                service: "web".into(),
                host: 2,
                epoch: 1,
                reason: "test".into(),
            }))
            .expect_err("wrong site");
        assert!(err.to_string().contains("does not own"), "{err}");
    }

    #[test]
    fn placing_beyond_the_spec_instance_count_is_refused_naming_service_count_and_limit() {
        use crate::fixture::{apply, place, revoke};
        let mut s = placed();
        apply(&mut s, register(3, "s1"));
        apply(&mut s, register(4, "s1"));
        let before = s.clone();
        let err = s
            .apply(&prop(place("web", 3, 1)))
            .expect_err("over the limit");
        assert_eq!(
            err,
            CommandError::TooManyInstances {
                service: "web".into(),
                count: 1,
                limit: 1,
            }
        );
        assert!(
            err.to_string()
                .contains("`web` already has 1 live instances"),
            "{err}"
        );
        assert_eq!(s, before, "a refused placement changed the state");

        // A revoked instance is on its way out and does not count; nor does one on a drained
        // host, whose replacement comes before its stop.
        apply(&mut s, revoke("web", 1, 1));
        apply(&mut s, place("web", 3, 1));
        apply(
            &mut s,
            Command::SetHostDrain {
                id: 3,
                drained: true,
            },
        );
        apply(&mut s, place("web", 4, 1));
        assert_eq!(s.services["web"].instances.len(), 3);
    }

    #[test]
    fn forgetting_needs_a_revoked_instance() {
        let mut s = placed();
        let forget = Command::ForgetInstance {
            service: "web".into(),
            host: 1,
            epoch: 1,
            reason: "test".into(),
        };
        assert!(s.apply(&prop(forget.clone())).is_err());
        s.apply(&prop(Command::RevokeInstance {
            service: "web".into(),
            host: 1,
            epoch: 1,
            planned: false,
            reason: "test".into(),
        }))
        .expect("revoke");
        s.apply(&prop(forget)).expect("forget");
        assert!(s.services["web"].instances.is_empty());
    }

    #[test]
    fn delete_revokes_and_removes_the_service_only_when_its_last_instance_is_gone() {
        let mut s = placed();
        s.apply(&prop(Command::DeleteService { name: "web".into() }))
            .expect("delete");
        let web = &s.services["web"];
        assert_eq!(web.deleting, Some(1_000));
        assert_eq!(web.instances[&1].state, InstanceState::Revoked);
        let again = s.apply(&prop(Command::CreateService {
            spec: spec("web", &["s2"]),
        }));
        assert_eq!(
            again,
            Err(CommandError::ServiceDeleting {
                name: "web".into(),
                hosts: vec![1],
            })
        );
        assert!(
            again
                .expect_err("refused")
                .to_string()
                .contains("lease has run out")
        );
        for refused in [
            assign(2),
            Command::SetServiceTarget {
                service: "web".into(),
                site: Some("s2".into()),
            },
        ] {
            let err = s.apply(&prop(refused)).expect_err("deleting");
            assert!(err.to_string().contains("being deleted"), "{err}");
        }
        s.apply(&prop(Command::InstanceStopped {
            service: "web".into(),
            host: 1,
            epoch: 1,
            placement: 1,
        }))
        .expect("stopped");
        assert!(!s.services.contains_key("web"));
        assert_eq!(s.tombstones["web"].epoch, 1);
        assert!(
            s.events
                .back()
                .is_some_and(|e| e.message.ends_with("service deleted"))
        );
    }

    #[test]
    fn a_re_created_service_starts_above_every_epoch_its_name_had() {
        let mut s = placed();
        s.apply(&prop(Command::DeleteService { name: "web".into() }))
            .expect("delete");
        s.apply(&prop(Command::ForgetInstance {
            service: "web".into(),
            host: 1,
            epoch: 1,
            reason: "lease ran out".into(),
        }))
        .expect("forget");
        s.apply(&prop(Command::CreateService {
            spec: spec("web", &["s2"]),
        }))
        .expect("create again");
        assert!(!s.tombstones.contains_key("web"), "the service holds it");
        assert_eq!(s.services["web"].epoch, 1);
        assert!(matches!(
            s.apply(&prop(assign(1))),
            Err(CommandError::StaleEpoch { current: 1, .. })
        ));
        s.apply(&prop(assign(2))).expect("next epoch");
        assert_eq!(s.services["web"].epoch, 2);
    }

    #[test]
    fn deleting_a_service_without_instances_removes_it_at_once() {
        let mut s = with_site("s1");
        s.apply(&prop(Command::CreateService {
            spec: spec("web", &["s1"]),
        }))
        .expect("create");
        s.apply(&prop(Command::DeleteService { name: "web".into() }))
            .expect("delete");
        assert!(s.services.is_empty());
        assert_eq!(s.tombstones["web"].epoch, 0);
        assert_eq!(
            s.apply(&prop(Command::DeleteService { name: "web".into() })),
            Err(CommandError::UnknownService("web".into()))
        );
    }

    #[test]
    fn only_observation_changes_are_recorded() {
        let mut s = placed();
        let observe = |up| Command::ObserveSite {
            observer: 2,
            site: "s1".into(),
            up,
        };
        let events = s.events.len();
        s.apply(&prop(observe(true))).expect("up");
        assert!(s.site_observations.is_empty(), "up is the default");
        s.apply(&prop(observe(false))).expect("down");
        s.apply(&prop(observe(false))).expect("down again");
        assert_eq!(s.events.len(), events + 1);
        assert!(!s.site_observations["s1"][&2].up);
        assert_eq!(
            s.apply(&prop(Command::ObserveSite {
                observer: 2,
                site: "nowhere".into(),
                up: false,
            })),
            Err(CommandError::UnknownSite("nowhere".into()))
        );
    }

    #[test]
    fn a_site_view_is_one_write_per_change_of_its_dead_set() {
        let mut s = placed();
        let view = |reporter, dead: &[NodeId]| Command::ReportSiteView {
            site: "s1".into(),
            reporter,
            dead: dead.iter().copied().collect(),
        };
        let events = s.events.len();
        s.apply(&prop(view(1, &[]))).expect("empty");
        assert!(s.site_views.is_empty(), "nobody dead is the default");
        s.apply(&prop(view(1, &[3]))).expect("3 dead");
        // Another reporter of the same site saying the same changes nothing.
        s.apply(&prop(view(4, &[3]))).expect("same");
        assert_eq!(s.events.len(), events + 1);
        assert_eq!(s.site_views["s1"].reporter, 1);
        s.apply(&prop(view(4, &[]))).expect("back");
        assert!(s.site_views["s1"].dead.is_empty());
        assert_eq!(s.events.len(), events + 2);
        assert!(
            s.events
                .back()
                .is_some_and(|e| e.message.contains("back [3]"))
        );
    }

    #[test]
    fn a_removed_host_leaves_the_views_and_observations() {
        let mut s = placed();
        s.apply(&prop(register(3, "s1"))).expect("register");
        s.apply(&prop(Command::ReportSiteView {
            site: "s1".into(),
            reporter: 1,
            dead: [3].into(),
        }))
        .expect("view");
        s.apply(&prop(Command::ObserveSite {
            observer: 3,
            site: "s2".into(),
            up: false,
        }))
        .expect("observe");
        s.apply(&prop(Command::RemoveHost { id: 3 }))
            .expect("remove");
        assert!(s.site_views["s1"].dead.is_empty());
        assert!(s.site_observations["s2"].is_empty());
    }

    #[test]
    fn site_state_shows_admin_before_health() {
        let mut s = with_site("s1");
        s.apply(&prop(Command::SetSiteHealth {
            name: "s1".into(),
            health: Health::Down,
            reason: "test".into(),
        }))
        .expect("down");
        assert_eq!(s.sites["s1"].state(), SiteState::Down);
        s.apply(&prop(Command::SetSiteAdmin {
            name: "s1".into(),
            admin: SiteAdmin::Lost,
        }))
        .expect("lost");
        assert_eq!(s.sites["s1"].state(), SiteState::Lost);
        assert!(!s.sites["s1"].usable());
    }

    #[test]
    fn ensure_site_keeps_an_existing_priority() {
        let mut s = with_site("s1");
        s.apply(&prop(Command::EnsureSite {
            name: "s1".into(),
            priority: 9,
        }))
        .expect("ensure");
        assert_eq!(s.sites["s1"].priority, 1);
        s.apply(&prop(Command::EnsureSite {
            name: "s2".into(),
            priority: 9,
        }))
        .expect("ensure");
        assert_eq!(s.sites["s2"].priority, 9);
    }

    #[test]
    fn event_log_is_bounded() {
        let mut s = FabricState::default();
        for i in 0..(MAX_EVENTS + 10) {
            s.apply(&prop(Command::RecordEvent {
                message: format!("note {i}"),
            }))
            .expect("note");
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(
            s.events.front().map(|e| e.message.as_str()),
            Some("note 10")
        );
    }
}
