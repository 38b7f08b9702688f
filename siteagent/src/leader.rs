//! What the Raft leader does besides replicating: turns the sites' views and observers' votes
//! into host and site verdicts ([`quorum::verdict_commands`]), and runs the planner, proposing what they decide.
//!
//! Invariant: only the current leader proposes verdicts and plans, and every proposal carries
//! the Raft term it was computed in (and every plan action the epoch it was computed for). The
//! state machine refuses a proposal whose term differs from that of the log entry carrying it,
//! so a round planned under term T and forwarded after an election is never applied by the
//! leader of T+1. We stamp the term rather than propose only locally because even a local
//! proposal can be appended in a later term (this node deposed and re-elected mid-round); only
//! the entry's own term, checked where it is applied, closes the gap.
//!
//! It also measures, as `fabric_last_move_rto_seconds`, how long each lost service took to serve
//! again ([`Recovery`]), and counts the verdicts and moves it proposed.
//!
//! It does not start or stop anything itself; hosts act on what the state says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::state::{Command, FabricState, Health};
use failover::lease::{RevocationClock, lapsed};
use failover::planner;
use failover::quorum;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::cluster::Cluster;
use crate::fabric::Fabric;
use crate::lease::LeaseHandle;
use crate::recovery::Recovery;

/// Rounds of plan → propose per tick, so a chain (revoke, stop, assign, place) moves quickly.
const ROUNDS: usize = 4;

