//! One simulated agent: its SWIM detector, its site-view reporter and, when it is one of its
//! site's observers, its watch over the other sites — with the bookkeeping the shell keeps
//! around them (what it last learnt from SWIM, what it has in flight).
//!
//! Invariant: a crashed agent keeps nothing that outlives it: a restart builds a new detector
//! (with a higher incarnation, seeded from the replicated view), reporter and watch, and every
//! event meant for the old life is recognised by `life` / watch generation and dropped.
//!
//! It does not send or schedule anything; [`super::world`] does.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use consensus::NodeId;

use crate::siteview::ViewReporter;
use crate::sitewatch::SiteWatch;
use crate::swim::{MemberState, Swim, SwimConfig};

use super::agenda::Nanos;

/// Where incarnations start: the real shell passes unix seconds; a restart at virtual second
/// `t` takes `INCARNATION_ORIGIN + t`, so it outranks what its peers remember.
pub(super) const INCARNATION_ORIGIN: u64 = 1_700_000_000;

/// An observer's watch over the other sites.
pub(super) struct Watch {
    pub(super) sites: SiteWatch,
    /// Unique per watch started, so probes and answers of an earlier watch are dropped.
    pub(super) generation: u64,
    pub(super) started: Nanos,
    /// Sites whose `ObserveSite` is proposed but not yet committed.
    pub(super) in_flight: BTreeSet<usize>,
}

/// What every agent of a site starts from.
pub(super) struct Template<'a> {
    pub(super) swim: SwimConfig,
    pub(super) report_step: Duration,
    /// The site's agents, sorted by id.
    pub(super) site_agents: &'a [NodeId],
}

pub(super) struct Agent {
    pub(super) id: NodeId,
    pub(super) site: usize,
    pub(super) up: bool,
    /// Bumps at every crash and restart.
    pub(super) life: u64,
    pub(super) swim: Swim,
    /// Members Dead in this agent's SWIM view, kept from its verdict changes.
    pub(super) dead: BTreeSet<NodeId>,
    /// Agents of the site with a lower id, alive in this view: all [`ViewReporter`] needs to
    /// rank this agent (its rank counts lower ids only). Rebuilt when `dead` changes.
    pub(super) alive_below: Option<BTreeSet<NodeId>>,
    pub(super) reporter: ViewReporter,
    /// The last poll found this agent's view different from the recorded one.
    pub(super) differing: bool,
    pub(super) view_in_flight: bool,
    /// When the pending tick is due, and its generation (older tick events are stale).
    pub(super) next_tick: Option<Nanos>,
    pub(super) tick_generation: u64,
    pub(super) watch: Option<Watch>,
}

impl Agent {
    /// A fresh agent (at start or after a restart): SWIM over the site's agents, `recorded_dead`
    /// starting Dead, as the real shell seeds it from the replicated view.
    pub(super) fn start(
        id: NodeId,
        site: usize,
        template: &Template<'_>,
        incarnation: u64,
        seed: u64,
        recorded_dead: &BTreeSet<NodeId>,
        now: Instant,
    ) -> Self {
        let mut swim = Swim::new(id, template.swim, incarnation, seed);
        swim.set_members(
            template.site_agents.iter().map(|m| {
                let state = if recorded_dead.contains(m) {
                    MemberState::Dead
                } else {
                    MemberState::Alive
                };
                (*m, state)
            }),
            now,
        );
        let dead = swim
            .members()
            .filter(|(_, s)| *s == MemberState::Dead)
            .map(|(m, _)| m)
            .collect();
        Self {
            id,
            site,
            up: true,
            life: 0,
            swim,
            dead,
            alive_below: None,
            reporter: ViewReporter::new(id, template.report_step),
            differing: false,
            view_in_flight: false,
            next_tick: None,
            tick_generation: 0,
            watch: None,
        }
    }

    /// Takes SWIM's verdict changes into `dead`.
    pub(super) fn learn(&mut self) {
        for change in self.swim.drain_changes() {
            let changed = if change.up {
                self.dead.remove(&change.subject)
            } else {
                self.dead.insert(change.subject)
            };
            if changed {
                self.alive_below = None;
            }
        }
    }

    /// The agents below this one that are alive in its view (`site_agents` sorted by id).
    pub(super) fn alive_below(&mut self, site_agents: &[NodeId]) -> &BTreeSet<NodeId> {
        let (me, dead) = (self.id, &self.dead);
        self.alive_below.get_or_insert_with(|| {
            site_agents
                .iter()
                .take_while(|m| **m < me)
                .filter(|m| !dead.contains(m))
                .copied()
                .collect()
        })
    }

    /// Forgets everything of this life; events meant for it will be dropped.
    pub(super) fn crash(&mut self) {
        self.up = false;
        self.life += 1;
        self.watch = None;
        self.view_in_flight = false;
        self.next_tick = None;
        self.tick_generation += 1;
    }
}
