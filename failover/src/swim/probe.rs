//! The probe cycle of one node: choosing whom to probe, asking others when the direct probe
//! goes unanswered, and turning an unanswered period into a suspicion.
//!
//! Invariant: at most one probe per period; a probe of a Dead member never suspects, never asks
//! others and never counts against local health. The pings that remind an accused member of
//! its suspicion are not probes: nobody waits for their acks and a missing one counts nothing.
//!
//! It does not expire suspicions or apply gossip (see `view`), nor schedule periods (`tick`).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::time::Instant;

use consensus::NodeId;

use super::{MemberState, Message, Outgoing, Suspicion, Swim, Update};

/// Every this many periods a Dead member is probed instead of a live one.
const DEAD_PROBE_EVERY: u64 = 5;

/// This node's probe of the current period.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) target: NodeId,
    pub(super) seq: u64,
    /// The target is Dead here: no ping-req, no suspicion, no health penalty on failure.
    pub(super) of_dead: bool,
    pub(super) indirect_at: Instant,
    pub(super) acked: bool,
    /// Intermediaries asked (empty until the indirect phase).
    pub(super) asked: Vec<NodeId>,
    /// Intermediaries that answered (nack or forwarded ack).
    pub(super) answered: BTreeSet<NodeId>,
    pub(super) indirect_sent: bool,
}

impl Swim {
    /// This node's own probe failed: suspect the target (or confirm a suspicion of it), count
    /// the intermediaries that could not reach it either as confirmations, and tell the target in
    /// person, at once and then every probe timeout while the suspicion lasts here, so it can
    /// refute.
    pub(super) fn suspect(
        &mut self,
        target: NodeId,
        nacked: &BTreeSet<NodeId>,
        now: Instant,
        out: &mut Vec<Outgoing>,
    ) {
        let me = self.me;
        let Some(m) = self.members.get_mut(&target) else {
            return;
        };
        let update = Update {
            member: target,
            incarnation: m.incarnation,
            state: MemberState::Suspect,
            from: me,
        };
        let fresh = match m.state {
            MemberState::Alive => {
                m.state = MemberState::Suspect;
                m.from = me;
                m.suspicion = Some(Suspicion::new(now, me, me));
                self.suspected.insert(target);
                true
            }
            MemberState::Suspect => m
                .suspicion
                .get_or_insert_with(|| Suspicion::new(now, me, me))
                .confirm(me, me),
            MemberState::Dead => return,
        };
        if let Some(s) = m.suspicion.as_mut() {
            for via in nacked {
                s.confirm(*via, me);
            }
        }
        if fresh {
            self.stats.accused += 1;
            self.broadcasts.push(update);
            self.accused.insert(target, now);
            self.remind_accused(now, out);
        }
    }

    /// Pings each member this node accused and that is still Suspect here, when its reminder
    /// is due (at once, then every probe timeout): the ping carries the member's own Suspect
    /// entry first, so a live member refutes in its ack. Without the repeats, a lost ping or
    /// ack left the member to hear of its suspicion through gossip and this node of the
    /// refutation through gossip again, which in a large site outlasts the suspicion.
    pub(super) fn remind_accused(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let due: Vec<NodeId> = self
            .accused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        // Every probe timeout (the time an ack is expected in), not stretched by local health:
        // several reminders must fit in the shortest suspicion, which local health does not
        // stretch either.
        let every = self.config.probe_timeout;
        for id in due {
            if self.state_of(id) == Some(MemberState::Suspect) {
                self.accused.insert(id, now + every);
                let seq = self.take_seq();
                self.send(out, id, |gossip| Message::Ping { seq, gossip });
            } else {
                self.accused.remove(&id);
            }
        }
    }

    pub(super) fn send_ping_reqs(&mut self, out: &mut Vec<Outgoing>) {
        let Some((target, seq)) = self.probe.as_ref().map(|p| (p.target, p.seq)) else {
            return;
        };
        let candidates = self.intermediaries(target);
        for via in &candidates {
            self.send(out, *via, |gossip| Message::PingReq {
                seq,
                target,
                gossip,
            });
        }
        if let Some(p) = self.probe.as_mut() {
            p.asked = candidates;
            p.indirect_sent = true;
        }
    }

    /// Up to `indirect_probes` distinct Alive members other than `target`, at random: sampled
    /// from `ids` (O(k) expected when most members are Alive), falling back to a scan of every
    /// member only when sampling keeps hitting non-Alive ones (small or mostly dead sites).
    fn intermediaries(&mut self, target: NodeId) -> Vec<NodeId> {
        let k = self.config.indirect_probes;
        let mut chosen = Vec::with_capacity(k);
        if k == 0 || self.ids.is_empty() {
            return chosen;
        }
        let eligible = |swim: &Self, id: NodeId| {
            id != target
                && swim
                    .members
                    .get(&id)
                    .is_some_and(|m| m.state == MemberState::Alive)
        };
        for _ in 0..4 * k {
            if chosen.len() == k {
                return chosen;
            }
            let id = self.ids[self.rng.index(self.ids.len())];
            if !chosen.contains(&id) && eligible(self, id) {
                chosen.push(id);
            }
        }
        let mut rest: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !chosen.contains(id) && eligible(self, *id))
            .collect();
        self.rng.shuffle(&mut rest);
        rest.truncate(k - chosen.len());
        chosen.extend(rest);
        chosen
    }

    pub(super) fn finish_probe(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let Some(p) = self.probe.take() else {
            return;
        };
        if p.acked || p.of_dead {
            return;
        }
        let missed_nacks = p.asked.iter().filter(|id| !p.answered.contains(id)).count();
        self.raise_health(1 + missed_nacks as u32);
        self.suspect(p.target, &p.answered, now, out);
    }

    pub(super) fn start_probe(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let scale = self.health + 1;
        self.period_end = Some(now + self.config.interval * scale);
        self.periods += 1;
        let dead_turn = self.periods.is_multiple_of(DEAD_PROBE_EVERY);
        let target = if dead_turn {
            self.next_dead().or_else(|| self.next_live())
        } else {
            self.next_live().or_else(|| self.next_dead())
        };
        let Some(target) = target else {
            return;
        };
        let of_dead = self.state_of(target) == Some(MemberState::Dead);
        let seq = self.take_seq();
        self.probe = Some(Probe {
            target,
            seq,
            of_dead,
            indirect_at: now + self.config.probe_timeout * scale,
            acked: false,
            asked: Vec::new(),
            answered: BTreeSet::new(),
            indirect_sent: false,
        });
        self.send(out, target, |gossip| Message::Ping { seq, gossip });
    }

    /// Next Alive/Suspect member of the shuffled round-robin, reshuffling after each round.
    fn next_live(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.cursor < self.order.len() {
                let id = self.order[self.cursor];
                self.cursor += 1;
                if self.state_of(id).is_some_and(|s| s != MemberState::Dead) {
                    return Some(id);
                }
            }
            self.order = self
                .members
                .iter()
                .filter(|(_, m)| m.state != MemberState::Dead)
                .map(|(id, _)| *id)
                .collect();
            self.rng.shuffle(&mut self.order);
            self.cursor = 0;
        }
        None
    }

    /// Next Dead member in id order after the last one probed (O(log dead) on the dead index).
    fn next_dead(&mut self) -> Option<NodeId> {
        let after = match self.last_dead_probed {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let pick = self
            .dead
            .range((after, Bound::Unbounded))
            .next()
            .or_else(|| self.dead.iter().next())
            .copied();
        self.last_dead_probed = pick.or(self.last_dead_probed);
        pick
    }
}
