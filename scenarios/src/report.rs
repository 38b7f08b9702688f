//! The drill report: what the probes saw, what happened when, what was measured and which
//! expectations held — as data and as terminal tables. Its files on disk are
//! [`crate::archive`]'s, its timeline picture [`crate::svg`]'s.
//!
//! It owns the report's data model and the small queries the runner derives
//! its measures from ([`Report::failure_windows`], [`Report::first_ok_after`]).
//!
//! Invariant: all times are seconds since the drill started, and nothing here assumes the
//! vectors are sorted: probes from different vantages arrive interleaved, so every query and
//! view orders by time itself and skips non-finite times instead of panicking on them.
//!
//! It does not judge expectations or compute measures; the runner fills those in and this module
//! only shows them.

use std::fmt;

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde::{Deserialize, Serialize};

pub use crate::checks::replicas::ReplicaChange;

/// Everything one drill produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description, one line or a paragraph.
    pub description: String,
    /// Seed the run's randomness (jitter, loss, probe spacing) came from.
    pub seed: u64,
    /// Wall-clock start of the drill, Unix milliseconds; every `t` is relative to it.
    pub started_unix_ms: u64,
    /// How long the drill ran, seconds.
    pub duration_s: f64,
    /// Sites in display order.
    pub sites: Vec<String>,
    /// The probed service.
    pub service: String,
    /// Every probe, from every vantage, in any order.
    pub probes: Vec<ProbeSample>,
    /// Steps of the timeline as they were carried out.
    pub markers: Vec<Marker>,
    /// Ownership of the service as the replicated state recorded it.
    pub owners: Vec<OwnerChange>,
    /// Changes of the DNS answer for the service, as seen from each vantage.
    pub dns: Vec<DnsChange>,
    /// Changes of the state of each copy of the service's volume, as the fabric reported it.
    #[serde(default)]
    pub replicas: Vec<ReplicaChange>,
    /// Measures (RTO, RPO, detection time) with their theoretical bounds.
    pub measures: Vec<Measure>,
    /// Each expectation of the scenario and whether it held.
    pub expectations: Vec<ExpectationResult>,
    /// True only when every expectation held.
    pub passed: bool,
}

/// A copy's state from a time until the next change (`None`: the end of the drill).
pub type StateRun = (f64, Option<f64>, String);

/// One probe: resolve the service from a vantage, ask it who it is, write to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSample {
    /// When the probe started, seconds since the drill started.
    pub t: f64,
    /// Site the client probes from.
    pub vantage: String,
    /// Whether the probe got an answer (and, if it wrote, an acknowledgement).
    pub ok: bool,
    /// Site that answered `/whoami`.
    pub served_by: Option<String>,
    /// Host that answered.
    pub host: Option<u64>,
    /// Ownership epoch the answering instance believes in.
    pub epoch: Option<u64>,
    /// Sequence number of the acknowledged write.
    pub write_seq: Option<u64>,
    /// Round trip of the whole probe, milliseconds.
    pub latency_ms: Option<f64>,
    /// Why the probe failed.
    pub error: Option<String>,
}

/// What kind of step a marker records; decides its colour in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    /// Something was broken: a host or site killed, a partition, a degraded link.
    Fault,
    /// Something broken was repaired.
    Heal,
    /// An operator action: switchover, migration, drain.
    Operation,
    /// The timeline waited.
    Wait,
    /// Anything else worth seeing on the timeline.
    Note,
}

impl MarkerKind {
    /// Lower-case name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkerKind::Fault => "fault",
            MarkerKind::Heal => "heal",
            MarkerKind::Operation => "operation",
            MarkerKind::Wait => "wait",
            MarkerKind::Note => "note",
        }
    }
}

impl fmt::Display for MarkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step of the timeline at the time it was carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// Seconds since the drill started.
    pub t: f64,
    /// What kind of step.
    pub kind: MarkerKind,
    /// Short text, e.g. `kill site east`.
    pub label: String,
}

/// The service changed owner (or lost it: `site: None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerChange {
    /// Seconds since the drill started.
    pub t: f64,
    /// New owner, or none.
    pub site: Option<String>,
    /// Ownership epoch of the new lease.
    pub epoch: u64,
}

/// The DNS answer for the service, as resolved from one vantage, changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsChange {
    /// Seconds since the drill started.
    pub t: f64,
    /// Site whose DNS server was asked.
    pub vantage: String,
    /// Addresses, or a failure such as `["SERVFAIL"]`.
    pub answer: Vec<String>,
}

