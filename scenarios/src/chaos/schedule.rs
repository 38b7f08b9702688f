//! The seeded fault generator of a chaos drill: from a seed, a number of faults and the shape
//! of the topology, a [`Schedule`] of faults with how long each is held, and the drill steps
//! that play it.
//!
//! Invariant: the same seed, fault count, slot and shape always give the same schedule (the
//! generator is a SplitMix64 written here, not a library RNG whose stream may change between
//! versions). The schedule keeps the lab able to recover: at most one disruptive fault at a
//! time, each healed after its hold and followed by a wait for every probe to succeed again;
//! operations (switchover, drain) are left in flight while the next fault hits, never two in a
//! row, and whatever they left (a drained host) is undone at the next heal; the drill ends by
//! healing everything and waiting for the service.
//!
//! It does not run anything: the steps go through the drill runner like a scenario file's.

use std::fmt;
use std::time::Duration;

use crate::scenario::{Action, Impairment, Until};

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and its stream is fixed by its
/// definition, so a seed replays the same schedule on any build.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is negligible for the small `n` used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`, in steps of 100 ms.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64 / 100, hi.as_millis() as u64 / 100);
        Duration::from_millis((lo + self.below(hi.saturating_sub(lo) + 1)) * 100)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The kinds of fault the generator draws from. To add one (e.g. a service update once
/// `sitectl service update` exists): a variant here and in [`Fault`], its line in
/// [`FaultKind::ALL`], and its steps in [`Fault::steps`] and [`Fault::heal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    KillHost,
    KillSite,
    FreezeSite,
    Partition,
    PartitionOneWay,
    DegradeLink,
    KillLeader,
    Switchover,
    Drain,
    Update,
}

impl FaultKind {
    pub const ALL: &[FaultKind] = &[
        FaultKind::KillHost,
        FaultKind::KillSite,
        FaultKind::FreezeSite,
        FaultKind::Partition,
        FaultKind::PartitionOneWay,
        FaultKind::DegradeLink,
        FaultKind::KillLeader,
        FaultKind::Switchover,
        FaultKind::Drain,
        FaultKind::Update,
    ];

    /// Needs the link emulator (a topology with links).
    pub fn needs_links(self) -> bool {
        matches!(
            self,
            FaultKind::Partition | FaultKind::PartitionOneWay | FaultKind::DegradeLink
        )
    }

    /// A planned operation, left in flight while the next fault hits.
    pub fn is_operation(self) -> bool {
        matches!(
            self,
            FaultKind::Switchover | FaultKind::Drain | FaultKind::Update
        )
    }
}

/// What the generator may name: the topology's sites and hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Sites with hosts (`s1` …).
    pub host_sites: Vec<String>,
    pub hosts_per_site: u32,
    /// Links through the emulator exist (partitions and link changes are possible).
    pub links: bool,
}

impl Shape {
    /// Hosts are numbered site by site: host `h` of site `sN` is `(N − 1) × hosts_per_site + h`.
    pub fn hosts(&self) -> u64 {
        self.host_sites.len() as u64 * u64::from(self.hosts_per_site)
    }
}

