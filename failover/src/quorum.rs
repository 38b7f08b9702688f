//! Health quorum: turns what the detectors recorded into host and site verdicts.
//!
//! - Inside a site, the agents run SWIM ([`crate::swim`]) among themselves and one of them, the
//!   site's reporter, writes the site's view: the set of its agents the detector declared dead
//!   ([`consensus::state::SiteView`]). A host is down when it is in that set, when its site is
//!   down, or when it is no longer an agent of the fabric. One write per change of the set, so
//!   a host failure costs the same replicated writes whatever the fleet.
//! - Across sites, each site watches every other site through a few observers
//!   ([`site_observers`], at most [`SITE_OBSERVERS`]): an observer sees a site down when none
//!   of that site's agents answered it within the window. A site sees another down when a
//!   majority of its observers that count say so; a site is down when a majority of the *other*
//!   sites that still count (not down themselves, with an observer) see it down. One broken
//!   link is one vote, so it never fails a site, and a site's own agents are never a vantage on
//!   it.
//!
//! Invariant: pure and deterministic — the same state and agents give the same verdicts on
//! every node, so a new leader continues where the old one stopped.
//!
//! It does not record anything; the leader proposes [`verdict_commands`], the verdicts that
//! differ from the state.

use std::collections::BTreeMap;
use std::time::Duration;

use consensus::NodeId;
use consensus::state::{Command, FabricState, Health};

/// Every agent of the fabric (voters and hosts) with its site.
pub type Members = BTreeMap<NodeId, String>;

/// How many agents of a site observe the other sites.
pub const SITE_OBSERVERS: usize = 3;

/// Host and site verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub sites: BTreeMap<String, Health>,
    pub hosts: BTreeMap<NodeId, Health>,
}

/// More than half of `total`.
fn majority(votes: usize, total: usize) -> bool {
    total > 0 && votes * 2 > total
}

/// An agent counts while its own host (if it is one) is not known down.
fn counts(state: &FabricState, id: NodeId) -> bool {
    state.hosts.get(&id).is_none_or(|h| h.health == Health::Up)
}

/// The agents of `site` that observe the other sites: the first [`SITE_OBSERVERS`] by id that
/// count. Agents compute it from their own copy of the state to decide whether to observe; the
/// leader counts only these, so an agent that wrongly thinks it observes changes nothing.
pub fn site_observers(state: &FabricState, members: &Members, site: &str) -> Vec<NodeId> {
    members
        .iter()
        .filter(|(id, s)| s.as_str() == site && counts(state, **id))
        .map(|(id, _)| *id)
        .take(SITE_OBSERVERS)
        .collect()
}

/// Whether `observer` last said `site` is down (no record means up).
fn sees_down(state: &FabricState, observer: NodeId, site: &str) -> bool {
    state
        .site_observations
        .get(site)
        .and_then(|by| by.get(&observer))
        .is_some_and(|o| !o.up)
}

