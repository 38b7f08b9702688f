//! Runs a drill: builds the lab from the topology, declares the services, probes from every
//! vantage site the whole time, plays the timeline, watches the owner, and ends with a report.
//!
//! Invariant: the lab is always torn down — after the report, on any error, and on
//! cancellation (Ctrl-C) — because [`run`] owns it and tears it down before returning.
//!
//! Its parts: `steps` plays the timeline (I/O), [`Recording`] is what the probers and the
//! owner watch saw (plain data), and [`measures()`] turns a recording and the end state into
//! measures and verdicts (pure). This module wires them: the lab, the probers, the end state.
//!
//! It injects faults only from outside the agents: signals, the link emulator, the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use consensus::state::InstanceState;
use siteagent::api::{EventView, OperationResult, ServiceView, VolumeView};
use tokio_util::sync::CancellationToken;

use crate::checks::invariants::DirectSample;
use crate::checks::replicas::ReplicaSample;
use crate::client::Client;
use crate::lab::{Lab, LabTiming, UpOptions};
use crate::poll::{Check, PollError, poll_until};
use crate::probe::{self, DnsAnswer};
use crate::report::{MarkerKind, Report};
use crate::scenario::Scenario;
use crate::scenario::volume::volume_name;

mod measures;
mod recording;
mod steps;

pub use measures::{Conclusion, EndState, detection, measures};
pub use recording::Recording;

