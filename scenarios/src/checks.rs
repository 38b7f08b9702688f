//! What a drill concludes from what it saw: split brain, RTO, RPO, and each expectation's
//! verdict with how far it missed.
//!
//! Invariant: pure functions over the recorded samples — the same recording always gives the
//! same verdicts, and every check can fail (tests feed recordings that must fail).

use std::collections::BTreeSet;

use crate::report::{ExpectationResult, ProbeSample};
use crate::scenario::Expect;

pub mod invariants;
pub mod replicas;

/// A probe answer as the checks need it: when the request was sent and answered (seconds since
/// the drill started) and who served it.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub sent: f64,
    pub answered: f64,
    pub site: String,
    pub host: u64,
    pub epoch: u64,
}

/// The successful probes of a recording.
pub fn served(samples: &[ProbeSample]) -> Vec<Served> {
    samples
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| {
            Some(Served {
                sent: s.t,
                answered: s.t + s.latency_ms.unwrap_or(0.0) / 1000.0,
                site: s.served_by.clone()?,
                host: s.host?,
                epoch: s.epoch?,
            })
        })
        .collect()
}

/// Two sites live at once: a request *sent* after another was *answered* by epoch `e` got an
/// answer from an older epoch — so the older owner still served after the newer one did.
/// Returns a description of the first such pair.
pub fn split_brain(served: &[Served]) -> Option<String> {
    let mut by_answer: Vec<&Served> = served.iter().collect();
    by_answer.sort_by(|a, b| a.answered.total_cmp(&b.answered));
    let mut newest: Option<&Served> = None;
    // Walk requests by send time; `newest` is the highest epoch answered before this send.
    let mut by_send: Vec<&Served> = served.iter().collect();
    by_send.sort_by(|a, b| a.sent.total_cmp(&b.sent));
    let mut i = 0;
    for s in by_send {
        while i < by_answer.len() && by_answer[i].answered < s.sent {
            if newest.is_none_or(|n| by_answer[i].epoch > n.epoch) {
                newest = Some(by_answer[i]);
            }
            i += 1;
        }
        if let Some(n) = newest
            && s.epoch < n.epoch
        {
            return Some(format!(
                "at {:.2} s site {} (epoch {}) answered a request sent after site {} (epoch {}) had answered at {:.2} s",
                s.answered, s.site, s.epoch, n.site, n.epoch, n.answered
            ));
        }
    }
    None
}

/// Seconds from the fault that caused the recovery to the first successful probe served by
/// another instance (site, host or epoch) than the one serving before the first fault. The
/// cause is the latest fault at or before the first failed probe of the outage (or, when no
/// probe failed, the latest fault before the new instance answered). `None` when nothing else
/// ever served.
pub fn rto(served: &[Served], faults: &[f64], failures: &[f64]) -> Option<f64> {
    let first = faults.iter().copied().min_by(f64::total_cmp)?;
    let before = served
        .iter()
        .filter(|s| s.sent < first)
        .max_by(|a, b| a.answered.total_cmp(&b.answered))
        .map(|s| (s.site.clone(), s.host, s.epoch));
    let new = served
        .iter()
        .filter(|s| s.sent >= first)
        .filter(|s| before.as_ref() != Some(&(s.site.clone(), s.host, s.epoch)))
        .min_by(|a, b| a.answered.total_cmp(&b.answered))?;
    let outage = failures
        .iter()
        .copied()
        .filter(|t| *t >= first && *t <= new.sent)
        .min_by(f64::total_cmp)
        .unwrap_or(new.sent);
    let cause = faults
        .iter()
        .copied()
        .filter(|t| *t <= outage)
        .max_by(f64::total_cmp)
        .unwrap_or(first);
    Some(new.answered - cause)
}

/// Acknowledged writes the final owner does not hold.
pub fn lost_writes(acked: &BTreeSet<u64>, held: &BTreeSet<u64>) -> u64 {
    acked.difference(held).count() as u64
}

