//! What a drill saw while it ran: probe samples, markers (faults, heals, operations, waits),
//! changes of the owner and of DNS answers, acknowledged writes and failed steps.
//!
//! Invariant: plain data, appended in drill time; it records only changes of the owner and of
//! each vantage's DNS answer, and hands out each write sequence number once.
//!
//! It does no I/O and draws no conclusions: the probers and the owner watch fill it,
//! [`super::measures`] reads it.

use std::collections::{BTreeMap, BTreeSet};

use crate::checks::invariants::DirectSample;
use crate::checks::replicas::ReplicaSample;
use crate::probe;
use crate::report::{DnsChange, Marker, MarkerKind, OwnerChange, ProbeSample};

/// Everything a drill recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub probes: Vec<ProbeSample>,
    pub markers: Vec<Marker>,
    pub owners: Vec<OwnerChange>,
    pub dns: Vec<DnsChange>,
    /// Sequence numbers of writes the service acknowledged.
    pub acked: BTreeSet<u64>,
    pub step_failures: Vec<String>,
    /// Answers to direct probes of every instance address (`probes.direct`).
    pub direct: Vec<DirectSample>,
    /// Rounds of direct probes sent.
    pub direct_rounds: u64,
    /// The service's volume as the fabric reported it, every probe interval.
    pub replicas: Vec<ReplicaSample>,
    /// Last DNS answer per vantage, to record only changes.
    last_dns: BTreeMap<String, Vec<String>>,
    /// The last write sequence number handed out.
    last_seq: u64,
}

impl Recording {
    pub fn mark(&mut self, t: f64, kind: MarkerKind, label: String) {
        self.markers.push(Marker { t, kind, label });
    }

    /// The next write sequence number (1, 2, …), unique within the drill.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// A probe from `vantage` whose deciding attempt started at `t` (drill seconds).
    pub fn probe(&mut self, vantage: &str, t: f64, out: &probe::Outcome) {
        let label = out.dns.label();
        if self.last_dns.get(vantage) != Some(&label) {
            self.last_dns.insert(vantage.to_string(), label.clone());
            self.dns.push(DnsChange {
                t,
                vantage: vantage.to_string(),
                answer: label,
            });
        }
        if let Some(seq) = out.acked_write {
            self.acked.insert(seq);
        }
        let (served_by, host, epoch, error) = match &out.whoami {
            Ok(me) => (Some(me.site.clone()), Some(me.host), Some(me.epoch), None),
            Err(e) => (None, None, None, Some(e.clone())),
        };
        self.probes.push(ProbeSample {
            t,
            vantage: vantage.to_string(),
            ok: out.whoami.is_ok(),
            served_by,
            host,
            epoch,
            write_seq: out.acked_write,
            latency_ms: Some(out.latency.as_secs_f64() * 1000.0),
            error,
        });
    }

    /// One round of direct probes: the answers it got.
    pub fn direct_round(&mut self, answers: impl IntoIterator<Item = DirectSample>) {
        self.direct_rounds += 1;
        self.direct.extend(answers);
    }

    /// The owner and epoch seen at `t`; recorded only when they changed.
    pub fn owner(&mut self, t: f64, site: Option<String>, epoch: u64) {
        if self
            .owners
            .last()
            .is_some_and(|o| o.site == site && o.epoch == epoch)
        {
            return;
        }
        self.owners.push(OwnerChange { t, site, epoch });
    }

    /// Times of the markers of `kind`.
    pub fn times_of(&self, kind: MarkerKind) -> Vec<f64> {
        self.markers
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.t)
            .collect()
    }

    /// The latest probe of every one of `vantages` started at or after `since` and satisfies
    /// `f`; false without vantages.
    pub fn latest_probes(
        &self,
        vantages: &[String],
        since: f64,
        f: impl Fn(&ProbeSample) -> bool,
    ) -> bool {
        !vantages.is_empty()
            && vantages.iter().all(|v| {
                self.probes
                    .iter()
                    .rev()
                    .find(|p| &p.vantage == v)
                    .is_some_and(|p| p.t >= since && f(p))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::probe::{DnsAnswer, Whoami};

    fn outcome(site: Option<&str>, acked: Option<u64>) -> probe::Outcome {
        probe::Outcome {
            dns: DnsAnswer::Code("NXDOMAIN".into()),
            whoami: site
                .map(|s| Whoami {
                    service: "web".into(),
                    site: s.into(),
                    host: 1,
                    epoch: 1,
                })
                .ok_or_else(|| "DNS: NXDOMAIN".to_string()),
            acked_write: acked,
            started: Instant::now(),
            latency: Duration::from_millis(5),
        }
    }

    #[test]
    fn sequence_numbers_are_handed_out_once_per_drill() {
        let (mut a, mut b) = (Recording::default(), Recording::default());
        assert_eq!([a.next_seq(), a.next_seq(), a.next_seq()], [1, 2, 3]);
        assert_eq!(b.next_seq(), 1, "a new drill starts again at 1");
    }

    #[test]
    fn only_changes_of_owner_and_dns_answer_are_recorded() {
        let mut r = Recording::default();
        r.owner(0.0, Some("s1".into()), 1);
        r.owner(1.0, Some("s1".into()), 1);
        r.owner(2.0, Some("s2".into()), 2);
        assert_eq!(r.owners.len(), 2);
        r.probe("s1", 0.0, &outcome(Some("s1"), Some(1)));
        r.probe("s1", 0.3, &outcome(None, None));
        r.probe("s2", 0.3, &outcome(None, None));
        assert_eq!(
            r.dns.len(),
            2,
            "one per vantage while the answer stays the same"
        );
        assert_eq!(r.acked, BTreeSet::from([1]));
        assert_eq!(r.probes.len(), 3);
        assert_eq!(r.probes[1].error.as_deref(), Some("DNS: NXDOMAIN"));
    }

    #[test]
    fn latest_probes_looks_only_at_each_vantages_last_probe_since_a_time() {
        let mut r = Recording::default();
        r.probe("s1", 1.0, &outcome(Some("s2"), None));
        r.probe("s2", 1.0, &outcome(None, None));
        let vantages = ["s1".to_string(), "s2".to_string()];
        assert!(!r.latest_probes(&vantages, 0.0, |p| p.ok));
        r.probe("s2", 2.0, &outcome(Some("s2"), None));
        assert!(r.latest_probes(&vantages, 0.5, |p| p.ok));
        assert!(
            !r.latest_probes(&vantages, 1.5, |p| p.ok),
            "s1's probe is too old"
        );
        assert!(!r.latest_probes(&[], 0.0, |_| true));
    }
}