/// How often the runner looks again at something it waits for.
const POLL: Duration = Duration::from_millis(200);

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
    let mut temp = None;
    let dir = match &opts.lab_dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!("drill-{}-", scenario.name))
                .tempdir()
                .context("temporary lab directory")?;
            temp.insert(t).path().to_path_buf()
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
        swim_over_quic: false,
        worker_threads: crate::lab::LAB_WORKER_THREADS,
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
            // A half-started lab still has processes to stop; its logs say why it failed, so
            // a temporary directory is kept for a look.
            if let Ok(lab) = Lab::open(&dir) {
                lab.down(Duration::from_secs(5)).await;
            }
            if let Some(t) = temp.take() {
                let kept = t.keep();
                return Err(e.context(format!(
                    "the lab did not start; its directory {} is kept for a look",
                    kept.display()
                )));
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
    let written = crate::archive::write(&report, &opts.report_dir)
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
        lock(&self.rec).mark(self.now(), kind, label);
    }

    /// `f`, or an error as soon as the drill is cancelled.
    async fn cancellable<T>(&self, f: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::select! {
            v = f => Ok(v),
            _ = self.cancel.cancelled() => bail!("cancelled"),
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.opts.time_scale)
    }

    /// A client asking only agents of sites that are not impaired.
    fn healthy_client(&self) -> Client {
        healthy_client(&self.lab, &self.client, &self.impaired)
    }

    async fn run(&self) -> anyhow::Result<Report> {
        // Wall-clock time of t0, so drill times can be compared with the event log.
        let started_unix_ms =
            siteagent::clock::unix_ms().saturating_sub(self.t0.elapsed().as_millis() as u64);
        for def in &self.scenario.services {
            let mut spec = self
                .lab
                .demo_spec(&def.name, &def.sites, def.port, def.instances)?;
            if let Some(volume) = &def.volume {
                let v = volume.spec(&def.name, &spec.placement.sites[0]);
                let _: OperationResult = self
                    .client
                    .post("/v1/volumes?dry_run=false", &v)
                    .await
                    .with_context(|| format!("creating volume {} of {}", v.name, def.name))?;
                spec.volumes = vec![v.name];
            }
            spec.max_rpo = def.max_rpo;
            self.lab.write_spec(&spec)?;
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
        if svc.volume.is_some() {
            self.wait_copies_ready().await?;
        }

        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for vantage in self.scenario.vantages() {
            tasks.spawn(self.prober(vantage, stop.clone()));
        }
        tasks.spawn(self.owner_watch(stop.clone()));
        if self.scenario.probes.direct {
            tasks.spawn(self.instance_watch(stop.clone()));
        }
        if svc.volume.is_some() {
            tasks.spawn(self.volume_watch(started_unix_ms, stop.clone()));
        }
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
        let vantage = self.scenario.vantages()[0].clone();
        let name = &self.scenario.service().name;
        let answer = poll_until(Duration::from_secs(60), POLL, name, || async {
            Check::from(self.probe_once(&vantage, None).await.whoami)
        });
        match self.cancellable(answer).await? {
            Ok(_) => Ok(()),
            Err(e) => bail!("service {name} never answered: {}", e.into_last()),
        }
    }

    /// Until the copies of the service's volume are ready for faults (sync copies in sync,
    /// async ones at most lagging; 90 s at most): a new volume starts with a full resync,
    /// and a fault during it tests that, not the steady state the drill describes.
    async fn wait_copies_ready(&self) -> anyhow::Result<()> {
        let name = volume_name(&self.scenario.service().name);
        say(
            self.opts,
            format!("drill: waiting for the copies of {name}"),
        );
        let path = format!("/v1/volumes/{name}");
        let ready = poll_until(Duration::from_secs(90), POLL, &name, || async {
            match self.client.get::<VolumeView>(&path).await {
                Ok(v) => match crate::checks::replicas::not_ready(&v) {
                    None => Check::Ready(()),
                    Some(why) => Check::NotYet(why),
                },
                Err(e) => Check::NotYet(format!("{e:#}")),
            }
        });
        match self.cancellable(ready).await? {
            Ok(()) => {
                self.mark(MarkerKind::Note, format!("copies of {name} ready"));
                Ok(())
            }
            Err(e) => bail!("volume {name} never got ready: {}", e.into_last()),
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
            loop {
                let c = healthy_client(&lab, &client, &impaired);
                if let Ok(services) = c.get::<Vec<ServiceView>>("/v1/services").await
                    && let Some(s) = services.iter().find(|s| s.name == name)
                {
                    lock(&rec).owner(t0.elapsed().as_secs_f64(), s.owner.clone(), s.epoch);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        }
    }

    /// Every `probes.interval`, the service's volume as the fabric reports it
    /// (`GET /v1/volumes/<name>` at a healthy agent), recorded when it answered.
    fn volume_watch(
        &self,
        started_unix_ms: u64,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + 'static {
        let (rec, t0) = (self.rec.clone(), self.t0);
        let interval = self.scenario.probes.interval;
        let path = format!("/v1/volumes/{}", volume_name(&self.scenario.service().name));
        let impaired = self.impaired.clone();
        let lab = self.lab.clone();
        let client = self.client.clone();
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let c = healthy_client(&lab, &client, &impaired);
                if let Ok(v) = c.get::<VolumeView>(&path).await {
                    let t = t0.elapsed().as_secs_f64();
                    lock(&rec)
                        .replicas
                        .push(ReplicaSample::of(t, &v, started_unix_ms));
                }
            }
        }
    }

    /// Every `probes.interval`, asks every agent's service address directly for `/whoami`
    /// (no DNS, no emulator): one round, recorded with the answers it got.
    fn instance_watch(&self, stop: CancellationToken) -> impl Future<Output = ()> + 'static {
        let (rec, t0) = (self.rec.clone(), self.t0);
        let port = self.scenario.service().port;
        let interval = self.scenario.probes.interval;
        let addrs: Vec<SocketAddr> = self
            .lab
            .file
            .agents
            .iter()
            .map(|a| SocketAddr::new(a.wan.ip(), port))
            .collect();
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut round = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                round += 1;
                let mut asks = tokio::task::JoinSet::new();
                for addr in addrs.clone() {
                    asks.spawn(direct_probe(addr, round, t0));
                }
                let mut answers = Vec::new();
                while let Some(answer) = asks.join_next().await {
                    answers.extend(answer.ok().flatten());
                }
                lock(&rec).direct_round(answers);
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

    /// Final observations, then measures and expectations.
    async fn conclude(&self, started_unix_ms: u64) -> anyhow::Result<Report> {
        let end = self.end_state(started_unix_ms).await;
        let rec = lock(&self.rec).clone();
        let Conclusion {
            measures,
            expectations,
            passed,
        } = measures(
            &rec,
            &end,
            &timing_of(self.scenario),
            self.scenario,
            self.opts.test_failover,
        );
        Ok(Report {
            scenario: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            seed: self.opts.seed,
            started_unix_ms,
            duration_s: self.now(),
            sites: self.scenario.all_sites(),
            service: self.scenario.service().name.clone(),
            probes: rec.probes,
            markers: rec.markers,
            owners: rec.owners,
            dns: rec.dns,
            replicas: crate::checks::replicas::changes(&rec.replicas),
            measures,
            expectations,
            passed,
        })
    }

    /// What the fabric looks like at the end: owner, records held, DNS answers, event log.
    async fn end_state(&self, started_unix_ms: u64) -> EndState {
        let svc = self.scenario.service();
        let services: Vec<ServiceView> = self
            .healthy_client()
            .get("/v1/services")
            .await
            .unwrap_or_default();
        let current = services.iter().find(|s| s.name == svc.name);
        // Records held by a running instance of the final owner.
        let mut held = None;
        if let Some(inst) = current.and_then(|s| {
            s.instances
                .iter()
                .find(|i| i.state == InstanceState::Running)
        }) && let Some(ep) = inst
            .endpoints
            .first()
            .and_then(|e| e.parse::<SocketAddr>().ok())
            && let Ok(seqs) = probe::records(ep, Duration::from_secs(3)).await
        {
            held = Some(seqs.into_iter().collect::<BTreeSet<u64>>());
        }
        let dns_final = self.final_dns_answers().await;
        // The event log matters only for the detection time of a fault.
        let faulted = !lock(&self.rec).times_of(MarkerKind::Fault).is_empty()
            || self.scenario.expect.divergence_listed;
        let events: Vec<EventView> = if faulted {
            self.healthy_client()
                .get("/v1/events")
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let volumes = self
            .scenario
            .expect
            .writes_where_acked
            .then(|| self.volumes());
        EndState {
            volumes,
            started_unix_ms,
            final_owner: current.and_then(|s| s.owner.clone()),
            held,
            dns_final,
            events,
        }
    }

    /// The records on each host site's volume (`<lab>/volumes/<site>/<service>/records.log`,
    /// the file the demo service appends to and syncs before it acknowledges a write).
    fn volumes(&self) -> BTreeMap<String, BTreeSet<u64>> {
        let name = &self.scenario.service().name;
        self.scenario
            .host_sites()
            .into_iter()
            .map(|site| {
                let path = self
                    .lab
                    .dir
                    .join("volumes")
                    .join(&site)
                    .join(name)
                    .join("records.log");
                let seqs = std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                (site, seqs)
            })
            .collect()
    }

    /// Every live DNS server's final answer, as the site it points at.
    async fn final_dns_answers(&self) -> Vec<(String, Option<String>)> {
        let name = format!("{}.{}", self.scenario.service().name, crate::lab::LAB_ZONE);
        let impaired = lock(&self.impaired).clone();
        let expected = self.scenario.expect.dns_answers.as_deref();
        let mut answers = Vec::new();
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
                let converged = poll_until(DNS_SETTLE, DNS_POLL, &name, || async {
                    let answer = probe::resolve(server, &name, Duration::from_secs(1)).await;
                    let site = self.answered_site(&answer);
                    let ok = match expected {
                        Some(e) => site.as_deref() == Some(e),
                        None => site.is_some(),
                    };
                    if ok {
                        Check::Ready(site)
                    } else {
                        Check::NotYet(Unsettled(site))
                    }
                })
                .await;
                let answered = converged.unwrap_or_else(|e: PollError<Unsettled>| e.into_last().0);
                answers.push((format!("node {node} ({site})"), answered));
            }
        }
        answers
    }

    /// The one site whose agents own every answered address, if there is one.
    fn answered_site(&self, answer: &DnsAnswer) -> Option<String> {
        let DnsAnswer::Addresses(a) = answer else {
            return None;
        };
        let sites: BTreeSet<Option<&str>> = a.iter().map(|ip| self.lab.site_of(*ip)).collect();
        match sites.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(s)] => Some(s.to_string()),
            _ => None,
        }
    }
}

