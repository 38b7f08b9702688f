//! One member's suspicion in this node's view: who accused it and when it may become Dead.
//!
//! Invariant: the first accusation is not its own confirmation; confirmations are distinct
//! accusers beyond the first (this node's own failed probe counted as one accuser, but kept
//! apart from the others' accusations because only those protect against an isolated node).
//!
//! It does not decide whether the suspicion may expire (the caller checks the confirmations
//! needed against the site's size) and it does not change any member's state.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use consensus::NodeId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Suspicion {
    start: Instant,
    /// Distinct members other than this node that accused the member at this incarnation.
    others: BTreeSet<NodeId>,
    /// This node's own probe of the member failed at this incarnation.
    mine: bool,
}

impl Suspicion {
    /// A suspicion started at `start` by `accuser` (`me` when this node's own probe failed).
    pub(super) fn new(start: Instant, accuser: NodeId, me: NodeId) -> Self {
        let mut s = Self {
            start,
            others: BTreeSet::new(),
            mine: false,
        };
        s.confirm(accuser, me);
        s
    }

    /// Records an accusation; true when it came from an accuser not counted yet.
    pub(super) fn confirm(&mut self, accuser: NodeId, me: NodeId) -> bool {
        if accuser == me {
            !std::mem::replace(&mut self.mine, true)
        } else {
            self.others.insert(accuser)
        }
    }

    /// Accusations from members other than this node.
    pub(super) fn other_accusers(&self) -> usize {
        self.others.len()
    }

    /// Independent confirmations beyond the first accusation (Lifeguard's C).
    pub(super) fn confirmations(&self) -> usize {
        (self.others.len() + usize::from(self.mine)).saturating_sub(1)
    }

    /// Lifeguard: `max(min, max - (max - min) * log(C + 1) / log(K + 1))`, so the timeout
    /// shrinks from `max` with no confirmation to `min` with `k` of them (`min` at once when no
    /// confirmation can be expected, `k == 0`).
    pub(super) fn timeout(&self, min: Duration, max: Duration, k: usize) -> Duration {
        let max = max.max(min);
        if k == 0 {
            return min;
        }
        let c = self.confirmations().min(k) as f64;
        let fraction = (c + 1.0).ln() / (k as f64 + 1.0).ln();
        let shrunk = max.as_secs_f64() - (max - min).as_secs_f64() * fraction;
        Duration::from_secs_f64(shrunk.max(0.0)).max(min)
    }

    /// When the suspicion expires with the confirmations it has now.
    pub(super) fn expires_at(&self, min: Duration, max: Duration, k: usize) -> Instant {
        self.start + self.timeout(min, max, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn timeout_shrinks_from_max_to_min_with_confirmations() {
        let t0 = Instant::now();
        let mut s = Suspicion::new(t0, 7, 1);
        assert_eq!(s.timeout(600 * MS, 1800 * MS, 3), 1800 * MS);
        assert!(s.confirm(1, 1));
        let one = s.timeout(600 * MS, 1800 * MS, 3);
        assert_eq!(one, 1200 * MS);
        s.confirm(8, 1);
        let two = s.timeout(600 * MS, 1800 * MS, 3);
        assert!(two < one && two > 600 * MS, "{two:?}");
        s.confirm(9, 1);
        assert_eq!(s.timeout(600 * MS, 1800 * MS, 3), 600 * MS);
        s.confirm(10, 1);
        assert_eq!(s.timeout(600 * MS, 1800 * MS, 3), 600 * MS);
    }

    #[test]
    fn repeated_accuser_is_not_a_confirmation() {
        let mut s = Suspicion::new(Instant::now(), 7, 1);
        assert!(!s.confirm(7, 1));
        assert_eq!(s.confirmations(), 0);
        assert_eq!(s.other_accusers(), 1);
        assert!(s.confirm(1, 1));
        assert!(!s.confirm(1, 1));
        assert_eq!(s.confirmations(), 1);
        assert_eq!(s.other_accusers(), 1);
    }

    #[test]
    fn no_expected_confirmation_means_min_timeout() {
        let s = Suspicion::new(Instant::now(), 1, 1);
        assert_eq!(s.timeout(600 * MS, 1800 * MS, 0), 600 * MS);
    }
}
