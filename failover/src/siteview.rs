//! Who writes a site's view of its own agents ([`consensus::state::SiteView`]) and when: the
//! site's reporter, so a host failure costs one replicated write however many agents noticed.
//!
//! Every agent of the site runs the same SWIM detector and, through its gossip, comes to the
//! same dead set — eventually: under loss some agents lag the reporter by seconds. The agent
//! with the lowest id among those alive in its own view (the reporter, rank 0) writes as soon
//! as its view differs from the recorded one. Only ranks 1 and 2 may ever take over, and only
//! when the difference has lasted [`TAKEOVER_STEPS`] steps (5 for rank 1, 10 for rank 2) with
//! the recorded view unchanged meanwhile: a recorded view that changes proves a reporter at
//! work, and a deputy that lags it must not write its outdated view over the reporter's (that
//! would be a false verdict and a write war). The reporter's death does not wait for a
//! deputy: once it is dead in a deputy's view, the deputy is rank 0 and writes at once. So a
//! reporter cut from the leader delays the write by 5 steps instead of losing it, and in a
//! healthy site exactly one agent writes.
//!
//! Invariant: an agent never writes a view that leaves itself dead (it is alive by definition;
//! a view it disagrees with about itself is refuted through SWIM, not through the state).
//!
//! It does not send anything: the shell proposes what [`ViewReporter::poll`] returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use consensus::NodeId;

/// How many steps the deputies of rank 1 and 2 wait before writing over a silent reporter;
/// agents of higher rank never write while they rank so.
pub const TAKEOVER_STEPS: [u32; 2] = [5, 10];

/// Decides when this agent writes its site's view.
#[derive(Debug, Clone)]
pub struct ViewReporter {
    me: NodeId,
    step: Duration,
    /// Since when this agent's view differs from the recorded one (reset when they agree).
    differs_since: Option<Instant>,
    /// The recorded view last seen (`None` before the first poll).
    seen: Option<BTreeSet<NodeId>>,
    /// When another agent last changed the recorded view (`None`: not since this agent
    /// started, or the last change was this agent's own write).
    changed_by_other_at: Option<Instant>,
    /// The last view this agent returned to be written.
    written: Option<BTreeSet<NodeId>>,
}

impl ViewReporter {
    /// `step`: how long the recorded view must stay unchanged by others before the reporter
    /// overwrites it, and the unit of the deputies' wait ([`TAKEOVER_STEPS`]).
    pub fn new(me: NodeId, step: Duration) -> Self {
        Self {
            me,
            step,
            differs_since: None,
            seen: None,
            changed_by_other_at: None,
            written: None,
        }
    }

    /// This agent's rank among the agents alive in its view (`alive`, itself excluded): 0 when
    /// it has the lowest id.
    pub fn rank(&self, alive: &BTreeSet<NodeId>) -> usize {
        alive.iter().filter(|id| **id < self.me).count()
    }

