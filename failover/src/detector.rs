//! Failure detector of one observer: interval × threshold over heartbeat answers.
//!
//! The agent pings every other agent each `interval` on the control stream and feeds the
//! answers in with [`Detector::handle_heartbeat`]; [`Detector::tick`] returns the verdicts that
//! changed. A subject is down once nothing was heard from it for `interval × threshold`.
//!
//! Invariant: the observer's own pauses are not blamed on others. If the observer itself was
//! not running for longer than the window (frozen, swapped out, suspended), every subject gets a
//! fresh window instead of being declared down at once.
//!
//! It does not decide whether a host or a site is down: one observer's verdict is one vote,
//! counted by [`crate::quorum`]. Subjects are agents by default; [`crate::sitewatch`] watches
//! whole sites with it (any agent of the site answering counts).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use consensus::NodeId;

/// Parameters of the detector (from the agent's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How often subjects are pinged.
    pub interval: Duration,
    /// Missed intervals before a subject is declared down.
    pub threshold: u32,
}

impl DetectorConfig {
    /// Silence after which a subject is down.
    pub fn window(&self) -> Duration {
        self.interval.saturating_mul(self.threshold.max(1))
    }
}

/// A verdict that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictChange<K = NodeId> {
    pub subject: K,
    pub up: bool,
}

#[derive(Debug, Clone, Copy)]
struct Subject {
    last_heard: Instant,
    up: bool,
}

#[derive(Debug)]
pub struct Detector<K = NodeId> {
    config: DetectorConfig,
    subjects: BTreeMap<K, Subject>,
    last_tick: Option<Instant>,
}

impl<K: Ord + Clone> Detector<K> {
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            subjects: BTreeMap::new(),
            last_tick: None,
        }
    }

    pub fn config(&self) -> DetectorConfig {
        self.config
    }

    /// Sets who is watched. New subjects start up with a full window; subjects no longer listed
    /// are forgotten.
    pub fn set_subjects(&mut self, ids: impl IntoIterator<Item = K>, now: Instant) {
        let wanted: BTreeMap<K, ()> = ids.into_iter().map(|id| (id, ())).collect();
        self.subjects.retain(|id, _| wanted.contains_key(id));
        for id in wanted.into_keys() {
            self.subjects.entry(id).or_insert(Subject {
                last_heard: now,
                up: true,
            });
        }
    }

    pub fn subjects(&self) -> impl Iterator<Item = &K> + '_ {
        self.subjects.keys()
    }

    /// An answer from `from` arrived at `now`. Returns the change if it was down.
    pub fn handle_heartbeat(&mut self, from: K, now: Instant) -> Option<VerdictChange<K>> {
        let s = self.subjects.get_mut(&from)?;
        s.last_heard = s.last_heard.max(now);
        if s.up {
            return None;
        }
        s.up = true;
        Some(VerdictChange {
            subject: from,
            up: true,
        })
    }

    /// Declares down every subject silent for longer than the window.
    pub fn tick(&mut self, now: Instant) -> Vec<VerdictChange<K>> {
        let window = self.config.window();
        let paused = self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) > window);
        self.last_tick = Some(now);
        if paused {
            // We were not running: what we did not hear says nothing about them.
            for s in self.subjects.values_mut() {
                s.last_heard = s.last_heard.max(now);
            }
            return Vec::new();
        }
        let mut changes = Vec::new();
        for (id, s) in &mut self.subjects {
            if s.up && now.saturating_duration_since(s.last_heard) > window {
                s.up = false;
                changes.push(VerdictChange {
                    subject: id.clone(),
                    up: false,
                });
            }
        }
        changes
    }

    /// Current verdict on `subject` (`None` when not watched).
    pub fn is_up(&self, subject: &K) -> Option<bool> {
        self.subjects.get(subject).map(|s| s.up)
    }

    pub fn verdicts(&self) -> impl Iterator<Item = (&K, bool)> + '_ {
        self.subjects.iter().map(|(id, s)| (id, s.up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn detector(t0: Instant) -> Detector {
        let mut d = Detector::new(DetectorConfig {
            interval: 100 * MS,
            threshold: 3,
        });
        d.set_subjects([2, 3], t0);
        d
    }

    /// Ticks every interval from `from` to `to`, hearing from `alive` each time.
    fn run(d: &mut Detector, from: Instant, to: Instant, alive: &[NodeId]) -> Vec<VerdictChange> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            for a in alive {
                out.extend(d.handle_heartbeat(*a, t));
            }
            out.extend(d.tick(t));
            t += 100 * MS;
        }
        out
    }

    #[test]
    fn silent_subject_is_down_only_after_interval_times_threshold() {
        let t0 = Instant::now();
        let mut d = detector(t0);
        assert!(run(&mut d, t0, t0 + 300 * MS, &[3]).is_empty());
        let changes = run(&mut d, t0 + 400 * MS, t0 + 400 * MS, &[3]);
        assert_eq!(
            changes,
            vec![VerdictChange {
                subject: 2,
                up: false
            }]
        );
        assert_eq!(d.is_up(&3), Some(true));
    }

    #[test]
    fn verdict_changes_are_reported_once() {
        let t0 = Instant::now();
        let mut d = detector(t0);
        let down = run(&mut d, t0, t0 + 1000 * MS, &[3]);
        assert_eq!(down.len(), 1);
        let back = run(&mut d, t0 + 1100 * MS, t0 + 1500 * MS, &[2, 3]);
        assert_eq!(
            back,
            vec![VerdictChange {
                subject: 2,
                up: true
            }]
        );
    }

    #[test]
    fn observer_pause_does_not_fail_everyone() {
        let t0 = Instant::now();
        let mut d = detector(t0);
        run(&mut d, t0, t0 + 200 * MS, &[2, 3]);
        // Frozen for 5 s: the next tick must not declare anyone down...
        assert!(d.tick(t0 + 5200 * MS).is_empty());
        // ...but silence after the pause still counts.
        let changes = run(&mut d, t0 + 5300 * MS, t0 + 5600 * MS, &[3]);
        assert_eq!(
            changes,
            vec![VerdictChange {
                subject: 2,
                up: false
            }]
        );
    }

    #[test]
    fn new_subjects_get_a_full_window() {
        let t0 = Instant::now();
        let mut d = detector(t0);
        run(&mut d, t0, t0 + 200 * MS, &[2, 3]);
        d.set_subjects([2, 3, 4], t0 + 250 * MS);
        assert!(run(&mut d, t0 + 300 * MS, t0 + 500 * MS, &[2, 3]).is_empty());
        d.set_subjects([2], t0 + 600 * MS);
        assert_eq!(d.is_up(&3), None);
    }
}
