//! Runs a drill: builds the lab from the topology, declares the services, probes from every
//! vantage site the whole time, plays the timeline, watches the owner, and ends with a report.
//!
//! Invariant: the lab is always torn down — after the report, on any error, and on
//! cancellation (Ctrl-C) — because [`run`] owns it and tears it down before returning.
//!
//! It injects faults only from outside the agents: signals, the link emulator, the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use siteagent::api::{OperationRequest, OperationResult, ServiceView, SiteView};
use tokio_util::sync::CancellationToken;

use crate::checks::{self, Measured};
use crate::client::Client;
use crate::lab::{Lab, LabTiming, UpOptions};
use crate::probe::{self, DnsAnswer};
use crate::report::{DnsChange, Marker, MarkerKind, Measure, OwnerChange, ProbeSample, Report};
use crate::scenario::{Action, Scenario, Until};

/// How a drill is run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `report.json` and `timeline.svg` go.
    pub report_dir: PathBuf,
    /// Seeds the link emulator's randomness (jitter, loss).
    pub seed: u64,
    /// Multiplies step times and waits; not below the scenario's `min_time_scale`.
    pub time_scale: f64,
    /// Bring the service up in the recovery site under a test name instead of playing the
    /// timeline; production probes must not fail.
    pub test_failover: bool,
    /// Lab directory (default: a temporary one, removed afterwards).
    pub lab_dir: Option<PathBuf>,
    pub siteagent: PathBuf,
    /// Print progress lines on stderr.
    pub progress: bool,
}

/// What a drill produced.
pub struct Outcome {
    pub report: Report,
    pub json: PathBuf,
    pub svg: PathBuf,
}

/// Shared recording of the drill.
#[derive(Default)]
struct Recording {
    probes: Vec<ProbeSample>,
    markers: Vec<Marker>,
    owners: Vec<OwnerChange>,
    dns: Vec<DnsChange>,
    acked: BTreeSet<u64>,
    /// Last DNS answer per vantage, to record only changes.
    last_dns: BTreeMap<String, Vec<String>>,
    step_failures: Vec<String>,
}

struct Drill<'a> {
    scenario: &'a Scenario,
    opts: &'a RunOptions,
    lab: Lab,
    client: Client,
    t0: Instant,
    rec: Arc<Mutex<Recording>>,
    /// Sites whose agents are dead, frozen or cut off: not asked for the fabric's state.
    impaired: Arc<Mutex<BTreeSet<String>>>,
    cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `scenario`; always tears its lab down before returning.
pub async fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    if opts.time_scale < scenario.drill.min_time_scale || opts.time_scale > 1.0 {
        bail!(
            "--time-scale {} is outside what {} allows ({} to 1)",
            opts.time_scale,
            scenario.name,
            scenario.drill.min_time_scale
        );
    }
    let temp;
    let dir = match &opts.lab_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix(&format!("drill-{}-", scenario.name))
                .tempdir()
                .context("temporary lab directory")?;
            temp.path().to_path_buf()
        }
    };
    let timing = timing_of(scenario);
    let up = UpOptions {
        sites: scenario.topology.sites,
        hosts_per_site: scenario.topology.hosts_per_site,
        net: None,
        timeout: Duration::from_secs(90),
        siteagent: opts.siteagent.clone(),
        progress: false,
        witness: scenario.topology.witness,
        ipv6: scenario.topology.ipv6,
        timing,
        links: scenario.topology.links.clone(),
        probe_ports: scenario.services.iter().map(|s| s.port).collect(),
        seed: opts.seed,
    };
    say(
        opts,
        format!(
            "drill {}: starting the lab in {}",
            scenario.name,
            dir.display()
        ),
    );
    let lab = tokio::select! {
        r = Lab::up(&dir, &up) => r,
        _ = cancel.cancelled() => Err(anyhow::anyhow!("cancelled while starting the lab")),
    };
    let lab = match lab {
        Ok(lab) => lab,
        Err(e) => {
            // A half-started lab still has processes to stop.
            if let Ok(lab) = Lab::open(&dir) {
                lab.down(Duration::from_secs(5)).await;
            }
            return Err(e);
        }
    };
    let report = match lab
        .context()
        .and_then(|ctx| Client::new(&ctx))
        .map(|c| c.with_timeout(Duration::from_secs(5)))
    {
        Ok(client) => {
            let drill = Drill {
                scenario,
                opts,
                lab: lab.clone(),
                client,
                t0: Instant::now(),
                rec: Arc::default(),
                impaired: Arc::default(),
                cancel: cancel.clone(),
            };
            drill.run().await
        }
        Err(e) => Err(e),
    };
    say(opts, "drill: stopping the lab".to_string());
    lab.down(Duration::from_secs(5)).await;
    let report = report?;
    let written = report
        .write(&opts.report_dir)
        .with_context(|| format!("writing the report to {}", opts.report_dir.display()))?;
    Ok(Outcome {
        report,
        json: written.json,
        svg: written.svg,
    })
}