/// Everything the expectations are checked against.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub rto: Option<f64>,
    pub lost_writes: Option<u64>,
    pub split_brain: Option<String>,
    pub final_owner: Option<String>,
    /// Sites whose instances the DNS servers answered with at the end (one entry per server;
    /// `None` for an answer that matched no site).
    pub dns_final: Vec<(String, Option<String>)>,
    pub failed_probes: u64,
    /// Changes of the owning site seen during the drill.
    pub owner_changes: u64,
    /// Steps that did not complete (e.g. a `wait_until` that timed out).
    pub step_failures: Vec<String>,
    /// What the chaos invariants are judged on.
    pub invariants: invariants::Observed,
    /// What the volume expectations are judged on.
    pub replicas: replicas::Observed,
}

/// Checks each expectation.
pub fn evaluate(expect: &Expect, m: &Measured) -> Vec<ExpectationResult> {
    let mut out = Vec::new();
    if let Some(max) = expect.rto_max {
        let max = max.as_secs_f64();
        out.push(match m.rto {
            Some(rto) => ExpectationResult {
                name: "rto_max".into(),
                expected: format!("≤ {max:.3} s"),
                measured: format!("{rto:.3} s"),
                pass: rto <= max,
                detail: if rto <= max {
                    format!("{:.3} s to spare", max - rto)
                } else {
                    format!("over by {:.3} s", rto - max)
                },
            },
            None => ExpectationResult {
                name: "rto_max".into(),
                expected: format!("≤ {max:.3} s"),
                measured: "no recovery seen".into(),
                pass: false,
                detail: "no probe was ever served by a new instance after the fault".into(),
            },
        });
    }
    if let Some(max) = expect.rpo_max_writes {
        out.push(match m.lost_writes {
            Some(lost) => ExpectationResult {
                name: "rpo_max_writes".into(),
                expected: format!("≤ {max} writes"),
                measured: format!("{lost} writes lost"),
                pass: lost <= max,
                detail: if lost <= max {
                    "every other acknowledged write is held by the final owner".into()
                } else {
                    format!("{} more than allowed", lost - max)
                },
            },
            None => ExpectationResult {
                name: "rpo_max_writes".into(),
                expected: format!("≤ {max} writes"),
                measured: "unknown".into(),
                pass: false,
                detail: "the final owner's records could not be read".into(),
            },
        });
    }
    if expect.no_split_brain {
        out.push(ExpectationResult {
            name: "no_split_brain".into(),
            expected: "one live site at a time, epochs only go up".into(),
            measured: if m.split_brain.is_some() {
                "split brain".into()
            } else {
                "held".into()
            },
            pass: m.split_brain.is_none(),
            detail: m.split_brain.clone().unwrap_or_default(),
        });
    }
    if let Some(site) = &expect.final_owner {
        let got = m.final_owner.clone().unwrap_or_else(|| "(none)".into());
        out.push(ExpectationResult {
            name: "final_owner".into(),
            expected: site.clone(),
            measured: got.clone(),
            pass: &got == site,
            detail: String::new(),
        });
    }
    if let Some(site) = &expect.dns_answers {
        let wrong: Vec<String> = m
            .dns_final
            .iter()
            .filter(|(_, s)| s.as_ref() != Some(site))
            .map(|(server, s)| format!("{server} → {}", s.as_deref().unwrap_or("other")))
            .collect();
        out.push(ExpectationResult {
            name: "dns_answers".into(),
            expected: format!("every DNS server answers with site {site}"),
            measured: format!(
                "{} of {} servers",
                m.dns_final.len() - wrong.len(),
                m.dns_final.len()
            ),
            pass: wrong.is_empty() && !m.dns_final.is_empty(),
            detail: if m.dns_final.is_empty() {
                "no DNS server answered".into()
            } else {
                wrong.join(", ")
            },
        });
    }
    if let Some(max) = expect.max_failed_probes {
        out.push(ExpectationResult {
            name: "max_failed_probes".into(),
            expected: format!("≤ {max}"),
            measured: m.failed_probes.to_string(),
            pass: m.failed_probes <= max,
            detail: if m.failed_probes <= max {
                String::new()
            } else {
                format!("{} too many", m.failed_probes - max)
            },
        });
    }
    if let Some(max) = expect.max_owner_changes {
        out.push(ExpectationResult {
            name: "max_owner_changes".into(),
            expected: format!("≤ {max}"),
            measured: m.owner_changes.to_string(),
            pass: m.owner_changes <= max,
            detail: if m.owner_changes <= max {
                String::new()
            } else {
                format!(
                    "the service moved {} times more than allowed",
                    m.owner_changes - max
                )
            },
        });
    }
    out.extend(invariants::evaluate(expect, &m.invariants));
    out.extend(replicas::evaluate(expect, &m.replicas));
    for f in &m.step_failures {
        out.push(ExpectationResult {
            name: "timeline".into(),
            expected: "every step completes".into(),
            measured: "a step failed".into(),
            pass: false,
            detail: f.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sent: f64, site: &str, host: u64, epoch: u64) -> Served {
        Served {
            sent,
            answered: sent + 0.01,
            site: site.into(),
            host,
            epoch,
        }
    }

    #[test]
    fn an_older_epoch_answering_after_a_newer_one_is_split_brain() {
        let ok = vec![
            s(0.0, "s1", 1, 1),
            s(1.0, "s1", 1, 1),
            s(5.0, "s2", 3, 2),
            s(6.0, "s2", 3, 2),
        ];
        assert_eq!(split_brain(&ok), None);
        let mut bad = ok.clone();
        bad.push(s(5.5, "s1", 1, 1));
        let found = split_brain(&bad).expect("split brain");
        assert!(found.contains("site s1 (epoch 1)"), "{found}");
    }

    #[test]
    fn overlapping_requests_around_a_switch_are_not_split_brain() {
        // Sent before the new owner answered, answered after: in flight during the switch.
        let mut slow = s(4.9, "s1", 1, 1);
        slow.answered = 5.2;
        let ok = vec![s(0.0, "s1", 1, 1), slow, s(5.0, "s2", 3, 2)];
        assert_eq!(split_brain(&ok), None);
    }

    #[test]
    fn rto_runs_from_the_fault_to_the_first_answer_of_another_instance() {
        let served = vec![
            s(0.0, "s1", 1, 1),
            s(9.5, "s1", 1, 1),
            s(10.5, "s1", 1, 1),
            s(17.0, "s1", 2, 1),
        ];
        let rto = rto(&served, &[10.0], &[11.0, 12.0]).expect("rto");
        assert!((rto - 7.01).abs() < 1e-9, "{rto}");
        assert_eq!(super::rto(&served[..3], &[10.0], &[]), None);
    }

    #[test]
    fn rto_counts_from_the_fault_that_caused_the_outage() {
        // A harmless fault at 2 s (a witness), the real one at 8 s, recovery at 15 s.
        let served = vec![s(1.0, "s1", 1, 1), s(7.0, "s1", 1, 1), s(15.0, "s2", 3, 2)];
        let rto = rto(&served, &[2.0, 8.0], &[8.5, 10.0]).expect("rto");
        assert!((rto - 7.01).abs() < 1e-9, "{rto}");
    }

    #[test]
    fn an_impossible_rto_fails_and_says_by_how_much() {
        let expect = Expect {
            rto_max: Some(std::time::Duration::from_millis(1)),
            ..Expect::default()
        };
        let m = Measured {
            rto: Some(7.5),
            ..Measured::default()
        };
        let r = evaluate(&expect, &m);
        let rto = r.iter().find(|e| e.name == "rto_max").expect("rto checked");
        assert!(!rto.pass);
        assert_eq!(rto.detail, "over by 7.499 s");
    }

    #[test]
    fn lost_writes_are_the_acknowledged_ones_missing() {
        let acked: BTreeSet<u64> = (1..=10).collect();
        let held: BTreeSet<u64> = (1..=7).chain([42]).collect();
        assert_eq!(lost_writes(&acked, &held), 3);
    }

    #[test]
    fn dns_expectation_fails_when_any_server_disagrees_or_none_answered() {
        let expect = Expect {
            dns_answers: Some("s2".into()),
            ..Expect::default()
        };
        let mut m = Measured {
            dns_final: vec![("a".into(), Some("s2".into())), ("b".into(), None)],
            ..Measured::default()
        };
        let r = evaluate(&expect, &m);
        assert!(
            !r.iter()
                .find(|e| e.name == "dns_answers")
                .expect("dns")
                .pass
        );
        m.dns_final.clear();
        let r = evaluate(&expect, &m);
        assert!(
            !r.iter()
                .find(|e| e.name == "dns_answers")
                .expect("dns")
                .pass
        );
    }
}
