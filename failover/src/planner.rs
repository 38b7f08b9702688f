//! The planner: `plan(state, revocations, now) -> actions`, run by the Raft leader; and
//! [`simulate`], which plays a plan to its end for `--dry-run`.
//!
//! Rules, per service:
//! - it lives in one site: the operator's target if usable, else the site that owns it while
//!   that site is usable and has room, else the first usable site of its placement list with
//!   room. A service that moved stays where it is when its old site recovers (no flapping;
//!   moving back is `sitectl failback`).
//! - moving to another site is break-before-make: revoke every instance, wait until each is
//!   confirmed stopped or its lease has certainly run out (`lease + margin` after the revocation
//!   was seen), then assign the new site under the next epoch, then place instances.
//! - inside its site: an instance on a down host is revoked and its slot reused only after the
//!   same wait; an instance on a drained host is replaced first and revoked once the replacement
//!   runs (make-before-break, still one site).
//! - after a spec update (the epoch went up, owner and instances kept), the instances of older
//!   epochs are replaced one at a time: revoke one (planned), let its slot be refilled under
//!   the new epoch, and revoke the next only once that one runs and nothing is stopping.
//! - hosts are chosen by capacity, anti-affinity and load, deterministically.
//! - a deleting service is planned like a move to nowhere: its revoked instances are given up
//!   after the same wait, and it is never assigned or placed (the state removes it once its
//!   last instance is gone).
//!
//! Invariant: pure. The same inputs give the same actions, so a dry run and the real run agree.
//! It does not apply anything; the leader proposes the actions as commands.

use std::collections::BTreeMap;
use std::time::Instant;

use consensus::NodeId;
use consensus::state::{
    Capacity, Command, CommandError, FabricState, Health, InstanceState, Service, SiteAdmin,
};
use serde::{Deserialize, Serialize};

use crate::lease::{LeaseConfig, RevocationClock};

/// One step the leader should take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Revoke {
        service: String,
        host: NodeId,
        epoch: u64,
        planned: bool,
        reason: String,
    },
    Forget {
        service: String,
        host: NodeId,
        epoch: u64,
        reason: String,
    },
    AssignOwner {
        service: String,
        site: String,
        epoch: u64,
        reason: String,
    },
    Place {
        service: String,
        host: NodeId,
        epoch: u64,
        reason: String,
    },
    /// Make the copy of `volume` at `site` the primary (under `epoch`), before `service` moves
    /// there. `force` when it may lack writes (within the service's max RPO, or accepted by an
    /// operator).
    Promote {
        service: String,
        volume: String,
        site: String,
        epoch: u64,
        force: bool,
        reason: String,
    },
}

impl Action {
    pub fn command(&self) -> Command {
        match self.clone() {
            Action::Revoke {
                service,
                host,
                epoch,
                planned,
                reason,
            } => Command::RevokeInstance {
                service,
                host,
                epoch,
                planned,
                reason,
            },
            Action::Forget {
                service,
                host,
                epoch,
                reason,
            } => Command::ForgetInstance {
                service,
                host,
                epoch,
                reason,
            },
            Action::AssignOwner {
                service,
                site,
                epoch,
                reason,
            } => Command::AssignOwner {
                service,
                site,
                epoch,
                reason,
            },
            Action::Place {
                service,
                host,
                epoch,
                reason,
            } => Command::PlaceInstance {
                service,
                host,
                epoch,
                reason,
            },
            Action::Promote {
                volume,
                site,
                epoch,
                force,
                reason,
                ..
            } => Command::PromoteVolume {
                volume,
                site,
                epoch,
                force,
                reason,
            },
        }
    }

    pub fn service(&self) -> &str {
        match self {
            Action::Revoke { service, .. }
            | Action::Forget { service, .. }
            | Action::AssignOwner { service, .. }
            | Action::Place { service, .. }
            | Action::Promote { service, .. } => service,
        }
    }

    /// One line for operators: `stop web on host 1 (planned): site s1 entered maintenance`.
    pub fn describe(&self) -> String {
        match self {
            Action::Revoke {
                service,
                host,
                epoch,
                planned,
                reason,
            } => format!(
                "stop {service} on host {host} (epoch {epoch}, {}): {reason}",
                if *planned { "planned" } else { "revoked" }
            ),
            Action::Forget {
                service,
                host,
                epoch,
                reason,
            } => format!("give up {service} on host {host} (epoch {epoch}): {reason}"),
            Action::AssignOwner {
                service,
                site,
                epoch,
                reason,
            } => format!("give {service} to site {site} (epoch {epoch}): {reason}"),
            Action::Place {
                service,
                host,
                epoch,
                reason,
            } => format!("start {service} on host {host} (epoch {epoch}): {reason}"),
            Action::Promote {
                service,
                volume,
                site,
                epoch,
                reason,
                ..
            } => format!(
                "promote the copy of volume {volume} at site {site} to primary (epoch {epoch}) for {service}: {reason}"
            ),
        }
    }
}