fn say(opts: &RunOptions, line: String) {
    if opts.progress {
        eprintln!("{line}");
    }
}

/// The lab's timing with the scenario's overrides.
pub fn timing_of(s: &Scenario) -> LabTiming {
    lab_timing(&s.topology.timing)
}

/// The lab's default timing with `t`'s overrides.
pub fn lab_timing(t: &crate::scenario::Timing) -> LabTiming {
    let d = LabTiming::default();
    LabTiming {
        heartbeat_interval: t.heartbeat_interval.unwrap_or(d.heartbeat_interval),
        failure_threshold: t.failure_threshold.unwrap_or(d.failure_threshold),
        lease: t.lease.unwrap_or(d.lease),
        lease_margin: t.lease_margin.unwrap_or(d.lease_margin),
        dns_ttl: t.dns_ttl.unwrap_or(d.dns_ttl),
        raft_heartbeat: t.raft_heartbeat.unwrap_or(d.raft_heartbeat),
        election_timeout_min: t.election_timeout_min.unwrap_or(d.election_timeout_min),
        election_timeout_max: t.election_timeout_max.unwrap_or(d.election_timeout_max),
    }
}

impl Drill<'_> {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn mark(&self, kind: MarkerKind, label: String) {
        say(self.opts, format!("[{:7.2} s] {label}", self.now()));
        lock(&self.rec).markers.push(Marker {
            t: self.now(),
            kind,
            label,
        });
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.opts.time_scale)
    }

    /// A client asking only agents of sites that are not impaired.
    fn healthy_client(&self) -> Client {
        let impaired = lock(&self.impaired).clone();
        let endpoints: Vec<SocketAddr> = self
            .lab
            .file
            .agents
            .iter()
            .filter(|a| !impaired.contains(&a.site) && self.lab.live_pid(a).is_some())
            .map(|a| a.admin)
            .collect();
        self.client.with_endpoints(endpoints)
    }

    async fn run(&self) -> anyhow::Result<Report> {
        // Wall-clock time of t0, so drill times can be compared with the event log.
        let started_unix_ms =
            siteagent::agent::now_ms().saturating_sub(self.t0.elapsed().as_millis() as u64);
        for def in &self.scenario.services {
            let spec = self
                .lab
                .write_demo_spec(&def.name, &def.sites, def.port, def.instances)?;
            let spec = crate::lab::read_spec(&spec)?;
            let _: OperationResult = self
                .client
                .post("/v1/services?dry_run=false", &spec)
                .await
                .with_context(|| format!("declaring service {}", def.name))?;
        }
        let svc = self.scenario.service();
        say(
            self.opts,
            format!("drill: waiting for {} to serve", svc.name),
        );
        self.wait_first_answer().await?;

        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for vantage in self.scenario.vantages() {
            tasks.spawn(self.prober(vantage, stop.clone()));
        }
        tasks.spawn(self.owner_watch(stop.clone()));
        self.mark(MarkerKind::Note, "probes running".into());

        let outcome = if self.opts.test_failover {
            self.test_failover().await
        } else {
            self.timeline().await
        };
        if let Err(e) = &outcome {
            lock(&self.rec).step_failures.push(format!("{e:#}"));
        }
        if !self.cancel.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(self.scenario.drill.settle) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        if self.cancel.is_cancelled() {
            bail!("drill cancelled");
        }
        self.conclude(started_unix_ms).await
    }

    /// Until one probe from the first vantage site succeeds (60 s at most).
    async fn wait_first_answer(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let vantage = self.scenario.vantages()[0].clone();
        loop {
            let out = self.probe_once(&vantage, None).await;
            if out.whoami.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "service {} never answered: {}",
                    self.scenario.service().name,
                    out.whoami.err().unwrap_or_default()
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = self.cancel.cancelled() => bail!("cancelled"),
            }
        }
    }

    async fn probe_once(&self, vantage: &str, write: Option<u64>) -> probe::Outcome {
        probe_from(&self.lab, self.scenario, vantage, write).await
    }

    fn prober(
        &self,
        vantage: String,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + 'static {
        // The prober outlives `&self` borrows, so it takes what it needs by value.
        let this = ProbeCtx {
            lab: self.lab.clone(),
            scenario: self.scenario.clone(),
            t0: self.t0,
            rec: self.rec.clone(),
        };
        async move { this.run(vantage, stop).await }
    }

    fn owner_watch(&self, stop: CancellationToken) -> impl Future<Output = ()> + 'static {
        let (rec, t0, name) = (
            self.rec.clone(),
            self.t0,
            self.scenario.service().name.clone(),
        );
        let impaired = self.impaired.clone();
        let lab = self.lab.clone();
        let client = self.client.clone();
        async move {
            let mut last: Option<(Option<String>, u64)> = None;
            loop {
                let avoid = lock(&impaired).clone();
                let endpoints: Vec<SocketAddr> = lab
                    .file
                    .agents
                    .iter()
                    .filter(|a| !avoid.contains(&a.site) && lab.live_pid(a).is_some())
                    .map(|a| a.admin)
                    .collect();
                let c = client.with_endpoints(endpoints);
                if let Ok(services) = c.get::<Vec<ServiceView>>("/v1/services").await
                    && let Some(s) = services.iter().find(|s| s.name == name)
                {
                    let now = (s.owner.clone(), s.epoch);
                    if last.as_ref() != Some(&now) {
                        lock(&rec).owners.push(OwnerChange {
                            t: t0.elapsed().as_secs_f64(),
                            site: now.0.clone(),
                            epoch: now.1,
                        });
                        last = Some(now);
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        }
    }

    async fn timeline(&self) -> anyhow::Result<()> {
        for (i, step) in self.scenario.steps.iter().enumerate() {
            if let Some(at) = step.at {
                let when = self.t0 + self.scaled(at);
                tokio::select! {
                    _ = tokio::time::sleep_until(when.into()) => {}
                    _ = self.cancel.cancelled() => bail!("cancelled"),
                }
            }
            if let Err(e) = self.step(&step.action).await {
                let msg = format!("step {} ({:?}): {e:#}", i + 1, step.action.kind());
                self.mark(MarkerKind::Note, format!("FAILED {msg}"));
                lock(&self.rec).step_failures.push(msg);
            }
            if self.cancel.is_cancelled() {
                bail!("cancelled");
            }
        }
        Ok(())
    }

    fn impair(&self, site: &str, on: bool) {
        let mut set = lock(&self.impaired);
        if on {
            set.insert(site.to_string());
        } else {
            set.remove(site);
        }
    }

    fn signal_site(&self, site: &str, signal: Signal) -> anyhow::Result<()> {
        for a in self.lab.site_agents(site) {
            if let Some(pid) = self.lab.live_pid(a) {
                kill(Pid::from_raw(pid), signal)
                    .with_context(|| format!("{signal} to node {}", a.node))?;
            }
        }
        Ok(())
    }

    fn others(&self, site: &str) -> Vec<String> {
        self.scenario
            .all_sites()
            .into_iter()
            .filter(|s| s != site)
            .collect()
    }

    /// The other ends of a link step: `peer`, or every other site.
    fn peers(&self, site: &str, peer: &Option<String>) -> Vec<String> {
        match peer {
            Some(p) => vec![p.clone()],
            None => self.others(site),
        }
    }

    async fn step(&self, action: &Action) -> anyhow::Result<()> {
        match action {
            Action::KillHost { host } => {
                let a = self.lab.agent(*host)?;
                let pid = self
                    .lab
                    .live_pid(a)
                    .with_context(|| format!("host {host} is not running"))?;
                self.mark(MarkerKind::Fault, format!("kill -9 host {host}"));
                kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            }
            Action::StartHost { host } => {
                self.mark(MarkerKind::Heal, format!("start host {host}"));
                self.lab
                    .spawn(self.lab.agent(*host)?, &self.opts.siteagent)?;
            }
            Action::KillSite { site } => {
                self.mark(
                    MarkerKind::Fault,
                    format!("kill -9 every agent of site {site}"),
                );
                self.impair(site, true);
                self.signal_site(site, Signal::SIGKILL)?;
            }
            Action::StartSite { site } => {
                self.mark(
                    MarkerKind::Heal,
                    format!("start every agent of site {site}"),
                );
                for a in self.lab.site_agents(site) {
                    if self.lab.live_pid(a).is_none() {
                        self.lab.spawn(a, &self.opts.siteagent)?;
                    }
                }
                self.impair(site, false);
            }
            Action::FreezeSite { site, thaw_after } => {
                self.mark(
                    MarkerKind::Fault,
                    format!("SIGSTOP every agent of site {site}"),
                );
                self.impair(site, true);
                self.signal_site(site, Signal::SIGSTOP)?;
                if let Some(d) = thaw_after {
                    self.sleep(self.scaled(*d)).await?;
                    self.thaw(site)?;
                }
            }
            Action::ThawSite { site } => self.thaw(site)?,
            Action::Partition { site, peer } => {
                let peers = self.peers(site, peer);
                self.mark(
                    MarkerKind::Fault,
                    format!("partition {site} from {}", peers.join(", ")),
                );
                self.impair(site, true);
                self.cut(site, &peers, true).await?;
            }
            Action::Heal { site, peer } => {
                let peers = self.peers(site, peer);
                self.mark(
                    MarkerKind::Heal,
                    format!("heal {site} with {}", peers.join(", ")),
                );
                self.cut(site, &peers, false).await?;
                self.impair(site, false);
            }
            Action::DegradeLink {
                site,
                peer,
                impairment: i,
            } => {
                let peers = self.peers(site, peer);
                self.mark(
                    MarkerKind::Fault,
                    format!(
                        "degrade {site}↔{}: delay {:?} jitter {:?} loss {} rate {}",
                        peers.join(","),
                        i.delay.unwrap_or_default(),
                        i.jitter.unwrap_or_default(),
                        i.loss.as_deref().unwrap_or("0"),
                        i.rate.as_deref().unwrap_or("unlimited")
                    ),
                );
                for p in &peers {
                    self.lab
                        .degrade(
                            site,
                            p,
                            i.delay,
                            i.jitter,
                            i.loss.as_deref(),
                            i.rate.as_deref(),
                        )
                        .await?;
                }
            }
            Action::FlapLink {
                site,
                peer,
                count,
                half_period,
            } => {
                let peers = self.peers(site, peer);
                let half = self.scaled(*half_period);
                for i in 0..*count {
                    self.mark(MarkerKind::Fault, format!("flap {}: {site} down", i + 1));
                    self.cut(site, &peers, true).await?;
                    self.sleep(half).await?;
                    self.mark(MarkerKind::Heal, format!("flap {}: {site} up", i + 1));
                    self.cut(site, &peers, false).await?;
                    self.sleep(half).await?;
                }
            }
            Action::Switchover { service, to } => {
                self.operation(
                    format!("switchover {service} to {to}"),
                    &format!("/v1/services/{service}/switchover"),
                    OperationRequest {
                        to: Some(to.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            }
            Action::Drain { host } | Action::Undrain { host } => {
                let verb = if matches!(action, Action::Drain { .. }) {
                    "drain"
                } else {
                    "undrain"
                };
                self.operation(
                    format!("{verb} host {host}"),
                    &format!("/v1/hosts/{host}/{verb}"),
                    OperationRequest::default(),
                )
                .await?;
            }
            Action::Maintenance { site, mode } => {
                let mode = mode.as_str();
                self.operation(
                    format!("maintenance {mode} {site}"),
                    &format!("/v1/sites/{site}/maintenance/{mode}"),
                    OperationRequest::default(),
                )
                .await?;
            }
            Action::Wait { duration } => {
                let d = self.scaled(*duration);
                self.mark(
                    MarkerKind::Wait,
                    format!("wait {}", humantime::format_duration(d)),
                );
                self.sleep(d).await?;
            }
            Action::WaitUntil { until, timeout } => {
                self.mark(MarkerKind::Wait, format!("wait until {until}"));
                let deadline = Instant::now() + *timeout;
                let since = self.now();
                loop {
                    if self.holds(until, since).await {
                        self.mark(MarkerKind::Note, format!("{until} holds"));
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "`{until}` did not hold within {}",
                            humantime::format_duration(*timeout)
                        );
                    }
                    self.sleep(Duration::from_millis(200)).await?;
                }
            }
        }
        Ok(())
    }

    fn thaw(&self, site: &str) -> anyhow::Result<()> {
        self.mark(MarkerKind::Heal, format!("SIGCONT site {site}"));
        self.signal_site(site, Signal::SIGCONT)?;
        self.impair(site, false);
        Ok(())
    }

    /// Partitions (`on`) or heals the links between `site` and each of `peers`.
    async fn cut(&self, site: &str, peers: &[String], on: bool) -> anyhow::Result<()> {
        for p in peers {
            self.lab.partition(site, p, on).await?;
        }
        Ok(())
    }

    async fn sleep(&self, d: Duration) -> anyhow::Result<()> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => bail!("cancelled"),
        }
    }

    async fn operation(
        &self,
        label: String,
        path: &str,
        req: OperationRequest,
    ) -> anyhow::Result<()> {
        self.mark(MarkerKind::Operation, label.clone());
        let r: OperationResult = self
            .healthy_client()
            .post(path, &req)
            .await
            .with_context(|| label.clone())?;
        for step in &r.plan {
            say(self.opts, format!("           plan: {}", step.description));
        }
        Ok(())
    }

    /// Whether `until` holds; probe conditions count only probes started at or after `since`.
    async fn holds(&self, until: &Until, since: f64) -> bool {
        let c = self.healthy_client();
        match until {
            Until::Owner(site) => {
                let name = &self.scenario.service().name;
                c.get::<Vec<ServiceView>>("/v1/services")
                    .await
                    .ok()
                    .and_then(|v| v.into_iter().find(|s| &s.name == name))
                    .is_some_and(|s| s.owner.as_ref() == Some(site))
            }
            Until::SiteUp(site) | Until::SiteDown(site) => {
                let want = if matches!(until, Until::SiteUp(_)) {
                    "up"
                } else {
                    "down"
                };
                c.get::<Vec<SiteView>>("/v1/sites")
                    .await
                    .ok()
                    .and_then(|v| v.into_iter().find(|s| &s.name == site))
                    .is_some_and(|s| format!("{:?}", s.health).to_lowercase() == want)
            }
            Until::Serving(site) => {
                self.latest_probes(since, |p| p.served_by.as_ref() == Some(site))
            }
            Until::AllProbesOk => self.latest_probes(since, |p| p.ok),
        }
    }

    /// The latest probe of every vantage site, started at or after `since`, satisfies `f`.
    /// Sites whose agents are dead, frozen or cut off are left out: their clients share their
    /// fate.
    fn latest_probes(&self, since: f64, f: impl Fn(&ProbeSample) -> bool) -> bool {
        let impaired = lock(&self.impaired).clone();
        let rec = lock(&self.rec);
        let vantages: Vec<String> = self
            .scenario
            .vantages()
            .into_iter()
            .filter(|v| !impaired.contains(v))
            .collect();
        !vantages.is_empty()
            && vantages.iter().all(|v| {
                rec.probes
                    .iter()
                    .rev()
                    .find(|p| &p.vantage == v)
                    .is_some_and(|p| p.t >= since && f(p))
            })
    }

    /// `--test-failover`: the service comes up in its recovery site under a test name, answers,
    /// and goes away again, while production keeps being probed.
    async fn test_failover(&self) -> anyhow::Result<()> {
        let svc = self.scenario.service();
        let owner = self.current_owner().await;
        let sites = if svc.sites.is_empty() {
            self.scenario.host_sites()
        } else {
            svc.sites.clone()
        };
        let recovery = sites
            .iter()
            .find(|s| Some(*s) != owner.as_ref())
            .cloned()
            .context("the service has no recovery site")?;
        let test = format!("{}-test", svc.name);
        self.mark(
            MarkerKind::Operation,
            format!("test failover: {test} in recovery site {recovery}"),
        );
        let path = self
            .lab
            .write_demo_spec(&test, std::slice::from_ref(&recovery), svc.port, 1)?;
        let spec = crate::lab::read_spec(&path)?;
        let _: OperationResult = self
            .healthy_client()
            .post("/v1/services?dry_run=false", &spec)
            .await
            .context("declaring the test service")?;
        let name = format!("{test}.{}", crate::lab::LAB_ZONE);
        let (_, dns) = self
            .lab
            .dns_servers(&recovery)
            .into_iter()
            .next()
            .context("no DNS server in the recovery site")?;
        let started = Instant::now();
        let answered = loop {
            let out = probe::probe(dns, &name, svc.port, None, Duration::from_secs(1), |t| t).await;
            match out.whoami {
                Ok(me) if me.service == test && me.site == recovery => break me,
                _ if started.elapsed() > Duration::from_secs(60) => {
                    bail!("the test instance never answered in {recovery}")
                }
                _ => self.sleep(Duration::from_millis(200)).await?,
            }
        };
        self.mark(
            MarkerKind::Note,
            format!(
                "test instance answered from site {} host {} after {:.2} s",
                answered.site,
                answered.host,
                started.elapsed().as_secs_f64()
            ),
        );
        let _: OperationResult = self
            .healthy_client()
            .delete(&format!("/v1/services/{test}?dry_run=false"))
            .await
            .context("deleting the test service")?;
        self.mark(
            MarkerKind::Operation,
            format!("test failover: {test} deleted"),
        );
        Ok(())
    }

    /// Seconds from the fault at `fault` (drill time) to the first down verdict after it.
    async fn detection(&self, started_unix_ms: u64, fault: Option<f64>) -> Option<f64> {
        let fault = fault?;
        let fault_ms = started_unix_ms + (fault * 1000.0) as u64;
        let events: Vec<siteagent::api::EventView> =
            self.healthy_client().get("/v1/events").await.ok()?;
        events
            .iter()
            .find(|e| e.at_ms >= fault_ms && e.message.contains(" is down"))
            .map(|e| (e.at_ms - fault_ms) as f64 / 1000.0)
    }

    async fn current_owner(&self) -> Option<String> {
        let name = &self.scenario.service().name;
        self.healthy_client()
            .get::<Vec<ServiceView>>("/v1/services")
            .await
            .ok()?
            .into_iter()
            .find(|s| &s.name == name)?
            .owner
    }

    /// Final observations, measures and expectations.
    async fn conclude(&self, started_unix_ms: u64) -> anyhow::Result<Report> {
        let svc = self.scenario.service();
        let services: Vec<ServiceView> = self
            .healthy_client()
            .get("/v1/services")
            .await
            .unwrap_or_default();
        let current = services.iter().find(|s| s.name == svc.name);
        let final_owner = current.and_then(|s| s.owner.clone());
        // Records held by a running instance of the final owner.
        let mut held = None;
        if let Some(inst) = current.and_then(|s| {
            s.instances
                .iter()
                .find(|i| format!("{:?}", i.state) == "Running")
        }) && let Some(ep) = inst
            .endpoints
            .first()
            .and_then(|e| e.parse::<SocketAddr>().ok())
            && let Ok(seqs) = probe::records(ep, Duration::from_secs(3)).await
        {
            held = Some(seqs.into_iter().collect::<BTreeSet<u64>>());
        }
        // Every live DNS server's final answer.
        let mut dns_final = Vec::new();
        let name = format!("{}.{}", svc.name, crate::lab::LAB_ZONE);
        let impaired = lock(&self.impaired).clone();
        for site in self.scenario.host_sites() {
            if impaired.contains(&site) {
                continue;
            }
            for (node, server) in self.lab.dns_servers(&site) {
                if !self
                    .lab
                    .agent(node)
                    .is_ok_and(|a| self.lab.live_pid(a).is_some())
                {
                    continue;
                }
                // A server that was cut off answers SERVFAIL until its agent re-confirms its
                // lease after the heal: give every server a settling window to converge.
                let expected = self.scenario.expect.dns_answers.as_deref();
                let settle = Instant::now() + DNS_SETTLE;
                let answered_site = loop {
                    let answer = probe::resolve(server, &name, Duration::from_secs(1)).await;
                    let site = match &answer {
                        DnsAnswer::Addresses(a) if !a.is_empty() => {
                            let sites: BTreeSet<Option<&str>> =
                                a.iter().map(|ip| self.lab.site_of(*ip)).collect();
                            match sites.into_iter().collect::<Vec<_>>().as_slice() {
                                [Some(s)] => Some(s.to_string()),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    let converged = match expected {
                        Some(e) => site.as_deref() == Some(e),
                        None => site.is_some(),
                    };
                    if converged || Instant::now() >= settle {
                        break site;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                dns_final.push((format!("node {node} ({site})"), answered_site));
            }
        }
        // The causes RTO is measured from: the faults, or the operations when nothing failed.
        let times_of = |rec: &Recording, kind: MarkerKind| -> Vec<f64> {
            rec.markers
                .iter()
                .filter(|m| m.kind == kind)
                .map(|m| m.t)
                .collect()
        };
        let faults = times_of(&lock(&self.rec), MarkerKind::Fault);
        let detection = self
            .detection(started_unix_ms, faults.first().copied())
            .await;
        let rec = lock(&self.rec);
        let faults = if faults.is_empty() {
            times_of(&rec, MarkerKind::Operation)
        } else {
            faults
        };
        let served = checks::served(&rec.probes);
        let failures: Vec<f64> = rec.probes.iter().filter(|p| !p.ok).map(|p| p.t).collect();
        let rto = checks::rto(&served, &faults, &failures);
        let lost = held.as_ref().map(|h| checks::lost_writes(&rec.acked, h));
        let failed = rec.probes.iter().filter(|p| !p.ok).count() as u64;
        let measured = Measured {
            rto,
            lost_writes: lost,
            split_brain: checks::split_brain(&served),
            final_owner: final_owner.clone(),
            dns_final,
            failed_probes: failed,
            owner_changes: rec
                .owners
                .windows(2)
                .filter(|w| w[0].site != w[1].site)
                .count() as u64,
            step_failures: rec.step_failures.clone(),
        };
        let timing = timing_of(self.scenario);
        // A test failover changes nothing in production: what must hold is that production
        // clients saw no failure and no split brain (the test instance answering is a step).
        let expect = if self.opts.test_failover {
            crate::scenario::Expect {
                max_failed_probes: Some(0),
                ..Default::default()
            }
        } else {
            self.scenario.expect.clone()
        };
        let expectations = checks::evaluate(&expect, &measured);
        let passed = expectations.iter().all(|e| e.pass);
        let measures = vec![
            Measure {
                name: "rto".into(),
                value: rto,
                unit: "s".into(),
                bound: Some(
                    (timing.failover_bound()
                        + self.scenario.probes.interval
                        + timing.election_timeout_max * 2)
                        .as_secs_f64(),
                ),
                how: "the fault that caused the outage (or the operation) to the first successful probe served by another instance; bound = heartbeat × threshold + lease + margin + DNS TTL + probe interval + 2 × election timeout (a leader lost with the fault is replaced first)".into(),
            },
            Measure {
                name: "rpo_writes".into(),
                value: lost.map(|l| l as f64),
                unit: "writes".into(),
                bound: None,
                how: format!(
                    "acknowledged writes ({}) missing from the final owner's records; volumes are shared within a site, not replicated across sites",
                    rec.acked.len()
                ),
            },
            Measure {
                name: "failed_probes".into(),
                value: Some(failed as f64),
                unit: "probes".into(),
                bound: None,
                how: format!(
                    "of {} probes every {} from {}",
                    rec.probes.len(),
                    humantime::format_duration(self.scenario.probes.interval),
                    self.scenario.vantages().join(", ")
                ),
            },
            Measure {
                name: "detection".into(),
                value: detection,
                unit: "s".into(),
                bound: Some(timing.verdict_bound().as_secs_f64()),
                how: "first fault to the first `… is down` verdict in the event log; bound = heartbeat interval × (failure threshold + 1) + planner interval + 2 × election timeout (a leader lost with the fault is replaced first)".into(),
            },
        ];
        Ok(Report {
            scenario: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            seed: self.opts.seed,
            started_unix_ms,
            duration_s: self.now(),
            sites: self.scenario.all_sites(),
            service: svc.name.clone(),
            probes: rec.probes.clone(),
            markers: rec.markers.clone(),
            owners: rec.owners.clone(),
            dns: rec.dns.clone(),
            measures,
            expectations,
            passed,
        })
    }
}

/// What a prober task needs, owned.
struct ProbeCtx {
    lab: Lab,
    scenario: Scenario,
    t0: Instant,
    rec: Arc<Mutex<Recording>>,
}

/// One client probe from `vantage`: resolve at a live DNS server of that site, `GET /whoami`,
/// and the write `write` when given.
async fn probe_from(
    lab: &Lab,
    scenario: &Scenario,
    vantage: &str,
    write: Option<u64>,
) -> probe::Outcome {
    let svc = scenario.service();
    let name = format!("{}.{}", svc.name, crate::lab::LAB_ZONE);
    let Some(dns) = lab.live_dns_server(vantage) else {
        return probe::Outcome {
            dns: DnsAnswer::Code("no DNS server alive".into()),
            whoami: Err(format!("no DNS server alive in site {vantage}")),
            acked_write: None,
            started: Instant::now(),
            latency: Duration::ZERO,
        };
    };
    probe::probe(
        dns,
        &name,
        svc.port,
        write,
        scenario.probes.timeout,
        |target| lab.route(vantage, target),
    )
    .await
}

/// How long, at the end of a drill, each DNS server gets to converge on its final answer.
const DNS_SETTLE: Duration = Duration::from_secs(10);

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ProbeCtx {
    async fn run(self, vantage: String, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.scenario.probes.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let write = self
                .scenario
                .probes
                .writes
                .then(|| SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            let out = probe_from(&self.lab, &self.scenario, &vantage, write).await;
            // The sample is dated by the attempt that decided it (for the split-brain check).
            let t = out.started.saturating_duration_since(self.t0).as_secs_f64();
            let mut rec = lock(&self.rec);
            let label = out.dns.label();
            if rec.last_dns.get(&vantage) != Some(&label) {
                rec.last_dns.insert(vantage.clone(), label.clone());
                rec.dns.push(DnsChange {
                    t,
                    vantage: vantage.clone(),
                    answer: label,
                });
            }
            if let Some(seq) = out.acked_write {
                rec.acked.insert(seq);
            }
            let (ok, served_by, host, epoch, error) = match &out.whoami {
                Ok(me) => (
                    true,
                    Some(me.site.clone()),
                    Some(me.host),
                    Some(me.epoch),
                    None,
                ),
                Err(e) => (false, None, None, None, Some(e.clone())),
            };
            rec.probes.push(ProbeSample {
                t,
                vantage: vantage.clone(),
                ok,
                served_by,
                host,
                epoch,
                write_seq: out.acked_write,
                latency_ms: Some(out.latency.as_secs_f64() * 1000.0),
                error,
            });
        }
    }
}