/// One drawn fault, with exactly what it acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    KillHost {
        host: u64,
    },
    KillSite {
        site: String,
    },
    FreezeSite {
        site: String,
    },
    Partition {
        a: String,
        b: String,
    },
    /// Traffic from `from` to `to` dropped; the other way flows.
    PartitionOneWay {
        from: String,
        to: String,
    },
    DegradeLink {
        a: String,
        b: String,
        delay: Duration,
        loss_percent: u32,
    },
    KillLeader,
    /// Switchover to the site after the current owner.
    Switchover,
    /// `service update` with a changed environment: a rolling restart under epoch + 1.
    Update,
    Drain {
        host: u64,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::KillHost { .. } => FaultKind::KillHost,
            Fault::KillSite { .. } => FaultKind::KillSite,
            Fault::FreezeSite { .. } => FaultKind::FreezeSite,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::PartitionOneWay { .. } => FaultKind::PartitionOneWay,
            Fault::DegradeLink { .. } => FaultKind::DegradeLink,
            Fault::KillLeader => FaultKind::KillLeader,
            Fault::Switchover => FaultKind::Switchover,
            Fault::Update => FaultKind::Update,
            Fault::Drain { .. } => FaultKind::Drain,
        }
    }

    /// A fault of `kind` on sites and hosts drawn from `shape`.
    fn draw(kind: FaultKind, shape: &Shape, rng: &mut Rng) -> Fault {
        let site = |rng: &mut Rng| rng.pick(&shape.host_sites).clone();
        let pair = |rng: &mut Rng| {
            let a = site(rng);
            let others: Vec<String> = shape
                .host_sites
                .iter()
                .filter(|s| **s != a)
                .cloned()
                .collect();
            let b = rng.pick(&others).clone();
            (a, b)
        };
        let host = |rng: &mut Rng| 1 + rng.below(shape.hosts());
        match kind {
            FaultKind::KillHost => Fault::KillHost { host: host(rng) },
            FaultKind::KillSite => Fault::KillSite { site: site(rng) },
            FaultKind::FreezeSite => Fault::FreezeSite { site: site(rng) },
            FaultKind::Partition => {
                let (a, b) = pair(rng);
                Fault::Partition { a, b }
            }
            FaultKind::PartitionOneWay => {
                let (from, to) = pair(rng);
                Fault::PartitionOneWay { from, to }
            }
            FaultKind::DegradeLink => {
                let (a, b) = pair(rng);
                Fault::DegradeLink {
                    a,
                    b,
                    delay: rng.duration(Duration::from_millis(100), Duration::from_millis(300)),
                    loss_percent: rng.below(6) as u32,
                }
            }
            FaultKind::KillLeader => Fault::KillLeader,
            FaultKind::Switchover => Fault::Switchover,
            FaultKind::Update => Fault::Update,
            FaultKind::Drain => Fault::Drain { host: host(rng) },
        }
    }

    /// The steps that inject it.
    pub fn steps(&self, service: &str) -> Vec<Action> {
        match self {
            Fault::KillHost { host } => vec![Action::KillHost { host: *host }],
            Fault::KillSite { site } => vec![Action::KillSite { site: site.clone() }],
            Fault::FreezeSite { site } => vec![Action::FreezeSite {
                site: site.clone(),
                thaw_after: None,
            }],
            Fault::Partition { a, b } => vec![Action::Partition {
                site: a.clone(),
                peer: Some(b.clone()),
            }],
            Fault::PartitionOneWay { from, to } => vec![Action::PartitionOneWay {
                from: from.clone(),
                to: to.clone(),
            }],
            Fault::DegradeLink {
                a,
                b,
                delay,
                loss_percent,
            } => vec![Action::DegradeLink {
                site: a.clone(),
                peer: Some(b.clone()),
                impairment: Impairment {
                    delay: Some(*delay),
                    jitter: Some(*delay / 10),
                    loss: Some(format!("{loss_percent}%")),
                    rate: None,
                },
            }],
            Fault::KillLeader => vec![Action::KillLeader],
            Fault::Switchover => vec![Action::SwitchoverNext {
                service: service.to_string(),
            }],
            Fault::Update => vec![Action::UpdateService {
                service: service.to_string(),
            }],
            Fault::Drain { host } => vec![Action::Drain { host: *host }],
        }
    }

    /// The steps that undo it (none for a switchover: the service stays where it went).
    pub fn heal(&self) -> Vec<Action> {
        match self {
            Fault::KillHost { host } => vec![Action::StartHost { host: *host }],
            Fault::KillSite { site } => vec![Action::StartSite { site: site.clone() }],
            Fault::FreezeSite { site } => vec![Action::ThawSite { site: site.clone() }],
            Fault::Partition { a, b } => vec![Action::Heal {
                site: a.clone(),
                peer: Some(b.clone()),
            }],
            Fault::PartitionOneWay { from, to } => vec![Action::Heal {
                site: from.clone(),
                peer: Some(to.clone()),
            }],
            // The killed leader is known only at run time; a link's own impairment is the
            // topology's: healing everything restores both.
            Fault::DegradeLink { .. } | Fault::KillLeader => vec![Action::HealAll],
            Fault::Switchover | Fault::Update => Vec::new(),
            Fault::Drain { host } => vec![Action::Undrain { host: *host }],
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillHost { host } => write!(f, "kill host {host}"),
            Fault::KillSite { site } => write!(f, "kill site {site}"),
            Fault::FreezeSite { site } => write!(f, "freeze site {site}"),
            Fault::Partition { a, b } => write!(f, "partition {a}↔{b}"),
            Fault::PartitionOneWay { from, to } => write!(f, "partition {from}→{to} one way"),
            Fault::DegradeLink {
                a,
                b,
                delay,
                loss_percent,
            } => write!(
                f,
                "degrade {a}↔{b}: delay {} ms, loss {loss_percent}%",
                delay.as_millis()
            ),
            Fault::KillLeader => f.write_str("kill the Raft leader"),
            Fault::Switchover => f.write_str("switchover to the next site"),
            Fault::Update => f.write_str("service update (rolling restart)"),
            Fault::Drain { host } => write!(f, "drain host {host}"),
        }
    }
}