/// Resources in use per host, counting every instance that still occupies its slot.
fn usage(state: &FabricState) -> BTreeMap<NodeId, (Capacity, usize)> {
    let mut used: BTreeMap<NodeId, (Capacity, usize)> = BTreeMap::new();
    for s in state.services.values() {
        for host in s.instances.keys() {
            let u = used.entry(*host).or_default();
            u.0 = u.0.plus(s.spec.resources);
            u.1 += 1;
        }
    }
    used
}

/// True when `a` and `b` must not share a host.
fn repels(a: &Service, b: &Service) -> bool {
    a.spec.placement.anti_affinity.contains(&b.spec.name)
        || b.spec.placement.anti_affinity.contains(&a.spec.name)
}

/// Hosts of `site` that could take a new instance of `svc`, best first.
fn candidates(
    state: &FabricState,
    svc: &Service,
    site: &str,
    used: &BTreeMap<NodeId, (Capacity, usize)>,
) -> Vec<NodeId> {
    let mut hosts: Vec<(usize, u64, NodeId)> = state
        .hosts
        .values()
        .filter(|h| h.site == site && h.schedulable() && !svc.instances.contains_key(&h.id))
        .filter(|h| {
            let (cap, _) = used.get(&h.id).copied().unwrap_or_default();
            cap.plus(svc.spec.resources).fits(h.capacity)
        })
        .filter(|h| {
            !state.services.values().any(|other| {
                other.spec.name != svc.spec.name
                    && repels(svc, other)
                    && other.instances.contains_key(&h.id)
            })
        })
        .map(|h| {
            let (cap, count) = used.get(&h.id).copied().unwrap_or_default();
            (count, cap.cpu_millis, h.id)
        })
        .collect();
    hosts.sort();
    hosts.into_iter().map(|(_, _, id)| id).collect()
}

/// Why a site cannot hold the service, if it cannot.
fn site_problem(
    state: &FabricState,
    svc: &Service,
    site: &str,
    used: &BTreeMap<NodeId, (Capacity, usize)>,
) -> Option<String> {
    let Some(s) = state.sites.get(site) else {
        return Some(format!("site {site} is unknown"));
    };
    if s.admin == SiteAdmin::Lost {
        return Some(format!("site {site} was declared lost"));
    }
    if s.health == Health::Down {
        return Some(format!("site {site} is down"));
    }
    if s.admin == SiteAdmin::Maintenance {
        return Some(format!("site {site} is in maintenance"));
    }
    if let Some(problem) = volume::site_problem(state, svc, site) {
        return Some(problem);
    }
    let keeps_one = svc.instances.values().any(|i| {
        i.state != InstanceState::Revoked
            && state
                .hosts
                .get(&i.host)
                .is_some_and(|h| h.site == site && h.schedulable())
    });
    if keeps_one || !candidates(state, svc, site, used).is_empty() {
        None
    } else {
        Some(format!("site {site} has no usable host with room"))
    }
}

/// The site the service should live in, with the reason when it is not the current owner.
fn desired_site(
    state: &FabricState,
    svc: &Service,
    used: &BTreeMap<NodeId, (Capacity, usize)>,
) -> Option<String> {
    let ok = |site: &String| site_problem(state, svc, site, used).is_none();
    if let Some(t) = svc.target.as_ref().filter(|t| ok(t)) {
        return Some(t.clone());
    }
    if let Some(o) = svc.owner.as_ref().filter(|o| ok(o)) {
        return Some(o.clone());
    }
    svc.spec.placement.sites.iter().find(|s| ok(s)).cloned()
}

