//! The steps of a drill's timeline: the `[[step]]` tables as written (`StepFile`, every field
//! optional and spanned) and as the runner plays them ([`Step`], whose [`Action`] variants carry
//! exactly the fields they use, checked and with their defaults applied).
//!
//! Invariant: a [`Step`] exists only if its table named every field its action needs, with
//! values the topology has; an error carries the byte span of the offending field (or of
//! `action` when a field is missing), so the file's line and column can be named.
//!
//! It does not play steps ([`crate::runner`] does) and does not know where a span's text came
//! from ([`super::Scenario::parse`] turns spans into lines and columns).

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::list;

/// A `[[step]]` table as written; [`StepFile::check`] turns it into a [`Step`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepFile {
    /// Not before this time since the drill started (steps otherwise run one after another).
    #[serde(default)]
    at: Option<Spanned<String>>,
    action: Spanned<ActionKind>,
    #[serde(default)]
    site: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<u64>>,
    /// The other end of a link (`partition`, `heal`, `degrade_link`, `flap_link`); without it,
    /// `site` is cut from (or healed with) every other site.
    #[serde(default)]
    peer: Option<Spanned<String>>,
    #[serde(default)]
    service: Option<Spanned<String>>,
    /// Target site of a `switchover`.
    #[serde(default)]
    to: Option<Spanned<String>>,
    /// `wait` length; `freeze_site` thaws after it when given; half a `flap_link` period.
    #[serde(default)]
    duration: Option<Spanned<String>>,
    /// `wait_until` condition (see [`Until`]).
    #[serde(default)]
    until: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    /// `maintenance`: `enter` or `exit`.
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    delay: Option<Spanned<String>>,
    #[serde(default)]
    jitter: Option<Spanned<String>>,
    #[serde(default)]
    loss: Option<Spanned<String>>,
    #[serde(default)]
    rate: Option<Spanned<String>>,
    /// `flap_link`: how many times the link goes down and up.
    #[serde(default)]
    count: Option<Spanned<u32>>,
}

/// The name of a step's action, as `action = "…"` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    KillHost,
    StartHost,
    KillSite,
    StartSite,
    FreezeSite,
    ThawSite,
    Partition,
    Heal,
    DegradeLink,
    FlapLink,
    Switchover,
    Drain,
    Undrain,
    Maintenance,
    Wait,
    WaitUntil,
    KillLeader,
    HealAll,
    PartitionOneWay,
    SwitchoverNext,
    UpdateService,
}

/// One checked step of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Not before this time since the drill started.
    pub at: Option<Duration>,
    pub action: Action,
}

/// What a step does, with exactly the fields it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// SIGKILL an agent (a host, or the witness).
    KillHost {
        host: u64,
    },
    /// Start a stopped agent again with its data.
    StartHost {
        host: u64,
    },
    KillSite {
        site: String,
    },
    StartSite {
        site: String,
    },
    /// SIGSTOP every agent of `site`; SIGCONT after `thaw_after` when given.
    FreezeSite {
        site: String,
        thaw_after: Option<Duration>,
    },
    ThawSite {
        site: String,
    },
    /// Cut `site` from `peer` (every other site when `None`).
    Partition {
        site: String,
        peer: Option<String>,
    },
    Heal {
        site: String,
        peer: Option<String>,
    },
    DegradeLink {
        site: String,
        peer: Option<String>,
        impairment: Impairment,
    },
    /// Partition and heal `count` times, `half_period` down and `half_period` up.
    FlapLink {
        site: String,
        peer: Option<String>,
        count: u32,
        half_period: Duration,
    },
    Switchover {
        service: String,
        to: String,
    },
    Drain {
        host: u64,
    },
    Undrain {
        host: u64,
    },
    Maintenance {
        site: String,
        mode: MaintenanceMode,
    },
    Wait {
        duration: Duration,
    },
    WaitUntil {
        until: Until,
        timeout: Duration,
    },
    /// SIGKILL the agent that is the Raft leader when the step runs (found through the admin
    /// API's `/v1/status`).
    KillLeader,
    /// Undo every fault: SIGCONT every agent, start every stopped one, heal every link in both
    /// directions and give it back the topology's impairment.
    HealAll,
    /// Drop only the traffic from `from` to `to` (the other direction keeps flowing).
    PartitionOneWay {
        from: String,
        to: String,
    },
    /// Planned move of `service` to the site after its current owner in the service's site
    /// list (cyclically): a switchover whose target is known only when it runs.
    SwitchoverNext {
        service: String,
    },
    /// `sitectl service update` of `service` with a spec that differs in what the instances
    /// run (an environment variable counting the updates): a rolling restart, epoch + 1.
    UpdateService {
        service: String,
    },
}

