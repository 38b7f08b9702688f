//! The gossip waiting to be piggybacked: at most one update per member, each sent a bounded
//! number of times.
//!
//! Invariant: an update is handed out at most `limit` times, then dropped; a newer update about
//! the same member replaces the older one and starts again at zero transmissions. Selection
//! prefers the least transmitted, then the most recent, so news spreads before old news.
//!
//! The queue is kept in selection order (an ordered index beside the map), so picking the
//! updates of one message costs O(max · log pending), not a sort of everything pending.
//!
//! It does not decide what is news (precedence is the caller's) nor add the receiver's own entry.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use consensus::NodeId;

use super::Update;

#[derive(Debug, Clone, Copy)]
struct Pending {
    update: Update,
    sent: u32,
    /// Enqueue order: higher is more recent.
    stamp: u64,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Broadcasts {
    pending: BTreeMap<NodeId, Pending>,
    /// `pending` in selection order: (transmissions, newest first, member).
    order: BTreeSet<Key>,
    clock: u64,
}

type Key = (u32, Reverse<u64>, NodeId);

fn key(member: NodeId, p: &Pending) -> Key {
    (p.sent, Reverse(p.stamp), member)
}

impl Broadcasts {
    /// Queues `update`, replacing whatever was queued about the same member.
    pub(super) fn push(&mut self, update: Update) {
        self.clock += 1;
        let fresh = Pending {
            update,
            sent: 0,
            stamp: self.clock,
        };
        self.order.insert(key(update.member, &fresh));
        if let Some(old) = self.pending.insert(update.member, fresh) {
            self.order.remove(&key(update.member, &old));
        }
    }

    pub(super) fn forget(&mut self, member: NodeId) {
        if let Some(old) = self.pending.remove(&member) {
            self.order.remove(&key(member, &old));
        }
    }

    /// Up to `max` updates for one message (none about `skip`), each counted as transmitted once;
    /// those transmitted `limit` times are dropped.
    pub(super) fn take(&mut self, max: usize, limit: u32, skip: Option<NodeId>) -> Vec<Update> {
        if max == 0 {
            return Vec::new();
        }
        let chosen: Vec<Key> = self
            .order
            .iter()
            .filter(|(_, _, id)| Some(*id) != skip)
            .take(max)
            .copied()
            .collect();
        let mut out = Vec::with_capacity(chosen.len());
        for k in chosen {
            self.order.remove(&k);
            let id = k.2;
            if let Some(p) = self.pending.get_mut(&id) {
                out.push(p.update);
                p.sent += 1;
                if p.sent >= limit {
                    self.pending.remove(&id);
                } else {
                    self.order.insert(key(id, p));
                }
            }
        }
        out
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        debug_assert_eq!(self.pending.len(), self.order.len());
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemberState;
    use super::*;

    fn update(member: NodeId, incarnation: u64) -> Update {
        Update {
            member,
            incarnation,
            state: MemberState::Alive,
            from: member,
        }
    }

    #[test]
    fn least_sent_then_newest_first_and_dropped_after_limit() {
        let mut b = Broadcasts::default();
        b.push(update(1, 1));
        b.push(update(2, 1));
        assert_eq!(b.take(1, 2, None), vec![update(2, 1)]);
        // 1 was never sent, so it goes before 2 now.
        assert_eq!(b.take(1, 2, None), vec![update(1, 1)]);
        assert_eq!(b.take(2, 2, None), vec![update(2, 1), update(1, 1)]);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn newer_update_replaces_older_and_skip_is_honoured() {
        let mut b = Broadcasts::default();
        b.push(update(1, 1));
        b.take(1, 3, None);
        b.push(update(1, 2));
        assert_eq!(b.len(), 1);
        assert!(b.take(8, 3, Some(1)).is_empty());
        assert_eq!(b.take(8, 3, None), vec![update(1, 2)]);
    }
}