/// A fault and how long it is held before its heal (for an operation: how long it is in
/// flight before the next fault).
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub fault: Fault,
    pub hold: Duration,
}

/// How long the drill waits for every probe to succeed after a heal, and after the final heal.
pub const RECOVERY: Duration = Duration::from_secs(60);
pub const FINAL_RECOVERY: Duration = Duration::from_secs(90);
/// The shortest hold of a disruptive fault, and the range of an operation's time in flight.
const MIN_HOLD: Duration = Duration::from_secs(1);
const IN_FLIGHT: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(2000));

/// The generated faults of one chaos drill.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub seed: u64,
    pub planned: Vec<Planned>,
}

impl Schedule {
    /// `faults` faults drawn from `seed`, each disruptive one held between 1 s and `slot`.
    pub fn generate(seed: u64, faults: u32, slot: Duration, shape: &Shape) -> Schedule {
        let mut rng = Rng::new(seed);
        let mut planned: Vec<Planned> = Vec::new();
        for _ in 0..faults {
            let after_operation = planned
                .last()
                .is_some_and(|p| p.fault.kind().is_operation());
            let kinds: Vec<FaultKind> = FaultKind::ALL
                .iter()
                .copied()
                .filter(|k| shape.links || !k.needs_links())
                .filter(|k| !(after_operation && k.is_operation()))
                .collect();
            let kind = *rng.pick(&kinds);
            let fault = Fault::draw(kind, shape, &mut rng);
            let hold = if kind.is_operation() {
                rng.duration(IN_FLIGHT.0, IN_FLIGHT.1)
            } else {
                rng.duration(MIN_HOLD, slot.max(MIN_HOLD))
            };
            planned.push(Planned { fault, hold });
        }
        Schedule { seed, planned }
    }

    /// The drill steps: each fault, its hold, its heal (with what operations left behind) and
    /// a wait for every probe to succeed; operations stay in flight into the next fault; at
    /// the end everything is healed and the service waited for.
    pub fn steps(&self, service: &str) -> Vec<Action> {
        let mut steps = Vec::new();
        let mut pending: Vec<Action> = Vec::new();
        for p in &self.planned {
            steps.extend(p.fault.steps(service));
            steps.push(Action::Wait { duration: p.hold });
            if p.fault.kind().is_operation() {
                pending.extend(p.fault.heal());
                continue;
            }
            steps.extend(p.fault.heal());
            steps.append(&mut pending);
            steps.push(Action::WaitUntil {
                until: Until::AllProbesOk,
                timeout: RECOVERY,
            });
        }
        steps.append(&mut pending);
        steps.push(Action::HealAll);
        steps.push(Action::WaitUntil {
            until: Until::AllProbesOk,
            timeout: FINAL_RECOVERY,
        });
        steps
    }

    /// One line per fault, e.g. `2. partition s1↔s3 held 6.4 s`.
    pub fn lines(&self) -> Vec<String> {
        self.planned
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let how = if p.fault.kind().is_operation() {
                    "in flight"
                } else {
                    "held"
                };
                format!("{}. {} {how} {:.1} s", i + 1, p.fault, p.hold.as_secs_f64())
            })
            .collect()
    }
}