pub async fn leader_loop(
    cluster: Arc<Cluster>,
    lease: LeaseHandle,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut clock = RevocationClock::default();
    let mut recovery = Recovery::default();
    // The term this node leads in and when it first saw itself lead in it.
    let mut leadership: Option<(u64, Instant)> = None;
    let mut metrics = cluster.raft().raft().metrics();
    let mut server = cluster.raft().raft().server_metrics();
    let actor = format!("planner (node {})", cluster.id());
    loop {
        // Off the lead, only a change of leader (or membership) can make this node plan: wait
        // for one instead of waking every interval and on every replication step. Read from
        // the server metrics themselves: openraft publishes them before the full metrics, so a
        // look at the full ones right after a change could still see the old leader, and this
        // loop would then sleep through its own election.
        let leading = server.borrow_and_update().current_leader == Some(cluster.id());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval), if leading => {}
            r = metrics.changed(), if leading => if r.is_err() { return },
            r = server.changed(), if !leading => if r.is_err() { return },
        }
        if !cluster.is_leader() {
            clock.clear();
            recovery.clear();
            leadership = None;
            continue;
        }
        for _ in 0..ROUNDS {
            // The term first, then the state: the plan is stamped with a term in which this
            // node led and had seen at least that state.
            let Some(term) = cluster.leader_term() else {
                break;
            };
            // Confirmations are counted only from the start of this term: another leader may
            // have confirmed leases in between without this node knowing.
            let leading_since = match leadership {
                Some((t, since)) if t == term => since,
                _ => leadership.insert((term, clock::majority_now())).1,
            };
            let state = cluster.raft().local_state();
            // Reassign on the terms the holders agreed to, whatever this node's config says.
            let terms = lease.fabric_terms(&state);
            let members = cluster.members_by_site();
            let now = clock::majority_now();
            for (service, rto) in recovery.observe(&state, now) {
                tracing::info!("service {service} serves again {rto:?} after it was lost");
                metrics::gauge!("fabric_last_move_rto_seconds", "service" => service)
                    .set(rto.as_secs_f64());
            }
            let lapsed = lapsed(
                state.hosts.keys().copied(),
                &cluster.confirmations(),
                leading_since,
                now,
                &terms,
            );
            let silent: BTreeMap<u64, Duration> = lapsed
                .iter()
                .map(|(host, since)| (*host, now.saturating_duration_since(*since)))
                .collect();
            let mut commands = quorum::verdict_commands(&state, &members, &silent);
            clock.observe(&state, now);
            for (host, since) in &lapsed {
                clock.backdate(*host, *since);
            }
            if commands.is_empty() {
                commands = planner::plan(&state, &clock, now, &terms)
                    .iter()
                    .map(planner::Action::command)
                    .collect();
            }
            if commands.is_empty() {
                break;
            }
            if propose_all(cluster.as_ref(), &actor, term, commands, &state, &recovery)
                .await
                .is_err()
                || shutdown.is_cancelled()
            {
                break;
            }
            // Let host agents react (confirm stops and starts) before the next round.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Proposes `commands` as planned in `term`, in order, stopping at the first failure (a refusal
/// for another term included: this node no longer leads in `term`); counts the verdicts and
/// moves that were applied. `state` is the state they were computed from.
async fn propose_all(
    fabric: &impl Fabric,
    actor: &str,
    term: u64,
    commands: Vec<Command>,
    state: &FabricState,
    recovery: &Recovery,
) -> Result<(), ()> {
    for command in commands {
        match fabric
            .propose_in_term(actor.to_string(), command.clone(), term)
            .await
        {
            Ok(_) => count(&command, state, recovery),
            Err(e) => {
                tracing::warn!("planner: {command:?} failed: {e}");
                return Err(());
            }
        }
    }
    Ok(())
}

/// Counts an applied leader command in `fabric_verdicts_total` or `fabric_moves_total`.
fn count(command: &Command, state: &FabricState, recovery: &Recovery) {
    let label = |h: &Health| match h {
        Health::Up => "up",
        Health::Down => "down",
    };
    match command {
        Command::SetSiteHealth { health, .. } => {
            metrics::counter!("fabric_verdicts_total", "kind" => "site", "health" => label(health))
                .increment(1);
        }
        Command::SetHostHealth { health, .. } => {
            metrics::counter!("fabric_verdicts_total", "kind" => "host", "health" => label(health))
                .increment(1);
        }
        Command::PlaceInstance { service, host, .. } if recovery.is_move(state, service, *host) => {
            metrics::counter!("fabric_moves_total").increment(1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::MemoryFabric;
    use crate::fixture;
    use failover::quorum::Members;

    #[tokio::test(start_paused = true)]
    async fn a_round_planned_in_an_older_term_is_refused_and_stops_the_round() {
        let fabric = MemoryFabric::new(fixture::fabric());
        let state = fabric.state();
        let commands = vec![
            fixture::host_health(21, Health::Down),
            fixture::host_health(12, Health::Down),
        ];
        // Planned as leader of term 3; an election made term 4 before the round was proposed.
        fabric.set_term(4);
        let r = propose_all(
            &fabric,
            "planner",
            3,
            commands.clone(),
            &state,
            &Recovery::default(),
        )
        .await;
        assert!(r.is_err(), "a deposed leader's round went through");
        assert_eq!(
            fabric.proposed().len(),
            1,
            "the round went on after a refusal"
        );
        assert_eq!(fabric.state(), state, "a stale plan changed the state");

        // The same round planned in the current term applies.
        let r = propose_all(
            &fabric,
            "planner",
            4,
            commands,
            &state,
            &Recovery::default(),
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(fabric.state().hosts[&21].health, Health::Down);
        assert_eq!(fabric.state().hosts[&12].health, Health::Down);
    }

    fn members() -> Members {
        [(11, "s1"), (12, "s1"), (21, "s2")]
            .into_iter()
            .map(|(id, site)| (id, site.to_string()))
            .collect()
    }

    fn host_down(id: u64, reason: &str) -> Command {
        Command::SetHostHealth {
            id,
            health: Health::Down,
            reason: reason.into(),
        }
    }

    fn observe(state: &mut FabricState, observer: u64, site: &str, up: bool) {
        fixture::apply(state, fixture::observe_site(observer, site, up));
    }

    fn verdict_changes(
        state: &FabricState,
        members: &Members,
        lapsed: &BTreeMap<u64, Duration>,
    ) -> Vec<Command> {
        quorum::verdict_commands(state, members, lapsed)
    }

    #[test]
    fn site_verdicts_come_before_host_verdicts_with_their_reasons() {
        let mut state = fixture::fabric();
        observe(&mut state, 11, "s2", false);
        observe(&mut state, 12, "s2", false);
        assert_eq!(
            verdict_changes(&state, &members(), &BTreeMap::new()),
            vec![
                Command::SetSiteHealth {
                    name: "s2".into(),
                    health: Health::Down,
                    reason: "a majority of the other sites' observers reach none of its agents"
                        .into(),
                },
                Command::SetHostHealth {
                    id: 21,
                    health: Health::Down,
                    reason: "its site s2 is down".into(),
                },
            ]
        );
    }

    #[test]
    fn only_verdicts_that_differ_from_the_state_are_proposed() {
        let mut state = fixture::fabric();
        assert!(
            verdict_changes(&state, &members(), &BTreeMap::new()).is_empty(),
            "all agree"
        );
        fixture::apply(&mut state, fixture::site_view("s1", 12, &[11]));
        let changes = verdict_changes(&state, &members(), &BTreeMap::new());
        assert_eq!(
            changes,
            vec![host_down(
                11,
                "its peers in site s1 lost it (site view written by node 12)"
            )]
        );
        for c in changes {
            fixture::apply(&mut state, c);
        }
        assert!(verdict_changes(&state, &members(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_host_removed_from_the_cluster_is_judged_down_and_its_instance_revoked() {
        let mut state = fixture::fabric();
        let mut without_11 = members();
        without_11.remove(&11);
        let changes = verdict_changes(&state, &without_11, &BTreeMap::new());
        assert_eq!(
            changes,
            vec![host_down(11, "node 11 is no longer an agent of the fabric")]
        );
        for c in changes {
            fixture::apply(&mut state, c);
        }
        let now = clock::majority_now();
        let mut revocations = RevocationClock::default();
        revocations.observe(&state, now);
        let terms = failover::lease::LeaseConfig {
            lease: Duration::from_secs(6),
            margin: Duration::from_secs(1),
        };
        let plan: Vec<Command> = planner::plan(&state, &revocations, now, &terms)
            .iter()
            .map(planner::Action::command)
            .collect();
        assert!(
            plan.iter().any(|c| matches!(
                c,
                Command::RevokeInstance { service, host: 11, .. } if service == "web"
            )),
            "the instance on the removed host was not revoked: {plan:?}"
        );
    }

    #[test]
    fn recovered_sites_and_hosts_are_proposed_up_with_their_reasons() {
        let mut state = fixture::fabric();
        fixture::apply(&mut state, fixture::site_health("s2", Health::Down));
        fixture::apply(&mut state, fixture::host_health(21, Health::Down));
        assert_eq!(
            verdict_changes(&state, &members(), &BTreeMap::new()),
            vec![
                Command::SetSiteHealth {
                    name: "s2".into(),
                    health: Health::Up,
                    reason: "reachable again (agents [21])".into(),
                },
                Command::SetHostHealth {
                    id: 21,
                    health: Health::Up,
                    reason: "its peers hear it again".into(),
                },
            ]
        );
    }

    #[test]
    fn a_host_whose_lease_lapsed_is_judged_down_with_the_reason_though_its_peers_see_it() {
        let mut state = fixture::fabric();
        let lapsed = BTreeMap::from([(11, Duration::from_millis(6_200))]);
        let changes = verdict_changes(&state, &members(), &lapsed);
        assert_eq!(
            changes,
            vec![host_down(
                11,
                "its lease lapsed: no confirmation reached the leader for 6.2 s, though its peers still see it"
            )]
        );
        for c in changes {
            fixture::apply(&mut state, c);
        }
        assert!(verdict_changes(&state, &members(), &lapsed).is_empty());
        // Its instance is revoked, so DNS no longer lists the dead address.
        assert_eq!(
            crate::zone::names(&state).get("web"),
            Some(&vec![]),
            "the lapsed host is still in DNS"
        );
        // Once it confirms again, it is up.
        let changes = verdict_changes(&state, &members(), &BTreeMap::new());
        assert!(
            matches!(
                &changes[..],
                [Command::SetHostHealth {
                    id: 11,
                    health: Health::Up,
                    ..
                }]
            ),
            "{changes:?}"
        );
    }
}
