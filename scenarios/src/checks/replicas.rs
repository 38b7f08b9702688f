//! What the drill learns about the service's volume from the fabric's own view
//! (`GET /v1/volumes`, sampled every probe interval): each copy's state over time, the lag the
//! fabric reported just before a fault, and whether that report covers what the fault lost;
//! whether a copy ended in sync, and whether writes discarded by a resync were listed.
//!
//! Invariant: pure functions over samples and the event log, like the rest of [`super`]; a
//! sample is the fabric's claim, the probes' acknowledged writes are the truth it is held to.
//!
//! It does not fetch anything; the runner's volume watch fills [`ReplicaSample`]s.

use std::collections::BTreeSet;
use std::fmt;

use consensus::state::{CopyState, ReplicationMode};
use serde::{Deserialize, Serialize};
use siteagent::api::{EventView, VolumeView};

use crate::report::{ExpectationResult, ProbeSample};
use crate::scenario::Expect;

/// One look at the volume: every copy's state and lag, at drill time `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSample {
    pub t: f64,
    pub primary: String,
    pub copies: Vec<CopySample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopySample {
    pub site: String,
    pub mode: ReplicationMode,
    pub state: CopyState,
    /// Acknowledged writes (NBD write requests) the copy lacks, as the primary reported.
    pub lag_writes: u64,
    /// When the primary made that report, drill seconds (`None`: never reported).
    pub reported_t: Option<f64>,
}

impl ReplicaSample {
    /// `v` seen at drill time `t`; the drill started at Unix ms `started_unix_ms`.
    pub fn of(t: f64, v: &VolumeView, started_unix_ms: u64) -> Self {
        Self {
            t,
            primary: v.primary.clone(),
            copies: v
                .copies
                .iter()
                .map(|c| CopySample {
                    site: c.site.clone(),
                    mode: c.mode,
                    state: c.state,
                    lag_writes: c.lag.writes,
                    reported_t: (c.reported_ms > 0)
                        .then(|| (c.reported_ms as f64 - started_unix_ms as f64) / 1000.0),
                })
                .collect(),
        }
    }

    fn copy(&self, site: &str) -> Option<&CopySample> {
        self.copies.iter().find(|c| c.site == site)
    }
}

/// A copy's state changed (or was first seen), for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaChange {
    /// Seconds since the drill started.
    pub t: f64,
    pub site: String,
    /// `primary`, `in-sync`, `lagging`, `resyncing`, `outdated`, `unknown`.
    pub state: String,
}

/// The changes of each copy's state over `samples` (in time order).
pub fn changes(samples: &[ReplicaSample]) -> Vec<ReplicaChange> {
    let mut last: Vec<(String, CopyState)> = Vec::new();
    let mut out = Vec::new();
    for s in samples {
        for c in &s.copies {
            match last.iter_mut().find(|(site, _)| site == &c.site) {
                Some((_, state)) if *state == c.state => continue,
                Some((_, state)) => *state = c.state,
                None => last.push((c.site.clone(), c.state)),
            }
            out.push(ReplicaChange {
                t: s.t,
                site: c.site.clone(),
                state: c.state.to_string(),
            });
        }
    }
    out
}

/// The bound on lost writes the fabric's last report before a fault gives.
#[derive(Debug, Clone, PartialEq)]
pub struct LagBound {
    /// When the primary made the report (drill seconds), and the fault.
    pub reported_t: f64,
    pub fault_t: f64,
    /// The site whose copy is judged (the final owner's).
    pub site: String,
    /// Writes the copy lacked then, as reported.
    pub lag_writes: u64,
    /// Writes the probes saw acknowledged after the report was made: it cannot know of them
    /// (they include every write the old primary acknowledged after the fault).
    pub acked_after: u64,
    /// When the sample was taken, and the old primary's writes acknowledged after it: what the
    /// bound would be if the primary re-reported an unchanged view at every sample.
    pub sample_t: f64,
    pub acked_after_sample: u64,
}

impl LagBound {
    pub fn bound(&self) -> u64 {
        self.lag_writes + self.acked_after
    }
}

