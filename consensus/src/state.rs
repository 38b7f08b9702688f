//! The fabric's replicated state and the only way to change it: a validated [`Command`].
//!
//! Invariant: [`FabricState::apply`] is deterministic. It reads no clock and no environment; the
//! proposer stamps wall-clock time into the [`Proposal`] before it enters the log, so every replica
//! computes the same state from the same log. A command that fails validation changes nothing and
//! returns a typed [`CommandError`]; the entry still occupies its log slot.
//!
//! This module does not decide anything (no health verdicts, no placement): it records what the
//! decision code and operators propose.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

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
    pub state: SiteState,
    /// Wall-clock time (unix ms) of the last state change.
    pub since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteState {
    Active,
    Maintenance,
    Down,
    Fenced,
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
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub state: HostState,
    /// Wall-clock time (unix ms) of the last state change.
    pub since_ms: u64,
    pub registered_ms: u64,
    /// Wall-clock time (unix ms) of the host's last liveness report.
    pub last_report_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
    Draining,
    Down,
}

/// A service the fabric keeps running. The spec is a placeholder until workloads exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    /// Sites in priority order.
    pub sites: Vec<String>,
    pub instances: u32,
    pub dns_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub spec: ServiceSpec,
    pub created_ms: u64,
}

/// One line of the bounded event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub at_ms: u64,
    pub actor: String,
    pub message: String,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricState {
    /// Number of commands that changed the state; bumps by one on each.
    pub revision: u64,
    pub sites: BTreeMap<String, Site>,
    pub hosts: BTreeMap<NodeId, Host>,
    pub services: BTreeMap<String, Service>,
    pub events: VecDeque<Event>,
}

