//! Drill-free RTO: on the leader, how long each service went without serving, from the moment it
//! was lost (the verdict or revocation that took its instance away) to the first Running report
//! of its replacement; and which placements are moves rather than first placements.
//!
//! Owns: [`Recovery`], a sans-IO tracker fed the applied state and `now`.
//!
//! Invariant: an RTO is reported only for an outage this tracker saw begin (a leader that takes
//! over mid-outage knows the service is down but not since when, and reports nothing for it);
//! "serving" means exactly what DNS lists ([`zone::serving_hosts`]).
//!
//! Does not: export anything or read a clock; the leader loop sets the gauge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use consensus::state::{FabricState, InstanceState, Service};

use crate::zone;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    /// Not serving yet, and never was as far as this tracker knows (a first placement).
    New,
    Serving,
    /// Lost; `since` is when this tracker saw it stop serving, if it did.
    Lost {
        since: Option<Instant>,
    },
}

/// Per service: serving, lost since when, or new.
#[derive(Debug, Default)]
pub struct Recovery {
    services: BTreeMap<String, Track>,
}

/// A service seen for the first time while not serving: was it ever placed and lost?
fn was_lost(svc: &Service) -> bool {
    svc.epoch > 1
        || svc
            .instances
            .values()
            .any(|i| i.state != InstanceState::Assigned)
}

impl Recovery {
    /// Notes which services serve in `state` at `now`; returns, for every service that serves
    /// again after an outage seen to begin, how long the outage lasted.
    pub fn observe(&mut self, state: &FabricState, now: Instant) -> Vec<(String, Duration)> {
        let mut recovered = Vec::new();
        let mut next = BTreeMap::new();
        for (name, svc) in &state.services {
            let serving = zone::serving_hosts(state, svc).next().is_some();
            let track = match (self.services.remove(name), serving) {
                (Some(Track::Lost { since: Some(t) }), true) => {
                    recovered.push((name.clone(), now.saturating_duration_since(t)));
                    Track::Serving
                }
                (_, true) => Track::Serving,
                (Some(Track::Serving), false) => Track::Lost { since: Some(now) },
                (Some(lost @ Track::Lost { .. }), false) => lost,
                (Some(Track::New) | None, false) if was_lost(svc) => Track::Lost { since: None },
                (Some(Track::New) | None, false) => Track::New,
            };
            next.insert(name.clone(), track);
        }
        self.services = next;
        recovered
    }

    /// Whether placing `service` on `host` moves it: it was lost, or it still runs elsewhere
    /// (a drain's replacement).
    pub fn is_move(&self, state: &FabricState, service: &str, host: u64) -> bool {
        let lost = matches!(self.services.get(service), Some(Track::Lost { .. }));
        let elsewhere = state
            .services
            .get(service)
            .is_some_and(|svc| svc.instances.values().any(|i| i.host != host && i.live()));
        lost || elsewhere
    }

    /// Forgets everything (a node that loses leadership starts over when it leads again).
    pub fn clear(&mut self) {
        self.services.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use consensus::state::Health;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn rto_runs_from_the_loss_to_the_first_running_report_of_the_replacement() {
        let t0 = Instant::now();
        let mut state = fixture::fabric();
        let mut r = Recovery::default();
        assert!(r.observe(&state, t0).is_empty());
        fixture::apply(&mut state, fixture::host_health(11, Health::Down));
        assert!(r.observe(&state, t0 + S).is_empty());
        fixture::apply(&mut state, fixture::revoke("web", 11, 1));
        assert!(r.observe(&state, t0 + 2 * S).is_empty());
        assert!(r.is_move(&state, "web", 12), "the replacement is a move");
        fixture::apply(&mut state, fixture::place("web", 12, 1));
        assert!(
            r.observe(&state, t0 + 3 * S).is_empty(),
            "assigned is not serving"
        );
        fixture::apply(&mut state, fixture::running("web", 12, 1, 2));
        assert_eq!(r.observe(&state, t0 + 5 * S), vec![("web".into(), 4 * S)]);
        assert!(r.observe(&state, t0 + 6 * S).is_empty(), "reported once");
    }

    #[test]
    fn a_first_placement_is_no_move_and_has_no_rto() {
        let t0 = Instant::now();
        let mut state = fixture::placed();
        let mut r = Recovery::default();
        assert!(r.observe(&state, t0).is_empty());
        assert!(!r.is_move(&state, "web", 11));
        fixture::apply(&mut state, fixture::running("web", 11, 1, 1));
        assert!(r.observe(&state, t0 + S).is_empty());
    }

    #[test]
    fn an_outage_that_began_before_this_leader_counts_as_a_move_without_an_rto() {
        let t0 = Instant::now();
        let mut state = fixture::fabric();
        fixture::apply(&mut state, fixture::host_health(11, Health::Down));
        let mut r = Recovery::default();
        assert!(r.observe(&state, t0).is_empty());
        assert!(r.is_move(&state, "web", 12));
        fixture::apply(&mut state, fixture::revoke("web", 11, 1));
        fixture::apply(&mut state, fixture::place("web", 12, 1));
        fixture::apply(&mut state, fixture::running("web", 12, 1, 2));
        assert!(
            r.observe(&state, t0 + S).is_empty(),
            "unknown start, no RTO"
        );
    }
}
