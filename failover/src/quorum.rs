//! Health quorum: turns the observers' recorded verdicts into host and site verdicts.
//!
//! - A site is down when a majority of the *other* sites that still count (not down themselves
//!   and with at least one observer) see it down. A site sees another down when a majority of
//!   its observers that are up see none of that site's agents. One broken link is one vote, so
//!   it never fails a site.
//! - A host is down when its site is down, or when a majority of the other agents of its own
//!   site that are up see it down. A host alone in its site is judged with its site.
//!
//! Invariant: pure and deterministic — the same state and membership give the same verdicts
//! on every node, so a new leader continues where the old one stopped.
//!
//! It does not record anything; the leader proposes the verdicts that differ from the state.

use std::collections::BTreeMap;

use consensus::NodeId;
use consensus::state::{FabricState, Health};

/// Every agent of the fabric (Raft members) with its site.
pub type Members = BTreeMap<NodeId, String>;

/// Host and site verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub sites: BTreeMap<String, Health>,
    pub hosts: BTreeMap<NodeId, Health>,
}

/// What `observer` last said about `subject` (no record means up).
fn sees_up(state: &FabricState, observer: NodeId, subject: NodeId) -> bool {
    state
        .observations
        .get(&subject)
        .and_then(|by| by.get(&observer))
        .is_none_or(|o| o.up)
}

/// More than half of `total`.
fn majority(votes: usize, total: usize) -> bool {
    total > 0 && votes * 2 > total
}

/// An observer counts while its own host (if it is one) is not known down.
fn observer_counts(state: &FabricState, id: NodeId) -> bool {
    state.hosts.get(&id).is_none_or(|h| h.health == Health::Up)
}