    /// The view to write now, if any: `mine` is the dead set of this agent's detector, `alive`
    /// the agents alive in its view (itself excluded), `recorded` the dead set the state holds.
    pub fn poll(
        &mut self,
        mine: &BTreeSet<NodeId>,
        alive: &BTreeSet<NodeId>,
        recorded: &BTreeSet<NodeId>,
        now: Instant,
    ) -> Option<BTreeSet<NodeId>> {
        if self.seen.as_ref() != Some(recorded) {
            let first = self.seen.is_none();
            let mine_written = self.written.as_ref() == Some(recorded);
            self.changed_by_other_at = (!first && !mine_written).then_some(now);
            self.seen = Some(recorded.clone());
        }
        let mut mine = mine.clone();
        mine.remove(&self.me);
        if &mine == recorded {
            self.differs_since = None;
            return None;
        }
        let differs_since = *self.differs_since.get_or_insert(now);
        // Another agent that just wrote is alive and believes what it wrote: two agents that
        // each think they are the reporter (one lagging the other's news) write once each per
        // step at most, until SWIM brings them to agree, instead of in a loop.
        let waited = |steps: u32| {
            let since = self
                .changed_by_other_at
                .map_or(differs_since, |c| c.max(differs_since));
            now.saturating_duration_since(since) >= self.step.saturating_mul(steps)
        };
        let ready = match self.rank(alive) {
            0 => self
                .changed_by_other_at
                .is_none_or(|c| now.saturating_duration_since(c) >= self.step),
            rank => TAKEOVER_STEPS
                .get(rank - 1)
                .is_some_and(|steps| waited(*steps)),
        };
        if !ready {
            return None;
        }
        self.written = Some(mine.clone());
        Some(mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_lowest_alive_agent_writes_at_once_and_nobody_writes_an_unchanged_view() {
        let t0 = Instant::now();
        let mut r = ViewReporter::new(1, S);
        assert_eq!(r.poll(&set(&[]), &set(&[2, 3]), &set(&[]), t0), None);
        assert_eq!(
            r.poll(&set(&[3]), &set(&[2]), &set(&[]), t0),
            Some(set(&[3]))
        );
        assert_eq!(r.poll(&set(&[3]), &set(&[2]), &set(&[3]), t0), None);
    }

    #[test]
    fn deputies_write_only_after_5_or_10_steps_and_higher_ranks_never() {
        let t0 = Instant::now();
        let (mine, recorded) = (set(&[1]), set(&[]));
        // Agent 3 with 1 dead: 2 is alive and lower, so 3 is of rank 1.
        let mut r = ViewReporter::new(3, S);
        let alive = set(&[2, 4]);
        assert_eq!(r.rank(&alive), 1);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0), None);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0 + 4 * S), None);
        assert_eq!(
            r.poll(&mine, &alive, &recorded, t0 + 5 * S),
            Some(set(&[1]))
        );
        // Rank 2 (agent 4 below 2 and 3) waits 10 steps.
        let mut r = ViewReporter::new(4, S);
        let alive = set(&[2, 3]);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0), None);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0 + 9 * S), None);
        assert_eq!(
            r.poll(&mine, &alive, &recorded, t0 + 10 * S),
            Some(set(&[1]))
        );
        // Rank 3 never writes.
        let mut r = ViewReporter::new(5, S);
        let alive = set(&[2, 3, 4]);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0), None);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0 + 1000 * S), None);
    }

    #[test]
    fn a_deputy_lagging_a_working_reporter_does_not_write_its_outdated_view() {
        let t0 = Instant::now();
        // Host 7 restarted: the reporter recorded it alive again, deputy 3 still has it dead.
        let mut r = ViewReporter::new(3, S);
        let alive = set(&[2]);
        assert_eq!(r.poll(&set(&[7]), &alive, &set(&[7]), t0), None);
        assert_eq!(r.poll(&set(&[7]), &alive, &set(&[]), t0 + S), None);
        // The reporter keeps writing (another host died): the deputy's wait starts again.
        assert_eq!(r.poll(&set(&[7]), &alive, &set(&[9]), t0 + 5 * S), None);
        assert_eq!(r.poll(&set(&[7]), &alive, &set(&[9]), t0 + 9 * S), None);
        // The deputy learns the restart before its wait is over: nothing to write.
        assert_eq!(r.poll(&set(&[9]), &alive, &set(&[9]), t0 + 9 * S), None);
        // A silent reporter is taken over after 5 unchanged steps.
        assert_eq!(r.poll(&set(&[]), &alive, &set(&[9]), t0 + 11 * S), None);
        assert_eq!(
            r.poll(&set(&[]), &alive, &set(&[9]), t0 + 16 * S),
            Some(set(&[]))
        );
    }

    #[test]
    fn two_agents_that_each_think_they_report_write_once_per_step_not_in_a_loop() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        // Agent 2 still has the restarted reporter 1 dead; 1 has just recorded itself alive.
        let mut r = ViewReporter::new(2, S);
        assert_eq!(r.poll(&set(&[]), &set(&[]), &set(&[]), t0), None);
        assert_eq!(
            r.poll(&set(&[1]), &set(&[]), &set(&[]), t0 + 100 * ms),
            Some(set(&[1]))
        );
        assert_eq!(
            r.poll(&set(&[1]), &set(&[]), &set(&[1]), t0 + 200 * ms),
            None
        );
        // Agent 1 wrote `{}` over it: agent 2 waits a step before writing again ...
        let again = t0 + 300 * ms;
        assert_eq!(r.poll(&set(&[1]), &set(&[]), &set(&[]), again), None);
        assert_eq!(
            r.poll(&set(&[1]), &set(&[]), &set(&[]), again + S / 2),
            None
        );
        // ... within which SWIM usually tells it 1 is alive; if not, it writes once more.
        assert_eq!(
            r.poll(&set(&[1]), &set(&[]), &set(&[]), again + S),
            Some(set(&[1]))
        );
        // Its own write does not count as someone else's: the next news goes out at once.
        assert_eq!(r.poll(&set(&[1]), &set(&[]), &set(&[1]), again + S), None);
        assert_eq!(
            r.poll(&set(&[1, 5]), &set(&[]), &set(&[1]), again + S + ms),
            Some(set(&[1, 5]))
        );
    }

    #[test]
    fn an_agent_never_writes_itself_dead() {
        let t0 = Instant::now();
        let mut r = ViewReporter::new(1, S);
        assert_eq!(
            r.poll(&set(&[1, 2]), &set(&[3]), &set(&[1]), t0),
            Some(set(&[2]))
        );
    }
}