/// The copy at `site` as the last sample before `fault_t` reported it (while another site
/// was primary), and the writes that primary acknowledged after the report was made. The
/// report's time is the primary's (`reported_ms`), not the sample's: the view may repeat an
/// older report. Writes the new primary acknowledged are not at risk and not counted.
pub fn lag_before(
    samples: &[ReplicaSample],
    probes: &[ProbeSample],
    fault_t: f64,
    site: &str,
) -> Option<LagBound> {
    let (t, primary, copy) = samples
        .iter()
        .filter(|s| s.t < fault_t && s.primary != site)
        .filter_map(|s| s.copy(site).map(|c| (s.t, &s.primary, c)))
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    let reported_t = copy.reported_t.unwrap_or(t).min(t);
    let acked_since = |since: f64| {
        probes
            .iter()
            .filter(|p| p.write_seq.is_some() && p.served_by.as_ref() == Some(primary))
            .filter(|p| p.t + p.latency_ms.unwrap_or(0.0) / 1000.0 >= since)
            .count() as u64
    };
    let acked_after = acked_since(reported_t);
    Some(LagBound {
        reported_t,
        fault_t,
        site: site.to_string(),
        lag_writes: copy.lag_writes,
        acked_after,
        sample_t: t,
        acked_after_sample: acked_since(t),
    })
}

/// Whether the copies are ready for a drill's faults: every sync copy in sync, every async
/// copy in sync or merely lagging (not unknown, outdated or resyncing). The first copy that
/// is not, described, else `None`.
pub fn not_ready(v: &VolumeView) -> Option<String> {
    v.copies.iter().find_map(|c| {
        let ready = matches!(
            (c.state, c.mode),
            (CopyState::Primary | CopyState::InSync, _)
                | (CopyState::Lagging, ReplicationMode::Async)
        );
        (!ready).then(|| format!("the {} copy at {} is {}", c.mode, c.site, c.state))
    })
}

/// How the copy at `site` ended: its last state and mode, and when it was last in sync
/// after its last unknown, outdated or resyncing state (drill seconds). An async copy under
/// steady writes flips between in sync and lagging; one whose resync finished and that was in
/// sync since has caught up.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyEnd {
    pub state: CopyState,
    pub mode: ReplicationMode,
    pub in_sync_since_resync: Option<f64>,
}

impl CopyEnd {
    /// In sync now, or an async copy that caught up since its resync and at most lags.
    pub fn caught_up(&self) -> bool {
        match self.state {
            CopyState::InSync => true,
            CopyState::Lagging => {
                self.mode == ReplicationMode::Async && self.in_sync_since_resync.is_some()
            }
            _ => false,
        }
    }
}

impl fmt::Display for CopyEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.state, self.mode)?;
        match self.in_sync_since_resync {
            Some(t) => write!(f, ", in sync at {t:.1} s after its last resync"),
            None => write!(f, ", not in sync since its last resync"),
        }
    }
}

/// How the copy at `site` ended, from the samples (in time order).
pub fn copy_end(samples: &[ReplicaSample], site: &str) -> Option<CopyEnd> {
    let mut end: Option<CopyEnd> = None;
    for s in samples {
        let Some(c) = s.copy(site) else { continue };
        let since = match c.state {
            CopyState::InSync => end
                .as_ref()
                .and_then(|e| e.in_sync_since_resync)
                .or(Some(s.t)),
            CopyState::Lagging | CopyState::Primary => {
                end.as_ref().and_then(|e| e.in_sync_since_resync)
            }
            CopyState::Unknown | CopyState::Outdated | CopyState::Resyncing => None,
        };
        end = Some(CopyEnd {
            state: c.state,
            mode: c.mode,
            in_sync_since_resync: since,
        });
    }
    end
}

/// Sites whose instances acknowledged a write that is `lost` (missing from the final owner).
pub fn sites_that_acked(probes: &[ProbeSample], lost: &BTreeSet<u64>) -> BTreeSet<String> {
    probes
        .iter()
        .filter(|p| p.write_seq.is_some_and(|s| lost.contains(&s)))
        .filter_map(|p| p.served_by.clone())
        .collect()
}

/// The agent's event listing the writes a resync of the copy at `site` of `volume` discarded.
pub fn divergence_event<'a>(
    events: &'a [EventView],
    volume: &str,
    site: &str,
) -> Option<&'a EventView> {
    let prefix = format!("volume {volume}: the copy at {site} held ");
    events.iter().find(|e| e.message.starts_with(&prefix))
}

/// What the volume expectations are judged on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Acknowledged writes missing from the final owner.
    pub lost: Option<u64>,
    /// The fabric's report before the first fault on the final owner's copy.
    pub lag_bound: Option<LagBound>,
    /// Each site asked about and how its copy ended.
    pub copy_ends: Vec<(String, Option<CopyEnd>)>,
    /// Each site whose instance acknowledged a lost write, and the event listing what its
    /// resync discarded (`None`: no such event).
    pub divergence: Vec<(String, Option<String>)>,
}

