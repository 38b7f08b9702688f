//! From what a drill recorded and what it saw at the end to its measures (RTO, lost writes,
//! failed probes, detection) and the verdict of each expectation.
//!
//! Invariant: a pure function — the same recording, end state and timing always give the same
//! measures and verdicts; RTO starts at the faults, or at the operations when nothing failed.
//!
//! It does not observe anything: the runner fetches the end state ([`EndState`]) first.

use std::collections::{BTreeMap, BTreeSet};

use siteagent::api::EventView;

use super::Recording;
use crate::checks::invariants::{self, Observed};
use crate::checks::{self, Measured, replicas};
use crate::lab::LabTiming;
use crate::report::{ExpectationResult, MarkerKind, Measure};
use crate::scenario::volume::volume_name;
use crate::scenario::{Expect, Scenario};

/// What the runner saw at the end of the drill.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndState {
    /// Wall-clock time (Unix ms) of drill time 0, to place the event log on the drill's clock.
    pub started_unix_ms: u64,
    pub final_owner: Option<String>,
    /// Records held by a running instance of the final owner, when one answered.
    pub held: Option<BTreeSet<u64>>,
    /// Each live DNS server and the site its final answer pointed at.
    pub dns_final: Vec<(String, Option<String>)>,
    /// The fabric's event log.
    pub events: Vec<EventView>,
    /// Records on each site's volume at the end, when the drill checks where writes are.
    pub volumes: Option<BTreeMap<String, BTreeSet<u64>>>,
}

/// The measured part of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Conclusion {
    pub measures: Vec<Measure>,
    pub expectations: Vec<ExpectationResult>,
    pub passed: bool,
}

/// Seconds from the fault at `fault` (drill time) to the first `… is down` verdict after it.
pub fn detection(events: &[EventView], started_unix_ms: u64, fault: Option<f64>) -> Option<f64> {
    let fault_ms = started_unix_ms + (fault? * 1000.0) as u64;
    events
        .iter()
        .find(|e| e.at_ms >= fault_ms && e.message.contains(" is down"))
        .map(|e| (e.at_ms - fault_ms) as f64 / 1000.0)
}

/// The RTO bound, seconds: failover bound + probe interval + 2 × election timeout (a leader
/// lost with the fault is replaced first).
pub fn rto_bound(timing: &LabTiming, scenario: &Scenario) -> f64 {
    (timing.failover_bound() + scenario.probes.interval + timing.election_timeout_max * 2)
        .as_secs_f64()
}