/// A number the drill measured, beside what the configuration says it should be at worst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// `rto`, `rpo_writes`, `rpo_lag_s`, `detection`, ...
    pub name: String,
    /// Measured value; `None` when it could not be measured (e.g. never recovered).
    pub value: Option<f64>,
    /// Unit of `value` and `bound`, e.g. `s` or `writes`.
    pub unit: String,
    /// Theoretical bound derived from the configuration.
    pub bound: Option<f64>,
    /// How it was measured, in words.
    pub how: String,
}

/// One expectation of the scenario and the verdict on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectationResult {
    /// Expectation name, e.g. `rto_max`.
    pub name: String,
    /// What was expected, e.g. `≤ 12 s`.
    pub expected: String,
    /// What was measured.
    pub measured: String,
    /// Whether it held.
    pub pass: bool,
    /// By how much it missed, or why.
    pub detail: String,
}

impl Report {
    /// Vantages in display order: the sites first, then any other vantage a probe or a DNS
    /// change names, in the order first seen.
    pub fn vantages(&self) -> Vec<String> {
        let mut out = self.sites.clone();
        let seen = self
            .probes
            .iter()
            .map(|p| &p.vantage)
            .chain(self.dns.iter().map(|d| &d.vantage));
        for v in seen {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        out
    }

    /// Probes from `vantage` with a finite time, in time order.
    pub fn probes_from(&self, vantage: &str) -> Vec<&ProbeSample> {
        let mut out: Vec<&ProbeSample> = self
            .probes
            .iter()
            .filter(|p| p.vantage == vantage && p.t.is_finite())
            .collect();
        out.sort_by(|a, b| a.t.total_cmp(&b.t));
        out
    }

    /// Contiguous runs of failed probes from `vantage`, as `(start, end)`: `start` is the first
    /// failed probe of the run and `end` the first successful probe after it — the moment the
    /// vantage saw the service again. A run still failing when the probes stop ends at its
    /// last failed probe (see [`Report::unrecovered`]).
    pub fn failure_windows(&self, vantage: &str) -> Vec<(f64, f64)> {
        let mut windows = Vec::new();
        let mut run: Option<(f64, f64)> = None;
        for p in self.probes_from(vantage) {
            match (p.ok, run) {
                (false, None) => run = Some((p.t, p.t)),
                (false, Some((start, _))) => run = Some((start, p.t)),
                (true, Some((start, _))) => {
                    windows.push((start, p.t));
                    run = None;
                }
                (true, None) => {}
            }
        }
        windows.extend(run);
        windows
    }

    /// Whether the last probe from `vantage` failed, i.e. its last failure window never closed.
    pub fn unrecovered(&self, vantage: &str) -> bool {
        self.probes_from(vantage).last().is_some_and(|p| !p.ok)
    }

    /// Time of the earliest successful probe strictly after `t` (from any vantage) for which
    /// `predicate` holds, e.g. "served by the new owner" or "from vantage west".
    pub fn first_ok_after(&self, t: f64, predicate: impl Fn(&ProbeSample) -> bool) -> Option<f64> {
        self.probes
            .iter()
            .filter(|p| p.ok && p.t.is_finite() && p.t > t && predicate(p))
            .map(|p| p.t)
            .min_by(f64::total_cmp)
    }

    /// Each copy's states of the service's volume as `(from, until, state)` runs per site (in
    /// the order the sites were first reported); the last run of a site has no end.
    pub fn replica_runs(&self) -> Vec<(String, Vec<StateRun>)> {
        let mut changes: Vec<&ReplicaChange> =
            self.replicas.iter().filter(|r| r.t.is_finite()).collect();
        changes.sort_by(|a, b| a.t.total_cmp(&b.t));
        let mut out: Vec<(String, Vec<StateRun>)> = Vec::new();
        for c in changes {
            let i = match out.iter().position(|(s, _)| s == &c.site) {
                Some(i) => i,
                None => {
                    out.push((c.site.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            let runs = &mut out[i].1;
            if let Some(last) = runs.last_mut() {
                last.1 = Some(c.t);
            }
            runs.push((c.t, None, c.state.clone()));
        }
        out
    }

    /// Markers, owner changes, DNS changes and copy states merged in time order, as
    /// `(t, what)`.
    pub fn timeline_events(&self) -> Vec<(f64, String)> {
        let markers = self
            .markers
            .iter()
            .map(|m| (m.t, format!("{}: {}", m.kind, m.label)));
        let owners = self.owners.iter().map(|o| {
            let site = o.site.as_deref().unwrap_or("nobody");
            (o.t, format!("owner → {site} (epoch {})", o.epoch))
        });
        let dns = self.dns.iter().map(|d| {
            (
                d.t,
                format!("dns from {} → {}", d.vantage, answer_text(&d.answer)),
            )
        });
        let copies = self
            .replicas
            .iter()
            .map(|r| (r.t, format!("copy at {} → {}", r.site, r.state)));
        let mut events: Vec<(f64, String)> =
            markers.chain(owners).chain(dns).chain(copies).collect();
        // Stable: at equal times markers come before what they caused.
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        events
    }

    /// The report for a terminal: header, timeline, measures, expectations, probes per vantage.
    pub fn summary_table(&self) -> String {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let mut out = format!(
            "drill {} — {verdict}\nseed {}, {} s, service {}, {} of {} expectations held\n",
            self.scenario,
            self.seed,
            number(self.duration_s),
            self.service,
            self.expectations.iter().filter(|e| e.pass).count(),
            self.expectations.len(),
        );
        if !self.description.trim().is_empty() {
            out.push_str(self.description.trim());
            out.push('\n');
        }

        let mut timeline = table(&["t (s)", "what"]);
        for (t, what) in self.timeline_events() {
            timeline.add_row(vec![seconds(t), what]);
        }
        section(
            &mut out,
            "timeline",
            timeline,
            self.timeline_events().is_empty(),
        );

        let mut copies = table(&["copy at", "states over time"]);
        for (site, runs) in self.replica_runs() {
            let text: Vec<String> = runs
                .iter()
                .map(|(from, to, state)| match to {
                    Some(to) => format!("{state} {}–{}", seconds(*from), seconds(*to)),
                    None => format!("{state} {}–end", seconds(*from)),
                })
                .collect();
            copies.add_row(vec![site, text.join(", ")]);
        }
        copies
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(SUMMARY_WIDTH);
        if !self.replicas.is_empty() {
            section(&mut out, "volume copies", copies, false);
        }

        let mut measures = table(&["measure", "measured", "bound", "how"]);
        // `how` holds whole formulas: wrap it rather than make the table hundreds of columns wide.
        measures
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(SUMMARY_WIDTH);
        for m in &self.measures {
            measures.add_row(vec![
                m.name.clone(),
                m.value
                    .map_or_else(|| "not measured".into(), |v| with_unit(v, &m.unit)),
                m.bound
                    .map_or_else(|| "-".into(), |b| with_unit(b, &m.unit)),
                m.how.clone(),
            ]);
        }
        section(&mut out, "measures", measures, self.measures.is_empty());

        let mut expectations = table(&["expectation", "expected", "measured", "result", "detail"]);
        for e in &self.expectations {
            expectations.add_row(vec![
                e.name.clone(),
                e.expected.clone(),
                e.measured.clone(),
                if e.pass { "PASS" } else { "FAIL" }.into(),
                e.detail.clone(),
            ]);
        }
        section(
            &mut out,
            "expectations",
            expectations,
            self.expectations.is_empty(),
        );

        let mut probes = table(&["vantage", "ok", "failed", "failure windows"]);
        for v in self.vantages() {
            let samples = self.probes_from(&v);
            let ok = samples.iter().filter(|p| p.ok).count();
            let windows = self.failure_windows(&v);
            let open = self.unrecovered(&v);
            let text: Vec<String> = windows
                .iter()
                .enumerate()
                .map(|(i, (a, b))| {
                    if open && i + 1 == windows.len() {
                        format!("{}–? (not recovered)", seconds(*a))
                    } else {
                        format!("{}–{} ({} s)", seconds(*a), seconds(*b), seconds(b - a))
                    }
                })
                .collect();
            probes.add_row(vec![
                v.clone(),
                ok.to_string(),
                (samples.len() - ok).to_string(),
                if text.is_empty() {
                    "-".into()
                } else {
                    text.join(", ")
                },
            ]);
        }
        section(&mut out, "probes", probes, self.probes.is_empty());
        out
    }
}

/// Columns the measures table may take; its `how` column wraps within it.
const SUMMARY_WIDTH: u16 = 110;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

fn section(out: &mut String, title: &str, table: Table, empty: bool) {
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    if empty {
        out.push_str("(none)\n");
    } else {
        out.push_str(&table.to_string());
        out.push('\n');
    }
}

/// A DNS answer as one short string.
pub(crate) fn answer_text(answer: &[String]) -> String {
    if answer.is_empty() {
        "(empty)".into()
    } else {
        answer.join(", ")
    }
}

/// Seconds with one decimal, the resolution probes have.
pub(crate) fn seconds(t: f64) -> String {
    format!("{t:.1}")
}

/// A number without trailing noise: integers as integers, others with up to 3 decimals.
pub(crate) fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.is_finite() && v.abs() < 1e15 {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v}")
    }
}

pub(crate) fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        number(v)
    } else {
        format!("{} {unit}", number(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(t: f64, vantage: &str, ok: bool) -> ProbeSample {
        ProbeSample {
            t,
            vantage: vantage.into(),
            ok,
            served_by: ok.then(|| "a".into()),
            host: None,
            epoch: None,
            write_seq: None,
            latency_ms: None,
            error: (!ok).then(|| "refused".into()),
        }
    }

    fn report(probes: Vec<ProbeSample>) -> Report {
        Report {
            scenario: "s".into(),
            description: String::new(),
            seed: 1,
            started_unix_ms: 0,
            duration_s: 10.0,
            sites: vec!["a".into(), "b".into()],
            service: "web".into(),
            probes,
            markers: vec![],
            owners: vec![],
            dns: vec![],
            replicas: vec![],
            measures: vec![],
            expectations: vec![],
            passed: true,
        }
    }

    #[test]
    fn failure_windows_run_from_first_failure_to_next_success_in_time_order() {
        // Deliberately out of order and interleaved with another vantage.
        let r = report(vec![
            probe(3.0, "a", false),
            probe(1.0, "a", true),
            probe(2.0, "a", false),
            probe(2.5, "b", false),
            probe(4.0, "a", true),
            probe(5.0, "a", true),
            probe(6.0, "a", false),
            probe(7.0, "a", true),
            probe(8.0, "a", false),
            probe(9.0, "a", false),
        ]);
        assert_eq!(
            r.failure_windows("a"),
            vec![(2.0, 4.0), (6.0, 7.0), (8.0, 9.0)]
        );
        assert!(r.unrecovered("a"));
        assert_eq!(r.failure_windows("b"), vec![(2.5, 2.5)]);
        assert!(r.failure_windows("nowhere").is_empty());
    }

    #[test]
    fn failure_windows_are_empty_when_every_probe_succeeds_and_skip_nan_times() {
        let r = report(vec![
            probe(1.0, "a", true),
            probe(f64::NAN, "a", false),
            probe(2.0, "a", true),
        ]);
        assert!(r.failure_windows("a").is_empty());
        assert!(!r.unrecovered("a"));
    }

    #[test]
    fn first_ok_after_is_strictly_after_and_honours_the_predicate() {
        let mut late_b = probe(6.0, "b", true);
        late_b.served_by = Some("b".into());
        let r = report(vec![
            probe(2.0, "a", true),
            late_b,
            probe(5.0, "a", true),
            probe(4.0, "a", false),
        ]);
        assert_eq!(r.first_ok_after(2.0, |_| true), Some(5.0));
        assert_eq!(
            r.first_ok_after(0.0, |p| p.served_by.as_deref() == Some("b")),
            Some(6.0)
        );
        assert_eq!(r.first_ok_after(6.0, |_| true), None);
    }

    #[test]
    fn vantages_list_sites_first_then_unknown_vantages() {
        let r = report(vec![probe(1.0, "z", true), probe(1.0, "a", true)]);
        assert_eq!(r.vantages(), vec!["a", "b", "z"]);
    }

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(number(12.0), "12");
        assert_eq!(number(6.25), "6.25");
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(with_unit(3.5, "s"), "3.5 s");
        assert_eq!(number(f64::INFINITY), "inf");
    }

    #[test]
    fn copy_states_become_runs_per_site_in_the_timeline_and_the_summary() {
        let mut r = report(vec![probe(0.0, "a", true)]);
        let change = |t: f64, site: &str, state: &str| ReplicaChange {
            t,
            site: site.into(),
            state: state.into(),
        };
        r.replicas = vec![
            change(5.0, "s1", "outdated"),
            change(1.0, "s1", "primary"),
            change(1.0, "s2", "in-sync"),
            change(5.0, "s2", "primary"),
        ];
        let runs = r.replica_runs();
        assert_eq!(runs[0].0, "s1");
        assert_eq!(
            runs[0].1,
            [
                (1.0, Some(5.0), "primary".to_string()),
                (5.0, None, "outdated".to_string())
            ]
        );
        let summary = r.summary_table();
        assert!(summary.contains("copy at s2 → primary"), "{summary}");
        assert!(
            summary.contains("in-sync 1.0–5.0, primary 5.0–end"),
            "{summary}"
        );
        let svg = crate::svg::timeline(&r);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        let lanes = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("lane copy-lane"))
            .count();
        assert_eq!(lanes, 2, "one lane per copy");
    }
}