/// Computes every verdict from the recorded views and observations. A host that is not among
/// `members` (removed from the fabric) is down.
pub fn verdicts(state: &FabricState, members: &Members) -> Verdicts {
    let mut sites: Vec<&str> = members.values().map(String::as_str).collect();
    sites.sort_unstable();
    sites.dedup();
    let currently_down = |site: &str| {
        state
            .sites
            .get(site)
            .is_some_and(|s| s.health == Health::Down)
    };
    let observers: BTreeMap<&str, Vec<NodeId>> = sites
        .iter()
        .map(|s| (*s, site_observers(state, members, s)))
        .collect();

    let mut out = Verdicts::default();
    for site in &sites {
        let mut vantage = 0;
        let mut see_down = 0;
        for (other, live) in &observers {
            if other == site || currently_down(other) || live.is_empty() {
                continue;
            }
            vantage += 1;
            let blind = live.iter().filter(|o| sees_down(state, **o, site)).count();
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
        let declared_dead = state
            .site_views
            .get(&host.site)
            .is_some_and(|v| v.dead.contains(id));
        // A host removed from the fabric runs no agent we hear from: whatever a stale view
        // says, it must not keep its instances.
        let removed = !members.contains_key(id);
        let health = if removed || site_down || declared_dead {
            Health::Down
        } else {
            Health::Up
        };
        out.hosts.insert(*id, health);
    }
    out
}

/// Host and site verdicts that differ from the state, as commands (sites first, so a site's
/// hosts can be judged with it). A host in `lapsed` (with how long the leader has confirmed
/// none of its leases) is down whatever its site's view says: it cannot hold anything, and its
/// site looking up must not keep its dead address in DNS or its services where they are.
pub fn verdict_commands(
    state: &FabricState,
    members: &Members,
    lapsed: &BTreeMap<u64, Duration>,
) -> Vec<Command> {
    let mut v = verdicts(state, members);
    let mut lapse_reasons = BTreeMap::new();
    for (id, silent) in lapsed {
        if let Some(h) = v.hosts.get_mut(id)
            && *h == Health::Up
        {
            *h = Health::Down;
            lapse_reasons.insert(
                *id,
                format!(
                    "its lease lapsed: no confirmation reached the leader for {:.1} s, though its peers still see it",
                    silent.as_secs_f64()
                ),
            );
        }
    }
    let mut out = Vec::new();
    for (name, health) in &v.sites {
        if let Some(site) = state.sites.get(name)
            && site.health != *health
        {
            let reason = match health {
                Health::Down => {
                    "a majority of the other sites' observers reach none of its agents".to_string()
                }
                Health::Up => format!(
                    "reachable again (agents {:?})",
                    members
                        .iter()
                        .filter(|(_, s)| *s == name)
                        .map(|(id, _)| *id)
                        .collect::<Vec<_>>()
                ),
            };
            out.push(Command::SetSiteHealth {
                name: name.clone(),
                health: *health,
                reason,
            });
        }
    }
    for (id, health) in &v.hosts {
        if let Some(host) = state.hosts.get(id)
            && host.health != *health
        {
            let site_down = v.sites.get(&host.site) == Some(&Health::Down);
            let reporter = state.site_views.get(&host.site).map(|v| v.reporter);
            let reason = match (health, site_down) {
                (Health::Down, _) if lapse_reasons.contains_key(id) => lapse_reasons[id].clone(),
                (Health::Down, _) if !members.contains_key(id) => {
                    format!("node {id} is no longer an agent of the fabric")
                }
                (Health::Down, true) => format!("its site {} is down", host.site),
                (Health::Down, false) => format!(
                    "its peers in site {} lost it (site view written by node {})",
                    host.site,
                    reporter.unwrap_or_default()
                ),
                (Health::Up, _) => "its peers hear it again".to_string(),
            };
            out.push(Command::SetHostHealth {
                id: *id,
                health: *health,
                reason,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::fixture::{apply, host, host_health, observe_site, site, site_view};
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

    fn observe(state: &mut FabricState, observer: NodeId, subject: &str, up: bool) {
        apply(state, observe_site(observer, subject, up));
    }

    #[test]
    fn everyone_is_up_without_observations() {
        let (state, members) = fabric(3);
        let v = verdicts(&state, &members);
        assert!(v.sites.values().all(|h| *h == Health::Up));
        assert!(v.hosts.values().all(|h| *h == Health::Up));
    }

    #[test]
    fn host_is_down_when_its_site_view_declares_it_dead() {
        let (mut state, members) = fabric(3);
        apply(&mut state, site_view("s1", 12, &[11]));
        let v = verdicts(&state, &members);
        assert_eq!(v.hosts[&11], Health::Down);
        assert_eq!(v.hosts[&12], Health::Up);
        assert_eq!(v.sites["s1"], Health::Up);
        // Back in the view: up again.
        apply(&mut state, site_view("s1", 12, &[]));
        assert_eq!(verdicts(&state, &members).hosts[&11], Health::Up);
    }

    #[test]
    fn other_sites_alone_cannot_fail_a_host_of_a_site_that_is_up() {
        let (mut state, members) = fabric(3);
        // s2 and s3 each have one observer that lost s1 (and one that did not).
        for o in [21, 31] {
            observe(&mut state, o, "s1", false);
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["s1"], Health::Up);
        assert_eq!(v.hosts[&11], Health::Up);
    }

    #[test]
    fn site_is_down_when_a_majority_of_other_sites_reach_none_of_it() {
        let (mut state, members) = fabric(3);
        for o in [21, 22, 31, 32] {
            observe(&mut state, o, "s1", false);
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["s1"], Health::Down);
        assert_eq!(v.hosts[&11], Health::Down);
        assert_eq!(v.hosts[&12], Health::Down);
        assert_eq!(v.sites["s2"], Health::Up);
        let reasons = verdict_commands(&state, &members, &BTreeMap::new());
        assert!(matches!(
            &reasons[0],
            Command::SetSiteHealth { name, health: Health::Down, .. } if name == "s1"
        ));
    }

    #[test]
    fn one_broken_link_does_not_fail_a_site() {
        let (mut state, members) = fabric(3);
        // s2 cannot reach s1, s3 can.
        for o in [21, 22] {
            observe(&mut state, o, "s1", false);
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["s1"], Health::Up);
        // And s1 (which cannot reach s2 either) does not fail s2: s3 still sees it.
        for o in [11, 12] {
            observe(&mut state, o, "s2", false);
        }
        assert_eq!(verdicts(&state, &members).sites["s2"], Health::Up);
    }

    #[test]
    fn only_a_few_agents_per_site_observe_and_only_they_count() {
        let (mut state, members) = fabric_of(&[5, 5, 5]);
        assert_eq!(site_observers(&state, &members, "s2"), vec![21, 22, 23]);
        // Agents 24 and 25 are not observers: their word does not count.
        for o in [24, 25, 34, 35] {
            observe(&mut state, o, "s1", false);
        }
        assert_eq!(verdicts(&state, &members).sites["s1"], Health::Up);
        // A down observer is replaced by the next agent of its site.
        apply(&mut state, host_health(21, Health::Down));
        assert_eq!(site_observers(&state, &members, "s2"), vec![22, 23, 24]);
    }

    #[test]
    fn two_sites_and_a_witness_decide_either_site_loss() {
        let (mut state, mut members) = fabric(2);
        members.insert(99, "w".into());
        apply(&mut state, site("w", 9));
        // s1 lost: s2 and the witness see none of it.
        for o in [21, 22, 99] {
            observe(&mut state, o, "s1", false);
        }
        assert_eq!(verdicts(&state, &members).sites["s1"], Health::Down);
        // The witness alone is lost instead: s1 and s2 are unaffected.
        let (mut state, mut members) = fabric(2);
        members.insert(99, "w".into());
        apply(&mut state, site("w", 9));
        for o in [11, 12, 21, 22] {
            observe(&mut state, o, "w", false);
        }
        let v = verdicts(&state, &members);
        assert_eq!(v.sites["w"], Health::Down);
        assert_eq!(v.sites["s1"], Health::Up);
        assert_eq!(v.sites["s2"], Health::Up);
    }

    #[test]
    fn observers_on_down_hosts_do_not_vote() {
        let (mut state, members) = fabric(3);
        // 21 lost s1 but is itself down: s2's observers are now 22 alone, who sees s1.
        observe(&mut state, 21, "s1", false);
        observe(&mut state, 31, "s1", false);
        observe(&mut state, 32, "s1", false);
        apply(&mut state, host_health(21, Health::Down));
        let v = verdicts(&state, &members);
        assert_eq!(
            v.sites["s1"],
            Health::Up,
            "s3 alone is not a majority of two"
        );
        observe(&mut state, 22, "s1", false);
        assert_eq!(verdicts(&state, &members).sites["s1"], Health::Down);
    }

    #[test]
    fn a_removed_agent_is_down_whatever_its_view() {
        let (state, mut members) = fabric(2);
        members.remove(&12);
        let cmds = verdict_commands(&state, &members, &BTreeMap::new());
        assert!(cmds.iter().any(|c| matches!(
            c,
            Command::SetHostHealth { id: 12, health: Health::Down, reason } if reason.contains("no longer")
        )));
    }

    #[test]
    fn a_lapsed_lease_is_a_down_host_whatever_its_site_says() {
        let (state, members) = fabric(2);
        let lapsed = BTreeMap::from([(11, Duration::from_secs(7))]);
        let cmds = verdict_commands(&state, &members, &lapsed);
        assert!(cmds.iter().any(|c| matches!(
            c,
            Command::SetHostHealth { id: 11, health: Health::Down, reason } if reason.contains("lapsed")
        )));
    }

    // Properties over random fabrics (3-5 sites of 1-4 agents) and random observations:
    // one site's observers alone never fail a site (a broken link or a confused site is one
    // vote), and a site every other site sees dark is down whatever its own agents say.

    fn site_of(members: &Members, id: NodeId) -> &str {
        members.get(&id).map(String::as_str).unwrap_or_default()
    }

    /// Up to `max` reports: (observer, site, up), picked by index from lists.
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
            agents in prop::collection::vec(1..=4u64, 3..=5),
            vantage in 0..5usize,
            reports in reports(40),
        ) {
            let (mut state, members) = fabric_of(&agents);
            let names: Vec<String> = (1..=agents.len()).map(|s| format!("s{s}")).collect();
            let vantage = format!("s{}", vantage % agents.len() + 1);
            let observers: Vec<u64> = members
                .keys()
                .copied()
                .filter(|id| site_of(&members, *id) == vantage)
                .collect();
            for (observer, subject, up) in reports {
                observe(&mut state, *observer.get(&observers), subject.get::<String>(&names), up);
            }
            let v = verdicts(&state, &members);
            prop_assert_eq!(v.sites.len(), agents.len());
            for (site, health) in &v.sites {
                prop_assert_eq!(*health, Health::Up, "{} failed by {} alone", site, vantage);
            }
        }

        #[test]
        fn a_site_every_other_site_sees_dark_is_down(
            agents in prop::collection::vec(1..=4u64, 2..=5),
            dark in 0..5usize,
            own_reports in reports(20),
        ) {
            let (mut state, members) = fabric_of(&agents);
            let names: Vec<String> = (1..=agents.len()).map(|s| format!("s{s}")).collect();
            let dark = format!("s{}", dark % agents.len() + 1);
            let (inside, outside): (Vec<u64>, Vec<u64>) =
                members.keys().copied().partition(|id| site_of(&members, *id) == dark);
            for observer in &outside {
                observe(&mut state, *observer, &dark, false);
            }
            // Whatever the dark site's own agents report, they are not a vantage on themselves.
            for (observer, subject, up) in own_reports {
                observe(&mut state, *observer.get(&inside), subject.get::<String>(&names), up);
            }
            let v = verdicts(&state, &members);
            prop_assert_eq!(v.sites.get(&dark), Some(&Health::Down));
            for id in &inside {
                prop_assert_eq!(v.hosts.get(id), Some(&Health::Down), "host {} is dark", id);
            }
        }
    }
}
