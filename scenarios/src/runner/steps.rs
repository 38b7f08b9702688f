//! Playing a drill's timeline: each typed step as signals to agent processes, link changes in
//! the emulator, or operations on the admin API, with a marker in the recording; waits and
//! `wait_until` conditions; and the `--test-failover` exercise.
//!
//! Invariant: a step that changes a site's reachability also updates the impaired set before
//! (fault) or after (heal) the change, so the runner never asks an agent it has just cut off.
//!
//! It draws no conclusions ([`super::measures`] does) and starts no lab ([`super::run`] does).

use std::time::Duration;

use anyhow::{Context as _, bail};
use consensus::state::{Health, SiteState, WorkloadKind};
use emu::table::Direction;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use siteagent::api::{OperationRequest, OperationResult, ServiceView, SiteView, Status};
use tokio::time::Instant;

use super::{Drill, POLL, lock, say};

/// The environment variable a chaos `update_service` step counts up.
const UPDATE_VAR: &str = "FABRIC_UPDATE";
use crate::poll::{Check, poll_until};
use crate::probe;
use crate::report::{MarkerKind, ProbeSample};
use crate::scenario::{Action, Until};

/// How long `kill_leader` waits for some agent to name the Raft leader.
const LEADER_WAIT: Duration = Duration::from_secs(15);