/// A link impairment of `degrade_link`; loss and rate were checked with the emulator's parsers
/// and are kept as written (reports quote them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    /// `"1%"` or `"0.01"`.
    pub loss: Option<String>,
    /// `"100mbit"` or bits per second.
    pub rate: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaintenanceMode {
    Enter,
    Exit,
}

impl MaintenanceMode {
    /// As the admin API's path and the file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceMode::Enter => "enter",
            MaintenanceMode::Exit => "exit",
        }
    }
}

/// A `wait_until` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    Owner(String),
    Serving(String),
    SiteUp(String),
    SiteDown(String),
    AllProbesOk,
}

/// How long a `wait_until` waits when the step gives no `timeout`.
pub const DEFAULT_UNTIL_TIMEOUT: Duration = Duration::from_secs(60);

impl Until {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
        let site = || {
            if arg.is_empty() {
                Err(format!("`{text}` needs a site, e.g. `{kind}:s2`"))
            } else {
                Ok(arg.to_string())
            }
        };
        match kind {
            "owner" => Ok(Until::Owner(site()?)),
            "serving" => Ok(Until::Serving(site()?)),
            "site_up" => Ok(Until::SiteUp(site()?)),
            "site_down" => Ok(Until::SiteDown(site()?)),
            "all_probes_ok" if arg.is_empty() => Ok(Until::AllProbesOk),
            _ => Err(format!(
                "unknown condition `{text}`; use owner:SITE, serving:SITE, site_up:SITE, site_down:SITE or all_probes_ok"
            )),
        }
    }

    /// The site the condition names, if any.
    pub fn site(&self) -> Option<&str> {
        match self {
            Until::Owner(s) | Until::Serving(s) | Until::SiteUp(s) | Until::SiteDown(s) => Some(s),
            Until::AllProbesOk => None,
        }
    }
}

impl std::fmt::Display for Until {
    /// As the file spells it (`serving:s2`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Until::Owner(s) => write!(f, "owner:{s}"),
            Until::Serving(s) => write!(f, "serving:{s}"),
            Until::SiteUp(s) => write!(f, "site_up:{s}"),
            Until::SiteDown(s) => write!(f, "site_down:{s}"),
            Until::AllProbesOk => f.write_str("all_probes_ok"),
        }
    }
}

impl Action {
    /// The action's name (`KillSite`), as step failures name it.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::KillHost { .. } => ActionKind::KillHost,
            Action::StartHost { .. } => ActionKind::StartHost,
            Action::KillSite { .. } => ActionKind::KillSite,
            Action::StartSite { .. } => ActionKind::StartSite,
            Action::FreezeSite { .. } => ActionKind::FreezeSite,
            Action::ThawSite { .. } => ActionKind::ThawSite,
            Action::Partition { .. } => ActionKind::Partition,
            Action::Heal { .. } => ActionKind::Heal,
            Action::DegradeLink { .. } => ActionKind::DegradeLink,
            Action::FlapLink { .. } => ActionKind::FlapLink,
            Action::Switchover { .. } => ActionKind::Switchover,
            Action::Drain { .. } => ActionKind::Drain,
            Action::Undrain { .. } => ActionKind::Undrain,
            Action::Maintenance { .. } => ActionKind::Maintenance,
            Action::Wait { .. } => ActionKind::Wait,
            Action::WaitUntil { .. } => ActionKind::WaitUntil,
            Action::KillLeader => ActionKind::KillLeader,
            Action::HealAll => ActionKind::HealAll,
            Action::PartitionOneWay { .. } => ActionKind::PartitionOneWay,
            Action::SwitchoverNext { .. } => ActionKind::SwitchoverNext,
            Action::UpdateService { .. } => ActionKind::UpdateService,
        }
    }

    /// Faults start the RTO clock; operations too when there is no fault.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Action::KillHost { .. }
                | Action::KillSite { .. }
                | Action::FreezeSite { .. }
                | Action::Partition { .. }
                | Action::FlapLink { .. }
                | Action::DegradeLink { .. }
                | Action::KillLeader
                | Action::PartitionOneWay { .. }
        )
    }

    pub fn is_operation(&self) -> bool {
        matches!(
            self,
            Action::Switchover { .. }
                | Action::SwitchoverNext { .. }
                | Action::UpdateService { .. }
                | Action::Drain { .. }
                | Action::Undrain { .. }
                | Action::Maintenance { .. }
        )
    }
}

