//! The faults of one run, drawn from its seed before it starts.
//!
//! - every `host_crash_every` (± a quarter, from `warmup` on and until `warmup` before the
//!   end, so every crash has time to be seen) one host crashes, the victim
//!   drawn when it happens among the hosts that are up in sites that are up; it restarts
//!   `host_down_for` later;
//! - with `site_crash` (and at least 3 sites) one site other than the leader's crashes at about
//!   a quarter of the run and restarts after `site_down_for` (at most a fifth of the run);
//! - with `link_cut` (and at least 3 sites) one pair of sites loses its link at about 60 % of
//!   the run, after the site crash, for `link_cut_for` (at most a fifth of the run): one broken
//!   link, which must not fail either site.
//!
//! Invariant: the schedule depends only on the config (seed included); victims of host crashes
//! are drawn at run time from a stream of their own, so they depend on the run's state only
//! through which hosts are up.
//!
//! It does not model faults the quorum is not meant to survive (two overlapping site faults),
//! and it does not crash the leader's site (Raft re-election is outside what is simulated).

use super::SimConfig;
use super::agenda::Nanos;
use crate::rng::{Rng, nanos};

/// Something that happens to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// A host, drawn when it happens, crashes.
    HostCrash,
    /// The host with this agent index restarts (if its site is up).
    HostRestart(usize),
    SiteCrash(usize),
    SiteRestart(usize),
    /// The link between two sites is cut (both directions)...
    Cut(usize, usize),
    /// ...and heals.
    Heal(usize, usize),
}

/// The site that hosts the Raft leader: never crashed.
pub(super) const LEADER_SITE: usize = 0;

/// Every fault but the restarts of crashed hosts (scheduled when the crash happens).
pub(super) fn schedule(config: &SimConfig, rng: &mut Rng) -> Vec<(Nanos, Fault)> {
    let end = nanos(config.duration);
    let mut out = Vec::new();
    let every = nanos(config.host_crash_every);
    if every > 0 {
        let mut t = nanos(config.warmup);
        loop {
            t += every - every / 4 + rng.below(every / 2 + 1);
            if t.saturating_add(nanos(config.warmup)) >= end {
                break;
            }
            out.push((t, Fault::HostCrash));
        }
    }
    let sites = config.sites;
    if sites >= 3 {
        let fifth = end / 5;
        if config.site_crash {
            let site = 1 + rng.below(sites as u64 - 1) as usize;
            let at = end / 4 + rng.below(end / 20 + 1);
            out.push((at, Fault::SiteCrash(site)));
            out.push((
                at + nanos(config.site_down_for).min(fifth),
                Fault::SiteRestart(site),
            ));
        }
        if config.link_cut {
            let a = rng.below(sites as u64) as usize;
            let b = (a + 1 + rng.below(sites as u64 - 1) as usize) % sites;
            let at = end * 3 / 5 + rng.below(end / 20 + 1);
            out.push((at, Fault::Cut(a.min(b), a.max(b))));
            out.push((
                at + nanos(config.link_cut_for).min(fifth),
                Fault::Heal(a.min(b), a.max(b)),
            ));
        }
    }
    out
}