/// A DNS answer that has not (yet) settled on the expected site: the site it points at.
struct Unsettled(Option<String>);

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(site) => write!(f, "answers with site {site}"),
            None => f.write_str("answers with no single site"),
        }
    }
}

/// A client asking only live agents of sites that are not impaired.
fn healthy_client(lab: &Lab, client: &Client, impaired: &Mutex<BTreeSet<String>>) -> Client {
    let avoid = lock(impaired).clone();
    let endpoints: Vec<SocketAddr> = lab
        .file
        .agents
        .iter()
        .filter(|a| !avoid.contains(&a.site) && lab.live_pid(a).is_some())
        .map(|a| a.admin)
        .collect();
    client.with_endpoints(endpoints)
}

/// How long a direct probe of one instance address may take.
const DIRECT_TIMEOUT: Duration = Duration::from_millis(500);

/// `GET /whoami` at `addr`: the answer when an instance served it (HTTP 200).
async fn direct_probe(addr: SocketAddr, round: u64, t0: Instant) -> Option<DirectSample> {
    let sent = t0.elapsed().as_secs_f64();
    let (200, body) = probe::http(addr, "GET", "/whoami", DIRECT_TIMEOUT)
        .await
        .ok()?
    else {
        return None;
    };
    let me: probe::Whoami = serde_json::from_str(&body).ok()?;
    Some(DirectSample {
        round,
        sent,
        answered: t0.elapsed().as_secs_f64(),
        addr: addr.to_string(),
        site: me.site,
        host: me.host,
        epoch: me.epoch,
    })
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

/// How long, at the end of a drill, each DNS server gets to converge on its final answer, and
/// how often it is asked meanwhile.
const DNS_SETTLE: Duration = Duration::from_secs(10);
const DNS_POLL: Duration = Duration::from_millis(250);

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
                .then(|| lock(&self.rec).next_seq());
            let out = probe_from(&self.lab, &self.scenario, &vantage, write).await;
            // The sample is dated by the attempt that decided it (for the split-brain check).
            let t = out.started.saturating_duration_since(self.t0).as_secs_f64();
            lock(&self.rec).probe(&vantage, t, &out);
        }
    }
}