/// What a step may name: the topology's sites, agents and services.
pub(super) struct Names<'a> {
    /// Every site (host sites, then `w` with a witness).
    pub sites: &'a BTreeSet<String>,
    pub host_sites: &'a [String],
    /// Host agents (the witness, when there is one, is node `hosts + 1`).
    pub hosts: u64,
    pub witness: bool,
    pub services: Vec<&'a str>,
}

/// Why a step was refused: the offending field, its span in the file, and why.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StepError {
    pub span: Range<usize>,
    pub field: &'static str,
    pub reason: String,
}

fn error(span: Range<usize>, field: &'static str, reason: impl Into<String>) -> StepError {
    StepError {
        span,
        field,
        reason: reason.into(),
    }
}

fn duration(field: &'static str, v: &Spanned<String>) -> Result<Duration, StepError> {
    humantime::parse_duration(v.get_ref())
        .map_err(|e| error(v.span(), field, format!("`{}`: {e}", v.get_ref())))
}

impl StepFile {
    /// When the step may start, as written (checked for time order by the caller).
    pub fn at(&self) -> Result<Option<(Duration, Range<usize>)>, StepError> {
        self.at
            .as_ref()
            .map(|v| Ok((duration("step.at", v)?, v.span())))
            .transpose()
    }

    /// The step with the fields its action needs, or the first missing or wrong one.
    pub fn check(&self, names: &Names<'_>) -> Result<Step, StepError> {
        let kind = *self.action.get_ref();
        let missing = |field: &'static str, what: &str| {
            error(
                self.action.span(),
                field,
                format!("{kind:?} needs `{what}`"),
            )
        };
        let site = || -> Result<String, StepError> {
            let s = self
                .site
                .as_ref()
                .ok_or_else(|| missing("step.site", "site"))?;
            if names.sites.contains(s.get_ref()) {
                Ok(s.get_ref().clone())
            } else {
                Err(error(
                    s.span(),
                    "step.site",
                    format!(
                        "unknown site `{}` (sites: {})",
                        s.get_ref(),
                        list(names.sites)
                    ),
                ))
            }
        };
        let host = |nodes: u64, noun: &str| -> Result<u64, StepError> {
            let h = self
                .host
                .as_ref()
                .ok_or_else(|| missing("step.host", "host"))?;
            if (1..=nodes).contains(h.get_ref()) {
                Ok(*h.get_ref())
            } else {
                Err(error(
                    h.span(),
                    "step.host",
                    format!("unknown {noun} {} ({noun}s 1 to {nodes})", h.get_ref()),
                ))
            }
        };
        let peer = || -> Result<Option<String>, StepError> {
            let Some(p) = &self.peer else {
                return Ok(None);
            };
            if !names.sites.contains(p.get_ref()) {
                return Err(error(
                    p.span(),
                    "step.peer",
                    format!(
                        "unknown site `{}` (sites: {})",
                        p.get_ref(),
                        list(names.sites)
                    ),
                ));
            }
            if self.site.as_ref().map(|s| s.get_ref()) == Some(p.get_ref()) {
                return Err(error(
                    p.span(),
                    "step.peer",
                    "a link joins two different sites",
                ));
            }
            Ok(Some(p.get_ref().clone()))
        };
        let service = || -> Result<String, StepError> {
            let service = self
                .service
                .as_ref()
                .ok_or_else(|| missing("step.service", "service"))?;
            if !names.services.contains(&service.get_ref().as_str()) {
                return Err(error(
                    service.span(),
                    "step.service",
                    format!("unknown service `{}`", service.get_ref()),
                ));
            }
            Ok(service.get_ref().clone())
        };
        let optional = |field: &'static str, v: &Option<Spanned<String>>| {
            v.as_ref().map(|v| duration(field, v)).transpose()
        };
        let action = match kind {
            ActionKind::KillHost | ActionKind::StartHost => {
                // Any agent: a witness is the node after the hosts.
                let host = host(names.hosts + u64::from(names.witness), "node")?;
                if kind == ActionKind::KillHost {
                    Action::KillHost { host }
                } else {
                    Action::StartHost { host }
                }
            }
            ActionKind::Drain => Action::Drain {
                host: host(names.hosts, "host")?,
            },
            ActionKind::Undrain => Action::Undrain {
                host: host(names.hosts, "host")?,
            },
            ActionKind::KillSite => Action::KillSite { site: site()? },
            ActionKind::StartSite => Action::StartSite { site: site()? },
            ActionKind::ThawSite => Action::ThawSite { site: site()? },
            ActionKind::FreezeSite => Action::FreezeSite {
                site: site()?,
                thaw_after: optional("step.duration", &self.duration)?,
            },
            ActionKind::Partition => Action::Partition {
                site: site()?,
                peer: peer()?,
            },
            ActionKind::Heal => Action::Heal {
                site: site()?,
                peer: peer()?,
            },
            ActionKind::FlapLink => {
                let (site, peer) = (site()?, peer()?);
                let needs = "flap_link needs `count` (> 0) and `duration` (each half-period)";
                let count = match &self.count {
                    Some(c) if *c.get_ref() > 0 => *c.get_ref(),
                    Some(c) => return Err(error(c.span(), "step.count", needs)),
                    None => return Err(error(self.action.span(), "step.count", needs)),
                };
                let half = self
                    .duration
                    .as_ref()
                    .ok_or_else(|| error(self.action.span(), "step.count", needs))?;
                Action::FlapLink {
                    site,
                    peer,
                    count,
                    half_period: duration("step.duration", half)?,
                }
            }
            ActionKind::DegradeLink => {
                let (site, peer) = (site()?, peer()?);
                if let Some(l) = &self.loss {
                    emu::params::parse_loss(l.get_ref())
                        .map_err(|e| error(l.span(), "step.loss", e.to_string()))?;
                }
                if let Some(r) = &self.rate {
                    emu::params::parse_rate(r.get_ref())
                        .map_err(|e| error(r.span(), "step.rate", e.to_string()))?;
                }
                Action::DegradeLink {
                    site,
                    peer,
                    impairment: Impairment {
                        delay: optional("step.delay", &self.delay)?,
                        jitter: optional("step.jitter", &self.jitter)?,
                        loss: self.loss.as_ref().map(|l| l.get_ref().clone()),
                        rate: self.rate.as_ref().map(|r| r.get_ref().clone()),
                    },
                }
            }
            ActionKind::KillLeader => Action::KillLeader,
            ActionKind::HealAll => Action::HealAll,
            ActionKind::PartitionOneWay => {
                let from = site()?;
                let to = peer()?.ok_or_else(|| missing("step.peer", "peer"))?;
                Action::PartitionOneWay { from, to }
            }
            ActionKind::SwitchoverNext => Action::SwitchoverNext {
                service: service()?,
            },
            ActionKind::UpdateService => Action::UpdateService {
                service: service()?,
            },
            ActionKind::Switchover => {
                let service = service()?;
                let to = self
                    .to
                    .as_ref()
                    .ok_or_else(|| error(self.action.span(), "step.to", "switchover needs `to`"))?;
                if !names.host_sites.contains(to.get_ref()) {
                    return Err(error(
                        to.span(),
                        "step.to",
                        format!("unknown site `{}`", to.get_ref()),
                    ));
                }
                Action::Switchover {
                    service,
                    to: to.get_ref().clone(),
                }
            }
            ActionKind::Maintenance => {
                let site = site()?;
                let needs = "maintenance needs mode = \"enter\" or \"exit\"";
                let mode = match self.mode.as_ref() {
                    Some(m) if m.get_ref() == "enter" => MaintenanceMode::Enter,
                    Some(m) if m.get_ref() == "exit" => MaintenanceMode::Exit,
                    Some(m) => return Err(error(m.span(), "step.mode", needs)),
                    None => return Err(error(self.action.span(), "step.mode", needs)),
                };
                Action::Maintenance { site, mode }
            }
            ActionKind::Wait => {
                let d = self.duration.as_ref().ok_or_else(|| {
                    error(self.action.span(), "step.duration", "wait needs `duration`")
                })?;
                Action::Wait {
                    duration: duration("step.duration", d)?,
                }
            }
            ActionKind::WaitUntil => {
                let text = self.until.as_ref().ok_or_else(|| {
                    error(self.action.span(), "step.until", "wait_until needs `until`")
                })?;
                let until = Until::parse(text.get_ref())
                    .map_err(|e| error(text.span(), "step.until", e))?;
                if let Some(x) = until.site()
                    && !names.sites.contains(x)
                {
                    return Err(error(
                        text.span(),
                        "step.until",
                        format!("unknown site `{x}`"),
                    ));
                }
                Action::WaitUntil {
                    until,
                    timeout: optional("step.timeout", &self.timeout)?
                        .unwrap_or(DEFAULT_UNTIL_TIMEOUT),
                }
            }
        };
        Ok(Step {
            at: self.at()?.map(|(at, _)| at),
            action,
        })
    }
}