/// The measures and expectations of a drill; with `test_failover` the expectation is that
/// production clients saw no failure.
pub fn measures(
    rec: &Recording,
    end: &EndState,
    timing: &LabTiming,
    scenario: &Scenario,
    test_failover: bool,
) -> Conclusion {
    // The causes RTO is measured from: the faults, or the operations when nothing failed.
    let faults = rec.times_of(MarkerKind::Fault);
    let detection = detection(&end.events, end.started_unix_ms, faults.first().copied());
    let causes = if faults.is_empty() {
        rec.times_of(MarkerKind::Operation)
    } else {
        faults
    };
    let served = checks::served(&rec.probes);
    let failures: Vec<f64> = rec.probes.iter().filter(|p| !p.ok).map(|p| p.t).collect();
    let rto = checks::rto(&served, &causes, &failures);
    let lost = end
        .held
        .as_ref()
        .map(|h| checks::lost_writes(&rec.acked, h));
    let replicas = volume_observed(rec, end, scenario, lost);
    let failed = failures.len() as u64;
    let measured = Measured {
        rto,
        lost_writes: lost,
        split_brain: checks::split_brain(&served),
        final_owner: end.final_owner.clone(),
        dns_final: end.dns_final.clone(),
        failed_probes: failed,
        owner_changes: rec
            .owners
            .windows(2)
            .filter(|w| w[0].site != w[1].site)
            .count() as u64,
        step_failures: rec.step_failures.clone(),
        invariants: Observed {
            direct_rounds: rec.direct_rounds,
            direct_answers: rec.direct.len(),
            same_site_doubles: invariants::double_rounds(&rec.direct),
            instances_split: invariants::instances_split(&rec.direct),
            epoch_regressions: invariants::epoch_regressions(&rec.probes, &rec.direct, &rec.owners),
            served_at_end: invariants::served_at_end(&rec.probes, &scenario.vantages()),
            outages: invariants::outages(
                &rec.probes,
                &end.events,
                end.started_unix_ms,
                &scenario.service().name,
            ),
            outage_bound: rto_bound(timing, scenario),
            writes: end
                .volumes
                .as_ref()
                .map(|v| invariants::account_writes(&rec.probes, v)),
        },
        replicas: replicas.clone(),
    };
    // A test failover changes nothing in production: what must hold is that production
    // clients saw no failure and no split brain (the test instance answering is a step).
    let expect = if test_failover {
        Expect {
            max_failed_probes: Some(0),
            ..Default::default()
        }
    } else {
        scenario.expect.clone()
    };
    let expectations = checks::evaluate(&expect, &measured);
    let passed = expectations.iter().all(|e| e.pass);
    let volume = scenario.service().volume.as_ref();
    let held = end.held.as_ref().map_or(0, |h| h.len());
    let mut measures = vec![
        Measure {
            name: "rto".into(),
            value: rto,
            unit: "s".into(),
            bound: Some(rto_bound(timing, scenario)),
            how: "the fault that caused the outage (or the operation) to the first successful probe served by another instance; bound = heartbeat × threshold + lease + margin + DNS TTL + probe interval + 2 × election timeout (a leader lost with the fault is replaced first)".into(),
        },
        Measure {
            name: "rpo_writes".into(),
            value: lost.map(|l| l as f64),
            unit: "writes".into(),
            bound: None,
            how: match volume {
                Some(v) => format!(
                    "acknowledged writes ({}) missing from what the final owner's instance returns on GET /records ({held} records), read from its volume {} over NBD (replicas: {})",
                    rec.acked.len(),
                    volume_name(&scenario.service().name),
                    v.replicas
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!(
                    "acknowledged writes ({}) missing from the final owner's records ({held}); without a volume they are in a directory shared within a site, not replicated across sites",
                    rec.acked.len()
                ),
            },
        },
        Measure {
            name: "failed_probes".into(),
            value: Some(failed as f64),
            unit: "probes".into(),
            bound: None,
            how: format!(
                "of {} probes every {} from {}",
                rec.probes.len(),
                humantime::format_duration(scenario.probes.interval),
                scenario.vantages().join(", ")
            ),
        },
        Measure {
            name: "detection".into(),
            value: detection,
            unit: "s".into(),
            bound: Some(timing.verdict_bound().as_secs_f64()),
            how: "first fault to the first `… is down` verdict in the event log; bound = heartbeat interval × (failure threshold + 1) + planner interval + 2 × election timeout (a leader lost with the fault is replaced first)".into(),
        },
    ];
    if let Some(b) = &replicas.lag_bound {
        measures.push(Measure {
            name: "rpo_reported_lag".into(),
            value: Some(b.bound() as f64),
            unit: "writes".into(),
            bound: None,
            how: format!(
                "what the fabric said was at risk: the copy at {} lagged by {} writes in the primary's report of {:.2} s (in the last sample before the fault at {:.2} s), plus {} writes the old primary acknowledged after that report ({} after the sample at {:.2} s; an unchanged view is re-reported only every 5 s)",
                b.site,
                b.lag_writes,
                b.reported_t,
                b.fault_t,
                b.acked_after,
                b.acked_after_sample,
                b.sample_t
            ),
        });
    }
    Conclusion {
        measures,
        expectations,
        passed,
    }
}

/// What the volume expectations are judged on: the lag reported before the first fault on
/// the final owner's copy, each copy's last state, and the events of resyncs that discarded
/// writes at sites that acknowledged a lost write.
fn volume_observed(
    rec: &Recording,
    end: &EndState,
    scenario: &Scenario,
    lost: Option<u64>,
) -> replicas::Observed {
    let Some(_) = scenario.service().volume else {
        return replicas::Observed::default();
    };
    let volume = volume_name(&scenario.service().name);
    // The fault that moved the primary: the last one before the final owner's copy was
    // first seen as the primary (e.g. not a witness lost and restarted earlier).
    let faults = rec.times_of(MarkerKind::Fault);
    let lag_bound = end.final_owner.as_deref().and_then(|owner| {
        let promoted = rec
            .replicas
            .iter()
            .find(|s| s.t > faults.first().copied().unwrap_or(f64::INFINITY) && s.primary == owner)
            .map_or(f64::INFINITY, |s| s.t);
        let fault = faults.iter().rev().find(|t| **t < promoted).copied()?;
        replicas::lag_before(&rec.replicas, &rec.probes, fault, owner)
    });
    let lost_seqs: BTreeSet<u64> = end
        .held
        .as_ref()
        .map(|h| rec.acked.difference(h).copied().collect())
        .unwrap_or_default();
    let divergence = replicas::sites_that_acked(&rec.probes, &lost_seqs)
        .into_iter()
        .map(|site| {
            let event =
                replicas::divergence_event(&end.events, &volume, &site).map(|e| e.message.clone());
            (site, event)
        })
        .collect();
    let copy_ends = scenario
        .expect
        .in_sync_at_end
        .iter()
        .map(|site| (site.clone(), replicas::copy_end(&rec.replicas, site)))
        .collect();
    replicas::Observed {
        lost,
        lag_bound,
        copy_ends,
        divergence,
    }
}

#[cfg(test)]
mod tests;
