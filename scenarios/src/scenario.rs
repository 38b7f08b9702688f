//! The drill file format (TOML; documented in `scenarios/README.md`).
//!
//! A scenario is parsed and checked completely before anything starts: unknown fields, unknown
//! step actions, a step naming a site, host or service the topology does not have, or steps out
//! of time order are errors that name the line and the field — and no lab is started.
//!
//! It does not run anything; [`crate::runner`] does.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A parsed and checked scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub topology: Topology,
    /// Services to declare; the first is the one probed.
    #[serde(rename = "service")]
    pub services: Vec<ServiceDef>,
    #[serde(default)]
    pub probes: Probes,
    #[serde(rename = "step", default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
    #[serde(default)]
    pub drill: DrillOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Sites `s1` … `sN`.
    pub sites: u32,
    #[serde(default = "one")]
    pub hosts_per_site: u32,
    /// A witness agent (a voter without workloads) in its own site `w`.
    #[serde(default)]
    pub witness: bool,
    /// Hosts also advertise `::1`.
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub timing: Timing,
    /// Links between sites; `a = "*"` / `b = "*"` match every site. Later entries override
    /// earlier ones. Without links, sites talk directly (no emulator).
    #[serde(rename = "link", default)]
    pub links: Vec<LinkDef>,
}

fn one() -> u32 {
    1
}

/// Fabric timing for the lab; unset fields keep the lab's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lease_margin: Option<Duration>,
    /// DNS answer TTL, seconds.
    #[serde(default)]
    pub dns_ttl: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub raft_heartbeat: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub election_timeout_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub election_timeout_max: Option<Duration>,
}

/// Impairment of the link between `a` and `b` (both directions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDef {
    pub a: String,
    pub b: String,
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// `"1%"` or `0.01`.
    #[serde(default)]
    pub loss: Option<String>,
    /// `"100mbit"`, `"10mbit"`, `"1gbit"`, `"500kbit"` or bits per second.
    #[serde(default)]
    pub rate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: String,
    /// Sites in priority order (default: every host site in order).
    #[serde(default)]
    pub sites: Vec<String>,
    #[serde(default = "one")]
    pub instances: u32,
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    8080
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// Sites the clients probe from (default: every host site).
    #[serde(default)]
    pub from: Vec<String>,
    /// Also send a sequence-numbered write with every probe (counted when acknowledged).
    #[serde(default = "yes")]
    pub writes: bool,
    /// Time limit of one probe (DNS + connect + request), retried every 100 ms within it like a
    /// client with retries: only an outage longer than this fails a probe.
    #[serde(with = "humantime_serde", default = "default_probe_timeout")]
    pub timeout: Duration,
}

fn default_interval() -> Duration {
    Duration::from_millis(250)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}

fn yes() -> bool {
    true
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            from: Vec::new(),
            writes: true,
            timeout: default_probe_timeout(),
        }
    }
}

/// What must hold for the drill to pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Most time from the first fault (or operation) to the first successful probe at the new
    /// owner.
    #[serde(default, with = "humantime_serde")]
    pub rto_max: Option<Duration>,
    /// Most acknowledged writes missing from the final owner at the end.
    #[serde(default)]
    pub rpo_max_writes: Option<u64>,
    /// Never two sites serving at once, and epochs only go up (default true).
    #[serde(default = "yes")]
    pub no_split_brain: bool,
    /// Site owning the probed service at the end.
    #[serde(default)]
    pub final_owner: Option<String>,
    /// At the end every live DNS server answers with the addresses of this site's instance.
    #[serde(default)]
    pub dns_answers: Option<String>,
    /// Most failed probes over the whole drill, all vantage sites together.
    #[serde(default)]
    pub max_failed_probes: Option<u64>,
    /// Most changes of the owning site (e.g. 0: a flapping link must not move the service).
    #[serde(default)]
    pub max_owner_changes: Option<u64>,
}

impl Default for Expect {
    fn default() -> Self {
        Self {
            rto_max: None,
            rpo_max_writes: None,
            no_split_brain: true,
            final_owner: None,
            dns_answers: None,
            max_failed_probes: None,
            max_owner_changes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillOptions {
    /// Smallest time scale the runner may apply to step times and waits (`--time-scale`);
    /// 1.0 means the timeline must run as written.
    #[serde(default = "one_f")]
    pub min_time_scale: f64,
    /// Probing continues this long after the last step, so the end state is observed.
    #[serde(with = "humantime_serde", default = "default_settle")]
    pub settle: Duration,
}

fn one_f() -> f64 {
    1.0
}

fn default_settle() -> Duration {
    Duration::from_secs(3)
}

impl Default for DrillOptions {
    fn default() -> Self {
        Self {
            min_time_scale: 1.0,
            settle: default_settle(),
        }
    }
}

/// One step of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Not before this time since the drill started (steps otherwise run one after another).
    #[serde(default, with = "humantime_serde")]
    pub at: Option<Duration>,
    pub action: Action,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub host: Option<u64>,
    /// The other end of a link (`partition`, `heal`, `degrade_link`); without it, `site` is cut
    /// from (or healed with) every other site.
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// Target site of a `switchover`.
    #[serde(default)]
    pub to: Option<String>,
    /// `wait` length; `freeze_site` thaws after it when given.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// `wait_until` condition: `owner:SITE`, `serving:SITE`, `site_up:SITE`, `site_down:SITE`,
    /// `all_probes_ok`.
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `maintenance`: `enter` or `exit`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    #[serde(default)]
    pub loss: Option<String>,
    #[serde(default)]
    pub rate: Option<String>,
    /// Repeat `partition`/`heal` pairs: the link flaps `count` times, `duration` down and
    /// `duration` up (`flap_link`).
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
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
}

impl Action {
    /// Faults start the RTO clock; operations too when there is no fault.
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            Action::KillHost
                | Action::KillSite
                | Action::FreezeSite
                | Action::Partition
                | Action::FlapLink
                | Action::DegradeLink
        )
    }