/// Computes every verdict from the recorded observations. A host that is not among `members`
/// (removed from the cluster) is down.
pub fn verdicts(state: &FabricState, members: &Members) -> Verdicts {
    let mut by_site: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for (id, site) in members {
        by_site.entry(site.as_str()).or_default().push(*id);
    }
    let currently_down = |site: &str| {
        state
            .sites
            .get(site)
            .is_some_and(|s| s.health == Health::Down)
    };

    let mut out = Verdicts::default();
    for (site, agents) in &by_site {
        let mut vantage = 0;
        let mut see_down = 0;
        for (other, observers) in &by_site {
            if other == site || currently_down(other) {
                continue;
            }
            let live: Vec<NodeId> = observers
                .iter()
                .copied()
                .filter(|o| observer_counts(state, *o))
                .collect();
            if live.is_empty() {
                continue;
            }
            vantage += 1;
            let blind = live
                .iter()
                .filter(|o| agents.iter().all(|a| !sees_up(state, **o, *a)))
                .count();
            if majority(blind, live.len()) {
                see_down += 1;
            }
        }
        let health = if majority(see_down, vantage) {
            Health::Down
        } else {
            Health::Up
        };
        out.sites.insert(site.to_string(), health);
    }

    for (id, host) in &state.hosts {
        let site_down = out
            .sites
            .get(&host.site)
            .is_some_and(|h| *h == Health::Down);
        let peers: Vec<NodeId> = by_site
            .get(host.site.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| p != id && observer_counts(state, *p))
            .collect();
        let say_down = peers.iter().filter(|p| !sees_up(state, **p, *id)).count();
        // A host removed from the cluster runs no agent we hear from: whatever stale
        // observations say, it must not keep its instances.
        let removed = !members.contains_key(id);
        let health = if removed || site_down || majority(say_down, peers.len()) {
            Health::Down
        } else {
            Health::Up
        };
        out.hosts.insert(*id, health);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::fixture::{apply, host, host_health, site};
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Sites s1..sN with two agents each: node 10s+1 and 10s+2.
    fn fabric(sites: u64) -> (FabricState, Members) {
        fabric_of(&vec![2; sites as usize])
    }

    /// Sites s1..sN with `agents[s - 1]` agents each: nodes 10s+1, 10s+2, ...
    fn fabric_of(agents: &[u64]) -> (FabricState, Members) {
        let mut state = FabricState::default();
        let mut members = Members::new();
        for (s, count) in (1u64..).zip(agents) {
            let name = format!("s{s}");
            apply(&mut state, site(&name, s as u32));
            for h in 1..=*count {
                let id = 10 * s + h;
                apply(&mut state, host(id, &name, vec![]));
                members.insert(id, name.clone());
            }
        }
        (state, members)
    }

    fn observe(state: &mut FabricState, observer: NodeId, subject: NodeId, up: bool) {
        apply(state, consensus::fixture::observe(observer, subject, up));
    }

    #[test]
    fn everyone_is_up_without_observations() {
        let (state, members) = fabric(3);
        let v = verdicts(&state, &members);
        assert!(v.sites.values().all(|h| *h == Health::Up));
        assert!(v.hosts.values().all(|h| *h == Health::Up));
    }

    #[test]
    fn host_is_down_when_its_site_peers_say_so() {
        let (mut state, members) = fabric(3);
        observe(&mut state, 12, 11, false);
        let v = verdicts(&state, &members);
        assert_eq!(v.hosts[&11], Health::Down);
        assert_eq!(v.sites["s1"], Health::Up);
    }

    #[test]
    fn other_sites_alone_cannot_fail_a_host_whose_site_peer_sees_it() {
        let (mut state, members) = fabric(3);
        for o in [21, 22, 31, 32] {
            observe(&mut state, o, 11, false);
        }
        assert_eq!(verdicts(&state, &members).hosts[&11], Health::Up);
    }

    #[test]
    fn site_is_down_when_a_majority_of_other_sites_see_none_of_it() {
        let (mut state, members) = fabric(3);
        for o in [21, 22, 31, 32] {
            for s in [11, 12] {
                observe(&mut state, o, s, false);
            }
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["s1"], Health::Down);
        assert_eq!(v.hosts[&11], Health::Down);
        assert_eq!(v.hosts[&12], Health::Down);
        assert_eq!(v.sites["s2"], Health::Up);
    }

    #[test]
    fn one_broken_link_does_not_fail_a_site() {
        let (mut state, members) = fabric(3);
        // s2 cannot reach s1, s3 can.
        for o in [21, 22] {
            for s in [11, 12] {
                observe(&mut state, o, s, false);
            }
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["s1"], Health::Up);
        // And s1 (which cannot reach s2 either) does not fail s2: s3 still sees it.
        for o in [11, 12] {
            for s in [21, 22] {
                observe(&mut state, o, s, false);
            }
        }
        assert_eq!(verdicts(&state, &members).sites["s2"], Health::Up);
    }

    #[test]
    fn a_site_reachable_through_one_agent_is_up() {
        let (mut state, members) = fabric(3);
        for o in [21, 22, 31, 32] {
            observe(&mut state, o, 11, false);
        }
        assert_eq!(verdicts(&state, &members).sites["s1"], Health::Up);
    }

    #[test]
    fn two_sites_and_a_witness_decide_either_site_loss() {
        let (mut state, mut members) = fabric(2);
        members.insert(99, "w".into());
        // s1 lost: s2 and the witness see none of it.
        for o in [21, 22, 99] {
            for s in [11, 12] {
                observe(&mut state, o, s, false);
            }
        }
        assert_eq!(verdicts(&state, &members).sites["s1"], Health::Down);
        // The witness alone is lost instead: s1 and s2 are unaffected.
        let (mut state, mut members) = fabric(2);
        members.insert(99, "w".into());
        for o in [11, 12, 21, 22] {
            observe(&mut state, o, 99, false);
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["w"], Health::Down);
        assert_eq!(v.sites["s1"], Health::Up);
        assert_eq!(v.sites["s2"], Health::Up);
    }

    #[test]
    fn observers_on_down_hosts_do_not_vote() {
        let (mut state, members) = fabric(1);
        let mut members = members;
        members.insert(13, "s1".into());
        apply(&mut state, host(13, "s1", vec![]));
        // Host 11 is down; its stale "12 is up" must not outvote 13's "12 is down".
        apply(&mut state, host_health(11, Health::Down));
        observe(&mut state, 13, 12, false);
        assert_eq!(verdicts(&state, &members).hosts[&12], Health::Down);
    }

    // Properties over random fabrics (3-5 sites of 1-3 agents) and random observations:
    // one site's agents alone never fail a site (a broken link or a confused site is one
    // vote), and a site every other site sees dark is down whatever its own agents say.

    fn site_of(members: &Members, id: NodeId) -> &str {
        members.get(&id).map(String::as_str).unwrap_or_default()
    }

    /// Records a report unless it is an agent about itself (which the state refuses).
    fn report(state: &mut FabricState, observer: NodeId, subject: NodeId, up: bool) {
        if observer != subject {
            observe(state, observer, subject, up);
        }
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
            let (mut state, members) = fabric_of(&agents);
            let ids: Vec<u64> = members.keys().copied().collect();
            let vantage = format!("s{}", vantage % agents.len() + 1);
            let observers: Vec<u64> =
                ids.iter().copied().filter(|id| site_of(&members, *id) == vantage).collect();
            for (observer, subject, up) in reports {
                report(&mut state, *observer.get(&observers), *subject.get(&ids), up);
            }
            let v = verdicts(&state, &members);
            prop_assert_eq!(v.sites.len(), agents.len());
            for (site, health) in &v.sites {
                prop_assert_eq!(*health, Health::Up, "{} failed by {} alone", site, vantage);
            }
        }

        #[test]
        fn a_site_every_other_site_sees_dark_is_down(
            agents in prop::collection::vec(1..=3u64, 2..=5),
            dark in 0..5usize,
            own_reports in reports(20),
        ) {
            let (mut state, members) = fabric_of(&agents);
            let ids: Vec<u64> = members.keys().copied().collect();
            let dark = format!("s{}", dark % agents.len() + 1);
            let (inside, outside): (Vec<u64>, Vec<u64>) =
                ids.iter().copied().partition(|id| site_of(&members, *id) == dark);
            for observer in &outside {
                for subject in &inside {
                    report(&mut state, *observer, *subject, false);
                }
            }
            // Whatever the dark site's own agents report, they are not a vantage on themselves.
            for (observer, subject, up) in own_reports {
                report(&mut state, *observer.get(&inside), *subject.get(&ids), up);
            }
            let v = verdicts(&state, &members);
            prop_assert_eq!(v.sites.get(&dark), Some(&Health::Down));
            for id in &inside {
                prop_assert_eq!(v.hosts.get(id), Some(&Health::Down), "host {} is dark", id);
            }
        }
    }
}
