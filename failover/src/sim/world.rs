//! The simulated world: the agenda's events (ticks, messages, observer rounds, commits, the
//! leader's loop, faults) applied to the fleet, the network and the replicated state, and the
//! ground truth the report is measured against.
//!
//! Invariant: every figure is counted where the thing happens — a message when an agent sends
//! it (lost or not), a write when it commits, a detection when the verdict commits — and judged
//! against the faults in force at that moment.
//!
//! It does not decide anything about health: every verdict comes from the real detector,
//! reporter, site watch and quorum code.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use consensus::NodeId;
use consensus::fixture;
use consensus::state::{Command, FabricState, Health, Proposal};

use crate::detector::DetectorConfig;
use crate::quorum::{self, Members};
use crate::sitewatch::SiteWatch;
use crate::swim::{Message, Outgoing, SuspicionStats, SwimConfig};

use super::SimConfig;
use super::agenda::{Agenda, Nanos};
use super::faults::{self, Fault, LEADER_SITE};
use super::fleet::{Agent, INCARNATION_ORIGIN, Template, Watch};
use super::report::{Latency, SimReport, Writes};
use crate::rng::{Rng, nanos};

static EMPTY: BTreeSet<NodeId> = BTreeSet::new();

/// The link between two sites, as the cuts name it (lower site first).
fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// The watch of `agent` if it is up and the watch is still the one of `generation`.
fn live_watch(agents: &mut [Agent], agent: usize, generation: u64) -> Option<&mut Watch> {
    let a = agents.get_mut(agent)?;
    let up = a.up;
    a.watch
        .as_mut()
        .filter(|w| up && w.generation == generation)
}

/// Who proposed a write (to clear what it has in flight when it commits).
enum Origin {
    Reporter {
        agent: usize,
        life: u64,
    },
    Observer {
        agent: usize,
        generation: u64,
        site: usize,
    },
    Leader,
}

enum Event {
    Tick {
        agent: usize,
        generation: u64,
    },
    Swim {
        to: usize,
        from: NodeId,
        message: Message,
    },
    SitePing {
        to: usize,
        observer: usize,
        generation: u64,
    },
    SiteAck {
        observer: usize,
        generation: u64,
        site: usize,
    },
    Round {
        observer: usize,
        generation: u64,
    },
    Commit {
        origin: Origin,
        commands: Vec<Command>,
    },
    Plan,
    Fault(Fault),
}

/// Ground truth and counters.
#[derive(Default)]
struct Tally {
    sent: BTreeMap<&'static str, u64>,
    sent_by_agent: Vec<u64>,
    /// Per agent: when it crashed on its own (not with its site), and whether the state has
    /// marked it down since.
    crashed_at: Vec<Option<(Nanos, bool)>>,
    host_detections: Vec<u64>,
    host_crashes: usize,
    host_restarts: usize,
    host_missed: usize,
    site_crashed_at: Vec<Option<(Nanos, bool)>>,
    site_detections: Vec<u64>,
    site_crashes: usize,
    false_hosts: u64,
    false_sites: u64,
    writes: Writes,
    refused: u64,
    events: u64,
    /// SWIM suspicion counts of the agents' earlier lives (a restart starts a new detector).
    suspicions: SuspicionStats,
}

pub(super) struct World<'c> {
    config: &'c SimConfig,
    origin: Instant,
    agenda: Agenda<Event>,
    now: Nanos,
    end: Nanos,
    net: Rng,
    chance: Rng,
    seeds: Rng,
    swim: SwimConfig,
    site_names: Vec<String>,
    site_index: BTreeMap<String, usize>,
    /// Per site: its agents' ids, sorted.
    site_agents: Vec<Vec<NodeId>>,
    members: Members,
    state: FabricState,
    agents: Vec<Agent>,
    site_crashed: Vec<bool>,
    cuts: BTreeSet<(usize, usize)>,
    /// Per site: the agents that observe the other sites, per the state.
    observers: Vec<Vec<usize>>,
    /// Per site: its agents, those the state records up first (what observers probe).
    probe_order: Vec<Vec<NodeId>>,
    next_watch: u64,
    leader_in_flight: bool,
    tally: Tally,
}

