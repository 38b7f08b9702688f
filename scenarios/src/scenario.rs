//! The drill file format (TOML; documented in `scenarios/README.md`).
//!
//! A scenario is parsed and checked completely before anything starts: unknown fields, unknown
//! step actions, a step naming a site, host or service the topology does not have, or steps out
//! of time order are errors that name the line, column and field of the offending value (its
//! exact position, from the parser's spans) — and no lab is started. Steps become typed
//! [`Step`]s whose actions carry exactly their fields ([`step`]).
//!
//! It does not run anything; [`crate::runner`] does.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub mod step;
pub mod volume;

pub use step::{
    Action, ActionKind, DEFAULT_UNTIL_TIMEOUT, Impairment, MaintenanceMode, Step, Until,
};
use step::{Names, StepError, StepFile};
pub use volume::VolumeDef;

/// A parsed and checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub topology: Topology,
    /// Services to declare; the first is the one probed.
    pub services: Vec<ServiceDef>,
    pub probes: Probes,
    pub steps: Vec<Step>,
    pub expect: Expect,
    pub drill: DrillOptions,
}

/// The file as written; [`Scenario::parse`] checks it into a [`Scenario`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    topology: Topology,
    #[serde(rename = "service")]
    services: Vec<ServiceDef>,
    #[serde(default)]
    probes: Probes,
    #[serde(rename = "step", default)]
    steps: Vec<StepFile>,
    #[serde(default)]
    expect: Expect,
    #[serde(default)]
    drill: DrillOptions,
}

/// Where the checked values outside the steps are in the file (the same text read again for
/// spans only; the values come from [`ScenarioFile`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spans {
    topology: TopologySpans,
    #[serde(rename = "service")]
    services: Option<Spanned<Vec<ServiceSpans>>>,
    probes: ProbesSpans,
    drill: DrillSpans,
    expect: ExpectSpans,
}

