//! The gossip waiting to be piggybacked: at most one update per member, each sent a bounded
//! number of times.
//!
//! Invariant: an update is handed out at most `limit` times, then dropped; a newer update about
//! the same member replaces the older one and starts again at zero transmissions. Selection
//! prefers the least transmitted, then the most recent, so news spreads before old news.
//!
//! It does not decide what is news (precedence is the caller's) nor add the receiver's own entry.

use std::collections::BTreeMap;

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
    clock: u64,
}

impl Broadcasts {
    /// Queues `update`, replacing whatever was queued about the same member.
    pub(super) fn push(&mut self, update: Update) {
        self.clock += 1;
        self.pending.insert(
            update.member,
            Pending {
                update,
                sent: 0,
                stamp: self.clock,
            },
        );
    }

    pub(super) fn forget(&mut self, member: NodeId) {
        self.pending.remove(&member);
    }

    /// Up to `max` updates for one message (none about `skip`), each counted as transmitted once;
    /// those transmitted `limit` times are dropped.
    pub(super) fn take(&mut self, max: usize, limit: u32, skip: Option<NodeId>) -> Vec<Update> {
        if max == 0 {
            return Vec::new();
        }
        let mut chosen: Vec<(u32, std::cmp::Reverse<u64>, NodeId)> = self
            .pending
            .iter()
            .filter(|(id, _)| Some(**id) != skip)
            .map(|(id, p)| (p.sent, std::cmp::Reverse(p.stamp), *id))
            .collect();
        chosen.sort_unstable();
        chosen.truncate(max);
        let mut out = Vec::with_capacity(chosen.len());
        for (_, _, id) in chosen {
            if let Some(p) = self.pending.get_mut(&id) {
                out.push(p.update);
                p.sent += 1;
                if p.sent >= limit {
                    self.pending.remove(&id);
                }
            }
        }
        out
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
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