impl Drill<'_> {
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

    pub(super) async fn step(&self, action: &Action) -> anyhow::Result<()> {
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
                let since = self.now();
                let what = format!("`{until}`");
                let held = poll_until(*timeout, POLL, &what, || async {
                    if self.holds(until, since).await {
                        Check::Ready(())
                    } else {
                        Check::NotYet("does not hold")
                    }
                });
                if self.cancellable(held).await?.is_err() {
                    bail!(
                        "`{until}` did not hold within {}",
                        humantime::format_duration(*timeout)
                    );
                }
                self.mark(MarkerKind::Note, format!("{until} holds"));
            }
            Action::KillLeader => {
                // Right after a heal the agent asked may not know the leader yet (it was just
                // restarted, or an election is on): ask again until one is known.
                let known = poll_until(LEADER_WAIT, POLL, "a Raft leader", || async {
                    match self.healthy_client().get::<Status>("/v1/status").await {
                        Ok(Status {
                            leader: Some(id), ..
                        }) => Check::Ready(id),
                        Ok(s) => Check::NotYet(format!("node {} knows no leader", s.node)),
                        Err(e) => Check::NotYet(format!("{e:#}")),
                    }
                });
                let leader = match self.cancellable(known).await? {
                    Ok(id) => id,
                    Err(e) => bail!(
                        "no Raft leader known within {}: {}",
                        humantime::format_duration(LEADER_WAIT),
                        e.into_last()
                    ),
                };
                let a = self.lab.agent(leader)?;
                let pid = self
                    .lab
                    .live_pid(a)
                    .with_context(|| format!("leader {leader} is not running"))?;
                self.mark(
                    MarkerKind::Fault,
                    format!("kill -9 the Raft leader: node {leader} ({})", a.site),
                );
                kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            }
            Action::HealAll => self.heal_all().await?,
            Action::PartitionOneWay { from, to } => {
                self.mark(
                    MarkerKind::Fault,
                    format!("partition one way: {from} → {to} dropped, {to} → {from} flows"),
                );
                self.impair(from, true);
                self.lab
                    .partition_direction(from, to, Direction::AToB, true)
                    .await?;
            }
            Action::UpdateService { service } => self.update_service(service).await?,
            Action::SwitchoverNext { service } => {
                let to = self.next_site(service).await?;
                self.operation(
                    format!("switchover {service} to {to} (the next active site after its owner)"),
                    &format!("/v1/services/{service}/switchover"),
                    OperationRequest {
                        to: Some(to),
                        ..Default::default()
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Updates `service` in place with the next value of `FABRIC_UPDATE` in its environment, so
    /// what its instances run changes: a rolling restart under the next epoch.
    async fn update_service(&self, service: &str) -> anyhow::Result<()> {
        let services: Vec<ServiceView> = self
            .healthy_client()
            .get("/v1/services")
            .await
            .context("reading the services")?;
        let mut spec = services
            .into_iter()
            .find(|s| s.name == service)
            .with_context(|| format!("no service {service}"))?
            .spec;
        let WorkloadKind::Process(p) = &mut spec.kind;
        let next = p
            .env
            .get(UPDATE_VAR)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        p.env.insert(UPDATE_VAR.into(), next.to_string());
        let label = format!("update {service} in place ({UPDATE_VAR}={next}): rolling restart");
        self.mark(MarkerKind::Operation, label.clone());
        let r: OperationResult = self
            .healthy_client()
            .put(&format!("/v1/services/{service}"), &spec)
            .await
            .with_context(|| label.clone())?;
        for step in &r.plan {
            say(self.opts, format!("           plan: {}", step.description));
        }
        Ok(())
    }

    /// Undoes every fault: thaws and starts every agent, heals and restores every link.
    async fn heal_all(&self) -> anyhow::Result<()> {
        self.mark(
            MarkerKind::Heal,
            "heal everything: SIGCONT and start every agent, restore every link".into(),
        );
        for a in &self.lab.file.agents {
            match self.lab.live_pid(a) {
                Some(pid) => kill(Pid::from_raw(pid), Signal::SIGCONT)
                    .with_context(|| format!("SIGCONT to node {}", a.node))?,
                None => {
                    self.lab.spawn(a, &self.opts.siteagent)?;
                }
            }
        }
        if self.lab.has_links() {
            self.lab.restore_links().await?;
        }
        lock(&self.impaired).clear();
        Ok(())
    }

    /// The site after `service`'s current owner in its site list, cyclically (the first site
    /// when it has no owner).
    async fn next_site(&self, service: &str) -> anyhow::Result<String> {
        let services: Vec<ServiceView> = self
            .healthy_client()
            .get("/v1/services")
            .await
            .context("reading the services")?;
        let svc = services
            .into_iter()
            .find(|s| s.name == service)
            .with_context(|| format!("no service {service}"))?;
        let states: Vec<SiteView> = self
            .healthy_client()
            .get("/v1/sites")
            .await
            .context("reading the sites")?;
        let active = |name: &String| {
            states
                .iter()
                .any(|s| &s.name == name && s.state == SiteState::Active)
        };
        let sites = &svc.spec.placement.sites;
        let at = svc
            .owner
            .as_ref()
            .and_then(|o| sites.iter().position(|s| s == o));
        let start = at.map_or(0, |i| i + 1);
        // The next site in its list that the fabric judges able to take it (an operator
        // switches over to a healthy site); when none is, the plain next one, so the
        // fabric's refusal shows in the report.
        let n = sites.len();
        (0..n)
            .map(|k| &sites[(start + k) % n])
            .find(|s| Some(*s) != svc.owner.as_ref() && active(s))
            .or_else(|| sites.get(start % n.max(1)))
            .cloned()
            .with_context(|| format!("service {service} has no sites"))
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
        self.cancellable(tokio::time::sleep(d)).await
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
                    Health::Up
                } else {
                    Health::Down
                };
                c.get::<Vec<SiteView>>("/v1/sites")
                    .await
                    .ok()
                    .and_then(|v| v.into_iter().find(|s| &s.name == site))
                    .is_some_and(|s| s.health == want)
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
        let vantages: Vec<String> = self
            .scenario
            .vantages()
            .into_iter()
            .filter(|v| !impaired.contains(v))
            .collect();
        lock(&self.rec).latest_probes(&vantages, since, f)
    }

    /// `--test-failover`: the service comes up in its recovery site under a test name, answers,
    /// and goes away again, while production keeps being probed.
    pub(super) async fn test_failover(&self) -> anyhow::Result<()> {
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
        let spec = self
            .lab
            .demo_spec(&test, std::slice::from_ref(&recovery), svc.port, 1)?;
        self.lab.write_spec(&spec)?;
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
        let answer = poll_until(
            Duration::from_secs(60),
            POLL,
            "the test instance",
            || async {
                let out =
                    probe::probe(dns, &name, svc.port, None, Duration::from_secs(1), |t| t).await;
                match out.whoami {
                    Ok(me) if me.service == test && me.site == recovery => Check::Ready(me),
                    Ok(me) => Check::NotYet(format!("answered by {} in {}", me.service, me.site)),
                    Err(e) => Check::NotYet(e),
                }
            },
        );
        let Ok(answered) = self.cancellable(answer).await? else {
            bail!("the test instance never answered in {recovery}")
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
}