/// Computes what the leader should do now.
pub fn plan(
    state: &FabricState,
    revocations: &RevocationClock,
    now: Instant,
    lease: &LeaseConfig,
) -> Vec<Action> {
    let mut used = usage(state);
    let mut actions = Vec::new();
    for (name, svc) in &state.services {
        if svc.deleting.is_some() {
            plan_move(
                svc,
                name,
                None,
                "service deleted",
                state,
                revocations,
                now,
                lease,
                &mut actions,
            );
            continue;
        }
        let desired = desired_site(state, svc, &used);
        let owner_problem = svc
            .owner
            .as_ref()
            .and_then(|o| site_problem(state, svc, o, &used));
        // With nowhere better to go, a service leaves its site only when the site is unusable
        // (down, lost, maintenance), not merely full.
        let owner_unusable = svc
            .owner
            .as_ref()
            .is_some_and(|o| !state.sites.get(o).is_some_and(|s| s.usable()));
        let moving = desired != svc.owner && (desired.is_some() || owner_unusable);
        if moving {
            let why = match (&svc.target, &desired, &owner_problem) {
                (Some(t), Some(d), _) if t == d => format!("switchover to site {t} requested"),
                (_, _, Some(problem)) => problem.clone(),
                (_, None, None) => "no usable site".into(),
                (_, Some(d), None) => format!("site {d} comes first"),
            };
            plan_move(
                svc,
                name,
                desired,
                &why,
                state,
                revocations,
                now,
                lease,
                &mut actions,
            );
        } else if let Some(site) = &svc.owner {
            plan_site(
                svc,
                name,
                site,
                state,
                revocations,
                now,
                lease,
                &mut used,
                &mut actions,
            );
        }
    }
    actions
}

