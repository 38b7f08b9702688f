//! Who writes a site's view of its own agents ([`consensus::state::SiteView`]) and when: the
//! site's reporter, so a host failure costs one replicated write however many agents noticed.
//!
//! Every agent of the site runs the same SWIM detector and, through its gossip, comes to the
//! same dead set. The agent with the lowest id among those alive in its own view writes as soon
//! as its view differs from the recorded one; the agent of rank `r` (r-th lowest alive) writes
//! only when the difference has lasted `r × step`. So the reporter's own death, or a reporter
//! cut from the leader, delays the write by a step instead of losing it, and in a healthy site
//! exactly one agent writes.
//!
//! Invariant: an agent never writes a view that leaves itself dead (it is alive by definition;
//! a view it disagrees with about itself is refuted through SWIM, not through the state).
//!
//! It does not send anything: the shell proposes what [`ViewReporter::poll`] returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use consensus::NodeId;

/// Decides when this agent writes its site's view.
#[derive(Debug, Clone)]
pub struct ViewReporter {
    me: NodeId,
    step: Duration,
    differs_since: Option<Instant>,
}

impl ViewReporter {
    /// `step`: how long an agent of rank 1 waits for the reporter before writing itself.
    pub fn new(me: NodeId, step: Duration) -> Self {
        Self {
            me,
            step,
            differs_since: None,
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
        let mut mine = mine.clone();
        mine.remove(&self.me);
        if &mine == recorded {
            self.differs_since = None;
            return None;
        }
        let since = *self.differs_since.get_or_insert(now);
        let wait = self
            .step
            .saturating_mul(u32::try_from(self.rank(alive)).unwrap_or(u32::MAX));
        (now.saturating_duration_since(since) >= wait).then_some(mine)
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
    fn others_write_only_after_their_rank_in_steps() {
        let t0 = Instant::now();
        // Agent 3 with 1 dead: 2 is alive and lower, so 3 is of rank 1.
        let mut r = ViewReporter::new(3, S);
        let (mine, alive, recorded) = (set(&[1]), set(&[2, 4]), set(&[]));
        assert_eq!(r.rank(&alive), 1);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0), None);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0 + S / 2), None);
        assert_eq!(r.poll(&mine, &alive, &recorded, t0 + S), Some(set(&[1])));
        // The reporter wrote meanwhile: the wait starts again at the next difference.
        assert_eq!(r.poll(&mine, &alive, &set(&[1]), t0 + S), None);
        assert_eq!(
            r.poll(&set(&[]), &set(&[1, 2, 4]), &set(&[1]), t0 + 2 * S),
            None
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
