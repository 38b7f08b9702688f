//! This node's view of the members: gossip applied under the incarnation precedence,
//! refutations of accusations against itself, and suspicions that expire into Dead.
//!
//! Invariant: a member's incarnation in the view never goes down, and only this node raises its
//! own; every Alive/Suspect -> Dead and Dead -> Alive transition is reported exactly once.
//!
//! It does not probe (see `probe`) nor choose what gossip goes into a message.

use std::time::Instant;

use consensus::NodeId;

use super::{MemberState, Outgoing, Suspicion, Swim, Update, VerdictChange};

impl Swim {
    /// Applies one update under the incarnation precedence.
    pub(super) fn apply(&mut self, update: Update, now: Instant) {
        if update.member == self.me {
            self.apply_about_me(update);
            return;
        }
        let me = self.me;
        let Some(m) = self.members.get_mut(&update.member) else {
            return;
        };
        let mut became = None;
        let mut spread = false;
        match update.state {
            MemberState::Alive => {
                if update.incarnation > m.incarnation {
                    if m.state == MemberState::Suspect
                        && self.accused.remove(&update.member).is_some()
                    {
                        self.stats.refuted += 1;
                    }
                    became = Some(MemberState::Alive);
                    m.suspicion = None;
                    spread = true;
                }
            }
            MemberState::Suspect => match m.state {
                MemberState::Alive if update.incarnation >= m.incarnation => {
                    became = Some(MemberState::Suspect);
                    m.suspicion = Some(Suspicion::new(now, update.from, me));
                    spread = true;
                }
                MemberState::Suspect if update.incarnation > m.incarnation => {
                    m.suspicion = Some(Suspicion::new(now, update.from, me));
                    m.incarnation = update.incarnation;
                    m.from = update.from;
                    spread = true;
                }
                MemberState::Suspect if update.incarnation == m.incarnation => {
                    spread = m
                        .suspicion
                        .get_or_insert_with(|| Suspicion::new(now, update.from, me))
                        .confirm(update.from, me);
                }
                _ => {}
            },
            MemberState::Dead => {
                if m.state != MemberState::Dead && update.incarnation >= m.incarnation {
                    became = Some(MemberState::Dead);
                    m.suspicion = None;
                    spread = true;
                } else if m.state == MemberState::Dead && update.incarnation > m.incarnation {
                    m.incarnation = update.incarnation;
                }
            }
        }
        if let Some(state) = became {
            let was = m.state;
            m.state = state;
            m.incarnation = update.incarnation;
            m.from = update.from;
            self.note_transition(update.member, was, state);
        }
        if spread {
            self.broadcasts.push(update);
        }
    }

    fn apply_about_me(&mut self, update: Update) {
        if update.state == MemberState::Alive {
            return;
        }
        if update.incarnation >= self.incarnation {
            self.incarnation = update.incarnation + 1;
            self.raise_health(1);
        }
        // Older accusations (e.g. a Dead@0 seeded from the replicated state) are answered by
        // our current incarnation, which already outranks them.
        self.broadcasts.push(Update {
            member: self.me,
            incarnation: self.incarnation,
            state: MemberState::Alive,
            from: self.me,
        });
    }

    pub(super) fn note_transition(
        &mut self,
        member: NodeId,
        was: MemberState,
        now_is: MemberState,
    ) {
        if now_is == MemberState::Suspect {
            self.suspected.insert(member);
        } else {
            self.suspected.remove(&member);
        }
        if now_is == MemberState::Dead {
            self.dead.insert(member);
        } else {
            self.dead.remove(&member);
        }
        match (was, now_is) {
            (MemberState::Alive | MemberState::Suspect, MemberState::Dead) => {
                self.changes.push(VerdictChange {
                    subject: member,
                    up: false,
                })
            }
            (MemberState::Dead, MemberState::Alive) => self.changes.push(VerdictChange {
                subject: member,
                up: true,
            }),
            _ => {}
        }
    }

    /// Suspicions that expired with enough confirmations become Dead here; each such verdict is
    /// also sent at once to the site's reporter.
    pub(super) fn expire_suspicions(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if self.suspected.is_empty() {
            return;
        }
        let (k, needed) = self.suspicion_bounds();
        let (min, max) = (self.config.suspicion_min, self.config.suspicion_max);
        let due: Vec<NodeId> = self
            .suspected
            .iter()
            .filter(|id| {
                self.members
                    .get(id)
                    .and_then(|m| m.suspicion.as_ref())
                    .is_some_and(|s| {
                        s.other_accusers() >= needed && now >= s.expires_at(min, max, k)
                    })
            })
            .copied()
            .collect();
        if due.is_empty() {
            return;
        }
        for id in due {
            if let Some(m) = self.members.get_mut(&id) {
                let update = Update {
                    member: id,
                    incarnation: m.incarnation,
                    state: MemberState::Dead,
                    from: self.me,
                };
                m.state = MemberState::Dead;
                m.from = self.me;
                m.suspicion = None;
                self.accused.remove(&id);
                self.stats.expired += 1;
                self.note_transition(id, MemberState::Suspect, MemberState::Dead);
                self.broadcasts.push(update);
            }
        }
        self.tell_reporter(out);
    }
}