/// The verdicts of the volume expectations `expect` asks for.
pub fn evaluate(expect: &Expect, m: &Observed) -> Vec<ExpectationResult> {
    let mut out = Vec::new();
    if expect.rpo_within_reported_lag {
        out.push(match (m.lost, &m.lag_bound) {
            (Some(lost), Some(b)) => ExpectationResult {
                name: "rpo_within_reported_lag".into(),
                expected: format!(
                    "≤ {} writes ({} lagging as {}'s copy was reported at {:.2} s + {} acknowledged after)",
                    b.bound(),
                    b.lag_writes,
                    b.site,
                    b.reported_t,
                    b.acked_after
                ),
                measured: format!("{lost} writes lost"),
                pass: lost <= b.bound(),
                detail: if lost <= b.bound() {
                    format!("fault at {:.2} s", b.fault_t)
                } else {
                    format!(
                        "{} more writes lost than the fabric reported at risk",
                        lost - b.bound()
                    )
                },
            },
            (lost, bound) => ExpectationResult {
                name: "rpo_within_reported_lag".into(),
                expected: "lost writes ≤ the lag reported before the fault".into(),
                measured: "unknown".into(),
                pass: false,
                detail: match (lost, bound) {
                    (None, _) => "the final owner's records could not be read".into(),
                    _ => "no report of the final owner's copy before the first fault".into(),
                },
            },
        });
    }
    for site in &expect.in_sync_at_end {
        let end = m
            .copy_ends
            .iter()
            .find(|(s, _)| s == site)
            .and_then(|(_, e)| e.as_ref());
        out.push(ExpectationResult {
            name: "in_sync_at_end".into(),
            expected: format!(
                "the copy at {site} in sync (async: in sync since its resync, at most lagging)"
            ),
            measured: end.map_or("not reported".into(), |e| e.to_string()),
            pass: end.is_some_and(CopyEnd::caught_up),
            detail: String::new(),
        });
    }
    if expect.divergence_listed {
        let missing: Vec<&str> = m
            .divergence
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(s, _)| s.as_str())
            .collect();
        out.push(ExpectationResult {
            name: "divergence_listed".into(),
            expected: "every site that acknowledged a lost write lists what its resync discarded"
                .into(),
            measured: if m.divergence.is_empty() {
                "no write lost".into()
            } else {
                format!(
                    "{} of {} sites listed",
                    m.divergence.len() - missing.len(),
                    m.divergence.len()
                )
            },
            pass: missing.is_empty(),
            detail: if missing.is_empty() {
                m.divergence
                    .iter()
                    .filter_map(|(_, e)| e.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                format!("no event for the copy at {}", missing.join(", "))
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, primary: &str, copies: &[(&str, CopyState, u64)]) -> ReplicaSample {
        ReplicaSample {
            t,
            primary: primary.into(),
            copies: copies
                .iter()
                .map(|(site, state, lag)| CopySample {
                    site: (*site).into(),
                    mode: ReplicationMode::Async,
                    state: *state,
                    lag_writes: *lag,
                    reported_t: Some(t - 0.2),
                })
                .collect(),
        }
    }

    fn write(t: f64, seq: u64, site: &str) -> ProbeSample {
        ProbeSample {
            t,
            vantage: "s2".into(),
            ok: true,
            served_by: Some(site.into()),
            host: Some(1),
            epoch: Some(1),
            write_seq: Some(seq),
            latency_ms: Some(100.0),
            error: None,
        }
    }

    #[test]
    fn only_changes_of_each_copys_state_are_kept() {
        let s = [
            sample(
                0.0,
                "s1",
                &[("s1", CopyState::Primary, 0), ("s2", CopyState::Unknown, 0)],
            ),
            sample(
                0.5,
                "s1",
                &[("s1", CopyState::Primary, 0), ("s2", CopyState::InSync, 0)],
            ),
            sample(
                1.0,
                "s1",
                &[("s1", CopyState::Primary, 0), ("s2", CopyState::InSync, 3)],
            ),
            sample(
                1.5,
                "s2",
                &[
                    ("s1", CopyState::Outdated, 0),
                    ("s2", CopyState::Primary, 0),
                ],
            ),
        ];
        let c = changes(&s);
        let seen: Vec<(f64, &str, &str)> = c
            .iter()
            .map(|c| (c.t, c.site.as_str(), c.state.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (0.0, "s1", "primary"),
                (0.0, "s2", "unknown"),
                (0.5, "s2", "in-sync"),
                (1.5, "s1", "outdated"),
                (1.5, "s2", "primary"),
            ]
        );
    }

    #[test]
    fn the_bound_is_the_last_report_before_the_fault_plus_writes_acknowledged_after_it() {
        let s = [
            sample(1.0, "s1", &[("s2", CopyState::Lagging, 9)]),
            sample(2.0, "s1", &[("s2", CopyState::Lagging, 4)]),
            sample(3.5, "s2", &[("s2", CopyState::Primary, 0)]),
        ];
        // Reported at 1.8: the write sent at 1.5 was acknowledged at 1.6, before the report;
        // the one sent at 1.75 was acknowledged at 1.85, after it.
        let probes = [
            write(1.5, 1, "s1"),
            write(1.75, 2, "s1"),
            write(2.0, 3, "s1"),
            write(2.9, 4, "s1"),
            write(4.0, 5, "s2"),
        ];
        // The write s2 acknowledged as the new primary is not at risk.
        let b = lag_before(&s, &probes, 3.0, "s2").expect("a sample before the fault");
        assert!((b.reported_t - 1.8).abs() < 1e-9);
        assert_eq!((b.lag_writes, b.acked_after), (4, 3));
        assert_eq!((b.sample_t, b.acked_after_sample), (2.0, 2));
        assert_eq!(b.bound(), 7);
        assert_eq!(lag_before(&s, &probes, 0.5, "s2"), None, "no sample yet");
    }

    #[test]
    fn lost_writes_are_traced_to_the_site_that_acknowledged_them() {
        let probes = [write(1.0, 1, "s1"), write(2.0, 2, "s2")];
        assert_eq!(
            sites_that_acked(&probes, &BTreeSet::from([1])),
            BTreeSet::from(["s1".to_string()])
        );
        let events = [EventView {
            at_ms: 5,
            message: "volume web-data: the copy at s1 held 2 range(s), 8192 bytes, of writes the primary lacks; discarded by its resync: 0..4096, 8192..12288".into(),
            revision: 1,
            actor: "node 3".into(),
        }];
        assert!(divergence_event(&events, "web-data", "s1").is_some());
        assert!(divergence_event(&events, "web-data", "s3").is_none());
    }

    #[test]
    fn more_lost_than_reported_at_risk_fails_and_says_by_how_much() {
        let expect = Expect {
            rpo_within_reported_lag: true,
            in_sync_at_end: vec!["s1".into()],
            divergence_listed: true,
            ..Expect::default()
        };
        let bound = LagBound {
            reported_t: 4.8,
            fault_t: 5.0,
            site: "s2".into(),
            lag_writes: 2,
            acked_after: 1,
            sample_t: 4.9,
            acked_after_sample: 0,
        };
        let mut m = Observed {
            lost: Some(3),
            lag_bound: Some(bound),
            copy_ends: vec![(
                "s1".into(),
                Some(CopyEnd {
                    state: CopyState::Lagging,
                    mode: ReplicationMode::Async,
                    in_sync_since_resync: Some(4.0),
                }),
            )],
            divergence: vec![("s1".into(), Some("volume web-data: ...".into()))],
        };
        assert!(evaluate(&expect, &m).iter().all(|e| e.pass));
        m.lost = Some(5);
        m.copy_ends[0].1 = copy_end(
            &[
                sample(5.0, "s2", &[("s1", CopyState::InSync, 0)]),
                sample(6.0, "s2", &[("s1", CopyState::Resyncing, 0)]),
                sample(7.0, "s2", &[("s1", CopyState::Lagging, 2)]),
            ],
            "s1",
        );
        m.divergence[0].1 = None;
        let r = evaluate(&expect, &m);
        assert!(r.iter().all(|e| !e.pass), "{r:?}");
        assert!(r[0].detail.contains("2 more writes"), "{}", r[0].detail);
        assert_eq!(
            r[1].measured,
            "lagging (async), not in sync since its last resync"
        );
        assert!(r[2].detail.contains("copy at s1"), "{}", r[2].detail);
    }

    #[test]
    fn an_async_copy_has_caught_up_once_in_sync_after_its_resync_even_if_lagging_again() {
        let samples = [
            sample(1.0, "s2", &[("s1", CopyState::Outdated, 0)]),
            sample(2.0, "s2", &[("s1", CopyState::Resyncing, 0)]),
            sample(3.0, "s2", &[("s1", CopyState::InSync, 0)]),
            sample(4.0, "s2", &[("s1", CopyState::Lagging, 1)]),
        ];
        let end = copy_end(&samples, "s1").expect("reported");
        assert_eq!(end.in_sync_since_resync, Some(3.0));
        assert!(end.caught_up());
        let sync = CopyEnd {
            mode: ReplicationMode::Sync,
            ..end
        };
        assert!(!sync.caught_up(), "a lagging sync copy has not caught up");
        assert_eq!(copy_end(&samples, "s9"), None);
    }
}
