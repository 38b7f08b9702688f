//! What a run measured ([`SimReport`]) and how it is printed: one run as a list, several as the
//! table the scale issue asks for ([`Table`]).
//!
//! Invariant: everything here is a function of the run's seed and config; wall time is not
//! (the CLI prints it next to the table).
//!
//! It does not measure anything itself; [`super::world`] fills it in.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::swim::SuspicionStats;

/// Percentiles of detection times, in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// How many failures were detected (the samples).
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub(super) fn from_nanos(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |p: usize| {
            let i = (samples.len() * p).div_ceil(100).max(1) - 1;
            samples[i.min(samples.len() - 1)] as f64 / 1e6
        };
        Self {
            count: samples.len(),
            p50_ms: rank(50),
            p99_ms: rank(99),
            max_ms: samples[samples.len() - 1] as f64 / 1e6,
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            write!(f, "-")
        } else {
            write!(f, "{:.0}/{:.0}", self.p50_ms, self.p99_ms)
        }
    }
}

/// Health writes that reached the replicated log (every committed proposal counts, also one
/// that changed nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Writes {
    /// `ReportSiteView`, by a site's reporter.
    pub site_views: u64,
    /// `ObserveSite`, by a site's observers of other sites.
    pub site_observations: u64,
    /// `SetHostHealth` decided from a site view (a host's own failure or recovery).
    pub host_verdicts: u64,
    /// `SetHostHealth` that came with its site's verdict (a site's failure or recovery).
    pub host_verdicts_by_site: u64,
    /// `SetSiteHealth`.
    pub site_verdicts: u64,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.site_views
            + self.site_observations
            + self.host_verdicts
            + self.host_verdicts_by_site
            + self.site_verdicts
    }

    /// The writes a host's own failure or recovery costs: its site's view and its verdict.
    pub fn for_hosts(&self) -> u64 {
        self.site_views + self.host_verdicts
    }
}

/// The figures of one simulated run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub sites: usize,
    pub hosts_per_site: usize,
    pub hosts: usize,
    pub seed: u64,
    /// Probability that one message is lost.
    pub loss: f64,
    pub simulated_secs: f64,
    /// Events the simulator ran (deterministic; shows two seeds gave different runs).
    pub events: u64,
    /// Detector messages sent (SWIM and cross-site probes, lost ones included) per host per
    /// second.
    pub messages_per_host_per_sec: f64,
    /// The same, split by kind (`ping`, `ping-req`, `ack`, `nack`, `site-ping`, `site-ack`).
    pub messages_by_kind: BTreeMap<String, f64>,
    /// The busiest agent's messages sent per second (a site observer, usually).
    pub busiest_agent_per_sec: f64,
    pub host_crashes: usize,
    pub host_restarts: usize,
    /// Host crash -> the state's `SetHostHealth` down.
    pub host_detection: Latency,
    /// Crashed hosts that restarted before the state marked them down.
    pub host_missed: usize,
    pub site_crashes: usize,
    /// Site crash -> the state's `SetSiteHealth` down.
    pub site_detection: Latency,
    /// Down verdicts on hosts that were neither crashed nor in a crashed site.
    pub false_host_verdicts: u64,
    /// Down verdicts on sites that were not crashed (a cut link must not fail a site).
    pub false_site_verdicts: u64,
    pub writes: Writes,
    /// Host health writes (site views + host verdicts) per host crash or restart: each is one
    /// change the fabric records, ideally with one view and one verdict (2).
    pub writes_per_host_change: f64,
    /// Proposals the state machine refused (should be 0).
    pub refused: u64,
    /// SWIM suspicions summed over every agent's detector: those an agent's own failed probe
    /// raised (mostly loss), how many their target refuted, and the deaths agents declared
    /// (a crash is declared by several agents, each counted).
    pub suspicions: SuspicionStats,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Table(std::slice::from_ref(self)))?;
        let kinds: Vec<String> = self
            .messages_by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        writeln!(f, "messages/host/s by kind: {}", kinds.join(", "))?;
        writeln!(
            f,
            "host crashes {} (restarts {}, missed {}), host detection ms p50 {:.0} p99 {:.0} max {:.0}",
            self.host_crashes,
            self.host_restarts,
            self.host_missed,
            self.host_detection.p50_ms,
            self.host_detection.p99_ms,
            self.host_detection.max_ms
        )?;
        writeln!(
            f,
            "site crashes {}, site detection ms p50 {:.0} p99 {:.0} max {:.0}",
            self.site_crashes,
            self.site_detection.p50_ms,
            self.site_detection.p99_ms,
            self.site_detection.max_ms
        )?;
        let w = &self.writes;
        writeln!(
            f,
            "health writes {}: site views {}, host verdicts {} (+{} with their site), site observations {}, site verdicts {}; refused {}; events {}",
            w.total(),
            w.site_views,
            w.host_verdicts,
            w.host_verdicts_by_site,
            w.site_observations,
            w.site_verdicts,
            self.refused,
            self.events
        )?;
        let s = &self.suspicions;
        writeln!(
            f,
            "SWIM suspicions from failed probes {} (refuted {}), deaths declared by agents {}",
            s.accused, s.refuted, s.expired
        )
    }
}

/// Several runs as one table, a row per run.
pub struct Table<'a>(pub &'a [SimReport]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>8} {:>5} {:>5} {:>8} {:>6} {:>6} {:>7} {:>11} {:>11} {:>9} {:>7}",
            "hosts",
            "sites",
            "loss",
            "sim s",
            "msg/h/s",
            "swim",
            "cross",
            "busiest",
            "host p50/99",
            "site p50/99",
            "false h/s",
            "wr/host"
        )?;
        for r in self.0 {
            let cross: f64 = ["site-ping", "site-ack"]
                .iter()
                .filter_map(|k| r.messages_by_kind.get(*k))
                .sum();
            writeln!(
                f,
                "{:>6} {:>8} {:>4.0}% {:>5.0} {:>8.2} {:>6.2} {:>6.2} {:>7.1} {:>11} {:>11} {:>9} {:>7.2}",
                r.hosts,
                format!("{}x{}", r.sites, r.hosts_per_site),
                r.loss * 100.0,
                r.simulated_secs,
                r.messages_per_host_per_sec,
                r.messages_per_host_per_sec - cross,
                cross,
                r.busiest_agent_per_sec,
                r.host_detection.to_string(),
                r.site_detection.to_string(),
                format!("{}/{}", r.false_host_verdicts, r.false_site_verdicts),
                r.writes_per_host_change
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let l = Latency::from_nanos((1..=100).map(|i| i * 1_000_000).collect());
        assert_eq!(
            (l.count, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        let one = Latency::from_nanos(vec![7_000_000]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Latency::from_nanos(Vec::new()).to_string(), "-");
    }
}
