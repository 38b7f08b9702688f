//! The invariants a randomized (chaos) drill checks after every run, beyond the expectations of
//! a scripted drill: one site serving at a time as seen by probing every instance address
//! directly, epochs that only go up, every acknowledged write where the report says it is, the
//! service served at the end, and no long outage without an event of the fabric explaining it.
//!
//! Invariant: pure functions over recorded samples, like the rest of [`super`]; each returns
//! its evidence (the samples or windows that broke it), so a report can show why it failed.
//!
//! It does not decide which invariants a drill asks for ([`crate::scenario::Expect`] does) and
//! does not probe anything: the runner's direct prober fills [`DirectSample`]s.

use std::collections::{BTreeMap, BTreeSet};

use siteagent::api::EventView;

use super::{Served, split_brain};
use crate::report::{OwnerChange, ProbeSample};

mod verdict;

pub use verdict::{Observed, evaluate};

/// A `GET /whoami` answered (HTTP 200) by an instance address probed directly, without DNS:
/// every host's service address is asked once per round.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectSample {
    /// The probing round; all addresses of a round are asked at the same time.
    pub round: u64,
    /// When the request was sent and answered, drill seconds.
    pub sent: f64,
    pub answered: f64,
    /// The address asked.
    pub addr: String,
    pub site: String,
    pub host: u64,
    pub epoch: u64,
}

impl DirectSample {
    fn served(&self) -> Served {
        Served {
            sent: self.sent,
            answered: self.answered,
            site: self.site.clone(),
            host: self.host,
            epoch: self.epoch,
        }
    }
}

/// Two sites' instances answered in one round of direct probes (both were serving at the
/// moment the round was sent), or an instance answered with an older epoch after a newer one
/// had answered. The first such case, described.
pub fn instances_split(direct: &[DirectSample]) -> Option<String> {
    let mut rounds: BTreeMap<u64, Vec<&DirectSample>> = BTreeMap::new();
    for d in direct {
        rounds.entry(d.round).or_default().push(d);
    }
    for answers in rounds.values() {
        let sites: BTreeSet<&str> = answers.iter().map(|d| d.site.as_str()).collect();
        if sites.len() > 1 {
            let who: Vec<String> = answers
                .iter()
                .map(|d| {
                    format!(
                        "{} = site {} host {} epoch {}",
                        d.addr, d.site, d.host, d.epoch
                    )
                })
                .collect();
            return Some(format!(
                "at {:.2} s one round of direct probes was answered by {} sites: {}",
                answers[0].sent,
                sites.len(),
                who.join(", ")
            ));
        }
    }
    let served: Vec<Served> = direct.iter().map(DirectSample::served).collect();
    split_brain(&served).map(|s| format!("direct probes: {s}"))
}

/// Rounds of direct probes answered by more than one instance address (of one site, when
/// [`instances_split`] found nothing).
pub fn double_rounds(direct: &[DirectSample]) -> usize {
    let mut per_round: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for d in direct {
        per_round
            .entry(d.round)
            .or_default()
            .insert(d.addr.as_str());
    }
    per_round.values().filter(|a| a.len() > 1).count()
}

/// Every place an epoch went down: within one probe stream (a vantage's probes, or one directly
/// probed address, in time order), in the owner record of the replicated state, and across all
/// streams in time (an answer with an older epoch to a request sent after a newer epoch had
/// answered anywhere).
pub fn epoch_regressions(
    probes: &[ProbeSample],
    direct: &[DirectSample],
    owners: &[OwnerChange],
) -> Vec<String> {
    let mut found = Vec::new();
    let mut streams: BTreeMap<String, Vec<(f64, u64, String)>> = BTreeMap::new();
    for p in probes.iter().filter(|p| p.ok) {
        if let (Some(epoch), Some(site)) = (p.epoch, &p.served_by) {
            streams
                .entry(format!("probes from {}", p.vantage))
                .or_default()
                .push((p.t, epoch, site.clone()));
        }
    }
    for d in direct {
        streams
            .entry(format!("direct probes of {}", d.addr))
            .or_default()
            .push((d.sent, d.epoch, d.site.clone()));
    }
    for (stream, mut samples) in streams {
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in samples.windows(2) {
            let ((t0, e0, s0), (t1, e1, s1)) = (&w[0], &w[1]);
            if e1 < e0 {
                found.push(format!(
                    "{stream}: epoch {e0} (site {s0}) at {t0:.2} s, then epoch {e1} (site {s1}) at {t1:.2} s"
                ));
                break;
            }
        }
    }
    let mut by_time: Vec<&OwnerChange> = owners.iter().collect();
    by_time.sort_by(|a, b| a.t.total_cmp(&b.t));
    if let Some(w) = by_time.windows(2).find(|w| w[1].epoch < w[0].epoch) {
        found.push(format!(
            "owner record: epoch {} at {:.2} s, then epoch {} at {:.2} s",
            w[0].epoch, w[0].t, w[1].epoch, w[1].t
        ));
    }
    let all: Vec<Served> = super::served(probes)
        .into_iter()
        .chain(direct.iter().map(DirectSample::served))
        .collect();
    if let Some(s) = split_brain(&all) {
        found.push(format!("across all streams: {s}"));
    }
    found
}