impl<'c> World<'c> {
    pub(super) fn new(config: &'c SimConfig) -> Self {
        let root = Rng::new(config.seed);
        let origin = Instant::now();
        let sites = config.sites.max(1);
        let per_site = config.hosts_per_site.max(1);
        let site_names: Vec<String> = (1..=sites).map(|s| format!("s{s:02}")).collect();
        let mut state = FabricState::default();
        let mut members = Members::new();
        let mut site_agents = Vec::new();
        for (s, name) in site_names.iter().enumerate() {
            fixture::apply(&mut state, fixture::site(name, s as u32 + 1));
            let ids: Vec<NodeId> = (0..per_site)
                .map(|h| (s * per_site + h + 1) as NodeId)
                .collect();
            for id in &ids {
                fixture::apply(&mut state, fixture::host(*id, name, vec![]));
                members.insert(*id, name.clone());
            }
            site_agents.push(ids);
        }
        let swim = SwimConfig::from_window(config.interval, config.threshold);
        let mut world = Self {
            config,
            origin,
            agenda: Agenda::new(),
            now: 0,
            end: nanos(config.duration),
            net: root.fork(1),
            chance: root.fork(2),
            seeds: root.fork(3),
            swim,
            site_index: site_names.iter().cloned().zip(0..).collect(),
            site_names,
            site_agents,
            members,
            state,
            agents: Vec::new(),
            site_crashed: vec![false; sites],
            cuts: BTreeSet::new(),
            observers: vec![Vec::new(); sites],
            probe_order: vec![Vec::new(); sites],
            next_watch: 0,
            leader_in_flight: false,
            tally: Tally::default(),
        };
        for s in 0..sites {
            for id in world.site_agents[s].clone() {
                let agent = world.born(id, s, INCARNATION_ORIGIN);
                world.agents.push(agent);
            }
        }
        let n = world.agents.len();
        world.tally.sent_by_agent = vec![0; n];
        world.tally.crashed_at = vec![None; n];
        world.tally.site_crashed_at = vec![None; sites];
        for i in 0..n {
            world.reschedule(i);
        }
        world.refresh_observers();
        world
            .agenda
            .schedule(nanos(config.plan_interval), Event::Plan);
        let mut fault_rng = root.fork(4);
        for (at, fault) in faults::schedule(config, &mut fault_rng) {
            world.agenda.schedule(at, Event::Fault(fault));
        }
        world
    }

    fn at(&self, t: Nanos) -> Instant {
        self.origin + Duration::from_nanos(t)
    }

    fn offset(&self, i: Instant) -> Nanos {
        nanos(i.saturating_duration_since(self.origin))
    }

    /// A fresh agent `id` of site `s`, its SWIM seeded from the state's view of its site.
    fn born(&mut self, id: NodeId, s: usize, incarnation: u64) -> Agent {
        let seed = self.seeds.next_u64();
        let template = Template {
            swim: self.swim,
            report_step: self.config.report_step,
            site_agents: &self.site_agents[s],
        };
        let recorded = self
            .state
            .site_views
            .get(&self.site_names[s])
            .map_or(&EMPTY, |v| &v.dead);
        let mut agent = Agent::start(
            id,
            s,
            &template,
            incarnation,
            seed,
            recorded,
            self.at(self.now),
        );
        // The first tick only picks the agent's phase.
        agent.swim.tick(self.at(self.now));
        agent
    }