/// Reclaims the slot of a revoked instance once its lease has certainly run out.
fn forget_expired(
    svc: &Service,
    name: &str,
    revocations: &RevocationClock,
    now: Instant,
    lease: &LeaseConfig,
    actions: &mut Vec<Action>,
) {
    for inst in svc.instances.values() {
        if inst.state != InstanceState::Revoked {
            continue;
        }
        let key = (name.to_string(), inst.host, inst.epoch);
        if revocations
            .reusable_at(&key, lease)
            .is_some_and(|at| now >= at)
        {
            actions.push(Action::Forget {
                service: name.into(),
                host: inst.host,
                epoch: inst.epoch,
                reason: format!(
                    "no stop confirmed; its lease ({:?} + {:?} margin) has run out",
                    lease.lease, lease.margin
                ),
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_move(
    svc: &Service,
    name: &str,
    desired: Option<String>,
    why: &str,
    state: &FabricState,
    revocations: &RevocationClock,
    now: Instant,
    lease: &LeaseConfig,
    actions: &mut Vec<Action>,
) {
    for inst in svc.instances.values().filter(|i| i.live()) {
        actions.push(Action::Revoke {
            service: name.into(),
            host: inst.host,
            epoch: inst.epoch,
            planned: state.stop_is_planned(svc, inst.host),
            reason: why.into(),
        });
    }
    forget_expired(svc, name, revocations, now, lease, actions);
    if svc.instances.is_empty()
        && let Some(site) = desired
        && volume::ready(state, svc, name, &site, actions)
    {
        let reason = if svc.owner.is_none() {
            "first placement: the first usable site of its list".to_string()
        } else {
            why.to_string()
        };
        actions.push(Action::AssignOwner {
            service: name.into(),
            site,
            epoch: svc.epoch + 1,
            reason,
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_site(
    svc: &Service,
    name: &str,
    site: &str,
    state: &FabricState,
    revocations: &RevocationClock,
    now: Instant,
    lease: &LeaseConfig,
    used: &mut BTreeMap<NodeId, (Capacity, usize)>,
    actions: &mut Vec<Action>,
) {
    let want = svc.spec.placement.instances as usize;
    let host = |id: &NodeId| state.hosts.get(id);
    let mut good = Vec::new();
    let mut drained = Vec::new();
    let mut occupied = 0;
    for inst in svc.instances.values() {
        match host(&inst.host) {
            _ if inst.state == InstanceState::Revoked => occupied += 1,
            Some(h) if h.health == Health::Up && h.site == site && !h.drained => good.push(inst),
            Some(h) if h.health == Health::Up && h.site == site => drained.push(inst),
            other => {
                let why = match other {
                    Some(h) if h.site != site => format!("host {} is not in site {site}", h.id),
                    Some(h) => format!("host {} is down", h.id),
                    None => format!("host {} is gone", inst.host),
                };
                actions.push(Action::Revoke {
                    service: name.into(),
                    host: inst.host,
                    epoch: inst.epoch,
                    planned: false,
                    reason: why,
                });
                occupied += 1;
            }
        }
    }
    forget_expired(svc, name, revocations, now, lease, actions);

    // Too many healthy instances (the spec shrank): stop the newest-numbered hosts' first.
    for inst in good.iter().skip(want).rev() {
        actions.push(Action::Revoke {
            service: name.into(),
            host: inst.host,
            epoch: inst.epoch,
            planned: true,
            reason: format!("more than the {want} instances asked for"),
        });
    }
    let running = good
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .count();
    for inst in &drained {
        if running >= want {
            actions.push(Action::Revoke {
                service: name.into(),
                host: inst.host,
                epoch: inst.epoch,
                planned: true,
                reason: format!("host {} is drained; its replacement runs", inst.host),
            });
        }
    }

    // After a spec update: replace the instances of older epochs one at a time, each only
    // when nothing is stopping, every instance of the current epoch runs and none is missing,
    // so with two instances or more one always serves.
    let settled = occupied == 0
        && drained.is_empty()
        && good.len() >= want
        && good
            .iter()
            .filter(|i| i.epoch == svc.epoch)
            .all(|i| i.state == InstanceState::Running);
    if settled && let Some(old) = good.iter().take(want).find(|i| i.epoch < svc.epoch) {
        actions.push(Action::Revoke {
            service: name.into(),
            host: old.host,
            epoch: old.epoch,
            planned: true,
            reason: format!(
                "spec updated: replaced by an instance under epoch {}",
                svc.epoch
            ),
        });
    }

    let need = want.saturating_sub(good.len().min(want) + occupied);
    if need == 0 {
        return;
    }
    let reason = if let Some(d) = drained.first() {
        format!("replaces the instance on drained host {}", d.host)
    } else if svc.instances.is_empty() {
        format!("site {site} owns the service")
    } else {
        format!("{} of {want} instances running", good.len())
    };
    for id in candidates(state, svc, site, used).into_iter().take(need) {
        let u = used.entry(id).or_default();
        u.0 = u.0.plus(svc.spec.resources);
        u.1 += 1;
        actions.push(Action::Place {
            service: name.into(),
            host: id,
            epoch: svc.epoch,
            reason: reason.clone(),
        });
    }
}

/// Plays the plan to its end on a copy of `state` after applying `command` (if any): every
/// stop is confirmed at once by healthy hosts, instances on down hosts are given up, every
/// started instance runs. Returns every action, in order — what `--dry-run` prints.
pub fn simulate(
    state: &FabricState,
    command: Option<&Command>,
    lease: &LeaseConfig,
    now: Instant,
) -> Result<Vec<Action>, CommandError> {
    let mut s = state.clone();
    let apply = |s: &mut FabricState, command: Command| {
        s.apply(&consensus::state::Proposal {
            at_ms: 0,
            actor: "dry run".into(),
            command,
            term: None,
        })
    };
    if let Some(c) = command {
        apply(&mut s, c.clone())?;
    }
    let mut all = Vec::new();
    for _ in 0..64 {
        let actions = plan(&s, &RevocationClock::default(), now, lease);
        if actions.is_empty() {
            break;
        }
        for a in actions {
            apply(&mut s, a.command())?;
            all.push(a.clone());
            match a {
                Action::Revoke {
                    service,
                    host,
                    epoch,
                    ..
                } => {
                    let name = service.clone();
                    let host_up = s.hosts.get(&host).is_some_and(|h| h.health == Health::Up);
                    let follow = if host_up {
                        Command::InstanceStopped {
                            placement: placement_of(&s, &service, host),
                            service,
                            host,
                            epoch,
                        }
                    } else {
                        let forget = Action::Forget {
                            service,
                            host,
                            epoch,
                            reason: format!(
                                "no stop confirmed; its lease ({:?} + {:?} margin) has run out",
                                lease.lease, lease.margin
                            ),
                        };
                        all.push(forget.clone());
                        forget.command()
                    };
                    apply(&mut s, follow)?;
                    // The stopped instance's NBD connection closes with it.
                    volume::writers_gone(&mut s, &name);
                }
                Action::Place {
                    service,
                    host,
                    epoch,
                    ..
                } => {
                    let placement = placement_of(&s, &service, host);
                    apply(
                        &mut s,
                        Command::InstanceRunning {
                            service,
                            host,
                            epoch,
                            placement,
                        },
                    )?;
                }
                Action::Forget { .. } | Action::AssignOwner { .. } | Action::Promote { .. } => {}
            }
        }
    }
    Ok(all)
}

/// The placement number of `service`'s instance on `host` (0 when there is none, which the
/// state machine refuses as unknown).
fn placement_of(state: &FabricState, service: &str, host: NodeId) -> u64 {
    state
        .services
        .get(service)
        .and_then(|s| s.instances.get(&host))
        .map_or(0, |i| i.placement)
}

mod volume;

#[cfg(test)]
mod tests;
