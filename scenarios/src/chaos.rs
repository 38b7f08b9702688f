//! Chaos drills, Jepsen-style: a seeded generator draws a schedule of faults (kill and restart
//! hosts and sites, freeze, partitions both ways and one way, degraded links, the Raft leader
//! killed, switchovers and drains in flight) and turns it into a drill [`Scenario`], which the
//! ordinary runner plays against a lab while probing from every site and every instance address
//! directly; the scenario asks for the chaos invariants (see [`crate::checks::invariants`]).
//!
//! Invariant: a chaos scenario is a function of its [`ChaosOptions`] — the seed names the run,
//! and the same options replay the same schedule exactly (the report's description carries the
//! schedule and the command that replays it).
//!
//! It does not run the drill ([`crate::runner::run`] does) and does not judge it.

use std::time::Duration;

use crate::scenario::{
    DrillOptions, Expect, LinkDef, Probes, Scenario, ServiceDef, Step, Topology,
};

pub mod schedule;

pub use schedule::{Fault, FaultKind, Schedule, Shape};

/// What a chaos drill is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosOptions {
    pub seed: u64,
    /// How many faults to draw.
    pub faults: u32,
    /// Time the faults are spread over: each disruptive fault is held up to `duration / faults`
    /// (default [`DEFAULT_SLOT`] per fault). Recovery waits come on top.
    pub duration: Option<Duration>,
    pub topology: Topology,
}

/// The longest hold of a fault when no `--duration` is given: longer than the lab's RTO bound
/// (11.25 s), so some faults last long enough to need a move and an outage can be long enough
/// for the "every long outage is explained" check to mean something.
pub const DEFAULT_SLOT: Duration = Duration::from_secs(15);

/// The name of the probed service.
pub const SERVICE: &str = "web";

/// Why chaos options were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChaosError {
    #[error("--faults must be at least 1")]
    NoFaults,
    #[error("a chaos drill needs at least 2 sites with hosts (the topology has {0})")]
    TooFewSites(u32),
    #[error("--duration {duration:?} leaves less than 1 s per fault for {faults} faults")]
    TooShort { duration: Duration, faults: u32 },
}

/// The default topology: 3 sites × 2 hosts, every link through the emulator with 2 ms delay
/// (the emulator is what makes partitions and link faults possible).
pub fn default_topology() -> Topology {
    Topology {
        sites: 3,
        hosts_per_site: 2,
        witness: false,
        ipv6: false,
        timing: Default::default(),
        links: vec![LinkDef {
            a: "*".into(),
            b: "*".into(),
            delay: Some(Duration::from_millis(2)),
            jitter: None,
            loss: None,
            rate: None,
        }],
    }
}

/// The schedule `opts` draw, and the drill scenario that plays it.
pub fn scenario(opts: &ChaosOptions) -> Result<(Scenario, Schedule), ChaosError> {
    if opts.faults == 0 {
        return Err(ChaosError::NoFaults);
    }
    let t = &opts.topology;
    if t.sites < 2 {
        return Err(ChaosError::TooFewSites(t.sites));
    }
    let slot = match opts.duration {
        Some(d) if d / opts.faults < Duration::from_secs(1) => {
            return Err(ChaosError::TooShort {
                duration: d,
                faults: opts.faults,
            });
        }
        Some(d) => d / opts.faults,
        None => DEFAULT_SLOT,
    };
    let shape = Shape {
        host_sites: t.host_sites(),
        hosts_per_site: t.hosts_per_site,
        links: !t.links.is_empty(),
    };
    let schedule = Schedule::generate(opts.seed, opts.faults, slot, &shape);
    let mut description = format!(
        "seed {}, {} faults (replay: sitectl drill chaos --seed {} --faults {}{}):",
        opts.seed,
        opts.faults,
        opts.seed,
        opts.faults,
        opts.duration
            .map(|d| format!(" --duration {}", humantime::format_duration(d)))
            .unwrap_or_default()
    );
    for line in schedule.lines() {
        description.push(' ');
        description.push_str(&line);
        description.push(';');
    }
    if !shape.links {
        description.push_str(" (no links in the topology: no partitions or link faults)");
    }
    let scenario = Scenario {
        name: format!("chaos-seed-{}", opts.seed),
        description,
        topology: t.clone(),
        services: vec![ServiceDef {
            name: SERVICE.into(),
            sites: shape.host_sites.clone(),
            instances: 1,
            port: 8080,
            volume: None,
            max_rpo: None,
        }],
        probes: Probes {
            direct: true,
            ..Probes::default()
        },
        steps: schedule
            .steps(SERVICE)
            .into_iter()
            .map(|action| Step { at: None, action })
            .collect(),
        expect: Expect {
            no_split_brain: true,
            instances_one_site: true,
            epochs_only_go_up: true,
            served_at_end: true,
            outages_explained: true,
            writes_where_acked: true,
            ..Expect::default()
        },
        drill: DrillOptions::default(),
    };
    Ok((scenario, schedule))
}

#[cfg(test)]
mod tests;