/// A command with the facts the proposer stamped on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Proposer's wall clock, unix ms.
    pub at_ms: u64,
    /// Who asked: `node 3`, `operator alice`.
    pub actor: String,
    pub command: Command,
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
    SetSiteState {
        name: String,
        state: SiteState,
    },
    /// Register a host or refresh its addresses, capacity and labels.
    RegisterHost {
        id: NodeId,
        site: String,
        address: String,
        admin_address: String,
        capacity: Capacity,
        labels: BTreeMap<String, String>,
    },
    /// Liveness report from a host's own agent.
    ReportHost {
        id: NodeId,
    },
    SetHostState {
        id: NodeId,
        state: HostState,
    },
    RemoveHost {
        id: NodeId,
    },
    CreateService {
        spec: ServiceSpec,
    },
    DeleteService {
        name: String,
    },
    /// An operator's note in the event log.
    RecordEvent {
        message: String,
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
    #[error("host {id} is registered in site `{registered}`, not `{requested}`")]
    HostSiteMismatch {
        id: NodeId,
        registered: String,
        requested: String,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
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
                                state: SiteState::Active,
                                since_ms: now,
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
            Command::SetSiteState { name, state } => {
                let site = self
                    .sites
                    .get_mut(name)
                    .ok_or_else(|| CommandError::UnknownSite(name.clone()))?;
                if site.state == *state {
                    return Ok(None);
                }
                let old = std::mem::replace(&mut site.state, *state);
                site.since_ms = now;
                Ok(Some(format!("site {name} {old:?} -> {state:?}")))
            }
            Command::RegisterHost {
                id,
                site,
                address,
                admin_address,
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
                        host.address = address.clone();
                        host.admin_address = admin_address.clone();
                        host.capacity = *capacity;
                        host.labels = labels.clone();
                        host.last_report_ms = now;
                        Ok(None)
                    }
                    None => {
                        self.hosts.insert(
                            *id,
                            Host {
                                id: *id,
                                site: site.clone(),
                                address: address.clone(),
                                admin_address: admin_address.clone(),
                                capacity: *capacity,
                                labels: labels.clone(),
                                state: HostState::Up,
                                since_ms: now,
                                registered_ms: now,
                                last_report_ms: now,
                            },
                        );
                        Ok(Some(format!("host {id} registered in site {site}")))
                    }
                }
            }
            Command::ReportHost { id } => {
                let host = self
                    .hosts
                    .get_mut(id)
                    .ok_or(CommandError::UnknownHost(*id))?;
                host.last_report_ms = host.last_report_ms.max(now);
                Ok(None)
            }
            Command::SetHostState { id, state } => {
                let host = self
                    .hosts
                    .get_mut(id)
                    .ok_or(CommandError::UnknownHost(*id))?;
                if host.state == *state {
                    return Ok(None);
                }
                let old = std::mem::replace(&mut host.state, *state);
                host.since_ms = now;
                Ok(Some(format!("host {id} {old:?} -> {state:?}")))
            }
            Command::RemoveHost { id } => {
                self.hosts
                    .remove(id)
                    .ok_or(CommandError::UnknownHost(*id))?;
                Ok(Some(format!("host {id} removed")))
            }
            Command::CreateService { spec } => {
                validate_name("service name", &spec.name)?;
                if self.services.contains_key(&spec.name) {
                    return Err(CommandError::ServiceExists(spec.name.clone()));
                }
                if spec.sites.is_empty() {
                    return Err(invalid("service sites", "at least one site is needed"));
                }
                if let Some(unknown) = spec.sites.iter().find(|s| !self.sites.contains_key(*s)) {
                    return Err(CommandError::UnknownSite(unknown.clone()));
                }
                if spec.instances == 0 {
                    return Err(invalid("service instances", "must be at least 1"));
                }
                self.services.insert(
                    spec.name.clone(),
                    Service {
                        spec: spec.clone(),
                        created_ms: now,
                    },
                );
                Ok(Some(format!("service {} created", spec.name)))
            }
            Command::DeleteService { name } => {
                self.services
                    .remove(name)
                    .ok_or_else(|| CommandError::UnknownService(name.clone()))?;
                Ok(Some(format!("service {name} deleted")))
            }
            Command::RecordEvent { message } => {
                if message.trim().is_empty() || message.len() > 1024 {
                    return Err(invalid("event message", "must be 1 to 1024 characters"));
                }
                Ok(Some(message.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(command: Command) -> Proposal {
        Proposal {
            at_ms: 1_000,
            actor: "test".into(),
            command,
        }
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
            capacity: Capacity::default(),
            labels: BTreeMap::new(),
        }
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
        let _ = s.apply(&prop(Command::ReportHost { id: 9 }));
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
    fn service_needs_known_sites_and_instances() {
        let mut s = with_site("s1");
        let spec = |sites: Vec<&str>, instances| ServiceSpec {
            name: "web".into(),
            sites: sites.into_iter().map(String::from).collect(),
            instances,
            dns_name: None,
        };
        assert!(matches!(
            s.apply(&prop(Command::CreateService {
                spec: spec(vec![], 1)
            })),
            Err(CommandError::Invalid { .. })
        ));
        assert_eq!(
            s.apply(&prop(Command::CreateService {
                spec: spec(vec!["s9"], 1)
            })),
            Err(CommandError::UnknownSite("s9".into()))
        );
        assert!(s.services.is_empty());
        s.apply(&prop(Command::CreateService {
            spec: spec(vec!["s1"], 1),
        }))
        .expect("create");
        assert_eq!(
            s.apply(&prop(Command::CreateService {
                spec: spec(vec!["s1"], 1)
            })),
            Err(CommandError::ServiceExists("web".into()))
        );
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

    #[test]
    fn report_never_moves_last_report_backwards() {
        let mut s = with_site("s1");
        s.apply(&prop(register(1, "s1"))).expect("register");
        let mut late = prop(Command::ReportHost { id: 1 });
        late.at_ms = 5_000;
        s.apply(&late).expect("report");
        let mut early = prop(Command::ReportHost { id: 1 });
        early.at_ms = 2_000;
        s.apply(&early).expect("report");
        assert_eq!(s.hosts[&1].last_report_ms, 5_000);
    }
}
