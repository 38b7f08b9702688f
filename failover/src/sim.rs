//! A deterministic fleet simulator of the sans-IO health parts: `sites × hosts_per_site`
//! agents, each running the real [`Swim`](crate::swim::Swim) over its site and the real
//! [`ViewReporter`](crate::siteview::ViewReporter); the first
//! [`SITE_OBSERVERS`](crate::quorum::SITE_OBSERVERS) agents of each site (by
//! [`site_observers`](crate::quorum::site_observers) on the replicated state) running the real
//! [`SiteWatch`](crate::sitewatch::SiteWatch) over the other sites; and a simulated replicated
//! state (one [`FabricState`](consensus::state::FabricState) built through commands) to which
//! proposals apply after a commit delay and on which a leader runs
//! [`verdict_commands`](crate::quorum::verdict_commands) every plan interval. Over a network
//! with per-message delay and loss, site-pair cuts, host crashes and a site crash, it measures
//! detector traffic per host, detection times, false verdicts and replicated writes
//! ([`SimReport`]).
//!
//! Invariant: a run is a pure function of its [`SimConfig`]: virtual time only (an `Instant`
//! taken once as the origin, never read again), one agenda ordered by (time, insertion), seeded
//! SplitMix64 streams, ordered maps — so two runs of one config give the same report, byte for
//! byte when printed.
//!
//! It does not simulate Raft (proposals commit after a fixed delay on one copy of the state
//! that every agent reads), nor the planner and leases, nor the agents' CPU; it does not crash
//! the leader's site (see `faults`).

use std::time::Duration;

use serde::Serialize;

mod agenda;
mod faults;
mod fleet;
mod report;
mod world;

#[cfg(test)]
mod tests;

pub use report::{Latency, SimReport, Table, Writes};

/// What to simulate. `Default` is the lab's timing (interval 200 ms, threshold 5) on a 3 × 10
/// fleet for 60 s, at no loss, with a host crash every ~5 s, one site crash and one cut link.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    pub sites: usize,
    pub hosts_per_site: usize,
    pub seed: u64,
    /// Probability that any one message (SWIM or cross-site probe) is lost.
    pub loss: f64,
    /// Simulated time.
    pub duration: Duration,
    /// Detector interval: SWIM's protocol period and (by default) the cross-site probe interval.
    pub interval: Duration,
    /// Detector threshold (SWIM's timing via `SwimConfig::from_window`, the site watch's window).
    pub threshold: u32,
    /// How often a site observer probes each other site.
    pub site_watch_interval: Duration,
    /// How often the leader proposes verdict changes.
    pub plan_interval: Duration,
    /// How long an agent of rank r waits (× r) for its site's reporter before writing itself.
    pub report_step: Duration,
    /// From a proposal to its being applied in the state everyone reads (about one WAN RTT).
    pub commit_delay: Duration,
    /// One-way delay inside a site, drawn uniformly from this range per message.
    pub intra_site_delay: (Duration, Duration),
    /// One-way delay between sites, drawn uniformly from this range per message.
    pub inter_site_delay: (Duration, Duration),
    /// No fault before this.
    pub warmup: Duration,
    /// A host crashes about this often (± a quarter); zero for none.
    pub host_crash_every: Duration,
    /// A crashed host restarts after this.
    pub host_down_for: Duration,
    /// Crash one site (not the leader's) at about a quarter of the run (needs 3 sites).
    pub site_crash: bool,
    /// The crashed site restarts after this (at most a fifth of the run).
    pub site_down_for: Duration,
    /// Cut the link between one pair of sites at about 60 % of the run (needs 3 sites).
    pub link_cut: bool,
    /// The cut heals after this (at most a fifth of the run).
    pub link_cut_for: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            sites: 3,
            hosts_per_site: 10,
            seed: 1,
            loss: 0.0,
            duration: Duration::from_secs(60),
            interval: ms(200),
            threshold: 5,
            site_watch_interval: ms(200),
            plan_interval: ms(250),
            report_step: ms(1000),
            commit_delay: ms(30),
            intra_site_delay: (Duration::from_micros(200), ms(1)),
            inter_site_delay: (ms(10), ms(20)),
            warmup: ms(5000),
            host_crash_every: ms(5000),
            host_down_for: ms(8000),
            site_crash: true,
            site_down_for: ms(10_000),
            link_cut: true,
            link_cut_for: ms(10_000),
        }
    }
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> SimReport {
    world::World::new(config).run()
}

/// The fleets of the scale issue's table: 100, 1 000 and 10 000 hosts (sites × hosts per site).
pub const SWEEP_FLEETS: [(usize, usize); 3] = [(10, 10), (20, 50), (20, 500)];

/// The losses of the scale issue's table.
pub const SWEEP_LOSSES: [f64; 3] = [0.0, 0.01, 0.05];

/// The runs of the scale table: every fleet of [`SWEEP_FLEETS`] at every loss of
/// [`SWEEP_LOSSES`], the rest from `base` (run them one by one to time each, or use [`sweep`]).
pub fn sweep_configs(base: &SimConfig) -> Vec<SimConfig> {
    SWEEP_FLEETS
        .iter()
        .flat_map(|(sites, hosts_per_site)| {
            SWEEP_LOSSES.iter().map(move |loss| SimConfig {
                sites: *sites,
                hosts_per_site: *hosts_per_site,
                loss: *loss,
                ..base.clone()
            })
        })
        .collect()
}

/// Runs every config of [`sweep_configs`]; print the result with [`Table`].
pub fn sweep(base: &SimConfig) -> Vec<SimReport> {
    sweep_configs(base).iter().map(run).collect()
}