    pub(super) fn run(mut self) -> SimReport {
        while let Some((at, event)) = self.agenda.pop_until(self.end) {
            self.now = at;
            self.tally.events += 1;
            self.handle(event);
        }
        self.report()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { agent, generation } => {
                let a = &mut self.agents[agent];
                if !a.up || a.tick_generation != generation {
                    return;
                }
                a.next_tick = None;
                let out = a.swim.tick(self.origin + Duration::from_nanos(self.now));
                self.send_swim(agent, out);
                self.after_swim(agent);
            }
            Event::Swim { to, from, message } => {
                if !self.agents[to].up {
                    return;
                }
                let now = self.at(self.now);
                let out = self.agents[to].swim.handle(from, message, now);
                self.send_swim(to, out);
                self.after_swim(to);
            }
            Event::SitePing {
                to,
                observer,
                generation,
            } => {
                if !self.agents[to].up {
                    return;
                }
                self.count(to, "site-ack");
                let (from_site, to_site) = (self.agents[to].site, self.agents[observer].site);
                if let Some(delay) = self.deliver(from_site, to_site) {
                    self.agenda.schedule(
                        self.now + delay,
                        Event::SiteAck {
                            observer,
                            generation,
                            site: from_site,
                        },
                    );
                }
            }
            Event::SiteAck {
                observer,
                generation,
                site,
            } => {
                let now = self.at(self.now);
                let Some(w) = live_watch(&mut self.agents, observer, generation) else {
                    return;
                };
                if w.sites.handle_answer(&self.site_names[site], now).is_some() {
                    self.reconcile(observer);
                }
            }
            Event::Round {
                observer,
                generation,
            } => self.round(observer, generation),
            Event::Commit { origin, commands } => self.commit(origin, commands),
            Event::Plan => self.plan(),
            Event::Fault(fault) => self.fault(fault),
        }
    }

    // --- network ---

    fn count(&mut self, agent: usize, kind: &'static str) {
        *self.tally.sent.entry(kind).or_default() += 1;
        self.tally.sent_by_agent[agent] += 1;
    }

    /// The one-way delay of a message from site `a` to site `b`, or `None` when it is lost.
    fn deliver(&mut self, a: usize, b: usize) -> Option<Nanos> {
        if !self.cuts.is_empty() && self.cuts.contains(&link(a, b)) {
            return None;
        }
        if self.net.chance(self.config.loss) {
            return None;
        }
        let (lo, hi) = if a == b {
            self.config.intra_site_delay
        } else {
            self.config.inter_site_delay
        };
        Some(self.net.between(lo, hi))
    }

    fn send_swim(&mut self, from: usize, out: Vec<Outgoing>) {
        let (id, site) = (self.agents[from].id, self.agents[from].site);
        for o in out {
            self.count(from, o.message.kind());
            let Some(to) = self.index(o.to) else {
                continue;
            };
            if let Some(delay) = self.deliver(site, self.agents[to].site) {
                self.agenda.schedule(
                    self.now + delay,
                    Event::Swim {
                        to,
                        from: id,
                        message: o.message,
                    },
                );
            }
        }
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        (i < self.agents.len()).then_some(i)
    }

    /// Whether a proposal from site `s` reaches the leader.
    fn reaches_leader(&self, s: usize) -> bool {
        !self.cuts.contains(&link(s, LEADER_SITE))
    }

    fn propose(&mut self, from_site: usize, origin: Origin, commands: Vec<Command>) -> bool {
        if !self.reaches_leader(from_site) {
            return false;
        }
        self.agenda.schedule(
            self.now + nanos(self.config.commit_delay),
            Event::Commit { origin, commands },
        );
        true
    }

    // --- agents ---

    /// After SWIM ran: learn its verdicts, let the reporter write, and tick again when due.
    fn after_swim(&mut self, i: usize) {
        self.agents[i].learn();
        self.report_view(i);
        self.reschedule(i);
    }

    fn report_view(&mut self, i: usize) {
        let now = self.at(self.now);
        let a = &mut self.agents[i];
        if a.view_in_flight {
            return;
        }
        let site = a.site;
        let recorded = self
            .state
            .site_views
            .get(&self.site_names[site])
            .map_or(&EMPTY, |v| &v.dead);
        let differs = a.dead != *recorded;
        if !differs && !a.differing {
            return;
        }
        a.differing = differs;
        // Rank from the dead set before it is taken out for the poll (taken first, every
        // death was ignored and the reporter's deputies believed it alive).
        let alive = if differs {
            a.alive_below(&self.site_agents[site]).clone()
        } else {
            BTreeSet::new()
        };
        let dead = std::mem::take(&mut a.dead);
        let view = a.reporter.poll(&dead, &alive, recorded, now);
        a.dead = dead;
        let Some(view) = view else {
            return;
        };
        let (id, life) = (a.id, a.life);
        let command = Command::ReportSiteView {
            site: self.site_names[site].clone(),
            reporter: id,
            dead: view,
        };
        let sent = self.propose(site, Origin::Reporter { agent: i, life }, vec![command]);
        self.agents[i].view_in_flight = sent;
    }

    fn reschedule(&mut self, i: usize) {
        let next = self.offset(self.agents[i].swim.next_tick());
        let next = next.max(self.now + 1_000);
        let a = &mut self.agents[i];
        if !a.up || a.next_tick.is_some_and(|t| t <= next) {
            return;
        }
        a.tick_generation += 1;
        a.next_tick = Some(next);
        let generation = a.tick_generation;
        self.agenda.schedule(
            next,
            Event::Tick {
                agent: i,
                generation,
            },
        );
    }

    fn start_watch(&mut self, i: usize) {
        let mut sites = SiteWatch::new(DetectorConfig {
            interval: self.config.site_watch_interval,
            threshold: self.config.threshold,
        });
        sites.set_sites(self.targets(self.agents[i].site), self.at(self.now));
        self.next_watch += 1;
        let generation = self.next_watch;
        self.agents[i].watch = Some(Watch {
            sites,
            generation,
            started: self.now,
            in_flight: BTreeSet::new(),
        });
        let phase = self.chance.below(nanos(self.config.site_watch_interval));
        self.agenda.schedule(
            self.now + phase,
            Event::Round {
                observer: i,
                generation,
            },
        );
    }

    /// What an observer of site `own` probes: every other site's agents, up ones first.
    fn targets(&self, own: usize) -> BTreeMap<String, Vec<NodeId>> {
        (0..self.site_names.len())
            .filter(|s| *s != own)
            .map(|s| (self.site_names[s].clone(), self.probe_order[s].clone()))
            .collect()
    }

    /// One observer interval: probe one agent of each other site, judge, write what differs.
    fn round(&mut self, observer: usize, generation: u64) {
        let now = self.at(self.now);
        let Some(w) = live_watch(&mut self.agents, observer, generation) else {
            return;
        };
        let probes = w.sites.probes();
        w.sites.tick(now);
        let site = self.agents[observer].site;
        for (_, target) in probes {
            self.count(observer, "site-ping");
            let Some(to) = self.index(target) else {
                continue;
            };
            if let Some(delay) = self.deliver(site, self.agents[to].site) {
                self.agenda.schedule(
                    self.now + delay,
                    Event::SitePing {
                        to,
                        observer,
                        generation,
                    },
                );
            }
        }
        self.reconcile(observer);
        self.agenda.schedule(
            self.now + nanos(self.config.site_watch_interval),
            Event::Round {
                observer,
                generation,
            },
        );
    }

    /// An observer writes each verdict of its watch that differs from what the state records
    /// for it — once its watch has run a full window (a fresh watch believes every site up).
    fn reconcile(&mut self, observer: usize) {
        let window =
            nanos(self.config.site_watch_interval) * u64::from(self.config.threshold.max(1));
        let a = &self.agents[observer];
        let Some(w) = a.watch.as_ref().filter(|w| self.now >= w.started + window) else {
            return;
        };
        let mut writes = Vec::new();
        for (name, up) in w.sites.verdicts() {
            let recorded_up = self
                .state
                .site_observations
                .get(name)
                .and_then(|by| by.get(&a.id))
                .is_none_or(|o| o.up);
            let Some(site) = self.site_index.get(name) else {
                continue;
            };
            if up != recorded_up && !w.in_flight.contains(site) {
                writes.push((*site, up));
            }
        }
        let (id, own, generation) = (a.id, a.site, w.generation);
        for (site, up) in writes {
            let command = Command::ObserveSite {
                observer: id,
                site: self.site_names[site].clone(),
                up,
            };
            let origin = Origin::Observer {
                agent: observer,
                generation,
                site,
            };
            if self.propose(own, origin, vec![command])
                && let Some(w) = self.agents[observer].watch.as_mut()
            {
                w.in_flight.insert(site);
            }
        }
    }

    /// Observers and probe orders follow the state's host and site health.
    fn refresh_observers(&mut self) {
        let mut orders_changed = false;
        for s in 0..self.site_names.len() {
            let (up, down): (Vec<NodeId>, Vec<NodeId>) =
                self.site_agents[s].iter().partition(|id| {
                    self.state
                        .hosts
                        .get(id)
                        .is_some_and(|h| h.health == Health::Up)
                });
            let order: Vec<NodeId> = up.into_iter().chain(down).collect();
            if order != self.probe_order[s] {
                self.probe_order[s] = order;
                orders_changed = true;
            }
        }
        for s in 0..self.site_names.len() {
            let now_observing: Vec<usize> =
                quorum::site_observers(&self.state, &self.members, &self.site_names[s])
                    .into_iter()
                    .filter_map(|id| self.index(id))
                    .collect();
            for i in std::mem::take(&mut self.observers[s]) {
                if !now_observing.contains(&i) {
                    self.agents[i].watch = None;
                }
            }
            for &i in &now_observing {
                if self.agents[i].up && self.agents[i].watch.is_none() {
                    self.start_watch(i);
                } else if orders_changed {
                    let targets = self.targets(s);
                    let now = self.at(self.now);
                    if let Some(w) = self.agents[i].watch.as_mut() {
                        w.sites.set_sites(targets, now);
                    }
                }
            }
            self.observers[s] = now_observing;
        }
    }

    // --- replicated state ---

    fn plan(&mut self) {
        self.agenda
            .schedule(self.now + nanos(self.config.plan_interval), Event::Plan);
        if self.leader_in_flight {
            return;
        }
        let commands = quorum::verdict_commands(&self.state, &self.members, &BTreeMap::new());
        if !commands.is_empty() {
            self.leader_in_flight = self.propose(LEADER_SITE, Origin::Leader, commands);
        }
    }

    fn commit(&mut self, origin: Origin, commands: Vec<Command>) {
        let sites_judged: BTreeSet<String> = commands
            .iter()
            .filter_map(|c| match c {
                Command::SetSiteHealth { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let mut health_changed = false;
        let at_ms = self.now / 1_000_000;
        let actor = match origin {
            Origin::Reporter { agent, .. } | Origin::Observer { agent, .. } => {
                format!("node {}", self.agents[agent].id)
            }
            Origin::Leader => "leader".to_string(),
        };
        for command in commands {
            match &command {
                Command::ReportSiteView { .. } => self.tally.writes.site_views += 1,
                Command::ObserveSite { .. } => self.tally.writes.site_observations += 1,
                Command::SetSiteHealth { name, health, .. } => {
                    self.tally.writes.site_verdicts += 1;
                    health_changed = true;
                    if *health == Health::Down {
                        self.judge_site_down(name);
                    }
                }
                Command::SetHostHealth { id, health, .. } => {
                    let by_site = self
                        .state
                        .hosts
                        .get(id)
                        .is_some_and(|h| sites_judged.contains(&h.site));
                    if by_site {
                        self.tally.writes.host_verdicts_by_site += 1;
                    } else {
                        self.tally.writes.host_verdicts += 1;
                    }
                    health_changed = true;
                    if *health == Health::Down {
                        self.judge_host_down(*id);
                    }
                }
                _ => {}
            }
            let proposal = Proposal::new(at_ms, actor.clone(), command);
            if self.state.apply(&proposal).is_err() {
                self.tally.refused += 1;
            }
        }
        match origin {
            Origin::Reporter { agent, life } => {
                if self.agents[agent].life == life {
                    self.agents[agent].view_in_flight = false;
                }
            }
            Origin::Observer {
                agent,
                generation,
                site,
            } => {
                if let Some(w) = live_watch(&mut self.agents, agent, generation) {
                    w.in_flight.remove(&site);
                }
            }
            Origin::Leader => self.leader_in_flight = false,
        }
        if health_changed {
            self.refresh_observers();
        }
    }

    fn judge_site_down(&mut self, name: &str) {
        let Some(&s) = self.site_index.get(name) else {
            return;
        };
        match &mut self.tally.site_crashed_at[s] {
            Some((at, detected)) => {
                if !*detected {
                    *detected = true;
                    let latency = self.now - *at;
                    self.tally.site_detections.push(latency);
                }
            }
            None => self.tally.false_sites += 1,
        }
    }

    fn judge_host_down(&mut self, id: NodeId) {
        let Some(i) = self.index(id) else {
            return;
        };
        if let Some((at, detected)) = &mut self.tally.crashed_at[i] {
            if !*detected {
                *detected = true;
                let latency = self.now - *at;
                self.tally.host_detections.push(latency);
            }
        } else if self.agents[i].up && !self.site_crashed[self.agents[i].site] {
            self.tally.false_hosts += 1;
        }
    }

    // --- faults ---

    fn fault(&mut self, fault: Fault) {
        match fault {
            Fault::HostCrash => {
                let candidates: Vec<usize> = (0..self.agents.len())
                    .filter(|i| self.agents[*i].up && !self.site_crashed[self.agents[*i].site])
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let i = candidates[self.chance.below(candidates.len() as u64) as usize];
                self.agents[i].crash();
                self.tally.crashed_at[i] = Some((self.now, false));
                self.tally.host_crashes += 1;
                let restart = self.now + nanos(self.config.host_down_for);
                if restart < self.end {
                    self.agenda
                        .schedule(restart, Event::Fault(Fault::HostRestart(i)));
                }
            }
            Fault::HostRestart(i) => {
                if self.agents[i].up || self.site_crashed[self.agents[i].site] {
                    return;
                }
                self.restart(i);
            }
            Fault::SiteCrash(s) => {
                self.site_crashed[s] = true;
                self.tally.site_crashed_at[s] = Some((self.now, false));
                self.tally.site_crashes += 1;
                for i in self.agent_range(s) {
                    if self.agents[i].up {
                        self.agents[i].crash();
                    }
                }
            }
            Fault::SiteRestart(s) => {
                self.site_crashed[s] = false;
                self.tally.site_crashed_at[s] = None;
                for i in self.agent_range(s) {
                    self.restart(i);
                }
            }
            Fault::Cut(a, b) => {
                self.cuts.insert((a, b));
            }
            Fault::Heal(a, b) => {
                self.cuts.remove(&(a, b));
            }
        }
    }

    fn agent_range(&self, s: usize) -> std::ops::Range<usize> {
        let per_site = self.site_agents[s].len();
        s * per_site..(s + 1) * per_site
    }

    /// Restarts agent `i` with a new life; closes its own crash, if it had one.
    fn restart(&mut self, i: usize) {
        if let Some((_, detected)) = self.tally.crashed_at[i].take() {
            self.tally.host_restarts += 1;
            if !detected {
                self.tally.host_missed += 1;
            }
        }
        let (id, site, life) = (self.agents[i].id, self.agents[i].site, self.agents[i].life);
        self.tally.suspicions += self.agents[i].swim.suspicion_stats();
        let incarnation = INCARNATION_ORIGIN + self.now / 1_000_000_000;
        let mut agent = self.born(id, site, incarnation);
        agent.life = life + 1;
        agent.tick_generation = self.agents[i].tick_generation + 1;
        self.agents[i] = agent;
        if self.observers[site].contains(&i) {
            self.start_watch(i);
        }
        self.reschedule(i);
    }

    // --- report ---

    fn report(self) -> SimReport {
        let mut t = self.tally;
        for a in &self.agents {
            t.suspicions += a.swim.suspicion_stats();
        }
        let hosts = self.agents.len();
        let secs = self.end as f64 / 1e9;
        let per_host = |n: u64| {
            if hosts == 0 || secs == 0.0 {
                0.0
            } else {
                n as f64 / hosts as f64 / secs
            }
        };
        let total: u64 = t.sent.values().sum();
        let busiest = t.sent_by_agent.iter().copied().max().unwrap_or(0);
        let changes = t.host_crashes + t.host_restarts;
        SimReport {
            sites: self.site_names.len(),
            hosts_per_site: self.config.hosts_per_site,
            hosts,
            seed: self.config.seed,
            loss: self.config.loss,
            simulated_secs: secs,
            events: t.events,
            messages_per_host_per_sec: per_host(total),
            messages_by_kind: t
                .sent
                .iter()
                .map(|(k, v)| (k.to_string(), per_host(*v)))
                .collect(),
            busiest_agent_per_sec: if secs == 0.0 {
                0.0
            } else {
                busiest as f64 / secs
            },
            host_crashes: t.host_crashes,
            host_restarts: t.host_restarts,
            host_detection: Latency::from_nanos(t.host_detections),
            host_missed: t.host_missed,
            site_crashes: t.site_crashes,
            site_detection: Latency::from_nanos(t.site_detections),
            false_host_verdicts: t.false_hosts,
            false_site_verdicts: t.false_sites,
            writes: t.writes,
            writes_per_host_change: if changes == 0 {
                0.0
            } else {
                t.writes.for_hosts() as f64 / changes as f64
            },
            refused: t.refused,
            suspicions: t.suspicions,
        }
    }
}
