//! Property tests of the health quorum (`failover::quorum::verdicts`) over random fabrics and
//! random observations:
//!
//! - one vantage never fails a site: with three or more sites, whatever the agents of a single
//!   site report (any subject, up or down), every site stays up — a broken link or a confused
//!   site is one vote;
//! - a site every other site sees fully dark is down, whatever its own agents say about
//!   themselves or others.
//!
//! The planner has no property here: its invariants (one instance per host, never a Down site)
//! depend on the lease clock and the executor's timing, and are covered by its unit tests.

use consensus::state::{Capacity, Command, FabricState, Health, Proposal};
use failover::quorum::{Members, verdicts};
use proptest::prelude::*;
use proptest::sample::Index;

fn apply(state: &mut FabricState, command: Command) {
    state
        .apply(&Proposal {
            at_ms: 1,
            actor: "prop".into(),
            command,
        })
        .expect("a valid fabric command");
}

/// Sites s1..sN with `agents[s]` agents each (node 10·s + a), every one a registered host.
fn fabric(agents: &[u64]) -> (FabricState, Members) {
    let mut state = FabricState::default();
    let mut members = Members::new();
    for (s, count) in (1u64..).zip(agents) {
        let site = format!("s{s}");
        apply(
            &mut state,
            Command::UpsertSite {
                name: site.clone(),
                priority: s as u32,
            },
        );
        for a in 1..=*count {
            let id = 10 * s + a;
            apply(
                &mut state,
                Command::RegisterHost {
                    id,
                    site: site.clone(),
                    address: "127.0.0.1:1".into(),
                    admin_address: "127.0.0.1:2".into(),
                    addresses: vec![],
                    capacity: Capacity::default(),
                    labels: Default::default(),
                },
            );
            members.insert(id, site.clone());
        }
    }
    (state, members)
}

/// Records `observer`'s verdict on `subject`; an agent does not observe itself (the state
/// refuses it), so such a draw records nothing.
fn observe(state: &mut FabricState, observer: u64, subject: u64, up: bool) {
    if observer == subject {
        return;
    }
    apply(
        state,
        Command::Observe {
            observer,
            subject,
            up,
        },
    );
}

fn site_of(members: &Members, id: u64) -> &str {
    members.get(&id).map(String::as_str).unwrap_or_default()
}

/// Up to `max` reports: (observer, subject, up), the agents picked by index from a list.
fn reports(max: usize) -> impl Strategy<Value = Vec<(Index, Index, bool)>> {
    prop::collection::vec((any::<Index>(), any::<Index>(), any::<bool>()), 0..max)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_agents_of_one_site_alone_never_fail_a_site(
        agents in prop::collection::vec(1..=3u64, 3..=5),
        vantage in 0..5usize,
        reports in reports(40),
    ) {
        let (mut state, members) = fabric(&agents);
        let ids: Vec<u64> = members.keys().copied().collect();
        let vantage = format!("s{}", vantage % agents.len() + 1);
        let observers: Vec<u64> =
            ids.iter().copied().filter(|id| site_of(&members, *id) == vantage).collect();
        for (observer, subject, up) in reports {
            observe(&mut state, *observer.get(&observers), *subject.get(&ids), up);
        }
        let v = verdicts(&state, &members);
        prop_assert_eq!(v.sites.len(), agents.len());
        for (site, health) in &v.sites {
            prop_assert_eq!(*health, Health::Up, "{} failed by {}'s reports alone", site, vantage);
        }
    }

    #[test]
    fn a_site_every_other_site_sees_dark_is_down(
        agents in prop::collection::vec(1..=3u64, 2..=5),
        dark in 0..5usize,
        own_reports in reports(20),
    ) {
        let (mut state, members) = fabric(&agents);
        let ids: Vec<u64> = members.keys().copied().collect();
        let dark = format!("s{}", dark % agents.len() + 1);
        let (inside, outside): (Vec<u64>, Vec<u64>) =
            ids.iter().copied().partition(|id| site_of(&members, *id) == dark);
        for observer in &outside {
            for subject in &inside {
                observe(&mut state, *observer, *subject, false);
            }
        }
        // Whatever the dark site's own agents report, they are not a vantage on themselves.
        for (observer, subject, up) in own_reports {
            observe(&mut state, *observer.get(&inside), *subject.get(&ids), up);
        }
        let v = verdicts(&state, &members);
        prop_assert_eq!(v.sites.get(&dark), Some(&Health::Down));
        for id in &inside {
            prop_assert_eq!(v.hosts.get(id), Some(&Health::Down), "host {} of the dark site", id);
        }
    }
}
