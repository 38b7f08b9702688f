//! How one of a site's observers ([`crate::quorum::site_observers`]) watches the other sites:
//! each interval it probes ONE agent of each watched site, taking the site's agents in turn,
//! and a site is down for it once no agent of that site answered for `interval × threshold`.
//!
//! Per observer that is one probe per other site per interval, whatever the number of hosts:
//! cross-site traffic grows with sites (and the few observers per site), not with hosts. The
//! window covers several probes to different agents, so one dead or unreachable agent does not
//! make its site look down; the shell gives only the agents the state records up (all of them
//! when none is), so a site with dead hosts does not look dark. Probes do not wait for each
//! other: the shell keeps one in flight per agent, not per site, so a dead agent's unanswered
//! probe does not hold up its site's next probes for a whole window.
//!
//! Invariant: the observer's own pauses are not blamed on the sites (the window restarts, as
//! in [`Detector`]).
//!
//! It does not decide anything: its verdicts are one observer's votes, counted by
//! [`crate::quorum`].

use std::collections::BTreeMap;
use std::time::Instant;

use consensus::NodeId;

use crate::detector::{Detector, DetectorConfig, VerdictChange};

/// One observer's watch over the other sites.
#[derive(Debug)]
pub struct SiteWatch {
    detector: Detector<String>,
    /// Per watched site: the agents to probe, in order, and the next one's position.
    targets: BTreeMap<String, (Vec<NodeId>, usize)>,
}

impl SiteWatch {
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            detector: Detector::new(config),
            targets: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> DetectorConfig {
        self.detector.config()
    }

    /// Sets the watched sites, each with the agents to probe (those the state records up first:
    /// the order is kept). A new site starts up with a full window; sites not listed are
    /// forgotten.
    pub fn set_sites(&mut self, sites: BTreeMap<String, Vec<NodeId>>, now: Instant) {
        self.detector.set_subjects(sites.keys().cloned(), now);
        self.targets.retain(|s, _| sites.contains_key(s));
        for (site, agents) in sites {
            let entry = self.targets.entry(site).or_insert((Vec::new(), 0));
            if entry.0 != agents {
                let next = entry.1.min(agents.len());
                *entry = (agents, next);
            }
        }
    }

    /// The probes of one interval: one agent of each watched site, each site's agents in turn.
    pub fn probes(&mut self) -> Vec<(String, NodeId)> {
        let mut out = Vec::new();
        for (site, (agents, next)) in &mut self.targets {
            if agents.is_empty() {
                continue;
            }
            let i = *next % agents.len();
            *next = i + 1;
            out.push((site.clone(), agents[i]));
        }
        out
    }

    /// An agent of `site` answered at `now`. Returns the change if the site was down.
    pub fn handle_answer(&mut self, site: &str, now: Instant) -> Option<VerdictChange<String>> {
        self.detector.handle_heartbeat(site.to_string(), now)
    }

    /// Declares down every site none of whose agents answered within the window.
    pub fn tick(&mut self, now: Instant) -> Vec<VerdictChange<String>> {
        self.detector.tick(now)
    }

    /// Current verdicts, by site.
    pub fn verdicts(&self) -> impl Iterator<Item = (&String, bool)> + '_ {
        self.detector.verdicts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn watch(t0: Instant) -> SiteWatch {
        let mut w = SiteWatch::new(DetectorConfig {
            interval: 100 * MS,
            threshold: 3,
        });
        w.set_sites(
            BTreeMap::from([("s2".into(), vec![21, 22, 23]), ("s3".into(), vec![31])]),
            t0,
        );
        w
    }

    /// Runs `intervals` intervals from `t0`; `answers(target)` says whether a probe is answered.
    fn run(
        w: &mut SiteWatch,
        t0: Instant,
        intervals: u32,
        answers: impl Fn(NodeId) -> bool,
    ) -> Vec<VerdictChange<String>> {
        let mut out = Vec::new();
        for i in 0..intervals {
            let now = t0 + 100 * MS * i;
            for (site, target) in w.probes() {
                if answers(target) {
                    out.extend(w.handle_answer(&site, now));
                }
            }
            out.extend(w.tick(now));
        }
        out
    }

    #[test]
    fn one_probe_per_site_per_interval_taking_agents_in_turn() {
        let mut w = watch(Instant::now());
        let probed: Vec<_> = (0..4).flat_map(|_| w.probes()).collect();
        let s2: Vec<NodeId> = probed
            .iter()
            .filter(|(s, _)| s == "s2")
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(s2, vec![21, 22, 23, 21]);
        assert_eq!(probed.len(), 8);
    }

    #[test]
    fn a_site_with_one_dead_agent_stays_up() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        assert!(run(&mut w, t0, 50, |t| t != 22).is_empty());
    }

    #[test]
    fn a_site_none_of_whose_agents_answer_is_down_after_the_window_then_up_again() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        let changes = run(&mut w, t0, 10, |t| t / 10 != 2);
        assert_eq!(
            changes,
            vec![VerdictChange {
                subject: "s2".to_string(),
                up: false
            }]
        );
        let back = run(&mut w, t0 + 1000 * MS, 3, |_| true);
        assert_eq!(
            back,
            vec![VerdictChange {
                subject: "s2".to_string(),
                up: true
            }]
        );
    }

    #[test]
    fn observer_pause_does_not_fail_the_sites() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        run(&mut w, t0, 3, |_| true);
        assert!(w.tick(t0 + 5000 * MS).is_empty());
    }

    #[test]
    fn changing_a_sites_agents_keeps_its_verdict_and_window() {
        let t0 = Instant::now();
        let mut w = watch(t0);
        run(&mut w, t0, 10, |t| t / 10 != 2);
        w.set_sites(
            BTreeMap::from([("s2".into(), vec![22, 24]), ("s3".into(), vec![31])]),
            t0 + 1000 * MS,
        );
        assert_eq!(
            w.verdicts().find(|(s, _)| *s == "s2").map(|(_, up)| up),
            Some(false)
        );
        assert_eq!(w.probes()[0], ("s2".to_string(), 24));
    }
}