type At = Option<Spanned<IgnoredAny>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TopologySpans {
    sites: At,
    hosts_per_site: At,
    #[serde(rename = "link")]
    links: Vec<LinkSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LinkSpans {
    a: At,
    b: At,
    loss: At,
    rate: At,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServiceSpans {
    name: At,
    sites: At,
    instances: At,
    volume: At,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProbesSpans {
    from: At,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DrillSpans {
    min_time_scale: At,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ExpectSpans {
    final_owner: At,
    dns_answers: At,
    in_sync_at_end: At,
    rpo_within_reported_lag: At,
    divergence_listed: At,
}

/// The span of a value, or the start of the file when it was not written.
fn span(at: &At) -> Range<usize> {
    at.as_ref().map_or(0..0, |s| s.span())
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
    /// A volume replicated from the service's first site (`<name>-data`); the service then
    /// keeps its records on it through NBD and runs one instance.
    #[serde(default)]
    pub volume: Option<VolumeDef>,
    /// Most data a failover may lose (the planner's RPO gate), e.g. `"5s"`.
    #[serde(default, with = "humantime_serde")]
    pub max_rpo: Option<Duration>,
}

impl ServiceDef {
    /// The sites the service may run in, in priority order (`host_sites` when not given).
    pub fn sites_or(&self, host_sites: &[String]) -> Vec<String> {
        if self.sites.is_empty() {
            host_sites.to_vec()
        } else {
            self.sites.clone()
        }
    }
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
    /// Also ask every host's service address directly (`GET /whoami`, no DNS) every
    /// `interval`, to catch any instance serving that DNS no longer points at.
    #[serde(default)]
    pub direct: bool,
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
            direct: false,
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
    /// Probing every instance address directly (needs `probes.direct`), never two sites
    /// answering at once, nor an older epoch after a newer one.
    #[serde(default)]
    pub instances_one_site: bool,
    /// Epochs only go up: per probe stream, in the owner record, and across streams in time.
    #[serde(default)]
    pub epochs_only_go_up: bool,
    /// Every vantage's last probe was served.
    #[serde(default)]
    pub served_at_end: bool,
    /// Every outage (no vantage served) longer than the RTO bound has an event of the fabric's
    /// log within it.
    #[serde(default)]
    pub outages_explained: bool,
    /// Every acknowledged write is on the volume of the site whose instance acknowledged it.
    #[serde(default)]
    pub writes_where_acked: bool,
    /// Lost acknowledged writes are at most the lag the fabric reported for the final owner's
    /// copy just before the first fault, plus the writes acknowledged after that report.
    #[serde(default)]
    pub rpo_within_reported_lag: bool,
    /// Sites whose copy of the service's volume is in sync at the end.
    #[serde(default)]
    pub in_sync_at_end: Vec<String>,
    /// Every site whose instance acknowledged a write the final owner lacks has the agent's
    /// event listing the ranges its resync discarded.
    #[serde(default)]
    pub divergence_listed: bool,
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
            instances_one_site: false,
            epochs_only_go_up: false,
            served_at_end: false,
            outages_explained: false,
            writes_where_acked: false,
            rpo_within_reported_lag: false,
            in_sync_at_end: Vec::new(),
            divergence_listed: false,
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

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: line {line}, column {column}: {field}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        field: String,
        reason: String,
    },
}

/// A checked value that is wrong: where it is, which field, why.
struct Refusal {
    span: Range<usize>,
    field: &'static str,
    reason: String,
}

fn refuse(span: Range<usize>, field: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        span,
        field,
        reason: reason.into(),
    }
}

impl From<StepError> for Refusal {
    fn from(e: StepError) -> Self {
        refuse(e.span, e.field, e.reason)
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// Parses and checks `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let parse_error = |e: toml::de::Error| ScenarioError::Parse {
            path: origin.to_string(),
            message: crate::toml_file::describe(&e, text),
        };
        let file: ScenarioFile = toml::from_str(text).map_err(parse_error)?;
        // The same text parsed, so this only fails where the first parse would have.
        let spans: Spans = toml::from_str(text).map_err(parse_error)?;
        Self::check(file, &spans).map_err(|r| {
            let (line, column) = crate::toml_file::position(text, r.span.start);
            ScenarioError::Invalid {
                path: origin.to_string(),
                line,
                column,
                field: r.field.to_string(),
                reason: r.reason,
            }
        })
    }

    /// Every site of the topology (host sites, then `w` with a witness).
    pub fn all_sites(&self) -> Vec<String> {
        self.topology.all_sites()
    }

    pub fn host_sites(&self) -> Vec<String> {
        self.topology.host_sites()
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

    fn check(file: ScenarioFile, spans: &Spans) -> Result<Self, Refusal> {
        let t = &file.topology;
        if !(1..=9).contains(&t.sites) || !(1..=20).contains(&t.hosts_per_site) {
            let at = if (1..=9).contains(&t.sites) {
                &spans.topology.hosts_per_site
            } else {
                &spans.topology.sites
            };
            return Err(refuse(
                span(at),
                "topology.sites",
                "a drill has 1 to 9 sites and 1 to 20 hosts per site",
            ));
        }
        let host_sites = t.host_sites();
        let sites: BTreeSet<String> = t.all_sites().into_iter().collect();
        let known = |s: &str| s == "*" || sites.contains(s);
        for (i, l) in t.links.iter().enumerate() {
            let at = spans.topology.links.get(i);
            let at = |f: fn(&LinkSpans) -> &At| at.map_or(0..0, |l| span(f(l)));
            for (end, place) in [(&l.a, at(|l| &l.a)), (&l.b, at(|l| &l.b))] {
                if !known(end) {
                    return Err(refuse(
                        place,
                        "topology.link",
                        format!("unknown site `{end}` (sites: {})", list(&sites)),
                    ));
                }
            }
            if let Some(loss) = &l.loss {
                emu::params::parse_loss(loss)
                    .map_err(|e| refuse(at(|l| &l.loss), "topology.link", e.to_string()))?;
            }
            if let Some(rate) = &l.rate {
                emu::params::parse_rate(rate)
                    .map_err(|e| refuse(at(|l| &l.rate), "topology.link", e.to_string()))?;
            }
        }
        let services = spans.services.as_ref();
        if file.services.is_empty() {
            return Err(refuse(
                services.map_or(0..0, |s| s.span()),
                "service",
                "declare at least one [[service]]",
            ));
        }
        for (i, s) in file.services.iter().enumerate() {
            let at = services.and_then(|v| v.get_ref().get(i));
            let at = |f: fn(&ServiceSpans) -> &At| at.map_or(0..0, |s| span(f(s)));
            if let Err(e) = consensus::state::validate_name("service name", &s.name) {
                return Err(refuse(at(|s| &s.name), "service.name", e.to_string()));
            }
            if let Some(bad) = s.sites.iter().find(|x| !host_sites.contains(x)) {
                return Err(refuse(
                    at(|s| &s.sites),
                    "service.sites",
                    format!(
                        "unknown site `{bad}` (host sites: {})",
                        host_sites.join(", ")
                    ),
                ));
            }
            if let Some(v) = &s.volume {
                if s.instances != 1 {
                    return Err(refuse(
                        at(|s| &s.instances),
                        "service.instances",
                        "a service with a volume runs one instance",
                    ));
                }
                if let Some(problem) = v.problem(&s.name, &s.sites_or(&host_sites), &host_sites) {
                    return Err(refuse(at(|s| &s.volume), "service.volume", problem));
                }
            }
        }
        if let Some(v) = file.probes.from.iter().find(|v| !host_sites.contains(v)) {
            return Err(refuse(
                span(&spans.probes.from),
                "probes.from",
                format!("unknown site `{v}`"),
            ));
        }
        if !(0.01..=1.0).contains(&file.drill.min_time_scale) {
            return Err(refuse(
                span(&spans.drill.min_time_scale),
                "drill.min_time_scale",
                "must be between 0.01 and 1",
            ));
        }
        let names = Names {
            sites: &sites,
            host_sites: &host_sites,
            hosts: u64::from(t.sites * t.hosts_per_site),
            witness: t.witness,
            services: file.services.iter().map(|s| s.name.as_str()).collect(),
        };
        let mut steps = Vec::with_capacity(file.steps.len());
        let mut last_at = Duration::ZERO;
        for step in &file.steps {
            if let Some((at, place)) = step.at()? {
                if at < last_at {
                    return Err(refuse(
                        place,
                        "step.at",
                        format!(
                            "{at:?} is before the previous step's {last_at:?}; keep steps in time order"
                        ),
                    ));
                }
                last_at = at;
            }
            steps.push(step.check(&names)?);
        }
        let e = &file.expect;
        for (field, site, at) in [
            (
                "expect.final_owner",
                &e.final_owner,
                &spans.expect.final_owner,
            ),
            (
                "expect.dns_answers",
                &e.dns_answers,
                &spans.expect.dns_answers,
            ),
        ] {
            if let Some(s) = site
                && !host_sites.contains(s)
            {
                return Err(refuse(span(at), field, format!("unknown site `{s}`")));
            }
        }
        if let Some(s) = e.in_sync_at_end.iter().find(|s| !host_sites.contains(s)) {
            return Err(refuse(
                span(&spans.expect.in_sync_at_end),
                "expect.in_sync_at_end",
                format!("unknown site `{s}`"),
            ));
        }
        let has_volume = file.services[0].volume.is_some();
        for (field, asked, at) in [
            (
                "expect.in_sync_at_end",
                !e.in_sync_at_end.is_empty(),
                &spans.expect.in_sync_at_end,
            ),
            (
                "expect.rpo_within_reported_lag",
                e.rpo_within_reported_lag,
                &spans.expect.rpo_within_reported_lag,
            ),
            (
                "expect.divergence_listed",
                e.divergence_listed,
                &spans.expect.divergence_listed,
            ),
        ] {
            if asked && !has_volume {
                return Err(refuse(
                    span(at),
                    field,
                    "the probed service (the first [[service]]) has no volume",
                ));
            }
        }
        Ok(Scenario {
            name: file.name,
            description: file.description,
            topology: file.topology,
            services: file.services,
            probes: file.probes,
            steps,
            expect: file.expect,
            drill: file.drill,
        })
    }
}

impl Topology {
    /// Reads a topology file: a whole drill scenario (its `[topology]` is taken) or a bare
    /// topology table (the fields of `[topology]` at the top level).
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// Parses `text` as a drill scenario, else as a bare topology table; when both fail, the
    /// error is the drill's if the text has a `[topology]` table, else the bare table's.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let as_drill = match Scenario::parse(text, origin) {
            Ok(s) => return Ok(s.topology),
            Err(e) => e,
        };
        match toml::from_str::<Topology>(text) {
            Ok(t) => Ok(t),
            Err(_)
                if text
                    .parse::<toml::Table>()
                    .is_ok_and(|t| t.contains_key("topology")) =>
            {
                Err(as_drill)
            }
            Err(e) => Err(ScenarioError::Parse {
                path: origin.to_string(),
                message: format!(
                    "neither a drill scenario nor a topology table: {}",
                    crate::toml_file::describe(&e, text)
                ),
            }),
        }
    }

    /// Host sites `s1` … `sN`.
    pub fn host_sites(&self) -> Vec<String> {
        (1..=self.sites).map(|s| format!("s{s}")).collect()
    }

    /// Every site: host sites, then `w` with a witness.
    pub fn all_sites(&self) -> Vec<String> {
        let mut sites = self.host_sites();
        if self.witness {
            sites.push("w".into());
        }
        sites
    }
}

/// The text of the file at `path`.
fn read(path: &Path) -> Result<String, ScenarioError> {
    std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn list(sites: &BTreeSet<String>) -> String {
    sites.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