    pub fn is_operation(self) -> bool {
        matches!(
            self,
            Action::Switchover | Action::Drain | Action::Undrain | Action::Maintenance
        )
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
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: line {line}: {field}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        field: String,
        reason: String,
    },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            message: crate::toml_file::describe(&e, text),
        })?;
        scenario.check(text, origin)?;
        Ok(scenario)
    }

    /// Every site of the topology (host sites, then `w` with a witness).
    pub fn all_sites(&self) -> Vec<String> {
        let mut sites = self.host_sites();
        if self.topology.witness {
            sites.push("w".into());
        }
        sites
    }

    pub fn host_sites(&self) -> Vec<String> {
        (1..=self.topology.sites).map(|s| format!("s{s}")).collect()
    }

    /// The probed service.
    pub fn service(&self) -> &ServiceDef {
        &self.services[0]
    }

    /// Sites the probes run from.
    pub fn vantages(&self) -> Vec<String> {
        if self.probes.from.is_empty() {
            self.host_sites()
        } else {
            self.probes.from.clone()
        }
    }

    fn check(&self, text: &str, origin: &str) -> Result<(), ScenarioError> {
        let err = |needle: &str, nth: usize, field: &str, reason: String| ScenarioError::Invalid {
            path: origin.to_string(),
            line: line_of(text, needle, nth),
            field: field.to_string(),
            reason,
        };
        let t = &self.topology;
        if !(1..=9).contains(&t.sites) || !(1..=20).contains(&t.hosts_per_site) {
            return Err(err(
                "sites",
                0,
                "topology.sites",
                "a drill has 1 to 9 sites and 1 to 20 hosts per site".into(),
            ));
        }
        let sites: BTreeSet<String> = self.all_sites().into_iter().collect();
        let known = |s: &str| s == "*" || sites.contains(s);
        for (i, l) in t.links.iter().enumerate() {
            for end in [&l.a, &l.b] {
                if !known(end) {
                    return Err(err(
                        "[[topology.link]]",
                        i,
                        "topology.link",
                        format!("unknown site `{end}` (sites: {})", list(&sites)),
                    ));
                }
            }
            check_link_params(l.loss.as_deref(), l.rate.as_deref())
                .map_err(|r| err("[[topology.link]]", i, "topology.link", r))?;
        }
        if self.services.is_empty() {
            return Err(err(
                "name",
                0,
                "service",
                "declare at least one [[service]]".into(),
            ));
        }
        let hosts = u64::from(t.sites * t.hosts_per_site);
        for (i, s) in self.services.iter().enumerate() {
            if let Err(e) = consensus::state::validate_name("service name", &s.name) {
                return Err(err("[[service]]", i, "service.name", e.to_string()));
            }
            if let Some(bad) = s.sites.iter().find(|x| !self.host_sites().contains(x)) {
                return Err(err(
                    "[[service]]",
                    i,
                    "service.sites",
                    format!(
                        "unknown site `{bad}` (host sites: {})",
                        self.host_sites().join(", ")
                    ),
                ));
            }
        }
        for v in &self.probes.from {
            if !self.host_sites().contains(v) {
                return Err(err("from", 0, "probes.from", format!("unknown site `{v}`")));
            }
        }
        if !(0.01..=1.0).contains(&self.drill.min_time_scale) {
            return Err(err(
                "min_time_scale",
                0,
                "drill.min_time_scale",
                "must be between 0.01 and 1".into(),
            ));
        }
        let mut last_at = Duration::ZERO;
        for (i, step) in self.steps.iter().enumerate() {
            let bad = |field: &str, reason: String| err("[[step]]", i, field, reason);
            if let Some(at) = step.at {
                if at < last_at {
                    return Err(bad(
                        "step.at",
                        format!(
                            "{at:?} is before the previous step's {last_at:?}; keep steps in time order"
                        ),
                    ));
                }
                last_at = at;
            }
            self.check_step(step, &sites, hosts)
                .map_err(|(f, r)| bad(f, r))?;
        }
        let e = &self.expect;
        for (field, site) in [
            ("expect.final_owner", &e.final_owner),
            ("expect.dns_answers", &e.dns_answers),
        ] {
            if let Some(s) = site
                && !self.host_sites().contains(s)
            {
                return Err(err("[expect]", 0, field, format!("unknown site `{s}`")));
            }
        }
        Ok(())
    }

    /// Checks the fields one step needs and names the first missing or wrong one.
    fn check_step(
        &self,
        s: &Step,
        sites: &BTreeSet<String>,
        hosts: u64,
    ) -> Result<(), (&'static str, String)> {
        let action = format!("{:?}", s.action);
        let need_site = || -> Result<&String, (&'static str, String)> {
            let site = s
                .site
                .as_ref()
                .ok_or(("step.site", format!("{action} needs `site`")))?;
            if sites.contains(site) {
                Ok(site)
            } else {
                Err((
                    "step.site",
                    format!("unknown site `{site}` (sites: {})", list(sites)),
                ))
            }
        };
        let need_host = || -> Result<u64, (&'static str, String)> {
            let h = s
                .host
                .ok_or(("step.host", format!("{action} needs `host`")))?;
            if (1..=hosts).contains(&h) {
                Ok(h)
            } else {
                Err((
                    "step.host",
                    format!("unknown host {h} (hosts 1 to {hosts})"),
                ))
            }
        };
        let peer_ok = || -> Result<(), (&'static str, String)> {
            match &s.peer {
                Some(p) if !sites.contains(p) => Err((
                    "step.peer",
                    format!("unknown site `{p}` (sites: {})", list(sites)),
                )),
                Some(p) if Some(p) == s.site.as_ref() => {
                    Err(("step.peer", "a link joins two different sites".into()))
                }
                _ => Ok(()),
            }
        };
        let need_service = || -> Result<(), (&'static str, String)> {
            let name = s
                .service
                .as_ref()
                .ok_or(("step.service", format!("{action} needs `service`")))?;
            if self.services.iter().any(|d| &d.name == name) {
                Ok(())
            } else {
                Err(("step.service", format!("unknown service `{name}`")))
            }
        };
        match s.action {
            Action::KillHost | Action::StartHost => {
                // Any agent: a witness is the node after the hosts.
                let witness = u64::from(self.topology.witness);
                let h = s
                    .host
                    .ok_or(("step.host", format!("{action} needs `host`")))?;
                if !(1..=hosts + witness).contains(&h) {
                    return Err((
                        "step.host",
                        format!("unknown node {h} (nodes 1 to {})", hosts + witness),
                    ));
                }
            }
            Action::Drain | Action::Undrain => {
                need_host()?;
            }
            Action::KillSite | Action::StartSite | Action::ThawSite | Action::FreezeSite => {
                need_site()?;
            }
            Action::Partition | Action::Heal => {
                need_site()?;
                peer_ok()?;
            }
            Action::FlapLink => {
                need_site()?;
                peer_ok()?;
                if s.duration.is_none() || s.count.is_none_or(|c| c == 0) {
                    return Err((
                        "step.count",
                        "flap_link needs `count` (> 0) and `duration` (each half-period)".into(),
                    ));
                }
            }
            Action::DegradeLink => {
                need_site()?;
                peer_ok()?;
                check_link_params(s.loss.as_deref(), s.rate.as_deref())
                    .map_err(|r| ("step.loss", r))?;
            }
            Action::Switchover => {
                need_service()?;
                let to =
                    s.to.as_ref()
                        .ok_or(("step.to", "switchover needs `to`".to_string()))?;
                if !self.host_sites().contains(to) {
                    return Err(("step.to", format!("unknown site `{to}`")));
                }
            }
            Action::Maintenance => {
                need_site()?;
                match s.mode.as_deref() {
                    Some("enter" | "exit") => {}
                    _ => {
                        return Err((
                            "step.mode",
                            "maintenance needs mode = \"enter\" or \"exit\"".into(),
                        ));
                    }
                }
            }
            Action::Wait => {
                if s.duration.is_none() {
                    return Err(("step.duration", "wait needs `duration`".into()));
                }
            }
            Action::WaitUntil => {
                let until = s
                    .until
                    .as_ref()
                    .ok_or(("step.until", "wait_until needs `until`".to_string()))?;
                match Until::parse(until).map_err(|e| ("step.until", e))? {
                    Until::Owner(x) | Until::Serving(x) | Until::SiteUp(x) | Until::SiteDown(x)
                        if !sites.contains(&x) =>
                    {
                        return Err(("step.until", format!("unknown site `{x}`")));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn list(sites: &BTreeSet<String>) -> String {
    sites.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Checks loss and rate strings with the link emulator's own parsers.
fn check_link_params(loss: Option<&str>, rate: Option<&str>) -> Result<(), String> {
    if let Some(l) = loss {
        emu::params::parse_loss(l).map_err(|e| e.to_string())?;
    }
    if let Some(r) = rate {
        emu::params::parse_rate(r).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Line (1-based) of the `nth` occurrence of `needle` at the start of a line, or 1.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