/// Each vantage's last probe: `Ok` with who served it, or `Err` with why it failed (or that
/// the vantage has no probe at all).
pub fn served_at_end(
    probes: &[ProbeSample],
    vantages: &[String],
) -> Vec<(String, Result<String, String>)> {
    vantages
        .iter()
        .map(|v| {
            let last = probes
                .iter()
                .filter(|p| &p.vantage == v && p.t.is_finite())
                .max_by(|a, b| a.t.total_cmp(&b.t));
            let verdict = match last {
                None => Err("no probe".to_string()),
                Some(p) if p.ok => Ok(format!(
                    "served by site {} epoch {} at {:.2} s",
                    p.served_by.as_deref().unwrap_or("?"),
                    p.epoch.unwrap_or(0),
                    p.t
                )),
                Some(p) => Err(format!(
                    "failed at {:.2} s: {}",
                    p.t,
                    p.error.as_deref().unwrap_or("no answer")
                )),
            };
            (v.clone(), verdict)
        })
        .collect()
}

/// A time when no vantage's probe succeeded: from the last answer before it to the first
/// answer after it (drill seconds), with the fabric's events inside that window.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    pub from: f64,
    pub to: f64,
    /// The outage never ended before the drill did.
    pub open: bool,
    /// The fabric's events within `from..=to` that explain it.
    pub events: Vec<String>,
}

impl Outage {
    pub fn length(&self) -> f64 {
        self.to - self.from
    }
}

/// Whether an event of the fabric's log explains an outage of `service`: a decision of the
/// leader's planner (a verdict on a host or site, a revocation, a placement) or anything said
/// about the service itself (an instance fenced when its lease expired, started, stopped). One
/// observer's view of a peer (`node 4 sees node 1 down`) is not: a cut link makes those while
/// the fabric decides nothing. (Events are free text in the admin API, hence the text match.)
pub fn explains(e: &EventView, service: &str) -> bool {
    e.actor.starts_with("planner") || e.message.contains(&format!("service {service}"))
}

/// Every outage of the service as all vantages together saw it — a run of failed probes with
/// no successful one in between, from any vantage, measured from the answer before it to the
/// answer after it (a vantage failing alone makes only gaps as short as the probe spacing) —
/// with the events of the log that explain it ([`explains`]; placed on the drill clock by
/// `started_unix_ms`) that fall inside it. A vantage that alone cannot reach the
/// service (its own site is cut off) is not an outage of the service: another vantage still
/// gets answers.
pub fn outages(
    probes: &[ProbeSample],
    events: &[EventView],
    started_unix_ms: u64,
    service: &str,
) -> Vec<Outage> {
    let mut sorted: Vec<&ProbeSample> = probes.iter().filter(|p| p.t.is_finite()).collect();
    sorted.sort_by(|a, b| a.t.total_cmp(&b.t));
    let answered = |p: &ProbeSample| p.t + p.latency_ms.unwrap_or(0.0) / 1000.0;
    let mut windows = Vec::new();
    let mut last_ok: Option<f64> = None;
    let mut run: Option<f64> = None;
    for p in &sorted {
        match (p.ok, run) {
            (false, None) => run = Some(last_ok.unwrap_or(p.t)),
            (true, Some(from)) => {
                windows.push((from, answered(p), false));
                run = None;
                last_ok = Some(answered(p));
            }
            (true, None) => last_ok = Some(answered(p)),
            (false, Some(_)) => {}
        }
    }
    if let (Some(from), Some(last)) = (run, sorted.last()) {
        windows.push((from, last.t, true));
    }
    windows
        .into_iter()
        .map(|(from, to, open)| {
            let at = |e: &EventView| (e.at_ms as f64 - started_unix_ms as f64) / 1000.0;
            Outage {
                from,
                to,
                open,
                events: events
                    .iter()
                    .filter(|e| (from..=to).contains(&at(e)) && explains(e, service))
                    .map(|e| format!("{:.2} s {}: {}", at(e), e.actor, e.message))
                    .collect(),
            }
        })
        .collect()
}

/// How the acknowledged writes are accounted for at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteAccount {
    /// Writes acknowledged, by the site whose instance acknowledged them.
    pub acked_by_site: BTreeMap<String, u64>,
    /// Acknowledged writes missing from the volume of the site that acknowledged them, as
    /// `(sequence number, site)`.
    pub misplaced: Vec<(u64, String)>,
}

/// Checks that every acknowledged write is in the volume of the site whose instance
/// acknowledged it (volumes are shared by the hosts of a site and not replicated across
/// sites, so that is where the report says each write is). `volumes` holds each site's
/// records at the end; a site missing from it holds none.
pub fn account_writes(
    probes: &[ProbeSample],
    volumes: &BTreeMap<String, BTreeSet<u64>>,
) -> WriteAccount {
    let mut account = WriteAccount::default();
    let empty = BTreeSet::new();
    for p in probes {
        let (Some(seq), Some(site)) = (p.write_seq, &p.served_by) else {
            continue;
        };
        *account.acked_by_site.entry(site.clone()).or_default() += 1;
        if !volumes.get(site).unwrap_or(&empty).contains(&seq) {
            account.misplaced.push((seq, site.clone()));
        }
    }
    account
}

#[cfg(test)]
mod tests;
