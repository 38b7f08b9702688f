//! What the Raft leader does besides replicating: counts the observers' votes into host and
//! site verdicts, and runs the planner, proposing what they decide.
//!
//! Invariant: only the current leader proposes verdicts and plans, and every plan action
//! carries the epoch it was computed for, so a deposed leader's late proposals are refused by
//! the state machine rather than applied twice.
//!
//! It does not start or stop anything itself; hosts act on what the state says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::state::{Command, FabricState, Health};
use failover::lease::RevocationClock;
use failover::planner;
use failover::quorum::{self, Members};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

/// Rounds of plan → propose per tick, so a chain (revoke, stop, assign, place) moves quickly.
const ROUNDS: usize = 4;

pub async fn leader_loop(agent: Arc<Agent>, shutdown: CancellationToken) {
    let interval = agent.config().failover.plan_interval;
    let mut clock = RevocationClock::default();
    let mut metrics = agent.raft().raft().metrics();
    let actor = format!("planner (node {})", agent.id());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            r = metrics.changed() => if r.is_err() { return },
        }
        if agent.raft().metrics().current_leader != Some(agent.id()) {
            clock.clear();
            continue;
        }
        for _ in 0..ROUNDS {
            let state = agent.raft().local_state();
            // Reassign on the terms the holders agreed to, whatever this node's config says.
            let lease = agent.fabric_lease(&state);
            let members: Members = agent
                .raft()
                .members()
                .nodes
                .into_iter()
                .map(|(id, n)| (id, n.site))
                .collect();
            let mut commands = verdict_changes(&state, &members);
            let now = Instant::now();
            clock.observe(&state, now);
            if commands.is_empty() {
                commands = planner::plan(&state, &clock, now, &lease)
                    .iter()
                    .map(planner::Action::command)
                    .collect();
            }
            if commands.is_empty() {
                break;
            }
            let mut failed = false;
            for command in commands {
                match agent.propose(actor.clone(), command.clone()).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("planner: {command:?} failed: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            if failed || shutdown.is_cancelled() {
                break;
            }
            // Let host agents react (confirm stops and starts) before the next round.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Host and site verdicts that differ from the state, as commands (sites first, so a site's
/// hosts can be judged with it).
fn verdict_changes(state: &FabricState, members: &Members) -> Vec<Command> {
    let v = quorum::verdicts(state, members);
    let mut out = Vec::new();
    let sites_of: BTreeMap<&String, Vec<u64>> =
        members.iter().fold(BTreeMap::new(), |mut m, (id, site)| {
            m.entry(site).or_default().push(*id);
            m
        });
    for (name, health) in &v.sites {
        if let Some(site) = state.sites.get(name)
            && site.health != *health
        {
            let reason = match health {
                Health::Down => "a majority of the other sites see none of its agents".to_string(),
                Health::Up => format!(
                    "reachable again (agents {:?})",
                    sites_of.get(name).cloned().unwrap_or_default()
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
            let reason = match (health, site_down) {
                (Health::Down, true) => format!("its site {} is down", host.site),
                (Health::Down, false) => format!("its peers in site {} lost it", host.site),
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
